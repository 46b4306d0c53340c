//! WatchConnections: one task per watcher that replays the retained change
//! feed from the store, then follows the live feed.
//!
//! The live feed is a broadcast channel filled by the store's writer after
//! each commit, one message per commit; it never waits for a watcher. Every
//! watcher reads it at its own pace through its own cursor into the shared
//! ring buffer. A watcher that falls a whole buffer of commits behind while
//! live is ended with
//! [`WatchEnd::Lagged`] and the last revision it was sent, so it can resume
//! from the store. Falling behind while replaying is not the watcher's
//! fault: the task then simply replays again from the store.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::Utc;
use tokio::sync::{broadcast::error::RecvError, mpsc};

use super::{QueryError, QueryService};
use crate::domain::{
    Change, ChangeKind, ClientId, ConnectionState, Revision, SortField, StateFilter, StateOrder,
    Timestamp,
};
use crate::store::CommittedBatch;

/// Changes read from the store per replay step.
const REPLAY_CHUNK: usize = 512;
/// Records read per snapshot step.
const SNAPSHOT_CHUNK: usize = 1000;
/// Items a watcher's task may have queued for the transport.
const OUTBOX: usize = 64;

/// What a watcher asks for (validated).
#[derive(Debug, Clone, Default)]
pub struct WatchRequest {
    /// Must have no time bounds.
    pub filter: StateFilter,
    /// Replay every change after this revision first.
    pub start_revision: Option<Revision>,
    pub include_snapshot: bool,
    /// Any kind when empty.
    pub kinds: Vec<ChangeKind>,
    /// The service's default when `None`.
    pub heartbeat_interval: Option<Duration>,
}

/// One item of a watch stream.
#[derive(Debug, Clone)]
pub enum WatchItem {
    Change(Arc<Change>),
    Snapshot(Box<ConnectionState>),
    SnapshotComplete(Revision),
    Heartbeat { revision: Revision, time: Timestamp },
}

/// Why a watch stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEnd {
    /// The watcher fell a whole buffer behind the live feed.
    Lagged {
        last_delivered: Revision,
    },
    /// The changes to replay were removed by retention.
    OutOfRange {
        requested: Revision,
        oldest: Revision,
    },
    ShuttingDown {
        last_delivered: Revision,
    },
    Failed {
        last_delivered: Revision,
    },
}

impl QueryService {
    /// Starts a watcher; items (and at the end, why it ended) arrive on the
    /// returned channel. Fails at once when `start_revision` is too old or
    /// ahead of the store.
    pub fn watch(
        &self,
        request: WatchRequest,
    ) -> Result<mpsc::Receiver<Result<WatchItem, WatchEnd>>, QueryError> {
        self.check_enabled()?;
        if self.shutdown.is_cancelled() {
            return Err(QueryError::ShuttingDown);
        }
        // Subscribe before reading the committed revision: every change
        // after it is then either in the store or in the receiver.
        let live = self.store.subscribe();
        let committed = self.store.committed_revision();
        if let Some(start) = request.start_revision {
            let oldest = self.store.oldest_feed_revision()?;
            let oldest_replayable = oldest.unwrap_or(committed + 1);
            if start > committed {
                return Err(QueryError::AheadOfStore {
                    requested: start,
                    current: committed,
                });
            }
            if start < committed && start + 1 < oldest_replayable {
                return Err(QueryError::OutOfRange {
                    requested: start,
                    oldest: oldest_replayable.saturating_sub(1),
                });
            }
        }
        let (tx, rx) = mpsc::channel(OUTBOX);
        let watcher = Watcher {
            service: self.clone(),
            heartbeat: request
                .heartbeat_interval
                .unwrap_or(self.options.heartbeat_interval),
            last: request.start_revision.unwrap_or(committed),
            skip: HashMap::new(),
            tx,
            request,
        };
        tokio::spawn(watcher.run(live));
        Ok(rx)
    }
}

struct Watcher {
    service: QueryService,
    request: WatchRequest,
    heartbeat: Duration,
    /// The last revision sent (or skipped as not matching).
    last: Revision,
    /// Snapshot records newer than the snapshot's revision: their changes
    /// up to that record's revision were already sent.
    skip: HashMap<ClientId, Revision>,
    tx: mpsc::Sender<Result<WatchItem, WatchEnd>>,
}

/// The watcher cannot go on: the consumer left, or the stream ended.
struct Stop;

impl Watcher {
    async fn run(mut self, mut live: tokio::sync::broadcast::Receiver<CommittedBatch>) {
        let metrics = self.service.metrics();
        metrics.watchers.inc();
        let end = self.stream(&mut live).await;
        let metrics = self.service.metrics();
        metrics.watchers.dec();
        let Ok(end) = end else { return };
        if matches!(end, WatchEnd::Lagged { .. }) {
            metrics.watchers_dropped.inc();
        }
        let _ = self.tx.send(Err(end)).await;
    }

