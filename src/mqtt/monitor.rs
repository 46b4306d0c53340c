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
//!
//! That Connect of the embedded broker's own clients is not stored as a
//! retained message (about 450 bytes of every connected client): the
//! session keeps the few fields it is made of ([`Announced`]) while the
//! connection is up, and a subscription's retained messages are made from
//! them ([`Broker::announced_matching`]), the same bytes as published.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use bytestring::ByteString;
use chrono::SecondsFormat;
use rmqtt_codec::types::QoS;
use serde::Serialize;

use std::sync::Arc;

use super::{Broker, Message, session::Session};
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

/// What a connected client's `$SYS/clients/{id}/mon` Connect message is
/// made of, besides its client id and user name; see the module docs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Announced {
    pub peer: SocketAddr,
    pub server_port: u16,
    pub secure: bool,
    pub protocol: MqttProtocol,
    pub time: Timestamp,
}

/// The embedded broker's own connection a monitor message is about: its
/// session and connection id.
pub(crate) struct Local<'a> {
    pub session: &'a Session,
    pub connection_id: u64,
}

const SYS_CLIENTS: &str = "$SYS/clients/";

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

/// The JSON body of a monitor message, its fields in the platform's
/// (alphabetical) order; what an action does not have is left out.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Payload<'a> {
    action: &'static str,
    client_addr: IpAddr,
    #[serde(rename = "ClientID")]
    client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    close_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connect_time: Option<String>,
    port: u16,
    protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_msg: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    secure: bool,
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    write_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    write_msg: Option<u64>,
}

/// The JSON payload of a monitor message. Written from a struct rather
/// than built as a JSON value: every connect and disconnect of the broker
/// publishes one.
pub fn payload(origin: &Origin<'_>, action: &Action<'_>) -> Vec<u8> {
    let (name, time) = match action {
        Action::Connect { time } => ("Connect", *time),
        Action::Disconnect { time, .. } => ("Disconnect", *time),
        Action::FailedConnect { time, .. } => ("FailedConnect", *time),
    };
    let user = (!origin.username.is_empty() && origin.username != super::identity::TOKEN_AUTH_USER)
        .then_some(origin.username);
    let mut body = Payload {
        action: name,
        client_addr: origin.peer.ip(),
        client_id: origin.client_id,
        close_code: None,
        connect_time: None,
        port: origin.server_port,
        protocol: protocol_name(origin.protocol),
        read_bytes: None,
        read_msg: None,
        reason: None,
        secure: origin.secure,
        time: iso(time),
        user,
        write_bytes: None,
        write_msg: None,
    };
    match action {
        Action::Connect { time } => body.connect_time = Some(iso(*time)),
        Action::Disconnect {
            connect_time,
            close_code,
            reason,
            traffic,
            ..
        } => {
            body.connect_time = Some(iso(*connect_time));
            body.close_code = Some(close_code.0);
            body.reason = Some(reason);
            body.read_bytes = Some(traffic.read_bytes);
            body.read_msg = Some(traffic.read_msgs);
            body.write_bytes = Some(traffic.write_bytes);
            body.write_msg = Some(traffic.write_msgs);
        }
        Action::FailedConnect {
            close_code, reason, ..
        } => {
            body.close_code = Some(close_code.0);
            body.reason = Some(reason);
        }
    }
    let mut out = Vec::with_capacity(256);
    // Plain strings, numbers and booleans: serialising cannot fail.
    let _ = serde_json::to_writer(&mut out, &body);
    // Retained for as long as the client is connected: no spare capacity.
    out.shrink_to_fit();
    out
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
        out.push((format!("{SYS_CLIENTS}{client_id}/mon"), true));
    }
    out
}

