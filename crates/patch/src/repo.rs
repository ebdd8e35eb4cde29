//! A repo folder as the publisher keeps it: where each file lives, the current signed metadata, the
//! keyring, and `keys init|rotate|sign-timestamp`.
//!
//! ```text
//! root.json  root/<v>.json           every root version (clients walk them in order)
//! timestamp.json                     the only file rewritten in place
//! snapshots/<v>.json                 immutable
//! manifests/<seq>.v<version>.json    immutable
//! packs/<n>.pack  index/chunks  reports/<seq>.json
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::keys::{KeyError, KeyPair};
use crate::meta::{self, MetaError, MetaRef, Role, RoleKeys, Root, Snapshot, Timestamp};

pub const DAY: u64 = 86_400;

/// How long each role's metadata stays valid after it is signed.
#[derive(Debug, Clone, Copy)]
pub struct Expiry {
    pub root: u64,
    pub targets: u64,
    pub snapshot: u64,
    pub timestamp: u64,
}

impl Default for Expiry {
    fn default() -> Expiry {
        Expiry {
            root: 365 * DAY,
            targets: 365 * DAY,
            snapshot: 7 * DAY,
            timestamp: DAY,
        }
    }
}

/// A failure of a repo operation.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("{0}")]
    Usage(String),
}

pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |source| RepoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn root_name(v: u64) -> String {
    format!("root/{v}.json")
}
pub fn snapshot_name(v: u64) -> String {
    format!("snapshots/{v}.json")
}
pub fn manifest_name(seq: u64, version: u64) -> String {
    format!("manifests/{seq}.v{version}.json")
}
pub const TIMESTAMP: &str = "timestamp.json";

/// The private keys found in key folders.
#[derive(Debug, Default)]
pub struct Keyring {
    pub keys: Vec<KeyPair>,
    dir: PathBuf,
}

impl Keyring {
    /// Every `*.key` file in each folder (the first folder is where new keys go).
    pub fn load(dirs: &[&Path]) -> Result<Keyring, RepoError> {
        let mut keys: Vec<KeyPair> = Vec::new();
        for dir in dirs {
            let rd = match std::fs::read_dir(dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(dir)(e)),
            };
            let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for p in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "key")) {
                let k = KeyPair::load(&p)?;
                if !keys.iter().any(|x| x.id() == k.id()) {
                    keys.push(k);
                }
            }
        }
        Ok(Keyring {
            keys,
            dir: dirs.first().map(|d| d.to_path_buf()).unwrap_or_default(),
        })
    }

    /// The keys this root lists for `role`.
    pub fn for_role(&self, root: &Root, role: Role) -> Vec<&KeyPair> {
        let ids = root.keyids(role);
        self.keys.iter().filter(|k| ids.contains(&k.id())).collect()
    }

    /// Signing keys for an online role, or an error naming what is missing.
    pub fn need(&self, root: &Root, role: Role) -> Result<Vec<&KeyPair>, RepoError> {
        let have = self.for_role(root, role);
        let threshold = root.roles.get(&role).map(|r| r.threshold).unwrap_or(1);
        if (have.len() as u32) < threshold {
            return Err(RepoError::Usage(format!(
                "{} of the {threshold} {role} keys root v{} needs are in {}",
                have.len(),
                root.version,
                self.dir.display()
            )));
        }
        Ok(have)
    }

    fn generate(&mut self, role: Role) -> Result<KeyPair, RepoError> {
        let k = KeyPair::generate(role.as_str())?;
        k.save(&self.dir.join(format!("{role}-{}.key", &k.id()[..12])))?;
        self.keys.push(k.clone());
        Ok(k)
    }
}

