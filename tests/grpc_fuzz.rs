//! Every numeric, enum, time and duration field of every gRPC request,
//! filled with extreme and random values: the answer is a success or a
//! status that names a client error (INVALID_ARGUMENT, NOT_FOUND,
//! OUT_OF_RANGE, FAILED_PRECONDITION), never INTERNAL or UNKNOWN, no stream
//! ends silently, and the server keeps serving. Bounded in count and time;
//! the seed is printed so that a failure can be replayed with
//! CONNSTATE_FUZZ_SEED.

mod common;

use std::time::{Duration, Instant};

use common::*;
use connstate::pb;
use tonic::Code;

impl Rng {
    fn i64(&mut self) -> i64 {
        const EDGES: [i64; 12] = [
            0,
            1,
            -1,
            i64::MAX,
            i64::MIN,
            i32::MAX as i64,
            i32::MIN as i64,
            u32::MAX as i64,
            253_402_300_799,
            253_402_300_800,
            -62_135_596_800,
            -62_135_596_801,
        ];
        match self.below(3) {
            0 => EDGES[self.below(EDGES.len())],
            1 => self.next() as i64,
            _ => self.below(100_000) as i64,
        }
    }

    fn i32(&mut self) -> i32 {
        match self.below(3) {
            0 => [0, 1, -1, i32::MAX, i32::MIN, 999_999_999, 1_000_000_000][self.below(7)],
            1 => self.next() as i32,
            _ => self.below(20) as i32,
        }
    }

    fn u32(&mut self) -> u32 {
        self.i64() as u32
    }

    fn u64(&mut self) -> u64 {
        self.i64() as u64
    }

    fn time(&mut self) -> Option<prost_types::Timestamp> {
        (self.below(3) > 0).then(|| prost_types::Timestamp {
            seconds: self.i64(),
            nanos: self.i32(),
        })
    }

    fn duration(&mut self) -> Option<prost_types::Duration> {
        (self.below(3) > 0).then(|| prost_types::Duration {
            seconds: self.i64(),
            nanos: self.i32(),
        })
    }

    /// Whether to set a field: each request changes one or two of its
    /// fields from a valid request, so that one bad value is not hidden
    /// behind another the server refuses first.
    fn pick_fields(&mut self, n: usize) -> Vec<bool> {
        let mut chosen = vec![false; n];
        for _ in 0..1 + self.below(2) {
            chosen[self.below(n)] = true;
        }
        chosen
    }

    fn filter(&mut self) -> Option<pb::ConnectionStateFilter> {
        let f = self.pick_fields(10);
        let mut filter = pb::ConnectionStateFilter::default();
        if f[0] {
            filter.connection_status = self.i32();
        }
        if f[1] {
            filter.client_type = self.i32();
        }
        let times = [
            &mut filter.connected_after,
            &mut filter.connected_before,
            &mut filter.disconnected_after,
            &mut filter.disconnected_before,
            &mut filter.active_after,
            &mut filter.active_before,
        ];
        for (i, t) in times.into_iter().enumerate() {
            if f[2 + i] {
                *t = self.time();
            }
        }
        (!f[8]).then_some(filter)
    }

    fn event(&mut self) -> pb::LifecycleEvent {
        let f = self.pick_fields(8);
        let mut info = pb::ConnectionInfo {
            client_addr: "127.0.0.1".into(),
            port: 1883,
            protocol: pb::MqttProtocol::V311 as i32,
            keep_alive_seconds: 60,
            ..Default::default()
        };
        if f[0] {
            info.port = self.u32();
        }
        if f[1] {
            info.protocol = self.i32();
        }
        if f[2] {
            info.keep_alive_seconds = self.u32();
        }
        let event = match self.below(4) {
            0 => pb::lifecycle_event::Event::Connected(pb::Connected { info: Some(info) }),
            1 => pb::lifecycle_event::Event::ConnectFailed(pb::ConnectFailed {
                info: Some(info),
                failure: if f[3] { self.i32() } else { 1 },
            }),
            2 => pb::lifecycle_event::Event::Disconnected(pb::Disconnected {
                cause: if f[4] { self.i32() } else { 1 },
                reason_code: f[5].then(|| self.u32()),
                detail: String::new(),
            }),
            _ => pb::lifecycle_event::Event::Activity(pb::Activity {
                kind: if f[3] { self.i32() } else { 1 },
            }),
        };
        pb::LifecycleEvent {
            client_id: format!("d:local:fuzz:c{}", self.below(5)),
            time: if f[6] { self.time() } else { Some(at(0)) },
            connection_id: if f[7] {
                self.u64()
            } else {
                1 + self.below(5) as u64
            },
            event: Some(event),
        }
    }
}

/// A status a client error may get; anything else is a server fault.
fn assert_client_error(what: &str, status: &tonic::Status) {
    assert!(
        matches!(
            status.code(),
            Code::InvalidArgument | Code::NotFound | Code::OutOfRange | Code::FailedPrecondition
        ),
        "{what}: {status:?}"
    );
}

