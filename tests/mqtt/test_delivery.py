"""Delivery guarantees at the packet level: QoS 2 inbound exactly once,
redelivery of unacknowledged messages with DUP, flow control (v5 Receive
Maximum), ordering through the in-flight window, expiry, large payloads,
client identifiers the server assigns."""

from __future__ import annotations

import struct
import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from conftest import (
    PUBACK,
    PUBLISH,
    SESSION_300,
    SUBACK,
    V5,
    V311,
    packet,
    props,
    publish_packet,
    session_300,
    subscribe_packet,
    unique,
)

PUBREC, PUBREL, PUBCOMP = 5, 6, 7
VERSIONS = pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])


def parse_publish(first: int, body: bytes, version: int) -> tuple[str, int | None, bytes]:
    """(topic, packet id or None, payload) of a PUBLISH body."""
    n = struct.unpack("!H", body[:2])[0]
    topic = body[2 : 2 + n].decode()
    rest = body[2 + n :]
    packet_id = None
    if (first >> 1) & 3:
        packet_id = struct.unpack("!H", rest[:2])[0]
        rest = rest[2:]
    if version == 5:
        plen = rest[0]  # short property sections only, in these tests
        assert plen < 128
        rest = rest[1 + plen :]
    return topic, packet_id, rest


def ack(kind: int, packet_id: int) -> bytes:
    flags = 0x02 if kind == PUBREL else 0
    return packet((kind << 4) | flags, struct.pack("!H", packet_id))


@VERSIONS
def test_inbound_qos2_is_delivered_exactly_once(broker, raw, peers, version):
    topic = f"exactly/{unique()}"
    sub = peers(broker, unique("sub"), version=V5)
    sub.subscribe_ok(topic, 2)
    c = raw(broker)
    assert c.connect(unique("raw"), version=version)[1] == 0
    first = publish_packet(topic, b"once", qos=2, packet_id=5, version=version)
    c.send(first)
    p = c.read_packet()
    assert p is not None and p[0] >> 4 == PUBREC and p[1][:2] == b"\x00\x05", p
    # The sender did not see the PUBREC: it sends the PUBLISH again, with DUP.
    c.send(bytes([first[0] | 0x08]) + first[1:])
    p = c.read_packet()
    assert p is not None and p[0] >> 4 == PUBREC and p[1][:2] == b"\x00\x05", p
    c.send(ack(PUBREL, 5))
    p = c.read_packet()
    assert p is not None and p[0] >> 4 == PUBCOMP and p[1][:2] == b"\x00\x05", p
    # Packet id 5 is free again: a new message with it is a new message.
    c.send(publish_packet(topic, b"again", qos=2, packet_id=5, version=version))
    assert c.read_packet()[0] >> 4 == PUBREC
    c.send(ack(PUBREL, 5))
    assert c.read_packet()[0] >> 4 == PUBCOMP
    got = sub.until(topic, b"again") + sub.quiet(0.2)
    assert [m.payload for m in got] == [b"once", b"again"]


@VERSIONS
def test_unacknowledged_qos1_is_resent_with_dup_after_reconnect(broker, raw, peers, version):
    topic = f"redeliver/{unique()}"
    cid = unique("redeliver")
    session = SESSION_300 if version == 5 else b""
    c = raw(broker)
    assert c.connect(cid, version=version, clean=False, properties=session)[1] == 0
    c.send(subscribe_packet([(topic, 1)], version=version))
    assert c.read_packet()[0] >> 4 == SUBACK
    pub = peers(broker, unique("pub"), version=V311)
    pub.publish(topic, b"ack me", qos=1)
    first, body = c.read_packet()
    assert first >> 4 == PUBLISH and not first & 0x08
    t, packet_id, payload = parse_publish(first, body, version)
    assert (t, payload) == (topic, b"ack me")
    c.close()  # no PUBACK

    c2 = raw(broker)
    connack = c2.connect(cid, version=version, clean=False, properties=session)
    assert connack[:2] == b"\x01\x00", f"CONNACK {connack.hex()}: session not present"
    first, body = c2.read_packet()
    assert first >> 4 == PUBLISH and first & 0x08, f"resent without DUP: {first:#x}"
    assert parse_publish(first, body, version) == (topic, packet_id, b"ack me")
    c2.send(ack(PUBACK, packet_id))
    # Acknowledged now: not sent a third time.
    pub.publish(topic, b"next", qos=1)
    first, body = c2.read_packet()
    assert parse_publish(first, body, version)[2] == b"next"


