//! Plain Rust types of the connection-state domain: client ids, lifecycle
//! events, reason and close codes, state records, log entries and changes.
//!
//! Nothing here does I/O or knows about protobuf, JSON or sled; the edges
//! (`api`, `store`) convert to and from these types.

mod change;
mod client_id;
mod event;
mod query;
mod reason;
mod state;

pub use change::{Change, ChangeKind, WireForms};
pub use client_id::{ClientId, ClientIdError, ClientKind, ClientType, MAX_CLIENT_ID_LEN};
pub use event::{
    ActivityKind, ConnectionId, ConnectionInfo, EMBEDDED_BROKER, EventKind, LifecycleEvent,
    MqttProtocol, is_embedded_broker, node_broker,
};
pub use query::{LogFilter, SortField, StateFilter, StateOrder, TimeRange};
pub use reason::{CloseCode, ConnectFailure, DisconnectCause, DisconnectInitiator, ReasonCode};
pub use state::{
    ConnectionState, ConnectionStatus, Counters, LastDisconnect, LogEntry, LogKind, Revision,
};

/// Times are kept with millisecond precision, as the REST API shows them.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// Truncates a time to whole milliseconds, the precision the store keeps.
pub fn truncate_to_millis(t: Timestamp) -> Timestamp {
    chrono::DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}
