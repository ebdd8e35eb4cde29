//! The pages' sections, rendered on the server. A live page is a list of `(section id, html)`; the first load
//! renders them all, and each update sends the sections whose html changed.

use std::collections::BTreeMap;
use std::fmt::Write;

use wire::judge::{JudgeConfig, Outcome, Verdict};
use wire::service::{DeployInfo, DeployPhase, ServiceStatus};

use crate::html::{dur, esc, section, table};
use crate::series::{Open, Rate, Track};
use crate::svg::{self, Chart, Mark, Series, Span};

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
pub(crate) fn service(st: &ServiceStatus, rates: &BTreeMap<String, Vec<Rate>>, open: &Open) -> Sections {
    vec![
        ("svc-head", service_head(st)),
        ("svc-routes", routes(st)),
        ("svc-rates", rate_lines(rates, open)),
        ("svc-instances", instances(st, open)),
    ]
}

/// "WebSockets / TCP" cells of `key` in `by`.
fn open_cells(by: &BTreeMap<String, (u64, u64)>, key: &str) -> [String; 2] {
    let (ws, tcp) = by.get(key).copied().unwrap_or_default();
    [ws.to_string(), tcp.to_string()]
}

fn rate_lines(rates: &BTreeMap<String, Vec<Rate>>, open: &Open) -> String {
    let rows: Vec<_> = rates
        .iter()
        .map(|(rel, pts)| {
            let req: Vec<f64> = pts.iter().map(|p| p.requests_per_s).collect();
            let err: Vec<f64> = pts.iter().map(|p| p.error_rate * 100.0).collect();
            let last = pts.last().copied();
            let mut row = vec![
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
            ];
            row.extend(open_cells(&open.releases, rel));
            row
        })
        .collect();
    format!(
        "<h2>Traffic <small>last minute</small></h2>{}",
        table(
            "rates",
            &[
                "release",
                "requests per second",
                "error rate (5xx)",
                "open WebSockets",
                "open TCP"
            ],
            &rows
        )
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

fn instances(st: &ServiceStatus, open: &Open) -> String {
    let rows: Vec<_> = st
        .instances
        .iter()
        .map(|i| {
            let [ws, tcp] = open_cells(&open.instances, &i.id);
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
                ws,
                tcp,
                esc(&i.addr),
                esc(i.note.as_deref().unwrap_or("")),
            ]
        })
        .collect();
    format!(
        "<h2>Instances</h2>{}",
        table(
            "instances",
            &[
                "instance",
                "release",
                "state",
                "health",
                "restarts",
                "WebSockets",
                "TCP",
                "address",
                "note"
            ],
            &rows
        )
    )
}

/// The deploy page of `d`, with what the dashboard saw of it.
pub(crate) fn deploy(d: &DeployInfo, track: Option<&Track>, cfg: &JudgeConfig, can_rollback: bool) -> Sections {
    let spans = track.map(|t| step_spans(t, track_end(d, t))).unwrap_or_default();
    vec![
        ("dep-head", deploy_head(d)),
        ("dep-actions", actions(d, can_rollback)),
        ("dep-timeline", timeline(d, track, &spans)),
        ("dep-plots", plots(track, cfg, &spans)),
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

/// The last moment the track knows of: its last move, or for a running deploy its newest point.
fn track_end(d: &DeployInfo, t: &Track) -> f64 {
    let last = t.moves.last().map_or(0.0, |m| m.t);
    if d.finished() {
        return last;
    }
    t.metrics
        .values()
        .filter_map(|v| v.last())
        .map(|p| p.t)
        .fold(last, f64::max)
}

/// Each canary step's hold, then its extension from the first "inconclusive" decision within it, up to `end` for
/// the step still running.
fn step_spans(t: &Track, end: f64) -> Vec<Span> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.moves.len() {
        let m = &t.moves[i];
        let (DeployPhase::Step, Some(step)) = (m.phase, m.step) else {
            i += 1;
            continue;
        };
        // A pause and resume within the step are moves of the same step.
        let mut j = i + 1;
        while t
            .moves
            .get(j)
            .is_some_and(|n| n.phase == DeployPhase::Step && n.step == Some(step))
        {
            j += 1;
        }
        let (s0, s1) = (m.t, t.moves.get(j).map_or(end, |n| n.t));
        let ext = t
            .decisions
            .iter()
            .find(|x| x.outcome == Outcome::Inconclusive && x.t > s0 && x.t <= s1)
            .map(|x| x.t);
        let label = |what: &str| format!("step {}: {what}", step + 1);
        out.push(Span {
            x0: s0,
            x1: ext.unwrap_or(s1),
            class: "sp-hold",
            label: label("hold"),
        });
        if let Some(e) = ext {
            out.push(Span {
                x0: e,
                x1: s1,
                class: "sp-ext",
                label: label("extended"),
            });
        }
        i = j;
    }
    out
}

fn timeline(d: &DeployInfo, track: Option<&Track>, spans: &[Span]) -> String {
    let Some(t) = track.filter(|t| !t.moves.is_empty()) else {
        return "<h2>Steps</h2><p class=\"none\">this control plane did not watch the deploy run</p>".into();
    };
    let mut pts: Vec<(f64, f64)> = t.moves.iter().map(|m| (m.t, m.weight as f64)).collect();
    if let (Some(last), false) = (pts.last().copied(), d.finished()) {
        pts.push((track_end(d, t), last.1));
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
        spans: spans.to_vec(),
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

fn plots(track: Option<&Track>, cfg: &JudgeConfig, spans: &[Span]) -> String {
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
            spans: spans.to_vec(),
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
    fn websockets_and_tcp_were_counted_router_wide_not_per_release_and_instance() {
        let inst: wire::agent::InstanceInfo = serde_json::from_value(serde_json::json!({
            "id": "v2-0", "release": "v2", "addr": "127.0.0.1:1", "port": 1, "pid": 9, "state": "ready",
            "healthy": true, "restarts": 0, "started_at_ms": 0, "client_versions": null, "drain_notified": false
        }))
        .unwrap();
        let st = ServiceStatus {
            service: "s".into(),
            current: Some("v1".into()),
            previous: None,
            deploy: None,
            router: None,
            instances: vec![inst],
            routes: None,
            data: None,
            held: None,
            restarts: Default::default(),
        };
        let rate = Rate {
            at: 1,
            requests_per_s: 10.0,
            error_rate: 0.0,
        };
        let rates: BTreeMap<String, Vec<Rate>> = [("v1".into(), vec![rate]), ("v2".into(), vec![rate])].into();
        let open = Open {
            releases: [("v1".into(), (5, 0)), ("v2".into(), (3, 1))].into(),
            instances: [("v2-0".into(), (3, 1))].into(),
        };
        let html = join(&service(&st, &rates, &open));
        let rows: Vec<&str> = html.split("<tr>").collect();
        let row = |start: &str| rows.iter().find(|r| r.starts_with(start)).copied().unwrap_or_default();
        assert!(row("<td>v1</td>").contains("<td>5</td><td>0</td></tr>"), "{html}");
        assert!(row("<td>v2</td>").contains("<td>3</td><td>1</td></tr>"), "{html}");
        let i = row("<td><a href=\"/logs?instance=v2-0\">");
        assert!(i.contains("<td>0</td><td>3</td><td>1</td><td>127.0.0.1:1</td>"), "{i}");
    }

    #[test]
    fn the_plots_showed_no_hold_or_extension_bands() {
        use crate::series::{Decision, Move};
        let mv = |t: f64, weight: u32, step: Option<usize>, phase: DeployPhase, paused: bool| Move {
            t,
            weight,
            step,
            phase,
            paused,
        };
        let mut t = Track::default();
        t.moves = vec![
            mv(0.0, 0, None, DeployPhase::Starting, false),
            mv(2.0, 10, Some(0), DeployPhase::Step, false),
            mv(5.0, 10, Some(0), DeployPhase::Step, true),
            mv(6.0, 10, Some(0), DeployPhase::Step, false),
            mv(20.0, 50, Some(1), DeployPhase::Step, false),
        ];
        let decision = |t: f64, outcome: Outcome| Decision {
            t,
            outcome,
            reason: String::new(),
        };
        t.decisions = vec![decision(12.0, Outcome::Inconclusive), decision(20.0, Outcome::Pass)];
        let got: Vec<_> = step_spans(&t, 30.0)
            .into_iter()
            .map(|s| (s.x0, s.x1, s.class, s.label))
            .collect();
        let want = [
            (2.0, 12.0, "sp-hold", "step 1: hold"),
            (12.0, 20.0, "sp-ext", "step 1: extended"),
            (20.0, 30.0, "sp-hold", "step 2: hold"),
        ];
        assert_eq!(
            got,
            want.map(|(a, b, c, d)| (a, b, c, d.to_string())),
            "a pause is within its step; the running step ends at the last moment known"
        );
    }

    #[test]
    fn verdict_numbers_are_readable_and_missing_ones_a_dash() {
        assert_eq!(fmt_num(f64::NAN), "-");
        assert_eq!(fmt_num(0.001234), "0.00123");
        assert_eq!(fmt_num(12.0), "12.000");
    }
}
