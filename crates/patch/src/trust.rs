//! The client's half of The Update Framework, pure: given the trusted metadata, fetched bytes and the
//! time, each step returns the newly trusted metadata or why it is refused. The order is TUF's: root
//! versions one by one, then timestamp, snapshot, and the release manifest.

use crate::hash::Hash;
use crate::manifest::Manifest;
use crate::meta::{self, MetaError, MetaRef, Role, Root, Snapshot, Timestamp};

/// Size limits for metadata downloads (the snapshot and manifests are limited by the length their
/// signed parent lists, and never past these).
pub const MAX_ROOT: u64 = 1 << 20;
pub const MAX_TIMESTAMP: u64 = 16 << 10;
pub const MAX_SNAPSHOT: u64 = 32 << 20;
pub const MAX_MANIFEST: u64 = 512 << 20;

/// Why metadata was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(
        "{what} expired at {expires} (it is now {now}): the repo or a mirror serves stale metadata (freeze attack?)"
    )]
    Expired { what: String, expires: u64, now: u64 },
    #[error("{what}: version {got} is older than the trusted version {have} (rollback attack?)")]
    Rollback { what: String, have: u64, got: u64 },
    #[error("{what}: got {got_len} bytes with hash {got}, but {by} lists {want_len} bytes with hash {want}")]
    Mismatch {
        what: String,
        by: String,
        got_len: u64,
        got: String,
        want_len: u64,
        want: String,
    },
    #[error("{what}: version {got}, but {by} says {want}")]
    Version {
        what: String,
        by: String,
        got: u64,
        want: u64,
    },
    #[error("release {seq} is not listed in snapshot v{snapshot} (mix-and-match?)")]
    NotListed { seq: u64, snapshot: u64 },
    #[error("{what}: its _type is {got:?}, not {want:?}")]
    Type { what: String, got: String, want: String },
    #[error("the manifest is for product {got:?}, but this repo's root is for {want:?}")]
    Product { got: String, want: String },
    #[error("release {seq}: the manifest is invalid: {problems}")]
    Invalid { seq: u64, problems: String },
}

fn not_expired(what: &str, expires: u64, now: u64) -> Result<(), TrustError> {
    if now >= expires {
        return Err(TrustError::Expired {
            what: what.to_string(),
            expires,
            now,
        });
    }
    Ok(())
}

fn matches(what: &str, by: &str, bytes: &[u8], r: &MetaRef) -> Result<(), TrustError> {
    let got = Hash::of(bytes);
    if bytes.len() as u64 != r.length || got != r.blake3 {
        return Err(TrustError::Mismatch {
            what: what.to_string(),
            by: by.to_string(),
            got_len: bytes.len() as u64,
            got: got.short(),
            want_len: r.length,
            want: r.blake3.short(),
        });
    }
    Ok(())
}

fn kind(what: &str, got: &str, want: &str) -> Result<(), TrustError> {
    if got != want {
        return Err(TrustError::Type {
            what: what.into(),
            got: got.into(),
            want: want.into(),
        });
    }
    Ok(())
}

/// A root to pin on first use: it must be signed by a threshold of its own root keys.
pub fn pin_root(bytes: &[u8]) -> Result<Root, TrustError> {
    let (sigs, signed) = meta::open("root", bytes)?;
    let root: Root = meta::parse_signed("root", signed)?;
    root.validate()?;
    root.check("root", Role::Root, signed, &sigs)?;
    Ok(root)
}

/// Root version `trusted.version + 1`: signed by a threshold of the trusted root's keys (checked
/// before anything inside is parsed) and of its own.
pub fn next_root(trusted: &Root, bytes: &[u8]) -> Result<Root, TrustError> {
    let want = trusted.version + 1;
    let what = format!("root v{want}");
    let (sigs, signed) = meta::open(&what, bytes)?;
    trusted.check(&what, Role::Root, signed, &sigs)?;
    let root: Root = meta::parse_signed(&what, signed)?;
    root.validate()?;
    root.check(&what, Role::Root, signed, &sigs)?;
    if root.version != want {
        return Err(TrustError::Version {
            what,
            by: format!("root v{}", trusted.version),
            got: root.version,
            want,
        });
    }
    Ok(root)
}

/// After the root walk: the final root must not have expired.
pub fn root_is_current(root: &Root, now: u64) -> Result<(), TrustError> {
    not_expired(&format!("root v{}", root.version), root.expires, now)
}

