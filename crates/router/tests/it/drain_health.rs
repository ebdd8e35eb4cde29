//! Draining instances, active and passive health, and retries on connect failure.

use std::time::Duration;

use testkit::{Client, wait_for};
use wire::api::DrainState;
use wire::{HealthCheck, HealthKind, HumanDuration, RouteState};

use crate::harness::{App, Harness, release, table};

#[tokio::test]
async fn drain_lets_requests_finish_and_reports_when_it_is_done() {
    let (a, b) = (App::start("v1").await, App::start("v1").await);
    let h = Harness::start("").await;
    // Only A takes new requests at first.
    let mut t = table(vec![release("v1", 100, &[&a, &b])]);
    t.releases[0].instances[1].state = RouteState::Draining;
    h.put(&t).await;
    // A keep-alive client and several slow requests, all on A.
    let mut keepalive = Client::connect(h.web).await.unwrap();
    assert_eq!(
        keepalive.get("/", &[]).await.unwrap().header("x-instance"),
        Some(a.name())
    );
    let web = h.web;
    let slow: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { testkit::get(web, "/sleep?ms=1500", &[]).await }))
        .collect();
    wait_for("slow requests open on A", Duration::from_secs(5), || async {
        let d = h.drain().await;
        (d.instance("v1", "v1-0").unwrap().open_requests == 8).then_some(())
    })
    .await;
    // Now drain A and bring B in.
    t.releases[0].instances[0].state = RouteState::Draining;
    t.releases[0].instances[1].state = RouteState::Active;
    h.put(&t).await;
    let d = h.drain().await;
    let a_status = d.instance("v1", "v1-0").unwrap();
    assert_eq!(a_status.state, DrainState::Draining);
    assert!(!a_status.drained, "requests still open: {a_status:?}");
    assert_eq!(
        a_status.idle_upstream_connections, 0,
        "idle connections to a draining instance are closed"
    );
    // New requests, on the same client connection too, go to B.
    for _ in 0..20 {
        let r = keepalive
            .get("/", &[])
            .await
            .expect("keep-alive connection survives the drain");
        assert_eq!(r.header("x-instance"), Some(b.name()));
    }
    // Every slow request completes normally.
    for s in slow {
        let r = s.await.unwrap().expect("no connection closed mid-request");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-instance"), Some(a.name()));
    }
    let done = wait_for("A drained", Duration::from_secs(5), || async {
        let d = h.drain().await;
        let a = d.instance("v1", "v1-0").unwrap().clone();
        a.drained.then_some(a)
    })
    .await;
    assert_eq!(done.open_requests, 0);
    // Removing A: it disappears from the drain report once nothing is open.
    let mut only_b = table(vec![release("v1", 100, &[&b])]);
    only_b.releases[0].instances[0].id = "v1-1".into();
    h.put(&only_b).await;
    wait_for("A gone from drain status", Duration::from_secs(5), || async {
        h.drain().await.instance("v1", "v1-0").is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn removing_an_instance_mid_request_does_not_cut_it() {
    let (a, b) = (App::start("v1").await, App::start("v1").await);
    let h = Harness::start("").await;
    h.put(&table(vec![release("v1", 100, &[&a])])).await;
    let web = h.web;
    let slow = tokio::spawn(async move { testkit::get(web, "/sleep?ms=800", &[]).await });
    wait_for("request open", Duration::from_secs(5), || async {
        (h.drain().await.instance("v1", "v1-0")?.open_requests == 1).then_some(())
    })
    .await;
    let mut t = table(vec![release("v1", 100, &[&b])]);
    t.releases[0].instances[0].id = "v1-1".into();
    h.put(&t).await;
    let removed = h
        .drain()
        .await
        .instance("v1", "v1-0")
        .cloned()
        .expect("still reported while busy");
    assert_eq!(removed.state, DrainState::Removed);
    assert_eq!(removed.open_requests, 1);
    let r = slow.await.unwrap().unwrap();
    assert_eq!((r.status.as_u16(), r.header("x-instance")), (200, Some(a.name())));
}

fn fast_health(kind: HealthKind) -> HealthCheck {
    HealthCheck {
        kind,
        path: "/healthz".into(),
        interval: HumanDuration::from_millis(50),
        timeout: HumanDuration::from_millis(200),
        rise: 2,
        fall: 2,
    }
}

#[tokio::test]
async fn active_health_checks_eject_and_recover_an_instance() {
    let (mut a, b) = (App::start("v1").await, App::start("v1").await);
    let h = Harness::start("").await;
    let mut t = table(vec![release("v1", 100, &[&a, &b])]);
    t.releases[0].health = Some(fast_health(HealthKind::Http));
    h.put(&t).await;
    a.kill().await;
    wait_for("A marked unhealthy", Duration::from_secs(5), || async {
        (!h.drain().await.instance("v1", "v1-0")?.healthy).then_some(())
    })
    .await;
    let mut c = Client::connect(h.web).await.unwrap();
    for _ in 0..50 {
        let r = c.get("/", &[]).await.unwrap();
        assert_eq!((r.status.as_u16(), r.header("x-instance")), (200, Some(b.name())));
    }
    a.restart().await;
    wait_for("A healthy again", Duration::from_secs(5), || async {
        h.drain().await.instance("v1", "v1-0")?.healthy.then_some(())
    })
    .await;
    let mut seen_a = false;
    for _ in 0..100 {
        let r = c.get("/", &[]).await.unwrap();
        assert_eq!(r.status, 200);
        seen_a |= r.header("x-instance") == Some(a.name());
    }
    assert!(seen_a, "a recovered instance gets traffic again");
}

#[tokio::test]
async fn passive_ejection_takes_a_failing_instance_out() {
    let mut bad = demo_app::Config::new("v1");
    bad.error_rate = 1.0;
    let (a, b) = (App::start_with(bad).await, App::start("v1").await);
    let h = Harness::start("[upstream]\neject_after_failures = 3\nejection_time = \"30s\"\n").await;
    h.put(&table(vec![release("v1", 100, &[&a, &b])])).await;
    let mut c = Client::connect(h.web).await.unwrap();
    let mut errors = 0;
    for _ in 0..100 {
        if c.get("/", &[]).await.unwrap().status == 500 {
            errors += 1;
        }
    }
    assert!(errors <= 3, "at most 3 errors before ejection, got {errors}");
    let m = h.metrics().await;
    let a_metrics = &m.release("v1").unwrap().instances[0];
    assert!(!a_metrics.healthy, "ejected: {a_metrics:?}");
    assert_eq!(a_metrics.counters.responses.c5xx, errors as u64);
}

#[tokio::test]
async fn a_request_that_cannot_connect_is_retried_on_another_instance() {
    let b = App::start("v1").await;
    // Reserve a port, then close it: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let h = Harness::start("[upstream]\neject_after_failures = 0\n").await;
    let mut t = table(vec![release("v1", 100, &[&b])]);
    t.releases[0].instances.insert(
        0,
        wire::Instance {
            id: "dead".into(),
            addr: dead.to_string(),
            state: RouteState::Active,
        },
    );
    h.put(&t).await;
    let mut c = Client::connect(h.web).await.unwrap();
    for _ in 0..100 {
        let r = c.get("/", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let m = h.metrics().await;
    assert_eq!(m.release("v1").unwrap().totals.responses.c2xx, 100);
    assert_eq!(m.release("v1").unwrap().totals.upstream_failures, 0);
}

#[tokio::test]
async fn a_stale_pooled_connection_is_retried() {
    let mut a = App::start("v1").await;
    let h = Harness::start("").await;
    h.put(&table(vec![release("v1", 100, &[&a])])).await;
    let mut c = Client::connect(h.web).await.unwrap();
    assert_eq!(c.get("/", &[]).await.unwrap().status, 200);
    // The upstream restarts: the router's pooled connection is now dead.
    a.kill().await;
    a.restart().await;
    for _ in 0..10 {
        let r = c.get("/", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
}
