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

fn read_status(path: &Path, addr_field: &str) -> Option<Running> {
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

fn start(
    what: &'static str,
    exe: &Path,
    args: Vec<OsString>,
    log: PathBuf,
    wait: impl Fn() -> Option<Running>,
) -> Result<Running, ProcError> {
    let pid = agent::spawn_detached(exe, &args, &log).map_err(|source| ProcError::Spawn { what, source })?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(r) = wait().filter(|r| r.pid == pid) {
            return Ok(r);
        }
        if !alive(pid) {
            break;
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
    start("the agent", exe, args, cfg.layout.run_dir.join("agent.log"), || {
        agent_running(cfg)
    })
}

/// The router, started if it is not running (it serves its saved table at once).
pub fn ensure_router(cfg: &ServiceConfig, exe: &Path) -> Result<Running, ProcError> {
    if let Some(r) = router_running(cfg) {
        return Ok(r);
    }
    let conf = cfg.layout.run_dir.join("router.toml");
    write_toml(&conf, &cfg.router_file(), 0o644)?;
    let args = vec!["router".into(), "--config".into(), conf.into_os_string()];
    start("the router", exe, args, cfg.layout.run_dir.join("router.log"), || {
        router_running(cfg)
    })
}

/// The control plane, started if it is not running.
pub fn ensure_control(cfg: &ServiceConfig, exe: &Path) -> Result<Running, ProcError> {
    if let Some(r) = control_running(cfg) {
        return Ok(r);
    }
    let args = vec!["control".into(), "--config".into(), cfg.path.clone().into_os_string()];
    start(
        "the control plane",
        exe,
        args,
        cfg.layout.run_dir.join("control.log"),
        || control_running(cfg),
    )
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
