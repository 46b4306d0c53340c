//! EMQX 5 as a source: the payloads of its rule engine / webhook events
//! `client.connected`, `client.disconnected` and `client.connack`, and of
//! its `$SYS/brokers/{node}/clients/{clientid}/connected|disconnected`
//! messages, turned into lifecycle events.
//!
//! EMQX's `connected_at` (milliseconds) names a connection: it is the
//! connection id, so a late or repeated payload is recognised by the
//! tracker's ordering rules (stale, logged, never a wrong state).

use std::{net::IpAddr, sync::Arc};

use serde_json::Value;

use super::{mosquitto::Recorded, payload::Invalid};
use crate::domain::{
    ClientId, ConnectFailure, ConnectionInfo, DisconnectCause, EventKind, LifecycleEvent,
    MqttProtocol, ReasonCode, Timestamp,
};

/// What an EMQX disconnect `reason` means. Unknown reasons are recorded as
/// a lost connection without reason code.
pub fn disconnect_cause(reason: &str) -> DisconnectCause {
    match reason {
        "normal" => DisconnectCause::ClientDisconnect(ReasonCode::NORMAL_DISCONNECTION),
        "kicked" => DisconnectCause::AdministrativeAction,
        "keepalive_timeout" => DisconnectCause::KeepAliveTimeout,
        "not_authorized" => DisconnectCause::ProtocolError(ReasonCode::NOT_AUTHORIZED),
        "takenover" | "takeovered" | "discarded" => DisconnectCause::SessionTakenOver {
            by: "a new connection of the same client id".into(),
        },
        "frame_too_large" => DisconnectCause::PacketTooLarge,
        "malformed_packet" | "frame_error" => DisconnectCause::MalformedPacket,
        "protocol_error" => DisconnectCause::ProtocolError(ReasonCode::PROTOCOL_ERROR),
        "shutdown" => DisconnectCause::ServerShuttingDown,
        // tcp_closed, ssl_closed, closed, sock_closed, einval, etimedout,
        // econnreset, ...: the connection went away.
        _ => DisconnectCause::SocketClosed,
    }
}

/// What an EMQX CONNACK `reason_code` means; `None` for success.
pub fn connect_failure(reason: &str) -> Option<ConnectFailure> {
    Some(match reason {
        "success" => return None,
        "bad_username_or_password" | "bad_authentication_method" => ConnectFailure::BadCredentials,
        "client_identifier_not_valid" => ConnectFailure::BadClientId,
        "unsupported_protocol_version" => ConnectFailure::UnsupportedProtocol,
        "server_busy" | "quota_exceeded" | "connection_rate_exceeded" => ConnectFailure::ServerBusy,
        "server_unavailable" => ConnectFailure::ServerUnavailable,
        // not_authorized, banned, and whatever else refuses a client.
        _ => ConnectFailure::NotAuthorized,
    })
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.get(name).filter(|f| !f.is_null())
}

fn text<'a>(v: &'a Value, name: &'static str) -> Result<Option<&'a str>, Invalid> {
    match field(v, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Invalid::new(name, "must be a string")),
    }
}

fn required_text<'a>(v: &'a Value, name: &'static str) -> Result<&'a str, Invalid> {
    text(v, name)?.ok_or_else(|| Invalid::new(name, "is required"))
}

fn millis(v: &Value, name: &'static str) -> Result<Option<i64>, Invalid> {
    match field(v, name) {
        None => Ok(None),
        Some(f) => f
            .as_i64()
            .filter(|ms| *ms > 0)
            .map(Some)
            .ok_or_else(|| Invalid::new(name, "must be a positive number of milliseconds")),
    }
}

fn time(ms: i64, name: &'static str) -> Result<Timestamp, Invalid> {
    chrono::DateTime::from_timestamp_millis(ms)
        .filter(|t| t.timestamp() < 253_402_300_800)
        .ok_or_else(|| Invalid::new(name, "is out of range"))
}

/// `peername` ("ip:port", webhooks) or `ipaddress` (`$SYS` messages).
fn peer(v: &Value) -> Result<(IpAddr, u16), Invalid> {
    if let Some(name) = text(v, "peername")? {
        let parsed: Option<std::net::SocketAddr> = name.parse().ok().or_else(|| {
            let (ip, port) = name.rsplit_once(':')?;
            Some(std::net::SocketAddr::new(
                ip.parse().ok()?,
                port.parse().ok()?,
            ))
        });
        return parsed
            .map(|a| (a.ip(), a.port()))
            .ok_or_else(|| Invalid::new("peername", "must be IP:PORT"));
    }
    let ip = required_text(v, "ipaddress")
        .map_err(|_| Invalid::new("peername", "is required (or ipaddress)"))?;
    let ip = ip
        .parse()
        .map_err(|_| Invalid::new("ipaddress", "must be an IP address"))?;
    // `sockport` is the port of EMQX's listener; the client's port is not
    // in a `$SYS` payload.
    Ok((ip, 0))
}

