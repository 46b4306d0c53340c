//! One node at a time for work that must not run twice in a cluster (for
//! example following an external broker: two followers would report each
//! event twice): a lock per task in the lease bucket (`lock.NAME`), taken
//! with a compare-and-set on the key's revision, renewed every third of the
//! cluster's lease, and taken over by another node once its holder has not
//! renewed it for a whole lease.

use std::{future::Future, time::Duration};

use async_nats::jetstream::kv;
use tokio_util::sync::CancellationToken;

use super::{Cluster, leases::SKEW};

fn key(name: &str) -> String {
    // Key characters: names are checked by their own configuration; what
    // the key-value store does not take is replaced.
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("lock.{safe}")
}

/// Runs `task` on this node whenever it holds the lock `name`, until
/// `stop`: `task` gets a token that is cancelled when the lock is lost.
pub async fn run_while_leader<F, Fut>(
    cluster: Cluster,
    name: String,
    stop: CancellationToken,
    task: F,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let lease = cluster.shared.config.lease;
    let node = cluster.node_id().to_owned();
    let bucket = loop {
        match super::leases::bucket(&cluster.shared.js, &cluster.shared.config).await {
            Ok(bucket) => break bucket,
            Err(e) => {
                tracing::warn!(error = %e, task = %name, "the cluster's lock bucket is unavailable")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(lease / 3) => {}
            _ = stop.cancelled() => return,
        }
    };
    loop {
        if let Some(revision) = take(&bucket, &key(&name), &node, lease).await {
            tracing::info!(task = %name, node = %node, "this node runs the task for the cluster");
            let held = stop.child_token();
            let renewing = renew(
                &bucket,
                key(&name),
                node.clone(),
                revision,
                lease,
                held.clone(),
            );
            tokio::select! {
                () = task(held.clone()) => {}
                () = renewing => {
                    tracing::warn!(task = %name, "lost the cluster lock of the task; stopping it here");
                }
            }
            held.cancel();
            if stop.is_cancelled() {
                // Given up at once, for the next holder.
                let _ = bucket.delete(key(&name)).await;
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(lease / 3) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Takes the lock if it is free, ours, or lapsed: the key's new revision.
async fn take(bucket: &kv::Store, key: &str, node: &str, lease: Duration) -> Option<u64> {
    let value = bytes::Bytes::copy_from_slice(node.as_bytes());
    match bucket.entry(key).await {
        Ok(None) => bucket.create(key, value).await.ok(),
        Ok(Some(entry)) => {
            let free = entry.operation != kv::Operation::Put;
            let ours = entry.value.as_ref() == node.as_bytes();
            let age = (chrono::Utc::now() - entry.created)
                .to_std()
                .unwrap_or_default();
            if free || ours || age > lease + SKEW {
                bucket.update(key, value, entry.revision).await.ok()
            } else {
                None
            }
        }
        Err(_) => None,
    }
}

/// Renews the lock until `held` is cancelled; returns when it cannot (the
/// lock was taken over, or NATS was out of reach for a whole lease).
async fn renew(
    bucket: &kv::Store,
    key: String,
    node: String,
    mut revision: u64,
    lease: Duration,
    held: CancellationToken,
) {
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(lease / 3) => {}
            _ = held.cancelled() => return,
        }
        match bucket
            .update(
                &key,
                bytes::Bytes::copy_from_slice(node.as_bytes()),
                revision,
            )
            .await
        {
            Ok(next) => {
                revision = next;
                last = tokio::time::Instant::now();
            }
            Err(e) => {
                tracing::debug!(error = %e, %key, "renewing a cluster lock failed");
                // A wrong revision: someone else holds it now.
                if matches!(bucket.entry(&key).await, Ok(Some(entry)) if entry.value.as_ref() != node.as_bytes())
                    || last.elapsed() >= lease
                {
                    return;
                }
            }
        }
    }
}
