"""What connstate records for each way a connection starts and ends
(DESIGN.md §3, the lifecycle table), read back through the gRPC SDK and REST."""

from __future__ import annotations

import concurrent.futures
import threading
import time
import urllib.request

import pytest
from connstate_client import WatchEventType, pb
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes

from conftest import (
    CONNACK,
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    V5,
    V311,
    Peer,
    RawClient,
    connect_packet,
    disconnect_packet,
    eventually,
    packet,
    props,
    publish_packet,
    subscribe_packet,
    unique,
)

pytestmark = pytest.mark.connstate

CONNECTED = pb.CONNECTION_STATUS_CONNECTED
DISCONNECTED = pb.CONNECTION_STATUS_DISCONNECTED
CLIENT, SERVER, NETWORK = pb.DISCONNECT_INITIATOR_CLIENT, pb.DISCONNECT_INITIATOR_SERVER, pb.DISCONNECT_INITIATOR_NETWORK


def last_disconnect(state):
    """(initiator, reason code or None, close code or None) of a state record."""
    return (
        state.last_disconnect_initiator,
        state.last_disconnect_reason_code if state.HasField("last_disconnect_reason_code") else None,
        state.last_close_code if state.HasField("last_close_code") else None,
    )


def entry_codes(entry):
    """(kind, initiator, reason code or None, close code or None) of a log entry."""
    return (
        entry.kind,
        entry.initiator,
        entry.reason_code if entry.HasField("reason_code") else None,
        entry.close_code if entry.HasField("close_code") else None,
    )


def disconnected_entries(server, client_id):
    return [e for e in server.logs(client_id) if e.kind == pb.LOG_KIND_DISCONNECTED]


# -- connect -------------------------------------------------------------------


@pytest.mark.parametrize(
    "version,protocol,rest_protocol,clean,keepalive",
    [(V311, pb.MQTT_PROTOCOL_V3_1_1, "3.1.1", True, 17), (V5, pb.MQTT_PROTOCOL_V5_0, "5.0", False, 23)],
    ids=["v311", "v5"],
)
def test_connect_is_recorded(server, peers, version, protocol, rest_protocol, clean, keepalive):
    cid = unique("conn")
    session = props(PacketTypes.CONNECT, SessionExpiryInterval=60) if version == V5 else None
    peer = peers(server, cid, version=version, clean=clean, keepalive=keepalive, properties=session)
    s = server.wait_connected(cid)
    assert s.mqtt_connect_protocol == protocol
    assert (s.client_addr, s.port) == ("127.0.0.1", peer.local_port)
    assert s.keep_alive_seconds == keepalive
    assert s.clean_session is clean
    assert s.client_type == pb.CLIENT_TYPE_UNKNOWN
    assert s.secure is False
    assert s.connection_id > 0
    assert s.broker == "embedded"
    assert s.counters.connects == 1
    alive_for = s.expected_alive_until.ToMilliseconds() - s.last_activity_time.ToMilliseconds()
    assert alive_for == keepalive * 1500, "expected_alive_until is not last activity + 1.5 × keepalive"
    assert not s.HasField("last_disconnect_time")

    entry = server.latest_log(cid, pb.LOG_KIND_CONNECTED)
    assert (entry.connection_id, entry.client_addr, entry.port, entry.protocol) == (
        s.connection_id,
        "127.0.0.1",
        peer.local_port,
        protocol,
    )

    status, body = server.rest_state(cid)
    assert status == 200, body
    assert body["connectionStatus"] == "connected"
    assert body["mqttConnectProtocol"] == rest_protocol
    assert (body["clientAddr"], body["port"], body["keepAliveSeconds"], body["cleanSession"]) == (
        "127.0.0.1",
        peer.local_port,
        keepalive,
        clean,
    )
    assert body["lastActivityEvent"] == "mqttConnect"


