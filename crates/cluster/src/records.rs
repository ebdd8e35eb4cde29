//! The values slipway stores in etcd: JSON with a `format` number, each checked on read (size, shape,
//! format, names, route table validity). A bad value is refused with its reason and [`LastGood`] keeps
//! serving what was good before: a value written by hand can never make a host change course.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use wire::RouteTable;

use crate::error::EtcdError;
use crate::keys::valid_name;

/// The format every record is written in, and the newest this code reads.
pub const FORMAT: u32 = 1;

/// The largest value read (etcd's default request limit is 1.5 MiB).
pub const MAX_VALUE: usize = 1 << 20;

/// `hosts/<name>`: a joined host, under its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRecord {
    pub format: u32,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When the host last wrote this record (Unix milliseconds); its lease's keep-alive is the liveness.
    pub heartbeat_ms: u64,
}

/// `desired/<host>`: how many instances of which release the host's agent should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredRecord {
    pub format: u32,
    /// Raised by the leader with every change.
    pub generation: u64,
    /// Release id → instance count.
    #[serde(default)]
    pub releases: BTreeMap<String, u32>,
}

/// `routes`: the route table every router of the cluster serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesRecord {
    pub format: u32,
    /// The cluster's table generation, raised by the leader with every change (not the routers' own counter).
    pub generation: u64,
    pub table: RouteTable,
}

/// `observed/<host>`: what the host serves and runs, under its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservedRecord {
    pub format: u32,
    /// The cluster routes generation its router confirmed (0: none yet).
    pub routes_generation: u64,
    /// The desired generation its agent converged to (0: none yet).
    pub desired_generation: u64,
    /// Unix milliseconds of this observation.
    pub at_ms: u64,
    /// Why the host is not converged, if it is not (etcd or a local part unreachable, a refused value, ...).
    #[serde(default)]
    pub note: Option<String>,
}

/// A value slipway stores in etcd: its format number and the checks beyond its shape.
pub trait Record: Serialize + DeserializeOwned + Clone {
    /// What the record is, for reasons ("host record").
    const WHAT: &'static str;
    fn format(&self) -> u32;
    /// Every problem of a value that has the right shape, joined.
    fn check(&self) -> Result<(), String>;
}

fn check_name(what: &str, name: &str, problems: &mut Vec<String>) {
    if !valid_name(name) {
        problems.push(format!("{what} {name:?} is not a valid name"));
    }
}

fn joined(problems: Vec<String>) -> Result<(), String> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

impl Record for HostRecord {
    const WHAT: &'static str = "host record";
    fn format(&self) -> u32 {
        self.format
    }
    fn check(&self) -> Result<(), String> {
        let mut p = Vec::new();
        check_name("host", &self.name, &mut p);
        for (k, v) in &self.labels {
            check_name("label", k, &mut p);
            if v.len() > 253 || v.chars().any(char::is_control) {
                p.push(format!("label {k}'s value is over 253 bytes or has control characters"));
            }
        }
        joined(p)
    }
}

impl Record for DesiredRecord {
    const WHAT: &'static str = "desired instances";
    fn format(&self) -> u32 {
        self.format
    }
    fn check(&self) -> Result<(), String> {
        let mut p = Vec::new();
        for (release, count) in &self.releases {
            if release.is_empty() || release.len() > 128 || release.contains(['/', '\0']) {
                p.push(format!("release id {release:?} is not valid"));
            }
            if *count > 10_000 {
                p.push(format!("release {release}: {count} instances is over 10000"));
            }
        }
        joined(p)
    }
}

impl Record for RoutesRecord {
    const WHAT: &'static str = "route table";
    fn format(&self) -> u32 {
        self.format
    }
    fn check(&self) -> Result<(), String> {
        self.table.validate().map_err(|p| p.to_string())
    }
}

impl Record for ObservedRecord {
    const WHAT: &'static str = "observed state";
    fn format(&self) -> u32 {
        self.format
    }
    fn check(&self) -> Result<(), String> {
        match &self.note {
            Some(n) if n.len() > 4096 => Err("note is over 4096 bytes".into()),
            _ => Ok(()),
        }
    }
}

#[derive(Deserialize)]
struct FormatOnly {
    format: Option<serde_json::Value>,
}

/// Decodes and checks the value stored at `key`; every refusal is [`EtcdError::BadValue`] with the reason.
pub fn decode<T: Record>(key: &str, bytes: &[u8]) -> Result<T, EtcdError> {
    let bad = |reason: String| EtcdError::BadValue {
        key: key.to_string(),
        reason: format!("{}: {reason}", T::WHAT),
    };
    if bytes.len() > MAX_VALUE {
        return Err(bad(format!("{} bytes is over the limit of {MAX_VALUE}", bytes.len())));
    }
    let head: FormatOnly = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    match head.format.as_ref().and_then(serde_json::Value::as_u64) {
        None => return Err(bad("no format number".into())),
        Some(f) if f > u64::from(FORMAT) => {
            return Err(bad(format!("format {f} is newer than this slipway reads ({FORMAT})")));
        }
        Some(0) => return Err(bad("format 0 does not exist".into())),
        Some(_) => {}
    }
    let value: T = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    value.check().map_err(bad)?;
    Ok(value)
}

/// Encodes a record for etcd (always at [`FORMAT`]).
pub fn encode<T: Record>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("a record serializes")
}

