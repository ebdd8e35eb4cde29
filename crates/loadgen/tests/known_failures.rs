//! loadgen against a server that fails in known ways: every request is counted once, as ok or failed, for the right reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use loadgen::{Load, LoadConfig, Report};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the test server answers the n-th request it reads (n from 1).
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// 200 to all.
    Ok,
    /// 503 to every third request, 200 to the rest.
    Every3rd503,
    /// Resets the connection (RST, nothing sent) instead of answering every fourth request.
    Every4thReset,
    /// Reads the request and never answers.
    Hang,
}

/// What the server did, counted on its side.
#[derive(Debug, Default)]
struct Served {
    requests: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    resets: AtomicU64,
}

async fn server(mode: Mode) -> (SocketAddr, Arc<Served>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let served = Arc::new(Served::default());
    let s = served.clone();
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            tokio::spawn(connection(c, mode, s.clone()));
        }
    });
    (addr, served)
}

async fn connection(mut c: TcpStream, mode: Mode, served: Arc<Served>) {
    let mut buf = Vec::new();
    loop {
        // One request head (loadgen sends GETs without a body).
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            match c.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        buf.drain(..end);
        let n = served.requests.fetch_add(1, SeqCst) + 1;
        let close = head.contains("connection: close");
        let (status, body) = match mode {
            Mode::Ok => ("200 OK", "ok"),
            Mode::Every3rd503 if n.is_multiple_of(3) => ("503 Service Unavailable", "down"),
            Mode::Every3rd503 => ("200 OK", "ok"),
            Mode::Every4thReset if n.is_multiple_of(4) => {
                served.resets.fetch_add(1, SeqCst);
                let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
                return;
            }
            Mode::Every4thReset => ("200 OK", "ok"),
            Mode::Hang => {
                std::future::pending::<()>().await;
                unreachable!()
            }
        };
        if status.starts_with("200") {
            served.ok.fetch_add(1, SeqCst);
        } else {
            served.errors.fetch_add(1, SeqCst);
        }
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if c.write_all(resp.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

async fn run(mode: Mode, rate: f64, secs: f64, timeout: Duration) -> (Report, Arc<Served>) {
    let (addr, served) = server(mode).await;
    let mut cfg = LoadConfig::new(addr, rate);
    cfg.users = 10;
    cfg.timeout = timeout;
    let load = Load::start(cfg);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    (load.stop().await, served)
}

/// Every request sent is counted exactly once, and in the latency histogram.
fn assert_accounted(r: &Report) {
    assert!(r.sent > 0, "{r:?}");
    assert_eq!(r.sent, r.ok + r.failed, "every request is ok or failed: {r:?}");
    assert_eq!(r.latency.count, r.sent, "every request has a latency: {r:?}");
}

#[tokio::test]
async fn a_healthy_server_gets_every_request_counted_as_ok() {
    let (r, served) = run(Mode::Ok, 200.0, 1.0, Duration::from_secs(2)).await;
    assert_accounted(&r);
    assert_eq!(r.failed, 0, "{r:?}");
    assert_eq!(
        r.ok,
        served.ok.load(SeqCst),
        "loadgen's ok is what the server answered: {r:?}"
    );
    assert_eq!(r.statuses.get(&200).copied(), Some(r.ok));
}

#[tokio::test]
async fn five_hundreds_are_failures_counted_by_status() {
    let (r, served) = run(Mode::Every3rd503, 300.0, 1.0, Duration::from_secs(2)).await;
    assert_accounted(&r);
    assert_eq!(r.ok, served.ok.load(SeqCst), "{r:?}");
    assert_eq!(r.failed, served.errors.load(SeqCst), "{r:?}");
    assert_eq!(r.statuses.get(&503).copied(), Some(r.failed), "{r:?}");
    assert!(r.failed > 0 && r.ok > r.failed, "{r:?}");
}

#[tokio::test]
async fn reset_connections_are_failures_with_a_transport_reason() {
    let (r, served) = run(Mode::Every4thReset, 300.0, 1.0, Duration::from_secs(2)).await;
    assert_accounted(&r);
    assert_eq!(r.ok, served.ok.load(SeqCst), "{r:?}");
    assert_eq!(r.failed, served.resets.load(SeqCst), "one failure per reset: {r:?}");
    let transport: u64 = r.errors.values().sum();
    assert_eq!(transport, r.failed, "each failure has its reason: {r:?}");
    assert!(r.statuses.values().sum::<u64>() == r.ok, "a reset has no status: {r:?}");
}

#[tokio::test]
async fn a_hanging_server_times_every_request_out() {
    let (r, served) = run(Mode::Hang, 50.0, 1.0, Duration::from_millis(300)).await;
    assert_accounted(&r);
    assert_eq!(r.ok, 0, "{r:?}");
    assert_eq!(r.errors.get("timeout").copied(), Some(r.failed), "{r:?}");
    assert!(
        served.requests.load(SeqCst) >= r.sent / 2,
        "the requests reached the server: {r:?}"
    );
    // Timed out requests still count from when they were due.
    assert!(
        r.p50_ms() >= 290.0,
        "latency of a timed-out request is its timeout: {r:?}"
    );
}

#[tokio::test]
async fn a_server_that_is_not_there_fails_every_request_with_connect() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut cfg = LoadConfig::new(addr, 100.0);
    cfg.users = 5;
    let load = Load::start(cfg);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = load.stop().await;
    assert_accounted(&r);
    assert_eq!(r.ok, 0);
    assert!(r.errors.keys().all(|k| k.starts_with("connect")), "{r:?}");
}
