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

/// Whether the router closes `s` within `limit` (reads until EOF).
async fn closes_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut tmp = [0u8; 4096];
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        match tokio::time::timeout(limit, s.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
    false
}

#[tokio::test]
async fn at_max_connections_the_connection_idle_longest_is_closed_for_a_new_client() {
    let a = App::start("v1").await;
    let dir = testkit::TempDir::new("router");
    let text = crate::harness::config_text(&dir, "") + "max_connections = 3\n";
    let h = Harness::start_with_text(dir, &text).await;
    h.put(&table(vec![release("v1", 100, &[&a])])).await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(h.web).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut tmp = [0u8; 1024];
        assert!(s.read(&mut tmp).await.unwrap() > 0);
        idle.push(s);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut slow_head = TcpStream::connect(h.web).await.unwrap();
    slow_head.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    // The cap is reached: a new client still gets its answer.
    assert_eq!(h.get("/", &[]).await.status, 200);
    assert!(
        closes_within(&mut idle[0], Duration::from_secs(2)).await,
        "the oldest idle one stays"
    );
    // The slow head is kept while an idle connection can go instead.
    assert_eq!(h.get("/", &[]).await.status, 200);
    assert!(closes_within(&mut idle[1], Duration::from_secs(2)).await);
    slow_head.write_all(b"Host: x\r\n\r\n").await.unwrap();
    let mut tmp = [0u8; 1024];
    let n = slow_head.read(&mut tmp).await.unwrap();
    assert!(String::from_utf8_lossy(&tmp[..n]).starts_with("HTTP/1.1 200"));
}

/// Reads HTTP/2 frames off `s` until a GOAWAY (true) or EOF/timeout (false).
async fn goaway_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = Vec::new();
    let t0 = Instant::now();
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf[3] == 7 {
                return true;
            }
            if buf.len() < 9 + len {
                break;
            }
            buf.drain(..9 + len);
        }
        let left = limit.saturating_sub(t0.elapsed());
        let mut tmp = [0u8; 4096];
        match tokio::time::timeout(left, s.read(&mut tmp)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&tmp[..n]),
            _ => return false,
        }
    }
}

#[tokio::test]
async fn an_http2_connection_that_sends_only_its_preface_gets_goaway_at_the_handshake_deadline() {
    let h = Harness::start("[client]\nh2_handshake_timeout = \"300ms\"\nh2_idle_timeout = \"300ms\"\n").await;
    let mut s = TcpStream::connect(h.web).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let t0 = Instant::now();
    assert!(goaway_within(&mut s, Duration::from_secs(3)).await, "no GOAWAY");
    assert!(t0.elapsed() >= Duration::from_millis(250), "GOAWAY before the deadline");
    assert!(closes_within(&mut s, Duration::from_secs(3)).await);
}

/// A request body that sends one byte every `gap`, `left` times.
struct SlowBody {
    left: usize,
    gap: Duration,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for SlowBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        std::task::ready!(self.sleep.as_mut().poll(cx));
        self.left -= 1;
        let next = tokio::time::Instant::now() + self.gap;
        self.sleep.as_mut().reset(next);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(b"x")))))
    }
}

#[tokio::test]
async fn an_http2_body_sent_slowly_is_not_in_the_instance_latency() {
    use http_body_util::BodyExt;
    let a = App::start("v1").await;
    let h = Harness::start("").await;
    h.put(&table(vec![release("v1", 100, &[&a])])).await;
    let io = TcpStream::connect(h.web).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let gap = Duration::from_millis(300);
    let body = SlowBody {
        left: 3,
        gap,
        sleep: Box::pin(tokio::time::sleep(gap)),
    };
    let req = http::Request::post(format!("http://{}/echo", h.web))
        .body(body)
        .unwrap();
    let t0 = Instant::now();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "xxx");
    assert!(t0.elapsed() >= Duration::from_millis(850), "the body was not slow");
    let m = h.metrics().await;
    let lat = &m.release("v1").unwrap().totals.latency_us;
    assert_eq!(lat.count, 1);
    assert!(
        lat.sum_us < 300_000,
        "the client's 900 ms are in the instance's latency: {} µs",
        lat.sum_us
    );
}

#[tokio::test]
async fn a_keep_alive_connection_idle_past_its_buffer_release_serves_on_as_before() {
    let a = App::start("v1").await;
    let h = Harness::start("").await;
    h.put(&table(vec![release("v1", 100, &[&a])])).await;
    let mut c = testkit::Client::connect(h.web).await.unwrap();
    for round in 0..3 {
        let r = c.get("/stream?chunks=20&size=1000", &[]).await.unwrap();
        assert_eq!((r.status.as_u16(), r.body.len()), (200, 20_000), "round {round}");
        // Idle longer than the 500 ms after which its buffers are given back.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let r = c
            .send("POST", "/echo", &[], bytes::Bytes::from(vec![b'z'; 30_000]))
            .await
            .unwrap();
        assert_eq!((r.status.as_u16(), r.body.len()), (200, 30_000), "round {round}");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert!(!c.is_closed());
}
