//! The secondary indexes of state records (by last activity, connect and
//! disconnect time, and by status), kept in memory and rebuilt from the
//! records at start-up.
//!
//! Keeping them out of sled makes a state change cost one sled write
//! instead of up to seven (an index move is a delete and an insert), which
//! is what bounds ingest throughput. Keys use the byte layout of
//! [`super::keys`], so ranges and cursors work as they would on disk.
//!
//! The indexes are checkpointed to a snapshot file stamped with the store
//! revision they hold, periodically and at a clean stop. A start loads the
//! newest checkpoint instead of reading every record, then brings it up to
//! date from the log: the keys of every client changed after the stamp are
//! dropped and made again from its record. Only without a usable
//! checkpoint (none, damaged, or older than the log reaches back) are the
//! indexes rebuilt from all the records.
//!
//! Readers copy short runs of keys under the read lock and release it, so a
//! long listing never holds the writer up. The writer adds a record's new
//! keys before the sled commit and removes the old ones after it: a reader
//! always finds a key that matches the record it then reads. For the same
//! reason a client without keys has no record, which is how the writer
//! skips the sled lookup for a client it has never seen (a first connect).

use std::{
    collections::BTreeSet,
    io::{BufWriter, Write},
    ops::Bound,
    path::Path,
    sync::{RwLock, atomic::Ordering},
};

use super::{StoreError, codec, keys};
use crate::domain::{ClientId, ConnectionState, ConnectionStatus};

/// Keys a reader copies per lock.
const CHUNK: usize = 256;

/// Keys a checkpoint copies per lock.
const SNAPSHOT_RUN: usize = 16 * 1024;

#[derive(Default)]
pub(super) struct StateIndex {
    keys: RwLock<BTreeSet<Box<[u8]>>>,
    /// Records indexed (kept with the keys: counting them would be a scan).
    records: std::sync::atomic::AtomicUsize,
}

/// Every record has exactly one status key: counting them counts records.
fn is_record_key(key: &[u8]) -> bool {
    key.first() == Some(&keys::BY_STATUS)
}

fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The index keys of one record.
pub(super) fn keys_of(state: &ConnectionState) -> Vec<Box<[u8]>> {
    index_keys(
        &state.client_id,
        state.status,
        state.last_activity_time.timestamp_millis(),
        state.last_connect_time.timestamp_millis(),
        state.last_disconnect_time().map(|t| t.timestamp_millis()),
    )
}

/// The index keys that differ between two versions of one client's record
/// (`None`: no record): the old version's go to `removed`, the new one's to
/// `added`. Only the fields that changed are made into keys.
pub(super) fn changed_keys(
    before: Option<&ConnectionState>,
    after: Option<&ConnectionState>,
    added: &mut Vec<Box<[u8]>>,
    removed: &mut Vec<Box<[u8]>>,
) {
    let (b, a) = match (before, after) {
        (None, None) => return,
        (None, Some(a)) => return added.extend(keys_of(a)),
        (Some(b), None) => return removed.extend(keys_of(b)),
        (Some(b), Some(a)) => (b, a),
    };
    debug_assert_eq!(b.client_id, a.client_id, "one client's record");
    let client = &a.client_id;
    let ms = |t: crate::domain::Timestamp| Some(t.timestamp_millis());
    let times = [
        (
            keys::BY_ACTIVITY,
            ms(b.last_activity_time),
            ms(a.last_activity_time),
        ),
        (
            keys::BY_CONNECT,
            ms(b.last_connect_time),
            ms(a.last_connect_time),
        ),
        (
            keys::BY_DISCONNECT,
            b.last_disconnect_time().and_then(ms),
            a.last_disconnect_time().and_then(ms),
        ),
    ];
    for (prefix, old, new) in times {
        if old != new {
            removed.push(keys::time_index_ms(prefix, old, client).into());
            added.push(keys::time_index_ms(prefix, new, client).into());
        }
    }
    if b.status != a.status {
        removed.push(keys::status_index(b.status, client).into());
        added.push(keys::status_index(a.status, client).into());
    }
    // The type key is made of the client id alone: it never changes.
}

/// The index keys of a stored record, decoding only what they need.
pub(super) fn keys_of_stored(bytes: &[u8]) -> Result<Vec<Box<[u8]>>, StoreError> {
    let f: codec::IndexedFields = codec::decode(bytes)?;
    let client = ClientId::new(f.client_id).map_err(|_| StoreError::Corrupt("client id".into()))?;
    let status = match f.status {
        1 => ConnectionStatus::Connected,
        2 => ConnectionStatus::Disconnected,
        _ => return Err(StoreError::Corrupt("status".into())),
    };
    Ok(index_keys(
        &client,
        status,
        f.last_activity_ms,
        f.last_connect_ms,
        f.last_disconnect.map(|d| d.time_ms),
    ))
}

