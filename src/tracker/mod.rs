//! The tracker: the front door every lifecycle event goes through
//! ([`Tracker`]), and broker leases. The lifecycle rules it feeds are in
//! [`crate::rules`], below the store that applies them.
//!
//! Connects, failed connects and disconnects go to the store's writer in
//! the order they were reported and are durable when [`Tracker::record`]
//! returns. Publish, subscribe, unsubscribe and ping may arrive thousands of
//! times a second: their latest time per client is kept in memory and
//! written through at most once per activity interval, and always just
//! before the client's disconnect.

mod lease;

pub use lease::{Lease, MAX_LEASE, MIN_LEASE};

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use crate::{
    domain::{ClientId, DisconnectCause, EMBEDDED_BROKER, EventKind, LifecycleEvent, Revision},
    metrics::Metrics,
    store::{Store, StoreError},
};

/// Disk space one recovered client takes, generously: its state record, its
/// log entry and its change in the feed (about 1 KiB together), times the
/// slack of sled's log-structured files until their segments are cleaned.
const RECOVERY_BYTES_PER_CLIENT: u64 = 4096;

/// Most activity events written through in one commit.
const ACTIVITY_COMMIT: usize = 1024;

/// A cheap, cloneable handle to the tracker.
#[derive(Clone)]
pub struct Tracker {
    store: Store,
    metrics: Arc<Metrics>,
    /// The newest activity event of each client not yet written through.
    pending_activity: Arc<Mutex<HashMap<ClientId, LifecycleEvent>>>,
    /// Leases held now, by holder (see [`lease`]).
    leases: Arc<Mutex<HashMap<String, lease::Held>>>,
    /// Lapses of leases of a cluster's log being appended now.
    lapsing: Arc<Mutex<std::collections::HashSet<(String, i64)>>>,
}

impl Tracker {
    pub fn new(store: Store, metrics: Arc<Metrics>) -> Tracker {
        Tracker {
            store,
            metrics,
            pending_activity: Arc::default(),
            leases: Arc::default(),
            lapsing: Arc::default(),
        }
    }

    /// Whether the store is a replica of a cluster's log (whose appends may
    /// fail for a moment and be tried again).
    pub fn is_replica(&self) -> bool {
        self.store.is_replica()
    }

    /// Records `events` in order. Returns once every event other than
    /// activity is durable, with the store revision after them.
    pub async fn record(&self, events: Vec<LifecycleEvent>) -> Result<Revision, StoreError> {
        self.record_as(events, false).await
    }

    /// [`Tracker::record`], answered on a cluster node once the log holds
    /// the events (see [`Store::commit_events_stored`]): the embedded
    /// broker's path.
    pub async fn record_stored(&self, events: Vec<LifecycleEvent>) -> Result<Revision, StoreError> {
        self.record_as(events, true).await
    }

    async fn record_as(
        &self,
        events: Vec<LifecycleEvent>,
        stored: bool,
    ) -> Result<Revision, StoreError> {
        if !self.store.settings().enabled {
            return Err(StoreError::Disabled);
        }
        self.metrics.events_ingested.inc_by(events.len() as u64);
        let mut to_commit = Vec::with_capacity(events.len());
        {
            let mut pending = crate::lock::lock(&self.pending_activity);
            for event in events {
                match &event.kind {
                    EventKind::Activity(_) => {
                        // Ids compare within one broker only; the rules
                        // drop activity of a connection that is not the
                        // current one.
                        let newer = pending.get(&event.client_id).is_none_or(|p| {
                            p.broker != event.broker
                                || (p.connection_id, p.time) <= (event.connection_id, event.time)
                        });
                        if newer {
                            pending.insert(event.client_id.clone(), event);
                        }
                    }
                    EventKind::Disconnected(_) => {
                        // Activity is always written through before the
                        // disconnect that ends it.
                        if let Some(activity) = pending.remove(&event.client_id)
                            && activity.connection_id == event.connection_id
                            && activity.broker == event.broker
                        {
                            to_commit.push(activity);
                        }
                        to_commit.push(event);
                    }
                    EventKind::Connected(_) | EventKind::ConnectFailed { .. } => {
                        to_commit.push(event)
                    }
                }
            }
        }
        if to_commit.is_empty() {
            return Ok(self.store.committed_revision());
        }
        if stored {
            return self.store.commit_events_stored(to_commit).await;
        }
        self.store.commit_events(to_commit).await
    }

    /// Writes through every pending activity event, in commits of at most
    /// [`ACTIVITY_COMMIT`] events one after the other, each taken from the
    /// pending map as it is committed: a fleet that pings in step (every
    /// client connected in the same second after an outage) then costs one
    /// commit's events in flight, not a copy of all of them. A flush takes
    /// at most as many events as were pending when it started (those that
    /// arrive meanwhile go with it or with the next one), so it always ends.
    pub async fn flush_activity(&self) -> Result<Revision, StoreError> {
        let mut left = crate::lock::lock(&self.pending_activity).len();
        let mut revision = self.store.committed_revision();
        while left > 0 {
            let commit: Vec<LifecycleEvent> = {
                let mut pending = crate::lock::lock(&self.pending_activity);
                let mut taken = 0;
                pending
                    .extract_if(|_, _| {
                        taken += 1;
                        taken <= ACTIVITY_COMMIT.min(left)
                    })
                    .map(|(_, event)| event)
                    .collect()
            };
            if commit.is_empty() {
                break;
            }
            left -= commit.len();
            revision = self.store.commit_events(commit).await?;
        }
        // A fleet that pings in step grows the map to the whole fleet for
        // a moment; its table would keep that size between the rounds.
        let mut pending = crate::lock::lock(&self.pending_activity);
        if pending.capacity() > ACTIVITY_COMMIT && pending.len() < pending.capacity() / 4 {
            let len = pending.len();
            pending.shrink_to(len);
        }
        Ok(revision)
    }

