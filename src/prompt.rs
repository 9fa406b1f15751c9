//! Asking for a passphrase, with the login rules of the security concept
//! (seed 002): the passphrase is typed on the controlling terminal without
//! echo; three wrong passphrases or 30 seconds without an answer end the
//! attempt, and the command has to be started again.
//!
//! - [`passphrase`] asks once on `/dev/tty` (not stdin, so pipes cannot feed
//!   it by accident) and gives up after a timeout. The terminal's settings are
//!   restored in every case — answer, timeout, error, Ctrl-C (SIGINT, SIGQUIT,
//!   SIGTERM and SIGHUP are taken through a signalfd while asking and end the
//!   prompt with [`PromptError::Interrupted`] instead of killing the process
//!   with echo still off).
//! - [`unlock_with_retries`] asks up to [`MAX_TRIES`] times; the caller says
//!   which failures are a wrong passphrase ([`AttemptError::WrongPassphrase`]).
//! - [`from_file`] and [`new_passphrase`] are the other ways a passphrase
//!   comes in: `--passphrase-file`, and choosing a new one.
//!
//! The timeout is [`DEFAULT_TIMEOUT`] (30 s). The environment variable
//! `TRESOR_PROMPT_TIMEOUT` overrides it with a whole number of seconds
//! between 1 and 3600 (see [`timeout_from_env`]); tests use it to wait 2 s.
//!
//! Signals are blocked only in the calling thread, so call this before the
//! process starts other threads (the CLI does) or block the signals in them.

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios::{self, LocalFlags, SetArg, Termios};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// How long to wait for an answer: 30 s, as the security concept asks.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variable that overrides [`DEFAULT_TIMEOUT`], in seconds.
pub const TIMEOUT_ENV: &str = "TRESOR_PROMPT_TIMEOUT";
/// Largest accepted value of [`TIMEOUT_ENV`], in seconds.
pub const MAX_TIMEOUT_SECS: u64 = 3600;
/// Wrong passphrases before the login is refused.
pub const MAX_TRIES: u32 = 3;
/// Shortest new passphrase accepted, in characters.
pub const MIN_CHARS: usize = 8;
/// Longest answer read, in bytes (a canonical-mode line holds at most 4096).
const MAX_LEN: usize = 4096;
/// The signals that end a prompt instead of the process.
const STOP_SIGNALS: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGHUP,
];

/// Why no passphrase was read.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// No controlling terminal (a service, a pipe, a cron job).
    #[error("no terminal to ask for the passphrase; pass --passphrase-file FILE")]
    NoTerminal,
    /// Nobody answered in time.
    #[error("no answer within {} — login aborted", seconds(*.0))]
    Timeout(Duration),
    /// A signal (Ctrl-C, Ctrl-\, hangup, termination) arrived while asking.
    #[error("interrupted by {0} — login aborted")]
    Interrupted(Signal),
    /// End of input (Ctrl-D) instead of an answer.
    #[error("no passphrase entered (end of input) — login aborted")]
    Closed,
    /// The two entries of a new passphrase differ.
    #[error("the two passphrases differ")]
    Mismatch,
    /// A new passphrase is too short.
    #[error("passphrase too short: use at least {MIN_CHARS} characters")]
    TooShort,
    /// A passphrase file could not be read.
    #[error("cannot read passphrase file {path}: {err}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        err: io::Error,
    },
    /// A passphrase file's first line is empty.
    #[error("passphrase file {0} is empty; put the passphrase on its first line")]
    EmptyFile(PathBuf),
    /// `TRESOR_PROMPT_TIMEOUT` is not a usable number of seconds.
    #[error("{TIMEOUT_ENV}={0:?} is not a whole number of seconds from 1 to {MAX_TIMEOUT_SECS}; fix or unset it")]
    BadTimeout(String),
    /// Reading or writing the terminal failed.
    #[error("terminal: {0}")]
    Io(#[from] io::Error),
}

impl From<Errno> for PromptError {
    fn from(e: Errno) -> Self {
        PromptError::Io(e.into())
    }
}

