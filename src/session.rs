//! Sessions of a running mount: who is logged in, locking (by command,
//! when idle, when the PSE medium is pulled), logging in again or as
//! someone else without unmounting, and the control socket the CLI uses.
//!
//! The control protocol is one JSON line each way over a Unix stream
//! socket (`{"v":1,"op":"status"}` → `{"v":1,"ok":true,"status":{…}}`).
//! Both ends check who is at the other end (SO_PEERCRED): the driver
//! serves only the uid that mounted and root; the client talks only to a
//! socket owned by, and served by, itself or root — so a fake socket cannot
//! collect a passphrase. Decisions and their reasons: docs/SESSIONS.md.

use crate::keyring::Keyring;
use crate::pse::{self, PseError};
use crate::store::StoreError;
use crate::vfs::{Vfs, ROOT};
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

/// Version of the control protocol.
pub const PROTOCOL: u32 = 1;
/// Wrong passphrases in a row that end the mount (the seed's rule).
pub const MAX_FAILED_LOGINS: u32 = 3;
/// How often the watcher checks the idle time and the PSE medium.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(200);
/// How long the mount may be gone from the driver's mount namespace
/// while its FUSE connection stays open before the driver ends it: a
/// plain unmount ends the connection at once, so what is still open after
/// this is a copy of the mount in another namespace.
const UNMOUNT_GRACE: Duration = Duration::from_secs(2);
/// How long a new mount waits for the driver of a mount point that is no
/// longer mounted to end: a plain `umount` returns before the driver has
/// noticed, and a copy in another namespace keeps it for UNMOUNT_GRACE.
const ENDING_WAIT: Duration = Duration::from_secs(5);
/// Longest request line accepted.
const MAX_LINE: u64 = 64 * 1024;
/// A client that connects and says nothing is dropped after this.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the control channel, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Nothing answers at the mount point's control socket.
    #[error("{0}")]
    NotRunning(String),
    /// The other end is not allowed (wrong uid), or the socket is not trusted.
    #[error("{0}")]
    Refused(String),
    /// A live tresor mount already serves this mount point.
    #[error("{0} is already mounted by a running tresor (pid {1}); unmount it first with `tresor umount {0}`")]
    AlreadyMounted(String, u32),
    /// The mount point is unmounted here, but its driver has not ended.
    #[error("{0} is not mounted here, but the tresor that served it (pid {1}) still runs after {2} s: a file is open through a copy of the mount in another mount namespace, or it serves {0} in another namespace; close that file, or end that driver with `tresor umount {0}` (it locks, then exits), then mount again")]
    StillServing(String, u32, u64),
    /// The socket directory is unsafe or unusable.
    #[error("{0}")]
    Setup(String),
    /// A malformed message.
    #[error("control protocol: {0}")]
    Protocol(String),
    /// The driver refused or failed the request.
    #[error("{message}")]
    Remote {
        /// What kind of failure (for exit statuses).
        kind: ErrorKind,
        /// The driver's message.
        message: String,
        /// Logins left before the mount ends (wrong passphrase only).
        tries_left: Option<u32>,
    },
    /// An I/O error on the socket.
    #[error("control socket: {0}")]
    Io(#[from] io::Error),
}

/// Kinds of refusal a driver reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The passphrase does not open the PSE.
    WrongPassphrase,
    /// The PSE file is damaged, missing or not a PSE.
    CorruptPse,
    /// The PSE is not a member of this store.
    NotMember,
    /// The PSE's user was removed from this store.
    RemovedUser,
    /// Third wrong passphrase in a row: the mount was locked and ended.
    LockedOut,
    /// The caller may not control this mount.
    Refused,
    /// A request the driver does not understand.
    BadRequest,
    /// Anything else.
    Failed,
}

/// A passphrase on the wire: zeroized when dropped, never printed.
#[derive(Clone)]
pub struct Secret(pub Zeroizing<String>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Secret(Zeroizing::new(String::deserialize(d)?)))
    }
}

/// A request line.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// Protocol version.
    pub v: u32,
    /// `status`, `lock`, `login` or `umount` (and `advance_clock`, a test
    /// hook of mounts started with `--test-clock`).
    pub op: String,
    /// login: absolute path of the PSE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pse: Option<PathBuf>,
    /// login: the passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<Secret>,
    /// advance_clock: milliseconds to move the idle lock's clock forward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
}

impl Request {
    /// A request without arguments.
    pub fn new(op: &str) -> Request {
        Request {
            v: PROTOCOL,
            op: op.to_string(),
            pse: None,
            passphrase: None,
            ms: None,
        }
    }

    /// Moves the idle lock's clock forward by `by` and has the driver check
    /// the idle lock at once; the reply's status shows the outcome. Only a
    /// mount started with `--test-clock` accepts it (docs/SESSIONS.md).
    pub fn advance_clock(by: Duration) -> Request {
        Request {
            ms: Some(u64::try_from(by.as_millis()).unwrap_or(u64::MAX)),
            ..Request::new("advance_clock")
        }
    }

    /// A login request.
    pub fn login(pse: PathBuf, passphrase: Zeroizing<String>) -> Request {
        Request {
            pse: Some(pse),
            passphrase: Some(Secret(passphrase)),
            ..Request::new("login")
        }
    }
}

/// One data group and the logged-in user's right to it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupRight {
    /// The data group.
    pub name: String,
    /// `w`, `r` or `-`.
    pub right: String,
}

