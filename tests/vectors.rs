//! File-based test vectors, in the manner of rage's testkit and gocryptfs's
//! `tests/example_filesystems`.
//!
//! `tests/testdata/store-v1/` is a store written once by the real code
//! ([`generate_fixture`], ignored) and committed. The tests here prove that
//! the current code still reads it exactly, that an independent decoder
//! written from docs/FORMAT.md reads it too, and that every tampering in
//! [`tamper_cases`] (also listed in `tests/testdata/tamper-cases.md`) is
//! detected — or, for the documented limits, behaves exactly as documented.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use tresor::crypto::{self, KdfParams};
use tresor::format::content::{
    block_aad, block_offset, ciphertext_size, plaintext_size, FileHeader, BLOCK_SIZE,
    CT_BLOCK_SIZE, HEADER_LEN,
};
use tresor::pse::{self, Pse, PseError};
use tresor::store::Store;
use tresor::vfs::{Attr, Caller, Kind, Vfs, VfsError, ROOT};

// ---------------------------------------------------------------------------
// The fixture's plaintext
// ---------------------------------------------------------------------------

/// Regular files of the fixture: path and size. Content is [`content`].
const FILES: &[(&str, usize)] = &[
    ("records/empty.txt", 0),
    ("records/one.txt", 1),
    ("records/notes/4095.bin", 4095),
    ("records/notes/4096.bin", 4096),
    ("records/notes/4097.bin", 4097),
    ("records/10000.bin", 10000),
    ("slides/slide-001.svs", 10000),
];
/// Directories below the data groups.
const DIRS: &[&str] = &["records/notes"];
/// Symlinks: path and target.
const LINKS: &[(&str, &str)] = &[("records/link", "notes/4096.bin")];

/// The 200-character name of the long-name file, in `records/`.
fn long_name() -> String {
    let mut s = String::from("long-name-");
    while s.len() < 196 {
        s.push_str("0123456789");
    }
    s.truncate(196);
    s.push_str(".txt");
    assert_eq!(s.len(), 200);
    s
}

fn long_path() -> String {
    format!("records/{}", long_name())
}

/// Known content: byte `i` of the file at `path` is a fixed function of `i`
/// and the path, so every file (and every block) differs.
fn content(path: &str, size: usize) -> Vec<u8> {
    let seed = crypto::sha256(path.as_bytes());
    (0..size)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761) >> 24;
            (x as u8) ^ seed[i % 32]
        })
        .collect()
}

fn all_files() -> Vec<(String, usize)> {
    let mut v: Vec<(String, usize)> = FILES.iter().map(|(p, s)| (p.to_string(), *s)).collect();
    v.push((long_path(), 300));
    v
}

const PASSPHRASE_FILE: &str = "store-v1.passphrase";
const PSE_FILE: &str = "store-v1.pse";
const READER_PSE_FILE: &str = "store-v1.reader.pse";
const STORE_DIR: &str = "store-v1";
const EXPECTED_FILE: &str = "store-v1.expected.json";

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata")
}

fn passphrase() -> Vec<u8> {
    let s = fs::read_to_string(testdata().join(PASSPHRASE_FILE)).unwrap();
    s.lines().next().unwrap_or("").as_bytes().to_vec()
}

fn caller() -> Caller {
    Caller {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
    }
}

// ---------------------------------------------------------------------------
// The generator (run once; its output is committed)
// ---------------------------------------------------------------------------

/// Writes `tests/testdata/store-v1*` with the library API. Run once with
/// `cargo test --test integration vectors::generate_fixture -- --ignored`
/// after removing the old fixture; then commit. A new format version gets a
/// new fixture (`store-v2`) — an old fixture is never regenerated.
#[test]
#[ignore = "writes the committed fixture; run by hand only"]
fn generate_fixture() {
    let td = testdata();
    let root = td.join(STORE_DIR);
    assert!(
        !root.exists(),
        "{} exists: fixtures are never regenerated; remove it by hand if you really mean to",
        root.display()
    );
    fs::create_dir_all(&td).unwrap();
    let pass = b"correct horse battery staple";
    fs::write(td.join(PASSPHRASE_FILE), b"correct horse battery staple\n").unwrap();

    let admin = Pse::generate("admin", None).unwrap();
    fs::write(td.join(PSE_FILE), admin.seal(pass, KdfParams::MIN).unwrap()).unwrap();
    let reader = Pse::generate("reader", Some(admin.public.sign_public.clone())).unwrap();
    fs::write(
        td.join(READER_PSE_FILE),
        reader.seal(pass, KdfParams::MIN).unwrap(),
    )
    .unwrap();

    let store = Store::create(&root, &admin, KdfParams::MIN).unwrap();
    let a = ("admin".to_string(), admin.public.transport_public.clone());
    let r = ("reader".to_string(), reader.public.transport_public.clone());
    store
        .add_group("records", std::slice::from_ref(&a))
        .unwrap();
    store.add_group("slides", &[a, r]).unwrap();

    let ring = store.unlock(&admin).unwrap();
    let vfs = Vfs::new(store, ring, caller()).unwrap();
    let who = caller();
    for d in DIRS {
        let (parent, name) = split(d);
        let p = resolve(&vfs, parent).unwrap().ino;
        vfs.mkdir(who, p, OsStr::new(name), 0o755).unwrap();
    }
    for (path, size) in all_files() {
        let (parent, name) = split(&path);
        let p = resolve(&vfs, parent).unwrap().ino;
        let (_, fh) = vfs
            .create(who, p, OsStr::new(name), 0o644, libc::O_WRONLY)
            .unwrap();
        let data = content(&path, size);
        // Written in odd-sized pieces, as an application would.
        for (i, chunk) in data.chunks(3000).enumerate() {
            vfs.write(fh, (i * 3000) as u64, chunk).unwrap();
        }
        vfs.fsync(fh, false).unwrap();
        vfs.release(fh);
    }
    for (path, target) in LINKS {
        let (parent, name) = split(path);
        let p = resolve(&vfs, parent).unwrap().ino;
        vfs.symlink(who, p, OsStr::new(name), target.as_bytes())
            .unwrap();
    }

    let mut entries = Vec::new();
    for d in DIRS {
        entries.push(serde_json::json!({"path": d, "kind": "dir"}));
    }
    for (path, size) in all_files() {
        entries.push(serde_json::json!({
            "path": path,
            "kind": "file",
            "size": size,
            "sha256": hex::encode(crypto::sha256(&content(&path, size))),
        }));
    }
    for (path, target) in LINKS {
        entries.push(serde_json::json!({"path": path, "kind": "symlink", "target": target}));
    }
    let expected = serde_json::json!({
        "description": "tresor store format 1 fixture; written once by tests/vectors.rs generate_fixture",
        "store": STORE_DIR,
        "pse": PSE_FILE,
        "reader_pse": READER_PSE_FILE,
        "passphrase_file": PASSPHRASE_FILE,
        "groups": {"admin": ["records", "slides"], "reader": ["slides"]},
        "entries": entries,
    });
    let mut out = serde_json::to_vec_pretty(&expected).unwrap();
    out.push(b'\n');
    fs::write(td.join(EXPECTED_FILE), out).unwrap();
}

// ---------------------------------------------------------------------------
// Helpers: opening, walking and reading through the Vfs API
// ---------------------------------------------------------------------------

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// Looks `path` up from the root, one component at a time.
fn resolve(vfs: &Vfs, path: &str) -> Result<Attr, VfsError> {
    let mut attr = vfs.getattr(ROOT, None)?;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        attr = vfs.lookup(attr.ino, OsStr::new(part))?;
    }
    Ok(attr)
}

