//! Seeded simulations of canary analyses: identical releases pass, bad ones fail fast, thin traffic stays inconclusive.

use wire::judge::{JudgeConfig, Outcome};
use wire::metrics::Histogram;

use super::*;

/// Per-second windows for a canary at `weight` of `rps` total, with error
/// rates and a latency multiplier (log-normal, median 50 ms, σ 0.5).
struct Sim {
    rng: fastrand::Rng,
    rps: f64,
    weight: f64,
    base_err: f64,
    canary_err: f64,
    canary_slow: f64,
    t: u64,
}

impl Sim {
    fn new(seed: u64, rps: f64, weight: f64, canary_err: f64, canary_slow: f64) -> Sim {
        Sim {
            rng: fastrand::Rng::with_seed(seed),
            rps,
            weight,
            base_err: 0.005,
            canary_err,
            canary_slow,
            t: 0,
        }
    }

    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.rng.f64().max(1e-12), self.rng.f64());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    fn poisson(&mut self, mean: f64) -> u64 {
        if mean > 50.0 {
            return (mean + mean.sqrt() * self.normal()).round().max(0.0) as u64;
        }
        let l = (-mean).exp();
        let (mut k, mut p) = (0, 1.0);
        loop {
            p *= self.rng.f64();
            if p <= l {
                return k;
            }
            k += 1;
        }
    }

    fn window(&mut self, n: u64, err: f64, slow: f64) -> Window {
        let mut h = vec![0u64; BUCKETS];
        let mut errors = 0;
        let mut sum = 0;
        for _ in 0..n {
            if self.rng.f64() < err {
                errors += 1;
            }
            let us = (50_000.0 * slow * (0.5 * self.normal()).exp()) as u64;
            h[bucket_index(us)] += 1;
            sum += us;
        }
        Window {
            requests: n,
            errors,
            latency: Histogram::from_dense(&h, sum),
        }
    }

    fn next(&mut self) -> Observation {
        self.t += 1;
        let n_c = self.poisson(self.rps * self.weight);
        let n_b = self.poisson(self.rps * (1.0 - self.weight));
        let (ce, cs, be) = (self.canary_err, self.canary_slow, self.base_err);
        Observation {
            at_ms: self.t * 1000,
            baseline: self.window(n_b, be, 1.0),
            canary: self.window(n_c, ce, cs),
        }
    }
}

/// Runs until the verdict fails or `secs` pass; returns (outcome, seconds).
fn run(seed: u64, rps: f64, weight: f64, err: f64, slow: f64, secs: u64) -> (Outcome, u64, Verdict) {
    let mut sim = Sim::new(seed, rps, weight, err, slow);
    let mut judge = Judge::new(&JudgeConfig::default());
    for s in 1..=secs {
        judge.observe(&sim.next());
        let v = judge.verdict();
        if v.outcome == Outcome::Fail {
            return (Outcome::Fail, s, v);
        }
    }
    let v = judge.verdict();
    (v.outcome, secs, v)
}

#[test]
fn identical_releases_pass_and_do_not_fail() {
    for seed in 0..20 {
        let (outcome, _, v) = run(seed, 200.0, 0.1, 0.005, 1.0, 300);
        assert_ne!(outcome, Outcome::Fail, "seed {seed}: {}", v.reason);
    }
    let (outcome, _, v) = run(99, 200.0, 0.5, 0.005, 1.0, 300);
    assert_eq!(outcome, Outcome::Pass, "{}", v.reason);
    assert!(v.reason.contains("all metrics pass"));
}

#[test]
fn twenty_percent_errors_fail_within_seconds_with_numbers_in_the_reason() {
    let (outcome, secs, v) = run(1, 200.0, 0.1, 0.2, 1.0, 60);
    assert_eq!(outcome, Outcome::Fail);
    assert!(secs <= 10, "took {secs}s");
    assert!(v.reason.starts_with("error_rate failed"), "{}", v.reason);
    let m = &v.metrics[0];
    assert!(m.canary > 0.1 && m.baseline < 0.02, "{m:?}");
    assert!(m.evidence >= m.bound);
}

