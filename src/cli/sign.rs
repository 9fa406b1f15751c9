//! `tresor sign` and `tresor verify`: signed documents (docs/SIGNATURES.md).

use super::{unlock_pse, PassArgs};
use crate::crypto::{self, PublicKey};
use crate::directory::Body;
use crate::format::names;
use crate::signature::{self, Document, Entry, SigFile, SignatureError, Statement, Verdict};
use crate::store::{write_atomic, Store, StoreError};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit statuses of `tresor verify` (and `tresor sign` on a malformed
/// `.sig`); listed in docs/SIGNATURES.md and docs/ACCESS.md.
pub mod status {
    /// The document has no `.sig` beside it.
    pub const NO_SIGNATURE: u8 = 20;
    /// The content changed after signing.
    pub const CONTENT_CHANGED: u8 = 21;
    /// Same content, but signed at another path (moved or copied there).
    pub const MOVED: u8 = 22;
    /// The signer (or their key or role) is not certified by this store's
    /// administrator — or the store's administrator is not the one trusted.
    pub const NOT_CERTIFIED: u8 = 23;
    /// Valid at signing time; the signer was removed since.
    pub const SIGNER_REMOVED: u8 = 24;
    /// Signed after the signer was removed: invalid.
    pub const SIGNED_AFTER_REMOVAL: u8 = 25;
    /// The `.sig` file is not a signature file tresor can read.
    pub const MALFORMED: u8 = 26;
    /// The signature does not verify with the certified key: altered or forged.
    pub const FORGED: u8 = 27;
    /// Another document's signature (content and path both differ).
    pub const OTHER_DOCUMENT: u8 = 28;
}

/// `tresor sign FILE --pse F`
#[derive(Args, Debug)]
pub struct SignArgs {
    /// The document, normally inside a mounted data group (MNT/<data group>/…).
    file: PathBuf,
    /// Your PSE: its signing key signs.
    #[arg(long)]
    pse: PathBuf,
    #[command(flatten)]
    pass: PassArgs,
    /// The store (only needed for a document outside a mount; then also --as).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Where the document lives in the store, DATAGROUP/…/FILE (only outside a mount).
    #[arg(long = "as", value_name = "DATAGROUP/PATH")]
    as_path: Option<String>,
}

/// `tresor verify FILE` / `tresor verify --all DIR`
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The document (with --all: a directory to walk).
    target: PathBuf,
    /// Walk TARGET and report every signed document in one table.
    #[arg(long)]
    all: bool,
    /// With --all: list unsigned documents too.
    #[arg(long, requires = "all")]
    unsigned: bool,
    /// Your PSE: its trust anchor (the administrator's key) decides whom to
    /// believe. No passphrase needed. Inside a mount the default is the PSE
    /// its session is logged in with.
    #[arg(long, conflicts_with = "admin_key")]
    pse: Option<PathBuf>,
    /// The fingerprint of the administrator's key you trust, instead of a
    /// PSE (`tresor user list STORE` prints it).
    #[arg(long, value_name = "FINGERPRINT")]
    admin_key: Option<String>,
    /// The store (needed outside a mount; then also --as).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Where TARGET lives in the store, DATAGROUP/… (only outside a mount,
    /// e.g. for a copy taken out with `cp -a`).
    #[arg(long = "as", value_name = "DATAGROUP/PATH")]
    as_path: Option<String>,
    /// Print the verdicts as JSON (the exit status is the same).
    #[arg(long)]
    json: bool,
}

