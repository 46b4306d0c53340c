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
    create_bucket(js, &config.bucket(), config.replicas, 1).await?;
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
            allow_direct: true,
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

/// Renews this node's lease once.
pub(super) async fn renew(cluster: &Cluster, kv: &kv::Store) {
    let shared = &cluster.shared;
    let run = shared.incarnation.load(Ordering::Acquire);
    let held = match kv
        .put(
            key(&shared.config.node_id),
            encode(run, shared.config.lease),
        )
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "renewing this node's cluster lease failed");
            false
        }
    };
    shared.lease_held.store(held, Ordering::Release);
}

/// Renews this node's lease and looks for lost nodes until the node leaves.
pub(super) async fn run(cluster: Cluster, kv: kv::Store) {
    let shared = &cluster.shared;
    let renew_every = shared.config.lease / 3;
    let mut last_renewal = tokio::time::Instant::now();
    // Losses appended, and when: appended again after a lease, in case the
    // first append was lost.
    let mut reported: HashMap<(String, u64), tokio::time::Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(renew_every));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.stop.cancelled() => {
                // A node that leaves cleanly gives its lease up at once.
                let _ = kv.delete(key(&shared.config.node_id)).await;
                return;
            }
        }
        if last_renewal.elapsed() >= renew_every {
            renew(&cluster, &kv).await;
            last_renewal = tokio::time::Instant::now();
        }
        if !shared.started.load(Ordering::Acquire) {
            continue;
        }
        let nodes: Vec<(String, u64)> = crate::lock::lock(&shared.nodes)
            .iter()
            .filter(|(node, _)| **node != shared.config.node_id)
            .map(|(node, run)| (node.clone(), *run))
            .collect();
        reported.retain(|(node, run), _| nodes.contains(&(node.clone(), *run)));
        for (node, run) in nodes.clone() {
            if reported
                .get(&(node.clone(), run))
                .is_some_and(|at| at.elapsed() < shared.config.lease)
            {
                continue;
            }
            let entry = match kv.entry(key(&node)).await {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::debug!(error = %e, %node, "reading a node lease failed");
                    continue;
                }
            };
            let lost_lease = match &entry {
                Some(e) if e.operation == kv::Operation::Put => match decode(&e.value) {
                    Some((current, lease)) if current == run => {
                        let age = chrono::Utc::now() - e.created;
                        let lapsed = age.to_std().unwrap_or_default() > lease + SKEW;
                        lapsed.then_some(lease)
                    }
                    // Another run holds the lease: that run's start ends
                    // this one's connections, but it may never come.
                    Some((_, lease)) => Some(lease),
                    None => Some(shared.config.lease),
                },
                _ => Some(shared.config.lease),
            };
            let Some(lease) = lost_lease else {
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