fn index_keys(
    client: &ClientId,
    status: ConnectionStatus,
    activity_ms: i64,
    connect_ms: i64,
    disconnect_ms: Option<i64>,
) -> Vec<Box<[u8]>> {
    let mut keys: Vec<Box<[u8]>> = vec![
        keys::time_index_ms(keys::BY_ACTIVITY, Some(activity_ms), client).into(),
        keys::time_index_ms(keys::BY_CONNECT, Some(connect_ms), client).into(),
        keys::time_index_ms(keys::BY_DISCONNECT, disconnect_ms, client).into(),
        keys::status_index(status, client).into(),
    ];
    if let Some(type_id) = client.kind().type_id() {
        keys.push(keys::type_index(type_id, client).into());
    }
    keys
}

impl StateIndex {
    pub(super) fn insert_all(&self, added: impl IntoIterator<Item = Box<[u8]>>) {
        let mut keys = self.keys.write().expect("index lock");
        let mut records = 0;
        for key in added {
            let record = is_record_key(&key);
            if keys.insert(key) && record {
                records += 1;
            }
        }
        self.records.fetch_add(records, Ordering::Relaxed);
    }

    pub(super) fn remove_all<'a>(&self, removed: impl IntoIterator<Item = &'a Box<[u8]>>) {
        let mut keys = self.keys.write().expect("index lock");
        let mut records = 0;
        for key in removed {
            if keys.remove(key) && is_record_key(key) {
                records += 1;
            }
        }
        self.records.fetch_sub(records, Ordering::Relaxed);
    }

    pub(super) fn clear(&self) {
        self.keys.write().expect("index lock").clear();
        self.records.store(0, Ordering::Relaxed);
    }

    /// Whether `client` may have a record: every record has a status key,
    /// added before the record can be read and removed once it cannot, so
    /// `false` means it has none (in the overlay or in sled), and a writer
    /// need not look.
    pub(super) fn may_have_record(&self, client: &ClientId) -> bool {
        let mut key = keys::status_index(ConnectionStatus::Connected, client);
        let keys = self.keys.read().expect("index lock");
        if keys.contains(key.as_slice()) {
            return true;
        }
        key[1] = keys::status_byte(ConnectionStatus::Disconnected);
        keys.contains(key.as_slice())
    }

    /// Number of records indexed.
    #[cfg(test)]
    pub(super) fn all_keys(&self) -> Vec<Box<[u8]>> {
        self.keys
            .read()
            .expect("index lock")
            .iter()
            .cloned()
            .collect()
    }

    pub(super) fn records(&self) -> usize {
        self.records.load(Ordering::Relaxed)
    }

    /// Up to [`CHUNK`] keys in `(lower, upper)`, in order or reversed.
    pub(super) fn chunk(
        &self,
        lower: &Bound<Vec<u8>>,
        upper: &Bound<Vec<u8>>,
        descending: bool,
    ) -> Vec<Box<[u8]>> {
        let keys = self.keys.read().expect("index lock");
        let range = keys.range::<[u8], _>((as_slice(lower), as_slice(upper)));
        if descending {
            range.rev().take(CHUNK).cloned().collect()
        } else {
            range.take(CHUNK).cloned().collect()
        }
    }
}

/// Name of the snapshot file in the data folder.
const SNAPSHOT_FILE: &str = "index.snapshot";
const SNAPSHOT_MAGIC: &[u8; 8] = b"CSIDX\x00\x00\x02";

impl StateIndex {
    /// Writes the indexes to the snapshot file (write to a temporary file,
    /// sync, rename), stamped with the revision `revision` gives while the
    /// keys are copied under the lock: the keys then hold every change up
    /// to the stamp (and perhaps some of the commit under way, which the
    /// load brings up to date like any other change after the stamp).
    pub(super) fn save_snapshot(
        &self,
        dir: &Path,
        revision: impl FnOnce() -> u64,
    ) -> std::io::Result<u64> {
        // The stamp first, then the keys in runs, each under a short read
        // lock (copying millions at once would hold the writer up for as
        // long). A client changed while the keys are copied has a revision
        // after the stamp: loading the snapshot makes its keys again from
        // its record ([`StateIndex::refresh`]), whatever mix of them the
        // copy caught.
        let revision = revision();
        let mut keys: Vec<Box<[u8]>> = Vec::new();
        loop {
            let after = keys.last().cloned();
            let lock = self.keys.read().expect("index lock");
            let from = match &after {
                Some(last) => Bound::Excluded(&**last),
                None => Bound::Unbounded,
            };
            let before = keys.len();
            keys.extend(
                lock.range::<[u8], _>((from, Bound::Unbounded))
                    .take(SNAPSHOT_RUN)
                    .cloned(),
            );
            if keys.len() - before < SNAPSHOT_RUN {
                break;
            }
        }
        let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let file = std::fs::File::create(&tmp)?;
        let mut out = BufWriter::new(file);
        let mut crc = crc32fast::Hasher::new();
        let mut put = |out: &mut BufWriter<std::fs::File>, bytes: &[u8]| {
            crc.update(bytes);
            out.write_all(bytes)
        };
        put(&mut out, SNAPSHOT_MAGIC)?;
        put(&mut out, &revision.to_be_bytes())?;
        put(&mut out, &(keys.len() as u64).to_be_bytes())?;
        for key in keys.iter() {
            let len = u16::try_from(key.len()).map_err(std::io::Error::other)?;
            put(&mut out, &len.to_be_bytes())?;
            put(&mut out, key)?;
        }
        out.write_all(&crc.finalize().to_be_bytes())?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
        Ok(revision)
    }

