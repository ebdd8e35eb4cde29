//! The deploy state machine: rolling, canary and blue-green deploys, aborts, rollbacks and the retirement of old releases, as a pure function of events and time.
//!
//! `Service::on(event, now)` changes the state and says whether it changed;
//! `Service::desired()` derives what should exist (instance groups and
//! their counts) and how traffic should be routed. The control plane
//! journals every event that changed the state *before* acting, and acts by
//! reconciling the world towards `desired()` — an idempotent step, so a
//! control plane killed at any point replays the journal through this same
//! function and carries on without starting anything twice.
//!
//! The types here are serialized because they are the journal's records.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wire::RouteState;
use wire::judge::Outcome;
use wire::service::Strategy;

#[cfg(test)]
mod tests;

/// Settings of one deploy, captured when it starts (a config change later
/// does not change a running deploy, and replay stays deterministic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Instances per release.
    pub count: u32,
    /// Canary steps: (weight in percent, hold in ms).
    pub steps: Vec<(u32, u64)>,
    pub canary_count: u32,
    pub fresh_baseline: bool,
    pub extension_ms: u64,
    pub max_extensions: u32,
    /// Inconclusive after every extension: go on (true) or abort (false).
    pub continue_when_inconclusive: bool,
    pub max_surge: u32,
    pub max_unavailable: u32,
    pub bake_ms: u64,
    pub check_ms: u64,
    pub rollback_window_ms: u64,
    pub drain_deadline_ms: u64,
    pub session_idle_ms: u64,
    pub start_timeout_ms: u64,
}

/// What the agent reports about one instance group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupObs {
    pub release: String,
    pub group: String,
    /// Instances that hold or will hold a process.
    pub live: u32,
    pub ready: u32,
    /// Set when an instance of the group failed to start or crash-looped.
    pub failed: Option<String>,
}

/// Something that happened; commands may be refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Deploy {
        release: String,
        strategy: Strategy,
        plan: Plan,
    },
    Rollback {
        plan: Plan,
    },
    Pause,
    Resume,
    Promote,
    Abort {
        reason: String,
    },
    /// The agent's view of every group (replaces the previous one).
    Groups {
        groups: Vec<GroupObs>,
    },
    /// A retiring release has seen no request (and holds no connection) for `idle_ms`.
    Idle {
        release: String,
        idle_ms: u64,
    },
    /// The judge's verdict for the current analysis.
    Verdict {
        outcome: Outcome,
        reason: String,
    },
    Tick,
}

/// How a release leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum RetireMode {
    /// Keeps its sessions until none was seen for `idle_ms`, or `deadline` passes.
    Sessions { idle_ms: u64, deadline: u64 },
    /// Stays warm (draining, for an instant rollback) until `until`.
    Window { until: u64 },
    /// Taken out of traffic at once (rollback away from it).
    Immediate,
}

/// A release on its way out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retiring {
    pub release: String,
    pub count: u32,
    pub mode: RetireMode,
    pub since: u64,
    /// Taken out of traffic; its instances are being stopped.
    pub stopping: bool,
    pub idle_ms: u64,
    /// Stopped because its sessions' deadline passed: their connections were
    /// given their time already, so they are closed at once.
    #[serde(default)]
    pub out_of_time: bool,
}

/// Where a deploy is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// New instances starting.
    Starting,
    /// Canary step `index` since `since` (extended `extensions` times).
    Step {
        index: usize,
        since: u64,
        extensions: u32,
    },
    /// Canary passed: scaling to the full count before taking all traffic.
    Promoting,
    /// Blue-green: the new set must stay ready until `since + check`.
    Checking {
        since: u64,
    },
    /// Rolling: `added` new instances wanted, `removed` old ones retired.
    Rolling {
        added: u32,
        removed: u32,
        ready_since: Option<u64>,
    },
    Aborting {
        reason: String,
    },
    Done,
    Aborted,
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Step { .. } => "step",
            Phase::Promoting => "promoting",
            Phase::Checking { .. } => "checking",
            Phase::Rolling { .. } => "rolling",
            Phase::Aborting { .. } => "aborting",
            Phase::Done => "done",
            Phase::Aborted => "aborted",
        }
    }

    pub fn finished(&self) -> bool {
        matches!(self, Phase::Done | Phase::Aborted)
    }
}

