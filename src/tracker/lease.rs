//! Leases: a holder (a broker reporting through ingest, later a cluster
//! node) keeps its clients connected only while it keeps renewing. When a
//! lease lapses, every client whose current connection is on that holder is
//! recorded as disconnected in one group commit (initiator network, close
//! code 96), and the log names the holder.
//!
//! Leases are durable (the store keeps holder and duration); at start-up
//! every stored lease runs again from the start, since its holder could not
//! renew while this service was down. A holder that never took a lease is
//! never timed out.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::Tracker;
use crate::{
    domain::{
        ConnectionStatus, DisconnectCause, EventKind, LifecycleEvent, Timestamp, truncate_to_millis,
    },
    store::StoreError,
};

/// Shortest and longest lease a holder may ask for.
pub const MIN_LEASE: Duration = Duration::from_secs(1);
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

/// Allowance for clock skew between the cluster's nodes and NATS servers
/// before a lease of the log counts as lapsed.
const REPLICATED_SKEW_MS: i64 = 500;

/// How often lapsed leases are looked for.
const LAPSE_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// A lease held now.
#[derive(Debug, Clone, Copy)]
pub(super) struct Held {
    duration: Duration,
    expires: Instant,
}

/// A lease as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub holder: String,
    pub duration: Duration,
    pub expire_time: Timestamp,
}

impl Tracker {
    /// Loads the stored leases, each running from now for its duration.
    pub fn load_leases(&self) -> Result<usize, StoreError> {
        if self.store.is_replica() {
            // A cluster keeps its leases in its log (see `renew_lease`).
            return Ok(0);
        }
        let stored = self.store.leases()?;
        let now = Instant::now();
        let mut leases = crate::lock::lock(&self.leases);
        for (holder, duration) in &stored {
            leases.insert(
                holder.clone(),
                Held {
                    duration: *duration,
                    expires: now + *duration,
                },
            );
        }
        Ok(stored.len())
    }

    /// Renews (or takes) the lease of `holder` for `duration` from now. The
    /// duration is stored when it is new or changed.
    ///
    /// On a cluster node the renewal goes to the cluster's log: every node
    /// learns it, and the lease runs from the renewal's commit time there.
    pub async fn renew_lease(&self, holder: &str, duration: Duration) -> Result<Lease, StoreError> {
        if self.store.is_replica() {
            self.store
                .submit_replicated(crate::store::Write::RenewLease {
                    holder: holder.to_owned(),
                    duration,
                })
                .await?;
            let expire_time = Utc::now() + chrono::Duration::from_std(duration).unwrap_or_default();
            return Ok(Lease {
                holder: holder.to_owned(),
                duration,
                expire_time: truncate_to_millis(expire_time),
            });
        }
        let known = crate::lock::lock(&self.leases)
            .get(holder)
            .map(|h| h.duration);
        if known != Some(duration) {
            let store = self.store.clone();
            let name = holder.to_owned();
            tokio::task::spawn_blocking(move || store.put_lease(&name, duration))
                .await
                .map_err(|_| StoreError::Closed)??;
        }
        crate::lock::lock(&self.leases).insert(
            holder.to_owned(),
            Held {
                duration,
                expires: Instant::now() + duration,
            },
        );
        let expire_time = Utc::now() + chrono::Duration::from_std(duration).unwrap_or_default();
        Ok(Lease {
            holder: holder.to_owned(),
            duration,
            expire_time: truncate_to_millis(expire_time),
        })
    }