fn info(v: &Value) -> Result<ConnectionInfo, Invalid> {
    let (addr, port) = peer(v)?;
    let protocol = match field(v, "proto_ver").map(|p| p.as_u64()) {
        None => None,
        Some(Some(3)) => Some(MqttProtocol::V3_1),
        Some(Some(4)) => Some(MqttProtocol::V3_1_1),
        Some(Some(5)) => Some(MqttProtocol::V5_0),
        Some(_) => return Err(Invalid::new("proto_ver", "must be 3, 4 or 5")),
    };
    let keep_alive = match field(v, "keepalive") {
        None => 0,
        Some(k) => k
            .as_u64()
            .and_then(|k| u16::try_from(k).ok())
            .ok_or_else(|| Invalid::new("keepalive", "must be 0 to 65535"))?,
    };
    let clean_session = match field(v, "clean_start") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Invalid::new("clean_start", "must be true or false")),
    };
    Ok(ConnectionInfo {
        addr,
        port,
        secure: false,
        username: text(v, "username")?.unwrap_or_default().to_owned(),
        protocol,
        keep_alive,
        clean_session,
    })
}

/// The event of one EMQX payload; `kind` is `client.connected`,
/// `client.disconnected` or `client.connack` (from the payload's `event`,
/// or from the `$SYS` topic it came on).
pub fn event(
    kind: &str,
    v: &Value,
    broker: &Arc<str>,
    now: Timestamp,
) -> Result<LifecycleEvent, Invalid> {
    if !v.is_object() {
        return Err(Invalid::new("body", "must be a JSON object"));
    }
    let client_id = required_text(v, "clientid")?;
    let client_id =
        ClientId::new(client_id).map_err(|e| Invalid::new("clientid", e.to_string()))?;
    let at = |name: &'static str| -> Result<Option<Timestamp>, Invalid> {
        millis(v, name)?.map(|ms| time(ms, name)).transpose()
    };
    let connection_id = |required: bool| -> Result<u64, Invalid> {
        match millis(v, "connected_at")? {
            Some(ms) => Ok(ms as u64),
            None if required => Err(Invalid::new("connected_at", "is required")),
            None => Ok(0),
        }
    };
    let event = |connection_id, time: Option<Timestamp>, kind| LifecycleEvent {
        client_id,
        time: time.unwrap_or(now),
        connection_id,
        broker: broker.clone(),
        kind,
        peer: None,
    };
    match kind {
        "client.connected" => {
            let time = at("connected_at")?;
            Ok(event(
                connection_id(true)?,
                time,
                EventKind::Connected(info(v)?),
            ))
        }
        "client.disconnected" => {
            let reason = match field(v, "reason") {
                Some(Value::String(r)) => r.as_str(),
                Some(_) => return Err(Invalid::new("reason", "must be a string")),
                None => return Err(Invalid::new("reason", "is required")),
            };
            let time = match at("disconnected_at")? {
                Some(t) => Some(t),
                None => at("ts")?.or(at("timestamp")?),
            };
            Ok(event(
                connection_id(true)?,
                time,
                EventKind::Disconnected(disconnect_cause(reason)),
            ))
        }
        "client.connack" => {
            let reason = required_text(v, "reason_code")?;
            let Some(failure) = connect_failure(reason) else {
                return Err(Invalid::new(
                    "reason_code",
                    "\"success\": a successful CONNACK is recorded from client.connected",
                ));
            };
            let time = at("timestamp")?.or(at("ts")?);
            Ok(event(
                0,
                time,
                EventKind::ConnectFailed {
                    info: info(v)?,
                    failure,
                },
            ))
        }
        other => Err(Invalid::new(
            "event",
            format!(
                "{other:?} is not taken: client.connected, client.disconnected or client.connack"
            ),
        )),
    }
}

/// The topic filter of an `emqx` source. EMQX puts the client id in the
/// topic as it is, so a client id with `/` in it makes more levels than
/// `$SYS/brokers/+/clients/+/connected` matches: the source takes the whole
/// subtree and reads the kind from the last level.
pub const SYS_TOPICS: &[&str] = &["$SYS/brokers/+/clients/#"];

/// The event kind and client id of a
/// `$SYS/brokers/{node}/clients/{clientid}/connected|disconnected` topic;
/// `None` for any other topic.
pub fn sys_topic(topic: &str) -> Option<(&'static str, &str)> {
    let rest = topic.strip_prefix("$SYS/brokers/")?;
    let (_node, rest) = rest.split_once('/')?;
    let (client_id, last) = rest.strip_prefix("clients/")?.rsplit_once('/')?;
    let kind = match last {
        "connected" => "client.connected",
        "disconnected" => "client.disconnected",
        _ => return None,
    };
    (!client_id.is_empty()).then_some((kind, client_id))
}

