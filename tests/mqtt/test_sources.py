"""Sources: connstate follows a real Mosquitto 2.x through the log it
publishes on ``$SYS/broker/log/#`` (``log_dest topic``). Clients connect to
Mosquitto; connstate's state, logs, watch and metrics show what happened to
them, with the initiator and reason the log lines allow.

Needs ``mosquitto`` and ``mosquitto_passwd`` on the PATH (Debian's
``mosquitto`` package, which test.sh installs when missing)."""

from __future__ import annotations

import getpass
import json
import socket
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest
from conftest import HOST, Broker, Peer, RawClient, eventually, free_port, unique

pytestmark = pytest.mark.connstate

SOURCE_USER, SOURCE_PASSWORD = "connstate", "connstate-source-pw"
DEVICE_USER, DEVICE_PASSWORD = "device", "device-pw"


class LogMosquitto(Broker):
    """A Mosquitto that publishes its log to $SYS/broker/log/# and needs a
    password; ``restart()`` keeps its port."""

    kind = "mosquitto"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mqtt_port = free_port()
        passwords = root / "passwords"
        passwords.write_text("")
        for user, password in ((SOURCE_USER, SOURCE_PASSWORD), (DEVICE_USER, DEVICE_PASSWORD)):
            subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True)
        passwords.chmod(0o600)
        self.conf = root / "mosquitto.conf"
        # The two lines a source needs are `log_dest topic` and the log
        # types it reads (notice: connects and disconnects; error: takeovers).
        self.conf.write_text(
            # Started as root, Mosquitto would switch to the user "mosquitto",
            # which cannot read the test's private folder: stay who we are.
            f"user {getpass.getuser()}\n"
            "per_listener_settings false\n"
            "allow_anonymous false\n"
            f"password_file {passwords}\n"
            "persistence false\n"
            "sys_interval 1\n"
            "log_dest topic\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            f"listener {self.mqtt_port} {HOST}\n"
        )
        self.log_path = root / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=log, stderr=log)
        log.close()
        proc = self.proc

        def listening() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_path.read_text()[-2000:]}")
            try:
                socket.create_connection((HOST, self.mqtt_port), timeout=0.5).close()
            except OSError:
                return False
            return True

        eventually(listening, timeout=15, what="mosquitto listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self) -> str:
        return f"mqtt://{SOURCE_USER}:{SOURCE_PASSWORD}@{HOST}:{self.mqtt_port}"


@pytest.fixture
def mosquitto(work_root: Path) -> Iterator[LogMosquitto]:
    d = work_root / unique("log-mosquitto")
    d.mkdir()
    m = LogMosquitto(d)
    yield m
    m.stop()


def source_config(work_root: Path, mosquitto: LogMosquitto, name: str, lease: str = "60s", keep_alive: str = "30s") -> str:
    path = work_root / f"{unique('sources')}.toml"
    path.write_text(
        "[[source]]\n"
        f'name = "{name}"\n'
        'kind = "mosquitto"\n'
        f'url = "mqtt://{HOST}:{mosquitto.mqtt_port}"\n'
        f'username = "{SOURCE_USER}"\n'
        f'password = "{SOURCE_PASSWORD}"\n'
        f'lease = "{lease}"\n'
        f'keep_alive = "{keep_alive}"\n'
    )
    return str(path)


def metrics(server: Any) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{HOST}:{server.rest_port}/metrics", timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    return {k: float(v) for k, _, v in (line.rpartition(" ") for line in lines if line and not line.startswith("#"))}


def wait_source_up(server: Any, name: str, connections: int = 1) -> None:
    eventually(
        lambda: (m := metrics(server)).get(f'connstate_source_up{{source="{name}"}}') == 1
        and m.get(f'connstate_source_connections_total{{source="{name}"}}', 0) >= connections,
        timeout=20,
        what=f"source {name} connected ({connections} connections)",
    )


def paho_client(broker: LogMosquitto, cid: str, password: str = DEVICE_PASSWORD, keepalive: int = 60) -> mqtt.Client:
    """A paho 3.1.1 client connected to ``broker`` (or refused: check
    ``connack``); no automatic reconnect."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311)
    client.username_pw_set(DEVICE_USER, password)
    client.connack = None  # type: ignore[attr-defined]

    def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, properties: Any) -> None:
        c.connack = rc.value if hasattr(rc, "value") else int(rc)

    client.on_connect = on_connect
    client.connect(HOST, broker.mqtt_port, keepalive=keepalive)
    client.loop_start()
    eventually(lambda: client.connack is not None, what=f"CONNACK for {cid}")  # type: ignore[attr-defined]
    return client


def stop_paho(client: mqtt.Client) -> None:
    client.loop_stop()


def raw_connect(broker: LogMosquitto, cid: str, keepalive: int = 60) -> RawClient:
    raw = RawClient(broker)
    ack = raw.connect(cid, keepalive=keepalive, username=DEVICE_USER, password=DEVICE_PASSWORD)
    assert ack[1] == 0, ack
    return raw


def test_a_mosquitto_source_follows_its_clients(make_server, work_root, mosquitto):
    """Connect, disconnect, socket close, keepalive timeout, takeover and a
    refused CONNECT on Mosquitto, as connstate's state, log and watch show
    them."""
    server = make_server("--config", source_config(work_root, mosquitto, "site-a"))
    wait_source_up(server, "site-a")
    from connstate_client import pb
    from connstate_client import WatchEventType

    prefix = unique("m")
    events: list = []
    watch = server.sdk.watch(filter={"client_id_prefix": prefix}, include_snapshot=True)
    reader = threading.Thread(target=lambda: [events.append(e) for e in watch], daemon=True)
    reader.start()
    try:
        eventually(lambda: any(e.type == WatchEventType.SNAPSHOT_COMPLETE for e in events), what="snapshot complete")

        # Connects and disconnects (DISCONNECT sent): the client ended it.
        polite = f"{prefix}-polite"
        c = paho_client(mosquitto, polite, keepalive=45)
        s = server.wait_connected(polite)
        assert s.broker == "site-a"
        assert s.username == DEVICE_USER
        assert s.keep_alive_seconds == 45
        assert s.mqtt_connect_protocol == pb.MQTT_PROTOCOL_V3_1_1
        assert s.client_addr == HOST
        c.disconnect()
        stop_paho(c)
        s = server.wait_disconnected(polite)
        assert s.last_disconnect_initiator == pb.DISCONNECT_INITIATOR_CLIENT
        assert s.last_disconnect_reason_code == 0
        assert s.last_close_code == 0

        # The socket closes without DISCONNECT: the network ended it, no
        # reason code.
        dropped = f"{prefix}-dropped"
        raw = raw_connect(mosquitto, dropped)
        server.wait_connected(dropped)
        raw.close()
        s = server.wait_disconnected(dropped)
        assert s.last_disconnect_initiator == pb.DISCONNECT_INITIATOR_NETWORK
        assert not s.HasField("last_disconnect_reason_code")
        assert s.last_close_code == 91

        # Nothing within 1.5 × keepalive: Mosquitto times it out (0x8D).
        silent = f"{prefix}-silent"
        raw = raw_connect(mosquitto, silent, keepalive=1)
        server.wait_connected(silent)
        s = server.wait_disconnected(silent, timeout=15)
        raw.close()
        assert s.last_disconnect_initiator == pb.DISCONNECT_INITIATOR_NETWORK
        assert s.last_disconnect_reason_code == 0x8D
        assert s.last_close_code == 160

        # The same client id connects again: the server took the first
        # connection over (0x8E), naming where the new one came from.
        taken = f"{prefix}-taken"
        first = raw_connect(mosquitto, taken)
        s1 = server.wait_connected(taken)
        second = raw_connect(mosquitto, taken)
        s2 = server.wait_state(taken, lambda s: s.connection_id > s1.connection_id, what="the new connection")
        assert s2.connection_status == pb.CONNECTION_STATUS_CONNECTED
        entries = server.logs(taken)
        takeover = next(e for e in entries if e.kind == pb.LOG_KIND_DISCONNECTED)
        assert takeover.initiator == pb.DISCONNECT_INITIATOR_SERVER
        assert takeover.reason_code == 0x8E
        assert takeover.close_code == 288
        assert f"{HOST}:{second.local_port}" in takeover.message
        assert takeover.connection_id == s1.connection_id
        first.close()
        second.close()
        server.wait_disconnected(taken)

        # A refused CONNECT: Mosquitto 2.0 does not name the client, so it is
        # counted, and no client gets a wrong record.
        refused = f"{prefix}-refused"
        before = metrics(server).get('connstate_source_input_total{source="site-a",outcome="unattributed"}', 0)
        c = paho_client(mosquitto, refused, password="wrong")
        assert c.connack != 0  # type: ignore[attr-defined]
        stop_paho(c)
        eventually(
            lambda: metrics(server).get('connstate_source_input_total{source="site-a",outcome="unattributed"}', 0)
            == before + 1,
            what="the refused connect counted",
        )
        assert server.state(refused) is None

        changes = eventually(
            lambda: (c := [e for e in events if e.type == WatchEventType.CHANGE and e.client_id == polite]) and len(c) >= 2 and c,
            what="watch shows the polite client",
        )
    finally:
        watch.cancel()
    kinds = [pb.ChangeKind.Name(e.change.kind) for e in changes]
    assert kinds[:2] == ["CHANGE_KIND_CONNECTED", "CHANGE_KIND_DISCONNECTED"], kinds
    assert changes[1].change.log_entry.initiator == pb.DISCONNECT_INITIATOR_CLIENT
    assert not any(e.client_id == refused for e in events if e.type == WatchEventType.CHANGE)
    assert "source site-a connected to its broker" in server.log_path.read_text()


def test_clients_of_a_source_have_monitor_messages(make_server, work_root, mosquitto):
    """A client followed on Mosquitto has its Connect and Disconnect monitor
    messages on connstate's broker, as the embedded broker's own clients
    do: the device topic (Connect retained) and $SYS/clients/{id}/mon."""
    server = make_server("--config", source_config(work_root, mosquitto, "site-m"))
    wait_source_up(server, "site-m")
    device = f"d:local:sensor:{unique('mon')}"
    device_id = device.split(":")[3]
    watcher = Peer(server, unique("watcher"))
    watcher.subscribe_ok(f"iot-2/type/sensor/id/{device_id}/mon")
    watcher.subscribe_ok(f"$SYS/clients/{device}/mon")
    try:
        c = paho_client(mosquitto, device, keepalive=30)
        server.wait_connected(device)
        connects = [watcher.expect(timeout=10) for _ in range(2)]
        for m in connects:
            body = json.loads(m.payload)
            assert body["Action"] == "Connect", body
            assert body["ClientID"] == device
            assert body["ClientAddr"] == HOST
            assert body["Protocol"] == "mqtt4"
        assert {m.topic for m in connects} == {
            f"iot-2/type/sensor/id/{device_id}/mon",
            f"$SYS/clients/{device}/mon",
        }
        c.disconnect()
        stop_paho(c)
        server.wait_disconnected(device)
        for _ in range(2):
            body = json.loads(watcher.expect(timeout=10).payload)
            assert body["Action"] == "Disconnect", body
            assert body["CloseCode"] == 0
        # The device topic keeps the Disconnect for a late subscriber.
        late = Peer(server, unique("late"))
        late.subscribe_ok(f"iot-2/type/sensor/id/{device_id}/mon")
        retained = late.expect(timeout=10)
        assert retained.retain and json.loads(retained.payload)["Action"] == "Disconnect"
        late.close()
    finally:
        watcher.close()


def test_a_mosquitto_restart_and_a_lapsed_lease(make_server, work_root, mosquitto):
    """Mosquitto restarts: its clients are recorded as disconnected by the
    server and the source reconnects. Mosquitto goes away for longer than the
    lease: the clients connected then are recorded as disconnected, naming
    the source."""
    from connstate_client import pb

    server = make_server("--config", source_config(work_root, mosquitto, "site-b", lease="2s", keep_alive="1s"))
    wait_source_up(server, "site-b")

    # The restart is seen by Mosquitto's uptime falling: let it grow first.
    uptime: list[int] = []
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique("uptime"))
    watcher.username_pw_set(DEVICE_USER, DEVICE_PASSWORD)
    watcher.on_message = lambda c, u, m: uptime.append(int(m.payload.split()[0]))
    watcher.on_connect = lambda c, u, f, rc, p: c.subscribe("$SYS/broker/uptime")
    watcher.connect(HOST, mosquitto.mqtt_port)
    watcher.loop_start()
    try:
        eventually(lambda: uptime and uptime[-1] >= 2, what="mosquitto up for 2 s")
    finally:
        watcher.loop_stop()

    before = unique("restart")
    raw = raw_connect(mosquitto, before)
    server.wait_connected(before)
    mosquitto.restart()
    raw.close()
    s = server.wait_disconnected(before, timeout=20)
    assert s.last_disconnect_initiator == pb.DISCONNECT_INITIATOR_SERVER
    assert s.last_disconnect_reason_code == 0x8B
    # The connection log says which broker restarted.
    entry = server.latest_log(before, pb.LOG_KIND_DISCONNECTED)
    assert "site-b" in entry.message and "restarted" in entry.message, entry.message
    wait_source_up(server, "site-b", connections=2)
    assert metrics(server).get('connstate_source_broker_restarts_total{source="site-b"}') == 1

    # Followed again after the restart.
    after = unique("after")
    raw = raw_connect(mosquitto, after)
    server.wait_connected(after)

    # Mosquitto goes away: the source cannot follow it; after the lease the
    # client is recorded as disconnected, naming the source.
    mosquitto.stop()
    raw.close()
    eventually(lambda: metrics(server).get('connstate_source_up{source="site-b"}') == 0, what="source down")
    s = server.wait_disconnected(after, timeout=15)
    assert s.last_disconnect_initiator == pb.DISCONNECT_INITIATOR_NETWORK
    assert s.last_close_code == 96
    entry = server.latest_log(after, pb.LOG_KIND_DISCONNECTED)
    assert "site-b" in entry.message


def test_the_source_flag_and_bad_source_config(make_server, work_root, mosquitto):
    """`--source-mosquitto URL` follows a broker as the source "mosquitto";
    a bad source refuses to start, saying which and why."""
    from connstate_client import pb

    server = make_server("--source-mosquitto", mosquitto.url())
    wait_source_up(server, "mosquitto")
    cid = unique("flag")
    raw = raw_connect(mosquitto, cid)
    assert server.wait_connected(cid).broker == "mosquitto"
    raw.close()
    assert server.wait_disconnected(cid).last_disconnect_initiator == pb.DISCONNECT_INITIATOR_NETWORK

    binary = server_binary()
    bad = work_root / f"{unique('bad')}.toml"
    bad.write_text('[[source]]\nkind = "mosquitto"\nurl = "http://x"\n')
    for args, words in (
        (["--source-mosquitto", "tcp://x"], "--source-mosquitto"),
        (["--config", str(bad)], "[[source]] number 1"),
    ):
        done = subprocess.run(
            [binary, "serve", "--data-dir", str(work_root / unique("refused")), *args],
            capture_output=True,
            timeout=30,
        )
        assert done.returncode != 0
        assert words in done.stderr.decode(), done.stderr.decode()


def server_binary() -> str:
    from conftest import connstate_binary

    return connstate_binary()
