"""The shared scenarios of the SDK contract (clients/CONTRACT.md) that the
other test modules do not cover, for the synchronous and the asyncio client:
a server killed for 40 s, a slow asyncio reader, a snapshot cut off half way,
cancellation during a backoff, and a read-only key."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from connstate_client import (
    AsyncClient,
    AsyncWatch,
    Backoff,
    Client,
    ConnstateError,
    WatchEvent,
    WatchEventType,
    pb,
)
from conftest import AUTH, BROKER, Server, connected, disconnected, eventually, free_port
from test_watch import Collector

# Small HTTP/2 windows, so that little can hide in transport buffers.
SMALL_WINDOWS = {"grpc.http2.bdp_probe": 0, "grpc.http2.lookahead_bytes": 4096}


def connects(prefix: str, n: int) -> list[pb.LifecycleEvent]:
    return [connected(f"{prefix}{i}", i + 1, i) for i in range(n)]


def lost(prefix: str, n: int) -> list[pb.LifecycleEvent]:
    """The disconnects a broker reports when it loses the connections of ``connects``."""
    return [disconnected(f"{prefix}{i}", i + 1, 100 + i, cause=pb.DISCONNECT_CAUSE_SOCKET_CLOSED) for i in range(n)]


class AsyncCollector:
    """Consumes an AsyncWatch on an event loop of its own thread, so that a
    synchronous test can follow it next to a synchronous watch."""

    def __init__(self, address: str, **watch_args: Any) -> None:
        self.events: list[WatchEvent] = []
        self.error: BaseException | None = None
        self.watch: AsyncWatch | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._address = address
        self._watch_args = watch_args
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()
        assert self._ready.wait(10), "the asyncio watch did not start"

    async def _run(self) -> None:
        try:
            async with AsyncClient(self._address, **AUTH) as client:
                self.watch = client.watch(**self._watch_args)
                self._loop = asyncio.get_running_loop()
                self._ready.set()
                async for event in self.watch:
                    self.events.append(event)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            self._ready.set()

    def wait_for_revision(self, revision: int, limit: float) -> None:
        def check() -> bool | None:
            if self.error is not None:
                raise self.error
            return True if self.events and self.events[-1].revision >= revision else None

        eventually(check, limit)

    def stop(self) -> None:
        if self._loop is not None and self.watch is not None:
            self._loop.call_soon_threadsafe(self.watch.cancel)
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the asyncio watch did not end after cancel()"


@pytest.mark.timeout(150)
def test_watches_resume_after_the_server_was_killed_for_40_seconds(make_server: Callable[..., Server]) -> None:
    """SIGKILL mid-watch, 40 s down, restart on the same port and data: a
    synchronous and an asyncio watch (default backoff) both resume from the
    last revision they delivered, every change exactly once, in order, and
    count one resume however many attempts it took."""
    server = make_server(port=free_port())
    writer = Client(server.address, **AUTH, timeout=20)
    watcher = Client(server.address, **AUTH)
    start = writer.ingest(connects("d:local:k:before", 10), broker=BROKER).revision
    sync_watch = None
    try:
        sync_watch = watcher.watch(start_revision=start)
        sync = Collector(sync_watch)
        aio = AsyncCollector(server.address, start_revision=start)
        rev = start
        for batch in range(3):
            rev = writer.ingest(connects(f"d:local:k:live{batch}-", 20), broker=BROKER).revision
        sync.wait_for(lambda ev: bool(ev) and ev[-1].revision >= rev, 20)
        aio.wait_for_revision(rev, 20)
        # More changes race with the kill.
        writer.ingest(connects("d:local:k:midway", 20), broker=BROKER)
        server.kill()
        time.sleep(40)  # the downtime of the scenario
        assert sync_watch.reconnects == 0 and aio.watch is not None and aio.watch.reconnects == 0
        server.start()
        writer.close()
        # A new writer: the old channel waits its own reconnect backoff.
        writer = Client(server.address, **AUTH, timeout=20, wait_for_ready=True)
        reported = lost("d:local:k:before", 10)
        for batch in range(3):
            reported += lost(f"d:local:k:live{batch}-", 20)
        reported += lost("d:local:k:midway", 20)
        reported_revision = writer.ingest(reported, broker=BROKER).revision
        # Resumed within the watch's own backoff cap (5 s, +20 %).
        sync.wait_for(lambda ev: bool(ev) and ev[-1].revision >= reported_revision, 8)
        aio.wait_for_revision(reported_revision, 8)
        for batch in range(3):
            rev = writer.ingest(connects(f"d:local:k:after{batch}-", 20), broker=BROKER).revision
        sync.wait_for(lambda ev: bool(ev) and ev[-1].revision >= rev, 30)
        aio.wait_for_revision(rev, 30)
        sync.stop()
        aio.stop()
        for events, watch in ((sync.snapshot(), sync_watch), (aio.events, aio.watch)):
            assert all(e.type is WatchEventType.CHANGE for e in events)
            assert [e.revision for e in events] == list(range(start + 1, rev + 1)), "every change once, in order"
            gone = [e for e in events if e.kind == pb.CHANGE_KIND_DISCONNECTED]
            assert len(gone) == 90, "the disconnects the broker reported after the restart"
            assert all(e.state.last_disconnect_initiator == pb.DISCONNECT_INITIATOR_NETWORK for e in gone)  # type: ignore[union-attr]
            assert watch.reconnects == 1, "one resume, however many attempts it took"
        assert sync.error is None and aio.error is None
    finally:
        if sync_watch is not None:
            sync_watch.cancel()
        writer.close()
        watcher.close()


async def test_async_watch_resumes_after_resource_exhausted(make_server: Callable[..., Server]) -> None:
    server = make_server("--watch-buffer", "16")
    async with AsyncClient(server.address, **AUTH, channel_options=SMALL_WINDOWS) as client:
        watch = client.watch(start_revision=0, backoff=Backoff(0.01, 0.1))
        it = watch.__aiter__()
        await client.ingest([connected("d:local:ax:first", 1)], broker=BROKER)
        assert (await asyncio.wait_for(it.__anext__(), 10)).revision == 1
        # The watcher reads nothing while many commits happen.
        total = 1
        for batch in range(60):
            total = (await client.ingest(connects(f"d:local:ax:b{batch}-", 100), broker=BROKER)).revision
        revisions = [1]

        async def rest() -> None:
            while revisions[-1] < total:
                event = await it.__anext__()
                assert event.type is WatchEventType.CHANGE
                revisions.append(event.revision)

        await asyncio.wait_for(rest(), 60)
        watch.cancel()
        assert revisions == list(range(1, total + 1))
        assert watch.reconnects >= 1, "the server ended the slow watcher at least once"


TOTAL = 4000


def big_server(make_server: Callable[..., Server]) -> Server:
    server = make_server("--shutdown-grace", "1s", port=free_port())
    with Client(server.address, **AUTH) as writer:
        for batch in range(TOTAL // 1000):
            writer.ingest(connects(f"d:local:big{batch}-", 1000), broker=BROKER)
    return server


def check_cut_off(events: list[WatchEvent]) -> None:
    """Part of a snapshot, a resync, the whole snapshot, then its completion."""
    types = [e.type for e in events]
    resync = types.index(WatchEventType.RESYNC)
    assert 3 <= resync < TOTAL, "the snapshot was cut off"
    assert types[:resync] == [WatchEventType.SNAPSHOT] * resync
    assert events[resync].reason, "the resync says why"
    again = events[resync + 1 : -1]
    assert all(e.type is WatchEventType.SNAPSHOT for e in again)
    assert len({e.client_id for e in again}) == len(again) == TOTAL, "the whole snapshot again"
    assert events[-1].type is WatchEventType.SNAPSHOT_COMPLETE


def test_a_snapshot_cut_off_half_way_starts_over(make_server: Callable[..., Server]) -> None:
    server = big_server(make_server)
    with Client(server.address, **AUTH, channel_options=SMALL_WINDOWS, wait_for_ready=True, timeout=20) as client:
        with client.watch(include_snapshot=True, backoff=Backoff(0.05, 0.5)) as watch:
            it = iter(watch)
            events = [next(it) for _ in range(3)]
            assert all(e.type is WatchEventType.SNAPSHOT for e in events)
            server.restart()
            while (event := next(it)).type is not WatchEventType.SNAPSHOT_COMPLETE:
                events.append(event)
            events.append(event)
            check_cut_off(events)
            rev = client.ingest([connected("d:local:after", 1)], broker=BROKER).revision
            live = next(it)
            assert (live.type, live.revision) == (WatchEventType.CHANGE, rev)
            assert watch.reconnects == 1


async def test_async_a_snapshot_cut_off_half_way_starts_over(make_server: Callable[..., Server]) -> None:
    server = big_server(make_server)
    async with AsyncClient(
        server.address, **AUTH, channel_options=SMALL_WINDOWS, wait_for_ready=True, timeout=20
    ) as client:
        watch = client.watch(include_snapshot=True, backoff=Backoff(0.05, 0.5))
        it = watch.__aiter__()
        events = [await asyncio.wait_for(it.__anext__(), 20) for _ in range(3)]
        assert all(e.type is WatchEventType.SNAPSHOT for e in events)
        await asyncio.to_thread(server.restart)

        async def rest() -> None:
            while True:
                event = await it.__anext__()
                events.append(event)
                if event.type is WatchEventType.SNAPSHOT_COMPLETE:
                    return

        await asyncio.wait_for(rest(), 60)
        check_cut_off(events)
        rev = (await client.ingest([connected("d:local:after", 1)], broker=BROKER)).revision
        live = await asyncio.wait_for(it.__anext__(), 20)
        assert (live.type, live.revision) == (WatchEventType.CHANGE, rev)
        assert watch.reconnects == 1
        await watch.aclose()


class BackoffSeen(logging.Handler):
    """Notes the SDK's log line of a watch that starts a backoff."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("watch resuming"):
            self.seen.set()

    def __enter__(self) -> BackoffSeen:
        logger = logging.getLogger("connstate_client")
        self._level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("connstate_client")
        logger.removeHandler(self)
        logger.setLevel(self._level)


