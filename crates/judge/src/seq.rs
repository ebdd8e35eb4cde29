//! Always-valid evidence for Bernoulli trials whose null probability changes from batch to batch: a likelihood
//! ratio mixed over effect sizes and over restart times, and the overdispersion that tempers it.

use serde::{Deserialize, Serialize};

/// Log-odds shifts of the alternatives mixed over, with equal weights.
const GRID: [f64; 12] = [0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.5, 6.0];
/// A new copy of the test starts this often, so a regression that begins
/// late is not buried under the evidence a healthy start built up.
pub(crate) const RESTART_MS: u64 = 10_000;
/// A copy whose weighted evidence fell this low can no longer matter.
const DROP_LN: f64 = -40.0;

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// ln Σ exp(v), without overflow.
fn log_sum_exp(v: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = v.clone().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + v.map(|x| (x - max).exp()).sum::<f64>().ln()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Copy {
    /// ln of this copy's prior weight (the weights of all copies sum to ≤ 1).
    ln_weight: f64,
    log_lr: [f64; GRID.len()],
}

impl Copy {
    fn log_mixture(&self) -> f64 {
        log_sum_exp(self.log_lr.iter().copied()) - (GRID.len() as f64).ln()
    }
}

/// Tests H0 "each trial succeeds with probability at most p0 (its own p0 per
/// batch)" against "log-odds shifted up by θ", θ mixed over a grid, in copies
/// started at the beginning (weight ½) and every [`RESTART_MS`] after (the
/// k-th with weight 1/(2k(k+1))). Each copy's likelihood ratio is a
/// non-negative supermartingale under H0 that starts at 1 when the copy
/// starts, so their weighted sum is one too, and by Ville's inequality
/// P(it ever reaches 1/α) ≤ α however often it is looked at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Evidence {
    copies: Vec<Copy>,
    restarts: u32,
    next_restart_ms: u64,
}

impl Evidence {
    pub(crate) fn new(start_ms: u64) -> Evidence {
        Evidence {
            copies: vec![Copy {
                ln_weight: 0.5f64.ln(),
                log_lr: [0.0; GRID.len()],
            }],
            restarts: 0,
            next_restart_ms: start_ms + RESTART_MS,
        }
    }

    /// Starts a new copy if one is due at `at_ms` (one at most: a long gap
    /// gets one copy, not one per missed interval).
    pub(crate) fn advance(&mut self, at_ms: u64) {
        if at_ms < self.next_restart_ms {
            return;
        }
        self.restarts += 1;
        let k = self.restarts as f64;
        self.copies.push(Copy {
            ln_weight: -(2.0 * k * (k + 1.0)).ln(),
            log_lr: [0.0; GRID.len()],
        });
        self.next_restart_ms = at_ms + RESTART_MS;
    }

    /// Adds a batch of `successes` and `failures` (may be fractional) whose
    /// null success probability is `p0`, each log-likelihood ratio multiplied
    /// by `temper` (in (0, 1]; a likelihood ratio to a power ≤ 1 keeps its
    /// expectation ≤ 1 under H0).
    pub(crate) fn update(&mut self, successes: f64, failures: f64, p0: f64, temper: f64) {
        if !(p0 > 0.0 && p0 < 1.0) || successes + failures <= 0.0 || temper.is_nan() || temper <= 0.0 {
            return;
        }
        let l0 = logit(p0);
        let t = temper.min(1.0);
        for c in &mut self.copies {
            for (k, theta) in GRID.iter().enumerate() {
                let p1 = sigmoid(l0 + theta);
                c.log_lr[k] += t * (successes * (p1 / p0).ln() + failures * ((1.0 - p1) / (1.0 - p0)).ln());
            }
        }
        let newest = self.copies.len() - 1;
        let mut i = 0;
        self.copies.retain(|c| {
            i += 1;
            i - 1 == newest || c.ln_weight + c.log_mixture() > DROP_LN
        });
    }

    /// ln of the weighted mixture likelihood ratio.
    pub(crate) fn log_evidence(&self) -> f64 {
        log_sum_exp(self.copies.iter().map(|c| c.ln_weight + c.log_mixture()))
    }

    /// Whether the state is internally consistent (for restored states).
    pub(crate) fn is_sound(&self) -> bool {
        !self.copies.is_empty()
            && self
                .copies
                .iter()
                .all(|c| c.ln_weight <= 0.0 && c.log_lr.iter().all(|l| l.is_finite()))
    }
}

/// The log evidence a test must be expected to reach against an effect for
/// it to be caught: ln(1/α) plus the price of mixing over the grid and of
/// the first copy's weight.
pub(crate) fn target_ln(alpha: f64) -> f64 {
    (1.0 / alpha).ln() + (GRID.len() as f64).ln() + 2f64.ln()
}

/// Kullback-Leibler divergence of Bernoulli(p1) from Bernoulli(p0), in nats.
pub(crate) fn kl(p1: f64, p0: f64) -> f64 {
    let eps = 1e-12;
    let (p1, p0) = (p1.clamp(eps, 1.0 - eps), p0.clamp(eps, 1.0 - eps));
    p1 * (p1 / p0).ln() + (1.0 - p1) * ((1.0 - p1) / (1.0 - p0)).ln()
}

