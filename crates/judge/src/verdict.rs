//! The judge of one analysis: its metrics' tests, the error budget they share, and the step's verdict from
//! them (fail at once, pass at the end of the hold, or too little traffic).

use serde::{Deserialize, Serialize};
use wire::judge::{Alarm, Direction, JudgeConfig, MetricConfig, MetricKind, MetricVerdict, Outcome, PassRule, Verdict};

use crate::Observation;
use crate::errors::{ErrorTest, Finding};
use crate::latency::LatencyTest;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Test {
    Errors(ErrorTest),
    Latency(LatencyTest),
}

impl Test {
    fn finding(&self, alpha: f64) -> Finding {
        match self {
            Test::Errors(t) => t.finding(alpha),
            Test::Latency(t) => t.finding(alpha),
        }
    }

    fn detectable(&self, alpha: f64) -> Option<f64> {
        match self {
            Test::Errors(t) => t.detectable(alpha),
            Test::Latency(t) => t.detectable(alpha),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Metric {
    config: MetricConfig,
    /// One test per bad direction.
    tests: Vec<Test>,
    /// Set at the first failure: failures are final.
    failed: Option<MetricVerdict>,
}

fn directions(d: Direction) -> &'static [bool] {
    match d {
        Direction::Increase => &[true],
        Direction::Decrease => &[false],
        Direction::Either => &[true, false],
    }
}

/// A judge for one analysis (one canary step, or a whole rolling deploy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judge {
    config: JudgeConfig,
    /// The deploy's error budget is shared by this many analyses.
    analyses: u32,
    started_ms: u64,
    last_ms: u64,
    metrics: Vec<Metric>,
    canary_requests: u64,
    baseline_requests: u64,
}

impl Judge {
    /// A judge starting at `now_ms`, one of `analyses` that share the deploy's `alpha`.
    pub fn new(config: &JudgeConfig, analyses: u32, now_ms: u64) -> Judge {
        let metrics = config
            .metrics
            .iter()
            .map(|m| {
                let tests = directions(m.direction)
                    .iter()
                    .map(|&up| match &m.kind {
                        MetricKind::ErrorRate {
                            relative_tolerance,
                            absolute_tolerance,
                            ..
                        } => Test::Errors(ErrorTest::new(
                            up,
                            *relative_tolerance,
                            *absolute_tolerance,
                            config.warmup_relative_tolerance,
                            config.warmup_absolute_tolerance,
                            now_ms,
                        )),
                        MetricKind::Latency {
                            quantile,
                            tolerance,
                            absolute_tolerance,
                            ..
                        } => Test::Latency(LatencyTest::new(
                            *quantile,
                            up,
                            *tolerance,
                            absolute_tolerance.0.as_secs_f64() * 1e6,
                            now_ms,
                        )),
                    })
                    .collect();
                Metric {
                    config: m.clone(),
                    tests,
                    failed: None,
                }
            })
            .collect();
        Judge {
            config: config.clone(),
            analyses: analyses.max(1),
            started_ms: now_ms,
            last_ms: now_ms,
            metrics,
            canary_requests: 0,
            baseline_requests: 0,
        }
    }

    /// Takes over what the previous step's judge learned about the traffic
    /// (bursts, the baseline's recent latencies), not its evidence.
    pub(crate) fn inherit(&mut self, old: &Judge) {
        for (m, o) in self.metrics.iter_mut().zip(&old.metrics) {
            if m.config != o.config {
                continue;
            }
            for (t, ot) in m.tests.iter_mut().zip(&o.tests) {
                match (t, ot) {
                    (Test::Errors(a), Test::Errors(b)) => a.inherit(b),
                    (Test::Latency(a), Test::Latency(b)) => a.inherit(b),
                    _ => {}
                }
            }
        }
    }

    pub fn config(&self) -> &JudgeConfig {
        &self.config
    }

    /// The α of each test: the deploy's budget over analyses and directions.
    fn alpha_each(&self) -> f64 {
        let tests: usize = self.metrics.iter().map(|m| m.tests.len()).sum();
        self.config.alpha / (self.analyses as f64 * tests.max(1) as f64)
    }