/// A failure with its own exit status: printed, then the status returned.
#[derive(Debug)]
struct Refusal {
    code: u8,
    msg: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Refusal {}

fn refuse(code: u8, msg: String) -> anyhow::Error {
    Refusal { code, msg }.into()
}

fn with_refusals(r: Result<ExitCode>) -> Result<ExitCode> {
    match r {
        Err(e) => match e.downcast_ref::<Refusal>() {
            Some(r) => {
                eprintln!("tresor: {}", r.msg);
                Ok(ExitCode::from(r.code))
            }
            None => Err(e),
        },
        ok => ok,
    }
}

/// Runs `tresor sign`.
pub fn sign(a: SignArgs) -> Result<ExitCode> {
    with_refusals(sign_inner(a))
}

/// Runs `tresor verify`.
pub fn verify(a: VerifyArgs) -> Result<ExitCode> {
    with_refusals(if a.all {
        verify_all(&a)
    } else {
        verify_one(&a)
    })
}

// ---------------------------------------------------------------------------
// Where a document lives

/// A file or directory and its place in a store.
struct Place {
    store: PathBuf,
    /// Canonical path on this machine.
    file: PathBuf,
    /// Its path inside the store (`DATAGROUP/…`; empty for a mount's root).
    in_store: String,
    /// The tresor mount it is in, if any.
    mount: Option<PathBuf>,
}

/// Undoes the octal escapes of /proc/self/mountinfo (`\040` for a space …).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The innermost mount containing `path`, from mountinfo text: (mount point,
/// store) if it is a tresor mount (fsname `tresor:/abs/store`).
fn tresor_mount(mountinfo: &str, path: &Path) -> Option<(PathBuf, PathBuf)> {
    let mut best: Option<(PathBuf, Option<PathBuf>)> = None;
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mnt) = pre.split(' ').nth(4) else {
            continue;
        };
        let mnt = PathBuf::from(unescape(mnt));
        if !path.starts_with(&mnt) {
            continue;
        }
        if best
            .as_ref()
            .is_some_and(|(b, _)| b.as_os_str().len() > mnt.as_os_str().len())
        {
            continue;
        }
        let mut post = post.split(' ');
        let fstype = post.next().unwrap_or("");
        let source = unescape(post.next().unwrap_or(""));
        let store = match source.strip_prefix("tresor:") {
            Some(s) if fstype.starts_with("fuse") => Some(PathBuf::from(s)),
            _ => None,
        };
        best = Some((mnt, store));
    }
    match best {
        Some((mnt, Some(store))) => Some((mnt, store)),
        _ => None,
    }
}

fn place(target: &Path, store: Option<&Path>, as_path: Option<&str>) -> Result<Place> {
    let file = target
        .canonicalize()
        .with_context(|| format!("cannot find {}", target.display()))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some((mnt, mstore)) = tresor_mount(&info, &file) {
        if let Some(a) = as_path {
            bail!(
                "{} is inside a tresor mount, which says where it lives; --as {a} is only for copies outside a mount",
                target.display()
            );
        }
        if let Some(s) = store {
            let s = s.canonicalize().unwrap_or_else(|_| s.to_path_buf());
            if s != mstore {
                bail!(
                    "{} is in a mount of the store {}, not of --store {}",
                    target.display(),
                    mstore.display(),
                    s.display()
                );
            }
        }
        let rel = file.strip_prefix(&mnt).unwrap_or(Path::new("")).to_owned();
        let Some(rel) = rel.to_str() else {
            bail!(
                "{} has a name that is not UTF-8; tresor signs only UTF-8 paths",
                target.display()
            );
        };
        return Ok(Place {
            store: mstore,
            file,
            in_store: rel.to_string(),
            mount: Some(mnt),
        });
    }
    let (Some(store), Some(as_path)) = (store, as_path) else {
        bail!(
            "{} is not inside a tresor mount: give --store STORE and --as DATAGROUP/PATH (where it lives in the store), or use it through the mount",
            target.display()
        );
    };
    let parts: Vec<&str> = as_path.split('/').filter(|s| !s.is_empty()).collect();
    if parts.iter().any(|s| *s == "." || *s == "..") {
        return Err(SignatureError::BadPath(as_path.into()).into());
    }
    Ok(Place {
        store: store.to_path_buf(),
        file,
        in_store: parts.join("/"),
        mount: None,
    })
}

fn doc_path(in_store: &str) -> Result<String> {
    Ok(signature::normalize_path(in_store)
        .ok_or_else(|| SignatureError::BadPath(in_store.into()))?)
}

fn sig_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(signature::SIG_SUFFIX);
    PathBuf::from(s)
}

fn hash_file(p: &Path) -> Result<[u8; 32]> {
    let f = std::fs::File::open(p).with_context(|| format!("cannot read {}", p.display()))?;
    crypto::sha256_reader(f).with_context(|| format!("cannot read {}", p.display()))
}

