//! One deploy (its plan, its phase, its log of transitions) and the releases on their way out.

use wire::judge::Outcome;
use wire::service::{DeployPhase, Strategy};

use crate::event::Plan;
use crate::transition::Transition;

/// How a release leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetireMode {
    /// Keeps its sessions until none was seen for `idle_ms`, or `deadline` passes.
    Sessions { idle_ms: u64, deadline: u64 },
    /// Stays warm (draining, for an instant rollback) until `until`.
    Window { until: u64 },
    /// Taken out of traffic at once (rollback away from it).
    Immediate,
}

/// A release on its way out.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub out_of_time: bool,
}

/// Where a deploy is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// New instances starting.
    Starting,
    /// Canary step `index` since `since` (extended `extensions` times).
    Step {
        index: usize,
        since: u64,
        extensions: u32,
    },
    /// The new instances are ready at weight 0 and the pre-traffic check runs against them (since `since`).
    PreTraffic {
        since: u64,
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
    /// The phase as the API names it.
    pub fn kind(&self) -> DeployPhase {
        match self {
            Phase::Starting => DeployPhase::Starting,
            Phase::Step { .. } => DeployPhase::Step,
            Phase::PreTraffic { .. } => DeployPhase::PreTraffic,
            Phase::Promoting => DeployPhase::Promoting,
            Phase::Checking { .. } => DeployPhase::Checking,
            Phase::Rolling { .. } => DeployPhase::Rolling,
            Phase::Aborting { .. } => DeployPhase::Aborting,
            Phase::Done => DeployPhase::Done,
            Phase::Aborted => DeployPhase::Aborted,
        }
    }

    pub fn finished(&self) -> bool {
        matches!(self, Phase::Done | Phase::Aborted)
    }
}

/// One deploy.
#[derive(Debug, Clone, PartialEq)]
pub struct Deploy {
    pub id: i64,
    pub release: String,
    pub from: Option<String>,
    pub strategy: Strategy,
    pub plan: Plan,
    pub phase: Phase,
    pub started_ms: u64,
    /// Time the control plane held the deploy (it could not see or set the world): not counted towards its
    /// start timeout.
    pub held_ms: u64,
    pub finished_ms: Option<u64>,
    pub outcome: Option<String>,
    pub paused_at: Option<u64>,
    /// Verdict of the current analysis, kept only when it changes.
    pub last_verdict: Option<Outcome>,
    /// The deploy's story: what happened, and when.
    pub log: Vec<(u64, Transition)>,
    /// A rollback's fast redeploy (no checks, no window).
    pub rollback: bool,
}

impl Deploy {
    pub fn fresh_group(&self) -> Option<String> {
        (self.strategy == Strategy::Canary && self.plan.fresh_baseline && self.from.is_some())
            .then(|| format!("{}-fresh", self.from.as_deref().unwrap_or_default()))
    }

    /// Instances of the new release wanted now.
    pub(crate) fn target(&self) -> u32 {
        match (&self.phase, self.from.is_some(), self.strategy) {
            (_, false, _) => self.plan.count,
            (Phase::Rolling { added, .. }, _, _) => *added,
            (Phase::Starting | Phase::PreTraffic { .. } | Phase::Step { .. }, _, Strategy::Canary) => {
                self.plan.canary_count
            }
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

    /// Records a transition in the log and in what this event did.
    pub(crate) fn say(&mut self, now: u64, t: Transition, out: &mut Vec<Transition>) {
        out.push(t.clone());
        self.log.push((now, t));
    }
}
