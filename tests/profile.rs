//! `tresor profile` end to end: real ptrace and real eBPF, in child
//! processes only (the `tresor` binary profiles the programs in examples/;
//! this test process never traces, filters or loads BPF itself).
//!
//! The tests without `--recorder` run the default, `auto`: as root (CI)
//! that is the in-kernel recorder, so they check it; the
//! `recorders_*` tests run both recorders side by side, and
//! `unprivileged_profile_falls_back_to_ptrace` the fallback.
//!
//! Each example's profile must hold exactly the syscalls expected: the
//! start-up set of a trivial Rust program (measured here, by profiling
//! `profile_baseline`) plus the example's own, listed with reasons below.
//!
//! Where ptrace is refused (some containers) the tests skip with a message,
//! except under `CI=true`, where that is a failure (`util::require`).
//!
//! No fixed waits: a test that must act while the program runs waits for the
//! program's own signal (a line on its stdout) or for /proc state, with
//! time bounds only as hang guards.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tresor::sandbox::{Access, Exit, Profile};

use crate::util::{example, examples_dir, isolate_as, require, tresor};

/// Whether ptrace works here; panics under CI=true if it does not.
fn ptrace_ok() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = tresor()
            .args(["profile", "--out"])
            .arg(dir.path().join("p.json"))
            .arg("--")
            .arg(example("profile_baseline"))
            .output()
            .unwrap();
        if out.status.success() {
            return true;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let refused = err.contains("ptrace was refused") || err.contains("seccomp");
        assert!(refused, "tresor profile cannot trace here: {err}");
        require(
            false,
            &format!("ptrace and seccomp for tresor profile ({})", err.trim()),
        )
    })
}

/// Hang guard for the waits below (never a timing assertion).
const HANG_GUARD: Duration = Duration::from_secs(30);

/// Polls `done` until it holds; fails the test after [`HANG_GUARD`].
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < HANG_GUARD,
            "hang guard: no {what} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(10)); // poll of a hang-guarded wait
    }
}

/// Waits for `child` to exit; after [`HANG_GUARD`] it is killed and the
/// test fails.
fn wait_guarded(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() >= HANG_GUARD {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hang guard: tresor profile did not end within 30 s (killed)");
        }
        std::thread::sleep(Duration::from_millis(10)); // poll of a hang-guarded wait
    }
}

/// The state letter of a task in /proc (`R`, `S`, `T`, `t`, `Z`, …), or
/// `None` when it is gone.
fn proc_state(stat_path: &str) -> Option<char> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// Stopped: by job control (`T`) or in a ptrace stop (`t`).
fn is_stopped(pid: i32) -> bool {
    matches!(proc_state(&format!("/proc/{pid}/stat")), Some('T' | 't'))
}

/// Every thread of `pid` blocked (state `S`, e.g. in waitpid).
fn all_blocked(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks
        .filter_map(|t| t.ok())
        .all(|t| proc_state(&format!("{}/stat", t.path().display())) == Some('S'))
}

/// Whether the in-kernel recorder runs here (root, BPF with BTF, raw
/// tracepoints); panics under CI=true if it does not.
fn bpf_ok() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = tresor()
            .args(["profile", "--recorder", "bpf", "--out"])
            .arg(dir.path().join("p.json"))
            .arg("--")
            .arg(example("profile_baseline"))
            .output()
            .unwrap();
        if out.status.success() {
            return true;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("in-kernel recorder cannot run"),
            "tresor profile --recorder bpf failed otherwise: {err}"
        );
        require(
            false,
            &format!("the in-kernel recorder of tresor profile ({})", err.trim()),
        )
    })
}

macro_rules! require_bpf {
    () => {
        if !ptrace_ok() || !bpf_ok() {
            return;
        }
    };
}

macro_rules! require_ptrace {
    () => {
        if !ptrace_ok() {
            return;
        }
    };
}

struct Run {
    out: Output,
    profile: Profile,
    _dir: tempfile::TempDir,
}

/// `tresor profile --out TMP/p.json EXTRA… -- PROGRAM ARGS…`
fn profile_run(extra: &[&str], program: &Path, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.json");
    let out = tresor()
        .args(["profile", "--out"])
        .arg(&path)
        // These tests are of the profiler, not of its view: the test's
        // temporary files are the caller's.
        .arg("--writable")
        .arg(std::env::temp_dir())
        .args(extra)
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let profile = Profile::load(&path).unwrap_or_else(|e| {
        panic!(
            "no profile written ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Run {
        out,
        profile,
        _dir: dir,
    }
}

fn baseline() -> &'static Profile {
    static B: OnceLock<Profile> = OnceLock::new();
    B.get_or_init(|| {
        let r = profile_run(&[], &example("profile_baseline"), &[]);
        assert!(r.out.status.success());
        r.profile
    })
}

fn used(p: &Profile) -> BTreeSet<String> {
    p.syscalls
        .iter()
        .filter(|(_, e)| e.count > 0)
        .map(|(n, _)| n.clone())
        .collect()
}

/// The syscalls `p` used beyond the baseline must be `must` plus any of
/// `may` (timing-dependent ones), and nothing else.
fn assert_syscalls(p: &Profile, must: &[&str], may: &[&str]) {
    let base = used(baseline());
    let extra: BTreeSet<String> = used(p).difference(&base).cloned().collect();
    let must: BTreeSet<String> = must.iter().map(|s| s.to_string()).collect();
    let may: BTreeSet<String> = may.iter().map(|s| s.to_string()).collect();
    let missing: Vec<_> = must.difference(&extra).collect();
    let unexpected: Vec<_> = extra
        .iter()
        .filter(|s| !must.contains(*s) && !may.contains(*s))
        .collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "missing {missing:?}, unexpected {unexpected:?} (beyond baseline {base:?})"
    );
    // Every program does at least this, baseline or not; one that ended by
    // itself (not by a signal) called exit_group.
    let seen = |s: &str| p.syscalls.get(s).map_or(0, |e| e.count);
    for s in ["execve", "mmap"] {
        assert!(seen(s) > 0, "{s} not seen");
    }
    if let Some(Exit::Code(_)) = p.exit {
        assert!(seen("exit_group") > 0, "exited, but exit_group not seen");
    }
}

