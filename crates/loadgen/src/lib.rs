//! Open-loop HTTP load from sticky virtual users, timed from when each request was due.
//! Optional WebSockets stay open and echo once a second.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::watch;
use wire::metrics::{BUCKETS, Histogram, bucket_index};

/// What load to generate.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: SocketAddr,
    /// Requests per second, all users together.
    pub rate: f64,
    pub users: usize,
    /// Share of users that keep one connection open (the rest connect per request).
    pub keepalive_share: f64,
    pub path: String,
    /// WebSockets held open (echoing once a second).
    pub websockets: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// A user starts a new session (drops its cookie) after this many
    /// requests; None keeps one session for the whole run.
    pub session_requests: Option<u32>,
    /// Speak HTTP/2 (prior knowledge, h2c) instead of HTTP/1.1. A request
    /// the server refused unprocessed (GOAWAY past it, or REFUSED_STREAM) is
    /// retried once on a new connection, as RFC 9113 §8.7 allows; such
    /// retries are counted in `retried`.
    pub http2: bool,
}

impl LoadConfig {
    pub fn new(target: SocketAddr, rate: f64) -> LoadConfig {
        LoadConfig {
            target,
            rate,
            users: 50,
            keepalive_share: 0.5,
            path: "/".into(),
            websockets: 0,
            timeout: Duration::from_secs(10),
            session_requests: None,
            http2: false,
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    statuses: Mutex<BTreeMap<u16, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    releases: Mutex<BTreeMap<String, u64>>,
    latency: Mutex<Vec<u64>>,
    ws_open: AtomicU64,
    ws_dropped: AtomicU64,
    ws_closed_1012: AtomicU64,
    ws_echoes: AtomicU64,
    ws_releases: Mutex<BTreeMap<String, u64>>,
    retried: AtomicU64,
}

/// Counts so far.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub sent: u64,
    pub ok: u64,
    /// Transport errors and non-2xx answers.
    pub failed: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
    /// Answers per `x-release`.
    pub releases: BTreeMap<String, u64>,
    pub latency: Histogram,
    pub ws_open: u64,
    /// WebSockets that broke without a close frame.
    pub ws_dropped: u64,
    /// WebSockets closed by the server with 1012 (service restart).
    pub ws_closed_1012: u64,
    pub ws_echoes: u64,
    /// WebSocket connections (reconnects included) per release that answered.
    pub ws_releases: BTreeMap<String, u64>,
    /// HTTP/2 requests the server refused unprocessed and that were retried.
    pub retried: u64,
    pub elapsed: Duration,
}

impl Report {
    pub fn p99_ms(&self) -> f64 {
        self.latency.quantile_us(0.99).unwrap_or(0.0) / 1000.0
    }

    pub fn p50_ms(&self) -> f64 {
        self.latency.quantile_us(0.5).unwrap_or(0.0) / 1000.0
    }

