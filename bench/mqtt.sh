#!/usr/bin/env bash
# MQTT broker comparison: connstate's embedded broker (state tracking on) next
# to Mosquitto 2.x, with the same load generator (bench/mqttload), on loopback
# only, one broker running at a time. Every run of a scenario gets a fresh
# broker process, and the two brokers take turns run by run, so both see the
# same background load on this shared 2-core machine.
#
#   bench/mqtt.sh                                   # build everything, run, print the table
#   CONNSTATE_BIN=path/to/connstate bench/mqtt.sh   # use this binary instead of building one
#   BROKERS=mosquitto bench/mqtt.sh                 # one broker only
#
# Environment (defaults in brackets):
#   CLIENTS [10000]       clients of the connect/memory scenario
#   HOLD_CLIENTS [50000]  clients of the hold scenario (capped by the open-file limit, see below)
#   HOLD [60s]            hold time of the hold scenario
#   DURATION [10s]        measured time of each fan-in scenario (after a 2 s warm-up)
#   PUBLISHERS [100]      fan-in publishers
#   CONCURRENCY [200]     connects in flight at once
#   E2E [8]               fan-in: messages per publisher sent but not yet received by the
#                         subscriber; 8 × 100 publishers stays below both brokers' default
#                         per-client queue of 1,000 QoS 1 messages
#   SCENARIOS [connect fanin-qos0 fanin-qos1 hold]  which scenarios to run
#   RUNS [3]              runs of the connect and fan-in scenarios (the table shows the median
#                         and the range); the hold scenario runs once
#   SOURCE_IPS [127.0.0.2-127.0.0.9]  loopback source addresses of the hold clients
#   TRACKING [on]         off: connstate runs with its client-state feature switched off
#                         (PUT /api/v0002/config/clientstate), to measure the broker alone
#   MOSQUITTO_MAX_QUEUED [0]  Mosquitto's max_queued_messages; 0 = no limit, see the config below
#   OUT_DIR [a new /tmp/connstate-mqtt-bench.*]  raw output of every run, broker logs, the table
#   CARGO_TARGET_DIR      honoured when building connstate
#
# What it changes on the machine:
#   - installs Mosquitto with apt-get if `mosquitto` is missing (needs root);
#   - raises the open-file limit of this shell and its children (ulimit -n) to
#     200000, or to the hard limit when it may not go higher; without
#     CAP_SYS_RESOURCE the hard limit stays, and HOLD_CLIENTS is capped below it
#     (a broker needs one descriptor per client) and the table says so;
#   - only if net.ipv4.ip_local_port_range offers fewer than 20000 ports: sets it
#     to 15000-65000 and restores the old value on exit. The hold clients use
#     several source addresses (IP_BIND_ADDRESS_NO_PORT), ~28k ports each.
# Nothing else: no other sysctl, no service is enabled (Mosquitto runs from a
# temporary config, as a child of this script, and is stopped on exit).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
repo=$(pwd)

CLIENTS=${CLIENTS:-10000}
HOLD_CLIENTS=${HOLD_CLIENTS:-50000}
HOLD=${HOLD:-60s}
DURATION=${DURATION:-10s}
PUBLISHERS=${PUBLISHERS:-100}
CONCURRENCY=${CONCURRENCY:-200}
E2E=${E2E:-8}
RUNS=${RUNS:-3}
SOURCE_IPS=${SOURCE_IPS:-127.0.0.2-127.0.0.9}
MOSQUITTO_MAX_QUEUED=${MOSQUITTO_MAX_QUEUED:-0}
TRACKING=${TRACKING:-on}
BROKERS=${BROKERS:-mosquitto connstate}
SCENARIOS=${SCENARIOS:-connect fanin-qos0 fanin-qos1 hold}
[[ $DURATION =~ ^[0-9]+$ ]] && DURATION="${DURATION}s"
[[ $HOLD =~ ^[0-9]+$ ]] && HOLD="${HOLD}s"
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/connstate-mqtt-bench.XXXXXX)}
mkdir -p "$OUT_DIR"
work=$(mktemp -d /tmp/connstate-mqtt-work.XXXXXX)

