//! The admin-signed directory: users, roles, data groups with their key
//! epochs, and the access matrix (the seed's Figure 2).
//!
//! On disk (`STORE/directory.json`) it is exactly
//! `{"signed":<body>,"signature":"<base64url RSA-PSS-SHA256>"}` + `\n`, where
//! `<body>` is the canonical JSON of [`Body`] (serde's field order, sorted
//! maps, no whitespace). The signature covers the body's exact bytes, and a
//! reader rebuilds the whole file from what it parsed and compares byte for
//! byte, so any changed byte anywhere is refused.
//!
//! Key envelopes stay in `keys/<group>.json` (unsigned); the directory
//! commits to each epoch's key with a key id (HKDF of the key), so a forged
//! envelope — a key the attacker chose, wrapped to a user's public key — is
//! refused when unwrapped.

use crate::crypto::{PrivateKey, PublicKey, SecretKey};
use crate::format::names::{decode as b64d, encode as b64e};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Highest directory format this tresor reads. A directory is written as
/// format 1 unless a role holds a [`Duty`] (format 2), so older tresors keep
/// reading every store that does not use the analysis service.
pub const DIRECTORY_FORMAT: u32 = 2;
/// File name in the store root.
pub const DIRECTORY_FILE: &str = "directory.json";

/// Errors reading or changing the directory.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// Bytes changed, signature wrong, or signed by someone else.
    #[error("directory signature invalid — the store may have been tampered with ({0})")]
    BadSignature(String),
    /// Structurally broken.
    #[error("directory is malformed: {0}")]
    Malformed(String),
    /// Written by a newer tresor.
    #[error(
        "directory has format {0}; this tresor reads up to {DIRECTORY_FORMAT} — upgrade tresor"
    )]
    TooNew(u32),
    /// Older than one already seen: a rollback.
    #[error("directory version {found} is older than version {seen} already seen on this machine — an old directory was put back (rollback); refusing. If you restored the store from a backup on purpose: `tresor matrix STORE --accept-directory-version {found}` (docs/ACCESS.md says what that gives up)")]
    Rollback {
        /// Version in the store.
        found: u64,
        /// Newest version seen before.
        seen: u64,
    },
    /// A name that does not exist.
    #[error("no {kind} named \"{name}\"; `tresor {hint}` lists them")]
    Unknown {
        /// role, user or data group
        kind: &'static str,
        /// The name.
        name: String,
        /// Command that lists them.
        hint: &'static str,
    },
    /// A name that exists already.
    #[error("{kind} \"{name}\" already exists")]
    Duplicate {
        /// role, user or data group
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// Invalid name.
    #[error("\"{0}\" is not a valid name: use 1-64 letters, digits, '_', '.', '-', not starting with '.' or '-'")]
    BadName(String),
    /// Crypto failure while signing.
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
}

/// A right in the access matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Right {
    /// `-`: nothing.
    #[serde(rename = "-")]
    None,
    /// `r`: read only.
    #[serde(rename = "r")]
    Read,
    /// `w`: read and write.
    #[serde(rename = "w")]
    Write,
}

impl Right {
    /// Parses `w`, `r` or `-`.
    pub fn parse(s: &str) -> Option<Right> {
        match s {
            "w" => Some(Right::Write),
            "r" => Some(Right::Read),
            "-" => Some(Right::None),
            _ => None,
        }
    }

    /// The matrix symbol.
    pub fn symbol(self) -> char {
        match self {
            Right::None => '-',
            Right::Read => 'r',
            Right::Write => 'w',
        }
    }

    /// Whether this right includes reading.
    pub fn can_read(self) -> bool {
        self >= Right::Read
    }
}

/// A duty of the analysis service (docs/SERVICE.md), held by a role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Duty {
    /// Submit analyses (over data groups the role may read).
    Submit,
    /// Approve another user's analysis to run (four eyes).
    Approve,
    /// Release another user's outputs into the sample record.
    Release,
}

impl Duty {
    /// Parses `submit`, `approve` or `release`.
    pub fn parse(s: &str) -> Option<Duty> {
        match s {
            "submit" => Some(Duty::Submit),
            "approve" => Some(Duty::Approve),
            "release" => Some(Duty::Release),
            _ => None,
        }
    }

    /// The word used on the command line and in the directory.
    pub fn name(self) -> &'static str {
        match self {
            Duty::Submit => "submit",
            Duty::Approve => "approve",
            Duty::Release => "release",
        }
    }
}

