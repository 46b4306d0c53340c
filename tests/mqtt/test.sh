#!/usr/bin/env bash
# MQTT integration tests: paho-mqtt against the real broker. Installs the
# pinned test dependencies and the project's Python SDK into .venv
# (git-ignored), then runs pytest against $CONNSTATE_BIN (by default
# <repo>/target/debug/connstate; build it with `cargo build --bin connstate`).
# MQTT_TEST_BROKER=mosquitto runs the broker-behaviour tests against a
# Mosquitto 2.x on the PATH instead. Installs Mosquitto (Debian's package)
# when missing: the sources tests follow a real one. Extra arguments go to
# pytest.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

export CONNSTATE_BIN="${CONNSTATE_BIN:-$here/../../target/debug/connstate}"
if [ "${MQTT_TEST_BROKER:-connstate}" = "connstate" ] && [ ! -x "$CONNSTATE_BIN" ]; then
  echo "connstate server binary not found at $CONNSTATE_BIN (build it with: cargo build --bin connstate)" >&2
  exit 1
fi

# Mosquitto 2.x: the broker connstate's sources follow (test_sources.py), and
# the reference for MQTT_TEST_BROKER=mosquitto. Debian's package.
# The AWS IoT source tests make their certificates with openssl.
if ! command -v mosquitto >/dev/null 2>&1 || ! command -v mosquitto_passwd >/dev/null 2>&1 \
  || ! command -v openssl >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto openssl >/dev/null
  else
    echo "mosquitto or openssl not found: install Debian's mosquitto and openssl packages" >&2
    exit 1
  fi
fi

# The cluster tests (test_cluster_routing.py) run three nats-server processes
# (Debian's package): $NATS_SERVER, else nats-server on the PATH, else
# /usr/sbin/nats-server.
if [ "${MQTT_TEST_BROKER:-connstate}" = "connstate" ] && [ -z "${NATS_SERVER:-}" ] \
  && ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
  else
    echo "nats-server not found: install Debian's nats-server package, or set NATS_SERVER" >&2
    exit 1
  fi
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" -r requirements.txt
# The SDK, installed from the checkout (its build leaves files behind: remove them).
sdk=../../clients/python
rm -rf "$sdk/build" "$sdk"/*.egg-info
"${pip[@]}" --force-reinstall --no-deps "$sdk"
"${pip[@]}" "$sdk"
rm -rf "$sdk/build" "$sdk"/*.egg-info

exec .venv/bin/pytest -q "$@"
