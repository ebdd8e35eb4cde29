//! `slipway demo`: a sample service under load, a canary promoted and a bad one aborted, then the tally.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use control::ServiceConfig;
use loadgen::{Load, LoadConfig, Report};
use wire::service::{DeployInfo, DeployRequest};

const RATE: f64 = 400.0;

pub(crate) fn service_toml(exe: &Path) -> String {
    format!(
        r#"# The demo service: demo-app run by the slipway binary itself.
[service]
name = "demo"
state_dir = "state"

[[listener]]
name = "web"
kind = "http"
addr = "127.0.0.1:0"

[instance]
count = 4
command = "{exe}"
args = ["demo-app"]
readiness = {{ kind = "http", path = "/healthz", start_deadline = "20s" }}
drain = {{ signal = "SIGTERM", stop_deadline = "5s" }}

[routing]
health = {{ kind = "http", path = "/healthz", interval = "1s" }}

[deploy]
strategy = "canary"
drain_deadline = "8s"
session_idle = "3s"

[deploy.canary]
# The default plan and judge, with shorter holds.
instances = 2
steps = [{{ weight = 10, hold = "15s" }}, {{ weight = 25, hold = "15s" }}, {{ weight = 50, hold = "15s" }}]
"#,
        exe = exe.display()
    )
}

