#!/usr/bin/env bash
# The cross-node fan-in benchmark of cluster MQTT routing (BENCHMARKS.md,
# "MQTT routing between nodes"): starts a cluster of three nodes and three
# NATS servers on loopback (scripts/cluster.sh, in the background) and a
# fourth connstate server outside the cluster (standalone: no --cluster-nats,
# its own temporary data folder, ports picked by the system), then runs
# bench/mqttload's fan-in, RUNS rounds, each round:
#   QoS 0, single node:  PUBLISHERS publishers and the subscriber on node1
#   QoS 0, cross-node:   the publishers spread over node1 and node2, the
#                        subscriber on node3 (every message crosses NATS)
#   QoS 0, standalone:   the publishers and the subscriber on the standalone
#                        server
#   the same three at QoS 1 (32 PUBLISHes in flight per publisher)
# with the same publishers, 64-byte payload, duration and end-to-end window;
# the three scenarios of one QoS take turns (round 1 single node, cross-node,
# standalone; round 2 cross-node, standalone, single node; ...), so all see
# the same background load. Then it prints a table (median and range of
# received/s, publish -> delivery p50 and p99, lost/gaps/duplicates of all
# runs, the cross-node / single-node throughput ratio against the issue's
# targets, the cross-node / standalone ratio for reference) and the load
# average before and after, and stops everything, also when a step fails or
# on Ctrl-C.
#
# Why the standalone row: the issue's target compares cross-node routing with
# one node of the same cluster, but a cluster node also hands every message
# its clients publish to NATS (for the other nodes' subscribers), also when
# the subscriber is on the same node, which a standalone server does not; the
# standalone row is the same fan-in without that, and the cross-node /
# standalone ratio compares cross-node routing with a server that is in no
# cluster. It is shown for reference, without a verdict.
#
# Exit status: non-zero when a run fails (mqttload exits with an error or
# reports protocol errors), a node or the standalone server exits; a missed
# target is reported, not a failure.
#
# Environment (defaults in brackets):
#   RUNS [3]          rounds
#   PUBLISHERS [50]   publishers per run
#   DURATION [10s]    measured time of each run (after mqttload's 2 s warm-up)
#   E2E [8]           messages per publisher sent but not yet received by the
#                     subscriber (mqttload -e2e)
#   OUT_DIR [a new /tmp/connstate-routing-bench.*]  raw output, the JSON lines
#                     (results.jsonl), the table (table.md)
#   CONNSTATE_BIN     the server binary (default target/release/connstate,
#                     built with cargo build --release when unset)
#   the *_PORT_BASE variables of scripts/cluster.sh pick the cluster's ports
#                     (the standalone server listens on ports the system
#                     picks, on 127.0.0.1)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

