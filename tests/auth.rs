//! With authentication on, both APIs take API keys (HTTP Basic, or gRPC
//! `authorization` metadata with the same value) and apply roles.

mod common;

use common::*;
use connstate::pb;
use serde_json::Value;
use tonic::Code;

#[tokio::test]
async fn rest_needs_a_key_and_the_right_role() {
    let server = TestServer::start_secured().await;
    let http = reqwest::Client::new();
    let state_url = format!(
        "{}/api/v0002/clientconnectionstates/d:local:t:x",
        server.rest
    );

    let anonymous = http.get(&state_url).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    assert_eq!(
        anonymous.headers()["www-authenticate"],
        "Basic realm=\"connstate\""
    );
    let body: Value = anonymous.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().starts_with("CUDCS0001E"));
    let wrong = http
        .get(&state_url)
        .header("authorization", basic((ADMIN.0, "not-the-token-at-all")))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);

    // The administrator creates a read-only key; its token is shown once.
    let created: Value = http
        .post(format!("{}/api/v0002/apikeys", server.rest))
        .header("authorization", basic(ADMIN))
        .json(&serde_json::json!({"role": "read-only", "description": "dashboard"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(key.starts_with("a-local-"), "{key}");
    assert!(token.len() >= 18);
    let listed: Value = http
        .get(format!("{}/api/v0002/apikeys", server.rest))
        .header("authorization", basic(ADMIN))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = listed["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key"] == key.as_str())
        .unwrap();
    assert_eq!(entry["role"], "read-only");
    assert!(entry.get("token").is_none(), "tokens are never listed");

    let reader = (key.as_str(), token.as_str());
    let read = http
        .get(&state_url)
        .header("authorization", basic(reader))
        .send()
        .await
        .unwrap();
    assert_eq!(
        read.status().as_u16(),
        404,
        "authenticated; the client just does not exist"
    );
    let forbidden = http
        .put(format!("{}/api/v0002/config/clientstate", server.rest))
        .header("authorization", basic(reader))
        .json(&serde_json::json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status().as_u16(), 403);
    let body: Value = forbidden.json().await.unwrap();
    assert_eq!(
        body["exception"]["properties"],
        serde_json::json!(["admin", "read-only"])
    );
    let keys = http
        .get(format!("{}/api/v0002/apikeys", server.rest))
        .header("authorization", basic(reader))
        .send()
        .await
        .unwrap();
    assert_eq!(keys.status().as_u16(), 403);

    // Revoked keys stop working.
    let deleted = http
        .delete(format!("{}/api/v0002/apikeys/{key}", server.rest))
        .header("authorization", basic(ADMIN))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    let after = http
        .get(&state_url)
        .header("authorization", basic(reader))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status().as_u16(), 401);
    server.stop().await;
}

#[tokio::test]
async fn grpc_takes_the_same_credentials_and_roles() {
    let server = TestServer::start_secured().await;
    let created: Value = reqwest::Client::new()
        .post(format!("{}/api/v0002/apikeys", server.rest))
        .header("authorization", basic(ADMIN))
        .json(&serde_json::json!({"role": "read-only"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reader = (
        created["key"].as_str().unwrap(),
        created["token"].as_str().unwrap(),
    );
    let get = || pb::GetConnectionStateRequest {
        client_id: "d:local:t:x".into(),
    };
    let ingest = || pb::IngestEventsRequest {
        lease_duration: None,
        broker: "edge".into(),
        events: vec![connected("d:local:t:x", 1, 0)],
    };

    let err = server
        .states()
        .get_connection_state(with_auth(get(), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = server
        .states()
        .get_connection_state(with_auth(
            get(),
            Some((reader.0, "wrong-token-wrong-token")),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = server
        .ingest_client()
        .ingest_events(with_auth(ingest(), Some(reader)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("operator"), "{}", err.message());

    server
        .ingest_client()
        .ingest_events(with_auth(ingest(), Some(ADMIN)))
        .await
        .unwrap();
    let state = server
        .states()
        .get_connection_state(with_auth(get(), Some(reader)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        state.connection_status,
        pb::ConnectionStatus::Connected as i32
    );
    server.stop().await;
}

/// An administrator cannot lock every administrator out: deleting the key
/// the request is made with, or the last admin key, is refused with 409
/// and the platform body; with a second admin key the first can go.
#[tokio::test]
async fn the_last_admin_key_and_the_callers_own_key_stay() {
    let server = TestServer::start_secured().await;
    let http = reqwest::Client::new();
    let keys = format!("{}/api/v0002/apikeys", server.rest);
    let delete = |key: String, auth: (String, String)| {
        let http = http.clone();
        let url = format!("{keys}/{key}");
        async move {
            let response = http
                .delete(url)
                .header("authorization", basic((&auth.0, &auth.1)))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap();
            (status, body)
        }
    };
    let admin = (ADMIN.0.to_owned(), ADMIN.1.to_owned());

    let (status, body) = delete(ADMIN.0.into(), admin.clone()).await;
    assert_eq!(status, 409, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.starts_with("CUDCS0409E"), "{message}");
    assert!(message.contains("own"), "names the reason: {message}");
    assert!(body["exception"]["properties"][0] == ADMIN.0, "{body}");

    // A second administrator may not delete the last other admin key
    // either, once it is the last one; while two exist, one may go.
    let created: Value = http
        .post(&keys)
        .header("authorization", basic(ADMIN))
        .json(&serde_json::json!({"role": "admin"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let second = (
        created["key"].as_str().unwrap().to_owned(),
        created["token"].as_str().unwrap().to_owned(),
    );
    let (status, body) = delete(ADMIN.0.into(), second.clone()).await;
    assert_eq!(status, 204, "{body}");
    // `second` is now the only admin key: it cannot delete itself, and an
    // operator cannot delete it (that needs admin rights anyway).
    let (status, body) = delete(second.0.clone(), second.clone()).await;
    assert_eq!(status, 409, "{body}");
    let listed: Value = http
        .get(&keys)
        .header("authorization", basic((&second.0, &second.1)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["results"].as_array().unwrap().len(), 1, "{listed}");
    server.stop().await;
}

/// In open mode too the last admin key stays (the data folder may be served
/// with authentication on later).
#[tokio::test]
async fn open_mode_keeps_the_last_admin_key() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let keys = format!("{}/api/v0002/apikeys", server.rest);
    let mut made = Vec::new();
    for _ in 0..2 {
        let created: Value = http
            .post(&keys)
            .json(&serde_json::json!({"role": "admin"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        made.push(created["key"].as_str().unwrap().to_owned());
    }
    let status = |r: reqwest::Response| r.status().as_u16();
    let first = http
        .delete(format!("{keys}/{}", made[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(status(first), 204);
    let last = http
        .delete(format!("{keys}/{}", made[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(status(last), 409);
    server.stop().await;
}
