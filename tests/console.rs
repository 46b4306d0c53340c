//! The web console and the API docs served by the REST listener: the
//! embedded files with their types, Content-Security-Policy and
//! validators, open to anyone, while every API call they make still needs
//! credentials; and the two endpoints the console reads (`whoami` and the
//! connection statistics).

mod common;

use std::time::Duration;

use common::*;
use connstate::pb::DisconnectCause;
use reqwest::header;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn expected_type(path: &str) -> &'static str {
    if path == "/" || path == "/api/v0002/docs" {
        "text/html; charset=utf-8"
    } else if path.ends_with(".js") {
        "text/javascript; charset=utf-8"
    } else if path.ends_with(".css") {
        "text/css; charset=utf-8"
    } else if path.ends_with(".svg") {
        "image/svg+xml"
    } else {
        "application/json"
    }
}

/// The value of a CSP directive (`script-src` -> `'self'`).
fn directive<'a>(csp: &'a str, name: &str) -> Option<&'a str> {
    csp.split(';')
        .map(str::trim)
        .find_map(|d| d.strip_prefix(name)?.strip_prefix(' '))
}

#[tokio::test]
async fn console_and_docs_files_load_without_credentials_with_type_csp_and_caching() {
    tokio::time::timeout(LIMIT, async {
        let server = TestServer::start_secured().await;
        let http = http();
        let paths = connstate::api::console::paths();
        assert!(paths.contains(&"/") && paths.contains(&"/api/v0002/docs"));
        for path in paths {
            let url = format!("{}{path}", server.rest);
            let response = http.get(&url).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path} needs no credentials");
            let headers = response.headers().clone();
            let value = |name: header::HeaderName| {
                headers
                    .get(&name)
                    .unwrap_or_else(|| panic!("{path}: no {name}"))
                    .to_str()
                    .unwrap()
                    .to_owned()
            };
            assert_eq!(value(header::CONTENT_TYPE), expected_type(path), "{path}");
            assert_eq!(value(header::X_CONTENT_TYPE_OPTIONS), "nosniff", "{path}");
            let csp = value(header::CONTENT_SECURITY_POLICY);
            assert_eq!(
                directive(&csp, "default-src"),
                Some("'none'"),
                "{path}: {csp}"
            );
            assert_eq!(
                directive(&csp, "script-src"),
                Some("'self'"),
                "{path}: {csp}"
            );
            assert_eq!(
                directive(&csp, "frame-ancestors"),
                Some("'none'"),
                "{path}: {csp}"
            );
            let cache = value(header::CACHE_CONTROL);
            if path.contains("/swagger-ui-dist-5.35.0/") {
                assert!(cache.contains("immutable"), "{path}: {cache}");
            } else {
                assert_eq!(cache, "no-cache", "{path}");
            }
            let etag = value(header::ETAG);
            let body = response.bytes().await.unwrap();
            assert!(!body.is_empty(), "{path}");
            // Unchanged: the browser's copy is good.
            let again = http
                .get(&url)
                .header(header::IF_NONE_MATCH, &etag)
                .send()
                .await
                .unwrap();
            assert_eq!(again.status(), 304, "{path}");
            assert_eq!(
                again.headers()[header::CONTENT_SECURITY_POLICY],
                csp.as_str()
            );
            if expected_type(path).starts_with("text/html") {
                // No inline script: every script element names its file.
                let html = String::from_utf8(body.to_vec()).unwrap();
                for script in html.split("<script").skip(1) {
                    let tag = &script[..script.find('>').unwrap()];
                    assert!(tag.contains("src=\""), "{path}: inline script {tag}");
                    assert!(script[script.find('>').unwrap() + 1..].starts_with("</script>"));
                }
                assert!(
                    !html.contains("http://") && !html.contains("https://"),
                    "{path}: offline"
                );
            }
        }
        // Another method: the API's 405 body, not an empty answer.
        let put = http.put(format!("{}/", server.rest)).send().await.unwrap();
        assert_eq!(put.status(), 405);
        let body: Value = put.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().starts_with("CUDCS"),
            "{body}"
        );
        // The console links to the docs, the docs page loads the vendored
        // Swagger UI and the repository's OpenAPI document.
        let index = http.get(format!("{}/", server.rest)).send().await.unwrap();
        assert!(
            index
                .text()
                .await
                .unwrap()
                .contains("href=\"/api/v0002/docs\"")
        );
        let docs = http
            .get(format!("{}/api/v0002/docs", server.rest))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(docs.contains("/api/v0002/docs/swagger-ui-dist-5.35.0/swagger-ui-bundle.js"));
        assert!(docs.contains("/api/v0002/docs/swagger-ui-dist-5.35.0/swagger-ui.css"));
        let document: Value = http
            .get(format!("{}/api/v0002/docs/openapi.json", server.rest))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let kept: Value = serde_json::from_str(connstate::api::rest::OPENAPI).unwrap();
        assert_eq!(document, kept);
        server.stop().await;
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn every_api_call_of_the_console_still_needs_credentials() {
    tokio::time::timeout(LIMIT, async {
        let server = TestServer::start_secured().await;
        let http = http();
        for path in [
            "/api/v0002/whoami",
            "/api/v0002/clientconnectionstats",
            "/api/v0002/clientconnectionstates",
            "/api/v0002/clientconnectionlogs",
            "/api/v0002/stream/clientconnectionstates",
            "/api/v0002/openapi.json",
            "/api/v0002/docs/nothing-here",
            "/console/nothing-here.js",
        ] {
            let response = http
                .get(format!("{}{path}", server.rest))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 401, "{path}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["exception"]["id"], "CUDCS0001E", "{path}");
        }
        let post = http
            .post(format!(
                "{}/api/v0002/clientconnectionstates/d:local:t:d1/disconnect",
                server.rest
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(post.status(), 401);
        server.stop().await;
    })
    .await
    .expect("bounded");
}

/// Creates an API key of `role` with the administrator key.
async fn create_key(server: &TestServer, role: &str) -> (String, String) {
    let created: Value = http()
        .post(format!("{}/api/v0002/apikeys", server.rest))
        .header(header::AUTHORIZATION, basic(ADMIN))
        .json(&json!({ "role": role }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        created["key"].as_str().unwrap().to_owned(),
        created["token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn whoami_names_the_callers_key_and_role() {
    tokio::time::timeout(LIMIT, async {
        let server = TestServer::start_secured().await;
        let http = http();
        let url = format!("{}/api/v0002/whoami", server.rest);
        for role in ["read-only", "operator", "admin"] {
            let (key, token) = create_key(&server, role).await;
            let me: Value = http
                .get(&url)
                .header(header::AUTHORIZATION, basic((&key, &token)))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(me, json!({ "key": key, "role": role, "auth": true }));
        }
        let wrong = http
            .get(&url)
            .header(
                header::AUTHORIZATION,
                basic((ADMIN.0, "not-the-token-at-all")),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
        server.stop().await;

        let open = TestServer::start().await;
        let me: Value = http
            .get(format!("{}/api/v0002/whoami", open.rest))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(me["auth"], false);
        assert_eq!(me["role"], "admin");
        open.stop().await;
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn connection_statistics_count_the_fleet_and_the_last_hour() {
    tokio::time::timeout(LIMIT, async {
        let server = TestServer::start().await;
        let flappy = "d:local:sensor:flappy";
        let steady = "d:local:sensor:steady";
        let app = "a:local:dashboard";
        let gone = "d:local:sensor:gone";
        // Two hours ago: outside the window.
        server.ingest(vec![connected(gone, 1, -3600)]).await;
        server
            .ingest(vec![disconnected(gone, 1, -3590, DisconnectCause::SocketClosed, None)])
            .await;
        let mut events = vec![connected(steady, 10, 3500), connected(app, 11, 3500)];
        for i in 0..3u64 {
            let at = 3510 + 10 * i as i64;
            events.push(connected(flappy, 20 + i, at));
            events.push(disconnected(
                flappy,
                20 + i,
                at + 5,
                if i == 0 {
                    DisconnectCause::AdministrativeAction
                } else {
                    DisconnectCause::KeepAliveTimeout
                },
                None,
            ));
        }
        for event in events {
            server.ingest(vec![event]).await;
        }
        let stats: Value = http()
            .get(format!("{}/api/v0002/clientconnectionstats", server.rest))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            stats["connected"],
            json!({"device": 1, "gateway": 0, "application": 1, "unknown": 0, "total": 2}),
            "{stats}"
        );
        let minutes = stats["perMinute"].as_array().unwrap();
        assert_eq!(minutes.len(), 60);
        let sum = |field: &str| minutes.iter().map(|m| m[field].as_u64().unwrap()).sum::<u64>();
        assert_eq!(sum("connects"), 5, "{stats}");
        assert_eq!(sum("disconnects"), 3, "{stats}");
        assert_eq!(sum("failedConnects"), 0);
        assert_eq!(
            stats["disconnectsByCause"],
            json!([
                {"initiator": "network", "reasonCode": 0x8D, "reason": "keep alive timeout", "count": 2},
                {"initiator": "server", "reasonCode": 0x98, "reason": "administrative action", "count": 1},
            ]),
            "{stats}"
        );
        let top = &stats["mostDisconnected"];
        assert_eq!(top.as_array().unwrap().len(), 1, "{stats}");
        assert_eq!(top[0]["id"], flappy);
        assert_eq!(top[0]["disconnects"], 3);
        assert_eq!(top[0]["connectionStatus"], "disconnected");
        assert_eq!(top[0]["counters"]["disconnectsByNetwork"], 2);
        assert_eq!(top[0]["counters"]["disconnectsByServer"], 1);
        assert_eq!(stats["truncated"], false);
        assert_eq!(stats["entriesRead"], 8);
        server.stop().await;
    })
    .await
    .expect("bounded");
}
