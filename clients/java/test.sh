#!/usr/bin/env bash
# Builds the Java client (code generated from ../../proto by the build), runs
# its JUnit suite against the real server binary ($CONNSTATE_BIN, by default
# <repository>/target/debug/connstate), installs it into the local Maven
# repository as the README's install route does, then builds the example
# against that install and runs it against an auth-mode server.
# Installs a JDK (17 or later) and Maven with apt-get when they are missing.
# Maven's local repository: $CONNSTATE_MAVEN_REPO, by default ~/.m2/repository.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${CONNSTATE_BIN:-$here/../../target/debug/connstate}"
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
if [ ! -x "$bin" ]; then
  echo "connstate server binary not found at $bin (build it with: cargo build --bin connstate)" >&2
  exit 1
fi
export CONNSTATE_BIN="$bin"
cd "$here"

java_ok() {
  command -v javac >/dev/null 2>&1 || return 1
  local v
  v="$(javac -version 2>&1 | sed -n 's/^javac \([0-9]*\).*/\1/p')"
  [ -n "$v" ] && [ "$v" -ge 17 ]
}
if ! java_ok || ! command -v mvn >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "a JDK 17+ and Maven are needed (apt-get install openjdk-17-jdk-headless maven)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jdk-headless maven >/dev/null
fi

repo="${CONNSTATE_MAVEN_REPO:-$HOME/.m2/repository}"
mvn=(mvn -B -ntp "-Dmaven.repo.local=$repo")

# Build, test, and install into the local repository (the README's route).
"${mvn[@]}" install

# The example, built against the installed SDK, run against an auth-mode
# server with the credentials in the environment.
"${mvn[@]}" -q -f examples/pom.xml compile

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
key=java-example-admin
token=java-example-token-0123456789
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

# (Maven prints colour resets around the program's output even in batch mode.)
run_example() {
  "${mvn[@]}" -q -f examples/pom.xml exec:java -Dexec.args="$*" | sed 's/\x1b\[[0-9;]*m//g'
  return "${PIPESTATUS[0]}"
}
out="$(CONNSTATE_ADDRESS="$address" CONNSTATE_API_KEY="$key" CONNSTATE_API_TOKEN="$token" \
  run_example --snapshot-only)"
echo "$out"
grep -q "^== online at revision 0$" <<<"$out"
out="$(run_example --address "$address" --api-key "$key" --api-token "$token" --snapshot-only)"
grep -q "^0 online$" <<<"$out"
if out="$(CONNSTATE_ADDRESS="$address" run_example --snapshot-only 2>&1)"; then
  echo "the example ran without credentials against an auth-mode server" >&2
  exit 1
fi
grep -q "UNAUTHENTICATED" <<<"$out"
echo "example: runs with credentials from the environment and from flags, refused without"
