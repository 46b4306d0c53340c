#!/usr/bin/env bash
# Runs every check and test of the repository:
#  - Rust: formatting, lints, unit and integration tests (real servers on
#    port 0, real gRPC and HTTP clients, a SIGKILL crash test against the
#    real binary);
#  - SDKs: regenerating them from proto/ must change nothing, and each SDK's
#    own suite runs against the real server binary.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
cargo build --locked --bin connstate
export CONNSTATE_BIN="$PWD/target/debug/connstate"

scripts/generate-sdks.sh
if ! git diff --exit-code --stat -- clients || [ -n "$(git status --porcelain -- clients)" ]; then
  echo "the generated SDK code is not what proto/ gives: run scripts/generate-sdks.sh and commit" >&2
  git status --porcelain -- clients >&2
  exit 1
fi

for sdk in python typescript go; do
  echo "== testing clients/$sdk"
  "clients/$sdk/test.sh"
done
