//! The NATS cluster of the cluster tests works under the conditions they
//! need: three real `nats-server` processes form one JetStream cluster, an
//! R3 stream acknowledges publishes, and a server killed with SIGKILL in the
//! middle of a stream of acknowledged publishes loses none of them, then
//! restarts on its store and catches up.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use common::{eventually, nats::NatsCluster};

/// An R3 file stream `name` on subject `name`.
async fn r3_stream(js: &jetstream::Context, name: &str) -> stream::Stream {
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![name.into()],
        num_replicas: 3,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("create an R3 stream")
}

/// Stream info of `name` when its leader and every other replica are
/// current, online and not behind.
async fn fully_replicated(js: &jetstream::Context, name: &str) -> Option<stream::Info> {
    let info = js.get_stream(name).await.ok()?.get_info().await.ok()?;
    let cluster = info.cluster.as_ref()?;
    let all_current = cluster.leader.is_some()
        && cluster.replicas.len() == 2
        && cluster
            .replicas
            .iter()
            .all(|p| p.current && !p.offline && p.lag.unwrap_or(0) == 0);
    all_current.then_some(info)
}

#[tokio::test]
async fn three_servers_form_a_cluster_with_an_r3_stream() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let cluster = NatsCluster::start(3).await;
        let urls = cluster.urls();
        assert_eq!(urls.split(',').count(), 3, "{urls}");
        assert!(urls.split(',').all(|u| u.starts_with("nats://127.0.0.1:")));
        assert_eq!(urls.split(',').next(), Some(cluster.url(0).as_str()));

        let js = jetstream::new(cluster.client().await.expect("connect"));
        r3_stream(&js, "events").await;
        for k in 1..=100u64 {
            let ack = js
                .publish("events", format!("event {k}").into())
                .await
                .expect("publish")
                .await
                .expect("ack");
            assert_eq!(ack.sequence, k);
        }

        // Every server is a member of the stream's group and has it all.
        let info = eventually(Duration::from_secs(20), || fully_replicated(&js, "events")).await;
        let cluster_info = info.cluster.expect("clustered stream");
        let mut members: Vec<String> = cluster_info
            .replicas
            .iter()
            .map(|p| p.name.clone())
            .chain(cluster_info.leader)
            .collect();
        members.sort();
        assert_eq!(members, ["n0", "n1", "n2"]);
        assert_eq!(info.state.messages, 100);
        cluster.stop();
    })
    .await
    .expect("test within 60 s");
}

#[tokio::test]
async fn kill_9_of_one_server_loses_no_acknowledged_publish() {
    tokio::time::timeout(Duration::from_secs(120), async {
        const MESSAGES: usize = 2_000;
        let mut cluster = NatsCluster::start(3).await;
        let js = jetstream::new(cluster.client().await.expect("connect"));
        let storm = r3_stream(&js, "storm").await;

        // The server leading the stream is the one killed: its loss forces
        // an election in the middle of the publishes.
        let leader = storm
            .get_info()
            .await
            .expect("stream info")
            .cluster
            .and_then(|c| c.leader)
            .expect("stream leader");
        let victim = (0..3)
            .find(|&i| cluster.name(i) == leader)
            .expect("leader is one of the servers");

        let mut acked = Vec::with_capacity(MESSAGES);
        let mut retries = 0u32;
        for k in 0..MESSAGES {
            if k == MESSAGES / 2 {
                cluster.kill9(victim);
            }
            // A retried publish carries the same message id, so the stream
            // keeps one copy even when the first attempt was stored and
            // only its ack was lost.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let ack = loop {
                let attempt = async {
                    js.send_publish(
                        "storm",
                        PublishMessage::build()
                            .message_id(format!("m{k}"))
                            .payload(format!("payload {k}").into()),
                    )
                    .await?
                    .await
                    .map_err(async_nats::Error::from)
                };
                match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                    Ok(Ok(ack)) => break ack,
                    Ok(Err(e)) => assert!(
                        tokio::time::Instant::now() < deadline,
                        "publish {k} still failing after 30 s: {e}"
                    ),
                    Err(_) => assert!(
                        tokio::time::Instant::now() < deadline,
                        "publish {k} still unacknowledged after 30 s"
                    ),
                }
                retries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            acked.push((ack.sequence, k));
        }
        println!("{MESSAGES} publishes acknowledged, {retries} retried");

        // Every acknowledged sequence holds its message; the stream holds
        // each message once.
        for &(sequence, k) in &acked {
            let message = storm
                .get_raw_message(sequence)
                .await
                .unwrap_or_else(|e| panic!("read sequence {sequence} (publish {k}): {e}"));
            assert_eq!(
                message.payload,
                format!("payload {k}").as_bytes(),
                "sequence {sequence}"
            );
        }
        let mut sequences: Vec<u64> = acked.iter().map(|&(s, _)| s).collect();
        sequences.sort_unstable();
        sequences.dedup();
        assert_eq!(sequences.len(), MESSAGES, "distinct acknowledged sequences");
        let info = storm.get_info().await.expect("stream info");
        assert_eq!(info.state.messages, MESSAGES as u64);

        // The killed server comes back on its store and catches up: the
        // stream is whole on all three again, and it answers for the
        // cluster.
        cluster.restart(victim).await;
        let info = eventually(Duration::from_secs(30), || fully_replicated(&js, "storm")).await;
        let cluster_info = info.cluster.expect("clustered stream");
        let victim_name = cluster.name(victim).to_owned();
        assert!(
            cluster_info.leader.as_deref() == Some(victim_name.as_str())
                || cluster_info.replicas.iter().any(|p| p.name == victim_name),
            "{victim_name} is back in the stream's group: {cluster_info:?}"
        );
        let direct = async_nats::connect(cluster.url(victim))
            .await
            .expect("connect to the restarted server");
        let direct = jetstream::new(direct);
        let ack = direct
            .publish("storm", "after restart".into())
            .await
            .expect("publish through the restarted server")
            .await
            .expect("ack");
        assert_eq!(ack.sequence, MESSAGES as u64 + 1);
        cluster.stop();
    })
    .await
    .expect("test within 120 s");
}
