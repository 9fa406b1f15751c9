//! The seccomp policy: a profile turned into reviewable rules (JSON, one rule
//! per syscall, each with a comment, as firecracker keeps its filters), and
//! those rules compiled with seccompiler into a stack of BPF filters.
//!
//! The stack (docs/POLICY.md has the full scheme):
//!
//! - **argument filters** (as many as needed): each judges the arguments of
//!   its own syscalls and *kills* on a value outside the profile; every other
//!   syscall it allows;
//! - an **errno filter**: clone3 gets `ENOSYS` (libc falls back to clone,
//!   whose flags the argument filters can read);
//! - the **allowlist**, installed last: every syscall of the profile allowed,
//!   anything else — and any other ABI — kills the process.
//!
//! The kernel runs every filter and takes the strictest answer, so the stack
//! allows exactly what all filters allow. That is what lets a policy of
//! thousands of argument rules be split into filters under seccompiler's
//! 4,096-instruction cap without dropping one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io;
use std::path::Path;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

use super::profile::{self, describe_args, Mode, Profile, ProfileError, Program};
use super::sys;
use super::syscalls::Arch;

/// Value of the `format` field.
pub const FORMAT: &str = "tresor-policy";
/// Newest policy version this tresor reads and the one it writes.
pub const VERSION: u32 = 1;
/// Largest filter seccompiler (and the kernel, `BPF_MAXINSNS`) accepts.
pub const MAX_FILTER_INSNS: usize = 4095;
/// The kernel's cap on a whole stack (`MAX_INSNS_PER_PATH`), counted in
/// instructions after its conversion to eBPF ([`kernel_len`]) plus
/// [`FILTER_OVERHEAD`] per filter.
pub const MAX_STACK_INSNS: usize = 32768;
/// Instructions the kernel charges per filter on top of its length.
pub const FILTER_OVERHEAD: usize = 4;
/// Most padding values [`Policy::pad_rules`] can generate.
pub const MAX_PAD_RULES: usize = 1 << 21;
/// ioctl type byte of the padding requests (`_IOC(_IOC_NONE, 0xEE, nr, size)`).
pub const PAD_IOCTL_TYPE: u32 = 0xEE;

/// Point values per argument rule: small enough that a rule is a short
/// chain, large enough that few rules are needed.
const CHUNK: usize = 32;
/// Runs of at least this many consecutive values are allowed as a range
/// (two comparisons) instead of one comparison per value.
const RANGE_MIN: u64 = 4;
/// All comparisons are on the low 32 bits: every argument judged here is an
/// `int`/`unsigned int` to the kernel (or, for mmap/mprotect `prot` and
/// clone `flags`, only low bits matter), so the upper half is ignored by the
/// kernel too and must not decide anything.
const ARG_LEN: SeccompCmpArgLen = SeccompCmpArgLen::Dword;
const U32: u64 = 0xffff_ffff;

const SOCK_FLAGS: u64 = (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64;
const PROT_WX: u64 = (libc::PROT_WRITE | libc::PROT_EXEC) as u64;
/// Namespace-creating clone flags, refused unless the profile saw them.
const NAMESPACE_FLAGS: &[(u64, &str)] = &[
    (libc::CLONE_NEWNS as u64, "CLONE_NEWNS"),
    (libc::CLONE_NEWCGROUP as u64, "CLONE_NEWCGROUP"),
    (libc::CLONE_NEWUTS as u64, "CLONE_NEWUTS"),
    (libc::CLONE_NEWIPC as u64, "CLONE_NEWIPC"),
    (libc::CLONE_NEWUSER as u64, "CLONE_NEWUSER"),
    (libc::CLONE_NEWPID as u64, "CLONE_NEWPID"),
    (libc::CLONE_NEWNET as u64, "CLONE_NEWNET"),
];

/// An argument the policy compares with recorded values.
struct ArgSpec {
    name: &'static str,
    index: u8,
    /// Bits that do not change what the call can do; compared without them.
    ignore: u64,
}

const fn arg(name: &'static str, index: u8) -> ArgSpec {
    ArgSpec {
        name,
        index,
        ignore: 0,
    }
}

/// Syscalls allowed only with recorded argument values (names as the
/// profiler records them).
fn value_args(syscall: &str) -> Option<&'static [ArgSpec]> {
    const SOCKET: &[ArgSpec] = &[
        arg("domain", 0),
        ArgSpec {
            name: "type",
            index: 1,
            ignore: SOCK_FLAGS,
        },
    ];
    const IOCTL: &[ArgSpec] = &[arg("request", 1)];
    const PRCTL: &[ArgSpec] = &[arg("option", 0)];
    const FCNTL: &[ArgSpec] = &[arg("cmd", 1)];
    const PERSONALITY: &[ArgSpec] = &[arg("persona", 0)];
    Some(match syscall {
        "socket" | "socketpair" => SOCKET,
        "ioctl" => IOCTL,
        "prctl" => PRCTL,
        "fcntl" => FCNTL,
        "personality" => PERSONALITY,
        _ => return None,
    })
}

/// Calls that error paths make, allowed in every policy: each is harmless
/// (it reads the caller's own state or changes only its own process) and
/// without them a handled refusal (EACCES, ENOENT, ENOMEM, EFBIG) kills
/// the analysis at the printing of the error instead — and the report
/// then names the wrong call (issue 13, class 7).
pub const BENIGN: &[(&str, &str)] = &[
    ("fcntl", "F_DUPFD_CLOEXEC, F_GETFD, F_SETFD, F_GETFL only: duplicate or inspect the caller's own descriptors (Python's traceback printer)"),
    ("rt_sigaction", "the caller's own signal handlers (error and exit paths)"),
    ("rt_sigprocmask", "the caller's own signal mask"),
    ("sigaltstack", "the caller's own signal stack (Rust, Go runtimes)"),
    ("getcwd", "the caller's own working directory (shells, error messages)"),
    ("mincore", "which of the caller's own pages are resident (GNU grep, allocators)"),
    ("sched_getaffinity", "which CPUs the caller may run on (thread pools size themselves)"),
    ("sched_yield", "give up the CPU"),
    ("getpid", "the caller's own pid"),
    ("gettid", "the caller's own thread id"),
    ("madvise", "advice about the caller's own memory (allocators returning memory)"),
];

/// The fcntl commands of [`BENIGN`].
const BENIGN_FCNTL: &[u32] = &[
    libc::F_DUPFD_CLOEXEC as u32,
    libc::F_GETFD as u32,
    libc::F_SETFD as u32,
    libc::F_GETFL as u32,
];

/// Syscalls with flag bits refused unless seen: the argument's name and index.
fn flag_arg(syscall: &str) -> Option<(&'static str, u8)> {
    match syscall {
        "mmap" | "mprotect" | "pkey_mprotect" => Some(("prot", 2)),
        "clone" => Some(("flags", 0)),
        // File modes: no setuid/setgid files, no device nodes (below).
        "chmod" | "fchmod" | "creat" | "mknod" => Some(("mode", 1)),
        "fchmodat" | "fchmodat2" | "open" | "mknodat" => Some(("mode", 2)),
        "openat" => Some(("mode", 3)),
        _ => None,
    }
}

/// Mode bits no analysis may set, whatever its profile: a setuid or
/// setgid file in `--out` would run with the analysis's (the caller's)
/// ids for anyone; a device node would reach the host's hardware. (With
/// no capability left the kernel refuses device nodes and strips
/// setuid bits on write anyway; the policy names the attempt.)
const MODE_SETID: &[(u64, &str)] = &[
    (libc::S_ISUID as u64, "S_ISUID"),
    (libc::S_ISGID as u64, "S_ISGID"),
];
/// The bit that character and block device types share (`S_IFCHR`;
/// `S_IFBLK` is `S_IFCHR|S_IFDIR`); fifos and sockets lack it.
const MODE_DEVICE: u64 = libc::S_IFCHR as u64;

