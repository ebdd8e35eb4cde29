//! `slipway up|down|deploy|status|history|...`: the operator's side, talking to the control plane's API.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use control::ServiceConfig;

use crate::watch::{Followed, group_line};
use plumbing::client::ApiClient;
use wire::service::{DeployInfo, DeployList, DeployRequest, ServiceStatus, Strategy};

/// Loads slipway.toml (every problem listed if it is wrong).
pub fn load(path: &Path) -> anyhow::Result<ServiceConfig> {
    match ServiceConfig::load(path) {
        Err(control::ConfigError::Read { cause, .. }) if cause.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!(
                "there is no {} here: run this in the folder of your service's slipway.toml, \
                 or name it with -c FILE (or SLIPWAY_CONFIG)",
                path.display()
            )
        }
        other => Ok(other?),
    }
}

/// The slipway binary, to start the helpers with.
pub fn exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the slipway binary")
}

/// Starts whatever of agent, router and control plane is not running.
pub fn up(cfg: &ServiceConfig) -> anyhow::Result<()> {
    let exe = exe()?;
    std::fs::create_dir_all(cfg.state_dir()).with_context(|| format!("cannot create {}", cfg.state_dir().display()))?;
    let agent_was_running = control::agent_running(cfg).is_some();
    let agent = control::ensure_agent(cfg, &exe)?;
    println!("agent          pid {:<7} API {}", agent.pid, agent.addr);
    // The control plane supervises the agent and the router, and starts the router with listening sockets it
    // holds itself, so a router crash refuses no connection. If it cannot (a port in use), `up` says why at once
    // and stops what it started.
    let control = match control::ensure_control(cfg, &exe, true) {
        Ok(c) => c,
        Err(e) => {
            if !agent_was_running {
                control::stop_process(agent.pid, Duration::from_secs(5));
            }
            return Err(anyhow::Error::from(e).context("`slipway up` failed; it stopped what it had started"));
        }
    };
    // A running control plane restarts a dead router within a second; one that does not supervise is helped.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let router = loop {
        match control::router_running(cfg) {
            Some(r) => break r,
            None if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => break control::ensure_router(cfg, &exe)?,
        }
    };
    println!("router         pid {:<7} admin {}", router.pid, router.addr);
    println!("control plane  pid {:<7} API {}", control.pid, control.addr);
    if let Ok(v) = std::fs::read(cfg.layout.router_status())
        && let Ok(st) = serde_json::from_slice::<wire::api::RouterStatus>(&v)
    {
        for l in st.listeners {
            println!(
                "listener {:<6} {}://{}",
                l.name,
                if l.tls { "https" } else { "http" },
                l.addr
            );
        }
    }
    println!(
        "state in {} (logs: {}/run/*.log); next: `slipway release add <dir> --id v1` then `slipway deploy v1`",
        cfg.state_dir().display(),
        cfg.state_dir().display()
    );
    Ok(())
}

