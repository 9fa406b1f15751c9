//! The personal secure environment (PSE): a user's private keys sealed under
//! a key derived from a passphrase with Argon2id, plus the public keys and the
//! administrator's verification key as trust anchor.
//!
//! The file is JSON (docs/FORMAT.md). A SHA-256 checksum over its fields tells
//! a damaged file ("corrupt") apart from a wrong passphrase (the checksum holds
//! but the AEAD does not open); the AEAD's associated data covers every public
//! field, so swapping the trust anchor or a public key is detected too.
//!
//! A token PSE (format 2, `crate::token`) holds no secret at all: the
//! private keys are on a PKCS#11 token, the file names the token and the
//! keys' ids. Its public fields are bound by a signature the token's own
//! signature key made when the PSE was created, checked on every open
//! against the key the token holds, so the trust anchor cannot be swapped
//! without the card and its PIN.

use crate::crypto::{self, Aead, CryptoError, KdfParams, PrivateKey, PublicKey};
use crate::format::names::{decode as b64d, encode as b64e};
use crate::token::{self, TokenError, TokenRef};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// PSE format written by this tresor for a passphrase-sealed PSE.
pub const PSE_FORMAT: u32 = 1;
/// PSE format of a token PSE (keys on a PKCS#11 token); the newest read.
pub const TOKEN_PSE_FORMAT: u32 = 2;

/// Why a PSE could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PseError {
    /// The passphrase does not open this PSE.
    #[error("wrong passphrase (or the PSE's public part was altered)")]
    WrongPassphrase,
    /// The file is damaged or not a PSE.
    #[error(
        "the PSE file is corrupted or not a tresor PSE: {0} — restore it from your backup copy"
    )]
    Corrupt(String),
    /// Written by a newer tresor.
    #[error("the PSE has format {0}; this tresor reads up to {TOKEN_PSE_FORMAT} — upgrade tresor")]
    TooNew(u32),
    /// The token of a token PSE refused or failed (wrong PIN, PIN locked,
    /// card absent).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Refused or failed key derivation or key generation.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

impl PseError {
    /// A wrong passphrase or a wrong PIN: the one error a retry may fix.
    pub fn is_wrong_secret(&self) -> bool {
        matches!(
            self,
            PseError::WrongPassphrase | PseError::Token(TokenError::WrongPin { .. })
        )
    }
}

/// The public fields, in the order their JSON forms the AEAD's associated data.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Body {
    tresor_pse: u32,
    user: String,
    kdf: KdfParams,
    salt: String,
    sign_public: String,
    transport_public: String,
    trust_anchor: String,
}

#[derive(Serialize, Deserialize)]
struct File {
    #[serde(flatten)]
    body: Body,
    sealed: String,
    check: String,
}

impl File {
    fn checksum(body: &Body, sealed: &str) -> String {
        let mut bytes = serde_json::to_vec(body).unwrap_or_default();
        bytes.extend_from_slice(sealed.as_bytes());
        hex::encode(crypto::sha256(&bytes))
    }
}

/// The public half of a PSE: readable without the passphrase.
#[derive(Clone, Debug)]
pub struct PsePublic {
    /// Whose PSE it is.
    pub user: String,
    /// RSA-PSS verification key.
    pub sign_public: PublicKey,
    /// RSA-OAEP key-transport key.
    pub transport_public: PublicKey,
    /// The administrator's verification key this user trusts.
    pub trust_anchor: PublicKey,
    /// Argon2id parameters protecting the private keys (a token PSE has
    /// none: the default values stand here).
    pub kdf: KdfParams,
    /// A token PSE: where its private keys are.
    pub token: Option<TokenRef>,
}

/// An unlocked PSE: the user's private keys. Zeroized on drop (by the rsa crate).
#[derive(Debug)]
pub struct Pse {
    /// The public half.
    pub public: PsePublic,
    /// RSA-PSS signing key.
    pub sign: PrivateKey,
    /// RSA-OAEP key-transport key: unwraps data-group envelopes.
    pub transport: PrivateKey,
}

fn pubkey(field: &str, s: &str) -> Result<PublicKey, PseError> {
    let der = b64d(s).ok_or_else(|| PseError::Corrupt(format!("{field} is not base64url")))?;
    PublicKey::from_der(&der).map_err(|e| PseError::Corrupt(format!("{field}: {e}")))
}

