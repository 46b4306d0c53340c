"""Monitor topics in open mode (DESIGN.md §4 "MQTT monitor topics"):
`$SYS/clients/{clientId}/mon` for every client, plus
`iot-2/type/{t}/id/{d}/mon` for devices and `iot-2/app/{a}/mon` for
applications; JSON Connect / Disconnect messages."""

from __future__ import annotations

import json

import pytest

from conftest import (
    CONNACK,
    PUBLISH,
    SUBACK,
    V5,
    V311,
    connect_packet,
    disconnect_packet,
    publish_packet,
    subscribe_packet,
    unique,
)

pytestmark = pytest.mark.connstate


def decode(msg):
    return json.loads(msg.payload)


def decode_bytes(payload: bytes):
    return json.loads(payload)


@pytest.mark.parametrize("ending,close_code", [("disconnect", 0), ("drop", 91)])
def test_sys_monitor_topic_of_a_plain_client(server, peers, raw, ending, close_code):
    """Connect, then Disconnect with the connection's traffic: ReadMsg and
    WriteMsg count messages (PUBLISH packets), ReadBytes and WriteBytes
    every byte."""
    cid = unique("plain")
    topic = f"$SYS/clients/{cid}/mon"
    watcher = peers(server, unique("watch"), version=V311)
    watcher.subscribe_ok(topic, 0)

    c = raw(server)
    sent = [
        connect_packet(cid, keepalive=30),
        subscribe_packet([(f"mon/{cid}", 0)]),
        publish_packet(f"mon/{cid}", b"12345"),  # comes back to it
        publish_packet("mon/elsewhere", b"678"),
    ]
    for p in sent:
        c.send(p)
    received = [c.read_packet() for _ in range(3)]
    assert [p[0] >> 4 for p in received] == [CONNACK, SUBACK, PUBLISH]
    connect = watcher.expect(topic=topic)
    body = decode(connect)
    assert body["Action"] == "Connect"
    assert body["ClientID"] == cid
    assert body["ClientAddr"] == "127.0.0.1"
    assert body["Protocol"] == "mqtt4"
    assert body["Secure"] is False
    assert isinstance(body["Port"], int)
    assert "Time" in body and "ConnectTime" in body
    assert "User" not in body  # no user name given

    if ending == "disconnect":
        c.send(disconnect_packet())
        sent.append(disconnect_packet())
        assert c.read_until_closed() == []
    else:
        c.close()
    msg = watcher.expect(topic=topic)
    body = decode(msg)
    assert body["Action"] == "Disconnect"
    assert body["ClientID"] == cid
    assert body["CloseCode"] == close_code
    assert isinstance(body["Reason"], str) and body["Reason"]
    assert (body["ReadMsg"], body["WriteMsg"]) == (2, 1), body
    assert sum(len(p) for p in sent[:4]) <= body["ReadBytes"] <= sum(len(p) for p in sent), body
    written = sum(2 + len(p[1]) for p in received)  # all three are shorter than 128 bytes
    assert body["WriteBytes"] == written, body


def test_device_messages_also_on_its_iot2_topic(server, peers):
    device = unique("dev")
    cid = f"d:local:sensor:{device}"
    sys_topic, dev_topic = f"$SYS/clients/{cid}/mon", f"iot-2/type/sensor/id/{device}/mon"
    watcher = peers(server, f"a:local:{unique('watch')}", version=V5)
    watcher.subscribe_ok(sys_topic, 0)
    watcher.subscribe_ok(dev_topic, 0)

    dev = peers(server, cid, version=V5)
    got = [watcher.expect(), watcher.expect()]
    assert sorted(m.topic for m in got) == sorted([sys_topic, dev_topic])
    for m in got:
        body = decode(m)
        assert (body["Action"], body["ClientID"], body["Protocol"]) == ("Connect", cid, "mqtt5")
    dev.disconnect()
    got = [watcher.expect(), watcher.expect()]
    assert sorted(m.topic for m in got) == sorted([sys_topic, dev_topic])
    assert [decode(m)["Action"] for m in got] == ["Disconnect", "Disconnect"]
    assert [decode(m)["CloseCode"] for m in got] == [0, 0]


