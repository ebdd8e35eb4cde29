//! The canary judge: compares a canary with its baseline as data arrives and answers pass, fail, or inconclusive (keep collecting), with reasons.
//!
//! A pure crate: windows of counts and latency histograms go in (with their
//! time), verdicts come out. No I/O, no clock.
//!
//! # Method, and why
//!
//! The control plane asks for a verdict every second, so a fixed-horizon
//! test (Kayenta's Mann-Whitney, a chi-square) re-run on growing data would
//! see its false-failure rate grow with every look. Every metric is
//! therefore judged by a **mixture sequential probability ratio test**
//! (`seq::MixtureSprt`): a likelihood ratio against "the canary is within
//! tolerance", mixed over a grid of alternatives. It is a non-negative
//! supermartingale while the canary is within tolerance, so by Ville's
//! inequality the chance it *ever* reaches `1/α` is at most `α`, however
//! often it is looked at. A clearly bad canary makes it grow exponentially
//! fast, which is what stops it in seconds.
//!
//! **Error rate.** Each window gives canary and baseline request and error
//! counts. Given the window's total errors, the number that came from the
//! canary is binomial with probability
//! `π = n_c·p_c / (n_c·p_c + n_b·p_b)`; at the tolerance boundary
//! `p_c = (1 + r)·p_b` this is `π₀ = n_c(1+r) / (n_c(1+r) + n_b)`, which
//! depends on traffic only. So every error is a Bernoulli trial "did the
//! canary make it?" with a known null probability, whatever the baseline's
//! rate — this works when the baseline has no errors at all (where rank
//! tests on error series are blind, Kayenta's known weakness). An absolute
//! tolerance gates the result: the canary's rate must also exceed the
//! baseline's by more than it (0.10% vs 0.12% is no failure).
//!
//! **Latency.** Histograms are compared through the baseline's quantile:
//! with `T = Q_b(q)·(1 + tolerance)`, "the canary's q-quantile is within
//! tolerance" means `P(canary latency > T) ≤ 1 − q`. Each canary request is
//! a Bernoulli trial "above T" (a sign test against the baseline quantile,
//! i.e. a rank comparison that handles ties through the histogram buckets),
//! judged separately for the median and the tail (p99). `Q_b` is the upper
//! 99% confidence bound of the baseline quantile and a bucket straddling `T`
//! counts as not above it, so estimation and bucketing err towards pass. The
//! reported effect size includes the probability of superiority
//! `P(canary > baseline)` from both histograms.
//!
//! **Pass.** Absence of a failure is not evidence of health on its own, so
//! a metric passes only once (a) both sides served `min_samples` requests and
//! (b) the traffic seen would have given, in expectation, enough evidence to
//! fail a canary that is clearly bad (`detectable_ratio` times the error
//! rate, or `detectable_increase` slower). Until then it is inconclusive,
//! with an estimate of how many more canary requests a decision needs.
//!
//! Metrics have a direction (increase, decrease, either), a weight, and may
//! be critical: a critical failure fails the verdict at once; otherwise the
//! verdict fails when failing metrics hold half the weight, and passes when
//! every metric passes.

pub mod seq;

use wire::judge::{Direction, JudgeConfig, MetricConfig, MetricKind, MetricVerdict, Outcome, Verdict};
use wire::metrics::{BUCKETS, Histogram, bucket_index, bucket_lower_us, bucket_upper_us};

use crate::seq::{MixtureSprt, kl, pass_target};

/// Counts of one release over one window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    pub requests: u64,
    /// 5xx responses and upstream failures.
    pub errors: u64,
    pub latency: Histogram,
}

/// One window of both releases, ending at `at_ms` (ms since the analysis began).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub at_ms: u64,
    pub baseline: Window,
    pub canary: Window,
}

/// z for the one-sided 99% bound on the baseline quantile.
const Z_QUANTILE: f64 = 2.326;

