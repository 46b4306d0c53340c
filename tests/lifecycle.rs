//! Lifecycle events in through IngestEvents, state and logs out through the
//! query RPCs: the rules of DESIGN.md §3 as a client sees them.

mod common;

use std::time::Duration;

use common::*;
use connstate::pb::{self, ConnectionStatus, DisconnectCause, DisconnectInitiator, LogKind};
use tonic::Code;

#[tokio::test]
async fn ingested_connect_shows_as_connected() {
    let server = TestServer::start().await;
    let revision = server
        .ingest(vec![connected("d:local:sensor:s1", 7, 0)])
        .await;
    assert!(revision > 0);

    let state = server.get("d:local:sensor:s1").await;
    assert_eq!(state.connection_status, ConnectionStatus::Connected as i32);
    assert_eq!(state.client_type, pb::ClientType::Device as i32);
    assert_eq!(
        (state.type_id.as_str(), state.device_id.as_str()),
        ("sensor", "s1")
    );
    assert_eq!(state.last_connect_time, Some(at(0)));
    assert_eq!(state.last_activity_event, pb::ActivityKind::Connect as i32);
    assert_eq!(state.mqtt_connect_protocol, pb::MqttProtocol::V311 as i32);
    assert_eq!(state.client_addr, "127.0.0.1");
    assert_eq!(state.keep_alive_seconds, 60);
    assert_eq!(state.connection_id, 7);
    assert_eq!(state.revision, revision);
    assert_eq!(state.broker, "test");
    assert_eq!(state.expected_alive_until, Some(at(90)));
    assert_eq!(state.last_disconnect_time, None);
    assert_eq!(state.last_close_code, None);
    assert_eq!(state.counters.unwrap().connects, 1);

    let missing = server
        .states()
        .get_connection_state(pb::GetConnectionStateRequest {
            client_id: "d:local:sensor:nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.message().contains("d:local:sensor:nobody"));
    server.stop().await;
}

#[tokio::test]
async fn every_way_of_disconnecting_is_recorded_with_its_initiator_and_codes() {
    let server = TestServer::start().await;
    struct Case {
        client: &'static str,
        cause: DisconnectCause,
        reason_sent: Option<u32>,
        initiator: DisconnectInitiator,
        reason_code: Option<u32>,
        close_code: u32,
        message: &'static str,
    }
    let cases = [
        Case {
            client: "d:local:t:client-normal",
            cause: DisconnectCause::ClientDisconnect,
            reason_sent: None,
            initiator: DisconnectInitiator::Client,
            reason_code: Some(0x00),
            close_code: 0,
            message: "Disconnected by the client: normal disconnection (0x00)",
        },
        Case {
            client: "d:local:t:client-will",
            cause: DisconnectCause::ClientDisconnect,
            reason_sent: Some(0x04),
            initiator: DisconnectInitiator::Client,
            reason_code: Some(0x04),
            close_code: 0,
            message: "Disconnected by the client: disconnect with will message (0x04)",
        },
        Case {
            client: "d:local:t:socket",
            cause: DisconnectCause::SocketClosed,
            reason_sent: None,
            initiator: DisconnectInitiator::Network,
            reason_code: None,
            close_code: 91,
            message: "Connection lost: socket closed without DISCONNECT",
        },
        Case {
            client: "d:local:t:keepalive",
            cause: DisconnectCause::KeepAliveTimeout,
            reason_sent: None,
            initiator: DisconnectInitiator::Network,
            reason_code: Some(0x8D),
            close_code: 160,
            message: "Connection lost: no packet within 1.5 × keepalive (90 s) (0x8D)",
        },
        Case {
            client: "d:local:t:kicked",
            cause: DisconnectCause::AdministrativeAction,
            reason_sent: None,
            initiator: DisconnectInitiator::Server,
            reason_code: Some(0x98),
            close_code: 94,
            message: "Disconnected by the server: disconnected by an administrator (0x98)",
        },
        Case {
            client: "d:local:t:toolarge",
            cause: DisconnectCause::PacketTooLarge,
            reason_sent: None,
            initiator: DisconnectInitiator::Server,
            reason_code: Some(0x95),
            close_code: 287,
            message: "Disconnected by the server: packet too large (0x95)",
        },
        Case {
            client: "d:local:t:shutdown",
            cause: DisconnectCause::ServerShuttingDown,
            reason_sent: None,
            initiator: DisconnectInitiator::Server,
            reason_code: Some(0x8B),
            close_code: 93,
            message: "Disconnected by the server: server shutting down (0x8B)",
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let conn = i as u64 + 1;
        server
            .ingest(vec![
                connected(case.client, conn, 0),
                disconnected(case.client, conn, 30, case.cause, case.reason_sent),
            ])
            .await;
    }
    for case in &cases {
        let state = server.get(case.client).await;
        assert_eq!(
            state.connection_status,
            ConnectionStatus::Disconnected as i32,
            "{}",
            case.client
        );
        assert_eq!(
            state.last_disconnect_initiator, case.initiator as i32,
            "{}",
            case.client
        );
        assert_eq!(
            state.last_disconnect_reason_code, case.reason_code,
            "{}",
            case.client
        );
        assert_eq!(
            state.last_close_code,
            Some(case.close_code),
            "{}",
            case.client
        );
        assert_eq!(state.last_disconnect_time, Some(at(30)));
        assert_eq!(
            state.last_activity_event,
            pb::ActivityKind::Disconnect as i32
        );
        assert_eq!(state.expected_alive_until, None);

        let logs = server.logs(case.client).await;
        assert_eq!(logs.len(), 2, "{}", case.client);
        assert_eq!(logs[0].kind, LogKind::Disconnected as i32);
        assert_eq!(logs[0].message, case.message);
        assert_eq!(logs[0].initiator, case.initiator as i32);
        assert_eq!(logs[0].close_code, Some(case.close_code));
        assert_eq!(logs[1].kind, LogKind::Connected as i32);
        assert_eq!(
            logs[1].message,
            format!(
                "Connected from 127.0.0.1:{} using MQTT 3.1.1 (keepalive 60 s)",
                logs[1].port
            )
        );
        assert!(logs[0].revision > logs[1].revision, "newest first");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_late_disconnect_of_an_older_connection_leaves_the_client_connected() {
    let server = TestServer::start().await;
    let client = "g:local:gw:gateway-1";
    server.ingest(vec![connected(client, 1, 0)]).await;
    // The client reconnected elsewhere (connection 2) before the broker
    // reported that connection 1 was taken over.
    server.ingest(vec![connected(client, 2, 10)]).await;
    let mut takeover = disconnected(client, 1, 11, DisconnectCause::SessionTakenOver, None);
    if let Some(pb::lifecycle_event::Event::Disconnected(d)) = &mut takeover.event {
        d.detail = "10.0.0.9:5000".into();
    }
    server.ingest(vec![takeover]).await;

    let state = server.get(client).await;
    assert_eq!(state.connection_status, ConnectionStatus::Connected as i32);
    assert_eq!(state.connection_id, 2);
    assert_eq!(state.last_connect_time, Some(at(10)));
    assert_eq!(state.last_disconnect_time, None);
    let counters = state.counters.unwrap();
    assert_eq!((counters.connects, counters.takeovers), (2, 1));

    let logs = server.logs(client).await;
    assert_eq!(logs.len(), 3);
    assert!(logs[0].stale);
    assert_eq!(logs[0].connection_id, 1);
    assert!(
        logs[0]
            .message
            .starts_with("Disconnected by the server: session taken over by a new connection from 10.0.0.9:5000 (0x8E)"),
        "{}",
        logs[0].message
    );
    assert!(!logs[1].stale && !logs[2].stale);

    // A late connect of connection 1 is stale too.
    server.ingest(vec![connected(client, 1, 0)]).await;
    let state = server.get(client).await;
    assert_eq!(state.connection_id, 2);
    assert!(server.logs(client).await[0].stale);
    server.stop().await;
}

#[tokio::test]
async fn failed_connects_are_logged_and_counted() {
    let server = TestServer::start().await;
    let client = "d:local:t:bad";
    server
        .ingest(vec![connect_failed(
            client,
            0,
            pb::ConnectFailure::BadCredentials,
        )])
        .await;
    let logs = server.logs(client).await;
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].kind, LogKind::ConnectFailed as i32);
    assert_eq!(logs[0].reason_code, Some(0x86));
    assert_eq!(logs[0].close_code, Some(180));
    assert_eq!(
        logs[0].message,
        "Connect failed from 127.0.0.1:41000: bad user name or password (0x86)"
    );
    // No record until the client connects once.
    let err = server
        .states()
        .get_connection_state(pb::GetConnectionStateRequest {
            client_id: client.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    server.ingest(vec![connected(client, 1, 5)]).await;
    server
        .ingest(vec![connect_failed(
            client,
            6,
            pb::ConnectFailure::NotAuthorized,
        )])
        .await;
    // The failure before the first connect counts too.
    let counters = server.get(client).await.counters.unwrap();
    assert_eq!((counters.connects, counters.failed_connects), (1, 2));
    server.stop().await;
}

#[tokio::test]
async fn activity_is_coalesced_and_written_through_before_the_disconnect() {
    let server = TestServer::start_with(|c| c.activity_interval = Duration::from_millis(100)).await;
    let client = "a:local:dashboard";
    server.ingest(vec![connected(client, 1, 0)]).await;
    let before = server.get(client).await.revision;
    // Many publishes: acknowledged at once, written through as one change.
    let publishes = (1..=200)
        .map(|i| activity(client, 1, i, pb::ActivityKind::Publish))
        .collect();
    server.ingest(publishes).await;
    let state = eventually(Duration::from_secs(5), || async {
        let s = server.get(client).await;
        (s.last_activity_time == Some(at(200))).then_some(s)
    })
    .await;
    assert_eq!(state.last_activity_event, pb::ActivityKind::Publish as i32);
    assert_eq!(state.expected_alive_until, Some(at(290)));
    assert_eq!(state.revision, before + 1, "200 publishes, one write");

    // A ping then a disconnect in one batch: the ping is written first.
    server
        .ingest(vec![
            activity(client, 1, 300, pb::ActivityKind::Ping),
            disconnected(client, 1, 301, DisconnectCause::ClientDisconnect, None),
        ])
        .await;
    let state = server.get(client).await;
    assert_eq!(
        state.connection_status,
        ConnectionStatus::Disconnected as i32
    );
    assert_eq!(state.last_activity_time, Some(at(301)));
    assert_eq!(state.revision, before + 3);
    server.stop().await;
}

#[tokio::test]
async fn deleting_a_record_removes_it_and_its_log() {
    let server = TestServer::start().await;
    server.ingest(vec![connected("d:local:t:gone", 1, 0)]).await;
    let mut states = server.states();
    let revision = states
        .delete_connection_state(pb::DeleteConnectionStateRequest {
            client_id: "d:local:t:gone".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert!(revision > 0);
    let err = states
        .get_connection_state(pb::GetConnectionStateRequest {
            client_id: "d:local:t:gone".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(server.logs("d:local:t:gone").await.is_empty());
    let again = states
        .delete_connection_state(pb::DeleteConnectionStateRequest {
            client_id: "d:local:t:gone".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn turning_the_feature_off_deletes_everything_and_refuses_queries() {
    let server = TestServer::start().await;
    server
        .ingest(vec![
            connected("d:local:t:a", 1, 0),
            connected("d:local:t:b", 2, 0),
        ])
        .await;
    let mut admin = server.admin();
    // An empty mask never turns the feature off by accident.
    let settings = admin
        .update_settings(pb::UpdateSettingsRequest {
            settings: Some(pb::Settings::default()),
            update_mask: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(settings.enabled);
    let settings = admin
        .update_settings(pb::UpdateSettingsRequest {
            settings: Some(pb::Settings::default()),
            update_mask: vec!["enabled".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!settings.enabled);
    let err = server
        .states()
        .get_connection_state(pb::GetConnectionStateRequest {
            client_id: "d:local:t:a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = server
        .ingest_client()
        .ingest_events(pb::IngestEventsRequest {
            lease_duration: None,
            broker: "test".into(),
            events: vec![connected("d:local:t:c", 3, 0)],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    admin
        .update_settings(pb::UpdateSettingsRequest {
            settings: Some(pb::Settings {
                enabled: true,
                ..Default::default()
            }),
            update_mask: vec!["enabled".into()],
        })
        .await
        .unwrap();
    let page = server
        .states()
        .list_connection_states(pb::ListConnectionStatesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(page.states.is_empty(), "all state was deleted");
    assert!(server.logs("d:local:t:a").await.is_empty());
    server.stop().await;
}
