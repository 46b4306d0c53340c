#!/usr/bin/env bash
# Regenerates src/gen from ../../proto with the generator versions pinned in
# package-lock.json (buf and protoc-gen-es are dev dependencies).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x node_modules/.bin/buf ] || [ ! -x node_modules/.bin/protoc-gen-es ]; then
  npm ci --no-audit --no-fund
fi
PATH="$PWD/node_modules/.bin:$PATH" buf generate ../../proto --template buf.gen.yaml