RUNS=${RUNS:-3}
PUBLISHERS=${PUBLISHERS:-50}
DURATION=${DURATION:-10s}
E2E=${E2E:-8}
[[ $DURATION =~ ^[0-9]+$ ]] && DURATION="${DURATION}s"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "bench/routing.sh: RUNS must be a positive number" >&2; exit 2; }
[[ $PUBLISHERS =~ ^[1-9][0-9]*$ ]] || { echo "bench/routing.sh: PUBLISHERS must be a positive number" >&2; exit 2; }
[[ $E2E =~ ^[0-9]+$ ]] || { echo "bench/routing.sh: E2E must be a number" >&2; exit 2; }
# A state file of its own: a cluster started by hand is left alone.
export CLUSTER_STATE_FILE=${CLUSTER_STATE_FILE:-${TMPDIR:-/tmp}/connstate-bench-routing-$(id -u).dir}
OUT_DIR=${OUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/connstate-routing-bench.XXXXXX")}
mkdir -p "$OUT_DIR"
results="$OUT_DIR/results.jsonl"
: >"$results"

die() { echo "bench/routing.sh: $*" >&2; exit 1; }
log() { echo "# $*" >&2; }

command -v jq >/dev/null || die "jq is needed for the table (Debian: apt-get install -y jq)"
command -v go >/dev/null || die "go is needed to build bench/mqttload"

if [ -z "${CONNSTATE_BIN:-}" ]; then
  log "building connstate (release)"
  cargo build --release --locked --bin connstate
  CONNSTATE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/connstate"
fi
export CONNSTATE_BIN
[ -x "$CONNSTATE_BIN" ] || die "no connstate binary at $CONNSTATE_BIN"
log "building bench/mqttload"
(cd bench/mqttload && go build -o "$OUT_DIR/mqttload" .)
load="$OUT_DIR/mqttload"

started=0
alone_pid="" alone_dir=""
# stop_alone: the standalone server, SIGTERM, then SIGKILL after 15 s; its
# data folder goes with it (its log stays in OUT_DIR).
stop_alone() {
  [ -n "$alone_pid" ] || return 0
  if kill -0 "$alone_pid" 2>/dev/null; then
    kill -TERM "$alone_pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$alone_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$alone_pid" 2>/dev/null; then
      echo "bench/routing.sh: the standalone server (pid $alone_pid) did not stop within 15 s: SIGKILL" >&2
      kill -KILL "$alone_pid" 2>/dev/null || true
    fi
    wait "$alone_pid" 2>/dev/null || true
  fi
  alone_pid=""
  [ -z "$alone_dir" ] || rm -rf "$alone_dir"
}
cleanup() {
  stop_alone
  if [ "$started" = 1 ]; then scripts/cluster.sh stop >/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

load_before=$(uptime | sed 's/.*load average: *//')
scripts/cluster.sh start --background
started=1
dir=$(cat "$CLUSTER_STATE_FILE")
# Column 2 of scripts/cluster.sh's address table is the node's MQTT address,
# column 4 its REST URL.
mqtt() { awk -v n="node$1" '$1 == n { print $2 }' "$dir/addresses"; }
rest() { awk -v n="node$1" '$1 == n { print $4 }' "$dir/addresses"; }
node_pid() { awk -v n="node$1" '$1 == n { p = $2 } END { print p }' "$dir/pids"; }
for n in 1 2 3; do [ -n "$(mqtt "$n")" ] || die "no MQTT address of node$n in $dir/addresses"; done

# The standalone server: not in the cluster (no --cluster-nats), its own data
# folder, listeners on ports the system picks; it announces them on stdout
# ("connstate mqtt listening on ADDR") once they are bound. Its own session,
# like the nodes: Ctrl-C reaches it only through the trap.
alone_dir=$(mktemp -d "${TMPDIR:-/tmp}/connstate-routing-standalone.XXXXXX")
alone_log="$OUT_DIR/standalone.log"
setsid "$CONNSTATE_BIN" serve --data-dir "$alone_dir/data" \
  --grpc-listen 127.0.0.1:0 --rest-listen 127.0.0.1:0 --mqtt-listen 127.0.0.1:0 \
  --mqtt-ws-listen off --mqtt-tls-listen off \
  >"$alone_log" 2>&1 </dev/null &
alone_pid=$!
# listening NAME: the address the standalone server announced for NAME.
listening() { awk -v p="connstate $1 listening on " 'index($0, p) == 1 { print substr($0, length(p) + 1); exit }' "$alone_log"; }
alone_mqtt="" alone_rest=""
for i in $(seq 600); do
  kill -0 "$alone_pid" 2>/dev/null || { tail -n 25 "$alone_log" >&2; die "the standalone server exited during start-up"; }
  alone_mqtt=$(listening mqtt) alone_rest=$(listening rest)
  if [ -n "$alone_mqtt" ] && [ -n "$alone_rest" ] &&
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$alone_rest/ready" || true)" = 200 ]; then
    break
  fi
  [ "$i" -lt 600 ] || { tail -n 25 "$alone_log" >&2; die "the standalone server was not ready within 60 s"; }
  sleep 0.1
done

# node_counter NAME: a counter summed over its labels and the three nodes.
node_counter() {
  local n sum=0 v
  for n in 1 2 3; do
    v=$(curl -fsS "$(rest "$n")/metrics" 2>/dev/null |
      awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $NF } END { printf "%d", s }') || v=0
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
# alone_counter NAME: the same, of the standalone server.
alone_counter() {
  local v
  v=$(curl -fsS "http://$alone_rest/metrics" 2>/dev/null |
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $NF } END { printf "%d", s }') || v=0
  echo "${v:-0}"
}
routed_lost0=$(node_counter connstate_cluster_routed_lost_total)
dropped0=$(node_counter connstate_mqtt_dropped_messages_total)
alone_dropped0=$(alone_counter connstate_mqtt_dropped_messages_total)

{
  echo
  echo "# MQTT routing between nodes, fan-in, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine: $(nproc) cores; load average before: $load_before"
  echo "connstate: $CONNSTATE_BIN, built $(date -u -r "$CONNSTATE_BIN" +%Y-%m-%dT%H:%M:%SZ); checkout $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "nodes (MQTT): node1 $(mqtt 1), node2 $(mqtt 2), node3 $(mqtt 3); cluster folder $dir"
  echo "standalone server (not in the cluster, MQTT): $alone_mqtt; log $alone_log"
  echo "fan-in: $PUBLISHERS publishers -> 1 subscriber on bench/+/data, 64 B, $DURATION measured after a 2 s warm-up, e2e window $E2E, QoS 1 window 32; rounds: $RUNS"
  echo "raw output: $OUT_DIR"
} | tee "$OUT_DIR/header.txt"

failed=0
# run_fanin QOS WHERE ROUND: one mqttload run; its JSON line, with the
# scenario and the round added, goes to the results file.
run_fanin() {
  local qos=$1 where=$2 round=$3 name="qos$1-$2" pubs sub
  case $where in
    single) pubs=$(mqtt 1) sub=$(mqtt 1) ;;
    cross) pubs="$(mqtt 1),$(mqtt 2)" sub=$(mqtt 3) ;;
    alone) pubs=$alone_mqtt sub=$alone_mqtt ;;
  esac
  local out="$OUT_DIR/$name-$round" rc=0
  local args=(fanin -pub-addrs "$pubs" -sub-addr "$sub" -publishers "$PUBLISHERS" -qos "$qos"
    -duration "$DURATION" -payload 64 -e2e "$E2E" -id-prefix "routing-$name-$round")
  [ "$qos" = 1 ] && args+=(-window 32)
  echo "## round $round, $name: mqttload ${args[*]}"
  "$load" "${args[@]}" >"$out.stdout" 2>"$out.stderr" || rc=$?
  local json
  json=$(tail -n 1 "$out.stdout" | jq -ec --arg s "$name" --argjson r "$round" \
    'select(.scenario == "fanin") | . + {bench: $s, round: $r}' 2>/dev/null) || json=""
  if [ "$rc" != 0 ] || [ -z "$json" ]; then
    echo "  FAILED (exit $rc); stderr:"
    tail -n 5 "$out.stderr" | sed 's/^/    /'
    failed=1
  else
    echo "$json" >>"$results"
    head -n 1 "$out.stdout" | sed 's/^/  /'
    if [ "$(jq -r .errors <<<"$json")" != 0 ]; then
      echo "  FAILED: mqttload counted $(jq -r .errors <<<"$json") protocol errors"
      failed=1
    fi
  fi
  local n pid
  for n in 1 2 3; do
    pid=$(node_pid "$n")
    kill -0 "$pid" 2>/dev/null || { tail -n 25 "$dir/node$n.log" >&2; die "node$n (pid $pid) exited during $name, round $round"; }
  done
  kill -0 "$alone_pid" 2>/dev/null || { tail -n 25 "$alone_log" >&2; die "the standalone server (pid $alone_pid) exited during $name, round $round"; }
}

