//! Syscall-heavy benchmark workload for `tools/bench-profile.sh`:
//! - `bench_small_files create DIR N`: writes N small files into DIR;
//! - `bench_small_files scan DIR`: stats and reads every file in DIR and
//!   prints the total size and a checksum;
//! - `bench_small_files ioctl N`: N `ioctl(FIONREAD)` calls on a pipe — the
//!   syscall a padded policy (`--pad-rules`) puts its 2,000 rules on, so
//!   each call walks them (`tools/bench-run.sh`, worst case).
use std::io::Write;
use std::process::ExitCode;

fn scan(dir: &str) -> std::io::Result<(u64, u64)> {
    let (mut total, mut sum) = (0u64, 0u64);
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = std::fs::metadata(&path)?;
        let data = std::fs::read(&path)?;
        total += meta.len();
        sum = data
            .iter()
            .fold(sum, |s, &b| s.rotate_left(5) ^ u64::from(b));
    }
    Ok((total, sum))
}

fn ioctls(n: u64) -> std::io::Result<()> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a live two-element array for pipe(2) to fill.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut pending: libc::c_int = 0;
    for _ in 0..n {
        // SAFETY: FIONREAD writes one c_int to the live `pending`.
        if unsafe { libc::ioctl(fds[0], libc::FIONREAD, &mut pending) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    println!("{n} ioctls, {pending} bytes pending");
    Ok(())
}

fn create(dir: &str, n: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0..n {
        let mut f = std::fs::File::create(format!("{dir}/f{i:05}.txt"))?;
        let line = format!("sample {i} ki67 {}\n", i * 7919 % 1000);
        for _ in 0..(1 + i % 40) {
            f.write_all(line.as_bytes())?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let r = match (args.get(1).map(String::as_str), args.get(2), args.get(3)) {
        (Some("create"), Some(dir), Some(n)) => match n.parse() {
            Ok(n) => create(dir, n),
            Err(_) => Err(std::io::Error::other("N must be a number")),
        },
        (Some("ioctl"), Some(n), None) => match n.parse() {
            Ok(n) => ioctls(n),
            Err(_) => Err(std::io::Error::other("N must be a number")),
        },
        (Some("scan"), Some(dir), None) => {
            scan(dir).map(|(t, s)| println!("{t} bytes, checksum {s:x}"))
        }
        _ => Err(std::io::Error::other(
            "usage: bench_small_files create DIR N | scan DIR | ioctl N",
        )),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_small_files: {e}");
            ExitCode::FAILURE
        }
    }
}
