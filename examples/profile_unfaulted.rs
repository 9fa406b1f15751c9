//! `profile_unfaulted NAMEFILE`: opens the path written in NAMEFILE, passing
//! the kernel a pointer into a fresh, never-touched file mapping of it. The
//! in-kernel recorder cannot fault that page in at the call's entry; the
//! profile must show the path all the same (docs/PROFILE.md "What the
//! in-kernel recorder sees differently").
use std::os::fd::AsRawFd;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(namefile) = std::env::args().nth(1) else {
        eprintln!("usage: profile_unfaulted NAMEFILE");
        return ExitCode::from(2);
    };
    let f = match std::fs::File::open(&namefile) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cannot open {namefile}: {e}");
            return ExitCode::from(1);
        }
    };
    // SAFETY: a read-only private mapping of one page of an open file;
    // the pointer is checked and only handed to the kernel.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        )
    };
    if page == libc::MAP_FAILED {
        eprintln!("mmap failed: {}", std::io::Error::last_os_error());
        return ExitCode::from(1);
    }
    // The path (NUL-terminated in the file) is read by the kernel only.
    // SAFETY: `page` is a mapped page holding a NUL-terminated string.
    let fd = unsafe { libc::open(page.cast(), libc::O_RDONLY) };
    if fd < 0 {
        eprintln!("open failed: {}", std::io::Error::last_os_error());
        return ExitCode::from(1);
    }
    println!("opened");
    ExitCode::SUCCESS
}
