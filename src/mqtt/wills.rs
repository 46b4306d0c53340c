//! Wills that survive their node.
//!
//! While a client with a will is connected to a cluster node, its will is
//! kept in the cluster's bucket of wills under `{node}.{client}`. The node
//! handles its own clients' wills as a single broker does, and then
//! removes the record. When a node is lost, the survivor that recorded the
//! loss (whose `NodeLost` the log applied) looks at the lost node's
//! records: for each one whose connection the cluster recorded as ended,
//! it deletes the record (a compare-and-delete on its revision, so that a
//! record is claimed once even if two nodes looked) and publishes the will:
//! at once, or after
//! what is left of its delay (the will delay capped by the session expiry,
//! counted from the recorded disconnect), unless the client connected
//! again meanwhile (anywhere in the cluster: the shared state tells). A
//! node restarted before its loss was noticed does the same for the
//! records of its earlier runs.
//!
//! A will is lost when its node dies before the record was written (right
//! after the CONNACK), and a delayed will when the survivor that claimed it
//! dies too before the delay ends.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::kv;
use prost::Message as _;
use tokio_stream::StreamExt as _;

use super::{
    Broker, Due, Message, PendingWill,
    expiry::Timer,
    routes::{Routed, Routes},
    subject,
};
use crate::domain::{ClientId, ConnectionStatus};

/// A will as the bucket keeps it.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StoredWill {
    /// The client's record in the store.
    #[prost(string, tag = "1")]
    record_id: String,
    #[prost(uint64, tag = "2")]
    connection_id: u64,
    /// The will delay, already capped by the session expiry.
    #[prost(uint32, tag = "3")]
    delay_secs: u32,
    #[prost(string, tag = "4")]
    topic: String,
    #[prost(message, optional, tag = "5")]
    message: Option<Routed>,
}

fn will_key(node: &str, client_id: &str) -> String {
    format!("{node}.{}", subject::name_token(client_id))
}

impl Routes {
    /// Keeps the will of `client_id`'s connection `connection_id` in the
    /// bucket while it is connected here.
    pub(crate) fn hold_will(
        &self,
        client_id: &str,
        record_id: &ClientId,
        connection_id: u64,
        will: &Message,
        delay_secs: u32,
    ) {
        let stored = StoredWill {
            record_id: record_id.as_str().to_owned(),
            connection_id,
            delay_secs,
            topic: will.topic.to_string(),
            message: Some(Routed::of(will, &self.node)),
        };
        let key = will_key(&self.node, client_id);
        let _ = self.wills_outbox.send((key, Some(stored.encode_to_vec())));
    }

    /// Removes the will this node keeps for `client_id`.
    pub(crate) fn drop_will(&self, client_id: &str) {
        let key = will_key(&self.node, client_id);
        let _ = self.wills_outbox.send((key, None));
    }

