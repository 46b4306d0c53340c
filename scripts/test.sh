#!/usr/bin/env bash
# Runs every check and test of the repository:
#  - Rust: formatting, lints, unit and integration tests (real servers on
#    port 0, real gRPC and HTTP clients, a SIGKILL crash test against the
#    real binary, a real three-server NATS JetStream cluster on loopback);
#  - the README's first command, run as written on free ports until /ready
#    answers, then stopped with SIGTERM;
#  - MQTT: the embedded broker against paho-mqtt (v3.1.1 and v5) clients;
#  - the web console in headless chromium (selenium) against the real
#    server, with a real MQTT client;
#  - SDKs: regenerating them from proto/ must change nothing, and each SDK's
#    own suite runs against the real server binary.
# It installs what it needs: the Rust components and Debian's nats-server
# here, each SDK's pinned dependencies in its own test script.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  export PATH="$HOME/.cargo/bin:$PATH"
  command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust with rustup first" >&2; exit 1; }
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# The cluster tests run real nats-server processes (Debian's nats-server).
if [ -z "${NATS_SERVER:-}" ]; then
  NATS_SERVER=$(command -v nats-server || true)
  [ -n "$NATS_SERVER" ] || [ ! -x /usr/sbin/nats-server ] || NATS_SERVER=/usr/sbin/nats-server
  if [ -z "$NATS_SERVER" ]; then
    echo "== installing nats-server (apt-get install -y nats-server)"
    if [ "$(id -u)" = 0 ]; then
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server; } ||
        { echo "apt-get install -y nats-server failed" >&2; exit 1; }
    elif sudo -n true 2>/dev/null; then
      { sudo -n apt-get update -qq && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server; } ||
        { echo "sudo apt-get install -y nats-server failed" >&2; exit 1; }
    else
      echo "nats-server is missing and cannot be installed here (not root, no sudo without a password):" >&2
      echo "install Debian's nats-server package, or set NATS_SERVER to a nats-server binary" >&2
      exit 1
    fi
    NATS_SERVER=$(command -v nats-server || echo /usr/sbin/nats-server)
  fi
fi
[ -x "$NATS_SERVER" ] || { echo "NATS_SERVER=$NATS_SERVER is not an executable" >&2; exit 1; }
export NATS_SERVER

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
cargo build --locked --bin connstate
export CONNSTATE_BIN="$PWD/target/debug/connstate"

echo "== the README's first command starts the service"
scripts/check-readme-start.sh

scripts/generate-sdks.sh
if ! git diff --exit-code --stat -- clients || [ -n "$(git status --porcelain -- clients)" ]; then
  echo "the generated SDK code is not what proto/ gives: run scripts/generate-sdks.sh and commit" >&2
  git status --porcelain -- clients >&2
  exit 1
fi

echo "== testing the MQTT broker with paho-mqtt (tests/mqtt)"
tests/mqtt/test.sh

echo "== testing the web console in chromium (tests/console)"
tests/console/test.sh

for sdk in python typescript go java; do
  echo "== testing clients/$sdk"
  "clients/$sdk/test.sh"
done
