import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClientType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLIENT_TYPE_UNSPECIFIED: _ClassVar[ClientType]
    CLIENT_TYPE_DEVICE: _ClassVar[ClientType]
    CLIENT_TYPE_GATEWAY: _ClassVar[ClientType]
    CLIENT_TYPE_APPLICATION: _ClassVar[ClientType]
    CLIENT_TYPE_UNKNOWN: _ClassVar[ClientType]

class ConnectionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONNECTION_STATUS_UNSPECIFIED: _ClassVar[ConnectionStatus]
    CONNECTION_STATUS_CONNECTED: _ClassVar[ConnectionStatus]
    CONNECTION_STATUS_DISCONNECTED: _ClassVar[ConnectionStatus]

class ActivityKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTIVITY_KIND_UNSPECIFIED: _ClassVar[ActivityKind]
    ACTIVITY_KIND_CONNECT: _ClassVar[ActivityKind]
    ACTIVITY_KIND_PUBLISH: _ClassVar[ActivityKind]
    ACTIVITY_KIND_SUBSCRIBE: _ClassVar[ActivityKind]
    ACTIVITY_KIND_UNSUBSCRIBE: _ClassVar[ActivityKind]
    ACTIVITY_KIND_PING: _ClassVar[ActivityKind]
    ACTIVITY_KIND_DISCONNECT: _ClassVar[ActivityKind]

class MqttProtocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MQTT_PROTOCOL_UNSPECIFIED: _ClassVar[MqttProtocol]
    MQTT_PROTOCOL_V3_1: _ClassVar[MqttProtocol]
    MQTT_PROTOCOL_V3_1_1: _ClassVar[MqttProtocol]
    MQTT_PROTOCOL_V5_0: _ClassVar[MqttProtocol]

class DisconnectInitiator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISCONNECT_INITIATOR_UNSPECIFIED: _ClassVar[DisconnectInitiator]
    DISCONNECT_INITIATOR_CLIENT: _ClassVar[DisconnectInitiator]
    DISCONNECT_INITIATOR_SERVER: _ClassVar[DisconnectInitiator]
    DISCONNECT_INITIATOR_NETWORK: _ClassVar[DisconnectInitiator]

