//! The escape suite (issue 13): one test per class of attack a hostile
//! analysis made on `tresor run`, each run as the test's own user (root in
//! CI) **and** as an unprivileged user (`setpriv` to nobody). Each test
//! profiles `examples/attack` in a mode whose profile allows what the
//! attack then abuses, runs the attack confined under it and checks that
//! it fails, that nothing outside `--out` changed (modes, contents, mount
//! state), and — its control — that the same attack unconfined succeeds.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::util;

const NOBODY: u32 = 65534;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    /// The test's own user (root in CI).
    Caller,
    /// nobody, through setpriv.
    Nobody,
}

/// Who runs each attack: the caller and, when the tests run as root,
/// nobody too (under CI=true not being root fails).
fn everyone() -> Vec<Who> {
    if util::require_root("run each escape attempt as root and as an unprivileged user")
        && util::require(
            Command::new("setpriv").arg("--version").output().is_ok(),
            "setpriv (util-linux)",
        )
    {
        vec![Who::Caller, Who::Nobody]
    } else {
        vec![Who::Caller]
    }
}

/// A world-traversable temp dir whose entries `who` owns.
struct Case {
    dir: tempfile::TempDir,
    who: Who,
}

impl Case {
    fn new(who: Who) -> Case {
        Case::new_in(who, &std::env::temp_dir())
    }

    fn new_in(who: Who, parent: &Path) -> Case {
        std::fs::create_dir_all(parent).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("tresor-esc-")
            .tempdir_in(parent)
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let case = Case { dir, who };
        // Profiles are made by the user who runs them (as the run, the
        // profiling run writes only what that user may write).
        case.own(case.dir.path());
        case
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn own(&self, p: &Path) {
        if self.who == Who::Nobody {
            std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }

    fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir(&p).unwrap();
        self.own(&p);
        p
    }

    fn file(&self, path: &Path, contents: &str, mode: u32) {
        std::fs::write(path, contents).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        self.own(path);
    }

    /// A profile of `attack --data DATA --out (scratch) ARGS`, made by
    /// this case's user; whatever it did is in the profile.
    fn profile(&self, name: &str, data: &Path, args: &[&OsStr]) -> PathBuf {
        let out = self.mkdir(&format!("{name}-profile-out"));
        let p = self.path(&format!("{name}.json"));
        let r = self
            .command(Path::new(env!("CARGO_BIN_EXE_tresor")))
            .arg("profile")
            .arg("--out")
            .arg(&p)
            .arg("--data")
            .arg(data)
            .arg("--writable")
            .arg(&out)
            .arg("--")
            .arg(util::example("attack"))
            .arg("--data")
            .arg(data)
            .arg("--out")
            .arg(&out)
            .args(args)
            .output()
            .unwrap();
        assert!(p.exists(), "no profile: {}", text(&r.stderr));
        p
    }

    fn command(&self, program: &Path) -> Command {
        match self.who {
            Who::Caller => {
                let mut c = Command::new(program);
                util::isolate(&mut c);
                c
            }
            Who::Nobody => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                    .arg(program);
                util::isolate_as(&mut c, NOBODY);
                c
            }
        }
    }

    /// `tresor run` of `attack ARGS` under `profile`, as this case's user.
    fn run(&self, profile: &Path, data: &[&Path], out: &Path, args: &[&OsStr]) -> Output {
        let mut c = self.command(Path::new(env!("CARGO_BIN_EXE_tresor")));
        c.stdin(Stdio::null())
            .arg("run")
            .arg("--profile")
            .arg(profile);
        for d in data {
            c.arg("--data").arg(d);
        }
        c.arg("--out")
            .arg(out)
            .arg("--")
            .arg(util::example("attack"))
            .arg("--data")
            .arg(data[0])
            .arg("--out")
            .arg(out)
            .args(args);
        c.output().expect("tresor starts")
    }

    /// The same attack, unconfined, as this case's user.
    fn unconfined(&self, data: &Path, out: &Path, args: &[&OsStr]) -> Output {
        let mut c = self.command(&util::example("attack"));
        c.stdin(Stdio::null())
            .arg("--data")
            .arg(data)
            .arg("--out")
            .arg(out)
            .args(args);
        c.output().unwrap()
    }

