//! Retention deletes log entries beyond the per-client count and older than
//! the maximum age, in the background, while the records stay.

mod common;

use std::time::Duration;

use common::*;
use connstate::pb;

async fn set_log_retention(server: &TestServer, max_age: Duration, max_entries: u32) {
    server
        .admin()
        .update_settings(pb::UpdateSettingsRequest {
            settings: Some(pb::Settings {
                log_max_age: Some(prost_types::Duration {
                    seconds: max_age.as_secs() as i64,
                    nanos: 0,
                }),
                log_max_entries_per_client: max_entries,
                ..Default::default()
            }),
            update_mask: vec!["log_max_age".into(), "log_max_entries_per_client".into()],
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn excess_and_then_old_log_entries_are_removed() {
    let server = TestServer::start_with(|c| c.retention_interval = Duration::from_millis(50)).await;
    set_log_retention(&server, Duration::from_secs(24 * 3600), 4).await;

    server
        .ingest(vec![
            connected("d:local:t:quiet", 1, 0),
            disconnected(
                "d:local:t:quiet",
                1,
                5,
                pb::DisconnectCause::ClientDisconnect,
                None,
            ),
        ])
        .await;
    // A chatty client: 10 connect/disconnect cycles.
    let mut events = Vec::new();
    for i in 0..10u64 {
        events.push(connected("d:local:t:chatty", i + 1, i as i64 * 10));
        events.push(disconnected(
            "d:local:t:chatty",
            i + 1,
            i as i64 * 10 + 5,
            pb::DisconnectCause::SocketClosed,
            None,
        ));
    }
    server.ingest(events).await;

    let chatty = eventually(Duration::from_secs(10), || async {
        let logs = server.logs("d:local:t:chatty").await;
        (logs.len() == 4).then_some(logs)
    })
    .await;
    // The newest four are kept; the quiet client keeps both of its entries.
    assert_eq!(chatty[0].timestamp, Some(at(95)));
    assert_eq!(chatty[3].timestamp, Some(at(80)));
    assert_eq!(server.logs("d:local:t:quiet").await.len(), 2);

    // With a one-second age limit everything recorded so far goes.
    set_log_retention(&server, Duration::from_secs(1), 4).await;
    eventually(Duration::from_secs(10), || async {
        let all = server
            .states()
            .list_connection_logs(pb::ListConnectionLogsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .entries;
        all.is_empty().then_some(())
    })
    .await;
    assert!(server.logs("d:local:t:chatty").await.is_empty());
    // Records are not subject to retention.
    let state = server.get("d:local:t:quiet").await;
    assert_eq!(
        state.connection_status,
        pb::ConnectionStatus::Disconnected as i32
    );
    assert_eq!(
        server
            .get("d:local:t:chatty")
            .await
            .counters
            .unwrap()
            .connects,
        10
    );
    server.stop().await;
}