/// Everything the demo started, removed when dropped (Ctrl-C, errors, panics).
struct Cleanup {
    dir: PathBuf,
    cfg: Option<ServiceConfig>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(cfg) = &self.cfg {
            // Instances first (each is its own session), then the helpers.
            if let Ok(list) = agent::saved_instances(cfg.state_dir()) {
                for i in list {
                    if let Some(pid) = i.pid {
                        agent::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                    }
                }
            }
            for r in [control::router_running(cfg), control::agent_running(cfg)]
                .into_iter()
                .flatten()
            {
                control::stop_process(r.pid, Duration::from_secs(3));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn say(t0: Instant, what: &str) {
    println!("[{:>5.1}s] {what}", t0.elapsed().as_secs_f64());
}

fn add_release(dir: &Path, root: &Path, id: &str, manifest: &str) -> anyhow::Result<()> {
    let src = dir.join(format!("src-{id}"));
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("slipway.release.toml"), manifest)?;
    std::fs::write(src.join("README"), format!("demo release {id}\n"))?;
    agent::ReleaseStore::new(root).add(&src, id)?;
    Ok(())
}

async fn deploy_and_wait(
    api: &plumbing::client::ApiClient,
    release: &str,
    t0: Instant,
    on_start: impl Fn(&DeployInfo),
) -> anyhow::Result<DeployInfo> {
    let d: DeployInfo = api
        .post(
            "/v1/deploys",
            &DeployRequest {
                release: release.into(),
                strategy: None,
                template: None,
            },
        )
        .await?;
    let mut seen = 0;
    let mut started_reported = false;
    loop {
        let d: DeployInfo = api.get(&format!("/v1/deploys/{}", d.id)).await?;
        for e in d.events.iter().skip(seen) {
            say(
                t0,
                &format!("  deploy {release}: {}", e.split_once(' ').map_or(e.as_str(), |x| x.1)),
            );
        }
        seen = d.events.len();
        if !started_reported && d.phase == wire::service::DeployPhase::Step {
            started_reported = true;
            on_start(&d);
        }
        if d.finished() {
            return Ok(d);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes the demo's service file and its three releases into a fresh temp folder.
fn prepare(exe: &Path, t0: Instant) -> anyhow::Result<(PathBuf, ServiceConfig, Cleanup)> {
    let dir = std::env::temp_dir().join(format!("slipway-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut cleanup = Cleanup {
        dir: dir.clone(),
        cfg: None,
    };
    let path = dir.join("slipway.toml");
    std::fs::write(&path, service_toml(exe))?;
    let cfg = ServiceConfig::load(&path)?;
    cleanup.cfg = Some(cfg.clone());
    say(t0, &format!("slipway demo in {}", dir.display()));
    let root = cfg.state_dir().to_path_buf();
    add_release(&dir, &root, "v1", "")?;
    add_release(&dir, &root, "v2", "")?;
    add_release(
        &dir,
        &root,
        "v3",
        "# a bad release: 30% of requests fail\n[start.env]\nDEMO_ERROR_RATE = \"0.3\"\n",
    )?;
    say(t0, "releases v1, v2 and v3 (v3 answers 30% of requests with 500)");

    Ok((dir, cfg, cleanup))
}

/// Waits until no answer has come from `release` for a second; returns when the last one came.
async fn wait_release_quiet(load: &Load, release: &str) -> Instant {
    let count = || load.report().releases.get(release).copied().unwrap_or(0);
    let mut last = count();
    let mut quiet_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = count();
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_secs(1) {
            return quiet_since;
        }
    }
}

/// What the demo prints at the end.
struct Tally<'a> {
    report: &'a Report,
    steady: &'a Report,
    v3_errors: u64,
    ws_open: u64,
    abort_s: f64,
    t0: Instant,
}

fn print_tally(t: &Tally<'_>) {
    let Tally {
        report,
        steady,
        v3_errors,
        ws_open,
        abort_s,
        t0,
    } = *t;
    println!();
    println!("tally");
    println!("  requests sent       {}", report.sent);
    println!("  answered 2xx        {}", report.ok);
    println!(
        "  failed              {} ({} of them 500s from the bad canary v3 before it was taken out; {} elsewhere)",
        report.failed,
        v3_errors,
        report.failed - v3_errors.min(report.failed)
    );
    println!(
        "  p50 / p99 latency   {:.1} ms / {:.1} ms (steady state before any deploy: p99 {:.1} ms)",
        report.p50_ms(),
        report.p99_ms(),
        steady.p99_ms()
    );
    println!("  answers per release {:?}", report.releases);
    println!(
        "  WebSockets          {ws_open} open through both deploys, {} dropped",
        report.ws_dropped
    );
    println!("  abort               v3 got traffic for {abort_s:.1} s before the judge took it out");
    println!("  total time          {:.0} s", t0.elapsed().as_secs_f64());
}

/// Runs the demo; returns whether it went as expected.
pub async fn run() -> anyhow::Result<bool> {
    let t0 = Instant::now();
    let exe = std::env::current_exe().context("cannot find the slipway binary")?;
    let (dir, cfg, cleanup) = prepare(&exe, t0)?;

    let running = control::start(cfg.clone(), exe.clone()).await?;
    let api = plumbing::client::ApiClient::new(&running.api_addr, Some(running.control.token.clone()))?;
    let web: SocketAddr = {
        let st: wire::api::RouterStatus = serde_json::from_slice(&std::fs::read(cfg.layout.router_status())?)?;
        st.listeners.first().context("router has no listener")?.addr.parse()?
    };
    say(
        t0,
        &format!("agent, router and control plane up; the service listens on http://{web}"),
    );

    let first = deploy_and_wait(&api, "v1", t0, |_| {}).await?;
    anyhow::ensure!(!first.aborted(), "the first deploy failed: {:?}", first.outcome);
    say(
        t0,
        &format!(
            "v1 serves with 4 instances; starting steady load: {RATE} requests/s from 50 users (a new session \
             every 20 requests), half on keep-alive, 10 WebSockets"
        ),
    );
    let mut load_cfg = LoadConfig::new(web, RATE);
    load_cfg.websockets = 10;
    // Users come and go: a new session every 20 requests (about 2.5 s).
    load_cfg.session_requests = Some(20);
    let load = Load::start(load_cfg);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let steady = load.report();

    say(
        t0,
        "deploying v2 as a canary: 10% -> 25% -> 50% of new sessions, 15 s each, judged all along",
    );
    let v2 = deploy_and_wait(&api, "v2", t0, |_| {}).await?;
    anyhow::ensure!(!v2.aborted(), "v2 was aborted: {:?}", v2.outcome);
    say(t0, "v2 promoted; v1 drains its sessions and stops");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before_bad = load.report();

    say(t0, "deploying v3 (bad) as a canary");
    let step_at = std::sync::Mutex::new(None::<Instant>);
    let v3 = deploy_and_wait(&api, "v3", t0, |_| {
        *step_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    })
    .await?;
    let traffic_at = step_at.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or(t0);
    // The canary is out of traffic once its weight went to 0 (the abort). Wait
    // until no answer comes from v3 any more.
    let off_at = wait_release_quiet(&load, "v3").await;
    say(
        t0,
        &format!(
            "v3 {}: {}",
            if v3.aborted() { "ABORTED" } else { "was not aborted" },
            v3.outcome.clone().unwrap_or_default()
        ),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ws_open = load.report().ws_open;
    let report = load.stop().await;
    let bad = report.since(&before_bad);
    let v3_errors = bad.statuses.get(&500).copied().unwrap_or(0);
    let abort_s = off_at.saturating_duration_since(traffic_at).as_secs_f64();
    running.shutdown().await;

    print_tally(&Tally {
        report: &report,
        steady: &steady,
        v3_errors,
        ws_open,
        abort_s,
        t0,
    });
    let ok = v2.outcome.as_deref() == Some("promoted") && v3.aborted() && report.failed == v3_errors;
    drop(cleanup);
    println!(
        "cleaned up: instances, router and agent stopped, {} removed",
        dir.display()
    );
    Ok(ok)
}
