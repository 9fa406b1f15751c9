//! Command line of `tresor profile` and `tresor policy`: clap arguments and
//! the commands themselves.
//!
//! `tresor profile --out P.json [--mode M] [--recorder R] [--trace F] [--timeout D] -- PROGRAM ARGS…`
//! `tresor profile show P.json`
//! `tresor profile merge A.json B.json … -o C.json [--force]`
//! `tresor policy show P.json [--json] [--pad-rules N] [--allow-incomplete]`
//! `tresor run --profile P.json --data DIR… --out DIR [limits] -- PROGRAM ARGS…`

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};

use super::conditions::ProfileView;
use super::launch::{self, RunOptions};
use super::policy::{Policy, PolicyOptions};
use super::profile::{Mode, Profile};
use super::recorder::{self, Choice};
use super::tracer::{self, RunEnd, TraceOptions, DEFAULT_MAX_TASKS};

/// `tresor profile`: record what a program needs, or inspect/merge profiles.
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:\n  tresor profile --out ki67.json -- ./ki67 slide.svs\n  tresor profile show ki67.json\n  tresor profile merge run1.json run2.json -o ki67.json"
)]
pub struct ProfileArgs {
    #[command(subcommand)]
    pub command: Option<ProfileCommand>,
    #[command(flatten)]
    pub record: RecordArgs,
}

/// Profile a program run.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Where to write the profile (JSON).
    #[arg(long, short = 'o', value_name = "PROFILE.json", required = true)]
    pub out: Option<PathBuf>,
    /// What to record.
    #[arg(long, value_enum, default_value_t = ModeArg::Args)]
    pub mode: ModeArg,
    /// Per-call trace file (requires --mode full).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// What records: `bpf` (in the kernel, the program never stops; needs
    /// root), `ptrace` (one stop per syscall; no privilege), `auto` (bpf
    /// where it can run, else ptrace; says which on stderr).
    #[arg(long, value_enum, default_value_t = RecorderArg::Auto)]
    pub recorder: RecorderArg,
    /// Kill the program and all its children after this long (e.g. 30s, 5m, 1h, 500ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Most processes and threads alive at once before the tree is killed.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_TASKS, value_parser = at_least_one)]
    pub max_tasks: usize,
    /// An input directory, read-only (as `tresor run --data`); repeatable.
    #[arg(long, value_name = "DIR")]
    pub data: Vec<PathBuf>,
    /// A directory the analysis writes (as `tresor run --out`); repeatable.
    /// Everything else is read-only while profiling.
    #[arg(long, value_name = "DIR")]
    pub writable: Vec<PathBuf>,
    /// Size of the private /tmp and /dev/shm, each (as `tresor run --tmp-size`).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    pub tmp_size: u64,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "PROGRAM [ARGS]...")]
    pub command: Vec<OsString>,
}

/// `--recorder` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RecorderArg {
    Auto,
    Bpf,
    Ptrace,
}

impl From<RecorderArg> for Choice {
    fn from(r: RecorderArg) -> Choice {
        match r {
            RecorderArg::Auto => Choice::Auto,
            RecorderArg::Bpf => Choice::Bpf,
            RecorderArg::Ptrace => Choice::Ptrace,
        }
    }
}

/// `--mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// The set of syscalls and their counts only.
    Syscalls,
    /// Also argument values, paths, network use and executed programs.
    Args,
    /// Like args, plus a per-call trace to --trace FILE (grows with the run).
    Full,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Syscalls => Mode::Syscalls,
            ModeArg::Args => Mode::Args,
            ModeArg::Full => Mode::Full,
        }
    }
}

/// Subcommands working on profile files.
#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Print a profile as a table.
    Show {
        /// The profile to show.
        profile: PathBuf,
        /// Print the JSON instead (checked and normalised).
        #[arg(long)]
        json: bool,
    },
    /// Union several runs of the same analysis into one profile.
    Merge {
        /// Profiles to merge (at least two).
        #[arg(required = true, num_args = 2..)]
        inputs: Vec<PathBuf>,
        /// Where to write the merged profile.
        #[arg(long, short = 'o', value_name = "PROFILE.json")]
        out: PathBuf,
        /// Merge even if the profiles are of different binaries.
        #[arg(long)]
        force: bool,
    },
}