#[tokio::test]
async fn numeric_time_and_duration_fields_never_fault_the_server() {
    let server = TestServer::start().await;
    server
        .ingest(vec![connected("d:local:fuzz:c0", 1, 0)])
        .await;
    let mut rng = Rng::from_env("CONNSTATE_FUZZ_SEED");
    let mut states = server.states();
    let mut ingest = server.ingest_client();
    let mut admin = server.admin();
    let started = Instant::now();
    let mut sent = 0;
    while sent < 2000 && started.elapsed() < Duration::from_secs(25) {
        let (what, result) = match rng.below(7) {
            0 => {
                let f = rng.pick_fields(2);
                let request = pb::ListConnectionStatesRequest {
                    filter: if f[0] { rng.filter() } else { None },
                    page_size: if f[1] { rng.i32() } else { 0 },
                    ..Default::default()
                };
                let what = format!("{request:?}");
                (
                    what,
                    states.list_connection_states(request).await.map(|_| ()),
                )
            }
            1 => {
                let f = rng.pick_fields(5);
                let request = pb::ListConnectionLogsRequest {
                    kinds: if f[0] { vec![rng.i32()] } else { vec![] },
                    initiator: if f[1] { rng.i32() } else { 0 },
                    start_time: if f[2] { rng.time() } else { None },
                    end_time: if f[3] { rng.time() } else { None },
                    page_size: if f[4] { rng.i32() } else { 0 },
                    ..Default::default()
                };
                let what = format!("{request:?}");
                (what, states.list_connection_logs(request).await.map(|_| ()))
            }
            2 => {
                let f = rng.pick_fields(4);
                let request = pb::WatchConnectionsRequest {
                    filter: if f[0] { rng.filter() } else { None },
                    start_revision: f[1].then(|| rng.u64()),
                    kinds: if f[2] { vec![rng.i32()] } else { vec![] },
                    heartbeat_interval: if f[3] { rng.duration() } else { None },
                    ..Default::default()
                };
                let what = format!("{request:?}");
                let result = match states.watch_connections(request).await {
                    Err(status) => Err(status),
                    Ok(response) => {
                        let mut stream = response.into_inner();
                        // A watch that was accepted either delivers or
                        // stays open; it never ends at once without a word.
                        match tokio::time::timeout(Duration::from_millis(100), stream.message())
                            .await
                        {
                            Err(_) | Ok(Ok(Some(_))) => Ok(()),
                            Ok(Ok(None)) => {
                                panic!("{what}: the stream ended with OK and no message")
                            }
                            Ok(Err(status)) => Err(status),
                        }
                    }
                };
                (what, result)
            }
            3 => {
                let events = (0..1 + rng.below(3)).map(|_| rng.event()).collect();
                let request = pb::IngestEventsRequest {
                    broker: "fuzz".into(),
                    events,
                    lease_duration: if rng.below(4) == 0 {
                        rng.duration()
                    } else {
                        None
                    },
                };
                let what = format!("{request:?}");
                (what, ingest.ingest_events(request).await.map(|_| ()))
            }
            4 => {
                // Every field but `enabled` (turning it off is a valid
                // request that deletes all state; other tests cover it).
                let fields = [
                    "log_max_age",
                    "log_max_entries_per_client",
                    "feed_max_age",
                    "feed_max_entries",
                ];
                let field = fields[rng.below(fields.len())];
                let mut settings = pb::Settings {
                    enabled: true,
                    ..Default::default()
                };
                match field {
                    "log_max_age" => settings.log_max_age = rng.duration(),
                    "log_max_entries_per_client" => settings.log_max_entries_per_client = rng.u32(),
                    "feed_max_age" => settings.feed_max_age = rng.duration(),
                    _ => settings.feed_max_entries = rng.u64(),
                }
                let request = pb::UpdateSettingsRequest {
                    settings: Some(settings),
                    update_mask: vec![field.into()],
                };
                let what = format!("{request:?}");
                (what, admin.update_settings(request).await.map(|_| ()))
            }
            5 => {
                let request = pb::RenewBrokerLeaseRequest {
                    broker: "fuzz".into(),
                    lease_duration: rng.duration(),
                };
                let what = format!("{request:?}");
                (what, ingest.renew_broker_lease(request).await.map(|_| ()))
            }
            _ => {
                let request = pb::GetConnectionStateRequest {
                    client_id: format!("d:local:fuzz:c{}", rng.below(5)),
                };
                let what = format!("{request:?}");
                (what, states.get_connection_state(request).await.map(|_| ()))
            }
        };
        if let Err(status) = result {
            assert_client_error(&what, &status);
        }
        sent += 1;
    }
    assert!(sent > 100, "sent {sent} requests");
    // Still serving: a read and a write go through.
    server
        .ingest(vec![connected("d:local:fuzz:after", 1, 0)])
        .await;
    assert_eq!(
        server.get("d:local:fuzz:after").await.client_id,
        "d:local:fuzz:after"
    );
    server.stop().await;
}
