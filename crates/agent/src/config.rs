//! The agent's validated config, built from the raw file with every problem listed at once.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plumbing::api::Listen;
use wire::agent::{AgentConfigFile, InstanceTemplate, LogSettings};
use wire::{Problem, Problems};

use crate::machine::Policy;

/// An agent config that passed validation.
#[derive(Debug, Clone)]
pub struct Config {
    pub root: PathBuf,
    pub api: Listen,
    pub token_file: PathBuf,
    /// The template instances started without one of their own get.
    pub spec: Arc<Spec>,
    pub bind: IpAddr,
    pub logs: LogSettings,
    /// The program that stamps instance output (`slipway`, whose hidden `log-stamp` command runs
    /// [`crate::stamp_output`]); `slipway agent` names itself. Without one, output goes to the log unstamped.
    pub stamper: Option<PathBuf>,
}

pub use plumbing::config::ConfigError;

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        plumbing::config::load(path, "agent config", |raw: AgentConfigFile, abs| {
            Config::from_raw(&raw, abs.parent().unwrap_or(Path::new(".")))
        })
    }

    pub fn from_raw(raw: &AgentConfigFile, base: &Path) -> Result<Config, Problems> {
        let mut out = Vec::new();
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        if raw.version != 1 {
            out.push(Problem::new(
                "version",
                format!("unknown config version {}; this agent reads version 1", raw.version),
            ));
        }
        let root = resolve(&raw.root);
        let api = Listen::parse(&raw.api.listen, base, "api.listen")
            .map_err(|p| out.push(p))
            .ok();
        let token_file = raw
            .api
            .token_file
            .as_deref()
            .map(resolve)
            .unwrap_or_else(|| root.join("agent.token"));
        let t = &raw.instance;
        let bind = t.bind.parse::<IpAddr>().map_err(|_| {
            out.push(Problem::new(
                "instance.bind",
                format!("{:?} is not an IP address", t.bind),
            ));
        });
        let spec = Spec::new(t).map_err(|p| out.extend(p)).ok();
        if raw.logs.max_bytes < 1024 {
            out.push(Problem::new("logs.max_bytes", "must be at least 1024"));
        }
        Problems::check(out)?;
        Ok(Config {
            root,
            api: api.unwrap_or(Listen::Tcp(([127, 0, 0, 1], 0).into())),
            token_file,
            spec: Arc::new(spec.expect("no problems, so the template is valid")),
            bind: bind.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            logs: raw.logs.clone(),
            stamper: None,
        })
    }
}

/// What instances run with for their whole life (restarts included): a template and what follows from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub template: InstanceTemplate,
    pub policy: Policy,
    pub stop_signal: Option<nix::sys::signal::Signal>,
}

impl Spec {
    /// A template checked whole: every problem, named `instance.<key>` as in the agent's config.
    pub fn new(t: &InstanceTemplate) -> Result<Spec, Vec<Problem>> {
        let mut out = Vec::new();
        if t.readiness.kind == wire::agent::ProbeKind::Http && !t.readiness.path.starts_with('/') {
            out.push(Problem::new("instance.readiness.path", "must start with '/'"));
        }
        if let Some(p) = &t.drain.path
            && !p.starts_with('/')
        {
            out.push(Problem::new("instance.drain.path", "must start with '/'"));
        }
        let stop_signal = crate::process::parse_signal(&t.drain.signal)
            .map_err(|m| out.push(Problem::new("instance.drain.signal", m)));
        let r = &t.restart;
        if r.crash_loop_count == 0 {
            out.push(Problem::new("instance.restart.crash_loop_count", "must be at least 1"));
        }
        if r.backoff.0.is_zero() {
            out.push(Problem::new("instance.restart.backoff", "must be more than 0"));
        }
        if r.max_backoff < r.backoff {
            out.push(Problem::new(
                "instance.restart.max_backoff",
                "must be at least the backoff",
            ));
        }
        if t.readiness.start_deadline.0.is_zero() {
            out.push(Problem::new("instance.readiness.start_deadline", "must be more than 0"));
        }
        for k in t.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                out.push(Problem::new(
                    format!("instance.env.{k}"),
                    "is not a valid variable name",
                ));
            }
        }
        if !out.is_empty() {
            return Err(out);
        }
        Ok(Spec {
            template: t.clone(),
            policy: Policy {
                start_deadline_ms: t.readiness.start_deadline.as_millis(),
                stop_deadline_ms: t.drain.stop_deadline.as_millis(),
                backoff_base_ms: r.backoff.as_millis(),
                backoff_max_ms: r.max_backoff.as_millis(),
                crash_loop_count: r.crash_loop_count,
                crash_window_ms: r.crash_loop_window.as_millis(),
            },
            stop_signal: stop_signal.unwrap_or(None),
        })
    }
}
