"""The asyncio client, on ``grpc.aio``."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from . import _common as c
from ._errors import ConnstateError, from_rpc_error
from ._gen.connstate.v1 import connstate_pb2 as pb
from ._gen.connstate.v1 import connstate_pb2_grpc as pb_grpc


class AsyncClient:
    """The asyncio counterpart of :class:`connstate_client.Client`: the same
    methods, as coroutines and async iterators. Create it inside a running
    event loop; use ``async with`` or call :meth:`close`. Several addresses
    behave as there (the next server once one is UNAVAILABLE)."""

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
        # On the channel, so that calls through the raw stubs carry it too.
        interceptors = c.aio_interceptors(auth) if auth else None
        endpoints = []
        for one in addresses:
            target = c.target_of(one)
            if c.wants_tls(one, tls, root_certificates):
                creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
                channel = grpc.aio.secure_channel(target, creds, options=options, interceptors=interceptors)
            else:
                channel = grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
            endpoints.append(c.Endpoint(channel, channel))
        self._endpoints = c.Endpoints(addresses, endpoints)
        self._timeout = timeout
        self._wait_for_ready = wait_for_ready
        self._closed = False
        self._watches: weakref.WeakSet[AsyncWatch] = weakref.WeakSet()

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

    async def close(self) -> None:
        """Closes the channels; the client's watches end (without an error)."""
        self._closed = True
        for watch in list(self._watches):
            watch.cancel()
        for endpoint in self._endpoints.all:
            await endpoint.base.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel of the server in use."""
        return self._endpoints.current()[1].channel

    async def _unary(
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
                return await method(endpoint)(request, timeout=left, wait_for_ready=self._wait_for_ready)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    self._endpoints.unavailable(index)
                    if attempt + 1 < attempts:
                        continue
                raise from_rpc_error(e) from e
        raise AssertionError("unreachable")

    # -- queries ----------------------------------------------------------

    async def get(self, client_id: str, *, timeout: float | None = None) -> pb.ConnectionState:
        """The state record of one client; :class:`NotFoundError` if none."""
        return await self._unary(
            lambda e: e.states.GetConnectionState,
            pb.GetConnectionStateRequest(client_id=client_id),
            timeout,
            read=True,
        )

    async def list_pages(
        self,
        *,
        filter: c.FilterLike = None,
        order_by: str = "",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[pb.ListConnectionStatesResponse]:
        """Every page of ``ListConnectionStates``, following page tokens."""
        token = ""
        while True:
            page: pb.ListConnectionStatesResponse = await self._unary(
                lambda e: e.states.ListConnectionStates,
                c.list_states_request(filter, order_by, page_size, token),
                timeout,
                read=True,
            )
            yield page
            token = page.next_page_token
            if not token:
                return

    async def list(
        self,
        *,
        filter: c.FilterLike = None,
        order_by: str = "",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[pb.ConnectionState]:
        """State records matching ``filter``, following page tokens."""
        async for page in self.list_pages(filter=filter, order_by=order_by, page_size=page_size, timeout=timeout):
            for state in page.states:
                yield state

    async def logs(
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
    ) -> AsyncIterator[pb.LogEntry]:
        """Connection log entries, newest first, following page tokens."""
        request = c.list_logs_request(
            client_id, type_id, device_id, kinds, initiator, start_time, end_time, page_size
        )
        while True:
            page: pb.ListConnectionLogsResponse = await self._unary(
                lambda e: e.states.ListConnectionLogs, request, timeout, read=True
            )
            for entry in page.entries:
                yield entry
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
    ) -> AsyncWatch:
        """A resuming stream of :class:`WatchEvent`; see :class:`AsyncWatch`."""
        state = c.WatchState(
            filter=filter,
            kinds=kinds,
            start_revision=start_revision,
            include_snapshot=include_snapshot,
            heartbeat_interval=heartbeat_interval,
            heartbeats=heartbeats,
            resync=resync,
        )
        watch = AsyncWatch(self, state, max_retries, backoff or c.Backoff())
        self._watches.add(watch)
        if self._closed:
            watch.cancel()
        return watch

    # -- changes ----------------------------------------------------------

    async def delete(self, client_id: str, *, timeout: float | None = None) -> int:
        """Deletes a client's record and log; returns the deletion's revision."""
        response: pb.DeleteConnectionStateResponse = await self._unary(
            lambda e: e.states.DeleteConnectionState,
            pb.DeleteConnectionStateRequest(client_id=client_id),
            timeout,
        )
        return response.revision

    async def ingest(
        self,
        events: Iterable[pb.LifecycleEvent],
        *,
        broker: str,
        timeout: float | None = None,
    ) -> pb.IngestEventsResponse:
        """Records lifecycle events reported by ``broker``."""
        return await self._unary(
            lambda e: e.ingest.IngestEvents,
            pb.IngestEventsRequest(broker=broker, events=list(events)),
            timeout,
        )

    async def get_settings(self, *, timeout: float | None = None) -> pb.Settings:
        return await self._unary(lambda e: e.admin.GetSettings, pb.GetSettingsRequest(), timeout, read=True)

    async def update_settings(
        self,
        settings: pb.Settings | Mapping[str, Any],
        update_mask: Iterable[str] | None = None,
        *,
        timeout: float | None = None,
    ) -> pb.Settings:
        """Changes the settings named in ``update_mask``."""
        return await self._unary(
            lambda e: e.admin.UpdateSettings,
            c.update_settings_request(settings, update_mask),
            timeout,
        )


class AsyncWatch:
    """The asyncio counterpart of :class:`connstate_client.Watch`: iterate
    it with ``async for``; same resume and resync behaviour. :meth:`cancel`
    or leaving an ``async with`` block ends it."""

    def __init__(
        self, client: AsyncClient, state: c.WatchState, max_retries: int | None, backoff: c.Backoff
    ) -> None:
        self._client = client
        self._state = state
        self._max_retries = max_retries
        self._backoff = backoff
        self._cancelled = False
        self._wake: asyncio.Event | None = None
        self._call: Any = None
        self._iterator: AsyncIterator[c.WatchEvent] | None = None
        #: How many times the watch resumed: a stream that broke was followed
        #: by a new one that delivered its first message (failed attempts in
        #: between are not counted).
        self.reconnects = 0

    @property
    def last_revision(self) -> int | None:
        """The last revision delivered (or reached by a snapshot)."""
        return self._state.last

    def __aiter__(self) -> AsyncIterator[c.WatchEvent]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    async def __anext__(self) -> c.WatchEvent:
        return await self.__aiter__().__anext__()

    async def __aenter__(self) -> AsyncWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def cancel(self) -> None:
        """Ends the watch: a pending ``__anext__`` finishes the iteration."""
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()
        if self._wake is not None:
            self._wake.set()

    async def aclose(self) -> None:
        self.cancel()
        if self._iterator is not None:
            await self._iterator.aclose()  # type: ignore[attr-defined]

    async def _run(self) -> AsyncIterator[c.WatchEvent]:
        state = self._state
        self._wake = asyncio.Event()
        failures = 0
        broken = False  # the last stream broke; the next one's first message is a resume
        while not self._cancelled:
            error: ConnstateError | None = None
            # The server in use; the next one once this one is UNAVAILABLE.
            index, endpoint = self._client._endpoints.current()
            stub = endpoint.states
            try:
                if state.needs_anchor:
                    page = await stub.ListConnectionStates(
                        pb.ListConnectionStatesRequest(page_size=1),
                        timeout=self._client._timeout,
                    )
                    state.set_anchor(page.revision)
                call = stub.WatchConnections(state.request())
                self._call = call
                try:
                    async for response in call:
                        failures = 0
                        if broken:
                            broken = False
                            self.reconnects += 1
                        event = state.on_response(response)
                        if event is not None:
                            yield event
                finally:
                    self._call = None
                    call.cancel()
            except grpc.RpcError as e:
                if self._cancelled or self._client._closed:
                    return
                error = from_rpc_error(e)
                if error.code == grpc.StatusCode.UNAVAILABLE:
                    self._client._endpoints.unavailable(index)
            except asyncio.CancelledError:
                if self._cancelled:
                    return  # our own cancel() of the call
                raise
            except (ValueError, grpc.aio.UsageError):
                # The channel is closed: so is the client.
                if self._client._closed:
                    return
                raise
            if self._cancelled or self._client._closed:
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
                    continue
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
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass
            if self._cancelled:
                return
