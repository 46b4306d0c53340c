#!/usr/bin/env bash
# Runs every check and test of the repository:
#  - Rust: formatting, lints, unit and integration tests (real servers on
#    port 0, real gRPC and HTTP clients, a SIGKILL crash test against the
#    real binary);
#  - the README's first command, run as written on free ports until /ready
#    answers, then stopped with SIGTERM;
#  - MQTT: the embedded broker against paho-mqtt (v3.1.1 and v5) clients;
#  - the web console in headless chromium (selenium) against the real
#    server, with a real MQTT client;
#  - SDKs: regenerating them from proto/ must change nothing, and each SDK's
#    own suite runs against the real server binary.
# It installs what it needs: the Rust components here, each SDK's pinned
# dependencies in its own test script.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  export PATH="$HOME/.cargo/bin:$PATH"
  command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust with rustup first" >&2; exit 1; }
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

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
