//! Signed requests: every call to the analysis service carries the caller's
//! RSA-PSS signature (made with their PSE's signing key) over what the call
//! does, and the service trusts a caller only through the admin-signed
//! directory — the same trust path as `tresor verify` (docs/SERVICE.md).
//!
//! The signed message binds the store, the method, the path with its query,
//! the SHA-256 of the body, the user, the time and a nonce, so a captured
//! request can be neither changed, sent to another store, nor replayed.

use crate::crypto::{sha256, PrivateKey};
use crate::directory::{self, Body};
use crate::format::names::{decode as b64d, encode as b64e};

/// Domain separation from document and directory signatures.
pub const DOMAIN: &[u8] = b"tresor-request-v1\0";
/// Header naming the caller.
pub const USER: &str = "x-tresor-user";
/// Header with the caller's clock (seconds since the epoch).
pub const TIME: &str = "x-tresor-time";
/// Header with 32 random hex digits, never used twice.
pub const NONCE: &str = "x-tresor-nonce";
/// Header with the base64url RSA-PSS-SHA256 signature.
pub const SIGNATURE: &str = "x-tresor-signature";
/// How far a request's time may be from the service's clock, in seconds.
pub const WINDOW: u64 = 300;

/// The fields a request signature covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed<'a> {
    /// The store's id (32 hex digits).
    pub store_id: &'a str,
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// Path with query, as sent (`/jobs/7?x=1`).
    pub path: &'a str,
    /// The body's bytes.
    pub body: &'a [u8],
    /// The caller.
    pub user: &'a str,
    /// The caller's clock.
    pub time: u64,
    /// The nonce.
    pub nonce: &'a str,
}

impl Signed<'_> {
    /// The exact bytes signed: one field per line after the domain prefix.
    pub fn message(&self) -> Vec<u8> {
        let mut m = DOMAIN.to_vec();
        let text = format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.store_id,
            self.method,
            self.path,
            hex::encode(sha256(self.body)),
            self.user,
            self.time,
            self.nonce
        );
        m.extend_from_slice(text.as_bytes());
        m
    }

    /// The signature header's value.
    pub fn sign(&self, key: &PrivateKey) -> Result<String, crate::crypto::CryptoError> {
        Ok(b64e(&key.sign(&self.message())?))
    }
}

/// The four headers of a request by `user`, signed with `key` at `time`
/// with a fresh nonce: what every client (the CLI, tests, benchmarks) sends.
pub fn headers(
    key: &PrivateKey,
    user: &str,
    store_id: &str,
    (method, path, body): (&str, &str, &[u8]),
    time: u64,
) -> Result<Vec<(&'static str, String)>, crate::crypto::CryptoError> {
    let nonce = nonce();
    let sig = Signed {
        store_id,
        method,
        path,
        body,
        user,
        time,
        nonce: &nonce,
    }
    .sign(key)?;
    Ok(vec![
        (USER, user.to_string()),
        (TIME, time.to_string()),
        (NONCE, nonce),
        (SIGNATURE, sig),
    ])
}

/// A fresh nonce: 128 random bits as hex.
pub fn nonce() -> String {
    let mut b = [0u8; 16];
    crate::crypto::random_bytes(&mut b);
    hex::encode(b)
}

/// Seconds since the epoch by this machine's clock.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why a request is refused: `Unauthenticated` is HTTP 401 (who is calling
/// is not established), `Forbidden` is 403 (established, but not allowed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No or malformed authentication headers.
    #[error("unsigned request: {0}; use the tresor client commands (`tresor jobs`, `tresor submit`, …), which sign with your PSE")]
    Unsigned(String),
    /// Time outside the window.
    #[error("request expired: its time is {0} s away from the service's clock (at most {WINDOW} s); check this machine's clock and send it again")]
    Expired(u64),
    /// Nonce seen before.
    #[error("replayed request: this nonce was used before; every request must be signed afresh")]
    Replayed,
    /// No such user in the directory.
    #[error("no user named {0} in this store's directory")]
    UnknownUser(String),
    /// Signature does not verify with the certified key.
    #[error("the signature does not verify with the key the administrator certified for {0}")]
    BadSignature(String),
    /// The user was removed from the store.
    #[error("{0} was removed from this store and may no longer use the service")]
    Removed(String),
}

impl AuthError {
    /// 401 or 403.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Removed(_) => 403,
            _ => 401,
        }
    }
}

/// The authentication headers of a request, as received.
#[derive(Debug, Clone, Default)]
pub struct Headers {
    /// `x-tresor-user`.
    pub user: Option<String>,
    /// `x-tresor-time`.
    pub time: Option<String>,
    /// `x-tresor-nonce`.
    pub nonce: Option<String>,
    /// `x-tresor-signature`.
    pub signature: Option<String>,
}