def test_activity_is_written_through(server, peers, raw):
    """Publish, subscribe and ping show as the last activity (written through
    every --activity-interval, 100 ms in these tests)."""
    cid = unique("act")
    peer = peers(server, cid, version=V5)
    server.wait_connected(cid)
    # Within the interval (100 ms) and a commit: 2 s is generous.
    peer.publish(f"act/{cid}", b"x", qos=1)
    server.wait_state(cid, lambda s: s.last_activity_event == pb.ACTIVITY_KIND_PUBLISH, timeout=2, what="publish activity")
    peer.subscribe_ok(f"act/{cid}/#", 1)
    server.wait_state(cid, lambda s: s.last_activity_event == pb.ACTIVITY_KIND_SUBSCRIBE, timeout=2, what="subscribe activity")

    cid2 = unique("ping")
    c = raw(server)
    assert c.connect(cid2)[1] == 0
    before = server.wait_connected(cid2).last_activity_time.ToNanoseconds()
    c.send(packet(PINGREQ << 4, b""))
    assert c.read_packet()[0] >> 4 == PINGRESP
    s = server.wait_state(cid2, lambda s: s.last_activity_event == pb.ACTIVITY_KIND_PING, what="ping activity")
    assert s.last_activity_time.ToNanoseconds() >= before


# -- disconnect -------------------------------------------------------------------


def test_v311_clean_disconnect(server, peers):
    cid = unique("bye3")
    peer = peers(server, cid, version=V311)
    conn = server.wait_connected(cid).connection_id
    peer.disconnect()
    s = server.wait_disconnected(cid)
    assert last_disconnect(s) == (CLIENT, 0x00, 0)
    assert s.last_activity_event == pb.ACTIVITY_KIND_DISCONNECT
    assert s.HasField("last_disconnect_time")
    assert s.counters.disconnects_by_client == 1
    entry = server.latest_log(cid, pb.LOG_KIND_DISCONNECTED)
    assert entry_codes(entry) == (pb.LOG_KIND_DISCONNECTED, CLIENT, 0x00, 0)
    assert entry.connection_id == conn
    status, body = server.rest_state(cid)
    assert (body["connectionStatus"], body["lastDisconnectInitiator"], body["lastDisconnectReasonCode"], body["lastCloseCode"]) == (
        "disconnected",
        "client",
        0,
        0,
    )


@pytest.mark.parametrize("reason", [0x00, 0x04], ids=["normal", "with-will"])
def test_v5_disconnect_reason_code_is_recorded(server, peers, reason):
    cid = unique("bye5")
    peer = peers(server, cid, version=V5)
    server.wait_connected(cid)
    peer.disconnect(reason=reason)
    s = server.wait_disconnected(cid)
    assert last_disconnect(s) == (CLIENT, reason, 0)
    assert entry_codes(server.latest_log(cid, pb.LOG_KIND_DISCONNECTED)) == (pb.LOG_KIND_DISCONNECTED, CLIENT, reason, 0)


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_socket_closed_without_disconnect(server, raw, version):
    cid = unique("killed")
    c = raw(server)
    assert c.connect(cid, version=version)[1] == 0
    server.wait_connected(cid)
    c.close()
    s = server.wait_disconnected(cid)
    assert last_disconnect(s) == (NETWORK, None, 91)
    assert s.counters.disconnects_by_network == 1
    assert entry_codes(server.latest_log(cid, pb.LOG_KIND_DISCONNECTED)) == (pb.LOG_KIND_DISCONNECTED, NETWORK, None, 91)


def test_paho_socket_closed_without_disconnect(server, peers):
    cid = unique("killed-paho")
    peer = peers(server, cid, version=V5)
    server.wait_connected(cid)
    peer.close()
    assert last_disconnect(server.wait_disconnected(cid)) == (NETWORK, None, 91)


