//! The control plane killed with SIGKILL during a canary and started again: the deploy completes.
//! Nothing starts twice and no request fails.

use std::process::{Command, Stdio};
use std::time::Duration;

use plumbing::client::ApiClient;
use wire::service::{DeployInfo, DeployPhase, DeployRequest};

use crate::harness::{Fixture, load};

fn spawn_control(f: &Fixture) -> std::process::Child {
    Command::new(testkit::workspace_bin("slipway"))
        .args(["control", "--config"])
        .arg(&f.cfg.path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn client(f: &Fixture, pid: u32) -> ApiClient {
    let running = testkit::wait_for("control plane up", Duration::from_secs(20), || async {
        control::control_running(&f.cfg).filter(|r| r.pid == pid)
    })
    .await;
    let token = std::fs::read_to_string(f.cfg.layout.control_token()).unwrap();
    ApiClient::new(&running.addr, Some(token.trim().to_string())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_killed_at_several_points_finishes_the_deploy() {
    // Holds long enough that a restarted control plane still finds each step running.
    let f = Fixture::new_with("", |t| t.replace("hold = \"3s\"", "hold = \"6s\""));
    let mut cp = spawn_control(&f);
    let api = client(&f, cp.id()).await;
    let d: DeployInfo = api
        .post(
            "/v1/deploys",
            &DeployRequest {
                release: "v1".into(),
                strategy: None,
                template: None,
            },
        )
        .await
        .unwrap();
    testkit::wait_for("v1 up", Duration::from_secs(30), || async {
        let d: DeployInfo = api.get(&format!("/v1/deploys/{}", d.id)).await.ok()?;
        d.finished().then_some(())
    })
    .await;
    let load = load(f.web());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let d: DeployInfo = api
        .post(
            "/v1/deploys",
            &DeployRequest {
                release: "v2".into(),
                strategy: None,
                template: None,
            },
        )
        .await
        .unwrap();
    // Kill it while the canary starts, during step 1, during step 2.
    let points = [
        (DeployPhase::Starting, None),
        (DeployPhase::Step, Some(0)),
        (DeployPhase::Step, Some(1)),
    ];
    let mut api = api;
    let mut hit = Vec::new();
    for point in points {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let seen = loop {
            let now: DeployInfo = api.get(&format!("/v1/deploys/{}", d.id)).await.unwrap();
            let seen = (now.phase, now.step);
            if seen == point || now.finished() || std::time::Instant::now() > deadline {
                break seen;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        cp.kill().unwrap();
        cp.wait().unwrap();
        hit.push(seen);
        // The router and the instances do not notice.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cp = spawn_control(&f);
        api = client(&f, cp.id()).await;
    }
    assert_eq!(hit, points, "the kills hit the deploy where they were meant to");
    let end = testkit::wait_for("deploy done after the restarts", Duration::from_secs(60), || async {
        let d: DeployInfo = api.get(&format!("/v1/deploys/{}", d.id)).await.ok()?;
        d.finished().then_some(d)
    })
    .await;
    assert_eq!(end.outcome.as_deref(), Some("promoted"), "{end:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = load.stop().await;
    assert_eq!(r.failed, 0, "{:?} {:?}", r.statuses, r.errors);
    assert_eq!(r.ws_dropped, 0);
    // Nothing started twice: v2's instance numbers are 0..count (the canary's
    // 2, then 1 more to reach 3 at promotion), never more.
    let s: wire::service::ServiceStatus = api.get("/v1/status").await.unwrap();
    let mut v2: Vec<String> = s
        .instances
        .iter()
        .filter(|i| i.release == "v2")
        .map(|i| i.id.clone())
        .collect();
    v2.sort();
    assert_eq!(v2, vec!["v2-0", "v2-1", "v2-2"], "{v2:?}");
    cp.kill().unwrap();
    cp.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_flows_without_a_control_plane_and_a_new_one_reattaches() {
    let mut f = Fixture::new("");
    f.start().await;
    let d: DeployInfo = f.deploy("v1", None).await;
    f.wait_deploy(d.id, Duration::from_secs(30)).await;
    let before: Vec<(String, Option<u32>)> = f
        .status()
        .await
        .instances
        .iter()
        .map(|i| (i.id.clone(), i.pid))
        .collect();
    let load = load(f.web());
    f.stop_control().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(load.report().ok > 100);
    f.start().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: Vec<(String, Option<u32>)> = f
        .status()
        .await
        .instances
        .iter()
        .map(|i| (i.id.clone(), i.pid))
        .collect();
    assert_eq!(
        after, before,
        "a restarted control plane re-attaches, it does not restart instances"
    );
    let r = load.stop().await;
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert_eq!(f.state_dir(), f.cfg.layout.root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cohort_change_in_slipway_toml_applies_live() {
    let mut f = Fixture::new("");
    f.start().await;
    let d: DeployInfo = f.deploy("v1", None).await;
    f.wait_deploy(d.id, Duration::from_secs(30)).await;
    let d: DeployInfo = f.deploy("v2", None).await;
    testkit::wait_for("canary step", Duration::from_secs(30), || async {
        let d: DeployInfo = f.api().get(&format!("/v1/deploys/{}", d.id)).await.ok()?;
        (d.phase == DeployPhase::Step).then_some(())
    })
    .await;
    f.api()
        .post::<_, DeployInfo>("/v1/deploy/pause", &serde_json::json!({}))
        .await
        .unwrap();
    // Testers with x-beta: 1 go to v2 whatever the weights.
    let text = std::fs::read_to_string(f.dir.join("slipway.toml")).unwrap()
        + "\n[[routing.cohort]]\nrelease = \"v2\"\nheader = \"x-beta\"\nequals = \"1\"\n";
    std::fs::write(f.dir.join("slipway.toml"), text).unwrap();
    // The control plane notices the file change by itself; an explicit reload
    // answers what it applied (nothing left if the watcher was first).
    let _: serde_json::Value = f.api().post("/v1/config/reload", &serde_json::json!({})).await.unwrap();
    testkit::wait_for("beta testers on v2", Duration::from_secs(10), || async {
        let mut all = true;
        for _ in 0..10 {
            let rep = testkit::get(f.web(), "/", &[("x-beta", "1")]).await.ok()?;
            all &= rep.text() == "v2";
        }
        all.then_some(())
    })
    .await;
    // A bad edit is refused and the running config stays.
    std::fs::write(f.dir.join("slipway.toml"), "[service]\nname = \"bad name\"\n").unwrap();
    let err = f
        .api()
        .post::<_, serde_json::Value>("/v1/config/reload", &serde_json::json!({}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("service.name"), "{err}");
    f.api()
        .post::<_, DeployInfo>("/v1/deploy/abort", &serde_json::json!({"reason": "test over"}))
        .await
        .unwrap();
}

/// A session on the dashboard at `addr`: logs in with the control plane's token, returns the cookie.
async fn dashboard_session(addr: std::net::SocketAddr, token: &str) -> String {
    let mut c = testkit::Client::connect(addr).await.unwrap();
    let r = c
        .send(
            "POST",
            "/login",
            &[("content-type", "application/x-www-form-urlencoded")],
            format!("token={token}").into_bytes().into(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 303, "{}", r.text());
    let cookie = r.header("set-cookie").unwrap();
    cookie.split(';').next().unwrap().to_string()
}

/// The number of points each plot line of deploy `id`'s page has (`data-points` of every line drawn).
async fn plotted(addr: std::net::SocketAddr, cookie: &str, id: i64) -> Vec<usize> {
    let r = testkit::get(addr, &format!("/deploy/{id}"), &[("cookie", cookie)])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let page = r.text();
    let plots = page.split("Canary against baseline").nth(1).unwrap_or_default();
    plots
        .split("data-points=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_past_deploys_plots_were_lost_when_the_control_plane_restarted() {
    let mut f = Fixture::new("");
    f.start().await;
    let d: DeployInfo = f.deploy("v1", None).await;
    f.wait_deploy(d.id, Duration::from_secs(30)).await;
    let load = load(f.web());
    let d: DeployInfo = f.deploy("v2", None).await;
    let end = f.wait_deploy(d.id, Duration::from_secs(60)).await;
    load.stop().await;
    assert_eq!(end.outcome.as_deref(), Some("promoted"), "{:?}", end.events);
    let token = f.control.as_ref().unwrap().control.token.clone();
    let addr = f.control.as_ref().unwrap().dashboard_addr.unwrap();
    let before = plotted(addr, &dashboard_session(addr, &token).await, d.id).await;
    assert!(!before.is_empty() && before.iter().all(|n| *n > 0), "{before:?}");
    let saved = f.state_dir().join(format!("control/plots/{}.json", d.id));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777, 0o600);

    f.stop_control().await;
    f.start().await;
    let addr = f.control.as_ref().unwrap().dashboard_addr.unwrap();
    let after = plotted(addr, &dashboard_session(addr, &token).await, d.id).await;
    assert_eq!(
        after, before,
        "the restarted control plane's page plots what the first one saw"
    );
}
