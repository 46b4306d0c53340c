"""Topic matching, subscription options and properties (MQTT 3.1.1 §4.7,
MQTT 5 §3.3.2.3, §3.8.3.1, §4.7, §4.8), and SUBACK failures."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions

from conftest import DISCONNECT, PUBLISH, SUBACK, V5, V311, props, publish_packet, subscribe_packet, unique

VERSIONS = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


@VERSIONS
def test_single_and_multi_level_wildcards(broker, peers, version):
    base = f"wild/{unique()}"
    plus = peers(broker, unique("plus"), version=version)
    plus.subscribe_ok(f"{base}/+/temp", 0)
    hash_ = peers(broker, unique("hash"), version=version)
    hash_.subscribe_ok(f"{base}/#", 0)
    pub = peers(broker, unique("pub"), version=version)
    topics = [f"{base}/r1/temp", f"{base}/r1/hum", f"{base}/r1/deep/temp", base, f"{base}/", f"{base}//temp"]
    for t in topics:
        pub.publish(t, b"x", qos=1)
    marker = f"{base}/zz/temp"
    pub.publish(marker, b"end", qos=1)

    # "+" matches exactly one level (an empty one too); "#" also matches the parent.
    assert sorted(m.topic for m in plus.until(marker)) == sorted([f"{base}/r1/temp", f"{base}//temp", marker])
    assert sorted(m.topic for m in hash_.until(marker)) == sorted([*topics, marker])


@VERSIONS
def test_dollar_topics_are_not_matched_by_leading_wildcards(broker, peers, version):
    """`#` and `+/...` never match topics starting with `$` (MQTT-4.7.2-1);
    `$SYS/#` does. connstate publishes `$SYS/clients/{id}/mon` when a client
    connects (open mode); Mosquitto keeps retained `$SYS/broker/...` topics."""
    everything = peers(broker, unique("all"), version=version)
    everything.subscribe_ok("#", 0)
    plus = peers(broker, unique("plus"), version=version)
    plus.subscribe_ok("+/#", 0)
    plus.subscribe_ok("+/clients/+/mon", 0)
    sys = peers(broker, unique("sys"), version=version)
    sys.subscribe_ok("$SYS/#", 0)

    other = peers(broker, unique("other"), version=version)
    other.disconnect()
    sys_msg = sys.expect(timeout=10)
    assert sys_msg.topic.startswith("$SYS/")

    marker = f"marker/{unique()}"
    sys.publish(marker, b"end", qos=1)
    for peer in (everything, plus):
        got = peer.until(marker)
        assert [m.topic for m in got if m.topic.startswith("$")] == []


@VERSIONS
def test_unsubscribe_stops_delivery(broker, peers, version):
    topic = f"unsub/{unique()}"
    sub = peers(broker, unique("sub"), version=version)
    sub.subscribe_ok(topic, 1)
    sub.subscribe_ok(f"{topic}/marker", 1)
    pub = peers(broker, unique("pub"), version=version)
    pub.publish(topic, b"before", qos=1)
    assert sub.expect(topic=topic).payload == b"before"
    codes = sub.unsubscribe(topic)
    if version == V5:
        assert codes == [0]
    pub.publish(topic, b"after", qos=1)
    pub.publish(f"{topic}/marker", b"m", qos=1)
    assert [m.payload for m in sub.until(f"{topic}/marker")] == [b"m"]


@VERSIONS
def test_delivered_qos_is_the_minimum_of_publish_and_subscription(broker, peers, version):
    topic = f"qos/{unique()}"
    sub = peers(broker, unique("sub"), version=version)
    sub.subscribe_ok(topic, 1)
    pub = peers(broker, unique("pub"), version=version)
    for qos in (0, 1, 2):
        pub.publish(topic, str(qos).encode(), qos=qos)
    got = [sub.expect(topic=topic) for _ in range(3)]
    assert [(m.payload, m.qos) for m in got] == [(b"0", 0), (b"1", 1), (b"2", 1)]


@pytest.mark.connstate
def test_v5_overlapping_subscriptions_deliver_one_copy_with_every_identifier(broker, peers):
    """MQTT 5 §3.3.4 allows one copy per matching subscription (Mosquitto)
    or one copy for all of them; connstate sends one copy to a v5 client,
    at the highest QoS granted by the subscriptions that matched, carrying
    the identifier of each of them (a subscription without one adds none).
    Subscriptions that do not match add nothing."""
    base = f"overlap/{unique()}"
    sub = peers(broker, unique("sub"), version=V5)
    sub.subscribe_ok(f"{base}/#", 0, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=1))
    sub.subscribe_ok(f"{base}/+", 1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=2))
    sub.subscribe_ok(f"{base}/x", 0, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=3))
    sub.subscribe_ok(f"{base}/+/y", 1)
    pub = peers(broker, unique("pub"), version=V5)
    pub.publish(f"{base}/x", b"three", qos=2)
    pub.publish(f"{base}/x/y", b"two", qos=1)
    pub.publish(f"{base}/z/z", b"one", qos=1)
    got = sub.until(f"{base}/z/z") + sub.quiet(0.3)
    copies = [
        (m.payload, m.qos, tuple(sorted(getattr(m.properties, "SubscriptionIdentifier", []))))
        for m in got
    ]
    assert copies == [(b"three", 1, (1, 2, 3)), (b"two", 1, (1,)), (b"one", 0, (1,))]


def test_v5_overlapping_subscriptions_deliver_every_identifier(broker, peers):
    """Whether one copy (connstate) or one per subscription (Mosquitto),
    every matching subscription's identifier reaches the client, and the
    highest QoS among them is used by at least one copy."""
    base = f"overlap/{unique()}"
    sub = peers(broker, unique("sub"), version=V5)
    sub.subscribe_ok(f"{base}/#", 0, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=1))
    sub.subscribe_ok(f"{base}/+", 1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=2))
    pub = peers(broker, unique("pub"), version=V5)
    pub.publish(f"{base}/x", b"both", qos=1)
    pub.publish(f"{base}/x/y", b"only-hash", qos=1)
    got = sub.until(f"{base}/x/y") + sub.quiet(0.3)
    both = [m for m in got if m.payload == b"both"]
    ids = sorted(i for m in both for i in m.properties.SubscriptionIdentifier)
    assert ids == [1, 2] and 1 in [m.qos for m in both]
    assert [(m.qos, m.properties.SubscriptionIdentifier) for m in got if m.payload == b"only-hash"] == [(0, [1])]


def test_v311_overlapping_subscriptions(broker, peers):
    """MQTT 3.1.1 §3.3.5: the server delivers the message at least once, at
    the maximum QoS of the matching subscriptions (one copy per subscription
    is also allowed, as Mosquitto does). Every copy must be at most the QoS
    of a subscription that matched, and at least one at QoS 1."""
    base = f"overlap/{unique()}"
    sub = peers(broker, unique("sub"), version=V311)
    sub.subscribe_ok(f"{base}/#", 0)
    sub.subscribe_ok(f"{base}/+", 1)
    pub = peers(broker, unique("pub"), version=V311)
    pub.publish(f"{base}/x", b"both", qos=1)
    pub.publish(f"{base}/x/y", b"only-hash", qos=1)
    got = sub.until(f"{base}/x/y") + sub.quiet(0.3)
    both = [m.qos for m in got if m.payload == b"both"]
    assert 1 in both and len(both) in (1, 2), both
    assert [m.qos for m in got if m.payload == b"only-hash"] == [0]


def test_v5_no_local(broker, peers):
    topic = f"nolocal/{unique()}"
    me = peers(broker, unique("me"), version=V5)
    me.subscribe_ok(topic, 1, options=SubscribeOptions(qos=1, noLocal=True))
    other = peers(broker, unique("other"), version=V5)
    other.subscribe_ok(topic, 1)
    me.publish(topic, b"mine", qos=1)
    assert other.expect(topic=topic).payload == b"mine"  # others still get it
    other.publish(topic, b"theirs", qos=1)
    assert [m.payload for m in me.until(topic, b"theirs")] == [b"theirs"]


def test_v5_retain_as_published(broker, peers):
    topic = f"rap/{unique()}"
    keep = peers(broker, unique("keep"), version=V5)
    keep.subscribe_ok(topic, 1, options=SubscribeOptions(qos=1, retainAsPublished=True))
    plain = peers(broker, unique("plain"), version=V5)
    plain.subscribe_ok(topic, 1)
    pub = peers(broker, unique("pub"), version=V5)
    pub.publish(topic, b"r", qos=1, retain=True)
    pub.publish(topic, b"n", qos=1, retain=False)
    assert [(m.payload, m.retain) for m in (keep.expect(), keep.expect())] == [(b"r", True), (b"n", False)]
    assert [(m.payload, m.retain) for m in (plain.expect(), plain.expect())] == [(b"r", False), (b"n", False)]
    pub.publish(topic, b"", qos=1, retain=True)


def test_v5_retain_handling(broker, peers):
    topic = f"rh/{unique()}"
    pub = peers(broker, unique("pub"), version=V5)
    pub.publish(topic, b"stored", qos=1, retain=True)
    sub = peers(broker, unique("sub"), version=V5)
    # 2: never send retained messages at subscribe time.
    sub.subscribe_ok(topic, 1, options=SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND))
    pub.publish(topic, b"live", qos=1)
    assert [m.payload for m in sub.until(topic, b"live")] == [b"live"]
    # 1: send them only if the subscription is new (it is not any more).
    sub.subscribe_ok(topic, 1, options=SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB))
    pub.publish(topic, b"live2", qos=1)
    assert [m.payload for m in sub.until(topic, b"live2")] == [b"live2"]
    # 0: always.
    sub.subscribe_ok(topic, 1, options=SubscribeOptions(qos=1))
    msg = sub.expect(topic=topic)
    assert (msg.payload, msg.retain) == (b"stored", True)
    pub.publish(topic, b"", qos=1, retain=True)


def test_v5_subscription_identifier_is_delivered(broker, peers):
    topic = f"subid/{unique()}"
    sub = peers(broker, unique("sub"), version=V5)
    sub.subscribe_ok(topic, 1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=4242))
    sub.subscribe_ok(f"{topic}/none", 1)
    pub = peers(broker, unique("pub"), version=V5)
    pub.publish(topic, b"a", qos=1)
    pub.publish(f"{topic}/none", b"b", qos=1)
    first, second = sub.expect(), sub.expect()
    assert first.properties.SubscriptionIdentifier == [4242]
    assert not hasattr(second.properties, "SubscriptionIdentifier")


def test_v5_publish_properties_pass_through(broker, peers):
    topic = f"props/{unique()}"
    sub = peers(broker, unique("sub"), version=V5)
    sub.subscribe_ok(topic, 1)
    pub = peers(broker, unique("pub"), version=V5)
    sent = props(
        PacketTypes.PUBLISH,
        UserProperty=[("k", "v1"), ("k", "v2"), ("other", "x")],
        ContentType="application/json",
        ResponseTopic=f"{topic}/reply",
        CorrelationData=b"\x00\x01corr",
        PayloadFormatIndicator=1,
    )
    pub.publish(topic, b'{"a":1}', qos=1, properties=sent)
    got = sub.expect(topic=topic).properties
    assert got.UserProperty == [("k", "v1"), ("k", "v2"), ("other", "x")]
    assert got.ContentType == "application/json"
    assert got.ResponseTopic == f"{topic}/reply"
    assert got.CorrelationData == b"\x00\x01corr"
    assert got.PayloadFormatIndicator == 1


def test_v5_topic_alias_from_the_client(broker, peers):
    topic = f"alias/{unique()}"
    sub = peers(broker, unique("sub"), version=V5)
    sub.subscribe_ok(topic, 1)
    pub = peers(broker, unique("pub"), version=V5)
    maximum = getattr(pub.connack[2], "TopicAliasMaximum", 0)
    assert maximum >= 1, "the broker accepts no topic aliases (CONNACK Topic Alias Maximum)"
    pub.publish(topic, b"set", qos=1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
    pub.publish("", b"used", qos=1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
    got = [sub.expect(), sub.expect()]
    assert [(m.topic, m.payload) for m in got] == [(topic, b"set"), (topic, b"used")]
    assert pub.connected.is_set()


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_invalid_filter_gets_a_failure_in_suback(broker, raw, version):
    """A SUBSCRIBE with invalid filters (`#` not last, `+` not a whole
    level) between valid ones: each invalid filter gets a failure code in the
    SUBACK, the valid one is granted, and the connection stays usable.
    (paho refuses to send such filters, so this client speaks raw bytes.)

    Mosquitto 2.0 treats the packet as malformed instead and closes the
    connection (v5: DISCONNECT 0x81), which MQTT 3.1.1 §4.8 and MQTT 5
    §4.13 also allow; with Mosquitto the test checks that."""
    base = f"bad/{unique()}"
    c = raw(broker)
    assert c.connect(unique("raw"), version=version)[1] == 0
    c.send(subscribe_packet([(f"{base}/#/b", 1), (f"{base}/ok", 1), (f"{base}/x+", 0)], packet_id=7, version=version))
    if broker.kind == "mosquitto":
        assert c.read_until_closed() == ([] if version == 4 else [(DISCONNECT << 4, b"\x81")])
        return
    p = c.read_packet()
    assert p is not None, "connection closed instead of SUBACK"
    first, body = p
    assert first >> 4 == SUBACK and body[:2] == b"\x00\x07"
    codes = list(body[2:]) if version == 4 else list(body[3 + body[2] :])
    if version == 4:
        assert codes == [0x80, 1, 0x80]
    else:
        assert codes[1] == 1 and codes[0] in (0x80, 0x8F) and codes[2] in (0x80, 0x8F), [hex(c) for c in codes]
    # The connection is still usable.
    c.send(publish_packet(f"{base}/ok", b"fine", qos=0, version=version))
    p = c.read_packet()
    assert p is not None and p[0] >> 4 == PUBLISH and p[1].endswith(b"fine")


@VERSIONS
def test_clients_cannot_publish_into_sys(broker, peers, version):
    """`$SYS/...` is the broker's own (MQTT 4.7.2: the server SHOULD keep
    clients from exchanging messages on `$` topics). With connstate a
    client could otherwise forge `$SYS/clients/{id}/mon` monitor messages.
    The publish may be acknowledged (v5: 0x87) but must reach no one."""
    victim = unique("victim")
    watcher = peers(broker, unique("watch"), version=version)
    watcher.subscribe_ok("$SYS/#", 0)
    forger = peers(broker, unique("forger"), version=version)
    info = forger.client.publish(f"$SYS/clients/{victim}/mon", b'{"Action":"Disconnect","forged":true}', qos=1)
    info.wait_for_publish(5)
    marker = f"marker/{unique()}"
    watcher.subscribe_ok(marker, 0)
    forger.publish(marker, b"m", qos=1)
    got = watcher.until(marker, timeout=10)
    assert [m.topic for m in got if b"forged" in m.payload] == []


@VERSIONS
def test_leading_slash_deep_and_long_topics(broker, peers, version):
    base = unique("shape")
    deep = "/".join([base] + [f"l{i}" for i in range(100)])
    long_level = f"{base}/" + "x" * 10_000
    sub = peers(broker, unique("sub"), version=version)
    sub.subscribe_ok(f"+/{base}", 0)  # "/base": an empty first level
    sub.subscribe_ok("/".join([base] + ["+"] * 100), 0)
    sub.subscribe_ok(f"{base}/+", 0)
    pub = peers(broker, unique("pub"), version=version)
    for t in (f"/{base}", deep, long_level):
        pub.publish(t, b"x", qos=1)
    got = [sub.expect(timeout=5).topic for _ in range(3)]
    assert sorted(got) == sorted([f"/{base}", deep, long_level])


def resolve_aliases(messages) -> list[tuple[str, int | None]]:
    """(topic, alias) of each message, resolving aliases as a client must:
    a topic with an alias sets it, an empty topic uses it."""
    table: dict[int, str] = {}
    out = []
    for m in messages:
        alias = getattr(m.properties, "TopicAlias", None)
        if m.topic:
            if alias is not None:
                table[alias] = m.topic
            out.append((m.topic, alias))
        else:
            assert alias in table, f"alias {alias} used before it was set"
            out.append((table[alias], alias))
    return out


@pytest.mark.connstate
def test_v5_topic_aliases_towards_the_client(broker, peers):
    """A client announcing a Topic Alias Maximum gets aliases for topics
    that repeat, never more than it allows: a topic is sent once with its
    alias, then as the alias alone; with every alias taken they are given
    again, and the client reads the right topic every time."""
    base = f"outalias/{unique()}"
    sub = peers(broker, unique("sub"), version=V5, properties=props(PacketTypes.CONNECT, TopicAliasMaximum=2))
    plain = peers(broker, unique("plain"), version=V5)
    for p in (sub, plain):
        p.subscribe_ok(f"{base}/#", 1)
    pub = peers(broker, unique("pub"), version=V5)
    sequence = ["a", "b", "a", "a", "c", "a", "b", "b", "end"]
    for i, leaf in enumerate(sequence):
        pub.publish(f"{base}/{leaf}", str(i).encode(), qos=i % 2)
    got = sub.until(f"{base}/end")
    resolved = resolve_aliases(got)
    assert [t for t, _ in resolved] == [f"{base}/{leaf}" for leaf in sequence]
    assert [m.payload for m in got] == [str(i).encode() for i in range(len(sequence))]
    aliases = [a for _, a in resolved]
    assert all(a in (1, 2) for a in aliases), aliases
    # Repeats went as the alias alone: the second "a", right after it, and
    # the second "b" after the first one of the pair.
    alone = [m.topic == "" for m in got]
    assert alone[:4] == [False, False, True, True] and alone[7], alone
    # A client that announced none gets none.
    others = plain.until(f"{base}/end")
    assert [m.topic for m in others] == [f"{base}/{leaf}" for leaf in sequence]
    assert all(getattr(m.properties, "TopicAlias", None) is None for m in others)
