"""Watch through the synchronous client: snapshot, filters, resume across a
server restart, RESOURCE_EXHAUSTED, and resynchronisation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from connstate_client import (
    Backoff,
    Client,
    ConnstateError,
    Watch,
    WatchEvent,
    WatchEventType,
    pb,
)
from conftest import AUTH, BROKER, Server, connected, disconnected, eventually, free_port


def next_events(watch: Watch, count: int, *, types: set[WatchEventType] | None = None) -> list[WatchEvent]:
    out = []
    it = iter(watch)
    while len(out) < count:
        event = next(it)
        if types is None or event.type in types:
            out.append(event)
    return out


class Collector:
    """Consumes a watch on a thread, so that the test can restart servers and
    ingest meanwhile."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.events: list[WatchEvent] = []
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.watch:
                with self._lock:
                    self.events.append(event)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def snapshot(self) -> list[WatchEvent]:
        with self._lock:
            return list(self.events)

    def wait_for(self, done: Callable[[list[WatchEvent]], bool], limit: float = 30.0) -> list[WatchEvent]:
        def check() -> list[WatchEvent] | None:
            if self.error is not None:
                raise self.error
            events = self.snapshot()
            return events if done(events) else None

        return eventually(check, limit)

    def stop(self) -> None:
        self.watch.cancel()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "watch did not end after cancel()"


def changes(events: list[WatchEvent]) -> list[WatchEvent]:
    return [e for e in events if e.type is WatchEventType.CHANGE]


def test_snapshot_then_live_changes(server: Server) -> None:
    with Client(server.address, **AUTH) as client:
        client.ingest([connected(f"d:local:t:s{i}", i + 1) for i in range(5)], broker=BROKER)
        client.ingest([connected("a:local:app", 1)], broker=BROKER)
        with client.watch(
            include_snapshot=True,
            filter={"connection_status": pb.CONNECTION_STATUS_CONNECTED, "client_type": pb.CLIENT_TYPE_DEVICE},
        ) as watch:
            snapshot = next_events(watch, 6)
            assert [e.type for e in snapshot] == [WatchEventType.SNAPSHOT] * 5 + [WatchEventType.SNAPSHOT_COMPLETE]
            assert sorted(e.client_id for e in snapshot[:5]) == [f"d:local:t:s{i}" for i in range(5)]
            assert all(e.kind == pb.CHANGE_KIND_SNAPSHOT and e.state is not None for e in snapshot[:5])
            assert snapshot[5].revision == 6
            assert watch.last_revision == 6

            client.ingest([disconnected("d:local:t:s3", 4)], broker=BROKER)
            client.ingest([connected("a:local:app", 2)], broker=BROKER)  # filtered out
            client.ingest([connected("d:local:t:s9", 9)], broker=BROKER)
            live = next_events(watch, 2)
            assert [(e.type, e.client_id, e.revision) for e in live] == [
                (WatchEventType.CHANGE, "d:local:t:s3", 7),
                (WatchEventType.CHANGE, "d:local:t:s9", 9),
            ]
            assert live[0].state is not None
            assert live[0].state.connection_status == pb.CONNECTION_STATUS_DISCONNECTED
            assert live[0].change is not None and live[0].change.log_entry.kind == pb.LOG_KIND_DISCONNECTED


def test_live_watch_without_revision_sees_changes_after_it_started(server: Server) -> None:
    with Client(server.address, **AUTH) as client:
        before = client.ingest([connected("d:local:t:old", 1)], broker=BROKER).revision
        with client.watch(kinds=[pb.CHANGE_KIND_CONNECTED], heartbeat_interval=1, heartbeats=True) as watch:
            # The first heartbeat proves the stream is open.
            first = next_events(watch, 1)
            assert first[0].type is WatchEventType.HEARTBEAT
            assert first[0].revision == before
            client.ingest([disconnected("d:local:t:old", 1), connected("d:local:t:new", 1)], broker=BROKER)
            got = next_events(watch, 1, types={WatchEventType.CHANGE})
            assert (got[0].client_id, got[0].revision) == ("d:local:t:new", before + 2)