fn parse(bytes: &[u8]) -> Result<(File, PsePublic), PseError> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| PseError::Corrupt(format!("not valid JSON ({e})")))?;
    match v.get("tresor_pse").and_then(|x| x.as_u64()) {
        None => return Err(PseError::Corrupt("no \"tresor_pse\" version field".into())),
        Some(0) => return Err(PseError::Corrupt("format version 0".into())),
        Some(n) if n > u64::from(TOKEN_PSE_FORMAT) => {
            return Err(PseError::TooNew(u32::try_from(n).unwrap_or(u32::MAX)))
        }
        Some(n) if n == u64::from(TOKEN_PSE_FORMAT) => {
            return Err(PseError::Corrupt(
                "a token PSE where a passphrase PSE was expected".into(),
            ))
        }
        Some(_) => {}
    }
    let f: File =
        serde_json::from_value(v).map_err(|e| PseError::Corrupt(format!("malformed ({e})")))?;
    if File::checksum(&f.body, &f.sealed) != f.check {
        return Err(PseError::Corrupt("checksum mismatch".into()));
    }
    let public = PsePublic {
        user: f.body.user.clone(),
        sign_public: pubkey("sign_public", &f.body.sign_public)?,
        transport_public: pubkey("transport_public", &f.body.transport_public)?,
        trust_anchor: pubkey("trust_anchor", &f.body.trust_anchor)?,
        kdf: f.body.kdf,
        token: None,
    };
    Ok((f, public))
}

fn aad(body: &Body) -> Vec<u8> {
    let mut a = b"tresor-pse/v1\0".to_vec();
    a.extend_from_slice(&serde_json::to_vec(body).unwrap_or_default());
    a
}

/// Whether the bytes are a token PSE (format 2); `None` if unreadable.
fn is_token(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("tresor_pse").and_then(|x| x.as_u64()))
        == Some(u64::from(TOKEN_PSE_FORMAT))
}

/// Reads the public half without a passphrase or PIN.
pub fn read_public(bytes: &[u8]) -> Result<PsePublic, PseError> {
    if is_token(bytes) {
        return parse_token(bytes).map(|(_, p)| p);
    }
    parse(bytes).map(|(_, p)| p)
}

/// Opens a PSE with its passphrase — or, for a token PSE, logs in to the
/// token with this PIN.
pub fn open(bytes: &[u8], passphrase: &[u8]) -> Result<Pse, PseError> {
    if is_token(bytes) {
        return open_token(bytes, passphrase);
    }
    let (f, public) = parse(bytes)?;
    f.body.kdf.check()?;
    let salt =
        b64d(&f.body.salt).ok_or_else(|| PseError::Corrupt("salt is not base64url".into()))?;
    let sealed =
        b64d(&f.sealed).ok_or_else(|| PseError::Corrupt("sealed keys are not base64url".into()))?;
    let kek = crypto::derive_passphrase_key(passphrase, &salt, f.body.kdf)?;
    let secrets = Zeroizing::new(
        Aead::new(&kek)
            .open(&aad(&f.body), &sealed)
            .map_err(|_| PseError::WrongPassphrase)?,
    );
    let (sign_der, rest) = split_lv(&secrets)?;
    let (transport_der, rest) = split_lv(rest)?;
    if !rest.is_empty() {
        return Err(PseError::Corrupt("trailing bytes in sealed keys".into()));
    }
    let sign = PrivateKey::from_der(sign_der).map_err(|e| PseError::Corrupt(e.to_string()))?;
    let transport =
        PrivateKey::from_der(transport_der).map_err(|e| PseError::Corrupt(e.to_string()))?;
    if sign.public() != public.sign_public || transport.public() != public.transport_public {
        return Err(PseError::Corrupt(
            "private and public keys do not match".into(),
        ));
    }
    Ok(Pse {
        public,
        sign,
        transport,
    })
}

/// The public fields of a token PSE; their JSON (after a domain prefix) is
/// what the binding signature covers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    tresor_pse: u32,
    user: String,
    token: TokenRef,
    sign_public: String,
    transport_public: String,
    trust_anchor: String,
}

#[derive(Serialize, Deserialize)]
struct TokenFile {
    #[serde(flatten)]
    body: TokenBody,
    binding: String,
    check: String,
}

impl TokenBody {
    fn message(&self) -> Vec<u8> {
        let mut m = b"tresor-pse-token/v2\0".to_vec();
        m.extend_from_slice(&serde_json::to_vec(self).unwrap_or_default());
        m
    }
}

fn parse_token(bytes: &[u8]) -> Result<(TokenFile, PsePublic), PseError> {
    let f: TokenFile = serde_json::from_slice(bytes)
        .map_err(|e| PseError::Corrupt(format!("malformed token PSE ({e})")))?;
    if File::checksum_token(&f.body, &f.binding) != f.check {
        return Err(PseError::Corrupt("checksum mismatch".into()));
    }
    let public = PsePublic {
        user: f.body.user.clone(),
        sign_public: pubkey("sign_public", &f.body.sign_public)?,
        transport_public: pubkey("transport_public", &f.body.transport_public)?,
        trust_anchor: pubkey("trust_anchor", &f.body.trust_anchor)?,
        kdf: KdfParams::DEFAULT,
        token: Some(f.body.token.clone()),
    };
    Ok((f, public))
}

