//! The latency test: in every window, above the baseline's recent quantile, is each slow request the
//! canary's more often than its share of the window's requests would make it?

use serde::{Deserialize, Serialize};
use wire::metrics::BUCKETS;

use crate::errors::Finding;
use crate::hist::{Dense, lower_us, share_above, share_below, upper_us};
use crate::seq::{Dispersion, Evidence, Fit, target_ln, would_catch};
use crate::{Observation, fmt_odds};

/// The baseline's recent latencies forget at this pace (once they hold enough samples).
const MEMORY_MS: f64 = 10_000.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LatencyTest {
    q: f64,
    up: bool,
    tol: f64,
    abs_us: f64,
    evidence: Evidence,
    dispersion: Dispersion,
    fit: Fit,
    /// The baseline's recent latencies (decayed), where thresholds come from.
    recent: Dense,
    last_ms: Option<u64>,
    /// Everything judged: the canary's and the baseline's latencies, and how
    /// many of them were past the threshold.
    canary: Dense,
    base: Dense,
    past_c: f64,
    past_b: f64,
}

impl LatencyTest {
    pub(crate) fn new(q: f64, up: bool, tol: f64, abs_us: f64, start_ms: u64) -> LatencyTest {
        LatencyTest {
            q,
            up,
            tol,
            abs_us,
            evidence: Evidence::new(start_ms),
            dispersion: Dispersion::default(),
            fit: Fit::default(),
            recent: Dense::default(),
            last_ms: None,
            canary: Dense::default(),
            base: Dense::default(),
            past_c: 0.0,
            past_b: 0.0,
        }
    }

    /// How many recent baseline samples the threshold wants.
    fn wanted(&self) -> f64 {
        (10.0 / self.q.min(1.0 - self.q)).max(200.0)
    }

    /// The canary's allowed latency for a baseline latency `t` µs.
    fn allowed(&self, t: f64) -> f64 {
        if self.up {
            (t * (1.0 + self.tol)).max(t + self.abs_us)
        } else {
            (t * (1.0 - self.tol)).min(t - self.abs_us)
        }
    }

    /// The threshold bucket from the baseline's recent latencies: samples
    /// past it (above for `up`) are the events counted.
    fn threshold(&self) -> Option<usize> {
        let mass = self.recent.total();
        if mass < 20.0 || mass * (1.0 - self.q).min(self.q) < 2.0 {
            return None;
        }
        self.recent.quantile_bucket(self.q)
    }

    /// (canary past the allowed latency, baseline past the threshold) in `c`, `b`.
    fn past(&self, c: &[f64], b: &[f64], i: usize) -> (f64, f64) {
        if self.up {
            let t = self.allowed(upper_us(i));
            let pc: f64 = (0..BUCKETS).map(|j| c[j] * share_above(j, 1.0, t)).sum();
            (pc, b[i + 1..].iter().sum())
        } else {
            let t = self.allowed(lower_us(i));
            let pc: f64 = (0..BUCKETS).map(|j| c[j] * share_below(j, 1.0, t)).sum();
            (pc, b[..i].iter().sum())
        }
    }

    /// Feeds one window: warm canary latencies against warm baseline ones;
    /// `step_warming` leaves the canary out (observed, not judged).
    pub(crate) fn observe(&mut self, o: &Observation, step_warming: bool) {
        self.evidence.advance(o.at_ms);
        let mut b = Dense::default();
        b.add(&o.baseline.warm.latency);
        let mut c = Dense::default();
        if !step_warming {
            c.add(&o.canary.warm.latency);
        }
        let (nc, nb) = (c.total(), b.total());
        if nc > 0.0
            && nb > 0.0
            && let Some(i) = self.threshold()
        {
            let (ec, eb) = self.past(&c.0, &b.0, i);
            let e = ec + eb;
            if e > 0.0 {
                let pi0 = nc / (nc + nb);
                self.evidence.update(ec, eb, pi0, self.dispersion.temper(e));
                let share = self.fit.share(o.at_ms, (ec, nc), (eb, nb));
                self.dispersion.record(o.at_ms, ec, e, share);
            }
            self.past_c += ec;
            self.past_b += eb;
            for j in 0..BUCKETS {
                self.canary.0[j] += c.0[j];
                self.base.0[j] += b.0[j];
            }
        }
        self.remember(&b, o.at_ms);
    }

