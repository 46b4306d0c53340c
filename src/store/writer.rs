//! The single writer: the only code that writes client data.
//!
//! Commands arrive on a channel. The writer takes every command waiting (up
//! to a bound on events), runs each event through [`rules::apply`]
//! with the next revision, and applies the group as one sled batch followed
//! by one flush. Only after the flush does it publish the new committed
//! revision, send the changes to the live feed and acknowledge the commands:
//! nobody hears of a change that a crash could still lose.
//!
//! A group commit appends one record to the change log (the feed record:
//! each change with its state after and its log entry) and flushes; that
//! is all it writes. The commit then goes to the overlay; the write-back
//! thread writes it back to the state records, per-client log entries and
//! log batch records behind the writer ([`super::overlay`]). The writer
//! only waits for it when the overlay has grown past its bound.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use chrono::Utc;
use tokio::sync::{mpsc, oneshot};

use super::{
    LogPosition, MetaWrite, Settings, Store, StoreError, Write, codec, index, keys, log::Log,
    overlay,
};
use crate::{
    domain::{
        Change, ChangeKind, ClientId, ConnectionState, ConnectionStatus, EventKind, LifecycleEvent,
        Revision, Timestamp, WireForms,
    },
    rules,
};

type Ack = oneshot::Sender<Result<Revision, StoreError>>;

pub(super) enum Command {
    Events {
        events: Vec<LifecycleEvent>,
        ack: Ack,
    },
    Delete {
        client: ClientId,
        ack: Ack,
    },
    PutSettings {
        settings: Settings,
        ack: Ack,
    },
    /// Every client connected through `broker` ends by `cause`
    /// ([`Store::end_connected`]).
    EndBroker {
        broker: String,
        cause: crate::domain::DisconnectCause,
        ack: Ack,
    },
    /// A write of the replicated log ([`Store::apply`]).
    Apply {
        write: Write,
        commit_time: Timestamp,
        meta: Vec<MetaWrite>,
        /// Where it is in the log, and the position before it: applied
        /// only right after that one.
        position: LogPosition,
        previous: LogPosition,
        ack: Ack,
    },
    /// Writes a snapshot of the store ([`Store::export_snapshot`]).
    Snapshot {
        path: std::path::PathBuf,
        ack: oneshot::Sender<Result<(LogPosition, u64), StoreError>>,
    },
    /// Drops the failure markers of those of `clients` without a record
    /// or a failed connect in their log; answers how many (not a revision:
    /// nothing is committed).
    DropFailureMarkers {
        clients: Vec<ClientId>,
        ack: Ack,
    },
    Shutdown {
        ack: Ack,
    },
}

/// The commit time of a change made now, in milliseconds as the change log
/// keeps it: a watcher hears the same time whether a change reaches it live
/// or read back from the log.
fn commit_time() -> Timestamp {
    crate::domain::truncate_to_millis(Utc::now())
}

/// Changes from which a group commit appends to the log on a thread of its
/// own, beside the rest of its work.
const PARALLEL_COMMIT: usize = 1024;

/// Changes per group commit when a broker's clients are all ended at once
/// (at least): each commit waits for its flush, and there is nothing else
/// to group them with.
const END_BROKER_COMMIT: usize = 32 * 1024;

/// Records from which [`Writer::read_states`] reads on several threads.
const PARALLEL_READS: usize = 4096;

/// Index keys.
type Keys = Vec<Box<[u8]>>;

/// The index keys a commit adds and removes.
fn index_changes(touched: &HashMap<ClientId, Touched>, changes: &[Arc<Change>]) -> (Keys, Keys) {
    let mut added = Vec::new();
    let mut removed = Vec::new();
    for t in touched.values() {
        index::changed_keys(
            t.before.as_ref(),
            t.after(changes),
            &mut added,
            &mut removed,
        );
    }
    (added, removed)
}

/// Keys deleted per batch when clearing all data.
const CLEAR_CHUNK: usize = 10_000;

/// A record before the open batch and as the batch leaves it.
#[derive(Clone)]
struct Touched {
    before: Option<ConnectionState>,
    /// The position in the batch's changes of the newest change of the
    /// client, whose state is the record as the batch leaves it (kept
    /// there, not copied).
    after: usize,
}

impl Touched {
    fn after<'a>(&self, changes: &'a [Arc<Change>]) -> Option<&'a ConnectionState> {
        changes.get(self.after).and_then(|c| c.state.as_ref())
    }
}

/// What one command has done to the open batch so far, to take it back if
/// a later event of the command fails.
struct Staged {
    /// The writer's revision and change count before it.
    revision: Revision,
    changes: usize,
    /// Each client it touched, as the batch had it before (`None`: not
    /// touched before), in the order touched (a client touched twice is
    /// here twice; taken back in reverse, the first one wins).
    touched: Vec<(ClientId, Option<Touched>)>,
}

pub(super) struct Writer {
    /// An internal handle ([`Store::internal`]): no sender of the writer's
    /// own commands, so that the writer ends once every outside handle is
    /// gone.
    store: Store,
    /// The last revision handed out (committed or in the open batch).
    revision: Revision,
    max_batch_events: usize,
    /// Metadata written with the open commit.
    batch: sled::Batch,
    touched: HashMap<ClientId, Touched>,
    changes: Vec<Arc<Change>>,
    /// Where each client's failed connects and deletions sit in `changes`,
    /// in order: what [`Writer::logged_failures`] reads, found without
    /// scanning a large batch (and nothing kept for the other changes).
    client_changes: HashMap<ClientId, Vec<usize>>,
    acks: Vec<(Ack, Result<Revision, StoreError>)>,
    /// Committed records the running command has read already (ending a
    /// broker reads each record to make its disconnect), so that applying
    /// its events does not read them again. Empty between commands.
    read: HashMap<ClientId, ConnectionState>,
    /// The open batch holds metadata to write even with no change.
    meta_pending: bool,
    /// Clients without a record whose log may hold failed connects, each
    /// with its marker in sled ([`keys::failed_only`], written with the
    /// commit): the first record of any other client counts no earlier
    /// failure without reading its log. `None` in a store made before the
    /// markers existed, where every first record reads the log.
    failed_only: Option<HashSet<ClientId>>,
    /// How far the replicated log is applied: durably, and in the open
    /// batch (read from the store at the first replicated write).
    replica: Option<(LogPosition, LogPosition)>,
}

impl Writer {
    pub(super) fn new(store: Store, committed: Revision, max_batch_events: usize) -> Writer {
        Writer {
            store,
            revision: committed,
            max_batch_events: max_batch_events.max(1),
            batch: sled::Batch::default(),
            touched: HashMap::new(),
            changes: Vec::new(),
            client_changes: HashMap::new(),
            acks: Vec::new(),
            read: HashMap::new(),
            meta_pending: false,
            failed_only: None,
            replica: None,
        }
    }

