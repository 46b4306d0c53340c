//! One task per network connection, from CONNECT to close.
//!
//! The task owns the socket, the codec, the packets in flight and the
//! keepalive timer. Other parts of the broker reach it through its
//! [`Outbound`] queue. Every way it can end is one [`DisconnectCause`],
//! reported to the tracker once, after the v5 DISCONNECT (when the server
//! ends the connection) and before the session is handed back.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::SocketAddr,
    num::{NonZeroU16, NonZeroU32},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use chrono::Utc;
use rmqtt_codec::{
    error::DecodeError,
    types::{Publish, QoS},
    v3, v5,
    version::{ProtocolVersion, VersionCodec},
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use super::{
    Broker, Delivery, Message, Outbound, SubOptions,
    identity::Identity,
    monitor::{Action, Origin, Traffic},
    session::{self, Carried, Inflight, Mailbox, Session},
    topic,
};
use crate::domain::{
    ActivityKind, ClientId, ConnectFailure, ConnectionInfo, DisconnectCause, EventKind,
    MqttProtocol, ReasonCode, Timestamp, truncate_to_millis,
};

/// How the client reached the broker.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub secure: bool,
}

fn now() -> Timestamp {
    truncate_to_millis(Utc::now())
}

enum Codec {
    V3(v3::Codec),
    V5(v5::Codec),
}

/// A decoded packet, the same for both protocol versions.
enum In {
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
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<In>, DecodeError> {
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
struct Hello {
    protocol: MqttProtocol,
    client_id: String,
    clean_start: bool,
    keep_alive: u16,
    username: Option<ByteString>,
    password: Option<Bytes>,
    will: Option<Box<Will>>,
    session_expiry: u32,
    receive_max: u16,
    max_packet_size: Option<u32>,
    auth_method: bool,
}

struct Will {
    topic: ByteString,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    properties: Option<v5::PublishProperties>,
    delay_secs: u32,
}

impl Hello {
    fn from_v3(c: v3::Connect) -> Hello {
        Hello {
            protocol: if c.protocol.level() == 3 {
                MqttProtocol::V3_1
            } else {
                MqttProtocol::V3_1_1
            },
            client_id: c.client_id.to_string(),
            clean_start: c.clean_session,
            keep_alive: c.keep_alive,
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
            max_packet_size: None,
            auth_method: false,
        }
    }

    fn from_v5(c: v5::Connect) -> Hello {
        Hello {
            protocol: MqttProtocol::V5_0,
            client_id: c.client_id.to_string(),
            clean_start: c.clean_start,
            keep_alive: c.keep_alive,
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
            max_packet_size: c.max_packet_size.map(NonZeroU32::get),
            auth_method: c.auth_method.is_some(),
        }
    }
}

/// Why the handshake did not produce a session.
enum HandshakeEnd {
    /// Closed, timed out or garbage before a CONNECT: nothing to record.
    Quiet,
    /// A CONNECT that was refused (already answered and recorded).
    Refused,
}

/// Serves one network connection until it closes.
pub async fn serve<S>(broker: Broker, stream: S, transport: Transport)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    broker.metrics().mqtt_connections.inc();
    let (reader, writer) = tokio::io::split(stream);
    let mut conn = Conn {
        broker: broker.clone(),
        reader,
        writer,
        transport,
        // Small to start: most clients send small packets, and 10,000s of
        // idle connections should cost little. Both grow on demand.
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        idle: false,
        codec: Codec::V3(v3::Codec::new(broker.options().max_packet_size)),
        protocol: MqttProtocol::V3_1_1,
        traffic: Traffic::default(),
        counted: Traffic::default(),
    };
    let _ = conn.run().await;
    conn.count_traffic();
    broker.metrics().mqtt_connections.dec();
}

struct Conn<S> {
    broker: Broker,
    reader: tokio::io::ReadHalf<S>,
    writer: tokio::io::WriteHalf<S>,
    transport: Transport,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Quiet for a while: no buffers kept between packets.
    idle: bool,
    codec: Codec,
    protocol: MqttProtocol,
    traffic: Traffic,
    /// The part of `traffic` already added to the metrics.
    counted: Traffic,
}

/// State of an accepted connection.
struct Live {
    client_id: Arc<str>,
    record_id: ClientId,
    connection_id: u64,
    identity: Identity,
    session: Arc<Session>,
    generation: u64,
    keep_alive: u16,
    connect_time: Timestamp,
    username: String,
    will: Option<Box<Will>>,
    /// QoS 1/2 messages sent and not yet acknowledged, by packet id.
    inflight: BTreeMap<u16, Inflight>,
    max_inflight: usize,
    /// Deliveries waiting for a free in-flight slot.
    pending: VecDeque<Delivery>,
    next_packet_id: u16,
    incoming_qos2: BTreeSet<NonZeroU16>,
    aliases: BTreeMap<u16, ByteString>,
    /// Session expiry of the CONNECT.
    connect_expiry: u32,
    activity: Option<(ActivityKind, Timestamp)>,
    activity_reported: Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn<S> {
    async fn run(&mut self) -> Result<(), HandshakeEnd> {
        let stop = self.broker.inner.stop.clone();
        let timeout = self.broker.options().connect_timeout;
        let hello = tokio::select! {
            hello = tokio::time::timeout(timeout, Box::pin(self.read_connect())) => match hello {
                Ok(hello) => hello?,
                Err(_) => {
                    tracing::debug!(peer = %self.transport.peer, "no CONNECT in time");
                    return Err(HandshakeEnd::Quiet);
                }
            },
            () = stop.cancelled() => return Err(HandshakeEnd::Quiet),
        };
        // The handshake and the goodbye are boxed: a connection's task then
        // carries only the state of the connected loop for its whole life,
        // which matters with 100,000s of them.
        let (mut live, rx, finished) = Box::pin(self.accept(hello)).await?;
        let cause = self.serve_session(&mut live, rx).await;
        Box::pin(self.finish(live, cause, finished)).await;
        Ok(())
    }

    /// Reads until a whole CONNECT is decoded, choosing the codec by its
    /// protocol level.
    async fn read_connect(&mut self) -> Result<Hello, HandshakeEnd> {
        let max = self.broker.options().max_packet_size;
        let mut version = None;
        loop {
            if version.is_none() {
                match VersionCodec.decode(&mut self.rbuf) {
                    Ok(Some(v)) => {
                        self.codec = match v {
                            ProtocolVersion::MQTT3 => Codec::V3(v3::Codec::new(max)),
                            ProtocolVersion::MQTT5 => Codec::V5(v5::Codec::new(max, 0)),
                        };
                        version = Some(v);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.refuse_unknown_protocol(&e).await;
                        return Err(HandshakeEnd::Quiet);
                    }
                }
            }
            if version.is_some() {
                let decoded = match &mut self.codec {
                    Codec::V3(c) => c.decode(&mut self.rbuf).map(|p| {
                        p.map(|(p, _)| match p {
                            v3::Packet::Connect(c) => Some(Hello::from_v3(*c)),
                            _ => None,
                        })
                    }),
                    Codec::V5(c) => c.decode(&mut self.rbuf).map(|p| {
                        p.map(|(p, _)| match p {
                            v5::Packet::Connect(c) => Some(Hello::from_v5(*c)),
                            _ => None,
                        })
                    }),
                };
                match decoded {
                    Ok(Some(Some(hello))) => return Ok(hello),
                    Ok(Some(None)) => return Err(HandshakeEnd::Quiet),
                    Ok(None) => {}
                    Err(DecodeError::InvalidClientId) => {
                        // MQTT 3.1.1 empty client id without clean session.
                        self.write_connack_refused(ConnectFailure::BadClientId)
                            .await;
                        return Err(HandshakeEnd::Quiet);
                    }
                    Err(e) => {
                        tracing::debug!(peer = %self.transport.peer, error = %e, "bad CONNECT");
                        return Err(HandshakeEnd::Quiet);
                    }
                }
            }
            make_room(&mut self.rbuf);
            match self.reader.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return Err(HandshakeEnd::Quiet),
                Ok(n) => self.traffic.read_bytes += n as u64,
            }
        }
    }

