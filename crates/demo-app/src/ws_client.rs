//! A small WebSocket client for tests and tools: connect through a router, ask which release answers, echo.

use std::net::SocketAddr;

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
        let (ws, _resp) = tokio_tungstenite::client_async(req, stream).await?;
        Ok(WsClient { ws })
    }

    /// Sends `text` and waits for the next text message.
    pub async fn round_trip(&mut self, text: &str) -> Result<String, WsError> {
        self.ws.send(Message::text(text)).await?;
        loop {
            match self.ws.next().await {
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
