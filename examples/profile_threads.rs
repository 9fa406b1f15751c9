//! `profile_threads DIR N`: N threads, thread i creates DIR/thread-i.
//! The profile must list every file: all threads are followed.
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(Ok(n))) = (args.get(1), args.get(2).map(|n| n.parse::<usize>())) else {
        eprintln!("usage: profile_threads DIR N");
        return ExitCode::from(2);
    };
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let path = format!("{dir}/thread-{i}");
            std::thread::spawn(move || std::fs::write(path, b"x").is_ok())
        })
        .collect();
    let ok = handles.into_iter().all(|h| h.join().unwrap_or(false));
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
