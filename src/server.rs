//! Start-up, serving and shutdown of the whole service.
//!
//! Order matters and is the same every time: open the store, recover clients
//! left "connected" by a crash, start the background tasks, report SERVING,
//! serve. On shutdown: report NOT_SERVING, stop accepting, end watches, wait
//! for requests in flight up to the grace period, write pending activity
//! through, then stop the writer and flush the store last.

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic_health::server::HealthReporter;

use crate::{
    accept::Acceptor,
    api::{
        auth::Gate,
        grpc::{GrpcApi, interceptor},
        watch::ConnectionStateRoutes,
    },
    config::Config,
    http::HttpLimits,
    mqtt::{Broker, BrokerOptions, MqttListeners},
    pb::{admin_service_server::AdminServiceServer, ingest_service_server::IngestServiceServer},
    query::{QueryOptions, QueryService},
    registry::{Registry, RegistryError, Role},
    store::{Store, StoreError, StoreOptions},
    tracker::Tracker,
};

/// Listeners bound by the caller (tests bind port 0 and read it back).
pub struct Listeners {
    /// The gRPC API; `None` serves no gRPC.
    pub grpc: Option<TcpListener>,
    /// The REST gateway; `None` serves gRPC only.
    pub rest: Option<TcpListener>,
    /// The embedded MQTT broker's listeners; all `None` runs no broker
    /// listener.
    pub mqtt: MqttListeners,
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error(transparent)]
    Acl(#[from] crate::mqtt::acl::AclError),
    #[error("installing the SIGHUP handler (reloads --acl-file): {0}")]
    ReloadSignal(std::io::Error),
    #[error("[[source]] {name}: {reason}")]
    SourceTls { name: String, reason: String },
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(
        "data folder {} is in use by another connstate{}; stop it, or give this one \
         another folder with --data-dir",
        dir.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    DataDirInUse {
        dir: std::path::PathBuf,
        pid: Option<u32>,
    },
}

/// Serves the REST gateway on `listener`, over HTTPS when a certificate is
/// configured, until `stop`.
async fn spawn_rest(
    listener: TcpListener,
    router: axum::Router,
    config: &Config,
    metrics: &crate::metrics::Metrics,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ServerError> {
    let addr = listener.local_addr().ok();
    let tls = match &config.tls {
        Some((cert, key)) => Some(
            crate::http::tls_acceptor(cert, key)
                .await
                .map_err(ServerError::Tls)?,
        ),
        None => None,
    };
    tracing::info!(
        rest = ?addr,
        https = tls.is_some(),
        max_connections = config.rest_max_connections,
        "REST gateway"
    );
    let acceptor = Acceptor::new(listener, "rest", config.rest_max_connections, metrics);
    let limits = HttpLimits {
        header_timeout: config.rest_header_timeout,
        idle_timeout: config.rest_idle_timeout,
    };
    Ok(tokio::spawn(crate::http::serve(
        acceptor,
        router,
        tls,
        limits,
        stop,
        config.shutdown_grace,
    )))
}

/// The gate of both APIs: open mode, or API keys. With keys on and none
/// stored yet, an administrator key is created and its token printed once.
async fn open_gate(config: &Config, registry: &Registry) -> Result<Gate, ServerError> {
    if let Some((key, token)) = &config.admin_key {
        registry
            .put_key(
                key,
                token,
                Role::Admin,
                "administrator key from the configuration",
            )
            .await?;
    }
    if !config.auth {
        tracing::warn!("authentication is off (open mode): loopback development only");
        return Ok(Gate::open());
    }
    if registry.list_keys()?.is_empty() {
        let (key, token) = registry
            .create_key(Role::Admin, "first administrator key")
            .await?;
        // Shown once, like the platform does; only its digest is stored.
        use std::io::Write;
        let _ = writeln!(
            std::io::stdout(),
            "connstate created administrator API key {} with token {}",
            key.key,
            token
        );
    }
    Ok(Gate::with_registry(registry.clone()))
}

/// gRPC service names reported by health, besides the empty "whole
/// server" name.
const SERVICES: [&str; 3] = [
    "connstate.v1.ConnectionStateService",
    "connstate.v1.IngestService",
    "connstate.v1.AdminService",
];

/// gRPC health name of the embedded MQTT broker: NOT_SERVING while a
/// configured MQTT listener is not accepting, or the broker stops.
const BROKER_SERVICE: &str = "connstate.mqtt";

/// Reports `store_ok` for the API services and `broker_ok` for the
/// broker; the whole server ("") serves when both do, as `/ready` says.
async fn set_health(reporter: &HealthReporter, store_ok: bool, broker_ok: bool) {
    use tonic_health::ServingStatus;
    let status = |serving| {
        if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    reporter
        .set_service_status("", status(store_ok && broker_ok))
        .await;
    for name in SERVICES {
        reporter.set_service_status(name, status(store_ok)).await;
    }
    reporter
        .set_service_status(BROKER_SERVICE, status(broker_ok))
        .await;
}

/// Runs the service on `listeners` until `shutdown` completes.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    config.validate()?;
    let announcements = listeners.addresses();
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, false, false).await;

    // One set of metrics, handed to every part that counts.
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
    let options = StoreOptions {
        metrics: metrics.clone(),
        cache_capacity: config.cache_mb << 20,
        max_batch_events: config.max_batch_events,
        feed_capacity: config.watch_buffer,
        initial_settings: config.initial_settings.clone(),
        min_free_bytes: config.min_free_disk_mb << 20,
    };
    // A new cluster node whose log was trimmed starts from a snapshot.
    if let Some(cluster) = &config.cluster {
        crate::cluster::snapshots::bootstrap(cluster, &config.data_dir).await?;
    }
    let data_dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&data_dir, options))
        .await
        .map_err(|_| StoreError::Closed)?
        .map_err(|e| match e {
            // sled 0.34 reports the lock another process holds only in
            // its message.
            StoreError::Sled(sled::Error::Io(io))
                if io.to_string().starts_with("could not acquire lock") =>
            {
                ServerError::DataDirInUse {
                    dir: config.data_dir.clone(),
                    pid: read_pid_file(&config.data_dir),
                }
            }
            e => ServerError::Store(e),
        })?;
    write_pid_file(&config.data_dir);
    tracing::info!(
        data_dir = %config.data_dir.display(),
        revision = store.committed_revision(),
        "store open"
    );

    let tracker = Tracker::new(store.clone(), metrics.clone());
    // Stored leases run again from now: their holders could not renew
    // while this service was down.
    let leases = tracker.load_leases()?;
    if leases > 0 {
        tracing::info!(
            leases,
            "broker leases restored, each for its whole duration"
        );
    }
    // On a cluster node, the log is the store's writer: the node's start
    // in the log ends its earlier runs' connections, as the recovery below
    // does for a single node.
    let cluster = match &config.cluster {
        Some(cluster) => Some(
            crate::cluster::Cluster::join(cluster.clone(), store.clone(), metrics.clone()).await?,
        ),
        None => None,
    };
    let recovered = match cluster {
        Some(_) => 0,
        None => tracker.recover_connected().await?,
    };
    if recovered > 0 {
        tracing::warn!(
            clients = recovered,
            "recorded clients left connected by an unclean stop as disconnected by the server"
        );
    }

    let stop = CancellationToken::new();
    // Until every part has started, a failure (an early return) cancels
    // `stop`, which ends every task and listener started so far: a failed
    // start leaves nothing running.
    let starting = stop.clone().drop_guard();
    // A cluster node's registry is the cluster's bucket, mirrored here.
    let registry = match &cluster {
        Some(cluster) => {
            Registry::clustered(
                &store,
                &config.org_id,
                cluster.key_value("registry").await?,
                cluster.jetstream().clone(),
                stop.clone(),
            )
            .await?
        }
        None => Registry::new(&store, &config.org_id)?,
    };
    let gate = open_gate(&config, &registry).await?;
    let (broker, pump) = Broker::new(
        BrokerOptions {
            org_id: config.org_id.clone(),
            auth: config.auth,
            max_packet_size: config.mqtt_max_packet_size,
            max_queued_messages: config.mqtt_max_queued_messages,
            max_inflight_messages: config.mqtt_max_inflight_messages,
            max_keepalive: config.mqtt_max_keepalive,
            receive_maximum: config.mqtt_receive_maximum,
            activity_report_interval: (config.activity_interval / 4)
                .min(Duration::from_millis(250)),
            name: cluster.as_ref().map_or_else(
                || crate::domain::EMBEDDED_BROKER.to_owned(),
                crate::cluster::Cluster::broker_name,
            ),
            ..BrokerOptions::default()
        },
        store.clone(),
        tracker.clone(),
        registry.clone(),
        metrics.clone(),
        stop.clone(),
    );
    // A cluster node's clients reach the other nodes' clients.
    if let Some(cluster) = &cluster {
        broker.route_between_nodes(cluster.route_links().await?);
        // Wills of this node's earlier runs (a restart before its loss
        // was noticed): once this run started, they are recorded as ended.
        let mut status = cluster.watch_status();
        let wills = broker.clone();
        tokio::spawn(async move {
            if status.wait_for(|s| s.started).await.is_ok() {
                wills.publish_wills_of_earlier_runs();
            }
        });
        // The wills of a lost node's clients, from the node that recorded
        // the loss.
        let mut lost = cluster.watch_lost();
        let wills = broker.clone();
        tokio::spawn(async move {
            loop {
                match lost.recv().await {
                    Ok(lost) => wills.node_lost(&lost.node, &lost.by),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
    // A source's TLS files are read before anything starts: a bad one stops
    // the start, naming the source and the file.
    for source in &config.sources {
        if let Some(files) = &source.tls {
            crate::source::upstream::tls_config(files).map_err(|reason| {
                ServerError::SourceTls {
                    name: source.name.clone(),
                    reason,
                }
            })?;
        }
    }
    // The access rules file is read before anything serves: a bad one
    // stops the start, naming the file and the line.
    let acl_reload = match &config.acl_file {
        Some(path) => {
            broker.set_access_rules(Some(crate::mqtt::acl::AclRules::load(path)?));
            Some(spawn_acl_reload(
                broker.clone(),
                path.clone(),
                stop.clone(),
            )?)
        }
        None => None,
    };
    let mqtt_tls = match (&config.tls, listeners.mqtt.tls.is_some()) {
        (Some((cert, key)), true) => Some(
            crate::mqtt::tls_config(cert, key)
                .await
                .map_err(ServerError::Tls)?,
        ),
        _ => None,
    };
    let query = QueryService::new(
        store.clone(),
        tracker.clone(),
        QueryOptions {
            scan_budget: config.scan_budget,
            heartbeat_interval: config.heartbeat_interval,
            org_id: config.org_id.clone(),
        },
        metrics.clone(),
        stop.clone(),
    )?
    .with_cluster(cluster.clone());
    let mqtt_listeners = crate::mqtt::spawn_listeners(
        &broker,
        listeners.mqtt,
        mqtt_tls,
        crate::mqtt::ListenerLimits {
            max_connections: config.mqtt_max_connections,
            websocket: HttpLimits {
                header_timeout: config.rest_header_timeout,
                idle_timeout: config.rest_idle_timeout,
            },
        },
    );
    let flusher = tracker.spawn_activity_flusher(config.activity_interval, stop.clone());
    let lease_keeper = tracker.spawn_lease_keeper(stop.clone());
    let retention = spawn_retention(store.clone(), config.retention_interval, stop.clone());
    let checkpoints = spawn_checkpoints(store.clone(), config.checkpoint_interval, stop.clone());
    let sys_statistics = broker.spawn_sys_statistics(config.sys_interval);

    let rest = match listeners.rest {
        None => None,
        Some(listener) => Some(
            spawn_rest(
                listener,
                crate::api::rest::router(
                    query.clone(),
                    gate.clone(),
                    registry.clone(),
                    Some(broker.clone()),
                )
                .merge(crate::api::rest::webhook::router(
                    crate::source::webhook::WebhookSources::new(&config.sources, &tracker, &store),
                )),
                &config,
                &metrics,
                stop.clone(),
            )
            .await?,
        ),
    };
    let api = GrpcApi::new(query);
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = &config.tls {
        let identity = tonic::transport::Identity::from_pem(
            std::fs::read(cert).map_err(ServerError::Tls)?,
            std::fs::read(key).map_err(ServerError::Tls)?,
        );
        builder =
            builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    } else if config.auth
        && ![config.grpc_listen, config.rest_listen]
            .into_iter()
            .flatten()
            .all(|addr| addr.ip().is_loopback())
    {
        tracing::warn!(
            "API tokens will cross the network in clear text: configure --tls-cert and --tls-key"
        );
    }
    let grpc = builder
        .layer(crate::api::revision::GrpcLayer::new(store.clone()))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            ConnectionStateRoutes::new(api.clone()),
            interceptor(gate.clone()),
        ))
        .add_service(IngestServiceServer::with_interceptor(
            api.clone(),
            interceptor(gate.clone()),
        ))
        .add_service(AdminServiceServer::with_interceptor(api, interceptor(gate)));
    let serve: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match listeners.grpc {
            Some(listener) => Box::pin(
                grpc.serve_with_incoming_shutdown(
                    Acceptor::new(listener, "grpc", config.grpc_max_connections, &metrics)
                        .into_incoming(),
                    stop.clone().cancelled_owned(),
                ),
            ),
            None => {
                let stop = stop.clone();
                Box::pin(async move {
                    stop.cancelled().await;
                    Ok(())
                })
            }
        };
    // Health follows the store from here on; see spawn_store_watchdog.
    // Started after the last step that can fail, so a failed start leaves
    // no source running.
    let sources = crate::source::spawn_sources(
        &config.sources,
        &tracker,
        &store,
        &reporter,
        &stop,
        cluster.as_ref(),
    );
    let recording = store.watch_recording();
    let listeners_down = broker.watch_listeners();
    set_health(&reporter, store.can_record(), broker.problems().is_empty()).await;
    let cluster_ok = || cluster.as_ref().is_none_or(|c| c.status().ready());
    set_health(
        &reporter,
        store.can_record() && cluster_ok(),
        broker.problems().is_empty(),
    )
    .await;
    let watchdog = spawn_health_watchdog(
        recording,
        listeners_down,
        cluster.clone(),
        broker.clone(),
        reporter.clone(),
        stop.clone(),
    );
    let fenced = cluster
        .as_ref()
        .map(|c| spawn_fence_watch(c, broker.clone(), stop.clone()));
    starting.disarm();
    announce(&announcements, config.tls.is_some());
    tracing::info!("serving");

    tokio::pin!(serve);
    let served = tokio::select! {
        result = &mut serve => result,
        () = shutdown => {
            tracing::info!("shutting down");
            set_health(&reporter, false, false).await;
            stop.cancel();
            match tokio::time::timeout(config.shutdown_grace, &mut serve).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(grace = %humantime::format_duration(config.shutdown_grace), "requests still running after the grace period; stopping anyway");
                    Ok(())
                }
            }
        }
    };
    stop.cancel();
    set_health(&reporter, false, false).await;
    if let Some(rest) = rest {
        // It bounds its own wait by the grace period.
        let _ = rest.await;
    }
    for task in mqtt_listeners {
        let _ = task.await;
    }
    if !broker.wait_closed(config.shutdown_grace).await {
        tracing::warn!("MQTT connections still open after the grace period");
    }
    for source in sources {
        let _ = source.await;
    }
    pump.finish().await;
    let _ = flusher.await;
    let _ = lease_keeper.await;
    let _ = retention.await;
    let _ = checkpoints.await;
    if let Some(task) = sys_statistics {
        let _ = task.await;
    }
    if let Some(task) = acl_reload {
        let _ = task.await;
    }
    let _ = watchdog.await;
    if let Some(task) = fenced {
        let _ = task.await;
    }
    if let Some(cluster) = &cluster {
        cluster.leave().await;
    }
    store.close().await?;
    let _ = std::fs::remove_file(config.data_dir.join(PID_FILE));
    tracing::info!(revision = store.committed_revision(), "store closed");
    served?;
    Ok(())
}

