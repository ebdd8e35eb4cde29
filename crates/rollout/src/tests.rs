//! Scenarios per strategy, and a seeded simulation of noisy worlds and operators that replays the journal.

use std::collections::{BTreeMap, BTreeSet};

use wire::RouteState;
use wire::judge::Outcome;
use wire::service::{HoldReason, Strategy};

use super::*;

fn plan() -> Plan {
    Plan {
        count: 3,
        steps: vec![(5, 10_000), (25, 10_000), (50, 10_000)],
        canary_count: 1,
        fresh_baseline: false,
        extension_ms: 5_000,
        max_extensions: 2,
        continue_when_inconclusive: false,
        max_surge: 1,
        max_unavailable: 0,
        bake_ms: 2_000,
        check_ms: 5_000,
        rollback_window_ms: 60_000,
        drain_deadline_ms: 120_000,
        session_idle_ms: 10_000,
        start_timeout_ms: 60_000,
        pre_traffic: false,
    }
}

/// A cooperative world: groups reach their desired counts a second later,
/// all ready; removed groups disappear.
struct World {
    live: BTreeMap<(String, String), (u32, u32)>,
}

impl World {
    fn new() -> World {
        World { live: BTreeMap::new() }
    }

    fn step(&mut self, want: &Desired) -> Event {
        let wanted: BTreeMap<(String, String), u32> = want
            .groups
            .iter()
            .map(|g| ((g.release.clone(), g.group.clone()), g.count))
            .collect();
        for (k, n) in &wanted {
            let e = self.live.entry(k.clone()).or_insert((0, 0));
            e.1 = e.0.min(*n);
            e.0 = *n;
        }
        for (k, v) in self.live.iter_mut() {
            if !wanted.contains_key(k) {
                *v = (0, 0);
            }
        }
        self.live.retain(|_, v| v.0 > 0);
        Event::Groups {
            groups: self
                .live
                .iter()
                .map(|((r, g), (live, ready))| GroupObs {
                    release: r.clone(),
                    group: g.clone(),
                    live: *live,
                    ready: *ready,
                    failed: None,
                })
                .collect(),
        }
    }
}

/// Runs the world for `secs` seconds, feeding `verdict` each second.
fn run(s: &mut Service, w: &mut World, now: &mut u64, secs: u64, verdict: Option<Outcome>) {
    for _ in 0..secs {
        *now += 1_000;
        let ev = w.step(&s.desired());
        s.on(&ev, *now).unwrap();
        if let Some(v) = verdict {
            s.on(
                &Event::Verdict {
                    outcome: v,
                    reason: "sim".into(),
                },
                *now,
            )
            .unwrap();
        }
        s.on(&Event::Tick, *now).unwrap();
    }
}

fn deploy(s: &mut Service, release: &str, strategy: Strategy, now: u64) {
    s.on(
        &Event::Deploy {
            release: release.into(),
            strategy,
            plan: plan(),
            template: None,
        },
        now,
    )
    .unwrap();
}

fn weights(d: &Desired) -> Vec<(String, u32, RouteState)> {
    d.routes
        .iter()
        .map(|r| (r.release.clone(), r.weight, r.state))
        .collect()
}

#[test]
fn a_first_deploy_goes_straight_to_current() {
    let (mut s, mut w, mut now) = (Service::default(), World::new(), 0);
    deploy(&mut s, "v1", Strategy::Canary, now);
    run(&mut s, &mut w, &mut now, 5, None);
    assert_eq!(s.current.as_deref(), Some("v1"));
    assert_eq!(s.deploy.as_ref().unwrap().phase, Phase::Done);
    assert_eq!(weights(&s.desired()), vec![("v1".into(), 100, RouteState::Active)]);
}