def test_application_sees_retained_device_connect(server, peers):
    device = unique("dev")
    cid = f"d:local:sensor:{device}"
    topic = f"iot-2/type/sensor/id/{device}/mon"
    peers(server, cid, version=V311)
    server.wait_connected(cid)

    app = peers(server, f"a:local:{unique('app')}", version=V5)
    app.subscribe_ok("iot-2/type/+/id/+/mon", 0)
    msg = app.expect(topic=topic)
    assert msg.retain is True
    body = decode(msg)
    assert (body["Action"], body["ClientID"], body["Protocol"]) == ("Connect", cid, "mqtt4")


def test_retained_device_disconnect(server, peers):
    device = unique("dev")
    cid = f"d:local:sensor:{device}"
    topic = f"iot-2/type/sensor/id/{device}/mon"
    dev = peers(server, cid, version=V311)
    server.wait_connected(cid)
    dev.disconnect()
    server.wait_disconnected(cid)

    app = peers(server, f"a:local:{unique('app')}", version=V5)
    app.subscribe_ok(topic, 0)
    msg = app.expect(topic=topic)
    assert msg.retain is True
    assert decode(msg)["Action"] == "Disconnect"


def test_application_connect_is_retained_and_cleared_at_disconnect(server, peers):
    app_id = unique("app")
    cid = f"a:local:{app_id}"
    topic = f"iot-2/app/{app_id}/mon"
    app = peers(server, cid, version=V5)
    server.wait_connected(cid)

    watcher = peers(server, f"a:local:{unique('watch')}", version=V5)
    watcher.subscribe_ok(topic, 0)
    msg = watcher.expect(topic=topic)
    assert msg.retain is True and decode(msg)["Action"] == "Connect"

    app.disconnect()
    msg = watcher.expect(topic=topic)
    assert decode(msg)["Action"] == "Disconnect"
    assert msg.retain is False
    server.wait_disconnected(cid)

    late = peers(server, f"a:local:{unique('late')}", version=V5)
    late.subscribe_ok(topic, 0)
    assert [decode(m)["Action"] for m in late.quiet(0.5)] == []


def test_sys_monitor_connect_is_retained_only_while_connected(server, peers):
    """Plain clients often take a new random id per connection: their
    `$SYS/clients/{id}/mon` Connect is retained while they are connected
    and cleared when they go, so retained messages do not pile up."""
    cid = unique("plain")
    topic = f"$SYS/clients/{cid}/mon"
    client = peers(server, cid, version=V311)
    server.wait_connected(cid)

    early = peers(server, unique("early"), version=V5)
    early.subscribe_ok(topic, 0)
    msg = early.expect(topic=topic)
    assert msg.retain is True and decode(msg)["Action"] == "Connect"

    client.disconnect()
    server.wait_disconnected(cid)
    late = peers(server, unique("late"), version=V5)
    late.subscribe_ok(topic, 0)
    assert [decode(m)["Action"] for m in late.quiet(0.5)] == []


def test_sys_monitor_retained_connect_is_the_one_published(server, peers):
    """A late subscriber's retained `$SYS/clients/{id}/mon` Connect, through
    the client's own topic or a wildcard, is exactly the message published
    when the client connected, once; after a takeover it is the new
    connection's."""
    cid = unique("plain")
    topic = f"$SYS/clients/{cid}/mon"
    early = peers(server, unique("early"), version=V5)
    early.subscribe_ok(topic, 0)

    def retained_now(filter_: str) -> list[bytes]:
        late = peers(server, unique("late"), version=V5)
        late.subscribe_ok(filter_, 0)
        marker = f"marker/{unique()}"
        late.subscribe_ok(marker, 0)
        late.publish(marker, b"m", qos=1)
        got = [m for m in late.until(marker, timeout=10) if m.topic == topic]
        assert all(m.retain for m in got)
        late.disconnect()
        return [m.payload for m in got]

    peers(server, cid, version=V5)
    published = early.expect(topic=topic).payload
    assert decode_bytes(published)["Action"] == "Connect"
    for filter_ in (topic, "$SYS/clients/+/mon", "$SYS/#"):
        assert retained_now(filter_) == [published], filter_

    peers(server, cid, version=V311)  # takes the session over
    assert decode(early.expect(topic=topic))["Action"] == "Disconnect"
    again = early.expect(topic=topic).payload
    assert (decode_bytes(again)["Action"], decode_bytes(again)["Protocol"]) == ("Connect", "mqtt4")
    assert retained_now("$SYS/clients/+/mon") == [again]


