//! Expand/contract migrations of SQL tables: idempotent steps tagged expand, backfill or contract.
//!
//! A ledger keeps their checksums, an advisory lock serialises runs, statements wait a short lock timeout with
//! retries, a contract step waits for the live releases that use what it drops, and `classify` gives a lock plan.
//!
//! A migration is a TOML file in a folder (run in file-name order):
//!
//! ```toml
//! description = "split name into first/last"
//! [[step]]
//! phase = "expand"
//! sql = "ALTER TABLE players ADD COLUMN IF NOT EXISTS first_name TEXT"
//! [[step]]
//! phase = "backfill"
//! sql = """UPDATE players SET first_name = split_part(name, ' ', 1) \
//!   WHERE id IN (SELECT id FROM players WHERE first_name IS NULL LIMIT 1000)"""
//! repeat = true          # run again (each its own transaction) until it changes no row
//! [[step]]
//! phase = "contract"
//! sql = "ALTER TABLE players DROP COLUMN IF EXISTS name"
//! drops = ["players.name"]   # refused while a live release declares it uses players.name
//! ```
//!
//! `check` (optional) is a query: if it returns a row the step counts as
//! already applied (for DDL without `IF NOT EXISTS`, e.g. in SQLite).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When a step may run relative to a deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Before the new release starts: only additions old code ignores.
    Expand,
    /// Fill what expand added, in small transactions.
    Backfill,
    /// After the old release is gone: remove what only it used.
    Contract,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Expand => "expand",
            Phase::Backfill => "backfill",
            Phase::Contract => "contract",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration problems:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
    #[error(
        "{migration} step {step} changed after it ran (ledger checksum {was}, file {now}); add a new migration instead"
    )]
    Changed {
        migration: String,
        step: usize,
        was: String,
        now: String,
    },
    #[error(
        "{migration} step {step} (contract) drops {object}, which live release(s) {releases} still use; \
         it runs once they are gone"
    )]
    StillUsed {
        migration: String,
        step: usize,
        object: String,
        releases: String,
    },
    #[error("{migration} step {step}: gave up after {tries} tries: the lock was not free within {timeout:?} each time")]
    LockTimeout {
        migration: String,
        step: usize,
        tries: u32,
        timeout: Duration,
    },
    #[error("{migration} step {step} failed: {message}")]
    Failed {
        migration: String,
        step: usize,
        message: String,
    },
    #[error("another migration run holds the migration lock")]
    Locked,
    #[error(transparent)]
    Storage(#[from] crate::StorageError),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    phase: Phase,
    sql: String,
    check: Option<String>,
    #[serde(default)]
    repeat: bool,
    #[serde(default)]
    drops: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrationFile {
    #[serde(default)]
    description: String,
    #[serde(default)]
    step: Vec<StepFile>,
}

/// One step of a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub phase: Phase,
    pub sql: String,
    pub check: Option<String>,
    pub repeat: bool,
    pub drops: Vec<String>,
    pub checksum: String,
}

/// A migration: an id (its file name) and its steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub id: String,
    pub description: String,
    pub steps: Vec<Step>,
}

fn checksum(step: &StepFile) -> String {
    let text = format!(
        "{}\n{}\n{}",
        step.phase.as_str(),
        step.sql.trim(),
        step.check.as_deref().unwrap_or("")
    );
    blake3::hash(text.as_bytes()).to_hex()[..16].to_string()
}