def test_watch_resumes_across_a_server_restart(make_server: Callable[..., Server]) -> None:
    server = make_server("--shutdown-grace", "1s", port=free_port())
    client = Client(server.address, **AUTH, wait_for_ready=True, timeout=20)
    try:
        online = [(f"d:local:r:a{i}", i + 1) for i in range(10)]
        last = client.ingest([connected(cid, conn) for cid, conn in online], broker=BROKER).revision
        watch = client.watch(start_revision=0, max_retries=100, backoff=Backoff(0.05, 0.5))
        collector = Collector(watch)
        collector.wait_for(lambda ev: len(ev) >= 10)

        # Writes race with the stop. The restart records nothing for the
        # clients of another broker (it did not restart): they stay
        # connected, until that broker reports their connections lost (new
        # revisions, as it would after losing them while the server was away).
        for round in range(2):
            batch_b = [(f"d:local:r:b{round}-{i}", i + 1) for i in range(5)]
            last = client.ingest([connected(cid, conn) for cid, conn in batch_b], broker=BROKER).revision
            online += batch_b
            server.restart()
            pages = list(
                client.list_pages(
                    filter={"client_id_prefix": "d:local:r:", "connection_status": pb.CONNECTION_STATUS_CONNECTED}
                )
            )
            assert sorted(s.client_id for p in pages for s in p.states) == sorted(cid for cid, _ in online)
            assert pages[-1].revision == last, "the restart recorded nothing"
            last = client.ingest(
                [disconnected(cid, conn, cause=pb.DISCONNECT_CAUSE_SOCKET_CLOSED) for cid, conn in online],
                broker=BROKER,
            ).revision
            online = []
            for batch in range(3):
                batch_c = [(f"d:local:r:c{round}-{batch}-{i}", i + 1) for i in range(7)]
                last = client.ingest([connected(cid, conn) for cid, conn in batch_c], broker=BROKER).revision
                online += batch_c

        events = collector.wait_for(lambda ev: bool(ev) and ev[-1].revision >= last)
        collector.stop()
        got = [e.revision for e in events]
        assert all(e.type is WatchEventType.CHANGE for e in events)
        assert got == list(range(1, last + 1)), "every change exactly once, in revision order"
        # `reconnects` counts resumes (a broken stream, then one that
        # delivered): a watch still backing off from the first restart when
        # the second comes resumes once for both.
        assert watch.reconnects >= 1
        lost = [e for e in events if e.kind == pb.CHANGE_KIND_DISCONNECTED]
        assert len(lost) == 15 + 26, "the disconnects the broker reported after each restart"
        assert all(e.state.last_disconnect_initiator == pb.DISCONNECT_INITIATOR_NETWORK for e in lost)  # type: ignore[union-attr]
    finally:
        client.close()


def test_watch_resumes_after_resource_exhausted(make_server: Callable[..., Server]) -> None:
    server = make_server("--watch-buffer", "16")
    # Small HTTP/2 windows, so that little can hide in transport buffers.
    options = {"grpc.http2.bdp_probe": 0, "grpc.http2.lookahead_bytes": 4096}
    with Client(server.address, **AUTH, channel_options=options) as client:
        watch = client.watch(start_revision=0, max_retries=20, backoff=Backoff(0.01, 0.1))
        it = iter(watch)
        client.ingest([connected("d:local:x:first", 1)], broker=BROKER)
        assert next(it).revision == 1
        # The watcher reads nothing while many commits happen.
        total = 1
        for batch in range(60):
            total = client.ingest(
                [connected(f"d:local:x:b{batch}-{i}", i + 1) for i in range(100)], broker=BROKER
            ).revision
        revisions = [1]
        deadline = time.monotonic() + 60
        while revisions[-1] < total:
            assert time.monotonic() < deadline
            event = next(it)
            assert event.type is WatchEventType.CHANGE
            revisions.append(event.revision)
        watch.cancel()
        assert revisions == list(range(1, total + 1))
        assert watch.reconnects >= 1, "the server ended the slow watcher at least once"