/// Reads the access rules file again on each SIGHUP, as Mosquitto does,
/// and puts the new rules in force on every connection (none is dropped).
/// A file that cannot be read or parsed keeps the rules in force.
fn spawn_acl_reload(
    broker: crate::mqtt::Broker,
    path: std::path::PathBuf,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ServerError> {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(ServerError::ReloadSignal)?;
    Ok(tokio::spawn(async move {
        loop {
            #[cfg(unix)]
            tokio::select! {
                _ = hangup.recv() => {}
                () = stop.cancelled() => return,
            }
            #[cfg(not(unix))]
            return stop.cancelled().await;
            match crate::mqtt::acl::AclRules::load(&path) {
                Ok(rules) => {
                    broker.set_access_rules(Some(rules));
                    tracing::info!(file = %path.display(), "access rules reloaded");
                }
                Err(e) => {
                    tracing::error!("{e}; the access rules in force are kept");
                }
            }
        }
    }))
}

impl Listeners {
    /// The name (as announced) and address of every listener.
    fn addresses(&self) -> Vec<(&'static str, std::net::SocketAddr)> {
        [
            ("grpc", &self.grpc),
            ("rest", &self.rest),
            ("mqtt", &self.mqtt.tcp),
            ("mqtt-tls", &self.mqtt.tls),
            ("mqtt-ws", &self.mqtt.ws),
        ]
        .into_iter()
        .filter_map(|(name, l)| Some((name, l.as_ref()?.local_addr().ok()?)))
        .collect()
    }
}

/// Prints one stable line per listener, for scripts and tests that start
/// the binary on port 0, then the web console's URL (on the REST
/// listener); only once the store is open and every listener is bound. A
/// reader that stopped listening must not stop the server.
fn announce(listeners: &[(&str, std::net::SocketAddr)], https: bool) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for (name, addr) in listeners {
        let _ = writeln!(out, "connstate {name} listening on {addr}");
    }
    if let Some(url) = console_url(listeners, https) {
        let _ = writeln!(out, "connstate console at {url}");
    }
    let _ = out.flush();
}

