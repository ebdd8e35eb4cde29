//! What both SQL drivers share: the tables, the database URL, rows read as records or crawls, parameter lists.

use std::path::PathBuf;

use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use rusqlite::types::ToSqlOutput;

use super::StorageError;
use crate::crawl::{CrawlState, CrawlStatus};
use crate::envelope::{Format, Stored, Write};

/// The tables, with the column types each dialect spells differently.
pub fn schema(id: &str, int: &str, blob: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS records (
    id {id},
    kind TEXT NOT NULL, key TEXT NOT NULL,
    version {int} NOT NULL, min_reader {int} NOT NULL, format {int} NOT NULL,
    payload {blob} NOT NULL, etag {int} NOT NULL, last_active {int} NOT NULL, writer TEXT NOT NULL,
    UNIQUE (kind, key));
CREATE INDEX IF NOT EXISTS records_coldest ON records (kind, last_active, key);
CREATE INDEX IF NOT EXISTS records_by_id ON records (kind, id);
CREATE TABLE IF NOT EXISTS record_leases (
    kind TEXT NOT NULL, key TEXT NOT NULL, holder TEXT NOT NULL, expires {int} NOT NULL,
    PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS record_gates (kind TEXT PRIMARY KEY, version {int} NOT NULL);
CREATE TABLE IF NOT EXISTS record_crawls (
    kind TEXT NOT NULL, target {int} NOT NULL, status TEXT NOT NULL, pause_requested {int} NOT NULL,
    started_at {int} NOT NULL, max_id {int} NOT NULL, cursor_active {int} NOT NULL, cursor_key TEXT NOT NULL,
    total {int} NOT NULL, scanned {int} NOT NULL, upgraded {int} NOT NULL, skipped_leased {int} NOT NULL,
    conflicts {int} NOT NULL, failed {int} NOT NULL, batch_size {int} NOT NULL, updated_at {int} NOT NULL,
    finished_at {int}, PRIMARY KEY (kind, target));"
    )
}

/// A database URL: `sqlite:PATH` (or a bare path) or `postgres://...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DbUrl {
    pub fn parse(url: &str) -> Result<DbUrl, StorageError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DbUrl::Postgres(url.to_string()));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or(url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        if path.is_empty() {
            return Err(StorageError::Other(
                "empty database path; use sqlite:PATH or postgres://...".into(),
            ));
        }
        Ok(DbUrl::Sqlite(PathBuf::from(path)))
    }
}

/// Reading a column by position, whichever driver the row came from.
pub trait Cols {
    type Err: Into<StorageError>;
    fn int(&self, i: usize) -> Result<i64, Self::Err>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, Self::Err>;
    fn text(&self, i: usize) -> Result<String, Self::Err>;
    fn bytes(&self, i: usize) -> Result<Vec<u8>, Self::Err>;
}

impl Cols for rusqlite::Row<'_> {
    type Err = rusqlite::Error;
    fn int(&self, i: usize) -> rusqlite::Result<i64> {
        self.get(i)
    }
    fn opt_int(&self, i: usize) -> rusqlite::Result<Option<i64>> {
        self.get(i)
    }
    fn text(&self, i: usize) -> rusqlite::Result<String> {
        self.get(i)
    }
    fn bytes(&self, i: usize) -> rusqlite::Result<Vec<u8>> {
        self.get(i)
    }
}

