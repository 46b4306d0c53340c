//! The command-line client (`connstate clients|devices|device-types|keys|
//! status|completions`): the real binary against a real server on port 0,
//! after real events (ingested over gRPC, or a real MQTT connection).

mod common;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::*;
use connstate::pb;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What one run of the client printed, and its exit code.
#[derive(Debug)]
struct Run {
    code: i32,
    out: String,
    err: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.out)
            .unwrap_or_else(|e| panic!("not one JSON document ({e}): {self:?}"))
    }

    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }
}

/// The client binary with no `CONNSTATE_*` setting inherited.
fn client_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_connstate"));
    command.args(args);
    for var in [
        "CONNSTATE_ADDRESS",
        "CONNSTATE_REST_ADDRESS",
        "CONNSTATE_API_KEY",
        "CONNSTATE_API_TOKEN",
        "CONNSTATE_CONFIG",
        "CONNSTATE_CA_FILE",
    ] {
        command.env_remove(var);
    }
    command
}

/// Runs the client to its end (at most 30 s) with `args`.
async fn cli(args: Vec<String>) -> Run {
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = client_command(&args)
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .expect("start the client");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("connstate {args:?} did not end within 30 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Run {
            code: status.code().expect("exited"),
            out: std::fs::read_to_string(out_path).unwrap(),
            err: std::fs::read_to_string(err_path).unwrap(),
        }
    })
    .await
    .unwrap()
}

/// `args`, then the flags that point the client at `server`.
fn at_server(server: &TestServer, args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    all.extend([
        "--address".to_owned(),
        format!("http://{}", server.addr),
        "--rest-address".to_owned(),
        server.rest.clone(),
        "--timeout".to_owned(),
        "10s".to_owned(),
    ]);
    all
}

fn with_key(mut args: Vec<String>, (key, token): (&str, &str)) -> Vec<String> {
    args.extend([
        "--api-key".to_owned(),
        key.to_owned(),
        "--api-token".to_owned(),
        token.to_owned(),
    ]);
    args
}

