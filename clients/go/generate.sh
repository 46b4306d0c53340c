#!/usr/bin/env bash
# Regenerates connstatev1/ from ../../proto with pinned generators:
#   protoc-gen-go       (google.golang.org/protobuf)  PROTOC_GEN_GO_VERSION
#   protoc-gen-go-grpc  (google.golang.org/grpc)      PROTOC_GEN_GO_GRPC_VERSION
#   buf                 (npm @bufbuild/buf, locked in tools/package-lock.json)
# The plugins are installed into .bin/ and buf into tools/node_modules/ (both git-ignored).
set -euo pipefail
cd "$(dirname "$0")"

PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2

BIN="$PWD/.bin"
mkdir -p "$BIN"
stamp="$BIN/versions"
want="protoc-gen-go=$PROTOC_GEN_GO_VERSION protoc-gen-go-grpc=$PROTOC_GEN_GO_GRPC_VERSION"
if [[ ! -x "$BIN/protoc-gen-go" || ! -x "$BIN/protoc-gen-go-grpc" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  GOBIN="$BIN" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
  GOBIN="$BIN" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
  echo "$want" >"$stamp"
fi

if [[ ! -x tools/node_modules/.bin/buf ]]; then
  (cd tools && npm ci --no-audit --no-fund)
fi

rm -f connstatev1/*.pb.go
tools/node_modules/.bin/buf generate --template buf.gen.yaml
echo "generated: $(ls connstatev1 | tr '\n' ' ')"