/// Reads a whole file through open/read/release. Every byte returned is
/// kept, so a caller can prove that no plaintext came out.
fn read_all(vfs: &Vfs, ino: u64, leaked: &mut Vec<u8>) -> Result<Vec<u8>, VfsError> {
    let (fh, _) = vfs.open(ino, libc::O_RDONLY)?;
    let mut out = Vec::new();
    let res = loop {
        match vfs.read(fh, out.len() as u64, 64 * 1024) {
            Ok(b) if b.is_empty() => break Ok(()),
            Ok(b) => {
                leaked.extend_from_slice(&b);
                out.extend_from_slice(&b);
            }
            Err(e) => break Err(e),
        }
    };
    vfs.release(fh);
    res.map(|()| out)
}

/// Plaintext names listed in directory `path` (without `.` and `..`), in
/// listing order, duplicates kept.
fn list_all(vfs: &Vfs, path: &str) -> Result<Vec<String>, VfsError> {
    let ino = resolve(vfs, path)?.ino;
    let fh = vfs.opendir(ino)?;
    let entries = vfs.readdir(fh, 0);
    vfs.release(fh);
    Ok(entries?
        .into_iter()
        .map(|(_, e)| e.name.to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..")
        .collect())
}

/// The set of names listed in directory `path`.
fn list(vfs: &Vfs, path: &str) -> Result<BTreeSet<String>, VfsError> {
    Ok(list_all(vfs, path)?.into_iter().collect())
}

/// `name` is not listed in `parent`, and `parent` lists each other name at
/// most once and nothing the fixture does not have.
fn check_listing(vfs: &Vfs, parent: &str, name: &str) -> Result<(), String> {
    let all = list_all(vfs, parent).map_err(|e| format!("listing {parent}: {e}"))?;
    let set: BTreeSet<String> = all.iter().cloned().collect();
    if set.contains(name) {
        return Err(format!("{name} is listed in {parent}"));
    }
    if set.len() != all.len() {
        return Err(format!("{parent} lists a name twice: {all:?}"));
    }
    let known = expected_children(parent);
    let extra: Vec<_> = set.difference(&known).collect();
    if !extra.is_empty() {
        return Err(format!("{parent} lists unexpected {extra:?}"));
    }
    Ok(())
}

/// The names the fixture has in directory `dir` ("" is the root).
fn expected_children(dir: &str) -> BTreeSet<String> {
    let mut all: Vec<String> = DIRS.iter().map(|s| s.to_string()).collect();
    all.extend(all_files().into_iter().map(|(p, _)| p));
    all.extend(LINKS.iter().map(|(p, _)| p.to_string()));
    all.extend(["records".to_string(), "slides".to_string()]);
    all.iter()
        .filter(|p| split(p).0 == dir)
        .map(|p| split(p).1.to_string())
        .collect()
}

fn open_store(root: &Path, pse_file: &str) -> (Store, Pse) {
    let store = Store::open(root).unwrap();
    let bytes = fs::read(testdata().join(pse_file)).unwrap();
    let pse = pse::open(&bytes, &passphrase()).unwrap();
    (store, pse)
}

fn fixture_vfs(root: &Path) -> Vfs {
    let (store, pse) = open_store(root, PSE_FILE);
    let ring = store.unlock(&pse).unwrap();
    Vfs::new(store, ring, caller()).unwrap()
}

/// Copies a tree, keeping symlinks as symlinks and making everything writable.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        let dst = to.join(e.file_name());
        if ft.is_dir() {
            copy_tree(&e.path(), &dst);
        } else if ft.is_symlink() {
            symlink(fs::read_link(e.path()).unwrap(), &dst).unwrap();
        } else {
            fs::copy(e.path(), &dst).unwrap();
            fs::set_permissions(&dst, fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------
// An independent decoder, written from docs/FORMAT.md
// ---------------------------------------------------------------------------

/// docs/FORMAT.md, implemented again from the document with the raw crates
/// (base64, sha2, hkdf, aes-gcm-siv 0.11 — the reference, not the 0.12
/// tresor runs —, argon2, rsa) and none of tresor's own
/// code: the PSE opened by §7, envelopes unwrapped by §4, every key derived
/// by §2 from its spelled-out HKDF info string, names by §6, contents by §5.
/// If tresor and this module disagree, one of them departs from the spec.
mod spec {
    use aes_gcm_siv_ref::aead::{Aead, KeyInit, Payload};
    use aes_gcm_siv_ref::{Aes256GcmSiv, Nonce};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::{Oaep, RsaPrivateKey};
    use sha2::{Digest, Sha256};
    use std::collections::BTreeMap;
    use std::fs;
    use std::path::{Path, PathBuf};

    /// §1: base64url without padding.
    pub fn b64d(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).expect("base64url")
    }

    pub fn b64e(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }

    pub fn sha256(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    /// §2: HKDF-SHA256, no salt, 32-byte output, `info` as concatenated.
    pub fn hkdf(key: &[u8; 32], info: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(None, key)
            .expand(info, &mut out)
            .unwrap();
        out
    }

    pub fn name_key(k: &[u8; 32]) -> [u8; 32] {
        hkdf(k, b"tresor/name/v1")
    }

    pub fn file_key(k: &[u8; 32], file_id: &[u8; 16]) -> [u8; 32] {
        let mut info = b"tresor/file/v1".to_vec();
        info.extend_from_slice(file_id);
        hkdf(k, &info)
    }

    /// §2 / §4a: hex of the first 16 bytes of HKDF(K, "tresor/key-id/v1").
    pub fn key_id(k: &[u8; 32]) -> String {
        hex::encode(&hkdf(k, b"tresor/key-id/v1")[..16])
    }

    /// §2: opens `nonce (12) || ciphertext || tag (16)`.
    pub fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 28 {
            return None;
        }
        let (nonce, msg) = sealed.split_at(12);
        Aes256GcmSiv::new(key.into())
            .decrypt(Nonce::from_slice(nonce), Payload { msg, aad })
            .ok()
    }

    /// §7: the transport private key of a PSE, from its passphrase.
    pub fn pse_transport_key(bytes: &[u8], passphrase: &[u8]) -> RsaPrivateKey {
        let f: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let s = |k: &str| serde_json::to_string(&f[k]).unwrap();
        // "the first seven fields serialised as compact JSON in exactly the order shown"
        let body = format!(
            "{{\"tresor_pse\":{},\"user\":{},\"kdf\":{{\"m_kib\":{},\"t\":{},\"p\":{}}},\"salt\":{},\"sign_public\":{},\"transport_public\":{},\"trust_anchor\":{}}}",
            f["tresor_pse"], s("user"), f["kdf"]["m_kib"], f["kdf"]["t"], f["kdf"]["p"],
            s("salt"), s("sign_public"), s("transport_public"), s("trust_anchor")
        );
        let sealed = f["sealed"].as_str().unwrap();
        assert_eq!(
            hex::encode(sha256(format!("{body}{sealed}").as_bytes())),
            f["check"].as_str().unwrap(),
            "check = hex(SHA-256(body || sealed))"
        );
        let n = |k: &str| u32::try_from(f["kdf"][k].as_u64().unwrap()).unwrap();
        let params = argon2::Params::new(n("m_kib"), n("t"), n("p"), Some(32)).unwrap();
        let mut kek = [0u8; 32];
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password_into(passphrase, &b64d(f["salt"].as_str().unwrap()), &mut kek)
            .unwrap();
        let mut aad = b"tresor-pse/v1\0".to_vec();
        aad.extend_from_slice(body.as_bytes());
        let secrets = open(&kek, &aad, &b64d(sealed)).expect("the PSE opens by the spec");
        // u32 len || signing key (PKCS#8) || u32 len || transport key (PKCS#8)
        let l1 = u32::from_be_bytes(secrets[0..4].try_into().unwrap()) as usize;
        let t = &secrets[4 + l1..];
        let l2 = u32::from_be_bytes(t[0..4].try_into().unwrap()) as usize;
        assert_eq!(t.len(), 4 + l2, "no trailing bytes");
        RsaPrivateKey::from_pkcs8_der(&t[4..]).unwrap()
    }

    /// The group keys K of every epoch a holder can unwrap (§4).
    #[derive(Default)]
    pub struct Keys {
        pub groups: BTreeMap<String, BTreeMap<u32, [u8; 32]>>,
    }

    impl Keys {
        /// Unwraps, for each data group of the store at `root`, the
        /// envelopes of the holder whose transport key is `key`.
        pub fn unwrap(root: &Path, key: &RsaPrivateKey) -> Keys {
            use rsa::pkcs8::EncodePublicKey;
            let m: serde_json::Value =
                serde_json::from_slice(&fs::read(root.join("tresor.json")).unwrap()).unwrap();
            let store_id = m["store_id"].as_str().unwrap();
            let spki = key.to_public_key().to_public_key_der().unwrap();
            let fpr = hex::encode(sha256(spki.as_bytes()));
            let mut keys = Keys::default();
            for e in fs::read_dir(root.join("keys")).unwrap() {
                let p = e.unwrap().path();
                let group = p.file_stem().unwrap().to_str().unwrap().to_string();
                let kf: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
                for ep in kf["epochs"].as_array().unwrap() {
                    let epoch = ep["epoch"].as_u64().unwrap() as u32;
                    for env in ep["envelopes"].as_array().unwrap() {
                        if env["key_fpr"].as_str().unwrap() != fpr {
                            continue;
                        }
                        let label = format!("tresor-group-key/v1/{store_id}/{group}/{epoch}");
                        let k = key
                            .decrypt(
                                Oaep::new_with_label::<Sha256, _>(label),
                                &b64d(env["wrapped"].as_str().unwrap()),
                            )
                            .expect("the envelope opens by the spec");
                        keys.groups
                            .entry(group.clone())
                            .or_default()
                            .insert(epoch, k.try_into().expect("K is 32 bytes"));
                    }
                }
            }
            keys
        }

        pub fn k(&self, group: &str, epoch: u32) -> &[u8; 32] {
            &self.groups[group][&epoch]
        }
    }

    /// §6.2 / §6.3: the backing name of plaintext `name` in the backing
    /// directory `dir` (its `tresor.dirid` gives id and epoch).
    pub fn backing_name(keys: &Keys, group: &str, dir: &Path, name: &str) -> String {
        let raw = fs::read(dir.join("tresor.dirid")).unwrap();
        assert_eq!(raw.len(), 28);
        assert_eq!(
            &raw[0..8],
            b"TRSD\x00\x01\x00\x00",
            "magic, version 1, flags 0"
        );
        let epoch = u32::from_be_bytes(raw[8..12].try_into().unwrap());
        let mut aad = b"TRN1".to_vec();
        aad.extend_from_slice(&raw[12..28]);
        let mut padded = name.as_bytes().to_vec();
        let n = 16 - padded.len() % 16;
        padded.resize(padded.len() + n, n as u8);
        let nk = name_key(keys.k(group, epoch));
        let ct = Aes256GcmSiv::new((&nk).into())
            .encrypt(
                Nonce::from_slice(&[0; 12]),
                Payload {
                    msg: &padded,
                    aad: &aad,
                },
            )
            .unwrap();
        let enc = b64e(&ct);
        if enc.len() > 255 {
            format!("tresor.long.{}", b64e(&sha256(enc.as_bytes())))
        } else {
            enc
        }
    }

    /// Backing path of plaintext `path` ("group/a/b") under store `root`.
    pub fn backing(root: &Path, keys: &Keys, path: &str) -> PathBuf {
        let mut parts = path.split('/');
        let group = parts.next().unwrap();
        let mut p = root.join("groups").join(group);
        for part in parts {
            let b = backing_name(keys, group, &p, part);
            p.push(b);
        }
        p
    }

    /// §5 (and §6.5 for symlink targets): header, then the blocks with the
    /// file key of the header's epoch and file id, each under its AAD.
    pub fn decode_file(keys: &Keys, group: &str, raw: &[u8]) -> Vec<u8> {
        assert_eq!(&raw[0..4], b"TRSR", "magic");
        assert_eq!(u16::from_be_bytes([raw[4], raw[5]]), 1, "version");
        assert_eq!(u16::from_be_bytes([raw[6], raw[7]]), 0, "flags");
        let epoch = u32::from_be_bytes(raw[8..12].try_into().unwrap());
        let id: [u8; 16] = raw[12..28].try_into().unwrap();
        let fk = file_key(keys.k(group, epoch), &id);
        let chunks: Vec<&[u8]> = raw[28..].chunks(4096 + 28).collect();
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let mut aad = b"TRB1".to_vec();
            aad.extend_from_slice(&id);
            aad.extend_from_slice(&(i as u64).to_be_bytes());
            aad.push(u8::from(i + 1 == chunks.len()));
            out.extend(open(&fk, &aad, c).expect("block opens by the spec"));
        }
        out
    }
}

/// The fixture admin's group keys, unwrapped by the spec decoder. The
/// tampering tests use them only to aim (an attacker has no keys).
fn spec_keys() -> spec::Keys {
    let key = spec::pse_transport_key(&fs::read(testdata().join(PSE_FILE)).unwrap(), &passphrase());
    spec::Keys::unwrap(&testdata().join(STORE_DIR), &key)
}

fn backing(root: &Path, keys: &spec::Keys, path: &str) -> PathBuf {
    spec::backing(root, keys, path)
}

fn hex_sha(data: &[u8]) -> String {
    hex::encode(spec::sha256(data))
}

// ---------------------------------------------------------------------------
// The fixture still reads
// ---------------------------------------------------------------------------

fn expected() -> serde_json::Value {
    serde_json::from_slice(&fs::read(testdata().join(EXPECTED_FILE)).unwrap()).unwrap()
}

#[test]
fn fixture_reads_exactly_through_vfs() {
    let vfs = fixture_vfs(&testdata().join(STORE_DIR));
    assert_eq!(vfs.groups(), ["records", "slides"]);
    assert_eq!(list(&vfs, "").unwrap(), expected_children(""));
    let exp = expected();
    let entries = exp["entries"].as_array().unwrap();
    assert_eq!(entries.len(), DIRS.len() + all_files().len() + LINKS.len());
    for e in entries {
        let path = e["path"].as_str().unwrap();
        let attr = resolve(&vfs, path).unwrap_or_else(|err| panic!("{path}: {err}"));
        match e["kind"].as_str().unwrap() {
            "dir" => {
                assert_eq!(attr.kind, Kind::Dir, "{path}");
                assert_eq!(list(&vfs, path).unwrap(), expected_children(path), "{path}");
            }
            "file" => {
                assert_eq!(attr.kind, Kind::File, "{path}");
                let size = e["size"].as_u64().unwrap();
                assert_eq!(attr.size, size, "{path}: stat size");
                let data = read_all(&vfs, attr.ino, &mut Vec::new())
                    .unwrap_or_else(|err| panic!("{path}: {err}"));
                assert_eq!(data.len() as u64, size, "{path}");
                assert_eq!(hex_sha(&data), e["sha256"].as_str().unwrap(), "{path}");
                assert!(data == content(path, size as usize), "{path}: content");
            }
            "symlink" => {
                assert_eq!(attr.kind, Kind::Symlink, "{path}");
                let target = e["target"].as_str().unwrap();
                assert_eq!(vfs.readlink(attr.ino).unwrap(), target.as_bytes());
                assert_eq!(attr.size, target.len() as u64);
            }
            k => panic!("unknown kind {k}"),
        }
    }
    for group in ["records", "slides"] {
        assert_eq!(
            list(&vfs, group).unwrap(),
            expected_children(group),
            "{group}"
        );
    }
}

#[test]
fn fixture_reads_by_the_spec() {
    let root = testdata().join(STORE_DIR);
    let keys = spec_keys();
    // The admin holds epoch 1 of both groups; the reader only slides.
    let held: Vec<(&str, Vec<u32>)> = keys
        .groups
        .iter()
        .map(|(g, e)| (g.as_str(), e.keys().copied().collect()))
        .collect();
    assert_eq!(held, [("records", vec![1]), ("slides", vec![1])]);
    let reader = spec::Keys::unwrap(
        &root,
        &spec::pse_transport_key(
            &fs::read(testdata().join(READER_PSE_FILE)).unwrap(),
            &passphrase(),
        ),
    );
    assert_eq!(reader.groups.keys().collect::<Vec<_>>(), ["slides"]);
    assert_eq!(reader.k("slides", 1), keys.k("slides", 1));
    for (path, size) in all_files() {
        let group = path.split('/').next().unwrap();
        let b = backing(&root, &keys, &path);
        let raw = fs::read(&b).unwrap_or_else(|e| panic!("{path} at {}: {e}", b.display()));
        // §5.3: H + O·blocks(p) + p.
        assert_eq!(
            raw.len() as u64,
            28 + 28 * (size as u64).div_ceil(4096).max(1) + size as u64
        );
        assert_eq!(raw.len() as u64, ciphertext_size(size as u64), "{path}");
        assert!(
            spec::decode_file(&keys, group, &raw) == content(&path, size),
            "{path}"
        );
    }
    // The long name: hashed backing name plus its side file.
    let b = backing(&root, &keys, &long_path());
    let bname = b.file_name().unwrap().to_str().unwrap();
    assert!(bname.starts_with("tresor.long."), "{bname}");
    assert_eq!(bname.len(), "tresor.long.".len() + 43);
    let side = fs::read_to_string(b.with_file_name(format!("{bname}.name"))).unwrap();
    assert_eq!(side.len(), 299, "200 bytes → 208 padded → 224 sealed → 299");
    assert_eq!(
        spec::b64e(&spec::sha256(side.as_bytes())),
        bname["tresor.long.".len()..]
    );
    // Symlink targets: base64url(header || nonce || ct || tag), block 0, last.
    for (path, target) in LINKS {
        let b = backing(&root, &keys, path);
        let enc = fs::read_link(&b).unwrap();
        let raw = spec::b64d(enc.to_str().unwrap());
        assert_eq!(raw.len(), 28 + 12 + target.len() + 16);
        assert_eq!(spec::decode_file(&keys, "records", &raw), target.as_bytes());
    }
    // Directory id files.
    for d in ["records", "slides", "records/notes"] {
        let raw = fs::read(backing(&root, &keys, d).join("tresor.dirid")).unwrap();
        assert_eq!(raw.len(), 28);
        assert_eq!(&raw[..12], b"TRSD\x00\x01\x00\x00\x00\x00\x00\x01", "{d}");
    }
}

/// §2, §4a: in a store with a signed directory, the key id the directory
/// names for each epoch is hex(first 16 bytes of HKDF(K, "tresor/key-id/v1")),
/// with K unwrapped by the spec decoder — for the first epoch and for the
/// one a revocation rotates to.
#[test]
fn key_ids_in_the_directory_match_the_spec() {
    let ts = crate::util::TestStore::new(&["g"]);
    let st = ts.store.to_str().unwrap().to_string();
    for args in [
        &["role", "add", &st, "nurses"][..],
        &["grant", &st, "nurses", "g", "r"],
    ] {
        let out = ts.admin(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ts.add_user("bob", "nurses");
    let out = ts.admin(&["grant", &st, "nurses", "g", "-"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("rotated the key of g to epoch 2"));
    let key = spec::pse_transport_key(&fs::read(&ts.pse).unwrap(), b"test passphrase");
    let keys = spec::Keys::unwrap(&ts.store, &key);
    // directory.json is {"signed":<BODY>,"signature":"…"}\n (§4a).
    let d: serde_json::Value =
        serde_json::from_slice(&fs::read(ts.store.join("directory.json")).unwrap()).unwrap();
    let g = &d["signed"]["datagroups"]["g"];
    assert_eq!(g["epoch"], 2);
    let ids = g["key_ids"].as_object().unwrap();
    assert_eq!(ids.len(), 2, "{g}");
    for epoch in [1u32, 2] {
        let id = spec::key_id(keys.k("g", epoch));
        assert_eq!(id.len(), 32);
        assert_eq!(ids[&epoch.to_string()], id.as_str(), "epoch {epoch}");
    }
    assert_ne!(keys.k("g", 1), keys.k("g", 2));
}

#[test]
fn fixture_json_files_match_the_spec() {
    let root = testdata().join(STORE_DIR);
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join("tresor.json")).unwrap()).unwrap();
    let keys: BTreeSet<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "tresor_store",
            "store_id",
            "created",
            "features",
            "kdf_defaults",
            "block_size",
            "admin"
        ])
    );
    assert_eq!(m["tresor_store"], 1);
    assert_eq!(m["block_size"], 4096);
    assert_eq!(
        m["features"],
        serde_json::json!(["content-aes256gcmsiv-4k", "names-aes256gcmsiv", "longnames"])
    );
    let store_id = m["store_id"].as_str().unwrap();
    assert_eq!(store_id.len(), 32);

    // The key file: OAEP-SHA256 with the label of FORMAT.md.
    let bytes = fs::read(testdata().join(PSE_FILE)).unwrap();
    let f: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let transport = spec::pse_transport_key(&bytes, &passphrase());
    for group in ["records", "slides"] {
        let k: serde_json::Value =
            serde_json::from_slice(&fs::read(root.join(format!("keys/{group}.json"))).unwrap())
                .unwrap();
        assert_eq!(k["tresor_keys"], 1);
        assert_eq!(k["datagroup"], group);
        assert_eq!(k["current_epoch"], 1);
        let env = &k["epochs"][0]["envelopes"][0];
        assert_eq!(env["holder"], "admin");
        // key_fpr: hex SHA-256 of the holder's transport public key (SPKI DER).
        assert_eq!(
            env["key_fpr"].as_str().unwrap(),
            hex_sha(&spec::b64d(f["transport_public"].as_str().unwrap()))
        );
        let wrapped = spec::b64d(env["wrapped"].as_str().unwrap());
        assert_eq!(wrapped.len(), 384, "RSA-3072");
        let unwrap = |label: String| {
            transport.decrypt(
                rsa::Oaep::new_with_label::<sha2::Sha256, _>(label),
                &wrapped,
            )
        };
        let key = unwrap(format!("tresor-group-key/v1/{store_id}/{group}/1")).unwrap();
        assert_eq!(key.len(), 32);
        assert!(unwrap("tresor-group-key/v1/x/y/1".into()).is_err());
        assert!(unwrap(format!("tresor-group-key/v1/{store_id}/{group}/2")).is_err());
    }

    // The PSE: fields in order, the floor KDF, 16 bytes of salt; the
    // checksum rule, AEAD and secrets layout are checked by
    // spec::pse_transport_key above.
    let fields: Vec<&str> = f.as_object().unwrap().keys().map(String::as_str).collect();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let mut at = 0;
    for k in [
        "tresor_pse",
        "user",
        "kdf",
        "salt",
        "sign_public",
        "transport_public",
        "trust_anchor",
        "sealed",
        "check",
    ] {
        assert!(fields.contains(&k), "{k}");
        let i = text.find(&format!("\"{k}\":")).unwrap();
        assert!(i > at, "{k} out of order");
        at = i;
    }
    assert_eq!(spec::b64d(f["salt"].as_str().unwrap()).len(), 16);
    let kdf = KdfParams::MIN;
    assert_eq!(
        f["kdf"],
        serde_json::json!({"m_kib": kdf.m_kib, "t": kdf.t, "p": kdf.p})
    );
    assert_eq!(
        f["trust_anchor"], f["sign_public"],
        "the admin is its own anchor"
    );
}

