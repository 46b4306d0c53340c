//! MQTT routing between the nodes of a cluster, on NATS core subjects, so
//! that clients on different nodes talk as if on one broker.
//!
//! **By interest.** A node subscribes on NATS only for the filters its own
//! clients subscribed ([`super::subject`] maps topics and filters to
//! subjects). Every message a client of this node publishes goes to NATS
//! once, on its topic's subject, with the other messages of that topic
//! waiting at the same moment (one NATS message, a [`Bundle`], for many:
//! NATS's cost is per message); NATS forwards it only to the nodes (and
//! across NATS servers only along routes) with a matching subscription, and
//! drops it at the first server when no node has one. (A node does not keep
//! a table of the others' interest: learnt asynchronously, it would drop
//! the messages published between another node's SUBACK and the table's
//! update.)
//!
//! **Once per subscription.** A message received for a filter is delivered
//! to this node's subscriptions to exactly that filter, so overlapping
//! filters on one node never double it through NATS. Plain subscriptions
//! are on a connection that does not receive its own messages (`no_echo`):
//! the origin already delivered to its own clients. A group of shared
//! subscribers (`$share/{group}/{filter}`, or a shared application's
//! instances) is a NATS queue group on a second connection, which does
//! receive this node's own messages: NATS picks one node of the group, the
//! node one of its members, so each message reaches a group once across the
//! cluster. A node's own publishes therefore never reach its local group
//! members directly.
//!
//! **Order.** One connection carries a node's bundles, each topic's in
//! order, and one task per subscription delivers them in order: the
//! messages of one publisher on one topic arrive in the order they were
//! published (MQTT's ordered topics; messages on different topics may pass
//! each other).
//!
//! **Retained messages** live in a key-value bucket keyed by topic (the
//! same escaping); every node follows the bucket into its own retained map,
//! from which SUBSCRIBE serves them. An empty retained publish deletes the
//! key on every node.
//!
//! **What can be lost.** NATS core delivers at most once. While both nodes
//! and their NATS connections are up, nothing is lost: a message is lost
//! only when this node's queue towards NATS is full, when it is larger than
//! NATS's payload limit, or when a NATS connection breaks with it in
//! flight. QoS 1 and 2 are end to end between each client and its node: the
//! publisher's PUBACK or PUBREC means its node has the message and has
//! handed it to NATS, not that the other node has queued it. What is
//! counted is in `connstate_cluster_routed_lost{reason}`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, Weak},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_nats::jetstream::kv;
use bytes::Bytes;
use bytestring::ByteString;
use prost::Message as _;
use rmqtt_codec::{types::QoS, v5::PublishProperties};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;

use super::{Broker, Inner, Message, subject, topic};
use crate::metrics::{Metrics, RouteLossLabel};

/// What a node's broker routes through: handed over by the cluster.
pub struct RouteLinks {
    /// This node's name.
    pub node: String,
    /// The subjects' prefix, `connstate.{stream}.mqtt`.
    pub prefix: String,
    /// Publishes and plain subscriptions; it must be connected with
    /// `no_echo`, so that this node's messages do not come back to it.
    pub plain: async_nats::Client,
    /// Queue subscriptions of shared groups (echo on).
    pub shared: async_nats::Client,
    /// The bucket of retained messages.
    pub retained: kv::Store,
    /// The bucket of connected clients' wills.
    pub wills: kv::Store,
    /// The bucket of persistent sessions.
    pub sessions: kv::Store,
    /// The prefix of the nodes' requests to each other,
    /// `connstate.{stream}.control`.
    pub control: String,
}

/// Messages waiting for the NATS connection before new ones are lost.
const OUTBOX: usize = 65_536;

/// How long a publisher waits for room in the queue towards NATS.
const ROOM_WAIT: Duration = Duration::from_secs(2);

/// Retained messages waiting for the bucket before new ones are lost.
const RETAINED_OUTBOX: usize = 16_384;

/// The longest subject routed: NATS servers refuse longer protocol lines
/// than 4 KiB by default (`max_control_line`).
const MAX_SUBJECT: usize = 3_900;

/// One kind of message this node wants from the others.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Interest {
    /// Local subscriptions (not shared) to the filter.
    Plain(Arc<str>),
    /// A group at a filter: a shared subscription's (key `\0$share/{g}`)
    /// or a shared application's (key `A:{org}:{app}`).
    Group { filter: Arc<str>, key: Arc<str> },
}

