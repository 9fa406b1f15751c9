//! `tresor rekey` (issue 3): after a revocation rotated a data group's key,
//! everything still under the old epoch is re-encrypted — contents, symlink
//! targets, names, extended attributes — with no change to the plaintext,
//! and a run killed at any moment can be run again without loss.

use crate::util::{fuse_available, ok, pseudo_random, tresor, TestStore};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use tresor::format::content::{DirId, FileHeader};

const GROUP: &str = "lab";
/// A plaintext name of 220 bytes: stored as a hashed long name with a side file.
fn long_name() -> String {
    format!("long-{}", "n".repeat(215))
}

/// Store with roles physicians (keep `w` on lab) and nurses (lose `r`),
/// users alice and bob, and `files` files written by the admin.
fn populated(files: usize) -> (TestStore, (std::path::PathBuf, std::path::PathBuf)) {
    let ts = TestStore::new(&[GROUP]);
    let st = ts.store.to_str().unwrap().to_string();
    for r in ["physicians", "nurses"] {
        assert!(ts.admin(&["role", "add", &st, r]).status.success());
    }
    for (role, right) in [("physicians", "w"), ("nurses", "r")] {
        let out = ts.admin(&["grant", &st, role, GROUP, right]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let alice = ts.add_user("alice", "physicians");
    ts.add_user("bob", "nurses");
    let m = ts.mount();
    let g = m.path(GROUP);
    let sizes = [0usize, 1, 15, 16, 4095, 4096, 4097, 8192, 10_000, 70_001];
    for i in 0..files {
        let dir = match i % 5 {
            0 => g.clone(),
            1 => g.join("a"),
            2 => g.join("a/b"),
            3 => g.join("a/b/c"),
            _ => g.join("d"),
        };
        fs::create_dir_all(&dir).unwrap();
        let size = if i < sizes.len() {
            sizes[i]
        } else {
            (i * 977) % 20_000
        };
        fs::write(
            dir.join(format!("f{i:03}.dat")),
            pseudo_random(i as u64, size),
        )
        .unwrap();
    }
    fs::write(g.join("a").join(long_name()), b"behind a long name").unwrap();
    fs::create_dir(g.join(format!("dir-{}", long_name()))).unwrap();
    fs::write(
        g.join(format!("dir-{}/inner.txt", long_name())),
        b"inside a long-named directory",
    )
    .unwrap();
    std::os::unix::fs::symlink("../f000.dat", g.join("a/link")).unwrap();
    std::os::unix::fs::symlink("/some/absolute/target", g.join("abs-link")).unwrap();
    fs::write(g.join("tagged.txt"), b"has attributes").unwrap();
    xattr::set(g.join("tagged.txt"), "user.comment", b"checked by Dr. A").unwrap();
    xattr::set(g.join("a"), "user.dir-note", b"a directory attribute").unwrap();
    fs::set_permissions(g.join("tagged.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::hard_link(g.join("d/f004.dat"), g.join("a/b/hardlink.dat")).unwrap();
    fs::create_dir(g.join("empty")).unwrap();
    m.unmount();
    (ts, alice)
}

/// Every entry below `root` (a mounted data group): kind, content hash or
/// target, mode, mtime of files, user attributes.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = fs::symlink_metadata(&p).unwrap();
            let mut xs: Vec<String> = xattr::list(&p)
                .map(|l| {
                    l.map(|n| {
                        let v = xattr::get(&p, &n).unwrap().unwrap_or_default();
                        format!("{}={}", n.to_string_lossy(), String::from_utf8_lossy(&v))
                    })
                    .collect()
                })
                .unwrap_or_default();
            xs.sort();
            let what = if md.file_type().is_symlink() {
                format!("link {}", fs::read_link(&p).unwrap().display())
            } else if md.is_dir() {
                stack.push(p.clone());
                format!("dir {:o}", md.mode() & 0o7777)
            } else {
                let data = fs::read(&p).unwrap_or_else(|e| panic!("{rel}: {e}"));
                format!(
                    "file {:o} {} {} {:x} nlink={}",
                    md.mode() & 0o7777,
                    md.mtime(),
                    data.len(),
                    Sha256::digest(&data),
                    md.nlink()
                )
            };
            out.insert(rel, format!("{what} {xs:?}"));
        }
    }
    out
}

/// Epoch census of the ciphertext tree: (objects at `current`, objects
/// older, problems such as leftovers or a pending `tresor.dirid.next`).
fn census(group_dir: &Path, current: u32) -> (usize, usize, Vec<String>) {
    let (mut cur, mut old, mut issues) = (0, 0, Vec::new());
    let mut count = |epoch: u32, what: &Path| {
        if epoch == current {
            cur += 1;
        } else {
            assert!(
                epoch < current,
                "{}: epoch {epoch} from the future",
                what.display()
            );
            old += 1;
        }
    };
    let mut stack = vec![group_dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let ft = e.file_type().unwrap();
            if name.starts_with('.') || name == "tresor.dirid.next" || name == "tresor.rekey-links"
            {
                issues.push(format!("leftover {}", p.display()));
                continue;
            }
            if name == "tresor.dirid" {
                count(DirId::decode(&fs::read(&p).unwrap()).unwrap().epoch, &p);
            } else if name.ends_with(".name") {
                let entry = p.with_file_name(name.strip_suffix(".name").unwrap());
                if fs::symlink_metadata(&entry).is_err() {
                    issues.push(format!("orphan side file {}", p.display()));
                }
            } else if ft.is_dir() {
                stack.push(p);
            } else if ft.is_symlink() {
                let t = fs::read_link(&p).unwrap();
                let raw = tresor::format::names::decode(&t.to_string_lossy()).unwrap();
                count(FileHeader::decode(&raw).unwrap().epoch, &p);
            } else {
                let bytes = fs::read(&p).unwrap();
                count(FileHeader::decode(&bytes).unwrap().epoch, &p);
            }
        }
    }
    (cur, old, issues)
}

