//! The PSE on a smartcard: a user's private keys generated on a PKCS#11
//! token (a smartcard, a YubiKey's PIV application, SoftHSM2) that never
//! leave it. The token's user PIN replaces the PSE passphrase and the token
//! counts wrong PINs itself; tresor reads its flags to say how things stand.
//!
//! What tresor asks of a token: RSA key-pair generation (3072 bits, private
//! keys `CKA_SENSITIVE`, not `CKA_EXTRACTABLE`), the raw RSA decryption
//! `CKM_RSA_X_509` (the OAEP padding of the unchanged envelope format is
//! removed in [`crate::crypto::oaep_sha256_decode`]: SoftHSM2 2.6 does OAEP
//! only with SHA-1 and no label, and PIV cards only raw RSA), and RSA-PSS
//! signatures `CKM_RSA_PKCS_PSS` (SHA-256, MGF1-SHA-256, 32-byte salt), the
//! signature file users make. docs/ACCESS.md says what this protects.
//!
//! The module (the token's PKCS#11 library) is `--pkcs11-module`, else
//! `TRESOR_PKCS11_MODULE`, else the one the PSE was made with, else the
//! first of [`DEFAULT_MODULES`] that exists.

use crate::crypto::{self, CryptoError, PublicKey};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::{Slot, TokenInfo};
use cryptoki::types::AuthPin;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use zeroize::Zeroizing;

/// Where tresor looks for a PKCS#11 module when none is named: SoftHSM2
/// (Debian's two paths), then p11-kit's proxy, which reaches every module
/// registered with p11-kit (OpenSC, ykcs11).
pub const DEFAULT_MODULES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so",
    "/usr/lib/aarch64-linux-gnu/p11-kit-proxy.so",
    "/usr/lib/p11-kit-proxy.so",
];

/// The environment variable naming the module (below `--pkcs11-module`).
pub const MODULE_ENV: &str = "TRESOR_PKCS11_MODULE";

/// Why a token could not be used. None carries a PIN.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No module could be loaded.
    #[error("cannot load the PKCS#11 module {module}: {reason} — name it with --pkcs11-module or {MODULE_ENV}")]
    Module {
        /// The path tried.
        module: String,
        /// What went wrong.
        reason: String,
    },
    /// No default module exists on this machine.
    #[error("no PKCS#11 module found (tried {}); install softhsm2, opensc or ykcs11, or name one with --pkcs11-module", DEFAULT_MODULES.join(", "))]
    NoModule,
    /// The token is not in any slot.
    #[error("token {0} is not present — insert the card (or check --pkcs11-module)")]
    NotPresent(String),
    /// More than one token, none named.
    #[error("{0} tokens are present ({1}); name one with --token-label")]
    Ambiguous(usize, String),
    /// The PIN was wrong; the token counts it.
    #[error("wrong PIN for token {label}{}", attempts_note(*.final_try, *.count_low))]
    WrongPin {
        /// The token's label.
        label: String,
        /// The token says the next wrong PIN locks it.
        final_try: bool,
        /// The token says its retry count is low.
        count_low: bool,
    },
    /// The token has locked its user PIN.
    #[error("the PIN of token {0} is locked (too many wrong PINs); unlock it with the security officer's PUK/SO PIN (pkcs11-tool --init-pin --login --login-type so, or ykman piv access unblock-pin), then try again")]
    PinLocked(String),
    /// The new PIN does not suit the token.
    #[error("the token refuses this PIN: {0}")]
    BadPin(String),
    /// A key the PSE names is not on the token.
    #[error("token {label} has no {what} key with id {id}: this PSE belongs to another token (or the key was deleted)")]
    KeyMissing {
        /// The token's label.
        label: String,
        /// Which key.
        what: &'static str,
        /// Its CKA_ID (hex).
        id: String,
    },
    /// The keys on the token are not the ones in the PSE.
    #[error("the {0} key on token {1} is not the one this PSE names: the PSE was altered or belongs to another token")]
    KeyMismatch(&'static str, String),
    /// Any other failure of the module.
    #[error("token {label}: {call} failed: {rv}")]
    Pkcs11 {
        /// The token (or module) concerned.
        label: String,
        /// The PKCS#11 call.
        call: String,
        /// The module's return value.
        rv: String,
    },
}

