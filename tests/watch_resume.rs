//! Resuming a watch (gRPC `start_revision`, SSE `Last-Event-ID`) from a
//! revision the store has not reached: the answer says it is ahead, not
//! that it was retired.

mod common;

use std::time::Duration;

use common::*;
use connstate::pb;
use serde_json::Value;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_future_revision_is_ahead_of_the_store() {
    tokio::time::timeout(LIMIT, async {
        let server = TestServer::start().await;
        let revision = server
            .ingest(vec![
                connected("d:local:t:a", 1, 0),
                connected("d:local:t:b", 2, 0),
            ])
            .await;
        let ahead = revision + 40;
        let status = server
            .states()
            .watch_connections(pb::WatchConnectionsRequest {
                start_revision: Some(ahead),
                ..Default::default()
            })
            .await
            .expect_err("a revision the store has not reached is refused");
        assert_eq!(status.code(), Code::OutOfRange);
        let message = status.message();
        assert!(message.contains("ahead"), "{message}");
        assert!(message.contains(&ahead.to_string()), "{message}");
        assert!(message.contains(&revision.to_string()), "{message}");
        assert!(!message.contains("no longer"), "{message}");

        // The store's own revision is fine: nothing to replay, then live.
        server
            .states()
            .watch_connections(pb::WatchConnectionsRequest {
                start_revision: Some(revision),
                ..Default::default()
            })
            .await
            .expect("the current revision resumes");

        let url = format!("{}/api/v0002/stream/clientconnectionstates", server.rest);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        for (header, query) in [(true, ""), (false, "?lastEventId=")] {
            let mut request = if header {
                http.get(&url).header("Last-Event-ID", ahead.to_string())
            } else {
                http.get(format!("{url}{query}{ahead}"))
            };
            request = request.header("accept", "text/event-stream");
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            let name = if header {
                "Last-Event-ID"
            } else {
                "lastEventId"
            };
            assert_eq!(status, 400, "{body}");
            assert_eq!(body["exception"]["properties"][0], name, "{body}");
            let text = body["violations"][0]["message"].as_str().unwrap();
            assert!(text.contains("ahead"), "{text}");
            assert!(text.contains(&revision.to_string()), "{text}");
        }
        server.stop().await;
    })
    .await
    .expect("within the time limit");
}
