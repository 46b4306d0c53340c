//! Mosquitto 2.x as a source: the lines Mosquitto publishes on
//! `$SYS/broker/log/#` (with `log_dest topic`) turned into lifecycle events.
//!
//! [`parse_line`] is a pure function from one log line to what it says;
//! [`Lines`] keeps what the lines themselves do not carry: the connection
//! id connstate gave each client's current connection, and a takeover
//! waiting for the line of the connection that took over.
//!
//! What the lines do not tell, and so connstate cannot record:
//! - a client's DISCONNECT reason code (MQTT 5): every "disconnected" line is
//!   recorded as a normal disconnection (0x00);
//! - whether a connection used TLS: recorded as not secure;
//! - which client a refused CONNECT came from: Mosquitto 2.0 names it
//!   `<unknown>` ("Client <unknown> disconnected, not authorised."), so a
//!   failed connect is counted (`connstate_source_input_total{outcome=
//!   "unattributed"}`) and logged, never recorded against a client;
//! - the cause of a socket error: recorded as a lost connection with no
//!   reason code.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use crate::domain::{
    ClientId, ConnectionId, ConnectionInfo, DisconnectCause, EventKind, LifecycleEvent,
    MqttProtocol, ReasonCode, Timestamp,
};

/// The topic filters a Mosquitto source subscribes to.
pub const LOG_TOPICS: &[&str] = &["$SYS/broker/log/#", UPTIME_TOPIC];

/// Mosquitto's uptime, `"N seconds"`, retained and republished every
/// `sys_interval`: a smaller value than the last one seen means Mosquitto
/// restarted.
pub const UPTIME_TOPIC: &str = "$SYS/broker/uptime";

/// What one log line says.
#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    /// `New client connected from ADDR as ID (pN, cN, kN[, u'USER']).`
    Connected {
        client_id: &'a str,
        peer: SocketAddr,
        protocol: Option<MqttProtocol>,
        clean_session: bool,
        keep_alive: u16,
        username: Option<&'a str>,
    },
    /// A connection ended, for `cause`.
    Disconnected {
        client_id: &'a str,
        cause: DisconnectCause,
    },
    /// `Client ID already connected, closing old connection.`: the next
    /// `New client connected ... as ID` is the connection that took over.
    TakenOver { client_id: &'a str },
    /// `Client ID disconnected, not authorised.`: a refused CONNECT (or a
    /// client whose credentials no longer pass).
    NotAuthorised { client_id: &'a str },
    /// A line about something else (subscriptions, start-up, warnings).
    Other,
}

/// A line that looks like a lifecycle line but cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable Mosquitto log line: {0}")]
pub struct BadLine(pub String);

/// Drops the `1796032088: ` time stamp Mosquitto puts in front of each
/// line (its default `log_timestamp`).
fn strip_timestamp(line: &str) -> &str {
    match line.split_once(": ") {
        Some((stamp, rest)) if !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit()) => {
            rest
        }
        _ => line,
    }
}

/// Reads one log line (the payload of a `$SYS/broker/log/...` message).
pub fn parse_line(line: &str) -> Result<Line<'_>, BadLine> {
    let line = strip_timestamp(line.trim_end());
    let bad = || BadLine(line.chars().take(200).collect());
    if let Some(rest) = line.strip_prefix("New client connected from ") {
        return parse_connected(rest).ok_or_else(bad);
    }
    if let Some(rest) = line.strip_prefix("Socket error on client ") {
        let client_id = rest.strip_suffix(", disconnecting.").ok_or_else(bad)?;
        return Ok(Line::Disconnected {
            client_id,
            cause: DisconnectCause::SocketClosed,
        });
    }
    let Some(rest) = line.strip_prefix("Client ") else {
        return Ok(Line::Other);
    };
    let disconnected = |client_id, cause| Ok(Line::Disconnected { client_id, cause });
    // Longest endings first: "disconnected." ends several of them.
    if let Some(id) = rest.strip_suffix(" already connected, closing old connection.") {
        return Ok(Line::TakenOver { client_id: id });
    }
    if let Some(id) = rest.strip_suffix(" disconnected, not authorised.") {
        return Ok(Line::NotAuthorised { client_id: id });
    }
    if let Some(id) = rest.strip_suffix(" has exceeded timeout, disconnecting.") {
        return disconnected(id, DisconnectCause::KeepAliveTimeout);
    }
    if let Some(id) = rest.strip_suffix(" closed its connection.") {
        return disconnected(id, DisconnectCause::SocketClosed);
    }
    if let Some(id) = rest.strip_suffix(" disconnected due to protocol error.") {
        return disconnected(
            id,
            DisconnectCause::ProtocolError(ReasonCode::PROTOCOL_ERROR),
        );
    }
    if let Some(id) = rest.strip_suffix(" disconnected due to malformed packet.") {
        return disconnected(id, DisconnectCause::MalformedPacket);
    }
    if let Some(id) = rest.strip_suffix(" has been disconnected by administrative action.") {
        return disconnected(id, DisconnectCause::AdministrativeAction);
    }
    if let Some(id) = rest.strip_suffix(" disconnected.") {
        return disconnected(
            id,
            DisconnectCause::ClientDisconnect(ReasonCode::NORMAL_DISCONNECTION),
        );
    }
    // "Client ID disconnected due to out of memory." and other causes the
    // client had no part in: the connection was lost, cause untold.
    if let Some((id, _)) = rest.split_once(" disconnected due to ") {
        return disconnected(id, DisconnectCause::SocketClosed);
    }
    Ok(Line::Other)
}