/// Paths outside the baseline's directories.
fn own_paths(p: &Profile) -> Vec<(String, String, Access)> {
    let base = &baseline().paths;
    let mut v = Vec::new();
    for (dir, d) in &p.paths {
        for (name, a) in &d.files {
            let in_base = base.get(dir).is_some_and(|b| b.files.contains_key(name));
            if !in_base && dir != examples_dir().to_str().unwrap() {
                v.push((dir.clone(), name.clone(), *a));
            }
        }
    }
    v
}

fn access(s: &str) -> Access {
    Access {
        read: s.contains('r'),
        write: s.contains('w'),
        exec: s.contains('x'),
    }
}

fn arg_values(p: &Profile, syscall: &str, arg: &str) -> BTreeSet<u64> {
    p.syscalls
        .get(syscall)
        .map(|e| e.args.iter().filter_map(|m| m.get(arg).copied()).collect())
        .unwrap_or_default()
}

#[test]
fn baseline_is_small_complete_and_sorted() {
    require_ptrace!();
    let b = baseline();
    assert!(b.complete);
    assert_eq!(b.exit, Some(Exit::Code(0)));
    assert_eq!(b.arch, std::env::consts::ARCH);
    assert_eq!(b.processes, 1);
    assert_eq!(b.threads, 0);
    assert!(!b.network);
    assert!(!b.write_exec_memory);
    let n = used(b).len();
    assert!(
        (10..=40).contains(&n),
        "{n} start-up syscalls: {:?}",
        used(b)
    );
    // The program and the dynamic loader the kernel mapped are recorded.
    let prog = example("profile_baseline");
    assert!(b.execs.contains(prog.to_str().unwrap()));
    let dir = &b.paths[prog.parent().unwrap().to_str().unwrap()];
    assert_eq!(dir.files["profile_baseline"], access("rx"));
    assert!(b
        .paths
        .values()
        .any(|d| d.files.keys().any(|f| f.starts_with("ld-linux"))));
    // Always-added syscalls carry their reason.
    for s in ["rt_sigreturn", "restart_syscall", "exit", "clock_gettime"] {
        assert!(b.syscalls[s].added.is_some(), "{s}");
    }
    assert!(!b.syscalls.contains_key("clone3"));
}

#[test]
fn files_exact_syscalls_and_paths() {
    require_ptrace!();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    let output = dir.path().join("out.txt");
    std::fs::write(&input, "hello\n").unwrap();
    let r = profile_run(
        &[],
        &example("profile_files"),
        &[input.to_str().unwrap(), output.to_str().unwrap()],
    );
    assert!(r.out.status.success(), "{:?}", r.out);
    assert_eq!(std::fs::read_to_string(&output).unwrap(), "6\n");
    // std::fs::read asks statx for a size hint; writing the result needs write.
    assert_syscalls(&r.profile, &["statx", "write"], &[]);
    let d = dir.path().to_str().unwrap().to_string();
    assert_eq!(
        own_paths(&r.profile),
        vec![
            (d.clone(), "in.txt".into(), access("r")),
            (d.clone(), "out.txt".into(), access("w")),
        ]
    );
    assert_eq!(r.profile.paths[&d].access, access("rw"));
    assert!(r.profile.syscalls["openat"].count >= 2);
}

#[test]
fn threads_are_followed() {
    require_ptrace!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let r = profile_run(&[], &example("profile_threads"), &[d, "6"]);
    assert!(r.out.status.success(), "{:?}", r.out);
    assert_eq!(r.profile.threads, 6);
    assert_eq!(r.profile.processes, 1);
    // clone for the threads (clone3 is answered ENOSYS), rt_sigprocmask
    // around it, madvise when a thread's stack is released, write per
    // thread, exit when each thread ends; futex only if a join has to wait.
    assert_syscalls(
        &r.profile,
        &["clone", "rt_sigprocmask", "madvise", "write", "exit"],
        &["futex", "sched_yield", "munmap"],
    );
    let flags = arg_values(&r.profile, "clone", "flags");
    assert!(
        flags.iter().all(|f| f & libc::CLONE_THREAD as u64 != 0),
        "{flags:?}"
    );
    let files: Vec<_> = own_paths(&r.profile)
        .into_iter()
        .map(|(_, n, a)| (n, a))
        .collect();
    let want: Vec<_> = (0..6)
        .map(|i| (format!("thread-{i}"), access("w")))
        .collect();
    assert_eq!(files, want);
}

