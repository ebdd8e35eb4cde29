//! The JSON Schema of every config file, and a checker that lists every unknown key and wrong value at once.
//!
//! serde stops at the first problem; [`check`] walks the whole document against the schema the config types
//! derive, so `slipway validate` and every process's start-up can name all of them, as the file names them.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::problem::Problem;

/// The JSON Schema of `T` (a config file's raw type), draft 2020-12 as schemars writes it.
pub fn schema_of<T: schemars::JsonSchema>() -> Value {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.meta_schema = Some("https://json-schema.org/draft/2020-12/schema".into());
    settings.into_generator().into_root_schema_for::<T>().to_value()
}

/// A kind of config file slipway reads, with its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFile {
    /// `slipway.toml`, the service definition.
    Service,
    /// `slipway.release.toml` at the top of a release folder.
    Release,
    /// The router's config (`slipway router --config`).
    Router,
    /// A route table (`initial_routes`, `PUT /v1/routes`).
    Routes,
    /// The agent's config (`slipway agent --config`).
    Agent,
}

impl ConfigFile {
    pub const ALL: [ConfigFile; 5] = [
        ConfigFile::Service,
        ConfigFile::Release,
        ConfigFile::Router,
        ConfigFile::Routes,
        ConfigFile::Agent,
    ];

    /// The short name (`slipway config schema NAME`, `docs/schema/NAME.schema.json`).
    pub fn name(self) -> &'static str {
        match self {
            ConfigFile::Service => "slipway",
            ConfigFile::Release => "release",
            ConfigFile::Router => "router",
            ConfigFile::Routes => "routes",
            ConfigFile::Agent => "agent",
        }
    }

    /// The file as people know it.
    pub fn title(self) -> &'static str {
        match self {
            ConfigFile::Service => "slipway.toml (the service definition)",
            ConfigFile::Release => "slipway.release.toml (in a release folder)",
            ConfigFile::Router => "router.toml (slipway router --config)",
            ConfigFile::Routes => "routes.toml (a route table)",
            ConfigFile::Agent => "agent.toml (slipway agent --config)",
        }
    }

    pub fn schema(self) -> Value {
        let mut s = match self {
            ConfigFile::Service => schema_of::<crate::service::ServiceFile>(),
            ConfigFile::Release => schema_of::<crate::agent::ReleaseManifest>(),
            ConfigFile::Router => schema_of::<crate::router_config::RouterConfigFile>(),
            ConfigFile::Routes => schema_of::<crate::routes::RouteTable>(),
            ConfigFile::Agent => schema_of::<crate::agent::AgentConfigFile>(),
        };
        if let Some(o) = s.as_object_mut() {
            o.insert("title".into(), Value::from(self.title()));
        }
        s
    }

    pub fn from_name(name: &str) -> Option<ConfigFile> {
        ConfigFile::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// `docs/config.md`: the reference of every config file, from the types (a test keeps the file equal to it).
pub fn config_reference() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the config types by `slipway config reference` (a test fails when this file and the\n\
         code disagree). Editors that read JSON Schema (Taplo, Even Better TOML) can check and complete the\n\
         files with `docs/schema/<name>.schema.json` (`slipway config schema <name>`): put\n\
         `#:schema ./docs/schema/slipway.schema.json` on the first line of `slipway.toml`. Durations are\n\
         written `\"250ms\"`, `\"30s\"`, `\"2m\"`, `\"1h\"`, `\"1d\"` or as a number of milliseconds. Every table\n\
         refuses keys it does not know, and `slipway validate` lists every problem of a file at once.\n",
    );
    for f in ConfigFile::ALL {
        out.push('\n');
        out.push_str(&reference(f.title(), &f.schema()));
    }
    out
}

