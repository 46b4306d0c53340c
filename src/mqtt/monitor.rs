//! Monitor messages: the broker's own Connect, Disconnect and FailedConnect
//! messages (DESIGN.md §4).
//!
//! Devices and gateways: `iot-2/type/{t}/id/{d}/mon`, Connect and
//! Disconnect retained (a takeover's Disconnect is not). Applications:
//! `iot-2/app/{appId}/mon`, Connect retained and cleared by the Disconnect,
//! which is not retained. FailedConnect is never retained. Every client,
//! platform id or not, also has `$SYS/clients/{clientId}/mon` with the same
//! messages, so that open-mode fleets can watch any client; there the
//! Connect is retained only while the client is connected (the application
//! rule), so that clients with random ids, one per connection, do not pile
//! up retained messages for ever.

use std::net::SocketAddr;

use bytes::Bytes;
use bytestring::ByteString;
use chrono::SecondsFormat;
use rmqtt_codec::types::QoS;
use serde_json::{Map, Value, json};

use super::{Broker, Message};
use crate::domain::{Change, ClientKind, CloseCode, LogKind, MqttProtocol, Timestamp};

/// Where and how a client connected.
pub struct Origin<'a> {
    pub client_id: &'a str,
    pub peer: SocketAddr,
    /// The broker's port the client connected to.
    pub server_port: u16,
    pub secure: bool,
    pub protocol: MqttProtocol,
    pub username: &'a str,
}

/// Bytes and messages of a connection, both directions.
#[derive(Debug, Default, Clone, Copy)]
pub struct Traffic {
    pub read_bytes: u64,
    pub read_msgs: u64,
    pub write_bytes: u64,
    pub write_msgs: u64,
}

pub enum Action<'a> {
    Connect {
        time: Timestamp,
    },
    Disconnect {
        connect_time: Timestamp,
        time: Timestamp,
        close_code: CloseCode,
        reason: &'a str,
        traffic: Traffic,
    },
    FailedConnect {
        time: Timestamp,
        close_code: CloseCode,
        reason: &'a str,
    },
}

fn iso(t: Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn protocol_name(p: MqttProtocol) -> &'static str {
    match p {
        MqttProtocol::V3_1 => "mqtt3",
        MqttProtocol::V3_1_1 => "mqtt4",
        MqttProtocol::V5_0 => "mqtt5",
    }
}

/// The JSON payload of a monitor message.
pub fn payload(origin: &Origin<'_>, action: &Action<'_>) -> Value {
    let mut m = Map::new();
    let (name, time) = match action {
        Action::Connect { time } => ("Connect", *time),
        Action::Disconnect { time, .. } => ("Disconnect", *time),
        Action::FailedConnect { time, .. } => ("FailedConnect", *time),
    };
    m.insert("Action".into(), json!(name));
    m.insert("Time".into(), json!(iso(time)));
    m.insert("ClientAddr".into(), json!(origin.peer.ip().to_string()));
    m.insert("ClientID".into(), json!(origin.client_id));
    m.insert("Port".into(), json!(origin.server_port));
    m.insert("Secure".into(), json!(origin.secure));
    m.insert("Protocol".into(), json!(protocol_name(origin.protocol)));
    if !origin.username.is_empty() && origin.username != super::identity::TOKEN_AUTH_USER {
        m.insert("User".into(), json!(origin.username));
    }
    match action {
        Action::Connect { time } => {
            m.insert("ConnectTime".into(), json!(iso(*time)));
        }
        Action::Disconnect {
            connect_time,
            close_code,
            reason,
            traffic,
            ..
        } => {
            m.insert("ConnectTime".into(), json!(iso(*connect_time)));
            m.insert("CloseCode".into(), json!(close_code.0));
            m.insert("Reason".into(), json!(reason));
            m.insert("ReadBytes".into(), json!(traffic.read_bytes));
            m.insert("ReadMsg".into(), json!(traffic.read_msgs));
            m.insert("WriteBytes".into(), json!(traffic.write_bytes));
            m.insert("WriteMsg".into(), json!(traffic.write_msgs));
        }
        Action::FailedConnect {
            close_code, reason, ..
        } => {
            m.insert("CloseCode".into(), json!(close_code.0));
            m.insert("Reason".into(), json!(reason));
        }
    }
    Value::Object(m)
}

/// The topics of `client_id`'s monitor messages, each with whether it
/// follows the application rule (Connect retained only while connected).
fn topics(client_id: &str) -> Vec<(String, bool)> {
    let mut out = Vec::with_capacity(2);
    match ClientKind::parse(client_id) {
        ClientKind::Device {
            type_id, device_id, ..
        }
        | ClientKind::Gateway {
            type_id, device_id, ..
        } => {
            out.push((format!("iot-2/type/{type_id}/id/{device_id}/mon"), false));
        }
        ClientKind::Application { app_id, .. } => {
            out.push((format!("iot-2/app/{app_id}/mon"), true));
        }
        ClientKind::Unknown => {}
    }
    if !client_id.contains(['+', '#', '\0']) {
        out.push((format!("$SYS/clients/{client_id}/mon"), true));
    }
    out
}