/// Stops instances, then the control plane, the router and the agent.
pub async fn down(cfg: &ServiceConfig) -> anyhow::Result<()> {
    if let Some(a) = control::agent_running(cfg) {
        let token = std::fs::read_to_string(cfg.layout.agent_token()).unwrap_or_default();
        let api = ApiClient::new(&a.addr, Some(token.trim().to_string()))?;
        if let Some(c) = control::control_running(cfg) {
            control::stop_process(c.pid, Duration::from_secs(5));
            println!("control plane stopped");
        }
        let list: wire::agent::InstanceList = api.get("/v1/instances").await.unwrap_or_default();
        let ids: Vec<String> = list
            .instances
            .iter()
            .filter(|i| agent::is_live(i.state))
            .map(|i| i.id.clone())
            .collect();
        if !ids.is_empty() {
            let req = wire::agent::StopRequest {
                ids: ids.clone(),
                ..Default::default()
            };
            let _: wire::agent::InstanceList = api.post("/v1/instances/stop", &req).await?;
            for _ in 0..300 {
                let l: wire::agent::InstanceList = api.get("/v1/instances").await.unwrap_or_default();
                if !l
                    .instances
                    .iter()
                    .any(|i| agent::is_live(i.state) || i.state == wire::agent::InstanceState::Draining)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            println!("{} instances stopped", ids.len());
        }
        control::stop_process(a.pid, Duration::from_secs(5));
        println!("agent stopped");
    } else if let Some(c) = control::control_running(cfg) {
        control::stop_process(c.pid, Duration::from_secs(5));
        println!("control plane stopped");
    }
    if let Some(r) = control::router_running(cfg) {
        control::stop_process(r.pid, Duration::from_secs(35));
        println!("router stopped");
    }
    Ok(())
}

/// No control plane runs for this service (exit code 69).
#[derive(Debug, thiserror::Error)]
#[error("no control plane runs for {0} (start it with `slipway up`)")]
pub struct NotRunning(String);

/// A client of the running control plane.
pub fn control_client(cfg: &ServiceConfig) -> anyhow::Result<ApiClient> {
    let running = control::control_running(cfg).ok_or_else(|| NotRunning(cfg.path.display().to_string()))?;
    let token = std::fs::read_to_string(cfg.layout.control_token()).context("cannot read the control plane's token")?;
    Ok(ApiClient::new(&running.addr, Some(token.trim().to_string()))?)
}

/// Starts a deploy and, unless `detach`, follows it to the end (or Ctrl-C).
pub async fn deploy(
    cfg: &ServiceConfig,
    release: &str,
    strategy: Option<Strategy>,
    detach: bool,
) -> anyhow::Result<Followed> {
    let api = control_client(cfg)?;
    // The template ships with the deploy, its env resolved here (`env_file`, `${NAME}` from this shell).
    let template = cfg.instance_template_here()?;
    let d: DeployInfo = api
        .post(
            "/v1/deploys",
            &DeployRequest {
                release: release.to_string(),
                strategy,
                template: Some(template),
            },
        )
        .await?;
    println!(
        "deploy {} started: {} {} over {}",
        d.id,
        d.strategy.as_str(),
        d.release,
        d.from.as_deref().unwrap_or("nothing")
    );
    if d.from.is_some() {
        match d.changes.as_slice() {
            [] => println!("instance template: unchanged"),
            changes => {
                println!("instance template changes:");
                for c in changes {
                    println!("  {c}");
                }
            }
        }
    }
    if detach {
        println!("follow it with `slipway watch`");
        return Ok(Followed::Done);
    }
    crate::watch::follow(&api, d.id, false, crate::watch::GOES_ON).await
}

pub async fn status(cfg: &ServiceConfig, json: bool, all: bool) -> anyhow::Result<()> {
    let mut s: ServiceStatus = control_client(cfg)?.get("/v1/status").await?;
    let before = s.instances.len();
    if !all {
        s.instances.retain(|i| i.state != wire::agent::InstanceState::Stopped);
    }
    let hidden = before - s.instances.len();
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "service {}: current {} (previous {})",
        s.service,
        s.current.as_deref().unwrap_or("none"),
        s.previous.as_deref().unwrap_or("none")
    )?;
    if let Some(held) = &s.held {
        writeln!(out, "HELD: {}", held.message)?;
    }
    write_restarts(&mut out, &s)?;
    if let Some(data) = &s.data {
        writeln!(out, "data: {data}")?;
    }
    write_deploy(&mut out, &s)?;
    write_routes(&mut out, &s)?;
    writeln!(out, "instances:")?;
    if s.instances.is_empty() {
        writeln!(out, "  none")?;
    }
    for i in &s.instances {
        writeln!(
            out,
            "  {:<14} {:<10} {:<22} pid {:<8} {:<10} restarts {}",
            i.id,
            i.group_name(),
            i.addr,
            i.pid.map_or("-".to_string(), |p| p.to_string()),
            i.state.as_str(),
            i.restarts
        )?;
    }
    if hidden > 0 {
        writeln!(out, "  ({hidden} stopped, hidden; `slipway status --all` lists them)")?;
    }
    writeln!(out, "next: {}", next_step(&s))?;
    Ok(())
}

fn write_restarts(out: &mut impl Write, s: &ServiceStatus) -> std::io::Result<()> {
    for p in &s.restarts {
        let t = p.last_ms / 1000 % 86_400;
        let at = format!("{:02}:{:02}:{:02} UTC", t / 3600, t / 60 % 60, t % 60);
        match (&p.error, p.pid) {
            (Some(e), _) => writeln!(out, "{} restarted {}x, last at {at}, failed: {e}", p.part, p.restarts)?,
            (None, Some(pid)) => writeln!(out, "{} restarted {}x, last at {at} (pid {pid})", p.part, p.restarts)?,
            (None, None) => writeln!(out, "{} restarted {}x, last at {at}", p.part, p.restarts)?,
        }
    }
    Ok(())
}

