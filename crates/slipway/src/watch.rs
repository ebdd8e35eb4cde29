//! Following a deploy: the live display `slipway deploy` shows, `slipway watch` from any terminal, and JSON lines.
//! Ctrl-C stops the following, never the deploy.

use std::time::Duration;

use plumbing::client::ApiClient;
use wire::service::{DeployInfo, ServiceStatus};

use crate::ops::control_client;

/// How following a deploy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Followed {
    /// It ended with its release current.
    Done,
    /// It was aborted or failed.
    Aborted,
    /// Ctrl-C: the follower stopped; the deploy goes on.
    Interrupted,
}

/// What `slipway deploy` says on Ctrl-C.
pub const GOES_ON: &str = "the deploy goes on; `slipway watch` to follow it, `slipway abort` to stop it";

fn verdict_line(d: &DeployInfo) -> Option<String> {
    d.last_verdict
        .as_ref()
        .map(|v| format!("verdict {}: {}", v.outcome.as_str(), v.reason))
}

pub(crate) fn group_line(d: &DeployInfo) -> String {
    d.groups
        .iter()
        .map(|g| format!("{} {}/{} ready {}% {}", g.group, g.ready, g.wanted, g.weight, g.state))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// One JSON line: the deploy's state (what the live display shows) without its event list.
fn state_line(d: &DeployInfo) -> serde_json::Value {
    serde_json::json!({
        "deploy": d.id,
        "release": d.release,
        "phase": d.phase,
        "paused": d.paused,
        "detail": d.detail,
        "progress": d.progress,
        "canary_weight": d.canary_weight,
        "groups": d.groups,
        "verdict": d.last_verdict,
    })
}

/// Shows a deploy until it ends, or until Ctrl-C (then `on_interrupt` is said on stderr). With `json`, one JSON
/// object a line: `{"deploy", "event"}` per event, the state when it changes, and `{"deploy", "finished"}` last.
pub async fn follow(api: &ApiClient, id: i64, json: bool, on_interrupt: &str) -> anyhow::Result<Followed> {
    let bar = if json {
        None
    } else {
        crate::progress_bar(1000, "[{bar:30}] {msg}")
    };
    let mut seen_events = 0;
    let mut last_line = String::new();
    // Registered now: a Ctrl-C from here on is ours, not the default kill.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        let d: DeployInfo = api.get(&format!("/v1/deploys/{id}")).await?;
        for e in d.events.iter().skip(seen_events) {
            match &bar {
                _ if json => println!("{}", serde_json::json!({ "deploy": id, "event": e })),
                Some(b) => b.println(format!("  {e}")),
                None => println!("  {e}"),
            }
        }
        seen_events = d.events.len();
        let line = format!("{} | {}", d.detail, group_line(&d));
        match &bar {
            _ if json => {
                if line != last_line {
                    println!("{}", state_line(&d));
                }
            }
            Some(b) => {
                b.set_position((d.progress * 1000.0) as u64);
                let v = verdict_line(&d).map(|v| format!(" | {v}")).unwrap_or_default();
                b.set_message(format!("{line}{v}"));
            }
            None => {
                if line != last_line {
                    println!("{line}");
                    if let Some(v) = verdict_line(&d) {
                        println!("  {v}");
                    }
                }
            }
        }
        last_line = line;
        if d.finished() {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            return Ok(finished(&d, json));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = interrupt.recv() => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                eprintln!("\n{on_interrupt}");
                return Ok(Followed::Interrupted);
            }
        }
    }
}

fn finished(d: &DeployInfo, json: bool) -> Followed {
    let aborted = d.aborted();
    if json {
        let end = serde_json::json!({
            "deploy": d.id, "finished": true, "phase": d.phase, "outcome": d.outcome, "verdicts": d.verdicts,
        });
        println!("{end}");
    } else if aborted {
        println!("deploy {} ABORTED: {}", d.id, d.outcome.clone().unwrap_or_default());
        for v in &d.verdicts {
            println!("  verdict {}: {}", v.outcome.as_str(), v.reason);
        }
    } else {
        println!("deploy {} done: {} is the current release", d.id, d.release);
    }
    if aborted { Followed::Aborted } else { Followed::Done }
}

/// `slipway watch`: follows the running deploy from any terminal; says so when none runs.
pub async fn watch(cfg: &control::ServiceConfig, json: bool) -> anyhow::Result<Followed> {
    let api = control_client(cfg)?;
    let s: ServiceStatus = api.get("/v1/status").await?;
    match s.deploy {
        Some(d) if !d.finished() => {
            if !json {
                println!(
                    "deploy {}: {} {} over {}",
                    d.id,
                    d.strategy.as_str(),
                    d.release,
                    d.from.as_deref().unwrap_or("nothing")
                );
            }
            follow(&api, d.id, json, "stopped watching; the deploy goes on").await
        }
        Some(d) => {
            if json {
                println!("{}", state_line(&d));
            } else {
                println!(
                    "no deploy is running; the last was deploy {} of {} ({}); `slipway history` lists them",
                    d.id, d.release, d.phase
                );
            }
            Ok(Followed::Done)
        }
        None => {
            if !json {
                println!("no deploy has run yet; start one with `slipway deploy <release>`");
            }
            Ok(Followed::Done)
        }
    }
}
