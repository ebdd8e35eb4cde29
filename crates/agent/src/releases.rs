//! Release folders: `releases/<id>/`, immutable once added; `current` and `previous`, switched by rename; pruning.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use wire::agent::{ReleaseInfo, ReleaseManifest};

pub const RELEASE_MANIFEST: &str = "slipway.release.toml";

/// Why a release operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("bad release id: {0}")]
    BadId(String),
    #[error("release {0} already exists (releases are immutable; use a new id)")]
    Exists(String),
    #[error("no release {0}")]
    Missing(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a folder, .tar.gz, .tgz or .tar.zst archive")]
    UnknownSource { path: PathBuf },
    #[error("{path}: bad {RELEASE_MANIFEST}: {message}")]
    BadManifest { path: PathBuf, message: String },
    /// An archive entry that would land or point outside the release, or is not a plain file, folder or link;
    /// the archive is refused whole and nothing of it stays.
    #[error("{path}: refused, nothing was added: entry {entry:?} {why}")]
    UnsafeEntry { path: PathBuf, entry: String, why: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The releases under one root folder.
#[derive(Debug, Clone)]
pub struct ReleaseStore {
    root: PathBuf,
}

impl ReleaseStore {
    pub fn new(root: impl Into<PathBuf>) -> ReleaseStore {
        ReleaseStore { root: root.into() }
    }

    pub fn dir(&self) -> PathBuf {
        self.root.join("releases")
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.dir().join(id)
    }

    pub fn exists(&self, id: &str) -> bool {
        wire::routes::valid_id(id).is_ok() && self.path(id).is_dir()
    }

    /// Adds a release from a folder (copied) or a `.tar.gz`/`.tgz`/`.tar.zst`
    /// archive (unpacked). It appears under `releases/<id>` all at once: it is
    /// built in a hidden staging folder and renamed into place.
    pub fn add(&self, source: &Path, id: &str) -> Result<PathBuf, ReleaseError> {
        wire::routes::valid_id(id).map_err(ReleaseError::BadId)?;
        let dest = self.path(id);
        if dest.exists() {
            return Err(ReleaseError::Exists(id.to_string()));
        }
        let dir = self.dir();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let staging = dir.join(format!(".staging-{id}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        let result = self.fill(source, &staging).and_then(|()| {
            let top = single_top_folder(&staging)?;
            let built = top.unwrap_or_else(|| staging.clone());
            // Check the manifest before the release becomes visible.
            read_manifest(&built)?;
            std::fs::rename(&built, &dest).map_err(io(&dest))
        });
        let _ = std::fs::remove_dir_all(&staging);
        result?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(dest)
    }

    fn fill(&self, source: &Path, staging: &Path) -> Result<(), ReleaseError> {
        let meta = std::fs::metadata(source).map_err(io(source))?;
        if meta.is_dir() {
            return copy_tree(source, staging);
        }
        let name = source.file_name().and_then(|n| n.to_str()).unwrap_or("");
        std::fs::create_dir_all(staging).map_err(io(staging))?;
        let file = std::fs::File::open(source).map_err(io(source))?;
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            unpack(flate2::read::GzDecoder::new(file), staging, source)
        } else if name.ends_with(".tar.zst") || name.ends_with(".tzst") {
            let dec = zstd::stream::read::Decoder::new(file).map_err(io(source))?;
            unpack(dec, staging, source)
        } else if name.ends_with(".tar") {
            unpack(file, staging, source)
        } else {
            Err(ReleaseError::UnknownSource {
                path: source.to_path_buf(),
            })
        }
    }

    /// Every release, oldest first. `running` counts instances per release.
    pub fn list(&self, running: &dyn Fn(&str) -> u32) -> Result<Vec<ReleaseInfo>, ReleaseError> {
        let dir = self.dir();
        let current = self.link("current");
        let previous = self.link("previous");
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(&dir)(e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if wire::routes::valid_id(&name).is_err() || !entry.path().is_dir() {
                continue;
            }
            let created_ms = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64);
            let manifest = read_manifest(&entry.path()).unwrap_or_default();
            out.push(ReleaseInfo {
                current: current.as_deref() == Some(name.as_str()),
                previous: previous.as_deref() == Some(name.as_str()),
                running_instances: running(&name),
                bytes: tree_size(&entry.path()),
                client_versions: manifest.client_versions,
                created_ms,
                id: name,
            });
        }
        out.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The release a link (`current` or `previous`) points at.
    pub fn link(&self, name: &str) -> Option<String> {
        let target = std::fs::read_link(self.root.join(name)).ok()?;
        Some(target.file_name()?.to_string_lossy().to_string())
    }

    /// Points `current` at `id` (and `previous` at the old current), each
    /// replaced with rename(2): a reader never finds the link missing.
    pub fn set_current(&self, id: &str) -> Result<(), ReleaseError> {
        if !self.exists(id) {
            return Err(ReleaseError::Missing(id.to_string()));
        }
        let old = self.link("current");
        if old.as_deref() == Some(id) {
            return Ok(());
        }
        if let Some(old) = old {
            self.swap_link("previous", &old)?;
        }
        self.swap_link("current", id)
    }

    fn swap_link(&self, name: &str, id: &str) -> Result<(), ReleaseError> {
        let link = self.root.join(name);
        let tmp = self.root.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("releases").join(id), &tmp).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &link).map_err(io(&link))
    }

    /// Removes the oldest releases beyond the newest `keep`, never `current`,
    /// `previous`, nor any in `protected` (releases with instances). Returns
    /// the removed ids.
    pub fn prune(&self, keep: usize, protected: &HashSet<String>) -> Result<Vec<String>, ReleaseError> {
        let all = self.list(&|_| 0)?;
        let mut removable: Vec<&ReleaseInfo> = all
            .iter()
            .filter(|r| !r.current && !r.previous && !protected.contains(&r.id))
            .collect();
        let kept_anyway = all.len() - removable.len();
        let budget = keep.saturating_sub(kept_anyway);
        // Oldest first; keep the newest `budget` of the removable ones.
        let n_remove = removable.len().saturating_sub(budget);
        removable.truncate(n_remove);
        let mut removed = Vec::new();
        for r in removable {
            let path = self.path(&r.id);
            // Rename first so a half-deleted release is never visible under its id.
            let trash = self.dir().join(format!(".trash-{}-{}", r.id, std::process::id()));
            std::fs::rename(&path, &trash).map_err(io(&path))?;
            std::fs::remove_dir_all(&trash).map_err(io(&trash))?;
            removed.push(r.id.clone());
        }
        Ok(removed)
    }

    pub fn manifest(&self, id: &str) -> Result<ReleaseManifest, ReleaseError> {
        if !self.exists(id) {
            return Err(ReleaseError::Missing(id.to_string()));
        }
        read_manifest(&self.path(id))
    }
}