/// Errors building, reading or compiling a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: io::Error },
    #[error("{path} is not a tresor policy or profile: {reason}")]
    NotAPolicy { path: String, reason: String },
    #[error("policy {path} has format version {found}; this tresor reads up to {VERSION} — upgrade tresor")]
    TooNew { path: String, found: u64 },
    #[error("policy {path} is invalid: {reason}")]
    Invalid { path: String, reason: String },
    #[error("cannot make a policy from this profile: {0}")]
    BadProfile(String),
    #[error("the profile is incomplete ({0}): the program may need syscalls it never reached; profile it again, or accept an incomplete profile explicitly")]
    Incomplete(String),
    #[error("cannot pad the policy: {0}")]
    Padding(String),
    #[error("the allowlist of {syscalls} syscalls needs {instructions} BPF instructions; a filter holds at most {MAX_FILTER_INSNS}")]
    AllowlistTooLarge {
        syscalls: usize,
        instructions: usize,
    },
    #[error("an argument rule of {syscall} needs {instructions} BPF instructions; a filter holds at most {MAX_FILTER_INSNS}")]
    RuleTooLarge {
        syscall: String,
        instructions: usize,
    },
    #[error("the policy needs {total} BPF instructions in {filters} filters as the kernel counts them (after conversion to eBPF, plus {FILTER_OVERHEAD} per filter); the kernel loads at most {MAX_STACK_INSNS} — record fewer argument values or pad less")]
    StackTooLarge { total: usize, filters: usize },
    #[error("seccompiler refused filter {index} ({what}): {error:?}")]
    Compile {
        index: usize,
        what: String,
        error: seccompiler::BackendError,
    },
}

/// What a rule does with a matching call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Allowed (subject to the rule's argument conditions).
    #[default]
    Allow,
    /// Fails with this errno, the process lives on.
    Errno(u32),
}

impl Action {
    fn is_allow(&self) -> bool {
        *self == Action::Allow
    }
}

/// Killed when `arg & mask == mask`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyFlags {
    pub arg: String,
    pub mask: u64,
    pub comment: String,
}

/// The rule for one syscall.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Number on the policy's architecture.
    pub nr: u32,
    /// Why the program needs it (from the profile).
    pub comment: String,
    #[serde(default, skip_serializing_if = "Action::is_allow")]
    pub action: Action,
    /// Allowed only with one of these argument tuples (argument name →
    /// value, low 32 bits); empty means any arguments.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub allow_args: BTreeSet<BTreeMap<String, u64>>,
    /// Flag combinations that kill even though the syscall is allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_flags: Vec<DenyFlags>,
}

impl Rule {
    fn allow(nr: u32, comment: impl Into<String>) -> Rule {
        Rule {
            nr,
            comment: comment.into(),
            action: Action::Allow,
            allow_args: BTreeSet::new(),
            deny_flags: Vec::new(),
        }
    }

    /// Rules this syscall contributes: one per allowed argument tuple (or
    /// one for the syscall itself) plus one per refused flag combination.
    pub fn rule_count(&self) -> usize {
        self.allow_args.len().max(1) + self.deny_flags.len()
    }
}

/// How [`Policy::from_profile`] builds a policy.
#[derive(Debug, Clone, Default)]
pub struct PolicyOptions {
    /// Accept a profile marked incomplete.
    pub allow_incomplete: bool,
    /// Add this many harmless ioctl request values (benchmarks and tests:
    /// a policy of 2,000+ rules), see [`Policy::pad_rules`].
    pub pad_rules: usize,
}

/// A seccomp policy: the syscalls a program may make and on what terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Always [`FORMAT`].
    pub format: String,
    /// At most [`VERSION`].
    pub version: u32,
    /// `x86_64` or `aarch64`; any other ABI is killed.
    pub arch: String,
    /// The program the profile was made of.
    pub program: Program,
    /// By syscall name; any syscall not listed kills the process.
    pub syscalls: BTreeMap<String, Rule>,
    /// Decisions and caveats for reviewers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

const EXEC_REASON: &str =
    "the runner installs the filter, then execs the program (execve, or execveat for fexecve)";
const CLONE3_REASON: &str = "answered ENOSYS: its flags live in memory a filter cannot read; libc falls back to clone, whose flags are checked";
const PAD_REASON: &str = "padding for benchmarks and tests: requests of ioctl type 0xEE, which no device tresor grants implements";

impl Policy {
    /// Builds the policy for `profile`: every syscall it used allowed,
    /// with argument conditions where it recorded values.
    pub fn from_profile(profile: &Profile, opts: &PolicyOptions) -> Result<Policy, PolicyError> {
        let arch = profile.arch().map_err(PolicyError::BadProfile)?;
        if !profile.complete && !opts.allow_incomplete {
            return Err(PolicyError::Incomplete(
                profile
                    .incomplete_reason
                    .clone()
                    .unwrap_or_else(|| "no reason given".into()),
            ));
        }
        let mut notes = Vec::new();
        if !profile.complete {
            notes.push(format!(
                "made from an INCOMPLETE profile: {}",
                profile.incomplete_reason.as_deref().unwrap_or("?")
            ));
        }
        let args_recorded = profile.mode != Mode::Syscalls;
        if !args_recorded {
            notes.push("the profile recorded no argument values (mode syscalls): socket, ioctl, prctl, fcntl and personality are allowed with any arguments".into());
        }
        let mut syscalls = BTreeMap::new();
        for (name, e) in &profile.syscalls {
            if name == "clone3" {
                continue; // always answered ENOSYS, below
            }
            let comment = match (&e.added, &e.comment) {
                (Some(why), _) | (None, Some(why)) => why.clone(),
                (None, None) => format!("used by the program ({} calls while profiling)", e.count),
            };
            let mut rule = Rule::allow(e.nr, comment);
            if let Some(specs) = value_args(name) {
                if e.args_truncated {
                    notes.push(format!("{name}: more distinct argument values were seen than the profile keeps; allowed with any arguments"));
                } else if args_recorded && e.args.is_empty() {
                    notes.push(format!(
                        "{name}: no argument values recorded; allowed with any arguments"
                    ));
                } else if args_recorded {
                    for t in &e.args {
                        rule.allow_args.insert(
                            normalise_tuple(specs, t)
                                .map_err(|r| PolicyError::BadProfile(format!("{name}: {r}")))?,
                        );
                    }
                }
            }
            if let Some((arg, _)) = flag_arg(name) {
                rule.deny_flags = default_deny_flags(name, arg, profile, &e.args);
            }
            syscalls.insert(name.clone(), rule);
        }
        // What error paths do (docs/POLICY.md "Benign calls"): allowed so
        // that a refusal the analysis handles (EACCES, ENOENT, ENOMEM,
        // EFBIG) is reported by the analysis as what it was, not as a kill
        // of the benign call that prints the error.
        for (name, why) in BENIGN {
            let Some(nr) = arch.number(name) else {
                continue;
            };
            if let Some(r) = syscalls.get_mut(*name) {
                if *name == "fcntl" && !r.allow_args.is_empty() {
                    for cmd in BENIGN_FCNTL {
                        r.allow_args
                            .insert(BTreeMap::from([("cmd".to_string(), u64::from(*cmd))]));
                    }
                }
                continue;
            }
            let mut rule = Rule::allow(nr, format!("(benign) {why}"));
            if *name == "fcntl" {
                rule.allow_args = BENIGN_FCNTL
                    .iter()
                    .map(|c| BTreeMap::from([("cmd".to_string(), u64::from(*c))]))
                    .collect();
            }
            syscalls.insert(name.to_string(), rule);
        }
        // The profiler adds these; a hand-made or old profile may lack them.
        for (name, why) in profile::ALWAYS_ADDED {
            if let Some(nr) = arch.number(name) {
                if !syscalls.contains_key(*name) {
                    notes.push(format!("{name} added: the profile lacks it ({why})"));
                    syscalls.insert(name.to_string(), Rule::allow(nr, *why));
                }
            }
        }
        for name in ["execve", "execveat"] {
            if let Some(nr) = arch.number(name) {
                syscalls
                    .entry(name.to_string())
                    .or_insert_with(|| Rule::allow(nr, EXEC_REASON));
            }
        }
        if let Some(nr) = arch.number("clone3") {
            syscalls.insert(
                "clone3".into(),
                Rule {
                    action: Action::Errno(libc::ENOSYS as u32),
                    ..Rule::allow(nr, CLONE3_REASON)
                },
            );
        }
        if !profile.foreign_syscalls.is_empty() {
            notes.push(format!(
                "the profiled run made {} syscall(s) through another ABI; the policy kills them",
                profile.foreign_syscalls.values().sum::<u64>()
            ));
        }
        let mut policy = Policy {
            format: FORMAT.into(),
            version: VERSION,
            arch: arch.name().into(),
            program: profile.program.clone(),
            syscalls,
            notes,
        };
        if opts.pad_rules > 0 {
            policy.pad_rules(opts.pad_rules)?;
        }
        Ok(policy)
    }

