"""MQTT over WebSocket (path /mqtt, subprotocol mqtt)."""

from __future__ import annotations

import pytest

from connstate_client import pb

from conftest import (
    CONNACK,
    PUBLISH,
    SUBACK,
    V5,
    V311,
    RawWsClient,
    connect_packet,
    publish_packet,
    subscribe_packet,
    unique,
)


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_websocket_round_trip(broker, peers, version):
    topic = f"ws/{unique()}"
    ws = peers(broker, unique("ws"), version=version, transport="websockets")
    tcp = peers(broker, unique("tcp"), version=version)
    ws.subscribe_ok(f"{topic}/down", 1)
    tcp.subscribe_ok(f"{topic}/up", 1)

    tcp.publish(f"{topic}/down", b"to ws", qos=1)
    assert ws.expect(topic=f"{topic}/down").payload == b"to ws"
    ws.publish(f"{topic}/up", b"from ws" * 200, qos=1)  # > 125 bytes: extended WebSocket frame length
    assert tcp.expect(topic=f"{topic}/up").payload == b"from ws" * 200
    ws.disconnect()


def test_websocket_handshake(broker):
    c = RawWsClient(broker)
    try:
        assert c.status == 101, c.headers
        assert c.headers.get("sec-websocket-accept") == c.expected_accept
        assert c.headers.get("sec-websocket-protocol") == "mqtt"
    finally:
        c.close()


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_mqtt_packets_are_not_aligned_with_websocket_messages(broker, version):
    """MQTT-6.0.0-2: a WebSocket message may hold part of a packet, or
    several packets."""
    topic = f"ws/{unique()}"
    c = RawWsClient(broker)
    try:
        connect = connect_packet(unique("wsraw"), version=version)
        c.send_messages([connect[:1], connect[1:5], connect[5:]])
        p = c.read_packet()
        assert p is not None and p[0] >> 4 == CONNACK and p[1][1] == 0, p
        both = subscribe_packet([(topic, 0)], version=version) + publish_packet(topic, b"echo", version=version)
        c.send_messages([both[:7], both[7:]])
        assert c.read_packet()[0] >> 4 == SUBACK
        first, body = c.read_packet()
        assert first >> 4 == PUBLISH and body.endswith(b"echo")
        # Two whole packets in one message.
        c.send(publish_packet(topic, b"one", version=version) + publish_packet(topic, b"two", version=version))
        assert [c.read_packet()[1][-3:] for _ in range(2)] == [b"one", b"two"]
    finally:
        c.close()


def test_fragmented_websocket_message(broker):
    """One WebSocket message in continuation frames (RFC 6455 §5.4)."""
    c = RawWsClient(broker)
    try:
        connect = connect_packet(unique("wsfrag"), version=4)
        c.send_fragmented([connect[:3], connect[3:9], connect[9:]])
        p = c.read_packet()
        assert p is not None and p[0] >> 4 == CONNACK and p[1] == b"\x00\x00", p
    finally:
        c.close()


@pytest.mark.connstate
def test_websocket_keepalive_expiry(server, peers):
    cid = unique("wsquiet")
    peer = peers(server, cid, version=V5, transport="websockets", keepalive=1)
    server.wait_connected(cid)
    peer.client.loop_stop()  # no more PINGREQs; the socket stays open
    s = server.wait_disconnected(cid, timeout=6)
    assert (s.last_disconnect_initiator, s.last_disconnect_reason_code, s.last_close_code) == (pb.DISCONNECT_INITIATOR_NETWORK, 0x8D, 160)


@pytest.mark.connstate
def test_websocket_malformed_packet(server):
    cid = unique("wsbad")
    c = RawWsClient(server)
    try:
        assert c.connect(cid, version=5)[1] == 0
        server.wait_connected(cid)
        c.send(b"\x00\x00")
        got = c.read_until_closed(timeout=5)
        assert [(t, b[:1]) for t, b in got] in ([(0xE0, b"\x81")], [(0xE0, b"\x82")]), got
    finally:
        c.close()
    s = server.wait_disconnected(cid)
    assert (s.last_disconnect_initiator, s.last_close_code) == (pb.DISCONNECT_INITIATOR_SERVER, 105)
    assert s.last_disconnect_reason_code in (0x81, 0x82)
