#!/usr/bin/env bash
# Runs every check and test of the repository: formatting, lints, unit and
# integration tests (real servers on port 0, real gRPC clients, a SIGKILL
# crash test against the real binary).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
