//! A connstate cluster: several nodes share one fleet state through one
//! NATS JetStream stream, the cluster's log.
//!
//! **The log.** Every write of the fleet's data (lifecycle events from a
//! node's embedded broker or from IngestEvents, deletions, settings) is
//! appended to the stream by the node that received it ([`appender`]):
//! entries waiting at the same moment go together as one message, and an
//! append is answered only once JetStream has stored the message on a
//! quorum *and* this node has applied it. Every node consumes the stream in
//! order from where its own store stands ([`applier`]) and applies each
//! entry with the same lifecycle rules, at the commit time the stream gave
//! the message: so every node holds the same records, logs and revisions
//! (a revision counts applied changes; it is identical on every node), and
//! any node answers any query, resumes any watch and reads any page token.
//! The store's writer applies an entry only right after the one before it
//! in the log ([`crate::store::LogPosition`]); the position is written with
//! the commit, so a node that stops resumes where it stood.
//!
//! **Nodes.** Each node's embedded broker is a broker of its own to the
//! lifecycle rules (`embedded@NODE`, [`crate::domain::node_broker`]), so
//! the stream's order decides which of two connections of one client on two
//! nodes is the newer. A node starts a *run* (a random incarnation number)
//! by appending `NodeStarted`: applying it ends every connection recorded
//! on that node's earlier runs. Each node renews a lease in a JetStream
//! key-value bucket ([`leases`]); when a node's lease lapses, the survivors
//! append `NodeLost` for its run, and the first one applied records each of
//! its connected clients as disconnected (initiator network, close code 97)
//! and fences that run off: entries it appends later are refused, so
//! exactly one loss is recorded however many survivors noticed.

mod appender;
mod applier;
pub mod leader;
mod leases;
pub mod snapshots;
pub mod wire;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    domain::Revision,
    store::{Sequencer, Store, StoreError, Write, WriteAck},
};

/// How long a node that stops waits for what it sent to reach NATS.
const LEAVE_FLUSH: Duration = Duration::from_secs(2);

/// How a node joins its cluster (`[cluster]` in the configuration file).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:port`); any of them will do.
    pub nats: Vec<String>,
    /// This node's name, unique in the cluster: letters, digits, `-`, `_`.
    pub node_id: String,
    /// The JetStream stream of the log (created if absent); the key-value
    /// bucket of node leases is named after it.
    pub stream: String,
    /// Replicas of the stream and bucket when this node creates them.
    pub replicas: usize,
    /// How long a node's lease lasts without renewal.
    pub lease: Duration,
    /// Log messages a node may trail the stream by and still be ready.
    pub max_lag: u64,
    /// How often a snapshot of the state is taken (by one node) and the
    /// log trimmed behind it, as far as the feed retention allows.
    pub snapshot_interval: Duration,
    /// NATS user and password.
    pub user: Option<(String, String)>,
    /// A NATS token.
    pub token: Option<String>,
    /// CA certificate (PEM) of the NATS servers: TLS is required when set.
    pub tls_ca: Option<PathBuf>,
}

impl ClusterConfig {
    pub fn new(nats: Vec<String>, node_id: String) -> ClusterConfig {
        ClusterConfig {
            nats,
            node_id,
            stream: "CONNSTATE".to_owned(),
            replicas: 3,
            lease: Duration::from_secs(10),
            max_lag: 10_000,
            snapshot_interval: Duration::from_secs(600),
            user: None,
            token: None,
            tls_ca: None,
        }
    }

    /// Checks names and bounds: the setting at fault (as the flag's
    /// configuration key names it) and what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let name_rule = "must be 1 to 64 letters, digits, '-' or '_'";
        if self.nats.is_empty() {
            return Err(("cluster_nats", "needs at least one NATS URL".into()));
        }
        if !name_ok(&self.node_id) {
            return Err(("node_id", format!("{:?} {name_rule}", self.node_id)));
        }
        if !name_ok(&self.stream) {
            return Err(("cluster_stream", format!("{:?} {name_rule}", self.stream)));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(("cluster_replicas", "must be 1 to 5".into()));
        }
        if self.lease < Duration::from_secs(2) || self.lease > Duration::from_secs(600) {
            return Err(("cluster_lease", "must be 2 s to 10 min".into()));
        }
        if self.snapshot_interval < Duration::from_secs(1) {
            return Err(("cluster_snapshot_interval", "must be 1 s or more".into()));
        }
        Ok(())
    }

    fn subject(&self) -> String {
        format!("connstate.{}.log", self.stream)
    }

    fn bucket(&self) -> String {
        format!("{}_nodes", self.stream)
    }
}

