//! Users, roles, the access matrix and the admin-signed directory (issue 3),
//! end to end through real mounts.

use crate::util::{fuse_available, tresor, Mount, TestStore};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// What a user can do with one data group, as seen through the mount.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Seen {
    /// Listed, but every access is EACCES.
    Locked,
    /// Listing and reading work; writing fails.
    ReadOnly,
    /// Listing, reading and writing work.
    ReadWrite,
}

fn probe(m: &Mount, group: &str, readable_file: &str, marker: &str) -> Seen {
    let dir = m.path(group);
    assert!(dir.exists(), "{group} not listed at the mount root");
    match fs::read_dir(&dir) {
        Err(e) => {
            assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{group}: {e}");
            assert!(fs::read(dir.join(readable_file)).is_err());
            assert!(fs::write(dir.join(marker), b"x").is_err());
            Seen::Locked
        }
        Ok(_) => {
            fs::read(dir.join(readable_file))
                .unwrap_or_else(|e| panic!("{group}/{readable_file} unreadable: {e}"));
            match fs::write(dir.join(marker), b"written") {
                Ok(()) => Seen::ReadWrite,
                Err(e) => {
                    assert!(
                        matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)),
                        "{group}: {e}"
                    );
                    Seen::ReadOnly
                }
            }
        }
    }
}

fn expect_view(m: &Mount, who: &str, round: &str, want: &[(&str, Seen)]) {
    for (g, w) in want {
        let got = probe(m, g, "existing.txt", &format!("{who}-{round}.txt"));
        assert_eq!(got, *w, "{who} on {g} after {round}");
    }
}

