//! Per-kind version chains: pure upgraders `v → v+1`, optional downgraders, readable-by rules, field checks.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::Error;

/// One step of a chain: a pure, deterministic change of a value tree.
pub type StepFn = Arc<dyn Fn(&mut Value) -> Result<(), String> + Send + Sync>;

/// A field type a version may declare, checked by `verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Int,
    Float,
    Bool,
    Array,
    Object,
    Any,
}

impl FieldType {
    /// The name a steps file uses, with its article ("an int").
    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "a string",
            FieldType::Int => "an int",
            FieldType::Float => "a float",
            FieldType::Bool => "a bool",
            FieldType::Array => "an array",
            FieldType::Object => "an object",
            FieldType::Any => "any value",
        }
    }

    pub fn matches(self, v: &Value) -> bool {
        match self {
            FieldType::String => v.is_string(),
            FieldType::Int => v.is_i64() || v.is_u64(),
            FieldType::Float => v.is_number(),
            FieldType::Bool => v.is_boolean(),
            FieldType::Array => v.is_array(),
            FieldType::Object => v.is_object(),
            FieldType::Any => true,
        }
    }
}

/// The versions of one kind of record and how to move between them.
#[derive(Clone)]
pub struct KindSchema {
    kind: String,
    first: u32,
    head: u32,
    ups: BTreeMap<u32, StepFn>,
    downs: BTreeMap<u32, StepFn>,
    readable_by: BTreeMap<u32, u32>,
    fields: BTreeMap<u32, Vec<(String, FieldType)>>,
    /// Builder calls that could not be taken (reported by `problems`).
    refused: Vec<String>,
}

impl fmt::Debug for KindSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KindSchema")
            .field("kind", &self.kind)
            .field("first", &self.first)
            .field("head", &self.head)
            .field("downgraders", &self.downs.keys().collect::<Vec<_>>())
            .field("readable_by", &self.readable_by)
            .finish()
    }
}

impl KindSchema {
    /// A kind whose oldest stored version is `first` (usually 1).
    pub fn new(kind: impl Into<String>, first: u32) -> KindSchema {
        KindSchema {
            kind: kind.into(),
            first,
            head: first,
            ups: BTreeMap::new(),
            downs: BTreeMap::new(),
            readable_by: BTreeMap::new(),
            fields: BTreeMap::new(),
            refused: Vec::new(),
        }
    }

    /// Registers the upgrader from `from` to `from + 1`.
    pub fn up(self, from: u32, f: impl Fn(&mut Value) -> Result<(), String> + Send + Sync + 'static) -> Self {
        self.up_arc(from, Arc::new(f))
    }

    /// Registers the downgrader from `to + 1` back to `to`.
    pub fn down(self, to: u32, f: impl Fn(&mut Value) -> Result<(), String> + Send + Sync + 'static) -> Self {
        self.down_arc(to, Arc::new(f))
    }

    pub(crate) fn up_arc(mut self, from: u32, f: StepFn) -> Self {
        match from.checked_add(1) {
            Some(next) => {
                self.ups.insert(from, f);
                self.head = self.head.max(next);
            }
            None => self.refused.push(format!("{}: no version after {from}", self.kind)),
        }
        self
    }

    pub(crate) fn down_arc(mut self, to: u32, f: StepFn) -> Self {
        match to.checked_add(1) {
            Some(from) => {
                self.downs.insert(from, f);
            }
            None => self
                .refused
                .push(format!("{}: no version after {to} to downgrade from", self.kind)),
        }
        self
    }

    /// Declares that code knowing only `oldest_reader` (or later) can read
    /// `version` (the change was additive: they keep the fields they do not
    /// know). Without it a version is readable only by code that knows it.
    pub fn readable_by(mut self, version: u32, oldest_reader: u32) -> Self {
        self.readable_by.insert(version, oldest_reader.min(version));
        self
    }

    /// Declares the fields `version` must have (checked by `verify`).
    pub fn fields(mut self, version: u32, fields: Vec<(String, FieldType)>) -> Self {
        self.fields.insert(version, fields);
        self
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }
    pub fn first(&self) -> u32 {
        self.first
    }
    /// The newest version this schema knows.
    pub fn head(&self) -> u32 {
        self.head
    }

