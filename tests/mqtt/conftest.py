"""Harness for the MQTT integration tests.

Starts the broker under test on free ports and gives the tests three kinds of
MQTT client:

* :class:`Peer` — a real paho-mqtt 2.x client (MQTT 3.1.1 or 5.0, TCP or
  WebSocket) with blocking helpers: connect, subscribe, publish, expect a
  message, disconnect with a reason code;
* :class:`RawClient` — a plain TCP socket that speaks MQTT bytes built here
  by hand, for what a well-behaved client library will not do (stay silent
  past its keepalive, send garbage, vanish without DISCONNECT);
* for connstate, the project's own Python SDK (gRPC) and REST, to read the
  connection state and logs the broker recorded.

The broker is connstate (``$CONNSTATE_BIN``, default
``<repo>/target/debug/connstate``) unless ``MQTT_TEST_BROKER=mosquitto``:
then the broker-behaviour tests run against a Mosquitto 2.x started here
(``mosquitto`` on the PATH) and the tests marked ``connstate`` are skipped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BROKER_KIND = os.environ.get("MQTT_TEST_BROKER", "connstate")
HOST = "127.0.0.1"

#: Administrator credentials of the servers started in auth mode.
ADMIN_KEY = "a-local-mqtttestadmin"
ADMIN_TOKEN = "mqtt-test-admin-token-0123456789"

T = TypeVar("T")

V311 = mqtt.MQTTv311
V5 = mqtt.MQTTv5


# ---------------------------------------------------------------------------
# pytest wiring
# ---------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "connstate: needs connstate (state, logs, monitor topics, auth)")
    config.addinivalue_line("markers", "cluster: needs a cluster of connstate nodes and NATS servers (cluster.py)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if BROKER_KIND == "connstate":
        return
    skip = pytest.mark.skip(reason=f"connstate-only test (MQTT_TEST_BROKER={BROKER_KIND})")
    for item in items:
        if "connstate" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that used a cluster (cluster.py) gets the last lines of
    its nodes' logs in its report."""
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            tails = getattr(value, "log_tails", None)
            if callable(tails):
                report.sections.append((f"cluster node logs ({report.when})", tails()))
    return report


def pytest_report_header(config: pytest.Config) -> str:
    if BROKER_KIND == "connstate":
        return f"MQTT broker under test: connstate ({connstate_binary()})"
    return f"MQTT broker under test: {BROKER_KIND}"


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------