/// Two clients: a connected device and an application that connected and
/// was dropped by the network.
async fn two_clients(server: &TestServer) {
    server
        .ingest(vec![
            connected("d:local:sensor:s1", 1, 0),
            connected("a:local:dash", 2, 1),
            disconnected(
                "a:local:dash",
                2,
                5,
                pb::DisconnectCause::KeepAliveTimeout,
                None,
            ),
        ])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_get_logs_and_status_in_table_and_json() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let server = TestServer::start().await;
        two_clients(&server).await;

        let table = cli(at_server(&server, &["clients", "list"])).await.ok();
        let lines: Vec<&str> = table.out.lines().collect();
        assert_eq!(lines.len(), 3, "header and two rows: {}", table.out);
        assert!(lines[0].starts_with("CLIENT ID") && lines[0].contains("LAST DISCONNECT"));
        assert!(lines[1].starts_with("a:local:dash") && lines[1].contains("disconnected"));
        assert!(lines[1].contains("network") && lines[1].contains("0x8D"));
        assert!(lines[2].starts_with("d:local:sensor:s1") && lines[2].contains(" connected"));
        // Columns are aligned: the status column starts at the same place.
        assert_eq!(lines[1].find("application"), lines[0].find("TYPE"));

        let connected = cli(at_server(
            &server,
            &["clients", "list", "--status", "connected", "--json"],
        ))
        .await
        .ok()
        .json();
        let results = connected["results"].as_array().unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0]["id"], "d:local:sensor:s1");
        assert_eq!(results[0]["connectionStatus"], "connected");
        assert_eq!(connected["revision"], 3);

        // Paging: a page size of one still lists both, --limit cuts.
        let limited = cli(at_server(
            &server,
            &["clients", "list", "--limit", "1", "--json"],
        ))
        .await
        .ok()
        .json();
        assert_eq!(limited["results"].as_array().unwrap().len(), 1);
        let sorted = cli(at_server(
            &server,
            &["clients", "list", "--sort", "-lastConnectTime", "--json"],
        ))
        .await
        .ok()
        .json();
        assert_eq!(sorted["results"][0]["id"], "a:local:dash");
        let windowed = cli(at_server(
            &server,
            &[
                "clients",
                "list",
                "--disconnected-after",
                "now-1d",
                "--client-type",
                "application",
                "--json",
            ],
        ))
        .await
        .ok()
        .json();
        assert_eq!(windowed["results"].as_array().unwrap().len(), 1);

        let get = cli(at_server(&server, &["clients", "get", "a:local:dash"]))
            .await
            .ok();
        assert!(
            get.out.contains("status           disconnected"),
            "{}",
            get.out
        );
        assert!(get.out.contains("by network, reason 0x8D"), "{}", get.out);
        let get = cli(at_server(
            &server,
            &["clients", "get", "a:local:dash", "--json"],
        ))
        .await
        .ok()
        .json();
        assert_eq!(get["lastDisconnectInitiator"], "network");
        assert_eq!(get["lastDisconnectReasonCode"], 0x8D);
        assert_eq!(get["lastCloseCode"], 160);
        assert_eq!(get["counters"]["connects"], 1);

        let logs = cli(at_server(&server, &["clients", "logs", "a:local:dash"]))
            .await
            .ok();
        let lines: Vec<&str> = logs.out.lines().collect();
        assert_eq!(lines.len(), 3, "{}", logs.out);
        assert!(lines[0].starts_with("TIME") && lines[0].ends_with("MESSAGE"));
        assert!(lines[1].contains("disconnected") && lines[1].contains("Connection lost"));
        assert!(lines[2].contains("connected") && lines[2].contains("Connected from"));
        let all = cli(at_server(&server, &["clients", "logs", "--json"]))
            .await
            .ok()
            .json();
        let all = all.as_array().unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0]["kind"], "disconnected");
        assert_eq!(all[0]["clientId"], "a:local:dash");
        let only = cli(at_server(
            &server,
            &["clients", "logs", "--kind", "connected", "--json"],
        ))
        .await
        .ok()
        .json();
        assert_eq!(only.as_array().unwrap().len(), 2);

        let status = cli(at_server(&server, &["status", "--json"]))
            .await
            .ok()
            .json();
        assert_eq!(status["health"], "serving");
        assert_eq!(status["revision"], 3);
        assert_eq!(status["connected"], 1);
        assert_eq!(status["total"], 2);
        let status = cli(at_server(&server, &["status"])).await.ok();
        assert!(status.out.contains("connected  1"), "{}", status.out);
        server.stop().await;
    })
    .await
    .expect("within 120 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_not_found_usage_and_unavailable() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let server = TestServer::start().await;
        let missing = cli(at_server(&server, &["clients", "get", "d:local:t:none"])).await;
        assert_eq!(missing.code, 1, "{missing:?}");
        assert_eq!(missing.err.lines().count(), 1, "one line: {missing:?}");
        assert!(missing.err.contains("d:local:t:none"));
        assert!(missing.out.is_empty());

        let bad_flag = cli(at_server(
            &server,
            &["clients", "list", "--status", "sometimes"],
        ))
        .await;
        assert_eq!(bad_flag.code, 2, "{bad_flag:?}");
        let bad_time = cli(at_server(
            &server,
            &["clients", "list", "--connected-after", "yesterday"],
        ))
        .await;
        assert_eq!(bad_time.code, 2, "{bad_time:?}");
        assert!(bad_time.err.contains("--connected-after"), "{bad_time:?}");
        let no_command = cli(vec!["clients".into()]).await;
        assert_eq!(no_command.code, 2, "{no_command:?}");

        // Nothing listens on a port just freed.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let down = cli(vec![
            "clients".into(),
            "list".into(),
            "--address".into(),
            format!("127.0.0.1:{port}"),
        ])
        .await;
        assert_eq!(down.code, 3, "{down:?}");
        assert!(down.err.contains(&format!("127.0.0.1:{port}")), "{down:?}");
        server.stop().await;
    })
    .await
    .expect("within 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_and_keys_in_auth_mode() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let server = TestServer::start_secured().await;

        // No credentials, or a wrong token: 3, over gRPC and REST alike.
        let anonymous = cli(at_server(&server, &["clients", "list"])).await;
        assert_eq!(anonymous.code, 3, "{anonymous:?}");
        let wrong = cli(with_key(
            at_server(&server, &["clients", "list"]),
            (ADMIN.0, "wrong-token-0123456789"),
        ))
        .await;
        assert_eq!(wrong.code, 3, "{wrong:?}");
        let wrong_rest = cli(with_key(
            at_server(&server, &["keys", "list"]),
            (ADMIN.0, "wrong-token-0123456789"),
        ))
        .await;
        assert_eq!(wrong_rest.code, 3, "{wrong_rest:?}");

        let admin = |args: &[&str]| with_key(at_server(&server, args), ADMIN);
        cli(admin(&[
            "device-types",
            "add",
            "sensor",
            "--description",
            "a sensor",
        ]))
        .await
        .ok();
        let types = cli(admin(&["device-types", "list"])).await.ok();
        assert!(
            types.out.lines().nth(1).unwrap().starts_with("sensor"),
            "{types:?}"
        );
        let added = cli(admin(&["devices", "add", "sensor", "s1", "--json"]))
            .await
            .ok()
            .json();
        assert_eq!(added["clientId"], "d:local:sensor:s1");
        let token = added["authToken"].as_str().unwrap().to_owned();
        assert!(token.len() >= 18);
        let listed = cli(admin(&["devices", "list"])).await.ok();
        assert!(listed.out.contains("d:local:sensor:s1"), "{listed:?}");
        assert!(!listed.out.contains(&token), "the token is shown only once");
        let listed = cli(admin(&["devices", "list", "sensor", "--json"]))
            .await
            .ok()
            .json();
        assert_eq!(listed["results"].as_array().unwrap().len(), 1);
        let again = cli(admin(&["devices", "add", "sensor", "s1"])).await;
        assert_eq!(again.code, 4, "exists already: {again:?}");
        cli(admin(&["devices", "get", "sensor", "s1"])).await.ok();
        cli(admin(&["devices", "rm", "sensor", "s1"])).await.ok();
        let gone = cli(admin(&["devices", "get", "sensor", "s1"])).await;
        assert_eq!(gone.code, 1, "{gone:?}");
        let gone = cli(admin(&["devices", "rm", "sensor", "s1"])).await;
        assert_eq!(gone.code, 1, "{gone:?}");
        cli(admin(&["device-types", "rm", "sensor"])).await.ok();
        let gone = cli(admin(&["device-types", "get", "sensor"])).await;
        assert_eq!(gone.code, 1, "{gone:?}");

        let created = cli(admin(&["keys", "create", "--role", "read-only", "--json"]))
            .await
            .ok()
            .json();
        let key = created["key"].as_str().unwrap().to_owned();
        let key_token = created["token"].as_str().unwrap().to_owned();
        assert_eq!(created["role"], "read-only");
        let keys = cli(admin(&["keys", "list"])).await.ok();
        assert!(
            keys.out.contains(&key) && keys.out.contains("read-only"),
            "{keys:?}"
        );
        assert!(!keys.out.contains(&key_token));
        // The new key reads; its role does not let it manage keys.
        let reader = |args: &[&str]| with_key(at_server(&server, args), (&key, &key_token));
        cli(reader(&["clients", "list"])).await.ok();
        let denied = cli(reader(&["keys", "list"])).await;
        assert_eq!(denied.code, 3, "{denied:?}");
        cli(admin(&["keys", "rm", &key])).await.ok();
        let keys = cli(admin(&["keys", "list", "--json"])).await.ok().json();
        assert!(
            keys["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|k| k["key"] != key.as_str())
        );
        let removed = cli(reader(&["clients", "list"])).await;
        assert_eq!(removed.code, 3, "a deleted key is refused: {removed:?}");
        server.stop().await;
    })
    .await
    .expect("within 120 s");
}

