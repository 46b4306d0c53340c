//! ListConnectionStates and ListConnectionLogs: filters, orders, paging.

mod common;

use std::{collections::HashSet, time::Duration};

use common::*;
use connstate::pb::{self, ConnectionStatus, DisconnectCause};
use prost_types::Timestamp;

fn list(filter: pb::ConnectionStateFilter, order_by: &str) -> pb::ListConnectionStatesRequest {
    pb::ListConnectionStatesRequest {
        filter: Some(filter),
        order_by: order_by.into(),
        page_size: 1000,
        page_token: String::new(),
    }
}

async fn ids(server: &TestServer, request: pb::ListConnectionStatesRequest) -> Vec<String> {
    let page = server
        .states()
        .list_connection_states(request)
        .await
        .expect("list")
        .into_inner();
    assert!(page.next_page_token.is_empty());
    page.states.into_iter().map(|s| s.client_id).collect()
}

/// 12 clients: 4 devices, 4 gateways, 4 applications; client i connects at
/// 10·i s and is active at 10·i + 5 s; odd ones disconnect at 10·i + 7 s.
async fn fleet(server: &TestServer) -> Vec<String> {
    let mut clients = Vec::new();
    let mut events = Vec::new();
    for i in 0..12i64 {
        let id = match i % 3 {
            0 => format!("d:local:sensor:dev{i:02}"),
            1 => format!("g:local:gw:gw{i:02}"),
            _ => format!("a:local:app{i:02}"),
        };
        let conn = i as u64 + 1;
        events.push(connected(&id, conn, 10 * i));
        events.push(activity(&id, conn, 10 * i + 5, pb::ActivityKind::Subscribe));
        if i % 2 == 1 {
            events.push(disconnected(
                &id,
                conn,
                10 * i + 7,
                DisconnectCause::SocketClosed,
                None,
            ));
        }
        clients.push(id);
    }
    server.ingest(events).await;
    clients
}

