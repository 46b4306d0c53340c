"""Python client for connstate, the connection state of MQTT fleets.

``Client`` is synchronous, ``AsyncClient`` runs on asyncio (``grpc.aio``).
Both return the generated protobuf messages (see :mod:`connstate_client.pb`)
and raise :class:`ConnstateError` (or its subclasses :class:`NotFoundError`
and :class:`InvalidArgumentError`) carrying the gRPC status code.
"""

from ._async import AsyncClient, AsyncWatch
from ._common import Backoff, WatchEvent, WatchEventType
from ._errors import (
    LAST_REVISION_TRAILER,
    OLDEST_REVISION_TRAILER,
    ConnstateError,
    InvalidArgumentError,
    NotFoundError,
)
from ._gen.connstate.v1 import connstate_pb2 as pb
from ._gen.connstate.v1 import connstate_pb2_grpc as pb_grpc
from ._sync import Client, Watch

# Enumerations, for short imports (``ConnectionStatus.CONNECTION_STATUS_CONNECTED``).
ActivityKind = pb.ActivityKind
ChangeKind = pb.ChangeKind
ClientType = pb.ClientType
ConnectFailure = pb.ConnectFailure
ConnectionStatus = pb.ConnectionStatus
DisconnectCause = pb.DisconnectCause
DisconnectInitiator = pb.DisconnectInitiator
LogKind = pb.LogKind
MqttProtocol = pb.MqttProtocol

__version__ = "0.1.0"

__all__ = [
    "ActivityKind",
    "AsyncClient",
    "AsyncWatch",
    "Backoff",
    "ChangeKind",
    "Client",
    "ClientType",
    "ConnectFailure",
    "ConnectionStatus",
    "ConnstateError",
    "DisconnectCause",
    "DisconnectInitiator",
    "InvalidArgumentError",
    "LAST_REVISION_TRAILER",
    "LogKind",
    "MqttProtocol",
    "NotFoundError",
    "OLDEST_REVISION_TRAILER",
    "Watch",
    "WatchEvent",
    "WatchEventType",
    "pb",
    "pb_grpc",
]
