//! The sled-backed store: state records, their indexes, connection logs and
//! the change feed, in one tree (see [`keys`] for the layout).
//!
//! One writer thread owns every write of client data ([`writer`]): it takes
//! commands from a channel, runs each event through the lifecycle rules,
//! appends a whole group of commands to the change log as one record,
//! flushes once (group commit), and only then publishes the committed
//! revision, sends the changes to the live feed and acknowledges. The log
//! is the source of truth: state records, per-client log entries and log
//! batch records are written back from it behind the commits, coalesced, by
//! a write-back thread of its own, while readers see the newest state at
//! once through an in-memory overlay ([`overlay`]); a crash restart replays
//! the log after the last write-back before it serves. The log sits behind a seam ([`log::Log`]: append, read
//! from a revision, subscribe) that a replicated log will implement; watch
//! replay, the crash replay and feed retention read and trim it there too.
//! Readers read the overlay, sled and the in-memory indexes ([`index`])
//! directly and never wait for the writer.
//! Retention ([`retention`]) deletes old log entries and feed records from
//! its own thread; the writer never touches those keys again, so the two
//! never conflict.
//!
//! Whether the store can record is one value, [`Recording`], that health,
//! `/ready`, the broker's CONNECT path and the write APIs all read, so they
//! change together. The store keeps a reserve of free disk space
//! ([`StoreOptions::min_free_bytes`]): the writer checks it before every
//! group commit and a probe checks it a few times a second, so the store
//! stops recording *before* the disk is full. sled cannot recover from a
//! failed write without a restart (it refuses every later write), so
//! stopping short of that is what lets the store resume by itself once
//! space is freed.

mod codec;
mod index;
mod keys;
pub mod log;
mod overlay;
mod retention;
mod scan;
pub mod snapshot;
mod writer;

use std::{
    collections::HashSet,
    path::Path,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use prost::Message;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use self::log::Log;

pub use retention::RetentionReport;
pub use scan::{LogCursor, LogPage, StatePage};

use crate::domain::{Change, ClientId, ConnectionState, LifecycleEvent, Revision};

/// The changes of one group commit, in revision order, as the live feed
/// carries them: one message per commit, however many changes it holds.
pub type CommittedBatch = Arc<Vec<Arc<Change>>>;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("no such client")]
    NotFound,
    #[error("client connection state is disabled")]
    Disabled,
    #[error("the store is closed")]
    Closed,
    #[error("the store failed earlier and accepts no more writes")]
    Failed,
    /// Free space is below the reserve; writes resume once it is back.
    #[error(
        "the storage is full: {} free on the data disk, {} must stay free; \
         writes resume once space is freed",
        mib(*free),
        mib(*reserve)
    )]
    StorageFull { free: u64, reserve: u64 },
    /// The cluster's log cannot take the write now (NATS unreachable, no
    /// quorum, this node fenced off); nothing was recorded, or, when the
    /// log's answer was lost, it may be recorded later.
    #[error("the cluster log is unavailable: {0}")]
    Unavailable(String),
    /// Too little free space to open the store at all.
    #[error(
        "opening the store needs about {} of free space on {}, and {} is free: \
         free space there and start again",
        mib(*needed),
        path.display(),
        mib(*free)
    )]
    OpenNeedsSpace {
        needed: u64,
        free: u64,
        path: std::path::PathBuf,
    },
    /// Start-up recovery would take the free space below the reserve.
    #[error(
        "recording the {clients} clients left connected by an unclean stop as disconnected \
         needs about {} of free space on {} besides the {} kept free, and {} is free: \
         free space there (or lower --min-free-disk-mb) and start again",
        mib(*needed),
        path.display(),
        mib(*reserve),
        mib(*free)
    )]
    RecoveryNeedsSpace {
        clients: usize,
        needed: u64,
        free: u64,
        reserve: u64,
        path: std::path::PathBuf,
    },
}

/// One write of the fleet's data as a replicated log carries it (the
/// cluster, [`crate::cluster`]): every node applies the same writes in the
/// same order, each at the commit time the log gave it, and so reaches the
/// same records, logs and revisions.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Events(Vec<LifecycleEvent>),
    Delete(ClientId),
    Settings(Settings),
    /// Every client still connected through `broker` (as the records stand
    /// when the write is applied) is recorded as disconnected by `cause`:
    /// a cluster node that restarted or was lost.
    EndBroker {
        broker: String,
        cause: crate::domain::DisconnectCause,
    },
    /// The lease of `holder` (a broker reporting through ingest) is renewed
    /// for `duration` from the write's commit time.
    RenewLease {
        holder: String,
        duration: Duration,
    },
    /// The lease of `holder` renewed at `renewed_ms` (Unix milliseconds)
    /// lapsed: if it was not renewed since, it ends, and every client still
    /// connected through the holder is recorded as disconnected.
    LapseLease {
        holder: String,
        renewed_ms: i64,
    },
}

/// Where the store's writes go first when it is one replica of a cluster's
/// log: the sequencer appends them to the log and answers once this node
/// has applied them ([`Store::apply`]), with the revision they produced.
pub trait Sequencer: Send + Sync {
    fn submit(
        &self,
        write: Write,
    ) -> futures_util::future::BoxFuture<'static, Result<Revision, StoreError>>;

    /// [`Sequencer::submit`], answered once the log holds the write
    /// durably, before this node has applied it: the answer's revision is
    /// then only the committed revision at that moment.
    fn submit_stored(
        &self,
        write: Write,
    ) -> futures_util::future::BoxFuture<'static, Result<Revision, StoreError>> {
        self.submit(write)
    }
}

/// A metadata name and its value ([`Store::meta_scan`]).
pub type MetaValue = (Vec<u8>, Vec<u8>);

/// A place in a replicated log: the sequence of its message and the entry
/// within the message. `(0, 0)`: before the first.
pub type LogPosition = (u64, u32);

