//! kill -9 during a stream of acknowledged ingest batches loses nothing that
//! was acknowledged; after restart revisions continue upward and clients
//! that were connected are recorded as disconnected by the server.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_connstate"))
        .args([
            "serve",
            "--grpc-listen",
            "127.0.0.1:0",
            "--rest-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--mqtt-ws-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
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
    let mut recovered = 0;
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
                assert_eq!(
                    state.connection_status,
                    pb::ConnectionStatus::Disconnected as i32,
                    "{id}"
                );
                // Disconnected by its client if the next acknowledged batch
                // said so; otherwise it was connected at the kill and
                // recovery ended it on the server's behalf.
                let disconnected_by_client = i % 2 == 0 && batch < last_batch;
                if disconnected_by_client {
                    assert_eq!(
                        state.last_disconnect_initiator,
                        pb::DisconnectInitiator::Client as i32,
                        "{id}"
                    );
                } else if state.last_disconnect_initiator == pb::DisconnectInitiator::Server as i32
                {
                    assert_eq!(state.last_disconnect_reason_code, Some(0x8B), "{id}");
                    assert_eq!(state.last_close_code, Some(93), "{id}");
                    recovered += 1;
                }
            }
        }
    }
    assert!(
        recovered > 0,
        "clients connected at the kill were recovered"
    );
    assert!(
        highest_revision > max_acked_revision,
        "revisions continue upward after restart"
    );
    // The recovery is in the log too.
    let logs = states
        .list_connection_logs(pb::ListConnectionLogsRequest {
            initiator: pb::DisconnectInitiator::Server as i32,
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(
        logs[0].message,
        "Disconnected by the server: server restarted while the client was connected (0x8B)"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