/// A certified user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// The user's role (user group).
    pub role: String,
    /// RSA-PSS verification key (SPKI DER, base64url).
    pub sign_public: String,
    /// RSA-OAEP key-transport key (SPKI DER, base64url).
    pub transport_public: String,
    /// When the admin certified the keys (seconds since the epoch).
    pub certified: u64,
    /// A shared (ward) PSE with minimal rights, not a person.
    pub shared: bool,
}

/// A user who was removed: kept so old signatures can still be explained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemovedUser {
    /// Role at removal.
    pub role: String,
    /// Their verification key.
    pub sign_public: String,
    /// When they were certified.
    pub certified: u64,
    /// When they were removed.
    pub removed: u64,
}

/// A data group's key epochs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    /// Epoch new files are sealed under.
    pub epoch: u32,
    /// Key id (hex) of every epoch still in use.
    pub key_ids: BTreeMap<u32, String>,
}

/// The signed content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    /// Format version.
    pub tresor_directory: u32,
    /// The store this directory belongs to.
    pub store_id: String,
    /// Counter, +1 on every change: a reader refuses to go back.
    pub version: u64,
    /// When this version was signed.
    pub issued: u64,
    /// The administrator's user name.
    pub admin: String,
    /// Roles (the seed's user groups).
    pub roles: BTreeSet<String>,
    /// Certified users by name.
    pub users: BTreeMap<String, User>,
    /// Removed users by name.
    pub removed: BTreeMap<String, RemovedUser>,
    /// Data groups by name.
    pub datagroups: BTreeMap<String, GroupEntry>,
    /// role → data group → right; absent cells are `-`.
    pub matrix: BTreeMap<String, BTreeMap<String, Right>>,
    /// role → duties in the analysis service. Absent when empty, so a
    /// directory without duties keeps the bytes of format 1.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub duties: BTreeMap<String, BTreeSet<Duty>>,
}

#[derive(Deserialize)]
struct Signed<'a> {
    #[serde(borrow)]
    signed: &'a serde_json::value::RawValue,
    signature: String,
}

/// The key id committing to an epoch key: one-way, reveals nothing of it.
pub fn key_id(key: &SecretKey) -> String {
    hex::encode(&key.derive(&[b"tresor/key-id/v1"]).as_bytes()[..16])
}

