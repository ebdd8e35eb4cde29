//! The SQLite backend: one private file in WAL mode, a small pool of connections, `BEGIN IMMEDIATE` writes.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::cols::{self, Val};
use super::{Backend, ScanQuery, StorageError, VersionCount, sql};
use crate::crawl::CrawlState;
use crate::envelope::{Expect, Stored, Write};

/// Records in one SQLite file.
#[derive(Debug)]
pub struct SqliteBackend {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
    /// Opened to look only: read-only connections, no tables made.
    read_only: bool,
}

/// A read-only connection: it cannot create the file, a table or anything else.
fn connect_read_only(path: &Path) -> Result<Connection, StorageError> {
    use rusqlite::OpenFlags;
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )?;
    c.busy_timeout(Duration::from_secs(30))?;
    Ok(c)
}

fn connect(path: &Path) -> Result<Connection, StorageError> {
    let c = Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(30))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(c)
}

impl SqliteBackend {
    /// Opens (creating if needed) the database file and its tables. The file holds player data: it is
    /// created mode 0600 (SQLite gives its `-wal` and `-shm` files the same mode), an existing one is
    /// tightened to 0600, and a folder created for it is 0700.
    pub fn open(path: &Path) -> Result<SqliteBackend, StorageError> {
        private_files(path)?;
        let c = connect(path)?;
        c.execute_batch(&cols::schema("INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER", "BLOB"))?;
        Ok(SqliteBackend {
            path: path.to_path_buf(),
            pool: Mutex::new(vec![c]),
            read_only: false,
        })
    }