def test_keepalive_expiry(server, raw):
    """CONNECT with keepalive 1 s, then silence: the server closes the
    connection 1.5 s later (v5: optionally after DISCONNECT 0x8D)."""
    clients = {}
    for version in (4, 5):
        cid = unique(f"silent{version}")
        c = raw(server)
        assert c.connect(cid, version=version, keepalive=1)[1] == 0
        clients[version] = (cid, c, time.monotonic())
    for version, (cid, c, started) in clients.items():
        got = c.read_until_closed(timeout=6)
        waited = time.monotonic() - started
        assert 1.2 <= waited <= 3.5, f"v{version}: closed after {waited:.2f} s, keepalive 1 s"
        assert got in ([], [(DISCONNECT << 4, b"\x8d")], [(DISCONNECT << 4, b"\x8d\x00")]), got
        s = server.wait_disconnected(cid)
        assert last_disconnect(s) == (NETWORK, 0x8D, 160), f"v{version}"
        assert entry_codes(server.latest_log(cid, pb.LOG_KIND_DISCONNECTED)) == (pb.LOG_KIND_DISCONNECTED, NETWORK, 0x8D, 160)


def test_keepalive_is_kept_by_pings(server, raw):
    cid = unique("pinging")
    c = raw(server)
    assert c.connect(cid, keepalive=1)[1] == 0
    for _ in range(4):  # 2.4 s, well past 1.5 × keepalive
        time.sleep(0.6)
        c.send(packet(PINGREQ << 4, b""))
        p = c.read_packet(timeout=2)
        assert p is not None and p[0] >> 4 == PINGRESP
    assert server.state(cid).connection_status == CONNECTED


# -- takeover ---------------------------------------------------------------------


@pytest.mark.parametrize("first_version", [V5, V311], ids=["v5-first", "v311-first"])
def test_takeover(server, peers, first_version):
    cid = unique("twice")
    first = peers(server, cid, version=first_version)
    old = server.wait_connected(cid).connection_id
    first_port = first.local_port
    second = peers(server, cid, version=V311 if first_version == V5 else V5)

    from_server, reason, _ = first.wait_disconnected()
    if first_version == V5:
        assert (from_server, reason) == (True, 0x8E), f"first client got DISCONNECT {reason:#x} (from server: {from_server})"

    entry = server.wait_log(
        cid, lambda e: e.kind == pb.LOG_KIND_DISCONNECTED and e.connection_id == old, what="for the taken-over connection"
    )
    assert entry_codes(entry) == (pb.LOG_KIND_DISCONNECTED, SERVER, 0x8E, 288)
    # Stale or not, the entry is of the old connection: its address.
    assert entry.port == first_port, entry
    s = server.wait_state(cid, lambda s: s.connection_id > old, what="new connection")
    assert s.connection_status == CONNECTED
    assert s.port == second.local_port
    assert s.counters.takeovers == 1
    newest_connect = server.wait_log(cid, lambda e: e.kind == pb.LOG_KIND_CONNECTED and e.connection_id == s.connection_id,
                                     what="connected entry of the new connection")
    assert newest_connect.port == second.local_port
    time.sleep(0.2)  # nothing later may flip it
    s = server.state(cid)
    assert (s.connection_status, s.port) == (CONNECTED, second.local_port)
    assert second.connected.is_set()


# -- bad bytes ----------------------------------------------------------------------

GARBAGE = {
    "reserved-type-0": b"\x00\x00",
    "bad-remaining-length": b"\x30\xff\xff\xff\xff\x01",
    "publish-qos-3": b"\x36\x05\x00\x01a\x00\x01",
    "subscribe-bad-flags": b"\x80\x06\x00\x01\x00\x01a\x00",
    "client-sends-suback": b"\x90\x03\x00\x01\x00",
}


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
@pytest.mark.parametrize("garbage", list(GARBAGE), ids=list(GARBAGE))
def test_malformed_packet_after_connect(server, raw, peers, version, garbage):
    cid = unique("garbage")
    c = raw(server)
    assert c.connect(cid, version=version)[1] == 0
    server.wait_connected(cid)
    c.send(GARBAGE[garbage])
    got = c.read_until_closed(timeout=5)
    if version == 5:
        assert len(got) == 1 and got[0][0] == DISCONNECT << 4 and got[0][1][:1] in (b"\x81", b"\x82"), got
    else:
        assert got == []
    s = server.wait_disconnected(cid)
    initiator, reason, close = last_disconnect(s)
    assert (initiator, close) == (SERVER, 105) and reason in (0x81, 0x82), last_disconnect(s)
    if version == 5:
        assert reason == got[0][1][0], "recorded reason differs from the one sent"
    # The server still takes new clients.
    peers(server, unique("after"), version=V311)