#[test]
fn fork_exec_children_followed_and_exit_code_passes() {
    require_ptrace!();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    let output = dir.path().join("out.txt");
    std::fs::write(&input, "abc").unwrap();
    let child = example("profile_files");
    let r = profile_run(
        &[],
        &example("profile_fork_exec"),
        &[
            "7",
            child.to_str().unwrap(),
            input.to_str().unwrap(),
            output.to_str().unwrap(),
        ],
    );
    assert_eq!(r.out.status.code(), Some(7), "{:?}", r.out);
    let p = &r.profile;
    assert!(p.complete, "a non-zero exit is a normal end");
    assert_eq!(p.exit, Some(Exit::Code(7)));
    assert_eq!(p.processes, 2);
    // Parent: spawn (vfork-style clone, signal mask), wait4. Child: statx, write.
    assert_syscalls(
        p,
        &["clone", "rt_sigprocmask", "wait4", "statx", "write"],
        &[],
    );
    let execs: Vec<_> = p.execs.iter().cloned().collect();
    assert_eq!(
        execs,
        vec![
            child.to_str().unwrap().to_string(),
            example("profile_fork_exec").to_str().unwrap().to_string()
        ]
    );
    let flags = arg_values(p, "clone", "flags");
    assert!(
        flags
            .iter()
            .all(|f| f & (libc::CLONE_VM | libc::CLONE_VFORK) as u64 != 0),
        "{flags:?}"
    );
    let names: Vec<_> = own_paths(p).into_iter().map(|(_, n, a)| (n, a)).collect();
    assert_eq!(
        names,
        vec![
            ("in.txt".into(), access("r")),
            ("out.txt".into(), access("w"))
        ]
    );
}

#[test]
fn socket_arguments_and_network() {
    require_ptrace!();
    let r = profile_run(&[], &example("profile_socket"), &[]);
    assert!(r.out.status.success(), "{:?}", r.out);
    let p = &r.profile;
    assert!(p.network);
    // std checks the pair's descriptor flags with fcntl(F_GETFD).
    assert_syscalls(p, &["socket", "bind", "socketpair", "fcntl"], &[]);
    let tuples = |s: &str| -> Vec<(u64, u64)> {
        p.syscalls[s]
            .args
            .iter()
            .map(|m| (m["domain"], m["type"]))
            .collect()
    };
    assert_eq!(
        tuples("socket"),
        vec![(libc::AF_INET as u64, libc::SOCK_DGRAM as u64)]
    );
    assert_eq!(
        tuples("socketpair"),
        vec![(libc::AF_UNIX as u64, libc::SOCK_STREAM as u64)]
    );
    assert_eq!(
        arg_values(p, "fcntl", "cmd"),
        BTreeSet::from([libc::F_GETFD as u64])
    );
    assert!(own_paths(p).is_empty(), "{:?}", own_paths(p));
}

#[test]
fn signal_death_is_reported_and_profile_incomplete() {
    require_ptrace!();
    let r = profile_run(&[], &example("profile_signal"), &[]);
    assert_eq!(r.out.status.code(), Some(128 + libc::SIGABRT));
    assert_eq!(r.out.stdout, b"about to abort\n", "stdout passes through");
    let err = String::from_utf8_lossy(&r.out.stderr);
    assert!(
        err.contains("killed by SIGABRT") && err.contains("INCOMPLETE"),
        "{err}"
    );
    let p = &r.profile;
    assert!(!p.complete);
    assert!(p.incomplete_reason.as_deref().unwrap().contains("SIGABRT"));
    assert_eq!(p.exit, Some(Exit::Signal("SIGABRT".into())));
    // println → write; abort → rt_sigprocmask, getpid, tgkill.
    assert_syscalls(p, &["write", "rt_sigprocmask", "getpid", "tgkill"], &[]);
    // The runner refuses it unless told otherwise.
    assert!(p.require_complete("p.json").is_err());
}

#[test]
fn stdin_and_stdout_pass_through() {
    require_ptrace!();
    let dir = tempfile::tempdir().unwrap();
    let mut child = tresor()
        .args(["profile", "--out"])
        .arg(dir.path().join("p.json"))
        .args(["--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut stdin = child.stdin.take().unwrap();
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &data).unwrap())
    };
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, data);
}

/// SIGKILL to `tresor profile --recorder RECORDER` while the profiled
/// program and its child hang: neither may outlive it (a service killed
/// during a profiling step kills its `tresor profile`).
fn a_killed_profiler_leaves_no_task(recorder: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut tp = tresor()
        .args(["profile", "--recorder", recorder, "--out"])
        .arg(dir.path().join("p.json"))
        .arg("--writable")
        .arg(dir.path())
        .arg("--")
        .arg(example("profile_tree"))
        .arg("hang")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // profile_tree prints its child's pid once the child runs.
    let out = tp.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(HANG_GUARD).unwrap_or_else(|_| {
        let _ = tp.kill();
        panic!("hang guard: profile_tree printed no pid within 30 s")
    });
    let grandchild: i32 = line.trim().parse().unwrap();
    // The program itself: tresor's child.
    let tp_pid = tp.id();
    let children = std::fs::read_to_string(format!("/proc/{tp_pid}/task/{tp_pid}/children"))
        .unwrap_or_default();
    let program: i32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("tresor profile has a child");
    let alive = |pid: i32| {
        !matches!(
            proc_state(&format!("/proc/{pid}/stat")),
            None | Some('Z' | 'X')
        )
    };
    assert!(alive(program) && alive(grandchild));
    tp.kill().unwrap();
    tp.wait().unwrap();
    wait_until(&format!("end of the program ({recorder})"), || {
        !alive(program)
    });
    wait_until(&format!("end of its child ({recorder})"), || {
        !alive(grandchild)
    });
}

#[test]
fn a_killed_in_kernel_recorder_takes_the_tree_along() {
    require_bpf!();
    a_killed_profiler_leaves_no_task("bpf");
}

#[test]
fn a_killed_ptrace_recorder_takes_the_tree_along() {
    require_ptrace!();
    a_killed_profiler_leaves_no_task("ptrace");
}

