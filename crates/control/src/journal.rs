//! The control plane's journal in SQLite: the state-changing events, the published mark, the deploy history.
//!
//! The format is versioned by the database's `user_version` (`FORMAT`): an older journal is upgraded when it is
//! opened, a newer one is refused with the version it has.

use std::path::{Path, PathBuf};

use rollout::Event;
use rusqlite::{Connection, OptionalExtension, params};
use wire::service::DeployInfo;

/// The journal format this code writes.
/// - 0: `events` (seq, at_ms, JSON `rollout::Event`) and `deploys` (id, JSON `DeployInfo`); no version.
/// - 1: adds `published`, the last event whose state the router confirmed (what the API shows).
/// - 2: adds `analysis`, the running canary analysis's evidence (JSON `analysis::SavedAnalysis`).
/// - 3: a `deploy` event may carry the instance template its release starts with (`template`, env values
///   included: the file is mode 0600). Older events have none; their releases start with the agent's template.
pub(crate) const FORMAT: i64 = 3;

/// Why the journal failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("journal record {seq} is unreadable: {message}")]
    Record { seq: i64, message: String },
    #[error(
        "{} has journal format {found}, newer than the {FORMAT} this slipway reads; run the slipway that \
         wrote it (or a newer one)",
        path.display()
    )]
    Newer { path: PathBuf, found: i64 },
}

/// An append-only log of events, the published mark, and the deploy history.
pub(crate) struct Journal {
    db: Connection,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Journal")
    }
}

fn record(seq: i64) -> impl Fn(serde_json::Error) -> JournalError {
    move |e| JournalError::Record {
        seq,
        message: e.to_string(),
    }
}

impl Journal {
    /// Opens (or creates) the journal, upgrading an older format.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let mut db = Connection::open(path)?;
        secret_mode(path);
        // WAL + full sync: an acknowledged append survives a crash of the process or the host.
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        let found: i64 = db.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > FORMAT {
            return Err(JournalError::Newer {
                path: path.to_path_buf(),
                found,
            });
        }
        if found < FORMAT {
            upgrade(&mut db, found)?;
            if found > 0 || has_events(&db)? {
                tracing::info!(path = %path.display(), from = found, to = FORMAT, "journal upgraded");
            }
        }
        Ok(Journal { db })
    }

    /// Appends one event; returns its sequence number once it is on disk.
    pub fn append(&self, event: &Event, at_ms: u64) -> Result<i64, JournalError> {
        let body = serde_json::to_string(event).map_err(record(-1))?;
        self.db.execute(
            "INSERT INTO events (at_ms, body) VALUES (?1, ?2)",
            params![at_ms as i64, body],
        )?;
        Ok(self.db.last_insert_rowid())
    }

    /// Every event in order, with its sequence number and time, for replay.
    pub fn events(&self) -> Result<Vec<(i64, Event, u64)>, JournalError> {
        let mut stmt = self.db.prepare("SELECT seq, at_ms, body FROM events ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, at, body) = row?;
            let ev: Event = serde_json::from_str(&body).map_err(record(seq))?;
            out.push((seq, ev, at as u64));
        }
        Ok(out)
    }

    /// The last event whose resulting state the world caught up with (0: none).
    pub fn published(&self) -> Result<i64, JournalError> {
        let seq = self
            .db
            .query_row("SELECT seq FROM published WHERE only = 1", [], |r| r.get(0))
            .optional()?;
        Ok(seq.unwrap_or(0))
    }

    pub fn mark_published(&self, seq: i64) -> Result<(), JournalError> {
        self.db.execute(
            "INSERT INTO published (only, seq) VALUES (1, ?1) ON CONFLICT(only) DO UPDATE SET seq = excluded.seq",
            params![seq],
        )?;
        Ok(())
    }

    /// Keeps the running analysis's evidence (one at a time: at most one deploy runs).
    pub fn save_analysis<T: serde::Serialize>(&self, saved: &T, at_ms: u64) -> Result<(), JournalError> {
        let body = serde_json::to_string(saved).map_err(record(-1))?;
        self.db.execute(
            "INSERT INTO analysis (only, at_ms, body) VALUES (1, ?1, ?2)
             ON CONFLICT(only) DO UPDATE SET at_ms = excluded.at_ms, body = excluded.body",
            params![at_ms as i64, body],
        )?;
        Ok(())
    }

    /// The analysis evidence last saved, if any.
    pub fn saved_analysis<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, JournalError> {
        let body: Option<String> = self
            .db
            .query_row("SELECT body FROM analysis WHERE only = 1", [], |r| r.get(0))
            .optional()?;
        body.map(|b| serde_json::from_str(&b).map_err(record(-1))).transpose()
    }

    pub fn save_deploy(&self, info: &DeployInfo) -> Result<(), JournalError> {
        let body = serde_json::to_string(info).map_err(record(info.id))?;
        self.db.execute(
            "INSERT INTO deploys (id, body) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET body = excluded.body",
            params![info.id, body],
        )?;
        Ok(())
    }

    /// Deploys, newest first.
    pub fn deploys(&self, limit: usize) -> Result<Vec<DeployInfo>, JournalError> {
        let mut stmt = self
            .db
            .prepare("SELECT id, body FROM deploys ORDER BY id DESC LIMIT ?1")?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row?;
            out.push(serde_json::from_str(&body).map_err(record(id))?);
        }
        Ok(out)
    }

    pub fn deploy(&self, id: i64) -> Result<Option<DeployInfo>, JournalError> {
        let body: Option<String> = self
            .db
            .query_row("SELECT body FROM deploys WHERE id = ?1", params![id], |r| r.get(0))
            .optional()?;
        body.map(|b| serde_json::from_str(&b).map_err(record(id))).transpose()
    }
}

