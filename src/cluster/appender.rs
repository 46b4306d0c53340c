//! The appender: takes every entry waiting, packs them into one log
//! message, publishes it to the stream and goes on with the next while
//! JetStream's acknowledgement is awaited (several messages in flight).
//!
//! A message whose acknowledgement does not come is published again with
//! the same message id, so JetStream's de-duplication keeps one copy. Only
//! when that fails too are its entries' waiters told the log is
//! unavailable; the message may still be in the stream (its answer lost),
//! in which case every node applies it all the same.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{
    context::PublishAckFuture, message::PublishMessage, publish::PublishAck,
};
use prost::Message;
use tokio::sync::{Semaphore, mpsc};

use super::{Cluster, wire};
use crate::store::StoreError;

/// Entries queued for the appender at most.
pub(super) const QUEUE: usize = 16_384;

/// Entries and encoded bytes of one message at most (NATS's default
/// largest message is 1 MiB).
const MAX_ENTRIES: usize = 4096;
const MAX_BYTES: usize = 512 * 1024;

/// Messages published and not yet acknowledged at most.
const IN_FLIGHT: usize = 64;

/// How long a message is published again (with the same id) before its
/// waiters hear it failed: longer than a JetStream stream takes to elect a
/// new leader when its leader's server is lost.
const RETRY_FOR: Duration = Duration::from_secs(12);
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn run(cluster: Cluster, mut queue: mpsc::Receiver<(u64, wire::Body)>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let shared = &cluster.shared;
    loop {
        let first = tokio::select! {
            next = queue.recv() => match next {
                Some(entry) => entry,
                None => return,
            },
            _ = shared.stop.cancelled() => return,
        };
        let mut entries = vec![entry_of(first)];
        let mut bytes = entries[0].encoded_len();
        while entries.len() < MAX_ENTRIES && bytes < MAX_BYTES {
            match queue.try_recv() {
                Ok(next) => {
                    let entry = entry_of(next);
                    bytes += entry.encoded_len();
                    entries.push(entry);
                }
                Err(_) => break,
            }
        }
        let ids: Vec<u64> = entries.iter().map(|e| e.id).collect();
        let incarnation = shared
            .incarnation
            .load(std::sync::atomic::Ordering::Acquire);
        let batch = wire::Batch {
            node: shared.config.node_id.clone(),
            incarnation,
            entries,
        };
        let message_id = format!("{}-{incarnation:x}-{}", shared.config.node_id, ids[0]);
        let payload = bytes::Bytes::from(batch.encode_to_vec());
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let cluster = cluster.clone();
        // The first publish goes out now, in order; waiting for its answer
        // (and any publish again) runs beside the next messages.
        let first = send(&cluster, payload.clone(), &message_id).await;
        tokio::spawn(async move {
            let _permit = permit;
            let mut outcome = acked(first).await;
            let started = tokio::time::Instant::now();
            let mut attempt = 1u64;
            while let Err(e) = &outcome {
                cluster.shared.append_trouble(true);
                if started.elapsed() >= RETRY_FOR || cluster.shared.stop.is_cancelled() {
                    break;
                }
                tracing::warn!(error = %e, attempt, "appending to the cluster log failed; publishing again");
                tokio::time::sleep(Duration::from_millis((200 * attempt).min(1000))).await;
                attempt += 1;
                outcome = acked(send(&cluster, payload.clone(), &message_id).await).await;
            }
            match outcome {
                Ok(ack) => {
                    cluster.shared.append_trouble(false);
                    // Entries answered once stored: answered now.
                    let committed = cluster.shared.store.committed_revision();
                    let mut on_store = crate::lock::lock(&cluster.shared.answer_on_store);
                    let mut waiters = crate::lock::lock(&cluster.shared.waiters);
                    for id in &ids {
                        if on_store.remove(id)
                            && let Some(waiter) = waiters.remove(id)
                        {
                            let _ = waiter.send(Ok(committed));
                        }
                    }
                    drop(waiters);
                    drop(on_store);
                    cluster
                        .shared
                        .stream_last
                        .fetch_max(ack.sequence, std::sync::atomic::Ordering::AcqRel);
                }
                Err(e) => {
                    tracing::error!(error = %e, entries = ids.len(), "the cluster log refused a message");
                    cluster.shared.metrics.cluster_append_failures.inc();
                    let mut on_store = crate::lock::lock(&cluster.shared.answer_on_store);
                    let mut waiters = crate::lock::lock(&cluster.shared.waiters);
                    for id in ids {
                        on_store.remove(&id);
                        if let Some(waiter) = waiters.remove(&id) {
                            let _ = waiter.send(Err(StoreError::Unavailable(e.clone())));
                        }
                    }
                }
            }
        });
    }
}

fn entry_of((id, body): (u64, wire::Body)) -> wire::Entry {
    wire::Entry {
        id,
        body: Some(body),
    }
}

/// Hands a message to the NATS connection, bounded in time: while the
/// client reconnects a publish can wait for it, and is published again.
async fn send(
    cluster: &Cluster,
    payload: bytes::Bytes,
    message_id: &str,
) -> Result<PublishAckFuture, String> {
    let publish = cluster.shared.js.send_publish(
        cluster.shared.config.subject(),
        PublishMessage::build()
            .payload(payload)
            .message_id(message_id),
    );
    match tokio::time::timeout(ACK_TIMEOUT, publish).await {
        Ok(sent) => sent.map_err(|e| e.to_string()),
        Err(_) => Err("the NATS connection took no message in time".to_owned()),
    }
}

/// JetStream's acknowledgement of a message sent, bounded in time.
async fn acked(sent: Result<PublishAckFuture, String>) -> Result<PublishAck, String> {
    match tokio::time::timeout(ACK_TIMEOUT, sent?).await {
        Ok(ack) => ack.map_err(|e| e.to_string()),
        Err(_) => Err("no acknowledgement in time".to_owned()),
    }
}
