//! Webhook sources: brokers that POST their lifecycle events to connstate
//! (EMQX 5 rule engine / webhooks, VerneMQ webhooks). The REST gateway
//! serves them at `POST /sources/{name}`; this module checks the shared
//! secret and turns a payload into events for the tracker.
//!
//! Bad input (a wrong secret, a payload that is not what the broker
//! documents) is refused, logged and counted
//! (`connstate_source_input_total{outcome="bad"}`), never recorded.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::Utc;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use super::payload::Invalid;
use super::{SourceConfig, SourceKind, StoreRecords, emqx, mosquitto::Recorded};
use crate::{
    domain::{
        ClientId, ConnectionId, ConnectionInfo, DisconnectCause, EventKind, LifecycleEvent,
        truncate_to_millis,
    },
    store::{Store, StoreError},
    tracker::Tracker,
};

/// Why a webhook call was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a webhook call did.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Events recorded (how many).
    Recorded(usize),
    /// A disconnect of a connection this source never saw: nothing to
    /// record.
    Unmatched,
}

/// The webhook sources, by name.
#[derive(Clone, Default)]
pub struct WebhookSources(Arc<HashMap<String, Arc<WebhookSource>>>);

impl WebhookSources {
    pub fn new(sources: &[SourceConfig], tracker: &Tracker, store: &Store) -> WebhookSources {
        let map = sources
            .iter()
            .filter(|s| s.kind.is_webhook())
            .map(|s| {
                let source = WebhookSource {
                    name: s.name.clone(),
                    broker: Arc::from(s.name.as_str()),
                    kind: s.kind,
                    secret: Sha256::digest(s.secret.as_deref().unwrap_or_default().as_bytes())
                        .into(),
                    lease: s.configured_lease,
                    tracker: tracker.clone(),
                    store: store.clone(),
                    connections: Mutex::default(),
                };
                (s.name.clone(), Arc::new(source))
            })
            .collect();
        WebhookSources(Arc::new(map))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<WebhookSource>> {
        self.0.get(name)
    }
}

/// The connections of a broker that does not number them (VerneMQ).
#[derive(Default)]
struct Connections {
    current: HashMap<ClientId, ConnectionId>,
    last_id: ConnectionId,
}

/// One webhook source.
pub struct WebhookSource {
    name: String,
    broker: Arc<str>,
    kind: SourceKind,
    secret: [u8; 32],
    lease: Option<Duration>,
    tracker: Tracker,
    store: Store,
    connections: Mutex<Connections>,
}

impl WebhookSource {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `given` is the shared secret, compared in constant time (of
    /// the digests, so that the length of the secret does not show either).
    pub fn is_secret(&self, given: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        given.ct_eq(&self.secret).into()
    }

    /// Counts a call refused at the door (wrong secret, not JSON).
    pub fn count_bad(&self) {
        self.store.metrics().count_source_input(&self.name, "bad");
    }

    /// Records what one call reports. `hook` is the `vernemq-hook` header.
    pub async fn receive(
        &self,
        hook: Option<&str>,
        body: &Value,
    ) -> Result<Received, WebhookError> {
        let metrics = self.store.metrics();
        let now = truncate_to_millis(Utc::now());
        let events = match self.kind {
            SourceKind::EmqxWebhook => body
                .get("event")
                .and_then(Value::as_str)
                .ok_or_else(|| Invalid::new("event", "is required (a string)"))
                .and_then(|kind| emqx::event(kind, body, &self.broker, now))
                .map(|e| Some(vec![e])),
            SourceKind::VernemqWebhook => self.vernemq(hook, body, now),
            SourceKind::Mosquitto | SourceKind::Emqx | SourceKind::AwsIot => {
                Err(Invalid::new("name", "is not a webhook source"))
            }
        };
        let events = match events {
            Ok(Some(events)) => events,
            Ok(None) => {
                metrics.count_source_input(&self.name, "unmatched");
                return Ok(Received::Unmatched);
            }
            Err(e) => {
                metrics.count_source_input(&self.name, "bad");
                tracing::warn!(source = %self.name, error = %e, "webhook payload refused");
                return Err(e.into());
            }
        };
        metrics.count_source_input(&self.name, "event");
        let count = events.len();
        if let Err(e) = self.tracker.record(events).await {
            metrics.count_source_input(&self.name, "unrecorded");
            return Err(e.into());
        }
        if let Some(lease) = self.lease {
            self.tracker.renew_lease(&self.name, lease).await?;
        }
        Ok(Received::Recorded(count))
    }

    /// VerneMQ's `on_register` (and `on_register_m5`), `on_client_offline`
    /// and `on_client_gone`. VerneMQ does not number connections: each
    /// register gets a new id here, and offline/gone end the current one.
    /// `None`: an offline/gone of a client not connected through this
    /// source (a duplicate).
    fn vernemq(
        &self,
        hook: Option<&str>,
        body: &Value,
        now: crate::domain::Timestamp,
    ) -> Result<Option<Vec<LifecycleEvent>>, Invalid> {
        if !body.is_object() {
            return Err(Invalid::new("body", "must be a JSON object"));
        }
        let hook = hook.ok_or_else(|| Invalid::new("vernemq-hook", "header is required"))?;
        let client = match body.get("client_id") {
            Some(Value::String(id)) => {
                ClientId::new(id.as_str()).map_err(|e| Invalid::new("client_id", e.to_string()))?
            }
            Some(_) => return Err(Invalid::new("client_id", "must be a string")),
            None => return Err(Invalid::new("client_id", "is required")),
        };
        let event = |connection_id, kind| LifecycleEvent {
            client_id: client.clone(),
            time: now,
            connection_id,
            broker: self.broker.clone(),
            kind,
            peer: None,
        };
        match hook {
            "on_register" | "on_register_m5" => {
                let addr = body
                    .get("peer_addr")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Invalid::new("peer_addr", "is required (a string)"))?
                    .parse()
                    .map_err(|_| Invalid::new("peer_addr", "must be an IP address"))?;
                let port = body
                    .get("peer_port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(|| Invalid::new("peer_port", "must be a port number"))?;
                let username = match body.get("username") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(u)) => u.clone(),
                    Some(_) => return Err(Invalid::new("username", "must be a string")),
                };
                let mut connections = self.connections.lock().expect("connections lock");
                let micros = u64::try_from(now.timestamp_micros()).unwrap_or(0);
                connections.last_id = micros.max(connections.last_id + 1);
                let id = connections.last_id;
                connections.current.insert(client.clone(), id);
                Ok(Some(vec![event(
                    id,
                    EventKind::Connected(ConnectionInfo {
                        addr,
                        port,
                        secure: false,
                        username,
                        protocol: (hook == "on_register_m5")
                            .then_some(crate::domain::MqttProtocol::V5_0),
                        keep_alive: 0,
                        clean_session: true,
                    }),
                )]))
            }
            "on_client_offline" | "on_client_gone" => {
                let current = self
                    .connections
                    .lock()
                    .expect("connections lock")
                    .current
                    .remove(&client);
                let id = current
                    .or_else(|| StoreRecords(&self.store).connection_on(&client, &self.broker));
                Ok(id.map(|id| {
                    vec![event(
                        id,
                        EventKind::Disconnected(DisconnectCause::SocketClosed),
                    )]
                }))
            }
            other => Err(Invalid::new(
                "vernemq-hook",
                format!(
                    "{other:?} is not taken: on_register, on_register_m5, on_client_offline or on_client_gone"
                ),
            )),
        }
    }
}