    /// A CONNECT naming a protocol level we do not speak gets the MQTT 3
    /// "unacceptable protocol version" CONNACK (MQTT-3.1.2-2), and, when it
    /// names its client, a failed connect in that client's log.
    async fn refuse_unknown_protocol(&mut self, e: &DecodeError) {
        tracing::debug!(peer = %self.transport.peer, error = %e, "not an MQTT 3.1/3.1.1/5.0 CONNECT");
        if !matches!(e, DecodeError::InvalidProtocol) || self.rbuf.first() != Some(&0x10) {
            return;
        }
        let _ = self.writer.write_all(&[0x20, 0x02, 0x00, 0x01]).await;
        let sniffed = loop {
            if let Some(found) = sniff_connect(&self.rbuf) {
                break found;
            }
            if self.rbuf.len() > 64 * 1024 {
                return;
            }
            make_room(&mut self.rbuf);
            match tokio::time::timeout(Duration::from_secs(1), self.reader.read_buf(&mut self.rbuf))
                .await
            {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        };
        let Some((client_id, keep_alive, clean_session)) = sniffed else {
            return;
        };
        let Ok(client_id) = ClientId::new(client_id) else {
            return;
        };
        let failure = ConnectFailure::UnsupportedProtocol;
        let kind = EventKind::ConnectFailed {
            info: ConnectionInfo {
                addr: self.transport.peer.ip(),
                port: self.transport.peer.port(),
                secure: self.transport.secure,
                username: String::new(),
                protocol: None,
                keep_alive,
                clean_session,
            },
            failure,
        };
        log_lifecycle(&client_id, self.transport.peer, &kind, keep_alive);
        self.broker.report(&client_id, now(), 0, kind);
    }

    async fn write_connack_refused(&mut self, failure: ConnectFailure) {
        match &mut self.codec {
            Codec::V3(c) => {
                let code = match failure {
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
                let _ = c.encode(
                    v3::Packet::ConnectAck(v3::ConnectAck {
                        return_code: code,
                        session_present: false,
                    }),
                    &mut self.wbuf,
                );
            }
            Codec::V5(c) => {
                let code = v5::ConnectAckReason::try_from(failure.reason_code().0)
                    .unwrap_or(v5::ConnectAckReason::UnspecifiedError);
                let _ = c.encode(
                    v5::Packet::ConnectAck(Box::new(v5::ConnectAck {
                        reason_code: code,
                        ..Default::default()
                    })),
                    &mut self.wbuf,
                );
            }
        }
        let _ = self.flush().await;
    }

    fn connection_info(&self, hello: &Hello) -> ConnectionInfo {
        ConnectionInfo {
            addr: self.transport.peer.ip(),
            port: self.transport.peer.port(),
            secure: self.transport.secure,
            username: hello
                .username
                .as_ref()
                .map(|u| u.to_string())
                .unwrap_or_default(),
            protocol: Some(hello.protocol),
            keep_alive: hello.keep_alive,
            clean_session: hello.clean_start,
        }
    }

    fn origin<'a>(&self, client_id: &'a str, username: &'a str) -> Origin<'a> {
        Origin {
            client_id,
            peer: self.transport.peer,
            server_port: self.transport.local.port(),
            secure: self.transport.secure,
            protocol: self.protocol,
            username,
        }
    }

    /// Refuses the CONNECT: CONNACK with the failure, a log entry, a
    /// FailedConnect monitor message.
    async fn refuse(
        &mut self,
        hello: &Hello,
        client_id: Option<ClientId>,
        failure: ConnectFailure,
    ) {
        self.write_connack_refused(failure).await;
        let Some(client_id) = client_id else {
            return;
        };
        let time = now();
        let info = self.connection_info(hello);
        let kind = EventKind::ConnectFailed { info, failure };
        log_lifecycle(&client_id, self.transport.peer, &kind, hello.keep_alive);
        self.broker.report(&client_id, time, 0, kind);
        let username = hello.username.as_deref().unwrap_or("").to_owned();
        let origin = self.origin(client_id.as_str(), &username);
        self.broker
            .publish_monitor(&origin, &Action::FailedConnect { time, failure });
    }

    async fn accept(
        &mut self,
        mut hello: Hello,
    ) -> Result<(Live, Arc<Mailbox>, CancellationToken), HandshakeEnd> {
        self.protocol = hello.protocol;
        let options = self.broker.options().clone();
        let mut assigned = None;
        if hello.client_id.is_empty() {
            if options.auth || (!hello.clean_start && hello.protocol != MqttProtocol::V5_0) {
                self.refuse(&hello, None, ConnectFailure::BadClientId).await;
                return Err(HandshakeEnd::Refused);
            }
            hello.client_id = format!("auto-{:016x}", random_u64());
            assigned = Some(hello.client_id.clone());
        }
        let Ok(record_id) = ClientId::new(hello.client_id.clone()) else {
            self.refuse(&hello, None, ConnectFailure::BadClientId).await;
            return Err(HandshakeEnd::Refused);
        };
        if let Some(refusal) = self.broker.inner.store.recording().refusal() {
            // A connection the store cannot record is refused (v3 CONNACK
            // 3, v5 0x88). Logged and counted here; the connection log
            // cannot have it, since the store records nothing.
            tracing::warn!(
                client_id = %record_id,
                peer = %self.transport.peer,
                error = %refusal,
                "CONNECT refused: the store cannot record it (server unavailable, 0x88)"
            );
            self.broker
                .metrics()
                .count_failed_connect(Some(ConnectFailure::ServerUnavailable.reason_code()));
            self.write_connack_refused(ConnectFailure::ServerUnavailable)
                .await;
            return Err(HandshakeEnd::Refused);
        }
        if hello.protocol != MqttProtocol::V5_0
            && hello.password.is_some()
            && hello.username.is_none()
        {
            // MQTT 3 needs a user name with a password (MQTT-3.1.2-22).
            self.refuse(&hello, Some(record_id), ConnectFailure::BadCredentials)
                .await;
            return Err(HandshakeEnd::Refused);
        }
        if hello.auth_method {
            // Enhanced authentication (AUTH packets) is not offered.
            self.refuse(&hello, Some(record_id), ConnectFailure::NotAuthorized)
                .await;
            return Err(HandshakeEnd::Refused);
        }
        let identity = if options.auth {
            let registry = self.broker.inner.registry.clone();
            let client_id = hello.client_id.clone();
            let username = hello.username.as_ref().map(|u| u.to_string());
            let password = hello.password.clone();
            let org = options.org_id.clone();
            // Token checks read the store: off the async workers.
            let checked = tokio::task::spawn_blocking(move || {
                Identity::authenticate(
                    &registry,
                    &org,
                    &client_id,
                    username.as_deref(),
                    password.as_deref(),
                )
            })
            .await
            .unwrap_or(Err(ConnectFailure::ServerBusy));
            match checked {
                Ok(identity) => identity,
                Err(failure) => {
                    self.refuse(&hello, Some(record_id), failure).await;
                    return Err(HandshakeEnd::Refused);
                }
            }
        } else {
            Identity::Open
        };
        if let Some(will) = &mut hello.will {
            match identity.publish_topic(&will.topic) {
                Ok(t) if topic::valid_topic_name(&t) => will.topic = t,
                _ => {
                    self.refuse(&hello, Some(record_id), ConnectFailure::NotAuthorized)
                        .await;
                    return Err(HandshakeEnd::Refused);
                }
            }
        }
        let Ok(connection_id) = self.broker.next_connection_id() else {
            self.refuse(&hello, Some(record_id), ConnectFailure::ServerBusy)
                .await;
            return Err(HandshakeEnd::Refused);
        };

        let client_id: Arc<str> = Arc::from(hello.client_id.as_str());
        let mailbox = Arc::new(Mailbox::default());
        let finished = CancellationToken::new();
        let username = hello
            .username
            .as_ref()
            .map(|u| u.to_string())
            .unwrap_or_default();
        let attached = self
            .broker
            .attach(
                &client_id,
                connection_id,
                hello.clean_start,
                hello.session_expiry,
                &username,
                &self.transport.peer.to_string(),
                mailbox.clone(),
                finished.clone(),
            )
            .await;

        // CONNACK
        match &mut self.codec {
            Codec::V3(c) => {
                let _ = c.encode(
                    v3::Packet::ConnectAck(v3::ConnectAck {
                        return_code: v3::ConnectAckReason::ConnectionAccepted,
                        session_present: attached.session_present,
                    }),
                    &mut self.wbuf,
                );
            }
            Codec::V5(c) => {
                if let Some(max) = hello.max_packet_size {
                    c.set_max_outbound_size(max);
                }
                let _ = c.encode(
                    v5::Packet::ConnectAck(Box::new(v5::ConnectAck {
                        session_present: attached.session_present,
                        assigned_client_id: assigned.map(ByteString::from),
                        topic_alias_max: options.topic_alias_max,
                        max_packet_size: Some(options.max_packet_size),
                        shared_subscription_available: false,
                        ..Default::default()
                    })),
                    &mut self.wbuf,
                );
            }
        }

        let connect_time = now();
        let info = self.connection_info(&hello);
        let kind = EventKind::Connected(info);
        log_lifecycle(&record_id, self.transport.peer, &kind, hello.keep_alive);
        self.broker
            .report(&record_id, connect_time, connection_id, kind);
        let origin = self.origin(&client_id, &username);
        self.broker
            .publish_monitor(&origin, &Action::Connect { time: connect_time });

        let max_inflight = usize::from(hello.receive_max.min(options.max_inflight_messages).max(1));
        let Carried {
            inflight,
            queue,
            incoming_qos2,
        } = attached.carried;
        let mut live = Live {
            client_id,
            record_id,
            connection_id,
            identity,
            session: attached.session,
            generation: attached.generation,
            keep_alive: hello.keep_alive,
            connect_time,
            username,
            will: hello.will,
            inflight: BTreeMap::new(),
            max_inflight,
            pending: queue,
            next_packet_id: 1,
            incoming_qos2,
            aliases: BTreeMap::new(),
            connect_expiry: hello.session_expiry,
            activity: None,
            activity_reported: Instant::now(),
        };
        // Resume: unacknowledged messages again, with DUP (MQTT-4.4.0-1).
        for f in inflight {
            if f.released {
                self.encode_pubrel(f.packet_id);
            } else {
                self.encode_publish(&live, &f.delivery, Some(f.packet_id), true);
            }
            live.inflight.insert(f.packet_id.get(), f);
        }
        self.send_pending(&mut live);
        Ok((live, mailbox, finished))
    }

    /// The connected loop: packets from the client, work from the broker,
    /// the keepalive timer and shutdown. Returns why it ended.
    async fn serve_session(
        &mut self,
        live: &mut Live,
        mailbox: Arc<Mailbox>,
    ) -> (DisconnectCause, Arc<Mailbox>) {
        let rx = mailbox;
        let mut batch = Vec::new();
        let stop = self.broker.inner.stop.clone();
        let keep_alive =
            (live.keep_alive > 0).then(|| Duration::from_millis(u64::from(live.keep_alive) * 1500));
        let report_interval = self.broker.options().activity_report_interval;
        // One timer serves the keepalive deadline, the report of activity
        // held back by the report interval (reported when it ends, even if
        // the client goes quiet) and the release of idle buffers: a timer
        // is ~100 bytes of every connection's task.
        let mut silent_until = keep_alive.map(|ka| tokio::time::Instant::now() + ka);
        let timer = tokio::time::sleep_until(far_off(silent_until));
        tokio::pin!(timer);
        // A connection quiet for a second (nothing read, nothing to send)
        // gives its buffers back and reads its next bytes through a few
        // bytes of its own state: most clients of a large fleet only ping
        // now and then.
        let mut last_busy = tokio::time::Instant::now();
        // Anything that came with the CONNECT.
        if let Err(cause) = self.process_input(live) {
            return (cause, rx);
        }
        // Connected clients mostly wait: start idle unless more is pending.
        if self.rbuf.is_empty() {
            self.idle = true;
            self.rbuf = BytesMut::new();
        }
        loop {
            if let Err(_e) = self.flush().await {
                return (DisconnectCause::SocketClosed, rx);
            }
            if self.idle && !self.rbuf.is_empty() {
                // Part of a packet came: read the rest into a real buffer.
                self.idle = false;
            }
            if !self.idle {
                make_room(&mut self.rbuf);
            }
            let report_at = live
                .activity
                .is_some()
                .then(|| tokio::time::Instant::from_std(live.activity_reported + report_interval));
            // (Not while part of a packet waits: that would wake the timer again
            // and again.)
            let release_at =
                (!self.idle && self.rbuf.is_empty()).then_some(last_busy + IDLE_RELEASE);
            let wake = [silent_until, report_at, release_at]
                .into_iter()
                .flatten()
                .min();
            match wake {
                Some(wake) if timer.deadline() != wake => timer.as_mut().reset(wake),
                // Nothing due: a far-off timer is left alone.
                None if timer.deadline() < tokio::time::Instant::now() + FAR_OFF / 2 => {
                    timer.as_mut().reset(far_off(None));
                }
                _ => {}
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => return (DisconnectCause::ServerShuttingDown, rx),
                () = rx.recv(&mut batch, 256) => {
                    self.idle = false;
                    last_busy = tokio::time::Instant::now();
                    // Taken in one go: one write for many.
                    for item in batch.drain(..) {
                        match item {
                            Outbound::Close(cause) => return (cause, rx),
                            Outbound::Deliver(d) => self.deliver(live, d),
                        }
                    }
                }
                read = read_some(&mut self.reader, &mut self.rbuf, self.idle) => {
                    match read {
                        Ok(0) | Err(_) => return (DisconnectCause::SocketClosed, rx),
                        Ok(n) => {
                            self.traffic.read_bytes += n as u64;
                            // A full peek: more is likely waiting.
                            self.idle &= n < PEEK;
                        }
                    }
                    last_busy = tokio::time::Instant::now();
                    silent_until = keep_alive.map(|ka| last_busy + ka);
                    match self.process_input(live) {
                        Ok(()) => {}
                        Err(cause) => return (cause, rx),
                    }
                    if self.idle && self.rbuf.is_empty() {
                        // What the peek read was handled: give it back.
                        self.rbuf = BytesMut::new();
                    }
                }
                () = &mut timer => {
                    let now = tokio::time::Instant::now();
                    if silent_until.is_some_and(|t| t <= now) {
                        return (DisconnectCause::KeepAliveTimeout, rx);
                    }
                    if report_at.is_some_and(|t| t <= now) {
                        self.report_activity(live);
                    }
                    if release_at.is_some_and(|t| t <= now) {
                        self.idle = true;
                        self.rbuf = BytesMut::new();
                        if self.wbuf.is_empty() {
                            self.wbuf = BytesMut::new();
                        }
                        batch = Vec::new();
                    }
                }
            }
        }
    }

    /// Handles every whole packet in the read buffer.
    fn process_input(&mut self, live: &mut Live) -> Result<(), DisconnectCause> {
        loop {
            let packet = match self.codec.decode(&mut self.rbuf) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                Err(DecodeError::MaxSizeExceeded { .. }) => {
                    return Err(DisconnectCause::PacketTooLarge);
                }
                Err(
                    DecodeError::InvalidProtocol
                    | DecodeError::PacketIdRequired
                    | DecodeError::ConnectReservedFlagSet
                    | DecodeError::InvalidConnectFlags
                    | DecodeError::UnsupportedPacketType,
                ) => return Err(DisconnectCause::ProtocolError(ReasonCode::PROTOCOL_ERROR)),
                Err(_) => return Err(DisconnectCause::MalformedPacket),
            };
            self.handle(live, packet)?;
        }
    }

    fn note_activity(&mut self, live: &mut Live, kind: ActivityKind) {
        let time = now();
        live.activity = Some((kind, time));
        let interval = self.broker.options().activity_report_interval;
        if live.activity_reported.elapsed() >= interval {
            self.report_activity(live);
        }
    }

    fn report_activity(&mut self, live: &mut Live) {
        if let Some((kind, time)) = live.activity.take() {
            live.activity_reported = Instant::now();
            self.broker.report(
                &live.record_id,
                time,
                live.connection_id,
                EventKind::Activity(kind),
            );
        }
    }

    fn handle(&mut self, live: &mut Live, packet: In) -> Result<(), DisconnectCause> {
        match packet {
            In::Publish(p) => {
                self.traffic.read_msgs += 1;
                self.note_activity(live, ActivityKind::Publish);
                self.on_publish(live, *p)?;
            }
            In::PubAck(id) => {
                if live
                    .inflight
                    .get(&id.get())
                    .is_some_and(|f| f.delivery.qos == QoS::AtLeastOnce)
                {
                    live.inflight.remove(&id.get());
                    self.send_pending(live);
                }
            }
            In::PubRec(id) => {
                if let Some(f) = live.inflight.get_mut(&id.get())
                    && f.delivery.qos == QoS::ExactlyOnce
                {
                    f.released = true;
                }
                self.encode_pubrel(id);
            }
            In::PubComp(id) => {
                if live.inflight.remove(&id.get()).is_some() {
                    self.send_pending(live);
                }
            }
            In::PubRel(id) => {
                let known = live.incoming_qos2.remove(&id);
                self.encode_pubcomp(id, known);
            }
            In::Subscribe {
                packet_id,
                id,
                filters,
            } => {
                self.note_activity(live, ActivityKind::Subscribe);
                self.on_subscribe(live, packet_id, id, filters);
            }
            In::Unsubscribe { packet_id, filters } => {
                self.note_activity(live, ActivityKind::Unsubscribe);
                self.on_unsubscribe(live, packet_id, filters);
            }
            In::PingReq => {
                self.note_activity(live, ActivityKind::Ping);
                self.encode_simple(v3::Packet::PingResponse, v5::Packet::PingResponse);
            }
            In::Disconnect {
                reason,
                session_expiry,
            } => {
                if let Some(secs) = session_expiry {
                    // Setting an expiry on a session that had none is a
                    // protocol error (MQTT-3.14.2-2).
                    if live.connect_expiry == 0 && secs > 0 {
                        return Err(DisconnectCause::ProtocolError(ReasonCode::PROTOCOL_ERROR));
                    }
                    live.session.set_expiry(secs);
                }
                if reason != ReasonCode::DISCONNECT_WITH_WILL.0 {
                    live.will = None;
                }
                return Err(DisconnectCause::ClientDisconnect(ReasonCode(reason)));
            }
            In::Connect | In::Unexpected => {
                return Err(DisconnectCause::ProtocolError(ReasonCode::PROTOCOL_ERROR));
            }
        }
        Ok(())
    }

    fn on_publish(&mut self, live: &mut Live, mut p: Publish) -> Result<(), DisconnectCause> {
        // v5 topic aliases (MQTT-3.3.2-7..12).
        if let Some(props) = &mut p.properties
            && let Some(alias) = props.topic_alias.take()
        {
            if alias.get() > self.broker.options().topic_alias_max {
                return Err(DisconnectCause::ProtocolError(
                    ReasonCode::TOPIC_ALIAS_INVALID,
                ));
            }
            if p.topic.is_empty() {
                match live.aliases.get(&alias.get()) {
                    Some(t) => p.topic = t.clone(),
                    // An alias the client never set.
                    None => return Err(DisconnectCause::ProtocolError(ReasonCode::PROTOCOL_ERROR)),
                }
            } else {
                live.aliases.insert(alias.get(), p.topic.clone());
            }
        }
        if p.topic.contains('\0') {
            // U+0000 in a UTF-8 string makes the packet malformed
            // (MQTT-1.5.4-2).
            return Err(DisconnectCause::MalformedPacket);
        }
        if !topic::valid_topic_name(&p.topic) {
            return Err(DisconnectCause::ProtocolError(
                ReasonCode::TOPIC_NAME_INVALID,
            ));
        }
        if let Some(props) = &mut p.properties {
            props.subscription_ids.clear();
        }
        let routed = live.identity.publish_topic(&p.topic);
        let packet_id = p.packet_id;
        let authorised = routed.is_ok();
        let fresh = match (p.qos, packet_id) {
            (QoS::ExactlyOnce, Some(id)) => live.incoming_qos2.insert(id),
            _ => true,
        };
        if let Ok(topic) = routed
            && fresh
        {
            self.broker.publish(Message {
                topic,
                payload: p.payload,
                qos: p.qos,
                retain: p.retain,
                properties: p.properties.map(Box::new),
                publisher: Some(live.client_id.clone()),
                received: Instant::now(),
            });
        }
        match (p.qos, packet_id) {
            (QoS::AtMostOnce, _) => {}
            (QoS::AtLeastOnce, Some(id)) => self.encode_puback(id, authorised, false),
            (QoS::ExactlyOnce, Some(id)) => self.encode_puback(id, authorised, true),
            (_, None) => return Err(DisconnectCause::ProtocolError(ReasonCode::PROTOCOL_ERROR)),
        }
        if !authorised {
            tracing::debug!(client_id = %live.client_id, topic = %p.topic, "publish not authorised");
        }
        Ok(())
    }

    fn on_subscribe(
        &mut self,
        live: &mut Live,
        packet_id: NonZeroU16,
        id: Option<NonZeroU32>,
        filters: Vec<(ByteString, v5::SubscriptionOptions)>,
    ) {
        let mut codes: Vec<Result<QoS, v5::SubscribeAckReason>> = Vec::new();
        let mut retained = Vec::new();
        for (filter, opts) in filters {
            if !topic::valid_topic_filter(&filter) {
                codes.push(Err(v5::SubscribeAckReason::TopicFilterInvalid));
                continue;
            }
            if filter.starts_with("$share/") {
                codes.push(Err(v5::SubscribeAckReason::SharedSubscriptionNotSupported));
                continue;
            }
            let Ok(internal) = live.identity.subscribe_filter(&filter) else {
                codes.push(Err(v5::SubscribeAckReason::NotAuthorized));
                continue;
            };
            let options = SubOptions {
                qos: opts.qos,
                no_local: opts.no_local,
                retain_as_published: opts.retain_as_published,
                id,
            };
            let new = self
                .broker
                .add_subscription(&live.session, &internal, options);
            let send_retained = match opts.retain_handling {
                v5::RetainHandling::AtSubscribe => true,
                v5::RetainHandling::AtSubscribeNew => new,
                v5::RetainHandling::NoAtSubscribe => false,
            };
            if send_retained {
                for m in self.broker.retained_matching(&internal) {
                    retained.push(Delivery {
                        qos: m.qos.less_value(options.qos),
                        retain: true,
                        subscription_id: id,
                        message: m,
                    });
                }
            }
            codes.push(Ok(opts.qos));
        }
        match &mut self.codec {
            Codec::V3(c) => {
                let status = codes
                    .iter()
                    .map(|c| match c {
                        Ok(q) => v3::SubscribeReturnCode::Success(*q),
                        Err(_) => v3::SubscribeReturnCode::Failure,
                    })
                    .collect();
                let _ = c.encode(
                    v3::Packet::SubscribeAck { packet_id, status },
                    &mut self.wbuf,
                );
            }
            Codec::V5(c) => {
                let status = codes
                    .iter()
                    .map(|c| match c {
                        Ok(QoS::AtMostOnce) => v5::SubscribeAckReason::GrantedQos0,
                        Ok(QoS::AtLeastOnce) => v5::SubscribeAckReason::GrantedQos1,
                        Ok(QoS::ExactlyOnce) => v5::SubscribeAckReason::GrantedQos2,
                        Err(e) => *e,
                    })
                    .collect();
                let _ = c.encode(
                    v5::Packet::SubscribeAck(v5::SubscribeAck {
                        packet_id,
                        properties: Vec::new(),
                        reason_string: None,
                        status,
                    }),
                    &mut self.wbuf,
                );
            }
        }
        // Retained messages follow the SUBACK (MQTT-3.3.1-9).
        for d in retained {
            self.deliver(live, d);
        }
    }

    fn on_unsubscribe(&mut self, live: &mut Live, packet_id: NonZeroU16, filters: Vec<ByteString>) {
        let mut status = Vec::with_capacity(filters.len());
        for filter in filters {
            let existed = match live.identity.subscribe_filter(&filter) {
                Ok(internal) => self.broker.remove_subscription(&live.session, &internal),
                Err(_) => false,
            };
            status.push(if existed {
                v5::UnsubscribeAckReason::Success
            } else {
                v5::UnsubscribeAckReason::NoSubscriptionExisted
            });
        }
        match &mut self.codec {
            Codec::V3(c) => {
                let _ = c.encode(v3::Packet::UnsubscribeAck { packet_id }, &mut self.wbuf);
            }
            Codec::V5(c) => {
                let _ = c.encode(
                    v5::Packet::UnsubscribeAck(v5::UnsubscribeAck {
                        packet_id,
                        properties: Vec::new(),
                        reason_string: None,
                        status,
                    }),
                    &mut self.wbuf,
                );
            }
        }
    }

    /// Sends `d` now (QoS 0, or a free in-flight slot) or keeps it for
    /// later.
    fn deliver(&mut self, live: &mut Live, d: Delivery) {
        if d.message.is_expired() {
            return;
        }
        if d.qos == QoS::AtMostOnce {
            self.encode_publish(live, &d, None, false);
            return;
        }
        if live.inflight.len() < live.max_inflight && live.pending.is_empty() {
            self.send_inflight(live, d);
        } else if live.pending.len() < self.broker.options().max_queued_messages {
            live.pending.push_back(d);
        } else {
            self.broker.metrics().mqtt_dropped_messages.inc();
        }
    }

    fn send_pending(&mut self, live: &mut Live) {
        while live.inflight.len() < live.max_inflight {
            let Some(d) = live.pending.pop_front() else {
                return;
            };
            if d.message.is_expired() {
                continue;
            }
            if d.qos == QoS::AtMostOnce {
                self.encode_publish(live, &d, None, false);
            } else {
                self.send_inflight(live, d);
            }
        }
    }

    fn send_inflight(&mut self, live: &mut Live, d: Delivery) {
        let Some(packet_id) = next_free_id(live) else {
            live.pending.push_front(d);
            return;
        };
        self.encode_publish(live, &d, Some(packet_id), false);
        live.inflight.insert(
            packet_id.get(),
            Inflight {
                packet_id,
                delivery: d,
                released: false,
            },
        );
    }

    fn encode_publish(
        &mut self,
        live: &Live,
        d: &Delivery,
        packet_id: Option<NonZeroU16>,
        dup: bool,
    ) {
        let m = &d.message;
        let topic = live.identity.client_topic(&m.topic);
        let before = self.wbuf.len();
        let result = match &mut self.codec {
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
                &mut self.wbuf,
            ),
            Codec::V5(c) => {
                let mut properties = m.properties.as_deref().cloned().unwrap_or_default();
                properties.topic_alias = None;
                // What is left of the expiry interval (MQTT-3.3.2-6).
                properties.message_expiry_interval = m.expiry_left().and_then(NonZeroU32::new);
                properties.subscription_ids = d.subscription_id.into_iter().collect();
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
                    &mut self.wbuf,
                )
            }
        };
        match result {
            Ok(()) => self.traffic.write_msgs += 1,
            Err(_) => {
                // Larger than the client accepts (its Maximum Packet
                // Size): discarded as if delivered (MQTT-3.1.2-25).
                self.wbuf.truncate(before);
            }
        }
    }

