//! A real NATS JetStream cluster on loopback: n `nats-server` processes on
//! free ports, each with its config, store and log in one temporary folder.
//!
//! Every server runs under a small `sh` guard that holds the read end of a
//! pipe from this process: a line on it stops the server (SIGTERM or
//! SIGKILL), and end of file (this process ended, even by SIGKILL) kills it.
//! So no server outlives the test that started it, whatever ends the test.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use std::os::unix::process::CommandExt as _;

/// How long a cluster may take to elect its JetStream meta leader, and a
/// restarted server to listen again.
const START_LIMIT: Duration = Duration::from_secs(20);

/// How long a server may take to stop on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs `"$@"` (the server) in the background and stops it on a line of
/// standard input (`term` = SIGTERM, anything else = SIGKILL) or at end of
/// input; exits with the server's status once the server has ended, so the
/// caller's `wait` means the server is gone. The server's standard output
/// and error are the guard's.
pub const GUARD: &str = include_str!("guard.sh");

/// One server of the cluster.
struct Server {
    name: String,
    client_port: u16,
    config: PathBuf,
    log: PathBuf,
    process: Option<Guarded>,
}

/// A running guard with its server.
struct Guarded {
    child: Child,
    control: ChildStdin,
}

/// A running JetStream cluster; dropping it kills every server.
pub struct NatsCluster {
    servers: Vec<Server>,
    binary: PathBuf,
    dir: tempfile::TempDir,
}

/// The `nats-server` binary: `$NATS_SERVER`, else `nats-server` on the
/// `PATH`, else Debian's `/usr/sbin/nats-server`.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "NATS_SERVER={} is not a file; scripts/test.sh installs nats-server \
             (Debian package nats-server)",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    });
    let debian = PathBuf::from("/usr/sbin/nats-server");
    on_path
        .or_else(|| debian.is_file().then_some(debian))
        .expect(
            "nats-server not found (NATS_SERVER unset, none on PATH, no /usr/sbin/nats-server): \
             scripts/test.sh installs it (apt-get install -y nats-server), or set NATS_SERVER",
        )
}

/// `count` distinct free ports of 127.0.0.1: all bound at once, then freed.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// The last `lines` lines of `path`, or why it cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