/// Whether `events` trials, each a success with probability `p1` where the
/// null says `p0`, would reach `target` log evidence with 95% probability
/// (normal approximation of the log-likelihood ratio at the true shift).
pub(crate) fn would_catch(events: f64, p1: f64, p0: f64, target: f64) -> bool {
    if events <= 0.0 || p1 <= p0 {
        return false;
    }
    let (p1c, p0c) = (p1.clamp(1e-12, 1.0 - 1e-12), p0.clamp(1e-12, 1.0 - 1e-12));
    let step = (p1c * (1.0 - p0c) / (p0c * (1.0 - p1c))).ln();
    let mean = events * kl(p1, p0);
    let sd = (events * p1c * (1.0 - p1c)).sqrt() * step;
    // A lone success is worth at most one step: need at least that many.
    mean - 1.645 * sd >= target && events * p1c >= (target / step).max(3.0)
}

/// Extra variance of events that come in bursts, at two scales: clusters
/// within a window (a bad upstream connection failing the requests queued
/// on it) and episodes lasting seconds (blocks of [`BLOCK_MS`]). At each
/// scale, the Pearson residuals of the canary's share around its pooled fit
/// estimate a beta-binomial correlation `ρ`, and `x` events then count like
/// `x / (1 + (x−1)ρ)` independent ones. Within windows the estimate starts
/// from "events cluster" (`ρ = 1`, worth [`WITHIN_PRIOR`] pairs of events),
/// across blocks from "no episodes", and both learn from the canary's share
/// and from an A/A split of the baseline's instances (which shows burstiness
/// long before the canary has many errors). Both use past data only, so
/// tempering by them keeps the test valid when events are independent.
/// Recent counts of both sides (decayed with a ~20 s memory): the fit a
/// window's share is compared with, so a regression that starts mid-step is
/// soon the new normal for the fit instead of looking like burstiness.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Fit {
    hits_c: f64,
    n_c: f64,
    hits_b: f64,
    n_b: f64,
    last_ms: u64,
}

const FIT_MEMORY_MS: f64 = 20_000.0;

impl Fit {
    /// Adds a window and returns the share of its events the canary would
    /// have at the recent rates: `n_c`, `n_b` requests, `hits_*` events.
    pub(crate) fn share(&mut self, at_ms: u64, (hits_c, n_c): (f64, f64), (hits_b, n_b): (f64, f64)) -> f64 {
        let keep = (-(at_ms.saturating_sub(self.last_ms) as f64) / FIT_MEMORY_MS).exp();
        self.last_ms = at_ms;
        self.hits_c = self.hits_c * keep + hits_c;
        self.n_c = self.n_c * keep + n_c;
        self.hits_b = self.hits_b * keep + hits_b;
        self.n_b = self.n_b * keep + n_b;
        let rate = |h: f64, n: f64| (h + 0.5) / (n + 1.0);
        let (c, b) = (n_c * rate(self.hits_c, self.n_c), n_b * rate(self.hits_b, self.n_b));
        if c + b > 0.0 { c / (c + b) } else { 0.5 }
    }
}

/// Events of one block being filled, and the canary's (or half A's) share of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Block {
    hits: f64,
    x: f64,
    expected: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Dispersion {
    /// Σ (residual − 1) and Σ (x − 1) over windows with two events or more.
    w_excess: f64,
    w_pairs: f64,
    /// The same over finished blocks, and their number and events.
    excess: f64,
    pairs: f64,
    blocks: f64,
    events: f64,
    /// When the block being filled ends, and its canary and A/A events.
    block_end_ms: u64,
    block: Block,
    aa: Block,
}

/// Events are pooled over blocks this long to see bursts that span windows.
pub(crate) const BLOCK_MS: u64 = 5_000;
/// Weight of "events cluster" (ρ = 1) within windows, in pairs of events:
/// the very first windows count as one event each, then the data decide.
const WITHIN_PRIOR: f64 = 1.0;
/// Weight of "no episodes" (ρ = 0) across blocks, in pairs of events.
const PRIOR_PAIRS: f64 = 5.0;

fn residual(hits: f64, x: f64, share: f64) -> f64 {
    (hits - x * share).powi(2) / (x * share * (1.0 - share))
}

impl Dispersion {
    /// Tempering for the next window, which holds `x` events.
    pub(crate) fn temper(&self, x: f64) -> f64 {
        let within = ((self.w_excess + WITHIN_PRIOR) / (self.w_pairs + WITHIN_PRIOR)).clamp(0.0, 1.0);
        let across = (self.excess / (self.pairs + PRIOR_PAIRS)).clamp(0.0, 1.0);
        let per_block = if self.blocks > 0.0 {
            self.events / self.blocks
        } else {
            1.0
        };
        let a = 1.0 / (1.0 + (x - 1.0).max(0.0) * within);
        let b = 1.0 / (1.0 + (per_block - 1.0).max(0.0) * across);
        a.min(b)
    }

