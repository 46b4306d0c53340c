//! The broker's listeners: MQTT over TCP, over TLS, and over WebSocket
//! (path `/mqtt`, subprotocol `mqtt`). Each has its own connection cap and
//! backs off when accepting fails ([`crate::accept`]).

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{
        ConnectInfo, State,
        ws::{Message as WsMessage, WebSocket, WebSocketUpgrade},
    },
    response::Response,
    routing::get,
};
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, rustls};

use super::{
    Broker,
    connection::{self, Transport},
};
use crate::{accept::Acceptor, http::HttpLimits};

/// Limits of every broker listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Connections open at once on each listener.
    pub max_connections: usize,
    /// Time limits of the WebSocket listener's HTTP handshake.
    pub websocket: HttpLimits,
}

/// Listeners bound by the caller; `None` leaves that transport off.
#[derive(Default)]
pub struct MqttListeners {
    pub tcp: Option<TcpListener>,
    /// Served only when a certificate is configured.
    pub tls: Option<TcpListener>,
    pub ws: Option<TcpListener>,
}

/// The rustls configuration of the MQTT TLS listener, from PEM files.
pub async fn tls_config(cert: &Path, key: &Path) -> std::io::Result<Arc<rustls::ServerConfig>> {
    let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await?;
    // The HTTP listener's ALPN list (h2, http/1.1) would refuse MQTT
    // clients that offer ALPN "mqtt".
    let mut server = (*config.get_inner()).clone();
    server.alpn_protocols.clear();
    Ok(Arc::new(server))
}

/// Starts one accept loop per listener; each ends when the broker stops.
/// One that ends before (its socket no longer listens, or it panicked) is
/// reported in [`Broker::problems`], and so in health and `/ready`.
pub fn spawn_listeners(
    broker: &Broker,
    listeners: MqttListeners,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ListenerLimits,
) -> Vec<JoinHandle<()>> {
    let metrics = broker.metrics();
    let capped = |listener, name| Acceptor::new(listener, name, limits.max_connections, metrics);
    let mut tasks = Vec::new();
    if let Some(listener) = listeners.tcp {
        let acceptor = capped(listener, "mqtt");
        let local = local_addr(&acceptor);
        let task = accept_tcp(broker.clone(), local, acceptor, None);
        tasks.push(supervise(broker, "mqtt", local, task));
    }
    if let (Some(listener), Some(tls)) = (listeners.tls, tls) {
        let acceptor = capped(listener, "mqtt-tls");
        let local = local_addr(&acceptor);
        let tls = Some(TlsAcceptor::from(tls));
        let task = accept_tcp(broker.clone(), local, acceptor, tls);
        tasks.push(supervise(broker, "mqtt-tls", local, task));
    }
    if let Some(listener) = listeners.ws {
        let acceptor = capped(listener, "mqtt-ws");
        let local = local_addr(&acceptor);
        let serve = serve_ws(broker.clone(), local, acceptor, limits.websocket);
        let task = async move {
            serve.await;
            Ok(())
        };
        tasks.push(supervise(broker, "mqtt-ws", local, task));
    }
    tasks
}

fn local_addr(acceptor: &Acceptor) -> SocketAddr {
    // A bound listener knows its address; the fallback only names it.
    acceptor
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// Runs the accept loop `task` of the listener `name` on `local`; when it
/// ends (or panics) while the broker is not stopping, the listener is
/// reported down.
fn supervise(
    broker: &Broker,
    name: &'static str,
    local: SocketAddr,
    task: impl std::future::Future<Output = Result<(), String>> + Send + 'static,
) -> JoinHandle<()> {
    let broker = broker.clone();
    let task = tokio::spawn(task);
    tokio::spawn(async move {
        let why = match task.await {
            Ok(Ok(())) => "its accept loop ended".to_owned(),
            Ok(Err(why)) => why,
            Err(e) if e.is_panic() => "its accept loop panicked".to_owned(),
            Err(_) => "its accept loop was cancelled".to_owned(),
        };
        if broker.inner.stop.is_cancelled() {
            return;
        }
        tracing::error!(
            listener = name,
            address = %local,
            reason = %why,
            "MQTT listener stopped accepting connections"
        );
        broker.listener_down(format!(
            "MQTT listener {name} on {local} is not accepting connections: {why}"
        ));
    })
}

/// Accepts until the broker stops (`Ok`) or the socket can accept no more
/// (`Err`, why).
async fn accept_tcp(
    broker: Broker,
    local: SocketAddr,
    acceptor: Acceptor,
    tls: Option<TlsAcceptor>,
) -> Result<(), String> {
    let stop = broker.inner.stop.clone();
    tracing::info!(mqtt = %local, tls = tls.is_some(), "MQTT listener");
    loop {
        let (stream, peer) = tokio::select! {
            accepted = acceptor.try_accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => return Err(format!("accept failed: {e}")),
            },
            () = stop.cancelled() => return Ok(()),
        };
        let transport = Transport {
            peer,
            local_port: local.port(),
            secure: tls.is_some(),
        };
        let broker2 = broker.clone();
        match &tls {
            None => {
                broker
                    .inner
                    .connections
                    .spawn(connection::serve(broker2, stream, transport));
            }
            Some(acceptor) => {
                let start = Box::new((acceptor.clone(), stream, broker2, transport));
                broker.inner.connections.spawn(serve_tls(start));
            }
        }
    }
}

