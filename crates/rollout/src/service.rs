//! The whole state the control plane keeps, and the one function that changes it: `Service::on(event, now)`.

use std::collections::BTreeMap;

use wire::judge::Outcome;
use wire::service::{HoldReason, Strategy};

use crate::deploy::{Deploy, Phase, RetireMode, Retiring};
use crate::event::{Event, GroupObs, Plan};
use crate::transition::Transition;

/// The whole state the control plane keeps.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Service {
    pub current: Option<String>,
    pub previous: Option<String>,
    /// Instances of the current release.
    pub count: u32,
    pub retiring: Vec<Retiring>,
    /// The active deploy, or the last one.
    pub deploy: Option<Deploy>,
    pub next_id: i64,
    /// Set while the control plane cannot see or set the world: nothing moves on meanwhile.
    pub held: Option<Hold>,
    /// Last agent observation, by (release, group).
    pub(crate) groups: BTreeMap<(String, String), GroupObs>,
}

/// The control plane's hold: why, and since when (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub reason: HoldReason,
    pub since: u64,
    /// Said in the deploy's log (a part was unreachable). Waiting for the router to confirm a new table, as every
    /// step does for a moment, is not.
    pub logged: bool,
}

/// What one event did: whether the state changed (then it is journaled)
/// and the transitions it caused, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Update {
    pub changed: bool,
    pub transitions: Vec<Transition>,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn no_deploy() -> Refused {
    Refused("no deploy is running".into())
}

impl Service {
    pub fn active(&self) -> Option<&Deploy> {
        self.deploy.as_ref().filter(|d| !d.phase.finished())
    }

    pub(crate) fn active_mut(&mut self) -> Option<&mut Deploy> {
        self.deploy.as_mut().filter(|d| !d.phase.finished())
    }

    /// The agent's last report on one instance group.
    pub fn group(&self, release: &str, group: &str) -> Option<&GroupObs> {
        self.groups.get(&(release.to_string(), group.to_string()))
    }

    /// (live, ready, failure) of a group; nothing seen counts as none.
    pub(crate) fn obs(&self, release: &str, group: &str) -> (u32, u32, Option<String>) {
        self.group(release, group)
            .map_or((0, 0, None), |g| (g.live, g.ready, g.failed.clone()))
    }

    /// Applies one event at time `now` (ms): what it changed and caused, or
    /// `Err` for a refused command (nothing changed).
    pub fn on(&mut self, event: &Event, now: u64) -> Result<Update, Refused> {
        let before = self.clone();
        let mut out = Vec::new();
        match event {
            Event::Deploy {
                release,
                strategy,
                plan,
                ..
            } => self.start_deploy(release, *strategy, plan, now, false, &mut out)?,
            Event::Rollback { plan } => self.rollback(plan, now, &mut out)?,
            Event::Pause | Event::Resume | Event::Promote | Event::Abort { .. } => {
                self.command(event, now, &mut out)?
            }
            Event::Groups { groups } => {
                self.groups = groups
                    .iter()
                    .map(|g| ((g.release.clone(), g.group.clone()), g.clone()))
                    .collect();
            }
            Event::Idle { release, idle_ms } => {
                for r in self.retiring.iter_mut().filter(|r| &r.release == release) {
                    r.idle_ms = *idle_ms;
                }
            }
            // The analysis does not advance while held: what the judge saw may not be what the router ran.
            Event::Verdict { .. } if self.held.is_some() => {}
            Event::Verdict { outcome, reason } => self.verdict(*outcome, reason, now, &mut out),
            Event::Tick => {}
            Event::Hold { reason } => self.hold(*reason, now, &mut out),
            Event::Unhold => self.unhold(now, &mut out),
            Event::PreTraffic { passed, output } => self.pre_traffic(*passed, output, now, &mut out)?,
        }
        // Nothing is stepped, promoted or retired on a world that could not be seen or set.
        if self.held.is_none() {
            self.advance(now, &mut out);
        }
        Ok(Update {
            changed: *self != before,
            transitions: out,
        })
    }

