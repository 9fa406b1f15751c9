//! The profiler: runs a program under ptrace and aggregates what it uses.
//!
//! One stop per syscall: the child installs a seccomp filter answering
//! `SECCOMP_RET_TRACE` for everything (as `strace --seccomp-bpf` does), so
//! the tracer sees each syscall once at entry, instead of twice with
//! `PTRACE_SYSCALL`. Arguments and tracee memory are read only for the few
//! syscalls whose arguments decide what is safe.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, BufWriter, IoSliceMut, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

use super::conditions::ProfileView;
use super::profile::{describe_args, Access, Exit, Mode, Profile, Program};
use super::sys::{self, ChildStage, SignalGuard, SyscallInfo};
use super::syscalls::Arch;

/// Exit status used when the run hit `--timeout` (as timeout(1) does).
pub const EXIT_TIMEOUT: u8 = 124;
/// Exit status when tresor itself stopped the run (task limit, tracer error).
pub const EXIT_ABORTED: u8 = 125;
/// Default limit on processes and threads alive at once.
pub const DEFAULT_MAX_TASKS: usize = 4096;

/// What to record and how long to let the program run.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    pub mode: Mode,
    /// Per-call trace file (only with [`Mode::Full`]).
    pub trace: Option<PathBuf>,
    pub timeout: Option<Duration>,
    /// Processes and threads alive at once before the tree is killed.
    pub max_tasks: usize,
    /// Record under the run's conditions with this view (docs/PROFILE.md);
    /// `None`: with the caller's environment, working directory and
    /// filesystem.
    pub view: Option<ProfileView>,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            mode: Mode::Args,
            trace: None,
            timeout: None,
            max_tasks: DEFAULT_MAX_TASKS,
            view: None,
        }
    }
}

/// Why profiling could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("program {0:?} not found (not a path and not in $PATH)")]
    NotFound(OsString),
    #[error("cannot run {path}: {reason}")]
    NotExecutable { path: String, reason: String },
    #[error("tresor profile runs only on x86_64 and aarch64")]
    UnsupportedArch,
    #[error("ptrace was refused ({0}); tresor profile needs to trace its own child: allow ptrace (container: CAP_SYS_PTRACE or a seccomp profile permitting ptrace; kernel.yama.ptrace_scope <= 1)")]
    PtraceRefused(io::Error),
    #[error("cannot install the tracing seccomp filter ({0}); the kernel needs CONFIG_SECCOMP_FILTER (Linux 3.5+), and a container must allow seccomp()")]
    Seccomp(io::Error),
    #[error("this kernel cannot report syscalls to the tracer ({0}); tresor profile needs Linux 5.3 or newer")]
    KernelTooOld(io::Error),
    #[error("cannot start {path}: {error}")]
    Spawn { path: String, error: io::Error },
    #[error("cannot write the trace file {path}: {error}")]
    TraceFile { path: String, error: io::Error },
    #[error("cannot record under the run's conditions: {0}")]
    View(String),
    #[error("{0}")]
    Recorder(String),
    #[error("tracing failed: {0}")]
    Io(io::Error),
}

// Not `#[from]`: that would also make the error its source, and `{:#}`
// would print it twice.
impl From<io::Error> for TraceError {
    fn from(e: io::Error) -> Self {
        TraceError::Io(e)
    }
}

/// How the profiled run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// The program exited with this status.
    Exited(i32),
    /// The program was killed by this signal.
    Signaled(i32),
    /// `--timeout` passed; the whole tree was killed.
    TimedOut(Duration),
    /// tresor stopped the run (reason in the profile).
    Aborted,
}

impl RunEnd {
    /// tresor's own exit status: the program's, `128 + signal` after a
    /// signal (as shells report it), 124 after a timeout, 125 when aborted.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunEnd::Exited(c) => (*c & 0xff) as u8,
            RunEnd::Signaled(s) => 128u8.saturating_add((*s & 0x7f) as u8),
            RunEnd::TimedOut(_) => EXIT_TIMEOUT,
            RunEnd::Aborted => EXIT_ABORTED,
        }
    }
}

/// The result of a profiling run: the profile (possibly incomplete) and how
/// the program ended.
#[derive(Debug)]
pub struct Outcome {
    pub profile: Profile,
    pub end: RunEnd,
}