    /// Takes commands until a [`Command::Shutdown`] (the store's close does
    /// the rest) or until the channel closes: every handle of the store is
    /// gone (the writer holds none that sends), and the writer ends the
    /// store itself.
    pub(super) fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let first = match commands.try_recv() {
                Ok(command) => command,
                Err(mpsc::error::TryRecvError::Empty) => {
                    crate::idle::idle();
                    match commands.blocking_recv() {
                        Some(command) => command,
                        None => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            };
            let mut group = vec![first];
            let mut events = 0;
            while events < self.max_batch_events {
                match commands.try_recv() {
                    Ok(command) => {
                        if let Command::Events { events: e, .. } = &command {
                            events += e.len();
                        }
                        group.push(command);
                    }
                    Err(_) => break,
                }
            }
            for command in group {
                if let ControlFlow::Stop = self.handle(command) {
                    // The store's close writes the overlay back.
                    self.commit();
                    return;
                }
            }
            self.commit();
            let waiting = self.store.overlay_waiting();
            if waiting >= overlay::WRITE_BACK_CHANGES {
                self.store.inner.pacer.wake();
            }
            if waiting >= overlay::MAX_CHANGES {
                self.store.wait_for_write_back();
            }
        }
        self.store.finish_after_last_handle();
    }

    fn handle(&mut self, command: Command) -> ControlFlow {
        if let Some(refusal) = self.store.recording().refusal() {
            let ack = match command {
                Command::Events { ack, .. }
                | Command::EndBroker { ack, .. }
                | Command::Delete { ack, .. }
                | Command::PutSettings { ack, .. }
                | Command::DropFailureMarkers { ack, .. }
                | Command::Apply { ack, .. } => ack,
                Command::Shutdown { ack } => {
                    let _ = ack.send(Ok(self.revision));
                    return ControlFlow::Stop;
                }
                Command::Snapshot { ack, .. } => {
                    let _ = ack.send(Err(refusal));
                    return ControlFlow::Continue;
                }
            };
            let _ = ack.send(Err(refusal));
            return ControlFlow::Continue;
        }
        match command {
            Command::Events { events, ack } => {
                let result = self.apply_events(&events, commit_time());
                self.acks.push((ack, result));
            }
            Command::Apply {
                write,
                commit_time,
                meta,
                position,
                previous,
                ack,
            } => {
                let (durable, open) = match self.replica {
                    Some(replica) => replica,
                    None => match self.store.applied_position() {
                        Ok(at) => (at, at),
                        Err(e) => {
                            self.acks.push((ack, Err(e)));
                            return ControlFlow::Continue;
                        }
                    },
                };
                if previous != open {
                    // Sent before an earlier commit failed, or twice: the
                    // applier starts again from the durable position.
                    self.replica = Some((durable, open));
                    let out_of_order = format!(
                        "log position {position:?} does not follow {open:?}; applying again from {durable:?}"
                    );
                    self.acks
                        .push((ack, Err(StoreError::Unavailable(out_of_order))));
                    return ControlFlow::Continue;
                }
                self.replica = Some((durable, position));
                self.batch.insert(
                    keys::meta_cluster(keys::APPLIED_POSITION),
                    &keys::encode_position(position)[..],
                );
                let result = self.apply_write(write, commit_time);
                // The metadata goes with this commit whatever the write's
                // outcome: the log was applied this far either way.
                for (key, value) in meta {
                    match value {
                        Some(value) => self.batch.insert(key, value),
                        None => self.batch.remove(key),
                    }
                }
                self.meta_pending = true;
                self.acks.push((ack, result));
            }
            Command::EndBroker { broker, cause, ack } => {
                // The records as committed, read once each.
                self.commit();
                let result = self.end_broker_in_commits(&broker, &cause, commit_time());
                self.acks.push((ack, result));
            }
            Command::Delete { client, ack } => {
                // Deleting scans the client's log: commit the open batch
                // first so the scan sees everything.
                self.commit();
                let result = self.delete(&client, commit_time());
                self.acks.push((ack, result));
            }
            Command::PutSettings { settings, ack } => {
                self.commit();
                let result = self.put_settings(settings);
                self.acks.push((ack, result));
            }
            Command::Snapshot { path, ack } => {
                self.commit();
                let _ = ack.send(self.snapshot(&path));
            }
            Command::DropFailureMarkers { clients, ack } => {
                // The open batch may log a failure of one of them.
                self.commit();
                let dropped = self.drop_failure_markers(clients);
                let _ = ack.send(dropped.map(|n| n as Revision));
            }
            Command::Shutdown { ack } => {
                self.acks.push((ack, Ok(self.revision)));
                return ControlFlow::Stop;
            }
        }
        ControlFlow::Continue
    }

    /// Adds a change to the open batch.
    fn push_change(&mut self, change: Change) {
        let counted = matches!(change.kind, ChangeKind::ConnectFailed | ChangeKind::Deleted);
        if counted && let Some(client) = &change.client_id {
            self.client_changes
                .entry(client.clone())
                .or_default()
                .push(self.changes.len());
        }
        self.changes.push(Arc::new(change));
    }

    fn current(&mut self, client: &ClientId) -> Result<Option<ConnectionState>, StoreError> {
        match self.touched.get(client) {
            Some(t) => Ok(t.after(&self.changes).cloned()),
            None => match self.read.remove(client) {
                Some(state) => Ok(Some(state)),
                // A client seen for the first time: not looked up in sled.
                None if !self.store.inner.index.may_have_record(client) => Ok(None),
                None => self.store.get_state(client),
            },
        }
    }

    /// Records that the batch leaves `client` at `after`.
    fn touch(&mut self, client: &ClientId, before: Option<ConnectionState>, after: usize) {
        match self.touched.entry(client.clone()) {
            std::collections::hash_map::Entry::Occupied(mut t) => t.get_mut().after = after,
            std::collections::hash_map::Entry::Vacant(t) => {
                t.insert(Touched { before, after });
            }
        }
    }

