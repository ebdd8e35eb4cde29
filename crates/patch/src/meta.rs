//! The signed metadata of a repo, after The Update Framework: root (offline, k-of-n, rotated by
//! version), timestamp and snapshot (online, short expiry), and the envelope that carries signatures
//! over the exact canonical bytes of the `signed` member.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::hash::Hash;
use crate::keys::{KeyId, KeyPair, PublicKey};

/// The metadata format this code writes and reads.
pub const SPEC_VERSION: &str = "slipway-patch/1";

/// The four roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Root,
    Targets,
    Snapshot,
    Timestamp,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Root, Role::Targets, Role::Snapshot, Role::Timestamp];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Targets => "targets",
            Role::Snapshot => "snapshot",
            Role::Timestamp => "timestamp",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which keys may sign for a role, and how many must.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    pub keyids: Vec<KeyId>,
    pub threshold: u32,
}

/// The root of trust: every role's keys. Clients pin one root and follow its signed successors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    #[serde(rename = "_type")]
    pub kind: String,
    pub spec_version: String,
    /// The product this repo publishes; every manifest must name the same one.
    pub product: String,
    pub version: u64,
    /// Unix seconds.
    pub expires: u64,
    pub keys: BTreeMap<KeyId, PublicKey>,
    pub roles: BTreeMap<Role, RoleKeys>,
}

/// A reference to another metadata file: its version, length and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaRef {
    pub version: u64,
    pub length: u64,
    pub blake3: Hash,
}

/// Signed often by the online timestamp key: which snapshot is current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    #[serde(rename = "_type")]
    pub kind: String,
    pub version: u64,
    pub expires: u64,
    pub snapshot: MetaRef,
}

/// Signed by the snapshot key at each publish: every live release manifest, and the latest one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    #[serde(rename = "_type")]
    pub kind: String,
    pub version: u64,
    pub expires: u64,
    /// The release sequence number clients should be on.
    pub latest: u64,
    /// Release sequence number -> its manifest file.
    pub releases: BTreeMap<u64, MetaRef>,
}

/// One signature in an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub keyid: KeyId,
    pub sig: String,
}

/// A problem with a metadata file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("{what}: not a signed metadata envelope: {message}")]
    Envelope { what: String, message: String },
    #[error("{what}: {valid} valid signature(s) from {role} keys of root v{root_version}, {threshold} needed")]
    Threshold {
        what: String,
        role: Role,
        root_version: u64,
        valid: u32,
        threshold: u32,
    },
    #[error("{what}: the signed content is malformed: {message}")]
    Malformed { what: String, message: String },
    #[error("root v{version} is invalid: {message}")]
    BadRoot { version: u64, message: String },
}

/// The outer form of every metadata file, parsed without touching the signed bytes.
#[derive(Deserialize)]
struct Envelope<'a> {
    signatures: Vec<Signature>,
    #[serde(borrow)]
    signed: &'a RawValue,
}

/// The signatures and the exact signed bytes of an envelope. Nothing inside `signed` is parsed.
pub fn open<'a>(what: &str, bytes: &'a [u8]) -> Result<(Vec<Signature>, &'a str), MetaError> {
    let env: Envelope<'a> = serde_json::from_slice(bytes).map_err(|e| MetaError::Envelope {
        what: what.to_string(),
        message: e.to_string(),
    })?;
    if env.signatures.len() > 64 {
        return Err(MetaError::Envelope {
            what: what.to_string(),
            message: format!("{} signatures (at most 64)", env.signatures.len()),
        });
    }
    Ok((env.signatures, env.signed.get()))
}

/// The envelope file for `signed`, signed by every key in `keys`.
pub fn seal<T: Serialize>(signed: &T, keys: &[&KeyPair]) -> Vec<u8> {
    let body = crate::canonical::to_vec(signed).expect("metadata types hold integers only");
    let mut sigs: Vec<Signature> = keys
        .iter()
        .map(|k| Signature {
            keyid: k.id(),
            sig: k.sign(&body),
        })
        .collect();
    sigs.sort_by(|a, b| a.keyid.cmp(&b.keyid));
    sigs.dedup_by(|a, b| a.keyid == b.keyid);
    let mut out = b"{\"signatures\":".to_vec();
    out.extend(crate::canonical::to_vec(&sigs).expect("strings only"));
    out.extend_from_slice(b",\"signed\":");
    out.extend(body);
    out.push(b'}');
    out
}

/// Parses the signed bytes of an envelope into `T` (only after its signatures were checked).
pub fn parse_signed<T: serde::de::DeserializeOwned>(what: &str, signed: &str) -> Result<T, MetaError> {
    serde_json::from_str(signed).map_err(|e| MetaError::Malformed {
        what: what.to_string(),
        message: e.to_string(),
    })
}

impl Root {
    /// Checks that a threshold of `role`'s keys in this root signed `signed`.
    pub fn check(&self, what: &str, role: Role, signed: &str, sigs: &[Signature]) -> Result<(), MetaError> {
        let rk = self.roles.get(&role).ok_or_else(|| MetaError::BadRoot {
            version: self.version,
            message: format!("no {role} role"),
        })?;
        let allowed: BTreeSet<&KeyId> = rk.keyids.iter().collect();
        let mut good: BTreeSet<&KeyId> = BTreeSet::new();
        for s in sigs {
            if !allowed.contains(&s.keyid) || good.contains(&s.keyid) {
                continue;
            }
            if let Some(k) = self.keys.get(&s.keyid)
                && k.verify(signed.as_bytes(), &s.sig)
            {
                good.insert(&s.keyid);
            }
        }
        let valid = good.len() as u32;
        if valid < rk.threshold.max(1) {
            return Err(MetaError::Threshold {
                what: what.to_string(),
                role,
                root_version: self.version,
                valid,
                threshold: rk.threshold,
            });
        }
        Ok(())
    }