fn current_epoch(ts: &TestStore) -> u32 {
    let kf: serde_json::Value =
        serde_json::from_slice(&fs::read(ts.store.join(format!("keys/{GROUP}.json"))).unwrap())
            .unwrap();
    kf["current_epoch"].as_u64().unwrap() as u32
}

/// Takes `r` on lab away from nurses (after giving it back if needed): the key rotates.
fn revoke(ts: &TestStore) -> u32 {
    let st = ts.store.to_str().unwrap();
    let before = current_epoch(ts);
    assert!(ts
        .admin(&["grant", st, "nurses", GROUP, "r"])
        .status
        .success());
    let out = ts.admin(&["grant", st, "nurses", GROUP, "-"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "rotated the key of {GROUP} to epoch {}",
            before + 1
        )),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    before + 1
}

fn rekey_cmd(ts: &TestStore) -> std::process::Command {
    let mut c = tresor();
    c.arg("rekey")
        .arg(&ts.store)
        .arg(GROUP)
        .arg("--pse")
        .arg(&ts.pse)
        .arg("--passphrase-file")
        .arg(&ts.pass);
    c
}

/// Everything reads back identical as admin and as alice, who kept her right.
fn verify(
    ts: &TestStore,
    alice: &(std::path::PathBuf, std::path::PathBuf),
    want: &BTreeMap<String, String>,
) {
    let epoch = current_epoch(ts);
    let (cur, old, issues) = census(&ts.store.join("groups").join(GROUP), epoch);
    assert_eq!(old, 0, "objects left at an older epoch");
    assert!(issues.is_empty(), "{issues:#?}");
    assert!(cur > want.len() / 2, "census found only {cur} objects");
    let m = ts.mount();
    let got = snapshot(&m.path(GROUP));
    m.unmount();
    assert_eq!(&got, want, "admin's view after rekey");
    let a = ts.mount_as(&alice.0, &alice.1, "alice", &[]);
    let got = snapshot(&a.path(GROUP));
    a.unmount();
    assert_eq!(&got, want, "alice's view after rekey");
}

fn before_snapshot(ts: &TestStore) -> BTreeMap<String, String> {
    let m = ts.mount();
    let s = snapshot(&m.path(GROUP));
    m.unmount();
    s
}

