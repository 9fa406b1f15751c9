//! The sandbox's raw system calls: the only place in `sandbox` with `unsafe`.
//!
//! Everything here is a thin, checked wrapper; the logic lives in the
//! callers, which are plain Rust.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// Where the child failed before running the program (sent over a pipe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildStage {
    /// Waiting for the tracer to attach.
    Handshake,
    /// `prctl(PR_SET_NO_NEW_PRIVS)`.
    NoNewPrivs,
    /// Installing the seccomp filter.
    Seccomp,
    /// Entering the run's conditions (namespaces, the view).
    Prelude,
    /// `execv` of the program.
    Exec,
}

impl ChildStage {
    /// What the child was doing, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            ChildStage::Handshake => "waiting for the tracer",
            ChildStage::NoNewPrivs => "prctl(PR_SET_NO_NEW_PRIVS)",
            ChildStage::Seccomp => "installing the seccomp filter",
            ChildStage::Exec => "exec",
            ChildStage::Prelude => "entering the run's namespaces and view",
        }
    }

    fn code(self) -> u32 {
        match self {
            ChildStage::Handshake => 1,
            ChildStage::NoNewPrivs => 2,
            ChildStage::Seccomp => 3,
            ChildStage::Exec => 4,
            ChildStage::Prelude => 5,
        }
    }
    fn from_code(c: u32) -> Option<ChildStage> {
        Some(match c {
            1 => ChildStage::Handshake,
            2 => ChildStage::NoNewPrivs,
            3 => ChildStage::Seccomp,
            4 => ChildStage::Exec,
            5 => ChildStage::Prelude,
            _ => return None,
        })
    }
}

/// What the child needs, prepared before `fork` so that the child only makes
/// async-signal-safe calls (no allocation after fork).
pub struct ChildSpec {
    exec: Execve,
    filter: Vec<libc::sock_filter>,
    /// Run in the child before the filter (namespaces, its view): no
    /// allocation, raw syscalls only.
    prelude: Option<Box<dyn Fn() -> io::Result<()>>>,
    /// Whether the prelude runs before the handshake (while the parent is
    /// still busy) instead of after it.
    prelude_first: bool,
}

impl ChildSpec {
    /// `program` is the path to exec; `argv[0]` is what the program sees;
    /// `env` its whole environment.
    pub fn new(
        program: CString,
        argv: Vec<CString>,
        env: Vec<CString>,
        filter: Vec<libc::sock_filter>,
    ) -> Self {
        ChildSpec {
            exec: Execve::new(program, argv, env),
            filter,
            prelude: None,
            prelude_first: false,
        }
    }

    /// Steps the child takes after the handshake, before `no_new_privs`.
    pub fn with_prelude(mut self, prelude: Box<dyn Fn() -> io::Result<()>>) -> Self {
        self.prelude = Some(prelude);
        self
    }

    /// The prelude runs at once, before the handshake: for a parent that
    /// does not trace the child's set-up (the in-kernel recorder starts at
    /// the exec) and has work of its own meanwhile. A prelude failure then
    /// shows as a failed [`Child::release`].
    pub fn prelude_first(mut self) -> Self {
        self.prelude_first = true;
        self
    }
}

/// A forked child waiting for the go signal.
pub struct Child {
    pub pid: i32,
    go: Option<OwnedFd>,
    err: OwnedFd,
}

impl Child {
    /// Lets the child go on to install its filter and exec.
    pub fn release(&mut self) -> io::Result<()> {
        let fd = self
            .go
            .take()
            .ok_or_else(|| io::Error::other("child already released"))?;
        let n = nix::unistd::write(&fd, &[1u8])?;
        if n != 1 {
            return Err(io::Error::other("short write to child"));
        }
        Ok(())
    }

    /// After the child ended without exec'ing: where and why it failed.
    pub fn failure(&self) -> Option<(ChildStage, i32)> {
        let mut buf = [0u8; 8];
        let n = nix::unistd::read(self.err.as_raw_fd(), &mut buf).ok()?;
        if n != 8 {
            return None;
        }
        let stage = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
        Some((ChildStage::from_code(stage)?, errno))
    }
}

fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// Forks a child that waits until [`Child::release`], then sets
/// `no_new_privs`, installs `spec.filter` and execs `spec.program`.
/// The caller attaches with ptrace before releasing it: a
/// `SECCOMP_RET_TRACE` filter without a tracer fails every syscall.
pub fn spawn_waiting_child(spec: &ChildSpec) -> io::Result<Child> {
    let (go_r, go_w) = pipe_cloexec()?;
    let (err_r, err_w) = pipe_cloexec()?;
    let prog = libc::sock_fprog {
        len: u16::try_from(spec.filter.len())
            .map_err(|_| io::Error::other("seccomp filter too long"))?,
        filter: spec.filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: the child branch only makes async-signal-safe raw syscalls on
    // memory prepared before the fork, then execs or `_exit`s — so a lock
    // another thread of tresor's held at the fork (the in-kernel
    // recorder's loader may run meanwhile) cannot block it.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            child_after_fork(go_r.as_raw_fd(), err_w.as_raw_fd(), spec, &prog)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(go_r);
            drop(err_w);
            Ok(Child {
                pid: child.as_raw(),
                go: Some(go_w),
                err: err_r,
            })
        }
    }
}

fn child_after_fork(go: i32, err: i32, spec: &ChildSpec, prog: &libc::sock_fprog) -> ! {
    let fail = |stage: ChildStage| -> ! {
        let errno = nix::errno::Errno::last_raw();
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&stage.code().to_ne_bytes());
        buf[4..].copy_from_slice(&errno.to_ne_bytes());
        // SAFETY: writes 8 bytes from a live stack buffer to our own pipe fd,
        // then ends the child without running Rust or libc exit handlers
        // (they belong to the parent's state).
        unsafe {
            libc::write(err, buf.as_ptr().cast(), buf.len());
            libc::_exit(127)
        }
    };
    let prelude = || {
        if let Some(prelude) = &spec.prelude {
            if let Err(e) = prelude() {
                nix::errno::Errno::set_raw(e.raw_os_error().unwrap_or(libc::EIO));
                fail(ChildStage::Prelude);
            }
        }
    };
    if spec.prelude_first {
        prelude();
    }
    let mut byte = 0u8;
    // SAFETY: reads one byte into a live stack variable from our pipe fd.
    let n = unsafe { libc::read(go, (&mut byte as *mut u8).cast(), 1) };
    if n != 1 {
        fail(ChildStage::Handshake);
    }
    if !spec.prelude_first {
        prelude();
    }
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        fail(ChildStage::NoNewPrivs);
    }
    // SAFETY: `prog` points at `spec.filter`, alive and unmoved for the
    // duration of the call; the kernel copies the program.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        fail(ChildStage::Seccomp);
    }
    let e = spec.exec.exec();
    nix::errno::Errno::set_raw(e.raw_os_error().unwrap_or(libc::EIO));
    fail(ChildStage::Exec)
}

/// Waits for any traced task (`waitpid(-1, __WALL)`); returns `(tid, status)`.
/// Interrupted by tresor's signal handlers with `ErrorKind::Interrupted`.
pub fn wait_any() -> io::Result<(i32, i32)> {
    let mut status = 0;
    // SAFETY: `status` is a live out-parameter.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL) };
    if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok((pid, status))
    }
}

/// Waits for one specific child (used to reap a child we gave up on).
pub fn wait_pid(pid: i32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a live out-parameter.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r >= 0 {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn ptrace_raw(req: libc::c_uint, pid: i32, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: every request passed here takes integer arguments or, for
    // GET_SYSCALL_INFO, a pointer/size pair checked by the caller.
    let r = unsafe {
        libc::ptrace(
            req,
            pid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `PTRACE_SEIZE` with options; does not stop the task.
pub fn seize(pid: i32, options: libc::c_int) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_SEIZE, pid, 0, options as usize).map(drop)
}

/// `PTRACE_CONT`, delivering `sig` (0 for none). Any signal number works,
/// including real-time ones.
pub fn cont(pid: i32, sig: i32) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_CONT, pid, 0, sig as usize).map(drop)
}

/// `PTRACE_LISTEN`: leave a group-stopped task stopped but keep getting events.
pub fn listen(pid: i32) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_LISTEN, pid, 0, 0).map(drop)
}