def test_cancel_ends_a_watch_during_its_backoff(server: Server) -> None:
    with Client(server.address, **AUTH) as client, BackoffSeen() as backoff:
        watch = client.watch(start_revision=0, backoff=Backoff(20, 20))
        collector = Collector(watch)
        server.stop()
        assert backoff.seen.wait(10), (
            f"the watch did not back off (its thread alive: {collector.thread.is_alive()}, error: {collector.error!r})"
        )
        started = time.monotonic()
        collector.stop()
        assert time.monotonic() - started < 2, "not after the 20 s backoff"
        assert collector.error is None and collector.snapshot() == []


async def test_async_cancel_ends_a_watch_during_its_backoff(server: Server) -> None:
    with BackoffSeen() as backoff:
        async with AsyncClient(server.address, **AUTH) as client:
            await async_cancel_during_backoff(server, client, backoff)


async def async_cancel_during_backoff(server: Server, client: AsyncClient, backoff: BackoffSeen) -> None:
    watch = client.watch(start_revision=0, backoff=Backoff(20, 20))

    async def consume() -> list[WatchEvent]:
        return [e async for e in watch]

    task = asyncio.ensure_future(consume())
    await asyncio.to_thread(server.stop)

    assert await asyncio.to_thread(backoff.seen.wait, 10), "the watch did not back off"
    started = time.monotonic()
    watch.cancel()
    assert await asyncio.wait_for(task, 2) == []
    assert time.monotonic() - started < 2, "not after the 20 s backoff"

