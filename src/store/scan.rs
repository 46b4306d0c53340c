//! Ordered, filtered, paged reads over state records and log entries.
//!
//! A listing walks one index in order (or the records themselves for client
//! id order), checks each record against the filter and stops after a page,
//! or after a bounded number of keys so that no request can scan the whole
//! store at once. The cursor is the last key looked at: the next page starts
//! right after it, so a record that exists throughout a paging run is seen
//! exactly once when records are listed by client id. Under a time order a
//! record whose time changes while paging moves to its new place.

use std::ops::Bound;

use super::{Store, StoreError, codec, keys};
use crate::domain::{
    ClientId, ConnectionState, LogEntry, LogFilter, Revision, SortField, StateFilter, StateOrder,
    TimeRange,
};

/// One page of state records.
#[derive(Debug, Clone)]
pub struct StatePage {
    pub states: Vec<ConnectionState>,
    /// The key to continue after; `None` on the last page.
    pub cursor: Option<Vec<u8>>,
    /// The committed revision read before the scan.
    pub revision: Revision,
}

/// One page of log entries, newest first.
#[derive(Debug, Clone)]
pub struct LogPage {
    pub entries: Vec<LogEntry>,
    /// The revision to continue below; `None` on the last page.
    pub cursor: Option<Revision>,
    pub revision: Revision,
}

fn index_prefix(field: SortField) -> u8 {
    match field {
        SortField::ClientId => keys::STATE,
        SortField::LastConnectTime => keys::BY_CONNECT,
        SortField::LastDisconnectTime => keys::BY_DISCONNECT,
        SortField::LastActivityTime => keys::BY_ACTIVITY,
        SortField::ConnectionStatus => keys::BY_STATUS,
    }
}

/// The key `state` has in the index of `field`.
fn index_key(field: SortField, state: &ConnectionState) -> Vec<u8> {
    let client = &state.client_id;
    match field {
        SortField::ClientId => keys::state(client),
        SortField::LastConnectTime => {
            keys::time_index(keys::BY_CONNECT, Some(state.last_connect_time), client)
        }
        SortField::LastDisconnectTime => {
            keys::time_index(keys::BY_DISCONNECT, state.last_disconnect_time(), client)
        }
        SortField::LastActivityTime => {
            keys::time_index(keys::BY_ACTIVITY, Some(state.last_activity_time), client)
        }
        SortField::ConnectionStatus => keys::status_index(state.status, client),
    }
}

/// The key range of the index of `order.field` that can hold matches.
fn key_range(filter: &StateFilter, field: SortField) -> (Vec<u8>, Option<Vec<u8>>) {
    let prefix = index_prefix(field);
    let time_bounds = |range: &TimeRange| {
        let start = range.after.map_or_else(
            || vec![prefix],
            |t| {
                let mut k = vec![prefix];
                k.extend_from_slice(&keys::encode_time(t.timestamp_millis()));
                k
            },
        );
        let end = range.before.map_or_else(
            || keys::prefix_end(&[prefix]),
            |t| {
                let mut k = vec![prefix];
                k.extend_from_slice(&keys::encode_time(t.timestamp_millis()));
                Some(k)
            },
        );
        (start, end)
    };
    match field {
        SortField::ClientId => {
            let mut start = vec![prefix];
            start.extend_from_slice(filter.client_id_prefix.as_deref().unwrap_or("").as_bytes());
            let end = keys::prefix_end(&start);
            (start, end)
        }
        SortField::LastConnectTime => time_bounds(&filter.connected),
        SortField::LastDisconnectTime => time_bounds(&filter.disconnected),
        SortField::LastActivityTime => time_bounds(&filter.active),
        SortField::ConnectionStatus => match filter.status {
            Some(status) => {
                let start = vec![prefix, keys::status_byte(status)];
                let end = keys::prefix_end(&start);
                (start, end)
            }
            None => (vec![prefix], keys::prefix_end(&[prefix])),
        },
    }
}

