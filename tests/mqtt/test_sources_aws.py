"""Sources: connstate follows AWS IoT Core through its presence messages
(``$aws/events/presence/connected/+`` and ``.../disconnected/+``) over MQTT
over TLS with a client certificate.

AWS IoT Core cannot run here, so the test publishes AWS's documented
payloads on those topics of a local Mosquitto whose TLS listener requires a
client certificate (connstate connects there); the test publishes on a
plain listener. Certificates are made with the ``openssl`` command.

Needs ``mosquitto`` and ``openssl`` on the PATH."""

from __future__ import annotations

import getpass
import json
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest
from conftest import HOST, eventually, free_port, unique
from test_sources import LogMosquitto, metrics, wait_source_up

pytestmark = pytest.mark.connstate


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_certificates(d: Path) -> None:
    """ca.pem; server.pem/server.key for 127.0.0.1; client.pem/client.key,
    all signed by the CA."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"), "-days", "2", "-subj", "/CN=test CA")
    for name, ext in (("server", f"subjectAltName=IP:{HOST}"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"), "-subj", f"/CN={name}")
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
                "-CAcreateserial", "-out", str(d / f"{name}.pem"), "-days", "2", "-extfile", str(d / f"{name}.ext"))


class TlsMosquitto(LogMosquitto):
    """A Mosquitto with a TLS listener that requires a client certificate
    (``tls_port``) and a plain one for the test's publisher (``mqtt_port``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        make_certificates(root)
        self.mqtt_port = free_port()
        self.tls_port = free_port()
        self.conf = root / "mosquitto.conf"
        self.conf.write_text(
            f"user {getpass.getuser()}\n"
            "per_listener_settings false\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type all\n"
            f"listener {self.mqtt_port} {HOST}\n"
            f"listener {self.tls_port} {HOST}\n"
            f"cafile {root / 'ca.pem'}\n"
            f"certfile {root / 'server.pem'}\n"
            f"keyfile {root / 'server.key'}\n"
            "require_certificate true\n"
        )
        self.log_path = root / "mosquitto.log"
        self.proc = None
        self.start()


@pytest.fixture
def tls_mosquitto(work_root: Path) -> Iterator[TlsMosquitto]:
    d = work_root / unique("tls-mosquitto")
    d.mkdir()
    m = TlsMosquitto(d)
    yield m
    m.stop()


def aws_config(work_root: Path, broker: TlsMosquitto, name: str, client_cert: bool = True) -> str:
    path = work_root / f"{unique('aws-source')}.toml"
    text = (
        f'[[source]]\nname = "{name}"\nkind = "aws-iot"\n'
        f'url = "mqtts://{HOST}:{broker.tls_port}"\n'
        f'ca_file = "{broker.root / "ca.pem"}"\n'
    )
    if client_cert:
        text += f'cert_file = "{broker.root / "client.pem"}"\nkey_file = "{broker.root / "client.key"}"\n'
    path.write_text(text)
    return str(path)


def connected(client: str, version: int, at: int) -> dict[str, Any]:
    # As AWS IoT Core documents the payload of $aws/events/presence/connected/{clientId}.
    return {
        "clientId": client,
        "timestamp": at,
        "eventType": "connected",
        "sessionIdentifier": "a4666d2a7d844ae4ac5d7b38c9cb7967",
        "principalIdentifier": "12345678901234567890123456789012",
        "ipAddress": "192.0.2.0",
        "versionNumber": version,
    }


def disconnected(client: str, version: int, at: int, reason: str) -> dict[str, Any]:
    return {
        "clientId": client,
        "timestamp": at,
        "eventType": "disconnected",
        "sessionIdentifier": "a4666d2a7d844ae4ac5d7b38c9cb7967",
        "principalIdentifier": "12345678901234567890123456789012",
        "clientInitiatedDisconnect": reason == "CLIENT_INITIATED_DISCONNECT",
        "disconnectReason": reason,
        "versionNumber": version,
    }


class Publisher:
    def __init__(self, broker: TlsMosquitto) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique("aws-pub"))
        self.client.connect(HOST, broker.mqtt_port)
        self.client.loop_start()

    def raw(self, topic: str, payload: str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)

    def presence(self, client: str, body: Any) -> None:
        kind = body["eventType"] if isinstance(body, dict) and body.get("eventType") in ("connected", "disconnected") else "connected"
        self.raw(f"$aws/events/presence/{kind}/{client}", body if isinstance(body, str) else json.dumps(body))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def counted(server: Any, name: str, outcome: str) -> float:
    return metrics(server).get(f'connstate_source_input_total{{source="{name}",outcome="{outcome}"}}', 0)


