//! The demo app: a versioned HTTP/1.1 + HTTP/2 (h2c) + WebSocket server with failure knobs.
//!
//! It stands in for a real service in tests, benchmarks and `slipway demo`.
//! Endpoints:
//!
//! | path | answer |
//! |---|---|
//! | `/` | the release id (`v1\n`), headers `x-release` and `x-instance` (and `x-greeting`, `DEMO_GREETING`) |
//! | `/healthz` | `ok` (never delayed nor failed by the knobs) |
//! | `/ws` | WebSocket echo; the text message `release?` is answered with the release id |
//! | `/sleep?ms=N` | waits N ms, then answers like `/` |
//! | `/status/N` | answers with status N |
//! | `/echo` | the request body |
//! | `/bytes?n=N` | N bytes |
//! | `/stream?chunks=N&size=M` | N chunks of M bytes, chunked encoding |
//! | `/headers` | the request headers, one per line |
//! | `POST /drain` | the agent's drain hook: `/` then adds `x-draining: 1`; WebSockets hear "server restarting soon" |
//!
//! Knobs: an error rate (share of 500s; WebSocket handshakes spared), added latency, and in the binary:
//! failing to start, ignoring SIGTERM, a slow start and a slow shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};

pub mod cli;
pub mod ws_client;

/// What one demo-app instance is and how badly it behaves.
#[derive(Debug, Clone)]
pub struct Config {
    pub release: String,
    pub instance: String,
    /// Share of requests (0..=1) answered with 500, health checks excepted.
    pub error_rate: f64,
    /// Added to every request but health checks.
    pub latency: Duration,
    /// After a shutdown signal: keep serving this long before closing.
    pub shutdown_delay: Duration,
    /// Sent back in an `x-greeting` header on every answer (to see which environment an instance got).
    pub greeting: Option<String>,
}

impl Config {
    pub fn new(release: impl Into<String>) -> Config {
        let release = release.into();
        Config {
            instance: format!("{release}-0"),
            release,
            error_rate: 0.0,
            latency: Duration::ZERO,
            shutdown_delay: Duration::ZERO,
            greeting: None,
        }
    }
}

/// Resolves once the instance drains (never holds the watch lock across an await).
async fn drained(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}

/// Text sent to every open WebSocket when the instance starts draining.
pub const DRAIN_NOTICE: &str = "server restarting soon";

/// Live state of a running app, shared by its connections.
#[derive(Debug)]
pub struct App {
    config: Config,
    release_header: HeaderValue,
    instance_header: HeaderValue,
    greeting_header: Option<HeaderValue>,
    draining: AtomicBool,
    /// Turns true on `POST /drain`; open WebSockets are told.
    drain_signal: tokio::sync::watch::Sender<bool>,
    requests: AtomicU64,
    /// Error rate in millionths, from `--error-rate`.
    error_ppm: u64,
}

