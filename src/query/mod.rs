//! The query service: the one implementation behind every API edge (gRPC
//! now, REST next). It takes validated domain requests, reads the store,
//! and answers with domain types; the edges only convert.

mod page_token;
mod watch;

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

pub use watch::{WatchEnd, WatchItem, WatchRequest};

use crate::{
    domain::{
        ClientId, ConnectionState, LifecycleEvent, LogEntry, LogFilter, Revision, StateFilter,
        StateOrder,
    },
    metrics::Metrics,
    store::{Settings, Store, StoreError},
    tracker::Tracker,
};

/// Largest page of any listing.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Default page of state listings.
pub const DEFAULT_STATE_PAGE_SIZE: usize = 25;
/// Default page of log listings.
pub const DEFAULT_LOG_PAGE_SIZE: usize = 100;
/// Most events in one ingest call.
pub const MAX_INGEST_BATCH: usize = 10_000;

/// Errors of the query service, mapped to each wire protocol in one place
/// per edge.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A request field is invalid; `field` names it as the API spells it.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("no connection state for client id {0}")]
    NotFound(String),
    #[error("client connection state is disabled")]
    Disabled,
    #[error(
        "revision {requested} is no longer in the change feed; the oldest retained revision is {oldest}"
    )]
    OutOfRange {
        requested: Revision,
        oldest: Revision,
    },
    /// A watch asked to resume from a revision the store has not reached.
    #[error(
        "revision {requested} is ahead of the store's revision {current}; resume from {current} or earlier"
    )]
    AheadOfStore {
        requested: Revision,
        current: Revision,
    },
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The store cannot record: until disk space is freed (the text says
    /// how much is free and how much must stay free), or while the
    /// cluster's log is unavailable.
    #[error("{0}")]
    CannotRecord(String),
    #[error("internal error")]
    Internal(#[source] StoreError),
}

impl QueryError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        QueryError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<StoreError> for QueryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Disabled => QueryError::Disabled,
            StoreError::Closed => QueryError::ShuttingDown,
            e @ (StoreError::StorageFull { .. } | StoreError::Unavailable(_)) => {
                QueryError::CannotRecord(e.to_string())
            }
            other => QueryError::Internal(other),
        }
    }
}

/// A request for one page of state records.
#[derive(Debug, Clone, Default)]
pub struct ListStates {
    pub filter: StateFilter,
    pub order: StateOrder,
    /// 1 to [`MAX_PAGE_SIZE`]; `None` for the default.
    pub page_size: Option<usize>,
    pub page_token: Option<String>,
}

/// One page of state records.
#[derive(Debug, Clone)]
pub struct StatesPage {
    pub states: Vec<ConnectionState>,
    pub next_page_token: Option<String>,
    pub revision: Revision,
}

/// A request for one page of log entries.
#[derive(Debug, Clone, Default)]
pub struct ListLogs {
    /// One client, or all when `None`.
    pub client: Option<ClientId>,
    pub filter: LogFilter,
    pub page_size: Option<usize>,
    pub page_token: Option<String>,
}

/// One page of log entries, newest first.
#[derive(Debug, Clone)]
pub struct LogsPage {
    pub entries: Vec<LogEntry>,
    pub next_page_token: Option<String>,
    pub revision: Revision,
}

/// Tunables of the query service.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// Keys a single listing request may look at before it returns a
    /// shorter page with a token.
    pub scan_budget: usize,
    /// Heartbeat of watch streams that do not ask for their own.
    pub heartbeat_interval: Duration,
    /// Organisation whose devices `type_id` + `device_id` name.
    pub org_id: String,
}

/// A cheap, cloneable handle to the query service.
#[derive(Clone)]
pub struct QueryService {
    store: Store,
    tracker: Tracker,
    options: Arc<QueryOptions>,
    page_tokens: page_token::PageTokens,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// The cluster this node belongs to, if any: its readiness is the
    /// service's.
    cluster: Option<crate::cluster::Cluster>,
}