@pytest.mark.timeout(30)
def test_closing_the_client_ends_its_watches_cleanly(server: Server) -> None:
    """Closing the client ends a watch blocked in its stream, and one waiting
    out a backoff, without an error (clients/CONTRACT.md, "Cancellation")."""
    with Client(server.address, **AUTH) as writer:
        revision = writer.ingest([connected("d:local:c:one", 1)], broker=BROKER).revision
    client = Client(server.address, **AUTH)
    live = Collector(client.watch(start_revision=0))
    live.wait_for(lambda ev: bool(ev) and ev[-1].revision >= revision, 10)
    client.close()
    live.thread.join(timeout=5)
    assert not live.thread.is_alive(), "the watch did not end when its client closed"
    assert live.error is None, repr(live.error)

    client = Client(server.address, **AUTH)
    backing_off = Collector(client.watch(start_revision=0, backoff=Backoff(0.3, 0.3)))
    backing_off.wait_for(lambda ev: bool(ev) and ev[-1].revision >= revision, 10)
    with BackoffSeen() as backoff:
        server.stop()
        assert backoff.seen.wait(10), "the watch did not back off"
    client.close()
    backing_off.thread.join(timeout=5)
    assert not backing_off.thread.is_alive(), "the watch did not end when its client closed"
    assert backing_off.error is None, repr(backing_off.error)



