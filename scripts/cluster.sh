#!/usr/bin/env bash
# A connstate cluster on this machine, loopback only: three nats-server
# processes forming one JetStream cluster, and three connstate nodes
# (node1..node3) sharing it, each with its own data folder under one
# temporary folder.
#
#   scripts/cluster.sh [start]        start, print the addresses, run in the
#                                     foreground until Ctrl-C, then stop all
#   scripts/cluster.sh start --background
#                                     start and return; stop with `stop`
#   scripts/cluster.sh stop           stop a cluster started in the background
#   scripts/cluster.sh status         the addresses, and which processes run
#
# Ports (environment, each the first of three consecutive ports):
#   NATS_PORT_BASE        4222   NATS clients (nats://127.0.0.1:4222,...)
#   NATS_ROUTE_PORT_BASE  6222   NATS cluster routes
#   NATS_HTTP_PORT_BASE   8222   NATS monitoring (/healthz, /jsz)
#   MQTT_PORT_BASE        1883   node MQTT
#   MQTT_WS_PORT_BASE     8083   node MQTT over WebSocket (/mqtt)
#   REST_PORT_BASE        8080   node REST (v0002) and console
#   GRPC_PORT_BASE        50051  node gRPC
# CLUSTER_NODES (default 3) is how many connstate nodes start; 0 starts the
# NATS cluster alone. CONNSTATE_BIN picks the binary (default
# target/release/connstate, built when missing). CLUSTER_KEEP=1 keeps the
# temporary folder (data and logs) after stop. Extra `connstate serve` flags
# go after `--`, e.g. `scripts/cluster.sh start -- --auth true ...`.
# The servers run in their own sessions: the script stops them in order
# (nodes first, then NATS), with SIGTERM and, after a grace period, SIGKILL.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_PORT_BASE=${NATS_PORT_BASE:-4222}
NATS_ROUTE_PORT_BASE=${NATS_ROUTE_PORT_BASE:-6222}
NATS_HTTP_PORT_BASE=${NATS_HTTP_PORT_BASE:-8222}
MQTT_PORT_BASE=${MQTT_PORT_BASE:-1883}
MQTT_WS_PORT_BASE=${MQTT_WS_PORT_BASE:-8083}
REST_PORT_BASE=${REST_PORT_BASE:-8080}
GRPC_PORT_BASE=${GRPC_PORT_BASE:-50051}
CLUSTER_NODES=${CLUSTER_NODES:-3}
NATS_SERVERS=3
# Where a background cluster's folder is written down for `stop` and `status`.
STATE_FILE=${CLUSTER_STATE_FILE:-${TMPDIR:-/tmp}/connstate-cluster-$(id -u).dir}

die() { echo "cluster.sh: $*" >&2; exit 1; }

nats_binary() {
  if [ -n "${NATS_SERVER:-}" ]; then echo "$NATS_SERVER"; return; fi
  if command -v nats-server >/dev/null 2>&1; then command -v nats-server; return; fi
  if [ -x /usr/sbin/nats-server ]; then echo /usr/sbin/nats-server; return; fi
  die "nats-server not found: install it (Debian: apt-get install -y nats-server) or set NATS_SERVER"
}

connstate_binary() {
  if [ -n "${CONNSTATE_BIN:-}" ]; then echo "$CONNSTATE_BIN"; return; fi
  if [ ! -x target/release/connstate ]; then
    echo "building target/release/connstate" >&2
    cargo build --release --locked --bin connstate >&2
  fi
  echo "$PWD/target/release/connstate"
}

# Fails when something already answers on 127.0.0.1:$1.
port_free() {
  if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    die "port $1 of 127.0.0.1 is in use ($2); choose other ports (see the top of this script)"
  fi
}

# The pids of a cluster folder, one "name pid" a line, in start order.
pids_of() { [ -f "$1/pids" ] && cat "$1/pids" || true; }

alive() { kill -0 "$1" 2>/dev/null; }

