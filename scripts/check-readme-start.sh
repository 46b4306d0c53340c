#!/usr/bin/env bash
# Runs the README's first command the way a new user would, with free ports
# (port 0; the server prints the addresses it bound) and a temporary data
# folder appended, then checks that REST /ready answers 200 and that SIGTERM
# stops the server with exit status 0.
#
# The line is read from README.md so that the two cannot drift apart. Its
# `--release` is left out: binary selection, argument parsing and start-up do
# not depend on the profile, and a release build would cost several minutes
# of a 2-core CI run for no other check; everything else on the line runs
# as written.
set -euo pipefail
cd "$(dirname "$0")/.."

line=$(awk '/^```sh$/ { getline; print; exit }' README.md)
case "$line" in
  "cargo run "*) ;;
  *) echo "the README's first command is not a 'cargo run' line: $line" >&2; exit 1 ;;
esac
read -r -a cmd <<<"${line/ --release/}"
echo "running: ${cmd[*]} (+ free ports and a temporary data folder)"

dir=$(mktemp -d)
server=
cleanup() {
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then kill -KILL "$server" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

# `cargo run` replaces itself with the server, so $! is the server's pid.
"${cmd[@]}" \
  --grpc-listen 127.0.0.1:0 --rest-listen 127.0.0.1:0 \
  --mqtt-listen 127.0.0.1:0 --mqtt-ws-listen 127.0.0.1:0 \
  --data-dir "$dir/data" >"$dir/stdout" 2>"$dir/stderr" &
server=$!

fail() {
  echo "$1" >&2
  echo "--- stdout" >&2; cat "$dir/stdout" >&2
  echo "--- stderr" >&2; tail -n 40 "$dir/stderr" >&2
  exit 1
}

# Bounded: cargo may still have to build the binary.
rest=
for _ in $(seq 1 600); do
  rest=$(sed -n 's/^connstate rest listening on //p' "$dir/stdout")
  [ -n "$rest" ] && break
  kill -0 "$server" 2>/dev/null || fail "the README's first command exited before serving"
  sleep 0.5
done
[ -n "$rest" ] || fail "the README's first command did not start serving within 300 s"

status=
for _ in $(seq 1 20); do
  status=$(curl -s -o /dev/null -w '%{http_code}' "http://$rest/ready" || true)
  [ "$status" = 200 ] && break
  sleep 0.25
done
[ "$status" = 200 ] || fail "GET /ready answered $status, not 200"

kill -TERM "$server"
code=0
wait "$server" || code=$?
server=
[ "$code" = 0 ] || fail "the server exited with status $code after SIGTERM"
echo "the README's first command serves: /ready 200, SIGTERM exit 0"
