"""A connstate cluster on loopback for the MQTT tests.

Three ``nats-server`` processes form one JetStream cluster (routes between
them, free loopback ports, config, store and log in a temporary folder), and
three ``connstate serve`` nodes, ``node1`` to ``node3``, join it with the
flags of the Rust harness (tests/common/cluster.rs): loopback listeners on
port 0, no WebSocket or TLS listener, ``--cluster-lease 3s``.

Every process runs under the same small ``sh`` guard as in
tests/common/nats.rs: it holds the read end of a pipe from this process; a
line on it stops the process (``term``: SIGTERM, anything else: SIGKILL), and
end of file (pytest ended, however: Ctrl-C, SIGKILL) kills it. Each guard has
its own process group, so a Ctrl-C reaches the servers only through it. No
server outlives the test run.

Nodes are numbered from 1, as they are named: ``cluster.node(1)`` is
``node1``. A node is a :class:`conftest.ConnstateServer` (``Peer``,
``register_device``, ``create_api_key``, ``state`` work on it as on a single
server). When a test using a cluster fails, the last lines of every node's
log are added to its report (``conftest.pytest_runtest_makereport``) and the
folder of logs and data is kept. ``CLUSTER_RUST_LOG`` replaces the nodes'
``RUST_LOG`` (by default warnings, and the cluster's and the broker's info).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ADMIN_KEY, ADMIN_TOKEN, BROKER_KIND, HOST, ConnstateServer, connstate_binary

#: A node whose lease is not renewed for this long is lost to the others.
LEASE = "3s"
LEASE_SECONDS = 3.0

#: How long the NATS cluster may take to elect its JetStream meta leader.
NATS_START_LIMIT = 20.0
#: How long a node may take to announce its listeners.
ANNOUNCE_LIMIT = 30.0
#: How long a node may take to answer 200 on /ready.
READY_LIMIT = 40.0
#: How long a process may take to stop on SIGTERM before it is killed.
STOP_GRACE = 15.0

#: Runs ``"$@"`` (the server) in the background and stops it on a line of
#: standard input (``term`` = SIGTERM, anything else = SIGKILL) or at end of
#: input; exits with the server's status once the server has ended, so that
#: waiting for the guard means the server is gone (tests/common/guard.sh,
#: which the Rust harness runs too).
GUARD = (Path(__file__).resolve().parent.parent / "common" / "guard.sh").read_text()


def nats_server_binary() -> str:
    """``$NATS_SERVER``, else ``nats-server`` on the PATH, else Debian's
    ``/usr/sbin/nats-server``."""
    named = os.environ.get("NATS_SERVER")
    if named:
        if not os.path.isfile(named):
            raise RuntimeError(f"NATS_SERVER={named} is not a file (Debian package nats-server)")
        return named
    found = shutil.which("nats-server")
    if found:
        return found
    if os.path.isfile("/usr/sbin/nats-server"):
        return "/usr/sbin/nats-server"
    raise RuntimeError(
        "nats-server not found (NATS_SERVER unset, none on PATH, no /usr/sbin/nats-server): apt-get install nats-server"
    )


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports of 127.0.0.1: all bound at once, then freed."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"({path}: {e})"
    return "\n".join(text.splitlines()[-lines:])


class Guarded:
    """One process under :data:`GUARD`, in its own process group."""

    def __init__(
        self, name: str, argv: list[str], log_path: Path, *, stdout: int | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        log = open(log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                ["sh", "-c", GUARD, f"{name}-guard", *argv],
                stdin=subprocess.PIPE,
                stdout=log if stdout is None else stdout,
                stderr=log,
                env=env,
                process_group=0,
            )
        finally:
            log.close()

    def running(self) -> bool:
        return self.proc.poll() is None

    def _tell(self, how: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(how.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # the guard has already ended

    def kill9(self) -> None:
        """SIGKILL to the server; returns once it is gone."""
        self._tell("kill")
        self.proc.wait(timeout=10)
        self._close()

    def stop(self, grace: float = STOP_GRACE) -> tuple[int, bool]:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns (exit
        status, whether it stopped on SIGTERM)."""
        self._tell("term")
        try:
            self.proc.wait(timeout=grace)
            clean = True
        except subprocess.TimeoutExpired:
            self._tell("kill")
            self.proc.wait(timeout=10)
            clean = False
        self._close()
        return self.proc.returncode, clean

    def _close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass


class NatsCluster:
    """Three ``nats-server`` processes forming one JetStream cluster."""

    def __init__(self, root: Path, n: int = 3) -> None:
        self.binary = nats_server_binary()
        self.root = root
        ports = free_ports(3 * n)
        self.client_ports, route_ports, self.monitor_ports = ports[:n], ports[n : 2 * n], ports[2 * n :]
        self.names = [f"n{i}" for i in range(n)]
        self.logs: list[Path] = []
        self.servers: list[Guarded | None] = []
        for i, name in enumerate(self.names):
            home = root / name
            home.mkdir(parents=True)
            routes = ", ".join(f"nats-route://{HOST}:{p}" for j, p in enumerate(route_ports) if j != i)
            config = home / "nats.conf"
            config.write_text(
                f"server_name: {name}\n"
                f"listen: {HOST}:{self.client_ports[i]}\n"
                f"http: {HOST}:{self.monitor_ports[i]}\n"
                "jetstream {\n"
                f"  store_dir: {json.dumps(str(home / 'store'))}\n"
                "  max_memory_store: 256MB\n"
                "  max_file_store: 256MB\n"
                "}\n"
                "cluster {\n"
                "  name: connstate-mqtt-test\n"
                f"  listen: {HOST}:{route_ports[i]}\n"
                f"  routes: [{routes}]\n"
                "}\n"
            )
            log = home / "nats.log"
            self.logs.append(log)
            self.servers.append(Guarded(f"nats-{name}", [self.binary, "-js", "-c", str(config)], log))
        self._wait_for_jetstream()

    @property
    def urls(self) -> str:
        """Every server's URL, comma-separated, as ``--cluster-nats`` takes them."""
        return ",".join(f"nats://{HOST}:{p}" for p in self.client_ports)

    def _jsz(self, i: int) -> dict:
        with urllib.request.urlopen(f"http://{HOST}:{self.monitor_ports[i]}/jsz", timeout=2) as resp:
            return json.loads(resp.read())

    def _wait_for_jetstream(self) -> None:
        """Until every server answers and each knows the same meta leader of
        a meta group of all servers (what an R3 stream needs)."""
        deadline = time.monotonic() + NATS_START_LIMIT
        last = "nothing yet"
        while True:
            for server, name in zip(self.servers, self.names):
                if server is not None and not server.running():
                    self._fail(f"nats-server {name} exited with {server.proc.returncode}")
            try:
                leaders = set()
                for i in range(len(self.names)):
                    meta = self._jsz(i).get("meta_cluster") or {}
                    size = meta.get("cluster_size", 0)
                    if not meta.get("leader") or size < len(self.names):
                        raise RuntimeError(f"{self.names[i]}: meta group {meta}")
                    leaders.add(meta["leader"])
                if len(leaders) == 1:
                    return
                last = f"servers name different meta leaders: {sorted(leaders)}"
            except (OSError, RuntimeError, ValueError) as e:
                last = str(e)
            if time.monotonic() > deadline:
                self._fail(f"the NATS cluster had no JetStream meta leader within {NATS_START_LIMIT} s: {last}")
            time.sleep(0.1)

    def log_tails(self, lines: int = 20) -> str:
        return "\n".join(
            f"--- nats-server {name}, last lines of its log:\n{tail(log, lines)}" for name, log in zip(self.names, self.logs)
        )

    def _fail(self, why: str) -> None:
        text = f"{why}\n{self.log_tails()}"
        self.stop()
        raise RuntimeError(text)

    def stop(self) -> None:
        for i, server in enumerate(self.servers):
            if server is not None:
                server.stop()
                self.servers[i] = None