    /// The architecture, checked.
    pub fn arch(&self) -> Result<Arch, PolicyError> {
        Arch::from_name(&self.arch).ok_or_else(|| PolicyError::Invalid {
            path: "policy".into(),
            reason: format!("unknown architecture {:?}", self.arch),
        })
    }

    /// Adds `n` harmless allowed ioctl requests (`_IOC(_IOC_NONE, 0xEE, nr,
    /// size)`, even `nr` only, so no two are adjacent and none merge into a
    /// range): a big policy for benchmarks and tests, where each value is a
    /// rule the kernel must check. A profile without ioctl gets ioctl
    /// allowed for those requests only.
    pub fn pad_rules(&mut self, n: usize) -> Result<(), PolicyError> {
        if n > MAX_PAD_RULES {
            return Err(PolicyError::Padding(format!(
                "at most {MAX_PAD_RULES} padding rules"
            )));
        }
        let nr = self
            .arch()?
            .number("ioctl")
            .ok_or_else(|| PolicyError::Padding("no ioctl on this architecture".into()))?;
        let rule = match self.syscalls.get_mut("ioctl") {
            Some(r) if r.allow_args.is_empty() => {
                return Err(PolicyError::Padding(
                    "ioctl is allowed with any request here; padding would restrict it".into(),
                ))
            }
            Some(r) => r,
            None => self
                .syscalls
                .entry("ioctl".into())
                .or_insert_with(|| Rule::allow(nr, PAD_REASON)),
        };
        let (mut added, mut i) = (0, 0);
        while added < n && i < MAX_PAD_RULES {
            let v = BTreeMap::from([("request".to_string(), u64::from(pad_value(i)))]);
            i += 1;
            if rule.allow_args.insert(v) {
                added += 1;
            }
        }
        self.notes.push(format!(
            "padded with {added} ioctl request values of type {PAD_IOCTL_TYPE:#x}"
        ));
        Ok(())
    }

    /// Number of rules (see [`Rule::rule_count`]).
    pub fn rule_count(&self) -> usize {
        self.syscalls.values().map(Rule::rule_count).sum()
    }

    /// Compiles the policy into its filter stack: a refused call kills.
    pub fn compile(&self) -> Result<CompiledPolicy, PolicyError> {
        compile(self, SeccompAction::KillProcess)
    }

    /// Compiles the policy for `tresor run --audit`: a refused call stops
    /// at the tracer ([`AUDIT_TRACE_DATA`]), which records it and lets it
    /// run; everything else is exactly as [`Policy::compile`].
    pub fn compile_audit(&self) -> Result<CompiledPolicy, PolicyError> {
        compile(self, SeccompAction::Trace(AUDIT_TRACE_DATA))
    }

    /// Compiles the policy and reports its size.
    pub fn stats(&self) -> Result<PolicyStats, PolicyError> {
        Ok(self.compile()?.stats(self))
    }

    /// Sets `no_new_privs` and loads the filters into the calling thread:
    /// from now on it, and whatever it execs, is confined. For the runner,
    /// right before execve; never call it in a process you want back.
    pub fn install(&self) -> io::Result<()> {
        let compiled = self.compile().map_err(io::Error::other)?;
        compiled.install()
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        // Serialising plain maps, strings and numbers cannot fail.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Parses and checks a policy; `path` names it in errors.
    pub fn from_json(text: &str, path: &str) -> Result<Policy, PolicyError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| PolicyError::NotAPolicy {
                path: path.into(),
                reason: format!("not JSON ({e})"),
            })?;
        Policy::from_value(value, path)
    }

    fn from_value(value: serde_json::Value, path: &str) -> Result<Policy, PolicyError> {
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(PolicyError::NotAPolicy {
                path: path.into(),
                reason: format!("missing \"format\": \"{FORMAT}\""),
            });
        }
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v > u64::from(VERSION) => {
                return Err(PolicyError::TooNew {
                    path: path.into(),
                    found: v,
                })
            }
            Some(v) if v >= 1 => {}
            _ => {
                return Err(PolicyError::Invalid {
                    path: path.into(),
                    reason: "\"version\" must be a positive integer".into(),
                })
            }
        }
        let p: Policy = serde_json::from_value(value).map_err(|e| PolicyError::Invalid {
            path: path.into(),
            reason: e.to_string(),
        })?;
        p.validate().map_err(|reason| PolicyError::Invalid {
            path: path.into(),
            reason,
        })?;
        Ok(p)
    }

    /// Reads a policy file, or makes the policy of a profile file (told
    /// apart by their `format` field).
    pub fn load(path: &Path, opts: &PolicyOptions) -> Result<Policy, PolicyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| PolicyError::Read {
            path: shown.clone(),
            error,
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| PolicyError::NotAPolicy {
                path: shown.clone(),
                reason: format!("not JSON ({e})"),
            })?;
        if value.get("format").and_then(|f| f.as_str()) == Some(profile::FORMAT) {
            let p = Profile::from_json(&text, &shown)?;
            return Policy::from_profile(&p, opts);
        }
        let mut p = Policy::from_value(value, &shown)?;
        if opts.pad_rules > 0 {
            p.pad_rules(opts.pad_rules)?;
        }
        Ok(p)
    }

    /// Checks what serde cannot.
    fn validate(&self) -> Result<(), String> {
        let arch = Arch::from_name(&self.arch)
            .ok_or_else(|| format!("unknown architecture {:?}", self.arch))?;
        for (name, r) in &self.syscalls {
            match arch.parse_display_name(name) {
                Some(nr) if nr == r.nr => {}
                Some(nr) => {
                    return Err(format!(
                        "syscall {name} has number {} but is {nr} on {arch}",
                        r.nr
                    ))
                }
                None => return Err(format!("unknown syscall name {name:?} for {arch}")),
            }
            if r.comment.trim().is_empty() {
                return Err(format!("{name}: every rule needs a \"comment\" saying why"));
            }
            if let Action::Errno(e) = r.action {
                if !(1..=4095).contains(&e) {
                    return Err(format!("{name}: errno {e} out of range 1..4095"));
                }
                if !r.allow_args.is_empty() || !r.deny_flags.is_empty() {
                    return Err(format!(
                        "{name}: an errno rule takes no argument conditions"
                    ));
                }
            } else if name == "clone3" {
                return Err("clone3 must be answered with an errno (ENOSYS): its flags cannot be checked by a filter".into());
            }
            if !r.allow_args.is_empty() {
                let specs = value_args(name)
                    .ok_or_else(|| format!("{name}: tresor checks no argument values of it"))?;
                for t in &r.allow_args {
                    normalise_tuple(specs, t).map_err(|e| format!("{name}: {e}"))?;
                }
            }
            for d in &r.deny_flags {
                match flag_arg(name) {
                    Some((arg, _)) if arg == d.arg => {}
                    _ => return Err(format!("{name}: no flag argument {:?}", d.arg)),
                }
                if d.mask == 0 || d.mask > U32 {
                    return Err(format!(
                        "{name}: deny mask {:#x} must be non-zero and 32-bit",
                        d.mask
                    ));
                }
            }
        }
        Ok(())
    }

    /// Human-readable rules for `tresor policy show`: one line per syscall
    /// with its conditions and reason, then the filters.
    pub fn render(&self, compiled: &CompiledPolicy) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "program  {}", self.program.path);
        let _ = writeln!(
            o,
            "sha256   {}",
            self.program.sha256.as_deref().unwrap_or("unknown")
        );
        let _ = writeln!(
            o,
            "arch     {}; any other ABI (i386 int 0x80, x32) and any syscall not listed: kill the process (SIGSYS)",
            self.arch
        );
        let _ = writeln!(o, "\n{:<22} {:>4}  rule  # why", "syscall", "nr");
        for (name, r) in &self.syscalls {
            let _ = writeln!(
                o,
                "{name:<22} {:>4}  {}  # {}",
                r.nr,
                describe_rule(name, r),
                r.comment
            );
        }
        let s = compiled.stats(self);
        let _ = writeln!(
            o,
            "\n{} syscalls, {} rules ({} argument values, {} flag checks)",
            s.syscalls, s.rules, s.argument_values, s.flag_checks
        );
        let _ = writeln!(
            o,
            "{} filters, {} instructions ({} as the kernel counts them, of at most {MAX_STACK_INSNS}), installed in this order:",
            s.filters.len(),
            s.instructions,
            s.stack_instructions
        );
        for (i, f) in s.filters.iter().enumerate() {
            let _ = writeln!(
                o,
                "  filter {}: {:>5} instructions  {}",
                i + 1,
                f.instructions,
                f.describe()
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(o, "\nnotes");
            for n in &self.notes {
                let _ = writeln!(o, "  - {n}");
            }
        }
        o
    }
}

