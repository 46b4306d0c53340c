//! Who ends connections, and the codes and words that say why.
//!
//! The mapping from a cause to its initiator, MQTT 5 reason code and platform
//! close code is the table of lifecycle rules; it lives here so that the
//! tracker and every broker agree on it.

use std::fmt;

/// An MQTT 5 reason code (CONNACK or DISCONNECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReasonCode(pub u8);

impl ReasonCode {
    pub const NORMAL_DISCONNECTION: Self = Self(0x00);
    pub const DISCONNECT_WITH_WILL: Self = Self(0x04);
    pub const MALFORMED_PACKET: Self = Self(0x81);
    pub const PROTOCOL_ERROR: Self = Self(0x82);
    pub const UNSUPPORTED_PROTOCOL_VERSION: Self = Self(0x84);
    pub const CLIENT_ID_NOT_VALID: Self = Self(0x85);
    pub const BAD_USER_NAME_OR_PASSWORD: Self = Self(0x86);
    pub const NOT_AUTHORIZED: Self = Self(0x87);
    pub const SERVER_UNAVAILABLE: Self = Self(0x88);
    pub const SERVER_BUSY: Self = Self(0x89);
    pub const SERVER_SHUTTING_DOWN: Self = Self(0x8B);
    pub const KEEP_ALIVE_TIMEOUT: Self = Self(0x8D);
    pub const SESSION_TAKEN_OVER: Self = Self(0x8E);
    pub const TOPIC_NAME_INVALID: Self = Self(0x90);
    pub const RECEIVE_MAXIMUM_EXCEEDED: Self = Self(0x93);
    pub const TOPIC_ALIAS_INVALID: Self = Self(0x94);
    pub const PACKET_TOO_LARGE: Self = Self(0x95);
    pub const ADMINISTRATIVE_ACTION: Self = Self(0x98);

    /// The MQTT 5 specification's name of the code, in lower case.
    pub fn description(self) -> &'static str {
        match self.0 {
            0x00 => "normal disconnection",
            0x04 => "disconnect with will message",
            0x80 => "unspecified error",
            0x81 => "malformed packet",
            0x82 => "protocol error",
            0x83 => "implementation specific error",
            0x84 => "unsupported protocol version",
            0x85 => "client identifier not valid",
            0x86 => "bad user name or password",
            0x87 => "not authorized",
            0x88 => "server unavailable",
            0x89 => "server busy",
            0x8A => "banned",
            0x8B => "server shutting down",
            0x8C => "bad authentication method",
            0x8D => "keep alive timeout",
            0x8E => "session taken over",
            0x8F => "topic filter invalid",
            0x90 => "topic name invalid",
            0x93 => "receive maximum exceeded",
            0x94 => "topic alias invalid",
            0x95 => "packet too large",
            0x96 => "message rate too high",
            0x97 => "quota exceeded",
            0x98 => "administrative action",
            0x99 => "payload format invalid",
            0x9A => "retain not supported",
            0x9B => "QoS not supported",
            0x9C => "use another server",
            0x9D => "server moved",
            0x9E => "shared subscriptions not supported",
            0x9F => "connection rate exceeded",
            0xA0 => "maximum connect time",
            0xA1 => "subscription identifiers not supported",
            0xA2 => "wildcard subscriptions not supported",
            _ => "reason code not defined by MQTT 5",
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:02X}", self.0)
    }
}

/// A platform close code, as Watson IoT Platform reports it in connection
/// logs and monitor messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: Self = Self(0);
    pub const SOCKET_CLOSED: Self = Self(91);
    pub const SERVER_SHUTDOWN: Self = Self(93);
    pub const ADMIN_DISCONNECT: Self = Self(94);
    /// The lease of the broker the connection was on lapsed (not a platform
    /// code: the platform has no brokers reporting from outside).
    pub const LEASE_LAPSED: Self = Self(96);
    /// The cluster node the connection was on was lost (not a platform
    /// code either).
    pub const NODE_LOST: Self = Self(97);
    pub const SERVER_BUSY: Self = Self(104);
    pub const PROTOCOL_ERROR: Self = Self(105);
    pub const KEEP_ALIVE_TIMEOUT: Self = Self(160);
    pub const BAD_CLIENT_ID: Self = Self(166);
    pub const NOT_AUTHORIZED: Self = Self(180);
    pub const PACKET_TOO_LARGE: Self = Self(287);
    pub const SESSION_TAKEN_OVER: Self = Self(288);
}

