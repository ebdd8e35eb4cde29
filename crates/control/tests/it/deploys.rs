//! Every strategy completes under load with no failed request; a bad canary is aborted within seconds.
//! Rollback is a route swap; one deploy runs at a time.

use std::time::{Duration, Instant};

use wire::service::{DeployInfo, DeployPhase, Strategy};

use crate::harness::{Fixture, load};

async fn first(f: &mut Fixture) {
    f.start().await;
    let d = f.deploy("v1", None).await;
    let d = f.wait_deploy(d.id, Duration::from_secs(30)).await;
    assert_eq!(d.outcome.as_deref(), Some("promoted"), "{d:?}");
}

fn assert_no_failures(r: &loadgen::Report, what: &str) {
    assert_eq!(r.failed, 0, "{what}: failed requests {:?} {:?}", r.statuses, r.errors);
    assert_eq!(r.ws_dropped, 0, "{what}: WebSockets dropped");
    assert!(r.ok > 100, "{what}: too little load: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_steps_up_and_promotes_with_zero_failed_requests() {
    let mut f = Fixture::new("");
    first(&mut f).await;
    let load = load(f.web());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let d = f.deploy("v2", Some(Strategy::Canary)).await;
    // The weights step up while it runs.
    let mut weights = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let end = loop {
        let now: DeployInfo = f.api().get(&format!("/v1/deploys/{}", d.id)).await.unwrap();
        weights.push(now.canary_weight);
        if now.finished() {
            break now;
        }
        assert!(Instant::now() < deadline, "canary never finished: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(end.outcome.as_deref(), Some("promoted"), "{end:?}");
    assert!(weights.contains(&10) && weights.contains(&50), "{weights:?}");
    assert!(end.events.iter().any(|e| e.contains("step 2")), "{:?}", end.events);
    // The old release drains its sessions and stops.
    testkit::wait_for("v1 retired", Duration::from_secs(30), || async {
        let s = f.status().await;
        (s.current.as_deref() == Some("v2")
            && !s.instances.iter().any(|i| i.release == "v1" && agent::is_live(i.state)))
        .then_some(())
    })
    .await;
    let r = load.stop().await;
    assert_no_failures(&r, "canary");
    assert!(r.releases.get("v2").copied().unwrap_or(0) > 100, "{:?}", r.releases);
    // History and verdicts are kept.
    let h: wire::service::DeployList = f.api().get("/v1/deploys").await.unwrap();
    assert_eq!(h.deploys[0].id, d.id);
    assert_eq!(h.deploys[0].phase, DeployPhase::Done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_canary_is_aborted_within_seconds_and_the_baseline_keeps_serving() {
    let mut f = Fixture::new("");
    first(&mut f).await;
    let load = load(f.web());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = load.report();
    let d = f.deploy("v3", None).await;
    // Only one deploy at a time.
    let err = f
        .api()
        .post::<_, DeployInfo>(
            "/v1/deploys",
            &wire::service::DeployRequest {
                release: "v4".into(),
                strategy: None,
                template: None,
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("only one deploy"), "{err}");
    let step_seen = testkit::wait_for("canary takes traffic", Duration::from_secs(30), || async {
        let d: DeployInfo = f.api().get(&format!("/v1/deploys/{}", d.id)).await.ok()?;
        (d.phase == DeployPhase::Step || d.finished()).then(Instant::now)
    })
    .await;
    let end = f.wait_deploy(d.id, Duration::from_secs(30)).await;
    let took = step_seen.elapsed();
    assert!(end.aborted(), "{end:?}");
    assert!(
        end.outcome.as_deref().unwrap().contains("error_rate failed"),
        "{:?}",
        end.outcome
    );
    assert!(
        end.verdicts.iter().any(|v| v.outcome == wire::judge::Outcome::Fail),
        "verdicts are recorded"
    );
    assert!(took < Duration::from_secs(15), "abort took {took:?}");
    let routes = f.routes().await;
    assert!(
        routes.releases.iter().any(|r| r.id == "v1" && r.weight == 100),
        "the baseline takes every new session: {routes:?}"
    );
    assert!(
        routes.releases.iter().all(|r| r.id != "v3" || r.weight == 0),
        "{routes:?}"
    );
    assert_eq!(f.status().await.current.as_deref(), Some("v1"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = load.stop().await.since(&before);
    // The only failures are the bad canary's own 500s, before the abort.
    assert_eq!(
        r.failed,
        r.statuses.get(&500).copied().unwrap_or(0),
        "{:?} {:?}",
        r.statuses,
        r.errors
    );
    assert!(r.failed < 60, "too many requests hit the bad canary: {}", r.failed);
    assert_eq!(r.ws_dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_and_blue_green_complete_and_rollback_swaps_back() {
    let mut f = Fixture::new("");
    first(&mut f).await;
    let load = load(f.web());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let d = f.deploy("v2", Some(Strategy::Rolling)).await;
    let end = f.wait_deploy(d.id, Duration::from_secs(60)).await;
    assert_eq!(end.outcome.as_deref(), Some("promoted"), "{end:?}");
    assert!(
        end.events.iter().any(|e| e.contains("2 of 3 old instances retired")),
        "{:?}",
        end.events
    );
    let d = f.deploy("v4", Some(Strategy::BlueGreen)).await;
    let end = f.wait_deploy(d.id, Duration::from_secs(60)).await;
    assert_eq!(end.outcome.as_deref(), Some("promoted"), "{end:?}");
    let t = testkit::wait_for("v4 takes every new session", Duration::from_secs(10), || async {
        let t = f.routes().await;
        (t.releases.first().map(|r| (r.id.as_str(), r.weight)) == Some(("v4", 100))).then_some(t)
    })
    .await;
    assert!(
        t.releases
            .iter()
            .any(|r| r.id == "v2" && r.state == wire::RouteState::Draining),
        "v2 stays warm: {t:?}"
    );
    // Rollback while v2 is warm: a route swap, nothing started.
    let before: Vec<String> = f.status().await.instances.iter().map(|i| i.id.clone()).collect();
    let s: wire::service::ServiceStatus = f.api().post("/v1/rollback", &serde_json::json!({})).await.unwrap();
    assert_eq!(s.current.as_deref(), Some("v2"));
    testkit::wait_for("v2 takes all traffic", Duration::from_secs(10), || async {
        let t = f.routes().await;
        (t.releases.iter().find(|r| r.id == "v2").map(|r| (r.weight, r.state)) == Some((100, wire::RouteState::Active)))
            .then_some(())
    })
    .await;
    let after: Vec<String> = f
        .status()
        .await
        .instances
        .iter()
        .filter(|i| i.release == "v2")
        .map(|i| i.id.clone())
        .collect();
    assert!(!after.is_empty(), "v2's warm instances serve again");
    assert!(
        after.iter().all(|i| before.contains(i)),
        "a rollback by route swap starts nothing: {after:?} (before: {before:?})"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = load.stop().await;
    assert_no_failures(&r, "rolling + blue-green + rollback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_described_by_its_openapi_document_and_wants_the_token() {
    let mut f = Fixture::new("");
    f.start().await;
    let doc: serde_json::Value = f.api().get("/v1/openapi.json").await.unwrap();
    for (method, path, _) in control::ROUTES {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} undocumented");
    }
    let anon = plumbing::client::ApiClient::new(f.api().addr(), None).unwrap();
    let err = anon.get::<serde_json::Value>("/v1/status").await.unwrap_err();
    assert!(
        matches!(&err, plumbing::client::ClientError::Api { status, .. } if status.as_u16() == 401),
        "{err}"
    );
    assert!(
        !err.to_string().contains("401"),
        "the message is words, no status line: {err}"
    );
    let err = f
        .api()
        .post::<_, DeployInfo>("/v1/deploys", &serde_json::json!({"release": "nope"}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("slipway release add"), "{err}");
}

/// The step whose hold ended was judged on the turn before ("still watching") whenever another event of the
/// same turn moved the machine first: every healthy step went to its extension, or was aborted without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_step_was_held_longer_on_the_last_turns_verdict_when_its_hold_ended() {
    let mut f = Fixture::new_with("", |t| {
        t.replace("on_inconclusive = \"continue\"", "on_inconclusive = \"abort\"")
            .replace("hold = \"3s\"", "hold = \"4s\"")
            .replace(
                "[deploy.canary.analysis]\n",
                "[deploy.canary.analysis]\nmin_requests = 10\n",
            )
    });
    first(&mut f).await;
    let load = load(f.web());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let d = f.deploy("v2", Some(Strategy::Canary)).await;
    let end = f.wait_deploy(d.id, Duration::from_secs(60)).await;
    let r = load.stop().await;
    assert_eq!(end.outcome.as_deref(), Some("promoted"), "{end:?}");
    assert!(
        !end.events.iter().any(|e| e.contains("inconclusive")),
        "{:?}",
        end.events
    );
    assert_eq!(r.sent, r.ok + r.failed);
    assert_eq!(r.failed, 0, "{r:?}");
}
