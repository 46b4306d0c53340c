//! kill -9 during a stream of acknowledged ingest batches loses nothing that
//! was acknowledged; after restart revisions continue upward. Clients of a
//! broker without a lease stay as reported (they are still connected to
//! that broker); a broker's lease runs again from the start after a
//! restart and disconnects its clients when it lapses.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    time::Duration,
};

use common::*;
use connstate::pb::{
    self, connection_state_service_client::ConnectionStateServiceClient,
    ingest_service_client::IngestServiceClient,
};
use tonic::transport::Channel;

/// Starts the real binary on port 0 and reads back its address.
fn spawn_server(data_dir: &std::path::Path) -> (Child, String) {
    let mut child = serve_command(data_dir, &FREE_PORTS)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start connstate");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("address line");
    let addr = line
        .trim()
        .strip_prefix("connstate grpc listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, format!("http://{addr}"))
}

async fn channel(url: &str) -> Channel {
    eventually(Duration::from_secs(10), || async {
        Channel::from_shared(url.to_owned())
            .unwrap()
            .connect()
            .await
            .ok()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = spawn_server(dir.path());
    let ch = channel(&url).await;

    // Four writers ingest batches until the process dies under them.
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let mut ingest = IngestServiceClient::new(ch.clone());
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut last_revision = 0;
            for batch in 0u64.. {
                // Each batch connects 50 new clients and disconnects the
                // previous batch's even ones.
                let mut events = Vec::new();
                for i in 0..50u64 {
                    events.push(connected(
                        &format!("d:local:w{w}:b{batch}-{i}"),
                        batch * 100 + i + 1,
                        0,
                    ));
                }
                if batch > 0 {
                    for i in (0..50u64).step_by(2) {
                        events.push(disconnected(
                            &format!("d:local:w{w}:b{}-{i}", batch - 1),
                            (batch - 1) * 100 + i + 1,
                            1,
                            pb::DisconnectCause::ClientDisconnect,
                            None,
                        ));
                    }
                }
                match ingest
                    .ingest_events(pb::IngestEventsRequest {
                        lease_duration: None,
                        broker: "edge".into(),
                        events,
                    })
                    .await
                {
                    Ok(reply) => {
                        last_revision = reply.into_inner().revision;
                        acknowledged.push(batch);
                    }
                    Err(_) => break,
                }
            }
            (acknowledged, last_revision)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let mut results = Vec::new();
    for writer in writers {
        results.push(writer.await.unwrap());
    }
    let max_acked_revision = results.iter().map(|r| r.1).max().unwrap();
    let total_batches: usize = results.iter().map(|r| r.0.len()).sum();
    assert!(
        total_batches > 10,
        "the writers made progress before the kill ({total_batches} batches)"
    );

    let (mut child, url) = spawn_server(dir.path());
    let ch = channel(&url).await;
    let mut states = ConnectionStateServiceClient::new(ch);
    let mut highest_revision = 0;
    for (w, (acknowledged, _)) in results.iter().enumerate() {
        let last_batch = *acknowledged.last().unwrap();
        for &batch in acknowledged {
            for i in 0..50u64 {
                let id = format!("d:local:w{w}:b{batch}-{i}");
                let state = states
                    .get_connection_state(pb::GetConnectionStateRequest {
                        client_id: id.clone(),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("acknowledged client {id} lost: {e}"))
                    .into_inner();
                highest_revision = highest_revision.max(state.revision);
                // Disconnected by its client if the next acknowledged batch
                // said so; otherwise still connected to broker "edge",
                // which never took a lease: a restart of this service
                // says nothing about that broker's clients.
                let disconnected_by_client = i % 2 == 0 && batch < last_batch;
                if disconnected_by_client {
                    assert_eq!(
                        state.connection_status,
                        pb::ConnectionStatus::Disconnected as i32,
                        "{id}"
                    );
                    assert_eq!(
                        state.last_disconnect_initiator,
                        pb::DisconnectInitiator::Client as i32,
                        "{id}"
                    );
                } else if state.connection_status != pb::ConnectionStatus::Connected as i32 {
                    // Only the batch after the last acknowledged one may
                    // have landed without its acknowledgement.
                    assert!(i % 2 == 0 && batch == last_batch, "{id} left as reported");
                }
            }
        }
    }
    let next = IngestServiceClient::new(channel(&url).await)
        .ingest_events(pb::IngestEventsRequest {
            broker: "edge".into(),
            lease_duration: None,
            events: vec![connected("d:local:after-restart", 1, 2)],
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert!(
        next > max_acked_revision && next > highest_revision,
        "revisions continue upward after restart"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_lease_runs_again_after_a_restart_then_lapses() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = spawn_server(dir.path());
    let mut ingest = IngestServiceClient::new(channel(&url).await);
    for (broker, client, lease) in [
        ("edge-1", "d:local:t:leased", Some(3)),
        ("edge-2", "d:local:t:free", None),
    ] {
        ingest
            .ingest_events(pb::IngestEventsRequest {
                broker: broker.into(),
                events: vec![connected(client, 1, 0)],
                lease_duration: lease.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
            })
            .await
            .unwrap();
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    let (mut child, url) = spawn_server(dir.path());
    let restarted = std::time::Instant::now();
    let mut states = ConnectionStateServiceClient::new(channel(&url).await);
    let get = |states: &mut ConnectionStateServiceClient<Channel>, id: &str| {
        let mut states = states.clone();
        let id = id.to_owned();
        async move {
            states
                .get_connection_state(pb::GetConnectionStateRequest { client_id: id })
                .await
                .unwrap()
                .into_inner()
        }
    };
    // Neither broker's clients are marked by the restart.
    for id in ["d:local:t:leased", "d:local:t:free"] {
        let state = get(&mut states, id).await;
        assert_eq!(
            state.connection_status,
            pb::ConnectionStatus::Connected as i32,
            "{id}"
        );
    }
    // The stored lease ran again from the restart, then lapsed.
    let lapsed = eventually(Duration::from_secs(15), || {
        let mut states = states.clone();
        async move {
            let state = get(&mut states, "d:local:t:leased").await;
            (state.connection_status == pb::ConnectionStatus::Disconnected as i32).then_some(state)
        }
    })
    .await;
    assert!(
        restarted.elapsed() >= Duration::from_secs(2),
        "the lease ran again in full"
    );
    assert_eq!(lapsed.last_close_code, Some(96));
    assert_eq!(
        lapsed.last_disconnect_initiator,
        pb::DisconnectInitiator::Network as i32
    );
    let state = get(&mut states, "d:local:t:free").await;
    assert_eq!(
        state.connection_status,
        pb::ConnectionStatus::Connected as i32
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
