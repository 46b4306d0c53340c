//! Connection state records and connection log entries.

use std::net::IpAddr;

use super::{
    ActivityKind, ClientId, CloseCode, ConnectionId, ConnectionInfo, DisconnectInitiator,
    MqttProtocol, ReasonCode, Timestamp,
};

/// A position in the store's single, ever-growing sequence of changes.
pub type Revision = u64;

/// Whether a client is connected now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionStatus {
    Connected,
    Disconnected,
}

impl ConnectionStatus {
    /// `connected` or `disconnected`, as the REST API names them.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionStatus::Connected => "connected",
            ConnectionStatus::Disconnected => "disconnected",
        }
    }
}

/// How the last connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastDisconnect {
    pub time: Timestamp,
    pub initiator: DisconnectInitiator,
    pub reason_code: Option<ReasonCode>,
    pub reason: String,
    pub close_code: CloseCode,
}

/// Lifetime counters of one client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub connects: u64,
    pub failed_connects: u64,
    pub takeovers: u64,
    pub disconnects_by_client: u64,
    pub disconnects_by_server: u64,
    pub disconnects_by_network: u64,
}

impl Counters {
    pub(crate) fn count_disconnect(&mut self, initiator: DisconnectInitiator, takeover: bool) {
        match initiator {
            DisconnectInitiator::Client => self.disconnects_by_client += 1,
            DisconnectInitiator::Server => self.disconnects_by_server += 1,
            DisconnectInitiator::Network => self.disconnects_by_network += 1,
        }
        if takeover {
            self.takeovers += 1;
        }
    }
}

/// The connection state of one client: one record per client id, kept after
/// it disconnects.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionState {
    pub client_id: ClientId,
    pub status: ConnectionStatus,
    pub last_connect_time: Timestamp,
    pub last_activity: ActivityKind,
    pub last_activity_time: Timestamp,
    /// The current or last connection.
    pub connection: ConnectionInfo,
    pub connection_id: ConnectionId,
    /// The broker of the current or last connection.
    pub broker: String,
    /// Absent while the client never disconnected.
    pub last_disconnect: Option<LastDisconnect>,
    pub counters: Counters,
    /// Revision of the last change to this record.
    pub revision: Revision,
}

impl ConnectionState {
    /// While connected with a keepalive: last activity + 1.5 × keepalive.
    /// Past it, a "connected" record is stale (its disconnect was not seen).
    pub fn expected_alive_until(&self) -> Option<Timestamp> {
        if self.status != ConnectionStatus::Connected || self.connection.keep_alive == 0 {
            return None;
        }
        let millis = i64::from(self.connection.keep_alive) * 1500;
        self.last_activity_time
            .checked_add_signed(chrono::Duration::milliseconds(millis))
    }

    pub fn last_disconnect_time(&self) -> Option<Timestamp> {
        self.last_disconnect.as_ref().map(|d| d.time)
    }
}

/// The kind of a connection log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogKind {
    Connected,
    ConnectFailed,
    Disconnected,
}

impl LogKind {
    /// `connected`, `connectFailed` or `disconnected`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogKind::Connected => "connected",
            LogKind::ConnectFailed => "connectFailed",
            LogKind::Disconnected => "disconnected",
        }
    }
}

/// One entry of a client's connection log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub client_id: ClientId,
    /// A sentence a person can read.
    pub message: String,
    pub time: Timestamp,
    pub kind: LogKind,
    pub initiator: Option<DisconnectInitiator>,
    pub reason_code: Option<ReasonCode>,
    pub close_code: Option<CloseCode>,
    pub addr: Option<IpAddr>,
    pub port: u16,
    pub protocol: Option<MqttProtocol>,
    pub connection_id: ConnectionId,
    pub revision: Revision,
    /// The event belonged to an older connection than the current one.
    pub stale: bool,
}
