"""QoS flow between broker and client: acknowledgements the broker does not
expect, packets it cannot send, keepalive limits and flow control."""

from __future__ import annotations

import struct

import pytest

from conftest import connect_packet, subscribe_packet, unique
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