# Stops the processes of folder $1 whose names match $2: SIGTERM, then
# SIGKILL after $3 seconds.
stop_matching() {
  local dir=$1 pattern=$2 grace=$3 name pid left
  local -a pids=()
  while read -r name pid; do
    case "$name" in $pattern) ;; *) continue ;; esac
    if alive "$pid"; then kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); fi
  done < <(pids_of "$dir")
  [ ${#pids[@]} -gt 0 ] || return 0
  for _ in $(seq 1 $((grace * 10))); do
    left=0
    for pid in "${pids[@]}"; do alive "$pid" && left=1; done
    [ "$left" = 0 ] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if alive "$pid"; then
      echo "cluster.sh: pid $pid did not stop within ${grace}s: SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for pid in "${pids[@]}"; do
    while alive "$pid"; do sleep 0.05; done
  done
}

stop_dir() {
  local dir=$1
  [ -d "$dir" ] || return 0
  stop_matching "$dir" 'node*' 15
  stop_matching "$dir" 'nats*' 10
  if [ "${CLUSTER_KEEP:-0}" = 1 ]; then
    echo "kept $dir (data and logs)"
  else
    rm -rf "$dir"
  fi
  if [ -f "$STATE_FILE" ] && [ "$(cat "$STATE_FILE")" = "$dir" ]; then rm -f "$STATE_FILE"; fi
}

# The last lines of the logs of folder $1 named $2 (a pattern), to stderr.
show_logs() {
  for log in "$1"/$2.log; do
    [ -f "$log" ] || continue
    echo "--- $(basename "$log"), last lines:" >&2
    tail -n 25 "$log" >&2
  done
}

start() {
  local background=0
  local -a extra=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --background|-d) background=1; shift ;;
      --) shift; extra=("$@"); break ;;
      *) die "unknown option $1 (start [--background] [-- connstate serve flags])" ;;
    esac
  done
  if [ -f "$STATE_FILE" ] && [ -d "$(cat "$STATE_FILE")" ]; then
    die "a cluster is already running in $(cat "$STATE_FILE"): scripts/cluster.sh stop"
  fi

  local nats connstate=""
  nats=$(nats_binary)
  [ "$CLUSTER_NODES" -gt 0 ] && connstate=$(connstate_binary)

  local i
  for i in $(seq 0 $((NATS_SERVERS - 1))); do
    port_free $((NATS_PORT_BASE + i)) "NATS client"
    port_free $((NATS_ROUTE_PORT_BASE + i)) "NATS route"
    port_free $((NATS_HTTP_PORT_BASE + i)) "NATS monitoring"
  done
  for i in $(seq 0 $((CLUSTER_NODES - 1))); do
    port_free $((MQTT_PORT_BASE + i)) "node MQTT"
    port_free $((MQTT_WS_PORT_BASE + i)) "node MQTT WebSocket"
    port_free $((REST_PORT_BASE + i)) "node REST"
    port_free $((GRPC_PORT_BASE + i)) "node gRPC"
  done

  CLUSTER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/connstate-cluster.XXXXXX")
  : >"$CLUSTER_DIR/pids"
  if [ "$background" = 0 ]; then
    trap 'stop_dir "$CLUSTER_DIR"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
  else
    trap 'stop_dir "$CLUSTER_DIR"' EXIT
  fi

  local urls="" routes j
  for i in $(seq 0 $((NATS_SERVERS - 1))); do
    urls+="${urls:+,}nats://127.0.0.1:$((NATS_PORT_BASE + i))"
  done
  for i in $(seq 0 $((NATS_SERVERS - 1))); do
    routes=""
    for j in $(seq 0 $((NATS_SERVERS - 1))); do
      [ "$j" = "$i" ] && continue
      routes+="${routes:+, }nats-route://127.0.0.1:$((NATS_ROUTE_PORT_BASE + j))"
    done
    mkdir -p "$CLUSTER_DIR/nats$((i + 1))"
    cat >"$CLUSTER_DIR/nats$((i + 1))/nats.conf" <<EOF