impl App {
    pub fn new(config: Config) -> Arc<App> {
        let header = |s: &str| HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        Arc::new(App {
            release_header: header(&config.release),
            instance_header: header(&config.instance),
            greeting_header: config.greeting.as_deref().map(header),
            error_ppm: (config.error_rate.clamp(0.0, 1.0) * 1e6) as u64,
            config,
            draining: AtomicBool::new(false),
            drain_signal: tokio::sync::watch::channel(false).0,
            requests: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Requests served so far (health checks included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    async fn handle(self: Arc<App>, req: Request<Incoming>) -> Result<Response<AppBody>, Infallible> {
        if req.uri().path() == "/stream" {
            self.requests.fetch_add(1, Ordering::Relaxed);
            let q = |key: &str| -> Option<usize> {
                req.uri()
                    .query()?
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            let chunks = q("chunks").unwrap_or(3).min(100_000);
            let size = q("size").unwrap_or(10).clamp(1, 1 << 20);
            let mut resp = Response::new(AppBody::Chunks {
                left: chunks,
                chunk: Bytes::from(vec![b'c'; size]),
            });
            resp.headers_mut().insert("x-release", self.release_header.clone());
            return Ok(resp);
        }
        let resp = self.handle_inner(req).await;
        Ok(resp.map(AppBody::Full))
    }

    async fn handle_inner(self: Arc<App>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let path = req.uri().path();
        if path == "/healthz" {
            return self.text(StatusCode::OK, "ok\n");
        }
        if path == "/drain" && req.method() == Method::POST {
            if !self.draining.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "demo-app {}: drain hook called; warning open WebSockets",
                    self.config.instance
                );
            }
            self.drain_signal.send_replace(true);
            return self.text(StatusCode::OK, "draining\n");
        }
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        let ppm = self.error_ppm;
        // WebSocket handshakes are spared: the knob is about requests.
        if ppm > 0 && path != "/ws" && fastrand::u64(0..1_000_000) < ppm {
            return self.text(StatusCode::INTERNAL_SERVER_ERROR, "injected error\n");
        }
        let query = |key: &str| -> Option<u64> {
            req.uri()
                .query()?
                .split('&')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
                .parse()
                .ok()
        };
        match path {
            "/ws" => self.websocket(req),
            "/sleep" => {
                tokio::time::sleep(Duration::from_millis(query("ms").unwrap_or(0))).await;
                self.release_reply()
            }
            "/bytes" => {
                let n = query("n").unwrap_or(0).min(256 << 20) as usize;
                self.reply(StatusCode::OK, Bytes::from(vec![b'x'; n]))
            }
            "/headers" => {
                let mut out = String::new();
                for (k, v) in req.headers() {
                    out.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
                }
                self.text(StatusCode::OK, &out)
            }
            "/echo" => match req.into_body().collect().await {
                Ok(body) => self.reply(StatusCode::OK, body.to_bytes()),
                Err(e) => self.text(StatusCode::BAD_REQUEST, &format!("body error: {e}\n")),
            },
            p if p.starts_with("/status/") => {
                let code = p["/status/".len()..]
                    .parse::<u16>()
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .unwrap_or(StatusCode::BAD_REQUEST);
                self.text(code, &format!("{}\n", code.as_u16()))
            }
            _ => self.release_reply(),
        }
    }

    fn release_reply(&self) -> Response<Full<Bytes>> {
        let mut resp = self.text(StatusCode::OK, &format!("{}\n", self.config.release));
        if self.is_draining() {
            resp.headers_mut().insert("x-draining", HeaderValue::from_static("1"));
        }
        resp
    }

    fn text(&self, status: StatusCode, body: &str) -> Response<Full<Bytes>> {
        self.reply(status, Bytes::copy_from_slice(body.as_bytes()))
    }

    fn reply(&self, status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert("x-release", self.release_header.clone());
        h.insert("x-instance", self.instance_header.clone());
        if let Some(g) = &self.greeting_header {
            h.insert("x-greeting", g.clone());
        }
        resp
    }

    fn websocket(self: Arc<App>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
        let key = req.headers().get("sec-websocket-key").cloned();
        let is_upgrade = req
            .headers()
            .get(http::header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let Some(key) = key.filter(|_| is_upgrade) else {
            return self.text(StatusCode::BAD_REQUEST, "expected a websocket upgrade\n");
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let on_upgrade = hyper::upgrade::on(&mut req);
        let app = self.clone();
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else { return };
            let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            app.echo(ws).await;
        });
        let mut resp = self.reply(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
        let h = resp.headers_mut();
        h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert("sec-websocket-accept", v);
        }
        resp
    }

    async fn echo<S>(&self, mut ws: WebSocketStream<S>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut drain = self.drain_signal.subscribe();
        let mut told = false;
        loop {
            let msg = tokio::select! {
                m = ws.next() => match m {
                    Some(Ok(m)) => m,
                    _ => break,
                },
                _ = drained(&mut drain), if !told => {
                    // What a game server does at drain start: warn its players.
                    told = true;
                    if ws.send(Message::text(DRAIN_NOTICE)).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            let reply = match msg {
                Message::Text(t) if t.as_str() == "release?" => Message::text(self.config.release.clone()),
                Message::Text(_) | Message::Binary(_) => msg,
                Message::Close(_) => break,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    }
}

/// Bodies the demo app sends: whole, or a stream of equal chunks (sent
/// with chunked encoding since its length is not known up front).
pub enum AppBody {
    Full(Full<Bytes>),
    Chunks { left: usize, chunk: Bytes },
}

impl hyper::body::Body for AppBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            AppBody::Full(f) => std::pin::Pin::new(f).poll_frame(cx),
            AppBody::Chunks { left, chunk } => {
                if *left == 0 {
                    return std::task::Poll::Ready(None);
                }
                *left -= 1;
                std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk.clone()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AppBody::Full(f) => f.is_end_stream(),
            AppBody::Chunks { left, .. } => *left == 0,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            AppBody::Full(f) => f.size_hint(),
            AppBody::Chunks { .. } => hyper::body::SizeHint::default(),
        }
    }
}

/// Serves `listener` until `shutdown` resolves, then keeps serving for the
/// configured shutdown delay, then closes connections gracefully (waiting at
/// most 10 s for them).
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    // Connections live in this set so that dropping `serve` (a killed
    // server in tests) drops them too.
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next() => {}
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of fds or similar: back off briefly instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let svc = hyper::service::service_fn(move |req| app.clone().handle(req));
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn.into_owned());
                connections.spawn(async move {
                    let _ = conn.await;
                });
            }
        }
    }
    drop(listener);
    let delay = app.config.shutdown_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    connections.shutdown().await;
}

/// Binds `127.0.0.1:0`, serves `app` in the background and returns the address
/// and a handle that stops it when dropped. For in-process tests.
pub async fn spawn_local(app: Arc<App>) -> std::io::Result<(std::net::SocketAddr, LocalServer)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, app, async move {
        let _ = rx.await;
    }));
    Ok((addr, LocalServer { stop: Some(tx), task }))
}

/// A demo app serving in the background of the current runtime.
#[derive(Debug)]
pub struct LocalServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl LocalServer {
    /// Stops accepting and waits for open connections to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Stops at once: the listener and every connection are dropped by
    /// the time this returns.
    pub async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
