//! The connection log of one client lists newest first by event time, with
//! the revision breaking ties, so that an event ingested late with an older
//! time takes its place in time, on every page.

mod common;

use std::time::Duration;

use common::*;
use connstate::pb::{self, ConnectFailure, DisconnectCause};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);

/// (seconds after the test base, revision) of each entry.
fn order(entries: &[pb::LogEntry]) -> Vec<(i64, u64)> {
    entries
        .iter()
        .map(|e| (e.timestamp.unwrap().seconds - at(0).seconds, e.revision))
        .collect()
}

#[tokio::test]
async fn one_clients_log_is_newest_first_by_time_on_every_page() {
    tokio::time::timeout(LIMIT, async {
        let server = TestServer::start().await;
        let client = "d:local:sensor:late";
        server
            .ingest(vec![
                connected(client, 1, 100),
                disconnected(client, 1, 110, DisconnectCause::SocketClosed, None),
                connected(client, 2, 120),
            ])
            .await;
        // Reported late by another broker: older times, newer revisions.
        server
            .ingest(vec![
                connect_failed(client, 50, ConnectFailure::BadCredentials),
                connect_failed(client, 110, ConnectFailure::BadCredentials),
            ])
            .await;
        let all = order(&server.logs(client).await);
        let times: Vec<i64> = all.iter().map(|(t, _)| *t).collect();
        assert_eq!(times, [120, 110, 110, 100, 50], "{all:?}");
        // The tie at 110: the later revision (the late failure) first.
        assert!(all[1].1 > all[2].1, "{all:?}");

        // Page by page: the same order, nothing twice, nothing missed.
        let mut paged = Vec::new();
        let mut token = String::new();
        loop {
            let page = server
                .states()
                .list_connection_logs(pb::ListConnectionLogsRequest {
                    client_id: client.into(),
                    page_size: 2,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            paged.extend(order(&page.entries));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(paged, all);

        // The platform's path lists the same order.
        let body: Value = reqwest::get(format!(
            "{}/api/v0002/logs/connection?typeId=sensor&deviceId=late",
            server.rest
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let stamps: Vec<&str> = body
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["timestamp"].as_str().unwrap())
            .collect();
        let mut sorted = stamps.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(stamps, sorted);
        assert_eq!(stamps.len(), 5);
        server.stop().await;
    })
    .await
    .expect("within the time limit");
}
