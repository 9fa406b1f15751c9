//! `tresor run`: real confinement, always in the `tresor` child process,
//! never in the test process.
//!
//! `examples/attack` is profiled once in its benign mode (read `--data`,
//! write `--out/result.txt`, print a summary); every attack then runs
//! under that profile and must be stopped: by seccomp (exit 121 and a
//! report naming the syscall), by Landlock (the attack's own call fails
//! with EACCES and nothing is read or written), or by a limit (122, 124).
//! Every Landlock denial has its control: the same attack, unconfined, on
//! the same paths, succeeds — so a refusal by file permissions alone cannot
//! pass for the sandbox's. The attacks run as the caller and, as root, as
//! nobody too (`fixtures`). Under `CI=true` a kernel without Landlock or
//! namespaces is a failure, never a skip (`util::require`).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::util::{example, ok, require, require_root, tresor};

const NOBODY: u32 = 65534;

/// Who runs the analysis (and made its profile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// The test's own user (root in CI).
    Caller,
    /// nobody, through setpriv.
    Nobody,
}

struct Fixture {
    dir: tempfile::TempDir,
    profile: PathBuf,
    /// The benign run with `--fork`: its profile allows `clone`.
    forking_profile: PathBuf,
    who: Who,
}

impl Fixture {
    /// `program` as this fixture's user, in the test's own environment.
    fn command(&self, program: &Path) -> Command {
        match self.who {
            Who::Caller => {
                let mut c = Command::new(program);
                crate::util::isolate(&mut c);
                c
            }
            Who::Nobody => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                    .arg(program);
                crate::util::isolate_as(&mut c, NOBODY);
                c
            }
        }
    }
    fn tresor(&self) -> Command {
        self.command(Path::new(env!("CARGO_BIN_EXE_tresor")))
    }
    /// Makes `p` the fixture user's.
    fn own(&self, p: &Path) {
        if self.who == Who::Nobody {
            std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    /// A fresh, empty directory `NAME<n>` in the fixture's dir.
    fn fresh(&self, name: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = self
            .dir
            .path()
            .join(format!("{name}{}", N.fetch_add(1, Ordering::SeqCst)));
        std::fs::create_dir(&p).unwrap();
        self.own(&p);
        p
    }
    /// A fresh, empty output directory.
    fn new_out(&self) -> PathBuf {
        self.fresh("out")
    }
    /// A fresh copy of the data, for attacks that would change it.
    fn new_data(&self) -> PathBuf {
        let d = self.fresh("data");
        for e in std::fs::read_dir(self.data()).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
            self.own(&d.join(e.file_name()));
        }
        d
    }
    /// A file only its owner may read, outside `--data` and `--out`.
    fn secret(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.fresh("secret").join("secret.txt");
        std::fs::write(&p, "not for the analysis\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        self.own(&p);
        p
    }
}

/// The data, and the profile of one benign run, the caller's; `None`
/// (skip) when the kernel lacks what `tresor run` needs and CI is not set.
fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| build(Who::Caller)).as_ref()
}

/// The caller's fixture and, when the tests run as root, nobody's: the
/// attacks run as both.
fn fixtures() -> Vec<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    let mut all: Vec<&'static Fixture> = fixture().into_iter().collect();
    if !all.is_empty() && require_root("run the attacks as nobody too (setpriv)") {
        all.extend(F.get_or_init(|| build(Who::Nobody)).as_ref());
    }
    all
}

fn build(who: Who) -> Option<Fixture> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("tresor-run-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let f = Fixture {
        profile: dir.path().join("attack.json"),
        forking_profile: dir.path().join("attack-fork.json"),
        dir,
        who,
    };
    f.own(f.dir.path());
    let data = f.data();
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("sample1.txt"), "Ki-67 positive nuclei: 412\n").unwrap();
    std::fs::write(data.join("sample2.txt"), vec![7u8; 100_000]).unwrap();
    for p in [&data, &data.join("sample1.txt"), &data.join("sample2.txt")] {
        f.own(p);
    }
    let out = f.fresh("profile-out");
    // Made by the user who runs it, as a profile should be.
    for (p, extra) in [(&f.profile, None), (&f.forking_profile, Some("--fork"))] {
        ok(f.tresor()
            .arg("profile")
            .arg("--out")
            .arg(p)
            .arg("--data")
            .arg(&data)
            .arg("--writable")
            .arg(&out)
            .arg("--")
            .arg(example("attack"))
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .args(extra));
    }
    let probe = run(&f, &[], None);
    let err = text(&probe.stderr);
    // Only a kernel that lacks a feature skips (and fails under CI);
    // any other set-up failure fails the tests that use the fixture.
    let lacks = probe.status.code() == Some(125) && err.contains("this kernel lacks");
    if !require(!lacks, &format!("what tresor run needs ({})", err.trim())) {
        return None;
    }
    Some(f)
}

