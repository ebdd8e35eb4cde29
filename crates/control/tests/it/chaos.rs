//! Chaos: under `slipway up` and load, a rolling, canary or blue-green deploy, and at a random moment of it a kill -9
//! of the control plane, the agent, the router, an app instance, or the router of a supervisor that was itself
//! killed and started again while the router ran. The deploy still promotes, the router serves what `status` shows,
//! nothing started twice, and no request fails except those in flight on what was killed.
//!
//! The moment is uniform over the whole deploy: the first deploy of each strategy in a test process is a rehearsal
//! without a kill that measures how long one takes here, and later ones are killed at a random point of that span.
//!
//! One run per kind in the suite; `bench/chaos/run.sh` sets `SLIPWAY_CHAOS_RUNS` for more, and every run prints a
//! `chaos {json}` line that the script sums up.

use std::time::{Duration, Instant};

use wire::service::{DeployInfo, Strategy};

use crate::faults::{control_api, kill9, router_routes, slipway_up, weights};
use crate::harness::Fixture;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Control,
    Agent,
    Router,
    Instance,
    /// The control plane killed and started again (by `slipway up`) first; then, at the moment, its router.
    RouterAfterControl,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Control => "control",
            Kind::Agent => "agent",
            Kind::Router => "router",
            Kind::Instance => "instance",
            Kind::RouterAfterControl => "router after control",
        }
    }
}

