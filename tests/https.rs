//! With a certificate configured, the REST gateway serves HTTPS, gRPC and
//! the MQTT TLS listener use TLS (rustls), and a client that trusts the
//! certificate gets the same answers.

mod common;

use common::*;
use serde_json::Value;

/// A server whose REST, gRPC and MQTT listeners use a new self-signed
/// certificate for `localhost`; returns it with the certificate and the
/// folder holding the files.
async fn start_with_tls() -> (TestServer, rcgen::Certificate, tempfile::TempDir) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    let server = TestServer::start_with(|c| c.tls = Some((cert_path, key_path))).await;
    (server, certified.cert, dir)
}

/// A gRPC channel to `server` that trusts `cert_pem`.
async fn tls_channel(server: &TestServer, cert_pem: &str) -> tonic::transport::Channel {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(cert_pem))
        .domain_name("localhost");
    tonic::transport::Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS connect")
}

#[tokio::test]
async fn rest_over_https_with_a_self_signed_certificate() {
    let (server, cert, _dir) = start_with_tls().await;
    let cert_pem = cert.pem();
    // gRPC uses the same certificate.
    connstate::pb::ingest_service_client::IngestServiceClient::new(
        tls_channel(&server, &cert_pem).await,
    )
    .ingest_events(connstate::pb::IngestEventsRequest {
        lease_duration: None,
        broker: "test".into(),
        events: vec![connected("d:local:sensor:secure", 1, 0)],
    })
    .await
    .unwrap();
    let port = server.rest.rsplit(':').next().unwrap().to_owned();
    let https = format!("https://localhost:{port}");

    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve("localhost", format!("127.0.0.1:{port}").parse().unwrap())
        .build()
        .unwrap();
    let response = trusting
        .get(format!(
            "{https}/api/v0002/clientconnectionstates/d:local:sensor:secure"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["connectionStatus"], "connected");

    // A client that does not trust the certificate is refused by TLS, and
    // plain HTTP on the HTTPS port gets no answer.
    let untrusting = reqwest::Client::builder()
        .resolve("localhost", format!("127.0.0.1:{port}").parse().unwrap())
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!("{https}/ready"))
            .send()
            .await
            .is_err()
    );
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/ready"))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status().as_u16() >= 400);
    server.stop().await;
}

#[tokio::test]
async fn grpc_over_tls_with_the_same_certificate() {
    use connstate::pb::{self, connection_state_service_client::ConnectionStateServiceClient};
    use tonic::transport::Endpoint;

    let (server, cert, _dir) = start_with_tls().await;
    let cert_pem = cert.pem();

    let mut client = ConnectionStateServiceClient::new(tls_channel(&server, &cert_pem).await);
    let err = client
        .get_connection_state(pb::GetConnectionStateRequest {
            client_id: "d:local:t:none".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::NotFound,
        "answered over TLS: {err:?}"
    );

    // Plain gRPC to the TLS port gets no answer.
    let plain = Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let result = ConnectionStateServiceClient::new(channel)
            .get_connection_state(pb::GetConnectionStateRequest {
                client_id: "x".into(),
            })
            .await;
        assert!(result.is_err());
    }
    server.stop().await;
}

#[tokio::test]
async fn mqtt_over_tls_is_recorded_as_secure() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;

    let (server, cert, _dir) = start_with_tls().await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(server.mqtt_tls.expect("TLS listener"))
        .await
        .unwrap();
    let local_port = tcp.local_addr().unwrap().port();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect("TLS handshake");
    // CONNECT, MQTT 3.1.1, clean session, keepalive 30, client id "tls-1".
    let mut connect = vec![0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 5];
    connect.extend_from_slice(b"tls-1");
    tls.write_all(&connect).await.unwrap();
    let mut ack = [0u8; 4];
    tls.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack, [0x20, 2, 0, 0], "CONNACK: accepted");

    let client = connstate::pb::connection_state_service_client::ConnectionStateServiceClient::new(
        tls_channel(&server, &cert.pem()).await,
    );
    let state = eventually(std::time::Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            let s = client
                .get_connection_state(connstate::pb::GetConnectionStateRequest {
                    client_id: "tls-1".into(),
                })
                .await
                .ok()?
                .into_inner();
            (s.connection_status == connstate::pb::ConnectionStatus::Connected as i32).then_some(s)
        }
    })
    .await;
    assert!(state.secure, "recorded as a TLS connection");
    assert_eq!(state.port, u32::from(local_port));
    assert_eq!(state.keep_alive_seconds, 30);
    let logs = client
        .clone()
        .list_connection_logs(connstate::pb::ListConnectionLogsRequest {
            client_id: "tls-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(logs[0].message.contains("TLS"), "{}", logs[0].message);
    server.stop().await;
}
