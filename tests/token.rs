//! The PSE on a smartcard (docs/ACCESS.md "Keys on a token"): against a real
//! PKCS#11 implementation, SoftHSM2, with tokens made by `softhsm2-util` in a
//! configuration of each test's own (its HOME's
//! `.config/softhsm2/softhsm2.conf`, which SoftHSM2 reads when
//! SOFTHSM2_CONF is unset, and SOFTHSM2_CONF on the commands run here).

use crate::util::{self, ok, tresor, Mount, TestStore};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A SoftHSM2 of this test only.
struct Hsm {
    conf: PathBuf,
    tokens: PathBuf,
}

/// One token: its label, its directory (remove it = pull the card), its PIN file.
struct Card {
    label: String,
    dir: PathBuf,
    pin: PathBuf,
}

fn have_softhsm() -> bool {
    util::require(
        Path::new(MODULE).exists()
            && Command::new("softhsm2-util")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
        "SoftHSM2 (the softhsm2 package: libsofthsm2.so and softhsm2-util)",
    )
}

impl Hsm {
    fn new() -> Option<Hsm> {
        if !have_softhsm() {
            return None;
        }
        let base = util::test_env_dir();
        let tokens = base.join("softhsm-tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let text = format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        );
        // Read by every tresor this test starts (HOME is the test's own).
        let home_conf = base.join("home/.config/softhsm2/softhsm2.conf");
        std::fs::create_dir_all(home_conf.parent().unwrap()).unwrap();
        std::fs::write(&home_conf, &text).unwrap();
        let conf = base.join("softhsm2.conf");
        std::fs::write(&conf, &text).unwrap();
        Some(Hsm { conf, tokens })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        util::isolate(&mut c).env("SOFTHSM2_CONF", &self.conf);
        c
    }

    fn tresor(&self) -> Command {
        let mut c = tresor();
        c.env("SOFTHSM2_CONF", &self.conf);
        c
    }

    /// A new token (a card handed to `label`'s owner) with user PIN `pin`.
    fn card(&self, label: &str, pin: &str) -> Card {
        let before: Vec<_> = self.token_dirs();
        ok(self.cmd("softhsm2-util").args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            pin,
            "--so-pin",
            "12345678",
        ]));
        let dir = self
            .token_dirs()
            .into_iter()
            .find(|d| !before.contains(d))
            .expect("softhsm2-util made a token directory");
        let pin_file = self.tokens.parent().unwrap().join(format!("{label}.pin"));
        std::fs::write(&pin_file, format!("{pin}\n")).unwrap();
        Card {
            label: label.into(),
            dir,
            pin: pin_file,
        }
    }

    fn token_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.tokens)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    /// `pkcs11-tool` (OpenSC), the ordinary tool, on this test's SoftHSM2.
    fn pkcs11_tool(&self, args: &[&str]) -> Output {
        self.cmd("pkcs11-tool")
            .args(["--module", MODULE])
            .args(args)
            .output()
            .unwrap()
    }
}

