//! The materialiser and its overlay: state records, per-client log entries
//! and log batch records are written from the change log behind it.
//!
//! A group commit appends only to the log ([`super::log`]) and flushes.
//! The writer then adds the commit to the [`Overlay`], an in-memory map of
//! what the log holds and sled does not yet: the newest state of every
//! client changed since the last write-back (or its deletion), their new
//! log entries and the log batch records of those commits. Readers look in
//! the overlay first, so they see the newest state at once.
//!
//! A write-back thread of its own (not the writer) writes the overlay back
//! to sled every [`WRITE_BACK_INTERVAL`], or sooner once it holds
//! [`WRITE_BACK_CHANGES`] changes, coalesced: a client changed ten times is
//! written once (its newest state, every log entry). It writes in sled
//! batches of a bounded size, so that the writer's appends (which wait for
//! any batch sled is applying) never wait long behind it; the last batch
//! records the materialised position (`mmaterialised`), the newest
//! revision the write-back covers. Nothing is flushed on its own (the next
//! group commit's flush carries it), because the log already holds
//! everything. The overlay stays readable throughout: each run of records
//! leaves it once sled holds it, unless a commit changed it meanwhile, and
//! whatever commits added stays for the next write-back.
//! When the changes the write-back has not yet taken reach [`MAX_CHANGES`],
//! the writer waits for it rather than let the overlay grow without bound
//! (one command larger than that, such as the recording of every client a
//! crash left connected, is taken whole and written back behind it).
//!
//! After a crash the store replays the log after the materialised position
//! through the same overlay and writes it back before it serves, so what a
//! restart finds is exactly what a run without the crash had. A crash part
//! way through a write-back leaves some records newer than the materialised
//! position says: the replay writes each of them again with the same value
//! (records are the state after a change, entries are keyed by revision),
//! and the index is refreshed from the records the replay leaves.

use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound,
    sync::{Arc, RwLock},
    time::Duration,
};

use prost::Message;

use super::{StoreError, codec, keys};
use crate::domain::{Change, ChangeKind, ClientId, LogEntry, Revision};

/// How often the write-back thread writes the overlay back.
pub(super) const WRITE_BACK_INTERVAL: Duration = Duration::from_millis(200);

/// Changes held that start a write-back before the interval is over.
pub(super) const WRITE_BACK_CHANGES: usize = 16 * 1024;

/// Changes the overlay holds at most: past it the writer waits for the
/// write-back before it takes more commands.
pub(super) const MAX_CHANGES: usize = 4 * WRITE_BACK_CHANGES;

/// Writes per sled batch of a write-back (see [`write_back_batches`]).
const WRITE_BACK_SLICE: usize = 1024;

/// What the log holds and sled does not yet; see the module docs.
#[derive(Default)]
pub(super) struct Overlay {
    /// State key ([`keys::state`]) → the newest state record, `None` when
    /// deleted. Records and entries are held encoded, exactly as sled will
    /// hold them, so that a read answers the same before and after the
    /// write-back (the records keep times in milliseconds).
    pub(super) states: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Log key ([`keys::client_log`]) → encoded entry.
    pub(super) logs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Clients deleted since the last write-back, with the revision of the
    /// deletion: every log entry sled holds for them is gone (later ones
    /// are in `logs`).
    pub(super) deleted: HashMap<ClientId, Revision>,
    /// Log batch records (first revision of the commit, record), oldest
    /// first.
    pub(super) log_batches: Vec<(Revision, codec::LogBatchRecord)>,
    /// Clients whose log grew, for retention once written back.
    pub(super) grown: Vec<ClientId>,
    /// The newest revision held (the materialised position when empty).
    pub(super) position: Revision,
    /// The materialised position as the overlay knows it: moved when a
    /// write-back trims what it wrote. Log batch records up to it are in
    /// sled and no longer here; those after it are here, and may be in sled
    /// too while a write-back is between its writing and its trim, so a
    /// reader of sled's takes only those up to it.
    pub(super) written: Revision,
    /// Changes held.
    pub(super) changes: usize,
    /// Counts the clearings of all data, which empty the overlay: a
    /// write-back started before one has nothing left to trim.
    epoch: u64,
}

/// The state record and log entry of each change of a commit, encoded as
/// sled will hold them (`None` where the change has none, or the overlay
/// does not keep it).
pub(super) struct Encoded(Vec<Records>);

/// One change's encoded state record and log entry.
type Records = (Option<Vec<u8>>, Option<Vec<u8>>);

impl Encoded {
    pub(super) fn of(changes: &[Arc<Change>]) -> Encoded {
        Encoded(
            changes
                .iter()
                .map(|change| match (change.kind, &change.client_id) {
                    (ChangeKind::AllDeleted | ChangeKind::Deleted, _) | (_, None) => (None, None),
                    _ => (
                        change.state.as_ref().map(codec::encode_state),
                        change.log_entry.as_ref().map(codec::encode_log),
                    ),
                })
                .collect(),
        )
    }
}

/// What one write-back took from the overlay, to trim exactly that from it
/// once sled holds it.
pub(super) struct Written {
    epoch: u64,
    /// The newest revision covered: the materialised position.
    pub(super) position: Revision,
    pub(super) changes: usize,
    deleted: Vec<(ClientId, Revision)>,
    log_batches: usize,
    grown: usize,
}

