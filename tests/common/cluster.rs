//! A connstate cluster on loopback: a three-server NATS JetStream cluster
//! ([`NatsCluster`]) and `n` real `connstate serve` processes (`node1`,
//! `node2`, ...) joined to it, each on its own data folder and free ports.
//!
//! Every node runs under the same guard as the NATS servers (see
//! [`super::nats::GUARD`]): a line on a pipe from this process kills it, and
//! so does the end of this process, however it ends. Dropping the harness
//! kills every node, then every NATS server; when a test panics, the tail of
//! each node's log is printed first, and the folder of the node logs and
//! data is kept.

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader, Write as _},
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use connstate::pb::connection_state_service_client::ConnectionStateServiceClient;
use tonic::transport::Channel;

use super::nats::{GUARD, NatsCluster, tail};

/// How long a node may take to announce its listeners and to become ready.
const START_LIMIT: Duration = Duration::from_secs(30);

/// The lease of every node: a killed node is declared lost this long after
/// its last renewal.
pub const LEASE: &str = "3s";

/// One node's process and addresses.
pub struct Node {
    pub id: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    process: Option<(Child, ChildStdin)>,
    pub grpc: SocketAddr,
    pub rest: SocketAddr,
    pub mqtt: SocketAddr,
    channel: Channel,
}

impl Node {
    /// A gRPC client of this node.
    pub fn states(&self) -> ConnectionStateServiceClient<Channel> {
        ConnectionStateServiceClient::new(self.channel.clone())
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// `http://127.0.0.1:PORT` of the REST gateway.
    pub fn rest_url(&self) -> String {
        format!("http://{}", self.rest)
    }

    /// The broker name of this node's embedded broker.
    pub fn broker(&self) -> String {
        format!("embedded@{}", self.id)
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }
}

/// A NATS cluster of three and connstate nodes joined to it.
pub struct ClusterHarness {
    pub nats: NatsCluster,
    nodes: Vec<Node>,
    /// Flags every node gets besides the harness's own.
    extra: Vec<String>,
    _dir: tempfile::TempDir,
}

/// What one start of a node printed: its listeners.
struct Announced {
    grpc: SocketAddr,
    rest: SocketAddr,
    mqtt: SocketAddr,
}

impl ClusterHarness {
    /// Starts NATS (three servers) and `n` nodes, and waits until every
    /// node's `/ready` answers 200.
    pub async fn start(n: usize) -> ClusterHarness {
        ClusterHarness::start_with(n, &[]).await
    }

    /// [`ClusterHarness::start`], every node with `extra` flags.
    pub async fn start_with(n: usize, extra: &[&str]) -> ClusterHarness {
        let nats = NatsCluster::start(3).await;
        let dir = tempfile::Builder::new()
            .prefix("connstate-cluster-")
            .tempdir()
            .expect("temp dir");
        let mut harness = ClusterHarness {
            nats,
            nodes: Vec::with_capacity(n),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _dir: dir,
        };
        for _ in 0..n {
            harness.spawn_node().await;
        }
        for i in 0..n {
            harness.wait_ready(i).await;
        }
        harness
    }

    /// Starts one more node (`node{n+1}`) with an empty data folder and
    /// waits until it is ready; returns its index.
    pub async fn add_node(&mut self) -> usize {
        let i = self.spawn_node().await;
        self.wait_ready(i).await;
        i
    }

    async fn spawn_node(&mut self) -> usize {
        let harness = self;
        {
            let i = harness.nodes.len();
            let id = format!("node{}", i + 1);
            let data_dir = harness._dir.path().join(&id);
            std::fs::create_dir_all(&data_dir).expect("data folder");
            let log = harness._dir.path().join(format!("{id}.log"));
            let (process, announced) = harness.spawn(&id, &data_dir, &log, None).await;
            harness.nodes.push(Node {
                id,
                data_dir,
                log,
                process: Some(process),
                grpc: announced.grpc,
                rest: announced.rest,
                mqtt: announced.mqtt,
                channel: channel(announced.grpc),
            });
            i
        }
    }

