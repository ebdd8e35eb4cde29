//! The SQLite backend: one file in WAL mode, a small pool of connections, writes in `BEGIN IMMEDIATE` transactions.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{Backend, ScanQuery, StorageError, VersionCount, sql};
use crate::crawl::{CrawlState, CrawlStatus};
use crate::envelope::{Expect, Format, Stored, Write};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL, key TEXT NOT NULL,
    version INTEGER NOT NULL, min_reader INTEGER NOT NULL, format INTEGER NOT NULL,
    payload BLOB NOT NULL, etag INTEGER NOT NULL, last_active INTEGER NOT NULL, writer TEXT NOT NULL,
    UNIQUE (kind, key));
CREATE INDEX IF NOT EXISTS records_coldest ON records (kind, last_active, key);
CREATE INDEX IF NOT EXISTS records_by_id ON records (kind, id);
CREATE TABLE IF NOT EXISTS record_leases (
    kind TEXT NOT NULL, key TEXT NOT NULL, holder TEXT NOT NULL, expires INTEGER NOT NULL,
    PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS record_gates (kind TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS record_crawls (
    kind TEXT NOT NULL, target INTEGER NOT NULL, status TEXT NOT NULL, pause_requested INTEGER NOT NULL,
    started_at INTEGER NOT NULL, max_id INTEGER NOT NULL, cursor_active INTEGER NOT NULL, cursor_key TEXT NOT NULL,
    total INTEGER NOT NULL, scanned INTEGER NOT NULL, upgraded INTEGER NOT NULL, skipped_leased INTEGER NOT NULL,
    conflicts INTEGER NOT NULL, failed INTEGER NOT NULL, batch_size INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    finished_at INTEGER, PRIMARY KEY (kind, target));
";

/// Records in one SQLite file.
#[derive(Debug)]
pub struct SqliteBackend {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
}

fn connect(path: &Path) -> Result<Connection, StorageError> {
    let c = Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(30))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(c)
}

pub(super) fn stored(r: &Row<'_>) -> rusqlite::Result<Stored> {
    let format: i64 = r.get(5)?;
    Ok(Stored {
        id: r.get(0)?,
        kind: r.get(1)?,
        key: r.get(2)?,
        version: r.get::<_, i64>(3)? as u32,
        min_reader: r.get::<_, i64>(4)? as u32,
        format: Format::from_code(format).unwrap_or_default(),
        payload: r.get(6)?,
        etag: r.get(7)?,
        last_active: r.get(8)?,
        writer: r.get(9)?,
    })
}

fn crawl_row(r: &Row<'_>) -> rusqlite::Result<CrawlState> {
    let status: String = r.get(2)?;
    Ok(CrawlState {
        kind: r.get(0)?,
        target: r.get::<_, i64>(1)? as u32,
        status: status.parse().unwrap_or(CrawlStatus::Running),
        pause_requested: r.get::<_, i64>(3)? != 0,
        started_at: r.get(4)?,
        max_id: r.get(5)?,
        cursor_active: r.get(6)?,
        cursor_key: r.get(7)?,
        total: r.get::<_, i64>(8)? as u64,
        scanned: r.get::<_, i64>(9)? as u64,
        upgraded: r.get::<_, i64>(10)? as u64,
        skipped_leased: r.get::<_, i64>(11)? as u64,
        conflicts: r.get::<_, i64>(12)? as u64,
        failed: r.get::<_, i64>(13)? as u64,
        batch_size: r.get::<_, i64>(14)? as u32,
        updated_at: r.get(15)?,
        finished_at: r.get(16)?,
    })
}

impl SqliteBackend {
    /// Opens (creating if needed) the database file and its tables.
    pub fn open(path: &Path) -> Result<SqliteBackend, StorageError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StorageError::Other(format!("cannot create {}: {e}", dir.display())))?;
        }
        let c = connect(path)?;
        c.execute_batch(SCHEMA)?;
        Ok(SqliteBackend {
            path: path.to_path_buf(),
            pool: Mutex::new(vec![c]),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, StorageError>) -> Result<T, StorageError> {
        let taken = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut c = match taken {
            Some(c) => c,
            None => connect(&self.path)?,
        };
        let out = f(&mut c);
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < 16 {
            pool.push(c);
        }
        out
    }
}

