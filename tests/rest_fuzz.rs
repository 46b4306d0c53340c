//! Random paths and query parameters against the REST gateway: whatever
//! arrives, the answer is never a 5xx and always a JSON body (an event
//! stream for the stream path). Bounded in count and time; the seed is
//! printed so that a failure can be replayed with CONNSTATE_FUZZ_SEED.

mod common;

use std::time::{Duration, Instant};

use common::*;

impl Rng {
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    /// A value an attacker or a confused client might send.
    fn value(&mut self) -> String {
        match self.below(9) {
            0 => String::new(),
            1 => self.next().to_string(),
            2 => format!("-{}", self.next()),
            3 => "9".repeat(1 + self.below(40)),
            4 => self
                .pick(&[
                    "now-2d",
                    "-P2D",
                    "{currentTime-2D}",
                    "2026-11-26T10:00:00Z",
                    "2026-02-30",
                    "now+99999999d",
                    "P99999999999D",
                    "-PT",
                    "now-",
                ])
                .to_owned(),
            5 => self
                .pick(&[
                    "connected",
                    "disconnected",
                    "device",
                    "-lastActivityTime",
                    "id,-id",
                    "lastConnectTime desc",
                    "x:y:z",
                    "%00",
                    "%ff%fe",
                    "a%2Fb",
                ])
                .to_owned(),
            6 => (0..self.below(300))
                .map(|_| char::from(b'a' + (self.next() % 26) as u8))
                .collect(),
            7 => (0..self.below(20))
                .map(|_| format!("%{:02X}", self.next() % 256))
                .collect(),
            _ => "é✓\u{1F600}".repeat(1 + self.below(5)),
        }
    }
}

const PARAMS: &[&str] = &[
    "connectionStatus",
    "connectedAfter",
    "lastConnectedAfter",
    "connectedBefore",
    "disconnectedAfter",
    "disconnectedBefore",
    "activeAfter",
    "activeBefore",
    "deviceType",
    "deviceId",
    "appId",
    "clientType",
    "clientIdPrefix",
    "_limit",
    "_bookmark",
    "_sort",
    "typeId",
    "limit",
    "offset",
    "fromTime",
    "toTime",
    "clientId",
    "kind",
    "initiator",
    "snapshot",
    "lastEventId",
    "unknown",
];

const PATHS: &[&str] = &[
    "/api/v0002/clientconnectionstates",
    "/api/v0002/clientconnectionstates/",
    "/api/v0002/logs/connection",
    "/api/v0002/clientconnectionlogs",
    "/api/v0002/config/clientstate",
    "/api/v0002/openapi.json",
    "/api/v0002/",
    "/",
];

#[tokio::test]
async fn random_requests_never_get_a_server_error() {
    let server = TestServer::start().await;
    server
        .ingest(vec![
            connected("d:local:sensor:s1", 1, 0),
            connected("a:local:app", 2, 0),
        ])
        .await;
    let mut rng = Rng::from_env("CONNSTATE_FUZZ_SEED");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let started = Instant::now();
    let mut sent = 0;
    while sent < 1500 && started.elapsed() < Duration::from_secs(20) {
        let mut path = rng.pick(PATHS).to_owned();
        if path.ends_with("states/") {
            path.push_str(&rng.value());
        }
        let mut query = Vec::new();
        for _ in 0..rng.below(5) {
            let name = if rng.below(10) == 0 {
                rng.value()
            } else {
                rng.pick(PARAMS).to_owned()
            };
            query.push(format!("{name}={}", rng.value()));
        }
        let url = format!("{}{}?{}", server.rest, path, query.join("&"));
        let method = rng.pick(&["GET", "GET", "GET", "PUT", "DELETE", "POST"]);
        let mut request = client.request(method.parse().unwrap(), &url);
        if method == "PUT" {
            request = request
                .header("content-type", "application/json")
                .body(rng.pick(&[
                    "{\"enabled\":true}",
                    "{}",
                    "[",
                    "{\"enabled\":1}",
                    "null",
                    "{\"enabled\":true,\"x\":1}",
                ]));
        }
        let Ok(response) = request.send().await else {
            // reqwest refuses some URLs before sending; that is not ours.
            continue;
        };
        let status = response.status().as_u16();
        let streaming = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        // The web console's page is HTML, answered to GET alone.
        let console_page = status == 200
            && connstate::api::console::paths().contains(&response.url().path())
            && method == "GET";
        assert!(status < 500, "{method} {url} -> {status}");
        if !streaming && !console_page && status != 204 {
            let body = response.bytes().await.unwrap();
            assert!(
                serde_json::from_slice::<serde_json::Value>(&body).is_ok(),
                "{method} {url} -> {status} with a body that is not JSON: {:?}",
                String::from_utf8_lossy(&body)
            );
        }
        sent += 1;
    }
    assert!(sent > 100, "sent {sent} requests");
    // The feature switch may have been turned off by a random PUT; the
    // server must still answer sanely.
    let response = client
        .get(format!("{}/api/v0002/config/clientstate", server.rest))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    server.stop().await;
}