def eventually(check: Callable[[], T | None | bool], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> T:
    """Polls ``check`` until it returns something truthy, and returns that."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s{': ' + what if what else ''}")
        time.sleep(interval)


def unique(prefix: str = "t") -> str:
    """A client id (or topic part) no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rc_value(rc: Any) -> int:
    """The number of a paho ReasonCode (or an int)."""
    return rc.value if isinstance(rc, ReasonCode) else int(rc)


def disconnect_reason(code: int) -> ReasonCode:
    return ReasonCode(PacketTypes.DISCONNECT, identifier=code)


def props(packet_type: int, **values: Any) -> Properties:
    """``props(PacketTypes.PUBLISH, UserProperty=[("a", "b")], TopicAlias=1)``"""
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


SESSION_300 = b"\x11\x00\x00\x01\x2c"  # raw v5 CONNECT property: Session Expiry Interval 300 s


def session_300(version: int) -> Properties | None:
    """Paho CONNECT properties keeping a v5 client's session 300 s after it
    disconnects; None for v3.1.1 (clean=False sessions do not expire)."""
    return props(PacketTypes.CONNECT, SessionExpiryInterval=300) if version == V5 else None


# ---------------------------------------------------------------------------
# brokers
# ---------------------------------------------------------------------------


def connstate_binary() -> str:
    return os.environ.get("CONNSTATE_BIN") or str(REPO / "target" / "debug" / "connstate")


class Broker:
    """What every broker under test offers: where to connect."""

    kind = "?"
    host = HOST
    mqtt_port = 0
    ws_port = 0

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class MosquittoBroker(Broker):
    """A Mosquitto 2.x on free ports: plain MQTT and MQTT over WebSocket."""

    kind = "mosquitto"

    def __init__(self, root: Path, extra_conf: str = "") -> None:
        self.root = root
        self.mqtt_port = free_port()
        self.ws_port = free_port()
        conf = root / "mosquitto.conf"
        conf.write_text(
            "per_listener_settings false\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"{extra_conf}"
            f"listener {self.mqtt_port} {HOST}\n"
            f"listener {self.ws_port} {HOST}\n"
            "protocol websockets\n"
        )
        self.log_path = root / "mosquitto.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([shutil.which("mosquitto") or "mosquitto", "-c", str(conf)], stdout=log, stderr=log)
        log.close()

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_path.read_text()[-2000:]}")
            for port in (self.mqtt_port, self.ws_port):
                try:
                    socket.create_connection((HOST, port), timeout=0.5).close()
                except OSError:
                    return False
            return True

        eventually(listening, timeout=15, what="mosquitto listening")

    def hangup(self) -> None:
        """SIGHUP: Mosquitto reloads its configuration (and acl_file)."""
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ConnstateServer(Broker):
    """One connstate process. ``restart()`` keeps the data dir (ports change)."""

    kind = "connstate"
    LISTENERS = ("grpc", "rest", "mqtt", "mqtt-ws")

    def __init__(self, data_dir: Path, args: list[str], auth: bool = False) -> None:
        self.data_dir = data_dir
        self.args = args
        self.auth = auth
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.stderr.log"
        self.ports: dict[str, int] = {}
        self._sdk: Any = None
        self.start()

    # -- process -------------------------------------------------------------

    def start(self) -> None:
        binary = connstate_binary()
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"connstate binary not found at {binary} (cargo build --bin connstate)")
        cmd = [
            binary,
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--grpc-listen",
            f"{HOST}:0",
            "--rest-listen",
            f"{HOST}:0",
            "--mqtt-listen",
            f"{HOST}:0",
            "--mqtt-ws-listen",
            f"{HOST}:0",
            *self.args,
        ]
        if self.auth:
            cmd += ["--auth", "true", "--admin-key", ADMIN_KEY, "--admin-token", ADMIN_TOKEN]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        ports = self._read_listeners(30)
        self.ports = ports
        self.grpc_port = ports["grpc"]
        self.rest_port = ports["rest"]
        self.mqtt_port = ports["mqtt"]
        self.ws_port = ports["mqtt-ws"]
        self._sdk = None

    def _read_listeners(self, limit: float) -> dict[str, int]:
        """The ports of :attr:`LISTENERS` as the server announces them on its
        standard output (``connstate NAME listening on ADDR``), read within
        ``limit`` seconds; its output is read on to the end, so that it never
        blocks on a full pipe."""
        assert self.proc is not None and self.proc.stdout is not None
        lines: queue.Queue[bytes] = queue.Queue()
        stdout = self.proc.stdout

        def pump() -> None:
            for line in iter(stdout.readline, b""):
                lines.put(line)
            lines.put(b"")

        threading.Thread(target=pump, daemon=True).start()
        ports: dict[str, int] = {}
        deadline = time.monotonic() + limit
        while len(ports) < len(self.LISTENERS):
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic())).decode(errors="replace").strip()
            except queue.Empty:
                self._fail_start(f"did not announce its listeners within {limit} s (got {sorted(ports)})")
            if not line and self.proc.poll() is not None:
                self._fail_start(f"exited with {self.proc.returncode} before announcing its listeners (got {sorted(ports)})")
            for name in self.LISTENERS:
                prefix = f"connstate {name} listening on "
                if line.startswith(prefix):
                    ports[name] = int(line[len(prefix) :].rsplit(":", 1)[1])
        return ports

    def _fail_start(self, why: str) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        stderr = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
        raise RuntimeError(f"connstate server {why}; stderr:\n{stderr}")

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM and wait; returns the exit code. Fails when the server
        had already died, or when its log shows a panic."""
        if self._sdk is not None:
            self._sdk.close()
            self._sdk = None
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        died = proc.poll()
        if died is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                raise AssertionError(f"connstate did not stop within {timeout} s of SIGTERM")
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        if died is not None:
            raise AssertionError(f"connstate had exited on its own (code {died}); stderr:\n{log[-3000:]}")
        if "panicked at" in log:
            start = log.index("panicked at")
            raise AssertionError(f"connstate panicked:\n{log[max(0, start - 500):start + 2000]}")
        return proc.returncode

    def restart(self) -> None:
        self.stop()
        self.start()

    def hangup(self) -> None:
        """SIGHUP: connstate reads its --acl-file again."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    # -- state through the SDK (gRPC) ----------------------------------------

    @property
    def sdk(self) -> Any:
        from connstate_client import Client

        if self._sdk is None:
            creds = {"api_key": ADMIN_KEY, "token": ADMIN_TOKEN} if self.auth else {}
            self._sdk = Client(f"{HOST}:{self.grpc_port}", timeout=10, **creds)
        return self._sdk

    def state(self, client_id: str) -> Any:
        """The ConnectionState of ``client_id``, or None when unknown."""
        from connstate_client import NotFoundError

        try:
            return self.sdk.get(client_id)
        except NotFoundError:
            return None

    def wait_state(self, client_id: str, check: Callable[[Any], bool], timeout: float = 10, what: str = "") -> Any:
        """Polls until the state of ``client_id`` passes ``check``; returns it."""
        seen: list[Any] = []

        def probe() -> Any:
            s = self.state(client_id)
            seen[:] = [s]
            return s if s is not None and check(s) else None

        try:
            return eventually(probe, timeout=timeout)
        except AssertionError:
            raise AssertionError(f"state of {client_id!r} never passed the check {what}; last seen:\n{seen[0]}") from None

    def wait_connected(self, client_id: str, **kw: Any) -> Any:
        from connstate_client import pb

        return self.wait_state(client_id, lambda s: s.connection_status == pb.CONNECTION_STATUS_CONNECTED, what="connected", **kw)

    def wait_disconnected(self, client_id: str, **kw: Any) -> Any:
        from connstate_client import pb

        return self.wait_state(
            client_id, lambda s: s.connection_status == pb.CONNECTION_STATUS_DISCONNECTED, what="disconnected", **kw
        )

    def latest_log(self, client_id: str, kind: int) -> Any:
        """The newest log entry of ``client_id``, which must be of ``kind``.

        Read once, not polled: callers have just read the state this entry
        belongs to, and a log listing shows every entry of a state already
        read."""
        entries = self.logs(client_id)
        assert entries and entries[0].kind == kind, f"newest log entry of {client_id!r} is not of kind {kind}: {entries[:1]}"
        return entries[0]

    def logs(self, client_id: str) -> list[Any]:
        """The connection log of ``client_id``, newest first."""
        return list(self.sdk.logs(client_id))

    def wait_log(self, client_id: str, check: Callable[[Any], bool], timeout: float = 10, what: str = "") -> Any:
        """Polls until the log of ``client_id`` has an entry passing ``check``."""
        seen: list[Any] = []

        def probe() -> Any:
            entries = self.logs(client_id)
            seen[:] = entries
            return next((e for e in entries if check(e)), None)

        try:
            return eventually(probe, timeout=timeout)
        except AssertionError:
            raise AssertionError(f"no log entry of {client_id!r} {what}; log:\n{seen}") from None

    # -- REST --------------------------------------------------------------

    def rest(self, method: str, path: str, body: Any = None, auth: tuple[str, str] | None = None) -> tuple[int, Any]:
        """One REST call; returns (status, parsed JSON body or None)."""
        url = f"http://{HOST}:{self.rest_port}{path}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth is None and self.auth:
            auth = (ADMIN_KEY, ADMIN_TOKEN)
        if auth is not None:
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        return status, (json.loads(raw) if raw.strip() else None)

    def rest_state(self, client_id: str) -> tuple[int, Any]:
        return self.rest("GET", "/api/v0002/clientconnectionstates/" + urllib.parse.quote(client_id, safe=""))

    # -- registry (auth mode) ----------------------------------------------

    def register_device(self, type_id: str, device_id: str) -> str:
        """Registers the device (and its type when new); returns its token."""
        status, body = self.rest("POST", "/api/v0002/device/types", {"id": type_id})
        assert status in (201, 409), (status, body)
        status, body = self.rest("POST", f"/api/v0002/device/types/{type_id}/devices", {"deviceId": device_id})
        assert status == 201, (status, body)
        return body["authToken"]

    def create_api_key(self, role: str = "operator") -> tuple[str, str]:
        status, body = self.rest("POST", "/api/v0002/apikeys", {"role": role, "description": "mqtt tests"})
        assert status == 201, (status, body)
        return body["key"], body["token"]