/// A node declared lost, and the node that recorded it (whose `NodeLost`
/// was applied first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostNode {
    pub node: String,
    pub by: String,
}

/// Errors of joining a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot reach NATS at {urls}: {reason}")]
    Connect { urls: String, reason: String },
    #[error("JetStream: {0}")]
    JetStream(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "this node's store stands at log message {applied}, and the stream now starts at \
         {first}: start it with an empty data folder to join from the newest snapshot"
    )]
    Trimmed { applied: u64, first: u64 },
}

fn js_error(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::JetStream(e.to_string())
}

/// A JetStream error, saying what was being done.
fn js_doing(doing: &'static str) -> impl Fn(&dyn std::fmt::Display) -> ClusterError {
    move |e| ClusterError::JetStream(format!("{doing}: {e}"))
}

/// What health and metrics read of this node's place in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterStatus {
    pub nats_connected: bool,
    /// This node's current run is started (its `NodeStarted` applied) and
    /// not fenced off.
    pub started: bool,
    pub lease_held: bool,
    /// The newest log message applied here.
    pub applied: u64,
    /// The newest log message known to exist.
    pub stream_last: u64,
    pub max_lag: u64,
}

impl ClusterStatus {
    pub fn lag(&self) -> u64 {
        self.stream_last.saturating_sub(self.applied)
    }

    /// Whether the node serves: NATS reachable, started, not far behind.
    pub fn ready(&self) -> bool {
        self.nats_connected && self.started && self.lag() <= self.max_lag
    }

    /// Why not [`ClusterStatus::ready`], for logs and `/ready`.
    pub fn problem(&self) -> Option<String> {
        if !self.nats_connected {
            Some("NATS is unreachable".into())
        } else if !self.started {
            Some("the node has not joined the cluster yet".into())
        } else if self.lag() > self.max_lag {
            Some(format!(
                "the node trails the cluster log by {} messages (bound {})",
                self.lag(),
                self.max_lag
            ))
        } else {
            None
        }
    }
}

/// A handle to this node's membership of the cluster.
#[derive(Clone)]
pub struct Cluster {
    shared: Arc<Shared>,
}

struct Shared {
    config: ClusterConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    store: Store,
    /// The current run of this node.
    incarnation: AtomicU64,
    /// Every run of this process (the current one and those fenced off):
    /// the entries it appended, whose waiters are here.
    runs: Mutex<Vec<u64>>,
    /// Entries waiting for the appender: their id and body.
    appends: mpsc::Sender<(u64, wire::Body)>,
    /// Who waits for each entry this node appended, by id.
    waiters: Mutex<HashMap<u64, WriteAck>>,
    /// Entries whose waiter is answered when JetStream has stored them,
    /// not when this node has applied them ([`Sequencer::submit_stored`]).
    answer_on_store: Mutex<std::collections::HashSet<u64>>,
    next_id: AtomicU64,
    /// The newest log message applied here, and the newest known.
    applied: AtomicU64,
    stream_last: AtomicU64,
    started: AtomicBool,
    lease_held: AtomicBool,
    /// The node table as applied: each live node's run.
    nodes: Mutex<HashMap<String, u64>>,
    /// Set when this node's run is fenced off (declared lost): the server
    /// ends every local connection; the node then starts a new run.
    fenced: watch::Sender<u64>,
    /// Nodes declared lost, each with the node whose notice was applied
    /// (the one that recorded the loss).
    lost: tokio::sync::broadcast::Sender<LostNode>,
    status: watch::Sender<ClusterStatus>,
    stop: CancellationToken,
    metrics: Arc<crate::metrics::Metrics>,
    /// Asks the lease loop to renew at once (a new run's lease before its
    /// start is appended).
    renew_now: tokio::sync::Notify,
    /// When an append last failed, while none has succeeded since: new
    /// writes are refused at once for a moment rather than queue behind
    /// messages that JetStream is not taking.
    append_failed_at: Mutex<Option<tokio::time::Instant>>,
}

