//! The handshake of a new connection, in steps: read the CONNECT, admit
//! its client id, authenticate, attach the session, answer CONNACK.
//!
//! A refused CONNECT is answered and recorded here; an accepted one
//! leaves as [`Accepted`], from which the connected loop starts.

use std::{num::NonZeroU16, sync::Arc, time::Duration};

use rmqtt_codec::{
    error::DecodeError,
    v3, v5,
    version::{ProtocolVersion, VersionCodec},
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Decoder;

use super::{
    acl::Access,
    identity::Identity,
    link::{Conn, log_lifecycle, make_room, now},
    monitor::{Action, Local},
    packet::{Codec, Hello, Welcome, sniff_connect},
    session::{Attached, Mailbox},
    topic,
};
use crate::domain::{ClientId, ConnectFailure, ConnectionInfo, EventKind, MqttProtocol, Timestamp};

/// Why the handshake did not produce a session.
pub(super) enum HandshakeEnd {
    /// Closed, timed out or garbage before a CONNECT: nothing to record.
    Quiet,
    /// A CONNECT that was refused (already answered and recorded).
    Refused,
}

/// A connection the handshake accepted: answered with CONNACK, recorded
/// as connected, its session attached.
pub(super) struct Accepted {
    pub(super) hello: Hello,
    pub(super) client_id: Arc<str>,
    pub(super) record_id: ClientId,
    pub(super) connection_id: u64,
    pub(super) identity: Identity,
    pub(super) username: String,
    pub(super) attached: Attached,
    pub(super) connect_time: Timestamp,
    /// Also says when the connection has handed its session back.
    pub(super) mailbox: Arc<Mailbox>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn<S> {
    /// The whole handshake, bounded by the connect timeout and shutdown.
    pub(super) async fn handshake(&mut self) -> Result<Accepted, HandshakeEnd> {
        let stop = self.broker.inner.stop.clone();
        let timeout = self.broker.options().connect_timeout;
        let mut hello = tokio::select! {
            hello = tokio::time::timeout(timeout, self.read_connect()) => match hello {
                Ok(hello) => hello?,
                Err(_) => {
                    tracing::debug!(peer = %self.transport.peer, "no CONNECT in time");
                    return Err(HandshakeEnd::Quiet);
                }
            },
            () = stop.cancelled() => return Err(HandshakeEnd::Quiet),
        };
        self.protocol = hello.protocol;
        let (record_id, assigned) = self.admit(&mut hello).await?;
        let identity = self.authenticate(&mut hello, &record_id).await?;
        let Ok(connection_id) = self.broker.next_connection_id() else {
            self.refuse(&hello, Some(record_id), ConnectFailure::ServerBusy)
                .await;
            return Err(HandshakeEnd::Refused);
        };
        let accepted = self.attach(hello, record_id, connection_id, identity).await;
        // The connect is durable before the client hears CONNACK: a crash
        // after it leaves a record, which the restart ends.
        let kind = EventKind::Connected(self.connection_info(&accepted.hello));
        let recorded = self
            .broker
            .record(
                &accepted.record_id,
                accepted.connect_time,
                accepted.connection_id,
                None,
                kind.clone(),
            )
            .await;
        if !recorded {
            self.unrecorded(accepted).await;
            return Err(HandshakeEnd::Refused);
        }
        log_lifecycle(
            &accepted.record_id,
            self.transport.peer,
            &kind,
            accepted.hello.keep_alive,
        );
        self.welcome(&accepted, assigned);
        Ok(accepted)
    }

    /// Refuses a connect the store could not record (v3 CONNACK 3, v5
    /// 0x88, as when the store refuses writes before the handshake) and
    /// hands the session it had attached back untouched.
    async fn unrecorded(&mut self, mut a: Accepted) {
        self.refuse_unrecordable(&a.record_id, "its connect could not be recorded")
            .await;
        let leftovers = a.mailbox.close();
        let carried = std::mem::take(&mut a.attached.carried);
        self.broker
            .detach(&a.attached.session, a.connection_id, carried, leftovers);
        a.mailbox.finish(&self.broker.inner.finishes);
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
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return Err(HandshakeEnd::Quiet),
                Ok(n) => self.count_read(n),
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
        let _ = self.stream.write_all(&[0x20, 0x02, 0x00, 0x01]).await;
        let sniffed = loop {
            if let Some(found) = sniff_connect(&self.rbuf) {
                break found;
            }
            if self.rbuf.len() > 64 * 1024 {
                return;
            }
            make_room(&mut self.rbuf);
            match tokio::time::timeout(Duration::from_secs(1), self.stream.read_buf(&mut self.rbuf))
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

    /// Refuses a CONNECT that the store cannot record (v3 CONNACK 3, v5
    /// 0x88). Logged and counted here; the connection log cannot have it,
    /// since the store records nothing.
    async fn refuse_unrecordable(&mut self, client_id: &ClientId, why: &str) {
        tracing::warn!(
            client_id = %client_id,
            peer = %self.transport.peer,
            "CONNECT refused: {why} (server unavailable, 0x88)"
        );
        self.broker
            .metrics()
            .count_failed_connect(Some(ConnectFailure::ServerUnavailable.reason_code()));
        self.write_connack_refused(ConnectFailure::ServerUnavailable)
            .await;
    }

    async fn write_connack_refused(&mut self, failure: ConnectFailure) {
        let result = self.codec.connack_refused(failure, &mut self.wbuf);
        self.sent("CONNACK", result);
        let _ = self.flush().await;
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
        self.broker.publish_monitor(
            &origin,
            &Action::FailedConnect {
                time,
                close_code: failure.close_code(),
                reason: failure.reason_code().description(),
            },
            None,
        );
    }

    /// Admits the client id (an empty one gets a name where the protocol
    /// allows it) and checks what needs no registry: the store can record
    /// the connection, a v3 password comes with a user name, no enhanced
    /// authentication. Returns the id and the name assigned, if any.
    async fn admit(
        &mut self,
        hello: &mut Hello,
    ) -> Result<(ClientId, Option<String>), HandshakeEnd> {
        let mut assigned = None;
        if hello.client_id.is_empty() {
            if self.broker.options().auth
                || (!hello.clean_start && hello.protocol != MqttProtocol::V5_0)
            {
                self.refuse(hello, None, ConnectFailure::BadClientId).await;
                return Err(HandshakeEnd::Refused);
            }
            hello.client_id = format!("auto-{:016x}", random_u64());
            assigned = Some(hello.client_id.clone());
        }
        let Ok(record_id) = ClientId::new(hello.client_id.clone()) else {
            self.refuse(hello, None, ConnectFailure::BadClientId).await;
            return Err(HandshakeEnd::Refused);
        };
        if let Some(refusal) = self.broker.inner.store.recording().refusal() {
            let why = format!("the store cannot record it ({refusal})");
            self.refuse_unrecordable(&record_id, &why).await;
            return Err(HandshakeEnd::Refused);
        }
        let max_keep_alive = self.broker.options().max_keepalive;
        if max_keep_alive != 0 && (hello.keep_alive == 0 || hello.keep_alive > max_keep_alive) {
            if hello.protocol == MqttProtocol::V5_0 {
                // Held to the broker's Server Keep Alive (MQTT-3.2.2-21).
                hello.keep_alive = max_keep_alive;
                hello.server_keep_alive = Some(max_keep_alive);
            } else {
                // MQTT 3 cannot be told another keepalive: refused as
                // Mosquitto refuses it (max_keepalive).
                self.refuse(hello, Some(record_id), ConnectFailure::BadClientId)
                    .await;
                return Err(HandshakeEnd::Refused);
            }
        }
        let failure = if hello.protocol != MqttProtocol::V5_0
            && hello.password.is_some()
            && hello.username.is_none()
        {
            // MQTT 3 needs a user name with a password (MQTT-3.1.2-22).
            Some(ConnectFailure::BadCredentials)
        } else if hello.auth_method {
            // Enhanced authentication (AUTH packets) is not offered.
            Some(ConnectFailure::NotAuthorized)
        } else {
            None
        };
        if let Some(failure) = failure {
            self.refuse(hello, Some(record_id), failure).await;
            return Err(HandshakeEnd::Refused);
        }
        Ok((record_id, assigned))
    }

    /// Who the client is (open mode, or its registry identity), and
    /// whether it may publish its will where it asks.
    async fn authenticate(
        &mut self,
        hello: &mut Hello,
        record_id: &ClientId,
    ) -> Result<Identity, HandshakeEnd> {
        let options = self.broker.options();
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
                    self.refuse(hello, Some(record_id.clone()), failure).await;
                    return Err(HandshakeEnd::Refused);
                }
            }
        } else {
            Identity::Open
        };
        if let Some(will) = &mut hello.will {
            let username = hello.username.as_deref().unwrap_or("");
            let permitted =
                self.broker
                    .acl_allows(&hello.client_id, username, || &will.topic, Access::Write);
            match identity.publish_topic(&will.topic) {
                Ok(t) if topic::valid_topic_name(&t) && permitted => will.topic = t,
                _ => {
                    self.refuse(
                        hello,
                        Some(record_id.clone()),
                        ConnectFailure::NotAuthorized,
                    )
                    .await;
                    return Err(HandshakeEnd::Refused);
                }
            }
        }
        Ok(identity)
    }

    /// Attaches the client's session (taking it over from another
    /// connection, or resuming or starting it).
    async fn attach(
        &mut self,
        hello: Hello,
        record_id: ClientId,
        connection_id: u64,
        identity: Identity,
    ) -> Accepted {
        let client_id: Arc<str> = Arc::from(hello.client_id.as_str());
        let mailbox = Arc::new(Mailbox::default());
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
            )
            .await;
        Accepted {
            hello,
            client_id,
            record_id,
            connection_id,
            identity,
            username,
            attached,
            connect_time: now(),
            mailbox,
        }
    }

    /// CONNACK and the Connect monitor message.
    fn welcome(&mut self, a: &Accepted, assigned: Option<String>) {
        let options = self.broker.options();
        let welcome = Welcome {
            session_present: a.attached.session_present,
            assigned_client_id: assigned,
            client_max_packet_size: a.hello.max_packet_size,
            topic_alias_max: options.topic_alias_max,
            max_packet_size: options.max_packet_size,
            server_keep_alive: a.hello.server_keep_alive,
            receive_max: NonZeroU16::new(options.receive_maximum).unwrap_or(NonZeroU16::MAX),
        };
        let result = self.codec.connack(welcome, &mut self.wbuf);
        self.sent("CONNACK", result);

        let origin = self.origin(&a.client_id, &a.username);
        self.broker.publish_monitor(
            &origin,
            &Action::Connect {
                time: a.connect_time,
            },
            Some(Local {
                session: &a.attached.session,
                connection_id: a.connection_id,
            }),
        );
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}
