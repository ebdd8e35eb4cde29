//! `slipway.toml` (the service definition) and the control plane API's messages.

use serde::{Deserialize, Serialize};

use crate::agent::{DrainSettings, InstanceTemplate, LogSettings, Readiness, RestartSettings};
use crate::duration::HumanDuration;
use crate::judge::{JudgeConfig, Verdict};
use crate::router_config::{AffinityConfig, ListenerConfig};
use crate::routes::{CohortRule, HealthCheck};

/// The service definition. Relative paths are relative to the file's folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    /// Format version of this file; only 1 exists.
    #[serde(default = "one")]
    pub version: u32,
    pub service: ServiceSection,
    /// Public listeners of the router.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub instance: InstanceSection,
    #[serde(default)]
    pub routing: RoutingSection,
    #[serde(default)]
    pub deploy: DeploySection,
    #[serde(default)]
    pub logs: LogSettings,
    /// The service's data across deploys (SQL migrations, record write gates).
    #[serde(default)]
    pub data: DataSection,
}

/// `[data]`: what changes with the service's data around a deploy. Expand
/// (and backfill) migrations run before a new release starts; contract
/// steps run once no live release declares it uses what they drop; the
/// record write gates follow the `[records]` versions of the live releases.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// The app's SQL database: `sqlite:PATH` or `postgres://...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Folder of migration files (`*.toml`), for `database`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrations: Option<std::path::PathBuf>,
    /// The records database whose write gates the control plane publishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<String>,
    /// How long a migration statement waits for its lock before it retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<HumanDuration>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    /// The service's name: letters, digits, `.`, `_` and `-`; shown in status and logs.
    pub name: String,
    /// Where slipway keeps its state (releases, logs, journal, tokens).
    #[serde(default = "default_state_dir")]
    pub state_dir: std::path::PathBuf,
    /// The control plane's admin API: loopback `ip:port` or `unix:/path`.
    #[serde(default = "default_admin")]
    pub admin: String,
    /// The web dashboard's listener: `ip:port` (loopback by default; another address serves it to the network,
    /// behind its login), or `off`. `slipway dashboard` prints a one-time login link to it.
    #[serde(default = "default_dashboard")]
    pub dashboard: String,
}

fn default_state_dir() -> std::path::PathBuf {
    ".slipway".into()
}
fn default_admin() -> String {
    "127.0.0.1:0".into()
}
fn default_dashboard() -> String {
    "127.0.0.1:0".into()
}

/// How instances start and stop (the agent's template) and how many run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceSection {
    /// Instances per release.
    #[serde(default = "default_count")]
    pub count: u32,
    /// The program each instance runs, from the release folder (`bin/server`) or an absolute path. It is told its
    /// port in `PORT`, its release in `SLIPWAY_RELEASE` and its id in `SLIPWAY_INSTANCE`.
    #[serde(default)]
    pub command: String,
    /// Arguments to `command`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables for every instance, added to what the agent was started with (and overriding
    /// `env_file`). A value may name variables of the environment `slipway up` / `slipway deploy` runs in:
    /// `${NAME}` is replaced by its value (an unset one is an error), `$$` is a `$`. A change ships with the
    /// next deploy; the values are never shown or logged.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// A dotenv file (`NAME=value` lines, `#` comments, `export ` allowed, values optionally in quotes;
    /// `${NAME}` as in `env`, not inside single quotes) whose variables every instance gets; relative to
    /// slipway.toml. Like ssh with its keys, slipway refuses it if group or others may read it (`chmod 600`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_file: Option<std::path::PathBuf>,
    /// Hand the instance its listening socket as fd 3 (systemd style, `LISTEN_FDS=1`) instead of a port to bind.
    #[serde(default)]
    pub listen_fds: bool,
    #[serde(default)]
    pub readiness: Readiness,
    #[serde(default)]
    pub drain: DrainSettings,
    #[serde(default)]
    pub restart: RestartSettings,
}