/// Every place where `doc` (a config file read into JSON) does not fit `schema`: unknown keys, wrong types,
/// values out of their set, missing keys. Paths are the file's own: `deploy.canary.steps[1].hold`.
pub fn check(schema: &Value, doc: &Value) -> Vec<Problem> {
    let mut out = Vec::new();
    Checker { root: schema }.value(schema, doc, "", &mut out);
    out
}

struct Checker<'a> {
    root: &'a Value,
}

/// The keys of an object that a schema (and the branches it took) knows.
type Known = BTreeSet<String>;

impl<'a> Checker<'a> {
    /// Checks `v` against `s`; returns the keys of `v` (an object) the schema looked at.
    fn value(&self, s: &'a Value, v: &Value, at: &str, out: &mut Vec<Problem>) -> Known {
        let s = self.resolve(s);
        let Some(obj) = s.as_object() else {
            if s == &Value::Bool(false) {
                out.push(Problem::new(at, "is not allowed here"));
            }
            return Known::new();
        };
        let mut known = Known::new();
        if let Some(all) = obj.get("allOf").and_then(Value::as_array) {
            for sub in all {
                known.extend(self.value(sub, v, at, out));
            }
        }
        let desc = obj.get("description").and_then(Value::as_str);
        for key in ["anyOf", "oneOf"] {
            if let Some(branches) = obj.get(key).and_then(Value::as_array) {
                known.extend(self.branches(branches, desc, v, at, out));
            }
        }
        if !self.scalar(obj, v, at, out) {
            return known;
        }
        if let (Some(map), true) = (v.as_object(), is_object_schema(obj)) {
            known.extend(self.object(obj, map, at, out));
        }
        if let (Some(list), Some(items)) = (v.as_array(), obj.get("items")) {
            for (i, item) in list.iter().enumerate() {
                self.value(items, item, &format!("{at}[{i}]"), out);
            }
        }
        // Closed over everything it and its branches know (a struct with a flattened enum).
        if obj.get("unevaluatedProperties") == Some(&Value::Bool(false))
            && let Some(map) = v.as_object()
        {
            unknown(map, &known, at, out);
        }
        known
    }

