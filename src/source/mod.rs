//! Sources: connections from connstate to external brokers that turn the
//! brokers' own lifecycle signals into connstate events.
//!
//! Each source has its own broker name (the name of its connection-id space
//! and of its lease) and runs as one task: connect, follow, and on any
//! failure reconnect with backoff. While its upstream connection is healthy
//! (packets, or at least ping answers, within 1.5 × keepalive) it renews
//! its broker lease; when it is down or silent for longer than the lease,
//! the tracker records its connected clients as disconnected, naming it.
//! Its events go through [`Tracker::record`] like any other broker's.
//!
//! A source reports its state in the log, in `/metrics`
//! (`connstate_source_up`, `connstate_source_connections_total`,
//! `connstate_source_input_total`) and in gRPC health as the service
//! `connstate.source.{name}` (SERVING while connected).
//!
//! It must not write the store itself, nor hold a lock across an await.

pub mod aws;
pub mod emqx;
pub mod mosquitto;
pub mod payload;
pub mod upstream;
pub mod webhook;

use std::{fmt, sync::Arc, time::Duration};

use chrono::Utc;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    domain::{ClientId, ConnectionId, ConnectionStatus, DisconnectCause, truncate_to_millis},
    metrics::Metrics,
    store::Store,
    tracker::{MAX_LEASE, MIN_LEASE, Tracker},
};
use mosquitto::{Lines, Outcome, Recorded};
use upstream::{Endpoint, TlsFiles, Upstream, UpstreamError};

/// The lease of a source unless configured.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// The keepalive of a source's connection unless configured.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// First wait before reconnecting; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest wait for TCP connect and CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The kinds of broker a source can follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Mosquitto 2.x, through its log on `$SYS/broker/log/#`.
    Mosquitto,
    /// EMQX 5, through its `$SYS/brokers/+/clients/#` messages.
    Emqx,
    /// AWS IoT Core, through its `$aws/events/presence/...` messages.
    AwsIot,
    /// EMQX 5 rule engine / webhook payloads POSTed to `/sources/{name}`.
    EmqxWebhook,
    /// VerneMQ webhooks POSTed to `/sources/{name}`.
    VernemqWebhook,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Mosquitto => "mosquitto",
            SourceKind::Emqx => "emqx",
            SourceKind::AwsIot => "aws-iot",
            SourceKind::EmqxWebhook => "emqx-webhook",
            SourceKind::VernemqWebhook => "vernemq-webhook",
        }
    }

    /// Whether the broker calls connstate (rather than connstate it).
    pub fn is_webhook(self) -> bool {
        matches!(self, SourceKind::EmqxWebhook | SourceKind::VernemqWebhook)
    }
}

/// The shortest shared secret of a webhook source.
pub const MIN_SECRET_LEN: usize = 16;

/// A `[[source]]` table of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Broker name (1 to 64 characters, not "embedded") [default: the kind].
    pub name: Option<String>,
    /// `mosquitto`, `emqx`, `aws-iot`, `emqx-webhook` or `vernemq-webhook`.
    pub kind: Option<String>,
    /// `mqtt://[user[:password]@]host[:port]` (port 1883 by default), or
    /// `mqtts://...` for TLS (port 8883 by default).
    pub url: Option<String>,
    /// PEM file of the certificate authorities the broker's certificate
    /// must chain to (`mqtts://` only).
    pub ca_file: Option<String>,
    /// PEM file of the client certificate (chain) to present (`mqtts://`).
    pub cert_file: Option<String>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<String>,
    /// User name at the broker (instead of the URL's).
    pub username: Option<String>,
    /// Password at the broker (instead of the URL's).
    pub password: Option<String>,
    /// How long the source's clients stay connected while it cannot follow
    /// its broker, e.g. 60s.
    pub lease: Option<String>,
    /// Keepalive of the connection to the broker, e.g. 30s.
    pub keep_alive: Option<String>,
    /// The shared secret a webhook source's broker sends (at least 16
    /// characters).
    pub secret: Option<String>,
}

/// One validated source.
#[derive(Clone, PartialEq)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub lease: Duration,
    /// The lease as configured: a webhook source holds one only when
    /// configured, renewed by each call.
    pub configured_lease: Option<Duration>,
    pub keep_alive: Duration,
    pub secret: Option<String>,
    /// TLS to the broker (`mqtts://`), with the files it reads.
    pub tls: Option<TlsFiles>,
}