fn status(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn matrix_end_to_end_with_grants_revocation_and_rotation() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["prescriptions", "lab"]);
    for r in ["physicians", "nurses"] {
        assert!(ts
            .admin(&["role", "add", ts.store.to_str().unwrap(), r])
            .status
            .success());
    }
    let st = ts.store.to_str().unwrap().to_string();
    let grant = |role: &str, g: &str, right: &str| {
        let out = ts.admin(&["grant", &st, role, g, right]);
        assert!(out.status.success(), "grant: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    grant("physicians", "prescriptions", "w");
    grant("physicians", "lab", "r");
    grant("nurses", "prescriptions", "r");
    let (alice, alice_pw) = ts.add_user("alice", "physicians");
    let (bob, bob_pw) = ts.add_user("bob", "nurses");

    // The admin writes a file into each group.
    {
        let m = ts.mount();
        for g in ["prescriptions", "lab"] {
            fs::write(m.path(&format!("{g}/existing.txt")), format!("{g} data")).unwrap();
        }
        m.unmount();
    }

    let out = tresor().arg("matrix").arg(&ts.store).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("signature valid"), "{text}");
    let rows: BTreeMap<&str, Vec<&str>> = text
        .lines()
        .skip(2)
        .map(|l| {
            let mut w = l.split_whitespace();
            (w.next().unwrap(), w.collect())
        })
        .collect();
    assert_eq!(rows["physicians"], ["r", "w"], "{text}"); // columns: lab, prescriptions
    assert_eq!(rows["nurses"], ["-", "r"], "{text}");

    use Seen::*;
    let a = ts.mount_as(&alice, &alice_pw, "alice", &[]);
    let b = ts.mount_as(&bob, &bob_pw, "bob", &[]);
    expect_view(
        &a,
        "alice",
        "start",
        &[("prescriptions", ReadWrite), ("lab", ReadOnly)],
    );
    expect_view(
        &b,
        "bob",
        "start",
        &[("prescriptions", ReadOnly), ("lab", Locked)],
    );
    // Mode bits say the same: 000 for locked, no write bits for read-only.
    let mode = |m: &Mount, p: &str| {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(m.path(p)).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&b, "lab"), 0);
    assert_eq!(mode(&b, "prescriptions/existing.txt") & 0o222, 0);
    a.unmount();
    b.unmount();

    // Grant nurses read on lab: bob gets an envelope, no rotation.
    let out = grant("nurses", "lab", "r");
    assert!(!out.contains("rotated"), "{out}");
    let b = ts.mount_as(&bob, &bob_pw, "bob", &[]);
    expect_view(
        &b,
        "bob",
        "grant",
        &[("prescriptions", ReadOnly), ("lab", ReadOnly)],
    );
    b.unmount();

    // What bob holds before he loses the right: the epoch-1 key of
    // prescriptions, as a key extracted from his running mount would be.
    let bob_before = {
        let pw = fs::read_to_string(&bob_pw).unwrap();
        let pse = tresor::pse::open(&fs::read(&bob).unwrap(), pw.trim_end().as_bytes()).unwrap();
        tresor::store::Store::open(&ts.store)
            .unwrap()
            .unlock(&pse)
            .unwrap()
    };
    assert!(bob_before
        .group("prescriptions")
        .unwrap()
        .epoch(1)
        .is_some());

    // Revoke nurses on prescriptions: the key rotates.
    let out = grant("nurses", "prescriptions", "-");
    assert!(
        out.contains("rotated the key of prescriptions to epoch 2"),
        "{out}"
    );
    let a = ts.mount_as(&alice, &alice_pw, "alice", &[]);
    let b = ts.mount_as(&bob, &bob_pw, "bob", &[]);
    expect_view(
        &a,
        "alice",
        "revoke",
        &[("prescriptions", ReadWrite), ("lab", ReadOnly)],
    );
    expect_view(
        &b,
        "bob",
        "revoke",
        &[("prescriptions", Locked), ("lab", ReadOnly)],
    );
    // Written before the revocation, still readable by those who keep the right;
    // written after it, under the new epoch.
    assert_eq!(
        fs::read_to_string(a.path("prescriptions/existing.txt")).unwrap(),
        "prescriptions data"
    );
    fs::write(a.path("prescriptions/after-rotation.txt"), b"epoch 2").unwrap();
    assert_eq!(
        fs::read(a.path("prescriptions/after-rotation.txt")).unwrap(),
        b"epoch 2"
    );
    a.unmount();
    b.unmount();
    let keys = fs::read_to_string(ts.store.join("keys/prescriptions.json")).unwrap();
    let kf: serde_json::Value = serde_json::from_str(&keys).unwrap();
    assert_eq!(kf["current_epoch"], 2);
    assert!(
        !keys.contains("\"bob\""),
        "bob's envelopes withdrawn from every epoch"
    );
    // The file written after the revocation is sealed under epoch 2 (its
    // header says so, FORMAT.md §5.1), and bob's old key does not open it;
    // the file written before still opens with that key (the control, and
    // the documented limit: rotation protects what is written after it).
    let files = backing_files(&ts, "prescriptions");
    let (new_epoch, new_id, new_block) = &files["epoch 2"];
    assert_eq!(*new_epoch, 2, "written after the revocation");
    let (old_epoch, old_id, old_block) = &files["prescriptions data"];
    assert_eq!(*old_epoch, 1, "written before the revocation");
    let old_key = bob_before.group("prescriptions").unwrap();
    assert!(old_key.epoch(2).is_none());
    let open_with = |epoch: u32, id: &[u8; 16], (aad, sealed): &(Vec<u8>, Vec<u8>)| {
        old_key
            .epoch(epoch)
            .unwrap()
            .file_cipher(id)
            .open(aad, sealed)
    };
    assert!(
        open_with(1, new_id, new_block).is_err(),
        "the old epoch's key opened a file written after the revocation"
    );
    assert_eq!(
        open_with(1, old_id, old_block).unwrap(),
        b"prescriptions data"
    );
    // LIMIT (docs/THREAT-MODEL.md, known limits): the new file's *name* is
    // sealed under the epoch of its directory (the group root, epoch 1,
    // FORMAT.md §6.2), so the old key still reads it until `tresor rekey`.
    let root = ts.store.join("groups/prescriptions");
    let dirid =
        tresor::format::content::DirId::decode(&fs::read(root.join("tresor.dirid")).unwrap())
            .unwrap();
    assert_eq!(dirid.epoch, 1);
    let names: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            let ct = tresor::format::names::decode(&n)?;
            let mut sealed = vec![0u8; 12];
            sealed.extend_from_slice(&ct);
            let padded = old_key
                .epoch(1)
                .unwrap()
                .names()
                .open(&tresor::format::names::name_aad(&dirid.id), &sealed)
                .ok()?;
            let plain = tresor::format::names::unpad(&padded)?;
            Some(String::from_utf8(plain.to_vec()).unwrap())
        })
        .collect();
    assert!(
        names.iter().any(|n| n == "after-rotation.txt"),
        "the documented name limit changed: update THREAT-MODEL.md ({names:?})"
    );

    // Downgrade physicians on prescriptions to read-only: no rotation needed.
    let out = grant("physicians", "prescriptions", "r");
    assert!(!out.contains("rotated"), "{out}");
    let a = ts.mount_as(&alice, &alice_pw, "alice", &[]);
    expect_view(
        &a,
        "alice",
        "downgrade",
        &[("prescriptions", ReadOnly), ("lab", ReadOnly)],
    );
    assert_eq!(
        fs::read(a.path("prescriptions/after-rotation.txt")).unwrap(),
        b"epoch 2"
    );
    a.unmount();

    // Removing bob rotates lab (he could read it); his PSE no longer opens the store.
    let out = ts.admin(&["user", "remove", &st, "bob"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("rotated the key of lab"));
    let out = tresor()
        .arg("mount")
        .arg(&ts.store)
        .arg(ts.subdir("bob2"))
        .arg("--pse")
        .arg(&bob)
        .arg("--passphrase-file")
        .arg(&bob_pw)
        .arg("-f")
        .output()
        .unwrap();
    assert_eq!(status(&out), 10, "{}", stderr(&out));
    assert!(stderr(&out).contains("bob was removed"), "{}", stderr(&out));
    let a = ts.mount_as(&alice, &alice_pw, "alice", &[]);
    expect_view(
        &a,
        "alice",
        "removal",
        &[("prescriptions", ReadOnly), ("lab", ReadOnly)],
    );
    a.unmount();
}