/// Reads `FILE.sig`: `None` if there is none.
fn read_sig(p: &Path) -> Result<Option<SigFile>> {
    let bytes = match std::fs::read(p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
    };
    match SigFile::parse(&bytes) {
        Ok(f) => Ok(Some(f)),
        Err(e) => Err(refuse(status::MALFORMED, format!("{}: {e}", p.display()))),
    }
}

// ---------------------------------------------------------------------------
// Formatting

/// `2026-11-23 10:42 UTC`
pub(crate) fn utc(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.min(signature::MAX_TIME));
    let s = humantime::format_rfc3339_seconds(t).to_string();
    match (s.get(..10), s.get(11..16)) {
        (Some(d), Some(hm)) => format!("{d} {hm} UTC"),
        _ => s,
    }
}

fn signer(st: &Statement, dir: &Body) -> String {
    let shared = dir.users.get(&st.signer).is_some_and(|u| u.shared);
    let role = if st.role.is_empty() {
        "administrator"
    } else {
        &st.role
    };
    if shared {
        format!("{} ({role}, shared PSE — not a person)", st.signer)
    } else {
        format!("{} ({role})", st.signer)
    }
}

fn code(v: &Verdict) -> u8 {
    match v {
        Verdict::Valid => 0,
        Verdict::ValidSignerRemoved { .. } => status::SIGNER_REMOVED,
        Verdict::SignedAfterRemoval { .. } => status::SIGNED_AFTER_REMOVAL,
        Verdict::ContentChanged => status::CONTENT_CHANGED,
        Verdict::Moved { .. } => status::MOVED,
        Verdict::OtherDocument { .. } => status::OTHER_DOCUMENT,
        Verdict::NotCertified { .. } => status::NOT_CERTIFIED,
        Verdict::BadSignature => status::FORGED,
    }
}

/// Which status wins when a document (or a walk) has several: the most
/// serious first.
fn rank(code: u8) -> u8 {
    match code {
        status::FORGED => 12,
        status::MALFORMED => 11,
        status::OTHER_DOCUMENT => 10,
        status::CONTENT_CHANGED => 9,
        status::MOVED => 8,
        status::NOT_CERTIFIED => 7,
        status::SIGNED_AFTER_REMOVAL => 6,
        status::SIGNER_REMOVED => 5,
        status::NO_SIGNATURE => 4,
        0 => 0,
        _ => 3,
    }
}

fn worst(a: u8, b: u8) -> u8 {
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

fn short(v: &Verdict) -> &'static str {
    match v {
        Verdict::Valid => "valid",
        Verdict::ValidSignerRemoved { .. } => "valid, signer removed since",
        Verdict::SignedAfterRemoval { .. } => "signed after removal",
        Verdict::ContentChanged => "content changed",
        Verdict::Moved { .. } => "moved",
        Verdict::OtherDocument { .. } => "another document's",
        Verdict::NotCertified { .. } => "not certified",
        Verdict::BadSignature => "forged or altered",
    }
}

fn describe(e: &Entry, v: &Verdict, dir: &Body, now_at: &str) -> String {
    let st = &e.statement;
    let who = signer(st, dir);
    let when = utc(st.time);
    match v {
        Verdict::Valid => format!("valid — signed by {who} {when}"),
        Verdict::ValidSignerRemoved { removed } => format!(
            "valid at signing time — signed by {who} {when}; signer removed since {}",
            utc(*removed)
        ),
        Verdict::SignedAfterRemoval { removed } => format!(
            "INVALID: signed after removal — {who} signed {when}, but {} was removed from this store {}",
            st.signer,
            utc(*removed)
        ),
        Verdict::ContentChanged => format!(
            "INVALID: content changed after signing — signed by {who} {when}; the document's SHA-256 is no longer the one signed"
        ),
        Verdict::Moved { signed_path } => format!(
            "INVALID: document moved — {who} signed it {when} as {signed_path}; it is now at {now_at}"
        ),
        Verdict::OtherDocument { signed_path } => format!(
            "INVALID: another document's signature — {who} signed {signed_path} {when}; this file has other content and place"
        ),
        Verdict::NotCertified { reason } => format!(
            "INVALID: signer not certified by this store's administrator — \"{}\" with key {}…: {reason}",
            st.signer,
            st.key.get(..16).unwrap_or(&st.key)
        ),
        Verdict::BadSignature => format!(
            "INVALID: the signature does not verify with {}'s certified key — the signature file was altered or forged (claims {who} {when})",
            st.signer
        ),
    }
}

