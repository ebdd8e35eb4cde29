//! The control plane as the dashboard's backend: read accessors over `Control`, and the commands.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashboard::{Action, Backend, CommandFuture, DataStatus};
use rollout::Event;
use tokio::sync::watch;
use wire::judge::JudgeConfig;
use wire::service::{DataSection, DeployInfo, ServiceStatus};

use crate::driver::{Control, unix_ms};

/// What the dashboard reads and does; `turns` changes after every turn of the loop.
pub(crate) struct Board {
    pub control: Arc<Control>,
    pub turns: watch::Receiver<u64>,
    /// The Data page's last read and when: every open page asks after every loop turn, the databases are read
    /// at most once per [`DATA_FRESH`].
    pub data: Mutex<Option<(Instant, DataStatus)>>,
}

/// How long a read of the records and migration databases is shown before it is read again.
const DATA_FRESH: Duration = Duration::from_secs(1);

impl Board {
    fn plots_dir(&self) -> Option<PathBuf> {
        Some(self.control.cfg.lock().ok()?.layout.control_dir.join("plots"))
    }
}

impl Backend for Board {
    fn token(&self) -> String {
        self.control.token.clone()
    }

    fn status(&self) -> ServiceStatus {
        self.control.status()
    }

    fn history(&self, limit: usize) -> Vec<DeployInfo> {
        self.control.history(limit)
    }

    fn deploy(&self, id: i64) -> Option<DeployInfo> {
        self.control.deploy_info(id)
    }

    fn judge_config(&self) -> JudgeConfig {
        self.control
            .cfg
            .lock()
            .map(|c| c.file.deploy.canary.analysis.clone())
            .unwrap_or_default()
    }

    fn data_settings(&self) -> DataSection {
        self.control.cfg.lock().map(|c| c.file.data.clone()).unwrap_or_default()
    }

    fn data(&self) -> DataStatus {
        let mut cache = self.data.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, d)) = cache.as_ref()
            && at.elapsed() < DATA_FRESH
        {
            return d.clone();
        }
        let Ok((plan, root)) = self.control.cfg.lock().map(|c| (c.data(), c.layout.root.clone())) else {
            return DataStatus::default();
        };
        let d = crate::data::read_status(&plan, &root, &self.control.live_releases());
        *cache = Some((Instant::now(), d.clone()));
        d
    }

    fn log_file(&self, instance: &str) -> Option<PathBuf> {
        let known = self.control.status().instances.iter().any(|i| i.id == instance);
        let root = self.control.cfg.lock().ok()?.layout.root.clone();
        known.then(|| agent::log_path(&root, instance))
    }

    fn metrics(&self) -> Option<wire::metrics::MetricsSnapshot> {
        self.control.metrics()
    }

    fn save_plot(&self, id: i64, plot: &dashboard::Plot) {
        let Some(dir) = self.plots_dir() else { return };
        if let Err(e) = crate::plots::save(&dir, id, plot) {
            tracing::warn!(deploy = id, error = %e, "cannot save the deploy's plot");
        }
    }

    fn saved_plot(&self, id: i64) -> Option<dashboard::Plot> {
        crate::plots::load(&self.plots_dir()?, id).unwrap_or_else(|e| {
            tracing::warn!(deploy = id, error = %e, "cannot read the deploy's saved plot");
            None
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.turns.clone()
    }

    fn command(&self, action: Action, reason: Option<String>) -> CommandFuture<'_> {
        Box::pin(async move {
            let c = &self.control;
            let done = match action {
                Action::Promote => c.apply(Event::Promote, unix_ms()).map(drop),
                Action::Pause => c.apply(Event::Pause, unix_ms()).map(drop),
                Action::Resume => c.apply(Event::Resume, unix_ms()).map(drop),
                Action::Abort => {
                    let reason = reason.unwrap_or_else(|| "aborted from the dashboard".into());
                    c.apply(Event::Abort { reason }, unix_ms()).map(drop)
                }
                Action::Rollback => c.rollback().await,
            };
            done.map_err(|e| e.to_string())
        })
    }
}