/// `tresor run [extra] -- attack [--attack NAME]` with a fresh `--out`.
fn run(f: &Fixture, extra: &[&str], attack: Option<&str>) -> Output {
    let out = f.new_out();
    run_in(f, &out, extra, attack)
}

fn run_in(f: &Fixture, out: &Path, extra: &[&str], attack: Option<&str>) -> Output {
    run_with(f, &f.profile, out, extra, attack)
}

fn run_with(
    f: &Fixture,
    profile: &Path,
    out: &Path,
    extra: &[&str],
    attack: Option<&str>,
) -> Output {
    let args: Vec<&OsStr> = match attack {
        Some(a) => vec!["--attack".as_ref(), a.as_ref()],
        None => vec![],
    };
    confined(f, profile, &f.data(), out, extra, &args)
}

/// `tresor run --profile P --data DATA --out OUT [extra] -- attack --data
/// DATA --out OUT ARGS…`
fn confined(
    f: &Fixture,
    profile: &Path,
    data: &Path,
    out: &Path,
    extra: &[&str],
    args: &[&OsStr],
) -> Output {
    // Shown with a failing test's output: which user ran it.
    eprintln!("tresor run as {:?} under {}", f.who, profile.display());
    f.tresor()
        .arg("run")
        .arg("--profile")
        .arg(profile)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra)
        .arg("--")
        .arg(example("attack"))
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .expect("tresor starts")
}

/// The same `attack --data DATA --out OUT ARGS…`, unconfined: the control.
fn unconfined(f: &Fixture, data: &Path, out: &Path, args: &[&OsStr]) -> Output {
    f.command(&example("attack"))
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .expect("attack starts")
}

/// `--attack NAME [--target PATH]`
fn attack<'a>(name: &'a str, target: Option<&'a Path>) -> Vec<&'a OsStr> {
    let mut v: Vec<&OsStr> = vec!["--attack".as_ref(), name.as_ref()];
    if let Some(t) = target {
        v.extend(["--target".as_ref(), t.as_os_str()]);
    }
    v
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The attack was killed by the policy and the report names `call`.
fn assert_violation(out: &Output, call: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(121), "stderr: {err}");
    assert!(
        err.contains(&format!("analysis stopped: {call}")) && err.contains("is not in profile"),
        "no report naming {call}: {err}"
    );
    assert!(!text(&out.stdout).contains("ATTACK SUCCEEDED"));
}

