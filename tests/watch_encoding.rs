//! WatchConnections encodes each change once and shares the bytes: watchers
//! with different filters each receive exactly their matching changes, in
//! the bytes the generated server would send for them, and a change sent on
//! several streams (gRPC or Server-Sent Events) is encoded once.

mod common;

use std::time::Duration;

use bytes::{Buf, Bytes};
use common::*;
use connstate::pb::{self, watch_connections_response::Event};
use prost::Message;
use tokio_stream::StreamExt;
use tonic::{
    Status, Streaming,
    codec::{Codec, DecodeBuf, Decoder},
};

/// Sends requests as prost does and hands back each response message's
/// bytes as they came over the wire.
#[derive(Default)]
struct RawCodec;

struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = pb::WatchConnectionsRequest;
    type Decode = Bytes;
    type Encoder = tonic_prost::ProstEncoder<pb::WatchConnectionsRequest>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

async fn raw_watch(server: &TestServer, filter: pb::ConnectionStateFilter) -> Streaming<Bytes> {
    let mut grpc = tonic::client::Grpc::new(server.channel());
    grpc.ready().await.unwrap();
    let request = pb::WatchConnectionsRequest {
        filter: Some(filter),
        ..Default::default()
    };
    grpc.server_streaming(
        tonic::Request::new(request),
        "/connstate.v1.ConnectionStateService/WatchConnections"
            .parse()
            .unwrap(),
        RawCodec,
    )
    .await
    .unwrap()
    .into_inner()
}

/// Reads `count` changes (skipping heartbeats) as (raw bytes, decoded).
async fn raw_changes(stream: &mut Streaming<Bytes>, count: usize) -> Vec<(Bytes, pb::Change)> {
    let mut out = Vec::new();
    while out.len() < count {
        let raw = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a message within 10 s")
            .expect("stream open")
            .expect("no error");
        let decoded = pb::WatchConnectionsResponse::decode(raw.clone()).unwrap();
        if let Some(Event::Change(change)) = decoded.event {
            out.push((raw, change));
        }
    }
    out
}

/// The value of the metric line starting with `prefix` in /metrics.
async fn metric(server: &TestServer, prefix: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", server.rest))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn watchers_with_different_filters_get_their_changes_in_the_same_bytes_encoded_once() {
    let server = TestServer::start().await;
    let mut devices = raw_watch(
        &server,
        pb::ConnectionStateFilter {
            client_type: pb::ClientType::Device as i32,
            ..Default::default()
        },
    )
    .await;
    let mut sensors = raw_watch(
        &server,
        pb::ConnectionStateFilter {
            type_id: "sensor".into(),
            ..Default::default()
        },
    )
    .await;
    // A browser on the same feed, with no filter.
    let mut sse = reqwest::get(format!(
        "{}/api/v0002/stream/clientconnectionstates",
        server.rest
    ))
    .await
    .unwrap();
    assert_eq!(sse.status().as_u16(), 200);

    server
        .ingest(vec![
            connected("d:local:sensor:one", 1, 0),
            connected("d:local:meter:two", 2, 0),
            connected("g:local:sensor:three", 3, 0),
            connected("a:local:app", 4, 0),
        ])
        .await;
    let got_devices = raw_changes(&mut devices, 2).await;
    let got_sensors = raw_changes(&mut sensors, 2).await;
    let ids = |got: &[(Bytes, pb::Change)]| {
        got.iter()
            .map(|(_, c)| c.client_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&got_devices),
        ["d:local:sensor:one", "d:local:meter:two"]
    );
    assert_eq!(
        ids(&got_sensors),
        ["d:local:sensor:one", "g:local:sensor:three"]
    );

    // Each message is, byte for byte, what the generated server sends for
    // the change as the queries report it.
    for (raw, change) in got_devices.iter().chain(&got_sensors) {
        let log = server.logs(&change.client_id).await;
        assert_eq!(log.len(), 1);
        let expected = pb::WatchConnectionsResponse {
            event: Some(Event::Change(pb::Change {
                revision: log[0].revision,
                kind: pb::ChangeKind::Connected as i32,
                client_id: change.client_id.clone(),
                state: Some(server.get(&change.client_id).await),
                log_entry: Some(log[0].clone()),
                commit_time: change.commit_time,
            })),
        };
        assert_eq!(
            raw.as_ref(),
            expected.encode_to_vec().as_slice(),
            "{}",
            change.client_id
        );
    }
    assert_eq!(
        got_devices[0].0, got_sensors[0].0,
        "a change both watchers match is the same bytes on both"
    );

    // Three changes matched a gRPC watcher (the application matched
    // none): each encoded once, not once per stream.
    assert_eq!(
        metric(
            &server,
            "connstate_watch_changes_encoded_total{format=\"protobuf\"}"
        )
        .await,
        3
    );

    // The browser gets all four; their JSON is built once each as well.
    let mut text = String::new();
    while text.matches("event: change").count() < 4 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), sse.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("stream open");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.contains("\"clientId\":\"a:local:app\""), "{text}");
    assert_eq!(
        metric(
            &server,
            "connstate_watch_changes_encoded_total{format=\"json\"}"
        )
        .await,
        4
    );
    server.stop().await;
}