    /// Type, set and range; false when the value is of the wrong type (nothing more is said of it).
    fn scalar(&self, s: &Map<String, Value>, v: &Value, at: &str, out: &mut Vec<Problem>) -> bool {
        if let Some(t) = s.get("type") {
            let types: Vec<&str> = match t {
                Value::String(one) => vec![one.as_str()],
                Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            if !types.is_empty() && !types.iter().any(|t| fits(t, v)) {
                out.push(Problem::new(
                    at,
                    format!("expected {}, found {}", types.join(" or "), describe(v)),
                ));
                return false;
            }
        }
        if let Some(c) = s.get("const")
            && c != v
        {
            out.push(Problem::new(at, format!("must be {c}, not {v}")));
        }
        if let Some(set) = s.get("enum").and_then(Value::as_array)
            && !set.contains(v)
        {
            let names: Vec<String> = set.iter().map(Value::to_string).collect();
            out.push(Problem::new(at, format!("{v} is not one of {}", names.join(", "))));
        }
        if let (Some(p), Some(text)) = (s.get("pattern").and_then(Value::as_str), v.as_str())
            && regex::Regex::new(p).is_ok_and(|re| !re.is_match(text))
        {
            let what = s
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("the expected form");
            out.push(Problem::new(at, format!("{v} is not {}", lowercase_first(what))));
        }
        if let Some(n) = v.as_f64() {
            if let Some(min) = s.get("minimum").and_then(Value::as_f64)
                && n < min
            {
                out.push(Problem::new(at, format!("must be at least {min}, not {v}")));
            }
            if let Some(max) = s.get("maximum").and_then(Value::as_f64)
                && n > max
            {
                out.push(Problem::new(at, format!("must be at most {max}, not {v}")));
            }
        }
        true
    }

    /// Properties, required keys, and unknown keys when the schema is closed.
    fn object(&self, s: &'a Map<String, Value>, map: &Map<String, Value>, at: &str, out: &mut Vec<Problem>) -> Known {
        let props = s.get("properties").and_then(Value::as_object);
        let mut known = Known::new();
        if let Some(props) = props {
            for (k, sub) in props {
                known.insert(k.clone());
                if let Some(v) = map.get(k) {
                    self.value(sub, v, &join(at, k), out);
                }
            }
        }
        if let Some(req) = s.get("required").and_then(Value::as_array) {
            for k in req.iter().filter_map(Value::as_str) {
                if !map.contains_key(k) {
                    out.push(Problem::new(join(at, k), "is missing"));
                }
            }
        }
        match s.get("additionalProperties") {
            Some(Value::Bool(false)) => unknown(map, &known, at, out),
            Some(extra @ Value::Object(_)) => {
                let extras: Vec<(&String, &Value)> = map.iter().filter(|(k, _)| !known.contains(*k)).collect();
                for (k, v) in extras {
                    self.value(extra, v, &join(at, k), out);
                    known.insert(k.clone());
                }
            }
            _ => {}
        }
        known
    }

    /// `anyOf` / `oneOf`: fine when one branch fits; otherwise the problems of the branch the value meant.
    fn branches(
        &self,
        branches: &'a [Value],
        desc: Option<&str>,
        v: &Value,
        at: &str,
        out: &mut Vec<Problem>,
    ) -> Known {
        // TOML has no null: an `Option`'s null branch is never what a value meant.
        let branches: Vec<&'a Value> = branches
            .iter()
            .filter(|b| v.is_null() || self.resolve(b).get("type") != Some(&Value::String("null".into())))
            .collect();
        let mut tried: Vec<(Vec<Problem>, Known, bool)> = Vec::new();
        for b in branches.iter().copied() {
            let mut p = Vec::new();
            let known = self.value(b, v, at, &mut p);
            let closed = self.closed_unknowns(b, v, &known, at, &mut p);
            if p.is_empty() {
                return known;
            }
            tried.push((p, known, closed && self.tag_matches(b, v)));
        }
        // A tagged branch whose tag matches is the one meant; else the branch with the fewest problems.
        let pick = tried
            .iter()
            .position(|t| t.2)
            .or_else(|| (0..tried.len()).min_by_key(|i| tried[*i].0.len()));
        match pick {
            Some(i) if tried.len() == 1 || tried[i].2 || !all_scalars(&branches, self) => {
                let (p, known, _) = tried.swap_remove(i);
                out.extend(p);
                known
            }
            _ => {
                let what = match desc {
                    Some(d) if !branches.iter().any(|b| self.resolve(b).get("const").is_some()) => {
                        lowercase_first(d).trim_end_matches('.').to_string()
                    }
                    _ => self.alternatives(&branches),
                };
                out.push(Problem::new(at, format!("{} is not {what}", describe(v))));
                Known::new()
            }
        }
    }

    /// For a branch that is an object schema with its own `unevaluatedProperties: false`, reports keys it
    /// did not know (a flattened, tagged enum's variant). True when the branch is such a closed object.
    fn closed_unknowns(&self, b: &'a Value, v: &Value, known: &Known, at: &str, out: &mut Vec<Problem>) -> bool {
        let b = self.resolve(b);
        let closed = b.get("unevaluatedProperties") == Some(&Value::Bool(false));
        if let (true, Some(map)) = (closed, v.as_object()) {
            unknown(map, known, at, out);
        }
        closed || b.get("properties").is_some()
    }

    /// Whether the branch's `const` properties (an internally tagged enum's tag) match the value.
    fn tag_matches(&self, b: &'a Value, v: &Value) -> bool {
        let b = self.resolve(b);
        let Some(props) = b.get("properties").and_then(Value::as_object) else {
            return false;
        };
        let tags: Vec<(&String, &Value)> = props
            .iter()
            .filter_map(|(k, s)| self.resolve(s).get("const").map(|c| (k, c)))
            .collect();
        !tags.is_empty() && tags.iter().all(|(k, c)| v.get(k.as_str()) == Some(c))
    }

    /// "a duration … or \"unlimited\"": what the branches accept, in words.
    fn alternatives(&self, branches: &[&'a Value]) -> String {
        let words: Vec<String> = branches
            .iter()
            .map(|b| {
                let b = self.resolve(b);
                if let Some(c) = b.get("const") {
                    return c.to_string();
                }
                if let Some(set) = b.get("enum").and_then(Value::as_array) {
                    return set.iter().map(Value::to_string).collect::<Vec<_>>().join(", ");
                }
                if let Some(d) = b.get("description").and_then(Value::as_str) {
                    return lowercase_first(d).trim_end_matches('.').to_string();
                }
                b.get("type")
                    .map_or("something else".into(), |t| t.to_string().replace('"', ""))
            })
            .collect();
        format!("one of: {}", words.join("; "))
    }

    fn resolve(&self, mut s: &'a Value) -> &'a Value {
        for _ in 0..32 {
            let Some(r) = s.get("$ref").and_then(Value::as_str) else {
                break;
            };
            let Some(next) = r.strip_prefix('#').and_then(|p| self.root.pointer(p)) else {
                break;
            };
            s = next;
        }
        s
    }
}

fn all_scalars(branches: &[&Value], c: &Checker<'_>) -> bool {
    branches
        .iter()
        .all(|b| !is_object_schema(c.resolve(b).as_object().unwrap_or(&Map::new())))
}

fn is_object_schema(s: &Map<String, Value>) -> bool {
    s.contains_key("properties")
        || s.contains_key("additionalProperties")
        || s.get("type").is_some_and(|t| t == "object")
}

fn unknown(map: &Map<String, Value>, known: &Known, at: &str, out: &mut Vec<Problem>) {
    for k in map.keys().filter(|k| !known.contains(*k)) {
        let hint = nearest(k, known).map_or(String::new(), |n| format!(" (did you mean `{n}`?)"));
        let all: Vec<&str> = known.iter().map(String::as_str).collect();
        out.push(Problem::new(
            join(at, k),
            format!("unknown key{hint}; known here: {}", all.join(", ")),
        ));
    }
}

/// The known key closest to a misspelled one, when it is close.
fn nearest<'k>(k: &str, known: &'k Known) -> Option<&'k str> {
    known
        .iter()
        .map(|n| (distance(k, n), n.as_str()))
        .filter(|(d, n)| *d <= 2.max(n.len() / 4))
        .min()
        .map(|(_, n)| n)
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn fits(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        _ => true,
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Object(_) => "a table".into(),
        Value::Array(_) => "an array".into(),
        other => other.to_string(),
    }
}

fn join(at: &str, k: &str) -> String {
    if at.is_empty() {
        k.to_string()
    } else {
        format!("{at}.{k}")
    }
}

fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// A config file's reference in Markdown, from its schema: every key with its type, default and meaning,
/// section by section as the file is written (`[deploy.canary]`, `[[listener]]`).
pub fn reference(title: &str, schema: &Value) -> String {
    let mut out = format!("## {title}\n");
    let r = Reference { root: schema };
    let mut sections = Vec::new();
    r.section(schema, "", false, &mut sections);
    for (name, rows, about) in sections {
        if !name.is_empty() {
            out.push_str(&format!("\n### `{name}`\n"));
        }
        if let Some(a) = about {
            out.push_str(&format!("\n{}\n", one_paragraph(&a)));
        }
        if rows.is_empty() {
            continue;
        }
        out.push_str("\n| key | type | default | meaning |\n|---|---|---|---|\n");
        for row in rows {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                row.key,
                row.kind,
                row.default,
                one_paragraph(&row.meaning).replace('|', "\\|")
            ));
        }
    }
    out
}

