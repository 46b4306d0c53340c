//! One validated configuration: embedded defaults, then a TOML file, then
//! environment variables (`CONNSTATE_*`), then command-line flags.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use serde::Deserialize;

use crate::{
    cluster::ClusterConfig,
    source::{SourceConfig, SourceSpec},
    store::Settings,
};

/// Everything the server needs to know before it binds.
#[derive(Debug, Clone)]
pub struct Config {
    /// Folder of the sled database.
    pub data_dir: PathBuf,
    /// gRPC listener; `None` is off (as for every listener).
    pub grpc_listen: Option<SocketAddr>,
    /// REST (v0002) listener.
    pub rest_listen: Option<SocketAddr>,
    /// MQTT over TCP.
    pub mqtt_listen: Option<SocketAddr>,
    /// MQTT over TLS (bound only when a certificate is configured).
    pub mqtt_tls_listen: Option<SocketAddr>,
    /// MQTT over WebSocket, path `/mqtt`.
    pub mqtt_ws_listen: Option<SocketAddr>,
    /// Connections open at once on the REST listener; more are closed at
    /// once (and counted).
    pub rest_max_connections: usize,
    /// Connections open at once on the gRPC listener.
    pub grpc_max_connections: usize,
    /// Connections open at once on each MQTT listener (TCP, TLS,
    /// WebSocket).
    pub mqtt_max_connections: usize,
    /// How long a client may take to send a request's headers on the REST
    /// listener (and the WebSocket handshake of MQTT over WebSocket). The
    /// wait starts when the server is ready for the next request, so it also
    /// ends keep-alive connections that send nothing.
    pub rest_header_timeout: Duration,
    /// A REST connection on which no byte moves either way for this long is
    /// closed (a stalled response, a client that stopped reading).
    pub rest_idle_timeout: Duration,
    /// Largest MQTT packet accepted from a client, in bytes.
    pub mqtt_max_packet_size: u32,
    /// QoS 1 and 2 messages queued per MQTT client beyond those in flight.
    pub mqtt_max_queued_messages: usize,
    /// QoS 1 and 2 messages in flight per MQTT client.
    pub mqtt_max_inflight_messages: u16,
    /// Longest MQTT keepalive a client may ask for, in seconds (0 = any).
    pub mqtt_max_keepalive: u16,
    /// The Receive Maximum the broker announces to MQTT 5 clients: QoS 2
    /// messages a client may leave unreleased (no PUBREL yet) before it is
    /// disconnected with 0x93.
    pub mqtt_receive_maximum: u16,
    /// The organisation this server serves (platform client ids).
    pub org_id: String,
    /// Activity (publish, subscribe, ping) is written through at most this
    /// often per client.
    pub activity_interval: Duration,
    /// Default heartbeat of watch streams.
    pub heartbeat_interval: Duration,
    /// Commits (group commits, each of one or more changes) a watcher may
    /// fall behind the live feed before it is ended.
    pub watch_buffer: usize,
    /// How often retention runs.
    pub retention_interval: Duration,
    /// How often the in-memory indexes are checkpointed (when something
    /// changed), so that a crash restart need not read every record.
    pub checkpoint_interval: Duration,
    /// How often the broker publishes its `$SYS/broker/...` statistics;
    /// zero: never.
    pub sys_interval: Duration,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// sled page cache, in MiB.
    pub cache_mb: u64,
    /// Disk space, in MiB, that must stay free on the data folder's file
    /// system: below it the store records nothing (CONNECTs are refused,
    /// writes answer "storage full") until space is freed.
    pub min_free_disk_mb: u64,
    /// Most events in one group commit.
    pub max_batch_events: usize,
    /// Keys one listing request may look at before it returns a shorter
    /// page with a token.
    pub scan_budget: usize,
    /// Settings of a new store (an existing store keeps its own).
    pub initial_settings: Settings,
    /// Require an API key on every API call. Required when any listener is
    /// not on loopback; off (open mode) is for development on loopback.
    pub auth: bool,
    /// An administrator key created (or updated) at start-up, with its token.
    pub admin_key: Option<(String, String)>,
    /// Certificate chain and private key (PEM files): the REST gateway
    /// serves HTTPS and gRPC uses TLS when set.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Access rules file of the embedded broker (Mosquitto's `acl_file`
    /// syntax), applied on top of the platform's rules; read at start and
    /// again on SIGHUP.
    pub acl_file: Option<PathBuf>,
    /// External brokers followed (`[[source]]` tables and
    /// `--source-mosquitto`).
    pub sources: Vec<SourceConfig>,
    /// The cluster this node belongs to (`--cluster-nats`); `None`: a
    /// single node on its own store.
    pub cluster: Option<ClusterConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("connstate-data"),
            grpc_listen: Some(SocketAddr::from(([127, 0, 0, 1], 50051))),
            rest_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            mqtt_listen: Some(SocketAddr::from(([127, 0, 0, 1], 1883))),
            mqtt_tls_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8883))),
            mqtt_ws_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8083))),
            rest_max_connections: 1024,
            grpc_max_connections: 1024,
            mqtt_max_connections: 100_000,
            rest_header_timeout: Duration::from_secs(10),
            rest_idle_timeout: Duration::from_secs(60),
            mqtt_max_packet_size: 1 << 20,
            mqtt_max_queued_messages: 1000,
            mqtt_max_inflight_messages: 20,
            mqtt_max_keepalive: 0,
            mqtt_receive_maximum: 100,
            org_id: "local".to_owned(),
            activity_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(10),
            watch_buffer: 1024,
            retention_interval: Duration::from_secs(60),
            checkpoint_interval: Duration::from_secs(60),
            sys_interval: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            cache_mb: 256,
            min_free_disk_mb: 64,
            max_batch_events: 8192,
            scan_budget: 200_000,
            initial_settings: Settings::default(),
            auth: false,
            admin_key: None,
            tls: None,
            acl_file: None,
            cluster: None,
            sources: Vec::new(),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    /// `field` is the key (`admin_token`); the message names its flag
    /// (`--admin-token`), which the file key and environment variable
    /// follow.
    #[error("--{}: {reason}", field.replace('_', "-"))]
    Invalid { field: &'static str, reason: String },
    /// A `[[source]]` table of the file (`index` counts from 1).
    #[error("[[source]] number {index} of the config file: {reason}")]
    Source { index: usize, reason: String },
}