impl Broker {
    /// Publishes the monitor message of `action` on every topic of the
    /// client, with the retain rules of its type.
    pub(crate) fn publish_monitor(&self, origin: &Origin<'_>, action: &Action<'_>) {
        let mut body = payload(origin, action).to_string().into_bytes();
        // Retained for as long as the client is connected: no spare capacity.
        body.shrink_to_fit();
        let body = Bytes::from(body);
        for (topic, application) in topics(origin.client_id) {
            let retain = match action {
                Action::Connect { .. } => true,
                Action::FailedConnect { .. } => false,
                Action::Disconnect { close_code, .. } => {
                    if application {
                        self.clear_retained(&topic);
                        false
                    } else {
                        *close_code != CloseCode::SESSION_TAKEN_OVER
                    }
                }
            };
            self.publish(Message {
                topic: ByteString::from(topic),
                payload: body.clone(),
                qos: QoS::AtMostOnce,
                retain,
                properties: None,
                publisher: None,
                received: std::time::Instant::now(),
            });
        }
    }
}

impl Broker {
    /// Publishes the monitor messages of a recorded change of a client of
    /// another broker (a source, or IngestEvents): such clients have their
    /// Connect, Disconnect and FailedConnect messages as the embedded
    /// broker's own clients do. What another broker does not report is
    /// left out: the broker port (0), traffic (zero).
    pub(super) fn publish_recorded(&self, change: &Change) {
        let (Some(state), Some(entry)) = (&change.state, &change.log_entry) else {
            return;
        };
        if entry.stale || state.broker == *self.inner.name {
            return;
        }
        let connection = &state.connection;
        let origin = Origin {
            client_id: state.client_id.as_str(),
            peer: SocketAddr::new(
                entry.addr.unwrap_or(connection.addr),
                if entry.port != 0 {
                    entry.port
                } else {
                    connection.port
                },
            ),
            server_port: 0,
            secure: connection.secure,
            protocol: entry
                .protocol
                .or(connection.protocol)
                .unwrap_or(MqttProtocol::V3_1_1),
            username: &connection.username,
        };
        let reason = entry
            .reason_code
            .map_or(entry.message.as_str(), |code| code.description());
        let close_code = entry.close_code.unwrap_or(CloseCode::NORMAL);
        let action = match entry.kind {
            LogKind::Connected => Action::Connect { time: entry.time },
            LogKind::Disconnected => Action::Disconnect {
                connect_time: state.last_connect_time,
                time: entry.time,
                close_code,
                reason,
                traffic: Traffic::default(),
            },
            LogKind::ConnectFailed => Action::FailedConnect {
                time: entry.time,
                close_code,
                reason,
            },
        };
        self.publish_monitor(&origin, &action);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_client_type() {
        assert_eq!(
            topics("d:org:sensor:d1"),
            [
                ("iot-2/type/sensor/id/d1/mon".to_owned(), false),
                ("$SYS/clients/d:org:sensor:d1/mon".to_owned(), true)
            ]
        );
        assert_eq!(
            topics("a:org:app"),
            [
                ("iot-2/app/app/mon".to_owned(), true),
                ("$SYS/clients/a:org:app/mon".to_owned(), true)
            ]
        );
        assert_eq!(
            topics("plain"),
            [("$SYS/clients/plain/mon".to_owned(), true)]
        );
        assert!(topics("bad+id").is_empty());
    }

    #[test]
    fn disconnect_payload_has_the_platform_fields() {
        let t = chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let origin = Origin {
            client_id: "d:org:sensor:d1",
            peer: "127.0.0.1:5000".parse().unwrap(),
            server_port: 1883,
            secure: false,
            protocol: MqttProtocol::V3_1_1,
            username: "use-token-auth",
        };
        let cause = crate::domain::DisconnectCause::SocketClosed;
        let v = payload(
            &origin,
            &Action::Disconnect {
                connect_time: t,
                time: t,
                close_code: cause.close_code(),
                reason: &cause.reason_text(60),
                traffic: Traffic {
                    read_bytes: 10,
                    read_msgs: 1,
                    write_bytes: 4,
                    write_msgs: 0,
                },
            },
        );
        assert_eq!(v["Action"], "Disconnect");
        assert_eq!(v["Time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["Protocol"], "mqtt4");
        assert_eq!(v["CloseCode"], 91);
        assert_eq!(v["ReadBytes"], 10);
        assert!(v.get("User").is_none(), "token auth hides the user");
    }
}