#[tokio::test]
async fn filters_select_exactly_the_matching_clients() {
    let server = TestServer::start_with(|c| c.activity_interval = Duration::from_millis(50)).await;
    let clients = fleet(&server).await;
    // Wait until the activity of the connected ones is written through.
    eventually(Duration::from_secs(5), || async {
        let s = server.get(&clients[10]).await;
        (s.last_activity_time == Some(at(105))).then_some(())
    })
    .await;
    let expect = |pred: &dyn Fn(i64) -> bool| -> Vec<String> {
        let mut v: Vec<String> = (0..12)
            .filter(|&i| pred(i))
            .map(|i| clients[i as usize].clone())
            .collect();
        v.sort();
        v
    };
    let f = pb::ConnectionStateFilter::default;

    let connected = ids(
        &server,
        list(
            pb::ConnectionStateFilter {
                connection_status: ConnectionStatus::Connected as i32,
                ..f()
            },
            "",
        ),
    )
    .await;
    assert_eq!(connected, expect(&|i| i % 2 == 0));
    let disconnected = ids(
        &server,
        list(
            pb::ConnectionStateFilter {
                connection_status: ConnectionStatus::Disconnected as i32,
                ..f()
            },
            "",
        ),
    )
    .await;
    assert_eq!(disconnected, expect(&|i| i % 2 == 1));
    let gateways = ids(
        &server,
        list(
            pb::ConnectionStateFilter {
                client_type: pb::ClientType::Gateway as i32,
                ..f()
            },
            "",
        ),
    )
    .await;
    assert_eq!(gateways, expect(&|i| i % 3 == 1));
    let by_type = ids(
        &server,
        list(
            pb::ConnectionStateFilter {
                type_id: "sensor".into(),
                ..f()
            },
            "",
        ),
    )
    .await;
    assert_eq!(by_type, expect(&|i| i % 3 == 0));
    let by_device = ids(
        &server,
        list(
            pb::ConnectionStateFilter {
                device_id: "gw04".into(),
                ..f()
            },
            "",
        ),
    )
    .await;
    assert_eq!(by_device, vec!["g:local:gw:gw04".to_owned()]);
    let by_app = ids(
        &server,
        list(
            pb::ConnectionStateFilter {
                app_id: "app05".into(),
                ..f()
            },
            "",
        ),
    )
    .await;
    assert_eq!(by_app, vec!["a:local:app05".to_owned()]);
    let by_prefix = ids(
        &server,
        list(
            pb::ConnectionStateFilter {
                client_id_prefix: "a:local:".into(),
                ..f()
            },
            "",
        ),
    )
    .await;
    assert_eq!(by_prefix, expect(&|i| i % 3 == 2));

    let connected_between = ids(
        &server,
        list(
            pb::ConnectionStateFilter {
                connected_after: Some(at(30)),
                connected_before: Some(at(70)),
                ..f()
            },
            "",
        ),
    )
    .await;
    assert_eq!(connected_between, expect(&|i| (3..7).contains(&i)));
    let disconnected_after = ids(
        &server,
        list(
            pb::ConnectionStateFilter {
                disconnected_after: Some(at(50)),
                ..f()
            },
            "",
        ),
    )
    .await;
    assert_eq!(
        disconnected_after,
        expect(&|i| i % 2 == 1 && 10 * i + 7 >= 50)
    );
    let disconnected_before = ids(
        &server,
        list(
            pb::ConnectionStateFilter {
                disconnected_before: Some(at(50)),
                ..f()
            },
            "",
        ),
    )
    .await;
    assert_eq!(
        disconnected_before,
        expect(&|i| i % 2 == 1 && 10 * i + 7 < 50)
    );
    // Activity: connected clients were active at 10i+5, disconnected ones at 10i+7.
    let active = |i: i64| if i % 2 == 0 { 10 * i + 5 } else { 10 * i + 7 };
    let active_after = ids(
        &server,
        list(
            pb::ConnectionStateFilter {
                active_after: Some(at(60)),
                ..f()
            },
            "",
        ),
    )
    .await;
    assert_eq!(active_after, expect(&|i| active(i) >= 60));
    let active_before = ids(
        &server,
        list(
            pb::ConnectionStateFilter {
                active_before: Some(at(60)),
                connection_status: ConnectionStatus::Connected as i32,
                ..f()
            },
            "",
        ),
    )
    .await;
    assert_eq!(active_before, expect(&|i| active(i) < 60 && i % 2 == 0));
    server.stop().await;
}

#[tokio::test]
async fn every_order_sorts_both_ways_with_ties_by_client_id() {
    let server = TestServer::start().await;
    let clients = fleet(&server).await;
    let all = pb::ConnectionStateFilter::default;
    let mut by_id = clients.clone();
    by_id.sort();
    assert_eq!(ids(&server, list(all(), "")).await, by_id);
    assert_eq!(ids(&server, list(all(), "client_id")).await, by_id);
    let mut rev = by_id.clone();
    rev.reverse();
    assert_eq!(ids(&server, list(all(), "client_id desc")).await, rev);

    // Connect times grow with i.
    assert_eq!(
        ids(&server, list(all(), "last_connect_time")).await,
        clients
    );
    let mut desc = clients.clone();
    desc.reverse();
    assert_eq!(ids(&server, list(all(), "-lastConnectTime")).await, desc);
    assert_eq!(
        ids(&server, list(all(), "last_activity_time desc")).await,
        desc
    );
    assert_eq!(ids(&server, list(all(), "lastActivityTime")).await, clients);

    // Never-disconnected clients sort first ascending.
    let mut never: Vec<String> = (0..12)
        .filter(|i| i % 2 == 0)
        .map(|i| clients[i].clone())
        .collect();
    never.sort();
    let odd: Vec<String> = (0..12)
        .filter(|i| i % 2 == 1)
        .map(|i| clients[i].clone())
        .collect();
    let expected: Vec<String> = never.iter().chain(odd.iter()).cloned().collect();
    assert_eq!(
        ids(&server, list(all(), "last_disconnect_time")).await,
        expected
    );

    // Status: connected (1) before disconnected (2), each by id.
    let mut connected: Vec<String> = never.clone();
    let mut disconnected = odd.clone();
    disconnected.sort();
    connected.extend(disconnected);
    assert_eq!(
        ids(&server, list(all(), "connection_status")).await,
        connected
    );
    assert_eq!(
        ids(&server, list(all(), "connection_status, client_id")).await,
        connected
    );
    server.stop().await;
}

