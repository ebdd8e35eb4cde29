//! Request smuggling attacks sent through a real router to a recording upstream: each is refused
//! with 400 and the connection closed, and nothing smuggled arrives upstream.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::Harness;
use crate::recorder::Recorder;

async fn router_to(rec: &Recorder) -> Harness {
    let h = Harness::start("").await;
    let t = crate::harness::table(vec![
        wire::Release::new("v1", 100).with_instance("v1-0", rec.addr.to_string()),
    ]);
    h.put(&t).await;
    h
}

/// Sends `bytes` on a fresh connection; returns everything read until the router closes.
async fn exchange(h: &Harness, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(h.web).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "the router kept the connection open after {:?}",
        String::from_utf8_lossy(&out)
    );
    out
}

#[tokio::test]
async fn connection_content_length_smuggles_no_request_to_the_upstream() {
    let rec = Recorder::start().await;
    let h = router_to(&rec).await;
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    for header in [
        "Connection: content-length",
        "Connection: keep-alive, Content-Length",
        "connection: CONTENT-LENGTH , close",
        "Connection: transfer-encoding",
        "Connection: host",
        "Connection: x\r\nConnection: Host",
    ] {
        let req = format!(
            "POST /front HTTP/1.1\r\nHost: x\r\n{header}\r\nContent-Length: {}\r\n\r\n",
            smuggled.len()
        );
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(smuggled);
        let out = exchange(&h, &bytes).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400"), "{header}: {text}");
        assert!(
            text.contains("connection: close") || text.contains("Connection: close"),
            "{text}"
        );
        assert_eq!(text.matches("HTTP/1.1").count(), 1, "one answer only: {text}");
    }
    // A plain request still goes through, and it is the only one the upstream ever saw.
    let r = h.get("/after", &[]).await;
    assert_eq!(r.status, 200);
    let (seen, garbage) = rec.take();
    assert!(garbage.is_empty(), "{garbage:?}");
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(targets, ["/after"]);
    assert_eq!(seen[0].header("x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test]
async fn lenient_host_and_target_shapes_get_400() {
    let rec = Recorder::start().await;
    let h = router_to(&rec).await;
    for req in [
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a, b\r\n\r\n",
        "GET http://u:p@evil.example/ HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET evil HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET * HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let out = exchange(&h, req.as_bytes()).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400"), "{req:?}: {text}");
        assert!(text.contains("bad_request"), "{text}");
    }
    assert_eq!(rec.count(), 0);
}