/// The event of one `$SYS` message on the topic of `kind` and `topic_client`
/// (see [`sys_topic`]). A `disconnected` payload without `connected_at`
/// (EMQX 4 sends none) ends the connection the client is recorded on for
/// this broker; `None` when it is recorded on none.
pub fn sys_event(
    kind: &str,
    topic_client: &str,
    v: &Value,
    broker: &Arc<str>,
    now: Timestamp,
    recorded: &impl Recorded,
) -> Result<Option<LifecycleEvent>, Invalid> {
    if !v.is_object() {
        return Err(Invalid::new("body", "must be a JSON object"));
    }
    let client_id = required_text(v, "clientid")?;
    if client_id != topic_client {
        return Err(Invalid::new(
            "clientid",
            format!("{client_id:?} is not the client id of the topic ({topic_client:?})"),
        ));
    }
    if kind == "client.disconnected" && field(v, "connected_at").is_none() {
        let client =
            ClientId::new(client_id).map_err(|e| Invalid::new("clientid", e.to_string()))?;
        let Some(connection) = recorded.connection_on(&client, broker) else {
            return Ok(None);
        };
        let mut with_id = v.clone();
        with_id["connected_at"] = Value::from(connection);
        return event(kind, &with_id, broker, now).map(Some);
    }
    event(kind, v, broker, now).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DisconnectInitiator;

    #[test]
    fn reasons_map_to_initiator_and_code() {
        let cases = [
            ("normal", DisconnectInitiator::Client, Some(0x00)),
            ("kicked", DisconnectInitiator::Server, Some(0x98)),
            (
                "keepalive_timeout",
                DisconnectInitiator::Network,
                Some(0x8D),
            ),
            ("not_authorized", DisconnectInitiator::Server, Some(0x87)),
            ("tcp_closed", DisconnectInitiator::Network, None),
            ("takenover", DisconnectInitiator::Server, Some(0x8E)),
            ("discarded", DisconnectInitiator::Server, Some(0x8E)),
            ("something_new", DisconnectInitiator::Network, None),
        ];
        for (reason, initiator, code) in cases {
            let cause = disconnect_cause(reason);
            assert_eq!(cause.initiator(), initiator, "{reason}");
            assert_eq!(cause.reason_code().map(|c| c.0), code, "{reason}");
        }
        assert_eq!(connect_failure("success"), None);
        assert_eq!(
            connect_failure("not_authorized"),
            Some(ConnectFailure::NotAuthorized)
        );
    }

    #[test]
    fn a_sys_payload_has_no_client_port() {
        // `sockport` is the port of EMQX's listener, not the client's.
        let v = serde_json::json!({
            "clientid": "c", "ipaddress": "192.0.2.7", "sockport": 1883,
            "proto_ver": 4, "keepalive": 60, "clean_start": true,
            "connected_at": 1_790_000_000_000i64, "ts": 1_790_000_000_000i64
        });
        let e = event(
            "client.connected",
            &v,
            &Arc::from("emqx"),
            chrono::Utc::now(),
        )
        .unwrap();
        let EventKind::Connected(info) = e.kind else {
            panic!("not a connect");
        };
        assert_eq!((info.addr.to_string(), info.port), ("192.0.2.7".into(), 0));
    }

    #[test]
    fn reads_sys_topics() {
        assert_eq!(
            sys_topic("$SYS/brokers/emqx@10.0.0.1/clients/dev-1/connected"),
            Some(("client.connected", "dev-1"))
        );
        assert_eq!(
            sys_topic("$SYS/brokers/n/clients/a/b/disconnected"),
            Some(("client.disconnected", "a/b"))
        );
        for other in [
            "$SYS/brokers/n/clients/c/subscribed",
            "$SYS/brokers/n/clients//connected",
            "$SYS/brokers/n/uptime",
            "$SYS/brokers",
        ] {
            assert_eq!(sys_topic(other), None, "{other}");
        }
    }

    #[test]
    fn a_payload_without_a_field_names_it() {
        let broker: Arc<str> = Arc::from("emqx");
        let now = chrono::Utc::now();
        let v = serde_json::json!({"clientid": "c", "peername": "10.0.0.1:5000"});
        let err = event("client.connected", &v, &broker, now).unwrap_err();
        assert_eq!(err.field, "connected_at");
        let v = serde_json::json!({"clientid": 7});
        assert_eq!(
            event("client.connected", &v, &broker, now)
                .unwrap_err()
                .field,
            "clientid"
        );
    }
}
