//! Upgraders declared in a TOML file of simple steps, for apps that are not written in Rust.
//!
//! ```toml
//! [kinds.player]
//! first = 1                                  # oldest version in the store
//! fields = { name = "string", gold = "int" } # optional, checked by verify
//!
//! [[kinds.player.versions]]
//! version = 2
//! readable_by = 1          # optional: version-1 code can read it (additive change)
//! up = [
//!   { add = "xp", default = 0 },
//!   { rename = "name", to = "display_name" },
//!   { move = "hp", to = "stats.hp" },          # into (or out of) a nested object
//!   { convert = "level", to = "int" },         # string, int, float, bool, array, object
//!   { set = "power", expr = "stats.hp * 2 + level" },
//!   { remove = "legacy" },
//! ]
//! down = [ ... ]           # optional: the way back from 2 to 1
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::Error;
use crate::expr::{self, Expr};
use crate::schema::{FieldType, KindSchema, Schema, StepFn};
use crate::values;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    kinds: BTreeMap<String, KindFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KindFile {
    #[serde(default = "one")]
    first: u32,
    #[serde(default)]
    fields: BTreeMap<String, FieldType>,
    #[serde(default)]
    versions: Vec<VersionFile>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionFile {
    version: u32,
    readable_by: Option<u32>,
    #[serde(default)]
    up: Vec<RawOp>,
    down: Option<Vec<RawOp>>,
    #[serde(default)]
    fields: BTreeMap<String, FieldType>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOp {
    add: Option<String>,
    default: Option<Value>,
    rename: Option<String>,
    #[serde(rename = "move")]
    move_: Option<String>,
    to: Option<String>,
    remove: Option<String>,
    convert: Option<String>,
    set: Option<String>,
    expr: Option<String>,
}

/// One compiled step.
#[derive(Debug, Clone)]
pub enum Op {
    Add(String, Value),
    Move(String, String),
    Remove(String),
    Convert(String, FieldType),
    Set(String, Expr),
}

impl Op {
    fn compile(raw: &RawOp) -> Result<Op, String> {
        let verbs = [&raw.add, &raw.rename, &raw.move_, &raw.remove, &raw.convert, &raw.set];
        if verbs.iter().filter(|v| v.is_some()).count() != 1 {
            return Err("a step needs exactly one of add, rename, move, remove, convert, set".into());
        }
        let to = || raw.to.clone().ok_or("needs 'to'");
        let op = if let Some(p) = &raw.add {
            Op::Add(p.clone(), raw.default.clone().ok_or("add needs 'default'")?)
        } else if let Some(p) = raw.rename.as_ref().or(raw.move_.as_ref()) {
            Op::Move(p.clone(), to()?)
        } else if let Some(p) = &raw.remove {
            Op::Remove(p.clone())
        } else if let Some(p) = &raw.convert {
            let ty: FieldType = serde_json::from_value(Value::String(to()?))
                .map_err(|_| "convert 'to' must be one of string, int, float, bool, array, object".to_string())?;
            Op::Convert(p.clone(), ty)
        } else {
            let p = raw.set.clone().unwrap_or_default();
            let src = raw.expr.as_deref().ok_or("set needs 'expr'")?;
            Op::Set(p, expr::parse(src).map_err(|e| format!("expr '{src}': {e}"))?)
        };
        for path in op.paths() {
            values::check_path(path).map_err(|e| format!("'{path}': {e}"))?;
        }
        if let Op::Add(_, default) = &op
            && has_datetime(default)
        {
            return Err("a TOML date or time is not a record value; write it as a string".into());
        }
        let stray = match &op {
            Op::Add(..) => raw.to.is_some() || raw.expr.is_some(),
            Op::Move(..) | Op::Convert(..) => raw.default.is_some() || raw.expr.is_some(),
            Op::Remove(..) => raw.to.is_some() || raw.default.is_some() || raw.expr.is_some(),
            Op::Set(..) => raw.to.is_some() || raw.default.is_some(),
        };
        if stray {
            return Err("a step has keys its verb does not use".into());
        }
        Ok(op)
    }

    /// The field paths the step names.
    fn paths(&self) -> Vec<&str> {
        match self {
            Op::Add(p, _) | Op::Remove(p) | Op::Convert(p, _) | Op::Set(p, _) => vec![p],
            Op::Move(from, to) => vec![from, to],
        }
    }

    /// Applies the step to a tree.
    pub fn apply(&self, v: &mut Value) -> Result<(), String> {
        match self {
            Op::Add(p, default) => {
                if values::get(v, p).is_none() {
                    values::set(v, p, default.clone())?;
                }
            }
            Op::Move(from, to) => {
                if let Some(x) = values::remove(v, from) {
                    if values::get(v, to).is_some() {
                        return Err(format!("cannot move '{from}' to '{to}': '{to}' already exists"));
                    }
                    values::set(v, to, x)?;
                }
            }
            Op::Remove(p) => {
                values::remove(v, p);
            }
            Op::Convert(p, ty) => {
                if let Some(x) = values::get(v, p) {
                    let new = values::convert(x, *ty).map_err(|e| format!("convert '{p}': {e}"))?;
                    values::set(v, p, new)?;
                }
            }
            Op::Set(p, e) => {
                let x = expr::eval(e, v).map_err(|e| format!("set '{p}': {e}"))?;
                values::set(v, p, x)?;
            }
        }
        Ok(())
    }
}

/// Whether a TOML value held a date or time (which the TOML reader hands over as a private marker table).
fn has_datetime(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.contains_key("$__toml_private_datetime") || o.values().any(has_datetime),
        Value::Array(a) => a.iter().any(has_datetime),
        _ => false,
    }
}

fn chain(ops: Vec<Op>) -> StepFn {
    Arc::new(move |v: &mut Value| {
        if !v.is_object() {
            return Err(format!("the record is not an object but {v}"));
        }
        ops.iter().try_for_each(|op| op.apply(v))
    })
}

fn compile_ops(raw: &[RawOp], at: &str, problems: &mut Vec<String>) -> Vec<Op> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, r)| {
            Op::compile(r)
                .map_err(|e| problems.push(format!("{at} step {}: {e}", i + 1)))
                .ok()
        })
        .collect()
}

