//! Shared fixtures: a repo with keys, build trees written from byte maps, trees read back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use patch::{Expiry, Keyring, PublishOptions, Published, Repo};
use testkit::TempDir;

pub struct Fixture {
    pub dir: TempDir,
    pub repo: Repo,
    pub keys: PathBuf,
    pub now: u64,
}

impl Fixture {
    pub fn new(tag: &str) -> Fixture {
        let dir = TempDir::new(tag);
        let repo = Repo::new(&dir.join("repo"));
        let keys = dir.join("keys");
        let now = patch::unix_now();
        patch::init(&repo, &keys, "game", 3, 2, now, &Expiry::default()).unwrap();
        Fixture { dir, repo, keys, now }
    }

    pub fn keyring(&self) -> Keyring {
        Keyring::load(&[&self.keys]).unwrap()
    }

    pub fn publish(&self, build: &Path, id: &str) -> Published {
        self.try_publish(build, id, None).unwrap()
    }

    pub fn try_publish(
        &self,
        build: &Path,
        id: &str,
        max_bytes: Option<u64>,
    ) -> Result<Published, patch::PublishError> {
        self.publish_with(build, id, max_bytes, 3)
    }

    /// Publishes with deltas from `deltas` previous releases (the report always covers 3).
    pub fn publish_with(
        &self,
        build: &Path,
        id: &str,
        max_bytes: Option<u64>,
        deltas: usize,
    ) -> Result<Published, patch::PublishError> {
        patch::publish(&PublishOptions {
            build,
            release_id: id,
            repo: &self.repo,
            keys: &self.keyring(),
            delta_from: deltas,
            report_from: 3,
            level: 3,
            max_bytes,
            now: self.now,
            expiry: Expiry::default(),
        })
    }

    pub fn root_bytes(&self) -> Vec<u8> {
        std::fs::read(self.repo.dir.join("root.json")).unwrap()
    }

    pub fn build_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn install(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

pub type Tree = BTreeMap<String, Vec<u8>>;

/// Replaces `dir` with exactly these files.
pub fn write_tree(dir: &Path, tree: &Tree) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for (p, bytes) in tree {
        let abs = dir.join(p);
        std::fs::create_dir_all(abs.parent().unwrap()).unwrap();
        std::fs::write(&abs, bytes).unwrap();
    }
}

/// Every regular file under `dir` (following the `current` symlink if given the install).
pub fn read_tree(dir: &Path) -> Tree {
    let mut out = Tree::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((abs, rel)) = stack.pop() {
        for e in std::fs::read_dir(&abs).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            if e.file_type().unwrap().is_dir() {
                stack.push((e.path(), path));
            } else {
                out.insert(path, std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

/// Realistic-looking content: words and numbers from a seeded generator (compressible, not random).
pub fn text(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "player", "level", "sword", "castle", "dragon", "quest", "gold", "mana", "shield", "forest", "river", "tower",
        "spell", "guild", "armor", "potion",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % 16) as usize].as_bytes());
        out.push(if x.is_multiple_of(7) { b'\n' } else { b' ' });
        if x.is_multiple_of(5) {
            out.extend_from_slice(format!("{} ", x % 100_000).as_bytes());
        }
    }
    out.truncate(len);
    out
}
