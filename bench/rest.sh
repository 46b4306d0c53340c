#!/usr/bin/env bash
# REST load test with wrk (HTTP/1.1 keep-alive) against the release server
# on the 1,000,000-client data set of `connstate-bench query`. Loopback only,
# bounded in time. Usage: bench/rest.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-15}"
data=target/bench-data/query-1000000
[ -d "$data" ] || target/release/connstate-bench query --clients 1000000 --requests 1000
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }

out=$(mktemp)
target/release/connstate serve --data-dir "$data" --grpc-listen 127.0.0.1:0 \
  --rest-listen 127.0.0.1:0 >"$out" 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 100); do grep -q "rest listening" "$out" && break; sleep 0.1; done
rest=$(sed -n 's/^connstate rest listening on //p' "$out")
until curl -sf "http://$rest/ready" >/dev/null; do sleep 0.2; done

echo "## GET one state (random of 1,000,000), 2 threads, 32 connections, ${seconds}s"
wrk -t2 -c32 -d"${seconds}s" --latency -s bench/random-state.lua "http://$rest" | sed -n '/Latency Distribution/,/Transfer/p'
echo "## List page of 100, devices of one type by last activity, 2 threads, 16 connections, ${seconds}s"
wrk -t2 -c16 -d"${seconds}s" --latency \
  "http://$rest/api/v0002/clientconnectionstates?clientType=device&deviceType=type4&_sort=-lastActivityTime&_limit=100" \
  | sed -n '/Latency Distribution/,/Transfer/p'
