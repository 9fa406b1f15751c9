//! `policy_probe MODE [ARGS]`: makes one chosen syscall, for the policy tests
//! (tests/policy.rs). Profile one mode, run another under that profile's
//! policy: the two runs differ in that one call only.
//!
//! - `getpid`: nothing special (the baseline);
//! - `ioctl REQ`: `ioctl(-1, REQ)` (fails with EBADF, but the filter judges
//!   the request first);
//! - `socket DOMAIN TYPE`: `socket(DOMAIN, TYPE, 0)`, closed again;
//! - `mmap-rw`, `mmap-wx`: an anonymous mapping, read-write or
//!   write+exec; `mprotect-wx`: read-write, then write+exec;
//! - `clone`, `clone-newuser`: a fork by raw `clone(SIGCHLD [|
//!   CLONE_NEWUSER])`; the child exits at once;
//! - `clone3`: a raw clone3 (prints the errno a policy answers);
//! - `int80`: getpid through the i386 ABI (`int 0x80`, x86_64 only);
//! - `x32`: getpid through the x32 ABI number.
//!
//! Prints `MODE: RESULT` and exits 0 whatever the call returned; a policy
//! that refuses the call kills the process instead.
use std::io::Error;
use std::process::ExitCode;

fn num(s: Option<&String>) -> Option<u64> {
    let s = s?;
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn result(rc: i64) -> String {
    if rc < 0 {
        format!("error {}", Error::last_os_error())
    } else {
        format!("ok {rc}")
    }
}

fn mmap(prot: i32) -> i64 {
    // SAFETY: a fresh anonymous private mapping; nothing else is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        -1
    } else {
        p as i64
    }
}

fn fork_with(flags: u64) -> String {
    // SAFETY: without CLONE_VM this is a fork; the child only calls _exit.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) };
    if pid == 0 {
        // SAFETY: ends the child at once, without running the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    if pid > 0 {
        let mut status = 0;
        // SAFETY: `status` is a live out-parameter.
        unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        format!("ok child exited {status}")
    } else {
        result(-1)
    }
}

#[cfg(target_arch = "x86_64")]
fn int80_getpid() -> i64 {
    let ret: i32;
    // SAFETY: i386 getpid (20) takes no arguments and touches no memory;
    // the 64-bit kernel may clobber r8-r11 on this path.
    unsafe {
        std::arch::asm!("int 0x80", inlateout("eax") 20i32 => ret,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _, options(nostack));
    }
    i64::from(ret)
}

#[cfg(not(target_arch = "x86_64"))]
fn int80_getpid() -> i64 {
    -1
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first() else {
        eprintln!("usage: policy_probe MODE [ARGS]");
        return ExitCode::from(2);
    };
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let out = match mode.as_str() {
        "getpid" => format!("ok {}", std::process::id()),
        "ioctl" => {
            let Some(req) = num(args.get(1)) else {
                return ExitCode::from(2);
            };
            // SAFETY: fd -1 is never valid: the call fails with EBADF.
            result(unsafe { libc::ioctl(-1, req as libc::c_ulong) }.into())
        }
        "socket" => {
            let (Some(d), Some(t)) = (num(args.get(1)), num(args.get(2))) else {
                return ExitCode::from(2);
            };
            // SAFETY: integer arguments; the descriptor is closed right away.
            let fd = unsafe { libc::socket(d as i32, t as i32, 0) };
            if fd >= 0 {
                // SAFETY: closes the descriptor just created.
                unsafe { libc::close(fd) };
            }
            result(fd.into())
        }
        "mmap-rw" => result(mmap(rw)),
        "mmap-wx" => result(mmap(rw | libc::PROT_EXEC)),
        "mprotect-wx" => {
            let p = mmap(rw);
            // SAFETY: changes the protection of the page just mapped.
            result(
                unsafe { libc::mprotect(p as *mut libc::c_void, 4096, rw | libc::PROT_EXEC) }
                    .into(),
            )
        }
        "clone" => fork_with(libc::SIGCHLD as u64),
        "clone-newuser" => fork_with(libc::SIGCHLD as u64 | libc::CLONE_NEWUSER as u64),
        "clone3" => {
            // SAFETY: a NULL clone_args with size 0 is rejected (EINVAL) by a
            // kernel that answers; nothing is created.
            result(unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) })
        }
        "int80" => format!("ok {}", int80_getpid()),
        // SAFETY: getpid's x32 number; no arguments.
        "x32" => result(unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) }),
        _ => {
            eprintln!("policy_probe: unknown mode {mode}");
            return ExitCode::from(2);
        }
    };
    println!("{mode}: {out}");
    ExitCode::SUCCESS
}
