"""Cluster MQTT routing: clients connected to different nodes of a connstate
cluster talk as if they were on one broker (DESIGN.md §6). Three real
``connstate serve`` nodes on a real three-server NATS JetStream cluster
(cluster.py); real paho-mqtt clients on different nodes.

Every expectation is the MQTT specification's for one broker: a message
published after a SUBACK reaches that subscription, exactly once for QoS 2
and once here for every QoS (nothing is lost on loopback), at
min(publish QoS, subscription QoS), in the publisher's order; v5 properties
pass unchanged; a retained message, a will and a persistent session are the
cluster's, not one node's. Tests that kill a node start a cluster of their
own; the others share one per module.

Select them with ``-k cluster``."""

from __future__ import annotations

import json
import queue
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions

from cluster import LEASE_SECONDS, ClusterNode, auth_cluster3, cluster3, fresh_cluster3  # noqa: F401  (fixtures)
from conftest import BROKER_KIND, V5, V311, Peer, RawClient, packet, props, publish_packet, session_300, unique

pytestmark = [
    pytest.mark.connstate,
    pytest.mark.cluster,
    pytest.mark.skipif(
        BROKER_KIND != "connstate",
        reason=f"cluster routing needs three connstate nodes on NATS, not one {BROKER_KIND} (MQTT_TEST_BROKER={BROKER_KIND})",
    ),
    # A cluster starts in a few seconds; the longest wait (a will after a
    # SIGKILL) is the lease plus a margin.
    pytest.mark.timeout(90),
]

VERSIONS = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])

#: How long a message may take from one node to another before a test says
#: it did not arrive.
ARRIVAL = 5.0
#: How long to watch for a duplicate (or a message that must not come).
QUIET = 0.5
#: A marker published after the messages under test: once it has arrived,
#: whatever was published before it has had its chance.
MARKER = b"--marker--"

TOKEN_USER = "use-token-auth"


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def seen(messages: list[mqtt.MQTTMessage]) -> list[tuple[str, bytes, int, bool]]:
    """(topic, payload, QoS, retain) of each message: what a failure shows."""
    return [(m.topic, m.payload, m.qos, bool(m.retain)) for m in messages]


def until_marker(peer: Peer, topic: str, where: str, timeout: float = ARRIVAL) -> list[mqtt.MQTTMessage]:
    """The messages on ``topic`` received before the marker, and any that
    arrive within :data:`QUIET` after it (late duplicates); markers left out."""
    got: list[mqtt.MQTTMessage] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            msg = peer.messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(
                f"{where}: the marker published after the messages did not arrive within {timeout} s; received {seen(got)}"
            ) from None
        if msg.topic == topic and msg.payload == MARKER:
            break
        got.append(msg)
    got += peer.quiet(QUIET)
    return [m for m in got if m.topic == topic and m.payload != MARKER]