def test_second_connect_is_a_protocol_error(server, raw):
    cid = unique("connect-twice")
    c = raw(server)
    assert c.connect(cid)[1] == 0
    c.send(connect_packet(cid))
    assert c.read_until_closed(timeout=5) == []
    assert last_disconnect(server.wait_disconnected(cid)) == (SERVER, 0x82, 105)


@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 64, b"\x10\xff\xff\xff\xff\xff", b"\x30\x02\x00\x00", b"\x10\x04\x00\x02MQ"],
    ids=["http", "zeros", "bad-length", "publish-first", "truncated-connect"],
)
def test_garbage_before_connect_only_closes_that_socket(server, raw, peers, garbage):
    c = raw(server)
    c.send(garbage)
    if garbage.startswith(b"\x10\x04"):
        c.sock.shutdown(1)  # the rest of the CONNECT never comes
    got = c.read_until_closed(timeout=12)
    assert all(p[0] >> 4 == CONNACK and p[1][1] != 0 for p in got), got
    peers(server, unique("after"), version=V5)


# -- packet too large ------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_packet_too_large(make_server, raw, version):
    server = make_server("--mqtt-max-packet-size", "1024")
    cid = unique("big")
    c = raw(server)
    connack = c.connect(cid, version=version)
    assert connack[1] == 0
    c.send(publish_packet("big/ok", b"x" * 900, qos=1, packet_id=1, version=version))
    p = c.read_packet()
    assert p is not None and p[0] >> 4 == 4, f"900-byte publish not acknowledged: {p}"  # PUBACK
    c.send(publish_packet("big/no", b"x" * 4096, qos=1, packet_id=2, version=version))
    got = c.read_until_closed(timeout=5)
    if version == 5:
        assert [(t, b[:1]) for t, b in got] == [(DISCONNECT << 4, b"\x95")], got
    else:
        assert got == []
    assert last_disconnect(server.wait_disconnected(cid)) == (SERVER, 0x95, 287)


# -- graceful shutdown ---------------------------------------------------------------


def test_sigterm_disconnects_clients_and_is_recorded(make_server):
    server = make_server()
    cid5, cid3, cidws = unique("shut5"), unique("shut3"), unique("shutws")
    v5 = Peer(server, cid5, version=V5)
    ws = Peer(server, cidws, version=V5, transport="websockets")
    v3 = RawClient(server)
    try:
        assert v3.connect(cid3)[1] == 0
        for cid in (cid5, cid3, cidws):
            server.wait_connected(cid)
        code = server.stop()
        assert code == 0, f"server exit code {code} after SIGTERM"
        for peer in (v5, ws):
            from_server, reason, _ = peer.wait_disconnected(timeout=5)
            assert (from_server, reason) == (True, 0x8B), f"{peer.client_id} got {reason:#x} (DISCONNECT from server: {from_server})"
        assert v3.read_until_closed(timeout=5) == []
    finally:
        v5.close()
        ws.close()
        v3.close()

    server.start()
    for cid in (cid5, cid3, cidws):
        s = server.wait_disconnected(cid)
        assert last_disconnect(s) == (SERVER, 0x8B, 93), cid
        # Recorded once, at shutdown (not again by the start-up recovery).
        assert [entry_codes(e) for e in disconnected_entries(server, cid)] == [(pb.LOG_KIND_DISCONNECTED, SERVER, 0x8B, 93)]


