//! The stored envelope of a record: identity, version, self-describing payload, etag, last activity, writer.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a payload is encoded. Both keep field names; a positional format
/// would make old and new code disagree about what a slot means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    /// MessagePack with named fields (maps), never arrays of fields.
    Msgpack,
}

impl Format {
    pub fn code(self) -> i64 {
        match self {
            Format::Json => 0,
            Format::Msgpack => 1,
        }
    }
    pub fn from_code(c: i64) -> Option<Format> {
        match c {
            0 => Some(Format::Json),
            1 => Some(Format::Msgpack),
            _ => None,
        }
    }

    pub fn encode(self, v: &Value) -> Result<Vec<u8>, String> {
        match self {
            Format::Json => serde_json::to_vec(v).map_err(|e| e.to_string()),
            Format::Msgpack => rmp_serde::to_vec_named(v).map_err(|e| e.to_string()),
        }
    }

    pub fn decode(self, bytes: &[u8]) -> Result<Value, String> {
        match self {
            Format::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Format::Msgpack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "json" => Ok(Format::Json),
            "msgpack" | "messagepack" => Ok(Format::Msgpack),
            _ => Err(format!("unknown format '{s}' (json or msgpack)")),
        }
    }
}

/// A record as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Insertion order; a crawl only visits ids that existed when it started.
    pub id: i64,
    pub kind: String,
    pub key: String,
    pub version: u32,
    /// The oldest code version that can read this record.
    pub min_reader: u32,
    pub format: Format,
    pub payload: Vec<u8>,
    /// Compare-and-swap token; every write adds one.
    pub etag: i64,
    /// Milliseconds since the Unix epoch of the last write by a server (the crawler does not touch it).
    pub last_active: i64,
    /// Which code version last wrote it (a release id, or `crawler`).
    pub writer: String,
}

/// What a write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Create: no record with this key yet.
    Absent,
    /// Update: the record still has this etag.
    Etag(i64),
}

/// One compare-and-swap write.
#[derive(Debug, Clone)]
pub struct Write {
    pub kind: String,
    pub key: String,
    pub version: u32,
    pub min_reader: u32,
    pub format: Format,
    pub payload: Vec<u8>,
    pub writer: String,
    pub expect: Expect,
    /// New last-active time; `None` keeps the old one (the crawler's writes).
    pub last_active: Option<i64>,
    /// Refuse the write if the stored record cannot be read by this code version.
    pub reader: Option<u32>,
}
