//! The embedded MQTT 3.1, 3.1.1 and 5.0 broker.
//!
//! Packets are encoded and decoded by `rmqtt-codec`; everything else is
//! here: sessions, routing, retained messages, wills, keepalive, takeover,
//! platform identities and monitor topics. The broker observes every
//! connection first-hand and reports each lifecycle event to the tracker
//! through one ordered queue; it never writes the store itself.
//!
//! - [`topic`]: topic names, filters and the subscription tree.
//! - `identity`: who a client is (open mode, device, gateway, application)
//!   and which topics it may use.
//! - `acl`: the access rules file (`--acl-file`), on top of `identity`.
//! - `session`: sessions that outlive connections, queued messages, expiry.
//! - `expiry`: the one queue of session expiries and delayed wills.
//! - `connection`: one task per network connection: the connected loop
//!   and the goodbye.
//! - `handshake`: CONNECT to CONNACK, in steps.
//! - `link`: one connection's socket, buffers, codec and traffic counts.
//! - `packet`: the codec, incoming packets of both versions normalised,
//!   and the encoders of what the broker sends.
//! - `qos`: the QoS 1/2 state of a connection, without a socket.
//! - `monitor`: the Connect / Disconnect / FailedConnect monitor messages.
//! - `sys`: the `$SYS/broker/...` statistics, as Mosquitto's.
//! - `listener`: TCP, TLS and WebSocket listeners.

pub mod acl;
mod connection;
mod expiry;
mod handover;
mod handshake;
mod identity;
mod link;
mod listener;
mod monitor;
mod packet;
mod qos;
mod routes;
mod session;
mod subject;
mod sys;
pub mod topic;
mod wills;

use std::{
    collections::{BTreeMap, HashMap},
    num::NonZeroU32,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use bytestring::ByteString;
use rmqtt_codec::{types::QoS, v5::PublishProperties};
use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use listener::{ListenerLimits, MqttListeners, spawn_listeners, tls_config};
use routes::Interest;
pub use routes::RouteLinks;

use crate::{
    domain::{ClientId, ClientKind, DisconnectCause, LifecycleEvent},
    registry::{Registry, Revoked},
    store::{Store, StoreError},
    tracker::Tracker,
};
use session::Session;
use topic::SubscriptionTree;

/// Broker settings (see [`crate::Config`] for their defaults).
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Organisation of platform client ids.
    pub org_id: String,
    /// Platform identities and topic rules; off is open mode.
    pub auth: bool,
    /// Largest packet accepted from a client, in bytes.
    pub max_packet_size: u32,
    /// QoS 1 and 2 messages kept per client beyond those in flight (and
    /// for offline persistent sessions), as Mosquitto's
    /// `max_queued_messages`.
    pub max_queued_messages: usize,
    /// QoS 1 and 2 messages in flight per client.
    pub max_inflight_messages: u16,
    /// Longest keepalive a client may ask for, in seconds (0 = any).
    pub max_keepalive: u16,
    /// Receive Maximum announced to v5 clients: QoS 2 messages a client
    /// may leave unreleased; one more is a disconnect with 0x93.
    pub receive_maximum: u16,
    /// Messages waiting for a connection's writer before QoS 0 messages are
    /// dropped for it.
    pub outbound_buffer: usize,
    /// Topic aliases a v5 client may use towards the broker, and at most
    /// as many the broker uses towards a client that accepts them.
    pub topic_alias_max: u16,
    /// How often a busy connection reports activity to the tracker (which
    /// coalesces further).
    pub activity_report_interval: Duration,
    /// Time a new connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// The broker name its events carry: `embedded`, or `embedded@NODE`
    /// on a cluster node ([`crate::domain::node_broker`]).
    pub name: String,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            org_id: "local".into(),
            auth: false,
            max_packet_size: 1 << 20,
            max_queued_messages: 1000,
            max_inflight_messages: 20,
            max_keepalive: 0,
            receive_maximum: 100,
            outbound_buffer: 10_000,
            topic_alias_max: 10,
            activity_report_interval: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(10),
            name: crate::domain::EMBEDDED_BROKER.to_owned(),
        }
    }
}