    /// Feeds one window.
    pub fn observe(&mut self, o: &Observation) {
        self.last_ms = self.last_ms.max(o.at_ms);
        let step_warming = o.at_ms < self.started_ms + self.config.step_warmup.as_millis();
        self.canary_requests += o.canary.requests();
        self.baseline_requests += o.baseline.requests();
        let alpha = self.alpha_each();
        for m in &mut self.metrics {
            for t in &mut m.tests {
                match t {
                    Test::Errors(e) => e.observe(o, step_warming),
                    Test::Latency(l) => l.observe(o, step_warming),
                }
            }
            if m.failed.is_none() {
                let v = metric_verdict(m, alpha);
                if v.outcome == Outcome::Fail {
                    m.failed = Some(v);
                }
            }
        }
    }

    /// The verdict at `now_ms` for a step whose hold ends at `hold_end_ms`
    /// (`None`: an analysis without a hold, which never passes).
    pub fn verdict(&self, now_ms: u64, hold_end_ms: Option<u64>) -> Verdict {
        let alpha = self.alpha_each();
        let mut metrics: Vec<MetricVerdict> = self
            .metrics
            .iter()
            .map(|m| m.failed.clone().unwrap_or_else(|| metric_verdict(m, alpha)))
            .collect();
        let elapsed_s = now_ms.saturating_sub(self.started_ms) as f64 / 1000.0;
        let verdict = |outcome, reason: String, alarm, metrics| Verdict {
            outcome,
            reason,
            alarm,
            elapsed_s,
            metrics,
        };
        if let Some(reason) = self.failure(&metrics) {
            return verdict(Outcome::Fail, reason, None, metrics);
        }
        let (nc, nb) = (self.canary_requests, self.baseline_requests);
        let min = self.config.min_requests;
        let alarm = if nc == 0 && nb > 0 {
            Some(Alarm::NoCanaryTraffic)
        } else if nb == 0 && nc > 0 {
            Some(Alarm::NoBaselineTraffic)
        } else {
            None
        };
        let ended = hold_end_ms.is_some_and(|h| now_ms >= h);
        if ended && alarm == Some(Alarm::NoCanaryTraffic) {
            let reason = format!(
                "canary received no traffic: the baseline served {nb} requests in {elapsed_s:.0}s and the canary none; \
                 check the cohort rules, the step's weight and the releases' client_versions gates"
            );
            return verdict(Outcome::Fail, reason, alarm, metrics);
        }
        let traffic = format!("{nc} canary and {nb} baseline requests");
        if !ended {
            let left = hold_end_ms.map_or(String::new(), |h| {
                format!(", {}s of the hold left", (h - now_ms) / 1000)
            });
            let mut reason = format!("watching: {traffic}, no metric failed{left}");
            if let Some(a) = alarm {
                reason = format!("{} so far; {reason}", a.as_str());
            }
            return verdict(Outcome::Inconclusive, reason, alarm, metrics);
        }
        if nc < min || nb < min {
            let reason = format!("too little traffic to judge: {traffic}, {min} of each needed");
            return verdict(Outcome::Inconclusive, reason, alarm, metrics);
        }
        for (v, m) in metrics.iter_mut().zip(&self.metrics) {
            v.detectable = m.tests.iter().find_map(|t| t.detectable(alpha));
        }
        let caught = self.caught(&metrics);
        if self.config.pass == PassRule::Proven
            && let Some(short) = self.unproven(&metrics)
        {
            let reason = format!("not proven yet: {short} ({traffic}; would have caught {caught})");
            return verdict(Outcome::Inconclusive, reason, alarm, metrics);
        }
        for m in &mut metrics {
            if m.outcome != Outcome::Fail {
                m.outcome = Outcome::Pass;
            }
        }
        let seen: Vec<String> = metrics
            .iter()
            .map(|m| match m.outcome {
                Outcome::Fail => format!("{} failed (not critical): {}", m.name, m.reason),
                _ => format!("{} {}", m.name, m.reason),
            })
            .collect();
        let reason = format!(
            "step passed after {elapsed_s:.0}s: {}; this step would have caught {caught} with 95% probability",
            seen.join(", ")
        );
        verdict(Outcome::Pass, reason, None, metrics)
    }

