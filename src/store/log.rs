//! The change log: the seam between the store and where its changes live.
//!
//! A [`Log`] owns the changes of every group commit in revision order: it
//! appends the changes of one commit durably (append → revision), reads
//! them back from a revision (replay for watchers that resume, and for the
//! store itself after a crash), hands each durable commit to its
//! subscribers (the live feed), and forgets its oldest commits when
//! retention says so. The store's writer, its watch and replay reads and
//! its retention use the log only through this trait.
//!
//! [`LocalLog`] is the implementation of a single node: the feed records
//! (`f` + first revision, see [`super::keys`]) and the committed revision in
//! the store's sled tree, and a broadcast channel for subscribers. A
//! replicated log (NATS JetStream, the cluster issue) implements the same
//! trait: its append returns once a quorum holds the commit, its
//! subscription is the stream's consumer, and the store, tracker, queries
//! and APIs stay as they are.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::{CommittedBatch, StoreError, codec, keys};
use crate::domain::{Change, Revision};

/// An ordered, durable log of committed changes; see the module docs.
pub trait Log: Send + Sync {
    /// Appends the changes of one group commit (consecutive revisions,
    /// oldest first) and returns once they are durable, with the newest
    /// revision they hold.
    fn append(&self, changes: &[Arc<Change>]) -> Result<Revision, StoreError>;

    /// Hands a durable commit to every subscriber (after the store has made
    /// it visible to readers, so that a watcher never hears of a revision
    /// it cannot read).
    fn publish(&self, changes: CommittedBatch);

    /// A receiver of every commit published from now on.
    fn subscribe(&self) -> broadcast::Receiver<CommittedBatch>;

    /// The commits holding changes after `after` up to `upto`, oldest
    /// first, each with only those changes: at least one commit, and no
    /// more once `limit` changes are reached.
    fn read_commits(
        &self,
        after: Revision,
        upto: Revision,
        limit: usize,
    ) -> Result<Vec<CommittedBatch>, StoreError>;

    /// [`Log::read_commits`] as one run of changes.
    fn read_after(
        &self,
        after: Revision,
        upto: Revision,
        limit: usize,
    ) -> Result<Vec<Change>, StoreError> {
        Ok(self
            .read_commits(after, upto, limit)?
            .into_iter()
            .flat_map(Arc::unwrap_or_clone)
            .map(Arc::unwrap_or_clone)
            .collect())
    }

    /// The oldest revision the log still holds, if any.
    fn first_revision(&self) -> Result<Option<Revision>, StoreError>;

    /// Forgets whole records (commits, or the pieces a large commit is
    /// stored in) from the oldest end: those made before `cutoff_ms`, and
    /// the oldest ones while more than `max_entries` changes up to `upto`
    /// are held. Nothing after `upto` is touched, so
    /// the log stays one contiguous run of revisions. Returns the number of
    /// changes forgotten.
    fn trim(&self, cutoff_ms: i64, max_entries: u64, upto: Revision) -> Result<usize, StoreError>;
}

/// Feed records trimmed per sled batch.
const TRIM_CHUNK: usize = 256;

/// The log of a single node, in the store's sled tree; see the module docs.
pub(super) struct LocalLog {
    db: sled::Db,
    feed: broadcast::Sender<CommittedBatch>,
    /// Whether each append is flushed before it returns. A replica of a
    /// cluster's log does not: the stream holds every write durably, and a
    /// node that crashes applies again from the position it last flushed
    /// (sled flushes in the background), reaching the same revisions.
    flush_each: std::sync::atomic::AtomicBool,
}

impl LocalLog {
    pub(super) fn new(db: sled::Db, feed_capacity: usize) -> LocalLog {
        let (feed, _) = broadcast::channel(feed_capacity.max(1));
        LocalLog {
            db,
            feed,
            flush_each: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// See `LocalLog::flush_each`.
    pub(super) fn set_flush_each(&self, on: bool) {
        self.flush_each
            .store(on, std::sync::atomic::Ordering::Release);
    }

    pub(super) fn flushes_each(&self) -> bool {
        self.flush_each.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The newest revision appended (0 for an empty store).
    pub(super) fn last_revision(&self) -> Result<Revision, StoreError> {
        match self.db.get(keys::META_REVISION)? {
            Some(v) => Ok(Revision::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("revision".into()))?,
            )),
            None => Ok(0),
        }
    }

    /// [`Log::append`], with `batch` (other writes of the same commit)
    /// applied in the same atomic sled batch.
    pub(super) fn append_with(
        &self,
        changes: &[Arc<Change>],
        mut batch: sled::Batch,
    ) -> Result<Revision, StoreError> {
        let (Some(first), Some(last)) = (changes.first(), changes.last()) else {
            return Err(StoreError::Corrupt("an empty commit".into()));
        };
        let commit_ms = first.commit_time.timestamp_millis();
        let records = changes
            .iter()
            .map(|c| codec::ChangeRecord::from(c.as_ref()));
        for (n, piece) in codec::pieces(records).into_iter().enumerate() {
            let Some(head) = piece.first() else {
                continue;
            };
            let key = keys::revision_key(keys::FEED, head.revision());
            let feed = codec::FeedBatchRecord {
                commit_ms,
                changes: piece,
                continued: n > 0,
            };
            batch.insert(&key, codec::encode_feed_batch(&feed));
        }
        batch.insert(keys::META_REVISION, &last.revision.to_be_bytes());
        self.db.apply_batch(batch)?;
        if self.flushes_each() {
            self.db.flush()?;
        }
        Ok(last.revision)
    }
}

impl Log for LocalLog {
    fn append(&self, changes: &[Arc<Change>]) -> Result<Revision, StoreError> {
        self.append_with(changes, sled::Batch::default())
    }

