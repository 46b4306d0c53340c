"""The synchronous client."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc

from . import _common as c
from ._errors import ConnstateError, from_rpc_error
from ._gen.connstate.v1 import connstate_pb2 as pb
from ._gen.connstate.v1 import connstate_pb2_grpc as pb_grpc


class Client:
    """A connection to a connstate server.

    ``address`` is ``host:port``, or several servers (a cluster's nodes) as
    a list or a comma-separated string (``"a:50051,b:50051"``): the client
    uses the first that answers and, when it goes away, the next one. A
    watch then resumes on the next server from the last revision it
    delivered; the reads (get, list, logs, settings) are retried on
    UNAVAILABLE on the next server, each address once. Writes (ingest,
    delete, update_settings) are not retried: ingest is not idempotent and a
    retried delete could answer NOT_FOUND for its own success; they fail
    with UNAVAILABLE and the next call goes to the next server. See
    clients/CONTRACT.md ("Several addresses"). Plaintext by default; pass
    ``root_certificates`` (PEM bytes) or ``tls=True`` for TLS. ``api_key``
    and ``token`` are sent with every call as
    ``authorization: Basic base64(key:token)``. ``timeout`` (seconds) is the
    default deadline of unary calls. With ``wait_for_ready=True`` unary calls
    wait (within their deadline) for the server to be reachable instead of
    failing at once with UNAVAILABLE. Use it as a context manager, or call
    :meth:`close`.
    """

    def __init__(
        self,
        address: c.AddressLike,
        *,
        api_key: str | None = None,
        token: str | None = None,
        tls: bool | None = None,
        root_certificates: bytes | None = None,
        timeout: float | None = 30.0,
        channel_options: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        wait_for_ready: bool | None = None,
    ) -> None:
        addresses = c.split_addresses(address)
        options = c.channel_options(channel_options)
        auth = c.auth_metadata(api_key, token)
        endpoints = []
        for one in addresses:
            target = c.target_of(one)
            if c.wants_tls(one, tls, root_certificates):
                creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
                base = grpc.secure_channel(target, creds, options=options)
            else:
                base = grpc.insecure_channel(target, options=options)
            channel = base
            if auth:
                # On the channel, so that calls through the raw stubs carry it too.
                channel = grpc.intercept_channel(base, c.AuthInterceptor(auth))
            endpoints.append(c.Endpoint(channel, base))
        self._endpoints = c.Endpoints(addresses, endpoints)
        self._timeout = timeout
        self._wait_for_ready = wait_for_ready
        self._closed = False
        self._watches: weakref.WeakSet[Watch] = weakref.WeakSet()

    @property
    def states_stub(self) -> pb_grpc.ConnectionStateServiceStub:
        """The generated stub of the server in use, for anything this wrapper
        does not cover (likewise ``ingest_stub`` and ``admin_stub``)."""
        return self._endpoints.current()[1].states

    @property
    def ingest_stub(self) -> pb_grpc.IngestServiceStub:
        return self._endpoints.current()[1].ingest

    @property
    def admin_stub(self) -> pb_grpc.AdminServiceStub:
        return self._endpoints.current()[1].admin

    # -- lifecycle --------------------------------------------------------

    def close(self) -> None:
        """Closes the channels; the client's watches end (without an error)."""
        self._closed = True
        for watch in list(self._watches):
            watch.cancel()
        for endpoint in self._endpoints.all:
            endpoint.base.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def channel(self) -> grpc.Channel:
        """The channel of the server in use."""
        return self._endpoints.current()[1].channel

    def _unary(
        self,
        method: Callable[[c.Endpoint], Any],
        request: Any,
        timeout: float | None,
        *,
        read: bool = False,
    ) -> Any:
        """Calls ``method`` of the server in use; a read that finds it
        UNAVAILABLE is retried on the next one, each address once, within the
        one deadline."""
        limit = self._timeout if timeout is None else timeout
        deadline = None if limit is None else time.monotonic() + limit
        attempts = len(self._endpoints) if read else 1
        for attempt in range(attempts):
            index, endpoint = self._endpoints.current()
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return method(endpoint)(request, timeout=left, wait_for_ready=self._wait_for_ready)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    self._endpoints.unavailable(index)
                    if attempt + 1 < attempts:
                        continue
                raise from_rpc_error(e) from e
        raise AssertionError("unreachable")

    # -- queries ----------------------------------------------------------

    def get(self, client_id: str, *, timeout: float | None = None) -> pb.ConnectionState:
        """The state record of one client; :class:`NotFoundError` if none."""
        return self._unary(
            lambda e: e.states.GetConnectionState,
            pb.GetConnectionStateRequest(client_id=client_id),
            timeout,
            read=True,
        )

    def list_pages(
        self,
        *,
        filter: c.FilterLike = None,
        order_by: str = "",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> Iterator[pb.ListConnectionStatesResponse]:
        """Every page of ``ListConnectionStates``, following page tokens."""
        token = ""
        while True:
            page: pb.ListConnectionStatesResponse = self._unary(
                lambda e: e.states.ListConnectionStates,
                c.list_states_request(filter, order_by, page_size, token),
                timeout,
                read=True,
            )
            yield page
            token = page.next_page_token
            if not token:
                return

    def list(
        self,
        *,
        filter: c.FilterLike = None,
        order_by: str = "",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> Iterator[pb.ConnectionState]:
        """State records matching ``filter`` (a ``ConnectionStateFilter`` or a
        mapping of its fields), in ``order_by`` order, fetched ``page_size``
        at a time (0: the server's default)."""
        for page in self.list_pages(filter=filter, order_by=order_by, page_size=page_size, timeout=timeout):
            yield from page.states

    def logs(
        self,
        client_id: str = "",
        *,
        type_id: str = "",
        device_id: str = "",
        kinds: Iterable[int] = (),
        initiator: int = 0,
        start_time: c.TimeLike = None,
        end_time: c.TimeLike = None,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> Iterator[pb.LogEntry]:
        """Connection log entries, newest first, following page tokens. An
        empty ``client_id`` means every client."""
        request = c.list_logs_request(
            client_id, type_id, device_id, kinds, initiator, start_time, end_time, page_size
        )
        while True:
            page: pb.ListConnectionLogsResponse = self._unary(
                lambda e: e.states.ListConnectionLogs, request, timeout, read=True
            )
            yield from page.entries
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def watch(
        self,
        *,
        filter: c.FilterLike = None,
        kinds: Iterable[int] = (),
        start_revision: int | None = None,
        include_snapshot: bool = False,
        heartbeat_interval: float | None = None,
        heartbeats: bool = False,
        resync: bool = True,
        max_retries: int | None = None,
        backoff: c.Backoff | None = None,
    ) -> Watch:
        """A resuming stream of :class:`WatchEvent`; see :class:`Watch`."""
        state = c.WatchState(
            filter=filter,
            kinds=kinds,
            start_revision=start_revision,
            include_snapshot=include_snapshot,
            heartbeat_interval=heartbeat_interval,
            heartbeats=heartbeats,
            resync=resync,
        )
        watch = Watch(self, state, max_retries, backoff or c.Backoff())
        self._watches.add(watch)
        if self._closed:
            watch.cancel()
        return watch

    # -- changes ----------------------------------------------------------

    def delete(self, client_id: str, *, timeout: float | None = None) -> int:
        """Deletes a client's record and log; returns the deletion's revision."""
        response: pb.DeleteConnectionStateResponse = self._unary(
            lambda e: e.states.DeleteConnectionState,
            pb.DeleteConnectionStateRequest(client_id=client_id),
            timeout,
        )
        return response.revision

    def ingest(
        self,
        events: Iterable[pb.LifecycleEvent],
        *,
        broker: str,
        timeout: float | None = None,
    ) -> pb.IngestEventsResponse:
        """Records lifecycle events reported by ``broker``."""
        return self._unary(
            lambda e: e.ingest.IngestEvents,
            pb.IngestEventsRequest(broker=broker, events=list(events)),
            timeout,
        )

    def get_settings(self, *, timeout: float | None = None) -> pb.Settings:
        return self._unary(lambda e: e.admin.GetSettings, pb.GetSettingsRequest(), timeout, read=True)

    def update_settings(
        self,
        settings: pb.Settings | Mapping[str, Any],
        update_mask: Iterable[str] | None = None,
        *,
        timeout: float | None = None,
    ) -> pb.Settings:
        """Changes the settings named in ``update_mask`` (every non-zero field
        of ``settings`` when empty). A mapping may give durations as
        ``timedelta``."""
        return self._unary(
            lambda e: e.admin.UpdateSettings,
            c.update_settings_request(settings, update_mask),
            timeout,
        )


class Watch:
    """A watch that resumes by itself. Iterate it to get
    :class:`WatchEvent` objects.

    When the connection drops, or the server ends the stream with
    UNAVAILABLE or RESOURCE_EXHAUSTED, it waits a short backoff and resumes
    from the last revision it delivered: no change is lost or repeated.
    When that revision has left the server's change feed (OUT_OF_RANGE), it
    yields a RESYNC event and starts over with a snapshot of the same filter
    (SNAPSHOT events, then SNAPSHOT_COMPLETE, then changes); with
    ``resync=False`` it raises instead. Other errors are raised as
    :class:`ConnstateError`; so is the last one after ``max_retries``
    consecutive failed attempts.

    :meth:`cancel` (from any thread) ends the iteration; so do leaving a
    ``with`` block and closing the client.

    With several server addresses, a stream that ends with UNAVAILABLE (the
    server went away) resumes on the next address.
    """

    def __init__(self, client: Client, state: c.WatchState, max_retries: int | None, backoff: c.Backoff) -> None:
        self._client = client
        self._state = state
        self._max_retries = max_retries
        self._backoff = backoff
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        self._iterator: Iterator[c.WatchEvent] | None = None
        #: How many times the watch resumed: a stream that broke was followed
        #: by a new one that delivered its first message (failed attempts in
        #: between are not counted).
        self.reconnects = 0

    @property
    def last_revision(self) -> int | None:
        """The last revision delivered (or reached by a snapshot)."""
        return self._state.last

    def __iter__(self) -> Iterator[c.WatchEvent]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    def __next__(self) -> c.WatchEvent:
        return next(iter(self))

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()
        if self._iterator is not None:
            self._iterator.close()  # type: ignore[attr-defined]

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()

    def _run(self) -> Iterator[c.WatchEvent]:
        state = self._state
        failures = 0
        broken = False  # the last stream broke; the next one's first message is a resume
        while not self._cancelled.is_set():
            error: ConnstateError | None = None
            # The server in use; the next one once this one is UNAVAILABLE.
            index, endpoint = self._client._endpoints.current()
            stub = endpoint.states
            try:
                if state.needs_anchor:
                    page = stub.ListConnectionStates(
                        pb.ListConnectionStatesRequest(page_size=1),
                        timeout=self._client._timeout,
                    )
                    state.set_anchor(page.revision)
                request = state.request()
                call = stub.WatchConnections(request)
                with self._lock:
                    self._call = call
                if self._cancelled.is_set():
                    call.cancel()
                try:
                    for response in call:
                        failures = 0
                        if broken:
                            broken = False
                            self.reconnects += 1
                        event = state.on_response(response)
                        if event is not None:
                            yield event
                finally:
                    with self._lock:
                        self._call = None
                    call.cancel()
            except grpc.RpcError as e:
                if self._cancelled.is_set() or self._client._closed:
                    return
                error = from_rpc_error(e)
                if error.code == grpc.StatusCode.UNAVAILABLE:
                    self._client._endpoints.unavailable(index)
            except ValueError:
                # grpc's "Channel closed": the client was closed (also
                # between this watch's check and its call).
                if self._client._closed:
                    return
                raise
            if self._cancelled.is_set() or self._client._closed:
                return
            step = state.on_error(error)
            if step is c.Step.RAISE:
                assert error is not None
                raise error
            broken = True
            if step is c.Step.RESYNC:
                c.log.info("watch resynchronising: %s", state.pending_resync_reason)
                yield state.resync_event()
                if error is not None and error.code == grpc.StatusCode.OUT_OF_RANGE:
                    continue  # start the snapshot at once
            failures += 1
            if self._max_retries is not None and failures > self._max_retries:
                if error is not None:
                    raise error
                raise ConnstateError(grpc.StatusCode.UNAVAILABLE, "watch stream ended repeatedly")
            delay = self._backoff.delay(failures)
            c.log.info(
                "watch resuming from revision %s in %.2fs after %s",
                state.last,
                delay,
                error.code.name if error else "end of stream",
            )
            if self._cancelled.wait(delay):
                return