    fn encode_simple(&mut self, p3: v3::Packet, p5: v5::Packet) {
        let _ = match &mut self.codec {
            Codec::V3(c) => c.encode(p3, &mut self.wbuf),
            Codec::V5(c) => c.encode(p5, &mut self.wbuf),
        };
    }

    fn encode_puback(&mut self, packet_id: NonZeroU16, authorised: bool, qos2: bool) {
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
            self.encode_simple(
                v3::Packet::PublishReceived { packet_id },
                v5::Packet::PublishReceived(ack),
            );
        } else {
            self.encode_simple(
                v3::Packet::PublishAck { packet_id },
                v5::Packet::PublishAck(ack),
            );
        }
    }

    fn encode_pubrel(&mut self, packet_id: NonZeroU16) {
        self.encode_simple(
            v3::Packet::PublishRelease { packet_id },
            v5::Packet::PublishRelease(ack2(packet_id, true)),
        );
    }

    fn encode_pubcomp(&mut self, packet_id: NonZeroU16, known: bool) {
        self.encode_simple(
            v3::Packet::PublishComplete { packet_id },
            v5::Packet::PublishComplete(ack2(packet_id, known)),
        );
    }

    /// Adds the traffic since the last call to the broker's metrics.
    fn count_traffic(&mut self) {
        let (now, then) = (self.traffic, self.counted);
        let m = self.broker.metrics();
        m.mqtt_received_bytes
            .inc_by(now.read_bytes - then.read_bytes);
        m.mqtt_received_messages
            .inc_by(now.read_msgs - then.read_msgs);
        m.mqtt_sent_bytes.inc_by(now.write_bytes - then.write_bytes);
        m.mqtt_sent_messages
            .inc_by(now.write_msgs - then.write_msgs);
        self.counted = now;
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.traffic.write_bytes += self.wbuf.len() as u64;
        self.count_traffic();
        let result = self.writer.write_all(&self.wbuf).await;
        self.wbuf.clear();
        if self.idle || self.wbuf.capacity() > 64 * 1024 {
            self.wbuf = BytesMut::new();
        }
        result
    }

    /// Ends an accepted connection: goodbye to v5 clients when the server
    /// ends it, the disconnect recorded, the session handed back, the will
    /// and the monitor message published.
    async fn finish(
        &mut self,
        mut live: Live,
        (cause, mailbox): (DisconnectCause, Arc<Mailbox>),
        finished: CancellationToken,
    ) {
        let server_side = !matches!(
            cause,
            DisconnectCause::ClientDisconnect(_) | DisconnectCause::SocketClosed
        );
        if server_side && let (Codec::V5(c), Some(code)) = (&mut self.codec, cause.reason_code()) {
            let code = v5::DisconnectReasonCode::try_from(code.0)
                .unwrap_or(v5::DisconnectReasonCode::UnspecifiedError);
            let _ = c.encode(
                v5::Packet::Disconnect(v5::Disconnect::new(code)),
                &mut self.wbuf,
            );
        }
        if !self.wbuf.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.flush()).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.shutdown()).await;

        let time = now();
        self.report_activity(&mut live);
        let kind = EventKind::Disconnected(cause.clone());
        log_lifecycle(&live.record_id, self.transport.peer, &kind, live.keep_alive);
        self.broker.report_from(
            &live.record_id,
            time,
            live.connection_id,
            Some(self.transport.peer),
            kind,
        );
        let origin = self.origin(&live.client_id, &live.username);
        self.broker.publish_monitor(
            &origin,
            &Action::Disconnect {
                connect_time: live.connect_time,
                time,
                cause: &cause,
                keep_alive: live.keep_alive,
                traffic: self.traffic,
            },
        );

        // Hand the session back.
        let leftovers = mailbox
            .close()
            .into_iter()
            .filter_map(|item| match item {
                Outbound::Deliver(d) => Some(d),
                Outbound::Close(_) => None,
            })
            .collect();
        let carried = Carried {
            inflight: std::mem::take(&mut live.inflight).into_values().collect(),
            queue: std::mem::take(&mut live.pending),
            incoming_qos2: std::mem::take(&mut live.incoming_qos2),
        };
        let expiry = self
            .broker
            .detach(&live.session, live.connection_id, carried, leftovers);
        finished.cancel();

        if let Some(will) = live.will.take()
            && !matches!(cause, DisconnectCause::ServerShuttingDown)
        {
            self.publish_will(&live, will, expiry);
        }
    }

    fn publish_will(&self, live: &Live, will: Box<Will>, session_expiry: u32) {
        let message = Message {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties: will.properties.map(Box::new),
            publisher: Some(live.client_id.clone()),
            received: Instant::now(),
        };
        let delay = will.delay_secs.min(session_expiry);
        if delay == 0 {
            self.broker.publish(message);
            return;
        }
        // Delayed: not sent if the client comes back first (MQTT-3.1.3-9).
        let broker = self.broker.clone();
        let session = live.session.clone();
        let generation = live.generation;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
            if session.generation() == generation {
                broker.publish(message);
            }
        });
    }
}