fn runs() -> u64 {
    std::env::var("SLIPWAY_CHAOS_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// Kills a part of kind `kind`; returns what was killed (a pid, and the instance id for an instance).
async fn kill(f: &Fixture, kind: Kind, rng: &mut fastrand::Rng) -> (u32, Option<String>) {
    let pid = match kind {
        Kind::Control => control::control_running(&f.cfg).map(|r| r.pid),
        Kind::Agent => control::agent_running(&f.cfg).map(|r| r.pid),
        Kind::Router | Kind::RouterAfterControl => control::router_running(&f.cfg).map(|r| r.pid),
        Kind::Instance => {
            // At some moments none is ready (a blue-green switch's last instants): the first one that is.
            let ready = testkit::wait_for("a ready instance", Duration::from_secs(30), || async {
                let ready: Vec<(String, u32)> = agent::saved_instances(f.cfg.state_dir())
                    .unwrap()
                    .into_iter()
                    .filter(|i| i.state == wire::agent::InstanceState::Ready)
                    .filter_map(|i| Some((i.id, i.pid?)))
                    .collect();
                (!ready.is_empty()).then_some(ready)
            })
            .await;
            let (id, pid) = ready[rng.usize(0..ready.len())].clone();
            kill9(pid).await;
            return (pid, Some(id));
        }
    };
    let pid = pid.expect("the part runs");
    kill9(pid).await;
    (pid, None)
}

/// How long until what was killed is back: a new process (the control plane comes back with `slipway up`, as
/// nothing supervises it), or the instance ready again (or stopped, if its release left meanwhile).
async fn recovered(f: &Fixture, kind: Kind, pid: u32, id: Option<&str>) -> Duration {
    let t = Instant::now();
    if kind == Kind::Control {
        slipway_up(f);
    }
    testkit::wait_for("the killed part back", Duration::from_secs(30), || async {
        let back = match kind {
            Kind::Control => control::control_running(&f.cfg).is_some_and(|r| r.pid != pid),
            Kind::Agent => control::agent_running(&f.cfg).is_some_and(|r| r.pid != pid),
            Kind::Router | Kind::RouterAfterControl => control::router_running(&f.cfg).is_some_and(|r| r.pid != pid),
            // Ready again under a new pid, or not wanted any more (an old release's instance, retired meanwhile).
            Kind::Instance => agent::saved_instances(f.cfg.state_dir()).unwrap().iter().all(|i| {
                Some(i.id.as_str()) != id
                    || (i.pid != Some(pid) && i.state == wire::agent::InstanceState::Ready)
                    || !agent::is_live(i.state)
            }),
        };
        back.then_some(())
    })
    .await;
    t.elapsed()
}

/// How long an unkilled deploy of each strategy took in this process (its rehearsal).
static SPANS: std::sync::Mutex<Vec<(Strategy, u64)>> = std::sync::Mutex::new(Vec::new());

/// A deploy of `release` that is let finish; returns how long it took.
async fn rehearse(f: &Fixture, release: &str, strategy: Strategy) -> u64 {
    let t = Instant::now();
    let d: DeployInfo = f.deploy(release, Some(strategy)).await;
    let end = f.wait_deploy(d.id, Duration::from_secs(60)).await;
    assert_eq!(end.outcome.as_deref(), Some("promoted"), "rehearsal: {:?}", end.events);
    let ms = t.elapsed().as_millis() as u64;
    SPANS.lock().unwrap().push((strategy, ms));
    ms
}

/// The control plane killed and started again by `slipway up`, its router left running.
async fn restart_control(f: &mut Fixture) {
    kill9(control::control_running(&f.cfg).unwrap().pid).await;
    slipway_up(f);
    f.api = Some(control_api(f));
}

/// One deploy over v1 with `strategy` (v2, or v4 after a rehearsal with v2), killed once at a random moment.
async fn run(kind: Kind, strategy: Strategy, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut f = Fixture::new_with("", |t| t.replace("hold = \"3s\"", "hold = \"2s\""));
    slipway_up(&f);
    f.api = Some(control_api(&f));
    let d: DeployInfo = f.deploy("v1", Some(Strategy::Rolling)).await;
    f.wait_deploy(d.id, Duration::from_secs(30)).await;
    if kind == Kind::RouterAfterControl {
        restart_control(&mut f).await;
    }
    let load = crate::harness::load(f.web());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let known = SPANS.lock().unwrap().iter().find(|s| s.0 == strategy).map(|s| s.1);
    let (release, span) = match known {
        Some(ms) => ("v2", ms),
        None => ("v4", rehearse(&f, "v2", strategy).await),
    };
    let d: DeployInfo = f.deploy(release, Some(strategy)).await;
    let at = rng.u64(0..span);
    tokio::time::sleep(Duration::from_millis(at)).await;
    let phase = f
        .api()
        .get::<DeployInfo>(&format!("/v1/deploys/{}", d.id))
        .await
        .map(|d| d.phase.as_str());
    let (pid, id) = kill(&f, kind, &mut rng).await;
    let recovery = recovered(&f, kind, pid, id.as_deref()).await;
    f.api = Some(control_api(&f));
    let end = f.wait_deploy(d.id, Duration::from_secs(90)).await;
    let s = testkit::wait_for("the hold over", Duration::from_secs(10), || async {
        let s = f.status().await;
        s.held.is_none().then_some(s)
    })
    .await;
    let r = load.stop().await;
    let line = serde_json::json!({
        "kind": kind.name(), "strategy": strategy.as_str(), "seed": seed, "at_ms": at, "span_ms": span,
        "phase": phase.unwrap_or("?"), "outcome": end.outcome, "recovery_ms": recovery.as_millis() as u64,
        "sent": r.sent, "failed": r.failed, "errors": r.errors, "statuses": r.statuses,
        "ws_dropped": r.ws_dropped, "ws_1012": r.ws_closed_1012,
    });
    println!("chaos {line}");
    let ctx = format!("{line}");
    assert_eq!(end.outcome.as_deref(), Some("promoted"), "{ctx} {:?}", end.events);
    assert_eq!(r.sent, r.ok + r.failed, "{ctx}");
    // Only what was in flight on a killed router (one request per user's connection) or instance may fail.
    let allowed = match kind {
        Kind::Router | Kind::RouterAfterControl => 20,
        Kind::Instance => 5,
        Kind::Control | Kind::Agent => 0,
    };
    assert!(r.failed <= allowed, "{ctx}");
    let refused: u64 = r
        .errors
        .iter()
        .filter(|(e, _)| e.starts_with("connect: ")) // not "connection: …", a request in flight
        .map(|(_, n)| n)
        .sum();
    assert_eq!(refused, 0, "{ctx}");
    if matches!(kind, Kind::Control | Kind::Agent) {
        assert_eq!(r.ws_dropped, 0, "WebSockets close only with 1012: {ctx}");
    }
    assert_eq!(
        weights(&s.routes.clone().unwrap()),
        weights(&router_routes(&f).await),
        "{ctx}"
    );
    // Nothing started twice: the release's instances are numbered 0..count (a killed one restarts under its id).
    let mut ids: Vec<String> = s
        .instances
        .iter()
        .filter(|i| i.release == release)
        .map(|i| i.id.clone())
        .collect();
    ids.sort();
    let want: Vec<String> = (0..3).map(|n| format!("{release}-{n}")).collect();
    assert_eq!(ids, want, "{ctx}");
}

async fn runs_of(kind: Kind) {
    let strategies = [Strategy::Canary, Strategy::Rolling, Strategy::BlueGreen];
    let base: u64 = std::env::var("SLIPWAY_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        });
    for i in 0..runs() {
        let strategy = strategies[((i + kind as u64) % 3) as usize];
        run(kind, strategy, base.wrapping_add(i * 7919 + kind as u64)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill_the_control_plane_at_a_random_moment_of_a_deploy() {
    runs_of(Kind::Control).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill_the_agent_at_a_random_moment_of_a_deploy() {
    runs_of(Kind::Agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill_the_router_at_a_random_moment_of_a_deploy() {
    runs_of(Kind::Router).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill_an_instance_at_a_random_moment_of_a_deploy() {
    runs_of(Kind::Instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill_the_router_of_a_restarted_control_plane_at_a_random_moment_of_a_deploy() {
    runs_of(Kind::RouterAfterControl).await;
}
