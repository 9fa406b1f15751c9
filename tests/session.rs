//! Sessions (issue 7): lock, idle lock, user switch, failed logins, the PSE
//! medium pulled, the control socket's owner check — on real mounts.

use crate::util::{control_socket, fuse_available, isolate_as, tresor, Mount, TestStore};
use serde_json::Value;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tresor::session::Request;

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// `tresor status MNT --json` (exit 0 unlocked, 31 locked).
fn status(m: &Mount) -> Value {
    let o = tresor()
        .arg("status")
        .arg(&m.mnt)
        .arg("--json")
        .output()
        .unwrap();
    assert!(matches!(code(&o), 0 | 31), "status: {}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["locked"].as_bool().unwrap(), code(&o) == 31, "{v}");
    v
}

/// Moves the idle lock's clock of `m` (mounted with `--test-clock`) forward
/// by `by`. The driver checks the idle lock before it replies, so the status
/// in the reply is its decision: no waiting, no wall clock.
fn advance_clock(m: &Mount, by: Duration) -> Value {
    let mut s = std::os::unix::net::UnixStream::connect(control_socket(&m.mnt)).unwrap();
    let r = tresor::session::call(&mut s, &Request::advance_clock(by)).expect("advance_clock");
    serde_json::to_value(r.status.expect("a status in the reply")).unwrap()
}

/// Waits until the driver's watcher has locked `m`; the status then.
fn wait_locked(m: &Mount) -> Value {
    let start = Instant::now();
    loop {
        let s = status(m);
        if s["locked"] == true {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not locked within 30 s (a hang guard, not a timing assertion): {s}"
        );
        std::thread::sleep(Duration::from_millis(20)); // poll interval under the 30 s hang guard
    }
}

const MIN: Duration = Duration::from_secs(60);

fn lock(m: &Mount) {
    let o = tresor().arg("lock").arg(&m.mnt).output().unwrap();
    assert!(o.status.success(), "lock: {}", text(&o));
}

fn login(m: &Mount, pse: &Path, pass: &Path) -> Output {
    tresor()
        .arg("login")
        .arg(&m.mnt)
        .arg("--pse")
        .arg(pse)
        .arg("--passphrase-file")
        .arg(pass)
        .output()
        .unwrap()
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// A store with the access issue's matrix: physicians w on prescriptions
/// and r on lab, nurses r on prescriptions only; alice is a physician,
/// bob a nurse; the admin wrote a file into each group.
struct Ward {
    ts: TestStore,
    alice: (PathBuf, PathBuf),
    bob: (PathBuf, PathBuf),
}

fn ward() -> Ward {
    let ts = TestStore::new(&["prescriptions", "lab"]);
    let st = ts.store.to_str().unwrap().to_string();
    for r in ["physicians", "nurses"] {
        assert!(ts.admin(&["role", "add", &st, r]).status.success());
    }
    for (role, g, right) in [
        ("physicians", "prescriptions", "w"),
        ("physicians", "lab", "r"),
        ("nurses", "prescriptions", "r"),
    ] {
        let o = ts.admin(&["grant", &st, role, g, right]);
        assert!(o.status.success(), "grant: {}", text(&o));
    }
    let alice = ts.add_user("alice", "physicians");
    let bob = ts.add_user("bob", "nurses");
    let m = ts.mount_with(&["--idle-lock", "0"]);
    for g in ["prescriptions", "lab"] {
        fs::write(m.path(&format!("{g}/existing.txt")), format!("{g} data")).unwrap();
    }
    m.unmount();
    Ward { ts, alice, bob }
}

#[test]
fn lock_refuses_every_access_and_serves_no_cached_plaintext_login_restores() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let m = ts.mount_with(&["--idle-lock", "0"]);
    let secret = "the plaintext that must not outlive the lock\n".repeat(100);
    fs::write(m.path("g/f.txt"), &secret).unwrap();
    // Into the page cache, and a descriptor kept open across the lock.
    assert_eq!(fs::read_to_string(m.path("g/f.txt")).unwrap(), secret);
    let mut kept = fs::File::open(m.path("g/f.txt")).unwrap();
    let mut buf = String::new();
    kept.read_to_string(&mut buf).unwrap();
    assert_eq!(buf, secret);

    lock(&m);
    let s = status(&m);
    assert_eq!(s["locked"], true);
    assert!(s["user"].is_null(), "{s}");
    assert_eq!(errno_of(fs::read(m.path("g/f.txt"))), Some(libc::EACCES));
    assert_eq!(errno_of(fs::read_dir(m.path(""))), Some(libc::EACCES));
    assert_eq!(errno_of(fs::metadata(m.path("g"))), Some(libc::EACCES));
    assert_eq!(
        errno_of(fs::write(m.path("g/new.txt"), b"x")),
        Some(libc::EACCES)
    );
    // The descriptor opened before the lock: no cached page, no key.
    kept.seek(SeekFrom::Start(0)).unwrap();
    let mut again = Vec::new();
    assert_eq!(errno_of(kept.read_to_end(&mut again)), Some(libc::EACCES));
    assert!(again.is_empty());
    // The mount point itself still stats (the mount stays mounted).
    assert!(fs::metadata(&m.mnt).unwrap().is_dir());
    assert!(m.is_mounted());

    let o = login(&m, &ts.pse, &ts.pass);
    assert!(o.status.success(), "login: {}", text(&o));
    assert!(text(&o).contains("admin logged in"), "{}", text(&o));
    // Handles from before the lock stay dead after a login: close and
    // reopen. (Once the file is read again through a new handle, the
    // kernel's page cache may serve the old one too — see docs/SESSIONS.md.)
    kept.seek(SeekFrom::Start(0)).unwrap();
    assert_eq!(errno_of(kept.read_to_end(&mut again)), Some(libc::EACCES));
    assert_eq!(fs::read_to_string(m.path("g/f.txt")).unwrap(), secret);
    drop(kept);
    assert_eq!(status(&m)["user"], "admin");
    m.unmount();
}

/// A process of its own (the test's own spawns would flush its files on
/// exec): it maps a file and reads it, and leaves dirty pages in the
/// kernel's cache — through a shared mapping and through write(2) — then
/// waits while the test locks.
const MAPPER: &str = r#"
import mmap, os, sys
f = open(sys.argv[1], 'rb')
m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
d = os.open(sys.argv[2], os.O_RDWR)
dm = mmap.mmap(d, 8192)
dm[0:14] = b"DIRTY-MAPPED-1"
dm[4096:4110] = b"DIRTY-MAPPED-2"
w = os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(w, b"DIRTY-WRITTEN " * 1000)
print("BEFORE", m[:13].decode(), flush=True)
sys.stdin.readline()
pid = os.fork()
if pid == 0:
    data = m[:]
    os.write(1, b"CHILD READ " + data[:13] + b"\n")
    os._exit(0)
_, st = os.waitpid(pid, 0)
print("CHILD SIGNAL", os.WTERMSIG(st) if os.WIFSIGNALED(st) else 0, flush=True)
"#;

#[test]
fn a_mapping_read_before_the_lock_serves_no_plaintext_and_dirty_pages_are_kept() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let m = ts.mount_with(&["--idle-lock", "0"]);
    let secret = "MAPPED-SECRET ".repeat(1000);
    fs::write(m.path("g/mapped"), &secret).unwrap();
    fs::write(m.path("g/dirty-mapped"), vec![b'.'; 8192]).unwrap();
    let mut py = Command::new("python3")
        .arg("-c")
        .arg(MAPPER)
        .args([
            m.path("g/mapped"),
            m.path("g/dirty-mapped"),
            m.path("g/dirty-written"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = py.stdout.take().unwrap();
    let mut first = [0u8; 20];
    out.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"BEFORE MAPPED-SECRET");
    lock(&m);
    py.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    py.wait().unwrap();
    assert!(
        !rest.contains("MAPPED-SECRET"),
        "plaintext after the lock: {rest}"
    );
    assert!(
        rest.contains(&format!("CHILD SIGNAL {}", libc::SIGBUS)),
        "the mapping should fault (SIGBUS): {rest}"
    );
    // The dirty pages reached the store before the keys went: read them
    // back through a fresh mount, not through any cache.
    m.unmount();
    let m = ts.mount_with(&["--idle-lock", "0"]);
    let d = fs::read(m.path("g/dirty-mapped")).unwrap();
    assert_eq!(&d[0..14], b"DIRTY-MAPPED-1");
    assert_eq!(&d[4096..4110], b"DIRTY-MAPPED-2");
    assert_eq!(
        fs::read(m.path("g/dirty-written")).unwrap(),
        b"DIRTY-WRITTEN ".repeat(1000)
    );
    m.unmount();
}

#[test]
fn idle_lock_locks_when_idle_and_activity_keeps_it_open() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    // The idle clock moves when the test says (docs/SESSIONS.md); real time
    // only adds to it, and the margins below are 20 min and more.
    let m = ts.mount_with(&["--idle-lock", "1h", "--test-clock"]);
    fs::write(m.path("g/f"), b"data").unwrap();
    assert_eq!(status(&m)["idle_lock_ms"], 3_600_000);
    // Three times 40 min without a request, then one: two hours of clock,
    // never an hour without a request. A create always reaches the driver
    // (no kernel cache answers it), so it is activity for certain.
    for i in 0..3 {
        let s = advance_clock(&m, 40 * MIN);
        assert_eq!(s["locked"], false, "locked 40 min after a request: {s}");
        fs::write(m.path(&format!("g/activity-{i}")), b"x").unwrap();
    }
    let s = status(&m);
    assert_eq!(s["locked"], false, "{s}");
    assert!(s["idle_left_ms"].as_u64().unwrap() > 40 * 60_000, "{s}");
    // Idle: half the limit leaves it open; the whole limit locks it.
    let s = advance_clock(&m, 30 * MIN);
    assert_eq!(s["locked"], false, "locked after 30 min idle: {s}");
    let locked = advance_clock(&m, 30 * MIN);
    assert_eq!(
        locked["locked"], true,
        "not locked after 1 h idle: {locked}"
    );
    assert_eq!(locked["lock_reason"], "idle for 1h", "{locked}");
    assert_eq!(status(&m)["locked"], true);
    assert!(m.log().contains("test clock advanced"), "{}", m.log());
    assert_eq!(errno_of(fs::read(m.path("g/f"))), Some(libc::EACCES));
    assert!(login(&m, &ts.pse, &ts.pass).status.success());
    assert_eq!(fs::read(m.path("g/f")).unwrap(), b"data");
    m.unmount();
}

#[test]
fn switching_alice_to_bob_and_back_gives_exactly_each_view() {
    if !fuse_available() {
        return;
    }
    let w = ward();
    let (alice, alice_pw) = &w.alice;
    let (bob, bob_pw) = &w.bob;
    let m = w.ts.mount_as(alice, alice_pw, "mnt", &["--idle-lock", "0"]);
    let s = status(&m);
    assert_eq!(s["user"], "alice");
    assert_eq!(s["role"], "physicians");
    // alice reads lab (into the caches) and keeps it open.
    assert_eq!(
        fs::read_to_string(m.path("lab/existing.txt")).unwrap(),
        "lab data"
    );
    let mut kept = fs::File::open(m.path("lab/existing.txt")).unwrap();
    fs::write(m.path("prescriptions/by-alice.txt"), b"alice wrote").unwrap();

    let o = login(&m, bob, bob_pw);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("switched from alice to bob"),
        "{}",
        text(&o)
    );
    let s = status(&m);
    assert_eq!(s["user"], "bob");
    assert_eq!(s["role"], "nurses");
    let rights: Vec<(String, String)> = s["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap().to_string(),
                g["right"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rights,
        [
            ("lab".into(), "-".into()),
            ("prescriptions".into(), "r".into())
        ]
    );
    // bob's view: lab locked (listed, mode 000, EACCES), prescriptions read-only.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(m.path("lab")).unwrap().permissions().mode() & 0o777,
        0
    );
    assert_eq!(errno_of(fs::read_dir(m.path("lab"))), Some(libc::EACCES));
    assert!(fs::read(m.path("lab/existing.txt")).is_err());
    let mut again = Vec::new();
    kept.seek(SeekFrom::Start(0)).unwrap();
    assert_eq!(errno_of(kept.read_to_end(&mut again)), Some(libc::EACCES));
    assert!(again.is_empty(), "alice's lab data served to bob");
    assert_eq!(
        fs::read(m.path("prescriptions/by-alice.txt")).unwrap(),
        b"alice wrote"
    );
    assert!(fs::write(m.path("prescriptions/by-bob.txt"), b"x").is_err());
    let listed: Vec<String> = fs::read_dir(m.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");

    // bob → alice: her view again.
    let o = login(&m, alice, alice_pw);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        fs::read_to_string(m.path("lab/existing.txt")).unwrap(),
        "lab data"
    );
    fs::write(m.path("prescriptions/by-alice-2.txt"), b"again").unwrap();
    assert!(fs::write(m.path("lab/by-alice.txt"), b"x").is_err());
    assert_eq!(status(&m)["user"], "alice");
    drop(kept);
    m.unmount();
}

