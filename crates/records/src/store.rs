//! The store: reads that upgrade on the way, compare-and-swap writes under the write gate, unknown fields kept.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::backend::Backend;
use crate::envelope::{Expect, Format, Stored, Write};
use crate::schema::{KindSchema, Schema};
use crate::{Error, limits, now_ms};

/// A typed record kind: the newest version this code knows.
pub trait Versioned: Serialize + DeserializeOwned {
    const KIND: &'static str;
    const VERSION: u32;
}

/// A record as a tree at a version, with what a compare-and-swap needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValueRecord {
    pub kind: String,
    pub key: String,
    /// The version `value` is at: the reader's version, or the stored one
    /// when a newer record was read by older code that may read it.
    pub version: u32,
    pub stored_version: u32,
    pub min_reader: u32,
    pub etag: i64,
    pub last_active: i64,
    pub writer: String,
    pub value: Value,
    /// The code version that read it.
    #[serde(skip)]
    pub reader: u32,
}

/// A typed record: the value this code works with, and the whole tree it
/// came from, so that fields this code does not declare are written back untouched.
#[derive(Debug, Clone)]
pub struct Record<T> {
    pub value: T,
    raw: ValueRecord,
}

impl<T> Record<T> {
    pub fn key(&self) -> &str {
        &self.raw.key
    }
    /// The version the record was stored at when read.
    pub fn stored_version(&self) -> u32 {
        self.raw.stored_version
    }
    /// The whole tree, with the fields this code does not know.
    pub fn raw(&self) -> &Value {
        &self.raw.value
    }
}

type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Records of every kind of a schema in one backend.
pub struct Store<B> {
    backend: B,
    schema: Schema,
    writer: String,
    format: Format,
    clock: Clock,
    gates: Mutex<Option<(Instant, BTreeMap<String, u32>)>>,
    gate_ttl: Duration,
}

impl<B> std::fmt::Debug for Store<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("writer", &self.writer)
            .field("format", &self.format)
            .finish()
    }
}

/// Fields a struct declares (its serialized names), read from serde's
/// `deserialize_struct` call without deserializing anything.
fn declared_fields<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
    struct Probe<'a>(&'a mut Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("probe")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Stop {
            Stop
        }
    }
    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = Some(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut out = None;
    let _ = T::deserialize(Probe(&mut out));
    out
}

/// Writes the fields `value` declares over `raw`, leaving every other field of `raw` as it is.
fn overlay<T: Serialize + DeserializeOwned>(raw: &mut Value, value: &T) -> Result<(), Error> {
    let new = serde_json::to_value(value).map_err(|e| Error::Type(e.to_string()))?;
    let Value::Object(new) = new else {
        *raw = new;
        return Ok(());
    };
    if !raw.is_object() {
        *raw = Value::Object(Default::default());
    }
    let obj = raw.as_object_mut().expect("made an object above");
    if let Some(fields) = declared_fields::<T>() {
        for f in fields {
            if !new.contains_key(*f) {
                obj.remove(*f);
            }
        }
    }
    for (k, v) in new {
        obj.insert(k, v);
    }
    Ok(())
}

impl<B: Backend> Store<B> {
    /// A store for code that writes as `writer` (its release id).
    pub fn new(backend: B, schema: Schema, writer: impl Into<String>) -> Store<B> {
        Store {
            backend,
            schema,
            writer: writer.into(),
            format: Format::Json,
            clock: Arc::new(now_ms),
            gates: Mutex::new(None),
            gate_ttl: Duration::from_secs(1),
        }
    }

    /// Encodes new writes with `format`.
    pub fn with_format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Uses another clock for last-active times and leases (milliseconds).
    pub fn with_clock(mut self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// How long a read of the write gates is reused (default 1 s).
    pub fn with_gate_ttl(mut self, ttl: Duration) -> Self {
        self.gate_ttl = ttl;
        self
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }
    pub fn schema(&self) -> &Schema {
        &self.schema
    }
    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// The write gate of a kind (`None`: no gate published).
    pub fn gate(&self, kind: &str) -> Result<Option<u32>, Error> {
        let mut cached = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some((at, g)) if at.elapsed() < self.gate_ttl => Ok(g.get(kind).copied()),
            _ => {
                let g = self.backend.gates()?;
                let out = g.get(kind).copied();
                *cached = Some((Instant::now(), g));
                Ok(out)
            }
        }
    }

    /// A kind's schema, after checking the name (a bad name is `Invalid`, an unknown one `UnknownKind`).
    fn kind_schema(&self, kind: &str) -> Result<&KindSchema, Error> {
        limits::kind(kind)?;
        self.schema.kind(kind)
    }

