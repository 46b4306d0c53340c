//! The registry of a cluster node: its records live in the cluster's
//! key-value bucket `registry`, and this node's sled tree is a mirror of
//! the bucket that reads stay local to.
//!
//! **Keys.** `key.K` (an API key), `type.T` (a device type) and
//! `device.T.D` (a device of type `T`), where `K`, `T` and `D` are the
//! ids in base64url without padding: bucket keys allow only
//! `[-/_=.a-zA-Z0-9]`, and `.` separates tokens, which ids may hold. The
//! values are the records the tree holds (token digests, never tokens).
//!
//! **Writes** go to the bucket: a creation is the bucket's `create` (of two
//! nodes creating one id, one wins and the other finds it exists), a
//! deletion a delete marker expecting the revision just read. A write
//! returns once this node's mirror has applied it (read-your-writes).
//!
//! **The mirror** watches the whole bucket from its start: at start-up the
//! tree is emptied and refilled from the bucket's current values before
//! the node serves; afterwards each change is applied as it comes, and a
//! deletion of an API key or a device ends the connections made with it
//! ([`super::Revoked`]) on every node alike.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, kv};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{RegistryError, Revoked};

/// How long a write waits for this node's mirror to apply it.
const MIRROR_WAIT: Duration = Duration::from_secs(5);

/// How long start-up waits for the mirror to hold the bucket's values.
const SYNC_LIMIT: Duration = Duration::from_secs(30);

/// Attempts of a deletion that finds the record changed under it.
const DELETE_ATTEMPTS: usize = 5;

/// What a registry record is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RecordId {
    Key(String),
    Type(String),
    Device(String, String),
}

fn encode(id: &str) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn decode(token: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
}

impl RecordId {
    /// The record's key in the bucket.
    pub(super) fn bucket_key(&self) -> String {
        match self {
            RecordId::Key(key) => format!("key.{}", encode(key)),
            RecordId::Type(id) => format!("type.{}", encode(id)),
            RecordId::Device(type_id, device_id) => {
                format!("device.{}.{}", encode(type_id), encode(device_id))
            }
        }
    }

    /// The record a bucket key names; `None` for keys of no record.
    pub(super) fn parse(bucket_key: &str) -> Option<RecordId> {
        let mut tokens = bucket_key.split('.');
        let id = match (tokens.next()?, tokens.next()?, tokens.next()) {
            ("key", key, None) => RecordId::Key(decode(key)?),
            ("type", id, None) => RecordId::Type(decode(id)?),
            ("device", type_id, Some(device_id)) => {
                RecordId::Device(decode(type_id)?, decode(device_id)?)
            }
            _ => return None,
        };
        tokens.next().is_none().then_some(id)
    }

    /// The record's key in the registry's sled tree.
    pub(super) fn tree_key(&self) -> Vec<u8> {
        match self {
            RecordId::Key(key) => super::record_key(key),
            RecordId::Type(id) => super::type_key(id),
            RecordId::Device(type_id, device_id) => super::device_key(type_id, device_id),
        }
    }

    /// What the deletion of this record revokes.
    fn revoked(&self) -> Option<Revoked> {
        match self {
            RecordId::Key(key) => Some(Revoked::Key(key.clone())),
            RecordId::Type(_) => None,
            RecordId::Device(type_id, device_id) => Some(Revoked::Device {
                type_id: type_id.clone(),
                device_id: device_id.clone(),
            }),
        }
    }
}

fn unavailable(doing: &str, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable(format!("{doing} in the cluster's registry bucket: {e}"))
}

/// The bucket and this node's mirror of it.
pub(super) struct Bucket {
    kv: kv::Store,
    js: jetstream::Context,
    /// The newest bucket revision the mirror has applied.
    applied: watch::Sender<u64>,
}

impl Bucket {
    /// Empties `tree`, fills it from the bucket and keeps it following the
    /// bucket until `stop`. Returns once the tree holds every value the
    /// bucket held when this was called.
    pub(super) async fn mirror(
        kv: kv::Store,
        js: jetstream::Context,
        tree: sled::Tree,
        revocations: mpsc::UnboundedSender<Revoked>,
        stop: CancellationToken,
    ) -> Result<Arc<Bucket>, RegistryError> {
        let mut stream = js
            .get_stream(&kv.stream_name)
            .await
            .map_err(|e| unavailable("opening the stream", e))?;
        let state = stream
            .info()
            .await
            .map_err(|e| unavailable("reading the stream", e))?
            .state
            .clone();
        // The bucket is the registry: what this node held before (as a
        // single node, or while it was away) gives way to it.
        tree.clear()?;
        let watch = kv
            .watch_with_history(">")
            .await
            .map_err(|e| unavailable("watching", e))?;
        let bucket = Arc::new(Bucket {
            kv,
            js,
            applied: watch::Sender::new(0),
        });
        tokio::spawn(follow(
            bucket.clone(),
            watch,
            tree,
            revocations,
            stop.clone(),
        ));
        // The newest message of the stream is the newest value of its key,
        // so the watch delivers it last among the values present now.
        if state.messages > 0 {
            let mut applied = bucket.applied.subscribe();
            let caught_up = tokio::select! {
                reached = tokio::time::timeout(
                    SYNC_LIMIT,
                    applied.wait_for(|a| *a >= state.last_sequence),
                ) => matches!(reached, Ok(Ok(_))),
                _ = stop.cancelled() => false,
            };
            if !caught_up {
                return Err(RegistryError::Unavailable(format!(
                    "this node's copy of the cluster's registry did not catch up within {} s",
                    SYNC_LIMIT.as_secs()
                )));
            }
        }
        tracing::info!(
            records = state.messages,
            revision = state.last_sequence,
            "registry mirrored from the cluster"
        );
        Ok(bucket)
    }

