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
    Raw: DeserializeOwned,
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
    message: String,
    syntax: bool,
}

impl ParseError {
    fn at(self, path: &Path) -> ConfigError {
        let path = path.to_path_buf();
        if self.syntax {
            ConfigError::Syntax {
                path,
                message: self.message,
            }
        } else {
            ConfigError::Shape {
                path,
                what: self.what,
                message: self.message,
            }
        }
    }
}

/// Parses TOML text into `Raw`, telling syntax errors from shape errors.
pub fn parse<Raw: DeserializeOwned>(text: &str, what: &'static str) -> Result<Raw, ParseError> {
    // Parsed twice: once for the syntax alone, once into the shape (config
    // files are small; both errors keep their line numbers).
    text.parse::<toml::Table>().map_err(|e| ParseError {
        what,
        message: one_line(&e),
        syntax: true,
    })?;
    toml::from_str(text).map_err(|e| ParseError {
        what,
        message: one_line(&e),
        syntax: false,
    })
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

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        #[allow(dead_code)]
        name: String,
    }

    #[test]
    fn valid_toml_with_a_wrong_key_is_a_shape_error_not_a_syntax_error() {
        let e = parse::<Raw>("name = \"a\"\nbogus = 1\n", "test config").unwrap_err();
        assert!(!e.syntax);
        assert!(e.message.contains("bogus"), "{}", e.message);
        assert!(e.message.contains("line 2"), "{}", e.message);
        let c = e.at(Path::new("x.toml"));
        let shown = c.to_string();
        assert!(shown.starts_with("x.toml is not a valid test config"), "{shown}");
        assert!(!shown.contains("not valid TOML"), "{shown}");
    }

    #[test]
    fn broken_toml_is_a_syntax_error_with_its_line() {
        let e = parse::<Raw>("name = \"a\"\n[[oops\n", "test config").unwrap_err();
        assert!(e.syntax);
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