/// The web console's URL: the REST listener's address, with a listener on
/// every address reached through loopback.
fn console_url(listeners: &[(&str, std::net::SocketAddr)], https: bool) -> Option<String> {
    let (_, mut addr) = *listeners.iter().find(|(name, _)| *name == "rest")?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let scheme = if https { "https" } else { "http" };
    Some(format!("{scheme}://{addr}/"))
}

/// Names the process that has the data folder open, for the message a
/// second server on the same folder gives.
const PID_FILE: &str = "connstate.pid";

fn write_pid_file(data_dir: &std::path::Path) {
    let path = data_dir.join(PID_FILE);
    if let Err(e) = std::fs::write(&path, format!("{}\n", std::process::id())) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the pid file");
    }
}

fn read_pid_file(data_dir: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(data_dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Checkpoints the store's indexes every `interval` in which something was
/// committed (the store checkpoints once more when it closes).
fn spawn_checkpoints(
    store: Store,
    interval: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = store.committed_revision();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.cancelled() => return,
            }
            if store.committed_revision() == last || !store.can_record() {
                continue;
            }
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.checkpoint()).await {
                Ok(Ok(revision)) => last = revision,
                Ok(Err(e)) => tracing::warn!(error = %e, "index checkpoint failed"),
                Err(_) => return,
            }
        }
    })
}

