//! The cluster scenarios: they run against a cluster that is already up
//! (`scripts/cluster.sh`, or `bench/cluster.sh` which also runs them), so
//! the nodes run as the real binary in processes of their own.
//!
//! - `cluster-ingest`: durable ingest through the nodes next to raw
//!   JetStream publishes of the same messages (the reference).
//! - `cluster-load`: the connstate part of `cluster-ingest` alone (the
//!   catch-up measurement loads the log with it while a node is down).
//! - `cluster-latency`: an event ingested on one node until a watch on
//!   another sees it, and until a Get with the write's revision answers
//!   there.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use async_nats::jetstream::{self, message::PublishMessage};
use chrono::Utc;
use connstate::{
    api::revision::MIN_REVISION_HEADER,
    cluster::wire,
    pb::{
        self, connection_state_service_client::ConnectionStateServiceClient,
        ingest_service_client::IngestServiceClient,
    },
    store::Write,
};
use prost::Message;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::{Latencies, rate};

/// The reference stream and its subject, created and deleted by the bench.
const REF_STREAM: &str = "BENCH_REF";
const REF_SUBJECT: &str = "bench.ref";
/// Replicas of the reference stream: as the log's.
const REF_REPLICAS: usize = 3;
/// Reference publishes awaiting their acknowledgement, per producer.
const REF_WINDOW: usize = 64;
/// The broker name the bench reports as.
const BROKER: &str = "bench";
/// How long the latency watch may trail the producer once it is done.
const DRAIN: Duration = Duration::from_secs(30);
/// A Get with the write's revision once per this many events.
const PROBE_EVERY: usize = 100;

/// A tag that keeps this run's client ids apart from earlier runs' on the
/// same cluster (their connection ids start again from 1).
fn run_tag() -> String {
    format!("{:x}", Utc::now().timestamp_millis())
}

/// The gRPC channel of a node address (`host:port` or a URL).
async fn connect_node(addr: &str) -> anyhow::Result<Channel> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Channel::from_shared(url.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to the node at {url}"))
}

async fn connect_nodes(nodes: &[String]) -> anyhow::Result<Vec<Channel>> {
    anyhow::ensure!(!nodes.is_empty(), "--nodes needs at least one address");
    let mut channels = Vec::with_capacity(nodes.len());
    for node in nodes {
        channels.push(connect_node(node).await?);
    }
    Ok(channels)
}

/// The events of one ingest request: events `from..to` of a run, where
/// event `j` is client `j / 2`'s connect (even `j`) or its disconnect (odd).
fn load_events(tag: &str, from: usize, to: usize) -> Vec<pb::LifecycleEvent> {
    let time = Some(connstate::api::convert::timestamp(Utc::now()));
    (from..to)
        .map(|j| {
            let client = j / 2;
            let event = if j.is_multiple_of(2) {
                pb::lifecycle_event::Event::Connected(pb::Connected {
                    info: Some(pb::ConnectionInfo {
                        client_addr: format!(
                            "10.{}.{}.{}",
                            client >> 16 & 255,
                            client >> 8 & 255,
                            client & 255
                        ),
                        port: 40_000 + (client % 20_000) as u32,
                        secure: false,
                        username: "use-token-auth".into(),
                        protocol: pb::MqttProtocol::V311 as i32,
                        keep_alive_seconds: 60,
                        clean_session: true,
                    }),
                })
            } else {
                pb::lifecycle_event::Event::Disconnected(pb::Disconnected {
                    cause: pb::DisconnectCause::ClientDisconnect as i32,
                    reason_code: Some(0),
                    detail: String::new(),
                })
            };
            pb::LifecycleEvent {
                client_id: format!("d:local:b{tag}:dev{client:09}"),
                time,
                connection_id: 1,
                event: Some(event),
            }
        })
        .collect()
}