def test_v5_receive_maximum_limits_unacknowledged_messages(broker, raw, peers):
    topic = f"flow/{unique()}"
    c = raw(broker)
    assert c.connect(unique("slow"), version=5, properties=b"\x21\x00\x01")[1] == 0  # Receive Maximum 1
    c.send(subscribe_packet([(topic, 1)], version=5))
    assert c.read_packet()[0] >> 4 == SUBACK
    pub = peers(broker, unique("pub"), version=V5)
    for i in range(3):
        pub.publish(topic, f"m{i}".encode(), qos=1)
    got = []
    for i in range(3):
        first, body = c.read_packet()
        _, packet_id, payload = parse_publish(first, body, 5)
        got.append(payload)
        with pytest.raises(TimeoutError):
            c.read_packet(timeout=0.3)  # nothing more while this one is unacknowledged
        c.send(ack(PUBACK, packet_id))
    assert got == [b"m0", b"m1", b"m2"]


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_many_queued_messages_arrive_in_order(broker, peers, version):
    """More queued QoS 1 messages than the in-flight window (20 by default
    in both brokers): all arrive, in order."""
    topic = f"order/{unique()}"
    session = session_300(version)
    cid = unique("order")
    sub = peers(broker, cid, version=version, clean=False, properties=session)
    sub.subscribe_ok(topic, 1)
    sub.disconnect()
    pub = peers(broker, unique("pub"), version=version)
    for i in range(60):
        pub.publish(topic, str(i).encode(), qos=1)
    sub = peers(broker, cid, version=version, clean=False, properties=session)
    for i in range(60, 80):  # live ones after the queued ones
        pub.publish(topic, str(i).encode(), qos=1)
    got = [int(sub.expect(topic=topic, timeout=10).payload) for _ in range(80)]
    assert got == list(range(80))


LONG_SESSION = props(PacketTypes.CONNECT, SessionExpiryInterval=300)


def offline_subscriber(broker, peers, topic_filter, session=LONG_SESSION):
    """A persistent session subscribed to ``topic_filter``, now offline; returns its client id."""
    cid = unique("offline")
    sub = peers(broker, cid, version=V5, clean=False, properties=session)
    sub.subscribe_ok(topic_filter, 1)
    sub.disconnect()
    return cid


def test_v5_expired_queued_message_is_dropped(broker, peers):
    """MQTT-3.3.2-5: a message whose expiry interval passed before onward
    delivery started is deleted for that subscriber."""
    base = f"expiry/{unique()}"
    cid = offline_subscriber(broker, peers, f"{base}/#")
    pub = peers(broker, unique("pub"), version=V5)
    pub.publish(f"{base}/short", b"gone", qos=1, properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=1))
    pub.publish(f"{base}/long", b"kept", qos=1, properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=60))
    time.sleep(2.2)
    sub = peers(broker, cid, version=V5, clean=False, properties=LONG_SESSION)
    assert sub.connack[0] is True
    got = [(m.topic, m.payload) for m in sub.until(f"{base}/long")]
    assert got == [(f"{base}/long", b"kept")]


def test_v5_forwarded_message_expiry_is_what_is_left(broker, peers):
    """MQTT-3.3.2-6: the Message Expiry Interval sent on is the received one
    minus the time the message waited in the server."""
    base = f"expiry/{unique()}"
    cid = offline_subscriber(broker, peers, f"{base}/#")
    pub = peers(broker, unique("pub"), version=V5)
    pub.publish(f"{base}/long", b"kept", qos=1, properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=60))
    time.sleep(2.2)
    sub = peers(broker, cid, version=V5, clean=False, properties=LONG_SESSION)
    msg = sub.expect(topic=f"{base}/long")
    assert 55 <= msg.properties.MessageExpiryInterval <= 58, msg.properties.MessageExpiryInterval


def test_v5_expired_retained_message_is_not_sent(broker, peers):
    topic = f"expiry/{unique()}"
    pub = peers(broker, unique("pub"), version=V5)
    pub.publish(topic, b"stale", qos=1, retain=True, properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=1))
    pub.publish(f"{topic}/fresh", b"fresh", qos=1, retain=True, properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=60))
    time.sleep(2.2)
    sub = peers(broker, unique("sub"), version=V5)
    sub.subscribe_ok(f"{topic}/fresh", 1)  # this one arrives; then the expired one must not
    assert sub.expect(topic=f"{topic}/fresh").payload == b"fresh"
    sub.subscribe_ok(topic, 1)
    pub.publish(topic, b"marker", qos=1)
    assert [m.payload for m in sub.until(topic, b"marker")] == [b"marker"]
    pub.publish(f"{topic}/fresh", b"", qos=1, retain=True)


def test_v5_session_expiry(broker, peers):
    cid = offline_subscriber(broker, peers, f"expiry/{unique()}", props(PacketTypes.CONNECT, SessionExpiryInterval=1))
    time.sleep(2.2)
    sub = peers(broker, cid, version=V5, clean=False, properties=LONG_SESSION)
    assert sub.connack[0] is False, "session kept past its expiry interval"


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_large_payload_round_trip(broker, peers, version):
    topic = f"large/{unique()}"
    sub = peers(broker, unique("sub"), version=version)
    sub.subscribe_ok(topic, 1)
    pub = peers(broker, unique("pub"), version=version)
    payload = bytes(range(256)) * 800  # 200 KiB: a three-byte remaining length
    pub.publish(topic, payload, qos=1)
    assert sub.expect(topic=topic, timeout=10).payload == payload