/// `PTRACE_GETEVENTMSG`: new child's pid after fork events, former tid after exec.
pub fn event_msg(pid: i32) -> io::Result<u64> {
    let mut msg: libc::c_ulong = 0;
    ptrace_raw(
        libc::PTRACE_GETEVENTMSG,
        pid,
        0,
        &mut msg as *mut libc::c_ulong as usize,
    )?;
    Ok(msg as u64)
}

/// A syscall as seen at a seccomp stop.
#[derive(Debug, Clone, Copy)]
pub struct SyscallInfo {
    /// `AUDIT_ARCH_*` of the ABI used.
    pub arch: u32,
    pub nr: u64,
    pub args: [u64; 6],
}

/// `PTRACE_GET_SYSCALL_INFO` at a seccomp stop (Linux 5.3+): number,
/// arguments and ABI in one call, the same on every architecture.
pub fn syscall_info(pid: i32) -> io::Result<SyscallInfo> {
    // SAFETY: ptrace_syscall_info is plain old data; all-zero is valid.
    let mut info: libc::ptrace_syscall_info = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::ptrace_syscall_info>();
    ptrace_raw(
        libc::PTRACE_GET_SYSCALL_INFO,
        pid,
        size,
        &mut info as *mut libc::ptrace_syscall_info as usize,
    )?;
    if info.op != libc::PTRACE_SYSCALL_INFO_SECCOMP {
        return Err(io::Error::other(format!(
            "task {pid} is not at a seccomp stop (op {})",
            info.op
        )));
    }
    // SAFETY: op == SECCOMP says the kernel filled the `seccomp` member.
    let s = unsafe { info.u.seccomp };
    Ok(SyscallInfo {
        arch: info.arch,
        nr: s.nr,
        args: s.args,
    })
}

/// Sends SIGKILL to a task; a task that is already gone is not an error.
pub fn kill_task(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
}

/// Sends `sig` to a process.
pub fn send_signal(pid: i32, sig: i32) {
    if let Ok(s) = Signal::try_from(sig) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), s);
    }
}

static ALARM: AtomicBool = AtomicBool::new(false);
static TERMINATE: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_alarm(_: libc::c_int) {
    ALARM.store(true, Ordering::SeqCst);
}

extern "C" fn on_terminate(sig: libc::c_int) {
    TERMINATE.store(sig, Ordering::SeqCst);
}

extern "C" fn on_ignored(_: libc::c_int) {}

/// tresor's signal handlers while it traces; restores the previous ones on drop.
///
/// Handlers (not SIG_IGN) are used because exec resets handlers to the
/// default but keeps SIG_IGN: the program must get default dispositions.
/// None uses SA_RESTART, so a signal interrupts `wait_any`.
pub struct SignalGuard {
    old: Vec<(Signal, SigAction)>,
}

impl SignalGuard {
    /// SIGALRM sets the timeout flag; SIGTERM and SIGHUP are remembered to be
    /// forwarded to the program; SIGINT and SIGQUIT (sent by a terminal to
    /// the whole foreground group, program included) are ignored by tresor.
    pub fn install() -> io::Result<SignalGuard> {
        ALARM.store(false, Ordering::SeqCst);
        TERMINATE.store(0, Ordering::SeqCst);
        let mut g = SignalGuard { old: Vec::new() };
        let table: [(Signal, extern "C" fn(libc::c_int)); 5] = [
            (Signal::SIGALRM, on_alarm),
            (Signal::SIGTERM, on_terminate),
            (Signal::SIGHUP, on_terminate),
            (Signal::SIGINT, on_ignored),
            (Signal::SIGQUIT, on_ignored),
        ];
        for (sig, handler) in table {
            let act = SigAction::new(
                SigHandler::Handler(handler),
                SaFlags::empty(),
                SigSet::empty(),
            );
            // SAFETY: the handlers only store to atomics (async-signal-safe).
            let old = unsafe { sigaction(sig, &act) }?;
            g.old.push((sig, old));
        }
        Ok(g)
    }

