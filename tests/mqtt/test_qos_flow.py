"""QoS flow between broker and client: acknowledgements the broker does not
expect, packets it cannot send, keepalive limits and flow control."""

from __future__ import annotations

import struct
import time

import pytest

from conftest import DISCONNECT, V5, V311, connect_packet, subscribe_packet, unique
from test_delivery import PUBREC, PUBREL, ack


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
