#!/usr/bin/env bash
# Runs an SDK example against a real auth-mode server, the three ways every
# example must support (clients/CONTRACT.md, "Credentials and TLS"):
#   1. address and credentials from CONNSTATE_ADDRESS, CONNSTATE_API_KEY and
#      CONNSTATE_API_TOKEN: it succeeds and prints a line matching PATTERN;
#   2. the same as the flags --address, --api-key and --api-token (the
#      environment empty): it succeeds and prints a line matching PATTERN;
#   3. the address only: the server refuses it, and it fails, naming
#      UNAUTHENTICATED.
#
#   clients/check-example.sh PATTERN COMMAND [ARGS...]
#
# COMMAND ARGS... is the example with the arguments that make it end by
# itself (for example --snapshot-only). The server is $CONNSTATE_BIN, on free
# loopback ports, with a fresh data folder; it is stopped at the end.
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: $0 PATTERN COMMAND [ARGS...]" >&2
  exit 2
fi
pattern="$1"
shift
: "${CONNSTATE_BIN:?set CONNSTATE_BIN to the connstate server binary}"

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

key=example-admin
token=example-token-0123456789
"$CONNSTATE_BIN" serve --grpc-listen 127.0.0.1:0 --rest-listen 127.0.0.1:0 \
  --mqtt-listen 127.0.0.1:0 --mqtt-ws-listen 127.0.0.1:0 --data-dir "$work/data" \
  --auth true --admin-key "$key" --admin-token "$token" >"$work/out" 2>"$work/log" &
server_pid=$!
address=""
for _ in $(seq 1 200); do
  address="$(sed -n 's/^connstate grpc listening on //p' "$work/out")"
  [ -n "$address" ] && break
  sleep 0.1
done
if [ -z "$address" ]; then
  echo "the server did not start; its log:" >&2
  cat "$work/log" >&2
  exit 1
fi

name="$*"
# Every run is bounded: an example that hangs fails the check.
run() { timeout 120 "$@"; }

if ! out="$(run env -u CONNSTATE_ADDRESS -u CONNSTATE_API_KEY -u CONNSTATE_API_TOKEN \
  CONNSTATE_ADDRESS="$address" CONNSTATE_API_KEY="$key" CONNSTATE_API_TOKEN="$token" "$@" 2>&1)"; then
  echo "$name failed with credentials from the environment:" >&2
  echo "$out" >&2
  exit 1
fi
if ! grep -Eq "$pattern" <<<"$out"; then
  echo "$name (credentials from the environment) printed no line matching '$pattern':" >&2
  echo "$out" >&2
  exit 1
fi

if ! out="$(run env -u CONNSTATE_ADDRESS -u CONNSTATE_API_KEY -u CONNSTATE_API_TOKEN \
  "$@" --address "$address" --api-key "$key" --api-token "$token" 2>&1)"; then
  echo "$name failed with credentials as flags:" >&2
  echo "$out" >&2
  exit 1
fi
if ! grep -Eq "$pattern" <<<"$out"; then
  echo "$name (credentials as flags) printed no line matching '$pattern':" >&2
  echo "$out" >&2
  exit 1
fi

if out="$(run env -u CONNSTATE_API_KEY -u CONNSTATE_API_TOKEN CONNSTATE_ADDRESS="$address" "$@" 2>&1)"; then
  echo "$name ran without credentials against an auth-mode server:" >&2
  echo "$out" >&2
  exit 1
fi
if ! grep -q "UNAUTHENTICATED" <<<"$out"; then
  echo "$name, refused for want of credentials, did not say UNAUTHENTICATED:" >&2
  echo "$out" >&2
  exit 1
fi
echo "example $name: runs with credentials from the environment and from flags, refused without"
