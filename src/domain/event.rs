//! Lifecycle events: what brokers observe and report to the tracker.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::{ClientId, ConnectFailure, DisconnectCause, Timestamp};

/// The broker name recorded for connections of the embedded broker.
pub const EMBEDDED_BROKER: &str = "embedded";

/// The broker name of a cluster node's embedded broker: `embedded@NODE`.
/// Each node counts its own connection ids, so each is a broker of its own
/// to the lifecycle rules, and the stream's order says which of two
/// connections on different nodes is the newer.
pub fn node_broker(node: &str) -> String {
    format!("{EMBEDDED_BROKER}@{node}")
}

/// Whether `broker` names an embedded broker: this server's, or a cluster
/// node's.
pub fn is_embedded_broker(broker: &str) -> bool {
    broker == EMBEDDED_BROKER
        || broker
            .strip_prefix(EMBEDDED_BROKER)
            .is_some_and(|rest| rest.starts_with('@'))
}

/// A broker's id of one accepted connection. It grows with every accepted
/// connection, so the newer of two connections has the larger id.
pub type ConnectionId = u64;

/// One thing that happened to a client's connection.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleEvent {
    pub client_id: ClientId,
    /// When it happened, at the broker.
    pub time: Timestamp,
    /// The connection it happened on (0 for refused connects).
    pub connection_id: ConnectionId,
    /// The broker that saw it.
    pub broker: Arc<str>,
    pub kind: EventKind,
    /// The remote address of the connection it happened on, when the
    /// reporter gives it with the event (the embedded broker does for
    /// disconnects). A late disconnect of an older connection is logged
    /// with this address, never with the current connection's.
    pub peer: Option<SocketAddr>,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    Connected(ConnectionInfo),
    ConnectFailed {
        info: ConnectionInfo,
        failure: ConnectFailure,
    },
    Disconnected(DisconnectCause),
    Activity(ActivityKind),
}

/// Where a connection came from and how it was set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub addr: IpAddr,
    pub port: u16,
    pub secure: bool,
    pub username: String,
    pub protocol: Option<MqttProtocol>,
    pub keep_alive: u16,
    pub clean_session: bool,
}

impl ConnectionInfo {
    /// `ip:port`, with brackets around IPv6 addresses.
    pub fn endpoint(&self) -> String {
        std::net::SocketAddr::new(self.addr, self.port).to_string()
    }
}

/// MQTT protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MqttProtocol {
    V3_1,
    V3_1_1,
    V5_0,
}

impl MqttProtocol {
    /// `3.1`, `3.1.1` or `5.0`, as the REST API names them.
    pub fn as_str(self) -> &'static str {
        match self {
            MqttProtocol::V3_1 => "3.1",
            MqttProtocol::V3_1_1 => "3.1.1",
            MqttProtocol::V5_0 => "5.0",
        }
    }
}

impl fmt::Display for MqttProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last thing a client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActivityKind {
    Connect,
    Publish,
    Subscribe,
    Unsubscribe,
    Ping,
    Disconnect,
}

impl ActivityKind {
    /// The REST name (`mqttConnect`, `mqttPublish`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ActivityKind::Connect => "mqttConnect",
            ActivityKind::Publish => "mqttPublish",
            ActivityKind::Subscribe => "mqttSubscribe",
            ActivityKind::Unsubscribe => "mqttUnsubscribe",
            ActivityKind::Ping => "mqttPing",
            ActivityKind::Disconnect => "mqttDisconnect",
        }
    }
}
