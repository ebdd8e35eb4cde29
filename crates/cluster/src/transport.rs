//! The HTTP side of the client: endpoints parsed from URLs, optional client TLS from PEM files, one reused
//! HTTP/1.1 connection per endpoint, and failover: a call goes to the last endpoint that answered, then the others.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;

use crate::error::EtcdError;

/// Client TLS: the CA that signed etcd's server certificates, and the client's own certificate and key
/// when etcd wants client certificates (`--client-cert-auth`). All PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Client URLs of the members, `http://host:port` or `https://host:port` (https needs `tls`).
    pub endpoints: Vec<String>,
    pub tls: Option<TlsFiles>,
    /// Time to connect to one endpoint before the next is tried.
    pub connect_timeout: Duration,
    /// Time for one endpoint to answer; one that connected but does not answer counts as without quorum
    /// (etcd holds requests it cannot commit).
    pub request_timeout: Duration,
}

impl ClientConfig {
    /// Endpoints with the default timeouts (connect 1 s, request 3 s) and no TLS.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> ClientConfig {
        ClientConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            tls: None,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(3),
        }
    }
}

#[derive(Debug)]
struct Endpoint {
    url: String,
    https: bool,
    host: String,
    port: u16,
}

fn parse_endpoint(url: &str, has_tls: bool) -> Result<Endpoint, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("endpoint {url:?}: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("endpoint {url:?}: the scheme must be http or https")),
    };
    if https && !has_tls {
        return Err(format!(
            "endpoint {url:?}: https needs the tls files (ca, and cert/key if etcd wants them)"
        ));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("endpoint {url:?}: give scheme, host and port only"));
    }
    let host = uri.host().ok_or_else(|| format!("endpoint {url:?}: no host"))?;
    let port = uri.port_u16().unwrap_or(2379);
    Ok(Endpoint {
        url: url.trim_end_matches('/').to_string(),
        https,
        host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
        port,
    })
}