/// A listen address as written in flags, the environment and the file:
/// `HOST:PORT` with an IP address (`localhost:PORT` is `127.0.0.1:PORT`), or
/// `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Listen(pub Option<SocketAddr>);

impl FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Listen, String> {
        if text.eq_ignore_ascii_case("off") {
            return Ok(Listen(None));
        }
        if let Some(port) = text.strip_prefix("localhost:")
            && let Ok(port) = port.parse::<u16>()
        {
            return Ok(Listen(Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))));
        }
        text.parse().map(|addr| Listen(Some(addr))).map_err(|_| {
            format!(
                "{text:?} is not a listen address; write IP:PORT (127.0.0.1:8080, [::1]:8080, \
                 0.0.0.0:8080), localhost:PORT, or off"
            )
        })
    }
}

impl TryFrom<String> for Listen {
    type Error = String;

    fn try_from(text: String) -> Result<Listen, String> {
        text.parse()
    }
}

/// Values that may come from a file, the environment or flags; `None`
/// leaves the value below it in force.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    /// Folder of the sled database [default: ./connstate-data]
    #[arg(long, env = "CONNSTATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address, or off [default: 127.0.0.1:50051]
    #[arg(
        long,
        env = "CONNSTATE_GRPC_LISTEN",
        value_name = "IP:PORT|localhost:PORT|off"
    )]
    pub grpc_listen: Option<Listen>,
    /// REST (v0002) listen address, or off [default: 127.0.0.1:8080]
    #[arg(
        long,
        env = "CONNSTATE_REST_LISTEN",
        value_name = "IP:PORT|localhost:PORT|off"
    )]
    pub rest_listen: Option<Listen>,
    /// MQTT listen address, or off [default: 127.0.0.1:1883]
    #[arg(
        long,
        env = "CONNSTATE_MQTT_LISTEN",
        value_name = "IP:PORT|localhost:PORT|off"
    )]
    pub mqtt_listen: Option<Listen>,
    /// MQTT over TLS listen address, used with --tls-cert, or off [default: 127.0.0.1:8883]
    #[arg(
        long,
        env = "CONNSTATE_MQTT_TLS_LISTEN",
        value_name = "IP:PORT|localhost:PORT|off"
    )]
    pub mqtt_tls_listen: Option<Listen>,
    /// MQTT over WebSocket (path /mqtt) listen address, or off [default: 127.0.0.1:8083]
    #[arg(
        long,
        env = "CONNSTATE_MQTT_WS_LISTEN",
        value_name = "IP:PORT|localhost:PORT|off"
    )]
    pub mqtt_ws_listen: Option<Listen>,
    /// Connections open at once on the REST listener; more are closed at
    /// once [default: 1024]
    #[arg(long, env = "CONNSTATE_REST_MAX_CONNECTIONS")]
    pub rest_max_connections: Option<usize>,
    /// Connections open at once on the gRPC listener [default: 1024]
    #[arg(long, env = "CONNSTATE_GRPC_MAX_CONNECTIONS")]
    pub grpc_max_connections: Option<usize>,
    /// Connections open at once on each MQTT listener (TCP, TLS, WebSocket)
    /// [default: 100000]
    #[arg(long, env = "CONNSTATE_MQTT_MAX_CONNECTIONS")]
    pub mqtt_max_connections: Option<usize>,
    /// Time a REST client has to send a request's headers (also the MQTT
    /// WebSocket handshake, and the most a keep-alive connection waits for
    /// its next request), e.g. 10s [default: 10s]
    #[arg(long, env = "CONNSTATE_REST_HEADER_TIMEOUT")]
    pub rest_header_timeout: Option<String>,
    /// A REST connection on which no byte moves either way for this long is
    /// closed, e.g. 60s [default: 60s]
    #[arg(long, env = "CONNSTATE_REST_IDLE_TIMEOUT")]
    pub rest_idle_timeout: Option<String>,
    /// Largest MQTT packet accepted, in bytes [default: 1048576]
    #[arg(long, env = "CONNSTATE_MQTT_MAX_PACKET_SIZE")]
    pub mqtt_max_packet_size: Option<u32>,
    /// QoS 1/2 messages queued per MQTT client [default: 1000]
    #[arg(long, env = "CONNSTATE_MQTT_MAX_QUEUED_MESSAGES")]
    pub mqtt_max_queued_messages: Option<usize>,
    /// QoS 1/2 messages in flight per MQTT client [default: 20]
    #[arg(long, env = "CONNSTATE_MQTT_MAX_INFLIGHT_MESSAGES")]
    pub mqtt_max_inflight_messages: Option<u16>,
    /// Longest MQTT keepalive a client may ask for, in seconds; 0 = any. A
    /// v5 client asking more (or 0) is told this Server Keep Alive and held
    /// to it; a v3 client asking more (or 0) is refused (identifier
    /// rejected), as Mosquitto does [default: 0]
    #[arg(long, env = "CONNSTATE_MQTT_MAX_KEEPALIVE")]
    pub mqtt_max_keepalive: Option<u16>,
    /// Receive Maximum announced to MQTT 5 clients (1 to 65535): QoS 2
    /// messages a client may leave without PUBREL; one more is a
    /// disconnect with 0x93 [default: 100]
    #[arg(long, env = "CONNSTATE_MQTT_RECEIVE_MAXIMUM")]
    pub mqtt_receive_maximum: Option<u16>,
    /// Organisation id of platform client ids [default: local]
    #[arg(long, env = "CONNSTATE_ORG_ID")]
    pub org_id: Option<String>,
    /// Activity write-through interval, e.g. 1s [default: 1s]
    #[arg(long, env = "CONNSTATE_ACTIVITY_INTERVAL")]
    pub activity_interval: Option<String>,
    /// Default watch heartbeat, e.g. 10s [default: 10s]
    #[arg(long, env = "CONNSTATE_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<String>,
    /// Commits a watcher may lag before it is ended [default: 1024]
    #[arg(long, env = "CONNSTATE_WATCH_BUFFER")]
    pub watch_buffer: Option<usize>,
    /// Retention pass interval, e.g. 60s [default: 60s]
    #[arg(long, env = "CONNSTATE_RETENTION_INTERVAL")]
    pub retention_interval: Option<String>,
    /// Index checkpoint interval, e.g. 60s: a crash restart loads the last
    /// checkpoint and the log after it [default: 60s]
    #[arg(long, env = "CONNSTATE_CHECKPOINT_INTERVAL")]
    pub checkpoint_interval: Option<String>,
    /// How often the MQTT broker publishes its $SYS/broker/... statistics
    /// (retained, as Mosquitto does), e.g. 10s; 0s turns them off
    /// [default: 10s]
    #[arg(long, env = "CONNSTATE_SYS_INTERVAL")]
    pub sys_interval: Option<String>,
    /// Shutdown grace period, e.g. 10s [default: 10s]
    #[arg(long, env = "CONNSTATE_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// sled page cache in MiB [default: 256]
    #[arg(long, env = "CONNSTATE_CACHE_MB")]
    pub cache_mb: Option<u64>,
    /// Disk space in MiB kept free; below it nothing is recorded [default: 64]
    #[arg(long, env = "CONNSTATE_MIN_FREE_DISK_MB")]
    pub min_free_disk_mb: Option<u64>,
    /// Most events per group commit [default: 8192]
    #[arg(long, env = "CONNSTATE_MAX_BATCH_EVENTS")]
    pub max_batch_events: Option<usize>,
    /// Log entry retention of a new store, e.g. 7d [default: 7d]
    #[arg(long, env = "CONNSTATE_LOG_MAX_AGE")]
    pub log_max_age: Option<String>,
    /// Log entries kept per client in a new store [default: 1000]
    #[arg(long, env = "CONNSTATE_LOG_MAX_ENTRIES_PER_CLIENT")]
    pub log_max_entries_per_client: Option<u32>,
    /// Change feed retention of a new store, e.g. 7d [default: 7d]
    #[arg(long, env = "CONNSTATE_FEED_MAX_AGE")]
    pub feed_max_age: Option<String>,
    /// Require API keys (HTTP Basic / gRPC `authorization` metadata) [default: false]
    #[arg(long, env = "CONNSTATE_AUTH")]
    pub auth: Option<bool>,
    /// Administrator API key to create at start-up (with --admin-token)
    #[arg(long, env = "CONNSTATE_ADMIN_KEY")]
    pub admin_key: Option<String>,
    /// Token of --admin-key (at least 18 characters)
    #[arg(long, env = "CONNSTATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// PEM certificate chain: with --tls-key, REST serves HTTPS and gRPC uses TLS
    #[arg(long, env = "CONNSTATE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, env = "CONNSTATE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// MQTT access rules file in Mosquitto's acl_file syntax (user, topic,
    /// pattern with %c/%u; read|write|readwrite|deny), on top of the
    /// platform's rules; once given, what no rule grants is refused.
    /// Reloaded on SIGHUP (a bad file keeps the rules in force)
    #[arg(long, env = "CONNSTATE_ACL_FILE")]
    pub acl_file: Option<PathBuf>,
    /// Follow a Mosquitto 2.x broker through its `$SYS/broker/log/#` topic, as the source named "mosquitto"
    #[arg(
        long,
        env = "CONNSTATE_SOURCE_MOSQUITTO",
        value_name = "mqtt://[USER[:PASSWORD]@]HOST[:PORT]"
    )]
    pub source_mosquitto: Option<String>,
    /// External brokers to follow: `[[source]]` tables (file only).
    #[arg(skip)]
    pub source: Option<Vec<SourceSpec>>,
    /// Join a cluster whose log is a NATS JetStream stream: the NATS
    /// servers' URLs, comma-separated (requires --node-id)
    #[arg(
        long,
        env = "CONNSTATE_CLUSTER_NATS",
        value_name = "nats://HOST:PORT[,...]"
    )]
    pub cluster_nats: Option<String>,
    /// This node's name in the cluster, unique: letters, digits, '-', '_'
    #[arg(long, env = "CONNSTATE_NODE_ID")]
    pub node_id: Option<String>,
    /// The cluster's JetStream stream (created if absent) [default: CONNSTATE]
    #[arg(long, env = "CONNSTATE_CLUSTER_STREAM")]
    pub cluster_stream: Option<String>,
    /// Replicas of the stream and lease bucket when this node creates them [default: 3]
    #[arg(long, env = "CONNSTATE_CLUSTER_REPLICAS")]
    pub cluster_replicas: Option<usize>,
    /// How long a node's lease lasts without renewal; a node silent for longer is lost [default: 10s]
    #[arg(long, env = "CONNSTATE_CLUSTER_LEASE")]
    pub cluster_lease: Option<String>,
    /// Log messages a node may trail the cluster by and still be ready [default: 10000]
    #[arg(long, env = "CONNSTATE_CLUSTER_MAX_LAG")]
    pub cluster_max_lag: Option<u64>,
    /// How often one node snapshots the state into JetStream's object store, so the log can be trimmed behind it [default: 10m]
    #[arg(long, env = "CONNSTATE_CLUSTER_SNAPSHOT_INTERVAL")]
    pub cluster_snapshot_interval: Option<String>,
    /// NATS user name (with --cluster-nats-password)
    #[arg(long, env = "CONNSTATE_CLUSTER_NATS_USER")]
    pub cluster_nats_user: Option<String>,
    /// NATS password of --cluster-nats-user
    #[arg(long, env = "CONNSTATE_CLUSTER_NATS_PASSWORD", hide_env_values = true)]
    pub cluster_nats_password: Option<String>,
    /// NATS token
    #[arg(long, env = "CONNSTATE_CLUSTER_NATS_TOKEN", hide_env_values = true)]
    pub cluster_nats_token: Option<String>,
    /// CA certificate (PEM) of the NATS servers: TLS is then required
    #[arg(long, env = "CONNSTATE_CLUSTER_NATS_CA")]
    pub cluster_nats_ca: Option<PathBuf>,
}

