"""Sources: connstate follows EMQX 5 through its
``$SYS/brokers/{node}/clients/{clientid}/connected|disconnected`` messages.

EMQX cannot run here, so the test publishes EMQX's documented payloads on
those topics of a local Mosquitto. Mosquitto refuses a client's PUBLISH to
``$SYS/...`` ("Denied PUBLISH"), but not what comes in over a bridge: the
Mosquitto bridges to itself and maps ``emqx-sys/brokers/#`` to
``$SYS/brokers/#``, so the messages connstate reads are published on the
``$SYS`` topics by the broker itself, as EMQX does.

Needs ``mosquitto`` on the PATH (test.sh installs it when missing)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest
from conftest import HOST, eventually, free_port, unique
from test_sources import LogMosquitto, metrics, wait_source_up

pytestmark = pytest.mark.connstate

NODE = "emqx@10.0.0.1"


class SysMosquitto(LogMosquitto):
    """A Mosquitto whose ``$SYS/brokers/#`` carries what is published on
    ``emqx-sys/brokers/#``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mqtt_port = free_port()
        self.conf = root / "mosquitto.conf"
        self.conf.write_text(
            f"user {__import__('getpass').getuser()}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type all\n"
            f"listener {self.mqtt_port} {HOST}\n"
            "connection emqx-sys\n"
            f"address {HOST}:{self.mqtt_port}\n"
            "topic brokers/# in 0 $SYS/ emqx-sys/\n"
        )
        self.log_path = root / "mosquitto.log"
        self.proc = None
        self.start()


@pytest.fixture
def sys_mosquitto(work_root: Path) -> Iterator[SysMosquitto]:
    d = work_root / unique("sys-mosquitto")
    d.mkdir()
    m = SysMosquitto(d)
    yield m
    m.stop()


class Publisher:
    """Publishes EMQX's $SYS messages (through the bridge), in order."""

    def __init__(self, broker: SysMosquitto) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique("emqx-pub"))
        self.client.connect(HOST, broker.mqtt_port)
        self.client.loop_start()

    def raw(self, topic: str, payload: str | bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)

    def sys(self, client: str, kind: str, payload: Any) -> None:
        body = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
        self.raw(f"emqx-sys/brokers/{NODE}/clients/{client}/{kind}", body)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connected(client: str, connected_at: int, **extra: Any) -> dict[str, Any]:
    # As EMQX 5 documents the payload of $SYS/brokers/{node}/clients/{clientid}/connected.
    return {
        "username": "u1",
        "ts": connected_at,
        "sockport": 1883,
        "proto_ver": 5,
        "proto_name": "MQTT",
        "keepalive": 60,
        "ipaddress": "192.0.2.10",
        "expiry_interval": 0,
        "connected_at": connected_at,
        "connack": 0,
        "clientid": client,
        "clean_start": True,
        **extra,
    }


def disconnected(client: str, connected_at: int | None, reason: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "username": "u1",
        "ts": (connected_at or 1_790_000_000_000) + 5000,
        "sockport": 1883,
        "reason": reason,
        "proto_ver": 5,
        "proto_name": "MQTT",
        "ipaddress": "192.0.2.10",
        "disconnected_at": (connected_at or 1_790_000_000_000) + 5000,
        "clientid": client,
    }
    if connected_at is not None:
        body["connected_at"] = connected_at
    return body


def emqx_config(work_root: Path, broker: SysMosquitto, name: str) -> str:
    path = work_root / f"{unique('emqx-source')}.toml"
    path.write_text(f'[[source]]\nname = "{name}"\nkind = "emqx"\nurl = "mqtt://{HOST}:{broker.mqtt_port}"\n')
    return str(path)


def counted(server: Any, name: str, outcome: str) -> float:
    return metrics(server).get(f'connstate_source_input_total{{source="{name}",outcome="{outcome}"}}', 0)