#[test]
fn size_formula_worked_examples() {
    // The table of docs/FORMAT.md.
    for (plain, cipher) in [
        (0u64, 56u64),
        (1, 57),
        (4095, 4151),
        (4096, 4152),
        (4097, 4181),
        (10000, 10112),
    ] {
        assert_eq!(ciphertext_size(plain), cipher, "{plain}");
        assert_eq!(plaintext_size(cipher), Some(plain), "{cipher}");
    }
    for bad in [0u64, 27, 28, 55, 28 + 4124 + 28, 28 + 4124 + 1] {
        assert_eq!(plaintext_size(bad), None, "{bad}");
    }
    assert_eq!(HEADER_LEN, 28);
    assert_eq!(CT_BLOCK_SIZE, BLOCK_SIZE + 28);
    assert_eq!(block_offset(2), 28 + 2 * 4124);
    let h = FileHeader {
        version: 1,
        epoch: 0x0102_0304,
        file_id: [0xAA; 16],
    };
    let mut want = b"TRSR\x00\x01\x00\x00\x01\x02\x03\x04".to_vec();
    want.extend_from_slice(&[0xAA; 16]);
    assert_eq!(h.encode().to_vec(), want);
    let mut aad = b"TRB1".to_vec();
    aad.extend_from_slice(&[0xAA; 16]);
    aad.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 5, 1]);
    assert_eq!(block_aad(&[0xAA; 16], 5, true).to_vec(), aad);
}