#[test]
fn rekey_reencrypts_everything_and_keeps_the_plaintext() {
    if !fuse_available() {
        return;
    }
    let (ts, alice) = populated(300);
    let want = before_snapshot(&ts);
    assert!(want.len() > 300, "{}", want.len());
    assert!(want.keys().any(|k| k.ends_with(&long_name())));
    let epoch = revoke(&ts);
    assert_eq!(epoch, 2);
    let (_, old, _) = census(&ts.store.join("groups").join(GROUP), epoch);
    assert!(old > 300, "before rekey everything is at epoch 1 ({old})");

    // Refused while mounted: the running mount would lose sight of renamed entries.
    {
        let m = ts.mount();
        let out = rekey_cmd(&ts).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("is mounted at") && err.contains("unmount it first"),
            "{err}"
        );
        m.unmount();
    }

    let out = ok(&mut rekey_cmd(&ts));
    let text = String::from_utf8_lossy(&out.stdout);
    // 300 + the long name + the file in the long-named directory + tagged.txt;
    // the hard-linked file counts once. Directories: root, a, a/b, a/b/c, d,
    // the long-named one, empty.
    assert!(
        text.contains("rekeyed lab: 303 files, 2 symlinks, 7 directories to epoch 2"),
        "{text}"
    );
    assert!(text.contains("1 hard link re-linked"), "{text}");
    assert!(text.contains("2 xattrs re-sealed"), "{text}");
    assert!(
        out.stderr.is_empty(),
        "no progress bar or warnings without a terminal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    verify(&ts, &alice, &want);

    // A second run finds nothing to do.
    let out = ok(&mut rekey_cmd(&ts));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rekeyed lab: 0 files, 0 symlinks, 0 directories to epoch 2"),
        "{text}"
    );

    // The hard link is still one file in the store.
    let m = ts.mount();
    let a = fs::metadata(m.path("lab/d/f004.dat")).unwrap();
    let b = fs::metadata(m.path("lab/a/b/hardlink.dat")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    m.unmount();
}

fn pse(ts: &TestStore) -> tresor::pse::Pse {
    tresor::pse::open(&fs::read(&ts.pse).unwrap(), b"test passphrase").unwrap()
}

/// Stops the library at every k-th change (a crash at that point, leaving
/// temporaries behind), over and over, until a run finishes: every
/// intermediate state must be resumable, and nothing may be lost.
#[test]
fn rekey_resumes_after_a_crash_at_any_step() {
    if !fuse_available() {
        return;
    }
    let (ts, alice) = populated(40);
    let want = before_snapshot(&ts);
    revoke(&ts);
    let store = tresor::store::Store::open(&ts.store).unwrap();
    let admin = pse(&ts);
    let gdir = ts.store.join("groups").join(GROUP);
    let mut runs = 0;
    let mut left_behind = 0;
    let mut journal_left = 0;
    loop {
        let k = 1 + runs % 5;
        let n = std::cell::Cell::new(0);
        let hook = || {
            n.set(n.get() + 1);
            n.get() >= k
        };
        let opts = tresor::rekey::Options {
            progress: false,
            interrupt: Some(&hook),
        };
        runs += 1;
        match tresor::rekey::rekey(&store, GROUP, &admin, &opts) {
            Ok(r) => {
                assert!(r.ok(), "{:?}", r.errors);
                break;
            }
            Err(tresor::rekey::RekeyError::Interrupted) => {
                let (_, _, issues) = census(&gdir, 2);
                if issues.iter().any(|i| i.contains(".tresor-rekey-")) {
                    left_behind += 1;
                }
                if gdir.join("tresor.rekey-links").exists() {
                    journal_left += 1;
                }
            }
            Err(e) => panic!("run {runs}: {e}"),
        }
        assert!(runs < 5000, "no progress");
    }
    assert!(runs > 30, "only {runs} runs: the steps are too coarse");
    // Crashes between writing a copy and renaming it leave temporaries;
    // `verify` checks that the later runs removed every one.
    assert!(
        left_behind > 0,
        "no interrupted run left a temporary behind"
    );
    // …and crashes while re-linking the hard-linked file leave its journal,
    // which the next run finishes: `verify` checks nlink is still 2.
    assert!(journal_left > 0, "no run was interrupted while re-linking");
    verify(&ts, &alice, &want);
}

/// Renames inside a ciphertext tree, as inotify reports them: each is a
/// step `tresor rekey` completed (a re-encrypted file renamed over its
/// original, or an entry moved to its new-key name). The readiness signal
/// the kill test waits for, instead of a guessed delay.
struct Renames {
    fd: std::os::fd::OwnedFd,
    buf: Vec<u8>,
}

