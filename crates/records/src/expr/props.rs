//! Property tests of the expression language: any input parses or is refused, never a panic, bounded memory.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::testing::{peak_bytes, proptest_config as config};

const BINARY: &[&str] = &[
    "??", "||", "&&", "==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "%",
];

/// A field path the printer can write and the lexer reads back as one path.
fn path() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_]{0,4}(\\.[a-z_][a-z0-9_]{0,4}){0,2}"
        .prop_filter("not a keyword", |p| !["true", "false", "null"].contains(&p.as_str()))
}

/// Literals the printer can write exactly: non-negative ints, eighths as floats, strings, keywords.
fn printable_leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        (0..=i64::MAX).prop_map(|n| Expr::Lit(json!(n))),
        (0u32..80_000).prop_map(|k| Expr::Lit(json!(k as f64 / 8.0 + 0.125))),
        "[a-z \"'\\\\\n]{0,8}".prop_map(|s| Expr::Lit(Value::String(s))),
        prop_oneof![Just(json!(true)), Just(json!(false)), Just(Value::Null)].prop_map(Expr::Lit),
        path().prop_map(Expr::Path),
    ]
}

/// Any tree, from `leaf` up, `depth` levels at most.
fn tree(leaf: BoxedStrategy<Expr>, depth: u32) -> impl Strategy<Value = Expr> {
    leaf.prop_recursive(depth, 256, 4, |inner| {
        prop_oneof![
            (0..BINARY.len(), inner.clone(), inner.clone()).prop_map(|(op, a, b)| Expr::Binary(
                BINARY[op],
                Box::new(a),
                Box::new(b)
            )),
            (prop_oneof![Just('-'), Just('!')], inner.clone()).prop_map(|(op, x)| Expr::Unary(op, Box::new(x))),
            (0..FUNCTIONS.len()).prop_flat_map(move |f| {
                let (name, lo, hi) = FUNCTIONS[f];
                proptest::collection::vec(inner.clone(), lo..=hi.min(4))
                    .prop_map(move |args| Expr::Call(name.to_string(), args))
            }),
        ]
    })
}

/// Source text that parses back to `e` (every binary operation in parentheses).
fn print(e: &Expr) -> String {
    match e {
        Expr::Lit(Value::String(s)) => {
            let escaped = s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            format!("\"{escaped}\"")
        }
        Expr::Lit(Value::Number(n)) if n.is_f64() => format!("{:?}", n.as_f64().unwrap()),
        Expr::Lit(v) => v.to_string(),
        Expr::Path(p) => p.clone(),
        Expr::Unary(op, x) => format!("{op}{}", print(x)),
        Expr::Binary(op, a, b) => format!("({} {op} {})", print(a), print(b)),
        Expr::Call(f, args) => format!("{f}({})", args.iter().map(print).collect::<Vec<_>>().join(", ")),
    }
}

/// Tokens of `print(e)`.
fn tokens(e: &Expr) -> usize {
    match e {
        Expr::Lit(_) | Expr::Path(_) => 1,
        Expr::Unary(_, x) => 1 + tokens(x),
        Expr::Binary(_, a, b) => 3 + tokens(a) + tokens(b),
        Expr::Call(_, args) => 3 + args.len().saturating_sub(1) + args.iter().map(tokens).sum::<usize>(),
    }
}

/// Nesting levels of `print(e)`: parentheses, calls and prefix operators.
fn nesting(e: &Expr) -> usize {
    match e {
        Expr::Lit(_) | Expr::Path(_) => 0,
        Expr::Unary(_, x) => 1 + nesting(x),
        Expr::Binary(_, a, b) => 1 + nesting(a).max(nesting(b)),
        Expr::Call(_, args) => 1 + args.iter().map(nesting).max().unwrap_or(0),
    }
}

/// Text made of the language's own pieces, so that deep nesting and odd sequences come up often.
fn token_soup() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        Just("("),
        Just(")"),
        Just("-"),
        Just("!"),
        Just(","),
        Just(" + "),
        Just(" / "),
        Just(" % "),
        Just(" ?? "),
        Just(" == "),
        Just("1"),
        Just("0"),
        Just("9223372036854775807"),
        Just("9223372036854775808"),
        Just("1.5"),
        Just("1.2.3"),
        Just("a.b"),
        Just("a..b"),
        Just("x."),
        Just("'s'"),
        Just("\""),
        Just("\\"),
        Just("len("),
        Just("if("),
        Just("concat("),
        Just("nope("),
        Just("é"),
        Just("\u{0}"),
    ];
    proptest::collection::vec(pieces, 0..700).prop_map(|v| v.concat())
}