/// The attack did what it tried (unconfined: the control).
#[track_caller]
fn assert_succeeded(out: &Output) {
    assert!(
        out.status.success() && text(&out.stdout).contains("ATTACK SUCCEEDED"),
        "the unconfined control failed ({}): {} {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The attack's own call failed: EACCES (Landlock), or — in the run's own
/// root — ENOENT (not in the view) or EROFS (bound read-only).
#[track_caller]
fn assert_denied(out: &Output) {
    let o = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {o} stderr: {}",
        text(&out.stderr)
    );
    assert!(
        [
            "blocked: Permission denied",
            "blocked: No such file or directory",
            "blocked: Read-only file system"
        ]
        .iter()
        .any(|b| o.contains(b)),
        "stdout: {o}"
    );
}

macro_rules! attack_stopped_by_policy {
    ($name:ident, $attack:literal, $call:literal) => {
        #[test]
        fn $name() {
            for f in fixtures() {
                assert_violation(&run(f, &[], Some($attack)), $call);
            }
        }
    };
}

#[test]
fn benign_run_is_byte_identical_confined_and_unconfined() {
    for f in fixtures() {
        let free = f.new_out();
        let plain = unconfined(f, &f.data(), &free, &[]);
        assert!(plain.status.success(), "{}", text(&plain.stderr));
        let jailed = f.new_out();
        let confined = run_in(f, &jailed, &[], None);
        assert!(
            confined.status.success(),
            "confined benign run failed: {}",
            text(&confined.stderr)
        );
        assert_eq!(plain.stdout, confined.stdout);
        assert!(confined.stderr.is_empty(), "{}", text(&confined.stderr));
        assert_eq!(
            std::fs::read(free.join("result.txt")).unwrap(),
            std::fs::read(jailed.join("result.txt")).unwrap()
        );
    }
}

/// Root reads /etc/shadow unconfined (the control: as another user the file
/// permissions alone refuse it, and the denial would prove nothing); the
/// run cannot. The same for any user: `reading_a_file_outside_the_view_is_denied`.
#[test]
fn read_etc_shadow_is_denied() {
    let Some(f) = fixture() else { return };
    if !require_root("read /etc/shadow unconfined, the control") {
        return;
    }
    assert_read_denied(f, &[], Path::new("/etc/shadow"));
    let shadow = attack("read-shadow", None);
    assert_succeeded(&unconfined(f, &f.data(), &f.new_out(), &shadow));
    assert_denied(&run_attack(f, &[], &shadow));
}

/// A file the running user owns and reads, outside `--data` and `--out`:
/// file permissions let it through, the run does not.
#[test]
fn reading_a_file_outside_the_view_is_denied() {
    for f in fixtures() {
        assert_read_denied(f, &[], &f.secret());
    }
}

#[test]
fn write_into_data_is_denied() {
    for f in fixtures() {
        let data = f.new_data();
        let args = attack("write-data", None);
        assert_denied(&confined(f, &f.profile, &data, &f.new_out(), &[], &args));
        assert!(!data.join("evil.txt").exists());
        // The control: unconfined, the same write into the same --data lands.
        assert_succeeded(&unconfined(f, &data, &f.new_out(), &args));
        assert!(data.join("evil.txt").exists());
    }
}

#[test]
fn write_outside_out_is_denied() {
    for f in fixtures() {
        // --out's parent is the attack's target: one of its own.
        let parent = f.fresh("parent");
        let out = parent.join("out");
        std::fs::create_dir(&out).unwrap();
        let args = attack("write-outside", None);
        assert_denied(&confined(f, &f.profile, &f.data(), &out, &[], &args));
        assert!(!parent.join("evil.txt").exists());
        // The control: unconfined, the same write lands beside --out.
        assert_succeeded(&unconfined(f, &f.data(), &out, &args));
        assert!(parent.join("evil.txt").exists());
    }
}

#[test]
fn execve_bin_sh_is_denied() {
    for f in fixtures() {
        let args = attack("exec-sh", None);
        let out = run_attack(f, &[], &args);
        assert_denied(&out);
        assert!(!text(&out.stdout).contains("shell"));
        // The control: unconfined, /bin/sh runs (and replaces the attack).
        let free = unconfined(f, &f.data(), &f.new_out(), &args);
        assert!(free.status.success(), "{}", text(&free.stderr));
        assert_eq!(text(&free.stdout), "shell\n");
    }
}

attack_stopped_by_policy!(
    connect_to_localhost_is_stopped,
    "connect",
    "socket(AF_INET, SOCK_STREAM"
);
attack_stopped_by_policy!(
    raw_socket_is_stopped,
    "raw-socket",
    "socket(AF_INET, SOCK_RAW"
);
attack_stopped_by_policy!(ptrace_is_stopped, "ptrace", "ptrace(PTRACE_ATTACH, pid=1)");
// The profile allows getppid (the benign run asks for it), so the attack
// reaches kill; its parent is the pid namespace's init, pid 1.
attack_stopped_by_policy!(
    kill_parent_is_stopped,
    "kill-parent",
    "kill(pid=1, SIGKILL)"
);
attack_stopped_by_policy!(
    mount_is_stopped,
    "mount",
    "mount(\"none\", \"/tmp\", \"tmpfs\")"
);
attack_stopped_by_policy!(unshare_is_stopped, "unshare", "unshare(0x10000000)");
attack_stopped_by_policy!(chroot_is_stopped, "chroot", "chroot(\"/\")");
attack_stopped_by_policy!(setuid_is_stopped, "setuid", "setuid(0)");
attack_stopped_by_policy!(mprotect_write_exec_is_stopped, "mprotect-wx", "mprotect(0x");
attack_stopped_by_policy!(fork_bomb_is_stopped, "fork-bomb", "clone(");

#[test]
fn fork_bomb_under_a_forking_profile_hits_the_process_limit() {
    for f in fixtures() {
        let out = f.new_out();
        let r = run_with(
            f,
            &f.forking_profile,
            &out,
            &["--max-procs", "32", "--timeout", "60s"],
            Some("fork-bomb"),
        );
        let err = text(&r.stderr);
        assert_eq!(r.status.code(), Some(122), "stderr: {err}");
        assert!(
            err.contains("limit hit: processes (--max-procs 32)"),
            "{err}"
        );
    }
}

#[test]
fn memory_bomb_hits_the_memory_limit() {
    for f in fixtures() {
        let out = run(f, &["--memory", "256M"], Some("memory-bomb"));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(122), "stderr: {err}");
        assert!(err.contains("limit hit: memory (--memory 256 MiB"), "{err}");
    }
}

