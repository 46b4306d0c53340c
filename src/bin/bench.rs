//! `connstate-bench`: the benchmarks behind BENCHMARKS.md.
//!
//! Each scenario prints its figures next to its reference, measured in the
//! same run on the same machine. Everything runs on loopback and stops by
//! itself; nothing here is part of the test suite.
//!
//! ```text
//! cargo run --release --bin connstate-bench -- ingest
//! cargo run --release --bin connstate-bench -- query --clients 1000000
//! cargo run --release --bin connstate-bench -- restart --clients 1000000
//! cargo run --release --bin connstate-bench -- watch --watchers 1000 --rate 10000
//! bench/cluster.sh    # the cluster scenarios against a cluster of 3 nodes
//! ```

#[path = "../allocator.rs"]
mod allocator;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::Utc;
use clap::{Parser, Subcommand};
use connstate::{
    Config, Listeners,
    domain::{
        ClientId, ConnectionInfo, DisconnectCause, EventKind, LifecycleEvent, MqttProtocol,
        SortField, StateFilter, StateOrder,
    },
    pb::{
        self, connection_state_service_client::ConnectionStateServiceClient,
        ingest_service_client::IngestServiceClient,
    },
    store::{Store, StoreOptions},
    tracker::Tracker,
};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

// The root of a binary finds its modules beside it: this one sits in a
// folder of its own, so that Cargo does not take it for another binary.
#[path = "bench/cluster.rs"]
mod cluster;

#[derive(Parser)]
#[command(about = "connstate benchmarks")]
struct Cli {
    /// Folder for benchmark data (wiped per scenario)
    #[arg(long, default_value = "target/bench-data")]
    dir: PathBuf,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Durable ingest: raw sled ceiling, store in-process, gRPC IngestEvents.
    Ingest {
        #[arg(long, default_value_t = 400_000)]
        events: usize,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[arg(long, default_value_t = 8)]
        producers: usize,
    },
    /// Queries with many stored clients: Get and List latency in-process
    /// and over gRPC, and start-up time.
    Query {
        #[arg(long, default_value_t = 1_000_000)]
        clients: usize,
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
    },
    /// The crash restart of `query` alone: open a crashed copy of the data
    /// set and record the clients it left connected.
    Restart {
        #[arg(long, default_value_t = 1_000_000)]
        clients: usize,
    },
    /// (Used by `query`.) Opens the store in `dir`, commits, checkpoints,
    /// commits more, then aborts: a crash with a checkpoint behind it.
    #[command(hide = true)]
    CrashChild {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        clients: usize,
    },
    /// WatchConnections fan-out: event-to-delivery latency and losses.
    Watch {
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Changes per second.
        #[arg(long, default_value_t = 10_000)]
        rate: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Ask for up to this many changes per stream message
        /// (`max_changes_per_message`; 0: one change per message).
        #[arg(long, default_value_t = 0)]
        per_message: u32,
    },
    /// Durable ingest through a running cluster (round-robin over its
    /// nodes), next to raw JetStream publishes of the same log messages.
    ClusterIngest {
        /// NATS URLs of the cluster, comma-separated.
        #[arg(
            long,
            default_value = "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
        )]
        nats: String,
        /// gRPC addresses of the nodes, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053"
        )]
        nodes: Vec<String>,
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Events per IngestEvents call and per reference message (even:
        /// each client's connect and disconnect go together).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[arg(long, default_value_t = 8)]
        producers: usize,
    },
    /// The connstate part of `cluster-ingest` alone: loads a cluster's log.
    ClusterLoad {
        /// gRPC addresses of the nodes to ingest through, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:50051")]
        nodes: Vec<String>,
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[arg(long, default_value_t = 8)]
        producers: usize,
    },
    /// An event ingested on the first node until it is seen on the last
    /// one: by a WatchConnections stream, and by a Get carrying the
    /// write's revision.
    ClusterLatency {
        /// gRPC addresses: the writer first, the reader last.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "127.0.0.1:50051,127.0.0.1:50053"
        )]
        nodes: Vec<String>,
        /// Connects per second.
        #[arg(long, default_value_t = 10_000)]
        rate: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

