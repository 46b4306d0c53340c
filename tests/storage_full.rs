//! A full disk: while the store cannot record, CONNECTs are refused (v3
//! CONNACK 3, v5 0x88), writes answer UNAVAILABLE / 503 saying the storage
//! is full, and gRPC health and `/ready` turn together; freeing space brings
//! everything back by itself. A crash with many connected clients on a
//! nearly full disk does not start by filling the disk: it says how much
//! space recovery needs, and recovers once that space is there.
//!
//! The tests mount a small tmpfs, so they need root; otherwise they say so
//! and return.

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::*;
use connstate::pb::{self, connection_state_service_client::ConnectionStateServiceClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mb` MiB, or says why it cannot and returns `None`.
    fn mount(mb: u32) -> Option<Tmpfs> {
        let root = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(2) == Some("0"))
            })
            .unwrap_or(false);
        if !root {
            eprintln!("skipped: mounting a small tmpfs to fill needs root");
            return None;
        }
        let dir = tempfile::tempdir().expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}M"), "tmpfs"])
            .arg(dir.path())
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs { dir }),
            other => {
                eprintln!("skipped: cannot mount a tmpfs ({other:?})");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a filler file until the disk is full, then gives back
    /// `leave` bytes.
    fn fill(&self, leave: u64) {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0x5a_u8; 64 * 1024];
        loop {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        loop {
            if file.write_all(&chunk[..4096]).is_err() {
                break;
            }
        }
        let _ = file.sync_all();
        let len = file.metadata().unwrap().len();
        file.set_len(len.saturating_sub(leave)).unwrap();
    }

    fn free(&self) {
        std::fs::remove_file(self.path().join("filler")).expect("remove filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// An MQTT CONNECT (clean session, keepalive 60 s) for `client_id`.
fn connect_packet(client_id: &str, v5: bool) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T'];
    body.push(if v5 { 5 } else { 4 });
    body.extend_from_slice(&[0x02, 0x00, 60]);
    if v5 {
        body.push(0); // no properties
    }
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// Connects and returns the CONNACK's return code (v3) or reason code
/// (v5), with the open socket.
async fn mqtt_connect(
    addr: std::net::SocketAddr,
    client_id: &str,
    v5: bool,
) -> (u8, tokio::net::TcpStream) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(&connect_packet(client_id, v5))
        .await
        .unwrap();
    let mut head = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut head))
        .await
        .expect("CONNACK within 10 s")
        .expect("CONNACK");
    assert_eq!(head[0], 0x20, "a CONNACK");
    let mut rest = vec![0u8; usize::from(head[1])];
    stream.read_exact(&mut rest).await.unwrap();
    (rest[1], stream)
}

async fn health(server: &TestServer) -> i32 {
    HealthClient::new(server.channel())
        .check(HealthCheckRequest {
            service: "connstate.v1.IngestService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

async fn ready(server: &TestServer) -> u16 {
    reqwest::get(format!("{}/ready", server.rest))
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_connects_and_writes_until_space_is_freed() {
    let Some(disk) = Tmpfs::mount(24) else {
        return;
    };
    let data_dir: PathBuf = disk.path().join("data");
    let server = TestServer::start_in(data_dir, |c| c.min_free_disk_mb = 2).await;
    // Before: everything works.
    server
        .ingest(vec![connected("d:local:t:before", 1, 0)])
        .await;
    let (code, _) = mqtt_connect(server.mqtt, "d:local:t:mqtt-before", false).await;
    assert_eq!(code, 0);
    eventually(Duration::from_secs(10), || async {
        (health(&server).await == ServingStatus::Serving as i32).then_some(())
    })
    .await;

    disk.fill(0);
    // Health and /ready turn together: once one says so, so does the other.
    eventually(Duration::from_secs(10), || async {
        (health(&server).await == ServingStatus::NotServing as i32).then_some(())
    })
    .await;
    assert_eq!(ready(&server).await, 503, "/ready with health NOT_SERVING");

    let (code, _) = mqtt_connect(server.mqtt, "d:local:t:v3", false).await;
    assert_eq!(code, 3, "v3 CONNACK: server unavailable");
    let (code, _) = mqtt_connect(server.mqtt, "d:local:t:v5", true).await;
    assert_eq!(code, 0x88, "v5 CONNACK: server unavailable");

    let refused = server
        .ingest_client()
        .ingest_events(pb::IngestEventsRequest {
            lease_duration: None,
            broker: "test".into(),
            events: vec![connected("d:local:t:during", 2, 1)],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("storage is full"),
        "{}",
        refused.message()
    );
    let response = reqwest::Client::new()
        .delete(format!(
            "{}/api/v0002/clientconnectionstates/d:local:t:before",
            server.rest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.starts_with("CUDCS0507E: "), "{body}");
    assert!(message.contains("storage is full"), "{body}");
    assert_eq!(body["exception"]["id"], "CUDCS0507E", "{body}");
    // Reads still work.
    assert_eq!(
        server.get("d:local:t:before").await.connection_status,
        pb::ConnectionStatus::Connected as i32
    );
    // The refused clients were not recorded: the store is full.
    assert!(
        server
            .states()
            .get_connection_state(pb::GetConnectionStateRequest {
                client_id: "d:local:t:v3".into(),
            })
            .await
            .is_err()
    );

    disk.free();
    eventually(Duration::from_secs(10), || async {
        (health(&server).await == ServingStatus::Serving as i32).then_some(())
    })
    .await;
    assert_eq!(ready(&server).await, 200, "/ready with health SERVING");
    let (code, _socket) = mqtt_connect(server.mqtt, "d:local:t:after", false).await;
    assert_eq!(code, 0);
    server
        .ingest(vec![connected("d:local:t:during", 2, 1)])
        .await;
    eventually(Duration::from_secs(10), || async {
        server
            .states()
            .get_connection_state(pb::GetConnectionStateRequest {
                client_id: "d:local:t:after".into(),
            })
            .await
            .ok()
    })
    .await;
    server.stop().await;
}

/// The real binary on a data folder, with what it wrote to standard error.
struct Binary {
    child: Child,
    /// The addresses it announces once serving; `None` when it stopped
    /// before (the announcements follow a successful start).
    grpc: Option<String>,
    mqtt: Option<std::net::SocketAddr>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Binary {
    /// Starts the real binary on port 0 and reads back its addresses.
    fn spawn(data_dir: &Path, min_free_mb: u32) -> Binary {
        let mut child = serve_command(
            data_dir,
            &[
                &FREE_PORTS[..],
                &["--min-free-disk-mb", &min_free_mb.to_string()],
            ]
            .concat(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start connstate");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut pipe = BufReader::new(child.stderr.take().unwrap());
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while pipe.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut grpc, mut mqtt) = (None, None);
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(addr) = line.strip_prefix("connstate grpc listening on ") {
                grpc = Some(format!("http://{}", addr.trim()));
            }
            if let Some(addr) = line.strip_prefix("connstate mqtt listening on ") {
                mqtt = Some(addr.trim().parse().unwrap());
            }
            if grpc.is_some() && mqtt.is_some() {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Binary {
            child,
            grpc,
            mqtt,
            stderr,
        }
    }

    /// Waits until health reports SERVING (`Ok`) or the process ends
    /// (`Err` with its exit status and standard error).
    async fn up(&mut self) -> Result<tonic::transport::Channel, String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "up or gone within 60 s"
            );
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread take the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(format!("{status}: {}", self.stderr.lock().unwrap()));
            }
            let Some(grpc) = self.grpc.clone() else {
                // No announcement: it is on its way out.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            if let Ok(ch) = tonic::transport::Channel::from_shared(grpc)
                .unwrap()
                .connect()
                .await
            {
                let status = HealthClient::new(ch.clone())
                    .check(HealthCheckRequest::default())
                    .await
                    .map(|r| r.into_inner().status);
                if status.ok() == Some(ServingStatus::Serving as i32) {
                    return Ok(ch);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        self.child.wait().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_on_a_nearly_full_disk_says_what_space_recovery_needs_then_recovers() {
    let Some(disk) = Tmpfs::mount(24) else {
        return;
    };
    let data_dir = disk.path().join("data");
    let mut server = Binary::spawn(&data_dir, 1);
    let ch = server.up().await.expect("first start");
    let states = ConnectionStateServiceClient::new(ch);
    const CLIENTS: usize = 400;
    let mut sockets = Vec::new();
    for i in 0..CLIENTS {
        let (code, socket) =
            mqtt_connect(server.mqtt.unwrap(), &format!("d:local:t:c{i}"), i % 2 == 0).await;
        assert_eq!(code, 0);
        sockets.push(socket);
    }
    let last = format!("d:local:t:c{}", CLIENTS - 1);
    eventually(Duration::from_secs(20), || async {
        states
            .clone()
            .get_connection_state(pb::GetConnectionStateRequest {
                client_id: last.clone(),
            })
            .await
            .ok()
    })
    .await;

    // Leave less free space than recording 400 disconnects takes.
    disk.fill(2560 * 1024);
    server.kill();
    drop(sockets);

    // Recording 400 disconnects takes more than is left above the 1 MiB
    // reserve: the start stops before writing and says what it needs.
    let mut server = Binary::spawn(&data_dir, 1);
    let Err(said) = server.up().await else {
        panic!("no start without the space recovery needs");
    };
    assert!(
        said.contains("recording the 400 clients left connected")
            && said.contains("needs about 1.6 MiB of free space")
            && said.contains("1.0 MiB kept free"),
        "the refusal says what recovery needs: {said}"
    );
    // Recovery did not fill the disk with its own records: freeing the
    // filler is enough.
    disk.free();
    let mut server = Binary::spawn(&data_dir, 1);
    let ch = server.up().await.expect("start with space");
    let mut states = ConnectionStateServiceClient::new(ch);
    for i in 0..CLIENTS {
        let state = states
            .get_connection_state(pb::GetConnectionStateRequest {
                client_id: format!("d:local:t:c{i}"),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            state.connection_status,
            pb::ConnectionStatus::Disconnected as i32,
            "c{i}"
        );
        assert_eq!(state.last_close_code, Some(93), "c{i}");
    }
    server.kill();
}
