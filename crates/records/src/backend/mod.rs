//! The storage trait every backend implements, and the `open` that picks one from a URL.

pub(crate) mod cols;
mod postgres;
mod sqlite;

use std::collections::{BTreeMap, HashSet};

pub use self::cols::DbUrl;
pub use self::postgres::{BACKGROUND_APP, PgBackend};
pub use self::sqlite::SqliteBackend;
use crate::crawl::CrawlState;
use crate::envelope::{Stored, Write};

/// Errors of a storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {}", pg_message(.0))]
    Postgres(#[from] ::postgres::Error),
    #[error("{0}")]
    Other(String),
}

/// A PostgreSQL error with the server's message (its `Display` says only "db error").
pub fn pg_message(e: &::postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    }
}

/// Where the coldest-first scan of a crawl is.
#[derive(Debug, Clone)]
pub struct ScanQuery<'a> {
    pub kind: &'a str,
    /// Only records below this version.
    pub below: u32,
    /// Only records that existed when the crawl started.
    pub max_id: i64,
    /// Only records not touched by a server since the crawl started.
    pub active_before: i64,
    /// Strictly after this `(last_active, key)`.
    pub after: (i64, &'a str),
    pub limit: usize,
}

/// Records of one kind at one version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VersionCount {
    pub kind: String,
    pub version: u32,
    pub records: u64,
}

/// A store of record envelopes with compare-and-swap writes, leases, write
/// gates and crawl state. Every write is conditional on the etag it read.
pub trait Backend: Send + Sync {
    fn get(&self, kind: &str, key: &str) -> Result<Option<Stored>, StorageError>;
    /// One compare-and-swap write: `Some(new etag)`, or `None` when the
    /// expectation (etag, absence, readable by `reader`) did not hold.
    fn write(&self, w: &Write) -> Result<Option<i64>, StorageError> {
        Ok(self.write_batch(std::slice::from_ref(w), None)?.pop().flatten())
    }
    /// Several writes and (optionally) a crawl's progress in one
    /// transaction; the writes that succeed are added to `crawl.upgraded`
    /// before it is saved, so the count survives a kill exactly.
    fn write_batch(&self, ws: &[Write], crawl: Option<&mut CrawlState>) -> Result<Vec<Option<i64>>, StorageError>;
    fn scan(&self, q: &ScanQuery<'_>) -> Result<Vec<Stored>, StorageError>;
    /// Records of a kind in id order after `after_id` (for verify and bulk reads).
    fn page(&self, kind: &str, after_id: i64, limit: usize) -> Result<Vec<Stored>, StorageError>;
    fn max_id(&self, kind: &str) -> Result<i64, StorageError>;
    fn count_below(&self, kind: &str, below: u32, max_id: i64) -> Result<u64, StorageError>;
    fn counts(&self) -> Result<Vec<VersionCount>, StorageError>;

    /// Takes or renews the lease on a record until `until`; false if another holder has it.
    fn lease(&self, kind: &str, key: &str, holder: &str, until: i64, now: i64) -> Result<bool, StorageError>;
    fn unlease(&self, kind: &str, key: &str, holder: &str) -> Result<(), StorageError>;
    /// Which of `keys` are leased at `now`.
    fn leased(&self, kind: &str, keys: &[&str], now: i64) -> Result<HashSet<String>, StorageError>;

    fn gates(&self) -> Result<BTreeMap<String, u32>, StorageError>;
    fn set_gate(&self, kind: &str, version: Option<u32>) -> Result<(), StorageError>;

    fn crawl(&self, kind: &str, target: u32) -> Result<Option<CrawlState>, StorageError>;
    fn crawls(&self) -> Result<Vec<CrawlState>, StorageError>;
    /// Creates or replaces a crawl's whole state (a new crawl).
    fn put_crawl(&self, c: &CrawlState) -> Result<(), StorageError>;
    /// Asks a crawl to pause (`true`) or go on; the crawler reads it between batches.
    fn request_pause(&self, kind: &str, target: u32, pause: bool) -> Result<bool, StorageError>;

    /// Whether the database does its work in processes of its own (a
    /// server), beside the crawler's threads: then the background crawler
    /// keeps to one CPU and one statement at a time.
    fn out_of_process(&self) -> bool {
        false
    }

    /// Reclaims the space of row versions that writes replaced and refreshes
    /// the planner's statistics (PostgreSQL: `VACUUM (ANALYZE)` of the
    /// records table), in this handle's sessions: the crawler cleans up
    /// after itself as background work, before the server's autovacuum
    /// would do it at normal priority. False when nothing was done: nothing
    /// to do for this database, no permission (not the table's owner), or
    /// the table was busy.
    fn tidy(&self) -> Result<bool, StorageError> {
        Ok(false)
    }

    /// A second handle on the same database, with sessions of its own that
    /// the operating system treats as background work (nice 19, on `cpu`
    /// if given) where it can: a database server on this host whose
    /// processes this one may lower (same user or `CAP_SYS_NICE`). `None`
    /// where that does not apply (an embedded database, a remote server).
    fn background_twin(&self, _cpu: Option<usize>) -> Result<Option<Self>, StorageError>
    where
        Self: Sized,
    {
        Ok(None)
    }
}

/// Either backend, chosen by URL at run time.
#[derive(Debug)]
pub enum AnyBackend {
    Sqlite(SqliteBackend),
    Postgres(PgBackend),
}

/// Opens `sqlite:PATH` (or a bare path) or `postgres://...`, creating the tables.
pub fn open(url: &str) -> Result<AnyBackend, StorageError> {
    Ok(match cols::DbUrl::parse(url)? {
        cols::DbUrl::Postgres(u) => AnyBackend::Postgres(PgBackend::open(&u)?),
        cols::DbUrl::Sqlite(p) => AnyBackend::Sqlite(SqliteBackend::open(&p)?),
    })
}

/// Opens an existing database to read it only: no table is created and every write fails (`sqlite:PATH`, a bare
/// path, or `postgres://...`).
pub fn open_read_only(url: &str) -> Result<AnyBackend, StorageError> {
    Ok(match cols::DbUrl::parse(url)? {
        cols::DbUrl::Postgres(u) => AnyBackend::Postgres(PgBackend::open_read_only(&u)?),
        cols::DbUrl::Sqlite(p) => AnyBackend::Sqlite(SqliteBackend::open_read_only(&p)?),
    })
}

macro_rules! delegate {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            AnyBackend::Sqlite($b) => $e,
            AnyBackend::Postgres($b) => $e,
        }
    };
}