/// `ADDR as ID (p2, c1, k60, u'bob').`
fn parse_connected(rest: &str) -> Option<Line<'_>> {
    let rest = rest.strip_suffix(").")?;
    let (head, params) = rest.rsplit_once(" (")?;
    let (addr, client_id) = head.split_once(" as ")?;
    // "127.0.0.1:53422", or "::1:53422" (IPv6 without brackets).
    let (ip, port) = addr.rsplit_once(':')?;
    let ip: IpAddr = ip.trim_matches(|c| c == '[' || c == ']').parse().ok()?;
    let port: u16 = port.parse().ok()?;
    let mut protocol = None;
    let mut clean_session = None;
    let mut keep_alive = None;
    let mut username = None;
    // The user name comes last and may itself hold ", ".
    let (params, user) = match params.split_once(", u'") {
        Some((p, u)) => (p, Some(u.strip_suffix('\'')?)),
        None => (params, None),
    };
    if let Some(u) = user {
        username = Some(u);
    }
    for param in params.split(", ") {
        let (key, value) = param.split_at_checked(1)?;
        match key {
            "p" => {
                protocol = match value {
                    "1" => Some(MqttProtocol::V3_1),
                    "2" => Some(MqttProtocol::V3_1_1),
                    "5" => Some(MqttProtocol::V5_0),
                    _ => None,
                }
            }
            "c" => clean_session = Some(value == "1"),
            "k" => keep_alive = Some(value.parse().ok()?),
            _ => {}
        }
    }
    Some(Line::Connected {
        client_id,
        peer: SocketAddr::new(ip, port),
        protocol,
        clean_session: clean_session?,
        keep_alive: keep_alive?,
        username,
    })
}

/// What a line became.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Events to record, in order.
    Events(Vec<LifecycleEvent>),
    /// A failed connect Mosquitto did not attribute to a client.
    Unattributed,
    /// A disconnect of a connection this source never saw (connstate was
    /// not following, or it is a duplicate).
    Unmatched,
    /// Not a lifecycle line.
    Ignored,
}

/// Looks up the connection a client is recorded on (after a restart of
/// connstate, when [`Lines`] has not seen its connect).
pub trait Recorded {
    /// The client's current connection id on `broker`, if its record says
    /// it is connected there.
    fn connection_on(&self, client: &ClientId, broker: &str) -> Option<ConnectionId>;
}

/// Turns log lines into events for one source.
pub struct Lines {
    broker: Arc<str>,
    /// connstate's own client id at the broker: its lines are not events.
    own_client_id: String,
    /// The current connection of each client seen connected.
    current: HashMap<String, ConnectionId>,
    /// Connections taken over, waiting for the connect line of the new one.
    taken_over: HashMap<String, ConnectionId>,
    last_id: ConnectionId,
}

impl Lines {
    pub fn new(broker: Arc<str>, own_client_id: String) -> Lines {
        Lines {
            broker,
            own_client_id,
            current: HashMap::new(),
            taken_over: HashMap::new(),
            last_id: 0,
        }
    }

    /// A new connection id: microseconds since the epoch, or one more than
    /// the last, so that ids keep growing across restarts of connstate.
    fn next_id(&mut self, now: Timestamp) -> ConnectionId {
        let micros = u64::try_from(now.timestamp_micros()).unwrap_or(0);
        self.last_id = micros.max(self.last_id + 1);
        self.last_id
    }

    /// Forgets every connection: the broker restarted, so none of them
    /// exists any more.
    pub fn forget_connections(&mut self) {
        self.current.clear();
        self.taken_over.clear();
    }

