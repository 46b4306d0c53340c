#!/usr/bin/env bash
# Runs the Go client's tests against a real server binary:
# $CONNSTATE_BIN, default <repo>/target/debug/connstate.
set -euo pipefail
cd "$(dirname "$0")"

bin="${CONNSTATE_BIN:-../../target/debug/connstate}"
if [[ ! -x "$bin" ]]; then
  echo "connstate server binary not found at $bin (cargo build --bin connstate, or set CONNSTATE_BIN)" >&2
  exit 1
fi
CONNSTATE_BIN="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
export CONNSTATE_BIN

go mod download
go vet ./...
go test -count=1 -v ./...
