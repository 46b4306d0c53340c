#!/usr/bin/env bash
# Installs the package and its test dependencies into .venv (git-ignored),
# then runs the test suite against the real server binary: $CONNSTATE_BIN,
# by default <repo>/target/debug/connstate, then runs the example against an
# auth-mode server.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

export CONNSTATE_BIN="${CONNSTATE_BIN:-$here/../../target/debug/connstate}"
if [ ! -x "$CONNSTATE_BIN" ]; then
  echo "connstate server binary not found at $CONNSTATE_BIN (build it with: cargo build --bin connstate)" >&2
  exit 1
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
rm -rf build ./*.egg-info
.venv/bin/python -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps .
.venv/bin/python -m pip install --quiet --disable-pip-version-check .
rm -rf build ./*.egg-info

# The pytest script (not `python -m pytest`) keeps this folder off sys.path,
# so the tests import the installed package.
.venv/bin/pytest "$@"

# The example against an auth-mode server: credentials from the environment,
# then as flags, then none (refused).
../check-example.sh '^== online at revision 0$' .venv/bin/python examples/who_is_online.py --snapshot-only