#[tokio::test]
async fn the_watch_route_still_asks_for_credentials() {
    let server = TestServer::start_secured().await;
    let refused = server
        .states()
        .watch_connections(with_auth(pb::WatchConnectionsRequest::default(), None))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let wrong = server
        .states()
        .watch_connections(with_auth(
            pb::WatchConnectionsRequest::default(),
            Some((ADMIN.0, "not-the-token-0123456789")),
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    let mut stream = server
        .states()
        .watch_connections(with_auth(
            pb::WatchConnectionsRequest {
                start_revision: Some(0),
                ..Default::default()
            },
            Some(ADMIN),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut ingest = server.ingest_client();
    ingest
        .ingest_events(with_auth(
            pb::IngestEventsRequest {
                lease_duration: None,
                broker: "test".into(),
                events: vec![connected("d:local:t:one", 1, 0)],
            },
            Some(ADMIN),
        ))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a message within 10 s")
        .expect("stream open")
        .expect("no error");
    assert!(
        matches!(first.event, Some(Event::Change(c)) if c.client_id == "d:local:t:one"),
        "the change is sent to the authenticated watcher"
    );
    server.stop().await;
}

/// Reads every message of a watch until `count` changes have arrived; the
/// changes in order, and how many messages carried them.
async fn batched_changes(
    stream: &mut Streaming<pb::WatchConnectionsResponse>,
    count: usize,
    max: usize,
) -> (Vec<pb::Change>, usize) {
    let mut out = Vec::new();
    let mut messages = 0;
    while out.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a message within 10 s")
            .expect("stream open")
            .expect("no error");
        match message.event.expect("event set") {
            Event::Change(change) => out.push(change),
            Event::Changes(batch) => {
                assert!(
                    (2..=max).contains(&batch.changes.len()),
                    "a batch holds 2 to {max} changes, not {}",
                    batch.changes.len()
                );
                out.extend(batch.changes);
            }
            Event::Heartbeat(_) | Event::SnapshotComplete(_) => continue,
        }
        messages += 1;
    }
    (out, messages)
}

#[tokio::test]
async fn a_watcher_that_asks_gets_several_changes_per_message_and_others_one() {
    let server = TestServer::start().await;
    let total = 2000u64;
    for chunk in 0..total / 500 {
        let events = (chunk * 500..(chunk + 1) * 500)
            .map(|i| connected(&format!("d:local:t:c{i}"), i + 1, 0))
            .collect();
        server.ingest(events).await;
    }
    let watch = |max: u32| {
        let mut client = server.states();
        async move {
            client
                .watch_connections(pb::WatchConnectionsRequest {
                    start_revision: Some(0),
                    max_changes_per_message: max,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let mut batched = watch(50).await;
    let mut plain = watch(0).await;
    // The live feed too: a commit of 500 while both replay.
    let events = (total..total + 500)
        .map(|i| connected(&format!("d:local:t:c{i}"), i + 1, 0))
        .collect();
    server.ingest(events).await;
    let total = total as usize + 500;

    let (got, messages) = batched_changes(&mut batched, total, 50).await;
    let revisions: Vec<u64> = got.iter().map(|c| c.revision).collect();
    assert_eq!(revisions, (1..=total as u64).collect::<Vec<_>>());
    assert!(
        messages < total,
        "{total} changes ready in backlogs came in {messages} messages"
    );
    let (plain_got, plain_messages) = batched_changes(&mut plain, total, 1).await;
    assert_eq!(plain_messages, total, "one change per message unless asked");
    assert_eq!(plain_got, got, "the same changes either way");

    let too_many = server
        .states()
        .watch_connections(pb::WatchConnectionsRequest {
            max_changes_per_message: 1001,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
    assert!(
        too_many.message().contains("max_changes_per_message"),
        "{}",
        too_many.message()
    );
    server.stop().await;
}