impl fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("lease", &self.lease)
            .field("configured_lease", &self.configured_lease)
            .field("keep_alive", &self.keep_alive)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// Whether TLS, host, port and credentials of
/// `mqtt[s]://[user[:password]@]host[:port]`.
type ParsedUrl = (bool, String, u16, Option<String>, Option<String>);

fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let (tls, rest) = match (url.strip_prefix("mqtt://"), url.strip_prefix("mqtts://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => {
            return Err(format!(
                "{url:?}: write mqtt://HOST:PORT or mqtts://HOST:PORT"
            ));
        }
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (user, host_port) = match rest.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, rest),
    };
    let (username, password) = match user {
        Some(u) => match u.split_once(':') {
            Some((name, pw)) => (Some(name.to_owned()), Some(pw.to_owned())),
            None => (Some(u.to_owned()), None),
        },
        None => (None, None),
    };
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let (host, rest) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed '['"))?;
        (host, rest.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!("{url:?}: write mqtt://HOST:PORT"));
    }
    let port = match port {
        None if tls => 8883,
        None => 1883,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{url:?}: {p:?} is not a port"))?,
    };
    Ok((tls, host.to_owned(), port, username, password))
}

fn duration(text: &str, field: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{field} {text:?} is not a duration ({e}); write e.g. 30s"))
}

impl SourceConfig {
    /// Validates a `[[source]]` table; the error says what is wrong with
    /// which key.
    pub fn from_spec(spec: &SourceSpec) -> Result<SourceConfig, String> {
        const KINDS: &str = "mosquitto, emqx, aws-iot, emqx-webhook or vernemq-webhook";
        let kind = match spec.kind.as_deref() {
            Some("mosquitto") => SourceKind::Mosquitto,
            Some("emqx") => SourceKind::Emqx,
            Some("aws-iot") => SourceKind::AwsIot,
            Some("emqx-webhook") => SourceKind::EmqxWebhook,
            Some("vernemq-webhook") => SourceKind::VernemqWebhook,
            Some(other) => return Err(format!("kind {other:?} is not known; write {KINDS}")),
            None => return Err(format!("kind is required ({KINDS})")),
        };
        let (tls, host, port, url_user, url_password) = if kind.is_webhook() {
            if spec.url.is_some() {
                return Err(format!(
                    "url is not taken by a {} source: its broker calls POST /sources/NAME",
                    kind.as_str()
                ));
            }
            match &spec.secret {
                Some(s) if s.len() >= MIN_SECRET_LEN => {}
                _ => {
                    return Err(format!(
                        "secret is required, at least {MIN_SECRET_LEN} characters"
                    ));
                }
            }
            (false, String::new(), 0, None, None)
        } else {
            if spec.secret.is_some() {
                return Err("secret is taken by webhook sources only".into());
            }
            let url = spec.url.as_deref().ok_or("url is required")?;
            parse_url(url).map_err(|e| format!("url {e}"))?
        };
        let tls = Self::tls_files(spec, kind, tls)?;
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| kind.as_str().to_owned());
        if name.trim() != name || name.is_empty() || name.len() > 64 {
            return Err(format!(
                "name {name:?} must be 1 to 64 characters without surrounding spaces"
            ));
        }
        if crate::domain::is_embedded_broker(&name) {
            return Err(
                "names \"embedded\" and \"embedded@NODE\" are reserved for the built-in broker"
                    .into(),
            );
        }
        let lease = match &spec.lease {
            Some(t) => duration(t, "lease")?,
            None => DEFAULT_LEASE,
        };
        if lease < MIN_LEASE || lease > MAX_LEASE {
            return Err(format!(
                "lease must be from {} to {}",
                humantime::format_duration(MIN_LEASE),
                humantime::format_duration(MAX_LEASE)
            ));
        }
        let keep_alive = match &spec.keep_alive {
            Some(t) => duration(t, "keep_alive")?,
            None => DEFAULT_KEEP_ALIVE,
        };
        if keep_alive < Duration::from_secs(1) || keep_alive > Duration::from_secs(65535) {
            return Err("keep_alive must be from 1s to 65535s".into());
        }
        Ok(SourceConfig {
            name,
            kind,
            host,
            port,
            username: spec.username.clone().or(url_user),
            password: spec.password.clone().or(url_password),
            lease,
            configured_lease: spec.lease.as_ref().map(|_| lease),
            keep_alive,
            secret: spec.secret.clone(),
            tls,
        })
    }

    /// The TLS files of a source (read when the server starts).
    fn tls_files(
        spec: &SourceSpec,
        kind: SourceKind,
        tls: bool,
    ) -> Result<Option<TlsFiles>, String> {
        if !tls {
            for (key, set) in [
                ("ca_file", &spec.ca_file),
                ("cert_file", &spec.cert_file),
                ("key_file", &spec.key_file),
            ] {
                if set.is_some() {
                    return Err(format!("{key} is taken with an mqtts:// url only"));
                }
            }
            if kind == SourceKind::AwsIot {
                return Err("url of an aws-iot source must be mqtts://ENDPOINT:8883".into());
            }
            return Ok(None);
        }
        let ca_file = spec
            .ca_file
            .as_ref()
            .ok_or("ca_file is required with an mqtts:// url")?;
        let client = match (&spec.cert_file, &spec.key_file) {
            (Some(cert), Some(key)) => Some((cert.into(), key.into())),
            (None, None) if kind == SourceKind::AwsIot => {
                return Err(
                    "cert_file and key_file are required: AWS IoT Core takes a client certificate"
                        .into(),
                );
            }
            (None, None) => None,
            (Some(_), None) => return Err("key_file is required with cert_file".into()),
            (None, Some(_)) => return Err("cert_file is required with key_file".into()),
        };
        let files = TlsFiles {
            ca_file: ca_file.into(),
            client,
        };
        Ok(Some(files))
    }

    /// The source of `--source-mosquitto URL`, named `mosquitto`.
    pub fn mosquitto(url: &str) -> Result<SourceConfig, String> {
        SourceConfig::from_spec(&SourceSpec {
            kind: Some("mosquitto".into()),
            url: Some(url.to_owned()),
            ..SourceSpec::default()
        })
    }

    /// The client id connstate uses at the broker.
    fn client_id(&self) -> String {
        format!("connstate-{}", self.name)
    }
}