#[test]
fn timeout_kills_the_whole_tree() {
    require_ptrace!();
    // profile_tree hang: it and the child it starts each hang for 60 s;
    // exit 124 (not the program's 0) shows --timeout ended the run.
    let r = profile_run(&["--timeout", "1s"], &example("profile_tree"), &["hang"]);
    assert_eq!(r.out.status.code(), Some(124), "{:?}", r.out);
    let child: i32 = String::from_utf8_lossy(&r.out.stdout)
        .trim()
        .parse()
        .unwrap();
    // The grandchild must be gone (or a zombie awaiting reaping by init):
    // SIGKILL was sent; its end is read from /proc.
    wait_until("end of the grandchild", || {
        matches!(
            proc_state(&format!("/proc/{child}/stat")),
            None | Some('Z' | 'X')
        )
    });
    let p = &r.profile;
    assert!(!p.complete);
    assert!(p
        .incomplete_reason
        .as_deref()
        .unwrap()
        .contains("timed out after 1s"));
    let err = String::from_utf8_lossy(&r.out.stderr);
    assert!(err.contains("timed out"), "{err}");
}

#[test]
fn hundreds_of_children_are_followed() {
    require_ptrace!();
    let r = profile_run(&[], &example("profile_tree"), &["many", "300"]);
    assert!(r.out.status.success(), "{:?}", r.out);
    assert_eq!(r.profile.processes, 301);
    assert!(r.profile.complete);
    // spawn + wait, and current_exe reads /proc/self/exe.
    assert_syscalls(
        &r.profile,
        &["clone", "rt_sigprocmask", "wait4", "readlink"],
        &[],
    );
    assert!(r.profile.syscalls["exit_group"].count >= 301);
}

#[test]
fn too_many_tasks_kill_the_tree() {
    require_ptrace!();
    let r = profile_run(
        &["--max-tasks", "20"],
        &example("profile_tree"),
        &["many", "50", "30000"],
    );
    assert_eq!(r.out.status.code(), Some(125), "{:?}", r.out);
    let reason = r.profile.incomplete_reason.clone().unwrap();
    assert!(reason.contains("--max-tasks"), "{reason}");
}

#[test]
fn missing_or_non_executable_program_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("p.json");
    let run = |prog: &str| {
        tresor()
            .args(["profile", "--out"])
            .arg(&out_path)
            .args(["--", prog])
            .output()
            .unwrap()
    };
    let out = run("no-such-program-tresor-test");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"no-such-program-tresor-test\" not found"),
        "{err}"
    );
    let out = run("/nonexistent/prog");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file"));
    let plain = dir.path().join("data.txt");
    std::fs::write(&plain, "x").unwrap();
    let out = run(plain.to_str().unwrap());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not executable"), "{err}");
    assert!(
        !out_path.exists(),
        "no profile for a program that never ran"
    );
}

