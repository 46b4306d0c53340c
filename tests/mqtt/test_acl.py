"""The access rules file: ``--acl-file`` for connstate, ``acl_file`` for
Mosquitto, the same file and the same expectations for both (Mosquitto's
documented semantics): rules before any ``user`` line are for anonymous
clients, ``deny`` wins, patterns substitute ``%c`` and ``%u``, and what no
rule grants is refused. A refused SUBSCRIBE gets SUBACK 0x87 (v5) / 0x80
(v3.1.1); a refused PUBLISH is acknowledged with 0x87 (v5) or dropped
(v3.1.1). SIGHUP reloads the file without dropping a connection."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest

from conftest import (
    BROKER_KIND,
    V5,
    V311,
    ConnstateServer,
    MosquittoBroker,
    eventually,
    unique,
)

RULES = """\
# anonymous clients
topic read public/#
topic public/chat

user alice
topic readwrite alice/#
topic deny alice/secret/#

pattern write devices/%c/state
pattern read inbox/%u/#
"""

NOT_AUTHORIZED = 0x87
V3_FAILURE = 0x80
# A granted PUBLISH is acknowledged below 0x80 (Mosquitto answers 0x10, no
# matching subscribers, when nobody listens).


def start(root: Path, rules: str):
    """A broker of the kind under test, following the rules file it
    returns."""
    n = unique("acl")
    acl = root / f"{n}.acl"
    acl.write_text(rules)
    if BROKER_KIND == "mosquitto":
        # Mosquitto started as root reads the file as its own user.
        root.chmod(0o755)
        acl.chmod(0o644)
        d = root / n
        d.mkdir()
        return MosquittoBroker(d, extra_conf=f"acl_file {acl}\n"), acl
    return ConnstateServer(root / n, ["--acl-file", str(acl)]), acl


@pytest.fixture
def acl_broker(work_root):
    started = []

    def make(rules: str = RULES):
        b, acl = start(work_root, rules)
        started.append(b)
        return b, acl

    yield make
    for b in started:
        b.stop()


def denied_sub(version: int) -> int:
    return NOT_AUTHORIZED if version == V5 else V3_FAILURE


def refused_filter(peer, topic_filter: str, version: int) -> None:
    """SUBACK 0x87 (v5) / 0x80 (v3.1.1). Mosquitto 2.0 grants the
    subscription and refuses each delivery instead (read access is checked
    on delivery by both)."""
    codes = peer.subscribe(topic_filter, 0)
    expected = 0 if BROKER_KIND == "mosquitto" else denied_sub(version)
    assert codes == [expected], f"SUBACK for {topic_filter!r}: {codes}"
    if BROKER_KIND == "mosquitto":
        peer.unsubscribe(topic_filter)


@pytest.mark.parametrize("version", [V311, V5])
def test_anonymous_rules_grant_and_deny(acl_broker, peers, version):
    broker, _ = acl_broker()
    sub = peers(broker, unique("anon-sub"), version=version)
    pub = peers(broker, unique("anon-pub"), version=version)
    sub.subscribe_ok("public/#", 1)
    refused_filter(sub, "#", version)
    refused_filter(sub, "alice/#", version)

    # `topic read`: no writing; `topic` alone: readwrite.
    code = pub.publish("public/news", b"refused", qos=1)
    assert code == (NOT_AUTHORIZED if version == V5 else 0)
    assert pub.publish("public/chat", b"hello", qos=1) < 0x80
    m = sub.expect()
    assert (m.topic, m.payload) == ("public/chat", b"hello")
    assert sub.quiet() == []
    # Both connections are still there.
    assert sub.client.is_connected() and pub.client.is_connected()


@pytest.mark.parametrize("version", [V311, V5])
def test_user_rules_deny_wins_and_is_checked_on_delivery(acl_broker, peers, version):
    broker, _ = acl_broker()
    alice = peers(broker, unique("alice"), version=version, username="alice")
    # A user's rules are the user's alone: public/# is for anonymous ones.
    refused_filter(alice, "public/#", version)
    refused_filter(alice, "alice/secret/#", version)
    # A filter wider than the deny is granted, but what the deny covers is
    # not delivered.
    alice.subscribe_ok("alice/#", 1)
    code = alice.publish("alice/secret/x", b"no", qos=1)
    assert code == (NOT_AUTHORIZED if version == V5 else 0)
    other = peers(broker, unique("other"), version=version, username="alice")
    other.publish("alice/secret/y", b"no", qos=1)
    other.publish("alice/open", b"yes", qos=1)
    msgs = alice.until("alice/open", b"yes")
    assert [m.topic for m in msgs] == ["alice/open"]


@pytest.mark.parametrize("version", [V311, V5])
def test_patterns_substitute_client_id_and_user(acl_broker, peers, version):
    broker, _ = acl_broker()
    cid = unique("dev")
    watcher = peers(broker, unique("watch"), version=version, username="alice")
    refused_filter(watcher, "devices/+/state", version)
    dev = peers(broker, cid, version=version, username="bob")
    dev.subscribe_ok("inbox/bob/#", 1)
    refused_filter(dev, "inbox/carol/#", version)
    assert dev.publish(f"devices/{cid}/state", b"up", qos=1) < 0x80
    code = dev.publish("devices/someone-else/state", b"forged", qos=1)
    assert code == (NOT_AUTHORIZED if version == V5 else 0)
    # The inbox pattern grants reading only: alice's write is refused and
    # bob receives nothing.
    code = watcher.publish("inbox/bob/x", b"no", qos=1)
    assert code == (NOT_AUTHORIZED if version == V5 else 0)
    assert dev.quiet() == []


@pytest.mark.parametrize("version", [V311, V5])
def test_sighup_reloads_without_dropping_connections(acl_broker, peers, version):
    broker, acl = acl_broker()
    sub = peers(broker, unique("reload-sub"), version=version)
    pub = peers(broker, unique("reload-pub"), version=version)
    sub.subscribe_ok("public/#", 1)
    refused_filter(sub, "news/#", version)

    acl.write_text(RULES.replace("topic read public/#", "topic read public/#\ntopic readwrite news/#", 1))
    broker.hangup()

    # The new rules apply to the connections already open.
    def granted():
        codes = sub.subscribe("news/#", 1)
        return codes == [1]

    eventually(granted, timeout=10, interval=0.2, what="news/# granted after the reload")
    assert pub.publish("news/today", b"fresh", qos=1) < 0x80
    m = sub.expect(topic="news/today")
    assert m.payload == b"fresh"
    # Read access is checked again on delivery: a subscription made under
    # the old rules stops receiving what the new rules no longer grant.
    acl.write_text(RULES)
    broker.hangup()

    def news_stopped():
        pub.publish("news/probe", b"p", qos=1)
        pub.publish("public/chat", b"marker", qos=1)
        return [m.topic for m in sub.until("public/chat", b"marker")] == ["public/chat"]

    eventually(news_stopped, timeout=10, interval=0.2, what="news/# refused after the second reload")
    code = pub.publish("news/later", b"x", qos=1)
    assert code == (NOT_AUTHORIZED if version == V5 else 0)
    pub.publish("public/chat", b"marker", qos=1)
    assert [m.topic for m in sub.until("public/chat", b"marker")] == ["public/chat"]
    assert sub.client.is_connected() and pub.client.is_connected()
    assert not sub.disconnected.is_set() and not pub.disconnected.is_set()


@pytest.mark.connstate
def test_a_bad_file_on_sighup_keeps_the_rules(acl_broker, peers):
    broker, acl = acl_broker()
    assert isinstance(broker, ConnstateServer)
    sub = peers(broker, unique("keep"), version=V5)
    sub.subscribe_ok("public/#", 1)
    acl.write_text("topic read public/#\nfrobnicate everything\n")
    broker.hangup()
    eventually(
        lambda: "frobnicate" in broker.log_path.read_text(errors="replace"),
        what="the reload error logged",
    )
    log = broker.log_path.read_text(errors="replace")
    assert f"{acl} line 2" in log and "kept" in log
    # The rules in force are unchanged: public/chat is still readwrite.
    pub = peers(broker, unique("keep-pub"), version=V5)
    assert pub.publish("public/chat", b"still", qos=1) < 0x80
    assert sub.expect().payload == b"still"
    assert pub.publish("elsewhere", b"x", qos=1) == NOT_AUTHORIZED


@pytest.mark.connstate
def test_a_bad_file_stops_the_start(work_root):
    acl = work_root / "bad.acl"
    acl.write_text("user alice\ntopic read a/#/b\n")
    with pytest.raises(RuntimeError) as failed:
        ConnstateServer(work_root / unique("bad"), ["--acl-file", str(acl)])
    assert f"access rules file {acl} line 2" in str(failed.value)


@pytest.mark.connstate
def test_refusals_are_counted(acl_broker, peers):
    broker, _ = acl_broker()
    assert isinstance(broker, ConnstateServer)

    def count(name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{broker.rest_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        found = re.search(rf"^connstate_{name}_total (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    c = peers(broker, unique("count"), version=V5)
    assert c.subscribe("secret/#", 0) == [NOT_AUTHORIZED]
    assert c.publish("secret/x", b"x", qos=1) == NOT_AUTHORIZED
    assert count("mqtt_denied_subscriptions") >= 1
    assert count("mqtt_denied_publishes") >= 1


@pytest.mark.connstate
@pytest.mark.parametrize("version", [V311, V5])
def test_a_will_the_rules_refuse_refuses_the_connect(acl_broker, peers, version):
    broker, _ = acl_broker()
    will = {"topic": "public/news", "payload": b"gone"}
    refused = peers(broker, unique("will"), version=version, will=will, expect_success=False)
    # paho reports v3.1.1 CONNACK 5 (not authorised) as 0x87 too.
    assert refused.connack[1] == NOT_AUTHORIZED
    ok = peers(broker, unique("will"), version=version, will={"topic": "public/chat", "payload": b"gone"})
    assert ok.client.is_connected()
