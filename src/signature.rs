//! Signed documents: the detached `FILE.sig` beside a document and the
//! checks of `tresor verify` (docs/SIGNATURES.md; bytes in docs/FORMAT.md §12).
//!
//! A signature is an RSA-PSS-SHA256 signature over
//! `"tresor-signature-v1\0" || canonical JSON of a` [`Statement`]: the store,
//! the document's path inside its data group, the SHA-256 of its content,
//! the signer's name, role and key fingerprint, and the time. The statement
//! is kept in the file as plain fields; the verifier rebuilds the canonical
//! bytes from them, so whitespace or field order in the file never matters,
//! and any changed field breaks the signature.
//!
//! A signer is trusted only through the admin-signed directory (never
//! through the key fingerprint the statement names): the verifier looks the
//! signer up there and checks with the key the administrator certified.

use crate::crypto::{PrivateKey, PublicKey};
use crate::directory::{self, Body};
use crate::format::names::{decode as b64d, encode as b64e};
use serde::{Deserialize, Serialize};

/// Signature-file format written by this tresor.
pub const SIG_FORMAT: u32 = 1;
/// Suffix of the detached signature file: `FILE` → `FILE.sig`.
pub const SIG_SUFFIX: &str = ".sig";
/// Domain separation: a signature over a statement can never be mistaken
/// for one over a directory or anything else signed with the same key.
pub const DOMAIN: &[u8] = b"tresor-signature-v1\0";
/// Largest signature file read (a crafted file must not exhaust memory).
pub const MAX_FILE_LEN: usize = 1024 * 1024;
/// Most signatures one document may carry.
pub const MAX_SIGNATURES: usize = 256;
/// Latest time accepted in a statement: 9999-12-31 23:59:59 UTC.
pub const MAX_TIME: u64 = 253_402_300_799;

/// Why a signature file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// Not a signature file, or a field out of range.
    #[error("malformed signature file: {0}")]
    Malformed(String),
    /// Written by a newer tresor.
    #[error(
        "signature file has format {0}; this tresor reads up to {SIG_FORMAT} — upgrade tresor"
    )]
    TooNew(u32),
    /// Not a path inside a data group.
    #[error("\"{0}\" is not a document path inside a data group: use DATAGROUP/DIR/…/FILE, without '.', '..' or empty parts")]
    BadPath(String),
    /// Too many signatures already.
    #[error(
        "the document already carries {MAX_SIGNATURES} signatures, the most one file may hold"
    )]
    Full,
    /// Signing failed.
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
}

/// What a signer states about a document. Field order is the canonical order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// The store whose directory certifies the signer (32 hex digits).
    pub store_id: String,
    /// Path inside the store: `DATAGROUP/…/FILE`.
    pub path: String,
    /// SHA-256 of the document's content (64 lowercase hex digits).
    pub sha256: String,
    /// The signer's user name.
    pub signer: String,
    /// The signer's role; empty for the store's administrator.
    pub role: String,
    /// Fingerprint of the signer's verification key: hex SHA-256 of its DER.
    pub key: String,
    /// When it was signed, by the signer's clock (seconds since the epoch, UTC).
    pub time: u64,
}

impl Statement {
    /// The exact bytes signed: domain prefix, then the canonical JSON
    /// (struct field order, no whitespace, serde_json's string escaping).
    pub fn message(&self) -> Vec<u8> {
        let mut m = DOMAIN.to_vec();
        m.extend_from_slice(&serde_json::to_vec(self).unwrap_or_default());
        m
    }

    fn check(&self) -> Result<(), String> {
        let hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(&self.store_id, 32) {
            return Err("store_id is not 32 lowercase hex digits".into());
        }
        if normalize_path(&self.path).as_deref() != Some(self.path.as_str()) {
            return Err(format!(
                "path \"{}\" is not a normalised path inside a data group",
                self.path
            ));
        }
        if !hex(&self.sha256, 64) {
            return Err("sha256 is not 64 lowercase hex digits".into());
        }
        if !directory::valid_name(&self.signer) {
            return Err(format!(
                "signer \"{}\" is not a valid user name",
                self.signer
            ));
        }
        if !self.role.is_empty() && !directory::valid_name(&self.role) {
            return Err(format!("role \"{}\" is not a valid role name", self.role));
        }
        if !hex(&self.key, 64) {
            return Err("key is not a 64-digit hex fingerprint".into());
        }
        if self.time > MAX_TIME {
            return Err(format!("time {} is after the year 9999", self.time));
        }
        Ok(())
    }
}

