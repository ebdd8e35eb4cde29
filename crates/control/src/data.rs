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

fn entry<'a>(kinds: &'a mut BTreeMap<String, dashboard::KindCounts>, kind: &str) -> &'a mut dashboard::KindCounts {
    kinds.entry(kind.to_string()).or_insert_with(|| dashboard::KindCounts {
        kind: kind.to_string(),
        ..Default::default()
    })
}

fn kind_counts(url: &str, ms: &[(String, ReleaseManifest)]) -> Result<Vec<dashboard::KindCounts>, DataError> {
    let backend = records::open_read_only(url)?;
    let mut kinds: BTreeMap<String, dashboard::KindCounts> = BTreeMap::new();
    for c in backend.counts()? {
        entry(&mut kinds, &c.kind).versions.push((c.version, c.records));
    }
    for (kind, g) in backend.gates()? {
        entry(&mut kinds, &kind).gate = Some(g);
    }
    for (release, m) in ms {
        for (kind, &v) in &m.records {
            entry(&mut kinds, kind).readers.push((release.clone(), v));
        }
    }
    let mut out: Vec<_> = kinds.into_values().collect();
    for k in &mut out {
        k.versions.sort_unstable();
    }
    Ok(out)
}

fn crawl_views(url: &str) -> Result<Vec<dashboard::CrawlView>, DataError> {
    let backend = records::open_read_only(url)?;
    Ok(backend
        .crawls()?
        .into_iter()
        .map(|c| dashboard::CrawlView {
            phase: match c.status {
                records::CrawlStatus::Running => dashboard::CrawlPhase::Running,
                records::CrawlStatus::Paused => dashboard::CrawlPhase::Paused,
                records::CrawlStatus::Done => dashboard::CrawlPhase::Done,
            },
            kind: c.kind,
            target: c.target,
            pause_requested: c.pause_requested,
            total: c.total,
            scanned: c.scanned,
            upgraded: c.upgraded,
            skipped_leased: c.skipped_leased,
            conflicts: c.conflicts,
            failed: c.failed,
            started_ms: c.started_at,
            updated_ms: c.updated_at,
            finished_ms: c.finished_at,
        })
        .collect())
}

/// The ledger's state strings as the dashboard's states; `None` for one this code does not know.
fn step_state(s: &str) -> Option<dashboard::StepState> {
    Some(match s {
        "pending" => dashboard::StepState::Pending,
        "running" => dashboard::StepState::Running,
        "done" => dashboard::StepState::Done,
        "failed" => dashboard::StepState::Failed,
        _ => return None,
    })
}

fn ledger(
    db: &str,
    dir: &Path,
    live: &[LiveUse],
    problems: &mut Vec<String>,
) -> Result<Vec<dashboard::LedgerStep>, DataError> {
    let all = migrate::load_dir(dir)?;
    let mut conn = migrate::Conn::open_read_only(db)?;
    let mut out = Vec::new();
    for p in migrate::plan(&mut conn, &all, live)? {
        let Some(state) = step_state(&p.status) else {
            problems.push(format!(
                "{} step {}: unknown ledger status '{}'",
                p.migration, p.step, p.status
            ));
            continue;
        };
        out.push(dashboard::LedgerStep {
            phase: match p.phase {
                Phase::Expand => dashboard::StepPhase::Expand,
                Phase::Backfill => dashboard::StepPhase::Backfill,
                Phase::Contract => dashboard::StepPhase::Contract,
            },
            migration: p.migration,
            step: p.step,
            state,
            blocked_by: p.blocked_by,
        });
    }
    Ok(out)
}

