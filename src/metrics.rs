//! Operational metrics in the Prometheus (OpenMetrics) text format, served
//! by the REST gateway at `/metrics`.
//!
//! One [`Metrics`] per store: the writer counts what it commits, the
//! tracker what it is given, watches count themselves.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::domain::{ClientType, DisconnectInitiator, ReasonCode};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub client_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DisconnectLabels {
    pub initiator: &'static str,
    /// `0x8D`, or `none` when the socket simply closed.
    pub reason_code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub reason_code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// `grpc`, `rest`, `mqtt`, `mqtt-tls` or `mqtt-ws`.
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// The source's broker name.
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceInputLabels {
    pub source: String,
    /// `event`, `ignored`, `unmatched`, `unattributed`, `bad` or
    /// `unrecorded`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FormatLabel {
    /// `protobuf` (gRPC watch streams) or `json` (Server-Sent Events).
    pub format: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLossLabel {
    /// Why a message between cluster nodes was lost: `outbox_full`,
    /// `too_large`, `publish_failed`, `undecodable`, `retained_write_failed`,
    /// `node_lost` (queued on a node that died).
    pub reason: &'static str,
}

/// Every metric of the service.
pub struct Metrics {
    registry: Registry,
    pub connected_clients: Family<TypeLabel, Gauge>,
    pub connects: Counter,
    pub failed_connects: Family<FailureLabels, Counter>,
    pub disconnects: Family<DisconnectLabels, Counter>,
    pub events_ingested: Counter,
    pub batch_events: Histogram,
    pub commit_seconds: Histogram,
    /// Set when the metrics are read (see [`crate::store::Store::write_back_pending`]).
    pub store_write_back_pending: Gauge,
    pub watchers: Gauge,
    pub watchers_dropped: Counter,
    pub watch_changes_encoded: Family<FormatLabel, Counter>,
    pub mqtt_connections: Gauge,
    pub mqtt_received_messages: Counter,
    pub mqtt_sent_messages: Counter,
    pub mqtt_received_bytes: Counter,
    pub mqtt_sent_bytes: Counter,
    pub mqtt_dropped_messages: Counter,
    pub mqtt_denied_publishes: Counter,
    pub mqtt_denied_subscriptions: Counter,
    pub connections_refused: Family<ListenerLabel, Counter>,
    pub accept_failures: Family<ListenerLabel, Counter>,
    pub source_up: Family<SourceLabel, Gauge>,
    pub source_connections: Family<SourceLabel, Counter>,
    pub source_restarts: Family<SourceLabel, Counter>,
    pub source_input: Family<SourceInputLabels, Counter>,
    /// A cluster node's place in its cluster (0 outside a cluster).
    pub cluster_nats_connected: Gauge,
    pub cluster_joined: Gauge,
    pub cluster_lease_held: Gauge,
    pub cluster_applied_sequence: Gauge,
    pub cluster_stream_sequence: Gauge,
    pub cluster_lag_messages: Gauge,
    pub cluster_append_failures: Counter,
    pub cluster_routed_sent: Counter,
    pub cluster_routed_received: Counter,
    pub cluster_routed_lost: Family<RouteLossLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("connstate");
        let connected_clients = Family::<TypeLabel, Gauge>::default();
        registry.register(
            "connected_clients",
            "Clients connected now, by client type",
            connected_clients.clone(),
        );
        let connects = Counter::default();
        registry.register("connects", "Connections accepted", connects.clone());
        let failed_connects = Family::<FailureLabels, Counter>::default();
        registry.register(
            "failed_connects",
            "Connection attempts refused, by CONNACK reason code",
            failed_connects.clone(),
        );
        let disconnects = Family::<DisconnectLabels, Counter>::default();
        registry.register(
            "disconnects",
            "Connections ended, by initiator and MQTT 5 reason code",
            disconnects.clone(),
        );
        let events_ingested = Counter::default();
        registry.register(
            "events_ingested",
            "Lifecycle events received by the tracker",
            events_ingested.clone(),
        );
        let batch_events = Histogram::new([1.0, 10.0, 100.0, 1000.0, 4000.0, 16000.0]);
        registry.register(
            "store_batch_changes",
            "Changes per group commit",
            batch_events.clone(),
        );
        let commit_seconds = Histogram::new([0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]);
        registry.register(
            "store_commit_seconds",
            "Time to apply and flush one group commit",
            commit_seconds.clone(),
        );
        let watchers = Gauge::default();
        registry.register("watchers", "Open watch streams", watchers.clone());
        let watchers_dropped = Counter::default();
        registry.register(
            "watchers_dropped",
            "Watch streams ended for falling behind the live feed",
            watchers_dropped.clone(),
        );
        let watch_changes_encoded = Family::<FormatLabel, Counter>::default();
        registry.register(
            "watch_changes_encoded",
            "Changes encoded for watch streams, by format: once per change, however many streams send it",
            watch_changes_encoded.clone(),
        );
        let mqtt_connections = Gauge::default();
        registry.register(
            "mqtt_connections",
            "Network connections open on the embedded MQTT broker",
            mqtt_connections.clone(),
        );
        let mqtt_received_messages = Counter::default();
        registry.register(
            "mqtt_received_messages",
            "PUBLISH packets received by the embedded broker",
            mqtt_received_messages.clone(),
        );
        let mqtt_sent_messages = Counter::default();
        registry.register(
            "mqtt_sent_messages",
            "PUBLISH packets sent by the embedded broker",
            mqtt_sent_messages.clone(),
        );
        let mqtt_received_bytes = Counter::default();
        registry.register(
            "mqtt_received_bytes",
            "Bytes received by the embedded broker",
            mqtt_received_bytes.clone(),
        );
        let mqtt_sent_bytes = Counter::default();
        registry.register(
            "mqtt_sent_bytes",
            "Bytes sent by the embedded broker",
            mqtt_sent_bytes.clone(),
        );
        let mqtt_dropped_messages = Counter::default();
        registry.register(
            "mqtt_dropped_messages",
            "Messages dropped for clients that could not take them (queue full)",
            mqtt_dropped_messages.clone(),
        );
        let mqtt_denied_publishes = Counter::default();
        registry.register(
            "mqtt_denied_publishes",
            "PUBLISH packets refused by the platform's topic rules or the access rules file",
            mqtt_denied_publishes.clone(),
        );
        let mqtt_denied_subscriptions = Counter::default();
        registry.register(
            "mqtt_denied_subscriptions",
            "SUBSCRIBE filters refused by the platform's topic rules or the access rules file",
            mqtt_denied_subscriptions.clone(),
        );
        let connections_refused = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed on arrival because their listener was at its cap",
            connections_refused.clone(),
        );
        let accept_failures = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "accept_failures",
            "Accepts that failed for want of resources (file descriptors, memory); the listener backs off",
            accept_failures.clone(),
        );
        let source_up = Family::<SourceLabel, Gauge>::default();
        registry.register(
            "source_up",
            "1 while a source is connected to its broker, 0 otherwise",
            source_up.clone(),
        );
        let source_connections = Family::<SourceLabel, Counter>::default();
        registry.register(
            "source_connections",
            "Connections a source made to its broker (the first and every reconnect)",
            source_connections.clone(),
        );
        let source_restarts = Family::<SourceLabel, Counter>::default();
        registry.register(
            "source_broker_restarts",
            "Restarts of a source's broker that the source noticed",
            source_restarts.clone(),
        );
        let source_input = Family::<SourceInputLabels, Counter>::default();
        registry.register(
            "source_input",
            "Messages a source received, by what became of them (bad: unreadable, logged; unattributed: a failed connect the broker names no client for)",
            source_input.clone(),
        );
        let cluster_nats_connected = Gauge::default();
        registry.register(
            "cluster_nats_connected",
            "1 while this cluster node is connected to NATS",
            cluster_nats_connected.clone(),
        );
        let cluster_joined = Gauge::default();
        registry.register(
            "cluster_joined",
            "1 while this node's run is started in its cluster (not fenced off)",
            cluster_joined.clone(),
        );
        let cluster_lease_held = Gauge::default();
        registry.register(
            "cluster_lease_held",
            "1 while this node's last lease renewal succeeded",
            cluster_lease_held.clone(),
        );
        let cluster_applied_sequence = Gauge::default();
        registry.register(
            "cluster_applied_sequence",
            "The newest message of the cluster's log applied on this node",
            cluster_applied_sequence.clone(),
        );
        let cluster_stream_sequence = Gauge::default();
        registry.register(
            "cluster_stream_sequence",
            "The newest message of the cluster's log known to this node",
            cluster_stream_sequence.clone(),
        );
        let store_write_back_pending = Gauge::default();
        registry.register(
            "store_write_back_pending",
            "Committed changes not yet written back to the state records and logs (what a crash restart replays)",
            store_write_back_pending.clone(),
        );
        let cluster_lag_messages = Gauge::default();
        registry.register(
            "cluster_lag_messages",
            "Messages of the cluster's log not yet applied on this node",
            cluster_lag_messages.clone(),
        );
        let cluster_append_failures = Counter::default();
        registry.register(
            "cluster_append_failures",
            "Messages the cluster's log did not take after every retry (their writes were refused)",
            cluster_append_failures.clone(),
        );
        let cluster_routed_sent = Counter::default();
        registry.register(
            "cluster_routed_sent",
            "MQTT messages this node's clients published that went to the other nodes (once each)",
            cluster_routed_sent.clone(),
        );
        let cluster_routed_received = Counter::default();
        registry.register(
            "cluster_routed_received",
            "MQTT messages from other nodes' clients received for subscriptions here",
            cluster_routed_received.clone(),
        );
        let cluster_routed_lost = Family::<RouteLossLabel, Counter>::default();
        registry.register(
            "cluster_routed_lost",
            "MQTT messages between cluster nodes that were lost, by reason",
            cluster_routed_lost.clone(),
        );
        Metrics {
            registry,
            cluster_routed_sent,
            cluster_routed_received,
            cluster_routed_lost,
            cluster_nats_connected,
            cluster_joined,
            cluster_lease_held,
            cluster_applied_sequence,
            cluster_stream_sequence,
            cluster_lag_messages,
            store_write_back_pending,
            cluster_append_failures,
            source_up,
            source_connections,
            source_restarts,
            source_input,
            connections_refused,
            accept_failures,
            mqtt_connections,
            mqtt_received_messages,
            mqtt_sent_messages,
            mqtt_received_bytes,
            mqtt_sent_bytes,
            mqtt_dropped_messages,
            mqtt_denied_publishes,
            mqtt_denied_subscriptions,
            connected_clients,
            connects,
            failed_connects,
            disconnects,
            events_ingested,
            batch_events,
            commit_seconds,
            watchers,
            watchers_dropped,
            watch_changes_encoded,
        }
    }
}

