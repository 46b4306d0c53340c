//! Changes: what the store committed, as the change feed carries it.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

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
    /// The change as the edges send it, built once and shared by every
    /// reader of the same `Arc<Change>`. Not part of its value.
    pub wire: WireForms,
}

/// The wire forms of one change, each built by the first reader that needs
/// it and then shared by every other reader of the same `Arc<Change>`: a
/// commit fanned out to a thousand watch streams is encoded once, not a
/// thousand times. Only the edges know what the bytes mean; the domain keeps
/// them.
///
/// A clone starts empty (the clone may be changed, and its forms must then
/// be built from what it holds), and two changes compare equal whatever
/// forms they have built.
#[derive(Default)]
pub struct WireForms {
    /// The encoded protobuf watch response carrying the change.
    pub protobuf: OnceLock<Bytes>,
    /// The JSON text of the change for Server-Sent Events.
    pub json: OnceLock<Arc<str>>,
}

impl Clone for WireForms {
    fn clone(&self) -> Self {
        WireForms::default()
    }
}

impl PartialEq for WireForms {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for WireForms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireForms")
            .field("protobuf", &self.protobuf.get().map(Bytes::len))
            .field("json", &self.json.get().map(|j| j.len()))
            .finish()
    }
}