/// What `tresor status` shows.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    /// The mount point.
    pub mountpoint: PathBuf,
    /// The store.
    pub store: PathBuf,
    /// The driver's process id.
    pub pid: u32,
    /// Whether the mount is locked.
    pub locked: bool,
    /// Why it was locked.
    pub lock_reason: Option<String>,
    /// When it was locked (ms since the epoch).
    pub locked_since_ms: Option<u64>,
    /// Who is logged in.
    pub user: Option<String>,
    /// Their role.
    pub role: Option<String>,
    /// Since when (ms since the epoch).
    pub since_ms: Option<u64>,
    /// The PSE they logged in with (watched: removing it locks).
    pub pse: Option<PathBuf>,
    /// A token PSE's token label (watched: pulling the card locks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The idle lock (`None`: never).
    pub idle_lock_ms: Option<u64>,
    /// Time left before the idle lock.
    pub idle_left_ms: Option<u64>,
    /// Wrong passphrases in a row so far.
    pub failed_logins: u32,
    /// Every data group with the user's right.
    pub groups: Vec<GroupRight>,
}

/// A reply line.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    /// Protocol version.
    pub v: u32,
    /// Success.
    pub ok: bool,
    /// What failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
    /// A message for the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Logins left (after a wrong passphrase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tries_left: Option<u32>,
    /// The session's state (every successful reply carries it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Reply {
    fn ok(status: Status, message: impl Into<String>) -> Reply {
        Reply {
            v: PROTOCOL,
            ok: true,
            message: Some(message.into()),
            status: Some(status),
            ..Reply::default()
        }
    }

    fn err(kind: ErrorKind, message: impl Into<String>) -> Reply {
        Reply {
            v: PROTOCOL,
            ok: false,
            kind: Some(kind),
            message: Some(message.into()),
            ..Reply::default()
        }
    }
}

// ---- where the socket lives ----

/// The directory of control sockets and default logs: `$TRESOR_RUNTIME_DIR`
/// if set (for every uid: a test or a second instance keeps its own), else
/// `/run/tresor` for root, else `$XDG_RUNTIME_DIR/tresor`, else
/// `/tmp/tresor-UID`.
pub fn socket_dir() -> PathBuf {
    socket_dir_for(nix::unistd::geteuid().as_raw())
}

fn socket_dir_for(uid: u32) -> PathBuf {
    if let Some(d) = std::env::var_os("TRESOR_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if uid == 0 {
        return PathBuf::from("/run/tresor");
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join("tresor"))
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/tresor-{uid}")))
}

/// The mount point as the driver named it: canonical if it resolves.
pub fn mount_key(mnt: &Path) -> PathBuf {
    mnt.canonicalize()
        .or_else(|_| std::path::absolute(mnt))
        .unwrap_or_else(|_| mnt.to_path_buf())
}

fn socket_name(mnt: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    // Hashed: a socket path must fit in 108 bytes, mount points need not.
    let h = crate::crypto::sha256(mnt.as_os_str().as_bytes());
    format!("mnt-{}.sock", hex::encode(&h[..12]))
}

/// The control socket of the mount at `mnt` (for this uid).
pub fn socket_path(mnt: &Path) -> PathBuf {
    socket_path_in(&socket_dir(), mnt)
}

/// The control socket of the mount at `mnt` in socket directory `dir`.
pub fn socket_path_in(dir: &Path, mnt: &Path) -> PathBuf {
    dir.join(socket_name(&mount_key(mnt)))
}

fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn peer_uid(s: &UnixStream) -> io::Result<(u32, i32)> {
    let c = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(io::Error::from)?;
    Ok((c.uid(), c.pid()))
}

/// Makes the socket directory (mode 0700) or checks that an existing one
/// is ours and closed to others.
fn prepare_dir(dir: &Path) -> Result<(), SessionError> {
    let setup = |what: String| SessionError::Setup(what);
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(setup(format!("cannot create {}: {e}", dir.display()))),
    }
    let md = std::fs::symlink_metadata(dir)
        .map_err(|e| setup(format!("cannot read {}: {e}", dir.display())))?;
    if !md.is_dir() || md.uid() != me() {
        return Err(setup(format!(
            "{} is not a directory owned by uid {} — someone else created it; remove it and mount again",
            dir.display(),
            me()
        )));
    }
    if md.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| setup(format!("cannot chmod {}: {e}", dir.display())))?;
    }
    Ok(())
}

/// Is a tresor mount on `mnt` in this mount namespace? Returns its type
/// when something else is mounted there.
fn mounted_type(mnt: &Path) -> Option<String> {
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let want = mnt.to_string_lossy();
    table.lines().rev().find_map(|l| {
        let mut f = l.split(' ');
        let (_src, dir, ty) = (f.next()?, f.next()?, f.next()?);
        // /proc/mounts escapes spaces as \040.
        (dir.replace("\\040", " ") == want).then(|| ty.to_string())
    })
}

