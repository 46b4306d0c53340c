"""Protocol corners a hand-written broker easily gets wrong: QoS 2 state
across reconnects, the client's Maximum Packet Size, topic alias limits,
will properties and will timing, UTF-8 topics."""

from __future__ import annotations

import os
import struct
import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from conftest import DISCONNECT, PINGREQ, PINGRESP, PUBLISH, SESSION_300, SUBACK, V5, V311, mqtt_str, packet, props, publish_packet, subscribe_packet, unique, varint
from test_delivery import PUBCOMP, PUBREC, PUBREL, ack, parse_publish



@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_outbound_qos2_pubrel_is_resent_after_reconnect(broker, raw, peers, version):
    """The server got PUBREC, sent PUBREL, the client vanished: on reconnect
    the server resends PUBREL (not the PUBLISH), and the message is not
    delivered again."""
    topic = f"q2out/{unique()}"
    cid = unique("q2out")
    session = SESSION_300 if version == 5 else b""
    c = raw(broker)
    assert c.connect(cid, version=version, clean=False, properties=session)[1] == 0
    c.send(subscribe_packet([(topic, 2)], version=version))
    assert c.read_packet()[0] >> 4 == SUBACK
    pub = peers(broker, unique("pub"), version=V5)
    pub.publish(topic, b"two", qos=2)
    first, body = c.read_packet()
    _, packet_id, payload = parse_publish(first, body, version)
    assert payload == b"two" and (first >> 1) & 3 == 2
    c.send(ack(PUBREC, packet_id))
    first, body = c.read_packet()
    assert first >> 4 == PUBREL and body[:2] == struct.pack("!H", packet_id)
    c.close()  # no PUBCOMP

    c2 = raw(broker)
    assert c2.connect(cid, version=version, clean=False, properties=session)[:1] == b"\x01"
    first, body = c2.read_packet()
    assert first >> 4 == PUBREL and body[:2] == struct.pack("!H", packet_id), (first, body)
    c2.send(ack(PUBCOMP, packet_id))
    pub.publish(topic, b"next", qos=2)
    first, body = c2.read_packet()
    assert parse_publish(first, body, version)[2] == b"next"


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_inbound_qos2_survives_a_reconnect(broker, raw, peers, version):
    """PUBLISH QoS 2 → PUBREC, connection lost, back with the session: a
    resent PUBLISH (DUP) is not a new message; PUBREL → PUBCOMP; delivered once."""
    topic = f"q2in/{unique()}"
    cid = unique("q2in")
    session = SESSION_300 if version == 5 else b""
    sub = peers(broker, unique("sub"), version=V5)
    sub.subscribe_ok(topic, 2)
    c = raw(broker)
    assert c.connect(cid, version=version, clean=False, properties=session)[1] == 0
    first = publish_packet(topic, b"once", qos=2, packet_id=9, version=version)
    c.send(first)
    assert c.read_packet()[0] >> 4 == PUBREC
    c.close()
    time.sleep(0.2)  # a reconnect after the server saw the drop (not a takeover)

    c2 = raw(broker)
    assert c2.connect(cid, version=version, clean=False, properties=session)[:1] == b"\x01"
    c2.send(bytes([first[0] | 0x08]) + first[1:])
    p = c2.read_packet()
    assert p is not None and p[0] >> 4 == PUBREC and p[1][:2] == b"\x00\x09", p
    c2.send(ack(PUBREL, 9))
    p = c2.read_packet()
    assert p is not None and p[0] >> 4 == PUBCOMP, p
    c2.send(publish_packet(topic, b"marker", qos=1, packet_id=10, version=version))
    # Exactly once (Mosquitto may deliver it after the marker).
    got = sub.until(topic, b"marker") + sub.quiet(0.3)
    assert sorted(m.payload for m in got) == [b"marker", b"once"]


def test_v5_client_maximum_packet_size_is_respected(broker, raw, peers):
    """MQTT-3.1.2-25: the server must not send a packet larger than the
    client's Maximum Packet Size; such a message is discarded for it."""
    topic = f"small/{unique()}"
    c = raw(broker)
    assert c.connect(unique("small"), version=5, properties=b"\x27\x00\x00\x00\x40")[1] == 0  # 64 bytes
    c.send(subscribe_packet([(topic, 0)], version=5))
    assert c.read_packet()[0] >> 4 == SUBACK
    pub = peers(broker, unique("pub"), version=V5)
    pub.publish(topic, b"x" * 200, qos=1)
    pub.publish(topic, b"fits", qos=1)
    first, body = c.read_packet()
    assert parse_publish(first, body, 5)[2] == b"fits"