#[test]
fn a_canary_steps_through_its_weights_and_promotes_then_the_old_release_drains() {
    let (mut s, mut w, mut now) = (Service::default(), World::new(), 0);
    deploy(&mut s, "v1", Strategy::Canary, now);
    run(&mut s, &mut w, &mut now, 3, None);
    deploy(&mut s, "v2", Strategy::Canary, now);
    run(&mut s, &mut w, &mut now, 3, Some(Outcome::Pass));
    assert_eq!(
        weights(&s.desired())[..2],
        [
            ("v2".into(), 5, RouteState::Active),
            ("v1".into(), 95, RouteState::Active)
        ]
    );
    let a = s.desired().analysis.unwrap();
    assert_eq!(a.key, "2/step-1");
    run(&mut s, &mut w, &mut now, 12, Some(Outcome::Pass));
    assert_eq!(s.desired().routes[0].weight, 25);
    run(&mut s, &mut w, &mut now, 30, Some(Outcome::Pass));
    assert_eq!(s.current.as_deref(), Some("v2"));
    let d = s.desired();
    assert_eq!(
        weights(&d),
        vec![
            ("v2".into(), 100, RouteState::Active),
            ("v1".into(), 0, RouteState::Draining)
        ]
    );
    // v1 keeps running for its sessions until they go quiet.
    s.on(
        &Event::Idle {
            release: "v1".into(),
            idle_ms: 11_000,
        },
        now,
    )
    .unwrap();
    run(&mut s, &mut w, &mut now, 3, None);
    assert!(s.retiring.is_empty(), "{:?}", s.retiring);
    assert_eq!(s.previous.as_deref(), Some("v1"));
}

#[test]
fn a_failed_verdict_aborts_at_once_and_leaves_the_baseline_untouched() {
    let (mut s, mut w, mut now) = (Service::default(), World::new(), 0);
    deploy(&mut s, "v1", Strategy::Canary, now);
    run(&mut s, &mut w, &mut now, 3, None);
    deploy(&mut s, "v2", Strategy::Canary, now);
    run(&mut s, &mut w, &mut now, 3, Some(Outcome::Inconclusive));
    s.on(
        &Event::Verdict {
            outcome: Outcome::Fail,
            reason: "errors".into(),
        },
        now,
    )
    .unwrap();
    let d = s.desired();
    assert_eq!(
        weights(&d)[0],
        ("v2".into(), 0, RouteState::Down),
        "traffic off the canary in the same step"
    );
    assert_eq!(weights(&d)[1], ("v1".into(), 100, RouteState::Active));
    assert!(d.groups.iter().all(|g| g.release != "v2"));
    run(&mut s, &mut w, &mut now, 2, None);
    let dep = s.deploy.as_ref().unwrap();
    assert_eq!(dep.phase, Phase::Aborted);
    assert!(dep.outcome.as_deref().unwrap().contains("errors"));
    assert_eq!(s.current.as_deref(), Some("v1"));
}

fn deploy_with(s: &mut Service, release: &str, strategy: Strategy, plan: Plan, now: u64) {
    let ev = Event::Deploy {
        release: release.into(),
        strategy,
        plan,
        template: None,
    };
    s.on(&ev, now).unwrap();
}

#[test]
fn a_pre_traffic_check_holds_the_canary_at_weight_0_until_it_passes_and_a_failed_one_aborts_with_its_output() {
    for strategy in [Strategy::Canary, Strategy::BlueGreen] {
        let (mut s, mut w, mut now) = (Service::default(), World::new(), 0);
        let checked = Plan {
            pre_traffic: true,
            ..plan()
        };
        deploy_with(&mut s, "v1", strategy, checked.clone(), now);
        run(&mut s, &mut w, &mut now, 3, None);
        assert_eq!(
            s.current.as_deref(),
            Some("v1"),
            "a first deploy has nothing to check against"
        );
        for (release, passed) in [("v2", false), ("v3", true)] {
            deploy_with(&mut s, release, strategy, checked.clone(), now);
            run(&mut s, &mut w, &mut now, 30, Some(Outcome::Pass));
            let d = s.active().unwrap();
            assert!(matches!(d.phase, Phase::PreTraffic { .. }), "{:?}", d.phase);
            assert_eq!(weights(&s.desired())[0], (release.into(), 0, RouteState::Active));
            assert!(s.desired().analysis.is_none(), "nothing to judge without traffic");
            assert!(s.on(&Event::Promote, now).is_err());
            let output = "smoke: GET /cart 500".to_string();
            let u = s.on(&Event::PreTraffic { passed, output }, now).unwrap();
            if !passed {
                let reason = "the pre-traffic check failed: smoke: GET /cart 500".to_string();
                assert_eq!(u.transitions, vec![Transition::Aborting { reason }]);
                assert_eq!(weights(&s.desired())[0], (release.into(), 0, RouteState::Down));
                run(&mut s, &mut w, &mut now, 3, None);
                assert_eq!(s.deploy.as_ref().unwrap().phase, Phase::Aborted);
                continue;
            }
            let expect_weight = if strategy == Strategy::Canary { 5 } else { 0 };
            assert_eq!(weights(&s.desired())[0].1, expect_weight);
            run(&mut s, &mut w, &mut now, 60, Some(Outcome::Pass));
            assert_eq!(s.current.as_deref(), Some(release));
        }
        // A late result is refused and changes nothing.
        let before = s.clone();
        let late = Event::PreTraffic {
            passed: true,
            output: String::new(),
        };
        assert!(s.on(&late, now).is_err());
        assert_eq!(s, before);
    }
}

