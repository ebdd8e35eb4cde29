//! A release manifest, signed by the targets role: every file's path, mode, size, hash, priority and
//! tags, its chunks with where they are in the pack files, and the deltas that rebuild parts of it from
//! an older release's file.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::chunker::MAX_CHUNK;
use crate::hash::Hash;

/// Largest old-file range a delta may use as its reference (bounds client memory).
pub const MAX_PATCH_BASE: u64 = 32 << 20;
/// Largest new-file range one delta may produce.
pub const MAX_PATCH_TARGET: u64 = 16 << 20;

/// One release of the product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "_type")]
    pub kind: String,
    pub product: String,
    /// Bumped when the same release is signed again (key rotation).
    pub version: u64,
    pub expires: u64,
    pub release: ReleaseInfo,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    /// Monotonic: every publish takes the next number.
    pub seq: u64,
    /// The build's own name (`v42`, a git sha).
    pub id: String,
    /// Unix seconds.
    pub created: u64,
}

/// One regular file of the release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative, `/`-separated, normalized.
    pub path: String,
    /// Permission bits (0o644, 0o755, ...).
    pub mode: u32,
    pub size: u64,
    /// BLAKE3 of the whole content.
    pub hash: Hash,
    /// Lower is needed sooner (on-demand installs fetch in this order).
    pub priority: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    pub chunks: Vec<ChunkRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<PatchRef>,
}

/// A chunk: `[hash of the content, length, pack number, offset in the pack, compressed length]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef(pub Hash, pub u32, pub u32, pub u64, pub u32);

impl ChunkRef {
    pub fn hash(&self) -> Hash {
        self.0
    }
    pub fn len(&self) -> u64 {
        self.1 as u64
    }
    pub fn blob(&self) -> Blob {
        Blob {
            pack: self.2,
            offset: self.3,
            len: self.4 as u64,
        }
    }
}

/// Where a stored object is: `len` bytes at `offset` of `packs/<pack>.pack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Blob {
    pub pack: u32,
    pub offset: u64,
    pub len: u64,
}

/// How a delta encodes its target from its base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// A zstd frame compressed with the base as its reference prefix (long-distance matching on).
    Zstd,
    /// A BSDIFF40 patch (bzip2 inside).
    Bsdiff,
}

/// A delta that produces `target` (a chunk-aligned range of this file) from `base` (a range of the
/// file whose hash is `from`, in an older release).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchRef {
    pub from: Hash,
    /// `[offset, length]` in the old file.
    pub base: [u64; 2],
    /// `[offset, length]` in this file.
    pub target: [u64; 2],
    pub method: Method,
    /// BLAKE3 of the stored delta bytes (checked before the delta is decoded).
    pub hash: Hash,
    pub blob: Blob,
}

impl FileEntry {
    /// Offset of each chunk in the file.
    pub fn offsets(&self) -> impl Iterator<Item = (u64, &ChunkRef)> {
        self.chunks.iter().scan(0u64, |off, c| {
            let o = *off;
            *off += c.len();
            Some((o, c))
        })
    }
}

/// Checks a path: relative, `/`-separated, no empty, `.` or `..` parts, no control characters, not
/// inside the client's own folders.
pub fn check_path(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > 4096 {
        return Err("empty or longer than 4096 bytes".into());
    }
    if p.starts_with('/') || p.contains('\\') {
        return Err("must be relative and use /".into());
    }
    if p.chars().any(|c| c.is_control()) {
        return Err("contains a control character".into());
    }
    for part in p.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!("has a {:?} component", part));
        }
    }
    if p.split('/').next() == Some(crate::install::META_DIR) {
        return Err(format!("{} is the client's own folder", crate::install::META_DIR));
    }
    Ok(())
}