/// Values the policy compares: only the spec's names, low 32 bits, ignored
/// bits cleared.
fn normalise_tuple(
    specs: &[ArgSpec],
    t: &BTreeMap<String, u64>,
) -> Result<BTreeMap<String, u64>, String> {
    if t.len() != specs.len() || specs.iter().any(|s| !t.contains_key(s.name)) {
        let want: Vec<_> = specs.iter().map(|s| s.name).collect();
        let got: Vec<_> = t.keys().collect();
        return Err(format!("argument values must name {want:?}, got {got:?}"));
    }
    Ok(specs
        .iter()
        .map(|s| (s.name.to_string(), t[s.name] & U32 & !s.ignore))
        .collect())
}

fn default_deny_flags(
    name: &str,
    arg: &str,
    profile: &Profile,
    seen: &BTreeSet<BTreeMap<String, u64>>,
) -> Vec<DenyFlags> {
    if name == "clone" {
        let seen_bits = seen.iter().filter_map(|t| t.get(arg)).fold(0, |a, v| a | v);
        NAMESPACE_FLAGS
            .iter()
            .filter(|(bit, _)| seen_bits & bit == 0)
            .map(|(bit, flag)| DenyFlags {
                arg: arg.into(),
                mask: *bit,
                comment: format!("{flag} creates a namespace; the profile never did"),
            })
            .collect()
    } else if arg == "mode" {
        let mut v: Vec<DenyFlags> = MODE_SETID
            .iter()
            .map(|(bit, flag)| DenyFlags {
                arg: arg.into(),
                mask: *bit,
                comment: format!("{flag}: no analysis makes setuid or setgid files"),
            })
            .collect();
        if name.starts_with("mknod") {
            v.push(DenyFlags {
                arg: arg.into(),
                mask: MODE_DEVICE,
                comment: "a character or block device node; no analysis makes one".into(),
            });
        }
        v
    } else if profile.write_exec_memory {
        Vec::new()
    } else {
        vec![DenyFlags {
            arg: arg.into(),
            mask: PROT_WX,
            comment: "writable and executable memory at once; the profile never asked for it"
                .into(),
        }]
    }
}

/// The `i`th padding request: `_IOC(_IOC_NONE, 0xEE, 2·(i mod 128), i / 128)`.
pub fn pad_value(i: usize) -> u32 {
    let i = (i % MAX_PAD_RULES) as u32;
    ((i / 128) << 16) | (PAD_IOCTL_TYPE << 8) | ((i % 128) * 2)
}

fn describe_rule(name: &str, r: &Rule) -> String {
    const SHOWN: usize = 8;
    let mut s = match r.action {
        Action::Errno(e) => return format!("errno {}", errno_name(e)),
        Action::Allow if r.allow_args.is_empty() => "allow".to_string(),
        Action::Allow => {
            let mut v: Vec<String> = r
                .allow_args
                .iter()
                .take(SHOWN)
                .map(|t| describe_args(name, t))
                .collect();
            if r.allow_args.len() > SHOWN {
                v.push(format!("… {} more", r.allow_args.len() - SHOWN));
            }
            let flags = match value_args(name) {
                Some(specs) if specs.iter().any(|s| s.ignore != 0) => {
                    " (type without SOCK_NONBLOCK|SOCK_CLOEXEC)"
                }
                _ => "",
            };
            format!("allow if {}{flags}", v.join(" | "))
        }
    };
    // One clause per argument: "kill if flags has CLONE_NEWNS or CLONE_NEWPID".
    let mut by_arg: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for d in &r.deny_flags {
        by_arg
            .entry(d.arg.as_str())
            .or_default()
            .push(flag_names(name, d.mask));
    }
    for (arg, masks) in by_arg {
        let _ = write!(s, "; kill if {arg} has {}", masks.join(" or "));
    }
    s
}

fn flag_names(syscall: &str, mask: u64) -> String {
    if syscall == "clone" {
        if let Some((_, n)) = NAMESPACE_FLAGS.iter().find(|(b, _)| *b == mask) {
            return (*n).to_string();
        }
    } else if mask == PROT_WX {
        return "PROT_WRITE|PROT_EXEC".into();
    } else if let Some((_, n)) = MODE_SETID.iter().find(|(b, _)| *b == mask) {
        return (*n).to_string();
    } else if mask == MODE_DEVICE {
        return "S_IFCHR (a device)".into();
    }
    format!("{mask:#x}")
}

fn errno_name(e: u32) -> String {
    if e == libc::ENOSYS as u32 {
        "ENOSYS".into()
    } else {
        e.to_string()
    }
}

// ---------------------------------------------------------------------------
// Compilation

/// What a filter of the stack does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterKind {
    /// Kills on argument values outside the profile for its syscalls;
    /// allows every other syscall.
    Arguments,
    /// Answers its syscalls with this errno; allows every other syscall.
    Errno(u32),
    /// Allows the policy's syscalls; kills everything else.
    Allowlist,
}

