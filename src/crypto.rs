//! Cryptography: the only module that touches aes-gcm-siv, hkdf, argon2 and rsa.
//!
//! Every secret lives in a type that zeroizes itself when dropped. Nothing
//! here knows about files or paths; callers pass associated data as bytes.

use aes_gcm_siv::aead::inout::InOutBuf;
use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};
use hkdf::Hkdf;
use rand::rngs::OsRng;
use rand::RngCore;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::{Oaep, Pss, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of every symmetric key (AES-256).
pub const KEY_LEN: usize = 32;
/// Nonce length of AES-GCM-SIV.
pub const NONCE_LEN: usize = 12;
/// Authentication tag length of AES-GCM-SIV.
pub const TAG_LEN: usize = 16;
/// RSA modulus size for new identities.
pub const RSA_BITS: usize = 3072;

/// Errors of the cryptographic layer. They never carry secret material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Ciphertext failed authentication: tampered, truncated, or the wrong key.
    #[error("authentication failed")]
    Auth,
    /// A ciphertext is shorter than nonce + tag.
    #[error("ciphertext too short")]
    Short,
    /// Key-derivation parameters were refused.
    #[error("key derivation: {0}")]
    Kdf(String),
    /// The memory key derivation needs could not be allocated (the PSE
    /// is fine; this machine or process is short of memory).
    #[error("key derivation: {0}")]
    KdfMemory(String),
    /// An RSA operation failed.
    #[error("RSA: {0}")]
    Rsa(String),
    /// A key could not be decoded.
    #[error("malformed key: {0}")]
    KeyFormat(String),
}

/// A 256-bit secret key. Zeroized on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct SecretKey([u8; KEY_LEN]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// A fresh random key from the operating system's generator.
    pub fn random() -> Self {
        let mut k = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut k);
        SecretKey(k)
    }

    /// Wraps raw key bytes (the caller's copy should be zeroized).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        SecretKey(bytes)
    }

    /// Takes a key from a slice of exactly [`KEY_LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| CryptoError::KeyFormat(format!("key of {} bytes", bytes.len())))?;
        Ok(SecretKey(arr))
    }

    /// The raw bytes, for wrapping.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// HKDF-SHA256 (no salt) of this key with `info`: one-way, so a derived
    /// key reveals nothing about its parent or its siblings.
    pub fn derive(&self, info: &[&[u8]]) -> SecretKey {
        let hk = Hkdf::<Sha256>::new(None, &self.0);
        let mut out = [0u8; KEY_LEN];
        // 32 bytes is far below HKDF's 255 * 32 limit: expand cannot fail.
        let _ = hk.expand_multi_info(info, &mut out);
        SecretKey(out)
    }
}

/// Fills `buf` with random bytes from a fast user-space CSPRNG that is seeded
/// from (and periodically reseeded by) the operating system.
pub fn random_bytes(buf: &mut [u8]) {
    rand::thread_rng().fill_bytes(buf);
}

/// An AES-256-GCM-SIV key ready for use; its key schedule is zeroized on drop.
#[derive(Clone)]
pub struct Aead {
    cipher: Aes256GcmSiv,
}

impl std::fmt::Debug for Aead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Aead(..)")
    }
}

impl Aead {
    /// Prepares `key` for sealing and opening.
    pub fn new(key: &SecretKey) -> Self {
        Aead {
            cipher: Aes256GcmSiv::new(key.as_bytes().into()),
        }
    }

