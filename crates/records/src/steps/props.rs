//! Property tests of the steps file: accepted exactly when it has no flaw, never a panic, bounded memory.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::testing::{peak_bytes, proptest_config as config};

fn path() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_]{0,4}(\\.[a-z_][a-z0-9_]{0,4}){0,2}"
}

/// One valid step, as a TOML inline table.
fn step() -> impl Strategy<Value = String> {
    let default = prop_oneof![
        any::<i32>().prop_map(|n| n.to_string()),
        Just("\"s\"".to_string()),
        Just("true".to_string()),
        Just("[1, 2]".to_string()),
        Just("{ x = 1 }".to_string()),
    ];
    let ty = prop_oneof![
        Just("string"),
        Just("int"),
        Just("float"),
        Just("bool"),
        Just("array"),
        Just("object")
    ];
    let expr = prop_oneof![
        Just("gold * 2 + 1"),
        Just("len(name)"),
        Just("if(hp > 3, 'a', 'b')"),
        Just("concat(name, '-', gold)"),
        Just("x ?? 0"),
        Just("stats.hp / 0"),
        Just("-(gold % 7)"),
    ];
    prop_oneof![
        (path(), default).prop_map(|(p, d)| format!("{{ add = \"{p}\", default = {d} }}")),
        (path(), path()).prop_map(|(p, q)| format!("{{ rename = \"{p}\", to = \"{q}\" }}")),
        (path(), path()).prop_map(|(p, q)| format!("{{ move = \"{p}\", to = \"{q}\" }}")),
        path().prop_map(|p| format!("{{ remove = \"{p}\" }}")),
        (path(), ty).prop_map(|(p, t)| format!("{{ convert = \"{p}\", to = \"{t}\" }}")),
        (path(), expr).prop_map(|(p, e)| format!("{{ set = \"{p}\", expr = \"{e}\" }}")),
    ]
}

fn fields() -> impl Strategy<Value = BTreeMap<String, &'static str>> {
    let ty = prop_oneof![Just("string"), Just("int"), Just("float"), Just("any"), Just("object")];
    proptest::collection::btree_map(path(), ty, 0..3)
}

#[derive(Debug, Clone)]
struct VersionSpec {
    readable_by_back: Option<u32>,
    up: Vec<String>,
    down: Option<Vec<String>>,
    fields: BTreeMap<String, &'static str>,
}

#[derive(Debug, Clone)]
struct KindSpec {
    first: u32,
    fields: BTreeMap<String, &'static str>,
    versions: Vec<VersionSpec>,
}

