//! The MQTT traffic metrics follow every write and read of a connection,
//! the last ones of an idle or closed connection included.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(60);

/// A CONNECT of MQTT 3.1.1 with a clean session and no keepalive.
fn connect(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4];
    body.extend_from_slice(b"MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 0]);
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// A connection that sent `packet` (a CONNECT) and was accepted.
async fn connected(server: &TestServer, packet: &[u8]) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(server.mqtt).await.unwrap();
    stream.write_all(packet).await.unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    stream
}

/// The value of the metric `name` in the server's /metrics text.
async fn metric(server: &TestServer, name: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", server.rest))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{name} in {text}")) as u64
}

#[tokio::test]
async fn an_idle_connections_connack_and_a_closed_ones_disconnect_are_counted() {
    tokio::time::timeout(LIMIT, async {
        let server = TestServer::start().await;
        let packet = connect("traffic-1");
        let mut stream = connected(&server, &packet).await;
        // The connection now stays idle: its CONNACK is counted anyway.
        eventually(Duration::from_secs(10), || async {
            (metric(&server, "connstate_mqtt_sent_bytes_total").await == 4).then_some(())
        })
        .await;
        // A DISCONNECT gets no answer: counted when the connection ends.
        stream.write_all(&[0xE0, 0]).await.unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        let expected = (packet.len() + 2) as u64;
        eventually(Duration::from_secs(10), || async {
            (metric(&server, "connstate_mqtt_received_bytes_total").await == expected).then_some(())
        })
        .await;
        server.stop().await;
    })
    .await
    .expect("within the time limit");
}

/// The store's write-back backlog is a metric, at nothing once a connect
/// is written back. (That it counts what is not written back yet is
/// tested on the store, where the write-back can be held:
/// `the_write_back_backlog_counts_what_is_not_written_back`.)
#[tokio::test]
async fn the_write_back_backlog_is_a_metric_at_nothing_once_written_back() {
    tokio::time::timeout(LIMIT, async {
        let server = TestServer::start().await;
        let _stream = connected(&server, &connect("backlog-1")).await;
        eventually(Duration::from_secs(10), || async {
            (metric(&server, "connstate_store_write_back_pending").await == 0).then_some(())
        })
        .await;
        server.stop().await;
    })
    .await
    .expect("within the time limit");
}