/// How long after a failed append new writes are refused at once.
const REFUSE_AFTER_FAILURE: Duration = Duration::from_millis(500);

impl Shared {
    fn append_trouble(&self, failing: bool) {
        let mut at = crate::lock::lock(&self.append_failed_at);
        *at = failing.then(tokio::time::Instant::now);
    }

    /// Whether the log is failing appends right now.
    fn appends_failing(&self) -> bool {
        crate::lock::lock(&self.append_failed_at)
            .is_some_and(|at| at.elapsed() < REFUSE_AFTER_FAILURE)
    }
}

/// How long a write waits for the log to take and apply it.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(30);

impl Cluster {
    /// Joins the cluster: connects to NATS, creates the stream and the
    /// lease bucket if absent, starts applying the log from where `store`
    /// stands, makes `store` a replica of the log, and starts this node's
    /// run. Returns before the node has caught up: [`Cluster::status`] says
    /// when it is ready.
    pub async fn join(
        config: ClusterConfig,
        store: Store,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Cluster, ClusterError> {
        config
            .validate()
            .map_err(|(field, reason)| ClusterError::JetStream(format!("{field} {reason}")))?;
        let client = connect(&config).await?;
        let js = jetstream::new(client.clone());
        // NATS that has just started (or lost a server) may take a while
        // to elect the leaders these need: try again for a while.
        let deadline = tokio::time::Instant::now() + SET_UP_FOR;
        let (info, kv) = loop {
            match set_up(&js, &config, &store).await {
                Ok(done) => break done,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "setting up the cluster's stream and buckets failed; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let (applied_seq, _) = store.applied_position()?;
        let first = info.state.first_sequence;
        if info.state.messages > 0 && first > applied_seq + 1 {
            return Err(ClusterError::Trimmed {
                applied: applied_seq,
                first,
            });
        }
        let nodes = applier::load_nodes(&store)?;
        let (appends, appends_rx) = mpsc::channel(appender::QUEUE);
        let status = ClusterStatus {
            nats_connected: true,
            started: false,
            lease_held: false,
            applied: applied_seq,
            stream_last: info.state.last_sequence,
            max_lag: config.max_lag,
        };
        let first_run = fresh_incarnation();
        let shared = Arc::new(Shared {
            incarnation: AtomicU64::new(first_run),
            runs: Mutex::new(vec![first_run]),
            appends,
            waiters: Mutex::default(),
            answer_on_store: Mutex::default(),
            next_id: AtomicU64::new(1),
            applied: AtomicU64::new(applied_seq),
            stream_last: AtomicU64::new(info.state.last_sequence),
            started: AtomicBool::new(false),
            lease_held: AtomicBool::new(false),
            nodes: Mutex::new(nodes),
            fenced: watch::Sender::new(0),
            lost: tokio::sync::broadcast::Sender::new(64),
            status: watch::Sender::new(status),
            stop: CancellationToken::new(),
            config,
            client,
            js,
            store: store.clone(),
            metrics,
            renew_now: tokio::sync::Notify::new(),
            append_failed_at: Mutex::new(None),
        });
        let cluster = Cluster { shared };
        store.set_sequencer(Arc::new(cluster.clone()));
        tokio::spawn(appender::run(cluster.clone(), appends_rx));
        tokio::spawn(applier::run(cluster.clone()));
        leases::renew(&cluster, &kv).await;
        tokio::spawn(leases::run(cluster.clone(), kv));
        tokio::spawn(cluster.clone().start_run());
        tokio::spawn(cluster.clone().report_status());
        tokio::spawn(snapshots::run(cluster.clone()));
        tracing::info!(
            node = %cluster.shared.config.node_id,
            stream = %cluster.shared.config.stream,
            applied = applied_seq,
            stream_last = info.state.last_sequence,
            "joined the cluster; catching up with its log"
        );
        Ok(cluster)
    }

    /// The cluster's JetStream context (its NATS connection).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.shared.js
    }

    /// The key-value bucket `{stream}_{name}` of this cluster, created
    /// (with the cluster's replicas, one value per key) if absent.
    pub async fn key_value(&self, name: &str) -> Result<jetstream::kv::Store, ClusterError> {
        self.bucket(name, true).await
    }

    /// A bucket named after the stream whose reads all go to its leader
    /// (no direct gets, which a replica behind the leader may answer): a
    /// read sees every write acknowledged before it.
    pub async fn key_value_from_leader(
        &self,
        name: &str,
    ) -> Result<jetstream::kv::Store, ClusterError> {
        self.bucket(name, false).await
    }

    async fn bucket(&self, name: &str, direct: bool) -> Result<jetstream::kv::Store, ClusterError> {
        let bucket = format!("{}_{name}", self.shared.config.stream);
        if let Ok(store) = self.shared.js.get_key_value(&bucket).await {
            return Ok(store);
        }
        let replicas = self.shared.config.replicas;
        leases::create_bucket(&self.shared.js, &bucket, replicas, 1, direct).await?;
        self.shared
            .js
            .get_key_value(&bucket)
            .await
            .map_err(|e| js_doing("opening a key-value bucket")(&e))
    }

    /// What the embedded broker routes MQTT messages between the nodes
    /// through: two connections of its own (one that does not receive its
    /// own messages, one for shared groups that does) and the bucket of
    /// retained messages.
    pub async fn route_links(&self) -> Result<crate::mqtt::RouteLinks, ClusterError> {
        let config = &self.shared.config;
        Ok(crate::mqtt::RouteLinks {
            node: config.node_id.clone(),
            prefix: format!("connstate.{}.mqtt", config.stream),
            plain: connect_for(config, Some(("routes", true))).await?,
            shared: connect_for(config, Some(("shared routes", false))).await?,
            retained: self.key_value("retained").await?,
            wills: self.key_value_from_leader("wills").await?,
            sessions: self.key_value_from_leader("sessions").await?,
            control: format!("connstate.{}.control", config.stream),
        })
    }

    /// This node's name.
    pub fn node_id(&self) -> &str {
        &self.shared.config.node_id
    }

    /// The broker name of this node's embedded broker.
    pub fn broker_name(&self) -> String {
        crate::domain::node_broker(&self.shared.config.node_id)
    }

    pub fn status(&self) -> ClusterStatus {
        *self.shared.status.borrow()
    }

    /// Every change of [`Cluster::status`].
    pub fn watch_status(&self) -> watch::Receiver<ClusterStatus> {
        self.shared.status.subscribe()
    }

    /// Every node declared lost from now on, with the node that recorded
    /// the loss.
    pub fn watch_lost(&self) -> tokio::sync::broadcast::Receiver<LostNode> {
        self.shared.lost.subscribe()
    }

    /// Counts the runs of this node fenced off: on each change, the server
    /// ends every connection of its embedded broker (they were recorded as
    /// lost by another node).
    pub fn watch_fenced(&self) -> watch::Receiver<u64> {
        self.shared.fenced.subscribe()
    }

    /// Stops appending, applying and renewing the lease (the lease then
    /// lapses unless the node comes back first).
    pub async fn leave(&self) {
        self.shared.stop.cancel();
        // Without NATS a flush waits for it to come back: a node stopping
        // then stops anyway.
        let flushed = tokio::time::timeout(LEAVE_FLUSH, self.shared.client.flush()).await;
        if flushed.is_err() {
            tracing::warn!("leaving the cluster without flushing to NATS (unreachable)");
        }
    }

    /// Appends `NodeStarted` for the current run and waits until it is
    /// applied here (which is after everything appended before it).
    async fn start_run(self) {
        loop {
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            let (ack, done) = tokio::sync::oneshot::channel();
            crate::lock::lock(&self.shared.waiters).insert(id, ack);
            let body = wire::Body::NodeStarted(wire::NodeStarted {
                lease_ms: self.shared.config.lease.as_millis() as u64,
            });
            if self.shared.appends.send((id, body)).await.is_err() {
                return;
            }
            tokio::select! {
                answer = done => match answer {
                    Ok(Ok(_)) => {
                        self.shared.started.store(true, Ordering::Release);
                        self.publish_status();
                        tracing::info!(node = %self.node_id(), "node started in the cluster");
                        return;
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "starting the node's run failed; trying again"),
                    Err(_) => tracing::warn!("starting the node's run got no answer; trying again"),
                },
                _ = self.shared.stop.cancelled() => return,
            }
            crate::lock::lock(&self.shared.waiters).remove(&id);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// This node's run was declared lost: a new run starts (after the
    /// server has ended the old run's connections).
    fn fenced_off(&self) {
        self.shared.started.store(false, Ordering::Release);
        self.shared.lease_held.store(false, Ordering::Release);
        let run = fresh_incarnation();
        crate::lock::lock(&self.shared.runs).push(run);
        self.shared.incarnation.store(run, Ordering::Release);
        self.shared.fenced.send_modify(|n| *n += 1);
        self.publish_status();
        tracing::error!(
            node = %self.node_id(),
            "this node was declared lost by the cluster (its lease lapsed); its connections \
             were recorded as lost, and it starts a new run"
        );
        // The new run's lease first, so that no node takes the new run for
        // a lost one.
        self.shared.renew_now.notify_one();
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut status = cluster.watch_status();
            let held = status.wait_for(|s| s.lease_held);
            let _ = tokio::time::timeout(cluster.shared.config.lease, held).await;
            cluster.start_run().await;
        });
    }

    fn publish_status(&self) {
        let s = &self.shared;
        let status = ClusterStatus {
            nats_connected: s.client.connection_state() == async_nats::connection::State::Connected,
            started: s.started.load(Ordering::Acquire),
            lease_held: s.lease_held.load(Ordering::Acquire),
            applied: s.applied.load(Ordering::Acquire),
            stream_last: s
                .stream_last
                .load(Ordering::Acquire)
                .max(s.applied.load(Ordering::Acquire)),
            max_lag: s.config.max_lag,
        };
        let m = &s.metrics;
        m.cluster_nats_connected
            .set(i64::from(status.nats_connected));
        m.cluster_joined.set(i64::from(status.started));
        m.cluster_lease_held.set(i64::from(status.lease_held));
        m.cluster_applied_sequence.set(status.applied as i64);
        m.cluster_stream_sequence.set(status.stream_last as i64);
        m.cluster_lag_messages.set(status.lag() as i64);
        s.status.send_if_modified(|now| {
            let changed = *now != status;
            *now = status;
            changed
        });
    }

    /// Refreshes the status a few times a second (NATS connection state
    /// changes nowhere else), and asks the stream how far it reaches while
    /// nothing arrives.
    async fn report_status(self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut rounds = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shared.stop.cancelled() => return,
            }
            rounds += 1;
            if rounds.is_multiple_of(4)
                && let Ok(mut stream) = self.shared.js.get_stream(&self.shared.config.stream).await
                && let Ok(info) = stream.info().await
            {
                self.shared
                    .stream_last
                    .fetch_max(info.state.last_sequence, Ordering::AcqRel);
            }
            self.publish_status();
        }
    }
}

