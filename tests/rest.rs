//! The v0002 REST gateway with a real HTTP client: the platform's paths,
//! JSON shapes, bookmarks and error bodies.

mod common;

use std::{collections::HashSet, time::Duration};

use common::*;
use connstate::pb::{self, DisconnectCause};
use serde_json::Value;

async fn get(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.expect("request");
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
    assert_eq!(body["exception"]["id"], "CUDCS0400E");
    assert_eq!(body["exception"]["properties"][0], param, "{body}");
    let violation = &body["violations"][0];
    assert_eq!(violation["exception"]["properties"][0], param, "{body}");
    assert!(
        violation["message"].as_str().unwrap().contains(param),
        "{body}"
    );
}

#[tokio::test]
async fn one_record_in_the_platform_shape() {
    let server = TestServer::start().await;
    server
        .ingest(vec![
            connected("d:local:sensor:s1", 1, 0),
            disconnected(
                "d:local:sensor:s1",
                1,
                30,
                DisconnectCause::KeepAliveTimeout,
                None,
            ),
        ])
        .await;
    let (status, body) = get(&format!(
        "{}/api/v0002/clientconnectionstates/d:local:sensor:s1",
        server.rest
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "d:local:sensor:s1");
    assert_eq!(body["clientType"], "device");
    assert_eq!(body["connectionStatus"], "disconnected");
    assert_eq!(body["lastDisconnectInitiator"], "network");
    assert_eq!(body["lastDisconnectReasonCode"], 0x8D);
    assert_eq!(body["lastCloseCode"], 160);
    assert_eq!(body["lastActivityEvent"], "mqttDisconnect");
    assert_eq!(body["mqttConnectProtocol"], "3.1.1");
    assert_eq!(body["keepAliveSeconds"], 60);
    assert_eq!(body["counters"]["disconnectsByNetwork"], 1);
    let time = body["lastConnectTime"].as_str().unwrap();
    assert_eq!(time.len(), "2026-11-26T10:00:00.000Z".len(), "{time}");
    assert!(time.ends_with('Z') && time.contains('.'), "{time}");
    assert!(
        body.get("expectedAliveUntil").is_none(),
        "absent, not null: {body}"
    );

    // Percent-encoded ids are decoded.
    let (status, _) = get(&format!(
        "{}/api/v0002/clientconnectionstates/d%3Alocal%3Asensor%3As1",
        server.rest
    ))
    .await;
    assert_eq!(status, 200);

    let (status, body) = get(&format!(
        "{}/api/v0002/clientconnectionstates/d:local:sensor:nobody",
        server.rest
    ))
    .await;
    assert_eq!(status, 404);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("CUDCS0404E: ")
    );
    assert_eq!(
        body["exception"]["properties"],
        serde_json::json!(["d:local:sensor:nobody"])
    );
    assert!(body.get("violations").is_none());
    server.stop().await;
}

#[tokio::test]
async fn filters_sorts_and_relative_times() {
    let server = TestServer::start().await;
    let mut events = Vec::new();
    for i in 0..6u64 {
        let id = if i % 2 == 0 {
            format!("d:local:sensor:s{i}")
        } else {
            format!("g:local:gw:g{i}")
        };
        events.push(connected(&id, i + 1, i as i64 * 10));
        if i >= 3 {
            events.push(disconnected(
                &id,
                i + 1,
                i as i64 * 10 + 5,
                DisconnectCause::SocketClosed,
                None,
            ));
        }
    }
    server.ingest(events).await;
    let ids = |body: &Value| -> Vec<String> {
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let base = format!("{}/api/v0002/clientconnectionstates", server.rest);
    let (_, body) = get(&format!("{base}?connectionStatus=connected")).await;
    assert_eq!(
        ids(&body),
        ["d:local:sensor:s0", "d:local:sensor:s2", "g:local:gw:g1"]
    );
    assert!(body.get("bookmark").is_none());
    let (_, body) = get(&format!("{base}?clientType=gateway&_sort=-lastConnectTime")).await;
    assert_eq!(
        ids(&body),
        ["g:local:gw:g5", "g:local:gw:g3", "g:local:gw:g1"]
    );
    let (_, body) = get(&format!("{base}?deviceType=sensor&deviceId=s4")).await;
    assert_eq!(ids(&body), ["d:local:sensor:s4"]);
    let (_, body) = get(&format!(
        "{base}?clientIdPrefix=g:&connectionStatus=disconnected&_sort=lastDisconnectTime"
    ))
    .await;
    assert_eq!(ids(&body), ["g:local:gw:g3", "g:local:gw:g5"]);
    // The fixture's times are an hour ago and later: relative bounds.
    let (_, body) = get(&format!("{base}?lastConnectedAfter=now-2h&_limit=1000")).await;
    assert_eq!(ids(&body).len(), 6);
    let (_, body) = get(&format!("{base}?connectedAfter=-PT10M")).await;
    assert!(ids(&body).is_empty());
    let (_, body) = get(&format!("{base}?activeBefore={{currentTime-2D}}")).await;
    assert!(ids(&body).is_empty());
    let (_, body) = get(&base).await;
    assert_eq!(body["meta"]["total_rows"], 6);
    // The empty bookmark a client library sends on the first page is
    // taken as absent.
    let (status, body) = get(&format!("{base}?_bookmark=&_limit=2")).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&body).len(), 2);
    assert!(body.get("bookmark").is_some());
    server.stop().await;
}