    /// A fresh `--out`.
    fn out(&self) -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.mkdir(&format!("out{n}"))
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn args<'a>(a: &'a [&'a str]) -> Vec<&'a OsStr> {
    a.iter().map(OsStr::new).collect()
}

fn attack<'a>(name: &'a str, target: Option<&'a Path>) -> Vec<&'a OsStr> {
    let mut v = vec![OsStr::new("--attack"), OsStr::new(name)];
    if let Some(t) = target {
        v.push(OsStr::new("--target"));
        v.push(t.as_os_str());
    }
    v
}

/// The attack's own call failed (it printed `blocked: …`, exit 1).
fn assert_blocked(o: &Output, what: &str) {
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(
        o.status.code() == Some(1) && out.contains("blocked:") && !out.contains("ATTACK SUCCEEDED"),
        "{what}: not blocked ({}): stdout {out} stderr {err}",
        o.status
    );
}

/// The policy stopped the attack and the report names `call`.
fn assert_stopped(o: &Output, call: &str, what: &str) {
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(
        o.status.code() == Some(121)
            && err.contains(&format!("analysis stopped: {call}"))
            && !out.contains("ATTACK SUCCEEDED"),
        "{what}: not stopped at {call} ({}): stdout {out} stderr {err}",
        o.status
    );
}

fn assert_succeeded(o: &Output, what: &str) {
    assert!(
        text(&o.stdout).contains("ATTACK SUCCEEDED"),
        "control {what}: the attack fails even unconfined, so its refusal proves nothing: {} {}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// Every entry below `root` except below `skip`: mode, owner, size and
/// contents of files, target of symlinks.
fn snapshot(root: &Path, skip: &[&Path]) -> BTreeMap<PathBuf, (u32, u32, Vec<u8>)> {
    let mut m = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if skip.iter().any(|s| p.starts_with(s)) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let body = if meta.is_file() {
                std::fs::read(&p).unwrap_or_default()
            } else if meta.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .map(|t| t.into_os_string().into_encoded_bytes())
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            if meta.is_dir() {
                todo.push(p.clone());
            }
            m.insert(p, (meta.mode(), meta.uid(), body));
        }
    }
    m
}

/// No setuid/setgid file and no device node anywhere below `dir`.
fn assert_no_setid_or_device(dir: &Path) {
    for (p, (mode, _, _)) in snapshot(dir, &[]) {
        let ft = std::fs::symlink_metadata(&p).unwrap().file_type();
        assert!(
            mode & 0o6000 == 0 && !ft.is_char_device() && !ft.is_block_device(),
            "{} is setuid/setgid or a device (mode {mode:o})",
            p.display()
        );
    }
}

/// Class 1: a profile with `socket(AF_UNIX)` + `connect` (every
/// `getpwuid` through nss) must not reach a mount's control socket. As
/// root: a real tresor mount whose socket lives in the test's runtime
/// dir — the confined attack cannot connect and the mount stays unlocked;
/// unconfined, the same attack locks it. As nobody: a control socket of
/// nobody's own in nobody's runtime dir (a stand-in for its own mount).
#[test]
fn class1_control_sockets_are_unreachable() {
    if !util::fuse_available() {
        return;
    }
    for who in everyone() {
        let case = Case::new(who);
        let data = case.mkdir("data");
        case.file(&data.join("a.txt"), "sample\n", 0o644);
        let profile = case.profile("nss", &data, &args(&["--nss"]));
        let pj: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&profile).unwrap()).unwrap();
        assert!(
            pj["syscalls"]["connect"].is_object()
                && pj["syscalls"]["socket"]["args"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|t| t["domain"] == libc::AF_UNIX)),
            "the benign --nss profile should allow AF_UNIX sockets and connect: {pj}"
        );
        match who {
            Who::Caller => {
                let s = util::TestStore::new(&["lab"]);
                let m = s.mount();
                std::fs::write(m.path("lab/x.txt"), "unlocked").unwrap();
                let sock = util::control_socket(&m.mnt);
                assert!(sock.exists(), "no control socket at {}", sock.display());
                let out = case.out();
                let before = snapshot(case.dir.path(), &[&out]);
                let r = case.run(
                    &profile,
                    &[&data],
                    &out,
                    &attack("connect-unix", Some(&sock)),
                );
                assert_blocked(&r, "connect to the mount's control socket");
                assert_eq!(
                    std::fs::read_to_string(m.path("lab/x.txt")).unwrap(),
                    "unlocked",
                    "the mount must stay unlocked"
                );
                assert!(m.is_mounted());
                assert_eq!(before, snapshot(case.dir.path(), &[&out]));
                // Control: unconfined, the same attack locks the mount.
                let free =
                    case.unconfined(&data, &case.out(), &attack("connect-unix", Some(&sock)));
                assert_succeeded(&free, "connect-unix");
                assert!(
                    std::fs::read(m.path("lab/x.txt")).is_err(),
                    "the unconfined attack should have locked the mount"
                );
                m.unmount();
            }
            Who::Nobody => {
                let rt = case.mkdir("run");
                std::fs::set_permissions(&rt, std::fs::Permissions::from_mode(0o700)).unwrap();
                let sock = rt.join("control.sock");
                let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
                case.own(&sock);
                let out = case.out();
                let before = snapshot(case.dir.path(), &[&out]);
                let r = case.run(
                    &profile,
                    &[&data],
                    &out,
                    &attack("connect-unix", Some(&sock)),
                );
                assert_blocked(&r, "connect to nobody's own control socket");
                listener.set_nonblocking(true).unwrap();
                assert_eq!(
                    listener.accept().map(|_| ()).unwrap_err().kind(),
                    std::io::ErrorKind::WouldBlock,
                    "a connection reached the socket"
                );
                assert_eq!(before, snapshot(case.dir.path(), &[&out]));
                // Control: unconfined, nobody reaches its socket.
                listener.set_nonblocking(false).unwrap();
                let server = std::thread::spawn(move || {
                    use std::io::Write;
                    let (mut s, _) = listener.accept().unwrap();
                    let _ = s.write_all(b"{\"ok\":true}\n");
                });
                let free =
                    case.unconfined(&data, &case.out(), &attack("connect-unix", Some(&sock)));
                assert_succeeded(&free, "connect-unix as nobody");
                server.join().unwrap();
            }
        }
    }
}

/// Class 2: whatever its profile allows, the analysis has no privilege —
/// no capability (CapEff, CapPrm, CapBnd all 0), chroot and setuid(0)
/// fail, no device node, no setuid file (created setuid, or chmod'ed
/// setuid), also when tresor was started by root. Each attack runs under
/// the profile of its own unconfined run, so the policy allows its calls.
#[test]
fn class2_no_privilege_whatever_the_profile_allows() {
    enum Expect {
        Blocked,
        Stopped(&'static str),
    }
    let root = nix::unistd::geteuid().is_root();
    for who in everyone() {
        let case = Case::new(who);
        let data = case.mkdir("data");
        case.file(&data.join("a.txt"), "sample\n", 0o644);
        for (name, expect) in [
            ("cap-eff", Expect::Blocked),
            ("chroot-root", Expect::Blocked),
            ("setuid-root", Expect::Blocked),
            ("mknod-dev", Expect::Stopped("mknodat(")),
            ("setuid-file", Expect::Stopped("openat(")),
            ("chmod-setuid", Expect::Stopped("chmod(")),
        ] {
            let profile = case.profile(name, &data, &attack(name, None));
            let out = case.out();
            let before = snapshot(case.dir.path(), &[&out]);
            let r = case.run(&profile, &[&data], &out, &attack(name, None));
            match expect {
                Expect::Blocked => assert_blocked(&r, name),
                Expect::Stopped(call) => {
                    assert_stopped(&r, call, name);
                    assert!(text(&r.stderr).contains("0o"), "{}", text(&r.stderr));
                }
            }
            assert_no_setid_or_device(&out);
            assert_eq!(
                before,
                snapshot(case.dir.path(), &[&out]),
                "{name} as {who:?}"
            );
            // Control: started by root, unconfined, each succeeds.
            if who == Who::Caller && root {
                let free_out = case.out();
                assert_succeeded(
                    &case.unconfined(&data, &free_out, &attack(name, None)),
                    name,
                );
            }
        }
    }
}

/// Class 3: Landlock has no right for chmod; the view does — a file
/// outside it (a 0600 PSE) is not there to chmod, and the `--data` files
/// are bound read-only. Modes stay as they were.
#[test]
fn class3_chmod_reaches_nothing_outside_the_view() {
    for who in everyone() {
        let case = Case::new(who);
        let data = case.mkdir("data");
        let in_data = data.join("a.txt");
        case.file(&in_data, "sample\n", 0o600);
        let scratch = case.path("scratch");
        case.file(&scratch, "x", 0o600);
        let profile = case.profile(
            "chmod",
            &data,
            &attack("chmod-target", Some(scratch.as_path())),
        );
        // A PSE outside the view: the store's real one (root), or one of
        // nobody's own.
        let store = (who == Who::Caller).then(|| util::TestStore::new(&[]));
        let pse = match &store {
            Some(s) => s.pse.clone(),
            None => {
                let p = case.path("nobody.pse");
                case.file(&p, "secret key material", 0o600);
                p
            }
        };
        let pse_mode = std::fs::metadata(&pse).unwrap().mode();
        assert_eq!(pse_mode & 0o777, 0o600);
        for target in [&pse, &in_data] {
            let out = case.out();
            let before = snapshot(case.dir.path(), &[&out]);
            let r = case.run(
                &profile,
                &[&data],
                &out,
                &attack("chmod-target", Some(target)),
            );
            assert_blocked(&r, &format!("chmod {}", target.display()));
            assert_eq!(before, snapshot(case.dir.path(), &[&out]));
        }
        assert_eq!(std::fs::metadata(&pse).unwrap().mode(), pse_mode);
        assert_eq!(std::fs::metadata(&in_data).unwrap().mode() & 0o777, 0o600);
        // Control: unconfined, the same user makes the PSE world-readable.
        let free = case.unconfined(&data, &case.out(), &attack("chmod-target", Some(&pse)));
        assert_succeeded(&free, "chmod of the PSE");
        assert_eq!(std::fs::metadata(&pse).unwrap().mode() & 0o777, 0o644);
    }
}

/// Class 4: the profiling run read `--data A`; a run with `--data B`
/// cannot read A's files — with A in /tmp and with A beside the build
/// (no temp-dir rule helps there).
#[test]
fn class4_a_run_reads_only_its_own_data() {
    for who in everyone() {
        for parent in [
            std::env::temp_dir(),
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        ] {
            let case = Case::new_in(who, &parent);
            let a = case.mkdir("A");
            let b = case.mkdir("B");
            let secret = a.join("patient-a.txt");
            case.file(&secret, "A's data\n", 0o644);
            case.file(&b.join("patient-b.txt"), "B's data\n", 0o644);
            let profile = case.profile("benign", &a, &[]);
            let pj = std::fs::read_to_string(&profile).unwrap();
            assert!(
                pj.contains("patient-a.txt"),
                "the profile should list A's file: {pj}"
            );
            // The benign run on B works and sees only B.
            let out = case.out();
            let r = case.run(&profile, &[&b], &out, &[]);
            assert!(r.status.success(), "{}", text(&r.stderr));
            assert!(text(&r.stdout).contains("files: 1"), "{}", text(&r.stdout));
            let result = std::fs::read_to_string(out.join("result.txt")).unwrap();
            assert!(result.contains("patient-b.txt") && !result.contains("patient-a.txt"));
            for target in [&secret, &a] {
                let out = case.out();
                let before = snapshot(case.dir.path(), &[&out]);
                let r = case.run(&profile, &[&b], &out, &attack("read-target", Some(target)));
                assert_blocked(&r, &format!("read {}", target.display()));
                assert_eq!(before, snapshot(case.dir.path(), &[&out]));
            }
            // Control: unconfined the same read succeeds.
            let free = case.unconfined(&b, &case.out(), &attack("read-target", Some(&secret)));
            assert_succeeded(&free, "read A's file");
        }
    }
}

/// The children of `pid` (every thread's), from /proc.
fn children(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            let s = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            v.extend(s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
        }
    }
    v
}

