//! HTTP/2 (h2c and over TLS), TLS with ALPN, WebSocket upgrades, request bodies, h2c upstreams and raw TCP listeners.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use testkit::TempDir;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls;
use wire::UpstreamProtocol;

use crate::harness::{App, Harness, config_text, release, table};

/// GETs `paths` over one HTTP/2 connection; returns (status, body, version) each.
async fn h2_get<S>(io: S, authority: &str, paths: &[&str]) -> Vec<(u16, String, http::Version)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let mut out = Vec::new();
    for p in paths {
        let req = http::Request::get(format!("http://{authority}{p}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.expect("h2 request");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        out.push((
            parts.status.as_u16(),
            String::from_utf8_lossy(&body).trim().to_string(),
            parts.version,
        ));
    }
    out
}

#[tokio::test]
async fn http2_cleartext_clients_are_served() {
    let a = App::start("v1").await;
    let h = Harness::start("").await;
    h.put(&table(vec![release("v1", 100, &[&a])])).await;
    let s = tokio::net::TcpStream::connect(h.web).await.unwrap();
    let got = h2_get(s, &h.web.to_string(), &["/", "/status/201", "/"]).await;
    assert_eq!(got[0], (200, "v1".into(), http::Version::HTTP_2));
    assert_eq!(got[1].0, 201);
    assert_eq!(got[2].1, "v1");
}

#[tokio::test]
async fn h2c_upstreams_are_spoken_to_in_http2() {
    let a = App::start("v1").await;
    let h = Harness::start("").await;
    let mut t = table(vec![release("v1", 100, &[&a])]);
    t.releases[0].protocol = UpstreamProtocol::H2c;
    h.put(&t).await;
    for _ in 0..20 {
        let r = h.get("/headers", &[("x-probe", "1")]).await;
        assert_eq!(r.status, 200);
        assert!(r.text().contains("x-probe: 1"), "{}", r.text());
        assert!(r.text().contains("x-forwarded-for: 127.0.0.1"), "{}", r.text());
    }
    let d = h.drain().await;
    assert_eq!(
        d.instance("v1", "v1-0").unwrap().open_upstream_connections,
        1,
        "one shared h2 connection"
    );
}

#[tokio::test]
async fn request_bodies_and_large_responses_pass_through() {
    let a = App::start("v1").await;
    let h = Harness::start("").await;
    h.put(&table(vec![release("v1", 100, &[&a])])).await;
    let mut c = testkit::Client::connect(h.web).await.unwrap();
    let payload = Bytes::from(vec![b'z'; 300_000]);
    let r = c.send("POST", "/echo", &[], payload.clone()).await.unwrap();
    assert_eq!(r.body, payload);
    let r = c.get("/bytes?n=5000000", &[]).await.unwrap();
    assert_eq!(r.body.len(), 5_000_000);
    let m = h.metrics().await;
    let t = &m.release("v1").unwrap().totals;
    assert_eq!(t.bytes_in, 300_000);
    assert!(t.bytes_out >= 5_300_000, "{}", t.bytes_out);
}

#[tokio::test]
async fn websockets_pass_through_the_router() {
    let (v1, v2) = (App::start("v1").await, App::start("v2").await);
    let h = Harness::start("").await;
    h.put(&table(vec![release("v2", 0, &[&v2]), release("v1", 100, &[&v1])]))
        .await;
    let mut ws = demo_app::ws_client::WsClient::connect(h.web, &[])
        .await
        .expect("websocket through router");
    assert_eq!(ws.release().await.unwrap(), "v1");
    assert_eq!(ws.round_trip("hello").await.unwrap(), "hello");
    let d = h.drain().await;
    assert_eq!(d.instance("v1", "v1-0").unwrap().open_long_lived, 1);
    // A route change does not touch the open socket.
    h.put(&table(vec![release("v2", 100, &[&v2]), release("v1", 0, &[&v1])]))
        .await;
    for i in 0..10 {
        assert_eq!(ws.round_trip(&format!("m{i}")).await.unwrap(), format!("m{i}"));
    }
    assert_eq!(ws.release().await.unwrap(), "v1");
    ws.close().await.unwrap();
    testkit::wait_for(
        "websocket counted closed",
        std::time::Duration::from_secs(5),
        || async { (h.drain().await.instance("v1", "v1-0")?.open_long_lived == 0).then_some(()) },
    )
    .await;
    // New sockets go to the new release.
    let mut ws2 = demo_app::ws_client::WsClient::connect(h.web, &[]).await.unwrap();
    assert_eq!(ws2.release().await.unwrap(), "v2");
}

fn tls_files(dir: &TempDir) -> rustls::pki_types::CertificateDer<'static> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
    ck.cert.der().clone()
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    cert: &rustls::pki_types::CertificateDer<'static>,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.expect("tls handshake")
}