    /// Seals `plaintext` into `out` as `nonce || ciphertext || tag`, with a
    /// fresh random nonce. `out` is cleared first.
    pub fn seal_into(&self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce);
        self.seal_with_nonce_into(&nonce, aad, plaintext, out);
    }

    /// Seals with a caller-chosen nonce. GCM-SIV stays secure when a nonce
    /// repeats (it then only reveals equal plaintexts), which is what makes
    /// deterministic name encryption with a fixed nonce sound.
    pub fn seal_with_nonce_into(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) {
        out.clear();
        out.resize(NONCE_LEN + plaintext.len() + TAG_LEN, 0);
        out[..NONCE_LEN].copy_from_slice(nonce);
        self.seal_after_nonce(aad, plaintext, out);
    }

    /// Seals `plaintext` into `out[.. NONCE_LEN + len + TAG_LEN]` with a fresh
    /// random nonce, without allocating; returns the sealed length.
    /// `out` must be at least that long.
    pub fn seal_to_slice(&self, aad: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        let n = NONCE_LEN + plaintext.len() + TAG_LEN;
        random_bytes(&mut out[..NONCE_LEN]);
        self.seal_after_nonce(aad, plaintext, &mut out[..n]);
        n
    }

    /// Encrypts `plaintext` straight into `out` (exactly `nonce || room for
    /// the ciphertext || room for the tag`, the nonce already in place):
    /// one pass from the caller's buffer, no copy of the plaintext first.
    fn seal_after_nonce(&self, aad: &[u8], plaintext: &[u8], out: &mut [u8]) {
        let (nonce, rest) = out.split_at_mut(NONCE_LEN);
        let (ct, tag_out) = rest.split_at_mut(plaintext.len());
        let sealed = Nonce::try_from(&*nonce)
            .map_err(|_| aes_gcm_siv::Error)
            .and_then(|nonce| {
                let buf = InOutBuf::new(plaintext, ct).map_err(|_| aes_gcm_siv::Error)?;
                self.cipher.encrypt_inout_detached(&nonce, aad, buf)
            });
        match sealed {
            Ok(tag) => tag_out.copy_from_slice(&tag),
            // Unreachable below 2^36 bytes (and the lengths match by
            // construction); fail closed with a tag that never verifies.
            Err(_) => tag_out.fill(0),
        }
    }

    /// Seals and returns a new vector.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.seal_into(aad, plaintext, &mut out);
        out
    }

    /// Splits `nonce || ciphertext || tag` into its three parts.
    fn parts(sealed: &[u8]) -> Result<(Nonce, &[u8], Tag), CryptoError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Short);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| CryptoError::Short)?;
        let tag = Tag::try_from(tag).map_err(|_| CryptoError::Short)?;
        Ok((nonce, ct, tag))
    }

    /// Opens `nonce || ciphertext || tag` in place; on success the plaintext
    /// is `sealed[NONCE_LEN .. len - TAG_LEN]` and its length is returned.
    /// On failure the buffer holds garbage, never plaintext the caller could use.
    pub fn open_in_place(&self, aad: &[u8], sealed: &mut [u8]) -> Result<usize, CryptoError> {
        let (nonce, _, tag) = Self::parts(sealed)?;
        let end = sealed.len() - TAG_LEN;
        let ct = &mut sealed[NONCE_LEN..end];
        self.cipher
            .decrypt_inout_detached(&nonce, aad, ct.into(), &tag)
            .map_err(|_| CryptoError::Auth)?;
        Ok(ct.len())
    }

    /// Opens `nonce || ciphertext || tag` straight into `out[.. len]` (one
    /// pass, the sealed bytes untouched) and returns the plaintext length.
    /// `out` must be at least that long. On failure `out[.. len]` holds the
    /// ciphertext again, never plaintext the caller could use.
    pub fn open_to(&self, aad: &[u8], sealed: &[u8], out: &mut [u8]) -> Result<usize, CryptoError> {
        let (nonce, ct, tag) = Self::parts(sealed)?;
        let out = out.get_mut(..ct.len()).ok_or(CryptoError::Short)?;
        let buf = InOutBuf::new(ct, out).map_err(|_| CryptoError::Short)?;
        self.cipher
            .decrypt_inout_detached(&nonce, aad, buf, &tag)
            .map_err(|_| CryptoError::Auth)?;
        Ok(ct.len())
    }

    /// Opens a sealed message into a new vector.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut buf = vec![0u8; sealed.len().saturating_sub(NONCE_LEN + TAG_LEN)];
        let n = self.open_to(aad, sealed, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
}