/// An application message as the broker routes it. Topics are internal:
/// a device's `iot-2/evt/...` is routed as `iot-2/type/{t}/id/{d}/evt/...`.
#[derive(Debug)]
pub(crate) struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// v5 properties as published (without topic alias and subscription
    /// ids), passed on to v5 subscribers. Boxed: most messages have none,
    /// and retained and queued messages live long.
    pub properties: Option<Box<PublishProperties>>,
    /// Client id of the publisher, for no-local; `None` for the broker's
    /// own messages.
    pub publisher: Option<Arc<str>>,
    /// When the broker received it, for the v5 message expiry interval.
    pub received: std::time::Instant,
}

impl Message {
    /// The v5 message expiry interval left, in seconds: `None` when the
    /// message does not expire, `Some(0)` once it has expired (then it is
    /// no longer delivered, MQTT-3.3.2-5).
    pub fn expiry_left(&self) -> Option<u32> {
        let interval = self.properties.as_ref()?.message_expiry_interval?.get();
        let waited = u32::try_from(self.received.elapsed().as_secs()).unwrap_or(u32::MAX);
        Some(interval.saturating_sub(waited))
    }

    pub fn is_expired(&self) -> bool {
        self.expiry_left() == Some(0)
    }
}

/// One message on its way to one subscription.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: SubscriptionIds,
}

/// The Subscription Identifiers a v5 delivery carries: those of every
/// subscription of the client that matched (MQTT 5 §3.3.4). Rarely more
/// than one, so one is held inline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum SubscriptionIds {
    #[default]
    None,
    One(NonZeroU32),
    Many(Box<[NonZeroU32]>),
}

impl SubscriptionIds {
    /// Adds the identifier of one more matching subscription (if it has
    /// one and it is not there yet).
    pub fn add(&mut self, id: Option<NonZeroU32>) {
        let Some(id) = id else { return };
        *self = match std::mem::take(self) {
            SubscriptionIds::None => SubscriptionIds::One(id),
            SubscriptionIds::One(first) if first == id => SubscriptionIds::One(first),
            SubscriptionIds::One(first) => SubscriptionIds::Many(Box::new([first, id])),
            SubscriptionIds::Many(ids) if ids.contains(&id) => SubscriptionIds::Many(ids),
            SubscriptionIds::Many(ids) => {
                let mut ids = ids.into_vec();
                ids.push(id);
                SubscriptionIds::Many(ids.into_boxed_slice())
            }
        };
    }

    pub fn to_vec(&self) -> Vec<NonZeroU32> {
        match self {
            SubscriptionIds::None => Vec::new(),
            SubscriptionIds::One(id) => vec![*id],
            SubscriptionIds::Many(ids) => ids.to_vec(),
        }
    }
}

impl Delivery {
    /// `message` as `session`'s subscription with `options` gets it;
    /// `None` when it is the publisher's own and the subscription said
    /// no-local.
    fn of(message: &Arc<Message>, session: &Session, options: SubOptions) -> Option<Delivery> {
        if options.no_local
            && message
                .publisher
                .as_deref()
                .is_some_and(|p| p == &*session.client_id)
        {
            return None;
        }
        Some(Delivery {
            qos: message.qos.less_value(options.qos),
            retain: options.retain_as_published && message.retain,
            subscription_ids: options.id.into(),
            message: message.clone(),
        })
    }
}

impl From<Option<NonZeroU32>> for SubscriptionIds {
    fn from(id: Option<NonZeroU32>) -> Self {
        id.map_or(SubscriptionIds::None, SubscriptionIds::One)
    }
}

/// What a subscription asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SubOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub id: Option<NonZeroU32>,
    /// Made by a v5 client: a message matching several of the client's
    /// own (not shared) subscriptions goes to it once, with every
    /// identifier, at the highest QoS granted. A v3 client gets one copy
    /// per subscription, as before (and as Mosquitto does).
    pub one_copy: bool,
}

/// Work for a connection's task from elsewhere in the broker.
#[derive(Debug)]
pub(crate) enum Outbound {
    Deliver(Delivery),
    /// End the connection for this cause (takeover, kick, revocation).
    Close(DisconnectCause),
}

/// Who gets the messages of one filter: a session, or one member of a
/// group: the instances of a shared application
/// (`A:{org}:{appId}[:{instance}]`), or the sessions of a shared
/// subscription (`$share/{group}/{filter}`).
pub(crate) enum Subscriber {
    One {
        session: Arc<Session>,
        options: SubOptions,
    },
    Shared {
        members: Vec<(Arc<Session>, SubOptions)>,
        next: AtomicUsize,
    },
}