/// Parses `500ms`, `30s`, `5m`, `1h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; use e.g. 500ms, 30s, 5m or 1h"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}; use ms, s, m or h")),
    };
    if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
        return Err(format!("{s:?} must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Runs `tresor profile …`; the exit code is the profiled program's.
pub fn run_profile(args: ProfileArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(ProfileCommand::Show { profile, json }) => {
            let p = Profile::load(&profile)?;
            if json {
                print!("{}", p.to_json());
            } else {
                print!("{}", p.render_table());
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(ProfileCommand::Merge { inputs, out, force }) => {
            let mut iter = inputs.iter();
            let Some(first) = iter.next() else {
                bail!("merge needs at least two profiles");
            };
            let mut merged = Profile::load(first)?;
            for p in iter {
                let other = Profile::load(p)?;
                merged
                    .merge(&other, force)
                    .with_context(|| format!("merging {}", p.display()))?;
            }
            merged.save(&out)?;
            eprintln!(
                "tresor profile: merged {} profiles ({} runs) into {}{}",
                inputs.len(),
                merged.runs,
                out.display(),
                if merged.complete { "" } else { " (INCOMPLETE)" }
            );
            Ok(ExitCode::SUCCESS)
        }
        None => record(args.record),
    }
}

fn record(args: RecordArgs) -> anyhow::Result<ExitCode> {
    let Some(out) = args.out else {
        bail!("--out PROFILE.json is required");
    };
    let mode = Mode::from(args.mode);
    if args.trace.is_some() && mode != Mode::Full {
        bail!("--trace only works with --mode full");
    }
    if mode == Mode::Full && args.trace.is_none() {
        bail!("--mode full needs --trace FILE for the per-call trace");
    }
    let Some((program, rest)) = args.command.split_first() else {
        bail!("no program given: tresor profile --out P.json -- PROGRAM [ARGS...]");
    };
    // Fail before the (possibly long) run, not after it.
    let out_dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    tempfile::NamedTempFile::new_in(&out_dir).with_context(|| {
        format!(
            "cannot write the profile into {} (does the directory exist and is it writable?)",
            out_dir.display()
        )
    })?;
    let opts = TraceOptions {
        mode,
        trace: args.trace,
        timeout: args.timeout,
        max_tasks: args.max_tasks.max(1),
        view: Some(ProfileView {
            data: args.data,
            writable: args.writable,
            tmp_size: args.tmp_size,
        }),
    };
    let outcome = recorder::profile(program, rest, &opts, args.recorder.into())?;
    outcome
        .profile
        .save(&out)
        .context("the program ran, but its profile could not be saved")?;
    let p = &outcome.profile;
    let summary = format!(
        "{} syscalls, {} process(es), {} thread(s)",
        p.syscalls.values().filter(|e| e.count > 0).count(),
        p.processes,
        p.threads
    );
    match &outcome.end {
        RunEnd::Exited(_) if p.complete => {
            eprintln!("tresor profile: wrote {} ({summary})", out.display())
        }
        RunEnd::Signaled(s) => eprintln!(
            "tresor profile: {} was killed by {}; wrote INCOMPLETE profile {} ({summary})",
            p.program.path,
            tracer::signal_name(*s),
            out.display()
        ),
        _ => eprintln!(
            "tresor profile: {}; wrote INCOMPLETE profile {} ({summary})",
            p.incomplete_reason.as_deref().unwrap_or("run stopped"),
            out.display()
        ),
    }
    Ok(ExitCode::from(outcome.end.exit_code()))
}

/// `tresor policy`: the seccomp policy a profile compiles to.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tresor policy show ki67.json\n  tresor policy show --json ki67.json > ki67.policy.json\n  tresor policy show --pad-rules 2000 ki67.json"
)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// Subcommands of `tresor policy`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the compiled rules: one line per syscall with its conditions and
    /// reason, then the filters and their instructions.
    Show {
        /// A profile (from `tresor profile`) or a policy (from `--json`).
        file: PathBuf,
        /// Print the policy as JSON instead (one rule per syscall, each with a comment).
        #[arg(long)]
        json: bool,
        /// Add N harmless ioctl request rules (benchmarks: a 2,000-rule policy).
        #[arg(long, value_name = "N", default_value_t = 0)]
        pad_rules: usize,
        /// Accept a profile marked incomplete.
        #[arg(long)]
        allow_incomplete: bool,
    },
}

/// Runs `tresor policy …`.
pub fn run_policy(args: PolicyArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        PolicyCommand::Show {
            file,
            json,
            pad_rules,
            allow_incomplete,
        } => {
            let opts = PolicyOptions {
                allow_incomplete,
                pad_rules,
            };
            let policy = Policy::load(&file, &opts)?;
            // Compiled either way: a policy that cannot load is an error here,
            // not at run time.
            let compiled = policy
                .compile()
                .with_context(|| format!("compiling the policy of {}", file.display()))?;
            if json {
                print!("{}", policy.to_json());
            } else {
                print!("{}", policy.render(&compiled));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `tresor run`: run an analysis confined to its profile (docs/RUN.md).
#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: the program's own, or 121 policy violation, 122 limit hit, 123 not the profile's program, 124 timeout, 125 tresor could not set the run up.\n\nExample:\n  tresor run --profile ki67.json --data MNT/slides --out MNT/results -- ./ki67 MNT/slides/s1.svs"
)]
pub struct RunArgs {
    /// The profile (from `tresor profile`) whose policy confines the run.
    #[arg(long, value_name = "P.json")]
    pub profile: PathBuf,
    /// A directory the analysis may read (repeatable).
    #[arg(long, value_name = "DIR", required = true)]
    pub data: Vec<PathBuf>,
    /// The only directory the analysis may write (also its $HOME).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Kill the whole process tree after this long (e.g. 30s, 5m).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Address space per process (e.g. 512M, 4G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "4G")]
    pub memory: u64,
    /// Processes and threads of the analysis at once.
    #[arg(long, value_name = "N", default_value_t = launch::DEFAULT_MAX_PROCS, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_procs: u64,
    /// Largest file the analysis may write (e.g. 100M, 1G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1G")]
    pub max_file_size: u64,
    /// Size of the private /tmp and of /dev/shm the analysis gets, each (e.g. 64M, 1G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256M")]
    pub tmp_size: u64,
    /// Most the analysis may write into --out in all (it writes into a
    /// private staging directory of this size; e.g. 100M, 4G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1G")]
    pub out_quota: u64,
    /// Deliver the outputs of a run that failed or was stopped too.
    #[arg(long)]
    pub keep_partial: bool,
    /// Run even where the kernel lacks Landlock or namespaces (less confined).
    #[arg(long)]
    pub allow_weaker: bool,
    /// Accept a profile marked incomplete.
    #[arg(long)]
    pub allow_incomplete: bool,
    /// Run a program (or, for an interpreter, a script) other than the one
    /// the profile was made of.
    #[arg(long)]
    pub allow_other_program: bool,
    /// Let the analysis run on past calls outside the profile; record them
    /// as a profile delta (for `tresor profile merge`). The filesystem view
    /// and the limits still hold.
    #[arg(long)]
    pub audit: bool,
    /// Where `--audit` writes the delta (default: beside the profile,
    /// `NAME.delta.json`).
    #[arg(long, value_name = "FILE", requires = "audit")]
    pub delta: Option<PathBuf>,
    /// Add N harmless ioctl request rules to the policy (benchmarks only:
    /// the cost of a 2,000-rule policy; see `tresor policy show --pad-rules`).
    #[arg(long, value_name = "N", default_value_t = 0, hide = true)]
    pub pad_rules: usize,
    /// Print how long the start-up took (benchmarks only).
    #[arg(long, hide = true)]
    pub timing: bool,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    pub command: Vec<OsString>,
}

/// Parses `512`, `64K`, `256M`, `4G`, `1GiB` (binary units) into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; use e.g. 512M or 4G"))?;
    let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}; use K, M, G or T")),
    };
    match n.checked_mul(mul) {
        Some(0) => Err(format!("{s:?} must be more than zero")),
        Some(v) => Ok(v),
        None => Err(format!("{s:?} is too large")),
    }
}

