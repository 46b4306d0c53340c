//! Retention deletes old log entries by age and beyond the per-client
//! count, in the background, while the records stay.

mod common;

use std::time::Duration;

use common::*;
use connstate::pb;

#[tokio::test]
async fn old_and_excess_log_entries_are_removed() {
    let server = TestServer::start_with(|c| c.retention_interval = Duration::from_millis(50)).await;
    server
        .admin()
        .update_settings(pb::UpdateSettingsRequest {
            settings: Some(pb::Settings {
                log_max_age: Some(prost_types::Duration {
                    seconds: 24 * 3600,
                    nanos: 0,
                }),
                log_max_entries_per_client: 4,
                ..Default::default()
            }),
            update_mask: vec!["log_max_age".into(), "log_max_entries_per_client".into()],
        })
        .await
        .unwrap();

    // Two days ago: older than the one-day limit.
    let old = -2 * 24 * 3600;
    server
        .ingest(vec![
            connected("d:local:t:old", 1, old),
            disconnected(
                "d:local:t:old",
                1,
                old + 5,
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
        let old_gone = server.logs("d:local:t:old").await.is_empty();
        (logs.len() == 4 && old_gone).then_some(logs)
    })
    .await;
    // The newest four are kept.
    assert_eq!(chatty[0].timestamp, Some(at(95)));
    assert_eq!(chatty[3].timestamp, Some(at(80)));
    // Records are not subject to retention.
    let state = server.get("d:local:t:old").await;
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
