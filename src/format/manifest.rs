//! The store manifest (`tresor.json`) and data-group key files
//! (`keys/<group>.json`): JSON, like gocryptfs.conf, so an administrator can
//! read them. The manifest gates compatibility: an unknown format version or
//! feature flag is refused, as ext4 and gocryptfs refuse unknown features.

use super::FormatError;
use serde::{Deserialize, Serialize};

/// Manifest file name at the store root.
pub const MANIFEST_FILE: &str = "tresor.json";
/// Directory of data-group key files.
pub const KEYS_DIR: &str = "keys";
/// Directory holding one ciphertext tree per data group.
pub const GROUPS_DIR: &str = "groups";
/// Store format written by this tresor.
pub const STORE_FORMAT: u32 = 1;
/// Feature flags this tresor understands.
pub const KNOWN_FEATURES: &[&str] = &[
    "content-aes256gcmsiv-4k",
    "names-aes256gcmsiv",
    "longnames",
    // Users, roles and the access matrix in the admin-signed directory.json.
    "directory-v1",
    // Every content file is in format 2 (two-slot size record, FORMAT.md §5b).
    "content-v2",
];
/// The feature that makes `directory.json` mandatory.
pub const FEATURE_DIRECTORY: &str = "directory-v1";
/// The feature that says every content file is in format 2.
pub const FEATURE_CONTENT_V2: &str = "content-v2";
/// Key file format written by this tresor.
pub const KEYS_FORMAT: u32 = 1;

/// Argon2id defaults for new PSEs of this store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfSpec {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

/// The public half of an identity: who holds which keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicIdentity {
    /// User name.
    pub name: String,
    /// RSA-PSS verification key, SubjectPublicKeyInfo DER, base64url.
    pub sign_public: String,
    /// RSA-OAEP key-transport key, SubjectPublicKeyInfo DER, base64url.
    pub transport_public: String,
}

/// The store manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Store format version.
    pub tresor_store: u32,
    /// Random 128-bit store id, hex.
    pub store_id: String,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// Feature flags; every one must be in [`KNOWN_FEATURES`].
    pub features: Vec<String>,
    /// Default Argon2id work factors for new PSEs.
    pub kdf_defaults: KdfSpec,
    /// Plaintext block size of file contents.
    pub block_size: u32,
    /// The administrator's public keys.
    pub admin: PublicIdentity,
}

impl Manifest {
    /// Parses and checks a manifest: version, features, block size.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| FormatError::Corrupt(format!("store manifest is not valid JSON ({e})")))?;
        let version = v
            .get("tresor_store")
            .and_then(|x| x.as_u64())
            .ok_or_else(|| {
                FormatError::Corrupt(
                    "this is not a tresor store manifest (no \"tresor_store\" version)".into(),
                )
            })?;
        if version > u64::from(STORE_FORMAT) {
            return Err(FormatError::TooNew {
                what: "store",
                found: u32::try_from(version).unwrap_or(u32::MAX),
                supported: STORE_FORMAT,
            });
        }
        if version == 0 {
            return Err(FormatError::Corrupt(
                "store manifest has format version 0".into(),
            ));
        }
        let m: Manifest = serde_json::from_value(v)
            .map_err(|e| FormatError::Corrupt(format!("store manifest is malformed ({e})")))?;
        if let Some(f) = m
            .features
            .iter()
            .find(|f| !KNOWN_FEATURES.contains(&f.as_str()))
        {
            return Err(FormatError::Corrupt(format!(
                "store uses feature \"{f}\", which this tresor does not know; it was created by a newer tresor — upgrade tresor"
            )));
        }
        if u64::from(m.block_size) != super::content::BLOCK_SIZE {
            return Err(FormatError::Corrupt(format!(
                "store has block size {}; this tresor supports {}",
                m.block_size,
                super::content::BLOCK_SIZE
            )));
        }
        if m.store_id.len() != 32 || hex::decode(&m.store_id).is_err() {
            return Err(FormatError::Corrupt(
                "store manifest has a malformed store id".into(),
            ));
        }
        Ok(m)
    }

    /// Serialises as pretty JSON with a trailing newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        json_bytes(self)
    }
}