class ClusterNode(ConnstateServer):
    """One ``connstate serve`` node of the cluster, under its guard.

    A :class:`ConnstateServer` for everything but its process: ``Peer``
    connects to ``mqtt_port``; ``rest``, ``register_device``, ``sdk`` and
    ``state`` talk to this node."""

    LISTENERS = ("grpc", "rest", "mqtt")

    def __init__(self, node_id: str, data_dir: Path, nats_urls: str, extra: list[str], auth: bool) -> None:
        # Not ConnstateServer.__init__: that starts a standalone server.
        self.id = node_id
        self.data_dir = data_dir
        self.args = extra
        self.auth = auth
        self.nats_urls = nats_urls
        self.log_path = data_dir.parent / f"{node_id}.log"
        self.guard: Guarded | None = None
        self.proc = None
        self.ports = {}
        self._sdk = None
        self.ws_port = 0
        data_dir.mkdir(parents=True)
        self.start()

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.rest_port}"

    @property
    def broker_name(self) -> str:
        """The name this node's embedded broker has in connection records."""
        return f"embedded@{self.id}"

    def start(self) -> None:
        binary = connstate_binary()
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"connstate binary not found at {binary} (cargo build --bin connstate)")
        argv = [
            binary,
            "serve",
            "--grpc-listen",
            f"{HOST}:0",
            "--rest-listen",
            f"{HOST}:0",
            "--mqtt-listen",
            f"{HOST}:0",
            "--mqtt-ws-listen",
            "off",
            "--mqtt-tls-listen",
            "off",
            "--cluster-nats",
            self.nats_urls,
            "--node-id",
            self.id,
            "--cluster-lease",
            LEASE,
            *self.args,
            "--data-dir",
            str(self.data_dir),
        ]
        if self.auth:
            argv += ["--auth", "true", "--admin-key", ADMIN_KEY, "--admin-token", ADMIN_TOKEN]
        env = {**os.environ, "RUST_LOG": os.environ.get("CLUSTER_RUST_LOG", "warn,connstate::cluster=info,connstate::mqtt=info")}
        self.guard = Guarded(self.id, argv, self.log_path, stdout=subprocess.PIPE, env=env)
        self.proc = self.guard.proc
        ports = self._read_listeners(ANNOUNCE_LIMIT)
        self.ports = ports
        self.grpc_port, self.rest_port, self.mqtt_port = ports["grpc"], ports["rest"], ports["mqtt"]

    def _fail_start(self, why: str) -> None:
        if self.guard is not None and self.guard.running():
            self.guard.kill9()
        raise RuntimeError(f"{self.id} {why}\n--- last lines of its log:\n{tail(self.log_path)}")

    def ready(self) -> tuple[int, str]:
        """The status and body of ``/ready``."""
        try:
            with urllib.request.urlopen(f"{self.rest_url}/ready", timeout=2) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def wait_ready(self, deadline: float) -> None:
        last = "no answer"
        while True:
            try:
                status, body = self.ready()
                if status == 200:
                    return
                last = f"{status}: {body}"
            except OSError as e:
                last = str(e)
            if not self.running:
                self._fail_start(f"exited with {self.proc.returncode if self.proc else '?'} while waiting for /ready")
            if time.monotonic() > deadline:
                self._fail_start(f"not ready within {READY_LIMIT} s: {last}")
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.guard is not None and self.guard.running()

    def kill9(self) -> None:
        """SIGKILL; returns once the node is gone."""
        if self._sdk is not None:
            self._sdk.close()
            self._sdk = None
        assert self.guard is not None and self.guard.running(), f"{self.id} is not running"
        self.guard.kill9()
        self.guard = None
        self.proc = None

    def stop(self, timeout: float = STOP_GRACE) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); fails when the node
        had died on its own, did not stop on SIGTERM, or logged a panic."""
        if self._sdk is not None:
            self._sdk.close()
            self._sdk = None
        if self.guard is None:
            return None
        guard, self.guard, self.proc = self.guard, None, None
        died = guard.proc.poll()
        code, clean = guard.stop(timeout)
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        if died is not None:
            raise AssertionError(f"{self.id} had exited on its own (code {died}); log:\n{log[-3000:]}")
        if not clean:
            raise AssertionError(f"{self.id} did not stop within {timeout} s of SIGTERM")
        if "panicked at" in log:
            start = log.index("panicked at")
            raise AssertionError(f"{self.id} panicked:\n{log[max(0, start - 500) : start + 2000]}")
        return code

    def restart(self) -> None:  # pragma: no cover - not offered in a cluster
        raise NotImplementedError("a cluster node is not restarted by these tests")


class Cluster:
    """A NATS JetStream cluster of three and connstate nodes joined to it.

    A context manager: leaving it stops every node, then every NATS server,
    whatever happened. ``extra`` flags go to every node; ``auth`` starts them
    in auth mode with the administrator key of conftest.py."""

    def __init__(self, n: int = 3, extra: list[str] | None = None, auth: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="connstate-mqtt-cluster-"))
        self.keep = False
        self.auth = auth
        self.nats: NatsCluster | None = None
        self.nodes: list[ClusterNode] = []
        try:
            started = time.monotonic()
            self.nats = NatsCluster(self.dir / "nats")
            for i in range(1, n + 1):
                node_id = f"node{i}"
                self.nodes.append(ClusterNode(node_id, self.dir / node_id, self.nats.urls, list(extra or []), auth))
            deadline = time.monotonic() + READY_LIMIT
            for node in self.nodes:
                node.wait_ready(deadline)
            self.start_seconds = time.monotonic() - started
        except BaseException:
            self.keep = True
            self._stop_all()
            raise

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.keep = True
        self.stop()

    def node(self, i: int) -> ClusterNode:
        """``node{i}``, counted from 1."""
        assert 1 <= i <= len(self.nodes), f"no node{i} (nodes 1 to {len(self.nodes)})"
        return self.nodes[i - 1]

    def mqtt_port(self, i: int) -> int:
        return self.node(i).mqtt_port

    def rest_url(self, i: int) -> str:
        return self.node(i).rest_url

    def kill9(self, i: int) -> None:
        """SIGKILL to ``node{i}``; returns once it is gone."""
        self.node(i).kill9()

    def log_tails(self, lines: int = 30) -> str:
        """The last lines of every node's log (for a failure report); keeps
        the folder of logs and data."""
        self.keep = True
        parts = [
            f"--- {node.id} ({'running' if node.running else 'not running'}), last lines of its log:\n{tail(node.log_path, lines)}"
            for node in self.nodes
        ]
        parts.append(f"--- node logs and data kept in {self.dir}")
        return "\n".join(parts)

    def _stop_all(self) -> list[str]:
        problems = []
        for node in self.nodes:
            try:
                node.stop()
            except AssertionError as e:
                problems.append(str(e))
            except Exception as e:  # keep stopping the others
                problems.append(f"{node.id}: {e!r}")
        if self.nats is not None:
            self.nats.stop()
        return problems

    def stop(self) -> None:
        """Stops every node (SIGTERM), then NATS; fails when a node had
        died on its own or panicked."""
        problems = self._stop_all()
        if problems:
            self.keep = True
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        if problems:
            raise AssertionError("\n".join(problems) + f"\n--- node logs and data kept in {self.dir}")


def _needs_connstate() -> None:
    if BROKER_KIND != "connstate":
        pytest.skip(f"a cluster of connstate nodes (MQTT_TEST_BROKER={BROKER_KIND})")


@pytest.fixture(scope="module")
def cluster3() -> Iterator[Cluster]:
    """Three open-mode nodes shared by the tests of a module that kill no node."""
    _needs_connstate()
    with Cluster() as c:
        yield c


@pytest.fixture(scope="module")
def auth_cluster3() -> Iterator[Cluster]:
    """Three auth-mode nodes shared by the tests of a module."""
    _needs_connstate()
    with Cluster(auth=True) as c:
        yield c


@pytest.fixture
def fresh_cluster3() -> Iterator[Cluster]:
    """Three open-mode nodes of their own, for a test that kills one."""
    _needs_connstate()
    with Cluster() as c:
        yield c
