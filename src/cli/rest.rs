//! A small HTTP/1.1 client of the REST gateway (hyper's client connection,
//! plain or over rustls), for the calls gRPC does not have: the registry and
//! the administrative disconnect. Each call is one connection; an error
//! answer is turned into a [`Failure`] from the platform's error body.

use std::{path::Path, sync::Arc, time::Duration};

use axum::body::Body;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, rustls::pki_types::ServerName};

use super::{Exit, Failure, Result, endpoint::unreachable};

/// Largest answer read (the registry lists are small).
const MAX_BODY: usize = 64 << 20;

pub struct RestClient {
    base: String,
    host: String,
    port: u16,
    tls: Option<TlsConnector>,
    authorization: Option<String>,
    timeout: Duration,
}

impl RestClient {
    pub fn new(
        base: &str,
        authorization: Option<String>,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<RestClient> {
        let bad = |why: &str| Failure::usage(format!("--rest-address {base}: {why}"));
        let (https, rest) = if let Some(rest) = base.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = base.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad("use http://HOST:PORT, https://HOST:PORT or HOST:PORT"));
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let uri: hyper::Uri = format!("http://{authority}")
            .parse()
            .map_err(|_| bad("not a HOST:PORT"))?;
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let Some(ca_file) = ca_file else {
                return Err(Failure::usage(
                    "an https:// REST address needs the server's certificate authority: give --ca-file",
                ));
            };
            let config = crate::source::upstream::tls_config(&crate::source::upstream::TlsFiles {
                ca_file: ca_file.to_owned(),
                client: None,
            })
            .map_err(|e| Failure::usage(format!("--ca-file {e}")))?;
            Some(TlsConnector::from(Arc::clone(&config)))
        } else {
            None
        };
        Ok(RestClient {
            base: base.to_owned(),
            host,
            port,
            tls,
            authorization,
            timeout,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.call(Method::DELETE, path, None).await
    }

    /// One request; the JSON answer (`null` for an empty one) or the
    /// failure it stands for.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        match tokio::time::timeout(self.timeout, self.exchange(method, path, body)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::new(
                Exit::Unavailable,
                format!("no answer from {} within {:?}", self.base, self.timeout),
            )),
        }
    }

    async fn exchange(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let down = |e: &dyn std::fmt::Display| unreachable("REST", &self.base, e);
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| down(&e))?;
        let (status, bytes) = match &self.tls {
            None => self.send(tcp, method, path, body).await?,
            Some(tls) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| Failure::usage(format!("--rest-address {}: {e}", self.base)))?;
                let stream = tls.connect(name, tcp).await.map_err(|e| down(&e))?;
                self.send(stream, method, path, body).await?
            }
        };
        let json: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if status.is_success() {
            return Ok(json);
        }
        let exit = match status {
            StatusCode::NOT_FOUND => Exit::NotFound,
            StatusCode::BAD_REQUEST => Exit::Usage,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::SERVICE_UNAVAILABLE => {
                Exit::Unavailable
            }
            _ => Exit::Refused,
        };
        // The platform body: "CUDxx0000E: text"; the code is for logs.
        let message = json["message"]
            .as_str()
            .map(|m| m.split_once(": ").map_or(m, |(_, text)| text).to_owned())
            .unwrap_or_else(|| format!("{status}"));
        let violations: Vec<&str> = json["violations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["message"].as_str())
            .collect();
        let message = if violations.is_empty() {
            message
        } else {
            format!("{message} {}", violations.join("; "))
        };
        Err(Failure::new(exit, message))
    }

    async fn send<S>(
        &self,
        stream: S,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, bytes::Bytes)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let down = |e: &dyn std::fmt::Display| unreachable("REST", &self.base, e);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| down(&e))?;
        let connection = tokio::spawn(connection);
        let host = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host)
            .header(header::ACCEPT, "application/json");
        if let Some(value) = &self.authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .map_err(|e| Failure::usage(format!("bad request: {e}")))?;
        let response = sender.send_request(request).await.map_err(|e| down(&e))?;
        let status = response.status();
        let bytes = axum::body::to_bytes(Body::new(response.into_body()), MAX_BODY)
            .await
            .map_err(|e| down(&e))?;
        connection.abort();
        Ok((status, bytes))
    }
}

/// One path segment, percent-encoded: a client id may hold any character,
/// `/`, `?` and `%` included.
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' | b'@' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}
