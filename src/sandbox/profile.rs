//! The profile: what an analysis used during a profiling run, as reviewable
//! JSON (sorted maps, versioned). Written by `tresor profile`, read by the
//! policy generator and the runner.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::syscalls::{self, Arch};

/// Value of the `format` field.
pub const FORMAT: &str = "tresor-profile";
/// Newest profile version this tresor reads and the one it writes.
pub const VERSION: u32 = 1;
/// Files listed per directory; beyond that only the directory's access is kept,
/// so a run over 10,000 inputs still gives a profile of kilobytes.
pub const MAX_FILES_PER_DIR: usize = 32;
/// Distinct argument tuples kept per syscall.
pub const MAX_ARG_VALUES: usize = 256;

/// Errors reading, checking or merging profiles.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("cannot write profile {path}: {error}")]
    Write { path: String, error: std::io::Error },
    #[error("{path} is not a tresor profile: {reason}")]
    NotAProfile { path: String, reason: String },
    #[error("profile {path} has format version {found}; this tresor reads up to {VERSION} — upgrade tresor")]
    TooNew { path: String, found: u64 },
    #[error("profile {path} is invalid: {reason}")]
    Invalid { path: String, reason: String },
    #[error(
        "cannot merge profiles of different architectures: {a} vs {b} (syscall numbers differ)"
    )]
    ArchMismatch { a: String, b: String },
    #[error(
        "cannot merge profiles of different {what}: {a} vs {b} (pass --force to merge anyway)"
    )]
    Mismatch {
        what: &'static str,
        a: String,
        b: String,
    },
    #[error("profile {path} is incomplete ({reason}); profile the program again, or pass the option that accepts incomplete profiles")]
    Incomplete { path: String, reason: String },
}

/// How much the profiler records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The set of syscalls and their counts only.
    Syscalls,
    /// Also argument values, paths, network and execs (the default).
    Args,
    /// Like `args`, plus a per-call trace written to a separate file.
    Full,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Syscalls => "syscalls",
            Mode::Args => "args",
            Mode::Full => "full",
        })
    }
}

/// Read / write / execute, written as `"rwx"` with `-` for missing rights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Access {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
}

impl Access {
    pub const R: Access = Access {
        read: true,
        write: false,
        exec: false,
    };
    pub const W: Access = Access {
        read: false,
        write: true,
        exec: false,
    };
    pub const X: Access = Access {
        read: false,
        write: false,
        exec: true,
    };

    /// Union of two access sets.
    pub fn union(self, o: Access) -> Access {
        Access {
            read: self.read || o.read,
            write: self.write || o.write,
            exec: self.exec || o.exec,
        }
    }

    fn parse(s: &str) -> Option<Access> {
        let b = s.as_bytes();
        if b.len() != 3 {
            return None;
        }
        let flag = |c: u8, want: u8| match c {
            _ if c == want => Some(true),
            b'-' => Some(false),
            _ => None,
        };
        Some(Access {
            read: flag(b[0], b'r')?,
            write: flag(b[1], b'w')?,
            exec: flag(b[2], b'x')?,
        })
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |on: bool, ch: char| if on { ch } else { '-' };
        write!(
            f,
            "{}{}{}",
            c(self.read, 'r'),
            c(self.write, 'w'),
            c(self.exec, 'x')
        )
    }
}

impl Serialize for Access {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Access {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Access::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("access must look like \"r-x\", got {s:?}"))
        })
    }
}

/// The program that was profiled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Program {
    /// Absolute path that was executed.
    pub path: String,
    /// SHA-256 of the executable, hex; `None` if it could not be read.
    pub sha256: Option<String>,
}

/// The script an interpreter ran (`python3 ki67.py`, `sh -c '…'`): what
/// `tresor run` checks besides the interpreter itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// Its canonical path, or `"-c"` / `"-e"` for code given inline.
    pub path: String,
    /// SHA-256 of the file's contents (or of the inline code), hex.
    pub sha256: String,
}

/// Interpreters whose first argument is the program that really runs.
pub const INTERPRETERS: &[&str] = &[
    "python", "python2", "python3", "sh", "bash", "dash", "zsh", "ksh", "Rscript", "R", "perl",
    "ruby", "node", "julia", "octave", "php", "lua", "tclsh", "awk", "gawk",
];

