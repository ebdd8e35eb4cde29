//! The admin API: token, routes, metrics, and serving the saved table after a restart.

use std::time::Duration;

use testkit::Client;
use wire::{RouteDiff, RouteOp};

use crate::harness::{App, Harness, release, table};

#[tokio::test]
async fn the_admin_api_wants_the_token() {
    let h = Harness::start("").await;
    for auth in [None, Some("Bearer wrong"), Some("Basic abc")] {
        let mut c = Client::connect(h.admin).await.unwrap();
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let r = c.get("/v1/routes", &headers).await.unwrap();
        assert_eq!(r.status, 401, "{auth:?}");
        assert!(r.text().contains("Authorization: Bearer"), "{}", r.text());
    }
    let token_file = h.dir.join("state/admin.token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(h.admin_get("/v1/routes").await.status, 200);
    assert_eq!(h.admin_get("/v1/nothing").await.status, 404);
}

#[tokio::test]
async fn metrics_count_requests_per_release_and_instance() {
    let mut bad = demo_app::Config::new("v2");
    bad.error_rate = 1.0;
    let (v1, v2) = (App::start("v1").await, App::start_with(bad).await);
    let h = Harness::start("[upstream]\neject_after_failures = 0\n").await;
    h.put(&table(vec![release("v2", 0, &[&v2]), release("v1", 100, &[&v1])]))
        .await;
    let mut c = Client::connect(h.web).await.unwrap();
    for _ in 0..30 {
        assert_eq!(c.get("/", &[]).await.unwrap().status, 200);
    }
    let v2_cookie = {
        h.put(&table(vec![release("v2", 100, &[&v2]), release("v1", 0, &[&v1])]))
            .await;
        let r = c.get("/", &[]).await.unwrap();
        assert_eq!(r.status, 500);
        crate::harness::set_cookie(&r).unwrap()
    };
    for _ in 0..9 {
        assert_eq!(c.get("/", &[("cookie", &v2_cookie)]).await.unwrap().status, 500);
    }
    let m = h.metrics().await;
    let v1m = &m.release("v1").unwrap().totals;
    let v2m = &m.release("v2").unwrap().totals;
    assert_eq!((v1m.requests, v1m.responses.c2xx, v1m.errors()), (30, 30, 0));
    assert_eq!((v2m.requests, v2m.responses.c5xx, v2m.upstream_failures), (10, 10, 0));
    assert_eq!(v1m.latency_us.count, 30);
    assert!(v1m.latency_us.quantile_us(0.5).unwrap() > 0.0);
    assert_eq!(m.release("v1").unwrap().instances[0].instance, "v1-0");

    let prom = h.admin_get("/metrics").await;
    assert!(prom.header("content-type").unwrap().starts_with("text/plain"));
    let text = prom.text();
    assert!(
        text.contains("slipway_requests_total{release=\"v1\",instance=\"v1-0\"} 30"),
        "{text}"
    );
    assert!(
        text.contains("slipway_responses_total{release=\"v2\",instance=\"v2-0\",class=\"5xx\"} 10"),
        "{text}"
    );
    assert!(text.contains("slipway_request_duration_seconds_count{release=\"v1\",instance=\"v1-0\"} 30"));
    assert!(text.contains("le=\"+Inf\"} 30"));
}

#[tokio::test]
async fn a_restarted_router_serves_its_saved_table_at_once() {
    let (v1, v2) = (App::start("v1").await, App::start("v2").await);
    let mut h = Harness::start("").await;
    h.put(&table(vec![release("v2", 100, &[&v2]), release("v1", 0, &[&v1])]))
        .await;
    let r = h
        .patch(&RouteDiff {
            expect_generation: None,
            ops: vec![RouteOp::SetWeight {
                release: "v1".into(),
                weight: 0,
            }],
        })
        .await;
    assert_eq!(r.status, 200);
    let before = h.routes().await;
    let cookie = crate::harness::set_cookie(&h.get("/", &[]).await).unwrap();
    let text = crate::harness::config_text(&h.dir, "");
    h.stop().await;
    // Same state folder, new process-level router: same table, same generation,
    // same cookie key (sessions survive), same token.
    let dir = std::mem::replace(&mut h.dir, testkit::TempDir::new("unused"));
    let token = h.token.clone();
    let h2 = Harness::start_with_text(dir, &text).await;
    assert_eq!(h2.token, token);
    let after = h2.routes().await;
    assert_eq!(after, before);
    let r = h2.get("/", &[("cookie", &cookie)]).await;
    assert_eq!(r.text(), "v2");
    assert!(r.header("set-cookie").is_none(), "the session cookie is still valid");
    let _ = Duration::ZERO;
}

#[tokio::test]
async fn the_admin_api_can_listen_on_a_unix_socket() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    let dir = testkit::TempDir::new("unix-admin");
    let sock = dir.join("admin.sock");
    let text = crate::harness::config_text(&dir, "").replace(
        "admin = { listen = \"127.0.0.1:0\" }",
        &format!("admin = {{ listen = \"unix:{}\" }}", sock.display()),
    );
    let raw: wire::router_config::RouterConfigFile = toml::from_str(&text).unwrap();
    let config = router::Config::from_raw(&raw, dir.path()).unwrap();
    let r = router::start(config).await.unwrap();
    assert_eq!(r.admin_addr(), format!("unix:{}", sock.display()));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
    let get = |auth: Option<String>| {
        let sock = sock.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut req = http::Request::get("/v1/status").header("host", "admin");
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let resp = sender
                .send_request(req.body(Empty::<bytes::Bytes>::new()).unwrap())
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.into_body().collect().await.unwrap().to_bytes())
        }
    };
    assert_eq!(get(None).await.0, 401);
    let (status, body) = get(Some(format!("Bearer {}", r.token()))).await;
    assert_eq!(status, 200);
    let st: wire::api::RouterStatus = serde_json::from_slice(&body).unwrap();
    assert_eq!(st.listeners[0].name, "web");
    r.leave(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_supervisor_started_beside_a_running_router_could_not_hold_its_listening_sockets() {
    let mut h = Harness::start("").await;
    let share = |socket: &std::path::Path| serde_json::json!({ "socket": socket }).to_string();
    // Only a socket directly in the state folder (0700) gets them; anything else is refused with the reason.
    let outside = h.dir.join("share.sock");
    let _listening_outside = std::os::unix::net::UnixListener::bind(&outside).unwrap();
    for body in [
        share(&outside),
        share(&h.dir.join("state/../share.sock")),
        share(std::path::Path::new("/tmp/nowhere/x.sock")),
    ] {
        let r = h.admin_send("POST", "/v1/listeners/share", body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.text());
        assert!(r.text().contains("socket_outside_state_folder"), "{}", r.text());
    }
    for bad in ["", "{}", "{\"socket\": 3}", "{\"socket\": \"x\", \"more\": 1}"] {
        let r = h.admin_send("POST", "/v1/listeners/share", bad.to_string()).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let nobody = h.dir.join("state/nobody.sock");
    let r = h.admin_send("POST", "/v1/listeners/share", share(&nobody)).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("share_failed"), "{}", r.text());

    let path = h.dir.join("state/share.sock");
    let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let r = h.admin_send("POST", "/v1/listeners/share", share(&path)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let answer: wire::api::SharedListeners = serde_json::from_slice(&r.body).unwrap();
    let (stream, _) = unix.accept().unwrap();
    let (msg, fds) = plumbing::fds::recv_msg::<wire::api::SharedListeners>(&stream).unwrap();
    assert_eq!(msg, answer);
    assert_eq!((msg.format, msg.pid), (1, std::process::id()));
    assert_eq!(msg.listeners.len(), 1);
    assert_eq!((msg.listeners[0].name.as_str(), fds.len()), ("web", 1));
    let held = std::net::TcpListener::from(fds.into_iter().next().unwrap());
    assert_eq!(held.local_addr().unwrap(), h.web);
    // The very socket: with the router gone, a client waits in its queue instead of being refused.
    h.stop().await;
    let client = std::net::TcpStream::connect(h.web).expect("queued, not refused");
    let (accepted, _) = held.accept().unwrap();
    assert_eq!(accepted.peer_addr().unwrap(), client.local_addr().unwrap());
}