#[test]
fn reader_sees_only_its_data_group() {
    let root = testdata().join(STORE_DIR);
    let (store, pse) = open_store(&root, READER_PSE_FILE);
    let ring = store.unlock(&pse).unwrap();
    assert_eq!(ring.groups().collect::<Vec<_>>(), ["slides"]);
    let vfs = Vfs::new(store, ring, caller()).unwrap();
    assert_eq!(
        list(&vfs, "").unwrap(),
        BTreeSet::from(["slides".to_string()])
    );
    let e = resolve(&vfs, "records/10000.bin").unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT);
    let attr = resolve(&vfs, "slides/slide-001.svs").unwrap();
    let data = read_all(&vfs, attr.ino, &mut Vec::new()).unwrap();
    assert!(data == content("slides/slide-001.svs", 10000));
}

#[test]
fn pse_wrong_passphrase_and_corruption_differ() {
    let bytes = fs::read(testdata().join(PSE_FILE)).unwrap();
    let e = pse::open(&bytes, b"wrong horse battery staple").unwrap_err();
    assert!(matches!(e, PseError::WrongPassphrase), "{e}");
    assert!(e.to_string().starts_with("wrong passphrase"), "{e}");

    let text = String::from_utf8(bytes.clone()).unwrap();
    for field in ["\"sealed\": \"", "\"salt\": \"", "\"trust_anchor\": \""] {
        let i = text.find(field).unwrap() + field.len() + 5;
        let mut b = bytes.clone();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        let e = pse::open(&b, &passphrase()).unwrap_err();
        assert!(matches!(e, PseError::Corrupt(_)), "{field}: {e}");
        assert!(e.to_string().contains("corrupted"), "{e}");
        assert!(e.to_string().contains("checksum"), "{e}");
    }
    let e = pse::open(&bytes[..bytes.len() / 2], &passphrase()).unwrap_err();
    assert!(matches!(e, PseError::Corrupt(_)), "{e}");

    // 2 is a token PSE (FORMAT.md §7a): this file is a malformed one.
    let token = text.replacen("\"tresor_pse\": 1", "\"tresor_pse\": 2", 1);
    let e = pse::open(token.as_bytes(), &passphrase()).unwrap_err();
    assert!(matches!(e, PseError::Corrupt(_)), "{e}");
    let newer = text.replacen("\"tresor_pse\": 1", "\"tresor_pse\": 3", 1);
    let e = pse::open(newer.as_bytes(), &passphrase()).unwrap_err();
    assert!(matches!(e, PseError::TooNew(3)), "{e}");
    assert!(e.to_string().contains("upgrade tresor"), "{e}");
}