#[test]
fn inconclusive_steps_are_extended_then_aborted() {
    let (mut s, mut w, mut now) = (Service::default(), World::new(), 0);
    deploy(&mut s, "v1", Strategy::Canary, now);
    run(&mut s, &mut w, &mut now, 3, None);
    deploy(&mut s, "v2", Strategy::Canary, now);
    run(&mut s, &mut w, &mut now, 40, Some(Outcome::Inconclusive));
    let d = s.deploy.as_ref().unwrap();
    assert!(
        matches!(d.phase, Phase::Aborting { .. } | Phase::Aborted),
        "{:?}",
        d.phase
    );
    assert!(
        d.log
            .iter()
            .any(|(_, t)| matches!(t, Transition::StepExtended { by_ms: 5_000, .. })
                && t.to_string().contains("held 5s longer"))
    );
    assert!(d.outcome.as_deref().unwrap_or("").contains("inconclusive") || matches!(d.phase, Phase::Aborting { .. }));
}

#[test]
fn blue_green_switches_at_once_and_keeps_the_old_set_warm_for_a_rollback() {
    let (mut s, mut w, mut now) = (Service::default(), World::new(), 0);
    deploy(&mut s, "v1", Strategy::BlueGreen, now);
    run(&mut s, &mut w, &mut now, 3, None);
    deploy(&mut s, "v2", Strategy::BlueGreen, now);
    run(&mut s, &mut w, &mut now, 3, None);
    assert_eq!(
        weights(&s.desired())[0],
        ("v2".into(), 0, RouteState::Active),
        "checked before the switch"
    );
    run(&mut s, &mut w, &mut now, 6, None);
    assert_eq!(s.current.as_deref(), Some("v2"));
    assert_eq!(weights(&s.desired())[1], ("v1".into(), 0, RouteState::Draining));
    // Rollback while v1 is warm: an atomic swap, nothing started.
    s.on(&Event::Rollback { plan: plan() }, now).unwrap();
    assert_eq!(s.current.as_deref(), Some("v1"));
    let d = s.desired();
    assert_eq!(weights(&d)[0], ("v1".into(), 100, RouteState::Active));
    assert_eq!(weights(&d)[1], ("v2".into(), 0, RouteState::Down));
    assert!(s.active().is_none());
}

#[test]
fn a_rollback_after_the_old_release_is_gone_redeploys_it() {
    let (mut s, mut w, mut now) = (Service::default(), World::new(), 0);
    deploy(&mut s, "v1", Strategy::BlueGreen, now);
    run(&mut s, &mut w, &mut now, 3, None);
    deploy(&mut s, "v2", Strategy::BlueGreen, now);
    run(&mut s, &mut w, &mut now, 80, None);
    assert!(s.retiring.is_empty());
    s.on(&Event::Rollback { plan: plan() }, now).unwrap();
    let d = s.active().unwrap();
    assert!(d.rollback);
    assert_eq!(d.release, "v1");
    run(&mut s, &mut w, &mut now, 5, None);
    assert_eq!(s.current.as_deref(), Some("v1"));
}

