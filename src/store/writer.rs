//! The single writer: the only code that writes client data.
//!
//! Commands arrive on a channel. The writer takes every command waiting (up
//! to a bound on events), runs each event through [`tracker::rules::apply`]
//! with the next revision, and applies the group as one sled batch followed
//! by one flush. Only after the flush does it publish the new committed
//! revision, send the changes to the live feed and acknowledge the commands:
//! nobody hears of a change that a crash could still lose.
//!
//! A group commit writes one key per client it changed, one per log entry,
//! and one feed record and one log batch record for the whole group.

use std::{collections::HashMap, sync::Arc};

use chrono::Utc;
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use super::{Settings, Store, StoreError, codec, index, keys};
use crate::{
    domain::{Change, ChangeKind, ClientId, ConnectionState, LifecycleEvent, Revision},
    tracker::rules,
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
    Shutdown {
        ack: Ack,
    },
}

/// Keys deleted per batch when clearing all data.
const CLEAR_CHUNK: usize = 10_000;

/// A record before the open batch and as the batch leaves it.
struct Touched {
    before: Option<ConnectionState>,
    after: Option<ConnectionState>,
}

pub(super) struct Writer {
    store: Store,
    /// The last revision handed out (committed or in the open batch).
    revision: Revision,
    max_batch_events: usize,
    /// The open batch.
    batch: sled::Batch,
    touched: HashMap<ClientId, Touched>,
    changes: Vec<Arc<Change>>,
    log_refs: Vec<codec::LogRef>,
    acks: Vec<(Ack, Result<Revision, StoreError>)>,
    grown_logs: Vec<ClientId>,
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
            log_refs: Vec::new(),
            acks: Vec::new(),
            grown_logs: Vec::new(),
        }
    }

    pub(super) fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        while let Some(first) = commands.blocking_recv() {
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
                    self.commit();
                    return;
                }
            }
            self.commit();
        }
    }

    fn handle(&mut self, command: Command) -> ControlFlow {
        if let Some(refusal) = self.store.recording().refusal() {
            let ack = match command {
                Command::Events { ack, .. }
                | Command::Delete { ack, .. }
                | Command::PutSettings { ack, .. } => ack,
                Command::Shutdown { ack } => {
                    let _ = ack.send(Ok(self.revision));
                    return ControlFlow::Stop;
                }
            };
            let _ = ack.send(Err(refusal));
            return ControlFlow::Continue;
        }
        match command {
            Command::Events { events, ack } => {
                let result = self.apply_events(&events);
                self.acks.push((ack, result));
            }
            Command::Delete { client, ack } => {
                // Deleting scans the client's log: commit the open batch
                // first so the scan sees everything.
                self.commit();
                let result = self.delete(&client);
                self.acks.push((ack, result));
            }
            Command::PutSettings { settings, ack } => {
                self.commit();
                let result = self.put_settings(settings);
                self.acks.push((ack, result));
            }
            Command::Shutdown { ack } => {
                self.acks.push((ack, Ok(self.revision)));
                return ControlFlow::Stop;
            }
        }
        ControlFlow::Continue
    }

    fn current(&self, client: &ClientId) -> Result<Option<ConnectionState>, StoreError> {
        match self.touched.get(client) {
            Some(t) => Ok(t.after.clone()),
            None => self.store.get_state(client),
        }
    }

    /// Records that the batch leaves `client` at `after`.
    fn touch(
        &mut self,
        client: &ClientId,
        before: Option<ConnectionState>,
        after: Option<ConnectionState>,
    ) {
        self.touched
            .entry(client.clone())
            .and_modify(|t| t.after = after.clone())
            .or_insert(Touched { before, after });
    }

    fn apply_events(&mut self, events: &[LifecycleEvent]) -> Result<Revision, StoreError> {
        if !self.store.settings().enabled {
            return Err(StoreError::Disabled);
        }
        let mut last = self.revision;
        let commit_time = Utc::now();
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
            if let Some(state) = &outcome.state {
                self.batch
                    .insert(keys::state(&state.client_id), codec::encode_state(state));
                self.touch(&event.client_id, current.clone(), Some(state.clone()));
            }
            if let Some(entry) = &outcome.log_entry {
                self.batch.insert(
                    keys::client_log(&entry.client_id, revision),
                    codec::encode_log(entry),
                );
                self.log_refs.push(codec::LogRef {
                    revision,
                    client_id: entry.client_id.as_str().to_owned(),
                });
                self.grown_logs.push(entry.client_id.clone());
            }
            self.changes.push(Arc::new(Change {
                revision,
                kind: outcome.kind,
                client_id: Some(event.client_id.clone()),
                state: outcome.state.or(current),
                log_entry: outcome.log_entry,
                commit_time,
            }));
        }
        Ok(last)
    }

    /// The failed connects in `client`'s log, committed and in the open
    /// batch, for a client without a record (its log holds nothing else of
    /// note). A deletion in the open batch removes what came before it.
    fn logged_failures(&self, client: &ClientId) -> Result<u64, StoreError> {
        let mut failures = 0;
        for change in self.changes.iter().rev() {
            if change.client_id.as_ref() != Some(client) {
                continue;
            }
            match change.kind {
                ChangeKind::ConnectFailed => failures += 1,
                ChangeKind::Deleted => return Ok(failures),
                _ => {}
            }
        }
        for entry in self
            .store
            .inner
            .db
            .scan_prefix(keys::client_log_prefix(client))
            .values()
        {
            if codec::decode_log(&entry?)?.kind == crate::domain::LogKind::ConnectFailed {
                failures += 1;
            }
        }
        Ok(failures)
    }

    fn delete(&mut self, client: &ClientId) -> Result<Revision, StoreError> {
        if !self.store.settings().enabled {
            return Err(StoreError::Disabled);
        }
        let Some(old) = self.store.get_state(client)? else {
            return Err(StoreError::NotFound);
        };
        self.batch.remove(keys::state(client));
        self.touch(client, Some(old), None);
        for key in self
            .store
            .inner
            .db
            .scan_prefix(keys::client_log_prefix(client))
            .keys()
        {
            self.batch.remove(key?);
        }
        self.revision += 1;
        self.changes.push(Arc::new(Change {
            revision: self.revision,
            kind: ChangeKind::Deleted,
            client_id: Some(client.clone()),
            state: None,
            log_entry: None,
            commit_time: Utc::now(),
        }));
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
        self.store.take_grown_logs();
        self.revision += 1;
        self.changes.push(Arc::new(Change {
            revision: self.revision,
            kind: ChangeKind::AllDeleted,
            client_id: None,
            state: None,
            log_entry: None,
            commit_time: Utc::now(),
        }));
        self.batch.remove(keys::META_CLEARING);
        self.commit();
        match self.store.recording().refusal() {
            None => Ok(()),
            Some(refusal) => Err(refusal),
        }
    }

    /// Applies the open batch, flushes, then publishes and acknowledges.
    fn commit(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        let changes = std::mem::take(&mut self.changes);
        let acks = std::mem::take(&mut self.acks);
        let touched = std::mem::take(&mut self.touched);
        let log_refs = std::mem::take(&mut self.log_refs);
        let grown = std::mem::take(&mut self.grown_logs);
        // Every write to the batch comes with a change.
        let Some(first) = changes.first().map(|c| c.revision) else {
            for (ack, result) in acks {
                let _ = ack.send(result);
            }
            return;
        };
        let commit_ms = changes[0].commit_time.timestamp_millis();
        let feed = codec::FeedBatchRecord {
            commit_ms,
            changes: changes
                .iter()
                .map(|c| codec::ChangeRecord::from(c.as_ref()))
                .collect(),
        };
        batch.insert(&keys::revision_key(keys::FEED, first), feed.encode_to_vec());
        if !log_refs.is_empty() {
            let logs = codec::LogBatchRecord {
                commit_ms,
                entries: log_refs,
            };
            batch.insert(
                &keys::revision_key(keys::LOG_BATCH, first),
                logs.encode_to_vec(),
            );
        }
        batch.insert(keys::META_REVISION, &self.revision.to_be_bytes());
        // Below the reserve nothing is written: sled refuses every write
        // after one that failed, so the store stops short of a full disk.
        if let Some(refusal) = self.store.check_space() {
            tracing::warn!(error = %refusal, changes = changes.len(), "group commit refused");
            self.revision = self.store.committed_revision();
            for (ack, _) in acks {
                let refusal = self.store.recording().refusal();
                let _ = ack.send(Err(refusal.unwrap_or(StoreError::Failed)));
            }
            return;
        }

        // New index keys go in before the records change, old ones out
        // after: a reader always finds the key matching the record it reads.
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for t in touched.values() {
            let before = t.before.as_ref().map(index::keys_of);
            let after = t.after.as_ref().map(index::keys_of);
            for key in after.iter().flatten() {
                if !before.iter().flatten().any(|k| k == key) {
                    added.push(key.clone());
                }
            }
            for key in before.iter().flatten() {
                if !after.iter().flatten().any(|k| k == key) {
                    removed.push(key.clone());
                }
            }
        }
        let index = &self.store.inner.index;
        index.insert_all(added.iter().cloned());

        let db = &self.store.inner.db;
        let started = std::time::Instant::now();
        self.store
            .inner
            .readable
            .store(self.revision, std::sync::atomic::Ordering::Release);
        let durable = db.apply_batch(batch).and_then(|()| db.flush().map(drop));
        match durable {
            Ok(()) => {
                index.remove_all(&removed);
                self.count(&changes, &touched, started.elapsed());
                self.store
                    .inner
                    .committed
                    .store(self.revision, std::sync::atomic::Ordering::Release);
                self.store.note_log_growth(grown);
                // No receiver is fine: nobody is watching.
                let _ = self.store.inner.feed.send(Arc::new(changes));
                for (ack, result) in acks {
                    let _ = ack.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store write failed; refusing further writes");
                index.remove_all(&added);
                self.store.mark_failed();
                self.revision = self.store.committed_revision();
                for (ack, _) in acks {
                    let _ = ack.send(Err(StoreError::Failed));
                }
            }
        }
    }
}

impl Writer {
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
        let connected = |s: &Option<ConnectionState>| {
            s.as_ref()
                .is_some_and(|s| s.status == crate::domain::ConnectionStatus::Connected)
        };
        for (client, t) in touched {
            let delta = i64::from(connected(&t.after)) - i64::from(connected(&t.before));
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
