"""CONNECT edge cases and MQTT 5 session handling details."""

from __future__ import annotations

import struct

import pytest

import paho.mqtt.client as mqtt
from conftest import DISCONNECT, V5, V311, connect_packet, disconnect_packet, mqtt_str, packet, session_300, unique


def test_mqtt_3_1_client(broker, peers):
    """Protocol name MQIsdp, level 3."""
    topic = f"v31/{unique()}"
    old = peers(broker, unique("v31"), version=mqtt.MQTTv31)
    old.subscribe_ok(topic, 1)
    new = peers(broker, unique("new"), version=V5)
    new.publish(topic, b"hi", qos=1)
    assert old.expect(topic=topic).payload == b"hi"


@pytest.mark.parametrize("level", [6, 2, 0])
def test_unsupported_protocol_level(broker, raw, level):
    c = raw(broker)
    data = bytearray(connect_packet(unique("level"), version=4))
    data[8] = level  # after fixed header (2), protocol name (6)
    c.send(bytes(data))
    got = c.read_until_closed(timeout=5)
    # 3.1.1 CONNACK return code 1 (unacceptable protocol version), or just
    # closing the connection when the server cannot tell which CONNACK
    # format the client speaks. Mosquitto answers with the 3.1.1 format.
    assert got in ([], [(0x20, b"\x00\x01")]), got


def test_v5_disconnect_may_not_set_session_expiry_after_zero(broker, raw):
    """MQTT-3.14.2-2: CONNECT had Session Expiry 0; a DISCONNECT setting it
    non-zero is a protocol error, answered with DISCONNECT 0x82."""
    c = raw(broker)
    assert c.connect(unique("expiry"), version=5)[1] == 0
    c.send(bytes([0xE0, 7, 0x00, 5, 0x11, 0, 0, 0, 60]))  # reason 0, Session Expiry Interval 60
    got = c.read_until_closed(timeout=5)
    assert [(t, b[:1]) for t, b in got] == [(DISCONNECT << 4, b"\x82")], got


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_takeover_keeps_a_persistent_session(broker, peers, version):
    topic = f"takeover/{unique()}"
    session = session_300(version)
    cid = unique("keep")
    first = peers(broker, cid, version=version, clean=False, properties=session)
    first.subscribe_ok(topic, 1)
    second = peers(broker, cid, version=version, clean=False, properties=session)
    assert second.connack[0] is True, "session not present for the connection that took over"
    first.wait_disconnected()
    pub = peers(broker, unique("pub"), version=version)
    pub.publish(topic, b"to the new one", qos=1)
    assert second.expect(topic=topic).payload == b"to the new one"


def test_subscribing_again_replaces_the_subscription(broker, peers):
    topic = f"resub/{unique()}"
    sub = peers(broker, unique("sub"), version=V311)
    sub.subscribe_ok(topic, 0)
    sub.subscribe_ok(topic, 1)
    pub = peers(broker, unique("pub"), version=V311)
    pub.publish(topic, b"once", qos=1)
    pub.publish(f"{topic}/m", b"m", qos=1)
    sub.subscribe_ok(f"{topic}/m", 0)
    pub.publish(f"{topic}/m", b"m", qos=1)
    got = sub.until(f"{topic}/m")
    assert [(m.payload, m.qos) for m in got if m.topic == topic] == [(b"once", 1)]


def test_retained_message_is_sent_at_the_subscription_qos(broker, peers):
    topic = f"retqos/{unique()}"
    pub = peers(broker, unique("pub"), version=V5)
    pub.publish(topic, b"r", qos=2, retain=True)
    sub = peers(broker, unique("sub"), version=V5)
    sub.subscribe_ok(topic, 0)
    msg = sub.expect(topic=topic)
    assert (msg.payload, msg.qos, msg.retain) == (b"r", 0, True)
    pub.publish(topic, b"", qos=1, retain=True)