    /// `UnknownVersion` unless `version` is in this kind's chain.
    pub(crate) fn knows(&self, version: u32) -> Result<(), Error> {
        if version < self.first || version > self.head {
            return Err(Error::UnknownVersion {
                kind: self.kind.clone(),
                version,
                first: self.first,
                head: self.head,
            });
        }
        Ok(())
    }

    /// The oldest code version that can read `version`.
    pub fn min_reader(&self, version: u32) -> u32 {
        self.readable_by.get(&version).copied().unwrap_or(version)
    }

    pub fn has_downgrader(&self, from: u32) -> bool {
        self.downs.contains_key(&from)
    }

    /// Every problem with the chain: gaps, downgraders without a version.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.refused.clone();
        if let Err(e) = crate::limits::kind(&self.kind) {
            let shown: String = self.kind.chars().take(crate::limits::MAX_KIND_BYTES).collect();
            out.push(format!("kind {shown:?}: {e}"));
        }
        if self.first == 0 {
            out.push(format!("{}: versions start at 1", self.kind));
        }
        for v in self.first..self.head {
            if !self.ups.contains_key(&v) {
                out.push(format!("{}: no upgrader from version {v} to {}", self.kind, v + 1));
            }
        }
        for &v in self.ups.keys() {
            if v < self.first {
                out.push(format!(
                    "{}: upgrader from version {v}, older than the first version {}",
                    self.kind, self.first
                ));
            }
        }
        for &v in self.downs.keys() {
            if v <= self.first || v > self.head {
                out.push(format!(
                    "{}: downgrader from version {v}, which has no version below it",
                    self.kind
                ));
            }
        }
        for (&v, &r) in &self.readable_by {
            if v > self.head || r < self.first {
                out.push(format!(
                    "{}: readable_by for version {v} (reader {r}) is out of range",
                    self.kind
                ));
            }
        }
        for (&v, fields) in &self.fields {
            if v < self.first || v > self.head {
                out.push(format!(
                    "{}: fields declared for version {v}, which is not in the chain",
                    self.kind
                ));
            }
            for (name, _) in fields {
                if let Err(e) = crate::values::check_path(name) {
                    out.push(format!("{}: version {v} field '{name}': {e}", self.kind));
                }
            }
        }
        out
    }

    /// Moves `value` from version `from` to `to`, upgrading or downgrading one step at a time.
    pub fn convert(&self, value: &mut Value, from: u32, to: u32) -> Result<(), Error> {
        self.knows(from)?;
        self.knows(to)?;
        let mut v = from;
        while v < to {
            let f = self.ups.get(&v).ok_or_else(|| Error::NoUpgrader {
                kind: self.kind.clone(),
                from: v,
            })?;
            f(value).map_err(|message| Error::Step {
                kind: self.kind.clone(),
                from: v,
                to: v + 1,
                message,
            })?;
            v += 1;
        }
        while v > to {
            let f = self.downs.get(&v).ok_or_else(|| Error::NoDowngrader {
                kind: self.kind.clone(),
                from: v,
            })?;
            f(value).map_err(|message| Error::Step {
                kind: self.kind.clone(),
                from: v,
                to: v - 1,
                message,
            })?;
            v -= 1;
        }
        Ok(())
    }

    /// Problems of `value` as a record at `version`: a record is a JSON object, and every field its version
    /// declares is there with its declared type (a dotted name is a field of a nested object).
    pub fn check_fields(&self, version: u32, value: &Value) -> Vec<String> {
        if !value.is_object() {
            return vec![format!(
                "a record is a JSON object, not {}",
                crate::values::type_name(value)
            )];
        }
        let Some(fields) = self.fields.get(&version) else {
            return Vec::new();
        };
        fields
            .iter()
            .filter_map(|(name, ty)| match crate::values::get(value, name) {
                None => Some(format!("field '{name}' is missing")),
                Some(v) if !ty.matches(v) => Some(format!(
                    "field '{name}' should be {} but is {}",
                    ty.name(),
                    crate::values::type_name(v)
                )),
                Some(_) => None,
            })
            .collect()
    }

    /// The version a writer whose code knows `at` must write, given the
    /// write gate (the highest version every live release can read): `at`
    /// itself if the gate allows it or every live reader can read it, else
    /// the newest older version they can read (reached by downgrading).
    pub fn write_target(&self, at: u32, gate: Option<u32>) -> Result<u32, Error> {
        match gate {
            None => Ok(at),
            Some(g) if g >= at || self.min_reader(at) <= g => Ok(at),
            Some(g) if g < self.first => Err(Error::GateTooLow {
                kind: self.kind.clone(),
                gate: g,
                first: self.first,
            }),
            Some(g) => {
                // Walk down to the newest version every live reader can read.
                let mut v = at;
                while self.min_reader(v) > g {
                    if !self.has_downgrader(v) {
                        return Err(Error::NoDowngraderForGate {
                            kind: self.kind.clone(),
                            gate: g,
                            at,
                            missing: v,
                        });
                    }
                    v -= 1;
                }
                Ok(v)
            }
        }
    }
}

