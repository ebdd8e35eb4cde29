//! The small expression language of `set` steps: literals, field paths, arithmetic, comparison, a few functions.
//!
//! ```text
//! expr    := or ( "??" or )*
//! or      := and ( "||" and )*
//! and     := cmp ( "&&" cmp )*
//! cmp     := sum ( ("=="|"!="|"<"|"<="|">"|">=") sum )?
//! sum     := product ( ("+"|"-") product )*
//! product := unary ( ("*"|"/"|"%") unary )*
//! unary   := ("-"|"!") unary | atom
//! atom    := number | string | true | false | null | path | name "(" args ")" | "(" expr ")"
//! ```
//! A path (`stats.hp`) reads the record before the step; a missing field is
//! `null`. Evaluation is deterministic: no clock, no randomness. An
//! expression has at most [`MAX_SOURCE_BYTES`] bytes, [`MAX_TOKENS`] tokens
//! and [`MAX_NESTING`] levels of parentheses, calls and prefix operators, so
//! its tree, the evaluator's recursion and its memory stay small; integer
//! arithmetic that overflows and division by zero are errors, never a panic.

use serde_json::{Number, Value};

use crate::values;

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Value),
    Path(String),
    Unary(char, Box<Expr>),
    Binary(&'static str, Box<Expr>, Box<Expr>),
    Call(String, Vec<Expr>),
}

/// The longest expression, in bytes.
pub(crate) const MAX_SOURCE_BYTES: usize = 4096;
/// The most tokens an expression may have (every tree node is at least one token).
pub(crate) const MAX_TOKENS: usize = 256;
/// The deepest nesting of parentheses, function calls and prefix operators.
pub(crate) const MAX_NESTING: usize = 32;