impl File {
    fn checksum_token(body: &TokenBody, binding: &str) -> String {
        let mut bytes = serde_json::to_vec(body).unwrap_or_default();
        bytes.extend_from_slice(binding.as_bytes());
        hex::encode(crypto::sha256(&bytes))
    }
}

fn open_token(bytes: &[u8], pin: &[u8]) -> Result<Pse, PseError> {
    let (f, public) = parse_token(bytes)?;
    let pin = std::str::from_utf8(pin)
        .map_err(|_| PseError::Token(TokenError::BadPin("a PIN must be UTF-8 text".into())))?;
    let r = public.token.clone().unwrap_or_else(|| f.body.token.clone());
    // The token checks that its keys are the ones the PSE names.
    let (sign, transport, _) =
        token::open_keys(&r, pin, &public.sign_public, &public.transport_public)?;
    let binding =
        b64d(&f.binding).ok_or_else(|| PseError::Corrupt("binding is not base64url".into()))?;
    public
        .sign_public
        .verify(&f.body.message(), &binding)
        .map_err(|_| {
            PseError::Corrupt(
                "the token PSE's public part was altered (its binding signature does not verify)"
                    .into(),
            )
        })?;
    Ok(Pse {
        public,
        sign,
        transport,
    })
}

fn split_lv(b: &[u8]) -> Result<(&[u8], &[u8]), PseError> {
    let bad = || PseError::Corrupt("sealed keys are malformed".into());
    let len_bytes: [u8; 4] = b.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let body = b.get(4..4 + len).ok_or_else(bad)?;
    Ok((body, &b[4 + len..]))
}

impl Pse {
    /// Generates a new identity (two RSA-3072 key pairs). `trust_anchor` is
    /// the administrator's verification key; `None` makes this PSE its own
    /// anchor (the administrator's PSE).
    pub fn generate(user: &str, trust_anchor: Option<PublicKey>) -> Result<Pse, PseError> {
        let sign = PrivateKey::generate()?;
        let transport = PrivateKey::generate()?;
        let public = PsePublic {
            user: user.to_string(),
            sign_public: sign.public(),
            transport_public: transport.public(),
            trust_anchor: trust_anchor.unwrap_or_else(|| sign.public()),
            kdf: KdfParams::DEFAULT,
            token: None,
        };
        Ok(Pse {
            public,
            sign,
            transport,
        })
    }

    /// Generates a new identity on `token` (logged in with `pin`): both
    /// private keys made on the token, never extractable. Write it with
    /// [`Pse::token_file`].
    pub fn generate_on_token(
        user: &str,
        trust_anchor: Option<PublicKey>,
        token: &token::Token,
        pin: &str,
    ) -> Result<Pse, PseError> {
        let (sign, transport, r) = token::generate_keys(token, pin, user)?;
        let public = PsePublic {
            user: user.to_string(),
            sign_public: sign.public(),
            transport_public: transport.public(),
            trust_anchor: trust_anchor.unwrap_or_else(|| sign.public()),
            kdf: KdfParams::DEFAULT,
            token: Some(r),
        };
        Ok(Pse {
            public,
            sign,
            transport,
        })
    }

    /// The file of a token PSE: public keys, where the private ones are,
    /// the trust anchor, and the binding signature made on the token.
    pub fn token_file(&self) -> Result<Vec<u8>, PseError> {
        let Some(r) = self.public.token.clone() else {
            return Err(PseError::Corrupt("not a token PSE".into()));
        };
        let body = TokenBody {
            tresor_pse: TOKEN_PSE_FORMAT,
            user: self.public.user.clone(),
            token: r,
            sign_public: b64e(&self.public.sign_public.to_der()?),
            transport_public: b64e(&self.public.transport_public.to_der()?),
            trust_anchor: b64e(&self.public.trust_anchor.to_der()?),
        };
        let binding = b64e(&self.sign.sign(&body.message())?);
        let check = File::checksum_token(&body, &binding);
        let mut out = serde_json::to_vec_pretty(&TokenFile {
            body,
            binding,
            check,
        })
        .map_err(|e| PseError::Corrupt(e.to_string()))?;
        out.push(b'\n');
        Ok(out)
    }

