//! Name and extended-attribute-name encryption (layout in `format::names`).

use crate::crypto::{Aead, NONCE_LEN};
use crate::format::names::{decode, encode, name_aad, pad, unpad};

/// Names use a fixed all-zero nonce: deterministic by design (see `format::names`).
const NAME_NONCE: [u8; NONCE_LEN] = [0; NONCE_LEN];
/// Prefix of encrypted user attributes on backing files.
const XATTR_PREFIX: &str = "user.tresor.";

/// Encrypts `name` for directory `dir_id`: base64url(ciphertext || tag).
pub fn encrypt(aead: &Aead, dir_id: &[u8; 16], name: &[u8]) -> String {
    let mut out = Vec::new();
    aead.seal_with_nonce_into(&NAME_NONCE, &name_aad(dir_id), &pad(name), &mut out);
    encode(&out[NONCE_LEN..])
}

/// Decrypts an encoded name, or `None` if it is not a valid name of this directory.
pub fn decrypt(aead: &Aead, dir_id: &[u8; 16], encoded: &str) -> Option<Vec<u8>> {
    let ct = decode(encoded)?;
    let mut sealed = NAME_NONCE.to_vec();
    sealed.extend_from_slice(&ct);
    let padded = aead.open(&name_aad(dir_id), &sealed).ok()?;
    let name = unpad(&padded)?.to_vec();
    crate::format::names::valid_plain(&name).then_some(name)
}

/// Backing attribute name for user attribute `user.<name>`.
pub fn xattr_name(aead: &Aead, name: &[u8]) -> String {
    let mut out = Vec::new();
    aead.seal_with_nonce_into(&NAME_NONCE, b"TRX1", &pad(name), &mut out);
    format!("{XATTR_PREFIX}{}", encode(&out[NONCE_LEN..]))
}

/// The user attribute name behind a backing attribute name, if it is ours.
pub fn xattr_plain(aead: &Aead, backing: &str) -> Option<Vec<u8>> {
    let ct = decode(backing.strip_prefix(XATTR_PREFIX)?)?;
    let mut sealed = NAME_NONCE.to_vec();
    sealed.extend_from_slice(&ct);
    let padded = aead.open(b"TRX1", &sealed).ok()?;
    unpad(&padded).map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;

    #[test]
    fn names_bind_to_their_directory() {
        let a = Aead::new(&SecretKey::random());
        let e = encrypt(&a, &[1; 16], b"patient-0042.txt");
        assert_eq!(
            e,
            encrypt(&a, &[1; 16], b"patient-0042.txt"),
            "deterministic"
        );
        assert_eq!(decrypt(&a, &[1; 16], &e).unwrap(), b"patient-0042.txt");
        assert!(
            decrypt(&a, &[2; 16], &e).is_none(),
            "moved to another directory"
        );
        assert_ne!(e, encrypt(&a, &[2; 16], b"patient-0042.txt"));
        let other = Aead::new(&SecretKey::random());
        assert!(decrypt(&other, &[1; 16], &e).is_none(), "other data group");
    }

    #[test]
    fn xattr_names_roundtrip() {
        let a = Aead::new(&SecretKey::random());
        let b = xattr_name(&a, b"comment");
        assert_eq!(xattr_plain(&a, &b).unwrap(), b"comment");
        assert!(xattr_plain(&a, "user.other").is_none());
    }
}
