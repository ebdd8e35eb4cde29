//! The PostgreSQL backend: a small pool of clients with prepared statements, writes in one transaction per batch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};

use super::{Backend, ScanQuery, StorageError, VersionCount, sql};
use crate::crawl::{CrawlState, CrawlStatus};
use crate::envelope::{Expect, Format, Stored, Write};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL, key TEXT NOT NULL,
    version BIGINT NOT NULL, min_reader BIGINT NOT NULL, format BIGINT NOT NULL,
    payload BYTEA NOT NULL, etag BIGINT NOT NULL, last_active BIGINT NOT NULL, writer TEXT NOT NULL,
    UNIQUE (kind, key));
CREATE INDEX IF NOT EXISTS records_coldest ON records (kind, last_active, key);
CREATE INDEX IF NOT EXISTS records_by_id ON records (kind, id);
CREATE TABLE IF NOT EXISTS record_leases (
    kind TEXT NOT NULL, key TEXT NOT NULL, holder TEXT NOT NULL, expires BIGINT NOT NULL,
    PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS record_gates (kind TEXT PRIMARY KEY, version BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS record_crawls (
    kind TEXT NOT NULL, target BIGINT NOT NULL, status TEXT NOT NULL, pause_requested BIGINT NOT NULL,
    started_at BIGINT NOT NULL, max_id BIGINT NOT NULL, cursor_active BIGINT NOT NULL, cursor_key TEXT NOT NULL,
    total BIGINT NOT NULL, scanned BIGINT NOT NULL, upgraded BIGINT NOT NULL, skipped_leased BIGINT NOT NULL,
    conflicts BIGINT NOT NULL, failed BIGINT NOT NULL, batch_size BIGINT NOT NULL, updated_at BIGINT NOT NULL,
    finished_at BIGINT, PRIMARY KEY (kind, target));
";

/// Advisory lock key that serialises table creation between processes.
const SCHEMA_LOCK: i64 = 0x5_1_1_9_7_4_0_1;

struct Conn {
    client: Client,
    stmts: HashMap<String, Statement>,
}

impl Conn {
    fn st(&mut self, q: &str) -> Result<Statement, StorageError> {
        if let Some(s) = self.stmts.get(q) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(&sql::pg(q))?;
        self.stmts.insert(q.to_string(), s.clone());
        Ok(s)
    }
}

/// Records in a PostgreSQL database.
pub struct PgBackend {
    url: String,
    pool: Mutex<Vec<Conn>>,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("PgBackend").finish_non_exhaustive()
    }
}

fn stored(r: &Row) -> Stored {
    Stored {
        id: r.get(0),
        kind: r.get(1),
        key: r.get(2),
        version: r.get::<_, i64>(3) as u32,
        min_reader: r.get::<_, i64>(4) as u32,
        format: Format::from_code(r.get(5)).unwrap_or_default(),
        payload: r.get(6),
        etag: r.get(7),
        last_active: r.get(8),
        writer: r.get(9),
    }
}

fn crawl_row(r: &Row) -> CrawlState {
    CrawlState {
        kind: r.get(0),
        target: r.get::<_, i64>(1) as u32,
        status: r.get::<_, String>(2).parse().unwrap_or(CrawlStatus::Running),
        pause_requested: r.get::<_, i64>(3) != 0,
        started_at: r.get(4),
        max_id: r.get(5),
        cursor_active: r.get(6),
        cursor_key: r.get(7),
        total: r.get::<_, i64>(8) as u64,
        scanned: r.get::<_, i64>(9) as u64,
        upgraded: r.get::<_, i64>(10) as u64,
        skipped_leased: r.get::<_, i64>(11) as u64,
        conflicts: r.get::<_, i64>(12) as u64,
        failed: r.get::<_, i64>(13) as u64,
        batch_size: r.get::<_, i64>(14) as u32,
        updated_at: r.get(15),
        finished_at: r.get(16),
    }
}

impl PgBackend {
    /// Connects and creates the tables (serialised with an advisory lock).
    pub fn open(url: &str) -> Result<PgBackend, StorageError> {
        let mut client = Client::connect(url, NoTls)?;
        client.execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])?;
        let made = client.batch_execute(SCHEMA);
        client.execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])?;
        made?;
        Ok(PgBackend {
            url: url.to_string(),
            pool: Mutex::new(vec![Conn {
                client,
                stmts: HashMap::new(),
            }]),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T, StorageError>) -> Result<T, StorageError> {
        let taken = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut c = match taken {
            Some(c) => c,
            None => Conn {
                client: Client::connect(&self.url, NoTls)?,
                stmts: HashMap::new(),
            },
        };
        let out = f(&mut c);
        if !c.client.is_closed() {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < 16 {
                pool.push(c);
            }
        }
        out
    }

    fn rows(&self, q: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StorageError> {
        self.with(|c| {
            let st = c.st(q)?;
            Ok(c.client.query(&st, params)?)
        })
    }

    fn exec(&self, q: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StorageError> {
        self.with(|c| {
            let st = c.st(q)?;
            Ok(c.client.execute(&st, params)?)
        })
    }
}

impl Backend for PgBackend {
    fn get(&self, kind: &str, key: &str) -> Result<Option<Stored>, StorageError> {
        Ok(self.rows(sql::GET, &[&kind, &key])?.first().map(stored))
    }

    fn write_batch(&self, ws: &[Write], crawl: Option<&mut CrawlState>) -> Result<Vec<Option<i64>>, StorageError> {
        self.with(|c| {
            let insert = c.st(sql::INSERT)?;
            let update = c.st(sql::UPDATE)?;
            let progress = c.st(sql::SAVE_PROGRESS)?;
            let mut tx = c.client.transaction()?;
            let mut out = Vec::with_capacity(ws.len());
            for w in ws {
                let (version, min_reader, format) = (w.version as i64, w.min_reader as i64, w.format.code());
                out.push(match w.expect {
                    Expect::Absent => {
                        let at = w.last_active.unwrap_or(0);
                        let n = tx.execute(
                            &insert,
                            &[
                                &w.kind,
                                &w.key,
                                &version,
                                &min_reader,
                                &format,
                                &w.payload,
                                &at,
                                &w.writer,
                            ],
                        )?;
                        (n == 1).then_some(1)
                    }
                    Expect::Etag(etag) => {
                        let reader = w.reader.map(|r| r as i64);
                        tx.query_opt(
                            &update,
                            &[
                                &w.kind,
                                &w.key,
                                &version,
                                &min_reader,
                                &format,
                                &w.payload,
                                &etag,
                                &w.writer,
                                &w.last_active,
                                &reader,
                            ],
                        )?
                        .map(|r| r.get(0))
                    }
                });
            }
            if let Some(s) = crawl {
                s.upgraded += out.iter().filter(|r| r.is_some()).count() as u64;
                tx.execute(
                    &progress,
                    &[
                        &s.kind,
                        &(s.target as i64),
                        &s.status.as_str(),
                        &s.cursor_active,
                        &s.cursor_key,
                        &(s.scanned as i64),
                        &(s.upgraded as i64),
                        &(s.skipped_leased as i64),
                        &(s.conflicts as i64),
                        &(s.failed as i64),
                        &(s.batch_size as i64),
                        &s.updated_at,
                        &s.finished_at,
                    ],
                )?;
            }
            tx.commit()?;
            Ok(out)
        })
    }

    fn scan(&self, q: &ScanQuery<'_>) -> Result<Vec<Stored>, StorageError> {
        let rows = self.rows(
            sql::SCAN,
            &[
                &q.kind,
                &q.active_before,
                &q.after.0,
                &q.after.1,
                &(q.below as i64),
                &q.max_id,
                &(q.limit as i64),
            ],
        )?;
        Ok(rows.iter().map(stored).collect())
    }

    fn page(&self, kind: &str, after_id: i64, limit: usize) -> Result<Vec<Stored>, StorageError> {
        Ok(self
            .rows(sql::PAGE, &[&kind, &after_id, &(limit as i64)])?
            .iter()
            .map(stored)
            .collect())
    }

    fn max_id(&self, kind: &str) -> Result<i64, StorageError> {
        Ok(self.rows(sql::MAX_ID, &[&kind])?[0].get(0))
    }

    fn count_below(&self, kind: &str, below: u32, max_id: i64) -> Result<u64, StorageError> {
        Ok(self.rows(sql::COUNT_BELOW, &[&kind, &(below as i64), &max_id])?[0].get::<_, i64>(0) as u64)
    }

    fn counts(&self) -> Result<Vec<VersionCount>, StorageError> {
        Ok(self
            .rows(sql::COUNTS, &[])?
            .iter()
            .map(|r| VersionCount {
                kind: r.get(0),
                version: r.get::<_, i64>(1) as u32,
                records: r.get::<_, i64>(2) as u64,
            })
            .collect())
    }

    fn lease(&self, kind: &str, key: &str, holder: &str, until: i64, now: i64) -> Result<bool, StorageError> {
        Ok(self.exec(sql::LEASE, &[&kind, &key, &holder, &until, &now])? == 1)
    }

    fn unlease(&self, kind: &str, key: &str, holder: &str) -> Result<(), StorageError> {
        self.exec(sql::UNLEASE, &[&kind, &key, &holder]).map(|_| ())
    }

    fn leased(&self, kind: &str, keys: &[&str], now: i64) -> Result<HashSet<String>, StorageError> {
        if keys.is_empty() {
            return Ok(HashSet::new());
        }
        let rows = self.rows(
            "SELECT key FROM record_leases WHERE kind = ?1 AND key = ANY(?2) AND expires > ?3",
            &[&kind, &keys, &now],
        )?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    fn gates(&self) -> Result<BTreeMap<String, u32>, StorageError> {
        Ok(self
            .rows(sql::GATES, &[])?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u32))
            .collect())
    }

    fn set_gate(&self, kind: &str, version: Option<u32>) -> Result<(), StorageError> {
        match version {
            Some(v) => self.exec(sql::SET_GATE, &[&kind, &(v as i64)])?,
            None => self.exec(sql::DEL_GATE, &[&kind])?,
        };
        Ok(())
    }

    fn crawl(&self, kind: &str, target: u32) -> Result<Option<CrawlState>, StorageError> {
        let q = format!(
            "SELECT {} FROM record_crawls WHERE kind = ?1 AND target = ?2",
            sql::CRAWL_COLS
        );
        Ok(self.rows(&q, &[&kind, &(target as i64)])?.first().map(crawl_row))
    }

    fn crawls(&self) -> Result<Vec<CrawlState>, StorageError> {
        let q = format!("SELECT {} FROM record_crawls ORDER BY kind, target", sql::CRAWL_COLS);
        Ok(self.rows(&q, &[])?.iter().map(crawl_row).collect())
    }

    fn put_crawl(&self, s: &CrawlState) -> Result<(), StorageError> {
        self.exec(
            sql::PUT_CRAWL,
            &[
                &s.kind,
                &(s.target as i64),
                &s.status.as_str(),
                &(s.pause_requested as i64),
                &s.started_at,
                &s.max_id,
                &s.cursor_active,
                &s.cursor_key,
                &(s.total as i64),
                &(s.scanned as i64),
                &(s.upgraded as i64),
                &(s.skipped_leased as i64),
                &(s.conflicts as i64),
                &(s.failed as i64),
                &(s.batch_size as i64),
                &s.updated_at,
                &s.finished_at,
            ],
        )
        .map(|_| ())
    }

    fn request_pause(&self, kind: &str, target: u32, pause: bool) -> Result<bool, StorageError> {
        Ok(self.exec(sql::REQUEST_PAUSE, &[&kind, &(target as i64), &(pause as i64)])? == 1)
    }
}