impl Subscriber {
    /// The session a message goes to: round robin over a group's
    /// connected members whose in-flight window has room, else over its
    /// connected members, else any member (an offline persistent session
    /// keeps it for later).
    fn pick(&self) -> Option<(Arc<Session>, SubOptions)> {
        match self {
            Subscriber::One { session, options } => Some((session.clone(), *options)),
            Subscriber::Shared { members, next } => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                let n = members.len();
                let round = || (0..n).map(|i| &members[(start + i) % n]);
                round()
                    .find(|(s, _)| s.is_online() && !s.is_busy())
                    .or_else(|| round().find(|(s, _)| s.is_online()))
                    .or_else(|| members.get(start % n.max(1)))
                    .map(|(s, o)| (s.clone(), *o))
            }
        }
    }
}

/// The subscription key of a shared application's instances.
fn shared_group(client_id: &str) -> Option<Arc<str>> {
    match crate::domain::ClientKind::parse(client_id) {
        crate::domain::ClientKind::Application {
            org,
            app_id,
            shared: true,
        } => Some(Arc::from(format!("A:{org}:{app_id}"))),
        _ => None,
    }
}

/// The subscription key of a shared subscription's group: it starts with
/// NUL, which no client id has, so it never meets a session's own key.
fn share_key(group: &str) -> Arc<str> {
    Arc::from(format!("\0$share/{group}"))
}

/// A cheap, cloneable handle to the broker.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    options: BrokerOptions,
    store: Store,
    registry: Registry,
    metrics: Arc<crate::metrics::Metrics>,
    events: mpsc::UnboundedSender<Reported>,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    subscriptions: RwLock<SubscriptionTree<Arc<str>, Subscriber>>,
    /// Retained messages by topic; sorted, so that the messages under a
    /// filter's literal prefix are one range.
    retained: RwLock<BTreeMap<ByteString, Arc<Message>>>,
    /// Cancelled when the server shuts down: connections say goodbye.
    stop: CancellationToken,
    /// Set once `stop` is cancelled, before every connected client is told
    /// through its mailbox: a connected loop reads it instead of waiting
    /// on the token, whose future would be ~80 bytes of every connection.
    stopping: std::sync::atomic::AtomicBool,
    /// Woken whenever a connection hands its session back
    /// ([`session::Mailbox::finish`]): one for the broker rather than one
    /// in every mailbox (32 bytes of every connection), since only a
    /// takeover ever waits for it.
    finishes: tokio::sync::Notify,
    connections: TaskTracker,
    /// The broker name of every event, shared rather than allocated per
    /// event.
    name: Arc<str>,
    /// The access rules file's rules, if one is given; replaced whole on
    /// a reload, so a check sees the old rules or the new ones.
    acl: RwLock<Option<Arc<acl::AclRules>>>,
    /// Session expiries and delayed wills, one timer wheel for the broker.
    expiries: expiry::ExpiryQueue<Due>,
    /// Listeners that stopped accepting, each said in a sentence; empty
    /// while every configured listener accepts.
    listeners_down: tokio::sync::watch::Sender<Vec<String>>,
    /// Routes to the other nodes of a cluster, once set.
    routes: routes::RoutesSlot,
}

/// What an expiry timer ends.
pub(crate) enum Due {
    /// The detached session is discarded, unless a connection came back.
    Session(Arc<Session>),
    /// The will of the session's last connection is published, unless a
    /// connection came back; without a session, a will this node claimed
    /// from a lost node.
    Will(Option<Arc<Session>>, Box<PendingWill>),
}

/// A will waiting for its delay, with what tells whether its client came
/// back meanwhile.
pub(crate) struct PendingWill {
    pub message: Message,
    pub record_id: ClientId,
    pub connection_id: u64,
    /// The broker the connection was on.
    pub broker: Arc<str>,
}

/// The task that hands lifecycle events to the tracker in order, and the
/// token that tells it to finish once the connections are gone.
pub struct EventPump {
    handle: tokio::task::JoinHandle<()>,
    drain: CancellationToken,
}