#[test]
fn three_failed_logins_lock_unmount_and_end_the_driver_without_losing_data() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let mut m = ts.mount_with(&["--idle-lock", "0"]);
    fs::write(m.path("g/closed.txt"), b"closed before").unwrap();
    let wrong = ts.dir.path().join("wrong");
    fs::write(&wrong, "not the passphrase\n").unwrap();
    for left in [2, 1] {
        let o = login(&m, &ts.pse, &wrong);
        assert_eq!(code(&o), 3, "{}", text(&o));
        assert!(text(&o).contains(&format!("{left} more")), "{}", text(&o));
        // A wrong passphrase changes nothing for the logged-in user.
        assert_eq!(status(&m)["failed_logins"], 3 - left);
        assert_eq!(fs::read(m.path("g/closed.txt")).unwrap(), b"closed before");
    }
    // Written (into the kernel's cache) just before the third failure.
    let mut open = fs::File::create(m.path("g/open.txt")).unwrap();
    open.write_all(b"still open at the end").unwrap();
    let o = login(&m, &ts.pse, &wrong);
    assert_eq!(code(&o), 32, "{}", text(&o));
    assert!(
        text(&o).contains("three wrong passphrases") && text(&o).contains("unmounted"),
        "{}",
        text(&o)
    );
    drop(open);
    let st = m
        .wait_exit(Duration::from_secs(30)) // a hang guard
        .expect("the driver did not end within 30 s");
    assert_eq!(st.code(), Some(32), "driver's exit status");
    assert!(!m.is_mounted());
    assert!(m.log().contains("three wrong passphrases"), "{}", m.log());
    let o = tresor().arg("status").arg(&m.mnt).output().unwrap();
    assert_eq!(code(&o), 30, "{}", text(&o));
    drop(m);

    let m = ts.mount_with(&["--idle-lock", "0"]);
    assert_eq!(fs::read(m.path("g/closed.txt")).unwrap(), b"closed before");
    assert_eq!(
        fs::read(m.path("g/open.txt")).unwrap(),
        b"still open at the end"
    );
    m.unmount();
}

