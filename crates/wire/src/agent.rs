//! The agent's config file, a release's own `slipway.release.toml`, and the agent API's messages.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::router_config::AdminConfig;

/// `slipway agent --config FILE`. Relative paths are relative to the file's folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentConfigFile {
    /// Format version of this file; only 1 exists.
    #[serde(default = "one")]
    pub version: u32,
    /// Holds `releases/`, `current`, `previous`, `logs/` and the agent's state.
    pub root: PathBuf,
    /// The agent API (loopback `ip:port` or `unix:/path`) and its token file
    /// (default `agent.token` under the root).
    pub api: AdminConfig,
    #[serde(default)]
    pub instance: InstanceTemplate,
    #[serde(default)]
    pub logs: LogSettings,
}

fn one() -> u32 {
    1
}

/// How instances are started, probed, drained and restarted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceTemplate {
    /// Program to run; relative paths are taken from the release folder
    /// first, then `PATH`. A release's `slipway.release.toml` may override it.
    #[serde(default)]
    pub command: String,
    /// Arguments to `command`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables for every instance.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Address instances listen on (their port is given in `PORT`).
    #[serde(default = "default_bind")]
    pub bind: String,
    /// Hand each instance its listening socket as fd 3 (systemd-style
    /// `LISTEN_FDS=1`), bound before it starts.
    #[serde(default)]
    pub listen_fds: bool,
    #[serde(default)]
    pub readiness: Readiness,
    #[serde(default)]
    pub drain: DrainSettings,
    #[serde(default)]
    pub restart: RestartSettings,
}

fn default_bind() -> String {
    "127.0.0.1".to_string()
}

impl Default for InstanceTemplate {
    fn default() -> Self {
        InstanceTemplate {
            command: String::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            bind: default_bind(),
            listen_fds: false,
            readiness: Readiness::default(),
            drain: DrainSettings::default(),
            restart: RestartSettings::default(),
        }
    }
}

/// How an instance shows it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// GET `path`, 2xx or 3xx.
    #[default]
    Http,
    /// A TCP connect to its port.
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Readiness {
    /// How readiness is probed: `http` (GET `path`, 2xx is ready) or `tcp` (a connect).
    #[serde(default)]
    pub kind: ProbeKind,
    /// The HTTP path probed for readiness.
    #[serde(default = "default_ready_path")]
    pub path: String,
    /// An instance not ready by then is a failed start.
    #[serde(default = "default_start_deadline")]
    pub start_deadline: HumanDuration,
}

fn default_ready_path() -> String {
    "/healthz".to_string()
}
fn default_start_deadline() -> HumanDuration {
    HumanDuration::from_secs(30)
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            kind: ProbeKind::Http,
            path: default_ready_path(),
            start_deadline: default_start_deadline(),
        }
    }
}

/// How an instance is stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainSettings {
    /// Requested (with `method`, POST by default) on the instance when it starts draining (a game server
    /// announces the restart and saves state). None: no HTTP hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The drain hook's HTTP method: `POST` (the default), `PUT`, `PATCH`, `GET` or `DELETE`; sent without a body.
    #[serde(default, skip_serializing_if = "HookMethod::is_post")]
    pub method: HookMethod,
    /// Signal sent when draining starts: `SIGTERM` (default), `SIGINT`,
    /// `SIGQUIT`, `SIGHUP`, `SIGUSR1`, `SIGUSR2`, or `none`.
    #[serde(default = "default_signal")]
    pub signal: String,
    /// After this the whole process group gets SIGKILL.
    #[serde(default = "default_stop_deadline")]
    pub stop_deadline: HumanDuration,
}

/// The HTTP method of a hook the agent calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HookMethod {
    #[default]
    Post,
    Put,
    Patch,
    Get,
    Delete,
}

impl HookMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HookMethod::Post => "POST",
            HookMethod::Put => "PUT",
            HookMethod::Patch => "PATCH",
            HookMethod::Get => "GET",
            HookMethod::Delete => "DELETE",
        }
    }

    fn is_post(&self) -> bool {
        *self == HookMethod::Post
    }
}

fn default_signal() -> String {
    "SIGTERM".to_string()
}
fn default_stop_deadline() -> HumanDuration {
    HumanDuration::from_secs(30)
}

impl Default for DrainSettings {
    fn default() -> Self {
        DrainSettings {
            path: None,
            method: HookMethod::Post,
            signal: default_signal(),
            stop_deadline: default_stop_deadline(),
        }
    }
}

