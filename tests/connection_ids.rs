//! Connection ids are only comparable within one broker: a connect reported
//! by another broker is a newer connection (the client moved), and a
//! disconnect from a broker that is not the current connection's is stale.

mod common;

use std::time::Duration;

use common::*;
use connstate::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An MQTT 3.1.1 CONNECT (clean session, keepalive 60 s); returns the open
/// socket once the CONNACK accepted it.
async fn mqtt_connect(addr: std::net::SocketAddr, client_id: &str) -> tokio::net::TcpStream {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 4, 0x02, 0x00, 60];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(&packet).await.unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut connack))
        .await
        .expect("CONNACK within 10 s")
        .unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "accepted");
    stream
}

async fn ingest_as(server: &TestServer, broker: &str, events: Vec<pb::LifecycleEvent>) {
    server
        .ingest_client()
        .ingest_events(pb::IngestEventsRequest {
            lease_duration: None,
            broker: broker.into(),
            events,
        })
        .await
        .expect("ingest");
}

async fn wait_for(
    server: &TestServer,
    client_id: &str,
    check: impl Fn(&pb::ConnectionState) -> bool,
) -> pb::ConnectionState {
    eventually(Duration::from_secs(10), || async {
        let state = server
            .states()
            .get_connection_state(pb::GetConnectionStateRequest {
                client_id: client_id.into(),
            })
            .await
            .ok()?
            .into_inner();
        check(&state).then_some(state)
    })
    .await
}

#[tokio::test]
async fn a_client_moving_between_brokers_is_ordered_by_broker_not_by_id() {
    let server = TestServer::start().await;

    // Ingested first with a large id, then connected to the embedded broker
    // (whose ids are small): the embedded connection is the newer one.
    let moved = "d:local:t:to-embedded";
    ingest_as(&server, "edge", vec![connected(moved, 5_000_000, 0)]).await;
    let socket = mqtt_connect(server.mqtt, moved).await;
    let state = wait_for(&server, moved, |s| s.broker == "embedded").await;
    assert_eq!(
        state.connection_status,
        pb::ConnectionStatus::Connected as i32
    );
    // The edge broker's late disconnect ends a connection that is no longer
    // the current one: stale, the client stays connected.
    ingest_as(
        &server,
        "edge",
        vec![disconnected(
            moved,
            5_000_000,
            1,
            pb::DisconnectCause::SocketClosed,
            None,
        )],
    )
    .await;
    let state = server.get(moved).await;
    assert_eq!(state.broker, "embedded");
    assert_eq!(
        state.connection_status,
        pb::ConnectionStatus::Connected as i32
    );
    // The log is newest first by event time: the late disconnect, which
    // happened before the embedded connect, is found by its kind.
    let logs = server.logs(moved).await;
    let late = logs
        .iter()
        .find(|e| e.kind == pb::LogKind::Disconnected as i32)
        .expect("the late disconnect is logged");
    assert!(late.stale, "{late:?}");
    assert!(
        late.message
            .contains("the current connection is on broker embedded"),
        "{}",
        late.message
    );
    drop(socket);

    // Connected to the embedded broker first, then reported by the edge
    // broker with a small id: the client moved to the edge broker.
    let back = "d:local:t:to-edge";
    let socket = mqtt_connect(server.mqtt, back).await;
    wait_for(&server, back, |s| s.broker == "embedded").await;
    ingest_as(&server, "edge", vec![connected(back, 1, 3600)]).await;
    let state = server.get(back).await;
    assert_eq!(state.broker, "edge");
    assert_eq!(state.connection_id, 1);
    assert_eq!(
        state.connection_status,
        pb::ConnectionStatus::Connected as i32
    );
    // The embedded connection ends (socket closed): stale, the client is
    // still connected to the edge broker.
    drop(socket);
    eventually(Duration::from_secs(10), || async {
        let logs = server.logs(back).await;
        logs.iter().any(|e| e.stale).then_some(())
    })
    .await;
    let state = server.get(back).await;
    assert_eq!(state.broker, "edge");
    assert_eq!(
        state.connection_status,
        pb::ConnectionStatus::Connected as i32
    );
    server.stop().await;
}
