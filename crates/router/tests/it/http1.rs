//! The HTTP/1 fast path byte by byte: framing, pipelining, 100-continue, smuggling, keep-alive.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{App, Harness, release, table};

/// A response read off a raw socket.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response for a request with `method` from `s`, leaving any
/// following bytes in `buf`. Decodes chunked bodies; reads to EOF if neither
/// length nor chunked is given.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, method: &str) -> Raw {
    let deadline = Duration::from_secs(10);
    let (status, headers, head_len) = loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut hs);
        if let httparse::Status::Complete(n) = r.parse(buf).expect("valid response head") {
            let headers: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).to_string()))
                .collect();
            break (r.code.unwrap(), headers, n);
        }
        let mut tmp = [0u8; 65536];
        let n = tokio::time::timeout(deadline, s.read(&mut tmp))
            .await
            .expect("response in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed before a response head; got {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&tmp[..n]);
    };
    buf.drain(..head_len);
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    let no_body = method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    if no_body {
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(s, buf).await;
            };
            let size = usize::from_str_radix(
                std::str::from_utf8(&buf[..line_end])
                    .unwrap()
                    .split(';')
                    .next()
                    .unwrap()
                    .trim(),
                16,
            )
            .unwrap();
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                fill(s, buf).await;
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
            if size == 0 {
                break;
            }
        }
    } else if let Some(len) = find("content-length") {
        let len: usize = len.parse().unwrap();
        while buf.len() < len {
            fill(s, buf).await;
        }
        body = buf.drain(..len).collect();
    } else {
        loop {
            let mut tmp = [0u8; 65536];
            let n = tokio::time::timeout(deadline, s.read(&mut tmp)).await.unwrap().unwrap();
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        body = std::mem::take(buf);
    }
    Raw { status, headers, body }
}

async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut tmp = [0u8; 65536];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut tmp))
        .await
        .unwrap()
        .unwrap();
    assert!(n > 0, "connection closed mid-body");
    buf.extend_from_slice(&tmp[..n]);
}

async fn closed(s: &mut TcpStream) -> bool {
    let mut tmp = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut tmp)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

async fn setup() -> (App, Harness) {
    let a = App::start("v1").await;
    let h = Harness::start("").await;
    h.put(&table(vec![release("v1", 100, &[&a])])).await;
    (a, h)
}

#[tokio::test]
async fn chunked_request_bodies_pass_through() {
    let (_a, h) = setup().await;
    let mut s = TcpStream::connect(h.web).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.write_all(b"6;ext\r\n world\r\n0\r\nx-t: 1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, "POST").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello world"[..]));
    // The connection is still good.
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut s, &mut buf, "GET").await.body, b"v1\n");
}

#[tokio::test]
async fn chunked_responses_pass_through_and_are_decoded_for_http_1_0() {
    let (_a, h) = setup().await;
    let mut s = TcpStream::connect(h.web).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /stream?chunks=50&size=1000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf, "GET").await;
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body.len(), 50_000);
    s.write_all(b"GET /stream?chunks=2&size=7 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf, "GET").await.body.len(), 14);
    // An HTTP/1.0 client cannot read chunked: plain bytes, then close.
    let mut s = TcpStream::connect(h.web).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /stream?chunks=3&size=5 HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf, "GET").await;
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.body, b"ccccccccccccccc");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (_a, h) = setup().await;
    let mut s = TcpStream::connect(h.web).await.unwrap();
    s.write_all(
        b"GET /status/201 HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n\
        abcGET /status/202 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut s, &mut buf, "GET").await.status, 201);
    let echo = read_response(&mut s, &mut buf, "POST").await;
    assert_eq!((echo.status, echo.body.as_slice()), (200, &b"abc"[..]));
    assert_eq!(read_response(&mut s, &mut buf, "GET").await.status, 202);
}

#[tokio::test]
async fn expect_100_continue_is_relayed_before_the_body() {
    let (_a, h) = setup().await;
    let mut s = TcpStream::connect(h.web).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let interim = read_response(&mut s, &mut buf, "POST").await;
    assert_eq!(interim.status, 100);
    s.write_all(b"body").await.unwrap();
    let r = read_response(&mut s, &mut buf, "POST").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"body"[..]));
}

#[tokio::test]
async fn large_uploads_stream_through() {
    let (_a, h) = setup().await;
    let mut c = testkit::Client::connect(h.web).await.unwrap();
    let payload = Bytes::from((0..6_000_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let r = c.send("POST", "/echo", &[], payload.clone()).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == payload, "echoed body differs");
    assert_eq!(c.get("/", &[]).await.unwrap().text(), "v1");
}

#[tokio::test]
async fn smuggling_shapes_are_refused_and_the_connection_closed() {
    let (_a, h) = setup().await;
    for (req, status) in [
        (
            &b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            400,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
            400,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
    ] {
        let mut s = TcpStream::connect(h.web).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf, "POST").await;
        assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(req));
        assert!(r.header("x-slipway-error").is_some());
        assert!(
            closed(&mut s).await,
            "connection kept open after {:?}",
            String::from_utf8_lossy(req)
        );
    }
}

#[tokio::test]
async fn keep_alive_rules_for_http_1_0_and_1_1() {
    let (_a, h) = setup().await;
    // 1.1 with Connection: close.
    let mut s = TcpStream::connect(h.web).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, "GET").await;
    assert_eq!(r.header("connection"), Some("close"));
    assert!(closed(&mut s).await);
    // 1.0 with keep-alive stays open.
    let mut s = TcpStream::connect(h.web).await.unwrap();
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut s, &mut buf, "GET").await;
        assert_eq!(r.body, b"v1\n");
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    // HEAD and 204 have no body and leave the connection usable.
    s.write_all(b"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf, "HEAD").await.status, 200);
    s.write_all(b"GET /status/204 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf, "GET").await.status, 204);
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut s, &mut buf, "GET").await.body, b"v1\n");
    assert!(closed(&mut s).await, "plain HTTP/1.0 closes");
}

#[tokio::test]
async fn forwarded_headers_and_absolute_targets() {
    let (_a, h) = setup().await;
    let mut s = TcpStream::connect(h.web).await.unwrap();
    s.write_all(
        b"GET http://example.test:8080/headers?x=1 HTTP/1.1\r\nHost: other\r\nX-Forwarded-For: 10.1.1.1\r\n\
        X-Forwarded-Proto: https\r\nConnection: keep-alive, x-drop-me\r\nX-Drop-Me: 1\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, "GET").await;
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert!(text.contains("host: example.test:8080"), "{text}");
    assert!(text.contains("x-forwarded-for: 10.1.1.1, 127.0.0.1"), "{text}");
    assert!(
        text.contains("x-forwarded-proto: http\n"),
        "clients cannot claim https: {text}"
    );
    assert!(
        !text.contains("x-drop-me"),
        "headers named by Connection are dropped: {text}"
    );
}

#[tokio::test]
async fn oversized_heads_are_refused() {
    let (_a, h) = setup().await;
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        many.push_str(&format!("x-h{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    let mut s = TcpStream::connect(h.web).await.unwrap();
    s.write_all(many.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut s, &mut buf, "GET").await.status, 431);
    let mut huge = String::from("GET / HTTP/1.1\r\nHost: x\r\nx-big: ");
    huge.push_str(&"a".repeat(70_000));
    let mut s = TcpStream::connect(h.web).await.unwrap();
    let _ = s.write_all(huge.as_bytes()).await;
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut s, &mut buf, "GET").await.status, 431);
}