/// The fixture admin's PSE with other Argon2id parameters and its checksum
/// recomputed by the spec (§7) — what an attacker can write.
fn crafted_pse(m_kib: u32, t: u32, p: u32) -> Vec<u8> {
    let mut f: serde_json::Value =
        serde_json::from_slice(&fs::read(testdata().join(PSE_FILE)).unwrap()).unwrap();
    f["kdf"] = serde_json::json!({"m_kib": m_kib, "t": t, "p": p});
    let s = |k: &str| serde_json::to_string(&f[k]).unwrap();
    let body = format!(
        "{{\"tresor_pse\":{},\"user\":{},\"kdf\":{{\"m_kib\":{m_kib},\"t\":{t},\"p\":{p}}},\"salt\":{},\"sign_public\":{},\"transport_public\":{},\"trust_anchor\":{}}}",
        f["tresor_pse"], s("user"), s("salt"), s("sign_public"), s("transport_public"), s("trust_anchor")
    );
    f["check"] = hex_sha(format!("{body}{}", f["sealed"].as_str().unwrap()).as_bytes()).into();
    serde_json::to_vec_pretty(&f).unwrap()
}

/// docs/THREAT-MODEL.md: a crafted PSE cannot make tresor allocate more
/// than 1 GiB or run more than 16 passes. `tresor passwd` on a PSE one KiB
/// over the memory ceiling, run with a 512 MiB address-space limit, ends
/// with the ceiling error (exit 4) — it never tried to allocate. The
/// control: the same PSE exactly at the ceiling, under the same limit,
/// does try, and fails for lack of memory (a clear error, not an abort).
/// Passes and lanes over the ceiling, and each floor, are refused too.
#[test]
fn crafted_pse_work_factors_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = tmp.path().join("pass");
    fs::write(&pass, passphrase()).unwrap();
    let new = tmp.path().join("new");
    fs::write(&new, "another passphrase\n").unwrap();
    let passwd = |m: u32, t: u32, p: u32| {
        let pse = tmp.path().join(format!("m{m}-t{t}-p{p}.pse"));
        fs::write(&pse, crafted_pse(m, t, p)).unwrap();
        let out = crate::util::isolate(&mut std::process::Command::new("sh"))
            .arg("-c")
            // 512 MiB of address space: far below the 1 GiB at the ceiling.
            .arg("ulimit -v 524288 && exec \"$@\"")
            .arg("sh")
            .arg(env!("CARGO_BIN_EXE_tresor"))
            .args(["passwd", "--pse"])
            .arg(&pse)
            .arg("--passphrase-file")
            .arg(&pass)
            .arg("--new-passphrase-file")
            .arg(&new)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), err)
    };
    let (code, err) = passwd(1024 * 1024 + 1, 1, 1);
    assert_eq!(code, Some(4), "{err}");
    assert!(
        err.contains(
            "m=1048577 KiB, t=1, p=1 exceed the ceiling m=1048576 KiB, t=16, p=8; refusing"
        ),
        "{err}"
    );
    assert!(!err.contains("memory allocation"), "{err}");
    // The control: at the ceiling the work is attempted, and the limit stops it.
    let (code, err) = passwd(1024 * 1024, 1, 1);
    assert!(
        err.contains("Argon2id needs 1024 MiB of memory") && !err.contains("ceiling"),
        "{code:?}: {err}"
    );
    assert!(
        !err.contains("panicked") && code.is_some(),
        "{code:?}: {err}"
    );
    // The PSE is fine, the process is short of memory: not "corrupted" (4).
    assert_eq!(code, Some(1), "{err}");
    for (m, t, p, bound) in [
        (8192, 17, 1, "exceed the ceiling"),
        (8192, 1, 9, "exceed the ceiling"),
        (8191, 1, 1, "below the floor"),
        (8192, 0, 1, "below the floor"),
        (8192, 1, 0, "below the floor"),
    ] {
        let (code, err) = passwd(m, t, p);
        assert_eq!(code, Some(4), "m={m} t={t} p={p}: {err}");
        assert!(err.contains(bound), "m={m} t={t} p={p}: {err}");
    }
    // The fixture's own parameters, through the same crafting: it opens,
    // so the refusals above are the parameters' doing.
    let (code, err) = passwd(8192, 1, 1);
    assert_eq!(code, Some(0), "{err}");
}