fn default_count() -> u32 {
    2
}

impl Default for InstanceSection {
    fn default() -> Self {
        InstanceSection {
            count: default_count(),
            command: String::new(),
            args: Vec::new(),
            env: Default::default(),
            env_file: None,
            listen_fds: false,
            readiness: Readiness::default(),
            drain: DrainSettings::default(),
            restart: RestartSettings::default(),
        }
    }
}

impl InstanceSection {
    pub fn template(&self) -> InstanceTemplate {
        InstanceTemplate {
            command: self.command.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            bind: "127.0.0.1".into(),
            listen_fds: self.listen_fds,
            readiness: self.readiness.clone(),
            drain: self.drain.clone(),
            restart: self.restart.clone(),
        }
    }
}

/// Routing settings that apply live (a change to these alone needs no restart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutingSection {
    #[serde(default)]
    pub affinity: AffinityConfig,
    /// Request header that carries the client's version, for releases with `client_versions` gates.
    #[serde(default = "default_version_header")]
    pub client_version_header: String,
    #[serde(default)]
    pub health: HealthCheck,
    #[serde(default, rename = "cohort")]
    pub cohorts: Vec<CohortRule>,
}

fn default_version_header() -> String {
    "x-client-version".into()
}

impl Default for RoutingSection {
    fn default() -> Self {
        RoutingSection {
            affinity: AffinityConfig::default(),
            client_version_header: default_version_header(),
            health: HealthCheck::default(),
            cohorts: Vec::new(),
        }
    }
}

/// A deploy strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// A share of new sessions on the new release, step by step, judged against the baseline.
    #[default]
    Canary,
    /// Instances replaced a few at a time.
    Rolling,
    /// A full new set, then every new session switched at once (`blue-green` is accepted too).
    #[serde(alias = "blue-green")]
    BlueGreen,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Canary => "canary",
            Strategy::Rolling => "rolling",
            Strategy::BlueGreen => "blue_green",
        }
    }
}

impl schemars::JsonSchema for Strategy {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Strategy".into()
    }

    /// Written by hand: the derived schema would not know the `blue-green` alias.
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A deploy strategy.",
            "oneOf": [
                { "const": "canary", "type": "string",
                  "description": "A share of new sessions on the new release, step by step, judged against the baseline." },
                { "const": "rolling", "type": "string", "description": "Instances replaced a few at a time." },
                { "enum": ["blue_green", "blue-green"], "type": "string",
                  "description": "A full new set, then every new session switched at once." }
            ]
        })
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.replace('-', "_").as_str() {
            "canary" => Ok(Strategy::Canary),
            "rolling" => Ok(Strategy::Rolling),
            "blue_green" | "bluegreen" => Ok(Strategy::BlueGreen),
            _ => Err(format!("unknown strategy {s:?} (canary, rolling, blue-green)")),
        }
    }
}

/// One canary step: a weight held for a while, judged all along. It passes
/// when its hold ends with no metric failed and enough traffic seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryStep {
    /// Percent of new sessions (0 to 100).
    pub weight: u32,
    /// How long the step lasts before it can pass (paused time does not count).
    pub hold: HumanDuration,
}

/// What to do when a step still had too little traffic to judge after its
/// extensions. (A canary that got no request at all while the baseline was
/// served fails instead: it is never promoted, whatever this says.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnInconclusive {
    #[default]
    Abort,
    Continue,
}