    /// Node `node` was lost (or restarted): the wills of its ended
    /// connections go out from here, if this node claims them first.
    /// Several notices while a look is on its way make one more look.
    pub(crate) fn node_lost(self: &Arc<Self>, node: &str) {
        if !crate::lock::lock(&self.sweeping).insert(node.to_owned()) {
            return;
        }
        let routes = self.clone();
        let node = node.to_owned();
        tokio::spawn(async move {
            // Records still connected here are of connections whose loss is
            // not applied here yet: looked at again.
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                crate::lock::lock(&routes.sweeping).remove(&node);
                match routes.sweep(&node).await {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, %node, "looking for the wills of a lost node failed");
                    }
                }
                if routes.stop.is_cancelled()
                    || !crate::lock::lock(&routes.sweeping).insert(node.clone())
                {
                    return;
                }
            }
            crate::lock::lock(&routes.sweeping).remove(&node);
        });
    }

    /// Claims and publishes the wills of `node`'s ended connections;
    /// returns how many records are of connections still connected as far
    /// as this node knows.
    async fn sweep(&self, node: &str) -> Result<usize, String> {
        let Some(broker) = self.broker.upgrade().map(|inner| Broker { inner }) else {
            return Ok(0);
        };
        let prefix = format!("{node}.");
        let mut keys = self.wills.keys().await.map_err(|e| e.to_string())?;
        let mut mine = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| e.to_string())?;
            if key.starts_with(&prefix) {
                mine.push(key);
            }
        }
        let broker_name = crate::domain::node_broker(node);
        let (mut published, mut scheduled, mut connected) = (0, 0, 0);
        for key in mine {
            let Some(entry) = self.wills.entry(&key).await.map_err(|e| e.to_string())? else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let Ok(stored) = StoredWill::decode(entry.value.clone()) else {
                self.lost("undecodable");
                continue;
            };
            let Ok(record_id) = ClientId::new(&stored.record_id) else {
                continue;
            };
            let state = broker.inner.store.get_state(&record_id).ok().flatten();
            let Some(state) = state else { continue };
            let same_connection =
                state.broker == broker_name && state.connection_id == stored.connection_id;
            if same_connection && state.status == ConnectionStatus::Connected {
                // Still connected as far as this node knows.
                connected += 1;
                continue;
            }
            // One survivor wins the record.
            if self
                .wills
                .delete_expect_revision(&key, Some(entry.revision))
                .await
                .is_err()
            {
                continue;
            }
            // A newer connection of the client: its will is void.
            if !same_connection {
                continue;
            }
            let Some(message) = stored
                .message
                .and_then(|routed| routed.into_message(stored.topic.clone(), false))
            else {
                continue;
            };
            let since_end = state
                .last_disconnect_time()
                .map_or(0, |t| (chrono::Utc::now() - t).num_seconds().max(0));
            let left = i64::from(stored.delay_secs) - since_end;
            let pending = PendingWill {
                message,
                record_id,
                connection_id: stored.connection_id,
                broker: Arc::from(broker_name.as_str()),
            };
            if left <= 0 {
                published += 1;
                broker.publish(pending.message);
            } else {
                scheduled += 1;
                // Generation 0: any connection of the client here cancels it.
                let client_id: Arc<str> = Arc::from(
                    pending
                        .message
                        .publisher
                        .as_deref()
                        .unwrap_or(pending.record_id.as_str()),
                );
                broker.inner.expiries.schedule(
                    &client_id,
                    Timer::Will,
                    0,
                    Duration::from_secs(left.unsigned_abs()),
                    Due::Will(None, Box::new(pending)),
                );
            }
        }
        if published + scheduled > 0 {
            tracing::info!(%node, published, scheduled, "wills of a lost cluster node's clients");
        }
        Ok(connected)
    }
}

impl Broker {
    /// A connection of `session` starts (with a will or not): the will of
    /// an earlier connection is void.
    pub(crate) fn will_starts(
        &self,
        session: &super::Session,
        record_id: &ClientId,
        connection_id: u64,
        will: Option<&Message>,
        delay_secs: u32,
    ) {
        let Some(routes) = self.routes() else { return };
        match will {
            Some(will) => {
                session.set_will_held(true);
                routes.hold_will(
                    &session.client_id,
                    record_id,
                    connection_id,
                    will,
                    delay_secs,
                );
            }
            None => {
                if session.set_will_held(false) {
                    routes.drop_will(&session.client_id);
                }
            }
        }
    }

    /// The session's will was handled here (published, or void): the
    /// cluster's bucket no longer needs it.
    pub(crate) fn will_done(&self, session: &super::Session) {
        if let Some(routes) = self.routes()
            && session.set_will_held(false)
        {
            routes.drop_will(&session.client_id);
        }
    }

    /// On a cluster node: whether the client of `will` connected again
    /// since (anywhere in the cluster).
    pub(crate) fn came_back(&self, will: &PendingWill) -> bool {
        if self.routes().is_none() {
            return false;
        }
        match self.inner.store.get_state(&will.record_id) {
            Ok(Some(state)) => {
                state.connection_id != will.connection_id || *state.broker != *will.broker
            }
            _ => false,
        }
    }

    /// Node `node` was declared lost, its loss recorded by node `by`: the
    /// node that recorded it publishes its clients' wills.
    pub fn node_lost(&self, node: &str, by: &str) {
        if let Some(routes) = self.routes()
            && *routes.node == *by
        {
            routes.node_lost(node);
        }
    }

    /// Looks for the wills of this node's earlier runs (call once the
    /// node's run started: their connections are recorded as ended).
    pub fn publish_wills_of_earlier_runs(&self) {
        if let Some(routes) = self.routes() {
            let node = routes.node.to_string();
            routes.node_lost(&node);
        }
    }
}