impl Backend for AnyBackend {
    fn get(&self, kind: &str, key: &str) -> Result<Option<Stored>, StorageError> {
        delegate!(self, b => b.get(kind, key))
    }
    fn write_batch(&self, ws: &[Write], crawl: Option<&mut CrawlState>) -> Result<Vec<Option<i64>>, StorageError> {
        delegate!(self, b => b.write_batch(ws, crawl))
    }
    fn scan(&self, q: &ScanQuery<'_>) -> Result<Vec<Stored>, StorageError> {
        delegate!(self, b => b.scan(q))
    }
    fn page(&self, kind: &str, after_id: i64, limit: usize) -> Result<Vec<Stored>, StorageError> {
        delegate!(self, b => b.page(kind, after_id, limit))
    }
    fn max_id(&self, kind: &str) -> Result<i64, StorageError> {
        delegate!(self, b => b.max_id(kind))
    }
    fn count_below(&self, kind: &str, below: u32, max_id: i64) -> Result<u64, StorageError> {
        delegate!(self, b => b.count_below(kind, below, max_id))
    }
    fn counts(&self) -> Result<Vec<VersionCount>, StorageError> {
        delegate!(self, b => b.counts())
    }
    fn lease(&self, kind: &str, key: &str, holder: &str, until: i64, now: i64) -> Result<bool, StorageError> {
        delegate!(self, b => b.lease(kind, key, holder, until, now))
    }
    fn unlease(&self, kind: &str, key: &str, holder: &str) -> Result<(), StorageError> {
        delegate!(self, b => b.unlease(kind, key, holder))
    }
    fn leased(&self, kind: &str, keys: &[&str], now: i64) -> Result<HashSet<String>, StorageError> {
        delegate!(self, b => b.leased(kind, keys, now))
    }
    fn gates(&self) -> Result<BTreeMap<String, u32>, StorageError> {
        delegate!(self, b => b.gates())
    }
    fn set_gate(&self, kind: &str, version: Option<u32>) -> Result<(), StorageError> {
        delegate!(self, b => b.set_gate(kind, version))
    }
    fn tidy(&self) -> Result<bool, StorageError> {
        delegate!(self, b => b.tidy())
    }
    fn crawl(&self, kind: &str, target: u32) -> Result<Option<CrawlState>, StorageError> {
        delegate!(self, b => b.crawl(kind, target))
    }
    fn crawls(&self) -> Result<Vec<CrawlState>, StorageError> {
        delegate!(self, b => b.crawls())
    }
    fn put_crawl(&self, c: &CrawlState) -> Result<(), StorageError> {
        delegate!(self, b => b.put_crawl(c))
    }
    fn request_pause(&self, kind: &str, target: u32, pause: bool) -> Result<bool, StorageError> {
        delegate!(self, b => b.request_pause(kind, target, pause))
    }
    fn out_of_process(&self) -> bool {
        delegate!(self, b => b.out_of_process())
    }
    fn background_twin(&self, cpu: Option<usize>) -> Result<Option<Self>, StorageError> {
        Ok(match self {
            AnyBackend::Sqlite(b) => b.background_twin(cpu)?.map(AnyBackend::Sqlite),
            AnyBackend::Postgres(b) => b.background_twin(cpu)?.map(AnyBackend::Postgres),
        })
    }
}