impl EventPump {
    /// Records what is queued, then ends.
    pub async fn finish(self) {
        self.drain.cancel();
        let _ = self.handle.await;
    }
}

impl Broker {
    /// A broker reporting to `tracker`; `stop` starts its shutdown.
    pub fn new(
        options: BrokerOptions,
        store: Store,
        tracker: Tracker,
        registry: Registry,
        metrics: Arc<crate::metrics::Metrics>,
        stop: CancellationToken,
    ) -> (Broker, EventPump) {
        let (events, rx) = mpsc::unbounded_channel();
        let store_feed = store.subscribe();
        let drain = CancellationToken::new();
        let handle = tokio::spawn(pump_events(tracker, rx, drain.clone()));
        let (expiries, due) = expiry::ExpiryQueue::new();
        let name: Arc<str> = Arc::from(options.name.as_str());
        let broker = Broker {
            inner: Arc::new(Inner {
                options,
                store,
                registry,
                metrics,
                events,
                sessions: Mutex::default(),
                subscriptions: RwLock::new(SubscriptionTree::new()),
                retained: RwLock::default(),
                stop,
                stopping: std::sync::atomic::AtomicBool::new(false),
                finishes: tokio::sync::Notify::new(),
                connections: TaskTracker::new(),
                name,
                acl: RwLock::new(None),
                expiries,
                listeners_down: tokio::sync::watch::Sender::new(Vec::new()),
                routes: routes::RoutesSlot::new(),
            }),
        };
        // The timers hold the broker weakly: they end with it.
        let weak = Arc::downgrade(&broker.inner);
        let stop = broker.inner.stop.clone();
        tokio::spawn(due.run(stop, move |fired| {
            if let Some(inner) = weak.upgrade() {
                Broker { inner }.expired(fired);
            }
        }));
        // Shutdown reaches connected clients through their mailboxes. A
        // connection that attaches meanwhile finds the flag set: its attach
        // takes the session's lock after `end_all` did, or its session was
        // added after `end_all` looked.
        let weak = Arc::downgrade(&broker.inner);
        let stop = broker.inner.stop.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            if let Some(inner) = weak.upgrade() {
                inner
                    .stopping
                    .store(true, std::sync::atomic::Ordering::Release);
                Broker { inner }.end_all(DisconnectCause::ServerShuttingDown);
            }
        });
        // Monitor messages of other brokers' clients, from the live feed;
        // this task too holds the broker weakly.
        let weak = Arc::downgrade(&broker.inner);
        let mut feed = store_feed;
        let stop = broker.inner.stop.clone();
        tokio::spawn(async move {
            loop {
                let commit = tokio::select! {
                    commit = feed.recv() => commit,
                    () = stop.cancelled() => return,
                };
                let commit = match commit {
                    Ok(commit) => commit,
                    // Monitor messages are QoS 0: a lagging follower skips.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let Some(inner) = weak.upgrade() else { return };
                let broker = Broker { inner };
                for change in commit.iter() {
                    broker.publish_recorded(change);
                    broker.end_moved_away(change);
                }
            }
        });
        // Deleted devices and API keys (on any cluster node): their
        // connections end. This task too holds the broker weakly.
        if let Some(mut revocations) = broker.inner.registry.take_revocations() {
            let weak = Arc::downgrade(&broker.inner);
            let stop = broker.inner.stop.clone();
            tokio::spawn(async move {
                loop {
                    let revoked = tokio::select! {
                        revoked = revocations.recv() => revoked,
                        () = stop.cancelled() => return,
                    };
                    let (Some(revoked), Some(inner)) = (revoked, weak.upgrade()) else {
                        return;
                    };
                    Broker { inner }.revoke_registered(&revoked);
                }
            });
        }
        (broker, EventPump { handle, drain })
    }

    pub fn options(&self) -> &BrokerOptions {
        &self.inner.options
    }

    /// What keeps the broker from serving, each said in a sentence: a
    /// configured listener that stopped accepting, or shutdown. Empty
    /// while it serves; health and `/ready` report it.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.inner.listeners_down.borrow().clone();
        if self.inner.stop.is_cancelled() {
            problems.push("the MQTT broker is shutting down".to_owned());
        }
        problems
    }

    /// Changes of the listeners that stopped accepting (see
    /// [`Broker::problems`]).
    pub fn watch_listeners(&self) -> tokio::sync::watch::Receiver<Vec<String>> {
        self.inner.listeners_down.subscribe()
    }

    /// Records that a listener stopped accepting, and why.
    fn listener_down(&self, problem: String) {
        self.inner
            .listeners_down
            .send_modify(|down| down.push(problem));
    }

    /// Puts `rules` in force for every check from now on, also on the
    /// connections already open; `None` leaves only the platform's rules.
    pub fn set_access_rules(&self, rules: Option<acl::AclRules>) {
        *crate::lock::write(&self.inner.acl) = rules.map(Arc::new);
    }

    /// Whether the access rules file (if any) lets `client_id` with
    /// `username` (empty: none) have `access` to the topic `topic` gives,
    /// as the client names it. `topic` is only called when a file is in
    /// force: without one, a delivery pays nothing for it.
    pub(crate) fn acl_allows<T: AsRef<str>>(
        &self,
        client_id: &str,
        username: &str,
        topic: impl FnOnce() -> T,
        access: acl::Access,
    ) -> bool {
        let rules = crate::lock::read(&self.inner.acl).clone();
        rules.is_none_or(|rules| {
            let username = (!username.is_empty()).then_some(username);
            rules.allows(client_id, username, topic().as_ref(), access)
        })
    }

    /// Waits until every connection has said goodbye and reported its
    /// disconnect, at most `grace`. Call after the stop token fired.
    pub async fn wait_closed(&self, grace: Duration) -> bool {
        self.inner.connections.close();
        tokio::time::timeout(grace, self.inner.connections.wait())
            .await
            .is_ok()
    }

    /// Ends the connection of `client_id`, if any, for `cause` (an
    /// administrator's kick or revoked credentials). Returns whether a
    /// connection was found.
    pub fn disconnect(&self, client_id: &str, cause: DisconnectCause) -> bool {
        let session = self.session(client_id);
        session.is_some_and(|s| s.close(cause))
    }

    /// On a cluster node: when `change` records a connect of a client on
    /// another node while it is connected here, the connection here ends
    /// as taken over (v5 DISCONNECT 0x8E); its disconnect is recorded as
    /// the takeover. The client's record as it stands now decides, not the
    /// change alone: a connect here ordered after the other node's stays.
    fn end_moved_away(&self, change: &crate::domain::Change) {
        let Some(state) = &change.state else { return };
        if change.kind != crate::domain::ChangeKind::Connected
            || *state.broker == *self.inner.name
            || !crate::domain::is_embedded_broker(&state.broker)
        {
            return;
        }
        let Some(session) = self.session(state.client_id.as_str()) else {
            return;
        };
        if let Ok(Some(current)) = self.inner.store.get_state(&state.client_id)
            && *current.broker == *self.inner.name
        {
            return;
        }
        let node = state
            .broker
            .split_once('@')
            .map_or(state.broker.as_str(), |(_, node)| node);
        let by = format!("{} on node {node}", state.connection.endpoint());
        if session.close(DisconnectCause::SessionTakenOver { by }) {
            tracing::info!(client = %state.client_id, %node, "connection taken over on another cluster node");
        }
    }

    /// Ends every connection of this broker (its cluster node was declared
    /// lost: the cluster recorded them as lost already). Returns how many.
    pub fn end_all(&self, cause: DisconnectCause) -> usize {
        let sessions: Vec<Arc<Session>> = crate::lock::lock(&self.inner.sessions)
            .values()
            .cloned()
            .collect();
        sessions
            .into_iter()
            .filter(|s| s.close(cause.clone()))
            .count()
    }

    /// Ends every connection whose credentials match `revoked` (a device
    /// deleted, an API key deleted).
    pub fn revoke(&self, revoked: impl Fn(&ClientId, &str) -> bool) -> usize {
        let sessions: Vec<Arc<Session>> = crate::lock::lock(&self.inner.sessions)
            .values()
            .cloned()
            .collect();
        sessions
            .into_iter()
            .filter(|s| s.online_matches(&revoked))
            .filter(|s| s.close(DisconnectCause::CredentialsRevoked))
            .count()
    }

    /// Ends the connections made with credentials the registry revoked:
    /// a device's (itself, or as a gateway), or applications' with an API
    /// key. Returns how many.
    pub fn revoke_registered(&self, revoked: &Revoked) -> usize {
        let ended = match revoked {
            Revoked::Device { type_id, device_id } => self.revoke(|client, _| {
                matches!(
                    client.kind(),
                    ClientKind::Device { type_id: t, device_id: d, .. }
                    | ClientKind::Gateway { type_id: t, device_id: d, .. }
                    if t == type_id && d == device_id
                )
            }),
            Revoked::Key(key) => self.revoke(|client, user| {
                matches!(client.kind(), ClientKind::Application { .. }) && user == key
            }),
        };
        if ended > 0 {
            tracing::info!(
                ?revoked,
                connections = ended,
                "credentials revoked; connections ended"
            );
        }
        ended
    }

    fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        crate::lock::lock(&self.inner.sessions)
            .get(client_id)
            .cloned()
    }

    pub(crate) fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// Hands an event of `client_id`'s connection `connection_id` (0 for
    /// a refused connect) to the tracker.
    fn report(
        &self,
        client_id: &ClientId,
        time: crate::domain::Timestamp,
        connection_id: u64,
        kind: crate::domain::EventKind,
    ) {
        self.report_from(client_id, time, connection_id, None, kind);
    }

    /// [`Broker::report`] with the connection's remote address.
    fn report_from(
        &self,
        client_id: &ClientId,
        time: crate::domain::Timestamp,
        connection_id: u64,
        peer: Option<std::net::SocketAddr>,
        kind: crate::domain::EventKind,
    ) {
        // The pump outlives every connection; a send after it stopped has
        // nowhere to go anyway.
        let _ = self.inner.events.send(Reported {
            event: self.event(client_id, time, connection_id, peer, kind),
            durable: None,
        });
    }

    /// [`Broker::report_from`], returning once the event is durable: `false`
    /// when it could not be recorded (the store refuses writes, or the
    /// broker is stopping). A connect is acknowledged only after this, so
    /// that no client holds a CONNACK the store could lose in a crash.
    async fn record(
        &self,
        client_id: &ClientId,
        time: crate::domain::Timestamp,
        connection_id: u64,
        peer: Option<std::net::SocketAddr>,
        kind: crate::domain::EventKind,
    ) -> bool {
        let (durable, done) = oneshot::channel();
        let reported = Reported {
            event: self.event(client_id, time, connection_id, peer, kind),
            durable: Some(durable),
        };
        if self.inner.events.send(reported).is_err() {
            return false;
        }
        done.await.unwrap_or(false)
    }

    fn event(
        &self,
        client_id: &ClientId,
        time: crate::domain::Timestamp,
        connection_id: u64,
        peer: Option<std::net::SocketAddr>,
        kind: crate::domain::EventKind,
    ) -> LifecycleEvent {
        LifecycleEvent {
            client_id: client_id.clone(),
            time,
            connection_id,
            broker: self.inner.name.clone(),
            kind,
            peer,
        }
    }

    fn next_connection_id(&self) -> Result<u64, StoreError> {
        self.inner.store.next_connection_id()
    }

    /// Routes `message` to every matching subscription and keeps it when
    /// retained. Returns the number of local subscriptions it went to.
    ///
    /// On a cluster node a client's message also goes to the other nodes;
    /// shared groups then get it through the cluster (which picks one
    /// member across the nodes), not here. The broker's own messages
    /// (monitor topics, `$SYS`) stay on their node: every node publishes
    /// its own.
    pub(crate) fn publish(&self, message: Message) -> usize {
        self.publish_from(message, routes::Wait::Cannot).0
    }

    /// [`Broker::publish`] of a client's message, saying whether its
    /// connection can wait for the queue towards the other nodes of a
    /// cluster; also returns what became of it there (the connection's
    /// PUBACK of a retained message waits for the cluster's bucket, and its
    /// reading for a message the queue could not take yet).
    pub(crate) fn publish_from(
        &self,
        message: Message,
        wait: routes::Wait,
    ) -> (usize, routes::Forwarded) {
        let message = Arc::new(message);
        if message.retain {
            self.set_retained(&message.topic, Some(message.clone()));
        }
        self.fan_out(message, wait)
    }

    /// Delivers `message` to the matching subscriptions (and, for a
    /// client's message, towards the other nodes) without storing it, even
    /// if it is to be retained.
    pub(crate) fn fan_out(
        &self,
        message: Arc<Message>,
        wait: routes::Wait,
    ) -> (usize, routes::Forwarded) {
        let routes = self.routes().filter(|_| message.publisher.is_some());
        let forwarded =
            routes.map_or_else(Default::default, |routes| routes.forward(&message, wait));
        let routed = routes.is_some();
        // (session, options, whether through a group)
        let mut targets: Vec<(Arc<Session>, SubOptions, bool)> = Vec::new();
        crate::lock::read(&self.inner.subscriptions).for_each_match(&message.topic, |_, sub| {
            let shared = matches!(sub, Subscriber::Shared { .. });
            if !(shared && routed) {
                targets.extend(sub.pick().map(|(s, o)| (s, o, shared)));
            }
        });
        let mut deliveries: Vec<(Arc<Session>, Delivery)> = Vec::with_capacity(targets.len());
        // Where the one copy of each v5 client is, once it has one.
        let mut copies: HashMap<Arc<str>, usize> = HashMap::new();
        for (session, options, shared) in targets {
            let Some(delivery) = Delivery::of(&message, &session, options) else {
                continue;
            };
            if options.one_copy && !shared {
                match copies.entry(session.client_id.clone()) {
                    std::collections::hash_map::Entry::Occupied(at) => {
                        let copy = &mut deliveries[*at.get()].1;
                        copy.qos = copy.qos.max(delivery.qos);
                        copy.retain |= delivery.retain;
                        copy.subscription_ids.add(options.id);
                        continue;
                    }
                    std::collections::hash_map::Entry::Vacant(at) => {
                        at.insert(deliveries.len());
                    }
                }
            }
            deliveries.push((session, delivery));
        }
        (self.deliver_all(deliveries), forwarded)
    }

    /// Hands each delivery to its session; returns how many were taken.
    fn deliver_all(&self, deliveries: Vec<(Arc<Session>, Delivery)>) -> usize {
        let mut delivered = 0;
        for (session, delivery) in deliveries {
            if session.deliver(delivery, &self.inner.options) {
                delivered += 1;
            } else {
                self.metrics().mqtt_dropped_messages.inc();
            }
        }
        delivered
    }

    /// Delivers a message of another node's client, received for
    /// `interest`, to the local subscriptions holding it: every plain
    /// subscription to exactly that filter, or one member of the group.
    pub(crate) fn deliver_routed(&self, interest: &Interest, message: Arc<Message>) -> usize {
        let mut targets: Vec<(Arc<Session>, SubOptions)> = Vec::new();
        {
            let tree = crate::lock::read(&self.inner.subscriptions);
            match interest {
                Interest::Plain(filter) => {
                    for sub in tree.at(filter).into_iter().flat_map(|at| at.values()) {
                        if let Subscriber::One { session, options } = sub {
                            targets.push((session.clone(), *options));
                        }
                    }
                }
                Interest::Group { filter, key } => {
                    let group = tree.at(filter).and_then(|at| at.get(key));
                    targets.extend(group.and_then(Subscriber::pick));
                }
            }
        }
        let deliveries = targets
            .into_iter()
            .filter_map(|(session, options)| {
                Delivery::of(&message, &session, options).map(|d| (session, d))
            })
            .collect();
        self.deliver_all(deliveries)
    }

    /// Sets (or with `None` clears) the retained message of `topic`.
    pub(crate) fn set_retained(&self, topic: &str, message: Option<Arc<Message>>) {
        let mut retained = crate::lock::write(&self.inner.retained);
        match message {
            Some(message) if !message.payload.is_empty() && !message.is_expired() => {
                retained.insert(message.topic.clone(), message);
            }
            _ => {
                retained.remove(topic);
            }
        }
    }

    /// Removes the retained message of `topic`.
    pub(crate) fn clear_retained(&self, topic: &str) {
        crate::lock::write(&self.inner.retained).remove(topic);
    }

    /// Retained messages matching `filter`.
    fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        // Only topics starting with the part before the first wildcard can
        // match: one range of the sorted map, not the whole map.
        let literal = &filter[..filter.find(['+', '#']).unwrap_or(filter.len())];
        let mut found: Vec<Arc<Message>> = crate::lock::read(&self.inner.retained)
            .range::<str, _>((
                std::ops::Bound::Included(literal),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(topic, _)| topic.starts_with(literal))
            .filter(|(topic, m)| topic::matches(filter, topic) && !m.is_expired())
            .map(|(_, m)| m.clone())
            .collect();
        self.announced_matching(filter, &mut found);
        found
    }
}