fn add_dense(dense: &mut [u64], h: &Histogram) {
    for b in &h.buckets {
        dense[bucket_index(b.le_us)] += b.count;
    }
}

/// The bucket holding the sample of rank `rank` (1-based) in `dense`.
fn bucket_of_rank(dense: &[u64], rank: u64) -> Option<usize> {
    let mut seen = 0;
    for (i, c) in dense.iter().enumerate() {
        seen += c;
        if seen >= rank && rank > 0 {
            return Some(i);
        }
    }
    None
}

fn quantile_ms(dense: &[u64], total: u64, q: f64) -> f64 {
    if total == 0 {
        return f64::NAN;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    match bucket_of_rank(dense, rank) {
        Some(i) => {
            let lo = bucket_lower_us(i) as f64;
            let hi = if i + 1 < BUCKETS {
                bucket_lower_us(i + 1) as f64
            } else {
                lo
            };
            (lo + hi) / 2.0 / 1000.0
        }
        None => f64::NAN,
    }
}

fn fmt_rate(x: u64, n: u64) -> String {
    if n == 0 {
        "n/a".into()
    } else {
        format!("{:.3}% ({x}/{n})", 100.0 * x as f64 / n as f64)
    }
}

fn fmt_odds(e: f64) -> String {
    if e >= 1e6 {
        format!("{e:.1e}:1")
    } else {
        format!("{e:.0}:1")
    }
}

/// One side of a test: a direction sign and its SPRT.
#[derive(Debug, Clone)]
struct Side {
    up: bool,
    sprt: MixtureSprt,
}

fn sides(d: Direction) -> Vec<Side> {
    let s = |up| Side {
        up,
        sprt: MixtureSprt::default(),
    };
    match d {
        Direction::Increase => vec![s(true)],
        Direction::Decrease => vec![s(false)],
        Direction::Either => vec![s(true), s(false)],
    }
}

#[derive(Debug, Clone)]
struct ErrorState {
    rel: f64,
    abs: f64,
    detect: f64,
    sides: Vec<Side>,
    n_c: u64,
    x_c: u64,
    n_b: u64,
    x_b: u64,
}

#[derive(Debug, Clone)]
struct LatencyState {
    q: f64,
    tol: f64,
    detect: f64,
    sides: Vec<Side>,
    base: Vec<u64>,
    canary: Vec<u64>,
    n_b: u64,
    n_c: u64,
    /// Canary samples that entered the test (after the baseline had enough data).
    judged: u64,
    /// Expected log evidence against a clearly slower canary, per side.
    info: Vec<f64>,
}

#[derive(Debug, Clone)]
enum State {
    Errors(ErrorState),
    Latency(LatencyState),
}

#[derive(Debug, Clone)]
struct Metric {
    config: MetricConfig,
    alpha: f64,
    state: State,
    /// Set at the first crossing: failures are final.
    failed: Option<MetricVerdict>,
}

/// A judge for one canary analysis (one step, or a whole deploy).
#[derive(Debug, Clone)]
pub struct Judge {
    metrics: Vec<Metric>,
    last_ms: u64,
}

impl Judge {
    pub fn new(config: &JudgeConfig) -> Judge {
        let metrics = config
            .metrics
            .iter()
            .map(|m| {
                let per_side = match m.direction {
                    Direction::Either => config.alpha / 2.0,
                    _ => config.alpha,
                };
                let state = match m.kind {
                    MetricKind::ErrorRate {
                        relative_tolerance,
                        absolute_tolerance,
                        detectable_ratio,
                    } => State::Errors(ErrorState {
                        rel: relative_tolerance,
                        abs: absolute_tolerance,
                        detect: detectable_ratio,
                        sides: sides(m.direction),
                        n_c: 0,
                        x_c: 0,
                        n_b: 0,
                        x_b: 0,
                    }),
                    MetricKind::Latency {
                        quantile,
                        tolerance,
                        detectable_increase,
                    } => State::Latency(LatencyState {
                        q: quantile,
                        tol: tolerance,
                        detect: detectable_increase,
                        sides: sides(m.direction),
                        base: vec![0; BUCKETS],
                        canary: vec![0; BUCKETS],
                        n_b: 0,
                        n_c: 0,
                        judged: 0,
                        info: vec![0.0; sides(m.direction).len()],
                    }),
                };
                Metric {
                    config: m.clone(),
                    alpha: per_side,
                    state,
                    failed: None,
                }
            })
            .collect();
        Judge { metrics, last_ms: 0 }
    }

    /// Feeds one window.
    pub fn observe(&mut self, obs: &Observation) {
        self.last_ms = self.last_ms.max(obs.at_ms);
        for m in &mut self.metrics {
            match &mut m.state {
                State::Errors(s) => s.observe(obs),
                State::Latency(s) => s.observe(obs),
            }
            if m.failed.is_none() {
                let v = m.verdict(self.last_ms);
                if v.outcome == Outcome::Fail {
                    m.failed = Some(v);
                }
            }
        }
    }

    /// The verdict on everything seen so far.
    pub fn verdict(&self) -> Verdict {
        let metrics: Vec<MetricVerdict> = self
            .metrics
            .iter()
            .map(|m| m.failed.clone().unwrap_or_else(|| m.verdict(self.last_ms)))
            .collect();
        let elapsed_s = self.last_ms as f64 / 1000.0;
        if let Some(f) = metrics.iter().find(|v| v.critical && v.outcome == Outcome::Fail) {
            return Verdict {
                outcome: Outcome::Fail,
                reason: format!("{} failed: {}", f.name, f.reason),
                elapsed_s,
                metrics,
            };
        }
        let non_critical: Vec<(&MetricVerdict, f64)> = metrics
            .iter()
            .zip(&self.metrics)
            .filter(|(v, _)| !v.critical)
            .map(|(v, m)| (v, m.config.weight))
            .collect();
        let total: f64 = non_critical.iter().map(|(_, w)| w).sum();
        let failed: f64 = non_critical
            .iter()
            .filter(|(v, _)| v.outcome == Outcome::Fail)
            .map(|(_, w)| w)
            .sum();
        if total > 0.0 && failed / total >= 0.5 {
            let names: Vec<String> = non_critical
                .iter()
                .filter(|(v, _)| v.outcome == Outcome::Fail)
                .map(|(v, _)| format!("{}: {}", v.name, v.reason))
                .collect();
            return Verdict {
                outcome: Outcome::Fail,
                reason: format!(
                    "metrics holding {:.0}% of the weight failed: {}",
                    100.0 * failed / total,
                    names.join("; ")
                ),
                elapsed_s,
                metrics,
            };
        }
        if metrics.iter().all(|v| v.outcome == Outcome::Pass) {
            let names: Vec<&str> = metrics.iter().map(|v| v.name.as_str()).collect();
            return Verdict {
                outcome: Outcome::Pass,
                reason: format!("all metrics pass ({})", names.join(", ")),
                elapsed_s,
                metrics,
            };
        }
        let waiting: Vec<String> = metrics
            .iter()
            .filter(|v| v.outcome == Outcome::Inconclusive)
            .map(|v| match v.more_canary_requests {
                Some(n) => format!("{} (about {n} more canary requests)", v.name),
                None => v.name.clone(),
            })
            .collect();
        Verdict {
            outcome: Outcome::Inconclusive,
            reason: format!("keep collecting: {}", waiting.join(", ")),
            elapsed_s,
            metrics,
        }
    }
}

impl Metric {
    fn verdict(&self, _now_ms: u64) -> MetricVerdict {
        let c = &self.config;
        match &self.state {
            State::Errors(s) => s.verdict(c, self.alpha),
            State::Latency(s) => s.verdict(c, self.alpha),
        }
    }
}

impl ErrorState {
    fn observe(&mut self, o: &Observation) {
        let (n_c, x_c, n_b, x_b) = (
            o.canary.requests,
            o.canary.errors.min(o.canary.requests),
            o.baseline.requests,
            o.baseline.errors.min(o.baseline.requests),
        );
        self.n_c += n_c;
        self.x_c += x_c;
        self.n_b += n_b;
        self.x_b += x_b;
        if n_c == 0 || n_b == 0 || x_c + x_b == 0 {
            return;
        }
        for side in &mut self.sides {
            let factor = if side.up {
                1.0 + self.rel
            } else {
                (1.0 - self.rel).max(1e-6)
            };
            let pi0 = n_c as f64 * factor / (n_c as f64 * factor + n_b as f64);
            // "Success" is an error from the side that would be bad.
            if side.up {
                side.sprt.update(x_c, x_b, pi0);
            } else {
                side.sprt.update(x_b, x_c, 1.0 - pi0);
            }
        }
    }

    fn verdict(&self, c: &MetricConfig, alpha: f64) -> MetricVerdict {
        let rate = |x: u64, n: u64| if n == 0 { f64::NAN } else { x as f64 / n as f64 };
        let (pb, pc) = (rate(self.x_b, self.n_b), rate(self.x_c, self.n_c));
        let effect = if pb > 0.0 { pc / pb } else { f64::NAN };
        let bound = 1.0 / alpha;
        let best = self.sides.iter().map(|s| s.sprt.evidence()).fold(0.0, f64::max);
        let mut v = MetricVerdict {
            name: c.name.clone(),
            outcome: Outcome::Inconclusive,
            critical: c.critical,
            reason: String::new(),
            baseline: pb,
            canary: pc,
            effect,
            evidence: best,
            bound,
            baseline_samples: self.n_b,
            canary_samples: self.n_c,
            more_canary_requests: None,
        };
        for side in &self.sides {
            let ev = side.sprt.evidence();
            let diff = if side.up { pc - pb } else { pb - pc };
            if ev >= bound && diff > self.abs {
                v.outcome = Outcome::Fail;
                v.evidence = ev;
                let (word, tol) = if side.up {
                    ("higher", 1.0 + self.rel)
                } else {
                    ("lower", 1.0 - self.rel)
                };
                v.reason = format!(
                    "canary error rate {} vs baseline {}: {word} than {tol:.2}x the baseline plus {:.2} points with odds {} (bound {})",
                    fmt_rate(self.x_c, self.n_c),
                    fmt_rate(self.x_b, self.n_b),
                    self.abs * 100.0,
                    fmt_odds(ev),
                    fmt_odds(bound)
                );
                return v;
            }
        }
        if self.n_c == 0 || self.n_b == 0 {
            v.reason = "no canary or baseline requests yet".into();
            v.more_canary_requests = Some(c.min_samples.max(1));
            return v;
        }
        // Expected evidence against a clearly bad canary, given this traffic.
        let p_ref = if self.n_b > 0 {
            ((self.x_b as f64 + 0.5) / (self.n_b as f64 + 1.0)).max(self.abs)
        } else {
            self.abs
        };
        let (ncf, nbf) = (self.n_c as f64, self.n_b as f64);
        let info = self
            .sides
            .iter()
            .map(|side| {
                let (alt_c, pi0) = if side.up {
                    (
                        ncf * p_ref * self.detect,
                        ncf * (1.0 + self.rel) / (ncf * (1.0 + self.rel) + nbf),
                    )
                } else {
                    (
                        ncf * p_ref / self.detect,
                        ncf * (1.0 - self.rel) / (ncf * (1.0 - self.rel) + nbf),
                    )
                };
                let base = nbf * p_ref;
                let m = alt_c + base;
                if m <= 0.0 { 0.0 } else { m * kl(alt_c / m, pi0) }
            })
            .fold(f64::INFINITY, f64::min);
        let target = pass_target(alpha);
        let enough = self.n_c >= c.min_samples && self.n_b >= c.min_samples;
        if enough && info >= target {
            v.outcome = Outcome::Pass;
            v.reason = format!(
                "canary error rate {} vs baseline {}: no sign of harm, and enough traffic to have caught {:.1}x the baseline rate",
                fmt_rate(self.x_c, self.n_c),
                fmt_rate(self.x_b, self.n_b),
                self.detect
            );
            return v;
        }
        let per_request = info / ncf.max(1.0);
        let for_power = if per_request > 0.0 {
            ((target - info).max(0.0) / per_request).ceil() as u64
        } else {
            u64::MAX / 2
        };
        let for_min = c.min_samples.saturating_sub(self.n_c);
        let more = for_power.max(for_min);
        v.more_canary_requests = Some(more);
        v.reason = format!(
            "canary error rate {} vs baseline {}: not enough traffic yet to tell {:.1}x the baseline rate from noise (about {more} more canary requests)",
            fmt_rate(self.x_c, self.n_c),
            fmt_rate(self.x_b, self.n_b),
            self.detect
        );
        v
    }
}

impl LatencyState {
    /// Threshold bucket for one side: canary samples in buckets past it count.
    /// `None` while the baseline has too few samples for the bound.
    fn threshold_us(&self, up: bool) -> Option<f64> {
        let n = self.n_b as f64;
        if n < 1.0 {
            return None;
        }
        let spread = Z_QUANTILE * (self.q * (1.0 - self.q) * n).sqrt();
        if up {
            let rank = (self.q * n + spread).ceil();
            if rank > n {
                return None;
            }
            let i = bucket_of_rank(&self.base, rank as u64)?;
            Some(bucket_upper_us(i) as f64 * (1.0 + self.tol))
        } else {
            let rank = (self.q * n - spread).floor();
            if rank < 1.0 {
                return None;
            }
            let i = bucket_of_rank(&self.base, rank as u64)?;
            Some(bucket_lower_us(i) as f64 * (1.0 - self.tol))
        }
    }

    fn count_past(dense_window: &[(usize, u64)], t: f64, up: bool) -> u64 {
        dense_window
            .iter()
            .filter(|(i, _)| {
                if up {
                    bucket_lower_us(*i) as f64 > t
                } else {
                    (bucket_upper_us(*i) as f64) < t
                }
            })
            .map(|(_, c)| c)
            .sum()
    }

    fn observe(&mut self, o: &Observation) {
        // Judge the canary window against the baseline seen before it.
        let window: Vec<(usize, u64)> = o
            .canary
            .latency
            .buckets
            .iter()
            .map(|b| (bucket_index(b.le_us), b.count))
            .collect();
        let n_window: u64 = window.iter().map(|(_, c)| c).sum();
        add_dense(&mut self.base, &o.baseline.latency);
        self.n_b += o.baseline.latency.count;
        add_dense(&mut self.canary, &o.canary.latency);
        self.n_c += n_window;
        if n_window == 0 {
            return;
        }
        let mut used = false;
        for k in 0..self.sides.len() {
            let up = self.sides[k].up;
            let Some(t) = self.threshold_us(up) else { continue };
            used = true;
            let past = Self::count_past(&window, t, up);
            let p0 = if up { 1.0 - self.q } else { self.q };
            self.sides[k].sprt.update(past, n_window - past, p0);
            // What a clearly slower (or faster) canary would have shown here.
            let factor = if up {
                1.0 + self.detect
            } else {
                1.0 / (1.0 + self.detect)
            };
            let mut alt = 0u64;
            for (i, c) in self.base.iter().enumerate() {
                if *c == 0 {
                    continue;
                }
                let shifted_lo = bucket_lower_us(i) as f64 * factor;
                let shifted_hi = bucket_upper_us(i) as f64 * factor;
                if (up && shifted_lo > t) || (!up && shifted_hi < t) {
                    alt += c;
                }
            }
            let p1 = alt as f64 / self.n_b as f64;
            if p1 > p0 {
                self.info[k] += n_window as f64 * kl(p1, p0);
            }
        }
        if used {
            self.judged += n_window;
        }
    }

    fn verdict(&self, c: &MetricConfig, alpha: f64) -> MetricVerdict {
        let qb = quantile_ms(&self.base, self.n_b, self.q);
        let qc = quantile_ms(&self.canary, self.n_c, self.q);
        let effect = if qb > 0.0 { qc / qb } else { f64::NAN };
        let bound = 1.0 / alpha;
        let best = self.sides.iter().map(|s| s.sprt.evidence()).fold(0.0, f64::max);
        let label = format!("p{}", (self.q * 100.0).round());
        let mut v = MetricVerdict {
            name: c.name.clone(),
            outcome: Outcome::Inconclusive,
            critical: c.critical,
            reason: String::new(),
            baseline: qb,
            canary: qc,
            effect,
            evidence: best,
            bound,
            baseline_samples: self.n_b,
            canary_samples: self.n_c,
            more_canary_requests: None,
        };
        let superiority = prob_superiority(&self.canary, &self.base);
        for side in &self.sides {
            let ev = side.sprt.evidence();
            if ev >= bound {
                v.outcome = Outcome::Fail;
                v.evidence = ev;
                let word = if side.up { "slower" } else { "faster" };
                v.reason = format!(
                    "canary {label} {qc:.1} ms vs baseline {qb:.1} ms ({:+.0}%, P(canary > baseline) = {superiority:.2}): {word} than the {:.0}% tolerance with odds {} (bound {})",
                    (effect - 1.0) * 100.0,
                    self.tol * 100.0,
                    fmt_odds(ev),
                    fmt_odds(bound)
                );
                return v;
            }
        }
        let target = pass_target(alpha);
        let info = self.info.iter().cloned().fold(f64::INFINITY, f64::min);
        let enough = self.n_c >= c.min_samples && self.n_b >= c.min_samples;
        if enough && info >= target {
            v.outcome = Outcome::Pass;
            v.reason = format!(
                "canary {label} {qc:.1} ms vs baseline {qb:.1} ms ({:+.0}%): within the {:.0}% tolerance, with enough traffic to have caught {:+.0}%",
                (effect - 1.0) * 100.0,
                self.tol * 100.0,
                self.detect * 100.0
            );
            return v;
        }
        let per_request = if self.judged > 0 {
            info / self.judged as f64
        } else {
            0.0
        };
        let for_power = if per_request > 0.0 {
            ((target - info).max(0.0) / per_request).ceil() as u64
        } else {
            // The baseline has not enough samples to place its quantile yet.
            (c.min_samples.max(100) as f64 / (1.0 - self.q).min(self.q).max(1e-3) / 10.0) as u64
        };
        let more = for_power.max(c.min_samples.saturating_sub(self.n_c));
        v.more_canary_requests = Some(more);
        v.reason = if self.judged == 0 {
            format!("baseline has {} samples, too few to place its {label} yet", self.n_b)
        } else {
            format!(
                "canary {label} {qc:.1} ms vs baseline {qb:.1} ms: not enough traffic yet to tell {:+.0}% from noise (about {more} more canary requests)",
                self.detect * 100.0
            )
        };
        v
    }
}

/// P(canary > baseline) + ½·P(tie) from two histograms (ties: same bucket).
fn prob_superiority(canary: &[u64], base: &[u64]) -> f64 {
    let nc: u64 = canary.iter().sum();
    let nb: u64 = base.iter().sum();
    if nc == 0 || nb == 0 {
        return f64::NAN;
    }
    let mut below = 0u64;
    let mut acc = 0.0;
    for i in 0..canary.len().min(base.len()) {
        acc += canary[i] as f64 * (below as f64 + base[i] as f64 / 2.0);
        below += base[i];
    }
    acc / (nc as f64 * nb as f64)
}

#[cfg(test)]
mod tests;
