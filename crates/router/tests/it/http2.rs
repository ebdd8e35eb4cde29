//! The HTTP/2 client path: bodies both ways, forwarded headers, errors as responses, resets, many streams, leaving.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::harness::{App, Harness, release, table};

async fn connect<B>(addr: std::net::SocketAddr) -> SendRequest<B>
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

/// A request body of `left` chunks and no known length (so no Content-Length goes out).
struct Chunks {
    left: usize,
    chunk: Bytes,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }
}

type Got = (u16, http::HeaderMap, Bytes);

async fn send<B>(s: &mut SendRequest<B>, req: http::Request<B>) -> Got
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().to_string();
    let resp = s.send_request(req).await.expect("h2 request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap_or_else(|e| panic!("{path}: {e:?}"));
    (parts.status.as_u16(), parts.headers, body.to_bytes())
}

fn get(authority: std::net::SocketAddr, path: &str) -> http::request::Builder {
    http::Request::get(format!("http://{authority}{path}"))
}

#[tokio::test]
async fn http2_bodies_stream_both_ways_with_and_without_a_length() {
    let a = App::start("v1").await;
    let h = Harness::start("").await;
    h.put(&table(vec![release("v1", 100, &[&a])])).await;
    let mut full = connect::<Full<Bytes>>(h.web).await;
    let payload = Bytes::from(vec![b'z'; 300_000]);
    let req = http::Request::post(format!("http://{}/echo", h.web))
        .body(Full::new(payload.clone()))
        .unwrap();
    let (status, _, body) = send(&mut full, req).await;
    assert_eq!((status, body.len()), (200, 300_000));
    assert_eq!(body, payload);
    // Bigger than any flow-control window: the upstream is read only as fast as the client takes it.
    let (status, _, body) = send(&mut full, get(h.web, "/bytes?n=3000000").body(Full::default()).unwrap()).await;
    assert_eq!((status, body.len()), (200, 3_000_000));
    // A chunked upstream response becomes DATA frames, its framing gone.
    let req = get(h.web, "/stream?chunks=50&size=1000").body(Full::default()).unwrap();
    let (status, _, body) = send(&mut full, req).await;
    assert_eq!((status, body), (200, Bytes::from(vec![b'c'; 50_000])));
    let req = http::Request::head(format!("http://{}/bytes?n=10", h.web))
        .body(Full::default())
        .unwrap();
    let (status, headers, body) = send(&mut full, req).await;
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(headers["content-length"], "10");
    // No length: the upstream gets it chunked.
    let mut streamed = connect::<Chunks>(h.web).await;
    let req = http::Request::post(format!("http://{}/echo", h.web))
        .body(Chunks {
            left: 5,
            chunk: Bytes::from(vec![b'q'; 10_000]),
        })
        .unwrap();
    let (status, _, body) = send(&mut streamed, req).await;
    assert_eq!((status, body), (200, Bytes::from(vec![b'q'; 50_000])));
    let m = h.metrics().await;
    let t = &m.release("v1").unwrap().totals;
    assert_eq!(t.bytes_in, 350_000);
    assert!(t.bytes_out >= 3_400_000, "{}", t.bytes_out);
}

#[tokio::test]
async fn http2_requests_reach_the_upstream_with_forwarded_headers_their_host_and_one_cookie_line() {
    let a = App::start("v1").await;
    let h = Harness::start("").await;
    h.put(&table(vec![release("v1", 100, &[&a])])).await;
    let mut s = connect::<Full<Bytes>>(h.web).await;
    let req = http::Request::get("http://example.test:8080/headers?x=1")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("x-forwarded-for", "10.0.0.1")
        .header("x-probe", "yes")
        .body(Full::default())
        .unwrap();
    let (status, _, body) = send(&mut s, req).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{text}");
    for want in [
        "host: example.test:8080",
        "cookie: a=1; b=2",
        "x-forwarded-for: 10.0.0.1, 127.0.0.1",
        "x-forwarded-proto: http",
        "x-probe: yes",
    ] {
        assert!(text.lines().any(|l| l == want), "no {want:?} in:\n{text}");
    }
    assert_eq!(text.matches("cookie:").count(), 1, "{text}");
}