/// A lifecycle event on its way to the tracker, with whoever waits for it
/// to be durable.
struct Reported {
    event: LifecycleEvent,
    durable: Option<oneshot::Sender<bool>>,
}

async fn pump_events(
    tracker: Tracker,
    mut rx: mpsc::UnboundedReceiver<Reported>,
    drain: CancellationToken,
) {
    let mut batch = Vec::with_capacity(1024);
    // Events of connections already accepted (disconnects, activity) that a
    // cluster's log did not take for a moment: they go again with the next
    // batch, or after a pause, until recorded or the broker is drained.
    let mut again: Vec<LifecycleEvent> = Vec::new();
    loop {
        let received = if again.is_empty() {
            tokio::select! {
                n = rx.recv_many(&mut batch, 4096) => n,
                () = drain.cancelled() => {
                    rx.close();
                    rx.recv_many(&mut batch, 4096).await
                }
            }
        } else {
            tokio::select! {
                n = rx.recv_many(&mut batch, 4096) => n,
                () = tokio::time::sleep(RECORD_AGAIN_AFTER) => 0,
                () = drain.cancelled() => {
                    rx.close();
                    rx.recv_many(&mut batch, 4096).await
                }
            }
        };
        if received == 0 && again.is_empty() {
            return;
        }
        let mut waiting = Vec::new();
        let events: Vec<LifecycleEvent> = again
            .drain(..)
            .chain(batch.drain(..).map(|r| {
                waiting.extend(r.durable);
                r.event
            }))
            .collect();
        // A cluster's log may refuse for a moment (a NATS server lost): the
        // events of accepted connections are kept to go again.
        let kept: Vec<LifecycleEvent> = if tracker.is_replica() {
            events
                .iter()
                .filter(|e| !matches!(e.kind, crate::domain::EventKind::Connected(_)))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        // Nothing to record with tracking switched off: a connect goes on.
        let recorded = match tracker.record_stored(events).await {
            Ok(_) | Err(StoreError::Disabled) => true,
            Err(StoreError::Unavailable(why)) if tracker.is_replica() => {
                tracing::warn!(reason = %why, again = kept.len(), "the cluster log refused lifecycle events; connects are refused, the others go again");
                again = kept;
                if drain.is_cancelled() && received == 0 {
                    tracing::error!(
                        events = again.len(),
                        "the broker stops with lifecycle events the cluster log did not take"
                    );
                    return;
                }
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "recording lifecycle events failed");
                false
            }
        };
        for durable in waiting {
            let _ = durable.send(recorded);
        }
    }
}

