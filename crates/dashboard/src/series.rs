//! What the dashboard remembers of each deploy it watched: weight over time, the judge's canary and baseline values
//! per metric with the tolerance band, and the moments it decided. Pure: fed a status and the time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wire::judge::{Direction, JudgeConfig, MetricKind, Outcome};
use wire::metrics::MetricsSnapshot;
use wire::service::{DeployInfo, DeployPhase, ServiceStatus};

/// Points kept per metric and deploy; beyond it every other point goes.
const MAX_POINTS: usize = 1200;
/// Deploys remembered.
const MAX_TRACKS: usize = 20;
/// Moves and decisions kept per deploy (a pause and resume are two moves); beyond it the oldest but the first go.
const MAX_MOVES: usize = 500;

/// The judge's values for one metric at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Point {
    /// Seconds since the deploy started.
    pub t: f64,
    pub baseline: f64,
    pub canary: f64,
    /// The tolerance band around the baseline: a canary outside it counts against it.
    pub lo: f64,
    pub hi: f64,
}

/// A change of the deploy's weight or phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Move {
    pub t: f64,
    pub weight: u32,
    pub step: Option<usize>,
    pub phase: DeployPhase,
    pub paused: bool,
}

/// A decision: a verdict that moved the deploy, or its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Decision {
    pub t: f64,
    pub outcome: Outcome,
    pub reason: String,
}

/// One deploy as the dashboard saw it: what its page plots. Serializable so the control plane can keep it with the
/// deploy (JSON: `moves`, `metrics` — per metric name its points `t`, `baseline`, `canary`, `lo`, `hi` —,
/// `decisions`, `verdicts_seen`, `ended`); bounded: at most 1,200 points per metric and 500 moves and decisions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Track {
    pub(crate) moves: Vec<Move>,
    pub(crate) metrics: BTreeMap<String, Vec<Point>>,
    pub(crate) decisions: Vec<Decision>,
    verdicts_seen: usize,
    ended: bool,
}

/// Keeps `list` at `max` entries, dropping the oldest after the first.
fn cap<T>(list: &mut Vec<T>, max: usize) {
    if list.len() > max {
        list.drain(1..1 + list.len() - max);
    }
}

/// How much of a track there is, to tell whether it changed: moves, decisions, points, ended.
pub(crate) type Size = (usize, usize, usize, bool);

/// Rate points kept per release (a minute at the loop's 2 turns a second).
const MAX_RATES: usize = 120;

/// A snapshot's router id, uptime (ms), and requests and errors per release.
type Counted = (String, u64, BTreeMap<String, (u64, u64)>);

/// A release's traffic over one interval between two metrics snapshots.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rate {
    /// Unix ms at the interval's end.
    pub at: u64,
    pub requests_per_s: f64,
    /// Share of the interval's requests answered 5xx (0 without requests).
    pub error_rate: f64,
}

/// WebSockets and raw TCP connections open, per release and per instance, as the last snapshot counted them.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Open {
    pub releases: BTreeMap<String, (u64, u64)>,
    pub instances: BTreeMap<String, (u64, u64)>,
}

/// The tracks of the deploys seen, by id, and each release's recent rates.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    pub tracks: BTreeMap<i64, Track>,
    pub rates: BTreeMap<String, Vec<Rate>>,
    pub open: Open,
    /// The last snapshot's counters per release, with its router and uptime.
    last: Option<Counted>,
}

/// The band a metric's canary value may fall in, around `b`: a failure needs both tolerances exceeded.
pub(crate) fn band(kind: &MetricKind, direction: Direction, b: f64) -> (f64, f64) {
    let (rel, abs) = match kind {
        MetricKind::ErrorRate {
            relative_tolerance,
            absolute_tolerance,
            ..
        } => (*relative_tolerance, *absolute_tolerance),
        MetricKind::Latency {
            tolerance,
            absolute_tolerance,
            ..
        } => (*tolerance, absolute_tolerance.as_millis() as f64),
    };
    let hi = (b * (1.0 + rel)).max(b + abs);
    let lo = (b * (1.0 - rel)).min(b - abs).max(0.0);
    match direction {
        Direction::Increase => (b, hi),
        Direction::Decrease => (lo, b),
        Direction::Either => (lo, hi),
    }
}

