//! `slipway router upgrade`: ask a running router to replace itself with a new binary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use plumbing::client::ApiClient;
use wire::api::{RouterStatus, UpgradeRequest, Upgraded};

/// The admin client of the router that runs from the config at `path`.
pub fn router_client(path: &Path) -> anyhow::Result<(router::Config, RouterStatus, ApiClient)> {
    let config = router::Config::load(path)
        .map_err(|e| anyhow::anyhow!("{e}\nthe running router was not touched; fix the config first"))?;
    let status = router::read_status(&config.state_dir).map_err(|e| match e {
        router::StateError::Io { path: file, source } if source.kind() == std::io::ErrorKind::NotFound => {
            anyhow::anyhow!(
                "no router has run from {} yet ({} is missing)",
                path.display(),
                file.display()
            )
        }
        e => e.into(),
    })?;
    if !Path::new(&format!("/proc/{}", status.pid)).exists() {
        anyhow::bail!(
            "no router is running from {}: its status file in {} names pid {}, which is gone",
            path.display(),
            config.state_dir.display(),
            status.pid
        );
    }
    let token = std::fs::read_to_string(&config.token_file)
        .with_context(|| format!("cannot read the router's admin token {}", config.token_file.display()))?;
    let api = ApiClient::new(&status.admin, Some(token.trim().to_string()))?;
    Ok((config, status, api))
}

/// Upgrades the router and prints what happened.
pub async fn upgrade(path: &Path, binary: Option<PathBuf>, timeout: wire::HumanDuration) -> anyhow::Result<()> {
    let (_, status, api) = router_client(path)?;
    let binary = match binary {
        Some(b) => Some(std::path::absolute(&b).with_context(|| format!("bad binary path {}", b.display()))?),
        None => None,
    };
    println!(
        "upgrading the router (pid {}) to {}; waiting up to {timeout} for the new process",
        status.pid,
        binary
            .as_ref()
            .map_or("the binary it runs from".to_string(), |b| b.display().to_string())
    );
    let req = UpgradeRequest {
        binary,
        timeout: Some(timeout),
    };
    let api = api.with_timeout(timeout.0 + Duration::from_secs(10));
    let done: Upgraded = api
        .post("/v1/upgrade", &req)
        .await
        .context("the upgrade did not happen")?;
    println!(
        "router upgraded: pid {} -> pid {} (version {}, route generation {}) in {} ms",
        done.old_pid, done.new_pid, done.new_version, done.generation, done.took_ms
    );
    println!(
        "the old process finishes its {} open connection(s) and exits; long-lived ones get until the listener's \
         drain_deadline",
        done.old_connections
    );
    Ok(())
}