// ---------------------------------------------------------------------------
// Tampering
// ---------------------------------------------------------------------------

/// What a tampered store must do.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Reading the probe path fails with EIO at some step (lookup, open,
    /// read or readlink) and no plaintext byte comes out.
    Eio,
    /// Reading fails with EACCES (a key the user does not hold).
    Eacces,
    /// The probe name is not listed in its directory and looks up as ENOENT;
    /// the directory lists nothing the fixture does not have.
    Hidden,
    /// Not listed in its directory, but a lookup by its (hash-bound) name
    /// still finds the authentic file, with its authentic content.
    Unlisted,
    /// `Store::open` refuses with a message containing this text.
    StoreRefused(&'static str),
    /// `Store::unlock` fails with a message containing this text.
    UnlockRefused(&'static str),
    /// NOT detected — a documented limit: the probe path reads as the
    /// plaintext of the fixture file named here.
    Limit(&'static str),
}

/// Where a tampering is applied: a copy of the fixture.
struct Ctx<'a> {
    root: &'a Path,
    keys: &'a spec::Keys,
}

impl Ctx<'_> {
    fn path(&self, plain: &str) -> PathBuf {
        backing(self.root, self.keys, plain)
    }
    fn read(&self, plain: &str) -> Vec<u8> {
        fs::read(self.path(plain)).unwrap()
    }
    fn write(&self, plain: &str, bytes: &[u8]) {
        fs::write(self.path(plain), bytes).unwrap();
    }
    fn edit(&self, plain: &str, f: impl FnOnce(&mut Vec<u8>)) {
        let mut b = self.read(plain);
        f(&mut b);
        self.write(plain, &b);
    }
    fn flip(&self, plain: &str, at: u64) {
        self.edit(plain, |b| b[at as usize] ^= 0x01);
    }
    fn edit_text(&self, rel: &str, f: impl FnOnce(String) -> String) {
        let p = self.root.join(rel);
        let s = fs::read_to_string(&p).unwrap();
        fs::write(&p, f(s)).unwrap();
    }
    fn edit_json(&self, rel: &str, f: impl FnOnce(&mut serde_json::Value)) {
        let p = self.root.join(rel);
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        f(&mut v);
        fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }
}

fn flip_char(s: &mut [u8], at: usize) {
    s[at] = if s[at] == b'A' { b'B' } else { b'A' };
}

struct Case {
    name: &'static str,
    /// The plaintext path whose reading shows the outcome.
    probe: &'static str,
    expect: Expect,
    tamper: fn(&Ctx),
}

const F10K: &str = "records/10000.bin";
const F4096: &str = "records/notes/4096.bin";
const B1: u64 = 28 + 4124; // offset of block 1
const NONCE: u64 = 12;

