//! The MQTT 3.1.1 client a source uses to follow a broker: connect,
//! subscribe at QoS 0, receive, ping. Nothing else (no publishing, no
//! sessions), so it is a few dozen lines over the codec the embedded broker
//! already uses (rmqtt-codec), rather than a general client crate. Over
//! plain TCP or TLS (rustls), with a client certificate when given.

use std::{
    num::NonZeroU16,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use bytestring::ByteString;
use futures_util::{SinkExt, StreamExt};
use rmqtt_codec::{
    types::{Protocol, QoS},
    v3::{Codec, Connect, ConnectAckReason, Packet},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{
        self, ClientConfig, RootCertStore,
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    },
};
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
    #[error("TLS: {0}")]
    Tls(String),
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

/// The files of a TLS connection: the certificate authorities the broker's
/// certificate must chain to, and the client's certificate and key (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Reads `files` into a TLS client configuration; the error names the file
/// and what is wrong with it.
pub fn tls_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, String> {
    let read_certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>, String> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no PEM certificate in it", path.display()));
        }
        Ok(certs)
    };
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&files.ca_file)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", files.ca_file.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match &files.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs(cert)?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{}: {e}", cert.display()))?
        }
    };
    Ok(Arc::new(config))
}

/// Where and as whom to connect.
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: Duration,
    /// TLS over the TCP connection, when set.
    pub tls: Option<Arc<ClientConfig>>,
}

/// The byte stream under the codec: TCP or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One connection to a broker.
pub struct Upstream {
    framed: Framed<Box<dyn Io>, Codec>,
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
        let stream: Box<dyn Io> = match &endpoint.tls {
            None => Box::new(stream),
            Some(config) => {
                let name = ServerName::try_from(endpoint.host.clone()).map_err(|e| {
                    UpstreamError::Tls(format!("{:?} is not a server name: {e}", endpoint.host))
                })?;
                let tls = TlsConnector::from(config.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|e| UpstreamError::Tls(e.to_string()))?;
                Box::new(tls)
            }
        };
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