/// The child's set-up (namespaces, view) fails before the program runs —
/// for the in-kernel recorder while tresor is still loading it: a clear
/// error and no profile.
#[test]
fn a_failed_set_up_is_a_clear_error_with_either_recorder() {
    require_ptrace!();
    let mut recorders = vec!["ptrace"];
    if bpf_ok() {
        recorders.push("bpf");
    }
    for rec in recorders {
        let dir = tempfile::tempdir().unwrap();
        let out_path = dir.path().join("p.json");
        let out = tresor()
            .env("TRESOR_FAULT_PRELUDE", "1")
            .args(["profile", "--recorder", rec, "--out"])
            .arg(&out_path)
            .args(["--", "/bin/true"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{rec}: {err}");
        assert!(
            err.contains("entering the run's namespaces and view failed"),
            "{rec}: {err}"
        );
        assert!(
            !out_path.exists(),
            "{rec}: no profile for a run that never started"
        );
    }
}

#[test]
fn modes_syscalls_and_full() {
    require_ptrace!();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "x").unwrap();
    let output = dir.path().join("out.txt");
    let args = [input.to_str().unwrap(), output.to_str().unwrap()];

    let s = profile_run(&["--mode", "syscalls"], &example("profile_files"), &args);
    assert!(s.out.status.success());
    assert!(s.profile.paths.is_empty());
    assert!(s.profile.syscalls.values().all(|e| e.args.is_empty()));
    assert!(s.profile.syscalls["statx"].count > 0);

    let trace = dir.path().join("trace.txt");
    let f = profile_run(
        &["--mode", "full", "--trace", trace.to_str().unwrap()],
        &example("profile_files"),
        &args,
    );
    assert!(f.out.status.success());
    let text = std::fs::read_to_string(&trace).unwrap();
    let total: u64 = f.profile.syscalls.values().map(|e| e.count).sum();
    // One line per call, except the first execve (before tracing starts).
    assert_eq!(text.lines().count() as u64, total - 1);
    assert!(text
        .lines()
        .any(|l| l.contains(" openat(") && l.contains(&format!("{:?}", input.to_str().unwrap()))));
    // Same profile content as the default mode.
    let a = profile_run(&[], &example("profile_files"), &args);
    assert_eq!(a.profile.paths, f.profile.paths);
    assert_eq!(used(&a.profile), used(&f.profile));
}

#[test]
fn json_round_trip_and_show() {
    require_ptrace!();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.json");
    let out = tresor()
        .args(["profile", "--out"])
        .arg(&path)
        .arg("--")
        .arg(example("profile_socket"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = std::fs::read_to_string(&path).unwrap();
    let p = Profile::from_json(&text, "p.json").unwrap();
    assert_eq!(p.to_json(), text, "serialisation is canonical");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["format"], "tresor-profile");
    assert_eq!(v["version"], 1);
    assert_eq!(v["syscalls"]["socket"]["nr"], libc::SYS_socket);
    let sha = v["program"]["sha256"].as_str().unwrap();
    assert_eq!(sha.len(), 64);

    let show = tresor()
        .args(["profile", "show"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(show.status.success());
    let table = String::from_utf8_lossy(&show.stdout);
    assert!(table.contains("domain=AF_INET type=SOCK_DGRAM"), "{table}");
    assert!(table.contains("network yes"), "{table}");
    let json = tresor()
        .args(["profile", "show", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&json.stdout), text);

    std::fs::write(&path, text.replace("\"version\": 1", "\"version\": 9")).unwrap();
    let bad = tresor()
        .args(["profile", "show"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("upgrade tresor"));
}

#[test]
fn merge_is_a_union_and_refuses_another_binary() {
    require_ptrace!();
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    std::fs::write(d("a.txt"), "a").unwrap();
    std::fs::write(d("b.txt"), "b").unwrap();
    let record = |out: &str, prog: &Path, args: &[&Path]| {
        let st = tresor()
            .args(["profile", "--out"])
            .arg(d(out))
            .arg("--writable")
            .arg(dir.path())
            .arg("--")
            .arg(prog)
            .args(args)
            .output()
            .unwrap();
        assert!(st.status.success(), "{st:?}");
    };
    let files = example("profile_files");
    record("1.json", &files, &[&d("a.txt"), &d("a.out")]);
    record("2.json", &files, &[&d("b.txt"), &d("b.out")]);
    record("3.json", &example("profile_socket"), &[]);

    let merge = |inputs: &[&str], out: &str, force: bool| {
        let mut c = tresor();
        c.args(["profile", "merge"]);
        for i in inputs {
            c.arg(d(i));
        }
        c.arg("-o").arg(d(out));
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    let out = merge(&["1.json", "2.json"], "m.json", false);
    assert!(out.status.success(), "{out:?}");
    let one = Profile::load(&d("1.json")).unwrap();
    let two = Profile::load(&d("2.json")).unwrap();
    let m = Profile::load(&d("m.json")).unwrap();
    assert_eq!(m.runs, 2);
    assert_eq!(
        m.syscalls["read"].count,
        one.syscalls["read"].count + two.syscalls["read"].count
    );
    let files = &m.paths[dir.path().to_str().unwrap()].files;
    let names: Vec<_> = files.keys().cloned().collect();
    assert_eq!(names, ["a.out", "a.txt", "b.out", "b.txt"]);
    assert_eq!(used(&m), used(&one).union(&used(&two)).cloned().collect());

    let refused = merge(&["1.json", "3.json"], "x.json", false);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("different programs") && err.contains("--force"),
        "{err}"
    );
    assert!(!d("x.json").exists());

    let forced = merge(&["1.json", "3.json"], "x.json", true);
    assert!(forced.status.success());
    let x = Profile::load(&d("x.json")).unwrap();
    assert!(x.network);
    assert!(x.notes.iter().any(|n| n.contains("--force")));
}

#[test]
fn only_successful_execs_are_granted() {
    require_ptrace!();
    // execvp tries each $PATH entry; the misses must not become grants.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let out = tresor()
        .args(["profile", "--out"])
        .arg(dir.path().join("p.json"))
        .arg("--")
        .arg(example("profile_fork_exec"))
        .args(["0", "true"])
        .env("PATH", format!("{}:/usr/bin:/bin", missing.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let p = Profile::load(&dir.path().join("p.json")).unwrap();
    assert!(p.execs.contains("/usr/bin/true"), "{:?}", p.execs);
    assert!(
        !p.paths
            .keys()
            .any(|d| d.starts_with(missing.to_str().unwrap())),
        "{:?}",
        p.paths.keys()
    );
    assert_eq!(p.paths["/usr/bin"].files["true"], access("rx"));
}

#[test]
fn sigterm_is_passed_on_and_group_stop_is_kept() {
    require_ptrace!();
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();

    // SIGTERM to tresor reaches the program; the profile says so. The
    // program says "ready" once it runs (traced, tresor's handlers in
    // place), then blocks reading the stdin the test holds open.
    let mut child = tresor()
        .args(["profile", "--out"])
        .arg(dir.path().join("t.json"))
        .args(["--", "sh", "-c", "echo ready; exec cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let tresor_pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(tresor_pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait_guarded(&mut child);
    drop(stdin);
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status}");
    let p = Profile::load(&dir.path().join("t.json")).unwrap();
    assert!(!p.complete);
    assert!(p.incomplete_reason.unwrap().contains("SIGTERM"));

    // A program that stops itself stays stopped until SIGCONT.
    let mut child = tresor()
        .args(["profile", "--out"])
        .arg(dir.path().join("s.json"))
        .args(["--", "sh", "-c", "echo $$; kill -STOP $$; echo resumed"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let tresor_pid = child.id() as i32;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let sh: i32 = lines.next().unwrap().unwrap().trim().parse().unwrap();
    // Readiness from /proc: the shell stopped while tresor is blocked (back in
    // waitpid, having handled the stop), and the shell is still stopped.
    // A tracer that resumed a group-stop would have let it run on.
    wait_until("group-stop of the shell", || {
        let ended = child.try_wait().unwrap();
        assert!(ended.is_none(), "must wait while stopped, ended: {ended:?}");
        is_stopped(sh) && all_blocked(tresor_pid) && is_stopped(sh)
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "must wait while stopped"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sh),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "resumed");
    assert!(wait_guarded(&mut child).success());
}

#[test]
fn programs_the_kernel_cannot_exec_are_clear_errors() {
    require_ptrace!();
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let make = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    };
    let run = |prog: &Path| {
        tresor()
            .args(["profile", "--out"])
            .arg(dir.path().join("p.json"))
            .arg("--")
            .arg(prog)
            .output()
            .unwrap()
    };
    let out = run(&make("script", "#!/no/such/interp -x\n"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("interpreter /no/such/interp does not exist"),
        "{err}"
    );
    let out = run(&make("garbage", "this is not a program"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a program this system can run"), "{err}");
    assert!(!dir.path().join("p.json").exists());
}

/// Syscalls a program makes or not depending on timing (a join that has
/// to wait, a thread's stack released before or after): a run may or may
/// not have them, under either recorder (`threads_are_followed` lists them
/// as optional too).
const TIMING_DEPENDENT: &[&str] = &["futex", "sched_yield", "munmap"];

/// What both recorders must record alike: the whole profile but the
/// counts (timing-dependent: a futex when a join has to wait, the glibc
/// arena of a thread), the calls of [`TIMING_DEPENDENT`] and the
/// recorder's name.
fn content(p: &Profile) -> serde_json::Value {
    let mut v = serde_json::to_value(p).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("recorder");
    let calls = o["syscalls"].as_object_mut().unwrap();
    for name in TIMING_DEPENDENT {
        calls.remove(*name);
    }
    for e in calls.values_mut() {
        e.as_object_mut().unwrap().remove("count");
    }
    v
}

/// The top-level fields (and syscalls) where two contents differ.
fn differences(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    let (a, b) = (a.as_object().unwrap(), b.as_object().unwrap());
    let mut out = Vec::new();
    for (k, va) in a {
        let vb = &b[k];
        if va == vb {
            continue;
        }
        if let (Some(ma), Some(mb)) = (va.as_object(), vb.as_object()) {
            for kk in ma.keys().chain(mb.keys()) {
                if ma.get(kk) != mb.get(kk) {
                    out.push(format!("{k}.{kk}: {:?} vs {:?}", ma.get(kk), mb.get(kk)));
                }
            }
        } else {
            out.push(format!("{k}: {va} vs {vb}"));
        }
    }
    out.dedup();
    out
}

#[test]
fn recorders_agree_on_every_example() {
    require_bpf!();
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    std::fs::write(d("in.txt"), "abc").unwrap();
    let made = std::process::Command::new(example("bench_small_files"))
        .args(["create", &d("small"), "100"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let files = example("profile_files");
    let files = files.to_str().unwrap();
    let ex = |n: &str| example(n).to_str().unwrap().to_string();
    // Every example, and a shell for plain fork, relative paths (cwd and
    // a dirfd: ls reads `.` through openat) and a background job.
    let cases: Vec<(String, Vec<String>)> = vec![
        (ex("profile_baseline"), vec![]),
        (ex("profile_files"), vec![d("in.txt"), d("out.txt")]),
        (ex("profile_threads"), vec![d(""), "6".into()]),
        (
            ex("profile_fork_exec"),
            vec!["7".into(), files.into(), d("in.txt"), d("out2.txt")],
        ),
        (ex("profile_socket"), vec![]),
        (ex("profile_signal"), vec![]),
        (ex("profile_tree"), vec!["many".into(), "300".into()]),
        // More files in one directory than a profile lists (32).
        (ex("bench_small_files"), vec!["scan".into(), d("small")]),
        (
            "/bin/sh".into(),
            vec![
                "-c".into(),
                "cd /etc && cat ./hostname >/dev/null; (cat passwd >/dev/null); ls >/dev/null & wait"
                    .into(),
            ],
        ),
    ];
    for (program, args) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let b = profile_run(&["--recorder", "bpf"], Path::new(program), &args);
        let p = profile_run(&["--recorder", "ptrace"], Path::new(program), &args);
        assert_eq!(b.profile.recorder.as_deref(), Some("bpf"));
        assert_eq!(p.profile.recorder.as_deref(), Some("ptrace"));
        assert_eq!(b.out.status.code(), p.out.status.code(), "{program}");
        let diff = differences(&content(&b.profile), &content(&p.profile));
        assert!(
            diff.is_empty(),
            "{program} {args:?}: the recorders differ (bpf vs ptrace):\n{}",
            diff.join("\n")
        );
        assert!(used(&b.profile).contains("execve"), "{program}");
    }
}

/// The in-kernel recorder relocates against its minimal BTF (a field read
/// by profile.bpf.c but missing from btf::FIELDS would fall back to the
/// whole kernel BTF and cost ~20 ms a start); with a structure left out of
/// the minimal BTF (debug-build fault hook) it falls back and records the
/// same profile.
#[test]
fn the_in_kernel_recorder_loads_against_a_minimal_btf_or_falls_back() {
    require_bpf!();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "abc").unwrap();
    let program = example("profile_files");
    let run = |fault: Option<&str>, out: &str| {
        let mut cmd = tresor();
        cmd.env("TRESOR_LOG", "tresor=debug")
            .args(["profile", "--recorder", "bpf", "--out"])
            .arg(dir.path().join(out))
            .arg("--writable")
            .arg(std::env::temp_dir())
            .arg("--")
            .arg(&program)
            .arg(&input)
            .arg(dir.path().join("out.txt"));
        if let Some(s) = fault {
            cmd.env("TRESOR_FAULT_MINIMAL_BTF_WITHOUT", s);
        }
        let o = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{err}");
        let p: Profile =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(out)).unwrap()).unwrap();
        (err, p)
    };
    let (err, minimal) = run(None, "minimal.json");
    assert!(err.contains("loaded and attached (minimal BTF)"), "{err}");
    assert!(!err.contains("whole kernel BTF"), "{err}");
    let (err, whole) = run(Some("dentry"), "whole.json");
    assert!(err.contains("minimal BTF did not suffice"), "{err}");
    assert!(
        err.contains("loaded and attached (whole kernel BTF)"),
        "{err}"
    );
    let diff = differences(&content(&minimal), &content(&whole));
    assert!(diff.is_empty(), "{}", diff.join("\n"));
    assert_eq!(minimal.recorder.as_deref(), Some("bpf"));
    assert_eq!(whole.recorder.as_deref(), Some("bpf"));
}

#[test]
fn recorders_follow_fork_clone_vfork_and_exec() {
    require_bpf!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // Threads (clone with CLONE_THREAD).
    let r = profile_run(
        &["--recorder", "bpf"],
        &example("profile_threads"),
        &[d, "6"],
    );
    assert_eq!((r.profile.processes, r.profile.threads), (1, 6));
    // vfork-style spawn (clone CLONE_VM|CLONE_VFORK) and exec.
    let r = profile_run(
        &["--recorder", "bpf"],
        &example("profile_fork_exec"),
        &["0", "true"],
    );
    assert_eq!(r.profile.processes, 2);
    assert!(
        r.profile.execs.contains("/usr/bin/true"),
        "{:?}",
        r.profile.execs
    );
    let flags = arg_values(&r.profile, "clone", "flags");
    assert!(
        flags.iter().all(|f| f & libc::CLONE_VFORK as u64 != 0),
        "{flags:?}"
    );
    // Plain fork (a subshell), a fork of the fork, and execs in both.
    let r = profile_run(
        &["--recorder", "bpf"],
        Path::new("/bin/sh"),
        &["-c", "(/bin/true; (/bin/echo x >/dev/null)); /bin/true"],
    );
    assert!(r.out.status.success(), "{:?}", r.out);
    assert!(r.profile.processes >= 4, "{}", r.profile.processes);
    assert!(
        r.profile.execs.contains("/bin/echo"),
        "{:?}",
        r.profile.execs
    );
    assert!(
        r.profile.execs.contains("/bin/true"),
        "{:?}",
        r.profile.execs
    );
    // The kernel's own opens at exec: the program's ELF interpreter.
    assert!(
        r.profile.paths.keys().any(|k| k.contains("lib")),
        "{:?}",
        r.profile.paths.keys()
    );
}

#[test]
fn unprivileged_profile_falls_back_to_ptrace() {
    require_ptrace!();
    const NOBODY: u32 = 65534;
    let dir = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let run = |extra: &[&str]| {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_tresor"));
        isolate_as(&mut c, NOBODY);
        c.args(["profile", "--out"])
            .arg(dir.path().join("p.json"))
            .arg("--writable")
            .arg(dir.path())
            .args(extra)
            .arg("--")
            .arg(example("profile_files"))
            .arg(dir.path().join("in.txt"))
            .arg(dir.path().join("out.txt"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    std::fs::write(dir.path().join("in.txt"), "x").unwrap();
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && err.contains("namespace") {
        // The view needs unprivileged user namespaces.
        require(false, &format!("unprivileged user namespaces ({err})"));
        return;
    }
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("recording with ptrace") && err.contains("needs root"),
        "{err}"
    );
    let p = Profile::load(&dir.path().join("p.json")).unwrap();
    assert_eq!(p.recorder.as_deref(), Some("ptrace"));
    assert!(p.complete);
    assert!(used(&p).contains("statx"));
    // Asked for explicitly, the in-kernel recorder is a clear error.
    let out = run(&["--recorder", "bpf"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in-kernel recorder cannot run") && err.contains("--recorder ptrace"),
        "{err}"
    );
}

#[test]
fn recorders_survive_bad_input_and_mark_the_profile_incomplete() {
    require_bpf!();
    // Hundreds of children, one killed by a signal, and one still running
    // at --timeout: the profile is written, incomplete, the tree is gone.
    let script = "for i in $(seq 300); do /bin/true & done; wait; \
                  sh -c 'kill -KILL $$'; echo killed $?; \
                  /bin/sleep 60 & echo $!; wait";
    for rec in ["bpf", "ptrace"] {
        // 15 s: the --timeout under test, with room for 300 fork+execs
        // under ptrace on a loaded machine before the sleeper starts.
        let r = profile_run(
            &["--recorder", rec, "--timeout", "15s"],
            Path::new("/bin/sh"),
            &["-c", script],
        );
        assert_eq!(r.out.status.code(), Some(124), "{rec}: {:?}", r.out);
        let stdout = String::from_utf8_lossy(&r.out.stdout);
        let mut lines = stdout.lines();
        assert_eq!(lines.next(), Some("killed 137"), "{rec}: {stdout}");
        let sleeper: i32 = lines.next().unwrap().trim().parse().unwrap();
        wait_until("end of the sleeper", || {
            matches!(
                proc_state(&format!("/proc/{sleeper}/stat")),
                None | Some('Z' | 'X')
            )
        });
        let p = &r.profile;
        assert_eq!(p.recorder.as_deref(), Some(rec));
        assert!(!p.complete);
        assert!(
            p.incomplete_reason
                .as_deref()
                .unwrap()
                .contains("timed out"),
            "{rec}: {:?}",
            p.incomplete_reason
        );
        assert!(p.processes >= 302, "{rec}: {}", p.processes);
        for prog in ["/bin/true", "/bin/sleep", "/bin/sh"] {
            assert!(p.execs.contains(prog), "{rec}: {:?}", p.execs);
        }
        assert!(used(p).contains("kill"), "{rec}");
        let err = String::from_utf8_lossy(&r.out.stderr);
        assert!(err.contains("INCOMPLETE"), "{rec}: {err}");
    }
}

#[test]
fn recorders_see_a_path_on_a_page_not_yet_faulted_in() {
    require_bpf!();
    // The path lives only in a file the program maps and never touches:
    // at the call's entry the page is not in memory. The in-kernel
    // recorder reads it again at the thread's next call.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target.txt");
    std::fs::write(&target, "x").unwrap();
    let namefile = dir.path().join("name");
    let mut name = target.to_str().unwrap().as_bytes().to_vec();
    name.push(0);
    std::fs::write(&namefile, &name).unwrap();
    for rec in ["bpf", "ptrace"] {
        let r = profile_run(
            &["--recorder", rec],
            &example("profile_unfaulted"),
            &[namefile.to_str().unwrap()],
        );
        assert_eq!(r.out.stdout, b"opened\n", "{rec}: {:?}", r.out);
        let p = &r.profile;
        let files = &p.paths[dir.path().to_str().unwrap()].files;
        assert_eq!(
            files.get("target.txt"),
            Some(&access("r")),
            "{rec}: {files:?}"
        );
        assert!(
            !p.notes.iter().any(|n| n.contains("could not be read")),
            "{rec}: {:?}",
            p.notes
        );
    }
}

#[test]
fn what_the_in_kernel_recorder_cannot_keep_is_reported() {
    require_bpf!();
    // A path argument longer than the recorder keeps (463 bytes): ptrace
    // records it, the in-kernel recorder counts it and marks the profile
    // incomplete — never a silent drop.
    let long = format!("/tmp/{}x", "d/".repeat(300));
    let script = format!("cat {long} 2>/dev/null; true");
    let b = profile_run(
        &["--recorder", "bpf"],
        Path::new("/bin/sh"),
        &["-c", &script],
    );
    assert!(b.out.status.success(), "{:?}", b.out);
    assert!(!b.profile.complete);
    let reason = b.profile.incomplete_reason.clone().unwrap();
    assert!(
        reason.contains("path arguments longer than the recorder keeps"),
        "{reason}"
    );
    let p = profile_run(
        &["--recorder", "ptrace"],
        Path::new("/bin/sh"),
        &["-c", &script],
    );
    assert!(p.profile.complete);
    let dir = &long[..long.rfind('/').unwrap()];
    assert!(
        p.profile.paths.contains_key(dir),
        "{:?}",
        p.profile.paths.keys()
    );
}

/// New paths reach tresor through a buffer it drains every 20 ms. When a
/// program opens more new paths between two drains than the buffer holds
/// (here: a buffer shrunk to one page by a debug-build fault hook, and
/// 2,000 files opened), the paths that did not fit are counted and the
/// profile is marked incomplete — and what was recorded is still true.
#[test]
fn a_full_path_buffer_is_counted_never_silent() {
    require_bpf!();
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    let made = std::process::Command::new(example("bench_small_files"))
        .arg("create")
        .arg(&small)
        .arg("2000")
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let small = small.to_str().unwrap();
    let out = dir.path().join("p.json");
    let o = tresor()
        .env("TRESOR_FAULT_PATH_BUFFER", "4096")
        .args(["profile", "--recorder", "bpf", "--out"])
        .arg(&out)
        .arg("--writable")
        .arg(std::env::temp_dir())
        .arg("--")
        .arg(example("bench_small_files"))
        .args(["scan", small])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let b = Profile::load(&out).unwrap();
    assert!(!b.complete, "2,000 new paths fit into one page?");
    let reason = b.incomplete_reason.clone().unwrap();
    assert!(reason.contains("their buffer was full"), "{reason}");
    // Whatever was recorded is also in the ptrace recorder's profile.
    let p = profile_run(
        &["--recorder", "ptrace"],
        &example("bench_small_files"),
        &["scan", small],
    );
    for (dir, entry) in &b.paths {
        let theirs = p
            .profile
            .paths
            .get(dir)
            .unwrap_or_else(|| panic!("{dir} recorded by bpf only"));
        assert_eq!(theirs.access.union(entry.access), theirs.access, "{dir}");
    }
}

/// More processes alive at once than `tracked` has room for (shrunk by a
/// debug-build hook; at its real size the task limit stops a tree first;
/// each child lives 1.5 s, long after the last has started):
/// the ones left out are counted and the profile says it is incomplete —
/// never a complete-looking profile that misses their syscalls.
#[test]
fn a_full_task_map_is_counted_never_silent() {
    require_bpf!();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.json");
    // 31 processes alive at once, with room for `room` of them.
    let profile = |room: Option<&str>| {
        let mut c = tresor();
        if let Some(n) = room {
            c.env("TRESOR_FAULT_TRACKED", n);
        }
        let o = c
            .args(["profile", "--recorder", "bpf", "--out"])
            .arg(&out)
            .arg("--")
            .arg(example("profile_tree"))
            .args(["many", "30", "1500"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        Profile::load(&out).unwrap()
    };
    let b = profile(Some("8"));
    assert!(!b.complete, "31 processes fit into room for 8?");
    let reason = b.incomplete_reason.clone().unwrap();
    assert!(reason.contains("task map full"), "{reason}");
    // With room for all of them, the same tree is complete.
    let b = profile(None);
    assert!(b.complete, "{:?}", b.incomplete_reason);
    assert_eq!(b.processes, 31);
}

/// The 32-bit ABI (`int 0x80`) is told apart by both recorders: listed
/// under `foreign_syscalls`, never counted as the native syscall of the
/// same number (which a policy would then allow).
#[cfg(target_arch = "x86_64")]
#[test]
fn recorders_tell_the_32_bit_abi_apart() {
    require_bpf!();
    for rec in ["bpf", "ptrace"] {
        let r = profile_run(&["--recorder", rec], &example("policy_probe"), &["int80"]);
        let p = &r.profile;
        // i386 getpid is 20; the native 20 is writev, which the probe
        // never calls.
        assert_eq!(
            p.foreign_syscalls.get("0x40000003:20"),
            Some(&1),
            "{rec}: {:?} ({:?})",
            p.foreign_syscalls,
            r.out
        );
        assert!(!used(p).contains("writev"), "{rec}: {:?}", used(p));
    }
}
