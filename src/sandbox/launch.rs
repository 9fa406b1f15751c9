//! `tresor run`: run an analysis confined to its profile (docs/RUN.md).
//!
//! Everything is prepared before the fork ([`prepare`]): the profile is
//! compiled into its seccomp policy, the Landlock ruleset is built, the
//! `execve` arguments and the clean environment are laid out. The forked
//! child then only makes raw syscalls, in the order of [`confine`] — the
//! one function that holds the whole confinement order:
//!
//! namespaces (always with a user namespace) → pid namespace init → own
//! root (tmpfs + pivot_root, [`super::root`]) → Landlock → drop every
//! capability → `no_new_privs` → rlimits → close fds → seccomp → execve.
//!
//! The parent supervises with ptrace, seized with `PTRACE_O_TRACEEXIT` and
//! the fork options only: allowed syscalls never stop. A task the kernel
//! kills for a syscall outside the policy (`SECCOMP_RET_KILL_PROCESS`,
//! SIGSYS) stops once more at its exit, with its registers rolled back to
//! the denied call: the report names it and the whole tree is killed.
//!
//! With `--audit` the policy answers `SECCOMP_RET_TRACE` instead of killing:
//! the refused call stops at the supervisor, which records it into a profile
//! delta and lets it run (allowed calls still never stop).

use std::collections::BTreeSet;
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use landlock::{
    Access as _, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, Scope, ABI,
};

use super::conditions;
use super::deliver;
use super::policy::{
    CompiledPolicy, Policy, PolicyError, PolicyOptions, ALLOCATION_TRACE_DATA, AUDIT_TRACE_DATA,
};
use super::profile::{Mode, Profile, ProfileError};
use super::root::{self, RootPlan};
use super::sys;
use super::syscalls::Arch;
use super::tracer;

/// Exit status: the analysis made a syscall outside its profile.
pub const EXIT_VIOLATION: u8 = 121;
/// Exit status: a resource limit was hit (memory, processes, CPU, file size).
pub const EXIT_LIMIT: u8 = 122;
/// Exit status: the program (or its script) is not the one the profile
/// was made of (unless `--allow-other-program`).
pub const EXIT_OTHER_PROGRAM: u8 = 123;
/// Exit status: `--timeout` passed; the tree was killed.
pub const EXIT_TIMEOUT: u8 = 124;
/// Exit status: tresor could not set the run up (bad profile, missing
/// kernel feature, a confinement step failed).
pub const EXIT_RUNNER: u8 = 125;

/// Default `--memory` (address space per process): 4 GiB.
pub const DEFAULT_MEMORY: u64 = 4 << 30;
/// Default `--max-procs`.
pub const DEFAULT_MAX_PROCS: u64 = 256;
/// Default `--max-file-size`: 1 GiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 1 << 30;
/// `RLIMIT_NOFILE`.
pub const MAX_OPEN_FILES: u64 = 1024;
/// Default `--tmp-size`: the private `/tmp` and `/dev/shm`, each.
pub const DEFAULT_TMP_SIZE: u64 = 256 << 20;
/// Default `--out-quota`: everything the analysis writes to `--out`.
pub const DEFAULT_OUT_QUOTA: u64 = 1 << 30;
pub use super::conditions::ROOT_MAPPED_ID;

/// `RLIMIT_NPROC` is `--max-procs` plus this (see `prepare`).
const NPROC_MARGIN: u64 = 16;

/// Share of `--memory` a failing process must have reached (peak address
/// space) for its death to be reported as the memory limit.
const MEMORY_HIT_PERCENT: u64 = 85;

/// The ELF interpreters: the kernel opens them at execve (Landlock checks
/// execute on them), so no profile records them.
const LOADERS: &[&str] = &[
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/ld-linux-aarch64.so.1",
    "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
];

/// What `tresor run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub profile: PathBuf,
    pub data: Vec<PathBuf>,
    pub out: PathBuf,
    pub timeout: Option<Duration>,
    /// Bytes of address space per process (`RLIMIT_AS`).
    pub memory: u64,
    /// Tasks (processes and threads) of the analysis at once.
    pub max_procs: u64,
    /// Bytes per file written (`RLIMIT_FSIZE`).
    pub max_file_size: u64,
    /// Bytes of the private `/tmp` and of `/dev/shm`, each.
    pub tmp_size: u64,
    /// Bytes the analysis may write into its (staged) `--out` in all.
    pub out_quota: u64,
    /// Deliver the outputs of a run that failed or was stopped too.
    pub keep_partial: bool,
    /// Run even where the kernel lacks Landlock or namespaces.
    pub allow_weaker: bool,
    /// Accept a profile marked incomplete.
    pub allow_incomplete: bool,
    /// Run a program (or script) other than the one the profile was made of.
    pub allow_other_program: bool,
    /// Audit instead of enforcing the syscall policy: record every call
    /// outside the profile and write them to this profile delta.
    pub audit: Option<PathBuf>,
    /// Harmless rules added to the policy (benchmarks).
    pub pad_rules: usize,
    pub program: OsString,
    pub args: Vec<OsString>,
}

/// Why a run could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Program(String),
    #[error("{0}; profile this program, or pass --allow-other-program to run it under this profile anyway")]
    OtherProgram(String),
    #[error("{what} {path}: {source}")]
    Path {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("this kernel lacks {0}; tresor run refuses to run less confined (--allow-weaker runs anyway)")]
    Missing(String),
    #[error("Landlock ruleset: {0}")]
    Landlock(String),
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        source: io::Error,
    },
    #[error("the confined child failed at {step}: {source}")]
    Child { step: String, source: io::Error },
}

/// The confinement steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Namespaces,
    PidNamespace,
    Root,
    Landlock,
    Capabilities,
    NoNewPrivs,
    Rlimits,
    CloseFds,
    Seccomp,
    Exec,
}

impl Step {
    /// What the step does, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Step::Namespaces => {
                "unshare (user/mount/pid/ipc/net namespaces; user namespaces may be disabled)"
            }
            Step::PidNamespace => "starting the pid namespace's init",
            Step::Root => "building the analysis's own root",
            Step::Landlock => "landlock_restrict_self",
            Step::Capabilities => "dropping every capability",
            Step::NoNewPrivs => "prctl(PR_SET_NO_NEW_PRIVS)",
            Step::Rlimits => "setrlimit",
            Step::CloseFds => "close_range",
            Step::Seccomp => "installing the seccomp policy",
            Step::Exec => "execve of the program",
        }
    }
    const ALL: [Step; 10] = [
        Step::Namespaces,
        Step::PidNamespace,
        Step::Root,
        Step::Landlock,
        Step::Capabilities,
        Step::NoNewPrivs,
        Step::Rlimits,
        Step::CloseFds,
        Step::Seccomp,
        Step::Exec,
    ];
    fn code(self) -> u32 {
        Step::ALL.iter().position(|s| *s == self).unwrap_or(0) as u32 + 1
    }
    fn from_code(c: u32) -> Option<Step> {
        Step::ALL.get((c as usize).checked_sub(1)?).copied()
    }
}

/// The raw operations of the confinement, one per step (youki's `Syscall`
/// trait): the kernel in a forked child, a recording double in tests.
pub trait Confine {
    /// New user, mount, pid, ipc and network namespaces — a user
    /// namespace also when started by root — and the uid/gid maps.
    fn namespaces(&mut self) -> io::Result<()>;
    /// Forks the pid namespace's init, which forks the program's process;
    /// returns only in the latter (the others wait and exit).
    fn pid_namespace(&mut self) -> io::Result<()>;
    /// Builds the analysis's own root and pivots into it.
    fn root(&mut self) -> io::Result<()>;
    /// Restricts the filesystem view to the prepared Landlock ruleset.
    fn landlock(&mut self) -> io::Result<()>;
    /// Empties the bounding set, locks the securebits, clears every
    /// capability set.
    fn capabilities(&mut self) -> io::Result<()>;
    fn no_new_privs(&mut self) -> io::Result<()>;
    fn rlimits(&mut self) -> io::Result<()>;
    /// Every fd but 0–2 (and the close-on-exec error pipe) closed.
    fn close_fds(&mut self) -> io::Result<()>;
    /// Loads the seccomp policy; after it only execve is sure to pass.
    fn seccomp(&mut self) -> io::Result<()>;
    /// execve with the prepared clean environment; returns only on failure.
    fn exec(&mut self) -> io::Error;
}

/// The whole confinement order, in the order it happens. Returns only on
/// failure: the step and its error.
pub fn confine(c: &mut impl Confine) -> (Step, io::Error) {
    macro_rules! step {
        ($step:expr, $call:expr) => {
            if let Err(e) = $call {
                return ($step, e);
            }
        };
    }
    step!(Step::Namespaces, c.namespaces());
    step!(Step::PidNamespace, c.pid_namespace());
    step!(Step::Root, c.root());
    step!(Step::Landlock, c.landlock());
    step!(Step::Capabilities, c.capabilities());
    step!(Step::NoNewPrivs, c.no_new_privs());
    step!(Step::Rlimits, c.rlimits());
    step!(Step::CloseFds, c.close_fds());
    step!(Step::Seccomp, c.seccomp());
    (Step::Exec, c.exec())
}