#[test]
fn writing_past_the_file_size_limit_is_stopped() {
    for f in fixtures() {
        let dir = f.new_out();
        // --keep-partial: a stopped run's outputs are otherwise not delivered.
        let out = run_in(
            f,
            &dir,
            &["--max-file-size", "8M", "--keep-partial"],
            Some("big-file"),
        );
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(122), "stderr: {err}");
        assert!(
            err.contains("limit hit: file size (--max-file-size 8 MiB)"),
            "{err}"
        );
        let len = std::fs::metadata(dir.join("big.bin")).unwrap().len();
        assert!(len <= 8 << 20, "{len} bytes written");
    }
}

/// Processes whose command line names `path` (an `--out` of this test's).
fn processes_naming(path: &Path) -> Vec<String> {
    let needle = path.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            cmdline
                .windows(needle.len())
                .any(|w| w == needle)
                .then(|| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        })
        .collect()
}

/// Two processes spin for 60 s (the forking profile allows the fork);
/// `--timeout 2s` ends the run with 124, and when tresor returns neither
/// is left (the tree was killed, not just the program).
#[test]
fn running_past_the_timeout_kills_the_tree() {
    for f in fixtures() {
        let out = f.new_out();
        let r = run_with(
            f,
            &f.forking_profile,
            &out,
            // A stopped run delivers its outputs only with --keep-partial: the
            // child's marker file shows the tree had forked.
            &["--timeout", "2s", "--keep-partial"],
            Some("spin-tree"),
        );
        let err = text(&r.stderr);
        assert_eq!(r.status.code(), Some(124), "stderr: {err}");
        assert!(
            err.contains("timeout: the analysis ran past --timeout"),
            "{err}"
        );
        assert!(!text(&r.stdout).contains("ATTACK SUCCEEDED"));
        assert!(out.join("child-started").exists(), "the tree never forked");
        assert_eq!(processes_naming(&out), Vec::<String>::new());
    }
}

