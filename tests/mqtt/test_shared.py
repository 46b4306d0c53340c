"""Shared subscriptions `$share/{group}/{filter}` (MQTT 5 §4.8.2), from
MQTT 5 and MQTT 3.1.1 clients as Mosquitto 2, EMQX and HiveMQ take them:
one delivery per group, round robin over its members, QoS per member, no
retained messages at subscribe, membership through sessions."""

from __future__ import annotations

import struct

import pytest
from paho.mqtt.subscribeoptions import SubscribeOptions

from conftest import (
    DISCONNECT,
    PUBACK,
    PUBLISH,
    SESSION_300,
    SUBACK,
    V5,
    V311,
    session_300,
    subscribe_packet,
    unique,
)
from test_auth import app_key, application, auth_server, device  # noqa: F401  (fixtures)
from test_delivery import ack, parse_publish

VERSIONS = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


def payloads(messages) -> list[int]:
    return sorted(int(m.payload) for m in messages)


def test_the_connack_says_shared_subscriptions_are_available(broker, peers):
    p = peers(broker, unique("c"), version=V5)
    assert getattr(p.connack[2], "SharedSubscriptionAvailable", 1) == 1


@VERSIONS
def test_one_delivery_per_group_round_robin(broker, peers, version):
    """Each message goes to one member of each group, in turn; a plain
    subscriber and another group get every message."""
    topic = f"shared/{unique()}"
    group = f"$share/g{unique()}/shared/+"
    members = [peers(broker, unique(f"m{i}"), version=version) for i in range(3)]
    for m in members:
        m.subscribe_ok(group, 1)
    other = peers(broker, unique("other"), version=version)
    other.subscribe_ok(f"$share/other/{topic}", 1)
    plain = peers(broker, unique("plain"), version=version)
    plain.subscribe_ok(topic, 1)
    pub = peers(broker, unique("pub"), version=version)
    for i in range(9):
        pub.publish(topic, str(i).encode(), qos=1)
    assert [int(plain.expect(topic=topic).payload) for _ in range(9)] == list(range(9))
    assert [int(other.expect(topic=topic).payload) for _ in range(9)] == list(range(9))
    got = [m.quiet(0.3) for m in members]
    assert payloads(sum(got, [])) == list(range(9))
    assert all(msg.topic == topic for msg in sum(got, []))
    assert [len(g) for g in got] == [3, 3, 3], [payloads(g) for g in got]


@VERSIONS
def test_qos_is_downgraded_per_member(broker, peers, version):
    topic = f"sharedqos/{unique()}"
    group = f"$share/g/{topic}"
    low = peers(broker, unique("low"), version=version)
    low.subscribe_ok(group, 0)
    high = peers(broker, unique("high"), version=version)
    high.subscribe_ok(group, 2)
    pub = peers(broker, unique("pub"), version=version)
    for i in range(4):
        pub.publish(topic, str(i).encode(), qos=2)
    lows, highs = low.quiet(0.5), high.quiet(0.2)
    assert payloads(lows + highs) == list(range(4))
    assert lows and highs
    assert {m.qos for m in lows} == {0}
    assert {m.qos for m in highs} == {2}


@pytest.mark.connstate
@VERSIONS
def test_no_retained_messages_at_a_shared_subscribe(broker, peers, version):
    """MQTT 5 §4.8.2: no retained messages at a shared subscribe. (Mosquitto
    2 sends them.)"""
    topic = f"sharedret/{unique()}"
    pub = peers(broker, unique("pub"), version=version)
    pub.publish(topic, b"kept", qos=1, retain=True)
    sub = peers(broker, unique("sub"), version=version)
    sub.subscribe_ok(f"$share/g/{topic}", 1)
    assert sub.quiet(0.5) == []
    pub.publish(topic, b"new", qos=1)
    msg = sub.expect(topic=topic)
    assert (msg.payload, msg.retain) == (b"new", False)
    pub.publish(topic, b"", qos=1, retain=True)


@pytest.mark.connstate
@pytest.mark.parametrize(
    "bad", ["$share//t", "$share/g", "$share/g/", "$share/+/t"]
)
@VERSIONS
def test_malformed_shared_filters_are_refused(broker, peers, version, bad):
    """No group, a wildcard in it, or no valid filter after it: SUBACK 0x8F
    (v5) or 0x80 (v3.1.1). (Mosquitto 2 grants these.)"""
    sub = peers(broker, unique("bad"), version=version)
    assert sub.subscribe(bad, 1) == [0x8F if version == V5 else 0x80]
    assert sub.connected.is_set()


@pytest.mark.connstate
def test_no_local_on_a_shared_subscription_is_a_protocol_error(broker, peers):
    """MQTT-3.8.3-4: DISCONNECT 0x82. (Mosquitto 2 grants it.)"""
    sub = peers(broker, unique("nolocal"), version=V5)
    sub.client.subscribe(f"$share/g/{unique()}", options=SubscribeOptions(qos=1, noLocal=True))
    from_server, reason, _ = sub.wait_disconnected()
    assert (from_server, reason) == (True, 0x82)