#[tokio::test]
async fn paging_while_clients_connect_has_no_duplicates_or_gaps() {
    let server = TestServer::start().await;
    let mut events = Vec::new();
    for i in 0..500u64 {
        events.push(connected(&format!("d:local:t:dev{i:04}"), i + 1, 0));
    }
    server.ingest(events).await;

    // Writers: new clients appear and existing ones flap while we page.
    let writer = {
        let mut ingest = server.ingest_client();
        tokio::spawn(async move {
            for round in 0..60u64 {
                let mut events = vec![connected(
                    &format!("d:local:t:new{round:04}"),
                    10_000 + round,
                    1,
                )];
                let flapping = format!("d:local:t:dev{:04}", (round * 7) % 500);
                events.push(disconnected(
                    &flapping,
                    (round * 7) % 500 + 1,
                    2,
                    DisconnectCause::SocketClosed,
                    None,
                ));
                ingest
                    .ingest_events(pb::IngestEventsRequest {
                        lease_duration: None,
                        broker: "test".into(),
                        events,
                    })
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = server
            .states()
            .list_connection_states(pb::ListConnectionStatesRequest {
                filter: Some(pb::ConnectionStateFilter {
                    client_id_prefix: "d:local:t:dev".into(),
                    ..Default::default()
                }),
                order_by: String::new(),
                page_size: 25,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.states.len() <= 25);
        seen.extend(page.states.into_iter().map(|s| s.client_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    writer.await.unwrap();
    assert_eq!(pages, 20);
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no duplicates");
    assert_eq!(seen.len(), 500, "no gaps");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, seen, "in client id order");
    server.stop().await;
}

#[tokio::test]
async fn page_tokens_belong_to_their_query() {
    let server = TestServer::start().await;
    fleet(&server).await;
    let mut states = server.states();
    let first = states
        .list_connection_states(pb::ListConnectionStatesRequest {
            page_size: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.states.len(), 5);
    assert!(first.revision > 0);
    let other_query = states
        .list_connection_states(pb::ListConnectionStatesRequest {
            page_size: 5,
            order_by: "last_connect_time".into(),
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(other_query.code(), tonic::Code::InvalidArgument);
    assert!(
        other_query.message().starts_with("page_token"),
        "{}",
        other_query.message()
    );
    // A different page size is the same query.
    let second = states
        .list_connection_states(pb::ListConnectionStatesRequest {
            page_size: 100,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.states.len(), 7);
    assert!(second.next_page_token.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn logs_of_all_clients_newest_first_with_filters_and_paging() {
    let server = TestServer::start().await;
    fleet(&server).await;
    server
        .ingest(vec![connect_failed(
            "d:local:sensor:dev00",
            200,
            pb::ConnectFailure::BadCredentials,
        )])
        .await;
    let mut states = server.states();
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = states
            .list_connection_logs(pb::ListConnectionLogsRequest {
                page_size: 4,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    // 12 connects, 6 disconnects, 1 failed connect.
    assert_eq!(all.len(), 19);
    assert!(
        all.windows(2).all(|w| w[0].revision > w[1].revision),
        "newest first"
    );

    let disconnects = states
        .list_connection_logs(pb::ListConnectionLogsRequest {
            kinds: vec![pb::LogKind::Disconnected as i32],
            initiator: pb::DisconnectInitiator::Network as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(disconnects.len(), 6);
    let window = states
        .list_connection_logs(pb::ListConnectionLogsRequest {
            start_time: Some(at(30)),
            end_time: Some(at(60)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let in_window = |t: &Option<Timestamp>| {
        let s = t.as_ref().unwrap().seconds;
        s >= at(30).seconds && s < at(60).seconds
    };
    assert!(window.iter().all(|e| in_window(&e.timestamp)));
    // connects at 30,40,50; disconnect of 3 at 37 and of 5 at 57.
    assert_eq!(window.len(), 5);

    // type_id + device_id name a device of the server's organisation.
    let by_device = states
        .list_connection_logs(pb::ListConnectionLogsRequest {
            type_id: "sensor".into(),
            device_id: "dev00".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(by_device.len(), 2);
    assert_eq!(by_device[0].kind, pb::LogKind::ConnectFailed as i32);
    server.stop().await;
}

/// The parts of a page token a caller can see and edit (its seal, when it
/// has one, is kept as it is).
#[derive(Clone, PartialEq, prost::Message)]
struct TokenParts {
    #[prost(fixed64, tag = "1")]
    fingerprint: u64,
    #[prost(bytes = "vec", tag = "2")]
    cursor: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    seal: Vec<u8>,
}

/// `token` with its cursor replaced: what a read-only caller can forge.
fn forge(token: &str, cursor: &[u8]) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use prost::Message;
    let mut parts = TokenParts::decode(URL_SAFE_NO_PAD.decode(token).unwrap().as_slice()).unwrap();
    parts.cursor = cursor.to_vec();
    URL_SAFE_NO_PAD.encode(parts.encode_to_vec())
}

/// A page token is untrusted input: an edited one is INVALID_ARGUMENT
/// (REST: 400 naming `_bookmark`), never an internal error or a "corrupt
/// record" alarm.
#[tokio::test]
async fn forged_page_tokens_are_refused_as_bad_input() {
    let server = TestServer::start().await;
    fleet(&server).await;
    let mut states = server.states();
    let cursors: [&[u8]; 5] = [
        b"\xff",
        b"s",
        b"\x00\x01\x02",
        &[b'a'; 40],
        b"sd:local:sensor:dev00\xff",
    ];
    for order_by in [
        "",
        "last_connect_time",
        "last_activity_time desc",
        "last_disconnect_time",
    ] {
        let first = states
            .list_connection_states(pb::ListConnectionStatesRequest {
                page_size: 2,
                order_by: order_by.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for cursor in cursors {
            let status = states
                .list_connection_states(pb::ListConnectionStatesRequest {
                    page_size: 2,
                    order_by: order_by.into(),
                    page_token: forge(&first.next_page_token, cursor),
                    ..Default::default()
                })
                .await
                .expect_err("a forged token is refused");
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{order_by:?} {cursor:?}: {status:?}"
            );
            assert!(
                status.message().starts_with("page_token"),
                "{}",
                status.message()
            );
        }
    }
    let first = states
        .list_connection_logs(pb::ListConnectionLogsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for cursor in [&b"\xff"[..], &[0xff; 8], &[0; 8], b"12345678901"] {
        let status = states
            .list_connection_logs(pb::ListConnectionLogsRequest {
                page_size: 2,
                page_token: forge(&first.next_page_token, cursor),
                ..Default::default()
            })
            .await
            .expect_err("a forged token is refused");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{cursor:?}: {status:?}"
        );
    }

    // REST: the same through `_bookmark`.
    let http = reqwest::Client::new();
    let url = format!(
        "{}/api/v0002/clientconnectionstates?_limit=2&_sort=lastConnectTime",
        server.rest
    );
    let page: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    let bookmark = page["bookmark"].as_str().expect("a bookmark").to_owned();
    for cursor in cursors {
        let response = http
            .get(format!("{url}&_bookmark={}", forge(&bookmark, cursor)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{cursor:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        let text = body.to_string();
        assert!(text.contains("_bookmark"), "{text}");
        assert!(!text.contains("corrupt"), "{text}");
    }
    server.stop().await;
}