    /// Pause, resume, promote and abort of the running deploy.
    fn command(&mut self, event: &Event, now: u64, out: &mut Vec<Transition>) -> Result<(), Refused> {
        let d = self.active_mut().ok_or_else(no_deploy)?;
        match event {
            Event::Pause if d.paused_at.is_none() => {
                d.paused_at = Some(now);
                d.say(now, Transition::Paused, out);
            }
            Event::Resume => {
                if let Some(at) = d.paused_at.take() {
                    let paused = now.saturating_sub(at);
                    // Time spent paused does not count towards holds and checks.
                    if let Phase::Step { since, .. } | Phase::Checking { since } = &mut d.phase {
                        *since += paused;
                    }
                    d.say(now, Transition::Resumed { paused_ms: paused }, out);
                }
            }
            Event::Promote => match d.phase {
                Phase::Step { .. } => {
                    d.phase = Phase::Promoting;
                    d.say(now, Transition::PromotedByHand, out);
                }
                Phase::Checking { .. } => {
                    d.phase = Phase::Checking { since: 0 };
                    d.say(now, Transition::SwitchForced, out);
                }
                Phase::Starting => return Err(Refused("the new instances are not ready yet".into())),
                Phase::Rolling { .. } => return Err(Refused("a rolling deploy has no steps to skip".into())),
                _ => return Err(Refused(format!("cannot promote while {}", d.phase.kind()))),
            },
            Event::Abort { reason } if !matches!(d.phase, Phase::Aborting { .. }) => {
                d.phase = Phase::Aborting { reason: reason.clone() };
                d.say(now, Transition::Aborting { reason: reason.clone() }, out);
            }
            _ => {}
        }
        Ok(())
    }

    /// Holds (or goes on holding, for another reason); an unreachable part is said in the deploy's log.
    fn hold(&mut self, reason: HoldReason, now: u64, out: &mut Vec<Transition>) {
        let log = reason != HoldReason::RoutesUnconfirmed;
        match &mut self.held {
            Some(h) if h.reason == reason => return,
            Some(h) => {
                h.reason = reason;
                h.logged |= log;
            }
            None => {
                self.held = Some(Hold {
                    reason,
                    since: now,
                    logged: log,
                })
            }
        }
        let t = Transition::Held { reason };
        match self.active_mut() {
            Some(d) if log => d.say(now, t, out),
            _ => out.push(t),
        }
    }

    /// The hold ends: its time is given back to the step's hold, the check, the bake, the start timeout and the
    /// retiring releases' windows and deadlines.
    fn unhold(&mut self, now: u64, out: &mut Vec<Transition>) {
        let Some(h) = self.held.take() else { return };
        let held = now.saturating_sub(h.since);
        for r in &mut self.retiring {
            match &mut r.mode {
                RetireMode::Sessions { deadline, .. } => *deadline += held,
                RetireMode::Window { until } => *until += held,
                RetireMode::Immediate => {}
            }
        }
        let t = Transition::Unheld { held_ms: held };
        let Some(d) = self.active_mut() else {
            return out.push(t);
        };
        d.held_ms += held;
        match &mut d.phase {
            Phase::Step { since, .. } | Phase::Checking { since } => *since += held,
            Phase::Rolling {
                ready_since: Some(since),
                ..
            } => *since += held,
            _ => {}
        }
        // Paused time inside the hold was given back already.
        if let Some(p) = &mut d.paused_at {
            *p += now.saturating_sub((*p).max(h.since));
        }
        if h.logged {
            d.say(now, t, out);
        } else {
            out.push(t);
        }
    }

    /// The pre-traffic check's result: the deploy goes on as it would have once its instances were ready, or aborts
    /// with the check's output. Refused unless the running deploy is in its check (a late result of an aborted
    /// or restarted check changes nothing).
    fn pre_traffic(&mut self, passed: bool, output: &str, now: u64, out: &mut Vec<Transition>) -> Result<(), Refused> {
        let d = self.active_mut().ok_or_else(no_deploy)?;
        if !matches!(d.phase, Phase::PreTraffic { .. }) {
            return Err(Refused(format!("deploy {} runs no pre-traffic check now", d.id)));
        }
        if !passed {
            let reason = format!("the pre-traffic check failed: {output}");
            d.say(now, Transition::Aborting { reason: reason.clone() }, out);
            d.phase = Phase::Aborting { reason };
            return Ok(());
        }
        d.say(
            now,
            Transition::PreTrafficPassed {
                output: output.to_string(),
            },
            out,
        );
        d.phase = crate::advance::after_ready(d, now, out);
        Ok(())
    }

    /// The judge's verdict: a failure aborts at once, any other waits for the step's end.
    fn verdict(&mut self, outcome: Outcome, reason: &str, now: u64, out: &mut Vec<Transition>) {
        if let Some(d) = self.active_mut()
            && matches!(d.phase, Phase::Step { .. } | Phase::Rolling { .. })
        {
            if outcome == Outcome::Fail {
                d.phase = Phase::Aborting {
                    reason: format!("the judge failed the canary: {reason}"),
                };
                let reason = reason.to_string();
                d.say(now, Transition::JudgeFailed { reason }, out);
            }
            d.last_verdict = Some(outcome);
        }
    }