#[tokio::test]
async fn http2_failures_are_answered_with_their_code_and_a_new_session_gets_its_cookie() {
    let mut a = App::start("v1").await;
    let h = Harness::start("").await;
    let mut s = connect::<Full<Bytes>>(h.web).await;
    let (status, headers, body) = send(&mut s, get(h.web, "/").body(Full::default()).unwrap()).await;
    assert_eq!(
        (status, &headers["x-slipway-error"]),
        (503, &"no_release".parse::<http::HeaderValue>().unwrap())
    );
    assert!(String::from_utf8_lossy(&body).contains("\"error\":\"no_release\""));
    h.put(&table(vec![release("v1", 100, &[&a])])).await;
    let (status, headers, body) = send(&mut s, get(h.web, "/").body(Full::default()).unwrap()).await;
    assert_eq!((status, body.as_ref()), (200, &b"v1\n"[..]));
    assert!(headers.contains_key("set-cookie"), "{headers:?}");
    a.kill().await;
    let (status, headers, _) = send(&mut s, get(h.web, "/").body(Full::default()).unwrap()).await;
    assert_eq!(status, 502);
    assert_eq!(headers["x-slipway-error"], "upstream_unreachable");
}

#[tokio::test]
async fn a_stream_the_client_resets_leaves_the_connection_serving_and_the_instance_with_nothing_open() {
    let a = App::start("v1").await;
    let h = Harness::start("").await;
    h.put(&table(vec![release("v1", 100, &[&a])])).await;
    let mut s = connect::<Full<Bytes>>(h.web).await;
    let slow = s.send_request(get(h.web, "/sleep?ms=3000").body(Full::default()).unwrap());
    // Dropping the response future resets the stream (RST_STREAM CANCEL).
    assert!(tokio::time::timeout(Duration::from_millis(300), slow).await.is_err());
    let (status, _, body) = send(&mut s, get(h.web, "/").body(Full::default()).unwrap()).await;
    assert_eq!((status, body.as_ref()), (200, &b"v1\n"[..]));
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let d = h.drain().await;
        let open = d.instance("v1", "v1-0").unwrap().open_requests;
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reset request is still open at the instance: {open}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_concurrent_streams_on_one_connection_are_all_answered() {
    let a = App::start("v1").await;
    let h = Harness::start("").await;
    h.put(&table(vec![release("v1", 100, &[&a])])).await;
    let s = connect::<Full<Bytes>>(h.web).await;
    let mut tasks = Vec::new();
    for i in 0..300 {
        let mut s = s.clone();
        let path = if i % 3 == 0 {
            "/sleep?ms=50".to_string()
        } else {
            format!("/bytes?n={}", 1000 + i)
        };
        let req = get(h.web, &path).body(Full::default()).unwrap();
        tasks.push(tokio::spawn(async move { send(&mut s, req).await }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, _, body) = t.await.unwrap();
        assert_eq!(status, 200, "stream {i}");
        if i % 3 != 0 {
            assert_eq!(body.len(), 1000 + i, "stream {i}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_in_flight_when_the_router_leaves_are_answered() {
    let a = App::start("v1").await;
    let mut h = Harness::start("").await;
    h.put(&table(vec![release("v1", 100, &[&a])])).await;
    let mut s = connect::<Full<Bytes>>(h.web).await;
    let mut slow = Vec::new();
    for _ in 0..5 {
        let mut s = s.clone();
        let req = get(h.web, "/sleep?ms=700").body(Full::default()).unwrap();
        slow.push(tokio::spawn(async move { send(&mut s, req).await }));
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while h.drain().await.instance("v1", "v1-0").unwrap().open_requests < 5 {
        assert!(Instant::now() < deadline, "the requests never reached the instance");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let leaving = tokio::spawn(h.router.take().unwrap().leave(Duration::from_secs(5)));
    for t in slow {
        let (status, _, body) = t.await.unwrap();
        assert_eq!((status, body.as_ref()), (200, &b"v1\n"[..]));
    }
    tokio::time::timeout(Duration::from_secs(10), leaving)
        .await
        .unwrap()
        .unwrap();
    // After the GOAWAY the connection takes no new stream.
    let late = s.send_request(get(a.addr, "/").body(Full::default()).unwrap()).await;
    assert!(late.is_err(), "a stream opened after the router left");
}