/// One compiled filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterStats {
    pub kind: FilterKind,
    /// The syscalls it judges (for the allowlist: all it allows).
    pub syscalls: Vec<String>,
    /// BPF instructions (< 4,096).
    pub instructions: usize,
}

impl FilterStats {
    /// One line for `policy show`.
    pub fn describe(&self) -> String {
        match &self.kind {
            FilterKind::Arguments => format!(
                "arguments of {}; kills values outside the profile, allows all other syscalls",
                self.syscalls.join(", ")
            ),
            FilterKind::Errno(e) => format!(
                "errno {} for {}; allows all other syscalls",
                errno_name(*e),
                self.syscalls.join(", ")
            ),
            FilterKind::Allowlist => format!(
                "allowlist of {} syscalls; kills every other syscall and ABI",
                self.syscalls.len()
            ),
        }
    }
}

/// Size of a compiled policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyStats {
    pub syscalls: usize,
    /// See [`Rule::rule_count`].
    pub rules: usize,
    /// Allowed argument tuples, over all syscalls.
    pub argument_values: usize,
    /// Refused flag combinations.
    pub flag_checks: usize,
    /// In install order.
    pub filters: Vec<FilterStats>,
    /// Sum of the filters' lengths.
    pub instructions: usize,
    /// What the kernel counts against [`MAX_STACK_INSNS`]: the filters'
    /// eBPF lengths ([`kernel_len`]) plus [`FILTER_OVERHEAD`] each.
    pub stack_instructions: usize,
}

/// A policy compiled into its filters, ready to install.
pub struct CompiledPolicy {
    arch: Arch,
    filters: Vec<FilterStats>,
    programs: Vec<Vec<libc::sock_filter>>,
}

impl std::fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPolicy")
            .field("arch", &self.arch)
            .field("filters", &self.filters)
            .finish()
    }
}

/// One kill clause of an argument filter.
struct Clause {
    rule: SeccompRule,
    /// Its BPF length as seccompiler emits it.
    len: usize,
}

fn cond(index: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, PolicyError> {
    // Only fails for an argument index above 5; ours come from fixed tables.
    SeccompCondition::new(index, ARG_LEN, op, value).map_err(|error| PolicyError::Compile {
        index: 0,
        what: "argument condition".into(),
        error,
    })
}

fn clause(conditions: Vec<SeccompCondition>) -> Result<Clause, PolicyError> {
    // A clause with no condition would mean "always"; say it explicitly,
    // as seccompiler refuses empty rules.
    let conditions = if conditions.is_empty() {
        vec![cond(0, SeccompCmpOp::Ge, 0)?]
    } else {
        conditions
    };
    let rule = SeccompRule::new(conditions).map_err(|error| PolicyError::Compile {
        index: 0,
        what: "argument rule".into(),
        error,
    })?;
    let len = BpfProgram::from(rule.clone()).len();
    Ok(Clause { rule, len })
}

/// Kill clauses for "argument `index` is not one of `allowed`" under
/// `prefix` (conditions that all hold). The 32-bit value space is cut into
/// intervals: runs of allowed values are left out whole (as ranges); each
/// interval between them holds at most [`CHUNK`] allowed points and kills
/// `lo <= v <= hi && v != p1 && v != p2 …`. The clauses are independent, so
/// they may land in different filters.
fn not_in_set(
    index: u8,
    allowed: &BTreeSet<u64>,
    prefix: &[SeccompCondition],
    out: &mut Vec<Clause>,
) -> Result<(), PolicyError> {
    // Maximal runs of consecutive values.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &v in allowed {
        match runs.last_mut() {
            Some((_, hi)) if *hi + 1 == v => *hi = v,
            _ => runs.push((v, v)),
        }
    }
    // Segments of the value space between the long runs, with the points in them.
    let mut segments: Vec<(u64, u64, Vec<u64>)> = Vec::new();
    let mut lo = 0u64;
    let mut points = Vec::new();
    for (a, b) in runs {
        if b - a + 1 >= RANGE_MIN {
            if a > lo {
                segments.push((lo, a - 1, std::mem::take(&mut points)));
            }
            lo = b + 1;
        } else {
            points.extend(a..=b);
        }
    }
    if lo <= U32 {
        segments.push((lo, U32, points));
    }
    for (seg_lo, seg_hi, points) in segments {
        let chunks: Vec<&[u64]> = if points.is_empty() {
            vec![&[]]
        } else {
            points.chunks(CHUNK).collect()
        };
        for (i, chunk) in chunks.iter().enumerate() {
            let lo = if i == 0 { seg_lo } else { chunk[0] };
            let hi = match chunks.get(i + 1) {
                Some(next) => next[0] - 1,
                None => seg_hi,
            };
            // seccompiler evaluates a rule's conditions last to first: the
            // interval bounds first, so a value outside costs two compares.
            let mut c = chunk
                .iter()
                .map(|&p| cond(index, SeccompCmpOp::Ne, p))
                .collect::<Result<Vec<_>, _>>()?;
            c.extend(prefix.iter().cloned());
            if lo > 0 {
                c.push(cond(index, SeccompCmpOp::Ge, lo)?);
            }
            if hi < U32 {
                c.push(cond(index, SeccompCmpOp::Le, hi)?);
            }
            out.push(clause(c)?);
        }
    }
    Ok(())
}

/// Every variant of `v` with any of the `ignore` bits set.
fn with_ignored_bits(v: u64, ignore: u64) -> Vec<u64> {
    let bits: Vec<u64> = (0..32)
        .map(|b| 1u64 << b)
        .filter(|b| ignore & b != 0)
        .collect();
    (0..1u64 << bits.len())
        .map(|m| {
            bits.iter()
                .enumerate()
                .filter(|(i, _)| m & (1 << i) != 0)
                .fold(v, |acc, (_, b)| acc | b)
        })
        .collect()
}

/// Kill clauses for "the argument tuple is none of `tuples`": the first
/// argument outside its values, or, for each of its values, the rest of the
/// tuple outside what goes with it.
fn not_in_tuples(
    specs: &[ArgSpec],
    tuples: &[BTreeMap<String, u64>],
    prefix: &[SeccompCondition],
    out: &mut Vec<Clause>,
) -> Result<(), PolicyError> {
    let Some((first, rest)) = specs.split_first() else {
        return Ok(());
    };
    let mut by_value: BTreeMap<u64, Vec<BTreeMap<String, u64>>> = BTreeMap::new();
    for t in tuples {
        let v = t.get(first.name).copied().unwrap_or(0) & U32 & !first.ignore;
        by_value.entry(v).or_default().push(t.clone());
    }
    let allowed: BTreeSet<u64> = by_value
        .keys()
        .flat_map(|&v| with_ignored_bits(v, first.ignore))
        .collect();
    not_in_set(first.index, &allowed, prefix, out)?;
    if rest.is_empty() {
        return Ok(());
    }
    for (v, sub) in by_value {
        let mut p = prefix.to_vec();
        p.push(cond(
            first.index,
            SeccompCmpOp::MaskedEq(U32 & !first.ignore),
            v,
        )?);
        not_in_tuples(rest, &sub, &p, out)?;
    }
    Ok(())
}

/// The kill clauses of one syscall's rule.
fn clauses(name: &str, r: &Rule) -> Result<Vec<Clause>, PolicyError> {
    let mut out = Vec::new();
    if r.action != Action::Allow {
        return Ok(out);
    }
    if !r.allow_args.is_empty() {
        if let Some(specs) = value_args(name) {
            let tuples: Vec<_> = r.allow_args.iter().cloned().collect();
            not_in_tuples(specs, &tuples, &[], &mut out)?;
        }
    }
    if let Some((_, index)) = flag_arg(name) {
        for d in &r.deny_flags {
            let m = d.mask & U32;
            out.push(clause(vec![cond(index, SeccompCmpOp::MaskedEq(m), m)?])?);
        }
    }
    Ok(out)
}

