//! The secondary indexes of state records (by last activity, connect and
//! disconnect time, and by status), kept in memory and rebuilt from the
//! records at start-up.
//!
//! Keeping them out of sled makes a state change cost one sled write
//! instead of up to seven (an index move is a delete and an insert), which
//! is what bounds ingest throughput. Keys use the byte layout of
//! [`super::keys`], so ranges and cursors work as they would on disk.
//!
//! Readers copy short runs of keys under the read lock and release it, so a
//! long listing never holds the writer up. The writer adds a record's new
//! keys before the sled commit and removes the old ones after it: a reader
//! always finds a key that matches the record it then reads.

use std::{collections::BTreeSet, ops::Bound, sync::RwLock};

use super::keys;
use crate::domain::ConnectionState;

/// Keys a reader copies per lock.
const CHUNK: usize = 256;

#[derive(Default)]
pub(super) struct StateIndex {
    keys: RwLock<BTreeSet<Box<[u8]>>>,
}

fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The index keys of one record.
pub(super) fn keys_of(state: &ConnectionState) -> [Box<[u8]>; 4] {
    let client = &state.client_id;
    [
        keys::time_index(keys::BY_ACTIVITY, Some(state.last_activity_time), client).into(),
        keys::time_index(keys::BY_CONNECT, Some(state.last_connect_time), client).into(),
        keys::time_index(keys::BY_DISCONNECT, state.last_disconnect_time(), client).into(),
        keys::status_index(state.status, client).into(),
    ]
}

impl StateIndex {
    pub(super) fn insert_all(&self, added: impl IntoIterator<Item = Box<[u8]>>) {
        let mut keys = self.keys.write().expect("index lock");
        keys.extend(added);
    }

    pub(super) fn remove_all<'a>(&self, removed: impl IntoIterator<Item = &'a Box<[u8]>>) {
        let mut keys = self.keys.write().expect("index lock");
        for key in removed {
            keys.remove(key);
        }
    }

    pub(super) fn clear(&self) {
        self.keys.write().expect("index lock").clear();
    }

    pub(super) fn len(&self) -> usize {
        self.keys.read().expect("index lock").len()
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