/// Who ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectInitiator {
    Client,
    Server,
    Network,
}

impl DisconnectInitiator {
    /// The REST name (`client`, `server`, `network`).
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectInitiator::Client => "client",
            DisconnectInitiator::Server => "server",
            DisconnectInitiator::Network => "network",
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectCause {
    /// The client sent DISCONNECT with this reason code (0x00 for MQTT 3).
    ClientDisconnect(ReasonCode),
    /// The socket closed or was reset without DISCONNECT.
    SocketClosed,
    /// No packet within 1.5 × keepalive.
    KeepAliveTimeout,
    /// The same client id connected again; `by` is where from ("ip:port").
    SessionTakenOver {
        by: String,
    },
    MalformedPacket,
    /// The client broke the protocol; the code says how (0x82 protocol
    /// error, 0x94 topic alias invalid, 0x90 topic name invalid, ...).
    ProtocolError(ReasonCode),
    PacketTooLarge,
    /// An administrator kicked the client.
    AdministrativeAction,
    /// The client's credentials were revoked.
    CredentialsRevoked,
    /// Graceful server shutdown.
    ServerShuttingDown,
    /// Found still marked connected when the server started.
    ServerRestarted,
    /// The external broker the connection was on (a source's) restarted,
    /// which ended every connection it had.
    BrokerRestarted {
        broker: String,
    },
    /// The lease of the holder the connection was on (a broker reporting
    /// through ingest, later a cluster node) lapsed: it stopped reporting.
    LeaseLapsed {
        holder: String,
        lease_secs: u64,
    },
    /// The cluster node the connection was on stopped renewing its lease
    /// (killed, cut off): a surviving node recorded the end of each of its
    /// connections.
    NodeLost {
        node: String,
        lease_secs: u64,
    },
}

impl DisconnectCause {
    pub fn initiator(&self) -> DisconnectInitiator {
        match self {
            DisconnectCause::ClientDisconnect(_) => DisconnectInitiator::Client,
            DisconnectCause::SocketClosed
            | DisconnectCause::KeepAliveTimeout
            | DisconnectCause::LeaseLapsed { .. }
            | DisconnectCause::NodeLost { .. } => DisconnectInitiator::Network,
            _ => DisconnectInitiator::Server,
        }
    }

    /// The MQTT 5 reason code; none when the socket simply closed.
    pub fn reason_code(&self) -> Option<ReasonCode> {
        Some(match self {
            DisconnectCause::ClientDisconnect(code) => *code,
            DisconnectCause::SocketClosed
            | DisconnectCause::LeaseLapsed { .. }
            | DisconnectCause::NodeLost { .. } => return None,
            DisconnectCause::KeepAliveTimeout => ReasonCode::KEEP_ALIVE_TIMEOUT,
            DisconnectCause::SessionTakenOver { .. } => ReasonCode::SESSION_TAKEN_OVER,
            DisconnectCause::MalformedPacket => ReasonCode::MALFORMED_PACKET,
            DisconnectCause::ProtocolError(code) => *code,
            DisconnectCause::PacketTooLarge => ReasonCode::PACKET_TOO_LARGE,
            DisconnectCause::AdministrativeAction | DisconnectCause::CredentialsRevoked => {
                ReasonCode::ADMINISTRATIVE_ACTION
            }
            DisconnectCause::ServerShuttingDown
            | DisconnectCause::ServerRestarted
            | DisconnectCause::BrokerRestarted { .. } => ReasonCode::SERVER_SHUTTING_DOWN,
        })
    }