/// Everything the child needs, made before the fork.
pub struct Prepared {
    compiled: CompiledPolicy,
    arch: Arch,
    ns_flags: libc::c_int,
    /// Started by root: drop the supplementary groups before unsharing.
    clear_groups: bool,
    id_maps: Vec<(CString, Vec<u8>)>,
    /// The analysis's own root (absent only in an `--allow-weaker` run
    /// without mount or user namespaces).
    root: Option<RootPlan>,
    /// Landlock rules for what exists only inside the run's root (its
    /// `/`, `/tmp`, `/dev/shm`, `/proc`), added in the child.
    inner_rules: Vec<(CString, u64)>,
    /// `/dev/null`, stdin's replacement when it is a terminal.
    dev_null: CString,
    /// `--out` (canonical) when it is staged inside the run (own root):
    /// tresor delivers from the staging tmpfs into it at the end.
    staged_out: Option<PathBuf>,
    keep_partial: bool,
    rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    exec: sys::Execve,
    allow_weaker: bool,
    /// What the run goes without (only with `--allow-weaker`).
    pub weaker: Vec<String>,
    /// The profile's path as given, for reports.
    pub profile_name: String,
    memory: u64,
    max_procs: u64,
    max_file_size: u64,
    timeout: Option<Duration>,
    /// `--audit`: the delta collected so far (calls outside the profile).
    audit: Option<Profile>,
}

/// How a confined run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The program exited with this code.
    Exited(i32),
    /// The program was killed by this signal (not a limit or violation).
    Signaled(i32),
    /// A syscall outside the profile; the tree was killed.
    Violation,
    /// A resource limit was hit.
    Limit(Limit),
    /// `--timeout` passed; the tree was killed.
    Timeout,
}

/// Which limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Memory,
    Processes,
    Cpu,
    FileSize,
}

/// The result of [`run`].
#[derive(Debug, Clone)]
pub struct RunReport {
    pub end: End,
    /// What to tell the user (violations, limits, timeout, signals).
    pub message: Option<String>,
    /// `--audit`: one line per distinct call outside the profile, in order.
    pub audited: Vec<String>,
    /// What the delivery of the staged outputs refused or withheld.
    pub delivery: Vec<String>,
    /// Start-up (benchmarks): from tresor's fork to the program's exec,
    /// and from the program's process being forked (by the namespace's
    /// init) to its exec — its own root, Landlock, the capability drop,
    /// rlimits, seccomp; and how many steps built the root.
    pub setup: Option<(Duration, Duration, usize)>,
}

impl RunReport {
    /// tresor's exit status (docs/RUN.md).
    pub fn exit_code(&self) -> u8 {
        match self.end {
            End::Exited(c) => (c & 0xff) as u8,
            End::Signaled(s) => (128 + s).clamp(0, 255) as u8,
            End::Violation => EXIT_VIOLATION,
            End::Limit(_) => EXIT_LIMIT,
            End::Timeout => EXIT_TIMEOUT,
        }
    }
}

fn cstring(bytes: &[u8], what: &'static str) -> Result<CString, RunError> {
    CString::new(bytes).map_err(|_| RunError::Sys {
        what,
        source: io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"),
    })
}

fn existing_dir(p: &Path, what: &'static str) -> Result<PathBuf, RunError> {
    let abs = p.canonicalize().map_err(|source| RunError::Path {
        what,
        path: p.to_path_buf(),
        source,
    })?;
    if !abs.is_dir() {
        return Err(RunError::Path {
            what,
            path: p.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
        });
    }
    Ok(abs)
}

fn landlock_abi(v: i32) -> ABI {
    match v {
        ..=1 => ABI::V1,
        2 => ABI::V2,
        3 => ABI::V3,
        4 => ABI::V4,
        5 => ABI::V5,
        6 => ABI::V6,
        _ => ABI::V7,
    }
}

/// The Landlock ruleset, the second layer under the run's own root: read
/// on each `--data`, read+write (no execute, no device nodes) on `--out`,
/// read(+execute) on the program, its loader and what the profile read —
/// exactly the view's bind mounts ([`RootPlan::entries`]) — and the
/// view's device nodes. Without an own root (`--allow-weaker`) the
/// directories the profile listed may be listed too.
fn build_ruleset(
    abi: ABI,
    level: CompatLevel,
    plan: &RootPlan,
    own_root: bool,
) -> Result<RulesetCreated, RunError> {
    let ll = |e: landlock::RulesetError| RunError::Landlock(e.to_string());
    let mut rs = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(abi))
        .map_err(ll)?
        .scope(Scope::from_all(abi))
        .map_err(ll)?
        .create()
        .map_err(ll)?
        .no_new_privs(false);
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let add = |rs: RulesetCreated,
               path: &Path,
               mut access: landlock::BitFlags<AccessFs>|
     -> Result<RulesetCreated, RunError> {
        let Ok(meta) = std::fs::metadata(path) else {
            return Ok(rs); // gone since planning: nothing to grant
        };
        let Ok(fd) = PathFd::new(path) else {
            return Ok(rs);
        };
        if !meta.is_dir() {
            access &= AccessFs::from_file(abi);
        }
        access &= AccessFs::from_all(abi);
        rs.add_rule(PathBeneath::new(fd, access)).map_err(ll)
    };
    for e in &plan.entries {
        let access = match e.access {
            root::Access::List if own_root => continue,
            root::Access::List => AccessFs::ReadDir.into(),
            root::Access::Data | root::Access::Read => read,
            root::Access::ReadExec => read | AccessFs::Execute,
            root::Access::Write => writable(abi),
        };
        rs = add(rs, &e.path, access)?;
    }
    for d in root::DEVICES {
        rs = add(rs, &Path::new("/dev").join(d), device_access(abi))?;
    }
    Ok(rs)
}

/// Everything but execute and making device nodes: `--out`, `/tmp`,
/// `/dev/shm`.
fn writable(abi: ABI) -> landlock::BitFlags<AccessFs> {
    AccessFs::from_all(abi) & !(AccessFs::Execute | AccessFs::MakeChar | AccessFs::MakeBlock)
}

/// `/dev/null` and friends: read, write, truncate, ioctl.
fn device_access(abi: ABI) -> landlock::BitFlags<AccessFs> {
    let all = AccessFs::ReadFile
        | AccessFs::WriteFile
        | AccessFs::from_all(ABI::V3) & AccessFs::Truncate
        | AccessFs::from_all(ABI::V5) & AccessFs::IoctlDev;
    all & AccessFs::from_file(abi)
}

/// The Landlock rules for what exists only inside the run's root: its
/// skeleton may be listed (names of what is in the view), its `/tmp` and
/// `/dev/shm` written, its `/proc` (its own pid namespace) read.
fn inner_rules(abi: ABI, out: &Path) -> Result<Vec<(CString, u64)>, RunError> {
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    [
        (Path::new("/"), landlock::BitFlags::from(AccessFs::ReadDir)),
        (Path::new("/tmp"), writable(abi)),
        (Path::new("/dev/shm"), writable(abi)),
        (Path::new("/proc"), read),
        // The staging tmpfs mounted at --out.
        (out, writable(abi)),
    ]
    .into_iter()
    .map(|(p, a)| {
        Ok((
            cstring(p.as_os_str().as_bytes(), "path")?,
            (a & AccessFs::from_all(abi)).bits(),
        ))
    })
    .collect()
}

/// What the kernel offers `tresor run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSupport {
    /// Namespace kinds present (`/proc/self/ns/<kind>`), as clone flags.
    pub namespaces: libc::c_int,
    /// The Landlock ABI version, if Landlock is enabled.
    pub landlock_abi: Option<i32>,
}

/// The namespaces a run unshares: clone flag, `/proc/self/ns` name, what
/// the refusal calls it.
const NAMESPACES: [(libc::c_int, &str, &str); 5] = [
    (libc::CLONE_NEWUSER, "user", "user namespaces"),
    (libc::CLONE_NEWNS, "mnt", "mount namespaces"),
    (libc::CLONE_NEWPID, "pid", "pid namespaces"),
    (libc::CLONE_NEWIPC, "ipc", "ipc namespaces"),
    (libc::CLONE_NEWNET, "net", "network namespaces"),
];

impl KernelSupport {
    /// Asks this kernel.
    pub fn probe() -> KernelSupport {
        let namespaces = NAMESPACES
            .iter()
            .filter(|(_, file, _)| Path::new("/proc/self/ns").join(file).exists())
            .fold(0, |acc, (flag, _, _)| acc | flag);
        KernelSupport {
            namespaces,
            landlock_abi: sys::landlock_abi(),
        }
    }
}

