//! A new user's first minutes with the real binary: what it prints when it
//! starts, when it cannot, and what `--help` tells.

mod common;

use common::{FREE_PORTS, serve_command};
use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// How long any one start or stop may take.
const LIMIT: Duration = Duration::from_secs(30);

/// A running binary whose standard output arrives line by line.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
}

impl Server {
    fn start(data_dir: &Path, args: &[&str]) -> Server {
        let mut child = serve_command(data_dir, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start connstate");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Server {
            child,
            lines,
            stdout: Vec::new(),
        }
    }

    /// Reads standard output until a line starts with `prefix`; returns the
    /// rest of that line, or `None` when the output ends first.
    fn wait_for(&mut self, prefix: &str) -> Option<String> {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Some(rest.to_owned());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no {prefix:?} within {LIMIT:?}: {:?}", self.stdout)
                }
            }
        }
    }

    /// Waits (bounded) for the process to exit; returns its status, its
    /// whole standard output and its standard error.
    fn exit(mut self) -> (ExitStatus, Vec<String>, String) {
        let deadline = Instant::now() + LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("still running after {LIMIT:?}: {:?}", self.stdout);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stdout.push(line);
        }
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status, self.stdout, stderr)
    }

    fn terminate(self) -> (ExitStatus, Vec<String>, String) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        self.exit()
    }
}

/// GET `/ready` with a bare HTTP/1.1 request; the status code.
fn ready_status(addr: &str) -> u16 {
    use std::io::Write;
    let mut tcp = std::net::TcpStream::connect(addr).expect("connect to REST");
    tcp.set_read_timeout(Some(LIMIT)).unwrap();
    tcp.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

/// The one error line a failed start prints (the log lines aside).
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("connstate: "))
        .collect()
}

#[test]
fn listeners_are_announced_once_they_serve() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &FREE_PORTS);
    let rest = server.wait_for("connstate rest listening on ").unwrap();
    // The store is open by the time the line is printed.
    assert_eq!(ready_status(&rest), 200);
    let pid = std::fs::read_to_string(dir.path().join("connstate.pid")).unwrap();
    assert_eq!(pid.trim(), server.child.id().to_string());
    let (status, _, stderr) = server.terminate();
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        !dir.path().join("connstate.pid").exists(),
        "the pid file goes at a clean stop"
    );
}

#[test]
fn the_console_url_is_announced_after_the_listeners() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &FREE_PORTS);
    let rest = server.wait_for("connstate rest listening on ").unwrap();
    let url = server.wait_for("connstate console at ").unwrap();
    assert_eq!(url, format!("http://{rest}/"));
    // It is the console's page, needing no credentials.
    let mut tcp = std::net::TcpStream::connect(&rest).expect("connect to REST");
    tcp.set_read_timeout(Some(LIMIT)).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("<title>connstate console</title>"));
    let (status, _, stderr) = server.terminate();
    assert!(status.success(), "{status}: {stderr}");
}

#[test]
fn a_second_server_on_the_same_data_folder_says_who_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Server::start(dir.path(), &FREE_PORTS);
    first.wait_for("connstate rest listening on ").unwrap();

    let second = Server::start(dir.path(), &FREE_PORTS);
    let (status, stdout, stderr) = second.exit();
    assert!(!status.success(), "{status}");
    assert!(
        !stdout.iter().any(|l| l.contains("listening on")),
        "nothing announced: {stdout:?}"
    );
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "one error, printed once: {stderr}");
    let expected = format!(
        "data folder {} is in use by another connstate (pid {})",
        dir.path().display(),
        first.child.id()
    );
    assert!(errors[0].contains(&expected), "{stderr}");
    assert!(!stderr.contains("Os {"), "no Debug output: {stderr}");

    let (status, _, stderr) = first.terminate();
    assert!(status.success(), "{status}: {stderr}");
}

