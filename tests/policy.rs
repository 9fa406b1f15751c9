//! The seccomp policy end to end: profiles made by `tresor profile` of the
//! programs in examples/, compiled, and installed by `examples/policy_exec`
//! in a child process that then execs the program. This test process never
//! filters itself.
//!
//! `examples/policy_probe MODE` makes one chosen syscall: profile one mode,
//! run another under that profile's policy, and the runs differ in that call.
//!
//! Where ptrace or seccomp is refused the tests skip with a message, except
//! under `CI=true`, where that is a failure (`util::require`).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use tresor::sandbox::policy::{pad_value, FilterKind, Policy, PolicyOptions, MAX_STACK_INSNS};
use tresor::sandbox::{Arch, Profile};

use crate::util::{example, require, tresor};

fn probe() -> PathBuf {
    example("policy_probe")
}

/// A profile written by `tresor profile`; the directory lives as long as it.
struct Recorded {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Recorded {
    fn profile(&self) -> Profile {
        Profile::load(&self.path).unwrap()
    }
}

fn try_record(program: &Path, args: &[&str]) -> (Output, Recorded) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.json");
    let out = tresor()
        .args(["profile", "--out"])
        .arg(&path)
        // The test's temporary files are the caller's.
        .arg("--writable")
        .arg(std::env::temp_dir())
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out, Recorded { dir, path })
}

/// `tresor profile` of `program args…`, which must succeed.
fn record(program: &Path, args: &[&str]) -> Recorded {
    let (out, r) = try_record(program, args);
    assert!(
        out.status.success(),
        "tresor profile failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    r
}

/// `policy_exec [extra…] POLICY -- program args…`
fn confined(policy: &Path, extra: &[&str], program: &Path, args: &[&str]) -> Output {
    Command::new(example("policy_exec"))
        .args(extra)
        .arg(policy)
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn unconfined(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(out.status.success(), "expected success: {}", describe(out));
}

#[track_caller]
fn assert_sigsys(out: &Output) {
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "expected a SIGSYS kill: {}",
        describe(out)
    );
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether ptrace (to profile) and seccomp (to confine) work here; under
/// CI=true a failure of either is a test failure, never a skip.
fn sandbox_ok() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let (out, r) = try_record(&probe(), &["getpid"]);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let refused = err.contains("ptrace was refused") || err.contains("seccomp");
            assert!(refused, "tresor profile cannot trace here: {err}");
            return require(
                false,
                &format!("ptrace for tresor profile ({})", err.trim()),
            );
        }
        let out = confined(&r.path, &[], &probe(), &["getpid"]);
        if out.status.code() == Some(126) {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("cannot install the seccomp policy"),
                "cannot install a seccomp policy here: {err}"
            );
            return require(false, &format!("seccomp filters ({})", err.trim()));
        }
        assert_ok(&out);
        true
    })
}

macro_rules! require_sandbox {
    () => {
        if !sandbox_ok() {
            return;
        }
    };
}

#[test]
fn benign_run_identical_confined() {
    require_sandbox!();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "some sample data\n").unwrap();
    let files = example("profile_files");
    let arg = |p: &Path| p.to_str().unwrap().to_string();
    let (i, o1, o2, o3) = (
        arg(&input),
        arg(&dir.path().join("o1")),
        arg(&dir.path().join("o2")),
        arg(&dir.path().join("o3")),
    );
    let r = record(&files, &[&i, &o1]);
    let free = unconfined(&files, &[&i, &o2]);
    let jail = confined(&r.path, &[], &files, &[&i, &o3]);
    assert_ok(&free);
    assert_ok(&jail);
    assert_eq!(free.stdout, jail.stdout);
    assert_eq!(free.stderr, jail.stderr);
    let want = std::fs::read(&o2).unwrap();
    assert_eq!(std::fs::read(&o1).unwrap(), want);
    assert_eq!(std::fs::read(&o3).unwrap(), want);
    // The program's own failure passes through as its exit code, not a kill.
    let missing = arg(&dir.path().join("missing"));
    let jail = confined(&r.path, &[], &files, &[&missing, &o3]);
    assert_eq!(jail.status.code(), Some(1), "{}", describe(&jail));
}