/// Parses one migration file's text.
pub fn parse(id: &str, text: &str) -> Result<Migration, Vec<String>> {
    let f: MigrationFile = toml::from_str(text).map_err(|e| vec![format!("{id}: {e}")])?;
    let mut problems = Vec::new();
    if f.step.is_empty() {
        problems.push(format!("{id}: no [[step]]"));
    }
    let mut last = Phase::Expand;
    for (i, s) in f.step.iter().enumerate() {
        let at = format!("{id} step {}", i + 1);
        if s.phase < last {
            problems.push(format!(
                "{at}: {} after {}; steps go expand, backfill, contract",
                s.phase.as_str(),
                last.as_str()
            ));
        }
        last = last.max(s.phase);
        if s.sql.trim().is_empty() {
            problems.push(format!("{at}: empty sql"));
        }
        if s.phase == Phase::Contract && s.drops.is_empty() {
            problems.push(format!(
                "{at}: a contract step must say what it drops (drops = [\"table.column\"])"
            ));
        }
        if s.phase != Phase::Contract && !s.drops.is_empty() {
            problems.push(format!("{at}: only contract steps drop things"));
        }
        if s.repeat && s.phase != Phase::Backfill {
            problems.push(format!("{at}: repeat is for backfill steps"));
        }
        let lock = classify(&s.sql);
        if s.phase == Phase::Expand && lock.iter().any(|l| l.destructive) {
            problems.push(format!(
                "{at}: an expand step must not remove anything ({})",
                s.sql.trim()
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Migration {
        id: id.to_string(),
        description: f.description,
        steps: f
            .step
            .iter()
            .map(|s| Step {
                phase: s.phase,
                sql: s.sql.clone(),
                check: s.check.clone(),
                repeat: s.repeat,
                drops: s.drops.clone(),
                checksum: checksum(s),
            })
            .collect(),
    })
}

/// Reads every `*.toml` in `dir`, in name order, listing every problem at once.
pub fn load_dir(dir: &Path) -> Result<Vec<Migration>, MigrateError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| MigrateError::Invalid(vec![format!("cannot read {}: {e}", dir.display())]))?;
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for p in paths {
        let id = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match std::fs::read_to_string(&p) {
            Ok(text) => match parse(&id, &text) {
                Ok(m) => out.push(m),
                Err(ps) => problems.extend(ps),
            },
            Err(e) => problems.push(format!("cannot read {}: {e}", p.display())),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(MigrateError::Invalid(problems))
    }
}

/// What a statement locks (PostgreSQL's rules; SQLite takes its one write lock for any write).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lock {
    pub statement: String,
    pub level: &'static str,
    pub blocks: &'static str,
    pub note: &'static str,
    #[serde(skip)]
    pub destructive: bool,
}

/// The classifier table: first match wins. (pattern, level, blocks, note, destructive)
const RULES: &[(&str, &str, &str, &str, bool)] = &[
    (
        r"^CREATE (UNIQUE )?INDEX CONCURRENTLY",
        "SHARE UPDATE EXCLUSIVE",
        "nothing",
        "builds without blocking writes; runs outside a transaction",
        false,
    ),
    (
        r"^CREATE (UNIQUE )?INDEX",
        "SHARE",
        "writes",
        "writes wait for the whole index build; prefer CONCURRENTLY",
        false,
    ),
    (
        r"^DROP INDEX CONCURRENTLY",
        "SHARE UPDATE EXCLUSIVE",
        "nothing",
        "",
        true,
    ),
    (r"^DROP INDEX", "ACCESS EXCLUSIVE", "reads and writes", "brief", true),
    (
        r"^CREATE (TABLE|VIEW|OR REPLACE VIEW|SEQUENCE|TYPE|FUNCTION|OR REPLACE FUNCTION)",
        "none on existing tables",
        "nothing",
        "",
        false,
    ),
    (
        r"^DROP (TABLE|VIEW|SEQUENCE|TYPE|FUNCTION)",
        "ACCESS EXCLUSIVE",
        "reads and writes",
        "brief; the data is gone",
        true,
    ),
    (
        r"^ALTER TABLE .* ADD (COLUMN )?.* NOT NULL(?!.* DEFAULT)",
        "ACCESS EXCLUSIVE",
        "reads and writes",
        "fails on a non-empty table without a DEFAULT",
        false,
    ),
    (
        r"^ALTER TABLE .* ADD (COLUMN )?(IF NOT EXISTS )?\w+ [^,]*$",
        "ACCESS EXCLUSIVE",
        "reads and writes",
        "brief: no rewrite with a constant default (PostgreSQL 11+)",
        false,
    ),
    (
        r"^ALTER TABLE .* ALTER (COLUMN )?\w+ (SET DATA )?TYPE",
        "ACCESS EXCLUSIVE",
        "reads and writes",
        "rewrites the whole table: use a new column and a backfill",
        true,
    ),
    (
        r"^ALTER TABLE .* ALTER (COLUMN )?\w+ SET NOT NULL",
        "ACCESS EXCLUSIVE",
        "reads and writes",
        "scans the whole table; add a CHECK NOT VALID, VALIDATE it, then SET NOT NULL",
        false,
    ),
    (
        r"^ALTER TABLE .* ADD CONSTRAINT .* NOT VALID",
        "SHARE ROW EXCLUSIVE",
        "writes",
        "brief: existing rows are not checked",
        false,
    ),
    (
        r"^ALTER TABLE .* VALIDATE CONSTRAINT",
        "SHARE UPDATE EXCLUSIVE",
        "nothing",
        "scans the table without blocking writes",
        false,
    ),
    (
        r"^ALTER TABLE .* ADD CONSTRAINT",
        "ACCESS EXCLUSIVE",
        "reads and writes",
        "checks every row under the lock; prefer NOT VALID + VALIDATE",
        false,
    ),
    (
        r"^ALTER TABLE .* DROP (COLUMN|CONSTRAINT)",
        "ACCESS EXCLUSIVE",
        "reads and writes",
        "brief: no rewrite in PostgreSQL (SQLite rewrites the table)",
        true,
    ),
    (
        r"^ALTER TABLE .* RENAME",
        "ACCESS EXCLUSIVE",
        "reads and writes",
        "brief, but old code breaks: add + backfill instead",
        true,
    ),
    (r"^ALTER TABLE", "ACCESS EXCLUSIVE", "reads and writes", "", false),
    (
        r"^(UPDATE|DELETE)",
        "ROW EXCLUSIVE",
        "the rows it changes",
        "batch it (repeat = true) to keep row locks short",
        false,
    ),
    (r"^INSERT", "ROW EXCLUSIVE", "nothing", "", false),
    (r"^(SELECT|WITH)", "ACCESS SHARE", "nothing", "", false),
];

fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c2) if c2 == q => quote = None,
            (None, ';') => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// What each statement of `sql` locks.