/// The record of a client, read to find the connection a disconnect ends
/// when this source did not see the connect (connstate restarted).
pub(crate) struct StoreRecords<'a>(&'a Store);

impl Recorded for StoreRecords<'_> {
    fn connection_on(&self, client: &ClientId, broker: &str) -> Option<ConnectionId> {
        let state = self.0.get_state(client).ok()??;
        (state.broker == broker && state.status == ConnectionStatus::Connected)
            .then_some(state.connection_id)
    }
}

/// Starts every source; each runs until `stop`.
///
/// On a cluster node each source runs on one node at a time, the holder of
/// its cluster lock ([`crate::cluster::leader`]): two nodes following one
/// broker would report each of its events twice.
pub fn spawn_sources(
    sources: &[SourceConfig],
    tracker: &Tracker,
    store: &Store,
    health: &HealthReporter,
    stop: &CancellationToken,
    cluster: Option<&crate::cluster::Cluster>,
) -> Vec<tokio::task::JoinHandle<()>> {
    sources
        .iter()
        .filter(|config| !config.kind.is_webhook())
        .map(|config| {
            let (recorder, queue) = tokio::sync::mpsc::channel(RECORD_QUEUE);
            tokio::spawn(record_in_batches(
                config.name.clone(),
                tracker.clone(),
                store.clone(),
                queue,
            ));
            let source = Source {
                config: config.clone(),
                broker: Arc::from(config.name.as_str()),
                tracker: tracker.clone(),
                store: store.clone(),
                health: health.clone(),
                recorder,
            };
            let stop = stop.clone();
            match cluster {
                None => tokio::spawn(async move { source.run(stop).await }),
                Some(cluster) => {
                    let name = format!("source-{}", config.name);
                    tokio::spawn(crate::cluster::leader::run_while_leader(
                        cluster.clone(),
                        name,
                        stop,
                        move |held| source.clone().run(held),
                    ))
                }
            }
        })
        .collect()
}

/// Why following a broker ended.
enum Ended {
    Stopped,
    Lost(UpstreamError),
}

#[derive(Clone)]
struct Source {
    config: SourceConfig,
    broker: Arc<str>,
    tracker: Tracker,
    store: Store,
    health: HealthReporter,
    /// Events on their way to the tracker, in the broker's order.
    recorder: tokio::sync::mpsc::Sender<Queued>,
}

