//! Schema-versioned records: upgraded on read, written under a write gate, upgraded in bulk by a crawler.
//!
//! The pieces (all private; the surface is the `pub use` list below):
//! - `schema`: per kind, a chain of pure `v → v+1` upgraders (and optional
//!   downgraders) on a [`serde_json::Value`] tree; `steps` declares them in
//!   a TOML file of simple steps (with the `expr` language) for apps not written in Rust.
//! - [`Store`]: get/create/save/update of typed values ([`Versioned`]) or
//!   raw trees, every write a compare-and-swap on the etag, the raw tree
//!   kept beside the typed value so fields this code does not know survive,
//!   writes held at or below the kind's write gate, inputs checked against
//!   the limits in `limits`.
//! - `backend`: SQLite (the embedded default) and PostgreSQL behind [`Backend`].
//! - `crawl`: the resumable, throttled background upgrader ([`run_crawl`]).
//! - `service`: the same operations over HTTP for other languages ([`serve`]).
//! - [`migrate`]: expand/backfill/contract migrations of SQL tables (a namespace of its own).

mod backend;
mod crawl;
mod envelope;
mod expr;
mod limits;
pub mod migrate;
mod schema;
mod service;
mod steps;
mod store;
mod values;

#[cfg(test)]
mod testing;

pub use backend::{
    AnyBackend, BACKGROUND_APP, Backend, DbUrl, ScanQuery, StorageError, VersionCount, open, open_read_only,
};
pub use crawl::{CrawlOptions, CrawlState, CrawlStatus, Progress as CrawlProgress, request_pause, run as run_crawl};
pub use envelope::{Expect, Format, Stored, Write};
pub use limits::{
    MAX_BODY_BYTES, MAX_CRAWL_BATCH, MAX_CRAWL_RATE, MAX_HOLDER_BYTES, MAX_KEY_BYTES, MAX_KIND_BYTES, MAX_LEASE,
    MIN_CRAWL_RATE,
};
pub use schema::{FieldType, KindSchema, Schema};
pub use service::{KindStatus, kinds_status, serve};
pub use steps::{load as load_steps, parse as parse_steps};
pub use store::{Record, Store, ValueRecord, Versioned};

/// Errors of the records layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown record kind '{0}'")]
    UnknownKind(String),
    #[error("{kind} has no version {version} (versions {first} to {head} are known)")]
    UnknownVersion {
        kind: String,
        version: u32,
        first: u32,
        head: u32,
    },
    #[error("no upgrader from {kind} version {from} to the next")]
    NoUpgrader { kind: String, from: u32 },
    #[error("no downgrader from {kind} version {from} to the one before")]
    NoDowngrader { kind: String, from: u32 },
    #[error(
        "{kind}: the write gate is {gate} (what every live release reads), version {at} is not readable at {gate}, \
         and there is no downgrader from version {missing}; add one or wait for the old release to go"
    )]
    NoDowngraderForGate {
        kind: String,
        gate: u32,
        at: u32,
        missing: u32,
    },
    #[error("{kind}: the write gate {gate} is below the oldest version {first}")]
    GateTooLow { kind: String, gate: u32, first: u32 },
    #[error("{kind} version {from} → {to}: {message}")]
    Step {
        kind: String,
        from: u32,
        to: u32,
        message: String,
    },
    #[error(
        "{kind}/{key} is stored at version {stored}, which needs code that knows at least version {min_reader}; \
         this code knows version {reader}, so it refuses to read or overwrite it"
    )]
    TooNew {
        kind: String,
        key: String,
        stored: u32,
        min_reader: u32,
        reader: u32,
    },
    #[error("{kind}/{key}: the stored payload does not decode: {message}")]
    Decode { kind: String, key: String, message: String },
    #[error("{kind}/{key} changed since it was read (etag {etag}); read it again and retry")]
    Conflict { kind: String, key: String, etag: i64 },
    #[error("{kind}/{key} already exists")]
    Exists { kind: String, key: String },
    #[error("{kind}/{key} does not exist")]
    NotFound { kind: String, key: String },
    #[error("no crawl of {kind} to version {target}")]
    NoCrawl { kind: String, target: u32 },
    /// An input outside what the records layer accepts (see `limits`): refused before anything is stored.
    #[error("bad {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// A value that does not have the fields its version declares: refused before anything is stored.
    #[error("{kind} version {version} payload: {}", .problems.join("; "))]
    Payload {
        kind: String,
        version: u32,
        problems: Vec<String>,
    },
    #[error("the value does not fit the type: {0}")]
    Type(String),
    #[error("schema problems:\n  {}", .0.join("\n  "))]
    Schema(Vec<String>),
    /// A worker thread (a crawler's, or the service's blocking pool) panicked or vanished: a fault of this process.
    #[error("worker failed: {0}")]
    Worker(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Error {
    fn invalid(what: &'static str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            what,
            reason: reason.into(),
        }
    }
}

/// Milliseconds since the Unix epoch (the I/O shell's clock; pure parts take time as a parameter).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