/// Every tampering, with what it must produce. Mirrored for readers in
/// tests/testdata/tamper-cases.md. One line per case: kept as a table.
#[rustfmt::skip]
fn tamper_cases() -> Vec<Case> {
    use Expect::*;
    vec![
        // --- file header ---
        Case { name: "header magic flipped", probe: F10K, expect: Eio,
            tamper: |c| c.flip(F10K, 0) },
        Case { name: "header version raised to 2", probe: F10K, expect: Eio,
            tamper: |c| c.edit(F10K, |b| b[5] = 2) },
        Case { name: "header flags set", probe: F10K, expect: Eio,
            tamper: |c| c.edit(F10K, |b| b[7] = 1) },
        Case { name: "header file id bit flipped", probe: F10K, expect: Eio,
            tamper: |c| c.flip(F10K, 12) },
        Case { name: "header epoch changed to one we hold no key for", probe: F10K, expect: Eacces,
            tamper: |c| c.edit(F10K, |b| b[8..12].copy_from_slice(&2u32.to_be_bytes())) },
        Case { name: "header replaced by another file's header", probe: F10K, expect: Eio,
            tamper: |c| { let h = c.read(F4096); c.edit(F10K, |b| b[..28].copy_from_slice(&h[..28])) } },
        // --- blocks ---
        Case { name: "block 1 nonce bit flipped", probe: F10K, expect: Eio,
            tamper: |c| c.flip(F10K, B1) },
        Case { name: "block 1 ciphertext bit flipped", probe: F10K, expect: Eio,
            tamper: |c| c.flip(F10K, B1 + NONCE + 100) },
        Case { name: "block 1 tag bit flipped", probe: F10K, expect: Eio,
            tamper: |c| c.flip(F10K, B1 + 4124 - 1) },
        Case { name: "last (partial) block tag bit flipped", probe: F10K, expect: Eio,
            tamper: |c| c.edit(F10K, |b| { let n = b.len(); b[n - 1] ^= 0x80 }) },
        Case { name: "blocks 0 and 1 swapped", probe: F10K, expect: Eio,
            tamper: |c| c.edit(F10K, |b| {
                let b0 = b[28..B1 as usize].to_vec();
                let b1 = b[B1 as usize..(B1 + 4124) as usize].to_vec();
                b[28..B1 as usize].copy_from_slice(&b1);
                b[B1 as usize..(B1 + 4124) as usize].copy_from_slice(&b0);
            }) },
        Case { name: "block 0 copied from another file of the same group", probe: F10K, expect: Eio,
            tamper: |c| { let o = c.read(F4096); c.edit(F10K, |b| b[28..B1 as usize].copy_from_slice(&o[28..B1 as usize])) } },
        Case { name: "block 0 copied from a file of the other group", probe: F10K, expect: Eio,
            tamper: |c| { let o = c.read("slides/slide-001.svs"); c.edit(F10K, |b| b[28..B1 as usize].copy_from_slice(&o[28..B1 as usize])) } },
        // --- truncation and extension ---
        Case { name: "cut at a block boundary: last block dropped (size formula says 8192)", probe: F10K, expect: Eio,
            tamper: |c| c.edit(F10K, |b| b.truncate(28 + 2 * 4124)) },
        Case { name: "cut at a block boundary: 4097-byte file loses its 1-byte last block", probe: "records/notes/4097.bin", expect: Eio,
            tamper: |c| c.edit("records/notes/4097.bin", |b| b.truncate(28 + 4124)) },
        Case { name: "middle block removed", probe: F10K, expect: Eio,
            tamper: |c| c.edit(F10K, |b| { b.drain(B1 as usize..(B1 + 4124) as usize); }) },
        Case { name: "cut inside the last block's overhead (no plaintext size maps)", probe: F10K, expect: Eio,
            tamper: |c| c.edit(F10K, |b| b.truncate(28 + 2 * 4124 + 10)) },
        Case { name: "cut 10 bytes inside the last block", probe: F10K, expect: Eio,
            tamper: |c| c.edit(F10K, |b| { let n = b.len(); b.truncate(n - 10) }) },
        Case { name: "cut to the header only", probe: F10K, expect: Eio,
            tamper: |c| c.edit(F10K, |b| b.truncate(28)) },
        Case { name: "cut to zero bytes", probe: F10K, expect: Eio,
            tamper: |c| c.edit(F10K, |b| b.clear()) },
        Case { name: "block appended to a block-aligned file (copy of its own block 0)", probe: F4096, expect: Eio,
            tamper: |c| c.edit(F4096, |b| { let blk = b[28..].to_vec(); b.extend(blk) }) },
        Case { name: "block appended from another file", probe: "records/notes/4097.bin", expect: Eio,
            tamper: |c| { let o = c.read(F10K); c.edit("records/notes/4097.bin", |b| b.extend_from_slice(&o[28..B1 as usize])) } },
        Case { name: "empty file: tag of its sealed empty block flipped", probe: "records/empty.txt", expect: Eio,
            tamper: |c| c.edit("records/empty.txt", |b| { let n = b.len(); b[n - 1] ^= 1 }) },
        Case { name: "empty file: header only (its empty block dropped)", probe: "records/empty.txt", expect: Eio,
            tamper: |c| c.edit("records/empty.txt", |b| b.truncate(28)) },
        Case { name: "empty file: replaced by another file's sealed empty block", probe: "records/empty.txt", expect: Eio,
            tamper: |c| { let o = c.read("records/one.txt"); c.edit("records/empty.txt", |b| b[28..].copy_from_slice(&o[28..56])) } },
        // --- moving files and names ---
        Case { name: "file moved into the other group under a validly encrypted name", probe: "slides/moved.bin", expect: Eio,
            tamper: |c| { let o = c.read(F10K); fs::write(c.path("slides/moved.bin"), o).unwrap() } },
        Case { name: "file moved into the other group keeping its backing name", probe: "slides/10000.bin", expect: Hidden,
            tamper: |c| { let from = c.path(F10K); fs::rename(&from, c.root.join("groups/slides").join(from.file_name().unwrap())).unwrap() } },
        Case { name: "name moved to another directory (notes/4095.bin -> records/)", probe: "records/4095.bin", expect: Hidden,
            tamper: |c| { let from = c.path("records/notes/4095.bin"); fs::rename(&from, c.root.join("groups/records").join(from.file_name().unwrap())).unwrap() } },
        Case { name: "the moved name is gone from its old directory", probe: "records/notes/4095.bin", expect: Hidden,
            tamper: |c| { let from = c.path("records/notes/4095.bin"); fs::rename(&from, c.root.join("groups/records").join(from.file_name().unwrap())).unwrap() } },
        Case { name: "encrypted name: one character changed", probe: "records/one.txt", expect: Hidden,
            tamper: |c| { let from = c.path("records/one.txt"); let mut n = from.file_name().unwrap().to_str().unwrap().as_bytes().to_vec(); flip_char(&mut n, 3); fs::rename(&from, from.with_file_name(String::from_utf8(n).unwrap())).unwrap() } },
        Case { name: "directory id flipped: its entries no longer decrypt", probe: F4096, expect: Hidden,
            tamper: |c| { let p = c.path("records/notes").join("tresor.dirid"); let mut b = fs::read(&p).unwrap(); b[20] ^= 1; fs::write(&p, b).unwrap() } },
        Case { name: "directory id file removed", probe: F4096, expect: Eio,
            tamper: |c| fs::remove_file(c.path("records/notes").join("tresor.dirid")).unwrap() },
        Case { name: "directory id epoch changed", probe: F4096, expect: Eacces,
            tamper: |c| { let p = c.path("records/notes").join("tresor.dirid"); let mut b = fs::read(&p).unwrap(); b[11] = 9; fs::write(&p, b).unwrap() } },
        Case { name: "long name: side file flipped", probe: "records/LONG", expect: Unlisted,
            tamper: |c| { let p = side(&c.path(&long_path())); let mut b = fs::read(&p).unwrap(); flip_char(&mut b, 10); fs::write(&p, b).unwrap() } },
        Case { name: "long name: side file removed", probe: "records/LONG", expect: Unlisted,
            tamper: |c| fs::remove_file(side(&c.path(&long_path()))).unwrap() },
        Case { name: "long name: side file holds another entry's valid encoding", probe: "records/LONG", expect: Unlisted,
            tamper: |c| { let other = c.path("records/one.txt"); fs::write(side(&c.path(&long_path())), other.file_name().unwrap().as_encoded_bytes()).unwrap() } },
        // --- symlinks ---
        Case { name: "symlink target: ciphertext character changed", probe: "records/link", expect: Eio,
            tamper: |c| relink(c, "records/link", 60) },
        Case { name: "symlink target: header character changed", probe: "records/link", expect: Eio,
            tamper: |c| relink(c, "records/link", 20) },
        Case { name: "symlink target cut", probe: "records/link", expect: Eio,
            tamper: |c| { let p = c.path("records/link"); let t = fs::read_link(&p).unwrap(); let t = t.to_str().unwrap(); fs::remove_file(&p).unwrap(); symlink(&t[..t.len() - 8], &p).unwrap() } },
        Case { name: "symlink copied into the other group under a valid name", probe: "slides/link", expect: Eio,
            tamper: |c| { let t = fs::read_link(c.path("records/link")).unwrap(); symlink(t, c.path("slides/link")).unwrap() } },
        // --- manifest, key files ---
        Case { name: "manifest: newer store format", probe: F10K, expect: StoreRefused("upgrade tresor"),
            tamper: |c| c.edit_text("tresor.json", |s| s.replacen("\"tresor_store\": 1", "\"tresor_store\": 2", 1)) },
        Case { name: "manifest: unknown feature", probe: F10K, expect: StoreRefused("newer tresor"),
            tamper: |c| c.edit_json("tresor.json", |v| v["features"].as_array_mut().unwrap().push("time-travel".into())) },
        Case { name: "manifest: other block size", probe: F10K, expect: StoreRefused("block size 8192"),
            tamper: |c| c.edit_json("tresor.json", |v| v["block_size"] = 8192.into()) },
        Case { name: "manifest: store id changed (every envelope label changes)", probe: F10K, expect: UnlockRefused("altered or moved"),
            tamper: |c| c.edit_json("tresor.json", |v| v["store_id"] = "00112233445566778899aabbccddeeff".into()) },
        Case { name: "key envelope moved to the other group's key file", probe: "slides/slide-001.svs", expect: UnlockRefused("altered or moved"),
            tamper: |c| { let r: serde_json::Value = serde_json::from_slice(&fs::read(c.root.join("keys/records.json")).unwrap()).unwrap(); c.edit_json("keys/slides.json", |v| v["epochs"][0]["envelopes"][0] = r["epochs"][0]["envelopes"][0].clone()) } },
        Case { name: "key file copied over the other group's", probe: "slides/slide-001.svs", expect: UnlockRefused("names data group \"records\""),
            tamper: |c| { fs::copy(c.root.join("keys/records.json"), c.root.join("keys/slides.json")).unwrap(); } },
        Case { name: "key file copied over the other group's, group name edited", probe: "slides/slide-001.svs", expect: UnlockRefused("altered or moved"),
            tamper: |c| { fs::copy(c.root.join("keys/records.json"), c.root.join("keys/slides.json")).unwrap(); c.edit_json("keys/slides.json", |v| v["datagroup"] = "slides".into()) } },
        Case { name: "key file: epoch number of the envelope changed", probe: F10K, expect: UnlockRefused("altered or moved"),
            tamper: |c| c.edit_json("keys/records.json", |v| { v["epochs"][0]["epoch"] = 2.into(); v["current_epoch"] = 2.into() }) },
        Case { name: "key file: newer format", probe: F10K, expect: UnlockRefused("upgrade tresor"),
            tamper: |c| c.edit_json("keys/records.json", |v| v["tresor_keys"] = 2.into()) },
        // --- documented limits (NOT detected) ---
        Case { name: "LIMIT: two names swapped within a directory", probe: "records/notes/4095.bin", expect: Limit("records/notes/4096.bin"),
            tamper: |c| { let a = c.path("records/notes/4095.bin"); let b = c.path(F4096); let t = a.with_file_name("swap"); fs::rename(&a, &t).unwrap(); fs::rename(&b, &a).unwrap(); fs::rename(&t, &b).unwrap() } },
        Case { name: "LIMIT: file replaced by another file of the same group", probe: "records/notes/4097.bin", expect: Limit("records/one.txt"),
            tamper: |c| { let o = c.read("records/one.txt"); c.write("records/notes/4097.bin", &o) } },
    ]
}