#[test]
fn a_missing_program_is_a_runner_error() {
    let Some(f) = fixture() else { return };
    let dir = f.new_out();
    let out = tresor()
        .arg("run")
        .arg("--profile")
        .arg(&f.profile)
        .arg("--data")
        .arg(f.data())
        .arg("--out")
        .arg(&dir)
        .args(["--", "/nonexistent/analysis"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("/nonexistent/analysis"));
}

/// A valid --out and a file as --data: refused, naming --data.
#[test]
fn data_must_be_a_directory() {
    let Some(f) = fixture() else { return };
    let file = f.data().join("sample1.txt");
    let out = confined(f, &f.profile, &file, &f.new_out(), &[], &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains(&format!("--data {}: not a directory", file.display())),
        "{err}"
    );
}

/// A valid --data and a missing --out: refused, naming --out.
#[test]
fn out_must_exist() {
    let Some(f) = fixture() else { return };
    let missing = f.dir.path().join("no-such-dir");
    let out = confined(f, &f.profile, &f.data(), &missing, &[], &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains(&format!("--out {}", missing.display())),
        "{err}"
    );
}

/// As an unprivileged user the run gets a user namespace (and with it the
/// others): the benign run still works, an attack is still reported, and a
/// file of that user's own outside the view — which it reads unconfined —
/// is refused. Needs root to become `nobody` (setpriv): under CI a failure,
/// never a skip.
#[test]
fn unprivileged_run_uses_a_user_namespace() {
    use std::os::unix::fs::PermissionsExt;
    const NOBODY: u32 = 65534;
    let Some(f) = fixture() else { return };
    if !require_root("become nobody with setpriv") {
        return;
    }
    let setpriv = Command::new("setpriv").arg("--version").output();
    if !require(
        setpriv.is_ok_and(|o| o.status.success()),
        "setpriv (util-linux)",
    ) {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("tresor-run-nobody-")
        .tempdir()
        .unwrap();
    let root = dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (data, out, hidden) = (root.join("data"), root.join("out"), root.join("hidden"));
    for d in [&data, &out, &hidden] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(data.join("x.txt"), "42\n").unwrap();
    let secret = hidden.join("secret.txt");
    std::fs::write(&secret, "nobody's own\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bin = root.join("tresor");
    // The profile's own program (a copy would be another program).
    let prog = example("attack");
    let profile = root.join("p.json");
    std::fs::copy(env!("CARGO_BIN_EXE_tresor"), &bin).unwrap();
    std::fs::copy(&f.profile, &profile).unwrap();
    for p in [
        root,
        &data,
        &out,
        &hidden,
        &data.join("x.txt"),
        &secret,
        &profile,
    ] {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    // `attack ARGS…` as nobody: under `tresor run`, or (the control) bare.
    let nobody = |confine: bool, args: &[&OsStr]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        crate::util::isolate_as(&mut c, NOBODY);
        if confine {
            c.arg(&bin)
                .arg("run")
                .arg("--profile")
                .arg(&profile)
                .arg("--data")
                .arg(&data)
                .arg("--out")
                .arg(&out)
                .arg("--");
        }
        c.arg(&prog)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .args(args)
            .output()
            .unwrap()
    };
    let benign = nobody(true, &[]);
    assert!(benign.status.success(), "{}", text(&benign.stderr));
    assert!(text(&benign.stdout).contains("files: 1"));
    assert_violation(
        &nobody(true, &attack("connect", None)),
        "socket(AF_INET, SOCK_STREAM",
    );
    let read = attack("read-target", Some(&secret));
    assert_succeeded(&nobody(false, &read));
    assert_denied(&nobody(true, &read));
}

/// `tresor run` under the benign profile, on the fixture's data and a
/// fresh `--out`; the attack gets `args`.
fn run_attack(f: &Fixture, extra: &[&str], args: &[&OsStr]) -> Output {
    confined(f, &f.profile, &f.data(), &f.new_out(), extra, args)
}

/// The same attack unconfined must succeed: otherwise a denial proves nothing.
#[track_caller]
fn assert_unconfined_succeeds(f: &Fixture, args: &[&OsStr]) {
    assert_succeeded(&unconfined(f, &f.data(), &f.new_out(), args));
}

/// `attack --attack read-target --target PATH`: succeeds unconfined (the
/// control), refused (EACCES) confined.
#[track_caller]
fn assert_read_denied(f: &Fixture, extra: &[&str], target: &Path) {
    let args = attack("read-target", Some(target));
    assert_unconfined_succeeds(f, &args);
    assert_denied(&run_attack(f, extra, &args));
}

#[test]
fn reading_the_stores_ciphertext_is_denied() {
    let Some(f) = fixture() else { return };
    let s = crate::util::TestStore::new(&["lab"]);
    assert_read_denied(f, &[], &s.store);
}

#[test]
fn reading_a_pse_is_denied() {
    let Some(f) = fixture() else { return };
    let s = crate::util::TestStore::new(&[]);
    assert_read_denied(f, &[], &s.pse);
}

/// A profile that read more than 32 files in /etc lists 32 of them and
/// marks /etc `more_files`; elsewhere such a directory is granted whole,
/// /etc never (`never_whole` in src/sandbox/launch.rs). So the run reads the
/// listed /etc files, and nothing else there: not /etc/shadow (root reads it
/// unconfined, the control), not a file the profile read past the 32 it
/// lists.
#[test]
fn many_etc_files_in_a_profile_never_open_etc_shadow() {
    use tresor::sandbox::profile::MAX_FILES_PER_DIR;
    let Some(f) = fixture() else { return };
    if !require_root("read /etc/shadow unconfined, the control") {
        return;
    }
    let mut etc: Vec<PathBuf> = std::fs::read_dir("/etc")
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| !e.file_name().to_string_lossy().contains("shadow"))
        .map(|e| e.path())
        .filter(|p| std::fs::read(p).is_ok())
        .collect();
    etc.sort();
    etc.truncate(MAX_FILES_PER_DIR + 8);
    if !require(
        etc.len() > MAX_FILES_PER_DIR,
        "more than 32 regular files in /etc besides the shadow files",
    ) {
        return;
    }
    let also_read = |files: &[&PathBuf]| -> Vec<OsString> {
        files
            .iter()
            .flat_map(|p| [OsString::from("--also-read"), p.into()])
            .collect()
    };
    let profile = f.fresh("etc-profile").join("etc.json");
    let pout = f.new_out();
    ok(tresor()
        .args(["profile", "--out"])
        .arg(&profile)
        .arg("--data")
        .arg(f.data())
        .arg("--writable")
        .arg(&pout)
        .arg("--")
        .arg(example("attack"))
        .arg("--data")
        .arg(f.data())
        .arg("--out")
        .arg(&pout)
        .args(also_read(&etc.iter().collect::<Vec<_>>())));
    let p = tresor::sandbox::Profile::load(&profile).unwrap();
    let listed = &p.paths["/etc"];
    assert!(listed.more_files, "{:?}", listed);
    assert_eq!(listed.files.len(), MAX_FILES_PER_DIR);
    assert!(!listed.files.contains_key("shadow"), "{:?}", listed.files);
    let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
    let (granted, past): (Vec<&PathBuf>, Vec<&PathBuf>) = etc
        .iter()
        .partition(|p| listed.files.contains_key(&name(p)));
    assert!(
        !granted.is_empty() && !past.is_empty(),
        "{granted:?} {past:?}"
    );

    // The listed /etc files: read confined as they were profiled.
    let args = also_read(&granted);
    let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
    let benign = confined(f, &profile, &f.data(), &f.new_out(), &[], &args);
    assert!(benign.status.success(), "{}", text(&benign.stderr));
    assert_eq!(
        text(&benign.stdout).matches("also read ").count(),
        granted.len(),
        "{}",
        text(&benign.stdout)
    );
    // /etc/shadow, and a file the profile read but does not list: each read
    // unconfined (the control), refused confined.
    for target in [Path::new("/etc/shadow"), past[0].as_path()] {
        let read = attack("read-target", Some(target));
        assert_succeeded(&unconfined(f, &f.data(), &f.new_out(), &read));
        assert_denied(&confined(f, &profile, &f.data(), &f.new_out(), &[], &read));
    }
}

attack_stopped_by_policy!(
    loading_a_kernel_module_is_stopped,
    "load-module",
    "finit_module(fd=-1"
);

/// `--audit`: the connect attack runs on (the network namespace has no
/// route, so it fails by itself), its calls outside the profile land in a
/// delta; merged into the profile, the same run is no violation any more.
#[test]
fn audit_records_a_delta_that_profile_merge_accepts() {
    let Some(f) = fixture() else { return };
    let delta = f.dir.path().join("audit-delta.json");
    let audited = run(
        f,
        &["--audit", "--delta", delta.to_str().unwrap()],
        Some("connect"),
    );
    let err = text(&audited.stderr);
    assert_eq!(audited.status.code(), Some(1), "stderr: {err}");
    assert!(
        text(&audited.stdout).contains("blocked:"),
        "{}",
        text(&audited.stdout)
    );
    assert!(
        err.contains("audit: socket(AF_INET, SOCK_STREAM") && err.contains("is not in profile"),
        "{err}"
    );
    assert!(err.contains("audit: connect("), "{err}");
    assert!(err.contains("delta written to"), "{err}");
    let d: serde_json::Value = serde_json::from_slice(&std::fs::read(&delta).unwrap()).unwrap();
    let calls = d["syscalls"].as_object().unwrap();
    assert!(calls.contains_key("connect"), "{d}");
    assert_eq!(
        calls["socket"]["args"][0]["domain"].as_u64(),
        Some(libc::AF_INET as u64),
        "{d}"
    );
    // Only what the profile lacked: nothing the benign run used.
    let base: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&f.profile).unwrap()).unwrap();
    for name in calls.keys() {
        let had = &base["syscalls"][name];
        assert!(
            had.is_null() || name == "socket",
            "{name} was already in the profile: {had}"
        );
    }

    let merged = f.dir.path().join("audit-merged.json");
    ok(tresor()
        .args(["profile", "merge"])
        .arg(&f.profile)
        .arg(&delta)
        .arg("-o")
        .arg(&merged));
    let out = f.new_out();
    let again = run_with(f, &merged, &out, &[], Some("connect"));
    assert_eq!(
        again.status.code(),
        Some(1),
        "stderr: {}",
        text(&again.stderr)
    );
    assert!(!text(&again.stderr).contains("analysis stopped"));
    // The unmerged profile still stops it.
    assert_violation(&run(f, &[], Some("connect")), "socket(AF_INET, SOCK_STREAM");
}

