//! One client's network link: the socket, the read and write buffers, the
//! codec and the traffic counts, and what the broker says of the link (its
//! connection info, its monitor origin, its log lines).
//!
//! The handshake (`handshake`) and the connected loop (`connection`) both
//! work through a [`Conn`]; neither owns the socket otherwise.

use std::{net::SocketAddr, time::Duration};

use bytes::BytesMut;
use chrono::Utc;
use rmqtt_codec::{error::EncodeError, v3};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{
    Broker,
    monitor::{Origin, Traffic},
    packet::{Codec, Hello},
};
use crate::domain::{
    ClientId, ConnectionInfo, EventKind, MqttProtocol, Timestamp, truncate_to_millis,
};

/// How the client reached the broker.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    pub peer: SocketAddr,
    /// The broker's port the client connected to (the whole local address
    /// would be 30 more bytes in every connection's task).
    pub local_port: u16,
    pub secure: bool,
}

pub(super) fn now() -> Timestamp {
    truncate_to_millis(Utc::now())
}

pub(super) struct Conn<S> {
    pub(super) broker: Broker,
    /// Not split into halves: the connection never reads and writes at
    /// once (it writes between its waits), and halves would be an 80-byte
    /// allocation of every connection.
    pub(super) stream: S,
    pub(super) transport: Transport,
    pub(super) rbuf: BytesMut,
    pub(super) wbuf: BytesMut,
    /// Quiet for a while: no buffers kept between packets.
    pub(super) idle: bool,
    pub(super) codec: Codec,
    pub(super) protocol: MqttProtocol,
    /// What the client sent and was sent, for its `$SYS` Disconnect
    /// message; the broker's metrics count the same as it happens.
    pub(super) traffic: Traffic,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub(super) fn new(broker: Broker, stream: S, transport: Transport) -> Self {
        let max = broker.options().max_packet_size;
        Conn {
            broker,
            stream,
            transport,
            // Small to start: most clients send small packets, and 10,000s of
            // idle connections should cost little. Both grow on demand.
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            idle: false,
            codec: Codec::V3(v3::Codec::new(max)),
            protocol: MqttProtocol::V3_1_1,
            traffic: Traffic::default(),
        }
    }

    /// Logs a packet that could not be encoded (and so is not sent): the
    /// client then waits for an answer that never comes, and the log is
    /// where an operator can find why.
    pub(super) fn sent(&self, packet: &str, result: Result<(), EncodeError>) {
        if let Err(error) = result {
            tracing::warn!(
                peer = %self.transport.peer,
                packet,
                error = %error,
                "MQTT packet not sent: it cannot be encoded for this client"
            );
        }
    }

    pub(super) fn connection_info(&self, hello: &Hello) -> ConnectionInfo {
        ConnectionInfo {
            addr: self.transport.peer.ip(),
            port: self.transport.peer.port(),
            secure: self.transport.secure,
            username: hello
                .username
                .as_ref()
                .map(|u| u.to_string())
                .unwrap_or_default(),
            protocol: Some(hello.protocol),
            keep_alive: hello.keep_alive,
            clean_session: hello.clean_start,
        }
    }

    pub(super) fn origin<'a>(&self, client_id: &'a str, username: &'a str) -> Origin<'a> {
        Origin {
            client_id,
            peer: self.transport.peer,
            server_port: self.transport.local_port,
            secure: self.transport.secure,
            protocol: self.protocol,
            username,
        }
    }

    /// `n` bytes read from the client.
    pub(super) fn count_read(&mut self, n: usize) {
        self.traffic.read_bytes += n as u64;
        self.broker.metrics().mqtt_received_bytes.inc_by(n as u64);
    }

    /// A PUBLISH received from the client.
    pub(super) fn count_publish_received(&mut self) {
        self.traffic.read_msgs += 1;
        self.broker.metrics().mqtt_received_messages.inc();
    }

    /// A PUBLISH written for the client.
    pub(super) fn count_publish_sent(&mut self) {
        self.traffic.write_msgs += 1;
        self.broker.metrics().mqtt_sent_messages.inc();
    }

    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.traffic.write_bytes += self.wbuf.len() as u64;
        self.broker
            .metrics()
            .mqtt_sent_bytes
            .inc_by(self.wbuf.len() as u64);
        let result = self.stream.write_all(&self.wbuf).await;
        self.wbuf.clear();
        if self.idle || self.wbuf.capacity() > 64 * 1024 {
            self.wbuf = BytesMut::new();
        }
        result
    }
}

/// Makes sure a read has room to put bytes (a read into a full buffer
/// would return 0, which means end of stream). Idle connections with an
/// empty buffer give their memory back.
pub(super) fn make_room(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 4096 {
        *buf = BytesMut::new();
    }
    if buf.capacity() - buf.len() < 128 {
        // 512 bytes hold a typical CONNECT or small PUBLISH; busier
        // clients grow it (the codec reserves whole packets).
        buf.reserve(if buf.is_empty() { 512 } else { 4096 });
    }
}

/// Bytes an idle connection reads at once, without a buffer of its own.
pub(super) const PEEK: usize = 16;

/// How long a connection is quiet before it gives its buffers back.
pub(super) const IDLE_RELEASE: Duration = Duration::from_secs(1);

/// Reads what the client sent into `rbuf`: straight into it, or while
/// `idle` through a few bytes on the stack, so that `rbuf` takes only what
/// came.
pub(super) async fn read_some<R: AsyncRead + Unpin>(
    reader: &mut R,
    rbuf: &mut BytesMut,
    idle: bool,
) -> std::io::Result<usize> {
    if idle {
        let mut peek = [0u8; PEEK];
        let n = reader.read(&mut peek).await?;
        rbuf.extend_from_slice(&peek[..n]);
        Ok(n)
    } else {
        reader.read_buf(rbuf).await
    }
}

/// A timer deadline: `at`, or so far off that it never fires.
pub(super) fn far_off(at: Option<tokio::time::Instant>) -> tokio::time::Instant {
    at.unwrap_or_else(|| tokio::time::Instant::now() + FAR_OFF)
}

pub(super) const FAR_OFF: Duration = Duration::from_secs(86400 * 365);

/// One info line per connect, refused connect and disconnect, as Mosquitto
/// logs them, with the same field names as every other log line
/// (`client_id`, `peer`). `keep_alive` is the connection's, in seconds.
pub(super) fn log_lifecycle(
    client_id: &ClientId,
    peer: SocketAddr,
    kind: &EventKind,
    keep_alive: u16,
) {
    match kind {
        EventKind::Connected(info) => tracing::info!(
            client_id = %client_id,
            peer = %peer,
            protocol = %info.protocol.map_or("?", |p| p.as_str()),
            keep_alive = info.keep_alive,
            clean_start = info.clean_session,
            username = %info.username,
            tls = info.secure,
            "MQTT client connected"
        ),
        EventKind::ConnectFailed { failure, .. } => {
            let code = failure.reason_code();
            tracing::info!(
                client_id = %client_id,
                peer = %peer,
                reason_code = %code,
                reason = %code.description(),
                "MQTT connect refused"
            )
        }
        EventKind::Disconnected(cause) => tracing::info!(
            client_id = %client_id,
            peer = %peer,
            initiator = %cause.initiator().as_str(),
            reason_code = %cause.reason_code().map_or_else(|| "none".to_owned(), |c| c.to_string()),
            close_code = cause.close_code().0,
            reason = %cause.reason_text(keep_alive),
            "MQTT client disconnected"
        ),
        EventKind::Activity(_) => {}
    }
}
