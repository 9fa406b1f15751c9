//! `tresor run`: real confinement, always in the `tresor` child process,
//! never in the test process.
//!
//! `examples/attack` is profiled once in its benign mode (read `--data`,
//! write `--out/result.txt`, print a summary); every attack then runs
//! under that profile and must be stopped: by seccomp (exit 121 and a
//! report naming the syscall), by Landlock (the attack's own call fails
//! with EACCES and nothing is read or written), or by a limit (122, 124).
//! Under `CI=true` a kernel without Landlock or namespaces is a failure,
//! never a skip.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::util::{example, ok, tresor};

struct Fixture {
    dir: tempfile::TempDir,
    profile: PathBuf,
    /// The benign run with `--fork`: its profile allows `clone`.
    forking_profile: PathBuf,
}

impl Fixture {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    /// A fresh, empty output directory.
    fn new_out(&self) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = self
            .dir
            .path()
            .join(format!("out{}", N.fetch_add(1, Ordering::SeqCst)));
        std::fs::create_dir(&p).unwrap();
        p
    }
}

/// The data, and the profile of one benign run; `None` (skip) when the
/// kernel lacks what `tresor run` needs and CI is not set.
fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("tresor-run-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("sample1.txt"), "Ki-67 positive nuclei: 412\n").unwrap();
        std::fs::write(data.join("sample2.txt"), vec![7u8; 100_000]).unwrap();
        let out = dir.path().join("profile-out");
        std::fs::create_dir(&out).unwrap();
        let profile = dir.path().join("attack.json");
        let forking_profile = dir.path().join("attack-fork.json");
        for (p, extra) in [(&profile, None), (&forking_profile, Some("--fork"))] {
            ok(tresor()
                .arg("profile")
                .arg("--out")
                .arg(p)
                .arg("--")
                .arg(example("attack"))
                .arg("--data")
                .arg(&data)
                .arg("--out")
                .arg(&out)
                .args(extra));
        }
        let f = Fixture {
            dir,
            profile,
            forking_profile,
        };
        let probe = run(&f, &[], None);
        if probe.status.code() == Some(125) {
            let err = String::from_utf8_lossy(&probe.stderr);
            if std::env::var("CI").as_deref() == Ok("true") || !err.contains("lacks") {
                panic!("tresor run cannot confine here: {err}");
            }
            eprintln!("SKIPPING run tests: {err}");
            return None;
        }
        Some(f)
    })
    .as_ref()
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
    let mut c = tresor();
    c.arg("run")
        .arg("--profile")
        .arg(profile)
        .arg("--data")
        .arg(f.data())
        .arg("--out")
        .arg(out)
        .args(extra)
        .arg("--")
        .arg(example("attack"))
        .arg("--data")
        .arg(f.data())
        .arg("--out")
        .arg(out);
    if let Some(a) = attack {
        c.args(["--attack", a]);
    }
    c.output().expect("tresor starts")
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

/// The attack's own call failed: EACCES (Landlock), or — in the run's own
/// root — ENOENT (not in the view) or EROFS (bound read-only).
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
            let Some(f) = fixture() else { return };
            assert_violation(&run(f, &[], Some($attack)), $call);
        }
    };
}

