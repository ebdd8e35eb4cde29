//! slipway's control plane: one-button deploys that survive their own crash.
//!
//! It runs beside an agent and a router, each its own process (started detached if missing, re-attached when
//! running): if the control plane dies, the router keeps routing and the instances keep serving. Every 500 ms
//! it observes the agent's instances and the router's metrics, feeds them and the operator's commands to the
//! rollout machine (`rollout`), journaling every event that changed the state in SQLite before acting; then the
//! pure `planner` decides the calls that bring instances and routes to `Service::desired()`, the `executor`
//! makes them, and the state is published once the router confirmed its routes. Canary steps are judged by
//! `judge` from router metrics. Started again, it replays the journal through the same machine and carries on.

mod analysis;
mod api;
mod board;
mod book;
mod config;
mod data;
mod driver;
mod envfile;
mod executor;
mod hooks;
mod httpc;
mod journal;
mod judging;
mod metrics;
mod planner;
mod plots;
mod pretraffic;
mod procs;
mod reach;
mod supervise;
mod template;
mod view;
mod webhook;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use api::ROUTES;
pub use config::{ConfigError, Layout, ServiceConfig};
pub use driver::Control;
pub use journal::JournalError;

/// The deploy history in the service's journal, read from disk (no control plane needed); None without a journal.
pub fn saved_history(
    cfg: &ServiceConfig,
    limit: usize,
) -> Result<Option<Vec<wire::service::DeployInfo>>, JournalError> {
    journal::saved_history(&cfg.layout.journal(), limit)
}
pub use procs::{
    ProcError, Running, agent_running, control_running, dashboard_running, ensure_agent, ensure_control, ensure_router,
    router_running, stop_process,
};

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Proc(#[from] procs::ProcError),
    #[error(transparent)]
    Fs(#[from] plumbing::fs::FsError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{0}")]
    Client(#[from] plumbing::client::ClientError),
    #[error("cannot listen on {addr} for the admin API: {source}")]
    Api { addr: String, source: std::io::Error },
    #[error("cannot listen on {addr} for the dashboard (service.dashboard): {source}")]
    Dashboard { addr: String, source: std::io::Error },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// A control plane running in the current runtime.
pub struct RunningControl {
    pub control: Arc<Control>,
    pub api_addr: String,
    /// Where the dashboard listens (`None`: `service.dashboard = "off"`).
    pub dashboard_addr: Option<std::net::SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for RunningControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningControl").field("api", &self.api_addr).finish()
    }
}

impl RunningControl {
    /// Stops the loop and the API; the agent, the router and the instances keep running.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn read_token(path: &std::path::Path) -> Result<String, plumbing::fs::FsError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(plumbing::fs::io_err(path))
}

/// Makes sure the agent and the router run (starting them with `exe`, the
/// slipway binary), replays the journal, serves the API and starts the loop.
pub async fn start(cfg: ServiceConfig, exe: PathBuf) -> Result<RunningControl, StartError> {
    std::fs::create_dir_all(&cfg.layout.control_dir).map_err(plumbing::fs::io_err(&cfg.layout.control_dir))?;
    let (agent, router, sockets) = {
        let cfg = cfg.clone();
        let exe = exe.clone();
        tokio::task::spawn_blocking(move || -> Result<_, procs::ProcError> {
            let agent = procs::ensure_agent(&cfg, &exe)?;
            let mut sockets = supervise::Sockets::default();
            let router = match cfg.supervise {
                true => supervise::start_router(&cfg, &exe, &mut sockets)?,
                false => procs::ensure_router(&cfg, &exe)?,
            };
            Ok((agent, router, sockets))
        })
        .await
        .map_err(|e| StartError::Runtime(std::io::Error::other(e)))??
    };
    read_token(&cfg.layout.agent_token())?;
    read_token(&cfg.layout.router_token())?;
    let found = |status, field, token| reach::Found { status, field, token };
    let parts = executor::Parts {
        agent: reach::Reach::open(
            found(cfg.layout.agent_status(), "api", cfg.layout.agent_token()),
            &agent.addr,
        )?,
        router: reach::Reach::open(
            found(cfg.layout.router_status(), "admin", cfg.layout.router_token()),
            &router.addr,
        )?,
    };
    let token = plumbing::fs::secret_file(&cfg.layout.control_token(), plumbing::fs::new_token)?;
    let listen = plumbing::api::Listen::parse(&cfg.file.service.admin, &cfg.base, "service.admin")
        .unwrap_or(plumbing::api::Listen::Tcp(([127, 0, 0, 1], 0).into()));
    let control = Control::open(cfg.clone(), token, parts)?;
    let (stop, stop_rx) = watch::channel(false);
    let (api_addr, api_task) = plumbing::api::serve(&listen, api::router(control.clone()), stop_rx.clone())
        .await
        .map_err(|source| StartError::Api {
            addr: listen.to_string(),
            source,
        })?;
    let (turns, turns_rx) = watch::channel(0u64);
    let mut tasks = vec![api_task];
    let dashboard_addr = match config::dashboard_addr(&cfg.file.service.dashboard).ok().flatten() {
        Some(addr) => {
            let board = Arc::new(board::Board {
                control: control.clone(),
                turns: turns_rx,
                data: Default::default(),
            });
            let (bound, t) =
                dashboard::serve(addr, board, stop_rx.clone())
                    .await
                    .map_err(|source| StartError::Dashboard {
                        addr: addr.to_string(),
                        source,
                    })?;
            tasks.extend(t);
            Some(bound)
        }
        None => None,
    };
    plumbing::fs::write_json(
        &cfg.layout.control_status(),
        &serde_json::json!({ "pid": std::process::id(), "api": api_addr, "dashboard": dashboard_addr }),
    )?;
    tasks.push(tokio::spawn(control_loop(control.clone(), turns, stop_rx.clone())));
    if cfg.supervise {
        let shown = control.restarts.clone();
        tasks.push(tokio::spawn(supervise::run(cfg.clone(), exe, sockets, shown, stop_rx)));
    }
    Ok(RunningControl {
        control,
        api_addr,
        dashboard_addr,
        stop,
        tasks,
    })
}

async fn control_loop(c: Arc<Control>, turns: watch::Sender<u64>, mut stop: watch::Receiver<bool>) {
    let mut mtime = std::fs::metadata(c.cfg.lock().map(|g| g.path.clone()).unwrap_or_default())
        .and_then(|m| m.modified())
        .ok();
    let mut lp = c.loop_state();
    loop {
        c.tick(&mut lp).await;
        turns.send_modify(|n| *n += 1);
        let path = c.cfg.lock().map(|g| g.path.clone()).unwrap_or_default();
        let now = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if now != mtime {
            mtime = now;
            match c.reload() {
                Ok(r) if !r.applied.is_empty() || !r.needs_restart.is_empty() => {
                    tracing::info!(applied = ?r.applied, needs_restart = ?r.needs_restart, "slipway.toml changed")
                }
                Ok(_) => {}
                Err(e) => tracing::error!("slipway.toml changed but is not valid; keeping the running config: {e}"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Runs the control plane until SIGTERM or SIGINT.
pub fn run(cfg: ServiceConfig, exe: PathBuf) -> Result<(), StartError> {
    let up = |running: &RunningControl| {
        println!("slipway control plane: API on {}", running.api_addr);
        if let Some(d) = running.dashboard_addr {
            println!("slipway control plane: dashboard on http://{d}/ (`slipway dashboard` logs in)");
        }
    };
    let leaving = "slipway control plane: stopping; the router and the instances keep serving";
    plumbing::lifecycle::block_on(plumbing::lifecycle::serve_until_signal(
        start(cfg, exe),
        up,
        leaving,
        async |r: RunningControl| r.shutdown().await,
    ))
    .map_err(StartError::Runtime)?
}