def topic_alias_publish(topic: str, alias: int, payload: bytes) -> bytes:
    properties = b"\x23" + struct.pack("!H", alias)
    return packet(PUBLISH << 4, mqtt_str(topic) + varint(len(properties)) + properties + payload)


@pytest.mark.parametrize("above", [1, 1000], ids=["max+1", "max+1000"])
def test_v5_topic_alias_above_maximum(broker, raw, peers, above):
    """A Topic Alias above the server's Topic Alias Maximum (MQTT-3.3.2-9):
    DISCONNECT 0x94 "Topic Alias invalid", the reason code MQTT 5 §2.4
    defines for exactly this."""
    maximum = peers(broker, unique("probe"), version=V5).connack[2].TopicAliasMaximum
    c = raw(broker)
    assert c.connect(unique("alias"), version=5)[1] == 0
    c.send(topic_alias_publish("a/b", maximum + above, b"x"))
    got = c.read_until_closed(timeout=5)
    assert [(t, b[:1]) for t, b in got] == [(DISCONNECT << 4, b"\x94")], got


def test_v5_topic_alias_zero(broker, raw):
    """Topic Alias 0 is not permitted (MQTT-3.3.2-8): malformed, protocol
    error or topic alias invalid."""
    c = raw(broker)
    assert c.connect(unique("alias"), version=5)[1] == 0
    c.send(topic_alias_publish("a/b", 0, b"x"))
    got = c.read_until_closed(timeout=5)
    assert [(t, b[:1]) for t, b in got] in ([(DISCONNECT << 4, code)] for code in (b"\x81", b"\x82", b"\x94")), got


def test_v5_unknown_topic_alias(broker, raw):
    """An empty topic with an alias never set: protocol error (0x82)."""
    c = raw(broker)
    assert c.connect(unique("alias"), version=5)[1] == 0
    c.send(topic_alias_publish("", 3, b"x"))
    got = c.read_until_closed(timeout=5)
    assert [(t, b[:1]) for t, b in got] == [(DISCONNECT << 4, b"\x82")], got


def test_v5_will_properties_pass_through(broker, peers):
    topic = f"will/{unique()}"
    watcher = peers(broker, unique("watch"), version=V5)
    watcher.subscribe_ok(topic, 1)
    will_props = props(
        PacketTypes.WILLMESSAGE, ContentType="text/plain", UserProperty=[("why", "test")], ResponseTopic=f"{topic}/r"
    )
    dying = peers(broker, unique("dying"), version=V5, will={"topic": topic, "payload": b"bye", "qos": 1, "properties": will_props})
    dying.close()
    msg = watcher.expect(topic=topic)
    assert msg.payload == b"bye"
    assert msg.properties.ContentType == "text/plain"
    assert msg.properties.UserProperty == [("why", "test")]
    assert msg.properties.ResponseTopic == f"{topic}/r"