/// The small files at the root of `group`'s ciphertext tree, by plaintext
/// (decrypted with the admin's keys): header epoch, file id, and the AAD and
/// sealed bytes that hold the data — block 0 in content format 1, the tail
/// in record slot 0 in format 2 (docs/FORMAT.md §5b).
type Sealed = (u32, [u8; 16], (Vec<u8>, Vec<u8>));

fn backing_files(ts: &TestStore, group: &str) -> BTreeMap<String, Sealed> {
    use tresor::format::content::v2::{slot_offset, RecordFields, RECORD_FIELDS_LEN};
    use tresor::format::content::{block_aad, FileHeader, HEADER_LEN};
    let pw = fs::read_to_string(&ts.pass).unwrap();
    let admin = tresor::pse::open(&fs::read(&ts.pse).unwrap(), pw.trim_end().as_bytes()).unwrap();
    let ring = tresor::store::Store::open(&ts.store)
        .unwrap()
        .unlock(&admin)
        .unwrap();
    let keys = ring.group(group).unwrap();
    let mut out = BTreeMap::new();
    for e in fs::read_dir(ts.store.join("groups").join(group)).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !p.is_file() || name.starts_with("tresor.") {
            continue;
        }
        let raw = fs::read(&p).unwrap();
        let h = FileHeader::decode(&raw).unwrap();
        let cipher = keys.epoch(h.epoch).unwrap().file_cipher(&h.file_id);
        let (aad, sealed) = if h.version == 1 {
            let block = raw[HEADER_LEN as usize..].to_vec();
            (block_aad(&h.file_id, 0, true).to_vec(), block)
        } else {
            // The record in force: of the slots that open, the higher counter.
            (0..2)
                .filter_map(|i| {
                    let slot = raw.get(slot_offset(i) as usize..)?;
                    let fields =
                        RecordFields::decode(slot.get(..RECORD_FIELDS_LEN)?.try_into().ok()?);
                    let sealed = slot.get(RECORD_FIELDS_LEN..fields.slot_len())?.to_vec();
                    let aad = fields.aad(&h.file_id).to_vec();
                    cipher.open(&aad, &sealed).ok()?;
                    Some((fields.counter, aad, sealed))
                })
                .max_by_key(|(counter, _, _)| *counter)
                .map(|(_, aad, sealed)| (aad, sealed))
                .unwrap()
        };
        let plain = cipher.open(&aad, &sealed).unwrap();
        out.insert(
            String::from_utf8(plain).unwrap(),
            (h.epoch, h.file_id, (aad, sealed)),
        );
    }
    out
}