fn secs(d: &DeployInfo, now: u64) -> f64 {
    now.saturating_sub(d.started_ms) as f64 / 1000.0
}

impl Track {
    pub(crate) fn size(&self) -> Size {
        let points = self.metrics.values().map(Vec::len).sum();
        (self.moves.len(), self.decisions.len(), points, self.ended)
    }

    /// Whether it was bounded as [`Track`] says and its times are numbers (a saved one read back is checked).
    pub(crate) fn is_sane(&self) -> bool {
        let finite = |p: &Point| [p.t, p.baseline, p.canary, p.lo, p.hi].iter().all(|v| v.is_finite());
        self.moves.len() <= MAX_MOVES
            && self.decisions.len() <= MAX_MOVES
            && self
                .metrics
                .values()
                .all(|v| v.len() <= MAX_POINTS && v.iter().all(finite))
    }

    fn observe(&mut self, d: &DeployInfo, cfg: &JudgeConfig, now: u64) {
        let t = secs(d, d.finished_ms.unwrap_or(now).min(now));
        let mv = Move {
            t,
            weight: d.canary_weight,
            step: d.step,
            phase: d.phase,
            paused: d.paused,
        };
        let changed = self
            .moves
            .last()
            .is_none_or(|m| (m.weight, m.step, m.phase, m.paused) != (mv.weight, mv.step, mv.phase, mv.paused));
        if changed {
            self.moves.push(mv);
            cap(&mut self.moves, MAX_MOVES);
        }
        for v in d.verdicts.iter().skip(self.verdicts_seen) {
            self.decisions.push(Decision {
                t,
                outcome: v.outcome,
                reason: v.reason.clone(),
            });
        }
        cap(&mut self.decisions, MAX_MOVES);
        self.verdicts_seen = self.verdicts_seen.max(d.verdicts.len());
        if d.finished() && !self.ended {
            self.ended = true;
            if d.aborted() && !self.decisions.iter().any(|x| x.outcome == Outcome::Fail) {
                let reason = d.outcome.clone().unwrap_or_else(|| "aborted".into());
                self.decisions.push(Decision {
                    t,
                    outcome: Outcome::Fail,
                    reason,
                });
            }
        }
        let Some(v) = d.last_verdict.as_ref().filter(|_| !d.finished()) else {
            return;
        };
        for m in &v.metrics {
            if !(m.baseline.is_finite() && m.canary.is_finite()) {
                continue;
            }
            let Some(mc) = cfg.metrics.iter().find(|c| c.name == m.name) else {
                continue;
            };
            let (lo, hi) = band(&mc.kind, mc.direction, m.baseline);
            let pts = self.metrics.entry(m.name.clone()).or_default();
            pts.push(Point {
                t,
                baseline: m.baseline,
                canary: m.canary,
                lo,
                hi,
            });
            if pts.len() > MAX_POINTS {
                let mut k = 0;
                pts.retain(|_| {
                    k += 1;
                    k % 2 == 1
                });
            }
        }
    }
}

impl Recorder {
    /// Takes in a router metrics snapshot: each release's request and error rate since the last one. A router
    /// restart (another id, or uptime going back) starts over.
    pub(crate) fn observe_metrics(&mut self, snap: &MetricsSnapshot, now: u64) {
        let both = |c: &wire::metrics::Counters| (c.open_websockets, c.open_tcp);
        self.open = Open {
            releases: snap
                .releases
                .iter()
                .map(|r| (r.release.clone(), both(&r.totals)))
                .collect(),
            instances: snap
                .releases
                .iter()
                .flat_map(|r| r.instances.iter().map(|i| (i.instance.clone(), both(&i.counters))))
                .collect(),
        };
        let counts: BTreeMap<String, (u64, u64)> = snap
            .releases
            .iter()
            .map(|r| (r.release.clone(), (r.totals.requests, r.totals.errors())))
            .collect();
        if let Some((id, up, before)) = &self.last
            && *id == snap.router_id
            && snap.uptime_ms > *up
        {
            let dt = (snap.uptime_ms - up) as f64 / 1000.0;
            for (rel, (req, err)) in &counts {
                let (r0, e0) = before.get(rel).copied().unwrap_or((0, 0));
                let (dr, de) = (req.saturating_sub(r0), err.saturating_sub(e0));
                let pts = self.rates.entry(rel.clone()).or_default();
                pts.push(Rate {
                    at: now,
                    requests_per_s: dr as f64 / dt,
                    error_rate: if dr == 0 { 0.0 } else { de as f64 / dr as f64 },
                });
                if pts.len() > MAX_RATES {
                    pts.remove(0);
                }
            }
            self.rates.retain(|rel, _| counts.contains_key(rel));
        }
        self.last = Some((snap.router_id.clone(), snap.uptime_ms, counts));
    }

