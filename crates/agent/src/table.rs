//! The instance table on disk, `agent/instances.json`: its versioned format, read and written whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plumbing::fs::FsError;
use serde::{Deserialize, Serialize};
use wire::agent::InstanceInfo;

/// The format this code writes.
/// - 0: `next_id` and `instances` (each `info`, `start_time`, `ended_at_ms`); no `format` key.
/// - 1: the same, with `"format": 1`.
pub(crate) const FORMAT: u32 = 1;

/// What `instances.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Saved {
    /// Absent (0) in files from before formats were versioned.
    #[serde(default)]
    pub format: u32,
    pub next_id: BTreeMap<String, u64>,
    pub instances: Vec<SavedInstance>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SavedInstance {
    pub info: InstanceInfo,
    /// Kernel start time of the process, to tell it from a reused pid.
    pub start_time: Option<u64>,
    pub ended_at_ms: Option<u64>,
    /// The template it was started with, if not the agent's (it holds env values: the file is mode 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<wire::agent::InstanceTemplate>,
}

/// Where the table lives under the agent's root.
pub(crate) fn path(root: &Path) -> PathBuf {
    root.join("agent").join("instances.json")
}

/// Just the format, read before the rest (whose shape depends on it).
#[derive(Deserialize)]
struct Format {
    #[serde(default)]
    format: u32,
}

/// Reads the table (empty when there is none), upgrading an older format; a newer one is refused.
pub(crate) fn read(path: &Path) -> Result<Saved, FsError> {
    let Some(Format { format }) = plumbing::fs::read_json(path)? else {
        return Ok(Saved {
            format: FORMAT,
            ..Saved::default()
        });
    };
    if format > FORMAT {
        return Err(FsError::Format {
            path: path.to_path_buf(),
            message: format!(
                "instance table format {format} is newer than the {FORMAT} this agent reads; run the slipway \
                 that wrote it (or a newer one)"
            ),
        });
    }
    // Format 0 has the shape of 1 without the key.
    let saved: Saved = plumbing::fs::read_json(path)?.unwrap_or_default();
    Ok(Saved {
        format: FORMAT,
        ..saved
    })
}

/// Writes the table atomically, in this code's format.
pub(crate) fn write(path: &Path, saved: &Saved) -> Result<(), FsError> {
    debug_assert_eq!(saved.format, FORMAT);
    plumbing::fs::write_secret_json(path, saved)
}

/// The instance table as last saved under `root` (readable without a running agent).
pub fn saved_instances(root: &Path) -> Result<Vec<InstanceInfo>, FsError> {
    Ok(read(&path(root))?.instances.into_iter().map(|i| i.info).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("slipway-table-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("instances.json")
    }

    #[test]
    fn a_table_written_before_formats_were_versioned_is_read_whole_and_written_back_as_format_1() {
        let p = temp("v0");
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/instances-v0.json"),
            &p,
        )
        .unwrap();
        let saved = read(&p).unwrap();
        assert_eq!(saved.format, FORMAT);
        assert_eq!(saved.next_id, BTreeMap::from([("bad".into(), 1), ("v1".into(), 2)]));
        let ids: Vec<(&str, &str)> = saved
            .instances
            .iter()
            .map(|i| (i.info.id.as_str(), i.info.state.as_str()))
            .collect();
        assert_eq!(ids, [("bad-0", "crash_loop"), ("v1-0", "ready"), ("v1-1", "stopped")]);
        assert_eq!(
            saved.instances[1].start_time,
            Some(213805),
            "what tells a reused pid apart survives"
        );
        write(&p, &saved).unwrap();
        let again: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(again["format"], 1);
        assert_eq!(read(&p).unwrap().instances.len(), 3);
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }

    #[test]
    fn a_table_from_a_newer_agent_is_refused_with_its_format_and_left_as_it_is() {
        let p = temp("newer");
        let text = r#"{"format": 2, "hosts": {"h1": []}}"#;
        std::fs::write(&p, text).unwrap();
        let err = read(&p).unwrap_err().to_string();
        assert!(err.contains("format 2 is newer than the 1"), "{err}");
        assert!(err.contains("instances.json"), "{err}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }

    #[test]
    fn no_table_is_an_empty_one_and_a_broken_one_is_an_error() {
        let p = temp("none");
        assert!(read(&p).unwrap().instances.is_empty());
        std::fs::write(&p, "{\"next_id\": ").unwrap();
        assert!(read(&p).is_err());
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }
}