/// One signature: the statement and the signature over its message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// What was signed.
    pub statement: Statement,
    /// RSA-PSS-SHA256 over [`Statement::message`], base64url without padding.
    pub signature: String,
}

impl Entry {
    /// Signs `statement` with `key`.
    pub fn sign(statement: Statement, key: &PrivateKey) -> Result<Entry, SignatureError> {
        let sig = key.sign(&statement.message())?;
        Ok(Entry {
            statement,
            signature: b64e(&sig),
        })
    }
}

/// The contents of a `.sig` file: every signature on one document, in the
/// order they were made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigFile {
    /// Format version.
    pub tresor_signatures: u32,
    /// The signatures, oldest first.
    pub signatures: Vec<Entry>,
}

impl Default for SigFile {
    fn default() -> Self {
        SigFile {
            tresor_signatures: SIG_FORMAT,
            signatures: Vec::new(),
        }
    }
}

impl SigFile {
    /// Parses and checks a signature file. Never panics, whatever the bytes.
    pub fn parse(bytes: &[u8]) -> Result<SigFile, SignatureError> {
        let bad = |m: String| SignatureError::Malformed(m);
        if bytes.len() > MAX_FILE_LEN {
            return Err(bad(format!(
                "{} bytes, more than the {MAX_FILE_LEN} a signature file may have",
                bytes.len()
            )));
        }
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON ({e})")))?;
        match v.get("tresor_signatures").and_then(|x| x.as_u64()) {
            None => return Err(bad("no \"tresor_signatures\" version field".into())),
            Some(0) => return Err(bad("format version 0".into())),
            Some(n) if n > u64::from(SIG_FORMAT) => {
                return Err(SignatureError::TooNew(u32::try_from(n).unwrap_or(u32::MAX)))
            }
            Some(_) => {}
        }
        let f: SigFile = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
        if f.signatures.is_empty() {
            return Err(bad("it holds no signature".into()));
        }
        if f.signatures.len() > MAX_SIGNATURES {
            return Err(bad(format!(
                "{} signatures, more than {MAX_SIGNATURES}",
                f.signatures.len()
            )));
        }
        for (i, e) in f.signatures.iter().enumerate() {
            e.statement
                .check()
                .map_err(|m| bad(format!("signature {}: {m}", i + 1)))?;
            let ok = b64d(&e.signature).is_some_and(|s| (256..=1024).contains(&s.len()));
            if !ok {
                return Err(bad(format!(
                    "signature {}: the signature is not base64url of an RSA signature",
                    i + 1
                )));
            }
        }
        Ok(f)
    }

    /// The file bytes: pretty JSON (for people reading it) and a newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = serde_json::to_vec_pretty(self).unwrap_or_default();
        b.push(b'\n');
        b
    }

    /// Adds `entry`. An earlier signature by the same key for a different
    /// content or path is replaced (the signer supersedes it); others'
    /// signatures stay. Returns `false` if the same key already signed this
    /// very content at this path (nothing added).
    pub fn add(&mut self, entry: Entry) -> Result<bool, SignatureError> {
        let s = &entry.statement;
        let same_key = |e: &Entry| e.statement.key == s.key && e.statement.signer == s.signer;
        if self
            .signatures
            .iter()
            .any(|e| same_key(e) && e.statement.sha256 == s.sha256 && e.statement.path == s.path)
        {
            return Ok(false);
        }
        self.signatures.retain(|e| !same_key(e));
        if self.signatures.len() >= MAX_SIGNATURES {
            return Err(SignatureError::Full);
        }
        self.signatures.push(entry);
        Ok(true)
    }
}

/// Normalises a document path inside the store: `/`-separated, no empty,
/// `.` or `..` parts, a valid data-group name first, at least one part after
/// it. Leading and doubled slashes are dropped.
pub fn normalize_path(p: &str) -> Option<String> {
    let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    if parts.len() < 2
        || !directory::valid_name(parts[0])
        || parts
            .iter()
            .any(|s| *s == "." || *s == ".." || s.contains('\0'))
    {
        return None;
    }
    Some(parts.join("/"))
}

