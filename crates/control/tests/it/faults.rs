//! Parts of the service killed with SIGKILL and brought back by `slipway up`: the control plane finds them
//! again on their new addresses without being restarted.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use wire::service::{DeployInfo, DeployPhase, HoldReason, Strategy};

use crate::harness::Fixture;

pub(crate) async fn kill9(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    testkit::wait_for(&format!("pid {pid} gone"), Duration::from_secs(5), || async {
        agent::process_start_time(pid).is_none().then_some(())
    })
    .await;
}

/// `slipway up` as the operator runs it: starts what is missing.
pub(crate) fn slipway_up(f: &Fixture) {
    let out = std::process::Command::new(testkit::workspace_bin("slipway"))
        .arg("up")
        .arg("-c")
        .arg(&f.cfg.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// What the router serves at `/` now (the demo app answers with its release).
pub(crate) async fn served(f: &Fixture) -> Option<String> {
    testkit::get(f.web(), "/", &[]).await.ok().map(|r| r.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_kept_calling_a_killed_agent_and_router_on_their_old_ports() {
    let mut f = Fixture::new("");
    f.start().await;
    let d: DeployInfo = f.deploy("v1", Some(Strategy::Rolling)).await;
    f.wait_deploy(d.id, Duration::from_secs(30)).await;
    let (agent, router) = (
        control::agent_running(&f.cfg).unwrap(),
        control::router_running(&f.cfg).unwrap(),
    );
    kill9(agent.pid).await;
    kill9(router.pid).await;
    slipway_up(&f);
    let (agent2, router2) = (
        control::agent_running(&f.cfg).unwrap(),
        control::router_running(&f.cfg).unwrap(),
    );
    assert_ne!(agent2.addr, agent.addr, "the new agent listens elsewhere");
    assert_ne!(router2.addr, router.addr, "the new router listens elsewhere");
    // The same control plane, not restarted, deploys through the new ones.
    let d: DeployInfo = f.deploy("v2", Some(Strategy::Rolling)).await;
    let end = f.wait_deploy(d.id, Duration::from_secs(60)).await;
    assert_eq!(end.outcome.as_deref(), Some("promoted"), "{end:?}");
    testkit::wait_for("the new router serves v2", Duration::from_secs(10), || async {
        (served(&f).await.as_deref() == Some("v2")).then_some(())
    })
    .await;
    let s = f.status().await;
    let gen_shown = s.router.as_ref().map(|r| (r.pid, r.generation));
    assert_eq!(gen_shown.map(|g| g.0), Some(router2.pid), "status shows the new router");
    let r = s.routes.unwrap();
    assert_eq!(
        r.releases.iter().map(|r| (r.id.as_str(), r.weight)).collect::<Vec<_>>(),
        vec![("v2", 100)],
        "{r:?}"
    );
}

/// The table the router itself serves, from its admin API.
pub(crate) async fn router_routes(f: &Fixture) -> wire::RouteTable {
    let r = control::router_running(&f.cfg).expect("a router runs");
    let token = std::fs::read_to_string(f.cfg.layout.router_status().with_file_name("admin.token")).unwrap();
    let api = plumbing::client::ApiClient::new(&r.addr, Some(token.trim().to_string())).unwrap();
    api.get("/v1/routes").await.unwrap()
}

pub(crate) fn weights(t: &wire::RouteTable) -> Vec<(String, u32, wire::RouteState)> {
    t.releases.iter().map(|r| (r.id.clone(), r.weight, r.state)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_went_on_stepping_and_was_reported_promoted_while_its_router_was_dead() {
    let mut f = Fixture::new("");
    f.start().await;
    let d: DeployInfo = f.deploy("v1", None).await;
    f.wait_deploy(d.id, Duration::from_secs(30)).await;
    let d: DeployInfo = f.deploy("v2", Some(Strategy::Canary)).await;
    testkit::wait_for("the canary's first step", Duration::from_secs(30), || async {
        let d: DeployInfo = f.api().get(&format!("/v1/deploys/{}", d.id)).await.ok()?;
        (d.phase == DeployPhase::Step).then_some(())
    })
    .await;
    kill9(control::router_running(&f.cfg).unwrap().pid).await;
    let held = testkit::wait_for("the deploy held", Duration::from_secs(10), || async {
        f.status()
            .await
            .held
            .filter(|h| h.reason == HoldReason::RouterUnreachable)
    })
    .await;
    assert!(
        held.message.starts_with("router unreachable since "),
        "{}",
        held.message
    );
    assert!(held.message.ends_with("UTC, deploy held"), "{}", held.message);
    // Two steps of 3 s would be over by now: the deploy stays where its routes were confirmed.
    let until = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < until {
        let now: DeployInfo = f.api().get(&format!("/v1/deploys/{}", d.id)).await.unwrap();
        assert_eq!((now.phase, now.step), (DeployPhase::Step, Some(0)), "{now:?}");
        assert!(now.detail.starts_with("router unreachable since "), "{}", now.detail);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    slipway_up(&f);
    let end = f.wait_deploy(d.id, Duration::from_secs(60)).await;
    assert_eq!(end.outcome.as_deref(), Some("promoted"), "{end:?}");
    assert!(
        end.events.iter().any(|e| e.ends_with(" held: router unreachable")),
        "{:?}",
        end.events
    );
    assert!(
        end.events.iter().any(|e| e.contains(" going on after ")),
        "{:?}",
        end.events
    );
    // What status shows is what the new router serves.
    let s = testkit::wait_for("the hold over", Duration::from_secs(10), || async {
        let s = f.status().await;
        s.held.is_none().then_some(s)
    })
    .await;
    assert_eq!(weights(&s.routes.unwrap()), weights(&router_routes(&f).await));
    testkit::wait_for("the new router serves v2", Duration::from_secs(10), || async {
        (served(&f).await.as_deref() == Some("v2")).then_some(())
    })
    .await;
}

/// A client of the control plane `slipway up` started.
pub(crate) fn control_api(f: &Fixture) -> plumbing::client::ApiClient {
    let c = control::control_running(&f.cfg).expect("a control plane runs");
    let token = std::fs::read_to_string(f.cfg.layout.control_token()).unwrap();
    plumbing::client::ApiClient::new(&c.addr, Some(token.trim().to_string())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_router_refused_every_connection_until_someone_ran_slipway_up() {
    let mut f = Fixture::new("");
    slipway_up(&f);
    f.api = Some(control_api(&f));
    let d: DeployInfo = f.deploy("v1", Some(Strategy::Rolling)).await;
    f.wait_deploy(d.id, Duration::from_secs(30)).await;
    let (_, new, took) = kill_router_under_load(&f).await;
    eprintln!("router restarted in {} ms", took.as_millis());
    assert!(took < Duration::from_secs(1), "restarted after {took:?}");
    let s = f.status().await;
    let restarts: Vec<_> = s.restarts.iter().map(|p| (p.part, p.restarts, p.pid)).collect();
    assert_eq!(
        restarts,
        vec![(wire::service::SupervisedPart::Router, 1, Some(new.pid))]
    );
    let out = std::process::Command::new(testkit::workspace_bin("slipway"))
        .args(["status", "-c"])
        .arg(&f.cfg.path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("router restarted 1x, last at "), "{text}");
    assert!(text.contains(&format!("(pid {})", new.pid)), "{text}");
    // The agent too; the instances it runs are adopted, not started again.
    let before: Vec<Option<u32>> = s.instances.iter().map(|i| i.pid).collect();
    let agent = control::agent_running(&f.cfg).unwrap();
    kill9(agent.pid).await;
    let new_agent = testkit::wait_for("a new agent", Duration::from_secs(5), || async {
        control::agent_running(&f.cfg).filter(|r| r.pid != agent.pid)
    })
    .await;
    let s = testkit::wait_for("the agent's restart in status", Duration::from_secs(10), || async {
        let s = f.status().await;
        s.restarts
            .iter()
            .any(|p| p.part == wire::service::SupervisedPart::Agent && p.pid == Some(new_agent.pid))
            .then_some(s)
    })
    .await;
    assert_eq!(s.instances.iter().map(|i| i.pid).collect::<Vec<_>>(), before);
}

/// The kernel sockets (`socket:[inode]`) among the descriptors of process `pid`.
fn sockets_of(pid: u32) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|l| l.display().to_string())
                .filter(|l| l.starts_with("socket:"))
                .collect()
        })
        .unwrap_or_default()
}

/// Load through the router while it is killed: nothing refused, at most what was in flight on it failed.
/// Returns the load's report, the new router and how long it took to come.
async fn kill_router_under_load(f: &Fixture) -> (loadgen::Report, control::Running, Duration) {
    let web = f.web();
    let mut c = loadgen::LoadConfig::new(web, 150.0);
    c.users = 20;
    let load = loadgen::Load::start(c);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old = control::router_running(&f.cfg).unwrap();
    kill9(old.pid).await;
    let killed = std::time::Instant::now();
    let new = testkit::wait_for("a new router", Duration::from_secs(10), || async {
        control::router_running(&f.cfg).filter(|r| r.pid != old.pid)
    })
    .await;
    let took = killed.elapsed();
    assert_eq!(f.web(), web, "the new router serves the same listening socket");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = load.stop().await;
    eprintln!("{} sent, {} failed: {:?}", r.sent, r.failed, r.errors);
    assert_eq!(r.sent, r.ok + r.failed);
    let refused: u64 = r
        .errors
        .iter()
        .filter(|(e, _)| e.starts_with("connect: ")) // not "connection: …", a request in flight
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        refused, 0,
        "connections refused while the router restarted: {:?}",
        r.errors
    );
    assert!(r.failed <= 20, "{} failed: {:?} {:?}", r.failed, r.errors, r.statuses);
    // Only requests in flight on the killed router's connections fail: one per user's connection at most.
    assert!(r.ok > 300, "{r:?}");
    (r, new, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_killed_after_its_control_plane_restarted_refused_connections_while_it_rebound() {
    let mut f = Fixture::new("");
    slipway_up(&f);
    f.api = Some(control_api(&f));
    let d: DeployInfo = f.deploy("v1", Some(Strategy::Rolling)).await;
    f.wait_deploy(d.id, Duration::from_secs(30)).await;
    // The supervisor dies and comes back while its router keeps running: the router was not started by it.
    let router = control::router_running(&f.cfg).unwrap();
    kill9(control::control_running(&f.cfg).unwrap().pid).await;
    slipway_up(&f);
    f.api = Some(control_api(&f));
    assert_eq!(
        control::router_running(&f.cfg).unwrap().pid,
        router.pid,
        "the same router serves"
    );
    // It holds the router's very listening socket (the same kernel socket), not one of its own.
    let control_pid = control::control_running(&f.cfg).unwrap().pid;
    testkit::wait_for(
        "the control plane holds the router's socket",
        Duration::from_secs(10),
        || async {
            let shared = sockets_of(router.pid).intersection(&sockets_of(control_pid)).count();
            (shared > 0).then_some(())
        },
    )
    .await;
    kill_router_under_load(&f).await;
    let restarts: Vec<_> = f.status().await.restarts.iter().map(|p| (p.part, p.restarts)).collect();
    assert_eq!(restarts, vec![(wire::service::SupervisedPart::Router, 1)]);
}

#[test]
fn slipway_up_waited_20s_and_left_processes_behind_when_the_listener_port_was_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let f = Fixture::new_with("", |t| {
        t.replace("addr = \"127.0.0.1:0\"", &format!("addr = \"127.0.0.1:{port}\""))
    });
    let started = std::time::Instant::now();
    let out = std::process::Command::new(testkit::workspace_bin("slipway"))
        .arg("up")
        .arg("-c")
        .arg(&f.cfg.path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port} for [[listener]] web")),
        "{err}"
    );
    assert!(err.contains("already in use"), "{err}");
    assert!(err.contains("stopped what it had started"), "{err}");
    assert!(
        control::control_running(&f.cfg).is_none(),
        "a control plane was left running"
    );
    assert!(control::agent_running(&f.cfg).is_none(), "an agent was left running");
    assert!(control::router_running(&f.cfg).is_none());
}

/// The pid of a live instance of `release`.
async fn instance_pid(f: &Fixture, release: &str) -> (String, u32) {
    let s = f.status().await;
    s.instances
        .iter()
        .find(|i| i.release == release && i.state == wire::agent::InstanceState::Ready)
        .and_then(|i| Some((i.id.clone(), i.pid?)))
        .unwrap_or_else(|| panic!("no ready instance of {release}: {:?}", s.instances))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_killed_mid_canary_are_replaced_and_the_deploy_still_promotes() {
    let mut f = Fixture::new_with("", |t| t.replace("hold = \"3s\"", "hold = \"5s\""));
    f.start().await;
    let d: DeployInfo = f.deploy("v1", None).await;
    f.wait_deploy(d.id, Duration::from_secs(30)).await;
    let load = crate::harness::load(f.web());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let d: DeployInfo = f.deploy("v2", Some(Strategy::Canary)).await;
    testkit::wait_for("the canary's first step", Duration::from_secs(30), || async {
        let d: DeployInfo = f.api().get(&format!("/v1/deploys/{}", d.id)).await.ok()?;
        (d.phase == DeployPhase::Step).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // One canary instance and one baseline instance, killed from outside.
    let (canary, canary_pid) = instance_pid(&f, "v2").await;
    let (base, base_pid) = instance_pid(&f, "v1").await;
    kill9(canary_pid).await;
    kill9(base_pid).await;
    let end = f.wait_deploy(d.id, Duration::from_secs(60)).await;
    assert_eq!(end.outcome.as_deref(), Some("promoted"), "{end:?}");
    let s = f.status().await;
    let restarted = s.instances.iter().find(|i| i.id == canary).unwrap();
    assert_eq!(restarted.restarts, 1, "{restarted:?}");
    assert_ne!(restarted.pid, Some(canary_pid));
    let r = load.stop().await;
    eprintln!(
        "{} sent, {} failed: {:?} {:?}; {base} killed too",
        r.sent, r.failed, r.errors, r.statuses
    );
    assert_eq!(r.sent, r.ok + r.failed);
    assert_eq!(r.failed, 0, "{:?} {:?}", r.errors, r.statuses);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_two_seconds_to_an_app_that_exits_at_once_on_sigterm_survive_rolling_and_blue_green() {
    let slow = "[start.env]\nDEMO_LATENCY = \"2s\"\nDEMO_EXIT_ON_SIGTERM = \"1\"\n";
    // The blue-green's old set leaves after a short rollback window, so that its SIGTERM comes in the test too.
    let short_window = |t: String| t.replace("rollback_window = \"60s\"", "rollback_window = \"2s\"");
    let mut f = Fixture::build("", short_window, &[], &[("v1", slow), ("v2", slow), ("v4", slow)]);
    f.start().await;
    let d: DeployInfo = f.deploy("v1", None).await;
    f.wait_deploy(d.id, Duration::from_secs(30)).await;
    let mut c = loadgen::LoadConfig::new(f.web(), 20.0);
    c.users = 60;
    let load = loadgen::Load::start(c);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (release, strategy) in [("v2", Strategy::Rolling), ("v4", Strategy::BlueGreen)] {
        let d: DeployInfo = f.deploy(release, Some(strategy)).await;
        let end = f.wait_deploy(d.id, Duration::from_secs(90)).await;
        assert_eq!(end.outcome.as_deref(), Some("promoted"), "{end:?}");
        // The old instances are stopped (SIGTERM, and they exit at once) only once the router reports nothing
        // open on them.
        testkit::wait_for("the old release stopped", Duration::from_secs(60), || async {
            let s = f.status().await;
            let old_live = s
                .instances
                .iter()
                .any(|i| i.release != release && agent::is_live(i.state));
            (!old_live).then_some(())
        })
        .await;
    }
    let r = load.stop().await;
    eprintln!(
        "{} sent, {} ok, {} failed: {:?} {:?}",
        r.sent, r.ok, r.failed, r.errors, r.statuses
    );
    assert_eq!(r.sent, r.ok + r.failed);
    assert!(r.ok > 200, "{r:?}");
    assert_eq!(r.failed, 0, "{:?} {:?}", r.errors, r.statuses);
}