/// `[deploy.canary]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanarySettings {
    /// Default: 10% for 1 minute, 25% for 2 minutes, 50% for 2 minutes (5
    /// minutes in all; a healthy release promotes in that time at 20
    /// requests/s and above).
    #[serde(default = "default_steps")]
    pub steps: Vec<CanaryStep>,
    /// Start a fresh baseline of the canary's size to compare against.
    #[serde(default)]
    pub fresh_baseline: bool,
    /// Canary instances (default: the service's instance count).
    #[serde(default)]
    pub instances: Option<u32>,
    /// A step with too little traffic at the end of its hold is held this much longer...
    #[serde(default = "default_extension")]
    pub extension: HumanDuration,
    /// ...at most this many times, then `on_inconclusive` applies.
    #[serde(default = "default_max_extensions")]
    pub max_extensions: u32,
    /// What to do when a step still had too little traffic to judge after its extensions: `abort` (the default)
    /// or `continue`.
    #[serde(default)]
    pub on_inconclusive: OnInconclusive,
    /// `[deploy.canary.analysis]`: the judge's metrics, tolerances, warm-up
    /// and error budget (see `wire::judge::JudgeConfig`).
    #[serde(default)]
    pub analysis: JudgeConfig,
}

fn default_steps() -> Vec<CanaryStep> {
    vec![
        CanaryStep {
            weight: 10,
            hold: HumanDuration::from_secs(60),
        },
        CanaryStep {
            weight: 25,
            hold: HumanDuration::from_secs(120),
        },
        CanaryStep {
            weight: 50,
            hold: HumanDuration::from_secs(120),
        },
    ]
}
fn default_extension() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn default_max_extensions() -> u32 {
    3
}