#[test]
fn removing_the_pse_locks_the_mount() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let medium = ts.subdir("usb-stick");
    let pse = medium.join("admin.pse");
    fs::copy(&ts.pse, &pse).unwrap();
    let m = ts.mount_as(&pse, &ts.pass, "mnt", &["--idle-lock", "0"]);
    fs::write(m.path("g/f"), b"data").unwrap();
    assert_eq!(status(&m)["pse"], pse.to_str().unwrap());
    // Not locked by anything else: no idle lock, the medium present.
    assert_eq!(status(&m)["locked"], false);
    fs::remove_file(&pse).unwrap();
    // How soon is a benchmark's business (benches/session.rs); the driver's
    // own watcher must lock, with the reason.
    let s = wait_locked(&m);
    assert!(
        s["lock_reason"].as_str().unwrap().contains("removed"),
        "{s}"
    );
    assert_eq!(errno_of(fs::read(m.path("g/f"))), Some(libc::EACCES));
    // Put the medium back: log in again.
    fs::copy(&ts.pse, &pse).unwrap();
    let o = login(&m, &pse, &ts.pass);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(fs::read(m.path("g/f")).unwrap(), b"data");
    m.unmount();
}

/// Runs `tresor ARGS` as nobody, looking for control sockets where this
/// test's root-started mounts keep theirs (as it would in /run/tresor).
fn as_nobody(args: &[&str]) -> Output {
    let mut c = Command::new("setpriv");
    isolate_as(&mut c, 65534);
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_tresor"))
        .args(args)
        .env(
            "TRESOR_RUNTIME_DIR",
            control_socket(Path::new("/")).parent().unwrap(),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn another_uid_cannot_use_the_control_socket() {
    if !fuse_available() || !crate::util::require_root("act as another uid with setpriv") {
        return;
    }
    let ts = TestStore::new(&["g"]);
    fs::set_permissions(
        ts.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let m = ts.mount_with(&["--idle-lock", "0"]);
    fs::write(m.path("g/f"), b"data").unwrap();
    let mnt = m.mnt.to_str().unwrap();
    let sock = control_socket(&m.mnt);
    assert!(sock.exists(), "{}", sock.display());
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
    let dir = sock.parent().unwrap();
    assert_eq!(fs::metadata(dir).unwrap().mode() & 0o777, 0o700);

    // The file modes keep nobody out.
    for args in [vec!["status", mnt], vec!["lock", mnt], vec!["umount", mnt]] {
        let o = as_nobody(&args);
        assert_eq!(code(&o), 33, "{args:?}: {}", text(&o));
        assert!(text(&o).contains("not yours"), "{}", text(&o));
    }
    // With the modes opened up, the driver's peer check still refuses.
    let dir_mode = fs::metadata(dir).unwrap().mode() & 0o7777;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o711)).unwrap();
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o666)).unwrap();
    let outs: Vec<Output> = [vec!["status", mnt], vec!["lock", mnt]]
        .iter()
        .map(|a| as_nobody(a))
        .collect();
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(dir_mode)).unwrap();
    for o in &outs {
        assert_eq!(code(o), 33, "{}", text(o));
        assert!(
            text(o).contains("uid 65534 may not control this mount"),
            "{}",
            text(o)
        );
    }
    assert!(
        m.log().contains("refused a control connection"),
        "{}",
        m.log()
    );
    // Nothing happened to the mount.
    assert_eq!(status(&m)["locked"], false);
    assert_eq!(fs::read(m.path("g/f")).unwrap(), b"data");
    m.unmount();
}