def seed_for_reader(server: Server) -> None:
    with Client(server.address, **AUTH) as admin:
        admin.ingest(connects("d:local:ro:r", 12), broker=BROKER)


def test_a_read_only_key_reads_and_watches_but_cannot_write(server: Server) -> None:
    seed_for_reader(server)
    key, token = server.create_key("read-only")
    with Client(server.address, api_key=key, token=token) as reader:
        assert reader.get("d:local:ro:r0").client_id == "d:local:ro:r0"
        assert len(list(reader.list(filter={"client_id_prefix": "d:local:ro:"}))) == 12
        # A watch sends the credentials too: r1, r10, r11, then complete.
        with reader.watch(include_snapshot=True, filter={"client_id_prefix": "d:local:ro:r1"}) as watch:
            it = iter(watch)
            types = [next(it).type for _ in range(4)]
        assert types == [WatchEventType.SNAPSHOT] * 3 + [WatchEventType.SNAPSHOT_COMPLETE]
        with pytest.raises(ConnstateError) as e:
            reader.ingest([connected("d:local:ro:intruder", 1)], broker=BROKER)
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(ConnstateError) as e:
            reader.delete("d:local:ro:r0")
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    with Client(server.address, **AUTH) as admin:
        with pytest.raises(ConnstateError) as e:
            admin.get("d:local:ro:intruder")
        assert e.value.code == grpc.StatusCode.NOT_FOUND, "nothing was written"
        assert admin.get("d:local:ro:r0").client_id == "d:local:ro:r0"


async def test_async_a_read_only_key_reads_and_watches_but_cannot_write(server: Server) -> None:
    await asyncio.to_thread(seed_for_reader, server)
    key, token = await asyncio.to_thread(server.create_key, "read-only")
    async with AsyncClient(server.address, api_key=key, token=token) as reader:
        assert (await reader.get("d:local:ro:r0")).client_id == "d:local:ro:r0"
        assert len([s async for s in reader.list(filter={"client_id_prefix": "d:local:ro:"})]) == 12
        async with reader.watch(include_snapshot=True, filter={"client_id_prefix": "d:local:ro:r1"}) as watch:
            it = watch.__aiter__()
            types = [(await asyncio.wait_for(it.__anext__(), 10)).type for _ in range(4)]
        assert types == [WatchEventType.SNAPSHOT] * 3 + [WatchEventType.SNAPSHOT_COMPLETE]
        with pytest.raises(ConnstateError) as e:
            await reader.ingest([connected("d:local:ro:intruder", 1)], broker=BROKER)
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(ConnstateError) as e:
            await reader.delete("d:local:ro:r0")
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
