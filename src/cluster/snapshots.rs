//! Snapshots in the JetStream object store, and the trimming of the log
//! behind them.
//!
//! One node (the live node with the lowest name, so one at a time) takes a
//! snapshot of its store every snapshot interval when the log moved on
//! ([`crate::store::Store::export_snapshot`]: the state at one log
//! position) and puts it in the bucket `{stream}_snapshots` as
//! `snapshot-POSITION`. The log is trimmed only up to a snapshot, and only
//! once the messages before it are beyond the feed retention (older than
//! the feed's age limit, or more than its entry limit behind the newest
//! message): a node that joins with an empty folder starts from the newest
//! snapshot and the log after it ([`bootstrap`]), so trimming never
//! strands it. Snapshots older than the trim point are deleted.

use std::{path::Path, sync::atomic::Ordering};

use async_nats::jetstream::{self, object_store::ObjectStore};
use futures_util::StreamExt;

use super::{Cluster, ClusterConfig, ClusterError, js_doing};

const PREFIX: &str = "snapshot-";

fn name(sequence: u64) -> String {
    format!("{PREFIX}{sequence:020}")
}

fn sequence_of(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?.parse().ok()
}

/// The snapshot bucket, created if absent.
async fn bucket(
    js: &jetstream::Context,
    config: &ClusterConfig,
) -> Result<ObjectStore, ClusterError> {
    let bucket = format!("{}_snapshots", config.stream);
    if let Ok(store) = js.get_object_store(&bucket).await {
        return Ok(store);
    }
    match js
        .create_object_store(jetstream::object_store::Config {
            bucket: bucket.clone(),
            description: Some("connstate cluster snapshots".into()),
            num_replicas: config.replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
    {
        Ok(store) => Ok(store),
        Err(e) => js
            .get_object_store(&bucket)
            .await
            .map_err(|_| js_doing("creating the snapshot bucket")(&e)),
    }
}

/// Each snapshot in the bucket: its log position and when it was made.
async fn list(
    store: &ObjectStore,
) -> Result<Vec<(u64, chrono::DateTime<chrono::Utc>)>, ClusterError> {
    let mut listing = store
        .list()
        .await
        .map_err(|e| js_doing("listing snapshots")(&e))?;
    let mut found = Vec::new();
    while let Some(info) = listing.next().await {
        let info = info.map_err(|e| js_doing("listing snapshots")(&e))?;
        if info.deleted {
            continue;
        }
        if let Some(sequence) = sequence_of(&info.name) {
            found.push((sequence, info.modified.unwrap_or_default()));
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Takes snapshots and trims the log until the node leaves.
pub(super) async fn run(cluster: Cluster) {
    let shared = &cluster.shared;
    let every = shared.config.snapshot_interval;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.stop.cancelled() => return,
        }
        if let Err(e) = once(&cluster).await {
            tracing::warn!(error = %e, "taking a cluster snapshot failed; trying again later");
        }
    }
}

/// One round: a snapshot if this node takes them and the log moved on,
/// then the trim.
async fn once(cluster: &Cluster) -> Result<(), ClusterError> {
    let shared = &cluster.shared;
    if !shared.started.load(Ordering::Acquire) {
        return Ok(());
    }
    let lowest = crate::lock::lock(&shared.nodes).keys().min().cloned();
    if lowest.as_deref() != Some(shared.config.node_id.as_str()) {
        return Ok(());
    }
    let store = bucket(&shared.js, &shared.config).await?;
    let mut snapshots = list(&store).await?;
    let newest = snapshots.last().map_or(0, |s| s.0);
    if shared.applied.load(Ordering::Acquire) > newest {
        let path = shared.store.path().join("cluster-snapshot.tmp");
        let ((sequence, _), records) = shared.store.export_snapshot(path.clone()).await?;
        if sequence > newest {
            let mut file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| ClusterError::JetStream(format!("reading the snapshot: {e}")))?;
            store
                .put(name(sequence).as_str(), &mut file)
                .await
                .map_err(|e| js_doing("storing a snapshot")(&e))?;
            tracing::info!(position = sequence, records, "cluster snapshot stored");
            snapshots.push((sequence, chrono::Utc::now()));
        }
        let _ = tokio::fs::remove_file(&path).await;
    }
    trim(cluster, &store, &snapshots).await
}

/// Trims the log up to the newest snapshot that the feed retention has
/// passed, and deletes the snapshots before it.
async fn trim(
    cluster: &Cluster,
    store: &ObjectStore,
    snapshots: &[(u64, chrono::DateTime<chrono::Utc>)],
) -> Result<(), ClusterError> {
    let shared = &cluster.shared;
    let settings = shared.store.settings();
    let last = shared.stream_last.load(Ordering::Acquire);
    let aged = chrono::Utc::now()
        - chrono::Duration::from_std(settings.feed_max_age).unwrap_or(chrono::Duration::MAX);
    let Some(&(trim_to, _)) = snapshots.iter().rev().find(|(sequence, made)| {
        *made <= aged || last.saturating_sub(*sequence) >= settings.feed_max_entries
    }) else {
        return Ok(());
    };
    let stream = shared
        .js
        .get_stream(&shared.config.stream)
        .await
        .map_err(|e| js_doing("trimming the log")(&e))?;
    // Up to, not including, the snapshot's own message: it is read again
    // by whoever starts from the snapshot.
    let purged = stream
        .purge()
        .sequence(trim_to)
        .await
        .map_err(|e| js_doing("trimming the log")(&e))?;
    if purged.purged > 0 {
        tracing::info!(
            up_to = trim_to,
            messages = purged.purged,
            "cluster log trimmed behind a snapshot"
        );
    }
    for (sequence, _) in snapshots.iter().filter(|(s, _)| *s < trim_to) {
        let _ = store.delete(name(*sequence)).await;
    }
    Ok(())
}

/// Starts a new node's store from the newest snapshot when the log no
/// longer reaches back to its start: `data_dir` must hold no store yet.
/// Returns the position of the snapshot used, if one was.
pub async fn bootstrap(
    config: &ClusterConfig,
    data_dir: &Path,
) -> Result<Option<u64>, ClusterError> {
    let fresh = match std::fs::read_dir(data_dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(_) => true,
    };
    if !fresh {
        return Ok(None);
    }
    let client = super::connect(config).await?;
    let js = jetstream::new(client);
    let Ok(mut stream) = js.get_stream(&config.stream).await else {
        return Ok(None);
    };
    let info = stream
        .info()
        .await
        .map_err(|e| js_doing("reading the log stream")(&e))?;
    if info.state.first_sequence <= 1 {
        return Ok(None);
    }
    let store = bucket(&js, config).await?;
    let Some(&(sequence, _)) = list(&store).await?.last() else {
        return Err(ClusterError::Trimmed {
            applied: 0,
            first: info.state.first_sequence,
        });
    };
    if sequence < info.state.first_sequence {
        return Err(ClusterError::Trimmed {
            applied: sequence,
            first: info.state.first_sequence,
        });
    }
    let started = std::time::Instant::now();
    let mut object = store
        .get(name(sequence))
        .await
        .map_err(|e| js_doing("fetching the newest snapshot")(&e))?;
    let download = data_dir.with_extension("snapshot");
    let mut file = tokio::fs::File::create(&download)
        .await
        .map_err(|e| ClusterError::JetStream(format!("{}: {e}", download.display())))?;
    tokio::io::copy(&mut object, &mut file)
        .await
        .map_err(|e| js_doing("fetching the newest snapshot")(&e))?;
    drop(file);
    let path = download.clone();
    let dir = data_dir.to_owned();
    let imported = tokio::task::spawn_blocking(move || crate::store::snapshot::import(&path, &dir))
        .await
        .map_err(|_| ClusterError::JetStream("importing the snapshot stopped".into()))?;
    let _ = std::fs::remove_file(&download);
    let records = imported?;
    tracing::info!(
        position = sequence,
        records,
        took_ms = started.elapsed().as_millis() as u64,
        "new node started from the cluster's newest snapshot"
    );
    Ok(Some(sequence))
}