/// "30 s", "2 s", "0.2 s".
fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// The prompt timeout: [`TIMEOUT_ENV`] if set, else [`DEFAULT_TIMEOUT`].
pub fn timeout_from_env() -> Result<Duration, PromptError> {
    parse_timeout(std::env::var(TIMEOUT_ENV).ok().as_deref())
}

fn parse_timeout(value: Option<&str>) -> Result<Duration, PromptError> {
    let Some(v) = value else {
        return Ok(DEFAULT_TIMEOUT);
    };
    match v.trim().parse::<u64>() {
        Ok(s) if (1..=MAX_TIMEOUT_SECS).contains(&s) => Ok(Duration::from_secs(s)),
        _ => Err(PromptError::BadTimeout(v.to_string())),
    }
}

/// Asks for a passphrase on the controlling terminal, without echo, waiting
/// at most `timeout` for the answer line; returns it without its newline.
pub fn passphrase(prompt: &str, timeout: Duration) -> Result<Zeroizing<String>, PromptError> {
    let tty = open_tty()?;
    ask(&tty, prompt, timeout)
}

fn open_tty() -> Result<File, PromptError> {
    // ENXIO: no controlling terminal; ENOENT: no /dev/tty at all (containers).
    // Either way the answer is a passphrase file.
    File::options()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| PromptError::NoTerminal)
}

/// [`passphrase`] on an already opened terminal.
fn ask(tty: &File, prompt: &str, timeout: Duration) -> Result<Zeroizing<String>, PromptError> {
    // Order matters: signals first, so Ctrl-C cannot strike with echo off;
    // echo off before the prompt, so nothing typed after it is shown.
    // Guards drop in reverse: the terminal is restored, then the signal mask.
    let signals = SignalsTaken::new()?;
    let echo_off = EchoOff::new(tty.as_fd())?;
    let mut out = tty;
    out.write_all(prompt.as_bytes())?;
    let line = read_line(tty, &signals, timeout);
    // The user's Enter was not echoed; end the prompt's line ourselves.
    let _ = out.write_all(b"\n");
    drop(echo_off);
    drop(signals);
    line
}

/// The terminal with echo off; restores the saved settings when dropped.
struct EchoOff<'a> {
    tty: BorrowedFd<'a>,
    saved: Termios,
}

impl<'a> EchoOff<'a> {
    fn new(tty: BorrowedFd<'a>) -> Result<Self, PromptError> {
        let saved = termios::tcgetattr(tty).map_err(|e| match e {
            Errno::ENOTTY => PromptError::NoTerminal,
            e => e.into(),
        })?;
        let mut quiet = saved.clone();
        quiet
            .local_flags
            .remove(LocalFlags::ECHO | LocalFlags::ECHOE | LocalFlags::ECHOK | LocalFlags::ECHONL);
        // Line by line, with the terminal's own editing (backspace, Ctrl-U).
        quiet.local_flags.insert(LocalFlags::ICANON);
        // TCSAFLUSH drops anything typed before the prompt: it was echoed.
        termios::tcsetattr(tty, SetArg::TCSAFLUSH, &quiet)?;
        Ok(EchoOff { tty, saved })
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        // Nothing better to do if this fails: the terminal is going away.
        let _ = termios::tcsetattr(self.tty, SetArg::TCSANOW, &self.saved);
    }
}

/// The stop signals, blocked in this thread and readable from a signalfd;
/// the previous mask comes back when dropped. Signals the caller had blocked
/// already stay the caller's.
struct SignalsTaken {
    old: SigSet,
    fd: SignalFd,
}

impl SignalsTaken {
    fn new() -> Result<Self, PromptError> {
        let old = SigSet::thread_get_mask()?;
        let mut take = SigSet::empty();
        for s in STOP_SIGNALS.into_iter().filter(|s| !old.contains(*s)) {
            take.add(s);
        }
        take.thread_block()?;
        match SignalFd::with_flags(&take, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
            Ok(fd) => Ok(SignalsTaken { old, fd }),
            Err(e) => {
                let _ = old.thread_set_mask();
                Err(e.into())
            }
        }
    }

