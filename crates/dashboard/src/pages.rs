//! The pages' sections, rendered on the server. A live page is a list of `(section id, html)`; the first load
//! renders them all, and each update sends the sections whose html changed.

use std::collections::BTreeMap;
use std::fmt::Write;

use wire::judge::{JudgeConfig, Outcome, Verdict};
use wire::service::{DeployInfo, ServiceStatus};

use crate::html::{dur, esc, section, table};
use crate::series::{Rate, Track};
use crate::svg::{self, Chart, Mark, Series};

/// A page's live sections.
pub(crate) type Sections = Vec<(&'static str, String)>;

/// The sections as one html body.
pub(crate) fn join(s: &Sections) -> String {
    s.iter().map(|(id, h)| section(id, h)).collect()
}

fn outcome_class(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Fail => "fail",
        Outcome::Inconclusive => "wait",
    }
}

/// Service: releases, the route table as a traffic split, request and error rates, instances.
pub(crate) fn service(st: &ServiceStatus, rates: &BTreeMap<String, Vec<Rate>>) -> Sections {
    vec![
        ("svc-head", service_head(st)),
        ("svc-routes", routes(st)),
        ("svc-rates", rate_lines(rates)),
        ("svc-instances", instances(st)),
    ]
}

fn rate_lines(rates: &BTreeMap<String, Vec<Rate>>) -> String {
    let rows: Vec<_> = rates
        .iter()
        .map(|(rel, pts)| {
            let req: Vec<f64> = pts.iter().map(|p| p.requests_per_s).collect();
            let err: Vec<f64> = pts.iter().map(|p| p.error_rate * 100.0).collect();
            let last = pts.last().copied();
            vec![
                esc(rel),
                format!(
                    "{} {:.1}/s",
                    svg::sparkline(&req, "s-base", "requests per second, last minute"),
                    last.map_or(0.0, |p| p.requests_per_s)
                ),
                format!(
                    "{} {:.2}%",
                    svg::sparkline(&err, "s-canary", "5xx share of requests (%), last minute"),
                    last.map_or(0.0, |p| p.error_rate * 100.0)
                ),
            ]
        })
        .collect();
    format!(
        "<h2>Traffic <small>last minute</small></h2>{}",
        table("rates", &["release", "requests per second", "error rate (5xx)"], &rows)
    )
}

fn service_head(st: &ServiceStatus) -> String {
    let mut out = format!("<h1>{}</h1><dl class=\"facts\">", esc(&st.service));
    let rel = |r: &Option<String>| r.as_deref().map_or("none".to_string(), esc);
    let _ = write!(out, "<dt>current</dt><dd id=\"current\">{}</dd>", rel(&st.current));
    let _ = write!(out, "<dt>previous</dt><dd>{}</dd>", rel(&st.previous));
    if let Some(r) = &st.router {
        let _ = write!(
            out,
            "<dt>router</dt><dd>pid {}, table generation {}, {} WebSockets and {} TCP connections open</dd>",
            r.pid, r.generation, r.open_websockets, r.open_tcp
        );
    }
    if let Some(d) = &st.deploy {
        let _ = write!(
            out,
            "<dt>deploy</dt><dd><a href=\"/deploy/{}\">{} {}</a>: {}</dd>",
            d.id,
            d.id,
            esc(&d.release),
            esc(&d.detail)
        );
    }
    out.push_str("</dl>");
    out
}

