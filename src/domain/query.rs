//! What readers ask for: filters and orders over state records and log
//! entries.

use super::{
    ClientType, ConnectionState, ConnectionStatus, DisconnectInitiator, LogEntry, LogKind,
    Timestamp,
};

/// A half-open time range: `after` inclusive, `before` exclusive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub after: Option<Timestamp>,
    pub before: Option<Timestamp>,
}

impl TimeRange {
    pub fn is_unbounded(&self) -> bool {
        self.after.is_none() && self.before.is_none()
    }

    /// Whether `t` is in the range; a missing time matches only an
    /// unbounded range.
    pub fn contains(&self, t: Option<Timestamp>) -> bool {
        if self.is_unbounded() {
            return true;
        }
        let Some(t) = t else { return false };
        self.after.is_none_or(|a| t >= a) && self.before.is_none_or(|b| t < b)
    }
}

/// A filter on state records; every part set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateFilter {
    pub status: Option<ConnectionStatus>,
    pub client_type: Option<ClientType>,
    pub type_id: Option<String>,
    pub device_id: Option<String>,
    pub app_id: Option<String>,
    pub client_id_prefix: Option<String>,
    pub connected: TimeRange,
    pub disconnected: TimeRange,
    pub active: TimeRange,
}

impl StateFilter {
    pub fn matches(&self, s: &ConnectionState) -> bool {
        self.status.is_none_or(|v| v == s.status)
            && self.matches_client_id(&s.client_id)
            && self.connected.contains(Some(s.last_connect_time))
            && self.disconnected.contains(s.last_disconnect_time())
            && self.active.contains(Some(s.last_activity_time))
    }

    /// Whether the filter looks only at what a change feed can check
    /// without time bounds (watch filters).
    pub fn has_time_bounds(&self) -> bool {
        !(self.connected.is_unbounded()
            && self.disconnected.is_unbounded()
            && self.active.is_unbounded())
    }

    /// Whether a client id alone can pass the filter (no state needed):
    /// used for changes that carry no state record.
    pub fn matches_client_id(&self, id: &super::ClientId) -> bool {
        let kind = id.kind();
        self.client_type.is_none_or(|v| v == kind.client_type())
            && self
                .type_id
                .as_deref()
                .is_none_or(|v| kind.type_id() == Some(v))
            && self
                .device_id
                .as_deref()
                .is_none_or(|v| kind.device_id() == Some(v))
            && self
                .app_id
                .as_deref()
                .is_none_or(|v| kind.app_id() == Some(v))
            && self
                .client_id_prefix
                .as_deref()
                .is_none_or(|p| id.as_str().starts_with(p))
    }
}

/// The field state records are listed by; ties go by client id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SortField {
    #[default]
    ClientId,
    LastConnectTime,
    LastDisconnectTime,
    LastActivityTime,
    ConnectionStatus,
}

/// A sort field and its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StateOrder {
    pub field: SortField,
    pub descending: bool,
}

/// A filter on log entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Any kind when empty.
    pub kinds: Vec<LogKind>,
    pub initiator: Option<DisconnectInitiator>,
    pub time: TimeRange,
}

impl LogFilter {
    pub fn matches(&self, e: &LogEntry) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && self.initiator.is_none_or(|i| e.initiator == Some(i))
            && self.time.contains(Some(e.time))
    }
}