#[test]
fn crypto_not_the_driver_keeps_a_denied_group_closed() {
    // Bypass the driver: use the library with alice's PSE directly.
    let ts = TestStore::new(&["lab", "wards"]);
    let st = ts.store.to_str().unwrap().to_string();
    assert!(ts.admin(&["role", "add", &st, "nurses"]).status.success());
    assert!(ts
        .admin(&["grant", &st, "nurses", "wards", "r"])
        .status
        .success());
    let (alice, alice_pw) = ts.add_user("alice", "nurses");
    let pw = fs::read_to_string(&alice_pw).unwrap();
    let pse = tresor::pse::open(&fs::read(&alice).unwrap(), pw.trim_end().as_bytes()).unwrap();
    let store = tresor::store::Store::open(&ts.store).unwrap();
    let ring = store.unlock(&pse).unwrap();
    assert!(ring.group("wards").is_some());
    assert!(ring.group("lab").is_none() && ring.is_denied("lab"));
    // No envelope for lab opens with her key, whatever the matrix says.
    let kf = store.key_file("lab").unwrap();
    for ep in &kf.epochs {
        for env in &ep.envelopes {
            let wrapped = tresor::format::names::decode(&env.wrapped).unwrap();
            let label = tresor::format::manifest::envelope_label(
                &store.manifest().store_id,
                "lab",
                ep.epoch,
            );
            assert!(pse.transport.unwrap_key(&label, &wrapped).is_err());
        }
    }
    // Even with a forged matrix the library has no key to use: group_keys finds none.
    let keys = store.group_keys("lab", &pse, None).unwrap();
    assert!(keys.current().is_none());
}

#[test]
fn tampered_or_rolled_back_directory_is_refused() {
    let ts = TestStore::new(&["g"]);
    let st = ts.store.to_str().unwrap().to_string();
    assert!(ts.admin(&["role", "add", &st, "r1"]).status.success());
    let old = fs::read(ts.store.join("directory.json")).unwrap();
    assert!(ts.admin(&["role", "add", &st, "r2"]).status.success());
    let current = fs::read(ts.store.join("directory.json")).unwrap();

    // One changed byte anywhere: refused by matrix and by admin commands.
    for i in [
        0,
        current.len() / 3,
        current.len() / 2,
        current.len() - 10,
        current.len() - 1,
    ] {
        let mut b = current.clone();
        b[i] ^= 0x04;
        fs::write(ts.store.join("directory.json"), &b).unwrap();
        let out = tresor().arg("matrix").arg(&ts.store).output().unwrap();
        assert_eq!(status(&out), 5, "byte {i}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("directory signature invalid"),
            "{}",
            stderr(&out)
        );
        let out = ts.admin(&["role", "add", &st, "r3"]);
        assert_eq!(status(&out), 5);
    }
    // The older, validly signed directory put back: a rollback.
    fs::write(ts.store.join("directory.json"), &old).unwrap();
    let out = tresor().arg("matrix").arg(&ts.store).output().unwrap();
    assert_eq!(status(&out), 6, "{}", stderr(&out));
    assert!(stderr(&out).contains("rollback"), "{}", stderr(&out));
    fs::write(ts.store.join("directory.json"), &current).unwrap();
    assert!(tresor()
        .arg("matrix")
        .arg(&ts.store)
        .output()
        .unwrap()
        .status
        .success());
}

