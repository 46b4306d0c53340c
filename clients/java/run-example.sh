#!/usr/bin/env bash
# Runs the who-is-online example (examples/, compiled against the installed
# SDK) through Maven with the given arguments, as one command for
# ../check-example.sh. Maven's local repository: $CONNSTATE_MAVEN_REPO, by
# default ~/.m2/repository.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="${CONNSTATE_MAVEN_REPO:-$HOME/.m2/repository}"
# Maven prints colour resets around the program's output, on both streams,
# even in batch mode: both go through the filter (the caller reads them
# together).
mvn -B -ntp -q "-Dmaven.repo.local=$repo" -f "$here/examples/pom.xml" exec:java -Dexec.args="$*" 2>&1 \
  | sed 's/\x1b\[[0-9;]*m//g'
exit "${PIPESTATUS[0]}"
