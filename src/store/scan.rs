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
    /// Where to continue; `None` on the last page.
    pub cursor: Option<LogCursor>,
    pub revision: Revision,
}

/// A place in a log listing: the entries after it in the listing's order
/// come next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogCursor {
    /// All clients, in commit order: continue below this revision.
    Revision(Revision),
    /// One client, by time: continue below this (time in Unix
    /// milliseconds, revision).
    Time(i64, Revision),
}

impl LogCursor {
    /// 8 bytes for [`LogCursor::Revision`], 16 for [`LogCursor::Time`].
    pub fn to_bytes(self) -> Vec<u8> {
        match self {
            LogCursor::Revision(r) => r.to_be_bytes().to_vec(),
            LogCursor::Time(ms, r) => [keys::encode_time(ms), r.to_be_bytes()].concat(),
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<LogCursor> {
        match bytes.len() {
            8 => Some(LogCursor::Revision(Revision::from_be_bytes(
                bytes.try_into().ok()?,
            ))),
            16 => {
                // The time as keys::encode_time writes it: sign bit flipped.
                let time = u64::from_be_bytes(bytes[..8].try_into().ok()?) ^ (1 << 63);
                Some(LogCursor::Time(
                    time as i64,
                    Revision::from_be_bytes(bytes[8..].try_into().ok()?),
                ))
            }
            _ => None,
        }
    }
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
        SortField::ClientId => match client.kind().type_id() {
            // Id order with a type filter walks the type index.
            Some(type_id) => keys::type_index(type_id, client),
            None => keys::state(client),
        },
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
    if field == SortField::ClientId
        && let Some(type_id) = &filter.type_id
    {
        // Devices and gateways of one type, in client id order.
        let mut start = keys::type_prefix(type_id);
        let end = keys::prefix_end(&start);
        start.extend_from_slice(filter.client_id_prefix.as_deref().unwrap_or("").as_bytes());
        return (start, end);
    }
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
        let mut page = PageBuilder {
            states: Vec::with_capacity(limit.min(1024)),
            limit,
            budget,
            scanned: 0,
            last_key: None,
        };
        if let (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(u)) = (&lower, &upper)
            && l >= u
        {
            return Ok(page.finish(None, revision));
        }
        if order.field == SortField::ClientId && filter.type_id.is_none() {
            // Records are stored in client id order: walk them directly,
            // merged with the overlay's newer ones. The overlay stays locked
            // for the page, so that a write-back cannot move a record from
            // it to sled behind the walk.
            let overlay = self.overlay();
            let bounds = (lower.clone(), upper.clone());
            let stored = self.inner.db.range::<Vec<u8>, _>(bounds.clone());
            let newer = overlay.states.range::<Vec<u8>, _>(bounds);
            let (stored, newer): (Box<dyn Iterator<Item = _>>, Box<dyn Iterator<Item = _>>) =
                if order.descending {
                    (Box::new(stored.rev()), Box::new(newer.rev()))
                } else {
                    (Box::new(stored), Box::new(newer))
                };
            let mut stored = stored.peekable();
            let mut newer = newer.peekable();
            loop {
                // The next key in the walk's direction, the overlay's copy
                // winning over sled's.
                let stored_key = match stored.peek() {
                    Some(Ok((key, _))) => Some(key.to_vec()),
                    Some(Err(_)) => return Err(stored.next().expect("peeked").unwrap_err().into()),
                    None => None,
                };
                let newer_key = newer.peek().map(|(key, _)| (*key).clone());
                let take_newer = match (&stored_key, &newer_key) {
                    (None, None) => break,
                    (None, Some(_)) => true,
                    (Some(_), None) => false,
                    (Some(s), Some(n)) => {
                        if s == n {
                            stored.next();
                            true
                        } else {
                            (n < s) != order.descending
                        }
                    }
                };
                let (key, state) = if take_newer {
                    let (key, state) = newer.next().expect("peeked");
                    match state {
                        Some(state) => (key.clone(), Some(codec::decode_state(state)?)),
                        // Deleted: not listed.
                        None => continue,
                    }
                } else {
                    let (key, value) = stored.next().expect("peeked")?;
                    (key.to_vec(), Some(codec::decode_state(&value)?))
                };
                let id_matches = std::str::from_utf8(&key[1..])
                    .ok()
                    .and_then(|id| ClientId::new(id).ok())
                    .is_some_and(|id| filter.matches_client_id(&id));
                let matching = state.filter(|s| id_matches && filter.matches(s));
                if let Some(done) = page.offer(&key, matching) {
                    return Ok(page.finish(Some(done), revision));
                }
            }
            return Ok(page.finish(None, revision));
        }
        // Other orders walk an in-memory index, a chunk at a time.
        loop {
            let chunk = self.inner.index.chunk(&lower, &upper, order.descending);
            let Some(last) = chunk.last() else {
                return Ok(page.finish(None, revision));
            };
            let next = Bound::Excluded(last.to_vec());
            if order.descending {
                upper = next;
            } else {
                lower = next;
            }
            for key in &chunk {
                let id = keys::client_of_index(key)
                    .and_then(|id| ClientId::new(id).ok())
                    .ok_or_else(|| StoreError::Corrupt("index key".into()))?;
                // What the id alone rules out needs no read of the record.
                if !filter.matches_client_id(&id) {
                    if let Some(done) = page.offer(key, None) {
                        return Ok(page.finish(Some(done), revision));
                    }
                    continue;
                }
                let state = match self.get_state(&id)? {
                    // The record changed since the index was read: it is
                    // listed at its new place, not here.
                    Some(state) if index_key(order.field, &state) == key.as_ref() => Some(state),
                    _ => None,
                };
                let matching = state.filter(|s| filter.matches(s));
                if let Some(done) = page.offer(key, matching) {
                    return Ok(page.finish(Some(done), revision));
                }
            }
        }
    }

    /// One page of log entries, newest first, continuing after `cursor`.
    ///
    /// One client's log is listed by event time, the revision breaking
    /// ties: an event reported late with an older time takes its place in
    /// time. That log is bounded by the per-client retention count, so the
    /// listing reads it whole and sorts it. The log of all clients is
    /// listed in commit order (by revision), which pages through any
    /// number of entries without sorting them.
    pub fn list_logs(
        &self,
        client: Option<&ClientId>,
        filter: &LogFilter,
        limit: usize,
        cursor: Option<LogCursor>,
        budget: usize,
    ) -> Result<LogPage, StoreError> {
        let revision = self.committed_revision();
        let db = &self.inner.db;
        // Locked for the page: a write-back cannot move entries from it to
        // sled behind the listing.
        let overlay = self.overlay();
        let readable_below = self.readable_revision().saturating_add(1);
        let below = match cursor {
            Some(LogCursor::Revision(r)) => r,
            _ => Revision::MAX,
        }
        .min(readable_below);
        let mut page = LogPageBuilder {
            entries: Vec::with_capacity(limit.min(1024)),
            limit,
            budget,
            scanned: 0,
            last: None,
        };
        match client {
            Some(client) => {
                let start = keys::client_log_prefix(client);
                let end = keys::client_log(client, readable_below);
                let mut entries = Vec::new();
                let mut offer = |key: &[u8], entry: LogEntry| -> Result<(), StoreError> {
                    let rev = keys::client_log_revision(key)
                        .ok_or_else(|| StoreError::Corrupt("log key".into()))?;
                    let place = LogCursor::Time(entry.time.timestamp_millis(), rev);
                    if cursor.is_none_or(|c| place < c) {
                        entries.push((place, entry));
                    }
                    Ok(())
                };
                // Entries in sled are older than those in the overlay, and
                // gone when the overlay deleted their client.
                if !overlay.deleted.contains_key(client) {
                    for item in db.range(start.clone()..end.clone()) {
                        let (key, value) = item?;
                        if !overlay.logs.contains_key(key.as_ref()) {
                            offer(&key, codec::decode_log(&value)?)?;
                        }
                    }
                }
                for (key, entry) in overlay.logs.range(start..end) {
                    offer(key, codec::decode_log(entry)?)?;
                }
                entries.sort_unstable_by_key(|(place, _)| std::cmp::Reverse(*place));
                // The log is read whole: the budget does not cut it short.
                page.budget = usize::MAX;
                for (place, entry) in entries {
                    if page.offer(place, filter.matches(&entry).then_some(entry)) {
                        return Ok(page.finish(true, revision));
                    }
                }
            }
            None => {
                let start = keys::revision_key(keys::LOG_BATCH, 0);
                // Past what the overlay knows as written back, sled's
                // records are the overlay's too (a write-back between its
                // writing and its trim): read them there only.
                let end = keys::revision_key(
                    keys::LOG_BATCH,
                    below.min(overlay.written.saturating_add(1)),
                );
                // The overlay's commits are newer than every one in sled.
                let newer = overlay
                    .log_batches
                    .iter()
                    .rev()
                    .filter(|(first, _)| *first < below)
                    .map(|(_, batch)| Ok(batch.clone()));
                let stored = db.range(start..end).rev().map(|item| {
                    let (_, value) = item?;
                    codec::decode::<codec::LogBatchRecord>(&value)
                });
                for batch in newer.chain(stored) {
                    let batch: codec::LogBatchRecord = batch?;
                    for log_ref in batch.entries.iter().rev() {
                        if log_ref.revision >= below {
                            continue;
                        }
                        let id = ClientId::new(log_ref.client_id.as_str())
                            .map_err(|_| StoreError::Corrupt("log reference".into()))?;
                        let entry = match overlay.log_entry(&id, log_ref.revision)? {
                            Some(entry) => entry,
                            None => match db.get(keys::client_log(&id, log_ref.revision))? {
                                Some(v) => Some(codec::decode_log(&v)?),
                                // Trimmed by retention or deleted with its client.
                                None => None,
                            },
                        };
                        let matching = entry.filter(|e| filter.matches(e));
                        if page.offer(LogCursor::Revision(log_ref.revision), matching) {
                            return Ok(page.finish(true, revision));
                        }
                    }
                }
            }
        }
        Ok(page.finish(false, revision))
    }
}

/// Collects one page of states: stops at one match past the page, or when
/// the budget of keys is spent.
struct PageBuilder {
    states: Vec<ConnectionState>,
    limit: usize,
    budget: usize,
    scanned: usize,
    last_key: Option<Vec<u8>>,
}

/// The page is done; continue after this key.
struct Done(Vec<u8>);

impl PageBuilder {
    fn offer(&mut self, key: &[u8], matching: Option<ConnectionState>) -> Option<Done> {
        self.scanned += 1;
        if let Some(state) = matching {
            if self.states.len() == self.limit {
                // One more match exists: the page is full and has a next.
                return Some(Done(self.last_key.take().unwrap_or_default()));
            }
            self.states.push(state);
        }
        self.last_key = Some(key.to_vec());
        if self.scanned >= self.budget {
            return Some(Done(self.last_key.take().unwrap_or_default()));
        }
        None
    }

