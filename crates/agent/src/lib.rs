//! slipway's agent: runs several releases of an app side by side on one host.
//!
//! Releases live in `releases/<id>/` under the root (immutable; `current`
//! and `previous` are symlinks switched with rename). Instances are started
//! in their own session on a free port each (`PORT`, `SLIPWAY_RELEASE`,
//! `SLIPWAY_INSTANCE`), probed for readiness, drained (drain hook, stop
//! signal, then SIGKILL of the whole process group at the deadline) and
//! restarted with backoff after crashes, until a crash loop. The instance
//! table is saved on every change; an agent killed and started again
//! re-adopts the instances still running (same pid *and* kernel start time)
//! and starts none twice. Instances never depend on the agent: their output
//! goes to files through a stamper process of their own (`stamp`, records in
//! the `logline` format), and they outlive it.

mod api;
mod config;
mod logline;
mod logs;
mod machine;
mod probe;
mod process;
mod releases;
mod stamp;
mod supervisor;
mod table;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use config::{Config, ConfigError, Spec};
pub use logline::{MAX_RECORD, Record, Stream, format_record, parse_record, parse_rfc3339, rfc3339_micros};
pub use logs::{follow_log, log_dir, log_path, log_tail};
pub use process::{Launch, process_start_time, signal_group, spawn_detached, spawn_detached_with, spawn_instance};
pub use releases::{RELEASE_MANIFEST, ReleaseError, ReleaseStore};
pub use stamp::{IDLE as STAMP_IDLE, stamp_output};
pub use supervisor::{Agent, is_live};
pub use table::saved_instances;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    State(#[from] plumbing::fs::FsError),
    #[error("cannot listen on {addr} for the agent API: {source}")]
    Api { addr: String, source: std::io::Error },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// An agent serving in the current runtime.
pub struct RunningAgent {
    pub agent: Arc<Agent>,
    pub api_addr: String,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for RunningAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningAgent").field("api", &self.api_addr).finish()
    }
}

impl RunningAgent {
    /// Stops the API and supervision; instances keep running (they never
    /// depend on the agent) and are re-adopted by the next agent.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.agent.leave();
    }
}

/// Opens the root, re-adopts running instances, serves the API.
pub async fn start(config: Config) -> Result<RunningAgent, StartError> {
    std::fs::create_dir_all(&config.root).map_err(plumbing::fs::io_err(&config.root))?;
    let token = plumbing::fs::secret_file(&config.token_file, plumbing::fs::new_token)?;
    let agent = Agent::open(config.clone(), token)?;
    let (stop, stop_rx) = watch::channel(false);
    let (api_addr, api_task) = plumbing::api::serve(&config.api, api::router(agent.clone()), stop_rx.clone())
        .await
        .map_err(|source| StartError::Api {
            addr: config.api.to_string(),
            source,
        })?;
    let rotate = tokio::spawn(rotate_logs(agent.clone(), stop_rx));
    plumbing::fs::write_json(
        &config.root.join("agent").join("agent.json"),
        &serde_json::json!({ "pid": std::process::id(), "api": api_addr }),
    )?;
    Ok(RunningAgent {
        agent,
        api_addr,
        stop,
        tasks: vec![api_task, rotate],
    })
}

async fn rotate_logs(agent: Arc<Agent>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let cfg = &agent.config;
        for i in agent.list() {
            let dir = logs::log_dir(&cfg.root, &i.id);
            if let Err(e) = logs::rotate_if_needed(&dir, cfg.logs.max_bytes, cfg.logs.keep) {
                tracing::warn!(instance = %i.id, error = %e, "log rotation failed");
            }
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT; instances keep running after it.
pub fn run(config: Config) -> Result<(), StartError> {
    let up = |running: &RunningAgent| {
        println!(
            "slipway agent: API on {} (token in {}), root {}, {} instances adopted",
            running.api_addr,
            running.agent.config.token_file.display(),
            running.agent.config.root.display(),
            running.agent.list().len()
        )
    };
    let leaving = "slipway agent: stopping; instances keep running";
    plumbing::lifecycle::block_on(plumbing::lifecycle::serve_until_signal(
        start(config),
        up,
        leaving,
        async |r: RunningAgent| r.shutdown().await,
    ))
    .map_err(StartError::Runtime)?
}
