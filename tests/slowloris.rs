//! A slowloris against the REST listener: hundreds of connections that send
//! a header byte at a time. The listener's cap closes those over it at once,
//! the header timeout closes the rest, and meanwhile new MQTT connections
//! and new gRPC health checks keep succeeding.
//!
//! This test binary lowers its own open-file limit, so that an uncapped
//! attack would run the (in-process) server out of descriptors; it holds
//! no other test for that reason.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Open files this process may hold during the test: an attack of
/// `ATTACKERS` connections holds twice that (both ends are in this process).
const FILE_LIMIT: u64 = 512;
const ATTACKERS: usize = 300;
const CAP: usize = 40;
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends a request head one byte at a time, every 100 ms, and never ends
/// it; reports (through `closed`) how long after `start` the server closed
/// the connection.
async fn drip(mut stream: TcpStream, start: Instant, closed: mpsc::UnboundedSender<Duration>) {
    let head = b"GET /ready HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let mut sent = 0usize;
    let mut buf = [0u8; 256];
    loop {
        let byte = head.get(sent).copied().unwrap_or(b'a');
        tokio::select! {
            read = stream.read(&mut buf) => {
                if matches!(read, Ok(0) | Err(_)) {
                    let _ = closed.send(start.elapsed());
                    return;
                }
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if stream.write_all(&[byte]).await.is_err() {
                    let _ = closed.send(start.elapsed());
                    return;
                }
                sent += 1;
            }
        }
    }
}

/// A fresh MQTT 3.1.1 connection gets its CONNACK.
async fn mqtt_connects(server: &TestServer, n: usize) -> Result<(), String> {
    let mut tcp = TcpStream::connect(server.mqtt)
        .await
        .map_err(|e| format!("MQTT connect: {e}"))?;
    let id = format!("sl-{n:04}");
    let mut connect = vec![0x10, 12 + id.len() as u8, 0, 4, b'M', b'Q', b'T', b'T', 4];
    connect.extend_from_slice(&[0x02, 0, 30, 0, id.len() as u8]);
    connect.extend_from_slice(id.as_bytes());
    tcp.write_all(&connect)
        .await
        .map_err(|e| format!("MQTT write: {e}"))?;
    let mut ack = [0u8; 4];
    tcp.read_exact(&mut ack)
        .await
        .map_err(|e| format!("MQTT CONNACK: {e}"))?;
    if ack != [0x20, 2, 0, 0] {
        return Err(format!("MQTT CONNACK {ack:?}"));
    }
    tcp.write_all(&[0xE0, 0])
        .await
        .map_err(|e| format!("MQTT DISCONNECT: {e}"))
}

/// A health check over a new gRPC connection answers SERVING.
async fn grpc_health_serves(server: &TestServer) -> Result<(), String> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("gRPC connect: {e}"))?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|e| format!("gRPC health: {e}"))?
        .into_inner()
        .status;
    if status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        Err(format!("gRPC health status {status}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_slowloris_is_capped_and_timed_out_while_mqtt_and_grpc_keep_serving() {
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
    rlimit::Resource::NOFILE
        .set(FILE_LIMIT.min(soft), hard)
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        let server = TestServer::start_with(|c| {
            c.rest_max_connections = CAP;
            c.rest_header_timeout = HEADER_TIMEOUT;
        })
        .await;
        let http = reqwest::Client::new();
        let ready = format!("{}/ready", server.rest);
        eventually(Duration::from_secs(10), || async {
            let r = http.get(&ready).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        drop(http);

        let rest_addr = server.rest.trim_start_matches("http://").to_owned();
        let start = Instant::now();
        let (closed_tx, mut closed_rx) = mpsc::unbounded_channel();
        let mut opened = 0;
        for _ in 0..ATTACKERS {
            // Without a cap this runs the process out of descriptors: the
            // attacker stops there, and the checks below find out.
            let Ok(stream) = TcpStream::connect(&rest_addr).await else {
                break;
            };
            opened += 1;
            tokio::spawn(drip(stream, start, closed_tx.clone()));
        }
        drop(closed_tx);

        // While the attack runs: new MQTT connections and new gRPC
        // connections keep being served.
        for n in 0..10 {
            mqtt_connects(&server, n)
                .await
                .unwrap_or_else(|e| panic!("during the attack ({n}): {e}"));
            grpc_health_serves(&server)
                .await
                .unwrap_or_else(|e| panic!("during the attack ({n}): {e}"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Every attacking connection is closed: those over the cap at once,
        // the others by the header timeout.
        let mut closed = Vec::new();
        let deadline = tokio::time::Instant::now() + HEADER_TIMEOUT + Duration::from_secs(10);
        while closed.len() < opened {
            match tokio::time::timeout_at(deadline, closed_rx.recv()).await {
                Ok(Some(at)) => closed.push(at),
                _ => break,
            }
        }
        assert_eq!(opened, ATTACKERS, "every attacking connection was opened");
        assert_eq!(
            closed.len(),
            opened,
            "attacking connections still open {:?} after the attack began",
            start.elapsed()
        );
        let at_once = closed.iter().filter(|at| **at < HEADER_TIMEOUT / 2).count();
        assert!(
            at_once >= ATTACKERS - CAP,
            "only {at_once} connections were closed on arrival"
        );

        // The listener serves again, and counted what it refused.
        let http = reqwest::Client::new();
        let metrics = eventually(Duration::from_secs(10), || async {
            let r = http
                .get(format!("{}/metrics", server.rest))
                .send()
                .await
                .ok()?;
            r.text().await.ok()
        })
        .await;
        let refused: usize = metrics
            .lines()
            .find_map(|l| l.strip_prefix("connstate_connections_refused_total{listener=\"rest\"} "))
            .unwrap_or_else(|| panic!("no REST refusal count in {metrics}"))
            .trim()
            .parse()
            .unwrap();
        assert!(refused >= ATTACKERS - CAP, "{refused} refusals counted");
        mqtt_connects(&server, 99).await.unwrap();
        grpc_health_serves(&server).await.unwrap();
        server.stop().await;
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn a_rest_connection_on_which_nothing_moves_is_closed() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let idle = Duration::from_millis(500);
        let server = TestServer::start_with(|c| {
            c.rest_header_timeout = Duration::from_secs(60);
            c.rest_idle_timeout = idle;
        })
        .await;
        let rest_addr = server.rest.trim_start_matches("http://").to_owned();
        let mut tcp = TcpStream::connect(&rest_addr).await.unwrap();
        tcp.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 12];
        tcp.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200");
        // Keep-alive: the connection stays open, with nothing to say, until
        // the idle timeout (well before the header timeout) closes it.
        let opened = Instant::now();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "still open after {:?}", opened.elapsed());
        assert!(opened.elapsed() < idle * 6, "{:?}", opened.elapsed());
        server.stop().await;
    })
    .await
    .expect("the test finished in time");
}
