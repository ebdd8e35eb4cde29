//! `patch.toml` in a build folder: priorities and tags per file for on-demand installs. Rules are
//! tried in order and the first whose glob matches decides; `*` matches within a path component,
//! `**` any number of components, `?` one character.

use serde::Deserialize;

/// The name of the spec file in a build (it is not part of the release).
pub const SPEC_FILE: &str = "patch.toml";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Priority of files no rule matches (lower is fetched sooner).
    #[serde(default = "default_priority")]
    pub default_priority: u32,
    #[serde(default, rename = "files")]
    pub rules: Vec<Rule>,
}

fn default_priority() -> u32 {
    100
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub glob: String,
    #[serde(default)]
    pub priority: Option<u32>,
    #[serde(default)]
    pub tags: Vec<String>,
}

impl Spec {
    /// Parses a spec; every problem at once, named as in the file.
    pub fn parse(text: &str) -> Result<Spec, String> {
        let spec: Spec = toml::from_str(text).map_err(|e| format!("{SPEC_FILE}: {e}"))?;
        let mut problems = Vec::new();
        for (i, r) in spec.rules.iter().enumerate() {
            if r.glob.is_empty() || r.glob.starts_with('/') {
                problems.push(format!(
                    "{SPEC_FILE}: files[{i}].glob {:?} must be a relative pattern",
                    r.glob
                ));
            }
            for t in &r.tags {
                if t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                    problems.push(format!(
                        "{SPEC_FILE}: files[{i}].tags: {t:?} is not a tag (letters, digits, -_.)"
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(spec)
        } else {
            Err(problems.join("\n"))
        }
    }

    /// Priority and tags of `path`.
    pub fn classify(&self, path: &str) -> (u32, Vec<String>) {
        for r in &self.rules {
            if glob_match(r.glob.as_bytes(), path.as_bytes()) {
                return (r.priority.unwrap_or(self.default_priority), r.tags.clone());
            }
        }
        (self.default_priority, Vec::new())
    }
}

/// Matches `path` against `pat` (see the module docs).
pub fn glob_match(pat: &[u8], path: &[u8]) -> bool {
    if pat.starts_with(b"**") {
        let rest = &pat[2..];
        let rest = rest.strip_prefix(b"/").unwrap_or(rest);
        // `**` takes zero or more whole components.
        if glob_match(rest, path) {
            return true;
        }
        return path
            .iter()
            .enumerate()
            .any(|(i, &c)| c == b'/' && glob_match(rest, &path[i + 1..]))
            || (rest.is_empty() && !path.is_empty());
    }
    match (pat.first(), path.first()) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some(b'*'), _) => {
            let rest = &pat[1..];
            let mut i = 0;
            loop {
                if glob_match(rest, &path[i..]) {
                    return true;
                }
                if i >= path.len() || path[i] == b'/' {
                    return false;
                }
                i += 1;
            }
        }
        (Some(b'?'), Some(&c)) if c != b'/' => glob_match(&pat[1..], &path[1..]),
        (Some(&p), Some(&c)) if p == c => glob_match(&pat[1..], &path[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn globs_match_like_a_shell_with_double_star() {
        let m = |p: &str, s: &str| glob_match(p.as_bytes(), s.as_bytes());
        assert!(m("bin/*", "bin/game"));
        assert!(!m("bin/*", "bin/x/game"));
        assert!(m("bin/**", "bin/x/game"));
        assert!(m("**/*.pak", "a/b/c.pak"));
        assert!(m("**/*.pak", "c.pak"));
        assert!(m("levels/3/**", "levels/3/a"));
        assert!(!m("levels/3/**", "levels/30/a"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "a/c"));
        assert!(m("**", "anything/at/all"));
    }

    #[test]
    fn the_first_matching_rule_decides_and_bad_specs_list_every_problem() {
        let s = Spec::parse(
            "default_priority = 50\n[[files]]\nglob = \"bin/**\"\npriority = 0\ntags = [\"core\"]\n\
             [[files]]\nglob = \"**\"\ntags = [\"rest\"]\n",
        )
        .unwrap();
        assert_eq!(s.classify("bin/game"), (0, vec!["core".to_string()]));
        assert_eq!(s.classify("data/x"), (50, vec!["rest".to_string()]));
        let e = Spec::parse("[[files]]\nglob = \"/abs\"\ntags = [\"a b\", \"\"]\n").unwrap_err();
        assert_eq!(e.lines().count(), 3, "{e}");
        assert!(Spec::parse("nonsense = 1").is_err());
    }

    proptest! {
        #[test]
        fn a_literal_pattern_matches_only_itself(a in "[a-z/]{0,12}", b in "[a-z/]{0,12}") {
            prop_assert_eq!(glob_match(a.as_bytes(), b.as_bytes()), a == b);
        }

        #[test]
        fn parsing_any_text_never_panics(s in "\\PC{0,120}") {
            let _ = Spec::parse(&s);
        }
    }
}