/// A record to evaluate against: the fields the trees name, with values of every kind and size.
fn record() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| json!(n)),
        prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(-1i64), Just(0i64)].prop_map(|n| json!(n)),
        (-1e300f64..1e300).prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ];
    let value = leaf.prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,3}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    proptest::collection::btree_map("[a-z_][a-z0-9_]{0,4}", value, 0..8)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Trees with literals the lexer cannot write (negative and extreme numbers), for the evaluator.
fn any_leaf() -> BoxedStrategy<Expr> {
    prop_oneof![
        printable_leaf(),
        prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(-1i64), Just(0i64)].prop_map(|n| Expr::Lit(json!(n))),
        any::<i64>().prop_map(|n| Expr::Lit(json!(n))),
        (-1e300f64..1e300).prop_map(|f| Expr::Lit(json!(f))),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn any_text_parses_or_is_refused_without_panicking_in_memory_bounded_by_its_length(
        src in prop_oneof![".{0,6000}", token_soup()],
    ) {
        let (out, peak) = peak_bytes(|| parse(&src));
        prop_assert!(peak <= 32 * src.len() + 64 * 1024, "{peak} bytes for {} bytes of input", src.len());
        if out.is_ok() {
            prop_assert!(src.len() <= MAX_SOURCE_BYTES);
        }
    }

    #[test]
    fn a_printed_tree_parses_back_to_itself_unless_it_is_over_a_limit(e in tree(printable_leaf().boxed(), 40)) {
        let src = print(&e);
        let within = src.len() <= MAX_SOURCE_BYTES && tokens(&e) <= MAX_TOKENS && nesting(&e) <= MAX_NESTING;
        match parse(&src) {
            Ok(back) => {
                prop_assert!(within, "accepted over a limit: {src}");
                prop_assert_eq!(back, e, "{}", src);
            }
            Err(why) => {
                prop_assert!(!within, "refused {src}: {why}");
                prop_assert!(
                    why.contains("tokens") || why.contains("nested") || why.contains("bytes long"),
                    "{why}"
                );
            }
        }
    }

    #[test]
    fn evaluation_never_panics_is_deterministic_and_stays_in_bounded_memory(
        e in tree(any_leaf(), 12),
        root in record(),
    ) {
        let (first, peak) = peak_bytes(|| eval(&e, &root));
        prop_assert_eq!(&first, &eval(&e, &root));
        let size = root.to_string().len() + print(&e).len();
        prop_assert!(peak <= 64 * size * tokens(&e) + 64 * 1024, "{peak} bytes");
        if let Ok(v) = first {
            // A JSON value cannot hold NaN or infinity: every number the evaluator makes is finite.
            prop_assert!(v.as_f64().is_none_or(f64::is_finite));
        }
    }
}

#[test]
fn integer_overflow_and_division_by_zero_are_errors_not_panics() {
    let r = json!({"min": i64::MIN, "zero": 0});
    for (src, want) in [
        ("min / -1", "overflows"),
        ("min % -1", "overflows"),
        ("min * -1", "overflows"),
        ("-min", "overflows"),
        ("min - 1", "overflows"),
        ("9223372036854775807 + 1", "overflows"),
        ("1 / zero", "division by zero"),
        ("1 % 0", "division by zero"),
        ("1.5 % 0", "not a finite number"),
        ("9223372036854775808", "bad number"),
        ("round(1.5 * 9223372036854775807)", "out of range"),
    ] {
        let err = parse(src).and_then(|e| eval(&e, &r)).unwrap_err();
        assert!(err.contains(want), "{src}: {err}");
    }
}

#[test]
fn deep_nesting_and_long_inputs_are_refused_quickly() {
    let deep = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
    assert!(parse(&deep).unwrap_err().contains("bytes long"));
    let deep = format!("{}1{}", "(".repeat(40), ")".repeat(40));
    assert!(parse(&deep).unwrap_err().contains("nested more than 32"));
    assert!(parse(&"-".repeat(4000)).unwrap_err().contains("tokens"));
    assert!(parse(&format!("{}1", "-".repeat(33))).unwrap_err().contains("nested"));
    let chain = vec!["1"; 200].join("+");
    assert!(parse(&chain).unwrap_err().contains("tokens"));
    let chain = vec!["1"; 128].join("+");
    assert_eq!(eval(&parse(&chain).unwrap(), &json!({})).unwrap(), json!(128));
    assert!(parse("a..b").unwrap_err().contains("empty part"));
    assert!(parse("é").unwrap_err().contains("unexpected 'é' at byte 0"));
}