@pytest.fixture(scope="session")
def work_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="connstate-mqtt-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


_counter = iter(range(1_000_000))


def _start_broker(root: Path, args: list[str], auth: bool) -> Broker:
    n = next(_counter)
    if BROKER_KIND == "mosquitto":
        d = root / f"mosquitto{n}"
        d.mkdir()
        return MosquittoBroker(d)
    if BROKER_KIND != "connstate":
        raise RuntimeError(f"unknown MQTT_TEST_BROKER {BROKER_KIND!r} (connstate or mosquitto)")
    return ConnstateServer(root / f"data{n}", ["--activity-interval", "100ms", *args], auth=auth)


@pytest.fixture(scope="module")
def broker(work_root: Path) -> Iterator[Broker]:
    """One broker (open mode) shared by the tests of a module."""
    b = _start_broker(work_root, [], auth=False)
    yield b
    b.stop()


@pytest.fixture
def make_server(work_root: Path) -> Iterator[Callable[..., ConnstateServer]]:
    """Starts fresh connstate servers for one test: ``make_server(*args, auth=False)``."""
    started: list[Broker] = []

    def make(*args: str, auth: bool = False) -> ConnstateServer:
        if BROKER_KIND != "connstate":
            pytest.skip("needs connstate")
        b = _start_broker(work_root, list(args), auth)
        started.append(b)
        assert isinstance(b, ConnstateServer)
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def server(broker: Broker) -> ConnstateServer:
    """The module's broker, which must be connstate."""
    if not isinstance(broker, ConnstateServer):
        pytest.skip("needs connstate")
    return broker


