//! The canary judge: compares a canary with its baseline window by window as router metrics arrive, and
//! answers pass, fail or inconclusive (too little traffic), with reasons.
//!
//! A pure crate: router snapshots (or windows) and the time go in, verdicts
//! come out. No I/O, no clock. Its whole state serializes, so a control plane
//! can journal it and a restarted one continues the same test.
//!
//! # What goes in
//!
//! [`Tracker`] turns the router's cumulative per-instance counters into one
//! window per look (the control plane looks every 500 ms): requests, 5xx
//! errors and a latency histogram for the canary and for the baseline, each
//! split into *warm* instances and instances still *warming up* (started or
//! seen becoming ready less than `warmup` ago). The first `step_warmup` of a
//! step counts as warm-up for the canary too. [`Judge`] gets those windows.
//!
//! # Method
//!
//! **Like with like.** Every window is a stratum: the canary is compared with
//! the baseline *in the same window*, never with what the baseline did
//! earlier. Given the window's traffic, the question for each "event" (an
//! error, or a request slower than a threshold) is only *which release it
//! came from*. If the canary is within tolerance, an event is the canary's
//! with probability at most `π₀ = f·n_c / (f·n_c + n_b)` (`n` = the window's
//! requests, `f` = 1 + the relative error tolerance; 1 for latency, whose
//! tolerance is in the threshold), whatever the baseline's level in that
//! window. (For latency the exact law given the window is hypergeometric,
//! which this binomial dominates in convex order, so the test stays valid.) So an outage shared by both releases, a traffic
//! surge or a slow dependency moves both sides together and cancels out.
//!
//! **Errors.** Events are errors. Warm canary requests are held to
//! `relative_tolerance`, warming ones to the wide `warmup_relative_tolerance`
//! (3× the baseline by default), each in a test of its own. A failure also
//! needs that part's observed rate to exceed the baseline's by more than its
//! absolute tolerance (0.1 point; 5 points while warming up): a
//! practical-significance gate, which can only remove failures.
//!
//! **Latency.** Events are requests past a threshold. In each window the
//! threshold `T` is a bucket boundary at the `quantile` of the baseline's
//! *recent* latencies (decayed, ~10 s memory; chosen before the window is
//! seen). Baseline requests count when slower than `T`, canary requests when
//! slower than `max(T·(1 + tolerance), T + absolute_tolerance)` (the share of
//! a histogram bucket straddling it is taken as spread evenly). A canary at
//! exactly the tolerance (every latency `×(1 + tolerance)`, or `+ absolute`)
//! is the null boundary, so the documented tolerance is the real one, and a
//! difference below the absolute floor (2 ms) is never a regression. The
//! test is distribution-free (ranks against a threshold), so heavy tails
//! need no model. Only warm instances' latencies are judged.
//!
//! **Sequential evidence.** Per metric and direction, the events of each
//! window update a likelihood ratio mixed over a grid of effect sizes
//! (`seq::Evidence`). A copy of the test starts at the step's start (prior
//! weight ½) and a new copy every 10 s (the k-th with weight 1/(2k(k+1))), so
//! a regression that starts late in a step is judged on the data since it
//! started, not behind the evidence a healthy start built up. Each copy is a
//! non-negative supermartingale while the canary is within tolerance, so is
//! their weighted sum, and by Ville's inequality it ever reaches `1/α_m`
//! with probability at most `α_m`, however often it is looked at. A clearly
//! bad canary makes it grow exponentially, which stops it in seconds.
//!
//! **Bursts.** Errors that come in clusters (a bad upstream connection
//! failing the requests queued on it) or episodes (an instance's bad
//! upstream for a few seconds) are not independent. Each test estimates a
//! beta-binomial correlation `ρ` of its events, within windows and within
//! 5-second blocks, from the Pearson residuals of the canary's share around
//! a fit of the recent rates (~20 s memory, so a late regression soon fits
//! and is not taken for burstiness), and for errors also from an A/A split of
//! the baseline's instances in two halves, which shows how bursty the
//! service is long before the canary has many errors. `x` events then count
//! as `x / (1 + (x−1)ρ)` independent ones (the window's likelihood ratio is
//! raised to that power over `x`). Within windows the estimate starts from
//! "events cluster" (ρ = 1, worth one pair of events), so a first window
//! full of errors counts as one until the data say otherwise. A likelihood
//! ratio raised to a power ≤ 1 chosen before it is seen still has
//! expectation ≤ 1, so the tempering never breaks the guarantee when events
//! are independent, and restores it approximately when they are not.
//!
//! **One instance is not the release.** An episode on one canary instance
//! (its bad upstream for a few seconds) is real excess that no burst model
//! can tell from a regression. So with two or more canary instances, an
//! error increase fails only if the canary *without any one of its
//! instances* still shows it against the baseline, at odds of 20:1 or more
//! (the same sequential test on the rest of the canary's traffic), or that
//! rest served less than a quarter of the canary's requests (too few to tell:
//! sticky clients on one instance). A release's own regression shows on every
//! instance and passes this at once; one instance's episode does not. The
//! check can only remove failures, so
//! the bound below is unchanged; a regression confined to one instance of
//! several is left to health checks and ejection.
//!
//! **Steps.** Each step gets a new judge (new evidence, its own share of the
//! budget) that keeps what the previous step's judge learned about the
//! traffic: the burst estimates and the baseline's recent latencies
//! ([`Tracker::next_step`]), so no window is lost between steps either.
//!
//! # The error budget, per deploy
//!
//! `alpha` (default 1%) is the chance that a canary within every tolerance
//! fails **anywhere in the deploy**. It is split evenly over the deploy's
//! analyses (its steps) and, within one, over each metric's directions:
//! `α_m = alpha / (steps · Σ directions)` (3 steps × 3 metrics: 0.11% each);
//! an error-rate test gives half of its `α_m` to warm requests and half to
//! warming ones. By the union bound the chances add up to at most `alpha`.
//! This holds for independent requests given each window's traffic (any
//! traffic pattern, any number of looks, restarts of the control plane
//! included, since the saved state continues the same test); warm-up
//! requests are held to the warm-up tolerances. `bench/judge` measures it at
//! the tolerance limit, and for bursty errors.
//!
//! # Verdicts
//!
//! - **Fail** as soon as a critical metric fails, or failing metrics hold at
//!   least half of all metrics' weight. A failure is final. With no canary
//!   request at all by the end of the hold while the baseline was served,
//!   the step fails with the alarm "canary received no traffic".
//! - **Pass** when the step's hold has ended, no metric failed, and canary
//!   and baseline each served at least `min_requests`. The reason says what
//!   the step could have caught: the smallest error rate and slowdown that
//!   would have reached the bound with 95% probability given the traffic
//!   seen. `pass = "proven"` also waits until those are at most
//!   `detectable_ratio` × the baseline's error rate and `detectable_increase`.
//! - **Inconclusive** otherwise: still within the hold, or too little
//!   traffic to say anything.

