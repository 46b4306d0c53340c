"""get, list, logs, delete, ingest and settings through the synchronous client."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

from connstate_client import (
    Client,
    ConnectionStatus,
    ConnstateError,
    InvalidArgumentError,
    NotFoundError,
    WatchEventType,
    pb,
)
from conftest import AUTH, BROKER, BASE_TIME, Server, connected, disconnected


@pytest.fixture
def client(server: Server):
    with Client(server.address, **AUTH, timeout=10) as c:
        yield c


def test_get_returns_the_record(client: Client) -> None:
    response = client.ingest([connected("d:local:sensor:s1", 1)], broker=BROKER)
    assert response.accepted == 1
    state = client.get("d:local:sensor:s1")
    assert state.client_id == "d:local:sensor:s1"
    assert state.connection_status == ConnectionStatus.Value("CONNECTION_STATUS_CONNECTED")
    assert state.client_type == pb.CLIENT_TYPE_DEVICE
    assert (state.type_id, state.device_id) == ("sensor", "s1")
    assert state.client_addr == "192.0.2.10"
    assert state.broker == BROKER
    assert state.revision == response.revision


def test_not_found_and_invalid_argument_are_typed(client: Client) -> None:
    with pytest.raises(NotFoundError) as not_found:
        client.get("d:local:sensor:nobody")
    assert not_found.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(InvalidArgumentError) as invalid:
        client.get("")
    assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "client_id" in invalid.value.details
    # Both are ConnstateError, and not each other.
    assert isinstance(not_found.value, ConnstateError)
    assert not isinstance(not_found.value, InvalidArgumentError)
    # A bad batch names the offending event and records nothing.
    with pytest.raises(InvalidArgumentError) as bad_batch:
        client.ingest([connected("d:local:t:ok", 1), connected("", 2)], broker=BROKER)
    assert "events[1].client_id" in bad_batch.value.details
    with pytest.raises(NotFoundError):
        client.get("d:local:t:ok")
    with pytest.raises(InvalidArgumentError) as bad_order:
        list(client.list(page_size=5, order_by="no_such_field"))
    assert "order_by" in bad_order.value.details
    # Other codes map to the base class: FAILED_PRECONDITION while the
    # feature is off.
    client.update_settings({"enabled": False}, ["enabled"])
    with pytest.raises(ConnstateError) as other:
        client.get("d:local:t:ok")
    assert type(other.value) is ConnstateError
    assert other.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_list_follows_page_tokens(client: Client) -> None:
    ids = [f"d:local:page:c{i:02d}" for i in range(30)]
    client.ingest([connected(cid, i + 1, i) for i, cid in enumerate(ids)], broker=BROKER)
    client.ingest([connected("a:local:app1", 1)], broker=BROKER)

    pages = list(client.list_pages(filter={"client_id_prefix": "d:local:page:"}, page_size=7))
    assert len(pages) >= 5
    assert all(len(p.states) <= 7 for p in pages)
    assert pages[-1].next_page_token == ""

    got = [s.client_id for s in client.list(filter={"client_id_prefix": "d:local:page:"}, page_size=7)]
    assert got == ids, "every client exactly once, by client id"

    newest_first = [
        s.client_id
        for s in client.list(
            filter=pb.ConnectionStateFilter(type_id="page"), order_by="last_connect_time desc", page_size=7
        )
    ]
    assert newest_first == list(reversed(ids))

    # A time bound given as a datetime.
    since = dt.datetime.fromtimestamp(BASE_TIME + 25, tz=dt.timezone.utc)
    recent = [s.client_id for s in client.list(filter={"type_id": "page", "connected_after": since}, page_size=7)]
    assert recent == ids[25:]

    # Everything, in default pages.
    assert len(list(client.list())) == 31


def test_logs_newest_first_with_paging(client: Client) -> None:
    client.ingest([connected("d:local:t:log", 1, 0), disconnected("d:local:t:log", 1, 5)], broker=BROKER)
    client.ingest([connected("d:local:t:log", 2, 10)], broker=BROKER)
    entries = list(client.logs("d:local:t:log", page_size=1))
    assert [e.kind for e in entries] == [pb.LOG_KIND_CONNECTED, pb.LOG_KIND_DISCONNECTED, pb.LOG_KIND_CONNECTED]
    assert [e.connection_id for e in entries] == [2, 1, 1]
    assert entries[1].initiator == pb.DISCONNECT_INITIATOR_CLIENT
    assert entries[1].close_code == 0 and entries[1].HasField("close_code")
    assert entries[0].revision > entries[1].revision > entries[2].revision

    disconnects = list(client.logs("d:local:t:log", kinds=[pb.LOG_KIND_DISCONNECTED]))
    assert len(disconnects) == 1

    # All clients.
    client.ingest([connected(f"d:local:t:other{i}", 1) for i in range(5)], broker=BROKER)
    assert len(list(client.logs(page_size=2))) == 8


def test_delete(client: Client) -> None:
    first = client.ingest([connected("d:local:t:gone", 1)], broker=BROKER).revision
    revision = client.delete("d:local:t:gone")
    assert revision > first
    with pytest.raises(NotFoundError):
        client.get("d:local:t:gone")
    with pytest.raises(NotFoundError):
        client.delete("d:local:t:gone")
    assert list(client.logs("d:local:t:gone")) == []


def test_settings(client: Client) -> None:
    settings = client.get_settings()
    assert settings.enabled
    updated = client.update_settings(
        {"feed_max_age": dt.timedelta(days=2), "feed_max_entries": 1000},
        ["feed_max_age", "feed_max_entries"],
    )
    assert updated.feed_max_age.ToTimedelta() == dt.timedelta(days=2)
    assert updated.feed_max_entries == 1000
    assert client.get_settings().feed_max_entries == 1000


def test_raw_stubs_are_exposed(client: Client) -> None:
    response = client.ingest_stub.IngestEvents(
        pb.IngestEventsRequest(broker=BROKER, events=[connected("d:local:t:raw", 1)])
    )
    assert client.states_stub.GetConnectionState(pb.GetConnectionStateRequest(client_id="d:local:t:raw")).revision == response.revision


def test_unreachable_server_is_unavailable() -> None:
    from conftest import free_port

    with Client(f"127.0.0.1:{free_port()}", timeout=2) as c:
        with pytest.raises(ConnstateError) as e:
            c.get("d:local:t:x")
    assert e.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_credentials_are_sent_on_every_call(server: Server) -> None:
    from conftest import server_supports_auth

    if not server_supports_auth():
        pytest.skip("this server binary has no API keys")
    with Client(server.address, **AUTH) as good:
        good.ingest([connected("d:local:t:auth", 1)], broker=BROKER)
        # The raw stubs go through the same channel, with the same metadata.
        raw = good.states_stub.GetConnectionState(pb.GetConnectionStateRequest(client_id="d:local:t:auth"))
        assert raw.client_id == "d:local:t:auth"
        assert [e.type for e in next_two(good.watch(include_snapshot=True))] == [
            WatchEventType.SNAPSHOT,
            WatchEventType.SNAPSHOT_COMPLETE,
        ]
    with Client(server.address) as anonymous:
        with pytest.raises(ConnstateError) as e:
            anonymous.get("d:local:t:auth")
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    with Client(server.address, api_key=AUTH["api_key"], token="wrong-token-0123456789") as wrong:
        with pytest.raises(ConnstateError) as e:
            list(wrong.list())
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED


def next_two(watch):  # type: ignore[no-untyped-def]
    with watch:
        it = iter(watch)
        return [next(it), next(it)]
