//! The cluster log's messages: what one JetStream message of the log holds
//! (a [`Batch`] of entries from one node), as protobuf.
//!
//! Every lifecycle event crosses the log whole: each node runs the same
//! rules on the same events, so nothing a rule reads may be lost here (the
//! round-trip test below checks each kind of event and cause).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use chrono::TimeZone;
use prost::{Message, Oneof};

use crate::{
    domain::{
        ActivityKind, ClientId, ConnectFailure, ConnectionInfo, DisconnectCause, EventKind,
        LifecycleEvent, MqttProtocol, ReasonCode,
    },
    store::{Settings, Store, Write},
};

/// One message of the log: entries appended together by one node.
#[derive(Clone, PartialEq, Message)]
pub struct Batch {
    /// The node that appended it.
    #[prost(string, tag = "1")]
    pub node: String,
    /// The run of that node it came from (a random number per start): a
    /// run declared lost is fenced off, its later appends refused.
    #[prost(uint64, tag = "2")]
    pub incarnation: u64,
    #[prost(message, repeated, tag = "3")]
    pub entries: Vec<Entry>,
}

/// One write of a batch.
#[derive(Clone, PartialEq, Message)]
pub struct Entry {
    /// The appender's number for it: the appending node hands the result
    /// to whoever waits for this number.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(oneof = "Body", tags = "2, 3, 4, 5, 6, 7, 8")]
    pub body: Option<Body>,
}

#[derive(Clone, PartialEq, Oneof)]
pub enum Body {
    #[prost(message, tag = "2")]
    Events(Events),
    /// The client whose record and log are deleted.
    #[prost(string, tag = "3")]
    Delete(String),
    /// New settings, as the store encodes them.
    #[prost(bytes, tag = "4")]
    Settings(Vec<u8>),
    /// The appending node started a new run: its earlier runs' connections
    /// are over.
    #[prost(message, tag = "5")]
    NodeStarted(NodeStarted),
    /// Another node's run was lost (its lease lapsed).
    #[prost(message, tag = "6")]
    NodeLost(NodeLost),
    /// A broker reporting through ingest renewed its lease.
    #[prost(message, tag = "7")]
    LeaseRenewed(LeaseRenewed),
    /// A broker's lease, as last renewed at `renewed_ms`, lapsed.
    #[prost(message, tag = "8")]
    LeaseLapsed(LeaseLapsed),
}