    /// Publishes a kind's write gate (what the control plane does as releases come and go); the
    /// gate is a version of the kind's chain.
    pub fn set_gate(&self, kind: &str, version: Option<u32>) -> Result<(), Error> {
        let ks = self.kind_schema(kind)?;
        if let Some(v) = version {
            if v < ks.first() {
                return Err(Error::GateTooLow {
                    kind: kind.into(),
                    gate: v,
                    first: ks.first(),
                });
            }
            if v > ks.head() {
                return Err(Error::invalid(
                    "write gate",
                    format!(
                        "{kind} version {v} is newer than the newest version {} this schema knows",
                        ks.head()
                    ),
                ));
            }
        }
        self.backend.set_gate(kind, version)?;
        *self.gates.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    fn decode(&self, s: &Stored) -> Result<Value, Error> {
        s.format.decode(&s.payload).map_err(|message| Error::Decode {
            kind: s.kind.clone(),
            key: s.key.clone(),
            message,
        })
    }

    /// Brings a stored record to what code knowing `reader` sees.
    pub fn view(&self, s: &Stored, reader: u32) -> Result<ValueRecord, Error> {
        let ks = self.schema.kind(&s.kind)?;
        ks.knows(reader)?;
        let mut value = self.decode(s)?;
        let version = if s.version <= reader {
            ks.convert(&mut value, s.version, reader)?;
            reader
        } else if s.min_reader <= reader {
            s.version
        } else {
            return Err(Error::TooNew {
                kind: s.kind.clone(),
                key: s.key.clone(),
                stored: s.version,
                min_reader: s.min_reader,
                reader,
            });
        };
        Ok(ValueRecord {
            kind: s.kind.clone(),
            key: s.key.clone(),
            version,
            stored_version: s.version,
            min_reader: s.min_reader,
            etag: s.etag,
            last_active: s.last_active,
            writer: s.writer.clone(),
            value,
            reader,
        })
    }

    /// Reads a record as code that knows version `reader` of its kind sees it.
    pub fn read_value(&self, kind: &str, key: &str, reader: u32) -> Result<Option<ValueRecord>, Error> {
        self.kind_schema(kind)?.knows(reader)?;
        limits::key(key)?;
        match self.backend.get(kind, key)? {
            None => Ok(None),
            Some(s) => self.view(&s, reader).map(Some),
        }
    }

    /// Writes `rec.value` (at `rec.version`) if the record still has
    /// `rec.etag`, downgrading to the write gate when needed; updates the etag.
    pub fn save_value(&self, rec: &mut ValueRecord) -> Result<(), Error> {
        let etag = self.put(rec, Expect::Etag(rec.etag))?;
        rec.etag = etag;
        Ok(())
    }

    /// Creates a record whose value is at version `at`.
    pub fn create_value(&self, kind: &str, key: &str, value: Value, at: u32) -> Result<ValueRecord, Error> {
        let mut rec = ValueRecord {
            kind: kind.into(),
            key: key.into(),
            version: at,
            stored_version: at,
            min_reader: at,
            etag: 0,
            last_active: 0,
            writer: self.writer.clone(),
            value,
            reader: at,
        };
        rec.etag = self.put(&mut rec, Expect::Absent)?;
        Ok(rec)
    }

    /// Refuses a write this code cannot stand behind, before anything is stored: a bad kind or key, a
    /// reader or version outside the chain, a value without the fields its version declares.
    fn check_write(&self, rec: &ValueRecord) -> Result<&KindSchema, Error> {
        let ks = self.kind_schema(&rec.kind)?;
        limits::key(&rec.key)?;
        ks.knows(rec.reader)?;
        let problems = if rec.version > rec.reader {
            // A newer record this code read: it goes back as it was stored, at the version and with
            // the readers it had (the etag proves nobody changed it since).
            if rec.version != rec.stored_version || rec.min_reader > rec.reader {
                return Err(Error::invalid(
                    "record version",
                    format!(
                        "version {} is newer than this code (version {}) and is not the version it read",
                        rec.version, rec.reader
                    ),
                ));
            }
            // Its fields are declared by a version this code does not know; it is still a record.
            match rec.value.is_object() {
                true => Vec::new(),
                false => vec!["a record is a JSON object".to_string()],
            }
        } else {
            ks.knows(rec.version)?;
            ks.check_fields(rec.version, &rec.value)
        };
        if !problems.is_empty() {
            return Err(Error::Payload {
                kind: rec.kind.clone(),
                version: rec.version,
                problems,
            });
        }
        Ok(ks)
    }

    fn put(&self, rec: &mut ValueRecord, expect: Expect) -> Result<i64, Error> {
        let ks = self.check_write(rec)?;
        let now = self.now();
        let (version, min_reader, tree) = if rec.version > rec.reader {
            (rec.version, rec.min_reader, None)
        } else {
            let target = ks.write_target(rec.version, self.gate(&rec.kind)?)?;
            let tree = if target != rec.version {
                let mut down = rec.value.clone();
                ks.convert(&mut down, rec.version, target)?;
                Some(down)
            } else {
                None
            };
            (target, ks.min_reader(target), tree)
        };
        let payload = self
            .format
            .encode(tree.as_ref().unwrap_or(&rec.value))
            .map_err(|e| Error::Type(e.to_string()))?;
        let w = Write {
            kind: rec.kind.clone(),
            key: rec.key.clone(),
            version,
            min_reader,
            format: self.format,
            payload,
            writer: self.writer.clone(),
            expect,
            last_active: Some(now),
            reader: Some(rec.reader),
        };
        match self.backend.write(&w)? {
            Some(etag) => {
                rec.stored_version = version;
                rec.min_reader = min_reader;
                rec.last_active = now;
                rec.writer = self.writer.clone();
                Ok(etag)
            }
            None => Err(self.why_refused(&rec.kind, &rec.key, rec.reader, expect)?),
        }
    }

    /// Tells a conflict from a record that became too new for this code.
    fn why_refused(&self, kind: &str, key: &str, reader: u32, expect: Expect) -> Result<Error, Error> {
        let (kind, key) = (kind.to_string(), key.to_string());
        Ok(match (self.backend.get(&kind, &key)?, expect) {
            (Some(_), Expect::Absent) => Error::Exists { kind, key },
            (None, Expect::Etag(_)) => Error::NotFound { kind, key },
            (Some(s), _) if s.version > reader && s.min_reader > reader => Error::TooNew {
                kind,
                key,
                stored: s.version,
                min_reader: s.min_reader,
                reader,
            },
            (_, Expect::Etag(etag)) => Error::Conflict { kind, key, etag },
            (None, Expect::Absent) => Error::Conflict { kind, key, etag: 0 },
        })
    }

    /// Reads a typed record, upgrading it on the way.
    pub fn get<T: Versioned>(&self, key: &str) -> Result<Option<Record<T>>, Error> {
        let Some(raw) = self.read_value(T::KIND, key, T::VERSION)? else {
            return Ok(None);
        };
        let value = serde_json::from_value(raw.value.clone()).map_err(|e| Error::Type(format!("{key}: {e}")))?;
        Ok(Some(Record { value, raw }))
    }

    /// Creates a typed record; `Exists` if the key is taken.
    pub fn create<T: Versioned>(&self, key: &str, value: T) -> Result<Record<T>, Error> {
        let tree = serde_json::to_value(&value).map_err(|e| Error::Type(e.to_string()))?;
        let raw = self.create_value(T::KIND, key, tree, T::VERSION)?;
        Ok(Record { value, raw })
    }

    /// Writes the typed value back over its raw tree (declared fields only)
    /// if nobody wrote the record since it was read.
    pub fn save<T: Versioned>(&self, rec: &mut Record<T>) -> Result<(), Error> {
        let mut raw = rec.raw.clone();
        overlay(&mut raw.value, &rec.value)?;
        self.save_value(&mut raw)?;
        rec.raw = raw;
        Ok(())
    }

    /// Read, change, compare-and-swap, retried on conflicts.
    pub fn update<T: Versioned>(&self, key: &str, mut change: impl FnMut(&mut T)) -> Result<Record<T>, Error> {
        let mut tries = 0;
        loop {
            let mut rec = self.get::<T>(key)?.ok_or_else(|| Error::NotFound {
                kind: T::KIND.into(),
                key: key.into(),
            })?;
            change(&mut rec.value);
            match self.save(&mut rec) {
                Err(Error::Conflict { .. }) if tries < 1000 => tries += 1,
                other => return other.map(|()| rec),
            }
        }
    }

    /// Takes or renews a lease on a record for `ttl` (a live server holds
    /// the records of its online players; the crawler leaves them alone).
    /// The ttl is 1 ms to [`crate::MAX_LEASE`]; anything else is refused, and the end time never overflows.
    pub fn lease(&self, kind: &str, key: &str, holder: &str, ttl: Duration) -> Result<bool, Error> {
        self.check_lease(kind, key, holder)?;
        let now = self.now();
        let until = limits::lease_until(now, ttl)?;
        Ok(self.backend.lease(kind, key, holder, until, now)?)
    }

    /// Gives a lease back (nothing happens if `holder` does not hold it).
    pub fn unlease(&self, kind: &str, key: &str, holder: &str) -> Result<(), Error> {
        self.check_lease(kind, key, holder)?;
        Ok(self.backend.unlease(kind, key, holder)?)
    }

    fn check_lease(&self, kind: &str, key: &str, holder: &str) -> Result<(), Error> {
        self.kind_schema(kind)?;
        limits::key(key)?;
        limits::holder(holder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Serialize, Deserialize)]
    struct P {
        name: String,
        #[serde(rename = "hp", skip_serializing_if = "Option::is_none")]
        health: Option<u32>,
    }

    #[test]
    fn declared_fields_come_from_serde_without_data() {
        assert_eq!(declared_fields::<P>(), Some(&["name", "hp"][..]));
        assert_eq!(declared_fields::<u32>(), None);
    }

    #[test]
    fn overlay_keeps_unknown_fields_and_removes_cleared_declared_ones() {
        let mut raw = json!({"name": "a", "hp": 3, "hat": "red", "nested": {"x": 1}});
        overlay(
            &mut raw,
            &P {
                name: "b".into(),
                health: None,
            },
        )
        .unwrap();
        assert_eq!(raw, json!({"name": "b", "hat": "red", "nested": {"x": 1}}));
    }
}
