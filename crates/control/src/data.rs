//! The service's data around deploys: expand migrations before a release starts, contract ones after.
//! Record write gates follow what the live releases read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent::ReleaseStore;
use records::Backend;
use records::migrate::{self, LiveUse, MigrateError, Phase, RunOptions};
use wire::agent::ReleaseManifest;

/// `[data]` of slipway.toml with its paths resolved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataPlan {
    pub database: Option<String>,
    pub migrations: Option<PathBuf>,
    pub records: Option<String>,
    pub lock_timeout: Duration,
}

impl DataPlan {
    pub fn is_empty(&self) -> bool {
        self.migrations.is_none() && self.records.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error("release {release}: {message}")]
    Manifest { release: String, message: String },
    #[error("records database: {0}")]
    Storage(#[from] records::StorageError),
}

/// The manifests of `releases` (a release without one declares nothing).
pub fn manifests(root: &Path, releases: &BTreeSet<String>) -> Result<Vec<(String, ReleaseManifest)>, DataError> {
    let store = ReleaseStore::new(root);
    releases
        .iter()
        .map(|r| {
            store
                .manifest(r)
                .map(|m| (r.clone(), m))
                .map_err(|e| DataError::Manifest {
                    release: r.clone(),
                    message: e.to_string(),
                })
        })
        .collect()
}

/// What each release declares it uses of the SQL database.
pub fn uses(manifests: &[(String, ReleaseManifest)]) -> Vec<LiveUse> {
    manifests
        .iter()
        .map(|(r, m)| LiveUse {
            release: r.clone(),
            uses: m.database.as_ref().map(|d| d.uses.clone()).unwrap_or_default(),
        })
        .collect()
}

/// Per record kind, the newest version every release that reads it knows: the write gate.
pub fn gates(manifests: &[(String, ReleaseManifest)]) -> BTreeMap<String, u32> {
    let mut out: BTreeMap<String, u32> = BTreeMap::new();
    for (_, m) in manifests {
        for (kind, &v) in &m.records {
            out.entry(kind.clone()).and_modify(|g| *g = (*g).min(v)).or_insert(v);
        }
    }
    out
}

fn run_migrations(plan: &DataPlan, phases: &[Phase], live: &[LiveUse]) -> Result<Vec<String>, DataError> {
    let (Some(db), Some(dir)) = (&plan.database, &plan.migrations) else {
        return Ok(Vec::new());
    };
    let all = migrate::load_dir(dir)?;
    let mut conn = migrate::Conn::open(db)?;
    let opts = RunOptions {
        phases,
        live,
        lock_timeout: plan.lock_timeout,
        tries: 20,
    };
    let mut lines = Vec::new();
    match migrate::run(&mut conn, &all, &opts, &mut |l| lines.push(l.to_string())) {
        Ok(_) => Ok(lines),
        // A contract step still used by a live release waits for it to go.
        Err(e @ MigrateError::StillUsed { .. }) => {
            lines.push(format!("waiting: {e}"));
            Ok(lines)
        }
        Err(e) => Err(e.into()),
    }
}

fn publish_gates(plan: &DataPlan, manifests: &[(String, ReleaseManifest)]) -> Result<Vec<String>, DataError> {
    let Some(url) = &plan.records else {
        return Ok(Vec::new());
    };
    let wanted = gates(manifests);
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let backend = records::open(url)?;
    let have = backend.gates()?;
    let mut lines = Vec::new();
    for (kind, v) in wanted {
        if have.get(&kind) != Some(&v) {
            backend.set_gate(&kind, Some(v))?;
            lines.push(format!("write gate of {kind}: {v}"));
        }
    }
    Ok(lines)
}

/// Before `release` starts beside `live`: expand and backfill migrations
/// run, and the write gates come down to what the new set can read.
pub fn before_start(
    plan: &DataPlan,
    root: &Path,
    live: &BTreeSet<String>,
    release: &str,
) -> Result<Vec<String>, DataError> {
    let mut all = live.clone();
    all.insert(release.to_string());
    let ms = manifests(root, &all)?;
    let mut lines = run_migrations(plan, &[Phase::Expand, Phase::Backfill], &uses(&ms))?;
    lines.extend(publish_gates(plan, &ms)?);
    Ok(lines)
}

/// After the set of live releases changed: contract steps nobody uses any
/// more run, and the write gates rise to what the remaining releases read.
pub fn after_change(plan: &DataPlan, root: &Path, live: &BTreeSet<String>) -> Result<Vec<String>, DataError> {
    let ms = manifests(root, live)?;
    let mut lines = run_migrations(plan, &[Phase::Contract], &uses(&ms))?;
    lines.extend(publish_gates(plan, &ms)?);
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(records: &[(&str, u32)]) -> ReleaseManifest {
        ReleaseManifest {
            records: records.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_gate_is_the_lowest_version_of_the_releases_that_read_a_kind() {
        let ms = vec![
            ("v1".to_string(), m(&[("player", 1)])),
            ("v2".to_string(), m(&[("player", 3), ("guild", 2)])),
        ];
        let g = gates(&ms);
        assert_eq!(g.get("player"), Some(&1));
        assert_eq!(g.get("guild"), Some(&2), "v1 does not read guilds");
        assert_eq!(gates(&ms[1..]).get("player"), Some(&3));
    }
}