impl Default for CanarySettings {
    fn default() -> Self {
        CanarySettings {
            steps: default_steps(),
            fresh_baseline: false,
            instances: None,
            extension: default_extension(),
            max_extensions: default_max_extensions(),
            on_inconclusive: OnInconclusive::Abort,
            analysis: JudgeConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollingSettings {
    /// New instances started beyond the target count at a time.
    #[serde(default = "one")]
    pub max_surge: u32,
    /// Old instances that may be out of service at a time beyond the surge.
    #[serde(default)]
    pub max_unavailable: u32,
    /// A new instance must stay ready this long before an old one drains.
    #[serde(default = "default_bake")]
    pub bake: HumanDuration,
}

fn default_bake() -> HumanDuration {
    HumanDuration::from_secs(5)
}

impl Default for RollingSettings {
    fn default() -> Self {
        RollingSettings {
            max_surge: 1,
            max_unavailable: 0,
            bake: default_bake(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlueGreenSettings {
    /// The new set must stay ready and healthy this long before the switch.
    #[serde(default = "default_check")]
    pub check: HumanDuration,
    /// The old set stays warm this long after the switch, for an instant rollback.
    #[serde(default = "default_rollback_window")]
    pub rollback_window: HumanDuration,
}

fn default_check() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_rollback_window() -> HumanDuration {
    HumanDuration::from_secs(600)
}

impl Default for BlueGreenSettings {
    fn default() -> Self {
        BlueGreenSettings {
            check: default_check(),
            rollback_window: default_rollback_window(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploySection {
    /// The strategy `slipway deploy` uses when not told: `canary`, `rolling` or `blue_green` (`blue-green` is
    /// accepted too).
    #[serde(default)]
    pub strategy: Strategy,
    /// After promotion the old release keeps its sessions until none has
    /// been seen for `session_idle`, or until `drain_deadline`.
    #[serde(default = "default_drain_deadline")]
    pub drain_deadline: HumanDuration,
    /// A retiring release whose sessions have been quiet this long is stopped before its `drain_deadline`.
    #[serde(default = "default_session_idle")]
    pub session_idle: HumanDuration,
    /// New instances must be ready within this, or the deploy aborts.
    #[serde(default = "default_start_timeout")]
    pub start_timeout: HumanDuration,
    #[serde(default)]
    pub canary: CanarySettings,
    #[serde(default)]
    pub rolling: RollingSettings,
    #[serde(default)]
    pub blue_green: BlueGreenSettings,
    #[serde(default)]
    pub hooks: DeployHooks,
    /// A check of the new release's own instances before they get any traffic (Flagger's acceptance test).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_traffic: Option<PreTrafficCheck>,
    /// Where deploy events are POSTed as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
}

/// `[deploy.webhook]`: every deploy event (`started`, `step`, `paused`, `resumed`, `promoted`, `aborted`,
/// `rolled_back`) is POSTed to `url` as one JSON object (`event`, `service`, `deploy`, `release`, `from`,
/// `strategy`, `phase`, `step`, `weight`, `message`, `reason`, `time`), in order, from a queue of its own: a
/// webhook that is slow, down or failing never holds up or fails a deploy (an event that still fails after its
/// `attempts` is dropped with a warning in the control plane's log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `http://host[:port]/path` (plain HTTP, no user or password in it; a local relay forwards to https).
    pub url: String,
    /// A file (relative to slipway.toml's folder) whose content is sent in `secret_header` with every POST;
    /// refused unless only its owner may read it. The secret never appears in a log, `status` or the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<std::path::PathBuf>,
    /// The header that carries the secret.
    #[serde(default = "default_secret_header")]
    pub secret_header: String,
    /// How long one POST may take to be answered.
    #[serde(default = "default_webhook_timeout")]
    pub timeout: HumanDuration,
    /// Tries per event, the first included; 1 s, 2 s, 4 s... apart. A 2xx answer is a delivery.
    #[serde(default = "default_webhook_attempts")]
    pub attempts: u32,
}

fn default_secret_header() -> String {
    "X-Slipway-Secret".into()
}
fn default_webhook_timeout() -> HumanDuration {
    HumanDuration::from_secs(5)
}
fn default_webhook_attempts() -> u32 {
    3
}

/// `[deploy.pre_traffic]`: once a canary or blue-green deploy's new instances are ready, and while they are routed
/// at weight 0 (no session reaches them), the control plane checks them; the deploy goes on only when the check
/// passed, and a failed one aborts it with the check's output. Rolling deploys and rollbacks do not run it. At
/// least one of `path` and `command` is given; with both, the HTTP check runs first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreTrafficCheck {
    /// GET this path (`/smoke`) on every new instance, straight at its own address; an answer other than 2xx, or
    /// none, fails the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A program and its arguments (`["sh", "-c", "..."]`) run in slipway.toml's folder with `SLIPWAY_DEPLOY`,
    /// `SLIPWAY_RELEASE`, `SLIPWAY_FROM` and `SLIPWAY_INSTANCES` (the new instances' `host:port` addresses,
    /// separated by spaces) in its environment; an exit status other than 0 fails the check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// The whole check (every HTTP request and the command) must end within this, or it failed.
    #[serde(default = "default_pre_traffic_timeout")]
    pub timeout: HumanDuration,
}

fn default_pre_traffic_timeout() -> HumanDuration {
    HumanDuration::from_secs(60)
}

/// Commands the control plane runs around each deploy, each a program and its arguments (`["sh", "-c", "..."]`),
/// in slipway.toml's folder, with `SLIPWAY_DEPLOY`, `SLIPWAY_RELEASE`, `SLIPWAY_FROM` and `SLIPWAY_OUTCOME`
/// (`starting`, `done`, `aborted`; `SLIPWAY_REASON` says why) in their environment, for at most 60 s each.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployHooks {
    /// Run before a deploy starts; if it fails (or takes over 60 s) the deploy is refused with its output and
    /// nothing starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_deploy: Vec<String>,
    /// Run once a deploy's release is the current release.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_deploy: Vec<String>,
    /// Run once a deploy was aborted (by hand, by the judge, or by a failed start).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_abort: Vec<String>,
}

fn default_drain_deadline() -> HumanDuration {
    HumanDuration::from_secs(300)
}
fn default_session_idle() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_start_timeout() -> HumanDuration {
    HumanDuration::from_secs(120)
}

impl Default for DeploySection {
    fn default() -> Self {
        DeploySection {
            strategy: Strategy::Canary,
            drain_deadline: default_drain_deadline(),
            session_idle: default_session_idle(),
            start_timeout: default_start_timeout(),
            canary: CanarySettings::default(),
            rolling: RollingSettings::default(),
            blue_green: BlueGreenSettings::default(),
            hooks: DeployHooks::default(),
            pre_traffic: None,
            webhook: None,
        }
    }
}

/// `POST /v1/deploys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRequest {
    pub release: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// The instance template the release starts with, as `slipway deploy` resolved it in its environment
    /// (`env_file`, `${NAME}`). None: the control plane reads slipway.toml and resolves it in its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<crate::agent::InstanceTemplate>,
}

/// A release's instances as a deploy sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub release: String,
    pub group: String,
    pub wanted: u32,
    pub ready: u32,
    pub weight: u32,
    pub state: GroupRoute,
}

/// How the router treats a group's release: its route state, or no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupRoute {
    Active,
    Draining,
    Down,
    /// Not in the route table.
    Unrouted,
}

impl GroupRoute {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupRoute::Active => "active",
            GroupRoute::Draining => "draining",
            GroupRoute::Down => "down",
            GroupRoute::Unrouted => "unrouted",
        }
    }
}

impl From<crate::RouteState> for GroupRoute {
    fn from(s: crate::RouteState) -> GroupRoute {
        match s {
            crate::RouteState::Active => GroupRoute::Active,
            crate::RouteState::Draining => GroupRoute::Draining,
            crate::RouteState::Down => GroupRoute::Down,
        }
    }
}

impl std::fmt::Display for GroupRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a deploy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployPhase {
    /// New instances are starting.
    Starting,
    /// The new instances are ready, at weight 0, and the pre-traffic check runs against them.
    PreTraffic,
    /// A canary step holds its weight until it is judged.
    Step,
    /// The canary passed: scaling up before taking all traffic.
    Promoting,
    /// Blue-green: the new set must stay ready before the switch.
    Checking,
    /// Rolling: old instances are replaced a few at a time.
    Rolling,
    Aborting,
    Done,
    Aborted,
}

impl DeployPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployPhase::Starting => "starting",
            DeployPhase::PreTraffic => "pre_traffic",
            DeployPhase::Step => "step",
            DeployPhase::Promoting => "promoting",
            DeployPhase::Checking => "checking",
            DeployPhase::Rolling => "rolling",
            DeployPhase::Aborting => "aborting",
            DeployPhase::Done => "done",
            DeployPhase::Aborted => "aborted",
        }
    }
}

