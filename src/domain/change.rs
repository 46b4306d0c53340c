//! Changes: what the store committed, as the change feed carries it.

use super::{ClientId, ConnectionState, LogEntry, Revision, Timestamp};

/// The kind of a committed change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    Connected,
    ConnectFailed,
    Disconnected,
    /// A late event of an older connection: logged, state unchanged.
    Stale,
    /// Last activity written through.
    Activity,
    Deleted,
    AllDeleted,
}

/// One committed change; every change has its own revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub revision: Revision,
    pub kind: ChangeKind,
    /// Absent only for [`ChangeKind::AllDeleted`].
    pub client_id: Option<ClientId>,
    /// The record after the change, when the client has one.
    pub state: Option<ConnectionState>,
    pub log_entry: Option<LogEntry>,
    pub commit_time: Timestamp,
}