/// Decides the namespaces to unshare and what a run would go without:
/// anything missing is refused by name, unless `allow_weaker` (then it is
/// listed, and the run warns). Root gets a user namespace too: that is
/// how it runs without any privilege.
fn plan(
    kernel: &KernelSupport,
    allow_weaker: bool,
) -> Result<(libc::c_int, Vec<String>), RunError> {
    let mut weaker = Vec::new();
    let mut missing = |what: String| -> Result<(), RunError> {
        if allow_weaker {
            weaker.push(what);
            Ok(())
        } else {
            Err(RunError::Missing(what))
        }
    };
    let mut ns_flags = 0;
    for (flag, _, name) in NAMESPACES {
        if kernel.namespaces & flag != 0 {
            ns_flags |= flag;
        } else {
            missing(name.to_string())?;
        }
    }
    if !has_own_root(ns_flags) {
        missing("its own root (it needs user and mount namespaces)".into())?;
    }
    match kernel.landlock_abi {
        None => missing("Landlock (enable CONFIG_SECURITY_LANDLOCK and add landlock to the lsm= boot parameter)".into())?,
        Some(v) if v < 6 => missing(format!(
            "Landlock ABI 6 (signal scoping); the kernel offers ABI {v}"
        ))?,
        Some(_) => {}
    }
    Ok((ns_flags, weaker))
}

/// The profile binds its program: the same file (path, after symlinks)
/// with the same SHA-256 — and for an interpreter the same script.
fn check_program(
    profile: &Profile,
    profile_path: &Path,
    program: &Path,
    args: &[OsString],
) -> Result<(), RunError> {
    let p = &profile.program;
    let short = |h: &str| h.get(..16).unwrap_or(h).to_string();
    let pname = profile_path.display();
    let theirs = Path::new(&p.path)
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(&p.path));
    if theirs != program {
        return Err(RunError::OtherProgram(format!(
            "{} is not the program of profile {pname}, which was made of {}",
            program.display(),
            p.path
        )));
    }
    let Some(want) = &p.sha256 else {
        return Err(RunError::OtherProgram(format!(
            "profile {pname} records no SHA-256 of {}, so it cannot be checked",
            p.path
        )));
    };
    let have = tracer::sha256_file(program).unwrap_or_default();
    if &have != want {
        return Err(RunError::OtherProgram(format!(
            "{} has changed since profile {pname} was made (sha256 {} there, {} now)",
            program.display(),
            short(want),
            short(&have)
        )));
    }
    if !super::profile::is_interpreter(program) {
        return Ok(());
    }
    let now = super::profile::Script::of_args(args);
    match (&profile.script, &now) {
        (Some(a), Some(b)) if a == b => Ok(()),
        (None, None) => Ok(()),
        (Some(a), Some(b)) if a.path == b.path => Err(RunError::OtherProgram(format!(
            "the script {} has changed since profile {pname} was made (sha256 {} there, {} now)",
            b.path,
            short(&a.sha256),
            short(&b.sha256)
        ))),
        (Some(a), Some(b)) => Err(RunError::OtherProgram(format!(
            "{} runs {}, not the script of profile {pname} ({})",
            program.display(),
            b.path,
            a.path
        ))),
        (Some(a), None) => Err(RunError::OtherProgram(format!(
            "{} is given no script, but profile {pname} is of its script {}",
            program.display(),
            a.path
        ))),
        (None, Some(b)) => Err(RunError::OtherProgram(format!(
            "profile {pname} records no script for the interpreter {}, which now runs {}",
            program.display(),
            b.path
        ))),
    }
}

/// Whether the run can build its own root: it needs a user namespace (to
/// mount without privilege) and a mount namespace.
fn has_own_root(ns_flags: libc::c_int) -> bool {
    ns_flags & (libc::CLONE_NEWUSER | libc::CLONE_NEWNS) == libc::CLONE_NEWUSER | libc::CLONE_NEWNS
}

/// Loads and compiles the profile, checks the kernel and lays out
/// everything the child needs. Allocation happens here, never after the fork.
pub fn prepare(opts: &RunOptions) -> Result<(Prepared, Option<RulesetCreated>), RunError> {
    let profile = Profile::load(&opts.profile)?;
    let policy = Policy::from_profile(
        &profile,
        &PolicyOptions {
            allow_incomplete: opts.allow_incomplete,
            pad_rules: opts.pad_rules,
        },
    )?;
    let mut compiled = if opts.audit.is_some() {
        policy.compile_audit()?
    } else {
        policy.compile()?
    };
    // A failing request of this size or more is reported as the memory
    // limit; anything smaller fails only past MEMORY_HIT_PERCENT, which
    // the peak check reports.
    compiled.watch_allocations(opts.memory / 100 * (100 - MEMORY_HIT_PERCENT))?;
    let arch = policy.arch()?;
    let audit = opts.audit.as_ref().map(|_| {
        let mut delta = Profile::new(arch, profile.program.clone(), Mode::Args);
        delta.syscalls.clear();
        delta.notes = vec![format!(
            "delta from `tresor run --audit` under {}: the calls the policy would have refused; review, then `tresor profile merge` it into the profile",
            opts.profile.display()
        )];
        delta
    });
    if Arch::native() != Some(arch) {
        return Err(RunError::Program(format!(
            "profile {} is for {arch}; this machine cannot run it",
            opts.profile.display()
        )));
    }
    let program =
        tracer::resolve_program(&opts.program).map_err(|e| RunError::Program(e.to_string()))?;
    let program = program.canonicalize().map_err(|source| RunError::Path {
        what: "program",
        path: program.clone(),
        source,
    })?;
    if !opts.allow_other_program {
        check_program(&profile, &opts.profile, &program, &opts.args)?;
    }
    // Each directory as given (made absolute: its symlinks are recreated
    // in the view) and canonical.
    let cwd = std::env::current_dir().ok();
    let given = |p: &Path| match &cwd {
        Some(c) if p.is_relative() => c.join(p),
        _ => p.to_path_buf(),
    };
    let data = opts
        .data
        .iter()
        .map(|d| Ok((given(d), existing_dir(d, "--data")?)))
        .collect::<Result<Vec<_>, RunError>>()?;
    let out = (given(&opts.out), existing_dir(&opts.out, "--out")?);

    let root_caller = nix::unistd::geteuid().is_root();
    let kernel = KernelSupport::probe();
    let (ns_flags, weaker) = plan(&kernel, opts.allow_weaker)?;
    let id_maps = if ns_flags & libc::CLONE_NEWUSER != 0 {
        conditions::id_maps().map_err(|source| RunError::Sys {
            what: "mapping the caller's ids",
            source,
        })?
    } else {
        Vec::new()
    };

    // What the kernel opens at execve, so no profile records it: the ELF
    // loader, and a `#!` script's interpreter (a shell wrapper's /bin/sh).
    let shebang = tracer::interpreter(&program);
    let loaders: Vec<&str> = LOADERS
        .iter()
        .copied()
        .chain(shebang.as_deref())
        .filter(|l| Path::new(l).exists())
        .collect();
    let cwd = cwd.and_then(|c| c.canonicalize().ok());
    let script = super::profile::is_interpreter(&program)
        .then(|| super::profile::Script::of_args(&opts.args))
        .flatten()
        .map(|s| PathBuf::from(s.path))
        .filter(|p| p.is_absolute());
    let plan = RootPlan::new(&root::Inputs {
        profile: &profile,
        program: &program,
        script: script.as_deref(),
        loaders: &loaders,
        data: &data,
        out: &out,
        cwd: cwd.as_deref(),
        tmp_size: opts.tmp_size,
        out_quota: has_own_root(ns_flags).then_some(opts.out_quota),
    })
    .map_err(|source| RunError::Sys {
        what: "planning the analysis's root",
        source,
    })?;
    let own_root = has_own_root(ns_flags);

    let (ruleset, inner) = match kernel.landlock_abi {
        None => (None, Vec::new()),
        Some(v) => {
            let level = if opts.allow_weaker {
                CompatLevel::BestEffort
            } else {
                CompatLevel::HardRequirement
            };
            let abi = landlock_abi(v);
            let inner = if own_root {
                inner_rules(abi, &out.1)?
            } else {
                Vec::new()
            };
            (Some(build_ruleset(abi, level, &plan, own_root)?), inner)
        }
    };
    let out = out.1;
    let prep_root = own_root.then_some(plan);

    let cpu = opts.timeout.map(|t| t.as_secs() + 2);
    let inf = libc::RLIM_INFINITY;
    let rlimits = vec![
        (libc::RLIMIT_AS, opts.memory, opts.memory),
        // The backstop behind the supervisor's count, which stops the
        // tree past --max-procs and says so: the kernel refuses forks
        // only NPROC_MARGIN later (it also counts the namespace's first
        // process, its init and zombies). Root's runs are not held by it
        // (the kernel exempts uid 0 outside): the count holds them.
        (
            libc::RLIMIT_NPROC,
            opts.max_procs.saturating_add(NPROC_MARGIN),
            opts.max_procs.saturating_add(NPROC_MARGIN),
        ),
        (libc::RLIMIT_NOFILE, MAX_OPEN_FILES, MAX_OPEN_FILES),
        (
            libc::RLIMIT_CPU,
            cpu.unwrap_or(inf),
            cpu.map_or(inf, |c| c + 1),
        ),
        (libc::RLIMIT_FSIZE, opts.max_file_size, opts.max_file_size),
        (libc::RLIMIT_CORE, 0, 0),
    ];

    let prog_c = cstring(program.as_os_str().as_bytes(), "program path")?;
    let mut argv = vec![cstring(opts.program.as_bytes(), "program")?];
    for a in &opts.args {
        argv.push(cstring(a.as_bytes(), "argument")?);
    }
    // Where it starts (shells call getcwd only when PWD is missing).
    let pwd = prep_root.as_ref().map(|plan| plan.cwd.as_path());
    let env = conditions::clean_env(&out, pwd).map_err(|source| RunError::Sys {
        what: "laying out the environment",
        source,
    })?;
    Ok((
        Prepared {
            compiled,
            arch,
            ns_flags,
            clear_groups: root_caller,
            id_maps,
            root: prep_root,
            inner_rules: inner,
            dev_null: cstring(b"/dev/null", "path")?,
            staged_out: own_root.then(|| out.clone()),
            keep_partial: opts.keep_partial,
            rlimits,
            exec: sys::Execve::new(prog_c, argv, env),
            allow_weaker: opts.allow_weaker,
            weaker,
            profile_name: opts.profile.display().to_string(),
            memory: opts.memory,
            max_procs: opts.max_procs,
            max_file_size: opts.max_file_size,
            timeout: opts.timeout,
            audit,
        },
        ruleset,
    ))
}

