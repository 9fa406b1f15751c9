//! Signed documents (issue 6): `tresor sign` inside real mounts, and every
//! verdict of `tresor verify` with its own message and exit status
//! (docs/SIGNATURES.md).

use crate::util::{all_store_bytes, fuse_available, ok, tresor, Mount, TestStore};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

const RX: &str = "prescriptions/patient-17/rx.txt";
const RX_TEXT: &str = "Ibuprofen 400 mg, 3x daily, 5 days\n";

/// A store with a `prescriptions` group that physicians and pharmacists
/// may write, and the given users (name, role).
fn clinic(users: &[(&str, &str)]) -> (TestStore, Vec<(PathBuf, PathBuf)>) {
    let ts = TestStore::new(&["prescriptions"]);
    let st = ts.store.to_str().unwrap().to_string();
    for role in ["physicians", "pharmacists"] {
        let out = ts.admin(&["role", "add", &st, role]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = ts.admin(&["grant", &st, role, "prescriptions", "w"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let pses = users
        .iter()
        .map(|(name, role)| ts.add_user(name, role))
        .collect();
    (ts, pses)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Writes the prescription at `rel` inside the mount.
fn write_doc(m: &Mount, rel: &str, text: &str) -> PathBuf {
    let p = m.path(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, text).unwrap();
    p
}

fn sign(file: &Path, (pse, pass): &(PathBuf, PathBuf)) -> Output {
    tresor()
        .arg("sign")
        .arg(file)
        .arg("--pse")
        .arg(pse)
        .arg("--passphrase-file")
        .arg(pass)
        .output()
        .unwrap()
}

/// alice (physician) in her own mount, with the prescription RX written
/// and signed by her: (store, alice's PSE and passphrase file, mount, RX).
fn alice_signed_rx() -> (TestStore, (PathBuf, PathBuf), Mount, PathBuf) {
    let (ts, mut users) = clinic(&[("alice", "physicians")]);
    let alice = users.remove(0);
    let m = ts.mount_as(&alice.0, &alice.1, "alice", &[]);
    let doc = write_doc(&m, RX, RX_TEXT);
    sign_ok(&doc, &alice);
    (ts, alice, m, doc)
}

fn sign_ok(file: &Path, who: &(PathBuf, PathBuf)) -> String {
    let out = sign(file, who);
    assert!(out.status.success(), "sign: {}", stderr(&out));
    stdout(&out)
}

/// `tresor verify FILE --pse PSE`: only the PSE's public part is read.
fn verify(file: &Path, pse: &Path) -> Output {
    tresor()
        .arg("verify")
        .arg(file)
        .arg("--pse")
        .arg(pse)
        .output()
        .unwrap()
}

/// Asserts the exit status and that every line of stdout contains `want`.
fn expect(out: &Output, status: i32, want: &str) -> String {
    let text = stdout(out);
    assert_eq!(code(out), status, "stdout: {text}\nstderr: {}", stderr(out));
    assert!(!text.trim().is_empty(), "no verdict printed");
    for line in text.lines() {
        assert!(line.contains(want), "expected \"{want}\" in: {line}");
    }
    text
}

fn is_valid_line(line: &str, who: &str) -> bool {
    // valid — signed by alice (physicians) 2026-11-23 10:42 UTC
    let Some(rest) = line.strip_prefix(&format!("valid — signed by {who} ")) else {
        return false;
    };
    let b = rest.as_bytes();
    rest.len() == 20 && rest.ends_with(" UTC") && b[4] == b'-' && b[10] == b' ' && b[13] == b':'
}

#[test]
fn sign_in_a_mount_then_verify_passes() {
    if !fuse_available() {
        return;
    }
    let (ts, users) = clinic(&[("alice", "physicians")]);
    let alice = &users[0];
    let m = ts.mount_as(&alice.0, &alice.1, "alice", &[]);
    let doc = write_doc(&m, RX, RX_TEXT);
    let out = sign_ok(&doc, alice);
    assert!(
        out.contains("signed prescriptions/patient-17/rx.txt as alice (physicians)"),
        "{out}"
    );
    let sig = m.path(&format!("{RX}.sig"));
    assert!(sig.exists());

    let text = expect(&verify(&doc, &alice.0), 0, "valid — signed by alice");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(is_valid_line(text.trim(), "alice (physicians)"), "{text}");

    // Without a PSE: the admin key's fingerprint from `tresor user list`.
    let list = stdout(&ok(tresor().args(["user", "list"]).arg(&ts.store)));
    let fpr = list
        .lines()
        .find(|l| l.contains("(administrator)"))
        .and_then(|l| l.split_whitespace().nth(4))
        .unwrap()
        .to_string();
    assert_eq!(fpr.len(), 64, "{list}");
    let out = tresor()
        .arg("verify")
        .arg(&doc)
        .args(["--admin-key", &fpr])
        .output()
        .unwrap();
    expect(&out, 0, "valid — signed by alice (physicians)");
    // A different admin key: nothing here is certified for this verifier.
    let wrong = format!("{}{}", if &fpr[..1] == "0" { "1" } else { "0" }, &fpr[1..]);
    let out = tresor()
        .arg("verify")
        .arg(&doc)
        .args(["--admin-key", &wrong])
        .output()
        .unwrap();
    assert_eq!(code(&out), 23, "{}", stderr(&out));

    // An unsigned document.
    let other = write_doc(&m, "prescriptions/patient-17/notes.txt", "no signature\n");
    expect(&verify(&other, &alice.0), 20, "no signature");

    // Signing the same content again adds nothing.
    let out = sign_ok(&doc, alice);
    assert!(out.contains("nothing to do"), "{out}");

    // The signature file is stored encrypted like everything else.
    m.unmount();
    let raw = all_store_bytes(&ts.store);
    let content_hash = hex::encode(tresor::crypto::sha256(RX_TEXT.as_bytes()));
    for needle in [
        "tresor_signatures",
        "patient-17",
        "rx.txt.sig",
        "Ibuprofen",
        content_hash.as_str(),
    ] {
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} in the store's ciphertext"
        );
    }
}

#[test]
fn one_changed_byte_is_reported_as_content_changed() {
    if !fuse_available() {
        return;
    }
    let (_ts, alice, _m, doc) = alice_signed_rx();
    let alice = &alice;
    expect(&verify(&doc, &alice.0), 0, "valid");
    // One byte: 400 → 800 mg, written in place by a real program.
    let pos = RX_TEXT.find('4').unwrap();
    crate::util::sh(
        doc.parent().unwrap(),
        &format!("printf 8 | dd of=rx.txt bs=1 seek={pos} conv=notrunc status=none"),
    );
    assert_eq!(
        fs::read_to_string(&doc).unwrap(),
        RX_TEXT.replace("400", "800")
    );
    expect(
        &verify(&doc, &alice.0),
        21,
        "INVALID: content changed after signing — signed by alice (physicians)",
    );
}

#[test]
fn a_document_moved_to_another_folder_is_reported_as_moved() {
    if !fuse_available() {
        return;
    }
    let (_ts, alice, m, _doc) = alice_signed_rx();
    let alice = &alice;
    fs::create_dir_all(m.path("prescriptions/patient-18")).unwrap();
    crate::util::sh(
        &m.path("prescriptions"),
        "mv patient-17/rx.txt patient-17/rx.txt.sig patient-18/",
    );
    let moved = m.path("prescriptions/patient-18/rx.txt");
    let text = expect(&verify(&moved, &alice.0), 22, "INVALID: document moved");
    assert!(
        text.contains("as prescriptions/patient-17/rx.txt")
            && text.contains("now at prescriptions/patient-18/rx.txt"),
        "{text}"
    );
    // --all reports it in its table, with the same status.
    let out = tresor()
        .arg("verify")
        .arg("--all")
        .arg(m.path("prescriptions"))
        .arg("--pse")
        .arg(&alice.0)
        .output()
        .unwrap();
    assert_eq!(code(&out), 22, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("moved (signed as prescriptions/patient-17/rx.txt)"),
        "{}",
        stdout(&out)
    );
    // Renamed without its .sig: the document is unsigned, the .sig an orphan.
    fs::rename(&moved, m.path("prescriptions/patient-18/renamed.txt")).unwrap();
    let out = tresor()
        .arg("verify")
        .arg("--all")
        .arg(m.path("prescriptions"))
        .arg("--unsigned")
        .arg("--pse")
        .arg(&alice.0)
        .output()
        .unwrap();
    let table = stdout(&out);
    assert_eq!(code(&out), 22, "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("prescriptions/patient-18/rx.txt.sig ")
                && l.ends_with("signature without its document")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("prescriptions/patient-18/renamed.txt ")
                && l.ends_with("unsigned")),
        "{table}"
    );
}

#[test]
fn a_signature_copied_onto_another_document_is_refused() {
    if !fuse_available() {
        return;
    }
    let (_ts, alice, m, doc) = alice_signed_rx();
    let alice = &alice;
    let forged = write_doc(
        &m,
        "prescriptions/patient-17/rx-morphine.txt",
        "Morphine 100 mg\n",
    );
    fs::copy(
        m.path(&format!("{RX}.sig")),
        m.path("prescriptions/patient-17/rx-morphine.txt.sig"),
    )
    .unwrap();
    let text = expect(
        &verify(&forged, &alice.0),
        28,
        "INVALID: another document's signature",
    );
    assert!(
        text.contains("signed prescriptions/patient-17/rx.txt"),
        "{text}"
    );
    // The original still verifies.
    expect(&verify(&doc, &alice.0), 0, "valid");
}

#[test]
fn a_key_the_admin_never_certified_is_refused() {
    if !fuse_available() {
        return;
    }
    let (ts, users) = clinic(&[("alice", "physicians")]);
    let alice = &users[0];
    // Another store with its own admin and its own "alice" (same name, same role).
    let (other, other_users) = clinic(&[("alice", "physicians")]);
    let impostor = &other_users[0];
    let om = other.mount_as(&impostor.0, &impostor.1, "impostor", &[]);
    let fake = write_doc(&om, RX, "Morphine 100 mg\n");
    sign_ok(&fake, impostor);
    // It verifies in its own store …
    expect(&verify(&fake, &impostor.0), 0, "valid — signed by alice");
    // … is carried into ours at the very same path …
    let m = ts.mount_as(&alice.0, &alice.1, "alice", &[]);
    fs::create_dir_all(m.path("prescriptions/patient-17")).unwrap();
    ok(std::process::Command::new("cp")
        .arg("-a")
        .arg(&fake)
        .arg(om.path(&format!("{RX}.sig")))
        .arg(m.path("prescriptions/patient-17/")));
    // … and is not certified by our administrator.
    let doc = m.path(RX);
    let text = expect(
        &verify(&doc, &alice.0),
        23,
        "INVALID: signer not certified by this store's administrator",
    );
    assert!(text.contains("another key for alice"), "{text}");
    assert!(text.contains("signed in store"), "{text}");
    // The impostor's PSE trusts another administrator: refused as a whole.
    let out = verify(&doc, &impostor.0);
    assert_eq!(code(&out), 23, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not the one alice's PSE trusts"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_removed_users_signature_before_and_after_the_removal() {
    if !fuse_available() {
        return;
    }
    let (ts, users) = clinic(&[("alice", "physicians"), ("carol", "pharmacists")]);
    let (alice, carol) = (&users[0], &users[1]);
    let st = ts.store.to_str().unwrap().to_string();
    {
        let m = ts.mount_as(&alice.0, &alice.1, "alice", &[]);
        let doc = write_doc(&m, RX, RX_TEXT);
        sign_ok(&doc, alice);
        m.unmount();
    }
    // Signing times are whole seconds: the removal must fall in a later
    // second. A documented wait for the clock, not a proof.
    let signed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        <= signed
    {
        std::thread::sleep(std::time::Duration::from_millis(10)); // a documented wait for the clock
    }
    let out = ts.admin(&["user", "remove", &st, "alice"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let m = ts.mount_as(&carol.0, &carol.1, "carol", &[]);
    let doc = m.path(RX);
    let text = expect(
        &verify(&doc, &carol.0),
        24,
        "valid at signing time — signed by alice (physicians)",
    );
    assert!(text.contains("; signer removed since 2"), "{text}");

    // tresor itself refuses to sign for a removed user (through anyone's mount).
    let out = sign(&doc, alice);
    assert_eq!(code(&out), 10, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("alice was removed"),
        "{}",
        stderr(&out)
    );

    // Removal does not reach the PSE: alice can still sign with her own
    // key outside tresor. Such a signature, made now, is invalid.
    let pse = tresor::pse::open(
        &fs::read(&alice.0).unwrap(),
        fs::read_to_string(&alice.1).unwrap().trim_end().as_bytes(),
    )
    .unwrap();
    let store = tresor::store::Store::open(&ts.store).unwrap();
    let late = "prescriptions/patient-17/rx-late.txt";
    let statement = tresor::signature::Statement {
        store_id: store.manifest().store_id.clone(),
        path: late.into(),
        sha256: hex::encode(tresor::crypto::sha256(RX_TEXT.as_bytes())),
        signer: "alice".into(),
        role: "physicians".into(),
        key: pse.public.sign_public.fingerprint().unwrap(),
        time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    };
    let mut f = tresor::signature::SigFile::default();
    f.signatures
        .push(tresor::signature::Entry::sign(statement, &pse.sign).unwrap());
    write_doc(&m, late, RX_TEXT);
    fs::write(m.path(&format!("{late}.sig")), f.to_bytes()).unwrap();
    let text = expect(
        &verify(&m.path(late), &carol.0),
        25,
        "INVALID: signed after removal — alice (physicians) signed",
    );
    assert!(
        text.contains("but alice was removed from this store"),
        "{text}"
    );
}

#[test]
fn co_signing_by_two_users_verifies_both() {
    if !fuse_available() {
        return;
    }
    let (ts, users) = clinic(&[("alice", "physicians"), ("carol", "pharmacists")]);
    let (alice, carol) = (&users[0], &users[1]);
    let ma = ts.mount_as(&alice.0, &alice.1, "alice", &[]);
    let doc = write_doc(&ma, RX, RX_TEXT);
    write_doc(&ma, "prescriptions/patient-17/unsigned.txt", "draft\n");
    sign_ok(&doc, alice);
    ma.unmount();
    // The pharmacist co-signs in her own mount.
    let mc = ts.mount_as(&carol.0, &carol.1, "carol", &[]);
    let doc = mc.path(RX);
    let out = sign_ok(&doc, carol);
    assert!(out.contains("holds 2 signatures"), "{out}");
    let text = expect(&verify(&doc, &alice.0), 0, "valid — signed by ");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(is_valid_line(lines[0], "alice (physicians)"), "{text}");
    assert!(is_valid_line(lines[1], "carol (pharmacists)"), "{text}");

    // One table for the tree; unsigned documents only with --unsigned.
    let all = |extra: &[&str]| {
        tresor()
            .args(["verify", "--all"])
            .arg(&mc.mnt)
            .arg("--pse")
            .arg(&carol.0)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = all(&[]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let table = stdout(&out);
    assert_eq!(
        table.lines().filter(|l| l.ends_with("  valid")).count(),
        2,
        "{table}"
    );
    assert!(!table.contains("unsigned.txt"), "{table}");
    assert!(
        table.contains("1 signed document, 2 signatures (2 valid, 0 not), 1 unsigned"),
        "{table}"
    );
    let table = stdout(&all(&["--unsigned"]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("prescriptions/patient-17/unsigned.txt")
                && l.ends_with("unsigned")),
        "{table}"
    );

    // A change after both signed invalidates both.
    fs::write(&doc, "Ibuprofen 800 mg\n").unwrap();
    let text = expect(&verify(&doc, &alice.0), 21, "content changed");
    assert_eq!(text.lines().count(), 2);
}

#[test]
fn the_signature_survives_cp_a_out_of_the_mount_and_back() {
    if !fuse_available() {
        return;
    }
    let (ts, alice, m, _doc) = alice_signed_rx();
    let alice = &alice;
    let out_dir = ts.subdir("export");
    ok(std::process::Command::new("cp")
        .arg("-a")
        .arg(m.path("prescriptions/patient-17"))
        .arg(&out_dir));
    let copy = out_dir.join("patient-17/rx.txt");
    assert!(out_dir.join("patient-17/rx.txt.sig").exists());
    // Outside a mount the verifier says where the copy lives in the store.
    let verify_copy = |as_path: &str| {
        tresor()
            .arg("verify")
            .arg(&copy)
            .arg("--store")
            .arg(&ts.store)
            .args(["--as", as_path])
            .arg("--pse")
            .arg(&alice.0)
            .output()
            .unwrap()
    };
    expect(&verify_copy(RX), 0, "valid — signed by alice (physicians)");
    expect(&verify_copy("prescriptions/patient-99/rx.txt"), 22, "moved");
    // Without --as it cannot know, and says so.
    let out = tresor()
        .arg("verify")
        .arg(&copy)
        .arg("--pse")
        .arg(&alice.0)
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("--as DATAGROUP/PATH"),
        "{}",
        stderr(&out)
    );

    // Back in: remove the originals, copy the folder back.
    fs::remove_dir_all(m.path("prescriptions/patient-17")).unwrap();
    ok(std::process::Command::new("cp")
        .arg("-a")
        .arg(out_dir.join("patient-17"))
        .arg(m.path("prescriptions/")));
    m.unmount();
    let m = ts.mount_as(&alice.0, &alice.1, "alice2", &[]);
    expect(
        &verify(&m.path(RX), &alice.0),
        0,
        "valid — signed by alice (physicians)",
    );
}

#[test]
fn malformed_and_altered_signature_files() {
    if !fuse_available() {
        return;
    }
    let (_ts, alice, m, doc) = alice_signed_rx();
    let alice = &alice;
    let sig = m.path(&format!("{RX}.sig"));
    let good = fs::read_to_string(&sig).unwrap();

    // An altered statement: the path edited so a moved copy would pass.
    let altered = good.replace(RX, "prescriptions/patient-18/rx.txt");
    assert_ne!(altered, good);
    fs::create_dir_all(m.path("prescriptions/patient-18")).unwrap();
    fs::write(m.path("prescriptions/patient-18/rx.txt"), RX_TEXT).unwrap();
    fs::write(m.path("prescriptions/patient-18/rx.txt.sig"), &altered).unwrap();
    expect(
        &verify(&m.path("prescriptions/patient-18/rx.txt"), &alice.0),
        27,
        "INVALID: the signature does not verify with alice's certified key",
    );

    // Garbage and truncation.
    for bad in ["not a signature\n", &good[..good.len() / 2]] {
        fs::write(&sig, bad).unwrap();
        expect(&verify(&doc, &alice.0), 26, "malformed signature file");
        // Signing does not overwrite what it cannot read.
        let out = sign(&doc, alice);
        assert_eq!(code(&out), 26, "{}", stderr(&out));
        assert_eq!(fs::read_to_string(&sig).unwrap(), bad);
    }
}