/// An MQTT 3.1.1 CONNECT (clean session, keepalive 60 s); returns the open
/// socket once the CONNACK accepted it.
async fn mqtt_connect(addr: SocketAddr, client_id: &str) -> tokio::net::TcpStream {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 4, 0x02, 0x00, 60];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(&packet).await.unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "accepted");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_ends_a_connected_mqtt_client() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let server = TestServer::start().await;
        let mut socket = mqtt_connect(server.mqtt, "plain-device").await;
        let shown = cli(at_server(
            &server,
            &["clients", "get", "plain-device", "--json"],
        ))
        .await
        .ok()
        .json();
        assert_eq!(shown["connectionStatus"], "connected");

        let kicked = cli(at_server(
            &server,
            &["clients", "disconnect", "plain-device"],
        ))
        .await
        .ok();
        assert_eq!(kicked.out.trim(), "disconnected plain-device");
        // The broker closes the socket.
        let mut rest = Vec::new();
        socket.read_to_end(&mut rest).await.unwrap();
        let state = eventually(Duration::from_secs(10), || async {
            let s = server.get("plain-device").await;
            (s.connection_status == pb::ConnectionStatus::Disconnected as i32).then_some(s)
        })
        .await;
        assert_eq!(state.last_disconnect_reason_code, Some(0x98));
        assert_eq!(state.last_close_code, Some(94));

        let again = cli(at_server(
            &server,
            &["clients", "disconnect", "plain-device"],
        ))
        .await;
        assert_eq!(again.code, 4, "known but not connected: {again:?}");
        let unknown = cli(at_server(&server, &["clients", "disconnect", "nobody"])).await;
        assert_eq!(unknown.code, 1, "{unknown:?}");
        server.stop().await;
    })
    .await
    .expect("within 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_for_three_shells() {
    for shell in ["bash", "zsh", "fish"] {
        let script = cli(vec!["completions".into(), shell.into()]).await.ok();
        assert!(
            script.out.contains("device-types"),
            "{shell}: {}",
            script.out
        );
        assert!(script.out.contains("disconnect"), "{shell}");
    }
    let bad = cli(vec!["completions".into(), "powershell".into()]).await;
    assert_eq!(bad.code, 2);
}

