#!/usr/bin/env bash
# The cluster benchmarks (BENCHMARKS.md, "Cluster"): starts a cluster of three
# nodes and three NATS servers on loopback (scripts/cluster.sh, in the
# background), then
#   1. cluster-ingest: durable ingest round-robin over the nodes, next to raw
#      JetStream publishes of the same messages to an R3 stream;
#   2. cluster-latency: connects ingested on node1 until node3's watch sees
#      them, and until a Get on node3 with the write's revision answers;
#   3. catch-up: node3 is killed (SIGKILL), CATCHUP_EVENTS events are
#      ingested through node1, node3 is started again with its command line
#      and data folder, and the time until its /ready answers 200 is printed;
# and stops everything, also when a step fails.
#
# Sizes (environment): EVENTS (200000), BATCH (1000), PRODUCERS (8) of
# cluster-ingest and of the catch-up load; RATE (10000) and SECONDS (10) of
# cluster-latency; CATCHUP_EVENTS (1000000); SETTLE (30): the most seconds
# between the ingest and the latency scenario, waiting for every node to
# have applied and written back the ingest's burst (their /metrics say when;
# 0 measures the latency while they still do). Binaries: CONNSTATE_BIN and
# BENCH_BIN (default target/release/..., built with cargo build --release when
# either is unset). Ports: the *_PORT_BASE variables of scripts/cluster.sh.
# SECONDS is also bash's own clock (imported from the environment it counts
# on from the value given): read what was given before any time passes.
seconds=$(printenv SECONDS || true)
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${EVENTS:-200000}
BATCH=${BATCH:-1000}
PRODUCERS=${PRODUCERS:-8}
RATE=${RATE:-10000}
SECONDS_=${seconds:-10}
CATCHUP_EVENTS=${CATCHUP_EVENTS:-1000000}
# How long node3 may take to be ready again before the run fails.
CATCHUP_LIMIT=${CATCHUP_LIMIT:-600}
SETTLE=${SETTLE:-30}
NATS_PORT_BASE=${NATS_PORT_BASE:-4222}
REST_PORT_BASE=${REST_PORT_BASE:-8080}
GRPC_PORT_BASE=${GRPC_PORT_BASE:-50051}
export NATS_PORT_BASE REST_PORT_BASE GRPC_PORT_BASE
# A state file of its own: a cluster started by hand is left alone.
export CLUSTER_STATE_FILE=${CLUSTER_STATE_FILE:-${TMPDIR:-/tmp}/connstate-bench-cluster-$(id -u).dir}

die() { echo "bench/cluster.sh: $*" >&2; exit 1; }

if [ -z "${CONNSTATE_BIN:-}" ] || [ -z "${BENCH_BIN:-}" ]; then
  cargo build --release --locked --bin connstate --bin connstate-bench
fi
CONNSTATE_BIN=${CONNSTATE_BIN:-$PWD/target/release/connstate}
BENCH_BIN=${BENCH_BIN:-$PWD/target/release/connstate-bench}
export CONNSTATE_BIN
[ -x "$CONNSTATE_BIN" ] || die "no connstate binary at $CONNSTATE_BIN"
[ -x "$BENCH_BIN" ] || die "no connstate-bench binary at $BENCH_BIN"

nats="nats://127.0.0.1:$NATS_PORT_BASE,nats://127.0.0.1:$((NATS_PORT_BASE + 1)),nats://127.0.0.1:$((NATS_PORT_BASE + 2))"
grpc() { echo "127.0.0.1:$((GRPC_PORT_BASE + $1 - 1))"; }
ready_url() { echo "http://127.0.0.1:$((REST_PORT_BASE + $1 - 1))/ready"; }

scripts/cluster.sh start --background
trap 'scripts/cluster.sh stop' EXIT
dir=$(cat "$CLUSTER_STATE_FILE")

echo
"$BENCH_BIN" cluster-ingest --nats "$nats" --nodes "$(grpc 1),$(grpc 2),$(grpc 3)" \
  --events "$EVENTS" --batch "$BATCH" --producers "$PRODUCERS"
echo
# Settled: every node has applied the whole log and written it back
# (connstate_cluster_lag_messages and connstate_store_write_back_pending at
# 0 in its /metrics), or SETTLE seconds passed.
metrics_url() { echo "http://127.0.0.1:$((REST_PORT_BASE + $1 - 1))/metrics"; }
backlog() {
  curl -fsS "$(metrics_url "$1")" 2>/dev/null |
    awk '/^connstate_store_write_back_pending / || /^connstate_cluster_lag_messages / { n += $2 } END { print n + 0 }'
}
settle_start=$(date +%s.%N)
while :; do
  left=$(( $(backlog 1) + $(backlog 2) + $(backlog 3) ))
  waited=$(awk -v a="$settle_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  if [ "$left" = 0 ]; then
    echo "(the nodes wrote back the ingest's burst in ${waited} s)"
    break
  fi
  if awk -v w="$waited" -v s="$SETTLE" 'BEGIN { exit !(w >= s) }'; then
    echo "(after ${SETTLE} s the nodes still had ${left} changes to apply or write back: measuring anyway)"
    break
  fi
  sleep 0.2
done
"$BENCH_BIN" cluster-latency --nodes "$(grpc 1),$(grpc 3)" --rate "$RATE" --seconds "$SECONDS_"

echo
echo "## catch-up: node3 down while $CATCHUP_EVENTS events are ingested through node1"
pid=$(awk '$1 == "node3" { p = $2 } END { print p }' "$dir/pids")
[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || die "node3 is not running (see $dir/pids)"
# Its command line, to start it again as it was (same flags, same folder).
mapfile -d '' -t argv <"/proc/$pid/cmdline"
kill -KILL "$pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
echo "- node3 (pid $pid) killed with SIGKILL"
"$BENCH_BIN" cluster-load --nodes "$(grpc 1)" --events "$CATCHUP_EVENTS" \
  --batch "$BATCH" --producers "$PRODUCERS" | tee "$dir/catch-up-load.txt"

started=$(date +%s%N)
setsid "${argv[@]}" >>"$dir/node3.log" 2>&1 </dev/null &
pid=$!
# scripts/cluster.sh stop stops what the pids file names.
echo "node3 $pid" >>"$dir/pids"
until [ "$(curl -s -o /dev/null -w '%{http_code}' "$(ready_url 3)" || true)" = 200 ]; do
  if ! kill -0 "$pid" 2>/dev/null; then
    tail -n 25 "$dir/node3.log" >&2
    die "node3 exited while catching up"
  fi
  if [ $(($(date +%s%N) - started)) -gt $((CATCHUP_LIMIT * 1000000000)) ]; then
    tail -n 25 "$dir/node3.log" >&2
    die "node3 was not ready within $CATCHUP_LIMIT s"
  fi
  sleep 0.05
done
took=$(($(date +%s%N) - started))
printf -- '- node3 started again and ready (/ready 200) after %d.%02d s\n' \
  $((took / 1000000000)) $((took % 1000000000 / 10000000))
# Ready means caught up: its run starts only once it has applied everything
# appended before; its revision shows it.
loaded=$(sed -n 's/.*revision \([0-9]*\)$/\1/p' "$dir/catch-up-load.txt")
rest="http://127.0.0.1:$((REST_PORT_BASE + 2))/api/v0002/clientconnectionstates?_limit=1"
now=$(curl -s -o /dev/null -D - "$rest" | tr -d '\r' | sed -n 's/^x-connstate-revision: //Ip')
echo "- node3 at revision ${now:-?} (the load ended at revision ${loaded:-?})"