fn target(arch: Arch) -> TargetArch {
    match arch {
        Arch::X86_64 => TargetArch::x86_64,
        Arch::Aarch64 => TargetArch::aarch64,
    }
}

/// Length of a seccompiler filter: arch check (3), load nr (1), per syscall
/// a compare, its rules each followed by a return, a return; a final return.
fn filter_len(blocks: impl Iterator<Item = usize>) -> usize {
    5 + blocks.sum::<usize>()
}

fn block_len(rule_lens: impl Iterator<Item = usize>) -> usize {
    2 + rule_lens.map(|l| l + 1).sum::<usize>()
}

fn build(
    index: usize,
    what: &str,
    arch: Arch,
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<Vec<libc::sock_filter>, PolicyError> {
    let err = |error| PolicyError::Compile {
        index,
        what: what.to_string(),
        error,
    };
    let filter = SeccompFilter::new(rules, mismatch, matched, target(arch)).map_err(err)?;
    let prog: BpfProgram = filter.try_into().map_err(err)?;
    Ok(prog
        .into_iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect())
}

/// The `SECCOMP_RET_DATA` of an audit policy's refusals, so the tracer
/// can tell them from anything else.
pub const AUDIT_TRACE_DATA: u32 = 0x7e5;

/// The `SECCOMP_RET_DATA` of a large allocation reported to the
/// supervisor (see [`CompiledPolicy::watch_allocations`]).
pub const ALLOCATION_TRACE_DATA: u32 = 0x7e6;

/// Compiles `policy`; `deny` is what a refused call gets.
fn compile(policy: &Policy, deny: SeccompAction) -> Result<CompiledPolicy, PolicyError> {
    let arch = policy.arch()?;
    // Argument filters: syscall by syscall, clause by clause, filled up to
    // the cap; a syscall whose clauses do not fit continues in the next
    // filter (its clauses are independent kills, so that is exact).
    type Group = Vec<(String, u32, Vec<Clause>)>;
    let mut groups: Vec<Group> = Vec::new();
    let mut cur: Group = Vec::new();
    let mut cur_len = filter_len(std::iter::empty());
    for (name, r) in &policy.syscalls {
        for c in clauses(name, r)? {
            let alone = filter_len(std::iter::once(block_len(std::iter::once(c.len))));
            if alone > MAX_FILTER_INSNS {
                return Err(PolicyError::RuleTooLarge {
                    syscall: name.clone(),
                    instructions: alone,
                });
            }
            let same = cur.last().is_some_and(|(n, _, _)| n == name);
            let cost = c.len + 1 + if same { 0 } else { 2 };
            if cur_len + cost > MAX_FILTER_INSNS {
                groups.push(std::mem::take(&mut cur));
                cur_len = filter_len(std::iter::empty());
            }
            let same = cur.last().is_some_and(|(n, _, _)| n == name);
            cur_len += c.len + 1 + if same { 0 } else { 2 };
            match cur.last_mut() {
                Some((n, _, cs)) if n == name => cs.push(c),
                _ => cur.push((name.clone(), r.nr, vec![c])),
            }
        }
    }
    if !cur.is_empty() {
        groups.push(cur);
    }

    let mut filters = Vec::new();
    let mut programs = Vec::new();
    for g in groups {
        let index = filters.len() + 1;
        let names: Vec<String> = g.iter().map(|(n, _, _)| n.clone()).collect();
        let rules: BTreeMap<i64, Vec<SeccompRule>> = g
            .into_iter()
            .map(|(_, nr, cs)| (i64::from(nr), cs.into_iter().map(|c| c.rule).collect()))
            .collect();
        let prog = build(
            index,
            "arguments",
            arch,
            rules,
            SeccompAction::Allow,
            deny.clone(),
        )?;
        filters.push(FilterStats {
            kind: FilterKind::Arguments,
            syscalls: names,
            instructions: prog.len(),
        });
        programs.push(prog);
    }

    // Errno filters, one per errno value.
    let mut by_errno: BTreeMap<u32, Vec<(&String, u32)>> = BTreeMap::new();
    for (name, r) in &policy.syscalls {
        if let Action::Errno(e) = r.action {
            by_errno.entry(e).or_default().push((name, r.nr));
        }
    }
    for (e, list) in by_errno {
        let index = filters.len() + 1;
        let rules = list
            .iter()
            .map(|(_, nr)| (i64::from(*nr), vec![]))
            .collect();
        let prog = build(
            index,
            "errno",
            arch,
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(e),
        )?;
        filters.push(FilterStats {
            kind: FilterKind::Errno(e),
            syscalls: list.iter().map(|(n, _)| (*n).clone()).collect(),
            instructions: prog.len(),
        });
        programs.push(prog);
    }

    // The allowlist last: once it is loaded, seccomp(2) itself may be
    // killed, and only execve remains to be called.
    let n = policy.syscalls.len();
    let need = filter_len(std::iter::repeat_n(5, n));
    if need > MAX_FILTER_INSNS {
        return Err(PolicyError::AllowlistTooLarge {
            syscalls: n,
            instructions: need,
        });
    }
    let rules = policy
        .syscalls
        .values()
        .map(|r| (i64::from(r.nr), vec![]))
        .collect();
    let index = filters.len() + 1;
    let prog = build(index, "allowlist", arch, rules, deny, SeccompAction::Allow)?;
    filters.push(FilterStats {
        kind: FilterKind::Allowlist,
        syscalls: policy.syscalls.keys().cloned().collect(),
        instructions: prog.len(),
    });
    programs.push(prog);

    let total = stack_len(&programs);
    if total > MAX_STACK_INSNS {
        return Err(PolicyError::StackTooLarge {
            total,
            filters: programs.len(),
        });
    }
    Ok(CompiledPolicy {
        arch,
        filters,
        programs,
    })
}

impl CompiledPolicy {
    /// The filters, in install order.
    pub fn filters(&self) -> &[FilterStats] {
        &self.filters
    }

    /// Sizes of the policy and of its filters.
    pub fn stats(&self, policy: &Policy) -> PolicyStats {
        let instructions = self.programs.iter().map(Vec::len).sum();
        PolicyStats {
            syscalls: policy.syscalls.len(),
            rules: policy.rule_count(),
            argument_values: policy.syscalls.values().map(|r| r.allow_args.len()).sum(),
            flag_checks: policy.syscalls.values().map(|r| r.deny_flags.len()).sum(),
            filters: self.filters.clone(),
            instructions,
            stack_instructions: stack_len(&self.programs),
        }
    }

    /// Adds a filter that stops `mmap` and `mremap` asking for at least
    /// `bytes` at once at the supervisor (`SECCOMP_RET_TRACE` with
    /// [`ALLOCATION_TRACE_DATA`]; it resumes them unchanged), so that one
    /// allocation refused by the memory limit is reported as the limit
    /// (docs/RUN.md). Calls outside the policy are still killed: the kill
    /// of another filter wins over a trace.
    pub fn watch_allocations(&mut self, bytes: u64) -> Result<(), PolicyError> {
        let arch = self.arch;
        let mut rules = BTreeMap::new();
        for (name, arg) in [("mmap", 1), ("mmap2", 1), ("mremap", 2)] {
            if let Some(nr) = arch.number(name) {
                let c = cond(arg, SeccompCmpOp::Ge, bytes)?;
                let rule = SeccompRule::new(vec![c]).map_err(|error| PolicyError::Compile {
                    index: 0,
                    what: "allocation watch".into(),
                    error,
                })?;
                rules.insert(i64::from(nr), vec![rule]);
            }
        }
        let prog = build(
            self.programs.len() + 1,
            "allocation watch",
            arch,
            rules,
            SeccompAction::Allow,
            SeccompAction::Trace(ALLOCATION_TRACE_DATA),
        )?;
        // Before the allowlist, which stays the last filter loaded.
        let at = self.programs.len().saturating_sub(1);
        self.programs.insert(at, prog);
        Ok(())
    }

    /// Sets `no_new_privs` and loads the filters into the calling thread.
    /// Allocates nothing, so a forked child of a threaded parent may call
    /// it; fails (before loading anything) on another architecture.
    pub fn install(&self) -> io::Result<()> {
        if Arch::native() != Some(self.arch) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the policy is for another architecture",
            ));
        }
        sys::install_seccomp_filters(&self.programs)
    }

    /// What the kernel would answer to a syscall (`SECCOMP_RET_*`, with the
    /// errno in the low bits), found by running every filter on it the way
    /// the kernel does: the strictest answer wins. For tests and reports.
    pub fn evaluate(&self, audit_arch: u32, nr: u32, args: [u64; 6]) -> Result<u32, String> {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&audit_arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let mut best: Option<u32> = None;
        for (i, p) in self.programs.iter().enumerate() {
            let r = run_bpf(p, &data).map_err(|e| format!("filter {}: {e}", i + 1))?;
            let action = |v: u32| (v & libc::SECCOMP_RET_ACTION_FULL) as i32;
            best = match best {
                Some(b) if action(b) <= action(r) => Some(b),
                _ => Some(r),
            };
        }
        best.ok_or_else(|| "no filters".to_string())
    }
}