fn attempts_note(final_try: bool, count_low: bool) -> &'static str {
    if final_try {
        " — one attempt left: the next wrong PIN locks the token"
    } else if count_low {
        " — the token reports few attempts left"
    } else {
        ""
    }
}

fn p11(label: &str) -> impl Fn(P11Error) -> TokenError + '_ {
    move |e| match e {
        P11Error::Pkcs11(rv, call) => TokenError::Pkcs11 {
            label: label.to_string(),
            call: format!("{call:?}"),
            rv: format!("{rv}"),
        },
        other => TokenError::Pkcs11 {
            label: label.to_string(),
            call: "PKCS#11".into(),
            rv: other.to_string(),
        },
    }
}

impl From<TokenError> for CryptoError {
    fn from(e: TokenError) -> Self {
        CryptoError::Rsa(e.to_string())
    }
}

/// Where a PSE's keys are: written into the token PSE (docs/FORMAT.md).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenRef {
    /// The token's label (CKA token label), as shown to the user.
    pub label: String,
    /// The token's serial number: which card, when several share a label.
    pub serial: String,
    /// The module the PSE was made with (a hint; see the module order).
    pub module: String,
    /// CKA_ID (hex) of the signature key pair.
    pub sign_id: String,
    /// CKA_ID (hex) of the key-transport (decryption) key pair.
    pub transport_id: String,
}

static MODULE_OVERRIDE: OnceLock<PathBuf> = OnceLock::new();

/// `--pkcs11-module`: the module for everything this process does.
pub fn use_module(path: &Path) {
    let _ = MODULE_OVERRIDE.set(path.to_path_buf());
}

/// The module to load: `--pkcs11-module`, `TRESOR_PKCS11_MODULE`, the PSE's
/// (`hint`, if it exists here), the first default that exists.
pub fn module_path(hint: Option<&str>) -> Result<PathBuf, TokenError> {
    if let Some(p) = MODULE_OVERRIDE.get() {
        return Ok(p.clone());
    }
    if let Some(p) = std::env::var_os(MODULE_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(h) = hint.map(Path::new).filter(|p| p.exists()) {
        return Ok(h.to_path_buf());
    }
    DEFAULT_MODULES
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .map(Path::to_path_buf)
        .ok_or(TokenError::NoModule)
}

/// One initialized context per module and process. A context made before
/// a fork (the mount detaches) is initialized again in the child, as
/// PKCS#11 requires.
fn context(module: &Path) -> Result<Pkcs11, TokenError> {
    context_fresh(module, false)
}

/// Sessions open on any token of this process: while there are some, a
/// context is never initialized again (that would end them).
static LIVE_SESSIONS: AtomicUsize = AtomicUsize::new(0);

/// `fresh`: initialize the module again (SoftHSM2 reads its tokens at
/// `C_Initialize`, so a token put back is seen only by a new one), unless
/// a session is open.
fn context_fresh(module: &Path, fresh: bool) -> Result<Pkcs11, TokenError> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, (u32, Pkcs11)>>> = OnceLock::new();
    let mut map = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let me = std::process::id();
    let fresh = fresh && LIVE_SESSIONS.load(Ordering::SeqCst) == 0;
    if let Some((pid, ctx)) = map.get_mut(module) {
        if *pid == me && !fresh {
            return Ok(ctx.clone());
        }
        // Inherited across a fork (pid differs) or to be read anew.
        *pid = 0;
    }
    let fail = |reason: String| TokenError::Module {
        module: module.display().to_string(),
        reason,
    };
    let ctx = match map.remove(module) {
        // The module still thinks it is initialized: finalize and start again.
        Some((_, old)) => {
            let _ = old.clone().finalize();
            old
        }
        None => Pkcs11::new(module).map_err(|e| fail(e.to_string()))?,
    };
    let args = CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK);
    match ctx.initialize(args) {
        Ok(()) => {}
        Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    map.insert(module.to_path_buf(), (me, ctx.clone()));
    Ok(ctx)
}

/// A token found in a slot.
#[derive(Clone)]
pub struct Token {
    ctx: Pkcs11,
    slot: Slot,
    /// The module it was reached through.
    pub module: PathBuf,
    /// Its label.
    pub label: String,
    /// Its serial number.
    pub serial: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({} {})", self.label, self.serial)
    }
}

