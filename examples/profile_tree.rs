//! Process trees for the profiler's bad-input tests:
//! - `profile_tree many N [MS]`: starts N children at once (each sleeps MS
//!   milliseconds), then waits for all of them;
//! - `profile_tree hang`: starts one child that hangs (60 s), prints its
//!   pid, hangs (60 s): a run for `--timeout` to end;
//! - `profile_tree child MS`: sleeps MS milliseconds (the children).
use std::process::{Child, Command, ExitCode};
use std::time::Duration;

fn spawn_self(ms: u64) -> std::io::Result<Child> {
    Command::new(std::env::current_exe()?)
        .args(["child", &ms.to_string()])
        .spawn()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize, default: u64| {
        args.get(i)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(default)
    };
    match args.get(1).map(String::as_str) {
        Some("many") => {
            let ms = num(3, 0);
            let mut children = Vec::new();
            for _ in 0..num(2, 100) {
                match spawn_self(ms) {
                    Ok(c) => children.push(c),
                    Err(e) => {
                        eprintln!("spawn failed: {e}");
                        return ExitCode::from(1);
                    }
                }
            }
            let ok = children
                .iter_mut()
                .all(|c| c.wait().map(|s| s.success()).unwrap_or(false));
            ExitCode::from(if ok { 0 } else { 1 })
        }
        Some("hang") => match spawn_self(60_000) {
            Ok(c) => {
                println!("{}", c.id());
                std::thread::sleep(Duration::from_secs(60));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("spawn failed: {e}");
                ExitCode::from(1)
            }
        },
        Some("child") => {
            std::thread::sleep(Duration::from_millis(num(2, 0)));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: profile_tree many N [MS] | hang | child MS");
            ExitCode::from(2)
        }
    }
}
