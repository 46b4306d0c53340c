//! The applier: reads the log in order from where this node's store stands
//! and hands each entry to the store's writer, with the message's commit
//! time and its place in the log; a second task awaits the writer's
//! answers in the same order, records how far the log is applied and
//! answers this node's own waiters.
//!
//! Node entries are decided here, the same way on every node, from the
//! node table as applied so far (kept in the store with the commits):
//! `NodeStarted` makes the appender's run the live one and ends its node's
//! earlier connections; `NodeLost` of the live run removes it and ends its
//! connections (a second `NodeLost` of the same run changes nothing); any
//! other entry from a run that is not live is refused (fenced).

use std::{collections::HashMap, sync::atomic::Ordering, time::Duration};

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::{Cluster, ClusterError, js_error, wire};
use crate::{
    domain::{DisconnectCause, Revision, node_broker},
    store::{LogPosition, MetaWrite, Store, StoreError, Write, WriteAck},
};

/// How often, and after how long without a delivery, the consumer is
/// checked for a stall.
const STALL_CHECK: Duration = Duration::from_millis(500);
const STALLED_AFTER: Duration = Duration::from_secs(2);

/// JetStream requests of the applier (stream and consumer lookups): short,
/// so that a request sent to a server that is gone is tried again soon.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause before applying starts again after a failure.
const RESTART_AFTER: Duration = Duration::from_millis(500);

/// `mcluster/node/NAME`: the live run of a node (8 bytes).
const NODE_PREFIX: &[u8] = b"node/";

/// The node table as the store holds it.
pub(super) fn load_nodes(store: &Store) -> Result<HashMap<String, u64>, StoreError> {
    let mut nodes = HashMap::new();
    for (name, value) in store.meta_scan(NODE_PREFIX)? {
        let node = String::from_utf8_lossy(&name[NODE_PREFIX.len()..]).into_owned();
        let run = <[u8; 8]>::try_from(value.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt(format!("node table entry of {node}")))?;
        nodes.insert(node, run);
    }
    Ok(nodes)
}

fn node_key(node: &str) -> Vec<u8> {
    Store::meta_key(&[NODE_PREFIX, node.as_bytes()].concat())
}

/// Applies the log until the node leaves; after a failure (a commit that
/// failed, the consumer lost), starts again from the durable position.
pub(super) async fn run(cluster: Cluster) {
    loop {
        match apply_from_durable(&cluster).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "applying the cluster log stopped; starting again from the stored position");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RESTART_AFTER) => {}
            _ = cluster.shared.stop.cancelled() => return,
        }
    }
}

/// One entry handed to the writer, awaiting its answer.
struct Handed {
    position: LogPosition,
    answer: oneshot::Receiver<Result<Revision, StoreError>>,
    /// The entry id and waiter, when this node appended it.
    waiter: Option<(u64, WriteAck)>,
    /// The answer the waiter gets instead (a fenced run's entry).
    refusal: Option<StoreError>,
    /// `NodeLost` of this node's current run.
    own_loss: bool,
}