    /// Loads the snapshot if it is intact and its stamp is at most
    /// `committed`; returns the stamp. The keys of changes after the stamp
    /// still have to be brought up to date ([`StateIndex::refresh`]).
    pub(super) fn load_snapshot(&self, dir: &Path, committed: u64) -> Option<u64> {
        let bytes = std::fs::read(dir.join(SNAPSHOT_FILE)).ok()?;
        let (stamp, keys) = parse_snapshot(&bytes)?;
        if stamp > committed {
            return None;
        }
        let records = keys.iter().filter(|k| is_record_key(k)).count();
        *self.keys.write().expect("index lock") = keys;
        self.records.store(records, Ordering::Relaxed);
        Some(stamp)
    }

    /// Removes the snapshot: after a failed write or a clearing of all
    /// data it may hold keys no later change accounts for.
    pub(super) fn discard_snapshot(dir: &Path) {
        let _ = std::fs::remove_file(dir.join(SNAPSHOT_FILE));
    }

    /// Drops every key of the clients in `changed` and adds the keys of
    /// their records as they are now (`None`: deleted).
    pub(super) fn refresh(&self, changed: &[(ClientId, Option<ConnectionState>)]) {
        let names: std::collections::HashSet<&str> =
            changed.iter().map(|(c, _)| c.as_str()).collect();
        let mut keys = self.keys.write().expect("index lock");
        keys.retain(|k| keys::client_of_index(k).is_none_or(|c| !names.contains(c)));
        for state in changed.iter().filter_map(|(_, s)| s.as_ref()) {
            keys.extend(keys_of(state));
        }
        let records = keys.iter().filter(|k| is_record_key(k)).count();
        self.records.store(records, Ordering::Relaxed);
    }
}

