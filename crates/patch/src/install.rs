//! An install folder on the client:
//!
//! ```text
//! <dir>/current -> .slipway-patch/releases/<seq>     the game runs from here; swapped with one rename
//! <dir>/.slipway-patch/  (0700)
//!     root.json timestamp.json snapshot.json            trusted metadata
//!     manifest.json state.json [state.next.json] lock   the installed release and its files
//!     releases/<seq>/...                                release trees
//!     stage/<seq>/tree/...  stage/<seq>/tmp/<hash>      an update being built (kept across a kill)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsx::Stamp;
use crate::hash::Hash;
use crate::manifest::{FileEntry, Manifest};
use crate::meta::MetaRef;
use crate::plan::Local;

pub const META_DIR: &str = ".slipway-patch";

/// What is installed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub seq: u64,
    pub release: String,
    pub manifest: Option<MetaRef>,
    /// Files present in the tree (an on-demand install has fewer than the manifest) and how they
    /// looked when last checked.
    pub present: BTreeMap<String, FileState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    pub hash: Hash,
    pub stamp: Stamp,
}

/// The folders of one install.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn meta(&self) -> PathBuf {
        self.dir.join(META_DIR)
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.meta().join(name)
    }
    pub fn release(&self, seq: u64) -> PathBuf {
        self.meta().join("releases").join(seq.to_string())
    }
    pub fn stage(&self, seq: u64) -> PathBuf {
        self.meta().join("stage").join(seq.to_string())
    }
    pub fn current(&self) -> PathBuf {
        self.dir.join("current")
    }

    /// Creates the private folder and takes the install's lock (released on drop).
    pub fn lock(&self) -> std::io::Result<nix::fcntl::Flock<std::fs::File>> {
        crate::fsx::create_private_dir(&self.meta())?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.file("lock"))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!("another update holds {} ({e})", self.file("lock").display()),
            )
        })
    }

    /// The installed state; finishes a switch a kill interrupted after `current` moved.
    pub fn state(&self) -> std::io::Result<State> {
        let next = self.file("state.next.json");
        if let Ok(bytes) = std::fs::read(&next) {
            let pending: State = serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
            if self.current_seq() == Some(pending.seq) {
                std::fs::rename(&next, self.file("state.json"))?;
                crate::fsx::sync_dir(&self.meta());
            } else {
                std::fs::remove_file(&next)?;
            }
        }
        match std::fs::read(self.file("state.json")) {
            Ok(b) => serde_json::from_slice(&b).map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e),
        }
    }

    pub fn save_state(&self, s: &State) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(s).map_err(std::io::Error::other)?;
        plumbing::fs::write_atomic(&self.file("state.json"), &bytes, 0o600).map_err(std::io::Error::other)
    }

    /// The release `current` points at.
    pub fn current_seq(&self) -> Option<u64> {
        let t = std::fs::read_link(self.current()).ok()?;
        t.file_name()?.to_str()?.parse().ok()
    }

    /// The installed manifest (saved when it was verified).
    pub fn manifest(&self) -> std::io::Result<Option<Manifest>> {
        match std::fs::read(self.file("manifest.json")) {
            Ok(b) => {
                let (_, signed) = crate::meta::open("manifest.json", &b).map_err(std::io::Error::other)?;
                Ok(Some(
                    crate::meta::parse_signed("manifest.json", signed).map_err(std::io::Error::other)?,
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes release `seq` (its tree, state and manifest ready) the current one: `current` moves
    /// with one rename, then the state follows; a kill in between is finished by [`Layout::state`].
    pub fn switch(&self, seq: u64, state: &State, manifest_bytes: &[u8]) -> std::io::Result<()> {
        let write = |name: &str, b: &[u8]| {
            plumbing::fs::write_atomic(&self.file(name), b, 0o600).map_err(std::io::Error::other)
        };
        write(
            "state.next.json",
            &serde_json::to_vec(state).map_err(std::io::Error::other)?,
        )?;
        let tmp = self.dir.join(".current.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new(META_DIR).join("releases").join(seq.to_string()), &tmp)?;
        std::fs::rename(&tmp, self.current())?;
        crate::fsx::sync_dir(&self.dir);
        write("manifest.json", manifest_bytes)?;
        std::fs::rename(self.file("state.next.json"), self.file("state.json"))?;
        crate::fsx::sync_dir(&self.meta());
        Ok(())
    }
}

/// What a scan of a tree found.
#[derive(Debug, Clone, Default)]
pub struct Scanned {
    /// Path in the tree -> verified state (for files whose content is what the manifest says).
    pub good: BTreeMap<String, FileState>,
    /// Paths whose content does not match their manifest entry.
    pub damaged: Vec<String>,
}

/// A file's chunks: (offset, hash).
pub type Chunks = Vec<(u64, Hash)>;

/// Reads a file once: its hash, and its chunks with the repo's profile.
pub fn chunk_file(path: &Path) -> std::io::Result<(Hash, Chunks)> {
    let f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let mut whole = blake3::Hasher::new();
    let mut chunks = Vec::new();
    crate::chunker::chunk_stream::<_, std::io::Error>(
        std::io::BufReader::with_capacity(1 << 20, f),
        crate::chunker::profile_for(size),
        |o, b| {
            whole.update(b);
            chunks.push((o, Hash::of(b)));
            Ok(())
        },
    )?;
    Ok((whole.finalize().into(), chunks))
}

/// Indexes the files of a tree as seeds. A file whose stamp matches `known` is trusted to hold the
/// hash recorded for it (`rehash` reads every file regardless); others are read and chunked.
pub fn scan_tree(
    tree: &Path,
    files: &[&FileEntry],
    known: &BTreeMap<String, FileState>,
    rehash: bool,
    local: &mut Local,
) -> Scanned {
    let mut good = BTreeMap::new();
    let mut damaged = Vec::new();
    for f in files {
        let abs = tree.join(&f.path);
        let Ok(stamp) = Stamp::of(&abs) else {
            if known.contains_key(&f.path) {
                damaged.push(f.path.clone());
            }
            continue;
        };
        let trusted = known
            .get(&f.path)
            .filter(|k| !rehash && k.stamp == stamp && k.hash == f.hash);
        let src = local.add_source(&abs.to_string_lossy());
        if trusted.is_some() {
            add_entry(local, src, f);
            good.insert(f.path.clone(), FileState { hash: f.hash, stamp });
            continue;
        }
        match chunk_file(&abs) {
            Ok((hash, _)) if hash == f.hash => {
                add_entry(local, src, f);
                good.insert(f.path.clone(), FileState { hash, stamp });
            }
            Ok((hash, chunks)) => {
                damaged.push(f.path.clone());
                local.files.entry(hash).or_insert(src);
                for (o, h) in chunks {
                    local.chunks.entry(h).or_insert((src, o));
                }
            }
            Err(_) => damaged.push(f.path.clone()),
        }
    }
    Scanned { good, damaged }
}

fn add_entry(local: &mut Local, src: usize, f: &FileEntry) {
    local.files.entry(f.hash).or_insert(src);
    for (o, c) in f.offsets() {
        local.chunks.entry(c.hash()).or_insert((src, o));
    }
}

/// Checks which chunks of a partial staging file are already right.
pub fn in_place(path: &Path, f: &FileEntry) -> Option<Vec<bool>> {
    let file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let mut buf = Vec::new();
    Some(
        f.offsets()
            .map(|(o, c)| {
                if o + c.len() > len {
                    return false;
                }
                buf.resize(c.len() as usize, 0);
                crate::fsx::read_at(&file, o, &mut buf).is_ok() && Hash::of(&buf) == c.hash()
            })
            .collect(),
    )
}

/// Files of `m` by path.
pub fn by_path(m: &Manifest) -> HashMap<&str, usize> {
    m.files.iter().enumerate().map(|(i, f)| (f.path.as_str(), i)).collect()
}
