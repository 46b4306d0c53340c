#!/usr/bin/env bash
# A Mosquitto source under a connect storm: connstate (release build) follows
# a Mosquitto 2.x started with `log_dest topic`, while bench/mqttload connects
# CLIENTS clients to that Mosquitto, holds them, and disconnects them. Loopback
# only, bounded in time; everything it starts is stopped on exit and its work
# folder removed (the raw output stays in OUT_DIR).
#
#   bench/sources.sh                                   # build connstate, run, print the figures
#   CONNSTATE_BIN=path/to/connstate bench/sources.sh   # use this binary instead of building one
#
# Environment (defaults in brackets):
#   CLIENTS [10000]      clients of the storm
#   CONCURRENCY [200]    connects in flight at once
#   HOLD [10s]           how long the clients stay connected before they disconnect
#   WAIT [60]            seconds to wait after the storm for connstate to show every change
#   OUT_DIR [a new /tmp/connstate-sources-bench.*]  raw output, logs, result.json
#   CARGO_TARGET_DIR     honoured when building connstate
#
# Measured:
#   - lifecycle events followed per second: connects visible in connstate's
#     WatchConnections stream from the first CONNACK on Mosquitto to the last
#     one visible, and the same for the disconnects at the end;
#   - Mosquitto event -> visible in connstate: for each client, the time from
#     its CONNACK (read by mqttload, -ack-log) to its connect committed in
#     connstate (the change's commit_time) and to its arrival on a
#     WatchConnections stream (received time), p50 / p99 / max. Same machine,
#     same clock.
# What it changes on the machine: installs mosquitto and jq with apt-get when
# missing (needs root); raises the open-file limit of this shell (ulimit -n).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

CLIENTS=${CLIENTS:-10000}
CONCURRENCY=${CONCURRENCY:-200}
HOLD=${HOLD:-10s}
WAIT=${WAIT:-60}
[[ $HOLD =~ ^[0-9]+$ ]] && HOLD="${HOLD}s"
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/connstate-sources-bench.XXXXXX)}
mkdir -p "$OUT_DIR"
work=$(mktemp -d /tmp/connstate-sources-work.XXXXXX)

pids=()
cleanup() {
  local pid i
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "# $*" >&2; }
fail() { log "$*"; exit 1; }

# --- tools -----------------------------------------------------------------
for tool in mosquitto jq; do
  if ! command -v "$tool" >/dev/null; then
    log "installing $tool"
    apt-get install -y "$tool" >/dev/null || { apt-get update >/dev/null && apt-get install -y "$tool" >/dev/null; }
  fi
done
log "building bench/mqttload"
(cd bench/mqttload && go build -o "$work/mqttload" .)
load="$work/mqttload"

# The watcher is the project's Python SDK: the MQTT test suite's environment
# when it is there, else a fresh one in the work folder.
python=tests/mqtt/.venv/bin/python
if ! [[ -x $python ]] || ! "$python" -c 'import connstate_client' 2>/dev/null; then
  log "installing the Python SDK into a temporary environment"
  python3 -m venv "$work/venv"
  python="$work/venv/bin/python"
  "$python" -m pip install --quiet --disable-pip-version-check "$repo/clients/python"
  rm -rf "$repo/clients/python/build" "$repo"/clients/python/*.egg-info
fi

if [[ -z ${CONNSTATE_BIN:-} ]]; then
  log "building connstate (release)"
  cargo build --release --locked --bin connstate
  CONNSTATE_BIN="${CARGO_TARGET_DIR:-$repo/target}/release/connstate"
fi

ulimit -n $((CLIENTS + 4096)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) >= CLIENTS + 200)) || fail "open-file limit $(ulimit -n) is too low for $CLIENTS clients"

# --- Mosquitto, publishing its log on $SYS/broker/log/# --------------------
port=$("$load" freeport)
cat >"$work/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
persistence false
max_connections -1
log_dest topic
log_dest file $work/mosquitto.log
log_type error
log_type notice
CONF
chown mosquitto "$work" 2>/dev/null || chmod 0777 "$work"
mosquitto -c "$work/mosquitto.conf" >"$OUT_DIR/mosquitto.stdout" 2>&1 &
pids+=($!)
for i in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  ((i < 100)) || fail "mosquitto did not listen on $port: $(tail -5 "$OUT_DIR/mosquitto.stdout")"
  sleep 0.1
done

# --- connstate, following it ---------------------------------------------
"$CONNSTATE_BIN" serve --data-dir "$work/data" --grpc-listen 127.0.0.1:0 --rest-listen 127.0.0.1:0 \
  --mqtt-listen 127.0.0.1:0 --mqtt-ws-listen 127.0.0.1:0 --source-mosquitto "mqtt://127.0.0.1:$port" \
  >"$OUT_DIR/connstate.stdout" 2>"$OUT_DIR/connstate.stderr" &
connstate_pid=$!
pids+=("$connstate_pid")
grpc="" rest=""
for i in $(seq 300); do
  grpc=$(sed -n 's/^connstate grpc listening on \(127\.0\.0\.1:[0-9]*\).*/\1/p' "$OUT_DIR/connstate.stdout" | head -1)
  rest=$(sed -n 's/^connstate rest listening on \(127\.0\.0\.1:[0-9]*\).*/\1/p' "$OUT_DIR/connstate.stdout" | head -1)
  [[ -n $grpc && -n $rest ]] && break
  kill -0 "$connstate_pid" 2>/dev/null || fail "connstate exited: $(tail -5 "$OUT_DIR/connstate.stderr")"
  sleep 0.1