    /// Applies one command's events, all or nothing: when one fails, the
    /// events before it in the same command are taken back (no record, no
    /// revision, no change), while other commands of the group commit are
    /// unaffected.
    fn apply_events(
        &mut self,
        events: &[LifecycleEvent],
        commit_time: Timestamp,
    ) -> Result<Revision, StoreError> {
        if !self.store.settings().enabled {
            return Err(StoreError::Disabled);
        }
        let mut staged = Staged {
            revision: self.revision,
            changes: self.changes.len(),
            touched: Vec::new(),
        };
        self.touched.reserve(events.len());
        match self.stage_events(events, &mut staged, commit_time) {
            Ok(last) => Ok(last),
            Err(e) => {
                self.revision = staged.revision;
                self.changes.truncate(staged.changes);
                for event in events {
                    if let Some(at) = self.client_changes.get_mut(&event.client_id) {
                        at.retain(|&i| i < staged.changes);
                        if at.is_empty() {
                            self.client_changes.remove(&event.client_id);
                        }
                    }
                }
                for (client, touched) in staged.touched.into_iter().rev() {
                    match touched {
                        Some(t) => self.touched.insert(client, t),
                        None => self.touched.remove(&client),
                    };
                }
                Err(e)
            }
        }
    }

    fn stage_events(
        &mut self,
        events: &[LifecycleEvent],
        staged: &mut Staged,
        commit_time: Timestamp,
    ) -> Result<Revision, StoreError> {
        let mut last = self.revision;
        for event in events {
            let current = self.current(&event.client_id)?;
            let revision = self.revision + 1;
            let Some(mut outcome) = rules::apply(current.as_ref(), event, revision) else {
                continue;
            };
            if rules::creates_first_record(current.as_ref(), event) {
                let earlier = self.logged_failures(&event.client_id)?;
                rules::count_earlier_failures(&mut outcome, earlier);
            }
            self.revision = revision;
            last = revision;
            let state = match outcome.state {
                Some(state) => {
                    staged.touched.push((
                        event.client_id.clone(),
                        self.touched.get(&event.client_id).cloned(),
                    ));
                    // The change below holds the state.
                    self.touch(&event.client_id, current, self.changes.len());
                    Some(state)
                }
                None => current,
            };
            self.push_change(Change {
                revision,
                kind: outcome.kind,
                client_id: Some(event.client_id.clone()),
                state,
                log_entry: outcome.log_entry,
                commit_time,
                wire: WireForms::default(),
            });
        }
        Ok(last)
    }

    /// The failed connects in `client`'s log, committed (in sled and the
    /// overlay) and in the open batch, for a client without a record (its
    /// log holds nothing else of note). A deletion removes what came before
    /// it.
    fn logged_failures(&self, client: &ClientId) -> Result<u64, StoreError> {
        let mut failures = 0;
        let in_batch = self
            .client_changes
            .get(client)
            .map_or(&[][..], Vec::as_slice);
        // Positions are taken back with a failed command; checking the
        // client as well keeps a stale one harmless.
        let own = in_batch
            .iter()
            .rev()
            .filter_map(|&i| self.changes.get(i))
            .filter(|c| c.client_id.as_ref() == Some(client));
        for change in own {
            match change.kind {
                ChangeKind::ConnectFailed => failures += 1,
                ChangeKind::Deleted => return Ok(failures),
                _ => {}
            }
        }
        if self
            .failed_only
            .as_ref()
            .is_some_and(|marked| !marked.contains(client))
        {
            // Nothing committed: its log holds no failed connect.
            return Ok(failures);
        }
        let failed = |e: &crate::domain::LogEntry| e.kind == crate::domain::LogKind::ConnectFailed;
        let prefix = keys::client_log_prefix(client);
        let overlay = self.store.overlay();
        for (_, entry) in overlay
            .logs
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
        {
            if failed(&codec::decode_log(entry)?) {
                failures += 1;
            }
        }
        if overlay.deleted.contains_key(client) {
            return Ok(failures);
        }
        // A write-back may be putting the overlay's entries into sled right
        // now: count each entry once.
        for item in self.store.inner.db.scan_prefix(&prefix) {
            let (key, entry) = item?;
            if !overlay.logs.contains_key(key.as_ref()) && failed(&codec::decode_log(&entry)?) {
                failures += 1;
            }
        }
        Ok(failures)
    }

    /// Applies one write of the replicated log at the commit time the log
    /// gave it (see [`Write`]). Deletions, settings and the end of a broker
    /// read committed records: the open batch is committed first, as for
    /// the commands of a single node.
    fn apply_write(
        &mut self,
        write: Write,
        commit_time: Timestamp,
    ) -> Result<Revision, StoreError> {
        match write {
            Write::Events(events) => self.apply_events(&events, commit_time),
            Write::Delete(client) => {
                self.commit();
                self.delete(&client, commit_time)
            }
            Write::Settings(settings) => {
                self.commit();
                self.put_settings(settings)
            }
            Write::EndBroker { broker, cause } => {
                self.commit();
                self.end_broker(&broker, &cause, commit_time)
            }
            Write::RenewLease { holder, duration } => {
                self.batch.insert(
                    keys::lease(&holder),
                    keys::encode_lease(duration, Some(commit_time.timestamp_millis())),
                );
                self.meta_pending = true;
                Ok(self.revision)
            }
            Write::LapseLease { holder, renewed_ms } => {
                // A renewal in the open batch is newer than any lapse.
                self.commit();
                let key = keys::lease(&holder);
                let stored = self.store.inner.db.get(&key)?;
                let lease = stored.as_deref().and_then(keys::decode_lease);
                let Some((duration, Some(renewed))) = lease else {
                    return Ok(self.revision);
                };
                if renewed != renewed_ms {
                    return Ok(self.revision);
                }
                self.batch.remove(key);
                self.meta_pending = true;
                let cause = crate::domain::DisconnectCause::LeaseLapsed {
                    holder: holder.clone(),
                    lease_secs: duration.as_secs(),
                };
                tracing::warn!(
                    broker = %holder,
                    lease_secs = duration.as_secs(),
                    "broker {holder} stopped reporting: its lease lapsed; its connected clients are recorded as disconnected"
                );
                self.end_broker(&holder, &cause, commit_time)
            }
        }
    }

    /// Records every client connected through `broker` as disconnected.
    fn end_broker(
        &mut self,
        broker: &str,
        cause: &crate::domain::DisconnectCause,
        at: Timestamp,
    ) -> Result<Revision, StoreError> {
        let (events, states) = self.connected_through(broker, cause, at)?;
        if events.is_empty() {
            return Ok(self.revision);
        }
        self.apply_read(&events, states, at)
    }

    /// [`Writer::apply_events`] for events made from the committed records
    /// `states` (one each, in order), which it then does not read again.
    fn apply_read(
        &mut self,
        events: &[LifecycleEvent],
        states: impl IntoIterator<Item = ConnectionState>,
        at: Timestamp,
    ) -> Result<Revision, StoreError> {
        self.read = events
            .iter()
            .map(|e| e.client_id.clone())
            .zip(states)
            .collect();
        let applied = self.apply_events(events, at);
        self.read.clear();
        applied
    }

