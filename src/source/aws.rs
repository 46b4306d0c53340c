//! AWS IoT Core as a source: the presence messages it publishes on
//! `$aws/events/presence/connected/{clientId}` and
//! `$aws/events/presence/disconnected/{clientId}`, turned into lifecycle
//! events.
//!
//! AWS numbers each client's connections with `versionNumber`, which only
//! grows; a connected message and the disconnected message that ends it
//! carry the same number. It is the connection id, so a duplicate or late
//! message is recognised by the tracker's ordering rules (stale, logged,
//! never a wrong state).

use std::sync::Arc;

use serde_json::Value;

use super::payload::Invalid;
use crate::domain::{
    ClientId, ConnectionInfo, DisconnectCause, EventKind, LifecycleEvent, ReasonCode, Timestamp,
};

/// The topic filters of an `aws-iot` source.
pub const PRESENCE_TOPICS: &[&str] = &[
    "$aws/events/presence/connected/+",
    "$aws/events/presence/disconnected/+",
];

/// Whether a presence topic is `connected` (else `disconnected`), and the
/// client id it names; `None` for any other topic.
pub fn presence_topic(topic: &str) -> Option<(bool, &str)> {
    let rest = topic.strip_prefix("$aws/events/presence/")?;
    let (kind, client) = rest.split_once('/')?;
    let connected = match kind {
        "connected" => true,
        "disconnected" => false,
        _ => return None,
    };
    (!client.is_empty() && !client.contains('/')).then_some((connected, client))
}

/// What a `disconnectReason` means. An unknown reason is recorded as a
/// lost connection without reason code.
pub fn disconnect_cause(reason: &str) -> DisconnectCause {
    match reason {
        "CLIENT_INITIATED_DISCONNECT" => {
            DisconnectCause::ClientDisconnect(ReasonCode::NORMAL_DISCONNECTION)
        }
        "SERVER_INITIATED_DISCONNECT" => DisconnectCause::ServerShuttingDown,
        "MQTT_KEEP_ALIVE_TIMEOUT" => DisconnectCause::KeepAliveTimeout,
        "DUPLICATE_CLIENTID" => DisconnectCause::SessionTakenOver { by: String::new() },
        "AUTH_ERROR" | "FORBIDDEN_ACCESS" => {
            DisconnectCause::ProtocolError(ReasonCode::NOT_AUTHORIZED)
        }
        "CLIENT_ERROR" => DisconnectCause::ProtocolError(ReasonCode::PROTOCOL_ERROR),
        "THROTTLED" => DisconnectCause::ProtocolError(ReasonCode(0x96)),
        "SERVER_ERROR" => DisconnectCause::ProtocolError(ReasonCode(0x83)),
        "WEBSOCKET_TTL_EXPIRATION" | "CUSTOMAUTH_TTL_EXPIRATION" => {
            DisconnectCause::ProtocolError(ReasonCode(0xA0))
        }
        // CONNECTION_LOST, and whatever AWS adds.
        _ => DisconnectCause::SocketClosed,
    }
}

fn text<'a>(v: &'a Value, name: &'static str) -> Result<Option<&'a str>, Invalid> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Invalid::new(name, "must be a string")),
    }
}

