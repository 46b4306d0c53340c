//! MQTT packets, the same for both protocol versions: the codec chosen by
//! the CONNECT, incoming packets normalised to [`In`] and [`Hello`], and
//! the encoders of everything the broker sends.
//!
//! Nothing here touches a socket or the broker: packets go to and from
//! byte buffers. An encoder that fails leaves the buffer as it was and
//! says why; the caller decides what to log.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::{
    error::{DecodeError, EncodeError},
    types::{Publish, QoS},
    v3, v5,
};
use tokio_util::codec::{Decoder, Encoder};

use super::{Delivery, session};
use crate::domain::{ConnectFailure, MqttProtocol};

pub(super) enum Codec {
    V3(v3::Codec),
    V5(v5::Codec),
}

/// A decoded packet, the same for both protocol versions.
pub(super) enum In {
    Connect,
    Publish(Box<Publish>),
    PubAck(NonZeroU16),
    PubRec(NonZeroU16),
    PubRel(NonZeroU16),
    PubComp(NonZeroU16),
    Subscribe {
        packet_id: NonZeroU16,
        id: Option<NonZeroU32>,
        filters: Vec<(ByteString, v5::SubscriptionOptions)>,
    },
    Unsubscribe {
        packet_id: NonZeroU16,
        filters: Vec<ByteString>,
    },
    PingReq,
    Disconnect {
        reason: u8,
        session_expiry: Option<u32>,
    },
    /// A packet only a server sends, or AUTH (not supported).
    Unexpected,
}

impl Codec {
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<In>, DecodeError> {
        Ok(Some(match self {
            Codec::V3(c) => match c.decode(buf)? {
                None => return Ok(None),
                Some((p, _)) => match p {
                    v3::Packet::Connect(_) => In::Connect,
                    v3::Packet::Publish(p) => In::Publish(p),
                    v3::Packet::PublishAck { packet_id } => In::PubAck(packet_id),
                    v3::Packet::PublishReceived { packet_id } => In::PubRec(packet_id),
                    v3::Packet::PublishRelease { packet_id } => In::PubRel(packet_id),
                    v3::Packet::PublishComplete { packet_id } => In::PubComp(packet_id),
                    v3::Packet::Subscribe {
                        packet_id,
                        topic_filters,
                    } => In::Subscribe {
                        packet_id,
                        id: None,
                        filters: topic_filters
                            .into_iter()
                            .map(|(f, qos)| {
                                (
                                    f,
                                    v5::SubscriptionOptions {
                                        qos,
                                        // MQTT 3.1.1 clears the retain flag on
                                        // live deliveries (MQTT-3.3.1-9).
                                        retain_as_published: false,
                                        ..Default::default()
                                    },
                                )
                            })
                            .collect(),
                    },
                    v3::Packet::Unsubscribe {
                        packet_id,
                        topic_filters,
                    } => In::Unsubscribe {
                        packet_id,
                        filters: topic_filters,
                    },
                    v3::Packet::PingRequest => In::PingReq,
                    v3::Packet::Disconnect => In::Disconnect {
                        reason: 0,
                        session_expiry: None,
                    },
                    _ => In::Unexpected,
                },
            },
            Codec::V5(c) => match c.decode(buf)? {
                None => return Ok(None),
                Some((p, _)) => match p {
                    v5::Packet::Connect(_) => In::Connect,
                    v5::Packet::Publish(p) => In::Publish(p),
                    v5::Packet::PublishAck(a) => In::PubAck(a.packet_id),
                    v5::Packet::PublishReceived(a) => In::PubRec(a.packet_id),
                    v5::Packet::PublishRelease(a) => In::PubRel(a.packet_id),
                    v5::Packet::PublishComplete(a) => In::PubComp(a.packet_id),
                    v5::Packet::Subscribe(s) => In::Subscribe {
                        packet_id: s.packet_id,
                        id: s.id,
                        filters: s.topic_filters,
                    },
                    v5::Packet::Unsubscribe(u) => In::Unsubscribe {
                        packet_id: u.packet_id,
                        filters: u.topic_filters,
                    },
                    v5::Packet::PingRequest => In::PingReq,
                    v5::Packet::Disconnect(d) => In::Disconnect {
                        reason: d.reason_code.into(),
                        session_expiry: d.session_expiry_interval_secs,
                    },
                    _ => In::Unexpected,
                },
            },
        }))
    }
}