// ---------------------------------------------------------------------------
// Trust

fn manifest_admin_key(s: &Store) -> Result<PublicKey> {
    let der = names::decode(&s.manifest().admin.sign_public)
        .context("the manifest's admin key is not base64url")?;
    Ok(PublicKey::from_der(&der)?)
}

fn open_store(p: &Path) -> Result<Store> {
    let s = Store::open(p)?;
    if !s.has_directory() {
        bail!("this store has no signed directory of users (made by an older tresor); signatures need one");
    }
    Ok(s)
}

/// The store's directory, verified against the administrator key the
/// verifier trusts (their PSE's anchor, or a fingerprint they were given).
fn trusted_directory(
    s: &Store,
    pse: Option<&Path>,
    admin_key: Option<&str>,
    mount: Option<&Path>,
) -> Result<(Body, PublicKey)> {
    // Inside a mount and nothing said: the PSE its session logged in with
    // (the mount checked it against this store) holds the trust anchor.
    let from_mount;
    let pse = match (pse, admin_key, mount) {
        (None, None, Some(m)) => {
            let st = crate::session::query(m, &crate::session::Request::new("status"))
                .map_err(|e| anyhow::anyhow!("{e}; or say which administrator you trust with --pse YOUR.pse or --admin-key FINGERPRINT"))?
                .status
                .unwrap_or_default();
            match st.pse {
                Some(p) if !st.locked => {
                    from_mount = p;
                    Some(from_mount.as_path())
                }
                _ => bail!(
                    "the mount {} is locked, so its session holds no trust anchor; log in, or give --pse YOUR.pse or --admin-key FINGERPRINT",
                    m.display()
                ),
            }
        }
        _ => pse,
    };
    let store_admin = manifest_admin_key(s)?;
    let store_fpr = store_admin.fingerprint()?;
    let anchor = match (pse, admin_key) {
        (Some(p), _) => {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            let public = crate::pse::read_public(&bytes)?;
            let fpr = public.trust_anchor.fingerprint()?;
            if fpr != store_fpr {
                return Err(refuse(
                    status::NOT_CERTIFIED,
                    format!(
                        "this store's administrator (key {}…) is not the one {}'s PSE trusts (key {}…): nothing in it is certified for you",
                        &store_fpr[..16],
                        public.user,
                        &fpr[..16]
                    ),
                ));
            }
            public.trust_anchor
        }
        (None, Some(k)) => {
            let k: String = k
                .chars()
                .filter(|c| !matches!(c, ':' | ' '))
                .collect::<String>()
                .to_ascii_lowercase();
            if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("--admin-key needs the full 64-hex-digit fingerprint (`tresor user list STORE` prints it)");
            }
            if k != store_fpr {
                return Err(refuse(
                    status::NOT_CERTIFIED,
                    format!(
                        "this store's administrator key is {store_fpr}, not the {k} you trust: nothing in it is certified for you"
                    ),
                ));
            }
            store_admin
        }
        (None, None) => bail!(
            "say which administrator you trust: --pse YOUR.pse (its trust anchor; no passphrase needed) or --admin-key FINGERPRINT (`tresor user list STORE` prints it)"
        ),
    };
    let dir = s.read_directory(&anchor)?;
    Ok((dir, anchor))
}

// ---------------------------------------------------------------------------
// sign

