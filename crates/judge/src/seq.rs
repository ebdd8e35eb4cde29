//! A mixture sequential probability ratio test for Bernoulli trials whose null probability may change from trial to trial, and the evidence it can expect.

/// Log-odds shifts of the alternatives mixed over, with equal weights.
const GRID: [f64; 11] = [0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.5];

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Tests H0 "each trial succeeds with probability at most p0 (its own p0
/// per batch)" against alternatives "log-odds shifted up by θ", θ mixed over
/// a grid. The mixture likelihood ratio is a non-negative supermartingale
/// under H0, so by Ville's inequality P(it ever reaches 1/α) ≤ α: the test
/// may be looked at after every batch without inflating its error.
#[derive(Debug, Clone)]
pub struct MixtureSprt {
    log_lr: [f64; GRID.len()],
}

impl Default for MixtureSprt {
    fn default() -> Self {
        MixtureSprt {
            log_lr: [0.0; GRID.len()],
        }
    }
}

impl MixtureSprt {
    /// Adds a batch of `successes` and `failures` whose null success
    /// probability is `p0` (0 < p0 < 1).
    pub fn update(&mut self, successes: u64, failures: u64, p0: f64) {
        if !(p0 > 0.0 && p0 < 1.0) || successes + failures == 0 {
            return;
        }
        let l0 = logit(p0);
        let (s, f) = (successes as f64, failures as f64);
        for (k, theta) in GRID.iter().enumerate() {
            let p1 = sigmoid(l0 + theta);
            self.log_lr[k] += s * (p1 / p0).ln() + f * ((1.0 - p1) / (1.0 - p0)).ln();
        }
    }

    /// ln of the mixture likelihood ratio (equal weights).
    pub fn log_evidence(&self) -> f64 {
        let max = self.log_lr.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = self.log_lr.iter().map(|l| (l - max).exp()).sum();
        max + (sum / GRID.len() as f64).ln()
    }

    /// The mixture likelihood ratio, capped to stay finite in reports.
    pub fn evidence(&self) -> f64 {
        self.log_evidence().min(700.0).exp()
    }
}

/// ln(1/α) plus the price of mixing over the grid: the log evidence a
/// clearly worse canary must be expected to reach before its absence counts
/// as a pass.
pub fn pass_target(alpha: f64) -> f64 {
    (1.0 / alpha).ln() + (GRID.len() as f64).ln() + 1.0
}

/// Kullback-Leibler divergence of Bernoulli(p1) from Bernoulli(p0), in nats.
pub fn kl(p1: f64, p0: f64) -> f64 {
    let eps = 1e-12;
    let (p1, p0) = (p1.clamp(eps, 1.0 - eps), p0.clamp(eps, 1.0 - eps));
    p1 * (p1 / p0).ln() + (1.0 - p1) * ((1.0 - p1) / (1.0 - p0)).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under H0 the test rejects in at most α of runs even when looked at
    /// after every trial (seeded simulation).
    #[test]
    fn continuous_monitoring_keeps_the_error_below_alpha() {
        let mut rng = fastrand::Rng::with_seed(3);
        let alpha = 0.05;
        let runs = 2_000;
        let mut rejected = 0;
        for _ in 0..runs {
            let mut t = MixtureSprt::default();
            for _ in 0..2_000 {
                let p0 = 0.05 + rng.f64() * 0.4;
                let s = u64::from(rng.f64() < p0);
                t.update(s, 1 - s, p0);
                if t.evidence() >= 1.0 / alpha {
                    rejected += 1;
                    break;
                }
            }
        }
        let rate = rejected as f64 / runs as f64;
        assert!(rate <= alpha, "rejected {rate} of null runs");
    }

    #[test]
    fn a_clear_shift_is_found_fast_and_evidence_is_monotone_in_successes() {
        let mut t = MixtureSprt::default();
        let mut n = 0;
        let mut rng = fastrand::Rng::with_seed(5);
        while t.evidence() < 1_000.0 {
            let s = u64::from(rng.f64() < 0.5);
            t.update(s, 1 - s, 0.1);
            n += 1;
        }
        assert!(n < 80, "took {n} trials");
        let mut a = MixtureSprt::default();
        let mut b = MixtureSprt::default();
        a.update(5, 95, 0.05);
        b.update(6, 94, 0.05);
        assert!(b.log_evidence() > a.log_evidence());
        assert!(kl(0.5, 0.1) > kl(0.2, 0.1));
    }
}
