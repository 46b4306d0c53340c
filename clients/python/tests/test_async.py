"""The asyncio client against the real server."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable

import grpc
import pytest

from connstate_client import (
    AsyncClient,
    AsyncWatch,
    Backoff,
    InvalidArgumentError,
    NotFoundError,
    WatchEvent,
    WatchEventType,
    pb,
)
from conftest import AUTH, BROKER, Server, connected, disconnected, free_port


async def take(watch: AsyncWatch, count: int, timeout: float = 20.0) -> list[WatchEvent]:
    async def collect() -> list[WatchEvent]:
        out = []
        async for event in watch:
            out.append(event)
            if len(out) == count:
                break
        return out

    return await asyncio.wait_for(collect(), timeout)


async def test_queries_and_typed_errors(server: Server) -> None:
    async with AsyncClient(server.address, **AUTH, timeout=10) as client:
        ids = [f"d:local:async:c{i:02d}" for i in range(30)]
        await client.ingest([connected(cid, i + 1) for i, cid in enumerate(ids)], broker=BROKER)
        state = await client.get(ids[3])
        assert state.connection_status == pb.CONNECTION_STATUS_CONNECTED

        got = [s.client_id async for s in client.list(filter={"client_id_prefix": "d:local:async:"}, page_size=7)]
        assert got == ids
        pages = [p async for p in client.list_pages(page_size=7)]
        assert [len(p.states) for p in pages][:4] == [7, 7, 7, 7]

        await client.ingest([disconnected(ids[0], 1)], broker=BROKER)
        entries = [e async for e in client.logs(ids[0], page_size=1)]
        assert [e.kind for e in entries] == [pb.LOG_KIND_DISCONNECTED, pb.LOG_KIND_CONNECTED]

        with pytest.raises(NotFoundError) as nf:
            await client.get("d:local:async:nobody")
        assert nf.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(InvalidArgumentError) as ia:
            await client.get("")
        assert ia.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(InvalidArgumentError):
            await client.ingest([connected("", 1)], broker=BROKER)

        revision = await client.delete(ids[1])
        assert revision > state.revision
        with pytest.raises(NotFoundError):
            await client.delete(ids[1])
        settings = await client.update_settings({"log_max_entries_per_client": 50}, ["log_max_entries_per_client"])
        assert settings.log_max_entries_per_client == 50
        assert (await client.get_settings()).log_max_entries_per_client == 50


async def test_async_snapshot_then_live(server: Server) -> None:
    async with AsyncClient(server.address, **AUTH) as client:
        await client.ingest([connected(f"g:local:gw:g{i}", i + 1) for i in range(3)], broker=BROKER)
        async with client.watch(include_snapshot=True, filter={"client_type": pb.CLIENT_TYPE_GATEWAY}) as watch:
            first = await take(watch, 4)
            assert [e.type for e in first] == [WatchEventType.SNAPSHOT] * 3 + [WatchEventType.SNAPSHOT_COMPLETE]
            await client.ingest([connected("d:local:t:dev", 1), disconnected("g:local:gw:g1", 2)], broker=BROKER)
            live = await take(watch, 1)
            assert (live[0].type, live[0].client_id, live[0].revision) == (WatchEventType.CHANGE, "g:local:gw:g1", 5)


async def test_async_watch_resumes_and_resynchronises(make_server: Callable[..., Server]) -> None:
    server = make_server("--retention-interval", "100ms", "--shutdown-grace", "1s", port=free_port())
    async with AsyncClient(server.address, **AUTH, wait_for_ready=True, timeout=20) as client:
        await client.ingest([connected(f"d:local:ar:a{i}", i + 1) for i in range(5)], broker=BROKER)
        watch = client.watch(start_revision=0, backoff=Backoff(0.05, 0.5), max_retries=100)
        assert [e.revision for e in await take(watch, 5)] == [1, 2, 3, 4, 5]

        # (a) A restart while the watch is being read: it resumes, no gap.
        reader = asyncio.ensure_future(take(watch, 5 + 3, timeout=30))
        await asyncio.sleep(0)
        await asyncio.to_thread(server.restart)
        # The restart records nothing for another broker's clients; that
        # broker reports the five connections lost: revisions 6..10.
        await client.ingest(
            [disconnected(f"d:local:ar:a{i}", i + 1, cause=pb.DISCONNECT_CAUSE_SOCKET_CLOSED) for i in range(5)],
            broker=BROKER,
        )
        last = (await client.ingest([connected(f"d:local:ar:b{i}", i + 1) for i in range(3)], broker=BROKER)).revision
        resumed = await reader
        assert [e.revision for e in resumed] == list(range(6, last + 1))
        assert all(e.type is WatchEventType.CHANGE for e in resumed)
        assert watch.reconnects >= 1

        # (b) The feed is cut short while nobody reads: OUT_OF_RANGE, then
        # RESYNC, a fresh snapshot and live changes.
        await asyncio.to_thread(server.restart)
        # 3 more disconnects, reported by the broker (revisions 14..16).
        await client.ingest(
            [disconnected(f"d:local:ar:b{i}", i + 1, cause=pb.DISCONNECT_CAUSE_SOCKET_CLOSED) for i in range(3)],
            broker=BROKER,
        )
        await client.update_settings({"feed_max_entries": 3}, ["feed_max_entries"])
        for i in range(3):
            await client.ingest([disconnected(f"d:local:ar:b{i}", i + 1)], broker=BROKER)
            await client.ingest([connected(f"d:local:ar:b{i}", i + 2)], broker=BROKER)

        async def trimmed() -> None:
            while True:
                try:
                    call = client.states_stub.WatchConnections(
                        pb.WatchConnectionsRequest(start_revision=last), timeout=2
                    )
                    await call.read()
                except grpc.RpcError as e:
                    if e.code() == grpc.StatusCode.OUT_OF_RANGE:  # type: ignore[attr-defined]
                        return
                await asyncio.sleep(0.02)

        await asyncio.wait_for(trimmed(), 15)
        events = await take(watch, 1 + 8 + 1)
        assert events[0].type is WatchEventType.RESYNC
        assert events[0].revision == last
        assert [e.type for e in events[1:9]] == [WatchEventType.SNAPSHOT] * 8
        assert events[9].type is WatchEventType.SNAPSHOT_COMPLETE
        complete = events[9].revision
        later = (await client.ingest([disconnected("d:local:ar:a0", 1)], broker=BROKER)).revision
        live = await take(watch, 1)
        assert (live[0].type, live[0].revision) == (WatchEventType.CHANGE, later)
        assert later == complete + 1
        await watch.aclose()


async def test_async_cancel_ends_iteration(server: Server) -> None:
    async with AsyncClient(server.address, **AUTH) as client:
        watch = client.watch()

        async def consume() -> list[WatchEvent]:
            return [e async for e in watch]

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.2)
        watch.cancel()
        assert await asyncio.wait_for(task, 5) == []


async def test_a_revision_ahead_of_the_store_resynchronises_and_bad_filters_raise(server: Server) -> None:
    async with AsyncClient(server.address, **AUTH) as client:
        # A revision the store never reached (say, after the data was
        # replaced) is OUT_OF_RANGE too: the watch starts over from a snapshot.
        watch = client.watch(filter={"type_id": "x"}, start_revision=10_000)
        events = await take(watch, 2)
        assert [e.type for e in events] == [WatchEventType.RESYNC, WatchEventType.SNAPSHOT_COMPLETE]
        await watch.aclose()
        # Time bounds are not allowed in a watch filter: INVALID_ARGUMENT.
        bad = client.watch(filter={"connected_after": datetime.datetime(2020, 1, 1)})
        with pytest.raises(InvalidArgumentError) as e:
            await take(bad, 1)
        assert "time bounds" in e.value.details
