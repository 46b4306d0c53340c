"""Pieces shared by the synchronous and the asyncio clients: channel set-up,
request building and the watch resume logic."""

from __future__ import annotations

import base64
import collections
import datetime as _dt
import enum
import logging
import random
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from ._errors import ConnstateError
from ._gen.connstate.v1 import connstate_pb2 as pb
from ._gen.connstate.v1 import connstate_pb2_grpc as pb_grpc

log = logging.getLogger("connstate_client")

#: Channel options applied unless the caller overrides them: reconnect
#: quickly after the server went away, so that a resuming watch does not
#: wait for gRPC's default one second (growing to two minutes) backoff.
#: (``grpc.min_reconnect_backoff_ms`` is left alone: it is also the minimum
#: connect timeout.)
DEFAULT_CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 2000,
}

#: Status codes after which a watch resumes from the last revision it
#: delivered (the SDK contract, clients/CONTRACT.md). INTERNAL is resumable
#: only when the server named the last revision it delivered (a failed
#: server-side watcher).
#: CANCELLED reaches here only when the caller did not cancel.
_RESUMABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
}

FilterLike = Union[pb.ConnectionStateFilter, Mapping[str, Any], None]
TimeLike = Union[_dt.datetime, Timestamp, None]


def channel_options(options: Mapping[str, Any] | Sequence[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    merged = dict(DEFAULT_CHANNEL_OPTIONS)
    if options:
        items = options.items() if isinstance(options, Mapping) else options
        for key, value in items:
            merged[key] = value
    return sorted(merged.items())


def auth_metadata(api_key: str | None, token: str | None) -> tuple[tuple[str, str], ...]:
    """``authorization: Basic base64(key:token)`` when a key is given."""
    if api_key is None and token is None:
        return ()
    if api_key is None or token is None:
        raise ValueError("api_key and token must be given together")
    raw = f"{api_key}:{token}".encode()
    return (("authorization", "Basic " + base64.b64encode(raw).decode("ascii")),)


def target_of(address: str) -> str:
    """Accepts ``host:port`` or ``http://host:port`` / ``https://host:port``."""
    for prefix in ("http://", "https://", "grpc://"):
        if address.startswith(prefix):
            return address[len(prefix):].rstrip("/")
    return address


def wants_tls(address: str, tls: bool | None, root_certificates: bytes | None) -> bool:
    if tls is not None:
        return tls
    return root_certificates is not None or address.startswith("https://")



AddressLike = Union[str, Sequence[str]]


def split_addresses(address: AddressLike) -> list[str]:
    """``"a:50051"``, ``"a:50051,b:50051"`` or ``["a:50051", "b:50051"]``."""
    items = address.split(",") if isinstance(address, str) else list(address)
    out = [a.strip() for a in items if a.strip()]
    if not out:
        raise ValueError("address: no server address given")
    return out


class Endpoint:
    """One server address: its channel (``base``: without the credentials
    interceptor, for closing) and the generated stubs on it."""

    def __init__(self, channel: Any, base: Any) -> None:
        self.channel = channel
        self.base = base
        self.states = pb_grpc.ConnectionStateServiceStub(channel)
        self.ingest = pb_grpc.IngestServiceStub(channel)
        self.admin = pb_grpc.AdminServiceStub(channel)


class Endpoints:
    """The channels of a client, one per server address, and the one in use.

    Every call goes to the current one; a call that fails with UNAVAILABLE
    moves the client to the next address (clients/CONTRACT.md, "Several
    addresses"). With one address nothing ever moves."""

    def __init__(self, addresses: list[str], endpoints: list[Endpoint]) -> None:
        self.addresses = addresses
        self.all = endpoints
        self._current = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.all)

    def current(self) -> tuple[int, Endpoint]:
        with self._lock:
            index = self._current
        return index, self.all[index]

    def unavailable(self, index: int) -> None:
        """The server at ``index`` did not answer: use the next one, unless
        another call has moved on already."""
        if len(self.all) == 1:
            return
        with self._lock:
            if self._current != index:
                return
            self._current = (index + 1) % len(self.all)
            moved_to = self.addresses[self._current]
        log.info("server %s unavailable; using %s", self.addresses[index], moved_to)

def _timestamp(value: Any) -> Any:
    if isinstance(value, _dt.datetime):
        ts = Timestamp()
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        ts.FromDatetime(value)
        return ts
    return value


def state_filter(value: FilterLike) -> pb.ConnectionStateFilter | None:
    """A filter from a message, a mapping of its fields (datetimes allowed
    for the time bounds), or ``None``."""
    if value is None:
        return None
    if isinstance(value, pb.ConnectionStateFilter):
        return value
    if isinstance(value, Mapping):
        return pb.ConnectionStateFilter(**{k: _timestamp(v) for k, v in value.items()})
    raise TypeError(f"filter must be a ConnectionStateFilter or a mapping, not {type(value).__name__}")


def list_states_request(
    filter: FilterLike, order_by: str, page_size: int, page_token: str = ""
) -> pb.ListConnectionStatesRequest:
    request = pb.ListConnectionStatesRequest(order_by=order_by, page_size=page_size, page_token=page_token)
    f = state_filter(filter)
    if f is not None:
        request.filter.CopyFrom(f)
    return request


def list_logs_request(
    client_id: str,
    type_id: str,
    device_id: str,
    kinds: Iterable[int],
    initiator: int,
    start_time: TimeLike,
    end_time: TimeLike,
    page_size: int,
) -> pb.ListConnectionLogsRequest:
    request = pb.ListConnectionLogsRequest(
        client_id=client_id,
        type_id=type_id,
        device_id=device_id,
        kinds=list(kinds),  # type: ignore[arg-type]
        initiator=initiator,  # type: ignore[arg-type]
        page_size=page_size,
    )
    if start_time is not None:
        request.start_time.CopyFrom(_timestamp(start_time))
    if end_time is not None:
        request.end_time.CopyFrom(_timestamp(end_time))
    return request


def update_settings_request(
    settings: pb.Settings | Mapping[str, Any], update_mask: Iterable[str] | None
) -> pb.UpdateSettingsRequest:
    if isinstance(settings, Mapping):
        fields = dict(settings)
        for key in ("log_max_age", "feed_max_age"):
            if isinstance(fields.get(key), _dt.timedelta):
                d = Duration()
                d.FromTimedelta(fields[key])
                fields[key] = d
        settings = pb.Settings(**fields)
    return pb.UpdateSettingsRequest(settings=settings, update_mask=list(update_mask or ()))


# ---------------------------------------------------------------------------
# Watch
# ---------------------------------------------------------------------------


class WatchEventType(enum.Enum):
    """What a :class:`WatchEvent` is."""

    #: A committed change (connect, disconnect, activity, delete, ...), in
    #: revision order, each exactly once.
    CHANGE = "change"
    #: One record of a snapshot (the initial one, or after a RESYNC).
    SNAPSHOT = "snapshot"
    #: The snapshot is complete; changes after ``revision`` follow.
    SNAPSHOT_COMPLETE = "snapshot_complete"
    #: The change feed no longer holds the revision the watch had reached
    #: (or a snapshot was interrupted): discard what was built from earlier
    #: events; a fresh snapshot (SNAPSHOT events, then SNAPSHOT_COMPLETE)
    #: follows.
    RESYNC = "resync"
    #: The server's heartbeat (only with ``heartbeats=True``); ``revision`` is
    #: the newest committed revision, not one delivered to this watch.
    HEARTBEAT = "heartbeat"


@dataclass(frozen=True)
class WatchEvent:
    """One item of a resuming watch."""

    type: WatchEventType
    #: CHANGE: the change's revision. SNAPSHOT: the record's revision.
    #: SNAPSHOT_COMPLETE: the snapshot's revision. RESYNC: the last revision
    #: the watch had delivered. HEARTBEAT: the server's current revision.
    revision: int
    #: The change (CHANGE) or the snapshot record wrapped as a change of kind
    #: CHANGE_KIND_SNAPSHOT (SNAPSHOT); ``None`` otherwise.
    change: pb.Change | None = None
    #: For RESYNC: why (the server's message).
    reason: str = ""

    @property
    def client_id(self) -> str:
        return self.change.client_id if self.change is not None else ""

    @property
    def state(self) -> pb.ConnectionState | None:
        """The client's record after the change, when it has one."""
        if self.change is not None and self.change.HasField("state"):
            return self.change.state
        return None

    @property
    def kind(self) -> int:
        """The :class:`ChangeKind` of the change (0 when there is none)."""
        return self.change.kind if self.change is not None else 0


@dataclass
class Backoff:
    """Delay between attempts to resume a watch: ``initial`` seconds,
    doubled after every failed attempt up to ``maximum``, with ±20 %
    jitter; never more than ``maximum``."""

    initial: float = 0.1
    maximum: float = 5.0

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * (2 ** min(max(0, attempt - 1), 32)))
        return min(self.maximum, base * (0.8 + 0.4 * random.random()))


