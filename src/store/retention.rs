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
//! The failure marker of a client without a record whose every failed
//! connect aged out is dropped by the writer, after the pass
//! ([`Store::retention_pass`]).

use std::collections::HashSet;

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
    /// Failure markers dropped: clients without a record whose every
    /// failed connect aged out of the log.
    pub failure_markers: usize,
}

impl Store {
    /// Runs one retention pass ([`Store::run_retention`]) on a blocking
    /// thread, then has the writer drop the failure markers of clients
    /// without a record whose log the pass emptied: a stream of refused
    /// connects under ever new client ids leaves nothing behind once its
    /// log entries age out.
    pub async fn retention_pass(&self) -> Result<RetentionReport, StoreError> {
        let store = self.clone();
        let (mut report, marked) =
            match tokio::task::spawn_blocking(move || store.retention()).await {
                Ok(pass) => pass?,
                Err(e) => {
                    if e.is_panic() {
                        tracing::error!(error = %e, "a retention pass panicked: retention stops");
                    }
                    return Err(StoreError::Closed);
                }
            };
        if !marked.is_empty() {
            report.failure_markers = self
                .drop_failure_markers(marked.into_iter().collect())
                .await?;
        }
        Ok(report)
    }

    /// Runs one retention pass (failure markers stay; see
    /// [`Store::retention_pass`]).
    pub fn run_retention(&self) -> Result<RetentionReport, StoreError> {
        Ok(self.retention()?.0)
    }

    /// One pass, and the marked clients whose log entries it deleted.
    fn retention(&self) -> Result<(RetentionReport, HashSet<ClientId>), StoreError> {
        let settings = self.settings();
        let now_ms = Utc::now().timestamp_millis();
        let mut marked = HashSet::new();
        let mut report = RetentionReport {
            log_entries_by_age: self.trim_logs_by_age(
                now_ms.saturating_sub(millis(settings.log_max_age)),
                &mut marked,
            )?,
            ..Default::default()
        };
        let max = settings.log_max_entries_per_client as usize;
        for client in self.take_grown_logs() {
            report.log_entries_by_count += self.trim_client_log(&client, max)?;
        }
        let feed_cutoff = now_ms.saturating_sub(millis(settings.feed_max_age));
        report.changes = self.trim_feed(feed_cutoff, settings.feed_max_entries)?;
        Ok((report, marked))
    }

    /// Deletes the log entries of commits older than `cutoff_ms`; adds the
    /// clients with a failure marker whose entries it deleted to `marked`.
    fn trim_logs_by_age(
        &self,
        cutoff_ms: i64,
        marked: &mut HashSet<ClientId>,
    ) -> Result<usize, StoreError> {
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
                        // A marked client is looked up once per pass.
                        if !marked.contains(&client)
                            && db.contains_key(keys::failed_only(&client))?
                        {
                            marked.insert(client);
                        }
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

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        time::{Duration, Instant},
    };

    use chrono::Utc;

    use super::super::{Settings, Store, log::Log};
    use crate::domain::{ClientId, ConnectionInfo, EventKind, LifecycleEvent, MqttProtocol};

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

    /// Keeps the feed to `max_entries` changes, whatever their age.
    /// One commit per id of `ids`: a connect of each of the two clients.
    async fn commit_pairs(
        store: &Store,
        (first, second): (&str, &str),
        ids: std::ops::RangeInclusive<u64>,
    ) {
        for id in ids {
            store
                .commit_events(vec![connect(first, id), connect(second, id)])
                .await
                .unwrap();
        }
    }

    async fn keep_feed(store: &Store, max_entries: u64) {
        store
            .update_settings(Settings {
                feed_max_entries: max_entries,
                ..store.settings()
            })
            .await
            .unwrap();
    }

    /// Feed retention trims only what is written back: with the write-back
    /// held and a feed limit of nothing, a pass keeps every commit after
    /// the materialised position (a crash restart replays them), and trims
    /// them once they are written back.
    #[tokio::test]
    async fn feed_retention_never_trims_past_the_materialised_position() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        commit_pairs(&store, ("d:o:t:a", "d:o:t:b"), 1..=5).await;
        store.written_back(Duration::from_secs(10)).await;
        store.inner.hold_write_back.store(true, Ordering::Release);
        commit_pairs(&store, ("d:o:t:a", "d:o:t:c"), 6..=9).await;
        let materialised = store.materialised_revision();
        assert!(materialised < store.committed_revision());