/// pkcs11-tool (OpenSC) and openssl, the ordinary tools the checks use.
fn have_tools() -> bool {
    let runs = |p: &str, a: &str| Command::new(p).arg(a).output().is_ok();
    util::require(
        runs("pkcs11-tool", "--help") && runs("openssl", "version"),
        "pkcs11-tool (the opensc package) and openssl",
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `tresor user add … --token`: the user's keys made on `card`.
fn add_token_user(hsm: &Hsm, ts: &TestStore, name: &str, role: &str, card: &Card) -> PathBuf {
    let pse = ts.dir.path().join(format!("{name}.pse"));
    ok(hsm
        .tresor()
        .args(["user", "add"])
        .arg(&ts.store)
        .arg(name)
        .args(["--role", role, "--pse-out"])
        .arg(&pse)
        .args(["--token", "--token-label", &card.label])
        .arg("--user-passphrase-file")
        .arg(&card.pin)
        .arg("--pse")
        .arg(&ts.pse)
        .arg("--passphrase-file")
        .arg(&ts.pass));
    pse
}

/// A store whose administrator holds a file PSE, with role `doctor` and
/// data group `clinical` (`w`).
fn clinic() -> TestStore {
    let ts = TestStore::new(&["clinical"]);
    for args in [
        &["role", "add", "STORE", "doctor"][..],
        &["grant", "STORE", "doctor", "clinical", "w"][..],
    ] {
        let args: Vec<&str> = args
            .iter()
            .map(|a| {
                if *a == "STORE" {
                    ts.store.to_str().unwrap()
                } else {
                    a
                }
            })
            .collect();
        let out = ts.admin(&args);
        assert!(out.status.success(), "{}", text(&out));
    }
    ts
}

fn pse_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// A token user mounts with the token's PIN, reads and writes; a file user
/// of the same store reads what the token user wrote; the token PSE holds
/// public keys and the token's name only — no sealed keys, no KDF.
#[test]
fn a_token_user_and_a_file_user_share_a_store() {
    let Some(hsm) = Hsm::new() else { return };
    if !util::fuse_available() {
        return;
    }
    let ts = clinic();
    let card = hsm.card("bob-card", "246810");
    let bob = add_token_user(&hsm, &ts, "bob", "doctor", &card);
    let (alice, alice_pass) = ts.add_user("alice", "doctor");

    let v = pse_json(&bob);
    assert_eq!(v["tresor_pse"], 2, "{v}");
    assert_eq!(v["token"]["label"], "bob-card", "{v}");
    for secret in ["sealed", "salt", "kdf"] {
        assert!(v.get(secret).is_none(), "a token PSE has no {secret}: {v}");
    }

    let m = ts.mount_as(&bob, &card.pin, "bob", &[]);
    std::fs::write(m.path("clinical/report.txt"), "written by bob's card\n").unwrap();
    let status = text(&ok(hsm.tresor().arg("status").arg(&m.mnt)));
    assert!(status.contains("bob (role doctor)"), "{status}");
    m.unmount();

    let m = ts.mount_as(&alice, &alice_pass, "alice", &[]);
    assert_eq!(
        std::fs::read_to_string(m.path("clinical/report.txt")).unwrap(),
        "written by bob's card\n"
    );

    // User switch to the card user: a wrong PIN is named and counted, the
    // right one switches; the driver opens the token itself.
    let login = |pin: &Path| {
        hsm.tresor()
            .arg("login")
            .arg(&m.mnt)
            .arg("--pse")
            .arg(&bob)
            .arg("--passphrase-file")
            .arg(pin)
            .output()
            .unwrap()
    };
    let wrong = ts.dir.path().join("wrong.pin");
    std::fs::write(&wrong, "000000\n").unwrap();
    let out = login(&wrong);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("wrong PIN for token bob-card"),
        "{}",
        text(&out)
    );
    let out = login(&card.pin);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("switched from alice to bob"),
        "{}",
        text(&out)
    );
    let st = status_json(&hsm, &m);
    assert_eq!(st["user"], "bob", "{st}");
    assert_eq!(st["token"], "bob-card", "{st}");
    std::fs::write(m.path("clinical/second.txt"), "bob again\n").unwrap();
    m.unmount();
}

/// Sets token flags in a SoftHSM2 token's `token.object` (the attribute
/// CKA_OS_TOKENFLAGS, 0x8000534B, an 8-byte big-endian value). SoftHSM2
/// counts no wrong PINs itself (it only raises CKF_USER_PIN_COUNT_LOW), so
/// a locked card is made the way a card reports it: by its flags.
fn set_token_flags(card: &Card, flags: u64) {
    let p = card.dir.join("token.object");
    let mut b = std::fs::read(&p).unwrap();
    let tag: [u8; 16] = [0, 0, 0, 0, 0x80, 0, 0x53, 0x4b, 0, 0, 0, 0, 0, 0, 0, 2];
    let i = b
        .windows(16)
        .position(|w| w == tag)
        .expect("token.object holds the token flags");
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[i + 16..i + 24]);
    let now = u64::from_be_bytes(v) | flags;
    b[i + 16..i + 24].copy_from_slice(&now.to_be_bytes());
    std::fs::write(&p, b).unwrap();
}

const CKF_USER_PIN_FINAL_TRY: u64 = 0x0002_0000;
const CKF_USER_PIN_LOCKED: u64 = 0x0004_0000;

