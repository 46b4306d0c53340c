module connstate.local/bench/mqttload

go 1.22
