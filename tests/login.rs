//! Logging in: `tresor passwd`, and the prompt's rules (three tries, the
//! timeout, no echo, the terminal restored) through a real pseudo-terminal.
//!
//! The interactive tests run `tresor` as the leader of a new session whose
//! controlling terminal is a pty (`setsid --ctty`, util-linux), so it asks on
//! /dev/tty exactly as it does for a person; the test plays the person at the
//! master side: wait for the prompt, type, read what the terminal shows.

use crate::util::{fuse_available, ok, tresor, TestStore};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, LocalFlags};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The admin passphrase `TestStore` writes into its passphrase file.
const OLD: &str = "test passphrase";
const NEW: &str = "a new passphrase, 2024";

fn write_file(ts: &TestStore, name: &str, content: &str) -> PathBuf {
    let p = ts.dir.path().join(name);
    fs::write(&p, format!("{content}\n")).unwrap();
    p
}

/// `tresor datagroup add STORE NAME --pse PSE --passphrase-file FILE`: a
/// command that only needs the PSE to open.
fn add_group(ts: &TestStore, name: &str, pass: &Path) -> std::process::Output {
    tresor()
        .args(["datagroup", "add"])
        .arg(&ts.store)
        .arg(name)
        .arg("--pse")
        .arg(&ts.pse)
        .arg("--passphrase-file")
        .arg(pass)
        .output()
        .unwrap()
}

fn groups(ts: &TestStore) -> String {
    let out = ok(tresor().args(["datagroup", "list"]).arg(&ts.store));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn passwd(ts: &TestStore, old: &Path, new: &Path) -> std::process::Output {
    tresor()
        .arg("passwd")
        .arg("--pse")
        .arg(&ts.pse)
        .arg("--passphrase-file")
        .arg(old)
        .arg("--new-passphrase-file")
        .arg(new)
        .output()
        .unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn kdf_of(pse: &Path) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&fs::read(pse).unwrap()).unwrap();
    v["kdf"].clone()
}

#[test]
fn passwd_with_files_changes_the_passphrase_and_keeps_the_kdf() {
    let ts = TestStore::new(&["g"]);
    let before = fs::read(&ts.pse).unwrap();
    let kdf = kdf_of(&ts.pse);
    let new = write_file(&ts, "new", NEW);
    let out = ok(tresor()
        .arg("passwd")
        .arg("--pse")
        .arg(&ts.pse)
        .arg("--passphrase-file")
        .arg(&ts.pass)
        .arg("--new-passphrase-file")
        .arg(&new));
    assert!(String::from_utf8_lossy(&out.stdout).contains("changed"));

    let after = fs::read(&ts.pse).unwrap();
    assert_ne!(after, before);
    assert_eq!(kdf_of(&ts.pse), kdf, "the PSE's own Argon2id parameters");
    let salt = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap()["salt"].clone();
    assert_ne!(salt(&after), salt(&before), "a fresh salt");
    let mode = fs::metadata(&ts.pse).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    // The new passphrase opens the PSE, the old one no longer does.
    let o = add_group(&ts, "with-new", &new);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = add_group(&ts, "with-old", &ts.pass);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("wrong passphrase"), "{}", stderr(&o));
    let list = groups(&ts);
    assert!(
        list.contains("with-new") && !list.contains("with-old"),
        "{list}"
    );
}