def test_watch_resynchronises_when_its_revision_left_the_feed(make_server: Callable[..., Server]) -> None:
    server = make_server("--retention-interval", "100ms", "--shutdown-grace", "1s", port=free_port())
    with Client(server.address, **AUTH, wait_for_ready=True, timeout=20) as client:
        client.ingest([connected(f"d:local:o:a{i}", i + 1) for i in range(10)], broker=BROKER)
        watch = client.watch(
            start_revision=0, filter={"client_id_prefix": "d:local:o:"}, backoff=Backoff(0.05, 0.5), max_retries=100
        )
        it = iter(watch)
        first = [next(it) for _ in range(10)]
        assert [e.revision for e in first] == list(range(1, 11))

        # While the watcher is away, the feed moves on and is cut short. The
        # restart records nothing for another broker's clients; that broker
        # reports the ten connections lost: revisions 11..20.
        server.restart()
        client.ingest(
            [disconnected(f"d:local:o:a{i}", i + 1, cause=pb.DISCONNECT_CAUSE_SOCKET_CLOSED) for i in range(10)],
            broker=BROKER,
        )
        client.update_settings({"feed_max_entries": 5}, ["feed_max_entries"])
        last = client.ingest([connected(f"d:local:o:b{i}", i + 1) for i in range(10)], broker=BROKER).revision
        client.ingest([disconnected("d:local:o:b0", 1)], broker=BROKER)
        client.ingest([connected("d:local:other", 1)], broker=BROKER)  # filtered out

        def trimmed() -> bool | None:
            try:
                call = client.states_stub.WatchConnections(pb.WatchConnectionsRequest(start_revision=10), timeout=2)
                next(call)
            except Exception as e:  # noqa: BLE001
                return True if getattr(e, "code", lambda: None)().name == "OUT_OF_RANGE" else None
            return None

        eventually(trimmed)

        resync = next(it)
        assert resync.type is WatchEventType.RESYNC
        assert resync.revision == 10
        assert "no longer" in resync.reason
        snapshot = []
        while (event := next(it)).type is WatchEventType.SNAPSHOT:
            snapshot.append(event)
        assert event.type is WatchEventType.SNAPSHOT_COMPLETE
        complete = event.revision
        assert complete >= last + 1
        states = {e.client_id: e.state for e in snapshot}
        assert len(states) == len(snapshot) == 20
        assert states["d:local:o:a0"].connection_status == pb.CONNECTION_STATUS_DISCONNECTED  # type: ignore[union-attr]
        assert states["d:local:o:b0"].connection_status == pb.CONNECTION_STATUS_DISCONNECTED  # type: ignore[union-attr]
        assert states["d:local:o:b1"].connection_status == pb.CONNECTION_STATUS_CONNECTED  # type: ignore[union-attr]

        # Then live, exactly once, in order.
        after = [client.ingest([disconnected(f"d:local:o:b{i}", i + 1)], broker=BROKER).revision for i in range(1, 4)]
        live = [next(it) for _ in range(3)]
        assert [(e.type, e.revision) for e in live] == [(WatchEventType.CHANGE, r) for r in after]
        assert all(r > complete for r in after)
        watch.cancel()


def test_out_of_range_raises_without_resync(make_server: Callable[..., Server]) -> None:
    server = make_server("--retention-interval", "100ms")
    with Client(server.address, **AUTH) as client:
        for batch in range(3):
            client.ingest([connected(f"d:local:n:{batch}-{i}", i + 1) for i in range(10)], broker=BROKER)
        client.update_settings({"feed_max_entries": 5}, ["feed_max_entries"])

        def attempt() -> ConnstateError | None:
            watch = client.watch(start_revision=1, resync=False)
            try:
                next(iter(watch))
            except ConnstateError as e:
                return e
            finally:
                watch.cancel()
            return None

        error = eventually(attempt)
        assert error.code.name == "OUT_OF_RANGE"
        assert error.oldest_revision is not None and 1 < error.oldest_revision <= 25


def test_cancel_ends_a_blocked_iteration(server: Server) -> None:
    with Client(server.address, **AUTH) as client:
        watch = client.watch()
        collector = Collector(watch)
        time.sleep(0.2)  # let it block in the stream (no event is expected)
        collector.stop()
        assert collector.error is None


def test_backoff_never_waits_longer_than_its_maximum() -> None:
    backoff = Backoff(initial=0.1, maximum=2.0)
    delays = [backoff.delay(attempt) for attempt in range(1, 12) for _ in range(200)]
    assert max(delays) <= 2.0, "the jitter must not push a delay past the maximum"
    assert min(backoff.delay(1) for _ in range(200)) >= 0.08, "-20 % jitter at most"
    capped = [backoff.delay(10) for _ in range(200)]
    assert min(capped) >= 1.6 and max(capped) > 1.6, "±20 % jitter below the cap"
    assert Backoff().maximum == 5.0, "the contract's default cap"


def test_reconnects_counts_resumes_not_attempts(make_server: Callable[..., Server]) -> None:
    server = make_server("--shutdown-grace", "1s", port=free_port())
    client = Client(server.address, **AUTH, wait_for_ready=True, timeout=20)
    try:
        client.ingest([connected("d:local:n:a", 1)], broker=BROKER)
        watch = client.watch(start_revision=0, backoff=Backoff(0.02, 0.05))
        collector = Collector(watch)
        collector.wait_for(lambda ev: len(ev) >= 1)
        server.stop()
        # Down long enough for many failed attempts (delays of at most 50 ms).
        time.sleep(1.5)
        server.start()
        last = client.ingest([connected("d:local:n:b", 2)], broker=BROKER).revision
        events = collector.wait_for(lambda ev: bool(ev) and ev[-1].revision >= last)
        collector.stop()
        assert [e.revision for e in events] == [1, 2]
        assert watch.reconnects == 1, "one resume, however many attempts it took"
    finally:
        client.close()