    pub fn close_code(&self) -> CloseCode {
        match self {
            DisconnectCause::ClientDisconnect(_) => CloseCode::NORMAL,
            DisconnectCause::SocketClosed => CloseCode::SOCKET_CLOSED,
            DisconnectCause::KeepAliveTimeout => CloseCode::KEEP_ALIVE_TIMEOUT,
            DisconnectCause::SessionTakenOver { .. } => CloseCode::SESSION_TAKEN_OVER,
            DisconnectCause::MalformedPacket | DisconnectCause::ProtocolError(_) => {
                CloseCode::PROTOCOL_ERROR
            }
            DisconnectCause::PacketTooLarge => CloseCode::PACKET_TOO_LARGE,
            DisconnectCause::AdministrativeAction | DisconnectCause::CredentialsRevoked => {
                CloseCode::ADMIN_DISCONNECT
            }
            DisconnectCause::ServerShuttingDown
            | DisconnectCause::ServerRestarted
            | DisconnectCause::BrokerRestarted { .. } => CloseCode::SERVER_SHUTDOWN,
            DisconnectCause::LeaseLapsed { .. } => CloseCode::LEASE_LAPSED,
            DisconnectCause::NodeLost { .. } => CloseCode::NODE_LOST,
        }
    }

    /// Human text for the cause, without the reason code. `keep_alive` is
    /// the keepalive of the connection that ended, in seconds.
    pub fn reason_text(&self, keep_alive: u16) -> String {
        match self {
            DisconnectCause::ClientDisconnect(code) => code.description().to_owned(),
            DisconnectCause::SocketClosed => "socket closed without DISCONNECT".to_owned(),
            DisconnectCause::KeepAliveTimeout => format!(
                "no packet within 1.5 × keepalive ({} s)",
                u32::from(keep_alive) * 3 / 2
            ),
            DisconnectCause::SessionTakenOver { by } if by.is_empty() => {
                "session taken over by a new connection".to_owned()
            }
            DisconnectCause::SessionTakenOver { by } => {
                format!("session taken over by a new connection from {by}")
            }
            DisconnectCause::MalformedPacket => "malformed packet".to_owned(),
            DisconnectCause::ProtocolError(code) => code.description().to_owned(),
            DisconnectCause::PacketTooLarge => "packet too large".to_owned(),
            DisconnectCause::AdministrativeAction => "disconnected by an administrator".to_owned(),
            DisconnectCause::CredentialsRevoked => "credentials revoked".to_owned(),
            DisconnectCause::ServerShuttingDown => "server shutting down".to_owned(),
            DisconnectCause::ServerRestarted => {
                "server restarted while the client was connected".to_owned()
            }
            DisconnectCause::BrokerRestarted { broker } => {
                format!("broker {broker} restarted, ending every connection it had")
            }
            DisconnectCause::LeaseLapsed { holder, lease_secs } => {
                format!("broker {holder} stopped reporting (lease of {lease_secs} s lapsed)")
            }
            DisconnectCause::NodeLost { node, lease_secs } => {
                format!("cluster node {node} was lost (its lease of {lease_secs} s lapsed)")
            }
        }
    }

    /// The connection-log sentence, for example
    /// `Disconnected by the client: normal disconnection (0x00)`.
    pub fn log_message(&self, keep_alive: u16) -> String {
        let lead = match self.initiator() {
            DisconnectInitiator::Client => "Disconnected by the client",
            DisconnectInitiator::Server => "Disconnected by the server",
            DisconnectInitiator::Network => "Connection lost",
        };
        let text = self.reason_text(keep_alive);
        match self.reason_code() {
            Some(code) => format!("{lead}: {text} ({code})"),
            None => format!("{lead}: {text}"),
        }
    }
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectFailure {
    BadCredentials,
    NotAuthorized,
    BadClientId,
    UnsupportedProtocol,
    ServerBusy,
    /// The server cannot record the connection (its store is full).
    ServerUnavailable,
}

impl ConnectFailure {
    /// The MQTT 5 CONNACK reason code.
    pub fn reason_code(self) -> ReasonCode {
        match self {
            ConnectFailure::BadCredentials => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            ConnectFailure::NotAuthorized => ReasonCode::NOT_AUTHORIZED,
            ConnectFailure::BadClientId => ReasonCode::CLIENT_ID_NOT_VALID,
            ConnectFailure::UnsupportedProtocol => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            ConnectFailure::ServerBusy => ReasonCode::SERVER_BUSY,
            ConnectFailure::ServerUnavailable => ReasonCode::SERVER_UNAVAILABLE,
        }
    }