#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let mnt = ts.subdir("mnt");

    // A stale socket of a crashed mount: cleared, the mount comes up.
    let stale = control_socket(&mnt);
    fs::create_dir_all(stale.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let mut m = ts.mount_with(&["--idle-lock", "0"]);
    fs::write(m.path("g/f"), b"data").unwrap();
    assert_eq!(status(&m)["user"], "admin");

    // A second mount of the same store at the same place.
    let o = tresor()
        .arg("mount")
        .arg(&ts.store)
        .arg(&m.mnt)
        .arg("--pse")
        .arg(&ts.pse)
        .arg("--passphrase-file")
        .arg(&ts.pass)
        .arg("-f")
        .output()
        .unwrap();
    assert_eq!(code(&o), 34, "{}", text(&o));
    assert!(text(&o).contains("already mounted"), "{}", text(&o));
    assert_eq!(fs::read(m.path("g/f")).unwrap(), b"data");

    // A PSE of another store: refused, not counted, the session unchanged.
    let other = TestStore::new(&["g"]);
    let o = login(&m, &other.pse, &other.pass);
    assert_eq!(code(&o), 8, "{}", text(&o));
    assert!(text(&o).contains("another store"), "{}", text(&o));
    let s = status(&m);
    assert_eq!(
        (s["user"].as_str(), s["failed_logins"].as_u64()),
        (Some("admin"), Some(0))
    );
    assert_eq!(fs::read(m.path("g/f")).unwrap(), b"data");

    // The test clock's hook, on a mount started without --test-clock.
    let mut sock = std::os::unix::net::UnixStream::connect(control_socket(&m.mnt)).unwrap();
    let r = tresor::session::call(&mut sock, &Request::advance_clock(100 * 60 * MIN));
    let e = r
        .expect_err("advance_clock served without --test-clock")
        .to_string();
    assert!(e.contains("not started with --test-clock"), "{e}");
    assert_eq!(status(&m)["locked"], false);

    // A file that is no PSE.
    let junk = ts.dir.path().join("junk.pse");
    fs::write(&junk, b"{}").unwrap();
    let o = login(&m, &junk, &ts.pass);
    assert_eq!(code(&o), 4, "{}", text(&o));

    // Not a tresor mount; nothing mounted.
    let o = login(&m, &ts.pse, &ts.pass);
    assert!(o.status.success());
    let o = tresor()
        .args(["login", "/proc", "--pse"])
        .arg(&ts.pse)
        .arg("--passphrase-file")
        .arg(&ts.pass)
        .output()
        .unwrap();
    assert_eq!(code(&o), 30, "{}", text(&o));
    assert!(text(&o).contains("not a tresor mount"), "{}", text(&o));
    let empty = ts.subdir("empty");
    let o = tresor().arg("status").arg(&empty).output().unwrap();
    assert_eq!(code(&o), 30, "{}", text(&o));
    assert!(text(&o).contains("nothing is mounted"), "{}", text(&o));

    // `tresor umount` asks the driver; the socket goes with the mount.
    let sock = control_socket(&m.mnt);
    let o = tresor().arg("umount").arg(&m.mnt).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(!m.is_mounted());
    // The driver removes its socket before it exits: wait for the exit.
    let st = m
        .wait_exit(Duration::from_secs(30)) // a hang guard
        .expect("the driver did not exit within 30 s of the unmount");
    assert!(st.success(), "driver's exit status: {st}");
    assert!(!sock.exists(), "socket left behind");
    m.unmount();
}

