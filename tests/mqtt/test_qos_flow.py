"""QoS flow between broker and client: acknowledgements the broker does not
expect, packets it cannot send, keepalive limits and flow control."""

from __future__ import annotations

import struct
import time

import pytest

from conftest import (
    DISCONNECT,
    PUBACK,
    PUBLISH,
    SESSION_300,
    SUBACK,
    V5,
    V311,
    connect_packet,
    publish_packet,
    subscribe_packet,
    unique,
)
from test_delivery import PUBREC, PUBREL, ack, parse_publish

RECEIVE_MAXIMUM = b"\x21"  # raw v5 CONNECT property id, followed by 2 bytes


@pytest.mark.connstate
def test_a_pubrec_for_an_unknown_packet_id_is_answered_packet_id_not_found(broker, raw):
    """MQTT 5 (4.3.3): a PUBREC for a packet id not in flight gets PUBREL with
    0x92, not Success (Mosquitto answers Success)."""
    c = raw(broker)
    assert c.connect(unique("pubrec"), version=5)[1] == 0
    c.send(ack(PUBREC, 7))
    first, body = c.read_packet()
    assert first >> 4 == PUBREL
    assert body[:2] == struct.pack("!H", 7)
    assert body[2:3] == b"\x92", f"PUBREL body {body.hex()}"


@pytest.mark.connstate
def test_a_suback_larger_than_the_clients_maximum_packet_size_is_logged(broker, raw):
    """A SUBACK that cannot be sent (over the client's Maximum Packet Size)
    is not sent (MQTT-3.1.2-24), and the log says so: otherwise the client's
    silent wait has no explanation anywhere."""
    cid = unique("suback")
    c = raw(broker)
    max_packet_size = b"\x27" + struct.pack("!I", 32)
    assert c.connect(cid, version=5, properties=max_packet_size)[1] == 0
    filters = [(f"big/{i}", 0) for i in range(40)]
    c.send(subscribe_packet(filters, version=5))
    with pytest.raises(TimeoutError):
        c.read_packet(timeout=0.5)
    log = broker.log_path.read_text(errors="replace")
    lines = [line for line in log.splitlines() if "not sent" in line and "SUBACK" in line]
    assert lines, "no log line for the SUBACK not sent"


@pytest.mark.connstate
def test_a_connack_larger_than_the_clients_maximum_packet_size_is_logged(broker, raw):
    """A client whose Maximum Packet Size no CONNACK fits gets none, and the
    log says why."""
    cid = unique("connack")
    c = raw(broker)
    c.send(connect_packet(cid, version=5, properties=b"\x27" + struct.pack("!I", 8)))
    with pytest.raises(TimeoutError):
        c.read_packet(timeout=0.5)
    log = broker.log_path.read_text(errors="replace")
    lines = [line for line in log.splitlines() if "not sent" in line and "CONNACK" in line]
    assert lines, "no log line for the CONNACK not sent"


@pytest.mark.parametrize("asked", [60, 0], ids=["longer", "none"])
def test_a_v5_client_asking_a_longer_keepalive_is_told_the_servers(make_server, peers, asked):
    """--mqtt-max-keepalive: a v5 client asking more (or 0) gets the Server
    Keep Alive in its CONNACK, and the broker records that keepalive."""
    server = make_server("--mqtt-max-keepalive", "10")
    cid = unique("ka5")
    p = peers(server, cid, version=V5, keepalive=asked)
    _, rc, properties = p.connack
    assert rc == 0
    assert getattr(properties, "ServerKeepAlive", None) == 10
    assert server.wait_state(cid, lambda s: s.keep_alive_seconds == 10)


def test_a_v5_client_is_held_to_the_server_keepalive(make_server, raw):
    """A v5 client that asked 60 s but was told 1 s is disconnected after
    1.5 s of silence with 0x8D."""
    server = make_server("--mqtt-max-keepalive", "1")
    c = raw(server)
    connack = c.connect(unique("ka5held"), version=5, keepalive=60)
    assert connack[1] == 0
    started = time.monotonic()
    got = c.read_until_closed(timeout=10)
    assert got and got[-1][0] >> 4 == DISCONNECT and got[-1][1][:1] == b"\x8d", got
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("asked, accepted", [(60, False), (0, False), (10, True)], ids=["longer", "none", "within"])
def test_a_v311_client_asking_a_longer_keepalive_is_refused(make_server, peers, asked, accepted):
    """MQTT 3.1.1 cannot be told another keepalive: a client asking more (or
    0) is refused with "identifier rejected" (2), as Mosquitto does."""
    server = make_server("--mqtt-max-keepalive", "10")
    p = peers(server, unique("ka3"), version=V311, keepalive=asked, expect_success=accepted)
    # paho reports the v3 return code 2 as its v5 equivalent, 0x85.
    assert p.connack[1] == (0 if accepted else 0x85)