    /// Takes in what the control plane shows at `now`.
    pub(crate) fn observe(&mut self, st: &ServiceStatus, cfg: &JudgeConfig, now: u64) {
        let Some(d) = st.deploy.as_ref() else { return };
        self.tracks.entry(d.id).or_default().observe(d, cfg, now);
        while self.tracks.len() > MAX_TRACKS {
            self.tracks.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use wire::judge::{MetricVerdict, Verdict};

    use super::*;

    fn deploy(weight: u32, verdicts: Vec<Verdict>, last: Option<Verdict>) -> DeployInfo {
        DeployInfo {
            id: 1,
            release: "v2".into(),
            from: Some("v1".into()),
            strategy: wire::service::Strategy::Canary,
            phase: DeployPhase::Step,
            paused: false,
            detail: String::new(),
            progress: 0.0,
            step: Some(0),
            steps: 2,
            canary_weight: weight,
            started_ms: 1_000,
            finished_ms: None,
            outcome: None,
            groups: vec![],
            last_verdict: last,
            verdicts,
            events: vec![],
            changes: vec![],
        }
    }

    fn verdict(outcome: Outcome, base: f64, canary: f64) -> Verdict {
        Verdict {
            outcome,
            reason: format!("{outcome:?}"),
            alarm: None,
            elapsed_s: 1.0,
            metrics: vec![MetricVerdict {
                name: "error_rate".into(),
                outcome,
                critical: true,
                reason: String::new(),
                baseline: base,
                canary,
                effect: 1.0,
                evidence: 1.0,
                bound: 100.0,
                baseline_samples: 10,
                canary_samples: 10,
                detectable: None,
            }],
        }
    }

    fn status(d: DeployInfo) -> ServiceStatus {
        ServiceStatus {
            service: "s".into(),
            current: Some("v1".into()),
            previous: None,
            deploy: Some(d),
            router: None,
            instances: vec![],
            routes: None,
            data: None,
            held: None,
            restarts: Default::default(),
        }
    }

    #[test]
    fn weights_points_and_decisions_are_kept_in_time_order() {
        let cfg = JudgeConfig::default();
        let mut r = Recorder::default();
        let v = verdict(Outcome::Inconclusive, 0.01, 0.02);
        r.observe(&status(deploy(10, vec![], Some(v.clone()))), &cfg, 2_000);
        r.observe(&status(deploy(10, vec![], Some(v.clone()))), &cfg, 2_500);
        let pass = verdict(Outcome::Pass, 0.01, 0.011);
        r.observe(&status(deploy(25, vec![pass.clone()], Some(v.clone()))), &cfg, 3_000);
        r.observe(
            &status(deploy(25, vec![pass], Some(verdict(Outcome::Pass, f64::NAN, 0.0)))),
            &cfg,
            3_500,
        );
        let t = &r.tracks[&1];
        assert_eq!(
            t.moves.iter().map(|m| (m.t, m.weight)).collect::<Vec<_>>(),
            [(1.0, 10), (2.0, 25)]
        );
        assert_eq!(t.decisions.len(), 1, "a verdict is a decision once");
        assert_eq!(t.decisions[0].t, 2.0);
        let pts = &t.metrics["error_rate"];
        assert_eq!(pts.len(), 3, "a NaN value is no point");
        // 25% relative or 0.1 points absolute, whichever is wider.
        assert!((pts[0].hi - 0.0125).abs() < 1e-12, "{:?}", pts[0]);
    }

    #[test]
    fn an_abort_is_a_decision_with_its_reason() {
        let cfg = JudgeConfig::default();
        let mut r = Recorder::default();
        let mut d = deploy(10, vec![], None);
        d.phase = DeployPhase::Aborted;
        d.finished_ms = Some(5_000);
        d.outcome = Some("aborted by hand".into());
        r.observe(&status(d.clone()), &cfg, 6_000);
        r.observe(&status(d), &cfg, 7_000);
        let t = &r.tracks[&1];
        assert_eq!(t.decisions.len(), 1);
        assert_eq!(t.decisions[0].reason, "aborted by hand");
        assert_eq!(t.decisions[0].t, 4.0, "at the deploy's end");
    }

    fn snap(router: &str, uptime_ms: u64, releases: &[(&str, u64, u64)]) -> MetricsSnapshot {
        let releases = releases
            .iter()
            .map(|(rel, req, err)| {
                let totals = wire::metrics::Counters {
                    requests: *req,
                    responses: wire::metrics::StatusClasses {
                        c5xx: *err,
                        ..Default::default()
                    },
                    ..Default::default()
                };
                wire::metrics::ReleaseMetrics {
                    release: rel.to_string(),
                    totals,
                    instances: vec![],
                }
            })
            .collect();
        MetricsSnapshot {
            router_id: router.into(),
            generation: 1,
            uptime_ms,
            releases,
            unrouted: Default::default(),
        }
    }

    #[test]
    fn rates_come_from_the_counters_between_snapshots_and_a_router_restart_starts_over() {
        let mut r = Recorder::default();
        r.observe_metrics(&snap("a", 1_000, &[("v1", 100, 0)]), 10);
        assert!(r.rates.is_empty(), "one snapshot is no interval");
        r.observe_metrics(&snap("a", 2_000, &[("v1", 300, 20), ("v2", 10, 0)]), 20);
        assert_eq!(
            r.rates["v1"][0],
            Rate {
                at: 20,
                requests_per_s: 200.0,
                error_rate: 0.1
            }
        );
        assert_eq!(r.rates["v2"][0].requests_per_s, 10.0, "a new release counts from zero");
        r.observe_metrics(&snap("b", 500, &[("v1", 5, 0)]), 30);
        assert_eq!(r.rates["v1"].len(), 1, "another router: no interval across it");
        r.observe_metrics(&snap("b", 1_500, &[("v1", 5, 0)]), 40);
        assert_eq!(r.rates["v1"][1].error_rate, 0.0, "no requests: no errors");
        assert!(!r.rates.contains_key("v2"), "a release that left is dropped");
        let mut s = snap("b", 2_500, &[("v1", 5, 0)]);
        s.releases[0].totals.open_websockets = 3;
        s.releases[0].totals.open_tcp = 1;
        r.observe_metrics(&s, 50);
        assert_eq!(r.open.releases["v1"], (3, 1), "open connections per release");
    }

    #[test]
    fn the_band_needs_both_tolerances_exceeded() {
        let k = MetricKind::Latency {
            quantile: 0.99,
            tolerance: 0.15,
            absolute_tolerance: wire::HumanDuration::from_millis(2),
            detectable_increase: 0.5,
        };
        assert_eq!(
            band(&k, Direction::Increase, 4.0).1,
            6.0,
            "2 ms is wider than 15% of 4 ms"
        );
        assert!((band(&k, Direction::Increase, 100.0).1 - 115.0).abs() < 1e-9);
        let (lo, hi) = band(&k, Direction::Either, 100.0);
        assert!((lo - 85.0).abs() < 1e-9 && hi > 100.0);
    }

    #[test]
    fn points_and_tracks_stay_bounded() {
        let cfg = JudgeConfig::default();
        let mut r = Recorder::default();
        for k in 0..3000u64 {
            r.observe(
                &status(deploy(10, vec![], Some(verdict(Outcome::Inconclusive, 0.1, 0.1)))),
                &cfg,
                k,
            );
        }
        assert!(r.tracks[&1].metrics["error_rate"].len() <= MAX_POINTS);
        for id in 0..30 {
            let mut d = deploy(10, vec![], None);
            d.id = id;
            r.observe(&status(d), &cfg, 0);
        }
        assert_eq!(r.tracks.len(), MAX_TRACKS);
    }
}