/// A process in its own mount namespace, made while the mount is up: it
/// holds a copy of the mount (`sh -c script` there).
struct Copy {
    child: std::process::Child,
}

impl Copy {
    fn new(script: &str) -> Copy {
        let mine = fs::read_link("/proc/self/ns/mnt").unwrap();
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let ns = format!("/proc/{}/ns/mnt", child.id());
        let start = Instant::now();
        while fs::read_link(&ns).ok().is_none_or(|n| n == mine) {
            assert!(start.elapsed() < Duration::from_secs(20), "no namespace"); // hang guard
            std::thread::sleep(Duration::from_millis(10)); // poll under the hang guard
        }
        Copy { child }
    }

    /// `cat path` inside the copy's namespace.
    fn cat(&self, path: &Path) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.child.id().to_string(), "-m", "cat"])
            .arg(path)
            .output()
            .unwrap()
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An unmount means that no plaintext is served any more — also where a
/// mount namespace made while the store was mounted (`unshare -m`, a
/// service's private namespace) holds a copy of the mount, which would
/// keep the FUSE connection, the driver and its keys alive: the driver
/// ends once its mount has left its own namespace and no file is open,
/// and the copy answers ENOTCONN. A file open in the copy is served until
/// it is closed.
#[test]
fn an_unmount_ends_the_copies_other_namespaces_hold() {
    if !crate::util::require_root("a second mount namespace (unshare -m) and nsenter")
        || !fuse_available()
    {
        return;
    }
    let ts = TestStore::new(&["g"]);
    for how in ["fusermount3 -u", "tresor umount", "with a file open"] {
        let mut m = ts.mount();
        let secret = m.path("g/secret");
        fs::write(&secret, b"plaintext").unwrap();
        let script = if how == "with a file open" {
            // fd 3 open until a line comes on stdin.
            format!("exec 3<{}; read _; exec 3<&-; sleep 120", secret.display())
        } else {
            "sleep 120".to_string()
        };
        let mut copy = Copy::new(&script);
        let o = copy.cat(&secret);
        assert_eq!(o.stdout, b"plaintext", "{how}: {}", text(&o));

        let o = if how == "tresor umount" {
            tresor().arg("umount").arg(&m.mnt).output().unwrap()
        } else {
            Command::new("fusermount3")
                .arg("-u")
                .arg(&m.mnt)
                .output()
                .unwrap()
        };
        assert!(o.status.success(), "{how}: {}", text(&o));
        assert!(!m.is_mounted(), "{how}");
        if how == "with a file open" {
            // Past the driver's grace (2 s) and a few looks of its watcher.
            std::thread::sleep(Duration::from_secs(4)); // waiting for something not to happen
            assert!(
                m.wait_exit(Duration::ZERO).is_none(),
                "the driver ended under an open file; log:\n{}",
                m.log()
            );
            assert_eq!(copy.cat(&secret).stdout, b"plaintext", "{how}");
            copy.child.stdin.take().unwrap().write_all(b"\n").unwrap();
        }
        let st = m.wait_exit(Duration::from_secs(30)); // hang guard
        let log = m.log();
        assert!(
            st.is_some_and(|s| s.success()),
            "{how}: the driver did not end cleanly ({st:?}) while a copy of its mount lives; log:\n{log}"
        );
        assert!(log.contains("kept it alive"), "{how}: {log}");
        let o = copy.cat(&secret);
        assert!(
            !o.status.success() && text(&o).contains("Transport endpoint is not connected"),
            "{how}: the copy still answers: {}",
            text(&o)
        );
        m.assert_no_panic();
    }
}

