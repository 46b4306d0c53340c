"""The connstate side of bench/sources.sh.

  sources_watch.py watch ADDRESS PREFIX EXPECT TIMEOUT OUT
      follows WatchConnections for client ids starting with PREFIX and writes
      one line per change, "KIND CLIENT_ID COMMIT_NANOS RECEIVED_NANOS", to
      OUT; prints "ready" once the stream is open; ends when EXPECT connects
      and EXPECT disconnects were seen, or after TIMEOUT seconds.
  sources_watch.py report ACKS CHANGES
      joins the CONNACK times mqttload wrote (-ack-log) with those changes and
      prints the figures as one JSON object.
"""

from __future__ import annotations

import json
import sys
import threading
import time


def watch(address: str, prefix: str, expect: int, timeout: float, out: str) -> int:
    from connstate_client import Client, WatchEventType, pb

    kinds = {pb.CHANGE_KIND_CONNECTED: "connected", pb.CHANGE_KIND_DISCONNECTED: "disconnected"}
    seen = {"connected": 0, "disconnected": 0}
    lines: list[str] = []
    done = threading.Event()
    client = Client(address, timeout=10)
    stream = client.watch(filter={"client_id_prefix": prefix}, heartbeats=True, heartbeat_interval=1.0)

    def follow() -> None:
        ready = False
        for event in stream:
            now = time.time_ns()
            if not ready:
                print("ready", flush=True)
                ready = True
            if event.type != WatchEventType.CHANGE or event.change is None:
                continue
            kind = kinds.get(event.change.kind)
            if kind is None:
                continue
            commit = event.change.commit_time.ToNanoseconds()
            lines.append(f"{kind} {event.change.client_id} {commit} {now}\n")
            seen[kind] += 1
            if seen["connected"] >= expect and seen["disconnected"] >= expect:
                break
        done.set()

    threading.Thread(target=follow, daemon=True).start()
    finished = done.wait(timeout)
    stream.cancel()
    with open(out, "w") as f:
        f.writelines(lines)
    print(f"watch: {seen['connected']} connects, {seen['disconnected']} disconnects seen"
          + ("" if finished else f" (stopped after {timeout:.0f} s)"), file=sys.stderr)
    return 0


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(p / 100 * len(values) + 0.5)) - 1))]


def report(acks_path: str, changes_path: str) -> int:
    acks: dict[str, int] = {}
    with open(acks_path) as f:
        for line in f:
            cid, t = line.split()
            acks[cid] = int(t)
    first: dict[str, tuple[int, int]] = {}
    received = {"connected": [], "disconnected": []}
    with open(changes_path) as f:
        for line in f:
            kind, cid, commit, recv = line.split()
            received[kind].append(int(recv))
            if kind == "connected" and cid not in first:
                first[cid] = (int(commit), int(recv))
    to_commit = [(first[c][0] - t) / 1e6 for c, t in acks.items() if c in first]
    to_watch = [(first[c][1] - t) / 1e6 for c, t in acks.items() if c in first]

    def rate(times: list[int], start: int | None) -> float | None:
        if len(times) < 2 or start is None:
            return None
        span = (max(times) - start) / 1e9
        return round(len(times) / span, 1) if span > 0 else None

    start = min(acks.values()) if acks else None
    r = lambda v: None if v is None else round(v, 2)  # noqa: E731
    result = {
        "connacks": len(acks),
        "connects_followed": len(first),
        "disconnects_followed": len(received["disconnected"]),
        "missing": len(acks) - len(first),
        "connects_followed_per_s": rate(received["connected"], start),
        "disconnects_followed_per_s": rate(received["disconnected"], min(received["disconnected"], default=None)),
        "connack_to_commit_p50_ms": r(percentile(to_commit, 50)),
        "connack_to_commit_p99_ms": r(percentile(to_commit, 99)),
        "connack_to_watch_p50_ms": r(percentile(to_watch, 50)),
        "connack_to_watch_p99_ms": r(percentile(to_watch, 99)),
        "connack_to_watch_max_ms": r(percentile(to_watch, 100)),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "watch":
        sys.exit(watch(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]))
    if len(sys.argv) == 4 and sys.argv[1] == "report":
        sys.exit(report(sys.argv[2], sys.argv[3]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