/// Whether `program` (a path) names an interpreter (`python3.11` too).
pub fn is_interpreter(program: &Path) -> bool {
    let Some(name) = program.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    INTERPRETERS.contains(&name) || INTERPRETERS.contains(&base)
}

impl Script {
    /// The script of an interpreter's argument list: the first argument
    /// that is not an option — a file (hashed), or the code after `-c` /
    /// `-e` (hashed as given). `None` when there is none (`python3 -m x`,
    /// an interactive shell) or the file cannot be read.
    pub fn of_args(args: &[std::ffi::OsString]) -> Option<Script> {
        use sha2::Digest;
        use std::os::unix::ffi::OsStrExt;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let b = a.as_bytes();
            if b == b"-c" || b == b"-e" {
                let code = it.next()?;
                return Some(Script {
                    path: a.to_string_lossy().into_owned(),
                    sha256: hex::encode(sha2::Sha256::digest(code.as_bytes())),
                });
            }
            if b == b"-m" {
                return None;
            }
            if b.starts_with(b"-") {
                continue;
            }
            let p = Path::new(a).canonicalize().ok()?;
            let bytes = std::fs::read(&p).ok()?;
            return Some(Script {
                path: p.to_string_lossy().into_owned(),
                sha256: hex::encode(sha2::Sha256::digest(&bytes)),
            });
        }
        None
    }
}

/// How the profiled program ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Exit {
    /// Exited with this status.
    Code(i32),
    /// Killed by this signal (name, e.g. `SIGSEGV`).
    Signal(String),
}

/// One syscall in the profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyscallEntry {
    /// Number on the profile's architecture.
    pub nr: u32,
    /// Calls seen (summed over merged runs); 0 for always-added syscalls.
    pub count: u64,
    /// Why programs commonly use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Set when tresor adds this syscall whether or not it was seen: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added: Option<String>,
    /// Distinct values of the arguments that decide what is safe, e.g.
    /// `{"domain": 2, "type": 1}` for socket.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub args: BTreeSet<BTreeMap<String, u64>>,
    /// More than [`MAX_ARG_VALUES`] distinct values were seen; the rest dropped.
    #[serde(default, skip_serializing_if = "is_false")]
    pub args_truncated: bool,
}

/// Files used in one directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirAccess {
    /// Union of the access needed to anything in (or to) this directory.
    pub access: Access,
    /// Entries by name (up to [`MAX_FILES_PER_DIR`]). Empty with `access` set
    /// means the directory itself was opened.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, Access>,
    /// More entries were used than are listed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub more_files: bool,
}

