//! Retention: deletes connection-log entries recorded longer ago than the
//! maximum age or beyond the per-client count, and commits older than the
//! feed's maximum age or beyond its maximum size.
//!
//! Runs on its own (blocking) thread, in small batches, and only ever
//! deletes keys the writer never writes again, so writes never wait for it.
//! Ages count from when an entry was recorded (its commit), which keeps the
//! walk in commit order and lets it stop at the first young commit. The
//! feed is trimmed from its oldest end only: it stays one contiguous run of
//! revisions, which is what lets a watcher resume without a silent gap.

use chrono::Utc;

use super::{Store, StoreError, codec, keys, log::Log};
use crate::domain::ClientId;

/// Log batch records handled per sled batch.
const CHUNK: usize = 256;

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
        let mut report = RetentionReport {
            log_entries_by_age: self
                .trim_logs_by_age(now_ms.saturating_sub(millis(settings.log_max_age)))?,
            ..Default::default()
        };
        let max = settings.log_max_entries_per_client as usize;
        for client in self.take_grown_logs() {
            report.log_entries_by_count += self.trim_client_log(&client, max)?;
        }
        let feed_cutoff = now_ms.saturating_sub(millis(settings.feed_max_age));
        report.changes = self.trim_feed(feed_cutoff, settings.feed_max_entries)?;
        Ok(report)
    }

    /// Deletes the log entries of commits older than `cutoff_ms`.
    fn trim_logs_by_age(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        let db = &self.inner.db;
        let committed = self.committed_revision();
        let mut deleted = 0;
        loop {
            let mut batch = sled::Batch::default();
            let mut commits = 0;
            let mut reached_young = false;
            for item in db.scan_prefix([keys::LOG_BATCH]).take(CHUNK) {
                let (key, value) = item?;
                let record: codec::LogBatchRecord = codec::decode(&value)?;
                let in_flight = keys::revision_of(&key).is_none_or(|first| first > committed);
                if in_flight || record.commit_ms >= cutoff_ms {
                    reached_young = true;
                    break;
                }
                for log_ref in &record.entries {
                    if let Ok(client) = ClientId::new(log_ref.client_id.as_str()) {
                        batch.remove(keys::client_log(&client, log_ref.revision));
                        deleted += 1;
                    }
                }
                batch.remove(key);
                commits += 1;
            }
            if commits > 0 {
                db.apply_batch(batch)?;
            }
            if reached_young || commits < CHUNK {
                return Ok(deleted);
            }
        }
    }

    /// Keeps only the newest `max` log entries of one client.
    fn trim_client_log(&self, client: &ClientId, max: usize) -> Result<usize, StoreError> {
        let db = &self.inner.db;
        let prefix = keys::client_log_prefix(client);
        let count = db.scan_prefix(&prefix).keys().count();
        if count <= max {
            return Ok(0);
        }
        let excess = count - max;
        let mut batch = sled::Batch::default();
        for key in db.scan_prefix(&prefix).keys().take(excess) {
            batch.remove(key?);
        }
        db.apply_batch(batch)?;
        Ok(excess)
    }

    /// Deletes commits made before `cutoff_ms`, and the oldest ones while
    /// the feed holds more than `max_entries` changes; never one not yet
    /// written back, which a crash restart replays.
    fn trim_feed(&self, cutoff_ms: i64, max_entries: u64) -> Result<usize, StoreError> {
        let committed = self.committed_revision();
        let upto = committed.min(self.materialised_revision());
        // The size limit counts from the newest commit.
        let max_entries = max_entries.saturating_sub(committed - upto);
        self.inner.log.trim(cutoff_ms, max_entries, upto)
    }
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