impl ConfigLayer {
    /// Reads a TOML file with the same keys as the flags (`data_dir`,
    /// `grpc_listen`, ...).
    pub fn from_file(path: &Path) -> Result<ConfigLayer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

/// The cluster settings of all layers, later ones winning.
#[derive(Default)]
struct ClusterLayer {
    nats: Option<String>,
    node_id: Option<String>,
    stream: Option<String>,
    replicas: Option<usize>,
    lease: Option<String>,
    max_lag: Option<u64>,
    snapshot_interval: Option<String>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    ca: Option<PathBuf>,
}

impl ClusterLayer {
    fn add(&mut self, l: &ConfigLayer) {
        let take = |to: &mut Option<String>, from: &Option<String>| {
            if from.is_some() {
                to.clone_from(from);
            }
        };
        take(&mut self.nats, &l.cluster_nats);
        take(&mut self.node_id, &l.node_id);
        take(&mut self.stream, &l.cluster_stream);
        take(&mut self.lease, &l.cluster_lease);
        take(&mut self.snapshot_interval, &l.cluster_snapshot_interval);
        take(&mut self.user, &l.cluster_nats_user);
        take(&mut self.password, &l.cluster_nats_password);
        take(&mut self.token, &l.cluster_nats_token);
        self.replicas = l.cluster_replicas.or(self.replicas);
        self.max_lag = l.cluster_max_lag.or(self.max_lag);
        if l.cluster_nats_ca.is_some() {
            self.ca.clone_from(&l.cluster_nats_ca);
        }
    }