/// What the kernel charges a stack: each filter's eBPF length plus
/// [`FILTER_OVERHEAD`] (charged on all but the newest filter; counted on all
/// here, to stay on the safe side).
fn stack_len(programs: &[Vec<libc::sock_filter>]) -> usize {
    programs
        .iter()
        .map(|p| kernel_len(p) + FILTER_OVERHEAD)
        .sum()
}

/// Length of a seccomp filter after the kernel converts it to eBPF
/// (`bpf_convert_filter`, net/core/filter.c): its stack limit counts these,
/// not the classic instructions. A 3-instruction prologue; a return becomes
/// a move and an exit; a conditional jump whose immediate is negative as an
/// `s32` needs a move first, and one with both branches non-zero becomes a
/// jump plus a `ja`; loads, ALU and `ja` stay one instruction.
pub fn kernel_len(prog: &[libc::sock_filter]) -> usize {
    3 + prog
        .iter()
        .map(|i| {
            let code = u32::from(i.code);
            match code & 0x07 {
                c if c == libc::BPF_RET => 2,
                c if c == libc::BPF_JMP && code & 0xf0 != libc::BPF_JA => {
                    let imm = usize::from(code & 0x08 == libc::BPF_K && (i.k as i32) < 0);
                    let both = i.jt != 0 && i.jf != 0;
                    // JSET cannot be inverted: two instructions when jf != 0.
                    let jset_split = code & 0xf0 == libc::BPF_JSET && i.jf != 0;
                    imm + if both || jset_split { 2 } else { 1 }
                }
                _ => 1,
            }
        })
        .sum::<usize>()
}

