//! What the machine did, as typed values: the control plane decides on them, the deploy's log renders them.

use std::fmt;

use wire::service::{HoldReason, Strategy};

/// How a canary step ended when the deploy went on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepVerdict {
    /// The judge passed it.
    Passed,
    /// Still inconclusive after every extension, and the plan says to go on.
    Inconclusive,
}

/// One thing that happened to a deploy or a retiring release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// A deploy began; `from` is the release it replaces (none for a first deploy).
    Started {
        release: String,
        strategy: Strategy,
        from: Option<String>,
    },
    Paused,
    Resumed {
        paused_ms: u64,
    },
    /// The control plane holds the deploy: it cannot see or set the world.
    Held {
        reason: HoldReason,
    },
    /// The hold is over; its time did not count towards holds and deadlines.
    Unheld {
        held_ms: u64,
    },
    /// The operator ended the canary steps early.
    PromotedByHand,
    /// The operator ended the blue-green check early.
    SwitchForced,
    /// The new release's instances are ready.
    Ready {
        release: String,
        count: u32,
    },
    /// The pre-traffic check runs against the new release's ready instances, which get no traffic until it passed.
    PreTrafficCheck {
        release: String,
    },
    /// The pre-traffic check passed; `output` is what it printed (its last lines).
    PreTrafficPassed {
        output: String,
    },
    /// Canary step `index` (from 0) began at `weight` percent.
    StepEntered {
        index: usize,
        weight: u32,
    },
    /// Canary step `index` ended and the deploy went on: to the next step at
    /// `next_weight`, or (none) to the promotion.
    StepDone {
        index: usize,
        verdict: StepVerdict,
        next_weight: Option<u32>,
    },
    /// Canary step `index` was inconclusive: it is held `by_ms` longer.
    StepExtended {
        index: usize,
        by_ms: u64,
    },
    /// The judge failed the canary: the deploy aborts.
    JudgeFailed {
        reason: String,
    },
    /// The deploy aborts: no traffic to its release, whose instances stop.
    Aborting {
        reason: String,
    },
    /// The abort is complete; `serving` is the release that keeps serving.
    Aborted {
        serving: Option<String>,
    },
    /// Rolling: `count` of the `of` old instances are retired.
    OldRetired {
        count: u32,
        of: u32,
    },
    /// Rolling: `count` of the `of` new instances are wanted.
    NewWanted {
        count: u32,
        of: u32,
    },
    /// The deploy's release is the current release.
    Promoted {
        release: String,
    },
    /// Rolled back by a route swap to the still-warm `to`.
    RolledBack {
        from: String,
        to: String,
    },
    /// A retiring release was taken out of traffic and its instances stop;
    /// `cut`: its sessions ran out of time, their connections close at once.
    TakenOut {
        release: String,
        cut: bool,
    },
    /// A retiring release's instances are all gone.
    Retired {
        release: String,
    },
}

impl Transition {
    /// The judge's verdict moved the deploy: a step passed, was held longer, or the canary failed.
    pub fn judged(&self) -> bool {
        matches!(
            self,
            Transition::StepDone { .. } | Transition::StepExtended { .. } | Transition::JudgeFailed { .. }
        )
    }
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transition::Started {
                release,
                strategy,
                from: Some(from),
            } => write!(f, "{} deploy of {release} over {from}", strategy.as_str()),
            Transition::Started {
                release, from: None, ..
            } => write!(f, "first deploy of {release}"),
            Transition::Paused => f.write_str("paused"),
            Transition::Resumed { paused_ms } => write!(f, "resumed after {}s paused", paused_ms / 1000),
            Transition::Held { reason } => write!(f, "held: {reason}"),
            Transition::Unheld { held_ms } => write!(f, "going on after {}s held", held_ms / 1000),
            Transition::PromotedByHand => f.write_str("promoted by hand"),
            Transition::SwitchForced => f.write_str("switch forced by hand"),
            Transition::Ready { release, count } => write!(f, "{count} instances of {release} ready"),
            Transition::PreTrafficCheck { release } => {
                write!(f, "pre-traffic check against {release}'s instances (no traffic yet)")
            }
            Transition::PreTrafficPassed { output } if output.is_empty() => f.write_str("pre-traffic check passed"),
            Transition::PreTrafficPassed { output } => write!(f, "pre-traffic check passed: {output}"),
            Transition::StepEntered { index, weight } => write!(f, "step {}: weight {weight}%", index + 1),
            Transition::StepDone {
                index,
                verdict,
                next_weight,
            } => {
                let why = match verdict {
                    StepVerdict::Passed => "passed",
                    StepVerdict::Inconclusive => "still inconclusive (going on as configured)",
                };
                match next_weight {
                    Some(w) => write!(f, "step {} {why}; step {}: weight {w}%", index + 1, index + 2),
                    None => write!(f, "step {} {why}; promoting", index + 1),
                }
            }
            Transition::StepExtended { index, by_ms } => {
                write!(f, "step {} inconclusive; held {}s longer", index + 1, by_ms / 1000)
            }
            Transition::JudgeFailed { reason } => write!(f, "verdict fail: {reason}"),
            Transition::Aborting { reason } => write!(f, "abort: {reason}"),
            Transition::Aborted { serving } => {
                write!(f, "aborted; {} keeps serving", serving.as_deref().unwrap_or("nothing"))
            }
            Transition::OldRetired { count, of } => write!(f, "{count} of {of} old instances retired"),
            Transition::NewWanted { count, of } => write!(f, "{count} of {of} new instances wanted"),
            Transition::Promoted { release } => write!(f, "{release} is now the current release"),
            Transition::RolledBack { from, to } => write!(f, "rolled back from {from} to {to} (route swap)"),
            Transition::TakenOut { release, cut: false } => write!(f, "{release} taken out of traffic"),
            Transition::TakenOut { release, cut: true } => {
                write!(f, "{release} taken out of traffic; its sessions ran out of time")
            }
            Transition::Retired { release } => write!(f, "{release} retired"),
        }
    }
}