/// Commands a source's recorder holds at most: past it, reading from the
/// broker waits (TCP pushes back on the broker) rather than memory grow.
const RECORD_QUEUE: usize = 16 * 1024;

/// What a source hands its recorder.
enum Queued {
    Events(Vec<crate::domain::LifecycleEvent>),
    /// Answered once everything queued before it is recorded.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Records a source's events in the order the broker sent them, every
/// command waiting at the time in one call: a source that read a line and
/// waited for its group commit before reading the next followed about
/// 3,000 events/s; the store takes ten times that in groups.
async fn record_in_batches(
    name: String,
    tracker: Tracker,
    store: Store,
    mut queue: tokio::sync::mpsc::Receiver<Queued>,
) {
    let mut waiting = Vec::with_capacity(256);
    while queue.recv_many(&mut waiting, 4096).await > 0 {
        let mut events = Vec::new();
        let mut flushed = Vec::new();
        for item in waiting.drain(..) {
            match item {
                Queued::Events(e) => events.extend(e),
                Queued::Flush(done) => flushed.push(done),
            }
        }
        if !events.is_empty() {
            let count = events.len() as u64;
            if let Err(e) = tracker.record(events).await {
                store
                    .metrics()
                    .count_source_inputs(&name, "unrecorded", count);
                tracing::warn!(source = %name, error = %e, events = count, "source events not recorded");
            }
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

impl Source {
    fn metrics(&self) -> &Metrics {
        self.store.metrics()
    }

    async fn set_up(&self, up: bool) {
        self.metrics().set_source_up(&self.config.name, up);
        let status = if up {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.health
            .set_service_status(format!("connstate.source.{}", self.config.name), status)
            .await;
    }

    /// Connects, follows, reconnects with backoff, until `stop`.
    async fn run(self, stop: CancellationToken) {
        let name = self.config.name.clone();
        let mut endpoint = Endpoint {
            host: self.config.host.clone(),
            port: self.config.port,
            client_id: self.config.client_id(),
            username: self.config.username.clone(),
            password: self.config.password.clone(),
            keep_alive: self.config.keep_alive,
            tls: None,
        };
        let filters = match self.config.kind {
            SourceKind::Emqx => emqx::SYS_TOPICS,
            SourceKind::AwsIot => aws::PRESENCE_TOPICS,
            _ => mosquitto::LOG_TOPICS,
        };
        self.set_up(false).await;
        let mut lines = Lines::new(self.broker.clone(), endpoint.client_id.clone());
        let mut last_uptime = None;
        let mut backoff = MIN_BACKOFF;
        loop {
            // The TLS files are read again at each connect: a renewed
            // certificate is taken without a restart.
            let tls = self
                .config
                .tls
                .as_ref()
                .map(upstream::tls_config)
                .transpose();
            endpoint.tls = match tls {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::warn!(source = %name, error = %e, "source {name}: its TLS files cannot be read; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let connected = tokio::select! {
                c = Upstream::connect(&endpoint, filters, CONNECT_TIMEOUT) => c,
                _ = stop.cancelled() => break,
            };
            match connected {
                Ok(mut upstream) => {
                    tracing::info!(
                        source = %name,
                        broker = %format!("{}:{}", endpoint.host, endpoint.port),
                        "source {name} connected to its broker"
                    );
                    self.metrics().count_source_connection(&name);
                    self.set_up(true).await;
                    backoff = MIN_BACKOFF;
                    let ended = self
                        .follow(&mut upstream, &mut lines, &mut last_uptime, &stop)
                        .await;
                    self.set_up(false).await;
                    match ended {
                        Ended::Stopped => {
                            upstream.disconnect().await;
                            break;
                        }
                        Ended::Lost(e) => tracing::warn!(
                            source = %name,
                            error = %e,
                            lease_secs = self.config.lease.as_secs(),
                            "source {name} lost its broker; reconnecting (its clients stay as recorded until its lease lapses)"
                        ),
                    }
                }
                Err(e) => tracing::warn!(
                    source = %name,
                    error = %e,
                    retry_ms = backoff.as_millis() as u64,
                    "source {name} cannot connect to its broker; retrying"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => break,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        // What was read is recorded before the source reports it stopped.
        self.flush().await;
    }

    /// Follows one connection until it fails or `stop`.
    async fn follow(
        &self,
        upstream: &mut Upstream,
        lines: &mut Lines,
        last_uptime: &mut Option<u64>,
        stop: &CancellationToken,
    ) -> Ended {
        let keep_alive = self.config.keep_alive;
        let silent_after = keep_alive * 3 / 2;
        let tick = (keep_alive / 2).min(self.config.lease / 3);
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = upstream.next() => match message {
                    Ok((topic, payload)) => {
                        self.handle(&topic, &payload, lines, last_uptime).await;
                    }
                    Err(e) => return Ended::Lost(e),
                },
                _ = ticker.tick() => {
                    if upstream.last_received.elapsed() > silent_after {
                        return Ended::Lost(UpstreamError::Silent(silent_after));
                    }
                    if let Err(e) = self.tracker.renew_lease(&self.config.name, self.config.lease).await {
                        tracing::warn!(source = %self.config.name, error = %e, "renewing the source's lease failed");
                    }
                    if let Err(e) = upstream.ping().await {
                        return Ended::Lost(e);
                    }
                }
                _ = stop.cancelled() => return Ended::Stopped,
            }
        }
    }

    /// One message from the broker.
    async fn handle(
        &self,
        topic: &str,
        payload: &[u8],
        lines: &mut Lines,
        last_uptime: &mut Option<u64>,
    ) {
        let name = &self.config.name;
        let Ok(text) = std::str::from_utf8(payload) else {
            self.metrics().count_source_input(name, "bad");
            tracing::warn!(source = %name, topic, "source message is not UTF-8; ignored");
            return;
        };
        match self.config.kind {
            SourceKind::Emqx => return self.handle_emqx(topic, text).await,
            SourceKind::AwsIot => return self.handle_aws(topic, text).await,
            _ => {}
        }
        if topic == mosquitto::UPTIME_TOPIC {
            let Some(uptime) = mosquitto::parse_uptime(text) else {
                self.metrics().count_source_input(name, "bad");
                tracing::warn!(source = %name, payload = text, "unreadable broker uptime; ignored");
                return;
            };
            if let Some(before) = last_uptime.replace(uptime)
                && uptime < before
            {
                self.broker_restarted(lines, before, uptime).await;
            }
            return;
        }
        // Subscribe and unsubscribe lines ($SYS/broker/log/M/...) are not
        // lifecycle lines.
        if topic.starts_with("$SYS/broker/log/M/") {
            self.metrics().count_source_input(name, "ignored");
            return;
        }
        let now = truncate_to_millis(Utc::now());
        match lines.apply(text, now, &StoreRecords(&self.store)) {
            Ok(Outcome::Events(events)) if events.is_empty() => {
                self.metrics().count_source_input(name, "event");
            }
            Ok(Outcome::Events(events)) => {
                self.metrics().count_source_input(name, "event");
                self.queue(events).await;
            }
            Ok(Outcome::Unattributed) => {
                self.metrics().count_source_input(name, "unattributed");
                tracing::info!(
                    source = %name,
                    line = text,
                    "source {name}: a connect was refused, and the broker does not say which client's"
                );
            }
            Ok(Outcome::Unmatched) => {
                self.metrics().count_source_input(name, "unmatched");
                tracing::debug!(source = %name, line = text, "source line about a connection not followed; ignored");
            }
            Ok(Outcome::Ignored) => self.metrics().count_source_input(name, "ignored"),
            Err(e) => {
                self.metrics().count_source_input(name, "bad");
                tracing::warn!(source = %name, error = %e, "source line ignored");
            }
        }
    }

    /// One `$SYS` message of EMQX.
    async fn handle_emqx(&self, topic: &str, text: &str) {
        let name = &self.config.name;
        let Some((kind, client)) = emqx::sys_topic(topic) else {
            self.metrics().count_source_input(name, "ignored");
            return;
        };
        let event = serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| payload::Invalid::new("body", format!("is not JSON ({e})")))
            .and_then(|v| {
                let now = truncate_to_millis(Utc::now());
                emqx::sys_event(
                    kind,
                    client,
                    &v,
                    &self.broker,
                    now,
                    &StoreRecords(&self.store),
                )
            });
        self.record(topic, text, event).await;
    }

    /// One presence message of AWS IoT Core.
    async fn handle_aws(&self, topic: &str, text: &str) {
        let Some((connected, client)) = aws::presence_topic(topic) else {
            self.metrics()
                .count_source_input(&self.config.name, "ignored");
            return;
        };
        let event = serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| payload::Invalid::new("body", format!("is not JSON ({e})")))
            .and_then(|v| {
                let now = truncate_to_millis(Utc::now());
                aws::event(connected, client, &v, &self.broker, now).map(Some)
            });
        self.record(topic, text, event).await;
    }

    /// Records what a message of a JSON-speaking broker became, counting
    /// and logging what is not recorded.
    async fn record(
        &self,
        topic: &str,
        text: &str,
        event: Result<Option<crate::domain::LifecycleEvent>, payload::Invalid>,
    ) {
        let name = &self.config.name;
        match event {
            Ok(Some(event)) => {
                self.metrics().count_source_input(name, "event");
                self.queue(vec![event]).await;
            }
            Ok(None) => {
                self.metrics().count_source_input(name, "unmatched");
                tracing::debug!(source = %name, topic, "source message about a connection not followed; ignored");
            }
            Err(e) => {
                self.metrics().count_source_input(name, "bad");
                let payload: String = text.chars().take(200).collect();
                tracing::warn!(source = %name, error = %e, topic, payload, "source message ignored");
            }
        }
    }

    /// Hands events to the recorder (waiting while it is far behind).
    async fn queue(&self, events: Vec<crate::domain::LifecycleEvent>) {
        // The recorder lives as long as the sources' runtime.
        let _ = self.recorder.send(Queued::Events(events)).await;
    }

    /// Returns once every event queued so far is recorded.
    async fn flush(&self) {
        let (done, flushed) = tokio::sync::oneshot::channel();
        if self.recorder.send(Queued::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
    }

    /// The broker's uptime fell: it restarted, and every connection it had
    /// ended with it.
    async fn broker_restarted(&self, lines: &mut Lines, before: u64, uptime: u64) {
        let name = &self.config.name;
        // The connects it read before are recorded first, so that they end.
        self.flush().await;
        lines.forget_connections();
        self.metrics().count_source_restart(name);
        match self
            .tracker
            .end_clients_of(
                name,
                DisconnectCause::BrokerRestarted {
                    broker: name.clone(),
                },
            )
            .await
        {
            Ok(clients) => tracing::warn!(
                source = %name,
                clients,
                uptime_before = before,
                uptime,
                "the broker of source {name} restarted; its connected clients are recorded as disconnected by the server"
            ),
            Err(e) => tracing::warn!(
                source = %name,
                error = %e,
                "the broker of source {name} restarted; recording its clients as disconnected failed"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_specs_validate_by_key() {
        let c = SourceConfig::mosquitto("mqtt://u:p@broker.example:1884").unwrap();
        assert_eq!(
            (c.name.as_str(), c.host.as_str(), c.port),
            ("mosquitto", "broker.example", 1884)
        );
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("u"), Some("p"))
        );
        assert!(!format!("{c:?}").contains("\"p\""), "password in Debug");
        let c = SourceConfig::mosquitto("mqtt://[::1]").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 1883));
        for (spec, words) in [
            (
                SourceSpec {
                    kind: Some("mosquitto".into()),
                    url: Some("http://x".into()),
                    ..Default::default()
                },
                "url",
            ),
            (
                SourceSpec {
                    kind: Some("hivemq".into()),
                    url: Some("mqtt://x".into()),
                    ..Default::default()
                },
                "kind",
            ),
            (
                SourceSpec {
                    kind: Some("mosquitto".into()),
                    url: Some("mqtt://x:0".into()),
                    ..Default::default()
                },
                "port",
            ),
            (
                SourceSpec {
                    kind: Some("mosquitto".into()),
                    url: Some("mqtt://x".into()),
                    name: Some("embedded".into()),
                    ..Default::default()
                },
                "reserved",
            ),
            (
                SourceSpec {
                    kind: Some("mosquitto".into()),
                    url: Some("mqtt://x".into()),
                    lease: Some("100ms".into()),
                    ..Default::default()
                },
                "lease",
            ),
        ] {
            let err = SourceConfig::from_spec(&spec).unwrap_err();
            assert!(err.contains(words), "{err}");
        }
    }
}