    async fn stream(
        &mut self,
        live: &mut tokio::sync::broadcast::Receiver<CommittedBatch>,
    ) -> Result<WatchEnd, Stop> {
        if self.request.include_snapshot
            && let Some(end) = self.snapshot().await?
        {
            return Ok(end);
        }
        let shutdown = self.service.shutdown.clone();
        let mut ticker = tokio::time::interval_at(first_heartbeat(self.heartbeat), self.heartbeat);
        loop {
            if let Some(end) = self.replay().await? {
                return Ok(end);
            }
            // Live: the receiver holds every change after what was replayed.
            let mut live_delivered = false;
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {
                        return Ok(WatchEnd::ShuttingDown { last_delivered: self.last });
                    }
                    received = live.recv() => match received {
                        Ok(batch) => {
                            let Some(first) = batch.iter().find(|c| c.revision > self.last) else {
                                continue;
                            };
                            if first.revision != self.last + 1 {
                                // Something was missed: fill in from the store.
                                break;
                            }
                            live_delivered = true;
                            let from = self.last;
                            for change in batch.iter().filter(|c| c.revision > from) {
                                if self.deliver(change.clone()).await? {
                                    ticker.reset();
                                }
                            }
                        }
                        Err(RecvError::Lagged(_)) if !live_delivered => {
                            // Fell behind while replaying: replay again.
                            *live = live.resubscribe();
                            break;
                        }
                        Err(RecvError::Lagged(_)) => {
                            return Ok(WatchEnd::Lagged { last_delivered: self.last });
                        }
                        Err(RecvError::Closed) => {
                            return Ok(WatchEnd::ShuttingDown { last_delivered: self.last });
                        }
                    },
                    _ = ticker.tick() => {
                        // The watcher's own position, not the store's: every
                        // change up to it was sent or did not match, so a
                        // client may resume from it.
                        let item = WatchItem::Heartbeat {
                            revision: self.last,
                            time: Utc::now(),
                        };
                        self.send(item).await?;
                    }
                }
            }
        }
    }

    /// Sends the current state of every matching client, then the
    /// snapshot's revision.
    async fn snapshot(&mut self) -> Result<Option<WatchEnd>, Stop> {
        let revision = self.service.store.committed_revision();
        let order = StateOrder {
            field: SortField::ClientId,
            descending: false,
        };
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let store = self.service.store.clone();
            let filter = self.request.filter.clone();
            let after = cursor.take();
            let page = tokio::task::spawn_blocking(move || {
                store.list_states(&filter, order, SNAPSHOT_CHUNK, after.as_deref(), usize::MAX)
            })
            .await;
            let page = match page {
                Ok(Ok(page)) => page,
                _ => {
                    return Ok(Some(WatchEnd::Failed {
                        last_delivered: self.last,
                    }));
                }
            };
            for state in page.states {
                if state.revision > revision {
                    self.skip.insert(state.client_id.clone(), state.revision);
                }
                self.send(WatchItem::Snapshot(Box::new(state))).await?;
            }
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        self.last = revision;
        self.send(WatchItem::SnapshotComplete(revision)).await?;
        Ok(None)
    }

    /// Sends every committed change after `last` from the store.
    async fn replay(&mut self) -> Result<Option<WatchEnd>, Stop> {
        loop {
            let store = self.service.store.clone();
            let after = self.last;
            let chunk =
                tokio::task::spawn_blocking(move || store.changes_after(after, REPLAY_CHUNK)).await;
            let changes = match chunk {
                Ok(Ok(changes)) => changes,
                _ => {
                    return Ok(Some(WatchEnd::Failed {
                        last_delivered: self.last,
                    }));
                }
            };
            if changes.is_empty() {
                return Ok(None);
            }
            for change in changes {
                if change.revision != self.last + 1 {
                    // Retention removed what was to be replayed.
                    let oldest = change.revision;
                    return Ok(Some(WatchEnd::OutOfRange {
                        requested: self.last,
                        oldest: oldest.saturating_sub(1),
                    }));
                }
                self.deliver(Arc::new(change)).await?;
            }
        }
    }

    /// Sends `change` if it passes the filter; advances `last` either way.
    async fn deliver(&mut self, change: Arc<Change>) -> Result<bool, Stop> {
        self.last = change.revision;
        if !self.wants(&change) {
            return Ok(false);
        }
        self.send(WatchItem::Change(change)).await?;
        Ok(true)
    }

    fn wants(&mut self, change: &Change) -> bool {
        if change.kind == ChangeKind::AllDeleted {
            self.skip.clear();
            return true;
        }
        if let Some(client) = &change.client_id
            && let Some(&seen) = self.skip.get(client)
        {
            if change.revision <= seen {
                return false;
            }
            self.skip.remove(client);
        }
        if !self.request.kinds.is_empty() && !self.request.kinds.contains(&change.kind) {
            return false;
        }
        let filter = &self.request.filter;
        match (&change.state, &change.client_id) {
            (Some(state), _) => {
                // Connects and disconnects move a client between statuses:
                // a status filter lets them through either way, so that a
                // view of connected clients sees clients leave.
                let status_ok = filter.status.is_none_or(|s| s == state.status)
                    || matches!(
                        change.kind,
                        ChangeKind::Connected | ChangeKind::Disconnected
                    );
                status_ok && filter.matches_client_id(&state.client_id)
            }
            (None, Some(client)) => filter.matches_client_id(client),
            (None, None) => true,
        }
    }

    async fn send(&self, item: WatchItem) -> Result<(), Stop> {
        tokio::select! {
            sent = self.tx.send(Ok(item)) => sent.map_err(|_| Stop),
            _ = self.tx.closed() => Err(Stop),
            _ = self.service.shutdown.cancelled() => Err(Stop),
        }
    }
}
/// When the first heartbeat is due: one interval from now, with checked
/// arithmetic (the interval comes from a client; the edges bound it, and
/// this never panics even if one does not).
fn first_heartbeat(interval: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(interval)
        .unwrap_or_else(|| now + Duration::from_secs(24 * 3600))
}