impl Metrics {
    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn count_disconnect(&self, initiator: DisconnectInitiator, code: Option<ReasonCode>) {
        self.disconnects
            .get_or_create(&DisconnectLabels {
                initiator: initiator.as_str(),
                reason_code: code.map_or_else(|| "none".to_owned(), |c| c.to_string()),
            })
            .inc();
    }

    pub fn count_failed_connect(&self, code: Option<ReasonCode>) {
        self.failed_connects
            .get_or_create(&FailureLabels {
                reason_code: code.map_or_else(|| "none".to_owned(), |c| c.to_string()),
            })
            .inc();
    }

    pub fn set_source_up(&self, source: &str, up: bool) {
        self.source_up
            .get_or_create(&SourceLabel {
                source: source.to_owned(),
            })
            .set(i64::from(up));
    }

    pub fn count_source_connection(&self, source: &str) {
        self.source_connections
            .get_or_create(&SourceLabel {
                source: source.to_owned(),
            })
            .inc();
    }

    pub fn count_source_restart(&self, source: &str) {
        self.source_restarts
            .get_or_create(&SourceLabel {
                source: source.to_owned(),
            })
            .inc();
    }

    pub fn count_source_input(&self, source: &str, outcome: &'static str) {
        self.count_source_inputs(source, outcome, 1);
    }

    pub fn count_source_inputs(&self, source: &str, outcome: &'static str, n: u64) {
        self.source_input
            .get_or_create(&SourceInputLabels {
                source: source.to_owned(),
                outcome,
            })
            .inc_by(n);
    }

    /// Moves one client between the connected counts.
    pub fn add_connected(&self, client_type: ClientType, delta: i64) {
        self.connected_clients
            .get_or_create(&TypeLabel {
                client_type: client_type.as_str(),
            })
            .inc_by(delta);
    }
}