impl Broker {
    /// Publishes the monitor message of `action` on every topic of the
    /// client, with the retain rules of its type. `local` is the embedded
    /// broker's own connection it is about (`None`: another broker's
    /// client, from its record).
    pub(crate) fn publish_monitor(
        &self,
        origin: &Origin<'_>,
        action: &Action<'_>,
        local: Option<Local<'_>>,
    ) {
        let body = Bytes::from(payload(origin, action));
        for (topic, application) in topics(origin.client_id) {
            // Kept by the session rather than stored (see the module docs).
            let announced = local.as_ref().filter(|_| topic.starts_with(SYS_CLIENTS));
            let retain = match action {
                Action::Connect { time } => {
                    if let Some(local) = announced {
                        let fields = Announced {
                            peer: origin.peer,
                            server_port: origin.server_port,
                            secure: origin.secure,
                            protocol: origin.protocol,
                            time: *time,
                        };
                        local.session.announce(local.connection_id, fields);
                        // One recorded while the client was on another node.
                        self.clear_retained(&topic);
                    }
                    true
                }
                Action::FailedConnect { .. } => false,
                Action::Disconnect { close_code, .. } => {
                    if application {
                        if let Some(local) = announced {
                            local.session.unannounce(local.connection_id);
                        }
                        self.clear_retained(&topic);
                        false
                    } else {
                        *close_code != CloseCode::SESSION_TAKEN_OVER
                    }
                }
            };
            let message = Message {
                topic: ByteString::from(topic),
                payload: body.clone(),
                qos: QoS::AtMostOnce,
                retain,
                properties: None,
                publisher: None,
                received: std::time::Instant::now(),
            };
            if retain && announced.is_some() {
                self.fan_out(Arc::new(message), super::routes::Wait::Cannot);
            } else {
                self.publish(message);
            }
        }
    }

