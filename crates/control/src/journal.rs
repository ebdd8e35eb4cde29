//! The control plane's journal in SQLite: every state-changing event, written before its effects, and the deploy history.

use std::path::Path;

use rollout::Event;
use rusqlite::{Connection, params};
use wire::service::DeployInfo;

/// Why the journal failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("journal record {seq} is unreadable: {message}")]
    Record { seq: i64, message: String },
}

/// An append-only log of events plus the deploy history.
pub struct Journal {
    db: Connection,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Journal")
    }
}

impl Journal {
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let db = Connection::open(path)?;
        // WAL + full sync: an acknowledged append survives a crash of the process or the host.
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS events (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 at_ms INTEGER NOT NULL,
                 body TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS deploys (
                 id INTEGER PRIMARY KEY,
                 body TEXT NOT NULL
             );",
        )?;
        Ok(Journal { db })
    }

    /// Appends one event; returns once it is on disk.
    pub fn append(&self, event: &Event, at_ms: u64) -> Result<i64, JournalError> {
        let body = serde_json::to_string(event).map_err(|e| JournalError::Record {
            seq: -1,
            message: e.to_string(),
        })?;
        self.db.execute(
            "INSERT INTO events (at_ms, body) VALUES (?1, ?2)",
            params![at_ms as i64, body],
        )?;
        Ok(self.db.last_insert_rowid())
    }

    /// Every event in order, for replay.
    pub fn events(&self) -> Result<Vec<(Event, u64)>, JournalError> {
        let mut stmt = self.db.prepare("SELECT seq, at_ms, body FROM events ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, at, body) = row?;
            let ev: Event = serde_json::from_str(&body).map_err(|e| JournalError::Record {
                seq,
                message: e.to_string(),
            })?;
            out.push((ev, at as u64));
        }
        Ok(out)
    }

    pub fn save_deploy(&self, info: &DeployInfo) -> Result<(), JournalError> {
        let body = serde_json::to_string(info).map_err(|e| JournalError::Record {
            seq: info.id,
            message: e.to_string(),
        })?;
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
            out.push(serde_json::from_str(&body).map_err(|e| JournalError::Record {
                seq: id,
                message: e.to_string(),
            })?);
        }
        Ok(out)
    }

    pub fn deploy(&self, id: i64) -> Result<Option<DeployInfo>, JournalError> {
        let mut stmt = self.db.prepare("SELECT body FROM deploys WHERE id = ?1")?;
        let mut rows = stmt.query(params![id])?;
        match rows.next()? {
            Some(r) => {
                let body: String = r.get(0)?;
                Ok(Some(serde_json::from_str(&body).map_err(|e| JournalError::Record {
                    seq: id,
                    message: e.to_string(),
                })?))
            }
            None => Ok(None),
        }
    }
}