/// The CONNECT packet, the same for both protocol versions.
pub(super) struct Hello {
    pub(super) protocol: MqttProtocol,
    pub(super) client_id: String,
    pub(super) clean_start: bool,
    pub(super) keep_alive: u16,
    /// The broker's Server Keep Alive, when it overrides the client's
    /// (v5).
    pub(super) server_keep_alive: Option<u16>,
    pub(super) username: Option<ByteString>,
    pub(super) password: Option<Bytes>,
    pub(super) will: Option<Box<Will>>,
    pub(super) session_expiry: u32,
    pub(super) receive_max: u16,
    /// Topic aliases the client accepts from the broker (v5; 0: none).
    pub(super) topic_alias_max: u16,
    pub(super) max_packet_size: Option<u32>,
    pub(super) auth_method: bool,
}

pub(super) struct Will {
    pub(super) topic: ByteString,
    pub(super) payload: Bytes,
    pub(super) qos: QoS,
    pub(super) retain: bool,
    pub(super) properties: Option<v5::PublishProperties>,
    pub(super) delay_secs: u32,
}

impl Hello {
    pub(super) fn from_v3(c: v3::Connect) -> Hello {
        Hello {
            protocol: if c.protocol.level() == 3 {
                MqttProtocol::V3_1
            } else {
                MqttProtocol::V3_1_1
            },
            client_id: c.client_id.to_string(),
            clean_start: c.clean_session,
            keep_alive: c.keep_alive,
            server_keep_alive: None,
            username: c.username,
            password: c.password,
            will: c.last_will.map(|w| {
                Box::new(Will {
                    topic: w.topic,
                    payload: w.message,
                    qos: w.qos,
                    retain: w.retain,
                    properties: None,
                    delay_secs: 0,
                })
            }),
            session_expiry: if c.clean_session { 0 } else { session::NEVER },
            receive_max: u16::MAX,
            topic_alias_max: 0,
            max_packet_size: None,
            auth_method: false,
        }
    }

    pub(super) fn from_v5(c: v5::Connect) -> Hello {
        Hello {
            protocol: MqttProtocol::V5_0,
            client_id: c.client_id.to_string(),
            clean_start: c.clean_start,
            keep_alive: c.keep_alive,
            server_keep_alive: None,
            username: c.username,
            password: c.password,
            will: c.last_will.map(|w| {
                Box::new(Will {
                    topic: w.topic,
                    payload: w.message,
                    qos: w.qos,
                    retain: w.retain,
                    delay_secs: w.will_delay_interval_sec.unwrap_or(0),
                    properties: Some(v5::PublishProperties {
                        correlation_data: w.correlation_data,
                        message_expiry_interval: w.message_expiry_interval,
                        content_type: w.content_type,
                        user_properties: w.user_properties,
                        is_utf8_payload: w.is_utf8_payload.unwrap_or(false),
                        response_topic: w.response_topic,
                        ..Default::default()
                    }),
                })
            }),
            session_expiry: c.session_expiry_interval_secs,
            receive_max: c.receive_max.map_or(u16::MAX, NonZeroU16::get),
            topic_alias_max: c.topic_alias_max,
            max_packet_size: c.max_packet_size.map(NonZeroU32::get),
            auth_method: c.auth_method.is_some(),
        }
    }
}

/// Bytes below which no acknowledgement is encoded for a v5 client (a
/// packet id, a reason code, a property length, and room for the codec's
/// reckoning of the fixed header).
const ACK_LEAST: usize = 8;

/// What a CONNACK that accepts a connection carries.
pub(super) struct Welcome {
    pub(super) session_present: bool,
    /// The client id the broker chose for an empty one (v5).
    pub(super) assigned_client_id: Option<String>,
    /// The client's own Maximum Packet Size (v5): nothing larger is sent.
    pub(super) client_max_packet_size: Option<u32>,
    pub(super) topic_alias_max: u16,
    pub(super) max_packet_size: u32,
    pub(super) server_keep_alive: Option<u16>,
    /// The broker's Receive Maximum (v5).
    pub(super) receive_max: NonZeroU16,
}

impl Codec {
    /// Encodes one packet of either version into `buf`; on failure `buf`
    /// is left as it was. `items` is the number of per-item reason codes
    /// (SUBACK, UNSUBACK).
    fn put(
        &mut self,
        p3: v3::Packet,
        p5: v5::Packet,
        items: usize,
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        if let Codec::V5(c) = self {
            // The codec's size arithmetic underflows for a limit below the
            // packet's fixed part (a panic in a debug build): such a
            // packet is refused here, as too large, before it gets there.
            let least = ACK_LEAST + items;
            let max = c.max_outbound_size();
            if max != 0 && (max as usize) < least {
                return Err(EncodeError::OverMaxPacketSize {
                    size: u32::try_from(least).unwrap_or(u32::MAX),
                    max,
                });
            }
        }
        let before = buf.len();
        let result = match self {
            Codec::V3(c) => c.encode(p3, buf),
            Codec::V5(c) => c.encode(p5, buf),
        };
        if result.is_err() {
            buf.truncate(before);
        }
        result
    }