impl QueryService {
    /// Fails only if the store cannot give the page-token key.
    pub fn new(
        store: Store,
        tracker: Tracker,
        options: QueryOptions,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Self, StoreError> {
        let page_tokens = page_token::PageTokens::new(store.secret("page-tokens")?);
        Ok(QueryService {
            store,
            tracker,
            options: Arc::new(options),
            page_tokens,
            metrics,
            shutdown,
            cluster: None,
        })
    }

    /// The service of a cluster node: not ready while the node is not.
    pub fn with_cluster(mut self, cluster: Option<crate::cluster::Cluster>) -> Self {
        self.cluster = cluster;
        self
    }

    /// The service's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The client `type_id` + `device_id` name in this server's organisation:
    /// the device, or the gateway when only a gateway of that name has a
    /// record. `None` when the ids are not platform ids.
    pub fn device_client_id(&self, type_id: &str, device_id: &str) -> Option<ClientId> {
        let org = &self.options.org_id;
        let device = ClientId::new(format!("d:{org}:{type_id}:{device_id}")).ok()?;
        if device.kind().client_type() != crate::domain::ClientType::Device {
            return None;
        }
        let gateway = ClientId::new(format!("g:{org}:{type_id}:{device_id}")).ok()?;
        let exists = |id: &ClientId| matches!(self.store.get_state(id), Ok(Some(_)));
        Some(if !exists(&device) && exists(&gateway) {
            gateway
        } else {
            device
        })
    }

    /// Serving: the store can record and shutdown has not begun.
    pub fn is_ready(&self) -> bool {
        self.unready().is_none()
    }

    /// Why the service is not ready, `None` while it is: the server is
    /// shutting down, or the store cannot record.
    pub fn unready(&self) -> Option<String> {
        if self.shutdown.is_cancelled() {
            return Some("the server is shutting down".to_owned());
        }
        if let Some(why) = self.store.recording().refusal() {
            return Some(format!("the store cannot record: {why}"));
        }
        self.cluster.as_ref().and_then(|c| c.status().problem())
    }

    pub fn options(&self) -> &QueryOptions {
        &self.options
    }

    fn check_enabled(&self) -> Result<(), QueryError> {
        if self.store.settings().enabled {
            Ok(())
        } else {
            Err(QueryError::Disabled)
        }
    }

    pub fn get_state(&self, client: &ClientId) -> Result<ConnectionState, QueryError> {
        self.check_enabled()?;
        self.store
            .get_state(client)?
            .ok_or_else(|| QueryError::NotFound(client.to_string()))
    }

    pub async fn list_states(&self, request: ListStates) -> Result<StatesPage, QueryError> {
        self.check_enabled()?;
        let limit = request.page_size.unwrap_or(DEFAULT_STATE_PAGE_SIZE);
        let fingerprint = page_token::fingerprint(&(&request.filter, request.order));
        let cursor = request
            .page_token
            .as_deref()
            .map(|t| self.page_tokens.open(t, fingerprint))
            .transpose()?;
        let store = self.store.clone();
        let budget = self.options.scan_budget;
        let page = tokio::task::spawn_blocking(move || {
            store.list_states(
                &request.filter,
                request.order,
                limit,
                cursor.as_deref(),
                budget,
            )
        })
        .await
        .map_err(|_| QueryError::ShuttingDown)??;
        Ok(StatesPage {
            states: page.states,
            next_page_token: page.cursor.map(|c| self.page_tokens.seal(&c, fingerprint)),
            revision: page.revision,
        })
    }

    pub async fn list_logs(&self, request: ListLogs) -> Result<LogsPage, QueryError> {
        self.check_enabled()?;
        let limit = request.page_size.unwrap_or(DEFAULT_LOG_PAGE_SIZE);
        let fingerprint = page_token::fingerprint(&(&request.client, &request.filter));
        let cursor = request
            .page_token
            .as_deref()
            .map(|t| self.page_tokens.open(t, fingerprint))
            .transpose()?
            .map(|bytes| {
                crate::store::LogCursor::from_bytes(&bytes)
                    .ok_or_else(|| QueryError::invalid("page_token", "is not a valid page token"))
            })
            .transpose()?;
        let store = self.store.clone();
        let budget = self.options.scan_budget;
        let page = tokio::task::spawn_blocking(move || {
            store.list_logs(
                request.client.as_ref(),
                &request.filter,
                limit,
                cursor,
                budget,
            )
        })
        .await
        .map_err(|_| QueryError::ShuttingDown)??;
        Ok(LogsPage {
            entries: page.entries,
            next_page_token: page
                .cursor
                .map(|c| self.page_tokens.seal(&c.to_bytes(), fingerprint)),
            revision: page.revision,
        })
    }

    /// Records lifecycle events from another broker (validated already).
    /// With `lease`, renews the broker's lease once the events are
    /// recorded.
    pub async fn ingest(
        &self,
        events: Vec<LifecycleEvent>,
        lease: Option<std::time::Duration>,
    ) -> Result<Revision, QueryError> {
        if self.shutdown.is_cancelled() {
            return Err(QueryError::ShuttingDown);
        }
        let broker = events.first().map(|e| e.broker.clone());
        let revision = self.tracker.record(events).await?;
        if let (Some(duration), Some(broker)) = (lease, broker) {
            self.tracker.renew_lease(&broker, duration).await?;
        }
        Ok(revision)
    }

    /// Renews (or takes) the lease of a reporting broker (validated
    /// already).
    pub async fn renew_lease(
        &self,
        broker: &str,
        duration: std::time::Duration,
    ) -> Result<crate::tracker::Lease, QueryError> {
        if self.shutdown.is_cancelled() {
            return Err(QueryError::ShuttingDown);
        }
        Ok(self.tracker.renew_lease(broker, duration).await?)
    }

    pub async fn delete_state(&self, client: ClientId) -> Result<Revision, QueryError> {
        self.check_enabled()?;
        match self.store.delete_state(client.clone()).await {
            Err(StoreError::NotFound) => Err(QueryError::NotFound(client.to_string())),
            other => Ok(other?),
        }
    }

    pub fn settings(&self) -> Settings {
        self.store.settings()
    }

    pub async fn update_settings(&self, settings: Settings) -> Result<Settings, QueryError> {
        self.store.update_settings(settings).await?;
        Ok(self.store.settings())
    }
}