/// The kernel behind [`Confine`], in the forked child: raw syscalls on
/// memory prepared before the fork.
struct Kernel<'a> {
    prep: &'a Prepared,
    ruleset: Option<RulesetCreated>,
    err_fd: i32,
    /// The step of the root's construction that failed, for the report.
    failed_op: Option<usize>,
}

/// The pid namespace's init: reaps every process of the namespace (orphans
/// included); when the program's process ends, kills whatever is left and
/// exits with its status. Termination signals it gets are forwarded to the
/// namespace (`sys::init_signals`); it cannot be stopped (the supervisor
/// discards stop signals, terminal ones are ignored).
fn init_main(program: i32) -> ! {
    loop {
        match sys::wait_any_child() {
            Ok((pid, st)) if pid == program => {
                sys::kill_namespace();
                let code = if libc::WIFEXITED(st) {
                    libc::WEXITSTATUS(st)
                } else if libc::WIFSIGNALED(st) {
                    128 + libc::WTERMSIG(st)
                } else {
                    i32::from(EXIT_RUNNER)
                };
                sys::exit_now(code)
            }
            Ok(_) => {} // an orphan, reaped
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => sys::exit_now(i32::from(EXIT_RUNNER)),
        }
    }
}

/// `waitpid` for `pid`, then exit with its status (128+signal if killed).
fn wait_and_exit(pid: i32) -> ! {
    let code = match sys::wait_child(pid) {
        Ok(st) if libc::WIFEXITED(st) => libc::WEXITSTATUS(st),
        Ok(st) if libc::WIFSIGNALED(st) => 128 + libc::WTERMSIG(st),
        _ => i32::from(EXIT_RUNNER),
    };
    sys::exit_now(code)
}

impl Confine for Kernel<'_> {
    fn namespaces(&mut self) -> io::Result<()> {
        if self.prep.clear_groups {
            // Root's supplementary groups stay behind (inside the user
            // namespace they could no longer be dropped).
            sys::clear_groups()?;
        }
        match sys::unshare(self.prep.ns_flags) {
            Ok(()) => {}
            Err(_) if self.prep.allow_weaker => {
                // Whatever the kernel allows, one by one.
                for f in [
                    libc::CLONE_NEWUSER,
                    libc::CLONE_NEWNS,
                    libc::CLONE_NEWPID,
                    libc::CLONE_NEWIPC,
                    libc::CLONE_NEWNET,
                ] {
                    if self.prep.ns_flags & f != 0 {
                        let _ = sys::unshare(f);
                    }
                }
            }
            Err(e) => return Err(e),
        }
        for (path, data) in &self.prep.id_maps {
            sys::write_file(path, data)?;
        }
        Ok(())
    }

    fn root(&mut self) -> io::Result<()> {
        let Some(plan) = &self.prep.root else {
            return Ok(());
        };
        plan.build().map_err(|(i, e)| {
            self.failed_op = Some(i);
            e
        })
    }

    fn landlock(&mut self) -> io::Result<()> {
        let Some(rs) = self.ruleset.take() else {
            return Ok(());
        };
        // The ruleset was built before the fork (HardRequirement unless
        // --allow-weaker: a right the kernel lacks failed there); what
        // exists only in the run's root is added here, by path.
        let Some(fd) = Option::<OwnedFd>::from(rs) else {
            return Ok(()); // best effort on a kernel without Landlock
        };
        for (path, access) in &self.prep.inner_rules {
            sys::landlock_add_path(fd.as_raw_fd(), path, *access)?;
        }
        sys::landlock_restrict(fd.as_raw_fd())
    }

    fn capabilities(&mut self) -> io::Result<()> {
        sys::drop_capabilities()
    }

    fn no_new_privs(&mut self) -> io::Result<()> {
        sys::set_no_new_privs()
    }

    fn rlimits(&mut self) -> io::Result<()> {
        for &(res, soft, hard) in &self.prep.rlimits {
            sys::set_rlimit(res, soft, hard)?;
        }
        Ok(())
    }

    fn close_fds(&mut self) -> io::Result<()> {
        sys::close_fds_except(self.err_fd)
    }

    fn pid_namespace(&mut self) -> io::Result<()> {
        // SAFETY (of the contract): the child is single-threaded and only
        // makes raw syscalls on prepared memory after these forks.
        let init = unsafe { sys::fork_raw() }?;
        if init > 0 {
            wait_and_exit(init);
        }
        // The namespace's init: a session of its own (no controlling
        // terminal for anything below: no TIOCSTI, no job control), stdin
        // never a terminal.
        sys::new_session()?;
        sys::stdin_not_a_terminal(&self.prep.dev_null)?;
        sys::init_signals()?;
        // SAFETY: as above.
        let program = unsafe { sys::fork_raw() }?;
        if program > 0 {
            init_main(program);
        }
        Ok(())
    }

    fn seccomp(&mut self) -> io::Result<()> {
        self.prep.compiled.install()
    }

    fn exec(&mut self) -> io::Error {
        self.prep.exec.exec()
    }
}

fn child(
    go: i32,
    err: i32,
    stdio: [i32; 3],
    relay_ends: [i32; 3],
    prep: &Prepared,
    ruleset: Option<RulesetCreated>,
) -> ! {
    if !sys::read_byte(go) {
        sys::exit_now(i32::from(EXIT_RUNNER));
    }
    // fds 0–2 are pipes to tresor's relays, never the caller's own
    // files or terminal (close_fds closes the originals).
    for (fd, target) in stdio.iter().zip(0..) {
        if sys::dup2(*fd, target).is_err() {
            sys::exit_now(i32::from(EXIT_RUNNER));
        }
    }
    // No process of the run may hold the relays' ends (the analysis would
    // never see the end of its stdin), nor the pipes twice.
    for fd in stdio.into_iter().chain(relay_ends) {
        sys::close(fd);
    }
    let mut k = Kernel {
        prep,
        ruleset,
        err_fd: err,
        failed_op: None,
    };
    let (step, e) = confine(&mut k);
    let mut buf = [0u8; 12];
    buf[..4].copy_from_slice(&step.code().to_ne_bytes());
    buf[4..8].copy_from_slice(&e.raw_os_error().unwrap_or(0).to_ne_bytes());
    let op = k.failed_op.map_or(u32::MAX, |i| i as u32);
    buf[8..].copy_from_slice(&op.to_ne_bytes());
    sys::write_bytes(err, &buf);
    sys::exit_now(i32::from(EXIT_RUNNER))
}

/// What stopped the run early (the first one wins).
enum Stop {
    Violation(String),
    Limit(Limit, String),
    Timeout,
    Terminated(i32),
}