/// Finds the executable like execvp would, with a clear error if missing.
pub fn resolve_program(program: &OsStr) -> Result<PathBuf, TraceError> {
    if program.is_empty() {
        return Err(TraceError::NotFound(program.to_owned()));
    }
    let candidate = if program.as_bytes().contains(&b'/') {
        let p = PathBuf::from(program);
        if !p.exists() {
            return Err(TraceError::NotExecutable {
                path: p.display().to_string(),
                reason: "no such file".into(),
            });
        }
        p
    } else {
        let path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        let found = std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| p.is_file() && is_executable(p));
        found.ok_or_else(|| TraceError::NotFound(program.to_owned()))?
    };
    let shown = candidate.display().to_string();
    let meta = std::fs::metadata(&candidate).map_err(|e| TraceError::NotExecutable {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    if meta.is_dir() {
        return Err(TraceError::NotExecutable {
            path: shown,
            reason: "it is a directory".into(),
        });
    }
    if !is_executable(&candidate) {
        return Err(TraceError::NotExecutable {
            path: shown,
            reason: "permission denied (not executable; chmod +x?)".into(),
        });
    }
    let abs = if candidate.is_absolute() {
        candidate
    } else {
        std::env::current_dir()?.join(candidate)
    };
    Ok(abs)
}

/// The interpreter named on a script's `#!` line.
/// The interpreter of a `#!` script (the kernel opens it at execve).
pub fn interpreter(p: &Path) -> Option<String> {
    let mut head = [0u8; 256];
    let n = File::open(p).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let text = String::from_utf8_lossy(line);
    text.split_whitespace().next().map(str::to_string)
}

fn is_executable(p: &Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
}

/// SHA-256 of a file's contents, hex; `None` if it cannot be read.
pub fn sha256_file(p: &Path) -> Option<String> {
    let mut f = File::open(p).ok()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(hex::encode(h.finalize()))
}

/// The classic BPF filter the child installs before exec: clone3 gets
/// ENOSYS (libc falls back to clone, whose flags are in a register),
/// everything else stops in the tracer. Syscalls of a foreign ABI are traced
/// too, so the profile can report them.
pub fn tracing_filter(arch: Arch) -> Vec<libc::sock_filter> {
    const ARCH_OFFSET: u32 = 4; // offsetof(struct seccomp_data, arch)
    const NR_OFFSET: u32 = 0; // offsetof(struct seccomp_data, nr)
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let clone3 = arch.number("clone3").unwrap_or(u32::MAX);
    vec![
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, ARCH_OFFSET),
        jeq(arch.audit_arch(), 0, 3),
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, NR_OFFSET),
        jeq(clone3, 0, 1),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_TRACE),
    ]
}

/// What both recorders need before the child is forked: the profile with
/// the program's own entries, and the child's exec and prelude.
pub(crate) struct Start {
    pub arch: Arch,
    pub path: PathBuf,
    pub shown: String,
    pub profile: Profile,
    pub program: CString,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    pub prelude: Option<super::conditions::Prelude>,
}