impl Token {
    /// The token with this label (and serial, if given); with neither, the
    /// only token present.
    pub fn find(
        module: &Path,
        label: Option<&str>,
        serial: Option<&str>,
    ) -> Result<Token, TokenError> {
        match Self::find_in(context(module)?, module, label, serial) {
            // A card put back after the module was initialized.
            Err(TokenError::NotPresent(_)) => {
                Self::find_in(context_fresh(module, true)?, module, label, serial)
            }
            r => r,
        }
    }

    fn find_in(
        ctx: Pkcs11,
        module: &Path,
        label: Option<&str>,
        serial: Option<&str>,
    ) -> Result<Token, TokenError> {
        let want = label.or(serial).unwrap_or("(any)").to_string();
        let slots = ctx.get_slots_with_token().map_err(p11(&want))?;
        let mut found = Vec::new();
        for slot in slots {
            let Ok(info) = ctx.get_token_info(slot) else {
                continue;
            };
            if !info.token_initialized() {
                continue;
            }
            let l = info.label().trim().to_string();
            let s = info.serial_number().trim().to_string();
            if label.is_some_and(|x| x != l) || serial.is_some_and(|x| x != s) {
                continue;
            }
            found.push(Token {
                ctx: ctx.clone(),
                slot,
                module: module.to_path_buf(),
                label: l,
                serial: s,
            });
        }
        match found.len() {
            0 => Err(TokenError::NotPresent(match (label, serial) {
                (Some(l), Some(s)) => format!("{l:?} (serial {s})"),
                (Some(l), None) => format!("{l:?}"),
                (None, Some(s)) => format!("with serial {s}"),
                (None, None) => "(any)".into(),
            })),
            1 => Ok(found.remove(0)),
            n => Err(TokenError::Ambiguous(
                n,
                found
                    .iter()
                    .map(|t| format!("{:?}", t.label))
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    fn info(&self) -> Result<TokenInfo, TokenError> {
        self.ctx.get_token_info(self.slot).map_err(p11(&self.label))
    }

    /// Logs in with the user PIN. Refuses a token whose flags say the PIN
    /// is locked before trying (a locked card must not be asked again);
    /// a wrong PIN reports what the token's flags say about the attempts
    /// left.
    pub fn login(&self, pin: &str) -> Result<Live, TokenError> {
        let info = self.info()?;
        if info.user_pin_locked() {
            return Err(TokenError::PinLocked(self.label.clone()));
        }
        // A write-protected card still decrypts and signs.
        let session = if info.write_protected() {
            self.ctx.open_ro_session(self.slot)
        } else {
            self.ctx.open_rw_session(self.slot)
        };
        let session = Live::new(session.map_err(p11(&self.label))?);
        let auth = AuthPin::from(pin.to_string());
        match session.login(UserType::User, Some(&auth)) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(P11Error::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange, _)) => {
                let info = self.info()?;
                if info.user_pin_locked() {
                    return Err(TokenError::PinLocked(self.label.clone()));
                }
                Err(TokenError::WrongPin {
                    label: self.label.clone(),
                    final_try: info.user_pin_final_try(),
                    count_low: info.user_pin_count_low(),
                })
            }
            Err(P11Error::Pkcs11(RvError::PinLocked, _)) => {
                Err(TokenError::PinLocked(self.label.clone()))
            }
            Err(e) => Err(p11(&self.label)(e)),
        }
    }

    /// Changes the user PIN on the token (`tresor passwd` of a token PSE).
    pub fn change_pin(&self, old: &str, new: &str) -> Result<(), TokenError> {
        let session = self.login(old)?;
        let (o, n) = (
            AuthPin::from(old.to_string()),
            AuthPin::from(new.to_string()),
        );
        session.set_pin(&o, &n).map_err(|e| match e {
            P11Error::Pkcs11(rv @ (RvError::PinLenRange | RvError::PinInvalid), _) => {
                TokenError::BadPin(rv.to_string())
            }
            e => p11(&self.label)(e),
        })
    }

    /// Generates an RSA key pair on the token: the private key sensitive,
    /// never extractable, for `sign` or for decryption; returns its CKA_ID
    /// (hex) and public key.
    pub fn generate(
        &self,
        session: &Session,
        user: &str,
        purpose: Purpose,
    ) -> Result<(String, PublicKey), TokenError> {
        let mut id = [0u8; 16];
        crypto::random_bytes(&mut id);
        let label = format!("tresor {user} {}", purpose.name()).into_bytes();
        let bits = u64::try_from(crypto::RSA_BITS).unwrap_or(3072);
        let (sign, decrypt) = (purpose == Purpose::Sign, purpose == Purpose::Transport);
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::ModulusBits(bits.into()),
            Attribute::PublicExponent(vec![1, 0, 1]),
            Attribute::Verify(sign),
            Attribute::Encrypt(decrypt),
            Attribute::Id(id.to_vec()),
            Attribute::Label(label.clone()),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(sign),
            Attribute::Decrypt(decrypt),
            Attribute::Unwrap(false),
            Attribute::Id(id.to_vec()),
            Attribute::Label(label),
        ];
        let (pubh, _) = session
            .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)
            .map_err(p11(&self.label))?;
        let pk = self.public_key(session, pubh)?;
        Ok((hex::encode(id), pk))
    }

