"""Exceptions raised by the connstate client."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc

#: Trailer naming the oldest revision a watch can still replay from
#: (sent with OUT_OF_RANGE).
OLDEST_REVISION_TRAILER = "x-connstate-oldest-revision"
#: Trailer naming the last revision a watch delivered (sent with
#: RESOURCE_EXHAUSTED and UNAVAILABLE when the server ends a watch).
LAST_REVISION_TRAILER = "x-connstate-last-revision"


class ConnstateError(Exception):
    """A call to the connstate service failed.

    ``code`` is the :class:`grpc.StatusCode`, ``details`` the server's message
    (it names the offending field for INVALID_ARGUMENT) and ``trailers`` the
    trailing metadata of the call.
    """

    code: grpc.StatusCode
    details: str
    trailers: dict[str, str]

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {details}" if details else code.name)
        self.code = code
        self.details = details
        self.trailers = dict(trailers or {})

    def _trailer_int(self, key: str) -> int | None:
        value = self.trailers.get(key)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            return None

    @property
    def oldest_revision(self) -> int | None:
        """For OUT_OF_RANGE from a watch: the oldest revision still replayable."""
        return self._trailer_int(OLDEST_REVISION_TRAILER)

    @property
    def last_revision(self) -> int | None:
        """For a watch ended by the server: the last revision it delivered."""
        return self._trailer_int(LAST_REVISION_TRAILER)


class NotFoundError(ConnstateError):
    """NOT_FOUND: no record for this client id."""


class InvalidArgumentError(ConnstateError):
    """INVALID_ARGUMENT: a request field is invalid; ``details`` names it."""


_BY_CODE: dict[grpc.StatusCode, type[ConnstateError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
}


def _metadata_dict(metadata: Iterable[Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if not metadata:
        return out
    for item in metadata:
        key, value = item[0], item[1]
        if isinstance(value, bytes):
            continue  # binary trailers are not used by the service
        out[str(key).lower()] = str(value)
    return out


def from_rpc_error(error: grpc.RpcError) -> ConnstateError:
    """The :class:`ConnstateError` (or subclass) for a failed gRPC call."""
    code_fn = getattr(error, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details_fn = getattr(error, "details", None)
    details = (details_fn() if callable(details_fn) else "") or ""
    trailers_fn = getattr(error, "trailing_metadata", None)
    trailers = _metadata_dict(trailers_fn() if callable(trailers_fn) else None)
    cls = _BY_CODE.get(code, ConnstateError)
    return cls(code, details, trailers)
