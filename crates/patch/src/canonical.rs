//! Canonical JSON: the one byte form of a metadata value that is signed, so one object always has one
//! encoding. Objects have their keys sorted by UTF-8 bytes, there is no whitespace, numbers are integers
//! only, and strings escape exactly `"`, `\` and U+0000..U+001F (as `\u00xx`); every other character is
//! written as itself in UTF-8.

use serde::Serialize;
use serde_json::Value;

/// A value that has no canonical form.
#[derive(Debug, thiserror::Error)]
pub enum CanonicalError {
    #[error("canonical JSON allows integers only, found {0}")]
    Float(String),
    #[error("cannot serialize: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// The canonical bytes of any serializable value.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    let v = serde_json::to_value(value)?;
    let mut out = Vec::with_capacity(256);
    write(&v, &mut out)?;
    Ok(out)
}

/// Writes `v` in canonical form.
pub fn write(v: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                return Err(CanonicalError::Float(n.to_string()));
            }
        }
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(k, out);
                out.push(b':');
                write(&map[k], out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_by_bytes_and_nothing_is_padded() {
        let v =
            json!({"b": 1, "a": [true, null, -3], "B": {"z": "x", "é": "\u{1}\"\\/"}, "aa": 18446744073709551615u64});
        assert_eq!(
            String::from_utf8(to_vec(&v).unwrap()).unwrap(),
            r#"{"B":{"z":"x","é":"\u0001\"\\/"},"a":[true,null,-3],"aa":18446744073709551615,"b":1}"#
        );
    }

    #[test]
    fn a_float_has_no_canonical_form() {
        assert!(matches!(to_vec(&json!({"x": 1.5})), Err(CanonicalError::Float(_))));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|u| json!(u)),
            "\\PC{0,12}".prop_map(Value::String),
            proptest::collection::vec(any::<char>(), 0..6).prop_map(|c| Value::String(c.into_iter().collect())),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("\\PC{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Parsing the canonical bytes gives the same value back, and encoding it again gives the same bytes.
        #[test]
        fn canonical_bytes_parse_back_to_the_value_and_are_a_fixed_point(v in arb_json()) {
            let bytes = to_vec(&v).unwrap();
            let back: Value = serde_json::from_slice(&bytes).unwrap();
            prop_assert_eq!(&back, &v);
            prop_assert_eq!(to_vec(&back).unwrap(), bytes.clone());
            // Any other layout of the same value (pretty printing) canonicalizes to the same bytes.
            let pretty: Value = serde_json::from_str(&serde_json::to_string_pretty(&v).unwrap()).unwrap();
            prop_assert_eq!(to_vec(&pretty).unwrap(), bytes);
        }
    }
}