def test_an_emqx_source_follows_its_sys_messages(make_server, work_root, sys_mosquitto):
    """Connected and disconnected messages become states and logs;
    duplicate and out-of-order ones are logged as stale; malformed ones are
    counted and logged, never recorded."""
    from connstate_client import pb

    server = make_server("--config", emqx_config(work_root, sys_mosquitto, "emqx-a"))
    wait_source_up(server, "emqx-a")
    pub = Publisher(sys_mosquitto)
    prefix = unique("x")
    t0 = int(time.time() * 1000) - 60_000
    try:
        # Connected (the bridge may still be starting: repeat until seen,
        # a repeat of the same connection is only a stale log entry).
        first = f"{prefix}-1"

        def seen() -> Any:
            pub.sys(first, "connected", connected(first, t0))
            return server.state(first)

        eventually(seen, timeout=20, interval=0.5, what="the first $SYS message through the bridge")
        s = server.wait_connected(first)
        assert s.broker == "emqx-a"
        assert s.connection_id == t0
        assert s.username == "u1"
        assert s.keep_alive_seconds == 60
        assert s.mqtt_connect_protocol == pb.MQTT_PROTOCOL_V5_0
        assert s.client_addr == "192.0.2.10"
        assert s.port == 0  # sockport is EMQX's listener, not the client

        # Disconnected with "normal": the client ended it.
        pub.sys(first, "disconnected", disconnected(first, t0, "normal"))
        s = server.wait_disconnected(first)
        assert s.last_disconnect_initiator == pb.DISCONNECT_INITIATOR_CLIENT
        assert s.last_disconnect_reason_code == 0
        assert s.last_close_code == 0

        # A duplicate: logged as stale; the state and counters stay.
        before = server.logs(first)
        pub.sys(first, "disconnected", disconnected(first, t0, "normal"))
        logs = eventually(lambda: (l := server.logs(first)) and len(l) > len(before) and l, what="the duplicate logged")
        assert logs[0].stale
        again = server.state(first)
        assert again.counters == s.counters
        assert again.last_disconnect_time == s.last_disconnect_time

        # Out of order: the newer connection is reported first; the late
        # connect and takeover of the older one leave it connected.
        second = f"{prefix}-2"
        pub.sys(second, "connected", connected(second, t0 + 20_000))
        pub.sys(second, "connected", connected(second, t0 + 10_000))
        pub.sys(second, "disconnected", disconnected(second, t0 + 10_000, "takenover"))
        eventually(lambda: len(server.logs(second)) >= 3, what="three log entries")
        s = server.state(second)
        assert s.connection_status == pb.CONNECTION_STATUS_CONNECTED
        assert s.connection_id == t0 + 20_000
        # Newest (event time) first: the current connection, then the two
        # late messages of the older one.
        assert [e.stale for e in server.logs(second)] == [False, True, True]

        # A disconnect without connected_at (as EMQX 4 documents it) ends the
        # recorded connection: keepalive timeout, network, 0x8D.
        pub.sys(second, "disconnected", disconnected(second, None, "keepalive_timeout"))
        s = server.wait_disconnected(second)
        assert s.last_disconnect_initiator == pb.DISCONNECT_INITIATOR_NETWORK
        assert s.last_disconnect_reason_code == 0x8D
        assert s.last_close_code == 160

        # Malformed: not JSON, a client id other than the topic's, a connect
        # without connected_at, an unknown protocol version. Counted as bad,
        # nothing recorded. A disconnect of a client never seen: unmatched.
        bad_before = counted(server, "emqx-a", "bad")
        unmatched_before = counted(server, "emqx-a", "unmatched")
        ignored_before = counted(server, "emqx-a", "ignored")
        bad = f"{prefix}-bad"
        pub.sys(bad, "connected", "{not json")
        pub.sys(bad, "connected", connected(f"{bad}-other", t0))
        body = connected(bad, t0)
        del body["connected_at"]
        pub.sys(bad, "connected", body)
        pub.sys(bad, "connected", connected(bad, t0, proto_ver=9))
        pub.sys(bad, "disconnected", disconnected(bad, None, "normal"))
        pub.raw(f"emqx-sys/brokers/{NODE}/clients/{bad}/subscribed", "{}")
        last = f"{prefix}-last"
        pub.sys(last, "connected", connected(last, t0))
        server.wait_connected(last)
        assert counted(server, "emqx-a", "bad") == bad_before + 4
        assert counted(server, "emqx-a", "unmatched") == unmatched_before + 1
        assert counted(server, "emqx-a", "ignored") == ignored_before + 1
        assert server.state(bad) is None
        assert server.state(f"{bad}-other") is None
        assert "is not the client id of the topic" in server.log_path.read_text()
    finally:
        pub.close()