/// Runs `tresor run …`; the exit status is the program's, or one of
/// tresor's (121 violation, 122 limit, 124 timeout, 125 set-up failed).
pub fn run_run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut command = args.command.into_iter();
    let Some(program) = command.next() else {
        bail!("no program given after --");
    };
    let args_timing = args.timing;
    let audit = args.audit.then(|| {
        args.delta
            .clone()
            .unwrap_or_else(|| args.profile.with_extension("delta.json"))
    });
    let opts = RunOptions {
        audit,
        profile: args.profile,
        data: args.data,
        out: args.out,
        timeout: args.timeout,
        memory: args.memory,
        max_procs: args.max_procs,
        max_file_size: args.max_file_size,
        tmp_size: args.tmp_size,
        out_quota: args.out_quota,
        keep_partial: args.keep_partial,
        allow_weaker: args.allow_weaker,
        allow_incomplete: args.allow_incomplete,
        allow_other_program: args.allow_other_program,
        pad_rules: args.pad_rules,
        program,
        args: command.collect(),
    };
    let started = launch::prepare(&opts).and_then(|(prep, ruleset)| {
        for w in &prep.weaker {
            eprintln!("tresor: warning: running without {w} (--allow-weaker)");
        }
        launch::supervise(prep, ruleset, &opts)
    });
    match started {
        Ok(report) => {
            for line in &report.audited {
                eprintln!("tresor: {line}");
            }
            if let Some(m) = &report.message {
                eprintln!("tresor: {m}");
            }
            for line in &report.delivery {
                eprintln!("tresor: {line}");
            }
            if let (true, Some((total, child, ops))) = (args_timing, report.setup) {
                eprintln!(
                    "tresor: timing: the program started {:.2} ms after tresor forked; its own process set up (a root of {ops} steps, Landlock, capabilities, rlimits, seccomp) in {:.2} ms",
                    total.as_secs_f64() * 1e3,
                    child.as_secs_f64() * 1e3
                );
            }
            Ok(ExitCode::from(report.exit_code()))
        }
        Err(e @ launch::RunError::OtherProgram(_)) => {
            eprintln!("tresor run: {e}");
            Ok(ExitCode::from(launch::EXIT_OTHER_PROGRAM))
        }
        Err(e) => {
            eprintln!("tresor run: {e}");
            Ok(ExitCode::from(launch::EXIT_RUNNER))
        }
    }
}

/// `--max-tasks`: 0 would kill every analysis at its first process.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("0 would stop the analysis at once; give 1 or more".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("3d").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert!(parse_size("0").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5X").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