struct Supervisor<'a> {
    prep: &'a Prepared,
    live: BTreeSet<i32>,
    first: i32,
    init: Option<i32>,
    program: Option<i32>,
    program_status: Option<i32>,
    /// Exit statuses seen before the program was known: `wait` finds the
    /// newest tracee first, so under load the program can exit before its
    /// parent's fork event names it.
    early_exits: Vec<(i32, i32)>,
    stop: Option<Stop>,
    /// `--audit`: the delta, how to record into it, and the report lines.
    delta: Option<(Profile, tracer::CallRecorder)>,
    audited: Vec<String>,
    /// The staging tmpfs at `--out`, opened through the program's root at
    /// its first exec (it outlives the run's mount namespace).
    staged: Option<OwnedFd>,
    /// When the program's process was forked, and when it first exec'd.
    program_forked: Option<Instant>,
    program_execed: Option<Instant>,
    /// Processes (by tgid) that asked for more address space at once than
    /// `--memory` leaves them: the size asked for.
    refused_allocations: std::collections::HashMap<i32, u64>,
}

impl Supervisor<'_> {
    fn kill_all(&self) {
        if let Some(i) = self.init {
            sys::kill_task(i); // the pid namespace's init: its death ends them all
        }
        for &p in &self.live {
            sys::kill_task(p);
        }
    }

    /// Records why the run ends (the first reason wins) and kills the
    /// tree once; tasks that appear afterwards are killed as they appear
    /// (killing everything on every event would be quadratic, and a fork
    /// bomb outruns it).
    fn stop(&mut self, s: Stop) {
        if self.stop.is_none() {
            self.stop = Some(s);
            self.kill_all();
        }
    }

    /// The program's exit status, also when it comes before the fork
    /// event that names the program.
    fn note_exit(&mut self, pid: i32, status: i32) {
        match self.program {
            Some(p) if p == pid && self.program_status.is_none() => {
                self.program_status = Some(status)
            }
            None if pid != self.first && Some(pid) != self.init => {
                self.early_exits.push((pid, status))
            }
            _ => {}
        }
    }

    /// After the last task is gone every fork event has been seen.
    fn resolve_program_status(&mut self) {
        if self.program_status.is_none() {
            if let Some(p) = self.program {
                self.program_status = self
                    .early_exits
                    .iter()
                    .find(|(pid, _)| *pid == p)
                    .map(|&(_, st)| st);
            }
        }
    }

    fn in_tree(&self, pid: i32) -> bool {
        pid != self.first && Some(pid) != self.init
    }

    fn on_exit_event(&mut self, pid: i32) {
        let Ok(msg) = sys::event_msg(pid) else { return };
        let st = msg as i32;
        self.note_exit(pid, st);
        if !self.in_tree(pid) {
            return;
        }
        let failed = if libc::WIFSIGNALED(st) {
            let sig = libc::WTERMSIG(st);
            match sig {
                libc::SIGSYS => {
                    let what = match sys::syscall_regs(pid) {
                        Ok((nr, args)) => describe_call(self.prep.arch, pid, nr, args),
                        Err(e) => format!("a syscall (its registers were unreadable: {e})"),
                    };
                    let msg = format!(
                        "analysis stopped: {what} is not in profile {}",
                        self.prep.profile_name
                    );
                    self.stop(Stop::Violation(msg));
                    return;
                }
                libc::SIGXCPU => {
                    let t = self.prep.timeout.map(|t| t.as_secs() + 2).unwrap_or(0);
                    self.stop(Stop::Limit(
                        Limit::Cpu,
                        format!("limit hit: CPU time ({t} s, from --timeout)"),
                    ));
                    return;
                }
                libc::SIGXFSZ => {
                    self.stop(Stop::Limit(
                        Limit::FileSize,
                        format!(
                            "limit hit: file size (--max-file-size {})",
                            fmt_size(self.prep.max_file_size)
                        ),
                    ));
                    return;
                }
                _ => true,
            }
        } else {
            libc::WEXITSTATUS(st) != 0
        };
        // A fork refused at RLIMIT_NPROC before the count saw the tasks:
        // they are all still there (init has not been told). Counted by
        // walking init's descendants, so the cost is the run's size.
        if let (true, None, Some(init)) = (failed, &self.stop, self.init) {
            let tasks = tasks_below(init);
            if tasks > self.prep.max_procs {
                self.stop(Stop::Limit(
                    Limit::Processes,
                    format!(
                        "limit hit: processes (--max-procs {}): {tasks} tasks when a process failed",
                        self.prep.max_procs
                    ),
                ));
                return;
            }
        }
        if failed && self.stop.is_none() {
            if let Some(&asked) = self.refused_allocations.get(&pid) {
                self.stop(Stop::Limit(
                    Limit::Memory,
                    format!(
                        "limit hit: memory (--memory {}; a process asked for {} at once, which did not fit, and then failed)",
                        fmt_size(self.prep.memory),
                        fmt_size(asked)
                    ),
                ));
                return;
            }
            if let Some(peak) = vm_peak(pid) {
                if peak.saturating_mul(100) >= self.prep.memory.saturating_mul(MEMORY_HIT_PERCENT) {
                    self.stop(Stop::Limit(
                        Limit::Memory,
                        format!(
                            "limit hit: memory (--memory {}; the process reached {} of address space and then failed)",
                            fmt_size(self.prep.memory),
                            fmt_size(peak)
                        ),
                    ));
                }
            }
        }
    }

    /// A large `mmap`/`mremap` stopped here (the allocation watch): note
    /// whether `RLIMIT_AS` will refuse it, and let it run.
    fn on_allocation(&mut self, pid: i32) {
        let Ok(info) = sys::syscall_info(pid) else {
            return;
        };
        let name = self.prep.arch.display_name(info.nr as u32);
        let asked = if name == "mremap" {
            info.args[2].saturating_sub(info.args[1])
        } else {
            info.args[1]
        };
        let Some((tgid, size)) = vm_size(pid) else {
            return;
        };
        if size.saturating_add(asked) > self.prep.memory {
            self.refused_allocations.insert(tgid, asked);
        }
    }

    /// `--audit`: a call the policy refused stopped here; record it (a
    /// line for each new syscall or argument value) and let it run.
    fn on_audit(&mut self, pid: i32) {
        let Some((delta, recorder)) = self.delta.as_mut() else {
            return;
        };
        let Ok(info) = sys::syscall_info(pid) else {
            return;
        };
        let name = self.prep.arch.display_name(info.nr as u32);
        let before = delta.syscalls.get(&name).map(|e| e.args.len());
        recorder.record(delta, info.nr, &info.args);
        if delta.syscalls.get(&name).map(|e| e.args.len()) != before {
            self.audited.push(format!(
                "audit: {} is not in profile {}",
                describe_call(self.prep.arch, pid, info.nr, info.args),
                self.prep.profile_name
            ));
        }
    }

    fn on_stop(&mut self, pid: i32, status: i32) {
        let sig = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        match event {
            libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK | libc::PTRACE_EVENT_CLONE => {
                if let Ok(new) = sys::event_msg(pid) {
                    let new = new as i32;
                    self.live.insert(new);
                    if self.stop.is_some() {
                        sys::kill_task(new);
                        sys::kill_task(pid);
                    }
                    if pid == self.first && self.init.is_none() {
                        self.init = Some(new);
                    } else if Some(pid) == self.init && self.program.is_none() {
                        self.program = Some(new);
                        self.program_forked = Some(Instant::now());
                    }
                    let tasks = self.live.len().saturating_sub(2) as u64;
                    if self.program.is_some() && tasks > self.prep.max_procs {
                        self.stop(Stop::Limit(
                            Limit::Processes,
                            format!("limit hit: processes (--max-procs {})", self.prep.max_procs),
                        ));
                    }
                }
                let _ = sys::cont(pid, 0);
            }
            libc::PTRACE_EVENT_EXIT => {
                self.on_exit_event(pid);
                let _ = sys::cont(pid, 0);
            }
            libc::PTRACE_EVENT_SECCOMP => {
                match sys::event_msg(pid).ok().map(|d| d as u32) {
                    Some(AUDIT_TRACE_DATA) => self.on_audit(pid),
                    Some(ALLOCATION_TRACE_DATA) => self.on_allocation(pid),
                    _ => {}
                }
                let _ = sys::cont(pid, 0);
            }
            libc::PTRACE_EVENT_EXEC => {
                if Some(pid) == self.program && self.program_execed.is_none() {
                    self.program_execed = Some(Instant::now());
                }
                // The first exec happens after the root is built: hold on
                // to the staging directory from here.
                if let (None, Some(out), true) =
                    (&self.staged, &self.prep.staged_out, self.in_tree(pid))
                {
                    let p = Path::new("/proc")
                        .join(pid.to_string())
                        .join("root")
                        .join(out.strip_prefix("/").unwrap_or(out));
                    self.staged = nix::fcntl::open(
                        &p,
                        nix::fcntl::OFlag::O_PATH
                            | nix::fcntl::OFlag::O_DIRECTORY
                            | nix::fcntl::OFlag::O_CLOEXEC,
                        nix::sys::stat::Mode::empty(),
                    )
                    .ok()
                    // SAFETY: open returned a new fd that nothing else owns.
                    .map(|fd| unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) });
                }
                let _ = sys::cont(pid, 0);
            }
            libc::PTRACE_EVENT_STOP => {
                if matches!(
                    sig,
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                ) {
                    let _ = sys::listen(pid);
                } else {
                    let _ = sys::cont(pid, 0);
                }
            }
            // No job control: stop signals are discarded for every task,
            // so neither the namespace's init nor the analysis can be
            // stopped (a stopped init would hang the run).
            0 if matches!(
                sig,
                libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
            ) =>
            {
                let _ = sys::cont(pid, 0);
            }
            0 => {
                let _ = sys::cont(pid, sig);
            }
            _ => {
                let _ = sys::cont(pid, 0);
            }
        }
    }
}