done
[[ -n $grpc && -n $rest ]] || fail "connstate did not start"
for i in $(seq 200); do
  curl -fsS "http://$rest/metrics" | grep -q '^connstate_source_up{source="mosquitto"} 1' && break
  ((i < 200)) || fail "the source did not connect to mosquitto"
  sleep 0.1
done

# --- the storm, watched ----------------------------------------------------
prefix="storm-$$"
"$python" bench/sources_watch.py watch "$grpc" "$prefix" "$CLIENTS" \
  "$(($(echo "$HOLD" | tr -dc 0-9) + CLIENTS / 100 + WAIT + 300))" "$work/changes" >"$work/watch.out" 2>"$OUT_DIR/watch.stderr" &
watch_pid=$!
pids+=("$watch_pid")
for i in $(seq 300); do
  grep -q ready "$work/watch.out" 2>/dev/null && break
  kill -0 "$watch_pid" 2>/dev/null || fail "the watcher exited: $(tail -5 "$OUT_DIR/watch.stderr")"
  ((i < 300)) || fail "the watch stream did not open"
  sleep 0.1
done
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat"; }
cpu0=$(cpu "$connstate_pid")
log "storm: $CLIENTS clients, $CONCURRENCY in flight, held $HOLD, on mosquitto 127.0.0.1:$port"
"$load" connect -addr "127.0.0.1:$port" -clients "$CLIENTS" -concurrency "$CONCURRENCY" -hold "$HOLD" \
  -id-prefix "$prefix" -ack-log "$work/acks" >"$OUT_DIR/mqttload.stdout" 2>"$OUT_DIR/mqttload.stderr" \
  || fail "mqttload failed: $(tail -5 "$OUT_DIR/mqttload.stderr")"
grep -v '^{' "$OUT_DIR/mqttload.stdout" >&2 || true
log "waiting (at most $WAIT s) for connstate to show every change"
for i in $(seq $((WAIT * 10))); do kill -0 "$watch_pid" 2>/dev/null || break; sleep 0.1; done
kill -TERM "$watch_pid" 2>/dev/null || true
wait "$watch_pid" 2>/dev/null || true
cpu1=$(cpu "$connstate_pid")
cat "$OUT_DIR/watch.stderr" >&2
[[ -s $work/changes ]] || fail "no change seen by the watch"
cp "$work/acks" "$work/changes" "$OUT_DIR/"

inputs=$(curl -fsS "http://$rest/metrics" | sed -n 's/^connstate_source_input_total{source="mosquitto",outcome="\([a-z]*\)"} \(.*\)/\1=\2/p' | tr '\n' ' ')
"$python" bench/sources_watch.py report "$work/acks" "$work/changes" |
  jq -c --argjson cpu "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{printf "%.2f", b-a}')" --arg inputs "$inputs" \
    --argjson clients "$CLIENTS" --argjson concurrency "$CONCURRENCY" \
    '. + {clients: $clients, concurrency: $concurrency, connstate_cpu_seconds: $cpu, source_inputs: $inputs}' >"$OUT_DIR/result.json"
{
  echo "# Mosquitto source under a connect storm, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine: $(nproc) cores, load average at end: $(cut -d' ' -f1-3 /proc/loadavg); $( (mosquitto -h 2>&1 || true) | head -1)"
  echo "connstate: $CONNSTATE_BIN; checkout $(git rev-parse --short HEAD)"
  jq -r '"clients \(.clients), \(.concurrency) in flight: \(.connacks) CONNACKs on Mosquitto, \(.connects_followed) connects and \(.disconnects_followed) disconnects followed (\(.missing) missing)",
    "events followed: \(.connects_followed_per_s) connects/s, \(.disconnects_followed_per_s) disconnects/s",
    "CONNACK on Mosquitto -> committed in connstate: p50 \(.connack_to_commit_p50_ms) ms, p99 \(.connack_to_commit_p99_ms) ms",
    "CONNACK on Mosquitto -> on a WatchConnections stream: p50 \(.connack_to_watch_p50_ms) ms, p99 \(.connack_to_watch_p99_ms) ms, max \(.connack_to_watch_max_ms) ms",
    "connstate CPU during the storm: \(.connstate_cpu_seconds) s; source inputs: \(.source_inputs)"' "$OUT_DIR/result.json"
  echo "raw output: $OUT_DIR"
} | tee "$OUT_DIR/result.txt"