impl Manifest {
    /// Every rule a manifest must follow before a client acts on it; all problems at once.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.kind != "manifest" {
            problems.push(format!("_type is {:?}, not \"manifest\"", self.kind));
        }
        let mut paths = BTreeSet::new();
        for f in &self.files {
            let at = |m: String| format!("{}: {m}", f.path);
            if let Err(e) = check_path(&f.path) {
                problems.push(at(e));
            }
            if !paths.insert(f.path.as_str()) {
                problems.push(at("listed twice".into()));
            }
            if f.mode & !0o777 != 0 {
                problems.push(at(format!("mode {:o} has bits beyond 0o777", f.mode)));
            }
            let mut total = 0u64;
            for c in &f.chunks {
                if c.len() == 0 || c.len() > MAX_CHUNK {
                    problems.push(at(format!("a chunk of {} bytes", c.len())));
                }
                if c.blob().len == 0 || c.blob().len > MAX_CHUNK + (MAX_CHUNK >> 7) + 1024 {
                    problems.push(at(format!("a stored chunk of {} bytes", c.blob().len)));
                }
                total = total.saturating_add(c.len());
            }
            if total != f.size {
                problems.push(at(format!("chunks add up to {total} bytes, size is {}", f.size)));
            }
            let starts: BTreeSet<u64> = f.offsets().map(|(o, _)| o).chain([f.size]).collect();
            for p in &f.patches {
                let [t0, tl] = p.target;
                if tl == 0 || tl > MAX_PATCH_TARGET || p.base[1] > MAX_PATCH_BASE {
                    problems.push(at(format!("a delta for {tl} bytes from a base of {} bytes", p.base[1])));
                }
                if !starts.contains(&t0) || !starts.contains(&t0.saturating_add(tl)) {
                    problems.push(at(format!("a delta target {t0}+{tl} not on chunk boundaries")));
                }
                if p.blob.len > MAX_PATCH_TARGET + (1 << 20) {
                    problems.push(at(format!("a stored delta of {} bytes", p.blob.len)));
                }
            }
        }
        // A file may not also be a folder of another file.
        for p in &paths {
            let mut prefix = String::new();
            for part in p.split('/') {
                if !prefix.is_empty() && paths.contains(prefix.as_str()) {
                    problems.push(format!("{prefix}: is a file and a folder of {p}"));
                    break;
                }
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(part);
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    /// Total content bytes.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paths_that_escape_or_hide_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "../x",
            "a//b",
            "./a",
            "a/.",
            "a\\b",
            "a\nb",
            ".slipway-patch/x",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "bin/game", "data/level 3/ü.pak", "..a/b..", ".hidden"] {
            assert!(check_path(good).is_ok(), "{good:?} refused");
        }
    }

    fn file(path: &str, sizes: &[u32]) -> FileEntry {
        FileEntry {
            path: path.into(),
            mode: 0o644,
            size: sizes.iter().map(|s| *s as u64).sum(),
            hash: Hash::default(),
            priority: 0,
            tags: vec![],
            chunks: sizes.iter().map(|s| ChunkRef(Hash::default(), *s, 0, 0, *s)).collect(),
            patches: vec![],
        }
    }

    #[test]
    fn a_bad_manifest_lists_every_problem() {
        let mut bad_patch = file("c", &[10, 10]);
        bad_patch.patches.push(PatchRef {
            from: Hash::default(),
            base: [0, 5],
            target: [3, 10],
            method: Method::Zstd,
            hash: Hash::default(),
            blob: Blob {
                pack: 0,
                offset: 0,
                len: 9,
            },
        });
        let mut wrong_size = file("d", &[10]);
        wrong_size.size = 11;
        let m = Manifest {
            kind: "manifest".into(),
            product: "p".into(),
            version: 1,
            expires: 0,
            release: ReleaseInfo {
                seq: 1,
                id: "v1".into(),
                created: 0,
            },
            files: vec![
                file("a", &[1]),
                file("a", &[1]),
                file("a/b", &[1]),
                bad_patch,
                wrong_size,
                file("../e", &[1]),
            ],
        };
        let p = m.validate().unwrap_err().join("\n");
        for want in [
            "a: listed twice",
            "a: is a file and a folder of a/b",
            "not on chunk boundaries",
            "add up to 10",
            "../e",
        ] {
            assert!(p.contains(want), "{want} missing in {p}");
        }
    }

    proptest! {
        #[test]
        fn any_manifest_text_parses_or_fails_cleanly(s in "\\PC{0,200}") {
            let _ = serde_json::from_str::<Manifest>(&s);
        }

        #[test]
        fn a_path_that_passes_the_check_stays_inside(p in "[a-z./]{1,20}") {
            if check_path(&p).is_ok() {
                let joined = std::path::Path::new("/root").join(&p);
                prop_assert!(joined.components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::RootDir)));
            }
        }
    }
}
