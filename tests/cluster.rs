//! A cluster of three real nodes on a real three-server NATS JetStream
//! cluster, driven from outside: MQTT clients over TCP (3.1.1 and 5.0), the
//! gRPC API and the REST gateway. Every node holds the same records, logs
//! and revisions; a node or a NATS server killed with SIGKILL in the middle
//! of a connect storm loses nothing a client was told; takeovers across
//! nodes are recorded once; a watch resumes on another node.
//!
//! The tests run one at a time (each starts six servers, the machine may
//! have two cores), each bounded by [`LIMIT`].

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{
    cluster::ClusterHarness, cluster::Node, eventually, mqtt_wire, mqtt_wire::read_packet,
};
use connstate::pb::{self, watch_connections_response::Event};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Bound of each test, once it has its turn.
const LIMIT: Duration = Duration::from_secs(60);

/// Bound of one MQTT exchange or one wait for the cluster to agree.
const STEP: Duration = Duration::from_secs(20);

/// The close code of a node's connection recorded when the node was lost.
const NODE_LOST: u32 = 97;

/// How soon every node acknowledges connects again after a NATS server of
/// three was killed.
const RESUME_LIMIT: Duration = Duration::from_secs(15);

/// The close code of a takeover.
const TAKEOVER: u32 = 288;

/// Runs the tests of this file one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `test` alone, within [`LIMIT`].
async fn bounded(test: impl std::future::Future<Output = ()>) {
    let _turn = ONE_AT_A_TIME.lock().await;
    tokio::time::timeout(LIMIT, test)
        .await
        .expect("the test ends within its limit");
}

// ---------------------------------------------------------------------------
// MQTT over TCP
// ---------------------------------------------------------------------------

fn connect_packet(client_id: &str, v5: bool) -> Vec<u8> {
    mqtt_wire::connect(client_id, v5, None)
}

/// An MQTT client's connection.
struct Mqtt {
    stream: TcpStream,
    v5: bool,
}

impl Mqtt {
    /// Connects `client_id` to `addr`: the connection and the CONNACK's
    /// return (3.1.1) or reason (5) code, or an error when the connection
    /// closed or failed first.
    async fn connect(addr: SocketAddr, client_id: &str, v5: bool) -> std::io::Result<(Mqtt, u8)> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(&connect_packet(client_id, v5)).await?;
        let (first, body) = tokio::time::timeout(STEP, read_packet(&mut stream))
            .await
            .unwrap_or_else(|_| panic!("{client_id}: no CONNACK and no close within {STEP:?}"))?;
        assert_eq!(first, 0x20, "{client_id}: CONNACK expected");
        assert!(body.len() >= 2, "{client_id}: CONNACK {body:?}");
        Ok((Mqtt { stream, v5 }, body[1]))
    }

    /// Connects and expects success.
    async fn connected(addr: SocketAddr, client_id: &str, v5: bool) -> Mqtt {
        let (mqtt, code) = Mqtt::connect(addr, client_id, v5)
            .await
            .unwrap_or_else(|e| panic!("{client_id}: connect: {e}"));
        assert_eq!(code, 0, "{client_id}: CONNACK code");
        mqtt
    }

    /// A normal DISCONNECT, then waits for the server to close.
    async fn disconnect(mut self) {
        let packet: &[u8] = if self.v5 { &[0xE0, 1, 0] } else { &[0xE0, 0] };
        self.stream.write_all(packet).await.expect("DISCONNECT");
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(STEP, self.stream.read_to_end(&mut rest)).await;
    }

    /// The next packet the server sends (panics on a timeout).
    async fn next_packet(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        tokio::time::timeout(STEP, read_packet(&mut self.stream))
            .await
            .expect("a packet within the step")
    }
}

// ---------------------------------------------------------------------------
// gRPC reads
// ---------------------------------------------------------------------------