impl std::fmt::Display for DeployPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One deploy, as the API and the history show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployInfo {
    pub id: i64,
    pub release: String,
    pub from: Option<String>,
    pub strategy: Strategy,
    pub phase: DeployPhase,
    pub paused: bool,
    /// Words for the current phase ("step 2 of 3: weight 10%, 40s of 2m").
    pub detail: String,
    /// 0..=1 over the whole deploy.
    pub progress: f64,
    pub step: Option<usize>,
    pub steps: usize,
    pub canary_weight: u32,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    /// Why it ended, for aborted deploys.
    pub outcome: Option<String>,
    pub groups: Vec<GroupStatus>,
    pub last_verdict: Option<Verdict>,
    /// Verdicts that moved the deploy (step passed, extended, failed).
    pub verdicts: Vec<Verdict>,
    pub events: Vec<String>,
    /// What changed in the instance template since the release it replaces ("env API_KEY changed"; env values
    /// are never shown).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}

impl DeployInfo {
    /// Finished one way or another.
    pub fn finished(&self) -> bool {
        self.finished_ms.is_some()
    }

    pub fn aborted(&self) -> bool {
        self.phase == DeployPhase::Aborted
    }
}

/// Why the control plane holds the deploy: it cannot see or set the world, so nothing moves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldReason {
    /// The agent does not answer: instances cannot be seen, started or stopped.
    AgentUnreachable,
    /// The router does not answer: routes cannot be applied, traffic and metrics cannot be read.
    RouterUnreachable,
    /// The router has not confirmed the route table the deploy's state needs.
    RoutesUnconfirmed,
}

