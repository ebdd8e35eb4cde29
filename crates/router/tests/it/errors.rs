//! Every failure becomes a response with a reason; bad tables are refused and change nothing.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::{RouteDiff, RouteOp};

use crate::harness::{App, Harness, release, table};

fn reason(r: &testkit::Reply) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("error bodies are JSON");
    v["reason"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn no_release_is_a_503_with_a_reason() {
    let h = Harness::start("").await;
    let r = h.get("/", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-slipway-error"), Some("no_release"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(reason(&r).contains("no release"), "{}", r.text());
}

#[tokio::test]
async fn an_unreachable_release_is_a_502_with_a_reason() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let h = Harness::start("").await;
    let mut t = table(vec![wire::Release::new("v1", 100)]);
    t.releases[0] = t.releases[0].clone().with_instance("v1-0", dead.to_string());
    h.put(&t).await;
    let r = h.get("/", &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-slipway-error"), Some("upstream_unreachable"));
    assert!(reason(&r).contains(&dead.to_string()), "{}", r.text());
    let m = h.metrics().await;
    assert_eq!(m.release("v1").unwrap().totals.upstream_failures, 1);
    assert_eq!(m.release("v1").unwrap().totals.responses.c5xx, 1);
}

#[tokio::test]
async fn a_slow_upstream_is_a_504() {
    let a = App::start("v1").await;
    let h = Harness::start("[upstream]\nresponse_timeout = \"300ms\"\n").await;
    h.put(&table(vec![release("v1", 100, &[&a])])).await;
    let r = h.get("/sleep?ms=3000", &[]).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.header("x-slipway-error"), Some("upstream_timeout"));
    // The router is fine afterwards.
    assert_eq!(h.get("/", &[]).await.status, 200);
}

#[tokio::test]
async fn a_malformed_request_gets_a_4xx_not_a_reset() {
    let a = App::start("v1").await;
    let h = Harness::start("").await;
    h.put(&table(vec![release("v1", 100, &[&a])])).await;
    let mut s = tokio::net::TcpStream::connect(h.web).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[tokio::test]
async fn a_bad_table_is_refused_with_every_problem_and_the_old_one_keeps_serving() {
    let a = App::start("v1").await;
    let h = Harness::start("").await;
    let good = h.put(&table(vec![release("v1", 100, &[&a])])).await;
    let mut bad = table(vec![release("v1", 100, &[&a]), release("v1", 5, &[&a])]);
    bad.releases[1].instances[0].addr = "not-an-address".into();
    bad.releases[0].client_versions = Some(">>1".into());
    let r = h.put_raw(&bad).await;
    assert_eq!(r.status, 422);
    let body: wire::api::ErrorBody = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body.error, "invalid_table");
    assert!(body.problems.len() >= 3, "{:?}", body.problems);
    // A diff naming things that do not exist is refused too.
    let r = h
        .patch(&RouteDiff {
            expect_generation: None,
            ops: vec![RouteOp::SetWeight {
                release: "v9".into(),
                weight: 1,
            }],
        })
        .await;
    assert_eq!(r.status, 422);
    // A stale generation is a conflict.
    let r = h
        .patch(&RouteDiff {
            expect_generation: Some(good + 5),
            ops: vec![],
        })
        .await;
    assert_eq!(r.status, 409);
    // Nothing changed.
    let now = h.routes().await;
    assert_eq!(now.generation, good);
    assert_eq!(now.releases.len(), 1);
    assert_eq!(h.get("/", &[]).await.text(), "v1");
    // Garbage JSON is a 400 that says why.
    let auth = format!("Bearer {}", h.token);
    let mut c = testkit::Client::connect(h.admin).await.unwrap();
    let r = c
        .send("PUT", "/v1/routes", &[("authorization", &auth)], "{nope".into())
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("not a valid route table"), "{}", r.text());
}