#[test]
fn bad_names_and_foreign_pses_get_distinct_errors() {
    let ts = TestStore::new(&["g"]);
    let st = ts.store.to_str().unwrap().to_string();
    assert!(ts.admin(&["role", "add", &st, "nurses"]).status.success());
    let cases: &[(&[&str], &str)] = &[
        (&["role", "add", &st, "nurses"], "already exists"),
        (&["role", "add", &st, "../evil"], "not a valid name"),
        (&["grant", &st, "nobody", "g", "r"], "no role named"),
        (
            &["grant", &st, "nurses", "nothing", "r"],
            "no data group named",
        ),
        (&["user", "remove", &st, "ghost"], "no user named"),
        (&["datagroup", "add", &st, "g"], "already exists"),
    ];
    for (args, msg) in cases {
        let out = ts.admin(args);
        assert_eq!(status(&out), 7, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(msg), "{args:?}: {}", stderr(&out));
    }
    let out = ts.admin(&["grant", &st, "nurses", "g", "x"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("w, r or -"));

    // A PSE of another store (its own admin) is not a member here.
    let other = TestStore::new(&[]);
    let out = tresor()
        .args(["role", "add"])
        .arg(&ts.store)
        .arg("x")
        .arg("--pse")
        .arg(&other.pse)
        .arg("--passphrase-file")
        .arg(&other.pass)
        .output()
        .unwrap();
    assert_eq!(status(&out), 8, "{}", stderr(&out));
    // A user's PSE of another store: not a member either.
    assert!(other
        .admin(&["role", "add", other.store.to_str().unwrap(), "nurses"])
        .status
        .success());
    let (carol, carol_pw) = other.add_user("carol", "nurses");
    let out = tresor()
        .arg("mount")
        .arg(&ts.store)
        .arg(ts.subdir("carol"))
        .arg("--pse")
        .arg(&carol)
        .arg("--passphrase-file")
        .arg(&carol_pw)
        .arg("-f")
        .output()
        .unwrap();
    assert_eq!(status(&out), 8, "{}", stderr(&out));
    assert!(stderr(&out).contains("another store"), "{}", stderr(&out));
}

#[test]
fn user_add_with_unknown_role_leaves_no_pse_behind() {
    let ts = TestStore::new(&["g"]);
    let st = ts.store.to_str().unwrap().to_string();
    let pse_out = ts.dir.path().join("x.pse");
    let upw = ts.dir.path().join("x.pass");
    fs::write(&upw, "x passphrase\n").unwrap();
    let out = tresor()
        .args(["user", "add", &st, "x", "--role", "ghosts", "--pse-out"])
        .arg(&pse_out)
        .arg("--user-passphrase-file")
        .arg(&upw)
        .arg("--pse")
        .arg(&ts.pse)
        .arg("--passphrase-file")
        .arg(&ts.pass)
        .output()
        .unwrap();
    assert_eq!(status(&out), 7, "{}", stderr(&out));
    assert!(!Path::new(&pse_out).exists());
}

#[test]
fn a_forged_envelope_is_refused_and_locks_only_its_group() {
    let ts = TestStore::new(&["a", "b"]);
    let st = ts.store.to_str().unwrap().to_string();
    assert!(ts.admin(&["role", "add", &st, "readers"]).status.success());
    for g in ["a", "b"] {
        assert!(ts
            .admin(&["grant", &st, "readers", g, "r"])
            .status
            .success());
    }
    let (alice, alice_pw) = ts.add_user("alice", "readers");
    // The attacker wraps a key of their choosing to alice's public key.
    let store = tresor::store::Store::open(&ts.store).unwrap();
    let pw = fs::read_to_string(&alice_pw).unwrap();
    let pse = tresor::pse::open(&fs::read(&alice).unwrap(), pw.trim_end().as_bytes()).unwrap();
    let mut kf = store.key_file("a").unwrap();
    let fpr = pse.public.transport_public.fingerprint().unwrap();
    let chosen = tresor::crypto::SecretKey::random();
    for ep in &mut kf.epochs {
        ep.envelopes.retain(|e| e.key_fpr != fpr);
        ep.envelopes.push(
            store
                .envelope(
                    "a",
                    ep.epoch,
                    &chosen,
                    "alice",
                    &pse.public.transport_public,
                )
                .unwrap(),
        );
    }
    store.write_key_file(&kf).unwrap();
    let ring = store.unlock(&pse).unwrap();
    assert!(
        ring.is_denied("a") && ring.group("a").is_none(),
        "forged key accepted"
    );
    assert!(ring.group("b").is_some(), "the other group must stay open");
    let err = store.group_keys(
        "a",
        &pse,
        Some(&store.read_directory(&pse.public.trust_anchor).unwrap()),
    );
    assert!(format!("{}", err.unwrap_err()).contains("forged envelope"));
}

#[test]
fn xattrs_survive_a_key_rotation_and_never_resurface() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let st = ts.store.to_str().unwrap().to_string();
    assert!(ts.admin(&["role", "add", &st, "readers"]).status.success());
    assert!(ts
        .admin(&["grant", &st, "readers", "g", "r"])
        .status
        .success());
    let m = ts.mount();
    let f = m.path("g/f");
    fs::write(&f, b"x").unwrap();
    xattr::set(&f, "user.note", b"before").unwrap();
    m.unmount();
    // Withdrawing read access rotates the key to epoch 2.
    assert!(ts
        .admin(&["grant", &st, "readers", "g", "-"])
        .status
        .success());
    let m = ts.mount();
    let f = m.path("g/f");
    assert_eq!(
        xattr::get(&f, "user.note").unwrap().as_deref(),
        Some(&b"before"[..])
    );
    xattr::set(&f, "user.note", b"after").unwrap();
    assert_eq!(
        xattr::get(&f, "user.note").unwrap().as_deref(),
        Some(&b"after"[..])
    );
    let names: Vec<_> = xattr::list(&f).unwrap().collect();
    assert_eq!(names, ["user.note"], "one attribute, not one per epoch");
    xattr::remove(&f, "user.note").unwrap();
    assert_eq!(
        xattr::get(&f, "user.note").unwrap(),
        None,
        "an old copy resurfaced"
    );
    m.unmount();
}