fn write_deploy(out: &mut impl Write, s: &ServiceStatus) -> std::io::Result<()> {
    if let Some(d) = &s.deploy {
        writeln!(
            out,
            "deploy {} {} of {} ({}): {}",
            d.id,
            d.strategy.as_str(),
            d.release,
            d.phase,
            d.detail
        )?;
        if !d.groups.is_empty() {
            writeln!(out, "  groups: {}", group_line(d))?;
        }
        if let Some(v) = &d.last_verdict {
            writeln!(out, "  verdict {}: {}", v.outcome.as_str(), v.reason)?;
            for m in &v.metrics {
                writeln!(out, "    {:<12} {:<12} {}", m.name, m.outcome.as_str(), m.reason)?;
            }
        }
    }
    Ok(())
}

fn write_routes(out: &mut impl Write, s: &ServiceStatus) -> std::io::Result<()> {
    if let Some(r) = &s.routes {
        writeln!(
            out,
            "routes (generation {}):",
            s.router.as_ref().map_or(0, |r| r.generation)
        )?;
        for rel in &r.releases {
            writeln!(
                out,
                "  {:<12} {:>3}% {:<9} {} instances",
                rel.id,
                rel.weight,
                rel.state.as_str(),
                rel.instances.len()
            )?;
        }
    }
    Ok(())
}

pub async fn history(cfg: &ServiceConfig, json: bool, limit: usize) -> anyhow::Result<()> {
    let l: DeployList = match control_client(cfg) {
        Ok(api) => api.get(&format!("/v1/deploys?limit={limit}")).await?,
        // No control plane: the journal on disk has the same history.
        Err(e) => match control::saved_history(cfg, limit)? {
            Some(deploys) => {
                if !json {
                    eprintln!("(no control plane runs: the history as the journal has it)");
                }
                DeployList { deploys }
            }
            None => return Err(e),
        },
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&l)?);
        return Ok(());
    }
    for d in l.deploys {
        let took = d
            .finished_ms
            .map(|f| format!("{}s", f.saturating_sub(d.started_ms) / 1000))
            .unwrap_or_else(|| "running".into());
        println!(
            "#{:<4} {:<10} {:<8} over {:<8} {:<9} {:<8} {}",
            d.id,
            d.strategy.as_str(),
            d.release,
            d.from.as_deref().unwrap_or("-"),
            d.phase,
            took,
            d.outcome.unwrap_or_default()
        );
        for v in &d.verdicts {
            println!("      verdict {}: {}", v.outcome.as_str(), v.reason);
        }
    }
    Ok(())
}

/// pause, resume, promote, abort.
pub async fn command(cfg: &ServiceConfig, what: &str, reason: Option<String>) -> anyhow::Result<()> {
    let api = control_client(cfg)?;
    let path = format!("/v1/deploy/{what}");
    let d: DeployInfo = match reason {
        Some(r) => api.post(&path, &serde_json::json!({ "reason": r })).await?,
        None => api.post(&path, &serde_json::json!({})).await?,
    };
    println!("deploy {}: {} ({})", d.id, d.phase, d.detail);
    Ok(())
}

pub async fn rollback(cfg: &ServiceConfig) -> anyhow::Result<Followed> {
    let api = control_client(cfg)?;
    let s: ServiceStatus = api.post("/v1/rollback", &serde_json::json!({})).await?;
    match &s.deploy {
        Some(d) if !d.finished() => {
            println!("{} is no longer warm: redeploying it (deploy {})", d.release, d.id);
            crate::watch::follow(&api, d.id, false, crate::watch::GOES_ON).await
        }
        _ => {
            println!(
                "rolled back: current {} (route swap)",
                s.current.as_deref().unwrap_or("none")
            );
            Ok(Followed::Done)
        }
    }
}

/// What to do next, for the state the service is in.
fn next_step(s: &ServiceStatus) -> String {
    use wire::service::DeployPhase;
    match &s.deploy {
        Some(d) if !d.finished() && d.paused => {
            "the deploy is paused: `slipway resume` goes on, `slipway abort` stops it".into()
        }
        Some(d) if !d.finished() => {
            let skip = if d.phase == DeployPhase::Step {
                ", `slipway promote` skips the steps"
            } else {
                ""
            };
            format!("`slipway watch` follows the deploy, `slipway abort` stops it{skip}")
        }
        Some(d) if d.aborted() => format!(
            "deploy {} of {} was aborted; `slipway history` shows why, `slipway deploy <release>` tries again",
            d.id, d.release
        ),
        _ if s.current.is_none() => "`slipway release add <dir> --id v1`, then `slipway deploy v1`".into(),
        _ => {
            let back = s
                .previous
                .as_deref()
                .map(|p| format!("; `slipway rollback` goes back to {p}"))
                .unwrap_or_default();
            format!("`slipway release add <dir> --id <new>`, then `slipway deploy <new>`{back}")
        }
    }
}