def test_v5_shared_subscription(broker, peers):
    """`$share/{group}/{filter}`: each message goes to one member of the
    group. A broker without them must say so in CONNACK (Shared
    Subscription Available 0) and refuse the filter with 0x9E."""
    topic = f"shared/{unique()}"
    group = f"$share/g{unique()}/{topic}"
    a = peers(broker, unique("a"), version=V5)
    b = peers(broker, unique("b"), version=V5)
    if getattr(a.connack[2], "SharedSubscriptionAvailable", 1) == 0:
        assert a.subscribe(group, 1) == [0x9E]
        return
    a.subscribe_ok(group, 1)
    b.subscribe_ok(group, 1)
    plain = peers(broker, unique("plain"), version=V5)
    plain.subscribe_ok(topic, 1)
    pub = peers(broker, unique("pub"), version=V5)
    for i in range(10):
        pub.publish(topic, str(i).encode(), qos=1)
    assert [int(plain.expect(topic=topic).payload) for _ in range(10)] == list(range(10))
    got = a.quiet(0.5) + b.quiet(0.2)
    assert sorted(int(m.payload) for m in got) == list(range(10))
    assert all(m.topic == topic for m in got)


def test_v5_unsubscribe_reason_codes(broker, peers):
    sub = peers(broker, unique("sub"), version=V5)
    topic = f"unsub/{unique()}"
    sub.subscribe_ok(topic, 0)
    assert sub.unsubscribe(topic) == [0x00]
    assert sub.unsubscribe(topic) == [0x11]  # no subscription existed


def test_raw_v311_disconnect_discards_will(broker, raw, peers):
    topic = f"will/{unique()}"
    watcher = peers(broker, unique("watch"), version=V311)
    watcher.subscribe_ok(topic, 1)
    c = raw(broker)
    assert c.connect(unique("raw"), will_topic=topic, will_payload=b"no", will_qos=1) == b"\x00\x00"
    c.send(disconnect_packet())
    assert c.read_until_closed() == []
    watcher.publish(topic, b"marker", qos=1)
    assert [m.payload for m in watcher.until(topic, b"marker") + watcher.quiet(0.2)] == [b"marker"]


def test_v311_password_without_user_name_is_refused(broker, raw):
    """MQTT-3.1.2-22: in 3.1.1 the Password Flag needs the User Name Flag.
    (MQTT 5 allows a password alone.)"""
    body = mqtt_str("MQTT") + bytes([4, 0x42]) + struct.pack("!H", 60) + mqtt_str(unique("pw")) + mqtt_str("secret")
    c = raw(broker)
    c.send(packet(0x10, body))
    got = c.read_until_closed(timeout=5)
    assert all(t >> 4 == 2 and b[1] != 0 for t, b in got), f"accepted: {got}"


def test_v311_reserved_connect_flag_is_malformed(broker, raw):
    """MQTT-3.1.2-3: the reserved CONNECT flag must be 0, else the server
    disconnects the client."""
    data = bytearray(connect_packet(unique("reserved"), version=4))
    data[9] |= 0x01
    c = raw(broker)
    c.send(bytes(data))
    assert c.read_until_closed(timeout=5) == []


def _violations(version: int) -> dict[str, bytes]:
    """Packets a server must treat as malformed or a protocol error, after
    a successful CONNECT (``version`` 4 or 5). (Mosquitto 2.0 tolerates a
    QoS 0 PUBLISH with DUP set and a SUBACK sent by a client, so those two
    are left out.)"""
    props0 = b"\x00" if version == 5 else b""
    return {
        "subscribe-no-filters": packet(0x82, b"\x00\x01" + props0),
        "unsubscribe-no-filters": packet(0xA2, b"\x00\x01" + props0),
        "subscribe-qos-3": packet(0x82, b"\x00\x01" + props0 + mqtt_str("a/b") + b"\x03"),
        "publish-packet-id-0": packet(0x32, mqtt_str("a/b") + b"\x00\x00" + props0 + b"x"),
        "client-sends-connack": packet(0x20, b"\x00\x00" + props0),
    }


VIOLATIONS = list(_violations(4))


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
@pytest.mark.parametrize("violation", VIOLATIONS)
def test_protocol_violation_closes_the_connection(broker, raw, peers, version, violation):
    c = raw(broker)
    assert c.connect(unique("violate"), version=version)[1] == 0
    c.send(_violations(version)[violation])
    got = c.read_until_closed(timeout=5)
    if version == 5:
        assert [(t, b[:1]) for t, b in got] in ([], [(DISCONNECT << 4, b"\x81")], [(DISCONNECT << 4, b"\x82")]), got
    else:
        assert got == []