/// Names of roles, users and data groups: 1-64 of `[A-Za-z0-9_.-]`.
pub fn valid_name(name: &str) -> bool {
    crate::format::manifest::valid_group_name(name)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn canonical(body: &Body) -> Vec<u8> {
    // Structs serialise in declaration order and maps are sorted: canonical.
    serde_json::to_vec(body).unwrap_or_default()
}

fn assemble(body_bytes: &[u8], signature: &str) -> Vec<u8> {
    let mut out = b"{\"signed\":".to_vec();
    out.extend_from_slice(body_bytes);
    out.extend_from_slice(b",\"signature\":\"");
    out.extend_from_slice(signature.as_bytes());
    out.extend_from_slice(b"\"}\n");
    out
}

impl Body {
    /// A new, empty directory (version 1) for `store_id`.
    pub fn new(store_id: &str, admin: &str) -> Body {
        Body {
            tresor_directory: DIRECTORY_FORMAT,
            store_id: store_id.to_string(),
            version: 1,
            issued: now(),
            admin: admin.to_string(),
            roles: BTreeSet::new(),
            users: BTreeMap::new(),
            removed: BTreeMap::new(),
            datagroups: BTreeMap::new(),
            matrix: BTreeMap::new(),
            duties: BTreeMap::new(),
        }
    }

    /// Signs this body (bumping nothing): the file bytes.
    pub fn sign(&self, admin: &PrivateKey) -> Result<Vec<u8>, DirectoryError> {
        let body = canonical(self);
        let sig = b64e(&admin.sign(&body)?);
        Ok(assemble(&body, &sig))
    }

    /// Parses and verifies directory file bytes against the admin's key.
    pub fn verify(bytes: &[u8], admin: &PublicKey) -> Result<Body, DirectoryError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| DirectoryError::BadSignature("not UTF-8".into()))?;
        let signed: Signed<'_> = serde_json::from_str(text)
            .map_err(|e| DirectoryError::BadSignature(format!("not a signed directory: {e}")))?;
        let body_bytes = signed.signed.get().as_bytes();
        if assemble(body_bytes, &signed.signature) != bytes {
            return Err(DirectoryError::BadSignature(
                "bytes outside the canonical layout".into(),
            ));
        }
        let sig = b64d(&signed.signature)
            .ok_or_else(|| DirectoryError::BadSignature("signature is not base64url".into()))?;
        admin
            .verify(body_bytes, &sig)
            .map_err(|_| DirectoryError::BadSignature("signature does not verify".into()))?;
        // Signed by the admin: now it is safe to interpret.
        let v: serde_json::Value = serde_json::from_slice(body_bytes)
            .map_err(|e| DirectoryError::Malformed(e.to_string()))?;
        if let Some(n) = v.get("tresor_directory").and_then(|x| x.as_u64()) {
            if n > u64::from(DIRECTORY_FORMAT) {
                return Err(DirectoryError::TooNew(u32::try_from(n).unwrap_or(u32::MAX)));
            }
        }
        let body: Body =
            serde_json::from_value(v).map_err(|e| DirectoryError::Malformed(e.to_string()))?;
        if canonical(&body) != body_bytes {
            return Err(DirectoryError::BadSignature(
                "body is not in canonical form".into(),
            ));
        }
        body.check()?;
        Ok(body)
    }

    /// Internal consistency: every reference names something that exists.
    pub fn check(&self) -> Result<(), DirectoryError> {
        let bad = |m: String| Err(DirectoryError::Malformed(m));
        for (name, u) in &self.users {
            if !self.roles.contains(&u.role) {
                return bad(format!("user {name} has unknown role {}", u.role));
            }
        }
        for (role, row) in &self.matrix {
            if !self.roles.contains(role) {
                return bad(format!("matrix row for unknown role {role}"));
            }
            for g in row.keys() {
                if !self.datagroups.contains_key(g) {
                    return bad(format!("matrix column for unknown data group {g}"));
                }
            }
        }
        for role in self.duties.keys() {
            if !self.roles.contains(role) {
                return bad(format!("duties for unknown role {role}"));
            }
        }
        if !self.duties.is_empty() && self.tresor_directory < 2 {
            return bad("duties in a format-1 directory".into());
        }
        for (g, e) in &self.datagroups {
            if !e.key_ids.contains_key(&e.epoch) {
                return bad(format!(
                    "data group {g} has no key id for its epoch {}",
                    e.epoch
                ));
            }
        }
        Ok(())
    }

    /// Prepares the next version: counter +1, new issue time.
    pub fn next(&self) -> Body {
        let mut b = self.clone();
        b.version += 1;
        b.issued = now();
        b
    }

    /// The right of `role` on `group`.
    pub fn right(&self, role: &str, group: &str) -> Right {
        self.matrix
            .get(role)
            .and_then(|r| r.get(group))
            .copied()
            .unwrap_or(Right::None)
    }

    /// A user's right on `group` (the admin holds every key and writes everywhere).
    pub fn user_right(&self, user: &str, group: &str) -> Right {
        if user == self.admin {
            return Right::Write;
        }
        match self.users.get(user) {
            Some(u) => self.right(&u.role, group),
            None => Right::None,
        }
    }

    /// Whether `user` (a certified user, not the admin) holds `duty`.
    pub fn has_duty(&self, user: &str, duty: Duty) -> bool {
        self.users
            .get(user)
            .and_then(|u| self.duties.get(&u.role))
            .is_some_and(|d| d.contains(&duty))
    }

    /// Gives `role` the duty (`on`) or takes it away; the directory becomes
    /// format 2 once any role holds a duty.
    pub fn set_duty(&mut self, role: &str, duty: Duty, on: bool) -> Result<(), DirectoryError> {
        self.need_role(role)?;
        if on {
            self.duties
                .entry(role.to_string())
                .or_default()
                .insert(duty);
            self.tresor_directory = self.tresor_directory.max(2);
        } else if let Some(d) = self.duties.get_mut(role) {
            d.remove(&duty);
            if d.is_empty() {
                self.duties.remove(role);
            }
        }
        Ok(())
    }

    /// Adds a role.
    pub fn add_role(&mut self, role: &str) -> Result<(), DirectoryError> {
        if !valid_name(role) {
            return Err(DirectoryError::BadName(role.into()));
        }
        if !self.roles.insert(role.to_string()) {
            return Err(DirectoryError::Duplicate {
                kind: "role",
                name: role.into(),
            });
        }
        Ok(())
    }

    /// Checks that `role` exists.
    pub fn need_role(&self, role: &str) -> Result<(), DirectoryError> {
        if self.roles.contains(role) {
            Ok(())
        } else {
            Err(DirectoryError::Unknown {
                kind: "role",
                name: role.into(),
                hint: "matrix STORE",
            })
        }
    }

    /// Checks that `group` exists.
    pub fn need_group(&self, group: &str) -> Result<&GroupEntry, DirectoryError> {
        self.datagroups
            .get(group)
            .ok_or_else(|| DirectoryError::Unknown {
                kind: "data group",
                name: group.into(),
                hint: "datagroup list STORE",
            })
    }

    /// Adds a certified user.
    pub fn add_user(
        &mut self,
        name: &str,
        role: &str,
        sign: &PublicKey,
        transport: &PublicKey,
        shared: bool,
    ) -> Result<(), DirectoryError> {
        if !valid_name(name) {
            return Err(DirectoryError::BadName(name.into()));
        }
        self.need_role(role)?;
        if self.users.contains_key(name) || name == self.admin {
            return Err(DirectoryError::Duplicate {
                kind: "user",
                name: name.into(),
            });
        }
        self.users.insert(
            name.to_string(),
            User {
                role: role.to_string(),
                sign_public: b64e(&sign.to_der()?),
                transport_public: b64e(&transport.to_der()?),
                certified: now(),
                shared,
            },
        );
        Ok(())
    }

    /// Users whose role may read `group` (the admin not included).
    pub fn readers(&self, group: &str) -> Vec<(&str, &User)> {
        self.users
            .iter()
            .filter(|(_, u)| self.right(&u.role, group).can_read())
            .map(|(n, u)| (n.as_str(), u))
            .collect()
    }
}