    /// Ends the leases that lapsed: their holders' connected clients are
    /// recorded as disconnected. Returns the holders that lapsed.
    pub async fn end_lapsed_leases(&self) -> Result<Vec<String>, StoreError> {
        if self.store.is_replica() {
            return self.lapse_replicated_leases().await;
        }
        let now = Instant::now();
        let lapsed: Vec<(String, Held)> = {
            let leases = crate::lock::lock(&self.leases);
            leases
                .iter()
                .filter(|(_, held)| held.expires <= now)
                .map(|(holder, held)| (holder.clone(), *held))
                .collect()
        };
        let mut ended = Vec::new();
        for (holder, held) in lapsed {
            let clients = self.clients_on(
                &holder,
                &DisconnectCause::LeaseLapsed {
                    holder: holder.clone(),
                    lease_secs: held.duration.as_secs(),
                },
            )?;
            let count = clients.len();
            if !clients.is_empty() {
                // Not recorded (store full, say): the lease stays lapsed
                // and the next pass tries again.
                self.store.commit_events(clients).await?;
            }
            // Renewed meanwhile: the holder is back, its lease stays.
            {
                let mut leases = crate::lock::lock(&self.leases);
                if leases.get(&holder).is_some_and(|h| h.expires <= now) {
                    leases.remove(&holder);
                } else {
                    continue;
                }
            }
            let store = self.store.clone();
            let name = holder.clone();
            tokio::task::spawn_blocking(move || store.remove_lease(&name))
                .await
                .map_err(|_| StoreError::Closed)??;
            tracing::warn!(
                broker = %holder,
                lease_secs = held.duration.as_secs(),
                clients = count,
                "broker {holder} stopped reporting: its lease lapsed; its connected clients are recorded as disconnected"
            );
            ended.push(holder);
        }
        Ok(ended)
    }

    /// On a cluster node: appends a lapse for each lease of the log whose
    /// last renewal (its commit time) is older than its duration. Whichever
    /// node's lapse is applied first ends the lease, unless it was renewed
    /// since; the others change nothing.
    async fn lapse_replicated_leases(&self) -> Result<Vec<String>, StoreError> {
        let now_ms = Utc::now().timestamp_millis();
        let mut lapsed = Vec::new();
        for (holder, duration, renewed) in self.store.replicated_leases()? {
            let Some(renewed_ms) = renewed else { continue };
            let due = renewed_ms
                .saturating_add(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
                .saturating_add(REPLICATED_SKEW_MS);
            if now_ms < due {
                continue;
            }
            if !crate::lock::lock(&self.lapsing).insert((holder.clone(), renewed_ms)) {
                continue;
            }
            let result = self
                .store
                .submit_replicated(crate::store::Write::LapseLease {
                    holder: holder.clone(),
                    renewed_ms,
                })
                .await;
            crate::lock::lock(&self.lapsing).remove(&(holder.clone(), renewed_ms));
            result?;
            lapsed.push(holder);
        }
        Ok(lapsed)
    }

    /// Records every client whose current connection is on `holder` as
    /// disconnected for `cause` (the holder's broker restarted, say).
    /// Returns how many there were.
    pub async fn end_clients_of(
        &self,
        holder: &str,
        cause: DisconnectCause,
    ) -> Result<usize, StoreError> {
        let clients = self.clients_on(holder, &cause)?;
        let count = clients.len();
        if !clients.is_empty() {
            self.store.commit_events(clients).await?;
        }
        Ok(count)
    }

    /// Disconnect events for every client whose current connection is on
    /// `holder`.
    fn clients_on(
        &self,
        holder: &str,
        cause: &DisconnectCause,
    ) -> Result<Vec<LifecycleEvent>, StoreError> {
        let now = truncate_to_millis(Utc::now());
        let broker: Arc<str> = Arc::from(holder);
        let mut events = Vec::new();
        for client in self.store.connected_clients()? {
            let Some(state) = self.store.get_state(&client)? else {
                continue;
            };
            if state.status != ConnectionStatus::Connected || state.broker != holder {
                continue;
            }
            events.push(LifecycleEvent {
                client_id: client,
                time: now.max(state.last_activity_time),
                connection_id: state.connection_id,
                broker: broker.clone(),
                peer: None,
                kind: EventKind::Disconnected(cause.clone()),
            });
        }
        Ok(events)
    }

    /// Ends lapsed leases until `stop`.
    pub fn spawn_lease_keeper(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let tracker = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(LAPSE_CHECK_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.cancelled() => return,
                }
                if let Err(e) = tracker.end_lapsed_leases().await
                    && !matches!(e, StoreError::Disabled)
                {
                    tracing::warn!(error = %e, "ending lapsed leases failed; trying again");
                }
            }
        })
    }
}
