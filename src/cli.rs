//! Command line (in progress).
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tresor", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Profile an analysis under ptrace, or show / merge profiles.
    Profile(crate::sandbox::cli::ProfileArgs),
}

/// Entry point of the `tresor` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Profile(args) => crate::sandbox::cli::run_profile(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tresor: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