/// A child whose standard output lines arrive on a channel; killed when
/// dropped.
struct Lines {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Lines {
    fn spawn(mut command: Command) -> Lines {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { child, lines }
    }

    /// The next line, within `limit`.
    async fn next(&self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            match self.lines.try_recv() {
                Ok(line) => return line,
                Err(mpsc::TryRecvError::Empty) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("no line within {limit:?}: {e:?}"),
            }
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Four free ports of 127.0.0.1: gRPC, REST, MQTT, MQTT over WebSocket.
fn free_ports() -> [u16; 4] {
    let listeners: Vec<_> = (0..4)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// A server process, killed (SIGKILL) when dropped, so that a failing test
/// leaves none behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real server on `ports` and `data_dir`, once its gRPC port answers.
async fn serve_on(data_dir: &std::path::Path, ports: [u16; 4]) -> Killed {
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let (grpc, rest, mqtt, ws) = (
        addr(ports[0]),
        addr(ports[1]),
        addr(ports[2]),
        addr(ports[3]),
    );
    let child = serve_command(
        data_dir,
        &[
            "--grpc-listen",
            &grpc,
            "--rest-listen",
            &rest,
            "--mqtt-listen",
            &mqtt,
            "--mqtt-ws-listen",
            &ws,
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start connstate");
    let child = Killed(child);
    let url = format!("http://{grpc}");
    eventually(Duration::from_secs(20), || async {
        let channel = tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .ok()?;
        pb::connection_state_service_client::ConnectionStateServiceClient::new(channel)
            .list_connection_states(pb::ListConnectionStatesRequest::default())
            .await
            .ok()
    })
    .await;
    child
}

async fn ingest_at(grpc: &str, events: Vec<pb::LifecycleEvent>) -> u64 {
    let channel = tonic::transport::Channel::from_shared(grpc.to_owned())
        .unwrap()
        .connect()
        .await
        .expect("connect");
    pb::ingest_service_client::IngestServiceClient::new(channel)
        .ingest_events(pb::IngestEventsRequest {
            lease_duration: None,
            broker: "edge".into(),
            events,
        })
        .await
        .expect("ingest")
        .into_inner()
        .revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_a_server_restart_without_gap_or_duplicate() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports();
        let grpc = format!("http://127.0.0.1:{}", ports[0]);
        let server = serve_on(dir.path(), ports).await;

        let watch = Lines::spawn(client_command(&[
            "clients",
            "watch",
            "--json",
            "--address",
            &grpc,
            "--from-revision",
            "0",
        ]));
        ingest_at(&grpc, vec![connected("c1", 1, 0), connected("c2", 2, 1)]).await;
        let mut seen = Vec::new();
        for _ in 0..2 {
            seen.push(watch.next(Duration::from_secs(20)).await);
        }

        // kill -9, then a restart on the same ports and data; changes
        // committed before the watch is back are replayed to it.
        drop(server);
        let server = serve_on(dir.path(), ports).await;
        ingest_at(
            &grpc,
            vec![disconnected(
                "c1",
                1,
                2,
                pb::DisconnectCause::SocketClosed,
                None,
            )],
        )
        .await;
        ingest_at(&grpc, vec![connected("c3", 3, 3)]).await;
        for _ in 0..2 {
            seen.push(watch.next(Duration::from_secs(30)).await);
        }
        // A live change after the resume arrives once.
        ingest_at(
            &grpc,
            vec![disconnected(
                "c2",
                2,
                4,
                pb::DisconnectCause::ClientDisconnect,
                Some(0),
            )],
        )
        .await;
        seen.push(watch.next(Duration::from_secs(20)).await);

        let changes: Vec<Value> = seen
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let got: Vec<(u64, String, String)> = changes
            .iter()
            .map(|c| {
                (
                    c["revision"].as_u64().unwrap(),
                    c["kind"].as_str().unwrap().to_owned(),
                    c["clientId"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let expected = [
            ("connected", "c1"),
            ("connected", "c2"),
            ("disconnected", "c1"),
            ("connected", "c3"),
            ("disconnected", "c2"),
        ];
        assert_eq!(
            got.iter()
                .map(|(_, k, c)| (k.as_str(), c.as_str()))
                .collect::<Vec<_>>(),
            expected,
            "every change once, in order: {seen:#?}"
        );
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "revisions increase: {got:?}"
        );
        // Nothing more: no duplicate after the resume.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(watch.lines.try_recv().is_err(), "no extra line");
        drop((watch, server));
    })
    .await
    .expect("within 120 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_watch_prints_the_list_then_changes() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let server = TestServer::start().await;
        two_clients(&server).await;
        let addr = format!("http://{}", server.addr);
        let watch = Lines::spawn(client_command(&[
            "clients",
            "list",
            "--watch",
            "--status",
            "connected",
            "--json",
            "--address",
            &addr,
        ]));
        let first: Value =
            serde_json::from_str(&watch.next(Duration::from_secs(20)).await).unwrap();
        assert_eq!(first["kind"], "snapshot");
        assert_eq!(first["state"]["id"], "d:local:sensor:s1");
        let done: Value = serde_json::from_str(&watch.next(Duration::from_secs(20)).await).unwrap();
        assert_eq!(done["kind"], "snapshotComplete");
        server
            .ingest(vec![connected("d:local:sensor:s2", 3, 6)])
            .await;
        let live: Value = serde_json::from_str(&watch.next(Duration::from_secs(20)).await).unwrap();
        assert_eq!(live["kind"], "connected");
        assert_eq!(live["clientId"], "d:local:sensor:s2");
        assert_eq!(live["state"]["connectionStatus"], "connected");

        // The table form: the list, then a line per change.
        let table = Lines::spawn(client_command(&[
            "clients",
            "list",
            "--watch",
            "--address",
            &addr,
        ]));
        let header = table.next(Duration::from_secs(20)).await;
        assert!(header.starts_with("CLIENT ID"), "{header}");
        let mut rows = Vec::new();
        loop {
            let line = table.next(Duration::from_secs(20)).await;
            if line.is_empty() {
                break;
            }
            rows.push(line);
        }
        assert_eq!(rows.len(), 3, "{rows:?}");
        server
            .ingest(vec![disconnected(
                "d:local:sensor:s2",
                3,
                7,
                pb::DisconnectCause::ClientDisconnect,
                Some(0),
            )])
            .await;
        let header = table.next(Duration::from_secs(20)).await;
        assert!(header.starts_with("REVISION"), "{header}");
        let change = table.next(Duration::from_secs(20)).await;
        assert!(
            change.contains("disconnected") && change.contains("d:local:sensor:s2"),
            "{change}"
        );
        drop((watch, table));
        server.stop().await;
    })
    .await
    .expect("within 60 s");
}

/// Runs the client with `env` set on top of the cleared `CONNSTATE_*`.
async fn cli_env(args: &[&str], env: &[(&str, String)]) -> Run {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut command = client_command(&args);
        command.envs(env);
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the client");
        // Bounded by the client's own --timeout (default 30 s) per call.
        let output = child.wait_with_output().unwrap();
        Run {
            code: output.status.code().expect("exited"),
            out: String::from_utf8(output.stdout).unwrap(),
            err: String::from_utf8(output.stderr).unwrap(),
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_and_credentials_from_environment_and_config_file() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let server = TestServer::start_secured().await;
        let rest = server.rest.trim_start_matches("http://").to_owned();
        let env = [
            ("CONNSTATE_ADDRESS", server.addr.to_string()),
            ("CONNSTATE_REST_ADDRESS", rest.clone()),
            ("CONNSTATE_API_KEY", ADMIN.0.to_owned()),
            ("CONNSTATE_API_TOKEN", ADMIN.1.to_owned()),
        ];
        cli_env(&["clients", "list"], &env).await.ok();
        cli_env(&["keys", "list"], &env).await.ok();
        // A flag wins over the environment.
        let flag = cli_env(
            &["keys", "list", "--api-token", "wrong-token-0123456789"],
            &env,
        )
        .await;
        assert_eq!(flag.code, 3, "{flag:?}");

        // The server's own config file: listeners (0.0.0.0 is reached on
        // loopback) and its admin key.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("connstate.toml");
        std::fs::write(
            &file,
            format!(
                "grpc_listen = \"0.0.0.0:{}\"\nrest_listen = \"{rest}\"\nauth = true\n\
                 admin_key = \"{}\"\nadmin_token = \"{}\"\n",
                server.addr.port(),
                ADMIN.0,
                ADMIN.1
            ),
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let status = cli_env(&["status", "--json", "--config", file], &[])
            .await
            .ok()
            .json();
        assert_eq!(status["health"], "serving");
        assert_eq!(
            status["grpc"],
            format!("http://127.0.0.1:{}", server.addr.port())
        );
        cli_env(&["keys", "list", "--config", file], &[]).await.ok();
        let missing = cli_env(&["status", "--config", "/nonexistent/connstate.toml"], &[]).await;
        assert_eq!(missing.code, 2, "{missing:?}");
        server.stop().await;
    })
    .await
    .expect("within 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_rest_over_tls_with_the_servers_certificate() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, certified.cert.pem()).unwrap();
        std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
        let server = TestServer::start_with(|c| c.tls = Some((cert_path.clone(), key_path))).await;
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", server.addr))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(
                        certified.cert.pem(),
                    ))
                    .domain_name("localhost"),
            )
            .unwrap()
            .connect()
            .await
            .expect("TLS connect");
        pb::ingest_service_client::IngestServiceClient::new(channel)
            .ingest_events(pb::IngestEventsRequest {
                lease_duration: None,
                broker: "edge".into(),
                events: vec![connected("c1", 1, 0), connected("c2", 2, 1)],
            })
            .await
            .expect("ingest over TLS");
        let rest_port = server.rest.rsplit(':').next().unwrap().to_owned();
        let tls = |args: &[&str], ca: &std::path::Path| {
            let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
            all.extend([
                "--address".to_owned(),
                format!("https://localhost:{}", server.addr.port()),
                "--rest-address".to_owned(),
                format!("https://localhost:{rest_port}"),
                "--ca-file".to_owned(),
                ca.to_str().unwrap().to_owned(),
                "--timeout".to_owned(),
                "10s".to_owned(),
            ]);
            all
        };
        let listed = cli(tls(&["clients", "list", "--json"], &cert_path))
            .await
            .ok()
            .json();
        assert_eq!(listed["results"].as_array().unwrap().len(), 2);
        let status = cli(tls(&["status", "--json"], &cert_path))
            .await
            .ok()
            .json();
        assert_eq!(status["total"], 2, "the count comes over HTTPS");

        // A certificate authority that did not sign the server's
        // certificate: the server cannot be trusted, so it is unavailable.
        let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let other_path = dir.path().join("other.pem");
        std::fs::write(&other_path, other.cert.pem()).unwrap();
        let untrusted = cli(tls(&["clients", "list"], &other_path)).await;
        assert_eq!(untrusted.code, 3, "{untrusted:?}");
        let untrusted = cli(tls(&["device-types", "list"], &other_path)).await;
        assert_eq!(untrusted.code, 3, "{untrusted:?}");
        server.stop().await;
    })
    .await
    .expect("within 60 s");
}
