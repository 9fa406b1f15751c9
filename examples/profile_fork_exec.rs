//! `profile_fork_exec CODE PROGRAM ARGS...`: runs PROGRAM as a child
//! process (fork + exec), waits for it, then exits with CODE.
//! The profile must include the child's syscalls and paths.
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(Ok(code)), Some(program)) = (args.get(1).map(|c| c.parse::<u8>()), args.get(2))
    else {
        eprintln!("usage: profile_fork_exec CODE PROGRAM ARGS...");
        return ExitCode::from(2);
    };
    match Command::new(program).args(&args[3..]).status() {
        Ok(s) if s.success() => ExitCode::from(code),
        Ok(s) => {
            eprintln!("child failed: {s}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("cannot run {program}: {e}");
            ExitCode::from(1)
        }
    }
}