/// Paths with path parameters (device types, devices, API keys, client
/// states), with random ids, methods, bodies and credentials: every answer
/// that is not a success is the platform's error body — a `message` that
/// starts with its `exception.id`, the id's properties, and `violations`
/// on a 400 — and never a 5xx.
#[tokio::test]
async fn path_parameters_errors_are_the_platform_body() {
    let server = TestServer::start_secured().await;
    let mut rng = Rng::from_env("CONNSTATE_FUZZ_SEED");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let api = format!("{}/api/v0002", server.rest);
    // A type and a device that exist, so that some requests get further.
    for (url, body) in [
        (format!("{api}/device/types"), r#"{"id":"sensor"}"#),
        (
            format!("{api}/device/types/sensor/devices"),
            r#"{"deviceId":"s1"}"#,
        ),
    ] {
        let response = client
            .post(url)
            .header("authorization", basic(ADMIN))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
    }
    let templates = [
        "/device/types/{}",
        "/device/types/{}/devices",
        "/device/types/{}/devices/{}",
        "/device/types/sensor/devices/{}",
        "/apikeys/{}",
        "/clientconnectionstates/{}",
        "/clientconnectionstates/{}/disconnect",
    ];
    let started = Instant::now();
    let mut checked = 0;
    while checked < 1000 && started.elapsed() < Duration::from_secs(20) {
        let mut path = rng.pick(&templates).to_owned();
        while path.contains("{}") {
            let id = match rng.below(4) {
                0 => rng
                    .pick(&["sensor", "s1", "d:local:sensor:s1", ADMIN.0])
                    .to_owned(),
                1 => rng
                    .pick(&["..", ".", "%2e%2e", "%2F", "%00", "%", "a%zz", "+", "%20"])
                    .to_owned(),
                _ => rng.value(),
            };
            path = path.replacen("{}", &id, 1);
        }
        let url = format!("{api}{path}");
        let method = rng.pick(&["GET", "POST", "PUT", "DELETE", "PATCH"]);
        let mut request = client.request(method.parse().unwrap(), &url);
        request = match rng.below(4) {
            0 => request,
            1 => request.header("authorization", basic((ADMIN.0, "wrong-token-0000000000"))),
            _ => request.header("authorization", basic(ADMIN)),
        };
        if rng.below(2) == 0 {
            if rng.below(3) > 0 {
                request = request.header("content-type", "application/json");
            }
            request = request.body(
                rng.pick(&[
                    r#"{"deviceId":"x1"}"#,
                    r#"{"id":"t1","classId":"Gateway"}"#,
                    r#"{"role":"admin"}"#,
                    r#"{"deviceId":5}"#,
                    "{",
                    "[]",
                    "null",
                    r#"{"deviceId":"x2","colour":"red"}"#,
                ])
                .to_owned(),
            );
        }
        let Ok(response) = request.send().await else {
            continue;
        };
        let status = response.status().as_u16();
        assert!(status < 500, "{method} {url} -> {status}");
        let body = response.bytes().await.unwrap();
        if status < 400 {
            continue;
        }
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
            panic!(
                "{method} {url} -> {status}: the body is not JSON: {:?}",
                String::from_utf8_lossy(&body)
            )
        });
        let id = json["exception"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {url} -> {status}: no exception.id in {json}"));
        let is_platform_id = id.len() == 10
            && id.starts_with("CUD")
            && id.ends_with('E')
            && id[5..9].bytes().all(|b| b.is_ascii_digit());
        assert!(is_platform_id, "{method} {url} -> {status}: id {id:?}");
        let message = json["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(&format!("{id}: ")),
            "{method} {url} -> {status}: message {message:?}"
        );
        assert!(
            json["exception"]["properties"].is_array(),
            "{method} {url} -> {status}: {json}"
        );
        if status == 400 {
            assert!(
                json["violations"].as_array().is_some_and(|v| !v.is_empty()),
                "{method} {url} -> 400 without violations: {json}"
            );
        }
        checked += 1;
    }
    assert!(checked > 100, "checked {checked} error answers");
    server.stop().await;
}
