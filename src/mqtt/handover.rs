//! Sessions that move with their client between cluster nodes.
//!
//! A persistent session (MQTT 3 clean session 0, v5 session expiry > 0) has
//! a record in the cluster's bucket of sessions: the node that holds it,
//! its expiry, its subscriptions, and when it was left without a connection
//! how many messages it kept. When its client connects to another node,
//! that node asks the holder over a NATS request: the holder ends the
//! client's connection there (a takeover), hands over the subscriptions and
//! the queued and unacknowledged QoS 1 and 2 messages, and forgets the
//! session. With a clean start the holder just forgets it.
//!
//! When the holder does not answer (it died) or no longer has the session
//! (it restarted), the subscriptions come from the record; the messages
//! queued there are lost, counted in
//! `connstate_cluster_routed_lost{reason="node_lost"}` (as many as the
//! record says the session kept when its client left; those queued later
//! are not known) and logged.

use std::{
    num::{NonZeroU16, NonZeroU32},
    sync::Arc,
    time::Duration,
};

use prost::Message as _;
use rmqtt_codec::types::QoS;
use tokio_stream::StreamExt as _;

use super::{
    Broker, Delivery, Outbound, SubOptions, SubscriptionIds,
    routes::{BucketWrite, Routed, Routes, write_to},
    session::{Carried, Inflight, Released, Session},
    subject,
};
use crate::{domain::DisconnectCause, metrics::RouteLossLabel};

/// How long a node waits for another to hand a session over.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// A persistent session as the bucket keeps it.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredSession {
    #[prost(string, tag = "1")]
    node: String,
    #[prost(uint32, tag = "2")]
    expiry_secs: u32,
    #[prost(message, repeated, tag = "3")]
    subscriptions: Vec<StoredSub>,
    /// When its last connection ended (ms since the epoch); 0 while
    /// connected.
    #[prost(int64, tag = "4")]
    detached_ms: i64,
    /// Messages it kept when its last connection ended.
    #[prost(uint32, tag = "5")]
    queued: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredSub {
    #[prost(string, tag = "1")]
    filter: String,
    #[prost(uint32, tag = "2")]
    qos: u32,
    #[prost(bool, tag = "3")]
    no_local: bool,
    #[prost(bool, tag = "4")]
    retain_as_published: bool,
    /// The subscription identifier; 0 for none.
    #[prost(uint32, tag = "5")]
    id: u32,
    #[prost(bool, tag = "6")]
    one_copy: bool,
}

/// A node's request for a session.
#[derive(Clone, PartialEq, prost::Message)]
struct Take {
    #[prost(string, tag = "1")]
    client_id: String,
    /// The node asking.
    #[prost(string, tag = "2")]
    by: String,
    /// A clean start: forget it, hand nothing over.
    #[prost(bool, tag = "3")]
    discard: bool,
}

