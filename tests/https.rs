//! With a certificate configured, the REST gateway serves HTTPS (rustls),
//! and a client that trusts the certificate gets the same answers.

mod common;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn rest_over_https_with_a_self_signed_certificate() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();

    let server =
        TestServer::start_with(|c| c.tls = Some((cert_path.clone(), key_path.clone()))).await;
    server
        .ingest(vec![connected("d:local:sensor:secure", 1, 0)])
        .await;
    let port = server.rest.rsplit(':').next().unwrap().to_owned();
    let https = format!("https://localhost:{port}");

    let trusting = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
        )
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