/// The product's case: `--data` inside a tresor mount (the analysis reads
/// decrypted data), `--out` inside a mounted data group (its result is
/// written encrypted into the store). The store's own directory stays out
/// of reach.
#[test]
fn data_and_out_inside_a_tresor_mount() {
    let Some(f) = fixture() else { return };
    if !crate::util::fuse_available() {
        return;
    }
    let s = crate::util::TestStore::new(&["pathology"]);
    let m = s.mount();
    let slides = m.path("pathology/slides");
    let results = m.path("pathology/results");
    std::fs::create_dir(&slides).unwrap();
    std::fs::create_dir(&results).unwrap();
    for e in std::fs::read_dir(f.data()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), slides.join(e.file_name())).unwrap();
    }
    // `tresor run … -- attack` with --data and --out inside the mount.
    let jailed = |args: &[&OsStr]| confined(f, &f.profile, &slides, &results, &[], args);
    let benign = jailed(&[]);
    assert!(
        benign.status.success(),
        "confined run through the mount failed: {}",
        text(&benign.stderr)
    );
    // Byte-identical to the unconfined run on the plaintext.
    let free = f.new_out();
    let plain = unconfined(f, &f.data(), &free, &[]);
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    assert_eq!(plain.stdout, benign.stdout);
    let result = std::fs::read(results.join("result.txt")).unwrap();
    assert_eq!(result, std::fs::read(free.join("result.txt")).unwrap());
    // Encrypted in the store: neither the result's text nor its name.
    let store_bytes = crate::util::all_store_bytes(&s.store);
    let head = &result[..result.len().min(40)];
    assert!(!store_bytes.windows(head.len()).any(|w| w == head));
    assert!(!store_bytes.windows(10).any(|w| w == b"result.txt"));

    // From inside, writing into --data (the mounted slides) and reading
    // the store's ciphertext are refused; the controls: unconfined, on the
    // same paths, both succeed.
    let write = attack("write-data", None);
    assert_denied(&jailed(&write));
    assert!(!slides.join("evil.txt").exists());
    assert_succeeded(&unconfined(f, &slides, &results, &write));
    assert!(slides.join("evil.txt").exists());
    let read = attack("read-target", Some(&s.store));
    assert_denied(&jailed(&read));
    assert_succeeded(&unconfined(f, &slides, &results, &read));
    m.unmount();
}

/// `--allow-weaker` on a kernel that has everything confines exactly as
/// without it: no warning, and attacks are still stopped (the refusals on
/// kernels that lack a feature are unit-tested in `launch::tests`).
#[test]
fn allow_weaker_on_a_complete_kernel_weakens_nothing() {
    let Some(f) = fixture() else { return };
    let benign = run(f, &["--allow-weaker"], None);
    assert!(benign.status.success(), "{}", text(&benign.stderr));
    assert!(
        !text(&benign.stderr).contains("warning"),
        "{}",
        text(&benign.stderr)
    );
    assert_violation(&run(f, &["--allow-weaker"], Some("mount")), "mount(");
    assert_read_denied(f, &["--allow-weaker"], &f.secret());
}