    fn remember(&mut self, b: &Dense, at_ms: u64) {
        let dt = self.last_ms.map_or(0.0, |l| at_ms.saturating_sub(l) as f64);
        self.last_ms = Some(at_ms);
        let mass = self.recent.total();
        let keep = (-dt / MEMORY_MS).exp();
        let wanted = self.wanted();
        if mass * keep >= wanted {
            self.recent.scale(keep);
        } else if mass > wanted {
            self.recent.scale(wanted / mass);
        }
        for j in 0..BUCKETS {
            self.recent.0[j] += b.0[j];
        }
    }

    /// The slowdown (0.3 = +30%) the judged traffic would have caught with 95% probability.
    pub(crate) fn detectable(&self, alpha: f64) -> Option<f64> {
        let (nc, nb) = (self.canary.total(), self.base.total());
        if nc <= 0.0 || nb <= 0.0 || !self.up {
            return None;
        }
        let i = self.base.quantile_bucket(self.q)?;
        let t = self.allowed(upper_us(i));
        let pb = self.base.0[i + 1..].iter().sum::<f64>() / nb;
        let pi0 = nc / (nc + nb);
        let target = target_ln(alpha);
        let catches = |m: f64| {
            let pc = (0..BUCKETS).map(|j| self.base.0[j] * share_above(j, m, t)).sum::<f64>() / nb;
            let (c, b) = (nc * pc, nb * pb);
            c + b > 0.0 && would_catch(c + b, c / (c + b), pi0, target)
        };
        let (mut lo, mut hi) = (1.0, 16.0);
        if !catches(hi) {
            return None;
        }
        for _ in 0..40 {
            let mid = (lo + hi) / 2.0;
            if catches(mid) { hi = mid } else { lo = mid }
        }
        Some(hi - 1.0)
    }

    pub(crate) fn judged(&self) -> (f64, f64) {
        (self.canary.total(), self.base.total())
    }

    pub(crate) fn finding(&self, alpha: f64) -> Finding {
        let qb = self.base.quantile_ms(self.q);
        let qc = self.canary.quantile_ms(self.q);
        let ev = self.evidence.log_evidence();
        let bound = (1.0 / alpha).ln();
        let failed = ev >= bound;
        let label = format!("p{}", (self.q * 100.0).round());
        let change = if qb > 0.0 { (qc / qb - 1.0) * 100.0 } else { f64::NAN };
        let shown = format!("canary {label} {qc:.1} ms vs baseline {qb:.1} ms ({change:+.0}%)");
        let reason = if failed {
            let sup = prob_superiority(&self.canary.0, &self.base.0);
            let (word, base) = if self.up {
                ("slower", self.past_b)
            } else {
                ("faster", self.past_b)
            };
            format!(
                "{shown}, P(canary > baseline) = {sup:.2}: {word} than the {:.0}% / {:.1} ms tolerance in the \
                 same windows ({:.0} canary vs {base:.0} baseline requests past the baseline's {label}) with odds {} \
                 (bound {})",
                self.tol * 100.0,
                self.abs_us / 1000.0,
                self.past_c,
                fmt_odds(ev),
                fmt_odds(bound)
            )
        } else {
            shown
        };
        Finding {
            failed,
            log_evidence: ev,
            reason,
            baseline: qb,
            canary: qc,
        }
    }

    /// Takes over what `old` learned: bursts, and the baseline's recent latencies.
    pub(crate) fn inherit(&mut self, old: &LatencyTest) {
        self.dispersion = old.dispersion.carried();
        self.recent = old.recent.clone();
        self.last_ms = old.last_ms;
    }

    pub(crate) fn is_sound(&self) -> bool {
        self.evidence.is_sound() && self.past_c.is_finite() && self.past_b.is_finite()
    }
}

/// P(canary > baseline) + ½·P(tie) from two histograms (ties: same bucket).
fn prob_superiority(canary: &[f64], base: &[f64]) -> f64 {
    let nc: f64 = canary.iter().sum();
    let nb: f64 = base.iter().sum();
    if nc <= 0.0 || nb <= 0.0 {
        return f64::NAN;
    }
    let mut below = 0.0;
    let mut acc = 0.0;
    for i in 0..canary.len().min(base.len()) {
        acc += canary[i] * (below + base[i] / 2.0);
        below += base[i];
    }
    acc / (nc * nb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superiority_of_identical_histograms_is_one_half() {
        let mut a = vec![0.0; BUCKETS];
        a[100] = 10.0;
        a[120] = 10.0;
        assert!((prob_superiority(&a, &a) - 0.5).abs() < 1e-9);
        let mut b = vec![0.0; BUCKETS];
        b[200] = 5.0;
        assert!((prob_superiority(&b, &a) - 1.0).abs() < 1e-9);
    }
}
