//! The control plane's `/metrics` in Prometheus text: the deploy (phase, progress, weights), the judge's last
//! verdict per metric as a number with its odds, and instances by state. A pure function of the status.

use plumbing::prom::{Exposition, Kind, float};
use wire::judge::Outcome;
use wire::service::{DeployPhase, ServiceStatus};

const FAMILIES: &[(&str, Kind, &str)] = &[
    ("slipway_deploy_running", Kind::Gauge, "1 while a deploy runs."),
    ("slipway_deploy_id", Kind::Gauge, "Id of the running or last deploy."),
    (
        "slipway_deploy_phase",
        Kind::Gauge,
        "1 for the phase the running or last deploy is in, 0 for the others.",
    ),
    ("slipway_deploy_progress", Kind::Gauge, "How far the deploy is, 0 to 1."),
    ("slipway_deploy_paused", Kind::Gauge, "1 while the deploy is paused."),
    (
        "slipway_canary_weight_percent",
        Kind::Gauge,
        "The canary's share of new sessions.",
    ),
    (
        "slipway_release_weight",
        Kind::Gauge,
        "Share of new sessions per release in the table the router confirmed.",
    ),
    (
        "slipway_judge_verdict",
        Kind::Gauge,
        "The judge's last verdict per metric: 1 pass, 0 inconclusive, -1 fail (metric=\"\": overall).",
    ),
    (
        "slipway_judge_odds",
        Kind::Gauge,
        "Evidence against the canary per metric, as odds; it fails at slipway_judge_odds_bound.",
    ),
    (
        "slipway_judge_odds_bound",
        Kind::Gauge,
        "The odds at which a metric fails.",
    ),
    (
        "slipway_instances",
        Kind::Gauge,
        "Instances per release and state, as the agent reports them.",
    ),
];

const PHASES: [DeployPhase; 9] = [
    DeployPhase::Starting,
    DeployPhase::PreTraffic,
    DeployPhase::Step,
    DeployPhase::Promoting,
    DeployPhase::Checking,
    DeployPhase::Rolling,
    DeployPhase::Aborting,
    DeployPhase::Done,
    DeployPhase::Aborted,
];

fn verdict_number(o: Outcome) -> i32 {
    match o {
        Outcome::Pass => 1,
        Outcome::Inconclusive => 0,
        Outcome::Fail => -1,
    }
}

/// The exposition of one status.
pub(crate) fn render(s: &ServiceStatus) -> String {
    let mut out = Exposition::default();
    for (name, kind, help) in FAMILIES {
        out.family(name, *kind, help);
    }
    let running = s.deploy.as_ref().is_some_and(|d| !d.finished());
    out.sample("slipway_deploy_running", "", &[], running as u8);
    if let Some(d) = &s.deploy {
        out.sample("slipway_deploy_id", "", &[], d.id);
        for p in &PHASES {
            out.sample(
                "slipway_deploy_phase",
                "",
                &[("phase", p.as_str())],
                (d.phase == *p) as u8,
            );
        }
        out.sample("slipway_deploy_progress", "", &[], float(d.progress));
        out.sample("slipway_deploy_paused", "", &[], d.paused as u8);
        out.sample(
            "slipway_canary_weight_percent",
            "",
            &[("release", &d.release)],
            d.canary_weight,
        );
        if let Some(v) = d.last_verdict.as_ref().filter(|_| running) {
            out.sample(
                "slipway_judge_verdict",
                "",
                &[("metric", "")],
                verdict_number(v.outcome),
            );
            for m in &v.metrics {
                let l = [("metric", m.name.as_str())];
                out.sample("slipway_judge_verdict", "", &l, verdict_number(m.outcome));
                out.sample("slipway_judge_odds", "", &l, float(m.evidence));
                out.sample("slipway_judge_odds_bound", "", &l, float(m.bound));
            }
        }
    }
    if let Some(t) = &s.routes {
        for r in &t.releases {
            out.sample(
                "slipway_release_weight",
                "",
                &[("release", &r.id), ("state", r.state.as_str())],
                r.weight,
            );
        }
    }
    let mut counts = std::collections::BTreeMap::<(&str, &str), u32>::new();
    for i in &s.instances {
        *counts.entry((i.release.as_str(), i.state.as_str())).or_default() += 1;
    }
    for ((release, state), n) in counts {
        out.sample("slipway_instances", "", &[("release", release), ("state", state)], n);
    }
    out.render()
}