/// What is wrong with a generated file (one flaw at most, in its first kind).
#[derive(Debug, Clone)]
enum Flaw {
    None,
    /// A step, inserted as the first kind's first upgrade step.
    Step(&'static str),
    Gap,
    ReadableByNotOlder,
    KindName(String),
    FirstZero,
    FirstMax,
    UnknownVersionKey,
    DuplicateKey,
    FieldType,
    FieldName(&'static str),
}

const BAD_STEPS: &[&str] = &[
    "{ add = \"a\", default = 1, remove = \"b\" }",
    "{ rename = \"a\" }",
    "{ remove = \"a\", to = \"b\" }",
    "{ add = \"a\" }",
    "{ remove = \"\" }",
    "{ remove = \".\" }",
    "{ remove = \"a.\" }",
    "{ remove = \"a..b\" }",
    "{ remove = \"a\\u0001b\" }",
    "{ set = \"x\", expr = \"1 +\" }",
    "{ set = \"x\", expr = \"nope(1)\" }",
    "{ set = \"x\", expr = \"a..b\" }",
    "{ set = \"x\", expr = \"((((((((((((((((((((((((((((((((((1))))))))))))))))))))))))))))))))))\" }",
    "{ set = \"x\" }",
    "{ convert = \"a\", to = \"date\" }",
    "{ add = \"t\", default = 1979-05-27T07:32:00Z }",
    "{ add = \"t\", default = [1979-05-27] }",
    "{ frobnicate = \"a\" }",
    "{}",
];

fn flaw() -> impl Strategy<Value = Flaw> {
    prop_oneof![
        4 => Just(Flaw::None),
        3 => proptest::sample::select(BAD_STEPS).prop_map(Flaw::Step),
        1 => Just(Flaw::Gap),
        1 => Just(Flaw::ReadableByNotOlder),
        1 => prop_oneof![
            Just(String::new()),
            Just("1abc".to_string()),
            Just("a b".to_string()),
            Just("é".to_string()),
            Just("a/b".to_string()),
            Just("k".repeat(65)),
        ]
        .prop_map(Flaw::KindName),
        1 => Just(Flaw::FirstZero),
        1 => Just(Flaw::FirstMax),
        1 => Just(Flaw::UnknownVersionKey),
        1 => Just(Flaw::DuplicateKey),
        1 => Just(Flaw::FieldType),
        1 => prop_oneof![Just("a..b"), Just(""), Just(".x")].prop_map(Flaw::FieldName),
    ]
}

fn version() -> impl Strategy<Value = VersionSpec> {
    (
        proptest::option::of(0u32..3),
        proptest::collection::vec(step(), 0..4),
        proptest::option::of(proptest::collection::vec(step(), 0..3)),
        fields(),
    )
        .prop_map(|(readable_by_back, up, down, fields)| VersionSpec {
            readable_by_back,
            up,
            down,
            fields,
        })
}

fn kinds() -> impl Strategy<Value = BTreeMap<String, KindSpec>> {
    let kind = (1u32..5, fields(), proptest::collection::vec(version(), 0..4)).prop_map(|(first, fields, versions)| {
        KindSpec {
            first,
            fields,
            versions,
        }
    });
    proptest::collection::btree_map("[a-z][a-z0-9_]{0,8}", kind, 1..4)
}

fn inline(fields: &BTreeMap<String, &'static str>) -> String {
    let parts: Vec<String> = fields.iter().map(|(k, t)| format!("\"{k}\" = \"{t}\"")).collect();
    format!("{{ {} }}", parts.join(", "))
}

/// The file for `kinds` with `flaw` put into its first kind.
fn render(kinds: &BTreeMap<String, KindSpec>, flaw: &Flaw) -> String {
    let mut out = String::new();
    for (i, (name, k)) in kinds.iter().enumerate() {
        let flawed = i == 0;
        let name = match flaw {
            Flaw::KindName(bad) if flawed => bad.clone(),
            _ => name.clone(),
        };
        let mut versions = k.versions.clone();
        let needs_version = matches!(
            flaw,
            Flaw::Step(_) | Flaw::Gap | Flaw::ReadableByNotOlder | Flaw::FirstMax | Flaw::UnknownVersionKey
        );
        if flawed && needs_version && versions.is_empty() {
            versions.push(VersionSpec {
                readable_by_back: None,
                up: Vec::new(),
                down: None,
                fields: BTreeMap::new(),
            });
        }
        let first = match flaw {
            Flaw::FirstZero if flawed => 0,
            Flaw::FirstMax if flawed => u32::MAX,
            _ => k.first,
        };
        out += &format!("[kinds.\"{name}\"]\nfirst = {first}\n");
        let mut kind_fields = inline(&k.fields);
        match flaw {
            Flaw::FieldType if flawed => kind_fields = "{ a = \"date\" }".into(),
            Flaw::FieldName(bad) if flawed => kind_fields = format!("{{ \"{bad}\" = \"int\" }}"),
            _ => {}
        }
        out += &format!("fields = {kind_fields}\n");
        if matches!(flaw, Flaw::DuplicateKey) && flawed {
            out += &format!("first = {first}\n");
        }
        for (j, v) in versions.iter().enumerate() {
            let mut number = u64::from(first) + 1 + j as u64;
            match flaw {
                Flaw::Gap if flawed && j == 0 => number += 1,
                // A version TOML can hold, after a first version that has none after it.
                Flaw::FirstMax if flawed => number = u64::from(u32::MAX),
                _ => {}
            }
            out += &format!("\n[[kinds.\"{name}\".versions]]\nversion = {number}\n");
            let readable_by = match (flaw, v.readable_by_back) {
                (Flaw::ReadableByNotOlder, _) if flawed && j == 0 => Some(number),
                (_, Some(back)) => Some(number.saturating_sub(1 + u64::from(back)).max(u64::from(first))),
                _ => None,
            };
            if let Some(r) = readable_by {
                out += &format!("readable_by = {r}\n");
            }
            let mut up = v.up.clone();
            if let Flaw::Step(bad) = flaw
                && flawed
                && j == 0
            {
                up.insert(0, bad.to_string());
            }
            out += &format!("up = [{}]\n", up.join(", "));
            if let Some(down) = &v.down {
                out += &format!("down = [{}]\n", down.join(", "));
            }
            out += &format!("fields = {}\n", inline(&v.fields));
            if matches!(flaw, Flaw::UnknownVersionKey) && flawed && j == 0 {
                out += "upx = []\n";
            }
        }
        out += "\n";
    }
    out
}

/// A record for the chains: the fields the steps name, with values of a few kinds.
fn record() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| json!(n)),
        "[a-z0-9 ]{0,6}".prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        Just(json!({"hp": 3, "x": "7"})),
        Just(json!([1, "a"])),
    ];
    proptest::collection::btree_map(path(), leaf, 0..8).prop_map(|m| {
        let mut v = json!({});
        for (k, x) in m {
            let _ = values::set(&mut v, &k, x);
        }
        v
    })
}

