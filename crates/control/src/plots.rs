//! The dashboard's plot of each deploy, kept with the deploy in the state folder so a restarted control plane still
//! shows it: `control/plots/<deploy id>.json` (mode 0600, folder 0700), the newest [`KEPT`] deploys only.
//!
//! Format 1: `{"format": 1, "deploy": <id>, "plot": <dashboard::Plot>}`; the plot's own shape is the dashboard's
//! (`series::Track`). A file of a newer format is refused with its version, never overwritten by an older reader
//! until the deploy's plot changes again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The format this control plane writes and reads.
pub(crate) const FORMAT: u32 = 1;
/// Deploys whose plots are kept (the dashboard remembers as many).
pub(crate) const KEPT: usize = 20;

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    format: u32,
    deploy: i64,
    plot: dashboard::Plot,
}

/// Why a saved plot was not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlotError {
    #[error("{path}: format {found}; this control plane reads format {FORMAT}")]
    Newer { path: PathBuf, found: u64 },
    #[error("{path}: {message}")]
    Bad { path: PathBuf, message: String },
}

fn file(dir: &Path, id: i64) -> PathBuf {
    dir.join(format!("{id}.json"))
}

/// Saves deploy `id`'s plot in `dir` (created 0700) and drops all but the newest [`KEPT`] deploys' plots.
pub(crate) fn save(dir: &Path, id: i64, plot: &dashboard::Plot) -> Result<(), plumbing::fs::FsError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(plumbing::fs::io_err(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(plumbing::fs::io_err(dir))?;
    }
    let path = file(dir, id);
    let fresh = !path.exists();
    let saved = Saved {
        format: FORMAT,
        deploy: id,
        plot: plot.clone(),
    };
    let bytes = serde_json::to_vec(&saved).map_err(|e| plumbing::fs::FsError::Format {
        path: path.clone(),
        message: e.to_string(),
    })?;
    plumbing::fs::write_atomic(&path, &bytes, 0o600)?;
    if fresh {
        prune(dir);
    }
    Ok(())
}

/// Removes the plots of all but the newest [`KEPT`] deploys.
fn prune(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut ids: Vec<i64> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json")?.parse().ok())
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    for id in ids.into_iter().skip(KEPT) {
        let _ = std::fs::remove_file(file(dir, id));
    }
}

/// Deploy `id`'s saved plot; `Ok(None)` if none was saved.
pub(crate) fn load(dir: &Path, id: i64) -> Result<Option<dashboard::Plot>, PlotError> {
    let path = file(dir, id);
    let bad = |message: String| PlotError::Bad {
        path: path.clone(),
        message,
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    match value.get("format").and_then(serde_json::Value::as_u64) {
        Some(f) if f == u64::from(FORMAT) => {}
        Some(found) if found > u64::from(FORMAT) => return Err(PlotError::Newer { path, found }),
        other => return Err(bad(format!("no known format ({other:?})"))),
    }
    let saved: Saved = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    if saved.deploy != id {
        return Err(bad(format!("holds deploy {}, not {id}", saved.deploy)));
    }
    Ok(Some(saved.plot))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    const FIXTURE: &str = include_str!("../tests/fixtures/plot-format-1.json");

    #[test]
    fn a_plot_is_saved_private_read_back_and_only_the_newest_deploys_are_kept() {
        let tmp = testkit::TempDir::new("plots");
        let dir = tmp.join("control/plots");
        let plot: dashboard::Plot = serde_json::from_str::<serde_json::Value>(FIXTURE)
            .map(|v| serde_json::from_value(v["plot"].clone()).unwrap())
            .unwrap();
        assert_ne!(plot, dashboard::Plot::default(), "the fixture has points");
        save(&dir, 3, &plot).unwrap();
        assert_eq!((mode(&dir), mode(&file(&dir, 3))), (0o700, 0o600));
        assert_eq!(load(&dir, 3).unwrap(), Some(plot.clone()));
        assert_eq!(load(&dir, 4).unwrap(), None);
        for id in 4..(4 + KEPT as i64) {
            save(&dir, id, &plot).unwrap();
        }
        let left = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(left, KEPT);
        assert_eq!(load(&dir, 3).unwrap(), None, "the oldest went");
        assert!(load(&dir, 4 + KEPT as i64 - 1).unwrap().is_some());
    }

    #[test]
    fn format_1_fixture_reads_and_a_newer_or_foreign_file_is_refused_with_why() {
        let tmp = testkit::TempDir::new("plots");
        let dir = tmp.path().to_path_buf();
        std::fs::write(file(&dir, 7), FIXTURE).unwrap();
        assert!(load(&dir, 7).unwrap().is_some(), "format 1 as written by this version");
        let newer = FIXTURE.replacen("\"format\":1", "\"format\":2", 1);
        std::fs::write(file(&dir, 7), newer).unwrap();
        let e = load(&dir, 7).unwrap_err().to_string();
        assert!(
            e.ends_with("7.json: format 2; this control plane reads format 1"),
            "{e}"
        );
        std::fs::write(file(&dir, 8), FIXTURE.replacen("\"deploy\":7", "\"deploy\":9", 1)).unwrap();
        assert!(load(&dir, 8).unwrap_err().to_string().contains("holds deploy 9, not 8"));
        for bad in [
            "",
            "[]",
            "{\"format\":1}",
            "{\"format\":\"1\",\"deploy\":7,\"plot\":{}}",
        ] {
            std::fs::write(file(&dir, 9), bad).unwrap();
            assert!(matches!(load(&dir, 9), Err(PlotError::Bad { .. })), "{bad}");
        }
    }
}
