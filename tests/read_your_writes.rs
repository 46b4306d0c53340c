//! Every answer says the revision it reflects (`x-connstate-revision`), and
//! a request may ask for at least a revision (`x-connstate-min-revision`):
//! it waits for it, or fails with DEADLINE_EXCEEDED / 504. Across a
//! cluster's nodes this is read-your-writes; here, one node shows the
//! contract.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn revision_of(headers: &reqwest::header::HeaderMap) -> u64 {
    headers
        .get("x-connstate-revision")
        .expect("x-connstate-revision header")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn answers_name_their_revision_and_wait_for_the_one_asked_for() {
    let server = TestServer::start().await;
    let written = server.ingest(vec![connected("d:local:t:a", 1, 100)]).await;
    assert!(written > 0);

    // gRPC: the revision in the answer's metadata covers the write.
    let mut states = server.states();
    let mut request = tonic::Request::new(connstate::pb::GetConnectionStateRequest {
        client_id: "d:local:t:a".into(),
    });
    request.metadata_mut().insert(
        "x-connstate-min-revision",
        written.to_string().parse().unwrap(),
    );
    let answer = states.get_connection_state(request).await.unwrap();
    let reflected: u64 = answer
        .metadata()
        .get("x-connstate-revision")
        .expect("revision metadata")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(reflected >= written, "{reflected} < {written}");
    assert_eq!(answer.into_inner().revision, written);

    // A revision not reached: DEADLINE_EXCEEDED within the call's deadline.
    let mut request = tonic::Request::new(connstate::pb::GetConnectionStateRequest {
        client_id: "d:local:t:a".into(),
    });
    request.metadata_mut().insert(
        "x-connstate-min-revision",
        (written + 1000).to_string().parse().unwrap(),
    );
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let refused = states.get_connection_state(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::DeadlineExceeded, "{refused:?}");
    assert!(refused.message().contains("x-connstate-min-revision"));
    assert!(started.elapsed() < Duration::from_secs(5));

    // A revision that arrives while the request waits: answered then.
    let waiting = {
        let mut states = server.states();
        let mut request = tonic::Request::new(connstate::pb::GetConnectionStateRequest {
            client_id: "d:local:t:b".into(),
        });
        request.metadata_mut().insert(
            "x-connstate-min-revision",
            (written + 1).to_string().parse().unwrap(),
        );
        tokio::spawn(async move { states.get_connection_state(request).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "answered before its revision existed"
    );
    server.ingest(vec![connected("d:local:t:b", 1, 101)]).await;
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("answered once the revision exists")
        .unwrap()
        .unwrap();
    assert_eq!(answer.into_inner().client_id, "d:local:t:b");

    // REST: the same header, and a bad one is named in a 400.
    let http = reqwest::Client::new();
    let url = format!(
        "{}/api/v0002/clientconnectionstates/d:local:t:a",
        server.rest
    );
    let answer = http
        .get(&url)
        .header("x-connstate-min-revision", written.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(revision_of(answer.headers()) >= written);
    let bad = http
        .get(&url)
        .header("x-connstate-min-revision", "soon")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(
        body["exception"]["properties"][0], "X-Connstate-Min-Revision",
        "{body}"
    );
    server.stop().await;
}