async fn apply_from_durable(cluster: &Cluster) -> Result<(), ClusterError> {
    let shared = &cluster.shared;
    let store = &shared.store;
    let mut at = store.applied_position()?;
    let mut nodes = load_nodes(store)?;
    *crate::lock::lock(&shared.nodes) = nodes.clone();
    let mut js = shared.js.clone();
    js.set_timeout(REQUEST_TIMEOUT);
    let stream = js
        .get_stream(&shared.config.stream)
        .await
        .map_err(js_error)?;
    let deliver_policy = if at.0 == 0 {
        DeliverPolicy::All
    } else {
        // The message at the position again: entries after the one applied
        // may remain in it.
        DeliverPolicy::ByStartSequence {
            start_sequence: at.0,
        }
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy,
            filter_subject: shared.config.subject(),
            ..Default::default()
        })
        .await
        .map_err(js_error)?;
    let mut messages = consumer.messages().await.map_err(js_error)?;
    let (handed, handed_rx) = mpsc::channel::<Handed>(8192);
    let (failed, mut failure) = oneshot::channel::<String>();
    let completion = tokio::spawn(complete(cluster.clone(), handed_rx, failed));
    // The newest message delivered, and when: a consumer that delivers
    // nothing while the stream is known to hold more is started again
    // (after a NATS server is lost, a consumer can go quiet for good).
    let mut delivered = at.0;
    let mut last_delivery = tokio::time::Instant::now();
    let mut stall_check = tokio::time::interval(STALL_CHECK);
    let result = loop {
        let message = tokio::select! {
            m = messages.next() => m,
            reason = &mut failure => {
                break Err(ClusterError::JetStream(reason.unwrap_or_else(|_| "the applier's answers stopped".into())));
            }
            _ = stall_check.tick() => {
                let known = shared.stream_last.load(Ordering::Acquire);
                if known > delivered && last_delivery.elapsed() >= STALLED_AFTER {
                    break Err(ClusterError::JetStream(format!(
                        "the log's consumer delivered nothing for {} s while the stream holds messages up to {known} (delivered {delivered})",
                        last_delivery.elapsed().as_secs()
                    )));
                }
                continue;
            }
            _ = shared.stop.cancelled() => break Ok(()),
        };
        let message = match message {
            Some(Ok(m)) => m,
            Some(Err(e)) => break Err(js_error(e)),
            None => break Err(ClusterError::JetStream("the log's consumer ended".into())),
        };
        let (sequence, published, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.published, info.pending),
            Err(e) => break Err(js_error(e)),
        };
        shared
            .stream_last
            .fetch_max(sequence + pending, Ordering::AcqRel);
        delivered = delivered.max(sequence);
        last_delivery = tokio::time::Instant::now();
        if sequence < at.0 {
            continue;
        }
        let commit_time = crate::domain::truncate_to_millis(published);
        let batch = match wire::Batch::decode_from(&message.payload) {
            Ok(b) => b,
            Err(e) => {
                // Every node skips it alike.
                tracing::error!(sequence, error = %e, "skipping an undecodable cluster log message");
                continue;
            }
        };
        // Entry ids are unique within this process (whatever its run), not
        // across its restarts: only this process's runs are its own.
        let own = batch.node == shared.config.node_id
            && crate::lock::lock(&shared.runs).contains(&batch.incarnation);
        let mut table_changed = false;
        let mut lost_nodes = Vec::new();
        for (index, entry) in batch.entries.into_iter().enumerate() {
            let position = (sequence, index as u32);
            if position <= at {
                continue;
            }
            let waiter = own
                .then(|| {
                    crate::lock::lock(&shared.waiters)
                        .remove(&entry.id)
                        .map(|w| (entry.id, w))
                })
                .flatten();
            // Per entry: a start earlier in the same message counts.
            let origin_live = nodes.get(&batch.node) == Some(&batch.incarnation);
            let mut meta: Vec<MetaWrite> = Vec::new();
            let mut refusal = None;
            let mut own_loss = false;
            let write = match entry.body {
                Some(wire::Body::NodeStarted(_)) => {
                    nodes.insert(batch.node.clone(), batch.incarnation);
                    table_changed = true;
                    meta.push((
                        node_key(&batch.node),
                        Some(batch.incarnation.to_be_bytes().to_vec()),
                    ));
                    Write::EndBroker {
                        broker: node_broker(&batch.node),
                        cause: DisconnectCause::ServerRestarted,
                    }
                }
                Some(wire::Body::NodeLost(lost))
                    if origin_live && nodes.get(&lost.node) == Some(&lost.incarnation) =>
                {
                    nodes.remove(&lost.node);
                    table_changed = true;
                    meta.push((node_key(&lost.node), None));
                    own_loss = lost.node == shared.config.node_id
                        && lost.incarnation == shared.incarnation.load(Ordering::Acquire);
                    tracing::warn!(node = %lost.node, by = %batch.node, "cluster node lost: recording its connections as lost");
                    lost_nodes.push(super::LostNode {
                        node: lost.node.clone(),
                        by: batch.node.clone(),
                    });
                    Write::EndBroker {
                        broker: node_broker(&lost.node),
                        cause: DisconnectCause::NodeLost {
                            node: lost.node,
                            lease_secs: lost.lease_ms.div_ceil(1000),
                        },
                    }
                }
                Some(wire::Body::NodeLost(_)) => Write::Events(Vec::new()),
                Some(_) if !origin_live => {
                    refusal = Some(StoreError::Unavailable(format!(
                        "node {}'s run was declared lost: the write was refused",
                        batch.node
                    )));
                    Write::Events(Vec::new())
                }
                Some(body) => match wire::write_of(body) {
                    Ok(write) => write,
                    Err(e) => {
                        tracing::error!(sequence, error = %e, "skipping an undecodable cluster log entry");
                        refusal = Some(StoreError::Corrupt(e.to_string()));
                        Write::Events(Vec::new())
                    }
                },
                None => Write::Events(Vec::new()),
            };
            let (answer_tx, answer) = oneshot::channel();
            if let Err(e) = store
                .apply(write, commit_time, meta, (position, at), answer_tx)
                .await
            {
                if let Some((id, w)) = waiter {
                    crate::lock::lock(&shared.waiters).insert(id, w);
                }
                completion.abort();
                return Err(e.into());
            }
            at = position;
            let handed_entry = Handed {
                position,
                answer,
                waiter,
                refusal,
                own_loss,
            };
            if handed.send(handed_entry).await.is_err() {
                break;
            }
        }
        // The lease loop reads the table: shared only when it changed.
        if table_changed {
            *crate::lock::lock(&shared.nodes) = nodes.clone();
        }
        for lost in lost_nodes {
            let _ = shared.lost.send(lost);
        }
    };
    drop(handed);
    let _ = completion.await;
    result
}

/// Whether an answer of the writer says the entry was not applied (the
/// commit failed, or an entry before it did), rather than how it applied.
fn not_applied(e: &StoreError) -> bool {
    !matches!(
        e,
        StoreError::NotFound | StoreError::Disabled | StoreError::Corrupt(_)
    )
}

/// Awaits the writer's answers in log order.
async fn complete(
    cluster: Cluster,
    mut handed: mpsc::Receiver<Handed>,
    failed: oneshot::Sender<String>,
) {
    let shared = &cluster.shared;
    let mut failed = Some(failed);
    while let Some(entry) = handed.recv().await {
        let answer = entry.answer.await.unwrap_or(Err(StoreError::Closed));
        if let Err(e) = &answer
            && not_applied(e)
        {
            // Applied again from the durable position: the waiter waits
            // for that.
            if let Some((id, waiter)) = entry.waiter {
                crate::lock::lock(&shared.waiters).insert(id, waiter);
            }
            if let Some(failed) = failed.take() {
                let _ = failed.send(format!(
                    "log position {:?} was not applied: {e}",
                    entry.position
                ));
            }
            continue;
        }
        shared.applied.fetch_max(entry.position.0, Ordering::AcqRel);
        if let Some((_, waiter)) = entry.waiter {
            let _ = waiter.send(match entry.refusal {
                Some(refusal) => Err(refusal),
                None => answer,
            });
        }
        if entry.own_loss {
            cluster.fenced_off();
        }
        cluster.publish_status();
    }
}