    /// [`Writer::end_broker`] in group commits of [`END_BROKER_COMMIT`]
    /// changes (a commit is one record of the change log, read whole by
    /// whoever replays it), the last one left open for the caller's
    /// acknowledgement. The write-back waits until they are all committed:
    /// the writer has both cores to itself meanwhile (a start-up recovery
    /// takes a few seconds), and what it committed is written back behind
    /// it, while the server already serves.
    fn end_broker_in_commits(
        &mut self,
        broker: &str,
        cause: &crate::domain::DisconnectCause,
        at: Timestamp,
    ) -> Result<Revision, StoreError> {
        let (events, states) = self.connected_through(broker, cause, at)?;
        let held = self
            .store
            .inner
            .hold_write_back
            .swap(true, std::sync::atomic::Ordering::AcqRel);
        let result = self.end_in_commits(events, states, at);
        if !held {
            self.store
                .inner
                .hold_write_back
                .store(false, std::sync::atomic::Ordering::Release);
            self.store.inner.pacer.wake();
        }
        result
    }

    /// Applies `events` (with the records they were made from) in commits
    /// of [`END_BROKER_COMMIT`], the last one left open.
    fn end_in_commits(
        &mut self,
        events: Vec<LifecycleEvent>,
        states: Vec<ConnectionState>,
        at: Timestamp,
    ) -> Result<Revision, StoreError> {
        let mut last = self.revision;
        let mut states = states.into_iter();
        let size = self.max_batch_events.max(END_BROKER_COMMIT);
        let mut chunks = events.chunks(size).peekable();
        while let Some(events) = chunks.next() {
            last = self.apply_read(events, states.by_ref(), at)?;
            if chunks.peek().is_some() {
                self.commit();
                if let Some(refusal) = self.store.recording().refusal() {
                    return Err(refusal);
                }
            }
        }
        Ok(last)
    }

    /// A disconnect by `cause` for every client recorded as connected
    /// through `broker`, in client id order, with the record it was made
    /// from.
    fn connected_through(
        &self,
        broker: &str,
        cause: &crate::domain::DisconnectCause,
        at: Timestamp,
    ) -> Result<(Vec<LifecycleEvent>, Vec<ConnectionState>), StoreError> {
        let mut events = Vec::new();
        let mut states = Vec::new();
        let broker_name: Arc<str> = Arc::from(broker);
        let mut clients = self.store.connected_clients()?;
        clients.sort();
        let read = self.read_states(&clients)?;
        for (client, state) in clients.into_iter().zip(read) {
            let Some(state) = state else {
                continue;
            };
            if state.status != ConnectionStatus::Connected || state.broker != broker {
                continue;
            }
            events.push(LifecycleEvent {
                time: at.max(state.last_activity_time),
                connection_id: state.connection_id,
                broker: broker_name.clone(),
                kind: EventKind::Disconnected(cause.clone()),
                peer: Some(std::net::SocketAddr::new(
                    state.connection.addr,
                    state.connection.port,
                )),
                client_id: client,
            });
            states.push(state);
        }
        Ok((events, states))
    }

