"""Test harness: runs the real connstate server binary on free ports."""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from connstate_client import pb

HERE = Path(__file__).resolve().parent
DEFAULT_BIN = HERE.parent.parent.parent / "target" / "debug" / "connstate"
BROKER = "sdk-test"
# A fixed base time for the test process: an hour ago, whole seconds, well
# inside every retention period.
BASE_TIME = int(time.time()) - 3600

T = TypeVar("T")

#: The administrator key every test server is started with (when the server
#: supports API keys), and the credentials every test client sends.
AUTH = {"api_key": "sdk-test-admin", "token": "sdk-test-token-0123456789"}


def server_has_flag(flag: str) -> bool:
    """Whether ``connstate serve`` of the binary under test takes ``flag``."""
    global _SERVE_HELP
    if _SERVE_HELP is None:
        _SERVE_HELP = subprocess.run(
            [server_binary(), "serve", "--help"], capture_output=True, text=True, timeout=30
        ).stdout
    return f"{flag} " in _SERVE_HELP


def server_supports_auth() -> bool:
    """Whether the server binary has API keys (``--auth``)."""
    return server_has_flag("--admin-key")


_SERVE_HELP: str | None = None


def server_binary() -> str:
    return os.environ.get("CONNSTATE_BIN") or str(DEFAULT_BIN)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One connstate server process. ``restart()`` keeps port and data dir."""

    def __init__(self, data_dir: Path, args: list[str], port: int = 0) -> None:
        self.data_dir = data_dir
        self.args = args
        self.port = port
        #: The REST gateway's base URL (``http://host:port``), when it has one.
        self.rest: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [
            server_binary(),
            "serve",
            "--grpc-listen",
            f"127.0.0.1:{self.port}",
            "--data-dir",
            str(self.data_dir),
            *self.args,
        ]
        if server_has_flag("--rest-listen"):
            # The REST gateway listens too (8080 by default): any free port.
            cmd += ["--rest-listen", "127.0.0.1:0"]
        if server_has_flag("--mqtt-listen"):
            # So does the MQTT broker (1883 and 8083 by default).
            cmd += ["--mqtt-listen", "127.0.0.1:0", "--mqtt-ws-listen", "127.0.0.1:0"]
        if server_supports_auth():
            cmd += ["--auth", "true", "--admin-key", AUTH["api_key"], "--admin-token", AUTH["token"]]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
        log.close()
        assert self.proc.stdout is not None
        lines: queue.Queue[bytes] = queue.Queue()
        stdout = self.proc.stdout
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            first = lines.get(timeout=20).decode().strip()
        except queue.Empty:
            self.proc.kill()
            raise RuntimeError("server did not report its address within 20 s")
        prefix = "connstate grpc listening on "
        if not first.startswith(prefix):
            self.proc.kill()
            raise RuntimeError(f"unexpected first line {first!r}; log: {self.log_path.read_text()[:2000]}")
        self.port = int(first[len(prefix):].rsplit(":", 1)[1])
        if server_has_flag("--rest-listen"):
            threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
            second = lines.get(timeout=20).decode().strip()
            rest_prefix = "connstate rest listening on "
            if second.startswith(rest_prefix):
                self.rest = "http://" + second[len(rest_prefix):]
        # Keep draining stdout so that the server never blocks on it.
        threading.Thread(target=lambda: stdout.read(), daemon=True).start()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to close anything."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None

    def create_key(self, role: str) -> tuple[str, str]:
        """Creates an API key with ``role`` through the REST API: (key, token)."""
        assert self.rest is not None, "this server has no REST gateway"
        raw = base64.b64encode(f"{AUTH['api_key']}:{AUTH['token']}".encode()).decode()
        request = urllib.request.Request(
            self.rest + "/api/v0002/apikeys",
            data=json.dumps({"role": role, "description": "python sdk test"}).encode(),
            headers={"authorization": "Basic " + raw, "content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.loads(response.read())
        return body["key"], body["token"]

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def make_server() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []
    root = Path(tempfile.mkdtemp(prefix="connstate-py-"))

    def make(*args: str, port: int = 0) -> Server:
        data_dir = root / f"data{len(servers)}"
        server = Server(data_dir, list(args), port)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    return make_server()


def at(secs: int) -> Timestamp:
    return Timestamp(seconds=BASE_TIME + secs)


def info(port: int) -> pb.ConnectionInfo:
    return pb.ConnectionInfo(
        client_addr="192.0.2.10",
        port=port,
        protocol=pb.MQTT_PROTOCOL_V3_1_1,
        keep_alive_seconds=60,
        username="use-token-auth",
        clean_session=True,
    )


def connected(client_id: str, connection_id: int, secs: int = 0) -> pb.LifecycleEvent:
    return pb.LifecycleEvent(
        client_id=client_id,
        time=at(secs),
        connection_id=connection_id,
        connected=pb.Connected(info=info(40_000 + connection_id % 20_000)),
    )


def disconnected(
    client_id: str,
    connection_id: int,
    secs: int = 1,
    cause: int = pb.DISCONNECT_CAUSE_CLIENT_DISCONNECT,
) -> pb.LifecycleEvent:
    return pb.LifecycleEvent(
        client_id=client_id,
        time=at(secs),
        connection_id=connection_id,
        disconnected=pb.Disconnected(cause=cause),  # type: ignore[arg-type]
    )


def eventually(check: Callable[[], T | None], limit: float = 15.0, interval: float = 0.02) -> T:
    """Polls ``check`` until it returns something other than None."""
    deadline = time.monotonic() + limit
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {limit} s")
        time.sleep(interval)