/// Argon2id work factors, as recorded in a PSE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// The default for new PSEs: 64 MiB, 3 passes, 1 lane (OWASP's second
    /// recommended Argon2id setting, about 0.35 s on one core of the reference machine).
    pub const DEFAULT: KdfParams = KdfParams {
        m_kib: 64 * 1024,
        t: 3,
        p: 1,
    };
    /// Ceiling when *reading* a PSE: a crafted file must not make us allocate
    /// gigabytes or spin for minutes (rage's `ExcessiveWork`).
    pub const MAX: KdfParams = KdfParams {
        m_kib: 1024 * 1024,
        t: 16,
        p: 8,
    };
    /// Floor: below this a PSE is too cheap to guess at.
    pub const MIN: KdfParams = KdfParams {
        m_kib: 8 * 1024,
        t: 1,
        p: 1,
    };

    /// Refuses parameters outside `[MIN, MAX]`, naming the offending one.
    pub fn check(&self) -> Result<(), CryptoError> {
        let (lo, hi) = (Self::MIN, Self::MAX);
        if self.m_kib > hi.m_kib || self.t > hi.t || self.p > hi.p {
            return Err(CryptoError::Kdf(format!(
                "Argon2id parameters m={} KiB, t={}, p={} exceed the ceiling \
                 m={} KiB, t={}, p={}; refusing (a crafted file could exhaust memory)",
                self.m_kib, self.t, self.p, hi.m_kib, hi.t, hi.p
            )));
        }
        if self.m_kib < lo.m_kib || self.t < lo.t || self.p < lo.p || self.m_kib < 8 * self.p {
            return Err(CryptoError::Kdf(format!(
                "Argon2id parameters m={} KiB, t={}, p={} are below the floor m={} KiB, t={}, p={}",
                self.m_kib, self.t, self.p, lo.m_kib, lo.t, lo.p
            )));
        }
        Ok(())
    }
}