    fn finish(self, done: Option<Done>, revision: Revision) -> StatePage {
        StatePage {
            states: self.states,
            cursor: done.map(|Done(key)| key).filter(|k| !k.is_empty()),
            revision,
        }
    }
}

struct LogPageBuilder {
    entries: Vec<LogEntry>,
    limit: usize,
    budget: usize,
    scanned: usize,
    last: Option<LogCursor>,
}

impl LogPageBuilder {
    /// True when the page is done and more may follow.
    fn offer(&mut self, place: LogCursor, matching: Option<LogEntry>) -> bool {
        self.scanned += 1;
        if let Some(entry) = matching {
            if self.entries.len() == self.limit {
                return true;
            }
            self.entries.push(entry);
        }
        self.last = Some(place);
        self.scanned >= self.budget
    }

    fn finish(self, more: bool, revision: Revision) -> LogPage {
        LogPage {
            entries: self.entries,
            cursor: if more { self.last } else { None },
            revision,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LogCursor;

    #[test]
    fn log_cursors_round_trip_and_order_newest_last() {
        for cursor in [
            LogCursor::Revision(42),
            LogCursor::Time(1_700_000_000_123, 7),
            LogCursor::Time(-5, 1),
        ] {
            assert_eq!(LogCursor::from_bytes(&cursor.to_bytes()), Some(cursor));
        }
        assert_eq!(LogCursor::from_bytes(&[1, 2, 3]), None);
        // Earlier time first; at the same time, the lower revision.
        assert!(LogCursor::Time(1, 9) < LogCursor::Time(2, 1));
        assert!(LogCursor::Time(2, 1) < LogCursor::Time(2, 3));
    }
}
