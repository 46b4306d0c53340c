//! Bad input of every kind gets INVALID_ARGUMENT naming the field, and
//! nothing of a refused batch is recorded.

mod common;

use common::*;
use connstate::pb;
use tonic::Code;

fn expect_invalid<T: std::fmt::Debug>(result: Result<T, tonic::Status>, field: &str) {
    let status = result.expect_err("request must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
    assert!(
        status.message().starts_with(field),
        "message {:?} must name {field}",
        status.message()
    );
}

#[tokio::test]
async fn client_ids_must_be_present_and_bounded() {
    let server = TestServer::start().await;
    let mut states = server.states();
    for bad in ["".to_owned(), "x".repeat(257), "nul\0inside".to_owned()] {
        expect_invalid(
            states
                .get_connection_state(pb::GetConnectionStateRequest {
                    client_id: bad.clone(),
                })
                .await,
            "client_id",
        );
        expect_invalid(
            states
                .delete_connection_state(pb::DeleteConnectionStateRequest {
                    client_id: bad.clone(),
                })
                .await,
            "client_id",
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn list_requests_name_the_bad_field() {
    let server = TestServer::start().await;
    let mut states = server.states();
    let filter = |f: pb::ConnectionStateFilter| pb::ListConnectionStatesRequest {
        filter: Some(f),
        ..Default::default()
    };
    let cases: Vec<(pb::ListConnectionStatesRequest, &str)> = vec![
        (
            filter(pb::ConnectionStateFilter {
                connection_status: 9,
                ..Default::default()
            }),
            "filter.connection_status",
        ),
        (
            filter(pb::ConnectionStateFilter {
                client_type: -1,
                ..Default::default()
            }),
            "filter.client_type",
        ),
        (
            filter(pb::ConnectionStateFilter {
                connected_after: Some(at(10)),
                connected_before: Some(at(5)),
                ..Default::default()
            }),
            "filter.connected_after",
        ),
        (
            filter(pb::ConnectionStateFilter {
                active_after: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..Default::default()
            }),
            "filter.active_after",
        ),
        (
            filter(pb::ConnectionStateFilter {
                disconnected_before: Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            "filter.disconnected_before",
        ),
        (
            filter(pb::ConnectionStateFilter {
                type_id: "t".repeat(300),
                ..Default::default()
            }),
            "filter.type_id",
        ),
        (
            pb::ListConnectionStatesRequest {
                order_by: "shoe_size".into(),
                ..Default::default()
            },
            "order_by",
        ),
        (
            pb::ListConnectionStatesRequest {
                order_by: "last_connect_time sideways".into(),
                ..Default::default()
            },
            "order_by",
        ),
        (
            pb::ListConnectionStatesRequest {
                order_by: "last_connect_time, last_activity_time".into(),
                ..Default::default()
            },
            "order_by",
        ),
        (
            pb::ListConnectionStatesRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListConnectionStatesRequest {
                page_size: 1001,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListConnectionStatesRequest {
                page_size: i32::MAX,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListConnectionStatesRequest {
                page_token: "garbage!".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListConnectionStatesRequest {
                page_token: "AAAAAAAAAAAAAAAAAAAA".into(),
                ..Default::default()
            },
            "page_token",
        ),
    ];
    for (request, field) in cases {
        expect_invalid(states.list_connection_states(request).await, field);
    }

    let logs: Vec<(pb::ListConnectionLogsRequest, &str)> = vec![
        (
            pb::ListConnectionLogsRequest {
                kinds: vec![42],
                ..Default::default()
            },
            "kinds[0]",
        ),
        (
            pb::ListConnectionLogsRequest {
                kinds: vec![1, 0],
                ..Default::default()
            },
            "kinds[1]",
        ),
        (
            pb::ListConnectionLogsRequest {
                initiator: 7,
                ..Default::default()
            },
            "initiator",
        ),
        (
            pb::ListConnectionLogsRequest {
                start_time: Some(at(10)),
                end_time: Some(at(0)),
                ..Default::default()
            },
            "start_time",
        ),
        (
            pb::ListConnectionLogsRequest {
                type_id: "sensor".into(),
                ..Default::default()
            },
            "device_id",
        ),
        (
            pb::ListConnectionLogsRequest {
                type_id: "bad type".into(),
                device_id: "d".into(),
                ..Default::default()
            },
            "device_id",
        ),
        (
            pb::ListConnectionLogsRequest {
                client_id: "x".repeat(257),
                ..Default::default()
            },
            "client_id",
        ),
        (
            pb::ListConnectionLogsRequest {
                page_size: 5000,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListConnectionLogsRequest {
                page_token: "%%%".into(),
                ..Default::default()
            },
            "page_token",
        ),
    ];
    for (request, field) in logs {
        expect_invalid(states.list_connection_logs(request).await, field);
    }

    let watches: Vec<(pb::WatchConnectionsRequest, &str)> = vec![
        (
            pb::WatchConnectionsRequest {
                include_snapshot: true,
                start_revision: Some(1),
                ..Default::default()
            },
            "include_snapshot",
        ),
        (
            pb::WatchConnectionsRequest {
                kinds: vec![99],
                ..Default::default()
            },
            "kinds[0]",
        ),
        (
            pb::WatchConnectionsRequest {
                filter: Some(pb::ConnectionStateFilter {
                    active_after: Some(at(0)),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "filter",
        ),
        (
            pb::WatchConnectionsRequest {
                heartbeat_interval: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 1000,
                }),
                ..Default::default()
            },
            "heartbeat_interval",
        ),
    ];
    for (request, field) in watches {
        expect_invalid(states.watch_connections(request).await.map(|_| ()), field);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_batch_with_one_bad_event_is_refused_whole() {
    let server = TestServer::start().await;
    let mut ingest = server.ingest_client();
    let good = connected("d:local:t:good", 1, 0);
    let mut no_time = connected("d:local:t:x", 1, 0);
    no_time.time = None;
    let mut no_event = connected("d:local:t:x", 1, 0);
    no_event.event = None;
    let mut bad_addr = connected("d:local:t:x", 1, 0);
    if let Some(pb::lifecycle_event::Event::Connected(c)) = &mut bad_addr.event {
        c.info.as_mut().unwrap().client_addr = "not-an-ip".into();
    }
    let mut bad_port = connected("d:local:t:x", 1, 0);
    if let Some(pb::lifecycle_event::Event::Connected(c)) = &mut bad_port.event {
        c.info.as_mut().unwrap().port = 70_000;
    }
    let mut bad_protocol = connected("d:local:t:x", 1, 0);
    if let Some(pb::lifecycle_event::Event::Connected(c)) = &mut bad_protocol.event {
        c.info.as_mut().unwrap().protocol = 12;
    }
    let cases: Vec<(pb::LifecycleEvent, &str)> = vec![
        (connected("", 1, 0), "events[1].client_id"),
        (connected(&"c".repeat(300), 1, 0), "events[1].client_id"),
        (connected("d:local:t:x", 0, 0), "events[1].connection_id"),
        (no_time, "events[1].time"),
        (no_event, "events[1].event"),
        (bad_addr, "events[1].connected.info.client_addr"),
        (bad_port, "events[1].connected.info.port"),
        (bad_protocol, "events[1].connected.info.protocol"),
        (
            disconnected("d:local:t:x", 1, 0, pb::DisconnectCause::Unspecified, None),
            "events[1].disconnected.cause",
        ),
        (
            disconnected(
                "d:local:t:x",
                1,
                0,
                pb::DisconnectCause::ClientDisconnect,
                Some(300),
            ),
            "events[1].disconnected.reason_code",
        ),
        (
            disconnected(
                "d:local:t:x",
                1,
                0,
                pb::DisconnectCause::SocketClosed,
                Some(0),
            ),
            "events[1].disconnected.reason_code",
        ),
        (
            activity("d:local:t:x", 1, 0, pb::ActivityKind::Connect),
            "events[1].activity.kind",
        ),
        (
            connect_failed("d:local:t:x", 0, pb::ConnectFailure::Unspecified),
            "events[1].connect_failed.failure",
        ),
    ];
    for (bad, field) in cases {
        expect_invalid(
            ingest
                .ingest_events(pb::IngestEventsRequest {
                    lease_duration: None,
                    broker: "edge".into(),
                    events: vec![good.clone(), bad],
                })
                .await,
            field,
        );
    }
    expect_invalid(
        ingest
            .ingest_events(pb::IngestEventsRequest {
                lease_duration: None,
                broker: "".into(),
                events: vec![good.clone()],
            })
            .await,
        "broker",
    );
    expect_invalid(
        ingest
            .ingest_events(pb::IngestEventsRequest {
                lease_duration: None,
                broker: "embedded".into(),
                events: vec![good.clone()],
            })
            .await,
        "broker",
    );
    expect_invalid(
        ingest
            .ingest_events(pb::IngestEventsRequest {
                lease_duration: None,
                broker: "edge".into(),
                events: vec![],
            })
            .await,
        "events",
    );
    expect_invalid(
        ingest
            .ingest_events(pb::IngestEventsRequest {
                lease_duration: None,
                broker: "edge".into(),
                events: vec![good.clone(); 10_001],
            })
            .await,
        "events",
    );
    // Nothing of the refused batches was recorded.
    let err = server
        .states()
        .get_connection_state(pb::GetConnectionStateRequest {
            client_id: "d:local:t:good".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let page = server
        .states()
        .list_connection_logs(pb::ListConnectionLogsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(page.entries.is_empty());
    assert_eq!(page.revision, 0);
    server.stop().await;
}

#[tokio::test]
async fn settings_updates_are_validated() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let cases: Vec<(pb::UpdateSettingsRequest, &str)> = vec![
        (
            pb::UpdateSettingsRequest {
                settings: None,
                update_mask: vec![],
            },
            "settings",
        ),
        (
            pb::UpdateSettingsRequest {
                settings: Some(pb::Settings::default()),
                update_mask: vec!["colour".into()],
            },
            "update_mask[0]",
        ),
        (
            pb::UpdateSettingsRequest {
                settings: Some(pb::Settings {
                    log_max_age: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 5_000_000,
                    }),
                    ..Default::default()
                }),
                update_mask: vec![],
            },
            "settings.log_max_age",
        ),
        (
            pb::UpdateSettingsRequest {
                settings: Some(pb::Settings::default()),
                update_mask: vec!["log_max_entries_per_client".into()],
            },
            "settings.log_max_entries_per_client",
        ),
    ];
    for (request, field) in cases {
        expect_invalid(admin.update_settings(request).await, field);
    }
    server.stop().await;
}

/// A client's number never meets a clock unchecked: every duration has an
/// upper bound named in the error, and times stay inside the range protobuf
/// defines for a Timestamp (years 1 to 9999).
#[tokio::test]
async fn durations_and_times_are_bounded() {
    let server = TestServer::start().await;
    let mut states = server.states();
    let huge = |seconds| prost_types::Duration { seconds, nanos: 0 };
    for seconds in [i64::MAX, 3601] {
        let watch = states
            .watch_connections(pb::WatchConnectionsRequest {
                heartbeat_interval: Some(huge(seconds)),
                ..Default::default()
            })
            .await;
        expect_invalid(watch.map(|_| ()), "heartbeat_interval");
    }
    let mut admin = server.admin();
    for field in ["log_max_age", "feed_max_age"] {
        let mut settings = pb::Settings::default();
        match field {
            "log_max_age" => settings.log_max_age = Some(huge(i64::MAX)),
            _ => settings.feed_max_age = Some(huge(i64::MAX)),
        }
        expect_invalid(
            admin
                .update_settings(pb::UpdateSettingsRequest {
                    settings: Some(settings),
                    update_mask: vec![field.into()],
                })
                .await,
            &format!("settings.{field}"),
        );
    }
    let mut ingest = server.ingest_client();
    for seconds in [253_402_300_800, -62_135_596_801, i64::MAX] {
        let mut event = connected("d:local:t:far", 1, 0);
        event.time = Some(prost_types::Timestamp { seconds, nanos: 0 });
        let request = pb::IngestEventsRequest {
            broker: "b".into(),
            events: vec![event],
            ..Default::default()
        };
        expect_invalid(ingest.ingest_events(request).await, "events[0].time");
    }
    // The latest time allowed, with the longest keepalive, is recorded and
    // its expected-alive time computed without overflow.
    let mut last = connected("d:local:t:last", 1, 0);
    last.time = Some(prost_types::Timestamp {
        seconds: 253_402_300_799,
        nanos: 0,
    });
    if let Some(pb::lifecycle_event::Event::Connected(c)) = &mut last.event {
        c.info.as_mut().unwrap().keep_alive_seconds = 65_535;
    }
    server.ingest(vec![last]).await;
    let state = server.get("d:local:t:last").await;
    assert_eq!(
        state.connection_status,
        pb::ConnectionStatus::Connected as i32
    );
    // The server still serves.
    assert_eq!(
        server.get("d:local:t:last").await.client_id,
        "d:local:t:last"
    );
    server.stop().await;
}