impl Overlay {
    pub(super) fn new(position: Revision) -> Overlay {
        Overlay {
            position,
            written: position,
            ..Overlay::default()
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.changes == 0
    }

    /// Adds the changes of one commit (oldest first).
    pub(super) fn add_commit(&mut self, changes: &[Arc<Change>]) {
        self.add_encoded(changes, Encoded::of(changes));
    }

    /// [`Overlay::add_commit`] with the records already encoded (which
    /// needs no lock, and can be done beside the log's append).
    pub(super) fn add_encoded(&mut self, changes: &[Arc<Change>], encoded: Encoded) {
        let (Some(first), Some(last)) = (changes.first(), changes.last()) else {
            return;
        };
        let mut refs = Vec::new();
        for (change, (state_record, log_record)) in changes.iter().zip(encoded.0) {
            self.changes += 1;
            match (change.kind, &change.client_id) {
                (ChangeKind::AllDeleted, _) => {
                    // Whoever clears all data has cleared sled already.
                    let (position, epoch) = (self.position, self.epoch);
                    *self = Overlay::new(position);
                    self.epoch = epoch + 1;
                    refs.clear();
                    self.changes = 1;
                }
                (ChangeKind::Deleted, Some(client)) => {
                    self.states.insert(keys::state(client), None);
                    let prefix = keys::client_log_prefix(client);
                    let gone: Vec<Vec<u8>> = self
                        .logs
                        .range(prefix.clone()..)
                        .take_while(|(k, _)| k.starts_with(&prefix))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in gone {
                        self.logs.remove(&key);
                    }
                    refs.retain(|r: &codec::LogRef| r.client_id != client.as_str());
                    self.deleted.insert(client.clone(), change.revision);
                }
                (_, Some(client)) => {
                    if let Some(record) = state_record {
                        self.states.insert(keys::state(client), Some(record));
                    }
                    if let Some(entry) = log_record {
                        self.logs
                            .insert(keys::client_log(client, change.revision), entry);
                        refs.push(codec::LogRef {
                            revision: change.revision,
                            client_id: client.as_str().to_owned(),
                        });
                        self.grown.push(client.clone());
                    }
                }
                (_, None) => {}
            }
        }
        // A commit's references, in records small enough for sled's cache
        // to count (`codec::RECORD_PIECE_BYTES`): the first keyed by the
        // commit's first revision, each other by its first entry's.
        for (n, entries) in codec::pieces(refs).into_iter().enumerate() {
            let key = match (n, entries.first()) {
                (0, _) => first.revision,
                (_, Some(entry)) => entry.revision,
                (_, None) => continue,
            };
            self.log_batches.push((
                key,
                codec::LogBatchRecord {
                    commit_ms: first.commit_time.timestamp_millis(),
                    entries,
                },
            ));
        }
        self.position = last.revision;
    }

    /// Ends a write-back whose records and entries sled holds (each run
    /// left the overlay as it was applied, see [`write_back`]): drops its
    /// deletions, log batch records and counts, and keeps what commits
    /// added meanwhile (a deletion only when no newer deletion of the
    /// client came since). Returns the clients whose log grew in sled, for
    /// retention.
    pub(super) fn trim(&mut self, written: Written) -> Vec<ClientId> {
        if written.epoch != self.epoch {
            // All data was cleared since: nothing of it is left here.
            return Vec::new();
        }
        for (client, revision) in written.deleted {
            if self.deleted.get(&client) == Some(&revision) {
                self.deleted.remove(&client);
            }
        }
        self.log_batches.drain(..written.log_batches);
        self.written = written.position;
        self.changes -= written.changes;
        self.grown.drain(..written.grown).collect()
    }

    /// The entry of `client` at `revision` as the overlay has it: `Some`
    /// when it holds the answer (`Some(None)`: sled's copy is gone), `None`
    /// when sled has it.
    pub(super) fn log_entry(
        &self,
        client: &ClientId,
        revision: Revision,
    ) -> Result<Option<Option<LogEntry>>, StoreError> {
        if let Some(entry) = self.logs.get(&keys::client_log(client, revision)) {
            return Ok(Some(Some(codec::decode_log(entry)?)));
        }
        Ok(self.deleted.contains_key(client).then_some(None))
    }
}

/// Writes the overlay back to sled, one batch of at most
/// [`WRITE_BACK_SLICE`] writes at a time handed to `apply`, and returns
/// what it took (for [`Overlay::trim`]). Sled applies a batch under a lock
/// every other write waits for, so batches stay small and the writer's next
/// commit never waits long behind one.
///
/// The records and entries are taken in runs, the overlay's lock held per
/// run, so that commits and readers go on meanwhile (after a recovery the
/// overlay holds hundreds of thousands of changes). Each run leaves the
/// overlay as soon as sled holds it: a state only while it is still the one
/// written (a newer one stays), which readers then find in sled. So a
/// write-back holds one run's copy at a time, never a second copy of the
/// whole overlay: a burst of changes (a fleet pinging in step, everyone
/// leaving at once) costs its overlay and little more. A run may catch a
/// state newer than the position, which is what a crash part way through a
/// write-back leaves too, and the next write-back writes the same again.
/// The last batch holds the log batch records and the materialised
/// position.
///
/// `taken` hears how many changes the write-back takes as soon as it has
/// taken them, before any batch is made: a writer that waits for room in
/// the overlay goes on from there, not once hundreds of thousands of
/// records have been written.
pub(super) fn write_back(
    overlay: &RwLock<Overlay>,
    db: &sled::Db,
    taken: impl FnOnce(usize),
    mut apply: impl FnMut(sled::Batch) -> Result<(), StoreError>,
) -> Result<Written, StoreError> {
    let (epoch, position, changes, deleted, log_batches, grown) = {
        let o = overlay.read().expect("overlay lock");
        (
            o.epoch,
            o.position,
            o.changes,
            o.deleted
                .iter()
                .map(|(c, r)| (c.clone(), *r))
                .collect::<Vec<_>>(),
            o.log_batches
                .iter()
                .map(|(first, record)| (*first, record.encode_to_vec()))
                .collect::<Vec<_>>(),
            o.grown.len(),
        )
    };
    taken(changes);
    let written = Written {
        epoch,
        position,
        changes,
        deleted,
        log_batches: log_batches.len(),
        grown,
    };
    // What sled holds of deleted clients goes first: their entries written
    // back below came after the deletion.
    let mut batch = sled::Batch::default();
    let mut writes = 0;
    for (client, _) in &written.deleted {
        for key in db.scan_prefix(keys::client_log_prefix(client)).keys() {
            batch.remove(key?);
            writes += 1;
            if writes == WRITE_BACK_SLICE {
                apply(std::mem::take(&mut batch))?;
                writes = 0;
            }
        }
    }
    if writes > 0 {
        apply(batch)?;
    }
    let states: Maps<_> = (|o| &o.states, |o| &mut o.states);
    let copied = in_runs(overlay, epoch, states, |run| {
        let mut batch = sled::Batch::default();
        for (key, state) in run {
            match state {
                Some(state) => batch.insert(key.as_slice(), state.as_slice()),
                None => batch.remove(key.as_slice()),
            }
        }
        apply(batch)
    })?;
    if !copied {
        return Ok(written);
    }
    let logs: Maps<_> = (|o| &o.logs, |o| &mut o.logs);
    let copied = in_runs(overlay, epoch, logs, |run| {
        let mut batch = sled::Batch::default();
        for (key, entry) in run {
            batch.insert(key.as_slice(), entry.as_slice());
        }
        apply(batch)
    })?;
    if !copied {
        return Ok(written);
    }
    let mut last = sled::Batch::default();
    for (first, record) in &log_batches {
        last.insert(
            &keys::revision_key(keys::LOG_BATCH, *first),
            record.as_slice(),
        );
    }
    last.insert(keys::META_MATERIALISED, &position.to_be_bytes());
    apply(last)?;
    Ok(written)
}

/// One of the overlay's maps, to read and to trim.
type Maps<V> = (
    fn(&Overlay) -> &BTreeMap<Vec<u8>, V>,
    fn(&mut Overlay) -> &mut BTreeMap<Vec<u8>, V>,
);

/// Takes the entries of the overlay map `map` picks in key order, in runs
/// of [`WRITE_BACK_SLICE`] copied under the read lock, hands each run to
/// `write`, and once it is written drops from the map every entry of the
/// run that still holds the value written. False when all data was
/// cleared meanwhile (the overlay's epoch moved): nothing more is written.
fn in_runs<V: Clone + PartialEq>(
    overlay: &RwLock<Overlay>,
    epoch: u64,
    (map, map_mut): Maps<V>,
    mut write: impl FnMut(&[(Vec<u8>, V)]) -> Result<(), StoreError>,
) -> Result<bool, StoreError> {
    let mut after: Option<Vec<u8>> = None;
    loop {
        let run: Vec<(Vec<u8>, V)> = {
            let o = overlay.read().expect("overlay lock");
            if o.epoch != epoch {
                return Ok(false);
            }
            let from = match &after {
                Some(key) => Bound::Excluded(key.as_slice()),
                None => Bound::Unbounded,
            };
            map(&o)
                .range::<[u8], _>((from, Bound::Unbounded))
                .take(WRITE_BACK_SLICE)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        if run.is_empty() {
            return Ok(true);
        }
        write(&run)?;
        let mut o = overlay.write().expect("overlay lock");
        if o.epoch != epoch {
            return Ok(false);
        }
        let held = map_mut(&mut o);
        for (key, value) in &run {
            if held.get(key) == Some(value) {
                held.remove(key);
            }
        }
        drop(o);
        if run.len() < WRITE_BACK_SLICE {
            return Ok(true);
        }
        after = run.into_iter().next_back().map(|(key, _)| key);
    }
}

/// The materialised position stored in sled (`None` before the first
/// write-back: every commit of an older store is materialised).
pub(super) fn stored_position(db: &sled::Db) -> Result<Option<Revision>, StoreError> {
    match db.get(keys::META_MATERIALISED)? {
        Some(v) => Ok(Some(Revision::from_be_bytes(
            v.as_ref()
                .try_into()
                .map_err(|_| StoreError::Corrupt("materialised position".into()))?,
        ))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::atomic::Ordering};

    use chrono::Utc;

    use super::super::{Store, WriteBackStep, keys};
    use crate::domain::{
        ActivityKind, ClientId, ConnectFailure, ConnectionInfo, ConnectionStatus, DisconnectCause,
        EventKind, LifecycleEvent, LogFilter, MqttProtocol, SortField, StateFilter, StateOrder,
    };

    fn event(client: &str, connection_id: u64, kind: EventKind) -> LifecycleEvent {
        LifecycleEvent {
            client_id: ClientId::new(client).unwrap(),
            time: Utc::now(),
            connection_id,
            broker: std::sync::Arc::from("test"),
            kind,
            peer: None,
        }
    }

    fn info() -> ConnectionInfo {
        ConnectionInfo {
            addr: "127.0.0.1".parse().unwrap(),
            port: 1,
            secure: false,
            username: String::new(),
            protocol: Some(MqttProtocol::V3_1_1),
            keep_alive: 60,
            clean_session: true,
        }
    }

    fn connect(client: &str, id: u64) -> LifecycleEvent {
        event(client, id, EventKind::Connected(info()))
    }

    fn disconnect(client: &str, id: u64) -> LifecycleEvent {
        event(
            client,
            id,
            EventKind::Disconnected(DisconnectCause::SocketClosed),
        )
    }

    fn failed(client: &str, id: u64) -> LifecycleEvent {
        event(
            client,
            id,
            EventKind::ConnectFailed {
                info: info(),
                failure: ConnectFailure::BadCredentials,
            },
        )
    }

    /// Every record, log entry, log batch record, feed record and the
    /// revisions, as sled holds them.
    fn dump(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
        store
            .inner
            .db
            .iter()
            .map(|item| item.unwrap())
            .filter(|(key, _)| {
                keys::DATA_PREFIXES.contains(&key[0])
                    || key.as_ref() == keys::META_REVISION
                    || key.as_ref() == keys::META_MATERIALISED
            })
            .map(|(key, value)| (key.to_vec(), value.to_vec()))
            .collect()
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    /// A store whose last commits were only in the log (not written back)
    /// when it stopped replays them at the next start and ends in exactly
    /// the state the same store has when it writes them back without a
    /// crash: every record, log entry, log batch record, feed record,
    /// revision and index key. Before the write-back, reads already see
    /// the newest state.
    #[tokio::test]
    async fn replaying_the_log_tail_ends_in_the_state_of_a_run_without_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let live_path = dir.path().join("live");
        let crashed_path = dir.path().join("crashed");
        let store = Store::open(&live_path, Default::default()).unwrap();

        store
            .commit_events(vec![
                connect("d:o:t:a", 1),
                connect("d:o:t:b", 1),
                connect("d:o:t:c", 1),
                failed("d:o:t:d", 1),
            ])
            .await
            .unwrap();
        store
            .commit_events(vec![disconnect("d:o:t:b", 1)])
            .await
            .unwrap();
        // Wait for the first commits to be written back, then hold the rest
        // in the log only.
        store.written_back(std::time::Duration::from_secs(10)).await;
        store.inner.hold_write_back.store(true, Ordering::Release);

        // One client changed ten times, a deletion, failed connects before
        // a first connect, a client deleted and recorded again.
        for id in 2..7 {
            store
                .commit_events(vec![connect("d:o:t:a", id)])
                .await
                .unwrap();
            store
                .commit_events(vec![disconnect("d:o:t:a", id)])
                .await
                .unwrap();
        }
        store
            .commit_events(vec![
                event("d:o:t:b", 1, EventKind::Activity(ActivityKind::Publish)),
                failed("d:o:t:e", 1),
                failed("d:o:t:e", 2),
                connect("d:o:t:e", 3),
                connect("d:o:t:f", 1),
            ])
            .await
            .unwrap();
        let c = ClientId::new("d:o:t:c").unwrap();
        let f = ClientId::new("d:o:t:f").unwrap();
        store.delete_state(c.clone()).await.unwrap();
        store.delete_state(f.clone()).await.unwrap();
        store
            .commit_events(vec![connect("d:o:t:f", 2)])
            .await
            .unwrap();
        store
            .commit_events(vec![failed("d:o:t:d", 2)])
            .await
            .unwrap();

        let materialised = store.materialised_revision();
        assert!(materialised < store.committed_revision());
        // Reads see the newest state before the write-back.
        let e = ClientId::new("d:o:t:e").unwrap();
        let e_state = store.get_state(&e).unwrap().expect("e is recorded");
        assert_eq!(e_state.status, ConnectionStatus::Connected);
        assert_eq!(store.get_state(&c).unwrap(), None);
        let listed: Vec<String> = store
            .list_states(
                &StateFilter::default(),
                StateOrder {
                    field: SortField::ClientId,
                    descending: false,
                },
                100,
                None,
                10_000,
            )
            .unwrap()
            .states
            .iter()
            .map(|s| s.client_id.to_string())
            .collect();
        assert_eq!(listed, ["d:o:t:a", "d:o:t:b", "d:o:t:e", "d:o:t:f"]);
        let f_log = store
            .list_logs(Some(&f), &LogFilter::default(), 100, None, 10_000)
            .unwrap();
        assert_eq!(f_log.entries.len(), 1, "the deletion took the older entry");
        let all = store
            .list_logs(None, &LogFilter::default(), 1000, None, 100_000)
            .unwrap();
        let stored_before = dump(&store);
        assert!(
            stored_before
                .iter()
                .any(|(k, _)| k.as_slice() == keys::state(&c).as_slice()),
            "c is still in sled, deleted only in the overlay"
        );

        // The crash: the store as the disk has it now.
        copy_dir(&live_path, &crashed_path);

        // The run without a crash writes everything back.
        store.inner.hold_write_back.store(false, Ordering::Release);
        let index = store.inner.index.all_keys();
        store.close().await.unwrap();
        assert_eq!(store.materialised_revision(), store.committed_revision());
        let expected = dump(&store);

        let replayed = Store::open(&crashed_path, Default::default()).unwrap();
        assert_eq!(replayed.committed_revision(), store.committed_revision());
        assert_eq!(replayed.materialised_revision(), store.committed_revision());
        assert_eq!(dump(&replayed), expected);
        assert_eq!(replayed.inner.index.all_keys(), index);
        assert_eq!(
            replayed
                .list_logs(None, &LogFilter::default(), 1000, None, 100_000)
                .unwrap()
                .entries,
            all.entries
        );
        replayed.close().await.unwrap();
    }

    /// A crash restart loads the last index checkpoint and brings it up to
    /// date from the log: the indexes end exactly as in a run without a
    /// crash, without reading every record.
    #[tokio::test]
    async fn a_checkpoint_plus_the_log_tail_gives_the_indexes_of_a_run_without_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let live_path = dir.path().join("live");
        let crashed_path = dir.path().join("crashed");
        let store = Store::open(&live_path, Default::default()).unwrap();
        store
            .commit_events(vec![
                connect("d:o:t:a", 1),
                connect("d:o:t:b", 1),
                connect("d:o:t:c", 1),
            ])
            .await
            .unwrap();
        let stamp = store.checkpoint().unwrap();
        assert_eq!(stamp, store.committed_revision());

        // After the checkpoint: a client's times and status change, one is
        // deleted, one is new, one changes twice.
        store
            .commit_events(vec![disconnect("d:o:t:a", 1), connect("d:o:t:d", 1)])
            .await
            .unwrap();
        store
            .delete_state(ClientId::new("d:o:t:c").unwrap())
            .await
            .unwrap();
        store
            .commit_events(vec![disconnect("d:o:t:b", 1), connect("d:o:t:b", 2)])
            .await
            .unwrap();
        assert!(store.committed_revision() > stamp);

        // The crash: the store as the disk has it now.
        copy_dir(&live_path, &crashed_path);
        let index = store.inner.index.all_keys();
        store.close().await.unwrap();

        let recovered = Store::open(&crashed_path, Default::default()).unwrap();
        assert!(
            recovered
                .inner
                .index_from_checkpoint
                .load(Ordering::Relaxed)
        );
        assert_eq!(recovered.inner.index.all_keys(), index);
        assert_eq!(recovered.count_states(), 3);
        recovered.close().await.unwrap();
        drop(recovered);

        // Without a checkpoint the indexes are rebuilt, to the same keys.
        std::fs::remove_file(crashed_path.join("index.snapshot")).unwrap();
        let rebuilt = Store::open(&crashed_path, Default::default()).unwrap();
        assert!(!rebuilt.inner.index_from_checkpoint.load(Ordering::Relaxed));
        assert_eq!(rebuilt.inner.index.all_keys(), index);
        rebuilt.close().await.unwrap();
    }

    /// Makes the next write-back pause once its batches are in sled (before
    /// it ends), runs `before`, lets write-backs run and waits
    /// until that one pauses. Sending on the answer lets it finish.
    async fn pause_write_back(
        store: &Store,
        before: impl std::future::Future<Output = ()>,
    ) -> std::sync::mpsc::Sender<()> {
        pause_write_back_at(store, WriteBackStep::Applied, before).await
    }

    /// [`pause_write_back`] at `step`.
    async fn pause_write_back_at(
        store: &Store,
        step: WriteBackStep,
        before: impl std::future::Future<Output = ()>,
    ) -> std::sync::mpsc::Sender<()> {
        let (applied_tx, applied) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        *store.inner.write_back_pause.lock().unwrap() = Some((step, (applied_tx, go_rx)));
        before.await;
        store.inner.hold_write_back.store(false, Ordering::Release);
        store.inner.pacer.wake();
        tokio::task::spawn_blocking(move || {
            applied.recv_timeout(std::time::Duration::from_secs(60))
        })
        .await
        .unwrap()
        .expect("a write-back started");
        go
    }

    /// A client changed many times between two write-backs is written
    /// once, with its newest state and every log entry; a read while a
    /// write-back is in flight sees the newest state, and a commit made
    /// meanwhile stays in the overlay for the next write-back.
    #[tokio::test]
    async fn a_write_back_writes_each_client_once_and_keeps_what_came_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let a = ClientId::new("d:o:t:a").unwrap();
        let key = keys::state(&a);
        let written = |sub: &mut sled::Subscriber| {
            let mut n = 0;
            while let Ok(event) = sub.next_timeout(std::time::Duration::from_millis(50)) {
                if event.key().as_ref() == key.as_slice() {
                    n += 1;
                }
            }
            n
        };
        let mut sub = store.inner.db.watch_prefix(key.clone());

        store.inner.hold_write_back.store(true, Ordering::Release);
        for id in 1..=10 {
            store
                .commit_events(vec![connect("d:o:t:a", id)])
                .await
                .unwrap();
            store
                .commit_events(vec![disconnect("d:o:t:a", id)])
                .await
                .unwrap();
        }
        let go = pause_write_back(&store, async {}).await;
        let covered = store.committed_revision();

        // The write-back has put its batches into sled and not yet ended;
        // the writer goes on meanwhile.
        store
            .commit_events(vec![connect("d:o:t:a", 11)])
            .await
            .unwrap();
        let now = store.get_state(&a).unwrap().unwrap();
        assert_eq!(now.status, ConnectionStatus::Connected);
        go.send(()).unwrap();

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.materialised_revision() < covered {
            assert!(std::time::Instant::now() < deadline, "no write-back");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(written(&mut sub), 1, "twenty changes, one write");
        // The newer state stayed in the overlay, and reads still see it.
        assert!(store.committed_revision() > covered);
        assert_eq!(
            store.get_state(&a).unwrap().unwrap().status,
            ConnectionStatus::Connected
        );

        store.close().await.unwrap();
        assert_eq!(written(&mut sub), 1, "the change made meanwhile, once");
        assert_eq!(store.materialised_revision(), store.committed_revision());
        assert!(store.overlay().is_empty());
        let stored = store.inner.db.get(&key).unwrap().unwrap();
        assert_eq!(
            crate::store::codec::decode_state(&stored).unwrap().status,
            ConnectionStatus::Connected
        );
        let entries = store
            .inner
            .db
            .scan_prefix(keys::client_log_prefix(&a))
            .count();
        assert_eq!(entries, 21, "every log entry");
    }

    /// While a write-back is held up, the writer takes commands until the
    /// overlay holds its bound of changes, then waits for the write-back
    /// instead of growing the overlay further; it goes on once the
    /// write-back is through.
    #[tokio::test]
    async fn the_writer_waits_for_a_write_back_that_is_far_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let group = crate::store::StoreOptions::default().max_batch_events;
        let first = async {
            store
                .commit_events(vec![connect("d:o:t:first", 1)])
                .await
                .unwrap();
        };
        let go = pause_write_back(&store, first).await;

        let mut n = 0;
        while store.overlay().changes < super::MAX_CHANGES {
            let events = (0..group)
                .map(|_| {
                    n += 1;
                    connect(&format!("d:o:t:c{n}"), 1)
                })
                .collect();
            tokio::time::timeout(
                std::time::Duration::from_secs(60),
                store.commit_events(events),
            )
            .await
            .expect("below the bound the writer does not wait")
            .unwrap();
        }
        let late = store.commit_events(vec![connect("d:o:t:late", 1)]);
        tokio::pin!(late);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(500), &mut late)
                .await
                .is_err(),
            "the writer waits for the write-back"
        );
        assert!(store.overlay().changes < super::MAX_CHANGES + group);