/// The revision node `node` stands at.
async fn revision(node: &Node) -> u64 {
    node.states()
        .list_connection_states(pb::ListConnectionStatesRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("list states")
        .into_inner()
        .revision
}

/// Every record whose client id starts with `prefix`, by client id.
async fn states_under(node: &Node, prefix: &str) -> BTreeMap<String, pb::ConnectionState> {
    common::states_under(node.channel(), prefix).await
}

/// Every log entry of every client, in the order the node lists them.
async fn all_logs(node: &Node) -> Vec<pb::LogEntry> {
    common::all_logs(node.channel()).await
}

/// The log entries of each client, oldest first.
fn logs_by_client(entries: &[pb::LogEntry]) -> HashMap<&str, Vec<&pb::LogEntry>> {
    let mut by_client: HashMap<&str, Vec<&pb::LogEntry>> = HashMap::new();
    for e in entries {
        by_client.entry(&e.client_id).or_default().push(e);
    }
    for entries in by_client.values_mut() {
        entries.sort_by_key(|e| e.revision);
    }
    by_client
}

/// A watch of every change after `from`.
async fn watch_from(node: &Node, from: u64) -> tonic::Streaming<pb::WatchConnectionsResponse> {
    node.states()
        .watch_connections(pb::WatchConnectionsRequest {
            start_revision: Some(from),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{}: watch from {from}: {e}", node.id))
        .into_inner()
}

/// Reads `watch` until it has delivered revision `to`; asserts that the
/// revisions run on from `from` without a gap or a repeat.
async fn read_watch(
    watch: &mut tonic::Streaming<pb::WatchConnectionsResponse>,
    from: u64,
    to: u64,
) -> Vec<pb::Change> {
    let mut changes: Vec<pb::Change> = Vec::new();
    while changes.last().map_or(from, |c| c.revision) < to {
        let message = tokio::time::timeout(STEP, watch.message())
            .await
            .expect("the watch goes on")
            .expect("the watch stream")
            .expect("the watch reaches the revision");
        let batch = match message.event {
            Some(Event::Change(change)) => vec![change],
            Some(Event::Changes(batch)) => batch.changes,
            _ => continue,
        };
        for change in batch {
            let expected = changes.last().map_or(from, |c| c.revision) + 1;
            assert_eq!(change.revision, expected, "the watch has no gap, no repeat");
            changes.push(change);
        }
    }
    changes
}

/// A watch read in the background as changes come, so that the server
/// never holds a backlog for it.
struct Watcher {
    task: tokio::task::JoinHandle<()>,
    changes: Arc<Mutex<Vec<pb::Change>>>,
}

impl Watcher {
    async fn start(node: &Node, from: u64) -> Watcher {
        let mut watch = watch_from(node, from).await;
        let changes = Arc::new(Mutex::new(Vec::new()));
        let sink = changes.clone();
        let task = tokio::spawn(async move {
            let mut at = from;
            loop {
                let message = watch
                    .message()
                    .await
                    .expect("the watch stream")
                    .expect("the watch goes on");
                let batch = match message.event {
                    Some(Event::Change(change)) => vec![change],
                    Some(Event::Changes(batch)) => batch.changes,
                    _ => continue,
                };
                for change in batch {
                    assert_eq!(change.revision, at + 1, "the watch has no gap, no repeat");
                    at = change.revision;
                    sink.lock().unwrap().push(change);
                }
            }
        });
        Watcher { task, changes }
    }

    /// Waits until the watch has delivered revision `to`; every change.
    async fn until(self, to: u64) -> Vec<pb::Change> {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let at = self
                .changes
                .lock()
                .unwrap()
                .last()
                .map_or(0, |c| c.revision);
            if at >= to {
                break;
            }
            if self.task.is_finished() {
                self.task.await.expect("the watcher");
                panic!("the watch ended at revision {at}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the watch stands at {at}, not {to}, after {STEP:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.task.abort();
        std::mem::take(&mut *self.changes.lock().unwrap())
    }
}

/// Waits until every running node of `harness` stands at the same revision
/// and returns it.
async fn agreed_revision(harness: &ClusterHarness) -> u64 {
    eventually(STEP, || async {
        let mut revisions = Vec::new();
        for node in harness.nodes().iter().filter(|n| n.is_running()) {
            revisions.push(revision(node).await);
        }
        revisions
            .windows(2)
            .all(|w| w[0] == w[1])
            .then(|| revisions[0])
    })
    .await
}

/// Waits until `check` holds of the records under `prefix` on `node`.
async fn wait_states(
    node: &Node,
    prefix: &str,
    what: &str,
    check: impl Fn(&BTreeMap<String, pb::ConnectionState>) -> bool,
) -> BTreeMap<String, pb::ConnectionState> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let states = states_under(node, prefix).await;
        if check(&states) {
            return states;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: {what} not seen within {STEP:?}",
            node.id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn connected_status() -> i32 {
    pb::ConnectionStatus::Connected as i32
}

fn disconnected_status() -> i32 {
    pb::ConnectionStatus::Disconnected as i32
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_logs_and_watch_agree_on_every_node() {
    bounded(async {
        const CLIENTS: usize = 30;
        const DROPPED: usize = 7;
        let prefix = "d:local:agree:";
        let harness = ClusterHarness::start(3).await;
        let client = |k: usize| format!("{prefix}c{k}");
        // Clients on every node, both protocols.
        let mut connections = Vec::new();
        for k in 0..CLIENTS {
            let node = harness.node(k % 3);
            connections.push(Some(
                Mqtt::connected(node.mqtt, &client(k), k.is_multiple_of(2)).await,
            ));
        }
        // Every fifth disconnects normally; one drops its socket.
        for (k, connection) in connections.iter_mut().enumerate() {
            if k.is_multiple_of(5) {
                connection.take().unwrap().disconnect().await;
            }
        }
        drop(connections[DROPPED].take());
        let expected = |k: usize| {
            if k.is_multiple_of(5) || k == DROPPED {
                disconnected_status()
            } else {
                connected_status()
            }
        };
        for node in harness.nodes() {
            wait_states(node, prefix, "every client's last change", |states| {
                states.len() == CLIENTS
                    && (0..CLIENTS).all(|k| {
                        states
                            .get(&client(k))
                            .is_some_and(|s| s.connection_status == expected(k))
                    })
            })
            .await;
        }
        let revision = agreed_revision(&harness).await;
        // A change per connect and per disconnect, none other.
        assert_eq!(revision, CLIENTS as u64 + 7);

        // The records, logs and change feed of every node.
        let mut views = Vec::new();
        for node in harness.nodes() {
            let mut states = Vec::new();
            for k in 0..CLIENTS {
                let state = node
                    .states()
                    .get_connection_state(pb::GetConnectionStateRequest {
                        client_id: client(k),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{}: get {}: {e}", node.id, client(k)))
                    .into_inner();
                assert_eq!(state.broker, harness.node(k % 3).broker(), "{}", client(k));
                states.push(state);
            }
            let logs = all_logs(node).await;
            let mut watch = watch_from(node, 0).await;
            let feed = read_watch(&mut watch, 0, revision).await;
            views.push((states, logs, feed));
        }
        let (states, logs, feed) = &views[0];
        // What node1 says is what happened.
        let by_client = logs_by_client(logs);
        for k in 0..CLIENTS {
            let id = client(k);
            let kinds: Vec<i32> = by_client[id.as_str()].iter().map(|e| e.kind).collect();
            let want = if expected(k) == connected_status() {
                vec![pb::LogKind::Connected as i32]
            } else {
                vec![
                    pb::LogKind::Connected as i32,
                    pb::LogKind::Disconnected as i32,
                ]
            };
            assert_eq!(kinds, want, "{id}: its log");
        }
        assert_eq!(
            states[DROPPED].last_disconnect_initiator,
            pb::DisconnectInitiator::Network as i32
        );
        assert_eq!(
            states[5].last_disconnect_initiator,
            pb::DisconnectInitiator::Client as i32
        );
        assert_eq!(feed.len() as u64, revision);
        for (i, (other_states, other_logs, other_feed)) in views.iter().enumerate().skip(1) {
            let name = &harness.node(i).id;
            for (a, b) in states.iter().zip(other_states) {
                assert_eq!(a, b, "{}: node1 and {name} differ", a.client_id);
            }
            assert_eq!(
                logs.len(),
                other_logs.len(),
                "log entries on node1 and {name}"
            );
            for (a, b) in logs.iter().zip(other_logs) {
                assert_eq!(a, b, "a log entry on node1 and {name}");
            }
            assert_eq!(feed.len(), other_feed.len(), "changes on node1 and {name}");
            for (a, b) in feed.iter().zip(other_feed) {
                assert_eq!(a, b, "change {} on node1 and {name}", a.revision);
            }
        }
    })
    .await;
}

/// What a connect storm against one node saw.
#[derive(Default)]
struct StormSide {
    /// Clients that got CONNACK 0, in order.
    acknowledged: Vec<String>,
    /// Connects refused with a CONNACK code.
    refused: usize,
    /// Connections held open.
    held: Vec<Mqtt>,
}

/// Connectors connecting new clients to one node until `stop`, each held
/// open; a connector of a node that is gone ends.
struct Storm {
    stop: Arc<AtomicBool>,
    progress: Vec<Arc<AtomicUsize>>,
    tasks: Vec<(usize, tokio::task::JoinHandle<StormSide>)>,
}

impl Storm {
    /// `connectors` connectors per node of `nodes` (indexes of `harness`);
    /// a connection closed before its CONNACK is a failure unless its node
    /// is one of `mortal` (to be killed).
    fn start(
        harness: &ClusterHarness,
        nodes: &[usize],
        mortal: &[usize],
        connectors: usize,
        prefix: &str,
    ) -> Storm {
        let stop = Arc::new(AtomicBool::new(false));
        let progress: Vec<Arc<AtomicUsize>> = (0..harness.nodes().len())
            .map(|_| Arc::new(AtomicUsize::new(0)))
            .collect();
        let mut tasks = Vec::new();
        for &n in nodes {
            for c in 0..connectors {
                let addr = harness.node(n).mqtt;
                let stop = stop.clone();
                let progress = progress[n].clone();
                let prefix = format!("{prefix}n{}c{c}-", n + 1);
                let mortal = mortal.contains(&n);
                tasks.push((
                    n,
                    tokio::spawn(async move {
                        let mut side = StormSide::default();
                        let mut k = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let id = format!("{prefix}{k}");
                            k += 1;
                            let v5 = k.is_multiple_of(2);
                            match Mqtt::connect(addr, &id, v5).await {
                                Ok((mqtt, 0)) => {
                                    side.acknowledged.push(id);
                                    side.held.push(mqtt);
                                    progress.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok((_, code)) => {
                                    let unavailable = if v5 { 0x88 } else { 3 };
                                    assert_eq!(code, unavailable, "{id}: CONNACK");
                                    side.refused += 1;
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                                // The node is gone (or going).
                                Err(_) if mortal => break,
                                Err(e) => panic!("{id}: closed without a CONNACK: {e}"),
                            }
                        }
                        side
                    }),
                ));
            }
        }
        Storm {
            stop,
            progress,
            tasks,
        }
    }

    fn acknowledged(&self, node: usize) -> usize {
        self.progress[node].load(Ordering::Relaxed)
    }

    /// Waits until node `node` has acknowledged `count` connects in all.
    async fn wait_for(&self, node: usize, count: usize) {
        eventually(STEP, || async {
            (self.acknowledged(node) >= count).then_some(())
        })
        .await;
    }

    /// Stops the connectors: what each node's saw.
    async fn finish(mut self) -> HashMap<usize, StormSide> {
        self.stop.store(true, Ordering::Relaxed);
        let mut sides: HashMap<usize, StormSide> = HashMap::new();
        for (n, task) in std::mem::take(&mut self.tasks) {
            let side = task.await.expect("a connector");
            let all = sides.entry(n).or_default();
            all.acknowledged.extend(side.acknowledged);
            all.refused += side.refused;
            all.held.extend(side.held);
        }
        sides
    }
}

/// A test that fails mid-storm ends its connectors before its nodes go.
impl Drop for Storm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (_, task) in &self.tasks {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_in_a_connect_storm_loses_nothing_acknowledged() {
    bounded(async {
        let prefix = "d:local:kill:";
        let mut harness = ClusterHarness::start(3).await;
        // node3 watches everything from the start, read as it comes.
        let watcher = Watcher::start(harness.node(2), 0).await;
        let storm = Storm::start(&harness, &[0, 1], &[0], 4, prefix);
        storm.wait_for(0, 60).await;
        harness.kill9(0);
        let at_kill = storm.acknowledged(1);
        // node2 goes on taking clients while node1's lease lapses.
        storm.wait_for(1, at_kill + 60).await;
        let mut sides = storm.finish().await;
        let on_node1 = &sides[&0].acknowledged;
        let on_node2 = &sides[&1].acknowledged;
        println!(
            "CONNACK 0: {} on node1, {} on node2 ({} refused)",
            on_node1.len(),
            on_node2.len(),
            sides[&1].refused
        );

        // node1's clients are recorded lost on node2 and node3, and every
        // acknowledged client is recorded.
        let node1_broker = harness.node(0).broker();
        let lost = |s: &pb::ConnectionState| {
            s.connection_status == disconnected_status()
                && s.last_close_code == Some(NODE_LOST)
                && s.last_disconnect_initiator == pb::DisconnectInitiator::Network as i32
        };
        for survivor in [1, 2] {
            let node = harness.node(survivor);
            let states = wait_states(node, prefix, "node1's clients lost", |states| {
                states
                    .values()
                    .filter(|s| s.broker == node1_broker)
                    .all(lost)
                    && on_node1.iter().all(|id| states.contains_key(id))
            })
            .await;
            for id in on_node1 {
                let state = &states[id];
                assert_eq!(state.broker, node1_broker, "{id}");
                assert!(lost(state), "{id}: {state:?}");
                assert!(
                    state.last_disconnect_reason.contains("node1 was lost"),
                    "{id}: {}",
                    state.last_disconnect_reason
                );
            }
            for id in on_node2 {
                let state = states
                    .get(id)
                    .unwrap_or_else(|| panic!("{}: {id} acknowledged and lost", node.id));
                assert_eq!(state.connection_status, connected_status(), "{id}");
                assert_eq!(state.broker, harness.node(1).broker(), "{id}");
            }
        }
        let revision = agreed_revision(&harness).await;
        for survivor in [1, 2] {
            let node = harness.node(survivor);
            let logs = all_logs(node).await;
            let by_client = logs_by_client(&logs);
            let states = states_under(node, prefix).await;
            for state in states.values().filter(|s| s.broker == node1_broker) {
                let losses = by_client[state.client_id.as_str()]
                    .iter()
                    .filter(|e| e.close_code == Some(NODE_LOST))
                    .count();
                assert_eq!(
                    losses, 1,
                    "{}: {}: losses recorded",
                    node.id, state.client_id
                );
                let kinds: Vec<i32> = by_client[state.client_id.as_str()]
                    .iter()
                    .map(|e| e.kind)
                    .collect();
                assert_eq!(
                    kinds,
                    [
                        pb::LogKind::Connected as i32,
                        pb::LogKind::Disconnected as i32
                    ],
                    "{}: {}",
                    node.id,
                    state.client_id
                );
            }
        }
        // node3's watch saw every revision once, in order.
        let feed = watcher.until(revision).await;
        assert_eq!(feed.len() as u64, revision);
        let lost_changes = feed
            .iter()
            .filter(|c| {
                c.log_entry
                    .as_ref()
                    .is_some_and(|e| e.close_code == Some(NODE_LOST))
            })
            .count();
        let node1_records = states_under(harness.node(2), prefix)
            .await
            .values()
            .filter(|s| s.broker == node1_broker)
            .count();
        assert_eq!(lost_changes, node1_records, "one loss change per client");

        // node1 comes back on its data and ports and agrees with node3;
        // node2's clients stay connected meanwhile.
        drop(sides.remove(&0));
        harness.restart(0, true).await;
        // Its new run finds nothing of the old one left to end.
        assert_eq!(agreed_revision(&harness).await, revision);
        assert_eq!(
            states_under(harness.node(0), "").await,
            states_under(harness.node(2), "").await,
            "node1 after its restart and node3 at revision {revision}"
        );
        drop(sides);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_killed_in_a_storm_loses_nothing() {
    bounded(async {
        let prefix = "d:local:nats:";
        let mut harness = ClusterHarness::start(3).await;
        // The server leading the log stream is the one killed.
        let js = async_nats::jetstream::new(harness.nats.client().await.expect("NATS"));
        let leader = js
            .get_stream("CONNSTATE")
            .await
            .expect("the log stream")
            .get_info()
            .await
            .expect("stream info")
            .cluster
            .and_then(|c| c.leader)
            .expect("a stream leader");
        let victim = (0..3)
            .find(|&i| harness.nats.name(i) == leader)
            .expect("the leader is one of the servers");
        let lease_leader = js
            .get_stream("KV_CONNSTATE_nodes")
            .await
            .expect("the lease bucket")
            .get_info()
            .await
            .expect("stream info")
            .cluster
            .and_then(|c| c.leader);
        println!(
            "killing {leader}, leader of the log; the lease bucket's leader: {lease_leader:?}"
        );
        drop(js);

        let storm = Storm::start(&harness, &[0, 1, 2], &[], 3, prefix);
        for n in 0..3 {
            storm.wait_for(n, 20).await;
        }
        harness.nats.kill9(victim);
        let killed = tokio::time::Instant::now();
        let at_kill: Vec<usize> = (0..3).map(|n| storm.acknowledged(n)).collect();
        // Service goes on: each node acknowledges new connects soon.
        for (n, &before) in at_kill.iter().enumerate() {
            storm.wait_for(n, before + 1).await;
            println!(
                "node{}: a new connect acknowledged {:?} after the kill",
                n + 1,
                killed.elapsed()
            );
        }
        assert!(
            killed.elapsed() < RESUME_LIMIT,
            "service resumed {:?} after the kill",
            killed.elapsed()
        );
        for (n, &before) in at_kill.iter().enumerate() {
            storm.wait_for(n, before + 20).await;
        }
        let sides = storm.finish().await;
        for node in harness.nodes() {
            let states = wait_states(node, prefix, "every acknowledged client", |states| {
                sides
                    .values()
                    .flat_map(|s| &s.acknowledged)
                    .all(|id| states.contains_key(id))
            })
            .await;
            // Every node lived: no client was lost with one, and every
            // acknowledged client is still connected.
            let lost: Vec<&String> = states
                .values()
                .filter(|s| s.last_close_code == Some(NODE_LOST))
                .map(|s| &s.client_id)
                .collect();
            assert!(
                lost.is_empty(),
                "{}: {} clients recorded lost with a live node, e.g. {:?}",
                node.id,
                lost.len(),
                lost.first()
            );
            for id in sides.values().flat_map(|s| &s.acknowledged) {
                assert_eq!(
                    states[id].connection_status,
                    connected_status(),
                    "{}: {id}",
                    node.id
                );
            }
        }
        for (n, side) in &sides {
            println!(
                "node{}: {} CONNACK 0, {} refused",
                n + 1,
                side.acknowledged.len(),
                side.refused
            );
        }
        agreed_revision(&harness).await;
        let node1 = states_under(harness.node(0), prefix).await;
        for node in &harness.nodes()[1..] {
            assert_eq!(
                node1,
                states_under(node, prefix).await,
                "node1 and {}",
                node.id
            );
        }
        drop(sides);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_across_nodes_is_recorded_once() {
    bounded(async {
        let id = "d:local:takeover:x";
        let harness = ClusterHarness::start(3).await;
        let mut first = Mqtt::connected(harness.node(0).mqtt, id, true).await;
        // node2 knows of the first connection before the second comes.
        wait_states(harness.node(1), id, "the first connection", |states| {
            states
                .get(id)
                .is_some_and(|s| s.connection_status == connected_status())
        })
        .await;
        let second = Mqtt::connected(harness.node(1).mqtt, id, true).await;
        let (kind, body) = first.next_packet().await.expect("DISCONNECT of node1");
        assert_eq!(kind, 0xE0, "a DISCONNECT");
        assert_eq!(body.first(), Some(&0x8E), "session taken over: {body:?}");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(STEP, first.stream.read_to_end(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(0))), "node1 closes the connection");

        let revision = agreed_revision(&harness).await;
        for node in harness.nodes() {
            let state = node
                .states()
                .get_connection_state(pb::GetConnectionStateRequest {
                    client_id: id.into(),
                })
                .await
                .expect("the state")
                .into_inner();
            assert_eq!(
                state.revision, revision,
                "{}: the takeover is the last change",
                node.id
            );
            assert_eq!(state.broker, harness.node(1).broker(), "{}", node.id);
            assert_eq!(state.connection_status, connected_status(), "{}", node.id);
            let counters = state.counters.expect("counters");
            assert_eq!(counters.takeovers, 1, "{}: {counters:?}", node.id);
            assert_eq!(counters.connects, 2, "{}: {counters:?}", node.id);
            let logs = node
                .states()
                .list_connection_logs(pb::ListConnectionLogsRequest {
                    client_id: id.into(),
                    ..Default::default()
                })
                .await
                .expect("logs")
                .into_inner()
                .entries;
            let takeovers: Vec<&pb::LogEntry> = logs
                .iter()
                .filter(|e| e.close_code == Some(TAKEOVER))
                .collect();
            assert_eq!(takeovers.len(), 1, "{}: {logs:#?}", node.id);
            assert_eq!(takeovers[0].kind, pb::LogKind::Disconnected as i32);
            assert_eq!(takeovers[0].reason_code, Some(0x8E));
            assert_eq!(
                takeovers[0].initiator,
                pb::DisconnectInitiator::Server as i32
            );
            assert_eq!(
                logs.len(),
                3,
                "{}: connected, taken over, connected",
                node.id
            );
        }
        second.disconnect().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_on_another_node() {
    bounded(async {
        let prefix = "d:local:resume:";
        let harness = ClusterHarness::start(3).await;
        let start = revision(harness.node(0)).await;
        let mut watch = watch_from(harness.node(0), start).await;
        let mut held = Vec::new();
        for k in 0..10 {
            let node = harness.node([0, 2][k % 2]);
            held.push(
                Mqtt::connected(node.mqtt, &format!("{prefix}a{k}"), k.is_multiple_of(3)).await,
            );
        }
        // Some of it read on node1, then the watch is dropped.
        let seen = read_watch(&mut watch, start, start + 10).await;
        assert!(seen.iter().all(|c| c.client_id.starts_with(prefix)));
        let last = seen.last().unwrap().revision;
        drop(watch);

        // More traffic, on every node.
        for k in 0..10 {
            let node = harness.node(k % 3);
            held.push(
                Mqtt::connected(node.mqtt, &format!("{prefix}b{k}"), k.is_multiple_of(2)).await,
            );
        }
        // Every third disconnects; the others stay.
        let mut disconnects = 0;
        let mut staying = Vec::new();
        for (i, connection) in held.into_iter().enumerate() {
            if i.is_multiple_of(3) {
                connection.disconnect().await;
                disconnects += 1;
            } else {
                staying.push(connection);
            }
        }
        let end = last + 10 + disconnects;
        wait_states(harness.node(1), prefix, "the traffic", |states| {
            states.values().map(|s| s.revision).max() == Some(end)
        })
        .await;

        // Resumed on node2: what node1 would give, from where it stopped.
        let mut resumed = watch_from(harness.node(1), last).await;
        let on_node2 = read_watch(&mut resumed, last, end).await;
        let mut again = watch_from(harness.node(0), last).await;
        let on_node1 = read_watch(&mut again, last, end).await;
        assert_eq!(on_node2.first().map(|c| c.revision), Some(last + 1));
        assert_eq!(
            on_node2, on_node1,
            "the changes after {last} on node2 and node1"
        );
        let connects = on_node2
            .iter()
            .filter(|c| c.kind == pb::ChangeKind::Connected as i32)
            .count();
        assert_eq!(connects, 10);
        assert!(on_node2.iter().all(|c| c.client_id.starts_with(prefix)));
        drop(staying);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Ingest through the cluster: read your writes, page tokens, leases, joining
// ---------------------------------------------------------------------------

fn ingest_connect(client_id: &str, connection_id: u64) -> pb::LifecycleEvent {
    common::connected(client_id, connection_id, connection_id as i64)
}

/// IngestEvents on `node` as `broker` (with a lease, when given); the
/// revision answered.
async fn ingest(
    node: &Node,
    broker: &str,
    lease_secs: Option<i64>,
    events: Vec<pb::LifecycleEvent>,
) -> u64 {
    pb::ingest_service_client::IngestServiceClient::new(node.channel())
        .ingest_events(pb::IngestEventsRequest {
            broker: broker.into(),
            lease_duration: lease_secs.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
            events,
        })
        .await
        .unwrap_or_else(|e| panic!("{}: ingest: {e}", node.id))
        .into_inner()
        .revision
}

/// A page of two of the records of the read-your-writes test.
async fn ryw_page(node: &Node, page_token: String) -> pb::ListConnectionStatesResponse {
    node.states()
        .list_connection_states(pb::ListConnectionStatesRequest {
            filter: Some(pb::ConnectionStateFilter {
                client_id_prefix: "d:local:ryw:".into(),
                ..Default::default()
            }),
            page_size: 2,
            page_token,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{}: list: {e}", node.id))
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_writes_of_other_nodes_and_page_tokens_move_between_nodes() {
    bounded(async {
        let harness = ClusterHarness::start(3).await;
        let (a, c) = (harness.node(0), harness.node(2));
        for round in 0..5u64 {
            let id = format!("d:local:ryw:c{round}");
            let written = ingest(a, "edge", None, vec![ingest_connect(&id, round + 1)]).await;
            // At once on another node, asking for the write's revision.
            let mut request = tonic::Request::new(pb::GetConnectionStateRequest {
                client_id: id.clone(),
            });
            request.metadata_mut().insert(
                "x-connstate-min-revision",
                written.to_string().parse().unwrap(),
            );
            let answer = c
                .states()
                .get_connection_state(request)
                .await
                .unwrap_or_else(|e| panic!("{id} on node3 after revision {written}: {e}"));
            let reflected: u64 = answer
                .metadata()
                .get("x-connstate-revision")
                .expect("the revision the answer reflects")
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(reflected >= written);
            assert_eq!(
                answer.into_inner().revision,
                written,
                "the same revision on node3"
            );
        }
        // A page token of node1, used on node2: the same next page.
        let page1 = ryw_page(a, String::new()).await;
        assert_eq!(page1.states.len(), 2);
        assert!(!page1.next_page_token.is_empty());
        let on_a = ryw_page(a, page1.next_page_token.clone()).await;
        let on_b = ryw_page(harness.node(1), page1.next_page_token.clone()).await;
        assert_eq!(
            on_a.states, on_b.states,
            "node2 reads node1's page token alike"
        );
        assert_eq!(on_b.states.len(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brokers_lease_lapses_once_whichever_node_it_renewed_through() {
    bounded(async {
        let harness = ClusterHarness::start(3).await;
        let prefix = "d:local:lease:";
        // "kept" renews through node2 and node3 in turn; "silent" goes quiet.
        ingest(
            harness.node(0),
            "kept",
            Some(2),
            (0..3)
                .map(|i| ingest_connect(&format!("{prefix}k{i}"), 1))
                .collect(),
        )
        .await;
        ingest(
            harness.node(0),
            "silent",
            Some(2),
            (0..3)
                .map(|i| ingest_connect(&format!("{prefix}s{i}"), 1))
                .collect(),
        )
        .await;
        for round in 0..10 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let node = harness.node(1 + round % 2);
            pb::ingest_service_client::IngestServiceClient::new(node.channel())
                .renew_broker_lease(pb::RenewBrokerLeaseRequest {
                    broker: "kept".into(),
                    lease_duration: Some(prost_types::Duration {
                        seconds: 2,
                        nanos: 0,
                    }),
                })
                .await
                .unwrap_or_else(|e| panic!("{}: renew: {e}", node.id));
        }
        // Five seconds on: the silent broker's clients are disconnected,
        // the kept one's are not, alike on every node.
        for node in harness.nodes() {
            let states = wait_states(node, prefix, "the silent broker's clients lost", |states| {
                states.len() == 6
                    && states
                        .iter()
                        .filter(|(id, _)| id.contains(":s"))
                        .all(|(_, s)| s.connection_status == disconnected_status())
            })
            .await;
            for (id, state) in &states {
                if id.contains(":k") {
                    assert_eq!(
                        state.connection_status,
                        connected_status(),
                        "{id} of the renewed broker"
                    );
                }
            }
        }
        for node in harness.nodes() {
            let logs = all_logs(node).await;
            let by_client = logs_by_client(&logs);
            for i in 0..3 {
                let id = format!("{prefix}s{i}");
                let lapses = by_client[id.as_str()]
                    .iter()
                    .filter(|e| e.close_code == Some(96))
                    .count();
                assert_eq!(lapses, 1, "{}: {id} recorded lost once", node.id);
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_joins_after_the_log_was_trimmed() {
    bounded(async {
        let mut harness = ClusterHarness::start_with(
            3,
            &["--cluster-snapshot-interval", "1s", "--feed-max-age", "1s"],
        )
        .await;
        let prefix = "d:local:join:";
        for batch in 0..20u64 {
            let events = (0..50)
                .map(|i| ingest_connect(&format!("{prefix}c{batch}-{i}"), batch + 1))
                .collect();
            ingest(harness.node((batch % 3) as usize), "edge", None, events).await;
        }
        // The log is trimmed behind a snapshot.
        let js = async_nats::jetstream::new(harness.nats.client().await.expect("NATS"));
        eventually(STEP, || {
            let js = js.clone();
            async move {
                let mut stream = js.get_stream("CONNSTATE").await.ok()?;
                let info = stream.info().await.ok()?;
                (info.state.first_sequence > 2).then_some(())
            }
        })
        .await;
        // More after the snapshot, then a fourth node with an empty folder.
        ingest(
            harness.node(0),
            "edge",
            None,
            vec![ingest_connect(&format!("{prefix}late"), 99)],
        )
        .await;
        let fourth = harness.add_node().await;
        let reference = agreed_revision(&harness).await;
        assert_eq!(revision(harness.node(fourth)).await, reference);
        let expected = states_under(harness.node(0), prefix).await;
        assert_eq!(expected.len(), 1001);
        assert_eq!(
            states_under(harness.node(fourth), prefix).await,
            expected,
            "node4 holds every record node1 holds"
        );
        let log = std::fs::read_to_string(&harness.node(fourth).log).unwrap_or_default();
        assert!(
            log.contains("new node started from the cluster's newest snapshot"),
            "node4 started from a snapshot"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_nats_is_not_ready_and_refuses_connects() {
    bounded(async {
        let mut harness = ClusterHarness::start(3).await;
        for i in 0..3 {
            harness.nats.kill9(i);
        }
        // Not ready, saying why; CONNECTs refused as unrecordable.
        let reason = eventually(STEP, || async {
            let (status, body) = harness.ready(0).await;
            (status == 503).then_some(body)
        })
        .await;
        assert!(reason.contains("NATS"), "{reason}");
        let mqtt = harness.node(0).mqtt;
        let (_, v5) = Mqtt::connect(mqtt, "d:local:cut:v5", true)
            .await
            .expect("an answer");
        assert_eq!(v5, 0x88, "v5: server unavailable");
        let (_, v3) = Mqtt::connect(mqtt, "d:local:cut:v3", false)
            .await
            .expect("an answer");
        assert_eq!(v3, 3, "3.1.1: server unavailable");
        // NATS back: ready again, and connects are recorded.
        for i in 0..3 {
            harness.nats.restart(i).await;
        }
        harness.wait_ready(0).await;
        let deadline = tokio::time::Instant::now() + STEP;
        let accepted = loop {
            if let Ok((connection, 0)) = Mqtt::connect(mqtt, "d:local:cut:back", true).await {
                break connection;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no connect accepted after NATS came back"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        wait_states(
            harness.node(2),
            "d:local:cut:",
            "the connect after NATS came back",
            |s| {
                s.get("d:local:cut:back")
                    .is_some_and(|s| s.connection_status == connected_status())
                    && s.len() == 1
            },
        )
        .await;
        drop(accepted);
    })
    .await;
}
