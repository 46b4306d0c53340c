//! The REST gateway's answers to requests it cannot serve: unknown query
//! parameters, bad bodies, wrong credentials, a client that is not
//! connected; and the OpenAPI document's promises, checked against what the
//! server does.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Every test here is bounded: a hung request fails it.
const LIMIT: Duration = Duration::from_secs(60);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.expect("JSON body");
    (status, body)
}

/// Asserts the platform's 400 body naming `param`.
fn assert_bad_parameter(status: u16, body: &Value, param: &str) {
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("CUDCS0400E: "),
        "{body}"
    );
    assert_eq!(body["exception"]["id"], "CUDCS0400E", "{body}");
    assert_eq!(body["exception"]["properties"][0], param, "{body}");
    let violation = &body["violations"][0];
    assert_eq!(violation["exception"]["properties"][0], param, "{body}");
    assert!(
        violation["message"].as_str().unwrap().contains(param),
        "{body}"
    );
}

#[tokio::test]
async fn unknown_query_parameters_are_refused_by_name() {
    tokio::time::timeout(LIMIT, async {
        let server = TestServer::start().await;
        server
            .ingest(vec![connected("d:local:sensor:s1", 1, 0)])
            .await;
        let http = http();
        let rest = &server.rest;
        for (url, param) in [
            (
                format!("{rest}/api/v0002/clientconnectionstates?typeId=sensor"),
                "typeId",
            ),
            (
                format!("{rest}/api/v0002/clientconnectionstates?_limit=5&limit=5"),
                "limit",
            ),
            (
                format!("{rest}/api/v0002/logs/connection?typeId=sensor&deviceId=s1&_limit=5"),
                "_limit",
            ),
            (
                format!("{rest}/api/v0002/clientconnectionlogs?clientID=d:local:sensor:s1"),
                "clientID",
            ),
            (
                format!("{rest}/api/v0002/stream/clientconnectionstates?activeAfter=now-1d"),
                "activeAfter",
            ),
            (
                format!("{rest}/api/v0002/clientconnectionstates?deviceType=sensor&colour="),
                "colour",
            ),
        ] {
            let (status, body) = json(http.get(&url).send().await.unwrap()).await;
            assert_bad_parameter(status, &body, param);
        }
        // Every documented alias is still taken.
        for query in [
            "lastConnectedAfter=now-1d",
            "lastConnectedBefore=now",
            "lastDisconnectedAfter=now-1d",
            "lastDisconnectedBefore=now",
            "lastActivityAfter=now-1d",
            "lastActivityBefore=now",
            "typeId=",
        ] {
            let url = format!("{rest}/api/v0002/clientconnectionstates?{query}");
            let response = http.get(&url).send().await.unwrap();
            if query == "typeId=" {
                // An unknown name is refused even without a value.
                let (status, body) = json(response).await;
                assert_bad_parameter(status, &body, "typeId");
            } else {
                assert_eq!(response.status().as_u16(), 200, "{query}");
            }
        }
        server.stop().await;
    })
    .await
    .expect("within the time limit");
}

/// The `in: query` parameter names of each operation of the document.
fn documented_query_parameters(doc: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let names = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "query")
                        .map(|p| p["name"].as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            out.push((path.clone(), method.clone(), names));
        }
    }
    out
}

#[tokio::test]
async fn the_openapi_document_lists_the_query_parameters_the_server_takes() {
    let doc: Value = serde_json::from_str(connstate::api::rest::OPENAPI).unwrap();
    let taken = connstate::api::rest::query_parameters();
    for (path, method, mut documented) in documented_query_parameters(&doc) {
        let mut expected: Vec<String> = taken
            .iter()
            .find(|(p, _)| *p == path && method == "get")
            .map(|(_, names)| names.iter().map(|n| (*n).to_owned()).collect())
            .unwrap_or_default();
        documented.sort();
        expected.sort();
        assert_eq!(documented, expected, "{method} {path}");
    }
}
