//! `attack --data DIR --out DIR [--fork] [--also-read FILE…] [--nss] [--chmod] [--fifo] [--attack NAME [--target PATH]]`
//!
//! A small benign analysis for the `tresor run` tests (tests/run.rs): it
//! reads every file under `--data`, writes a per-file checksum table to
//! `--out/result.txt` and prints a summary. With `--attack NAME` it makes
//! one escape attempt instead, the kind an untrusted analysis might: the
//! tests profile the benign run and check that each attack is stopped.
//! `--fork` makes the benign run fork one helper process (that exits at
//! once), so its profile allows forking: the fork bomb then meets the
//! process limit rather than the policy. Each `--also-read FILE` (benign
//! run only) is read first and reported as `also read N bytes of FILE`:
//! a profile that read many files in one directory.
//!
//! The benign run asks for its parent's pid (and discards it), so its
//! profile allows `getppid`: the `kill-parent` attack then gets as far as
//! `kill`, the call that matters.
//!
//! An attack the sandbox lets through prints `ATTACK SUCCEEDED` and exits 0;
//! one refused with an error prints `blocked: …` and exits 1 (a seccomp
//! kill prints nothing: the process is gone).
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn usage() -> ExitCode {
    eprintln!(
        "usage: attack --data DIR --out DIR [--fork] [--also-read FILE…] [--attack NAME [--target PATH]]"
    );
    ExitCode::from(2)
}

/// FNV-1a, enough to show the bytes were read.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn benign(data: &Path, out: &Path) -> std::io::Result<String> {
    // getppid into the profile: see the module comment.
    std::hint::black_box(std::os::unix::process::parent_id());
    let mut names: Vec<PathBuf> = std::fs::read_dir(data)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    names.sort();
    let mut table = String::new();
    let (mut total, mut all) = (0u64, 0u64);
    for p in &names {
        if !p.is_file() {
            continue;
        }
        let bytes = std::fs::read(p)?;
        let c = checksum(&bytes);
        total += bytes.len() as u64;
        all ^= c;
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        table.push_str(&format!(
            "{} {} {c:016x}\n",
            name.unwrap_or_default(),
            bytes.len()
        ));
    }
    let summary = format!(
        "files: {}\nbytes: {total}\nchecksum: {all:016x}\n",
        names.len()
    );
    std::fs::write(out.join("result.txt"), format!("{table}{summary}"))?;
    Ok(summary)
}

fn outcome(r: std::io::Result<String>) -> ExitCode {
    match r {
        Ok(what) => {
            println!("ATTACK SUCCEEDED: {what}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("blocked: {e}");
            ExitCode::from(1)
        }
    }
}

fn check(rc: libc::c_int, what: &str) -> std::io::Result<String> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(what.to_string())
    }
}

/// Reads a whole file, or every file under a directory: how much was read.
fn read_all(p: &Path) -> std::io::Result<String> {
    let mut total = 0usize;
    let mut todo = vec![p.to_path_buf()];
    while let Some(p) = todo.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p)? {
                todo.push(e?.path());
            }
        } else {
            total += std::fs::read(&p)?.len();
        }
    }
    Ok(format!("{total} bytes of {}", p.display()))
}