@pytest.mark.parametrize("topic", ["iot-2/type/sensor/id/{id}/mon", "iot-2/app/{id}/mon"])
def test_clients_cannot_forge_monitor_messages(server, peers, topic):
    """Monitor topics are the broker's own, in open mode too: a client's
    publish there reaches no one and leaves no retained message."""
    topic = topic.format(id=unique("victim"))
    watcher = peers(server, f"a:local:{unique('watch')}", version=V5)
    watcher.subscribe_ok(topic, 0)
    forger = peers(server, unique("forger"), version=V5)
    forger.client.publish(topic, b'{"Action":"Connect","forged":true}', qos=1, retain=True).wait_for_publish(5)
    marker = f"marker/{unique()}"
    watcher.subscribe_ok(marker, 0)
    forger.publish(marker, b"m", qos=1)
    assert [m.topic for m in watcher.until(marker, timeout=10) if b"forged" in m.payload] == []
    late = peers(server, f"a:local:{unique('late')}", version=V5)
    late.subscribe_ok(topic, 0)
    assert late.quiet(0.5) == []


def test_takeover_disconnect_is_not_retained(server, peers):
    device = unique("dev")
    cid = f"d:local:sensor:{device}"
    topic = f"iot-2/type/sensor/id/{device}/mon"
    watcher = peers(server, f"a:local:{unique('watch')}", version=V5)
    watcher.subscribe_ok(topic, 0)
    first = peers(server, cid, version=V5)
    assert decode(watcher.expect(topic=topic))["Action"] == "Connect"
    peers(server, cid, version=V5)
    first.wait_disconnected()
    actions = [decode(watcher.expect(topic=topic)) for _ in range(2)]
    assert sorted(a["Action"] for a in actions) == ["Connect", "Disconnect"]
    assert next(a for a in actions if a["Action"] == "Disconnect")["CloseCode"] == 288

    late = peers(server, f"a:local:{unique('late')}", version=V5)
    late.subscribe_ok(topic, 0)
    msg = late.expect(topic=topic)
    assert msg.retain is True and decode(msg)["Action"] == "Connect"


def test_shared_application_instances_share_messages(server, peers):
    """`A:{org}:{appId}:{instance}` instances of one application share their
    subscriptions: each message goes to one connected instance (round robin);
    a plain application gets every message."""
    app_id = unique("shared")
    topic = f"iot-2/type/sensor/id/{unique('d')}/evt/temp/fmt/json"
    one = peers(server, f"A:local:{app_id}:i1", version=V5)
    two = peers(server, f"A:local:{app_id}:i2", version=V311)
    plain = peers(server, f"a:local:{unique('plain')}", version=V5)
    for p in (one, two, plain):
        p.subscribe_ok(topic, 1)
    pub = peers(server, unique("pub"), version=V5)
    for i in range(10):
        pub.publish(topic, str(i).encode(), qos=1)
    assert [int(plain.expect(topic=topic).payload) for _ in range(10)] == list(range(10))
    a, b = one.quiet(0.4), two.quiet(0.1)
    assert sorted(int(m.payload) for m in a + b) == list(range(10))
    assert a and b, f"one instance got everything: {len(a)} / {len(b)}"
