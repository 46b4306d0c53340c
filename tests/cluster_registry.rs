//! The registry is the cluster's: three real connstate processes on a real
//! three-server NATS JetStream cluster. A device or API key registered
//! through one node connects to the others; deleted through a third node,
//! its connection on another node ends within a second and every node
//! refuses it.

mod common;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use common::{ADMIN, FREE_PORTS, basic, eventually, nats::NatsCluster, serve_command};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Bound of each whole test.
const LIMIT: Duration = Duration::from_secs(60);

/// Bound of one start, one request, one read.
const STEP: Duration = Duration::from_secs(20);

/// How soon a deletion takes effect on every node.
const REVOCATION: Duration = Duration::from_secs(1);

/// A connstate node (the real binary); killed when dropped.
struct Node {
    child: Child,
    rest: String,
    mqtt: SocketAddr,
    http: reqwest::Client,
    _data: tempfile::TempDir,
}

impl Node {
    /// Starts node `name` of the cluster on free ports, with API keys
    /// required and [`ADMIN`] as administrator, and waits until it is
    /// ready.
    async fn start(nats: &NatsCluster, name: &str) -> Node {
        let data = tempfile::tempdir().unwrap();
        let urls = nats.urls();
        let mut args = FREE_PORTS.to_vec();
        args.extend([
            "--auth",
            "true",
            "--admin-key",
            ADMIN.0,
            "--admin-token",
            ADMIN.1,
            "--cluster-nats",
            &urls,
            "--node-id",
            name,
        ]);
        let mut child = serve_command(data.path(), &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start connstate");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let (mut rest, mut mqtt) = (None, None);
        while rest.is_none() || mqtt.is_none() {
            let line = tokio::task::block_in_place(|| lines.recv_timeout(STEP))
                .unwrap_or_else(|_| panic!("{name} announces its listeners"));
            if let Some(addr) = line.strip_prefix("connstate rest listening on ") {
                rest = Some(format!("http://{addr}"));
            } else if let Some(addr) = line.strip_prefix("connstate mqtt listening on ") {
                mqtt = Some(addr.parse().unwrap());
            }
        }
        let node = Node {
            child,
            rest: rest.unwrap(),
            mqtt: mqtt.unwrap(),
            http: reqwest::Client::new(),
            _data: data,
        };
        let ready = format!("{}/ready", node.rest);
        eventually(STEP, || async {
            let response = node.http.get(&ready).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
        node
    }

    /// A request to `path` with `credentials`: its status and JSON body.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        credentials: (&str, &str),
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.rest))
            .header("authorization", basic(credentials))
            .timeout(STEP);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("REST request");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CONNECT of MQTT 3.1.1 with a clean session, no keepalive, a user name
/// and a password.
fn connect_packet(client_id: &str, username: &str, password: &str) -> Vec<u8> {
    common::mqtt_wire::connect(client_id, false, Some((username, password)))
}

/// Connects `client_id` to `addr`: the CONNACK's return code, and the
/// connection when it was accepted.
async fn connect(
    addr: SocketAddr,
    client_id: &str,
    username: &str,
    password: &str,
) -> (u8, Option<TcpStream>) {
    let mut stream = TcpStream::connect(addr).await.expect("TCP connect");
    stream
        .write_all(&connect_packet(client_id, username, password))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(STEP, stream.read_exact(&mut connack))
        .await
        .expect("a CONNACK in time")
        .expect("a CONNACK");
    assert_eq!(connack[..3], [0x20, 2, 0], "{client_id}: CONNACK");
    let code = connack[3];
    (code, (code == 0).then_some(stream))
}

/// Connects until the node accepts (its copy of the registry may trail
/// the node that registered the credentials by a moment).
async fn connect_accepted(
    addr: SocketAddr,
    client_id: &str,
    username: &str,
    password: &str,
) -> TcpStream {
    eventually(STEP, || async {
        connect(addr, client_id, username, password).await.1
    })
    .await
}

/// Waits (at most [`REVOCATION`] after `since`, when the deletion was
/// asked) until the server closes
/// `stream`; returns how long after `since` it did.
async fn closed_within(mut stream: TcpStream, since: Instant, what: &str) -> Duration {
    let mut buffer = [0u8; 64];
    let deadline = tokio::time::Instant::from_std(since + REVOCATION);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => panic!("{what}: still connected {REVOCATION:?} after the deletion"),
            Ok(Ok(0)) | Ok(Err(_)) => return since.elapsed(),
            // A DISCONNECT (not sent to 3.1.1 clients) would precede the
            // close; anything else is read past.
            Ok(Ok(_)) => {}
        }
    }
}

