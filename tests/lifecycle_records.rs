//! What a client's record and log keep of events that came before or
//! after the connection they describe: failed connects before the first
//! successful one, and the disconnect of an older connection arriving late.

mod common;

use std::time::Duration;

use common::*;
use connstate::pb::{self, ConnectFailure, DisconnectCause, LogKind};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn failed_connects_before_the_first_connect_are_counted() {
    tokio::time::timeout(LIMIT, async {
        let server = TestServer::start().await;
        let client = "d:local:t:newcomer";
        // Two refused attempts committed on their own, then one more in
        // the same batch as the first successful connect.
        server
            .ingest(vec![connect_failed(
                client,
                0,
                ConnectFailure::BadCredentials,
            )])
            .await;
        server
            .ingest(vec![connect_failed(
                client,
                1,
                ConnectFailure::NotAuthorized,
            )])
            .await;
        server
            .ingest(vec![
                connect_failed(client, 2, ConnectFailure::BadCredentials),
                connected(client, 1, 3),
            ])
            .await;
        let counters = server.get(client).await.counters.unwrap();
        assert_eq!((counters.connects, counters.failed_connects), (1, 3));
        // Later failures add to them, as before.
        server
            .ingest(vec![connect_failed(
                client,
                4,
                ConnectFailure::BadCredentials,
            )])
            .await;
        assert_eq!(
            server.get(client).await.counters.unwrap().failed_connects,
            4
        );

        // A record deleted takes its log with it: a new first connect
        // starts from nothing.
        server
            .states()
            .delete_connection_state(pb::DeleteConnectionStateRequest {
                client_id: client.into(),
            })
            .await
            .unwrap();
        server
            .ingest(vec![
                connect_failed(client, 5, ConnectFailure::BadCredentials),
                connected(client, 2, 6),
            ])
            .await;
        let counters = server.get(client).await.counters.unwrap();
        assert_eq!((counters.connects, counters.failed_connects), (1, 1));
        server.stop().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test]
async fn a_stale_disconnect_does_not_take_the_current_connections_address() {
    tokio::time::timeout(LIMIT, async {
        let server = TestServer::start().await;
        let client = "d:local:t:moved";
        let mut second = connected(client, 2, 10);
        if let Some(pb::lifecycle_event::Event::Connected(c)) = &mut second.event {
            let info = c.info.as_mut().unwrap();
            info.client_addr = "10.0.0.2".into();
            info.port = 2222;
        }
        server
            .ingest(vec![
                connected(client, 1, 0),
                second,
                disconnected(client, 1, 11, DisconnectCause::SessionTakenOver, None),
            ])
            .await;
        let logs = server.logs(client).await;
        let stale = logs
            .iter()
            .find(|e| e.kind == LogKind::Disconnected as i32 && e.connection_id == 1)
            .expect("the old connection's disconnect is logged");
        assert!(stale.stale, "{stale:?}");
        // The event says nothing of its address: the entry claims none,
        // rather than the current connection's.
        assert_ne!(stale.client_addr, "10.0.0.2", "{stale:?}");
        assert_ne!(stale.port, 2222, "{stale:?}");
        let state = server.get(client).await;
        assert_eq!((state.client_addr.as_str(), state.port), ("10.0.0.2", 2222));
        server.stop().await;
    })
    .await
    .expect("within the time limit");
}