fn load_tls(files: &TlsFiles) -> Result<TlsConnector, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read_certs = |p: &PathBuf| -> Result<Vec<CertificateDer<'static>>, String> {
        let certs: Vec<_> = CertificateDer::pem_file_iter(p)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| format!("tls file {}: {e}", p.display()))?;
        if certs.is_empty() {
            return Err(format!("tls file {}: no certificate in it", p.display()));
        }
        Ok(certs)
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(&files.ca)? {
        roots
            .add(c)
            .map_err(|e| format!("tls ca {}: {e}", files.ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(read_certs(cert)?, key_der)
                .map_err(|e| format!("tls cert and key do not fit: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("tls: cert and key go together (both or neither)".into()),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// What one endpoint did with a call.
enum Outcome {
    /// A 2xx answer's body.
    Ok(Bytes),
    /// etcd's error answer (gRPC code, message).
    Refused(i32, String),
    /// Could not connect or the connection broke.
    Transport(String),
    /// Connected but no answer in time.
    Timeout,
}

#[derive(serde::Deserialize)]
struct GatewayError {
    #[serde(default)]
    code: i32,
    #[serde(default)]
    message: String,
    #[serde(default)]
    error: String,
}

/// Whether etcd's error answer means the cluster cannot serve now (no leader, timed out in Raft).
fn is_no_quorum(code: i32, message: &str) -> bool {
    // 14 = UNAVAILABLE, 4 = DEADLINE_EXCEEDED; "context deadline exceeded" comes with code 2 (UNKNOWN).
    code == 14
        || code == 4
        || message.contains("no leader")
        || message.contains("request timed out")
        || message.contains("context deadline exceeded")
        || message.contains("leader changed")
}

pub(crate) struct Transport {
    endpoints: Vec<Endpoint>,
    tls: Option<TlsConnector>,
    preferred: AtomicUsize,
    idle: Vec<Mutex<Option<SendRequest<Full<Bytes>>>>>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self.endpoints.iter().map(|e| e.url.as_str()).collect();
        write!(f, "Transport({urls:?})")
    }
}

impl Transport {
    pub(crate) fn new(cfg: &ClientConfig) -> Result<Transport, EtcdError> {
        let mut problems = Vec::new();
        if cfg.endpoints.is_empty() {
            problems.push("no endpoint given".to_string());
        }
        let tls = match &cfg.tls {
            Some(files) => load_tls(files).map_err(|e| problems.push(e)).ok(),
            None => None,
        };
        let endpoints: Vec<Endpoint> = cfg
            .endpoints
            .iter()
            .filter_map(|u| parse_endpoint(u, cfg.tls.is_some()).map_err(|e| problems.push(e)).ok())
            .collect();
        if !problems.is_empty() {
            return Err(EtcdError::Config(problems.join("; ")));
        }
        Ok(Transport {
            idle: endpoints.iter().map(|_| Mutex::new(None)).collect(),
            endpoints,
            tls,
            preferred: AtomicUsize::new(0),
            connect_timeout: cfg.connect_timeout,
            request_timeout: cfg.request_timeout,
        })
    }

    async fn connect(&self, i: usize) -> Result<SendRequest<Full<Bytes>>, String> {
        let ep = &self.endpoints[i];
        let fut = async {
            let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
                .await
                .map_err(|e| e.to_string())?;
            tcp.set_nodelay(true).map_err(|e| e.to_string())?;
            if ep.https {
                let tls = self.tls.as_ref().ok_or("https without tls")?;
                let name = rustls::pki_types::ServerName::try_from(ep.host.clone()).map_err(|e| e.to_string())?;
                let stream = tls.connect(name, tcp).await.map_err(|e| format!("tls: {e}"))?;
                let (send, conn) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                Ok(send)
            } else {
                let (send, conn) = http1::handshake(TokioIo::new(tcp)).await.map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                Ok(send)
            }
        };
        match tokio::time::timeout(self.connect_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("no connection within {:?}", self.connect_timeout)),
        }
    }

    fn request(&self, i: usize, path: &str, body: &Bytes) -> Request<Full<Bytes>> {
        let ep = &self.endpoints[i];
        Request::post(path)
            .header(http::header::HOST, format!("{}:{}", ep.host, ep.port))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))
            .expect("a valid request")
    }

    async fn once(&self, i: usize, path: &str, body: &Bytes) -> Outcome {
        let pooled = self.idle[i].lock().expect("pool lock").take();
        let mut send = match pooled {
            Some(s) if !s.is_closed() => s,
            _ => match self.connect(i).await {
                Ok(s) => s,
                Err(e) => return Outcome::Transport(e),
            },
        };
        let exchange = async {
            send.ready().await.map_err(|e| e.to_string())?;
            let resp = send
                .send_request(self.request(i, path, body))
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>((status, bytes))
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Err(_) => Outcome::Timeout,
            Ok(Err(e)) => Outcome::Transport(e),
            Ok(Ok((status, bytes))) => {
                *self.idle[i].lock().expect("pool lock") = Some(send);
                answer(status, bytes)
            }
        }
    }

    /// One unary call (`POST path` with a JSON body), failing over across endpoints.
    pub(crate) async fn call(&self, path: &str, body: Bytes) -> Result<Bytes, EtcdError> {
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let (mut unreachable, mut no_quorum) = (Vec::new(), Vec::new());
        for k in 0..n {
            let i = (start + k) % n;
            let url = &self.endpoints[i].url;
            match self.once(i, path, &body).await {
                Outcome::Ok(bytes) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(bytes);
                }
                Outcome::Refused(code, message) if is_no_quorum(code, &message) => {
                    no_quorum.push(format!("{url}: {message}"))
                }
                Outcome::Refused(code, message) => return Err(EtcdError::Refused { code, message }),
                Outcome::Transport(e) => unreachable.push(format!("{url}: {e}")),
                Outcome::Timeout => no_quorum.push(format!("{url}: no answer within {:?}", self.request_timeout)),
            }
        }
        if no_quorum.is_empty() {
            Err(EtcdError::Unreachable(unreachable.join("; ")))
        } else {
            no_quorum.extend(unreachable);
            Err(EtcdError::NoQuorum(no_quorum.join("; ")))
        }
    }

    /// A streaming call (the watch): the first endpoint that accepts it, its response body left open.
    pub(crate) async fn stream(&self, path: &str, body: Bytes) -> Result<(String, Incoming), EtcdError> {
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut unreachable = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            let url = self.endpoints[i].url.clone();
            let mut send = match self.connect(i).await {
                Ok(s) => s,
                Err(e) => {
                    unreachable.push(format!("{url}: {e}"));
                    continue;
                }
            };
            let sent = async {
                send.ready().await.map_err(|e| e.to_string())?;
                send.send_request(self.request(i, path, &body))
                    .await
                    .map_err(|e| e.to_string())
            };
            match tokio::time::timeout(self.request_timeout, sent).await {
                Ok(Ok(resp)) if resp.status().is_success() => return Ok((url, resp.into_body())),
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    let bytes = resp
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    if let Outcome::Refused(code, message) = answer(status, bytes) {
                        return Err(EtcdError::Refused { code, message });
                    }
                    unreachable.push(format!("{url}: answered {status}"));
                }
                Ok(Err(e)) => unreachable.push(format!("{url}: {e}")),
                Err(_) => unreachable.push(format!("{url}: no answer within {:?}", self.request_timeout)),
            }
        }
        Err(EtcdError::Unreachable(unreachable.join("; ")))
    }
}