/// Burns CPU for 60 s (a run for `--timeout` to end).
fn spin() -> String {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < Duration::from_secs(60) {
        for i in 0..1_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    format!("spun 60 s ({x})")
}

fn attack(name: &str, target: Option<&Path>, data: &Path, out: &Path) -> ExitCode {
    let r = match name {
        "read-shadow" => std::fs::read("/etc/shadow").map(|b| format!("{} bytes", b.len())),
        // The store's ciphertext, or a PSE: `--target` names it.
        "read-target" => match target {
            Some(t) => read_all(t),
            None => return usage(),
        },
        "load-module" => {
            // SAFETY: finit_module takes integers and a NUL-terminated literal.
            let rc = unsafe { libc::syscall(libc::SYS_finit_module, -1, c"".as_ptr(), 0) };
            check(rc as libc::c_int, "module loaded")
        }
        "write-data" => std::fs::write(data.join("evil.txt"), "x").map(|_| "wrote".into()),
        "write-outside" => {
            let parent = out.parent().unwrap_or(Path::new("/"));
            std::fs::write(parent.join("evil.txt"), "x").map(|_| "wrote".into())
        }
        "connect" => std::net::TcpStream::connect("127.0.0.1:80").map(|_| "connected".into()),
        "raw-socket" => {
            // SAFETY: plain socket(2) with integer arguments.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
            check(fd, "raw socket")
        }
        "ptrace" => {
            // SAFETY: PTRACE_ATTACH takes integer arguments.
            let rc = unsafe { libc::ptrace(libc::PTRACE_ATTACH, 1, 0usize, 0usize) };
            check(rc as libc::c_int, "attached")
        }
        "kill-parent" => {
            let ppid = std::os::unix::process::parent_id() as libc::pid_t;
            // SAFETY: kill takes integer arguments.
            check(unsafe { libc::kill(ppid, libc::SIGKILL) }, "killed")
        }
        "mount" => {
            // SAFETY: all pointers are NUL-terminated literals or null.
            let rc = unsafe {
                libc::mount(
                    c"none".as_ptr(),
                    c"/tmp".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            check(rc, "mounted")
        }
        // SAFETY: unshare takes an integer argument.
        "unshare" => check(unsafe { libc::unshare(libc::CLONE_NEWUSER) }, "unshared"),
        // SAFETY: chroot takes a NUL-terminated literal.
        "chroot" => check(unsafe { libc::chroot(c"/".as_ptr()) }, "chrooted"),
        // SAFETY: setuid takes an integer.
        "setuid" => check(unsafe { libc::setuid(0) }, "setuid"),
        "exec-sh" => {
            let argv = [
                c"sh".as_ptr(),
                c"-c".as_ptr(),
                c"echo shell".as_ptr(),
                std::ptr::null(),
            ];
            // SAFETY: path and argv are NUL-terminated; argv ends in NULL.
            unsafe { libc::execv(c"/bin/sh".as_ptr(), argv.as_ptr()) };
            Err(std::io::Error::last_os_error())
        }
        "mprotect-wx" => {
            // SAFETY: an anonymous private mapping; no memory of ours is touched.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                Err(std::io::Error::last_os_error())
            } else {
                let prot = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
                // SAFETY: `p` is the page mapped above.
                check(unsafe { libc::mprotect(p, 4096, prot) }, "page is W+X")
            }
        }
        "fork-bomb" => {
            let mut n = 0u32;
            loop {
                // SAFETY: the children only loop on fork and exit.
                let pid = unsafe { libc::fork() };
                if pid < 0 {
                    break Err(std::io::Error::last_os_error());
                }
                n += 1;
                if n > 100_000 {
                    break Ok(format!("{n} forks"));
                }
            }
        }
        "memory-bomb" => {
            const CHUNK: usize = 16 << 20;
            let mut total = 0usize;
            loop {
                // SAFETY: an anonymous private mapping, written only within it.
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        CHUNK,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                if p == libc::MAP_FAILED {
                    let e = std::io::Error::last_os_error();
                    break Err(std::io::Error::other(format!(
                        "after {} MiB: {e}",
                        total >> 20
                    )));
                }
                for off in (0..CHUNK).step_by(4096) {
                    // SAFETY: `off` is inside the CHUNK bytes mapped above.
                    unsafe { *(p as *mut u8).add(off) = 1 };
                }
                total += CHUNK;
                if total >= 64 << 30 {
                    break Ok(format!("{} MiB", total >> 20));
                }
            }
        }
        "big-file" => (|| {
            let mut f = std::fs::File::create(out.join("big.bin"))?;
            let block = vec![0u8; 1 << 20];
            for _ in 0..4096 {
                f.write_all(&block)?;
            }
            Ok("wrote 4 GiB".to_string())
        })(),
        "spin" => Ok(spin()),
        // Two processes spinning: the child first leaves `--out/child-started`.
        // SAFETY: single-threaded; the child writes a file, spins and _exits.
        "spin-tree" => match unsafe { libc::fork() } {
            0 => {
                let _ = std::fs::write(out.join("child-started"), "");
                spin();
                // SAFETY: ends the child without running the parent's exit path.
                unsafe { libc::_exit(0) }
            }
            pid if pid > 0 => Ok(spin()),
            _ => Err(std::io::Error::last_os_error()),
        },
        _ => match escape_attack(name, target, out) {
            Some(r) => r,
            None => {
                eprintln!("attack: unknown attack {name:?}");
                return ExitCode::from(2);
            }
        },
    };
    outcome(r)
}

// --- escape classes (tests/escape.rs, issue 13) ----------------------------

/// Benign extras, recorded by a profiling run so that the profile allows
/// what a hostile run then abuses: `--nss` looks up its own user name
/// (nss connects to nscd's unix socket), `--chmod` makes its result
/// world-readable, `--fifo` makes (and removes) a fifo in `--out`.
fn benign_extras(extras: &[String], out: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for e in extras {
        match e.as_str() {
            "--nss" => {
                // SAFETY: getuid takes nothing; getpwuid returns a pointer
                // into libc's static storage (or NULL), not kept.
                let _ = unsafe { libc::getpwuid(libc::getuid()) };
            }
            "--chmod" => std::fs::set_permissions(
                out.join("result.txt"),
                std::fs::Permissions::from_mode(0o644),
            )?,
            "--fifo" => {
                let fifo = std::ffi::CString::new(out.join("fifo").as_os_str().as_encoded_bytes())
                    .map_err(std::io::Error::other)?;
                // SAFETY: a NUL-terminated path.
                check(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, "fifo")?;
                std::fs::remove_file(out.join("fifo"))?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn cpath(p: &Path) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)
}

/// The escape attempts of issue 13's classes; `None` for an unknown name.
fn escape_attack(name: &str, target: Option<&Path>, out: &Path) -> Option<std::io::Result<String>> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    Some(match name {
        // Class 1: a mount's control socket — connect and lock it.
        // Raw calls, as nss makes them: the profile of `--nss` allows
        // socket(AF_UNIX, SOCK_STREAM) and connect, nothing more is needed
        // to reach the socket.
        "connect-unix" => (|| {
            let t = target.ok_or_else(|| std::io::Error::other("--target SOCKET"))?;
            let bytes = t.as_os_str().as_encoded_bytes();
            // SAFETY: sockaddr_un is plain old data; all-zero is valid.
            let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            if bytes.len() >= addr.sun_path.len() {
                return Err(std::io::Error::other("socket path too long"));
            }
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
                *d = *s as libc::c_char;
            }
            // SAFETY: plain socket(2) with integer arguments.
            let fd =
                unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            check(fd, "")?;
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            // SAFETY: `addr` is a live sockaddr_un of `len` bytes.
            let rc = unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
            check(rc, "")?;
            // Connected: from here on the sandbox has already failed.
            let req = b"{\"v\":1,\"op\":\"lock\"}\n";
            // SAFETY: writes the literal's bytes to our socket.
            unsafe { libc::write(fd, req.as_ptr().cast(), req.len()) };
            // SAFETY: from_raw_fd takes ownership of the fd made above.
            let mut s: std::os::unix::net::UnixStream =
                unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut reply = String::new();
            let _ = s.read_to_string(&mut reply);
            Ok(format!(
                "connected to {}, sent lock: {}",
                t.display(),
                reply.trim()
            ))
        })(),
        // Class 2: privileges.
        "cap-eff" => (|| {
            let st = std::fs::read_to_string("/proc/self/status")?;
            let caps: Vec<&str> = st
                .lines()
                .filter(|l| l.starts_with("Cap"))
                .filter(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .is_some_and(|v| !v.trim_start_matches('0').is_empty())
                })
                .collect();
            if caps.is_empty() {
                Err(std::io::Error::other("no capabilities"))
            } else {
                Ok(caps.join("; "))
            }
        })(),
        // SAFETY: chroot takes a NUL-terminated literal.
        "chroot-root" => check(unsafe { libc::chroot(c"/".as_ptr()) }, "chrooted"),
        // SAFETY: setuid takes an integer.
        "setuid-root" => check(unsafe { libc::setuid(0) }, "setuid(0)"),
        "mknod-dev" => (|| {
            let p = cpath(&out.join("kmsg"))?;
            // SAFETY: a NUL-terminated path; mode and device are integers.
            let rc =
                unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 11)) };
            check(rc, "made a character device (1, 11: /dev/kmsg)")
        })(),
        "setuid-file" => (|| {
            let p = cpath(&out.join("suid"))?;
            // SAFETY: a NUL-terminated path; flags and mode are integers.
            let fd = unsafe { libc::open(p.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o4755) };
            check(fd, "")?;
            // SAFETY: writes 4 bytes of a literal to the fd opened above.
            let n = unsafe { libc::write(fd, b"\x7fELF".as_ptr().cast(), 4) };
            // SAFETY: closes the fd opened above.
            unsafe { libc::close(fd) };
            check(n as libc::c_int, "")?;
            let mode = std::fs::metadata(out.join("suid"))?.permissions().mode();
            if mode & 0o6000 != 0 {
                Ok(format!("setuid file, mode {mode:o}"))
            } else {
                Err(std::io::Error::other(format!(
                    "no setuid bit (mode {mode:o})"
                )))
            }
        })(),
        "chmod-setuid" => (|| {
            let p = out.join("suid2");
            std::fs::write(&p, b"\x7fELF")?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o4755))?;
            let mode = std::fs::metadata(&p)?.permissions().mode();
            Ok(format!("setuid file, mode {mode:o}"))
        })(),
        // Class 3: chmod of a file (outside the view, or in --data).
        "chmod-target" => (|| {
            let t = target.ok_or_else(|| std::io::Error::other("--target PATH"))?;
            std::fs::set_permissions(t, std::fs::Permissions::from_mode(0o644))?;
            Ok(format!("{} is now 0644", t.display()))
        })(),
        // Class 3: chmod what the inherited descriptors 0–2 are (the
        // caller's files or terminal, if they were handed over).
        "fchmod-stdio" => {
            let mut done = Vec::new();
            for fd in 0..3 {
                // SAFETY: fchmod takes integers.
                if unsafe { libc::fchmod(fd, 0o600) } == 0 {
                    done.push(fd.to_string());
                }
            }
            if done.is_empty() {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(format!("fchmod 0600 of fds {}", done.join(", ")))
            }
        }
        // Class 5: a run that waits (stdin to EOF) while someone stops
        // the namespace's init from outside.
        "wait-stdin" => (|| {
            println!("ready");
            std::io::stdout().flush()?;
            let mut v = Vec::new();
            std::io::stdin().read_to_end(&mut v)?;
            Ok(format!("read {} bytes of stdin, then ended", v.len()))
        })(),
        // Class 9: push a character into an inherited terminal's input
        // (TIOCSTI), on each of fds 0–2.
        "tiocsti" => {
            let mut last = Err(std::io::Error::other("no fd"));
            for fd in 0..3 {
                let c = b'x';
                // SAFETY: TIOCSTI reads one byte from a live local.
                let rc = unsafe { libc::ioctl(fd, libc::TIOCSTI, &c as *const u8) };
                last = check(rc, &format!("TIOCSTI on fd {fd}"));
                if last.is_ok() {
                    break;
                }
            }
            last
        }
        // Class 9: fill --out with many files, each under a per-file limit.
        "fill-out" => (|| {
            let block = vec![7u8; 1 << 20];
            for i in 0..6 {
                let mut f = std::fs::File::create(out.join(format!("part{i:02}.bin")))?;
                for _ in 0..7 {
                    f.write_all(&block)?;
                }
            }
            Ok("wrote 6 files of 7 MiB (42 MiB)".to_string())
        })(),
        // Class 9: write a native program into --out and run it.
        "exec-out" => (|| {
            let prog = out.join("prog");
            // read + write (copy_file_range would differ between the
            // profiling run's filesystem and the staging tmpfs).
            std::fs::write(&prog, std::fs::read("/proc/self/exe")?)?;
            std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755))?;
            let p = cpath(&prog)?;
            let argv = [p.as_ptr(), std::ptr::null()];
            // SAFETY: path and argv are NUL-terminated; argv ends in NULL.
            unsafe { libc::execv(p.as_ptr(), argv.as_ptr()) };
            Err(std::io::Error::last_os_error())
        })(),
        // Class 9: outputs that are no regular files.
        "odd-outputs" => (|| {
            std::fs::write(out.join("plain.txt"), "plain\n")?;
            std::fs::create_dir(out.join("sub"))?;
            std::fs::write(out.join("sub/inner.txt"), "inner\n")?;
            std::os::unix::fs::symlink("/etc/passwd", out.join("link"))?;
            let fifo = cpath(&out.join("fifo"))?;
            // SAFETY: a NUL-terminated path.
            check(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, "")?;
            Ok("made a file, a directory, a symlink and a fifo".to_string())
        })(),
        _ => return None,
    })
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (mut data, mut out, mut which, mut fork) = (None, None, None, false);
    let (mut target, mut also_read) = (None, Vec::new());
    let mut extras = Vec::new();
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--data") => data = args.next().map(PathBuf::from),
            Some("--out") => out = args.next().map(PathBuf::from),
            Some("--attack") => which = args.next().and_then(|s| s.into_string().ok()),
            Some("--fork") => fork = true,
            Some("--target") => target = args.next().map(PathBuf::from),
            Some("--also-read") => match args.next() {
                Some(p) => also_read.push(PathBuf::from(p)),
                None => return usage(),
            },
            Some(e @ ("--nss" | "--chmod" | "--fifo")) => extras.push(e.to_string()),
            _ => return usage(),
        }
    }
    let (Some(data), Some(out)) = (data, out) else {
        return usage();
    };
    if let Some(name) = which {
        return attack(&name, target.as_deref(), &data, &out);
    }
    if fork {
        // SAFETY: single-threaded; the child only calls _exit.
        match unsafe { libc::fork() } {
            // SAFETY: ends the helper at once, running nothing of the parent's.
            0 => unsafe { libc::_exit(0) },
            pid if pid > 0 => {
                let mut st = 0;
                // SAFETY: `st` is a live out-parameter.
                unsafe { libc::waitpid(pid, &mut st, 0) };
            }
            _ => {
                eprintln!("attack: fork: {}", std::io::Error::last_os_error());
                return ExitCode::from(1);
            }
        }
    }
    for p in &also_read {
        match std::fs::read(p) {
            Ok(b) => println!("also read {} bytes of {}", b.len(), p.display()),
            Err(e) => {
                eprintln!("attack: {}: {e}", p.display());
                return ExitCode::from(1);
            }
        }
    }
    match benign(&data, &out).and_then(|s| benign_extras(&extras, &out).map(|()| s)) {
        Ok(summary) => {
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("attack: {e}");
            ExitCode::from(1)
        }
    }
}