class DisconnectCause(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISCONNECT_CAUSE_UNSPECIFIED: _ClassVar[DisconnectCause]
    DISCONNECT_CAUSE_CLIENT_DISCONNECT: _ClassVar[DisconnectCause]
    DISCONNECT_CAUSE_SOCKET_CLOSED: _ClassVar[DisconnectCause]
    DISCONNECT_CAUSE_KEEP_ALIVE_TIMEOUT: _ClassVar[DisconnectCause]
    DISCONNECT_CAUSE_SESSION_TAKEN_OVER: _ClassVar[DisconnectCause]
    DISCONNECT_CAUSE_MALFORMED_PACKET: _ClassVar[DisconnectCause]
    DISCONNECT_CAUSE_PROTOCOL_ERROR: _ClassVar[DisconnectCause]
    DISCONNECT_CAUSE_PACKET_TOO_LARGE: _ClassVar[DisconnectCause]
    DISCONNECT_CAUSE_ADMINISTRATIVE_ACTION: _ClassVar[DisconnectCause]
    DISCONNECT_CAUSE_CREDENTIALS_REVOKED: _ClassVar[DisconnectCause]
    DISCONNECT_CAUSE_SERVER_SHUTTING_DOWN: _ClassVar[DisconnectCause]
    DISCONNECT_CAUSE_SERVER_RESTARTED: _ClassVar[DisconnectCause]

class ConnectFailure(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONNECT_FAILURE_UNSPECIFIED: _ClassVar[ConnectFailure]
    CONNECT_FAILURE_BAD_CREDENTIALS: _ClassVar[ConnectFailure]
    CONNECT_FAILURE_NOT_AUTHORIZED: _ClassVar[ConnectFailure]
    CONNECT_FAILURE_BAD_CLIENT_ID: _ClassVar[ConnectFailure]
    CONNECT_FAILURE_UNSUPPORTED_PROTOCOL: _ClassVar[ConnectFailure]
    CONNECT_FAILURE_SERVER_BUSY: _ClassVar[ConnectFailure]

class LogKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_KIND_UNSPECIFIED: _ClassVar[LogKind]
    LOG_KIND_CONNECTED: _ClassVar[LogKind]
    LOG_KIND_CONNECT_FAILED: _ClassVar[LogKind]
    LOG_KIND_DISCONNECTED: _ClassVar[LogKind]

class ChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_KIND_UNSPECIFIED: _ClassVar[ChangeKind]
    CHANGE_KIND_CONNECTED: _ClassVar[ChangeKind]
    CHANGE_KIND_CONNECT_FAILED: _ClassVar[ChangeKind]
    CHANGE_KIND_DISCONNECTED: _ClassVar[ChangeKind]
    CHANGE_KIND_STALE: _ClassVar[ChangeKind]
    CHANGE_KIND_ACTIVITY: _ClassVar[ChangeKind]
    CHANGE_KIND_DELETED: _ClassVar[ChangeKind]
    CHANGE_KIND_ALL_DELETED: _ClassVar[ChangeKind]
    CHANGE_KIND_SNAPSHOT: _ClassVar[ChangeKind]
CLIENT_TYPE_UNSPECIFIED: ClientType
CLIENT_TYPE_DEVICE: ClientType
CLIENT_TYPE_GATEWAY: ClientType
CLIENT_TYPE_APPLICATION: ClientType
CLIENT_TYPE_UNKNOWN: ClientType
CONNECTION_STATUS_UNSPECIFIED: ConnectionStatus
CONNECTION_STATUS_CONNECTED: ConnectionStatus
CONNECTION_STATUS_DISCONNECTED: ConnectionStatus
ACTIVITY_KIND_UNSPECIFIED: ActivityKind
ACTIVITY_KIND_CONNECT: ActivityKind
ACTIVITY_KIND_PUBLISH: ActivityKind
ACTIVITY_KIND_SUBSCRIBE: ActivityKind
ACTIVITY_KIND_UNSUBSCRIBE: ActivityKind
ACTIVITY_KIND_PING: ActivityKind
ACTIVITY_KIND_DISCONNECT: ActivityKind
MQTT_PROTOCOL_UNSPECIFIED: MqttProtocol
MQTT_PROTOCOL_V3_1: MqttProtocol
MQTT_PROTOCOL_V3_1_1: MqttProtocol
MQTT_PROTOCOL_V5_0: MqttProtocol
DISCONNECT_INITIATOR_UNSPECIFIED: DisconnectInitiator
DISCONNECT_INITIATOR_CLIENT: DisconnectInitiator
DISCONNECT_INITIATOR_SERVER: DisconnectInitiator
DISCONNECT_INITIATOR_NETWORK: DisconnectInitiator
DISCONNECT_CAUSE_UNSPECIFIED: DisconnectCause
DISCONNECT_CAUSE_CLIENT_DISCONNECT: DisconnectCause
DISCONNECT_CAUSE_SOCKET_CLOSED: DisconnectCause
DISCONNECT_CAUSE_KEEP_ALIVE_TIMEOUT: DisconnectCause
DISCONNECT_CAUSE_SESSION_TAKEN_OVER: DisconnectCause
DISCONNECT_CAUSE_MALFORMED_PACKET: DisconnectCause
DISCONNECT_CAUSE_PROTOCOL_ERROR: DisconnectCause
DISCONNECT_CAUSE_PACKET_TOO_LARGE: DisconnectCause
DISCONNECT_CAUSE_ADMINISTRATIVE_ACTION: DisconnectCause
DISCONNECT_CAUSE_CREDENTIALS_REVOKED: DisconnectCause
DISCONNECT_CAUSE_SERVER_SHUTTING_DOWN: DisconnectCause
DISCONNECT_CAUSE_SERVER_RESTARTED: DisconnectCause
CONNECT_FAILURE_UNSPECIFIED: ConnectFailure
CONNECT_FAILURE_BAD_CREDENTIALS: ConnectFailure
CONNECT_FAILURE_NOT_AUTHORIZED: ConnectFailure
CONNECT_FAILURE_BAD_CLIENT_ID: ConnectFailure
CONNECT_FAILURE_UNSUPPORTED_PROTOCOL: ConnectFailure
CONNECT_FAILURE_SERVER_BUSY: ConnectFailure
LOG_KIND_UNSPECIFIED: LogKind
LOG_KIND_CONNECTED: LogKind
LOG_KIND_CONNECT_FAILED: LogKind
LOG_KIND_DISCONNECTED: LogKind
CHANGE_KIND_UNSPECIFIED: ChangeKind
CHANGE_KIND_CONNECTED: ChangeKind
CHANGE_KIND_CONNECT_FAILED: ChangeKind
CHANGE_KIND_DISCONNECTED: ChangeKind
CHANGE_KIND_STALE: ChangeKind
CHANGE_KIND_ACTIVITY: ChangeKind
CHANGE_KIND_DELETED: ChangeKind
CHANGE_KIND_ALL_DELETED: ChangeKind
CHANGE_KIND_SNAPSHOT: ChangeKind

class ConnectionState(_message.Message):
    __slots__ = ("client_id", "client_type", "type_id", "device_id", "app_id", "org_id", "connection_status", "last_connect_time", "last_disconnect_time", "last_activity_event", "last_activity_time", "mqtt_connect_protocol", "last_disconnect_initiator", "last_disconnect_reason_code", "last_disconnect_reason", "last_close_code", "client_addr", "port", "secure", "username", "keep_alive_seconds", "clean_session", "connection_id", "revision", "expected_alive_until", "counters", "broker")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TYPE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_CONNECT_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_DISCONNECT_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVITY_EVENT_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVITY_TIME_FIELD_NUMBER: _ClassVar[int]
    MQTT_CONNECT_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    LAST_DISCONNECT_INITIATOR_FIELD_NUMBER: _ClassVar[int]
    LAST_DISCONNECT_REASON_CODE_FIELD_NUMBER: _ClassVar[int]
    LAST_DISCONNECT_REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_CLOSE_CODE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDR_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    SECURE_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CLEAN_SESSION_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_ALIVE_UNTIL_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    BROKER_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    client_type: ClientType
    type_id: str
    device_id: str
    app_id: str
    org_id: str
    connection_status: ConnectionStatus
    last_connect_time: _timestamp_pb2.Timestamp
    last_disconnect_time: _timestamp_pb2.Timestamp
    last_activity_event: ActivityKind
    last_activity_time: _timestamp_pb2.Timestamp
    mqtt_connect_protocol: MqttProtocol
    last_disconnect_initiator: DisconnectInitiator
    last_disconnect_reason_code: int
    last_disconnect_reason: str
    last_close_code: int
    client_addr: str
    port: int
    secure: bool
    username: str
    keep_alive_seconds: int
    clean_session: bool
    connection_id: int
    revision: int
    expected_alive_until: _timestamp_pb2.Timestamp
    counters: ConnectionCounters
    broker: str
    def __init__(self, client_id: _Optional[str] = ..., client_type: _Optional[_Union[ClientType, str]] = ..., type_id: _Optional[str] = ..., device_id: _Optional[str] = ..., app_id: _Optional[str] = ..., org_id: _Optional[str] = ..., connection_status: _Optional[_Union[ConnectionStatus, str]] = ..., last_connect_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_disconnect_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_activity_event: _Optional[_Union[ActivityKind, str]] = ..., last_activity_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., mqtt_connect_protocol: _Optional[_Union[MqttProtocol, str]] = ..., last_disconnect_initiator: _Optional[_Union[DisconnectInitiator, str]] = ..., last_disconnect_reason_code: _Optional[int] = ..., last_disconnect_reason: _Optional[str] = ..., last_close_code: _Optional[int] = ..., client_addr: _Optional[str] = ..., port: _Optional[int] = ..., secure: _Optional[bool] = ..., username: _Optional[str] = ..., keep_alive_seconds: _Optional[int] = ..., clean_session: _Optional[bool] = ..., connection_id: _Optional[int] = ..., revision: _Optional[int] = ..., expected_alive_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., counters: _Optional[_Union[ConnectionCounters, _Mapping]] = ..., broker: _Optional[str] = ...) -> None: ...

class ConnectionCounters(_message.Message):
    __slots__ = ("connects", "failed_connects", "takeovers", "disconnects_by_client", "disconnects_by_server", "disconnects_by_network")
    CONNECTS_FIELD_NUMBER: _ClassVar[int]
    FAILED_CONNECTS_FIELD_NUMBER: _ClassVar[int]
    TAKEOVERS_FIELD_NUMBER: _ClassVar[int]
    DISCONNECTS_BY_CLIENT_FIELD_NUMBER: _ClassVar[int]
    DISCONNECTS_BY_SERVER_FIELD_NUMBER: _ClassVar[int]
    DISCONNECTS_BY_NETWORK_FIELD_NUMBER: _ClassVar[int]
    connects: int
    failed_connects: int
    takeovers: int
    disconnects_by_client: int
    disconnects_by_server: int
    disconnects_by_network: int
    def __init__(self, connects: _Optional[int] = ..., failed_connects: _Optional[int] = ..., takeovers: _Optional[int] = ..., disconnects_by_client: _Optional[int] = ..., disconnects_by_server: _Optional[int] = ..., disconnects_by_network: _Optional[int] = ...) -> None: ...

class LogEntry(_message.Message):
    __slots__ = ("client_id", "message", "timestamp", "kind", "initiator", "reason_code", "close_code", "client_addr", "port", "protocol", "connection_id", "revision", "stale")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    INITIATOR_FIELD_NUMBER: _ClassVar[int]
    REASON_CODE_FIELD_NUMBER: _ClassVar[int]
    CLOSE_CODE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDR_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    message: str
    timestamp: _timestamp_pb2.Timestamp
    kind: LogKind
    initiator: DisconnectInitiator
    reason_code: int
    close_code: int
    client_addr: str
    port: int
    protocol: MqttProtocol
    connection_id: int
    revision: int
    stale: bool
    def __init__(self, client_id: _Optional[str] = ..., message: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[_Union[LogKind, str]] = ..., initiator: _Optional[_Union[DisconnectInitiator, str]] = ..., reason_code: _Optional[int] = ..., close_code: _Optional[int] = ..., client_addr: _Optional[str] = ..., port: _Optional[int] = ..., protocol: _Optional[_Union[MqttProtocol, str]] = ..., connection_id: _Optional[int] = ..., revision: _Optional[int] = ..., stale: _Optional[bool] = ...) -> None: ...

class GetConnectionStateRequest(_message.Message):
    __slots__ = ("client_id",)
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    def __init__(self, client_id: _Optional[str] = ...) -> None: ...

class ConnectionStateFilter(_message.Message):
    __slots__ = ("connection_status", "client_type", "type_id", "device_id", "client_id_prefix", "connected_after", "connected_before", "disconnected_after", "disconnected_before", "active_after", "active_before", "app_id")
    CONNECTION_STATUS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TYPE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_PREFIX_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AFTER_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    DISCONNECTED_AFTER_FIELD_NUMBER: _ClassVar[int]
    DISCONNECTED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_AFTER_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_BEFORE_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    connection_status: ConnectionStatus
    client_type: ClientType
    type_id: str
    device_id: str
    client_id_prefix: str
    connected_after: _timestamp_pb2.Timestamp
    connected_before: _timestamp_pb2.Timestamp
    disconnected_after: _timestamp_pb2.Timestamp
    disconnected_before: _timestamp_pb2.Timestamp
    active_after: _timestamp_pb2.Timestamp
    active_before: _timestamp_pb2.Timestamp
    app_id: str
    def __init__(self, connection_status: _Optional[_Union[ConnectionStatus, str]] = ..., client_type: _Optional[_Union[ClientType, str]] = ..., type_id: _Optional[str] = ..., device_id: _Optional[str] = ..., client_id_prefix: _Optional[str] = ..., connected_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., connected_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., disconnected_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., disconnected_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., active_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., active_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., app_id: _Optional[str] = ...) -> None: ...

class ListConnectionStatesRequest(_message.Message):
    __slots__ = ("filter", "order_by", "page_size", "page_token")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: ConnectionStateFilter
    order_by: str
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Union[ConnectionStateFilter, _Mapping]] = ..., order_by: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListConnectionStatesResponse(_message.Message):
    __slots__ = ("states", "next_page_token", "revision")
    STATES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedCompositeFieldContainer[ConnectionState]
    next_page_token: str
    revision: int
    def __init__(self, states: _Optional[_Iterable[_Union[ConnectionState, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class ListConnectionLogsRequest(_message.Message):
    __slots__ = ("client_id", "type_id", "device_id", "kinds", "initiator", "start_time", "end_time", "page_size", "page_token")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    INITIATOR_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    type_id: str
    device_id: str
    kinds: _containers.RepeatedScalarFieldContainer[LogKind]
    initiator: DisconnectInitiator
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, client_id: _Optional[str] = ..., type_id: _Optional[str] = ..., device_id: _Optional[str] = ..., kinds: _Optional[_Iterable[_Union[LogKind, str]]] = ..., initiator: _Optional[_Union[DisconnectInitiator, str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListConnectionLogsResponse(_message.Message):
    __slots__ = ("entries", "next_page_token", "revision")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LogEntry]
    next_page_token: str
    revision: int
    def __init__(self, entries: _Optional[_Iterable[_Union[LogEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class WatchConnectionsRequest(_message.Message):
    __slots__ = ("filter", "start_revision", "include_snapshot", "kinds", "heartbeat_interval", "max_changes_per_message")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    START_REVISION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    MAX_CHANGES_PER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    filter: ConnectionStateFilter
    start_revision: int
    include_snapshot: bool
    kinds: _containers.RepeatedScalarFieldContainer[ChangeKind]
    heartbeat_interval: _duration_pb2.Duration
    max_changes_per_message: int
    def __init__(self, filter: _Optional[_Union[ConnectionStateFilter, _Mapping]] = ..., start_revision: _Optional[int] = ..., include_snapshot: _Optional[bool] = ..., kinds: _Optional[_Iterable[_Union[ChangeKind, str]]] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_changes_per_message: _Optional[int] = ...) -> None: ...

class WatchConnectionsResponse(_message.Message):
    __slots__ = ("change", "heartbeat", "snapshot_complete", "changes")
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    change: Change
    heartbeat: Heartbeat
    snapshot_complete: SnapshotComplete
    changes: ChangeBatch
    def __init__(self, change: _Optional[_Union[Change, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., snapshot_complete: _Optional[_Union[SnapshotComplete, _Mapping]] = ..., changes: _Optional[_Union[ChangeBatch, _Mapping]] = ...) -> None: ...

class ChangeBatch(_message.Message):
    __slots__ = ("changes",)
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    def __init__(self, changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ...) -> None: ...

class Change(_message.Message):
    __slots__ = ("revision", "kind", "client_id", "state", "log_entry", "commit_time")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LOG_ENTRY_FIELD_NUMBER: _ClassVar[int]
    COMMIT_TIME_FIELD_NUMBER: _ClassVar[int]
    revision: int
    kind: ChangeKind
    client_id: str
    state: ConnectionState
    log_entry: LogEntry
    commit_time: _timestamp_pb2.Timestamp
    def __init__(self, revision: _Optional[int] = ..., kind: _Optional[_Union[ChangeKind, str]] = ..., client_id: _Optional[str] = ..., state: _Optional[_Union[ConnectionState, _Mapping]] = ..., log_entry: _Optional[_Union[LogEntry, _Mapping]] = ..., commit_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("revision", "time")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    revision: int
    time: _timestamp_pb2.Timestamp
    def __init__(self, revision: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SnapshotComplete(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class DeleteConnectionStateRequest(_message.Message):
    __slots__ = ("client_id",)
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    def __init__(self, client_id: _Optional[str] = ...) -> None: ...

class DeleteConnectionStateResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class IngestEventsRequest(_message.Message):
    __slots__ = ("broker", "events", "lease_duration")
    BROKER_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    broker: str
    events: _containers.RepeatedCompositeFieldContainer[LifecycleEvent]
    lease_duration: _duration_pb2.Duration
    def __init__(self, broker: _Optional[str] = ..., events: _Optional[_Iterable[_Union[LifecycleEvent, _Mapping]]] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RenewBrokerLeaseRequest(_message.Message):
    __slots__ = ("broker", "lease_duration")
    BROKER_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    broker: str
    lease_duration: _duration_pb2.Duration
    def __init__(self, broker: _Optional[str] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class BrokerLease(_message.Message):
    __slots__ = ("broker", "lease_duration", "expire_time")
    BROKER_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    broker: str
    lease_duration: _duration_pb2.Duration
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, broker: _Optional[str] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class LifecycleEvent(_message.Message):
    __slots__ = ("client_id", "time", "connection_id", "connected", "connect_failed", "disconnected", "activity")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    CONNECT_FAILED_FIELD_NUMBER: _ClassVar[int]
    DISCONNECTED_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    time: _timestamp_pb2.Timestamp
    connection_id: int
    connected: Connected
    connect_failed: ConnectFailed
    disconnected: Disconnected
    activity: Activity
    def __init__(self, client_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., connection_id: _Optional[int] = ..., connected: _Optional[_Union[Connected, _Mapping]] = ..., connect_failed: _Optional[_Union[ConnectFailed, _Mapping]] = ..., disconnected: _Optional[_Union[Disconnected, _Mapping]] = ..., activity: _Optional[_Union[Activity, _Mapping]] = ...) -> None: ...

class ConnectionInfo(_message.Message):
    __slots__ = ("client_addr", "port", "secure", "username", "protocol", "keep_alive_seconds", "clean_session")
    CLIENT_ADDR_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    SECURE_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CLEAN_SESSION_FIELD_NUMBER: _ClassVar[int]
    client_addr: str
    port: int
    secure: bool
    username: str
    protocol: MqttProtocol
    keep_alive_seconds: int
    clean_session: bool
    def __init__(self, client_addr: _Optional[str] = ..., port: _Optional[int] = ..., secure: _Optional[bool] = ..., username: _Optional[str] = ..., protocol: _Optional[_Union[MqttProtocol, str]] = ..., keep_alive_seconds: _Optional[int] = ..., clean_session: _Optional[bool] = ...) -> None: ...

class Connected(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: ConnectionInfo
    def __init__(self, info: _Optional[_Union[ConnectionInfo, _Mapping]] = ...) -> None: ...

class ConnectFailed(_message.Message):
    __slots__ = ("info", "failure")
    INFO_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    info: ConnectionInfo
    failure: ConnectFailure
    def __init__(self, info: _Optional[_Union[ConnectionInfo, _Mapping]] = ..., failure: _Optional[_Union[ConnectFailure, str]] = ...) -> None: ...

class Disconnected(_message.Message):
    __slots__ = ("cause", "reason_code", "detail")
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    REASON_CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    cause: DisconnectCause
    reason_code: int
    detail: str
    def __init__(self, cause: _Optional[_Union[DisconnectCause, str]] = ..., reason_code: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class Activity(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: ActivityKind
    def __init__(self, kind: _Optional[_Union[ActivityKind, str]] = ...) -> None: ...

class IngestEventsResponse(_message.Message):
    __slots__ = ("accepted", "revision")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    revision: int
    def __init__(self, accepted: _Optional[int] = ..., revision: _Optional[int] = ...) -> None: ...

class GetSettingsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Settings(_message.Message):
    __slots__ = ("enabled", "log_max_age", "log_max_entries_per_client", "feed_max_age", "feed_max_entries")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    LOG_MAX_AGE_FIELD_NUMBER: _ClassVar[int]
    LOG_MAX_ENTRIES_PER_CLIENT_FIELD_NUMBER: _ClassVar[int]
    FEED_MAX_AGE_FIELD_NUMBER: _ClassVar[int]
    FEED_MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    log_max_age: _duration_pb2.Duration
    log_max_entries_per_client: int
    feed_max_age: _duration_pb2.Duration
    feed_max_entries: int
    def __init__(self, enabled: _Optional[bool] = ..., log_max_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., log_max_entries_per_client: _Optional[int] = ..., feed_max_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., feed_max_entries: _Optional[int] = ...) -> None: ...

class UpdateSettingsRequest(_message.Message):
    __slots__ = ("settings", "update_mask")
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    settings: Settings
    update_mask: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, settings: _Optional[_Union[Settings, _Mapping]] = ..., update_mask: _Optional[_Iterable[str]] = ...) -> None: ...