server_name: nats$((i + 1))
listen: 127.0.0.1:$((NATS_PORT_BASE + i))
http: 127.0.0.1:$((NATS_HTTP_PORT_BASE + i))
jetstream {
  store_dir: "$CLUSTER_DIR/nats$((i + 1))/store"
  max_memory_store: 256MB
  max_file_store: 1GB
}
cluster {
  name: connstate
  listen: 127.0.0.1:$((NATS_ROUTE_PORT_BASE + i))
  routes: [$routes]
}
EOF
    # Its own session: Ctrl-C reaches the servers only through the trap,
    # which stops the nodes before NATS.
    setsid "$nats" -js -c "$CLUSTER_DIR/nats$((i + 1))/nats.conf" \
      >"$CLUSTER_DIR/nats$((i + 1)).log" 2>&1 </dev/null &
    echo "nats$((i + 1)) $!" >>"$CLUSTER_DIR/pids"
  done

  # JetStream is usable once every server reports itself healthy and the
  # cluster has elected its meta leader.
  local ready=0 healthy name pid
  for _ in $(seq 1 200); do
    healthy=0
    for i in $(seq 0 $((NATS_SERVERS - 1))); do
      if curl -sf "http://127.0.0.1:$((NATS_HTTP_PORT_BASE + i))/healthz" >/dev/null 2>&1; then
        healthy=$((healthy + 1))
      fi
    done
    if [ "$healthy" = "$NATS_SERVERS" ] &&
      curl -sf "http://127.0.0.1:$NATS_HTTP_PORT_BASE/jsz" | grep -q '"leader"'; then
      ready=1
      break
    fi
    while read -r name pid; do
      alive "$pid" || { show_logs "$CLUSTER_DIR" "$name"; die "$name exited during start-up"; }
    done < <(pids_of "$CLUSTER_DIR")
    sleep 0.1
  done
  [ "$ready" = 1 ] || { show_logs "$CLUSTER_DIR" "nats*"; die "the NATS cluster was not healthy within 20 s"; }

  local node
  for i in $(seq 0 $((CLUSTER_NODES - 1))); do
    node="node$((i + 1))"
    setsid "$connstate" serve \
      --data-dir "$CLUSTER_DIR/$node" \
      --mqtt-listen "127.0.0.1:$((MQTT_PORT_BASE + i))" \
      --mqtt-ws-listen "127.0.0.1:$((MQTT_WS_PORT_BASE + i))" \
      --mqtt-tls-listen off \
      --rest-listen "127.0.0.1:$((REST_PORT_BASE + i))" \
      --grpc-listen "127.0.0.1:$((GRPC_PORT_BASE + i))" \
      --cluster-nats "$urls" \
      --node-id "$node" \
      "${extra[@]}" \
      >"$CLUSTER_DIR/$node.log" 2>&1 </dev/null &
    echo "$node $!" >>"$CLUSTER_DIR/pids"
  done

  local waiting
  for i in $(seq 0 $((CLUSTER_NODES - 1))); do
    node="node$((i + 1))"
    waiting=0
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$((REST_PORT_BASE + i))/ready" || true)" = 200 ]; do
      pid=$(awk -v n="$node" '$1 == n { print $2 }' "$CLUSTER_DIR/pids")
      alive "$pid" || { show_logs "$CLUSTER_DIR" "$node"; die "$node exited during start-up"; }
      waiting=$((waiting + 1))
      [ "$waiting" -lt 600 ] || { show_logs "$CLUSTER_DIR" "$node"; die "$node was not ready within 60 s"; }
      sleep 0.1
    done
  done

  {
    echo "NATS (JetStream cluster \"connstate\"): $urls"
    echo "folder (data and logs): $CLUSTER_DIR"
    if [ "$CLUSTER_NODES" -gt 0 ]; then
      printf '%-6s  %-16s  %-31s  %-22s  %s\n' node MQTT "MQTT WebSocket" REST gRPC
      for i in $(seq 0 $((CLUSTER_NODES - 1))); do
        printf '%-6s  %-16s  %-31s  %-22s  %s\n' "node$((i + 1))" \
          "127.0.0.1:$((MQTT_PORT_BASE + i))" \
          "ws://127.0.0.1:$((MQTT_WS_PORT_BASE + i))/mqtt" \
          "http://127.0.0.1:$((REST_PORT_BASE + i))" \
          "127.0.0.1:$((GRPC_PORT_BASE + i))"
      done
    fi
  } | tee "$CLUSTER_DIR/addresses"

  if [ "$background" = 1 ]; then
    echo "$CLUSTER_DIR" >"$STATE_FILE"
    trap - EXIT
    echo "running in the background: scripts/cluster.sh stop"
    return 0
  fi
  echo "running: Ctrl-C stops every node and server"
  # Returns when a process exits on its own; the trap then stops the rest.
  while true; do
    while read -r name pid; do
      if ! alive "$pid"; then
        show_logs "$CLUSTER_DIR" "$name"
        die "$name exited; stopping the cluster"
      fi
    done < <(pids_of "$CLUSTER_DIR")
    sleep 1
  done
}

status() {
  [ -f "$STATE_FILE" ] || { echo "no cluster started in the background (no $STATE_FILE)"; return 0; }
  local dir name pid state
  dir=$(cat "$STATE_FILE")
  cat "$dir/addresses" 2>/dev/null || echo "folder: $dir"
  while read -r name pid; do
    if alive "$pid"; then state="running (pid $pid)"; else state="not running"; fi
    echo "$name: $state"
  done < <(pids_of "$dir")
}

command=${1:-start}
[ $# -gt 0 ] && shift
case "$command" in
  start) start "$@" ;;
  stop)
    [ -f "$STATE_FILE" ] || die "no cluster started in the background (no $STATE_FILE)"
    stop_dir "$(cat "$STATE_FILE")"
    echo "stopped"
    ;;
  status) status ;;
  *) die "usage: scripts/cluster.sh [start [--background] [-- serve flags]|stop|status]" ;;
esac