    fn pending(&self) -> Result<Option<Signal>, PromptError> {
        Ok(self
            .fd
            .read_signal()?
            .and_then(|info| Signal::try_from(info.ssi_signo as i32).ok()))
    }
}

impl Drop for SignalsTaken {
    fn drop(&mut self) {
        let _ = self.old.thread_set_mask();
    }
}

/// Reads one line from `tty` within `timeout`, or stops on one of the
/// `signals`. The newline (and a carriage return before it) is removed.
fn read_line(
    tty: &File,
    signals: &SignalsTaken,
    timeout: Duration,
) -> Result<Zeroizing<String>, PromptError> {
    let deadline = Instant::now() + timeout;
    // Allocated once at its final size: a reallocation would leave a copy
    // of the passphrase behind that nobody zeroizes.
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_LEN));
    let mut chunk = Zeroizing::new([0u8; 512]);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(PromptError::Timeout(timeout));
        }
        let [tty_ready, signal_ready] = match wait_readable([tty.as_fd(), signals.fd.as_fd()], left)
        {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if signal_ready {
            if let Some(sig) = signals.pending()? {
                return Err(PromptError::Interrupted(sig));
            }
        }
        if !tty_ready {
            continue;
        }
        let n = match (&*tty).read(&mut chunk[..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            // End of input: Ctrl-D at the start of a line. If an earlier
            // Ctrl-D handed over part of a line ("abc", Ctrl-D, Ctrl-D),
            // that part is the answer.
            if line.is_empty() {
                return Err(PromptError::Closed);
            }
            break;
        }
        if line.len() + n > MAX_LEN {
            return Err(PromptError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("answer longer than {MAX_LEN} bytes"),
            )));
        }
        line.extend_from_slice(&chunk[..n]);
        if line.last() == Some(&b'\n') {
            line.pop();
            break;
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    match String::from_utf8(std::mem::take(&mut *line)) {
        Ok(s) => Ok(Zeroizing::new(s)),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            Err(PromptError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "the passphrase is not valid UTF-8; check the terminal's character set",
            )))
        }
    }
}

/// Waits until one of `fds` is readable (or hung up), at most `timeout`;
/// says which. Interrupted by a signal: `ErrorKind::Interrupted`.
fn wait_readable<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    timeout: Duration,
) -> io::Result<[bool; N]> {
    // poll(2) counts whole milliseconds: round up so we never spin on a
    // remainder below one.
    let ms = timeout.as_micros().div_ceil(1000);
    let ms = i32::try_from(ms).unwrap_or(i32::MAX);
    let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
    let mut pfds = fds.map(|fd| PollFd::new(fd, PollFlags::POLLIN));
    poll(&mut pfds, timeout).map_err(io::Error::from)?;
    Ok(pfds.map(|p| p.revents().is_some_and(|r| !r.is_empty())))
}

/// A passphrase from a file: its first line, without the line end.
pub fn from_file(path: &Path) -> Result<Zeroizing<String>, PromptError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|err| PromptError::File {
            path: path.to_path_buf(),
            err,
        })?,
    );
    match text.lines().next() {
        Some(line) if !line.is_empty() => Ok(Zeroizing::new(line.to_string())),
        _ => Err(PromptError::EmptyFile(path.to_path_buf())),
    }
}

/// A new passphrase for `who`'s PSE: from `file`, or asked twice on the
/// terminal. Refused if shorter than [`MIN_CHARS`] characters or if the two
/// entries differ.
pub fn new_passphrase(
    file: Option<&Path>,
    who: &str,
    timeout: Duration,
) -> Result<Zeroizing<String>, PromptError> {
    if let Some(f) = file {
        let p = from_file(f)?;
        return check_new(p);
    }
    let p = check_new(passphrase(
        &format!("New passphrase for {who}'s PSE: "),
        timeout,
    )?)?;
    let again = passphrase("Repeat it: ", timeout)?;
    if *again != *p {
        return Err(PromptError::Mismatch);
    }
    Ok(p)
}

fn check_new(p: Zeroizing<String>) -> Result<Zeroizing<String>, PromptError> {
    if p.chars().count() < MIN_CHARS {
        return Err(PromptError::TooShort);
    }
    Ok(p)
}