fn sign_inner(a: SignArgs) -> Result<ExitCode> {
    let p = place(&a.file, a.store.as_deref(), a.as_path.as_deref())?;
    let path = doc_path(&p.in_store)?;
    if path.ends_with(signature::SIG_SUFFIX) {
        bail!(
            "{} is a signature file; sign the document itself",
            a.file.display()
        );
    }
    let md = std::fs::metadata(&p.file)?;
    if !md.is_file() {
        bail!("{} is not a regular file", a.file.display());
    }
    let sp = sig_path(&p.file);
    // A damaged .sig is refused before the passphrase is asked.
    let mut sigs = read_sig(&sp)?.unwrap_or_default();
    let s = open_store(&p.store)?;
    let pse = unlock_pse(&a.pse, &a.pass)?;
    let anchor = names::encode(&pse.public.trust_anchor.to_der()?);
    if anchor != s.manifest().admin.sign_public {
        return Err(StoreError::UnknownUser(format!(
            "the PSE of {} trusts another administrator than this store's — a PSE from another store?",
            pse.public.user
        ))
        .into());
    }
    let dir = s.read_directory(&pse.public.trust_anchor)?;
    // Removed users and foreign PSEs are refused (exit 10, 8): their
    // signature would not verify here.
    s.check_member(&dir, &pse)?;
    // A document of no data group of this store (exit 7).
    dir.need_group(path.split('/').next().unwrap_or(""))?;
    let role = dir
        .users
        .get(&pse.public.user)
        .map(|u| u.role.clone())
        .unwrap_or_default();
    let sha = hash_file(&p.file)?;
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let statement = Statement {
        store_id: dir.store_id.clone(),
        path: path.clone(),
        sha256: hex::encode(sha),
        signer: pse.public.user.clone(),
        role,
        key: pse.public.sign_public.fingerprint()?,
        time,
    };
    let entry = Entry::sign(statement, &pse.sign)?;
    let who = signer(&entry.statement, &dir);
    if !sigs.add(entry.clone())? {
        println!("{path} is already signed by {who} with this content; nothing to do");
        return Ok(ExitCode::SUCCESS);
    }
    let mode = md.permissions().mode() & 0o666;
    write_atomic(&sp, &sigs.to_bytes(), mode).with_context(|| {
        format!(
            "cannot write {} (signing needs write access to the document's directory: `w` on its data group)",
            sp.display()
        )
    })?;
    // Two signers at the same instant: the later rename wins. Say so
    // rather than claim a signature that is not there.
    match read_sig(&sp) {
        Ok(Some(f)) if f.signatures.contains(&entry) => {}
        _ => bail!(
            "{} was replaced while signing (someone else signed at the same moment); sign again",
            sp.display()
        ),
    }
    println!(
        "signed {path} as {who} {}; {} holds {} signature{}",
        utc(time),
        sp.file_name().unwrap_or_default().to_string_lossy(),
        sigs.signatures.len(),
        if sigs.signatures.len() == 1 { "" } else { "s" }
    );
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------
// verify

fn verify_one(a: &VerifyArgs) -> Result<ExitCode> {
    let p = place(&a.target, a.store.as_deref(), a.as_path.as_deref())?;
    let path = doc_path(&p.in_store)?;
    if !std::fs::metadata(&p.file)?.is_file() {
        bail!(
            "{} is not a regular file (use --all to verify a directory)",
            a.target.display()
        );
    }
    let s = open_store(&p.store)?;
    let (dir, admin) = trusted_directory(
        &s,
        a.pse.as_deref(),
        a.admin_key.as_deref(),
        p.mount.as_deref(),
    )?;
    let sp = sig_path(&p.file);
    let one = |exit: u8, message: String, signatures: Vec<serde_json::Value>| {
        if a.json {
            let v = serde_json::json!({
                "document": path,
                "exit_status": exit,
                "message": message,
                "signatures": signatures,
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        } else {
            println!("{message}");
        }
        ExitCode::from(exit)
    };
    let sigs = match read_sig(&sp) {
        Ok(Some(f)) => f,
        Ok(None) => {
            let msg = format!(
                "no signature — {path} has no {} beside it",
                sp.file_name().unwrap_or_default().to_string_lossy()
            );
            return Ok(one(status::NO_SIGNATURE, msg, Vec::new()));
        }
        Err(e) => {
            if let Some(r) = e.downcast_ref::<Refusal>() {
                return Ok(one(r.code, r.msg.clone(), Vec::new()));
            }
            return Err(e);
        }
    };
    let sha = hash_file(&p.file)?;
    let doc = Document {
        sha256: &sha,
        path: &path,
    };
    let mut exit = 0;
    let mut lines = Vec::new();
    let mut json = Vec::new();
    for e in &sigs.signatures {
        let v = signature::check(e, &dir, &admin, doc);
        let line = describe(e, &v, &dir, &path);
        json.push(serde_json::json!({
            "verdict": short(&v),
            "exit_status": code(&v),
            "signer": e.statement.signer,
            "role": e.statement.role,
            "key": e.statement.key,
            "time": utc(e.statement.time),
            "signed_path": e.statement.path,
            "message": line,
        }));
        lines.push(line);
        exit = worst(exit, code(&v));
    }
    Ok(one(exit, lines.join("\n"), json))
}

/// Anything else that went wrong in a walk (an unreadable file or directory).
const FAILURE: u8 = 1;

struct Row {
    status: String,
    path: String,
    signer: String,
    time: String,
    code: u8,
}

/// Regular files below `dir` (no symlinks followed), sorted; unreadable
/// directories are returned as errors beside them.
fn walk(dir: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<(PathBuf, String)>) {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            errors.push((dir.to_path_buf(), e.to_string()));
            return;
        }
    };
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            walk(&e.path(), files, errors);
        } else if ft.is_file() {
            files.push(e.path());
        }
    }
}

