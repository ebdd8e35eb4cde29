//! Time- and observation-driven transitions: a deploy's phases move on, retiring releases leave.

use wire::judge::Outcome;
use wire::service::Strategy;

use crate::deploy::{Deploy, Phase, RetireMode};
use crate::service::Service;
use crate::transition::{StepVerdict, Transition};

/// What the agent shows of a deploy's instances.
struct Seen {
    /// Ready instances of the new release.
    ready: u32,
    /// The fresh baseline (if any) is ready.
    fresh_ready: bool,
    /// No instance of the new release (nor of the fresh baseline) is left.
    gone: bool,
    /// An instance of the new release or of the fresh baseline failed.
    failure: Option<String>,
}

impl Seen {
    fn of(s: &Service, d: &Deploy) -> Seen {
        let (live, ready, failed) = s.obs(&d.release, &d.release);
        let fresh = d
            .fresh_group()
            .map(|g| s.obs(d.from.as_deref().unwrap_or_default(), &g));
        Seen {
            ready,
            fresh_ready: fresh.as_ref().is_none_or(|o| o.1 >= d.plan.canary_count),
            gone: live == 0 && fresh.as_ref().is_none_or(|o| o.0 == 0),
            failure: failed.or_else(|| fresh.and_then(|o| o.2)),
        }
    }
}

impl Service {
    pub(crate) fn advance(&mut self, now: u64, out: &mut Vec<Transition>) {
        self.advance_deploy(now, out);
        self.advance_retiring(now, out);
    }