def test_an_aws_iot_source_follows_presence_over_tls(make_server, work_root, tls_mosquitto):
    """Presence messages over TLS with a client certificate become states
    and logs; versionNumber orders them; disconnectReason gives initiator and
    reason; malformed ones are counted, never recorded."""
    from connstate_client import pb

    server = make_server("--config", aws_config(work_root, tls_mosquitto, "aws"))
    wait_source_up(server, "aws")
    assert "New client connected" in tls_mosquitto.log_path.read_text()
    pub = Publisher(tls_mosquitto)
    prefix = unique("a")
    t0 = int(time.time() * 1000) - 60_000
    try:
        one = f"{prefix}-1"
        pub.presence(one, connected(one, 1, t0))
        s = server.wait_connected(one)
        assert s.broker == "aws"
        assert s.connection_id == 1
        assert s.client_addr == "192.0.2.0"
        assert s.secure

        pub.presence(one, disconnected(one, 1, t0 + 1000, "MQTT_KEEP_ALIVE_TIMEOUT"))
        s = server.wait_disconnected(one)
        assert s.last_disconnect_initiator == pb.DISCONNECT_INITIATOR_NETWORK
        assert s.last_disconnect_reason_code == 0x8D
        assert s.last_close_code == 160

        # Duplicate: stale, state and counters unchanged.
        before = server.logs(one)
        pub.presence(one, disconnected(one, 1, t0 + 1000, "MQTT_KEEP_ALIVE_TIMEOUT"))
        logs = eventually(lambda: (l := server.logs(one)) and len(l) > len(before) and l, what="the duplicate logged")
        assert any(e.stale for e in logs)
        assert server.state(one).counters == s.counters

        # Out of order by versionNumber: version 3 connects, then version 2's
        # connect and DUPLICATE_CLIENTID disconnect arrive late.
        two = f"{prefix}-2"
        pub.presence(two, connected(two, 3, t0 + 3000))
        pub.presence(two, connected(two, 2, t0 + 2000))
        pub.presence(two, disconnected(two, 2, t0 + 2500, "DUPLICATE_CLIENTID"))
        eventually(lambda: len(server.logs(two)) >= 3, what="three log entries")
        s = server.state(two)
        assert s.connection_status == pb.CONNECTION_STATUS_CONNECTED
        assert s.connection_id == 3
        stale = [e for e in server.logs(two) if e.stale]
        assert len(stale) == 2
        assert any(e.reason_code == 0x8E and e.initiator == pb.DISCONNECT_INITIATOR_SERVER for e in stale)

        # The table: each reason as the README gives it.
        for reason, initiator, code in (
            ("CLIENT_INITIATED_DISCONNECT", pb.DISCONNECT_INITIATOR_CLIENT, 0x00),
            ("SERVER_INITIATED_DISCONNECT", pb.DISCONNECT_INITIATOR_SERVER, 0x8B),
            ("CONNECTION_LOST", pb.DISCONNECT_INITIATOR_NETWORK, None),
            ("THROTTLED", pb.DISCONNECT_INITIATOR_SERVER, 0x96),
        ):
            cid = f"{prefix}-{reason.lower()}"
            pub.presence(cid, connected(cid, 7, t0))
            pub.presence(cid, disconnected(cid, 7, t0 + 10, reason))
            s = server.wait_disconnected(cid)
            assert s.last_disconnect_initiator == initiator, reason
            if code is None:
                assert not s.HasField("last_disconnect_reason_code"), reason
            else:
                assert s.last_disconnect_reason_code == code, reason

        # Malformed: not JSON, another client than the topic's, an eventType
        # other than the topic's, no versionNumber. Counted, not recorded.
        bad_before = counted(server, "aws", "bad")
        bad = f"{prefix}-bad"
        pub.raw(f"$aws/events/presence/connected/{bad}", "{nope")
        pub.raw(f"$aws/events/presence/connected/{bad}", json.dumps(connected(f"{bad}-x", 1, t0)))
        pub.raw(f"$aws/events/presence/connected/{bad}", json.dumps({**connected(bad, 1, t0), "eventType": "disconnected"}))
        body = connected(bad, 1, t0)
        del body["versionNumber"]
        pub.raw(f"$aws/events/presence/connected/{bad}", json.dumps(body))
        last = f"{prefix}-last"
        pub.presence(last, connected(last, 1, t0))
        server.wait_connected(last)
        assert counted(server, "aws", "bad") == bad_before + 4
        assert server.state(bad) is None
    finally:
        pub.close()


def test_an_aws_iot_source_needs_its_client_certificate(make_server, work_root, tls_mosquitto):
    """Without a client certificate the config is refused at start; with an
    unreadable one the start stops, naming the source."""
    from test_sources import server_binary

    for config, words in (
        (aws_config(work_root, tls_mosquitto, "aws", client_cert=False), "cert_file and key_file are required"),
    ):
        done = subprocess.run(
            [server_binary(), "serve", "--data-dir", str(work_root / unique("refused")), "--config", config],
            capture_output=True,
            timeout=30,
        )
        assert done.returncode != 0
        assert words in done.stderr.decode(), done.stderr.decode()
    broken = work_root / f"{unique('aws-broken')}.toml"
    broken.write_text(
        Path(aws_config(work_root, tls_mosquitto, "aws")).read_text().replace("client.key", "missing.key")
    )
    done = subprocess.run(
        [server_binary(), "serve", "--data-dir", str(work_root / unique("refused")), "--config", str(broken),
         "--grpc-listen", f"{HOST}:0", "--rest-listen", f"{HOST}:0", "--mqtt-listen", f"{HOST}:0"],
        capture_output=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "[[source]] aws" in done.stderr.decode() and "missing.key" in done.stderr.decode(), done.stderr.decode()