    /// The failure, if the failed metrics decide the verdict.
    fn failure(&self, metrics: &[MetricVerdict]) -> Option<String> {
        if let Some(f) = metrics.iter().find(|v| v.critical && v.outcome == Outcome::Fail) {
            return Some(format!("{} failed: {}", f.name, f.reason));
        }
        let total: f64 = self.metrics.iter().map(|m| m.config.weight).sum();
        let failing: Vec<(&MetricVerdict, f64)> = metrics
            .iter()
            .zip(&self.metrics)
            .filter(|(v, _)| v.outcome == Outcome::Fail)
            .map(|(v, m)| (v, m.config.weight))
            .collect();
        let failed: f64 = failing.iter().map(|(_, w)| w).sum();
        if failing.is_empty() || total <= 0.0 || failed / total < 0.5 {
            return None;
        }
        let names: Vec<String> = failing
            .iter()
            .map(|(v, _)| format!("{}: {}", v.name, v.reason))
            .collect();
        Some(format!(
            "metrics holding {:.0}% of the weight failed: {}",
            100.0 * failed / total,
            names.join("; ")
        ))
    }

    /// "errors ≥ 0.40%, latency_p50 +12%, ..." from the metrics' detectable effects.
    fn caught(&self, metrics: &[MetricVerdict]) -> String {
        let parts: Vec<String> = metrics
            .iter()
            .zip(&self.metrics)
            .map(|(v, m)| match (&m.config.kind, v.detectable) {
                (_, None) => format!("{}: nothing yet", v.name),
                (MetricKind::ErrorRate { .. }, Some(d)) => format!("{} ≥ {:.2}%", v.name, d * 100.0),
                (MetricKind::Latency { .. }, Some(d)) => format!("{} +{:.0}%", v.name, d * 100.0),
            })
            .collect();
        parts.join(", ")
    }

    /// What `pass = "proven"` still waits for, if anything.
    fn unproven(&self, metrics: &[MetricVerdict]) -> Option<String> {
        let short: Vec<String> = metrics
            .iter()
            .zip(&self.metrics)
            .filter(|(v, m)| {
                let wanted = match m.config.kind {
                    MetricKind::ErrorRate { detectable_ratio, .. } => {
                        let (x, n) = (v.baseline * v.baseline_samples as f64, v.baseline_samples as f64);
                        detectable_ratio * (x + 0.5) / (n + 1.0)
                    }
                    MetricKind::Latency {
                        detectable_increase, ..
                    } => detectable_increase,
                };
                v.detectable.is_none_or(|d| d > wanted)
            })
            .map(|(v, _)| v.name.clone())
            .collect();
        (!short.is_empty()).then(|| format!("{} could not have caught the configured effect yet", short.join(", ")))
    }

    /// Whether a restored judge is internally consistent.
    pub(crate) fn is_sound(&self) -> bool {
        self.config.problems("analysis").is_empty()
            && self.metrics.len() == self.config.metrics.len()
            && self.metrics.iter().zip(&self.config.metrics).all(|(m, c)| {
                m.config == *c
                    && m.tests.len() == directions(c.direction).len()
                    && m.tests.iter().all(|t| match (t, &c.kind) {
                        (Test::Errors(e), MetricKind::ErrorRate { .. }) => e.is_sound(),
                        (Test::Latency(l), MetricKind::Latency { .. }) => l.is_sound(),
                        _ => false,
                    })
            })
    }
}

fn metric_verdict(m: &Metric, alpha: f64) -> MetricVerdict {
    let findings: Vec<Finding> = m.tests.iter().map(|t| t.finding(alpha)).collect();
    let best = findings
        .iter()
        .enumerate()
        .max_by(|a, b| {
            (a.1.failed, a.1.log_evidence)
                .partial_cmp(&(b.1.failed, b.1.log_evidence))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .map_or(0, |(i, _)| i);
    let f = &findings[best];
    let (canary_samples, baseline_samples) = match &m.tests[best] {
        Test::Errors(e) => e.requests(),
        Test::Latency(l) => {
            let (c, b) = l.judged();
            (c as u64, b as u64)
        }
    };
    MetricVerdict {
        name: m.config.name.clone(),
        outcome: if f.failed { Outcome::Fail } else { Outcome::Inconclusive },
        critical: m.config.critical,
        reason: f.reason.clone(),
        baseline: f.baseline,
        canary: f.canary,
        effect: if f.baseline > 0.0 {
            f.canary / f.baseline
        } else {
            f64::NAN
        },
        evidence: f.log_evidence.min(700.0).exp(),
        bound: 1.0 / alpha,
        baseline_samples,
        canary_samples,
        detectable: None,
    }
}
