//! One task per network connection, from CONNECT to close: the
//! connected loop and the goodbye.
//!
//! The task owns the [`Conn`] (socket, buffers, codec), the connection's
//! [`QosState`] and the keepalive timer. Other parts of the broker reach
//! it through its [`Outbound`] queue. Every way it can end is one
//! [`DisconnectCause`], reported to the tracker once, after the v5
//! DISCONNECT (when the server ends the connection) and before the session
//! is handed back. The handshake before the loop is in `handshake`, the
//! packets in `packet`, the QoS transitions in `qos`.

use std::{
    collections::BTreeMap,
    num::{NonZeroU16, NonZeroU32},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use bytestring::ByteString;
use rmqtt_codec::{
    error::DecodeError,
    types::{Publish, QoS},
    v5,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub use super::link::Transport;
use super::{
    Broker, Delivery, Message, Outbound, SubOptions,
    acl::Access,
    handshake::{Accepted, HandshakeEnd},
    identity::{Identity, NotAuthorized},
    link::{Conn, FAR_OFF, IDLE_RELEASE, PEEK, far_off, log_lifecycle, make_room, now, read_some},
    monitor::{Action, Local},
    packet::{Codec, In, TopicAliases, Will},
    qos::{Delivered, Incoming, Out, QosState},
    routes::Wait,
    session::{Mailbox, Session},
    topic::{self, Share},
};
use crate::domain::{
    ActivityKind, ClientId, DisconnectCause, EventKind, MqttProtocol, ReasonCode, Timestamp,
};

/// Serves one network connection until it closes. The connection is set
/// up before the future is made: a future keeps its arguments for its whole
/// life, and the stream, broker and transport would then be held twice in
/// every connection's task.
pub fn serve<S>(
    broker: Broker,
    stream: S,
    transport: Transport,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    broker.metrics().mqtt_connections.inc();
    let mut conn = Conn::new(broker, stream, transport);
    // A block, not an `async fn`: one taking `conn` would copy it into a
    // local of its own and keep both.
    async move {
        let _ = conn.run().await;
        conn.broker.metrics().mqtt_connections.dec();
    }
}

/// Queues the messages for the other nodes that waited for room, then
/// waits (at most 5 s) until the NATS subscriptions behind new
/// subscriptions are in place and the cluster's bucket has the retained
/// messages published.
async fn cluster_in_place(broker: &Broker, awaiting: Awaiting) {
    if let Some(routes) = broker.routes()
        && !awaiting.waiting.is_empty()
    {
        routes.send_later(awaiting.waiting).await;
    }
    let all = async {
        for token in awaiting.tokens {
            token.cancelled().await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), all)
        .await
        .is_err()
    {
        tracing::warn!(
            "the cluster's subscriptions or retained messages took over 5 s: answered without them"
        );
    }
}

/// What a connection's next answers (and its reading on) wait for on a
/// cluster node: the NATS subscriptions of new subscriptions (their
/// SUBACK), the cluster's copy of retained messages (their PUBACK or
/// PUBREC), room in the queue towards the other nodes. Boxed, as a
/// connection rarely has any (every byte of [`Live`] is memory per
/// client).
#[derive(Default)]
struct Awaiting {
    tokens: Vec<CancellationToken>,
    /// Messages for the other nodes the queue could not take yet, in the
    /// order published.
    waiting: Vec<Arc<Message>>,
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
    qos: QosState,
    aliases: BTreeMap<u16, ByteString>,
    /// The aliases the broker uses towards the client.
    topic_aliases: TopicAliases,
    /// Session expiry of the CONNECT.
    connect_expiry: u32,
    activity: Option<(ActivityKind, Timestamp)>,
    activity_reported: Instant,
    /// On a cluster node: what the answers in the write buffer wait for
    /// (a message published on another node right after a SUBACK arrives;
    /// a retained message acknowledged is on every node's SUBSCRIBE).
    awaiting: Option<Box<Awaiting>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn<S> {
    async fn run(&mut self) -> Result<(), HandshakeEnd> {
        // The handshake and the goodbye are boxed: a connection's task then
        // carries only the state of the connected loop for its whole life,
        // which matters with 100,000s of them.
        let accepted = Box::pin(self.handshake()).await?;
        let (mut live, rx) = self.start(accepted);
        let cause = self.serve_session(&mut live, rx).await;
        Box::pin(self.finish(live, cause)).await;
        Ok(())
    }

    /// The connected state of an accepted connection; what the session
    /// had in flight is sent again.
    fn start(&mut self, a: Accepted) -> (Live, Arc<Mailbox>) {
        let options = self.broker.options();
        let max_inflight = a.hello.receive_max.min(options.max_inflight_messages);
        let mut sends = Vec::new();
        let qos = QosState::resume(a.attached.carried, max_inflight, &mut |s| sends.push(s));
        let mut live = Live {
            client_id: a.client_id,
            record_id: a.record_id,
            connection_id: a.connection_id,
            identity: a.identity,
            session: a.attached.session,
            generation: a.attached.generation,
            keep_alive: a.hello.keep_alive,
            connect_time: a.connect_time,
            username: a.username,
            will: a.hello.will,
            qos,
            aliases: BTreeMap::new(),
            topic_aliases: TopicAliases::new(a.hello.topic_alias_max.min(options.topic_alias_max)),
            connect_expiry: a.hello.session_expiry,
            activity: None,
            activity_reported: Instant::now(),
            awaiting: None,
        };
        for s in sends {
            self.write(&live.identity, &mut live.topic_aliases, s);
        }
        // On a cluster node the will is kept cluster-wide while connected.
        if self.broker.routes().is_some() {
            let will = live
                .will
                .as_deref()
                .map(|w| will_message(&live.client_id, w));
            let delay = live
                .will
                .as_ref()
                .map_or(0, |w| w.delay_secs.min(live.connect_expiry));
            self.broker.will_starts(
                &live.session,
                &live.record_id,
                live.connection_id,
                will.as_ref(),
                delay,
            );
        }
        (live, a.mailbox)
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
            // Shutdown also comes as a close in the mailbox; this is for a
            // connection that attached while it was sent.
            if self
                .broker
                .inner
                .stopping
                .load(std::sync::atomic::Ordering::Acquire)
            {
                return (DisconnectCause::ServerShuttingDown, rx);
            }
            // Before anything is sent: a shared subscription reads it.
            live.session.set_busy(live.qos.is_full());
            if let Some(awaiting) = live.awaiting.take() {
                Box::pin(cluster_in_place(&self.broker, *awaiting)).await;
            }
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
            {
                // In a block: what is due is worked out again when the timer
                // fires, not held in the task while it waits.
                let (report_at, release_at) = self.due(live, report_interval, last_busy);
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
            }
            tokio::select! {
                biased;
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
                read = read_some(&mut self.stream, &mut self.rbuf, self.idle) => {
                    match read {
                        Ok(0) | Err(_) => return (DisconnectCause::SocketClosed, rx),
                        Ok(n) => {
                            self.count_read(n);
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
                    let (report_at, release_at) = self.due(live, report_interval, last_busy);
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
                        live.qos.release_if_empty();
                    }
                }
            }
        }
    }

    /// When the activity held back by the report interval is to be
    /// reported, and when quiet buffers are to be given back (not while
    /// part of a packet waits: that would wake the timer again and again).
    fn due(
        &self,
        live: &Live,
        report_interval: Duration,
        last_busy: tokio::time::Instant,
    ) -> (Option<tokio::time::Instant>, Option<tokio::time::Instant>) {
        let report_at = live
            .activity
            .is_some()
            .then(|| tokio::time::Instant::from_std(live.activity_reported + report_interval));
        let release_at = (!self.idle && self.rbuf.is_empty()).then_some(last_busy + IDLE_RELEASE);
        (report_at, release_at)
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
                self.count_publish_received();
                self.note_activity(live, ActivityKind::Publish);
                self.on_publish(live, *p)?;
            }
            In::PubAck(id) => {
                let (identity, aliases) = (&live.identity, &mut live.topic_aliases);
                live.qos
                    .puback(id, &mut |s| self.write(identity, aliases, s));
            }
            In::PubRec(id) => {
                let (identity, aliases) = (&live.identity, &mut live.topic_aliases);
                live.qos
                    .pubrec(id, &mut |s| self.write(identity, aliases, s));
            }
            In::PubComp(id) => {
                let (identity, aliases) = (&live.identity, &mut live.topic_aliases);
                live.qos
                    .pubcomp(id, &mut |s| self.write(identity, aliases, s));
            }
            In::PubRel(id) => {
                let (identity, aliases) = (&live.identity, &mut live.topic_aliases);
                live.qos
                    .pubrel(id, &mut |s| self.write(identity, aliases, s));
            }
            In::Subscribe {
                packet_id,
                id,
                filters,
            } => {
                self.note_activity(live, ActivityKind::Subscribe);
                self.on_subscribe(live, packet_id, id, filters)?;
            }
            In::Unsubscribe { packet_id, filters } => {
                self.note_activity(live, ActivityKind::Unsubscribe);
                self.on_unsubscribe(live, packet_id, filters);
            }
            In::PingReq => {
                self.note_activity(live, ActivityKind::Ping);
                let result = self.codec.pingresp(&mut self.wbuf);
                self.sent("PINGRESP", result);
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
        let routed = live.identity.publish_topic(&p.topic).and_then(|t| {
            self.broker
                .acl_allows(&live.client_id, &live.username, || &p.topic, Access::Write)
                .then_some(t)
                .ok_or(NotAuthorized)
        });
        let packet_id = p.packet_id;
        let authorised = routed.is_ok();
        // The Receive Maximum is announced to v5 clients only; a v3 client,
        // never told one, is bounded by its packet ids alone.
        let receive_max = if self.protocol == MqttProtocol::V5_0 {
            self.broker.options().receive_maximum
        } else {
            u16::MAX
        };
        let fresh = match (p.qos, packet_id) {
            (QoS::ExactlyOnce, Some(id)) => match live.qos.incoming_qos2(id, receive_max) {
                Incoming::Fresh => true,
                Incoming::Duplicate => false,
                Incoming::OverReceiveMaximum => {
                    return Err(DisconnectCause::ProtocolError(
                        ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    ));
                }
            },
            _ => true,
        };
        if let Ok(topic) = routed
            && fresh
        {
            let behind = live
                .awaiting
                .as_ref()
                .is_some_and(|a| !a.waiting.is_empty());
            let wait = if behind { Wait::Behind } else { Wait::Can };
            let (_, forwarded) = self.broker.publish_from(
                Message {
                    topic,
                    payload: p.payload,
                    qos: p.qos,
                    retain: p.retain,
                    properties: p.properties.map(Box::new),
                    publisher: Some(live.client_id.clone()),
                    received: Instant::now(),
                },
                wait,
            );
            // A retained message on a cluster node: acknowledged once the
            // cluster's bucket has it. A message the queue towards the
            // other nodes could not take: reading waits until it has.
            let qos = p.qos;
            if let Some(stored) = forwarded.stored.filter(|_| qos != QoS::AtMostOnce) {
                live.awaiting
                    .get_or_insert_with(Default::default)
                    .tokens
                    .push(stored);
            }
            if let Some(waiting) = forwarded.waiting {
                live.awaiting
                    .get_or_insert_with(Default::default)
                    .waiting
                    .push(waiting);
            }
        }
        match (p.qos, packet_id) {
            (QoS::AtMostOnce, _) => {}
            (QoS::AtLeastOnce, Some(id)) => {
                let result = self.codec.puback(id, authorised, false, &mut self.wbuf);
                self.sent("PUBACK", result);
            }
            (QoS::ExactlyOnce, Some(id)) => {
                let result = self.codec.puback(id, authorised, true, &mut self.wbuf);
                self.sent("PUBREC", result);
            }
            (_, None) => return Err(DisconnectCause::ProtocolError(ReasonCode::PROTOCOL_ERROR)),
        }
        if !authorised {
            self.broker.metrics().mqtt_denied_publishes.inc();
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
    ) -> Result<(), DisconnectCause> {
        let mut codes: Vec<Result<QoS, v5::SubscribeAckReason>> = Vec::new();
        let mut retained = Vec::new();
        for (filter, opts) in filters {
            if !topic::valid_topic_filter(&filter) {
                codes.push(Err(v5::SubscribeAckReason::TopicFilterInvalid));
                continue;
            }
            let (group, inner) = match Share::parse(&filter) {
                Share::No => (None, &*filter),
                Share::Invalid => {
                    codes.push(Err(v5::SubscribeAckReason::TopicFilterInvalid));
                    continue;
                }
                // No-local on a shared subscription is a protocol error
                // (MQTT-3.8.3-4).
                Share::Group { .. } if opts.no_local => {
                    return Err(DisconnectCause::ProtocolError(ReasonCode::PROTOCOL_ERROR));
                }
                Share::Group { group, filter } => (Some(group), filter),
            };
            // The platform's topic rules apply to the filter inside $share.
            let permitted = live.identity.subscribe_filter(inner).ok().filter(|_| {
                self.broker
                    .acl_allows(&live.client_id, &live.username, || inner, Access::Read)
            });
            let Some(internal) = permitted else {
                self.broker.metrics().mqtt_denied_subscriptions.inc();
                codes.push(Err(v5::SubscribeAckReason::NotAuthorized));
                continue;
            };
            let key = match group {
                Some(group) => format!("$share/{group}/{internal}"),
                None => internal.clone(),
            };
            let options = SubOptions {
                qos: opts.qos,
                no_local: opts.no_local,
                retain_as_published: opts.retain_as_published,
                id,
                one_copy: matches!(self.codec, Codec::V5(_)),
            };
            let (new, routed) = self.broker.add_subscription(&live.session, &key, options);
            if let Some(routed) = routed {
                live.awaiting
                    .get_or_insert_with(Default::default)
                    .tokens
                    .push(routed);
            }
            // Retained messages are not sent for a shared subscription
            // (MQTT 5 §4.8.2).
            let send_retained = group.is_none()
                && match opts.retain_handling {
                    v5::RetainHandling::AtSubscribe => true,
                    v5::RetainHandling::AtSubscribeNew => new,
                    v5::RetainHandling::NoAtSubscribe => false,
                };
            if send_retained {
                for m in self.broker.retained_matching(&internal) {
                    retained.push(Delivery {
                        qos: m.qos.less_value(options.qos),
                        retain: true,
                        subscription_ids: id.into(),
                        message: m,
                    });
                }
            }
            codes.push(Ok(opts.qos));
        }
        let result = self.codec.suback(packet_id, &codes, &mut self.wbuf);
        self.sent("SUBACK", result);
        // Retained messages follow the SUBACK (MQTT-3.3.1-9).
        for d in retained {
            self.deliver(live, d);
        }
        Ok(())
    }

    fn on_unsubscribe(&mut self, live: &mut Live, packet_id: NonZeroU16, filters: Vec<ByteString>) {
        let mut status = Vec::with_capacity(filters.len());
        for filter in filters {
            let key = match Share::parse(&filter) {
                Share::No => live.identity.subscribe_filter(&filter).ok(),
                Share::Group { group, filter } => live
                    .identity
                    .subscribe_filter(filter)
                    .ok()
                    .map(|internal| format!("$share/{group}/{internal}")),
                Share::Invalid => None,
            };
            let existed =
                key.is_some_and(|key| self.broker.remove_subscription(&live.session, &key));
            status.push(if existed {
                v5::UnsubscribeAckReason::Success
            } else {
                v5::UnsubscribeAckReason::NoSubscriptionExisted
            });
        }
        let result = self.codec.unsuback(packet_id, status, &mut self.wbuf);
        self.sent("UNSUBACK", result);
    }

    /// Sends `d` now (QoS 0, or a free in-flight slot) or keeps it for
    /// later.
    fn deliver(&mut self, live: &mut Live, d: Delivery) {
        // Read access is checked again for each message (as Mosquitto
        // does): a filter may be wider than a `deny` rule inside it, and
        // the rules may have been reloaded since the SUBSCRIBE.
        let topic = || live.identity.client_topic(&d.message.topic);
        if !self
            .broker
            .acl_allows(&live.client_id, &live.username, topic, Access::Read)
        {
            return;
        }
        let max_queued = self.broker.options().max_queued_messages;
        let (identity, aliases) = (&live.identity, &mut live.topic_aliases);
        let delivered = live
            .qos
            .deliver(d, max_queued, &mut |s| self.write(identity, aliases, s));
        if delivered == Delivered::Dropped {
            self.broker.metrics().mqtt_dropped_messages.inc();
        }
    }

    /// Writes what the QoS state machine asks for.
    fn write(&mut self, identity: &Identity, aliases: &mut TopicAliases, s: Out) {
        let result = match s {
            Out::Publish {
                delivery,
                packet_id,
                dup,
            } => {
                let topic = identity.client_topic(&delivery.message.topic);
                let alias = aliases.lookup(&topic);
                let sent = match alias {
                    Some((alias, true)) => (ByteString::new(), Some(alias)),
                    Some((alias, false)) => (topic.clone(), Some(alias)),
                    None => (topic.clone(), None),
                };
                match self
                    .codec
                    .publish(&delivery, sent.0, sent.1, packet_id, dup, &mut self.wbuf)
                {
                    Ok(()) => {
                        if let Some((alias, false)) = alias {
                            aliases.assign(alias, topic);
                        }
                        self.count_publish_sent();
                        Ok(())
                    }
                    // Larger than the client accepts (its Maximum Packet
                    // Size): discarded as if delivered (MQTT-3.1.2-25).
                    Err(_) => Ok(()),
                }
            }
            Out::PubRel { packet_id, known } => self.codec.pubrel(packet_id, known, &mut self.wbuf),
            Out::PubComp { packet_id, known } => {
                self.codec.pubcomp(packet_id, known, &mut self.wbuf)
            }
        };
        self.sent("acknowledgement", result);
    }

    /// Ends an accepted connection: goodbye to v5 clients when the server
    /// ends it, the disconnect recorded, the session handed back, the will
    /// and the monitor message published.
    async fn finish(&mut self, mut live: Live, (cause, mailbox): (DisconnectCause, Arc<Mailbox>)) {
        let server_side = !matches!(
            cause,
            DisconnectCause::ClientDisconnect(_) | DisconnectCause::SocketClosed
        );
        if server_side && let Some(code) = cause.reason_code() {
            let result = self.codec.disconnect(code.0, &mut self.wbuf);
            self.sent("DISCONNECT", result);
        }
        if !self.wbuf.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.flush()).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;

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
                close_code: cause.close_code(),
                reason: &cause.reason_text(live.keep_alive),
                traffic: self.traffic,
            },
            Some(Local {
                session: &live.session,
                connection_id: live.connection_id,
            }),
        );

        // Hand the session back.
        let leftovers = mailbox.close();
        let carried = std::mem::take(&mut live.qos).into_carried();
        let expiry = self
            .broker
            .detach(&live.session, live.connection_id, carried, leftovers);
        // Before a connection waiting to take over goes on: it may hold a
        // will of its own.
        match (live.will.take(), &cause) {
            // This node was declared lost: the survivor that recorded it
            // publishes the will from the cluster's bucket.
            (_, DisconnectCause::NodeLost { .. }) if self.broker.routes().is_some() => {}
            (Some(will), cause) if !matches!(cause, DisconnectCause::ServerShuttingDown) => {
                self.publish_will(&live, will, expiry);
            }
            _ => self.broker.will_done(&live.session),
        }
        mailbox.finish(&self.broker.inner.finishes);
    }

    fn publish_will(&self, live: &Live, will: Box<Will>, session_expiry: u32) {
        let delay = will.delay_secs.min(session_expiry);
        let message = will_message(&live.client_id, &will);
        if delay == 0 {
            self.broker.publish(message);
            self.broker.will_done(&live.session);
            return;
        }
        // Delayed: not sent if the client comes back first (MQTT-3.1.3-9).
        self.broker.schedule_will(
            &live.session,
            live.generation,
            crate::mqtt::PendingWill {
                message,
                record_id: live.record_id.clone(),
                connection_id: live.connection_id,
                broker: Arc::from(self.broker.options().name.as_str()),
            },
            Duration::from_secs(u64::from(delay)),
        );
    }
}

/// The message of `client_id`'s will.
fn will_message(client_id: &Arc<str>, will: &Will) -> Message {
    Message {
        topic: will.topic.clone(),
        payload: will.payload.clone(),
        qos: will.qos,
        retain: will.retain,
        properties: will.properties.clone().map(Box::new),
        publisher: Some(client_id.clone()),
        received: Instant::now(),
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
    /// will, v5 properties and timers were slimmed; 1,280 since the local
    /// address became its port; 1,104 since the connection is set up
    /// before its future and shutdown comes through the mailbox; 1,008
    /// since the mailbox keeps the waker; 872 since the QoS window is
    /// boxed while in use and what the timer waits for is not held across
    /// the wait; 880 with the socket whole instead of in halves, which
    /// were an allocation of their own). Tokio rounds a task up to 128
    /// bytes on x86_64 and adds 112 of its own (header, scheduler, task
    /// id, trailer), with the task tracker's 8; the listener's stream
    /// wrapper adds 16: a future of up to 888 bytes here makes a task of
    /// 1,024 bytes, one more word a task of 1,152.
    #[test]
    fn a_connections_task_stays_small() {
        let task = output_size(serve::<tokio::net::TcpStream>);
        assert!(task <= 888, "a connection's future is {task} bytes");
        let live = std::mem::size_of::<Live>();
        assert!(live <= 240, "a connection's live state is {live} bytes");
        // Its session, in the session table for as long as it is connected
        // (an empty `Carried` is not kept): with its reference counts, 184
        // bytes, the allocator's class of 192 (208 was one of 224).
        let session = std::mem::size_of::<crate::mqtt::session::Session>();
        assert!(session <= 168, "a session is {session} bytes");
        // Its mailbox: with its reference counts, 80 bytes.
        let mailbox = std::mem::size_of::<crate::mqtt::session::Mailbox>();
        assert!(mailbox <= 64, "a mailbox is {mailbox} bytes");
        assert!(std::mem::size_of::<Message>() <= 128);
    }
}

/// The connection's timers on the paused clock, over an in-memory stream:
/// keepalive (the client's and the server's) and the will delay.
#[cfg(test)]
mod timer_tests {
    use super::*;
    use crate::mqtt::{BrokerOptions, testing};
    use tokio::{
        io::{AsyncReadExt, DuplexStream},
        time::{Instant, sleep, timeout},
    };

    /// A client's end of a new connection to `broker`.
    fn open(broker: &Broker) -> DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let addr = "127.0.0.1:1883".parse().unwrap();
        let transport = Transport {
            peer: addr,
            local_port: addr.port(),
            secure: false,
        };
        tokio::spawn(serve(broker.clone(), server, transport));
        client
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn packet(header: u8, body: Vec<u8>) -> Vec<u8> {
        assert!(body.len() < 128);
        let mut out = vec![header, body.len() as u8];
        out.extend(body);
        out
    }

    fn connect_v3(client_id: &str, keep_alive: u16) -> Vec<u8> {
        let mut body = Vec::new();
        string(&mut body, "MQTT");
        body.extend_from_slice(&[4, 0x02]);
        body.extend_from_slice(&keep_alive.to_be_bytes());
        string(&mut body, client_id);
        packet(0x10, body)
    }

    /// A v5 CONNECT without clean start; `will` is (topic, will delay).
    fn connect_v5(
        client_id: &str,
        keep_alive: u16,
        session_expiry: u32,
        will: Option<(&str, u32)>,
    ) -> Vec<u8> {
        let mut body = Vec::new();
        string(&mut body, "MQTT");
        body.extend_from_slice(&[5, if will.is_some() { 0x04 } else { 0 }]);
        body.extend_from_slice(&keep_alive.to_be_bytes());
        body.extend_from_slice(&[5, 0x11]);
        body.extend_from_slice(&session_expiry.to_be_bytes());
        string(&mut body, client_id);
        if let Some((topic, delay)) = will {
            body.extend_from_slice(&[5, 0x18]);
            body.extend_from_slice(&delay.to_be_bytes());
            string(&mut body, topic);
            string(&mut body, "gone");
        }
        packet(0x10, body)
    }

    /// Reads one packet: its first byte and its body.
    async fn read_packet(client: &mut DuplexStream) -> (u8, Vec<u8>) {
        let header = client.read_u8().await.unwrap();
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let b = client.read_u8().await.unwrap();
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; len];
        client.read_exact(&mut body).await.unwrap();
        (header, body)
    }

    /// Waits for the server to close the connection; what it sent last.
    async fn closed(client: &mut DuplexStream) -> Vec<u8> {
        let mut rest = Vec::new();
        timeout(Duration::from_secs(3600), client.read_to_end(&mut rest))
            .await
            .expect("closed within the hour")
            .unwrap();
        rest
    }

    fn assert_at(t0: Instant, expected: Duration) {
        let elapsed = t0.elapsed();
        assert!(
            elapsed >= expected && elapsed <= expected + Duration::from_millis(5),
            "at {elapsed:?}, expected {expected:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_disconnected_after_one_and_a_half_keepalives() {
        let (broker, _dir) = testing::broker(BrokerOptions::default());
        let mut client = open(&broker);
        client.write_all(&connect_v3("k", 2)).await.unwrap();
        assert_eq!(read_packet(&mut client).await, (0x20, vec![0, 0]));
        let t0 = Instant::now();
        // A ping within 3 s is answered and starts the 3 s again.
        sleep(Duration::from_millis(2900)).await;
        client.write_all(&[0xC0, 0]).await.unwrap();
        assert_eq!(read_packet(&mut client).await.0, 0xD0);
        // Then silence: closed 3 s after the ping, not before; MQTT 3
        // gets no DISCONNECT.
        assert!(closed(&mut client).await.is_empty());
        assert_at(t0, Duration::from_millis(5900));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_is_held_to_the_server_keepalive() {
        let options = BrokerOptions {
            max_keepalive: 2,
            ..BrokerOptions::default()
        };
        let (broker, _dir) = testing::broker(options);
        let mut client = open(&broker);
        // It asks for 60 s; the CONNACK says 2 (Server Keep Alive, 0x13).
        client
            .write_all(&connect_v5("k5", 60, 0, None))
            .await
            .unwrap();
        let (header, connack) = read_packet(&mut client).await;
        assert_eq!(header, 0x20);
        assert!(
            connack.windows(3).any(|w| w == [0x13, 0, 2]),
            "{connack:02x?}"
        );
        let t0 = Instant::now();
        let rest = closed(&mut client).await;
        assert_at(t0, Duration::from_secs(3));
        // DISCONNECT, keep alive timeout (0x8D).
        assert_eq!(&rest[..1], &[0xE0]);
        assert_eq!(rest[2], 0x8D);
    }

    /// The will of a connection that drops with `will_delay` and
    /// `session_expiry`: when it comes after the drop, if at all within
    /// the hour; `back_after` reconnects the client that long after.
    async fn will_after(
        will_delay: u32,
        session_expiry: u32,
        back_after: Option<Duration>,
    ) -> Option<Duration> {
        let (broker, _dir) = testing::broker(BrokerOptions::default());
        let mailbox = testing::subscriber(&broker, "will/#").await;
        let mut client = open(&broker);
        let connect = connect_v5("w", 0, session_expiry, Some(("will/w", will_delay)));
        client.write_all(&connect).await.unwrap();
        assert_eq!(read_packet(&mut client).await.0, 0x20);
        let t0 = Instant::now();
        drop(client);
        // Kept open: the will must not come while it is connected.
        let mut _back = None;
        if let Some(after) = back_after {
            sleep(after).await;
            let mut again = open(&broker);
            again
                .write_all(&connect_v5("w", 0, session_expiry, None))
                .await
                .unwrap();
            assert_eq!(read_packet(&mut again).await.0, 0x20);
            _back = Some(again);
        }
        let mut out = Vec::new();
        timeout(Duration::from_secs(3600), mailbox.recv(&mut out, 1))
            .await
            .ok()?;
        let Some(Outbound::Deliver(will)) = out.pop() else {
            panic!("a delivery");
        };
        assert_eq!(&*will.message.topic, "will/w");
        Some(t0.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_will_waits_for_its_delay() {
        let at = will_after(5, 60, None).await.expect("a will");
        assert!(
            at >= Duration::from_secs(5) && at <= Duration::from_millis(5005),
            "{at:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_will_comes_when_the_session_expires_if_that_is_sooner() {
        let at = will_after(30, 10, None).await.expect("a will");
        assert!(
            at >= Duration::from_secs(10) && at <= Duration::from_millis(10_005),
            "{at:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_will_without_delay_or_session_comes_at_once() {
        assert_eq!(will_after(5, 0, None).await, Some(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_back_within_the_delay_cancels_its_will() {
        assert_eq!(will_after(5, 60, Some(Duration::from_secs(2))).await, None);
    }
}