    /// Records a window ending at `at_ms`: `hits` of `x` events from the
    /// canary, where the fit of the recent rates expects a share `share`.
    pub(crate) fn record(&mut self, at_ms: u64, hits: f64, x: f64, share: f64) {
        if at_ms >= self.block_end_ms {
            if self.block_end_ms > 0 {
                self.finish();
            }
            self.block_end_ms = at_ms + BLOCK_MS;
        }
        if self.within(hits, x, share) {
            self.block.hits += hits;
            self.block.x += x;
            self.block.expected += x * share;
        }
    }

    /// Records an A/A window (half A's `hits` of `x` events, `share` its
    /// share of the requests), in the same block as the last [`Self::record`].
    pub(crate) fn record_aa(&mut self, hits: f64, x: f64, share: f64) {
        if self.within(hits, x, share) {
            self.aa.hits += hits;
            self.aa.x += x;
            self.aa.expected += x * share;
        }
    }

    /// Adds a window's residual; false if the window says nothing.
    fn within(&mut self, hits: f64, x: f64, share: f64) -> bool {
        if !(x > 0.0 && share > 0.0 && share < 1.0) {
            return false;
        }
        if x >= 2.0 {
            self.w_excess += residual(hits, x, share) - 1.0;
            self.w_pairs += x - 1.0;
        }
        true
    }

    /// The estimates, without the block being filled (for the next step's test).
    pub(crate) fn carried(&self) -> Dispersion {
        Dispersion {
            block_end_ms: 0,
            block: Block::default(),
            aa: Block::default(),
            ..self.clone()
        }
    }

    fn finish(&mut self) {
        self.blocks += 1.0;
        self.events += self.block.x;
        for b in [std::mem::take(&mut self.block), std::mem::take(&mut self.aa)] {
            if b.x >= 2.0 {
                self.excess += residual(b.hits, b.x, b.expected / b.x) - 1.0;
                self.pairs += b.x - 1.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under H0 the test rejects in at most α of runs even when looked at
    /// after every trial, restarts included (seeded simulation).
    #[test]
    fn continuous_monitoring_with_restarts_keeps_the_error_below_alpha() {
        let mut rng = fastrand::Rng::with_seed(3);
        let alpha: f64 = 0.05;
        let runs = 1_000;
        let mut rejected = 0;
        for _ in 0..runs {
            let mut t = Evidence::new(0);
            // Batches of ten trials a second for two minutes, a look after each.
            for i in 0..120u64 {
                t.advance(i * 1000);
                let p0 = 0.05 + rng.f64() * 0.4;
                let s = (0..10).filter(|_| rng.f64() < p0).count() as f64;
                t.update(s, 10.0 - s, p0, 1.0);
                if t.log_evidence() >= (1.0 / alpha).ln() {
                    rejected += 1;
                    break;
                }
            }
        }
        // Ville's bound, plus three standard errors of this estimate.
        let rate = rejected as f64 / runs as f64;
        let slack = 3.0 * (alpha * (1.0 - alpha) / runs as f64).sqrt();
        assert!(rate <= alpha + slack, "rejected {rate} of null runs");
    }

    #[test]
    fn a_clear_shift_is_found_fast_even_after_a_long_healthy_start() {
        let mut rng = fastrand::Rng::with_seed(5);
        let mut t = Evidence::new(0);
        for i in 0..600u64 {
            t.advance(i * 1000);
            let s = f64::from(u8::from(rng.f64() < 0.1));
            t.update(s, 1.0 - s, 0.1, 1.0);
        }
        let mut n = 0;
        while t.log_evidence() < 1_000f64.ln() {
            let s = f64::from(u8::from(rng.f64() < 0.5));
            t.update(s, 1.0 - s, 0.1, 1.0);
            n += 1;
        }
        assert!(n < 120, "took {n} trials after 600 healthy ones");
        let mut a = Evidence::new(0);
        let mut b = Evidence::new(0);
        a.update(5.0, 95.0, 0.05, 1.0);
        b.update(6.0, 94.0, 0.05, 1.0);
        assert!(b.log_evidence() > a.log_evidence());
        assert!(kl(0.5, 0.1) > kl(0.2, 0.1));
    }

    #[test]
    fn clustered_events_raise_the_dispersion_and_independent_ones_do_not() {
        let mut rng = fastrand::Rng::with_seed(9);
        let (mut clustered, mut independent) = (Dispersion::default(), Dispersion::default());
        assert!(
            clustered.temper(10.0) < 0.2,
            "clusters are assumed until seen otherwise"
        );
        for i in 0..2_000u64 {
            // Ten events per block, in clusters of five that share a side.
            let hits = (0..2).filter(|_| rng.f64() < 0.2).count() as f64 * 5.0;
            clustered.record(i * BLOCK_MS, hits, 10.0, 0.2);
            let hits = (0..10).filter(|_| rng.f64() < 0.2).count() as f64;
            independent.record(i * BLOCK_MS, hits, 10.0, 0.2);
        }
        assert!(clustered.temper(10.0) < 0.4, "{}", clustered.temper(10.0));
        assert!(independent.temper(10.0) > 0.9, "{}", independent.temper(10.0));
        assert_eq!(independent.temper(1.0), 1.0);
    }
}