fn read_manifest(dir: &Path) -> Result<ReleaseManifest, ReleaseError> {
    let path = dir.join(RELEASE_MANIFEST);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let m: ReleaseManifest = toml::from_str(&text).map_err(|e| ReleaseError::BadManifest {
                path: path.clone(),
                message: e.to_string(),
            })?;
            if let Some(v) = &m.client_versions
                && let Err(e) = wire::routes::valid_version_range(v)
            {
                return Err(ReleaseError::BadManifest { path, message: e });
            }
            Ok(m)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ReleaseManifest::default()),
        Err(e) => Err(io(&path)(e)),
    }
}

/// If `dir` holds exactly one folder and nothing else (a tarball with a
/// top-level folder), that folder.
fn single_top_folder(dir: &Path) -> Result<Option<PathBuf>, ReleaseError> {
    let entries: Vec<_> = std::fs::read_dir(dir).map_err(io(dir))?.flatten().collect();
    match entries.as_slice() {
        [one] if one.file_type().map(|t| t.is_dir()).unwrap_or(false) => Ok(Some(one.path())),
        _ => Ok(None),
    }
}

fn unpack<R: std::io::Read>(reader: R, dest: &Path, source: &Path) -> Result<(), ReleaseError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    for entry in archive.entries().map_err(io(source))? {
        let mut entry = entry.map_err(io(source))?;
        let path = entry.path().map_err(io(source))?.into_owned();
        let refuse = |why: &str| ReleaseError::UnsafeEntry {
            path: source.to_path_buf(),
            entry: path.display().to_string(),
            why: why.to_string(),
        };
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader | tar::EntryType::XHeader) {
            continue;
        }
        check_entry(&path, kind, entry.link_name().map_err(io(source))?.as_deref()).map_err(&refuse)?;
        // `unpack_in` also refuses what would land outside `dest` (through a link made by an earlier entry).
        if !entry.unpack_in(dest).map_err(io(source))? {
            return Err(refuse("would land outside the release"));
        }
    }
    Ok(())
}

/// Lexically, where `path` (relative, inside the release) leads: `None` if it climbs out of it.
fn inside(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            std::path::Component::RootDir | std::path::Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Whether an archive entry may be unpacked into a release: a file, folder or link that stays inside it.
fn check_entry(path: &Path, kind: tar::EntryType, link: Option<&Path>) -> Result<(), &'static str> {
    if path.is_absolute() {
        return Err("has an absolute path");
    }
    if path.components().any(|c| c == std::path::Component::ParentDir) {
        return Err("climbs out with '..'");
    }
    match kind {
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory => Ok(()),
        tar::EntryType::Symlink => {
            let target = link.ok_or("is a link without a target")?;
            let from = path.parent().unwrap_or(Path::new(""));
            match target.is_absolute() || inside(&from.join(target)).is_none() {
                true => Err("is a symlink pointing outside the release"),
                false => Ok(()),
            }
        }
        tar::EntryType::Link => match link.map(|l| l.is_absolute() || inside(l).is_none()) {
            Some(false) => Ok(()),
            _ => Err("is a hard link to something outside the release"),
        },
        tar::EntryType::Char | tar::EntryType::Block => Err("is a device file"),
        tar::EntryType::Fifo => Err("is a named pipe"),
        _ => Err("is not a plain file, folder or link"),
    }
}

/// Copies a folder tree, keeping permissions and symlinks.
fn copy_tree(from: &Path, to: &Path) -> Result<(), ReleaseError> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let ft = entry.file_type().map_err(io(&src))?;
        if ft.is_symlink() {
            let target = std::fs::read_link(&src).map_err(io(&src))?;
            std::os::unix::fs::symlink(target, &dst).map_err(io(&dst))?;
        } else if ft.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(io(&src))?;
        }
    }
    Ok(())
}

fn tree_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}
