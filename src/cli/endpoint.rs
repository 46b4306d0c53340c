//! Where the server is and how to reach it: the addresses, credentials and
//! certificate authority from flags, environment or the server's own
//! configuration file, and the gRPC channel and REST client built on them.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig},
};

use super::{Exit, Failure, Options, Result, rest::RestClient};
use crate::{
    config::{Config, ConfigLayer},
    pb::connection_state_service_client::ConnectionStateServiceClient,
};

/// The resolved endpoints of one command.
pub struct Endpoints {
    grpc: String,
    rest: String,
    /// `Basic base64(key:token)`, when credentials were given.
    authorization: Option<String>,
    ca_file: Option<PathBuf>,
    timeout: Duration,
}

impl Endpoints {
    /// Flags and environment (already merged by clap) first, then the
    /// configuration file, then the server's defaults.
    pub fn resolve(options: &Options) -> Result<Endpoints> {
        let file = match &options.config {
            Some(path) => {
                Some(ConfigLayer::from_file(path).map_err(|e| Failure::usage(e.to_string()))?)
            }
            None => None,
        };
        let defaults = Config::default();
        let from_file = |listen: Option<Option<SocketAddr>>, what: &str, flag: &str| match listen {
            None => Ok(None),
            Some(None) => Err(Failure::usage(format!(
                "the config file switches the {what} listener off; give {flag}"
            ))),
            Some(Some(addr)) => Ok(Some(addr)),
        };
        let tls = file.as_ref().is_some_and(|f| f.tls_cert.is_some());
        let scheme = if tls { "https" } else { "http" };
        let grpc = match &options.address {
            Some(a) => with_scheme(a),
            None => {
                let listen = from_file(
                    file.as_ref().and_then(|f| f.grpc_listen.map(|l| l.0)),
                    "gRPC",
                    "--address",
                )?;
                let addr = listen
                    .or(defaults.grpc_listen)
                    .expect("a default gRPC listener");
                format!("{scheme}://{}", reachable(addr))
            }
        };
        let rest = match &options.rest_address {
            Some(a) => with_scheme(a),
            None => {
                let listen = from_file(
                    file.as_ref().and_then(|f| f.rest_listen.map(|l| l.0)),
                    "REST",
                    "--rest-address",
                )?;
                let addr = listen
                    .or(defaults.rest_listen)
                    .expect("a default REST listener");
                format!("{scheme}://{}", reachable(addr))
            }
        };
        let key = options
            .api_key
            .clone()
            .or_else(|| file.as_ref().and_then(|f| f.admin_key.clone()));
        let token = options
            .api_token
            .clone()
            .or_else(|| file.as_ref().and_then(|f| f.admin_token.clone()));
        let authorization = match (key, token) {
            (Some(key), Some(token)) => {
                use base64::{Engine, engine::general_purpose::STANDARD};
                Some(format!(
                    "Basic {}",
                    STANDARD.encode(format!("{key}:{token}"))
                ))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(Failure::usage(
                    "--api-key needs its token: give --api-token (or CONNSTATE_API_TOKEN)",
                ));
            }
            (None, Some(_)) => {
                return Err(Failure::usage(
                    "--api-token needs its key: give --api-key (or CONNSTATE_API_KEY)",
                ));
            }
        };
        let ca_file = options
            .ca_file
            .clone()
            .or_else(|| file.as_ref().and_then(|f| f.tls_cert.clone()));
        Ok(Endpoints {
            grpc,
            rest,
            authorization,
            ca_file,
            timeout: options.timeout,
        })
    }

    pub fn grpc_address(&self) -> &str {
        &self.grpc
    }

    pub fn rest_address(&self) -> &str {
        &self.rest
    }

    /// A channel to the gRPC listener, connected on first use (a server
    /// that is down is an UNAVAILABLE answer to the first call).
    pub fn channel(&self) -> Result<Channel> {
        let bad =
            |e: &dyn std::fmt::Display| Failure::usage(format!("--address {}: {e}", self.grpc));
        let mut endpoint = Channel::from_shared(self.grpc.clone())
            .map_err(|e| bad(&e))?
            .connect_timeout(self.timeout.min(Duration::from_secs(10)));
        if self.grpc.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.ca_file {
                let pem = std::fs::read(ca).map_err(|e| {
                    Failure::usage(format!("cannot read the CA file {}: {e}", ca.display()))
                })?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| bad(&e))?;
        }
        Ok(endpoint.connect_lazy())
    }

    /// The connection state service.
    pub fn states(&self) -> Result<ConnectionStateServiceClient<Channel>> {
        Ok(ConnectionStateServiceClient::new(self.channel()?))
    }

    /// A unary request: the credentials and the time limit.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = self.stream_request(message);
        request.set_timeout(self.timeout);
        request
    }

    /// A streaming request: the credentials, no time limit.
    pub fn stream_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = &self.authorization {
            let value: MetadataValue<Ascii> = value.parse().expect("base64 is valid metadata");
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    /// The REST gateway.
    pub fn rest(&self) -> Result<RestClient> {
        RestClient::new(
            &self.rest,
            self.authorization.clone(),
            self.ca_file.as_deref(),
            self.timeout,
        )
    }
}

/// `host:port` becomes `http://host:port`; a URL stays as given.
fn with_scheme(address: &str) -> String {
    let address = address.trim().trim_end_matches('/');
    if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    }
}

/// A listener on the unspecified address is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// A transport failure before any answer: the server is unreachable.
pub fn unreachable(what: &str, address: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(
        Exit::Unavailable,
        format!("cannot reach the {what} server at {address}: {e}"),
    )
}