/// A document outside any mount, signed with `pse` (`--store`, `--as`):
/// opens the PSE without FUSE.
fn sign_outside(hsm: &Hsm, ts: &TestStore, pse: &Path, pin: &Path, name: &str) -> Output {
    let doc = ts.dir.path().join(name);
    std::fs::write(&doc, format!("the document {name}\n")).unwrap();
    hsm.tresor()
        .arg("sign")
        .arg(&doc)
        .arg("--pse")
        .arg(pse)
        .arg("--passphrase-file")
        .arg(pin)
        .arg("--store")
        .arg(&ts.store)
        .args(["--as", &format!("clinical/{name}")])
        .output()
        .unwrap()
}

/// A wrong PIN fails with the wrong-passphrase status and says what the
/// token reports about attempts left; the right PIN still works; a token
/// whose flags say the PIN is locked is refused with its own status (11)
/// and a sentence saying how to unlock — even with the right PIN, which
/// tresor then does not send.
#[test]
fn wrong_pin_and_locked_pin() {
    let Some(hsm) = Hsm::new() else { return };
    let ts = clinic();
    let card = hsm.card("carol-card", "135790");
    let carol = add_token_user(&hsm, &ts, "carol", "doctor", &card);
    let wrong = ts.dir.path().join("wrong.pin");
    std::fs::write(&wrong, "000000\n").unwrap();

    let out = sign_outside(&hsm, &ts, &carol, &wrong, "a.txt");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("wrong PIN for token carol-card"), "{t}");
    // SoftHSM2 raises CKF_USER_PIN_COUNT_LOW after a wrong PIN.
    assert!(t.contains("few attempts left"), "{t}");

    let out = sign_outside(&hsm, &ts, &carol, &card.pin, "b.txt");
    assert!(out.status.success(), "{}", text(&out));

    set_token_flags(&card, CKF_USER_PIN_FINAL_TRY);
    let out = sign_outside(&hsm, &ts, &carol, &wrong, "c.txt");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("one attempt left: the next wrong PIN locks the token"),
        "{}",
        text(&out)
    );

    set_token_flags(&card, CKF_USER_PIN_LOCKED);
    for pin in [&wrong, &card.pin] {
        let out = sign_outside(&hsm, &ts, &carol, pin, "d.txt");
        assert_eq!(out.status.code(), Some(11), "{}", text(&out));
        let t = text(&out);
        assert!(t.contains("the PIN of token carol-card is locked"), "{t}");
        assert!(t.contains("unblock"), "{t}");
    }
    assert!(!ts.dir.path().join("d.txt.sig").exists());
}

/// The ids of a token PSE's two key pairs.
fn key_ids(pse: &Path) -> (String, String) {
    let v = pse_json(pse);
    (
        v["token"]["sign_id"].as_str().unwrap().to_string(),
        v["token"]["transport_id"].as_str().unwrap().to_string(),
    )
}

/// Both private keys are on the token as sensitive, never-extractable keys
/// generated there (pkcs11-tool lists "sensitive, always sensitive, never
/// extractable, local"), and every way PKCS#11 has to get a private key out
/// is refused by the token: reading CKA_PRIVATE_EXPONENT or CKA_PRIME_1,
/// wrapping it under a key of our own, making it extractable, copying it
/// as extractable (run in a child process, [`export_attempt_child`]).
#[test]
fn the_private_keys_never_leave_the_token() {
    let Some(hsm) = Hsm::new() else { return };
    if !have_tools() {
        return;
    }
    let ts = clinic();
    let card = hsm.card("dave-card", "112233");
    let dave = add_token_user(&hsm, &ts, "dave", "doctor", &card);
    let (sign_id, transport_id) = key_ids(&dave);

    let out = hsm.pkcs11_tool(&[
        "--login",
        "--pin",
        "112233",
        "--list-objects",
        "--type",
        "privkey",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let listing = text(&out);
    for id in [&sign_id, &transport_id] {
        let at = listing
            .find(&format!("ID:         {id}"))
            .unwrap_or_else(|| panic!("key {id} listed:\n{listing}"));
        let access = listing[at..]
            .lines()
            .find(|l| l.trim_start().starts_with("Access:"))
            .unwrap();
        assert!(
            access.contains("sensitive, always sensitive, never extractable, local"),
            "{access}"
        );
    }

    for id in [&sign_id, &transport_id] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "token::export_attempt_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SOFTHSM2_CONF", &hsm.conf)
            .env("TRESOR_TEST_KEY_ID", id)
            .env("TRESOR_TEST_PIN", "112233")
            .output()
            .unwrap();
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        for what in ["value", "wrap", "set extractable", "copy as extractable"] {
            assert!(t.contains(&format!("refused {what}:")), "{what}: {t}");
        }
    }
}