/// Checks a request against the directory: signature, time window and the
/// caller's standing. The nonce's uniqueness is the caller's to check (it
/// needs the service's database); it is returned for that.
pub fn check(
    dir: &Body,
    h: &Headers,
    method: &str,
    path: &str,
    body: &[u8],
    now: u64,
) -> Result<(String, String), AuthError> {
    let need = |v: &Option<String>, name: &str| {
        v.clone()
            .ok_or_else(|| AuthError::Unsigned(format!("no {name} header")))
    };
    let user = need(&h.user, USER)?;
    let time_s = need(&h.time, TIME)?;
    let nonce = need(&h.nonce, NONCE)?;
    let sig_s = need(&h.signature, SIGNATURE)?;
    let time: u64 = time_s
        .parse()
        .map_err(|_| AuthError::Unsigned(format!("{TIME} is not a number")))?;
    if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AuthError::Unsigned(format!("{NONCE} is not 32 hex digits")));
    }
    let sig =
        b64d(&sig_s).ok_or_else(|| AuthError::Unsigned(format!("{SIGNATURE} is not base64url")))?;
    let key_s = match (dir.users.get(&user), dir.removed.get(&user)) {
        (Some(u), _) => &u.sign_public,
        (None, Some(_)) => return Err(AuthError::Removed(user)),
        (None, None) => return Err(AuthError::UnknownUser(user)),
    };
    let key = directory::sign_key(key_s).map_err(|_| AuthError::BadSignature(user.clone()))?;
    let signed = Signed {
        store_id: &dir.store_id,
        method,
        path,
        body,
        user: &user,
        time,
        nonce: &nonce,
    };
    key.verify(&signed.message(), &sig)
        .map_err(|_| AuthError::BadSignature(user.clone()))?;
    // After the signature: an attacker cannot probe the clock window.
    let skew = now.abs_diff(time);
    if skew > WINDOW {
        return Err(AuthError::Expired(skew));
    }
    Ok((user, nonce))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn keys() -> &'static (PrivateKey, PrivateKey) {
        static K: OnceLock<(PrivateKey, PrivateKey)> = OnceLock::new();
        K.get_or_init(|| {
            (
                PrivateKey::generate().unwrap(),
                PrivateKey::generate().unwrap(),
            )
        })
    }

    fn dir() -> Body {
        let (rob, _) = keys();
        let mut b = Body::new("00112233445566778899aabbccddeeff", "admin");
        b.add_role("researchers").unwrap();
        b.add_user("rob", "researchers", &rob.public(), &rob.public(), false)
            .unwrap();
        b
    }

    fn headers(key: &PrivateKey, s: &Signed<'_>) -> Headers {
        Headers {
            user: Some(s.user.into()),
            time: Some(s.time.to_string()),
            nonce: Some(s.nonce.into()),
            signature: Some(s.sign(key).unwrap()),
        }
    }

    #[test]
    fn a_signed_request_passes_and_every_changed_field_fails() {
        let d = dir();
        let n = nonce();
        let s = Signed {
            store_id: &d.store_id,
            method: "POST",
            path: "/jobs",
            body: b"{}",
            user: "rob",
            time: 1000,
            nonce: &n,
        };
        let h = headers(&keys().0, &s);
        assert_eq!(
            check(&d, &h, "POST", "/jobs", b"{}", 1000).unwrap(),
            ("rob".to_string(), n.clone())
        );
        assert!(matches!(
            check(&d, &h, "GET", "/jobs", b"{}", 1000),
            Err(AuthError::BadSignature(_))
        ));
        assert!(matches!(
            check(&d, &h, "POST", "/jobs/1", b"{}", 1000),
            Err(AuthError::BadSignature(_))
        ));
        assert!(matches!(
            check(&d, &h, "POST", "/jobs", b"{ }", 1000),
            Err(AuthError::BadSignature(_))
        ));
        assert!(matches!(
            check(&d, &h, "POST", "/jobs", b"{}", 1000 + WINDOW + 1),
            Err(AuthError::Expired(_))
        ));
        let mut other = h.clone();
        other.nonce = Some(nonce());
        assert!(matches!(
            check(&d, &other, "POST", "/jobs", b"{}", 1000),
            Err(AuthError::BadSignature(_))
        ));
        // A key the admin did not certify for rob.
        let forged = headers(&keys().1, &s);
        assert!(matches!(
            check(&d, &forged, "POST", "/jobs", b"{}", 1000),
            Err(AuthError::BadSignature(_))
        ));
        let unsigned = Headers::default();
        assert!(matches!(
            check(&d, &unsigned, "POST", "/jobs", b"{}", 1000),
            Err(AuthError::Unsigned(_))
        ));
    }
}