    fn publish(&self, changes: CommittedBatch) {
        // No receiver is fine: nobody is watching.
        let _ = self.feed.send(changes);
    }

    fn subscribe(&self) -> broadcast::Receiver<CommittedBatch> {
        self.feed.subscribe()
    }

    fn read_commits(
        &self,
        after: Revision,
        upto: Revision,
        limit: usize,
    ) -> Result<Vec<CommittedBatch>, StoreError> {
        if after >= upto {
            return Ok(Vec::new());
        }
        let db = &self.db;
        // The commit holding `after + 1` starts at or before it.
        let wanted = keys::revision_key(keys::FEED, after + 1);
        let start = match db
            .range(keys::revision_key(keys::FEED, 0)..=wanted)
            .next_back()
        {
            Some(item) => item?.0.to_vec(),
            None => wanted.to_vec(),
        };
        let end = keys::revision_key(keys::FEED, upto);
        let mut commits: Vec<Vec<Arc<Change>>> = Vec::new();
        let mut changes = 0;
        for item in db.range(start..=end.to_vec()) {
            let (_, value) = item?;
            let record = codec::decode_feed_record(&value)?;
            let mut piece = Vec::with_capacity(record.changes.len());
            for change in record.changes {
                let change = Change::try_from(change)?;
                if change.revision > after && change.revision <= upto {
                    piece.push(Arc::new(change));
                }
            }
            if piece.is_empty() {
                continue;
            }
            changes += piece.len();
            // The pieces of one commit are read back as the commit (the
            // replay after a crash materialises commit by commit). Only the
            // first piece read can follow one that was left out, and it
            // starts the list.
            match commits.last_mut() {
                Some(commit) if record.continued => commit.extend(piece),
                _ => commits.push(piece),
            }
            if changes >= limit {
                break;
            }
        }
        Ok(commits.into_iter().map(Arc::new).collect())
    }

    fn first_revision(&self) -> Result<Option<Revision>, StoreError> {
        match self.db.scan_prefix([keys::FEED]).next() {
            Some(item) => Ok(keys::revision_of(&item?.0)),
            None => Ok(None),
        }
    }

    fn trim(&self, cutoff_ms: i64, max_entries: u64, upto: Revision) -> Result<usize, StoreError> {
        let db = &self.db;
        // Changes at or below this revision are beyond the size limit.
        let size_floor: Revision = upto.saturating_sub(max_entries);
        let mut deleted = 0;
        loop {
            let mut batch = sled::Batch::default();
            let mut commits = 0;
            let mut keep = false;
            let mut items = db.scan_prefix([keys::FEED]).take(TRIM_CHUNK + 1).peekable();
            while let Some(item) = items.next() {
                let (key, value) = item?;
                let first = keys::revision_of(&key).unwrap_or(0);
                if first > upto {
                    // Not ours to judge yet.
                    keep = true;
                    break;
                }
                // The commit ends where the next one starts (or at `upto`
                // for the newest).
                let next_first = match items.peek() {
                    Some(Ok((next, _))) => keys::revision_of(next).unwrap_or(first + 1),
                    Some(Err(_)) | None => upto + 1,
                };
                let last = next_first.saturating_sub(1);
                let too_many = last <= size_floor;
                if !too_many && codec::feed_commit_ms(&value)? >= cutoff_ms {
                    keep = true;
                    break;
                }
                batch.remove(key);
                deleted += (last + 1).saturating_sub(first) as usize;
                commits += 1;
                if commits == TRIM_CHUNK {
                    break;
                }
            }
            if commits > 0 {
                db.apply_batch(batch)?;
            }
            if keep || commits < TRIM_CHUNK {
                return Ok(deleted);
            }
        }
    }
}
