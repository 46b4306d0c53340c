//! Retention: deletes connection-log entries older than the maximum age or
//! beyond the per-client count, and changes older than the feed's maximum
//! age or beyond its maximum size.
//!
//! Runs on its own (blocking) thread, in small batches, and only ever
//! deletes keys the writer never writes again, so writes never wait for it.
//! The feed is trimmed from its oldest end only: it stays one contiguous run
//! of revisions, which is what lets a watcher resume without a silent gap.

use chrono::Utc;

use super::{Store, StoreError, codec, keys};
use crate::domain::Revision;

/// Keys deleted per batch.
const CHUNK: usize = 1000;

/// What one retention pass deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub log_entries_by_age: usize,
    pub log_entries_by_count: usize,
    pub changes: usize,
}

impl Store {
    /// Runs one retention pass.
    pub fn run_retention(&self) -> Result<RetentionReport, StoreError> {
        let settings = self.settings();
        let now_ms = Utc::now().timestamp_millis();
        let mut report = RetentionReport::default();

        let log_cutoff = now_ms.saturating_sub(millis(settings.log_max_age));
        report.log_entries_by_age = self.trim_logs_by_age(log_cutoff)?;
        let max = settings.log_max_entries_per_client as usize;
        for client in self.take_grown_logs() {
            report.log_entries_by_count += self.trim_client_log(&client, max)?;
        }
        let feed_cutoff = now_ms.saturating_sub(millis(settings.feed_max_age));
        report.changes = self.trim_feed(feed_cutoff, settings.feed_max_entries)?;
        Ok(report)
    }

    /// Deletes log entries older than `cutoff_ms`, oldest revision first,
    /// stopping at the first younger entry.
    fn trim_logs_by_age(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        let db = &self.inner.db;
        let mut deleted = 0;
        loop {
            let mut batch = sled::Batch::default();
            let mut in_batch = 0;
            let mut reached_young = false;
            for item in db.scan_prefix([keys::LOG]).take(CHUNK) {
                let (key, value) = item?;
                let entry = codec::decode_log(&value)?;
                if entry.time.timestamp_millis() >= cutoff_ms {
                    reached_young = true;
                    break;
                }
                batch.remove(key);
                batch.remove(keys::client_log(&entry.client_id, entry.revision));
                in_batch += 1;
            }
            if in_batch > 0 {
                db.apply_batch(batch)?;
                deleted += in_batch;
            }
            if reached_young || in_batch < CHUNK {
                return Ok(deleted);
            }
        }
    }

    /// Keeps only the newest `max` log entries of one client.
    fn trim_client_log(
        &self,
        client: &crate::domain::ClientId,
        max: usize,
    ) -> Result<usize, StoreError> {
        let db = &self.inner.db;
        let prefix = keys::client_log_prefix(client);
        let count = db.scan_prefix(&prefix).count();
        if count <= max {
            return Ok(0);
        }
        let excess = count - max;
        let mut batch = sled::Batch::default();
        for item in db.scan_prefix(&prefix).keys().take(excess) {
            let key = item?;
            if let Some(revision) = keys::client_log_revision(&key) {
                batch.remove(&keys::revision_key(keys::LOG, revision));
            }
            batch.remove(key);
        }
        db.apply_batch(batch)?;
        Ok(excess)
    }

    /// Deletes changes committed before `cutoff_ms` and the oldest ones
    /// beyond `max_entries`.
    fn trim_feed(&self, cutoff_ms: i64, max_entries: u64) -> Result<usize, StoreError> {
        let db = &self.inner.db;
        let committed = self.committed_revision();
        // Revisions at or below this one are beyond the size limit.
        let size_floor: Revision = committed.saturating_sub(max_entries);
        let mut deleted = 0;
        loop {
            let mut batch = sled::Batch::default();
            let mut in_batch = 0;
            let mut reached_young = false;
            for item in db.scan_prefix([keys::FEED]).take(CHUNK) {
                let (key, value) = item?;
                let revision = keys::revision_of(&key).unwrap_or(0);
                if revision > size_floor {
                    let record: codec::ChangeRecord = codec::decode(&value)?;
                    if record.commit_ms >= cutoff_ms {
                        reached_young = true;
                        break;
                    }
                }
                batch.remove(key);
                in_batch += 1;
            }
            if in_batch > 0 {
                db.apply_batch(batch)?;
                deleted += in_batch;
            }
            if reached_young || in_batch < CHUNK {
                return Ok(deleted);
            }
        }
    }
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
