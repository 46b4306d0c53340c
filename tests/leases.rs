//! Broker leases: a broker that renews keeps its clients connected; when its
//! lease lapses its connected clients are recorded as disconnected (network,
//! close code 96) with a log line naming it. A broker without a lease keeps
//! its clients as reported.

mod common;

use std::time::Duration;

use common::*;
use connstate::pb;

fn secs(n: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: n,
        nanos: 0,
    })
}

async fn ingest_with_lease(
    server: &TestServer,
    broker: &str,
    events: Vec<pb::LifecycleEvent>,
    lease: Option<prost_types::Duration>,
) -> Result<(), tonic::Status> {
    server
        .ingest_client()
        .ingest_events(pb::IngestEventsRequest {
            broker: broker.into(),
            events,
            lease_duration: lease,
        })
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_lease_disconnects_the_brokers_clients() {
    let server = TestServer::start().await;
    ingest_with_lease(
        &server,
        "edge-1",
        vec![
            connected("d:local:t:a", 1, 0),
            connected("d:local:t:b", 2, 0),
        ],
        secs(1),
    )
    .await
    .unwrap();
    ingest_with_lease(
        &server,
        "edge-2",
        vec![connected("d:local:t:c", 1, 0)],
        secs(1),
    )
    .await
    .unwrap();
    ingest_with_lease(&server, "quiet", vec![connected("d:local:t:d", 1, 0)], None)
        .await
        .unwrap();
    // edge-2 keeps renewing through the idle RPC; edge-1 says nothing more.
    let started = tokio::time::Instant::now();
    let mut ingest = server.ingest_client();
    let lapsed = loop {
        let lease = ingest
            .renew_broker_lease(pb::RenewBrokerLeaseRequest {
                broker: "edge-2".into(),
                lease_duration: secs(1),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(lease.broker, "edge-2");
        assert!(lease.expire_time.is_some());
        let a = server.get("d:local:t:a").await;
        if a.connection_status == pb::ConnectionStatus::Disconnected as i32 {
            break a;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "lapse within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "not before the lease ran out"
    );
    assert_eq!(
        lapsed.last_disconnect_initiator,
        pb::DisconnectInitiator::Network as i32
    );
    assert_eq!(lapsed.last_close_code, Some(96));
    assert_eq!(lapsed.last_disconnect_reason_code, None);
    let b = eventually(Duration::from_secs(5), || async {
        let b = server.get("d:local:t:b").await;
        (b.connection_status == pb::ConnectionStatus::Disconnected as i32).then_some(b)
    })
    .await;
    assert_eq!(
        b.revision.abs_diff(lapsed.revision),
        1,
        "one commit for the broker's clients"
    );
    assert_eq!(b.last_disconnect_time, lapsed.last_disconnect_time);
    assert_eq!(
        server.logs("d:local:t:a").await[0].message,
        "Connection lost: broker edge-1 stopped reporting (lease of 1 s lapsed)"
    );
    for id in ["d:local:t:c", "d:local:t:d"] {
        assert_eq!(
            server.get(id).await.connection_status,
            pb::ConnectionStatus::Connected as i32,
            "{id}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn lease_durations_out_of_bounds_are_refused_naming_the_field() {
    let server = TestServer::start().await;
    for bad in [
        Some(prost_types::Duration {
            seconds: 0,
            nanos: 500_000_000,
        }),
        secs(2 * 24 * 3600),
        secs(-1),
    ] {
        let e = ingest_with_lease(&server, "edge", vec![connected("d:local:t:x", 1, 0)], bad)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("lease_duration"), "{}", e.message());
        let e = server
            .ingest_client()
            .renew_broker_lease(pb::RenewBrokerLeaseRequest {
                broker: "edge".into(),
                lease_duration: bad,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("lease_duration"), "{}", e.message());
    }
    let e = server
        .ingest_client()
        .renew_broker_lease(pb::RenewBrokerLeaseRequest {
            broker: "edge".into(),
            lease_duration: None,
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("lease_duration"), "{}", e.message());
    // Nothing was recorded by the refused batches.
    assert!(
        server
            .states()
            .get_connection_state(pb::GetConnectionStateRequest {
                client_id: "d:local:t:x".into()
            })
            .await
            .is_err()
    );
    server.stop().await;
}