broker_pid=""
old_port_range=""
cleanup() {
  if [[ -n $broker_pid ]]; then stop_broker; fi
  if [[ -n $old_port_range ]]; then sysctl -qw net.ipv4.ip_local_port_range="$old_port_range" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "# $*" >&2; }

# --- tools -----------------------------------------------------------------
if ! command -v mosquitto >/dev/null && [[ " $BROKERS " == *" mosquitto "* ]]; then
  log "installing mosquitto"
  apt-get install -y mosquitto >/dev/null || { apt-get update >/dev/null && apt-get install -y mosquitto >/dev/null; }
fi
if ! command -v jq >/dev/null; then
  log "installing jq (table building)"
  apt-get install -y jq >/dev/null || { apt-get update >/dev/null && apt-get install -y jq >/dev/null; }
fi
log "building bench/mqttload"
(cd bench/mqttload && go build -o "$work/mqttload" .)
load="$work/mqttload"

if [[ " $BROKERS " == *" connstate "* && -z ${CONNSTATE_BIN:-} ]]; then
  log "building connstate (release)"
  cargo build --release --bin connstate
  CONNSTATE_BIN="${CARGO_TARGET_DIR:-$repo/target}/release/connstate"
fi

# --- limits ----------------------------------------------------------------
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fd_limit=$(ulimit -n)
hold_clients=$HOLD_CLIENTS
hold_note=""
if ((fd_limit < HOLD_CLIENTS + 200)); then
  hold_clients=$((fd_limit - 200))
  hold_note="open-file hard limit is $fd_limit here and cannot be raised (no CAP_SYS_RESOURCE): held $hold_clients instead of $HOLD_CLIENTS"
  log "$hold_note"
fi
read -r port_lo port_hi </proc/sys/net/ipv4/ip_local_port_range
if ((port_hi - port_lo < 20000)); then
  old_port_range="$port_lo $port_hi"
  log "widening net.ipv4.ip_local_port_range from '$old_port_range' to '15000 65000' (restored on exit)"
  sysctl -qw net.ipv4.ip_local_port_range="15000 65000"
fi

# --- brokers ---------------------------------------------------------------
# start_broker NAME TAG: starts a fresh broker, sets broker_pid and broker_addr.
start_broker() {
  local name=$1 tag=$2 dir="$work/$1-$2"
  mkdir -p "$dir"
  case $name in
    mosquitto)
      local port
      port=$("$load" freeport)
      # persistence off, no connection limit. max_queued_messages: 0 (no
      # limit) because 2.0.11 drops QoS 1 deliveries to an online subscriber
      # under load ("Outgoing messages are being dropped") even when far fewer
      # messages are queued than its limit (seen with 1000 and 100000 and at
      # most 3,200 messages in flight); the load generator bounds the backlog
      # itself (-e2e). Mosquitto drops root privileges, hence the chown.
      cat >"$dir/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
