//! Weights, sticky cookies, key buckets, cohort rules and client-version gating.

use std::collections::BTreeMap;

use testkit::Client;
use wire::{CohortRule, RouteState};

use crate::harness::{App, Harness, release, set_cookie, table, tally};

#[tokio::test]
async fn weights_are_honoured_within_a_tolerance() {
    let (v1, v2) = (App::start("v1").await, App::start("v2").await);
    let h = Harness::start("").await;
    h.put(&table(vec![release("v2", 30, &[&v2]), release("v1", 70, &[&v1])]))
        .await;
    let counts = tally(h.web, 2000, &[]).await;
    let share = counts["v2"] as f64 / 2000.0;
    assert!((share - 0.30).abs() < 0.05, "v2 got {share:.3} of requests: {counts:?}");
}

#[tokio::test]
async fn cookie_stickiness_holds_across_table_changes() {
    let (v1, v2, v3) = (App::start("v1").await, App::start("v2").await, App::start("v3").await);
    let h = Harness::start("").await;
    h.put(&table(vec![release("v2", 50, &[&v2]), release("v1", 50, &[&v1])]))
        .await;
    // Collect sessions on both releases.
    let mut sessions: Vec<(String, String)> = Vec::new();
    while sessions.len() < 40 {
        let r = h.get("/", &[]).await;
        sessions.push((set_cookie(&r).expect("a new session gets a cookie"), r.text()));
    }
    assert!(sessions.iter().any(|(_, r)| r == "v1") && sessions.iter().any(|(_, r)| r == "v2"));
    // Weights flip, a new release arrives, v1 drains: every session stays put.
    let mut t = table(vec![
        release("v3", 60, &[&v3]),
        release("v2", 40, &[&v2]),
        release("v1", 0, &[&v1]),
    ]);
    t.releases[2].state = RouteState::Draining;
    h.put(&t).await;
    let mut c = Client::connect(h.web).await.unwrap();
    for (cookie, rel) in &sessions {
        for _ in 0..3 {
            let r = c.get("/", &[("cookie", cookie)]).await.unwrap();
            assert_eq!(&r.text(), rel, "session {cookie} moved");
            assert!(r.header("set-cookie").is_none(), "a sticky session keeps its cookie");
        }
    }
    // Once v1 is down, its sessions move forward and get a new cookie.
    t.releases[2].state = RouteState::Down;
    h.put(&t).await;
    for (cookie, rel) in sessions.iter().filter(|(_, r)| r == "v1") {
        let r = c.get("/", &[("cookie", cookie)]).await.unwrap();
        assert_ne!(&r.text(), rel);
        assert!(set_cookie(&r).is_some());
    }
}

#[tokio::test]
async fn a_tampered_cookie_is_ignored() {
    let (v1, v2) = (App::start("v1").await, App::start("v2").await);
    let h = Harness::start("").await;
    h.put(&table(vec![release("v2", 100, &[&v2]), release("v1", 0, &[&v1])]))
        .await;
    let genuine = set_cookie(&h.get("/", &[]).await).unwrap();
    assert!(genuine.starts_with("slipway_release=v2."));
    // A client that rewrites its cookie to v1 does not get v1 (weight 0).
    let forged = genuine.replacen("=v2.", "=v1.", 1);
    let r = h.get("/", &[("cookie", &forged)]).await;
    assert_eq!(r.text(), "v2");
    assert!(set_cookie(&r).unwrap().starts_with("slipway_release=v2."));
    let garbage = h.get("/", &[("cookie", "slipway_release=v1")]).await;
    assert_eq!(garbage.text(), "v2");
    // A genuine v1 cookie would be honoured: sessions given v1 keep it.
    h.put(&table(vec![release("v2", 0, &[&v2]), release("v1", 100, &[&v1])]))
        .await;
    let v1_cookie = set_cookie(&h.get("/", &[]).await).unwrap();
    h.put(&table(vec![release("v2", 100, &[&v2]), release("v1", 0, &[&v1])]))
        .await;
    assert_eq!(h.get("/", &[("cookie", &v1_cookie)]).await.text(), "v1");
}

async fn key_map(h: &Harness, users: usize) -> BTreeMap<usize, String> {
    let mut c = Client::connect(h.web).await.unwrap();
    let mut out = BTreeMap::new();
    for u in 0..users {
        let r = c.get("/", &[("x-user-id", &format!("user-{u}"))]).await.unwrap();
        assert!(r.header("set-cookie").is_none(), "key affinity needs no cookie");
        out.insert(u, r.text());
    }
    out
}