impl Cols for postgres::Row {
    type Err = postgres::Error;
    fn int(&self, i: usize) -> Result<i64, postgres::Error> {
        self.try_get(i)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, postgres::Error> {
        self.try_get(i)
    }
    fn text(&self, i: usize) -> Result<String, postgres::Error> {
        self.try_get(i)
    }
    fn bytes(&self, i: usize) -> Result<Vec<u8>, postgres::Error> {
        self.try_get(i)
    }
}

/// A row of `sql::RECORD_COLS`.
pub fn stored<R: Cols>(r: &R) -> Result<Stored, R::Err> {
    Ok(Stored {
        id: r.int(0)?,
        kind: r.text(1)?,
        key: r.text(2)?,
        version: r.int(3)? as u32,
        min_reader: r.int(4)? as u32,
        format: Format::from_code(r.int(5)?).unwrap_or_default(),
        payload: r.bytes(6)?,
        etag: r.int(7)?,
        last_active: r.int(8)?,
        writer: r.text(9)?,
    })
}

/// A row of `sql::CRAWL_COLS`.
pub fn crawl<R: Cols>(r: &R) -> Result<CrawlState, R::Err> {
    Ok(CrawlState {
        kind: r.text(0)?,
        target: r.int(1)? as u32,
        status: r.text(2)?.parse().unwrap_or(CrawlStatus::Running),
        pause_requested: r.int(3)? != 0,
        started_at: r.int(4)?,
        max_id: r.int(5)?,
        cursor_active: r.int(6)?,
        cursor_key: r.text(7)?,
        total: r.int(8)? as u64,
        scanned: r.int(9)? as u64,
        upgraded: r.int(10)? as u64,
        skipped_leased: r.int(11)? as u64,
        conflicts: r.int(12)? as u64,
        failed: r.int(13)? as u64,
        batch_size: r.int(14)? as u32,
        updated_at: r.int(15)?,
        finished_at: r.opt_int(16)?,
    })
}

/// One SQL parameter, bindable by both drivers (borrowing: no payload copies).
#[derive(Debug, Clone)]
pub enum Val<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(&'a str),
    Bytes(&'a [u8]),
}

impl From<i64> for Val<'_> {
    fn from(v: i64) -> Self {
        Val::Int(v)
    }
}
impl From<u32> for Val<'_> {
    fn from(v: u32) -> Self {
        Val::Int(v as i64)
    }
}
impl From<u64> for Val<'_> {
    fn from(v: u64) -> Self {
        Val::Int(v as i64)
    }
}
impl From<Option<i64>> for Val<'_> {
    fn from(v: Option<i64>) -> Self {
        Val::OptInt(v)
    }
}
impl<'a> From<&'a str> for Val<'a> {
    fn from(v: &'a str) -> Self {
        Val::Text(v)
    }
}

impl rusqlite::ToSql for Val<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Val::Int(i) => rusqlite::ToSql::to_sql(i),
            Val::OptInt(o) => rusqlite::ToSql::to_sql(o),
            Val::Text(s) => rusqlite::ToSql::to_sql(s),
            Val::Bytes(b) => rusqlite::ToSql::to_sql(b),
        }
    }
}

impl ToSql for Val<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Val::Int(i) => i.to_sql(ty, out),
            Val::OptInt(o) => o.to_sql(ty, out),
            Val::Text(s) => s.to_sql(ty, out),
            Val::Bytes(b) => b.to_sql(ty, out),
        }
    }
    fn accepts(ty: &Type) -> bool {
        <i64 as ToSql>::accepts(ty) || <String as ToSql>::accepts(ty) || <Vec<u8> as ToSql>::accepts(ty)
    }
    to_sql_checked!();
}

/// The parameters of `sql::INSERT` (with `Expect::Absent`) or `sql::UPDATE` (with the etag).
pub fn write_params(w: &Write, etag: Option<i64>) -> Vec<Val<'_>> {
    let mut v = vec![
        Val::from(w.kind.as_str()),
        Val::from(w.key.as_str()),
        Val::from(w.version),
        Val::from(w.min_reader),
        Val::from(w.format.code()),
        Val::Bytes(&w.payload),
    ];
    match etag {
        None => v.extend([Val::from(w.last_active.unwrap_or(0)), Val::from(w.writer.as_str())]),
        Some(etag) => v.extend([
            Val::from(etag),
            Val::from(w.writer.as_str()),
            Val::from(w.last_active),
            Val::from(w.reader.map(|r| r as i64)),
        ]),
    }
    v
}

/// The parameters of `sql::PUT_CRAWL`.
pub fn crawl_params(s: &CrawlState) -> Vec<Val<'_>> {
    vec![
        Val::from(s.kind.as_str()),
        Val::from(s.target),
        Val::from(s.status.as_str()),
        Val::from(s.pause_requested as i64),
        Val::from(s.started_at),
        Val::from(s.max_id),
        Val::from(s.cursor_active),
        Val::from(s.cursor_key.as_str()),
        Val::from(s.total),
        Val::from(s.scanned),
        Val::from(s.upgraded),
        Val::from(s.skipped_leased),
        Val::from(s.conflicts),
        Val::from(s.failed),
        Val::from(s.batch_size),
        Val::from(s.updated_at),
        Val::from(s.finished_at),
    ]
}

/// The parameters of `sql::SAVE_PROGRESS`.
pub fn progress_params(s: &CrawlState) -> Vec<Val<'_>> {
    vec![
        Val::from(s.kind.as_str()),
        Val::from(s.target),
        Val::from(s.status.as_str()),
        Val::from(s.cursor_active),
        Val::from(s.cursor_key.as_str()),
        Val::from(s.scanned),
        Val::from(s.upgraded),
        Val::from(s.skipped_leased),
        Val::from(s.conflicts),
        Val::from(s.failed),
        Val::from(s.batch_size),
        Val::from(s.updated_at),
        Val::from(s.finished_at),
    ]
}