/// Reads a steps file into a schema, listing every problem at once.
pub fn parse(text: &str, origin: &str) -> Result<Schema, Error> {
    let file: File = toml::from_str(text).map_err(|e| Error::Schema(vec![format!("{origin}: {e}")]))?;
    let mut problems = Vec::new();
    let mut schema = Schema::new();
    for (name, k) in file.kinds {
        let mut ks = KindSchema::new(&name, k.first);
        if !k.fields.is_empty() {
            ks = ks.fields(k.first, k.fields.into_iter().collect());
        }
        for (i, v) in k.versions.iter().enumerate() {
            let at = format!("{origin}: kinds.{name} version {}", v.version);
            let expected = u32::try_from(i)
                .ok()
                .and_then(|i| k.first.checked_add(i)?.checked_add(1));
            if Some(v.version) != expected {
                problems.push(match expected {
                    Some(e) => format!("{at}: versions must follow each other; expected {e}"),
                    None => format!("{at}: no version after {}", u32::MAX),
                });
                continue;
            }
            let up = compile_ops(&v.up, &format!("{at} up"), &mut problems);
            ks = ks.up_arc(v.version - 1, chain(up));
            if let Some(down) = &v.down {
                let down = compile_ops(down, &format!("{at} down"), &mut problems);
                ks = ks.down_arc(v.version - 1, chain(down));
            }
            if let Some(r) = v.readable_by {
                if r >= v.version || r < k.first {
                    problems.push(format!("{at}: readable_by must be an older version"));
                }
                ks = ks.readable_by(v.version, r);
            }
            if !v.fields.is_empty() {
                ks = ks.fields(v.version, v.fields.clone().into_iter().collect());
            }
        }
        problems.extend(ks.problems().into_iter().map(|p| format!("{origin}: {p}")));
        schema = match schema.with(ks) {
            Ok(s) => s,
            Err(_) => Schema::new(),
        };
    }
    if problems.is_empty() {
        Ok(schema)
    } else {
        Err(Error::Schema(problems))
    }
}

/// Reads a steps file from disk.
pub fn load(path: &Path) -> Result<Schema, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Schema(vec![format!("cannot read the steps file {}: {e}", path.display())]))?;
    parse(&text, &path.display().to_string())
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FILE: &str = r#"
        [kinds.player]
        fields = { name = "string", hp = "int", level = "string" }

        [[kinds.player.versions]]
        version = 2
        readable_by = 1
        up = [{ add = "xp", default = 0 }]
        down = [{ remove = "xp" }]

        [[kinds.player.versions]]
        version = 3
        up = [
          { rename = "name", to = "display_name" },
          { move = "hp", to = "stats.hp" },
          { convert = "level", to = "int" },
          { set = "power", expr = "stats.hp * 2 + level" },
        ]
        down = [
          { remove = "power" },
          { convert = "level", to = "string" },
          { move = "stats.hp", to = "hp" },
          { remove = "stats" },
          { rename = "display_name", to = "name" },
        ]
        fields = { display_name = "string", stats = "object", level = "int", power = "int" }
    "#;

    #[test]
    fn a_steps_file_upgrades_and_downgrades() {
        let s = parse(FILE, "t").unwrap();
        let k = s.kind("player").unwrap();
        assert_eq!((k.first(), k.head(), k.min_reader(2), k.min_reader(3)), (1, 3, 1, 3));
        let v1 = json!({"name": "ann", "hp": 40, "level": "7", "hat": "red"});
        let mut v = v1.clone();
        k.convert(&mut v, 1, 3).unwrap();
        assert_eq!(
            v,
            json!({"display_name": "ann", "stats": {"hp": 40}, "level": 7, "power": 87, "xp": 0, "hat": "red"})
        );
        assert!(k.check_fields(3, &v).is_empty());
        k.convert(&mut v, 3, 1).unwrap();
        assert_eq!(v, v1);
        assert_eq!(k.check_fields(1, &json!({"name": 3})).len(), 3);
    }

    #[test]
    fn every_problem_in_a_steps_file_is_listed() {
        let bad = r#"
            [[kinds.a.versions]]
            version = 2
            up = [{ add = "x" }, { rename = "a" }, { set = "y", expr = "1 +" }, { remove = "z", to = "q" }]
            [[kinds.a.versions]]
            version = 4
            [[kinds.b.versions]]
            version = 2
            readable_by = 5
            up = [{ convert = "c", to = "date" }]
        "#;
        let err = parse(bad, "f.toml").unwrap_err().to_string();
        for want in [
            "step 1: add needs 'default'",
            "step 2: needs 'to'",
            "step 3: expr '1 +'",
            "step 4: a step has keys",
            "expected 3",
            "readable_by must be an older version",
            "convert 'to' must be one of",
        ] {
            assert!(err.contains(want), "missing '{want}' in {err}");
        }
    }
}