#[tokio::test]
async fn bad_parameters_get_400_bodies_naming_them() {
    let server = TestServer::start().await;
    let base = format!("{}/api/v0002/clientconnectionstates", server.rest);
    for (query, param) in [
        ("connectionStatus=maybe", "connectionStatus"),
        ("clientType=robot", "clientType"),
        ("_limit=0", "_limit"),
        ("_limit=1001", "_limit"),
        ("_limit=ten", "_limit"),
        ("activeAfter=yesterday", "activeAfter"),
        ("lastConnectedAfter=2026-13-45", "lastConnectedAfter"),
        (
            "connectedAfter=2026-11-26T10:00:00Z&connectedBefore=2026-11-25T10:00:00Z",
            "connectedAfter",
        ),
        ("_sort=shoeSize", "_sort"),
        ("_sort=lastConnectTime,lastActivityTime", "_sort"),
        ("_bookmark=not-a-bookmark", "_bookmark"),
    ] {
        let (status, body) = get(&format!("{base}?{query}")).await;
        assert_bad_parameter(status, &body, param);
    }
    let logs = format!("{}/api/v0002/logs/connection", server.rest);
    for (query, param) in [
        ("deviceId=s1", "typeId"),
        ("typeId=sensor", "deviceId"),
        ("typeId=sensor&deviceId=s1&limit=21", "limit"),
        ("typeId=sensor&deviceId=s1&fromTime=now-1d", "toTime"),
        ("typeId=sensor&deviceId=s1&toTime=now", "fromTime"),
        ("typeId=bad%20type&deviceId=s1", "typeId"),
        ("typeId=sensor&deviceId=bad%20id", "deviceId"),
    ] {
        let (status, body) = get(&format!("{logs}?{query}")).await;
        assert_bad_parameter(status, &body, param);
    }
    let (status, body) = get(&format!(
        "{}/api/v0002/clientconnectionlogs?kind=sideways",
        server.rest
    ))
    .await;
    assert_bad_parameter(status, &body, "kind");

    let (status, body) = get(&format!("{}/api/v0002/nothing-here", server.rest)).await;
    assert_eq!(status, 404);
    assert!(body["message"].as_str().unwrap().starts_with("CUDCS"));
    let response = reqwest::Client::new().post(&base).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["exception"]["properties"][0], "POST");
    server.stop().await;
}