/// As uid 65534 with its own driver on `m` (`m/g/secret` written, in a
/// mount namespace of its own with a /dev/fuse it may open): runs `copy`
/// in the user's own `unshare -r -m` — a copy of the mount, which touches
/// `ready` once it holds it — then `fusermount3 -u m`, then `stop`; waits
/// (30 s at most) for the driver to end, then runs `report`. Returns the
/// script's output, its stdout and the driver's log.
fn nobody_copy_then_unmount(copy: &str, stop: &str, report: &str) -> (Output, String, String) {
    let nobody = crate::util::AsNobody::new(&[]);
    let user_script = format!(
        "{start}echo plaintext > m/g/secret
        pid=$($T status m --json | sed -n 's/.*\"pid\": *\\([0-9]*\\).*/\\1/p')
        unshare -r -m sh -c '{copy}' &
        copy=$!
        i=0; until [ -e ready ]; do sleep 0.05; i=$((i+1)); [ $i -lt 400 ]; done
        fusermount3 -u m
        {stop}
        i=0; while kill -0 $pid 2>/dev/null; do sleep 0.05; i=$((i+1)); [ $i -lt 600 ]; done
        {report}",
        start = nobody.mounted_store(),
    );
    let o = nobody.run(&user_script);
    let log = fs::read_to_string(nobody.work.join("log")).unwrap_or_default();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    (o, out, log)
}

/// The same under an unprivileged driver (uid 65534): the copy is a user
/// namespace of that same user (`unshare -r -m`), which holds the mount
/// until the driver ends after `fusermount3 -u`.
#[test]
fn an_unprivileged_drivers_unmount_ends_the_copies_too() {
    if !crate::util::require_root("setting up /dev/fuse for uid 65534 in a namespace")
        || !fuse_available()
    {
        return;
    }
    // The copy reads the file, says so, then reads until a read fails
    // (bounded: 30 s) and keeps that error.
    let copy = "cat m/g/secret > before; touch ready; i=0
        while cat m/g/secret > /dev/null 2> err; do sleep 0.1; i=$((i+1)); [ $i -lt 300 ] || exit 1; done";
    let report = "wait $copy
        echo before $(cat before)
        echo err $(cat err)";
    let (o, out, log) = nobody_copy_then_unmount(copy, "", report);
    assert!(
        o.status.success(),
        "the script failed ({}): the driver outlived the unmount by 30 s, or the copy read on; {}\nlog:\n{log}",
        o.status,
        text(&o)
    );
    assert!(out.contains("before plaintext\n"), "{out}");
    assert!(
        out.contains("err cat: m/g/secret: Transport endpoint is not connected"),
        "{out}\nlog:\n{log}"
    );
    assert!(log.contains("kept it alive"), "{log}");
}

/// The stop under an unprivileged driver (uid 65534): the user's own
/// `unshare -r -m` copy holds a file open past `fusermount3 -u`; the
/// driver serves it on (3 s, past its grace) until the user's
/// `tresor umount`, which ends it; the copy's read then fails ENOTCONN.
#[test]
fn an_unprivileged_drivers_stop_ends_what_a_copys_open_file_kept_serving() {
    if !crate::util::require_root("setting up /dev/fuse for uid 65534 in a namespace")
        || !fuse_available()
    {
        return;
    }
    // The copy opens the file, says so, and reads it once told to
    // (bounded: 30 s).
    let copy = "exec 3<m/g/secret; touch ready; i=0
        until [ -e go ]; do sleep 0.05; i=$((i+1)); [ $i -lt 600 ] || exit 1; done
        cat <&3 > read 2> err || true";
    let stop = "sleep 3
        kill -0 $pid && echo serving after the unmount
        $T umount m";
    let report = "echo ended
        touch go
        wait $copy
        echo read $(cat read)
        echo err $(cat err)";
    let (o, out, log) = nobody_copy_then_unmount(copy, stop, report);
    assert!(
        o.status.success(),
        "the script failed ({}): the driver outlived `tresor umount` by 30 s, or the copy never read; {}\nlog:\n{log}",
        o.status,
        text(&o)
    );
    assert!(
        out.contains("serving after the unmount\nended\n"),
        "{out}\nlog:\n{log}"
    );
    assert!(
        out.contains("\nread\n"),
        "nothing may be read after the stop: {out}"
    );
    assert!(
        out.contains("Transport endpoint is not connected"),
        "{out}\nlog:\n{log}"
    );
    assert!(log.contains("came while files were still open"), "{log}");
}

/// Waits (20 s at most) for `p` to exist: `what` did not happen otherwise.
fn wait_for(p: &Path, what: &str) {
    let start = Instant::now();
    while !p.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "{what}"); // hang guard
        std::thread::sleep(Duration::from_millis(20)); // poll under the hang guard
    }
}

/// A program working in the directory of a file in the mount, holding
/// the file open — here, or in a mount namespace of its own, so through a
/// copy of the mount. Once told to, it reads the file from its open
/// descriptor and closes it.
struct Holder {
    child: std::process::Child,
    dir: PathBuf,
}