#[test]
fn syscall_outside_profile_is_killed() {
    require_sandbox!();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "x").unwrap();
    let out = dir.path().join("out.txt");
    let r = record(
        &example("profile_files"),
        &[input.to_str().unwrap(), out.to_str().unwrap()],
    );
    assert!(!r.profile().syscalls.contains_key("socket"));
    // profile_socket needs socket(): not in profile_files' profile.
    assert_sigsys(&confined(&r.path, &[], &example("profile_socket"), &[]));
}

/// x86_64 only: it is the architecture with other ABIs (i386, x32) to
/// reach the same kernel through; elsewhere the test does not exist rather
/// than pass without checking.
#[cfg(target_arch = "x86_64")]
#[test]
fn other_abis_are_killed() {
    require_sandbox!();
    let r = record(&probe(), &["getpid"]);
    // getpid itself is fine through the native ABI …
    assert_ok(&confined(&r.path, &[], &probe(), &["getpid"]));
    // … but not through i386's int 0x80, nor with an x32 number.
    let free = unconfined(&probe(), &["int80"]);
    assert_ok(&free);
    assert_sigsys(&confined(&r.path, &[], &probe(), &["int80"]));
    assert_sigsys(&confined(&r.path, &[], &probe(), &["x32"]));
}

#[test]
fn ioctl_request_outside_profile_is_killed() {
    require_sandbox!();
    let r = record(&probe(), &["ioctl", "0x5401"]);
    let seen = r.profile();
    assert!(seen.syscalls["ioctl"]
        .args
        .iter()
        .any(|t| t["request"] == 0x5401));
    let out = confined(&r.path, &[], &probe(), &["ioctl", "0x5401"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("Bad file descriptor"),
        "{}",
        describe(&out)
    );
    assert_sigsys(&confined(&r.path, &[], &probe(), &["ioctl", "0x5402"]));
    // The upper half of the register is not part of the request.
    let out = confined(&r.path, &[], &probe(), &["ioctl", "0x100005401"]);
    assert_ok(&out);
}

#[test]
fn socket_arguments_outside_profile_are_killed() {
    require_sandbox!();
    let (unix, inet, stream, dgram) = ("1", "2", "1", "2");
    let r = record(&probe(), &["socket", unix, stream]);
    assert_ok(&confined(&r.path, &[], &probe(), &["socket", unix, stream]));
    // SOCK_NONBLOCK | SOCK_CLOEXEC do not change what the socket reaches.
    let flagged = format!("{}", 1 | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    assert_ok(&confined(
        &r.path,
        &[],
        &probe(),
        &["socket", unix, &flagged],
    ));
    assert_sigsys(&confined(&r.path, &[], &probe(), &["socket", inet, stream]));
    assert_sigsys(&confined(&r.path, &[], &probe(), &["socket", unix, dgram]));
    assert_sigsys(&confined(&r.path, &[], &probe(), &["socket", inet, dgram]));
}

#[test]
fn write_exec_memory_only_when_profiled() {
    require_sandbox!();
    let rw = record(&probe(), &["mmap-rw"]);
    assert!(!rw.profile().write_exec_memory);
    assert_ok(&confined(&rw.path, &[], &probe(), &["mmap-rw"]));
    assert_sigsys(&confined(&rw.path, &[], &probe(), &["mmap-wx"]));
    assert_sigsys(&confined(&rw.path, &[], &probe(), &["mprotect-wx"]));
    // A program that needs it (a JIT) was seen doing it: allowed.
    let wx = record(&probe(), &["mmap-wx"]);
    assert!(wx.profile().write_exec_memory);
    assert_ok(&confined(&wx.path, &[], &probe(), &["mmap-wx"]));
}

#[test]
fn clone_namespaces_killed_and_clone3_enosys() {
    require_sandbox!();
    let r = record(&probe(), &["clone"]);
    assert_ok(&confined(&r.path, &[], &probe(), &["clone"]));
    assert_sigsys(&confined(&r.path, &[], &probe(), &["clone-newuser"]));
    // clone3 is answered ENOSYS, the process lives on (libc falls back to clone).
    let out = confined(&r.path, &[], &probe(), &["clone3"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("Function not implemented"),
        "{}",
        describe(&out)
    );
}

#[test]
fn threads_and_children_run_confined() {
    require_sandbox!();
    // Threads: glibc tries clone3 first, gets ENOSYS, falls back to clone.
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2) = (dir.path().join("d1"), dir.path().join("d2"));
    std::fs::create_dir(&d1).unwrap();
    std::fs::create_dir(&d2).unwrap();
    let threads = example("profile_threads");
    let r = record(&threads, &[d1.to_str().unwrap(), "4"]);
    assert!(r.profile().syscalls.contains_key("clone"));
    assert_ok(&confined(
        &r.path,
        &[],
        &threads,
        &[d2.to_str().unwrap(), "4"],
    ));
    assert_eq!(std::fs::read_dir(&d2).unwrap().count(), 4);
    // A child process that execs another program; the exit code passes through.
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "x").unwrap();
    let (i, o1, o2) = (
        input.to_str().unwrap().to_string(),
        dir.path().join("o1").to_str().unwrap().to_string(),
        dir.path().join("o2").to_str().unwrap().to_string(),
    );
    let files = example("profile_files");
    let fork_exec = example("profile_fork_exec");
    let f = files.to_str().unwrap();
    let (out, r) = try_record(&fork_exec, &["3", f, &i, &o1]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let out = confined(&r.path, &[], &fork_exec, &["3", f, &i, &o2]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert_eq!(std::fs::read(&o2).unwrap(), b"1\n");
}

/// A policy padded to 2,000+ argument rules: split into several filters
/// under the cap, all of it loaded, nothing dropped.
#[test]
fn padded_policy_of_2000_rules_keeps_every_rule() {
    require_sandbox!();
    const PAD: usize = 2000;
    let r = record(&probe(), &["ioctl", "0x5401"]);
    let opts = PolicyOptions {
        pad_rules: PAD,
        ..Default::default()
    };
    let policy = Policy::load(&r.path, &opts).unwrap();
    let compiled = policy.compile().unwrap();
    let stats = compiled.stats(&policy);
    assert!(stats.rules >= PAD, "{stats:?}");
    let arg_filters = stats
        .filters
        .iter()
        .filter(|f| f.kind == FilterKind::Arguments && f.syscalls.contains(&"ioctl".into()))
        .count();
    assert!(arg_filters >= 2, "ioctl should span filters: {stats:?}");
    assert!(stats.filters.len() >= 4);
    for f in &stats.filters {
        assert!(f.instructions < 4096, "{f:?}");
    }
    assert!(stats.stack_instructions <= MAX_STACK_INSNS);

    // Count the rules back from the compiled filters: every allowed request
    // passes the whole stack, the value just above each is killed.
    let ioctl = policy.syscalls["ioctl"].clone();
    assert_eq!(ioctl.allow_args.len(), PAD + 1);
    let nr = ioctl.nr;
    let audit_arch = Arch::native().unwrap().audit_arch();
    let answer = |v: u64| compiled.evaluate(audit_arch, nr, [0, v, 0, 0, 0, 0]);
    let mut passed = 0;
    for t in &ioctl.allow_args {
        let v = t["request"];
        if answer(v).unwrap() == libc::SECCOMP_RET_ALLOW {
            passed += 1;
        }
        assert_eq!(answer(v + 1).unwrap(), libc::SECCOMP_RET_KILL_PROCESS);
    }
    assert_eq!(passed, PAD + 1, "rules were dropped");

    // And in the kernel: loaded in a child, the first and the very last
    // rule hold, a value in no rule is killed, the recorded one still works.
    let pad = ["--pad-rules", "2000"];
    let last = format!("{:#x}", pad_value(PAD - 1));
    let first = format!("{:#x}", pad_value(0));
    let between = format!("{:#x}", pad_value(PAD - 1) + 1);
    for ok in ["0x5401", &first, &last] {
        let out = confined(&r.path, &pad, &probe(), &["ioctl", ok]);
        assert_ok(&out);
    }
    assert_sigsys(&confined(&r.path, &pad, &probe(), &["ioctl", &between]));

    // The benign program runs unchanged under its own padded policy.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "abc").unwrap();
    let (i, o1, o2) = (
        input.to_str().unwrap().to_string(),
        dir.path().join("o1").to_str().unwrap().to_string(),
        dir.path().join("o2").to_str().unwrap().to_string(),
    );
    let files = example("profile_files");
    let fr = record(&files, &[&i, &o1]);
    assert_ok(&confined(&fr.path, &pad, &files, &[&i, &o2]));
    assert_eq!(std::fs::read(&o1).unwrap(), std::fs::read(&o2).unwrap());
}

/// The size check agrees with the kernel: the biggest policy tresor
/// accepts loads (the kernel counts eBPF instructions, not classic ones).
#[test]
fn largest_accepted_policy_loads() {
    require_sandbox!();
    let r = record(&probe(), &["ioctl", "0x5401"]);
    let fits = |n: usize| {
        let opts = PolicyOptions {
            pad_rules: n,
            ..Default::default()
        };
        Policy::load(&r.path, &opts).unwrap().compile().is_ok()
    };
    let (mut lo, mut hi) = (2000, 40_000);
    assert!(fits(lo) && !fits(hi));
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let n = lo.to_string();
    let last = format!("{:#x}", pad_value(lo - 1));
    let out = confined(&r.path, &["--pad-rules", &n], &probe(), &["ioctl", &last]);
    assert_ok(&out);
}

#[test]
fn show_lists_filters_and_json_round_trips() {
    require_sandbox!();
    let r = record(&probe(), &["socket", "1", "1"]);
    let policy = Policy::load(&r.path, &PolicyOptions::default()).unwrap();
    let compiled = policy.compile().unwrap();
    let shown = policy.render(&compiled);
    for want in [
        "socket",
        "allow if domain=AF_UNIX type=SOCK_STREAM",
        "kill if prot has PROT_WRITE|PROT_EXEC",
        "errno ENOSYS",
        "allowlist of",
        "instructions",
    ] {
        assert!(shown.contains(want), "{want:?} missing:\n{shown}");
    }
    let filters = compiled.filters().len();
    assert!(shown.contains(&format!("{filters} filters")), "{shown}");
    assert!(shown.contains(&format!("filter {filters}:")), "{shown}");
    // One line per syscall, each with its reason.
    for (name, rule) in &policy.syscalls {
        let line = shown
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("no line for {name}:\n{shown}"));
        assert!(line.ends_with(&format!("# {}", rule.comment)), "{line}");
    }

    // The policy as data: JSON, sorted, one rule per syscall with a comment;
    // it round-trips and runs like the profile it came from.
    let json = policy.to_json();
    let back = Policy::from_json(&json, "p").unwrap();
    assert_eq!(back, policy);
    assert_eq!(back.to_json(), json);
    let file = r.dir.path().join("policy.json");
    std::fs::write(&file, &json).unwrap();
    assert_eq!(
        Policy::load(&file, &PolicyOptions::default()).unwrap(),
        policy
    );
    assert_ok(&confined(&file, &[], &probe(), &["socket", "1", "1"]));
    assert_sigsys(&confined(&file, &[], &probe(), &["socket", "2", "1"]));
}

#[test]
fn bad_policies_are_clear_errors() {
    require_sandbox!();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("garbage.json", "{ not json", "not JSON"),
        (
            "newer.json",
            r#"{"format":"tresor-policy","version":7}"#,
            "upgrade tresor",
        ),
        (
            "clone3.json",
            r#"{"format":"tresor-policy","version":1,"arch":"x86_64",
               "program":{"path":"/x","sha256":null},
               "syscalls":{"clone3":{"nr":435,"comment":"c"}}}"#,
            "clone3 must be answered",
        ),
    ];
    for (name, text, want) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let out = confined(&p, &[], &probe(), &["getpid"]);
        assert_eq!(out.status.code(), Some(126), "{}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{name}: {err}");
    }
    // Too big for the kernel: refused with the numbers, never truncated.
    let r = record(&probe(), &["getpid"]);
    let out = confined(&r.path, &["--pad-rules", "40000"], &probe(), &["getpid"]);
    assert_eq!(out.status.code(), Some(126), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the kernel loads at most 32768"),
        "{}",
        describe(&out)
    );
}