/// The answer to one write: the newest revision it produced.
pub type WriteAck = oneshot::Sender<Result<Revision, StoreError>>;

/// A metadata key written (or, with `None`, removed) atomically with the
/// commit of a replicated write: how far the log was applied, the cluster's
/// node table.
pub type MetaWrite = (Vec<u8>, Option<Vec<u8>>);

/// `12.3 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Whether the store can record; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    /// Writes are accepted.
    Ready,
    /// Free disk space is below the reserve: nothing is recorded until it
    /// is back (the store notices by itself).
    StorageFull { free: u64, reserve: u64 },
    /// A write failed: nothing is recorded until a restart.
    Failed,
}

impl Recording {
    /// The error a write gets in this state, `None` when it may go ahead.
    pub fn refusal(self) -> Option<StoreError> {
        match self {
            Recording::Ready => None,
            Recording::StorageFull { free, reserve } => {
                Some(StoreError::StorageFull { free, reserve })
            }
            Recording::Failed => Some(StoreError::Failed),
        }
    }
}

/// Free space sled needs to open a store (a fresh log segment and its
/// recovery records), with room to spare.
const OPEN_NEEDS_BYTES: u64 = 2 << 20;

/// How often the probe looks at the free space.
const SPACE_PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// Administrator settings, kept in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Whether client-connection state is recorded and served.
    pub enabled: bool,
    pub log_max_age: Duration,
    pub log_max_entries_per_client: u32,
    pub feed_max_age: Duration,
    pub feed_max_entries: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            enabled: true,
            log_max_age: Duration::from_secs(7 * 24 * 3600),
            log_max_entries_per_client: 1000,
            feed_max_age: Duration::from_secs(7 * 24 * 3600),
            feed_max_entries: 10_000_000,
        }
    }
}

/// How the store is opened.
#[derive(Clone)]
pub struct StoreOptions {
    /// sled page cache, in bytes.
    pub cache_capacity: u64,
    /// Most events applied in one group commit.
    pub max_batch_events: usize,
    /// Commits the live feed buffers for each watcher.
    pub feed_capacity: usize,
    /// Settings used when the store has none yet.
    pub initial_settings: Settings,
    /// Disk space that must stay free on the store's file system; below it
    /// the store records nothing (see [`Recording::StorageFull`]).
    pub min_free_bytes: u64,
    /// The service's metrics (created by the server, which hands the same
    /// handle to every part), where the store counts what it does.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_capacity: 256 << 20,
            max_batch_events: 8192,
            feed_capacity: 4096,
            initial_settings: Settings::default(),
            min_free_bytes: 64 << 20,
            metrics: Arc::default(),
        }
    }
}

/// A cheap, cloneable handle to the store.
///
/// Dropping the last handle (without [`Store::close`]) stops the store: the
/// writer's command channel closes, the writer ends, the write-back thread
/// ends after a last write-back, and the folder is flushed and released.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// The writer's commands. Every outside handle holds a sender, the
    /// store's own threads none ([`Store::internal`]): a writer kept alive
    /// by its own sender would never see its last handle go.
    commands: Option<mpsc::Sender<writer::Command>>,
}