/// Run only as a child of [`the_private_keys_never_leave_the_token`] (one
/// SoftHSM2 per process, its configuration in the environment): tries to
/// get the private key with id TRESOR_TEST_KEY_ID out of the token in every
/// way PKCS#11 offers; fails if any works.
#[test]
#[ignore = "a child process of the_private_keys_never_leave_the_token"]
fn export_attempt_child() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let id =
        hex::decode(std::env::var("TRESOR_TEST_KEY_ID").expect("run by the parent test")).unwrap();
    let pin = std::env::var("TRESOR_TEST_PIN").unwrap();
    let p = Pkcs11::new(MODULE).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = p.get_slots_with_token().unwrap()[0];
    let s = p.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&AuthPin::from(pin))).unwrap();
    let key = s
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(id.clone()),
        ])
        .unwrap()[0];
    // The private parts' values: the token says "sensitive".
    let info = s
        .get_attribute_info(
            key,
            &[AttributeType::PrivateExponent, AttributeType::Prime1],
        )
        .unwrap();
    assert!(
        info.iter().all(|i| matches!(i, AttributeInfo::Sensitive)),
        "the private exponent and primes must be unreadable: {info:?}"
    );
    println!("refused value: {info:?}");
    // Wrapped under an AES key we hold.
    let aes = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::ValueLen(32.into()),
                Attribute::Wrap(true),
                Attribute::Token(false),
            ],
        )
        .unwrap();
    let wrapped = s.wrap_key(&Mechanism::AesKeyWrapPad, aes, key);
    assert!(wrapped.is_err(), "the private key was wrapped out");
    println!("refused wrap: {}", wrapped.unwrap_err());
    // Made extractable afterwards.
    let set = s.update_attributes(key, &[Attribute::Extractable(true)]);
    assert!(set.is_err(), "CKA_EXTRACTABLE was set to true");
    println!("refused set extractable: {}", set.unwrap_err());
    // A copy that is extractable.
    let copy = s.copy_object(
        key,
        &[Attribute::Extractable(true), Attribute::Token(false)],
    );
    assert!(copy.is_err(), "an extractable copy was made");
    println!("refused copy as extractable: {}", copy.unwrap_err());
}