impl DirAccess {
    /// Lists `name` with `access`. Beyond [`MAX_FILES_PER_DIR`] the
    /// alphabetically first names are kept (whatever order they were used
    /// in, so that every recorder and every merge order lists the same) and
    /// `more_files` is set; `access` already holds the union.
    fn add_file(&mut self, name: &str, access: Access) {
        if let Some(a) = self.files.get_mut(name) {
            *a = a.union(access);
            return;
        }
        if self.files.len() < MAX_FILES_PER_DIR {
            self.files.insert(name.to_string(), access);
            return;
        }
        self.more_files = true;
        let last = self.files.keys().next_back().cloned();
        if let Some(last) = last.filter(|l| name < l.as_str()) {
            self.files.remove(&last);
            self.files.insert(name.to_string(), access);
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A syscall profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version, at most [`VERSION`].
    pub version: u32,
    /// `x86_64` or `aarch64`.
    pub arch: String,
    pub program: Program,
    /// For an interpreter: the script it ran (checked by `tresor run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<Script>,
    pub mode: Mode,
    /// What recorded it: `bpf` (in-kernel) or `ptrace` (docs/PROFILE.md
    /// "Recorders"); merged profiles of both: `bpf+ptrace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorder: Option<String>,
    /// False when the run ended abnormally (signal, timeout, tracer error):
    /// the program may need syscalls it never reached.
    pub complete: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete_reason: Option<String>,
    /// How the program ended (absent in merged profiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<Exit>,
    /// Number of profiling runs merged into this profile.
    pub runs: u32,
    /// Processes (the program, forks, vforks) followed, summed over runs.
    pub processes: u64,
    /// Threads created, summed over runs.
    pub threads: u64,
    /// By name; numbers are for `arch`.
    pub syscalls: BTreeMap<String, SyscallEntry>,
    /// Syscalls made through a different ABI (e.g. 32-bit `int 0x80` on
    /// x86_64), as `"<audit arch hex>:<nr>"` → count. A policy kills these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub foreign_syscalls: BTreeMap<String, u64>,
    /// An internet or raw socket was created (not set in `syscalls` mode).
    pub network: bool,
    /// Memory was mapped or protected writable and executable at once.
    pub write_exec_memory: bool,
    /// Programs executed (absolute paths as passed to execve).
    pub execs: BTreeSet<String>,
    /// Paths opened, created, changed or executed, grouped by directory.
    pub paths: BTreeMap<String, DirAccess>,
    /// Decisions and caveats for reviewers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Syscalls added to every profile: a profiling run can miss them, and the
/// program would die without them. Each with the reason shown to reviewers.
pub const ALWAYS_ADDED: &[(&str, &str)] = &[
    ("clock_gettime", "vDSO fallback: the call is normally served in user space and may not show up while profiling"),
    ("gettimeofday", "vDSO fallback: normally served in user space"),
    ("time", "vDSO fallback: normally served in user space"),
    ("getcpu", "vDSO fallback: normally served in user space"),
    ("restart_syscall", "the kernel issues it to resume a sleep interrupted by a signal; timing-dependent"),
    ("rt_sigreturn", "return from any signal handler; whether a signal arrives is timing-dependent"),
    ("exit", "every thread must be able to end"),
    ("exit_group", "every process must be able to end, also on error paths not taken while profiling"),
    ("execve", "the runner installs the filter and then execs the program"),
];

/// Added to the profile of a run that started threads: a thread enters
/// futex(2) only when a lock or a join finds the other side busy, so a
/// profiling run can miss it (seen in 1 of 30 runs of a 4-thread example)
/// and the confined run would die of it.
pub const THREADS_ADDED: (&str, &str) = (
    "futex",
    "the run started threads: a lock or a join waits in futex only when the other thread is busy, which is timing-dependent",
);

/// The note explaining the clone3 decision, added to every profile.
pub const CLONE3_NOTE: &str = "clone3 is answered ENOSYS while profiling and when confined (its flags live in memory a seccomp filter cannot read); libc then falls back to clone, whose flags are recorded";

impl Profile {
    /// An empty profile for `program` on `arch`.
    pub fn new(arch: Arch, program: Program, mode: Mode) -> Profile {
        let mut p = Profile {
            format: FORMAT.to_string(),
            version: VERSION,
            arch: arch.name().to_string(),
            program,
            script: None,
            mode,
            recorder: None,
            complete: true,
            incomplete_reason: None,
            exit: None,
            runs: 1,
            processes: 0,
            threads: 0,
            syscalls: BTreeMap::new(),
            foreign_syscalls: BTreeMap::new(),
            network: false,
            write_exec_memory: false,
            execs: BTreeSet::new(),
            paths: BTreeMap::new(),
            notes: vec![CLONE3_NOTE.to_string()],
        };
        p.add_always(arch);
        p
    }

    fn add_always(&mut self, arch: Arch) {
        for (name, why) in ALWAYS_ADDED {
            if let Some(nr) = arch.number(name) {
                let e = self.entry(name, nr);
                e.added = Some((*why).to_string());
            }
        }
    }

    /// Adds [`THREADS_ADDED`] if the run started threads (after recording).
    pub fn add_for_threads(&mut self) {
        if self.threads == 0 {
            return;
        }
        let (name, why) = THREADS_ADDED;
        if let Some(nr) = Arch::from_name(&self.arch).and_then(|a| a.number(name)) {
            let e = self.entry(name, nr);
            e.added.get_or_insert_with(|| why.to_string());
        }
    }

    /// The entry for syscall `name`, created with its comment if new.
    pub fn entry(&mut self, name: &str, nr: u32) -> &mut SyscallEntry {
        self.syscalls
            .entry(name.to_string())
            .or_insert_with(|| SyscallEntry {
                nr,
                count: 0,
                comment: syscalls::comment(name).map(str::to_string),
                added: None,
                args: BTreeSet::new(),
                args_truncated: false,
            })
    }

    /// The architecture, checked.
    pub fn arch(&self) -> Result<Arch, String> {
        Arch::from_name(&self.arch).ok_or_else(|| format!("unknown architecture {:?}", self.arch))
    }

    /// Records that `path` (absolute, normalised) needs `access`.
    /// With `is_dir`, the directory itself is meant.
    pub fn add_path(&mut self, path: &str, access: Access, is_dir: bool) {
        let (dir, name) = if is_dir || path == "/" {
            (path, None)
        } else {
            match path.rfind('/') {
                Some(0) => ("/", Some(&path[1..])),
                Some(i) => (&path[..i], Some(&path[i + 1..])),
                None => (path, None),
            }
        };
        let d = match self.paths.get_mut(dir) {
            Some(d) => d,
            None => self.paths.entry(dir.to_string()).or_default(),
        };
        d.access = d.access.union(access);
        if let Some(name) = name {
            d.add_file(name, access);
        }
    }

    /// Records one distinct argument tuple for syscall `name`.
    pub fn add_args(&mut self, name: &str, nr: u32, values: BTreeMap<String, u64>) {
        let e = self.entry(name, nr);
        if e.args.contains(&values) {
            return;
        }
        if e.args.len() < MAX_ARG_VALUES {
            e.args.insert(values);
        } else {
            e.args_truncated = true;
        }
    }

    /// Marks the profile incomplete (keeps the first reason).
    pub fn mark_incomplete(&mut self, reason: impl Into<String>) {
        if self.complete {
            self.complete = false;
            self.incomplete_reason = Some(reason.into());
        }
    }

    /// Refuses an incomplete profile; the runner calls this unless told to
    /// accept one.
    pub fn require_complete(&self, path: &str) -> Result<(), ProfileError> {
        if self.complete {
            Ok(())
        } else {
            Err(ProfileError::Incomplete {
                path: path.to_string(),
                reason: self
                    .incomplete_reason
                    .clone()
                    .unwrap_or_else(|| "no reason given".into()),
            })
        }
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        // Serialising plain maps, strings and numbers cannot fail.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Parses and checks a profile; `path` names it in errors.
    pub fn from_json(text: &str, path: &str) -> Result<Profile, ProfileError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ProfileError::NotAProfile {
                path: path.into(),
                reason: format!("not JSON ({e})"),
            })?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(ProfileError::NotAProfile {
                path: path.into(),
                reason: format!("missing \"format\": \"{FORMAT}\""),
            });
        }
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v > u64::from(VERSION) => {
                return Err(ProfileError::TooNew {
                    path: path.into(),
                    found: v,
                })
            }
            Some(v) if v >= 1 => {}
            _ => {
                return Err(ProfileError::Invalid {
                    path: path.into(),
                    reason: "\"version\" must be a positive integer".into(),
                })
            }
        }
        let p: Profile = serde_json::from_value(value).map_err(|e| ProfileError::Invalid {
            path: path.into(),
            reason: e.to_string(),
        })?;
        p.validate().map_err(|reason| ProfileError::Invalid {
            path: path.into(),
            reason,
        })?;
        Ok(p)
    }