/// A user's transport key from the directory.
pub fn transport_key(u: &User) -> Result<PublicKey, DirectoryError> {
    let der = b64d(&u.transport_public)
        .ok_or_else(|| DirectoryError::Malformed("transport key is not base64url".into()))?;
    Ok(PublicKey::from_der(&der)?)
}

/// A user's verification key from the directory.
pub fn sign_key(encoded: &str) -> Result<PublicKey, DirectoryError> {
    let der = b64d(encoded)
        .ok_or_else(|| DirectoryError::Malformed("signing key is not base64url".into()))?;
    Ok(PublicKey::from_der(&der)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed() -> (PrivateKey, Vec<u8>) {
        let admin = PrivateKey::generate().unwrap();
        let mut b = Body::new("00112233445566778899aabbccddeeff", "admin");
        b.add_role("physicians").unwrap();
        b.datagroups.insert(
            "lab".into(),
            GroupEntry {
                epoch: 1,
                key_ids: [(1, "ab".into())].into(),
            },
        );
        b.matrix
            .entry("physicians".into())
            .or_default()
            .insert("lab".into(), Right::Write);
        let bytes = b.sign(&admin).unwrap();
        (admin, bytes)
    }

    #[test]
    fn every_single_byte_change_is_refused() {
        let (admin, bytes) = signed();
        let pk = admin.public();
        let body = Body::verify(&bytes, &pk).unwrap();
        assert_eq!(body.right("physicians", "lab"), Right::Write);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(
                Body::verify(&b, &pk).is_err(),
                "byte {i} flipped and accepted"
            );
        }
        let mut longer = bytes.clone();
        longer.insert(bytes.len() - 1, b' ');
        assert!(Body::verify(&longer, &pk).is_err());
        let other = PrivateKey::generate().unwrap().public();
        assert!(matches!(
            Body::verify(&bytes, &other),
            Err(DirectoryError::BadSignature(_))
        ));
    }

    #[test]
    fn names_and_rights() {
        let mut b = Body::new("00", "admin");
        assert!(b.add_role("nurses").is_ok());
        assert!(matches!(
            b.add_role("nurses"),
            Err(DirectoryError::Duplicate { .. })
        ));
        assert!(matches!(
            b.add_role("../x"),
            Err(DirectoryError::BadName(_))
        ));
        assert_eq!(Right::parse("w"), Some(Right::Write));
        assert_eq!(Right::parse("x"), None);
        assert!(Right::Write.can_read() && Right::Read.can_read() && !Right::None.can_read());
    }
}