#[test]
fn a_port_in_use_names_the_listener_and_its_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut args = FREE_PORTS.to_vec();
    args[5] = &port; // --mqtt-listen
    let (status, stdout, stderr) = Server::start(dir.path(), &args).exit();
    assert!(!status.success(), "{status}");
    assert!(
        !stdout.iter().any(|l| l.contains("listening on")),
        "{stdout:?}"
    );
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(&format!(
            "MQTT listener (--mqtt-listen) cannot listen on {port}"
        )),
        "{stderr}"
    );
}

#[test]
fn configuration_errors_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = FREE_PORTS.to_vec();
    args.extend(["--admin-key", "a-local-admin", "--admin-token", "short"]);
    let (status, _, stderr) = Server::start(dir.path(), &args).exit();
    assert!(!status.success(), "{status}");
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("--admin-token: must be at least 18 characters"),
        "{stderr}"
    );
}

#[test]
fn localhost_names_loopback_and_listeners_switch_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        dir.path(),
        &[
            "--grpc-listen",
            "localhost:0",
            "--rest-listen",
            "localhost:0",
            "--mqtt-listen",
            "off",
            "--mqtt-ws-listen",
            "off",
        ],
    );
    let rest = server.wait_for("connstate rest listening on ").unwrap();
    assert!(rest.starts_with("127.0.0.1:"), "{rest}");
    assert_eq!(ready_status(&rest), 200);
    let (status, stdout, stderr) = server.terminate();
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stdout
            .iter()
            .any(|l| l.starts_with("connstate grpc listening on 127.0.0.1:")),
        "{stdout:?}"
    );
    assert!(
        !stdout.iter().any(|l| l.starts_with("connstate mqtt")),
        "MQTT is off: {stdout:?}"
    );
}

#[test]
fn help_documents_off_and_rust_log() {
    let out = Command::new(env!("CARGO_BIN_EXE_connstate"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("RUST_LOG"), "{help}");
    for flag in [
        "--grpc-listen",
        "--rest-listen",
        "--mqtt-listen",
        "--mqtt-tls-listen",
        "--mqtt-ws-listen",
    ] {
        let at = help.find(flag).unwrap();
        let entry = &help[at..];
        let entry = &entry[..entry[2..].find("\n  -").map_or(entry.len(), |e| e + 2)];
        assert!(
            entry.contains("off"),
            "{flag} does not say it may be off: {entry}"
        );
    }
}

/// A start that fails after some parts are running stops them all: here
/// the MQTT listener already serves when the REST gateway's certificate
/// turns out to be unreadable, and the failed start leaves no listener
/// behind, and no store: its writer ends with its last handle, and the
/// data folder is free for the next start in the same process.
#[tokio::test]
async fn a_failed_start_stops_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let mqtt = bind().await;
    let mqtt_addr = mqtt.local_addr().unwrap();
    let data_dir = dir.path().join("data");
    let config = connstate::Config {
        data_dir: data_dir.clone(),
        tls: Some((cert.clone(), cert)),
        ..connstate::Config::default()
    };
    let listeners = connstate::Listeners {
        grpc: Some(bind().await),
        rest: Some(bind().await),
        mqtt: connstate::mqtt::MqttListeners {
            tcp: Some(mqtt),
            tls: None,
            ws: None,
        },
    };
    let started = tokio::time::timeout(
        LIMIT,
        connstate::run(listeners, config, std::future::pending()),
    )
    .await
    .expect("a start with a bad certificate ends");
    assert!(started.is_err(), "the start fails");
    // Nothing is left accepting MQTT connections.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpStream::connect(mqtt_addr).await {
            Err(_) => break,
            Ok(_) => {
                assert!(Instant::now() < deadline, "the MQTT listener still accepts");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // The store it opened is closed again: the folder opens.
    let deadline = Instant::now() + LIMIT;
    loop {
        let options = connstate::store::StoreOptions::default();
        match connstate::store::Store::open(&data_dir, options) {
            Ok(store) => {
                store.close().await.unwrap();
                break;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the data folder is still held after the failed start: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
