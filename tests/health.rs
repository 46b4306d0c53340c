//! gRPC health tells the truth, and reflection describes every service.

mod common;

use common::*;
use tokio_stream::StreamExt;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

#[tokio::test]
async fn health_is_serving_per_service_then_not_serving_on_shutdown() {
    // The open health watch holds shutdown for the grace period.
    let server =
        TestServer::start_with(|c| c.shutdown_grace = std::time::Duration::from_millis(500)).await;
    let mut health = HealthClient::new(server.channel());
    for service in [
        "",
        "connstate.v1.ConnectionStateService",
        "connstate.v1.IngestService",
        "connstate.v1.AdminService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let mut watch = health
        .watch(HealthCheckRequest {
            service: "connstate.v1.IngestService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    server.stop().await;
    // The watcher hears NOT_SERVING before the connection goes.
    let mut saw_not_serving = false;
    while let Some(Ok(update)) = watch.next().await {
        if update.status == ServingStatus::NotServing as i32 {
            saw_not_serving = true;
            break;
        }
    }
    assert!(saw_not_serving);
}

#[tokio::test]
async fn reflection_lists_and_describes_the_services() {
    let server = TestServer::start().await;
    let mut reflection = ServerReflectionClient::new(server.channel());
    let requests = tokio_stream::iter(vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "connstate.v1.ConnectionStateService".into(),
            )),
        },
    ]);
    let mut responses = reflection
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "connstate.v1.ConnectionStateService",
        "connstate.v1.IngestService",
        "connstate.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    server.stop().await;
}

/// The broker is in health as `connstate.mqtt`: SERVING while its MQTT
/// listener accepts; once the listener stops accepting, it and the whole
/// server ("") turn NOT_SERVING and `/ready` answers 503 naming the
/// listener, while the query API, which still works, stays SERVING.
#[tokio::test]
async fn health_and_ready_report_an_mqtt_listener_that_stopped_accepting() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let config = connstate::Config {
        data_dir: dir.path().to_owned(),
        // The open health watch holds shutdown for the grace period.
        shutdown_grace: Duration::from_millis(500),
        ..connstate::Config::default()
    };
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ready_url = format!("http://{}/ready", rest.local_addr().unwrap());
    let mqtt = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mqtt_addr = mqtt.local_addr().unwrap();
    mqtt.set_nonblocking(true).unwrap();
    // A second descriptor of the listening socket, to break it with later.
    let breaker = std::os::fd::AsFd::as_fd(&mqtt)
        .try_clone_to_owned()
        .unwrap();
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", grpc.local_addr().unwrap()))
            .unwrap()
            .connect_lazy();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(connstate::run(
        connstate::Listeners {
            grpc: Some(grpc),
            rest: Some(rest),
            mqtt: connstate::mqtt::MqttListeners {
                tcp: Some(tokio::net::TcpListener::from_std(mqtt).unwrap()),
                tls: None,
                ws: None,
            },
        },
        config,
        async {
            let _ = stopped.await;
        },
    ));

    let mut health = HealthClient::new(channel);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "connstate.mqtt".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let status_is = async |watch: &mut tonic::Streaming<_>, wanted: ServingStatus| {
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(update)) = watch.next().await {
                let update: tonic_health::pb::HealthCheckResponse = update;
                if update.status == wanted as i32 {
                    return;
                }
            }
            panic!("health watch ended");
        })
        .await
        .unwrap_or_else(|_| panic!("connstate.mqtt not {wanted:?} within 10 s"))
    };
    status_is(&mut watch, ServingStatus::Serving).await;
    assert_eq!(reqwest::get(&ready_url).await.unwrap().status(), 200);
    // The listener accepts: an MQTT client gets a CONNACK.
    let mut client = tokio::net::TcpStream::connect(mqtt_addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    client
        .write_all(&[
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'h',
        ])
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    client.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);

    // Shutting the listening socket down for reading makes it stop
    // listening (Linux): accept fails for good from then on.
    std::net::TcpStream::from(breaker)
        .shutdown(std::net::Shutdown::Read)
        .unwrap();
    status_is(&mut watch, ServingStatus::NotServing).await;
    let check = |service: &'static str| {
        let mut health = health.clone();
        async move {
            health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status
        }
    };
    assert_eq!(check("").await, ServingStatus::NotServing as i32);
    assert_eq!(
        check("connstate.v1.ConnectionStateService").await,
        ServingStatus::Serving as i32
    );
    let ready = reqwest::get(&ready_url).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "not ready");
    let reason = body["reasons"][0].as_str().unwrap();
    assert!(
        reason.contains("MQTT listener mqtt on") && reason.contains(&mqtt_addr.to_string()),
        "{body}"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
}

/// During shutdown the broker reports NOT_SERVING and `/ready` says why.
#[tokio::test]
async fn the_broker_reports_not_serving_when_shutting_down() {
    let server =
        TestServer::start_with(|c| c.shutdown_grace = std::time::Duration::from_millis(500)).await;
    let mut health = HealthClient::new(server.channel());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "connstate.mqtt".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    server.stop().await;
    let mut saw_not_serving = false;
    while let Some(Ok(update)) = watch.next().await {
        if update.status == ServingStatus::NotServing as i32 {
            saw_not_serving = true;
            break;
        }
    }
    assert!(saw_not_serving);
}
