//! Test helpers: temp stores, a mounted filesystem that unmounts on drop,
//! and a command builder for the real `tresor` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `tresor` binary under test, in this test's own environment.
pub fn tresor() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tresor"));
    c.stdin(Stdio::null());
    isolate(&mut c);
    c
}

/// Under `CI=true` a missing machine feature fails a test; it never skips.
pub fn is_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// The one place that decides a skip: returns `present`; when the feature is
/// missing it fails the test under CI (naming the feature) and otherwise says
/// on stderr what is skipped. Use as `if !require(x, "…") { return; }`.
pub fn require(present: bool, feature: &str) -> bool {
    if !present {
        assert!(
            !is_ci(),
            "CI=true but this machine lacks {feature}: install or enable it (a skip would hide a failure)"
        );
        eprintln!("skipping: this machine lacks {feature}");
    }
    present
}

/// Whether the tests run as root; CI always does.
pub fn require_root(why: &str) -> bool {
    require(
        nix::unistd::geteuid().is_root(),
        &format!("root (needed to {why})"),
    )
}

/// The temp dir of this test run; the process's own HOME and XDG
/// directories point into it before any test starts (see [`ISOLATE_PROCESS`]).
fn run_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        // Short (a socket path must fit in 108 bytes) and kept for the whole
        // run: it outlives every test, so it is left in /tmp.
        tempfile::Builder::new()
            .prefix("tresor-t-")
            .tempdir()
            .expect("create the test run's temp dir")
            .keep()
    })
}

/// HOME and the XDG directories of the test process itself, set before
/// `main` while the process has one thread: tests that call the library
/// in-process (directory reads record versions in XDG_STATE_HOME) must not
/// reach the real home either.
#[used]
#[link_section = ".init_array"]
static ISOLATE_PROCESS: extern "C" fn() = isolate_process;

extern "C" fn isolate_process() {
    let d = env_dirs(&run_root().join("process"));
    for (k, v) in env_vars(&d) {
        std::env::set_var(k, v);
    }
}

fn env_dirs(dir: &Path) -> PathBuf {
    if !dir.exists() {
        for sub in ["home", "state", "run", "config", "cache"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create the test's env dir");
        }
        // Traversable, not listable: tests that open the socket's own
        // modes to another uid need the path to it open.
        std::fs::set_permissions(
            dir.join("run"),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .expect("chmod the test's runtime dir");
    }
    dir.to_path_buf()
}

fn env_vars(d: &Path) -> [(&'static str, PathBuf); 6] {
    [
        ("HOME", d.join("home")),
        ("XDG_STATE_HOME", d.join("state")),
        ("XDG_RUNTIME_DIR", d.join("run")),
        ("XDG_CONFIG_HOME", d.join("config")),
        ("XDG_CACHE_HOME", d.join("cache")),
        ("TRESOR_RUNTIME_DIR", d.join("run").join("tresor")),
    ]
}

/// Where this test's HOME, XDG_STATE_HOME, XDG_RUNTIME_DIR and
/// TRESOR_RUNTIME_DIR live: one fresh directory per test (libtest runs each
/// test on a thread named after it), inside the run's temp dir. Nothing a
/// test does reaches the real home, /run/tresor or another test's rollback
/// record.
pub fn test_env_dir() -> PathBuf {
    let name = std::thread::current()
        .name()
        .unwrap_or("unnamed-thread")
        .to_string();
    // A hash keeps the path short; the full name is written beside it.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    let dir = run_root().join(format!("{h:016x}"));
    if !dir.exists() {
        env_dirs(&dir);
        std::fs::write(dir.join("test-name"), &name).expect("name the test's env dir");
    }
    dir
}

/// Points a command's HOME and XDG directories (and tresor's runtime dir)
/// into this test's own environment.
pub fn isolate(cmd: &mut Command) -> &mut Command {
    cmd.envs(env_vars(&test_env_dir()))
}

/// The control socket a mount at `mnt` started by this test has.
pub fn control_socket(mnt: &Path) -> PathBuf {
    tresor::session::socket_path_in(&test_env_dir().join("run").join("tresor"), mnt)
}

/// A command that will run as `uid` (through setpriv, by the caller): an
/// environment of its own, owned by that uid, inside this test's.
pub fn isolate_as(cmd: &mut Command, uid: u32) -> &mut Command {
    use std::os::unix::fs::PermissionsExt;
    let base = test_env_dir();
    let d = base.join(format!("uid-{uid}"));
    for sub in ["", "home", "state", "run", "config", "cache"] {
        let p = d.join(sub);
        std::fs::create_dir_all(&p).expect("create the env dir");
        std::os::unix::fs::chown(&p, Some(uid), Some(uid)).expect("chown the env dir");
    }
    // The uid must reach its own dirs through ours.
    for p in [base.parent().unwrap(), &base] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o711)).unwrap();
    }
    std::fs::set_permissions(d.join("run"), std::fs::Permissions::from_mode(0o700)).unwrap();
    cmd.envs(env_vars(&d))
}