# ---------------------------------------------------------------------------
# paho client wrapper
# ---------------------------------------------------------------------------


class _PahoClient(mqtt.Client):
    """paho's Client, reading the reason code of a short MQTT 5 DISCONNECT.

    paho-mqtt 2.1 takes the reason code of a DISCONNECT from the server only
    when the Remaining Length is more than 2 (eclipse-paho/paho.mqtt.python
    issue 860), so a well-formed `e0 02 8e 00` or `e0 01 8e` is reported as a
    normal disconnection. MQTT 5 §3.14.2.1: the reason code is there whenever
    the Remaining Length is at least 1.
    """

    def _handle_disconnect(self) -> None:
        body = bytes(self._in_packet["packet"])
        if self._protocol == mqtt.MQTTv5 and 1 <= len(body) <= 2:
            self.last_disconnect_bytes = body
            self._sock_close()
            self._do_on_disconnect(
                packet_from_broker=True,
                v1_rc=mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS,
                reason=ReasonCode(PacketTypes.DISCONNECT, identifier=body[0]),
                properties=None,
            )
            return
        self.last_disconnect_bytes = body
        super()._handle_disconnect()


class Peer:
    """A paho-mqtt client with blocking helpers.

    Received messages go to ``self.messages`` (a queue of MQTTMessage).
    ``connack`` is (session_present, reason code number, properties).
    After the connection ends, ``disconnected`` is set and
    ``disconnect_info`` is (DISCONNECT packet from server?, reason code
    number, properties). Never reconnects by itself.
    """

    def __init__(
        self,
        broker: Broker,
        client_id: str,
        *,
        version: int = V5,
        clean: bool = True,
        keepalive: int = 60,
        transport: str = "tcp",
        username: str | None = None,
        password: str | None = None,
        will: dict[str, Any] | None = None,
        properties: Properties | None = None,
        connect: bool = True,
        expect_success: bool = True,
        timeout: float = 10,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self.version = version
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.connack_received = threading.Event()
        self.disconnected = threading.Event()
        self.connack: tuple[bool, int, Any] | None = None
        self.disconnect_info: tuple[bool, int, Any] | None = None
        self._acks: dict[int, Any] = {}
        #: Reason code of each PUBACK / PUBREC by message id (MQTT 5).
        self.publish_codes: dict[int, int] = {}
        self._acks_cv = threading.Condition()
        kwargs: dict[str, Any] = {}
        if version != V5:
            kwargs["clean_session"] = clean
        self.client = _PahoClient(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=version,
            transport=transport,  # type: ignore[arg-type]
            reconnect_on_failure=False,
            **kwargs,
        )
        if transport == "websockets":
            self.client.ws_set_options(path="/mqtt")
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(**will)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_publish = self._on_publish
        self._clean = clean
        self._keepalive = keepalive
        self._properties = properties
        self._transport = transport
        if connect:
            self.connect(expect_success=expect_success, timeout=timeout)

    # -- callbacks (network thread) -------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, properties: Any) -> None:
        self.connack = (bool(flags.session_present), rc_value(rc), properties)
        if rc_value(rc) == 0:
            self.connected.set()
        self.connack_received.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, properties: Any) -> None:
        self.disconnect_info = (bool(flags.is_disconnect_packet_from_server), rc_value(rc), properties)
        self.connected.clear()
        self.disconnected.set()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put(message)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, rcs: list[Any], properties: Any) -> None:
        with self._acks_cv:
            self._acks[mid] = [rc_value(r) for r in rcs]
            self._acks_cv.notify_all()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, properties: Any) -> None:
        with self._acks_cv:
            self.publish_codes[mid] = rc_value(rc)
            self._acks_cv.notify_all()

    def _on_unsubscribe(self, client: Any, userdata: Any, mid: int, rcs: Any, properties: Any) -> None:
        with self._acks_cv:
            self._acks[mid] = [rc_value(r) for r in rcs] if isinstance(rcs, list) else [rc_value(rcs)]
            self._acks_cv.notify_all()

    # -- operations ---------------------------------------------------------

    @property
    def port(self) -> int:
        return self.broker.ws_port if self._transport == "websockets" else self.broker.mqtt_port

    def connect(self, *, clean: bool | None = None, expect_success: bool = True, timeout: float = 10) -> tuple[bool, int, Any]:
        """Connects (again) and waits for CONNACK; returns ``connack``."""
        self.connack_received.clear()
        self.disconnected.clear()
        self.disconnect_info = None
        kwargs: dict[str, Any] = {}
        if self.version == V5:
            kwargs["clean_start"] = self._clean if clean is None else clean
            if self._properties is not None:
                kwargs["properties"] = self._properties
        self.client.connect(self.broker.host, self.port, keepalive=self._keepalive, **kwargs)
        self.client.loop_start()
        if not self.connack_received.wait(timeout):
            if self.disconnected.is_set():
                raise AssertionError(f"{self.client_id}: connection closed before CONNACK: {self.disconnect_info}")
            raise AssertionError(f"{self.client_id}: no CONNACK within {timeout} s")
        assert self.connack is not None
        if expect_success:
            assert self.connack[1] == 0, f"{self.client_id}: CONNACK reason {self.connack[1]:#x}"
        return self.connack

    @property
    def local_port(self) -> int:
        sock = self.client.socket()
        assert sock is not None
        sock = getattr(sock, "_socket", sock)  # paho's WebSocket wrapper holds the TCP socket
        return sock.getsockname()[1]

    def _wait_ack(self, mid: int, timeout: float) -> list[int]:
        with self._acks_cv:
            ok = self._acks_cv.wait_for(lambda: mid in self._acks or self.disconnected.is_set(), timeout)
            if mid in self._acks:
                return self._acks.pop(mid)
        raise AssertionError(f"{self.client_id}: no ack for mid {mid} ({'disconnected ' + str(self.disconnect_info) if ok else 'timeout'})")

    def subscribe(
        self, topic: str, qos: int = 0, *, options: SubscribeOptions | None = None, properties: Properties | None = None, timeout: float = 10
    ) -> list[int]:
        """Subscribes and waits for SUBACK; returns its reason codes."""
        if self.version == V5:
            opts = options or SubscribeOptions(qos=qos)
            rc, mid = self.client.subscribe(topic, options=opts, properties=properties)
        else:
            rc, mid = self.client.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {rc}"
        return self._wait_ack(mid, timeout)

    def subscribe_ok(self, topic: str, qos: int = 0, **kw: Any) -> None:
        codes = self.subscribe(topic, qos, **kw)
        assert codes == [qos], f"SUBACK for {topic!r}: {codes}"

    def unsubscribe(self, topic: str, timeout: float = 10) -> list[int]:
        rc, mid = self.client.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        return self._wait_ack(mid, timeout)

    def publish(
        self, topic: str, payload: bytes | str = b"", qos: int = 0, retain: bool = False, properties: Properties | None = None, timeout: float = 10
    ) -> int:
        """Publishes and waits until sent (QoS 0) or acknowledged (QoS 1/2);
        returns the reason code of the PUBACK / PUBREC (0 for QoS 0 and
        MQTT 3.1.1)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish failed locally: {info.rc}"
        info.wait_for_publish(timeout)
        assert info.is_published(), f"{self.client_id}: publish to {topic!r} not completed within {timeout} s"
        with self._acks_cv:
            self._acks_cv.wait_for(lambda: info.mid in self.publish_codes, timeout)
            return self.publish_codes.pop(info.mid, 0)

    def expect(self, timeout: float = 5, topic: str | None = None) -> mqtt.MQTTMessage:
        """The next message (optionally: the next one on ``topic``, skipping others)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{self.client_id}: no message{' on ' + topic if topic else ''} within {timeout} s") from None
            if topic is None or msg.topic == topic:
                return msg

    def until(self, topic: str, payload: bytes | None = None, timeout: float = 5) -> list[mqtt.MQTTMessage]:
        """Every message received up to and including the first on ``topic``
        (with ``payload``, when given): a marker the test published after
        whatever must, or must not, have arrived before it."""
        got: list[mqtt.MQTTMessage] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"{self.client_id}: marker {topic!r} not received within {timeout} s; got {[m.topic for m in got]}"
                ) from None
            got.append(msg)
            if msg.topic == topic and (payload is None or msg.payload == payload):
                return got

    def quiet(self, within: float = 0.5) -> list[mqtt.MQTTMessage]:
        """Messages that arrive within ``within`` seconds (to assert none do)."""
        got: list[mqtt.MQTTMessage] = []
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        return got

    def disconnect(self, reason: int | None = None, properties: Properties | None = None, timeout: float = 10) -> None:
        """Sends DISCONNECT (with ``reason`` on v5) and waits until closed."""
        rc = disconnect_reason(reason) if reason is not None else None
        self.client.disconnect(reasoncode=rc, properties=properties)
        if not self.disconnected.wait(timeout):
            raise AssertionError(f"{self.client_id}: not disconnected within {timeout} s")
        self.client.loop_stop()

    def wait_disconnected(self, timeout: float = 10) -> tuple[bool, int, Any]:
        """Waits until the server ends the connection; returns ``disconnect_info``."""
        if not self.disconnected.wait(timeout):
            raise AssertionError(f"{self.client_id}: still connected after {timeout} s")
        assert self.disconnect_info is not None
        return self.disconnect_info

    def close(self) -> None:
        """Stops the network thread and closes the socket (no DISCONNECT)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    """``peers(broker, client_id, **options)`` → a connected Peer, closed at the end of the test."""
    made: list[Peer] = []

    def make(broker: Broker, client_id: str, **kw: Any) -> Peer:
        p = Peer(broker, client_id, connect=False, **{k: v for k, v in kw.items() if k not in ("connect", "expect_success", "timeout")})
        made.append(p)
        if kw.get("connect", True):
            p.connect(expect_success=kw.get("expect_success", True), timeout=kw.get("timeout", 10))
        return p

    yield make
    for p in made:
        try:
            if p.connected.is_set():
                p.client.disconnect()
                p.disconnected.wait(2)
        finally:
            p.close()


# ---------------------------------------------------------------------------
# raw MQTT bytes
# ---------------------------------------------------------------------------

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 8, 9, 12, 13, 14


def varint(n: int) -> bytes:
    """MQTT variable byte integer (remaining length, property length)."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


