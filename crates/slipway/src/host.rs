//! `slipway host join`: this host joins a cluster through etcd (see docs/cluster.md) — registers under a
//! heartbeat lease and keeps its local router on the cluster's route table until SIGTERM/SIGINT, then leaves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use cluster::{ClientConfig, Host, HostConfig, HostStatus, TlsFiles};

/// What `host join` was given.
#[derive(Debug, Clone)]
pub struct Join {
    pub etcd: Vec<String>,
    pub name: String,
    pub labels: Vec<String>,
    pub cluster: String,
    pub ttl: Duration,
    pub router_state: Option<PathBuf>,
    pub router_admin: Option<String>,
    pub router_token_file: Option<PathBuf>,
    pub etcd_ca: Option<PathBuf>,
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
}

/// `zone=a,rack=3` (several flags or commas) → the labels that parse, and a problem for each that does not.
fn labels(raw: &[String]) -> (BTreeMap<String, String>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut bad = Vec::new();
    for item in raw.iter().flat_map(|s| s.split(',')).filter(|s| !s.is_empty()) {
        match item.split_once('=') {
            Some((k, v)) => {
                out.insert(k.trim().to_string(), v.trim().to_string());
            }
            None => bad.push(format!("--labels {item:?}: write key=value")),
        }
    }
    (out, bad)
}

/// The router's admin address and token: given, or read from its state folder (`router.json`, `admin.token`).
fn router_access(j: &Join) -> anyhow::Result<(String, String)> {
    let state = j.router_state.as_deref();
    let admin = match (&j.router_admin, state) {
        (Some(a), _) => a.clone(),
        (None, Some(dir)) => {
            router::read_status(dir)
                .context("reading the router's status (is it running?)")?
                .admin
        }
        (None, None) => bail!("give --router-state DIR (the router's state folder) or --router-admin ADDR"),
    };
    let token_file = match (&j.router_token_file, state) {
        (Some(f), _) => f.clone(),
        (None, Some(dir)) => dir.join("admin.token"),
        (None, None) => bail!("give --router-state DIR or --router-token-file FILE"),
    };
    let token = read_token(&token_file)?;
    Ok((admin, token))
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let token =
        std::fs::read_to_string(path).with_context(|| format!("reading the router token {}", path.display()))?;
    Ok(token.trim().to_string())
}

/// The checked host config (every problem of the command line at once), before anything runs.
pub fn config(j: &Join) -> anyhow::Result<HostConfig> {
    let (labels, mut problems) = labels(&j.labels);
    let mut etcd = ClientConfig::new(j.etcd.iter().flat_map(|s| s.split(',')).filter(|s| !s.is_empty()));
    etcd.tls = match (&j.etcd_ca, &j.etcd_cert, &j.etcd_key) {
        (None, None, None) => None,
        (Some(ca), cert, key) => Some(TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, _, _) => {
            problems.push("--etcd-cert/--etcd-key need --etcd-ca".to_string());
            None
        }
    };
    if let Err(e) = cluster::Layout::new(&j.cluster) {
        problems.push(format!("--cluster: {e}"));
    }
    if !cluster::valid_name(&j.name) {
        problems.push(format!("--name {:?}: use 1-63 of a-z, 0-9, '-', '_', '.'", j.name));
    }
    for k in labels.keys().filter(|k| !cluster::valid_name(k)) {
        problems.push(format!(
            "--labels {k:?}: a label name uses 1-63 of a-z, 0-9, '-', '_', '.'"
        ));
    }
    if j.ttl < Duration::from_secs(1) {
        problems.push("--ttl: at least 1s".into());
    }
    if let Err(e) = cluster::Client::new(&etcd) {
        problems.push(format!("--etcd: {e}"));
    }
    let router = router_access(j).map_err(|e| problems.push(format!("{e:#}"))).ok();
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    let (router_admin, router_token) = router.ok_or_else(|| anyhow!("no router"))?;
    Ok(HostConfig {
        etcd,
        cluster: j.cluster.clone(),
        name: j.name.clone(),
        labels,
        ttl: j.ttl,
        router_admin,
        router_token,
        turn: Duration::from_millis(250),
    })
}

fn say(name: &str, before: &HostStatus, now: &HostStatus) {
    if before.etcd != now.etcd {
        match &now.etcd {
            Some(why) => tracing::warn!(host = name, reason = %why, "etcd cannot be heard: changing nothing locally"),
            None => tracing::info!(host = name, "etcd answers again"),
        }
    }
    if before.lease != now.lease && now.lease.is_some() {
        tracing::info!(host = name, lease = ?now.lease, "registered");
    }
    if before.routes_generation != now.routes_generation {
        tracing::info!(
            host = name,
            generation = now.routes_generation,
            "router serves the cluster's route table"
        );
    }
    if before.refused != now.refused
        && let Some(why) = &now.refused
    {
        tracing::warn!(host = name, reason = %why, "refused a value from etcd; the last good one stays");
    }
}

/// Joins and runs until SIGTERM or SIGINT, then leaves (revokes the lease: the host's keys go at once).
pub async fn join(cfg: HostConfig) -> anyhow::Result<()> {
    let name = cfg.name.clone();
    let mut signals = plumbing::lifecycle::Signals::catch(false);
    let host = Host::join(cfg)?;
    println!("slipway host {name}: joining; SIGTERM or Ctrl-C leaves the cluster");
    let mut statuses = host.statuses();
    let mut last = HostStatus::default();
    loop {
        tokio::select! {
            _ = signals.next() => break,
            changed = statuses.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = statuses.borrow_and_update().clone();
                say(&name, &last, &now);
                last = now;
            }
        }
    }
    println!("slipway host {name}: leaving");
    if let Err(e) = host.leave().await {
        tracing::warn!(host = %name, error = %e, "could not revoke the lease; the host's keys go when it expires");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_key_value_pairs_and_every_bad_one_is_named() {
        let (l, bad) = labels(&["zone=a,rack=3".into(), "ssd=yes".into()]);
        assert_eq!((l.len(), bad.len()), (3, 0));
        assert_eq!(l["rack"], "3");
        let (l, bad) = labels(&["zone".into(), "x=1,rack".into()]);
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert_eq!(l.len(), 1);
    }
}