/// The last value of one key that passed [`decode`], and the last refusal: a bad value leaves what is served
/// unchanged.
#[derive(Debug, Clone)]
pub struct LastGood<T> {
    good: Option<(T, i64)>,
    refused: Option<(i64, String)>,
}

impl<T> Default for LastGood<T> {
    fn default() -> Self {
        LastGood {
            good: None,
            refused: None,
        }
    }
}

impl<T: Record> LastGood<T> {
    /// Offers the value read at `mod_revision`: `Ok(true)` when it is new and good (now the value),
    /// `Ok(false)` when it is what we have, `Err(reason)` when refused (logged; the last good value stays).
    pub fn offer(&mut self, key: &str, bytes: &[u8], mod_revision: i64) -> Result<bool, String> {
        if self.good.as_ref().is_some_and(|(_, r)| *r >= mod_revision) {
            return Ok(false);
        }
        match decode::<T>(key, bytes) {
            Ok(v) => {
                self.good = Some((v, mod_revision));
                self.refused = None;
                Ok(true)
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(key, revision = mod_revision, %reason, "refused a value from etcd; keeping the last good one");
                self.refused = Some((mod_revision, reason.clone()));
                Err(reason)
            }
        }
    }

    /// The last good value.
    pub fn get(&self) -> Option<&T> {
        self.good.as_ref().map(|(v, _)| v)
    }

    /// The last refusal since the last good value: its revision and reason.
    pub fn refused(&self) -> Option<&(i64, String)> {
        self.refused.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn routes(generation: u64) -> RoutesRecord {
        RoutesRecord {
            format: FORMAT,
            generation,
            table: RouteTable::default(),
        }
    }

    #[test]
    fn a_bad_value_is_refused_with_its_reason_and_the_good_one_stays() {
        let mut lg = LastGood::<RoutesRecord>::default();
        assert_eq!(lg.offer("/k", &encode(&routes(1)), 5), Ok(true));
        for (bad, why) in [
            (&b"{not json"[..], "not JSON"),
            (br#"{"generation":2,"table":{}}"#, "no format number"),
            (
                br#"{"format":2,"generation":2,"table":{}}"#,
                "newer than this slipway reads",
            ),
            (br#"{"format":1,"generation":2,"table":{},"extra":1}"#, "unknown field"),
            (br#"{"format":1,"generation":"2","table":{}}"#, "invalid type"),
        ] {
            let err = lg.offer("/k", bad, 6).unwrap_err();
            assert!(err.contains(why) && err.contains("/k"), "{err}");
            assert_eq!(lg.get(), Some(&routes(1)));
            assert_eq!(lg.refused().map(|r| r.0), Some(6));
        }
        assert_eq!(
            lg.offer("/k", &encode(&routes(1)), 5),
            Ok(false),
            "an old revision changes nothing"
        );
        assert_eq!(lg.offer("/k", &encode(&routes(3)), 7), Ok(true));
        assert!(lg.refused().is_none());
    }

    #[test]
    fn an_invalid_route_table_is_refused_though_it_parses() {
        let bad = br#"{"format":1,"generation":1,"table":{"release":[{"id":"a","weight":1},{"id":"a","weight":1}]}}"#;
        let err = decode::<RoutesRecord>("/r", bad).unwrap_err().to_string();
        assert!(err.contains("route table"), "{err}");
    }

    #[test]
    fn a_host_record_with_a_bad_name_or_label_is_refused() {
        let bad = br#"{"format":1,"name":"H 1","labels":{"zone":"a\u0000"},"heartbeat_ms":1}"#;
        let err = decode::<HostRecord>("/h", bad).unwrap_err().to_string();
        assert!(err.contains("\"H 1\"") && err.contains("label zone"), "{err}");
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9._-]{0,20}"
    }

    fn host() -> impl Strategy<Value = HostRecord> {
        (
            name(),
            proptest::collection::btree_map(name(), "[ -~]{0,30}", 0..4),
            any::<u64>(),
        )
            .prop_map(|(name, labels, heartbeat_ms)| HostRecord {
                format: FORMAT,
                name,
                labels,
                heartbeat_ms,
            })
    }

    fn desired() -> impl Strategy<Value = DesiredRecord> {
        (
            any::<u64>(),
            proptest::collection::btree_map("[a-zA-Z0-9.+-]{1,40}", 0u32..10_000, 0..5),
        )
            .prop_map(|(generation, releases)| DesiredRecord {
                format: FORMAT,
                generation,
                releases,
            })
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode::<HostRecord>("/k", &bytes);
            let _ = decode::<DesiredRecord>("/k", &bytes);
            let _ = decode::<RoutesRecord>("/k", &bytes);
            let _ = decode::<ObservedRecord>("/k", &bytes);
        }

        #[test]
        fn good_records_round_trip(h in host(), d in desired()) {
            prop_assert_eq!(decode::<HostRecord>("/h", &encode(&h)).unwrap(), h);
            prop_assert_eq!(decode::<DesiredRecord>("/d", &encode(&d)).unwrap(), d);
        }

        #[test]
        fn a_damaged_record_is_refused_or_still_valid(h in host(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = encode(&h);
            let i = pos.index(bytes.len());
            bytes[i] = byte;
            let mut lg = LastGood::<HostRecord>::default();
            lg.offer("/h", &encode(&h), 1).unwrap();
            match lg.offer("/h", &bytes, 2) {
                Ok(_) => prop_assert!(lg.get().unwrap().check().is_ok()),
                Err(_) => prop_assert_eq!(lg.get(), Some(&h)),
            }
        }
    }
}
