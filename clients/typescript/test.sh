#!/usr/bin/env bash
# Installs the dependencies (from package-lock.json), builds, and runs the
# test suite against the real server binary: $CONNSTATE_BIN, by default
# <repository>/target/debug/connstate, then runs the example against an
# auth-mode server.
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
npm ci --no-audit --no-fund
rm -rf dist
npm run build
node --test --test-concurrency=1 dist/test/*.test.js

# The example against an auth-mode server: credentials from the environment,
# then as flags, then none (refused).
../check-example.sh '^== online at revision 0$' node dist/examples/who-is-online.js --snapshot-only