    fn public_key(&self, session: &Session, h: ObjectHandle) -> Result<PublicKey, TokenError> {
        let attrs = session
            .get_attributes(h, &[AttributeType::Modulus, AttributeType::PublicExponent])
            .map_err(p11(&self.label))?;
        let (mut n, mut e) = (None, None);
        for a in attrs {
            match a {
                Attribute::Modulus(v) => n = Some(v),
                Attribute::PublicExponent(v) => e = Some(v),
                _ => {}
            }
        }
        let (Some(n), Some(e)) = (n, e) else {
            return Err(TokenError::Pkcs11 {
                label: self.label.clone(),
                call: "GetAttributeValue".into(),
                rv: "no modulus or exponent".into(),
            });
        };
        PublicKey::from_components(&n, &e).map_err(|e| TokenError::Pkcs11 {
            label: self.label.clone(),
            call: "public key".into(),
            rv: e.to_string(),
        })
    }

    fn object(
        &self,
        session: &Session,
        class: ObjectClass,
        id: &str,
        what: &'static str,
    ) -> Result<ObjectHandle, TokenError> {
        let missing = || TokenError::KeyMissing {
            label: self.label.clone(),
            what,
            id: id.to_string(),
        };
        let raw = hex::decode(id).map_err(|_| missing())?;
        let found = session
            .find_objects(&[
                Attribute::Class(class),
                Attribute::KeyType(KeyType::RSA),
                Attribute::Id(raw),
            ])
            .map_err(p11(&self.label))?;
        found.first().copied().ok_or_else(missing)
    }

    /// Whether this token is still in its slot: the slot lists a token with
    /// this serial. With SoftHSM2, removing the token's directory makes
    /// `C_GetTokenInfo` fail; a card reader reports the slot empty.
    pub fn presence(&self) -> Presence {
        Presence {
            module: self.module.clone(),
            serial: self.serial.clone(),
            label: self.label.clone(),
        }
    }
}

/// An open session, counted so that no context is initialized again under it.
pub struct Live(Session);

impl Live {
    fn new(s: Session) -> Live {
        LIVE_SESSIONS.fetch_add(1, Ordering::SeqCst);
        Live(s)
    }
}

impl std::ops::Deref for Live {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.0
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        LIVE_SESSIONS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a token key pair is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// RSA-PSS signatures.
    Sign,
    /// Unwrapping group-key envelopes.
    Transport,
}

impl Purpose {
    fn name(self) -> &'static str {
        match self {
            Purpose::Sign => "signature",
            Purpose::Transport => "key-transport",
        }
    }
}

/// A logged-in session with one private key on the token.
struct OnToken {
    session: Arc<Mutex<Live>>,
    key: ObjectHandle,
    label: String,
}

impl OnToken {
    fn run<T>(&self, f: impl FnOnce(&Session) -> Result<T, P11Error>) -> Result<T, CryptoError> {
        let s = self.session.lock().unwrap_or_else(|e| e.into_inner());
        f(&s).map_err(|e| p11(&self.label)(e).into())
    }
}

