//! Accepting connections on every listener (gRPC, REST, MQTT over TCP, TLS
//! and WebSocket) under load and under attack.
//!
//! Each listener has a cap on the connections it holds open at once: a
//! connection that arrives while the listener is at its cap is closed at
//! once and counted, so that one flooded listener cannot take the process's
//! file descriptors from the others. When `accept` itself fails for want of
//! resources (no descriptor left, no memory), the listener backs off instead
//! of spinning, and says so once rather than per attempt.
//!
//! This module knows sockets only; what is served over a connection is the
//! caller's business.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

/// The first and the longest wait after a failed accept.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A bound listener with its connection cap.
pub struct Acceptor {
    listener: TcpListener,
    /// `grpc`, `rest`, `mqtt`, `mqtt-tls` or `mqtt-ws`: in logs and metrics.
    name: &'static str,
    slots: Arc<Semaphore>,
    max_connections: usize,
    refused: Counter,
    failures: Counter,
    /// When the last "at the cap" warning was logged (at most one a
    /// minute).
    warned_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// A connection that holds one of its listener's slots until it is dropped.
pub struct Capped<S> {
    inner: S,
    _slot: OwnedSemaphorePermit,
}

impl Acceptor {
    /// `max_connections` (at least 1) is the cap; the counters come from
    /// [`crate::metrics::Metrics`] (`connections_refused` and
    /// `accept_failures` of this listener).
    pub fn new(
        listener: TcpListener,
        name: &'static str,
        max_connections: usize,
        metrics: &crate::metrics::Metrics,
    ) -> Acceptor {
        let label = crate::metrics::ListenerLabel { listener: name };
        let max_connections = max_connections.clamp(1, Semaphore::MAX_PERMITS);
        Acceptor {
            listener,
            name,
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            refused: metrics.connections_refused.get_or_create(&label).clone(),
            failures: metrics.accept_failures.get_or_create(&label).clone(),
            warned_at: std::sync::Mutex::new(None),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection within the cap, with Nagle's algorithm off
    /// (small responses must not wait for delayed ACKs).
    pub async fn accept(&self) -> (Capped<TcpStream>, SocketAddr) {
        loop {
            // Never an error: it backs off on every failure.
            if let Ok(accepted) = self.next(false).await {
                return accepted;
            }
        }
    }

    /// [`Acceptor::accept`], but ends with the error once the socket can
    /// accept no more (it is no longer listening: `EINVAL`), rather than
    /// backing off for ever: the caller can then say that it stopped.
    pub async fn try_accept(&self) -> io::Result<(Capped<TcpStream>, SocketAddr)> {
        self.next(true).await
    }

    async fn next(&self, end_when_dead: bool) -> io::Result<(Capped<TcpStream>, SocketAddr)> {
        let mut backoff = Duration::ZERO;
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    if !backoff.is_zero() {
                        tracing::info!(listener = self.name, "accepting connections again");
                        backoff = Duration::ZERO;
                    }
                    match self.slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            let _ = stream.set_nodelay(true);
                            let capped = Capped {
                                inner: stream,
                                _slot: slot,
                            };
                            return Ok((capped, peer));
                        }
                        Err(_) => {
                            // Dropping the stream closes it.
                            self.refused.inc();
                            self.warn_at_cap();
                            tracing::debug!(listener = self.name, %peer, "at the connection cap: closed");
                        }
                    }
                }
                // The peer gave up before we took the connection: nothing
                // is wrong with the listener.
                Err(e) if is_per_connection(&e) => {}
                Err(e) if end_when_dead && e.kind() == io::ErrorKind::InvalidInput => {
                    self.failures.inc();
                    return Err(e);
                }
                Err(e) => {
                    self.failures.inc();
                    if backoff.is_zero() {
                        tracing::warn!(
                            listener = self.name,
                            error = %e,
                            "accept failed; backing off until it succeeds again"
                        );
                    }
                    backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// The connections as a stream that never ends nor fails (for tonic).
    pub fn into_incoming(
        self,
    ) -> impl futures_util::Stream<Item = io::Result<Capped<TcpStream>>> + Send + 'static {
        futures_util::stream::unfold(self, |acceptor| async move {
            let (stream, _) = acceptor.accept().await;
            Some((Ok(stream), acceptor))
        })
    }
}

impl Acceptor {
    fn warn_at_cap(&self) {
        let now = std::time::Instant::now();
        let mut warned_at = self.warned_at.lock().unwrap_or_else(|e| e.into_inner());
        if warned_at.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(60)) {
            *warned_at = Some(now);
            tracing::warn!(
                listener = self.name,
                max_connections = self.max_connections,
                "listener at its connection cap: new connections are closed \
                 (counted in connstate_connections_refused_total)"
            );
        }
    }
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

impl<S> Capped<S> {
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// tonic reads the peer's address through this.
impl tonic::transport::server::Connected for Capped<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_over_the_cap_is_closed_and_counted() {
        use tokio::io::AsyncReadExt;
        let metrics = crate::metrics::Metrics::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = Acceptor::new(listener, "rest", 1, &metrics);
        let _first = TcpStream::connect(addr).await.unwrap();
        let (held, _) = acceptor.accept().await;
        let mut second = TcpStream::connect(addr).await.unwrap();
        let third = TcpStream::connect(addr);
        // The second is refused while the first is held; the third gets
        // the slot once the first is gone.
        let accepted = tokio::spawn(async move { acceptor.accept().await });
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
        drop(held);
        let _third = third.await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), accepted)
            .await
            .unwrap()
            .unwrap();
        assert!(
            metrics
                .render()
                .contains("connstate_connections_refused_total{listener=\"rest\"} 1")
        );
    }
}