@VERSIONS
def test_unsubscribing_leaves_the_group(broker, peers, version):
    topic = f"sharedunsub/{unique()}"
    group = f"$share/g/{topic}"
    stays = peers(broker, unique("stays"), version=version)
    leaves = peers(broker, unique("leaves"), version=version)
    stays.subscribe_ok(group, 1)
    leaves.subscribe_ok(group, 1)
    assert leaves.unsubscribe(group) == ([0x00] if version == V5 else [])
    if version == V5:
        assert leaves.unsubscribe(group) == [0x11]
    pub = peers(broker, unique("pub"), version=version)
    for i in range(4):
        pub.publish(topic, str(i).encode(), qos=1)
    assert [int(stays.expect(topic=topic).payload) for _ in range(4)] == list(range(4))
    assert leaves.quiet(0.3) == []


@VERSIONS
def test_a_persistent_session_keeps_its_shared_subscription(broker, peers, version):
    """Messages for an offline persistent member are kept for it; a clean
    start leaves the group."""
    topic = f"sharedsess/{unique()}"
    group = f"$share/g/{topic}"
    cid = unique("persist")
    member = peers(broker, cid, version=version, clean=False, properties=session_300(version))
    member.subscribe_ok(group, 1)
    member.disconnect()
    pub = peers(broker, unique("pub"), version=version)
    for i in range(3):
        pub.publish(topic, str(i).encode(), qos=1)
    back = peers(broker, cid, version=version, clean=False, properties=session_300(version))
    assert back.connack[0] is True
    assert [int(back.expect(topic=topic).payload) for _ in range(3)] == list(range(3))
    back.disconnect()

    fresh = peers(broker, cid, version=version, clean=True)
    assert fresh.connack[0] is False
    other = peers(broker, unique("other"), version=version)
    other.subscribe_ok(group, 1)
    for i in range(3):
        pub.publish(topic, str(i).encode(), qos=1)
    assert [int(other.expect(topic=topic).payload) for _ in range(3)] == list(range(3))
    assert fresh.quiet(0.3) == []


@pytest.mark.connstate
def test_a_member_with_a_full_window_is_skipped(broker, raw, peers):
    """A member that has as many messages unacknowledged as its Receive
    Maximum gets no more while another member has room. (Mosquitto 2 keeps
    its round robin and queues for the full member.)"""
    topic = f"sharedbusy/{unique()}"
    group = f"$share/g/{topic}"
    slow = raw(broker)
    assert slow.connect(unique("slow"), version=5, properties=b"\x21\x00\x01")[1] == 0  # Receive Maximum 1
    slow.send(subscribe_packet([(group, 1)], version=5))
    assert slow.read_packet()[0] >> 4 == SUBACK
    fast = peers(broker, unique("fast"), version=V5)
    fast.subscribe_ok(group, 1)
    pub = peers(broker, unique("pub"), version=V5)
    # Round robin from either member: within two messages the slow one has
    # one in flight, its window full.
    pub.publish(topic, b"0", qos=1)
    pub.publish(topic, b"1", qos=1)
    first, body = slow.read_packet()
    _, packet_id, payload = parse_publish(first, body, 5)
    for i in range(2, 8):
        pub.publish(topic, str(i).encode(), qos=1)
    got = fast.quiet(0.5)
    assert payloads(got) == sorted({0, 1, *range(2, 8)} - {int(payload)})
    with pytest.raises(TimeoutError):
        slow.read_packet(timeout=0.2)
    slow.send(ack(PUBACK, packet_id))
    for i in range(8, 12):
        pub.publish(topic, str(i).encode(), qos=1)
    first, body = slow.read_packet()
    assert first >> 4 == PUBLISH  # room again: its turn comes back


@pytest.mark.connstate
@VERSIONS
def test_shared_filters_follow_the_platform_topic_rules(auth_server, peers, app_key, version):  # noqa: F811
    """In auth mode the filter inside `$share` is what the client may
    subscribe to, mapped as any filter of the client."""
    dev, device_id = device(auth_server, peers, version=version)
    dev.subscribe_ok("$share/cmds/iot-2/cmd/+/fmt/+", 1)
    assert dev.subscribe("$share/g/#", 1)[0] >= 0x80
    assert dev.subscribe("$share/g/iot-2/type/+/id/+/mon", 0)[0] >= 0x80
    app = application(auth_server, peers, app_key, version=version)
    app.subscribe_ok(f"$share/evts/iot-2/type/sensor/id/{device_id}/evt/+/fmt/+", 1)
    assert app.subscribe("$share/g/#", 1)[0] >= 0x80
    dev.publish("iot-2/evt/temp/fmt/txt", b"21", qos=1)
    msg = app.expect()
    assert (msg.topic, msg.payload) == (f"iot-2/type/sensor/id/{device_id}/evt/temp/fmt/txt", b"21")
    app.publish(f"iot-2/type/sensor/id/{device_id}/cmd/reboot/fmt/txt", b"now", qos=1)
    msg = dev.expect()
    assert (msg.topic, msg.payload) == ("iot-2/cmd/reboot/fmt/txt", b"now")