impl crypto::TokenKey for OnToken {
    fn decrypt_raw(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.run(|s| s.decrypt(&Mechanism::RsaX509, self.key, ciphertext))
            .map(Zeroizing::new)
    }

    fn sign_pss_sha256(&self, digest: &[u8; 32]) -> Result<Vec<u8>, CryptoError> {
        let params = PkcsPssParams {
            hash_alg: MechanismType::SHA256,
            mgf: PkcsMgfType::MGF1_SHA256,
            s_len: 32u64.into(),
        };
        self.run(|s| s.sign(&Mechanism::RsaPkcsPss(params), self.key, digest))
    }
}

/// Opens a token PSE's keys: finds the token by serial, logs in with the
/// PIN, and checks that the token's public keys are the PSE's.
pub fn open_keys(
    r: &TokenRef,
    pin: &str,
    sign_public: &PublicKey,
    transport_public: &PublicKey,
) -> Result<(crypto::PrivateKey, crypto::PrivateKey, Token), TokenError> {
    let module = module_path(Some(&r.module))?;
    let token = Token::find(&module, None, Some(&r.serial)).map_err(|e| match e {
        TokenError::NotPresent(_) => {
            TokenError::NotPresent(format!("{:?} (serial {})", r.label, r.serial))
        }
        e => e,
    })?;
    let session = token.login(pin)?;
    let mut keys = Vec::new();
    for (id, what, expected) in [
        (&r.sign_id, "signature", sign_public),
        (&r.transport_id, "key-transport", transport_public),
    ] {
        let pubh = token.object(&session, ObjectClass::PUBLIC_KEY, id, what)?;
        if token.public_key(&session, pubh)? != *expected {
            return Err(TokenError::KeyMismatch(what, token.label.clone()));
        }
        keys.push(token.object(&session, ObjectClass::PRIVATE_KEY, id, what)?);
    }
    let session = Arc::new(Mutex::new(session));
    let key = |h: ObjectHandle, p: &PublicKey| {
        crypto::PrivateKey::on_token(
            Arc::new(OnToken {
                session: Arc::clone(&session),
                key: h,
                label: token.label.clone(),
            }),
            p.clone(),
        )
    };
    Ok((
        key(keys[0], sign_public),
        key(keys[1], transport_public),
        token,
    ))
}

/// New keys for `user` on `token` (logged in with `pin`): the two private
/// keys as handles, and where they are.
pub fn generate_keys(
    token: &Token,
    pin: &str,
    user: &str,
) -> Result<(crypto::PrivateKey, crypto::PrivateKey, TokenRef), TokenError> {
    let session = token.login(pin)?;
    let (sign_id, sign_pk) = token.generate(&session, user, Purpose::Sign)?;
    let (transport_id, transport_pk) = token.generate(&session, user, Purpose::Transport)?;
    let r = TokenRef {
        label: token.label.clone(),
        serial: token.serial.clone(),
        module: token.module.display().to_string(),
        sign_id,
        transport_id,
    };
    drop(session);
    let (sign, transport, _) = open_keys(&r, pin, &sign_pk, &transport_pk)?;
    Ok((sign, transport, r))
}

/// Watches whether a token is still in its slot (the mount's "card
/// pulled" check).
#[derive(Clone, Debug)]
pub struct Presence {
    module: PathBuf,
    serial: String,
    /// The token's label, for the lock reason.
    pub label: String,
}

impl Presence {
    /// The presence check for a token PSE's token.
    pub fn of(r: &TokenRef) -> Result<Presence, TokenError> {
        Ok(Presence {
            module: module_path(Some(&r.module))?,
            serial: r.serial.clone(),
            label: r.label.clone(),
        })
    }

    /// Whether a slot holds the token now (`C_GetSlotList` with tokens
    /// present, then `C_GetTokenInfo` of each for the serial). A module
    /// that cannot be reached counts as "gone": the mount fails closed.
    pub fn present(&self) -> bool {
        let Ok(ctx) = context(&self.module) else {
            return false;
        };
        let Ok(slots) = ctx.get_slots_with_token() else {
            return false;
        };
        slots.into_iter().any(|s| {
            ctx.get_token_info(s)
                .is_ok_and(|i| i.serial_number().trim() == self.serial)
        })
    }
}