impl Start {
    /// Resolves the program, lays out the view and starts the profile.
    pub(crate) fn new(
        program: &OsStr,
        args: &[OsString],
        opts: &TraceOptions,
    ) -> Result<Start, TraceError> {
        let arch = Arch::native().ok_or(TraceError::UnsupportedArch)?;
        let path = resolve_program(program)?;
        let shown = path.display().to_string();
        let sha = sha256_file(&path);
        let mut profile = Profile::new(
            arch,
            Program {
                path: shown.clone(),
                sha256: sha.clone(),
            },
            opts.mode,
        );
        if super::profile::is_interpreter(&path) {
            profile.script = super::profile::Script::of_args(args);
        }
        // The first execve happens before recording starts: record it here.
        if opts.mode != Mode::Syscalls {
            profile.add_path(&shown, Access::R.union(Access::X), false);
        }
        if sha.is_none() {
            profile
                .notes
                .push("the executable could not be read, so its SHA-256 is unknown".into());
        }
        let cstr = |s: &OsStr| {
            CString::new(s.as_bytes()).map_err(|_| TraceError::NotExecutable {
                path: shown.clone(),
                reason: "an argument contains a NUL byte".into(),
            })
        };
        let mut argv = vec![cstr(program)?];
        for a in args {
            argv.push(cstr(a)?);
        }
        let (env, prelude) = match &opts.view {
            Some(view) => {
                let files = super::conditions::program_files(&path, args);
                let p = view.prepare(&files).map_err(TraceError::View)?;
                (p.env, Some(p.prelude))
            }
            None => {
                let env = std::env::vars_os()
                    .map(|(k, v)| {
                        let mut kv = k.into_vec();
                        kv.push(b'=');
                        kv.extend_from_slice(v.as_bytes());
                        cstr(OsStr::from_bytes(&kv))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                (env, None)
            }
        };
        Ok(Start {
            arch,
            program: cstr(path.as_os_str())?,
            path,
            shown,
            profile,
            argv,
            env,
            prelude,
        })
    }

    /// The child's description with this seccomp filter.
    pub(crate) fn spec(self, filter: Vec<libc::sock_filter>) -> (sys::ChildSpec, Profile, Failed) {
        let mut spec = sys::ChildSpec::new(self.program, self.argv, self.env, filter);
        if let Some(p) = self.prelude {
            spec = spec.with_prelude(Box::new(move || p.enter()));
        }
        // Debug builds only, for tests: the child's set-up fails as it
        // would where user namespaces are off.
        #[cfg(debug_assertions)]
        if std::env::var_os("TRESOR_FAULT_PRELUDE").is_some() {
            spec = spec.with_prelude(Box::new(|| Err(io::Error::from_raw_os_error(libc::EPERM))));
        }
        (
            spec,
            self.profile,
            Failed {
                path: self.path,
                shown: self.shown,
            },
        )
    }
}

/// Explains why a child never reached its program.
pub(crate) struct Failed {
    path: PathBuf,
    shown: String,
}

impl Failed {
    /// The error for a child that ended before its exec.
    pub(crate) fn error(self, child: &sys::Child) -> TraceError {
        let failure = child.failure();
        self.explain(failure)
    }

    /// `Err` when the child reported a failure before its exec (the
    /// report pipe closes at a successful exec).
    pub(crate) fn check(self, child: &sys::Child) -> Result<(), TraceError> {
        match child.failure() {
            None => Ok(()),
            f => Err(self.explain(f)),
        }
    }

    fn explain(self, failure: Option<(ChildStage, i32)>) -> TraceError {
        let (path, shown) = (self.path, self.shown);
        match failure {
            Some((ChildStage::Seccomp, errno)) => {
                TraceError::Seccomp(io::Error::from_raw_os_error(errno))
            }
            Some((ChildStage::Prelude, errno)) => TraceError::View(format!(
                "{} failed: {}; tresor profile needs user and mount namespaces, as tresor run does",
                ChildStage::Prelude.describe(),
                io::Error::from_raw_os_error(errno)
            )),
            Some((ChildStage::Exec, libc::ENOENT)) if interpreter(&path).is_some() => {
                TraceError::NotExecutable {
                    path: shown,
                    reason: format!(
                        "its #! interpreter {} does not exist",
                        interpreter(&path).unwrap_or_default()
                    ),
                }
            }
            Some((ChildStage::Exec, libc::ENOEXEC)) => TraceError::NotExecutable {
                path: shown,
                reason:
                    "not a program this system can run (no #! line, wrong format or architecture)"
                        .into(),
            },
            Some((stage, errno)) => TraceError::Spawn {
                path: shown,
                error: io::Error::new(
                    io::Error::from_raw_os_error(errno).kind(),
                    format!(
                        "{} failed: {}",
                        stage.describe(),
                        io::Error::from_raw_os_error(errno)
                    ),
                ),
            },
            None => TraceError::Spawn {
                path: shown,
                error: io::Error::other("the child ended before running the program"),
            },
        }
    }

    /// The error for a child that could not be started.
    pub(crate) fn spawn(&self, error: io::Error) -> TraceError {
        TraceError::Spawn {
            path: self.shown.clone(),
            error,
        }
    }
}

/// Runs `program args…` under the ptrace recorder. Stdio is inherited; the
/// program sees the same environment and working directory as tresor.
///
/// Call it from a single-threaded process (the `tresor` binary): it forks,
/// waits for every child of the process, and installs signal handlers and
/// an interval timer for the duration of the run.
pub fn profile(
    program: &OsStr,
    args: &[OsString],
    opts: &TraceOptions,
) -> Result<Outcome, TraceError> {
    profile_announced(program, args, opts, &|| {})
}

/// [`profile`], calling `announce` once the run is prepared, just before
/// the program starts (not for a mistake found before).
pub fn profile_announced(
    program: &OsStr,
    args: &[OsString],
    opts: &TraceOptions,
    announce: &dyn Fn(),
) -> Result<Outcome, TraceError> {
    let start = Start::new(program, args, opts)?;
    announce();
    let arch = start.arch;
    let trace = match (&opts.trace, opts.mode) {
        (Some(t), Mode::Full) => Some(BufWriter::with_capacity(
            1 << 20,
            File::create(t).map_err(|error| TraceError::TraceFile {
                path: t.display().to_string(),
                error,
            })?,
        )),
        _ => None,
    };
    let (spec, mut profile, failed) = start.spec(tracing_filter(arch));
    profile.recorder = Some(super::recorder::Recorder::Ptrace.to_string());

    let signals = SignalGuard::install()?;
    let mut child = sys::spawn_waiting_child(&spec).map_err(|e| failed.spawn(e))?;
    let options = libc::PTRACE_O_TRACESECCOMP
        | libc::PTRACE_O_TRACECLONE
        | libc::PTRACE_O_TRACEFORK
        | libc::PTRACE_O_TRACEVFORK
        | libc::PTRACE_O_TRACEEXEC
        | libc::PTRACE_O_EXITKILL;
    if let Err(e) = sys::seize(child.pid, options) {
        sys::kill_task(child.pid);
        let _ = sys::wait_pid(child.pid);
        return Err(TraceError::PtraceRefused(e));
    }
    if let Err(e) = child.release() {
        sys::kill_task(child.pid);
        let _ = sys::wait_pid(child.pid);
        return Err(failed.spawn(e));
    }
    if let Some(t) = opts.timeout {
        sys::set_timer(Some(t), Duration::from_millis(100));
    }

    let mut tracer = Tracer::new(arch, profile, opts, child.pid, trace);
    let result = tracer.run(&signals);
    drop(signals);
    let end = match result {
        Ok(end) => end,
        Err(e @ TraceError::KernelTooOld(_)) => {
            tracer.kill_all();
            tracer.drain();
            return Err(e);
        }
        Err(e) => {
            // Keep what was recorded: an incomplete profile beats none.
            tracer.kill_all();
            tracer.drain();
            tracer
                .profile
                .mark_incomplete(format!("the tracer failed: {e}"));
            RunEnd::Aborted
        }
    };
    if !tracer.root_execed {
        // The child never reached the program: report why.
        return Err(failed.error(&child));
    }
    tracer.finish(end)
}

/// What to read at a syscall's stop.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Action {
    /// Count only.
    Count,
    /// Path arguments (`dirfd` index, path index), and the access they need.
    Paths([Option<(Option<u8>, u8)>; 2], Rule),
    /// Argument values recorded under these names (index, name).
    Args(&'static [(u8, &'static str)], ArgKind),
    /// The working directory changed: forget cached cwds.
    Chdir,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Rule {
    Fixed(Access),
    /// open-style flags in this argument.
    OpenFlags(u8),
    /// openat2: `struct open_how *` in this argument (flags first).
    OpenHow(u8),
    Exec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArgKind {
    Plain,
    Socket,
    Prot,
    Ioctl,
}

pub(crate) fn action_table(arch: Arch) -> Vec<Action> {
    use Action::{Args, Chdir, Paths};
    let p = |path: u8| Some((None, path));
    let at = |dirfd: u8, path: u8| Some((Some(dirfd), path));
    let w = Rule::Fixed(Access::W);
    let named: Vec<(&str, Action)> = vec![
        ("open", Paths([p(0), None], Rule::OpenFlags(1))),
        ("openat", Paths([at(0, 1), None], Rule::OpenFlags(2))),
        ("openat2", Paths([at(0, 1), None], Rule::OpenHow(2))),
        ("creat", Paths([p(0), None], w)),
        ("execve", Paths([p(0), None], Rule::Exec)),
        ("execveat", Paths([at(0, 1), None], Rule::Exec)),
        ("mkdir", Paths([p(0), None], w)),
        ("mkdirat", Paths([at(0, 1), None], w)),
        ("unlink", Paths([p(0), None], w)),
        ("unlinkat", Paths([at(0, 1), None], w)),
        ("rmdir", Paths([p(0), None], w)),
        ("rename", Paths([p(0), p(1)], w)),
        ("renameat", Paths([at(0, 1), at(2, 3)], w)),
        ("renameat2", Paths([at(0, 1), at(2, 3)], w)),
        ("link", Paths([p(0), p(1)], w)),
        ("linkat", Paths([at(0, 1), at(2, 3)], w)),
        ("symlink", Paths([p(1), None], w)),
        ("symlinkat", Paths([at(1, 2), None], w)),
        ("mknod", Paths([p(0), None], w)),
        ("mknodat", Paths([at(0, 1), None], w)),
        ("truncate", Paths([p(0), None], w)),
        ("chmod", Paths([p(0), None], w)),
        ("fchmodat", Paths([at(0, 1), None], w)),
        ("fchmodat2", Paths([at(0, 1), None], w)),
        ("chown", Paths([p(0), None], w)),
        ("lchown", Paths([p(0), None], w)),
        ("fchownat", Paths([at(0, 1), None], w)),
        ("utime", Paths([p(0), None], w)),
        ("utimes", Paths([p(0), None], w)),
        ("utimensat", Paths([at(0, 1), None], w)),
        ("futimesat", Paths([at(0, 1), None], w)),
        ("setxattr", Paths([p(0), None], w)),
        ("lsetxattr", Paths([p(0), None], w)),
        ("removexattr", Paths([p(0), None], w)),
        ("lremovexattr", Paths([p(0), None], w)),
        (
            "socket",
            Args(&[(0, "domain"), (1, "type")], ArgKind::Socket),
        ),
        (
            "socketpair",
            Args(&[(0, "domain"), (1, "type")], ArgKind::Socket),
        ),
        ("ioctl", Args(&[(1, "request")], ArgKind::Ioctl)),
        ("prctl", Args(&[(0, "option")], ArgKind::Plain)),
        ("fcntl", Args(&[(1, "cmd")], ArgKind::Plain)),
        ("mmap", Args(&[(2, "prot")], ArgKind::Prot)),
        ("mprotect", Args(&[(2, "prot")], ArgKind::Prot)),
        ("pkey_mprotect", Args(&[(2, "prot")], ArgKind::Prot)),
        ("clone", Args(&[(0, "flags")], ArgKind::Plain)),
        ("personality", Args(&[(0, "persona")], ArgKind::Plain)),
        ("chdir", Chdir),
        ("fchdir", Chdir),
    ];
    let size = arch.table().last().map_or(0, |(_, nr)| *nr as usize + 1);
    let mut t = vec![Action::Count; size];
    for (name, a) in named {
        if let Some(nr) = arch.number(name) {
            t[nr as usize] = a;
        }
    }
    t
}

/// The access a path argument needs under `rule`, given the call's open
/// flags (`None` for openat2 when its `open_how` could not be read: then
/// the most it could ask for).
pub(crate) fn access_of(rule: Rule, flags: Option<u64>) -> (Access, bool) {
    let from_flags = |flags: u64| {
        let flags = flags as i32;
        let mut a = match flags & libc::O_ACCMODE {
            libc::O_WRONLY => Access::W,
            libc::O_RDWR => Access::R.union(Access::W),
            _ => Access::R,
        };
        if flags & (libc::O_CREAT | libc::O_TRUNC) != 0 {
            a = a.union(Access::W);
        }
        if flags & libc::O_TMPFILE == libc::O_TMPFILE {
            // An unnamed file in the directory: write to the directory.
            return (Access::W, true);
        }
        (a, flags & libc::O_DIRECTORY != 0)
    };
    match (rule, flags) {
        (Rule::Fixed(a), _) => (a, false),
        (Rule::Exec, _) => (Access::R.union(Access::X), false),
        (Rule::OpenFlags(_) | Rule::OpenHow(_), Some(f)) => from_flags(f),
        // Unreadable: assume the most it could ask for.
        (Rule::OpenFlags(_) | Rule::OpenHow(_), None) => (Access::R.union(Access::W), false),
    }
}

/// Records the values of the arguments that decide what is safe (`list`)
/// for one call of `name`, normalised as a policy compares them, and the
/// profile's network and write+exec flags; returns the values.
pub(crate) fn note_args(
    profile: &mut Profile,
    name: &str,
    nr: u32,
    args: &[u64; 6],
    list: &[(u8, &'static str)],
    kind: ArgKind,
) -> BTreeMap<String, u64> {
    let mut values = BTreeMap::new();
    for &(i, arg) in list {
        let mut v = args[i as usize];
        match (kind, arg) {
            // Creation flags do not change what the socket can reach.
            (ArgKind::Socket, "type") => v &= !((libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64),
            // Registers carry 32-bit int arguments; ignore the upper half.
            (ArgKind::Socket, _) | (ArgKind::Ioctl, _) | (ArgKind::Prot, _) => v &= 0xffff_ffff,
            _ => {}
        }
        values.insert(arg.to_string(), v);
    }
    if kind == ArgKind::Socket {
        let domain = values.get("domain").copied().unwrap_or(0) as i32;
        if matches!(domain, libc::AF_INET | libc::AF_INET6 | libc::AF_PACKET) {
            profile.network = true;
        }
    }
    if kind == ArgKind::Prot {
        let prot = values.get("prot").copied().unwrap_or(0) as i32;
        if prot & libc::PROT_WRITE != 0 && prot & libc::PROT_EXEC != 0 {
            profile.write_exec_memory = true;
        }
    }
    profile.add_args(name, nr, values.clone());
    values
}

/// Records calls the way profiling does, without paths: for
/// `tresor run --audit`, which collects the calls a policy would have
/// refused into a profile delta.
pub struct CallRecorder {
    arch: Arch,
    actions: Vec<Action>,
}

impl CallRecorder {
    pub fn new(arch: Arch) -> CallRecorder {
        CallRecorder {
            arch,
            actions: action_table(arch),
        }
    }

    /// Counts one call and records its deciding argument values; returns
    /// the syscall's name.
    pub fn record(&self, profile: &mut Profile, nr: u64, args: &[u64; 6]) -> String {
        let name = self.arch.display_name(nr as u32);
        profile.entry(&name, nr as u32).count += 1;
        if let Some(Action::Args(list, kind)) = self.actions.get(nr as usize) {
            note_args(profile, &name, nr as u32, args, list, *kind);
        }
        name
    }
}

struct Tracer<'a> {
    arch: Arch,
    audit: u32,
    opts: &'a TraceOptions,
    profile: Profile,
    /// Calls by number; numbers beyond the table go to `extra`.
    counts: Vec<u64>,
    extra: BTreeMap<u64, u64>,
    foreign: BTreeMap<(u32, u64), u64>,
    actions: Vec<Action>,
    live: HashSet<i32>,
    root: i32,
    root_execed: bool,
    root_end: Option<RunEnd>,
    stopping: Option<RunEnd>,
    cwd: HashMap<i32, Vec<u8>>,
    pending_exec: HashMap<i32, String>,
    trace: Option<BufWriter<File>>,
    trace_error: Option<io::Error>,
    processes: u64,
    /// SIGTERM/SIGHUP received before the program was exec'd.
    deferred_signal: Option<i32>,
    threads: u64,
}

impl<'a> Tracer<'a> {
    fn new(
        arch: Arch,
        profile: Profile,
        opts: &'a TraceOptions,
        root: i32,
        trace: Option<BufWriter<File>>,
    ) -> Self {
        Tracer {
            arch,
            audit: arch.audit_arch(),
            opts,
            profile,
            counts: vec![0; 1024],
            extra: BTreeMap::new(),
            foreign: BTreeMap::new(),
            actions: action_table(arch),
            live: HashSet::from([root]),
            root,
            root_execed: false,
            root_end: None,
            stopping: None,
            cwd: HashMap::new(),
            pending_exec: HashMap::new(),
            trace,
            trace_error: None,
            processes: 1,
            deferred_signal: None,
            threads: 0,
        }
    }

    fn kill_all(&self) {
        for &t in &self.live {
            sys::kill_task(t);
        }
    }

    /// Reaps everything after a fatal tracer error.
    fn drain(&mut self) {
        while !self.live.is_empty() {
            match sys::wait_any() {
                Ok((pid, status)) => {
                    if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                        self.live.remove(&pid);
                    } else {
                        let _ = sys::cont(pid, 0);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    fn stop_all(&mut self, end: RunEnd, reason: String) {
        if self.stopping.is_none() {
            self.profile.mark_incomplete(reason);
            self.stopping = Some(end);
            self.kill_all();
        }
    }

    fn run(&mut self, signals: &SignalGuard) -> Result<RunEnd, TraceError> {
        loop {
            if signals.take_alarm() {
                if let Some(t) = self.opts.timeout {
                    let n = self.live.len();
                    self.stop_all(
                        RunEnd::TimedOut(t),
                        format!(
                            "timed out after {}; killed the program and all {n} of its tasks",
                            fmt_duration(t)
                        ),
                    );
                }
            }
            if let Some(sig) = signals.take_terminate() {
                if self.root_execed {
                    sys::send_signal(self.root, sig);
                } else {
                    // Before exec the child still has tresor's handlers and
                    // would swallow it: deliver once the program runs.
                    self.deferred_signal = Some(sig);
                }
                self.profile.mark_incomplete(format!(
                    "tresor received {}; it was passed on to the program",
                    signal_name(sig)
                ));
            }
            let (pid, status) = match sys::wait_any() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => break,
                Err(e) => return Err(e.into()),
            };
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                self.live.remove(&pid);
                self.cwd.remove(&pid);
                if pid == self.root {
                    self.root_end = Some(if libc::WIFEXITED(status) {
                        RunEnd::Exited(libc::WEXITSTATUS(status))
                    } else {
                        RunEnd::Signaled(libc::WTERMSIG(status))
                    });
                }
                if self.live.is_empty() {
                    break;
                }
                continue;
            }
            if !libc::WIFSTOPPED(status) {
                continue;
            }
            if self.live.insert(pid) {
                // A new task can report before its parent's fork event.
                self.check_limit();
            }
            let sig = libc::WSTOPSIG(status);
            let event = status >> 16;
            let resume_with = match event {
                0 => sig, // signal-delivery-stop: pass the signal on
                libc::PTRACE_EVENT_SECCOMP => {
                    self.on_syscall(pid)?;
                    0
                }
                libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK | libc::PTRACE_EVENT_CLONE => {
                    if event == libc::PTRACE_EVENT_CLONE {
                        self.threads += 1;
                    } else {
                        self.processes += 1;
                    }
                    if let Ok(new) = sys::event_msg(pid) {
                        if self.live.insert(new as i32) {
                            self.check_limit();
                        }
                    }
                    0
                }
                libc::PTRACE_EVENT_EXEC => {
                    self.on_exec(pid);
                    0
                }
                libc::PTRACE_EVENT_STOP => {
                    if matches!(
                        sig,
                        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                    ) {
                        // Group-stop: stay stopped, like without tracing.
                        let _ = sys::listen(pid);
                        continue;
                    }
                    0
                }
                _ => 0,
            };
            // ESRCH: the task was killed meanwhile; its exit is reported later.
            let _ = sys::cont(pid, resume_with);
        }
        Ok(match (self.stopping.clone(), self.root_end.clone()) {
            (Some(s), _) => s,
            (None, Some(e)) => e,
            (None, None) => RunEnd::Aborted,
        })
    }

    fn check_limit(&mut self) {
        if self.live.len() > self.opts.max_tasks {
            let max = self.opts.max_tasks;
            self.stop_all(
                RunEnd::Aborted,
                format!(
                    "more than {max} processes and threads alive at once (a fork bomb?); killed them all — raise --max-tasks if the analysis needs more"
                ),
            );
        }
    }

    fn on_exec(&mut self, pid: i32) {
        let former = sys::event_msg(pid).map_or(pid, |m| m as i32);
        if former != pid {
            // A non-leader thread exec'd and took over the leader's id.
            self.live.remove(&former);
        }
        self.cwd.remove(&former);
        if pid == self.root && !self.root_execed {
            self.root_execed = true;
            if let Some(sig) = self.deferred_signal.take() {
                sys::send_signal(self.root, sig);
            }
            if let Some(nr) = self.arch.number("execve") {
                self.counts[nr as usize] += 1;
            }
            self.profile.execs.insert(self.profile.program.path.clone());
        }
        let path = self
            .pending_exec
            .remove(&former)
            .or_else(|| self.pending_exec.remove(&pid));
        if self.opts.mode == Mode::Syscalls {
            return;
        }
        if let Some(p) = path {
            self.profile.add_path(&p, Access::R.union(Access::X), false);
            self.profile.execs.insert(p);
        }
        // The kernel itself opens the ELF interpreter (ld.so) and a script's
        // interpreter; no syscall shows them, the new mappings do.
        if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
            for path in exec_mappings(&maps) {
                self.profile
                    .add_path(&path, Access::R.union(Access::X), false);
            }
        }
    }

    fn on_syscall(&mut self, pid: i32) -> Result<(), TraceError> {
        let info = match sys::syscall_info(pid) {
            Ok(i) => i,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                return Err(TraceError::KernelTooOld(e))
            }
            Err(e) => return Err(e.into()),
        };
        if pid == self.root && !self.root_execed {
            // tresor's own child between filter and exec: only the execve.
            return Ok(());
        }
        if info.arch != self.audit {
            *self.foreign.entry((info.arch, info.nr)).or_insert(0) += 1;
            self.trace_line(pid, &info, &[]);
            return Ok(());
        }
        match self.counts.get_mut(info.nr as usize) {
            Some(c) => *c += 1,
            None => *self.extra.entry(info.nr).or_insert(0) += 1,
        }
        if self.opts.mode == Mode::Syscalls {
            return Ok(());
        }
        let action = self
            .actions
            .get(info.nr as usize)
            .copied()
            .unwrap_or(Action::Count);
        // Decoded extras for the trace line: quoted paths, `[name=value …]`.
        let mut extras: Vec<String> = Vec::new();
        match action {
            Action::Count => {}
            Action::Chdir => self.cwd.clear(),
            Action::Args(list, kind) => {
                let decoded = self.record_args(&info, list, kind);
                if self.trace.is_some() {
                    extras.push(decoded);
                }
            }
            Action::Paths(paths, rule) => {
                let (access, is_dir) = self.access_for(pid, &info, rule);
                for (dirfd, idx) in paths.into_iter().flatten() {
                    let dirfd = dirfd.map(|i| info.args[i as usize]);
                    let Some(raw) = read_cstr(pid, info.args[idx as usize]) else {
                        continue;
                    };
                    let Some(path) = self.resolve(pid, dirfd, raw) else {
                        continue;
                    };
                    if matches!(rule, Rule::Exec) {
                        // Recorded once the exec succeeds: execvp tries
                        // every $PATH entry, and misses are no grants.
                        self.pending_exec.insert(pid, path.clone());
                    } else {
                        self.profile.add_path(&path, access, is_dir);
                    }
                    if self.trace.is_some() {
                        extras.push(path);
                    }
                }
            }
        }
        if self.trace.is_some() {
            self.trace_line(pid, &info, &extras);
        }
        Ok(())
    }

    /// Records the argument values; returns them decoded for the trace.
    fn record_args(
        &mut self,
        info: &SyscallInfo,
        list: &[(u8, &'static str)],
        kind: ArgKind,
    ) -> String {
        let name = self.arch.display_name(info.nr as u32);
        let values = note_args(
            &mut self.profile,
            &name,
            info.nr as u32,
            &info.args,
            list,
            kind,
        );
        if self.trace.is_some() {
            format!("[{}]", describe_args(&name, &values))
        } else {
            String::new()
        }
    }

    fn access_for(&self, pid: i32, info: &SyscallInfo, rule: Rule) -> (Access, bool) {
        let flags = match rule {
            Rule::OpenFlags(i) => Some(info.args[i as usize]),
            Rule::OpenHow(i) => {
                let mut b = [0u8; 8];
                match read_mem(pid, info.args[i as usize], &mut b) {
                    Ok(8) => Some(u64::from_ne_bytes(b)),
                    _ => None,
                }
            }
            _ => None,
        };
        access_of(rule, flags)
    }

    /// Absolute, lexically normalised path for a path argument.
    fn resolve(&mut self, pid: i32, dirfd: Option<u64>, raw: Vec<u8>) -> Option<String> {
        if raw.is_empty() {
            return None; // AT_EMPTY_PATH: the fd itself, opened earlier.
        }
        let full = if raw[0] == b'/' {
            raw
        } else {
            let mut base = match dirfd.map(|d| d as i32) {
                None | Some(libc::AT_FDCWD) => self.cwd_of(pid)?,
                Some(fd) => std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                    .ok()?
                    .into_os_string()
                    .into_vec(),
            };
            base.push(b'/');
            base.extend_from_slice(&raw);
            base
        };
        Some(normalize(&full))
    }

    fn cwd_of(&mut self, pid: i32) -> Option<Vec<u8>> {
        if let Some(c) = self.cwd.get(&pid) {
            return Some(c.clone());
        }
        let c = std::fs::read_link(format!("/proc/{pid}/cwd"))
            .ok()?
            .into_os_string()
            .into_vec();
        self.cwd.insert(pid, c.clone());
        Some(c)
    }

    fn trace_line(&mut self, pid: i32, info: &SyscallInfo, extras: &[String]) {
        let Some(w) = self.trace.as_mut() else {
            return;
        };
        let name = if info.arch == self.audit {
            self.arch.display_name(info.nr as u32)
        } else {
            format!("{:#x}:{}", info.arch, info.nr)
        };
        let a = info.args;
        let mut r = write!(
            w,
            "{pid} {name}({:#x}, {:#x}, {:#x}, {:#x}, {:#x}, {:#x})",
            a[0], a[1], a[2], a[3], a[4], a[5]
        );
        for p in extras {
            if r.is_ok() {
                r = if p.starts_with('[') {
                    write!(w, " {p}")
                } else {
                    write!(w, " {p:?}")
                };
            }
        }
        if r.is_ok() {
            r = writeln!(w);
        }
        if let Err(e) = r {
            self.trace_error = Some(e);
            self.trace = None;
        }
    }

    fn finish(mut self, end: RunEnd) -> Result<Outcome, TraceError> {
        if let Some(mut w) = self.trace.take() {
            if let Err(e) = w.flush() {
                self.trace_error = Some(e);
            }
        }
        if let (Some(e), Some(path)) = (self.trace_error.take(), self.opts.trace.as_ref()) {
            self.profile.notes.push(format!(
                "the trace file {} is incomplete: {e}",
                path.display()
            ));
        }
        let p = &mut self.profile;
        for (nr, &c) in self.counts.iter().enumerate() {
            if c > 0 {
                let name = self.arch.display_name(nr as u32);
                p.entry(&name, nr as u32).count += c;
            }
        }
        for (&nr, &c) in &self.extra {
            let nr = nr.min(u64::from(u32::MAX)) as u32;
            p.entry(&format!("syscall_{nr}"), nr).count += c;
        }
        for (&(arch, nr), &c) in &self.foreign {
            p.foreign_syscalls.insert(format!("{arch:#x}:{nr}"), c);
        }
        p.processes = self.processes;
        p.threads = self.threads;
        conclude(p, &end, self.root_end.as_ref());
        Ok(Outcome {
            profile: self.profile,
            end,
        })
    }
}

/// Records how the run ended; anything but an exit marks it incomplete.
/// Adds what a run with threads needs but may not have shown.
pub(crate) fn conclude(p: &mut Profile, end: &RunEnd, root_end: Option<&RunEnd>) {
    p.add_for_threads();
    match end {
        RunEnd::Exited(c) => p.exit = Some(Exit::Code(*c)),
        RunEnd::Signaled(s) => {
            p.exit = Some(Exit::Signal(signal_name(*s)));
            p.mark_incomplete(format!("the program was killed by {}", signal_name(*s)));
        }
        RunEnd::TimedOut(_) | RunEnd::Aborted => {
            if let Some(RunEnd::Signaled(s)) = root_end {
                p.exit = Some(Exit::Signal(signal_name(*s)));
            }
            p.mark_incomplete("the run was stopped");
        }
    }
}

/// Files mapped executable, from `/proc/PID/maps` text.
fn exec_mappings(maps: &str) -> Vec<String> {
    maps.lines()
        .filter_map(|line| {
            let mut it = line.splitn(6, ' ');
            let perms = it.nth(1)?;
            let path = it.nth(3)?.trim_start();
            (perms.contains('x') && path.starts_with('/')).then(|| path.to_string())
        })
        .collect()
}

/// `SIGSEGV`, or `signal 40` for numbers without a name.
pub fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => s.as_str().to_string(),
        Err(_) => format!("signal {sig}"),
    }
}

/// `1.5s`, `2m`, `250ms`.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else if ms > 1000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{ms}ms")
    }
}

/// Lexical normalisation: drops `.`, resolves `..` against the prefix
/// (symlinks are not followed: the profile records names the program used).
pub(crate) fn normalize(path: &[u8]) -> String {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = Vec::with_capacity(path.len() + 1);
    for c in parts {
        out.push(b'/');
        out.extend_from_slice(c);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_mem(pid: i32, addr: u64, buf: &mut [u8]) -> nix::Result<usize> {
    let len = buf.len();
    process_vm_readv(
        Pid::from_raw(pid),
        &mut [IoSliceMut::new(buf)],
        &[RemoteIoVec {
            base: addr as usize,
            len,
        }],
    )
}

/// Reads a NUL-terminated string (at most PATH_MAX bytes) from the tracee,
/// page by page so that an unmapped page after the string does not matter.
fn read_cstr(pid: i32, addr: u64) -> Option<Vec<u8>> {
    const PAGE: u64 = 4096;
    const MAX: usize = libc::PATH_MAX as usize;
    if addr == 0 {
        return None;
    }
    let mut out = Vec::new();
    let mut at = addr;
    let mut chunk = [0u8; PAGE as usize];
    while out.len() < MAX {
        let n = (PAGE - at % PAGE) as usize;
        let got = read_mem(pid, at, &mut chunk[..n]).ok()?;
        if got == 0 {
            return None;
        }
        if let Some(end) = chunk[..got].iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..end]);
            return Some(out);
        }
        out.extend_from_slice(&chunk[..got]);
        at += got as u64;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_lexically() {
        assert_eq!(normalize(b"/a/./b/../c"), "/a/c");
        assert_eq!(normalize(b"/../.."), "/");
        assert_eq!(normalize(b"//x//y/"), "/x/y");
    }

    #[test]
    fn maps_parsing() {
        let maps = "5555-6666 r-xp 00001000 08:01 1234    /usr/bin/my prog\n\
                    7777-8888 rw-p 00000000 00:00 0 \n\
                    9999-aaaa r-xp 00000000 08:01 99   /lib64/ld-linux-x86-64.so.2\n";
        assert_eq!(
            exec_mappings(maps),
            vec!["/usr/bin/my prog", "/lib64/ld-linux-x86-64.so.2"]
        );
    }

    #[test]
    fn exit_codes() {
        assert_eq!(RunEnd::Exited(3).exit_code(), 3);
        assert_eq!(RunEnd::Signaled(11).exit_code(), 139);
        assert_eq!(RunEnd::TimedOut(Duration::from_secs(1)).exit_code(), 124);
    }

    #[test]
    fn filter_shape() {
        let f = tracing_filter(Arch::X86_64);
        assert_eq!(f.len(), 6);
        assert_eq!(f[3].k, 435);
        assert_eq!(f[5].k, libc::SECCOMP_RET_TRACE);
    }

    #[test]
    fn missing_program_is_clear() {
        let e = resolve_program(OsStr::new("no-such-program-xyz")).unwrap_err();
        assert!(e.to_string().contains("not found"));
        let e = resolve_program(OsStr::new("/")).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
    }
}
