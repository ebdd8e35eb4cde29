//! Slow clients: a head has one deadline however it trickles in, a slow body gets 408, and neither
//! is ever held against the instance (not its failure, not its latency).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{App, Harness, release, table};

const FAST: &str = "[client]\nhead_timeout = \"1s\"\nbody_grace = \"500ms\"\nbody_min_rate = 1000\n";

/// Writes `bytes` one at a time every `gap` until the router answers or closes; returns the answer.
async fn trickle(s: &mut TcpStream, bytes: &[u8], gap: Duration) -> String {
    let mut out = vec![0u8; 4096];
    for b in bytes.iter().cycle() {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        if let Ok(r) = tokio::time::timeout(gap, s.read(&mut out)).await {
            let n = r.unwrap_or(0);
            return String::from_utf8_lossy(&out[..n]).into_owned();
        }
    }
    let n = s.read(&mut out).await.unwrap_or(0);
    String::from_utf8_lossy(&out[..n]).into_owned()
}

#[tokio::test]
async fn a_head_sent_a_byte_at_a_time_gets_408_at_the_head_deadline_not_later() {
    let a = App::start("v1").await;
    let h = Harness::start(FAST).await;
    h.put(&table(vec![release("v1", 100, &[&a])])).await;
    let mut s = TcpStream::connect(h.web).await.unwrap();
    let t0 = Instant::now();
    // Each byte comes well within the old per-read timeout; the head never ends.
    let text = trickle(
        &mut s,
        b"GET / HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        Duration::from_millis(100),
    )
    .await;
    let took = t0.elapsed();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(h.get("/", &[]).await.status, 200);
}

#[tokio::test]
async fn a_body_sent_a_byte_at_a_time_gets_408_and_is_not_held_against_the_instance() {
    let a = App::start("v1").await;
    let h = Harness::start(FAST).await;
    h.put(&table(vec![release("v1", 100, &[&a])])).await;
    let mut s = TcpStream::connect(h.web).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab")
        .await
        .unwrap();
    let t0 = Instant::now();
    let text = trickle(&mut s, b"x", Duration::from_millis(200)).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(3), "took {:?}", t0.elapsed());
    let m = h.metrics().await;
    let v1 = &m.release("v1").unwrap().totals;
    assert_eq!(v1.upstream_failures, 0);
    assert_eq!(v1.latency_us.count, 0, "the client's pace is in the instance's latency");
    assert_eq!(v1.responses.c4xx + v1.responses.c5xx, 0);
    assert_eq!(m.unrouted.responses.c4xx, 1);
    assert!(m.release("v1").unwrap().instances[0].healthy);
    // A body at a fair pace still goes through.
    let mut s = TcpStream::connect(h.web).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nab")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(b"cd").await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("abcd"), "{text}");
}
