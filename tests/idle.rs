//! The store's own threads run the idle hook when they run out of work:
//! that is where the binaries' allocator gives memory back (src/idle.rs).
//! A test file of its own, so that the process-wide hook is this test's.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use connstate::{
    domain::{ClientId, ConnectionInfo, EventKind, LifecycleEvent, MqttProtocol},
    store::{Store, StoreOptions},
};

/// The names of the threads that ran the hook, once each.
static IDLE_THREADS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn note_idle_thread() {
    let name = std::thread::current().name().unwrap_or("").to_owned();
    let mut threads = IDLE_THREADS.lock().unwrap();
    if !threads.contains(&name) {
        threads.push(name);
    }
}

#[tokio::test]
async fn the_writer_and_the_write_back_run_the_idle_hook_when_they_wait() {
    assert!(connstate::idle::set_hook(note_idle_thread));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let connect = LifecycleEvent {
        client_id: ClientId::new("d:org:type:idle-1").unwrap(),
        time: connstate::domain::truncate_to_millis(chrono::Utc::now()),
        connection_id: 1,
        broker: Arc::from("test"),
        kind: EventKind::Connected(ConnectionInfo {
            addr: IpAddr::from([10, 0, 0, 1]),
            port: 40_000,
            secure: false,
            username: "use-token-auth".into(),
            protocol: Some(MqttProtocol::V3_1_1),
            keep_alive: 60,
            clean_session: true,
        }),
        peer: None,
    };
    store.commit_events(vec![connect]).await.unwrap();
    // The write-back thread goes idle after the write-back of the commit.
    let names = ["connstate-writer", "connstate-write-back"];
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = || {
        let threads = IDLE_THREADS.lock().unwrap();
        names.iter().all(|name| threads.iter().any(|t| t == name))
    };
    while !seen() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let threads = IDLE_THREADS.lock().unwrap().clone();
    for name in names {
        assert!(
            threads.iter().any(|t| t == name),
            "{name} never ran the idle hook: {threads:?}"
        );
    }
    store.close().await.unwrap();
}
