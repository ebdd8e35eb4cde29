//! A leaving router: idle connections get their next request answered, WebSockets a deadline and 1012.

use std::time::{Duration, Instant};

use crate::harness::{App, Harness, release, table};

fn config_with_listener_deadline(h: &testkit::TempDir, deadline: &str) -> String {
    format!(
        r#"
state_dir = "{}"
admin = {{ listen = "127.0.0.1:0" }}
health = {{ kind = "none" }}
[[listener]]
name = "web"
kind = "http"
addr = "127.0.0.1:0"
drain_deadline = "{deadline}"
"#,
        h.join("state").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_stay_until_the_listener_deadline_when_the_router_leaves_then_get_1012() {
    let v1 = App::start("v1").await;
    let dir = testkit::TempDir::new("leave-ws");
    let text = config_with_listener_deadline(&dir, "800ms");
    let mut h = Harness::start_with_text(dir, &text).await;
    h.put(&table(vec![release("v1", 100, &[&v1])])).await;
    let mut ws = demo_app::ws_client::WsClient::connect(h.web, &[]).await.unwrap();
    assert_eq!(ws.release().await.unwrap(), "v1");
    let status: wire::api::RouterStatus = serde_json::from_slice(&h.admin_get("/v1/status").await.body).unwrap();
    assert_eq!((status.open_websockets, status.open_tcp), (1, 0));
    let drain = h.drain().await;
    let i = drain.instance("v1", "v1-0").unwrap();
    assert_eq!((i.open_websockets, i.open_tcp, i.open_long_lived), (1, 0, 1));
    // Per instance and release in the metrics too (the dashboard shows them per release, not router-wide).
    let m = h.metrics().await;
    let rel = m.release("v1").unwrap();
    assert_eq!((rel.totals.open_websockets, rel.totals.open_tcp), (1, 0));
    assert_eq!(rel.instances[0].counters.open_websockets, 1);
    let prom = h.admin_get("/metrics").await.text();
    assert!(
        prom.contains("slipway_open_websockets 1\n") && prom.contains("slipway_open_tcp_connections 0\n"),
        "{prom}"
    );

    let router = h.router.take().unwrap();
    let left = Instant::now();
    let leaving = tokio::spawn(router.leave(Duration::from_secs(5)));
    // Before the deadline the tunnel still works.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ws.round_trip("still here").await.unwrap(), "still here");
    let closed = loop {
        match ws.round_trip("ping").await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => break e,
        }
        assert!(left.elapsed() < Duration::from_secs(5), "never cut");
    };
    let took = left.elapsed();
    match closed {
        demo_app::ws_client::WsError::Closed { code, reason } => {
            assert_eq!(code, 1012);
            assert_eq!(reason, "router restarting");
        }
        other => panic!("expected a 1012 close, got {other:?}"),
    }
    assert!(took >= Duration::from_millis(800), "cut before the deadline: {took:?}");
    tokio::time::timeout(Duration::from_secs(10), leaving)
        .await
        .expect("the router finishes leaving once its connections are gone")
        .unwrap();
    assert!(left.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keepalive_connection_gets_its_next_request_answered_while_the_router_leaves() {
    let v1 = App::start("v1").await;
    let mut h = Harness::start("").await;
    h.put(&table(vec![release("v1", 100, &[&v1])])).await;
    let mut c = testkit::Client::connect(h.web).await.unwrap();
    assert_eq!(c.get("/", &[]).await.unwrap().status, 200);
    let router = h.router.take().unwrap();
    let leaving = tokio::spawn(router.leave(Duration::from_secs(5)));
    // A request sent just after the router began leaving, on the idle
    // connection, is served (closing it at once would race with it).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = c.get("/", &[]).await.expect("served while leaving");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    // New connections are no longer accepted by this router.
    testkit::wait_for("the connection to close", Duration::from_secs(5), || async {
        c.is_closed().then_some(())
    })
    .await;
    tokio::time::timeout(Duration::from_secs(10), leaving)
        .await
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(h.web).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_deadline_of_zero_cuts_websockets_at_once_when_the_router_leaves() {
    let v1 = App::start("v1").await;
    let dir = testkit::TempDir::new("leave-zero");
    let text = config_with_listener_deadline(&dir, "0");
    let mut h = Harness::start_with_text(dir, &text).await;
    h.put(&table(vec![release("v1", 100, &[&v1])])).await;
    let mut ws = demo_app::ws_client::WsClient::connect(h.web, &[]).await.unwrap();
    assert_eq!(ws.release().await.unwrap(), "v1");
    let left = Instant::now();
    let leaving = tokio::spawn(h.router.take().unwrap().leave(Duration::from_secs(5)));
    let closed = loop {
        match ws.round_trip("ping").await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => break e,
        }
        assert!(left.elapsed() < Duration::from_secs(3), "never cut");
    };
    assert!(
        matches!(closed, demo_app::ws_client::WsError::Closed { code: 1012, .. }),
        "{closed:?}"
    );
    assert!(left.elapsed() < Duration::from_secs(1), "took {:?}", left.elapsed());
    tokio::time::timeout(Duration::from_secs(10), leaving)
        .await
        .unwrap()
        .unwrap();
}

/// Reads one HTTP/2 frame: (type, flags, stream, payload).
async fn read_frame(s: &mut tokio::net::TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut h = [0u8; 9];
    s.read_exact(&mut h).await.ok()?;
    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.ok()?;
    Some((h[3], h[4], stream, payload))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_a_two_phase_goaway_when_the_router_leaves() {
    use tokio::io::AsyncWriteExt;
    let mut h = Harness::start("").await;
    let mut s = tokio::net::TcpStream::connect(h.web).await.unwrap();
    // Preface and an empty SETTINGS frame.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let leaving = tokio::spawn(h.router.take().unwrap().leave(Duration::from_secs(5)));
    let mut goaways = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while goaways.len() < 2 {
        assert!(Instant::now() < deadline, "GOAWAY frames seen: {goaways:?}");
        let Some((kind, flags, _, payload)) = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut s))
            .await
            .unwrap()
        else {
            break;
        };
        match kind {
            // SETTINGS: acknowledge.
            4 if flags & 1 == 0 => s.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await.unwrap(),
            // PING: answer it, which lets the second GOAWAY come.
            6 if flags & 1 == 0 => {
                let mut pong = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                pong.extend_from_slice(&payload);
                s.write_all(&pong).await.unwrap();
            }
            7 => goaways.push(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff),
            _ => {}
        }
    }
    // First "stop opening streams, the ones on their way still count",
    // then the real last stream id once the ping round trip proved the
    // client has seen the first.
    assert_eq!(goaways, vec![0x7fff_ffff, 0], "two-phase GOAWAY");
    tokio::time::timeout(Duration::from_secs(10), leaving)
        .await
        .unwrap()
        .unwrap();
}