/// How long events a cluster's log refused wait before they go again
/// when nothing else comes.
const RECORD_AGAIN_AFTER: Duration = Duration::from_millis(500);

/// A broker over a store in a temporary folder, for unit tests that drive
/// it without sockets.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub(crate) fn broker(options: BrokerOptions) -> (Broker, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), Default::default()).expect("store");
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let tracker = Tracker::new(store.clone(), metrics.clone());
        let registry = Registry::new(&store, &options.org_id).expect("registry");
        let (broker, _pump) = Broker::new(
            options,
            store,
            tracker,
            registry,
            metrics,
            CancellationToken::new(),
        );
        (broker, dir)
    }

    /// A subscriber's session, online, subscribed to `filter` at QoS 0;
    /// what reaches it arrives in the returned mailbox.
    pub(crate) async fn subscriber(broker: &Broker, filter: &str) -> Arc<session::Mailbox> {
        let mailbox = Arc::new(session::Mailbox::default());
        let id: Arc<str> = Arc::from("subscriber");
        let attached = broker
            .attach(&id, u64::MAX, true, 0, "", "test", mailbox.clone())
            .await;
        let options = SubOptions {
            qos: QoS::AtMostOnce,
            no_local: false,
            retain_as_published: false,
            id: None,
            one_copy: false,
        };
        let _ = broker.add_subscription(&attached.session, filter, options);
        mailbox
    }
}