/// The event of one presence message on a topic of `connected` or not and
/// `topic_client` (see [`presence_topic`]).
pub fn event(
    connected: bool,
    topic_client: &str,
    v: &Value,
    broker: &Arc<str>,
    now: Timestamp,
) -> Result<LifecycleEvent, Invalid> {
    if !v.is_object() {
        return Err(Invalid::new("body", "must be a JSON object"));
    }
    let client = text(v, "clientId")?.ok_or_else(|| Invalid::new("clientId", "is required"))?;
    if client != topic_client {
        return Err(Invalid::new(
            "clientId",
            format!("{client:?} is not the client id of the topic ({topic_client:?})"),
        ));
    }
    let client_id = ClientId::new(client).map_err(|e| Invalid::new("clientId", e.to_string()))?;
    let topic_kind = if connected {
        "connected"
    } else {
        "disconnected"
    };
    match text(v, "eventType")? {
        Some(kind) if kind == topic_kind => {}
        Some(kind) => {
            return Err(Invalid::new(
                "eventType",
                format!("{kind:?} is not the event of the topic ({topic_kind:?})"),
            ));
        }
        None => return Err(Invalid::new("eventType", "is required")),
    }
    let connection_id = v
        .get("versionNumber")
        .ok_or_else(|| Invalid::new("versionNumber", "is required"))?
        .as_u64()
        .ok_or_else(|| Invalid::new("versionNumber", "must be a whole number from 0"))?;
    let time = match v.get("timestamp") {
        None | Some(Value::Null) => now,
        Some(t) => t
            .as_i64()
            .filter(|ms| *ms > 0)
            .and_then(chrono::DateTime::from_timestamp_millis)
            .filter(|t| t.timestamp() < 253_402_300_800)
            .ok_or_else(|| Invalid::new("timestamp", "must be milliseconds since the epoch"))?,
    };
    let kind = if connected {
        let addr = text(v, "ipAddress")?
            .ok_or_else(|| Invalid::new("ipAddress", "is required"))?
            .parse()
            .map_err(|_| Invalid::new("ipAddress", "must be an IP address"))?;
        EventKind::Connected(ConnectionInfo {
            addr,
            port: 0,
            // AWS IoT Core takes MQTT over TLS only.
            secure: true,
            username: String::new(),
            protocol: None,
            keep_alive: 0,
            clean_session: true,
        })
    } else {
        let cause = match (
            text(v, "disconnectReason")?,
            v.get("clientInitiatedDisconnect"),
        ) {
            (Some(reason), _) => disconnect_cause(reason),
            (None, Some(Value::Bool(true))) => {
                DisconnectCause::ClientDisconnect(ReasonCode::NORMAL_DISCONNECTION)
            }
            (None, Some(Value::Bool(false)) | None) => DisconnectCause::SocketClosed,
            (None, Some(_)) => {
                return Err(Invalid::new(
                    "clientInitiatedDisconnect",
                    "must be true or false",
                ));
            }
        };
        EventKind::Disconnected(cause)
    };
    Ok(LifecycleEvent {
        client_id,
        time,
        connection_id,
        broker: broker.clone(),
        kind,
        peer: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DisconnectInitiator;

    #[test]
    fn reasons_map_to_initiator_and_code() {
        use DisconnectInitiator::*;
        let cases = [
            ("CLIENT_INITIATED_DISCONNECT", Client, Some(0x00)),
            ("SERVER_INITIATED_DISCONNECT", Server, Some(0x8B)),
            ("MQTT_KEEP_ALIVE_TIMEOUT", Network, Some(0x8D)),
            ("DUPLICATE_CLIENTID", Server, Some(0x8E)),
            ("CONNECTION_LOST", Network, None),
            ("AUTH_ERROR", Server, Some(0x87)),
            ("FORBIDDEN_ACCESS", Server, Some(0x87)),
            ("CLIENT_ERROR", Server, Some(0x82)),
            ("THROTTLED", Server, Some(0x96)),
            ("SERVER_ERROR", Server, Some(0x83)),
            ("WEBSOCKET_TTL_EXPIRATION", Server, Some(0xA0)),
            ("CUSTOMAUTH_TTL_EXPIRATION", Server, Some(0xA0)),
            ("SOMETHING_NEW", Network, None),
        ];
        for (reason, initiator, code) in cases {
            let cause = disconnect_cause(reason);
            assert_eq!(cause.initiator(), initiator, "{reason}");
            assert_eq!(cause.reason_code().map(|c| c.0), code, "{reason}");
        }
    }

    #[test]
    fn reads_presence_topics_and_names_bad_fields() {
        assert_eq!(
            presence_topic("$aws/events/presence/connected/dev-1"),
            Some((true, "dev-1"))
        );
        assert_eq!(
            presence_topic("$aws/events/presence/disconnected/dev-1"),
            Some((false, "dev-1"))
        );
        assert_eq!(
            presence_topic("$aws/events/subscriptions/subscribed/x"),
            None
        );
        let broker: Arc<str> = Arc::from("aws");
        let now = chrono::Utc::now();
        let ok = serde_json::json!({
            "clientId": "c", "timestamp": 1_573_002_230_757i64, "eventType": "connected",
            "ipAddress": "192.0.2.0", "versionNumber": 3
        });
        let e = event(true, "c", &ok, &broker, now).unwrap();
        assert_eq!(e.connection_id, 3);
        for (field, body) in [
            (
                "eventType",
                serde_json::json!({"clientId": "c", "eventType": "disconnected", "versionNumber": 1}),
            ),
            (
                "versionNumber",
                serde_json::json!({"clientId": "c", "eventType": "connected", "versionNumber": -1, "ipAddress": "192.0.2.0"}),
            ),
            (
                "clientId",
                serde_json::json!({"clientId": "d", "eventType": "connected", "versionNumber": 1}),
            ),
            (
                "ipAddress",
                serde_json::json!({"clientId": "c", "eventType": "connected", "versionNumber": 1}),
            ),
        ] {
            assert_eq!(
                event(true, "c", &body, &broker, now).unwrap_err().field,
                field
            );
        }
    }
}
