//! Instance environment from slipway.toml: `env_file` (dotenv, refused when others may read it) and `${NAME}`
//! references to the environment of the command that resolves them. Values are secrets: never in an error.

use std::collections::BTreeMap;
use std::path::Path;

/// Why a value or a line could not be used (it never quotes a value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EnvError {
    #[error("line {line}: {what}")]
    Line { line: usize, what: &'static str },
    #[error("${{{0}}} is not set in the environment of this command")]
    Unset(String),
    #[error("a `$` must be followed by `{{NAME}}` or another `$`")]
    Dollar,
    #[error("{path} may be read by group or others (mode {mode:o}); `chmod 600 {path}`, as ssh wants for keys")]
    Readable { path: String, mode: u32 },
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
}

/// One value of a dotenv file: quoted values are taken as they are written (`'…'` also without `${NAME}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Raw {
    pub text: String,
    /// `${NAME}` in it is replaced (not in single quotes).
    pub expand: bool,
}

/// `NAME=value` lines, `#` comments and blank lines, an optional `export `; values bare (trailing spaces and a
/// ` #` comment cut), in single quotes (literal) or double quotes (`\n`, `\"`, `\\`, `\$`).
pub(crate) fn parse(text: &str) -> Result<BTreeMap<String, Raw>, EnvError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let err = |what| EnvError::Line { line: i + 1, what };
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let l = l.strip_prefix("export ").map_or(l, str::trim_start);
        let (name, value) = l.split_once('=').ok_or(err("is not NAME=value"))?;
        let name = name.trim_end();
        if !valid_name(name) {
            return Err(err(
                "the name must be letters, digits and `_`, not starting with a digit",
            ));
        }
        let value = value.trim_start();
        let raw = if let Some(rest) = value.strip_prefix('\'') {
            let (v, tail) = rest.split_once('\'').ok_or(err("a single quote is not closed"))?;
            end_of_value(tail).ok_or(err("text after the closing quote"))?;
            Raw {
                text: v.to_string(),
                expand: false,
            }
        } else if let Some(rest) = value.strip_prefix('"') {
            let (v, tail) = double_quoted(rest).ok_or(err("a double quote is not closed"))?;
            end_of_value(tail).ok_or(err("text after the closing quote"))?;
            Raw { text: v, expand: true }
        } else {
            let v = value.split(" #").next().unwrap_or("").trim_end();
            Raw {
                text: v.to_string(),
                expand: true,
            }
        };
        out.insert(name.to_string(), raw);
    }
    Ok(out)
}

fn end_of_value(tail: &str) -> Option<()> {
    let t = tail.trim_start();
    (t.is_empty() || t.starts_with('#')).then_some(())
}

/// The inside of a double-quoted value, with its escapes (a `\$` stays `$$`, a `$` that expansion keeps), and
/// what follows the closing quote.
fn double_quoted(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                '$' => out.push_str("$$"),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

pub(crate) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `${NAME}` replaced by `vars(NAME)`, `$$` by `$`; any other `$` is an error (so a typo never ships a
/// half-expanded secret).
pub(crate) fn expand(value: &str, vars: &dyn Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let (name, r) = r.split_once('}').ok_or(EnvError::Dollar)?;
            if !valid_name(name) {
                return Err(EnvError::Dollar);
            }
            out.push_str(&vars(name).ok_or_else(|| EnvError::Unset(name.to_string()))?);
            rest = r;
        } else {
            return Err(EnvError::Dollar);
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads a dotenv file, refusing one that group or others may read.
pub(crate) fn read(path: &Path) -> Result<BTreeMap<String, Raw>, EnvError> {
    parse(&private_text(path)?)
}

/// A secret kept in a file of its own (the webhook's), trimmed; refused when group or others may read the file.
pub(crate) fn read_secret(path: &Path) -> Result<String, EnvError> {
    Ok(private_text(path)?.trim().to_string())
}

fn private_text(path: &Path) -> Result<String, EnvError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display().to_string();
    let read_err = |e: std::io::Error| EnvError::Read {
        path: shown.clone(),
        message: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(EnvError::Readable { path: shown, mode });
    }
    std::fs::read_to_string(path).map_err(read_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cr3t".to_string())
    }

    #[test]
    fn references_are_replaced_and_an_unset_one_or_a_stray_dollar_is_an_error_that_shows_no_value() {
        assert_eq!(expand("a-${TOKEN}-b", &vars).unwrap(), "a-s3cr3t-b");
        assert_eq!(expand("cost $$5", &vars).unwrap(), "cost $5");
        assert_eq!(expand("plain", &vars).unwrap(), "plain");
        assert_eq!(expand("${NOPE}", &vars).unwrap_err(), EnvError::Unset("NOPE".into()));
        for bad in ["$TOKEN", "${TOKEN", "${}", "${1X}", "end$"] {
            let e = expand(bad, &vars).unwrap_err();
            assert_eq!(e, EnvError::Dollar, "{bad}");
            assert!(!e.to_string().contains("s3cr3t"));
        }
    }

    #[test]
    fn a_dotenv_file_reads_bare_quoted_exported_and_commented_lines() {
        let text = "# comment\n\nA=1\nexport B = two words  # note\nC='lit ${TOKEN} #x'\nD=\"x\\ny \\\"q\\\" \\$5 ${TOKEN}\"\nE=\n";
        let m = parse(text).unwrap();
        let get = |k: &str| m[k].clone();
        assert_eq!(get("A").text, "1");
        assert_eq!(get("B").text, "two words");
        assert_eq!(
            get("C"),
            Raw {
                text: "lit ${TOKEN} #x".into(),
                expand: false
            }
        );
        assert_eq!(get("D").text, "x\ny \"q\" $$5 ${TOKEN}");
        assert_eq!(expand(&get("D").text, &vars).unwrap(), "x\ny \"q\" $5 s3cr3t");
        assert_eq!(get("E").text, "");
    }

    #[test]
    fn each_bad_dotenv_line_is_named_by_its_number() {
        for (text, line) in [
            ("A=1\nnoequals\n", 2),
            ("1A=x", 1),
            ("A='open", 1),
            ("A=\"open", 1),
            ("A='x' y", 1),
        ] {
            match parse(text).unwrap_err() {
                EnvError::Line { line: l, .. } => assert_eq!(l, line, "{text}"),
                e => panic!("{text}: {e}"),
            }
        }
    }

    #[test]
    fn a_secrets_file_others_may_read_is_refused_and_a_0600_one_is_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("slipway-envfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("app.env");
        std::fs::write(&p, "TOKEN=abc\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read(&p).unwrap_err();
        assert!(matches!(e, EnvError::Readable { mode: 0o644, .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read(&p).is_err(), "group-readable is refused too");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(&p).unwrap()["TOKEN"].text, "abc");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
