//! What the dashboard needs from the control plane: read accessors, the commands, and a signal per loop turn.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use tokio::sync::watch;
use wire::judge::JudgeConfig;
use wire::service::{DataSection, DeployInfo, ServiceStatus};

/// A command the dashboard's buttons send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Promote,
    Pause,
    Resume,
    Abort,
    Rollback,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::Promote,
        Action::Pause,
        Action::Resume,
        Action::Abort,
        Action::Rollback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Promote => "promote",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
            Action::Rollback => "rollback",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// A command's future: `Err` carries the refusal in words.
pub type CommandFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// The control plane as the dashboard sees it.
pub trait Backend: Send + Sync + 'static {
    /// The control plane's admin token (a login with it opens a session).
    fn token(&self) -> String;
    /// The published status (what `GET /v1/status` answers).
    fn status(&self) -> ServiceStatus;
    /// The deploy history, newest first.
    fn history(&self, limit: usize) -> Vec<DeployInfo>;
    /// One deploy, running or past.
    fn deploy(&self, id: i64) -> Option<DeployInfo>;
    /// The judge's settings (metrics and tolerances, for the plots' bands).
    fn judge_config(&self) -> JudgeConfig;
    /// `[data]` of slipway.toml.
    fn data_settings(&self) -> DataSection;
    /// Records per kind and version, crawls, write gates and the migration ledger (read-only; empty by default).
    fn data(&self) -> crate::DataStatus {
        crate::DataStatus::default()
    }
    /// The output log of an instance, if the instance is known.
    fn log_file(&self, instance: &str) -> Option<PathBuf>;
    /// The router's last metrics snapshot (request and error rates per release), if the control plane has one.
    fn metrics(&self) -> Option<wire::metrics::MetricsSnapshot> {
        None
    }
    /// Keeps deploy `id`'s plot with the deploy, so its page still has it after a restart (nothing by default).
    fn save_plot(&self, _id: i64, _plot: &crate::Plot) {}
    /// Deploy `id`'s saved plot, if one was saved.
    fn saved_plot(&self, _id: i64) -> Option<crate::Plot> {
        None
    }
    /// Changes after every turn of the control loop.
    fn changes(&self) -> watch::Receiver<u64>;
    /// Carries out a command; `reason` goes with an abort.
    fn command(&self, action: Action, reason: Option<String>) -> CommandFuture<'_>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_read_back_from_their_names_and_nothing_else_does() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        assert_eq!(Action::parse("Pause"), None);
        assert_eq!(Action::parse("deploy"), None);
    }
}