/// The journal holds env values: it and its `-wal` and `-shm` files are mode 0600 (SQLite gives the latter the
/// main file's mode when it creates them).
fn secret_mode(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
    }
}

/// The deploy history saved in the journal at `path`, newest first, read without changing the file (for when
/// no control plane runs). None when there is no journal.
pub fn saved_history(path: &Path, limit: usize) -> Result<Option<Vec<DeployInfo>>, JournalError> {
    if !path.exists() {
        return Ok(None);
    }
    let db = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let found: i64 = db.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > FORMAT {
        return Err(JournalError::Newer {
            path: path.to_path_buf(),
            found,
        });
    }
    Journal { db }.deploys(limit).map(Some)
}

fn has_events(db: &Connection) -> Result<bool, JournalError> {
    Ok(db.query_row("SELECT EXISTS (SELECT 1 FROM events)", [], |r| r.get(0))?)
}

/// Brings a journal of format `from` (0 for a new file) to `FORMAT`, in one transaction.
fn upgrade(db: &mut Connection, from: i64) -> Result<(), JournalError> {
    let tx = db.transaction()?;
    if from < 1 {
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS events (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 at_ms INTEGER NOT NULL,
                 body TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS deploys (
                 id INTEGER PRIMARY KEY,
                 body TEXT NOT NULL
             );
             CREATE TABLE published (
                 only INTEGER PRIMARY KEY CHECK (only = 1),
                 seq INTEGER NOT NULL
             );
             -- Format 0 showed the whole journal's state: all of it counts as published.
             INSERT INTO published (only, seq) SELECT 1, COALESCE(MAX(seq), 0) FROM events;",
        )?;
    }
    if from < 2 {
        tx.execute_batch(
            "CREATE TABLE analysis (
                 only INTEGER PRIMARY KEY CHECK (only = 1),
                 at_ms INTEGER NOT NULL,
                 body TEXT NOT NULL
             );",
        )?;
    }
    tx.pragma_update(None, "user_version", FORMAT)?;
    tx.commit()?;
    Ok(())
}
