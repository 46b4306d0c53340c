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

/// Asserts the platform's error body with `status` and message id `id`.
fn assert_platform_error(status: u16, body: &Value, want_status: u16, id: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["exception"]["id"], id, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{id}: ")),
        "{body}"
    );
}

#[tokio::test]
async fn bad_bodies_are_blamed_on_the_body_or_the_field_at_fault() {
    tokio::time::timeout(LIMIT, async {
        let server = TestServer::start().await;
        let http = http();
        let rest = &server.rest;
        let keys = format!("{rest}/api/v0002/apikeys");
        let types = format!("{rest}/api/v0002/device/types");
        let devices = format!("{rest}/api/v0002/device/types/sensor/devices");
        let config = format!("{rest}/api/v0002/config/clientstate");
        let created = http
            .post(&types)
            .json(&serde_json::json!({"id": "sensor"}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status().as_u16(), 201);

        let send = |method: &str, url: &str, content_type: Option<&str>, body: Vec<u8>| {
            let mut request = http.request(method.parse().unwrap(), url).body(body);
            if let Some(t) = content_type {
                request = request.header("content-type", t);
            }
            request.send()
        };
        let json_type = Some("application/json");
        // Not JSON at all, or not an object: the body is at fault.
        for (method, url) in [
            ("POST", &keys),
            ("POST", &types),
            ("POST", &devices),
            ("PUT", &config),
        ] {
            for body in ["{\"role\":", "[1, 2]", "null", "", "{} trailing"] {
                let (status, json_body) =
                    json(send(method, url, json_type, body.into()).await.unwrap()).await;
                assert_bad_parameter(status, &json_body, "body");
            }
            // No JSON content type: 415 in the platform's body.
            let (status, body) = json(
                send(method, url, None, b"{\"deviceId\":\"x\"}".to_vec())
                    .await
                    .unwrap(),
            )
            .await;
            assert_platform_error(status, &body, 415, "CUDCS0415E");
            let (status, body) = json(
                send(method, url, Some("text/plain"), b"{}".to_vec())
                    .await
                    .unwrap(),
            )
            .await;
            assert_platform_error(status, &body, 415, "CUDCS0415E");
            // Far too large: 413 in the platform's body.
            let mut big = b"{\"description\":\"".to_vec();
            big.resize(10 << 20, b'a');
            big.extend_from_slice(b"\"}");
            let (status, body) = json(send(method, url, json_type, big).await.unwrap()).await;
            assert_platform_error(status, &body, 413, "CUDCS0413E");
        }
        // A field that is wrong, missing or unknown is named.
        for (method, url, body, field) in [
            ("POST", &keys, r#"{"description": "x"}"#, "role"),
            ("POST", &keys, r#"{"role": 7}"#, "role"),
            (
                "POST",
                &keys,
                r#"{"role": "admin", "colour": "red"}"#,
                "colour",
            ),
            ("POST", &types, r#"{"id": 5}"#, "id"),
            ("POST", &types, r#"{"description": "no id"}"#, "id"),
            (
                "POST",
                &devices,
                r#"{"deviceId": "d1", "authToken": 5}"#,
                "authToken",
            ),
            ("PUT", &config, r#"{"enabled": "yes"}"#, "enabled"),
            ("PUT", &config, r#"{}"#, "enabled"),
            ("PUT", &config, r#"{"enabled": true, "x": 1}"#, "x"),
        ] {
            let (status, json_body) =
                json(send(method, url, json_type, body.into()).await.unwrap()).await;
            assert_bad_parameter(status, &json_body, field);
        }
        // A JSON media type with parameters is JSON.
        let response = send(
            "PUT",
            &config,
            Some("application/json; charset=utf-8"),
            br#"{"enabled": true}"#.to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        server.stop().await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test]
async fn wrong_credentials_are_called_invalid_not_missing() {
    tokio::time::timeout(LIMIT, async {
        let server = TestServer::start_secured().await;
        let http = http();
        let url = format!("{}/api/v0002/clientconnectionstates", server.rest);
        let (status, body) = json(http.get(&url).send().await.unwrap()).await;
        assert_platform_error(status, &body, 401, "CUDCS0001E");
        for authorization in [
            basic((ADMIN.0, "not-the-token-at-all")),
            basic(("a-local-nobody", ADMIN.1)),
            "Basic !!!not-base64".to_owned(),
            "Bearer abc".to_owned(),
        ] {
            let (status, body) = json(
                http.get(&url)
                    .header("authorization", &authorization)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_platform_error(status, &body, 401, "CUDCS0005E");
            let message = body["message"].as_str().unwrap();
            assert!(message.contains("nvalid credentials"), "{message}");
            assert!(!message.contains("required"), "{message}");
        }

        let request = || pb_request();
        let missing = server
            .states()
            .get_connection_state(with_auth(request(), None))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(
            missing.message().contains("required"),
            "{}",
            missing.message()
        );
        let wrong = server
            .states()
            .get_connection_state(with_auth(request(), Some((ADMIN.0, "wrong-token-wrong"))))
            .await
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert!(
            wrong.message().contains("invalid credentials"),
            "{}",
            wrong.message()
        );
        assert!(!wrong.message().contains("required"), "{}", wrong.message());
        server.stop().await;
    })
    .await
    .expect("within the time limit");
}

fn pb_request() -> connstate::pb::GetConnectionStateRequest {
    connstate::pb::GetConnectionStateRequest {
        client_id: "d:local:t:x".into(),
    }
}

#[tokio::test]
async fn disconnecting_a_client_that_is_not_connected_says_so() {
    tokio::time::timeout(LIMIT, async {
        let server = TestServer::start().await;
        server
            .ingest(vec![
                connected("d:local:t:gone", 1, 0),
                disconnected(
                    "d:local:t:gone",
                    1,
                    5,
                    connstate::pb::DisconnectCause::ClientDisconnect,
                    Some(0),
                ),
                connected("d:local:t:elsewhere", 2, 0),
            ])
            .await;
        let http = http();
        let kick = |id: &str| {
            http.post(format!(
                "{}/api/v0002/clientconnectionstates/{id}/disconnect",
                server.rest
            ))
            .send()
        };
        let (status, body) = json(kick("d:local:t:gone").await.unwrap()).await;
        assert_platform_error(status, &body, 409, "CUDCS0412E");
        assert_eq!(body["exception"]["properties"][0], "d:local:t:gone");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("is not connected"), "{message}");
        assert!(!message.contains("No connection state"), "{message}");

        // Connected through another broker: this server cannot end it.
        let (status, body) = json(kick("d:local:t:elsewhere").await.unwrap()).await;
        assert_platform_error(status, &body, 409, "CUDCS0412E");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("broker test"), "{message}");

        let (status, body) = json(kick("d:local:t:never").await.unwrap()).await;
        assert_platform_error(status, &body, 404, "CUDCS0404E");
        server.stop().await;
    })
    .await
    .expect("within the time limit");
}

/// `path` with its `{parameters}` filled with valid sample values.
fn sample_path(path: &str) -> String {
    path.replace("{clientId}", "d:local:t1:d1")
        .replace("{typeId}", "t1")
        .replace("{deviceId}", "d1")
        .replace("{key}", "a-local-nobody")
}

/// Every operation of the document: (path, method, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method != "parameters" {
                out.push((path.clone(), method.to_uppercase(), op.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn every_operation_documents_401_exactly_when_it_answers_401() {
    tokio::time::timeout(LIMIT, async {
        let server = TestServer::start_secured().await;
        let doc: Value = serde_json::from_str(connstate::api::rest::OPENAPI).unwrap();
        let http = http();
        for (path, method, op) in operations(&doc) {
            let documented = op["responses"].get("401").is_some();
            for credentials in [None, Some((ADMIN.0, "not-the-admin-token"))] {
                let url = format!("{}{}", server.rest, sample_path(&path));
                let mut request = http.request(method.parse().unwrap(), &url);
                if op.get("requestBody").is_some() {
                    request = request.json(&serde_json::json!({}));
                }
                if let Some(c) = credentials {
                    request = request.header("authorization", basic(c));
                }
                let status = request.send().await.unwrap().status().as_u16();
                assert_eq!(
                    status == 401,
                    documented,
                    "{method} {path} answered {status} to {credentials:?}; 401 documented: {documented}"
                );
            }
        }
        server.stop().await;
    })
    .await
    .expect("within the time limit");
}

/// A body the operation takes, to break one property at a time.
fn valid_body(path: &str) -> Value {
    match path {
        "/api/v0002/apikeys" => serde_json::json!({"role": "read-only", "description": "d"}),
        "/api/v0002/device/types" => serde_json::json!({"id": "t2", "classId": "Device"}),
        "/api/v0002/device/types/{typeId}/devices" => {
            serde_json::json!({"deviceId": "d2", "authToken": "token-0123456789"})
        }
        "/api/v0002/config/clientstate" => serde_json::json!({"enabled": true}),
        other => panic!("no sample body for {other}"),
    }
}

#[tokio::test]
async fn the_documented_constraints_are_the_ones_enforced() {
    tokio::time::timeout(LIMIT, async {
        let server = TestServer::start().await;
        let doc: Value = serde_json::from_str(connstate::api::rest::OPENAPI).unwrap();
        let http = http();
        let created = http
            .post(format!("{}/api/v0002/device/types", server.rest))
            .json(&serde_json::json!({"id": "t1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status().as_u16(), 201);
        let mut checked = 0;
        for (path, method, op) in operations(&doc) {
            // Path and query parameters: one byte past maxLength is a 400
            // naming the parameter; maxLength itself is not.
            let path_parameters = doc["paths"][&path]["parameters"].as_array().cloned();
            let parameters = path_parameters
                .into_iter()
                .flatten()
                .chain(op["parameters"].as_array().cloned().into_iter().flatten());
            for parameter in parameters {
                let name = parameter["name"].as_str().unwrap();
                let Some(max) = parameter["schema"]["maxLength"].as_u64() else {
                    continue;
                };
                for (length, refused) in [(max + 1, true), (max, false)] {
                    let value = "a".repeat(length as usize);
                    let url = match parameter["in"].as_str().unwrap() {
                        "path" => format!(
                            "{}{}",
                            server.rest,
                            sample_path(&path.replace(&format!("{{{name}}}"), &value))
                        ),
                        _ => {
                            let mut query = vec![format!("{name}={value}")];
                            for other in ["typeId", "deviceId"] {
                                let required = path == "/api/v0002/logs/connection";
                                let paired = path == "/api/v0002/clientconnectionlogs"
                                    && matches!(name, "typeId" | "deviceId");
                                if other != name && (required || paired) {
                                    query.push(format!("{other}=d1"));
                                }
                            }
                            format!("{}{}?{}", server.rest, sample_path(&path), query.join("&"))
                        }
                    };
                    let mut request = http.request(method.parse().unwrap(), &url);
                    if op.get("requestBody").is_some() {
                        request = request.json(&valid_body(&path));
                    }
                    let response = request.send().await.unwrap();
                    let status = response.status().as_u16();
                    if refused {
                        let (status, body) = json(response).await;
                        assert_bad_parameter(status, &body, name);
                    } else {
                        assert_ne!(status, 400, "{method} {url}");
                    }
                    checked += 1;
                }
            }
            // Bodies: no property the schema leaves out, every required
            // one, and their lengths.
            let Some(schema) = op["requestBody"]["content"]["application/json"]["schema"]
                .as_object()
                .cloned()
            else {
                continue;
            };
            let schema = match schema.get("$ref").and_then(Value::as_str) {
                Some(reference) => {
                    let name = reference.rsplit('/').next().unwrap();
                    doc["components"]["schemas"][name].clone()
                }
                None => Value::Object(schema),
            };
            let base = valid_body(&path);
            let mut broken: Vec<(Value, String)> = Vec::new();
            if schema["additionalProperties"] == false {
                let mut body = base.clone();
                body["unexpected"] = serde_json::json!(1);
                broken.push((body, "unexpected".into()));
            }
            for required in schema["required"].as_array().into_iter().flatten() {
                let required = required.as_str().unwrap();
                let mut body = base.clone();
                body.as_object_mut().unwrap().remove(required);
                broken.push((body, required.into()));
            }
            for (name, property) in schema["properties"].as_object().unwrap() {
                if let Some(max) = property["maxLength"].as_u64() {
                    let mut body = base.clone();
                    body[name] = Value::String("a".repeat(max as usize + 1));
                    broken.push((body, name.clone()));
                }
                if let Some(min) = property["minLength"].as_u64() {
                    let mut body = base.clone();
                    body[name] = Value::String("a".repeat(min as usize - 1));
                    broken.push((body, name.clone()));
                }
            }
            assert!(
                !broken.is_empty(),
                "{method} {path} documents no constraint"
            );
            for (body, field) in broken {
                let url = format!("{}{}", server.rest, sample_path(&path));
                let response = http
                    .request(method.parse().unwrap(), &url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let (status, answer) = json(response).await;
                assert_bad_parameter(status, &answer, &field);
                checked += 1;
            }
        }
        assert!(checked > 30, "checked {checked} constraints");
        server.stop().await;
    })
    .await
    .expect("within the time limit");
}