impl Sequencer for Cluster {
    fn submit(
        &self,
        write: Write,
    ) -> futures_util::future::BoxFuture<'static, Result<Revision, StoreError>> {
        Box::pin(self.clone().append(write, false))
    }

    fn submit_stored(
        &self,
        write: Write,
    ) -> futures_util::future::BoxFuture<'static, Result<Revision, StoreError>> {
        Box::pin(self.clone().append(write, true))
    }
}

impl Cluster {
    /// Appends `write` and waits for its answer: once applied here, or
    /// with `stored`, once JetStream holds it.
    async fn append(self, write: Write, stored: bool) -> Result<Revision, StoreError> {
        let shared = &self.shared;
        if !shared.started.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "this node has not joined the cluster yet (catching up with its log)".into(),
            ));
        }
        if shared.client.connection_state() != async_nats::connection::State::Connected {
            return Err(StoreError::Unavailable(
                "NATS is unreachable from this node".into(),
            ));
        }
        if shared.appends_failing() {
            return Err(StoreError::Unavailable(
                "the cluster log is not taking appends right now".into(),
            ));
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (ack, done) = tokio::sync::oneshot::channel();
        crate::lock::lock(&shared.waiters).insert(id, ack);
        if stored {
            crate::lock::lock(&shared.answer_on_store).insert(id);
        }
        let body = wire::body_of(&write);
        let forget = || {
            crate::lock::lock(&shared.waiters).remove(&id);
            crate::lock::lock(&shared.answer_on_store).remove(&id);
        };
        if shared.appends.send((id, body)).await.is_err() {
            forget();
            return Err(StoreError::Closed);
        }
        match tokio::time::timeout(SUBMIT_TIMEOUT, done).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => {
                forget();
                Err(StoreError::Unavailable(format!(
                    "the cluster log did not apply the write within {} s",
                    SUBMIT_TIMEOUT.as_secs()
                )))
            }
        }
    }
}