#[test]
fn rolling_replaces_one_at_a_time_after_the_bake() {
    let (mut s, mut w, mut now) = (Service::default(), World::new(), 0);
    deploy(&mut s, "v1", Strategy::Rolling, now);
    run(&mut s, &mut w, &mut now, 3, None);
    deploy(&mut s, "v2", Strategy::Rolling, now);
    let mut seen = Vec::new();
    for _ in 0..40 {
        run(&mut s, &mut w, &mut now, 1, Some(Outcome::Inconclusive));
        let d = s.desired();
        let count = |r: &str| d.groups.iter().filter(|g| g.release == r).map(|g| g.count).sum::<u32>();
        let (new, old) = (count("v2"), count("v1"));
        assert!(new + old <= 3 + 1, "never more than count + surge: {new} + {old}");
        assert!(old + new.min(w.live.get(&("v2".into(), "v2".into())).map_or(0, |v| v.1)) >= 3 - 1);
        seen.push((new, old));
    }
    assert_eq!(s.current.as_deref(), Some("v2"));
    assert!(seen.contains(&(2, 2)), "{seen:?}");
}

#[test]
fn only_one_deploy_at_a_time_and_commands_need_one() {
    let (mut s, mut w, mut now) = (Service::default(), World::new(), 0);
    assert!(s.on(&Event::Pause, now).unwrap_err().0.contains("no deploy"));
    deploy(&mut s, "v1", Strategy::Canary, now);
    run(&mut s, &mut w, &mut now, 3, None);
    deploy(&mut s, "v2", Strategy::Canary, now);
    let before = s.clone();
    let err = s
        .on(
            &Event::Deploy {
                release: "v3".into(),
                strategy: Strategy::Canary,
                plan: plan(),
                template: None,
            },
            now,
        )
        .unwrap_err();
    assert!(err.0.contains("only one deploy"), "{err}");
    assert_eq!(s, before, "a refused deploy changes nothing");
    assert!(s.on(&Event::Rollback { plan: plan() }, now).is_err());
    assert_eq!(s, before, "a refused rollback changes nothing");
    assert!(s.on(&Event::Promote, now).is_err(), "nothing to promote while starting");
    assert_eq!(s, before, "a refused promotion changes nothing");
}

#[test]
fn pause_stops_the_clock_and_promote_skips_ahead() {
    let (mut s, mut w, mut now) = (Service::default(), World::new(), 0);
    deploy(&mut s, "v1", Strategy::Canary, now);
    run(&mut s, &mut w, &mut now, 3, None);
    deploy(&mut s, "v2", Strategy::Canary, now);
    run(&mut s, &mut w, &mut now, 3, Some(Outcome::Pass));
    s.on(&Event::Pause, now).unwrap();
    run(&mut s, &mut w, &mut now, 60, Some(Outcome::Pass));
    assert!(matches!(s.active().unwrap().phase, Phase::Step { index: 0, .. }));
    s.on(&Event::Resume, now).unwrap();
    s.on(&Event::Promote, now).unwrap();
    run(&mut s, &mut w, &mut now, 3, None);
    assert_eq!(s.current.as_deref(), Some("v2"));
}