#[derive(Clone, PartialEq, Message)]
pub struct LeaseRenewed {
    #[prost(string, tag = "1")]
    pub holder: String,
    #[prost(uint64, tag = "2")]
    pub duration_ms: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct LeaseLapsed {
    #[prost(string, tag = "1")]
    pub holder: String,
    #[prost(int64, tag = "2")]
    pub renewed_ms: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Events {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<EventRecord>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeStarted {
    #[prost(uint64, tag = "1")]
    pub lease_ms: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeLost {
    #[prost(string, tag = "1")]
    pub node: String,
    #[prost(uint64, tag = "2")]
    pub incarnation: u64,
    #[prost(uint64, tag = "3")]
    pub lease_ms: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct EventRecord {
    #[prost(string, tag = "1")]
    client_id: String,
    #[prost(int64, tag = "2")]
    time_ms: i64,
    #[prost(uint64, tag = "3")]
    connection_id: u64,
    #[prost(string, tag = "4")]
    broker: String,
    /// 1 connected, 2 connect failed, 3 disconnected, 4 activity.
    #[prost(uint32, tag = "5")]
    kind: u32,
    #[prost(message, optional, tag = "6")]
    info: Option<InfoRecord>,
    /// The failure of a refused connect.
    #[prost(uint32, tag = "7")]
    failure: u32,
    #[prost(message, optional, tag = "8")]
    cause: Option<CauseRecord>,
    #[prost(uint32, tag = "9")]
    activity: u32,
    #[prost(bytes = "vec", tag = "10")]
    peer_addr: Vec<u8>,
    #[prost(uint32, tag = "11")]
    peer_port: u32,
}

#[derive(Clone, PartialEq, Message)]
struct InfoRecord {
    #[prost(bytes = "vec", tag = "1")]
    addr: Vec<u8>,
    #[prost(uint32, tag = "2")]
    port: u32,
    #[prost(bool, tag = "3")]
    secure: bool,
    #[prost(string, tag = "4")]
    username: String,
    /// 0 none, 1 3.1, 2 3.1.1, 3 5.0.
    #[prost(uint32, tag = "5")]
    protocol: u32,
    #[prost(uint32, tag = "6")]
    keep_alive: u32,
    #[prost(bool, tag = "7")]
    clean_session: bool,
}

#[derive(Clone, PartialEq, Message)]
struct CauseRecord {
    #[prost(uint32, tag = "1")]
    kind: u32,
    #[prost(uint32, tag = "2")]
    reason_code: u32,
    /// Who took over, the broker that restarted, the lease holder or node.
    #[prost(string, tag = "3")]
    text: String,
    #[prost(uint64, tag = "4")]
    lease_secs: u64,
}

/// A message of the log that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("undecodable log message: {0}")]
pub struct BadMessage(pub String);

fn bad(what: impl Into<String>) -> BadMessage {
    BadMessage(what.into())
}

impl Batch {
    pub fn decode_from(bytes: &[u8]) -> Result<Batch, BadMessage> {
        Batch::decode(bytes).map_err(|e| bad(e.to_string()))
    }
}

/// The entry body of a store write.
pub fn body_of(write: &Write) -> Body {
    match write {
        Write::Events(events) => Body::Events(Events {
            events: events.iter().map(EventRecord::from).collect(),
        }),
        Write::Delete(client) => Body::Delete(client.as_str().to_owned()),
        Write::Settings(settings) => Body::Settings(Store::encode_settings(settings)),
        Write::RenewLease { holder, duration } => Body::LeaseRenewed(LeaseRenewed {
            holder: holder.clone(),
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        }),
        Write::LapseLease { holder, renewed_ms } => Body::LeaseLapsed(LeaseLapsed {
            holder: holder.clone(),
            renewed_ms: *renewed_ms,
        }),
        // Ends of brokers are decided when applied (NodeStarted, NodeLost),
        // never appended as such.
        Write::EndBroker { .. } => Body::Events(Events::default()),
    }
}

/// The store write of an entry body that is one (not a node's start or
/// loss).
pub fn write_of(body: Body) -> Result<Write, BadMessage> {
    Ok(match body {
        Body::Events(events) => Write::Events(
            events
                .events
                .into_iter()
                .map(LifecycleEvent::try_from)
                .collect::<Result<_, _>>()?,
        ),
        Body::Delete(client) => {
            Write::Delete(ClientId::new(client).map_err(|e| bad(e.to_string()))?)
        }
        Body::Settings(bytes) => Write::Settings(decode_settings(&bytes)?),
        Body::LeaseRenewed(lease) => Write::RenewLease {
            holder: lease.holder,
            duration: std::time::Duration::from_millis(lease.duration_ms),
        },
        Body::LeaseLapsed(lease) => Write::LapseLease {
            holder: lease.holder,
            renewed_ms: lease.renewed_ms,
        },
        Body::NodeStarted(_) | Body::NodeLost(_) => {
            return Err(bad("a node entry is not a store write"));
        }
    })
}

fn decode_settings(bytes: &[u8]) -> Result<Settings, BadMessage> {
    Store::decode_settings(bytes).map_err(|e| bad(e.to_string()))
}

fn addr_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn addr_from(bytes: &[u8]) -> Result<Option<IpAddr>, BadMessage> {
    Ok(match bytes.len() {
        0 => None,
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes"))),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes"))),
        n => return Err(bad(format!("an address of {n} bytes"))),
    })
}

impl From<&ConnectionInfo> for InfoRecord {
    fn from(i: &ConnectionInfo) -> Self {
        InfoRecord {
            addr: addr_bytes(i.addr),
            port: u32::from(i.port),
            secure: i.secure,
            username: i.username.clone(),
            protocol: match i.protocol {
                None => 0,
                Some(MqttProtocol::V3_1) => 1,
                Some(MqttProtocol::V3_1_1) => 2,
                Some(MqttProtocol::V5_0) => 3,
            },
            keep_alive: u32::from(i.keep_alive),
            clean_session: i.clean_session,
        }
    }
}

impl TryFrom<InfoRecord> for ConnectionInfo {
    type Error = BadMessage;

    fn try_from(r: InfoRecord) -> Result<Self, BadMessage> {
        Ok(ConnectionInfo {
            addr: addr_from(&r.addr)?.ok_or_else(|| bad("a connection without address"))?,
            port: u16::try_from(r.port).map_err(|_| bad("port"))?,
            secure: r.secure,
            username: r.username,
            protocol: match r.protocol {
                0 => None,
                1 => Some(MqttProtocol::V3_1),
                2 => Some(MqttProtocol::V3_1_1),
                3 => Some(MqttProtocol::V5_0),
                n => return Err(bad(format!("protocol {n}"))),
            },
            keep_alive: u16::try_from(r.keep_alive).map_err(|_| bad("keepalive"))?,
            clean_session: r.clean_session,
        })
    }
}

const FAILURES: [ConnectFailure; 6] = [
    ConnectFailure::BadCredentials,
    ConnectFailure::NotAuthorized,
    ConnectFailure::BadClientId,
    ConnectFailure::UnsupportedProtocol,
    ConnectFailure::ServerBusy,
    ConnectFailure::ServerUnavailable,
];

const ACTIVITIES: [ActivityKind; 6] = [
    ActivityKind::Connect,
    ActivityKind::Publish,
    ActivityKind::Subscribe,
    ActivityKind::Unsubscribe,
    ActivityKind::Ping,
    ActivityKind::Disconnect,
];

fn number_of<T: PartialEq>(all: &[T], value: &T) -> u32 {
    all.iter().position(|v| v == value).unwrap_or(0) as u32
}

fn nth<T: Copy>(all: &[T], n: u32, what: &str) -> Result<T, BadMessage> {
    all.get(n as usize)
        .copied()
        .ok_or_else(|| bad(format!("{what} {n}")))
}

impl From<&DisconnectCause> for CauseRecord {
    fn from(c: &DisconnectCause) -> Self {
        let plain = |kind| CauseRecord {
            kind,
            reason_code: 0,
            text: String::new(),
            lease_secs: 0,
        };
        match c {
            DisconnectCause::ClientDisconnect(code) => CauseRecord {
                reason_code: u32::from(code.0),
                ..plain(1)
            },
            DisconnectCause::SocketClosed => plain(2),
            DisconnectCause::KeepAliveTimeout => plain(3),
            DisconnectCause::SessionTakenOver { by } => CauseRecord {
                text: by.clone(),
                ..plain(4)
            },
            DisconnectCause::MalformedPacket => plain(5),
            DisconnectCause::ProtocolError(code) => CauseRecord {
                reason_code: u32::from(code.0),
                ..plain(6)
            },
            DisconnectCause::PacketTooLarge => plain(7),
            DisconnectCause::AdministrativeAction => plain(8),
            DisconnectCause::CredentialsRevoked => plain(9),
            DisconnectCause::ServerShuttingDown => plain(10),
            DisconnectCause::ServerRestarted => plain(11),
            DisconnectCause::BrokerRestarted { broker } => CauseRecord {
                text: broker.clone(),
                ..plain(12)
            },
            DisconnectCause::LeaseLapsed { holder, lease_secs } => CauseRecord {
                text: holder.clone(),
                lease_secs: *lease_secs,
                ..plain(13)
            },
            DisconnectCause::NodeLost { node, lease_secs } => CauseRecord {
                text: node.clone(),
                lease_secs: *lease_secs,
                ..plain(14)
            },
        }
    }
}

impl TryFrom<CauseRecord> for DisconnectCause {
    type Error = BadMessage;

    fn try_from(r: CauseRecord) -> Result<Self, BadMessage> {
        let code = || {
            u8::try_from(r.reason_code)
                .map(ReasonCode)
                .map_err(|_| bad("reason code"))
        };
        Ok(match r.kind {
            1 => DisconnectCause::ClientDisconnect(code()?),
            2 => DisconnectCause::SocketClosed,
            3 => DisconnectCause::KeepAliveTimeout,
            4 => DisconnectCause::SessionTakenOver { by: r.text },
            5 => DisconnectCause::MalformedPacket,
            6 => DisconnectCause::ProtocolError(code()?),
            7 => DisconnectCause::PacketTooLarge,
            8 => DisconnectCause::AdministrativeAction,
            9 => DisconnectCause::CredentialsRevoked,
            10 => DisconnectCause::ServerShuttingDown,
            11 => DisconnectCause::ServerRestarted,
            12 => DisconnectCause::BrokerRestarted { broker: r.text },
            13 => DisconnectCause::LeaseLapsed {
                holder: r.text,
                lease_secs: r.lease_secs,
            },
            14 => DisconnectCause::NodeLost {
                node: r.text,
                lease_secs: r.lease_secs,
            },
            n => return Err(bad(format!("disconnect cause {n}"))),
        })
    }
}

impl From<&LifecycleEvent> for EventRecord {
    fn from(e: &LifecycleEvent) -> Self {
        let mut record = EventRecord {
            client_id: e.client_id.as_str().to_owned(),
            time_ms: e.time.timestamp_millis(),
            connection_id: e.connection_id,
            broker: e.broker.to_string(),
            kind: 0,
            info: None,
            failure: 0,
            cause: None,
            activity: 0,
            peer_addr: e.peer.map(|p| addr_bytes(p.ip())).unwrap_or_default(),
            peer_port: e.peer.map_or(0, |p| u32::from(p.port())),
        };
        match &e.kind {
            EventKind::Connected(info) => {
                record.kind = 1;
                record.info = Some(info.into());
            }
            EventKind::ConnectFailed { info, failure } => {
                record.kind = 2;
                record.info = Some(info.into());
                record.failure = number_of(&FAILURES, failure);
            }
            EventKind::Disconnected(cause) => {
                record.kind = 3;
                record.cause = Some(cause.into());
            }
            EventKind::Activity(kind) => {
                record.kind = 4;
                record.activity = number_of(&ACTIVITIES, kind);
            }
        }
        record
    }
}

impl TryFrom<EventRecord> for LifecycleEvent {
    type Error = BadMessage;

    fn try_from(r: EventRecord) -> Result<Self, BadMessage> {
        let info = |i: Option<InfoRecord>| -> Result<ConnectionInfo, BadMessage> {
            ConnectionInfo::try_from(i.ok_or_else(|| bad("a connect without its connection"))?)
        };
        let kind = match r.kind {
            1 => EventKind::Connected(info(r.info)?),
            2 => EventKind::ConnectFailed {
                info: info(r.info)?,
                failure: nth(&FAILURES, r.failure, "connect failure")?,
            },
            3 => EventKind::Disconnected(DisconnectCause::try_from(
                r.cause.ok_or_else(|| bad("a disconnect without cause"))?,
            )?),
            4 => EventKind::Activity(nth(&ACTIVITIES, r.activity, "activity")?),
            n => return Err(bad(format!("event kind {n}"))),
        };
        let peer = addr_from(&r.peer_addr)?
            .map(|addr| {
                u16::try_from(r.peer_port)
                    .map(|port| SocketAddr::new(addr, port))
                    .map_err(|_| bad("peer port"))
            })
            .transpose()?;
        Ok(LifecycleEvent {
            client_id: ClientId::new(r.client_id).map_err(|e| bad(e.to_string()))?,
            time: chrono::Utc
                .timestamp_millis_opt(r.time_ms)
                .single()
                .ok_or_else(|| bad("event time"))?,
            connection_id: r.connection_id,
            broker: Arc::from(r.broker),
            kind,
            peer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, peer: Option<SocketAddr>) -> LifecycleEvent {
        LifecycleEvent {
            client_id: ClientId::new("d:org:type:dev").unwrap(),
            time: chrono::Utc.timestamp_millis_opt(1_700_000_000_123).unwrap(),
            connection_id: 42,
            broker: Arc::from("embedded@n1"),
            kind,
            peer,
        }
    }

    fn info() -> ConnectionInfo {
        ConnectionInfo {
            addr: "::1".parse().unwrap(),
            port: 5000,
            secure: true,
            username: "use-token-auth".into(),
            protocol: Some(MqttProtocol::V5_0),
            keep_alive: 60,
            clean_session: false,
        }
    }

    #[test]
    fn every_kind_of_event_crosses_the_log_whole() {
        let causes = vec![
            DisconnectCause::ClientDisconnect(ReasonCode(0x04)),
            DisconnectCause::SocketClosed,
            DisconnectCause::KeepAliveTimeout,
            DisconnectCause::SessionTakenOver {
                by: "10.0.0.1:4000".into(),
            },
            DisconnectCause::MalformedPacket,
            DisconnectCause::ProtocolError(ReasonCode(0x94)),
            DisconnectCause::PacketTooLarge,
            DisconnectCause::AdministrativeAction,
            DisconnectCause::CredentialsRevoked,
            DisconnectCause::ServerShuttingDown,
            DisconnectCause::ServerRestarted,
            DisconnectCause::BrokerRestarted { broker: "b".into() },
            DisconnectCause::LeaseLapsed {
                holder: "h".into(),
                lease_secs: 30,
            },
            DisconnectCause::NodeLost {
                node: "n2".into(),
                lease_secs: 10,
            },
        ];
        let mut events = vec![event(EventKind::Connected(info()), None)];
        for failure in FAILURES {
            events.push(event(
                EventKind::ConnectFailed {
                    info: info(),
                    failure,
                },
                None,
            ));
        }
        for cause in causes {
            events.push(event(
                EventKind::Disconnected(cause),
                Some("127.0.0.1:1234".parse().unwrap()),
            ));
        }
        for activity in ACTIVITIES {
            events.push(event(EventKind::Activity(activity), None));
        }
        let write = Write::Events(events);
        let entry = Entry {
            id: 7,
            body: Some(body_of(&write)),
        };
        let batch = Batch {
            node: "n1".into(),
            incarnation: 9,
            entries: vec![entry],
        };
        let decoded = Batch::decode_from(&batch.encode_to_vec()).unwrap();
        let body = decoded.entries.into_iter().next().unwrap().body.unwrap();
        assert_eq!(write_of(body).unwrap(), write);
    }

    #[test]
    fn deletions_and_settings_cross_the_log_whole() {
        for write in [
            Write::Delete(ClientId::new("a:org:app").unwrap()),
            Write::Settings(Settings {
                enabled: false,
                ..Settings::default()
            }),
            Write::RenewLease {
                holder: "mosquitto".into(),
                duration: std::time::Duration::from_millis(30_500),
            },
            Write::LapseLease {
                holder: "mosquitto".into(),
                renewed_ms: 1_700_000_000_123,
            },
        ] {
            assert_eq!(write_of(body_of(&write)).unwrap(), write);
        }
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        assert!(Batch::decode_from(&[0xff, 0xff, 0xff]).is_err());
        let record = EventRecord {
            kind: 99,
            ..EventRecord::from(&event(EventKind::Activity(ActivityKind::Ping), None))
        };
        assert!(LifecycleEvent::try_from(record).is_err());
    }
}