persistence false
max_connections -1
max_queued_messages $MOSQUITTO_MAX_QUEUED
log_dest file $dir/mosquitto.log
log_type error
log_type warning
log_type notice
log_type information
EOF
      chown mosquitto "$dir" 2>/dev/null || chmod 0777 "$dir"
      mosquitto -c "$dir/mosquitto.conf" >"$dir/stdout" 2>"$dir/stderr" &
      broker_pid=$!
      broker_addr="127.0.0.1:$port"
      local i
      for i in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        kill -0 "$broker_pid" 2>/dev/null || break
        sleep 0.1
      done
      ;;
    connstate)
      # Emptied here, not by the redirection below: that happens in the
      # started process, and the address loop could read the last run's.
      : >"$dir/stdout"
      # A fresh store too: each run measures the same thing.
      rm -rf "$dir/data"
      "$CONNSTATE_BIN" serve --data-dir "$dir/data" --grpc-listen 127.0.0.1:0 --rest-listen 127.0.0.1:0 \
        --mqtt-listen 127.0.0.1:0 --mqtt-ws-listen 127.0.0.1:0 >"$dir/stdout" 2>"$dir/stderr" &
      broker_pid=$!
      broker_addr=""
      local i
      for i in $(seq 300); do
        broker_addr=$(sed -n 's/^connstate mqtt listening on \(127\.0\.0\.1:[0-9]*\).*/\1/p' "$dir/stdout" | head -1)
        [[ -n $broker_addr ]] && break
        kill -0 "$broker_pid" 2>/dev/null || break
        sleep 0.1
      done
      if [[ -n $broker_addr && $TRACKING == off ]]; then
        # The client-state feature switched off: the broker alone.
        local rest
        rest=$(sed -n 's/^connstate rest listening on \(127\.0\.0\.1:[0-9]*\).*/\1/p' "$dir/stdout" | head -1)
        curl -fsS -X PUT -H 'content-type: application/json' -d '{"enabled":false}' \
          "http://$rest/api/v0002/config/clientstate" >/dev/null || { stop_broker; return 1; }
      fi
      ;;
  esac
  if ! kill -0 "$broker_pid" 2>/dev/null || [[ -z $broker_addr ]]; then
    log "$name did not start; its stderr:"
    tail -20 "$dir/stderr" >&2 || true
    stop_broker
    return 1
  fi
  broker_dir=$dir
  broker_name=$name
}

stop_broker() {
  [[ -n $broker_pid ]] || return 0
  kill -TERM "$broker_pid" 2>/dev/null || true
  local i
  for i in $(seq 100); do kill -0 "$broker_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$broker_pid" 2>/dev/null || true
  wait "$broker_pid" 2>/dev/null || true
  broker_pid=""
}