/// `tresor sign` with a token PSE: the signature is made on the token and
/// verifies with `tresor verify`, and with openssl against the public key
/// pkcs11-tool reads from the token (RSA-PSS, SHA-256, salt 32).
#[test]
fn a_signature_made_on_the_token_verifies_with_openssl() {
    let Some(hsm) = Hsm::new() else { return };
    if !have_tools() {
        return;
    }
    let ts = clinic();
    let card = hsm.card("erin-card", "975310");
    let erin = add_token_user(&hsm, &ts, "erin", "doctor", &card);
    let (sign_id, _) = key_ids(&erin);
    let out = sign_outside(&hsm, &ts, &erin, &card.pin, "finding.txt");
    assert!(out.status.success(), "{}", text(&out));
    let doc = ts.dir.path().join("finding.txt");

    let out = hsm
        .tresor()
        .arg("verify")
        .arg(&doc)
        .arg("--pse")
        .arg(&erin)
        .arg("--store")
        .arg(&ts.store)
        .args(["--as", "clinical/finding.txt"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("erin"), "{}", text(&out));

    let sig = tresor::signature::SigFile::parse(
        &std::fs::read(ts.dir.path().join("finding.txt.sig")).unwrap(),
    )
    .unwrap();
    let entry = &sig.signatures[0];
    let dir = ts.dir.path();
    std::fs::write(dir.join("message.bin"), entry.statement.message()).unwrap();
    std::fs::write(
        dir.join("signature.bin"),
        tresor::format::names::decode(&entry.signature).unwrap(),
    )
    .unwrap();
    let out = hsm.pkcs11_tool(&[
        "--read-object",
        "--type",
        "pubkey",
        "--id",
        &sign_id,
        "-o",
        dir.join("erin.der").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let verify = |message: &str| {
        Command::new("openssl")
            .current_dir(dir)
            .args([
                "dgst",
                "-sha256",
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:32",
                "-keyform",
                "DER",
                "-verify",
                "erin.der",
                "-signature",
                "signature.bin",
                message,
            ])
            .output()
            .unwrap()
    };
    let out = verify("message.bin");
    assert!(
        out.status.success() && text(&out).contains("Verified OK"),
        "{}",
        text(&out)
    );
    // The check can fail: another message does not verify.
    std::fs::write(dir.join("other.bin"), b"another message").unwrap();
    assert!(!verify("other.bin").status.success());
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        // Hang guard only: the watcher looks every 200 ms.
        assert!(start.elapsed() < Duration::from_secs(30), "{what}");
        std::thread::sleep(Duration::from_millis(20)); // poll of a hang-guarded wait
    }
}

fn status_json(hsm: &Hsm, m: &Mount) -> serde_json::Value {
    let out = hsm
        .tresor()
        .arg("status")
        .arg(&m.mnt)
        .arg("--json")
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Pulling the card: the token's directory moves away (SoftHSM2 then fails
/// C_GetTokenInfo for its slot, as a reader reports an empty slot) and the
/// mount locks — keys wiped, reads refused, the reason names the token.
/// Put back, `tresor login` with the PIN opens it again.
#[test]
fn pulling_the_token_locks_the_mount() {
    let Some(hsm) = Hsm::new() else { return };
    if !util::fuse_available() {
        return;
    }
    let ts = clinic();
    let card = hsm.card("frank-card", "864200");
    let frank = add_token_user(&hsm, &ts, "frank", "doctor", &card);
    let m = ts.mount_as(&frank, &card.pin, "frank", &[]);
    std::fs::write(m.path("clinical/x.txt"), "secret\n").unwrap();
    assert_eq!(status_json(&hsm, &m)["locked"], false);

    let pulled = card.dir.with_extension("pulled");
    std::fs::rename(&card.dir, &pulled).unwrap();
    wait_for("the mount did not lock after the token was removed", || {
        status_json(&hsm, &m)["locked"] == true
    });
    let st = status_json(&hsm, &m);
    assert_eq!(st["lock_reason"], "token frank-card removed", "{st}");
    let e = std::fs::read(m.path("clinical/x.txt")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");

    std::fs::rename(&pulled, &card.dir).unwrap();
    let out = hsm
        .tresor()
        .arg("login")
        .arg(&m.mnt)
        .arg("--pse")
        .arg(&frank)
        .arg("--passphrase-file")
        .arg(&card.pin)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(m.path("clinical/x.txt")).unwrap(),
        "secret\n"
    );
    m.unmount();
}

/// The administrator on a token (`init --token`) with a token user and a
/// file user: grant, revoke (the key rotates and the token user's envelopes
/// go), grant again, and `rekey` — every envelope the administrator opens
/// is unwrapped on the administrator's card, every one of the token user's
/// on theirs. `passwd` then changes the administrator's PIN on the token.
#[test]
fn grant_revoke_rekey_and_passwd_with_tokens() {
    let Some(hsm) = Hsm::new() else { return };
    if !util::fuse_available() {
        return;
    }
    let admin_card = hsm.card("admin-card", "10203040");
    let dir = tempfile::Builder::new()
        .prefix("tresor-test-")
        .tempdir()
        .unwrap();
    let store = dir.path().join("store");
    let pse = dir.path().join("admin.pse");
    ok(hsm
        .tresor()
        .arg("init")
        .arg(&store)
        .arg("--pse")
        .arg(&pse)
        .args(["--token", "--token-label", "admin-card"])
        .arg("--passphrase-file")
        .arg(&admin_card.pin)
        .args(["--kdf-memory-mib", "8"]));
    assert_eq!(pse_json(&pse)["tresor_pse"], 2);
    let ts = TestStore {
        dir,
        store,
        pse,
        pass: admin_card.pin.clone(),
    };
    let admin = |args: &[&str]| {
        let out = ts.admin(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        text(&out)
    };
    let s = ts.store.to_str().unwrap().to_string();
    admin(&["datagroup", "add", &s, "clinical"]);
    admin(&["role", "add", &s, "doctor"]);
    admin(&["grant", &s, "doctor", "clinical", "w"]);
    let card = hsm.card("gina-card", "55667788");
    let gina = add_token_user(&hsm, &ts, "gina", "doctor", &card);
    let (hal, hal_pass) = ts.add_user("hal", "doctor");

    let m = ts.mount_as(&hal, &hal_pass, "hal", &[]);
    std::fs::write(m.path("clinical/old.txt"), "epoch 1\n").unwrap();
    m.unmount();

    // Revoke: the key rotates; gina's card opens nothing of clinical.
    let out = admin(&["grant", &s, "doctor", "clinical", "-"]);
    assert!(out.contains("clinical"), "{out}");
    let m = ts.mount_as(&gina, &card.pin, "gina", &[]);
    let e = std::fs::read(m.path("clinical/old.txt")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    m.unmount();

    // Grant again: every epoch's key is wrapped for her transport key.
    admin(&["grant", &s, "doctor", "clinical", "r"]);
    let m = ts.mount_as(&gina, &card.pin, "gina", &[]);
    assert_eq!(
        std::fs::read_to_string(m.path("clinical/old.txt")).unwrap(),
        "epoch 1\n"
    );
    m.unmount();

    // Rekey with the administrator's card: old files re-encrypted under
    // the current epoch, still readable with gina's card.
    let out = admin(&["rekey", &s, "clinical"]);
    assert!(out.contains("clinical"), "{out}");
    let m = ts.mount_as(&gina, &card.pin, "gina", &[]);
    assert_eq!(
        std::fs::read_to_string(m.path("clinical/old.txt")).unwrap(),
        "epoch 1\n"
    );
    m.unmount();

    // passwd on a token PSE changes the token's PIN; the PSE is unchanged.
    let before = std::fs::read(&ts.pse).unwrap();
    let new_pin = ts.dir.path().join("new.pin");
    std::fs::write(&new_pin, "99887766\n").unwrap();
    ok(hsm
        .tresor()
        .arg("passwd")
        .arg("--pse")
        .arg(&ts.pse)
        .arg("--passphrase-file")
        .arg(&admin_card.pin)
        .arg("--new-passphrase-file")
        .arg(&new_pin));
    assert_eq!(std::fs::read(&ts.pse).unwrap(), before);
    let out = ts.admin(&["role", "add", &s, "nurse"]);
    assert_eq!(out.status.code(), Some(3), "old PIN: {}", text(&out));
    let out = hsm
        .tresor()
        .args(["role", "add", &s, "nurse", "--pse"])
        .arg(&ts.pse)
        .arg("--passphrase-file")
        .arg(&new_pin)
        .output()
        .unwrap();
    assert!(out.status.success(), "new PIN: {}", text(&out));
}

/// `tresor user to-token`: a file user's keys move onto a token. The old
/// file PSE no longer opens the store (status 8); the token PSE reads what
/// the user wrote before, under the epoch the move rotated away from.
#[test]
fn a_file_user_moves_onto_a_token() {
    let Some(hsm) = Hsm::new() else { return };
    if !util::fuse_available() {
        return;
    }
    let ts = clinic();
    let (ida, ida_pass) = ts.add_user("ida", "doctor");
    let m = ts.mount_as(&ida, &ida_pass, "ida", &[]);
    std::fs::write(m.path("clinical/before.txt"), "from the file PSE\n").unwrap();
    m.unmount();

    let card = hsm.card("ida-card", "31415926");
    let moved = ts.dir.path().join("ida-token.pse");
    let out = hsm
        .tresor()
        .args(["user", "to-token"])
        .arg(&ts.store)
        .arg("ida")
        .arg("--pse-out")
        .arg(&moved)
        .args(["--token-label", "ida-card"])
        .arg("--user-passphrase-file")
        .arg(&card.pin)
        .arg("--pse")
        .arg(&ts.pse)
        .arg("--passphrase-file")
        .arg(&ts.pass)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("clinical"),
        "the key rotated: {}",
        text(&out)
    );

    let out = sign_outside(&hsm, &ts, &ida, &ida_pass, "old.txt");
    assert_eq!(out.status.code(), Some(8), "{}", text(&out));

    let m = ts.mount_as(&moved, &card.pin, "ida-token", &[]);
    assert_eq!(
        std::fs::read_to_string(m.path("clinical/before.txt")).unwrap(),
        "from the file PSE\n"
    );
    m.unmount();
}

/// A token PSE whose trust anchor was swapped (checksum recomputed, as
/// anyone can) does not open: the binding signature the card made at
/// creation no longer verifies (status 4), though the PIN is right.
#[test]
fn a_token_pse_with_a_swapped_trust_anchor_is_refused() {
    let Some(hsm) = Hsm::new() else { return };
    let ts = clinic();
    let card = hsm.card("jan-card", "27182818");
    let jan = add_token_user(&hsm, &ts, "jan", "doctor", &card);
    let out = sign_outside(&hsm, &ts, &jan, &card.pin, "ok.txt");
    assert!(out.status.success(), "{}", text(&out));

    let mut v = pse_json(&jan);
    v["trust_anchor"] = v["sign_public"].clone();
    // The checksum as an attacker recomputes it: over the compact body
    // (every field before "binding") and the binding string.
    let mut body = v.clone();
    let body = body.as_object_mut().unwrap();
    let binding = body.remove("binding").unwrap();
    body.remove("check");
    let mut bytes = Vec::new();
    for (i, k) in [
        "tresor_pse",
        "user",
        "token",
        "sign_public",
        "transport_public",
        "trust_anchor",
    ]
    .iter()
    .enumerate()
    {
        bytes.extend_from_slice(if i == 0 { b"{" } else { b"," });
        bytes.extend_from_slice(format!("{:?}:", k).as_bytes());
        bytes.extend_from_slice(&token_field_json(k, &body[*k]));
    }
    bytes.extend_from_slice(b"}");
    bytes.extend_from_slice(binding.as_str().unwrap().as_bytes());
    v["check"] = serde_json::json!(hex::encode(sha256(&bytes)));
    std::fs::write(&jan, serde_json::to_vec_pretty(&v).unwrap()).unwrap();

    let out = sign_outside(&hsm, &ts, &jan, &card.pin, "swapped.txt");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("binding signature does not verify"),
        "{}",
        text(&out)
    );
}

/// Compact JSON of one field of a token PSE body, the object's keys in
/// the order tresor writes them.
fn token_field_json(key: &str, v: &serde_json::Value) -> Vec<u8> {
    if key != "token" {
        return serde_json::to_vec(v).unwrap();
    }
    let mut out = b"{".to_vec();
    for (i, k) in ["label", "serial", "module", "sign_id", "transport_id"]
        .iter()
        .enumerate()
    {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(format!("{k:?}:").as_bytes());
        out.extend_from_slice(&serde_json::to_vec(&v[*k]).unwrap());
    }
    out.push(b'}');
    out
}

fn sha256(b: &[u8]) -> [u8; 32] {
    tresor::crypto::sha256(b)
}

/// `tresor ARGS…` as `uid` (root runs it through setpriv), in that uid's
/// own environment, with SOFTHSM2_CONF = `conf`.
fn tresor_as(uid: u32, conf: &Path, args: &[&std::ffi::OsStr]) -> Output {
    let mut c = Command::new("setpriv");
    util::isolate_as(&mut c, uid);
    c.args([
        &format!("--reuid={uid}"),
        &format!("--regid={uid}"),
        "--clear-groups",
    ])
    .arg(env!("CARGO_BIN_EXE_tresor"))
    .args(args)
    .env("SOFTHSM2_CONF", conf)
    .stdin(std::process::Stdio::null())
    .output()
    .unwrap()
}

/// Unprivileged users: kim (uid 1234) holds her token — its SoftHSM2 files
/// are hers, as a card is in her pocket — and signs with it. lee (uid 1235)
/// has a copy of kim's PSE file and even her PIN, but not the card: nothing
/// opens ("not present", status 12) and no signature is made.
#[test]
fn a_copy_of_the_pse_without_the_card_opens_nothing() {
    use std::os::unix::fs::PermissionsExt;
    if !have_softhsm() || !util::require_root("run tresor as other uids with setpriv") {
        return;
    }
    let ts = clinic();
    // kim's own SoftHSM2, in her own home, her token made by her.
    let kim_env = util::test_env_dir().join("uid-1234");
    // Makes kim's environment (home, state, …), owned by her.
    util::isolate_as(&mut Command::new("true"), 1234);
    let kim_tokens = kim_env.join("tokens");
    std::fs::create_dir_all(&kim_tokens).unwrap();
    let kim_conf = kim_env.join("softhsm2.conf");
    std::fs::write(
        &kim_conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            kim_tokens.display()
        ),
    )
    .unwrap();
    let chown_kim = |p: &Path| {
        ok(Command::new("chown").args(["-R", "1234:1234"]).arg(p));
    };
    chown_kim(&kim_tokens);
    let init = util::isolate_as(&mut Command::new("setpriv"), 1234)
        .args(["--reuid=1234", "--regid=1234", "--clear-groups"])
        .args([
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            "kim-card",
        ])
        .args(["--pin", "24682468", "--so-pin", "12345678"])
        .env("SOFTHSM2_CONF", &kim_conf)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", text(&init));

    // The administrator certifies her with the card inserted here, and
    // hands it back (the key objects root wrote become hers again).
    let pin = ts.dir.path().join("kim.pin");
    std::fs::write(&pin, "24682468\n").unwrap();
    let kim_pse = ts.dir.path().join("kim.pse");
    ok(tresor()
        .env("SOFTHSM2_CONF", &kim_conf)
        .args(["user", "add"])
        .arg(&ts.store)
        .args(["kim", "--role", "doctor", "--pse-out"])
        .arg(&kim_pse)
        .args(["--token", "--token-label", "kim-card"])
        .arg("--user-passphrase-file")
        .arg(&pin)
        .arg("--pse")
        .arg(&ts.pse)
        .arg("--passphrase-file")
        .arg(&ts.pass));
    chown_kim(&kim_tokens);

    // Both may read the store, the PSE and the PIN; a shared place to sign in.
    for p in [ts.dir.path(), &ts.store, &kim_pse, &pin] {
        ok(Command::new("chmod").args(["-R", "a+rX"]).arg(p));
    }
    let desk = ts.dir.path().join("desk");
    std::fs::create_dir(&desk).unwrap();
    std::fs::set_permissions(&desk, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let sign = |uid: u32, name: &str| {
        let doc = desk.join(name);
        std::fs::write(&doc, "a finding\n").unwrap();
        std::fs::set_permissions(&doc, std::fs::Permissions::from_mode(0o644)).unwrap();
        let as_path = format!("clinical/{name}");
        let args: Vec<&std::ffi::OsStr> = vec![
            "sign".as_ref(),
            doc.as_os_str(),
            "--pse".as_ref(),
            kim_pse.as_os_str(),
            "--passphrase-file".as_ref(),
            pin.as_os_str(),
            "--store".as_ref(),
            ts.store.as_os_str(),
            "--as".as_ref(),
            as_path.as_ref(),
        ];
        tresor_as(uid, &kim_conf, &args)
    };

    let out = sign(1234, "kim.txt");
    assert!(out.status.success(), "kim with her card: {}", text(&out));
    assert!(desk.join("kim.txt.sig").exists());

    let out = sign(1235, "lee.txt");
    assert_eq!(out.status.code(), Some(12), "lee: {}", text(&out));
    assert!(
        text(&out).contains("token \"kim-card\"") && text(&out).contains("is not present"),
        "{}",
        text(&out)
    );
    assert!(!desk.join("lee.txt.sig").exists());
}