/// Names, modes, sizes, times and bytes of everything in the store: any
/// change a mount makes to the backing files shows here.
fn backing_state(store: &Path) -> (Vec<String>, Vec<u8>) {
    use std::os::unix::fs::MetadataExt;
    let mut meta = Vec::new();
    let mut stack = vec![store.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            meta.push(format!(
                "{} {:o} {} {} {}",
                p.display(),
                md.mode(),
                md.len(),
                md.mtime_nsec() + md.mtime() * 1_000_000_000,
                md.nlink()
            ));
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    meta.sort();
    (meta, crate::util::all_store_bytes(store))
}

/// Every change to an `r` data group, one per kind of call, each on its own
/// target so that the `w` control can run the same list.
type Change = fn(&Path) -> std::io::Result<()>;

fn changes() -> Vec<(&'static str, Change)> {
    use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    vec![
        ("write an existing file", |g| {
            use std::io::Write;
            fs::OpenOptions::new()
                .write(true)
                .open(g.join("write.txt"))?
                .write_all(b"changed")
        }),
        ("create a file", |g| {
            fs::write(g.join("created.txt"), b"new")
        }),
        ("truncate", |g| {
            nix::unistd::truncate(&g.join("truncate.txt"), 1).map_err(std::io::Error::from)
        }),
        ("unlink", |g| fs::remove_file(g.join("unlink.txt"))),
        ("rename", |g| {
            fs::rename(g.join("rename.txt"), g.join("renamed.txt"))
        }),
        ("chmod", |g| {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(g.join("chmod.txt"), fs::Permissions::from_mode(0o600))
        }),
        ("utimens", |g| {
            let t = TimeSpec::new(981_173_106, 0);
            utimensat(
                None,
                &g.join("utimens.txt"),
                &t,
                &t,
                UtimensatFlags::FollowSymlink,
            )
            .map_err(std::io::Error::from)
        }),
        ("setxattr", |g| {
            xattr::set(g.join("setxattr.txt"), "user.note", b"added")
        }),
        ("removexattr", |g| {
            xattr::remove(g.join("removexattr.txt"), "user.note")
        }),
        ("mkdir", |g| fs::create_dir(g.join("newdir"))),
        ("rmdir", |g| fs::remove_dir(g.join("emptydir"))),
        ("symlink", |g| {
            std::os::unix::fs::symlink("write.txt", g.join("newlink"))
        }),
        ("link", |g| {
            fs::hard_link(g.join("link.txt"), g.join("link2.txt"))
        }),
        ("mknod (a fifo)", |g| {
            mknod(
                &g.join("newfifo"),
                SFlag::S_IFIFO,
                Mode::from_bits_truncate(0o644),
                0,
            )
            .map_err(std::io::Error::from)
        }),
    ]
}

/// docs/ACCESS.md: a role with `r` on a data group reads it and changes
/// nothing — every kind of change is EROFS and leaves the store's bytes,
/// names, modes and times as they were. The control: a role with `w` makes
/// each of the same changes.
#[test]
fn read_only_right_refuses_every_change_and_write_allows_each() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["lab"]);
    let st = ts.store.to_str().unwrap().to_string();
    for (role, right) in [("readers", "r"), ("writers", "w")] {
        assert!(ts.admin(&["role", "add", &st, role]).status.success());
        let out = ts.admin(&["grant", &st, role, "lab", right]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let (ro, ro_pw) = ts.add_user("reta", "readers");
    let (rw, rw_pw) = ts.add_user("willi", "writers");
    let m = ts.mount();
    let g = m.path("lab");
    for f in [
        "write.txt",
        "truncate.txt",
        "unlink.txt",
        "rename.txt",
        "chmod.txt",
        "utimens.txt",
        "setxattr.txt",
        "removexattr.txt",
        "link.txt",
    ] {
        fs::write(g.join(f), format!("content of {f}")).unwrap();
    }
    xattr::set(g.join("removexattr.txt"), "user.note", b"present").unwrap();
    fs::create_dir(g.join("emptydir")).unwrap();
    m.unmount();

    let before = backing_state(&ts.store);
    let r = ts.mount_as(&ro, &ro_pw, "reta", &[]);
    let g = r.path("lab");
    // Reading works: this is a read-only view, not a locked one.
    assert_eq!(
        fs::read_to_string(g.join("write.txt")).unwrap(),
        "content of write.txt"
    );
    assert_eq!(
        xattr::get(g.join("removexattr.txt"), "user.note")
            .unwrap()
            .as_deref(),
        Some(&b"present"[..])
    );
    for (what, change) in changes() {
        let err = change(&g).expect_err(what);
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{what}: {err}");
    }
    r.unmount();
    let after = backing_state(&ts.store);
    assert_eq!(before.0, after.0, "names, modes, sizes or times changed");
    assert!(before.1 == after.1, "the store's bytes changed");

    // The control: with `w`, each of the same calls succeeds.
    let w = ts.mount_as(&rw, &rw_pw, "willi", &[]);
    let g = w.path("lab");
    for (what, change) in changes() {
        change(&g).unwrap_or_else(|e| panic!("{what} with w: {e}"));
    }
    assert_eq!(
        fs::read(g.join("write.txt")).unwrap(),
        b"changed of write.txt"
    );
    assert_eq!(fs::metadata(g.join("truncate.txt")).unwrap().len(), 1);
    assert!(g.join("renamed.txt").exists() && !g.join("unlink.txt").exists());
    assert!(g.join("newdir").is_dir() && !g.join("emptydir").exists());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(g.join("link.txt")).unwrap().nlink(), 2);
    w.unmount();
}