/// How long joining tries to set up the stream and buckets.
const SET_UP_FOR: Duration = Duration::from_secs(60);

/// The log stream (created if absent), its state, and the lease bucket
/// with the cluster's shared secrets in it.
async fn set_up(
    js: &jetstream::Context,
    config: &ClusterConfig,
    store: &Store,
) -> Result<(jetstream::stream::Info, jetstream::kv::Store), ClusterError> {
    let mut stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: config.stream.clone(),
            subjects: vec![config.subject()],
            storage: jetstream::stream::StorageType::File,
            num_replicas: config.replicas,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| js_doing("creating the log stream")(&e))?;
    let info = stream
        .info()
        .await
        .map_err(|e| js_doing("reading the log stream")(&e))?
        .clone();
    let kv = leases::bucket(js, config).await?;
    share_secret(&kv, store, PAGE_TOKEN_SECRET).await?;
    Ok((info, kv))
}

/// The store secret that authenticates page tokens: one for the whole
/// cluster, so that a token issued by one node is good on every other.
const PAGE_TOKEN_SECRET: &str = "page-tokens";

/// Makes the store's secret `name` the cluster's: the first node to join
/// puts its own in the lease bucket (`secret.NAME`); every node then takes
/// the bucket's.
async fn share_secret(
    kv: &jetstream::kv::Store,
    store: &Store,
    name: &str,
) -> Result<(), ClusterError> {
    let key = format!("secret.{name}");
    let own = store.secret(name)?;
    // Someone else's put first wins.
    let _ = kv.create(&key, bytes::Bytes::copy_from_slice(&own)).await;
    let shared = kv
        .get(&key)
        .await
        .map_err(|e| js_doing("reading the cluster's secrets")(&e))?
        .ok_or_else(|| ClusterError::JetStream(format!("the cluster secret {name} vanished")))?;
    let shared = <[u8; 32]>::try_from(shared.as_ref()).map_err(|_| {
        ClusterError::JetStream(format!("the cluster secret {name} is not 32 bytes"))
    })?;
    if shared != own {
        store.set_secret(name, shared)?;
    }
    Ok(())
}

