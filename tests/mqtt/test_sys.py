"""`$SYS/broker/...` statistics, named and formatted as Mosquitto's:
retained, published at start and every ``--sys-interval`` (Mosquitto's
``sys_interval``)."""

from __future__ import annotations

import time

import pytest

from conftest import V5, V311, unique

#: Topics both brokers publish, and how their payloads read.
COMMON = {
    "$SYS/broker/clients/connected": int,
    "$SYS/broker/clients/total": int,
    "$SYS/broker/messages/received": int,
    "$SYS/broker/messages/sent": int,
    "$SYS/broker/load/messages/received/1min": float,
    "$SYS/broker/load/messages/sent/1min": float,
    "$SYS/broker/uptime": lambda v: int(v.removesuffix(" seconds")),
    "$SYS/broker/version": str,
}


def sys_values(peer, wanted, timeout: float = 5) -> dict[str, str]:
    """The latest payload of each topic in ``wanted`` (retained or fresh)."""
    values: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while not wanted <= values.keys():
        left = deadline - time.monotonic()
        assert left > 0, f"missing {sorted(wanted - values.keys())}"
        m = peer.expect(timeout=left)
        values[m.topic] = m.payload.decode()
    return values


@pytest.mark.parametrize("version", [V311, V5])
def test_sys_statistics_are_retained_under_mosquittos_names(broker, peers, version):
    sub = peers(broker, unique("sys"), version=version)
    sub.subscribe_ok("$SYS/broker/#", 0)
    values = sys_values(sub, COMMON.keys())
    for topic, read in COMMON.items():
        read(values[topic])
    assert values["$SYS/broker/version"].startswith(("connstate version ", "mosquitto version "))


@pytest.mark.connstate
def test_sys_statistics_follow_the_broker(make_server, peers):
    """Every --sys-interval: clients connected and total (persistent sessions
    of disconnected clients count in total), messages (MQTT packets)
    received and sent, and the load they make, as Mosquitto counts them."""
    server = make_server("--sys-interval", "1s")
    watcher = peers(server, unique("watch"), version=V5)
    watcher.subscribe_ok("$SYS/broker/#", 0)
    first = sys_values(watcher, COMMON.keys())
    assert first["$SYS/broker/version"].startswith("connstate version ")

    gone = peers(server, unique("gone"), version=V311, clean=False)
    gone.subscribe_ok("somewhere/#", 1)
    gone.disconnect()
    pub = peers(server, unique("pub"), version=V5)
    for i in range(20):
        pub.publish(f"sys/{unique()}", b"x", qos=1)

    def settled() -> dict[str, str] | None:
        v = sys_values(watcher, COMMON.keys() | {"$SYS/broker/clients/disconnected"})
        ok = (
            v["$SYS/broker/clients/connected"] == "2"
            and v["$SYS/broker/clients/total"] == "3"
            and int(v["$SYS/broker/messages/received"]) >= int(first["$SYS/broker/messages/received"]) + 20
            and float(v["$SYS/broker/load/messages/received/1min"]) > 0
        )
        return v if ok else None

    deadline = time.monotonic() + 10
    while (v := settled()) is None:
        assert time.monotonic() < deadline, "statistics did not follow the broker"
    assert int(v["$SYS/broker/uptime"].removesuffix(" seconds")) >= 1
    assert int(v["$SYS/broker/messages/sent"]) > int(first["$SYS/broker/messages/sent"])
    assert int(v["$SYS/broker/clients/disconnected"]) == 1


@pytest.mark.connstate
def test_sys_interval_zero_publishes_nothing(make_server, peers):
    server = make_server("--sys-interval", "0s")
    sub = peers(server, unique("sys"), version=V311)
    sub.subscribe_ok("$SYS/broker/#", 0)
    assert sub.quiet(1.5) == []