/// What happens after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartSettings {
    /// Wait before the first restart after a crash; doubles with each crash in a row.
    #[serde(default = "default_backoff")]
    pub backoff: HumanDuration,
    /// The longest wait between restarts.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: HumanDuration,
    /// This many crashes within `crash_loop_window` stop the restarts.
    #[serde(default = "default_crash_loop_count")]
    pub crash_loop_count: u32,
    /// The window `crash_loop_count` counts crashes in.
    #[serde(default = "default_crash_loop_window")]
    pub crash_loop_window: HumanDuration,
}

fn default_backoff() -> HumanDuration {
    HumanDuration::from_millis(500)
}
fn default_max_backoff() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_crash_loop_count() -> u32 {
    5
}
fn default_crash_loop_window() -> HumanDuration {
    HumanDuration::from_secs(60)
}

impl Default for RestartSettings {
    fn default() -> Self {
        RestartSettings {
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
            crash_loop_count: default_crash_loop_count(),
            crash_loop_window: default_crash_loop_window(),
        }
    }
}

/// Size-rotated instance logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Rotate an instance's log when it passes this many bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept per instance.
    #[serde(default = "default_keep")]
    pub keep: u32,
}

fn default_max_bytes() -> u64 {
    10 << 20
}
fn default_keep() -> u32 {
    3
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            max_bytes: default_max_bytes(),
            keep: default_keep(),
        }
    }
}

/// `slipway.release.toml` at the top of a release folder (optional).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<StartOverride>,
    /// Client versions this release serves (a semver range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_versions: Option<String>,
    /// SQL tables and columns this release reads or writes (`table` or
    /// `table.column`): a contract migration step never drops them while
    /// the release is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseUses>,
    /// Record kinds and the newest version this release's code knows
    /// (`player = 3`): the write gate is the lowest over live releases.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub records: BTreeMap<String, u32>,
}

/// `[database]` of a release manifest.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatabaseUses {
    /// `table` or `table.column` names this release reads or writes.
    #[serde(default)]
    pub uses: Vec<String>,
}

/// How this release's instances start, instead of the agent's template.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartOverride {
    /// The program to run instead of the template's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Arguments instead of the template's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Added to (and overriding) the template's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// State of an instance as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Starting,
    Ready,
    Draining,
    Stopped,
    /// Crashed, waiting to restart.
    Crashed,
    /// Crashed too often; not restarted.
    CrashLoop,
    /// Not ready before its start deadline; not restarted.
    Failed,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Ready => "ready",
            InstanceState::Draining => "draining",
            InstanceState::Stopped => "stopped",
            InstanceState::Crashed => "crashed",
            InstanceState::CrashLoop => "crash_loop",
            InstanceState::Failed => "failed",
        }
    }
}

/// One instance in the agent's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    pub release: String,
    /// Label set at start (the control plane's instance group); defaults to the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `ip:port` it listens on.
    pub addr: String,
    pub port: u16,
    pub pid: Option<u32>,
    pub state: InstanceState,
    /// Ready and its last probe passed.
    pub healthy: bool,
    pub restarts: u32,
    /// Unix milliseconds of the last (re)start.
    pub started_at_ms: u64,
    /// Why the last state change happened (an exit status, "not ready within 30s", ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Last lines of output, for failed starts and crash loops.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_output: Vec<String>,
    /// Client versions its release declares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_versions: Option<String>,
    /// Its drain hook has been called (it was told it is leaving).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain_notified: bool,
}

/// `POST /v1/instances`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRequest {
    pub release: String,
    #[serde(default = "one")]
    pub count: u32,
    /// Label for the new instances (see `InstanceInfo::group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// How these instances start, probe, drain and restart, for their whole life (restarts included); None:
    /// the agent's own template. The control plane sends the one recorded with the release's deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<InstanceTemplate>,
}

impl InstanceInfo {
    /// The instance's group: its label, or its release.
    pub fn group_name(&self) -> &str {
        self.group.as_deref().unwrap_or(&self.release)
    }
}

/// `POST /v1/instances/stop`: by ids, or every instance of a release.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StopRequest {
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// Overrides the configured stop deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<HumanDuration>,
}

/// `POST /v1/instances/notify-drain`: call the drain hook of these
/// instances now, while they keep running (the router has stopped sending
/// them new sessions; their open ones go on until a deadline).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyDrainRequest {
    pub ids: Vec<String>,
}

/// `POST /v1/releases/current`: point the `current` link at a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetCurrentRequest {
    pub release: String,
}

/// `GET /v1/instances` and answers to start/stop.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InstanceList {
    pub instances: Vec<InstanceInfo>,
}

/// One release on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    pub id: String,
    pub created_ms: u64,
    pub bytes: u64,
    pub current: bool,
    pub previous: bool,
    pub running_instances: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_versions: Option<String>,
}

/// `GET /v1/releases`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReleaseList {
    pub releases: Vec<ReleaseInfo>,
}
