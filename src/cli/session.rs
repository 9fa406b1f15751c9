//! `tresor status | lock | login | umount MNT`: the control socket's client,
//! and the session steps of `tresor mount` (docs/SESSIONS.md).

use super::{status as code, PassArgs};
use crate::prompt;
use crate::session::{self, Control, Ending, ErrorKind, Request, SessionError, Status};
use crate::vfs::Vfs;
use anyhow::{Context, Result};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Default of `tresor mount --idle-lock`.
pub(super) const DEFAULT_IDLE_LOCK: &str = "15min";

/// `--idle-lock`: `None` = never.
#[derive(Clone, Copy, Debug)]
pub(super) struct IdleLock(pub(super) Option<Duration>);

/// Parses `--idle-lock`: a duration (`90s`, `15min`, `1h`) or `0` for never.
pub(super) fn parse_idle_lock(s: &str) -> Result<IdleLock, String> {
    let d = if s.trim() == "0" {
        Duration::ZERO
    } else {
        humantime::parse_duration(s)
            .map_err(|e| format!("{e} (write e.g. 90s, 15min, 1h, or 0 for never)"))?
    };
    Ok(IdleLock((!d.is_zero()).then_some(d)))
}

/// Maps the control channel's failures to exit statuses.
pub(super) fn exit_code(e: &SessionError) -> u8 {
    match e {
        SessionError::NotRunning(_) => code::NOT_RUNNING,
        SessionError::Refused(_) => code::REFUSED,
        SessionError::AlreadyMounted(..) | SessionError::StillServing(..) => code::ALREADY_MOUNTED,
        SessionError::Remote { kind, .. } => match kind {
            ErrorKind::WrongPassphrase => code::WRONG_PASSPHRASE,
            ErrorKind::CorruptPse => code::CORRUPT_PSE,
            ErrorKind::NotMember => code::NOT_MEMBER,
            ErrorKind::RemovedUser => code::REMOVED_USER,
            ErrorKind::LockedOut => code::LOCKED_OUT,
            ErrorKind::Refused => code::REFUSED,
            ErrorKind::BadRequest | ErrorKind::Failed => code::FAILURE,
        },
        SessionError::Setup(_) | SessionError::Protocol(_) | SessionError::Io(_) => code::FAILURE,
    }
}

/// Whether mountinfo text has a tresor mount on `mnt` (the last one
/// stacked there): type `fuse.tresor`, or a `fuse` mount named
/// `tresor:STORE` (a tresor before the subtype was recorded).
fn is_tresor_mount(mountinfo: &str, mnt: &Path) -> bool {
    crate::mountinfo::type_and_source(mountinfo, mnt).is_some_and(|(ty, src)| {
        ty == "fuse.tresor" || (ty == "fuse" && src.starts_with("tresor:"))
    })
}

/// A tresor mount on `mnt` whose driver has ended (killed, crashed): the
/// kernel keeps the mount and answers every access with ENOTCONN. Named
/// the same way by every command (exit status 30).
pub(super) fn dead_mount(mnt: &Path) -> Option<SessionError> {
    let key = session::mount_key(mnt);
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if !is_tresor_mount(&info, &key) {
        return None;
    }
    match std::fs::metadata(&key) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            let m = key.display();
            Some(SessionError::NotRunning(format!(
                "tresor at {m} is dead (its driver ended); run `tresor umount {m}`"
            )))
        }
        _ => None,
    }
}

/// A request to the mount at `mnt`; a dead one is named as such.
fn ask(mnt: &Path, req: &Request) -> Result<session::Reply, SessionError> {
    match session::query(mnt, req) {
        Err(SessionError::NotRunning(m)) => {
            Err(dead_mount(mnt).unwrap_or(SessionError::NotRunning(m)))
        }
        r => r,
    }
}

