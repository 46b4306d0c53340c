"""Several addresses (clients/CONTRACT.md, "Several addresses"): a watch and
the reads move to the next server when the one in use goes away; writes are
not retried.

Two single servers do not share revisions; server B starts on a copy of A's
data folder taken while A was stopped cleanly, so that both hold the same
revisions. A real cluster's failover is tested once the cluster exists."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterator

import grpc
import pytest

from connstate_client import AsyncClient, Backoff, Client, ConnstateError, WatchEventType
from conftest import AUTH, BROKER, Server
from test_scenarios import AsyncCollector, connects, lost
from test_watch import Collector


@pytest.fixture
def two_servers(make_server: Callable[..., Server]) -> Iterator[tuple[Server, Server, int]]:
    """A and B on the same data, and the revision of what A recorded."""
    a = make_server("--shutdown-grace", "1s")
    with Client(a.address, **AUTH) as writer:
        first = writer.ingest(connects("d:acme:fo:a", 30), broker=BROKER).revision
    a.stop()
    b_dir = a.data_dir.parent / "copy-of-a"
    shutil.copytree(a.data_dir, b_dir)
    a.start()
    b = Server(b_dir, list(a.args))
    b.start()
    try:
        yield a, b, first
    finally:
        b.stop()


@pytest.mark.timeout(60)
def test_watch_and_reads_move_to_the_next_address(two_servers: tuple[Server, Server, int]) -> None:
    a, b, first = two_servers
    both = [a.address, b.address]
    backoff = Backoff(0.05, 0.5)
    with Client(both, **AUTH) as watcher, Client(",".join(both), **AUTH) as reader:
        sync = Collector(watcher.watch(start_revision=0, backoff=backoff))
        aio = AsyncCollector(",".join(both), start_revision=0, backoff=backoff)
        sync.wait_for(lambda ev: bool(ev) and ev[-1].revision >= first, 10)
        aio.wait_for_revision(first, 10)
        assert reader.get("d:acme:fo:a3").client_id == "d:acme:fo:a3"  # on A

        a.kill()  # never comes back
        # Reads are retried on the next address.
        assert reader.get("d:acme:fo:a7").client_id == "d:acme:fo:a7"

        async def async_read() -> str:
            async with AsyncClient(",".join(both), **AUTH) as client:
                return (await client.get("d:acme:fo:a8")).client_id

        assert asyncio.run(asyncio.wait_for(async_read(), 20)) == "d:acme:fo:a8"

        # Only B has these; the watches get them there, right after the last
        # revision they delivered from A.
        with Client(b.address, **AUTH) as writer:
            rev = writer.ingest(lost("d:acme:fo:a", 30), broker=BROKER).revision
        sync.wait_for(lambda ev: bool(ev) and ev[-1].revision >= rev, 20)
        aio.wait_for_revision(rev, 20)
        sync.stop()
        aio.stop()
        for events in (sync.snapshot(), aio.events):
            assert all(e.type is WatchEventType.CHANGE for e in events)
            assert [e.revision for e in events] == list(range(1, rev + 1)), "no gap, no duplicate"
        assert sync.error is None and aio.error is None


@pytest.mark.timeout(30)
def test_a_write_is_not_retried_on_the_next_address(two_servers: tuple[Server, Server, int]) -> None:
    a, b, first = two_servers
    with Client([a.address, b.address], **AUTH) as client:
        assert client.get("d:acme:fo:a1").client_id == "d:acme:fo:a1"  # on A
        a.kill()
        with pytest.raises(ConnstateError) as raised:
            client.ingest(lost("d:acme:fo:a", 1), broker=BROKER)
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE
        with Client(b.address, **AUTH) as on_b:
            assert on_b.get("d:acme:fo:a0").revision <= first, "nothing written on B"
        # The next call goes to B.
        assert client.ingest(lost("d:acme:fo:a", 1), broker=BROKER).revision == first + 1