    /// Seals the private keys under `passphrase` and returns the file bytes.
    pub fn seal(&self, passphrase: &[u8], kdf: KdfParams) -> Result<Vec<u8>, PseError> {
        let mut salt = [0u8; 16];
        crypto::random_bytes(&mut salt);
        let body = Body {
            tresor_pse: PSE_FORMAT,
            user: self.public.user.clone(),
            kdf,
            salt: b64e(&salt),
            sign_public: b64e(&self.public.sign_public.to_der()?),
            transport_public: b64e(&self.public.transport_public.to_der()?),
            trust_anchor: b64e(&self.public.trust_anchor.to_der()?),
        };
        let kek = crypto::derive_passphrase_key(passphrase, &salt, kdf)?;
        let mut secrets = Zeroizing::new(Vec::new());
        for der in [self.sign.to_der()?, self.transport.to_der()?] {
            secrets.extend_from_slice(&(der.len() as u32).to_be_bytes());
            secrets.extend_from_slice(&der);
        }
        let sealed = b64e(&Aead::new(&kek).seal(&aad(&body), &secrets));
        let check = File::checksum(&body, &sealed);
        let mut out = serde_json::to_vec_pretty(&File {
            body,
            sealed,
            check,
        })
        .map_err(|e| PseError::Corrupt(e.to_string()))?;
        out.push(b'\n');
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams::MIN;

    #[test]
    fn seal_open_and_the_two_failures() {
        let pse = Pse::generate("alice", None).unwrap();
        let bytes = pse.seal(b"correct horse", FAST).unwrap();
        let opened = open(&bytes, b"correct horse").unwrap();
        assert_eq!(opened.public.user, "alice");
        assert_eq!(opened.public.trust_anchor, pse.public.sign_public);

        assert!(matches!(
            open(&bytes, b"wrong"),
            Err(PseError::WrongPassphrase)
        ));

        // A flipped character in the sealed blob: corrupt, not "wrong passphrase".
        let text = String::from_utf8(bytes.clone()).unwrap();
        let i = text.find("\"sealed\": \"").unwrap() + 20;
        let mut b = bytes.clone();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        assert!(matches!(
            open(&b, b"correct horse"),
            Err(PseError::Corrupt(_))
        ));

        assert!(matches!(open(b"not json", b"x"), Err(PseError::Corrupt(_))));
        assert!(matches!(
            open(&bytes[..100], b"x"),
            Err(PseError::Corrupt(_))
        ));
    }

    /// A PSE whose Argon2id parameters an attacker chose (checksum
    /// recomputed, as anyone can): above the ceiling (1 GiB, 16 passes, 8
    /// lanes) or below the floor, it is refused by `open` before any key is
    /// derived — the error names the bound, and it is not "wrong
    /// passphrase" (which the changed AAD would give if the AEAD ran).
    #[test]
    fn crafted_work_factor_is_refused() {
        let pse = Pse::generate("mallory", None).unwrap();
        let bytes = pse.seal(b"pw", FAST).unwrap();
        let craft = |m: u32, t: u32, p: u32| {
            let mut f: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            f["kdf"] = serde_json::json!({"m_kib": m, "t": t, "p": p});
            // Recompute the checksum as an attacker would.
            let body: Body = serde_json::from_value(f.clone()).unwrap();
            let sealed = f["sealed"].as_str().unwrap().to_string();
            f["check"] = serde_json::json!(File::checksum(&body, &sealed));
            serde_json::to_vec(&f).unwrap()
        };
        for (m, t, p, bound) in [
            (64 * 1024 * 1024, 1, 1, "exceed the ceiling"),
            (u32::MAX, 1, 1, "exceed the ceiling"),
            (8192, 17, 1, "exceed the ceiling"),
            (8192, 1000, 1, "exceed the ceiling"),
            (8192, 1, 9, "exceed the ceiling"),
            (8191, 1, 1, "below the floor"),
            (8192, 0, 1, "below the floor"),
            (8192, 1, 0, "below the floor"),
        ] {
            let e = open(&craft(m, t, p), b"pw").unwrap_err();
            assert!(
                matches!(e, PseError::Crypto(CryptoError::Kdf(_))),
                "m={m} t={t} p={p}: {e}"
            );
            assert!(e.to_string().contains(bound), "m={m} t={t} p={p}: {e}");
        }
        // At the ceiling's 16 passes the derivation runs; the changed
        // parameters are in the AAD, so it then fails as a wrong passphrase.
        let e = open(&craft(8192, 16, 1), b"pw").unwrap_err();
        assert!(matches!(e, PseError::WrongPassphrase), "{e}");
        // The untouched file opens: the crafting itself is sound.
        assert!(open(&craft(FAST.m_kib, FAST.t, FAST.p), b"pw").is_ok());
    }
}
