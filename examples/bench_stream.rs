//! Compute-heavy benchmark workload for `tools/bench-profile.sh`, standing
//! in for an image analysis: `bench_stream FILE [PASSES]` reads FILE in
//! 1 MiB chunks PASSES times (default 1), hashes it (SHA-256) and builds a
//! byte histogram with a "positive fraction" like a Ki-67 score.
use std::io::Read;
use std::process::ExitCode;

use sha2::{Digest, Sha256};

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: bench_stream FILE");
        return ExitCode::from(2);
    };
    let passes = match std::env::args().nth(2).map(|p| p.parse::<u32>()) {
        None => 1,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("bench_stream: PASSES must be a positive number");
            return ExitCode::from(2);
        }
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut hist = [0u64; 256];
    let mut hash = Sha256::new();
    for _ in 0..passes {
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("bench_stream: {path}: {e}");
                return ExitCode::FAILURE;
            }
        };
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    eprintln!("bench_stream: {path}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            hash.update(&buf[..n]);
            for &b in &buf[..n] {
                hist[b as usize] += 1;
            }
        }
    }
    let total: u64 = hist.iter().sum();
    let positive: u64 = hist[160..].iter().sum();
    println!(
        "{total} bytes, positive {:.4}, sha256 {}",
        positive as f64 / total.max(1) as f64,
        hex::encode(hash.finalize())
    );
    ExitCode::SUCCESS
}