mod errors;
mod hist;
mod latency;
mod seq;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod tracker;
mod verdict;

pub use tracker::{Member, Members, RestoreError, Tracker};
pub use verdict::Judge;

use wire::metrics::Histogram;

/// Counts of one set of instances over one window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    pub requests: u64,
    /// 5xx responses and upstream failures.
    pub errors: u64,
    pub latency: Histogram,
}

/// One release's window, split by warm-up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Side {
    /// Instances past their warm-up.
    pub warm: Window,
    /// Instances still warming up.
    pub warming: Window,
}

impl Side {
    pub(crate) fn requests(&self) -> u64 {
        self.warm.requests + self.warming.requests
    }

    pub(crate) fn errors(&self) -> u64 {
        self.warm.errors.min(self.warm.requests) + self.warming.errors.min(self.warming.requests)
    }
}

/// One window of both releases, ending at `at_ms` (the caller's clock, ms).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub at_ms: u64,
    pub baseline: Side,
    pub canary: Side,
    /// (requests, errors) of two halves of the baseline's instances: an A/A
    /// comparison that shows how bursty errors are before the canary has many.
    pub baseline_halves: [(u64, u64); 2],
    /// (requests, errors) of each canary instance in this window, in a stable
    /// order: shows whether an excess of errors is the release's or one instance's.
    pub canary_instances: Vec<(u64, u64)>,
}

pub(crate) fn fmt_rate(x: u64, n: u64) -> String {
    if n == 0 {
        "n/a (no requests)".into()
    } else {
        format!("{x}/{n} errors ({:.2}%)", 100.0 * x as f64 / n as f64)
    }
}

pub(crate) fn fmt_odds(ln_odds: f64) -> String {
    let e = ln_odds.min(700.0).exp();
    if e >= 1e6 {
        format!("{e:.1e}:1")
    } else if e >= 10.0 {
        format!("{e:.0}:1")
    } else {
        format!("{e:.1}:1")
    }
}

#[cfg(test)]
mod tests;