#[test]
fn benign_run_is_byte_identical_confined_and_unconfined() {
    let Some(f) = fixture() else { return };
    let free = f.new_out();
    let plain = ok(std::process::Command::new(example("attack"))
        .arg("--data")
        .arg(f.data())
        .arg("--out")
        .arg(&free));
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

#[test]
fn read_etc_shadow_is_denied() {
    let Some(f) = fixture() else { return };
    assert_denied(&run(f, &[], Some("read-shadow")));
}

#[test]
fn write_into_data_is_denied() {
    let Some(f) = fixture() else { return };
    assert_denied(&run(f, &[], Some("write-data")));
    assert!(!f.data().join("evil.txt").exists());
}

#[test]
fn write_outside_out_is_denied() {
    let Some(f) = fixture() else { return };
    assert_denied(&run(f, &[], Some("write-outside")));
    assert!(!f.dir.path().join("evil.txt").exists());
}

#[test]
fn execve_bin_sh_is_denied() {
    let Some(f) = fixture() else { return };
    let out = run(f, &[], Some("exec-sh"));
    assert_denied(&out);
    assert!(!text(&out.stdout).contains("shell"));
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
attack_stopped_by_policy!(kill_parent_is_stopped, "kill-parent", "getppid()");
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
    let Some(f) = fixture() else { return };
    let out = f.new_out();
    let t = Instant::now();
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
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[test]
fn memory_bomb_hits_the_memory_limit() {
    let Some(f) = fixture() else { return };
    let out = run(f, &["--memory", "256M"], Some("memory-bomb"));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(122), "stderr: {err}");
    assert!(err.contains("limit hit: memory (--memory 256 MiB"), "{err}");
}

#[test]
fn writing_past_the_file_size_limit_is_stopped() {
    let Some(f) = fixture() else { return };
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

#[test]
fn running_past_the_timeout_kills_the_tree() {
    let Some(f) = fixture() else { return };
    let t = Instant::now();
    let out = run(f, &["--timeout", "1s"], Some("spin"));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "stderr: {err}");
    assert!(
        err.contains("timeout: the analysis ran past --timeout"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(30));
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

#[test]
fn data_must_be_a_directory() {
    let Some(f) = fixture() else { return };
    let out = run_in(f, &f.dir.path().join("no-such-dir"), &[], None);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("--out"), "{}", text(&out.stderr));
}

/// As an unprivileged user the run gets a user namespace (and with it the
/// others): the benign run still works and an attack is still reported.
/// Needs root to become `nobody` (setpriv); skipped otherwise.
#[test]
fn unprivileged_run_uses_a_user_namespace() {
    use std::os::unix::fs::PermissionsExt;
    let Some(f) = fixture() else { return };
    if !nix::unistd::geteuid().is_root()
        || std::process::Command::new("setpriv")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!("skipping: needs root and setpriv to run as nobody");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("tresor-run-nobody-")
        .tempdir()
        .unwrap();
    let root = dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (data, out) = (root.join("data"), root.join("out"));
    for d in [&data, &out] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(data.join("x.txt"), "42\n").unwrap();
    let bin = root.join("tresor");
    // The profile's own program (a copy would be another program).
    let prog = example("attack");
    let profile = root.join("p.json");
    std::fs::copy(env!("CARGO_BIN_EXE_tresor"), &bin).unwrap();
    std::fs::copy(&f.profile, &profile).unwrap();
    for p in [
        root.to_path_buf(),
        data.clone(),
        out.clone(),
        data.join("x.txt"),
        profile.clone(),
    ] {
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    }
    let nobody = |attack: Option<&str>| {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .arg("run")
            .arg("--profile")
            .arg(&profile)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .arg("--")
            .arg(&prog)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out);
        if let Some(a) = attack {
            c.args(["--attack", a]);
        }
        c.output().unwrap()
    };
    let benign = nobody(None);
    assert!(benign.status.success(), "{}", text(&benign.stderr));
    assert!(text(&benign.stdout).contains("files: 1"));
    assert_violation(&nobody(Some("connect")), "socket(AF_INET, SOCK_STREAM");
}

/// `tresor run` under the benign profile; the attack gets extra arguments.
fn run_attack(f: &Fixture, extra: &[&str], attack_args: &[&std::ffi::OsStr]) -> Output {
    let out = f.new_out();
    let mut c = tresor();
    c.arg("run")
        .arg("--profile")
        .arg(&f.profile)
        .arg("--data")
        .arg(f.data())
        .arg("--out")
        .arg(&out)
        .args(extra)
        .arg("--")
        .arg(example("attack"))
        .arg("--data")
        .arg(f.data())
        .arg("--out")
        .arg(&out)
        .args(attack_args);
    c.output().expect("tresor starts")
}

/// The same attack unconfined must succeed: otherwise a denial proves nothing.
fn assert_unconfined_succeeds(f: &Fixture, attack_args: &[&std::ffi::OsStr]) {
    let free = std::process::Command::new(example("attack"))
        .arg("--data")
        .arg(f.data())
        .arg("--out")
        .arg(f.new_out())
        .args(attack_args)
        .output()
        .unwrap();
    assert!(
        text(&free.stdout).contains("ATTACK SUCCEEDED"),
        "unconfined: {} {}",
        text(&free.stdout),
        text(&free.stderr)
    );
}

/// `attack --attack read-target --target PATH`: succeeds unconfined,
/// refused (EACCES) confined.
fn assert_read_denied(f: &Fixture, target: &Path) {
    let args = [
        "--attack".as_ref(),
        "read-target".as_ref(),
        "--target".as_ref(),
        target.as_os_str(),
    ];
    assert_unconfined_succeeds(f, &args);
    assert_denied(&run_attack(f, &[], &args));
}

#[test]
fn reading_the_stores_ciphertext_is_denied() {
    let Some(f) = fixture() else { return };
    let s = crate::util::TestStore::new(&["lab"]);
    assert_read_denied(f, &s.store);
}

#[test]
fn reading_a_pse_is_denied() {
    let Some(f) = fixture() else { return };
    let s = crate::util::TestStore::new(&[]);
    assert_read_denied(f, &s.pse);
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
    let confined = |attack: &[&std::ffi::OsStr]| {
        let mut c = tresor();
        c.arg("run")
            .arg("--profile")
            .arg(&f.profile)
            .arg("--data")
            .arg(&slides)
            .arg("--out")
            .arg(&results)
            .arg("--")
            .arg(example("attack"))
            .arg("--data")
            .arg(&slides)
            .arg("--out")
            .arg(&results)
            .args(attack);
        c.output().unwrap()
    };
    let benign = confined(&[]);
    assert!(
        benign.status.success(),
        "confined run through the mount failed: {}",
        text(&benign.stderr)
    );
    // Byte-identical to the unconfined run on the plaintext.
    let free = f.new_out();
    let plain = ok(std::process::Command::new(example("attack"))
        .arg("--data")
        .arg(f.data())
        .arg("--out")
        .arg(&free));
    assert_eq!(plain.stdout, benign.stdout);
    let result = std::fs::read(results.join("result.txt")).unwrap();
    assert_eq!(result, std::fs::read(free.join("result.txt")).unwrap());
    // Encrypted in the store: neither the result's text nor its name.
    let store_bytes = crate::util::all_store_bytes(&s.store);
    let head = &result[..result.len().min(40)];
    assert!(!store_bytes.windows(head.len()).any(|w| w == head));
    assert!(!store_bytes.windows(10).any(|w| w == b"result.txt"));

    // From inside, writing into --data (the mounted slides) and reading
    // the store's ciphertext are refused.
    assert_denied(&confined(&["--attack".as_ref(), "write-data".as_ref()]));
    assert!(!slides.join("evil.txt").exists());
    assert_denied(&confined(&[
        "--attack".as_ref(),
        "read-target".as_ref(),
        "--target".as_ref(),
        s.store.as_os_str(),
    ]));
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
    assert_denied(&run(f, &["--allow-weaker"], Some("read-shadow")));
}