    fn connection_of(&self, client: &ClientId, recorded: &impl Recorded) -> Option<ConnectionId> {
        self.current
            .get(client.as_str())
            .copied()
            .or_else(|| recorded.connection_on(client, &self.broker))
    }

    /// What `line`, received at `now`, means for the clients of this
    /// source.
    pub fn apply(
        &mut self,
        line: &str,
        now: Timestamp,
        recorded: &impl Recorded,
    ) -> Result<Outcome, BadLine> {
        let parsed = parse_line(line)?;
        let id_of =
            |id: &str| ClientId::new(id).map_err(|e| BadLine(format!("client id {id:?}: {e}")));
        let broker = self.broker.clone();
        let event = |client_id: ClientId, connection_id, kind| LifecycleEvent {
            client_id,
            time: now,
            connection_id,
            broker: broker.clone(),
            kind,
            peer: None,
        };
        match parsed {
            Line::Other => Ok(Outcome::Ignored),
            Line::Connected { client_id, .. } | Line::Disconnected { client_id, .. }
                if client_id == self.own_client_id =>
            {
                Ok(Outcome::Ignored)
            }
            Line::NotAuthorised {
                client_id: "<unknown>",
            } => Ok(Outcome::Unattributed),
            Line::Disconnected { client_id, .. } | Line::TakenOver { client_id }
                if client_id == "<unknown>" =>
            {
                Ok(Outcome::Ignored)
            }
            Line::Connected {
                client_id,
                peer,
                protocol,
                clean_session,
                keep_alive,
                username,
            } => {
                let client = id_of(client_id)?;
                let mut events = Vec::with_capacity(2);
                if let Some(old) = self.taken_over.remove(client_id) {
                    events.push(event(
                        client.clone(),
                        old,
                        EventKind::Disconnected(DisconnectCause::SessionTakenOver {
                            by: peer.to_string(),
                        }),
                    ));
                }
                let connection_id = self.next_id(now);
                self.current.insert(client_id.to_owned(), connection_id);
                events.push(event(
                    client,
                    connection_id,
                    EventKind::Connected(ConnectionInfo {
                        addr: peer.ip(),
                        port: peer.port(),
                        secure: false,
                        username: username.unwrap_or_default().to_owned(),
                        protocol,
                        keep_alive,
                        clean_session,
                    }),
                ));
                Ok(Outcome::Events(events))
            }
            Line::TakenOver { client_id } => {
                let client = id_of(client_id)?;
                match self.connection_of(&client, recorded) {
                    Some(old) => {
                        self.current.remove(client_id);
                        self.taken_over.insert(client_id.to_owned(), old);
                        Ok(Outcome::Events(Vec::new()))
                    }
                    None => Ok(Outcome::Unmatched),
                }
            }
            Line::Disconnected { client_id, cause } => {
                let client = id_of(client_id)?;
                match self.connection_of(&client, recorded) {
                    Some(connection_id) => {
                        self.current.remove(client_id);
                        Ok(Outcome::Events(vec![event(
                            client,
                            connection_id,
                            EventKind::Disconnected(cause),
                        )]))
                    }
                    None => Ok(Outcome::Unmatched),
                }
            }
            // A client Mosquitto names: it was connected and no longer
            // passes (a plugin revoked it), or a version of Mosquitto
            // that names refused clients. Connected: the server ended it;
            // otherwise connstate has no address to record a failed
            // connect with, and counts it.
            Line::NotAuthorised { client_id } => {
                let client = id_of(client_id)?;
                match self.connection_of(&client, recorded) {
                    Some(connection_id) => {
                        self.current.remove(client_id);
                        Ok(Outcome::Events(vec![event(
                            client,
                            connection_id,
                            EventKind::Disconnected(DisconnectCause::CredentialsRevoked),
                        )]))
                    }
                    None => Ok(Outcome::Unattributed),
                }
            }
        }
    }
}