def test_disconnect_packet_bytes(server, raw):
    """A v3.1.1 DISCONNECT sent by hand is recorded like paho's."""
    cid = unique("rawbye")
    c = raw(server)
    assert c.connect(cid)[1] == 0
    server.wait_connected(cid)
    c.send(disconnect_packet())
    assert c.read_until_closed(timeout=5) == []
    assert last_disconnect(server.wait_disconnected(cid)) == (CLIENT, 0x00, 0)


# -- more ways in -------------------------------------------------------------------


def test_unsupported_protocol_level_is_a_failed_connect(server, raw):
    cid = unique("level")
    c = raw(server)
    data = bytearray(connect_packet(cid, version=4))
    data[8] = 6  # protocol level 6
    c.send(bytes(data))
    c.read_until_closed(timeout=5)
    entry = server.wait_log(cid, lambda e: e.kind == pb.LOG_KIND_CONNECT_FAILED, what="connectFailed")
    assert (entry.reason_code, entry.close_code) == (0x84, 105)


def test_mqtt_3_1_is_recorded(server, peers):
    cid = unique("v31")
    peers(server, cid, version=mqtt.MQTTv31)
    assert server.wait_connected(cid).mqtt_connect_protocol == pb.MQTT_PROTOCOL_V3_1
    status, body = server.rest_state(cid)
    assert body["mqttConnectProtocol"] == "3.1"


def test_websocket_connection_is_recorded(server, peers):
    cid = unique("ws")
    peer = peers(server, cid, version=V5, transport="websockets", keepalive=31)
    s = server.wait_connected(cid)
    assert (s.client_addr, s.port, s.keep_alive_seconds, s.mqtt_connect_protocol) == (
        "127.0.0.1",
        peer.local_port,
        31,
        pb.MQTT_PROTOCOL_V5_0,
    )
    peer.disconnect(reason=0x04)
    assert last_disconnect(server.wait_disconnected(cid)) == (CLIENT, 0x04, 0)


def test_websocket_dropped_is_recorded(server, peers):
    cid = unique("wsdrop")
    peer = peers(server, cid, version=V311, transport="websockets")
    server.wait_connected(cid)
    peer.close()
    assert last_disconnect(server.wait_disconnected(cid)) == (NETWORK, None, 91)


def test_assigned_client_id_is_tracked(server, peers):
    peer = peers(server, "", version=V5)
    assigned = peer.connack[2].AssignedClientIdentifier
    s = server.wait_connected(assigned)
    assert s.port == peer.local_port


def test_client_id_limits(server, peers):
    """Ids up to 256 bytes (the API's limit) are tracked; longer ones are
    refused with 0x85 rather than accepted and never queryable."""
    longest = "L" * 246 + unique("")[-10:]
    peers(server, longest, version=V5)
    assert server.wait_connected(longest).client_id == longest
    too_long = peers(server, longest + "x", version=V5, expect_success=False)
    assert too_long.connack[1] == 0x85


def test_odd_client_id_over_rest(server, peers):
    cid = f"dev/ü 1+%2F#{unique('')}"
    peers(server, cid, version=V311)
    server.wait_connected(cid)
    status, body = server.rest_state(cid)
    assert status == 200 and body["id"] == cid, body


def test_crash_then_restart_records_server_disconnect(make_server):
    """kill -9 while clients are connected: at start-up they are recorded as
    disconnected by the server, 0x8B, close code 93 (DESIGN.md §3)."""
    server = make_server()
    cid = unique("crash")
    c = RawClient(server)
    try:
        assert c.connect(cid, version=5)[1] == 0
        server.wait_connected(cid)
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait(10)
        server.proc = None
    finally:
        c.close()
    server.start()
    s = server.wait_disconnected(cid)
    assert last_disconnect(s) == (SERVER, 0x8B, 93)
    assert [entry_codes(e) for e in disconnected_entries(server, cid)] == [(pb.LOG_KIND_DISCONNECTED, SERVER, 0x8B, 93)]


