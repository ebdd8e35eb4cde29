//! `slipway validate FILE`: recognise what kind of config a file is and list every problem in it.

use std::path::Path;

use wire::{Problems, RouteTable};

/// What `validate` found a file to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    RouterConfig,
    RouteTable,
    Service,
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::RouterConfig => "router config",
            Kind::RouteTable => "route table",
            Kind::Service => "service definition",
        }
    }
}

/// Why a file did not validate.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{path} is a {kind} with {problems}", kind = kind.describe())]
    Invalid {
        path: String,
        kind: Kind,
        problems: Problems,
    },
    /// A config that could not be read or parsed (its message names the file).
    #[error(transparent)]
    Config(plumbing::config::ConfigError),
    #[error(
        "{path}: cannot tell what kind of config this is (slipway.toml has [service]; a router config has \
         state_dir and [admin]; a route table has [[release]])"
    )]
    Unknown { path: String },
}

/// Validates `path`, returning what it is.
pub fn validate(path: &Path) -> Result<Kind, ValidateError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ValidateError::Read {
        path: shown.clone(),
        source,
    })?;
    let is_json = path.extension().is_some_and(|e| e == "json");
    let value: toml::Table = if is_json {
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ValidateError::Syntax {
            path: shown.clone(),
            message: format!("not valid JSON: {e}"),
        })?;
        toml::Table::try_from(v).map_err(|e| ValidateError::Syntax {
            path: shown.clone(),
            message: e.to_string(),
        })?
    } else {
        text.parse().map_err(|e: toml::de::Error| ValidateError::Syntax {
            path: shown.clone(),
            message: format!("not valid TOML: {e}"),
        })?
    };
    if value.contains_key("service") {
        control::ServiceConfig::load(path).map_err(|e| match e {
            control::ConfigError::Invalid { problems, .. } => ValidateError::Invalid {
                path: shown.clone(),
                kind: Kind::Service,
                problems,
            },
            other => ValidateError::Config(other),
        })?;
        return Ok(Kind::Service);
    }
    if value.contains_key("state_dir") || value.contains_key("admin") || value.contains_key("listener") {
        router::Config::load(path).map_err(|e| match e {
            router::ConfigError::Invalid { problems, .. } => ValidateError::Invalid {
                path: shown.clone(),
                kind: Kind::RouterConfig,
                problems,
            },
            other => ValidateError::Config(other),
        })?;
        return Ok(Kind::RouterConfig);
    }
    if value.contains_key("release") || value.contains_key("cohort") || value.contains_key("generation") {
        // Every unknown key and wrong value first, all at once.
        let doc = serde_json::to_value(&value).unwrap_or_default();
        let found = wire::schema::check(&wire::schema::ConfigFile::Routes.schema(), &doc);
        if !found.is_empty() {
            return Err(ValidateError::Invalid {
                path: shown,
                kind: Kind::RouteTable,
                problems: Problems { problems: found },
            });
        }
        let table: RouteTable = if is_json {
            serde_json::from_str(&text).map_err(|e| ValidateError::Syntax {
                path: shown.clone(),
                message: e.to_string(),
            })?
        } else {
            toml::from_str(&text).map_err(|e| ValidateError::Syntax {
                path: shown.clone(),
                message: e.to_string(),
            })?
        };
        table.validate().map_err(|problems| ValidateError::Invalid {
            path: shown.clone(),
            kind: Kind::RouteTable,
            problems,
        })?;
        return Ok(Kind::RouteTable);
    }
    Err(ValidateError::Unknown { path: shown })
}

#[cfg(test)]
mod tests {
    use wire::schema::{ConfigFile, check};

    /// The TOML examples of README.md, split where a comment names the file a part belongs to
    /// (`# slipway.toml`, `# releases/<id>/slipway.release.toml`), each with the file it is.
    fn readme_examples() -> Vec<(Option<ConfigFile>, bool, String)> {
        let readme = include_str!("../../../README.md");
        let mut out = Vec::new();
        for block in readme.split("```toml\n").skip(1) {
            let block = block.split("```").next().unwrap_or_default();
            let mut parts: Vec<(Option<&str>, String)> = vec![(None, String::new())];
            for line in block.lines() {
                let named = line
                    .strip_prefix("# ")
                    .filter(|n| n.trim_end().ends_with(".toml") && !n.contains(' '));
                match named {
                    Some(n) => parts.push((Some(n.trim()), String::new())),
                    None => {
                        let last = parts.last_mut().unwrap();
                        last.1.push_str(line);
                        last.1.push('\n');
                    }
                }
            }
            for (name, text) in parts.into_iter().filter(|(_, t)| !t.trim().is_empty()) {
                let file = match name {
                    Some(n) if n.ends_with("slipway.release.toml") => Some(ConfigFile::Release),
                    Some("slipway.toml") => Some(ConfigFile::Service),
                    Some("steps.toml") => None,
                    _ if text.contains("[service]") => Some(ConfigFile::Service),
                    _ if text.contains("state_dir") => Some(ConfigFile::Router),
                    _ if text.contains("[[release]]") => Some(ConfigFile::Routes),
                    _ => None,
                };
                // A part named by a comment is a fragment of its file: keys it leaves out are not missing.
                out.push((file, name.is_some(), text));
            }
        }
        out
    }

    #[test]
    fn the_readme_examples_and_the_demo_config_fit_the_json_schemas() {
        let examples = readme_examples();
        let mut checked = Vec::new();
        for (file, fragment, text) in &examples {
            let Some(file) = file else { continue };
            let doc = serde_json::to_value(text.parse::<toml::Table>().expect("README TOML parses")).unwrap();
            let problems: Vec<_> = check(&file.schema(), &doc)
                .into_iter()
                .filter(|p| !(*fragment && p.message == "is missing"))
                .collect();
            assert!(
                problems.is_empty(),
                "README example ({}) has problems {problems:?}:\n{text}",
                file.name()
            );
            checked.push(file.name());
        }
        for want in ["slipway", "router", "routes", "release"] {
            assert!(
                checked.contains(&want),
                "no README example of {want} was found: {checked:?}"
            );
        }
        let demo = crate::demo::service_toml(std::path::Path::new("/bin/true"));
        let doc = serde_json::to_value(demo.parse::<toml::Table>().unwrap()).unwrap();
        assert_eq!(
            check(&ConfigFile::Service.schema(), &doc),
            Vec::new(),
            "the demo's slipway.toml"
        );
    }
}