pub fn classify(sql: &str) -> Vec<Lock> {
    static COMPILED: std::sync::OnceLock<Vec<regex::Regex>> = std::sync::OnceLock::new();
    let rules = COMPILED.get_or_init(|| {
        RULES
            .iter()
            .map(|r| {
                // The regex crate has no look-ahead: drop that part of the one rule that uses it.
                let pattern = r.0.replace("(?!.* DEFAULT)", "");
                regex::Regex::new(&pattern).expect("classifier patterns are valid")
            })
            .collect()
    });
    split_statements(sql)
        .into_iter()
        .map(|st| {
            let norm = st.split_whitespace().collect::<Vec<_>>().join(" ").to_uppercase();
            let hit = rules.iter().zip(RULES).find(|(re, rule)| {
                re.is_match(&norm) && !(rule.0.contains("(?!.* DEFAULT)") && norm.contains(" DEFAULT"))
            });
            match hit {
                Some((_, r)) => Lock {
                    statement: st,
                    level: r.1,
                    blocks: r.2,
                    note: r.3,
                    destructive: r.4,
                },
                None => Lock {
                    statement: st,
                    level: "unknown: assume ACCESS EXCLUSIVE",
                    blocks: "reads and writes",
                    note: "",
                    destructive: false,
                },
            }
        })
        .collect()
}

/// Does a use (`table` or `table.column`) cover an object a step drops?
pub fn overlaps(used: &str, dropped: &str) -> bool {
    let (u, d) = (used.to_lowercase(), dropped.to_lowercase());
    u == d || d.starts_with(&format!("{u}.")) || u.starts_with(&format!("{d}."))
}

/// A live release and the tables/columns it declares it uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveUse {
    pub release: String,
    pub uses: Vec<String>,
}

/// One planned step with its lock analysis and ledger status.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub migration: String,
    pub step: usize,
    pub phase: Phase,
    pub status: String,
    pub locks: Vec<Lock>,
    pub blocked_by: Vec<String>,
}

/// Which releases still use what `step` drops.
pub fn blockers(step: &Step, live: &[LiveUse]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for d in &step.drops {
        for l in live {
            if l.uses.iter().any(|u| overlaps(u, d)) {
                out.push((d.clone(), l.release.clone()));
            }
        }
    }
    out
}

mod runner;
pub use runner::{Conn, LOCK_KEY, Report, RunOptions, plan, run};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_plan_names_the_dangerous_statements() {
        let l = classify(
            "CREATE INDEX CONCURRENTLY i ON players (guild); CREATE INDEX j ON players (x);\n\
             ALTER TABLE players ADD COLUMN first_name TEXT DEFAULT ''; \
             ALTER TABLE players ALTER COLUMN gold TYPE BIGINT; ALTER TABLE players ADD COLUMN x INT NOT NULL; \
             UPDATE players SET a = 'x;y'; ALTER TABLE players DROP COLUMN name",
        );
        let levels: Vec<_> = l.iter().map(|l| (l.level, l.blocks)).collect();
        assert_eq!(
            levels,
            vec![
                ("SHARE UPDATE EXCLUSIVE", "nothing"),
                ("SHARE", "writes"),
                ("ACCESS EXCLUSIVE", "reads and writes"),
                ("ACCESS EXCLUSIVE", "reads and writes"),
                ("ACCESS EXCLUSIVE", "reads and writes"),
                ("ROW EXCLUSIVE", "the rows it changes"),
                ("ACCESS EXCLUSIVE", "reads and writes"),
            ]
        );
        assert!(l[3].note.contains("rewrites"));
        assert!(l[4].note.contains("without a DEFAULT"));
        assert!(l[6].destructive);
    }

    #[test]
    fn migration_files_are_checked_with_every_problem() {
        let bad = r#"
            [[step]]
            phase = "contract"
            sql = "ALTER TABLE p DROP COLUMN a"
            [[step]]
            phase = "expand"
            sql = "ALTER TABLE p DROP COLUMN b"
            repeat = true
        "#;
        let err = parse("0001", bad).unwrap_err().join("\n");
        for want in [
            "must say what it drops",
            "expand after contract",
            "repeat is for backfill",
            "must not remove",
        ] {
            assert!(err.contains(want), "missing {want}: {err}");
        }
    }

    #[test]
    fn uses_cover_tables_and_columns() {
        assert!(overlaps("players", "players.name"));
        assert!(overlaps("players.name", "players"));
        assert!(overlaps("Players.Name", "players.name"));
        assert!(!overlaps("players.first_name", "players.name"));
        assert!(!overlaps("player", "players.name"));
    }
}
