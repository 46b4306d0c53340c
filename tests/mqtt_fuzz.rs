//! A property test on the broker's packet-handling path: for a bounded
//! time, real sockets send random bytes and mutated packets, before and
//! after a valid CONNECT. The broker must never panic, must end every such
//! connection, must record every accepted one as disconnected, and must
//! keep serving.
//!
//! `MQTT_FUZZ_SECONDS` (default 4) and `MQTT_FUZZ_SEED` reproduce or
//! lengthen a run; a failure prints the seed.

mod common;

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use common::{
    Rng, TestServer, eventually,
    mqtt_wire::{packet, string},
};
use connstate::pb;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

static PANICS: AtomicUsize = AtomicUsize::new(0);

impl Rng {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn connect(client_id: &str, v5: bool) -> Vec<u8> {
    let mut body = string("MQTT");
    body.push(if v5 { 5 } else { 4 });
    body.push(0x02); // clean session
    body.extend_from_slice(&0u16.to_be_bytes()); // no keepalive
    if v5 {
        body.push(0); // no properties
    }
    body.extend(string(client_id));
    packet(0x10, &body)
}

/// Valid packets of every kind a client sends, to mutate.
fn samples(v5: bool) -> Vec<Vec<u8>> {
    let props: &[u8] = if v5 { &[0] } else { &[] };
    let mut publish1 = string("a/b");
    publish1.extend_from_slice(&[0, 7]);
    publish1.extend_from_slice(props);
    publish1.extend_from_slice(b"payload");
    let mut publish0 = string("a/+/bad");
    publish0.extend_from_slice(props);
    let mut subscribe = vec![0, 1];
    subscribe.extend_from_slice(props);
    subscribe.extend(string("a/#"));
    subscribe.push(1);
    let mut unsubscribe = vec![0, 2];
    unsubscribe.extend_from_slice(props);
    unsubscribe.extend(string("a/#"));
    vec![
        packet(0x32, &publish1),
        packet(0x30, &publish0),
        packet(0x82, &subscribe),
        packet(0xA2, &unsubscribe),
        packet(0x40, &[0, 7]),
        packet(0x62, &[0, 7]),
        packet(0xC0, &[]),
        packet(0xE0, if v5 { &[0x04, 0] } else { &[] }),
        connect("again", v5),
    ]
}

/// Random bytes, or sample packets with bytes flipped, lengths changed or
/// cut short.
fn garbage(rng: &mut Rng, v5: bool) -> Vec<u8> {
    match rng.below(4) {
        0 => {
            let n = 1 + rng.below(64);
            rng.bytes(n)
        }
        _ => {
            let samples = samples(v5);
            let mut out = Vec::new();
            for _ in 0..1 + rng.below(4) {
                let mut p = samples[rng.below(samples.len())].clone();
                match rng.below(4) {
                    0 => {
                        let i = rng.below(p.len());
                        p[i] ^= 1 << rng.below(8);
                    }
                    1 => {
                        let i = rng.below(p.len());
                        p[i] = rng.next() as u8;
                    }
                    2 => p.truncate(rng.below(p.len()) + 1),
                    _ => {
                        if p.len() > 1 {
                            p[1] = rng.next() as u8;
                        }
                    }
                }
                out.extend(p);
            }
            out
        }
    }
}

/// Reads until the server closes, or gives up after `limit`.
async fn drain(stream: &mut TcpStream, limit: Duration) {
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(limit, async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_packets_never_break_the_broker() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let seconds: u64 = std::env::var("MQTT_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let server = TestServer::start().await;
    let mut rng = Rng::from_env("MQTT_FUZZ_SEED");
    let seed = rng.0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut accepted = 0usize;
    let mut rounds = 0usize;
    while tokio::time::Instant::now() < deadline {
        rounds += 1;
        let v5 = rng.below(2) == 0;
        let mut stream = TcpStream::connect(server.mqtt).await.expect("connect");
        if rng.below(4) > 0 {
            stream
                .write_all(&connect(&format!("fuzz-{rounds}"), v5))
                .await
                .expect("write CONNECT");
            let mut ack = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut ack))
                .await
                .expect("CONNACK in time")
                .expect("CONNACK");
            assert_eq!(ack[0], 0x20, "CONNACK, seed {seed}");
            accepted += 1;
        }
        let bytes = garbage(&mut rng, v5);
        // The server may already have closed: writes may fail.
        let _ = stream.write_all(&bytes).await;
        let _ = stream.shutdown().await;
        drain(&mut stream, Duration::from_secs(5)).await;
    }
    println!("{rounds} connections, {accepted} accepted");
    assert!(accepted > 10, "too few rounds to mean anything: {accepted}");

    // Every accepted connection ended and was recorded as such.
    let mut states = server.states();
    eventually(Duration::from_secs(20), || {
        let mut states = states.clone();
        async move {
            let listed = states
                .list_connection_states(pb::ListConnectionStatesRequest {
                    filter: Some(pb::ConnectionStateFilter {
                        client_id_prefix: "fuzz-".into(),
                        connection_status: pb::ConnectionStatus::Connected as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            listed.states.is_empty().then_some(())
        }
    })
    .await;
    let all = states
        .list_connection_states(pb::ListConnectionStatesRequest {
            filter: Some(pb::ConnectionStateFilter {
                client_id_prefix: "fuzz-".into(),
                ..Default::default()
            }),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(!all.states.is_empty(), "accepted clients are recorded");

    // Still serving: a well-behaved client is accepted.
    let mut stream = TcpStream::connect(server.mqtt).await.expect("connect");
    stream
        .write_all(&connect("after-fuzz", false))
        .await
        .unwrap();
    let mut ack = [0u8; 4];
    stream.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "CONNACK: accepted");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "panicked, seed {seed}");
    server.stop().await;
}