cpu_seconds() { # utime+stime of a pid, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}

listen_overflows() { # TcpExt ListenOverflows, machine-wide: SYNs dropped on a full accept queue
  awk '/^TcpExt:/ { if (!n) { for (i = 1; i <= NF; i++) k[i] = $i; n = 1 } else for (i = 1; i <= NF; i++) if (k[i] == "ListenOverflows") print $i }' /proc/net/netstat
}

# run_scenario SCENARIO BROKER RUN: fresh broker, one mqttload run, result
# JSON in $OUT_DIR/BROKER-SCENARIO-RUN.json (or nothing when it failed).
run_scenario() {
  local scenario=$1 name=$2 out="$OUT_DIR/$2-$1-$3"
  start_broker "$name" "$scenario" || { echo "$name: did not start" >"$out.txt"; return 0; }
  sleep 1 # let start-up allocations settle before the baseline RSS is read
  local args=()
  case $scenario in
    connect) args=(connect -clients "$CLIENTS" -concurrency "$CONCURRENCY" -hold 10s) ;;
    fanin-qos0) args=(fanin -publishers "$PUBLISHERS" -qos 0 -duration "$DURATION" -payload 64 -e2e "$E2E") ;;
    fanin-qos1) args=(fanin -publishers "$PUBLISHERS" -qos 1 -duration "$DURATION" -payload 64 -window 32 -e2e "$E2E") ;;
    hold) args=(hold -clients "$hold_clients" -concurrency "$CONCURRENCY" -hold "$HOLD" -source-ips "$SOURCE_IPS") ;;
  esac
  local cpu0 ovf0 rc=0
  cpu0=$(cpu_seconds "$broker_pid")
  ovf0=$(listen_overflows)
  echo "## $name, run $3: mqttload ${args[*]} -addr $broker_addr -pid $broker_pid" | tee "$out.txt"
  "$load" "${args[@]}" -addr "$broker_addr" -pid "$broker_pid" >"$out.stdout" 2>"$out.stderr" || rc=$?
  local cpu1 ovf alive=yes
  cpu1=$(cpu_seconds "$broker_pid")
  ovf=$(($(listen_overflows) - ovf0))
  kill -0 "$broker_pid" 2>/dev/null || alive=no
  grep -v '^{' "$out.stdout" | tee -a "$out.txt" || true
  sed 's/^/  (stderr) /' "$out.stderr" | tee -a "$out.txt" >&2
  if ((rc == 0)) && tail -1 "$out.stdout" | jq -e . >/dev/null 2>&1; then
    tail -1 "$out.stdout" | jq -c --arg alive "$alive" --argjson cpu "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{printf "%.2f", b-a}')" \
      --argjson ovf "$ovf" '. + {broker_alive_after: ($alive == "yes"), broker_cpu_seconds: $cpu, listen_overflows: $ovf}' >"$out.json"
  else
    echo "  mqttload failed (exit $rc)" | tee -a "$out.txt"
  fi
  if [[ $alive == no ]]; then
    echo "  $name EXITED during the run; last stderr lines:" | tee -a "$out.txt"
    tail -20 "$broker_dir/stderr" | sed 's/^/    /' | tee -a "$out.txt"
  fi
  stop_broker
  # Keep the broker's own log and count what it complained about.
  case $name in
    mosquitto) cp "$broker_dir/mosquitto.log" "$out.broker.log" 2>/dev/null || true ;;
    connstate) cat "$broker_dir/stdout" "$broker_dir/stderr" >"$out.broker.log" 2>/dev/null || true ;;
  esac
  local complaints
  local noise='authentication is off \(open mode\)'
  complaints=$(grep -iE 'error|warn|panic|dropped' "$out.broker.log" 2>/dev/null | grep -cvE "$noise" || true)
  echo "  accept-queue overflows (dropped SYNs, retried after 1 s): $ovf"  | tee -a "$out.txt"
  echo "  broker CPU $(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{printf "%.1f", b-a}') s; broker log lines with error/warn/panic/dropped: ${complaints:-0} (see $out.broker.log)" | tee -a "$out.txt"
  if [[ ${complaints:-0} != 0 ]]; then
    grep -iE 'error|warn|panic|dropped' "$out.broker.log" | grep -vE "$noise" | sed 's/[0-9]\{4,\}/N/g' | sort | uniq -c | sort -rn | head -5 | sed 's/^/    /' | tee -a "$out.txt"
  fi
}

# --- run -------------------------------------------------------------------
mosq_version=$( (mosquitto -h 2>&1 || true) | head -1)
{
  echo "# MQTT broker comparison, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "Mosquitto: $mosq_version (single-threaded; max_queued_messages $MOSQUITTO_MAX_QUEUED)"
  [[ -n ${CONNSTATE_BIN:-} ]] && echo "connstate: $CONNSTATE_BIN, built $(date -u -r "$CONNSTATE_BIN" +%Y-%m-%dT%H:%M:%SZ); checkout now at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' + uncommitted changes in src/')"
  echo "open-file limit: $fd_limit; clients: $CLIENTS; hold: $hold_clients for $HOLD; fan-in: $PUBLISHERS publishers, $DURATION measured, e2e window $E2E; runs: $RUNS"
  echo "raw output: $OUT_DIR"
} | tee "$OUT_DIR/header.txt"

for run in $(seq "$RUNS"); do
  for scenario in connect fanin-qos0 fanin-qos1; do
    [[ " $SCENARIOS " == *" $scenario "* ]] || continue
    for name in $BROKERS; do
      run_scenario "$scenario" "$name" "$run"
    done
  done
done
if [[ " $SCENARIOS " == *" hold "* ]]; then
  for name in $BROKERS; do
    run_scenario hold "$name" 1
  done
fi

