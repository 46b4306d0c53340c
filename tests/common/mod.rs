//! A real server on port 0 with real gRPC clients, and event builders.
#![allow(dead_code)]

pub mod cluster;
pub mod mqtt_wire;
pub mod nats;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use connstate::{
    Config, Listeners, ServerError,
    pb::{
        self, admin_service_client::AdminServiceClient,
        connection_state_service_client::ConnectionStateServiceClient,
        ingest_service_client::IngestServiceClient,
    },
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

/// A running server; dropping it without [`TestServer::stop`] aborts it.
pub struct TestServer {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT` of the REST gateway.
    pub rest: String,
    /// The MQTT (TCP) listener.
    pub mqtt: SocketAddr,
    /// The MQTT over TLS listener, when a certificate is configured.
    pub mqtt_tls: Option<SocketAddr>,
    pub data_dir: PathBuf,
    channel: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServerError>>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server in a new temporary folder; `tune` adjusts its config.
    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = Self::start_in(dir.path().to_owned(), tune).await;
        server._dir = Some(dir);
        server
    }

    /// Starts a server on an existing data folder.
    pub async fn start_in(data_dir: PathBuf, tune: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config {
            data_dir: data_dir.clone(),
            grpc_listen: Some("127.0.0.1:0".parse().unwrap()),
            rest_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Config::default()
        };
        tune(&mut config);
        let grpc = tokio::net::TcpListener::bind(config.grpc_listen.expect("gRPC on"))
            .await
            .expect("bind");
        let addr = grpc.local_addr().unwrap();
        let rest = tokio::net::TcpListener::bind(config.rest_listen.expect("REST on"))
            .await
            .expect("bind");
        let rest_url = format!("http://{}", rest.local_addr().unwrap());
        let mqtt = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mqtt_addr = mqtt.local_addr().unwrap();
        let mqtt_tls = match config.tls {
            Some(_) => Some(
                tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind"),
            ),
            None => None,
        };
        let mqtt_tls_addr = mqtt_tls.as_ref().map(|l| l.local_addr().unwrap());
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(connstate::run(
            Listeners {
                grpc: Some(grpc),
                rest: Some(rest),
                mqtt: connstate::mqtt::MqttListeners {
                    tcp: Some(mqtt),
                    tls: mqtt_tls,
                    ws: None,
                },
            },
            config,
            async {
                let _ = rx.await;
            },
        ));
        // Lazy: servers started with TLS are reached through their own
        // channel; a plain channel to them is never used.
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        TestServer {
            addr,
            rest: rest_url,
            mqtt: mqtt_addr,
            mqtt_tls: mqtt_tls_addr,
            data_dir,
            channel,
            shutdown: Some(tx),
            handle: Some(handle),
            _dir: None,
        }
    }

    pub fn states(&self) -> ConnectionStateServiceClient<Channel> {
        ConnectionStateServiceClient::new(self.channel.clone())
    }

    pub fn ingest_client(&self) -> IngestServiceClient<Channel> {
        IngestServiceClient::new(self.channel.clone())
    }

    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Ingests `events` as broker "test" and returns the revision.
    pub async fn ingest(&self, events: Vec<pb::LifecycleEvent>) -> u64 {
        self.ingest_client()
            .ingest_events(pb::IngestEventsRequest {
                lease_duration: None,
                broker: "test".into(),
                events,
            })
            .await
            .expect("ingest")
            .into_inner()
            .revision
    }

    pub async fn get(&self, client_id: &str) -> pb::ConnectionState {
        self.states()
            .get_connection_state(pb::GetConnectionStateRequest {
                client_id: client_id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("get {client_id}: {e}"))
            .into_inner()
    }

    pub async fn logs(&self, client_id: &str) -> Vec<pb::LogEntry> {
        self.states()
            .list_connection_logs(pb::ListConnectionLogsRequest {
                client_id: client_id.into(),
                ..Default::default()
            })
            .await
            .expect("logs")
            .into_inner()
            .entries
    }

    /// Graceful shutdown; returns the temporary folder (if owned) so that
    /// the data outlives the server.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .expect("server stops within 30 s")
                .expect("server task")
                .expect("server result");
        }
        self._dir.take()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// A base time fixed for the test process (one hour before it started,
/// whole seconds, so well inside every retention period) plus `secs`.
pub fn at(secs: i64) -> prost_types::Timestamp {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            - 3600
    });
    prost_types::Timestamp {
        seconds: base + secs,
        nanos: 0,
    }
}

pub fn info(port: u32) -> pb::ConnectionInfo {
    pb::ConnectionInfo {
        client_addr: "127.0.0.1".into(),
        port,
        secure: false,
        username: "use-token-auth".into(),
        protocol: pb::MqttProtocol::V311 as i32,
        keep_alive_seconds: 60,
        clean_session: true,
    }
}

pub fn connected(client_id: &str, connection_id: u64, secs: i64) -> pb::LifecycleEvent {
    pb::LifecycleEvent {
        client_id: client_id.into(),
        time: Some(at(secs)),
        connection_id,
        event: Some(pb::lifecycle_event::Event::Connected(pb::Connected {
            info: Some(info(40_000 + connection_id as u32 % 20_000)),
        })),
    }
}

pub fn disconnected(
    client_id: &str,
    connection_id: u64,
    secs: i64,
    cause: pb::DisconnectCause,
    reason_code: Option<u32>,
) -> pb::LifecycleEvent {
    pb::LifecycleEvent {
        client_id: client_id.into(),
        time: Some(at(secs)),
        connection_id,
        event: Some(pb::lifecycle_event::Event::Disconnected(pb::Disconnected {
            cause: cause as i32,
            reason_code,
            detail: String::new(),
        })),
    }
}

pub fn activity(
    client_id: &str,
    connection_id: u64,
    secs: i64,
    kind: pb::ActivityKind,
) -> pb::LifecycleEvent {
    pb::LifecycleEvent {
        client_id: client_id.into(),
        time: Some(at(secs)),
        connection_id,
        event: Some(pb::lifecycle_event::Event::Activity(pb::Activity {
            kind: kind as i32,
        })),
    }
}

pub fn connect_failed(
    client_id: &str,
    secs: i64,
    failure: pb::ConnectFailure,
) -> pb::LifecycleEvent {
    pb::LifecycleEvent {
        client_id: client_id.into(),
        time: Some(at(secs)),
        connection_id: 0,
        event: Some(pb::lifecycle_event::Event::ConnectFailed(
            pb::ConnectFailed {
                info: Some(info(41_000)),
                failure: failure as i32,
            },
        )),
    }
}

/// The administrator key of [`TestServer::start_secured`].
pub const ADMIN: (&str, &str) = ("a-local-admin", "admin-token-0123456789");

/// `Basic base64(key:token)`: the HTTP header and gRPC metadata value.
pub fn basic((key, token): (&str, &str)) -> String {
    use base64::{Engine, engine::general_purpose::STANDARD};
    format!("Basic {}", STANDARD.encode(format!("{key}:{token}")))
}

/// A gRPC request carrying `credentials`, if any.
pub fn with_auth<T>(message: T, credentials: Option<(&str, &str)>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(c) = credentials {
        let value = tonic::metadata::MetadataValue::try_from(basic(c)).unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

impl TestServer {
    /// A server with API keys required and [`ADMIN`] as administrator.
    pub async fn start_secured() -> TestServer {
        Self::start_with(|c| {
            c.auth = true;
            c.admin_key = Some((ADMIN.0.into(), ADMIN.1.into()));
        })
        .await
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// xorshift64*: small, deterministic, good enough to pick test inputs.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Seeded from `var` when set (to replay a failure), else from the
    /// clock; prints the seed either way.
    pub fn from_env(var: &str) -> Rng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        println!("{var}={seed}");
        Rng(seed)
    }
}

/// Every listener of the real binary on a free port of 127.0.0.1.
pub const FREE_PORTS: [&str; 8] = [
    "--grpc-listen",
    "127.0.0.1:0",
    "--rest-listen",
    "127.0.0.1:0",
    "--mqtt-listen",
    "127.0.0.1:0",
    "--mqtt-ws-listen",
    "127.0.0.1:0",
];

/// Every record whose client id starts with `prefix`, by client id, read
/// page by page over gRPC on `channel`.
pub async fn states_under(
    channel: Channel,
    prefix: &str,
) -> std::collections::BTreeMap<String, pb::ConnectionState> {
    let mut states = std::collections::BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let page = ConnectionStateServiceClient::new(channel.clone())
            .list_connection_states(pb::ListConnectionStatesRequest {
                filter: Some(pb::ConnectionStateFilter {
                    client_id_prefix: prefix.into(),
                    ..Default::default()
                }),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("list states under {prefix:?}: {e}"))
            .into_inner();
        states.extend(page.states.into_iter().map(|s| (s.client_id.clone(), s)));
        if page.next_page_token.is_empty() {
            return states;
        }
        page_token = page.next_page_token;
    }
}

/// Every connection log entry of every client, in the order the server
/// lists them (all pages).
pub async fn all_logs(channel: Channel) -> Vec<pb::LogEntry> {
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = ConnectionStateServiceClient::new(channel.clone())
            .list_connection_logs(pb::ListConnectionLogsRequest {
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("list logs: {e}"))
            .into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return entries;
        }
        page_token = page.next_page_token;
    }
}

/// `connstate serve ARGS --data-dir DATA_DIR` of the real binary, logging
/// warnings only (pass [`FREE_PORTS`] in `args` for listeners on free
/// ports); the caller chooses where its output goes.
pub fn serve_command(data_dir: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_connstate"));
    command
        .arg("serve")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn");
    command
}
