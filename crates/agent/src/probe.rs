//! Readiness probes (HTTP GET or TCP connect) and the drain hook's request (POST unless configured), over a minimal HTTP/1.1 exchange.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::agent::{HookMethod, ProbeKind, Readiness};

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One readiness check.
pub async fn ready(addr: SocketAddr, r: &Readiness) -> bool {
    match r.kind {
        ProbeKind::Tcp => tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr))
            .await
            .is_ok_and(|c| c.is_ok()),
        ProbeKind::Http => matches!(
            exchange(addr, "GET", &r.path, PROBE_TIMEOUT).await,
            Ok(code) if (200..400).contains(&code)
        ),
    }
}

/// Tells an instance it is draining: `METHOD path` (POST unless configured). Returns the status.
pub async fn notify_drain(addr: SocketAddr, method: HookMethod, path: &str) -> Result<u16, String> {
    exchange(addr, method.as_str(), path, Duration::from_secs(5)).await
}

/// Sends a bodyless request and returns the response status code.
async fn exchange(addr: SocketAddr, method: &str, path: &str, limit: Duration) -> Result<u16, String> {
    let work = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: slipway-agent\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::with_capacity(256);
        loop {
            let mut chunk = [0u8; 256];
            let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed before a status line".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&buf[..end]).to_string();
                let code = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse::<u16>().ok())
                    .ok_or_else(|| format!("bad status line {line:?}"))?;
                return Ok(code);
            }
            if buf.len() > 8192 {
                return Err("status line too long".to_string());
            }
        }
    };
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_drain_hook_uses_the_configured_method_on_a_real_socket() {
        for method in [HookMethod::Post, HookMethod::Put, HookMethod::Delete] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = vec![0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
                String::from_utf8_lossy(&buf[..n]).to_string()
            });
            assert_eq!(notify_drain(addr, method, "/drain").await, Ok(204));
            let head = server.await.unwrap();
            assert!(
                head.starts_with(&format!("{} /drain HTTP/1.1\r\n", method.as_str())),
                "{head}"
            );
        }
    }
}
