//! Node leases, in a JetStream key-value bucket: each node renews its own
//! key (`node.NAME`: its run and its lease) every third of its lease, and
//! watches the others. A node of the applied node table whose key is gone,
//! names another run, or was last renewed longer ago than its lease is
//! lost: this node appends `NodeLost` for that run once. Whichever `NodeLost`
//! is applied first records the loss; the others change nothing.
//!
//! Renewal times are the NATS server's clock, compared with this node's:
//! the margin below allows for a little skew between them.

use std::{collections::HashMap, sync::atomic::Ordering, time::Duration};

use async_nats::jetstream::{self, kv};

use super::{Cluster, ClusterConfig, ClusterError, wire};

/// Allowance for clock skew between NATS servers and nodes.
pub(super) const SKEW: Duration = Duration::from_millis(500);

/// The lease bucket, created if absent.
pub(super) async fn bucket(
    js: &jetstream::Context,
    config: &ClusterConfig,
) -> Result<kv::Store, ClusterError> {
    if let Ok(store) = js.get_key_value(config.bucket()).await {
        return Ok(store);
    }
    create_bucket(js, &config.bucket(), config.replicas, 1, true).await?;
    js.get_key_value(config.bucket())
        .await
        .map_err(|e| super::js_doing("opening the lease bucket")(&e))
}

/// Creates a key-value bucket's stream as the key-value API lays it out
/// (`KV_` + bucket, subjects `$KV.bucket.>`, one value per key). The
/// client's own create asks for account details that nats-server 2.9
/// answers in a form it does not read; the stream is all it needs.
pub(super) async fn create_bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    history: i64,
    direct: bool,
) -> Result<(), ClusterError> {
    let created = js
        .create_stream(jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("connstate cluster".into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: history,
            storage: jetstream::stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: direct,
            num_replicas: replicas,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await;
    match created {
        Ok(_) => Ok(()),
        // Another node created it meanwhile.
        Err(_) if js.get_stream(format!("KV_{bucket}")).await.is_ok() => Ok(()),
        Err(e) => Err(super::js_doing("creating a key-value bucket")(&e)),
    }
}

fn key(node: &str) -> String {
    format!("node.{node}")
}

fn encode(run: u64, lease: Duration) -> bytes::Bytes {
    let mut value = Vec::with_capacity(16);
    value.extend_from_slice(&run.to_be_bytes());
    value.extend_from_slice(&(lease.as_millis() as u64).to_be_bytes());
    value.into()
}

fn decode(value: &[u8]) -> Option<(u64, Duration)> {
    let run = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let lease = u64::from_be_bytes(value.get(8..16)?.try_into().ok()?);
    Some((run, Duration::from_millis(lease)))
}

/// Renews this node's lease once (bounded by a third of the lease);
/// returns whether it was renewed.
pub(super) async fn renew(cluster: &Cluster, kv: &kv::Store) -> bool {
    let shared = &cluster.shared;
    let run = shared.incarnation.load(Ordering::Acquire);
    let put = kv.put(
        key(&shared.config.node_id),
        encode(run, shared.config.lease),
    );
    let held = match tokio::time::timeout(shared.config.lease / 3, put).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "renewing this node's cluster lease failed");
            false
        }
        Err(_) => {
            tracing::warn!("renewing this node's cluster lease got no answer in time");
            false
        }
    };
    shared.lease_held.store(held, Ordering::Release);
    held
}

/// Renews this node's lease and looks for lost nodes until the node leaves.
///
/// A node judges the others only while its own lease has been renewed
/// without a break for a whole lease: when NATS itself is in trouble (a
/// server lost, its streams electing new leaders) every node's renewals
/// fail alike, and none of them may take the others' silence for a loss.
/// Only a lease not renewed for longer than its duration (by the NATS
/// server's clock) is lost; a lease of another run of the node is its
/// restart, whose own start ends the earlier run.
pub(super) async fn run(cluster: Cluster, kv: kv::Store) {
    let shared = &cluster.shared;
    let renew_every = shared.config.lease / 3;
    let mut last_renewal = tokio::time::Instant::now();
    // Since when this node's renewals have succeeded without a break.
    let mut renewing_since = Some(tokio::time::Instant::now());
    // Losses appended, and when: appended again after a lease, in case the
    // first append was lost.
    let mut reported: HashMap<(String, u64), tokio::time::Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(renew_every));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.renew_now.notified() => {
                last_renewal = tokio::time::Instant::now() - renew_every;
            }
            _ = shared.stop.cancelled() => {
                // A node that leaves cleanly gives its lease up at once.
                let _ = kv.delete(key(&shared.config.node_id)).await;
                return;
            }
        }
        if last_renewal.elapsed() >= renew_every {
            let renewed = renew(&cluster, &kv).await;
            last_renewal = tokio::time::Instant::now();
            renewing_since = match (renewed, renewing_since) {
                (true, Some(since)) => Some(since),
                (true, None) => Some(tokio::time::Instant::now()),
                (false, _) => None,
            };
        }
        let judging =
            renewing_since.is_some_and(|since| since.elapsed() >= shared.config.lease + SKEW);
        if !judging || !shared.started.load(Ordering::Acquire) {
            continue;
        }
        let nodes: Vec<(String, u64)> = crate::lock::lock(&shared.nodes)
            .iter()
            .filter(|(node, _)| **node != shared.config.node_id)
            .map(|(node, run)| (node.clone(), *run))
            .collect();
        reported.retain(|(node, run), _| nodes.contains(&(node.clone(), *run)));
        for (node, run) in nodes {
            if reported
                .get(&(node.clone(), run))
                .is_some_and(|at| at.elapsed() < shared.config.lease)
            {
                continue;
            }
            let read = tokio::time::timeout(renew_every, kv.entry(key(&node))).await;
            let entry = match read {
                Ok(Ok(entry)) => entry,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %node, "reading a node lease failed");
                    continue;
                }
                Err(_) => continue,
            };
            let lapsed = match &entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    let lease = decode(&e.value).map_or(shared.config.lease, |(_, lease)| lease);
                    let age = (chrono::Utc::now() - e.created)
                        .to_std()
                        .unwrap_or_default();
                    (age > lease + SKEW).then_some(lease)
                }
                // Deleted (the node left) or never written.
                _ => Some(shared.config.lease),
            };
            let Some(lease) = lapsed else {
                continue;
            };
            reported.insert((node.clone(), run), tokio::time::Instant::now());
            tracing::warn!(%node, "cluster node's lease lapsed; recording it as lost");
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            let body = wire::Body::NodeLost(wire::NodeLost {
                node,
                incarnation: run,
                lease_ms: lease.as_millis() as u64,
            });
            if shared.appends.send((id, body)).await.is_err() {
                return;
            }
        }
    }
}