# --- table -----------------------------------------------------------------
# agg BROKER SCENARIO JQ-PROGRAM: the program gets the array of that
# scenario's run results; n/a when there is none.
agg() {
  local f=("$OUT_DIR/$1-$2"-*.json)
  [[ -f ${f[0]} ]] || { echo n/a; return; }
  jq -rs "$3" "${f[@]}"
}
# val BROKER SCENARIO EXPR: the median over runs of a number.
val() { agg "$1" "$2" "[.[] | $3] | sort | .[length/2|floor] // \"n/a\""; }
# spread BROKER SCENARIO EXPR: "median (min–max)", or the value for one run.
spread() {
  local v r
  v=$(val "$@")
  r=$(agg "$1" "$2" "[.[] | $3] | if length > 1 then \"\\(min) \\(max)\" else \"\" end")
  if [[ $v == n/a || -z $r ]]; then fmt "$v"; else
    read -r lo hi <<<"$r"; echo "$(fmt "$v") ($(fmt "$lo")–$(fmt "$hi"))"; fi
}
# verdict A B OP: "met"/"missed" for connstate's B against Mosquitto's A.
verdict() {
  [[ $1 == n/a || $2 == n/a ]] && { echo "n/a"; return; }
  awk -v a="$1" -v b="$2" -v op="$3" 'BEGIN {
    ok = (op == ">=") ? (b >= a) : (op == "<=") ? (b <= a) : (op == "2x") ? (b <= 2 * a) : 0
    print ok ? "met" : "missed" }'
}
m() { val mosquitto "$@"; }
c() { val connstate "$@"; }
ms() { spread mosquitto "$@"; }
cs() { spread connstate "$@"; }
lost='"\(map(.lost) | add) / \(map(.published_total) | add)"' 
row() { echo "| $1 | $2 | $3 | $4 |"; }