/// One holder's copy of a data-group key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Who it is for (a user name).
    pub holder: String,
    /// Fingerprint of the holder's key-transport public key (hex SHA-256 of its DER).
    pub key_fpr: String,
    /// RSA-OAEP-SHA256 ciphertext of the 32-byte key, base64url; label see [`envelope_label`].
    pub wrapped: String,
}

/// The envelopes of one key epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochKeys {
    /// Epoch number, from 1.
    pub epoch: u32,
    /// One envelope per holder.
    pub envelopes: Vec<Envelope>,
}

/// `keys/<group>.json`: every epoch's key of one data group, wrapped per holder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFile {
    /// Key file format version.
    pub tresor_keys: u32,
    /// The data group's name.
    pub datagroup: String,
    /// Epoch that new files are sealed under.
    pub current_epoch: u32,
    /// All epochs still in use, oldest first.
    pub epochs: Vec<EpochKeys>,
}

impl KeyFile {
    /// Parses and checks a key file.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let k: KeyFile = serde_json::from_slice(bytes)
            .map_err(|e| FormatError::Corrupt(format!("key file is malformed ({e})")))?;
        if k.tresor_keys > KEYS_FORMAT {
            return Err(FormatError::TooNew {
                what: "key file",
                found: k.tresor_keys,
                supported: KEYS_FORMAT,
            });
        }
        if k.tresor_keys == 0 {
            return Err(FormatError::Corrupt("key file has format version 0".into()));
        }
        if !k.epochs.iter().any(|e| e.epoch == k.current_epoch) {
            return Err(FormatError::Corrupt(format!(
                "key file of {} has no envelopes for its current epoch {}",
                k.datagroup, k.current_epoch
            )));
        }
        Ok(k)
    }

    /// Serialises as pretty JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        json_bytes(self)
    }
}

/// The OAEP label of an envelope: binds it to store, data group and epoch.
pub fn envelope_label(store_id: &str, group: &str, epoch: u32) -> String {
    format!("tresor-group-key/v1/{store_id}/{group}/{epoch}")
}

/// Data-group names: 1-64 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
pub fn valid_group_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn json_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising plain structs of strings and integers cannot fail.
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            tresor_store: 1,
            store_id: "00112233445566778899aabbccddeeff".into(),
            created: 1,
            features: vec!["longnames".into()],
            kdf_defaults: KdfSpec {
                m_kib: 65536,
                t: 3,
                p: 1,
            },
            block_size: 4096,
            admin: PublicIdentity {
                name: "admin".into(),
                sign_public: "x".into(),
                transport_public: "y".into(),
            },
        }
    }

    #[test]
    fn manifest_roundtrip() {
        let m = sample();
        assert_eq!(Manifest::parse(&m.to_bytes()).unwrap(), m);
    }

    #[test]
    fn newer_version_and_unknown_feature_refused() {
        let mut m = sample();
        m.tresor_store = 7;
        let e = Manifest::parse(&m.to_bytes()).unwrap_err().to_string();
        assert!(e.contains("version 7") && e.contains("upgrade"), "{e}");
        let mut m = sample();
        m.features.push("time-travel".into());
        let e = Manifest::parse(&m.to_bytes()).unwrap_err().to_string();
        assert!(e.contains("newer tresor"), "{e}");
        let e = Manifest::parse(b"{\"foo\":1}").unwrap_err().to_string();
        assert!(e.contains("not a tresor store"), "{e}");
    }

    #[test]
    fn group_names() {
        assert!(valid_group_name("prescriptions"));
        assert!(valid_group_name("slides-2026"));
        assert!(!valid_group_name(""));
        assert!(!valid_group_name(".."));
        assert!(!valid_group_name("a/b"));
    }
}