const FUNCTIONS: &[(&str, usize, usize)] = &[
    ("len", 1, 1),
    ("str", 1, 1),
    ("int", 1, 1),
    ("float", 1, 1),
    ("lower", 1, 1),
    ("upper", 1, 1),
    ("round", 1, 1),
    ("floor", 1, 1),
    ("concat", 1, 16),
    ("if", 3, 3),
    ("min", 2, 2),
    ("max", 2, 2),
];

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(Value),
    Str(String),
    Ident(String),
    Op(&'static str),
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    const OPS: &[&str] = &[
        "??", "||", "&&", "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "%", "!", "(", ")", ",",
    ];
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    'outer: while i < b.len() {
        let c = b[i] as char;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if out.len() >= MAX_TOKENS {
            return Err(format!("more than {MAX_TOKENS} tokens; split the step"));
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            let text = &src[start..i];
            let v = if text.contains('.') {
                let f: f64 = text.parse().map_err(|_| format!("bad number '{text}'"))?;
                Value::Number(Number::from_f64(f).ok_or_else(|| format!("bad number '{text}'"))?)
            } else {
                Value::from(text.parse::<i64>().map_err(|_| format!("bad number '{text}'"))?)
            };
            out.push(Tok::Num(v));
            continue;
        }
        if c == '"' || c == '\'' {
            let mut s = String::new();
            i += 1;
            let mut chars = src[i..].char_indices();
            while let Some((j, ch)) = chars.next() {
                if ch == c {
                    i += j + 1;
                    out.push(Tok::Str(s));
                    continue 'outer;
                }
                if ch == '\\' {
                    match chars.next() {
                        Some((_, 'n')) => s.push('\n'),
                        Some((_, e)) => s.push(e),
                        None => break,
                    }
                } else {
                    s.push(ch);
                }
            }
            return Err("unterminated string".into());
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
            out.push(Tok::Ident(src[start..i].to_string()));
            continue;
        }
        for op in OPS {
            if src[i..].starts_with(op) {
                out.push(Tok::Op(op));
                i += op.len();
                continue 'outer;
            }
        }
        let c = src[i..].chars().next().unwrap_or(c);
        return Err(format!("unexpected {c:?} at byte {i}"));
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    /// Runs `f` one nesting level deeper, refusing to go past [`MAX_NESTING`].
    fn nested(&mut self, f: impl FnOnce(&mut Parser) -> Result<Expr, String>) -> Result<Expr, String> {
        if self.depth >= MAX_NESTING {
            return Err(format!("nested more than {MAX_NESTING} levels deep"));
        }
        self.depth += 1;
        let out = f(self);
        self.depth -= 1;
        out
    }
    fn peek_op(&self) -> Option<&'static str> {
        match self.toks.get(self.pos) {
            Some(Tok::Op(o)) => Some(o),
            _ => None,
        }
    }
    fn eat(&mut self, op: &str) -> bool {
        if self.peek_op() == Some(op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn binary(&mut self, ops: &[&'static str], next: fn(&mut Parser) -> Result<Expr, String>) -> Result<Expr, String> {
        let mut left = next(self)?;
        while let Some(op) = self.peek_op().filter(|o| ops.contains(o)) {
            self.pos += 1;
            let right = next(self)?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }
    fn expr(&mut self) -> Result<Expr, String> {
        self.binary(&["??"], Parser::or)
    }
    fn or(&mut self) -> Result<Expr, String> {
        self.binary(&["||"], Parser::and)
    }
    fn and(&mut self) -> Result<Expr, String> {
        self.binary(&["&&"], Parser::cmp)
    }
    fn cmp(&mut self) -> Result<Expr, String> {
        let left = self.sum()?;
        if let Some(op) = self
            .peek_op()
            .filter(|o| ["==", "!=", "<", "<=", ">", ">="].contains(o))
        {
            self.pos += 1;
            let right = self.sum()?;
            return Ok(Expr::Binary(op, Box::new(left), Box::new(right)));
        }
        Ok(left)
    }
    fn sum(&mut self) -> Result<Expr, String> {
        self.binary(&["+", "-"], Parser::product)
    }
    fn product(&mut self) -> Result<Expr, String> {
        self.binary(&["*", "/", "%"], Parser::unary)
    }
    fn unary(&mut self) -> Result<Expr, String> {
        for op in ['-', '!'] {
            if self.eat(if op == '-' { "-" } else { "!" }) {
                return self.nested(|p| Ok(Expr::Unary(op, Box::new(p.unary()?))));
            }
        }
        self.atom()
    }
    fn atom(&mut self) -> Result<Expr, String> {
        let tok = self.toks.get(self.pos).cloned().ok_or("unexpected end of expression")?;
        self.pos += 1;
        match tok {
            Tok::Num(v) => Ok(Expr::Lit(v)),
            Tok::Str(s) => Ok(Expr::Lit(Value::String(s))),
            Tok::Op("(") => self.nested(|p| {
                let e = p.expr()?;
                if !p.eat(")") {
                    return Err("missing ')'".into());
                }
                Ok(e)
            }),
            Tok::Op(o) => Err(format!("unexpected '{o}'")),
            Tok::Ident(name) => match name.as_str() {
                "true" => Ok(Expr::Lit(Value::Bool(true))),
                "false" => Ok(Expr::Lit(Value::Bool(false))),
                "null" => Ok(Expr::Lit(Value::Null)),
                _ if self.peek_op() == Some("(") => {
                    self.pos += 1;
                    self.nested(|p| p.call(name))
                }
                _ => {
                    values::check_path(&name).map_err(|e| format!("field '{name}': {e}"))?;
                    Ok(Expr::Path(name))
                }
            },
        }
    }
}

impl Parser {
    /// The arguments of a call to `name`, after its '('.
    fn call(&mut self, name: String) -> Result<Expr, String> {
        let Some(&(_, lo, hi)) = FUNCTIONS.iter().find(|(f, _, _)| *f == name) else {
            let known: Vec<_> = FUNCTIONS.iter().map(|f| f.0).collect();
            return Err(format!("unknown function '{name}' (known: {})", known.join(", ")));
        };
        let mut args = Vec::new();
        if !self.eat(")") {
            loop {
                args.push(self.expr()?);
                if self.eat(")") {
                    break;
                }
                if !self.eat(",") {
                    return Err(format!("expected ',' or ')' in the arguments of {name}"));
                }
            }
        }
        if args.len() < lo || args.len() > hi {
            return Err(format!("{name} takes {lo}..={hi} arguments, got {}", args.len()));
        }
        Ok(Expr::Call(name, args))
    }
}

/// Parses an expression, with the position of the first problem.
pub fn parse(src: &str) -> Result<Expr, String> {
    if src.len() > MAX_SOURCE_BYTES {
        return Err(format!(
            "{} bytes long; an expression has at most {MAX_SOURCE_BYTES}",
            src.len()
        ));
    }
    let toks = lex(src)?;
    let mut p = Parser { toks, pos: 0, depth: 0 };
    let e = p.expr()?;
    if p.pos != p.toks.len() {
        return Err(format!("unexpected {:?} after the expression", p.toks[p.pos]));
    }
    Ok(e)
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn float(f: f64) -> Result<Value, String> {
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| format!("{f} is not a finite number"))
}

fn arith(op: &str, a: &Value, b: &Value) -> Result<Value, String> {
    if op == "+" && (a.is_string() || b.is_string()) {
        return Ok(Value::String(values::to_text(a) + &values::to_text(b)));
    }
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        let r = match op {
            "+" => x.checked_add(y),
            "-" => x.checked_sub(y),
            "*" => x.checked_mul(y),
            "/" | "%" if y == 0 => return Err(format!("{x} {op} {y}: division by zero")),
            "%" => x.checked_rem(y),
            // A whole quotient stays an int; `i64::MIN / -1` (no remainder, no room) overflows.
            _ => match x.checked_rem(y) {
                Some(0) | None => x.checked_div(y),
                Some(_) => return float(x as f64 / y as f64),
            },
        };
        return r.map(Value::from).ok_or_else(|| format!("{x} {op} {y} overflows"));
    }
    let (Some(x), Some(y)) = (num(a), num(b)) else {
        return Err(format!("'{op}' needs numbers, got {a} and {b}"));
    };
    float(match op {
        "+" => x + y,
        "-" => x - y,
        "*" => x * y,
        "/" => x / y,
        _ => x % y,
    })
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => num(a)?.partial_cmp(&num(b)?),
    }
}

/// Evaluates `e` against the record `root`.
pub fn eval(e: &Expr, root: &Value) -> Result<Value, String> {
    Ok(match e {
        Expr::Lit(v) => v.clone(),
        Expr::Path(p) => values::get(root, p).cloned().unwrap_or(Value::Null),
        Expr::Unary('-', x) => arith("-", &Value::from(0), &eval(x, root)?)?,
        Expr::Unary(_, x) => Value::Bool(!truthy(&eval(x, root)?)),
        Expr::Binary("??", a, b) => match eval(a, root)? {
            Value::Null => eval(b, root)?,
            v => v,
        },
        Expr::Binary("||", a, b) => Value::Bool(truthy(&eval(a, root)?) || truthy(&eval(b, root)?)),
        Expr::Binary("&&", a, b) => Value::Bool(truthy(&eval(a, root)?) && truthy(&eval(b, root)?)),
        Expr::Binary(op, a, b) => {
            let (a, b) = (eval(a, root)?, eval(b, root)?);
            match *op {
                "==" => Value::Bool(a == b || (a.is_number() && b.is_number() && num(&a) == num(&b))),
                "!=" => Value::Bool(!(a == b || (a.is_number() && b.is_number() && num(&a) == num(&b)))),
                "<" | "<=" | ">" | ">=" => {
                    let ord = compare(&a, &b).ok_or_else(|| format!("cannot compare {a} and {b}"))?;
                    Value::Bool(match *op {
                        "<" => ord.is_lt(),
                        "<=" => ord.is_le(),
                        ">" => ord.is_gt(),
                        _ => ord.is_ge(),
                    })
                }
                _ => arith(op, &a, &b)?,
            }
        }
        Expr::Call(f, args) => {
            if f == "if" {
                return if truthy(&eval(&args[0], root)?) {
                    eval(&args[1], root)
                } else {
                    eval(&args[2], root)
                };
            }
            let vals = args.iter().map(|a| eval(a, root)).collect::<Result<Vec<_>, _>>()?;
            let a = &vals[0];
            match f.as_str() {
                "len" => Value::from(match a {
                    Value::String(s) => s.chars().count(),
                    Value::Array(x) => x.len(),
                    Value::Object(o) => o.len(),
                    Value::Null => 0,
                    other => return Err(format!("len of {other}")),
                }),
                "str" => Value::String(values::to_text(a)),
                "int" => values::convert(a, crate::schema::FieldType::Int)?,
                "float" => values::convert(a, crate::schema::FieldType::Float)?,
                "lower" => Value::String(values::to_text(a).to_lowercase()),
                "upper" => Value::String(values::to_text(a).to_uppercase()),
                "round" | "floor" => match (a.as_i64(), num(a)) {
                    (Some(i), _) => Value::from(i),
                    (None, Some(x)) => {
                        let r = if f == "round" { x.round() } else { x.floor() };
                        if r.abs() > 9.0e15 {
                            return Err(format!("{f}({x}) is out of range"));
                        }
                        Value::from(r as i64)
                    }
                    _ => return Err(format!("{f} needs a number, got {a}")),
                },
                "concat" => Value::String(vals.iter().map(values::to_text).collect()),
                "min" | "max" => {
                    let ord = compare(a, &vals[1]).ok_or_else(|| format!("cannot compare {a} and {}", vals[1]))?;
                    let first = if f == "min" { ord.is_le() } else { ord.is_ge() };
                    if first { a.clone() } else { vals[1].clone() }
                }
                _ => return Err(format!("unknown function {f}")),
            }
        }
    })
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(src: &str, root: &Value) -> Result<Value, String> {
        eval(&parse(src)?, root)
    }

    #[test]
    fn arithmetic_paths_and_functions() {
        let r = json!({"hp": 40, "stats": {"str": 7}, "name": "Ann", "bag": [1, 2, 3]});
        assert_eq!(run("hp * 2 + stats.str", &r).unwrap(), json!(87));
        assert_eq!(run("hp / 3", &r).unwrap().as_f64().unwrap(), 40.0 / 3.0);
        assert_eq!(run("hp / 4", &r).unwrap(), json!(10));
        assert_eq!(run("-(hp - 50)", &r).unwrap(), json!(10));
        assert_eq!(run("lower(name) + '#' + str(len(bag))", &r).unwrap(), json!("ann#3"));
        assert_eq!(
            run("if(hp >= 40 && !missing, 'alive', 'dead')", &r).unwrap(),
            json!("alive")
        );
        assert_eq!(run("missing ?? 5", &r).unwrap(), json!(5));
        assert_eq!(run("max(hp, 100)", &r).unwrap(), json!(100));
        assert_eq!(run("round(2.5) + floor(2.5)", &r).unwrap(), json!(5));
        assert_eq!(run("concat(name, \"-\", hp)", &r).unwrap(), json!("Ann-40"));
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        let r = json!({});
        assert!(parse("1 +").unwrap_err().contains("end of expression"));
        assert!(parse("nope(1)").unwrap_err().contains("unknown function 'nope'"));
        assert!(parse("if(1, 2)").unwrap_err().contains("takes 3..=3"));
        assert!(parse("(1").unwrap_err().contains("missing ')'"));
        assert!(run("1 / 0", &r).unwrap_err().contains("division by zero"));
        assert!(run("'a' * 2", &r).unwrap_err().contains("needs numbers"));
    }
}