#[test]
fn passwd_refusals_leave_the_pse_byte_identical() {
    let ts = TestStore::new(&[]);
    let before = fs::read(&ts.pse).unwrap();
    let new = write_file(&ts, "new", NEW);
    let cases = [
        (
            "too short",
            ts.pass.clone(),
            write_file(&ts, "short", "short"),
            "at least 8 characters",
        ),
        (
            "same as the old one",
            ts.pass.clone(),
            ts.pass.clone(),
            "the new passphrase is the old one",
        ),
        (
            "wrong old passphrase",
            write_file(&ts, "wrong", "not the passphrase"),
            new.clone(),
            "wrong passphrase",
        ),
        (
            "empty new passphrase file",
            ts.pass.clone(),
            write_file(&ts, "empty", ""),
            "is empty",
        ),
    ];
    for (what, old, new, message) in &cases {
        let o = passwd(&ts, old, new);
        assert!(!o.status.success(), "{what}: succeeded");
        assert!(stderr(&o).contains(message), "{what}: {}", stderr(&o));
        assert_eq!(fs::read(&ts.pse).unwrap(), before, "{what}: PSE changed");
    }
    let leftovers: Vec<_> = fs::read_dir(ts.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tresor-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn passwd_through_a_symlink_changes_the_file_not_the_link() {
    let ts = TestStore::new(&[]);
    let link = ts.dir.path().join("link.pse");
    std::os::unix::fs::symlink(&ts.pse, &link).unwrap();
    let new = write_file(&ts, "new", NEW);
    ok(tresor()
        .arg("passwd")
        .arg("--pse")
        .arg(&link)
        .arg("--passphrase-file")
        .arg(&ts.pass)
        .arg("--new-passphrase-file")
        .arg(&new));
    assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
    let o = add_group(&ts, "g", &new);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `tresor` with a pseudo-terminal as its controlling terminal.
struct Terminal {
    master: File,
    /// Our copy of the terminal's slave side: to read its settings after
    /// the program ends (and so the master never sees a hang-up).
    slave: File,
    child: Option<Child>,
    /// The program's pidfd: readable once it has exited.
    exit: OwnedFd,
    /// Everything the terminal showed so far, and how far `expect` has read.
    shown: String,
    seen: usize,
}

/// How long the test plays along before it gives up on the program: a hang
/// guard, not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// A pidfd of `child` (Linux 5.3): readable once the child has exited, so
/// the test can wait for the exit and for terminal output in one poll(2).
fn pidfd(child: &Child) -> OwnedFd {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: pidfd_open(2) takes a pid and flags (no pointers) and returns
    // a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(
        fd >= 0,
        "pidfd_open: {} (needs Linux 5.3)",
        std::io::Error::last_os_error()
    );
    let fd = RawFd::try_from(fd).expect("a descriptor fits RawFd");
    // SAFETY: `fd` was just returned by pidfd_open, is open, and nothing
    // else owns or closes it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl Terminal {
    fn spawn<I, S>(args: I, env: &[(&str, &str)]) -> Terminal
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let pty = nix::pty::openpty(None, None).unwrap();
        let master = File::from(pty.master);
        let slave = File::from(pty.slave);
        let flags = nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();
        let mut cmd = Command::new("setsid");
        cmd.arg("--ctty")
            .arg(tresor().get_program())
            .args(args)
            .env_remove("TRESOR_PROMPT_TIMEOUT")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("setsid (util-linux) runs");
        let exit = pidfd(&child);
        Terminal {
            master,
            slave,
            child: Some(child),
            exit,
            shown: String::new(),
            seen: 0,
        }
    }

    /// Blocks until the terminal has something to show or the program has
    /// exited (the readiness signals), at most until `start + HANG_GUARD`;
    /// false when the hang guard ran out.
    fn wait_ready(&self, start: Instant) -> bool {
        let Some(left) = HANG_GUARD.checked_sub(start.elapsed()) else {
            return false;
        };
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        let mut fds = [
            PollFd::new(self.master.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.exit.as_fd(), PollFlags::POLLIN),
        ];
        // EINTR: just look again.
        let _ = poll(&mut fds, timeout);
        true
    }

    /// Reads what the terminal has shown since the last call.
    fn pump(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match self.master.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.shown.push_str(&String::from_utf8_lossy(&buf[..n])),
                // Nothing more for now (EAGAIN), or the program hung up (EIO).
                Err(_) => break,
            }
        }
    }

    /// Waits until the terminal shows `text` (after what was expected
    /// before); panics with the screen if the program ends first, or after
    /// the hang guard.
    fn expect(&mut self, text: &str) {
        let start = Instant::now();
        loop {
            self.pump();
            if let Some(i) = self.shown[self.seen..].find(text) {
                self.seen += i + text.len();
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.pump();
                if self.shown[self.seen..].contains(text) {
                    continue;
                }
                panic!(
                    "tresor ended ({st}) before showing {text:?}; it shows:\n{}",
                    self.shown
                );
            }
            if !self.wait_ready(start) {
                panic!(
                    "terminal never showed {text:?} (hang guard: {HANG_GUARD:?}); it shows:\n{}",
                    self.shown
                );
            }
        }
    }

    /// Types `keys` (a real Enter key sends "\r").
    fn type_keys(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).unwrap();
    }

    /// Waits for the program to end (its pidfd turns readable; the hang
    /// guard kills it); its status and screen.
    fn finish(&mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if !self.wait_ready(start) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "tresor did not end (hang guard: {HANG_GUARD:?}); it shows:\n{}",
                    self.shown
                );
            }
            self.pump();
        };
        self.pump();
        (status, self.shown.clone())
    }

    /// Whether the terminal echoes input (as it did before tresor ran).
    fn echo_on(&self) -> bool {
        termios::tcgetattr(self.slave.as_fd())
            .unwrap()
            .local_flags
            .contains(LocalFlags::ECHO)
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn add_group_interactively(ts: &TestStore, name: &str, env: &[(&str, &str)]) -> Terminal {
    let args: Vec<&OsStr> = vec![
        "datagroup".as_ref(),
        "add".as_ref(),
        ts.store.as_os_str(),
        name.as_ref(),
        "--pse".as_ref(),
        ts.pse.as_os_str(),
    ];
    Terminal::spawn(args, env)
}

#[test]
fn three_wrong_passphrases_at_the_prompt_refuse_the_login() {
    let ts = TestStore::new(&[]);
    let mut t = add_group_interactively(&ts, "g", &[]);
    for (i, wrong) in ["wrong one", "wrong two", "wrong three"].iter().enumerate() {
        t.expect("Passphrase for admin (");
        t.type_keys(&format!("{wrong}\r"));
        match i {
            0 => t.expect("wrong passphrase (2 attempts left)"),
            1 => t.expect("wrong passphrase (1 attempt left)"),
            _ => {}
        }
    }
    let (status, screen) = t.finish();
    assert!(!status.success(), "{screen}");
    assert!(
        screen.contains("three wrong passphrases — login refused"),
        "{screen}"
    );
    assert!(
        !screen.contains("wrong one"),
        "the passphrase was echoed: {screen}"
    );
    assert_eq!(
        screen.matches("Passphrase for admin").count(),
        3,
        "no fourth try: {screen}"
    );
    assert!(t.echo_on(), "terminal settings restored");
    assert!(!groups(&ts).contains('g'), "nothing was created");
}

#[test]
fn the_right_passphrase_on_the_second_try_logs_in() {
    let ts = TestStore::new(&[]);
    let mut t = add_group_interactively(&ts, "second-try", &[]);
    t.expect("Passphrase for admin (");
    t.type_keys("not it\r");
    t.expect("wrong passphrase (2 attempts left)");
    t.expect("Passphrase for admin (");
    t.type_keys(&format!("{OLD}\r"));
    let (status, screen) = t.finish();
    assert!(status.success(), "{screen}");
    assert!(screen.contains("created data group second-try"), "{screen}");
    assert!(!screen.contains(OLD), "the passphrase was echoed: {screen}");
    assert!(t.echo_on());
    assert!(groups(&ts).contains("second-try"));
}

#[test]
fn no_answer_within_the_timeout_aborts_the_login() {
    let ts = TestStore::new(&[]);
    let mut t = add_group_interactively(&ts, "g", &[("TRESOR_PROMPT_TIMEOUT", "2")]);
    t.expect("Passphrase for admin (");
    // Nobody types: the program ends by itself (finish's hang guard would
    // kill it). How long it waited is not asserted (no wall clock in tests);
    // that it gave up on the timeout, not on anything else, is.
    let (status, screen) = t.finish();
    assert!(!status.success(), "{screen}");
    assert!(
        screen.contains("no answer within 2 s — login aborted"),
        "{screen}"
    );
    assert!(t.echo_on(), "terminal settings restored after the timeout");
}

#[test]
fn ctrl_c_at_the_prompt_aborts_and_restores_the_terminal() {
    let ts = TestStore::new(&[]);
    let mut t = add_group_interactively(&ts, "g", &[]);
    t.expect("Passphrase for admin (");
    t.type_keys("half typed\x03");
    let (status, screen) = t.finish();
    assert!(!status.success(), "{screen}");
    assert!(
        screen.contains("interrupted by SIGINT — login aborted"),
        "{screen}"
    );
    assert!(t.echo_on(), "terminal settings restored after Ctrl-C");
}

#[test]
fn a_bad_timeout_setting_is_reported() {
    let ts = TestStore::new(&[]);
    let mut t = add_group_interactively(&ts, "g", &[("TRESOR_PROMPT_TIMEOUT", "soon")]);
    let (status, screen) = t.finish();
    assert!(!status.success(), "{screen}");
    assert!(
        screen.contains("TRESOR_PROMPT_TIMEOUT=\"soon\" is not a whole number of seconds"),
        "{screen}"
    );
}

#[test]
fn passwd_interactively() {
    let ts = TestStore::new(&[]);
    let args: Vec<&OsStr> = vec!["passwd".as_ref(), "--pse".as_ref(), ts.pse.as_os_str()];

    // Two different new entries: refused, PSE unchanged.
    let before = fs::read(&ts.pse).unwrap();
    let mut t = Terminal::spawn(&args, &[]);
    t.expect("Passphrase for admin (");
    t.type_keys(&format!("{OLD}\r"));
    t.expect("New passphrase for admin's PSE: ");
    t.type_keys(&format!("{NEW}\r"));
    t.expect("Repeat it: ");
    t.type_keys("something else entirely\r");
    let (status, screen) = t.finish();
    assert!(!status.success(), "{screen}");
    assert!(screen.contains("the two passphrases differ"), "{screen}");
    assert_eq!(fs::read(&ts.pse).unwrap(), before);

    let mut t = Terminal::spawn(&args, &[]);
    t.expect("Passphrase for admin (");
    t.type_keys(&format!("{OLD}\r"));
    t.expect("New passphrase for admin's PSE: ");
    t.type_keys(&format!("{NEW}\r"));
    t.expect("Repeat it: ");
    t.type_keys(&format!("{NEW}\r"));
    let (status, screen) = t.finish();
    assert!(status.success(), "{screen}");
    assert!(screen.contains("changed"), "{screen}");
    assert!(
        !screen.contains(NEW) && !screen.contains(OLD),
        "echoed: {screen}"
    );
    assert!(t.echo_on());

    let new = write_file(&ts, "new", NEW);
    let o = add_group(&ts, "after-passwd", &new);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = add_group(&ts, "with-old", &ts.pass);
    assert!(stderr(&o).contains("wrong passphrase"), "{}", stderr(&o));
}

#[test]
fn mount_asks_on_the_terminal() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["records"]);
    let mnt = ts.subdir("mnt");
    let args: Vec<&OsStr> = vec![
        "mount".as_ref(),
        ts.store.as_os_str(),
        mnt.as_os_str(),
        "--pse".as_ref(),
        ts.pse.as_os_str(),
        "-f".as_ref(),
    ];
    let mut t = Terminal::spawn(args, &[]);
    t.expect("Passphrase for admin (");
    t.type_keys("wrong\r");
    t.expect("wrong passphrase (2 attempts left)");
    t.expect("Passphrase for admin (");
    t.type_keys(&format!("{OLD}\r"));
    t.expect("mounted ");
    assert!(mnt.join("records").is_dir());
    ok(Command::new("fusermount3").arg("-u").arg(&mnt));
    let (status, screen) = t.finish();
    assert!(status.success(), "{screen}");
    assert!(!screen.contains(OLD), "echoed: {screen}");
    assert!(t.echo_on());
}
