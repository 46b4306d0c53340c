//! WatchConnections: replay then live with no gap or duplicate, snapshots,
//! OUT_OF_RANGE for retired revisions, RESOURCE_EXHAUSTED for a watcher
//! too slow for its buffer, heartbeats, and the end of streams at shutdown.

mod common;

use std::time::Duration;

use common::*;
use connstate::pb::{self, watch_connections_response::Event};
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};

async fn next_event(stream: &mut Streaming<pb::WatchConnectionsResponse>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event within 10 s")
        .expect("stream open")
        .expect("no error")
        .event
        .expect("event set")
}

/// Reads changes until `count` have arrived, skipping heartbeats.
async fn changes(
    stream: &mut Streaming<pb::WatchConnectionsResponse>,
    count: usize,
) -> Vec<pb::Change> {
    let mut out = Vec::new();
    while out.len() < count {
        if let Event::Change(c) = next_event(stream).await {
            out.push(c);
        }
    }
    out
}

fn connects(prefix: &str, range: std::ops::Range<u64>) -> Vec<pb::LifecycleEvent> {
    range
        .map(|i| connected(&format!("{prefix}{i}"), i + 1, 0))
        .collect()
}

#[tokio::test]
async fn replays_from_a_revision_then_goes_live_without_gap_or_duplicate() {
    let server = TestServer::start().await;
    let mut revision = 0;
    for batch in 0..10 {
        revision = server
            .ingest(connects(&format!("d:local:t:b{batch}-"), 0..20))
            .await;
    }
    assert_eq!(revision, 200);
    let start = 57;
    let mut stream = server
        .states()
        .watch_connections(pb::WatchConnectionsRequest {
            start_revision: Some(start),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Live writes race with the replay.
    let writer = {
        let mut ingest = server.ingest_client();
        tokio::spawn(async move {
            for batch in 10..20 {
                ingest
                    .ingest_events(pb::IngestEventsRequest {
                        lease_duration: None,
                        broker: "test".into(),
                        events: connects(&format!("d:local:t:b{batch}-"), 0..20),
                    })
                    .await
                    .unwrap();
            }
        })
    };
    let got = changes(&mut stream, 400 - start as usize).await;
    writer.await.unwrap();
    for (i, change) in got.iter().enumerate() {
        assert_eq!(
            change.revision,
            start + 1 + i as u64,
            "continuous revisions"
        );
        assert_eq!(change.kind, pb::ChangeKind::Connected as i32);
        assert_eq!(change.state.as_ref().unwrap().revision, change.revision);
        assert!(change.log_entry.is_some());
    }
    // Nothing more: the next thing is a heartbeat or nothing, not a change.
    let extra = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(
        extra.is_err(),
        "no duplicate after the last change: {extra:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn filters_and_kinds_narrow_the_stream() {
    let server = TestServer::start().await;
    let mut stream = server
        .states()
        .watch_connections(pb::WatchConnectionsRequest {
            filter: Some(pb::ConnectionStateFilter {
                client_type: pb::ClientType::Gateway as i32,
                ..Default::default()
            }),
            kinds: vec![pb::ChangeKind::Disconnected as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    server
        .ingest(vec![
            connected("d:local:t:dev", 1, 0),
            connected("g:local:t:gw", 2, 0),
            disconnected(
                "d:local:t:dev",
                1,
                1,
                pb::DisconnectCause::SocketClosed,
                None,
            ),
            disconnected(
                "g:local:t:gw",
                2,
                1,
                pb::DisconnectCause::KeepAliveTimeout,
                None,
            ),
        ])
        .await;
    let got = changes(&mut stream, 1).await;
    assert_eq!(got[0].client_id, "g:local:t:gw");
    assert_eq!(got[0].kind, pb::ChangeKind::Disconnected as i32);
    assert_eq!(got[0].log_entry.as_ref().unwrap().close_code, Some(160));
    server.stop().await;
}

#[tokio::test]
async fn a_snapshot_comes_first_then_live_changes() {
    let server = TestServer::start().await;
    server.ingest(connects("d:local:t:s", 0..5)).await;
    let mut stream = server
        .states()
        .watch_connections(pb::WatchConnectionsRequest {
            include_snapshot: true,
            filter: Some(pb::ConnectionStateFilter {
                connection_status: pb::ConnectionStatus::Connected as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut snapshot = Vec::new();
    let complete = loop {
        match next_event(&mut stream).await {
            Event::Change(c) => {
                assert_eq!(c.kind, pb::ChangeKind::Snapshot as i32);
                snapshot.push(c.client_id);
            }
            Event::SnapshotComplete(s) => break s.revision,
            Event::Heartbeat(_) => {}
            Event::Changes(batch) => panic!("a batch that was not asked for: {batch:?}"),
        }
    };
    assert_eq!(snapshot.len(), 5);
    assert_eq!(complete, 5);
    // A status filter still shows clients leaving.
    server
        .ingest(vec![disconnected(
            "d:local:t:s3",
            4,
            1,
            pb::DisconnectCause::ClientDisconnect,
            None,
        )])
        .await;
    let got = changes(&mut stream, 1).await;
    assert_eq!(
        (got[0].client_id.as_str(), got[0].revision),
        ("d:local:t:s3", 6)
    );
    server.stop().await;
}

#[tokio::test]
async fn a_retired_revision_is_out_of_range_with_the_oldest_available() {
    let server = TestServer::start_with(|c| c.retention_interval = Duration::from_millis(50)).await;
    for batch in 0..5 {
        server
            .ingest(connects(&format!("d:local:t:r{batch}-"), 0..10))
            .await;
    }
    server
        .admin()
        .update_settings(pb::UpdateSettingsRequest {
            settings: Some(pb::Settings {
                feed_max_entries: 20,
                ..Default::default()
            }),
            update_mask: vec!["feed_max_entries".into()],
        })
        .await
        .unwrap();
    let status = eventually(Duration::from_secs(10), || async {
        server
            .states()
            .watch_connections(pb::WatchConnectionsRequest {
                start_revision: Some(3),
                ..Default::default()
            })
            .await
            .err()
    })
    .await;
    assert_eq!(status.code(), Code::OutOfRange);
    let oldest: u64 = status
        .metadata()
        .get("x-connstate-oldest-revision")
        .expect("trailer")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(oldest, 30, "the feed keeps the newest 20 of 50 changes");
    assert!(status.message().contains("30"), "{}", status.message());
    // From the oldest available revision the replay works.
    let mut stream = server
        .states()
        .watch_connections(pb::WatchConnectionsRequest {
            start_revision: Some(oldest),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got = changes(&mut stream, 20).await;
    assert_eq!(got.first().unwrap().revision, 31);
    assert_eq!(got.last().unwrap().revision, 50);
    server.stop().await;
}

#[tokio::test]
async fn a_watcher_too_slow_for_its_buffer_is_ended_and_others_keep_going() {
    let server = TestServer::start_with(|c| c.watch_buffer = 16).await;
    let request = pb::WatchConnectionsRequest::default;
    // Small HTTP/2 windows, so that little can hide in transport buffers.
    let slow_channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .connect()
        .await
        .unwrap();
    let mut slow =
        pb::connection_state_service_client::ConnectionStateServiceClient::new(slow_channel)
            .watch_connections(request())
            .await
            .unwrap()
            .into_inner();
    let mut fast = server
        .states()
        .watch_connections(request())
        .await
        .unwrap()
        .into_inner();
    // 60 commits of 100 changes: far more than 16 commits of buffer.
    let total = 6000u64;
    let fast_reader = tokio::spawn(async move {
        let got = changes(&mut fast, total as usize).await;
        got.iter()
            .enumerate()
            .all(|(i, c)| c.revision == i as u64 + 1)
    });
    // Ingest keeps going while `slow` reads nothing.
    for batch in 0..(total / 100) {
        server
            .ingest(connects(&format!("d:local:t:x{batch}-"), 0..100))
            .await;
    }
    assert!(
        fast_reader.await.unwrap(),
        "the fast watcher saw every change in order"
    );

    // The slow watcher gets what was buffered for it, then the error.
    let mut last = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next())
            .await
            .expect("not stalled")
        {
            Some(Ok(pb::WatchConnectionsResponse {
                event: Some(Event::Change(c)),
            })) => {
                assert_eq!(c.revision, last + 1);
                last = c.revision;
            }
            Some(Ok(_)) => {}
            Some(Err(status)) => break status,
            None => panic!("stream ended without a status"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted);
    let reported: u64 = status
        .metadata()
        .get("x-connstate-last-revision")
        .expect("trailer")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        reported, last,
        "the trailer names the last revision delivered"
    );
    assert!(last < total);

    // It resumes from there and gets the rest, exactly once.
    let mut resumed = server
        .states()
        .watch_connections(pb::WatchConnectionsRequest {
            start_revision: Some(last),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let rest = changes(&mut resumed, (total - last) as usize).await;
    assert_eq!(rest.first().unwrap().revision, last + 1);
    assert_eq!(rest.last().unwrap().revision, total);
    server.stop().await;
}

#[tokio::test]
async fn heartbeats_carry_the_current_revision() {
    let server = TestServer::start().await;
    let revision = server.ingest(connects("d:local:t:h", 0..3)).await;
    let mut stream = server
        .states()
        .watch_connections(pb::WatchConnectionsRequest {
            heartbeat_interval: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    match next_event(&mut stream).await {
        Event::Heartbeat(h) => {
            assert_eq!(h.revision, revision);
            assert!(h.time.is_some());
        }
        other => panic!("expected a heartbeat, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_watch_streams_and_keeps_the_data() {
    let server = TestServer::start().await;
    let revision = server.ingest(connects("d:local:t:z", 0..3)).await;
    let mut stream = server
        .states()
        .watch_connections(pb::WatchConnectionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let data_dir = server.data_dir.clone();
    let dir = server.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("stream ends");
    match end {
        Some(Err(status)) => {
            assert_eq!(status.code(), Code::Unavailable);
            assert_eq!(
                status
                    .metadata()
                    .get("x-connstate-last-revision")
                    .unwrap()
                    .to_str()
                    .unwrap(),
                revision.to_string()
            );
        }
        None => {}
        other => panic!("unexpected {other:?}"),
    }
    // Restart on the same folder: the data is kept. These clients were
    // reported by another broker, which still has them (its lease, if it
    // had one, decides), so they stay as reported; revisions continue.
    let server = TestServer::start_in(data_dir, |_| {}).await;
    let state = server.get("d:local:t:z1").await;
    assert_eq!(
        state.connection_status,
        pb::ConnectionStatus::Connected as i32
    );
    assert!(state.revision <= revision);
    let next = server.ingest(connects("d:local:t:after", 0..1)).await;
    assert!(
        next > revision,
        "revisions continue: {next} after {revision}"
    );
    server.stop().await;
    drop(dir);
}