#[tokio::test]
async fn key_affinity_is_stable_and_a_raised_weight_only_moves_sessions_forward() {
    let (v1, v2) = (App::start("v1").await, App::start("v2").await);
    let h = Harness::start("[affinity]\nmode = \"header\"\nheader = \"x-user-id\"\n").await;
    let canary = |w: u32| table(vec![release("v2", w, &[&v2]), release("v1", 100 - w, &[&v1])]);
    h.put(&canary(10)).await;
    let at10 = key_map(&h, 400).await;
    // An unrelated change (an extra baseline instance) moves nobody.
    let v1b = App::start("v1").await;
    h.put(&table(vec![release("v2", 10, &[&v2]), release("v1", 90, &[&v1, &v1b])]))
        .await;
    assert_eq!(key_map(&h, 400).await, at10);
    let mut previous = at10;
    for w in [25, 50, 90] {
        h.put(&canary(w)).await;
        let now = key_map(&h, 400).await;
        for (u, rel) in &previous {
            if rel == "v2" {
                assert_eq!(now[u], "v2", "user {u} moved back from the canary at weight {w}");
            }
        }
        let share = now.values().filter(|r| *r == "v2").count() as f64 / 400.0;
        assert!((share - w as f64 / 100.0).abs() < 0.08, "weight {w}: share {share}");
        previous = now;
    }
}

#[tokio::test]
async fn cohort_rules_pin_before_weights() {
    let (v1, v2, v3) = (App::start("v1").await, App::start("v2").await, App::start("v3").await);
    let h = Harness::start("").await;
    let mut t = table(vec![
        release("v2", 0, &[&v2]),
        release("v3", 0, &[&v3]),
        release("v1", 100, &[&v1]),
    ]);
    let rule = |release: &str| CohortRule {
        release: release.into(),
        ..Default::default()
    };
    t.cohorts = vec![
        CohortRule {
            header: Some("x-beta".into()),
            equals: Some("yes".into()),
            ..rule("v2")
        },
        CohortRule {
            cookie: Some("team".into()),
            regex: Some("^(qa|dev)-".into()),
            ..rule("v2")
        },
        CohortRule {
            query: Some("preview".into()),
            equals: Some("3".into()),
            ..rule("v3")
        },
    ];
    h.put(&t).await;
    assert_eq!(h.get("/", &[("x-beta", "yes")]).await.text(), "v2");
    assert_eq!(h.get("/", &[("x-beta", "no")]).await.text(), "v1");
    assert_eq!(h.get("/", &[("cookie", "a=b; team=qa-7")]).await.text(), "v2");
    assert_eq!(h.get("/", &[("cookie", "team=ops-1")]).await.text(), "v1");
    assert_eq!(h.get("/?preview=3", &[]).await.text(), "v3");
    assert_eq!(h.get("/?x=1&preview=3", &[]).await.text(), "v3");
    assert_eq!(h.get("/?preview=2", &[]).await.text(), "v1");
    // A cohort pin sets the session cookie, so the tester stays on v2.
    let pinned = h.get("/", &[("x-beta", "yes")]).await;
    let cookie = set_cookie(&pinned).unwrap();
    assert_eq!(h.get("/", &[("cookie", &cookie)]).await.text(), "v2");
    // CIDR: every test client is on loopback.
    t.cohorts = vec![CohortRule {
        cidr: Some("127.0.0.0/8".into()),
        ..rule("v3")
    }];
    h.put(&t).await;
    assert_eq!(h.get("/", &[]).await.text(), "v3");
    t.cohorts = vec![CohortRule {
        cidr: Some("10.0.0.0/8".into()),
        ..rule("v3")
    }];
    h.put(&t).await;
    assert_eq!(h.get("/", &[]).await.text(), "v1");
}

#[tokio::test]
async fn client_versions_gate_releases_and_426_names_what_is_served() {
    let (v1, v2) = (App::start("v1").await, App::start("v2").await);
    let h = Harness::start("").await;
    let mut t = table(vec![release("v2", 50, &[&v2]), release("v1", 50, &[&v1])]);
    t.releases[0].client_versions = Some(">=2.0.0, <3.0.0".into());
    t.releases[1].client_versions = Some("<2.0.0".into());
    h.put(&t).await;
    for _ in 0..20 {
        assert_eq!(h.get("/", &[("x-client-version", "1.4.2")]).await.text(), "v1");
        assert_eq!(h.get("/", &[("x-client-version", "2.1")]).await.text(), "v2");
    }
    // A v1 session cookie does not drag a 2.x client onto v1.
    let v1_cookie = loop {
        let r = h.get("/", &[("x-client-version", "1.0.0")]).await;
        if let Some(c) = set_cookie(&r) {
            break c;
        }
    };
    assert_eq!(
        h.get("/", &[("x-client-version", "2.0.0"), ("cookie", &v1_cookie)])
            .await
            .text(),
        "v2"
    );
    let r = h.get("/", &[("x-client-version", "3.1.0")]).await;
    assert_eq!(r.status, 426);
    assert_eq!(r.header("x-slipway-error"), Some("upgrade_required"));
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["client_version"], "3.1.0");
    let served: Vec<String> = body["served"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}={}",
                s["release"].as_str().unwrap(),
                s["client_versions"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(served, vec!["v2=>=2.0.0, <3.0.0", "v1=<2.0.0"]);
    let bad = h.get("/", &[("x-client-version", "not-a-version")]).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.header("x-slipway-error"), Some("bad_client_version"));
    // No header: any release.
    assert_eq!(h.get("/", &[]).await.status, 200);
}