# Round r starts with scenario (r - 1) mod 3 of this list and goes on in its
# order, wrapping around.
scenarios=(single cross alone)
for round in $(seq "$RUNS"); do
  for qos in 0 1; do
    for k in 0 1 2; do
      run_fanin "$qos" "${scenarios[(round - 1 + k) % 3]}" "$round"
    done
  done
done
routed_lost=$(($(node_counter connstate_cluster_routed_lost_total) - routed_lost0))
dropped=$(($(node_counter connstate_mqtt_dropped_messages_total) - dropped0))
alone_dropped=$(($(alone_counter connstate_mqtt_dropped_messages_total) - alone_dropped0))
load_after=$(uptime | sed 's/.*load average: *//')

# --- table -------------------------------------------------------------------
# agg SCENARIO JQ-PROGRAM: the program gets the array of that scenario's
# results; n/a when there is none.
agg() {
  jq -rs --arg s "$1" "[.[] | select(.bench == \$s)] | if length == 0 then \"n/a\" else ($2) end" "$results"
}
# med SCENARIO FIELD: the median over runs (upper median for an even count).
med() { agg "$1" "[.[] | .$2] | sort | .[length / 2 | floor]"; }
# spread SCENARIO FIELD: "median (min–max)", or the value for one run.
spread() {
  local v r
  v=$(med "$1" "$2")
  r=$(agg "$1" "[.[] | .$2] | if length > 1 then \"\\(min) \\(max)\" else \"\" end")
  if [[ $v == n/a || -z $r ]]; then fmt "$v"; else
    read -r lo hi <<<"$r"; echo "$(fmt "$v") ($(fmt "$lo")–$(fmt "$hi"))"; fi
}
sum() { agg "$1" "map(.$2) | add"; }
losses() { echo "$(sum "$1" lost) / $(sum "$1" gaps) / $(sum "$1" duplicates) of $(fmt "$(sum "$1" published_total)")"; }
# ratio QOS BASE: cross-node median / median of scenario BASE (single or
# alone), in %, and the range of the per-round ratios.
ratio() {
  jq -rs --arg q "qos$1" --arg base "$2" '
    def med: sort | .[length / 2 | floor];
    [.[] | select(.bench == $q + "-" + $base)] as $a | [.[] | select(.bench == $q + "-cross")] as $b |
    if ($a | length) == 0 or ($b | length) == 0 then "n/a n/a n/a" else
      (([$b[].received_per_s] | med) / ([$a[].received_per_s] | med) * 100) as $r |
      [$b[] as $x | $a[] | select(.round == $x.round and .received_per_s > 0) | $x.received_per_s / .received_per_s * 100] as $rs |
      "\($r) \(if ($rs | length) > 0 then $rs | min else "n/a" end) \(if ($rs | length) > 0 then $rs | max else "n/a" end)"
    end' "$results"
}
pct() { [[ $1 == n/a ]] && echo n/a || awk -v v="$1" 'BEGIN { printf "%.0f %%", v }'; }
row() { echo "| $1 | $2 | $3 | $4 | $5 |"; }
label() {
  case $1 in
    *-single) echo "QoS ${1:3:1}, single node: publishers and subscriber on node1" ;;
    *-cross) echo "QoS ${1:3:1}, cross-node: publishers on node1 and node2, subscriber on node3" ;;
    *-alone) echo "QoS ${1:3:1}, standalone: publishers and subscriber on a server not in a cluster" ;;
  esac
}