impl HoldReason {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::AgentUnreachable => "agent unreachable",
            HoldReason::RouterUnreachable => "router unreachable",
            HoldReason::RoutesUnconfirmed => "routes not confirmed by the router",
        }
    }
}

impl std::fmt::Display for HoldReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The control plane's hold, as `status` shows it: nothing is stepped, promoted or retired meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub reason: HoldReason,
    /// Since when (ms since the Unix epoch).
    pub since_ms: u64,
    /// In words: "router unreachable since 12:01:03 UTC, deploy held".
    pub message: String,
}

impl Held {
    pub fn new(reason: HoldReason, since_ms: u64) -> Held {
        let s = since_ms / 1000 % 86_400;
        let message = format!(
            "{reason} since {:02}:{:02}:{:02} UTC, deploy held",
            s / 3600,
            s / 60 % 60,
            s % 60
        );
        Held {
            reason,
            since_ms,
            message,
        }
    }
}

/// A process `slipway up`'s supervision restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SupervisedPart {
    #[default]
    Agent,
    Router,
}

impl SupervisedPart {
    pub fn as_str(self) -> &'static str {
        match self {
            SupervisedPart::Agent => "agent",
            SupervisedPart::Router => "router",
        }
    }
}

impl std::fmt::Display for SupervisedPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How often `slipway up`'s supervision restarted one part (the agent or the router).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRestarts {
    pub part: SupervisedPart,
    pub restarts: u32,
    /// When it was last started again (ms since the Unix epoch).
    pub last_ms: u64,
    /// The pid it runs as since.
    pub pid: Option<u32>,
    /// Why the last start failed, if it did (it is tried again, with backoff).
    pub error: Option<String>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub service: String,
    pub current: Option<String>,
    pub previous: Option<String>,
    pub deploy: Option<DeployInfo>,
    pub router: Option<crate::api::RouterStatus>,
    pub instances: Vec<crate::agent::InstanceInfo>,
    pub routes: Option<crate::routes::RouteTable>,
    /// What the control plane last did to the data (migrations, write gates), if `[data]` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Set while the control plane holds: it cannot reach the agent or the router, or its routes are unconfirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
    /// Parts the control plane restarted (in `slipway up` mode, which supervises the agent and the router).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restarts: Vec<PartRestarts>,
}

/// `GET /v1/deploys`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployList {
    pub deploys: Vec<DeployInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_phases_and_group_routes_keep_the_strings_the_api_always_had() {
        use DeployPhase::*;
        for p in [Starting, Step, Promoting, Checking, Rolling, Aborting, Done, Aborted] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
            assert_eq!(serde_json::from_value::<DeployPhase>(p.as_str().into()).unwrap(), p);
        }
        for g in [
            GroupRoute::Active,
            GroupRoute::Draining,
            GroupRoute::Down,
            GroupRoute::Unrouted,
        ] {
            assert_eq!(serde_json::to_value(g).unwrap(), g.as_str());
        }
        for s in [
            crate::RouteState::Active,
            crate::RouteState::Draining,
            crate::RouteState::Down,
        ] {
            assert_eq!(GroupRoute::from(s).as_str(), s.as_str());
        }
        // A history entry saved before these were enums reads the same.
        let old = r#"{"release":"v2","group":"v2","wanted":1,"ready":1,"weight":10,"state":"unrouted"}"#;
        let g: GroupStatus = serde_json::from_str(old).unwrap();
        assert_eq!(g.state, GroupRoute::Unrouted);
        assert_eq!(serde_json::to_string(&g).unwrap(), old);
        assert!(serde_json::from_str::<DeployPhase>("\"draining\"").is_err());
    }
}