/// The SQL both backends share, written with `?N` placeholders (PostgreSQL gets `$N`).
pub(crate) mod sql {
    pub const GET: &str = "SELECT id, kind, key, version, min_reader, format, payload, etag, last_active, writer \
        FROM records WHERE kind = ?1 AND key = ?2";
    pub const INSERT: &str = "INSERT INTO records \
        (kind, key, version, min_reader, format, payload, etag, last_active, writer) \
        VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8) ON CONFLICT (kind, key) DO NOTHING";
    /// CAS update; `?9` = new last_active or NULL to keep, `?10` = the writer's reader version or NULL.
    pub const UPDATE: &str = "UPDATE records SET version = ?3, min_reader = ?4, format = ?5, payload = ?6, \
        etag = etag + 1, last_active = COALESCE(?9, last_active), writer = ?8 \
        WHERE kind = ?1 AND key = ?2 AND etag = ?7 \
        AND (CAST(?10 AS BIGINT) IS NULL OR version <= ?10 OR min_reader <= ?10) \
        RETURNING etag";
    pub const SCAN: &str = "SELECT id, kind, key, version, min_reader, format, payload, etag, last_active, writer \
        FROM records WHERE kind = ?1 AND last_active <= ?2 AND (last_active, key) > (?3, ?4) \
        AND version < ?5 AND id <= ?6 ORDER BY last_active, key LIMIT ?7";
    pub const PAGE: &str = "SELECT id, kind, key, version, min_reader, format, payload, etag, last_active, writer \
        FROM records WHERE kind = ?1 AND id > ?2 ORDER BY id LIMIT ?3";
    pub const MAX_ID: &str = "SELECT COALESCE(MAX(id), 0) FROM records WHERE kind = ?1";
    pub const COUNT_BELOW: &str = "SELECT COUNT(*) FROM records WHERE kind = ?1 AND version < ?2 AND id <= ?3";
    pub const COUNTS: &str =
        "SELECT kind, version, COUNT(*) FROM records GROUP BY kind, version ORDER BY kind, version";
    pub const LEASE: &str = "INSERT INTO record_leases (kind, key, holder, expires) VALUES (?1, ?2, ?3, ?4) \
        ON CONFLICT (kind, key) DO UPDATE SET holder = excluded.holder, expires = excluded.expires \
        WHERE record_leases.holder = excluded.holder OR record_leases.expires <= ?5";
    pub const UNLEASE: &str = "DELETE FROM record_leases WHERE kind = ?1 AND key = ?2 AND holder = ?3";
    pub const GATES: &str = "SELECT kind, version FROM record_gates";
    pub const SET_GATE: &str = "INSERT INTO record_gates (kind, version) VALUES (?1, ?2) \
        ON CONFLICT (kind) DO UPDATE SET version = excluded.version";
    pub const DEL_GATE: &str = "DELETE FROM record_gates WHERE kind = ?1";
    pub const CRAWL_COLS: &str = "kind, target, status, pause_requested, started_at, max_id, cursor_active, \
        cursor_key, \
        total, scanned, upgraded, skipped_leased, conflicts, failed, batch_size, updated_at, finished_at";
    pub const PUT_CRAWL: &str = "INSERT INTO record_crawls (kind, target, status, pause_requested, started_at, max_id, \
        cursor_active, cursor_key, total, scanned, upgraded, skipped_leased, conflicts, failed, batch_size, \
        updated_at, \
        finished_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) \
        ON CONFLICT (kind, target) DO UPDATE SET status = excluded.status, pause_requested = excluded.pause_requested, \
        started_at = excluded.started_at, max_id = excluded.max_id, cursor_active = excluded.cursor_active, \
        cursor_key = excluded.cursor_key, total = excluded.total, scanned = excluded.scanned, \
        upgraded = excluded.upgraded, skipped_leased = excluded.skipped_leased, conflicts = excluded.conflicts, \
        failed = excluded.failed, batch_size = excluded.batch_size, updated_at = excluded.updated_at, \
        finished_at = excluded.finished_at";
    /// A batch's progress; leaves `pause_requested` to whoever asked.
    pub const SAVE_PROGRESS: &str = "UPDATE record_crawls SET status = ?3, cursor_active = ?4, cursor_key = ?5, \
        scanned = ?6, upgraded = ?7, skipped_leased = ?8, conflicts = ?9, failed = ?10, batch_size = ?11, \
        updated_at = ?12, finished_at = ?13 WHERE kind = ?1 AND target = ?2";
    /// A crawl by `(kind, target)` (`?1`, `?2`) or all crawls.
    pub fn crawl_select(one: bool) -> String {
        let filter = if one {
            "WHERE kind = ?1 AND target = ?2"
        } else {
            "ORDER BY kind, target"
        };
        format!("SELECT {CRAWL_COLS} FROM record_crawls {filter}")
    }

    /// The parameters of `SCAN`.
    pub fn scan_params<'a>(q: &super::ScanQuery<'a>) -> Vec<super::cols::Val<'a>> {
        vec![
            q.kind.into(),
            q.active_before.into(),
            q.after.0.into(),
            q.after.1.into(),
            q.below.into(),
            q.max_id.into(),
            (q.limit as i64).into(),
        ]
    }

    pub const REQUEST_PAUSE: &str = "UPDATE record_crawls SET pause_requested = ?3 WHERE kind = ?1 AND target = ?2";

    /// `?N` → `$N` for PostgreSQL.
    pub fn pg(sql: &str) -> String {
        sql.replace('?', "$")
    }
}
