//! The agent, the router and the control plane as processes: started detached when missing, found, stopped.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::ServiceConfig;

/// Why a helper process could not be started or found.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("cannot start {what}: {source}")]
    Spawn { what: &'static str, source: std::io::Error },
    #[error("{what} did not come up within {secs}s; see {log}")]
    NoStart { what: &'static str, secs: u64, log: String },
    #[error("{what} exited at once: {cause}")]
    Exited { what: &'static str, cause: String },
    #[error("cannot listen on {addr} for [[listener]] {listener}: {cause}")]
    Bind {
        listener: String,
        addr: String,
        cause: std::io::Error,
    },
}

/// A running helper: its pid and API address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub pid: u32,
    pub addr: String,
}

pub fn alive(pid: u32) -> bool {
    agent::process_start_time(pid).is_some()
}

pub(crate) fn read_status(path: &Path, addr_field: &str) -> Option<Running> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let pid = v["pid"].as_u64()? as u32;
    let addr = v[addr_field].as_str()?.to_string();
    alive(pid).then_some(Running { pid, addr })
}

pub fn agent_running(cfg: &ServiceConfig) -> Option<Running> {
    read_status(&cfg.layout.agent_status(), "api")
}

pub fn router_running(cfg: &ServiceConfig) -> Option<Running> {
    read_status(&cfg.layout.router_status(), "admin")
}

pub fn control_running(cfg: &ServiceConfig) -> Option<Running> {
    read_status(&cfg.layout.control_status(), "api")
}

/// The running control plane's dashboard (`addr` is its `ip:port`), unless it is off.
pub fn dashboard_running(cfg: &ServiceConfig) -> Option<Running> {
    read_status(&cfg.layout.control_status(), "dashboard")
}

/// Writes a generated config; `mode` 0600 for one that holds env values.
fn write_toml<T: serde::Serialize>(path: &Path, value: &T, mode: u32) -> Result<(), ProcError> {
    let text = toml::to_string_pretty(value).map_err(|e| ProcError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if let Some(d) = path.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    plumbing::fs::write_atomic(path, text.as_bytes(), mode).map_err(|e| ProcError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// What a process wrote to its log since `from` (its last lines), to say why it exited.
fn last_words(log: &Path, from: u64) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let new = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default()).to_string();
    let lines: Vec<&str> = new.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join("\n");
    if tail.is_empty() {
        format!("nothing in {}", log.display())
    } else {
        tail
    }
}

/// How a helper is started: its environment and the descriptors it gets as fds 3, 4, ...
#[derive(Default)]
struct Extra<'a> {
    env: &'a [(String, String)],
    fds: &'a [std::os::fd::BorrowedFd<'a>],
}

fn start(
    what: &'static str,
    exe: &Path,
    args: Vec<OsString>,
    log: PathBuf,
    extra: Extra<'_>,
    wait: impl Fn() -> Option<Running>,
) -> Result<Running, ProcError> {
    let from = std::fs::metadata(&log).map_or(0, |m| m.len());
    let pid = agent::spawn_detached_with(exe, &args, &log, extra.env, extra.fds)
        .map_err(|source| ProcError::Spawn { what, source })?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(r) = wait().filter(|r| r.pid == pid) {
            return Ok(r);
        }
        if !alive(pid) {
            // It failed to start: say why at once (a port in use, a bad config), not after the deadline.
            return Err(ProcError::Exited {
                what,
                cause: last_words(&log, from),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(ProcError::NoStart {
        what,
        secs: 20,
        log: log.display().to_string(),
    })
}

/// The agent, started if it is not running.
pub fn ensure_agent(cfg: &ServiceConfig, exe: &Path) -> Result<Running, ProcError> {
    if let Some(r) = agent_running(cfg) {
        return Ok(r);
    }
    let conf = cfg.layout.run_dir.join("agent.toml");
    // The template instances without one of their own start with: resolved here, for `slipway up`'s caller.
    let mut file = cfg.agent_file();
    file.instance = cfg.instance_template_here().map_err(|p| ProcError::Write {
        path: conf.clone(),
        message: p.to_string(),
    })?;
    write_toml(&conf, &file, 0o600)?;
    let args = vec!["agent".into(), "--config".into(), conf.into_os_string()];
    start(
        "the agent",
        exe,
        args,
        cfg.layout.run_dir.join("agent.log"),
        Extra::default(),
        || agent_running(cfg),
    )
}

/// The router, started if it is not running (it serves its saved table at once).
pub fn ensure_router(cfg: &ServiceConfig, exe: &Path) -> Result<Running, ProcError> {
    if let Some(r) = router_running(cfg) {
        return Ok(r);
    }
    start_router_with(cfg, exe, &[], &[])
}

/// Starts a router with `env` set and the listening sockets `fds` passed as fds 3, 4, ...
pub(crate) fn start_router_with(
    cfg: &ServiceConfig,
    exe: &Path,
    env: &[(String, String)],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<Running, ProcError> {
    let conf = cfg.layout.run_dir.join("router.toml");
    write_toml(&conf, &cfg.router_file(), 0o644)?;
    let args = vec!["router".into(), "--config".into(), conf.into_os_string()];
    let log = cfg.layout.run_dir.join("router.log");
    start("the router", exe, args, log, Extra { env, fds }, || router_running(cfg))
}

/// The control plane, started if it is not running. `supervise`: it keeps the agent and the router running,
/// holding the router's listening sockets (`slipway up`).
pub fn ensure_control(cfg: &ServiceConfig, exe: &Path, supervise: bool) -> Result<Running, ProcError> {
    if let Some(r) = control_running(cfg) {
        return Ok(r);
    }
    let mut args: Vec<OsString> = vec!["control".into(), "--config".into(), cfg.path.clone().into_os_string()];
    if supervise {
        args.push("--supervise".into());
    }
    let log = cfg.layout.run_dir.join("control.log");
    start("the control plane", exe, args, log, Extra::default(), || {
        control_running(cfg)
    })
}

/// Sends SIGTERM and waits up to `grace` for the process to go, then SIGKILL.
pub fn stop_process(pid: u32, grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    let p = nix::unistd::Pid::from_raw(pid as i32);
    let _ = kill(p, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        let _ = kill(p, Signal::SIGKILL);
    }
}