    /// A CONNACK that refuses the connection for `failure`.
    pub(super) fn connack_refused(
        &mut self,
        failure: ConnectFailure,
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let v3_code = match failure {
            ConnectFailure::UnsupportedProtocol => {
                v3::ConnectAckReason::UnacceptableProtocolVersion
            }
            ConnectFailure::BadClientId => v3::ConnectAckReason::IdentifierRejected,
            ConnectFailure::ServerBusy | ConnectFailure::ServerUnavailable => {
                v3::ConnectAckReason::ServiceUnavailable
            }
            ConnectFailure::BadCredentials => v3::ConnectAckReason::BadUserNameOrPassword,
            ConnectFailure::NotAuthorized => v3::ConnectAckReason::NotAuthorized,
        };
        let v5_code = v5::ConnectAckReason::try_from(failure.reason_code().0)
            .unwrap_or(v5::ConnectAckReason::UnspecifiedError);
        self.put(
            v3::Packet::ConnectAck(v3::ConnectAck {
                return_code: v3_code,
                session_present: false,
            }),
            v5::Packet::ConnectAck(Box::new(v5::ConnectAck {
                reason_code: v5_code,
                ..Default::default()
            })),
            0,
            buf,
        )
    }

    /// The CONNACK of an accepted connection. For v5 it also sets the
    /// client's Maximum Packet Size as the limit of everything sent after.
    pub(super) fn connack(&mut self, w: Welcome, buf: &mut BytesMut) -> Result<(), EncodeError> {
        if let (Codec::V5(c), Some(max)) = (&mut *self, w.client_max_packet_size) {
            c.set_max_outbound_size(max);
        }
        self.put(
            v3::Packet::ConnectAck(v3::ConnectAck {
                return_code: v3::ConnectAckReason::ConnectionAccepted,
                session_present: w.session_present,
            }),
            v5::Packet::ConnectAck(Box::new(v5::ConnectAck {
                session_present: w.session_present,
                assigned_client_id: w.assigned_client_id.map(ByteString::from),
                topic_alias_max: w.topic_alias_max,
                max_packet_size: Some(w.max_packet_size),
                server_keepalive_sec: w.server_keep_alive,
                receive_max: w.receive_max,
                shared_subscription_available: true,
                ..Default::default()
            })),
            0,
            buf,
        )
    }

    /// SUBACK: per filter the QoS granted or why not.
    pub(super) fn suback(
        &mut self,
        packet_id: NonZeroU16,
        codes: &[Result<QoS, v5::SubscribeAckReason>],
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let v3_status = codes
            .iter()
            .map(|c| match c {
                Ok(q) => v3::SubscribeReturnCode::Success(*q),
                Err(_) => v3::SubscribeReturnCode::Failure,
            })
            .collect();
        let v5_status = codes
            .iter()
            .map(|c| match c {
                Ok(QoS::AtMostOnce) => v5::SubscribeAckReason::GrantedQos0,
                Ok(QoS::AtLeastOnce) => v5::SubscribeAckReason::GrantedQos1,
                Ok(QoS::ExactlyOnce) => v5::SubscribeAckReason::GrantedQos2,
                Err(e) => *e,
            })
            .collect();
        self.put(
            v3::Packet::SubscribeAck {
                packet_id,
                status: v3_status,
            },
            v5::Packet::SubscribeAck(v5::SubscribeAck {
                packet_id,
                properties: Vec::new(),
                reason_string: None,
                status: v5_status,
            }),
            codes.len(),
            buf,
        )
    }

    /// UNSUBACK (the per-filter status is v5 only).
    pub(super) fn unsuback(
        &mut self,
        packet_id: NonZeroU16,
        status: Vec<v5::UnsubscribeAckReason>,
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let items = status.len();
        self.put(
            v3::Packet::UnsubscribeAck { packet_id },
            v5::Packet::UnsubscribeAck(v5::UnsubscribeAck {
                packet_id,
                properties: Vec::new(),
                reason_string: None,
                status,
            }),
            items,
            buf,
        )
    }