fn fresh_incarnation() -> u64 {
    let mut bytes = [0u8; 8];
    // Without randomness the clock will do: runs of one node are apart in
    // time.
    if getrandom::fill(&mut bytes).is_err() {
        return chrono::Utc::now().timestamp_nanos_opt().unwrap_or(1) as u64;
    }
    u64::from_le_bytes(bytes).max(1)
}

async fn connect(config: &ClusterConfig) -> Result<async_nats::Client, ClusterError> {
    connect_for(config, None).await
}

/// A connection of `config`'s node for `purpose` (in its name); `no_echo`
/// when the purpose is `Some((_, true))`.
async fn connect_for(
    config: &ClusterConfig,
    purpose: Option<(&str, bool)>,
) -> Result<async_nats::Client, ClusterError> {
    let urls = config.nats.join(",");
    let failed = |reason: String| ClusterError::Connect {
        urls: urls.clone(),
        reason,
    };
    let name = match purpose {
        Some((purpose, _)) => format!("connstate {} {purpose}", config.node_id),
        None => format!("connstate {}", config.node_id),
    };
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None);
    if matches!(purpose, Some((_, true))) {
        options = options.no_echo();
    }
    // The routing connections take the servers in the order given (the
    // first that answers): a node lists its nearest server first, and
    // nodes that list the same one first route through it, with no hop
    // between servers.
    if purpose.is_some() {
        options = options.retain_servers_order();
    }
    if let Some((user, password)) = &config.user {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let addrs: Vec<async_nats::ServerAddr> = config
        .nats
        .iter()
        .map(|u| u.parse().map_err(|e| failed(format!("{u}: {e}"))))
        .collect::<Result<_, _>>()?;
    options
        .connect(addrs)
        .await
        .map_err(|e| failed(e.to_string()))
}