/// Class 5: SIGSTOP and SIGTSTP sent from outside to the pid namespace's
/// init do not hang the run: when the program ends, init still reaps it
/// and the run ends with the program's status (before, tresor waited for
/// the stopped init until killed; with --timeout it reported 124).
#[test]
fn class5_stopping_the_namespace_init_does_not_hang_the_run() {
    use std::io::BufRead;
    for who in everyone() {
        let case = Case::new(who);
        let data = case.mkdir("data");
        case.file(&data.join("a.txt"), "sample\n", 0o644);
        let profile = case.profile("wait", &data, &attack("wait-stdin", None));
        let out = case.out();
        let mut c = case.command(Path::new(env!("CARGO_BIN_EXE_tresor")));
        c.arg("run")
            .arg("--profile")
            .arg(&profile)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .arg("--")
            .arg(util::example("attack"))
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .args(attack("wait-stdin", None))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the analysis did not start");
        // tresor → its confined child → the namespace's init (pid 1 inside).
        let first = children(child.id());
        assert_eq!(first.len(), 1, "{first:?}");
        let init = children(first[0]);
        assert_eq!(init.len(), 1, "{init:?}");
        let init = init[0];
        let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
        let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
        assert_eq!(nspid.split_whitespace().last(), Some("1"), "{nspid}");
        for sig in [libc::SIGSTOP, libc::SIGTSTP] {
            // SAFETY: kill takes integer arguments; the pid is our grandchild's.
            assert_eq!(unsafe { libc::kill(init as i32, sig) }, 0);
        }
        drop(child.stdin.take()); // EOF: the analysis ends
                                  // A hang guard, not a timing assertion.
        let start = std::time::Instant::now();
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > std::time::Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the run hung after its init was sent SIGSTOP ({who:?})");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(st.code(), Some(0), "stdout {rest} stderr {err}");
        assert!(rest.contains("then ended"), "{rest}");
    }
}