/// Reads `"N seconds"`, the payload of [`UPTIME_TOPIC`].
pub fn parse_uptime(payload: &str) -> Option<u64> {
    payload.trim().strip_suffix(" seconds")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as Mosquitto 2.0.11 published them on `$SYS/broker/log/#`.
    #[test]
    fn reads_the_lines_mosquitto_writes() {
        let connected = parse_line(
            "1796032097: New client connected from 127.0.0.1:42238 as sockclose (p2, c1, k60, u'bob').",
        )
        .unwrap();
        assert_eq!(
            connected,
            Line::Connected {
                client_id: "sockclose",
                peer: "127.0.0.1:42238".parse().unwrap(),
                protocol: Some(MqttProtocol::V3_1_1),
                clean_session: true,
                keep_alive: 60,
                username: Some("bob"),
            }
        );
        let v5 = parse_line("New client connected from ::1:40000 as a b (p5, c0, k30).").unwrap();
        assert_eq!(
            v5,
            Line::Connected {
                client_id: "a b",
                peer: "[::1]:40000".parse().unwrap(),
                protocol: Some(MqttProtocol::V5_0),
                clean_session: false,
                keep_alive: 30,
                username: None,
            }
        );
        let cases = [
            (
                "1796032088: Client dev1 disconnected.",
                DisconnectCause::ClientDisconnect(ReasonCode::NORMAL_DISCONNECTION),
            ),
            (
                "1796032097: Client sockclose closed its connection.",
                DisconnectCause::SocketClosed,
            ),
            (
                "1796032099: Client katimeout has exceeded timeout, disconnecting.",
                DisconnectCause::KeepAliveTimeout,
            ),
            (
                "1796032099: Client proto disconnected due to protocol error.",
                DisconnectCause::ProtocolError(ReasonCode::PROTOCOL_ERROR),
            ),
            (
                "Socket error on client s1, disconnecting.",
                DisconnectCause::SocketClosed,
            ),
        ];
        for (line, cause) in cases {
            let Line::Disconnected { cause: got, .. } = parse_line(line).unwrap() else {
                panic!("{line}: not a disconnect");
            };
            assert_eq!(got, cause, "{line}");
        }
        assert_eq!(
            parse_line("1796032089: Client taker already connected, closing old connection."),
            Ok(Line::TakenOver { client_id: "taker" })
        );
        assert_eq!(
            parse_line("1796032104: Client <unknown> disconnected, not authorised."),
            Ok(Line::NotAuthorised {
                client_id: "<unknown>"
            })
        );
        for other in [
            "1796032088: New connection from 127.0.0.1:42450 on port 18830.",
            "1796032088: auto-2971ADD7 0 $SYS/broker/log/#",
            "mosquitto version 2.0.11 running",
            "",
        ] {
            assert_eq!(parse_line(other), Ok(Line::Other), "{other}");
        }
        for bad in [
            "New client connected from nowhere as x (p2, c1, k60).",
            "New client connected from 127.0.0.1:1 as x (p2, c1).",
            "New client connected from 127.0.0.1:1 as x",
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }

    struct NothingRecorded;
    impl Recorded for NothingRecorded {
        fn connection_on(&self, _: &ClientId, _: &str) -> Option<ConnectionId> {
            None
        }
    }

    fn events(outcome: Outcome) -> Vec<LifecycleEvent> {
        match outcome {
            Outcome::Events(e) => e,
            other => panic!("no events: {other:?}"),
        }
    }

    #[test]
    fn a_takeover_waits_for_the_new_connection_and_ids_grow() {
        let mut lines = Lines::new(Arc::from("m"), "connstate-m".into());
        let now = chrono::Utc::now();
        let first = events(
            lines
                .apply(
                    "New client connected from 127.0.0.1:1000 as c (p2, c1, k60).",
                    now,
                    &NothingRecorded,
                )
                .unwrap(),
        );
        assert!(
            events(
                lines
                    .apply(
                        "Client c already connected, closing old connection.",
                        now,
                        &NothingRecorded
                    )
                    .unwrap()
            )
            .is_empty()
        );
        let second = events(
            lines
                .apply(
                    "New client connected from 127.0.0.1:2000 as c (p2, c1, k60).",
                    now,
                    &NothingRecorded,
                )
                .unwrap(),
        );
        assert_eq!(second.len(), 2);
        assert_eq!(second[0].connection_id, first[0].connection_id);
        assert_eq!(
            second[0].kind,
            EventKind::Disconnected(DisconnectCause::SessionTakenOver {
                by: "127.0.0.1:2000".into()
            })
        );
        assert!(second[1].connection_id > first[0].connection_id);
        // A disconnect nobody connected: not recorded.
        assert_eq!(
            lines
                .apply("Client other disconnected.", now, &NothingRecorded)
                .unwrap(),
            Outcome::Unmatched
        );
        assert_eq!(
            lines
                .apply(
                    "Client <unknown> disconnected, not authorised.",
                    now,
                    &NothingRecorded
                )
                .unwrap(),
            Outcome::Unattributed
        );
    }

    #[test]
    fn reads_uptime() {
        assert_eq!(parse_uptime("42 seconds"), Some(42));
        assert_eq!(parse_uptime("soon"), None);
    }
}