def receive(peer: Peer, count: int, where: str, timeout: float = ARRIVAL) -> list[mqtt.MQTTMessage]:
    """Exactly the next ``count`` messages; fails naming what did arrive."""
    got: list[mqtt.MQTTMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        try:
            got.append(peer.messages.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            raise AssertionError(f"{where}: expected {count} message(s) within {timeout} s, got {len(got)}: {seen(got)}") from None
    return got


def collect_numbered(peer: Peer, count: int, where: str, idle: float = ARRIVAL, limit: float = 30.0) -> list[int]:
    """The integer payloads of the next ``count`` messages: fails when none
    arrives for ``idle`` seconds or all take longer than ``limit``."""
    got: list[int] = []
    deadline = time.monotonic() + limit
    while len(got) < count:
        wait = min(idle, deadline - time.monotonic())
        try:
            msg = peer.messages.get(timeout=max(0.0, wait))
        except queue.Empty:
            missing = sorted(set(range(count)) - set(got))
            raise AssertionError(
                f"{where}: {len(got)} of {count} messages arrived (then nothing for {wait:.1f} s); "
                f"first missing: {missing[:10]}; last received: {got[-5:]}"
            ) from None
        got.append(int(msg.payload))
    return got


def first_disorder(got: list[int]) -> str:
    for i, (a, b) in enumerate(zip(got, range(len(got)))):
        if a != b:
            return f"position {i}: got {a}, expected {b} (around it: {got[max(0, i - 3) : i + 4]})"
    return "in order"


# ---------------------------------------------------------------------------
# 1. publish / subscribe across nodes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("pub_qos", [0, 1, 2], ids=["pub-qos0", "pub-qos1", "pub-qos2"])
@VERSIONS
def test_cluster_publish_reaches_subscribers_on_other_nodes_once(cluster3, peers, version, pub_qos):
    """Publisher on node1; subscribers at QoS 0, 1 and 2 on node2, one on
    node3, and one on node1 itself: each gets the message once, on its
    topic, at min(publish QoS, subscription QoS), not retained; the local
    subscriber gets no second copy back through the cluster."""
    topic = f"cluster/pubsub/{unique()}"
    subscribers: list[tuple[str, int, Peer]] = []
    for node, sub_qos in ((2, 0), (2, 1), (2, 2), (3, 1), (1, 2)):
        p = peers(cluster3.node(node), unique(f"n{node}q{sub_qos}"), version=version)
        p.subscribe_ok(topic, sub_qos)
        subscribers.append((f"node{node}", sub_qos, p))
    pub = peers(cluster3.node(1), unique("pub"), version=version)
    pub.publish(topic, b"hello", qos=pub_qos)
    pub.publish(topic, MARKER, qos=1)

    for where, sub_qos, p in subscribers:
        got = until_marker(p, topic, f"subscriber on {where} at QoS {sub_qos} (publisher on node1, QoS {pub_qos})")
        assert seen(got) == [(topic, b"hello", min(pub_qos, sub_qos), False)], (
            f"subscriber on {where} at QoS {sub_qos}: expected the message once at QoS {min(pub_qos, sub_qos)}, got {seen(got)}"
        )


# ---------------------------------------------------------------------------
# 2. v5 properties across nodes
# ---------------------------------------------------------------------------


def test_cluster_v5_publish_properties_pass_between_nodes(cluster3, peers):
    topic = f"cluster/props/{unique()}"
    sub = peers(cluster3.node(2), unique("sub"), version=V5)
    sub.subscribe_ok(topic, 1)
    pub = peers(cluster3.node(1), unique("pub"), version=V5)
    user_properties = [("k", "v1"), ("k", "v2"), ("other", "x"), ("k", "v1")]
    sent = props(
        PacketTypes.PUBLISH,
        UserProperty=user_properties,
        ContentType="application/json",
        ResponseTopic=f"{topic}/reply",
        CorrelationData=b"\x00\x01corr\xff",
        PayloadFormatIndicator=1,
        MessageExpiryInterval=120,
    )
    pub.publish(topic, b'{"a":1}', qos=1, properties=sent)
    (msg,) = receive(sub, 1, "subscriber on node2 (publisher on node1)")
    assert (msg.topic, msg.payload, msg.qos) == (topic, b'{"a":1}', 1)
    got = msg.properties
    assert getattr(got, "UserProperty", None) == user_properties, "user properties (order and repeats)"
    assert getattr(got, "ContentType", None) == "application/json"
    assert getattr(got, "ResponseTopic", None) == f"{topic}/reply"
    assert getattr(got, "CorrelationData", None) == b"\x00\x01corr\xff"
    assert getattr(got, "PayloadFormatIndicator", None) == 1
    expiry = getattr(got, "MessageExpiryInterval", None)
    assert expiry is not None and 0 < expiry <= 120, f"Message Expiry Interval sent 120, arrived {expiry}"


def test_cluster_v5_retain_as_published_between_nodes(cluster3, peers):
    """A retained publish on node1 reaches established subscriptions on
    node2: with Retain As Published its RETAIN flag stays 1, without it 0."""
    topic = f"cluster/rap/{unique()}"
    keep = peers(cluster3.node(2), unique("keep"), version=V5)
    keep.subscribe_ok(topic, 1, options=SubscribeOptions(qos=1, retainAsPublished=True))
    plain = peers(cluster3.node(2), unique("plain"), version=V5)
    plain.subscribe_ok(topic, 1, options=SubscribeOptions(qos=1, retainAsPublished=False))
    pub = peers(cluster3.node(1), unique("pub"), version=V5)
    try:
        pub.publish(topic, b"r", qos=1, retain=True)
        pub.publish(topic, b"n", qos=1)
        assert seen(receive(keep, 2, "node2, retainAsPublished=True")) == [(topic, b"r", 1, True), (topic, b"n", 1, False)]
        assert seen(receive(plain, 2, "node2, retainAsPublished=False")) == [(topic, b"r", 1, False), (topic, b"n", 1, False)]
    finally:
        pub.publish(topic, b"", qos=1, retain=True)


# ---------------------------------------------------------------------------
# 3. retained messages are the cluster's
# ---------------------------------------------------------------------------


def test_cluster_retained_message_is_set_and_cleared_cluster_wide(cluster3, peers):
    topic = f"cluster/retained/{unique()}"
    pub = peers(cluster3.node(1), unique("pub"), version=V311)
    pub.publish(topic, b"kept", qos=1, retain=True)

    sub = peers(cluster3.node(2), unique("sub2"), version=V5)
    sub.subscribe_ok(topic, 1)
    got = receive(sub, 1, "new subscriber on node2 after a retained publish on node1")
    assert seen(got) == [(topic, b"kept", 1, True)]

    clearer = peers(cluster3.node(3), unique("clear"), version=V5)
    clearer.publish(topic, b"", qos=1, retain=True)
    # The established subscriber sees the clearing publish (RETAIN 0).
    assert seen(receive(sub, 1, "subscriber on node2, clearing publish on node3")) == [(topic, b"", 1, False)]

    for node in (1, 2):
        late = peers(cluster3.node(node), unique(f"late{node}"), version=V5)
        late.subscribe_ok(topic, 1)
        stale = late.quiet(1.5)
        assert seen(stale) == [], f"new subscriber on node{node} after the retained message was cleared on node3 got {seen(stale)}"


# ---------------------------------------------------------------------------
# 4. shared subscriptions span the nodes
# ---------------------------------------------------------------------------


def test_cluster_shared_subscription_delivers_each_message_once_across_nodes(cluster3, peers):
    topic = f"cluster/shared/{unique()}"
    members = {node: peers(cluster3.node(node), unique(f"member{node}"), version=V5) for node in (1, 2, 3)}
    for m in members.values():
        m.subscribe_ok("$share/g/cluster/shared/#", 1)
    pub = peers(cluster3.node(1), unique("pub"), version=V5)
    count = 60
    for i in range(count):
        pub.publish(topic, str(i).encode(), qos=1)

    got: dict[int, list[int]] = {node: [] for node in members}
    deadline = time.monotonic() + 15
    while sum(len(v) for v in got.values()) < count and time.monotonic() < deadline:
        for node, m in members.items():
            try:
                while True:
                    msg = m.messages.get_nowait()
                    assert msg.topic == topic, f"member on node{node} got a message on {msg.topic!r}"
                    got[node].append(int(msg.payload))
            except queue.Empty:
                pass
        time.sleep(0.01)
    for node, m in members.items():
        got[node] += [int(msg.payload) for msg in m.quiet(QUIET / 3)]
    everything = sorted(sum(got.values(), []))
    shares = {f"node{node}": len(v) for node, v in got.items()}
    missing = sorted(set(range(count)) - set(everything))
    duplicated = sorted({i for i in everything if everything.count(i) > 1})
    assert not missing and not duplicated, (
        f"{count} QoS 1 messages from node1 to $share/g on node1..3: received {len(everything)} {shares}; "
        f"missing {missing[:10]}{'...' if len(missing) > 10 else ''}; duplicated {duplicated[:10]}"
    )
    assert sum(1 for v in got.values() if v) >= 2, f"one node's member got every message: {shares}"


# ---------------------------------------------------------------------------
# 5. one publisher's order holds across nodes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("qos", [1, 0], ids=["qos1", "qos0"])
def test_cluster_keeps_one_publishers_order_across_nodes(cluster3, peers, qos):
    topic = f"cluster/order/{unique()}"
    sub = peers(cluster3.node(3), unique("sub"), version=V5)
    sub.subscribe_ok(topic, 1)
    pub = peers(cluster3.node(1), unique("pub"), version=V5)
    count = 300
    infos = [pub.client.publish(topic, str(i).encode(), qos=qos) for i in range(count)]
    assert all(info.rc == mqtt.MQTT_ERR_SUCCESS for info in infos)
    infos[-1].wait_for_publish(20)
    got = collect_numbered(sub, count, f"subscriber on node3, {count} QoS {qos} messages from node1", limit=30)
    assert got == list(range(count)), f"out of order at {first_disorder(got)}"


# ---------------------------------------------------------------------------
# 6. monitor messages once per client on every node
# ---------------------------------------------------------------------------


def test_cluster_monitor_topic_shows_a_client_of_another_node_once(cluster3, peers):
    cid = unique("monitored")
    topic = f"$SYS/clients/{cid}/mon"
    watcher = peers(cluster3.node(2), unique("watch"), version=V311)
    watcher.subscribe_ok("$SYS/clients/+/mon", 0)

    client = peers(cluster3.node(1), cid, version=V311)
    cluster3.node(2).wait_connected(cid)
    client.disconnect()

    actions: list[tuple[str, bool]] = []
    deadline = time.monotonic() + ARRIVAL
    while "Disconnect" not in [a for a, _ in actions]:
        try:
            msg = watcher.messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(
                f"watcher on node2: no Disconnect of {cid} (on node1) within {ARRIVAL} s; its messages: {actions}"
            ) from None
        # An empty payload clears the retained Connect: not a monitor message.
        if msg.topic == topic and msg.payload:
            body = json.loads(msg.payload)
            assert body["ClientID"] == cid
            actions.append((body["Action"], bool(msg.retain)))
    actions += [(json.loads(m.payload)["Action"], bool(m.retain)) for m in watcher.quiet(1.0) if m.topic == topic and m.payload]
    assert [a for a, _ in actions] == ["Connect", "Disconnect"], (
        f"watcher on node2 of {topic} (client on node1): expected one Connect then one Disconnect, got (action, retain) {actions}"
    )


# ---------------------------------------------------------------------------
# 7. auth-mode topic rules across nodes
# ---------------------------------------------------------------------------


def connect_registered(
    peers, node: ClusterNode, client_id: str, user: str, password: str, version: int = V5, timeout: float = 10
) -> Peer:
    """Connects ``client_id`` to ``node`` until it is accepted: credentials
    registered through another node reach this one's registry within a
    moment."""
    deadline = time.monotonic() + timeout
    while True:
        p = peers(node, client_id, version=version, username=user, password=password, expect_success=False)
        assert p.connack is not None
        if p.connack[1] == 0:
            return p
        p.close()
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{client_id}: refused by {node.id} (CONNACK {p.connack[1]:#x}) for {timeout} s after its registration"
            )
        time.sleep(0.05)


def test_cluster_auth_mode_events_and_commands_cross_nodes(auth_cluster3, peers):
    c = auth_cluster3
    type_id = unique("rt")
    d1, d2 = unique("d1"), unique("d2")
    token1 = c.node(3).register_device(type_id, d1)
    token2 = c.node(1).register_device(type_id, d2)
    key = c.node(2).create_api_key("operator")

    dev1 = connect_registered(peers, c.node(1), f"d:local:{type_id}:{d1}", TOKEN_USER, token1)
    dev1.subscribe_ok("iot-2/cmd/+/fmt/+", 1)
    dev2 = connect_registered(peers, c.node(2), f"d:local:{type_id}:{d2}", TOKEN_USER, token2)
    dev2.subscribe_ok("iot-2/cmd/+/fmt/+", 1)
    watcher = connect_registered(peers, c.node(2), f"a:local:{unique('watch')}", key[0], key[1])
    watcher.subscribe_ok("iot-2/type/+/id/+/evt/+/fmt/+", 1)
    sender = connect_registered(peers, c.node(3), f"a:local:{unique('send')}", key[0], key[1])

    # A device's event on node1 reaches an application on node2, named by
    # the platform's application topic.
    dev1.publish("iot-2/evt/status/fmt/json", b'{"ok":true}', qos=1)
    (event,) = receive(watcher, 1, "application on node2 subscribed to device events (device on node1)")
    assert (event.topic, event.payload) == (f"iot-2/type/{type_id}/id/{d1}/evt/status/fmt/json", b'{"ok":true}')

    # An application's command on node3 reaches its device on node1 only.
    sender.publish(f"iot-2/type/{type_id}/id/{d1}/cmd/reboot/fmt/json", b'{"delay":0}', qos=1)
    (command,) = receive(dev1, 1, "device on node1 subscribed to its commands (application on node3)")
    assert (command.topic, command.payload) == ("iot-2/cmd/reboot/fmt/json", b'{"delay":0}')
    sender.publish(f"iot-2/type/{type_id}/id/{d2}/cmd/marker/fmt/txt", MARKER, qos=1)
    got = dev2.until("iot-2/cmd/marker/fmt/txt", MARKER, timeout=ARRIVAL)
    others = got[:-1] + dev2.quiet(QUIET)
    assert seen(others) == [], f"device on node2 received a command that was not its own: {seen(others)}"


# ---------------------------------------------------------------------------
# 8. a will survives its node
# ---------------------------------------------------------------------------


@VERSIONS
def test_cluster_will_is_published_when_its_node_is_killed(fresh_cluster3, peers, version):
    c = fresh_cluster3
    topic = f"cluster/will/{unique()}"
    watcher = peers(c.node(2), unique("watch"), version=version)
    watcher.subscribe_ok(topic, 1)
    cid = unique("dying")
    peers(c.node(1), cid, version=version, will={"topic": topic, "payload": b"node gone", "qos": 1})
    c.node(2).wait_connected(cid)

    c.kill9(1)
    limit = LEASE_SECONDS + 17
    got = receive(watcher, 1, f"subscriber on node2 to the will of {cid} (node1 killed with SIGKILL)", timeout=limit)
    assert seen(got) == [(topic, b"node gone", 1, False)]
    again = watcher.quiet(1.0)
    assert seen(again) == [], f"the will arrived {1 + len(again)} times: {seen(got + again)}"


# ---------------------------------------------------------------------------
# 9. a persistent session moves between nodes
# ---------------------------------------------------------------------------


@VERSIONS
def test_cluster_persistent_session_moves_to_another_node(cluster3, peers, version):
    topic = f"cluster/session/{unique()}"
    cid = unique("mover")
    session = session_300(version)
    first = peers(cluster3.node(1), cid, version=version, clean=False, properties=session)
    assert first.connack[0] is False, "session present on a fresh client id"
    first.subscribe_ok(topic, 1)
    first.disconnect()
    cluster3.node(3).wait_disconnected(cid)

    pub = peers(cluster3.node(3), unique("pub"), version=version)
    for i in range(3):
        pub.publish(topic, f"queued-{i}".encode(), qos=1)

    back = peers(cluster3.node(2), cid, version=version, clean=False, properties=session)
    assert back.connack[0] is True, f"{cid} reconnecting on node2: CONNACK session present 0 (its session was on node1)"
    got = receive(back, 3, "the session moved to node2 (3 QoS 1 messages queued while offline, published on node3)")
    assert [(m.topic, m.payload, m.qos) for m in got] == [(topic, f"queued-{i}".encode(), 1) for i in range(3)]


@VERSIONS
def test_cluster_takeover_from_another_node_moves_the_session(cluster3, peers, version):
    topic = f"cluster/takeover/{unique()}"
    cid = unique("taken")
    session = session_300(version)
    first = peers(cluster3.node(1), cid, version=version, clean=False, properties=session)
    first.subscribe_ok(topic, 1)

    second = peers(cluster3.node(2), cid, version=version, clean=False, properties=session)
    assert second.connack[0] is True, f"{cid} connecting on node2 while connected on node1: CONNACK session present 0"
    from_server, code, _ = first.wait_disconnected(timeout=10)
    if version == V5:
        assert (from_server, code) == (True, 0x8E), (
            f"node1's connection ended with (DISCONNECT from the server, reason) {(from_server, hex(code))}, "
            "expected a DISCONNECT 0x8E session taken over"
        )

    pub = peers(cluster3.node(3), unique("pub"), version=version)
    pub.publish(topic, b"to the new connection", qos=1)
    got = receive(second, 1, "the connection on node2 that took the session over (publisher on node3)")
    assert seen(got) == [(topic, b"to the new connection", 1, False)]


# ---------------------------------------------------------------------------
# 10. a session whose node died
# ---------------------------------------------------------------------------


@VERSIONS
def test_cluster_session_outlives_its_killed_node(fresh_cluster3, peers, version):
    c = fresh_cluster3
    topic = f"cluster/orphan/{unique()}"
    cid = unique("orphan")
    session = session_300(version)
    first = peers(c.node(1), cid, version=version, clean=False, properties=session)
    first.subscribe_ok(topic, 1)
    first.disconnect()
    c.node(2).wait_disconnected(cid)
    c.kill9(1)

    back = peers(c.node(2), cid, version=version, clean=False, properties=session)
    assert back.connack[0] is True, f"{cid} reconnecting on node2 after node1 was killed: CONNACK session present 0"
    pub = peers(c.node(3), unique("pub"), version=version)
    pub.publish(topic, b"after the crash", qos=1)
    got = receive(back, 1, "the session's subscription on node2 (made on the killed node1; publisher on node3)")
    assert seen(got) == [(topic, b"after the crash", 1, False)]


@VERSIONS
def test_cluster_clean_start_on_another_node_ends_the_session(cluster3, peers, version):
    """A clean start ends the session wherever it was: the node that held it
    forgets it, and a later resumption on a third node finds none (no
    subscription of the old session comes back)."""
    topic = f"cluster/clean/{unique()}"
    cid = unique("cleaner")
    session = session_300(version)
    first = peers(cluster3.node(1), cid, version=version, clean=False, properties=session)
    first.subscribe_ok(topic, 1)
    first.disconnect()
    cluster3.node(2).wait_disconnected(cid)

    clean = peers(cluster3.node(2), cid, version=version, clean=True)
    assert clean.connack[0] is False, f"{cid}: a clean start on node2 got session present 1"
    clean.disconnect()

    pub = peers(cluster3.node(1), unique("pub"), version=version)
    pub.publish(topic, b"for the old session", qos=1)
    back = peers(cluster3.node(3), cid, version=version, clean=False, properties=session)
    assert back.connack[0] is False, f"{cid} resuming on node3 after a clean start on node2: CONNACK session present 1"
    stale = back.quiet(1.0)
    assert seen(stale) == [], f"the session ended by the clean start still delivered {seen(stale)}"


def test_cluster_node_without_nats_keeps_its_clients_publishing(fresh_cluster3, peers):
    """With every NATS server gone, the clients of a node still reach each
    other: the publisher is not held back waiting for NATS, and the nodes
    still stop when told to."""
    c = fresh_cluster3
    topic = f"cluster/nonats/{unique()}"
    sub = peers(c.node(1), unique("sub"), version=V311)
    sub.subscribe_ok(f"{topic}/marker", 0)
    pub = RawClient(c.node(1))
    assert pub.connect(unique("flood"))[1] == 0
    assert c.nats is not None
    for server in c.nats.servers:
        if server is not None:
            server.kill9()

    # More than the node's queue towards NATS holds (65,536), then a marker
    # for the local subscriber and a PINGREQ.
    flood = publish_packet(f"{topic}/flood", b"x" * 16)
    pub.send(flood * 200_000 + publish_packet(f"{topic}/marker", MARKER) + packet(0xC0, b""))
    got = receive(sub, 1, "local subscriber on node1 after a flood with NATS gone", timeout=30)
    assert seen(got) == [(f"{topic}/marker", MARKER, 0, False)]
    deadline = time.monotonic() + 30
    while True:
        answer = pub.read_packet(timeout=max(0.1, deadline - time.monotonic()))
        assert answer is not None, "node1 closed the publisher's connection"
        if answer[0] == 0xD0:
            break
    # (The fixture then stops every node with SIGTERM: without NATS each must
    # still stop within its grace.)