def test_empty_client_id(broker, raw, peers):
    # 3.1.1: allowed with a clean session (the server makes one up) ...
    c = raw(broker)
    assert c.connect("", version=4, clean=True) == b"\x00\x00"
    # ... refused without (return code 2, identifier rejected).
    c = raw(broker)
    assert c.connect("", version=4, clean=False) == b"\x00\x02"
    # 5.0: the CONNACK carries the Assigned Client Identifier.
    p = peers(broker, "", version=V5)
    assigned = getattr(p.connack[2], "AssignedClientIdentifier", "")
    assert assigned, "no Assigned Client Identifier in CONNACK"
    topic = f"assigned/{unique()}"
    p.subscribe_ok(topic, 0)
    p.publish(topic, b"me", qos=1)
    assert p.expect(topic=topic).payload == b"me"


@VERSIONS
def test_publish_to_a_wildcard_topic_is_refused(broker, raw, version):
    c = raw(broker)
    assert c.connect(unique("wild"), version=version)[1] == 0
    c.send(publish_packet("a/+/b", b"x", qos=1, version=version))
    got = c.read_until_closed(timeout=5)
    if version == 5:
        assert len(got) == 1 and got[0][0] == 0xE0 and got[0][1][:1] in (b"\x82", b"\x90", b"\x81"), got
    else:
        assert got == []


def test_will_can_be_retained(broker, peers):
    topic = f"will/{unique()}"
    live = peers(broker, unique("live"), version=V311)
    live.subscribe_ok(topic, 1)
    dying = peers(broker, unique("dying"), version=V311, will={"topic": topic, "payload": b"dead", "qos": 1, "retain": True})
    dying.close()
    assert live.expect(topic=topic).payload == b"dead"  # published now
    late = peers(broker, unique("late"), version=V311)
    late.subscribe_ok(topic, 1)
    msg = late.expect(topic=topic)
    assert (msg.payload, msg.retain) == (b"dead", True)
    late.publish(topic, b"", qos=1, retain=True)



def test_v5_inbound_window_up_to_the_announced_receive_maximum(broker, raw, peers):
    """The server's CONNACK Receive Maximum (65535 when absent) bounds the
    QoS 2 PUBLISHes a client may leave without PUBREL; up to it (100 here),
    all are accepted and delivered once released."""
    probe = peers(broker, unique("probe"), version=V5)
    window = min(getattr(probe.connack[2], "ReceiveMaximum", 65535), 100)
    topic = f"window/{unique()}"
    sub = peers(broker, unique("sub"), version=V5)
    sub.subscribe_ok(topic, 2)
    c = raw(broker)
    assert c.connect(unique("burst"), version=5)[1] == 0
    c.send(b"".join(publish_packet(topic, str(i).encode(), qos=2, packet_id=i + 1, version=5) for i in range(window)))
    recs = [c.read_packet() for _ in range(window)]
    assert all(p is not None and p[0] >> 4 == PUBREC for p in recs), recs[:3]
    c.send(b"".join(ack(PUBREL, i + 1) for i in range(window)))
    comps = [c.read_packet() for _ in range(window)]
    assert all(p is not None and p[0] >> 4 == PUBCOMP for p in comps)
    got = sorted(int(sub.expect(topic=topic, timeout=10).payload) for _ in range(window))
    assert got == list(range(window))
    assert sub.quiet(0.2) == []


@pytest.mark.parametrize("transport", ["tcp", "websockets"])
def test_remaining_length_and_frame_boundaries(broker, peers, transport):
    """Payloads whose PUBLISH Remaining Length sits on each side of the
    variable-length boundaries (127/128, 16383/16384), plus WebSocket frame
    length boundaries (125/126, 65535/65536), then large ones."""
    topic = f"edge/{unique()}"
    sub = peers(broker, unique("sub"), version=V311, transport=transport)
    sub.subscribe_ok(topic, 1)
    pub = peers(broker, unique("pub"), version=V311, transport=transport)
    overhead = 2 + len(topic.encode()) + 2  # topic length, topic, packet id
    lengths = [127, 128, 16383, 16384, 125 - 2, 126 - 2, 65535 - 4, 65536 - 4, 300_000]
    payloads = [bytes([i % 251]) * max(0, rl - overhead) for i, rl in enumerate(lengths)]
    for p in payloads:
        pub.publish(topic, p, qos=1)
    got = [sub.expect(topic=topic, timeout=10).payload for _ in payloads]
    assert [len(g) for g in got] == [len(p) for p in payloads]
    assert got == payloads
