//! Files the router keeps: the last applied route table (written atomically), the cookie key and the admin token.

use std::path::{Path, PathBuf};

use wire::RouteTable;

pub use plumbing::fs::{hex, random_bytes, secret_file, write_atomic};

/// A failure reading or writing the state folder.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Fs(#[from] plumbing::fs::FsError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid route table: {message}")]
    BadTable { path: PathBuf, message: String },
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

/// Saves the applied table so a restarted router serves it at once.
pub fn save_table(state_dir: &Path, table: &RouteTable) -> Result<(), StateError> {
    let path = state_dir.join(ROUTES_FILE);
    let json = serde_json::to_vec_pretty(table).map_err(|e| StateError::BadTable {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok(write_atomic(&path, &json, 0o644)?)
}

/// The saved table, if there is one.
pub fn load_table(state_dir: &Path) -> Result<Option<RouteTable>, StateError> {
    let path = state_dir.join(ROUTES_FILE);
    if !path.exists() {
        return Ok(None);
    }
    read_table(&path).map(Some)
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