/// One deploy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deploy {
    pub id: i64,
    pub release: String,
    pub from: Option<String>,
    pub strategy: Strategy,
    pub plan: Plan,
    pub phase: Phase,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    pub outcome: Option<String>,
    pub paused_at: Option<u64>,
    /// Verdict of the current analysis, kept only when it changes.
    pub last_verdict: Option<Outcome>,
    /// The deploy's story, in words.
    pub log: Vec<(u64, String)>,
    /// A rollback's fast redeploy (no checks, no window).
    pub rollback: bool,
}

impl Deploy {
    pub fn fresh_group(&self) -> Option<String> {
        (self.strategy == Strategy::Canary && self.plan.fresh_baseline && self.from.is_some())
            .then(|| format!("{}-fresh", self.from.as_deref().unwrap_or_default()))
    }

    /// Instances of the new release wanted now.
    fn target(&self) -> u32 {
        match (&self.phase, self.from.is_some(), self.strategy) {
            (_, false, _) => self.plan.count,
            (Phase::Rolling { added, .. }, _, _) => *added,
            (Phase::Starting | Phase::Step { .. }, _, Strategy::Canary) => self.plan.canary_count,
            _ => self.plan.count,
        }
    }

    /// Canary weight in percent now.
    pub fn canary_weight(&self) -> u32 {
        match &self.phase {
            Phase::Step { index, .. } => self.plan.steps.get(*index).map_or(0, |s| s.0),
            Phase::Promoting => self.plan.steps.last().map_or(0, |s| s.0),
            Phase::Rolling { added, removed, .. } => {
                let old = self.plan.count.saturating_sub(*removed);
                (100 * added).checked_div(added + old).unwrap_or(0)
            }
            _ => 0,
        }
    }

    fn say(&mut self, now: u64, what: impl Into<String>) {
        self.log.push((now, what.into()));
    }
}

/// An instance group to keep running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub release: String,
    pub group: String,
    pub count: u32,
}

/// One release in the route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub release: String,
    pub groups: Vec<String>,
    pub weight: u32,
    pub state: RouteState,
    /// Close its long-lived connections now rather than after the drain deadline.
    pub drain_now: bool,
}

/// What the current analysis compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalysisSpec {
    /// Changes when a new analysis starts (a new judge).
    pub key: String,
    pub canary_groups: Vec<(String, String)>,
    pub baseline_groups: Vec<(String, String)>,
}

/// What should exist and how traffic should flow.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    pub groups: Vec<GroupSpec>,
    /// Newest first (key-affinity buckets are given in this order).
    pub routes: Vec<RouteSpec>,
    pub current: Option<String>,
    pub analysis: Option<AnalysisSpec>,
}

/// The whole state the control plane keeps.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Service {
    pub current: Option<String>,
    pub previous: Option<String>,
    /// Instances of the current release.
    pub count: u32,
    pub retiring: Vec<Retiring>,
    /// The active deploy, or the last one.
    pub deploy: Option<Deploy>,
    pub next_id: i64,
    /// Last agent observation, by (release, group).
    pub groups: BTreeMap<String, GroupObs>,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn key(release: &str, group: &str) -> String {
    format!("{release}/{group}")
}

impl Service {
    pub fn active(&self) -> Option<&Deploy> {
        self.deploy.as_ref().filter(|d| !d.phase.finished())
    }

    fn active_mut(&mut self) -> Option<&mut Deploy> {
        self.deploy.as_mut().filter(|d| !d.phase.finished())
    }

    fn obs(&self, release: &str, group: &str) -> (u32, u32, Option<String>) {
        self.groups
            .get(&key(release, group))
            .map_or((0, 0, None), |g| (g.live, g.ready, g.failed.clone()))
    }