#[test]
fn a_held_deploy_neither_steps_nor_retires_and_gets_its_held_time_back() {
    let (mut s, mut w, mut now) = (Service::default(), World::new(), 0);
    deploy(&mut s, "v1", Strategy::Canary, now);
    run(&mut s, &mut w, &mut now, 3, None);
    deploy(&mut s, "v2", Strategy::Canary, now);
    run(&mut s, &mut w, &mut now, 4, Some(Outcome::Pass));
    let since = match s.active().unwrap().phase {
        Phase::Step { index: 0, since, .. } => since,
        ref p => panic!("{p:?}"),
    };
    let hold = Event::Hold {
        reason: HoldReason::RouterUnreachable,
    };
    let u = s.on(&hold, now).unwrap();
    assert_eq!(
        u.transitions,
        vec![Transition::Held {
            reason: HoldReason::RouterUnreachable
        }]
    );
    assert!(u.changed);
    assert!(
        !s.on(&hold, now).unwrap().changed,
        "holding again for the same reason changes nothing"
    );
    let held_at = now;
    // Long past the step's hold, with passing and then failing verdicts: nothing moves.
    run(&mut s, &mut w, &mut now, 30, Some(Outcome::Pass));
    run(&mut s, &mut w, &mut now, 5, Some(Outcome::Fail));
    let d = s.active().unwrap();
    assert!(matches!(d.phase, Phase::Step { index: 0, .. }), "{:?}", d.phase);
    assert_eq!(d.last_verdict, Some(Outcome::Pass), "verdicts while held are not taken");
    let u = s.on(&Event::Unhold, now).unwrap();
    assert!(u.transitions.contains(&Transition::Unheld { held_ms: now - held_at }));
    let d = s.active().unwrap();
    assert_eq!(
        d.phase,
        Phase::Step {
            index: 0,
            since: since + (now - held_at),
            extensions: 0
        }
    );
    assert_eq!(d.held_ms, now - held_at);
    // The step's remaining hold runs after the hold, then it steps on.
    run(&mut s, &mut w, &mut now, 5, Some(Outcome::Pass));
    assert!(matches!(s.active().unwrap().phase, Phase::Step { index: 0, .. }));
    run(&mut s, &mut w, &mut now, 3, Some(Outcome::Pass));
    assert!(matches!(s.active().unwrap().phase, Phase::Step { index: 1, .. }));
    // A blue-green's old set stays warm for its whole window, held time not counted.
    let (mut s, mut w, mut now) = (Service::default(), World::new(), 0);
    deploy(&mut s, "v1", Strategy::Canary, now);
    run(&mut s, &mut w, &mut now, 3, None);
    deploy(&mut s, "v2", Strategy::BlueGreen, now);
    run(&mut s, &mut w, &mut now, 10, None);
    assert_eq!(s.current.as_deref(), Some("v2"));
    let until = match s.retiring[0].mode {
        RetireMode::Window { until } => until,
        ref m => panic!("{m:?}"),
    };
    s.on(&hold, now).unwrap();
    let held_at = now;
    run(&mut s, &mut w, &mut now, 90, None);
    assert!(!s.retiring[0].stopping, "nothing is retired while held");
    s.on(&Event::Unhold, now).unwrap();
    assert_eq!(
        s.retiring[0].mode,
        RetireMode::Window {
            until: until + (now - held_at)
        }
    );
}

/// The noisy world moves towards what is desired, with delays and failures: the agent's next report.
fn noisy_groups(
    live: &mut BTreeMap<(String, String), (u32, u32)>,
    want: &Desired,
    rng: &mut fastrand::Rng,
    calm: bool,
) -> Event {
    let wanted: BTreeMap<(String, String), u32> = want
        .groups
        .iter()
        .map(|g| ((g.release.clone(), g.group.clone()), g.count))
        .collect();
    let mut failed = None;
    for (k, n) in &wanted {
        let e = live.entry(k.clone()).or_insert((0, 0));
        if e.0 < *n && (calm || rng.u8(0..3) > 0) {
            e.0 += 1;
        }
        if e.0 > *n && (calm || rng.bool()) {
            e.0 -= 1;
        }
        if e.1 < e.0 && (calm || rng.u8(0..3) > 0) {
            e.1 += 1;
        }
        e.1 = e.1.min(e.0);
        if !calm && rng.u16(0..400) == 0 {
            failed = Some(k.clone());
        }
    }
    for (k, v) in live.iter_mut() {
        if !wanted.contains_key(k) && (calm || rng.bool()) {
            v.0 = v.0.saturating_sub(1);
            v.1 = v.1.min(v.0);
        }
    }
    live.retain(|_, v| v.0 > 0);
    let groups = live
        .iter()
        .map(|((r, g), (l, rd))| GroupObs {
            release: r.clone(),
            group: g.clone(),
            live: *l,
            ready: *rd,
            failed: (failed.as_ref() == Some(&(r.clone(), g.clone()))).then(|| "crash loop".to_string()),
        })
        .collect();
    Event::Groups { groups }
}

