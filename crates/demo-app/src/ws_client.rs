//! WebSocket clients for tests and tools: a plain one, and one that keeps its session and reconnects after a 1012.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Message;

/// Why a WebSocket exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("bad request header: {0}")]
    Header(String),
    /// The server sent a close frame (code 1006 stands for "none").
    #[error("closed by the server with code {code}: {reason}")]
    Closed { code: u16, reason: String },
    #[error("connection ended without a close frame")]
    Ended,
}

/// An open WebSocket to a demo app (directly or through a router).
pub struct WsClient {
    ws: WebSocketStream<TcpStream>,
    /// `name=value` of the cookie the 101 answer set, if any.
    pub set_cookie: Option<String>,
    /// Unsolicited notices from the app (its drain warning) seen so far.
    pub notices: u32,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClient").finish_non_exhaustive()
    }
}

impl WsClient {
    /// Opens `ws://addr/ws` with the given extra request headers.
    pub async fn connect(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<WsClient, WsError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(tokio_tungstenite::tungstenite::Error::from)?;
        let _ = stream.set_nodelay(true);
        let mut req = format!("ws://{addr}/ws").into_client_request()?;
        for (k, v) in headers {
            let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| WsError::Header(e.to_string()))?;
            let value = http::HeaderValue::from_str(v).map_err(|e| WsError::Header(e.to_string()))?;
            req.headers_mut().insert(name, value);
        }
        let (ws, resp) = tokio_tungstenite::client_async(req, stream).await?;
        let set_cookie = resp
            .headers()
            .get(http::header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::to_string);
        Ok(WsClient {
            ws,
            set_cookie,
            notices: 0,
        })
    }

    /// Sends `text` and waits for the next text message.
    pub async fn round_trip(&mut self, text: &str) -> Result<String, WsError> {
        self.ws.send(Message::text(text)).await?;
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == crate::DRAIN_NOTICE => self.notices += 1,
                Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                Some(Ok(Message::Close(frame))) => {
                    return Err(match frame {
                        Some(f) => WsError::Closed {
                            code: u16::from(f.code),
                            reason: f.reason.to_string(),
                        },
                        None => WsError::Closed {
                            code: 1006,
                            reason: String::new(),
                        },
                    });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(WsError::Ended),
            }
        }
    }

    /// The release id of the app at the other end.
    pub async fn release(&mut self) -> Result<String, WsError> {
        self.round_trip("release?").await
    }

    pub async fn close(mut self) -> Result<(), WsError> {
        Ok(self.ws.close(None).await?)
    }
}

/// What happened to one reconnecting session, with times.
#[derive(Debug, Clone, Default)]
pub struct SessionLog {
    /// One per connection, the first included: when, and the release that answered.
    pub connects: Vec<(Instant, String)>,
    /// Close frames the server sent: when, code, reason.
    pub closes: Vec<(Instant, u16, String)>,
    /// Notices the app sent unasked (its drain warning).
    pub notices: Vec<(Instant, String)>,
    /// Failures: a connection that broke without a close frame, a failed
    /// (re)connect, an unexpected close code.
    pub errors: Vec<(Instant, String)>,
    pub echoes: u64,
}

impl SessionLog {
    /// The release of the newest connection.
    pub fn release(&self) -> Option<&str> {
        self.connects.last().map(|(_, r)| r.as_str())
    }
}

/// A WebSocket session that survives restarts: it keeps the session cookie
/// the router set, and when the server closes with 1012 (service restart)
/// or 1001 (going away) it reconnects at once, landing on the release its
/// session belongs to now.
#[derive(Debug)]
pub struct ReconnectingWs {
    addr: SocketAddr,
    cookie: Option<String>,
    ping_every: Duration,
    log: Arc<Mutex<SessionLog>>,
}

fn lock(log: &Mutex<SessionLog>) -> std::sync::MutexGuard<'_, SessionLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

impl ReconnectingWs {
    pub fn new(addr: SocketAddr, ping_every: Duration) -> ReconnectingWs {
        ReconnectingWs {
            addr,
            cookie: None,
            ping_every,
            log: Arc::default(),
        }
    }

    /// The session's log, readable while it runs.
    pub fn log(&self) -> Arc<Mutex<SessionLog>> {
        self.log.clone()
    }

    async fn open(&mut self) -> Result<WsClient, WsError> {
        let headers: Vec<(&str, &str)> = self.cookie.iter().map(|c| ("cookie", c.as_str())).collect();
        let mut ws = WsClient::connect(self.addr, &headers).await?;
        if let Some(c) = ws.set_cookie.take() {
            self.cookie = Some(c);
        }
        let release = ws.release().await?;
        lock(&self.log).connects.push((Instant::now(), release));
        Ok(ws)
    }

    /// Holds the session until `stop` turns true, pinging every
    /// `ping_every` and reconnecting as needed; closes it cleanly at the end.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                break;
            }
            let mut client = match self.open().await {
                Ok(c) => c,
                Err(e) => {
                    lock(&self.log).errors.push((Instant::now(), format!("connect: {e}")));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        _ = stop.changed() => break,
                    }
                }
            };
            let mut next_ping = tokio::time::Instant::now() + self.ping_every;
            let ended = loop {
                tokio::select! {
                    m = client.ws.next() => match m {
                        Some(Ok(Message::Text(t))) if t.as_str() == crate::DRAIN_NOTICE => {
                            lock(&self.log).notices.push((Instant::now(), t.to_string()));
                        }
                        Some(Ok(Message::Text(_))) => lock(&self.log).echoes += 1,
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = frame
                                .map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                            let mut log = lock(&self.log);
                            log.closes.push((Instant::now(), code, reason.clone()));
                            if code != 1012 && code != 1001 {
                                log.errors.push((Instant::now(), format!("closed with {code} {reason}")));
                            }
                            break false;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            lock(&self.log).errors.push((Instant::now(), format!("broken: {e}")));
                            break false;
                        }
                        None => {
                            lock(&self.log).errors.push((Instant::now(), "ended without a close frame".into()));
                            break false;
                        }
                    },
                    _ = tokio::time::sleep_until(next_ping) => {
                        next_ping += self.ping_every;
                        if let Err(e) = client.ws.send(Message::text("ping")).await {
                            lock(&self.log).errors.push((Instant::now(), format!("send: {e}")));
                            break false;
                        }
                    }
                    _ = stop.changed() => break true,
                }
            };
            if ended {
                let _ = client.close().await;
                break;
            }
        }
    }
}