class Step(enum.Enum):
    RETRY = "retry"  # resume after a backoff
    RESYNC = "resync"  # emit the RESYNC event, then start a snapshot at once
    RAISE = "raise"


class WatchState:
    """The resume logic of a watch, independent of how calls are made.

    It decides each request, turns responses into events (dropping any
    change at or below the last revision delivered), and classifies errors.
    """

    def __init__(
        self,
        *,
        filter: FilterLike,
        kinds: Iterable[int],
        start_revision: int | None,
        include_snapshot: bool,
        heartbeat_interval: float | None,
        heartbeats: bool,
        resync: bool,
    ) -> None:
        if start_revision is not None and include_snapshot:
            raise ValueError("start_revision and include_snapshot cannot be combined")
        if start_revision is not None and start_revision < 0:
            raise ValueError("start_revision must be >= 0")
        self.filter = state_filter(filter)
        self.kinds = list(kinds)
        self.heartbeat_interval = heartbeat_interval
        self.heartbeats = heartbeats
        self.resync = resync
        #: Last revision delivered (or known to be covered); None until known.
        self.last: int | None = start_revision
        #: The next request must be a snapshot request.
        self.snapshot_wanted = include_snapshot
        #: A snapshot is being received (records, before SNAPSHOT_COMPLETE).
        self.in_snapshot = False
        self.snapshot_items_sent = 0
        self._snapshot_seen: dict[str, int] = {}
        #: Clients whose snapshot record was newer than the snapshot's
        #: revision: their changes up to that record's revision are already
        #: reflected and are not delivered again.
        self._skip: dict[str, int] = {}
        self.pending_resync_reason = ""

    # -- requests ---------------------------------------------------------

    @property
    def needs_anchor(self) -> bool:
        """True when neither a revision nor a snapshot anchors the watch: the
        caller must first read the store's current revision."""
        return self.last is None and not self.snapshot_wanted

    def set_anchor(self, revision: int) -> None:
        self.last = revision

    def request(self) -> pb.WatchConnectionsRequest:
        request = pb.WatchConnectionsRequest(kinds=self.kinds)  # type: ignore[arg-type]
        if self.filter is not None:
            request.filter.CopyFrom(self.filter)
        if self.heartbeat_interval is not None:
            request.heartbeat_interval.FromTimedelta(_dt.timedelta(seconds=self.heartbeat_interval))
        if self.snapshot_wanted:
            request.include_snapshot = True
            self.in_snapshot = True
            self.snapshot_items_sent = 0
            self._snapshot_seen = {}
        else:
            assert self.last is not None
            request.start_revision = self.last
        return request

    # -- responses --------------------------------------------------------

    def on_response(self, response: pb.WatchConnectionsResponse) -> WatchEvent | None:
        which = response.WhichOneof("event")
        if which == "change":
            change = response.change
            if change.kind == pb.CHANGE_KIND_SNAPSHOT:
                if not self.in_snapshot:
                    return None
                self._snapshot_seen[change.client_id] = change.revision
                self.snapshot_items_sent += 1
                return WatchEvent(WatchEventType.SNAPSHOT, change.revision, change)
            if self.in_snapshot:
                log.warning("change %d before the snapshot completed; ignored", change.revision)
                return None
            if self.last is not None and change.revision <= self.last:
                return None  # already delivered
            self.last = change.revision
            if change.kind == pb.CHANGE_KIND_ALL_DELETED:
                self._skip.clear()
            elif change.client_id in self._skip:
                if change.revision <= self._skip[change.client_id]:
                    return None  # reflected in the snapshot already
                del self._skip[change.client_id]
            return WatchEvent(WatchEventType.CHANGE, change.revision, change)
        if which == "snapshot_complete":
            revision = response.snapshot_complete.revision
            if not self.in_snapshot:
                return None
            self.in_snapshot = False
            self.snapshot_wanted = False
            self._skip = {c: r for c, r in self._snapshot_seen.items() if r > revision}
            self._snapshot_seen = {}
            self.last = revision
            return WatchEvent(WatchEventType.SNAPSHOT_COMPLETE, revision)
        if which == "heartbeat":
            if self.heartbeats:
                return WatchEvent(WatchEventType.HEARTBEAT, response.heartbeat.revision)
            return None
        return None

    # -- errors -----------------------------------------------------------

    def on_error(self, error: ConnstateError | None) -> Step:
        """Classifies how a stream ended (``None``: ended without a status)."""
        if self.in_snapshot:
            # An interrupted snapshot is started again; a caller that got
            # part of it is told to start over.
            self.snapshot_wanted = True
            if self.snapshot_items_sent:
                self.in_snapshot = False
                if error is None or error.code in _RESUMABLE or self._resumable_internal(error):
                    self.pending_resync_reason = "snapshot interrupted: " + (error.details if error else "stream ended")
                    return Step.RESYNC
                return Step.RAISE
            self.in_snapshot = False
        if error is None:
            return Step.RETRY
        if error.code == grpc.StatusCode.OUT_OF_RANGE and self.resync:
            self.pending_resync_reason = error.details
            self.snapshot_wanted = True
            self.in_snapshot = False
            return Step.RESYNC
        if error.code in _RESUMABLE or self._resumable_internal(error):
            reported = error.last_revision
            if reported is not None and not self.snapshot_wanted and self.last is not None and reported > self.last:
                # The server went through (filtered) changes up to here.
                self.last = reported
            return Step.RETRY
        return Step.RAISE

    @staticmethod
    def _resumable_internal(error: ConnstateError) -> bool:
        return error.code == grpc.StatusCode.INTERNAL and error.last_revision is not None

    def resync_event(self) -> WatchEvent:
        reason, self.pending_resync_reason = self.pending_resync_reason, ""
        return WatchEvent(WatchEventType.RESYNC, self.last or 0, None, reason)


# ---------------------------------------------------------------------------
# Credentials on every call, the raw stubs' included
# ---------------------------------------------------------------------------


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


def _with_metadata(existing: Any, extra: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    return [*(existing or ()), *extra]


class AuthInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the ``authorization`` metadata to every call of a channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, d: Any) -> _CallDetails:
        return _CallDetails(
            d.method,
            d.timeout,
            _with_metadata(d.metadata, self._metadata),
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)


def aio_interceptors(metadata: tuple[tuple[str, str], ...]) -> list[Any]:
    """The ``grpc.aio`` counterparts of :class:`AuthInterceptor`."""
    import grpc.aio

    def details(d: Any) -> Any:
        return grpc.aio.ClientCallDetails(
            d.method,
            d.timeout,
            grpc.aio.Metadata(*_with_metadata(d.metadata, metadata)),
            d.credentials,
            d.wait_for_ready,
        )

    class Unary(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
            return await continuation(details(client_call_details), request)

    class Stream(grpc.aio.UnaryStreamClientInterceptor):
        async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
            return await continuation(details(client_call_details), request)

    return [Unary(), Stream()]