    /// Checks what serde cannot: names match numbers for the architecture.
    fn validate(&self) -> Result<(), String> {
        let arch = self.arch()?;
        for (name, e) in &self.syscalls {
            match arch.parse_display_name(name) {
                Some(nr) if nr == e.nr => {}
                Some(nr) => {
                    return Err(format!(
                        "syscall {name} has number {} but is {nr} on {arch}",
                        e.nr
                    ))
                }
                None => return Err(format!("unknown syscall name {name:?} for {arch}")),
            }
        }
        if self.complete == self.incomplete_reason.is_some() {
            return Err("\"complete\" and \"incomplete_reason\" disagree".into());
        }
        Ok(())
    }

    /// Reads a profile file.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ProfileError::Read {
            path: shown.clone(),
            error,
        })?;
        Profile::from_json(&text, &shown)
    }

    /// Writes a profile file (atomically: temp file + rename).
    pub fn save(&self, path: &Path) -> Result<(), ProfileError> {
        let err = |error| ProfileError::Write {
            path: path.display().to_string(),
            error,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
        std::io::Write::write_all(&mut tmp, self.to_json().as_bytes()).map_err(err)?;
        // A reviewable file like any other (tempfile creates it 0600).
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(path).map_err(|e| err(e.error))?;
        Ok(())
    }

    /// Unions `other` into `self`. Refuses a different architecture or
    /// binary unless `force`; a forced merge leaves a note.
    pub fn merge(&mut self, other: &Profile, force: bool) -> Result<(), ProfileError> {
        if self.arch != other.arch {
            // Numbers differ between architectures: never mergeable.
            return Err(ProfileError::ArchMismatch {
                a: self.arch.clone(),
                b: other.arch.clone(),
            });
        }
        if self.program.sha256 != other.program.sha256
            || self.program.path != other.program.path
            || self.script.as_ref().map(|s| &s.sha256) != other.script.as_ref().map(|s| &s.sha256)
        {
            let show = |p: &Program| {
                format!(
                    "{} (sha256 {})",
                    p.path,
                    p.sha256.as_deref().unwrap_or("unknown")
                )
            };
            if !force {
                return Err(ProfileError::Mismatch {
                    what: "programs",
                    a: show(&self.program),
                    b: show(&other.program),
                });
            }
            self.notes.push(format!(
                "merged under --force with a profile of {}",
                show(&other.program)
            ));
        }
        self.mode = self.mode.min(other.mode);
        if self.recorder != other.recorder {
            let mut names: Vec<&str> = [&self.recorder, &other.recorder]
                .into_iter()
                .flatten()
                .flat_map(|r| r.split('+'))
                .collect();
            names.sort_unstable();
            names.dedup();
            self.recorder = Some(names.join("+"));
        }
        if !other.complete {
            let reason = other.incomplete_reason.clone().unwrap_or_default();
            self.mark_incomplete(format!("a merged run was incomplete: {reason}"));
        }
        self.exit = None;
        self.runs = self.runs.saturating_add(other.runs);
        self.processes = self.processes.saturating_add(other.processes);
        self.threads = self.threads.saturating_add(other.threads);
        for (name, e) in &other.syscalls {
            let mine = self
                .syscalls
                .entry(name.clone())
                .or_insert_with(|| SyscallEntry {
                    count: 0,
                    args: BTreeSet::new(),
                    args_truncated: false,
                    ..e.clone()
                });
            mine.count = mine.count.saturating_add(e.count);
            if mine.added.is_none() {
                mine.added.clone_from(&e.added);
            }
            mine.args_truncated |= e.args_truncated;
            for v in &e.args {
                if mine.args.len() >= MAX_ARG_VALUES && !mine.args.contains(v) {
                    mine.args_truncated = true;
                } else {
                    mine.args.insert(v.clone());
                }
            }
        }
        for (k, n) in &other.foreign_syscalls {
            let c = self.foreign_syscalls.entry(k.clone()).or_insert(0);
            *c = c.saturating_add(*n);
        }
        self.network |= other.network;
        self.write_exec_memory |= other.write_exec_memory;
        self.execs.extend(other.execs.iter().cloned());
        for (dir, d) in &other.paths {
            let mine = self.paths.entry(dir.clone()).or_default();
            mine.access = mine.access.union(d.access);
            mine.more_files |= d.more_files;
            for (name, a) in &d.files {
                mine.add_file(name, *a);
            }
        }
        for n in &other.notes {
            if !self.notes.contains(n) {
                self.notes.push(n.clone());
            }
        }
        Ok(())
    }

    /// Human-readable table for `tresor profile show`.
    pub fn render_table(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let status = if self.complete {
            "complete".to_string()
        } else {
            format!(
                "INCOMPLETE: {}",
                self.incomplete_reason.as_deref().unwrap_or("?")
            )
        };
        let _ = writeln!(o, "program  {}", self.program.path);
        let _ = writeln!(
            o,
            "sha256   {}",
            self.program.sha256.as_deref().unwrap_or("unknown")
        );
        if let Some(sc) = &self.script {
            let _ = writeln!(o, "script   {} (sha256 {})", sc.path, sc.sha256);
        }
        let _ = writeln!(
            o,
            "arch     {}   mode {}   runs {}   {status}",
            self.arch, self.mode, self.runs
        );
        if let Some(exit) = &self.exit {
            let _ = match exit {
                Exit::Code(c) => writeln!(o, "exit     code {c}"),
                Exit::Signal(s) => writeln!(o, "exit     killed by {s}"),
            };
        }
        let _ = writeln!(
            o,
            "followed {} process(es), {} thread(s); network {}; write+exec memory {}",
            self.processes,
            self.threads,
            yes_no(self.network),
            yes_no(self.write_exec_memory)
        );
        let _ = writeln!(o, "\n{:<22} {:>5} {:>10}  why", "syscall", "nr", "calls");
        for (name, e) in &self.syscalls {
            let why = match (&e.comment, &e.added) {
                (_, Some(a)) => format!("(always added) {a}"),
                (Some(c), None) => c.clone(),
                (None, None) => String::new(),
            };
            let _ = writeln!(o, "{name:<22} {:>5} {:>10}  {why}", e.nr, e.count);
            for args in &e.args {
                let _ = writeln!(o, "{:<41}{}", "", describe_args(name, args));
            }
            if e.args_truncated {
                let _ = writeln!(o, "{:<41}(more values not kept)", "");
            }
        }
        for (k, n) in &self.foreign_syscalls {
            let _ = writeln!(o, "foreign ABI syscall {k}: {n} call(s)");
        }
        if !self.execs.is_empty() {
            let _ = writeln!(o, "\nexecuted");
            for e in &self.execs {
                let _ = writeln!(o, "  {e}");
            }
        }
        if !self.paths.is_empty() {
            let _ = writeln!(o, "\npaths (access: r read, w write, x exec)");
            for (dir, d) in &self.paths {
                let _ = writeln!(o, "  {} {dir}/", d.access);
                for (name, a) in &d.files {
                    let _ = writeln!(o, "      {a} {name}");
                }
                if d.more_files {
                    let _ = writeln!(o, "      ... more files");
                }
            }
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

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Decodes the argument values tresor records, where names are known.
pub fn describe_args(syscall: &str, args: &BTreeMap<String, u64>) -> String {
    args.iter()
        .map(|(k, &v)| {
            let named = match (syscall, k.as_str()) {
                ("socket" | "socketpair", "domain") => af_name(v),
                ("socket" | "socketpair", "type") => sock_type_name(v),
                (_, "prot") => Some(prot_name(v)),
                _ => None,
            };
            match named {
                Some(n) => format!("{k}={n}"),
                None if v > 9 => format!("{k}={v:#x}"),
                None => format!("{k}={v}"),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn af_name(v: u64) -> Option<String> {
    let n = match v as i32 {
        libc::AF_UNIX => "AF_UNIX",
        libc::AF_INET => "AF_INET",
        libc::AF_INET6 => "AF_INET6",
        libc::AF_NETLINK => "AF_NETLINK",
        libc::AF_PACKET => "AF_PACKET",
        _ => return None,
    };
    Some(n.into())
}

fn sock_type_name(v: u64) -> Option<String> {
    let n = match v as i32 {
        libc::SOCK_STREAM => "SOCK_STREAM",
        libc::SOCK_DGRAM => "SOCK_DGRAM",
        libc::SOCK_RAW => "SOCK_RAW",
        libc::SOCK_SEQPACKET => "SOCK_SEQPACKET",
        _ => return None,
    };
    Some(n.into())
}

fn prot_name(v: u64) -> String {
    let v = v as i32;
    if v == libc::PROT_NONE {
        return "PROT_NONE".into();
    }
    let mut parts = Vec::new();
    for (bit, name) in [
        (libc::PROT_READ, "READ"),
        (libc::PROT_WRITE, "WRITE"),
        (libc::PROT_EXEC, "EXEC"),
    ] {
        if v & bit != 0 {
            parts.push(name.to_string());
        }
    }
    let rest = v & !(libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC);
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    parts.join("|")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Profile {
        let mut p = Profile::new(
            Arch::X86_64,
            Program {
                path: "/bin/x".into(),
                sha256: Some("ab".into()),
            },
            Mode::Args,
        );
        p.entry("read", 0).count = 3;
        p.add_args(
            "socket",
            41,
            BTreeMap::from([("domain".into(), 2), ("type".into(), 1)]),
        );
        p.add_path("/etc/passwd", Access::R, false);
        p.add_path("/tmp/out", Access::W, false);
        p.add_path("/tmp/out", Access::R, false);
        p
    }

    /// A run with threads gets futex even if no thread waited while it was
    /// recorded; one without threads does not, and a seen futex keeps its
    /// count.
    #[test]
    fn a_run_with_threads_gets_futex() {
        let mut p = sample();
        p.add_for_threads();
        assert!(!p.syscalls.contains_key("futex"));
        p.threads = 4;
        p.add_for_threads();
        let e = &p.syscalls["futex"];
        assert_eq!((e.nr, e.count), (202, 0));
        assert!(e.added.as_deref().unwrap().contains("timing-dependent"));
        let mut q = sample();
        q.threads = 1;
        q.entry("futex", 202).count = 7;
        q.add_for_threads();
        assert_eq!(q.syscalls["futex"].count, 7);
        assert!(q.syscalls["futex"].added.is_some());
    }

    #[test]
    fn json_round_trip() {
        let p = sample();
        let q = Profile::from_json(&p.to_json(), "t").unwrap();
        assert_eq!(p, q);
        assert_eq!(q.paths["/tmp"].files["out"].to_string(), "rw-");
    }

    #[test]
    fn rejects_bad_profiles() {
        let mut v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        v["version"] = 2.into();
        assert!(matches!(
            Profile::from_json(&v.to_string(), "t"),
            Err(ProfileError::TooNew { found: 2, .. })
        ));
        v["version"] = 1.into();
        v["syscalls"]["read"]["nr"] = 5.into();
        assert!(matches!(
            Profile::from_json(&v.to_string(), "t"),
            Err(ProfileError::Invalid { .. })
        ));
        assert!(Profile::from_json("{}", "t").is_err());
        assert!(Profile::from_json("[", "t").is_err());
    }

    #[test]
    fn files_per_dir_capped() {
        let mut p = sample();
        for i in 0..100 {
            p.add_path(&format!("/data/f{i}"), Access::R, false);
        }
        assert_eq!(p.paths["/data"].files.len(), MAX_FILES_PER_DIR);
        assert!(p.paths["/data"].more_files);
        // The alphabetically first names, whatever the order of use.
        let mut q = sample();
        for i in (0..100).rev() {
            q.add_path(&format!("/data/f{i}"), Access::R, false);
        }
        assert_eq!(p.paths["/data"], q.paths["/data"]);
        assert!(q.paths["/data"].files.contains_key("f0"));
        assert!(!q.paths["/data"].files.contains_key("f99"));
        p.add_path("/", Access::R, true);
        p.add_path("/top", Access::R, false);
        assert!(p.paths["/"].files.contains_key("top"));
    }

    #[test]
    fn merge_unions_and_refuses_other_binary() {
        let mut a = sample();
        let mut b = sample();
        b.entry("write", 1).count = 2;
        b.add_path("/etc/hosts", Access::R, false);
        a.merge(&b, false).unwrap();
        assert_eq!(a.syscalls["read"].count, 6);
        assert_eq!(a.syscalls["write"].count, 2);
        assert_eq!(a.runs, 2);
        assert!(a.paths["/etc"].files.contains_key("hosts"));
        b.program.sha256 = Some("cd".into());
        assert!(matches!(
            a.merge(&b, false),
            Err(ProfileError::Mismatch {
                what: "programs",
                ..
            })
        ));
        a.merge(&b, true).unwrap();
        assert!(a.notes.iter().any(|n| n.contains("--force")));
        b.arch = "aarch64".into();
        assert!(matches!(
            a.merge(&b, true),
            Err(ProfileError::ArchMismatch { .. })
        ));
    }
}