    /// Applies one event at time `now` (ms). `Ok(true)` if the state changed
    /// (journal it), `Ok(false)` if not, `Err` for a refused command (no change).
    pub fn on(&mut self, event: &Event, now: u64) -> Result<bool, Refused> {
        let before = self.clone();
        match event {
            Event::Deploy {
                release,
                strategy,
                plan,
            } => self.start_deploy(release, *strategy, plan, now, false)?,
            Event::Rollback { plan } => self.rollback(plan, now)?,
            Event::Pause => {
                let d = self
                    .active_mut()
                    .ok_or_else(|| Refused("no deploy is running".into()))?;
                if d.paused_at.is_none() {
                    d.paused_at = Some(now);
                    d.say(now, "paused");
                }
            }
            Event::Resume => {
                let d = self
                    .active_mut()
                    .ok_or_else(|| Refused("no deploy is running".into()))?;
                if let Some(at) = d.paused_at.take() {
                    let paused = now.saturating_sub(at);
                    // Time spent paused does not count towards holds and checks.
                    match &mut d.phase {
                        Phase::Step { since, .. } | Phase::Checking { since } => *since += paused,
                        _ => {}
                    }
                    d.say(now, format!("resumed after {}s paused", paused / 1000));
                }
            }
            Event::Promote => {
                let d = self
                    .active_mut()
                    .ok_or_else(|| Refused("no deploy is running".into()))?;
                match d.phase {
                    Phase::Step { .. } => {
                        d.phase = Phase::Promoting;
                        d.say(now, "promoted by hand");
                    }
                    Phase::Checking { .. } => {
                        d.phase = Phase::Checking { since: 0 };
                        d.say(now, "switch forced by hand");
                    }
                    Phase::Starting => return Err(Refused("the new instances are not ready yet".into())),
                    Phase::Rolling { .. } => return Err(Refused("a rolling deploy has no steps to skip".into())),
                    _ => return Err(Refused(format!("cannot promote while {}", d.phase.name()))),
                }
            }
            Event::Abort { reason } => {
                let d = self
                    .active_mut()
                    .ok_or_else(|| Refused("no deploy is running".into()))?;
                if !matches!(d.phase, Phase::Aborting { .. }) {
                    d.phase = Phase::Aborting { reason: reason.clone() };
                    d.say(now, format!("abort: {reason}"));
                }
            }
            Event::Groups { groups } => {
                let map: BTreeMap<String, GroupObs> =
                    groups.iter().map(|g| (key(&g.release, &g.group), g.clone())).collect();
                self.groups = map;
            }
            Event::Idle { release, idle_ms } => {
                for r in self.retiring.iter_mut().filter(|r| &r.release == release) {
                    r.idle_ms = *idle_ms;
                }
            }
            Event::Verdict { outcome, reason } => {
                if let Some(d) = self.active_mut()
                    && matches!(d.phase, Phase::Step { .. } | Phase::Rolling { .. })
                {
                    if *outcome == Outcome::Fail && !matches!(d.phase, Phase::Aborting { .. }) {
                        d.phase = Phase::Aborting {
                            reason: format!("the judge failed the canary: {reason}"),
                        };
                        d.say(now, format!("verdict fail: {reason}"));
                    }
                    d.last_verdict = Some(*outcome);
                }
            }
            Event::Tick => {}
        }
        self.advance(now);
        Ok(*self != before)
    }

    fn start_deploy(
        &mut self,
        release: &str,
        strategy: Strategy,
        plan: &Plan,
        now: u64,
        rollback: bool,
    ) -> Result<(), Refused> {
        if let Some(d) = self.active() {
            return Err(Refused(format!(
                "deploy {} of {} is still {}; only one deploy runs at a time (abort it first)",
                d.id,
                d.release,
                d.phase.name()
            )));
        }
        if self.current.as_deref() == Some(release) {
            return Err(Refused(format!("{release} is already the current release")));
        }
        if self.retiring.iter().any(|r| r.release == release) {
            return Err(Refused(format!(
                "{release} is still retiring; use rollback, or deploy it once it is gone"
            )));
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
            finished_ms: None,
            outcome: None,
            paused_at: None,
            last_verdict: None,
            log: Vec::new(),
            rollback,
        };
        let what = match &from {
            Some(f) => format!("{} deploy of {release} over {f}", strategy.as_str()),
            None => format!("first deploy of {release}"),
        };
        d.say(now, what);
        self.deploy = Some(d);
        Ok(())
    }