fn check_batch(batch: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        batch >= 2 && batch.is_multiple_of(2) && batch <= connstate::query::MAX_INGEST_BATCH,
        "--batch must be even (a client's connect and disconnect go in one request) and 2 to {}",
        connstate::query::MAX_INGEST_BATCH
    );
    Ok(())
}

/// What `cluster-ingest` and `cluster-load` measured of the nodes.
struct Loaded {
    events_per_s: f64,
    revision: u64,
}

/// `producers` tasks call IngestEvents with requests of `batch` events
/// until `events` are acknowledged; request `k` goes to node `k % nodes`.
async fn load(
    nodes: &[Channel],
    events: usize,
    batch: usize,
    producers: usize,
) -> anyhow::Result<Loaded> {
    check_batch(batch)?;
    anyhow::ensure!(producers >= 1, "--producers must be 1 or more");
    let tag = Arc::new(run_tag());
    let requests = events.div_ceil(batch);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(producers);
    for p in 0..producers {
        let clients: Vec<_> = nodes
            .iter()
            .map(|c| IngestServiceClient::new(c.clone()))
            .collect();
        let tag = tag.clone();
        tasks.push(tokio::spawn(async move {
            let mut revision = 0;
            for k in (p..requests).step_by(producers) {
                let mut client = clients[k % clients.len()].clone();
                let answer = client
                    .ingest_events(pb::IngestEventsRequest {
                        broker: BROKER.into(),
                        events: load_events(&tag, k * batch, ((k + 1) * batch).min(events)),
                        lease_duration: None,
                    })
                    .await
                    .with_context(|| format!("IngestEvents to node {}", k % clients.len()))?;
                revision = revision.max(answer.into_inner().revision);
            }
            anyhow::Ok(revision)
        }));
    }
    let mut revision = 0;
    for task in tasks {
        revision = revision.max(task.await??);
    }
    Ok(Loaded {
        events_per_s: rate(events, started.elapsed()),
        revision,
    })
}

/// The log message a node appends for one IngestEvents call of `events`
/// (one entry: the events as the node records them).
fn log_message(events: Vec<pb::LifecycleEvent>, entry: u64) -> anyhow::Result<bytes::Bytes> {
    let recorded = connstate::api::convert::parse_ingest(&pb::IngestEventsRequest {
        broker: BROKER.into(),
        events,
        lease_duration: None,
    })
    .map_err(|e| anyhow::anyhow!("the bench's events do not parse: {e}"))?;
    let batch = wire::Batch {
        node: "node1".into(),
        incarnation: 0x5eed_5eed_5eed_5eed,
        entries: vec![wire::Entry {
            id: entry,
            body: Some(wire::body_of(&Write::Events(recorded))),
        }],
    };
    Ok(bytes::Bytes::from(batch.encode_to_vec()))
}

async fn connect_nats(urls: &str) -> anyhow::Result<async_nats::Client> {
    let addrs: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(|u| u.trim().parse().with_context(|| format!("NATS URL {u:?}")))
        .collect::<anyhow::Result<_>>()?;
    async_nats::ConnectOptions::new()
        .name("connstate-bench")
        .connection_timeout(Duration::from_secs(5))
        .connect(addrs)
        .await
        .with_context(|| format!("connecting to NATS at {urls}"))
}

