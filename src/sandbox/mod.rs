//! The sandbox launcher: profiling an analysis and confining it.
//!
//! - [`profile`]: the profile data type (reviewable JSON);
//! - [`policy`]: profile → seccomp rules (reviewable JSON) → stacked BPF filters;
//! - [`tracer`]: `tresor profile`, the ptrace + seccomp-trace profiler;
//! - [`syscalls`]: syscall name ↔ number tables (x86_64, aarch64);
//! - [`launch`]: `tresor run`, the confinement order and the supervisor;
//! - [`root`]: the analysis's own minimal root (what its view holds);
//! - [`deliver`]: staged outputs copied into `--out` (files and directories only);
//! - [`sys`]: the raw syscalls, the only `unsafe` here;
//! - [`cli`]: clap arguments and the `profile` and `policy` commands.

pub mod cli;
pub mod conditions;
pub mod deliver;
pub mod launch;
pub mod policy;
pub mod profile;
pub mod recorder;
pub mod root;
pub mod sys;
pub mod syscalls;
pub mod tracer;

pub use policy::{CompiledPolicy, Policy, PolicyError, PolicyOptions, PolicyStats};
pub use profile::{Access, DirAccess, Exit, Mode, Profile, ProfileError, SyscallEntry};
pub use syscalls::Arch;
pub use tracer::{profile as run_profiler, Outcome, RunEnd, TraceError, TraceOptions};
