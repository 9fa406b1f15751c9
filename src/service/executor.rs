//! Where jobs run. The service hands each profiling run and each confined
//! run to an [`Executor`]; the local one starts `tresor profile` and
//! `tresor run` as child processes on this machine. A Slurm executor would
//! submit the same command lines with `sbatch` to nodes that mount the store
//! (docs/SERVICE.md sketches it).
//!
//! Child processes rather than calls into the sandbox library: the
//! supervisor of a run is a ptrace tracer that forks, sets rlimits and waits
//! for every task, which does not mix with the service's threads; and a run
//! that fails hard takes down its own process, not the service. Each child
//! dies with the service ([`die_with_parent`]), and a dying
//! supervisor kills its whole sandbox (`PTRACE_O_EXITKILL`), so a killed
//! service leaves no analysis running.

use std::ffi::OsString;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Set by the service on its `tresor` children: the pid whose death ends them.
pub const DIE_WITH: &str = "TRESOR_DIE_WITH";

/// In a `tresor` started by the service: die (SIGKILL) when the service
/// does. Set here, at the child's start, rather than between fork and exec
/// in the service: without a `pre_exec` hook the service spawns with
/// posix_spawn, which measured cheaper than fork from its many threads.
/// The death signal follows the thread that forked, and the executor's
/// worker threads live as long as the service.
pub fn die_with_parent() {
    let Some(pid) = std::env::var_os(DIE_WITH) else {
        return;
    };
    std::env::remove_var(DIE_WITH);
    let Some(pid) = pid.to_str().and_then(|p| p.parse::<i32>().ok()) else {
        return;
    };
    // SAFETY: prctl with integer arguments only.
    let set = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // The service may have died before the signal was armed: then the
    // parent is no longer it.
    if set != 0 || nix::unistd::getppid().as_raw() != pid {
        std::process::exit(125);
    }
}

/// Limits of one confined run (`tresor run` flags).
#[derive(Clone, Debug)]
pub struct Limits {
    /// `--timeout`.
    pub timeout: Duration,
    /// `--memory`.
    pub memory: u64,
    /// `--out-quota`.
    pub out_quota: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(3600),
            memory: 4 << 30,
            out_quota: 1 << 30,
        }
    }
}

/// One profiling run or confined run.
#[derive(Clone, Debug)]
pub struct Task {
    /// The program and its arguments, placeholders replaced.
    pub argv: Vec<OsString>,
    /// The input's directory (read-only).
    pub data: PathBuf,
    /// The output directory.
    pub out: PathBuf,
    /// The profile: written by [`Executor::profile`], read by [`Executor::run`].
    pub profile: PathBuf,
    /// Limits.
    pub limits: Limits,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The exit status (`tresor run`'s: the program's own, or 121–125).
    pub status: i32,
    /// The last lines of its standard error, for the job's report.
    pub stderr_tail: String,
}

/// Runs profiling runs and confined runs.
pub trait Executor: Send + Sync {
    /// `tresor profile` of `task` into `task.profile`.
    fn profile(&self, task: &Task) -> io::Result<Outcome>;
    /// `tresor run` of `task` confined by `task.profile`.
    fn run(&self, task: &Task) -> io::Result<Outcome>;
}

/// Runs on this machine, as child processes of the service.
pub struct Local {
    exe: PathBuf,
}

impl Local {
    /// Uses the tresor binary `exe`.
    pub fn new(exe: &Path) -> Local {
        Local {
            exe: exe.to_path_buf(),
        }
    }

    fn spawn(&self, args: Vec<OsString>) -> io::Result<Outcome> {
        let mut c = Command::new(&self.exe);
        c.args(args)
            .env(DIE_WITH, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn()?;
        let mut err = Vec::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_end(&mut err);
        }
        let status = child.wait()?;
        let text = String::from_utf8_lossy(&err);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        Ok(Outcome {
            status: status.code().unwrap_or(128 + 9),
            stderr_tail: tail,
        })
    }
}

fn secs(d: Duration) -> OsString {
    format!("{}s", d.as_secs().max(1)).into()
}

impl Executor for Local {
    fn profile(&self, t: &Task) -> io::Result<Outcome> {
        let mut a: Vec<OsString> = vec![
            "profile".into(),
            "--out".into(),
            t.profile.clone().into(),
            "--data".into(),
            t.data.clone().into(),
            "--writable".into(),
            t.out.clone().into(),
            "--timeout".into(),
            secs(t.limits.timeout),
            "--".into(),
        ];
        a.extend(t.argv.iter().cloned());
        self.spawn(a)
    }

    fn run(&self, t: &Task) -> io::Result<Outcome> {
        let mut a: Vec<OsString> = vec![
            "run".into(),
            "--profile".into(),
            t.profile.clone().into(),
            "--data".into(),
            t.data.clone().into(),
            "--out".into(),
            t.out.clone().into(),
            "--timeout".into(),
            secs(t.limits.timeout),
            "--memory".into(),
            t.limits.memory.to_string().into(),
            "--out-quota".into(),
            t.limits.out_quota.to_string().into(),
            "--".into(),
        ];
        a.extend(t.argv.iter().cloned());
        self.spawn(a)
    }
}