    fn abort(&mut self, reason: String, now: u64, out: &mut Vec<Transition>) {
        if let Some(d) = self.deploy.as_mut() {
            d.say(now, Transition::Aborting { reason: reason.clone() }, out);
            d.phase = Phase::Aborting { reason };
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        if let Some(d) = self.deploy.as_mut() {
            d.phase = phase;
        }
    }

    fn advance_deploy(&mut self, now: u64, out: &mut Vec<Transition>) {
        let Some(d) = self.active().cloned() else { return };
        let seen = Seen::of(self, &d);
        let failed = |what: &str| seen.failure.as_ref().map(|f| format!("a {what} instance failed: {f}"));
        let paused = d.paused_at.is_some();
        match d.phase.clone() {
            Phase::Starting => match failed("new") {
                Some(why) => self.abort(why, now, out),
                None => self.starting(&d, &seen, now, out),
            },
            Phase::Step {
                index,
                since,
                extensions,
            } => match failed("canary") {
                Some(why) => self.abort(why, now, out),
                None if paused => {}
                None => self.stepping(&d, (index, since, extensions), now, out),
            },
            Phase::PreTraffic { .. } => {
                if let Some(why) = failed("new") {
                    self.abort(why, now, out)
                }
            }
            Phase::Promoting => match failed("new") {
                Some(why) => self.abort(why, now, out),
                None if !paused && seen.ready >= d.plan.count => self.finish_promotion(now, out),
                None => {}
            },
            Phase::Checking { since } => match failed("new") {
                Some(why) => self.abort(why, now, out),
                None if seen.ready < d.plan.count => self.set_phase(Phase::Checking { since: now }),
                None if !paused && now >= since + d.plan.check_ms => self.finish_promotion(now, out),
                None => {}
            },
            Phase::Rolling {
                added,
                removed,
                ready_since,
            } => match failed("new") {
                Some(why) => self.abort(why, now, out),
                None if paused => {}
                None => self.rolling(&d, &seen, (added, removed, ready_since), now, out),
            },
            Phase::Aborting { reason } => {
                if seen.gone
                    && let Some(dm) = self.deploy.as_mut()
                {
                    dm.phase = Phase::Aborted;
                    dm.finished_ms = Some(now);
                    dm.outcome = Some(reason);
                    let serving = d.from.clone();
                    dm.say(now, Transition::Aborted { serving }, out);
                }
            }
            Phase::Done | Phase::Aborted => {}
        }
    }

    /// New instances starting: on to the first step or check once they are ready.
    fn starting(&mut self, d: &Deploy, seen: &Seen, now: u64, out: &mut Vec<Transition>) {
        let plan = &d.plan;
        if !(seen.ready >= d.target() && seen.fresh_ready) {
            if now.saturating_sub(d.started_ms + d.held_ms) > plan.start_timeout_ms {
                let why = format!("new instances not ready within {}s", plan.start_timeout_ms / 1000);
                self.abort(why, now, out);
            }
            return;
        }
        if d.from.is_none() {
            return self.finish_promotion(now, out);
        }
        let Some(dm) = self.deploy.as_mut() else { return };
        let ready = Transition::Ready {
            release: d.release.clone(),
            count: seen.ready,
        };
        dm.say(now, ready, out);
        dm.phase = if plan.pre_traffic {
            let release = d.release.clone();
            dm.say(now, Transition::PreTrafficCheck { release }, out);
            Phase::PreTraffic { since: now }
        } else {
            after_ready(dm, now, out)
        };
        dm.last_verdict = None;
    }

    /// A canary step at the end of its hold: on, held longer, or aborted, by the last verdict.
    fn stepping(&mut self, d: &Deploy, at: (usize, u64, u32), now: u64, out: &mut Vec<Transition>) {
        let (index, since, extensions) = at;
        let plan = &d.plan;
        let hold = plan.steps[index].1 + extensions as u64 * plan.extension_ms;
        if now < since + hold {
            return;
        }
        match d.last_verdict.unwrap_or(Outcome::Inconclusive) {
            Outcome::Pass => self.next_step(index, StepVerdict::Passed, now, out),
            Outcome::Fail => self.abort("the judge failed the canary".into(), now, out),
            Outcome::Inconclusive if extensions < plan.max_extensions => {
                if let Some(dm) = self.deploy.as_mut() {
                    let by_ms = plan.extension_ms;
                    dm.say(now, Transition::StepExtended { index, by_ms }, out);
                    dm.phase = Phase::Step {
                        index,
                        since,
                        extensions: extensions + 1,
                    };
                }
            }
            Outcome::Inconclusive if plan.continue_when_inconclusive => {
                self.next_step(index, StepVerdict::Inconclusive, now, out)
            }
            Outcome::Inconclusive => {
                let why = format!("step {} still inconclusive after {extensions} extensions", index + 1);
                self.abort(why, now, out)
            }
        }
    }

    /// Step `index` is done: the next step, or the promotion after the last.
    fn next_step(&mut self, index: usize, verdict: StepVerdict, now: u64, out: &mut Vec<Transition>) {
        let Some(dm) = self.deploy.as_mut() else { return };
        dm.last_verdict = None;
        let next_weight = dm.plan.steps.get(index + 1).map(|s| s.0);
        let done = Transition::StepDone {
            index,
            verdict,
            next_weight,
        };
        dm.say(now, done, out);
        dm.phase = match next_weight {
            Some(_) => Phase::Step {
                index: index + 1,
                since: now,
                extensions: 0,
            },
            None => Phase::Promoting,
        };
    }

    /// Rolling: after each bake, retire old instances and want new ones, within surge and unavailability.
    fn rolling(&mut self, d: &Deploy, seen: &Seen, at: (u32, u32, Option<u64>), now: u64, out: &mut Vec<Transition>) {
        let (added, removed, ready_since) = at;
        let plan = &d.plan;
        if seen.ready < added {
            if ready_since.is_some() {
                self.set_phase(Phase::Rolling {
                    added,
                    removed,
                    ready_since: None,
                });
            }
            if now.saturating_sub(d.started_ms + d.held_ms) > plan.start_timeout_ms
                && ready_since.is_none()
                && removed == 0
            {
                let why = format!("new instances not ready within {}s", plan.start_timeout_ms / 1000);
                self.abort(why, now, out);
            }
            return;
        }
        let Some(rs) = ready_since else {
            return self.set_phase(Phase::Rolling {
                added,
                removed,
                ready_since: Some(now),
            });
        };
        if now < rs + plan.bake_ms {
            return;
        }
        let n = plan.count;
        if added >= n && removed >= n {
            return self.finish_promotion(now, out);
        }
        let removed_target = (added + plan.max_unavailable).min(n);
        let new_added = if removed_target > removed {
            added
        } else {
            (added + plan.max_surge.max(1)).min(n)
        };
        let new_removed = removed_target.max(removed);
        let Some(dm) = self.deploy.as_mut() else { return };
        if new_removed > removed {
            dm.say(
                now,
                Transition::OldRetired {
                    count: new_removed,
                    of: n,
                },
                out,
            );
        }
        if new_added > added {
            dm.say(
                now,
                Transition::NewWanted {
                    count: new_added,
                    of: n,
                },
                out,
            );
        }
        dm.phase = Phase::Rolling {
            added: new_added,
            removed: new_removed,
            ready_since: if new_added > added { None } else { Some(rs) },
        };
        if new_added >= n && new_removed >= n {
            self.finish_promotion(now, out);
        }
    }

    /// Retiring releases are taken out of traffic when their mode says, and leave once their instances are gone.
    fn advance_retiring(&mut self, now: u64, out: &mut Vec<Transition>) {
        let groups = std::mem::take(&mut self.groups);
        let live = |release: &str| {
            groups
                .get(&(release.to_string(), release.to_string()))
                .map_or(0, |g| g.live)
        };
        self.retiring.retain_mut(|r| {
            if !r.stopping {
                r.stopping = match r.mode {
                    RetireMode::Sessions { idle_ms, deadline } => {
                        r.out_of_time = r.idle_ms < idle_ms && now >= deadline;
                        r.idle_ms >= idle_ms || now >= deadline
                    }
                    RetireMode::Window { until } => now >= until,
                    RetireMode::Immediate => true,
                };
                if r.stopping {
                    out.push(Transition::TakenOut {
                        release: r.release.clone(),
                        cut: r.out_of_time,
                    });
                }
            }
            let gone = r.stopping && live(&r.release) == 0;
            if gone {
                out.push(Transition::Retired {
                    release: r.release.clone(),
                });
            }
            !gone
        });
        self.groups = groups;
    }
}

/// The phase a canary or blue-green deploy enters once its new instances are ready (and passed their pre-traffic
/// check): the first step, or the check before the switch.
pub(crate) fn after_ready(d: &mut Deploy, now: u64, out: &mut Vec<Transition>) -> Phase {
    match d.strategy {
        Strategy::Canary => {
            let weight = d.plan.steps[0].0;
            d.say(now, Transition::StepEntered { index: 0, weight }, out);
            Phase::Step {
                index: 0,
                since: now,
                extensions: 0,
            }
        }
        _ => Phase::Checking { since: now },
    }
}
