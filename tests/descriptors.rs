//! When the process runs out of file descriptors, a listener's accept fails:
//! it backs off (a few attempts a second, not a spin), counts the failures,
//! and serves again as soon as descriptors are free.
//!
//! This test binary lowers its own open-file limit and holds no other test
//! for that reason.

mod common;

use std::time::Duration;

use common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const FILE_LIMIT: u64 = 256;

/// `name`'s value in the metrics text, 0 when absent.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_back_off_while_descriptors_run_out_and_recover() {
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
    rlimit::Resource::NOFILE
        .set(FILE_LIMIT.min(soft), hard)
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        let server = TestServer::start().await;
        let http = reqwest::Client::new();
        let metrics_url = format!("{}/metrics", server.rest);
        eventually(Duration::from_secs(10), || async {
            http.get(&metrics_url).send().await.ok()?.text().await.ok()
        })
        .await;

        // Connect to MQTT until this process has no descriptor left: the
        // last connections complete in the kernel but cannot be accepted.
        let mut held = Vec::new();
        while let Ok(stream) = TcpStream::connect(server.mqtt).await {
            held.push(stream);
            assert!(held.len() < 1000, "the descriptor limit did not apply");
        }
        // When the server kept up, this side ran out first and nothing waits
        // to be accepted: free a connection and spend every descriptor that
        // frees (this side's, and the server's once it sees the close) on
        // more connections, which the server then cannot accept.
        for _ in 0..3 {
            held.pop();
            tokio::time::sleep(Duration::from_millis(20)).await;
            while let Ok(stream) = TcpStream::connect(server.mqtt).await {
                held.push(stream);
                assert!(held.len() < 1000, "the descriptor limit did not apply");
            }
        }
        let exhausted = std::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;

        // Free them: the listener serves again.
        drop(held);
        let mut tcp = eventually(Duration::from_secs(10), || async {
            TcpStream::connect(server.mqtt).await.ok()
        })
        .await;
        let connect = [
            0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 3, b'f', b'd', b'1',
        ];
        tcp.write_all(&connect).await.unwrap();
        let mut ack = [0u8; 4];
        tcp.read_exact(&mut ack).await.unwrap();
        assert_eq!(ack, [0x20, 2, 0, 0], "CONNACK after recovery");
        let elapsed = exhausted.elapsed();

        let text = eventually(Duration::from_secs(10), || async {
            http.get(&metrics_url).send().await.ok()?.text().await.ok()
        })
        .await;
        let failures = metric(&text, "connstate_accept_failures_total{listener=\"mqtt\"}");
        assert!(failures >= 1, "no failed accept counted: {text}");
        // Backing off, not spinning: a handful of attempts per second.
        let per_second = failures as f64 / elapsed.as_secs_f64();
        assert!(
            per_second < 50.0,
            "{failures} failed accepts in {elapsed:?}"
        );
        server.stop().await;
    })
    .await
    .expect("the test finished in time");
}
