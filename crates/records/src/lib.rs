//! Schema-versioned records: envelopes that keep any number of historical versions, upgrade on read, write under a gate, and a crawler that upgrades cold records in the background.
//!
//! The pieces:
//! - [`schema`]: per kind, a chain of pure `v → v+1` upgraders (and optional
//!   downgraders) on a [`serde_json::Value`] tree; [`steps`] declares them in
//!   a TOML file of simple steps for apps not written in Rust.
//! - [`store::Store`]: get/create/save/update of typed values ([`Versioned`])
//!   or raw trees, every write a compare-and-swap on the etag, the raw tree
//!   kept beside the typed value so fields this code does not know survive,
//!   and writes held at or below the kind's write gate.
//! - [`backend`]: SQLite (the embedded default) and PostgreSQL behind one trait.
//! - [`crawl`]: the resumable, throttled background upgrader.
//! - [`service`]: the same operations over HTTP for other languages.
//! - [`migrate`]: expand/backfill/contract migrations of SQL tables.

pub mod backend;
pub mod crawl;
pub mod envelope;
pub mod expr;
pub mod migrate;
pub mod schema;
pub mod service;
pub mod steps;
pub mod store;
pub mod values;

pub use backend::cols::DbUrl;
pub use backend::{AnyBackend, Backend, StorageError, open};
pub use envelope::{Expect, Format, Stored};
pub use schema::{FieldType, KindSchema, Schema};
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
    #[error("the value does not fit the type: {0}")]
    Type(String),
    #[error("schema problems:\n  {}", .0.join("\n  "))]
    Schema(Vec<String>),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Milliseconds since the Unix epoch (the I/O shell's clock; pure parts take time as a parameter).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
