"""Persistent sessions: QoS 1 and 2 messages queued while the client is
offline arrive when it comes back (MQTT 3.1.1 §3.1.2.4, §4.3; MQTT 5 §3.1.2.4-5)."""

from __future__ import annotations

import pytest

from conftest import V5, V311, session_300, unique


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_queued_qos1_and_qos2_messages_arrive_after_reconnect(broker, peers, version):
    base = f"session/{unique()}"
    q1, q2 = f"{base}/q1", f"{base}/q2"
    session = session_300(version)
    cid = unique("persistent")

    sub = peers(broker, cid, version=version, clean=False, properties=session)
    assert sub.connack[0] is False, "session present on a fresh client id"
    sub.subscribe_ok(q1, 1)
    sub.subscribe_ok(q2, 2)
    sub.disconnect()

    pub = peers(broker, unique("pub"), version=version)
    for i in range(3):
        pub.publish(q1, f"one-{i}".encode(), qos=1)
        pub.publish(q2, f"two-{i}".encode(), qos=2)
    pub.publish(f"{base}/q0", b"not subscribed", qos=1)

    sub = peers(broker, cid, version=version, clean=False, properties=session)
    assert sub.connack[0] is True, "session not present after reconnect"
    pub.publish(q2, b"end", qos=2)
    got = sub.until(q2, b"end", timeout=10)
    while sum(m.topic == q1 for m in got) < 3:
        got.append(sub.expect(timeout=5))
    got += sub.quiet(0.3)

    ones = [(m.payload, m.qos) for m in got if m.topic == q1]
    twos = [(m.payload, m.qos) for m in got if m.topic == q2]
    # QoS 2: exactly once, in order; QoS 1: at least once, in order of first arrival.
    assert twos == [(b"two-0", 2), (b"two-1", 2), (b"two-2", 2), (b"end", 2)]
    assert list(dict.fromkeys(ones)) == [(b"one-0", 1), (b"one-1", 1), (b"one-2", 1)]
    assert {m.topic for m in got} == {q1, q2}


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_clean_session_discards_the_old_session(broker, peers, version):
    topic = f"session/{unique()}"
    session = session_300(version)
    cid = unique("discard")
    sub = peers(broker, cid, version=version, clean=False, properties=session)
    sub.subscribe_ok(topic, 1)
    sub.disconnect()
    pub = peers(broker, unique("pub"), version=version)
    pub.publish(topic, b"queued", qos=1)

    sub = peers(broker, cid, version=version, clean=True, properties=session)
    assert sub.connack[0] is False
    # Neither the queued message nor the subscription survived.
    pub.publish(topic, b"after", qos=1)
    marker = f"{topic}/marker"
    sub.subscribe_ok(marker, 1)
    pub.publish(marker, b"m", qos=1)
    assert [m.topic for m in sub.until(marker)] == [marker]