fn routes(st: &ServiceStatus) -> String {
    let Some(t) = &st.routes else {
        return "<h2>Traffic split</h2><p class=\"none\">the router has not confirmed a table yet</p>".into();
    };
    // The table's own generation is the control plane's; the router's (in the head) is the one it serves.
    let mut out = String::from("<h2>Traffic split</h2><div class=\"split\">");
    for r in t.releases.iter().filter(|r| r.weight > 0) {
        let _ = write!(
            out,
            "<span class=\"share w{}\" title=\"{} {}%\">{} {}%</span>",
            (r.weight / 5) * 5,
            esc(&r.id),
            r.weight,
            esc(&r.id),
            r.weight
        );
    }
    out.push_str("</div>");
    let rows: Vec<_> = t
        .releases
        .iter()
        .map(|r| {
            vec![
                esc(&r.id),
                format!("{}%", r.weight),
                esc(r.state.as_str()),
                r.client_versions.as_deref().map_or("any".into(), esc),
                r.instances.len().to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        "routes",
        &["release", "weight", "state", "client versions", "instances"],
        &rows,
    ));
    if !t.cohorts.is_empty() {
        let rows: Vec<_> = t
            .cohorts
            .iter()
            .map(|c| {
                let rule = [
                    ("header", &c.header),
                    ("cookie", &c.cookie),
                    ("query", &c.query),
                    ("cidr", &c.cidr),
                ]
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {v}")))
                .collect::<Vec<_>>()
                .join(", ");
                let eq = c.equals.as_deref().map(|e| format!(" = {e}")).unwrap_or_default();
                vec![
                    esc(c.name.as_deref().unwrap_or("-")),
                    esc(&format!("{rule}{eq}")),
                    esc(&c.release),
                ]
            })
            .collect();
        out.push_str("<h3>Cohorts</h3>");
        out.push_str(&table("cohorts", &["cohort", "rule", "release"], &rows));
    }
    out
}

fn instances(st: &ServiceStatus) -> String {
    let rows: Vec<_> = st
        .instances
        .iter()
        .map(|i| {
            vec![
                format!("<a href=\"/logs?instance={}\">{}</a>", esc(&i.id), esc(&i.id)),
                esc(&i.release),
                esc(i.state.as_str()),
                if i.healthy {
                    "healthy".into()
                } else {
                    "<span class=\"fail\">unhealthy</span>".into()
                },
                i.restarts.to_string(),
                esc(&i.addr),
                esc(i.note.as_deref().unwrap_or("")),
            ]
        })
        .collect();
    format!(
        "<h2>Instances</h2>{}",
        table(
            "instances",
            &["instance", "release", "state", "health", "restarts", "address", "note"],
            &rows
        )
    )
}

/// The deploy page of `d`, with what the dashboard saw of it.
pub(crate) fn deploy(d: &DeployInfo, track: Option<&Track>, cfg: &JudgeConfig, can_rollback: bool) -> Sections {
    vec![
        ("dep-head", deploy_head(d)),
        ("dep-actions", actions(d, can_rollback)),
        ("dep-timeline", timeline(d, track)),
        ("dep-plots", plots(track, cfg)),
        ("dep-verdict", verdicts(d, track)),
        ("dep-events", events(d)),
    ]
}

fn deploy_head(d: &DeployInfo) -> String {
    let from = d.from.as_deref().map(|f| format!("{} → ", esc(f))).unwrap_or_default();
    let paused = if d.paused {
        " <span class=\"badge wait\" id=\"paused\">paused</span>"
    } else {
        ""
    };
    let step = d
        .step
        .map(|s| format!("step {} of {}", s + 1, d.steps))
        .unwrap_or_default();
    format!(
        "<h1>Deploy {id}: {from}{rel} <small>{strategy}</small></h1><p><span class=\"badge {phase}\" \
            id=\"phase\">{phase}</span>{paused} <span id=\"weight\" data-weight=\"{w}\">{w}%</span> \
            of new sessions on the canary <span id=\"step\">{step}</span></p><p id=\"detail\">{detail}</p>\
            <progress max=\"1000\" value=\"{p}\"></progress>",
        id = d.id,
        rel = esc(&d.release),
        strategy = d.strategy.as_str(),
        phase = d.phase.as_str(),
        w = d.canary_weight,
        detail = esc(&d.detail),
        p = (d.progress.clamp(0.0, 1.0) * 1000.0) as u32,
    )
}

fn actions(d: &DeployInfo, can_rollback: bool) -> String {
    let mut out = String::from("<div class=\"actions\">");
    let mut button = |action: &str, label: &str, confirm: &str| {
        let _ = write!(
            out,
            "<button type=\"button\" data-action=\"{action}\" data-confirm=\"{}\" id=\"btn-{action}\">{label}</button>",
            esc(confirm)
        );
    };
    if !d.finished() {
        button(
            "promote",
            "Promote",
            &format!("Promote {} now, skipping the remaining steps?", d.release),
        );
        if d.paused {
            button("resume", "Resume", "Resume the deploy?");
        } else {
            button("pause", "Pause", "Pause the deploy? Holds stop counting.");
        }
        button(
            "abort",
            "Abort",
            &format!("Abort: take {} out of traffic now?", d.release),
        );
    }
    if can_rollback {
        button("rollback", "Roll back", "Go back to the previous release?");
    }
    out.push_str("</div>");
    out
}

fn decision_marks(track: Option<&Track>) -> Vec<Mark> {
    track
        .map(|t| {
            t.decisions
                .iter()
                .map(|x| Mark {
                    x: x.t,
                    label: x.outcome.as_str().into(),
                    class: match x.outcome {
                        Outcome::Pass => "m-pass",
                        Outcome::Fail => "m-fail",
                        Outcome::Inconclusive => "m-info",
                    },
                })
                .collect()
        })
        .unwrap_or_default()
}

fn timeline(d: &DeployInfo, track: Option<&Track>) -> String {
    let Some(t) = track.filter(|t| !t.moves.is_empty()) else {
        return "<h2>Steps</h2><p class=\"none\">this control plane did not watch the deploy run</p>".into();
    };
    let mut pts: Vec<(f64, f64)> = t.moves.iter().map(|m| (m.t, m.weight as f64)).collect();
    if let (Some(last), false) = (pts.last().copied(), d.finished()) {
        let now = t
            .metrics
            .values()
            .filter_map(|v| v.last())
            .map(|p| p.t)
            .fold(last.0, f64::max);
        pts.push((now, last.1));
    }
    let chart = Chart {
        id: "chart-weight".into(),
        title: "Canary weight".into(),
        unit: "% of new sessions".into(),
        series: vec![Series {
            name: "canary weight".into(),
            class: "s-weight",
            points: pts,
            steps: true,
        }],
        marks: decision_marks(Some(t)),
        y_max: Some(100.0),
        ..Chart::default()
    };
    let mut rows = Vec::new();
    for m in &t.moves {
        let step = m.step.map(|s| (s + 1).to_string()).unwrap_or_else(|| "-".into());
        let paused = if m.paused { " (paused)" } else { "" };
        rows.push(vec![
            format!("+{:.0}s", m.t),
            step,
            format!("{}%", m.weight),
            format!("{}{paused}", m.phase),
        ]);
    }
    format!(
        "<h2>Steps</h2><div class=\"charts\">{}</div>{}",
        svg::chart(&chart),
        table("moves", &["at", "step", "weight", "phase"], &rows)
    )
}

/// Scale and unit of a metric's values: error rates in percent, latencies in ms.
fn metric_unit(name: &str, cfg: &JudgeConfig) -> (f64, &'static str) {
    match cfg.metrics.iter().find(|m| m.name == name).map(|m| &m.kind) {
        Some(wire::judge::MetricKind::ErrorRate { .. }) => (100.0, "error rate (%)"),
        _ => (1.0, "latency (ms)"),
    }
}

fn plots(track: Option<&Track>, cfg: &JudgeConfig) -> String {
    let mut out = String::from("<h2>Canary against baseline</h2><div class=\"charts\">");
    let Some(t) = track.filter(|t| !t.metrics.is_empty()) else {
        out.push_str("<p class=\"none\">no judge samples yet</p></div>");
        return out;
    };
    for (name, pts) in &t.metrics {
        let (k, unit) = metric_unit(name, cfg);
        let chart = Chart {
            id: format!("chart-{name}"),
            title: name.replace('_', " "),
            unit: unit.into(),
            series: vec![
                Series {
                    name: "baseline".into(),
                    class: "s-base",
                    points: pts.iter().map(|p| (p.t, p.baseline * k)).collect(),
                    steps: false,
                },
                Series {
                    name: "canary".into(),
                    class: "s-canary",
                    points: pts.iter().map(|p| (p.t, p.canary * k)).collect(),
                    steps: false,
                },
            ],
            band: pts.iter().map(|p| (p.t, p.lo * k, p.hi * k)).collect(),
            band_name: "tolerance".into(),
            marks: decision_marks(Some(t)),
            y_max: None,
        };
        out.push_str(&svg::chart(&chart));
    }
    out.push_str("</div>");
    out
}

fn verdict_table(v: &Verdict) -> String {
    let rows: Vec<_> = v
        .metrics
        .iter()
        .map(|m| {
            vec![
                esc(&m.name),
                format!(
                    "<span class=\"{}\">{}</span>",
                    outcome_class(m.outcome),
                    m.outcome.as_str()
                ),
                fmt_num(m.baseline),
                fmt_num(m.canary),
                format!("{:.2} of {:.0}", m.evidence, m.bound),
                esc(&m.reason),
            ]
        })
        .collect();
    table(
        "metrics",
        &["metric", "verdict", "baseline", "canary", "odds against", "reason"],
        &rows,
    )
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() < 0.01 && v != 0.0 {
        format!("{v:.5}")
    } else {
        format!("{v:.3}")
    }
}

fn verdicts(d: &DeployInfo, track: Option<&Track>) -> String {
    let mut out = String::from("<h2>Verdicts</h2>");
    if let Some(v) = &d.last_verdict {
        let _ = write!(
            out,
            "<p class=\"verdict\"><span class=\"badge {}\">{}</span> <span id=\"reason\">{}</span> \
                <small>after {:.0}s</small></p>",
            outcome_class(v.outcome),
            v.outcome.as_str(),
            esc(&v.reason),
            v.elapsed_s
        );
        out.push_str(&verdict_table(v));
    }
    if let Some(o) = &d.outcome {
        let _ = write!(out, "<p class=\"outcome fail\" id=\"outcome\">{}</p>", esc(o));
    }
    out.push_str("<ol class=\"decisions\" id=\"decisions\">");
    for v in &d.verdicts {
        let _ = write!(
            out,
            "<li><span class=\"badge {}\">{}</span> {} <small>after {:.0}s</small></li>",
            outcome_class(v.outcome),
            v.outcome.as_str(),
            esc(&v.reason),
            v.elapsed_s
        );
    }
    if let Some(t) = track {
        for x in t
            .decisions
            .iter()
            .filter(|x| !d.verdicts.iter().any(|v| v.reason == x.reason))
        {
            let _ = write!(
                out,
                "<li><span class=\"badge {}\">{}</span> {} <small>at +{:.0}s</small></li>",
                outcome_class(x.outcome),
                x.outcome.as_str(),
                esc(&x.reason),
                x.t
            );
        }
    }
    out.push_str("</ol>");
    out
}

fn events(d: &DeployInfo) -> String {
    let mut out = String::from("<h2>Events</h2><ol class=\"events\">");
    for e in &d.events {
        let _ = write!(out, "<li>{}</li>", esc(e));
    }
    out.push_str("</ol>");
    out
}

/// History: past deploys, newest first.
pub(crate) fn history(list: &[DeployInfo]) -> Sections {
    let rows: Vec<_> = list
        .iter()
        .map(|d| {
            let took = d
                .finished_ms
                .map(|f| dur(f.saturating_sub(d.started_ms)))
                .unwrap_or_else(|| "running".into());
            let why = d
                .outcome
                .clone()
                .or_else(|| d.verdicts.last().map(|v| v.reason.clone()));
            vec![
                format!("<a href=\"/deploy/{}\">{}</a>", d.id, d.id),
                esc(&d.release),
                esc(d.from.as_deref().unwrap_or("-")),
                d.strategy.as_str().into(),
                format!("<span class=\"badge {}\">{}</span>", d.phase.as_str(), d.phase.as_str()),
                took,
                esc(why.as_deref().unwrap_or("")),
            ]
        })
        .collect();
    vec![(
        "hist",
        format!(
            "<h1>History</h1>{}",
            table(
                "history",
                &["deploy", "release", "from", "strategy", "outcome", "took", "why"],
                &rows
            )
        ),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_numbers_are_readable_and_missing_ones_a_dash() {
        assert_eq!(fmt_num(f64::NAN), "-");
        assert_eq!(fmt_num(0.001234), "0.00123");
        assert_eq!(fmt_num(12.0), "12.000");
    }
}