/// What the Data page shows: records per kind and version, crawls, gates with the live releases' readers, and the
/// migration ledger. Every part that cannot be read becomes a problem line; the others are still shown.
pub fn read_status(plan: &DataPlan, root: &Path, live: &BTreeSet<String>) -> dashboard::DataStatus {
    let mut out = dashboard::DataStatus::default();
    let ms = manifests(root, live).unwrap_or_else(|e| {
        out.problems.push(e.to_string());
        Vec::new()
    });
    if let Some(url) = &plan.records {
        match kind_counts(url, &ms) {
            Ok(k) => out.kinds = k,
            Err(e) => out.problems.push(e.to_string()),
        }
        match crawl_views(url) {
            Ok(c) => out.crawls = c,
            Err(e) => out.problems.push(e.to_string()),
        }
    }
    if let (Some(db), Some(dir)) = (&plan.database, &plan.migrations) {
        let mut problems = Vec::new();
        match ledger(db, dir, &uses(&ms), &mut problems) {
            Ok(l) => out.ledger = l,
            Err(e) => out.problems.push(e.to_string()),
        }
        out.problems.extend(problems);
    }
    out
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

    fn crawl(url: &str) {
        let backend = records::open(url).unwrap();
        backend
            .put_crawl(&records::CrawlState {
                kind: "player".into(),
                target: 2,
                status: records::CrawlStatus::Running,
                pause_requested: false,
                started_at: 1_000,
                max_id: 3,
                cursor_active: 0,
                cursor_key: String::new(),
                total: 2,
                scanned: 1,
                upgraded: 1,
                skipped_leased: 0,
                conflicts: 0,
                failed: 0,
                batch_size: 10,
                updated_at: 2_000,
                finished_at: None,
            })
            .unwrap();
        backend.set_gate("player", Some(1)).unwrap();
    }

    #[test]
    fn the_data_page_reads_counts_gates_crawls_and_the_ledger_from_real_sqlite_databases() {
        let dir = testkit::TempDir::new("board-data");
        let url = format!("sqlite:{}", dir.join("records.db").display());
        let schema = records::Schema::new()
            .with(records::KindSchema::new("player", 1).up(1, |_| Ok(())))
            .unwrap();
        let store = records::Store::new(records::open(&url).unwrap(), schema, "test");
        for (key, v) in [("a", 1), ("b", 1), ("c", 2)] {
            store.create_value("player", key, serde_json::json!({}), v).unwrap();
        }
        crawl(&url);
        let migrations = dir.join("migrations");
        std::fs::create_dir(&migrations).unwrap();
        let m = "[[step]]\nphase = \"expand\"\n\
                 sql = \"CREATE TABLE IF NOT EXISTS users (id INTEGER, mail TEXT)\"\n\
                 [[step]]\nphase = \"contract\"\n\
                 sql = \"ALTER TABLE users DROP COLUMN mail\"\ndrops = [\"users.mail\"]\n";
        std::fs::write(migrations.join("001_users.toml"), m).unwrap();
        let plan = DataPlan {
            database: Some(format!("sqlite:{}", dir.join("app.db").display())),
            migrations: Some(migrations),
            records: Some(url),
            lock_timeout: Duration::from_millis(500),
        };
        run_migrations(&plan, &[Phase::Expand], &[]).unwrap();

        let d = read_status(&plan, dir.path(), &BTreeSet::new());
        assert_eq!(d.problems, Vec::<String>::new());
        assert_eq!(d.kinds.len(), 1);
        assert_eq!(d.kinds[0].kind, "player");
        assert_eq!(d.kinds[0].versions, vec![(1, 2), (2, 1)]);
        assert_eq!(d.kinds[0].gate, Some(1));
        assert_eq!(d.crawls.len(), 1);
        assert_eq!(
            (d.crawls[0].phase, d.crawls[0].scanned, d.crawls[0].total),
            (dashboard::CrawlPhase::Running, 1, 2)
        );
        assert_eq!(d.crawls[0].eta(), Some(Duration::from_secs(1)), "1 left at 1/s");
        let steps: Vec<_> = d
            .ledger
            .iter()
            .map(|s| (s.migration.as_str(), s.step, s.phase, s.state))
            .collect();
        assert_eq!(
            steps,
            vec![
                ("001_users", 1, dashboard::StepPhase::Expand, dashboard::StepState::Done),
                (
                    "001_users",
                    2,
                    dashboard::StepPhase::Contract,
                    dashboard::StepState::Pending
                ),
            ]
        );
    }

    /// The tables of a SQLite file (none if it does not exist).
    fn tables(path: &Path) -> Vec<String> {
        let Ok(c) = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
            return Vec::new();
        };
        let mut st = c
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .unwrap();
        st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }

    #[test]
    fn the_data_page_created_tables_in_the_records_and_app_databases_it_only_reads() {
        let dir = testkit::TempDir::new("board-data-ro");
        let migrations = dir.join("migrations");
        std::fs::create_dir(&migrations).unwrap();
        std::fs::write(
            migrations.join("001_t.toml"),
            "[[step]]\nphase = \"expand\"\nsql = \"CREATE TABLE IF NOT EXISTS t (id INTEGER)\"\n",
        )
        .unwrap();
        let (records_db, app_db) = (dir.join("records.db"), dir.join("app.db"));
        let plan = |records: &Path, app: &Path| DataPlan {
            database: Some(format!("sqlite:{}", app.display())),
            migrations: Some(migrations.clone()),
            records: Some(format!("sqlite:{}", records.display())),
            lock_timeout: Duration::from_millis(500),
        };
        // Neither database exists yet: none is created.
        let d = read_status(&plan(&records_db, &app_db), dir.path(), &BTreeSet::new());
        assert!(
            !records_db.exists() && !app_db.exists(),
            "a read created a database file"
        );
        assert_eq!(d.ledger.len(), 1, "every step pending: {:?}", d.problems);
        assert!(
            d.problems.iter().all(|p| p.contains("no records database yet")),
            "{:?}",
            d.problems
        );
        // Both exist and hold nothing: no table is created in either.
        for p in [&records_db, &app_db] {
            rusqlite::Connection::open(p)
                .unwrap()
                .execute_batch("CREATE TABLE other (x)")
                .unwrap();
        }
        let d = read_status(&plan(&records_db, &app_db), dir.path(), &BTreeSet::new());
        assert_eq!(tables(&records_db), ["other"]);
        assert_eq!(tables(&app_db), ["other"]);
        assert_eq!(d.ledger.len(), 1);
        assert!(d.kinds.is_empty());
    }

    #[test]
    fn a_records_database_that_does_not_open_is_a_problem_line_and_the_ledger_is_still_read() {
        let dir = testkit::TempDir::new("board-data-bad");
        let migrations = dir.join("migrations");
        std::fs::create_dir(&migrations).unwrap();
        std::fs::write(dir.join("001_t.toml"), "").unwrap();
        std::fs::write(
            migrations.join("001_t.toml"),
            "[[step]]\nphase = \"expand\"\nsql = \"CREATE TABLE IF NOT EXISTS t (id INTEGER)\"\n",
        )
        .unwrap();
        let plan = DataPlan {
            database: Some(format!("sqlite:{}", dir.join("app.db").display())),
            migrations: Some(migrations),
            // A plain file where the database's folder would be.
            records: Some(format!("sqlite:{}", dir.join("001_t.toml/records.db").display())),
            lock_timeout: Duration::from_millis(500),
        };
        let d = read_status(&plan, dir.path(), &BTreeSet::new());
        assert_eq!(d.problems.len(), 2, "counts and crawls: {:?}", d.problems);
        assert!(d.kinds.is_empty() && d.crawls.is_empty());
        assert_eq!(d.ledger.len(), 1);
        assert_eq!(d.ledger[0].state, dashboard::StepState::Pending);
    }
}