struct Inner {
    db: sled::Db,
    committed: AtomicU64,
    /// The newest revision readers may find in sled: `committed`, or the
    /// batch being written (sled shows a batch to readers once it is
    /// applied, before it is flushed).
    readable: AtomicU64,
    recording: watch::Sender<Recording>,
    min_free_bytes: u64,
    /// Set by [`Store::close`]: the space probe stops.
    closed: AtomicBool,
    settings: RwLock<Settings>,
    /// The change log: feed records, committed revision, live feed.
    log: log::LocalLog,
    /// Changes in the log not yet written back to sled ([`overlay`]).
    overlay: RwLock<overlay::Overlay>,
    /// The newest revision written back to sled.
    materialised: AtomicU64,
    /// Keeps the overlay in memory: while the writer ends every client of a
    /// broker at once, and in tests of the crash replay.
    hold_write_back: AtomicBool,
    /// The changes the write-back in progress is writing (0 between them).
    writing_back: AtomicUsize,
    /// Held by each write-back, and by a clearing of all data throughout.
    write_back_lock: Mutex<()>,
    /// Wakes the write-back thread, and the writer waiting for it.
    pacer: Arc<Pacer>,
    write_back_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Stops the next write-back at a step (once it has taken the
    /// overlay's changes, or between applying its batches to sled and
    /// trimming the overlay): it says so on the first channel and goes on
    /// when the second one says so (tests of what goes on meanwhile).
    #[cfg(test)]
    write_back_pause: Mutex<Option<(WriteBackStep, WriteBackPause)>>,
    /// Whether the indexes came from a checkpoint at open (rather than
    /// from reading every record).
    index_from_checkpoint: AtomicBool,
    index: index::StateIndex,
    metrics: Arc<crate::metrics::Metrics>,
    /// Clients whose log grew since the last retention pass.
    grown_logs: Mutex<HashSet<ClientId>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The space probe's thread: joined by a close, so that no handle of
    /// the store is left behind it (the database's file lock goes with the
    /// last one).
    space_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    path: std::path::PathBuf,
    /// The cluster's sequencer, when the store is one replica of its log:
    /// writes go there first (see [`Sequencer`]).
    sequencer: std::sync::OnceLock<Arc<dyn Sequencer>>,
    /// The committed revision, for readers that wait for one.
    revision_watch: watch::Sender<Revision>,
}

impl Store {
    /// Opens (or creates) the store in `path` and starts its writer thread.
    /// A clear of all data interrupted by a crash is finished first.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let started = std::time::Instant::now();
        // sled writes as it opens (a fresh log segment, its recovery); a
        // write it cannot finish leaves it refusing every later one. Say
        // what is missing instead.
        std::fs::create_dir_all(path).map_err(|e| StoreError::Sled(e.into()))?;
        if let Ok(free) = fs2::available_space(path)
            && free < OPEN_NEEDS_BYTES
        {
            return Err(StoreError::OpenNeedsSpace {
                needed: OPEN_NEEDS_BYTES,
                free,
                path: path.to_owned(),
            });
        }
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(options.cache_capacity)
            .open()?;
        let sled_open = started.elapsed();
        let log = log::LocalLog::new(db.clone(), options.feed_capacity);
        let committed = log.last_revision()?;
        let materialised = match overlay::stored_position(&db)? {
            Some(position) => position,
            None => {
                // A new store, or one of the layout that wrote every record
                // with its commit: all of it is materialised.
                db.insert(keys::META_MATERIALISED, &committed.to_be_bytes())?;
                db.flush()?;
                committed
            }
        };
        let settings = match db.get(keys::META_SETTINGS)? {
            Some(v) => Settings::from(codec::decode::<codec::SettingsRecord>(&v)?),
            None => options.initial_settings.clone(),
        };
        let (commands, receiver) = mpsc::channel(1024);
        let store = Store {
            inner: Arc::new(Inner {
                db,
                committed: AtomicU64::new(committed),
                readable: AtomicU64::new(committed),
                recording: watch::Sender::new(Recording::Ready),
                min_free_bytes: options.min_free_bytes,
                closed: AtomicBool::new(false),
                settings: RwLock::new(settings),
                log,
                overlay: RwLock::new(overlay::Overlay::new(materialised)),
                materialised: AtomicU64::new(materialised),
                hold_write_back: AtomicBool::new(false),
                writing_back: AtomicUsize::new(0),
                write_back_lock: Mutex::new(()),
                pacer: Arc::default(),
                write_back_thread: Mutex::new(None),
                #[cfg(test)]
                write_back_pause: Mutex::new(None),
                index_from_checkpoint: AtomicBool::new(false),
                index: index::StateIndex::default(),
                metrics: options.metrics.clone(),
                grown_logs: Mutex::new(HashSet::new()),
                space_thread: Mutex::new(None),
                writer_thread: Mutex::new(None),
                path: path.to_owned(),
                sequencer: std::sync::OnceLock::new(),
                revision_watch: watch::Sender::new(committed),
            }),
            commands: Some(commands),
        };
        let replayed = store.replay_log_tail()?;
        let mut writer = writer::Writer::new(store.internal(), committed, options.max_batch_events);
        writer.finish_interrupted_clear()?;
        writer.load_failure_markers()?;
        let from_snapshot = store.load_index_checkpoint()?;
        store
            .inner
            .index_from_checkpoint
            .store(from_snapshot, Ordering::Relaxed);
        if !from_snapshot {
            store.rebuild_index()?;
        }
        for client in store.connected_clients()? {
            store
                .inner
                .metrics
                .add_connected(client.kind().client_type(), 1);
        }
        tracing::info!(
            sled_open_ms = sled_open.as_millis() as u64,
            index_ms = (started.elapsed() - sled_open).as_millis() as u64,
            records = store.count_states(),
            from_snapshot,
            replayed,
            "store opened"
        );
        let thread = std::thread::Builder::new()
            .name("connstate-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the writer: {e}")))?;
        *store.inner.writer_thread.lock().expect("writer lock") = Some(thread);
        let weak = Arc::downgrade(&store.inner);
        let pacer = store.inner.pacer.clone();
        let thread = std::thread::Builder::new()
            .name("connstate-write-back".into())
            .spawn(move || Store::run_write_back(weak, pacer))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the write-back: {e}")))?;
        *store
            .inner
            .write_back_thread
            .lock()
            .expect("write-back lock") = Some(thread);
        store.check_space();
        let weak = Arc::downgrade(&store.inner);
        let thread = std::thread::Builder::new()
            .name("connstate-space".into())
            .spawn(move || Store::probe_space(weak))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the space probe: {e}")))?;
        *store.inner.space_thread.lock().expect("space probe lock") = Some(thread);
        Ok(store)
    }

    /// A handle for the store's own threads: it reads and writes back like
    /// any other, but holds no sender of the writer's commands, so it keeps
    /// neither the writer nor itself alive once every outside handle is gone.
    fn internal(&self) -> Store {
        Store::internal_of(self.inner.clone())
    }

    fn internal_of(inner: Arc<Inner>) -> Store {
        Store {
            inner,
            commands: None,
        }
    }

    /// Looks at the free space every [`SPACE_PROBE_INTERVAL`] until the
    /// store closes, so that a disk filled by others stops recording and
    /// freed space resumes it without waiting for a write.
    fn probe_space(inner: std::sync::Weak<Inner>) {
        loop {
            // A close wakes it early (`Thread::unpark`).
            std::thread::park_timeout(SPACE_PROBE_INTERVAL);
            let Some(inner) = inner.upgrade() else {
                return;
            };
            if inner.closed.load(Ordering::Acquire) {
                return;
            }
            Store::internal_of(inner).check_space();
        }
    }

    /// Free bytes on the store's file system, for unprivileged writers.
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        fs2::available_space(&self.inner.path)
    }

    /// The store's folder.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The reserve of free space the store keeps.
    pub fn min_free_bytes(&self) -> u64 {
        self.inner.min_free_bytes
    }

    /// Compares the free space with the reserve and updates
    /// [`Recording`]: Ready and StorageFull move both ways, Failed stays.
    /// Returns the refusal when the store cannot record.
    fn check_space(&self) -> Option<StoreError> {
        let reserve = self.inner.min_free_bytes;
        // A file system that cannot say is not taken to be full.
        let free = self.free_bytes().unwrap_or(u64::MAX);
        let mut changed = None;
        self.inner.recording.send_if_modified(|now| {
            let next = match *now {
                Recording::Failed => Recording::Failed,
                _ if free < reserve => Recording::StorageFull { free, reserve },
                _ => Recording::Ready,
            };
            let modified = std::mem::discriminant(&next) != std::mem::discriminant(now);
            *now = next;
            if modified {
                changed = Some(next);
            }
            modified
        });
        match changed {
            Some(Recording::StorageFull { .. }) => tracing::error!(
                free = %mib(free),
                reserve = %mib(reserve),
                path = %self.inner.path.display(),
                "the storage is full: recording nothing (CONNECTs refused, writes unavailable) until space is freed"
            ),
            Some(Recording::Ready) => tracing::warn!(
                free = %mib(free),
                reserve = %mib(reserve),
                "space freed: the store records again"
            ),
            _ => {}
        }
        self.recording().refusal()
    }

    /// The metrics the store counts in.
    pub(super) fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// The sled database, in which the registry keeps its own tree.
    pub(crate) fn db(&self) -> &sled::Db {
        &self.inner.db
    }

    /// This store's secret key named `name` (32 random bytes, made on first
    /// use and kept with the data, so it outlives restarts): for example
    /// the key that authenticates page tokens.
    pub fn secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let key = [keys::META_SECRET, name.as_bytes()].concat();
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| {
            sled::Error::Io(std::io::Error::other(format!(
                "no source of randomness: {e}"
            )))
        })?;
        // Whoever stores first wins; everyone then reads the same secret.
        let _ = self
            .inner
            .db
            .compare_and_swap(&key, None::<&[u8]>, Some(&fresh[..]))?;
        self.inner.db.flush()?;
        let stored = self
            .inner
            .db
            .get(&key)?
            .ok_or_else(|| StoreError::Corrupt(format!("secret {name} vanished")))?;
        <[u8; 32]>::try_from(stored.as_ref())
            .map_err(|_| StoreError::Corrupt(format!("secret {name} is not 32 bytes")))
    }

    /// Sets this store's secret `name` (a cluster's nodes share theirs, so
    /// that a page token of one node is good on every other).
    pub fn set_secret(&self, name: &str, secret: [u8; 32]) -> Result<(), StoreError> {
        let key = [keys::META_SECRET, name.as_bytes()].concat();
        self.inner.db.insert(key, &secret[..])?;
        self.inner.db.flush()?;
        Ok(())
    }

    /// The newest revision that is durable and visible to readers.
    pub fn committed_revision(&self) -> Revision {
        self.inner.committed.load(Ordering::Acquire)
    }

    /// The newest revision readers may find in sled (see `Inner::readable`).
    /// Log listings stop here rather than at `committed`, so that they show
    /// every entry of the state a read just before them returned.
    pub(crate) fn readable_revision(&self) -> Revision {
        self.inner.readable.load(Ordering::Acquire)
    }

    /// Whether the store can record now.
    pub fn recording(&self) -> Recording {
        *self.inner.recording.borrow()
    }

    /// True while the store records ([`Recording::Ready`]).
    pub fn can_record(&self) -> bool {
        self.recording() == Recording::Ready
    }

    /// Every change of [`Recording`] from now on.
    pub fn watch_recording(&self) -> watch::Receiver<Recording> {
        self.inner.recording.subscribe()
    }

    pub fn settings(&self) -> Settings {
        self.inner.settings.read().expect("settings lock").clone()
    }

    /// A receiver of every commit from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CommittedBatch> {
        self.inner.log.subscribe()
    }

    /// A new, unique, increasing connection id for the embedded broker.
    ///
    /// The ids are the embedded broker's own space: they are compared only
    /// with its own ids, never with those other brokers report (see
    /// [`crate::rules`]). They come from sled's id generator, which
    /// writes its counter down once every 1,000,000 ids and, after a
    /// restart, goes on 2,000,000 past the last value written down, so that
    /// no id handed out before the stop is handed out again. Hence the jump
    /// of about 2,000,000 at each start: the ids stay unique and growing;
    /// they do not count connections.
    pub fn next_connection_id(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.generate_id()? + 1)
    }

    /// Records `events` in order; returns once they are durable, with the
    /// newest revision they produced (the committed revision when none).
    pub async fn commit_events(&self, events: Vec<LifecycleEvent>) -> Result<Revision, StoreError> {
        if let Some(sequencer) = self.sequencer() {
            return self.submit(sequencer, Write::Events(events)).await;
        }
        self.request(|ack| writer::Command::Events { events, ack })
            .await
    }

    /// Records every client recorded as connected through `broker` as
    /// disconnected by `cause`, now (or at its last activity, when later):
    /// the start-up recovery of a single node. One command of the writer,
    /// which reads each record once and commits in group commits of the
    /// usual size; answered once all of them are durable, with the newest
    /// revision. A failure part way leaves the commits before it (each
    /// whole), and the clients they ended are no longer connected, so a
    /// second call does the rest. (A cluster ends a broker through its log,
    /// [`Write::EndBroker`].)
    pub async fn end_connected(
        &self,
        broker: &str,
        cause: crate::domain::DisconnectCause,
    ) -> Result<Revision, StoreError> {
        let broker = broker.to_owned();
        self.request(|ack| writer::Command::EndBroker { broker, cause, ack })
            .await
    }

    /// [`Store::commit_events`], answered on a cluster node once the log
    /// holds the events durably (on a quorum of its servers), without
    /// waiting for this node to apply them: what the embedded broker needs
    /// before a CONNACK, and no more, so that a node slow to apply (its
    /// consumer recovering from a lost NATS server) does not hold
    /// connects. The revision answered is then the committed one.
    pub async fn commit_events_stored(
        &self,
        events: Vec<LifecycleEvent>,
    ) -> Result<Revision, StoreError> {
        if let Some(sequencer) = self.sequencer() {
            if let Some(refusal) = self.recording().refusal() {
                return Err(refusal);
            }
            return sequencer.submit_stored(Write::Events(events)).await;
        }
        self.commit_events(events).await
    }

    /// Deletes the record and the log of one client.
    pub async fn delete_state(&self, client: ClientId) -> Result<Revision, StoreError> {
        if let Some(sequencer) = self.sequencer() {
            if self.get_state(&client)?.is_none() {
                return Err(StoreError::NotFound);
            }
            return self.submit(sequencer, Write::Delete(client)).await;
        }
        self.request(|ack| writer::Command::Delete { client, ack })
            .await
    }

    /// Stores new settings; turning the feature off deletes all client data.
    pub async fn update_settings(&self, settings: Settings) -> Result<Revision, StoreError> {
        if let Some(sequencer) = self.sequencer() {
            return self.submit(sequencer, Write::Settings(settings)).await;
        }
        self.request(|ack| writer::Command::PutSettings { settings, ack })
            .await
    }

    /// Makes the store one replica of a cluster's log: from now on its
    /// writes go to `sequencer`, which hands them back through
    /// [`Store::apply`] in the log's order. Set once, before any write.
    ///
    /// A replica does not flush each commit: the cluster's log holds every
    /// write durably, and after a crash the node applies again from the
    /// position it last flushed (sled flushes every half second), reaching
    /// the same records and revisions.
    pub fn set_sequencer(&self, sequencer: Arc<dyn Sequencer>) {
        let _ = self.inner.sequencer.set(sequencer);
        self.inner.log.set_flush_each(false);
    }

    fn sequencer(&self) -> Option<Arc<dyn Sequencer>> {
        self.inner.sequencer.get().cloned()
    }

    async fn submit(
        &self,
        sequencer: Arc<dyn Sequencer>,
        write: Write,
    ) -> Result<Revision, StoreError> {
        if let Some(refusal) = self.recording().refusal() {
            return Err(refusal);
        }
        sequencer.submit(write).await
    }

    /// Applies one write of the replicated log, as the log ordered it and at
    /// the commit time it gave it, with `meta` written in the same commit;
    /// `ack` hears the result once it is durable here. Returns once the
    /// writer has the write (it waits while the writer is busy).
    /// `position` is the write's place in the log and `previous` the place
    /// of the write before it: the writer applies it only right after that
    /// one, and answers [`StoreError::Unavailable`] otherwise (writes sent
    /// before an earlier commit failed); the applier then starts again from
    /// [`Store::applied_position`].
    pub async fn apply(
        &self,
        write: Write,
        commit_time: crate::domain::Timestamp,
        meta: Vec<MetaWrite>,
        (position, previous): (LogPosition, LogPosition),
        ack: WriteAck,
    ) -> Result<(), StoreError> {
        let commands = self.commands.as_ref().ok_or(StoreError::Closed)?;
        commands
            .send(writer::Command::Apply {
                write,
                commit_time,
                meta,
                position,
                previous,
                ack,
            })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Writes a snapshot of the whole store to `path` (see [`snapshot`]):
    /// the writer commits what it holds, writes the overlay back and copies
    /// the tree before it takes the next command. Returns the log position
    /// the snapshot stands at and its records.
    pub async fn export_snapshot(
        &self,
        path: std::path::PathBuf,
    ) -> Result<(LogPosition, u64), StoreError> {
        let commands = self.commands.as_ref().ok_or(StoreError::Closed)?;
        let (ack, done) = oneshot::channel();
        commands
            .send(writer::Command::Snapshot { path, ack })
            .await
            .map_err(|_| StoreError::Closed)?;
        done.await.map_err(|_| StoreError::Closed)?
    }

    /// How far the replicated log is durably applied here.
    pub fn applied_position(&self) -> Result<LogPosition, StoreError> {
        match self.meta(keys::APPLIED_POSITION)? {
            Some(bytes) => keys::decode_position(&bytes)
                .ok_or_else(|| StoreError::Corrupt("applied log position".into())),
            None => Ok((0, 0)),
        }
    }

    /// A metadata value kept by the store for others (the cluster's
    /// position in its log, its node table): `mcluster/` + `name`.
    pub fn meta(&self, name: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .inner
            .db
            .get(keys::meta_cluster(name))?
            .map(|v| v.to_vec()))
    }

    /// The key of [`Store::meta`] `name`, for a [`MetaWrite`].
    pub fn meta_key(name: &[u8]) -> Vec<u8> {
        keys::meta_cluster(name)
    }

    /// Every metadata value whose name starts with `prefix`.
    pub fn meta_scan(&self, prefix: &[u8]) -> Result<Vec<MetaValue>, StoreError> {
        let full = keys::meta_cluster(prefix);
        let skip = keys::meta_cluster(b"").len();
        self.inner
            .db
            .scan_prefix(&full)
            .map(|item| {
                let (k, v) = item?;
                Ok((k[skip..].to_vec(), v.to_vec()))
            })
            .collect()
    }

    /// Waits until the committed revision is at least `revision`, at most
    /// `limit`; returns the committed revision then (below `revision` when
    /// the wait ran out).
    pub async fn wait_for_revision(&self, revision: Revision, limit: Duration) -> Revision {
        let mut watch = self.inner.revision_watch.subscribe();
        let reached = tokio::time::timeout(limit, watch.wait_for(|r| *r >= revision)).await;
        match reached {
            Ok(Ok(r)) => *r,
            _ => self.committed_revision(),
        }
    }

    /// Drops the failure markers of those of `clients` that have no record
    /// and no failed connect left in their log (see
    /// [`Store::retention_pass`]); returns how many it dropped.
    async fn drop_failure_markers(&self, clients: Vec<ClientId>) -> Result<usize, StoreError> {
        let dropped = self
            .request(|ack| writer::Command::DropFailureMarkers { clients, ack })
            .await?;
        Ok(usize::try_from(dropped).unwrap_or(usize::MAX))
    }

    async fn request(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<Revision, StoreError>>) -> writer::Command,
    ) -> Result<Revision, StoreError> {
        if let Some(refusal) = self.recording().refusal() {
            return Err(refusal);
        }
        let commands = self.commands.as_ref().ok_or(StoreError::Closed)?;
        let (ack, done) = oneshot::channel();
        commands
            .send(command(ack))
            .await
            .map_err(|_| StoreError::Closed)?;
        done.await.map_err(|_| StoreError::Closed)?
    }

    /// Stops the writer after the commands already sent, then the
    /// write-back after a last one, and flushes.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.inner.closed.store(true, Ordering::Release);
        let (ack, done) = oneshot::channel();
        if let Some(commands) = &self.commands
            && commands
                .send(writer::Command::Shutdown { ack })
                .await
                .is_ok()
        {
            let _ = done.await;
        }
        let thread = self.inner.writer_thread.lock().expect("writer lock").take();
        if let Some(thread) = thread {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .ok();
        }
        self.inner.pacer.stop();
        let thread = self
            .inner
            .write_back_thread
            .lock()
            .expect("write-back lock")
            .take();
        if let Some(thread) = thread {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .ok();
        }
        let thread = self
            .inner
            .space_thread
            .lock()
            .expect("space probe lock")
            .take();
        if let Some(thread) = thread {
            thread.thread().unpark();
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .ok();
        }
        // Whatever is left (a second close, a write-back thread that died).
        let store = self.clone();
        let _ = tokio::task::spawn_blocking(move || store.write_back_now()).await;
        self.inner.db.flush_async().await?;
        // Nothing writes any more: the indexes match the committed revision.
        if self.can_record() {
            let store = self.clone();
            let saved = tokio::task::spawn_blocking(move || store.checkpoint()).await;
            if let Ok(Err(e)) = saved {
                tracing::warn!(error = %e, "could not save the index snapshot; the next start rebuilds it");
            }
        }
        Ok(())
    }

    /// The end of a store whose last handle was dropped without a close,
    /// on the writer thread once its channel has closed: the write-back
    /// thread stops after a last write-back, then the store is flushed and
    /// its indexes checkpointed, as at a close.
    fn finish_after_last_handle(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.pacer.stop();
        let thread = self
            .inner
            .write_back_thread
            .lock()
            .expect("write-back lock")
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        // Whatever is left (a write-back thread that died).
        self.write_back_now();
        if let Err(e) = self.inner.db.flush() {
            tracing::warn!(error = %e, "flushing the store after its last handle went failed");
            return;
        }
        if self.can_record()
            && let Err(e) = self.checkpoint()
        {
            tracing::warn!(error = %e, "could not save the index snapshot; the next start rebuilds it");
        }
    }

    /// Replays the commits of the log after the materialised position (left
    /// by a crash) and writes them back, before anything reads or writes.
    /// Returns the number of changes replayed.
    fn replay_log_tail(&self) -> Result<usize, StoreError> {
        let from = self.inner.materialised.load(Ordering::Acquire);
        let commits = self
            .inner
            .log
            .read_commits(from, self.committed_revision(), usize::MAX)?;
        let mut replayed = 0;
        for commit in &commits {
            replayed += commit.len();
            self.overlay_mut().add_commit(commit);
        }
        if replayed > 0 {
            tracing::warn!(
                from,
                to = self.committed_revision(),
                changes = replayed,
                "replaying the change log after an unclean stop"
            );
            self.write_back()?;
            self.inner.db.flush()?;
        }
        Ok(replayed)
    }

    fn overlay(&self) -> std::sync::RwLockReadGuard<'_, overlay::Overlay> {
        self.inner.overlay.read().expect("overlay lock")
    }

    fn overlay_mut(&self) -> std::sync::RwLockWriteGuard<'_, overlay::Overlay> {
        self.inner.overlay.write().expect("overlay lock")
    }

    /// The write-back thread: writes the overlay back every
    /// [`overlay::WRITE_BACK_INTERVAL`], or when the writer wakes it, until
    /// the store closes (after a last write-back) or its last handle is
    /// dropped.
    fn run_write_back(inner: std::sync::Weak<Inner>, pacer: Arc<Pacer>) {
        loop {
            let stop = pacer.wait(overlay::WRITE_BACK_INTERVAL);
            let Some(inner) = inner.upgrade() else {
                return;
            };
            Store::internal_of(inner).write_back_now();
            pacer.drained.notify_all();
            if stop {
                return;
            }
            crate::idle::idle();
        }
    }

    /// Writes the overlay back unless the store cannot record; a failure
    /// stops all recording.
    fn write_back_now(&self) {
        if self.recording().refusal().is_some() {
            return;
        }
        if let Err(e) = self.write_back() {
            tracing::error!(error = %e, "writing the change log back failed; refusing further writes");
            self.mark_failed();
        }
    }

    /// Blocks the writer until the overlay holds fewer than
    /// [`overlay::MAX_CHANGES`] changes besides those a write-back is
    /// writing (or no write-back can run).
    fn wait_for_write_back(&self) {
        loop {
            if self.overlay_waiting() < overlay::MAX_CHANGES
                || self.recording().refusal().is_some()
                || self.inner.hold_write_back.load(Ordering::Acquire)
                || !self.inner.pacer.running()
            {
                return;
            }
            self.inner.pacer.wake();
            self.inner
                .pacer
                .wait_drained(overlay::WRITE_BACK_INTERVAL / 4);
        }
    }

    /// Changes the overlay holds that no write-back has taken yet.
    fn overlay_waiting(&self) -> usize {
        let writing = self.inner.writing_back.load(Ordering::Acquire);
        self.overlay().changes.saturating_sub(writing)
    }

    fn lock_write_back(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner.write_back_lock.lock().expect("write-back lock")
    }

    /// Writes the overlay back to sled in one batch, with the materialised
    /// position (not flushed: the log holds it all).
    fn write_back(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.lock_write_back();
        self.write_back_locked()
    }

    /// [`Store::write_back`], for the holder of [`Store::lock_write_back`].
    /// Readers see the overlay throughout; commits go on meanwhile and stay
    /// in the overlay for the next write-back.
    fn write_back_locked(&self) -> Result<(), StoreError> {
        if self.inner.hold_write_back.load(Ordering::Acquire) {
            return Ok(());
        }
        if self.overlay().is_empty() {
            return Ok(());
        }
        let db = &self.inner.db;
        let made = overlay::write_back(
            &self.inner.overlay,
            db,
            |changes| {
                self.inner.writing_back.store(changes, Ordering::Release);
                // A writer waiting for room goes on.
                self.inner.pacer.drained.notify_all();
                #[cfg(test)]
                self.pause_write_back_at(WriteBackStep::Taken);
            },
            |batch| Ok(db.apply_batch(batch)?),
        );
        let written = match made {
            Ok(written) => written,
            Err(e) => {
                self.inner.writing_back.store(0, Ordering::Release);
                return Err(e);
            }
        };
        #[cfg(test)]
        self.pause_write_back_at(WriteBackStep::Applied);
        let position = written.position;
        let grown = self.overlay_mut().trim(written);
        self.inner.writing_back.store(0, Ordering::Release);
        self.inner.materialised.store(position, Ordering::Release);
        self.note_log_growth(grown);
        Ok(())
    }

    /// See `Inner::write_back_pause`.
    #[cfg(test)]
    fn pause_write_back_at(&self, step: WriteBackStep) {
        let mut pause = self.inner.write_back_pause.lock().expect("pause lock");
        if pause.as_ref().is_some_and(|(at, _)| *at == step)
            && let Some((_, (paused, go))) = pause.take()
        {
            drop(pause);
            let _ = paused.send(());
            let _ = go.recv_timeout(Duration::from_secs(30));
        }
    }

    /// The newest revision written back to sled.
    pub(crate) fn materialised_revision(&self) -> Revision {
        self.inner.materialised.load(Ordering::Acquire)
    }

    /// Committed changes the write-back has not put into the state records
    /// and logs yet: what a crash restart would replay. Reads never wait
    /// for it (the overlay serves them); a backlog that stays high means
    /// sled takes less than the commits bring.
    pub fn write_back_pending(&self) -> u64 {
        self.committed_revision()
            .saturating_sub(self.materialised_revision())
    }

    /// The record of one client.
    pub fn get_state(&self, client: &ClientId) -> Result<Option<ConnectionState>, StoreError> {
        let key = keys::state(client);
        if let Some(state) = self.overlay().states.get(&key) {
            return state.as_deref().map(codec::decode_state).transpose();
        }
        match self.inner.db.get(key)? {
            Some(v) => Ok(Some(codec::decode_state(&v)?)),
            None => Ok(None),
        }
    }

    /// Ids of every client recorded as connected.
    pub fn connected_clients(&self) -> Result<Vec<ClientId>, StoreError> {
        let status = keys::status_byte(crate::domain::ConnectionStatus::Connected);
        let start = vec![keys::BY_STATUS, status];
        let end = keys::prefix_end(&start).expect("status prefix has an end");
        let mut lower = std::ops::Bound::Included(start);
        let upper = std::ops::Bound::Excluded(end);
        let mut clients = Vec::new();
        loop {
            let chunk = self.inner.index.chunk(&lower, &upper, false);
            let Some(last) = chunk.last() else {
                return Ok(clients);
            };
            lower = std::ops::Bound::Excluded(last.to_vec());
            for key in &chunk {
                let id = keys::client_of_index(key)
                    .and_then(|id| ClientId::new(id).ok())
                    .ok_or_else(|| StoreError::Corrupt("index".into()))?;
                clients.push(id);
            }
        }
    }

    /// Stores the lease of `holder` (a broker or node) with its duration,
    /// durably. Only the duration is kept: after a restart every lease runs
    /// again from the start.
    pub fn put_lease(&self, holder: &str, duration: Duration) -> Result<(), StoreError> {
        if let Some(refusal) = self.recording().refusal() {
            return Err(refusal);
        }
        let mut key = vec![keys::LEASE];
        key.extend_from_slice(holder.as_bytes());
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        self.inner.db.insert(key, &ms.to_be_bytes())?;
        self.inner.db.flush()?;
        Ok(())
    }

    /// Forgets the lease of `holder`.
    pub fn remove_lease(&self, holder: &str) -> Result<(), StoreError> {
        let mut key = vec![keys::LEASE];
        key.extend_from_slice(holder.as_bytes());
        self.inner.db.remove(key)?;
        self.inner.db.flush()?;
        Ok(())
    }

    /// Every stored lease: holder and duration.
    pub fn leases(&self) -> Result<Vec<(String, Duration)>, StoreError> {
        Ok(self
            .replicated_leases()?
            .into_iter()
            .map(|(holder, duration, _)| (holder, duration))
            .collect())
    }

    /// Every stored lease: holder, duration and, for the leases of a
    /// replicated log, the commit time (Unix milliseconds) of its last
    /// renewal.
    pub fn replicated_leases(&self) -> Result<Vec<(String, Duration, Option<i64>)>, StoreError> {
        let mut leases = Vec::new();
        for item in self.inner.db.scan_prefix([keys::LEASE]) {
            let (key, value) = item?;
            let holder = String::from_utf8(key[1..].to_vec())
                .map_err(|_| StoreError::Corrupt("lease holder".into()))?;
            let (duration, renewed) =
                keys::decode_lease(&value).ok_or_else(|| StoreError::Corrupt("lease".into()))?;
            leases.push((holder, duration, renewed));
        }
        Ok(leases)
    }

    /// Whether the store is one replica of a cluster's log.
    pub fn is_replica(&self) -> bool {
        self.inner.sequencer.get().is_some()
    }

    /// Submits a write of a replicated log (lease renewals and lapses,
    /// which a single node keeps in memory). Outside a cluster there is
    /// nothing to submit to.
    pub async fn submit_replicated(&self, write: Write) -> Result<Revision, StoreError> {
        match self.sequencer() {
            Some(sequencer) => self.submit(sequencer, write).await,
            None => Err(StoreError::Unavailable("not a cluster node".into())),
        }
    }

    /// The oldest revision still in the change feed, if any.
    pub fn oldest_feed_revision(&self) -> Result<Option<Revision>, StoreError> {
        self.inner.log.first_revision()
    }

    /// Committed changes after `after`, oldest first: at least one whole
    /// commit, and no more commits once `limit` changes are reached.
    pub fn changes_after(&self, after: Revision, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.inner
            .log
            .read_after(after, self.committed_revision(), limit)
    }

    /// Rebuilds the in-memory indexes from the state records.
    fn rebuild_index(&self) -> Result<(), StoreError> {
        let mut keys = Vec::new();
        for item in self.inner.db.scan_prefix([keys::STATE]) {
            let (_, value) = item?;
            keys.extend(index::keys_of_stored(&value)?);
            if keys.len() >= 64 * 1024 {
                self.inner.index.insert_all(keys.drain(..));
            }
        }
        self.inner.index.insert_all(keys);
        Ok(())
    }

    /// Number of state records.
    pub fn count_states(&self) -> usize {
        self.inner.index.records()
    }

    fn mark_failed(&self) {
        self.inner.recording.send_replace(Recording::Failed);
        // The indexes may hold keys of the commit that failed, which no
        // later change accounts for: the next start rebuilds them.
        index::StateIndex::discard_snapshot(&self.inner.path);
    }

    /// Checkpoints the in-memory indexes (see [`index`]): a crash restart
    /// then loads them and brings them up to date from the log, instead of
    /// reading every record. Returns the revision checkpointed.
    pub fn checkpoint(&self) -> std::io::Result<Revision> {
        self.inner
            .index
            .save_snapshot(&self.inner.path, || self.committed_revision())
    }

    /// Loads the newest index checkpoint and brings it up to date with the
    /// changes the log holds after it. `false` when there is none to use
    /// (none, damaged, or older than the log reaches back).
    fn load_index_checkpoint(&self) -> Result<bool, StoreError> {
        let committed = self.committed_revision();
        let Some(stamp) = self.inner.index.load_snapshot(&self.inner.path, committed) else {
            return Ok(false);
        };
        if stamp < committed {
            let reaches = self.inner.log.first_revision()?;
            if reaches.is_none_or(|first| first > stamp + 1) {
                self.inner.index.clear();
                return Ok(false);
            }
            let mut changed: Vec<ClientId> = self
                .inner
                .log
                .read_after(stamp, committed, usize::MAX)?
                .into_iter()
                .filter_map(|c| c.client_id)
                .collect();
            changed.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
            changed.dedup();
            let now = changed
                .into_iter()
                .map(|c| {
                    let state = self.get_state(&c)?;
                    Ok((c, state))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            self.inner.index.refresh(&now);
        }
        Ok(true)
    }

    fn set_settings(&self, settings: Settings) {
        *self.inner.settings.write().expect("settings lock") = settings;
    }

    fn note_log_growth(&self, clients: impl IntoIterator<Item = ClientId>) {
        self.inner
            .grown_logs
            .lock()
            .expect("grown logs lock")
            .extend(clients);
    }

    fn take_grown_logs(&self) -> HashSet<ClientId> {
        std::mem::take(&mut *self.inner.grown_logs.lock().expect("grown logs lock"))
    }

    /// Settings as the store keeps them (and a replicated log carries them).
    pub fn encode_settings(settings: &Settings) -> Vec<u8> {
        codec::SettingsRecord::from(settings).encode_to_vec()
    }

    /// The settings [`Store::encode_settings`] wrote.
    pub fn decode_settings(bytes: &[u8]) -> Result<Settings, StoreError> {
        Ok(Settings::from(codec::decode::<codec::SettingsRecord>(
            bytes,
        )?))
    }
}

#[cfg(test)]
impl Store {
    /// Waits, at most `limit`, until every commit is written back (tests).
    async fn written_back(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.write_back_pending() > 0 {
            assert!(std::time::Instant::now() < deadline, "no write-back");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Where a write-back stops (see `Inner::write_back_pause`).
#[cfg(test)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum WriteBackStep {
    /// It has taken the overlay's changes; no batch is made yet.
    Taken,
    /// Its batches are in sled (and its records and entries out of the
    /// overlay); its deletions and counts are not trimmed yet.
    Applied,
}

/// See `Inner::write_back_pause`.
#[cfg(test)]
type WriteBackPause = (std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>);

/// Wakes the write-back thread (a bound passed, the store closing) and the
/// writer waiting for a write-back to finish.
#[derive(Default)]
struct Pacer {
    state: Mutex<PacerState>,
    wake: std::sync::Condvar,
    drained: std::sync::Condvar,
}

#[derive(Default)]
struct PacerState {
    woken: bool,
    stopped: bool,
}

impl Pacer {
    fn lock(&self) -> std::sync::MutexGuard<'_, PacerState> {
        self.state.lock().expect("pacer lock")
    }

    /// Starts a write-back now.
    fn wake(&self) {
        self.lock().woken = true;
        self.wake.notify_one();
    }

    /// Makes the write-back thread do a last write-back and stop.
    fn stop(&self) {
        self.lock().stopped = true;
        self.wake.notify_one();
    }

    fn running(&self) -> bool {
        !self.lock().stopped
    }

    /// Waits until woken, stopped or `interval` passed; true when stopped.
    fn wait(&self, interval: Duration) -> bool {
        let state = self.lock();
        let (mut state, _) = self
            .wake
            .wait_timeout_while(state, interval, |s| !s.woken && !s.stopped)
            .expect("pacer lock");
        state.woken = false;
        state.stopped
    }

    /// Waits for the end of a write-back, at most `timeout`.
    fn wait_drained(&self, timeout: Duration) {
        let state = self.lock();
        let _ = self
            .drained
            .wait_timeout(state, timeout)
            .expect("pacer lock");
    }
}