/// A busy operator: deploys, aborts, pauses, resumes, promotions and rollbacks.
fn operator(rng: &mut fastrand::Rng, next_release: &mut u32) -> Option<Event> {
    let strategies = [Strategy::Canary, Strategy::Rolling, Strategy::BlueGreen];
    Some(match rng.u8(0..40) {
        0..=3 => {
            let r = format!("v{next_release}");
            *next_release += 1;
            Event::Deploy {
                release: r,
                strategy: strategies[rng.usize(0..3)],
                plan: plan(),
                template: None,
            }
        }
        4 => Event::Abort {
            reason: "operator".into(),
        },
        5 => Event::Pause,
        6 => Event::Resume,
        7 => Event::Promote,
        8 => Event::Rollback { plan: plan() },
        _ => return None,
    })
}

/// Active weights sum to 100, no release is routed twice or without instances, and no session goes back to a
/// release it was promoted away from.
fn check_routes(s: &Service, no_going_back: &BTreeSet<String>, at: &str) {
    let d = s.desired();
    let active_sum: u32 = d
        .routes
        .iter()
        .filter(|r| r.state == RouteState::Active)
        .map(|r| r.weight)
        .sum();
    let first_deploy_running = s
        .active()
        .is_some_and(|d| d.from.is_none() && !matches!(d.phase, Phase::Aborting { .. }));
    if s.current.is_some() || first_deploy_running {
        assert_eq!(active_sum, 100, "{at}: weights {:?}", d.routes);
    }
    let mut names = BTreeSet::new();
    for r in &d.routes {
        assert!(names.insert(r.release.clone()), "{at}: {} routed twice", r.release);
        if r.weight > 0 {
            let count: u32 = d
                .groups
                .iter()
                .filter(|g| g.release == r.release)
                .map(|g| g.count)
                .sum();
            assert!(count > 0, "{at}: {} has weight but no instances", r.release);
            assert!(
                !no_going_back.contains(&r.release),
                "{at}: sessions sent back to {}: {:?} {:?} {:?}",
                r.release,
                d.routes,
                s.deploy.as_ref().map(|d| &d.log),
                s.retiring
            );
        }
    }
}