def test_v5_will_published_when_session_expires_before_will_delay(broker, peers):
    """The will goes out at the earlier of Will Delay Interval and the end of
    the session (MQTT 5 §3.1.3.2.2)."""
    topic = f"will/{unique()}"
    watcher = peers(broker, unique("watch"), version=V5)
    watcher.subscribe_ok(topic, 1)
    dying = peers(
        broker,
        unique("dying"),
        version=V5,
        properties=props(PacketTypes.CONNECT, SessionExpiryInterval=1),
        will={"topic": topic, "payload": b"bye", "qos": 1, "properties": props(PacketTypes.WILLMESSAGE, WillDelayInterval=60)},
    )
    dropped = time.monotonic()
    dying.close()
    msg = watcher.expect(topic=topic, timeout=6)
    waited = time.monotonic() - dropped
    assert msg.payload == b"bye"
    assert 0.7 <= waited <= 4, waited


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_will_is_published_on_takeover(broker, peers, version):
    """The taken-over connection is closed by the server, not by a
    DISCONNECT from its client: its will goes out (MQTT 3.1.1 §3.1.2.5;
    MQTT 5 §3.1.4 step 2 with no Will Delay)."""
    topic = f"will/{unique()}"
    watcher = peers(broker, unique("watch"), version=version)
    watcher.subscribe_ok(topic, 1)
    cid = unique("twice")
    first = peers(broker, cid, version=version, will={"topic": topic, "payload": b"taken", "qos": 1})
    peers(broker, cid, version=version)
    first.wait_disconnected()
    assert watcher.expect(topic=topic).payload == b"taken"


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_utf8_topics(broker, peers, version):
    topic = f"utf8/{unique()}/Grüße/€/日本"
    sub = peers(broker, unique("sub"), version=version)
    sub.subscribe_ok("utf8/+/Grüße/#", 1)
    pub = peers(broker, unique("pub"), version=version)
    pub.publish(topic, "wärme".encode(), qos=1)
    msg = sub.expect()
    assert (msg.topic, msg.payload.decode()) == (topic, "wärme")


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_topic_with_nul_character_is_malformed(broker, raw, version):
    c = raw(broker)
    assert c.connect(unique("nul"), version=version)[1] == 0
    c.send(publish_packet("a/\x00/b", b"x", version=version))
    got = c.read_until_closed(timeout=5)
    if version == 5:
        assert [(t, b[:1]) for t, b in got] in ([(DISCONNECT << 4, b"\x81")], [(DISCONNECT << 4, b"\x82")]), got
    else:
        assert got == []


def test_v5_subscription_identifier_on_retained_delivery(broker, peers):
    topic = f"subid/{unique()}"
    pub = peers(broker, unique("pub"), version=V5)
    pub.publish(topic, b"kept", qos=1, retain=True)
    sub = peers(broker, unique("sub"), version=V5)
    sub.subscribe_ok(topic, 1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=77))
    msg = sub.expect(topic=topic)
    assert msg.retain and msg.properties.SubscriptionIdentifier == [77]
    pub.publish(topic, b"", qos=1, retain=True)


def test_v311_will_topic_with_wildcard_is_refused(broker, raw):
    """A will topic is a topic name: wildcards make the CONNECT invalid
    (the server closes the connection; CONNACK, if any, is a refusal)."""
    c = raw(broker)
    c.send(
        packet(
            0x10,
            mqtt_str("MQTT") + bytes([4, 0x06]) + struct.pack("!H", 60) + mqtt_str(unique("w")) + mqtt_str("a/#") + mqtt_str(b"x"),
        )
    )
    got = c.read_until_closed(timeout=5)
    assert all(t >> 4 == 2 and b[1] != 0 for t, b in got), got



def test_packets_after_a_quiet_spell_are_read_whole(broker, raw):
    """A connection quiet for a while may give its buffers back (connstate
    does after a second): packets that then arrive in pieces, several in
    one segment, or larger than any small read are still read whole."""
    topic = f"quiet/{unique()}"
    c = raw(broker)
    assert c.connect(unique("quiet"))[1] == 0
    c.send(subscribe_packet([(topic, 0)]))
    assert c.read_packet()[0] == SUBACK << 4

    payload = bytes(range(256)) * 12
    message = publish_packet(topic, payload)
    time.sleep(1.3)
    c.send(message[:3])
    time.sleep(0.1)
    c.send(message[3:40])
    # Part of a packet waiting for longer than the quiet second: the
    # broker waits for the rest without spinning.
    cpu = cpu_seconds(broker.proc.pid)
    time.sleep(2.5)
    assert cpu_seconds(broker.proc.pid) - cpu < 0.75, "the broker was busy while waiting for the rest of a packet"
    for piece in (message[40:50], message[50:]):
        c.send(piece)
        time.sleep(0.1)
    first, body = c.read_packet()
    assert first >> 4 == PUBLISH
    assert parse_publish(first, body, 4) == (topic, None, payload)

    time.sleep(1.3)
    c.send(packet(PINGREQ << 4, b"") + publish_packet(topic, b"after the ping"))
    got = [c.read_packet(), c.read_packet()]
    assert got[0] == (PINGRESP << 4, b"")
    assert parse_publish(got[1][0], got[1][1], 4) == (topic, None, b"after the ping")

    time.sleep(1.3)
    c.send(packet(PINGREQ << 4, b""))
    assert c.read_packet() == (PINGRESP << 4, b"")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