    fn rollback(&mut self, plan: &Plan, now: u64) -> Result<(), Refused> {
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
        match warm {
            Some(i) => {
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
                self.current = Some(prev.clone());
                self.previous = Some(current.clone());
                self.count = r.count;
                if let Some(d) = self.deploy.as_mut() {
                    d.say(now, format!("rolled back from {current} to {prev} (route swap)"));
                }
                Ok(())
            }
            None => {
                // Not warm any more: a fast redeploy with no analysis.
                let mut fast = plan.clone();
                fast.check_ms = 0;
                fast.rollback_window_ms = 0;
                self.start_deploy(&prev, Strategy::BlueGreen, &fast, now, true)
            }
        }
    }

    /// Time- and observation-driven transitions.
    fn advance(&mut self, now: u64) {
        self.advance_deploy(now);
        self.advance_retiring(now);
    }

    fn finish_promotion(&mut self, now: u64) {
        let Some(d) = self.deploy.as_mut() else { return };
        let from = d.from.clone();
        let plan = d.plan.clone();
        let strategy = d.strategy;
        d.phase = Phase::Done;
        d.finished_ms = Some(now);
        d.outcome = Some("promoted".into());
        let release = d.release.clone();
        d.say(now, format!("{release} is now the current release"));
        let rollback = d.rollback;
        if let Some(f) = from {
            let mode = if rollback {
                RetireMode::Immediate
            } else {
                match strategy {
                    Strategy::BlueGreen => RetireMode::Window {
                        until: now + plan.rollback_window_ms,
                    },
                    Strategy::Rolling => RetireMode::Immediate,
                    Strategy::Canary => RetireMode::Sessions {
                        idle_ms: plan.session_idle_ms,
                        deadline: now + plan.drain_deadline_ms,
                    },
                }
            };
            self.retiring.retain(|r| r.release != f);
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

    fn advance_deploy(&mut self, now: u64) {
        let Some(d) = self.active().cloned() else { return };
        let to = d.release.clone();
        let (_, ready_to, failed_to) = self.obs(&to, &to);
        let fresh = d.fresh_group();
        let fresh_obs = fresh
            .as_ref()
            .map(|g| self.obs(d.from.as_deref().unwrap_or_default(), g));
        let failure = failed_to.or_else(|| fresh_obs.as_ref().and_then(|o| o.2.clone()));
        let paused = d.paused_at.is_some();
        let plan = &d.plan;
        let abort = |s: &mut Service, reason: String| {
            if let Some(d) = s.deploy.as_mut() {
                d.say(now, format!("abort: {reason}"));
                d.phase = Phase::Aborting { reason };
            }
        };
        match d.phase.clone() {
            Phase::Starting => {
                if let Some(f) = failure {
                    return abort(self, format!("a new instance failed: {f}"));
                }
                let fresh_ready = fresh_obs.as_ref().is_none_or(|o| o.1 >= plan.canary_count);
                if ready_to >= d.target() && fresh_ready {
                    if d.from.is_none() {
                        return self.finish_promotion(now);
                    }
                    let next = match d.strategy {
                        Strategy::Canary => Phase::Step {
                            index: 0,
                            since: now,
                            extensions: 0,
                        },
                        _ => Phase::Checking { since: now },
                    };
                    if let Some(dm) = self.deploy.as_mut() {
                        dm.say(now, format!("{} instances of {to} ready", ready_to));
                        if let Phase::Step { .. } = next {
                            dm.say(now, format!("step 1: weight {}%", plan.steps[0].0));
                        }
                        dm.phase = next;
                        dm.last_verdict = None;
                    }
                } else if now.saturating_sub(d.started_ms) > plan.start_timeout_ms {
                    abort(
                        self,
                        format!("new instances not ready within {}s", plan.start_timeout_ms / 1000),
                    );
                }
            }
            Phase::Step {
                index,
                since,
                extensions,
            } => {
                if let Some(f) = failure {
                    return abort(self, format!("a canary instance failed: {f}"));
                }
                if paused {
                    return;
                }
                let hold = plan.steps[index].1 + extensions as u64 * plan.extension_ms;
                if now < since + hold {
                    return;
                }
                let verdict = d.last_verdict.unwrap_or(Outcome::Inconclusive);
                let next = |s: &mut Service, why: &str| {
                    let Some(dm) = s.deploy.as_mut() else { return };
                    dm.last_verdict = None;
                    if index + 1 < dm.plan.steps.len() {
                        let w = dm.plan.steps[index + 1].0;
                        dm.say(
                            now,
                            format!("step {} {why}; step {}: weight {w}%", index + 1, index + 2),
                        );
                        dm.phase = Phase::Step {
                            index: index + 1,
                            since: now,
                            extensions: 0,
                        };
                    } else {
                        dm.say(now, format!("step {} {why}; promoting", index + 1));
                        dm.phase = Phase::Promoting;
                    }
                };
                match verdict {
                    Outcome::Pass => next(self, "passed"),
                    Outcome::Fail => abort(self, "the judge failed the canary".into()),
                    Outcome::Inconclusive if extensions < plan.max_extensions => {
                        if let Some(dm) = self.deploy.as_mut() {
                            dm.say(
                                now,
                                format!(
                                    "step {} inconclusive; held {}s longer",
                                    index + 1,
                                    plan.extension_ms / 1000
                                ),
                            );
                            dm.phase = Phase::Step {
                                index,
                                since,
                                extensions: extensions + 1,
                            };
                        }
                    }
                    Outcome::Inconclusive if plan.continue_when_inconclusive => {
                        next(self, "still inconclusive (going on as configured)")
                    }
                    Outcome::Inconclusive => abort(
                        self,
                        format!("step {} still inconclusive after {extensions} extensions", index + 1),
                    ),
                }
            }
            Phase::Promoting => {
                if let Some(f) = failure {
                    return abort(self, format!("a new instance failed: {f}"));
                }
                if !paused && ready_to >= plan.count {
                    self.finish_promotion(now);
                }
            }
            Phase::Checking { since } => {
                if let Some(f) = failure {
                    return abort(self, format!("a new instance failed: {f}"));
                }
                if ready_to < plan.count {
                    if let Some(dm) = self.deploy.as_mut() {
                        dm.phase = Phase::Checking { since: now };
                    }
                } else if !paused && now >= since + plan.check_ms {
                    self.finish_promotion(now);
                }
            }
            Phase::Rolling {
                added,
                removed,
                ready_since,
            } => {
                if let Some(f) = failure {
                    return abort(self, format!("a new instance failed: {f}"));
                }
                if paused {
                    return;
                }
                if ready_to < added {
                    if ready_since.is_some()
                        && let Some(dm) = self.deploy.as_mut()
                    {
                        dm.phase = Phase::Rolling {
                            added,
                            removed,
                            ready_since: None,
                        };
                    }
                    if now.saturating_sub(d.started_ms) > plan.start_timeout_ms && ready_since.is_none() && removed == 0
                    {
                        abort(
                            self,
                            format!("new instances not ready within {}s", plan.start_timeout_ms / 1000),
                        );
                    }
                    return;
                }
                let Some(rs) = ready_since else {
                    if let Some(dm) = self.deploy.as_mut() {
                        dm.phase = Phase::Rolling {
                            added,
                            removed,
                            ready_since: Some(now),
                        };
                    }
                    return;
                };
                if now < rs + plan.bake_ms {
                    return;
                }
                let n = plan.count;
                let removed_target = (added + plan.max_unavailable).min(n);
                if added >= n && removed >= n {
                    return self.finish_promotion(now);
                }
                let new_added = if removed_target > removed {
                    added
                } else {
                    (added + plan.max_surge.max(1)).min(n)
                };
                let new_removed = removed_target.max(removed);
                if let Some(dm) = self.deploy.as_mut() {
                    if new_removed > removed {
                        dm.say(now, format!("{new_removed} of {n} old instances retired"));
                    }
                    if new_added > added {
                        dm.say(now, format!("{new_added} of {n} new instances wanted"));
                    }
                    let done = new_added >= n && new_removed >= n;
                    dm.phase = Phase::Rolling {
                        added: new_added,
                        removed: new_removed,
                        ready_since: if new_added > added { None } else { Some(rs) },
                    };
                    if done {
                        self.finish_promotion(now);
                    }
                }
            }
            Phase::Aborting { reason } => {
                let gone_to = self.obs(&to, &to).0 == 0;
                let gone_fresh = fresh_obs.is_none_or(|o| o.0 == 0);
                if gone_to
                    && gone_fresh
                    && let Some(dm) = self.deploy.as_mut()
                {
                    dm.phase = Phase::Aborted;
                    dm.finished_ms = Some(now);
                    dm.outcome = Some(reason.clone());
                    dm.say(
                        now,
                        format!("aborted; {} keeps serving", d.from.as_deref().unwrap_or("nothing")),
                    );
                }
            }
            Phase::Done | Phase::Aborted => {}
        }
    }

    fn advance_retiring(&mut self, now: u64) {
        let obs = self.groups.clone();
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
            }
            let live = obs.get(&key(&r.release, &r.release)).map_or(0, |g| g.live);
            !(r.stopping && live == 0)
        });
    }

    /// What should exist now.
    pub fn desired(&self) -> Desired {
        let mut out = Desired {
            current: self.current.clone(),
            ..Default::default()
        };
        let d = self.active();
        // The deploy's new release comes first in the table.
        if let Some(d) = d {
            let w = d.canary_weight();
            let to = &d.release;
            let (state, weight, count) = match &d.phase {
                Phase::Aborting { .. } => (RouteState::Down, 0, 0),
                Phase::Starting | Phase::Checking { .. } if d.from.is_some() => (RouteState::Active, 0, d.target()),
                _ if d.from.is_none() => (RouteState::Active, 100, d.plan.count),
                _ => (RouteState::Active, w, d.target()),
            };
            if count > 0 {
                out.groups.push(GroupSpec {
                    release: to.clone(),
                    group: to.clone(),
                    count,
                });
            }
            out.routes.push(RouteSpec {
                release: to.clone(),
                groups: vec![to.clone()],
                weight,
                state,
                drain_now: false,
            });
            if let (Some(from), Some(g)) = (&d.from, d.fresh_group())
                && !matches!(d.phase, Phase::Aborting { .. })
            {
                out.groups.push(GroupSpec {
                    release: from.clone(),
                    group: g,
                    count: d.plan.canary_count,
                });
            }
            if let Phase::Step { index, .. } = d.phase {
                let baseline = match d.fresh_group() {
                    Some(g) => vec![(d.from.clone().unwrap_or_default(), g)],
                    None => d.from.iter().map(|f| (f.clone(), f.clone())).collect(),
                };
                out.analysis = Some(AnalysisSpec {
                    key: format!("{}/step-{}", d.id, index + 1),
                    canary_groups: vec![(to.clone(), to.clone())],
                    baseline_groups: baseline,
                });
            }
            if let Phase::Rolling { .. } = d.phase {
                out.analysis = d.from.as_ref().map(|f| AnalysisSpec {
                    key: format!("{}/rolling", d.id),
                    canary_groups: vec![(to.clone(), to.clone())],
                    baseline_groups: vec![(f.clone(), f.clone())],
                });
            }
        }
        if let Some(cur) = &self.current {
            let mut groups = vec![cur.clone()];
            let mut count = self.count;
            let mut weight = 100;
            if let Some(d) = d
                && d.from.as_deref() == Some(cur.as_str())
            {
                match &d.phase {
                    Phase::Rolling { removed, .. } => count = self.count.saturating_sub(*removed),
                    Phase::Aborting { .. } => {}
                    _ => {}
                }
                if !matches!(d.phase, Phase::Aborting { .. }) {
                    weight = 100 - d.canary_weight().min(100);
                    if let Some(g) = d.fresh_group() {
                        groups.push(g);
                    }
                }
            }
            out.groups.push(GroupSpec {
                release: cur.clone(),
                group: cur.clone(),
                count,
            });
            out.routes.push(RouteSpec {
                release: cur.clone(),
                groups,
                weight,
                state: RouteState::Active,
                drain_now: false,
            });
        }
        for r in self.retiring.iter().rev() {
            if r.stopping {
                out.routes.push(RouteSpec {
                    release: r.release.clone(),
                    groups: vec![r.release.clone()],
                    weight: 0,
                    state: RouteState::Down,
                    drain_now: r.out_of_time,
                });
            } else {
                out.groups.push(GroupSpec {
                    release: r.release.clone(),
                    group: r.release.clone(),
                    count: r.count,
                });
                out.routes.push(RouteSpec {
                    release: r.release.clone(),
                    groups: vec![r.release.clone()],
                    weight: 0,
                    state: RouteState::Draining,
                    drain_now: false,
                });
            }
        }
        out
    }
}