fn parse_snapshot(bytes: &[u8]) -> Option<(u64, BTreeSet<Box<[u8]>>)> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32fast::hash(body).to_be_bytes() != crc {
        return None;
    }
    let rest = body.strip_prefix(SNAPSHOT_MAGIC)?;
    let (stamp, rest) = rest.split_at_checked(8)?;
    let stamp = u64::from_be_bytes(stamp.try_into().ok()?);
    let (count, mut rest) = rest.split_at_checked(8)?;
    let count = u64::from_be_bytes(count.try_into().ok()?);
    let mut keys = Vec::with_capacity(usize::try_from(count).ok()?.min(1 << 26));
    for _ in 0..count {
        let (len, tail) = rest.split_at_checked(2)?;
        let len = u16::from_be_bytes(len.try_into().ok()?) as usize;
        let (key, tail) = tail.split_at_checked(len)?;
        keys.push(Box::<[u8]>::from(key));
        rest = tail;
    }
    if !rest.is_empty() {
        return None;
    }
    // Written in order: building from sorted keys is linear.
    Some((stamp, keys.into_iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: [&str; 3] = ["d:o:sensor:s1", "a:o:app", "plain-client"];

    /// The records `id` goes through: connected, active, disconnected,
    /// connected again.
    fn records_of(id: &str) -> Vec<ConnectionState> {
        use crate::{
            domain::{ActivityKind, ConnectionInfo, DisconnectCause, EventKind, LifecycleEvent},
            rules,
        };
        let at = |s: i64| chrono::DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap();
        let event = |conn, secs, kind| LifecycleEvent {
            client_id: ClientId::new(id).unwrap(),
            time: at(secs),
            connection_id: conn,
            broker: std::sync::Arc::from("t"),
            kind,
            peer: None,
        };
        let info = ConnectionInfo {
            addr: "10.0.0.1".parse().unwrap(),
            port: 1,
            secure: false,
            username: "u".into(),
            protocol: None,
            keep_alive: 30,
            clean_session: true,
        };
        let kinds = [
            (1, 0, EventKind::Connected(info.clone())),
            (1, 5, EventKind::Activity(ActivityKind::Publish)),
            (1, 9, EventKind::Disconnected(DisconnectCause::SocketClosed)),
            (2, 20, EventKind::Connected(info)),
        ];
        let mut records: Vec<ConnectionState> = Vec::new();
        for (revision, (conn, secs, kind)) in kinds.into_iter().enumerate() {
            let next = rules::apply(
                records.last(),
                &event(conn, secs, kind),
                revision as u64 + 1,
            )
            .unwrap()
            .state
            .unwrap();
            records.push(next);
        }
        records
    }

    /// Every version of a record (connected or not) says the client may
    /// have one; once its keys are gone, or for a client never indexed,
    /// it has none.
    #[test]
    fn a_client_may_have_a_record_exactly_while_one_is_indexed() {
        let index = StateIndex::default();
        let other = ClientId::new("d:o:sensor:never").unwrap();
        for id in IDS {
            let client = ClientId::new(id).unwrap();
            assert!(!index.may_have_record(&client), "{id}: nothing indexed");
            let mut before: Option<ConnectionState> = None;
            for state in records_of(id) {
                let (mut added, mut removed) = (Vec::new(), Vec::new());
                changed_keys(before.as_ref(), Some(&state), &mut added, &mut removed);
                index.insert_all(added);
                index.remove_all(&removed);
                assert!(index.may_have_record(&client), "{id}: {:?}", state.status);
                before = Some(state);
            }
            index.remove_all(&keys_of(&before.unwrap()));
            assert!(!index.may_have_record(&client), "{id}: its keys removed");
            assert!(!index.may_have_record(&other));
        }
    }

    #[test]
    fn keys_from_stored_bytes_equal_keys_from_the_record() {
        for id in IDS {
            for state in records_of(id) {
                let stored = codec::encode_state(&state);
                assert_eq!(keys_of_stored(&stored).unwrap(), keys_of(&state), "{id}");
            }
        }
    }

    /// The keys a change adds and removes are exactly the difference
    /// between the keys of the record before and after it.
    #[test]
    fn changed_keys_are_the_difference_of_the_records_keys() {
        use std::collections::BTreeSet;

        for id in IDS {
            let mut states: Vec<Option<ConnectionState>> =
                records_of(id).into_iter().map(Some).collect();
            states.push(None);
            for before in &states {
                for after in &states {
                    let (mut added, mut removed) = (Vec::new(), Vec::new());
                    changed_keys(before.as_ref(), after.as_ref(), &mut added, &mut removed);
                    let old: BTreeSet<_> = before.iter().flat_map(keys_of).collect();
                    let new: BTreeSet<_> = after.iter().flat_map(keys_of).collect();
                    assert_eq!(
                        added.into_iter().collect::<BTreeSet<_>>(),
                        new.difference(&old).cloned().collect(),
                        "{id}: added"
                    );
                    assert_eq!(
                        removed.into_iter().collect::<BTreeSet<_>>(),
                        old.difference(&new).cloned().collect(),
                        "{id}: removed"
                    );
                }
            }
        }
    }

    /// A checkpoint copies the keys in runs; every key comes back.
    #[test]
    fn a_snapshot_of_many_runs_loads_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let index = StateIndex::default();
        let all: Vec<Box<[u8]>> = (0..SNAPSHOT_RUN * 2 + 7)
            .map(|i| format!("a{i:08}").into_bytes().into())
            .collect();
        index.insert_all(all.clone());
        assert_eq!(index.save_snapshot(dir.path(), || 3).unwrap(), 3);
        let loaded = StateIndex::default();
        assert_eq!(loaded.load_snapshot(dir.path(), 3), Some(3));
        assert_eq!(loaded.all_keys(), all);
    }

    #[test]
    fn a_snapshot_loads_only_up_to_the_committed_revision_and_intact() {
        let dir = tempfile::tempdir().unwrap();
        let index = StateIndex::default();
        index.insert_all([b"a1".to_vec().into(), b"t2".to_vec().into()]);
        assert_eq!(index.save_snapshot(dir.path(), || 7).unwrap(), 7);

        let other = StateIndex::default();
        assert_eq!(
            other.load_snapshot(dir.path(), 6),
            None,
            "newer than the store"
        );
        assert_eq!(other.load_snapshot(dir.path(), 9), Some(7));
        assert_eq!(other.records(), 1);

        let path = dir.path().join(SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(
            StateIndex::default().load_snapshot(dir.path(), 7),
            None,
            "corrupt"
        );
        StateIndex::discard_snapshot(dir.path());
        assert!(!path.exists());
    }
}