    /// The window between an earlier report and this one.
    pub fn since(&self, earlier: &Report) -> Report {
        let sub = |a: &BTreeMap<u16, u64>, b: &BTreeMap<u16, u64>| -> BTreeMap<u16, u64> {
            a.iter()
                .map(|(k, v)| (*k, v - b.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect()
        };
        Report {
            sent: self.sent - earlier.sent,
            ok: self.ok - earlier.ok,
            failed: self.failed - earlier.failed,
            statuses: sub(&self.statuses, &earlier.statuses),
            errors: self.errors.clone(),
            releases: self
                .releases
                .iter()
                .map(|(k, v)| (k.clone(), v - earlier.releases.get(k).copied().unwrap_or(0)))
                .collect(),
            latency: self.latency.since(&earlier.latency),
            ws_open: self.ws_open,
            ws_dropped: self.ws_dropped - earlier.ws_dropped,
            ws_closed_1012: self.ws_closed_1012 - earlier.ws_closed_1012,
            ws_echoes: self.ws_echoes - earlier.ws_echoes,
            ws_releases: self
                .ws_releases
                .iter()
                .map(|(k, v)| (k.clone(), v - earlier.ws_releases.get(k).copied().unwrap_or(0)))
                .collect(),
            retried: self.retried - earlier.retried,
            elapsed: self.elapsed.saturating_sub(earlier.elapsed),
        }
    }
}

/// A running load.
pub struct Load {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl std::fmt::Debug for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Load").field("report", &self.report()).finish()
    }
}

impl Load {
    pub fn start(cfg: LoadConfig) -> Load {
        let shared = Arc::new(Shared {
            latency: Mutex::new(vec![0; BUCKETS]),
            ..Default::default()
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let users = cfg.users.max(1);
        let interval = Duration::from_secs_f64(users as f64 / cfg.rate.max(0.001));
        let keepalive = (users as f64 * cfg.keepalive_share).round() as usize;
        let start = Instant::now();
        for u in 0..users {
            let offset = interval.mul_f64(u as f64 / users as f64);
            tasks.push(tokio::spawn(user(
                cfg.clone(),
                u < keepalive,
                start + offset,
                interval,
                shared.clone(),
                stop_rx.clone(),
            )));
        }
        for _ in 0..cfg.websockets {
            tasks.push(tokio::spawn(websocket(cfg.target, shared.clone(), stop_rx.clone())));
        }
        Load {
            shared,
            stop,
            tasks,
            started: start,
        }
    }

    pub fn report(&self) -> Report {
        let s = &self.shared;
        let dense = s.latency.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Report {
            sent: s.sent.load(Relaxed),
            ok: s.ok.load(Relaxed),
            failed: s.failed.load(Relaxed),
            statuses: s.statuses.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            errors: s.errors.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            releases: s.releases.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            latency: Histogram::from_dense(&dense, 0),
            ws_open: s.ws_open.load(Relaxed),
            ws_dropped: s.ws_dropped.load(Relaxed),
            ws_closed_1012: s.ws_closed_1012.load(Relaxed),
            ws_echoes: s.ws_echoes.load(Relaxed),
            ws_releases: s.ws_releases.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            retried: s.retried.load(Relaxed),
            elapsed: self.started.elapsed(),
        }
    }

    /// Stops sending; waits for requests in flight.
    pub async fn stop(mut self) -> Report {
        let _ = self.stop.send(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        self.report()
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn bump<K: Ord>(m: &Mutex<BTreeMap<K, u64>>, k: K) {
    *m.lock().unwrap_or_else(|e| e.into_inner()).entry(k).or_insert(0) += 1;
}

/// A client connection of either protocol.
enum Conn {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

impl Conn {
    fn is_closed(&self) -> bool {
        match self {
            Conn::H1(s) => s.is_closed(),
            Conn::H2(s) => s.is_closed(),
        }
    }
}

async fn connect(addr: SocketAddr, h2: bool) -> Result<Conn, String> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = s.set_nodelay(true);
    if h2 {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        return Ok(Conn::H2(sender));
    }
    let (sender, conn) = http1::handshake(TokioIo::new(s))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(Conn::H1(sender))
}

async fn user(
    cfg: LoadConfig,
    keepalive: bool,
    first: Instant,
    interval: Duration,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn: Option<Conn> = None;
    let mut cookie: Option<String> = None;
    let mut in_session = 0u32;
    let mut due = first;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = stopped(&mut stop) => return,
        }
        shared.sent.fetch_add(1, Relaxed);
        in_session += 1;
        if cfg.session_requests.is_some_and(|n| in_session > n) {
            cookie = None;
            in_session = 1;
        }
        let r = tokio::time::timeout(cfg.timeout, async {
            match send(&cfg, keepalive, &mut conn, &cookie).await {
                Err(Failure::Unprocessed(_)) if cfg.http2 => {
                    shared.retried.fetch_add(1, Relaxed);
                    conn = None;
                    send(&cfg, keepalive, &mut conn, &cookie).await
                }
                other => other,
            }
        })
        .await;
        let elapsed_us = due.elapsed().as_micros() as u64;
        shared.latency.lock().unwrap_or_else(|e| e.into_inner())[bucket_index(elapsed_us)] += 1;
        match r {
            Ok(Ok((status, set_cookie, release))) => {
                bump(&shared.statuses, status);
                if let Some(r) = release {
                    bump(&shared.releases, r);
                }
                if let Some(c) = set_cookie {
                    cookie = Some(c);
                }
                if (200..300).contains(&status) {
                    shared.ok.fetch_add(1, Relaxed);
                } else {
                    shared.failed.fetch_add(1, Relaxed);
                }
            }
            Ok(Err(e)) => {
                conn = None;
                shared.failed.fetch_add(1, Relaxed);
                bump(&shared.errors, e.to_string());
            }
            Err(_) => {
                conn = None;
                shared.failed.fetch_add(1, Relaxed);
                bump(&shared.errors, "timeout".to_string());
            }
        }
        due += interval;
        // Far behind (the process was stalled): skip ahead rather than burst.
        if due + interval * 50 < Instant::now() {
            due = Instant::now();
        }
    }
}

/// Why a request got no usable answer.
#[derive(Debug)]
enum Failure {
    /// The server said it did not process the request (HTTP/2 GOAWAY past
    /// its stream, or REFUSED_STREAM): safe to send again.
    Unprocessed(String),
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unprocessed(m) | Failure::Other(m) => f.write_str(m),
        }
    }
}

impl From<String> for Failure {
    fn from(m: String) -> Failure {
        Failure::Other(m)
    }
}

/// True when an HTTP/2 error says the request was never processed.
fn unprocessed(e: &hyper::Error) -> bool {
    if e.is_canceled() {
        return true;
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(h2e) = s.downcast_ref::<h2::Error>() {
            return h2e.reason() == Some(h2::Reason::REFUSED_STREAM) || (h2e.is_go_away() && h2e.is_remote());
        }
        src = s.source();
    }
    false
}

type Answer = (u16, Option<String>, Option<String>);

async fn send(
    cfg: &LoadConfig,
    keepalive: bool,
    conn: &mut Option<Conn>,
    cookie: &Option<String>,
) -> Result<Answer, Failure> {
    let c = match conn.take() {
        Some(c) if !c.is_closed() => c,
        _ => connect(cfg.target, cfg.http2).await?,
    };
    let mut req = http::Request::get(cfg.path.as_str());
    if cfg.http2 {
        req = req.uri(format!("http://{}{}", cfg.target, cfg.path));
    } else {
        req = req.header(http::header::HOST, cfg.target.to_string());
        if !keepalive {
            req = req.header(http::header::CONNECTION, "close");
        }
    }
    if let Some(c) = cookie {
        req = req.header(http::header::COOKIE, c.as_str());
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let (resp, c) = match c {
        Conn::H1(mut sender) => {
            sender.ready().await.map_err(|e| format!("connection: {e}"))?;
            let resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
            (resp, Conn::H1(sender))
        }
        Conn::H2(mut sender) => {
            if let Err(e) = sender.ready().await {
                return Err(Failure::Unprocessed(format!("connection: {e}")));
            }
            let resp = match sender.send_request(req).await {
                Ok(r) => r,
                Err(e) if unprocessed(&e) => return Err(Failure::Unprocessed(format!("request: {e}"))),
                Err(e) => return Err(Failure::Other(format!("request: {e}"))),
            };
            (resp, Conn::H2(sender))
        }
    };
    let status = resp.status().as_u16();
    let set_cookie = resp
        .headers()
        .get(http::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_string);
    let release = resp
        .headers()
        .get("x-release")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let why = resp
        .headers()
        .get("x-slipway-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    if let Some(w) = why {
        return Err(Failure::Other(format!(
            "{status} {w}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    if keepalive {
        *conn = Some(c);
    }
    Ok((status, set_cookie, release))
}

async fn websocket(target: SocketAddr, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    use demo_app::ws_client::{WsClient, WsError};
    let mut cookie: Option<String> = None;
    loop {
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("cookie", c.as_str())).collect();
        let connected = match WsClient::connect(target, &headers).await {
            Ok(mut ws) => match ws.release().await {
                Ok(release) => Ok((ws, release)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let mut ws = match connected {
            Ok((mut ws, release)) => {
                if let Some(c) = ws.set_cookie.take() {
                    cookie = Some(c);
                }
                bump(&shared.ws_releases, release);
                ws
            }
            Err(_) => {
                shared.ws_dropped.fetch_add(1, Relaxed);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    _ = stopped(&mut stop) => return,
                }
            }
        };
        shared.ws_open.fetch_add(1, Relaxed);
        let outcome = loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stopped(&mut stop) => {
                    let _ = ws.close().await;
                    shared.ws_open.fetch_sub(1, Relaxed);
                    return;
                }
            }
            match ws.round_trip("ping").await {
                Ok(_) => {
                    shared.ws_echoes.fetch_add(1, Relaxed);
                }
                Err(e) => break e,
            }
        };
        shared.ws_open.fetch_sub(1, Relaxed);
        match outcome {
            WsError::Closed { code: 1012, .. } => shared.ws_closed_1012.fetch_add(1, Relaxed),
            _ => shared.ws_dropped.fetch_add(1, Relaxed),
        };
    }
}
