#!/usr/bin/env bash
# Runs the Go client's tests against a real server binary:
# $CONNSTATE_BIN, default <repo>/target/debug/connstate, runs its examples
# against an auth-mode server, and builds a fresh module by the README's
# install route.
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

# The examples against an auth-mode server: credentials from the
# environment, then as flags, then none (refused).
examples="$(mktemp -d)"
trap 'rm -rf "$examples"' EXIT
go build -o "$examples/" ./examples/...
../check-example.sh 'recorded 6 event\(s\), revision [0-9]+$' "$examples/feed" -clients 5 -changes 0
../check-example.sh '^== online at revision 0$' "$examples/whoisonline" -snapshot-only

# The install route of the README: a fresh module outside this one, with a
# replace directive pointing at this checkout, builds.
fresh="$(mktemp -d)"
trap 'rm -rf "$fresh" "$examples"' EXIT
checkout="$(pwd)"
(
  cd "$fresh"
  go mod init example.com/myapp
  go mod edit -require=github.com/connstate/connstate/clients/go@v0.0.0 \
    -replace=github.com/connstate/connstate/clients/go="$checkout"
  cat > main.go <<'GO'
package main

import (
	"context"
	"fmt"

	"github.com/connstate/connstate/clients/go/connstate"
	"github.com/connstate/connstate/clients/go/connstatev1"
)

func main() {
	client, err := connstate.New("127.0.0.1:50051")
	if err != nil {
		panic(err)
	}
	defer client.Close()
	for s, err := range client.List(context.Background(), &connstatev1.ListConnectionStatesRequest{PageSize: 100}) {
		fmt.Println(s, err)
	}
}
GO
  go mod tidy
  go build ./...
  go vet ./...
)
echo "install route of the README: a fresh module builds against this checkout"