/// Class 9 (the terminal): tresor started from a terminal (its
/// controlling tty) — the analysis, under a profile that allows
/// `ioctl(TIOCSTI)`, cannot push input into it: it runs in a session of
/// its own without a controlling terminal, and its stdin is /dev/null.
/// Unconfined, with the terminal as its controlling tty, it can.
#[test]
fn class9_no_input_into_an_inherited_terminal() {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    for who in everyone() {
        let case = Case::new(who);
        let data = case.mkdir("data");
        case.file(&data.join("a.txt"), "sample\n", 0o644);
        let profile = case.profile("tty", &data, &attack("tiocsti", None));
        let pj = std::fs::read_to_string(&profile).unwrap();
        assert!(
            pj.contains(&format!("\"request\": {}", libc::TIOCSTI)),
            "the profile should allow ioctl(TIOCSTI): {pj}"
        );
        let pty = nix::pty::openpty(None, None).unwrap();
        let slave: OwnedFd = pty.slave;
        if who == Who::Nobody {
            let path = std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd())).unwrap();
            std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        let on_terminal = |c: &mut Command| {
            c.stdin(slave.try_clone().unwrap())
                .stdout(slave.try_clone().unwrap())
                .stderr(Stdio::piped());
            // SAFETY: between fork and exec only async-signal-safe calls:
            // a new session, then fd 0 (the terminal) as its controlling tty.
            unsafe {
                c.pre_exec(|| {
                    if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        };
        let out = case.out();
        let mut c = case.command(Path::new(env!("CARGO_BIN_EXE_tresor")));
        c.arg("run")
            .arg("--profile")
            .arg(&profile)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .arg("--")
            .arg(util::example("attack"))
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .args(attack("tiocsti", None));
        on_terminal(&mut c);
        let r = c.output().unwrap();
        // Its stdout is the terminal: the outcome is the exit status.
        assert_eq!(
            r.status.code(),
            Some(1),
            "TIOCSTI was not refused: {}",
            text(&r.stderr)
        );
        // Control: unconfined, on the terminal as its controlling tty.
        let mut free = case.command(&util::example("attack"));
        free.arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(case.out())
            .args(attack("tiocsti", None));
        on_terminal(&mut free);
        let f = free.output().unwrap();
        assert_eq!(
            f.status.code(),
            Some(0),
            "control: TIOCSTI fails even unconfined: {}",
            text(&f.stderr)
        );
    }
}

/// `tresor profile --out P --data DATA [--writable OUT] -- ARGS…`, as the
/// case's user.
fn profile_command(case: &Case, p: &Path, data: &Path, out: Option<&Path>, argv: &[&OsStr]) {
    let r = case
        .command(Path::new(env!("CARGO_BIN_EXE_tresor")))
        .arg("profile")
        .arg("--out")
        .arg(p)
        .arg("--data")
        .arg(data)
        .args(
            out.iter()
                .flat_map(|o| [OsStr::new("--writable"), o.as_os_str()]),
        )
        .arg("--")
        .args(argv)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", text(&r.stderr));
}

/// `tresor run --profile P --data DATA --out OUT [extra] -- ARGS…`.
fn run_command(case: &Case, p: &Path, data: &Path, extra: &[&str], argv: &[&OsStr]) -> Output {
    let out = case.out();
    let mut c = case.command(Path::new(env!("CARGO_BIN_EXE_tresor")));
    c.stdin(Stdio::null())
        .arg("run")
        .arg("--profile")
        .arg(p)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(&out)
        .args(extra)
        .arg("--")
        .args(argv);
    c.output().unwrap()
}

fn assert_other_program(o: &Output, says: &str) {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(123), "stderr: {err}");
    assert!(
        err.contains(says) && err.contains("--allow-other-program"),
        "the refusal should say {says:?}: {err}"
    );
}

/// Class 6: the profile binds its program. A profile of `ls` is refused
/// for `head`; a program changed after profiling is refused; for an
/// interpreter, a changed script and another script are refused — each
/// with its own exit status (123) and a message naming both; with
/// `--allow-other-program` the run goes ahead.
#[test]
fn class6_the_profile_binds_its_program_and_script() {
    let which = |name: &str| {
        util::ok(
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {name}")),
        )
        .stdout
        .iter()
        .map(|&b| b as char)
        .collect::<String>()
        .trim()
        .to_string()
    };
    let (ls, head, sh) = (which("ls"), which("head"), which("sh"));
    for who in everyone() {
        let case = Case::new(who);
        let data = case.mkdir("data");
        let input = data.join("a.txt");
        case.file(&input, "line one\nline two\n", 0o644);

        // Another program.
        let lsp = case.path("ls.json");
        profile_command(
            &case,
            &lsp,
            &data,
            None,
            &[OsStr::new(&ls), data.as_os_str()],
        );
        let r = run_command(
            &case,
            &lsp,
            &data,
            &[],
            &[OsStr::new(&ls), data.as_os_str()],
        );
        assert!(r.status.success(), "{}", text(&r.stderr));
        assert_eq!(text(&r.stdout).trim(), "a.txt");
        let r = run_command(
            &case,
            &lsp,
            &data,
            &[],
            &[OsStr::new(&head), input.as_os_str()],
        );
        assert_other_program(&r, "is not the program of profile");
        assert!(r.stdout.is_empty(), "{}", text(&r.stdout));

        // The same path, changed after profiling.
        let prog = case.path("attack-copy");
        std::fs::copy(util::example("attack"), &prog).unwrap();
        case.own(&prog);
        let progp = case.path("copy.json");
        let out = case.mkdir("copy-out");
        profile_command(
            &case,
            &progp,
            &data,
            Some(out.as_path()),
            &[
                prog.as_os_str(),
                OsStr::new("--data"),
                data.as_os_str(),
                OsStr::new("--out"),
                out.as_os_str(),
            ],
        );
        let mut bytes = std::fs::read(&prog).unwrap();
        bytes.push(0);
        std::fs::write(&prog, bytes).unwrap();
        let argv = [
            prog.as_os_str(),
            OsStr::new("--data"),
            data.as_os_str(),
            OsStr::new("--out"),
            out.as_os_str(),
        ];
        let r = run_command(&case, &progp, &data, &[], &argv);
        assert_other_program(&r, "has changed since profile");

        // An interpreter: its script is bound too.
        let script = case.path("count.sh");
        case.file(
            &script,
            "read first < \"$1\"\necho \"first: $first\"\n",
            0o644,
        );
        let shp = case.path("sh.json");
        let sh_argv = |s: &Path| {
            vec![
                OsStr::new(&sh).to_os_string(),
                s.into(),
                input.clone().into(),
            ]
        };
        let a: Vec<_> = sh_argv(&script);
        let a: Vec<&OsStr> = a.iter().map(|x| x.as_os_str()).collect();
        profile_command(&case, &shp, &data, None, &a);
        let r = run_command(&case, &shp, &data, &[], &a);
        assert!(r.status.success(), "{}", text(&r.stderr));
        assert_eq!(text(&r.stdout), "first: line one\n");
        let other = case.path("other.sh");
        case.file(&other, "echo other\n", 0o644);
        let o: Vec<_> = sh_argv(&other);
        let o: Vec<&OsStr> = o.iter().map(|x| x.as_os_str()).collect();
        assert_other_program(
            &run_command(&case, &shp, &data, &[], &o),
            "not the script of profile",
        );
        case.file(&script, "echo changed\n", 0o644);
        let r = run_command(&case, &shp, &data, &[], &a);
        assert_other_program(&r, "has changed since profile");
        assert!(!text(&r.stdout).contains("changed"));
        // The explicit way past the check.
        let r = run_command(&case, &shp, &data, &["--allow-other-program"], &a);
        assert_eq!(r.status.code(), Some(0), "{}", text(&r.stderr));
        assert_eq!(text(&r.stdout), "changed\n");
    }
}

/// Every regular file below `dir`: (relative path, size).
fn files_below(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut v: Vec<_> = snapshot(dir, &[])
        .into_iter()
        .filter(|(p, _)| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .map(|(p, (_, _, body))| {
            (
                p.strip_prefix(dir).unwrap().to_path_buf(),
                body.len() as u64,
            )
        })
        .collect();
    v.sort();
    v
}

/// Class 9: outputs are staged, then delivered. Six files of 7 MiB pass
/// `--max-file-size 8M` one by one but not `--out-quota 32M` together;
/// the failed run delivers nothing (with `--keep-partial`, what fitted);
/// a native program written to `--out` cannot run there (noexec); a
/// symlink and a fifo are not delivered and the report names them, while
/// files and directories are.
#[test]
fn class9_outputs_are_staged_limited_and_delivered_plainly() {
    for who in everyone() {
        let case = Case::new(who);
        let data = case.mkdir("data");
        case.file(&data.join("a.txt"), "sample\n", 0o644);

        // The aggregate limit.
        let fill = case.profile("fill", &data, &attack("fill-out", None));
        let limits = ["--max-file-size", "8M", "--out-quota", "32M"];
        let out = case.out();
        let before = snapshot(case.dir.path(), &[&out]);
        let mut c = case.command(Path::new(env!("CARGO_BIN_EXE_tresor")));
        let run = |c: &mut Command, out: &Path, extra: &[&str], mode: &str| {
            c.stdin(Stdio::null())
                .arg("run")
                .arg("--profile")
                .arg(&fill)
                .arg("--data")
                .arg(&data)
                .arg("--out")
                .arg(out)
                .args(extra)
                .arg("--")
                .arg(util::example("attack"))
                .arg("--data")
                .arg(&data)
                .arg("--out")
                .arg(out)
                .args(attack(mode, None))
                .output()
                .unwrap()
        };
        let r = run(&mut c, &out, &limits, "fill-out");
        assert!(
            text(&r.stdout).contains("blocked: No space left on device"),
            "{} {}",
            text(&r.stdout),
            text(&r.stderr)
        );
        assert_eq!(r.status.code(), Some(1));
        assert!(
            text(&r.stderr).contains("not delivered"),
            "{}",
            text(&r.stderr)
        );
        assert!(files_below(&out).is_empty(), "{:?}", files_below(&out));
        assert_eq!(before, snapshot(case.dir.path(), &[&out]));
        let partial = case.out();
        let mut c = case.command(Path::new(env!("CARGO_BIN_EXE_tresor")));
        let mut extra = limits.to_vec();
        extra.push("--keep-partial");
        let r = run(&mut c, &partial, &extra, "fill-out");
        assert_eq!(r.status.code(), Some(1), "{}", text(&r.stderr));
        let got = files_below(&partial);
        let total: u64 = got.iter().map(|(_, n)| n).sum();
        assert!(!got.is_empty() && total <= 32 << 20, "{got:?}");
        let free = case.unconfined(&data, &case.out(), &attack("fill-out", None));
        assert_succeeded(&free, "fill-out");

        // noexec: a native program written to --out does not run.
        let execp = case.profile("exec", &data, &attack("exec-out", None));
        let out = case.out();
        let r = case.run(&execp, &[&data], &out, &attack("exec-out", None));
        assert_blocked(&r, "exec a program written to --out");
        assert!(files_below(&out).is_empty());
        // Control: unconfined the copy runs (and prints its usage, exit 2).
        let free = case.unconfined(&data, &case.out(), &attack("exec-out", None));
        assert_eq!(free.status.code(), Some(2), "{}", text(&free.stderr));
        assert!(text(&free.stderr).contains("usage: attack"));

        // Only regular files and directories are delivered.
        let oddp = case.profile("odd", &data, &attack("odd-outputs", None));
        let out = case.out();
        let r = case.run(&oddp, &[&data], &out, &attack("odd-outputs", None));
        let err = text(&r.stderr);
        assert_eq!(r.status.code(), Some(0), "{err}");
        assert_eq!(
            files_below(&out),
            [
                (PathBuf::from("plain.txt"), 6),
                (PathBuf::from("sub/inner.txt"), 6)
            ]
        );
        for (name, why) in [("link", "a symlink"), ("fifo", "a fifo")] {
            assert!(std::fs::symlink_metadata(out.join(name)).is_err());
            assert!(
                err.contains(&format!("output {name} not delivered: {why}")),
                "{err}"
            );
        }
        assert_no_setid_or_device(&out);
    }
}

/// Class 7 (in part): a refusal is reported as what was refused, not as
/// a later benign call. A Python analysis, profiled on `--data A` and run
/// on `--data B`: on B it runs (output delivered); asked for A's file, its
/// open is refused and Python's own traceback names the file — before,
/// the traceback printer's `fcntl(F_DUPFD_CLOEXEC)` was killed and the
/// report named `fcntl`. (The view refuses with ENOENT; tresor does not
/// see that call itself.)
#[test]
fn class7_a_refusal_is_reported_as_itself() {
    let python = Path::new("/usr/bin/python3");
    if !util::require(python.exists(), "python3 (/usr/bin/python3)") {
        return;
    }
    for who in everyone() {
        let case = Case::new(who);
        let a = case.mkdir("A");
        let b = case.mkdir("B");
        case.file(&a.join("a.txt"), "patient a\n", 0o644);
        case.file(&b.join("b.txt"), "patient b\n", 0o644);
        let script = case.path("ana.py");
        case.file(
            &script,
            "import sys\nsrc, out = sys.argv[1], sys.argv[2]\nwith open(src) as f:\n    text = f.read()\nwith open(out + '/result.txt', 'w') as f:\n    f.write(f'{len(text)} chars\\n')\n",
            0o644,
        );
        let scratch = case.mkdir("profile-out");
        let argv = |input: &Path, out: &Path| -> Vec<std::ffi::OsString> {
            vec![
                python.into(),
                script.clone().into(),
                input.into(),
                out.into(),
            ]
        };
        let p = case.path("py.json");
        let v = argv(&a.join("a.txt"), &scratch);
        profile_command(
            &case,
            &p,
            &a,
            Some(scratch.as_path()),
            &v.iter().map(|x| x.as_os_str()).collect::<Vec<_>>(),
        );
        let run = |input: &Path| {
            let out = case.out();
            let v = argv(input, &out);
            let mut c = case.command(Path::new(env!("CARGO_BIN_EXE_tresor")));
            c.stdin(Stdio::null())
                .arg("run")
                .arg("--profile")
                .arg(&p)
                .arg("--data")
                .arg(&b)
                .arg("--out")
                .arg(&out)
                .arg("--")
                .args(&v);
            (c.output().unwrap(), out)
        };
        let (r, out) = run(&b.join("b.txt"));
        assert!(r.status.success(), "{}", text(&r.stderr));
        assert_eq!(
            std::fs::read_to_string(out.join("result.txt")).unwrap(),
            "10 chars\n"
        );
        let secret = a.join("a.txt");
        let (r, out) = run(&secret);
        let err = text(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{err}");
        assert!(
            err.contains("FileNotFoundError") && err.contains(secret.to_str().unwrap()),
            "the analysis's own report should name the refused file: {err}"
        );
        assert!(!err.contains("analysis stopped"), "{err}");
        assert!(files_below(&out).is_empty());
    }
}

/// A real analysis, profiled on one input and run on another: a shell
/// pipeline `sh -c 'grep … | sort > f'` (dash calls getcwd without PWD;
/// grep calls mincore) gives the same output confined as unconfined.
#[test]
fn real_shell_pipeline_profiled_on_one_input_runs_on_another() {
    let sh = Path::new("/bin/sh");
    for who in everyone() {
        let case = Case::new(who);
        let a = case.mkdir("A");
        let b = case.mkdir("B");
        case.file(&a.join("s1.txt"), "ki67 12\nother 3\nki67 7\n", 0o644);
        case.file(
            &b.join("slide-2.txt"),
            "ki67 99\nki67 1\nfoo 2\nki67 40\n",
            0o644,
        );
        let code = "grep -h ki67 \"$1\"/* | sort > \"$2\"/f.txt";
        let argv = |data: &Path, out: &Path| -> Vec<std::ffi::OsString> {
            vec![
                sh.into(),
                "-c".into(),
                code.into(),
                "sh".into(),
                data.into(),
                out.into(),
            ]
        };
        let got =
            String::from_utf8(profiled_on_a_run_on_b(&case, "sh", &a, &b, &argv, "f.txt")).unwrap();
        assert_eq!(got, "ki67 1\nki67 40\nki67 99\n");
    }
}

/// Class 3, the descriptors: the caller's files handed over as stdin,
/// stdout and stderr, and the host's device nodes in the view, are not
/// the analysis's to chmod — its fds 0–2 are pipes tresor relays, the
/// device nodes are bound read-only (`/dev/null` stays 0666 even for a run
/// started by root, who owns it). Unconfined, the same fchmod changes the
/// caller's files.
#[test]
fn class3_inherited_descriptors_and_devices_keep_their_modes() {
    for who in everyone() {
        let case = Case::new(who);
        let data = case.mkdir("data");
        case.file(&data.join("a.txt"), "sample\n", 0o644);
        let stdio = |tag: &str| -> [PathBuf; 3] {
            ["in", "out", "err"].map(|n| {
                let p = case.path(&format!("{tag}-std{n}.txt"));
                case.file(&p, "input\n", 0o644);
                p
            })
        };
        let attach = |c: &mut Command, files: &[PathBuf; 3]| {
            let open = |p: &Path, w: bool| {
                std::fs::OpenOptions::new()
                    .read(!w)
                    .append(w)
                    .open(p)
                    .unwrap()
            };
            c.stdin(open(&files[0], false))
                .stdout(open(&files[1], true))
                .stderr(open(&files[2], true));
        };
        // The profile: the same fchmods on scratch files.
        let scratch = stdio("profile");
        let pout = case.mkdir("profile-out");
        let profile = case.path("fchmod.json");
        let mut c = case.command(Path::new(env!("CARGO_BIN_EXE_tresor")));
        c.arg("profile")
            .arg("--out")
            .arg(&profile)
            .arg("--data")
            .arg(&data)
            .arg("--writable")
            .arg(&pout)
            .arg("--")
            .arg(util::example("attack"))
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&pout)
            .args(attack("fchmod-stdio", None));
        attach(&mut c, &scratch);
        assert!(c.status().unwrap().success());
        let files = stdio("run");
        let out = case.out();
        let mut c = case.command(Path::new(env!("CARGO_BIN_EXE_tresor")));
        c.arg("run")
            .arg("--profile")
            .arg(&profile)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .arg("--")
            .arg(util::example("attack"))
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .args(attack("fchmod-stdio", None));
        attach(&mut c, &files);
        let st = c.status().unwrap();
        for f in &files {
            assert_eq!(
                std::fs::metadata(f).unwrap().mode() & 0o777,
                0o644,
                "{} was chmodded through an inherited descriptor ({st})",
                f.display()
            );
        }
        // The relayed stdout still reached the caller's file.
        assert!(std::fs::read_to_string(&files[1])
            .unwrap()
            .contains("fchmod"));
        // The host's /dev/null in the view: bound read-only.
        let chmodp = case.profile(
            "chmod",
            &data,
            &attack("chmod-target", Some(&case.path("profile-stdin.txt"))),
        );
        let devnull = std::fs::metadata("/dev/null").unwrap().mode();
        let r = case.run(
            &chmodp,
            &[&data],
            &case.out(),
            &attack("chmod-target", Some(Path::new("/dev/null"))),
        );
        assert_blocked(&r, "chmod /dev/null");
        assert!(
            text(&r.stdout).contains("Read-only file system"),
            "{}",
            text(&r.stdout)
        );
        assert_eq!(std::fs::metadata("/dev/null").unwrap().mode(), devnull);
        // Control: unconfined, the same fchmod changes the caller's files.
        let free_files = stdio("free");
        let mut c = case.command(&util::example("attack"));
        c.arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(case.out())
            .args(attack("fchmod-stdio", None));
        attach(&mut c, &free_files);
        assert!(c.status().unwrap().success());
        assert_eq!(
            std::fs::metadata(&free_files[1]).unwrap().mode() & 0o777,
            0o600
        );
    }
}

/// How a test builds a command line from its input and its `--out`.
type Argv = Box<dyn Fn(&Path, &Path) -> Vec<std::ffi::OsString>>;

/// Real analyses on virtual slides, profiled on one slide (seed 1) and run
/// on another (seed 7, another file name): the Ki-67 example, `vips
/// thumbnail` and `openslide-write-png` give output identical to the
/// unconfined run.
#[test]
fn real_ki67_vips_and_openslide_profiled_on_one_slide_run_on_another() {
    const TOOLS: [&str; 2] = ["/usr/bin/vips", "/usr/bin/openslide-write-png"];
    let tools = TOOLS;
    if !util::require(
        tools.iter().all(|t| Path::new(t).exists()),
        "vips and openslide-write-png (libvips-tools, openslide-tools)",
    ) {
        return;
    }
    for who in everyone() {
        let case = Case::new(who);
        let a = case.mkdir("A");
        let b = case.mkdir("B");
        for (dir, name, seed) in [(&a, "s1.tiff", "1"), (&b, "other-7.tiff", "7")] {
            util::ok(
                Command::new(env!("CARGO_BIN_EXE_tresor-slide"))
                    .arg("--out")
                    .arg(dir.join(name))
                    .args(["--seed", seed, "--size", "small"]),
            );
            case.own(&dir.join(name));
        }
        let (sa, sb) = (a.join("s1.tiff"), b.join("other-7.tiff"));
        // The Ki-67 analysis is a package binary (tools/ki67).
        let ki67 = std::path::PathBuf::from(env!("CARGO_BIN_EXE_tresor-ki67"));
        let cases: [(&str, Argv, &str); 3] = [
            (
                "ki67",
                Box::new(move |slide: &Path, out: &Path| {
                    vec![
                        ki67.clone().into(),
                        slide.into(),
                        "--out".into(),
                        out.into(),
                    ]
                }),
                "heatmap.png",
            ),
            (
                "vips",
                Box::new(|slide: &Path, out: &Path| {
                    vec![
                        TOOLS[0].into(),
                        "thumbnail".into(),
                        slide.into(),
                        out.join("thumb.png").into(),
                        "128".into(),
                    ]
                }),
                "thumb.png",
            ),
            (
                "openslide",
                Box::new(|slide: &Path, out: &Path| {
                    let mut v: Vec<std::ffi::OsString> = vec![TOOLS[1].into(), slide.into()];
                    v.extend(["200", "300", "0", "256", "256"].map(Into::into));
                    v.push(out.join("region.png").into());
                    v
                }),
                "region.png",
            ),
        ];
        for (name, argv, result) in cases {
            // Each directory's slide: s1.tiff in A, other-7.tiff in B.
            let slide_in = |d: &Path, out: &Path| argv(if d == a { &sa } else { &sb }, out);
            profiled_on_a_run_on_b(&case, name, &a, &b, &slide_in, result);
        }
    }
}

/// A real Python analysis with `multiprocessing.Pool` (its semaphores get
/// new random names in /dev/shm each run — the run's private tmpfs),
/// profiled on one input and run on another: same output as unconfined.
/// The pool is closed and joined: `with Pool()` terminates it with SIGTERM
/// to workers that may or may not still be alive — a call a profiling run
/// sees only sometimes (merge several profiling runs for such analyses).
#[test]
fn real_python_multiprocessing_pool_profiled_on_one_input_runs_on_another() {
    let python = Path::new("/usr/bin/python3");
    if !util::require(python.exists(), "python3 (/usr/bin/python3)") {
        return;
    }
    for who in everyone() {
        let case = Case::new(who);
        let a = case.mkdir("A");
        let b = case.mkdir("B");
        case.file(&a.join("n.txt"), "1\n2\n3\n", 0o644);
        case.file(&b.join("other.txt"), "4\n5\n6\n7\n", 0o644);
        let script = case.path("pool.py");
        case.file(
            &script,
            "import sys, os, multiprocessing\n\
             def sq(x):\n    return x * x\n\
             if __name__ == '__main__':\n\
             \x20   d, out = sys.argv[1], sys.argv[2]\n\
             \x20   nums = [int(l) for f in sorted(os.listdir(d)) for l in open(os.path.join(d, f))]\n\
             \x20   p = multiprocessing.Pool(2)\n\
             \x20   r = p.map(sq, nums)\n\
             \x20   p.close()\n\
             \x20   p.join()\n\
             \x20   open(os.path.join(out, 'sq.txt'), 'w').write(' '.join(map(str, r)) + '\\n')\n",
            0o644,
        );
        let argv = |d: &Path, out: &Path| -> Vec<std::ffi::OsString> {
            vec![python.into(), script.clone().into(), d.into(), out.into()]
        };
        let got = String::from_utf8(profiled_on_a_run_on_b(
            &case, "pool", &a, &b, &argv, "sq.txt",
        ))
        .unwrap();
        assert_eq!(got, "16 25 36 49\n");
    }
}

/// The analysis `argv(DATA, OUT)` profiled by the case's user on `a`, run
/// confined on `b`, and run unconfined on `b`: its result file `result`
/// must be the same both times (and not empty); returns it.
fn profiled_on_a_run_on_b(
    case: &Case,
    name: &str,
    a: &Path,
    b: &Path,
    argv: &dyn Fn(&Path, &Path) -> Vec<std::ffi::OsString>,
    result: &str,
) -> Vec<u8> {
    let p = case.path(&format!("{name}.json"));
    let scratch = case.mkdir(&format!("{name}-profile-out"));
    let v = argv(a, &scratch);
    profile_command(
        case,
        &p,
        a,
        Some(scratch.as_path()),
        &v.iter().map(|x| x.as_os_str()).collect::<Vec<_>>(),
    );
    let out = case.out();
    let v = argv(b, &out);
    let mut c = case.command(Path::new(env!("CARGO_BIN_EXE_tresor")));
    c.stdin(Stdio::null())
        .arg("run")
        .arg("--profile")
        .arg(&p)
        .arg("--data")
        .arg(b)
        .arg("--out")
        .arg(&out)
        .arg("--")
        .args(&v);
    let r = c.output().unwrap();
    assert!(r.status.success(), "{name}: {}", text(&r.stderr));
    let free = case.out();
    let v = argv(b, &free);
    util::ok(case.command(Path::new(&v[0])).args(&v[1..]));
    let got = std::fs::read(out.join(result)).unwrap();
    assert!(!got.is_empty(), "{name}: an empty result");
    assert!(
        got == std::fs::read(free.join(result)).unwrap(),
        "{name}: confined and unconfined results differ"
    );
    got
}

/// Class 8, numpy: BLAS worker threads and a thread pool of the analysis's
/// own, profiled on one input, run on another.
#[test]
fn real_numpy_with_threads_profiled_on_one_input_runs_on_another() {
    let python = Path::new("/usr/bin/python3");
    let numpy = Command::new(python)
        .args(["-c", "import numpy"])
        .status()
        .is_ok_and(|s| s.success());
    if !util::require(numpy, "numpy for /usr/bin/python3 (python3-numpy)") {
        return;
    }
    for who in everyone() {
        let case = Case::new(who);
        let a = case.mkdir("A");
        let b = case.mkdir("B");
        case.file(&a.join("m.txt"), "1 2\n3 4\n", 0o644);
        case.file(&b.join("other.txt"), "2 0 1\n1 3 0\n0 1 4\n", 0o644);
        let script = case.path("mat.py");
        case.file(
            &script,
            "import os, sys\n\
             from concurrent.futures import ThreadPoolExecutor\n\
             import numpy as np\n\
             d, out = sys.argv[1], sys.argv[2]\n\
             ms = [np.loadtxt(os.path.join(d, f), ndmin=2) for f in sorted(os.listdir(d))]\n\
             big = np.arange(400 * 400, dtype=float).reshape(400, 400) / 1e5\n\
             with ThreadPoolExecutor(4) as ex:\n\
             \x20   dets = list(ex.map(lambda m: round(float(np.linalg.det(m)), 6), ms))\n\
             \x20   traces = list(ex.map(lambda k: float(np.trace(big @ big)) + k, range(4)))\n\
             with open(os.path.join(out, 'det.txt'), 'w') as f:\n\
             \x20   f.write(f'{dets} {traces[0]:.3f}\\n')\n",
            0o644,
        );
        let argv = |d: &Path, out: &Path| -> Vec<std::ffi::OsString> {
            vec![python.into(), script.clone().into(), d.into(), out.into()]
        };
        let got = String::from_utf8(profiled_on_a_run_on_b(
            &case, "numpy", &a, &b, &argv, "det.txt",
        ))
        .unwrap();
        assert!(got.starts_with("[25.0] "), "{got}");
    }
}

/// Class 8, a script started through a shell-script wrapper (a pyenv-style
/// shim named `python3` that execs the real interpreter): the wrapper and
/// its script are bound, the shell finds its working directory.
#[test]
fn real_script_through_a_shell_wrapper_profiled_on_one_input_runs_on_another() {
    let python = Path::new("/usr/bin/python3");
    if !util::require(python.exists(), "python3 (/usr/bin/python3)") {
        return;
    }
    for who in everyone() {
        let case = Case::new(who);
        let a = case.mkdir("A");
        let b = case.mkdir("B");
        case.file(&a.join("w.txt"), "tumour cell cell\n", 0o644);
        case.file(&b.join("x.txt"), "cell stroma\ncell\n", 0o644);
        let shims = case.mkdir("shims");
        let shim = shims.join("python3");
        case.file(
            &shim,
            "#!/bin/sh\n# a pyenv-style shim: pick an interpreter, exec it\ncd \"$PWD\" || exit 97\nexec /usr/bin/python3 \"$@\"\n",
            0o755,
        );
        let script = case.path("count.py");
        case.file(
            &script,
            "import os, sys, collections\n\
             d, out = sys.argv[1], sys.argv[2]\n\
             c = collections.Counter(w for f in sorted(os.listdir(d)) for w in open(os.path.join(d, f)).read().split())\n\
             open(os.path.join(out, 'words.txt'), 'w').write(' '.join(f'{k}={v}' for k, v in sorted(c.items())) + '\\n')\n",
            0o644,
        );
        let argv = |d: &Path, out: &Path| -> Vec<std::ffi::OsString> {
            vec![
                shim.clone().into(),
                script.clone().into(),
                d.into(),
                out.into(),
            ]
        };
        let got = String::from_utf8(profiled_on_a_run_on_b(
            &case,
            "shim",
            &a,
            &b,
            &argv,
            "words.txt",
        ))
        .unwrap();
        assert_eq!(got, "cell=2 stroma=1\n");
    }
}

/// Class 8: `tresor profile` runs the analysis under the run's conditions
/// — the same uid, environment, working directory and namespaces; nothing
/// writable but `--writable`, `/tmp` and `/dev/shm` private.
#[test]
fn class8_the_profile_is_recorded_under_the_run_conditions() {
    for who in everyone() {
        let case = Case::new(who);
        let data = case.mkdir("data");
        case.file(&data.join("in.txt"), "x\n", 0o644);
        let outside = case.path("outside.txt");
        case.file(&outside, "untouched\n", 0o644);
        // What the analysis sees, each on a line; $2 is its output.
        let code = format!(
            "echo uid=$(id -u) gid=$(id -g) > \"$2/seen.txt\"; \
             echo env=$(env | cut -d= -f1 | sort | tr '\\n' ,) >> \"$2/seen.txt\"; \
             echo path=$PATH lang=$LANG >> \"$2/seen.txt\"; \
             echo pwd=$(pwd) >> \"$2/seen.txt\"; \
             echo home_is_out=$([ \"$HOME\" = \"$2\" ] && echo yes) >> \"$2/seen.txt\"; \
             echo caps=$(grep CapEff /proc/self/status | tr -d '\\t') >> \"$2/seen.txt\"; \
             echo tmp=$(ls -A /tmp | tr '\\n' ,) shm=$(ls -A /dev/shm | wc -l) >> \"$2/seen.txt\"; \
             (echo changed > {outside}) 2>/dev/null && echo outside=written >> \"$2/seen.txt\"; \
             cat \"$1/in.txt\" >/dev/null",
            outside = outside.display()
        );
        let sh = "/bin/sh";
        let argv = |d: &Path, out: &Path| -> Vec<std::ffi::OsString> {
            vec![
                sh.into(),
                "-c".into(),
                code.clone().into(),
                "sh".into(),
                d.into(),
                out.into(),
            ]
        };
        let p = case.path("seen.json");
        let scratch = case.mkdir("profile-out");
        let v = argv(&data, &scratch);
        // Started from the case directory: the way to --data and --out.
        let r = case
            .command(Path::new(env!("CARGO_BIN_EXE_tresor")))
            .current_dir(case.dir.path())
            .env("SECRET_TOKEN", "must-not-reach-the-analysis")
            .arg("profile")
            .arg("--out")
            .arg(&p)
            .arg("--data")
            .arg(&data)
            .arg("--writable")
            .arg(&scratch)
            .arg("--")
            .args(&v)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", text(&r.stderr));
        let profiled = std::fs::read_to_string(scratch.join("seen.txt")).unwrap();
        let out = case.out();
        let v = argv(&data, &out);
        let r = case
            .command(Path::new(env!("CARGO_BIN_EXE_tresor")))
            .current_dir(case.dir.path())
            .env("SECRET_TOKEN", "must-not-reach-the-analysis")
            .stdin(Stdio::null())
            .args(["run", "--allow-incomplete", "--profile"])
            .arg(&p)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .arg("--")
            .args(&v)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", text(&r.stderr));
        let confined = std::fs::read_to_string(out.join("seen.txt")).unwrap();
        assert_eq!(
            profiled, confined,
            "{who:?}: the profile saw other conditions than the run"
        );
        // Root and nobody both run as nobody; anyone else as themselves.
        let me = nix::unistd::geteuid();
        let uid = if who == Who::Nobody || me.is_root() {
            NOBODY
        } else {
            me.as_raw()
        };
        // The private /tmp holds only the way to --data and --out.
        let tmp = match case.dir.path().strip_prefix("/tmp") {
            Ok(rest) => format!(
                "tmp={},",
                rest.components()
                    .next()
                    .unwrap()
                    .as_os_str()
                    .to_string_lossy()
            ),
            Err(_) => "tmp=".to_string(),
        };
        for want in [
            format!("uid={uid} "),
            "env=HOME,LANG,PATH,PWD,\n".to_string(),
            "path=/usr/bin:/bin lang=C.UTF-8\n".to_string(),
            format!("pwd={}\n", case.dir.path().display()),
            "home_is_out=yes\n".to_string(),
            "caps=CapEff:0000000000000000\n".to_string(),
            format!("{tmp} shm=0\n"),
        ] {
            assert!(
                profiled.contains(&want),
                "{who:?}: want {want:?} in {profiled}"
            );
        }
        assert!(!profiled.contains("outside=written"), "{profiled}");
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "untouched\n");
    }
}

/// Class 7, limits: one allocation larger than `--memory` leaves (the
/// process never comes near the limit, its allocator just gets ENOMEM and
/// it fails on its own) is reported as the memory limit, 122 — not as the
/// program's own failure.
#[test]
fn class7_one_huge_allocation_is_reported_as_the_memory_limit() {
    let python = Path::new("/usr/bin/python3");
    if !util::require(python.exists(), "python3 (/usr/bin/python3)") {
        return;
    }
    for who in everyone() {
        let case = Case::new(who);
        let a = case.mkdir("A");
        let b = case.mkdir("B");
        case.file(&a.join("size.txt"), "1000\n", 0o644);
        case.file(&b.join("size.txt"), "1073741824\n", 0o644);
        let script = case.path("alloc.py");
        case.file(
            &script,
            "import os, sys\n\
             d, out = sys.argv[1], sys.argv[2]\n\
             n = int(open(os.path.join(d, 'size.txt')).read())\n\
             buf = bytearray(n)\n\
             open(os.path.join(out, 'n.txt'), 'w').write(f'{len(buf)}\\n')\n",
            0o644,
        );
        let p = case.path("alloc.json");
        let scratch = case.mkdir("profile-out");
        let argv = |d: &Path, out: &Path| -> Vec<std::ffi::OsString> {
            vec![python.into(), script.clone().into(), d.into(), out.into()]
        };
        let v = argv(&a, &scratch);
        profile_command(
            &case,
            &p,
            &a,
            Some(scratch.as_path()),
            &v.iter().map(|x| x.as_os_str()).collect::<Vec<_>>(),
        );
        assert_eq!(
            std::fs::read_to_string(scratch.join("n.txt")).unwrap(),
            "1000\n"
        );
        for (data, want) in [(&a, 0), (&b, 122)] {
            let out = case.out();
            let r = case
                .command(Path::new(env!("CARGO_BIN_EXE_tresor")))
                .stdin(Stdio::null())
                .args(["run", "--memory", "256M", "--profile"])
                .arg(&p)
                .arg("--data")
                .arg(data)
                .arg("--out")
                .arg(&out)
                .arg("--")
                .args(argv(data, &out))
                .output()
                .unwrap();
            let err = text(&r.stderr);
            assert_eq!(r.status.code(), Some(want), "{who:?}: {err}");
            if want == 122 {
                assert!(
                    err.contains("MemoryError"),
                    "the program's own error passes: {err}"
                );
                assert!(
                    err.contains("limit hit: memory (--memory 256 MiB; a process asked for 10")
                        && err.contains("MiB at once"),
                    "{who:?}: {err}"
                );
            }
        }
    }
}
