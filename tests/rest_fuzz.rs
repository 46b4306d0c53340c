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
        assert!(status < 500, "{method} {url} -> {status}");
        if !streaming && status != 204 {
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