#[test]
fn a_fifty_percent_slowdown_fails_and_five_percent_does_not() {
    let (outcome, secs, v) = run(2, 200.0, 0.1, 0.005, 1.5, 120);
    assert_eq!(outcome, Outcome::Fail, "{}", v.reason);
    assert!(secs <= 60, "took {secs}s");
    assert!(v.reason.contains("slower"), "{}", v.reason);
    for seed in 10..20 {
        let (outcome, _, v) = run(seed, 200.0, 0.1, 0.005, 1.05, 300);
        assert_ne!(outcome, Outcome::Fail, "+5% failed: {}", v.reason);
    }
}

#[test]
fn errors_with_a_clean_baseline_are_caught() {
    // Kayenta's blind spot: a baseline without errors and a canary with a few.
    let mut judge = Judge::new(&JudgeConfig::default());
    for s in 1..=30 {
        judge.observe(&Observation {
            at_ms: s * 1000,
            baseline: Window {
                requests: 180,
                errors: 0,
                latency: Histogram::default(),
            },
            canary: Window {
                requests: 20,
                errors: u64::from(s % 3 == 0),
                latency: Histogram::default(),
            },
        });
    }
    assert_eq!(
        judge.verdict().metrics[0].outcome,
        Outcome::Fail,
        "{:?}",
        judge.verdict().metrics[0]
    );
}

#[test]
fn a_small_relative_difference_under_the_tolerances_is_no_failure() {
    // 0.10% vs 0.12%: 20% relative, 0.02 points absolute.
    let mut judge = Judge::new(&JudgeConfig::default());
    for s in 1..=600 {
        judge.observe(&Observation {
            at_ms: s * 1000,
            baseline: Window {
                requests: 10_000,
                errors: 10,
                latency: Histogram::default(),
            },
            canary: Window {
                requests: 10_000,
                errors: 12,
                latency: Histogram::default(),
            },
        });
    }
    assert_ne!(judge.verdict().metrics[0].outcome, Outcome::Fail);
}

#[test]
fn thin_traffic_is_inconclusive_and_says_how_much_more_it_needs() {
    let (outcome, _, v) = run(4, 50.0, 0.01, 0.005, 1.0, 60);
    assert_eq!(outcome, Outcome::Inconclusive, "{}", v.reason);
    assert!(v.reason.contains("more canary requests"), "{}", v.reason);
    assert!(
        v.metrics
            .iter()
            .all(|m| m.outcome != Outcome::Pass || m.canary_samples >= 200)
    );
    let more = v.metrics[0].more_canary_requests.unwrap();
    assert!(more > 100, "{more}");
}

#[test]
fn no_canary_traffic_is_inconclusive_not_a_pass() {
    let mut judge = Judge::new(&JudgeConfig::default());
    judge.observe(&Observation {
        at_ms: 1000,
        baseline: Window {
            requests: 100,
            errors: 0,
            latency: Histogram::default(),
        },
        canary: Window::default(),
    });
    let v = judge.verdict();
    assert_eq!(v.outcome, Outcome::Inconclusive);
    assert!(v.metrics[0].reason.contains("no canary"), "{}", v.metrics[0].reason);
}

#[test]
fn a_failure_is_final_even_if_later_data_looks_fine() {
    let mut sim = Sim::new(7, 200.0, 0.1, 0.3, 1.0);
    let mut judge = Judge::new(&JudgeConfig::default());
    for _ in 0..20 {
        judge.observe(&sim.next());
    }
    assert_eq!(judge.verdict().outcome, Outcome::Fail);
    sim.canary_err = 0.0;
    for _ in 0..600 {
        judge.observe(&sim.next());
    }
    assert_eq!(judge.verdict().outcome, Outcome::Fail);
}

#[test]
fn superiority_of_identical_histograms_is_one_half() {
    let mut a = vec![0u64; BUCKETS];
    a[100] = 10;
    a[120] = 10;
    assert!((prob_superiority(&a, &a) - 0.5).abs() < 1e-9);
    let mut b = vec![0u64; BUCKETS];
    b[200] = 5;
    assert!((prob_superiority(&b, &a) - 1.0).abs() < 1e-9);
}