/// The result of checking one signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Certified signer, this content, this place.
    Valid,
    /// Valid, but the signer was removed from the store after signing.
    ValidSignerRemoved {
        /// When they were removed.
        removed: u64,
    },
    /// Made (by the signer's clock) when the signer was already removed.
    SignedAfterRemoval {
        /// When they were removed.
        removed: u64,
    },
    /// Same place, different content: changed after signing.
    ContentChanged,
    /// Same content, signed at another path.
    Moved {
        /// Where it was signed.
        signed_path: String,
    },
    /// Different content and different path: another document's signature.
    OtherDocument {
        /// The document it was made for.
        signed_path: String,
    },
    /// The directory does not certify this signer with this key (and role).
    NotCertified {
        /// Why, for people.
        reason: String,
    },
    /// The signature does not verify with the certified key: the statement
    /// or the signature was altered.
    BadSignature,
}

impl Verdict {
    /// Whether the signature holds (possibly with a removal note).
    pub fn is_valid(&self) -> bool {
        matches!(self, Verdict::Valid | Verdict::ValidSignerRemoved { .. })
    }
}

/// What the document is, as the verifier sees it.
#[derive(Clone, Copy, Debug)]
pub struct Document<'a> {
    /// SHA-256 of its content now.
    pub sha256: &'a [u8; 32],
    /// Its path inside the store now (normalised).
    pub path: &'a str,
}

/// The key the directory certifies for `name`, and whether and when they
/// were removed. `None`: the directory names no one by that name with that
/// key (the reason says which).
fn certified(
    dir: &Body,
    admin_key: &PublicKey,
    st: &Statement,
) -> Result<(PublicKey, String, Option<u64>), String> {
    let fpr_of = |k: &PublicKey| k.fingerprint().unwrap_or_default();
    if st.signer == dir.admin {
        if fpr_of(admin_key) == st.key {
            return Ok((admin_key.clone(), String::new(), None));
        }
        return Err(format!(
            "its key is not this store's administrator key for {}",
            st.signer
        ));
    }
    let mut seen_name = false;
    if let Some(u) = dir.users.get(&st.signer) {
        seen_name = true;
        if let Ok(k) = directory::sign_key(&u.sign_public) {
            if fpr_of(&k) == st.key {
                return Ok((k, u.role.clone(), None));
            }
        }
    }
    if let Some(r) = dir.removed.get(&st.signer) {
        seen_name = true;
        if let Ok(k) = directory::sign_key(&r.sign_public) {
            if fpr_of(&k) == st.key {
                return Ok((k, r.role.clone(), Some(r.removed)));
            }
        }
    }
    if seen_name {
        Err(format!(
            "the administrator certified another key for {} — this one is not theirs here",
            st.signer
        ))
    } else {
        Err(format!("this store has no user named {}", st.signer))
    }
}