    fn build(self) -> Result<Option<ClusterConfig>, ConfigError> {
        let invalid = |field, reason: String| ConfigError::Invalid { field, reason };
        let Some(nats) = self.nats else {
            if self.node_id.is_some() {
                return Err(invalid("cluster_nats", "is required with --node-id".into()));
            }
            return Ok(None);
        };
        let Some(node_id) = self.node_id else {
            return Err(invalid("node_id", "is required with --cluster-nats".into()));
        };
        let urls = nats
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        let mut cluster = ClusterConfig::new(urls, node_id);
        if let Some(stream) = self.stream {
            cluster.stream = stream;
        }
        if let Some(replicas) = self.replicas {
            cluster.replicas = replicas;
        }
        if let Some(lease) = &self.lease {
            cluster.lease = duration("cluster_lease", lease)?;
        }
        if let Some(max_lag) = self.max_lag {
            cluster.max_lag = max_lag;
        }
        if let Some(every) = &self.snapshot_interval {
            cluster.snapshot_interval = duration("cluster_snapshot_interval", every)?;
        }
        match (self.user, self.password) {
            (Some(user), Some(password)) => cluster.user = Some((user, password)),
            (None, None) => {}
            _ => {
                return Err(invalid(
                    "cluster_nats_user",
                    "and --cluster-nats-password go together".into(),
                ));
            }
        }
        cluster.token = self.token;
        cluster.tls_ca = self.ca;
        cluster
            .validate()
            .map_err(|(field, reason)| invalid(field, reason))?;
        Ok(Some(cluster))
    }
}

fn duration(field: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(text).map_err(|e| ConfigError::Invalid {
        field,
        reason: format!("{text:?} is not a duration ({e}); write e.g. 500ms, 10s, 7d"),
    })?;
    if d.is_zero() {
        return Err(ConfigError::Invalid {
            field,
            reason: "must be more than zero".into(),
        });
    }
    Ok(d)
}

/// A duration where zero means "off".
fn duration_or_zero(field: &'static str, text: &str) -> Result<Duration, ConfigError> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Ok(d),
        _ if text.trim() == "0" => Ok(Duration::ZERO),
        _ => duration(field, text),
    }
}