    /// Every structural rule a root must follow, all problems at once.
    pub fn validate(&self) -> Result<(), MetaError> {
        let mut problems = Vec::new();
        if self.kind != "root" {
            problems.push(format!("_type is {:?}, not \"root\"", self.kind));
        }
        if self.spec_version != SPEC_VERSION {
            problems.push(format!("spec_version {:?} is not {SPEC_VERSION:?}", self.spec_version));
        }
        for (id, k) in &self.keys {
            if k.verifying_key().is_none() {
                problems.push(format!("key {id} is not a valid ed25519 key"));
            } else if &k.id() != id {
                problems.push(format!("key listed as {id} has id {}", k.id()));
            }
        }
        for role in Role::ALL {
            match self.roles.get(&role) {
                None => problems.push(format!("no {role} role")),
                Some(rk) => {
                    let distinct: BTreeSet<&KeyId> = rk.keyids.iter().collect();
                    if rk.threshold == 0 {
                        problems.push(format!("{role} threshold is 0"));
                    }
                    if (distinct.len() as u32) < rk.threshold {
                        problems.push(format!(
                            "{role} threshold {} is more than its {} distinct keys",
                            rk.threshold,
                            distinct.len()
                        ));
                    }
                    for id in &rk.keyids {
                        if !self.keys.contains_key(id) {
                            problems.push(format!("{role} names key {id}, which is not in keys"));
                        }
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(MetaError::BadRoot {
                version: self.version,
                message: problems.join("; "),
            })
        }
    }

    /// The key ids of a role (empty if the role is missing).
    pub fn keyids(&self, role: Role) -> Vec<KeyId> {
        self.roles.get(&role).map(|r| r.keyids.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn root_with(keys: &[&KeyPair], threshold: u32) -> Root {
        let mut roles = BTreeMap::new();
        for r in Role::ALL {
            roles.insert(
                r,
                RoleKeys {
                    keyids: keys.iter().map(|k| k.id()).collect(),
                    threshold,
                },
            );
        }
        Root {
            kind: "root".into(),
            spec_version: SPEC_VERSION.into(),
            product: "game".into(),
            version: 1,
            expires: 100,
            keys: keys.iter().map(|k| (k.id(), k.public())).collect(),
            roles,
        }
    }

    #[test]
    fn a_threshold_counts_distinct_listed_keys_with_valid_signatures() {
        let a = KeyPair::from_seed("root", [1; 32]);
        let b = KeyPair::from_seed("root", [2; 32]);
        let c = KeyPair::from_seed("root", [3; 32]);
        let root = root_with(&[&a, &b], 2);
        root.validate().unwrap();
        let env = seal(&root, &[&a, &b]);
        let (sigs, signed) = open("root", &env).unwrap();
        root.check("root", Role::Root, signed, &sigs).unwrap();
        // One key signing twice, or an unlisted key, does not make two.
        let env = seal(&root, &[&a, &c]);
        let (mut sigs, signed) = open("root", &env).unwrap();
        let err = root.check("root", Role::Root, signed, &sigs).unwrap_err();
        assert!(err.to_string().contains("1 valid signature(s)"), "{err}");
        let dup = sigs.iter().find(|s| s.keyid == a.id()).unwrap().clone();
        sigs.push(dup);
        assert!(root.check("root", Role::Root, signed, &sigs).is_err());
        // Changing one byte of the signed content breaks every signature.
        let env = seal(&root, &[&a, &b]);
        let s = String::from_utf8(env)
            .unwrap()
            .replace("\"version\":1", "\"version\":2");
        let (sigs, signed) = open("root", s.as_bytes()).unwrap();
        assert!(root.check("root", Role::Root, signed, &sigs).is_err());
    }

    #[test]
    fn a_root_with_every_problem_lists_them_all() {
        let a = KeyPair::from_seed("root", [1; 32]);
        let mut root = root_with(&[&a], 2);
        root.kind = "targets".into();
        root.roles.remove(&Role::Timestamp);
        root.roles.get_mut(&Role::Snapshot).unwrap().keyids.push("nope".into());
        let msg = root.validate().unwrap_err().to_string();
        for want in ["_type", "no timestamp role", "root threshold 2", "key nope"] {
            assert!(msg.contains(want), "{want} missing in {msg}");
        }
    }

    proptest! {
        /// Whatever bytes arrive, opening an envelope returns a clear error or the exact signed bytes.
        #[test]
        fn opening_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), s in "\\PC{0,80}") {
            let _ = open("x", &bytes);
            let wrapped = format!("{{\"signatures\":[],\"signed\":{s}}}");
            if let Ok((sigs, signed)) = open("x", wrapped.as_bytes()) {
                prop_assert!(sigs.is_empty());
                prop_assert!(wrapped.contains(signed));
            }
        }
    }
}