    /// The committed records of `clients`, in order. Reads are independent
    /// of each other: a long list (every client a crash left connected) is
    /// read on as many threads as there are cores.
    fn read_states(
        &self,
        clients: &[ClientId],
    ) -> Result<Vec<Option<ConnectionState>>, StoreError> {
        let store = &self.store;
        let read = |part: &[ClientId]| -> Result<Vec<_>, StoreError> {
            part.iter().map(|client| store.get_state(client)).collect()
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if threads < 2 || clients.len() < PARALLEL_READS {
            return read(clients);
        }
        std::thread::scope(|scope| {
            let parts: Vec<_> = clients
                .chunks(clients.len().div_ceil(threads))
                .map(|part| scope.spawn(move || read(part)))
                .collect();
            let mut states = Vec::with_capacity(clients.len());
            for part in parts {
                states.extend(part.join().map_err(|_| StoreError::Failed)??);
            }
            Ok(states)
        })
    }

    fn delete(
        &mut self,
        client: &ClientId,
        commit_time: Timestamp,
    ) -> Result<Revision, StoreError> {
        if !self.store.settings().enabled {
            return Err(StoreError::Disabled);
        }
        let Some(old) = self.store.get_state(client)? else {
            return Err(StoreError::NotFound);
        };
        // The record and its log go when the deletion is written back; the
        // deletion below has no state.
        self.touch(client, Some(old), self.changes.len());
        self.revision += 1;
        self.push_change(Change {
            revision: self.revision,
            kind: ChangeKind::Deleted,
            client_id: Some(client.clone()),
            state: None,
            log_entry: None,
            commit_time,
            wire: WireForms::default(),
        });
        Ok(self.revision)
    }

    fn put_settings(&mut self, settings: Settings) -> Result<Revision, StoreError> {
        let was_enabled = self.store.settings().enabled;
        let db = &self.store.inner.db;
        db.insert(keys::META_SETTINGS, Store::encode_settings(&settings))?;
        if was_enabled && !settings.enabled {
            db.insert(keys::META_CLEARING, &[][..])?;
            db.flush()?;
            self.store.set_settings(settings);
            self.clear_all()?;
        } else {
            db.flush()?;
            self.store.set_settings(settings);
        }
        Ok(self.store.committed_revision())
    }

    /// Reads the failure markers (see `Writer::failed_only`); a new store
    /// starts keeping them.
    pub(super) fn load_failure_markers(&mut self) -> Result<(), StoreError> {
        let db = &self.store.inner.db;
        if db.get(keys::META_FAILURE_MARKERS)?.is_none() {
            if self.revision != 0 {
                // Made before the markers: some may be missing.
                return Ok(());
            }
            db.insert(keys::META_FAILURE_MARKERS, &[][..])?;
        }
        let mut clients = HashSet::new();
        for item in db.scan_prefix([keys::FAILED_ONLY]) {
            let (key, _) = item?;
            let client = std::str::from_utf8(&key[1..])
                .ok()
                .and_then(|id| ClientId::new(id).ok())
                .ok_or_else(|| StoreError::Corrupt("failure marker".into()))?;
            clients.insert(client);
        }
        self.failed_only = Some(clients);
        Ok(())
    }

    /// Drops the markers of those of `clients` that are marked, have no
    /// record and no failed connect in their log (in sled or still in the
    /// overlay). Called between commits: nothing of theirs is open.
    fn drop_failure_markers(&mut self, clients: Vec<ClientId>) -> Result<usize, StoreError> {
        let mut dropped = 0;
        for client in clients {
            let marked = self
                .failed_only
                .as_ref()
                .is_some_and(|marked| marked.contains(&client));
            if !marked
                || self.store.inner.index.may_have_record(&client)
                || self.logged_failures(&client)? > 0
            {
                continue;
            }
            // Lost in a crash, a marker comes back: it costs one log scan.
            self.store.inner.db.remove(keys::failed_only(&client))?;
            if let Some(marked) = &mut self.failed_only {
                marked.remove(&client);
            }
            dropped += 1;
        }
        Ok(dropped)
    }

    /// The failure markers `changes` set (`true`) or clear, in the store's
    /// terms: a failed connect of a client without a record sets its
    /// marker, a record or a deletion clears it.
    fn failure_markers(&self, changes: &[Arc<Change>]) -> Vec<(ClientId, bool)> {
        let Some(marked) = &self.failed_only else {
            return Vec::new();
        };
        let mut net: HashMap<&ClientId, bool> = HashMap::new();
        for change in changes {
            let Some(client) = &change.client_id else {
                continue;
            };
            let member = match (change.kind, &change.state) {
                (ChangeKind::ConnectFailed, None) => true,
                (ChangeKind::Deleted, _) | (_, Some(_)) => false,
                _ => continue,
            };
            if member || net.contains_key(client) || marked.contains(client) {
                net.insert(client, member);
            }
        }
        net.into_iter()
            .filter(|(client, member)| *member != marked.contains(*client))
            .map(|(client, member)| (client.clone(), member))
            .collect()
    }

    /// Finishes a clear of all data that a crash interrupted.
    pub(super) fn finish_interrupted_clear(&mut self) -> Result<(), StoreError> {
        if self.store.inner.db.contains_key(keys::META_CLEARING)? {
            tracing::warn!("finishing the deletion of all state interrupted by a restart");
            self.clear_all()?;
        }
        Ok(())
    }

    /// Deletes every state record, log entry and change, then records one
    /// ALL_DELETED change. Runs in chunks; the clearing flag makes a crash
    /// in the middle resume at the next start.
    fn clear_all(&mut self) -> Result<(), StoreError> {
        // Everything the log holds goes to sled first, then all of it goes;
        // no write-back runs meanwhile.
        let store = self.store.clone();
        let _no_write_back = store.lock_write_back();
        store.write_back_locked()?;
        let db = self.store.inner.db.clone();
        for prefix in keys::DATA_PREFIXES {
            loop {
                let chunk: Vec<sled::IVec> = db
                    .scan_prefix([prefix])
                    .keys()
                    .take(CLEAR_CHUNK)
                    .collect::<Result<_, _>>()?;
                if chunk.is_empty() {
                    break;
                }
                let mut batch = sled::Batch::default();
                for key in chunk {
                    batch.remove(key);
                }
                db.apply_batch(batch)?;
            }
        }
        self.store.inner.index.clear();
        index::StateIndex::discard_snapshot(self.store.path());
        // Nothing is left to count: the markers start afresh.
        self.batch.insert(keys::META_FAILURE_MARKERS, &[][..]);
        self.failed_only = Some(HashSet::new());
        self.store.take_grown_logs();
        self.revision += 1;
        self.changes.push(Arc::new(Change {
            revision: self.revision,
            kind: ChangeKind::AllDeleted,
            client_id: None,
            state: None,
            log_entry: None,
            commit_time: commit_time(),
            wire: WireForms::default(),
        }));
        self.batch.remove(keys::META_CLEARING);
        self.commit();
        match self.store.recording().refusal() {
            None => Ok(()),
            Some(refusal) => Err(refusal),
        }
    }

    /// Appends the open commit to the log (which flushes), adds it to the
    /// overlay, then publishes and acknowledges.
    fn commit(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let changes = std::mem::take(&mut self.changes);
        self.client_changes.clear();
        let acks = std::mem::take(&mut self.acks);
        let touched = std::mem::take(&mut self.touched);
        let meta_pending = std::mem::take(&mut self.meta_pending);
        // Where the replicated log stands if this commit fails or succeeds.
        let (failed_at, done_at) = match self.replica {
            Some((durable, open)) => (Some((durable, durable)), Some((open, open))),
            None => (None, None),
        };
        // Every write to the batch comes with a change, but for the
        // metadata of replicated writes that changed nothing.
        if changes.is_empty() {
            if meta_pending && let Err(e) = self.write_meta(batch) {
                self.replica = failed_at;
                let refused = matches!(e, StoreError::StorageFull { .. });
                if !refused {
                    tracing::error!(error = %e, "store write failed; refusing further writes");
                    self.store.mark_failed();
                }
                for (ack, _) in acks {
                    let refusal = self.store.recording().refusal();
                    let _ = ack.send(Err(refusal.unwrap_or(StoreError::Failed)));
                }
                return;
            }
            self.replica = done_at;
            for (ack, result) in acks {
                let _ = ack.send(result);
            }
            return;
        };
        // Below the reserve nothing is written: sled refuses every write
        // after one that failed, so the store stops short of a full disk.
        if let Some(refusal) = self.store.check_space() {
            tracing::warn!(error = %refusal, changes = changes.len(), "group commit refused");
            self.revision = self.store.committed_revision();
            self.replica = failed_at;
            for (ack, _) in acks {
                let refusal = self.store.recording().refusal();
                let _ = ack.send(Err(refusal.unwrap_or(StoreError::Failed)));
            }
            return;
        }
        // The failure markers go with the commit that makes them true.
        let markers = self.failure_markers(&changes);
        let mut batch = batch;
        for (client, marked) in &markers {
            match marked {
                true => batch.insert(keys::failed_only(client), &[][..]),
                false => batch.remove(keys::failed_only(client)),
            }
        }

        // New index keys go in before the records change (when the commit
        // reaches the overlay, once durable), old ones out after: a reader
        // always finds the key matching the record it reads.
        let index = &self.store.inner.index;
        let log = &self.store.inner.log;
        let started = std::time::Instant::now();
        self.store
            .inner
            .readable
            .store(self.revision, std::sync::atomic::Ordering::Release);
        // The log appends the feed record and the committed revision (with
        // the commit's metadata in the same atomic batch) and flushes. A
        // large commit appends on a thread of its own while this one works
        // out the index keys and encodes the overlay's records.
        let changes: super::CommittedBatch = Arc::new(changes);
        let (durable, removed, encoded) = if changes.len() >= PARALLEL_COMMIT {
            let changes = &changes;
            std::thread::scope(|scope| {
                let append = scope.spawn(move || log.append_with(changes, batch));
                let (added, removed) = index_changes(&touched, changes);
                index.insert_all(added);
                let encoded = overlay::Encoded::of(changes);
                let durable = append.join().unwrap_or(Err(StoreError::Failed));
                (durable, removed, Some(encoded))
            })
        } else {
            let (added, removed) = index_changes(&touched, &changes);
            index.insert_all(added);
            (log.append_with(&changes, batch), removed, None)
        };
        match durable {
            Ok(_) => {
                if let Some(marked) = &mut self.failed_only {
                    for (client, set) in markers {
                        match set {
                            true => marked.insert(client),
                            false => marked.remove(&client),
                        };
                    }
                }
                let encoded = encoded.unwrap_or_else(|| overlay::Encoded::of(&changes));
                self.store.overlay_mut().add_encoded(&changes, encoded);
                index.remove_all(&removed);
                self.count(&changes, &touched, started.elapsed());
                self.store
                    .inner
                    .committed
                    .store(self.revision, std::sync::atomic::Ordering::Release);
                self.store.inner.revision_watch.send_replace(self.revision);
                self.replica = done_at;
                self.store.inner.log.publish(changes);
                for (ack, result) in acks {
                    let _ = ack.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store write failed; refusing further writes");
                // Rare: the keys it added are worked out again.
                index.remove_all(&index_changes(&touched, &changes).0);
                self.store.mark_failed();
                self.revision = self.store.committed_revision();
                self.replica = failed_at;
                for (ack, _) in acks {
                    let _ = ack.send(Err(StoreError::Failed));
                }
            }
        }
    }
}

impl Writer {
    /// Writes the overlay back and copies the store to `path`, with no
    /// commit in between: the state at the applied log position.
    fn snapshot(&self, path: &std::path::Path) -> Result<(LogPosition, u64), StoreError> {
        self.store.write_back()?;
        let position = self.store.applied_position()?;
        let records = super::snapshot::write(&self.store.inner.db, path)?;
        Ok((position, records))
    }

    /// Writes a batch of metadata alone (replicated writes that changed
    /// nothing), durably, unless the store cannot record.
    fn write_meta(&self, batch: sled::Batch) -> Result<(), StoreError> {
        if let Some(refusal) = self.store.check_space() {
            return Err(refusal);
        }
        self.store.inner.db.apply_batch(batch)?;
        if self.store.inner.log.flushes_each() {
            self.store.inner.db.flush()?;
        }
        Ok(())
    }

    /// Updates the metrics after a successful commit.
    fn count(
        &self,
        changes: &[Arc<Change>],
        touched: &HashMap<ClientId, Touched>,
        took: std::time::Duration,
    ) {
        let metrics = self.store.metrics();
        metrics.batch_events.observe(changes.len() as f64);
        metrics.commit_seconds.observe(took.as_secs_f64());
        for change in changes {
            let entry = change.log_entry.as_ref();
            match change.kind {
                ChangeKind::Connected => {
                    metrics.connects.inc();
                }
                ChangeKind::ConnectFailed => {
                    metrics.count_failed_connect(entry.and_then(|e| e.reason_code))
                }
                ChangeKind::Disconnected => {
                    if let Some(initiator) = entry.and_then(|e| e.initiator) {
                        metrics.count_disconnect(initiator, entry.and_then(|e| e.reason_code));
                    }
                }
                _ => {}
            }
        }
        let connected = |s: Option<&ConnectionState>| {
            s.is_some_and(|s| s.status == crate::domain::ConnectionStatus::Connected)
        };
        for (client, t) in touched {
            let delta =
                i64::from(connected(t.after(changes))) - i64::from(connected(t.before.as_ref()));
            if delta != 0 {
                metrics.add_connected(client.kind().client_type(), delta);
            }
        }
    }
}

enum ControlFlow {
    Continue,
    Stop,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::{ConnectionInfo, ConnectionStatus, EventKind, MqttProtocol};

    fn connect(client: &str, connection_id: u64) -> LifecycleEvent {
        LifecycleEvent {
            client_id: ClientId::new(client).unwrap(),
            time: Utc::now(),
            connection_id,
            broker: Arc::from("test"),
            kind: EventKind::Connected(ConnectionInfo {
                addr: "127.0.0.1".parse().unwrap(),
                port: 1,
                secure: false,
                username: String::new(),
                protocol: Some(MqttProtocol::V3_1_1),
                keep_alive: 60,
                clean_session: true,
            }),
            peer: None,
        }
    }

    fn refused(client: &str, connection_id: u64) -> LifecycleEvent {
        LifecycleEvent {
            kind: EventKind::ConnectFailed {
                info: match connect(client, connection_id).kind {
                    EventKind::Connected(info) => info,
                    _ => unreachable!(),
                },
                failure: crate::domain::ConnectFailure::BadCredentials,
            },
            ..connect(client, connection_id)
        }
    }

    async fn commit(store: &Store, event: LifecycleEvent) {
        store.commit_events(vec![event]).await.unwrap();
    }

    fn failed_connects_of(store: &Store, client: &str) -> u64 {
        store
            .get_state(&ClientId::new(client).unwrap())
            .unwrap()
            .expect("recorded")
            .counters
            .failed_connects
    }

    /// The sled database of a closed store whose last handle is dropped:
    /// a close leaves no thread of the store holding it (sled's file lock
    /// would refuse this second opening).
    fn closed_store_db(path: &std::path::Path) -> sled::Db {
        once_released(|| sled::Config::new().path(path).open())
    }

    /// The store in `path` opened again after the handle before it (a
    /// store's or a raw sled database's) was dropped.
    fn reopen(path: &std::path::Path) -> Store {
        once_released(|| Store::open(path, Default::default()))
    }

    /// Runs `open` until sled's file lock lets it through, for at most 10 s.
    /// sled lets go of a dropped database's lock once its background work
    /// for it is done, in a thread pool every database of the process
    /// shares: while a test beside writes large commits, a moment later.
    fn once_released<T, E: std::fmt::Debug>(mut open: impl FnMut() -> Result<T, E>) -> T {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match open() {
                Ok(opened) => return opened,
                Err(e) if std::time::Instant::now() >= deadline => {
                    panic!("the folder is still held: {e:?}")
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }

    fn markers(path: &std::path::Path) -> Vec<String> {
        let db = closed_store_db(path);
        db.scan_prefix([keys::FAILED_ONLY])
            .keys()
            .map(|k| String::from_utf8(k.unwrap()[1..].to_vec()).unwrap())
            .collect()
    }

    /// Failed connects of a client without a record are counted into its
    /// first record, also after a restart (the failure markers are in the
    /// store), and after a deletion only those since; a client that never
    /// failed counts none. Markers stay only while they hold.
    #[tokio::test]
    async fn failures_before_a_first_record_count_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        for n in 1..=2 {
            commit(&store, refused("d:local:t:x", n)).await;
        }
        commit(&store, refused("d:local:t:gone", 1)).await;
        store
            .delete_state(ClientId::new("d:local:t:gone").unwrap())
            .await
            .unwrap_err();
        store.close().await.unwrap();
        drop(store);
        assert_eq!(markers(dir.path()), ["d:local:t:gone", "d:local:t:x"]);

        let store = reopen(dir.path());
        commit(&store, connect("d:local:t:x", 3)).await;
        commit(&store, connect("d:local:t:y", 1)).await;
        assert_eq!(failed_connects_of(&store, "d:local:t:x"), 2);
        assert_eq!(failed_connects_of(&store, "d:local:t:y"), 0);
        store
            .delete_state(ClientId::new("d:local:t:x").unwrap())
            .await
            .unwrap();
        commit(&store, refused("d:local:t:x", 4)).await;
        commit(&store, connect("d:local:t:x", 5)).await;
        assert_eq!(failed_connects_of(&store, "d:local:t:x"), 1);
        store.close().await.unwrap();
        drop(store);
        assert_eq!(markers(dir.path()), ["d:local:t:gone"]);
    }

    /// A store made before the change log's records were compressed reads
    /// its plain records next to the compressed ones it writes from then on.
    #[tokio::test]
    async fn a_log_written_before_compression_is_read_with_the_new_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path());
        for n in 1..=2 {
            commit(&store, connect("d:local:t:x", n)).await;
        }
        store.close().await.unwrap();
        drop(store);
        // The two commits' records as a store made them before records
        // were compressed.
        {
            let db = closed_store_db(dir.path());
            for item in db.scan_prefix([keys::FEED]) {
                let (key, value) = item.unwrap();
                assert_eq!(value[0], 0, "stored compressed");
                let plain =
                    prost::Message::encode_to_vec(&codec::decode_feed_record(&value).unwrap());
                db.insert(key, plain).unwrap();
            }
            db.flush().unwrap();
        }
        let store = reopen(dir.path());
        commit(&store, connect("d:local:t:x", 3)).await;
        let changes = store.changes_after(0, 100).unwrap();
        let revisions: Vec<_> = changes.iter().map(|c| c.revision).collect();
        assert_eq!(revisions, [1, 2, 3]);
        let connections: Vec<_> = changes
            .iter()
            .map(|c| c.state.as_ref().unwrap().connection_id)
            .collect();
        assert_eq!(connections, [1, 2, 3]);
        store.close().await.unwrap();
    }

    /// A commit larger than one feed record holds is stored as pieces small
    /// enough for sled to keep in its cache's count (none a blob of its
    /// own), and `read_commits` (what the replay after a crash reads) gives
    /// it back as the one commit it was, also when read from its middle.
    #[tokio::test]
    async fn a_large_commit_is_stored_in_small_feed_records_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        commit(&store, connect("d:local:t:first", 1)).await;
        let events: Vec<_> = (0..400)
            .map(|n| connect(&format!("d:local:t:many-{n}"), 10 + n))
            .collect();
        store.commit_events(events).await.unwrap();
        commit(&store, connect("d:local:t:last", 1_000)).await;
        let commits = store.inner.log.read_commits(0, 402, usize::MAX).unwrap();
        let sizes: Vec<_> = commits.iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [1, 400, 1]);
        let from_the_middle = store.inner.log.read_commits(200, 402, usize::MAX).unwrap();
        let sizes: Vec<_> = from_the_middle.iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [201, 1]);
        store.close().await.unwrap();
        drop(store);
        let db = closed_store_db(dir.path());
        let records: Vec<_> = db
            .scan_prefix([keys::FEED])
            .values()
            .map(|v| v.unwrap())
            .collect();
        assert!(records.len() > 3, "the large commit is one record");
        for record in &records {
            assert!(
                record.len() <= codec::RECORD_PIECE_BYTES,
                "a feed record of {} bytes",
                record.len()
            );
        }
        let revisions: Vec<u64> = records
            .iter()
            .flat_map(|r| codec::decode_feed_record(r).unwrap().changes)
            .map(|c| c.revision())
            .collect();
        assert_eq!(revisions, (1..=402).collect::<Vec<u64>>());
        // The commit's log references too.
        let batches: Vec<_> = db
            .scan_prefix([keys::LOG_BATCH])
            .values()
            .map(|v| v.unwrap())
            .collect();
        assert!(
            batches.len() > 3,
            "the large commit's references are one record"
        );
        let mut revisions = Vec::new();
        for batch in &batches {
            assert!(
                batch.len() <= codec::RECORD_PIECE_BYTES,
                "a log batch record of {} bytes",
                batch.len()
            );
            let batch: codec::LogBatchRecord = codec::decode(batch).unwrap();
            revisions.extend(batch.entries.iter().map(|e| e.revision));
        }
        assert_eq!(revisions, (1..=402).collect::<Vec<u64>>());
    }

    /// Retention drops the marker of a client without a record once its
    /// failed connects aged out of the log, and only then.
    #[tokio::test]
    async fn retention_drops_the_marker_of_a_client_whose_failures_aged_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        for n in 1..=2 {
            commit(&store, refused("d:local:t:old", n)).await;
        }
        commit(&store, refused("d:local:t:recorded", 1)).await;
        commit(&store, connect("d:local:t:recorded", 2)).await;
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        commit(&store, refused("d:local:t:young", 1)).await;
        store.written_back(std::time::Duration::from_secs(10)).await;
        // Entries older than 2 s go: those of `old`, not `young`'s.
        store
            .update_settings(Settings {
                log_max_age: std::time::Duration::from_secs(2),
                ..store.settings()
            })
            .await
            .unwrap();
        let report = store.retention_pass().await.unwrap();
        assert_eq!(report.log_entries_by_age, 4, "{report:?}");
        assert_eq!(report.failure_markers, 1, "{report:?}");
        // A refused connect of `old` marks it again, and a first record
        // counts that failure only.
        commit(&store, refused("d:local:t:old", 3)).await;
        commit(&store, connect("d:local:t:old", 4)).await;
        commit(&store, connect("d:local:t:young", 2)).await;
        assert_eq!(failed_connects_of(&store, "d:local:t:old"), 1);
        assert_eq!(failed_connects_of(&store, "d:local:t:young"), 1);
        store.close().await.unwrap();
        drop(store);
        assert!(markers(dir.path()).is_empty());
    }

    /// A store made before the failure markers existed has none: it reads
    /// the log for every first record, as it always did.
    #[tokio::test]
    async fn a_store_without_failure_markers_reads_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path());
        for n in 1..=3 {
            commit(&store, refused("d:local:t:x", n)).await;
        }
        store.close().await.unwrap();
        drop(store);
        {
            let db = closed_store_db(dir.path());
            db.remove(keys::META_FAILURE_MARKERS).unwrap();
            for key in db.scan_prefix([keys::FAILED_ONLY]).keys() {
                db.remove(key.unwrap()).unwrap();
            }
            db.flush().unwrap();
        }
        let store = reopen(dir.path());
        commit(&store, connect("d:local:t:x", 4)).await;
        assert_eq!(failed_connects_of(&store, "d:local:t:x"), 3);
        store.close().await.unwrap();
    }

    /// A record of `client` that does not decode, indexed as records are.
    fn plant_broken_record(store: &Store, client: &str) {
        let client = ClientId::new(client).unwrap();
        store
            .inner
            .db
            .insert(keys::state(&client), &b"not a record"[..])
            .unwrap();
        store
            .inner
            .index
            .insert_all([keys::status_index(ConnectionStatus::Connected, &client).into()]);
    }

    /// A command whose third event fails (its client's record does not
    /// decode) leaves nothing behind: not the two events before it, not a
    /// revision, not a change on the live feed. A command in the same
    /// group commit goes through.
    #[tokio::test]
    async fn a_failing_event_fails_its_whole_command_and_only_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        plant_broken_record(&store, "d:local:t:broken");
        let before = store.committed_revision();
        let mut live = store.subscribe();

        let failing = store.commit_events(vec![
            connect("d:local:t:a", 1),
            connect("d:local:t:b", 1),
            connect("d:local:t:broken", 1),
        ]);
        let other = store.commit_events(vec![connect("d:local:t:c", 1)]);
        let (failing, other) = tokio::join!(failing, other);
        assert!(
            matches!(failing, Err(StoreError::Corrupt(_))),
            "{failing:?}"
        );
        let revision = other.expect("the other command is unaffected");

        for untouched in ["d:local:t:a", "d:local:t:b"] {
            let client = ClientId::new(untouched).unwrap();
            assert_eq!(store.get_state(&client).unwrap(), None, "{untouched}");
        }
        let c = store
            .get_state(&ClientId::new("d:local:t:c").unwrap())
            .unwrap()
            .expect("c is recorded");
        assert_eq!(c.status, ConnectionStatus::Connected);
        // One revision, for the one change that was committed.
        assert_eq!(revision, before + 1);
        assert_eq!(store.committed_revision(), before + 1);
        let published = live.recv().await.unwrap();
        let clients: Vec<_> = published
            .iter()
            .filter_map(|c| c.client_id.as_ref().map(|c| c.to_string()))
            .collect();
        assert_eq!(clients, ["d:local:t:c"]);
        assert_eq!(store.changes_after(before, 100).unwrap().len(), 1);
    }

    /// A failed command takes back its place in the batch's per-client
    /// lookup too: a first connect of the same client later in the same
    /// group commit counts no failed connect of the command that failed
    /// (several rounds, so that some land in one group commit).
    #[tokio::test]
    async fn a_failed_command_leaves_no_failed_connect_to_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        plant_broken_record(&store, "d:local:t:broken");
        for round in 0..20 {
            let name = format!("d:local:t:x{round}");
            let refused = LifecycleEvent {
                kind: EventKind::ConnectFailed {
                    info: match connect(&name, 1).kind {
                        EventKind::Connected(info) => info,
                        _ => unreachable!(),
                    },
                    failure: crate::domain::ConnectFailure::BadCredentials,
                },
                ..connect(&name, 1)
            };
            let failing = store.commit_events(vec![refused, connect("d:local:t:broken", 1)]);
            let other = store.commit_events(vec![connect(&name, 2)]);
            let (failing, other) = tokio::join!(failing, other);
            assert!(failing.is_err(), "round {round}: {failing:?}");
            other.unwrap_or_else(|e| panic!("round {round}: {e:?}"));
            let state = store
                .get_state(&ClientId::new(&name).unwrap())
                .unwrap()
                .expect("recorded");
            assert_eq!(state.counters.failed_connects, 0, "round {round}");
        }
    }

    /// Dropping every handle of the store, without closing it, ends its
    /// writer and write-back threads after a last write-back: the store's
    /// own threads keep nothing of it alive. The folder is free again, and
    /// reopening it finds every commit written back, nothing to replay.
    #[tokio::test]
    async fn dropping_the_last_handle_stops_the_writer_and_the_write_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let other = store.clone();
        store
            .commit_events(vec![connect("d:local:t:a", 1), connect("d:local:t:b", 1)])
            .await
            .unwrap();
        // The last commit stays in the overlay until the end.
        store
            .inner
            .hold_write_back
            .store(true, std::sync::atomic::Ordering::Release);
        other
            .commit_events(vec![connect("d:local:t:c", 1)])
            .await
            .unwrap();
        assert!(store.materialised_revision() < store.committed_revision());
        store
            .inner
            .hold_write_back
            .store(false, std::sync::atomic::Ordering::Release);
        let committed = store.committed_revision();
        let writer = store.inner.writer_thread.lock().unwrap().take().unwrap();
        let write_back = store
            .inner
            .write_back_thread
            .lock()
            .unwrap()
            .take()
            .unwrap();
        drop(store);
        drop(other);

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !(writer.is_finished() && write_back.is_finished()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer ({}) and the write-back ({}) still run with no handle left",
                if writer.is_finished() {
                    "ended"
                } else {
                    "running"
                },
                if write_back.is_finished() {
                    "ended"
                } else {
                    "running"
                },
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        writer.join().unwrap();
        write_back.join().unwrap();

        // The last write-back reached the disk: nothing is left to replay.
        let db = sled::open(dir.path()).expect("the folder is free again");
        let position = super::super::overlay::stored_position(&db).unwrap();
        assert_eq!(position, Some(committed));
        drop(db);
        let reopened = reopen(dir.path());
        assert_eq!(reopened.committed_revision(), committed);
        for client in ["d:local:t:a", "d:local:t:b", "d:local:t:c"] {
            let state = reopened
                .get_state(&ClientId::new(client).unwrap())
                .unwrap()
                .unwrap_or_else(|| panic!("{client} is recorded"));
            assert_eq!(state.status, ConnectionStatus::Connected);
        }
        reopened.close().await.unwrap();
    }
}
