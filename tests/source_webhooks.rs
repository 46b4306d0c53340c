//! Webhook sources: EMQX 5 and VerneMQ POST their documented payloads to
//! `POST /sources/{name}` with a shared secret; the events go through the
//! tracker's rules. Malformed, duplicate and out-of-order payloads are
//! refused or logged as stale, never recorded as a wrong state.

mod common;

use std::time::Duration;

use common::TestServer;
use connstate::{
    pb,
    source::{SourceConfig, SourceSpec},
};
use serde_json::{Value, json};

const SECRET: &str = "a-shared-webhook-secret";

fn source(name: &str, kind: &str) -> SourceConfig {
    SourceConfig::from_spec(&SourceSpec {
        name: Some(name.into()),
        kind: Some(kind.into()),
        secret: Some(SECRET.into()),
        ..Default::default()
    })
    .unwrap()
}

async fn start() -> TestServer {
    TestServer::start_with(|c| {
        c.sources = vec![
            source("emqx", "emqx-webhook"),
            source("verne", "vernemq-webhook"),
        ]
    })
    .await
}

/// POSTs `body` to the source `name` with the secret as a bearer token;
/// returns the status and JSON body.
async fn post(server: &TestServer, name: &str, body: &Value) -> (u16, Value) {
    post_with(server, name, body, |r| r.bearer_auth(SECRET)).await
}