/// docs/THREAT-MODEL.md: `tresor init` creates the store directory 0700
/// (and its `keys/` and `groups/`, and each data group's tree), the PSE
/// 0600; the manifest and key files are 0644 (docs/FORMAT.md §3). An
/// existing empty directory given to `tresor init` keeps its own mode: the
/// administrator chose it (e.g. for a store several accounts mount).
#[test]
fn init_creates_the_store_0700_and_the_pse_0600() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let ts = TestStore::new(&["g"]);
    let s = &ts.store;
    for d in [
        s.clone(),
        s.join("keys"),
        s.join("groups"),
        s.join("groups/g"),
    ] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    assert_eq!(mode(&ts.pse), 0o600);
    for f in ["tresor.json", "keys/g.json"] {
        assert_eq!(mode(&s.join(f)), 0o644, "{f}");
    }
    assert_eq!(mode(&s.join("groups/g/tresor.dirid")), 0o444);

    // A directory the administrator made beforehand keeps its mode.
    let pre = ts.dir.path().join("pre");
    fs::create_dir(&pre).unwrap();
    fs::set_permissions(&pre, fs::Permissions::from_mode(0o750)).unwrap();
    let out = tresor()
        .arg("init")
        .arg(&pre)
        .arg("--pse")
        .arg(ts.dir.path().join("pre.pse"))
        .arg("--passphrase-file")
        .arg(&ts.pass)
        .args(["--kdf-memory-mib", "8"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode(&pre), 0o750);
    assert_eq!(mode(&pre.join("keys")), 0o700);
    assert_eq!(mode(&ts.dir.path().join("pre.pse")), 0o600);
}
