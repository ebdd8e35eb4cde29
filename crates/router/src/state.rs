//! The files in the router's state folder: route table, status, cookie key; each written atomically.
//!
//! `routes.json` and `router.json` carry a `format` number. A file without one
//! is the first layout (before versions) and is read as it is; a newer format
//! than this binary knows is refused with an error naming the file.

use std::path::{Path, PathBuf};

use wire::RouteTable;
use wire::api::{RouterStatus, SavedRoutes, StatusFile};

pub use plumbing::fs::{hex, random_bytes, secret_file, write_atomic};

/// The format of `routes.json` and `router.json` this router writes.
/// 0 (no `format` field) is the layout before versions: a bare table, a bare status.
pub const FORMAT: u64 = 1;

/// A failure reading or writing the state folder.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Fs(#[from] plumbing::fs::FsError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid route table: {message}")]
    BadTable { path: PathBuf, message: String },
    #[error("{path}: not a valid router status: {message}")]
    BadStatus { path: PathBuf, message: String },
    #[error(
        "{path} has format {found}, newer than this router reads (up to {FORMAT}); \
         run the router that wrote it, or move the file away"
    )]
    NewerFormat { path: PathBuf, found: u64 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub const ROUTES_FILE: &str = "routes.json";
pub const STATUS_FILE: &str = "router.json";
const COOKIE_KEY_FILE: &str = "cookie.key";

/// Creates the state folder (or tightens an existing one) as 0700: it holds the
/// cookie key, the admin token and the route table.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Reads a route table from a `.json` or `.toml` file.
pub fn read_table(path: &Path) -> Result<RouteTable, StateError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let parsed = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| e.to_string())
    } else {
        serde_json::from_str(&text).map_err(|e| e.to_string())
    };
    parsed.map_err(|message| StateError::BadTable {
        path: path.to_path_buf(),
        message,
    })
}

/// The `format` of a state file's JSON object: 0 when it has none.
fn format_of(path: &Path, v: &serde_json::Value) -> Result<u64, StateError> {
    let found = match v.get("format") {
        None => 0,
        Some(f) => f.as_u64().unwrap_or(u64::MAX),
    };
    if found > FORMAT {
        return Err(StateError::NewerFormat {
            path: path.to_path_buf(),
            found,
        });
    }
    Ok(found)
}

/// Reads a state file: format 0 as a bare `T`, format 1 as `V1` taken apart
/// by `unwrap`; `bad` names what the file should have been.
fn read_versioned<T, V1>(
    path: &Path,
    text: &[u8],
    unwrap: impl FnOnce(V1) -> T,
    bad: impl Fn(String) -> StateError,
) -> Result<T, StateError>
where
    T: serde::de::DeserializeOwned,
    V1: serde::de::DeserializeOwned,
{
    let v: serde_json::Value = serde_json::from_slice(text).map_err(|e| bad(e.to_string()))?;
    let read = match format_of(path, &v)? {
        0 => serde_json::from_value(v),
        _ => serde_json::from_value::<V1>(v).map(unwrap),
    };
    read.map_err(|e| bad(e.to_string()))
}

/// Saves the applied table so a restarted router serves it at once.
pub fn save_table(state_dir: &Path, table: &RouteTable) -> Result<(), StateError> {
    let path = state_dir.join(ROUTES_FILE);
    let saved = SavedRoutes {
        format: FORMAT,
        table: table.clone(),
    };
    let json = serde_json::to_vec_pretty(&saved).map_err(|e| StateError::BadTable {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok(write_atomic(&path, &json, 0o600)?)
}

/// The saved table, if there is one; a format 0 file (a bare table) is read
/// as it is and rewritten at format 1 by the next save.
pub fn load_table(state_dir: &Path) -> Result<Option<RouteTable>, StateError> {
    let path = state_dir.join(ROUTES_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    let bad = |message| StateError::BadTable {
        path: path.clone(),
        message,
    };
    read_versioned(&path, &text, |s: SavedRoutes| s.table, bad).map(Some)
}

/// Writes `router.json`, which tells other processes where this router serves.
pub fn write_status(state_dir: &Path, status: RouterStatus) -> Result<(), StateError> {
    let path = state_dir.join(STATUS_FILE);
    let file = StatusFile { format: FORMAT, status };
    let json = serde_json::to_vec_pretty(&file).map_err(|e| StateError::BadStatus {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok(write_atomic(&path, &json, 0o600)?)
}

/// Reads the `router.json` a router wrote into `state_dir` (any format up to this one).
pub fn read_status(state_dir: &Path) -> Result<RouterStatus, StateError> {
    let path = state_dir.join(STATUS_FILE);
    let text = std::fs::read(&path).map_err(io(&path))?;
    let bad = |message| StateError::BadStatus {
        path: path.clone(),
        message,
    };
    read_versioned(&path, &text, |f: StatusFile| f.status, bad)
}

/// The key that signs session cookies; kept so sessions survive restarts.
pub fn cookie_key(state_dir: &Path) -> Result<[u8; 32], StateError> {
    let path = state_dir.join(COOKIE_KEY_FILE);
    let text = secret_file(&path, || random_bytes::<32>().map(|b| hex(&b)))?;
    parse_key(&text).ok_or_else(|| StateError::Io {
        path,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "expected 64 hex digits"),
    })
}

/// A 32-byte key from 64 hex digits.
pub fn parse_key(text: &str) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    let ok = text.len() == 64
        && key
            .iter_mut()
            .enumerate()
            .all(|(i, k)| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map(|v| *k = v).is_ok());
    ok.then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_secrets_persist() {
        let dir = std::env::temp_dir().join(format!("slipway-state-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        write_atomic(&p, b"one", 0o644).unwrap();
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        let k1 = cookie_key(&dir).unwrap();
        let k2 = cookie_key(&dir).unwrap();
        assert_eq!(k1, k2);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("cookie.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