impl NatsCluster {
    /// Starts `n` servers forming one JetStream cluster and waits (at most
    /// 20 s) until it has a meta leader and takes an R`n` stream.
    pub async fn start(n: usize) -> NatsCluster {
        assert!(n >= 1, "a cluster has at least one server");
        let binary = nats_server_binary();
        let dir = tempfile::Builder::new()
            .prefix("nats-cluster-")
            .tempdir()
            .expect("temp dir");
        let ports = free_ports(2 * n);
        let (client_ports, route_ports) = ports.split_at(n);
        let mut servers = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("n{i}");
            let home = dir.path().join(&name);
            std::fs::create_dir_all(&home).expect("server folder");
            let routes: Vec<String> = route_ports
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, port)| format!("nats-route://127.0.0.1:{port}"))
                .collect();
            let mut config = String::new();
            writeln!(config, "server_name: {name}").unwrap();
            writeln!(config, "listen: 127.0.0.1:{}", client_ports[i]).unwrap();
            writeln!(config, "jetstream {{").unwrap();
            writeln!(config, "  store_dir: {:?}", home.join("store")).unwrap();
            writeln!(config, "  max_memory_store: 256MB").unwrap();
            writeln!(config, "  max_file_store: 256MB").unwrap();
            writeln!(config, "}}").unwrap();
            if n > 1 {
                writeln!(config, "cluster {{").unwrap();
                writeln!(config, "  name: connstate-test").unwrap();
                writeln!(config, "  listen: 127.0.0.1:{}", route_ports[i]).unwrap();
                writeln!(config, "  routes: [{}]", routes.join(", ")).unwrap();
                writeln!(config, "}}").unwrap();
            }
            let config_path = home.join("nats.conf");
            std::fs::write(&config_path, config).expect("write nats.conf");
            servers.push(Server {
                name,
                client_port: client_ports[i],
                config: config_path,
                log: home.join("nats.log"),
                process: None,
            });
        }
        let mut cluster = NatsCluster {
            servers,
            binary,
            dir,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_for_jetstream().await;
        cluster
    }

    /// Starts server `i` under its guard, appending to its log.
    fn spawn(&mut self, i: usize) {
        let server = &mut self.servers[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&server.log)
            .expect("open server log");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(GUARD)
            .arg("nats-server-guard")
            .arg(&self.binary)
            .arg("-js")
            .arg("-c")
            .arg(&server.config)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            // Its own process group: a Ctrl-C meant for the tests reaches
            // the servers only through the guard.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.binary.display()));
        let control = child.stdin.take().expect("guard stdin");
        server.process = Some(Guarded { child, control });
    }

    /// Panics with every server's log tail.
    fn fail(&self, why: &str) -> ! {
        let mut message = format!("{why}\n");
        for server in &self.servers {
            writeln!(
                message,
                "--- {} ({}), last lines of its log:\n{}",
                server.name,
                server.log.display(),
                tail(&server.log, 30)
            )
            .unwrap();
        }
        panic!("{message}");
    }

    /// Panics (with the logs) when a server that should run has exited.
    fn check_running(&mut self) {
        for i in 0..self.servers.len() {
            let exited = match self.servers[i].process.as_mut() {
                Some(p) => p.child.try_wait().expect("try_wait"),
                None => None,
            };
            if let Some(status) = exited {
                let name = self.servers[i].name.clone();
                self.servers[i].process = None;
                self.fail(&format!("nats-server {name} exited: {status}"));
            }
        }
    }

    /// Waits until every running server takes TCP connections and a stream
    /// with one replica per server can be created.
    async fn wait_for_jetstream(&mut self) {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            self.check_running();
            let Err(last_error) = self.probe().await else {
                return;
            };
            if Instant::now() > deadline {
                self.fail(&format!(
                    "the NATS cluster had no JetStream meta leader within {START_LIMIT:?}: \
                     {last_error}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One readiness attempt: connect, then create and delete a throwaway
    /// stream with as many replicas as servers (which needs a meta leader
    /// and every server in its group).
    async fn probe(&self) -> Result<(), String> {
        let replicas = self.servers.len();
        let attempt = async {
            for server in &self.servers {
                tokio::net::TcpStream::connect(("127.0.0.1", server.client_port))
                    .await
                    .map_err(|e| format!("{} not listening: {e}", server.name))?;
            }
            let client = self.client().await.map_err(|e| e.to_string())?;
            // A stream create, not `query_account`: async-nats 0.51 cannot
            // read the account info of nats-server 2.9 (it lacks the
            // reserved_memory and reserved_storage fields).
            let js = async_nats::jetstream::new(client);
            let name = "harness_ready";
            js.create_stream(async_nats::jetstream::stream::Config {
                name: name.into(),
                subjects: vec!["harness.ready".into()],
                num_replicas: replicas,
                storage: async_nats::jetstream::stream::StorageType::Memory,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("create an R{replicas} stream: {e}"))?;
            js.delete_stream(name)
                .await
                .map_err(|e| format!("delete the probe stream: {e}"))?;
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(5), attempt)
            .await
            .unwrap_or_else(|_| Err("readiness probe timed out after 5 s".into()))
    }

    /// A client of the whole cluster (every server's URL), connected once.
    pub async fn client(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        let urls: Vec<String> = (0..self.servers.len()).map(|i| self.url(i)).collect();
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(urls)
            .await
    }

    /// `nats://127.0.0.1:P1,nats://127.0.0.1:P2,...`: every server's URL, as
    /// `--cluster-nats` takes them.
    pub fn urls(&self) -> String {
        (0..self.servers.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `nats://127.0.0.1:PORT` of server `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].client_port)
    }

    /// The `server_name` of server `i`, as stream cluster info names it.
    pub fn name(&self, i: usize) -> &str {
        &self.servers[i].name
    }

    /// The folder of the cluster's configs, stores and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends SIGKILL to server `i` and waits until it is gone.
    pub fn kill9(&mut self, i: usize) {
        let mut process = self.servers[i]
            .process
            .take()
            .unwrap_or_else(|| panic!("server {i} is not running"));
        let _ = writeln!(process.control, "kill");
        let _ = process.child.wait();
    }

    /// Starts server `i` again on its ports and store, and waits (at most
    /// 20 s) until it takes TCP connections.
    pub async fn restart(&mut self, i: usize) {
        assert!(
            self.servers[i].process.is_none(),
            "server {i} is still running"
        );
        self.spawn(i);
        let port = self.servers[i].client_port;
        let deadline = Instant::now() + START_LIMIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            self.check_running();
            if Instant::now() > deadline {
                self.fail(&format!(
                    "restarted nats-server {} did not listen within {START_LIMIT:?}",
                    self.servers[i].name
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every server with SIGTERM (SIGKILL after 10 s) and removes
    /// the folder.
    pub fn stop(mut self) {
        for server in &mut self.servers {
            if let Some(process) = server.process.as_mut() {
                let _ = writeln!(process.control, "term");
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for server in &mut self.servers {
            if let Some(mut process) = server.process.take() {
                while process.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = writeln!(process.control, "kill");
                let _ = process.child.wait();
            }
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            if let Some(mut process) = server.process.take() {
                let _ = writeln!(process.control, "kill");
                drop(process.control);
                let _ = process.child.wait();
            }
        }
    }
}