fn verify_all(a: &VerifyArgs) -> Result<ExitCode> {
    let p = place(&a.target, a.store.as_deref(), a.as_path.as_deref())?;
    if !std::fs::metadata(&p.file)?.is_dir() {
        bail!("{} is not a directory", a.target.display());
    }
    let s = open_store(&p.store)?;
    let (dir, admin) = trusted_directory(
        &s,
        a.pse.as_deref(),
        a.admin_key.as_deref(),
        p.mount.as_deref(),
    )?;
    let mut files = Vec::new();
    let mut errors = Vec::new();
    walk(&p.file, &mut files, &mut errors);
    let in_store = |f: &Path| -> Option<String> {
        let rel = f.strip_prefix(&p.file).ok()?.to_str()?;
        signature::normalize_path(&format!("{}/{rel}", p.in_store))
    };
    // The document a `.sig` belongs to (bytes: names need not be UTF-8).
    let doc_of_sig = |f: &Path| -> Option<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        let b = f.as_os_str().as_bytes();
        let stem = b.strip_suffix(signature::SIG_SUFFIX.as_bytes())?;
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(stem)))
    };
    let present: std::collections::BTreeSet<&PathBuf> = files.iter().collect();
    let mut rows = Vec::new();
    let (mut signed, mut unsigned) = (0usize, 0usize);
    let dash = || "-".to_string();
    for f in &files {
        let shown = in_store(f).unwrap_or_else(|| f.display().to_string());
        if let Some(doc) = doc_of_sig(f) {
            // A signature whose document is gone (moved or renamed away).
            if !present.contains(&doc) {
                rows.push(Row {
                    status: "signature without its document".into(),
                    path: shown,
                    signer: dash(),
                    time: dash(),
                    code: status::MOVED,
                });
            }
            continue;
        }
        let name = f.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(".tresor-tmp-") {
            continue;
        }
        let Some(path) = in_store(f) else {
            rows.push(Row {
                status: "not a document path (not UTF-8?)".into(),
                path: shown,
                signer: dash(),
                time: dash(),
                code: FAILURE,
            });
            continue;
        };
        let sigs = match read_sig(&sig_path(f)) {
            Ok(Some(s)) => s,
            Ok(None) => {
                unsigned += 1;
                if a.unsigned {
                    rows.push(Row {
                        status: "unsigned".into(),
                        path,
                        signer: dash(),
                        time: dash(),
                        code: 0,
                    });
                }
                continue;
            }
            Err(e) => {
                let (status, code) = match e.downcast_ref::<Refusal>() {
                    Some(r) => (format!("malformed signature file: {}", r.msg), r.code),
                    None => (format!("{e:#}"), FAILURE),
                };
                rows.push(Row {
                    status,
                    path,
                    signer: dash(),
                    time: dash(),
                    code,
                });
                continue;
            }
        };
        signed += 1;
        let sha = match hash_file(f) {
            Ok(h) => h,
            Err(e) => {
                rows.push(Row {
                    status: format!("unreadable: {e:#}"),
                    path,
                    signer: dash(),
                    time: dash(),
                    code: FAILURE,
                });
                continue;
            }
        };
        for e in &sigs.signatures {
            let v = signature::check(
                e,
                &dir,
                &admin,
                Document {
                    sha256: &sha,
                    path: &path,
                },
            );
            let status = match &v {
                Verdict::ValidSignerRemoved { removed }
                | Verdict::SignedAfterRemoval { removed } => {
                    format!("{} {}", short(&v), utc(*removed))
                }
                Verdict::Moved { signed_path } => format!("moved (signed as {signed_path})"),
                Verdict::OtherDocument { signed_path } => {
                    format!("another document's ({signed_path})")
                }
                _ => short(&v).to_string(),
            };
            rows.push(Row {
                status,
                path: path.clone(),
                signer: signer(&e.statement, &dir),
                time: utc(e.statement.time),
                code: code(&v),
            });
        }
    }
    for (d, e) in &errors {
        rows.push(Row {
            status: format!("unreadable directory: {e}"),
            path: in_store(d)
                .or_else(|| Some(p.in_store.clone()).filter(|s| !s.is_empty()))
                .unwrap_or_else(|| d.display().to_string()),
            signer: dash(),
            time: dash(),
            code: FAILURE,
        });
    }
    if a.json {
        let exit = rows.iter().fold(0, |x, r| worst(x, r.code));
        let docs: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "document": r.path,
                    "signer": r.signer,
                    "signed": r.time,
                    "status": r.status,
                    "exit_status": r.code,
                })
            })
            .collect();
        let v = serde_json::json!({
            "signed_documents": signed,
            "unsigned_documents": unsigned,
            "exit_status": exit,
            "rows": docs,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::from(exit));
    }
    let w_doc = rows.iter().map(|r| r.path.len()).max().unwrap_or(0).max(8);
    let w_signer = rows
        .iter()
        .map(|r| r.signer.chars().count())
        .max()
        .unwrap_or(0)
        .max(6);
    let w_time = 20;
    println!(
        "{:<w_doc$}  {:<w_signer$}  {:<w_time$}  status",
        "document", "signer", "signed"
    );
    let mut exit = 0;
    for r in &rows {
        let pad = w_signer.saturating_sub(r.signer.chars().count());
        println!(
            "{:<w_doc$}  {}{}  {:<w_time$}  {}",
            r.path,
            r.signer,
            " ".repeat(pad),
            r.time,
            r.status
        );
        exit = worst(exit, r.code);
    }
    let valid = rows
        .iter()
        .filter(|r| r.code == 0 && r.status != "unsigned")
        .count();
    let sigs_total = rows.iter().filter(|r| r.signer != "-").count();
    println!(
        "{signed} signed document{}, {sigs_total} signature{} ({valid} valid, {} not), {unsigned} unsigned document{}",
        if signed == 1 { "" } else { "s" },
        if sigs_total == 1 { "" } else { "s" },
        sigs_total - valid,
        if unsigned == 1 { "" } else { "s" },
    );
    Ok(ExitCode::from(exit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_innermost_tresor_mount() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
42 22 0:39 / /tmp/a\\040b rw,nosuid - fuse tresor:/srv/my\\040store rw,user_id=0
43 42 0:40 / /tmp/a\\040b/inner rw - tmpfs tmpfs rw
44 22 0:41 / /tmp/x rw - fuse.sshfs host:/ rw
";
        assert_eq!(
            tresor_mount(info, Path::new("/tmp/a b/rx/p17/rx.txt")),
            Some((PathBuf::from("/tmp/a b"), PathBuf::from("/srv/my store")))
        );
        assert_eq!(tresor_mount(info, Path::new("/tmp/a b/inner/f")), None);
        assert_eq!(tresor_mount(info, Path::new("/tmp/x/f")), None);
        assert_eq!(tresor_mount(info, Path::new("/tmp/a bc/f")), None);
        assert_eq!(tresor_mount("garbage", Path::new("/x")), None);
    }

    #[test]
    fn times_and_ranks() {
        assert_eq!(utc(1_795_415_753), "2026-11-23 06:35 UTC");
        assert_eq!(utc(u64::MAX), "9999-12-31 23:59 UTC");
        assert_eq!(worst(status::SIGNER_REMOVED, 0), status::SIGNER_REMOVED);
        assert_eq!(worst(status::MOVED, status::FORGED), status::FORGED);
    }
}