/// Tasks (threads included) of the processes below `init`, from the
/// kernel's `/proc/PID/task/TID/children` lists.
fn tasks_below(init: i32) -> u64 {
    let mut todo = vec![init];
    let mut tasks = 0;
    while let Some(p) = todo.pop() {
        let Ok(threads) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in threads.filter_map(Result::ok) {
            if p != init {
                tasks += 1;
            }
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            todo.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
    }
    tasks
}

/// A task's thread group and its address space now (`VmSize`), bytes.
fn vm_size(pid: i32) -> Option<(i32, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((
        i32::try_from(field("Tgid:")?).ok()?,
        field("VmSize:")? * 1024,
    ))
}

fn vm_peak(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmPeak:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `4 GiB`, `256 MiB`, `1000 B`.
pub fn fmt_size(b: u64) -> String {
    for (unit, name) in [(1u64 << 30, "GiB"), (1 << 20, "MiB")] {
        if b >= unit && b % unit == 0 {
            return format!("{} {name}", b / unit);
        }
    }
    if b >= 1 << 20 {
        return format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20));
    }
    format!("{b} B")
}

/// Copies `from` to `to` until end of file; once `to` fails (a closed
/// reader) the rest is read and dropped, so the writer never blocks.
fn relay(from: OwnedFd, to: std::os::fd::BorrowedFd<'_>) {
    let mut buf = vec![0u8; 1 << 16];
    let mut open = true;
    loop {
        match nix::unistd::read(from.as_raw_fd(), &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let mut rest = &buf[..n];
                while open && !rest.is_empty() {
                    match nix::unistd::write(to, rest) {
                        Ok(w) => rest = &rest[w..],
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(_) => open = false,
                    }
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
    }
}

/// The analysis's stdin, stdout and stderr are pipes that tresor relays
/// (docs/RUN.md "Ids"): it never holds the caller's own files or terminal,
/// so it cannot fchmod/fchown them, nor push input into a terminal. A
/// terminal stdin is not relayed (the analysis reads end of file). The
/// relay threads block tresor's signals, which stay with the supervisor.
fn start_relays(in_w: OwnedFd, out_r: OwnedFd, err_r: OwnedFd) -> Vec<std::thread::JoinHandle<()>> {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
    let mut block = SigSet::empty();
    for s in [
        Signal::SIGALRM,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGCHLD,
    ] {
        block.add(s);
    }
    let mut old = SigSet::empty();
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&block), Some(&mut old));
    let stdin_is_tty = nix::unistd::isatty(0).unwrap_or(false);
    if let (false, Ok(fd)) = (stdin_is_tty, nix::unistd::dup(0)) {
        // SAFETY: dup returned a new fd that nothing else owns.
        let stdin = unsafe { OwnedFd::from_raw_fd(fd) };
        // Not joined: it may wait on the caller's stdin after the run.
        let _ = std::thread::Builder::new()
            .name("tresor-stdin".into())
            .spawn(move || relay(stdin, in_w.as_fd()));
    }
    let mut handles = Vec::new();
    for (from, to) in [(out_r, 1), (err_r, 2)] {
        if let Ok(h) = std::thread::Builder::new()
            .name("tresor-relay".into())
            .spawn(move || {
                // SAFETY: fds 1 and 2 stay open for the life of the process.
                relay(from, unsafe { std::os::fd::BorrowedFd::borrow_raw(to) })
            })
        {
            handles.push(h);
        }
    }
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    handles
}

/// Runs the analysis confined and supervises it to the end.
pub fn run(opts: &RunOptions) -> Result<RunReport, RunError> {
    let (prep, ruleset) = prepare(opts)?;
    supervise(prep, ruleset, opts)
}

