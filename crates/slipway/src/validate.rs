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
