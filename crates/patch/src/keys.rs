//! Ed25519 keys for the metadata roles: key files (mode 0600), public keys as root lists them, key ids,
//! signing and strict verification.

use std::path::Path;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::hash::Hash;

/// A failure loading or saving a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("cannot read the system's random source: {0}")]
    Random(std::io::Error),
}

/// A public key as the root metadata lists it (TUF's key object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub keytype: String,
    pub scheme: String,
    pub keyval: KeyVal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVal {
    /// 32 bytes, hex.
    pub public: String,
}

/// A key's id: BLAKE3 of the canonical JSON of its public key object.
pub type KeyId = String;

impl PublicKey {
    pub fn ed25519(k: &VerifyingKey) -> PublicKey {
        PublicKey {
            keytype: "ed25519".into(),
            scheme: "ed25519".into(),
            keyval: KeyVal {
                public: plumbing::fs::hex(k.as_bytes()),
            },
        }
    }

    pub fn id(&self) -> KeyId {
        Hash::of(&crate::canonical::to_vec(self).unwrap_or_default()).hex()
    }

    /// The verifying key, or `None` if this is not a valid ed25519 key.
    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        if self.keytype != "ed25519" || self.scheme != "ed25519" {
            return None;
        }
        let bytes: [u8; 32] = Hash::parse(&self.keyval.public)?.0;
        VerifyingKey::from_bytes(&bytes).ok()
    }

    /// Checks `sig` (hex) over `msg` with `verify_strict`.
    pub fn verify(&self, msg: &[u8], sig_hex: &str) -> bool {
        let Some(k) = self.verifying_key() else { return false };
        let Some(sig) = parse_sig(sig_hex) else { return false };
        k.verify_strict(msg, &sig).is_ok()
    }
}

fn parse_sig(hex: &str) -> Option<ed25519_dalek::Signature> {
    if hex.len() != 128 {
        return None;
    }
    let lo = Hash::parse(&hex[..64])?;
    let hi = Hash::parse(&hex[64..])?;
    let mut b = [0u8; 64];
    b[..32].copy_from_slice(&lo.0);
    b[32..].copy_from_slice(&hi.0);
    Some(ed25519_dalek::Signature::from_bytes(&b))
}

/// A private signing key with the role it was made for.
#[derive(Clone)]
pub struct KeyPair {
    pub role: String,
    key: SigningKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair({} {})", self.role, &self.public().id()[..12])
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    keytype: String,
    role: String,
    /// The 32-byte seed, hex.
    private: String,
}

impl KeyPair {
    /// A new key from the kernel's random source.
    pub fn generate(role: &str) -> Result<KeyPair, KeyError> {
        let seed = plumbing::fs::random_bytes::<32>().map_err(KeyError::Random)?;
        Ok(KeyPair::from_seed(role, seed))
    }

    pub fn from_seed(role: &str, seed: [u8; 32]) -> KeyPair {
        KeyPair {
            role: role.to_string(),
            key: SigningKey::from_bytes(&seed),
        }
    }

    pub fn public(&self) -> PublicKey {
        PublicKey::ed25519(&self.key.verifying_key())
    }

    pub fn id(&self) -> KeyId {
        self.public().id()
    }

    /// The signature over `msg`, hex.
    pub fn sign(&self, msg: &[u8]) -> String {
        plumbing::fs::hex(&self.key.sign(msg).to_bytes())
    }

    /// Writes the key file with mode 0600 (its folder 0700); refuses to overwrite one.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let err = |m: String| KeyError::File {
            path: path.display().to_string(),
            message: m,
        };
        if path.exists() {
            return Err(err("a key file is already there; refusing to overwrite it".into()));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::fsx::create_private_dir(dir).map_err(|e| err(e.to_string()))?;
        }
        let file = KeyFile {
            keytype: "ed25519".into(),
            role: self.role.clone(),
            private: plumbing::fs::hex(self.key.as_bytes()),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| err(e.to_string()))?;
        plumbing::fs::write_atomic(path, &json, 0o600).map_err(|e| err(e.to_string()))
    }

    /// Reads a key file; refuses one that others can read.
    pub fn load(path: &Path) -> Result<KeyPair, KeyError> {
        use std::os::unix::fs::PermissionsExt;
        let err = |m: String| KeyError::File {
            path: path.display().to_string(),
            message: m,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(err(format!(
                "mode {:o} lets others read this private key; chmod 600 it",
                meta.permissions().mode() & 0o777
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let file: KeyFile = serde_json::from_slice(&bytes).map_err(|e| err(format!("not a key file: {e}")))?;
        if file.keytype != "ed25519" {
            return Err(err(format!(
                "key type {:?} is not supported (ed25519 only)",
                file.keytype
            )));
        }
        let seed = Hash::parse(&file.private).ok_or_else(|| err("the private key is not 64 hex digits".into()))?;
        Ok(KeyPair::from_seed(&file.role, seed.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_private_and_round_trip() {
        use std::os::unix::fs::PermissionsExt;
        let dir = testkit::TempDir::new("patch-keys");
        let k = KeyPair::generate("targets").unwrap();
        let p = dir.join("keys/targets.key");
        k.save(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(dir.join("keys")).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let back = KeyPair::load(&p).unwrap();
        assert_eq!(back.id(), k.id());
        assert!(k.save(&p).is_err(), "never overwrites a key");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(KeyPair::load(&p).unwrap_err().to_string().contains("chmod 600"));
    }

    #[test]
    fn a_signature_verifies_only_for_its_message_and_key() {
        let a = KeyPair::from_seed("root", [1; 32]);
        let b = KeyPair::from_seed("root", [2; 32]);
        let sig = a.sign(b"hello");
        assert!(a.public().verify(b"hello", &sig));
        assert!(!a.public().verify(b"hellO", &sig));
        assert!(!b.public().verify(b"hello", &sig));
        assert!(!a.public().verify(b"hello", "zz"));
        assert_ne!(a.id(), b.id());
    }
}