/// Every kind an application (or the records service) knows.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    kinds: BTreeMap<String, KindSchema>,
}

impl Schema {
    pub fn new() -> Schema {
        Schema::default()
    }

    /// Adds a kind, refusing a chain with gaps (all problems listed).
    pub fn with(mut self, kind: KindSchema) -> Result<Schema, Error> {
        let problems = kind.problems();
        if !problems.is_empty() {
            return Err(Error::Schema(problems));
        }
        self.kinds.insert(kind.kind.clone(), kind);
        Ok(self)
    }

    pub fn kind(&self, kind: &str) -> Result<&KindSchema, Error> {
        self.kinds.get(kind).ok_or_else(|| Error::UnknownKind(kind.to_string()))
    }

    pub fn kinds(&self) -> impl Iterator<Item = &KindSchema> {
        self.kinds.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn player() -> KindSchema {
        KindSchema::new("player", 1)
            .up(1, |v| {
                v["xp"] = json!(0);
                Ok(())
            })
            .readable_by(2, 1)
            .up(2, |v| {
                let name = v.as_object_mut().unwrap().remove("name").unwrap_or(Value::Null);
                v["display_name"] = name;
                Ok(())
            })
            .down(2, |v| {
                let name = v.as_object_mut().unwrap().remove("display_name").unwrap_or(Value::Null);
                v["name"] = name;
                Ok(())
            })
    }

    #[test]
    fn a_chain_runs_every_step_in_order_both_ways() {
        let k = player();
        let mut v = json!({"name": "ann", "gold": 3});
        k.convert(&mut v, 1, 3).unwrap();
        assert_eq!(v, json!({"display_name": "ann", "gold": 3, "xp": 0}));
        k.convert(&mut v, 3, 2).unwrap();
        assert_eq!(v, json!({"name": "ann", "gold": 3, "xp": 0}));
        let err = k.convert(&mut v, 2, 1).unwrap_err();
        assert!(err.to_string().contains("no downgrader from player version 2"), "{err}");
    }

    #[test]
    fn the_write_target_follows_the_gate() {
        let k = player();
        assert_eq!(k.write_target(3, None).unwrap(), 3);
        assert_eq!(k.write_target(3, Some(3)).unwrap(), 3);
        assert_eq!(
            k.write_target(3, Some(2)).unwrap(),
            2,
            "3 is not readable by 2: downgrade"
        );
        assert_eq!(
            k.write_target(2, Some(1)).unwrap(),
            2,
            "2 is readable by 1: no downgrade"
        );
        assert_eq!(
            k.write_target(3, Some(1)).unwrap(),
            2,
            "down to the newest version 1 can read"
        );
        let strict = KindSchema::new("s", 1).up(1, |_| Ok(())).up(2, |_| Ok(()));
        let err = strict.write_target(3, Some(1)).unwrap_err().to_string();
        assert!(err.contains("no downgrader from version 3"), "{err}");
    }

    #[test]
    fn gaps_in_a_chain_are_refused_with_every_problem() {
        let k = KindSchema::new("x", 1)
            .up(1, |_| Ok(()))
            .up(3, |_| Ok(()))
            .down(7, |_| Ok(()));
        let err = Schema::new().with(k).unwrap_err().to_string();
        assert!(err.contains("no upgrader from version 2 to 3"), "{err}");
        assert!(err.contains("downgrader from version 8"), "{err}");
    }
}