/// Runs a command and returns its output, panicking with its stderr if it failed.
pub fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a shell command line in `dir`, panicking on failure; returns stdout.
pub fn sh(dir: &Path, script: &str) -> String {
    let out = ok(isolate(
        Command::new("sh").arg("-ec").arg(script).current_dir(dir),
    ));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// FUSE must be usable; under CI=true its absence is a failure, not a skip.
pub fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists()
        && Command::new("fusermount3")
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    require(
        ok,
        "FUSE (/dev/fuse and fusermount3 from the fuse3 package)",
    )
}

/// A throw-away store with an administrator and data groups.
pub struct TestStore {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub pse: PathBuf,
    pub pass: PathBuf,
}

impl TestStore {
    /// Creates a store with the given data groups (cheap Argon2 for speed).
    pub fn new(groups: &[&str]) -> TestStore {
        let dir = tempfile::Builder::new()
            .prefix("tresor-test-")
            .tempdir()
            .unwrap();
        let store = dir.path().join("store");
        let pse = dir.path().join("admin.pse");
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "test passphrase\n").unwrap();
        ok(tresor()
            .args(["init"])
            .arg(&store)
            .arg("--pse")
            .arg(&pse)
            .arg("--passphrase-file")
            .arg(&pass)
            .args(["--kdf-memory-mib", "8"]));
        for g in groups {
            ok(tresor()
                .args(["datagroup", "add"])
                .arg(&store)
                .arg(g)
                .arg("--pse")
                .arg(&pse)
                .arg("--passphrase-file")
                .arg(&pass));
        }
        TestStore {
            dir,
            store,
            pse,
            pass,
        }
    }

    /// A fresh empty directory inside the test dir.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Mounts the store in the foreground process `tresor mount -f`.
    pub fn mount(&self) -> Mount {
        self.mount_with(&[])
    }

    /// Mounts with extra flags.
    pub fn mount_with(&self, extra: &[&str]) -> Mount {
        self.mount_as(&self.pse, &self.pass, "mnt", extra)
    }

    /// Runs an admin command (`tresor ARGS… --pse ADMIN --passphrase-file P`).
    pub fn admin(&self, args: &[&str]) -> Output {
        tresor()
            .args(args)
            .arg("--pse")
            .arg(&self.pse)
            .arg("--passphrase-file")
            .arg(&self.pass)
            .output()
            .unwrap()
    }

    /// Certifies a user; returns (PSE path, passphrase file).
    pub fn add_user(&self, name: &str, role: &str) -> (PathBuf, PathBuf) {
        let pse = self.dir.path().join(format!("{name}.pse"));
        let pass = self.dir.path().join(format!("{name}.pass"));
        std::fs::write(&pass, format!("{name} passphrase\n")).unwrap();
        let out = tresor()
            .args(["user", "add"])
            .arg(&self.store)
            .arg(name)
            .args(["--role", role, "--pse-out"])
            .arg(&pse)
            .arg("--user-passphrase-file")
            .arg(&pass)
            .arg("--pse")
            .arg(&self.pse)
            .arg("--passphrase-file")
            .arg(&self.pass)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "user add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (pse, pass)
    }

    /// Mounts as the owner of `pse` at `<test dir>/<name>`.
    pub fn mount_as(&self, pse: &Path, pass: &Path, name: &str, extra: &[&str]) -> Mount {
        let mnt = self.subdir(name);
        let log = self.dir.path().join(if name == "mnt" {
            "mount.log".to_string()
        } else {
            format!("{name}.log")
        });
        let child = tresor()
            .arg("mount")
            .arg(&self.store)
            .arg(&mnt)
            .arg("--pse")
            .arg(pse)
            .arg("--passphrase-file")
            .arg(pass)
            .arg("-f")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut m = Mount {
            mnt: mnt.clone(),
            child: Some(child),
            log,
        };
        m.wait_mounted();
        m
    }
}

/// A running mount; unmounted on drop.
pub struct Mount {
    pub mnt: PathBuf,
    child: Option<Child>,
    pub log: PathBuf,
}