/// Seeded simulation: a noisy world (slow and failing instances, random
/// verdicts) and a busy operator (deploys, aborts, pauses, rollbacks). After
/// every event the journal is replayed from scratch and must give the same
/// state; routing invariants hold throughout; once the noise stops, every
/// deploy finishes.
#[test]
fn random_worlds_and_operators_with_crash_and_replay_at_every_step() {
    for seed in 0..150u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut s = Service::default();
        let mut journal: Vec<(Event, u64)> = Vec::new();
        let mut live: BTreeMap<(String, String), (u32, u32)> = BTreeMap::new();
        let mut now = 0u64;
        let mut next_release = 1;
        let mut no_going_back: BTreeSet<String> = BTreeSet::new();
        let apply = |s: &mut Service, journal: &mut Vec<(Event, u64)>, ev: Event, now: u64| {
            let held = s.held.is_some();
            let command = matches!(
                ev,
                Event::Deploy { .. } | Event::Rollback { .. } | Event::Pause | Event::Resume | Event::Promote
            ) || matches!(ev, Event::Abort { .. } | Event::Unhold);
            let update = s.on(&ev, now);
            if let Ok(u) = &update
                && held
                && !command
            {
                let moved = u.transitions.iter().any(|t| !matches!(t, Transition::Held { .. }));
                assert!(!moved, "seed {seed}: {:?} on {ev:?} while held", u.transitions);
            }
            if update.is_ok_and(|u| u.changed) {
                journal.push((ev, now));
            }
        };
        for step in 0..400 {
            now += rng.u64(200..3_000);
            let calm = step >= 250;
            // The control plane loses sight of the world now and then, and holds.
            let reasons = [
                HoldReason::AgentUnreachable,
                HoldReason::RouterUnreachable,
                HoldReason::RoutesUnconfirmed,
            ];
            match (calm, rng.u8(0..12)) {
                (false, 0) => apply(
                    &mut s,
                    &mut journal,
                    Event::Hold {
                        reason: reasons[rng.usize(0..3)],
                    },
                    now,
                ),
                (true, _) | (_, 1..=3) => apply(&mut s, &mut journal, Event::Unhold, now),
                _ => {}
            }
            let groups = noisy_groups(&mut live, &s.desired(), &mut rng, calm);
            apply(&mut s, &mut journal, groups, now);
            for r in s.retiring.clone() {
                if calm || rng.bool() {
                    let idle = Event::Idle {
                        release: r.release,
                        idle_ms: rng.u64(0..20_000),
                    };
                    apply(&mut s, &mut journal, idle, now);
                }
            }
            let verdict = match (calm, rng.u8(0..20)) {
                (true, _) => Outcome::Pass,
                (_, 0) => Outcome::Fail,
                (_, 1..=5) => Outcome::Inconclusive,
                _ => Outcome::Pass,
            };
            let verdict = Event::Verdict {
                outcome: verdict,
                reason: "sim".into(),
            };
            apply(&mut s, &mut journal, verdict, now);
            if !calm && let Some(cmd) = operator(&mut rng, &mut next_release) {
                if matches!(cmd, Event::Rollback { .. }) {
                    // A rollback may bring back a release: it is allowed to move sessions.
                    no_going_back.clear();
                }
                apply(&mut s, &mut journal, cmd, now);
            } else if calm && s.active().is_some_and(|d| d.paused_at.is_some()) {
                apply(&mut s, &mut journal, Event::Resume, now);
            }
            apply(&mut s, &mut journal, Event::Tick, now);

            // Crash and replay: the journal alone rebuilds the state (at every
            // step for the first seeds, at random steps for the others).
            if seed < 30 || rng.u8(0..8) == 0 {
                let mut replayed = Service::default();
                for (ev, at) in &journal {
                    replayed.on(ev, *at).expect("journaled events replay");
                }
                assert_eq!(replayed, s, "seed {seed} step {step}: replay differs");
            }
            check_routes(&s, &no_going_back, &format!("seed {seed} step {step}"));
            if let Some(dep) = &s.deploy
                && dep.phase == Phase::Done
                && dep.finished_ms == Some(now)
                && s.current.as_deref() == Some(dep.release.as_str())
                && let Some(f) = &dep.from
                && !dep.rollback
            {
                no_going_back.insert(f.clone());
            }
        }
        // Calm world: everything settles.
        assert!(
            s.active().is_none(),
            "seed {seed}: deploy never finished: {:?}",
            s.deploy.as_ref().map(|d| (&d.phase, &d.log))
        );
        let d = s.desired();
        assert!(
            d.routes.iter().filter(|r| r.state == RouteState::Active).count() <= 1,
            "seed {seed}: more than one active release at rest: {:?}",
            d.routes
        );
    }
}

#[test]
fn sessions_cut_by_the_drain_deadline_are_closed_at_once_but_quiet_ones_get_the_router_deadline() {
    for quiet in [false, true] {
        let (mut s, mut w, mut now) = (Service::default(), World::new(), 0);
        deploy(&mut s, "v1", Strategy::Canary, now);
        run(&mut s, &mut w, &mut now, 3, None);
        deploy(&mut s, "v2", Strategy::Canary, now);
        run(&mut s, &mut w, &mut now, 45, Some(Outcome::Pass));
        assert_eq!(s.current.as_deref(), Some("v2"));
        if quiet {
            s.on(
                &Event::Idle {
                    release: "v1".into(),
                    idle_ms: 11_000,
                },
                now,
            )
            .unwrap();
        }
        // Second by second until v1 is taken down.
        let mut down = None;
        for _ in 0..130 {
            if let Some(r) = s
                .desired()
                .routes
                .iter()
                .find(|r| r.release == "v1" && r.state == RouteState::Down)
            {
                down = Some(r.drain_now);
                break;
            }
            run(&mut s, &mut w, &mut now, 1, None);
        }
        // Its players were told at drain start and had the whole deadline:
        // no second wait. Quiet releases have (almost) nobody left to cut.
        assert_eq!(down, Some(!quiet), "quiet = {quiet}");
    }
}