/// The answer: the session, if the node had it.
#[derive(Clone, PartialEq, prost::Message)]
struct Handed {
    #[prost(bool, tag = "1")]
    found: bool,
    #[prost(uint32, tag = "2")]
    expiry_secs: u32,
    #[prost(message, repeated, tag = "3")]
    subscriptions: Vec<StoredSub>,
    #[prost(message, repeated, tag = "4")]
    queue: Vec<StoredDelivery>,
    #[prost(message, repeated, tag = "5")]
    inflight: Vec<StoredDelivery>,
    #[prost(uint32, repeated, tag = "6")]
    incoming_qos2: Vec<u32>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredDelivery {
    #[prost(string, tag = "1")]
    topic: String,
    #[prost(message, optional, tag = "2")]
    message: Option<Routed>,
    #[prost(uint32, tag = "3")]
    qos: u32,
    #[prost(bool, tag = "4")]
    retain: bool,
    #[prost(uint32, repeated, tag = "5")]
    subscription_ids: Vec<u32>,
    /// In flight: its packet id (0 when queued).
    #[prost(uint32, tag = "6")]
    packet_id: u32,
    #[prost(bool, tag = "7")]
    released: bool,
    #[prost(bool, tag = "8")]
    unsent: bool,
}

fn qos_of(qos: u32) -> QoS {
    match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl StoredSub {
    fn of(filter: &str, options: &SubOptions) -> StoredSub {
        StoredSub {
            filter: filter.to_owned(),
            qos: u32::from(u8::from(options.qos)),
            no_local: options.no_local,
            retain_as_published: options.retain_as_published,
            id: options.id.map_or(0, NonZeroU32::get),
            one_copy: options.one_copy,
        }
    }

    fn options(&self) -> SubOptions {
        SubOptions {
            qos: qos_of(self.qos),
            no_local: self.no_local,
            retain_as_published: self.retain_as_published,
            id: NonZeroU32::new(self.id),
            one_copy: self.one_copy,
        }
    }
}

impl StoredDelivery {
    fn of(delivery: &Delivery, origin: &str) -> StoredDelivery {
        StoredDelivery {
            topic: delivery.message.topic.to_string(),
            message: Some(Routed::of(&delivery.message, origin)),
            qos: u32::from(u8::from(delivery.qos)),
            retain: delivery.retain,
            subscription_ids: delivery
                .subscription_ids
                .to_vec()
                .into_iter()
                .map(NonZeroU32::get)
                .collect(),
            packet_id: 0,
            released: false,
            unsent: false,
        }
    }

    fn delivery(self) -> Option<Delivery> {
        let message = self.message?.into_message(self.topic, false)?;
        let mut subscription_ids = SubscriptionIds::None;
        for id in self.subscription_ids {
            subscription_ids.add(NonZeroU32::new(id));
        }
        Some(Delivery {
            message: Arc::new(message),
            qos: qos_of(self.qos),
            retain: self.retain,
            subscription_ids,
        })
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Routes {
    /// Answers other nodes' requests for sessions held here.
    pub(super) async fn answer_handovers(self: Arc<Self>) {
        let subject = format!("{}.session.{}", self.control, self.node);
        let mut requests = match self.plain.subscribe(subject).await {
            Ok(requests) => requests,
            Err(e) => {
                tracing::warn!(error = %e, "cannot answer other nodes' requests for sessions");
                return;
            }
        };
        loop {
            let request = tokio::select! {
                request = requests.next() => request,
                () = self.stop.cancelled() => return,
            };
            let Some(request) = request else { return };
            let (Some(reply), Ok(take)) = (request.reply.clone(), Take::decode(request.payload))
            else {
                continue;
            };
            let Some(broker) = self.broker.upgrade().map(|inner| Broker { inner }) else {
                return;
            };
            let plain = self.plain.clone();
            tokio::spawn(async move {
                let handed = broker.hand_over(&take).await;
                if let Err(e) = plain.publish(reply, handed.encode_to_vec().into()).await {
                    tracing::warn!(error = %e, client = %take.client_id, "answering a request for a session failed");
                }
            });
        }
    }
}

impl Broker {
    /// Records `session` in the cluster's bucket when it is persistent (and
    /// removes its record when it no longer is). `detached` with the number
    /// of messages it keeps once its connection ended.
    pub(crate) fn save_session(&self, session: &Session, detached: Option<u32>) {
        if let Some((routes, write)) = self.session_record(session, detached) {
            let _ = routes.session_outbox.send(write);
        }
    }

    /// [`Broker::save_session`] for a connection being attached, returning
    /// once the record is written: another node the client connects to
    /// next then finds where its session is.
    pub(crate) async fn save_attached_session(&self, session: &Session) {
        let Some((routes, write)) = self.session_record(session, None) else {
            return;
        };
        if let Err(e) = write_to(&routes.sessions, write).await {
            tracing::warn!(error = %e, client = %session.client_id, "writing a session's record to the cluster's bucket failed");
        }
    }

    /// The write of `session`'s record: its key and value (`None`: delete),
    /// if there is one to write.
    fn session_record(
        &self,
        session: &Session,
        detached: Option<u32>,
    ) -> Option<(&Arc<Routes>, BucketWrite)> {
        let routes = self.routes()?;
        let body = session.with_record(|expiry, subscriptions, held| {
            if expiry == 0 {
                return std::mem::replace(held, false).then_some(None);
            }
            *held = true;
            let record = StoredSession {
                node: routes.node.to_string(),
                expiry_secs: expiry,
                subscriptions: subscriptions
                    .iter()
                    .map(|(filter, options)| StoredSub::of(filter, options))
                    .collect(),
                detached_ms: detached.map_or(0, |_| now_ms()),
                queued: detached.unwrap_or(0),
            };
            Some(Some(record.encode_to_vec()))
        })?;
        Some((routes, (subject::name_token(&session.client_id), body)))
    }

    /// Removes the record of a session discarded here.
    pub(crate) fn forget_session(&self, session: &Session) {
        let Some(routes) = self.routes() else { return };
        if session.with_record(|_, _, held| std::mem::replace(held, false)) {
            let key = subject::name_token(&session.client_id);
            let _ = routes.session_outbox.send((key, None));
        }
    }

    /// Before a connection of `client_id` attaches here: brings its session
    /// over from the node that holds it (or, with `clean_start`, has that
    /// node forget it).
    pub(crate) async fn fetch_session(&self, client_id: &Arc<str>, clean_start: bool) {
        let Some(routes) = self.routes() else { return };
        // Held here, with its record saying so (a node that took it over
        // would have had it released here first): nothing to ask.
        if self
            .session(client_id)
            .is_some_and(|s| s.with_record(|_, _, held| *held))
        {
            return;
        }
        let key = subject::name_token(client_id);
        let record = match routes.sessions.entry(&key).await {
            Ok(Some(entry)) if entry.operation == async_nats::jetstream::kv::Operation::Put => {
                StoredSession::decode(entry.value).ok()
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, client = %client_id, "reading a session's record failed");
                None
            }
        };
        let Some(record) = record else { return };
        let here = record.node == *routes.node;
        if here && self.session(client_id).is_some() {
            return;
        }
        // Held here before a restart: nobody to ask.
        let handed = if here {
            None
        } else {
            self.ask_for_session(routes, &record.node, client_id, clean_start)
                .await
        };
        let expired = record.detached_ms > 0
            && record.expiry_secs != super::session::NEVER
            && now_ms() - record.detached_ms > i64::from(record.expiry_secs) * 1000;
        let found = handed.as_ref().is_some_and(|h| h.found);
        if clean_start || (expired && !found) {
            // The session ends: so does its record (a persistent new one is
            // written as the connection attaches).
            if let Err(e) = routes.sessions.delete(&key).await {
                tracing::warn!(error = %e, client = %client_id, "removing a session's record failed");
            }
            return;
        }
        let handed = match handed {
            Some(handed) if handed.found => handed,
            _ => {
                // The holder is gone, or restarted without it: the record
                // has the subscriptions, not the messages.
                if record.queued > 0 {
                    self.metrics()
                        .cluster_routed_lost
                        .get_or_create(&RouteLossLabel {
                            reason: "node_lost",
                        })
                        .inc_by(u64::from(record.queued));
                    tracing::warn!(client = %client_id, node = %record.node, lost = record.queued, "a session moved from a lost node without the messages queued there");
                }
                Handed {
                    found: true,
                    expiry_secs: record.expiry_secs,
                    subscriptions: record.subscriptions,
                    ..Handed::default()
                }
            }
        };
        self.install_session(client_id, handed);
    }

    /// Asks `node` for the session of `client_id` (to forget it, with
    /// `discard`); `None` when it did not answer.
    async fn ask_for_session(
        &self,
        routes: &Routes,
        node: &str,
        client_id: &str,
        discard: bool,
    ) -> Option<Handed> {
        let take = Take {
            client_id: client_id.to_owned(),
            by: routes.node.to_string(),
            discard,
        };
        let subject = format!("{}.session.{node}", routes.control);
        let asked = tokio::time::timeout(
            HANDOVER_TIMEOUT,
            routes.plain.request(subject, take.encode_to_vec().into()),
        )
        .await;
        match asked {
            Ok(Ok(answer)) => Handed::decode(answer.payload).ok(),
            Ok(Err(e)) => {
                tracing::info!(error = %e, %node, client = %client_id, "the node holding a session did not answer");
                None
            }
            Err(_) => {
                tracing::warn!(%node, client = %client_id, "the node holding a session did not answer in time");
                None
            }
        }
    }

    /// Makes `handed` the session of `client_id` here (unless a connection
    /// attached meanwhile).
    fn install_session(&self, client_id: &Arc<str>, handed: Handed) {
        let mut inflight = Vec::with_capacity(handed.inflight.len());
        for stored in handed.inflight {
            let (packet_id, released, unsent) = (stored.packet_id, stored.released, stored.unsent);
            let (Some(delivery), Some(packet_id)) = (
                stored.delivery(),
                u16::try_from(packet_id).ok().and_then(NonZeroU16::new),
            ) else {
                continue;
            };
            inflight.push(Inflight {
                packet_id,
                delivery,
                released,
                unsent,
            });
        }
        let carried = Carried {
            inflight,
            queue: handed
                .queue
                .into_iter()
                .filter_map(StoredDelivery::delivery)
                .collect(),
            incoming_qos2: handed
                .incoming_qos2
                .into_iter()
                .filter_map(|id| u16::try_from(id).ok().and_then(NonZeroU16::new))
                .collect(),
        };
        let Some(session) = self.adopt_session(client_id, handed.expiry_secs, carried) else {
            return;
        };
        for sub in &handed.subscriptions {
            let _ = self.add_subscription(&session, &sub.filter, sub.options());
        }
        tracing::info!(client = %client_id, subscriptions = handed.subscriptions.len(), "session moved here from another cluster node");
    }

    /// Another node asks for the session of `take.client_id`: its
    /// connection here ends (taken over), and the session is handed over
    /// and forgotten here.
    async fn hand_over(&self, take: &Take) -> Handed {
        let Some(session) = self.session(&take.client_id) else {
            return Handed::default();
        };
        if let Some(mailbox) = session.online_mailbox() {
            let by = format!("a connection on node {}", take.by);
            let _ = mailbox.send(Outbound::Close(DisconnectCause::SessionTakenOver { by }), 0);
            if tokio::time::timeout(HANDOVER_TIMEOUT, mailbox.finished(&self.inner.finishes))
                .await
                .is_err()
            {
                tracing::warn!(client = %take.client_id, "a connection taken over by another node did not close in time");
            }
        }
        let Some(released) = self.release_session(&session) else {
            return Handed::default();
        };
        let Released {
            expiry_secs,
            subscriptions,
            carried,
        } = released;
        self.will_done(&session);
        if take.discard {
            return Handed::default();
        }
        let node = self.routes().map_or("", |r| &*r.node).to_owned();
        let mut inflight = Vec::with_capacity(carried.inflight.len());
        for i in &carried.inflight {
            let mut stored = StoredDelivery::of(&i.delivery, &node);
            stored.packet_id = u32::from(i.packet_id.get());
            stored.released = i.released;
            stored.unsent = i.unsent;
            inflight.push(stored);
        }
        tracing::info!(client = %take.client_id, to = %take.by, "session handed over to another cluster node");
        Handed {
            found: true,
            expiry_secs,
            subscriptions: subscriptions
                .iter()
                .map(|(filter, options)| StoredSub::of(filter, options))
                .collect(),
            queue: carried
                .queue
                .iter()
                .map(|d| StoredDelivery::of(d, &node))
                .collect(),
            inflight,
            incoming_qos2: carried
                .incoming_qos2
                .iter()
                .map(|id| u32::from(id.get()))
                .collect(),
        }
    }
}