fn side(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(".name");
    PathBuf::from(s)
}

fn relink(c: &Ctx, plain: &str, at: usize) {
    let p = c.path(plain);
    let mut t = fs::read_link(&p)
        .unwrap()
        .into_os_string()
        .into_encoded_bytes();
    flip_char(&mut t, at);
    fs::remove_file(&p).unwrap();
    symlink(String::from_utf8(t).unwrap(), &p).unwrap();
}

/// All plaintexts of the fixture: nothing a tampered read returns may be one.
fn all_plaintexts() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = all_files()
        .into_iter()
        .map(|(p, s)| content(&p, s))
        .filter(|c| !c.is_empty())
        .collect();
    v.extend(LINKS.iter().map(|(_, t)| t.as_bytes().to_vec()));
    v
}

/// Runs one case; returns a description of the failure, if any.
fn run_case(case: &Case, pristine: &Path, keys: &spec::Keys) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = tmp.path().join("store");
    copy_tree(pristine, &root);
    (case.tamper)(&Ctx { root: &root, keys });

    let probe = if case.probe == "records/LONG" {
        long_path()
    } else {
        case.probe.to_string()
    };
    let store = match (Store::open(&root), case.expect) {
        (Err(e), Expect::StoreRefused(msg)) if e.to_string().contains(msg) => return Ok(()),
        (Err(e), _) => return Err(format!("Store::open failed: {e}")),
        (Ok(_), Expect::StoreRefused(msg)) => {
            return Err(format!("Store::open accepted; wanted \"{msg}\""))
        }
        (Ok(s), _) => s,
    };
    let pse = pse::open(&fs::read(testdata().join(PSE_FILE)).unwrap(), &passphrase())
        .map_err(|e| e.to_string())?;
    let keys = match (store.unlock(&pse), case.expect) {
        (Err(e), Expect::UnlockRefused(msg)) if e.to_string().contains(msg) => return Ok(()),
        (Err(e), _) => return Err(format!("unlock failed: {e}")),
        (Ok(k), Expect::UnlockRefused(msg)) => {
            let groups: Vec<_> = k.groups().map(str::to_string).collect();
            return Err(format!(
                "unlock succeeded with {groups:?}; wanted \"{msg}\""
            ));
        }
        (Ok(k), _) => k,
    };
    let vfs = Vfs::new(store, keys, caller()).map_err(|e| e.to_string())?;
    let mut leaked = Vec::new();
    let (parent, name) = split(&probe);
    let outcome: Result<Vec<u8>, VfsError> = resolve(&vfs, &probe).and_then(|a| match a.kind {
        Kind::Symlink => vfs.readlink(a.ino).inspect(|t| leaked.extend_from_slice(t)),
        _ => read_all(&vfs, a.ino, &mut leaked),
    });
    let no_leak = |leaked: &[u8]| -> Result<(), String> {
        for p in all_plaintexts() {
            let probe_len = p.len().min(16);
            if leaked.windows(probe_len).any(|w| w == &p[..probe_len]) {
                return Err("plaintext of the fixture came out".into());
            }
        }
        if leaked.is_empty() {
            Ok(())
        } else {
            Err(format!("{} bytes came out", leaked.len()))
        }
    };
    match case.expect {
        Expect::Eio | Expect::Eacces => {
            let want = if matches!(case.expect, Expect::Eio) {
                libc::EIO
            } else {
                libc::EACCES
            };
            no_leak(&leaked)?;
            match outcome {
                Err(e) if e.errno() == want => Ok(()),
                Err(e) => Err(format!("errno {} ({e}); wanted {want}", e.errno())),
                Ok(d) => Err(format!("read {} bytes; wanted errno {want}", d.len())),
            }
        }
        Expect::Hidden => {
            no_leak(&leaked)?;
            match outcome {
                Err(e) if e.errno() == libc::ENOENT => {}
                Err(e) => return Err(format!("errno {} ({e}); wanted ENOENT", e.errno())),
                Ok(_) => return Err("the entry was found".into()),
            }
            check_listing(&vfs, parent, name)
        }
        Expect::Unlisted => {
            let data = outcome.map_err(|e| format!("lookup/read failed: {e}"))?;
            if data != content(&probe, 300) {
                return Err("lookup served other content".into());
            }
            check_listing(&vfs, parent, name)
        }
        Expect::Limit(other) => {
            let size = all_files().into_iter().find(|(p, _)| p == other).unwrap().1;
            match outcome {
                Ok(d) if d == content(other, size) => Ok(()),
                Ok(_) => Err("read something else than the documented limit says".into()),
                Err(e) => Err(format!("now detected ({e}): update the case and FORMAT.md")),
            }
        }
        Expect::StoreRefused(_) | Expect::UnlockRefused(_) => unreachable!(),
    }
}

#[test]
fn tampering_is_detected() {
    let pristine = testdata().join(STORE_DIR);
    let keys = spec_keys();
    let mut failures = Vec::new();
    let cases = tamper_cases();
    for case in &cases {
        if let Err(e) = run_case(case, &pristine, &keys) {
            failures.push(format!("{}: {e}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} tamper cases failed:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
}

/// The table in tests/testdata/tamper-cases.md lists every case by name.
#[test]
fn tamper_table_is_documented() {
    let md = fs::read_to_string(testdata().join("tamper-cases.md")).unwrap();
    for case in tamper_cases() {
        assert!(
            md.contains(case.name),
            "tamper-cases.md lacks \"{}\"",
            case.name
        );
    }
}

/// Rollback of a whole file to an older version: NOT detected (the
/// documented limit, as in gocryptfs).
#[test]
fn rollback_is_a_documented_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    copy_tree(&testdata().join(STORE_DIR), &root);
    let b = backing(&root, &spec_keys(), "records/one.txt");
    let old = fs::read(&b).unwrap();
    {
        let vfs = fixture_vfs(&root);
        let ino = resolve(&vfs, "records/one.txt").unwrap().ino;
        let (fh, _) = vfs.open(ino, libc::O_WRONLY).unwrap();
        vfs.write(fh, 0, b"new version").unwrap();
        vfs.release(fh);
    }
    fs::write(&b, old).unwrap();
    let vfs = fixture_vfs(&root);
    let ino = resolve(&vfs, "records/one.txt").unwrap().ino;
    let data = read_all(&vfs, ino, &mut Vec::new()).unwrap();
    assert!(
        data == content("records/one.txt", 1),
        "the old version is served"
    );
}