#[tokio::test]
async fn tls_listeners_negotiate_h2_and_http1_with_alpn() {
    let a = App::start("v1").await;
    let dir = TempDir::new("tls");
    let cert = tls_files(&dir);
    let text = config_text(&dir, "").replace(
        "addr = \"127.0.0.1:0\"",
        "addr = \"127.0.0.1:0\"\ntls = { cert = \"cert.pem\", key = \"key.pem\" }",
    );
    let h = Harness::start_with_text(dir, &text).await;
    h.put(&table(vec![release("v1", 100, &[&a])])).await;

    let s = tls_connect(h.web, &cert, b"h2").await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let got = h2_get(s, "localhost", &["/", "/headers"]).await;
    assert_eq!(
        (got[0].0, got[0].1.as_str(), got[0].2),
        (200, "v1", http::Version::HTTP_2)
    );
    assert!(got[1].1.contains("x-forwarded-proto: https"), "{}", got[1].1);

    let s = tls_connect(h.web, &cert, b"http/1.1").await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_11);
    let cookie = resp.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    assert!(
        cookie.ends_with("; Secure"),
        "cookies on TLS listeners are Secure: {cookie}"
    );
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "v1\n");
}

#[tokio::test]
async fn a_bad_certificate_is_a_config_problem() {
    let dir = TempDir::new("badtls");
    std::fs::write(dir.join("cert.pem"), "not a cert").unwrap();
    let text = config_text(&dir, "").replace(
        "addr = \"127.0.0.1:0\"",
        "addr = \"127.0.0.1:0\"\ntls = { cert = \"cert.pem\", key = \"missing.pem\" }",
    );
    let raw: wire::router_config::RouterConfigFile = toml::from_str(&text).unwrap();
    let err = router::Config::from_raw(&raw, dir.path()).unwrap_err();
    assert!(err.to_string().contains("listener[0].tls"), "{err}");
}

#[tokio::test]
async fn raw_tcp_listeners_proxy_bytes_with_client_ip_affinity() {
    let (v1, v2) = (App::start("v1").await, App::start("v2").await);
    let dir = TempDir::new("tcp");
    let text = format!(
        "{}\n[[listener]]\nname = \"game\"\nkind = \"tcp\"\naddr = \"127.0.0.1:0\"\n",
        config_text(&dir, "")
    );
    let h = Harness::start_with_text(dir, &text).await;
    h.put(&table(vec![release("v2", 50, &[&v2]), release("v1", 50, &[&v1])]))
        .await;
    let game = h.router().listener_addr("game").unwrap();
    // The demo app speaks HTTP; through the TCP listener it is just bytes.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let r = testkit::get(game, "/", &[]).await.unwrap();
        assert_eq!(r.status, 200);
        seen.insert(r.text());
    }
    assert_eq!(seen.len(), 1, "one client IP, one release: {seen:?}");
    testkit::wait_for("tcp bytes counted", std::time::Duration::from_secs(5), || async {
        let m = h.metrics().await;
        let total: u64 = m.releases.iter().map(|r| r.totals.bytes_out).sum();
        (total > 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn websockets_get_1012_at_the_drain_deadline_of_a_downed_instance_and_not_before() {
    let (v1, v2) = (App::start("v1").await, App::start("v2").await);
    let h = Harness::start("").await;
    let mut t = table(vec![release("v2", 0, &[&v2]), release("v1", 100, &[&v1])]);
    t.releases[1].drain_deadline = Some(wire::HumanDuration::from_millis(600));
    h.put(&t).await;
    let mut ws = demo_app::ws_client::WsClient::connect(h.web, &[]).await.unwrap();
    assert_eq!(ws.release().await.unwrap(), "v1");
    // Draining keeps long-lived connections: no cut.
    t.releases[1].state = wire::RouteState::Draining;
    t.releases[1].weight = 0;
    t.releases[0].weight = 100;
    h.put(&t).await;
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    assert_eq!(ws.round_trip("still there").await.unwrap(), "still there");
    // Down: the connection lives until the deadline, then gets 1012.
    t.releases[1].state = wire::RouteState::Down;
    h.put(&t).await;
    let downed = std::time::Instant::now();
    assert_eq!(
        ws.round_trip("before the deadline").await.unwrap(),
        "before the deadline"
    );
    let closed = loop {
        match ws.round_trip("ping").await {
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            Err(e) => break e,
        }
        assert!(downed.elapsed() < std::time::Duration::from_secs(5), "never cut");
    };
    let took = downed.elapsed();
    assert!(
        matches!(closed, demo_app::ws_client::WsError::Closed { code: 1012, .. }),
        "expected a 1012 close, got {closed:?}"
    );
    assert!(
        took >= std::time::Duration::from_millis(550),
        "cut before the deadline: {took:?}"
    );
    // A reconnect lands on the release the session belongs to now.
    let mut again = demo_app::ws_client::WsClient::connect(h.web, &[]).await.unwrap();
    assert_eq!(again.release().await.unwrap(), "v2");
    testkit::wait_for(
        "long-lived count back to 0",
        std::time::Duration::from_secs(5),
        || async { (h.drain().await.instance("v1", "v1-0")?.open_long_lived == 0).then_some(()) },
    )
    .await;
}