        go.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(30), &mut late)
            .await
            .expect("the writer goes on after the write-back")
            .unwrap();
        let late = ClientId::new("d:o:t:late").unwrap();
        assert!(store.get_state(&late).unwrap().is_some());
        store.close().await.unwrap();
        assert!(store.overlay().is_empty());
        assert_eq!(store.count_states(), n + 2);
    }

    /// A write-back that takes more than the bound (one large command)
    /// does not hold the writer up while it writes: only changes it has not
    /// taken count against the bound.
    #[tokio::test]
    async fn the_writer_goes_on_while_a_large_write_back_is_written() {
        the_writer_goes_on_during_a_large_write_back(WriteBackStep::Applied).await;
    }

    /// Nor while it makes its batches (after a recovery, hundreds of
    /// thousands of records): from the moment it has taken the changes.
    #[tokio::test]
    async fn the_writer_goes_on_while_a_large_write_back_is_batched() {
        the_writer_goes_on_during_a_large_write_back(WriteBackStep::Taken).await;
    }

    async fn the_writer_goes_on_during_a_large_write_back(step: WriteBackStep) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let group = crate::store::StoreOptions::default().max_batch_events;
        store.inner.hold_write_back.store(true, Ordering::Release);
        let mut n = 0;
        while store.overlay().changes < super::MAX_CHANGES + group {
            let events = (0..group)
                .map(|_| {
                    n += 1;
                    connect(&format!("d:o:t:c{n}"), 1)
                })
                .collect();
            store.commit_events(events).await.unwrap();
        }
        let go = pause_write_back_at(&store, step, async {}).await;
        assert!(store.overlay().changes >= super::MAX_CHANGES);

        // Written (not yet trimmed): the writer does not wait for it.
        for k in 0..3 {
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                store.commit_events(vec![connect(&format!("d:o:t:meanwhile{k}"), 1)]),
            )
            .await
            .expect("the writer does not wait for changes being written back")
            .unwrap();
        }
        go.send(()).unwrap();
        store.close().await.unwrap();
        assert!(store.overlay().is_empty());
        assert_eq!(store.count_states(), n + 3);
    }

    /// Commits racing write-backs (each copying the overlay in runs while
    /// commits go on) leave sled with exactly the newest record of every
    /// client and every log entry, as reads saw them before the close.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_racing_write_backs_leave_exactly_the_newest_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let clients = 3 * super::WRITE_BACK_SLICE;
        let name = |i: usize| format!("d:o:t:c{i:05}");
        for round in 0..12u64 {
            let events = (0..clients)
                .step_by(1 + round as usize % 3)
                .map(|i| match round % 2 {
                    0 => connect(&name(i), round + 1),
                    _ => disconnect(&name(i), round),
                })
                .collect();
            store.commit_events(events).await.unwrap();
            store.inner.pacer.wake();
        }
        let ids: Vec<ClientId> = (0..clients)
            .map(|i| ClientId::new(name(i)).unwrap())
            .collect();
        let states: Vec<_> = ids.iter().map(|c| store.get_state(c).unwrap()).collect();
        let logs = store
            .list_logs(None, &LogFilter::default(), 100_000, None, 1_000_000)
            .unwrap()
            .entries;
        store.close().await.unwrap();
        assert!(store.overlay().is_empty());
        drop(store);

        let reopened = Store::open(dir.path(), Default::default()).unwrap();
        let stored: Vec<_> = ids.iter().map(|c| reopened.get_state(c).unwrap()).collect();
        assert_eq!(stored, states);
        let stored_logs = reopened
            .list_logs(None, &LogFilter::default(), 100_000, None, 1_000_000)
            .unwrap()
            .entries;
        assert_eq!(stored_logs, logs);
        reopened.close().await.unwrap();
    }

    /// Writes the overlay back by hand (the store's own write-back is
    /// held), calling `applied` each time a batch is in sled.
    fn write_back_by_hand(store: &Store, mut applied: impl FnMut(&Store)) -> super::Written {
        let db = &store.inner.db;
        super::write_back(
            &store.inner.overlay,
            db,
            |_| (),
            |batch| {
                db.apply_batch(batch)?;
                applied(store);
                Ok(())
            },
        )
        .unwrap()
    }

    /// A write-back holds one run at a time: the records of a run leave the
    /// overlay once sled holds them (reads then find them there), while
    /// the runs after it are still in the overlay, and a record a commit
    /// changed meanwhile stays.
    #[tokio::test]
    async fn each_run_of_a_write_back_leaves_the_overlay_once_sled_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        store.inner.hold_write_back.store(true, Ordering::Release);
        let clients = 3 * super::WRITE_BACK_SLICE;
        let name = |i: usize| format!("d:o:t:c{i:05}");
        let connects = (0..clients).map(|i| connect(&name(i), 1)).collect();
        store.commit_events(connects).await.unwrap();
        let first = ClientId::new(name(0)).unwrap();
        let expected = store.get_state(&first).unwrap();

        let mut held = Vec::new();
        let written = write_back_by_hand(&store, |store| {
            let o = store.overlay();
            held.push((o.states.len(), o.logs.len()));
        });
        // One batch per run of records, one per run of entries, then the
        // position; each sees the runs before it gone from the overlay.
        let slice = super::WRITE_BACK_SLICE;
        let full = 3 * slice;
        assert_eq!(
            held,
            [
                (full, full),
                (2 * slice, full),
                (slice, full),
                (0, full),
                (0, 2 * slice),
                (0, slice),
                (0, 0),
            ]
        );
        assert_eq!(store.get_state(&first).unwrap(), expected, "read from sled");
        assert!(!store.overlay().is_empty(), "counts go with the trim");
        store.overlay_mut().trim(written);
        assert!(store.overlay().is_empty());
        store.inner.hold_write_back.store(false, Ordering::Release);
        store.close().await.unwrap();
    }

    /// A record changed by a commit while its run is being written stays in
    /// the overlay (the newer one), and sled gets it with the next
    /// write-back.
    #[tokio::test]
    async fn a_record_changed_while_its_run_is_written_stays_for_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        store.inner.hold_write_back.store(true, Ordering::Release);
        store
            .commit_events(vec![connect("d:o:t:a", 1)])
            .await
            .unwrap();
        let a = ClientId::new("d:o:t:a").unwrap();
        let mut changed = false;
        let written = write_back_by_hand(&store, |store| {
            if !changed {
                // As a commit would, between the copy and the trim.
                changed = true;
                let newer = super::super::codec::encode_state(&crate::domain::ConnectionState {
                    status: ConnectionStatus::Disconnected,
                    ..store.get_state(&a).unwrap().unwrap()
                });
                store
                    .overlay_mut()
                    .states
                    .insert(keys::state(&a), Some(newer));
            }
        });
        store.overlay_mut().trim(written);
        assert_eq!(
            store.get_state(&a).unwrap().unwrap().status,
            ConnectionStatus::Disconnected,
            "the newer record stayed in the overlay"
        );
        let stored = store.inner.db.get(keys::state(&a)).unwrap().unwrap();
        assert_eq!(
            super::super::codec::decode_state(&stored).unwrap().status,
            ConnectionStatus::Connected,
            "sled holds what the run wrote"
        );
        store.inner.hold_write_back.store(false, Ordering::Release);
        store.close().await.unwrap();
    }

    /// A crash part way through a write-back (some of its batches in sled,
    /// the materialised position not yet moved) replays to exactly the
    /// state of a run without the crash.
    #[tokio::test]
    async fn a_crash_part_way_through_a_write_back_replays_to_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let live_path = dir.path().join("live");
        let crashed_path = dir.path().join("crashed");
        let store = Store::open(&live_path, Default::default()).unwrap();
        store.inner.hold_write_back.store(true, Ordering::Release);
        // More writes than one batch of a write-back holds, with clients
        // that change again, are deleted, and fail to connect.
        let clients = super::WRITE_BACK_SLICE + 100;
        let connects = (0..clients)
            .map(|i| connect(&format!("d:o:t:c{i:05}"), 1))
            .collect();
        store.commit_events(connects).await.unwrap();
        store
            .commit_events(
                (0..clients)
                    .step_by(3)
                    .map(|i| disconnect(&format!("d:o:t:c{i:05}"), 1))
                    .collect(),
            )
            .await
            .unwrap();
        store
            .delete_state(ClientId::new("d:o:t:c00004").unwrap())
            .await
            .unwrap();
        store
            .commit_events(vec![failed("d:o:t:c00005", 2), connect("d:o:t:c00006", 2)])
            .await
            .unwrap();
        let before = store.materialised_revision();

        // The first batch of the write-back reaches the disk; then the crash.
        let db = &store.inner.db;
        let mut batches = 0;
        let crashed = super::write_back(
            &store.inner.overlay,
            db,
            |_| (),
            |batch| {
                batches += 1;
                if batches > 1 {
                    return Err(crate::store::StoreError::Closed);
                }
                db.apply_batch(batch)?;
                Ok(db.flush().map(drop)?)
            },
        );
        assert!(crashed.is_err(), "more than one batch");
        assert_eq!(
            super::stored_position(&store.inner.db).unwrap(),
            Some(before),
            "the materialised position moves with the last batch only"
        );
        copy_dir(&live_path, &crashed_path);

        store.inner.hold_write_back.store(false, Ordering::Release);
        let index = store.inner.index.all_keys();
        store.close().await.unwrap();
        let expected = dump(&store);

        let replayed = Store::open(&crashed_path, Default::default()).unwrap();
        assert_eq!(replayed.materialised_revision(), store.committed_revision());
        assert_eq!(dump(&replayed), expected);
        assert_eq!(replayed.inner.index.all_keys(), index);
        replayed.close().await.unwrap();
    }

    /// A fixed time, `secs` after a base: the same in every run.
    fn at(secs: i64) -> crate::domain::Timestamp {
        chrono::DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    /// [`event`] at a fixed time.
    fn timed(client: &str, connection_id: u64, secs: i64, kind: EventKind) -> LifecycleEvent {
        LifecycleEvent {
            time: at(secs),
            ..event(client, connection_id, kind)
        }
    }

    /// Every answer a reader can get from the indexes: each filter they
    /// serve, in each order they serve, both directions, read in small
    /// pages (cursors included); and every log, whole and per client.
    fn answers(store: &Store, clients: &[&str]) -> Vec<String> {
        use crate::domain::{ClientType, TimeRange};
        let between = |after: i64, before: i64| TimeRange {
            after: Some(at(after)),
            before: Some(at(before)),
        };
        let filters = [
            StateFilter::default(),
            StateFilter {
                status: Some(ConnectionStatus::Connected),
                ..Default::default()
            },
            StateFilter {
                status: Some(ConnectionStatus::Disconnected),
                ..Default::default()
            },
            StateFilter {
                client_type: Some(ClientType::Gateway),
                ..Default::default()
            },
            StateFilter {
                client_type: Some(ClientType::Application),
                ..Default::default()
            },
            StateFilter {
                type_id: Some("t1".into()),
                ..Default::default()
            },
            StateFilter {
                device_id: Some("x3".into()),
                ..Default::default()
            },
            StateFilter {
                client_id_prefix: Some("d:o:t1:x1".into()),
                ..Default::default()
            },
            StateFilter {
                connected: between(5, 150),
                ..Default::default()
            },
            StateFilter {
                disconnected: between(0, 120),
                ..Default::default()
            },
            StateFilter {
                active: between(100, 1000),
                status: Some(ConnectionStatus::Connected),
                ..Default::default()
            },
        ];
        let fields = [
            SortField::ClientId,
            SortField::LastConnectTime,
            SortField::LastDisconnectTime,
            SortField::LastActivityTime,
            SortField::ConnectionStatus,
        ];
        let mut answers = Vec::new();
        for filter in &filters {
            for field in fields {
                for descending in [false, true] {
                    let order = StateOrder { field, descending };
                    let mut cursor = None;
                    loop {
                        let page = store
                            .list_states(filter, order, 7, cursor.as_deref(), 100_000)
                            .unwrap();
                        answers.push(format!("{filter:?} {order:?}: {:?}", page.states));
                        match page.cursor {
                            Some(next) => cursor = Some(next),
                            None => break,
                        }
                    }
                }
            }
        }
        let mut listed = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .list_logs(None, &LogFilter::default(), 9, cursor, 100_000)
                .unwrap();
            listed.extend(page.entries);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        answers.push(format!("all logs: {listed:?}"));
        for client in clients {
            let id = ClientId::new(*client).unwrap();
            let log = store
                .list_logs(Some(&id), &LogFilter::default(), 1000, None, 100_000)
                .unwrap();
            let state = store.get_state(&id).unwrap();
            answers.push(format!("{client}: {state:?} {:?}", log.entries));
        }
        answers.push(format!("{} records", store.count_states()));
        answers
    }

    /// The same commits, run once without a crash and once crashed after an
    /// index checkpoint and more commits that were never written back: the
    /// crashed store, restarted from the checkpoint and the log tail, ends
    /// in exactly the state of the other, every record, log entry, feed
    /// record and revision as stored, the index keys, and every answer to
    /// every filter and order the indexes serve.
    #[tokio::test]
    async fn a_restart_from_a_checkpoint_and_the_log_tail_ends_where_a_clean_run_ends() {
        let dir = tempfile::tempdir().unwrap();
        let live_path = dir.path().join("live");
        let crashed_path = dir.path().join("crashed");
        let store = Store::open(&live_path, Default::default()).unwrap();
        let devices: Vec<String> = (0..12).map(|i| format!("d:o:t1:x{i}")).collect();
        let mut clients: Vec<&str> = devices.iter().map(String::as_str).collect();
        clients.extend(["g:o:t2:gw", "a:o:app", "A:o:shared:1", "plain-client"]);
        let connected = || EventKind::Connected(info());
        let closed = || EventKind::Disconnected(DisconnectCause::SocketClosed);

        // Before the checkpoint: everyone connects, some leave.
        let first: Vec<LifecycleEvent> = clients
            .iter()
            .enumerate()
            .map(|(i, c)| timed(c, 1, i as i64, connected()))
            .collect();
        store.commit_events(first).await.unwrap();
        for (i, c) in clients.iter().enumerate().step_by(3) {
            store
                .commit_events(vec![timed(c, 1, 100 + i as i64, closed())])
                .await
                .unwrap();
        }
        store.written_back(std::time::Duration::from_secs(10)).await;
        let stamp = store.checkpoint().unwrap();
        assert_eq!(stamp, store.committed_revision());

        // After it, only in the log: reconnects, takeovers, activity,
        // failed connects, deletions, a client deleted and back, a new one.
        store.inner.hold_write_back.store(true, Ordering::Release);
        for (i, c) in clients.iter().enumerate() {
            let secs = 200 + 10 * i as i64;
            let events = match i % 4 {
                0 => vec![timed(c, 2, secs, connected())],
                1 => vec![
                    timed(c, 1, secs, EventKind::Activity(ActivityKind::Publish)),
                    timed(c, 1, secs + 1, closed()),
                ],
                2 => vec![
                    timed(c, 3, secs, connected()),
                    timed(c, 4, secs + 1, connected()),
                ],
                _ => vec![timed(
                    c,
                    9,
                    secs,
                    EventKind::ConnectFailed {
                        info: info(),
                        failure: ConnectFailure::BadCredentials,
                    },
                )],
            };
            store.commit_events(events).await.unwrap();
        }
        for c in ["d:o:t1:x5", "a:o:app"] {
            store.delete_state(ClientId::new(c).unwrap()).await.unwrap();
        }
        store
            .commit_events(vec![
                timed("d:o:t1:x5", 7, 900, connected()),
                timed("d:o:t1:new", 1, 901, connected()),
            ])
            .await
            .unwrap();
        clients.push("d:o:t1:new");
        assert!(store.materialised_revision() <= stamp);

        // The crash: the store as the disk has it now.
        copy_dir(&live_path, &crashed_path);

        // The run without a crash.
        store.inner.hold_write_back.store(false, Ordering::Release);
        store.close().await.unwrap();
        let expected = (
            dump(&store),
            store.inner.index.all_keys(),
            answers(&store, &clients),
        );
        assert_eq!(store.materialised_revision(), store.committed_revision());

        let restarted = Store::open(&crashed_path, Default::default()).unwrap();
        assert!(
            restarted
                .inner
                .index_from_checkpoint
                .load(Ordering::Relaxed),
            "the indexes came from the checkpoint"
        );
        assert_eq!(restarted.committed_revision(), store.committed_revision());
        assert_eq!(
            restarted.materialised_revision(),
            store.committed_revision()
        );
        let (records, index, answered) = expected;
        assert_eq!(dump(&restarted), records);
        assert_eq!(restarted.inner.index.all_keys(), index);
        let restarted_answers = answers(&restarted, &clients);
        assert_eq!(restarted_answers.len(), answered.len());
        for (got, want) in restarted_answers.iter().zip(&answered) {
            assert_eq!(got, want);
        }
        restarted.close().await.unwrap();
    }
}