    /// Adds to `out` the `$SYS/clients/{id}/mon` Connect messages of the
    /// connected clients that `filter` matches, as retained messages (see
    /// the module docs). A filter without wildcards names one client; one
    /// with them is matched against every connected client's topic.
    pub(super) fn announced_matching(&self, filter: &str, out: &mut Vec<Arc<Message>>) {
        if !filter.starts_with("$SYS/") {
            return;
        }
        let sessions: Vec<Arc<Session>> = if filter.contains(['+', '#']) {
            crate::lock::lock(&self.inner.sessions)
                .values()
                .cloned()
                .collect()
        } else {
            let client = filter
                .strip_prefix(SYS_CLIENTS)
                .and_then(|rest| rest.strip_suffix("/mon"));
            client.and_then(|id| self.session(id)).into_iter().collect()
        };
        for session in sessions {
            let Some((fields, username)) = session.announced() else {
                continue;
            };
            let topic = format!("{SYS_CLIENTS}{}/mon", session.client_id);
            if !super::topic::matches(filter, &topic) {
                continue;
            }
            let origin = Origin {
                client_id: &session.client_id,
                peer: fields.peer,
                server_port: fields.server_port,
                secure: fields.secure,
                protocol: fields.protocol,
                username: &username,
            };
            let body = payload(&origin, &Action::Connect { time: fields.time });
            out.push(Arc::new(Message {
                topic: ByteString::from(topic),
                payload: Bytes::from(body),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: None,
                publisher: None,
                received: std::time::Instant::now(),
            }));
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
        self.publish_monitor(&origin, &action, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2023-11-14T22:13:20.123Z
    fn at() -> Timestamp {
        chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap()
    }

    /// A plain v3.1.1 client from 127.0.0.1:5000 on port 1883, without a
    /// user name; tests change what they look at.
    fn origin(client_id: &str) -> Origin<'_> {
        Origin {
            client_id,
            peer: "127.0.0.1:5000".parse().unwrap(),
            server_port: 1883,
            secure: false,
            protocol: MqttProtocol::V3_1_1,
            username: "",
        }
    }

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
        let t = at();
        let origin = Origin {
            username: "use-token-auth",
            ..origin("d:org:sensor:d1")
        };
        let cause = crate::domain::DisconnectCause::SocketClosed;
        let v: serde_json::Value = serde_json::from_slice(&payload(
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
        ))
        .unwrap();
        assert_eq!(v["Action"], "Disconnect");
        assert_eq!(v["Time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["Protocol"], "mqtt4");
        assert_eq!(v["CloseCode"], 91);
        assert_eq!(v["ReadBytes"], 10);
        assert!(v.get("User").is_none(), "token auth hides the user");
    }

    #[test]
    fn a_connect_payload_is_exactly_the_platform_message() {
        let t = at();
        let origin = Origin {
            peer: "[::1]:5000".parse().unwrap(),
            server_port: 8883,
            secure: true,
            protocol: MqttProtocol::V5_0,
            username: "ops \"1\"",
            ..origin("a:org:app")
        };
        let body = payload(&origin, &Action::Connect { time: t });
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            concat!(
                r#"{"Action":"Connect","ClientAddr":"::1","ClientID":"a:org:app","#,
                r#""ConnectTime":"2023-11-14T22:13:20.123Z","Port":8883,"Protocol":"mqtt5","#,
                r#""Secure":true,"Time":"2023-11-14T22:13:20.123Z","User":"ops \"1\""}"#
            )
        );
        assert_eq!(body.capacity(), body.len(), "retained: no spare capacity");
    }

    #[test]
    fn a_failed_connect_payload_has_its_code_and_reason_and_no_traffic() {
        let t = at();
        let origin = Origin {
            peer: "10.0.0.7:41000".parse().unwrap(),
            protocol: MqttProtocol::V3_1,
            ..origin("plain")
        };
        let body = payload(
            &origin,
            &Action::FailedConnect {
                time: t,
                close_code: CloseCode(4),
                reason: "Bad user name or password",
            },
        );
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            concat!(
                r#"{"Action":"FailedConnect","ClientAddr":"10.0.0.7","ClientID":"plain","#,
                r#""CloseCode":4,"Port":1883,"Protocol":"mqtt3","Reason":"Bad user name or password","#,
                r#""Secure":false,"Time":"2023-11-14T22:13:20.123Z"}"#
            )
        );
    }

    /// A connected client's `$SYS/clients/{id}/mon` Connect is not stored
    /// as a retained message; a subscription still gets it, the very bytes
    /// published, until its own connection's Disconnect (not an older
    /// connection's).
    #[tokio::test]
    async fn a_local_clients_sys_connect_is_made_on_subscribe_not_stored() {
        let (broker, _dir) = crate::mqtt::testing::broker(crate::mqtt::BrokerOptions::default());
        let client: Arc<str> = Arc::from("plain-1");
        let attach = |connection_id| {
            let (broker, client) = (broker.clone(), client.clone());
            async move {
                let mailbox = Arc::new(super::super::session::Mailbox::default());
                broker
                    .attach(&client, connection_id, true, 0, "ops", "test", mailbox)
                    .await
                    .session
            }
        };
        let session = attach(7).await;
        let t = at();
        let origin = Origin {
            peer: "10.1.2.3:40000".parse().unwrap(),
            protocol: MqttProtocol::V5_0,
            username: "ops",
            ..origin("plain-1")
        };
        let local = |connection_id| {
            Some(Local {
                session: &session,
                connection_id,
            })
        };
        broker.publish_monitor(&origin, &Action::Connect { time: t }, local(7));

        let topic = "$SYS/clients/plain-1/mon";
        assert!(
            crate::lock::read(&broker.inner.retained)
                .get(topic)
                .is_none()
        );
        let published = payload(&origin, &Action::Connect { time: t });
        for filter in [topic, "$SYS/clients/+/mon", "$SYS/#", "$SYS/+/plain-1/#"] {
            let found = broker.retained_matching(filter);
            assert_eq!(found.len(), 1, "{filter}");
            assert_eq!(
                (&*found[0].topic, &found[0].payload[..]),
                (topic, &published[..])
            );
            assert!(found[0].retain);
        }
        assert!(
            broker
                .retained_matching("$SYS/clients/plain-2/mon")
                .is_empty()
        );
        assert!(
            broker.retained_matching("#").is_empty(),
            "# leaves $ topics out"
        );

        let disconnect = Action::Disconnect {
            connect_time: t,
            time: t,
            close_code: CloseCode::NORMAL,
            reason: "",
            traffic: Traffic::default(),
        };
        // An older connection's goodbye leaves the current one announced.
        broker.publish_monitor(&origin, &disconnect, local(6));
        assert_eq!(broker.retained_matching(topic).len(), 1);
        broker.publish_monitor(&origin, &disconnect, local(7));
        assert!(broker.retained_matching(topic).is_empty());
    }
}