    /// Writes pending activity through every `interval` until `stop`, then
    /// once more.
    pub fn spawn_activity_flusher(
        &self,
        interval: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let tracker = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.cancelled() => break,
                }
                if let Err(e) = tracker.flush_activity().await
                    && !matches!(e, StoreError::Disabled)
                {
                    tracing::warn!(error = %e, "writing activity through failed");
                }
            }
            if let Err(e) = tracker.flush_activity().await {
                tracing::debug!(error = %e, "final activity write-through failed");
            }
        })
    }

    /// Start-up recovery: every client of the embedded broker still
    /// recorded as connected was connected when the server stopped without
    /// recording its disconnect. Records it as disconnected by the server
    /// (0x8B, close code 93). Clients of other brokers are still connected
    /// to those brokers: they stay as reported (a broker with a lease has
    /// them ended when its lease lapses, see [`lease`]).
    /// Returns the number of clients recovered.
    pub async fn recover_connected(&self) -> Result<usize, StoreError> {
        if !self.store.settings().enabled {
            return Ok(0);
        }
        // Recovery writes a little per client and is never allowed to take
        // the disk below the store's reserve: check first (for every
        // connected client, an upper bound), and say how much it needs
        // rather than fill the disk half way.
        let connected = self.store.connected_clients()?.len();
        if connected == 0 {
            return Ok(0);
        }
        let needed = connected as u64 * RECOVERY_BYTES_PER_CLIENT;
        let no_space = |free: u64| StoreError::RecoveryNeedsSpace {
            clients: connected,
            needed,
            free,
            reserve: self.store.min_free_bytes(),
            path: self.store.path().to_owned(),
        };
        let free = self.store.free_bytes().unwrap_or(u64::MAX);
        if free < needed.saturating_add(self.store.min_free_bytes()) {
            return Err(no_space(free));
        }
        // Nothing else writes before the server serves: the revisions the
        // recovery adds are its clients.
        let before = self.store.committed_revision();
        let recovered = match self
            .store
            .end_connected(EMBEDDED_BROKER, DisconnectCause::ServerRestarted)
            .await
        {
            Ok(revision) => revision.saturating_sub(before) as usize,
            Err(StoreError::StorageFull { free, .. }) => return Err(no_space(free)),
            Err(e) => return Err(e),
        };
        Ok(recovered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ActivityKind, ConnectionInfo, ConnectionStatus};

    fn event(client: &str, kind: EventKind) -> LifecycleEvent {
        LifecycleEvent {
            client_id: ClientId::new(client).unwrap(),
            time: chrono::Utc::now(),
            connection_id: 1,
            broker: Arc::from(EMBEDDED_BROKER),
            kind,
            peer: None,
        }
    }

    /// Activity of more clients than one commit takes is written through
    /// whole, and the pending map gives back the table the burst grew.
    #[tokio::test]
    async fn activity_of_more_clients_than_one_commit_takes_is_written_through_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let tracker = Tracker::new(store.clone(), Arc::default());
        let clients: Vec<String> = (0..2 * ACTIVITY_COMMIT + 10)
            .map(|n| format!("d:local:t:c{n}"))
            .collect();
        let connected = store.committed_revision();
        tracker
            .record(
                clients
                    .iter()
                    .map(|c| {
                        event(
                            c,
                            EventKind::Connected(ConnectionInfo {
                                addr: "127.0.0.1".parse().unwrap(),
                                port: 1,
                                secure: false,
                                username: String::new(),
                                protocol: None,
                                keep_alive: 60,
                                clean_session: true,
                            }),
                        )
                    })
                    .collect(),
            )
            .await
            .unwrap();
        let before = store.committed_revision();
        assert_eq!(before - connected, clients.len() as u64);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let pings: Vec<_> = clients
            .iter()
            .map(|c| event(c, EventKind::Activity(ActivityKind::Ping)))
            .collect();
        tracker.record(pings).await.unwrap();
        let revision = tracker.flush_activity().await.unwrap();
        assert_eq!(revision - before, clients.len() as u64);
        let kept = crate::lock::lock(&tracker.pending_activity).capacity();
        assert!(
            kept <= ACTIVITY_COMMIT,
            "the burst's table is given back: {kept}"
        );
        for client in &clients {
            let state = store
                .get_state(&ClientId::new(client.as_str()).unwrap())
                .unwrap()
                .unwrap();
            assert_eq!(state.status, ConnectionStatus::Connected);
            assert_eq!(state.last_activity, ActivityKind::Ping, "{client}");
        }
        assert_eq!(
            tracker.flush_activity().await.unwrap(),
            revision,
            "nothing left"
        );
        store.close().await.unwrap();
    }
}