/// Forks the confined child from what [`prepare`] made and supervises it
/// to the end.
pub fn supervise(
    mut prep: Prepared,
    ruleset: Option<RulesetCreated>,
    opts: &RunOptions,
) -> Result<RunReport, RunError> {
    let delta = prep
        .audit
        .take()
        .map(|d| (d, tracer::CallRecorder::new(prep.arch)));
    let sys_err = |what: &'static str| move |source: io::Error| RunError::Sys { what, source };
    let (go_r, go_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| sys_err("pipe")(e.into()))?;
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| sys_err("pipe")(e.into()))?;
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| sys_err("pipe")(e.into()));
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (errout_r, errout_w) = pipe()?;
    let guard = sys::SignalGuard::install().map_err(sys_err("signal handlers"))?;
    // SAFETY (of the contract): tresor is single-threaded here; the child
    // runs `child`, which only makes raw syscalls on `prep` and the
    // ruleset, prepared above, then execs or exits.
    let pid = unsafe { sys::fork_raw() }.map_err(sys_err("fork"))?;
    if pid == 0 {
        let stdio = [in_r.as_raw_fd(), out_w.as_raw_fd(), errout_w.as_raw_fd()];
        let ends = [in_w.as_raw_fd(), out_r.as_raw_fd(), errout_r.as_raw_fd()];
        child(
            go_r.as_raw_fd(),
            err_w.as_raw_fd(),
            stdio,
            ends,
            &prep,
            ruleset,
        );
    }
    drop(ruleset);
    drop(go_r);
    drop(err_w);
    drop((in_r, out_w, errout_w));
    let relays = start_relays(in_w, out_r, errout_r);
    // TRACESECCOMP for --audit and for the allocation watch.
    let options = libc::PTRACE_O_TRACEEXIT
        | libc::PTRACE_O_TRACEEXEC
        | libc::PTRACE_O_TRACEFORK
        | libc::PTRACE_O_TRACEVFORK
        | libc::PTRACE_O_TRACECLONE
        | libc::PTRACE_O_EXITKILL
        | libc::PTRACE_O_TRACESECCOMP;
    if let Err(e) = sys::seize(pid, options) {
        sys::kill_task(pid);
        let _ = sys::wait_pid(pid);
        return Err(RunError::Sys {
            what: "ptrace(PTRACE_SEIZE) of the confined child (tresor run supervises it with ptrace; allow ptrace of own children)",
            source: e,
        });
    }
    if nix::unistd::write(&go_w, &[1u8]).is_err() {
        sys::kill_task(pid);
    }
    drop(go_w);
    let started = Instant::now();
    if let Some(t) = prep.timeout {
        sys::set_timer(Some(t), Duration::from_millis(100));
    }
    let mut sup = Supervisor {
        prep: &prep,
        live: BTreeSet::from([pid]),
        first: pid,
        init: None,
        program: None,
        program_status: None,
        early_exits: Vec::new(),
        stop: None,
        delta,
        audited: Vec::new(),
        staged: None,
        program_forked: None,
        program_execed: None,
        refused_allocations: std::collections::HashMap::new(),
    };
    loop {
        match sys::wait_any() {
            Ok((p, status)) => {
                if libc::WIFSTOPPED(status) {
                    sup.on_stop(p, status);
                } else {
                    sup.live.remove(&p);
                    sup.note_exit(p, status);
                    if Some(p) == sup.init {
                        // The namespace is gone with its init.
                        sup.init = None;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                if guard.take_alarm() {
                    if sup.stop.is_some() {
                        // Stragglers (every 100 ms while the tree dies).
                        sup.kill_all();
                    }
                    if let Some(t) = prep.timeout {
                        if started.elapsed() >= t {
                            sup.stop(Stop::Timeout);
                        }
                    }
                }
                if let Some(sig) = guard.take_terminate() {
                    sup.stop(Stop::Terminated(sig));
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => break,
            Err(e) => {
                sup.kill_all();
                return Err(RunError::Sys {
                    what: "waiting for the confined program",
                    source: e,
                });
            }
        }
    }
    drop(guard);
    sup.resolve_program_status();
    // Every process of the run is gone: the relays see end of file.
    for r in relays {
        let _ = r.join();
    }
    let mut buf = [0u8; 12];
    if nix::unistd::read(err_r.as_raw_fd(), &mut buf) == Ok(12) {
        let code = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let op = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let mut step = Step::from_code(code)
            .map_or("an unknown step", Step::describe)
            .to_string();
        if let Some(o) = prep.root.as_ref().and_then(|r| r.ops.get(op as usize)) {
            step = format!("{step} ({})", o.describe());
        }
        return Err(RunError::Child {
            step,
            source: io::Error::from_raw_os_error(errno),
        });
    }
    let elapsed = tracer::fmt_duration(started.elapsed());
    if let (Some((mut delta, _)), Some(path)) = (sup.delta.take(), &opts.audit) {
        match &sup.stop {
            Some(Stop::Timeout) => delta.mark_incomplete("the audited run hit --timeout"),
            Some(Stop::Limit(_, m)) => delta.mark_incomplete(format!("the audited run ended: {m}")),
            Some(Stop::Terminated(_)) => delta.mark_incomplete("the audited run was killed"),
            Some(Stop::Violation(_)) | None => {}
        }
        let calls: u64 = delta.syscalls.values().map(|e| e.count).sum();
        delta.save(path)?;
        sup.audited.push(format!(
            "audit: {calls} call(s) of {} syscall(s) outside the profile; delta written to {} (review it, then `tresor profile merge {} {} -o NEW.json`)",
            delta.syscalls.len(),
            path.display(),
            opts.profile.display(),
            path.display()
        ));
    }
    let audited = std::mem::take(&mut sup.audited);
    let mut report = match sup.stop {
        Some(Stop::Violation(m)) => RunReport {
            end: End::Violation,
            message: Some(m),
            audited: Vec::new(),
            delivery: Vec::new(),
            setup: None,
        },
        Some(Stop::Limit(l, m)) => RunReport {
            end: End::Limit(l),
            message: Some(m),
            audited: Vec::new(),
            delivery: Vec::new(),
            setup: None,
        },
        Some(Stop::Timeout) => RunReport {
            end: End::Timeout,
            message: Some(format!(
                "timeout: the analysis ran past --timeout ({elapsed}); its processes were killed"
            )),
            audited: Vec::new(),
            delivery: Vec::new(),
            setup: None,
        },
        Some(Stop::Terminated(sig)) => RunReport {
            end: End::Signaled(sig),
            message: Some(format!(
                "tresor received {}; the analysis was killed",
                tracer::signal_name(sig)
            )),
            audited: Vec::new(),
            delivery: Vec::new(),
            setup: None,
        },
        None => match sup.program_status {
            Some(st) if libc::WIFEXITED(st) => RunReport {
                end: End::Exited(libc::WEXITSTATUS(st)),
                message: None,
                audited: Vec::new(),
                delivery: Vec::new(),
                setup: None,
            },
            Some(st) if libc::WIFSIGNALED(st) => RunReport {
                end: End::Signaled(libc::WTERMSIG(st)),
                message: Some(format!(
                    "the analysis was killed by {}",
                    tracer::signal_name(libc::WTERMSIG(st))
                )),
                audited: Vec::new(),
                delivery: Vec::new(),
                setup: None,
            },
            _ => {
                return Err(RunError::Sys {
                    what: "the confined program",
                    source: io::Error::other("it never started"),
                })
            }
        },
    };
    report.audited = audited;
    if let (Some(forked), Some(execed)) = (sup.program_forked, sup.program_execed) {
        report.setup = Some((
            execed.duration_since(started),
            execed.duration_since(forked),
            prep.root.as_ref().map_or(0, |r| r.ops.len()),
        ));
    }
    if let (Some(fd), Some(out)) = (sup.staged.take(), &prep.staged_out) {
        let done = report.end == End::Exited(0);
        if done || prep.keep_partial {
            let from = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            let d = deliver::deliver(&from, out).map_err(|source| RunError::Sys {
                what: "delivering the outputs into --out",
                source,
            })?;
            for (p, why) in &d.refused {
                report.delivery.push(format!(
                    "output {} not delivered: {why} (only regular files and directories are)",
                    p.display()
                ));
            }
        } else {
            report.delivery.push(
                "the run did not end with status 0: its outputs were not delivered to --out (--keep-partial delivers them)".into(),
            );
        }
    }
    Ok(report)
}

// --- naming the denied syscall -------------------------------------------

fn read_string(pid: i32, addr: u64) -> String {
    let mut buf = [0u8; 256];
    match sys::read_memory(pid, addr, &mut buf) {
        Ok(n) if n > 0 => {
            let s = &buf[..n];
            let end = s.iter().position(|&b| b == 0).unwrap_or(n);
            format!("{:?}", String::from_utf8_lossy(&s[..end]))
        }
        _ => format!("{addr:#x}"),
    }
}

fn af_name(v: u64) -> String {
    match v as i32 {
        libc::AF_UNIX => "AF_UNIX".into(),
        libc::AF_INET => "AF_INET".into(),
        libc::AF_INET6 => "AF_INET6".into(),
        libc::AF_NETLINK => "AF_NETLINK".into(),
        libc::AF_PACKET => "AF_PACKET".into(),
        other => format!("domain {other}"),
    }
}

fn sock_type(v: u64) -> String {
    let t = (v as i32) & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    match t {
        libc::SOCK_STREAM => "SOCK_STREAM".into(),
        libc::SOCK_DGRAM => "SOCK_DGRAM".into(),
        libc::SOCK_RAW => "SOCK_RAW".into(),
        libc::SOCK_SEQPACKET => "SOCK_SEQPACKET".into(),
        other => format!("type {other}"),
    }
}

fn sockaddr(pid: i32, addr: u64, len: u64) -> String {
    let mut buf = [0u8; 110];
    let want = (len as usize).min(buf.len());
    let n = sys::read_memory(pid, addr, &mut buf[..want]).unwrap_or(0);
    if n < 2 {
        return format!("{addr:#x}");
    }
    let family = u16::from_ne_bytes([buf[0], buf[1]]);
    match i32::from(family) {
        libc::AF_INET if n >= 8 => format!(
            "AF_INET, {}.{}.{}.{}:{}",
            buf[4],
            buf[5],
            buf[6],
            buf[7],
            u16::from_be_bytes([buf[2], buf[3]])
        ),
        libc::AF_UNIX => {
            let p = &buf[2..n];
            let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
            format!("AF_UNIX, {:?}", String::from_utf8_lossy(&p[..end]))
        }
        f => af_name(f as u64),
    }
}

fn prot(v: u64) -> String {
    let mut parts = Vec::new();
    for (bit, name) in [
        (libc::PROT_READ, "PROT_READ"),
        (libc::PROT_WRITE, "PROT_WRITE"),
        (libc::PROT_EXEC, "PROT_EXEC"),
    ] {
        if v as i32 & bit != 0 {
            parts.push(name);
        }
    }
    if parts.is_empty() {
        "PROT_NONE".into()
    } else {
        parts.join("|")
    }
}

fn num(v: u64) -> String {
    if v > 9 {
        format!("{v:#x}")
    } else {
        v.to_string()
    }
}

fn dirfd(v: u64) -> String {
    if v as i32 == libc::AT_FDCWD {
        "AT_FDCWD".into()
    } else {
        (v as i32).to_string()
    }
}

/// `connect(fd=3, AF_INET, 127.0.0.1:80)`: the syscall with its arguments,
/// decoded where simple (read from the dead task's memory).
pub fn describe_call(arch: Arch, pid: i32, nr: u64, a: [u64; 6]) -> String {
    let name = arch.display_name(nr as u32);
    let args = match name.as_str() {
        "socket" | "socketpair" => format!("{}, {}, {}", af_name(a[0]), sock_type(a[1]), a[2]),
        "connect" | "bind" => format!("fd={}, {}", a[0] as i32, sockaddr(pid, a[1], a[2])),
        "sendto" => format!("fd={}, {}", a[0] as i32, sockaddr(pid, a[4], a[5])),
        "chmod" | "creat" => format!("{}, {:#o}", read_string(pid, a[0]), a[1] as u32),
        "fchmod" => format!("fd={}, {:#o}", a[0] as i32, a[1] as u32),
        "fchmodat" | "fchmodat2" | "mknodat" => format!(
            "{}, {}, {:#o}",
            dirfd(a[0]),
            read_string(pid, a[1]),
            a[2] as u32
        ),
        "mknod" => format!("{}, {:#o}", read_string(pid, a[0]), a[1] as u32),
        "symlink" | "link" | "rename" => {
            format!("{}, {}", read_string(pid, a[0]), read_string(pid, a[1]))
        }
        "symlinkat" => format!(
            "{}, {}, {}",
            read_string(pid, a[0]),
            dirfd(a[1]),
            read_string(pid, a[2])
        ),
        "linkat" | "renameat" | "renameat2" => format!(
            "{}, {}, {}, {}",
            dirfd(a[0]),
            read_string(pid, a[1]),
            dirfd(a[2]),
            read_string(pid, a[3])
        ),
        "chown" | "lchown" => format!(
            "{}, {}, {}",
            read_string(pid, a[0]),
            a[1] as u32 as i32,
            a[2] as u32 as i32
        ),
        "fchownat" => format!(
            "{}, {}, {}, {}",
            dirfd(a[0]),
            read_string(pid, a[1]),
            a[2] as u32 as i32,
            a[3] as u32 as i32
        ),
        "open" => format!(
            "{}, {:#x}, {:#o}",
            read_string(pid, a[0]),
            a[1] as u32,
            a[2] as u32
        ),
        "openat" => format!(
            "{}, {}, {:#x}, {:#o}",
            dirfd(a[0]),
            read_string(pid, a[1]),
            a[2] as u32,
            a[3] as u32
        ),
        "chroot" | "chdir" | "mkdir" | "rmdir" | "unlink" | "truncate" | "execve" | "stat"
        | "lstat" | "access" | "readlink" | "statfs" | "acct" | "swapon" | "umount2"
        | "pivot_root" => read_string(pid, a[0]),
        "openat2" | "mkdirat" | "unlinkat" | "execveat" | "newfstatat" | "faccessat"
        | "faccessat2" | "readlinkat" => {
            format!("{}, {}", dirfd(a[0]), read_string(pid, a[1]))
        }
        "mount" => format!(
            "{}, {}, {}",
            read_string(pid, a[0]),
            read_string(pid, a[1]),
            read_string(pid, a[2])
        ),
        "kill" | "tkill" => format!("pid={}, {}", a[0] as i32, tracer::signal_name(a[1] as i32)),
        "tgkill" => format!(
            "tgid={}, tid={}, {}",
            a[0] as i32,
            a[1] as i32,
            tracer::signal_name(a[2] as i32)
        ),
        "ptrace" => {
            let req = match a[0] as u32 {
                libc::PTRACE_TRACEME => "PTRACE_TRACEME".to_string(),
                libc::PTRACE_ATTACH => "PTRACE_ATTACH".to_string(),
                libc::PTRACE_SEIZE => "PTRACE_SEIZE".to_string(),
                r => format!("request={r}"),
            };
            format!("{req}, pid={}", a[1] as i32)
        }
        "getpid" | "getppid" | "gettid" | "fork" | "vfork" | "sync" | "getuid" | "geteuid"
        | "getgid" | "getegid" | "setsid" | "getpgrp" | "pause" | "sched_yield" => String::new(),
        "unshare" | "setns" => format!("{:#x}", a[0]),
        "clone" => format!("flags={:#x}", a[0]),
        "setuid" | "setgid" | "setfsuid" | "setfsgid" => format!("{}", a[0] as u32),
        "setreuid" | "setregid" => format!("{}, {}", a[0] as u32, a[1] as u32),
        "setresuid" | "setresgid" => {
            format!("{}, {}, {}", a[0] as u32, a[1] as u32, a[2] as u32)
        }
        "mprotect" | "pkey_mprotect" => {
            format!("{:#x}, {}, {}", a[0], num(a[1]), prot(a[2]))
        }
        "mmap" => format!("{:#x}, {}, {}, ...", a[0], num(a[1]), prot(a[2])),
        "finit_module" => format!(
            "fd={}, {}, {:#x}",
            a[0] as i32,
            read_string(pid, a[1]),
            a[2]
        ),
        "init_module" => format!("{:#x}, {}, {}", a[0], num(a[1]), read_string(pid, a[2])),
        "delete_module" => format!("{}, {:#x}", read_string(pid, a[0]), a[1]),
        _ => format!("{}, {}, {}", num(a[0]), num(a[1]), num(a[2])),
    };
    format!("{name}({args})")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the order of the steps; fails at `fail_at` if set.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<Step>,
        fail_at: Option<Step>,
    }

    impl Recorder {
        fn step(&mut self, s: Step) -> io::Result<()> {
            self.calls.push(s);
            if self.fail_at == Some(s) {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            Ok(())
        }
    }

    impl Confine for Recorder {
        fn namespaces(&mut self) -> io::Result<()> {
            self.step(Step::Namespaces)
        }
        fn root(&mut self) -> io::Result<()> {
            self.step(Step::Root)
        }
        fn landlock(&mut self) -> io::Result<()> {
            self.step(Step::Landlock)
        }
        fn capabilities(&mut self) -> io::Result<()> {
            self.step(Step::Capabilities)
        }
        fn no_new_privs(&mut self) -> io::Result<()> {
            self.step(Step::NoNewPrivs)
        }
        fn rlimits(&mut self) -> io::Result<()> {
            self.step(Step::Rlimits)
        }
        fn close_fds(&mut self) -> io::Result<()> {
            self.step(Step::CloseFds)
        }
        fn pid_namespace(&mut self) -> io::Result<()> {
            self.step(Step::PidNamespace)
        }
        fn seccomp(&mut self) -> io::Result<()> {
            self.step(Step::Seccomp)
        }
        fn exec(&mut self) -> io::Error {
            self.calls.push(Step::Exec);
            io::Error::from_raw_os_error(libc::ENOENT)
        }
    }

    #[test]
    fn confinement_order_seccomp_last_then_exec() {
        let mut r = Recorder::default();
        let (step, e) = confine(&mut r);
        assert_eq!(step, Step::Exec);
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(r.calls, Step::ALL.to_vec());
    }

    #[test]
    fn a_failing_step_stops_the_rest() {
        for fail in Step::ALL {
            if fail == Step::Exec {
                continue;
            }
            let mut r = Recorder {
                fail_at: Some(fail),
                ..Default::default()
            };
            let (step, _) = confine(&mut r);
            assert_eq!(step, fail);
            assert_eq!(r.calls.last(), Some(&fail));
            assert!(
                !r.calls.contains(&Step::Exec),
                "exec after a failed {fail:?}"
            );
        }
    }

    #[test]
    fn step_codes_round_trip() {
        for s in Step::ALL {
            assert_eq!(Step::from_code(s.code()), Some(s));
        }
        assert_eq!(Step::from_code(0), None);
        assert_eq!(Step::from_code(99), None);
    }

    const ALL_NS: libc::c_int = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET;

    #[test]
    fn a_complete_kernel_needs_nothing_weaker() {
        let k = KernelSupport {
            namespaces: ALL_NS,
            landlock_abi: Some(7),
        };
        let (flags, weaker) = plan(&k, false).unwrap();
        assert_eq!(flags, ALL_NS);
        assert!(weaker.is_empty());
        assert!(has_own_root(flags));
    }

    #[test]
    fn a_missing_feature_is_refused_by_name_unless_allow_weaker() {
        let cases = [
            (ALL_NS & !libc::CLONE_NEWPID, Some(7), "pid namespaces"),
            (ALL_NS & !libc::CLONE_NEWUSER, Some(7), "user namespaces"),
            (ALL_NS & !libc::CLONE_NEWNET, Some(7), "network namespaces"),
            (ALL_NS, None, "Landlock (enable CONFIG_SECURITY_LANDLOCK"),
            (
                ALL_NS,
                Some(4),
                "Landlock ABI 6 (signal scoping); the kernel offers ABI 4",
            ),
        ];
        for (namespaces, landlock_abi, what) in cases {
            let k = KernelSupport {
                namespaces,
                landlock_abi,
            };
            match plan(&k, false) {
                Err(RunError::Missing(m)) => assert!(m.starts_with(what), "{m}"),
                other => panic!("{what}: {other:?}"),
            }
            let (flags, weaker) = plan(&k, true).unwrap();
            // Without a user namespace there is no own root either.
            let expected = if has_own_root(namespaces) { 1 } else { 2 };
            assert_eq!(weaker.len(), expected, "{weaker:?}");
            assert!(weaker[0].starts_with(what));
            assert_eq!(flags, namespaces);
        }
    }

    #[test]
    fn exit_codes_are_distinct() {
        let r = |end| {
            RunReport {
                end,
                message: None,
                audited: Vec::new(),
                delivery: Vec::new(),
                setup: None,
            }
            .exit_code()
        };
        let codes = [
            EXIT_OTHER_PROGRAM,
            r(End::Violation),
            r(End::Limit(Limit::Memory)),
            r(End::Timeout),
            EXIT_RUNNER,
        ];
        let set: BTreeSet<u8> = codes.iter().copied().collect();
        assert_eq!(set.len(), codes.len());
        assert_eq!(r(End::Exited(3)), 3);
        assert_eq!(r(End::Signaled(9)), 137);
    }

    #[test]
    fn sizes_print_plainly() {
        assert_eq!(fmt_size(4 << 30), "4 GiB");
        assert_eq!(fmt_size(256 << 20), "256 MiB");
        assert_eq!(fmt_size(1000), "1000 B");
        assert_eq!(fmt_size(248824 * 1024), "243.0 MiB");
    }
}