/// Before asking for a passphrase: a second mount on the same place is
/// refused at once, a dead one named; the driver of a mount just
/// unmounted is waited for.
pub(super) fn check_free(mnt: &Path) -> Result<()> {
    if let Some(e) = dead_mount(mnt) {
        return Err(e.into());
    }
    if session::mounted_here(mnt) {
        if let Ok(r) = session::query(mnt, &Request::new("status")) {
            let pid = r.status.map(|s| s.pid).unwrap_or(0);
            return Err(SessionError::AlreadyMounted(mnt.display().to_string(), pid).into());
        }
    }
    Ok(session::await_end(mnt)?)
}

/// Binds the mount's control socket (clearing a stale one).
pub(super) fn bind(mnt: &Path) -> Result<UnixListener> {
    Ok(session::bind(mnt)?)
}

/// After detaching: the control server and the idle/medium watcher
/// (`test_clock`: `--test-clock`, see docs/SESSIONS.md; `device`: the
/// mount's, whose disappearance from this namespace ends the driver).
pub(super) fn start(
    cache: crate::fs::KernelNotifier,
    vfs: Arc<Vfs>,
    (mnt, device): (&Path, Option<String>),
    store: &Path,
    pse: &Path,
    (idle_lock, test_clock): (Option<Duration>, bool),
    listener: UnixListener,
) -> Result<Arc<Control>> {
    let c = Control::new(vfs, mnt, store, pse, idle_lock, test_clock, Box::new(cache));
    c.start(listener, device)
        .context("cannot start the session threads")?;
    Ok(c)
}

/// The mount's exit status once the FUSE loop has ended.
pub(super) fn ended(c: &Control) -> ExitCode {
    match c.finish() {
        Ending::Normal => ExitCode::SUCCESS,
        Ending::LockedOut => ExitCode::from(code::LOCKED_OUT),
    }
}

fn when(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    let ago = SystemTime::now().duration_since(t).unwrap_or_default();
    format!(
        "{} ({} ago)",
        humantime::format_rfc3339_seconds(t),
        humantime::format_duration(Duration::from_secs(ago.as_secs()))
    )
}

fn print_status(s: &Status) {
    println!(
        "tresor:{} on {} (driver pid {})",
        s.store.display(),
        s.mountpoint.display(),
        s.pid
    );
    if s.locked {
        println!(
            "state:       LOCKED since {} — {}",
            s.locked_since_ms.map(when).unwrap_or_default(),
            s.lock_reason.as_deref().unwrap_or("locked")
        );
        println!(
            "             log in with `tresor login {} --pse FILE`",
            s.mountpoint.display()
        );
    } else {
        println!("state:       unlocked");
        println!(
            "user:        {} (role {})",
            s.user.as_deref().unwrap_or("?"),
            s.role.as_deref().unwrap_or("-")
        );
        println!("since:       {}", s.since_ms.map(when).unwrap_or_default());
        if let Some(p) = &s.pse {
            println!("PSE:         {} (removing it locks the mount)", p.display());
        }
        if let Some(t) = &s.token {
            println!("token:       {t} (pulling it locks the mount)");
        }
    }
    match (s.idle_lock_ms, s.idle_left_ms) {
        (None, _) => println!("idle lock:   never"),
        (Some(l), left) => println!(
            "idle lock:   after {}{}",
            humantime::format_duration(Duration::from_millis(l)),
            left.map(|x| format!(
                ", {} left",
                humantime::format_duration(Duration::from_secs(x / 1000))
            ))
            .unwrap_or_default()
        ),
    }
    if !s.locked {
        println!("data groups:");
        let w = s.groups.iter().map(|g| g.name.len()).max().unwrap_or(0);
        for g in &s.groups {
            let what = match g.right.as_str() {
                "w" => "read-write",
                "r" => "read-only",
                _ => "no access",
            };
            println!("  {:w$}  {}  {what}", g.name, g.right);
        }
    }
    if s.failed_logins > 0 {
        println!(
            "failed logins: {} of {} in a row",
            s.failed_logins,
            session::MAX_FAILED_LOGINS
        );
    }
}

/// `tresor status MNT [--json]`: exit 0 unlocked, LOCKED when locked.
pub(super) fn status(mnt: &Path, json: bool) -> Result<ExitCode> {
    let r = ask(mnt, &Request::new("status"))?;
    let s = r.status.unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_status(&s);
    }
    Ok(if s.locked {
        ExitCode::from(code::LOCKED)
    } else {
        ExitCode::SUCCESS
    })
}

