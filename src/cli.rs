//! Command line (in progress).
use std::process::ExitCode;

/// Entry point of the `tresor` binary.
pub fn main() -> ExitCode {
    ExitCode::SUCCESS
}
