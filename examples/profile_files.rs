//! `profile_files IN OUT`: reads IN, writes its length to OUT.
//! The profile must show IN read-only and OUT written.
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: profile_files IN OUT");
        return ExitCode::from(2);
    }
    let data = match std::fs::read(&args[1]) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot read {}: {e}", args[1]);
            return ExitCode::from(1);
        }
    };
    if let Err(e) = std::fs::write(&args[2], format!("{}\n", data.len())) {
        eprintln!("cannot write {}: {e}", args[2]);
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
