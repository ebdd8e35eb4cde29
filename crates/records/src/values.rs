//! Dotted-path access to value trees and type conversions shared by steps and expressions.

use serde_json::{Map, Value};

use crate::schema::FieldType;

/// The longest dotted path a steps file or a field declaration may name.
const MAX_PATH_BYTES: usize = 256;

/// A dotted path (`stats.hp`): non-empty parts of printable text, at most 256 bytes in all.
pub fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > MAX_PATH_BYTES {
        return Err(format!("a path has 1 to {MAX_PATH_BYTES} bytes, not {}", path.len()));
    }
    if path.split('.').any(str::is_empty) {
        return Err("a path has no empty part (no leading, trailing or doubled '.')".into());
    }
    if path.chars().any(char::is_control) {
        return Err("a path has no control characters".into());
    }
    Ok(())
}

/// What kind of JSON value `v` is, for messages (never the value itself, which may be large).
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an int",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The value at a dotted path (`stats.hp`), if every part exists.
pub fn get<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |v, part| v.as_object()?.get(part))
}

/// Removes and returns the value at `path`.
pub fn remove(root: &mut Value, path: &str) -> Option<Value> {
    let (parent, last) = match path.rsplit_once('.') {
        Some((p, l)) => (get_mut(root, p)?, l),
        None => (root, path),
    };
    parent.as_object_mut()?.remove(last)
}

fn get_mut<'a>(root: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.')
        .try_fold(root, |v, part| v.as_object_mut()?.get_mut(part))
}

/// Sets `path` to `value`, creating missing objects on the way; refuses to
/// go through a field that holds something other than an object.
pub fn set(root: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let mut cur = root;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let obj = cur
            .as_object_mut()
            .ok_or_else(|| format!("cannot set '{path}': '{part}' is inside a value that is not an object"))?;
        if parts.peek().is_none() {
            obj.insert(part.to_string(), value);
            return Ok(());
        }
        cur = obj.entry(part.to_string()).or_insert_with(|| Value::Object(Map::new()));
    }
    Err(format!("empty path '{path}'"))
}

/// A value as text: strings as they are, everything else as JSON.
pub fn to_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Converts a value to a type, or says why it cannot.
pub fn convert(v: &Value, to: FieldType) -> Result<Value, String> {
    Ok(match (to, v) {
        (FieldType::Any, v) => v.clone(),
        (FieldType::String, v) => Value::String(to_text(v)),
        (FieldType::Int, Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
            _ => return Err(format!("{n} is not a whole number")),
        },
        (FieldType::Int, Value::String(s)) => Value::from(
            s.trim()
                .parse::<i64>()
                .map_err(|_| format!("'{s}' is not a whole number"))?,
        ),
        (FieldType::Int, Value::Bool(b)) => Value::from(*b as i64),
        (FieldType::Float, Value::Number(n)) => Value::from(n.as_f64().unwrap_or(0.0)),
        (FieldType::Float, Value::String(s)) => {
            let f: f64 = s.trim().parse().map_err(|_| format!("'{s}' is not a number"))?;
            serde_json::Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(|| format!("'{s}' is not finite"))?
        }
        (FieldType::Bool, Value::Bool(b)) => Value::Bool(*b),
        (FieldType::Bool, Value::Number(n)) => Value::Bool(n.as_f64() != Some(0.0)),
        (FieldType::Bool, Value::String(s)) => match s.as_str() {
            "true" | "1" | "yes" => Value::Bool(true),
            "false" | "0" | "no" | "" => Value::Bool(false),
            _ => return Err(format!("'{s}' is not a boolean")),
        },
        (FieldType::Array, Value::Array(a)) => Value::Array(a.clone()),
        (FieldType::Array, Value::Null) => Value::Array(Vec::new()),
        (FieldType::Array, v) => Value::Array(vec![v.clone()]),
        (FieldType::Object, Value::Object(o)) => Value::Object(o.clone()),
        (FieldType::Object, Value::Null) => Value::Object(Map::new()),
        (to, v) => return Err(format!("cannot convert {v} to {to:?}")),
    })
}