fn spawn_retention(
    store: Store,
    interval: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.cancelled() => return,
            }
            match store.retention_pass().await {
                Ok(report) if report != Default::default() => {
                    tracing::info!(
                        log_entries_by_age = report.log_entries_by_age,
                        log_entries_by_count = report.log_entries_by_count,
                        changes = report.changes,
                        failure_markers = report.failure_markers,
                        "retention pass"
                    );
                }
                Ok(_) => {}
                Err(crate::store::StoreError::Closed) => return,
                Err(e) => tracing::warn!(error = %e, "retention pass failed"),
            }
        }
    })
}

/// Health follows [`crate::store::Recording`] and the broker's listeners:
/// NOT_SERVING the moment the store stops recording (full disk, failed
/// write) or an MQTT listener stops accepting, SERVING again the moment
/// the store records again. `/ready` reads the same values, so the two
/// turn together.
fn spawn_health_watchdog(
    mut recording: tokio::sync::watch::Receiver<crate::store::Recording>,
    mut listeners_down: tokio::sync::watch::Receiver<Vec<String>>,
    cluster: Option<crate::cluster::Cluster>,
    broker: Broker,
    reporter: HealthReporter,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // A change between the first report and this task is not lost.
        recording.mark_changed();
        let mut cluster_status = cluster.as_ref().map(crate::cluster::Cluster::watch_status);
        let mut cluster_ready = cluster_status.as_ref().is_none_or(|s| s.borrow().ready());
        loop {
            tokio::select! {
                changed = recording.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                changed = listeners_down.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                changed = async {
                    match cluster_status.as_mut() {
                        Some(status) => status.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if changed.is_err() {
                        return;
                    }
                    let status = *cluster_status.as_mut().expect("a cluster").borrow_and_update();
                    if status.ready() == cluster_ready {
                        continue;
                    }
                    cluster_ready = status.ready();
                    match status.problem() {
                        Some(why) => tracing::warn!(reason = %why, "cluster node not ready: reporting NOT_SERVING"),
                        None => tracing::info!("cluster node ready: reporting SERVING"),
                    }
                }
                _ = stop.cancelled() => return,
            }
            let now = *recording.borrow_and_update();
            listeners_down.mark_unchanged();
            if stop.is_cancelled() {
                return;
            }
            let store_ok = now == crate::store::Recording::Ready;
            if let Some(why) = now.refusal() {
                tracing::error!(reason = %why, "the store cannot record: reporting NOT_SERVING");
            }
            set_health(
                &reporter,
                store_ok && cluster_ready,
                broker.problems().is_empty(),
            )
            .await;
        }
    })
}

/// A cluster node declared lost ends every connection of its broker: the
/// cluster recorded them as lost already, and their clients reconnect (to
/// this node's new run, or another node).
fn spawn_fence_watch(
    cluster: &crate::cluster::Cluster,
    broker: Broker,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let mut fenced = cluster.watch_fenced();
    let node = cluster.node_id().to_owned();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = fenced.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = stop.cancelled() => return,
            }
            let ended = broker.end_all(crate::domain::DisconnectCause::NodeLost {
                node: node.clone(),
                lease_secs: 0,
            });
            tracing::warn!(
                connections = ended,
                "ended every MQTT connection of this node's lost run"
            );
        }
    })
}