    /// PUBLISH of `d` under the client's own `topic` (empty when `alias`
    /// stands for it). v5 clients get what is left of the expiry interval,
    /// the subscription ids and the topic alias.
    pub(super) fn publish(
        &mut self,
        d: &Delivery,
        topic: ByteString,
        alias: Option<NonZeroU16>,
        packet_id: Option<NonZeroU16>,
        dup: bool,
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let m = &d.message;
        let before = buf.len();
        let result = match self {
            Codec::V3(c) => c.encode(
                v3::Packet::Publish(Box::new(Publish {
                    dup,
                    retain: d.retain,
                    qos: d.qos,
                    topic,
                    packet_id,
                    payload: m.payload.clone(),
                    properties: None,
                })),
                buf,
            ),
            Codec::V5(c) => {
                let mut properties = m.properties.as_deref().cloned().unwrap_or_default();
                properties.topic_alias = alias;
                // What is left of the expiry interval (MQTT-3.3.2-6).
                properties.message_expiry_interval = m.expiry_left().and_then(NonZeroU32::new);
                properties.subscription_ids = d.subscription_ids.to_vec();
                c.encode(
                    v5::Packet::Publish(Box::new(Publish {
                        dup,
                        retain: d.retain,
                        qos: d.qos,
                        topic,
                        packet_id,
                        payload: m.payload.clone(),
                        properties: Some(properties),
                    })),
                    buf,
                )
            }
        };
        if result.is_err() {
            buf.truncate(before);
        }
        result
    }

    /// PUBACK (QoS 1) or PUBREC (QoS 2) of an incoming PUBLISH.
    pub(super) fn puback(
        &mut self,
        packet_id: NonZeroU16,
        authorised: bool,
        qos2: bool,
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let reason = if authorised {
            v5::PublishAckReason::Success
        } else {
            v5::PublishAckReason::NotAuthorized
        };
        let ack = v5::PublishAck {
            packet_id,
            reason_code: reason,
            properties: Vec::new(),
            reason_string: None,
        };
        if qos2 {
            self.put(
                v3::Packet::PublishReceived { packet_id },
                v5::Packet::PublishReceived(ack),
                0,
                buf,
            )
        } else {
            self.put(
                v3::Packet::PublishAck { packet_id },
                v5::Packet::PublishAck(ack),
                0,
                buf,
            )
        }
    }

    /// PUBREL; `known` false answers a PUBREC for a packet id not in
    /// flight (v5 0x92).
    pub(super) fn pubrel(
        &mut self,
        packet_id: NonZeroU16,
        known: bool,
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        self.put(
            v3::Packet::PublishRelease { packet_id },
            v5::Packet::PublishRelease(ack2(packet_id, known)),
            0,
            buf,
        )
    }

    /// PUBCOMP; `known` false answers a PUBREL for a packet id never
    /// received (v5 0x92).
    pub(super) fn pubcomp(
        &mut self,
        packet_id: NonZeroU16,
        known: bool,
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        self.put(
            v3::Packet::PublishComplete { packet_id },
            v5::Packet::PublishComplete(ack2(packet_id, known)),
            0,
            buf,
        )
    }

    pub(super) fn pingresp(&mut self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        self.put(v3::Packet::PingResponse, v5::Packet::PingResponse, 0, buf)
    }

    /// The v5 DISCONNECT a server sends before it closes; nothing for v3.
    pub(super) fn disconnect(&mut self, code: u8, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let Codec::V5(c) = self else {
            return Ok(());
        };
        let code = v5::DisconnectReasonCode::try_from(code)
            .unwrap_or(v5::DisconnectReasonCode::UnspecifiedError);
        c.encode(v5::Packet::Disconnect(v5::Disconnect::new(code)), buf)
    }
}

/// Reads the client id, keepalive and clean flag of a whole CONNECT of any
/// protocol level in `buf`: `None` while incomplete, `Some(None)` when it is
/// not an MQTT CONNECT at all.
#[allow(clippy::type_complexity)]
pub(super) fn sniff_connect(buf: &[u8]) -> Option<Option<(String, u16, bool)>> {
    fn varint(buf: &[u8]) -> Option<(usize, usize)> {
        let mut value = 0usize;
        for (i, b) in buf.iter().take(4).enumerate() {
            value |= usize::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Some((value, i + 1));
            }
        }
        None
    }
    let (length, used) = varint(buf.get(1..)?)?;
    let body = buf.get(1 + used..1 + used + length)?;
    // Levels other than 5 are read without properties first (MQTT 3
    // layout), then with them.
    let parse = |properties: bool| -> Option<(String, u16, bool)> {
        let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
        let name = body.get(2..2 + name_len)?;
        if name != b"MQTT" && name != b"MQIsdp" {
            return None;
        }
        let mut at = 2 + name_len;
        let flags = *body.get(at + 1)?;
        let keep_alive = u16::from_be_bytes([*body.get(at + 2)?, *body.get(at + 3)?]);
        at += 4;
        if properties {
            let (props, used) = varint(body.get(at..)?)?;
            at += used + props;
        }
        let id_len = usize::from(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]));
        let id = std::str::from_utf8(body.get(at + 2..at + 2 + id_len)?).ok()?;
        Some((id.to_owned(), keep_alive, flags & 0x02 != 0))
    };
    Some(parse(false).or_else(|| parse(true)))
}