/// Every key (as `section.key`) that has no meaning written in the config types.
pub fn undocumented(schema: &Value) -> Vec<String> {
    let mut sections = Vec::new();
    Reference { root: schema }.section(schema, "", false, &mut sections);
    sections
        .into_iter()
        .flat_map(|(name, rows, _)| {
            rows.into_iter().filter(|r| r.meaning.trim().is_empty()).map(move |r| {
                if name.is_empty() {
                    r.key.clone()
                } else {
                    format!("{name}.{}", r.key)
                }
            })
        })
        .collect()
}

struct Row {
    key: String,
    kind: String,
    default: String,
    meaning: String,
}

type Section = (String, Vec<Row>, Option<String>);

struct Reference<'a> {
    root: &'a Value,
}

impl<'a> Reference<'a> {
    fn resolve(&self, s: &'a Value) -> &'a Value {
        Checker { root: self.root }.resolve(s)
    }

    /// A table's rows, then its sub-tables as sections of their own.
    fn section(&self, s: &'a Value, name: &str, array: bool, out: &mut Vec<Section>) {
        let s = self.resolve(s);
        let shown = match (name.is_empty(), array) {
            (true, _) => String::new(),
            (false, true) => format!("[[{name}]]"),
            (false, false) => format!("[{name}]"),
        };
        let about = s.get("description").and_then(Value::as_str).map(str::to_string);
        let at = out.len();
        out.push((shown, Vec::new(), about));
        let mut subs: Vec<(String, &'a Value, bool)> = Vec::new();
        let mut rows = Vec::new();
        if let Some(props) = s.get("properties").and_then(Value::as_object) {
            for (k, p) in props {
                let full = if name.is_empty() {
                    k.clone()
                } else {
                    format!("{name}.{k}")
                };
                match self.table(p) {
                    Some((t, is_array)) => subs.push((full, t, is_array)),
                    None => rows.push(self.row(k, p, None, required(s, k))),
                }
            }
        }
        // A flattened, tagged enum (a metric's kind): its variants' keys, each said for which kind.
        for key in ["oneOf", "anyOf"] {
            for b in s.get(key).and_then(Value::as_array).into_iter().flatten() {
                let b = self.resolve(b);
                let Some(props) = b.get("properties").and_then(Value::as_object) else {
                    continue;
                };
                let tag = props
                    .iter()
                    .find_map(|(k, p)| self.resolve(p).get("const").map(|c| (k, c)));
                for (k, p) in props {
                    let for_tag = tag.filter(|(tk, _)| *tk != k).map(|(tk, c)| format!("{tk} = {c}"));
                    let mut row = self.row(k, p, for_tag, required(b, k));
                    if row.meaning.is_empty() && tag.is_some_and(|(tk, _)| tk == k) {
                        row.meaning = b.get("description").and_then(Value::as_str).unwrap_or_default().into();
                    }
                    rows.push(row);
                }
            }
        }
        out[at].1 = rows;
        for (full, t, is_array) in subs {
            self.section(t, &full, is_array, out);
        }
    }

    /// A property that is a table (or an array of tables) of its own: its schema.
    fn table(&self, p: &'a Value) -> Option<(&'a Value, bool)> {
        let p = self.resolve(p);
        // An optional table: `anyOf` of it and null.
        if let Some(bs) = p.get("anyOf").and_then(Value::as_array) {
            let tables: Vec<&'a Value> = bs
                .iter()
                .map(|b| self.resolve(b))
                .filter(|b| self.is_table(b))
                .collect();
            if let [one] = tables.as_slice() {
                return Some((one, false));
            }
        }
        if self.is_table(p) {
            return Some((p, false));
        }
        let items = p.get("items").map(|i| self.resolve(i))?;
        self.is_table(items).then_some((items, true))
    }

    fn is_table(&self, s: &Value) -> bool {
        s.get("properties").is_some()
    }

    fn row(&self, key: &str, p: &'a Value, for_tag: Option<String>, required: bool) -> Row {
        let meaning = p
            .get("description")
            .or_else(|| self.resolve(p).get("description").filter(|_| !self.is_named_type(p)))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let meaning = match for_tag {
            Some(t) => format!("(with `{t}`) {meaning}"),
            None => meaning,
        };
        let default = match p.get("default") {
            _ if required => "required".into(),
            None | Some(Value::Null) => "—".into(),
            Some(d) => format!("`{}`", toml_value(d)),
        };
        Row {
            key: key.into(),
            kind: self.kind(p),
            default,
            meaning,
        }
    }

    /// Whether `p` is a `$ref` to a named type whose own description says what the type is, not the key.
    fn is_named_type(&self, p: &Value) -> bool {
        p.get("$ref").is_some()
    }

    fn kind(&self, p: &'a Value) -> String {
        let r = self.resolve(p);
        if let Some(name) = p.get("$ref").and_then(Value::as_str).and_then(|r| r.rsplit('/').next())
            && matches!(name, "Duration" | "Deadline")
        {
            return if name == "Duration" {
                "duration".into()
            } else {
                "duration or `\"unlimited\"`".into()
            };
        }
        if let Some(c) = r.get("const") {
            return format!("`{}`", toml_value(c));
        }
        let consts: Vec<String> = r
            .get("oneOf")
            .or_else(|| r.get("anyOf"))
            .and_then(Value::as_array)
            .map(|bs| {
                bs.iter()
                    .flat_map(|b| {
                        let b = self.resolve(b);
                        let mut v: Vec<String> = b
                            .get("const")
                            .map(|c| format!("`{}`", toml_value(c)))
                            .into_iter()
                            .collect();
                        if let Some(e) = b.get("enum").and_then(Value::as_array) {
                            v.extend(e.iter().map(|c| format!("`{}`", toml_value(c))));
                        }
                        v
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !consts.is_empty() {
            return format!("one of {}", consts.join(", "));
        }
        if let Some(bs) = r.get("anyOf").and_then(Value::as_array) {
            let kinds: Vec<String> = bs
                .iter()
                .filter(|b| b.get("type") != Some(&Value::String("null".into())))
                .map(|b| self.kind(b))
                .collect();
            return kinds.join(" or ");
        }
        if let Some(e) = r.get("enum").and_then(Value::as_array) {
            let names: Vec<String> = e.iter().map(|c| format!("`{}`", toml_value(c))).collect();
            return format!("one of {}", names.join(", "));
        }
        let types: Vec<&str> = match r.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect(),
            _ => Vec::new(),
        };
        match types.as_slice() {
            ["array"] => format!("array of {}", r.get("items").map_or("values".into(), |i| self.kind(i))),
            ["object"] => match r.get("additionalProperties") {
                Some(v @ Value::Object(_)) => format!("table of {}", self.kind(v)),
                _ => "table".into(),
            },
            ["integer"] if r.get("minimum").is_some() => "integer ≥ 0".into(),
            [one] => (*one).into(),
            _ => "value".into(),
        }
    }
}

/// A default as it would be written in the TOML file.
fn toml_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        Value::Array(a) => format!("[{}]", a.iter().map(toml_value).collect::<Vec<_>>().join(", ")),
        Value::Object(m) if m.is_empty() => "{}".into(),
        Value::Object(m) => format!(
            "{{ {} }}",
            m.iter()
                .map(|(k, v)| format!("{k} = {}", toml_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

fn required(s: &Value, key: &str) -> bool {
    s.get("required")
        .and_then(Value::as_array)
        .is_some_and(|r| r.iter().any(|k| k == key))
}

fn one_paragraph(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::service::ServiceFile;

    const GOOD: &str = r#"
[service]
name = "shop"

[[listener]]
name = "web"
kind = "http"
addr = "0.0.0.0:8080"
drain_deadline = "unlimited"

[instance]
count = 4
command = "bin/server"
readiness = { kind = "http", path = "/healthz" }
drain = { path = "/drain", signal = "SIGTERM", stop_deadline = "30s" }

[routing]
affinity = { mode = "header", header = "x-user" }

[[routing.cohort]]
release = "v2"
header = "x-beta"
equals = "1"

[deploy]
strategy = "canary"
drain_deadline = 60000

[deploy.canary]
steps = [{ weight = 1, hold = "30s" }, { weight = 10, hold = "2m" }]

[deploy.canary.analysis]
metrics = [
  { name = "errors", kind = "error_rate", absolute_tolerance = 0.01 },
  { name = "p99", kind = "latency", quantile = 0.99, absolute_tolerance = "5ms" },
]
"#;

    fn json(text: &str) -> Value {
        serde_json::to_value(text.parse::<toml::Table>().unwrap()).unwrap()
    }

    fn problems(text: &str) -> Vec<Problem> {
        check(&schema_of::<ServiceFile>(), &json(text))
    }

    #[test]
    fn docs_config_md_and_the_json_schemas_are_what_the_types_say() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
        let refresh = "refresh with: cargo run -p slipway -- config reference > docs/config.md; \
                       for n in slipway release router routes agent; do \
                       cargo run -p slipway -- config schema $n > docs/schema/$n.schema.json; done";
        let md = std::fs::read_to_string(docs.join("config.md")).unwrap_or_default();
        assert!(
            md == config_reference(),
            "docs/config.md differs from the config types; {refresh}"
        );
        for f in ConfigFile::ALL {
            let path = docs.join(format!("schema/{}.schema.json", f.name()));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let want = serde_json::to_string_pretty(&f.schema()).unwrap() + "\n";
            assert!(
                text == want,
                "{} differs from the config types; {refresh}",
                path.display()
            );
        }
    }

    #[test]
    fn every_key_of_every_config_file_has_a_meaning() {
        for f in ConfigFile::ALL {
            let missing = undocumented(&f.schema());
            assert!(missing.is_empty(), "{}: no doc comment on {missing:?}", f.title());
        }
    }

    #[test]
    fn a_good_service_file_has_no_problems() {
        assert_eq!(problems(GOOD), Vec::new());
        let _: ServiceFile = toml::from_str(GOOD).unwrap();
        for spelling in ["blue-green", "blue_green"] {
            let text = GOOD.replace("strategy = \"canary\"", &format!("strategy = \"{spelling}\""));
            assert_eq!(problems(&text), Vec::new(), "{spelling}");
            let f: ServiceFile = toml::from_str(&text).unwrap();
            assert_eq!(f.deploy.strategy, crate::service::Strategy::BlueGreen);
        }
    }

    #[test]
    fn every_unknown_key_and_wrong_value_is_listed_at_once_named_as_in_the_file() {
        let bad = GOOD
            .replace("count = 4", "count = \"four\"\nbogus = 1")
            .replace("hold = \"30s\"", "hold = \"30 seconds\"")
            .replace("kind = \"http\"\naddr", "kind = \"udp\"\naddr")
            .replace("strategy = \"canary\"", "strategy = \"sideways\"\nstratgy = \"canary\"")
            .replace("absolute_tolerance = 0.01 }", "absolute_tolerance = 0.01, bogus = 1 }")
            .replace("mode = \"header\"", "mode = \"cookies\"")
            .replace("drain_deadline = \"unlimited\"", "drain_deadline = \"soon\"")
            .replace("name = \"shop\"", "");
        let found = problems(&bad);
        let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "instance.count",
            "instance.bogus",
            "deploy.canary.steps[0].hold",
            "listener[0].kind",
            "deploy.strategy",
            "deploy.stratgy",
            "deploy.canary.analysis.metrics[0].bogus",
            "routing.affinity.mode",
            "listener[0].drain_deadline",
            "service.name",
        ] {
            assert!(paths.contains(&want), "{want} not reported: {found:#?}");
        }
        assert_eq!(found.len(), 10, "one problem each: {found:#?}");
        let say = |path: &str| found.iter().find(|p| p.path == path).unwrap().message.clone();
        assert!(
            say("deploy.stratgy").contains("did you mean `strategy`"),
            "{}",
            say("deploy.stratgy")
        );
        assert!(
            say("deploy.canary.steps[0].hold").contains("duration"),
            "{}",
            say("deploy.canary.steps[0].hold")
        );
        assert!(
            say("routing.affinity.mode").contains("\"cookie\""),
            "{}",
            say("routing.affinity.mode")
        );
        assert!(
            say("instance.count").contains("expected integer"),
            "{}",
            say("instance.count")
        );
        assert_eq!(say("service.name"), "is missing");
    }

    /// A value to put where another was: of every JSON type, some near the right ones.
    fn replacement() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::from(3)),
            Just(Value::from(-1)),
            Just(Value::from(0.5)),
            Just(Value::from(true)),
            Just(Value::from("30s")),
            Just(Value::from("http")),
            Just(Value::from("nonsense")),
            Just(Value::from("unlimited")),
            Just(Value::from("blue-green")),
            Just(Value::from("blue_green")),
            Just(serde_json::json!([])),
            Just(serde_json::json!({})),
            Just(serde_json::json!({ "weight": 5, "hold": "1s" })),
        ]
    }

    /// Every place in a document, as JSON pointers.
    fn places(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => m.iter().for_each(|(k, x)| places(x, format!("{at}/{k}"), out)),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, x)| places(x, format!("{at}/{i}"), out)),
            _ => {}
        }
        out.push(at);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        /// The check and serde agree on every mutated file: no problem exactly when serde reads it.
        #[test]
        fn the_check_refuses_exactly_what_serde_refuses(
            picks in proptest::collection::vec((any::<prop::sample::Index>(), 0..3u8, replacement(), "[a-z_]{1,8}"), 1..4)
        ) {
            let schema = schema_of::<ServiceFile>();
            let mut doc = json(GOOD);
            for (idx, how, with, key) in picks {
                let mut all = Vec::new();
                places(&doc, String::new(), &mut all);
                let at = idx.get(&all).clone();
                match how {
                    0 => if let Some(slot) = doc.pointer_mut(&at) { *slot = with },
                    1 => if let Some(Value::Object(m)) = doc.pointer_mut(&at) { m.insert(key, with); },
                    _ => {
                        let (parent, last) = at.rsplit_once('/').unwrap_or(("", ""));
                        if let Some(Value::Object(m)) = doc.pointer_mut(parent) { m.remove(last); }
                    }
                }
            }
            let found = check(&schema, &doc);
            // serde as the file is read: the document written back as TOML text, then parsed.
            let text = toml::Table::try_from(doc.clone()).ok().and_then(|t| toml::to_string(&t).ok());
            prop_assume!(text.is_some());
            let serde = toml::from_str::<ServiceFile>(&text.unwrap_or_default());
            // The check is stricter where serde is lenient: unknown keys next to a flattened enum, and a table
            // written as an array (serde reads a struct from a sequence of its fields).
            let lenient = |p: &Problem| {
                (p.path.starts_with("deploy.canary.analysis.metrics[") && p.message.starts_with("unknown key"))
                    || p.message.ends_with("found an array")
            };
            let stricter = serde.is_ok() && !found.is_empty() && found.iter().all(lenient);
            prop_assert!(
                found.is_empty() == serde.is_ok() || stricter,
                "check: {:?}\nserde: {:?}\ndoc: {}", found, serde.err(), doc
            );
        }
    }
}