    /// Opens an existing database file to read it only: nothing is created (not the file, not a table), and every
    /// write fails. For views such as the dashboard's Data page.
    pub fn open_read_only(path: &Path) -> Result<SqliteBackend, StorageError> {
        if !path.is_file() {
            return Err(StorageError::Other(format!(
                "{}: no records database yet",
                path.display()
            )));
        }
        let c = connect_read_only(path)?;
        Ok(SqliteBackend {
            path: path.to_path_buf(),
            pool: Mutex::new(vec![c]),
            read_only: true,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, StorageError>) -> Result<T, StorageError> {
        let taken = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut c = match taken {
            Some(c) => c,
            None if self.read_only => connect_read_only(&self.path)?,
            None => connect(&self.path)?,
        };
        let out = f(&mut c);
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < 16 {
            pool.push(c);
        }
        out
    }

    fn rows<T>(
        &self,
        q: &str,
        params: &[Val<'_>],
        row: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StorageError> {
        self.with(|c| {
            let mut st = c.prepare_cached(q)?;
            let rows = st.query_map(params_from_iter(params), row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn exec(&self, q: &str, params: &[Val<'_>]) -> Result<usize, StorageError> {
        self.with(|c| Ok(c.prepare_cached(q)?.execute(params_from_iter(params))?))
    }
}

/// Creates the database file (and its folder) private to this user, or makes an existing one so.
fn private_files(path: &Path) -> Result<(), StorageError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let fail = |what: &Path, e: std::io::Error| StorageError::Other(format!("cannot create {}: {e}", what.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail(dir, e))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| fail(path, e))?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = PathBuf::from(file);
        match std::fs::metadata(&file) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
                    StorageError::Other(format!("cannot make {} private (mode 0600): {e}", file.display()))
                })?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn write_one(tx: &rusqlite::Transaction<'_>, w: &Write) -> Result<Option<i64>, StorageError> {
    Ok(match w.expect {
        Expect::Absent => {
            let n = tx
                .prepare_cached(sql::INSERT)?
                .execute(params_from_iter(cols::write_params(w, None)))?;
            (n == 1).then_some(1)
        }
        Expect::Etag(etag) => tx
            .prepare_cached(sql::UPDATE)?
            .query_row(params_from_iter(cols::write_params(w, Some(etag))), |r| r.get(0))
            .optional()?,
    })
}

impl Backend for SqliteBackend {
    fn get(&self, kind: &str, key: &str) -> Result<Option<Stored>, StorageError> {
        Ok(self
            .rows(sql::GET, &[kind.into(), key.into()], |r| cols::stored(r))?
            .pop())
    }

    fn write_batch(&self, ws: &[Write], crawl: Option<&mut CrawlState>) -> Result<Vec<Option<i64>>, StorageError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let out = ws.iter().map(|w| write_one(&tx, w)).collect::<Result<Vec<_>, _>>()?;
            if let Some(s) = crawl {
                s.upgraded += out.iter().filter(|r| r.is_some()).count() as u64;
                tx.prepare_cached(sql::SAVE_PROGRESS)?
                    .execute(params_from_iter(cols::progress_params(s)))?;
            }
            tx.commit()?;
            Ok(out)
        })
    }

    fn scan(&self, q: &ScanQuery<'_>) -> Result<Vec<Stored>, StorageError> {
        self.rows(sql::SCAN, &sql::scan_params(q), |r| cols::stored(r))
    }

    fn page(&self, kind: &str, after_id: i64, limit: usize) -> Result<Vec<Stored>, StorageError> {
        self.rows(sql::PAGE, &[kind.into(), after_id.into(), (limit as i64).into()], |r| {
            cols::stored(r)
        })
    }

    fn max_id(&self, kind: &str) -> Result<i64, StorageError> {
        Ok(self.rows(sql::MAX_ID, &[kind.into()], |r| r.get(0))?[0])
    }

    fn count_below(&self, kind: &str, below: u32, max_id: i64) -> Result<u64, StorageError> {
        let n: i64 = self.rows(sql::COUNT_BELOW, &[kind.into(), below.into(), max_id.into()], |r| {
            r.get(0)
        })?[0];
        Ok(n as u64)
    }

    fn counts(&self) -> Result<Vec<VersionCount>, StorageError> {
        self.rows(sql::COUNTS, &[], |r| {
            Ok(VersionCount {
                kind: r.get(0)?,
                version: r.get::<_, i64>(1)? as u32,
                records: r.get::<_, i64>(2)? as u64,
            })
        })
    }

    fn lease(&self, kind: &str, key: &str, holder: &str, until: i64, now: i64) -> Result<bool, StorageError> {
        Ok(self.exec(
            sql::LEASE,
            &[kind.into(), key.into(), holder.into(), until.into(), now.into()],
        )? == 1)
    }

    fn unlease(&self, kind: &str, key: &str, holder: &str) -> Result<(), StorageError> {
        self.exec(sql::UNLEASE, &[kind.into(), key.into(), holder.into()])
            .map(|_| ())
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
        Ok(self
            .rows(sql::GATES, &[], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u32))
            })?
            .into_iter()
            .collect())
    }

    fn set_gate(&self, kind: &str, version: Option<u32>) -> Result<(), StorageError> {
        match version {
            Some(v) => self.exec(sql::SET_GATE, &[kind.into(), v.into()])?,
            None => self.exec(sql::DEL_GATE, &[kind.into()])?,
        };
        Ok(())
    }

    fn crawl(&self, kind: &str, target: u32) -> Result<Option<CrawlState>, StorageError> {
        Ok(self
            .rows(&sql::crawl_select(true), &[kind.into(), target.into()], |r| {
                cols::crawl(r)
            })?
            .pop())
    }

    fn crawls(&self) -> Result<Vec<CrawlState>, StorageError> {
        self.rows(&sql::crawl_select(false), &[], |r| cols::crawl(r))
    }

    fn put_crawl(&self, s: &CrawlState) -> Result<(), StorageError> {
        self.exec(sql::PUT_CRAWL, &cols::crawl_params(s)).map(|_| ())
    }

    fn request_pause(&self, kind: &str, target: u32, pause: bool) -> Result<bool, StorageError> {
        Ok(self.exec(sql::REQUEST_PAUSE, &[kind.into(), target.into(), (pause as i64).into()])? == 1)
    }
}