async fn post_with(
    server: &TestServer,
    name: &str,
    body: &Value,
    tune: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> (u16, Value) {
    let request = reqwest::Client::new()
        .post(format!("{}/sources/{name}", server.rest))
        .json(body);
    let response = tokio::time::timeout(Duration::from_secs(10), tune(request).send())
        .await
        .expect("in time")
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn metric(server: &TestServer, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", server.rest))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn emqx_connected(client: &str, connected_at: i64) -> Value {
    // As EMQX 5 documents the client.connected event (rule engine
    // `SELECT * FROM "$events/client_connected"`).
    json!({
        "event": "client.connected",
        "clientid": client,
        "username": "u1",
        "mountpoint": "undefined",
        "peername": "192.0.2.10:52918",
        "sockname": "0.0.0.0:1883",
        "proto_name": "MQTT",
        "proto_ver": 5,
        "keepalive": 60,
        "clean_start": true,
        "expiry_interval": 0,
        "is_bridge": false,
        "connected_at": connected_at,
        "timestamp": connected_at,
        "node": "emqx@127.0.0.1"
    })
}

fn emqx_disconnected(client: &str, connected_at: i64, reason: &str) -> Value {
    json!({
        "event": "client.disconnected",
        "clientid": client,
        "username": "u1",
        "peername": "192.0.2.10:52918",
        "sockname": "0.0.0.0:1883",
        "proto_name": "MQTT",
        "proto_ver": 5,
        "reason": reason,
        "connected_at": connected_at,
        "disconnected_at": connected_at + 5000,
        "timestamp": connected_at + 5000,
        "node": "emqx@127.0.0.1"
    })
}

#[tokio::test]
async fn emqx_webhook_payloads_become_states_and_logs() {
    let server = start().await;
    let t0 = 1_790_000_000_000;

    // Connected, then kept alive too long: network, 0x8D.
    assert_eq!(
        post(&server, "emqx", &emqx_connected("e1", t0)).await,
        (200, json!({"result": "ok"}))
    );
    let s = server.get("e1").await;
    assert_eq!(s.connection_status, pb::ConnectionStatus::Connected as i32);
    assert_eq!(s.broker, "emqx");
    assert_eq!(s.client_addr, "192.0.2.10");
    assert_eq!(s.port, 52918);
    assert_eq!(s.mqtt_connect_protocol, pb::MqttProtocol::V50 as i32);
    assert_eq!(s.connection_id, t0 as u64);
    let disconnect = emqx_disconnected("e1", t0, "keepalive_timeout");
    assert_eq!(post(&server, "emqx", &disconnect).await.0, 200);
    let s = server.get("e1").await;
    assert_eq!(
        s.connection_status,
        pb::ConnectionStatus::Disconnected as i32
    );
    assert_eq!(
        s.last_disconnect_initiator,
        pb::DisconnectInitiator::Network as i32
    );
    assert_eq!(s.last_disconnect_reason_code, Some(0x8D));

    // The same payload again: logged as stale, the state does not change
    // and the disconnect is not counted twice.
    assert_eq!(post(&server, "emqx", &disconnect).await.0, 200);
    let again = server.get("e1").await;
    assert_eq!(again.counters, s.counters);
    assert_eq!(again.last_disconnect_time, s.last_disconnect_time);
    assert!(server.logs("e1").await[0].stale);

    // Out of order: the newer connection is reported first; the late
    // disconnect of the older one leaves the client connected.
    assert_eq!(
        post(&server, "emqx", &emqx_connected("e2", t0 + 20_000))
            .await
            .0,
        200
    );
    assert_eq!(
        post(&server, "emqx", &emqx_connected("e2", t0 + 10_000))
            .await
            .0,
        200
    );
    assert_eq!(
        post(
            &server,
            "emqx",
            &emqx_disconnected("e2", t0 + 10_000, "takenover")
        )
        .await
        .0,
        200
    );
    let s = server.get("e2").await;
    assert_eq!(s.connection_status, pb::ConnectionStatus::Connected as i32);
    assert_eq!(s.connection_id, (t0 + 20_000) as u64);

    // Kicked by an administrator: server, 0x98.
    assert_eq!(
        post(
            &server,
            "emqx",
            &emqx_disconnected("e2", t0 + 20_000, "kicked")
        )
        .await
        .0,
        200
    );
    let s = server.get("e2").await;
    assert_eq!(
        s.last_disconnect_initiator,
        pb::DisconnectInitiator::Server as i32
    );
    assert_eq!(s.last_disconnect_reason_code, Some(0x98));

    // A refused CONNECT (client.connack): a failed connect in the log.
    let connack = json!({
        "event": "client.connack",
        "clientid": "e3",
        "username": "u1",
        "peername": "192.0.2.11:40000",
        "proto_ver": 4,
        "keepalive": 30,
        "clean_start": true,
        "reason_code": "bad_username_or_password",
        "timestamp": t0
    });
    assert_eq!(post(&server, "emqx", &connack).await.0, 200);
    let log = server.logs("e3").await;
    assert_eq!(log[0].kind, pb::LogKind::ConnectFailed as i32);
    assert_eq!(log[0].reason_code, Some(0x86));
}

#[tokio::test]
async fn bad_webhook_calls_are_refused_counted_and_not_recorded() {
    let server = start().await;
    let bad = r#"connstate_source_input_total{source="emqx",outcome="bad"}"#;

    // Wrong or missing secret.
    let ok = emqx_connected("b1", 1_790_000_000_000);
    let (status, _) = post_with(&server, "emqx", &ok, |r| {
        r.bearer_auth("wrong-secret-wrong-secret")
    })
    .await;
    assert_eq!(status, 401);
    let (status, _) = post_with(&server, "emqx", &ok, |r| r).await;
    assert_eq!(status, 401);
    // Unknown source.
    assert_eq!(post(&server, "nobody", &ok).await.0, 404);

    // Malformed payloads: 400 naming the field.
    for (body, field) in [
        (
            json!({"event": "client.connected", "clientid": "b1", "peername": "192.0.2.1:1"}),
            "connected_at",
        ),
        (
            json!({"event": "client.connected", "clientid": 5, "connected_at": 1}),
            "clientid",
        ),
        (
            json!({"event": "client.exploded", "clientid": "b1"}),
            "event",
        ),
        (
            json!({"event": "client.connected", "clientid": "b1", "connected_at": 1, "peername": "nowhere"}),
            "peername",
        ),
        (
            json!({"event": "client.disconnected", "clientid": "b1", "connected_at": 1}),
            "reason",
        ),
        (json!([1, 2]), "body"),
    ] {
        let (status, answer) = post(&server, "emqx", &body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(
            answer["exception"]["properties"][0], field,
            "{body}: {answer}"
        );
    }
    // Not JSON at all.
    let response = reqwest::Client::new()
        .post(format!("{}/sources/emqx", server.rest))
        .bearer_auth(SECRET)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // Nothing was recorded, and every refusal was counted.
    let missing = server
        .states()
        .get_connection_state(pb::GetConnectionStateRequest {
            client_id: "b1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert_eq!(metric(&server, bad).await, 9.0);
}

#[tokio::test]
async fn vernemq_webhooks_connect_and_disconnect() {
    let server = start().await;
    let call = |hook: &'static str| {
        move |r: reqwest::RequestBuilder| {
            r.header("vernemq-hook", hook).query(&[("secret", SECRET)])
        }
    };
    // As VerneMQ documents on_register and on_client_offline.
    let register = json!({
        "peer_addr": "192.0.2.20",
        "peer_port": 8888,
        "username": "user",
        "mountpoint": "",
        "client_id": "v1"
    });
    let (status, answer) = post_with(&server, "verne", &register, call("on_register")).await;
    assert_eq!((status, answer), (200, json!({"result": "ok"})));
    let s = server.get("v1").await;
    assert_eq!(s.connection_status, pb::ConnectionStatus::Connected as i32);
    assert_eq!(s.broker, "verne");
    assert_eq!(s.client_addr, "192.0.2.20");
    let first = s.connection_id;

    // Registered again (a reconnect): a newer connection.
    assert_eq!(
        post_with(&server, "verne", &register, call("on_register"))
            .await
            .0,
        200
    );
    assert!(server.get("v1").await.connection_id > first);

    let offline = json!({"mountpoint": "", "client_id": "v1"});
    assert_eq!(
        post_with(&server, "verne", &offline, call("on_client_offline"))
            .await
            .0,
        200
    );
    let s = server.get("v1").await;
    assert_eq!(
        s.connection_status,
        pb::ConnectionStatus::Disconnected as i32
    );
    assert_eq!(
        s.last_disconnect_initiator,
        pb::DisconnectInitiator::Network as i32
    );
    // A duplicate (on_client_gone after offline): nothing changes.
    assert_eq!(
        post_with(&server, "verne", &offline, call("on_client_gone"))
            .await
            .0,
        200
    );
    assert_eq!(server.get("v1").await.revision, s.revision);

    // Without the hook header, or with an unknown hook: 400 naming it.
    let (status, answer) = post_with(&server, "verne", &offline, |r| {
        r.query(&[("secret", SECRET)])
    })
    .await;
    assert_eq!(status, 400);
    assert_eq!(answer["exception"]["properties"][0], "vernemq-hook");
    let (status, _) = post_with(&server, "verne", &offline, call("on_publish")).await;
    assert_eq!(status, 400);
    let (status, answer) = post_with(
        &server,
        "verne",
        &json!({"peer_port": 1, "client_id": "v2"}),
        call("on_register"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(answer["exception"]["properties"][0], "peer_addr");
}