impl Interest {
    fn filter(&self) -> &str {
        match self {
            Interest::Plain(filter) | Interest::Group { filter, .. } => filter,
        }
    }
}

/// The messages of one topic that one node's clients published at one
/// moment, as one NATS message on the topic's subject: NATS's cost is per
/// message, and a busy topic's messages come in bunches.
#[derive(Clone, PartialEq, prost::Message)]
struct Bundle {
    /// The node whose clients published them.
    #[prost(string, tag = "1")]
    origin: String,
    /// In the order they were published (their own `origin` is empty).
    #[prost(message, repeated, tag = "2")]
    messages: Vec<Routed>,
}

/// A bundle grows to about this many bytes, then the topic's next messages
/// start another (NATS refuses messages over its payload limit, 1 MiB by
/// default).
const BUNDLE_BYTES: usize = 256 * 1024;

/// A message between nodes (the topic is the subject).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Routed {
    /// The node whose client published it.
    #[prost(string, tag = "1")]
    origin: String,
    /// The publisher's client id (for no-local).
    #[prost(string, tag = "2")]
    publisher: String,
    #[prost(uint32, tag = "3")]
    qos: u32,
    #[prost(bool, tag = "4")]
    retain: bool,
    #[prost(bytes = "bytes", tag = "5")]
    payload: Bytes,
    /// The v5 properties a subscriber sees, when the publisher sent any.
    #[prost(message, optional, tag = "6")]
    properties: Option<Properties>,
    /// When it was sent (a retained message: published), in milliseconds
    /// since the epoch: a stored message's expiry counts from it.
    #[prost(int64, tag = "7")]
    sent_ms: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Properties {
    #[prost(bool, tag = "1")]
    utf8_payload: bool,
    #[prost(string, optional, tag = "2")]
    content_type: Option<String>,
    #[prost(string, optional, tag = "3")]
    response_topic: Option<String>,
    #[prost(bytes = "bytes", optional, tag = "4")]
    correlation_data: Option<Bytes>,
    /// Seconds of the message expiry interval left when sent.
    #[prost(uint32, optional, tag = "5")]
    expiry_left: Option<u32>,
    #[prost(message, repeated, tag = "6")]
    user: Vec<UserProperty>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct UserProperty {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Routed {
    pub(super) fn of(message: &Message, origin: &str) -> Routed {
        Routed::at(message, origin, now_ms())
    }

    /// [`Routed::of`], sent at `sent_ms` (0: not said, for a message that
    /// is delivered, not stored).
    fn at(message: &Message, origin: &str, sent_ms: i64) -> Routed {
        Routed {
            origin: origin.to_owned(),
            publisher: message.publisher.as_deref().unwrap_or_default().to_owned(),
            qos: u32::from(u8::from(message.qos)),
            retain: message.retain,
            payload: message.payload.clone(),
            properties: message.properties.as_deref().map(|p| Properties {
                utf8_payload: p.is_utf8_payload,
                content_type: p.content_type.as_ref().map(|s| s.to_string()),
                response_topic: p.response_topic.as_ref().map(|s| s.to_string()),
                correlation_data: p.correlation_data.clone(),
                expiry_left: message.expiry_left(),
                user: p
                    .user_properties
                    .iter()
                    .map(|(key, value)| UserProperty {
                        key: key.to_string(),
                        value: value.to_string(),
                    })
                    .collect(),
            }),
            sent_ms,
        }
    }

    /// The message again, on `topic`; `None` once it has expired. With
    /// `stored`, the time since it was sent counts against its expiry.
    pub(super) fn into_message(self, topic: String, stored: bool) -> Option<Message> {
        self.into_message_at(ByteString::from(topic), stored, std::time::Instant::now())
    }

    /// [`Routed::into_message`], received at `received`.
    fn into_message_at(
        self,
        topic: ByteString,
        stored: bool,
        received: std::time::Instant,
    ) -> Option<Message> {
        let qos = QoS::try_from(u8::try_from(self.qos).ok()?).ok()?;
        let waited = if stored {
            u32::try_from((now_ms() - self.sent_ms).max(0) / 1000).unwrap_or(u32::MAX)
        } else {
            0
        };
        let properties = match self.properties {
            None => None,
            Some(p) => {
                let expiry = match p.expiry_left {
                    None => None,
                    Some(left) => Some(std::num::NonZeroU32::new(left.saturating_sub(waited))?),
                };
                Some(Box::new(PublishProperties {
                    topic_alias: None,
                    correlation_data: p.correlation_data,
                    message_expiry_interval: expiry,
                    content_type: p.content_type.map(ByteString::from),
                    user_properties: p
                        .user
                        .into_iter()
                        .map(|u| (ByteString::from(u.key), ByteString::from(u.value)))
                        .collect(),
                    is_utf8_payload: p.utf8_payload,
                    response_topic: p.response_topic.map(ByteString::from),
                    subscription_ids: Vec::new(),
                }))
            }
        };
        Some(Message {
            topic,
            payload: self.payload,
            qos,
            retain: self.retain,
            properties,
            publisher: (!self.publisher.is_empty()).then(|| Arc::from(self.publisher.as_str())),
            received,
        })
    }
}

/// A write to a key-value bucket (wills, sessions): a key and its value
/// (`None`: delete).
pub(super) type BucketWrite = (String, Option<Vec<u8>>);

/// Writes `write` to `bucket`.
pub(super) async fn write_to(bucket: &kv::Store, (key, body): BucketWrite) -> Result<(), String> {
    match body {
        Some(body) => bucket
            .put(&key, body.into())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        None => bucket.delete(&key).await.map_err(|e| e.to_string()),
    }
}

/// Writes what comes to `bucket` in order, saying in a warning what a
/// write that failed was.
async fn write_in_order(
    bucket: kv::Store,
    mut writes: mpsc::UnboundedReceiver<BucketWrite>,
    what: &'static str,
) {
    while let Some(write) = writes.recv().await {
        let key = write.0.clone();
        if let Err(e) = write_to(&bucket, write).await {
            tracing::warn!(error = %e, %key, "writing {what} to the cluster's bucket failed");
        }
    }
}

/// Whether the publisher of a message can wait for the queue towards NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// No (the broker's own messages, wills): a full queue loses it.
    Cannot,
    /// Yes: a full queue hands it back.
    Can,
    /// An earlier message of the same publisher waits: this one goes
    /// behind it.
    Behind,
}

/// What became of a message sent towards the other nodes.
#[derive(Default)]
pub(crate) struct Forwarded {
    /// Retained: cancelled once the cluster's bucket has it.
    pub stored: Option<CancellationToken>,
    /// Not queued yet: the publisher's connection queues it with
    /// [`Routes::send_later`] before it reads on.
    pub waiting: Option<Arc<Message>>,
}

/// An interest of this node while local subscriptions hold it.
struct Held {
    /// The local subscriptions holding it.
    count: usize,
    /// Ends its NATS subscription.
    done: CancellationToken,
    /// Cancelled once its NATS subscription is in place.
    ready: CancellationToken,
}

/// A broker's routes to the other nodes.
pub(crate) struct Routes {
    pub(super) node: Arc<str>,
    prefix: String,
    pub(super) plain: async_nats::Client,
    shared: async_nats::Client,
    outbox: mpsc::Sender<Arc<Message>>,
    retained_outbox: mpsc::Sender<(Arc<Message>, CancellationToken)>,
    /// This node's interests: how many local subscriptions hold each, and
    /// the token that ends its NATS subscription.
    interests: Mutex<HashMap<Interest, Held>>,
    pub(super) broker: Weak<Inner>,
    metrics: Arc<Metrics>,
    pub(super) stop: CancellationToken,
    /// The bucket of wills, and the queue of writes to it.
    pub(super) wills: kv::Store,
    pub(super) wills_outbox: mpsc::UnboundedSender<BucketWrite>,
    /// Nodes whose wills are about to be looked at.
    pub(super) sweeping: Mutex<std::collections::HashSet<String>>,
    /// The bucket of persistent sessions, and the queue of writes to it.
    pub(super) sessions: kv::Store,
    pub(super) session_outbox: mpsc::UnboundedSender<BucketWrite>,
    /// The prefix of the nodes' requests to each other.
    pub(super) control: String,
}

impl Routes {
    pub(super) fn lost(&self, reason: &'static str) {
        self.metrics
            .cluster_routed_lost
            .get_or_create(&RouteLossLabel { reason })
            .inc();
    }

    /// Sends a message a local client published to the other nodes (and,
    /// when retained, to the bucket: then with a token cancelled once the
    /// bucket has it, or could not take it). With `wait`, a message the
    /// queue towards NATS cannot take now (or that must follow one that
    /// waits) is handed back for [`Routes::send_later`], not lost.
    pub(crate) fn forward(&self, message: &Arc<Message>, wait: Wait) -> Forwarded {
        let mut forwarded = Forwarded::default();
        if wait == Wait::Behind {
            forwarded.waiting = Some(message.clone());
        } else if let Err(e) = self.outbox.try_send(message.clone()) {
            // Without NATS the queue only drains once it is back: the
            // node's clients go on meanwhile, their messages for the other
            // nodes lost.
            let nats_up = self.plain.connection_state() == async_nats::connection::State::Connected;
            match (e, wait) {
                (mpsc::error::TrySendError::Full(m), Wait::Can) if nats_up => {
                    forwarded.waiting = Some(m);
                }
                _ => self.lost("outbox_full"),
            }
        }
        if message.retain {
            let stored = CancellationToken::new();
            if self
                .retained_outbox
                .try_send((message.clone(), stored.clone()))
                .is_ok()
            {
                forwarded.stored = Some(stored);
            } else {
                self.lost("outbox_full");
            }
        }
        forwarded
    }

    /// Queues `messages` towards NATS, in order, as room comes (the
    /// publisher's connection waits meanwhile, at most [`ROOM_WAIT`] in all:
    /// then NATS is gone or stuck, and what is left is lost; also when the
    /// broker stops).
    pub(crate) async fn send_later(&self, messages: Vec<Arc<Message>>) {
        let deadline = tokio::time::Instant::now() + ROOM_WAIT;
        let mut left = messages.into_iter();
        for message in left.by_ref() {
            let queued = tokio::select! {
                queued = tokio::time::timeout_at(deadline, self.outbox.send(message)) => {
                    matches!(queued, Ok(Ok(())))
                }
                () = self.stop.cancelled() => false,
            };
            if !queued {
                self.lost("outbox_full");
                break;
            }
        }
        let dropped = left.count() as u64;
        if dropped > 0 {
            self.metrics
                .cluster_routed_lost
                .get_or_create(&RouteLossLabel {
                    reason: "outbox_full",
                })
                .inc_by(dropped);
        }
    }

    /// One more (`added`) or one less local subscription holds `interest`:
    /// the first subscribes on NATS, the last one out unsubscribes. An
    /// added interest comes with a token cancelled once its NATS
    /// subscription is in place (the SUBACK waits for it).
    pub(crate) fn change(
        self: &Arc<Self>,
        interest: Interest,
        added: bool,
    ) -> Option<CancellationToken> {
        let mut interests = crate::lock::lock(&self.interests);
        if added {
            let held = interests.entry(interest.clone()).or_insert_with(|| {
                let done = self.stop.child_token();
                let ready = CancellationToken::new();
                tokio::spawn(self.clone().follow(interest, done.clone(), ready.clone()));
                Held {
                    count: 0,
                    done,
                    ready,
                }
            });
            held.count += 1;
            return Some(held.ready.clone());
        }
        if let Some(held) = interests.get_mut(&interest) {
            held.count -= 1;
            if held.count == 0 {
                held.done.cancel();
                interests.remove(&interest);
            }
        }
        None
    }

    /// Subscribes for `interest`, cancels `ready` once the NATS server has
    /// the subscription, and delivers what comes until `done`.
    async fn follow(
        self: Arc<Self>,
        interest: Interest,
        done: CancellationToken,
        ready: CancellationToken,
    ) {
        let _ready = ready.clone().drop_guard();
        let (client, queue) = match &interest {
            Interest::Plain(_) => (&self.plain, None),
            Interest::Group { key, .. } => (&self.shared, Some(subject::name_token(key))),
        };
        let mut subscribers = Vec::with_capacity(2);
        for subject in subject::filter_subjects(&self.prefix, interest.filter()) {
            let subscribed = match &queue {
                None => client.subscribe(subject).await,
                Some(queue) => client.queue_subscribe(subject, queue.clone()).await,
            };
            match subscribed {
                Ok(subscriber) => subscribers.push(subscriber),
                Err(e) => {
                    // Only a closed client refuses: the node is stopping.
                    tracing::warn!(error = %e, filter = interest.filter(), "subscribing for other nodes' messages failed");
                    return;
                }
            }
        }
        if let Err(e) = client.flush().await {
            tracing::debug!(error = %e, "flushing new subscriptions");
        }
        ready.cancel();
        // One subject, or two for `a/#` (`a.>` and `a`).
        let mut subscribers = subscribers.into_iter();
        let Some(first) = subscribers.next() else {
            return;
        };
        let mut received: std::pin::Pin<Box<dyn Stream<Item = async_nats::Message> + Send>> =
            match subscribers.next() {
                Some(second) => Box::pin(first.merge(second)),
                None => Box::pin(first),
            };
        loop {
            let message = tokio::select! {
                message = received.next() => message,
                () = done.cancelled() => return,
            };
            let Some(message) = message else { return };
            self.receive(&interest, message);
        }
    }

    /// Delivers `message`, received for `interest`, to the local
    /// subscriptions that hold it.
    fn receive(&self, interest: &Interest, message: async_nats::Message) {
        let Some(broker) = self.broker.upgrade().map(|inner| Broker { inner }) else {
            return;
        };
        let topic = message
            .subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|s| s.strip_prefix('.'))
            .and_then(subject::topic_of);
        let (Some(topic), Ok(bundle)) = (topic, Bundle::decode(message.payload)) else {
            self.lost("undecodable");
            return;
        };
        // NATS's wildcards match `$` topics; MQTT's do not at the first level.
        if !topic::matches(interest.filter(), &topic)
            || (matches!(interest, Interest::Plain(_)) && *bundle.origin == *self.node)
        {
            return;
        }
        self.metrics
            .cluster_routed_received
            .inc_by(bundle.messages.len() as u64);
        let topic = ByteString::from(topic);
        let received = std::time::Instant::now();
        for routed in bundle.messages {
            if let Some(message) = routed.into_message_at(topic.clone(), false, received) {
                broker.deliver_routed(interest, Arc::new(message));
            }
        }
    }

    /// Publishes what local clients published: the messages waiting at one
    /// moment, one bundle per topic, each topic's in order.
    async fn send(self: Arc<Self>, mut outbox: mpsc::Receiver<Arc<Message>>) {
        let mut batch = Vec::with_capacity(1024);
        // (subject, its messages, their size), in the order of their first
        // message; and the bundle of each subject still growing.
        let mut bundles: Vec<(String, Vec<Routed>, usize)> = Vec::new();
        let mut growing: HashMap<String, usize> = HashMap::new();
        while outbox.recv_many(&mut batch, 1024).await > 0 {
            // Once more round the other tasks: the connections publishing
            // now add to this moment's bundles.
            tokio::task::yield_now().await;
            while batch.len() < 1024 {
                match outbox.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(_) => break,
                }
            }
            for message in batch.drain(..) {
                let subject = format!("{}.{}", self.prefix, subject::topic_tokens(&message.topic));
                if subject.len() > MAX_SUBJECT {
                    self.lost("too_large");
                    continue;
                }
                let size = message.payload.len() + 64;
                let routed = Routed::at(&message, "", 0);
                match growing.get(&subject) {
                    Some(&at) if bundles[at].2 + size <= BUNDLE_BYTES => {
                        bundles[at].1.push(routed);
                        bundles[at].2 += size;
                    }
                    _ => {
                        growing.insert(subject.clone(), bundles.len());
                        bundles.push((subject, vec![routed], size));
                    }
                }
            }
            growing.clear();
            for (subject, messages, _) in bundles.drain(..) {
                let count = messages.len() as u64;
                let body = Bundle {
                    origin: self.node.to_string(),
                    messages,
                }
                .encode_to_vec();
                match self.plain.publish(subject, body.into()).await {
                    Ok(()) => {
                        self.metrics.cluster_routed_sent.inc_by(count);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "publishing to the other nodes failed");
                        self.metrics
                            .cluster_routed_lost
                            .get_or_create(&RouteLossLabel {
                                reason: "publish_failed",
                            })
                            .inc_by(count);
                    }
                }
            }
        }
    }

    /// Writes retained messages (and their clearing) to the bucket, in
    /// order.
    async fn store_retained(
        self: Arc<Self>,
        bucket: kv::Store,
        mut outbox: mpsc::Receiver<(Arc<Message>, CancellationToken)>,
    ) {
        while let Some((message, stored)) = outbox.recv().await {
            let _stored = stored.drop_guard();
            let key = subject::topic_tokens(&message.topic);
            if key.len() > MAX_SUBJECT {
                self.lost("too_large");
                continue;
            }
            let written = if message.payload.is_empty() {
                bucket.delete(&key).await.map_err(|e| e.to_string())
            } else {
                let body = Routed::of(&message, &self.node).encode_to_vec();
                bucket
                    .put(&key, body.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            if let Err(e) = written {
                tracing::warn!(error = %e, topic = %message.topic, "storing a retained message for the cluster failed");
                self.lost("retained_write_failed");
            }
        }
    }

    /// Follows the bucket of retained messages into the local map: at
    /// start every message stored, then every change.
    async fn follow_retained(self: Arc<Self>, bucket: kv::Store) {
        let mut from: Option<u64> = None;
        loop {
            let watch = match from {
                None => bucket.watch_with_history(">").await,
                Some(revision) => bucket.watch_all_from_revision(revision + 1).await,
            };
            let mut watch = match watch {
                Ok(watch) => watch,
                Err(e) => {
                    tracing::warn!(error = %e, "watching the cluster's retained messages");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = self.stop.cancelled() => return,
                    }
                }
            };
            loop {
                let entry = tokio::select! {
                    entry = watch.next() => entry,
                    () = self.stop.cancelled() => return,
                };
                match entry {
                    Some(Ok(entry)) => {
                        from = Some(entry.revision);
                        self.retained_changed(entry);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "watching the cluster's retained messages");
                    }
                    None => break,
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = self.stop.cancelled() => return,
            }
        }
    }

    fn retained_changed(&self, entry: kv::Entry) {
        let Some(broker) = self.broker.upgrade().map(|inner| Broker { inner }) else {
            return;
        };
        let Some(topic) = subject::topic_of(&entry.key) else {
            self.lost("undecodable");
            return;
        };
        let message = match entry.operation {
            kv::Operation::Put => match Routed::decode(entry.value) {
                Ok(routed) => routed.into_message(topic.clone(), true),
                Err(_) => {
                    self.lost("undecodable");
                    None
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        broker.set_retained(&topic, message.map(Arc::new));
    }
}

impl Broker {
    /// Routes this broker's messages to and from the other nodes of its
    /// cluster through `links`, from now on. Call before the listeners
    /// start; a second call changes nothing.
    pub fn route_between_nodes(&self, links: RouteLinks) {
        let (outbox, outgoing) = mpsc::channel(OUTBOX);
        let (retained_outbox, retained) = mpsc::channel(RETAINED_OUTBOX);
        let (wills_outbox, will_writes) = mpsc::unbounded_channel();
        let (session_outbox, session_writes) = mpsc::unbounded_channel();
        let routes = Arc::new(Routes {
            node: Arc::from(links.node.as_str()),
            prefix: links.prefix,
            plain: links.plain,
            shared: links.shared,
            outbox,
            retained_outbox,
            interests: Mutex::default(),
            broker: Arc::downgrade(&self.inner),
            metrics: self.inner.metrics.clone(),
            stop: self.inner.stop.clone(),
            wills: links.wills,
            wills_outbox,
            sweeping: Mutex::default(),
            sessions: links.sessions,
            session_outbox,
            control: links.control,
        });
        if self.inner.routes.set(routes.clone()).is_err() {
            return;
        }
        tokio::spawn(routes.clone().send(outgoing));
        tokio::spawn(write_in_order(routes.wills.clone(), will_writes, "a will"));
        tokio::spawn(write_in_order(
            routes.sessions.clone(),
            session_writes,
            "a session's record",
        ));
        tokio::spawn(routes.clone().answer_handovers());
        tokio::spawn(
            routes
                .clone()
                .store_retained(links.retained.clone(), retained),
        );
        tokio::spawn(routes.follow_retained(links.retained));
    }

    pub(crate) fn routes(&self) -> Option<&Arc<Routes>> {
        self.inner.routes.get()
    }

    /// A local subscription now holds (or no longer holds) `interest`; an
    /// added one on a cluster node comes with the token of its NATS
    /// subscription being in place.
    pub(crate) fn interest(&self, interest: Interest, added: bool) -> Option<CancellationToken> {
        self.routes()
            .and_then(|routes| routes.change(interest, added))
    }
}

/// The slot of a broker's routes: empty outside a cluster.
pub(crate) type RoutesSlot = OnceLock<Arc<Routes>>;