    pub fn close_code(self) -> CloseCode {
        match self {
            ConnectFailure::BadCredentials | ConnectFailure::NotAuthorized => {
                CloseCode::NOT_AUTHORIZED
            }
            ConnectFailure::BadClientId => CloseCode::BAD_CLIENT_ID,
            ConnectFailure::UnsupportedProtocol => CloseCode::PROTOCOL_ERROR,
            ConnectFailure::ServerBusy | ConnectFailure::ServerUnavailable => {
                CloseCode::SERVER_BUSY
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_follows_the_lifecycle_table() {
        use DisconnectCause::*;
        use DisconnectInitiator as I;
        let table = [
            (ClientDisconnect(ReasonCode(0x04)), I::Client, Some(0x04), 0),
            (SocketClosed, I::Network, None, 91),
            (KeepAliveTimeout, I::Network, Some(0x8D), 160),
            (
                SessionTakenOver { by: String::new() },
                I::Server,
                Some(0x8E),
                288,
            ),
            (MalformedPacket, I::Server, Some(0x81), 105),
            (
                ProtocolError(ReasonCode::PROTOCOL_ERROR),
                I::Server,
                Some(0x82),
                105,
            ),
            (
                ProtocolError(ReasonCode::TOPIC_ALIAS_INVALID),
                I::Server,
                Some(0x94),
                105,
            ),
            (PacketTooLarge, I::Server, Some(0x95), 287),
            (AdministrativeAction, I::Server, Some(0x98), 94),
            (CredentialsRevoked, I::Server, Some(0x98), 94),
            (ServerShuttingDown, I::Server, Some(0x8B), 93),
            (ServerRestarted, I::Server, Some(0x8B), 93),
            (
                BrokerRestarted {
                    broker: "site-a".into(),
                },
                I::Server,
                Some(0x8B),
                93,
            ),
        ];
        for (cause, initiator, reason, close) in table {
            assert_eq!(cause.initiator(), initiator, "{cause:?}");
            assert_eq!(cause.reason_code().map(|c| c.0), reason, "{cause:?}");
            assert_eq!(cause.close_code().0, close, "{cause:?}");
        }
    }

    #[test]
    fn log_messages_read_as_sentences() {
        assert_eq!(
            DisconnectCause::ClientDisconnect(ReasonCode::NORMAL_DISCONNECTION).log_message(60),
            "Disconnected by the client: normal disconnection (0x00)"
        );
        assert_eq!(
            DisconnectCause::KeepAliveTimeout.log_message(60),
            "Connection lost: no packet within 1.5 × keepalive (90 s) (0x8D)"
        );
        assert_eq!(
            DisconnectCause::SessionTakenOver {
                by: "127.0.0.1:53500".into()
            }
            .log_message(60),
            "Disconnected by the server: session taken over by a new connection from 127.0.0.1:53500 (0x8E)"
        );
    }

    #[test]
    fn connect_failures_map_to_connack_and_close_codes() {
        let table = [
            (ConnectFailure::BadCredentials, 0x86, 180),
            (ConnectFailure::NotAuthorized, 0x87, 180),
            (ConnectFailure::BadClientId, 0x85, 166),
            (ConnectFailure::UnsupportedProtocol, 0x84, 105),
            (ConnectFailure::ServerBusy, 0x89, 104),
            (ConnectFailure::ServerUnavailable, 0x88, 104),
        ];
        for (failure, reason, close) in table {
            assert_eq!(failure.reason_code().0, reason);
            assert_eq!(failure.close_code().0, close);
        }
    }
}
