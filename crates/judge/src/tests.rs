//! The judge's guarantees, each checked cheaply: seeded deploy simulations for the bars (the full grid is in
//! bench/judge), property tests for the saved state and the verdict rules, and a restore that changes nothing.

use proptest::prelude::*;
use wire::judge::{Alarm, JudgeConfig, MetricConfig, MetricKind, Outcome};
use wire::metrics::{Counters, Histogram, InstanceMetrics, MetricsSnapshot, ReleaseMetrics, bucket_index};

use crate::sim::{End, Latency, Outage, Regression, Scenario, Warmup, run};
use crate::{Judge, Member, Members, Observation, Side, Tracker, Window};

fn ends(s: &Scenario, seeds: std::ops::Range<u64>) -> Vec<End> {
    seeds.map(|seed| run(s, seed).slipway).collect()
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

#[test]
fn identical_releases_are_promoted_by_the_default_plan_at_20_requests_a_second_in_its_nominal_time() {
    let s = Scenario::default_plan(20.0);
    for e in ends(&s, 0..30) {
        assert_eq!(e, End::Promoted(s.nominal_ms()), "{e:?}");
    }
}

#[test]
fn twenty_percent_errors_are_out_within_seconds_at_200_requests_a_second() {
    let s = Scenario {
        canary_errors: 0.2,
        ..Scenario::default_plan(200.0)
    };
    let mut times = Vec::new();
    for e in ends(&s, 0..30) {
        let End::Failed(t, why) = &e else { panic!("{e:?}") };
        assert!(why.starts_with("error_rate failed"), "{why}");
        times.push(*t);
    }
    assert!(median(times.clone()) <= 5_000, "{times:?}");
    assert!(times.iter().all(|t| *t <= 10_000), "{times:?}");
}

#[test]
fn a_fifty_percent_slowdown_and_two_percent_errors_starting_late_are_caught_before_promotion() {
    let slow = Scenario {
        canary_slow: 1.5,
        ..Scenario::default_plan(200.0)
    };
    for e in ends(&slow, 0..10) {
        assert!(matches!(&e, End::Failed(_, why) if why.contains("slower")), "{e:?}");
    }
    let late = Scenario {
        regression: Some(Regression {
            onset_ms: 60_000,
            errors: 0.02,
            slow: 1.0,
        }),
        ..Scenario::default_plan(200.0)
    };
    for e in ends(&late, 0..10) {
        assert!(e.failed_at().is_some(), "{e:?}");
    }
}

#[test]
fn a_regression_starting_late_in_a_hold_is_caught_nearly_as_fast_as_one_from_the_start() {
    let at = |onset_s: u64| Scenario {
        regression: Some(Regression {
            onset_ms: onset_s * 1000,
            errors: 0.005,
            slow: 1.5,
        }),
        ..Scenario::one_step(1000.0, 10, 120_000)
    };
    let after_onset = |s: &Scenario| {
        let onset = s.regression.map_or(0, |r| r.onset_ms);
        median(
            ends(s, 0..8)
                .iter()
                .map(|e| e.failed_at().expect("caught") - onset)
                .collect(),
        )
    };
    let (early, late) = (after_onset(&at(0)), after_onset(&at(60)));
    assert!(late <= 2 * early, "onset at 60 s: {late} ms, at 0 s: {early} ms");
}

#[test]
fn warm_up_shared_outages_and_heavy_tails_fail_no_healthy_canary() {
    let warm = Scenario {
        warmup: Warmup::Slow {
            factor: 4.0,
            ms: 20_000,
        },
        ..Scenario::default_plan(200.0)
    };
    let outage = Scenario {
        outage: Some(Outage {
            at_ms: 40_000,
            ms: 30_000,
            slow: 3.0,
            errors: 0.05,
        }),
        ..Scenario::one_step(200.0, 50, 120_000)
    };
    let pareto = Scenario {
        latency: Latency::Pareto {
            min_us: 10_000.0,
            shape: 1.5,
        },
        ..Scenario::one_step(1000.0, 25, 60_000)
    };
    for s in [warm, outage, pareto] {
        for e in ends(&s, 0..10) {
            assert!(e.promoted(), "{e:?}");
        }
    }
}

#[test]
fn a_slower_heavy_tailed_canary_fails() {
    let s = Scenario {
        latency: Latency::Pareto {
            min_us: 10_000.0,
            shape: 1.5,
        },
        canary_slow: 1.5,
        ..Scenario::one_step(1000.0, 25, 60_000)
    };
    for e in ends(&s, 0..5) {
        assert!(e.failed_at().is_some(), "{e:?}");
    }
}

#[test]
fn a_canary_without_traffic_is_never_promoted_even_when_inconclusive_steps_continue() {
    for rps in [20.0, 200.0] {
        let s = Scenario {
            no_canary_traffic: true,
            continue_when_inconclusive: true,
            ..Scenario::default_plan(rps)
        };
        for e in ends(&s, 0..3) {
            assert!(
                matches!(&e, End::Aborted(_, why) if why.contains("canary received no traffic")),
                "{e:?}"
            );
        }
    }
}

/// Snapshots of a canary and a baseline instance with given counts per window.
struct Feed {
    canary: Counters,
    base: Counters,
}

impl Feed {
    fn new() -> Feed {
        Feed {
            canary: Counters::default(),
            base: Counters::default(),
        }
    }

    fn add(c: &mut Counters, n: u64, e: u64, us: u64) {
        c.requests += n;
        c.responses.c5xx += e;
        c.responses.c2xx += n - e;
        let mut d = c.latency_us.to_dense();
        d[bucket_index(us)] += n;
        c.latency_us = Histogram::from_dense(&d, c.latency_us.sum_us + n * us);
    }

    fn snap(&self) -> MetricsSnapshot {
        let rel = |name: &str, c: &Counters| ReleaseMetrics {
            release: name.into(),
            totals: c.clone(),
            instances: vec![InstanceMetrics {
                instance: format!("{name}-0"),
                addr: String::new(),
                healthy: true,
                counters: c.clone(),
            }],
        };
        MetricsSnapshot {
            router_id: "r".into(),
            generation: 1,
            uptime_ms: 0,
            releases: vec![rel("new", &self.canary), rel("old", &self.base)],
            unrouted: Counters::default(),
        }
    }
}

fn members(canary_started: u64) -> Members {
    let m = |release: &str, started_at_ms| Member {
        release: release.into(),
        instance: format!("{release}-0"),
        started_at_ms,
        ready: true,
    };
    Members {
        canary: vec![m("new", canary_started)],
        baseline: vec![m("old", 0)],
    }
}

#[test]
fn a_restored_judge_gives_the_same_verdicts_as_one_that_never_stopped() {
    let mut rng = fastrand::Rng::with_seed(11);
    let mut feed = Feed::new();
    let t0 = 1_000_000;
    let mut a = Tracker::new(&JudgeConfig::default(), 3, t0);
    let mut b: Option<Tracker> = None;
    for k in 0..400u64 {
        let now = t0 + k * 500;
        let slow = if k > 200 { 1.4 } else { 1.0 };
        Feed::add(
            &mut feed.canary,
            20,
            u64::from(rng.f64() < 0.2),
            (40_000.0 * slow) as u64 + rng.u64(0..20_000),
        );
        Feed::add(
            &mut feed.base,
            80,
            u64::from(rng.f64() < 0.5),
            40_000 + rng.u64(0..20_000),
        );
        let snap = feed.snap();
        a.feed(&snap, &members(t0), now);
        if let Some(b) = b.as_mut() {
            b.feed(&snap, &members(t0), now);
        }
        if k == 150 {
            // The control plane stops here and a new one reads the journal.
            let saved = serde_json::to_string(&a).unwrap();
            let restored: Tracker = serde_json::from_str(&saved).unwrap();
            restored.check().unwrap();
            assert_eq!(serde_json::to_string(&restored).unwrap(), saved);
            b = Some(restored);
        }
        if let Some(b) = &b {
            let hold = Some(t0 + 120_000);
            let json = |t: &Tracker| serde_json::to_string(&t.verdict(now, hold)).unwrap();
            assert_eq!(json(&a), json(b), "at {k}");
        }
    }
    let v = a.verdict(t0 + 200_000, Some(t0 + 120_000));
    assert_eq!(v.outcome, Outcome::Fail, "{v:?}");
}

#[test]
fn a_state_from_another_version_or_with_broken_evidence_is_refused() {
    let t = Tracker::new(&JudgeConfig::default(), 1, 0);
    let json = serde_json::to_value(&t).unwrap();
    let mut other = json.clone();
    other["version"] = 99.into();
    let other: Tracker = serde_json::from_value(other).unwrap();
    assert!(matches!(other.check(), Err(crate::RestoreError::Version { found: 99 })));
    let mut fewer = json.clone();
    fewer["judge"]["metrics"].as_array_mut().unwrap().pop();
    let fewer: Tracker = serde_json::from_value(fewer).unwrap();
    assert!(fewer.check().is_err());
    let mut bad_count = json;
    bad_count["judge"]["metrics"][0]["tests"][0]["Errors"]["x_b"] = 5.into();
    let bad_count: Tracker = serde_json::from_value(bad_count).unwrap();
    assert!(bad_count.check().is_err());
}

fn window(n: u64, e: u64, us: u64) -> Window {
    let mut d = vec![0; wire::metrics::BUCKETS];
    d[bucket_index(us)] = n;
    Window {
        requests: n,
        errors: e,
        latency: Histogram::from_dense(&d, n * us),
    }
}

fn warm(w: Window) -> Side {
    Side {
        warm: w,
        warming: Window::default(),
    }
}

#[test]
fn sub_millisecond_differences_are_never_a_latency_regression() {
    // 0.3 ms against 0.39 ms is +30%, but below the 2 ms floor.
    let mut j = Judge::new(&JudgeConfig::default(), 1, 0);
    for k in 1..=600 {
        j.observe(&Observation {
            at_ms: k * 500,
            baseline: warm(window(500, 0, 300)),
            canary: warm(window(500, 0, 390)),
            ..Observation::default()
        });
    }
    let v = j.verdict(300_000, Some(120_000));
    assert_eq!(v.outcome, Outcome::Pass, "{v:?}");
    // 3 ms against 30 ms is past both tolerances.
    let mut j = Judge::new(&JudgeConfig::default(), 1, 0);
    for k in 1..=60 {
        j.observe(&Observation {
            at_ms: k * 500,
            baseline: warm(window(500, 0, 3_000)),
            canary: warm(window(500, 0, 30_000)),
            ..Observation::default()
        });
    }
    assert_eq!(j.verdict(30_000, Some(120_000)).outcome, Outcome::Fail);
}

#[test]
fn a_non_critical_metric_alone_does_not_fail_the_step() {
    let mut cfg = JudgeConfig::default();
    for m in &mut cfg.metrics {
        m.critical = m.name != "latency_p99";
    }
    let mut j = Judge::new(&cfg, 1, 0);
    let mut d_slow = vec![0; wire::metrics::BUCKETS];
    for k in 1..=240u64 {
        // The same median; the canary's slowest 2% are 10x slower.
        let mut base = window(490, 2, 50_000);
        base.latency = base.latency.merged(&window(10, 0, 80_000).latency);
        base.requests += 10;
        let mut canary = window(490, 2, 50_000);
        d_slow.iter_mut().for_each(|c| *c = 0);
        d_slow[bucket_index(800_000)] = 10;
        canary.latency = canary.latency.merged(&Histogram::from_dense(&d_slow, 8_000_000));
        canary.requests += 10;
        j.observe(&Observation {
            at_ms: k * 500,
            baseline: warm(base),
            canary: warm(canary),
            ..Observation::default()
        });
    }
    let v = j.verdict(120_000, Some(120_000));
    let p99 = v.metrics.iter().find(|m| m.name == "latency_p99").unwrap();
    assert_eq!(p99.outcome, Outcome::Fail, "{v:?}");
    assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
    assert!(v.reason.contains("latency_p99 failed (not critical)"), "{}", v.reason);
}

#[test]
fn the_step_passes_only_at_the_end_of_its_hold_and_says_what_it_could_have_caught() {
    let mut j = Judge::new(&JudgeConfig::default(), 3, 0);
    for k in 1..=240 {
        j.observe(&Observation {
            at_ms: k * 500,
            baseline: warm(window(180, 1, 50_000)),
            canary: warm(window(20, 0, 50_000)),
            ..Observation::default()
        });
        if k * 500 < 120_000 {
            assert_eq!(j.verdict(k * 500, Some(120_000)).outcome, Outcome::Inconclusive);
        }
    }
    let v = j.verdict(120_000, Some(120_000));
    assert_eq!(v.outcome, Outcome::Pass, "{v:?}");
    assert!(v.reason.contains("would have caught error_rate ≥"), "{}", v.reason);
    assert!(v.metrics.iter().all(|m| m.detectable.is_some()), "{v:?}");
    // Without a hold (a rolling deploy) nothing passes.
    assert_eq!(j.verdict(120_000, None).outcome, Outcome::Inconclusive);
}

#[test]
fn too_little_traffic_is_inconclusive_and_none_at_all_for_the_canary_fails_with_an_alarm() {
    let mut j = Judge::new(&JudgeConfig::default(), 1, 0);
    for k in 1..=60 {
        j.observe(&Observation {
            at_ms: k * 1000,
            baseline: warm(window(5, 0, 50_000)),
            canary: warm(window(u64::from(k % 10 == 0), 0, 50_000)),
            ..Observation::default()
        });
    }
    let v = j.verdict(60_000, Some(60_000));
    assert_eq!(v.outcome, Outcome::Inconclusive, "{v:?}");
    assert!(v.reason.contains("too little traffic"), "{}", v.reason);
    let mut j = Judge::new(&JudgeConfig::default(), 1, 0);
    for k in 1..=60 {
        j.observe(&Observation {
            at_ms: k * 1000,
            baseline: warm(window(5, 0, 50_000)),
            canary: Side::default(),
            ..Observation::default()
        });
    }
    let during = j.verdict(30_000, Some(60_000));
    assert_eq!(
        (during.outcome, during.alarm),
        (Outcome::Inconclusive, Some(Alarm::NoCanaryTraffic))
    );
    let end = j.verdict(60_000, Some(60_000));
    assert_eq!((end.outcome, end.alarm), (Outcome::Fail, Some(Alarm::NoCanaryTraffic)));
    assert!(end.reason.contains("cohort rules"), "{}", end.reason);
}

#[test]
fn the_strict_pass_rule_waits_until_the_traffic_proves_the_canary() {
    let cfg = JudgeConfig {
        pass: wire::judge::PassRule::Proven,
        ..JudgeConfig::default()
    };
    let mut j = Judge::new(&cfg, 1, 0);
    for k in 1..=120 {
        j.observe(&Observation {
            at_ms: k * 500,
            baseline: warm(window(50, 0, 50_000)),
            canary: warm(window(2, 0, 50_000)),
            ..Observation::default()
        });
    }
    let v = j.verdict(60_000, Some(60_000));
    assert_eq!(v.outcome, Outcome::Inconclusive, "{v:?}");
    assert!(v.reason.contains("not proven yet"), "{}", v.reason);
}

#[test]
fn an_error_only_config_with_both_directions_splits_its_budget() {
    let cfg = JudgeConfig {
        metrics: vec![MetricConfig {
            name: "errors".into(),
            kind: MetricKind::ErrorRate {
                relative_tolerance: 0.25,
                absolute_tolerance: 0.001,
                detectable_ratio: 3.0,
            },
            direction: wire::judge::Direction::Either,
            weight: 1.0,
            critical: true,
        }],
        ..JudgeConfig::default()
    };
    let j = Judge::new(&cfg, 2, 0);
    let v = j.verdict(0, None);
    assert!(
        (v.metrics[0].bound - 1.0 / (0.01 / 4.0)).abs() < 1e-6,
        "{}",
        v.metrics[0].bound
    );
}

proptest! {
    /// Whatever windows come in, a step never passes before its hold ends or
    /// with fewer than `min_requests` canary requests, and a saved judge
    /// always reads back equal.
    #[test]
    fn no_pass_before_the_hold_or_below_the_minimum_and_the_state_round_trips(
        windows in proptest::collection::vec((0u64..40, 0u64..5, 0u64..400, 1u64..200_000, 1u64..200_000), 1..80),
        hold_s in 1u64..60,
    ) {
        let mut j = Judge::new(&JudgeConfig::default(), 2, 0);
        for (k, (nc, ec, nb, usc, usb)) in windows.iter().enumerate() {
            let at = (k as u64 + 1) * 1000;
            j.observe(&Observation {
                at_ms: at,
                baseline: warm(window(*nb, nb / 50, *usb)),
                canary: warm(window(*nc, (*ec).min(*nc), *usc)),
                ..Observation::default()
            });
            let v = j.verdict(at, Some(hold_s * 1000));
            if v.outcome == Outcome::Pass {
                prop_assert!(at >= hold_s * 1000);
                let canary: u64 = windows[..=k].iter().map(|w| w.0).sum();
                prop_assert!(canary >= 50);
            }
        }
        let json = serde_json::to_string(&j).unwrap();
        let back: Judge = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(serde_json::to_string(&back).unwrap(), json);
        let verdict = |j: &Judge| serde_json::to_string(&j.verdict(100_000, Some(1_000))).unwrap();
        prop_assert_eq!(verdict(&back), verdict(&j));
    }

    /// Arbitrary text never restores into a judge that passes its checks by accident.
    #[test]
    fn garbage_states_are_refused_or_checked(text in ".{0,200}") {
        if let Ok(t) = serde_json::from_str::<Tracker>(&text) {
            let _ = t.check();
        }
    }
}

/// Feeds 120 s of windows where canary instance 0 serves `a` = (requests, errors) and
/// instance 1 `b` (after 40 s of both at 1%), against a baseline at 1%; the verdict at the end.
fn two_canary_instances(a: (u64, u64), b: (u64, u64)) -> Outcome {
    let mut j = Judge::new(&JudgeConfig::default(), 1, 0);
    for k in 1..=240 {
        let at_ms = k * 500;
        let (a, b) = if at_ms < 40_000 { ((100, 1), (100, 1)) } else { (a, b) };
        j.observe(&Observation {
            at_ms,
            baseline: warm(window(1_000, 10, 50_000)),
            canary: warm(window(a.0 + b.0, a.1 + b.1, 50_000)),
            canary_instances: vec![a, b],
            ..Observation::default()
        });
    }
    j.verdict(120_000, Some(120_000)).outcome
}

#[test]
fn an_error_episode_of_one_canary_instance_fails_no_release_but_the_same_excess_on_all_does() {
    // Instance 0 at 5% (its bad upstream), instance 1 at the baseline's 1%.
    assert_eq!(two_canary_instances((100, 5), (100, 1)), Outcome::Pass);
    // The release's own: both at 3%, the same canary total.
    assert_eq!(two_canary_instances((100, 3), (100, 3)), Outcome::Fail);
}

#[test]
fn a_bad_canary_whose_traffic_all_goes_to_one_instance_still_fails() {
    // Sticky clients on one instance: the other has nothing to confirm or refute with.
    assert_eq!(two_canary_instances((200, 40), (0, 0)), Outcome::Fail);
    assert_eq!(two_canary_instances((195, 10), (5, 0)), Outcome::Fail);
}