impl Store {
    /// One page of state records matching `filter` in `order`, continuing
    /// after `cursor`. Looks at no more than `budget` keys; a page cut short
    /// by the budget still has a cursor.
    pub fn list_states(
        &self,
        filter: &StateFilter,
        order: StateOrder,
        limit: usize,
        cursor: Option<&[u8]>,
        budget: usize,
    ) -> Result<StatePage, StoreError> {
        let revision = self.committed_revision();
        let db = &self.inner.db;
        let (start, end) = key_range(filter, order.field);
        let mut lower = Bound::Included(start);
        let mut upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        if let Some(cursor) = cursor {
            if order.descending {
                upper = Bound::Excluded(cursor.to_vec());
            } else {
                lower = Bound::Excluded(cursor.to_vec());
            }
        }
        if let (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(u)) = (&lower, &upper)
            && l >= u
        {
            return Ok(StatePage {
                states: Vec::new(),
                cursor: None,
                revision,
            });
        }
        let iter = db.range::<Vec<u8>, _>((lower, upper));
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            if order.descending {
                Box::new(iter.rev())
            } else {
                Box::new(iter)
            };
        let mut states = Vec::with_capacity(limit.min(1024));
        let mut last_key: Option<Vec<u8>> = None;
        let mut scanned = 0;
        for item in iter {
            let (key, value) = item?;
            scanned += 1;
            let state = if order.field == SortField::ClientId {
                codec::decode_state(&value)?
            } else {
                let Some(id) = keys::client_of_index(&key) else {
                    return Err(StoreError::Corrupt("index key".into()));
                };
                let Ok(id) = ClientId::new(id) else {
                    return Err(StoreError::Corrupt("index key".into()));
                };
                match self.get_state(&id)? {
                    // The record changed since the index was read: it is
                    // listed at its new place, not here.
                    Some(state) if index_key(order.field, &state) == key.as_ref() => state,
                    _ => continue,
                }
            };
            if filter.matches(&state) {
                if states.len() == limit {
                    // One more match exists: the page is full and has a next.
                    return Ok(StatePage {
                        states,
                        cursor: last_key,
                        revision,
                    });
                }
                states.push(state);
            }
            last_key = Some(key.to_vec());
            if scanned >= budget {
                return Ok(StatePage {
                    states,
                    cursor: last_key,
                    revision,
                });
            }
        }
        Ok(StatePage {
            states,
            cursor: None,
            revision,
        })
    }

    /// One page of log entries, newest first, of one client or of all,
    /// continuing below revision `cursor`.
    pub fn list_logs(
        &self,
        client: Option<&ClientId>,
        filter: &LogFilter,
        limit: usize,
        cursor: Option<Revision>,
        budget: usize,
    ) -> Result<LogPage, StoreError> {
        let revision = self.committed_revision();
        let db = &self.inner.db;
        let below = cursor
            .unwrap_or(Revision::MAX)
            .min(revision.saturating_add(1));
        let mut entries = Vec::with_capacity(limit.min(1024));
        let mut last: Option<Revision> = None;
        let mut scanned = 0;
        let mut visit =
            |rev: Revision, value: Option<sled::IVec>| -> Result<Option<bool>, StoreError> {
                scanned += 1;
                let value = match value {
                    Some(v) => v,
                    None => match db.get(keys::revision_key(keys::LOG, rev))? {
                        Some(v) => v,
                        // Removed by retention after the index was read.
                        None => return Ok(None),
                    },
                };
                let entry = codec::decode_log(&value)?;
                if filter.matches(&entry) {
                    if entries.len() == limit {
                        return Ok(Some(true));
                    }
                    entries.push(entry);
                }
                last = Some(rev);
                Ok(Some(scanned >= budget))
            };
        let mut stopped_early = false;
        match client {
            Some(client) => {
                let start = keys::client_log_prefix(client);
                let end = keys::client_log(client, below);
                for item in db.range(start..end).rev() {
                    let (key, _) = item?;
                    let rev = keys::client_log_revision(&key)
                        .ok_or_else(|| StoreError::Corrupt("log index key".into()))?;
                    if let Some(true) = visit(rev, None)? {
                        stopped_early = true;
                        break;
                    }
                }
            }
            None => {
                let start = keys::revision_key(keys::LOG, 0);
                let end = keys::revision_key(keys::LOG, below);
                for item in db.range(start..end).rev() {
                    let (key, value) = item?;
                    let rev = keys::revision_of(&key)
                        .ok_or_else(|| StoreError::Corrupt("log key".into()))?;
                    if let Some(true) = visit(rev, Some(value))? {
                        stopped_early = true;
                        break;
                    }
                }
            }
        }
        Ok(LogPage {
            entries,
            cursor: if stopped_early { last } else { None },
            revision,
        })
    }
}