/// Reads the client id, keepalive and clean flag of a whole CONNECT of any
/// protocol level in `buf`: `None` while incomplete, `Some(None)` when it is
/// not an MQTT CONNECT at all.
#[allow(clippy::type_complexity)]
fn sniff_connect(buf: &[u8]) -> Option<Option<(String, u16, bool)>> {
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

/// Makes sure a read has room to put bytes (a read into a full buffer
/// would return 0, which means end of stream). Idle connections with an
/// empty buffer give their memory back.
fn make_room(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 4096 {
        *buf = BytesMut::new();
    }
    if buf.capacity() - buf.len() < 128 {
        // 512 bytes hold a typical CONNECT or small PUBLISH; busier
        // clients grow it (the codec reserves whole packets).
        buf.reserve(if buf.is_empty() { 512 } else { 4096 });
    }
}

/// Bytes an idle connection reads at once, without a buffer of its own.
const PEEK: usize = 16;

/// How long a connection is quiet before it gives its buffers back.
const IDLE_RELEASE: Duration = Duration::from_secs(1);

/// Reads what the client sent into `rbuf`: straight into it, or while
/// `idle` through a few bytes on the stack, so that `rbuf` takes only what
/// came.
async fn read_some<R: AsyncRead + Unpin>(
    reader: &mut R,
    rbuf: &mut BytesMut,
    idle: bool,
) -> std::io::Result<usize> {
    if idle {
        let mut peek = [0u8; PEEK];
        let n = reader.read(&mut peek).await?;
        rbuf.extend_from_slice(&peek[..n]);
        Ok(n)
    } else {
        reader.read_buf(rbuf).await
    }
}

/// A timer deadline: `at`, or so far off that it never fires.
fn far_off(at: Option<tokio::time::Instant>) -> tokio::time::Instant {
    at.unwrap_or_else(|| tokio::time::Instant::now() + FAR_OFF)
}

const FAR_OFF: Duration = Duration::from_secs(86400 * 365);

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

/// The next packet id not in flight.
fn next_free_id(live: &mut Live) -> Option<NonZeroU16> {
    for _ in 0..u16::MAX {
        let id = live.next_packet_id;
        live.next_packet_id = live.next_packet_id.checked_add(1).unwrap_or(1);
        if !live.inflight.contains_key(&id) {
            return NonZeroU16::new(id);
        }
    }
    None
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

/// One info line per connect, refused connect and disconnect, as Mosquitto
/// logs them, with the same field names as every other log line
/// (`client_id`, `peer`). `keep_alive` is the connection's, in seconds.
fn log_lifecycle(client_id: &ClientId, peer: SocketAddr, kind: &EventKind, keep_alive: u16) {
    match kind {
        EventKind::Connected(info) => tracing::info!(
            client_id = %client_id,
            peer = %peer,
            protocol = %info.protocol.map_or("?", |p| p.as_str()),
            keep_alive = info.keep_alive,
            clean_start = info.clean_session,
            username = %info.username,
            tls = info.secure,
            "MQTT client connected"
        ),
        EventKind::ConnectFailed { failure, .. } => {
            let code = failure.reason_code();
            tracing::info!(
                client_id = %client_id,
                peer = %peer,
                reason_code = %code,
                reason = %code.description(),
                "MQTT connect refused"
            )
        }
        EventKind::Disconnected(cause) => tracing::info!(
            client_id = %client_id,
            peer = %peer,
            initiator = %cause.initiator().as_str(),
            reason_code = %cause.reason_code().map_or_else(|| "none".to_owned(), |c| c.to_string()),
            close_code = cause.close_code().0,
            reason = %cause.reason_text(keep_alive),
            "MQTT client disconnected"
        ),
        EventKind::Activity(_) => {}
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

#[cfg(test)]
mod size_tests {
    use super::*;

    fn output_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(Broker, tokio::net::TcpStream, Transport) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every connected client holds one task for its whole life: its size
    /// is memory per client (1,336 bytes when written; 2,208 before the
    /// will, v5 properties and timers were slimmed).
    #[test]
    fn a_connections_task_stays_small() {
        let task = output_size(serve::<tokio::net::TcpStream>);
        assert!(task <= 1536, "a connection's future is {task} bytes");
        assert!(std::mem::size_of::<Live>() <= 320);
        assert!(std::mem::size_of::<Message>() <= 128);
    }
}