def test_many_clients_at_once(server):
    """200 connections at the same time, then all dropped: every one is
    recorded connected, then lost (91)."""
    ids = [unique(f"many{i}") for i in range(200)]

    def connect(cid):
        c = RawClient(server)
        assert c.connect(cid, version=4 + (hash(cid) & 1), keepalive=30)[1] == 0
        return c

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        clients = list(pool.map(connect, ids))
    try:

        def all_in(status):
            states = {s.client_id: s.connection_status for s in server.sdk.list(filter={"client_id_prefix": "many"})}
            return all(states.get(cid) == status for cid in ids)

        eventually(lambda: all_in(CONNECTED), what="200 connected")
    finally:
        for c in clients:
            c.close()
    eventually(lambda: all_in(DISCONNECTED), what="200 disconnected")
    for cid in ids[:5]:
        assert last_disconnect(server.state(cid)) == (NETWORK, None, 91)


# -- administrator kick -------------------------------------------------------------


@pytest.mark.parametrize("version", [V5, V311], ids=["v5", "v311"])
def test_administrator_kick(server, peers, version):
    """POST /api/v0002/clientconnectionstates/{id}/disconnect: DISCONNECT
    0x98 to a v5 client, recorded as server, 0x98, close code 94."""
    cid = unique("kicked")
    peer = peers(server, cid, version=version)
    server.wait_connected(cid)
    status, body = server.rest("POST", f"/api/v0002/clientconnectionstates/{cid}/disconnect")
    assert status == 202, body
    from_server, reason, _ = peer.wait_disconnected(timeout=5)
    if version == V5:
        assert (from_server, reason) == (True, 0x98)
    s = server.wait_disconnected(cid)
    assert last_disconnect(s) == (SERVER, 0x98, 94)
    assert s.counters.disconnects_by_server == 1
    # Offline now: nothing to kick, and the answer says so.
    status, body = server.rest("POST", f"/api/v0002/clientconnectionstates/{cid}/disconnect")
    assert status == 409, body
    assert "is not connected" in body["message"], body


def test_keepalive_counts_only_what_the_client_sends(server, raw, peers):
    """Messages the server sends do not keep a silent client alive."""
    cid = unique("listener")
    topic = f"ka/{cid}"
    c = raw(server)
    assert c.connect(cid, keepalive=1)[1] == 0
    c.send(subscribe_packet([(topic, 0)]))
    started = time.monotonic()
    pub = peers(server, unique("pub"), version=V311)
    closed = False
    while time.monotonic() - started < 4:
        pub.publish(topic, b"tick", qos=0)
        try:
            while True:
                if c.read_packet(timeout=0.2) is None:
                    closed = True
                    break
        except (TimeoutError, OSError):
            pass
        if closed:
            break
    waited = time.monotonic() - started
    assert closed and waited <= 3.5, f"still open after {waited:.1f} s of silence with keepalive 1 s"
    assert last_disconnect(server.wait_disconnected(cid)) == (NETWORK, 0x8D, 160)


def test_platform_log_messages(server, peers):
    """GET /api/v0002/logs/connection?typeId=&deviceId= with the sentences
    of DESIGN.md §2 and the README."""
    device_id = unique("d")
    cid = f"d:local:sensor:{device_id}"
    peer = peers(server, cid, version=V311, keepalive=60)
    port = peer.local_port
    server.wait_connected(cid)
    peer.disconnect()
    server.wait_disconnected(cid)

    def messages():
        status, body = server.rest("GET", f"/api/v0002/logs/connection?typeId=sensor&deviceId={device_id}")
        assert status == 200, body
        return [e["message"] for e in body] if len(body) == 2 else None

    assert eventually(messages) == [
        "Disconnected by the client: normal disconnection (0x00)",
        f"Connected from 127.0.0.1:{port} using MQTT 3.1.1 (keepalive 60 s)",
    ]