fn is_mounted(p: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = p.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*p))
}

impl Mount {
    fn wait_mounted(&mut self) {
        let start = Instant::now();
        while !is_mounted(&self.mnt) {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "mount exited ({st}) before it came up; log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!(
                    "mount did not come up; log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20)); // poll: a wait for the kernel to list the mount, hang-guarded
        }
        // Listed before the driver has answered the kernel's INIT: an
        // unmount in between ends it with exit 1 ("FUSE device
        // disconnected during handshake"). Any answer means INIT is done.
        let _ = std::fs::metadata(&self.mnt);
    }

    /// Path of `rel` inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The driver's pid (a foreground mount: the process the test
    /// started). Panics once it has been reaped: a pid of 0 given to
    /// `kill` would signal the test's own process group.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the driver was reaped").id()
    }

    /// The mount process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `timeout` for the mount process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        let child = self.child.as_mut()?;
        while start.elapsed() < timeout {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20)); // poll of a hang-guarded wait
        }
        None
    }

    /// Whether the mount point is (still) mounted.
    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.mnt)
    }

    /// Unmounts and asserts a clean end: `fusermount3 -u` succeeds, the
    /// driver exits with status 0 within a hang guard of 20 s, and its log
    /// holds no panic.
    pub fn unmount(mut self) {
        self.stop(true);
    }

    /// Panics if the driver's log shows a panic.
    pub fn assert_no_panic(&self) {
        let log = self.log();
        assert!(
            !log.contains("panicked"),
            "the driver panicked; log:\n{log}"
        );
    }

    fn stop(&mut self, strict: bool) {
        let Some(mut child) = self.child.take() else {
            if strict {
                self.assert_no_panic();
            }
            return;
        };
        let um = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .output();
        let start = Instant::now();
        let mut threads = String::new();
        let status = loop {
            if let Ok(Some(st)) = child.try_wait() {
                break Some(st);
            }
            // A hang guard, not a timing assertion.
            if start.elapsed() > Duration::from_secs(20) {
                threads = threads_of(child.id());
                let _ = child.kill();
                let _ = child.wait();
                let _ = Command::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(&self.mnt)
                    .output();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20)); // poll of a hang-guarded wait
        };
        if !strict {
            // Drop: lenient about how it ended, but a panic is never fine
            // (unless the test is failing already).
            if !std::thread::panicking() {
                self.assert_no_panic();
            }
            return;
        }
        match um {
            Ok(o) => assert!(
                o.status.success(),
                "fusermount3 -u {} failed: {}",
                self.mnt.display(),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("cannot run fusermount3: {e}"),
        }
        let Some(st) = status else {
            panic!(
                "the driver did not exit within 20 s of the unmount (killed); its threads then:\n{threads}\nlog:\n{}",
                self.log()
            );
        };
        assert!(
            st.success(),
            "the driver exited with {st} after a normal unmount; log:\n{}",
            self.log()
        );
        self.assert_no_panic();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// Shell: lazily unmounts, in a mount namespace just made, the copies of
/// every FUSE mount it took along — other tests' mounts, which it would
/// otherwise keep alive after their tests unmount them (their drivers end
/// only after a grace, docs/SESSIONS.md). Run first in such a namespace.
pub const DROP_FUSE_COPIES: &str = r#"awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i+1) ~ /^fuse/) print $5; break } }' /proc/self/mountinfo | while read -r m; do umount -l "$m" 2>/dev/null || true; done"#;

/// A work directory of uid 65534 (nobody) — `work`, holding `pass` and
/// the given files, all owned by it — and a way to run a script there as
/// that user with a FUSE device it may open.
pub struct AsNobody {
    pub dir: tempfile::TempDir,
    pub work: PathBuf,
}

impl AsNobody {
    pub fn new(files: &[(&str, &[u8])]) -> AsNobody {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("tresor-u-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let work = d.join("w");
        std::fs::create_dir(&work).unwrap();
        std::fs::create_dir(d.join("dev")).unwrap();
        std::os::unix::fs::chown(&work, Some(65534), Some(65534)).unwrap();
        let pass: (&str, &[u8]) = ("pass", b"user passphrase\n");
        for (name, bytes) in std::iter::once(pass).chain(files.iter().copied()) {
            std::fs::write(work.join(name), bytes).unwrap();
            std::os::unix::fs::chown(work.join(name), Some(65534), Some(65534)).unwrap();
        }
        AsNobody { dir, work }
    }

    /// The start of a script: in the work directory (`$T` the tresor
    /// binary), a store `st` with data group `g`, mounted on `m` (log in
    /// `log`, info level).
    pub fn mounted_store(&self) -> String {
        format!(
            "set -e; cd {w}; T={t}
            $T init st --pse a.pse --passphrase-file pass --kdf-memory-mib 8 >/dev/null 2>&1
            $T datagroup add st g --pse a.pse --passphrase-file pass >/dev/null
            mkdir m
            TRESOR_LOG=info $T mount st m --pse a.pse --passphrase-file pass --log {w}/log >/dev/null
            ",
            w = self.work.display(),
            t = env!("CARGO_BIN_EXE_tresor"),
        )
    }

    /// Runs `script` (sh, from a file: it may quote freely) as uid/gid
    /// 65534 in a private mount namespace (a child process; the test's own
    /// namespace is untouched) whose /dev/fuse is a 0666 node: /dev/fuse is
    /// 0600 on this machine, and an unprivileged mount goes through
    /// fusermount3, which opens it as the user.
    pub fn run(&self, script: &str) -> Output {
        let file = self.work.join("run.sh");
        std::fs::write(&file, script).unwrap();
        std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
        let root_script = format!(
            "set -e; {DROP_FUSE_COPIES}
            mount -t tmpfs none {dev}; mknod -m 666 {dev}/fuse c 10 229
            mount --bind {dev}/fuse /dev/fuse
            exec setpriv --reuid=65534 --regid=65534 --clear-groups sh {file}",
            dev = self.dir.path().join("dev").display(),
            file = file.display(),
        );
        let mut c = Command::new("unshare");
        isolate_as(&mut c, 65534);
        c.args(["-m", "--propagation", "private", "sh", "-c", &root_script])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

/// Each thread of `pid`: name, state, where it waits in the kernel (the
/// stack needs root) — what a hang guard prints before it kills.
pub fn threads_of(pid: u32) -> String {
    let mut out = String::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("(pid {pid} is gone)");
    };
    for t in tasks.flatten() {
        let p = t.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        let stat = read("stat");
        let state = stat.rsplit(") ").next().and_then(|r| r.split(' ').next());
        out += &format!(
            "  {} {} state {} wchan {}\n{}",
            t.file_name().to_string_lossy(),
            read("comm").trim(),
            state.unwrap_or("?"),
            read("wchan"),
            read("stack")
        );
    }
    out
}

/// Deterministic pseudo-random bytes (xorshift), printable-free, no long zero runs.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Every name, regular file, symlink target and backing extended attribute
/// (names and values, of files and of directories) below `dir`, recursively,
/// as bytes: what someone holding the store can read.
pub fn all_store_bytes(dir: &Path) -> Vec<u8> {
    fn xattrs(p: &Path, out: &mut Vec<u8>) {
        // Symlinks carry no user.* attributes on Linux; the others may.
        let names = xattr::list(p).unwrap_or_else(|e| panic!("listxattr {}: {e}", p.display()));
        for n in names {
            out.extend_from_slice(n.as_encoded_bytes());
            out.push(b'\n');
            if let Some(v) =
                xattr::get(p, &n).unwrap_or_else(|e| panic!("getxattr {}: {e}", p.display()))
            {
                out.extend(v);
                out.push(b'\n');
            }
        }
    }
    let mut out = Vec::new();
    xattrs(dir, &mut out);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.extend_from_slice(p.as_os_str().as_encoded_bytes());
            out.push(b'\n');
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                xattrs(&p, &mut out);
                stack.push(p);
            } else if ft.is_symlink() {
                out.extend_from_slice(
                    std::fs::read_link(&p)
                        .unwrap()
                        .as_os_str()
                        .as_encoded_bytes(),
                );
            } else if ft.is_file() {
                out.extend(std::fs::read(&p).unwrap());
                xattrs(&p, &mut out);
            }
        }
    }
    out
}

/// Builds the examples once (into this test's target dir) and returns their
/// directory: the profiler and policy tests run them as real programs.
pub fn examples_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/integration-HASH → target/<profile>
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let target_dir = profile_dir.parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--examples", "--quiet", "--manifest-path"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir);
        if profile_dir.file_name().unwrap() == "release" {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build --examples");
        assert!(status.success(), "cargo build --examples failed");
        profile_dir.join("examples")
    })
}

/// Path of a built example program.
pub fn example(name: &str) -> PathBuf {
    let p = examples_dir().join(name);
    assert!(p.exists(), "example {} not built", p.display());
    p
}
