//! The API's view of a deploy: its groups, weights, verdicts and story, in words and a progress figure.

use std::collections::BTreeMap;

use rollout::{Deploy, Phase, Service};
use wire::judge::Verdict;
use wire::service::{DeployInfo, GroupRoute, GroupStatus, Strategy};

/// The verdicts behind each deploy's moves, and the running analysis's last one.
#[derive(Debug, Default)]
pub(crate) struct Verdicts {
    pub by_deploy: BTreeMap<i64, Vec<Verdict>>,
    pub last: Option<Verdict>,
}

/// One deploy of state `st`, as the API shows it at `now`.
pub(crate) fn deploy_info(st: &Service, d: &Deploy, verdicts: &Verdicts, now: u64) -> DeployInfo {
    let active = !d.phase.finished();
    let (detail, progress) = describe(st, d, now);
    DeployInfo {
        id: d.id,
        release: d.release.clone(),
        from: d.from.clone(),
        strategy: d.strategy,
        phase: d.phase.kind(),
        paused: d.paused_at.is_some(),
        detail,
        progress,
        step: match d.phase {
            Phase::Step { index, .. } => Some(index),
            _ => None,
        },
        steps: d.plan.steps.len(),
        canary_weight: d.canary_weight(),
        started_ms: d.started_ms,
        finished_ms: d.finished_ms,
        outcome: d.outcome.clone(),
        groups: if active { groups(st) } else { Vec::new() },
        last_verdict: if active { verdicts.last.clone() } else { None },
        verdicts: verdicts.by_deploy.get(&d.id).cloned().unwrap_or_default(),
        events: d
            .log
            .iter()
            .map(|(at, t)| format!("+{}s {t}", at.saturating_sub(d.started_ms) / 1000))
            .collect(),
        changes: Vec::new(),
    }
}

/// The instance groups the machine wants, with what the agent reports and how they are routed.
fn groups(st: &Service) -> Vec<GroupStatus> {
    let desired = st.desired();
    desired
        .groups
        .iter()
        .map(|g| {
            let route = desired
                .routes
                .iter()
                .find(|r| r.groups.contains(&g.group) && r.release == g.release);
            GroupStatus {
                release: g.release.clone(),
                group: g.group.clone(),
                wanted: g.count,
                ready: st.group(&g.release, &g.group).map_or(0, |o| o.ready),
                weight: route.map_or(0, |r| r.weight),
                state: route.map_or(GroupRoute::Unrouted, |r| r.state.into()),
            }
        })
        .collect()
}

/// Words and a 0..=1 progress for a deploy.
fn describe(st: &Service, d: &Deploy, now: u64) -> (String, f64) {
    let ready = |r: &str| st.group(r, r).map_or(0, |g| g.ready);
    let n = d.plan.count;
    let paused = if d.paused_at.is_some() { " (paused)" } else { "" };
    match &d.phase {
        Phase::Starting => {
            let want = match d.strategy {
                Strategy::Canary if d.from.is_some() => d.plan.canary_count,
                _ => n,
            };
            let r = ready(&d.release);
            (
                format!("starting {want} instances of {} ({r}/{want} ready){paused}", d.release),
                0.05 * r as f64 / want.max(1) as f64,
            )
        }
        Phase::PreTraffic { since } => (
            format!(
                "pre-traffic check against {} running for {}s (no traffic yet){paused}",
                d.release,
                now.saturating_sub(*since) / 1000
            ),
            0.05,
        ),
        Phase::Step {
            index,
            since,
            extensions,
        } => describe_step(d, (*index, *since, *extensions), now),
        Phase::Promoting => (
            format!(
                "promoting: scaling {} to {n} instances ({}/{n} ready){paused}",
                d.release,
                ready(&d.release)
            ),
            0.96,
        ),
        Phase::Checking { since } => {
            let left = (since + d.plan.check_ms).saturating_sub(now) / 1000;
            (
                format!(
                    "all {n} instances of {} up; switching every new session in {left}s{paused}",
                    d.release
                ),
                0.5 + 0.5 * (now.saturating_sub(*since)) as f64 / d.plan.check_ms.max(1) as f64,
            )
        }
        Phase::Rolling { added, removed, .. } => (
            format!(
                "{removed}/{n} old instances replaced, {}/{added} new ready{paused}",
                ready(&d.release)
            ),
            (*added + *removed) as f64 / (2 * n).max(1) as f64,
        ),
        Phase::Aborting { reason } => (format!("aborting: {reason}"), 1.0),
        Phase::Done => ("promoted".to_string(), 1.0),
        Phase::Aborted => (format!("aborted: {}", d.outcome.clone().unwrap_or_default()), 1.0),
    }
}

/// A canary step: its weight, how long it has held of how long, and the progress over all steps.
fn describe_step(d: &Deploy, (index, since, extensions): (usize, u64, u32), now: u64) -> (String, f64) {
    let paused = if d.paused_at.is_some() { " (paused)" } else { "" };
    let k = d.plan.steps.len().max(1) as f64;
    let (w, hold) = d.plan.steps[index];
    let total = hold + extensions as u64 * d.plan.extension_ms;
    let at = d.paused_at.unwrap_or(now);
    let elapsed = at.saturating_sub(since).min(total);
    let ext = if extensions > 0 {
        format!(", extended {extensions}x")
    } else {
        String::new()
    };
    (
        format!(
            "step {} of {}: {w}% of new sessions on {}, {}s of {}s{ext}{paused}",
            index + 1,
            d.plan.steps.len(),
            d.release,
            elapsed / 1000,
            total / 1000
        ),
        0.05 + 0.9 * (index as f64 + elapsed as f64 / total.max(1) as f64) / k,
    )
}