/// Whether a root rotation replaced the timestamp or snapshot keys, which makes the trusted
/// timestamp and snapshot meaningless (TUF's recovery from a fast-forward attack).
pub fn online_keys_rotated(old: &Root, new: &Root) -> bool {
    [Role::Timestamp, Role::Snapshot]
        .into_iter()
        .any(|r| old.roles.get(&r) != new.roles.get(&r))
}

pub fn timestamp(root: &Root, bytes: &[u8], trusted: Option<&Timestamp>, now: u64) -> Result<Timestamp, TrustError> {
    let what = "timestamp.json";
    let (sigs, signed) = meta::open(what, bytes)?;
    root.check(what, Role::Timestamp, signed, &sigs)?;
    let ts: Timestamp = meta::parse_signed(what, signed)?;
    kind(what, &ts.kind, "timestamp")?;
    if let Some(t) = trusted {
        if ts.version < t.version {
            return Err(TrustError::Rollback {
                what: what.into(),
                have: t.version,
                got: ts.version,
            });
        }
        if ts.snapshot.version < t.snapshot.version {
            return Err(TrustError::Rollback {
                what: "the snapshot named by timestamp.json".into(),
                have: t.snapshot.version,
                got: ts.snapshot.version,
            });
        }
    }
    not_expired(&format!("timestamp v{}", ts.version), ts.expires, now)?;
    Ok(ts)
}

pub fn snapshot(
    root: &Root,
    ts: &Timestamp,
    bytes: &[u8],
    trusted: Option<&Snapshot>,
    now: u64,
) -> Result<Snapshot, TrustError> {
    let what = format!("snapshot v{}", ts.snapshot.version);
    matches(&what, "timestamp.json", bytes, &ts.snapshot)?;
    let (sigs, signed) = meta::open(&what, bytes)?;
    root.check(&what, Role::Snapshot, signed, &sigs)?;
    let s: Snapshot = meta::parse_signed(&what, signed)?;
    kind(&what, &s.kind, "snapshot")?;
    if s.version != ts.snapshot.version {
        return Err(TrustError::Version {
            what,
            by: "timestamp.json".into(),
            got: s.version,
            want: ts.snapshot.version,
        });
    }
    if let Some(t) = trusted {
        if s.version < t.version {
            return Err(TrustError::Rollback {
                what: what.clone(),
                have: t.version,
                got: s.version,
            });
        }
        if s.latest < t.latest {
            return Err(TrustError::Rollback {
                what: format!("{what}'s latest release"),
                have: t.latest,
                got: s.latest,
            });
        }
        for (seq, old) in &t.releases {
            if let Some(new) = s.releases.get(seq)
                && new.version < old.version
            {
                return Err(TrustError::Rollback {
                    what: format!("release {seq}'s manifest"),
                    have: old.version,
                    got: new.version,
                });
            }
        }
    }
    not_expired(&what, s.expires, now)?;
    Ok(s)
}

/// The manifest of release `seq`: listed in the snapshot, with the length and hash it lists (checked
/// before parsing), signed by the targets role, of this product, not expired, and valid.
pub fn manifest(root: &Root, snap: &Snapshot, seq: u64, bytes: &[u8], now: u64) -> Result<Manifest, TrustError> {
    let r = snap.releases.get(&seq).ok_or(TrustError::NotListed {
        seq,
        snapshot: snap.version,
    })?;
    let what = format!("release {seq}'s manifest");
    matches(&what, &format!("snapshot v{}", snap.version), bytes, r)?;
    let (sigs, signed) = meta::open(&what, bytes)?;
    root.check(&what, Role::Targets, signed, &sigs)?;
    let m: Manifest = meta::parse_signed(&what, signed)?;
    kind(&what, &m.kind, "manifest")?;
    if m.release.seq != seq || m.version != r.version {
        return Err(TrustError::Version {
            what,
            by: format!("snapshot v{}", snap.version),
            got: m.version,
            want: r.version,
        });
    }
    if m.product != root.product {
        return Err(TrustError::Product {
            got: m.product,
            want: root.product.clone(),
        });
    }
    not_expired(&what, m.expires, now)?;
    m.validate().map_err(|p| TrustError::Invalid {
        seq,
        problems: p.join("; "),
    })?;
    Ok(m)
}
