#!/usr/bin/env bash
# Regenerates the code of every SDK under clients/ from proto/, with the
# generator versions each SDK pins. Running it on a clean checkout must
# change nothing: scripts/test.sh checks that. clients/java commits no
# generated code: its Maven build generates it from proto/ every time
# (clients/java/test.sh builds it).
set -euo pipefail
cd "$(dirname "$0")/.."

for sdk in python typescript go; do
  echo "== generating clients/$sdk"
  "clients/$sdk/generate.sh"
done