#[tokio::test]
async fn paging_1000_clients_with_bookmarks_while_clients_come_and_go() {
    let server = TestServer::start().await;
    for chunk in 0..10u64 {
        let events = (0..100u64)
            .map(|i| {
                let n = chunk * 100 + i;
                connected(&format!("d:local:t:c{n:04}"), n + 1, 0)
            })
            .collect();
        server.ingest(events).await;
    }
    let churn = {
        let mut ingest = server.ingest_client();
        tokio::spawn(async move {
            for round in 0..40u64 {
                let flap = (round * 37) % 1000;
                let events = vec![
                    disconnected(
                        &format!("d:local:t:c{flap:04}"),
                        flap + 1,
                        5,
                        DisconnectCause::SocketClosed,
                        None,
                    ),
                    connected(&format!("d:local:t:c{flap:04}"), 10_000 + round, 6),
                    connected(&format!("a:local:newcomer{round}"), 20_000 + round, 6),
                ];
                ingest
                    .ingest_events(pb::IngestEventsRequest {
                        lease_duration: None,
                        broker: "test".into(),
                        events,
                    })
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let mut seen = Vec::new();
    let mut bookmark: Option<String> = None;
    let client = reqwest::Client::new();
    loop {
        let mut request = client
            .get(format!("{}/api/v0002/clientconnectionstates", server.rest))
            .query(&[("_limit", "50"), ("deviceType", "t")]);
        if let Some(b) = &bookmark {
            request = request.query(&[("_bookmark", b)]);
        }
        let body: Value = request.send().await.unwrap().json().await.unwrap();
        let results = body["results"].as_array().unwrap();
        assert!(results.len() <= 50);
        seen.extend(results.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        match body.get("bookmark") {
            Some(b) => bookmark = Some(b.as_str().unwrap().to_owned()),
            None => break,
        }
    }
    churn.await.unwrap();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no duplicates");
    assert_eq!(seen.len(), 1000, "no gaps");
    server.stop().await;
}

#[tokio::test]
async fn connection_log_after_two_cycles() {
    let server = TestServer::start().await;
    let id = "d:local:sensor:flappy";
    server
        .ingest(vec![
            connected(id, 1, 0),
            disconnected(id, 1, 10, DisconnectCause::ClientDisconnect, None),
            connected(id, 2, 20),
            disconnected(id, 2, 30, DisconnectCause::SocketClosed, None),
        ])
        .await;
    let url = format!(
        "{}/api/v0002/logs/connection?typeId=sensor&deviceId=flappy",
        server.rest
    );
    let (status, body) = get(&url).await;
    assert_eq!(status, 200, "{body}");
    let entries = body.as_array().expect("a bare array");
    assert_eq!(entries.len(), 4);
    for entry in entries {
        let keys: Vec<&String> = entry.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["message", "timestamp"]);
    }
    assert_eq!(
        entries[0]["message"],
        "Connection lost: socket closed without DISCONNECT"
    );
    assert_eq!(
        entries[1]["message"],
        format!(
            "Connected from 127.0.0.1:{} using MQTT 3.1.1 (keepalive 60 s)",
            40_002
        )
    );
    assert_eq!(
        entries[2]["message"],
        "Disconnected by the client: normal disconnection (0x00)"
    );
    let (_, body) = get(&format!("{url}&limit=2&offset=1")).await;
    assert_eq!(body.as_array().unwrap().len(), 2);
    assert_eq!(body[0], entries[1]);
    let (_, body) = get(&format!("{url}&fromTime=now-2h&toTime=now")).await;
    assert_eq!(body.as_array().unwrap().len(), 4);

    let (_, body) = get(&format!(
        "{}/api/v0002/clientconnectionlogs?clientId={id}&kind=disconnected",
        server.rest
    ))
    .await;
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["initiator"], "network");
    assert_eq!(results[0]["closeCode"], 91);
    assert_eq!(results[1]["reasonCode"], 0);
    server.stop().await;
}

#[tokio::test]
async fn the_feature_switch_deletes_state_and_answers_403_while_off() {
    let server = TestServer::start().await;
    server.ingest(vec![connected("d:local:t:x", 1, 0)]).await;
    let config = format!("{}/api/v0002/config/clientstate", server.rest);
    let client = reqwest::Client::new();
    let (_, body) = get(&config).await;
    assert_eq!(body, serde_json::json!({"enabled": true}));
    let bad = client
        .put(&config)
        .json(&serde_json::json!({"enabled": "no"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let off: Value = client
        .put(&config)
        .json(&serde_json::json!({"enabled": false}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(off, serde_json::json!({"enabled": false}));
    let (status, body) = get(&format!(
        "{}/api/v0002/clientconnectionstates/d:local:t:x",
        server.rest
    ))
    .await;
    assert_eq!(status, 403);
    assert!(body["message"].as_str().unwrap().starts_with("CUDCS0403E"));
    let (status, _) = get(&format!("{}/api/v0002/clientconnectionstates", server.rest)).await;
    assert_eq!(status, 403);
    client
        .put(&config)
        .json(&serde_json::json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    let (status, _) = get(&format!(
        "{}/api/v0002/clientconnectionstates/d:local:t:x",
        server.rest
    ))
    .await;
    assert_eq!(status, 404, "disabling deleted the record");
    server.stop().await;
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes() {
    let server = TestServer::start().await;
    let (status, doc) = get(&format!("{}/api/v0002/openapi.json", server.rest)).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    let documented: HashSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let routed: HashSet<String> = connstate::api::rest::routes()
        .into_iter()
        .map(|(p, _)| p.to_owned())
        .collect();
    assert_eq!(documented, routed);
    // The served document is the one kept in the repository.
    let kept: Value = serde_json::from_str(connstate::api::rest::OPENAPI).unwrap();
    assert_eq!(doc, kept);
    server.stop().await;
}

/// Reads server-sent events until one named `name` arrives; returns its
/// id and data.
async fn next_sse(
    response: &mut reqwest::Response,
    buffer: &mut String,
    name: &str,
) -> (Option<String>, Value) {
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = None;
            let mut id = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if event.as_deref() == Some(name) {
                return (id, serde_json::from_str(&data).unwrap());
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("stream open");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn server_sent_events_resume_with_last_event_id() {
    let server = TestServer::start().await;
    let url = format!(
        "{}/api/v0002/stream/clientconnectionstates?clientType=device",
        server.rest
    );
    let client = reqwest::Client::new();
    let mut response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut buffer = String::new();
    server
        .ingest(vec![
            connected("a:local:app", 1, 0),
            connected("d:local:t:first", 2, 0),
        ])
        .await;
    let (id, data) = next_sse(&mut response, &mut buffer, "change").await;
    assert_eq!(
        data["clientId"], "d:local:t:first",
        "the application was filtered out"
    );
    assert_eq!(data["kind"], "connected");
    assert_eq!(data["state"]["connectionStatus"], "connected");
    let id = id.expect("changes carry their revision as id");
    assert_eq!(id, data["revision"].to_string());
    drop(response);

    // Changes while the browser is away arrive after it reconnects.
    server
        .ingest(vec![disconnected(
            "d:local:t:first",
            2,
            5,
            DisconnectCause::SocketClosed,
            None,
        )])
        .await;
    let mut response = client
        .get(&url)
        .header("Last-Event-ID", &id)
        .send()
        .await
        .unwrap();
    let mut buffer = String::new();
    let (next_id, data) = next_sse(&mut response, &mut buffer, "change").await;
    assert_eq!(
        next_id.unwrap().parse::<u64>().unwrap(),
        id.parse::<u64>().unwrap() + 1
    );
    assert_eq!(data["kind"], "disconnected");
    assert_eq!(data["logEntry"]["closeCode"], 91);

    let bad = client
        .get(&url)
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    drop(response);
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_what_happened_and_readiness_needs_no_key() {
    let server = TestServer::start_secured().await;
    let mut ingest = server.ingest_client();
    let request = with_auth(
        pb::IngestEventsRequest {
            lease_duration: None,
            broker: "edge".into(),
            events: vec![
                connected("d:local:t:a", 1, 0),
                connected("a:local:app", 2, 0),
                connected("d:local:t:b", 3, 0),
                disconnected("d:local:t:b", 3, 1, DisconnectCause::KeepAliveTimeout, None),
                connect_failed("d:local:t:c", 2, pb::ConnectFailure::BadCredentials),
            ],
        },
        Some(ADMIN),
    );
    ingest.ingest_events(request).await.unwrap();

    let client = reqwest::Client::new();
    let anonymous = client
        .get(format!("{}/metrics", server.rest))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let text = client
        .get(format!("{}/metrics", server.rest))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "connstate_connected_clients{client_type=\"device\"} 1",
        "connstate_connected_clients{client_type=\"application\"} 1",
        "connstate_connects_total 3",
        "connstate_disconnects_total{initiator=\"network\",reason_code=\"0x8D\"} 1",
        "connstate_failed_connects_total{reason_code=\"0x86\"} 1",
        "connstate_events_ingested_total 5",
        "connstate_store_batch_changes_count 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }

    let ready = client
        .get(format!("{}/ready", server.rest))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200, "no credentials needed");
    server.stop().await;
}

#[tokio::test]
async fn device_types_and_devices_register_with_a_token_shown_once() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    let types = format!("{}/api/v0002/device/types", server.rest);
    let created = client
        .post(&types)
        .json(&serde_json::json!({"id": "sensor", "description": "Thermometers"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let body: Value = created.json().await.unwrap();
    assert_eq!(body["classId"], "Device");
    let again = client
        .post(&types)
        .json(&serde_json::json!({"id": "sensor"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 409);
    let bad = client
        .post(&types)
        .json(&serde_json::json!({"id": "no spaces"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["exception"]["properties"][0], "id");

    let devices = format!("{types}/sensor/devices");
    let registered: Value = client
        .post(&devices)
        .json(&serde_json::json!({"deviceId": "s1", "deviceInfo": {"model": "T1"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(registered["clientId"], "d:local:sensor:s1");
    assert!(registered["authToken"].as_str().unwrap().len() >= 18);
    let (status, fetched) = get(&format!("{devices}/s1")).await;
    assert_eq!(status, 200);
    assert!(
        fetched.get("authToken").is_none(),
        "the token is shown only once"
    );
    let (_, listed) = get(&devices).await;
    assert_eq!(listed["meta"]["total_rows"], 1);
    let (status, missing) = get(&format!("{types}/nothing/devices")).await;
    assert_eq!(status, 404);
    assert!(missing["message"].as_str().unwrap().contains("nothing"));
    let not_empty = client
        .delete(format!("{types}/sensor"))
        .send()
        .await
        .unwrap();
    assert_eq!(not_empty.status().as_u16(), 400);
    let deleted = client.delete(format!("{devices}/s1")).send().await.unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    let (status, _) = get(&format!("{devices}/s1")).await;
    assert_eq!(status, 404);
    server.stop().await;
}