    /// Node `i` (0 is `node1`).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Starts `connstate serve` for node `id` under a guard, on `ports`
    /// (gRPC, REST, MQTT) or free ones, and reads its announcements.
    async fn spawn(
        &self,
        id: &str,
        data_dir: &Path,
        log: &Path,
        ports: Option<Announced>,
    ) -> ((Child, ChildStdin), Announced) {
        let (grpc, rest, mqtt) = match &ports {
            Some(p) => (p.grpc.to_string(), p.rest.to_string(), p.mqtt.to_string()),
            None => (
                "127.0.0.1:0".into(),
                "127.0.0.1:0".into(),
                "127.0.0.1:0".into(),
            ),
        };
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open node log");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(GUARD)
            .arg("connstate-guard")
            .arg(env!("CARGO_BIN_EXE_connstate"))
            .arg("serve")
            .args(["--grpc-listen", &grpc])
            .args(["--rest-listen", &rest])
            .args(["--mqtt-listen", &mqtt])
            .args(["--mqtt-ws-listen", "off"])
            .args(["--mqtt-tls-listen", "off"])
            .args(["--cluster-nats", &self.nats.urls()])
            .args(["--node-id", id])
            .args(["--cluster-lease", LEASE])
            .args(&self.extra)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn,connstate::cluster=info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .expect("start connstate");
        let control = child.stdin.take().expect("guard stdin");
        let stdout = child.stdout.take().expect("node stdout");
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        // Reads to the end, so that the node never writes to a closed pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut grpc, mut rest, mut mqtt) = (None, None, None);
        let deadline = tokio::time::Instant::now() + START_LIMIT;
        while grpc.is_none() || rest.is_none() || mqtt.is_none() {
            let line = match tokio::time::timeout_at(deadline, lines.recv()).await {
                Ok(Some(line)) => line,
                Ok(None) => fail_with_log(log, &format!("{id} exited during start-up")),
                Err(_) => fail_with_log(
                    log,
                    &format!("{id} did not announce its listeners within {START_LIMIT:?}"),
                ),
            };
            let addr = |prefix: &str| {
                line.strip_prefix(prefix)
                    .map(|a| a.parse::<SocketAddr>().expect("announced address"))
            };
            if let Some(a) = addr("connstate grpc listening on ") {
                grpc = Some(a);
            } else if let Some(a) = addr("connstate rest listening on ") {
                rest = Some(a);
            } else if let Some(a) = addr("connstate mqtt listening on ") {
                mqtt = Some(a);
            }
        }
        (
            (child, control),
            Announced {
                grpc: grpc.unwrap(),
                rest: rest.unwrap(),
                mqtt: mqtt.unwrap(),
            },
        )
    }

    /// Waits (at most 30 s) until node `i` answers 200 on `/ready`.
    pub async fn wait_ready(&mut self, i: usize) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let url = format!("{}/ready", self.nodes[i].rest_url());
        let deadline = Instant::now() + START_LIMIT;
        let mut last: String;
        loop {
            match http.get(&url).send().await {
                Ok(r) if r.status() == reqwest::StatusCode::OK => return,
                Ok(r) => last = format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => last = e.to_string(),
            }
            self.check_running(i);
            if Instant::now() > deadline {
                let node = &self.nodes[i];
                fail_with_log(
                    &node.log,
                    &format!("{} not ready within {START_LIMIT:?}: {last}", node.id),
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The status and body of node `i`'s `/ready`.
    pub async fn ready(&self, i: usize) -> (u16, String) {
        let r = reqwest::get(format!("{}/ready", self.nodes[i].rest_url()))
            .await
            .expect("GET /ready");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// Panics (with its log) when node `i` should run and has exited.
    fn check_running(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some((child, _)) = node.process.as_mut()
            && let Some(status) = child.try_wait().expect("try_wait")
        {
            node.process = None;
            fail_with_log(&node.log, &format!("{} exited: {status}", node.id));
        }
    }

    /// SIGKILL to node `i`; returns once it is gone.
    pub fn kill9(&mut self, i: usize) {
        let (mut child, mut control) = self.nodes[i]
            .process
            .take()
            .unwrap_or_else(|| panic!("node {i} is not running"));
        let _ = writeln!(control, "kill");
        let _ = child.wait();
    }

    /// Starts node `i` again on its data folder, on the ports it had
    /// (`same_ports`) or new free ones, and waits until it is ready.
    pub async fn restart(&mut self, i: usize, same_ports: bool) {
        assert!(!self.nodes[i].is_running(), "node {i} is still running");
        let node = &self.nodes[i];
        let ports = same_ports.then_some(Announced {
            grpc: node.grpc,
            rest: node.rest,
            mqtt: node.mqtt,
        });
        let (id, data_dir, log) = (node.id.clone(), node.data_dir.clone(), node.log.clone());
        let (process, announced) = self.spawn(&id, &data_dir, &log, ports).await;
        let node = &mut self.nodes[i];
        node.process = Some(process);
        node.grpc = announced.grpc;
        node.rest = announced.rest;
        node.mqtt = announced.mqtt;
        node.channel = channel(announced.grpc);
        self.wait_ready(i).await;
    }
}

fn channel(grpc: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

fn fail_with_log(log: &Path, why: &str) -> ! {
    panic!("{why}\n--- last lines of its log:\n{}", tail(log, 40));
}

impl Drop for ClusterHarness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut message = String::new();
            for node in &self.nodes {
                writeln!(
                    message,
                    "--- {}, last lines of its log:\n{}",
                    node.id,
                    tail(&node.log, 30)
                )
                .unwrap();
            }
            // The whole logs and data stay for a look after the failure.
            self._dir.disable_cleanup(true);
            eprintln!(
                "{message}--- node logs and data kept in {}",
                self._dir.path().display()
            );
        }
        for node in &mut self.nodes {
            if let Some((mut child, mut control)) = node.process.take() {
                let _ = writeln!(control, "kill");
                drop(control);
                let _ = child.wait();
            }
        }
    }
}