/// Checks one signature against the directory (already verified against the
/// verifier's trust anchor), the admin's key, and the document as it is now.
///
/// Order: who signed (the directory), whether the signature holds, removal,
/// then content and place — so a forged or uncertified signature is never
/// reported as a mere content change.
pub fn check(entry: &Entry, dir: &Body, admin_key: &PublicKey, doc: Document<'_>) -> Verdict {
    let st = &entry.statement;
    let other_store = |r: String| {
        if st.store_id != dir.store_id {
            format!(
                "{r} (signed in store {}, this is {})",
                st.store_id, dir.store_id
            )
        } else {
            r
        }
    };
    let (key, role, removed) = match certified(dir, admin_key, st) {
        Ok(c) => c,
        Err(reason) => {
            return Verdict::NotCertified {
                reason: other_store(reason),
            }
        }
    };
    let Some(sig) = b64d(&entry.signature) else {
        return Verdict::BadSignature;
    };
    if key.verify(&st.message(), &sig).is_err() {
        return Verdict::BadSignature;
    }
    if st.store_id != dir.store_id {
        return Verdict::NotCertified {
            reason: other_store("it was made for another store".into()),
        };
    }
    if st.role != role {
        return Verdict::NotCertified {
            reason: format!(
                "it claims the role \"{}\", but the administrator certified {} as \"{}\"",
                st.role, st.signer, role
            ),
        };
    }
    if let Some(removed) = removed {
        if st.time >= removed {
            return Verdict::SignedAfterRemoval { removed };
        }
    }
    let same_content = st.sha256 == hex::encode(doc.sha256);
    let same_place = st.path == doc.path;
    match (same_content, same_place) {
        (false, true) => Verdict::ContentChanged,
        (true, false) => Verdict::Moved {
            signed_path: st.path.clone(),
        },
        (false, false) => Verdict::OtherDocument {
            signed_path: st.path.clone(),
        },
        (true, true) => match removed {
            Some(removed) => Verdict::ValidSignerRemoved { removed },
            None => Verdict::Valid,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sha256;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    // RSA-3072 generation is slow: one set of keys for every test.
    struct Keys {
        admin: PrivateKey,
        alice: PrivateKey,
        mallory: PrivateKey,
    }

    fn keys() -> &'static Keys {
        static K: OnceLock<Keys> = OnceLock::new();
        K.get_or_init(|| Keys {
            admin: PrivateKey::generate().unwrap(),
            alice: PrivateKey::generate().unwrap(),
            mallory: PrivateKey::generate().unwrap(),
        })
    }

    const STORE: &str = "00112233445566778899aabbccddeeff";

    fn dir() -> Body {
        let k = keys();
        let mut b = Body::new(STORE, "admin");
        b.add_role("physicians").unwrap();
        b.add_user(
            "alice",
            "physicians",
            &k.alice.public(),
            &k.mallory.public(),
            false,
        )
        .unwrap();
        b
    }

    fn statement(key: &PrivateKey, content: &[u8], path: &str) -> Statement {
        Statement {
            store_id: STORE.into(),
            path: path.into(),
            sha256: hex::encode(sha256(content)),
            signer: "alice".into(),
            role: "physicians".into(),
            key: key.public().fingerprint().unwrap(),
            time: 1_795_415_753,
        }
    }

    fn doc<'a>(h: &'a [u8; 32], path: &'a str) -> Document<'a> {
        Document { sha256: h, path }
    }

    fn sample() -> SigFile {
        let k = keys();
        let e = Entry::sign(statement(&k.alice, b"rx", "rx/p17/rx.txt"), &k.alice).unwrap();
        SigFile {
            tresor_signatures: 1,
            signatures: vec![e],
        }
    }

    #[test]
    fn roundtrip_and_verdicts() {
        let k = keys();
        let d = dir();
        let admin = k.admin.public();
        let f = SigFile::parse(&sample().to_bytes()).unwrap();
        let e = &f.signatures[0];
        let h = sha256(b"rx");
        assert_eq!(
            check(e, &d, &admin, doc(&h, "rx/p17/rx.txt")),
            Verdict::Valid
        );
        let h2 = sha256(b"rX");
        assert_eq!(
            check(e, &d, &admin, doc(&h2, "rx/p17/rx.txt")),
            Verdict::ContentChanged
        );
        assert!(matches!(
            check(e, &d, &admin, doc(&h, "rx/p18/rx.txt")),
            Verdict::Moved { .. }
        ));
        assert!(matches!(
            check(e, &d, &admin, doc(&h2, "rx/p18/other.txt")),
            Verdict::OtherDocument { .. }
        ));
        // An altered statement no longer verifies.
        let mut forged = e.clone();
        forged.statement.path = "rx/p18/rx.txt".into();
        assert_eq!(
            check(&forged, &d, &admin, doc(&h, "rx/p18/rx.txt")),
            Verdict::BadSignature
        );
        // A key the admin never certified, under a certified name.
        let m = Entry::sign(statement(&k.mallory, b"rx", "rx/p17/rx.txt"), &k.mallory).unwrap();
        assert!(matches!(
            check(&m, &d, &admin, doc(&h, "rx/p17/rx.txt")),
            Verdict::NotCertified { .. }
        ));
        // A false role claim by a certified signer.
        let mut st = statement(&k.alice, b"rx", "rx/p17/rx.txt");
        st.role = "pharmacists".into();
        let r = Entry::sign(st, &k.alice).unwrap();
        assert!(matches!(
            check(&r, &d, &admin, doc(&h, "rx/p17/rx.txt")),
            Verdict::NotCertified { .. }
        ));
    }

    #[test]
    fn removal_splits_before_and_after() {
        let k = keys();
        let mut d = dir();
        let u = d.users.remove("alice").unwrap();
        let removed = 1_795_415_753 + 60;
        d.removed.insert(
            "alice".into(),
            directory::RemovedUser {
                role: u.role,
                sign_public: u.sign_public,
                certified: u.certified,
                removed,
            },
        );
        let admin = k.admin.public();
        let h = sha256(b"rx");
        let before = &sample().signatures[0];
        assert_eq!(
            check(before, &d, &admin, doc(&h, "rx/p17/rx.txt")),
            Verdict::ValidSignerRemoved { removed }
        );
        let mut st = statement(&k.alice, b"rx", "rx/p17/rx.txt");
        st.time = removed;
        let after = Entry::sign(st, &k.alice).unwrap();
        assert_eq!(
            check(&after, &d, &admin, doc(&h, "rx/p17/rx.txt")),
            Verdict::SignedAfterRemoval { removed }
        );
    }

    #[test]
    fn domain_prefix_and_canonical_message() {
        let st = statement(&keys().alice, b"rx", "rx/p17/rx.txt");
        let m = st.message();
        assert!(m.starts_with(b"tresor-signature-v1\0{\"store_id\":\""));
        assert!(!m.contains(&b' ') && !m.contains(&b'\n'));
        // Whitespace in the file does not change what is verified.
        let f = sample();
        let compact = serde_json::to_vec(&f).unwrap();
        assert_eq!(SigFile::parse(&compact).unwrap(), f);
    }

    #[test]
    fn message_bytes_are_the_ones_format_md_specifies() {
        let st = Statement {
            store_id: STORE.into(),
            path: "rx/p\u{e4}t \"17\"/rx.txt".into(),
            sha256: "ab".repeat(32),
            signer: "alice".into(),
            role: String::new(),
            key: "cd".repeat(32),
            time: 42,
        };
        let want = format!(
            "tresor-signature-v1\0{{\"store_id\":\"{STORE}\",\"path\":\"rx/p\u{e4}t \\\"17\\\"/rx.txt\",\"sha256\":\"{}\",\"signer\":\"alice\",\"role\":\"\",\"key\":\"{}\",\"time\":42}}",
            "ab".repeat(32),
            "cd".repeat(32)
        );
        assert_eq!(String::from_utf8(st.message()).unwrap(), want);
    }

    #[test]
    fn add_accumulates_and_supersedes_own() {
        let k = keys();
        let mut f = sample();
        let same = Entry::sign(statement(&k.alice, b"rx", "rx/p17/rx.txt"), &k.alice).unwrap();
        assert!(!f.add(same).unwrap());
        let mut other = statement(&k.mallory, b"rx", "rx/p17/rx.txt");
        other.signer = "bob".into();
        assert!(f.add(Entry::sign(other, &k.mallory).unwrap()).unwrap());
        assert_eq!(f.signatures.len(), 2);
        let newer = Entry::sign(statement(&k.alice, b"rx2", "rx/p17/rx.txt"), &k.alice).unwrap();
        assert!(f.add(newer).unwrap());
        assert_eq!(f.signatures.len(), 2);
        assert_eq!(f.signatures[0].statement.signer, "bob");
    }

    #[test]
    fn malformed_files_are_refused_with_reasons() {
        let good = String::from_utf8(sample().to_bytes()).unwrap();
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "not JSON"),
            ("[]".into(), "version field"),
            ("{\"tresor_signatures\":0}".into(), "version 0"),
            (
                "{\"tresor_signatures\":1,\"signatures\":[]}".into(),
                "no signature",
            ),
            (good.replace("\"time\"", "\"tim\""), "unknown field"),
            (good.replace("rx/p17/rx.txt", "rx/../rx.txt"), "path"),
            (good.replace("\"physicians\"", "\"a b\""), "role"),
            (
                good.replace("\"store_id\": \"00", "\"store_id\": \"0"),
                "store_id",
            ),
            (
                good.replace("\"time\": 1795415753", "\"time\": 99999999999999"),
                "9999",
            ),
            (
                good.replace("\"signature\": \"", "\"signature\": \"!"),
                "base64url",
            ),
            (
                good.replace(
                    "\"tresor_signatures\": 1",
                    "\"tresor_signatures\": 1, \"x\": 2",
                ),
                "unknown field",
            ),
        ];
        for (text, want) in cases {
            let err = SigFile::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let newer = good.replace("\"tresor_signatures\": 1", "\"tresor_signatures\": 2");
        assert!(matches!(
            SigFile::parse(newer.as_bytes()),
            Err(SignatureError::TooNew(2))
        ));
        assert!(SigFile::parse(&vec![b' '; MAX_FILE_LEN + 1]).is_err());
    }

    #[test]
    fn paths_normalise() {
        assert_eq!(
            normalize_path("/rx//p17/rx.txt").as_deref(),
            Some("rx/p17/rx.txt")
        );
        for bad in ["rx", "", "/", "rx/./a", "rx/../a", ".hidden/a", "a b/c"] {
            assert_eq!(normalize_path(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = SigFile::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_mutations(pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
            let mut b = sample().to_bytes();
            let i = pos.index(b.len());
            b[i] = byte;
            let _ = SigFile::parse(&b);
            let n = cut.index(b.len());
            let _ = SigFile::parse(&b[..n]);
        }
    }
}
