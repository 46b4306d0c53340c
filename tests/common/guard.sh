# Runs "$@" (a server) in the background and stops it on a line of standard
# input (`term` = SIGTERM, anything else = SIGKILL) or at end of input; exits
# with the server's status once the server has ended, so that waiting for the
# guard means the server is gone. The test harnesses (tests/common/nats.rs,
# tests/mqtt/cluster.py) run every server under it with `sh -c`.
exec 3<&0
"$@" 3<&- </dev/null &
server=$!
(
  while read -r how <&3; do
    case "$how" in
      term) kill -TERM "$server" 2>/dev/null ;;
      *) kill -KILL "$server" 2>/dev/null ;;
    esac
  done
  kill -KILL "$server" 2>/dev/null
) &
watcher=$!
exec 3<&-
wait "$server"
status=$?
kill "$watcher" 2>/dev/null
exit "$status"