def test_the_connack_announces_the_receive_maximum(make_server, peers):
    """--mqtt-receive-maximum is the Receive Maximum of every v5 CONNACK."""
    server = make_server("--mqtt-receive-maximum", "7")
    p = peers(server, unique("rm"), version=V5)
    assert getattr(p.connack[2], "ReceiveMaximum", None) == 7


def test_a_v5_client_over_the_receive_maximum_is_disconnected(make_server, raw):
    """One QoS 2 PUBLISH more than the Receive Maximum left without PUBREL:
    DISCONNECT 0x93 (MQTT-3.3.4-9), recorded as a server disconnect."""
    server = make_server("--mqtt-receive-maximum", "2")
    cid = unique("over")
    c = raw(server)
    assert c.connect(cid, version=5)[1] == 0
    c.send(b"".join(publish_packet("over/t", b"x", qos=2, packet_id=i, version=5) for i in (1, 2, 3)))
    got = c.read_until_closed(timeout=10)
    assert [p[0] >> 4 for p in got] == [PUBREC, PUBREC, DISCONNECT], got
    assert got[-1][1][:1] == b"\x93", got
    state = server.wait_disconnected(cid)
    assert state.last_disconnect_reason_code == 0x93


def test_a_v311_client_is_not_held_to_the_receive_maximum(make_server, raw):
    """MQTT 3.1.1 has no Receive Maximum to tell: a v3 client is bounded by its
    packet ids only."""
    server = make_server("--mqtt-receive-maximum", "2")
    c = raw(server)
    assert c.connect(unique("v3over"), version=4)[1] == 0
    c.send(b"".join(publish_packet("over/t", b"x", qos=2, packet_id=i) for i in (1, 2, 3)))
    assert [c.read_packet()[0] >> 4 for _ in range(3)] == [PUBREC] * 3


@pytest.mark.connstate
def test_a_session_resumed_with_a_lower_receive_maximum_gets_no_more(broker, raw, peers):
    """Messages left unacknowledged by one connection are sent again to the
    next one only as far as its own Receive Maximum allows (MQTT-3.3.4-7);
    each acknowledgement lets the next one go. (Mosquitto 2 sends them all
    again at once.)"""
    topic = f"resume/{unique()}"
    cid = unique("resume")
    c = raw(broker)
    assert c.connect(cid, version=5, clean=False, properties=SESSION_300 + RECEIVE_MAXIMUM + struct.pack("!H", 10))[1] == 0
    c.send(subscribe_packet([(topic, 1)], version=5))
    assert c.read_packet()[0] >> 4 == SUBACK
    pub = peers(broker, unique("pub"), version=V5)
    for i in range(5):
        pub.publish(topic, f"m{i}".encode(), qos=1)
    first_ids = [parse_publish(*c.read_packet(), 5)[1] for _ in range(5)]
    c.close()  # none acknowledged

    c2 = raw(broker)
    connack = c2.connect(cid, version=5, clean=False, properties=SESSION_300 + RECEIVE_MAXIMUM + struct.pack("!H", 2))
    assert connack[:2] == b"\x01\x00", connack.hex()
    got = []
    for _ in range(2):
        first, body = c2.read_packet()
        assert first >> 4 == PUBLISH and first & 0x08, hex(first)
        got.append(parse_publish(first, body, 5))
    with pytest.raises(TimeoutError):
        c2.read_packet(timeout=0.5)  # the window of 2 is full
    for _ in range(3):
        c2.send(ack(PUBACK, got[-2][1]))
        first, body = c2.read_packet()
        assert first >> 4 == PUBLISH
        got.append(parse_publish(first, body, 5))
        with pytest.raises(TimeoutError):
            c2.read_packet(timeout=0.3)
    assert [g[2] for g in got] == [f"m{i}".encode() for i in range(5)]
    assert [g[1] for g in got] == first_ids
