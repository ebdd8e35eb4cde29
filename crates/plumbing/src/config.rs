//! Reading a TOML config file: one loader and one error for every slipway config.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use wire::Problems;

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `cause` is not a `source`: the message already says it, once.
    #[error("cannot read {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path} is not a valid {what}: {message}")]
    Shape {
        path: PathBuf,
        what: &'static str,
        message: String,
    },
    #[error("{path} has {problems}")]
    Invalid { path: PathBuf, problems: Problems },
}

/// Reads `path` as TOML into `Raw` (a `what`, e.g. "router config"), then
/// validates it with `build`, which gets the file's absolute path.
///
/// Syntax errors, shape errors (unknown keys, wrong types) and the problems
/// `build` lists are told apart, so valid TOML is never called invalid TOML.
pub fn load<Raw, T>(
    path: &Path,
    what: &'static str,
    build: impl FnOnce(Raw, &Path) -> Result<T, Problems>,
) -> Result<T, ConfigError>
where
    Raw: DeserializeOwned + schemars::JsonSchema,
{
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    let raw = parse::<Raw>(&text, what).map_err(|e| e.at(path))?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    build(raw, &abs).map_err(|problems| ConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
    })
}

/// Why a text is not a `Raw`, before a path is known.
#[derive(Debug)]
pub struct ParseError {
    what: &'static str,
    kind: ParseErrorKind,
}

#[derive(Debug)]
enum ParseErrorKind {
    /// Not TOML at all.
    Syntax(String),
    /// Every unknown key and wrong value the schema found.
    Problems(Problems),
    /// What serde alone refused after the schema passed it.
    Shape(String),
}

impl ParseError {
    /// The problems the schema found, if that is why.
    pub fn problems(&self) -> Option<&Problems> {
        match &self.kind {
            ParseErrorKind::Problems(p) => Some(p),
            _ => None,
        }
    }

    pub fn at(self, path: &Path) -> ConfigError {
        let path = path.to_path_buf();
        match self.kind {
            ParseErrorKind::Syntax(message) => ConfigError::Syntax { path, message },
            ParseErrorKind::Problems(problems) => ConfigError::Invalid { path, problems },
            ParseErrorKind::Shape(message) => ConfigError::Shape {
                path,
                what: self.what,
                message,
            },
        }
    }
}

/// Parses TOML text into `Raw`: syntax errors first, then every unknown key and wrong value the schema of
/// `Raw` finds (all at once, named as in the file), then what serde alone still refuses.
pub fn parse<Raw: DeserializeOwned + schemars::JsonSchema>(text: &str, what: &'static str) -> Result<Raw, ParseError> {
    let fail = |kind| ParseError { what, kind };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| fail(ParseErrorKind::Syntax(one_line(&e))))?;
    let doc = serde_json::to_value(&table).unwrap_or_default();
    let found = wire::schema::check(&wire::schema::schema_of::<Raw>(), &doc);
    if !found.is_empty() {
        return Err(fail(ParseErrorKind::Problems(Problems { problems: found })));
    }
    // Read again from the text, so serde's own errors keep their line numbers.
    toml::from_str(text).map_err(|e| fail(ParseErrorKind::Shape(one_line(&e))))
}

/// toml's messages carry a multi-line source excerpt; keep it, but start
/// with the line and the message so a log line says what is wrong.
fn one_line(e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(_) => {
            let full = e.to_string();
            let loc = full
                .lines()
                .next()
                .unwrap_or_default()
                .trim_end_matches(':')
                .to_string();
            // The excerpt is the lines with a gutter; the message after it is said first.
            let excerpt: Vec<&str> = full.lines().skip(1).filter(|l| l.contains('|')).collect();
            format!("{loc}: {msg}\n{}", excerpt.join("\n"))
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        #[allow(dead_code)]
        name: String,
        #[allow(dead_code)]
        #[serde(default)]
        count: u32,
    }

    #[test]
    fn valid_toml_with_wrong_keys_and_values_lists_them_all_and_never_says_not_valid_toml() {
        let e = parse::<Raw>("name = 3\nbogus = 1\ncont = 2\n", "test config").unwrap_err();
        let problems = e.problems().expect("the schema's findings").clone();
        let paths: Vec<&str> = problems.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["name", "bogus", "cont"], "{problems}");
        assert!(
            problems.problems[2].message.contains("did you mean `count`"),
            "{problems}"
        );
        let shown = e.at(Path::new("x.toml")).to_string();
        assert!(shown.starts_with("x.toml has 3 problems"), "{shown}");
        assert!(!shown.contains("not valid TOML"), "{shown}");
    }

    #[test]
    fn broken_toml_is_a_syntax_error_with_its_line() {
        let e = parse::<Raw>("name = \"a\"\n[[oops\n", "test config").unwrap_err();
        assert!(matches!(e.kind, ParseErrorKind::Syntax(_)));
        let shown = e.at(Path::new("x.toml")).to_string();
        assert!(shown.starts_with("x.toml is not valid TOML"), "{shown}");
        assert!(shown.contains("line 2"), "{shown}");
    }

    #[test]
    fn load_hands_the_absolute_path_to_build_and_lists_its_problems() {
        let dir = std::env::temp_dir().join(format!("plumbing-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "name = \"a\"\n").unwrap();
        let seen = load(&f, "test config", |_: Raw, abs| Ok(abs.to_path_buf())).unwrap();
        assert!(seen.is_absolute());
        let e = load(&f, "test config", |_: Raw, _| -> Result<(), Problems> {
            Err(Problems {
                problems: vec![
                    wire::Problem::new("name", "too short"),
                    wire::Problem::new("other", "missing"),
                ],
            })
        })
        .unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains("name") && shown.contains("other"), "{shown}");
        let missing = load(&dir.join("nope.toml"), "test config", |_: Raw, _| Ok(())).unwrap_err();
        assert!(matches!(missing, ConfigError::Read { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