/// The repo folder.
#[derive(Debug, Clone)]
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    pub fn new(dir: &Path) -> Repo {
        Repo { dir: dir.to_path_buf() }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Writes a repo file atomically (world-readable: it is public content).
    pub fn write(&self, rel: &str, bytes: &[u8]) -> Result<(), RepoError> {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        plumbing::fs::write_atomic(&p, bytes, 0o644).map_err(|e| RepoError::Usage(e.to_string()))
    }

    pub fn read(&self, rel: &str) -> Result<Vec<u8>, RepoError> {
        let p = self.path(rel);
        std::fs::read(&p).map_err(io(&p))
    }

    /// The newest root version in the repo.
    pub fn root(&self) -> Result<(Root, u64), RepoError> {
        let mut v = 0;
        while self.path(&root_name(v + 1)).exists() {
            v += 1;
        }
        if v == 0 {
            return Err(RepoError::Usage(format!(
                "{} has no root metadata: run `slipway patch keys init` first",
                self.dir.display()
            )));
        }
        let bytes = self.read(&root_name(v))?;
        let (_, signed) = meta::open("root", &bytes)?;
        Ok((meta::parse_signed(&root_name(v), signed)?, v))
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, rel: &str) -> Result<T, RepoError> {
        let bytes = self.read(rel)?;
        let (_, signed) = meta::open(rel, &bytes)?;
        Ok(meta::parse_signed(rel, signed)?)
    }

    pub fn timestamp(&self) -> Result<Timestamp, RepoError> {
        self.parse(TIMESTAMP)
    }

    /// The current snapshot (the one the timestamp names).
    pub fn snapshot(&self) -> Result<Snapshot, RepoError> {
        let ts = self.timestamp()?;
        self.parse(&snapshot_name(ts.snapshot.version))
    }

    pub fn manifest(&self, seq: u64, r: &MetaRef) -> Result<crate::manifest::Manifest, RepoError> {
        self.parse(&manifest_name(seq, r.version))
    }

    /// Writes a new snapshot and the timestamp that names it (in that order, so a client reading the
    /// old timestamp still finds its snapshot).
    pub fn commit(
        &self,
        snapshot: &Snapshot,
        keys: &Keyring,
        root: &Root,
        now: u64,
        exp: &Expiry,
    ) -> Result<(), RepoError> {
        let sbytes = meta::seal(snapshot, &keys.need(root, Role::Snapshot)?);
        self.write(&snapshot_name(snapshot.version), &sbytes)?;
        let prev = self.timestamp().map(|t| t.version).unwrap_or(0);
        let ts = Timestamp {
            kind: "timestamp".into(),
            version: prev + 1,
            expires: now + exp.timestamp,
            snapshot: MetaRef {
                version: snapshot.version,
                length: sbytes.len() as u64,
                blake3: crate::hash::Hash::of(&sbytes),
            },
        };
        self.write(TIMESTAMP, &meta::seal(&ts, &keys.need(root, Role::Timestamp)?))
    }

    fn write_root(&self, root: &Root, signers: &[&KeyPair]) -> Result<(), RepoError> {
        root.validate()?;
        let bytes = meta::seal(root, signers);
        self.write(&root_name(root.version), &bytes)?;
        self.write("root.json", &bytes)
    }
}

/// `keys init`: new keys (n root keys with threshold k, one key per online role) and root v1, plus an
/// empty snapshot and timestamp so the repo is valid before its first release.
pub fn init(
    repo: &Repo,
    keys_dir: &Path,
    product: &str,
    root_keys: u32,
    threshold: u32,
    now: u64,
    exp: &Expiry,
) -> Result<Root, RepoError> {
    if repo.path(&root_name(1)).exists() {
        return Err(RepoError::Usage(format!(
            "{} already has a root; use `keys rotate`",
            repo.dir.display()
        )));
    }
    if threshold == 0 || threshold > root_keys {
        return Err(RepoError::Usage(format!(
            "a threshold of {threshold} of {root_keys} root keys cannot be met"
        )));
    }
    if product.is_empty() {
        return Err(RepoError::Usage("the product name is empty".into()));
    }
    let mut ring = Keyring::load(&[keys_dir])?;
    let mut root = Root {
        kind: "root".into(),
        spec_version: meta::SPEC_VERSION.into(),
        product: product.into(),
        version: 1,
        expires: now + exp.root,
        keys: BTreeMap::new(),
        roles: BTreeMap::new(),
    };
    for role in Role::ALL {
        let (n, t) = if role == Role::Root {
            (root_keys, threshold)
        } else {
            (1, 1)
        };
        give_keys(&mut ring, &mut root, role, Vec::new(), n, t)?;
    }
    let signers = ring.for_role(&root, Role::Root);
    repo.write_root(&root, &signers)?;
    let snapshot = Snapshot {
        kind: "snapshot".into(),
        version: 1,
        expires: now + exp.snapshot,
        latest: 0,
        releases: BTreeMap::new(),
    };
    repo.commit(&snapshot, &ring, &root, now, exp)?;
    Ok(root)
}

