"""Retained messages and wills (MQTT 3.1.1 §3.3.1.3, §3.1.2.5; MQTT 5 §3.1.3.2)."""

from __future__ import annotations

import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from conftest import V5, V311, props, unique

VERSIONS = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


@VERSIONS
def test_retained_message_reaches_later_subscribers_until_cleared(broker, peers, version):
    topic = f"retained/{unique()}"
    pub = peers(broker, unique("pub"), version=version)
    pub.publish(topic, b"one", qos=1, retain=True)
    pub.publish(topic, b"two", qos=1, retain=True)  # replaces "one"

    sub = peers(broker, unique("sub"), version=version)
    sub.subscribe_ok(topic, 1)
    msg = sub.expect(topic=topic)
    assert (msg.payload, msg.retain, msg.qos) == (b"two", True, 1)

    # A retained publish to an established subscription arrives as a normal
    # message (RETAIN 0); an empty retained payload is delivered too, and
    # clears the topic.
    pub.publish(topic, b"three", qos=1, retain=True)
    msg = sub.expect(topic=topic)
    assert (msg.payload, msg.retain) == (b"three", False)
    pub.publish(topic, b"", qos=1, retain=True)
    msg = sub.expect(topic=topic)
    assert (msg.payload, msg.retain) == (b"", False)

    # A new subscriber gets nothing retained: the first thing it sees on the
    # topic is the marker published after its SUBACK.
    late = peers(broker, unique("late"), version=version)
    late.subscribe_ok(topic, 1)
    pub.publish(topic, b"marker", qos=1)
    got = late.until(topic, b"marker")
    assert [(m.payload, m.retain) for m in got] == [(b"marker", False)]


@VERSIONS
def test_retained_messages_match_wildcard_subscriptions(broker, peers, version):
    base = f"retained/{unique()}"
    pub = peers(broker, unique("pub"), version=version)
    pub.publish(f"{base}/a/temp", b"1", qos=1, retain=True)
    pub.publish(f"{base}/b/temp", b"2", qos=1, retain=True)
    pub.publish(f"{base}/b/hum", b"3", qos=1, retain=True)
    sub = peers(broker, unique("sub"), version=version)
    sub.subscribe_ok(f"{base}/+/temp", 0)
    got = {sub.expect().topic, sub.expect().topic}
    assert got == {f"{base}/a/temp", f"{base}/b/temp"}
    assert sub.quiet(0.3) == []
    for t in (f"{base}/a/temp", f"{base}/b/temp", f"{base}/b/hum"):
        pub.publish(t, b"", qos=1, retain=True)


def will(topic: str, payload: bytes = b"gone", qos: int = 1, **kw):
    return {"topic": topic, "payload": payload, "qos": qos, **kw}


@VERSIONS
def test_will_is_published_when_the_connection_drops(broker, peers, version):
    topic = f"will/{unique()}"
    watcher = peers(broker, unique("watch"), version=version)
    watcher.subscribe_ok(topic, 1)
    dying = peers(broker, unique("dying"), version=version, will=will(topic, b"lost"))
    dying.close()  # socket closed, no DISCONNECT
    msg = watcher.expect(topic=topic, timeout=5)
    assert msg.payload == b"lost" and msg.qos == 1


@VERSIONS
def test_no_will_after_a_normal_disconnect(broker, peers, version):
    topic = f"will/{unique()}"
    watcher = peers(broker, unique("watch"), version=version)
    watcher.subscribe_ok(topic, 1)
    leaving = peers(broker, unique("leaving"), version=version, will=will(topic, b"lost"))
    leaving.disconnect()
    time.sleep(0.2)  # let the broker read the DISCONNECT before the marker
    watcher.publish(topic, b"marker", qos=1)
    got = watcher.until(topic, b"marker")
    got += watcher.quiet(0.3)
    assert [m.payload for m in got] == [b"marker"]


def test_v5_disconnect_with_will_message_publishes_the_will(broker, peers):
    topic = f"will/{unique()}"
    watcher = peers(broker, unique("watch"), version=V5)
    watcher.subscribe_ok(topic, 1)
    leaving = peers(broker, unique("leaving"), version=V5, will=will(topic, b"asked"))
    leaving.disconnect(reason=0x04)  # Disconnect with Will Message
    msg = watcher.expect(topic=topic, timeout=5)
    assert msg.payload == b"asked"


def test_v5_will_delay_interval(broker, peers):
    """The will waits for its delay; reconnecting within it cancels it."""
    delay = 2
    topic = f"will/{unique()}"
    watcher = peers(broker, unique("watch"), version=V5)
    watcher.subscribe_ok(topic, 1)
    session = props(PacketTypes.CONNECT, SessionExpiryInterval=60)
    will_props = props(PacketTypes.WILLMESSAGE, WillDelayInterval=delay)

    # Dropped and not back: the will comes after the delay, not before.
    first = peers(broker, unique("delayed"), version=V5, clean=True, properties=session,
                  will=will(topic, b"late", properties=will_props))
    dropped_at = time.monotonic()
    first.close()
    msg = watcher.expect(topic=topic, timeout=delay + 5)
    waited = time.monotonic() - dropped_at
    assert msg.payload == b"late"
    assert waited >= delay - 0.3, f"will published {waited:.2f} s after the drop, before its {delay} s delay"

    # Dropped and back within the delay (same session): no will at all.
    cid = unique("back")
    second = peers(broker, cid, version=V5, clean=True, properties=session,
                   will=will(topic, b"never", properties=will_props))
    second.close()
    time.sleep(0.3)
    again = peers(broker, cid, version=V5, clean=False, properties=session)
    assert again.connack[0] is True, "session not kept across the reconnect"
    got = watcher.quiet(delay + 1.0)
    assert [m.payload for m in got] == []