fn write_one(tx: &rusqlite::Transaction<'_>, w: &Write) -> Result<Option<i64>, StorageError> {
    Ok(match w.expect {
        Expect::Absent => {
            let n = tx.prepare_cached(sql::INSERT)?.execute(params![
                w.kind,
                w.key,
                w.version as i64,
                w.min_reader as i64,
                w.format.code(),
                w.payload,
                w.last_active.unwrap_or(0),
                w.writer
            ])?;
            (n == 1).then_some(1)
        }
        Expect::Etag(etag) => tx
            .prepare_cached(sql::UPDATE)?
            .query_row(
                params![
                    w.kind,
                    w.key,
                    w.version as i64,
                    w.min_reader as i64,
                    w.format.code(),
                    w.payload,
                    etag,
                    w.writer,
                    w.last_active,
                    w.reader.map(|r| r as i64)
                ],
                |r| r.get(0),
            )
            .optional()?,
    })
}

impl Backend for SqliteBackend {
    fn get(&self, kind: &str, key: &str) -> Result<Option<Stored>, StorageError> {
        self.with(|c| {
            Ok(c.prepare_cached(sql::GET)?
                .query_row(params![kind, key], stored)
                .optional()?)
        })
    }

    fn write_batch(&self, ws: &[Write], crawl: Option<&mut CrawlState>) -> Result<Vec<Option<i64>>, StorageError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let out = ws.iter().map(|w| write_one(&tx, w)).collect::<Result<Vec<_>, _>>()?;
            if let Some(s) = crawl {
                s.upgraded += out.iter().filter(|r| r.is_some()).count() as u64;
                tx.prepare_cached(sql::SAVE_PROGRESS)?.execute(params![
                    s.kind,
                    s.target as i64,
                    s.status.as_str(),
                    s.cursor_active,
                    s.cursor_key,
                    s.scanned as i64,
                    s.upgraded as i64,
                    s.skipped_leased as i64,
                    s.conflicts as i64,
                    s.failed as i64,
                    s.batch_size as i64,
                    s.updated_at,
                    s.finished_at
                ])?;
            }
            tx.commit()?;
            Ok(out)
        })
    }

    fn scan(&self, q: &ScanQuery<'_>) -> Result<Vec<Stored>, StorageError> {
        self.with(|c| {
            let mut st = c.prepare_cached(sql::SCAN)?;
            let rows = st.query_map(
                params![
                    q.kind,
                    q.active_before,
                    q.after.0,
                    q.after.1,
                    q.below as i64,
                    q.max_id,
                    q.limit as i64
                ],
                stored,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn page(&self, kind: &str, after_id: i64, limit: usize) -> Result<Vec<Stored>, StorageError> {
        self.with(|c| {
            let mut st = c.prepare_cached(sql::PAGE)?;
            let rows = st.query_map(params![kind, after_id, limit as i64], stored)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn max_id(&self, kind: &str) -> Result<i64, StorageError> {
        self.with(|c| Ok(c.prepare_cached(sql::MAX_ID)?.query_row(params![kind], |r| r.get(0))?))
    }

    fn count_below(&self, kind: &str, below: u32, max_id: i64) -> Result<u64, StorageError> {
        self.with(|c| {
            let n: i64 = c
                .prepare_cached(sql::COUNT_BELOW)?
                .query_row(params![kind, below as i64, max_id], |r| r.get(0))?;
            Ok(n as u64)
        })
    }

    fn counts(&self) -> Result<Vec<VersionCount>, StorageError> {
        self.with(|c| {
            let mut st = c.prepare_cached(sql::COUNTS)?;
            let rows = st.query_map([], |r| {
                Ok(VersionCount {
                    kind: r.get(0)?,
                    version: r.get::<_, i64>(1)? as u32,
                    records: r.get::<_, i64>(2)? as u64,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn lease(&self, kind: &str, key: &str, holder: &str, until: i64, now: i64) -> Result<bool, StorageError> {
        self.with(|c| {
            Ok(c.prepare_cached(sql::LEASE)?
                .execute(params![kind, key, holder, until, now])?
                == 1)
        })
    }

    fn unlease(&self, kind: &str, key: &str, holder: &str) -> Result<(), StorageError> {
        self.with(|c| {
            c.prepare_cached(sql::UNLEASE)?.execute(params![kind, key, holder])?;
            Ok(())
        })
    }

    fn leased(&self, kind: &str, keys: &[&str], now: i64) -> Result<HashSet<String>, StorageError> {
        if keys.is_empty() {
            return Ok(HashSet::new());
        }
        self.with(|c| {
            // Few live leases (the usual case): read them all at once.
            let live: i64 = c
                .prepare_cached("SELECT COUNT(*) FROM record_leases WHERE kind = ?1 AND expires > ?2")?
                .query_row(params![kind, now], |r| r.get(0))?;
            if live == 0 {
                return Ok(HashSet::new());
            }
            if live as usize <= keys.len() * 4 {
                let mut st = c.prepare_cached("SELECT key FROM record_leases WHERE kind = ?1 AND expires > ?2")?;
                let all: HashSet<String> = st
                    .query_map(params![kind, now], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                return Ok(keys
                    .iter()
                    .filter(|k| all.contains(**k))
                    .map(|k| k.to_string())
                    .collect());
            }
            let mut st =
                c.prepare_cached("SELECT 1 FROM record_leases WHERE kind = ?1 AND key = ?2 AND expires > ?3")?;
            let mut out = HashSet::new();
            for k in keys {
                if st.exists(params![kind, k, now])? {
                    out.insert(k.to_string());
                }
            }
            Ok(out)
        })
    }

    fn gates(&self) -> Result<BTreeMap<String, u32>, StorageError> {
        self.with(|c| {
            let mut st = c.prepare_cached(sql::GATES)?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u32)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn set_gate(&self, kind: &str, version: Option<u32>) -> Result<(), StorageError> {
        self.with(|c| {
            match version {
                Some(v) => c.prepare_cached(sql::SET_GATE)?.execute(params![kind, v as i64])?,
                None => c.prepare_cached(sql::DEL_GATE)?.execute(params![kind])?,
            };
            Ok(())
        })
    }

    fn crawl(&self, kind: &str, target: u32) -> Result<Option<CrawlState>, StorageError> {
        self.with(|c| {
            let q = format!(
                "SELECT {} FROM record_crawls WHERE kind = ?1 AND target = ?2",
                sql::CRAWL_COLS
            );
            Ok(c.prepare_cached(&q)?
                .query_row(params![kind, target as i64], crawl_row)
                .optional()?)
        })
    }

    fn crawls(&self) -> Result<Vec<CrawlState>, StorageError> {
        self.with(|c| {
            let q = format!("SELECT {} FROM record_crawls ORDER BY kind, target", sql::CRAWL_COLS);
            let mut st = c.prepare_cached(&q)?;
            let rows = st.query_map([], crawl_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn put_crawl(&self, s: &CrawlState) -> Result<(), StorageError> {
        self.with(|c| {
            c.prepare_cached(sql::PUT_CRAWL)?.execute(params![
                s.kind,
                s.target as i64,
                s.status.as_str(),
                s.pause_requested as i64,
                s.started_at,
                s.max_id,
                s.cursor_active,
                s.cursor_key,
                s.total as i64,
                s.scanned as i64,
                s.upgraded as i64,
                s.skipped_leased as i64,
                s.conflicts as i64,
                s.failed as i64,
                s.batch_size as i64,
                s.updated_at,
                s.finished_at
            ])?;
            Ok(())
        })
    }

    fn request_pause(&self, kind: &str, target: u32, pause: bool) -> Result<bool, StorageError> {
        self.with(|c| {
            Ok(c.prepare_cached(sql::REQUEST_PAUSE)?
                .execute(params![kind, target as i64, pause as i64])?
                == 1)
        })
    }
}