/// Raw JetStream publishes to a fresh R3 stream: one message per `batch`
/// events holding what a node appends for them (with a message id, as a
/// node's appends carry), each producer with up to [`REF_WINDOW`]
/// acknowledgements outstanding. Returns events/s acknowledged.
async fn reference(
    urls: &str,
    events: usize,
    batch: usize,
    producers: usize,
) -> anyhow::Result<f64> {
    let client = connect_nats(urls).await?;
    let js = jetstream::new(client.clone());
    let _ = js.delete_stream(REF_STREAM).await;
    js.create_stream(jetstream::stream::Config {
        name: REF_STREAM.into(),
        subjects: vec![REF_SUBJECT.into()],
        storage: jetstream::stream::StorageType::File,
        num_replicas: REF_REPLICAS,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("creating the reference stream {REF_STREAM}: {e}"))?;

    let tag = run_tag();
    let full = log_message(load_events(&tag, 0, batch.min(events)), 1)?;
    let rest = events % batch;
    let last = if rest == 0 {
        full.clone()
    } else {
        log_message(load_events(&tag, 0, rest), 1)?
    };
    let messages = events.div_ceil(batch);
    println!(
        "- reference message: {} bytes for {} events",
        full.len(),
        batch.min(events)
    );

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(producers);
    for p in 0..producers {
        let js = js.clone();
        let (full, last) = (full.clone(), last.clone());
        tasks.push(tokio::spawn(async move {
            let mut window = VecDeque::with_capacity(REF_WINDOW);
            for k in (p..messages).step_by(producers) {
                if window.len() == REF_WINDOW {
                    let ack: jetstream::context::PublishAckFuture =
                        window.pop_front().expect("a full window");
                    ack.await.context("reference acknowledgement")?;
                }
                let payload = if k + 1 == messages {
                    last.clone()
                } else {
                    full.clone()
                };
                let ack = js
                    .send_publish(
                        REF_SUBJECT,
                        PublishMessage::build()
                            .payload(payload)
                            .message_id(format!("bench-{p}-{k}")),
                    )
                    .await
                    .context("reference publish")?;
                window.push_back(ack);
            }
            for ack in window {
                ack.await.context("reference acknowledgement")?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let events_per_s = rate(events, started.elapsed());
    js.delete_stream(REF_STREAM)
        .await
        .map_err(|e| anyhow::anyhow!("deleting the reference stream {REF_STREAM}: {e}"))?;
    client.flush().await?;
    Ok(events_per_s)
}

/// `cluster-ingest`: the reference, then the same events through the nodes.
pub async fn ingest(
    nats: &str,
    nodes: &[String],
    events: usize,
    batch: usize,
    producers: usize,
) -> anyhow::Result<()> {
    check_batch(batch)?;
    anyhow::ensure!(producers >= 1, "--producers must be 1 or more");
    println!(
        "## cluster-ingest: {events} events (connect and disconnect of {} clients), batches of {batch}, {producers} producers, {} nodes",
        events.div_ceil(2),
        nodes.len()
    );
    let channels = connect_nodes(nodes).await?;
    let raw = reference(nats, events, batch, producers).await?;
    println!(
        "- raw JetStream publishes, R{REF_REPLICAS} stream, one message per batch, {REF_WINDOW} in flight per producer: {raw:.0} events/s (reference)"
    );
    let loaded = load(&channels, events, batch, producers).await?;
    println!(
        "- connstate IngestEvents, round-robin over {} nodes (durable on the R3 log and applied): {:.0} events/s = {:.0} % of the reference (revision {})",
        nodes.len(),
        loaded.events_per_s,
        100.0 * loaded.events_per_s / raw,
        loaded.revision
    );
    Ok(())
}

/// `cluster-load`: events through the nodes, nothing else.
pub async fn load_only(
    nodes: &[String],
    events: usize,
    batch: usize,
    producers: usize,
) -> anyhow::Result<()> {
    let channels = connect_nodes(nodes).await?;
    let loaded = load(&channels, events, batch, producers).await?;
    println!(
        "- loaded {events} events through {} node(s): {:.0} events/s, revision {}",
        nodes.len(),
        loaded.events_per_s,
        loaded.revision
    );
    Ok(())
}

/// The index of a latency-run client id (`...:dev{index}`) of this run.
fn latency_index(client_id: &str, prefix: &str) -> Option<usize> {
    client_id.strip_prefix(prefix)?.parse().ok()
}

/// `cluster-latency`: connects ingested on `nodes[0]` at `change_rate` a
/// second, seen by a watch on the last node and read there with the
/// write's revision.
pub async fn latency(nodes: &[String], change_rate: usize, seconds: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        nodes.len() >= 2,
        "--nodes needs two addresses: the writer and the reader"
    );
    anyhow::ensure!(
        change_rate >= 1 && seconds >= 1,
        "--rate and --seconds must be 1 or more"
    );
    let (writer, reader) = (&nodes[0], &nodes[nodes.len() - 1]);
    println!(
        "## cluster-latency: {change_rate} connects/s for {seconds} s ingested on {writer}, watched and read on {reader}"
    );
    let a = connect_node(writer).await?;
    let c = connect_node(reader).await?;
    let total = change_rate * seconds as usize;
    let prefix = format!("d:local:l{}:dev", run_tag());

    // The watch on C, from C's revision now: nothing of the run is missed
    // however long the stream takes to open.
    let mut states = ConnectionStateServiceClient::new(c.clone());
    let now = states
        .list_connection_states(pb::ListConnectionStatesRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .context("reading the reader's revision")?
        .into_inner()
        .revision;
    let mut stream = states
        .watch_connections(pb::WatchConnectionsRequest {
            start_revision: Some(now),
            max_changes_per_message: 64,
            ..Default::default()
        })
        .await
        .context("watching the reader")?
        .into_inner();
    let stop = CancellationToken::new();
    let watcher = {
        let stop = stop.clone();
        let prefix = prefix.clone();
        tokio::spawn(async move {
            let mut seen: HashMap<usize, Instant> = HashMap::with_capacity(total);
            while seen.len() < total {
                let message = tokio::select! {
                    m = stream.next() => m,
                    _ = stop.cancelled() => break,
                };
                let changes = match message {
                    Some(Ok(pb::WatchConnectionsResponse {
                        event: Some(pb::watch_connections_response::Event::Change(c)),
                    })) => vec![c],
                    Some(Ok(pb::WatchConnectionsResponse {
                        event: Some(pb::watch_connections_response::Event::Changes(b)),
                    })) => b.changes,
                    Some(Ok(_)) => continue,
                    Some(Err(status)) => {
                        eprintln!("the watch ended: {status}");
                        break;
                    }
                    None => break,
                };
                let arrived = Instant::now();
                for change in changes {
                    if let Some(i) = latency_index(&change.client_id, &prefix) {
                        seen.entry(i).or_insert(arrived);
                    }
                }
            }
            seen
        })
    };

    // The producer on A: a batch every 10 ms, each call on its own task so
    // that a slow answer does not hold the rate back.
    let ticks = (seconds * 100) as usize;
    let mut sent_at = Vec::with_capacity(total);
    let mut calls = Vec::with_capacity(ticks);
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let started = Instant::now();
    let mut probe_due = 0;
    for tick in 0..ticks {
        // Spread `total` over the ticks: tick t ends at total * (t+1) / ticks.
        let (from, to) = (total * tick / ticks, total * (tick + 1) / ticks);
        ticker.tick().await;
        if from == to {
            continue;
        }
        let now = Instant::now();
        let events = (from..to)
            .map(|i| super::pb_connect(format!("{prefix}{i}"), 1))
            .collect();
        sent_at.resize(to, now);
        let probe = from >= probe_due;
        if probe {
            probe_due = from + PROBE_EVERY;
        }
        let mut ingest = IngestServiceClient::new(a.clone());
        let mut states = ConnectionStateServiceClient::new(c.clone());
        let probe_id = format!("{prefix}{from}");
        calls.push(tokio::spawn(async move {
            let revision = ingest
                .ingest_events(pb::IngestEventsRequest {
                    broker: BROKER.into(),
                    events,
                    lease_duration: None,
                })
                .await
                .context("IngestEvents on the writer")?
                .into_inner()
                .revision;
            let acked = Instant::now();
            if !probe {
                return anyhow::Ok((acked - now, None));
            }
            let mut get = tonic::Request::new(pb::GetConnectionStateRequest {
                client_id: probe_id.clone(),
            });
            get.metadata_mut()
                .insert(MIN_REVISION_HEADER, revision.to_string().parse()?);
            let state = states
                .get_connection_state(get)
                .await
                .with_context(|| format!("Get of {probe_id} on the reader at revision {revision}"))?
                .into_inner();
            anyhow::ensure!(
                state.client_id == probe_id,
                "the reader answered another client"
            );
            let answered = Instant::now();
            Ok((acked - now, Some((answered - acked, answered - now))))
        }));
    }
    let mut ingest_lat = Latencies(Vec::with_capacity(calls.len()));
    let mut get_after_ack = Latencies(Vec::new());
    let mut get_after_send = Latencies(Vec::new());
    for call in calls {
        let (ack, probe) = call.await??;
        ingest_lat.0.push(ack);
        if let Some((after_ack, after_send)) = probe {
            get_after_ack.0.push(after_ack);
            get_after_send.0.push(after_send);
        }
    }
    let produced_in = started.elapsed();

    let mut watcher = watcher;
    let seen = match tokio::time::timeout(DRAIN, &mut watcher).await {
        Ok(seen) => seen?,
        Err(_) => {
            stop.cancel();
            watcher.await?
        }
    };
    let mut visible = Latencies(
        seen.iter()
            .filter_map(|(&i, &arrived)| Some(arrived.saturating_duration_since(*sent_at.get(i)?)))
            .collect(),
    );
    println!(
        "- ingested {total} connects on the writer in {:.1} s ({:.0}/s), IngestEvents: {}",
        produced_in.as_secs_f64(),
        rate(total, produced_in),
        ingest_lat.line()
    );
    println!(
        "- seen on the reader's watch: {} of {total} ({} missing)",
        seen.len(),
        total - seen.len()
    );
    if !visible.0.is_empty() {
        println!(
            "- sent on the writer -> on the reader's watch: {}",
            visible.line()
        );
    }
    if !get_after_ack.0.is_empty() {
        println!(
            "- Get on the reader with x-connstate-min-revision of the write, from the write's answer: {}",
            get_after_ack.line()
        );
        println!(
            "- the same from the write's send: {}",
            get_after_send.line()
        );
    }
    anyhow::ensure!(
        seen.len() == total,
        "{} changes never reached the reader's watch",
        total - seen.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_events_pair_each_client_within_a_batch() {
        let events = load_events("t", 4, 8);
        let ids: Vec<_> = events.iter().map(|e| e.client_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "d:local:bt:dev000000002",
                "d:local:bt:dev000000002",
                "d:local:bt:dev000000003",
                "d:local:bt:dev000000003"
            ]
        );
        assert!(matches!(
            events[0].event,
            Some(pb::lifecycle_event::Event::Connected(_))
        ));
        assert!(matches!(
            events[1].event,
            Some(pb::lifecycle_event::Event::Disconnected(_))
        ));
    }

    #[test]
    fn the_reference_message_is_a_log_batch_of_the_events() {
        let bytes = log_message(load_events("t", 0, 10), 7).unwrap();
        let batch = wire::Batch::decode_from(&bytes).unwrap();
        assert_eq!(batch.entries.len(), 1);
        match wire::write_of(batch.entries[0].body.clone().unwrap()).unwrap() {
            Write::Events(events) => assert_eq!(events.len(), 10),
            _ => panic!("not events"),
        }
    }

    #[test]
    fn latency_ids_parse_back() {
        assert_eq!(
            latency_index("d:local:lx:dev42", "d:local:lx:dev"),
            Some(42)
        );
        assert_eq!(latency_index("d:local:ly:dev42", "d:local:lx:dev"), None);
    }

    #[test]
    fn odd_or_oversized_batches_are_refused() {
        assert!(check_batch(1000).is_ok());
        assert!(check_batch(999).is_err());
        assert!(check_batch(0).is_err());
        assert!(check_batch(connstate::query::MAX_INGEST_BATCH + 2).is_err());
    }
}