        keep_feed(&store, 0).await;
        let report = store.run_retention().unwrap();
        assert_eq!(report.changes as u64, materialised);
        assert_eq!(
            store.oldest_feed_revision().unwrap(),
            Some(materialised + 1),
            "every commit not written back stays"
        );
        assert_eq!(
            store.changes_after(materialised, usize::MAX).unwrap().len() as u64,
            store.committed_revision() - materialised
        );

        store.inner.hold_write_back.store(false, Ordering::Release);
        store.inner.pacer.wake();
        store.written_back(Duration::from_secs(10)).await;
        store.run_retention().unwrap();
        assert_eq!(store.oldest_feed_revision().unwrap(), None);
        store.close().await.unwrap();
    }

    /// The write-back backlog counts the committed changes not written
    /// back, and falls to nothing once the write-back has run.
    #[tokio::test]
    async fn the_write_back_backlog_counts_what_is_not_written_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        store.inner.hold_write_back.store(true, Ordering::Release);
        commit_pairs(&store, ("d:o:t:a", "d:o:t:b"), 1..=3).await;
        assert_eq!(store.write_back_pending(), 6);
        store.inner.hold_write_back.store(false, Ordering::Release);
        store.inner.pacer.wake();
        store.written_back(Duration::from_secs(10)).await;
        store.close().await.unwrap();
    }

    /// A retention pass over a large feed runs beside the writer and the
    /// write-back: commits go on being acknowledged, promptly, while it
    /// deletes, and it trims the feed from its oldest end to one
    /// contiguous run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retention_pass_over_a_large_feed_never_blocks_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        // Many small commits: the feed's retention walks commit by commit.
        let mut pending = Vec::new();
        for n in 0..20_000u64 {
            let store = store.clone();
            pending.push(tokio::spawn(async move {
                store
                    .commit_events(vec![connect(&format!("d:o:t:c{}", n % 5000), n + 1)])
                    .await
            }));
        }
        for commit in pending {
            commit.await.unwrap().unwrap();
        }
        keep_feed(&store, 10).await;
        store.written_back(Duration::from_secs(30)).await;

        let passing = Arc::new(AtomicBool::new(true));
        let writes = {
            let store = store.clone();
            let passing = passing.clone();
            tokio::spawn(async move {
                let (mut during, mut slowest) = (0, Duration::ZERO);
                for n in 0u64.. {
                    let started = Instant::now();
                    store
                        .commit_events(vec![connect("d:o:t:writer", 100_000 + n)])
                        .await
                        .unwrap();
                    if !passing.load(Ordering::Acquire) {
                        return (during, slowest);
                    }
                    during += 1;
                    slowest = slowest.max(started.elapsed());
                }
                unreachable!()
            })
        };
        let pass = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let report = store.run_retention();
                (report, started.elapsed())
            })
        };
        let (report, took) = tokio::time::timeout(Duration::from_secs(60), pass)
            .await
            .expect("the pass ends")
            .unwrap();
        passing.store(false, Ordering::Release);
        let (during, slowest) = tokio::time::timeout(Duration::from_secs(30), writes)
            .await
            .expect("the writes go on")
            .unwrap();
        let report = report.unwrap();
        assert!(report.changes > 19_000, "{report:?}");
        assert!(
            during >= 1,
            "no commit was acknowledged during a {took:?} retention pass"
        );
        assert!(
            slowest < Duration::from_secs(2),
            "a commit waited {slowest:?} during a {took:?} retention pass"
        );
        // The feed is one contiguous run up to the newest commit.
        let first = store.oldest_feed_revision().unwrap().unwrap();
        let committed = store.committed_revision();
        let left = store
            .inner
            .log
            .read_after(first - 1, committed, usize::MAX)
            .unwrap();
        let revisions: Vec<u64> = left.iter().map(|c| c.revision).collect();
        assert_eq!(revisions, (first..=committed).collect::<Vec<_>>());
        println!("{during} commits during a {took:?} pass, slowest {slowest:?}");
        store.close().await.unwrap();
    }
}