/// Before mounting on `mnt` (canonical): refuses a second mount on top of
/// a live one, clears a stale socket, and binds the control socket.
pub fn bind(mnt: &Path) -> Result<UnixListener, SessionError> {
    if mounted_type(mnt).as_deref() == Some("fuse.tresor") {
        // A live driver says who it is; a dead one leaves the mount hanging.
        let pid = query(mnt, &Request::new("status"))
            .ok()
            .and_then(|r| r.status.map(|s| s.pid))
            .unwrap_or(0);
        return Err(SessionError::AlreadyMounted(mnt.display().to_string(), pid));
    }
    let dir = socket_dir();
    prepare_dir(&dir)?;
    let path = dir.join(socket_name(mnt));
    await_end(mnt)?;
    match UnixStream::connect(&path) {
        Ok(s) => {
            let pid = peer_uid(&s).map(|(_, p)| p as u32).unwrap_or(0);
            return Err(SessionError::AlreadyMounted(mnt.display().to_string(), pid));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(_) => {
            // Left by a driver that crashed: nothing listens any more.
            tracing::warn!("removing stale control socket {}", path.display());
            let _ = std::fs::remove_file(&path);
        }
    }
    let l = UnixListener::bind(&path).map_err(|e| {
        SessionError::Setup(format!(
            "cannot create control socket {}: {e}",
            path.display()
        ))
    })?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Whether a tresor is mounted on `mnt` in this mount namespace.
pub fn mounted_here(mnt: &Path) -> bool {
    mounted_type(&mount_key(mnt)).as_deref() == Some("fuse.tresor")
}

/// Before mounting on `mnt`, which is not mounted here: a driver that
/// still answers for it is ending (after a plain `umount`, which returns
/// before the driver has noticed; or within its grace for copies of the
/// mount in other namespaces). Waits up to [`ENDING_WAIT`] for its socket
/// to go, so that `umount M && mount M` works as with any filesystem.
pub fn await_end(mnt: &Path) -> Result<(), SessionError> {
    let path = socket_path(mnt);
    let start = Instant::now();
    loop {
        let s = match UnixStream::connect(&path) {
            Ok(s) => s,
            // Gone, or left by a driver that died: nothing to wait for.
            Err(_) => return Ok(()),
        };
        if start.elapsed() >= ENDING_WAIT {
            let pid = peer_uid(&s).map(|(_, p)| p as u32).unwrap_or(0);
            return Err(SessionError::StillServing(
                mount_key(mnt).display().to_string(),
                pid,
                ENDING_WAIT.as_secs(),
            ));
        }
        drop(s);
        std::thread::sleep(Duration::from_millis(20)); // the driver's end has no event to wait on
    }
}

// ---- the client side ----

/// Explains why nothing answers at `mnt`.
fn not_running(mnt: &Path, path: &Path, e: &io::Error) -> SessionError {
    let m = mnt.display();
    match mounted_type(mnt) {
        None => SessionError::NotRunning(format!("nothing is mounted on {m}; mount a store there with `tresor mount STORE {m} --pse FILE`")),
        Some(t) if t != "fuse.tresor" => SessionError::NotRunning(format!("{m} is not a tresor mount (it is {t})")),
        Some(_) => SessionError::NotRunning(format!(
            "the tresor mount on {m} does not answer on its control socket {} ({e}): its driver ended or belongs to another user; `tresor umount {m}` removes it",
            path.display()
        )),
    }
}

/// Connects to the control socket of the mount at `mnt`, checking that the
/// socket and the process behind it are this user's or root's.
pub fn connect(mnt: &Path) -> Result<UnixStream, SessionError> {
    let mnt = mount_key(mnt);
    let mine = socket_dir().join(socket_name(&mnt));
    // A root-owned mount, asked about by another user: say "not yours"
    // rather than "not running".
    let candidates = if me() == 0 {
        vec![mine]
    } else {
        vec![mine, socket_dir_for(0).join(socket_name(&mnt))]
    };
    let mut first_err = None;
    for path in &candidates {
        match UnixStream::connect(path) {
            Ok(s) => {
                check_server(path, &s)?;
                s.set_read_timeout(Some(Duration::from_secs(120)))?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(SessionError::Refused(format!(
                    "the control socket of {} is not yours ({e}): only the user who mounted it, or root, may control a mount",
                    mnt.display()
                )));
            }
            Err(e) => {
                first_err.get_or_insert((path.clone(), e));
            }
        }
    }
    let (path, e) = first_err.unwrap_or_else(|| (PathBuf::new(), io::ErrorKind::NotFound.into()));
    Err(not_running(&mnt, &path, &e))
}

/// The client trusts a socket file and a server owned by itself or root.
fn check_server(path: &Path, s: &UnixStream) -> Result<(), SessionError> {
    let owner = std::fs::symlink_metadata(path)?.uid();
    let (peer, pid) = peer_uid(s)?;
    for (what, uid) in [("socket file", owner), ("serving process", peer)] {
        if uid != me() && uid != 0 {
            return Err(SessionError::Refused(format!(
                "the control socket {} is not trustworthy: its {what} belongs to uid {uid} (pid {pid}); nothing was sent",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Sends one request and reads the reply.
pub fn call(s: &mut UnixStream, req: &Request) -> Result<Reply, SessionError> {
    let mut line =
        Zeroizing::new(serde_json::to_vec(req).map_err(|e| SessionError::Protocol(e.to_string()))?);
    line.push(b'\n');
    // A driver that refuses us answers without reading: its reply still counts.
    let sent = s.write_all(&line);
    drop(line);
    let mut buf = Vec::new();
    let got = BufReader::new((&*s).take(MAX_LINE)).read_until(b'\n', &mut buf);
    if buf.is_empty() {
        sent?;
        got?;
        return Err(SessionError::Protocol(
            "the driver closed the connection without an answer".into(),
        ));
    }
    let r: Reply = serde_json::from_slice(&buf)
        .map_err(|e| SessionError::Protocol(format!("bad reply: {e}")))?;
    if r.v != PROTOCOL {
        return Err(SessionError::Protocol(format!(
            "the driver speaks protocol {}, this tresor {PROTOCOL}; use the tresor that mounted",
            r.v
        )));
    }
    if !r.ok {
        return Err(SessionError::Remote {
            kind: r.kind.unwrap_or(ErrorKind::Failed),
            message: r.message.unwrap_or_else(|| "refused".into()),
            tries_left: r.tries_left,
        });
    }
    Ok(r)
}

/// Connects, sends one request, returns the reply.
pub fn query(mnt: &Path, req: &Request) -> Result<Reply, SessionError> {
    call(&mut connect(mnt)?, req)
}

// ---- the driver side ----

/// Drops the kernel's cached pages, attributes and names (implemented
/// over FUSE notifications in [`crate::fs`]).
pub trait KernelCache: Send + Sync {
    /// Writes back and drops the pages and attributes of `ino`.
    fn inval_inode(&self, ino: u64) -> io::Result<()>;
    /// Drops the cached name `name` in directory `parent`.
    fn inval_entry(&self, parent: u64, name: &OsStr) -> io::Result<()>;
}

struct LoggedIn {
    user: String,
    role: Option<String>,
    since: SystemTime,
    pse: PathBuf,
    /// A token PSE's token: pulling it locks, as removing the PSE does.
    token: Option<crate::token::Presence>,
}

/// The presence check of the token a PSE file names (`None`: a passphrase
/// PSE, or a file that cannot be read — whose removal the path check sees).
fn token_of(pse: &Path) -> Option<crate::token::Presence> {
    let bytes = std::fs::read(pse).ok()?;
    let r = pse::read_public(&bytes).ok()?.token?;
    match crate::token::Presence::of(&r) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!("session: cannot watch token {}: {e}", r.label);
            None
        }
    }
}

struct State {
    user: Option<LoggedIn>,
    locked: Option<(SystemTime, String)>,
    failures: u32,
}

/// The session of one running mount.
pub struct Control {
    vfs: Arc<Vfs>,
    mountpoint: PathBuf,
    store: PathBuf,
    idle_lock: Option<Duration>,
    /// Whether `advance_clock` is served (`tresor mount --test-clock`).
    test_clock: bool,
    cache: Box<dyn KernelCache>,
    state: Mutex<State>,
    /// Held while a reply is being prepared and sent, so the process does
    /// not exit under it.
    busy: Mutex<()>,
    /// Set by [`Control::finish`]: the FUSE loop has ended.
    ended: AtomicBool,
    locked_out: AtomicBool,
    socket: PathBuf,
    /// The mount's device (`MAJ:MIN`), once known: whether it is still
    /// mounted in this namespace decides what a stop asks for.
    device: OnceLock<String>,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a mount ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Unmounted normally.
    Normal,
    /// Three wrong passphrases in a row.
    LockedOut,
}

impl Control {
    /// The session of a mount just made by `user` with the PSE at `pse`
    /// (absolute). `idle_lock` `None`: never lock when idle. `test_clock`:
    /// serve `advance_clock`, which moves the idle clock forward — it can
    /// only bring the idle lock sooner.
    pub fn new(
        vfs: Arc<Vfs>,
        mountpoint: &Path,
        store: &Path,
        pse: &Path,
        idle_lock: Option<Duration>,
        test_clock: bool,
        cache: Box<dyn KernelCache>,
    ) -> Arc<Control> {
        let keys = vfs.keys();
        Arc::new(Control {
            mountpoint: mountpoint.to_path_buf(),
            store: store.to_path_buf(),
            idle_lock,
            test_clock,
            cache,
            state: Mutex::new(State {
                user: Some(LoggedIn {
                    user: keys.user.clone(),
                    role: keys.role.clone(),
                    since: SystemTime::now(),
                    pse: pse.to_path_buf(),
                    token: token_of(pse),
                }),
                locked: None,
                failures: 0,
            }),
            busy: Mutex::new(()),
            ended: AtomicBool::new(false),
            locked_out: AtomicBool::new(false),
            socket: socket_dir().join(socket_name(mountpoint)),
            device: OnceLock::new(),
            vfs,
        })
    }

    /// Starts the control server on `listener` and the idle/medium
    /// watcher, which also ends the driver once the mount of `device`
    /// (`MAJ:MIN`) has left this mount namespace. Call after detaching:
    /// threads do not survive a fork.
    pub fn start(
        self: &Arc<Self>,
        listener: UnixListener,
        device: Option<String>,
    ) -> io::Result<()> {
        if let Some(d) = &device {
            let _ = self.device.set(d.clone());
        }
        let c = Arc::clone(self);
        std::thread::Builder::new()
            .name("tresor-control".into())
            .spawn(move || c.serve(listener))?;
        let c = Arc::clone(self);
        std::thread::Builder::new()
            .name("tresor-watch".into())
            .spawn(move || c.watch(device))?;
        Ok(())
    }

    /// After the FUSE session ended: waits for a reply in flight, removes
    /// the socket, wipes the keys; says how the mount ended.
    pub fn finish(&self) -> Ending {
        let _b = guard(&self.busy);
        self.ended.store(true, Ordering::SeqCst);
        let _ = std::fs::remove_file(&self.socket);
        self.vfs.finish_lock();
        if self.locked_out.load(Ordering::SeqCst) {
            Ending::LockedOut
        } else {
            Ending::Normal
        }
    }

    fn status(&self, st: &State) -> Status {
        let mut s = Status {
            mountpoint: self.mountpoint.clone(),
            store: self.store.clone(),
            pid: std::process::id(),
            locked: st.locked.is_some(),
            lock_reason: st.locked.as_ref().map(|(_, r)| r.clone()),
            locked_since_ms: st.locked.as_ref().map(|(t, _)| ms(*t)),
            idle_lock_ms: self.idle_lock.map(|d| d.as_millis() as u64),
            failed_logins: st.failures,
            ..Status::default()
        };
        if let (Some(u), None) = (&st.user, &st.locked) {
            s.user = Some(u.user.clone());
            s.role = u.role.clone();
            s.since_ms = Some(ms(u.since));
            s.pse = Some(u.pse.clone());
            s.token = u.token.as_ref().map(|t| t.label.clone());
            s.idle_left_ms = self
                .idle_lock
                .map(|d| d.saturating_sub(self.vfs.idle_for()).as_millis() as u64);
            s.groups = rights(&self.vfs.keys());
        }
        s
    }

    /// Locks: the kernel writes back dirty pages and drops every cached
    /// page, attribute and name; then the per-file ciphers and the keys
    /// are wiped. Idempotent.
    fn lock(&self, st: &mut State, reason: &str) {
        if st.locked.is_some() {
            return;
        }
        self.vfs.begin_lock();
        // Writes through open handles are still served here: that is how
        // the kernel's writeback (launder) of dirty pages reaches the store.
        self.invalidate();
        self.vfs.finish_lock();
        // Anything the kernel cached while the first pass ran.
        self.invalidate();
        st.locked = Some((SystemTime::now(), reason.to_string()));
        let who = st.user.take().map(|u| u.user).unwrap_or_default();
        tracing::warn!("session: locked ({reason}); {who}'s keys wiped");
    }

    fn invalidate(&self) {
        let (inos, names) = self.vfs.kernel_known();
        for ino in inos {
            if let Err(e) = self.cache.inval_inode(ino) {
                tracing::debug!(ino, "inval_inode: {e}");
            }
        }
        for (parent, name) in names {
            if let Err(e) = self.cache.inval_entry(parent, &name) {
                tracing::debug!(parent, "inval_entry: {e}");
            }
        }
        let _ = self.cache.inval_inode(ROOT);
    }

    fn watch(self: Arc<Self>, device: Option<String>) {
        let mut table = device.and_then(|d| {
            crate::mountinfo::DeviceWatch::new(d)
                .inspect_err(|e| tracing::info!("cannot watch the mount table: {e}"))
                .ok()
        });
        let mut gone_since = None;
        loop {
            std::thread::sleep(WATCH_INTERVAL);
            self.check(&mut guard(&self.state));
            match table.as_mut().map(|t| t.look()) {
                Some(Ok(Some(true))) => gone_since = None,
                Some(Ok(Some(false))) => {
                    gone_since.get_or_insert_with(Instant::now);
                }
                Some(Err(e)) => {
                    tracing::info!("cannot read the mount table: {e}; not watched any more");
                    table = None;
                }
                _ => {}
            }
            let waited = gone_since.is_some_and(|t: Instant| t.elapsed() >= UNMOUNT_GRACE);
            if waited && self.vfs.open_handles() == 0 {
                // A copy of the mount, made by someone who created a mount
                // namespace while it was mounted (`unshare -m`, a
                // service's private namespace), keeps the connection open.
                // With a file open the driver serves on until it is
                // closed, as after a lazy unmount — or until a stop.
                self.end("its connection stayed open: a copy of the mount in another mount namespace (or a lazy unmount) kept it alive");
            }
        }
    }

    /// Whether the mount has left this namespace (unmounted, lazily or
    /// with a copy elsewhere) while the driver still runs. `false` when
    /// the device is not known: then nothing is forced.
    fn gone_here(&self) -> bool {
        let Some(dev) = self.device.get() else {
            return false;
        };
        std::fs::read_to_string("/proc/self/mountinfo")
            .is_ok_and(|t| !crate::mountinfo::has_device(&t, dev))
    }

    /// The mount has left the driver's namespace, but its FUSE connection
    /// is still open (`why`). An unmount means that the plaintext is gone:
    /// lock (dirty pages written back, the keys wiped) and end; what is
    /// still open through the connection then answers ENOTCONN. Returns
    /// only if the FUSE loop has ended meanwhile (the normal way out).
    fn end(&self, why: &str) {
        let _b = guard(&self.busy);
        if self.ended.load(Ordering::SeqCst) {
            return;
        }
        let mut st = guard(&self.state);
        tracing::warn!(
            "session: {} was unmounted, but {why}; keys wiped, the driver ends (what is still open through it answers ENOTCONN)",
            self.mountpoint.display()
        );
        self.lock(&mut st, "unmounted");
        let _ = std::fs::remove_file(&self.socket);
        std::process::exit(0);
    }

    /// A stop signal (`how`): unmounts; a mount already gone from this
    /// namespace, which files open through a copy or a lazy unmount
    /// keep serving, is ended now.
    pub fn stop(&self, how: &str) -> Result<(), String> {
        if self.gone_here() {
            self.end(&format!("{how} came while files were still open through it (a copy of the mount in another namespace, or a lazy unmount)"));
            return Ok(());
        }
        unmount(&self.mountpoint, false)
    }

    /// One look of the watcher: locks if the PSE is gone or the mount has
    /// been idle (on the engine's clock) for the idle limit or longer.
    fn check(&self, st: &mut State) {
        if let Some(why) = self.lock_due(st) {
            self.lock(st, &why);
        }
    }

    /// Why the mount must lock now, if it must.
    fn lock_due(&self, st: &State) -> Option<String> {
        if st.locked.is_some() {
            return None;
        }
        if let Some(u) = &st.user {
            if !u.pse.exists() {
                return Some(format!("PSE {} removed", u.pse.display()));
            }
            if let Some(t) = &u.token {
                if !t.present() {
                    return Some(format!("token {} removed", t.label));
                }
            }
        }
        let limit = self.idle_lock?;
        (self.vfs.idle_for() >= limit)
            .then(|| format!("idle for {}", humantime::format_duration(limit)))
    }

    /// The test hook `advance_clock`: moves the idle clock forward, then
    /// checks at once (the reply is the readiness signal a test waits for).
    fn advance_clock(&self, st: &mut State, ms: Option<u64>) -> Reply {
        if !self.test_clock {
            return Reply::err(
                ErrorKind::BadRequest,
                "advance_clock is a test hook: this mount was not started with --test-clock",
            );
        }
        let Some(ms) = ms else {
            return Reply::err(ErrorKind::BadRequest, "advance_clock needs ms");
        };
        let by = Duration::from_millis(ms);
        let ahead = self.vfs.clock().advance(by);
        tracing::warn!(
            "session: test clock advanced by {} ({} ahead of real time)",
            humantime::format_duration(by),
            humantime::format_duration(ahead)
        );
        self.check(st);
        Reply::ok(
            self.status(st),
            format!(
                "clock advanced by {}; {} ahead of real time",
                humantime::format_duration(by),
                humantime::format_duration(ahead)
            ),
        )
    }

    fn serve(self: Arc<Self>, listener: UnixListener) {
        for conn in listener.incoming() {
            match conn {
                Ok(s) => {
                    if let Some(after) = self.handle(s) {
                        after();
                    }
                }
                Err(e) => {
                    tracing::warn!("control socket: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Serves one connection; may return what to do after replying.
    fn handle(self: &Arc<Self>, mut s: UnixStream) -> Option<Box<dyn FnOnce()>> {
        let _b = guard(&self.busy);
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let _ = s.set_write_timeout(Some(IO_TIMEOUT));
        let (reply, after) = match peer_uid(&s) {
            Ok((uid, _)) if uid == me() || uid == 0 => self.request(&s),
            Ok((uid, pid)) => {
                tracing::warn!(uid, pid, "session: refused a control connection");
                let r = Reply::err(
                    ErrorKind::Refused,
                    format!("uid {uid} may not control this mount: only its owner (uid {}) and root may", me()),
                );
                (r, None)
            }
            Err(e) => (
                Reply::err(ErrorKind::Refused, format!("no peer credentials: {e}")),
                None,
            ),
        };
        if let Ok(mut line) = serde_json::to_vec(&reply) {
            line.push(b'\n');
            let _ = s.write_all(&line);
        }
        after
    }

    fn request(self: &Arc<Self>, s: &UnixStream) -> (Reply, Option<Box<dyn FnOnce()>>) {
        let mut buf = Zeroizing::new(Vec::new());
        if let Err(e) = BufReader::new(s.take(MAX_LINE)).read_until(b'\n', &mut buf) {
            return (
                Reply::err(ErrorKind::BadRequest, format!("reading the request: {e}")),
                None,
            );
        }
        let req: Request = match serde_json::from_slice(&buf) {
            Ok(r) => r,
            Err(e) => {
                return (
                    Reply::err(ErrorKind::BadRequest, format!("bad request: {e}")),
                    None,
                )
            }
        };
        drop(buf);
        if req.v != PROTOCOL {
            return (
                Reply::err(
                    ErrorKind::BadRequest,
                    format!("protocol {} requested; this driver speaks {PROTOCOL} — use the tresor that mounted", req.v),
                ),
                None,
            );
        }
        let mut st = guard(&self.state);
        match req.op.as_str() {
            "status" => (Reply::ok(self.status(&st), "status"), None),
            "lock" => {
                self.lock(&mut st, "locked by command");
                (Reply::ok(self.status(&st), "locked"), None)
            }
            "login" => self.login(&mut st, req),
            "advance_clock" => (self.advance_clock(&mut st, req.ms), None),
            "umount" if self.gone_here() => {
                // Nothing left to unmount here: what keeps the driver is a
                // file open through a copy or a lazy unmount. End it once
                // the reply is out.
                drop(st);
                let c = Arc::clone(self);
                let after = Box::new(move || {
                    c.end("`tresor umount` came while files were still open through it (a copy of the mount in another namespace, or a lazy unmount)");
                });
                (Reply::ok(Status::default(), "ending"), Some(after))
            }
            "umount" => {
                drop(st);
                match unmount(&self.mountpoint, false) {
                    Ok(()) => {
                        tracing::info!("session: unmounted by command");
                        (Reply::ok(Status::default(), "unmounted"), None)
                    }
                    Err(e) => (Reply::err(ErrorKind::Failed, e), None),
                }
            }
            other => (
                Reply::err(ErrorKind::BadRequest, format!("unknown request {other:?}")),
                None,
            ),
        }
    }

    fn login(&self, st: &mut State, req: Request) -> (Reply, Option<Box<dyn FnOnce()>>) {
        let (Some(path), Some(pass)) = (req.pse, req.passphrase) else {
            return (
                Reply::err(ErrorKind::BadRequest, "login needs pse and passphrase"),
                None,
            );
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                return (
                    Reply::err(
                        ErrorKind::CorruptPse,
                        format!("the driver cannot read PSE {}: {e}", path.display()),
                    ),
                    None,
                )
            }
        };
        let user = match pse::open(&bytes, pass.0.as_bytes()) {
            Ok(u) => u,
            Err(e) if e.is_wrong_secret() => {
                let what = match e {
                    PseError::Token(t) => t.to_string(),
                    _ => format!("wrong passphrase for PSE {}", path.display()),
                };
                return self.failed(st, &path, &what);
            }
            Err(e @ PseError::Token(_)) => {
                return (
                    Reply::err(ErrorKind::Failed, format!("PSE {}: {e}", path.display())),
                    None,
                )
            }
            Err(e) => {
                return (
                    Reply::err(
                        ErrorKind::CorruptPse,
                        format!("PSE {}: {e}", path.display()),
                    ),
                    None,
                )
            }
        };
        drop(pass);
        let token = user
            .public
            .token
            .as_ref()
            .and_then(|r| crate::token::Presence::of(r).ok());
        let ring = match self.vfs.store().unlock(&user) {
            Ok(r) => r,
            Err(e) => {
                let kind = match e {
                    StoreError::UnknownUser(_) | StoreError::NotAdmin(_) => ErrorKind::NotMember,
                    StoreError::RemovedUser(_) => ErrorKind::RemovedUser,
                    _ => ErrorKind::Failed,
                };
                tracing::warn!(user = %user.public.user, "session: login refused: {e}");
                return (
                    Reply::err(
                        kind,
                        format!("PSE {}: {e}; the mount is unchanged", path.display()),
                    ),
                    None,
                );
            }
        };
        drop(user);
        for p in &ring.problems {
            tracing::warn!("session: {p}");
        }
        st.failures = 0;
        let who = ring.user.clone();
        let role = ring.role.clone();
        let previous = st.user.as_ref().map(|u| u.user.clone());
        // Every byte the previous keys decrypted leaves the caches first.
        self.lock(st, &format!("login of {who}"));
        self.vfs.set_keyring(ring);
        st.locked = None;
        st.user = Some(LoggedIn {
            user: who.clone(),
            role,
            since: SystemTime::now(),
            pse: path,
            token,
        });
        let msg = match previous {
            Some(p) if p != who => format!("switched from {p} to {who}"),
            _ => format!("{who} logged in"),
        };
        tracing::warn!("session: {msg}");
        (Reply::ok(self.status(st), msg), None)
    }

    fn failed(
        &self,
        st: &mut State,
        path: &Path,
        what: &str,
    ) -> (Reply, Option<Box<dyn FnOnce()>>) {
        st.failures += 1;
        let left = MAX_FAILED_LOGINS.saturating_sub(st.failures);
        tracing::warn!(
            "session: wrong passphrase for PSE {} ({} of {MAX_FAILED_LOGINS})",
            path.display(),
            st.failures
        );
        if left > 0 {
            let mut r = Reply::err(
                ErrorKind::WrongPassphrase,
                format!("{what} — {left} more wrong one(s) end the mount"),
            );
            r.tries_left = Some(left);
            return (r, None);
        }
        self.lock(st, "three failed logins");
        self.locked_out.store(true, Ordering::SeqCst);
        tracing::error!(
            "session: three wrong passphrases in a row — mount locked and ended; start it again with `tresor mount`"
        );
        let mnt = self.mountpoint.clone();
        let after = Box::new(move || {
            if let Err(e) = unmount(&mnt, false) {
                tracing::error!("{e}; detaching lazily");
                let _ = unmount(&mnt, true);
            }
            // The FUSE loop ends with the unmount; if a busy mount keeps it
            // alive, end the driver anyway (the keys are wiped already).
            std::thread::sleep(Duration::from_secs(3));
            std::process::exit(i32::from(crate::cli::status::LOCKED_OUT));
        });
        (
            Reply::err(
                ErrorKind::LockedOut,
                format!(
                    "three wrong passphrases in a row: {} was locked and unmounted; mount it again with `tresor mount`",
                    self.mountpoint.display()
                ),
            ),
            Some(after),
        )
    }
}

/// Every data group of the keyring with its right, sorted by name.
pub fn rights(ring: &Keyring) -> Vec<GroupRight> {
    let mut v: Vec<GroupRight> = ring
        .groups()
        .map(|g| GroupRight {
            name: g.to_string(),
            right: if ring.group(g).is_some_and(|k| k.writable) {
                "w"
            } else {
                "r"
            }
            .to_string(),
        })
        .chain(ring.denied().map(|g| GroupRight {
            name: g.to_string(),
            right: "-".to_string(),
        }))
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Unmounts with `fusermount3 -u` (`lazy`: `-z`).
pub fn unmount(mnt: &Path, lazy: bool) -> Result<(), String> {
    let mut c = std::process::Command::new("fusermount3");
    c.arg("-u");
    if lazy {
        c.arg("-z");
    }
    match c.arg(mnt).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
            let m = mnt.display();
            // fusermount3 says only "Device or resource busy".
            let hint = if err.contains("busy") {
                format!(" (a program has a file open or its working directory in it): close that, or detach the mount now with `fusermount3 -u -z {m}` and end what stays open with `tresor umount {m}`")
            } else {
                String::new()
            };
            Err(format!("cannot unmount {m}: {err}{hint}"))
        }
        Err(e) => Err(format!(
            "cannot run fusermount3 (install the fuse3 package): {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_not_printed_and_round_trip() {
        let r = Request::login(PathBuf::from("/p.pse"), Zeroizing::new("hunter2".into()));
        assert!(!format!("{r:?}").contains("hunter2"));
        let line = serde_json::to_string(&r).unwrap();
        let back: Request = serde_json::from_str(&line).unwrap();
        assert_eq!(back.passphrase.unwrap().0.as_str(), "hunter2");
        assert_eq!(back.op, "login");
        assert_eq!(back.v, PROTOCOL);
    }

    #[test]
    fn socket_names_fit_and_differ() {
        let long = PathBuf::from(format!("/{}", "x".repeat(500)));
        let p = socket_dir_for(0).join(socket_name(&long));
        assert!(p.as_os_str().len() < 108, "{}", p.display());
        assert_ne!(socket_name(Path::new("/a")), socket_name(Path::new("/b")));
    }

    #[test]
    fn error_replies_carry_their_kind() {
        let line = serde_json::to_string(&Reply::err(ErrorKind::LockedOut, "x")).unwrap();
        assert!(line.contains("\"locked_out\""), "{line}");
    }

    // ---- the idle lock's decision, on a clock that moves only when told ----

    use crate::vfs::clock::Clock;
    use crate::vfs::Caller;

    /// No kernel in a unit test: nothing cached to drop.
    struct NoKernel;

    impl KernelCache for NoKernel {
        fn inval_inode(&self, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn inval_entry(&self, _: u64, _: &OsStr) -> io::Result<()> {
            Ok(())
        }
    }

    struct Session {
        control: Arc<Control>,
        vfs: Arc<Vfs>,
        pse: PathBuf,
        _dir: tempfile::TempDir,
    }

    /// A session over a store with data group `g`, logged in with a PSE
    /// file, its engine on a manual clock; no threads run: the tests call
    /// the watcher's check themselves.
    fn session(idle_lock: Option<Duration>, test_clock: bool) -> Session {
        let dir = tempfile::tempdir().unwrap();
        let admin = crate::pse::Pse::generate("admin", None).unwrap();
        let root = dir.path().join("store");
        let s =
            crate::store::Store::create(&root, &admin, crate::crypto::KdfParams::DEFAULT).unwrap();
        crate::admin::Admin::open(&s, &admin)
            .unwrap()
            .add_group("g")
            .unwrap();
        let ring = s.unlock(&admin).unwrap();
        let me = Caller { uid: 0, gid: 0 };
        let vfs = Vfs::new(crate::store::Store::open(&root).unwrap(), ring, me).unwrap();
        let vfs = Arc::new(vfs.with_clock(Clock::manual()));
        let pse = dir.path().join("admin.pse");
        std::fs::write(&pse, b"the medium is present").unwrap();
        let control = Control::new(
            Arc::clone(&vfs),
            &dir.path().join("mnt"),
            &root,
            &pse,
            idle_lock,
            test_clock,
            Box::new(NoKernel),
        );
        Session {
            control,
            vfs,
            pse,
            _dir: dir,
        }
    }

    impl Session {
        fn advance(&self, by: Duration) {
            self.vfs.clock().advance(by);
        }
        /// One look of the watcher; the status afterwards.
        fn check(&self) -> Status {
            let mut st = guard(&self.control.state);
            self.control.check(&mut st);
            self.control.status(&st)
        }
        fn activity(&self) {
            self.vfs.lookup(ROOT, OsStr::new("g")).unwrap();
        }
        /// Sends `req` through a socket pair to the request handler.
        fn ask(&self, req: &Request) -> Reply {
            let (mut client, server) = UnixStream::pair().unwrap();
            let mut line = serde_json::to_vec(req).unwrap();
            line.push(b'\n');
            client.write_all(&line).unwrap();
            assert!(self.control.handle(server).is_none());
            let mut reply = String::new();
            BufReader::new(client).read_line(&mut reply).unwrap();
            serde_json::from_str(&reply).unwrap()
        }
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn activity_keeps_the_mount_open_and_idleness_past_the_limit_locks_it() {
        let s = session(Some(60 * MIN), false);
        assert!(!s.check().locked);
        // 40 min idle, activity, 40 min idle: 80 min since the mount, never
        // an hour without a request.
        s.advance(40 * MIN);
        let st = s.check();
        assert!(!st.locked);
        assert_eq!(st.idle_left_ms, Some(20 * 60_000));
        s.activity();
        assert_eq!(s.check().idle_left_ms, Some(60 * 60_000), "activity resets");
        s.advance(40 * MIN);
        assert!(!s.check().locked, "locked despite activity 40 min ago");
        // Just under the limit: open; at the limit: locked.
        s.advance(20 * MIN - Duration::from_millis(1));
        let st = s.check();
        assert!(!st.locked);
        assert_eq!(st.idle_left_ms, Some(1));
        s.advance(Duration::from_millis(1));
        let st = s.check();
        assert!(st.locked, "not locked after an hour idle");
        assert_eq!(st.lock_reason.as_deref(), Some("idle for 1h"));
        assert_eq!(st.user, None);
        assert!(s.vfs.is_locked());
        assert!(s.vfs.groups().is_empty(), "keys wiped");
        // Later looks leave the lock (and its reason) as it is.
        s.advance(60 * MIN);
        assert_eq!(s.check().lock_reason.as_deref(), Some("idle for 1h"));
    }

    #[test]
    fn without_an_idle_limit_idleness_never_locks() {
        let s = session(None, false);
        s.advance(10 * 365 * 24 * 60 * MIN);
        let st = s.check();
        assert!(!st.locked);
        assert_eq!(st.idle_left_ms, None);
        assert!(!s.vfs.is_locked());
    }

    #[test]
    fn a_removed_pse_locks_at_the_next_look_whatever_the_clock() {
        let s = session(Some(60 * MIN), false);
        assert!(!s.check().locked);
        std::fs::remove_file(&s.pse).unwrap();
        let st = s.check();
        assert!(st.locked);
        assert!(
            st.lock_reason.as_deref().unwrap().contains("removed"),
            "{st:?}"
        );
    }

    #[test]
    fn advance_clock_is_served_only_with_test_clock_and_checks_at_once() {
        let s = session(Some(60 * MIN), false);
        let r = s.ask(&Request::advance_clock(2 * 60 * MIN));
        assert!(!r.ok);
        assert_eq!(r.kind, Some(ErrorKind::BadRequest));
        assert!(r.message.unwrap().contains("--test-clock"));
        assert_eq!(s.vfs.clock().ahead(), Duration::ZERO, "clock untouched");
        assert!(!s.check().locked);

        let s = session(Some(60 * MIN), true);
        let r = s.ask(&Request::advance_clock(30 * MIN));
        assert!(r.ok, "{:?}", r.message);
        assert!(!r.status.unwrap().locked);
        // The reply comes after the check: it already shows the lock.
        let r = s.ask(&Request::advance_clock(30 * MIN));
        let st = r.status.unwrap();
        assert!(st.locked);
        assert_eq!(st.lock_reason.as_deref(), Some("idle for 1h"));
        assert_eq!(s.vfs.clock().ahead(), 60 * MIN);
        let r = s.ask(&Request::new("advance_clock"));
        assert_eq!(r.kind, Some(ErrorKind::BadRequest));
    }
}