def connect_packet(
    client_id: str,
    *,
    version: int = 4,
    keepalive: int = 60,
    clean: bool = True,
    username: str | None = None,
    password: str | bytes | None = None,
    will_topic: str | None = None,
    will_payload: bytes = b"",
    will_qos: int = 0,
    will_retain: bool = False,
    properties: bytes = b"",
) -> bytes:
    """A CONNECT packet; ``version`` 4 (3.1.1) or 5. ``properties`` are raw
    (v5 only; their length prefix is added here)."""
    flags = 0
    if clean:
        flags |= 0x02
    if will_topic is not None:
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
    if password is not None:
        flags |= 0x40
    if username is not None:
        flags |= 0x80
    body = mqtt_str("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == 5:
        body += varint(len(properties)) + properties
    body += mqtt_str(client_id)
    if will_topic is not None:
        if version == 5:
            body += varint(0)  # no will properties
        body += mqtt_str(will_topic) + mqtt_str(will_payload)
    if username is not None:
        body += mqtt_str(username)
    if password is not None:
        body += mqtt_str(password)
    return packet(CONNECT << 4, body)


def publish_packet(topic: str, payload: bytes, *, qos: int = 0, packet_id: int = 1, version: int = 4, retain: bool = False) -> bytes:
    body = mqtt_str(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    if version == 5:
        body += varint(0)
    return packet((PUBLISH << 4) | (qos << 1) | (1 if retain else 0), body + payload)


def subscribe_packet(filters: list[tuple[str, int]], *, packet_id: int = 1, version: int = 4) -> bytes:
    """SUBSCRIBE with (filter, options byte) pairs."""
    body = struct.pack("!H", packet_id) + (varint(0) if version == 5 else b"")
    for topic_filter, options in filters:
        body += mqtt_str(topic_filter) + bytes([options])
    return packet((SUBSCRIBE << 4) | 0x02, body)


def disconnect_packet(version: int = 4, reason: int = 0) -> bytes:
    return packet(DISCONNECT << 4, b"" if version == 4 else bytes([reason, 0]))


class RawClient:
    """A TCP socket that speaks MQTT bytes built by hand."""

    def __init__(self, broker: Broker, timeout: float = 10) -> None:
        self.sock = socket.create_connection((broker.host, broker.mqtt_port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv(self, deadline: float) -> bytes:
        """The next bytes from the socket; b"" once the server closed it."""
        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:
            return b""

    def _fill(self, n: int, deadline: float) -> bool:
        while len(self._buf) < n:
            chunk = self._recv(deadline)
            if not chunk:
                return False
            self._buf += chunk
        return True

    def read_packet(self, timeout: float = 10) -> tuple[int, bytes] | None:
        """The next packet as (first byte, body); None when the server closed
        the connection. Raises TimeoutError when nothing came."""
        deadline = time.monotonic() + timeout
        if not self._fill(2, deadline):
            return None
        length, shift, i = 0, 0, 1
        while True:
            if not self._fill(i + 1, deadline):
                return None
            byte = self._buf[i]
            length |= (byte & 0x7F) << shift
            shift += 7
            i += 1
            if not byte & 0x80:
                break
        if not self._fill(i + length, deadline):
            return None
        first, body = self._buf[0], self._buf[i : i + length]
        self._buf = self._buf[i + length :]
        return first, body

    def connect(self, client_id: str, **kw: Any) -> bytes:
        """Sends CONNECT and returns the CONNACK body (flags, code, ...)."""
        self.send(connect_packet(client_id, **kw))
        p = self.read_packet()
        assert p is not None, "connection closed instead of CONNACK"
        assert p[0] >> 4 == CONNACK, f"expected CONNACK, got packet type {p[0] >> 4}"
        return p[1]

    def read_until_closed(self, timeout: float = 10) -> list[tuple[int, bytes]]:
        """Every packet until the server closes the connection."""
        got: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                p = self.read_packet(max(0.001, deadline - time.monotonic()))
            except (TimeoutError, socket.timeout):
                raise AssertionError(f"connection still open after {timeout} s; got {got}") from None
            if p is None:
                return got
            got.append(p)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@pytest.fixture
def raw() -> Iterator[Callable[[Broker], RawClient]]:
    made: list[RawClient] = []

    def make(broker: Broker) -> RawClient:
        c = RawClient(broker)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


class RawWsClient(RawClient):
    """MQTT bytes over a WebSocket built by hand (RFC 6455): the client
    decides how MQTT packets are cut into WebSocket messages and frames."""

    def __init__(self, broker: Broker, path: str = "/mqtt", subprotocol: str | None = "mqtt", timeout: float = 10) -> None:
        self.sock = socket.create_connection((broker.host, broker.ws_port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""
        self._raw = b""
        self.close_frame: bytes | None = None
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {broker.host}:{broker.ws_port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        )
        if subprotocol:
            request += f"Sec-WebSocket-Protocol: {subprotocol}\r\n"
        self.sock.sendall((request + "\r\n").encode())
        while b"\r\n\r\n" not in self._raw:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self._raw += chunk
        head, _, self._raw = self._raw.partition(b"\r\n\r\n")
        lines = head.decode(errors="replace").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        self.expected_accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        ).decode()

    def frame(self, payload: bytes, opcode: int = 2, fin: bool = True) -> bytes:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    def send(self, data: bytes) -> None:
        """``data`` as one binary WebSocket message."""
        self.sock.sendall(self.frame(data))

    def send_messages(self, parts: list[bytes]) -> None:
        """Each part as its own binary message."""
        self.sock.sendall(b"".join(self.frame(p) for p in parts))

    def send_fragmented(self, parts: list[bytes]) -> None:
        """One binary message in len(parts) frames (continuation frames)."""
        frames = [self.frame(p, opcode=2 if i == 0 else 0, fin=i == len(parts) - 1) for i, p in enumerate(parts)]
        self.sock.sendall(b"".join(frames))

    def _raw_fill(self, n: int, deadline: float) -> bool:
        while len(self._raw) < n:
            chunk = self._recv(deadline)
            if not chunk:
                return False
            self._raw += chunk
        return True

    def _fill(self, n: int, deadline: float) -> bool:
        while len(self._buf) < n:
            if not self._raw_fill(2, deadline):
                return False
            opcode, length, i = self._raw[0] & 0x0F, self._raw[1] & 0x7F, 2
            if length == 126:
                if not self._raw_fill(4, deadline):
                    return False
                length, i = struct.unpack("!H", self._raw[2:4])[0], 4
            elif length == 127:
                if not self._raw_fill(10, deadline):
                    return False
                length, i = struct.unpack("!Q", self._raw[2:10])[0], 10
            if self._raw[1] & 0x80:
                raise AssertionError("server sent a masked frame (RFC 6455 §5.1)")
            if not self._raw_fill(i + length, deadline):
                return False
            payload, self._raw = self._raw[i : i + length], self._raw[i + length :]
            if opcode == 8:
                self.close_frame = payload
                return False
            if opcode in (0, 1, 2):
                self._buf += payload
            # ping (9) / pong (10): ignored here
        return True