/// Sets `role`'s keys in `root` to `kept` plus `n` new keys (saved in the keyring's folder).
fn give_keys(
    ring: &mut Keyring,
    root: &mut Root,
    role: Role,
    mut kept: Vec<String>,
    n: u32,
    threshold: u32,
) -> Result<(), RepoError> {
    for _ in 0..n {
        let k = ring.generate(role)?;
        root.keys.insert(k.id(), k.public());
        kept.push(k.id());
    }
    root.roles.insert(
        role,
        RoleKeys {
            keyids: kept,
            threshold,
        },
    );
    Ok(())
}

/// `keys rotate`: a new key for `role` replaces `revoke` (or every current key of the role), in a
/// new root version signed by a threshold of the old root keys and of the new ones. Rotating targets
/// re-signs every live manifest; snapshot and timestamp are re-signed in any case.
pub fn rotate(
    repo: &Repo,
    ring: &mut Keyring,
    role: Role,
    revoke: Option<&str>,
    now: u64,
    exp: &Expiry,
) -> Result<Root, RepoError> {
    let (old, _) = repo.root()?;
    let old_signers: Vec<KeyPair> = ring.need(&old, Role::Root)?.into_iter().cloned().collect();
    let mut root = old.clone();
    root.version += 1;
    root.expires = now + exp.root;
    let rk = root
        .roles
        .get(&role)
        .cloned()
        .ok_or_else(|| RepoError::Usage(format!("no {role} role")))?;
    let removed: Vec<String> = match revoke {
        Some(id) => {
            let full = rk.keyids.iter().find(|k| k.starts_with(id) && id.len() >= 8).cloned();
            vec![full.ok_or_else(|| RepoError::Usage(format!("{id} is not a {role} key of root v{}", old.version)))?]
        }
        None => rk.keyids.clone(),
    };
    let adds = if revoke.is_some() {
        1
    } else {
        rk.keyids.len().max(1) as u32
    };
    let kept: Vec<String> = rk.keyids.iter().filter(|k| !removed.contains(k)).cloned().collect();
    give_keys(ring, &mut root, role, kept, adds, rk.threshold)?;
    let still_used: Vec<String> = root.roles.values().flat_map(|r| r.keyids.clone()).collect();
    root.keys.retain(|id, _| still_used.contains(id));
    let mut signers: Vec<&KeyPair> = old_signers.iter().collect();
    signers.extend(ring.for_role(&root, Role::Root));
    repo.write_root(&root, &signers)?;
    resign_after_rotation(repo, ring, &root, role == Role::Targets, now, exp)?;
    Ok(root)
}

fn resign_after_rotation(
    repo: &Repo,
    ring: &Keyring,
    root: &Root,
    manifests: bool,
    now: u64,
    exp: &Expiry,
) -> Result<(), RepoError> {
    let mut snap = repo.snapshot()?;
    if manifests {
        let targets = ring.need(root, Role::Targets)?;
        for (seq, r) in snap.releases.iter_mut() {
            let mut m = repo.manifest(*seq, r)?;
            m.version = r.version + 1;
            m.expires = now + exp.targets;
            let bytes = meta::seal(&m, &targets);
            repo.write(&manifest_name(*seq, m.version), &bytes)?;
            *r = MetaRef {
                version: m.version,
                length: bytes.len() as u64,
                blake3: crate::hash::Hash::of(&bytes),
            };
        }
    }
    snap.version += 1;
    snap.expires = now + exp.snapshot;
    repo.commit(&snap, ring, root, now, exp)
}

/// `keys sign-timestamp`: the same snapshot, a new timestamp version with a fresh expiry.
pub fn sign_timestamp(repo: &Repo, ring: &Keyring, now: u64, exp: &Expiry) -> Result<Timestamp, RepoError> {
    let (root, _) = repo.root()?;
    let mut ts = repo.timestamp()?;
    ts.version += 1;
    ts.expires = now + exp.timestamp;
    repo.write(TIMESTAMP, &meta::seal(&ts, &ring.need(&root, Role::Timestamp)?))?;
    Ok(ts)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