/// Derives a key-encryption key from a passphrase with Argon2id.
pub fn derive_passphrase_key(
    passphrase: &[u8],
    salt: &[u8],
    params: KdfParams,
) -> Result<SecretKey, CryptoError> {
    params.check()?;
    let p = argon2::Params::new(params.m_kib, params.t, params.p, Some(KEY_LEN))
        .map_err(|e| CryptoError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    // Allocated here, fallibly: argon2's own `hash_password_into` aborts the
    // process when the memory is not there (a PSE at the ceiling on a
    // machine with a memory limit); this says so instead.
    let mut blocks: Vec<argon2::Block> = Vec::new();
    blocks
        .try_reserve_exact(argon.params().block_count())
        .map_err(|_| {
            CryptoError::KdfMemory(format!(
                "Argon2id needs {} MiB of memory (m={} KiB) and this process cannot allocate it; \
                 free memory or raise the process's memory limit",
                params.m_kib / 1024,
                params.m_kib
            ))
        })?;
    blocks.resize(argon.params().block_count(), argon2::Block::default());
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    let res = argon.hash_password_into_with_memory(passphrase, salt, out.as_mut(), &mut blocks);
    // The working memory holds values derived from the passphrase.
    blocks.zeroize();
    res.map_err(|e| CryptoError::Kdf(e.to_string()))?;
    Ok(SecretKey(*out))
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// SHA-256 of everything `r` yields, read in blocks (documents may be large).
pub fn sha256_reader<R: std::io::Read>(mut r: R) -> std::io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(h.finalize().into()),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// An RSA private key (signing or key transport): in memory (the rsa crate
/// zeroizes its private components on drop), or on a PKCS#11 token, where
/// only its public half and a handle are here (`crate::token`).
#[derive(Clone)]
pub struct PrivateKey(Held);

#[derive(Clone)]
enum Held {
    Memory(Box<RsaPrivateKey>),
    Token(std::sync::Arc<dyn TokenKey>, PublicKey),
}

/// A private RSA key that stays on a token: the two operations tresor asks
/// of it. Implemented by `crate::token`.
pub trait TokenKey: Send + Sync {
    /// The raw RSA private-key operation (`c^d mod n`, PKCS#11
    /// `CKM_RSA_X_509`), `modulus length` bytes out. tresor removes the
    /// OAEP padding itself ([`oaep_sha256_decode`]): the key never leaves
    /// the token, and the envelope format is the one file users have.
    fn decrypt_raw(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError>;
    /// An RSA-PSS signature (SHA-256, MGF1-SHA-256, 32-byte salt) over a
    /// SHA-256 digest, made on the token (`CKM_RSA_PKCS_PSS`).
    fn sign_pss_sha256(&self, digest: &[u8; 32]) -> Result<Vec<u8>, CryptoError>;
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

/// An RSA public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey(RsaPublicKey);

impl PrivateKey {
    /// Generates a new RSA key of [`RSA_BITS`] bits in memory.
    pub fn generate() -> Result<Self, CryptoError> {
        RsaPrivateKey::new(&mut OsRng, RSA_BITS)
            .map(|k| PrivateKey(Held::Memory(Box::new(k))))
            .map_err(|e| CryptoError::Rsa(e.to_string()))
    }

    /// A key held by a token, known here by its public half.
    pub fn on_token(key: std::sync::Arc<dyn TokenKey>, public: PublicKey) -> Self {
        PrivateKey(Held::Token(key, public))
    }

    /// Whether the key is on a token (and cannot be exported).
    pub fn is_on_token(&self) -> bool {
        matches!(self.0, Held::Token(..))
    }

    /// PKCS#8 DER encoding, in a buffer zeroized on drop. A key on a token
    /// has none: it cannot be exported.
    pub fn to_der(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let Held::Memory(k) = &self.0 else {
            return Err(CryptoError::KeyFormat(
                "the private key is on a token and cannot be exported".into(),
            ));
        };
        let doc = k
            .to_pkcs8_der()
            .map_err(|e| CryptoError::KeyFormat(e.to_string()))?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    /// Decodes PKCS#8 DER.
    pub fn from_der(der: &[u8]) -> Result<Self, CryptoError> {
        RsaPrivateKey::from_pkcs8_der(der)
            .map(|k| PrivateKey(Held::Memory(Box::new(k))))
            .map_err(|e| CryptoError::KeyFormat(e.to_string()))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        match &self.0 {
            Held::Memory(k) => PublicKey(k.to_public_key()),
            Held::Token(_, p) => p.clone(),
        }
    }

    /// RSA-OAEP-SHA256 decryption of a wrapped key with its context label.
    pub fn unwrap_key(&self, label: &str, wrapped: &[u8]) -> Result<SecretKey, CryptoError> {
        let pt = match &self.0 {
            Held::Memory(k) => Zeroizing::new(
                k.decrypt(Oaep::new_with_label::<Sha256, _>(label), wrapped)
                    .map_err(|_| CryptoError::Auth)?,
            ),
            Held::Token(t, p) => {
                use rsa::traits::PublicKeyParts;
                if wrapped.len() != p.0.size() {
                    return Err(CryptoError::Auth);
                }
                let em = t.decrypt_raw(wrapped)?;
                oaep_sha256_decode(&em, p.0.size(), label)?
            }
        };
        SecretKey::from_slice(&pt)
    }

    /// RSA-PSS-SHA256 signature over `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let digest = sha256(message);
        match &self.0 {
            Held::Memory(k) => k
                .sign_with_rng(&mut OsRng, Pss::new::<Sha256>(), &digest)
                .map_err(|e| CryptoError::Rsa(e.to_string())),
            Held::Token(t, p) => {
                let sig = t.sign_pss_sha256(&digest)?;
                // A token that signs wrongly (another key, another salt
                // length) is caught here, not by the verifier later.
                p.verify(message, &sig).map_err(|_| {
                    CryptoError::Rsa(
                        "the token's signature does not verify with its public key".into(),
                    )
                })?;
                Ok(sig)
            }
        }
    }
}

/// MGF1 with SHA-256 (RFC 8017 B.2.1), XORed into `out`.
fn mgf1_xor(seed: &[u8], out: &mut [u8]) {
    for (counter, chunk) in out.chunks_mut(32).enumerate() {
        let mut h = Sha256::new();
        h.update(seed);
        h.update((counter as u32).to_be_bytes());
        for (o, m) in chunk.iter_mut().zip(h.finalize()) {
            *o ^= m;
        }
    }
}

/// EME-OAEP decoding (RFC 8017 7.1.2 step 3, SHA-256, MGF1-SHA-256) of the
/// raw RSA output `em` of a `k`-byte modulus: what a token that offers
/// only raw RSA (SoftHSM2 2.6 does OAEP with SHA-1 and no label only)
/// leaves to tresor. Every check runs whatever an earlier one found, and
/// all failures are one error, so the result leaks only "opened or not".
pub fn oaep_sha256_decode(
    em: &[u8],
    k: usize,
    label: &str,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    const H: usize = 32;
    // A raw result may come without leading zero bytes.
    if em.len() > k || k < 2 * H + 2 {
        return Err(CryptoError::Auth);
    }
    let mut buf = Zeroizing::new(vec![0u8; k]);
    buf[k - em.len()..].copy_from_slice(em);
    let (y, rest) = buf.split_at_mut(1);
    let (seed, db) = rest.split_at_mut(H);
    mgf1_xor(db, seed);
    mgf1_xor(seed, db);
    let lhash = sha256(label.as_bytes());
    let mut bad = y[0];
    for (a, b) in db[..H].iter().zip(lhash) {
        bad |= a ^ b;
    }
    // Find the 0x01 after the zero padding without branching on secrets.
    let mut looking: u8 = 1;
    let mut start = 0usize;
    for (i, &b) in db[H..].iter().enumerate() {
        let is_one = u8::from(b == 1);
        let is_zero = u8::from(b == 0);
        let found = looking & is_one;
        start |= (i + 1) * usize::from(found);
        bad |= looking & (1 - is_one) & (1 - is_zero);
        looking &= 1 - found;
    }
    bad |= looking;
    if bad != 0 {
        return Err(CryptoError::Auth);
    }
    Ok(Zeroizing::new(db[H + start..].to_vec()))
}

impl PublicKey {
    /// An RSA public key from its modulus and public exponent (big-endian
    /// bytes, as a PKCS#11 token gives them); the size rules of [`Self::from_der`].
    pub fn from_components(n: &[u8], e: &[u8]) -> Result<Self, CryptoError> {
        let k = RsaPublicKey::new(
            rsa::BigUint::from_bytes_be(n),
            rsa::BigUint::from_bytes_be(e),
        )
        .map_err(|e| CryptoError::KeyFormat(e.to_string()))?;
        Self::from_der(&PublicKey(k).to_der()?)
    }

    /// SubjectPublicKeyInfo DER encoding.
    pub fn to_der(&self) -> Result<Vec<u8>, CryptoError> {
        self.0
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .map_err(|e| CryptoError::KeyFormat(e.to_string()))
    }

    /// Decodes SubjectPublicKeyInfo DER; refuses keys outside 2048..=8192 bits.
    pub fn from_der(der: &[u8]) -> Result<Self, CryptoError> {
        use rsa::traits::PublicKeyParts;
        let k = RsaPublicKey::from_public_key_der(der)
            .map_err(|e| CryptoError::KeyFormat(e.to_string()))?;
        let bits = k.n().bits();
        if !(2048..=8192).contains(&bits) {
            return Err(CryptoError::KeyFormat(format!("RSA key of {bits} bits")));
        }
        Ok(PublicKey(k))
    }

    /// Hex SHA-256 of the DER encoding: the key's name in envelopes and logs.
    pub fn fingerprint(&self) -> Result<String, CryptoError> {
        Ok(hex::encode(sha256(&self.to_der()?)))
    }

    /// RSA-OAEP-SHA256 encryption of `key`, bound to `label` so an envelope
    /// cannot be moved to another data group, epoch or store.
    pub fn wrap_key(&self, label: &str, key: &SecretKey) -> Result<Vec<u8>, CryptoError> {
        self.0
            .encrypt(
                &mut OsRng,
                Oaep::new_with_label::<Sha256, _>(label),
                key.as_bytes(),
            )
            .map_err(|e| CryptoError::Rsa(e.to_string()))
    }

    /// Verifies an RSA-PSS-SHA256 signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        let digest = sha256(message);
        self.0
            .verify(Pss::new::<Sha256>(), &digest, signature)
            .map_err(|_| CryptoError::Auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_aad_binding() {
        let k = Aead::new(&SecretKey::random());
        let sealed = k.seal(b"aad", b"hello");
        assert_eq!(sealed.len(), NONCE_LEN + 5 + TAG_LEN);
        assert_eq!(k.open(b"aad", &sealed).unwrap(), b"hello");
        assert!(matches!(k.open(b"other", &sealed), Err(CryptoError::Auth)));
        let mut flipped = sealed.clone();
        flipped[NONCE_LEN] ^= 1;
        assert!(matches!(k.open(b"aad", &flipped), Err(CryptoError::Auth)));
        assert!(matches!(
            k.open(b"aad", &sealed[..10]),
            Err(CryptoError::Short)
        ));
    }

    #[test]
    fn derive_is_deterministic_and_separated() {
        let k = SecretKey::random();
        assert_eq!(k.derive(&[b"a", b"b"]), k.derive(&[b"a", b"b"]));
        assert_ne!(k.derive(&[b"a"]), k.derive(&[b"b"]));
    }

    #[test]
    fn kdf_ceiling_refused_before_allocating() {
        let huge = KdfParams {
            m_kib: 64 * 1024 * 1024,
            t: 3,
            p: 1,
        };
        let err = derive_passphrase_key(b"pw", &[0u8; 16], huge).unwrap_err();
        assert!(err.to_string().contains("exceed the ceiling"), "{err}");
    }

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// RFC 8452, Appendix C.2 (AEAD_AES_256_GCM_SIV): key 01 00…, nonce
    /// 03 00…; `seal_with_nonce_into` gives `nonce || ciphertext || tag`.
    #[test]
    fn aes_256_gcm_siv_known_answers_rfc8452() {
        let mut key = [0u8; KEY_LEN];
        key[0] = 1;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[0] = 3;
        let aead = Aead::new(&SecretKey::from_bytes(key));
        // (aad, plaintext, ciphertext || tag)
        let cases: [(&str, &str, &str); 4] = [
            ("", "", "07f5f4169bbf55a8400cd47ea6fd400f"),
            (
                "",
                "0100000000000000",
                "c2ef328e5c71c83b843122130f7364b761e0b97427e3df28",
            ),
            (
                "01",
                "0200000000000000",
                "1de22967237a813291213f267e3b452f02d01ae33e4ec854",
            ),
            (
                "01",
                "020000000000000000000000",
                "163d6f9cc1b346cd453a2e4cc1a4a19ae800941ccdc57cc8413c277f",
            ),
        ];
        for (aad, pt, want) in cases {
            let (aad, pt) = (unhex(aad), unhex(pt));
            let mut out = Vec::new();
            aead.seal_with_nonce_into(&nonce, &aad, &pt, &mut out);
            assert_eq!(&out[..NONCE_LEN], &nonce);
            assert_eq!(hex::encode(&out[NONCE_LEN..]), want, "pt {pt:?}");
            // Every opening entry point of the hot path.
            assert_eq!(aead.open(&aad, &out).unwrap(), pt);
            let mut to = vec![0xEEu8; pt.len()];
            assert_eq!(aead.open_to(&aad, &out, &mut to).unwrap(), pt.len());
            assert_eq!(to, pt);
            let mut inplace = out.clone();
            let n = aead.open_in_place(&aad, &mut inplace).unwrap();
            assert_eq!(&inplace[NONCE_LEN..NONCE_LEN + n], &pt[..]);
        }
    }

    /// The reference implementation the hot path is held to (the
    /// `aes-gcm-siv` 0.11 crate, as a dev-dependency).
    fn reference_seal(
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        pt: &[u8],
    ) -> Vec<u8> {
        use aes_gcm_siv_ref::aead::{AeadInPlace, KeyInit};
        let c = aes_gcm_siv_ref::Aes256GcmSiv::new(key.into());
        let mut buf = pt.to_vec();
        let tag = c
            .encrypt_in_place_detached(aes_gcm_siv_ref::Nonce::from_slice(nonce), aad, &mut buf)
            .unwrap();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        out.extend_from_slice(&tag);
        out
    }

    fn reference_open(key: &[u8; KEY_LEN], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        use aes_gcm_siv_ref::aead::{Aead as _, KeyInit, Payload};
        let c = aes_gcm_siv_ref::Aes256GcmSiv::new(key.into());
        let (nonce, msg) = sealed.split_at(NONCE_LEN);
        c.decrypt(
            aes_gcm_siv_ref::Nonce::from_slice(nonce),
            Payload { msg, aad },
        )
        .ok()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Same bytes as the reference for random keys, nonces, associated
        /// data and plaintexts (lengths around the 16- and 64-byte strides of
        /// CTR and four-block POLYVAL, and the store's 4 KiB block), and each
        /// opens the other's; a flipped bit fails in both.
        #[test]
        fn hot_path_equals_reference(
            key in proptest::prelude::any::<[u8; KEY_LEN]>(),
            nonce in proptest::prelude::any::<[u8; NONCE_LEN]>(),
            aad in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100),
            pt in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4200),
            flip in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let aead = Aead::new(&SecretKey::from_bytes(key));
            let want = reference_seal(&key, &nonce, &aad, &pt);
            let mut got = Vec::new();
            aead.seal_with_nonce_into(&nonce, &aad, &pt, &mut got);
            proptest::prop_assert_eq!(&got, &want);
            // A random nonce: seal_to_slice's bytes open in the reference.
            let mut slice = vec![0u8; NONCE_LEN + pt.len() + TAG_LEN + 3];
            let n = aead.seal_to_slice(&aad, &pt, &mut slice);
            proptest::prop_assert_eq!(n, NONCE_LEN + pt.len() + TAG_LEN);
            proptest::prop_assert_eq!(reference_open(&key, &aad, &slice[..n]), Some(pt.clone()));
            // The reference's bytes open through each hot-path entry point.
            proptest::prop_assert_eq!(aead.open(&aad, &want).unwrap(), pt.clone());
            let mut to = vec![0u8; pt.len()];
            aead.open_to(&aad, &want, &mut to).unwrap();
            proptest::prop_assert_eq!(&to, &pt);
            let mut inplace = want.clone();
            aead.open_in_place(&aad, &mut inplace).unwrap();
            proptest::prop_assert_eq!(&inplace[NONCE_LEN..NONCE_LEN + pt.len()], &pt[..]);
            // Tampering is refused by both, and open_to leaves no plaintext.
            let mut bad = want.clone();
            bad[flip.index(want.len())] ^= 0x10;
            proptest::prop_assert!(reference_open(&key, &aad, &bad).is_none());
            proptest::prop_assert!(matches!(aead.open(&aad, &bad), Err(CryptoError::Auth)));
            let mut to = vec![0u8; pt.len()];
            proptest::prop_assert!(aead.open_to(&aad, &bad, &mut to).is_err());
            proptest::prop_assert!(pt.is_empty() || to != pt);
        }
    }

    /// tresor's derivations and seals with fixed inputs, computed
    /// independently (OpenSSL, through tests/testdata/crypto-kat.py): the
    /// HKDF info strings of docs/FORMAT.md §2, a content block with its
    /// §5.2 AAD, and an entry name with its §6.2 padding and AAD.
    #[test]
    fn hkdf_block_and_name_known_answers() {
        let mut k = [0u8; KEY_LEN];
        for (i, b) in k.iter_mut().enumerate() {
            *b = i as u8;
        }
        let key = SecretKey::from_bytes(k);
        let file_id: [u8; 16] = std::array::from_fn(|i| 0xA0 + i as u8);
        let name_key = key.derive(&[b"tresor/name/v1"]);
        let file_key = key.derive(&[b"tresor/file/v1", &file_id]);
        assert_eq!(
            hex::encode(name_key.as_bytes()),
            "ce8d2cf21c0e6385fbb1b73cd52616ffb6d00c39b8fb0fc6a5b0844cb8d328ae"
        );
        assert_eq!(
            hex::encode(file_key.as_bytes()),
            "78a7bca4b966be6c3a4c260af027944e5c83c573e664e8536736b3973bec24a8"
        );
        assert_eq!(
            hex::encode(key.derive(&[b"tresor/key-id/v1"]).as_bytes()),
            "781b1f0054ceded9011d6a8e47e2c833b0cca2006d380a97097c442faa305e87"
        );
        assert_eq!(
            crate::directory::key_id(&key),
            "781b1f0054ceded9011d6a8e47e2c833",
            "key id: the first 16 bytes, hex"
        );

        let nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| 0x10 + i as u8);
        let aad = crate::format::content::block_aad(&file_id, 5, true);
        let pt = b"Befund: unauffaellig, keine Malignitaet nachweisbar.\n";
        let mut out = Vec::new();
        Aead::new(&file_key).seal_with_nonce_into(&nonce, &aad, pt, &mut out);
        assert_eq!(
            hex::encode(&out[NONCE_LEN..]),
            "05ce075d0ee3d9810b7f8bcf052cbc3c65d097aa80bcc54966a01ac284e5b402\
             a0c629fa9a39b75e75ccd81b8cc685367d93c93e30df879ad211d3f3a613f7d1\
             08d6acdefd"
        );

        let dir_id: [u8; 16] = std::array::from_fn(|i| 0x30 + i as u8);
        let padded = crate::format::names::pad(b"patient-0042.txt");
        assert_eq!(padded.len(), 32, "a full block of padding after 16 bytes");
        Aead::new(&name_key).seal_with_nonce_into(
            &[0; NONCE_LEN],
            &crate::format::names::name_aad(&dir_id),
            &padded,
            &mut out,
        );
        assert_eq!(
            hex::encode(&out[NONCE_LEN..]),
            "9e73bbe5ea295b7137fe49988e5b0862d828f6002e91d4339b3da59aef28bd91\
             015fc9fc6ebd0649e19aaea02572788e"
        );
    }

    /// Argon2id v0x13 as the PSE uses it (32-byte output, no secret, no
    /// associated data), against OpenSSL (tests/testdata/crypto-kat.py):
    /// at the floor, and with m, t, p all different so none is swapped.
    #[test]
    fn argon2id_known_answers() {
        let salt: [u8; 16] = std::array::from_fn(|i| i as u8);
        let pw = b"correct horse battery staple";
        let min = derive_passphrase_key(pw, &salt, KdfParams::MIN).unwrap();
        assert_eq!(
            hex::encode(min.as_bytes()),
            "9aeef75313e585f492c33c5e12d82e9ad253b7dd78632d537e899cd4eddd789c"
        );
        let mixed = KdfParams {
            m_kib: 8200,
            t: 2,
            p: 2,
        };
        assert_eq!(
            hex::encode(derive_passphrase_key(pw, &salt, mixed).unwrap().as_bytes()),
            "8086cd2a7e5bfdc51f2955fd00e9f50bdc1e4d70030f28fee7b7e89703bc996c"
        );
    }

    /// docs/THREAT-MODEL.md "no more than 1 GiB or 16 passes": the ceiling
    /// and the floor, one parameter at a time, each refused before any
    /// derivation (an m of 4 TiB, if tried, would fail as "cannot allocate").
    #[test]
    fn argon2_ceiling_16_passes_1_gib_8_lanes_and_floor() {
        let ok = |m_kib, t, p| KdfParams { m_kib, t, p }.check();
        assert!(ok(1024 * 1024, 16, 8).is_ok(), "the ceiling itself");
        assert!(ok(8 * 1024, 1, 1).is_ok(), "the floor itself");
        for (m, t, p) in [
            (1024 * 1024 + 1, 1, 1),
            (8192, 17, 1),
            (8192, 1, 9),
            (u32::MAX, 1, 1),
        ] {
            let params = KdfParams { m_kib: m, t, p };
            let e = derive_passphrase_key(b"pw", &[0u8; 16], params).unwrap_err();
            assert!(
                e.to_string().contains("exceed the ceiling") && e.to_string().contains("refusing"),
                "{params:?}: {e}"
            );
        }
        for (m, t, p) in [(8191, 1, 1), (8192, 0, 1), (8192, 1, 0), (0, 0, 0)] {
            let params = KdfParams { m_kib: m, t, p };
            let e = derive_passphrase_key(b"pw", &[0u8; 16], params).unwrap_err();
            assert!(e.to_string().contains("below the floor"), "{params:?}: {e}");
        }
        // 16 passes run (at the floor's memory); the 17th is refused above.
        let sixteen = KdfParams {
            m_kib: 8192,
            t: 16,
            p: 1,
        };
        assert!(derive_passphrase_key(b"pw", &[0u8; 16], sixteen).is_ok());
    }

    /// The OAEP decoding tresor does after a token's raw RSA operation
    /// gives what the rsa crate's own OAEP decryption gives, and refuses a
    /// wrong label or a damaged input.
    #[test]
    fn oaep_decode_after_raw_rsa_matches_the_rsa_crate() {
        use rsa::traits::{PrivateKeyParts, PublicKeyParts};
        let k = RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
        let pk = PublicKey(k.to_public_key());
        let key = SecretKey::random();
        let wrapped = pk.wrap_key("store/group/1", &key).unwrap();
        let raw = |c: &[u8]| {
            rsa::BigUint::from_bytes_be(c)
                .modpow(k.d(), k.n())
                .to_bytes_be()
        };
        let out = oaep_sha256_decode(&raw(&wrapped), k.size(), "store/group/1").unwrap();
        assert_eq!(&out[..], key.as_bytes());
        assert!(oaep_sha256_decode(&raw(&wrapped), k.size(), "store/group/2").is_err());
        let mut bent = wrapped.clone();
        bent[100] ^= 1;
        assert!(oaep_sha256_decode(&raw(&bent), k.size(), "store/group/1").is_err());
        assert!(oaep_sha256_decode(&[0u8; 300], k.size(), "x").is_err());
        assert!(oaep_sha256_decode(&[], k.size(), "x").is_err());
    }

    #[test]
    fn kdf_is_deterministic() {
        let p = KdfParams::MIN;
        let a = derive_passphrase_key(b"pw", &[1u8; 16], p).unwrap();
        let b = derive_passphrase_key(b"pw", &[1u8; 16], p).unwrap();
        let c = derive_passphrase_key(b"pX", &[1u8; 16], p).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