/// How one attempt to use a passphrase failed.
#[derive(Debug)]
pub enum AttemptError<E> {
    /// The passphrase is wrong: ask again, if tries are left. The error is
    /// kept as the cause of [`LoginError::TooManyAttempts`].
    WrongPassphrase(E),
    /// Anything else (a corrupt PSE, an I/O error): stop at once.
    Other(E),
}

/// Why a login with [`unlock_with_retries`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError<E> {
    /// Every try was a wrong passphrase; `last` says how the last one failed.
    #[error("{} — login refused", wrong_passphrases(*.tries))]
    TooManyAttempts {
        /// How many tries there were.
        tries: u32,
        /// The last wrong-passphrase error.
        #[source]
        last: E,
    },
    /// No passphrase could be read (no terminal, timeout, Ctrl-C …).
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// The attempt failed for another reason than the passphrase.
    #[error(transparent)]
    Other(E),
}

/// "three wrong passphrases", "one wrong passphrase".
fn wrong_passphrases(n: u32) -> String {
    const WORDS: [&str; 10] = [
        "no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    let count = usize::try_from(n)
        .ok()
        .and_then(|i| WORDS.get(i))
        .map_or_else(|| n.to_string(), |w| (*w).to_string());
    if n == 1 {
        format!("{count} wrong passphrase")
    } else {
        format!("{count} wrong passphrases")
    }
}

/// Asks for a passphrase on the terminal (with `prompt` and `timeout` each
/// time) and hands it to `attempt`, up to `tries` times while `attempt`
/// answers [`AttemptError::WrongPassphrase`], saying
/// "wrong passphrase (N attempts left)" on the terminal in between. A prompt
/// failure (no terminal, timeout, Ctrl-C) or [`AttemptError::Other`] ends it
/// at once; the last wrong passphrase ends it with
/// [`LoginError::TooManyAttempts`]. Use [`MAX_TRIES`] for the login rules.
pub fn unlock_with_retries<T, E>(
    tries: u32,
    timeout: Duration,
    prompt: &str,
    attempt: impl FnMut(&str) -> Result<T, AttemptError<E>>,
) -> Result<T, LoginError<E>> {
    retry(tries, || passphrase(prompt, timeout), tell, attempt)
}

/// Says something to the user at the terminal (stderr if there is none).
fn tell(msg: &str) {
    match File::options().write(true).open("/dev/tty") {
        Ok(mut tty) => {
            let _ = writeln!(tty, "{msg}");
        }
        Err(_) => eprintln!("{msg}"),
    }
}

/// The retry rules of [`unlock_with_retries`], apart from the terminal.
fn retry<T, E>(
    tries: u32,
    mut ask: impl FnMut() -> Result<Zeroizing<String>, PromptError>,
    mut tell: impl FnMut(&str),
    mut attempt: impl FnMut(&str) -> Result<T, AttemptError<E>>,
) -> Result<T, LoginError<E>> {
    let tries = tries.max(1);
    let mut n = 1;
    loop {
        let p = ask()?;
        match attempt(&p) {
            Ok(v) => return Ok(v),
            Err(AttemptError::Other(e)) => return Err(LoginError::Other(e)),
            Err(AttemptError::WrongPassphrase(last)) if n >= tries => {
                return Err(LoginError::TooManyAttempts { tries, last })
            }
            Err(AttemptError::WrongPassphrase(_)) => {
                let left = tries - n;
                let s = if left == 1 { "" } else { "s" };
                tell(&format!("wrong passphrase ({left} attempt{s} left)"));
                n += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    #[test]
    fn timeout_from_the_environment_value() {
        assert_eq!(parse_timeout(None).unwrap(), DEFAULT_TIMEOUT);
        assert_eq!(parse_timeout(Some("2")).unwrap(), Duration::from_secs(2));
        assert_eq!(
            parse_timeout(Some(" 45 ")).unwrap(),
            Duration::from_secs(45)
        );
        for bad in ["", "0", "-1", "1.5", "abc", "3601", "99999999999999999999"] {
            let err = parse_timeout(Some(bad)).unwrap_err().to_string();
            assert!(
                err.contains(TIMEOUT_ENV) && err.contains("fix or unset"),
                "{err}"
            );
        }
    }

    #[test]
    fn messages_say_what_happened() {
        assert_eq!(
            PromptError::Timeout(DEFAULT_TIMEOUT).to_string(),
            "no answer within 30 s — login aborted"
        );
        assert_eq!(
            PromptError::Timeout(Duration::from_millis(200)).to_string(),
            "no answer within 0.2 s — login aborted"
        );
        let refused = |tries| {
            let last = io::Error::other("wrong passphrase");
            LoginError::TooManyAttempts { tries, last }.to_string()
        };
        assert_eq!(refused(3), "three wrong passphrases — login refused");
        assert_eq!(refused(1), "one wrong passphrase — login refused");
        assert_eq!(refused(12), "12 wrong passphrases — login refused");
        assert!(PromptError::NoTerminal
            .to_string()
            .contains("--passphrase-file"));
    }

    /// Runs [`retry`] with scripted answers; returns the result, the
    /// messages told and how many answers were asked for.
    fn scripted(
        answers: &[Result<&str, PromptError>],
        right: &str,
    ) -> (Result<String, LoginError<String>>, Vec<String>, usize) {
        let mut script: VecDeque<Result<Zeroizing<String>, PromptError>> = VecDeque::new();
        for a in answers {
            script.push_back(match a {
                Ok(s) => Ok(Zeroizing::new(s.to_string())),
                Err(PromptError::Timeout(d)) => Err(PromptError::Timeout(*d)),
                Err(_) => Err(PromptError::Closed),
            });
        }
        let mut asked = 0;
        let mut told = Vec::new();
        let r = retry(
            MAX_TRIES,
            || {
                asked += 1;
                script.pop_front().unwrap()
            },
            |m| told.push(m.to_string()),
            |p| match p {
                p if p == right => Ok(format!("opened with {p}")),
                "corrupt" => Err(AttemptError::Other("PSE corrupt".to_string())),
                p => Err(AttemptError::WrongPassphrase(format!("{p} is wrong"))),
            },
        );
        (r, told, asked)
    }

    #[test]
    fn right_on_the_second_try() {
        let (r, told, asked) = scripted(&[Ok("nope"), Ok("sesame")], "sesame");
        assert_eq!(r.unwrap(), "opened with sesame");
        assert_eq!(told, ["wrong passphrase (2 attempts left)"]);
        assert_eq!(asked, 2);
    }

    #[test]
    fn three_wrong_passphrases_refuse_the_login() {
        let (r, told, asked) = scripted(&[Ok("a"), Ok("b"), Ok("c"), Ok("sesame")], "sesame");
        let err = r.unwrap_err();
        assert!(
            matches!(err, LoginError::TooManyAttempts { tries: 3, ref last } if last == "c is wrong"),
            "{err:?}"
        );
        assert_eq!(
            told,
            [
                "wrong passphrase (2 attempts left)",
                "wrong passphrase (1 attempt left)"
            ]
        );
        assert_eq!(asked, 3, "no fourth prompt");
    }

    #[test]
    fn other_failures_and_prompt_failures_stop_at_once() {
        let (r, told, asked) = scripted(&[Ok("corrupt"), Ok("sesame")], "sesame");
        assert!(matches!(r, Err(LoginError::Other(ref e)) if e == "PSE corrupt"));
        assert!(told.is_empty());
        assert_eq!(asked, 1);

        let t = Duration::from_secs(30);
        let (r, _, asked) = scripted(&[Ok("x"), Err(PromptError::Timeout(t))], "sesame");
        assert!(matches!(
            r,
            Err(LoginError::Prompt(PromptError::Timeout(_)))
        ));
        assert_eq!(asked, 2);
    }

    #[test]
    fn passphrase_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pass");
        std::fs::write(&f, "correct horse battery\r\nsecond line\n").unwrap();
        assert_eq!(&*from_file(&f).unwrap(), "correct horse battery");
        std::fs::write(&f, "  spaces count  \n").unwrap();
        assert_eq!(&*from_file(&f).unwrap(), "  spaces count  ");
        std::fs::write(&f, "\nsecond").unwrap();
        assert!(matches!(from_file(&f), Err(PromptError::EmptyFile(_))));
        std::fs::write(&f, "").unwrap();
        assert!(matches!(from_file(&f), Err(PromptError::EmptyFile(_))));
        let missing = dir.path().join("missing");
        let err = from_file(&missing).unwrap_err().to_string();
        assert!(err.contains("cannot read passphrase file") && err.contains("missing"));

        std::fs::write(&f, "short\n").unwrap();
        let t = DEFAULT_TIMEOUT;
        assert!(matches!(
            new_passphrase(Some(&f), "alice", t),
            Err(PromptError::TooShort)
        ));
        // Eight characters, not eight bytes.
        std::fs::write(&f, "Ärztin99\n").unwrap();
        assert_eq!(&*new_passphrase(Some(&f), "alice", t).unwrap(), "Ärztin99");
        std::fs::write(&f, "Ärztin9\n").unwrap();
        assert!(new_passphrase(Some(&f), "alice", t).is_err());
    }

    /// A pseudo-terminal pair: the slave stands for the user's terminal.
    fn pty() -> (File, File) {
        let p = nix::pty::openpty(None, None).unwrap();
        (File::from(p.master), File::from(p.slave))
    }

    fn echo_on(tty: &File) -> bool {
        termios::tcgetattr(tty.as_fd())
            .unwrap()
            .local_flags
            .contains(LocalFlags::ECHO)
    }

    /// Plays the user at `master`: waits for the prompt, types `keys`, and
    /// returns everything the terminal showed until the prompt's newline,
    /// and the master (closing it would hang up the terminal).
    fn user(master: File, keys: &'static [u8]) -> std::thread::JoinHandle<(String, File)> {
        std::thread::spawn(move || {
            let mut m = master;
            let mut shown = Vec::new();
            let mut buf = [0u8; 256];
            while !shown.ends_with(b": ") {
                let n = m.read(&mut buf).unwrap();
                shown.extend_from_slice(&buf[..n]);
            }
            m.write_all(keys).unwrap();
            while !shown.ends_with(b"\n") {
                let n = m.read(&mut buf).unwrap();
                shown.extend_from_slice(&buf[..n]);
            }
            (String::from_utf8_lossy(&shown).into_owned(), m)
        })
    }

    #[test]
    fn reads_a_line_without_echo_and_restores_the_terminal() {
        let (master, slave) = pty();
        assert!(echo_on(&slave));
        let u = user(master, b"s3cret words\r");
        let p = ask(&slave, "Passphrase: ", Duration::from_secs(20)).unwrap();
        assert_eq!(&*p, "s3cret words");
        let (shown, _master) = u.join().unwrap();
        assert!(!shown.contains("s3cret"), "echoed: {shown:?}");
        assert!(shown.starts_with("Passphrase: "), "{shown:?}");
        assert!(echo_on(&slave), "echo restored");
    }

    #[test]
    fn end_of_input_is_not_a_passphrase() {
        let (master, slave) = pty();
        let u = user(master, b"\x04");
        let r = ask(&slave, "Passphrase: ", Duration::from_secs(20));
        assert!(matches!(r, Err(PromptError::Closed)), "{r:?}");
        let (_shown, _master) = u.join().unwrap();
        assert!(echo_on(&slave));
    }

    #[test]
    fn timeout_restores_the_terminal() {
        let (_master, slave) = pty();
        let start = Instant::now();
        let r = ask(&slave, "Passphrase: ", Duration::from_millis(200));
        assert!(
            matches!(r, Err(PromptError::Timeout(d)) if d == Duration::from_millis(200)),
            "{r:?}"
        );
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(echo_on(&slave), "echo restored after the timeout");
        // The signal mask is back as it was.
        let mask = SigSet::thread_get_mask().unwrap();
        assert!(!mask.contains(Signal::SIGINT));
    }

    #[test]
    fn not_a_terminal() {
        let f = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap();
        let r = ask(&f, "Passphrase: ", Duration::from_secs(1));
        assert!(matches!(r, Err(PromptError::NoTerminal)), "{r:?}");
    }
}