def test_watch_sees_mqtt_connects_and_disconnects(server, peers):
    """The change feed (SDK watch) carries what the broker reports, in order."""
    cid = unique("watched")
    events: list = []
    watch = server.sdk.watch(filter={"client_id_prefix": cid}, include_snapshot=True)

    def follow():
        for event in watch:
            events.append(event)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        eventually(lambda: any(e.type == WatchEventType.SNAPSHOT_COMPLETE for e in events), what="snapshot complete")
        peer = peers(server, cid, version=V5)
        peer.disconnect(reason=0x04)
        changes = eventually(
            lambda: (c := [e for e in events if e.type == WatchEventType.CHANGE]) and len(c) >= 2 and c, what="2 changes"
        )
    finally:
        watch.cancel()
    kinds = [pb.ChangeKind.Name(e.change.kind) for e in changes]
    assert kinds[:2] == ["CHANGE_KIND_CONNECTED", "CHANGE_KIND_DISCONNECTED"], kinds
    assert changes[0].revision < changes[1].revision
    assert changes[1].change.log_entry.reason_code == 0x04
    assert all(e.client_id == cid for e in changes)


def test_metrics_follow_the_broker(make_server):
    server = make_server()

    def metrics() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}/metrics", timeout=10) as resp:
            lines = resp.read().decode().splitlines()
        return {k: float(v) for k, _, v in (line.rpartition(" ") for line in lines if line and not line.startswith("#"))}

    dev = Peer(server, "d:local:sensor:metered", version=V5)
    other = RawClient(server)
    try:
        assert other.connect("plain-metered")[1] == 0
        dev.subscribe_ok("m/#", 1)
        dev.publish("m/x", b"hello", qos=1)
        dev.expect(topic="m/x")
        server.wait_connected("plain-metered")
        other.close()
        server.wait_disconnected("plain-metered")
        # The store's counts follow a commit once it is flushed, a moment
        # after the record it wrote can be read: wait for the disconnect.
        disconnects = 'connstate_disconnects_total{initiator="network",reason_code="none"}'
        m = eventually(
            lambda: (m := metrics()) and m.get("connstate_mqtt_connections") == 1 and m.get(disconnects) == 1 and m
        )
        assert m['connstate_connected_clients{client_type="device"}'] == 1
        assert m['connstate_connected_clients{client_type="unknown"}'] == 0
        assert m["connstate_connects_total"] == 2
        assert m["connstate_mqtt_received_messages_total"] == 1
        assert m["connstate_mqtt_sent_messages_total"] == 1
    finally:
        dev.close()
        other.close()


def test_one_log_line_per_connect_refusal_and_disconnect(server, peers, raw):
    """Like Mosquitto, the broker logs each connect, refused connect and
    disconnect at info level, with `client_id` and `peer` fields (Display
    formatted, never Debug)."""
    cid = unique("logged")
    p = peers(server, cid, version=V5, keepalive=30)
    port = p.local_port
    p.disconnect(reason=0x04)
    server.wait_disconnected(cid)
    c = raw(server)
    # MQTT 3.1.1 with a password but no user name (MQTT-3.1.2-22): refused.
    assert c.connect(cid, password="secret") == b"\x00\x04"

    def lines():
        found = [line for line in server.log_path.read_text(errors="replace").splitlines() if f"client_id={cid}" in line]
        return found if len(found) >= 3 else None

    connected, disconnected, refused = eventually(lines, what="three log lines")[:3]
    assert "MQTT client connected" in connected and f"peer=127.0.0.1:{port}" in connected, connected
    assert "protocol=5.0" in connected and "keep_alive=30" in connected, connected
    assert "MQTT client disconnected" in disconnected, disconnected
    assert "initiator=client" in disconnected and "reason_code=0x04" in disconnected, disconnected
    assert "close_code=0" in disconnected, disconnected
    assert "MQTT connect refused" in refused and "reason_code=0x86" in refused, refused
    for line in (connected, disconnected, refused):
        assert '"' not in line.split("client_id=")[1].split()[0], f"Debug-formatted field: {line}"
