#!/usr/bin/env bash
# Builds the Java client (code generated from ../../proto by the build), runs
# its JUnit suite against the real server binary ($CONNSTATE_BIN, by default
# <repository>/target/debug/connstate), installs it into the local Maven
# repository as the README's install route does, then builds the example
# against that install and runs it against an auth-mode server.
# Installs a JDK (17 or later) and Maven with apt-get when they are missing.
# Maven's local repository: $CONNSTATE_MAVEN_REPO, by default ~/.m2/repository.
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

java_ok() {
  command -v javac >/dev/null 2>&1 || return 1
  local v
  v="$(javac -version 2>&1 | sed -n 's/^javac \([0-9]*\).*/\1/p')"
  [ -n "$v" ] && [ "$v" -ge 17 ]
}
if ! java_ok || ! command -v mvn >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "a JDK 17+ and Maven are needed (apt-get install openjdk-17-jdk-headless maven)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jdk-headless maven >/dev/null
fi

repo="${CONNSTATE_MAVEN_REPO:-$HOME/.m2/repository}"
mvn=(mvn -B -ntp "-Dmaven.repo.local=$repo")

# Build, test, and install into the local repository (the README's route).
"${mvn[@]}" install

# The example, built against the installed SDK, run against an auth-mode
# server the three ways every SDK's example is checked.
"${mvn[@]}" -q -f examples/pom.xml compile

export CONNSTATE_MAVEN_REPO="$repo"
../check-example.sh '^== online at revision 0$' ./run-example.sh --snapshot-only
