//! A small JSON client for slipway's admin APIs over loopback TCP or a unix socket, with the bearer token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use wire::api::ErrorBody;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("{addr}: {source}")]
    Http { addr: String, source: hyper::Error },
    #[error("{addr} did not answer within {after:?}")]
    Timeout { addr: String, after: Duration },
    /// The API answered with an error: its message in plain words (the status stays in `status`).
    #[error("{}{}", body.message, problems(body))]
    Api { status: StatusCode, body: ErrorBody },
    #[error("{addr}: unexpected answer: {message}")]
    Decode { addr: String, message: String },
    #[error("bad address {0:?}: expected ip:port or unix:/path")]
    BadAddress(String),
}

fn problems(b: &ErrorBody) -> String {
    b.problems.iter().map(|p| format!("\n  - {p}")).collect()
}

#[derive(Debug, Clone)]
enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// Calls one admin API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    target: Target,
    shown: String,
    token: Option<String>,
    timeout: Duration,
}

impl ApiClient {
    /// `addr` is `ip:port` or `unix:/path`.
    pub fn new(addr: &str, token: Option<String>) -> Result<ApiClient, ClientError> {
        let target = if let Some(p) = addr.strip_prefix("unix:") {
            Target::Unix(PathBuf::from(p))
        } else {
            Target::Tcp(addr.parse().map_err(|_| ClientError::BadAddress(addr.to_string()))?)
        };
        Ok(ApiClient {
            target,
            shown: addr.to_string(),
            token,
            timeout: Duration::from_secs(10),
        })
    }

    pub fn with_timeout(mut self, timeout: Duration) -> ApiClient {
        self.timeout = timeout;
        self
    }

    pub fn addr(&self) -> &str {
        &self.shown
    }

    /// Sends a request and returns status and body, whatever the status.
    pub async fn raw(&self, method: Method, path: &str, body: Bytes) -> Result<(StatusCode, Bytes), ClientError> {
        let addr = self.shown.clone();
        let work = async {
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, "slipway-admin")
                .header(http::header::CONTENT_TYPE, "application/json");
            if let Some(t) = &self.token {
                req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let req = req.body(Full::new(body)).map_err(|e| ClientError::Decode {
                addr: addr.clone(),
                message: e.to_string(),
            })?;
            let http = |source| ClientError::Http {
                addr: addr.clone(),
                source,
            };
            let connect = |source| ClientError::Connect {
                addr: addr.clone(),
                source,
            };
            let resp = match &self.target {
                Target::Tcp(a) => {
                    let s = tokio::net::TcpStream::connect(a).await.map_err(connect)?;
                    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                        .await
                        .map_err(http)?;
                    tokio::spawn(conn);
                    sender.send_request(req).await.map_err(http)?
                }
                Target::Unix(p) => {
                    let s = tokio::net::UnixStream::connect(p).await.map_err(connect)?;
                    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                        .await
                        .map_err(http)?;
                    tokio::spawn(conn);
                    sender.send_request(req).await.map_err(http)?
                }
            };
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
            Ok((status, body))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                addr: self.shown.clone(),
                after: self.timeout,
            }),
        }
    }

    /// Sends `body` (JSON, if any) and decodes a JSON answer; non-2xx
    /// answers become [`ClientError::Api`].
    pub async fn call<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let bytes = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).map_err(|e| ClientError::Decode {
                addr: self.shown.clone(),
                message: e.to_string(),
            })?),
            None => Bytes::new(),
        };
        let (status, body) = self.raw(method, path, bytes).await?;
        if !status.is_success() {
            let body = serde_json::from_slice::<ErrorBody>(&body).unwrap_or_else(|_| ErrorBody {
                error: "http".into(),
                message: String::from_utf8_lossy(&body).trim().to_string(),
                problems: Vec::new(),
            });
            return Err(ClientError::Api { status, body });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            addr: self.shown.clone(),
            message: format!("{e}: {}", String::from_utf8_lossy(&body)),
        })
    }

    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, path, None).await
    }

    pub async fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }
}