hold_target="$HOLD_CLIENTS stay up"
[[ -n $hold_note ]] && hold_target="$HOLD_CLIENTS stay up (not testable here: $hold_note)"
{
  echo
  echo "| metric | Mosquitto | connstate | target |"
  echo "|---|---|---|---|"
  a=$(m connect .connects_per_s); b=$(c connect .connects_per_s)
  row "connection rate, $(fmt "$CLIENTS") clients, $CONCURRENCY in flight (connects/s)" "$(ms connect .connects_per_s)" "$(cs connect .connects_per_s)" "≥ Mosquitto: $(verdict "$a" "$b" ">=")"
  a=$(m connect .latency_p99_ms); b=$(c connect .latency_p99_ms)
  row "connect latency p99, dial → CONNACK (ms)" "$(ms connect .latency_p99_ms)" "$(cs connect .latency_p99_ms)" "≤ Mosquitto: $(verdict "$a" "$b" "<=")"
  row "connect latency p50 / max (ms)" "$(fmt "$(m connect .latency_p50_ms)") / $(fmt "$(m connect .latency_max_ms)")" \
    "$(fmt "$(c connect .latency_p50_ms)") / $(fmt "$(c connect .latency_max_ms)")" ""
  row "accept-queue overflows during the ramp (SYNs dropped, each retried after ≥ 1 s)" "$(ms connect .listen_overflows)" "$(cs connect .listen_overflows)" ""
  row "connect failures, all runs" "$(agg mosquitto connect 'map(.failures) | add')" "$(agg connstate connect 'map(.failures) | add')" "0"
  a=$(m connect .kib_per_client); b=$(c connect .kib_per_client)
  row "memory per connected client, RSS growth / clients (KiB)" "$(ms connect .kib_per_client)" "$(cs connect .kib_per_client)" "≤ 2× Mosquitto: $(verdict "$a" "$b" "2x")"
  row "broker RSS with $(fmt "$CLIENTS") clients (MiB)" "$(fmt "$(m connect '(.rss_connected_kib/1024|floor)')")" "$(fmt "$(c connect '(.rss_connected_kib/1024|floor)')")" ""
  a=$(m fanin-qos0 .received_per_s); b=$(c fanin-qos0 .received_per_s)
  row "fan-in QoS 0, $PUBLISHERS publishers → 1 subscriber, 64 B (msg/s received)" "$(ms fanin-qos0 .received_per_s)" "$(cs fanin-qos0 .received_per_s)" "≥ Mosquitto: $(verdict "$a" "$b" ">=")"
  row "fan-in QoS 0: lost / published, all runs" "$(agg mosquitto fanin-qos0 "$lost")" "$(agg connstate fanin-qos0 "$lost")" ""
  a=$(m fanin-qos1 .received_per_s); b=$(c fanin-qos1 .received_per_s)
  row "fan-in QoS 1, window 32 (msg/s received)" "$(ms fanin-qos1 .received_per_s)" "$(cs fanin-qos1 .received_per_s)" "≥ Mosquitto: $(verdict "$a" "$b" ">=")"
  b=$(agg connstate fanin-qos1 'map(.lost) | add')
  row "fan-in QoS 1: lost / acknowledged, all runs" "$(agg mosquitto fanin-qos1 "$lost")" "$(agg connstate fanin-qos1 "$lost")" "0 lost: $(case $b in 0) echo met ;; n/a) echo n/a ;; *) echo missed ;; esac)"
  row "broker CPU s during fan-in QoS 0 / QoS 1 (median)" "$(m fanin-qos0 .broker_cpu_seconds) / $(m fanin-qos1 .broker_cpu_seconds)" "$(c fanin-qos0 .broker_cpu_seconds) / $(c fanin-qos1 .broker_cpu_seconds)" ""
  row "broker RSS after fan-in QoS 0 / QoS 1 (MiB, median)" "$(m fanin-qos0 '(.rss_end_kib/1024|floor)') / $(m fanin-qos1 '(.rss_end_kib/1024|floor)')" "$(c fanin-qos0 '(.rss_end_kib/1024|floor)') / $(c fanin-qos1 '(.rss_end_kib/1024|floor)')" ""
  a=$(agg mosquitto hold '.[0] | "\(.alive_after_hold) of \(.clients)"'); b=$(agg connstate hold '.[0] | "\(.alive_after_hold) of \(.clients)"')
  hv=$(agg connstate hold '.[0] | if .alive_after_hold == .clients then "met" else "missed" end')
  row "hold $HOLD: connections still answering PINGREQ" "$a" "$b" "$hold_target: $hv"
  row "broker RSS while holding (MiB)" "$(fmt "$(m hold '(.rss_end_kib/1024|floor)')")" "$(fmt "$(c hold '(.rss_end_kib/1024|floor)')")" ""
  for name in $BROKERS; do
    for scenario in connect fanin-qos0 fanin-qos1 hold; do
      n=$(agg "$name" "$scenario" 'map(select(.broker_alive_after == false)) | length')
      [[ $n != 0 && $n != n/a ]] && echo "- $name exited during $n run(s) of $scenario"
    done
  done
  echo
  echo "Figures: median of $RUNS runs (min–max); hold: one run. Each run gets a fresh broker process; the"
  echo "brokers take turns run by run. Fan-in: each publisher keeps at most $E2E messages the subscriber has not"
  echo "received yet (mqttload -e2e), QoS 1 publishers also at most 32 without PUBACK; lost = published − received"
  echo "after a drain. Mosquitto runs with max_queued_messages $MOSQUITTO_MAX_QUEUED, connstate with its defaults."
  echo "Connect latency: a SYN dropped on a full accept queue is retried after 1 s, so once more than 1 % of the"
  echo "connects overflow the listen backlog (ss -lt: Mosquitto 100, connstate 1024), p99 jumps to about 1 s;"
  echo "CONCURRENCY=50 keeps the queue from overflowing and measures the brokers instead."
} | tee "$OUT_DIR/table.md"