fn main() -> anyhow::Result<()> {
    allocator::configure();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "connstate::store=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .on_thread_park(connstate::idle::idle)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.scenario {
            Scenario::Ingest {
                events,
                batch,
                producers,
            } => ingest(&cli.dir, events, batch, producers).await,
            Scenario::Query { clients, requests } => query(&cli.dir, clients, requests).await,
            Scenario::Watch {
                watchers,
                rate,
                seconds,
                per_message,
            } => watch(&cli.dir, watchers, rate, seconds, per_message).await,
            Scenario::Restart { clients } => restart(&cli.dir, clients).await,
            Scenario::CrashChild { data, clients } => crash_child(&data, clients).await,
            Scenario::ClusterIngest {
                nats,
                nodes,
                events,
                batch,
                producers,
            } => cluster::ingest(&nats, &nodes, events, batch, producers).await,
            Scenario::ClusterLoad {
                nodes,
                events,
                batch,
                producers,
            } => cluster::load_only(&nodes, events, batch, producers).await,
            Scenario::ClusterLatency {
                nodes,
                rate,
                seconds,
            } => cluster::latency(&nodes, rate, seconds).await,
        }
    })
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn fresh_dir(base: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = base.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Copies the files of a store folder (flat, as sled and the store keep
/// it, plus one level of subfolders).
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Opens a crashed store and records its clients left connected, as a
/// server start does before it reports SERVING; prints how long each took.
async fn restart_after_crash(dir: &Path, what: &str) -> anyhow::Result<()> {
    // The copy of the data just made is still being written to the disk:
    // let it land first, or the restart's flushes queue behind gigabytes
    // that a real restart would not find.
    std::process::Command::new("sync").status()?;
    let started = Instant::now();
    let store = Store::open(dir, StoreOptions::default())?;
    let open = started.elapsed();
    let recovered = Tracker::new(store.clone(), Default::default())
        .recover_connected()
        .await?;
    let startup = started.elapsed();
    println!(
        "- start-up after a crash ({what}): store open {:.2} s, recovery of {recovered} connected clients {:.2} s, total {:.2} s",
        open.as_secs_f64(),
        (startup - open).as_secs_f64(),
        startup.as_secs_f64()
    );
    // Serving now, while what the recovery committed is written back behind
    // it: one write at a time for 3 s, each a new client's connect.
    let mut lat = Latencies(Vec::new());
    let mut k = 0;
    while started.elapsed() < startup + Duration::from_secs(3) {
        let t = Instant::now();
        store
            .commit_events(vec![connect_event(10_000_000 + k, 1, 0)])
            .await?;
        lat.0.push(t.elapsed());
        k += 1;
    }
    println!("  writes one at a time in the 3 s after it: {}", lat.line());
    store.close().await?;
    Ok(())
}

/// The crashing child of the `query` start-up measurement.
async fn crash_child(data: &Path, clients: usize) -> anyhow::Result<()> {
    let store = Store::open(data, StoreOptions::default())?;
    let tracker = Tracker::new(store.clone(), Default::default());
    // Activity of connected clients (even ids), 10,000 before the
    // checkpoint and 10,000 after it.
    for round in 0..2 {
        let events = (0..10_000)
            .map(|k| {
                let j = (2 * (k + round * 10_000)) % clients;
                LifecycleEvent {
                    broker: Arc::from(connstate::domain::EMBEDDED_BROKER),
                    kind: EventKind::Activity(connstate::domain::ActivityKind::Publish),
                    ..connect_event(j, j as u64 + 1, 0)
                }
            })
            .collect();
        tracker.record(events).await?;
        tracker.flush_activity().await?;
        if round == 0 {
            store.checkpoint()?;
        }
    }
    std::process::abort();
}

fn client_name(i: usize) -> String {
    match i % 10 {
        0..=5 => format!("d:local:type{}:dev{i:07}", i % 20),
        6..=7 => format!("g:local:gw{}:gw{i:07}", i % 5),
        8 => format!("a:local:app{i:07}"),
        _ => format!("client-{i:07}"),
    }
}

fn connect_event(i: usize, connection_id: u64, secs_ago: i64) -> LifecycleEvent {
    LifecycleEvent {
        client_id: ClientId::new(client_name(i)).expect("valid id"),
        time: connstate::domain::truncate_to_millis(
            Utc::now() - chrono::Duration::seconds(secs_ago),
        ),
        connection_id,
        broker: Arc::from("bench"),
        kind: EventKind::Connected(ConnectionInfo {
            addr: IpAddr::from([10, 0, (i >> 8) as u8, i as u8]),
            port: 40_000 + (i % 20_000) as u16,
            secure: i.is_multiple_of(2),
            username: "use-token-auth".into(),
            protocol: Some(MqttProtocol::V3_1_1),
            keep_alive: 60,
            clean_session: true,
        }),
        peer: None,
    }
}

/// A connect of `client_id` over gRPC, now.
fn pb_connect(client_id: String, connection_id: u64) -> pb::LifecycleEvent {
    pb::LifecycleEvent {
        client_id,
        time: Some(connstate::api::convert::timestamp(Utc::now())),
        connection_id,
        event: Some(pb::lifecycle_event::Event::Connected(pb::Connected {
            info: Some(pb::ConnectionInfo {
                client_addr: "10.0.0.1".into(),
                port: 40_000,
                secure: false,
                username: "use-token-auth".into(),
                protocol: pb::MqttProtocol::V311 as i32,
                keep_alive_seconds: 60,
                clean_session: true,
            }),
        })),
    }
}

struct Latencies(Vec<Duration>);

impl Latencies {
    fn percentile(&mut self, p: f64) -> Duration {
        self.0.sort_unstable();
        let idx = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[idx.min(self.0.len() - 1)]
    }

    fn line(&mut self) -> String {
        format!(
            "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (n = {})",
            ms(self.percentile(0.50)),
            ms(self.percentile(0.99)),
            ms(self.percentile(1.0)),
            self.0.len()
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// Starts the full server in this process on loopback port 0.
async fn start_server(
    data_dir: &Path,
    tune: impl FnOnce(&mut Config),
) -> anyhow::Result<(
    std::net::SocketAddr,
    Channel,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
)> {
    let mut config = Config {
        data_dir: data_dir.to_owned(),
        grpc_listen: Some("127.0.0.1:0".parse()?),
        ..Config::default()
    };
    tune(&mut config);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = grpc.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(async move {
        if let Err(e) = connstate::run(
            Listeners {
                grpc: Some(grpc),
                rest: None,
                mqtt: Default::default(),
            },
            config,
            async {
                let _ = rx.await;
            },
        )
        .await
        {
            eprintln!("server failed: {e}");
        }
    });
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok((addr, channel, tx, handle))
}

// ---------------------------------------------------------------------------
// Ingest
// ---------------------------------------------------------------------------

async fn ingest(base: &Path, events: usize, batch: usize, producers: usize) -> anyhow::Result<()> {
    println!("## ingest: {events} connect events, batches of {batch}, {producers} producers");

    // References: raw sled, flushed once per group of `batch * producers`
    // events as the store's group commit does. (1) one 200-byte key per
    // event: the plain insert rate; (2) the store's own write pattern per
    // event: a state record and a log entry, plus one feed blob per group.
    let group = batch * producers;
    let raw_append = raw_append(base, events, group)?;
    println!(
        "- raw sequential append of 400 B per event to one file, fdatasync per group: {raw_append:.0} events/s (reference)"
    );
    let raw_one = raw_sled(base, "sled-raw-1", events, group, false)?;
    println!("- raw sled, 1 key of 200 B per event: {raw_one:.0} events/s (reference)");
    let raw = raw_sled(base, "sled-raw-2", events, group, true)?;
    println!(
        "- raw sled, the store's write pattern (2 keys per event + 1 feed blob per group): {raw:.0} events/s (reference ceiling)"
    );

    // The store in-process: concurrent producers, group commit.
    let dir = fresh_dir(base, "store-ingest")?;
    let store = Store::open(&dir, StoreOptions::default())?;
    let tracker = Tracker::new(store.clone(), Default::default());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let tracker = tracker.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = p * batch;
            while i < events {
                let batch_events: Vec<_> = (i..(i + batch).min(events))
                    .map(|j| connect_event(j, j as u64 + 1, 0))
                    .collect();
                tracker.record(batch_events).await.expect("record");
                i += batch * producers;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let in_process = rate(events, started.elapsed());
    println!(
        "- store in-process (durable, acknowledged): {in_process:.0} events/s = {:.0} % of the ceiling",
        100.0 * in_process / raw
    );
    store.close().await?;
    drop(store);

    // Over gRPC: the same events through IngestEvents.
    let dir = fresh_dir(base, "grpc-ingest")?;
    let (_, channel, stop, server) = start_server(&dir, |_| {}).await?;
    let requests: Vec<Vec<pb::LifecycleEvent>> = (0..events)
        .step_by(batch)
        .map(|i| {
            (i..(i + batch).min(events))
                .map(|j| pb_connect(client_name(j), j as u64 + 1))
                .collect()
        })
        .collect();
    let requests = Arc::new(tokio::sync::Mutex::new(requests));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..producers {
        let mut client = IngestServiceClient::new(channel.clone());
        let requests = requests.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(events) = requests.lock().await.pop() else {
                    return;
                };
                client
                    .ingest_events(pb::IngestEventsRequest {
                        lease_duration: None,
                        broker: "bench".into(),
                        events,
                    })
                    .await
                    .expect("ingest");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let grpc = rate(events, started.elapsed());
    println!(
        "- gRPC IngestEvents (durable, acknowledged; client in the same process): {grpc:.0} events/s = {:.0} % of the ceiling",
        100.0 * grpc / raw
    );
    let _ = stop.send(());
    server.await?;
    Ok(())
}

/// Appends a 400-byte record per event (about what a change with its
/// state and log entry takes in the change log) to one file, with an
/// fdatasync per group: the floor of any durable log on this disk.
fn raw_append(base: &Path, events: usize, group: usize) -> anyhow::Result<f64> {
    use std::io::Write;
    let dir = fresh_dir(base, "raw-append")?;
    let mut file = std::fs::File::create(dir.join("log"))?;
    let record = vec![7u8; 400];
    let started = Instant::now();
    let mut n = 0;
    while n < events {
        let end = (n + group).min(events);
        let mut buf = Vec::with_capacity(record.len() * (end - n));
        for _ in n..end {
            buf.extend_from_slice(&record);
        }
        file.write_all(&buf)?;
        file.sync_data()?;
        n = end;
    }
    Ok(rate(events, started.elapsed()))
}

/// Raw sled inserts in flushed groups; returns events per second.
fn raw_sled(
    base: &Path,
    name: &str,
    events: usize,
    group: usize,
    like_store: bool,
) -> anyhow::Result<f64> {
    let dir = fresh_dir(base, name)?;
    let db = sled::Config::new()
        .path(&dir)
        .cache_capacity(256 << 20)
        .open()?;
    let state = vec![7u8; 200];
    let log = vec![7u8; 150];
    let started = Instant::now();
    let mut n = 0;
    while n < events {
        let end = (n + group).min(events);
        let mut b = sled::Batch::default();
        for i in n..end {
            let id = client_name(i);
            b.insert(format!("s{id}").as_bytes(), state.as_slice());
            if like_store {
                b.insert(format!("p{id}\0{i:016}").as_bytes(), log.as_slice());
            }
        }
        if like_store {
            b.insert(format!("f{n:016}").as_bytes(), vec![7u8; 400 * (end - n)]);
        }
        db.apply_batch(b)?;
        db.flush()?;
        n = end;
    }
    Ok(rate(events, started.elapsed()))
}

// ---------------------------------------------------------------------------
// Query
// ---------------------------------------------------------------------------

async fn populate(store: &Store, clients: usize) -> anyhow::Result<()> {
    let tracker = Tracker::new(store.clone(), Default::default());
    let chunk = 10_000;
    let mut i = 0;
    while i < clients {
        let mut events = Vec::with_capacity(chunk * 2);
        for j in i..(i + chunk).min(clients) {
            // Spread connect times over the last ~11 days; the embedded
            // broker's clients, so that a crash restart ends the connected.
            events.push(LifecycleEvent {
                broker: Arc::from(connstate::domain::EMBEDDED_BROKER),
                ..connect_event(j, j as u64 + 1, (j % 1_000_000) as i64)
            });
            // Every second client has disconnected since.
            if j % 2 == 1 {
                events.push(LifecycleEvent {
                    kind: EventKind::Disconnected(DisconnectCause::SocketClosed),
                    broker: Arc::from(connstate::domain::EMBEDDED_BROKER),
                    ..connect_event(j, j as u64 + 1, (j % 1_000_000) as i64 - 1)
                });
            }
        }
        tracker.record(events).await?;
        i += chunk;
    }
    Ok(())
}

/// The folder of the query data set of `clients` clients (half of them
/// connected through the embedded broker), populated on first use.
async fn populated(base: &Path, clients: usize) -> anyhow::Result<PathBuf> {
    let name = format!("query-embedded-{clients}");
    let dir = base.join(&name);
    let marker = dir.join("populated");
    if !marker.exists() {
        let dir = fresh_dir(base, &name)?;
        let store = Store::open(&dir, StoreOptions::default())?;
        let started = Instant::now();
        populate(&store, clients).await?;
        println!(
            "- populated {clients} clients in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        store.close().await?;
        std::fs::write(&marker, b"")?;
    }
    Ok(dir)
}

/// A crashed copy of the data set in `dir`: a child process opens it,
/// commits, checkpoints, commits more and aborts (SIGABRT: nothing of the
/// store closes).
fn crashed_copy(base: &Path, dir: &Path, clients: usize) -> anyhow::Result<PathBuf> {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let crashed = fresh_dir(base, &format!("{name}-crashed"))?;
    copy_dir(dir, &crashed)?;
    let status = std::process::Command::new(std::env::current_exe()?)
        .arg("crash-child")
        .arg("--data")
        .arg(&crashed)
        .arg("--clients")
        .arg(clients.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(!status.success(), "the child was to crash");
    Ok(crashed)
}

/// The crash restart of `query` alone (to run it again, or to profile it).
async fn restart(base: &Path, clients: usize) -> anyhow::Result<()> {
    println!("## restart: {clients} stored clients, half of them left connected by a crash");
    let dir = populated(base, clients).await?;
    let crashed = crashed_copy(base, &dir, clients)?;
    restart_after_crash(&crashed, "a checkpoint and 20,000 changes after it").await?;
    std::fs::remove_dir_all(&crashed)?;
    Ok(())
}

async fn query(base: &Path, clients: usize, requests: usize) -> anyhow::Result<()> {
    println!("## query: {clients} stored clients, {requests} requests per measurement");
    let dir = populated(base, clients).await?;

    // Start-up after a crash, on a copy of the data. The restart loads the
    // checkpoint, replays the log tail and records the clients left
    // connected as disconnected by the server, durably, before it would
    // report SERVING.
    let crashed = crashed_copy(base, &dir, clients)?;
    restart_after_crash(&crashed, "a checkpoint and 20,000 changes after it").await?;
    // The same without any checkpoint: indexes rebuilt from the records.
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let crashed_cold = fresh_dir(base, &format!("{name}-crashed-no-checkpoint"))?;
    copy_dir(&dir, &crashed_cold)?;
    let _ = std::fs::remove_file(crashed_cold.join("index.snapshot"));
    restart_after_crash(&crashed_cold, "no checkpoint").await?;
    std::fs::remove_dir_all(&crashed_cold)?;

    // Start-up after a clean stop (the populated data: its clients were
    // left connected by no crash, so nothing to recover is simulated by
    // the clean close having run).
    let started = Instant::now();
    let store = Store::open(&dir, StoreOptions::default())?;
    println!(
        "- start-up after a clean stop, store open: {:.2} s",
        started.elapsed().as_secs_f64()
    );

    // In-process Get.
    let ids: Vec<ClientId> = (0..requests)
        .map(|k| ClientId::new(client_name((k * 7919) % clients)).unwrap())
        .collect();
    let mut lat = Latencies(Vec::with_capacity(requests));
    for id in &ids {
        let t = Instant::now();
        let state = store.get_state(id)?;
        lat.0.push(t.elapsed());
        assert!(state.is_some());
    }
    println!("- GetConnectionState in-process: {}", lat.line());

    // In-process List: connected devices of one type, by last activity.
    // Devices of one type (1 client in 20), by last activity.
    let filter = StateFilter {
        client_type: Some(connstate::domain::ClientType::Device),
        type_id: Some("type4".into()),
        ..Default::default()
    };
    let order = StateOrder {
        field: SortField::LastActivityTime,
        descending: true,
    };
    let mut lat = Latencies(Vec::new());
    let mut cursor: Option<Vec<u8>> = None;
    for _ in 0..(requests / 20).max(100) {
        let t = Instant::now();
        let page = store.list_states(&filter, order, 100, cursor.as_deref(), 200_000)?;
        lat.0.push(t.elapsed());
        // Page on; after the last page, start over.
        cursor = page.cursor;
    }
    println!(
        "- List in-process (devices of one type, 1 in 20 clients, last_activity_time desc, page 100, paging on): {}",
        lat.line()
    );
    store.close().await?;
    drop(store);

    // Over gRPC, server in this process, on the crashed copy now that its
    // recovery is done and it was closed cleanly (a server start records
    // the embedded broker's clients left connected: the populated data
    // stays as it is for the next run).
    let (_, channel, stop, server) = start_server(&crashed, |_| {}).await?;
    let started = Instant::now();
    let mut client = ConnectionStateServiceClient::new(channel.clone());
    // Wait until serving (recovery of the connected half runs first).
    client
        .get_connection_state(pb::GetConnectionStateRequest {
            client_id: client_name(0),
        })
        .await?;
    println!(
        "- start-up of the whole server after a clean stop: {:.2} s to the first answer",
        started.elapsed().as_secs_f64()
    );
    let mut lat = Latencies(Vec::with_capacity(requests));
    for id in &ids {
        let t = Instant::now();
        client
            .get_connection_state(pb::GetConnectionStateRequest {
                client_id: id.to_string(),
            })
            .await?;
        lat.0.push(t.elapsed());
    }
    println!(
        "- GetConnectionState over gRPC, one at a time: {}",
        lat.line()
    );

    let concurrency = 16;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let mut client = ConnectionStateServiceClient::new(channel.clone());
        let ids: Vec<String> = ids
            .iter()
            .skip(c)
            .step_by(concurrency)
            .map(|i| i.to_string())
            .collect();
        tasks.push(tokio::spawn(async move {
            for id in ids {
                client
                    .get_connection_state(pb::GetConnectionStateRequest { client_id: id })
                    .await
                    .expect("get");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    println!(
        "- GetConnectionState over gRPC, {concurrency} concurrent: {:.0} req/s",
        rate(ids.len(), started.elapsed())
    );

    let mut lat = Latencies(Vec::new());
    let mut token = String::new();
    for _ in 0..(requests / 20).max(100) {
        let t = Instant::now();
        let page = client
            .list_connection_states(pb::ListConnectionStatesRequest {
                filter: Some(pb::ConnectionStateFilter {
                    client_type: pb::ClientType::Device as i32,
                    type_id: "type4".into(),
                    ..Default::default()
                }),
                order_by: "last_activity_time desc".into(),
                page_size: 100,
                page_token: token.clone(),
            })
            .await?
            .into_inner();
        lat.0.push(t.elapsed());
        token = page.next_page_token;
    }
    println!(
        "- List over gRPC (same query, page 100, paging on): {}",
        lat.line()
    );
    let _ = stop.send(());
    server.await?;
    std::fs::remove_dir_all(&crashed)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------

async fn watch(
    base: &Path,
    watchers: usize,
    change_rate: usize,
    seconds: u64,
    per_message: u32,
) -> anyhow::Result<()> {
    println!(
        "## watch: {watchers} watchers, {change_rate} changes/s for {seconds} s, up to {} changes per message",
        per_message.max(1)
    );
    let dir = fresh_dir(base, "watch")?;
    let (addr, channel, stop, server) = start_server(&dir, |c| c.watch_buffer = 4096).await?;
    // Several HTTP/2 connections, as many independent subscribers would use.
    let mut channels = vec![channel.clone()];
    for _ in 1..8 {
        channels.push(
            Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await?,
        );
    }
    let total = change_rate * seconds as usize;
    let mut readers = Vec::new();
    for w in 0..watchers {
        let mut client = ConnectionStateServiceClient::new(channels[w % channels.len()].clone());
        let mut stream = client
            .watch_connections(pb::WatchConnectionsRequest {
                max_changes_per_message: per_message,
                ..Default::default()
            })
            .await
            .context("watch")?
            .into_inner();
        readers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(total);
            let mut last = 0u64;
            let mut gaps = 0usize;
            while lat.len() < total {
                let changes =
                    match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
                        Ok(Some(Ok(pb::WatchConnectionsResponse {
                            event: Some(pb::watch_connections_response::Event::Change(c)),
                        }))) => vec![c],
                        Ok(Some(Ok(pb::WatchConnectionsResponse {
                            event: Some(pb::watch_connections_response::Event::Changes(b)),
                        }))) => b.changes,
                        Ok(Some(Ok(_))) => continue,
                        Ok(Some(Err(status))) => {
                            eprintln!("watcher {w} ended: {status}");
                            break;
                        }
                        Ok(None) | Err(_) => break,
                    };
                let now = Utc::now();
                for c in changes {
                    let committed = c.commit_time.unwrap();
                    let committed =
                        chrono::DateTime::from_timestamp(committed.seconds, committed.nanos as u32)
                            .unwrap();
                    if last != 0 && c.revision != last + 1 {
                        gaps += 1;
                    }
                    last = c.revision;
                    lat.push((now - committed).to_std().unwrap_or_default());
                }
            }
            (lat, gaps)
        }));
    }
    // The producer: batches every 10 ms to reach the rate.
    let mut ingest = IngestServiceClient::new(channel.clone());
    let per_tick = (change_rate / 100).max(1);
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        ticker.tick().await;
        let n = per_tick.min(total - sent);
        let events = (sent..sent + n)
            .map(|i| pb_connect(client_name(i % 100_000), i as u64 + 1))
            .collect();
        ingest
            .ingest_events(pb::IngestEventsRequest {
                lease_duration: None,
                broker: "bench".into(),
                events,
            })
            .await?;
        sent += n;
    }
    let produced_in = started.elapsed();
    let mut all = Latencies(Vec::with_capacity(total * watchers));
    let mut received = 0usize;
    let mut gaps = 0usize;
    for r in readers {
        let (lat, g) = r.await?;
        received += lat.len();
        gaps += g;
        all.0.extend(lat);
    }
    println!(
        "- produced {total} changes in {:.1} s ({:.0}/s)",
        produced_in.as_secs_f64(),
        rate(total, produced_in)
    );
    println!(
        "- delivered {received} of {} ({} lost), {gaps} revision gaps",
        total * watchers,
        total * watchers - received
    );
    println!("- commit-to-delivery latency: {}", all.line());
    let _ = stop.send(());
    server.await?;
    Ok(())
}
