//! The journal's records: the events that drive the machine, and the plan and observations they carry.

use serde::{Deserialize, Serialize};
use wire::judge::Outcome;
use wire::service::{HoldReason, Strategy};

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
    /// Canary and blue-green: once the new instances are ready, a pre-traffic check runs against them (at weight
    /// 0) and the deploy goes on only when it passed (`Event::PreTraffic`). False in journals from before it.
    #[serde(default)]
    pub pre_traffic: bool,
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
        /// The instance template the release starts with (its env values included), recorded so a rollback to
        /// it starts it the same way; None in journals before format 3 (the agent's template is used). The
        /// machine does not read it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        template: Option<Box<wire::agent::InstanceTemplate>>,
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
    /// The control plane cannot see or set the world (the agent or router is unreachable, or the router did not
    /// confirm the routes): nothing moves on until `Unhold`, and the time held does not count.
    Hold {
        reason: HoldReason,
    },
    /// The world is seen and its routes confirmed again.
    Unhold,
    /// How the pre-traffic check of the running deploy ended, with its output (the abort's reason when it failed).
    PreTraffic {
        passed: bool,
        output: String,
    },
}