    /// Whether the timer fired since the last call.
    pub fn take_alarm(&self) -> bool {
        ALARM.swap(false, Ordering::SeqCst)
    }

    /// A termination signal tresor received since the last call.
    pub fn take_terminate(&self) -> Option<i32> {
        match TERMINATE.swap(0, Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        set_timer(None, Duration::ZERO);
        for (sig, old) in self.old.drain(..).rev() {
            // SAFETY: restores the disposition that was in place before.
            let _ = unsafe { sigaction(sig, &old) };
        }
    }
}

/// Arms `ITIMER_REAL` to fire after `first`, then every `every` (so a
/// SIGALRM that lands just before `wait_any` blocks is not lost); `None`
/// disarms it.
pub fn set_timer(first: Option<Duration>, every: Duration) {
    let tv = |d: Duration| libc::timeval {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    let value = match first {
        // A zero value would disarm the timer.
        Some(d) => tv(d.max(Duration::from_micros(1))),
        None => tv(Duration::ZERO),
    };
    let it = libc::itimerval {
        it_interval: if first.is_some() {
            tv(every)
        } else {
            tv(Duration::ZERO)
        },
        it_value: value,
    };
    // SAFETY: `it` is a live, initialised itimerval; the old value is not wanted.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) };
}

/// Sets `no_new_privs`, then loads `filters` in order with seccomp(2) into
/// the calling thread. Allocates nothing, so a forked child may call it.
/// Stops at the first filter the kernel refuses.
pub fn install_seccomp_filters(filters: &[Vec<libc::sock_filter>]) -> io::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for f in filters {
        let prog = libc::sock_fprog {
            len: u16::try_from(f.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
            filter: f.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at `f`, alive and unmoved for the call; the
        // kernel copies the program and does not write through the pointer.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A program, its argv and environment prepared for `execve`, so that the
/// exec itself allocates nothing and makes no syscall but execve (after a
/// seccomp filter is loaded, nothing else may be allowed).
pub struct Execve {
    program: CString,
    _argv: Vec<CString>,
    _env: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    env_ptrs: Vec<*const libc::c_char>,
}

impl Execve {
    /// `program` is the path to exec (no `$PATH` search); `argv[0]` is what
    /// the program sees; `env` holds `NAME=value` strings.
    pub fn new(program: CString, argv: Vec<CString>, env: Vec<CString>) -> Execve {
        let ptrs = |v: &[CString]| {
            v.iter()
                .map(|a| a.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        Execve {
            argv_ptrs: ptrs(&argv),
            env_ptrs: ptrs(&env),
            program,
            _argv: argv,
            _env: env,
        }
    }

    /// Replaces the process image; returns only on failure.
    pub fn exec(&self) -> io::Error {
        // SAFETY: program, argv and env are NUL-terminated C strings owned by
        // `self`, and both pointer arrays end in NULL; execve only returns
        // on failure.
        unsafe {
            libc::execve(
                self.program.as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.env_ptrs.as_ptr(),
            )
        };
        io::Error::last_os_error()
    }
}

// ---------------------------------------------------------------------------
// `tresor run`: the confinement steps (src/sandbox/launch.rs) and the
// supervisor's view of a violation. Everything the child calls here
// allocates nothing.

/// Forks the calling process with a raw `clone(SIGCHLD)`; returns the
/// child's pid in the parent and 0 in the child.
///
/// # Safety
///
/// The caller must be single-threaded, or the child must make only
/// async-signal-safe calls on memory prepared before the fork, then exec
/// or [`exit_now`].
pub unsafe fn fork_raw() -> io::Result<i32> {
    // SAFETY: clone with only an exit signal and no stack behaves like
    // fork(2) (both arguments orders of x86_64 and aarch64 take zeros
    // here); the caller upholds the post-fork contract.
    let r = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

/// Ends the calling process at once, without exit handlers.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and runs no user-space code.
    unsafe { libc::_exit(code) }
}

/// Reads one byte from `fd`; false on EOF or error.
pub fn read_byte(fd: i32) -> bool {
    let mut b = 0u8;
    // SAFETY: reads at most one byte into a live stack variable.
    unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) == 1 }
}

/// Writes `buf` to `fd` with one write(2); errors are ignored (best effort
/// error reporting from a child).
pub fn write_bytes(fd: i32, buf: &[u8]) {
    // SAFETY: `buf` is a live slice of `buf.len()` bytes.
    unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
}

/// `unshare(flags)`.
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes an integer argument only.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `data` to the file `path` (open, one write, close): for
/// `/proc/self/uid_map` and friends, which want a single write.
pub fn write_file(path: &std::ffi::CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: `path` is a NUL-terminated C string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `data` is a live slice; `fd` is ours and closed once below.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let err = io::Error::last_os_error();
    // SAFETY: closes the fd opened above.
    unsafe { libc::close(fd) };
    if n != data.len() as isize {
        return Err(err);
    }
    Ok(())
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `setrlimit(resource, soft, hard)`.
pub fn set_rlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a live, initialised rlimit.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Closes every fd from 3 up except `keep` (`close_range(2)`, Linux 5.9+).
pub fn close_fds_except(keep: i32) -> io::Result<()> {
    let close = |lo: u32, hi: u32| -> io::Result<()> {
        if lo > hi {
            return Ok(());
        }
        // SAFETY: close_range takes integers only; closing fds we do not use
        // after this point is the intent.
        if unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    if keep < 3 {
        return close(3, u32::MAX);
    }
    let keep = keep as u32;
    close(3, keep - 1)?;
    close(keep + 1, u32::MAX)
}

/// Landlock ABI version of the running kernel (`landlock_create_ruleset`
/// with `LANDLOCK_CREATE_RULESET_VERSION`); `None` when it has none or it
/// is disabled.
pub fn landlock_abi() -> Option<i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_ulong = 1;
    // SAFETY: with this flag the kernel reads neither pointer argument.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (r > 0).then_some(r as i32)
}

/// Waits for a child (not traced; no `__WALL`) and returns its status,
/// retrying on EINTR. Allocates nothing.
pub fn wait_child(pid: i32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a live out-parameter.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The syscall number and arguments in a task's registers, read with
/// `PTRACE_GETREGSET(NT_PRSTATUS)`. At the `PTRACE_EVENT_EXIT` stop of a
/// task that seccomp killed, the kernel has rolled the registers back to
/// the syscall entry, so these are the denied call's.
pub fn syscall_regs(pid: i32) -> io::Result<(u64, [u64; 6])> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        // SAFETY: user_regs_struct is plain old data; all-zero is valid.
        let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: (&mut regs as *mut libc::user_regs_struct).cast(),
            iov_len: std::mem::size_of::<libc::user_regs_struct>(),
        };
        ptrace_raw(
            libc::PTRACE_GETREGSET,
            pid,
            libc::NT_PRSTATUS as usize,
            &mut iov as *mut libc::iovec as usize,
        )?;
        #[cfg(target_arch = "x86_64")]
        return Ok((
            regs.orig_rax,
            [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9],
        ));
        #[cfg(target_arch = "aarch64")]
        {
            let r = regs.regs;
            return Ok((r[8], [r[0], r[1], r[2], r[3], r[4], r[5]]));
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = pid;
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// Reads up to `buf.len()` bytes of another process's memory at `addr`
/// (`process_vm_readv`); returns how many were read.
pub fn read_memory(pid: i32, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as usize as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` describes `buf`, alive and writable for the call; the
    // kernel checks the remote range and fails with EFAULT if unmapped.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

// ---------------------------------------------------------------------------
// The analysis's own root (src/sandbox/launch.rs, step `Root`) and the drop
// of every privilege. Called in the forked child: nothing here allocates.

fn check(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn opt_ptr(s: Option<&CStr>) -> *const libc::c_char {
    s.map_or(std::ptr::null(), CStr::as_ptr)
}

/// `mount(2)`; absent arguments are passed as NULL.
pub fn mount(
    src: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    // SAFETY: every pointer is NULL or a NUL-terminated C string alive for
    // the call; the kernel copies them.
    let rc = unsafe {
        libc::mount(
            opt_ptr(src),
            target.as_ptr(),
            opt_ptr(fstype),
            flags,
            opt_ptr(data).cast(),
        )
    };
    check(rc.into())
}

/// `MOUNT_ATTR_*` of mount_setattr(2).
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Adds `set` (`MOUNT_ATTR_*`) to the mount at `path`, and with `recursive`
/// to every mount below it (`mount_setattr(2)`, Linux 5.12+). Only adds:
/// flags the kernel locked on a mount from a more privileged namespace stay.
pub fn mount_setattr(path: &CStr, set: u64, recursive: bool) -> io::Result<()> {
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `path` is a NUL-terminated C string and `attr` a live struct
    // whose size is passed; the kernel only reads both.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(rc)
}

/// `mkdir(path, mode)`; an existing entry is not an error.
pub fn mkdir(path: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `path` is a NUL-terminated C string.
    if unsafe { libc::mkdir(path.as_ptr(), mode) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

/// `symlink(target, link)`.
pub fn symlink(target: &CStr, link: &CStr) -> io::Result<()> {
    // SAFETY: both are NUL-terminated C strings.
    check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) }.into())
}

/// Creates an empty file (a bind-mount target); an existing one is fine.
pub fn touch(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is a NUL-terminated C string.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0o444,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: closes the fd opened above.
    unsafe { libc::close(fd) };
    Ok(())
}

/// `chdir(path)`.
pub fn chdir(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is a NUL-terminated C string.
    check(unsafe { libc::chdir(path.as_ptr()) }.into())
}

/// `pivot_root(new_root, put_old)`.
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: both are NUL-terminated C strings.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    check(rc)
}

/// `umount2(path, MNT_DETACH)`.
pub fn detach(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is a NUL-terminated C string.
    check(unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) }.into())
}

/// `setgroups(0, NULL)`: no supplementary groups (needs CAP_SETGID).
pub fn clear_groups() -> io::Result<()> {
    // SAFETY: an empty list; the pointer is not read.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }.into())
}

/// Drops every capability for good: the bounding set emptied, ambient
/// capabilities cleared, securebits set and locked so that uid 0 and
/// setuid programs never regain any, then effective, permitted and
/// inheritable sets cleared.
pub fn drop_capabilities() -> io::Result<()> {
    const PR_CAP_AMBIENT: libc::c_int = 47;
    const PR_CAP_AMBIENT_CLEAR_ALL: libc::c_ulong = 4;
    // SECBIT_NOROOT, NO_SETUID_FIXUP, NO_CAP_AMBIENT_RAISE and the locks
    // of all four (KEEP_CAPS itself stays off).
    const SECUREBITS: libc::c_ulong = 0b1110_1111;
    for cap in 0..64 {
        // SAFETY: plain prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            let e = io::Error::last_os_error();
            // Numbers past the kernel's last capability.
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(e);
        }
    }
    // SAFETY: plain prctl with integer arguments.
    check(unsafe { libc::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) }.into())?;
    // SAFETY: plain prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0) }.into())?;
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
        CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    // SAFETY: a version-3 header and the two data structs it expects, both
    // alive for the call; the kernel only reads them.
    check(unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) })
}

/// Adds a Landlock rule `access` beneath `path` to the ruleset `ruleset`
/// (raw `landlock_add_rule`, for paths that exist only inside the run's
/// own root).
pub fn landlock_add_path(ruleset: i32, path: &CStr, access: u64) -> io::Result<()> {
    const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;
    #[repr(C, packed)]
    struct PathBeneath {
        allowed_access: u64,
        parent_fd: i32,
    }
    // SAFETY: `path` is a NUL-terminated C string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let attr = PathBeneath {
        allowed_access: access,
        parent_fd: fd,
    };
    // SAFETY: `attr` is a live, packed landlock_path_beneath_attr; the
    // kernel only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset,
            LANDLOCK_RULE_PATH_BENEATH,
            &attr as *const PathBeneath,
            0,
        )
    };
    let e = io::Error::last_os_error();
    // SAFETY: closes the fd opened above.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(e);
    }
    Ok(())
}

/// `landlock_restrict_self(ruleset, 0)`.
pub fn landlock_restrict(ruleset: i32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0) })
}

// ---------------------------------------------------------------------------
// The pid namespace's init (src/sandbox/launch.rs, step `PidNamespace`).

extern "C" fn forward_to_namespace(sig: libc::c_int) {
    // SAFETY: kill is async-signal-safe; -1 from the namespace's init
    // reaches every other process of the namespace.
    unsafe { libc::kill(-1, sig) };
}

/// The init's signals: termination signals (TERM, INT, HUP, QUIT) are
/// forwarded to every process of the namespace; terminal stop signals
/// (TSTP, TTIN, TTOU) are ignored. (SIGSTOP cannot be caught: the
/// supervisor discards it, see `launch`.)
pub fn init_signals() -> io::Result<()> {
    let fwd = forward_to_namespace as extern "C" fn(libc::c_int) as *const () as usize;
    // SAFETY: sigaction with a handler that only calls kill(2), or with
    // SIG_IGN; the structs are initialised and alive for each call.
    unsafe {
        for (sig, handler) in [
            (libc::SIGTERM, fwd),
            (libc::SIGINT, fwd),
            (libc::SIGHUP, fwd),
            (libc::SIGQUIT, fwd),
            (libc::SIGTSTP, libc::SIG_IGN),
            (libc::SIGTTIN, libc::SIG_IGN),
            (libc::SIGTTOU, libc::SIG_IGN),
        ] {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = handler;
            act.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            if libc::sigaction(sig, &act, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// `setsid()`: a new session without a controlling terminal.
pub fn new_session() -> io::Result<()> {
    // SAFETY: setsid takes no arguments.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// If fd 0 is a terminal, replaces it with `/dev/null` (`path`).
pub fn stdin_not_a_terminal(dev_null: &CStr) -> io::Result<()> {
    // SAFETY: isatty takes an integer.
    if unsafe { libc::isatty(0) } != 1 {
        return Ok(());
    }
    // SAFETY: a NUL-terminated path; the fd is closed below or becomes fd 0.
    let fd = unsafe { libc::open(dev_null.as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: dup2 onto fd 0, then close the spare fd.
    let rc = unsafe { libc::dup2(fd, 0) };
    let e = io::Error::last_os_error();
    // SAFETY: closes the fd opened above.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(e);
    }
    Ok(())
}

/// Sends SIGKILL to every other process of the caller's pid namespace
/// (from its init: `kill(-1)`).
pub fn kill_namespace() {
    // SAFETY: kill takes integer arguments.
    unsafe { libc::kill(-1, libc::SIGKILL) };
}

/// `waitpid(-1, 0)`: any child; `(pid, status)`. Allocates nothing.
pub fn wait_any_child() -> io::Result<(i32, i32)> {
    let mut status = 0;
    // SAFETY: `status` is a live out-parameter.
    let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
    if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok((pid, status))
    }
}

/// `dup2(old, new)` (clears close-on-exec on `new`).
pub fn dup2(old: i32, new: i32) -> io::Result<()> {
    // SAFETY: dup2 takes integers; replacing `new` is the intent.
    if unsafe { libc::dup2(old, new) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `close(fd)`, errors ignored.
pub fn close(fd: i32) {
    // SAFETY: closing an fd this process owns and no longer uses.
    unsafe { libc::close(fd) };
}

/// A file mapped read-only and private (`mmap`), unmapped on drop.
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    /// Maps the whole of `file` (which must not be empty).
    pub fn file(file: &std::fs::File) -> io::Result<Mapped> {
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::other("the file is too large to map"))?;
        if len == 0 {
            return Err(io::Error::other("the file is empty"));
        }
        // SAFETY: a new private read-only mapping of a valid fd; the kernel
        // picks the address, so nothing existing is replaced.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapped { ptr, len })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes at `ptr` stay mapped readable until drop; the
        // slice borrows `self`. Only immutable files are mapped (the
        // kernel's BTF), so the bytes do not change under the slice.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `file`, once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}