fn answer(status: StatusCode, bytes: Bytes) -> Outcome {
    if status.is_success() {
        return Outcome::Ok(bytes);
    }
    match serde_json::from_slice::<GatewayError>(&bytes) {
        Ok(e) => {
            let message = if e.message.is_empty() { e.error } else { e.message };
            Outcome::Refused(e.code, message)
        }
        Err(_) => Outcome::Transport(format!("answered {status}: {}", String::from_utf8_lossy(&bytes))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_config_problem_is_listed_at_once() {
        let mut cfg = ClientConfig::new(["ftp://a:1", "https://b:2", "http://c:3/v3"]);
        cfg.connect_timeout = Duration::from_millis(1);
        let Err(EtcdError::Config(msg)) = Transport::new(&cfg) else {
            panic!("config accepted")
        };
        assert!(
            msg.contains("ftp://a:1") && msg.contains("https://b:2") && msg.contains("http://c:3/v3"),
            "{msg}"
        );
        let Err(EtcdError::Config(msg)) = Transport::new(&ClientConfig::new(Vec::<String>::new())) else {
            panic!("no endpoints accepted")
        };
        assert!(msg.contains("no endpoint"), "{msg}");
    }

    #[test]
    fn missing_tls_files_are_named() {
        let mut cfg = ClientConfig::new(["https://etcd1:2379"]);
        cfg.tls = Some(TlsFiles {
            ca: "/nonexistent/ca.pem".into(),
            cert: Some("/nonexistent/c.pem".into()),
            key: None,
        });
        let Err(EtcdError::Config(msg)) = Transport::new(&cfg) else {
            panic!("config accepted")
        };
        assert!(msg.contains("/nonexistent/ca.pem"), "{msg}");
    }

    #[test]
    fn endpoint_without_port_gets_etcds_default() {
        let ep = parse_endpoint("http://etcd1", false).unwrap();
        assert_eq!((ep.host.as_str(), ep.port, ep.https), ("etcd1", 2379, false));
        let ep = parse_endpoint("http://[::1]:2400/", false).unwrap();
        assert_eq!((ep.host.as_str(), ep.port), ("::1", 2400));
    }

    #[test]
    fn no_quorum_answers_are_told_from_refusals() {
        assert!(is_no_quorum(14, "etcdserver: request timed out"));
        assert!(is_no_quorum(2, "context deadline exceeded"));
        assert!(!is_no_quorum(5, "etcdserver: requested lease not found"));
        assert!(!is_no_quorum(3, "illegal base64 data at input byte 3"));
    }
}