/// Pieces of steps files, so that odd but nearly valid files come up often.
fn soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("[kinds.a]\n"),
        Just("[[kinds.a.versions]]\n"),
        Just("version = 2\n"),
        Just("version = 4294967295\n"),
        Just("first = 4294967295\n"),
        Just("first = 0\n"),
        Just("readable_by = 1\n"),
        Just("up = [{ add = \"x\", default = 1 }]\n"),
        Just("down = [{ remove = \"x\" }]\n"),
        Just("fields = { a = \"int\" }\n"),
        Just("up = ["),
        Just("]"),
        Just("{"),
        Just("}"),
        Just("="),
        Just("\""),
        Just("a = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["),
        Just("a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p = 1\n"),
        Just("\n"),
        Just("\u{0}"),
    ];
    proptest::collection::vec(piece, 0..300).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(config(600))]

    #[test]
    fn a_steps_file_is_accepted_exactly_when_it_has_no_flaw(kinds in kinds(), flaw in flaw(), rec in record()) {
        let text = render(&kinds, &flaw);
        let (parsed, peak) = peak_bytes(|| parse(&text, "p.toml"));
        prop_assert!(peak <= 256 * text.len() + 1024 * 1024, "{peak} bytes for {} bytes", text.len());
        match (&flaw, parsed) {
            (Flaw::None, Ok(schema)) => {
                for (name, k) in &kinds {
                    let ks = schema.kind(name).unwrap();
                    prop_assert_eq!((ks.first(), ks.head()), (k.first, k.first + k.versions.len() as u32));
                    prop_assert!(ks.problems().is_empty());
                    // The chain runs on any record without a panic, both ways.
                    let mut v = rec.clone();
                    if ks.convert(&mut v, ks.first(), ks.head()).is_ok() {
                        let _ = ks.convert(&mut v, ks.head(), ks.first());
                    }
                }
            }
            (Flaw::None, Err(e)) => prop_assert!(false, "refused a good file: {e}\n{text}"),
            (_, Ok(_)) => prop_assert!(false, "accepted a file with {flaw:?}:\n{text}"),
            (_, Err(e)) => prop_assert!(e.to_string().contains("p.toml"), "{e}"),
        }
    }

    #[test]
    fn any_text_is_read_or_refused_without_a_panic_in_bounded_memory(text in prop_oneof![".{0,4000}", soup()]) {
        let (parsed, peak) = peak_bytes(|| parse(&text, "t.toml"));
        prop_assert!(peak <= 256 * text.len() + 1024 * 1024, "{peak} bytes for {} bytes", text.len());
        if let Ok(schema) = parsed {
            for k in schema.kinds() {
                prop_assert!(k.problems().is_empty());
            }
        }
    }
}

#[test]
fn a_long_chain_is_read_and_runs() {
    let mut text = String::from("[kinds.a]\n");
    for v in 2..=3001 {
        text += &format!("[[kinds.a.versions]]\nversion = {v}\nup = [{{ set = \"n\", expr = \"(n ?? 0) + 1\" }}]\n");
    }
    let schema = parse(&text, "long.toml").unwrap();
    let k = schema.kind("a").unwrap();
    let mut v = json!({});
    k.convert(&mut v, 1, 3001).unwrap();
    assert_eq!(v, json!({"n": 3000}));
}