/// A classic-BPF interpreter for the instructions seccompiler emits.
fn run_bpf(prog: &[libc::sock_filter], data: &[u8; 64]) -> Result<u32, String> {
    const LD_W_ABS: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    const AND_K: u32 = libc::BPF_ALU | libc::BPF_AND | libc::BPF_K;
    const JA: u32 = libc::BPF_JMP | libc::BPF_JA;
    const JEQ: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    const JGT: u32 = libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K;
    const JGE: u32 = libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K;
    const RET_K: u32 = libc::BPF_RET | libc::BPF_K;
    let mut a = 0u32;
    let mut pc = 0usize;
    loop {
        let ins = prog
            .get(pc)
            .ok_or_else(|| format!("jumped past the end at {pc}"))?;
        let k = ins.k;
        let jump = |taken: bool| 1 + usize::from(if taken { ins.jt } else { ins.jf });
        pc += match u32::from(ins.code) {
            LD_W_ABS => {
                let o = k as usize;
                let w = data
                    .get(o..o + 4)
                    .filter(|_| o % 4 == 0)
                    .ok_or_else(|| format!("bad load offset {o}"))?;
                a = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
                1
            }
            AND_K => {
                a &= k;
                1
            }
            JA => 1 + k as usize,
            JEQ => jump(a == k),
            JGT => jump(a > k),
            JGE => jump(a >= k),
            RET_K => return Ok(k),
            c => return Err(format!("unsupported instruction {c:#x} at {pc}")),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::profile::Program;

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
    const X86: u32 = crate::sandbox::syscalls::AUDIT_ARCH_X86_64;

    fn profile() -> Profile {
        let mut p = Profile::new(
            Arch::X86_64,
            Program {
                path: "/bin/x".into(),
                sha256: None,
            },
            Mode::Args,
        );
        for (n, nr) in [("read", 0), ("write", 1)] {
            p.entry(n, nr).count = 1;
        }
        let t = |k: &str, v: u64| BTreeMap::from([(k.to_string(), v)]);
        p.add_args("ioctl", 16, t("request", 0x5401));
        p.add_args("mmap", 9, t("prot", 3));
        p.add_args("clone", 56, t("flags", 0x3d0f00));
        p.add_args(
            "socket",
            41,
            BTreeMap::from([("domain".into(), 1), ("type".into(), 1)]),
        );
        p.add_args(
            "socket",
            41,
            BTreeMap::from([("domain".into(), 2), ("type".into(), 2)]),
        );
        p
    }

    fn eval(c: &CompiledPolicy, nr: u32, args: [u64; 6]) -> u32 {
        c.evaluate(X86, nr, args).unwrap()
    }

    #[test]
    fn rules_from_profile() {
        let p = Policy::from_profile(&profile(), &PolicyOptions::default()).unwrap();
        for name in ["read", "execve", "execveat", "exit_group", "rt_sigreturn"] {
            assert!(p.syscalls.contains_key(name), "{name}");
        }
        assert_eq!(p.syscalls["clone3"].action, Action::Errno(38));
        assert_eq!(p.syscalls["mmap"].deny_flags.len(), 1);
        assert_eq!(p.syscalls["clone"].deny_flags.len(), 7);
        let c = p.compile().unwrap();
        let s = c.stats(&p);
        assert_eq!(s.filters.len(), 3);
        assert_eq!(s.filters[2].kind, FilterKind::Allowlist);
        // Allowed, and everything else.
        assert_eq!(eval(&c, 0, [0; 6]), ALLOW);
        assert_eq!(eval(&c, 2, [0; 6]), KILL); // open: not in the profile
        assert_eq!(eval(&c, 435, [0; 6]), libc::SECCOMP_RET_ERRNO | 38);
        // Other ABIs: i386 and x32.
        assert_eq!(
            c.evaluate(crate::sandbox::syscalls::AUDIT_ARCH_I386, 0, [0; 6])
                .unwrap(),
            KILL
        );
        assert_eq!(eval(&c, 0x4000_0000, [0; 6]), KILL);
        // ioctl: only the recorded request, upper half ignored.
        assert_eq!(eval(&c, 16, [0, 0x5401, 0, 0, 0, 0]), ALLOW);
        assert_eq!(eval(&c, 16, [0, 0x1_0000_5401, 0, 0, 0, 0]), ALLOW);
        assert_eq!(eval(&c, 16, [0, 0x5402, 0, 0, 0, 0]), KILL);
        // socket: tuples, not their cross product; creation flags ignored.
        let sock = |d: u64, t: u64| eval(&c, 41, [d, t, 0, 0, 0, 0]);
        assert_eq!(sock(1, 1), ALLOW);
        assert_eq!(sock(1, 1 | SOCK_FLAGS), ALLOW);
        assert_eq!(sock(2, 2 | libc::SOCK_CLOEXEC as u64), ALLOW);
        assert_eq!(sock(1, 2), KILL);
        assert_eq!(sock(2, 1), KILL);
        assert_eq!(sock(2, 3), KILL);
        assert_eq!(sock(10, 1), KILL);
        // mmap W|X; clone namespaces.
        assert_eq!(eval(&c, 9, [0, 0, 7, 0, 0, 0]), KILL);
        assert_eq!(eval(&c, 9, [0, 0, 5, 0, 0, 0]), ALLOW);
        assert_eq!(eval(&c, 56, [0x3d0f00, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(eval(&c, 56, [0x11, 0, 0, 0, 0, 0]), ALLOW);
        for (bit, _) in NAMESPACE_FLAGS {
            assert_eq!(eval(&c, 56, [0x11 | bit, 0, 0, 0, 0, 0]), KILL);
        }
    }

    #[test]
    fn seen_flags_stay_allowed() {
        let mut pr = profile();
        pr.write_exec_memory = true;
        pr.add_args(
            "clone",
            56,
            BTreeMap::from([("flags".into(), libc::CLONE_NEWUSER as u64 | 0x11)]),
        );
        let p = Policy::from_profile(&pr, &PolicyOptions::default()).unwrap();
        let c = p.compile().unwrap();
        assert_eq!(eval(&c, 9, [0, 0, 7, 0, 0, 0]), ALLOW);
        assert_eq!(
            eval(&c, 56, [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(
            eval(&c, 56, [libc::CLONE_NEWNET as u64, 0, 0, 0, 0, 0]),
            KILL
        );
    }

    /// Values, runs, edges of the 32-bit space: exactly the set passes.
    #[test]
    fn value_sets_exact() {
        let sets: Vec<Vec<u64>> = vec![
            vec![0],
            vec![U32],
            vec![0, 1, 2, 3, 4, 5, U32 - 3, U32 - 2, U32 - 1, U32],
            (0..100).map(|i| i * 3).collect(),
            (10..20).chain([25, 26, 30]).chain(40..200).collect(),
            (0..1000).map(|i| i * 7919 % 100_000).collect(),
        ];
        for set in sets {
            let mut p = Policy::from_profile(&profile(), &PolicyOptions::default()).unwrap();
            let ioctl = p.syscalls.get_mut("ioctl").unwrap();
            ioctl.allow_args = set
                .iter()
                .map(|&v| BTreeMap::from([("request".to_string(), v)]))
                .collect();
            let c = p.compile().unwrap();
            let allowed: BTreeSet<u64> = set.iter().copied().collect();
            let mut probe: BTreeSet<u64> = BTreeSet::new();
            for &v in &set {
                probe.extend([v.saturating_sub(1), v, (v + 1).min(U32)]);
            }
            probe.extend([0, 1, 1 << 31, U32]);
            for v in probe {
                let want = if allowed.contains(&v) { ALLOW } else { KILL };
                assert_eq!(eval(&c, 16, [0, v, 0, 0, 0, 0]), want, "{v:#x}");
            }
        }
    }

    #[test]
    fn padded_policy_splits_without_dropping() {
        let opts = PolicyOptions {
            pad_rules: 2000,
            ..Default::default()
        };
        let p = Policy::from_profile(&profile(), &opts).unwrap();
        assert!(p.rule_count() >= 2000);
        let c = p.compile().unwrap();
        let s = c.stats(&p);
        assert!(s.filters.len() >= 4, "{:?}", s.filters);
        for f in &s.filters {
            assert!(f.instructions < 4096);
        }
        // The packer predicts seccompiler's lengths: full filters are full.
        let args: Vec<_> = s
            .filters
            .iter()
            .filter(|f| f.kind == FilterKind::Arguments)
            .collect();
        for f in &args[..args.len() - 1] {
            assert!(f.instructions > MAX_FILTER_INSNS - 100, "{f:?}");
        }
        assert!(s.stack_instructions <= MAX_STACK_INSNS);
        for t in &p.syscalls["ioctl"].allow_args {
            assert_eq!(eval(&c, 16, [0, t["request"], 0, 0, 0, 0]), ALLOW);
        }
        for i in 0..2000 {
            assert_eq!(
                eval(&c, 16, [0, u64::from(pad_value(i)) + 1, 0, 0, 0, 0]),
                KILL
            );
        }
    }

    #[test]
    fn too_large_is_refused() {
        let opts = PolicyOptions {
            pad_rules: 40_000,
            ..Default::default()
        };
        let p = Policy::from_profile(&profile(), &opts).unwrap();
        assert!(matches!(
            p.compile(),
            Err(PolicyError::StackTooLarge { .. })
        ));
    }

    #[test]
    fn json_round_trip_and_checks() {
        let p = Policy::from_profile(&profile(), &PolicyOptions::default()).unwrap();
        let q = Policy::from_json(&p.to_json(), "t").unwrap();
        assert_eq!(p, q);
        let mut v: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        v["syscalls"]["read"]["nr"] = 5.into();
        assert!(Policy::from_json(&v.to_string(), "t").is_err());
        let mut v: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        v["syscalls"]["clone3"]["action"] = "allow".into();
        assert!(Policy::from_json(&v.to_string(), "t").is_err());
        let mut v: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        v["syscalls"]["read"]["allow_args"] = serde_json::json!([{"fd": 1}]);
        assert!(Policy::from_json(&v.to_string(), "t").is_err());
        let mut v: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        v["version"] = 2.into();
        assert!(matches!(
            Policy::from_json(&v.to_string(), "t"),
            Err(PolicyError::TooNew { found: 2, .. })
        ));
        assert!(Policy::from_json("{}", "t").is_err());
    }

    #[test]
    fn incomplete_and_syscalls_mode() {
        let mut pr = profile();
        pr.mark_incomplete("killed");
        assert!(matches!(
            Policy::from_profile(&pr, &PolicyOptions::default()),
            Err(PolicyError::Incomplete(_))
        ));
        let opts = PolicyOptions {
            allow_incomplete: true,
            ..Default::default()
        };
        assert!(Policy::from_profile(&pr, &opts).is_ok());
        let mut pr = profile();
        pr.mode = Mode::Syscalls;
        let p = Policy::from_profile(&pr, &PolicyOptions::default()).unwrap();
        assert!(p.syscalls["ioctl"].allow_args.is_empty());
        assert!(matches!(
            p.clone().pad_rules(10),
            Err(PolicyError::Padding(_))
        ));
    }

    #[test]
    fn render_lists_rules_and_filters() {
        let p = Policy::from_profile(&profile(), &PolicyOptions::default()).unwrap();
        let c = p.compile().unwrap();
        let r = p.render(&c);
        assert!(
            r.contains("allow if domain=AF_UNIX type=SOCK_STREAM"),
            "{r}"
        );
        assert!(r.contains("kill if prot has PROT_WRITE|PROT_EXEC"), "{r}");
        assert!(r.contains("errno ENOSYS"), "{r}");
        assert!(r.contains("3 filters"), "{r}");
        assert!(r.contains("filter 3:"), "{r}");
    }
}