fn ack2(packet_id: NonZeroU16, known: bool) -> v5::PublishAck2 {
    v5::PublishAck2 {
        packet_id,
        reason_code: if known {
            v5::PublishAck2Reason::Success
        } else {
            v5::PublishAck2Reason::PacketIdNotFound
        },
        properties: Vec::new(),
        reason_string: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(level: u8, properties: &[u8], client_id: &str) -> Vec<u8> {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, 0x02, 0, 60];
        body.extend_from_slice(properties);
        body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
        body.extend_from_slice(client_id.as_bytes());
        let mut packet = vec![0x10, body.len() as u8];
        packet.extend(body);
        packet
    }

    #[test]
    fn the_client_of_an_unsupported_level_is_found() {
        let want = Some(Some(("dev-1".to_owned(), 60, true)));
        assert_eq!(sniff_connect(&connect(6, &[], "dev-1")), want);
        assert_eq!(sniff_connect(&connect(7, &[2, 0x21, 0], "dev-1")), want);
    }

    #[test]
    fn an_incomplete_or_foreign_packet_names_no_client() {
        let whole = connect(6, &[], "dev-1");
        assert_eq!(sniff_connect(&whole[..whole.len() - 1]), None, "incomplete");
        let mut foreign = whole.clone();
        foreign[4] = b'X';
        assert_eq!(sniff_connect(&foreign), Some(None), "not MQTT");
    }
}

/// The topic aliases the broker uses towards one v5 client (MQTT 5
/// §3.3.2.3.4): at most as many as the client accepts and the broker's
/// bound, given to topics as they are first sent and, once all are taken,
/// given again round robin (the client learns the new topic with the
/// PUBLISH that carries both). A topic that repeats is then sent as its
/// alias alone. v3 clients and v5 clients accepting none have none. Boxed:
/// one pointer in every connection's task, the table only for clients that
/// take aliases (at most `topic_alias_max` topics).
#[derive(Debug, Default)]
pub(super) struct TopicAliases(Option<Box<AliasTable>>);

#[derive(Debug)]
struct AliasTable {
    /// The topic of alias `i + 1`.
    topics: Vec<ByteString>,
    max: u16,
    /// The alias given again next, less one, once all are taken.
    next: u16,
}

impl TopicAliases {
    pub(super) fn new(max: u16) -> TopicAliases {
        TopicAliases((max > 0).then(|| {
            Box::new(AliasTable {
                topics: Vec::new(),
                max,
                next: 0,
            })
        }))
    }

    /// The alias to send `topic` with, and whether the client knows it
    /// already (then the topic is left out); `None`: no alias.
    pub(super) fn lookup(&self, topic: &str) -> Option<(NonZeroU16, bool)> {
        let table = self.0.as_deref()?;
        if let Some(i) = table.topics.iter().position(|t| t == topic) {
            return Some((alias_of(i), true));
        }
        if table.topics.len() < usize::from(table.max) {
            return Some((alias_of(table.topics.len()), false));
        }
        Some((alias_of(usize::from(table.next)), false))
    }

    /// Records that `alias` now stands for `topic` (it was sent with both).
    pub(super) fn assign(&mut self, alias: NonZeroU16, topic: ByteString) {
        let Some(table) = self.0.as_deref_mut() else {
            return;
        };
        let i = usize::from(alias.get() - 1);
        if i == table.topics.len() {
            table.topics.push(topic);
        } else if let Some(t) = table.topics.get_mut(i) {
            *t = topic;
            table.next = alias.get() % table.max;
        }
    }
}

fn alias_of(i: usize) -> NonZeroU16 {
    NonZeroU16::new(u16::try_from(i + 1).unwrap_or(u16::MAX)).unwrap_or(NonZeroU16::MIN)
}