/// `tresor lock MNT`.
pub(super) fn lock(mnt: &Path) -> Result<ExitCode> {
    ask(mnt, &Request::new("lock"))?;
    println!(
        "{} is locked: keys wiped, cached plaintext dropped; `tresor login {} --pse FILE` unlocks it",
        mnt.display(),
        mnt.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `tresor login MNT --pse FILE`: the driver checks the passphrase and
/// counts wrong ones (three in a row end the mount).
pub(super) fn login(mnt: &Path, pse: &Path, pass: &PassArgs) -> Result<ExitCode> {
    let path: PathBuf = pse
        .canonicalize()
        .with_context(|| format!("cannot read PSE {}", pse.display()))?;
    let bytes =
        std::fs::read(&path).with_context(|| format!("cannot read PSE {}", path.display()))?;
    let public =
        crate::pse::read_public(&bytes).with_context(|| format!("PSE {}", path.display()))?;
    // Ask only once the mount answers and its socket is trusted.
    ask(mnt, &Request::new("status"))?;
    let timeout = prompt::timeout_from_env()?;
    let question = format!("Passphrase for {} ({}): ", public.user, path.display());
    loop {
        let passphrase = match pass.given()? {
            Some((p, _)) => p,
            None => prompt::passphrase(&question, timeout)?,
        };
        match session::query(mnt, &Request::login(path.clone(), passphrase)) {
            Ok(r) => {
                println!("{}", r.message.unwrap_or_default());
                if let Some(s) = r.status {
                    print_status(&s);
                }
                return Ok(ExitCode::SUCCESS);
            }
            Err(SessionError::Remote {
                kind: ErrorKind::WrongPassphrase,
                message,
                tries_left: Some(_),
            }) if !pass.is_given() => eprintln!("{message}"),
            Err(e) => return Err(e.into()),
        }
    }
}

/// `tresor umount MNT`: asks the driver (it unmounts cleanly), or falls
/// back to `fusermount3 -u` for a mount whose driver does not answer.
pub(super) fn umount(mnt: &Path) -> Result<ExitCode> {
    if dead_mount(mnt).is_some() {
        super::unmount(mnt)?;
        println!(
            "removed the dead tresor mount at {}",
            session::mount_key(mnt).display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    match session::query(mnt, &Request::new("umount")) {
        Ok(_) => {
            // The driver answers, then the FUSE session ends and it removes
            // its control socket: once that is gone the mount point can be
            // mounted again at once (bounded: a driver slow to end is not
            // the caller's failure).
            let sock = session::socket_path(mnt);
            let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while sock.exists() && std::time::Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ SessionError::NotRunning(_)) => {
            // A mount whose driver died still needs removing.
            super::unmount(mnt).map_err(|_| e)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::is_tresor_mount;
    use std::path::Path;

    #[test]
    fn tresor_mounts_are_found_in_mountinfo() {
        let info = "\
22 1 0:21 / /tmp rw - tmpfs tmpfs rw
41 22 0:39 / /tmp/a\\040b rw,nosuid - fuse.tresor tresor:/srv/s rw,user_id=0
42 22 0:40 / /tmp/old rw,nosuid - fuse tresor:/srv/s rw,user_id=0
43 22 0:41 / /tmp/other rw,nosuid - fuse sshfs#x rw,user_id=0
44 22 0:42 / /tmp/over rw - fuse.tresor tresor:/srv/s rw
45 44 0:43 / /tmp/over rw - tmpfs tmpfs rw
";
        assert!(is_tresor_mount(info, Path::new("/tmp/a b")));
        assert!(is_tresor_mount(info, Path::new("/tmp/old")));
        assert!(!is_tresor_mount(info, Path::new("/tmp/other")));
        assert!(!is_tresor_mount(info, Path::new("/tmp")));
        assert!(!is_tresor_mount(info, Path::new("/tmp/nothing")));
        // The top of a stack decides.
        assert!(!is_tresor_mount(info, Path::new("/tmp/over")));
    }
}