impl Holder {
    /// Started and holding `file` when this returns; `dir` keeps its notes.
    fn start(file: &Path, dir: &Path, in_copy: bool) -> Holder {
        fs::create_dir_all(dir).unwrap();
        let note = |n: &str| dir.join(n).display().to_string();
        let script = format!(
            "cd {}; exec 3<{}; : > {}; read _; cat <&3 > {} 2> {}; rc=$?; exec 3<&-; echo $rc > {}; sleep 120",
            file.parent().unwrap().display(),
            file.display(),
            note("ready"),
            note("read"),
            note("err"),
            note("rc")
        );
        let child = Command::new(if in_copy { "unshare" } else { "env" })
            .args(if in_copy {
                &["-m", "--propagation", "private"][..]
            } else {
                &[][..]
            })
            .args(["sh", "-c", &script])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let h = Holder {
            child,
            dir: dir.to_path_buf(),
        };
        wait_for(&dir.join("ready"), "the holder did not open the file");
        h
    }

    /// Reads the file from the descriptor and closes it: what it read,
    /// and the error it got.
    fn read_and_close(&mut self) -> (Vec<u8>, String) {
        self.child.stdin.take().unwrap().write_all(b"\n").unwrap();
        wait_for(&self.dir.join("rc"), "the holder did not read");
        (
            fs::read(self.dir.join("read")).unwrap_or_default(),
            fs::read_to_string(self.dir.join("err")).unwrap_or_default(),
        )
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tresor mount` in the background at `m`'s mount point, as the admin.
fn mount_again(ts: &TestStore, m: &Mount) -> Command {
    let mut c = tresor();
    c.arg("mount")
        .arg(&ts.store)
        .arg(&m.mnt)
        .arg("--pse")
        .arg(&ts.pse)
        .arg("--passphrase-file")
        .arg(&ts.pass)
        .arg("--log")
        .arg(ts.dir.path().join("again.log"));
    c
}

fn signal(pid: u32, sig: &str) {
    let o = Command::new("kill")
        .args([sig, &pid.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "kill {sig} {pid}: {}", text(&o));
}

/// `umount M && mount M` works as on any filesystem, though a plain
/// unmount returns before the driver has noticed it (CI once lost that
/// race in the fstab test). Here the old driver is stopped from before
/// the unmount until 1 s after it: the new mount waits for it to end
/// rather than refusing it as "already mounted".
#[test]
fn a_mount_right_after_a_plain_umount_waits_for_the_old_driver() {
    if !crate::util::require_root("umount(8) of a mount whose driver is stopped")
        || !fuse_available()
    {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let mut m = ts.mount();
    fs::write(m.path("g/f"), b"kept").unwrap();
    // Nothing left that the unmount would have to ask the driver for.
    crate::util::ok(Command::new("sync").arg("-f").arg(m.path("g/f")));
    let pid = m.pid();
    signal(pid, "-STOP");
    // -c: umount(8) would otherwise stat the mount point, which asks the
    // stopped driver; the unmount itself does not (a hang guard bounds it
    // should the kernel ever wait after all).
    let um = Command::new("timeout")
        .args(["20", "umount", "-c"])
        .arg(&m.mnt)
        .output()
        .unwrap();
    let again = mount_again(&ts, &m)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1)); // the old driver stays stopped a while after the unmount
    signal(pid, "-CONT");
    let o = again.wait_with_output().unwrap();
    let old = m.wait_exit(Duration::from_secs(30)); // hang guard
    let read = fs::read(m.path("g/f"));
    let off = tresor().arg("umount").arg(&m.mnt).output().unwrap();
    assert!(um.status.success(), "umount: {}", text(&um));
    assert!(
        o.status.success(),
        "the mount after the unmount failed: {}\nold driver's log:\n{}",
        text(&o),
        m.log()
    );
    assert!(
        old.is_some_and(|s| s.success()),
        "the old driver did not end cleanly ({old:?}); log:\n{}",
        m.log()
    );
    assert_eq!(read.ok().as_deref(), Some(&b"kept"[..]));
    assert!(off.status.success(), "{}", text(&off));
    m.assert_no_panic();
}

/// The wait is bounded. A driver that still serves a file open through a
/// copy of the mount in another namespace is named, with what to do (exit
/// status 34, as "already mounted"); once that file is closed, the old
/// driver ends and a waiting mount goes ahead.
#[test]
fn a_mount_waits_for_a_copys_open_file_and_names_it_past_the_wait() {
    if !crate::util::require_root("a second mount namespace (unshare -m)") || !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let mut m = ts.mount();
    let secret = m.path("g/secret");
    fs::write(&secret, b"plaintext").unwrap();
    let mut copy = Holder::start(&secret, &ts.subdir("holder"), true);
    let um = Command::new("fusermount3")
        .arg("-u")
        .arg(&m.mnt)
        .output()
        .unwrap();
    assert!(um.status.success(), "{}", text(&um));

    let refused = mount_again(&ts, &m).output().unwrap();
    assert_eq!(code(&refused), 34, "{}", text(&refused));
    let msg = text(&refused);
    assert!(
        msg.contains(&format!("(pid {}) still runs", m.pid()))
            && msg.contains("a file is open through a copy of the mount")
            && msg.contains(&format!("`tresor umount {}`", m.mnt.display())),
        "{msg}"
    );
    assert!(m.wait_exit(Duration::ZERO).is_none(), "{}", m.log());

    let again = mount_again(&ts, &m)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1)); // the mount is waiting when the copy closes its file
                                                // Served until closed.
    assert_eq!(copy.read_and_close().0, b"plaintext");
    let o = again.wait_with_output().unwrap();
    let old = m.wait_exit(Duration::from_secs(30)); // hang guard
    let read = fs::read(&secret);
    let off = tresor().arg("umount").arg(&m.mnt).output().unwrap();
    assert!(
        o.status.success(),
        "the mount did not go ahead once the file was closed: {}\nold driver's log:\n{}",
        text(&o),
        m.log()
    );
    assert!(old.is_some_and(|s| s.success()), "{old:?}: {}", m.log());
    assert_eq!(read.ok().as_deref(), Some(&b"plaintext"[..]));
    assert!(off.status.success(), "{}", text(&off));
}

/// A stop asked of a driver whose mount has already left its namespace
/// ends it even though a file is still open through the connection: it
/// locks (the keys wiped) and exits, and the open file answers ENOTCONN.
/// Without this, whoever holds a file open through a copy of the mount
/// (or a lazy unmount) alone decides when the plaintext stops being
/// served. Three ways: `tresor umount` and SIGTERM after `fusermount3 -u`
/// with a file open in a copy; and SIGTERM twice with a file open here —
/// the first unmounts lazily (the mount is busy), the second ends it.
#[test]
fn a_stop_after_the_unmount_ends_what_an_open_file_kept_serving() {
    if !crate::util::require_root("a second mount namespace (unshare -m)") || !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    for how in ["tresor umount", "SIGTERM", "SIGTERM twice, file open here"] {
        let mut m = ts.mount();
        let secret = m.path("g/secret");
        fs::write(&secret, b"plaintext").unwrap();
        let local = how.ends_with("here");
        let notes = ts.subdir(&format!("holder-{}", how.replace([' ', ','], "-")));
        let mut holder = Holder::start(&secret, &notes, !local);
        if local {
            signal(m.pid(), "-TERM");
        } else {
            let o = Command::new("fusermount3")
                .arg("-u")
                .arg(&m.mnt)
                .output()
                .unwrap();
            assert!(o.status.success(), "{how}: {}", text(&o));
        }
        // Past the driver's grace (2 s) and a few looks of its watcher.
        std::thread::sleep(Duration::from_secs(3)); // waiting for something not to happen
        assert!(!m.is_mounted(), "{how}");
        assert!(
            m.wait_exit(Duration::ZERO).is_none(),
            "{how}: the driver ended under an open file before the stop; log:\n{}",
            m.log()
        );
        if how == "tresor umount" {
            let o = tresor().arg("umount").arg(&m.mnt).output().unwrap();
            assert!(o.status.success(), "{how}: {}", text(&o));
        } else {
            signal(m.pid(), "-TERM");
        }
        let st = m.wait_exit(Duration::from_secs(30)); // hang guard
        let (read, err) = holder.read_and_close();
        let log = m.log();
        assert!(
            st.is_some_and(|s| s.success()),
            "{how}: the stop did not end the driver ({st:?}); log:\n{log}"
        );
        assert!(
            log.contains("came while files were still open"),
            "{how}: {log}"
        );
        assert!(log.contains("keys wiped"), "{how}: {log}");
        assert!(
            err.contains("Transport endpoint is not connected"),
            "{how}: the open file still answers: read {read:?}, error {err:?}"
        );
        assert_eq!(read, b"", "{how}");
        m.assert_no_panic();
    }
}

/// `tresor umount` of a busy mount (a program working inside it with a
/// file open) is refused, the mount stays and serves, and the message
/// says what to do. Its advice works: `fusermount3 -u -z` detaches the
/// mount while the program keeps its file, and `tresor umount` then ends
/// the driver; the program's next read fails ENOTCONN.
#[test]
fn a_busy_mount_is_refused_with_what_to_do_and_the_advice_works() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let mut m = ts.mount();
    fs::write(m.path("g/secret"), b"plaintext").unwrap();
    let mut holder = Holder::start(&m.path("g/secret"), &ts.subdir("holder"), false);
    let refused = tresor().arg("umount").arg(&m.mnt).output().unwrap();
    let msg = text(&refused);
    let mnt = m.mnt.display();
    assert!(!refused.status.success(), "{msg}");
    assert!(
        msg.contains("busy")
            && msg.contains(&format!("`fusermount3 -u -z {mnt}`"))
            && msg.contains(&format!("`tresor umount {mnt}`")),
        "{msg}"
    );
    assert!(m.is_mounted());
    assert_eq!(fs::read(m.path("g/secret")).unwrap(), b"plaintext");

    let o = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(&m.mnt)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(!m.is_mounted());
    let o = tresor().arg("umount").arg(&m.mnt).output().unwrap();
    let st = m.wait_exit(Duration::from_secs(30)); // hang guard
    let (read, err) = holder.read_and_close();
    assert!(o.status.success(), "{}", text(&o));
    assert!(st.is_some_and(|s| s.success()), "{st:?}: {}", m.log());
    assert!(
        err.contains("Transport endpoint is not connected"),
        "{err:?}"
    );
    assert_eq!(read, b"");
    m.assert_no_panic();
}