/// What a TLS connection's task starts from: the acceptor, the accepted
/// stream, the broker and how the client came.
type TlsStart = (
    TlsAcceptor,
    crate::accept::Capped<tokio::net::TcpStream>,
    Broker,
    Transport,
);

/// One TLS connection: the handshake, then the connection. What the task
/// needs is boxed, and so is the handshake: a task keeps room for its
/// arguments and for its largest await for its whole life, and the
/// handshake's state is larger than the connected loop's (2,944-byte tasks
/// before, 1,152 now; `a_tls_connections_task_stays_small`).
async fn serve_tls(start: Box<TlsStart>) {
    let (acceptor, stream, broker, transport) = *start;
    let peer = transport.peer;
    let handshake = Box::pin(tokio::time::timeout(
        Duration::from_secs(10),
        acceptor.accept(stream),
    ));
    // Out of the match before the connection is served: a scrutinee lives
    // until the end of its match.
    let stream = match handshake.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
    };
    // Boxed: the TLS state (about 1,200 bytes) is not the task's.
    connection::serve(broker, Box::new(stream), transport).await;
}

#[derive(Clone)]
struct WsState {
    broker: Broker,
    local: SocketAddr,
}

async fn serve_ws(broker: Broker, local: SocketAddr, acceptor: Acceptor, limits: HttpLimits) {
    tracing::info!(mqtt_ws = %local, "MQTT over WebSocket listener (path /mqtt)");
    let stop = broker.inner.stop.clone();
    let router = Router::new()
        .route("/mqtt", get(upgrade))
        .with_state(WsState { broker, local });
    // Upgraded connections belong to the broker, which ends them at
    // shutdown; only handshakes are left when this returns.
    crate::http::serve(acceptor, router, None, limits, stop, Duration::from_secs(1)).await;
}

async fn upgrade(
    State(state): State<WsState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.protocols(["mqtt"]).on_upgrade(move |socket| {
        let transport = Transport {
            peer,
            local_port: state.local.port(),
            secure: false,
        };
        let tracker = state.broker.inner.connections.clone();
        tracker.track_future(bridge(state.broker, socket, transport))
    })
}

/// Runs a connection over a WebSocket: binary frames carry the MQTT byte
/// stream in both directions.
async fn bridge(broker: Broker, socket: WebSocket, transport: Transport) {
    let (mqtt_side, ws_side) = tokio::io::duplex(64 * 1024);
    let (mut to_client, mut from_client) = socket.split();
    let (mut pipe_read, mut pipe_write) = tokio::io::split(ws_side);
    let inbound = async move {
        while let Some(Ok(frame)) = from_client.next().await {
            let written = match frame {
                WsMessage::Binary(data) => pipe_write.write_all(&data).await,
                WsMessage::Close(_) => break,
                _ => Ok(()),
            };
            if written.is_err() {
                break;
            }
        }
        let _ = pipe_write.shutdown().await;
    };
    let outbound = async move {
        let mut buf = BytesMut::with_capacity(8192);
        loop {
            buf.clear();
            match pipe_read.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if to_client
                        .send(WsMessage::Binary(buf.split().freeze()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = to_client.close().await;
    };
    // The client may never answer our close frame: the inbound half is
    // dropped once the connection and the outbound half are done.
    let inbound = tokio::spawn(inbound);
    tokio::join!(connection::serve(broker, mqtt_side, transport), outbound);
    inbound.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(Box<TlsStart>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// A TLS client holds this task for its whole life, as a plain one
    /// holds `connection::serve`'s (see `a_connections_task_stays_small`):
    /// up to 1,016 bytes here (with tokio's 112 and the task tracker's 8)
    /// is a task of 1,152 bytes.
    #[test]
    fn a_tls_connections_task_stays_small() {
        let task = output_size(serve_tls);
        assert!(task <= 1016, "a TLS connection's future is {task} bytes");
    }
}
