#!/usr/bin/env bash
# The web console in a real browser: Debian's chromium driven by selenium
# (through Debian's chromium-driver) against the real server binary
# ($CONNSTATE_BIN, by default <repo>/target/debug/connstate; build it with
# `cargo build --bin connstate`), with a real MQTT client (paho-mqtt).
# Installs chromium and chromium-driver when missing (as root, with apt-get),
# the pinned Python packages into .venv (git-ignored). Screenshots of each
# page go to <repo>/target/console-screenshots. Extra arguments go to pytest.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

export CONNSTATE_BIN="${CONNSTATE_BIN:-$here/../../target/debug/connstate}"
if [ ! -x "$CONNSTATE_BIN" ]; then
  echo "connstate server binary not found at $CONNSTATE_BIN (build it with: cargo build --bin connstate)" >&2
  exit 1
fi

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "chromium or chromedriver not found: install Debian's chromium and chromium-driver packages" >&2
    exit 1
  fi
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt

export CONSOLE_SCREENSHOTS="${CONSOLE_SCREENSHOTS:-$here/../../target/console-screenshots}"
mkdir -p "$CONSOLE_SCREENSHOTS"
exec .venv/bin/pytest -q "$@"