    /// Creates `id` with `value`; `Exists(what)` when it is there already.
    pub(super) async fn create(
        &self,
        id: &RecordId,
        value: Vec<u8>,
        what: &'static str,
    ) -> Result<(), RegistryError> {
        let revision = self
            .kv
            .create(id.bucket_key(), value.into())
            .await
            .map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => RegistryError::Exists(what),
                _ => unavailable("creating a record", e),
            })?;
        self.mirrored(revision).await
    }

    /// Stores `value` as `id`, whatever was there.
    pub(super) async fn put(&self, id: &RecordId, value: Vec<u8>) -> Result<(), RegistryError> {
        let revision = self
            .kv
            .put(id.bucket_key(), value.into())
            .await
            .map_err(|e| unavailable("storing a record", e))?;
        self.mirrored(revision).await
    }

    /// The current value of `id` in the bucket and its revision.
    pub(super) async fn get(&self, id: &RecordId) -> Result<Option<(Vec<u8>, u64)>, RegistryError> {
        let entry = self
            .kv
            .entry(id.bucket_key())
            .await
            .map_err(|e| unavailable("reading a record", e))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| (e.value.to_vec(), e.revision)))
    }

    /// Waits until this node's mirror has applied `revision`.
    pub(super) async fn mirrored(&self, revision: u64) -> Result<(), RegistryError> {
        let mut applied = self.applied.subscribe();
        match tokio::time::timeout(MIRROR_WAIT, applied.wait_for(|a| *a >= revision)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(RegistryError::Unavailable(format!(
                "the change is stored in the cluster, but this node's copy of the registry \
                 did not apply it within {} s",
                MIRROR_WAIT.as_secs()
            ))),
        }
    }

    /// Deletes `id`; `false` when it does not exist.
    pub(super) async fn delete(&self, id: &RecordId) -> Result<bool, RegistryError> {
        let subject = format!(
            "{}{}",
            self.kv.put_prefix.as_ref().unwrap_or(&self.kv.prefix),
            id.bucket_key()
        );
        for _ in 0..DELETE_ATTEMPTS {
            let Some((_, revision)) = self.get(id).await? else {
                return Ok(false);
            };
            // The key-value API's delete marker, expecting the revision just
            // read, so the answer (and its revision) is about this record.
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("KV-Operation", "DEL");
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                revision.to_string().as_str(),
            );
            let published = self
                .js
                .publish_with_headers(subject.clone(), headers, bytes::Bytes::new())
                .await
                .map_err(|e| unavailable("deleting a record", e))?
                .await;
            match published {
                Ok(ack) => {
                    self.mirrored(ack.sequence).await?;
                    return Ok(true);
                }
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    continue;
                }
                Err(e) => return Err(unavailable("deleting a record", e)),
            }
        }
        Err(RegistryError::Unavailable(
            "the record kept changing while it was being deleted".into(),
        ))
    }
}

/// Applies the bucket's changes to `tree` as they come, for as long as the
/// node runs; watches again from where it stood if the watch ends.
async fn follow(
    bucket: Arc<Bucket>,
    mut watch: kv::Watch,
    tree: sled::Tree,
    revocations: mpsc::UnboundedSender<Revoked>,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            next = watch.next() => next,
            _ = stop.cancelled() => return,
        };
        match next {
            Some(Ok(entry)) => {
                if let Err(e) = apply(&tree, &entry, &revocations) {
                    tracing::error!(error = %e, key = %entry.key, "mirroring a registry change failed");
                }
                bucket.applied.send_if_modified(|applied| {
                    let newer = entry.revision > *applied;
                    *applied = (*applied).max(entry.revision);
                    newer
                });
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watching the cluster's registry bucket");
            }
            None => loop {
                let from = *bucket.applied.borrow() + 1;
                tracing::warn!(from, "the registry watch ended; watching again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return,
                }
                match bucket.kv.watch_all_from_revision(from).await {
                    Ok(again) => {
                        watch = again;
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "watching the registry bucket again"),
                }
            },
        }
    }
}

/// Applies one change of the bucket to the mirror: a deleted key or device
/// that was here is revoked.
fn apply(
    tree: &sled::Tree,
    entry: &kv::Entry,
    revocations: &mpsc::UnboundedSender<Revoked>,
) -> Result<(), RegistryError> {
    let Some(id) = RecordId::parse(&entry.key) else {
        tracing::warn!(key = %entry.key, "a registry bucket key of no record; ignored");
        return Ok(());
    };
    match entry.operation {
        kv::Operation::Put => {
            tree.insert(id.tree_key(), entry.value.as_ref())?;
        }
        kv::Operation::Delete | kv::Operation::Purge => {
            if tree.remove(id.tree_key())?.is_some()
                && let Some(revoked) = id.revoked()
            {
                let _ = revocations.send(revoked);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids_round_trip_through_bucket_keys() {
        for id in [
            RecordId::Key("a-org1-abc".into()),
            RecordId::Key("odd key/with:colons".into()),
            RecordId::Type("sensor.v2".into()),
            RecordId::Device("sensor.v2".into(), "d-1_x.y".into()),
        ] {
            let key = id.bucket_key();
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b)),
                "{key}"
            );
            assert!(!key.contains(".."), "{key}");
            assert_eq!(RecordId::parse(&key), Some(id));
        }
        assert_eq!(RecordId::Type("a.b".into()).bucket_key(), "type.YS5i");
        for junk in [
            "key",
            "key.",
            "type.!!",
            "device.YQ",
            "device.YQ.Yg.Yw",
            "node.x",
        ] {
            assert_eq!(RecordId::parse(junk), None, "{junk}");
        }
    }
}