{
  echo
  row scenario "received/s, median (min–max)" "publish → delivery p50 (ms), median" "p99 (ms), median (min–max)" "lost / gaps / duplicates of published, all runs"
  echo "|---|---|---|---|---|"
  for s in qos0-single qos0-cross qos0-alone qos1-single qos1-cross qos1-alone; do
    row "$(label "$s")" "$(spread "$s" received_per_s)" "$(fmt "$(med "$s" latency_p50_ms)")" "$(spread "$s" latency_p99_ms)" "$(losses "$s")"
  done
  echo
  echo "| QoS | cross-node / single-node throughput, of medians (per round) | target ≥ 50 % | cross-node / standalone throughput, of medians (per round), for reference | nothing lost (cross-node, all runs) |"
  echo "|---|---|---|---|---|"
  for qos in 0 1; do
    read -r r lo hi <<<"$(ratio "$qos" single)"
    if [[ $r == n/a ]]; then verdict=n/a; else
      verdict=$(awk -v r="$r" 'BEGIN { print (r >= 50) ? "met" : "missed" }'); fi
    if [[ $lo == n/a ]]; then rounds=""; else rounds=" ($(pct "$lo")–$(pct "$hi"))"; fi
    read -r ra loa hia <<<"$(ratio "$qos" alone)"
    if [[ $loa == n/a ]]; then rounds_alone=""; else rounds_alone=" ($(pct "$loa")–$(pct "$hia"))"; fi
    lost=$(agg "qos$qos-cross" 'map(.lost + .gaps) | add')
    case $lost in 0) nothing=met ;; n/a) nothing=n/a ;; *) nothing="missed ($lost lost or skipped)" ;; esac
    echo "| $qos | $(pct "$r")$rounds | $verdict | $(pct "$ra")$rounds_alone | $nothing |"
  done
  echo
  echo "Nodes' own counters over all runs: messages lost between nodes (connstate_cluster_routed_lost) $routed_lost,"
  echo "messages dropped for clients that could not take them (connstate_mqtt_dropped_messages) $dropped;"
  echo "the standalone server's connstate_mqtt_dropped_messages $alone_dropped."
  echo "Load average before: $load_before; after: $load_after."
  echo "Figures: $RUNS round(s); each run $DURATION measured after a 2 s warm-up; latency of the messages sent in the"
  echo "measured window, from the publisher's write to the subscriber's read (one process, one clock). Lost ="
  echo "published (QoS 0: written, QoS 1: acknowledged) − received once, after a drain. Three NATS servers, three"
  echo "nodes, the standalone server and the load generator share the machine's $(nproc) cores; the single-node runs"
  echo "use node1 of the same cluster, which also hands every message to NATS; the standalone server is in no cluster"
  echo "and does not (its ratio is for reference: the target compares with one node of the same cluster)."
  echo "JSON lines: $results"
} | tee "$OUT_DIR/table.md"

[ "$failed" = 0 ] || die "at least one run failed (see above and $OUT_DIR)"
