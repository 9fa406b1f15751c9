//! Recorders: what watches the profiled program while it runs
//! (docs/PROFILE.md "Recorders"). Both give the same profile:
//!
//! - [`bpf`]: the in-kernel recorder — eBPF on tracepoints aggregates into
//!   maps while the program runs unstopped; needs root (CAP_BPF and
//!   CAP_PERFMON) and a kernel with BTF;
//! - ptrace ([`super::tracer`]): one ptrace stop per syscall; needs no
//!   privilege, the fallback.

pub mod bpf;
mod btf;

use std::ffi::{OsStr, OsString};
use std::fmt;

use super::tracer::{self, Outcome, TraceError, TraceOptions};

/// A recorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorder {
    Bpf,
    Ptrace,
}

impl fmt::Display for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Recorder::Bpf => "bpf",
            Recorder::Ptrace => "ptrace",
        })
    }
}

/// Which recorder `--recorder` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Choice {
    /// The in-kernel recorder where it can run, else ptrace.
    #[default]
    Auto,
    Bpf,
    Ptrace,
}

/// Runs `program args…` under the chosen recorder; with [`Choice::Auto`]
/// says on stderr which one records and why.
pub fn profile(
    program: &OsStr,
    args: &[OsString],
    opts: &TraceOptions,
    choice: Choice,
) -> Result<Outcome, TraceError> {
    match choice {
        Choice::Ptrace => tracer::profile(program, args, opts),
        Choice::Bpf => match bpf::profile(program, args, opts, &|| {}) {
            Ok(r) => r,
            Err(bpf::Unavailable(why)) => Err(TraceError::Recorder(format!(
                "the in-kernel recorder cannot run: {why}; use --recorder ptrace (or auto)"
            ))),
        },
        Choice::Auto => match bpf::profile(program, args, opts, &|| {
            eprintln!("tresor profile: recording in the kernel (recorder bpf)")
        }) {
            Ok(r) => r,
            Err(bpf::Unavailable(why)) => tracer::profile_announced(program, args, opts, &|| {
                eprintln!(
                    "tresor profile: recording with ptrace (recorder ptrace, slower: one stop per syscall); the in-kernel recorder cannot run: {why}"
                )
            }),
        },
    }
}