impl Config {
    /// Builds the configuration from `layers`, lowest precedence first, and
    /// validates it.
    pub fn from_layers<'a>(
        layers: impl IntoIterator<Item = &'a ConfigLayer>,
    ) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let mut specs: &[SourceSpec] = &[];
        let mut mosquitto = None;
        let mut cluster = ClusterLayer::default();
        for l in layers {
            cluster.add(l);
            if let Some(v) = &l.source {
                specs = v;
            }
            if let Some(v) = &l.source_mosquitto {
                mosquitto = Some(v.clone());
            }
            if let Some(v) = &l.data_dir {
                c.data_dir = v.clone();
            }
            if let Some(Listen(v)) = l.grpc_listen {
                c.grpc_listen = v;
            }
            if let Some(Listen(v)) = l.rest_listen {
                c.rest_listen = v;
            }
            if let Some(Listen(v)) = l.mqtt_listen {
                c.mqtt_listen = v;
            }
            if let Some(Listen(v)) = l.mqtt_tls_listen {
                c.mqtt_tls_listen = v;
            }
            if let Some(Listen(v)) = l.mqtt_ws_listen {
                c.mqtt_ws_listen = v;
            }
            if let Some(v) = l.rest_max_connections {
                c.rest_max_connections = v;
            }
            if let Some(v) = l.grpc_max_connections {
                c.grpc_max_connections = v;
            }
            if let Some(v) = l.mqtt_max_connections {
                c.mqtt_max_connections = v;
            }
            if let Some(v) = &l.rest_header_timeout {
                c.rest_header_timeout = duration("rest_header_timeout", v)?;
            }
            if let Some(v) = &l.rest_idle_timeout {
                c.rest_idle_timeout = duration("rest_idle_timeout", v)?;
            }
            if let Some(v) = l.mqtt_max_packet_size {
                c.mqtt_max_packet_size = v;
            }
            if let Some(v) = l.mqtt_max_queued_messages {
                c.mqtt_max_queued_messages = v;
            }
            if let Some(v) = l.mqtt_max_inflight_messages {
                c.mqtt_max_inflight_messages = v;
            }
            if let Some(v) = l.mqtt_max_keepalive {
                c.mqtt_max_keepalive = v;
            }
            if let Some(v) = l.mqtt_receive_maximum {
                c.mqtt_receive_maximum = v;
            }
            if let Some(v) = &l.org_id {
                c.org_id = v.clone();
            }
            if let Some(v) = &l.activity_interval {
                c.activity_interval = duration("activity_interval", v)?;
            }
            if let Some(v) = &l.heartbeat_interval {
                c.heartbeat_interval = duration("heartbeat_interval", v)?;
            }
            if let Some(v) = l.watch_buffer {
                c.watch_buffer = v;
            }
            if let Some(v) = &l.retention_interval {
                c.retention_interval = duration("retention_interval", v)?;
            }
            if let Some(v) = &l.checkpoint_interval {
                c.checkpoint_interval = duration("checkpoint_interval", v)?;
            }
            if let Some(v) = &l.sys_interval {
                c.sys_interval = duration_or_zero("sys_interval", v)?;
            }
            if let Some(v) = &l.shutdown_grace {
                c.shutdown_grace = duration("shutdown_grace", v)?;
            }
            if let Some(v) = l.cache_mb {
                c.cache_mb = v;
            }
            if let Some(v) = l.min_free_disk_mb {
                c.min_free_disk_mb = v;
            }
            if let Some(v) = l.max_batch_events {
                c.max_batch_events = v;
            }
            if let Some(v) = &l.log_max_age {
                c.initial_settings.log_max_age = duration("log_max_age", v)?;
            }
            if let Some(v) = l.log_max_entries_per_client {
                c.initial_settings.log_max_entries_per_client = v;
            }
            if let Some(v) = &l.feed_max_age {
                c.initial_settings.feed_max_age = duration("feed_max_age", v)?;
            }
            if let Some(v) = l.auth {
                c.auth = v;
            }
            if let Some(v) = &l.acl_file {
                c.acl_file = Some(v.clone());
            }
            match (&l.tls_cert, &l.tls_key) {
                (Some(cert), Some(key)) => c.tls = Some((cert.clone(), key.clone())),
                (None, None) => {}
                (Some(_), None) => {
                    return Err(ConfigError::Invalid {
                        field: "tls_key",
                        reason: "is required with --tls-cert".into(),
                    });
                }
                (None, Some(_)) => {
                    return Err(ConfigError::Invalid {
                        field: "tls_cert",
                        reason: "is required with --tls-key".into(),
                    });
                }
            }
            match (&l.admin_key, &l.admin_token) {
                (Some(key), Some(token)) => c.admin_key = Some((key.clone(), token.clone())),
                (None, None) => {}
                (Some(_), None) => {
                    return Err(ConfigError::Invalid {
                        field: "admin_token",
                        reason: "is required with --admin-key".into(),
                    });
                }
                (None, Some(_)) => {
                    return Err(ConfigError::Invalid {
                        field: "admin_key",
                        reason: "is required with --admin-token".into(),
                    });
                }
            }
        }
        for (i, spec) in specs.iter().enumerate() {
            let source = SourceConfig::from_spec(spec).map_err(|reason| ConfigError::Source {
                index: i + 1,
                reason,
            })?;
            c.sources.push(source);
        }
        c.cluster = cluster.build()?;
        if let Some(url) = mosquitto {
            let source = SourceConfig::mosquitto(&url).map_err(|reason| ConfigError::Invalid {
                field: "source_mosquitto",
                reason,
            })?;
            c.sources.push(source);
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks everything that can be checked before binding.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        // Open mode (no API keys) is for development: only on loopback.
        if !self.auth {
            let mut listeners = vec![
                ("grpc_listen", self.grpc_listen),
                ("rest_listen", self.rest_listen),
                ("mqtt_listen", self.mqtt_listen),
                ("mqtt_ws_listen", self.mqtt_ws_listen),
            ];
            if self.tls.is_some() {
                listeners.push(("mqtt_tls_listen", self.mqtt_tls_listen));
            }
            for (field, addr) in listeners {
                let Some(addr) = addr else { continue };
                if !addr.ip().is_loopback() {
                    return invalid(
                        field,
                        &format!(
                            "{addr} is not a loopback address, and authentication is off; \
                             turn it on (--auth true) or listen on loopback (127.0.0.1 or ::1)"
                        ),
                    );
                }
            }
        }
        if let Some((key, token)) = &self.admin_key {
            if key.is_empty() || key.len() > 64 || key.contains(':') {
                return invalid("admin_key", "must be 1 to 64 characters without ':'");
            }
            if token.len() < 18 {
                return invalid("admin_token", "must be at least 18 characters");
            }
        }
        let org_ok = !self.org_id.is_empty()
            && self.org_id.len() <= 36
            && self
                .org_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !org_ok {
            return invalid(
                "org_id",
                "must be 1 to 36 characters of A-Z, a-z, 0-9, '.', '_', '-'",
            );
        }
        for (field, max) in [
            ("rest_max_connections", self.rest_max_connections),
            ("grpc_max_connections", self.grpc_max_connections),
            ("mqtt_max_connections", self.mqtt_max_connections),
        ] {
            if max == 0 {
                return invalid(field, "must be at least 1");
            }
        }
        if self.mqtt_max_packet_size < 64 {
            return invalid("mqtt_max_packet_size", "must be at least 64 bytes");
        }
        if self.mqtt_max_inflight_messages == 0 {
            return invalid("mqtt_max_inflight_messages", "must be at least 1");
        }
        if self.mqtt_receive_maximum == 0 {
            return invalid("mqtt_receive_maximum", "must be at least 1");
        }
        if self.watch_buffer < 16 {
            return invalid("watch_buffer", "must be at least 16");
        }
        if self.max_batch_events == 0 {
            return invalid("max_batch_events", "must be at least 1");
        }
        if self.cache_mb == 0 {
            return invalid("cache_mb", "must be at least 1");
        }
        if self.initial_settings.log_max_entries_per_client == 0 {
            return invalid("log_max_entries_per_client", "must be at least 1");
        }
        for (i, source) in self.sources.iter().enumerate() {
            if self.sources[..i].iter().any(|s| s.name == source.name) {
                return Err(ConfigError::Source {
                    index: i + 1,
                    reason: format!(
                        "a second source named {:?}; give each source its own name",
                        source.name
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_layers_win_and_durations_parse() {
        let file = ConfigLayer {
            org_id: Some("fileorg".into()),
            activity_interval: Some("2s".into()),
            ..Default::default()
        };
        let flags = ConfigLayer {
            org_id: Some("flagorg".into()),
            ..Default::default()
        };
        let c = Config::from_layers([&file, &flags]).unwrap();
        assert_eq!(c.org_id, "flagorg");
        assert_eq!(c.activity_interval, Duration::from_secs(2));
    }

    #[test]
    fn refuses_an_open_listener_off_loopback() {
        let layer = ConfigLayer {
            grpc_listen: Some("0.0.0.0:50051".parse().unwrap()),
            ..Default::default()
        };
        let err = Config::from_layers([&layer]).unwrap_err().to_string();
        assert!(err.starts_with("--grpc-listen: "), "{err}");
        assert!(err.contains("loopback"), "{err}");
        let with_auth = ConfigLayer {
            auth: Some(true),
            ..layer
        };
        assert!(Config::from_layers([&with_auth]).is_ok());
    }

    #[test]
    fn an_admin_key_needs_a_long_token() {
        let layer = ConfigLayer {
            admin_key: Some("a-local-admin".into()),
            admin_token: Some("short".into()),
            ..Default::default()
        };
        let err = Config::from_layers([&layer]).unwrap_err().to_string();
        assert!(err.starts_with("--admin-token: "), "{err}");
    }

    #[test]
    fn refuses_bad_values_by_name() {
        let layer = ConfigLayer {
            activity_interval: Some("soon".into()),
            ..Default::default()
        };
        let err = Config::from_layers([&layer]).unwrap_err().to_string();
        assert!(err.starts_with("--activity-interval: "), "{err}");
    }

    #[test]
    fn reads_a_toml_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("connstate.toml");
        std::fs::write(&path, "org_id = \"acme\"\nwatch_buffer = 64\n").unwrap();
        let layer = ConfigLayer::from_file(&path).unwrap();
        let c = Config::from_layers([&layer]).unwrap();
        assert_eq!((c.org_id.as_str(), c.watch_buffer), ("acme", 64));
        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        assert!(ConfigLayer::from_file(&path).is_err());
    }

    /// The example file at the top of the repository parses, validates and
    /// states the true defaults; with its commented-out optional keys
    /// switched on, it sets every key there is.
    #[test]
    fn the_example_file_loads_and_names_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("connstate.example.toml");
        let layer = ConfigLayer::from_file(&path).unwrap();
        let config = Config::from_layers([&layer]).unwrap();
        assert_eq!(format!("{config:?}"), format!("{:?}", Config::default()));

        let text = std::fs::read_to_string(&path).unwrap();
        let all: String = text
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest == "[[source]]"
                        || rest
                            .split_once(" = ")
                            .is_some_and(|(k, _)| !k.contains(' ')) =>
                {
                    rest
                }
                _ => line,
            })
            .flat_map(|line| [line, "\n"])
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let all_path = dir.path().join("all.toml");
        std::fs::write(&all_path, all).unwrap();
        let mut layer = ConfigLayer::from_file(&all_path).unwrap();
        Config::from_layers([&layer]).unwrap();
        // A source table takes the keys of its kind: every key is set by
        // one table or another.
        let tables = layer.source.take().unwrap_or_default();
        assert!(tables.len() >= 2, "the example shows a source of each sort");
        let any = |f: fn(&SourceSpec) -> &Option<String>| tables.iter().find_map(|t| f(t).clone());
        layer.source = Some(vec![SourceSpec {
            name: any(|t| &t.name),
            kind: any(|t| &t.kind),
            url: any(|t| &t.url),
            username: any(|t| &t.username),
            password: any(|t| &t.password),
            lease: any(|t| &t.lease),
            keep_alive: any(|t| &t.keep_alive),
            secret: any(|t| &t.secret),
            ca_file: any(|t| &t.ca_file),
            cert_file: any(|t| &t.cert_file),
            key_file: any(|t| &t.key_file),
        }]);
        let unset = format!("{layer:?}");
        assert!(
            !unset.contains("None"),
            "keys missing from the example: {unset}"
        );
    }

    #[test]
    fn listen_addresses_take_localhost_and_off() {
        let parse = |t: &str| t.parse::<Listen>();
        assert_eq!(
            parse("localhost:8080"),
            Ok(Listen(Some(([127, 0, 0, 1], 8080).into())))
        );
        assert_eq!(parse("off"), Ok(Listen(None)));
        assert_eq!(
            parse("[::1]:0"),
            Ok(Listen(Some("[::1]:0".parse().unwrap())))
        );
        let err = parse("example.com:80").unwrap_err();
        assert!(err.contains("localhost:PORT, or off"), "{err}");
        let layer: ConfigLayer =
            toml::from_str("mqtt_ws_listen = \"off\"\ngrpc_listen = \"localhost:9\"\n").unwrap();
        let off = ConfigLayer {
            // Off and localhost listeners do not count against open mode.
            rest_listen: Some(Listen(None)),
            ..layer
        };
        let c = Config::from_layers([&off]).unwrap();
        assert_eq!(c.mqtt_ws_listen, None);
        assert_eq!(c.rest_listen, None);
        assert_eq!(c.grpc_listen, Some(([127, 0, 0, 1], 9).into()));
    }
}