/// Connects until `addr` refuses (bad user name or password, or not
/// authorised), within [`REVOCATION`] of `since`.
async fn refused_within(
    addr: SocketAddr,
    client_id: &str,
    username: &str,
    password: &str,
    since: Instant,
) {
    loop {
        let (code, _) = connect(addr, client_id, username, password).await;
        if code == 4 || code == 5 {
            return;
        }
        assert!(
            since.elapsed() < REVOCATION,
            "{client_id}: still accepted (CONNACK {code}) {REVOCATION:?} after the deletion"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn three_nodes() -> (NatsCluster, [Node; 3]) {
    let nats = NatsCluster::start(3).await;
    let (a, b, c) = tokio::join!(
        Node::start(&nats, "node1"),
        Node::start(&nats, "node2"),
        Node::start(&nats, "node3"),
    );
    (nats, [a, b, c])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_registered_on_one_node_connects_to_all_and_its_deletion_holds_on_all() {
    tokio::time::timeout(LIMIT, async {
        let (_nats, [node1, node2, node3]) = three_nodes().await;
        let post = reqwest::Method::POST;
        let (status, _) = node1
            .call(
                post.clone(),
                "/api/v0002/device/types",
                ADMIN,
                Some(json!({"id": "sensor.v2", "classId": "Device"})),
            )
            .await;
        assert_eq!(status, 201, "device type created on node1");
        let (status, _) = node2
            .call(
                post.clone(),
                "/api/v0002/device/types",
                ADMIN,
                Some(json!({"id": "sensor.v2"})),
            )
            .await;
        assert_eq!(status, 409, "node2 knows the type exists");
        // The same device registered on two nodes at once: one wins.
        let twin = |node| {
            Node::call(
                node,
                reqwest::Method::POST,
                "/api/v0002/device/types/sensor.v2/devices",
                ADMIN,
                Some(json!({"deviceId": "twin"})),
            )
        };
        let ((first, _), (second, _)) = tokio::join!(twin(&node1), twin(&node2));
        let mut statuses = [first, second];
        statuses.sort();
        assert_eq!(statuses, [201, 409], "one registration of the same device");
        let token = "device-token-0123456789";
        let (status, device) = node1
            .call(
                post.clone(),
                "/api/v0002/device/types/sensor.v2/devices",
                ADMIN,
                Some(json!({"deviceId": "d1", "authToken": token})),
            )
            .await;
        assert_eq!(status, 201, "device registered on node1: {device}");
        let (status, _) = node3
            .call(
                reqwest::Method::GET,
                "/api/v0002/device/types/sensor.v2/devices/d1",
                ADMIN,
                None,
            )
            .await;
        assert_eq!(status, 200, "node3 lists the device");

        let client = "d:local:sensor.v2:d1";
        let user = "use-token-auth";
        let (code, _) = connect(node2.mqtt, client, user, "not-the-token").await;
        assert_eq!(code, 4, "a wrong token is refused");
        // On node3, then (after a clean DISCONNECT) held on node2.
        let mut on_node3 = connect_accepted(node3.mqtt, client, user, token).await;
        on_node3.write_all(&[0xE0, 0]).await.unwrap();
        drop(on_node3);
        let on_node2 = connect_accepted(node2.mqtt, client, user, token).await;

        // Timed from the request: the deletion counts from when it is asked.
        let deleted = Instant::now();
        let (status, _) = node3
            .call(
                reqwest::Method::DELETE,
                "/api/v0002/device/types/sensor.v2/devices/d1",
                ADMIN,
                None,
            )
            .await;
        assert_eq!(status, 204, "device deleted on node3");
        let took = closed_within(on_node2, deleted, "the device on node2").await;
        println!("the device's connection on node2 ended {took:?} after its deletion");
        refused_within(node1.mqtt, client, user, token, deleted).await;
        let (status, _) = node1
            .call(
                reqwest::Method::GET,
                "/api/v0002/device/types/sensor.v2/devices/d1",
                ADMIN,
                None,
            )
            .await;
        assert_eq!(status, 404, "node1 no longer lists the device");
        let (status, _) = node2
            .call(
                post,
                "/api/v0002/device/types/sensor.v2/devices",
                ADMIN,
                Some(json!({"deviceId": "d1", "authToken": "another-token-123"})),
            )
            .await;
        assert_eq!(status, 201, "its id is free again");
    })
    .await
    .expect("the test ends in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_created_on_one_node_works_on_another_until_deleted_anywhere() {
    tokio::time::timeout(LIMIT, async {
        let (nats, [node1, node2, node3]) = three_nodes().await;
        let (status, created) = node2
            .call(
                reqwest::Method::POST,
                "/api/v0002/apikeys",
                ADMIN,
                Some(json!({"role": "operator"})),
            )
            .await;
        assert_eq!(status, 201, "key created on node2: {created}");
        let key = created["key"].as_str().unwrap().to_owned();
        let token = created["token"].as_str().unwrap().to_owned();
        let credentials = (key.as_str(), token.as_str());

        let admin_created = |keys: &Value| {
            keys["results"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["key"] == ADMIN.0)
                .map(|k| k["created"].clone())
        };
        let (_, keys) = node1
            .call(reqwest::Method::GET, "/api/v0002/apikeys", ADMIN, None)
            .await;
        let created_before = admin_created(&keys).expect("the admin key is listed");

        let whoami = eventually(STEP, || async {
            let (status, body) = node1
                .call(reqwest::Method::GET, "/api/v0002/whoami", credentials, None)
                .await;
            (status == 200).then_some(body)
        })
        .await;
        assert_eq!(whoami["role"], "operator", "{whoami}");
        let app = "a:local:app1";
        let on_node1 = connect_accepted(node1.mqtt, app, &key, &token).await;

        // Timed from the request: the deletion counts from when it is asked.
        let deleted = Instant::now();
        let (status, _) = node3
            .call(
                reqwest::Method::DELETE,
                &format!("/api/v0002/apikeys/{key}"),
                ADMIN,
                None,
            )
            .await;
        assert_eq!(status, 204, "key deleted on node3");
        let took = closed_within(on_node1, deleted, "the application on node1").await;
        println!("the application's connection on node1 ended {took:?} after the deletion");
        refused_within(node2.mqtt, app, &key, &token, deleted).await;
        let (status, _) = node1
            .call(reqwest::Method::GET, "/api/v0002/whoami", credentials, None)
            .await;
        assert_eq!(status, 401, "node1 refuses the deleted key");
        let (status, _) = node3
            .call(
                reqwest::Method::DELETE,
                &format!("/api/v0002/apikeys/{key}"),
                ADMIN,
                None,
            )
            .await;
        assert_eq!(status, 404, "deleted once");

        // A node joining later holds the registry as it is; its --admin-key,
        // the same as the others', leaves the stored key as it was.
        let node4 = Node::start(&nats, "node4").await;
        let (status, keys) = node4
            .call(reqwest::Method::GET, "/api/v0002/apikeys", ADMIN, None)
            .await;
        assert_eq!(status, 200);
        assert_eq!(admin_created(&keys), Some(created_before), "{keys}");
        assert!(
            !keys.to_string().contains(&key),
            "the deleted key is not listed: {keys}"
        );
        let (code, _) = connect(node4.mqtt, app, &key, &token).await;
        assert_eq!(code, 4, "node4 refuses the deleted key");
    })
    .await
    .expect("the test ends in time");
}
