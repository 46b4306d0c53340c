//! The MQTT 3.1.1 client a source uses to follow a broker: connect,
//! subscribe at QoS 0, receive, ping. Nothing else (no publishing, no
//! sessions), so it is a few dozen lines over the codec the embedded broker
//! already uses (rmqtt-codec), rather than a general client crate.

use std::{
    num::NonZeroU16,
    time::{Duration, Instant},
};

use bytes::Bytes;
use bytestring::ByteString;
use futures_util::{SinkExt, StreamExt};
use rmqtt_codec::{
    types::{Protocol, QoS},
    v3::{Codec, Connect, ConnectAckReason, Packet},
};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Largest packet taken from the broker (a log line is far smaller).
const MAX_PACKET_SIZE: u32 = 256 * 1024;

/// Why the connection to a broker failed or ended.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("the broker refused the connection: {0}")]
    Refused(&'static str),
    #[error("the broker refused the subscription to {0} (not authorised to read it?)")]
    SubscriptionRefused(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the broker closed the connection")]
    Closed,
    #[error("no packet from the broker within {0:?}")]
    Silent(Duration),
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: Duration,
}

/// One connection to a broker.
pub struct Upstream {
    framed: Framed<TcpStream, Codec>,
    filters: Vec<String>,
    /// When the last packet came from the broker.
    pub last_received: Instant,
}

impl Upstream {
    /// Connects, waits for CONNACK and subscribes to `filters` (QoS 0).
    /// The SUBACK comes back through [`Upstream::next`].
    pub async fn connect(
        endpoint: &Endpoint,
        filters: &[&str],
        timeout: Duration,
    ) -> Result<Upstream, UpstreamError> {
        tokio::time::timeout(timeout, Self::connect_now(endpoint, filters))
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }

    async fn connect_now(endpoint: &Endpoint, filters: &[&str]) -> Result<Upstream, UpstreamError> {
        let stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
        stream.set_nodelay(true)?;
        let mut framed = Framed::new(stream, Codec::new(MAX_PACKET_SIZE));
        let connect = Connect {
            protocol: Protocol(4),
            clean_session: true,
            keep_alive: endpoint.keep_alive.as_secs().clamp(1, u16::MAX as u64) as u16,
            last_will: None,
            client_id: ByteString::from(endpoint.client_id.as_str()),
            username: endpoint.username.as_deref().map(ByteString::from),
            password: endpoint
                .password
                .as_ref()
                .map(|p| Bytes::copy_from_slice(p.as_bytes())),
            cert: None,
        };
        framed
            .send(Packet::Connect(Box::new(connect)))
            .await
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        match framed.next().await {
            Some(Ok((Packet::ConnectAck(ack), _))) => {
                if ack.return_code != ConnectAckReason::ConnectionAccepted {
                    return Err(UpstreamError::Refused(ack.return_code.reason()));
                }
            }
            Some(Ok((other, _))) => {
                return Err(UpstreamError::Protocol(format!(
                    "expected CONNACK, got {other:?}"
                )));
            }
            Some(Err(e)) => return Err(UpstreamError::Protocol(format!("{e:?}"))),
            None => return Err(UpstreamError::Closed),
        }
        let subscribe = Packet::Subscribe {
            packet_id: NonZeroU16::MIN,
            topic_filters: filters
                .iter()
                .map(|f| (ByteString::from(*f), QoS::AtMostOnce))
                .collect(),
        };
        framed
            .send(subscribe)
            .await
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        Ok(Upstream {
            framed,
            filters: filters.iter().map(|f| (*f).to_owned()).collect(),
            last_received: Instant::now(),
        })
    }

    /// The next message: `(topic, payload)`. Answers what needs an answer
    /// and checks the SUBACK on the way.
    pub async fn next(&mut self) -> Result<(ByteString, Bytes), UpstreamError> {
        loop {
            let packet = match self.framed.next().await {
                Some(Ok((packet, _))) => packet,
                Some(Err(e)) => return Err(UpstreamError::Protocol(format!("{e:?}"))),
                None => return Err(UpstreamError::Closed),
            };
            self.last_received = Instant::now();
            match packet {
                Packet::Publish(publish) => {
                    if let (QoS::AtLeastOnce, Some(packet_id)) = (publish.qos, publish.packet_id) {
                        self.send(Packet::PublishAck { packet_id }).await?;
                    }
                    return Ok((publish.topic, publish.payload));
                }
                Packet::SubscribeAck { status, .. } => {
                    for (i, code) in status.iter().enumerate() {
                        if matches!(code, rmqtt_codec::v3::SubscribeReturnCode::Failure) {
                            let filter = self.filters.get(i).cloned().unwrap_or_default();
                            return Err(UpstreamError::SubscriptionRefused(filter));
                        }
                    }
                }
                Packet::PingResponse => {}
                other => {
                    return Err(UpstreamError::Protocol(format!(
                        "unexpected packet from the broker: {other:?}"
                    )));
                }
            }
        }
    }

    pub async fn ping(&mut self) -> Result<(), UpstreamError> {
        self.send(Packet::PingRequest).await
    }

    /// Says goodbye (DISCONNECT) and closes.
    pub async fn disconnect(mut self) {
        let _ = self.send(Packet::Disconnect).await;
    }

    async fn send(&mut self, packet: Packet) -> Result<(), UpstreamError> {
        self.framed
            .send(packet)
            .await
            .map_err(|e| UpstreamError::Protocol(e.to_string()))
    }
}