impl Renames {
    /// Watches every directory below `root` for completed renames.
    fn watch(root: &Path) -> Renames {
        use std::ffi::CString;
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: inotify_init1 takes no pointers; a negative result is checked.
        let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        assert!(
            raw >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            let c = CString::new(d.as_os_str().as_bytes()).unwrap();
            // SAFETY: `c` is a NUL-terminated path that outlives the call;
            // `raw` is open (owned by `fd`).
            let wd = unsafe { libc::inotify_add_watch(raw, c.as_ptr(), libc::IN_MOVED_TO) };
            assert!(
                wd >= 0,
                "inotify_add_watch {}: {}",
                d.display(),
                std::io::Error::last_os_error()
            );
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        Renames {
            fd,
            buf: vec![0; 64 * 1024],
        }
    }

    /// Blocks until renames are reported (or `wait` passes); returns how many.
    fn next(&mut self, wait: u16) -> usize {
        use nix::poll::{poll, PollFd, PollFlags};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, wait).unwrap() == 0 {
            return 0;
        }
        let n =
            nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&self.fd), &mut self.buf).unwrap();
        // struct inotify_event: wd (4), mask (4), cookie (4), len (4), name (len).
        let (mut at, mut count) = (0, 0);
        while at + 16 <= n {
            let mask = u32::from_ne_bytes(self.buf[at + 4..at + 8].try_into().unwrap());
            let len = u32::from_ne_bytes(self.buf[at + 12..at + 16].try_into().unwrap()) as usize;
            assert!(mask & libc::IN_Q_OVERFLOW == 0, "inotify queue overflowed");
            if mask & libc::IN_MOVED_TO != 0 {
                count += 1;
            }
            at += 16 + len;
        }
        count
    }
}

/// The real thing: `tresor rekey` killed with SIGKILL part-way — after the
/// 1st, 60th, 200th … completed rename, as inotify reports them — then run
/// again. No delay is guessed: each kill waits for its count of renames.
#[test]
fn rekey_survives_kill_9_midway() {
    if !fuse_available() {
        return;
    }
    let (ts, alice) = populated(300);
    let want = before_snapshot(&ts);
    let mut epoch = revoke(&ts);
    let gdir = ts.store.join("groups").join(GROUP);
    // A run of 300 files makes about 600 renames (contents, then names).
    let mut midway = 0;
    for kill_after in [1, 60, 200, 350, 500] {
        let (_, old, issues) = census(&gdir, epoch);
        if old == 0 && issues.is_empty() {
            // The last run finished: rotate again, so there is work to cut.
            epoch = revoke(&ts);
        }
        let mut renames = Renames::watch(&gdir);
        let mut child = rekey_cmd(&ts)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (mut seen, mut idle) = (0, 0);
        let finished = loop {
            if seen >= kill_after {
                break false;
            }
            if child.try_wait().unwrap().is_some() {
                break true;
            }
            match renames.next(100) {
                0 => idle += 1,
                n => (seen, idle) = (seen + n, 0),
            }
            // A hang guard, not a timing assertion: 60 s without a rename.
            assert!(idle < 600, "rekey made no progress for 60 s");
        };
        let _ = child.kill();
        child.wait().unwrap();
        let (cur, old, issues) = census(&gdir, epoch);
        eprintln!(
            "kill after {kill_after} renames (saw {seen}): finished={finished}, {cur} at epoch {epoch}, {old} older, {} leftovers",
            issues.len()
        );
        if !(old == 0 && issues.is_empty()) {
            midway += 1;
        }
    }
    assert!(
        midway >= 3,
        "rekey was killed part-way only {midway} time(s)"
    );
    let out = ok(&mut rekey_cmd(&ts));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("to epoch {epoch}")), "{text}");
    verify(&ts, &alice, &want);
}

/// docs/ACCESS.md: rekey takes an exclusive lock on the data group. While
/// one run holds it (stopped inside its first change by the library's
/// hook), `tresor rekey` of the same group is refused with a message that
/// says what to do; once the first run ends, the same command runs.
#[test]
fn a_second_rekey_of_the_group_is_refused_while_one_holds_the_lock() {
    if !fuse_available() {
        return;
    }
    let (ts, alice) = populated(10);
    let want = before_snapshot(&ts);
    revoke(&ts);
    let store = tresor::store::Store::open(&ts.store).unwrap();
    let admin = pse(&ts);
    let second = std::cell::RefCell::new(None);
    let hook = || {
        if second.borrow().is_none() {
            *second.borrow_mut() = Some(rekey_cmd(&ts).output().unwrap());
        }
        false
    };
    let opts = tresor::rekey::Options {
        progress: false,
        interrupt: Some(&hook),
    };
    let first = tresor::rekey::rekey(&store, GROUP, &admin, &opts).unwrap();
    assert!(first.ok(), "{:?}", first.errors);
    let out = second
        .into_inner()
        .expect("the hook ran during the first rekey");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second rekey ran beside the first");
    assert!(
        err.contains(&format!(
            "another `tresor rekey` is running on data group {GROUP}; wait for it to finish"
        )),
        "{err}"
    );
    // The lock went with the first run: the same command now runs (and
    // finds nothing left to do).
    let out = ok(&mut rekey_cmd(&ts));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rekeyed lab: 0 files"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    verify(&ts, &alice, &want);
}