    fn start_deploy(
        &mut self,
        release: &str,
        strategy: Strategy,
        plan: &Plan,
        now: u64,
        rollback: bool,
        out: &mut Vec<Transition>,
    ) -> Result<(), Refused> {
        if let Some(d) = self.active() {
            return Err(Refused(format!(
                "deploy {} of {} is still {}; only one deploy runs at a time (abort it first)",
                d.id,
                d.release,
                d.phase.kind()
            )));
        }
        if self.current.as_deref() == Some(release) {
            return Err(Refused(format!("{release} is already the current release")));
        }
        if self.retiring.iter().any(|r| r.release == release) {
            return Err(Refused(if rollback {
                format!("{release} is still shutting down; roll back again once its instances are gone")
            } else {
                format!("{release} is still retiring; use rollback, or deploy it once it is gone")
            }));
        }
        if plan.count == 0 || (strategy == Strategy::Canary && plan.steps.is_empty()) {
            return Err(Refused("the plan needs instances and, for a canary, steps".into()));
        }
        let id = self.next_id + 1;
        self.next_id = id;
        let from = self.current.clone();
        let phase = match (&from, strategy) {
            (Some(_), Strategy::Rolling) => Phase::Rolling {
                added: plan.max_surge.max(1).min(plan.count),
                removed: 0,
                ready_since: None,
            },
            _ => Phase::Starting,
        };
        let mut d = Deploy {
            id,
            release: release.to_string(),
            from: from.clone(),
            strategy,
            plan: plan.clone(),
            phase,
            started_ms: now,
            held_ms: 0,
            finished_ms: None,
            outcome: None,
            paused_at: None,
            last_verdict: None,
            log: Vec::new(),
            rollback,
        };
        let started = Transition::Started {
            release: release.to_string(),
            strategy,
            from,
        };
        d.say(now, started, out);
        self.deploy = Some(d);
        Ok(())
    }

    fn rollback(&mut self, plan: &Plan, now: u64, out: &mut Vec<Transition>) -> Result<(), Refused> {
        if let Some(d) = self.active() {
            return Err(Refused(format!(
                "deploy {} is running; abort it instead of rolling back",
                d.id
            )));
        }
        let prev = self
            .previous
            .clone()
            .ok_or_else(|| Refused("there is no previous release to roll back to".into()))?;
        let current = self
            .current
            .clone()
            .ok_or_else(|| Refused("nothing is deployed".into()))?;
        let warm = self
            .retiring
            .iter()
            .position(|r| r.release == prev && !r.stopping && self.obs(&prev, &prev).1 > 0);
        let Some(i) = warm else {
            // Not warm any more: a fast redeploy with no analysis.
            let mut fast = plan.clone();
            fast.check_ms = 0;
            fast.rollback_window_ms = 0;
            fast.pre_traffic = false;
            return self.start_deploy(&prev, Strategy::BlueGreen, &fast, now, true, out);
        };
        // Atomic swap back: the previous release is still running.
        let r = self.retiring.remove(i);
        self.retiring.push(Retiring {
            release: current.clone(),
            count: self.count,
            mode: RetireMode::Immediate,
            since: now,
            stopping: true,
            idle_ms: 0,
            out_of_time: false,
        });
        out.push(Transition::TakenOut {
            release: current.clone(),
            cut: false,
        });
        self.current = Some(prev.clone());
        self.previous = Some(current.clone());
        self.count = r.count;
        let swapped = Transition::RolledBack {
            from: current,
            to: prev,
        };
        match self.deploy.as_mut() {
            Some(d) => d.say(now, swapped, out),
            None => out.push(swapped),
        }
        Ok(())
    }

    /// The deploy's release becomes current; the one it replaced starts retiring.
    pub(crate) fn finish_promotion(&mut self, now: u64, out: &mut Vec<Transition>) {
        let Some(d) = self.deploy.as_mut() else { return };
        let from = d.from.clone();
        let plan = d.plan.clone();
        let strategy = d.strategy;
        d.phase = Phase::Done;
        d.finished_ms = Some(now);
        d.outcome = Some("promoted".into());
        let release = d.release.clone();
        d.say(
            now,
            Transition::Promoted {
                release: release.clone(),
            },
            out,
        );
        let rollback = d.rollback;
        if let Some(f) = from {
            let mode = match strategy {
                _ if rollback => RetireMode::Immediate,
                Strategy::BlueGreen => RetireMode::Window {
                    until: now + plan.rollback_window_ms,
                },
                Strategy::Rolling => RetireMode::Immediate,
                Strategy::Canary => RetireMode::Sessions {
                    idle_ms: plan.session_idle_ms,
                    deadline: now + plan.drain_deadline_ms,
                },
            };
            self.retiring.retain(|r| r.release != f);
            if mode == RetireMode::Immediate {
                out.push(Transition::TakenOut {
                    release: f.clone(),
                    cut: false,
                });
            }
            self.retiring.push(Retiring {
                release: f.clone(),
                count: self.count,
                stopping: mode == RetireMode::Immediate,
                mode,
                since: now,
                idle_ms: 0,
                out_of_time: false,
            });
            self.previous = Some(f);
        }
        self.current = Some(release);
        self.count = plan.count;
    }
}
