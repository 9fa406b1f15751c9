//! The filesystem engine: plaintext operations on an encrypted store.
//!
//! It knows nothing of FUSE: every operation takes inode numbers and names
//! and returns a `Result` whose error maps to one errno ([`VfsError::errno`]).
//! The root is virtual and lists the data groups the keyring opens; below
//! it, each inode is a backing file or directory whose inode number it
//! reuses (so `stat` and `readdir` agree).

pub(crate) mod at;
pub mod clock;
pub mod content;
pub(crate) mod names;

use crate::format::content::{DirId, FileHeader, FILE_ID_LEN};
use crate::format::names::{Entry, DIRID_FILE};
use crate::keyring::{EpochKey, Keyring};
use crate::store::Store;
use at::{Dir, Loc, Meta};
use clock::Clock;
use content::{ContentError, FileCipher};
use nix::fcntl::OFlag;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, Weak};
use std::time::{Duration, SystemTime};

/// Inode number.
pub type Ino = u64;
/// The virtual root.
pub const ROOT: Ino = 1;

/// Errors of filesystem operations, each one errno.
#[derive(Debug, thiserror::Error)]
pub enum VfsError {
    /// No such entry.
    #[error("no such file or directory")]
    NotFound,
    /// No key for this data group, or an operation the layout forbids.
    #[error("permission denied: {0}")]
    Access(String),
    /// Ciphertext failed authentication or is malformed: EIO, never plaintext.
    #[error("{path}: {what}")]
    Corrupt {
        /// The plaintext path (inside the mount) of the damaged object.
        path: String,
        /// What failed.
        what: String,
    },
    /// An I/O error of the backing store, passed through.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Invalid argument or name.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// Name or symlink target too long for the backing store.
    #[error("name too long")]
    NameTooLong,
    /// Not supported by tresor.
    #[error("operation not supported")]
    NotSupported,
    /// Rename or link across data groups.
    #[error("cross-data-group rename or link")]
    CrossDevice,
    /// Unknown file handle.
    #[error("bad file handle")]
    BadHandle,
    /// Not permitted.
    #[error("operation not permitted")]
    Perm,
    /// Not empty.
    #[error("directory not empty")]
    NotEmpty,
    /// Already exists.
    #[error("file exists")]
    Exists,
    /// No such extended attribute.
    #[error("no such attribute")]
    NoAttr,
    /// The user's role may only read this data group.
    #[error("data group is read-only for this user")]
    ReadOnly,
}

impl VfsError {
    /// The errno this error is reported as.
    pub fn errno(&self) -> i32 {
        match self {
            VfsError::NotFound => libc::ENOENT,
            VfsError::Access(_) => libc::EACCES,
            VfsError::Corrupt { .. } => libc::EIO,
            VfsError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            VfsError::Invalid(_) => libc::EINVAL,
            VfsError::NameTooLong => libc::ENAMETOOLONG,
            VfsError::NotSupported => libc::EOPNOTSUPP,
            VfsError::CrossDevice => libc::EXDEV,
            VfsError::BadHandle => libc::EBADF,
            VfsError::Perm => libc::EPERM,
            VfsError::NotEmpty => libc::ENOTEMPTY,
            VfsError::Exists => libc::EEXIST,
            VfsError::NoAttr => libc::ENODATA,
            VfsError::ReadOnly => libc::EROFS,
        }
    }
}

/// Result of filesystem operations.
pub type Result<T> = std::result::Result<T, VfsError>;

/// File kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Character device (inert: the mount is `nodev`).
    CharDevice,
    /// Block device (inert: the mount is `nodev`).
    BlockDevice,
}

impl Kind {
    fn of(md: &Meta) -> Option<Kind> {
        match md.mode() & libc::S_IFMT {
            libc::S_IFDIR => Some(Kind::Dir),
            libc::S_IFREG => Some(Kind::File),
            libc::S_IFLNK => Some(Kind::Symlink),
            libc::S_IFIFO => Some(Kind::Fifo),
            libc::S_IFSOCK => Some(Kind::Socket),
            libc::S_IFCHR => Some(Kind::CharDevice),
            libc::S_IFBLK => Some(Kind::BlockDevice),
            _ => None,
        }
    }
}

/// Attributes of an inode, as the caller sees them (plaintext sizes).
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// Generation: changes when a backing inode number is reused.
    pub generation: u64,
    /// Plaintext size.
    pub size: u64,
    /// 512-byte blocks allocated in the store.
    pub blocks: u64,
    /// Access time.
    pub atime: SystemTime,
    /// Modification time.
    pub mtime: SystemTime,
    /// Change time.
    pub ctime: SystemTime,
    /// Kind.
    pub kind: Kind,
    /// Permission bits (incl. setuid/setgid/sticky).
    pub perm: u16,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number of a device node.
    pub rdev: u32,
}

/// Who is asking (for ownership of new files when running as root).
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Attribute changes of `setattr`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    /// New mode bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New plaintext size.
    pub size: Option<u64>,
    /// New access time (`None` inside: now).
    pub atime: Option<Option<SystemTime>>,
    /// New modification time (`None` inside: now).
    pub mtime: Option<Option<SystemTime>>,
    /// After a size change, clear the set-ID bits as for an unprivileged
    /// caller of this group id (the kernel leaves it to the driver; fs.rs
    /// decides who is unprivileged).
    pub kill_suidgid: Option<u32>,
}

/// `mode` without the bits a write or truncation by a caller without
/// `CAP_FSETID` clears, as the kernel's `setattr_should_drop_suidgid`:
/// set-user-ID always; set-group-ID if the file is group-executable, or
/// else if the caller (primary group `caller_gid`; supplementary groups
/// are not known here, so a member through one loses it too) is not in
/// the file's group. `None`: nothing to clear.
fn without_suidgid(mode: u32, file_gid: u32, caller_gid: u32) -> Option<u32> {
    let mut m = mode & 0o7777;
    m &= !libc::S_ISUID;
    if m & libc::S_ISGID != 0 && (m & libc::S_IXGRP != 0 || caller_gid != file_gid) {
        m &= !libc::S_ISGID;
    }
    (m != mode & 0o7777).then_some(m)
}

/// A directory entry.
#[derive(Clone, Debug)]
pub struct DirEntry {
    /// Inode number (as `stat` would report it).
    pub ino: Ino,
    /// Kind.
    pub kind: Kind,
    /// Plaintext name.
    pub name: OsString,
    /// Attributes when listed (for readdirplus); `None` for `.` and `..`.
    pub attr: Option<Attr>,
    /// Backing name, to register the entry as looked up.
    bname: OsString,
}

/// One name of a node: hard links give a node several.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    parent: Ino,
    /// Backing name in the parent (group name for a group root).
    bname: OsString,
    /// Plaintext name (for log lines).
    pname: OsString,
}

#[derive(Debug)]
struct Node {
    /// Data group this node belongs to ("" for the root).
    group: Arc<str>,
    /// Known names, most recently used first; empty once all are removed.
    links: Vec<Link>,
    lookups: u64,
    generation: u64,
    /// The backing inode was deleted while the kernel still knows this node:
    /// if the backing filesystem reuses the number, it is a new file.
    stale: bool,
    dirid: Option<DirId>,
}

#[derive(Debug, Default)]
struct Inodes {
    nodes: HashMap<Ino, Node>,
}

/// Shared per-file state while any handle is open: the per-file cipher
/// behind the lock that orders writers. A session lock takes the cipher
/// out (and zeroizes it), so handles opened before it fail with EACCES.
#[derive(Debug)]
struct OpenFile {
    cipher: RwLock<Option<FileCipher>>,
}

impl OpenFile {
    fn new(cipher: FileCipher) -> Arc<OpenFile> {
        Arc::new(OpenFile {
            cipher: RwLock::new(Some(cipher)),
        })
    }

    /// Runs `f` with the cipher under the write lock (or the read lock).
    fn with<T>(
        &self,
        exclusive: bool,
        f: impl FnOnce(&FileCipher) -> std::result::Result<T, ContentError>,
    ) -> std::result::Result<T, ContentError> {
        let revoked = || ContentError::Io(io::Error::from_raw_os_error(libc::EACCES));
        if exclusive {
            let g = self.cipher.write().unwrap_or_else(|e| e.into_inner());
            f(g.as_ref().ok_or_else(revoked)?)
        } else {
            let g = self.cipher.read().unwrap_or_else(|e| e.into_inner());
            f(g.as_ref().ok_or_else(revoked)?)
        }
    }

    /// Waits for operations in flight, then drops the cipher.
    fn revoke(&self) {
        self.cipher
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

/// Directory descriptors [`Vfs`] keeps open for walks (the cache is emptied
/// when full).
const DIR_FDS_HELD: usize = 64;
/// Files whose last open is remembered for warm re-reads; all are
/// forgotten when full (the next open of each then reads from the store).
const MAX_STAMPS: usize = 65536;

/// Session state of the engine (see docs/SESSIONS.md).
const OPEN: u8 = 0;
/// Locking: the kernel is writing back dirty pages; only writes through
/// open handles are served.
const LOCKING: u8 = 1;
/// Locked: no keys; every access is EACCES.
const LOCKED: u8 = 2;

#[derive(Debug)]
enum Handle {
    File {
        file: File,
        state: Arc<OpenFile>,
        path: String,
        /// The inode opened (for `fstat` after unlink, which names no handle).
        ino: Ino,
    },
    Dir {
        ino: Ino,
        group: Arc<str>,
        entries: Vec<DirEntry>,
    },
    /// Opened before a session lock: every use is EACCES until closed.
    Revoked,
}

/// The filesystem engine.
pub struct Vfs {
    store: Store,
    /// The store writes content format 2 (`stat` sizes by its layout).
    v2_store: bool,
    /// The driver process's umask: bits it would take from new files'
    /// modes, which the kernel has already masked with the caller's.
    proc_umask: u32,
    groups_dir: PathBuf,
    /// The groups directory, open: every backing call walks from here one
    /// name at a time (see [`at`]).
    groups_fd: Dir,
    /// Open backing directories by inode, so a walk starts at the deepest
    /// one held instead of the groups directory (as gocryptfs's dirCache).
    /// A descriptor follows its directory through renames; entries go when
    /// the directory is removed or forgotten, and all when the cache is full.
    dir_fds: Mutex<HashMap<Ino, Dir>>,
    store_dev: u64,
    keys: RwLock<Arc<Keyring>>,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    open_files: Mutex<HashMap<Ino, Weak<OpenFile>>>,
    /// The backing file as the last open of each file saw it, if its change
    /// time was settled then: an open that finds the same may keep the
    /// kernel's cached pages (warm re-reads); a write through this mount
    /// drops the entry.
    stamps: Mutex<HashMap<Ino, at::Stamp>>,
    next_fh: AtomicU64,
    next_virtual_ino: AtomicU64,
    owner: Caller,
    started: SystemTime,
    as_root: bool,
    /// OPEN, LOCKING or LOCKED.
    state: AtomicU8,
    /// `clock` reading (ms) of the last filesystem request.
    last_request: AtomicU64,
    /// The idle lock's clock.
    clock: Clock,
}

impl std::fmt::Debug for Vfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vfs")
            .field("store", &self.store.root())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock must not take the whole mount down.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn corrupt(path: &str, what: impl Into<String>) -> VfsError {
    let what = what.into();
    tracing::error!(file = %path, "{what}");
    VfsError::Corrupt {
        path: path.to_string(),
        what,
    }
}

fn content_err(path: &str, e: ContentError) -> VfsError {
    match e {
        ContentError::Io(e) => VfsError::Io(e),
        ContentError::Corrupt(what) => corrupt(path, what),
    }
}

impl Vfs {
    /// An engine over `store`, unlocked with `keys`, owned by `owner`.
    pub fn new(store: Store, keys: Keyring, owner: Caller) -> Result<Vfs> {
        let groups_dir = store.root().join(crate::format::manifest::GROUPS_DIR);
        let groups_fd: Dir = Arc::new(at::open_root(&groups_dir)?);
        let store_dev = at::fstat(&*groups_fd)?.dev();
        let mut inodes = Inodes::default();
        inodes.nodes.insert(
            ROOT,
            Node {
                group: Arc::from(""),
                links: Vec::new(),
                lookups: 1,
                generation: 0,
                stale: false,
                dirid: None,
            },
        );
        Ok(Vfs {
            v2_store: store.content_version() != crate::format::content::VERSION_1,
            proc_umask: process_umask(),
            store,
            groups_dir,
            groups_fd,
            dir_fds: Mutex::new(HashMap::new()),
            store_dev,
            keys: RwLock::new(Arc::new(keys)),
            inodes: Mutex::new(inodes),
            handles: Mutex::new(HashMap::new()),
            open_files: Mutex::new(HashMap::new()),
            stamps: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            next_virtual_ino: AtomicU64::new(1 << 62),
            owner,
            started: SystemTime::now(),
            as_root: nix::unistd::geteuid().is_root(),
            state: AtomicU8::new(OPEN),
            last_request: AtomicU64::new(0),
            clock: Clock::system(),
        })
    }

    /// The store this engine serves.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Replaces the session's keys (login, user switch) and opens the
    /// engine. To switch users safely, [`Vfs::begin_lock`] and
    /// [`Vfs::finish_lock`] first (the session module does), so nothing
    /// opened under the old keys survives.
    pub fn set_keyring(&self, keys: Keyring) {
        let mut k = self.keys.write().unwrap_or_else(|e| e.into_inner());
        *k = Arc::new(keys);
        lock(&self.open_files).clear();
        drop(k);
        self.touch();
        self.state.store(OPEN, Ordering::SeqCst);
    }

    /// The current keys (user, rights) — for status reports.
    pub fn keys(&self) -> Arc<Keyring> {
        self.keyring()
    }

    /// First step of a lock: refuse every new access, but keep serving
    /// writes through open handles so the kernel can write back dirty
    /// pages while its caches are invalidated.
    pub fn begin_lock(&self) {
        let _ = self
            .state
            .compare_exchange(OPEN, LOCKING, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Last step of a lock: wait for operations in flight, drop every
    /// per-file cipher and directory listing, wipe the keys.
    pub fn finish_lock(&self) {
        self.state.store(LOCKED, Ordering::SeqCst);
        let handles: Vec<(u64, Arc<Handle>)> = lock(&self.handles)
            .iter()
            .map(|(fh, h)| (*fh, Arc::clone(h)))
            .collect();
        for (fh, h) in handles {
            if let Handle::File { state, .. } = &*h {
                state.revoke();
            }
            if !matches!(&*h, Handle::Revoked) {
                if let Some(slot) = lock(&self.handles).get_mut(&fh) {
                    *slot = Arc::new(Handle::Revoked);
                }
            }
        }
        lock(&self.open_files).clear();
        lock(&self.dir_fds).clear();
        let mut k = self.keys.write().unwrap_or_else(|e| e.into_inner());
        // The old keyring is zeroized when the last in-flight user drops it.
        *k = Arc::new(Keyring::default());
    }

    /// Files and directories the kernel holds open.
    pub fn open_handles(&self) -> usize {
        lock(&self.handles).len()
    }

    /// Whether the engine is locked (or locking).
    pub fn is_locked(&self) -> bool {
        self.state.load(Ordering::SeqCst) != OPEN
    }

    /// The same engine with `clock` for its idle time (unit tests: a
    /// clock that moves only when told).
    #[cfg(test)]
    pub(crate) fn with_clock(mut self, clock: Clock) -> Vfs {
        self.clock = clock;
        self.last_request = AtomicU64::new(self.clock_ms());
        self
    }

    /// The clock the idle time is measured on (a test may move it forward:
    /// see [`Clock::advance`]).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Time since the last filesystem request, on [`Vfs::clock`].
    pub fn idle_for(&self) -> Duration {
        let now = self.clock_ms();
        Duration::from_millis(now.saturating_sub(self.last_request.load(Ordering::Relaxed)))
    }

    fn clock_ms(&self) -> u64 {
        u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_request
            .fetch_max(self.clock_ms(), Ordering::Relaxed);
    }

    /// Every request passes here: it counts as activity and is refused
    /// while locked (`writeback`: a write through an open handle, still
    /// served while locking so dirty pages reach the store).
    fn gate(&self, writeback: bool) -> Result<()> {
        match self.state.load(Ordering::SeqCst) {
            OPEN => {
                self.touch();
                Ok(())
            }
            LOCKING if writeback => Ok(()),
            _ => Err(VfsError::Access(
                "the mount is locked; log in with `tresor login`".into(),
            )),
        }
    }

    /// Inodes the kernel knows (looked up and not forgotten) and the names
    /// it may cache for them: what a lock must invalidate.
    pub fn kernel_known(&self) -> (Vec<Ino>, Vec<(Ino, OsString)>) {
        let inodes = lock(&self.inodes);
        let mut inos = Vec::with_capacity(inodes.nodes.len());
        let mut names = Vec::new();
        for (ino, n) in &inodes.nodes {
            inos.push(*ino);
            for l in &n.links {
                names.push((l.parent, l.pname.clone()));
            }
        }
        (inos, names)
    }

    /// Data groups the current keys open, sorted.
    pub fn groups(&self) -> Vec<String> {
        self.keyring().groups().map(str::to_string).collect()
    }

    fn keyring(&self) -> Arc<Keyring> {
        let k: RwLockReadGuard<'_, Arc<Keyring>> =
            self.keys.read().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&k)
    }

    /// Maps a backing (dev, ino) to our inode number: the backing number
    /// itself on the store's device, except 1 (our root).
    fn ino_for(&self, md: &Meta) -> Ino {
        if md.dev() == self.store_dev && md.ino() != ROOT && md.ino() < (1 << 62) {
            md.ino()
        } else {
            // Rare: a foreign device mounted inside the store. Stable within
            // this mount only.
            self.next_virtual_ino.fetch_add(1, Ordering::Relaxed)
        }
    }

    // ---- paths ----

    /// Backing entry (its name in its open parent directory), data group
    /// and plaintext path of `ino`. The parent is reached from the groups
    /// directory one backing name at a time (`openat`), so no path handed
    /// to the kernel is longer than one name, however deep the tree.
    fn locate(&self, ino: Ino) -> Result<(Loc, Arc<str>, String)> {
        // `chain[k]` is (the directory holding it, backing name) of `ino`
        // (k = 0) and of its ancestors up to its data group's directory.
        let (chain, group, plain) = {
            let inodes = lock(&self.inodes);
            let mut chain: Vec<(Ino, OsString)> = Vec::new();
            let mut pnames: Vec<&OsStr> = Vec::new();
            let mut cur = ino;
            let mut group = None;
            while cur != ROOT {
                let n = inodes.nodes.get(&cur).ok_or(VfsError::NotFound)?;
                // All names removed (unlinked while open): no path any more.
                let l = n.links.first().ok_or(VfsError::NotFound)?;
                chain.push((l.parent, l.bname.clone()));
                pnames.push(&l.pname);
                group.get_or_insert_with(|| Arc::clone(&n.group));
                cur = l.parent;
                if chain.len() > 4096 {
                    return Err(VfsError::Invalid("inode loop"));
                }
            }
            let group = group.ok_or(VfsError::Invalid("root has no backing path"))?;
            let mut plain = String::new();
            for p in pnames.iter().rev() {
                if !plain.is_empty() {
                    plain.push('/');
                }
                plain.push_str(&p.to_string_lossy());
            }
            (chain, group, plain)
        };
        // Start at the nearest directory held open (or the groups
        // directory), then open the rest one name at a time.
        let held = {
            let fds = lock(&self.dir_fds);
            chain.iter().enumerate().find_map(|(k, (d, _))| {
                if *d == ROOT {
                    Some((k, Arc::clone(&self.groups_fd)))
                } else {
                    fds.get(d).map(|fd| (k, Arc::clone(fd)))
                }
            })
        };
        let (start, mut dir) = held.ok_or(VfsError::Invalid("root has no backing path"))?;
        for k in (0..start).rev() {
            dir = Arc::new(at::open_dir(&dir, &chain[k + 1].1).map_err(not_found)?);
            self.hold_dir(chain[k].0, &dir);
        }
        let name = chain[0].1.clone();
        Ok((Loc { dir, name }, group, plain))
    }

    /// Keeps directory `ino`'s descriptor for later walks.
    fn hold_dir(&self, ino: Ino, dir: &Dir) {
        let mut fds = lock(&self.dir_fds);
        if fds.len() >= DIR_FDS_HELD {
            fds.clear();
        }
        fds.insert(ino, Arc::clone(dir));
    }

    /// The open backing directory of directory `ino`, its data group and
    /// plaintext path.
    fn open_dir_of(&self, ino: Ino) -> Result<(Dir, Arc<str>, String)> {
        let (loc, group, plain) = self.locate(ino)?;
        if let Some(d) = lock(&self.dir_fds).get(&ino) {
            return Ok((Arc::clone(d), group, plain));
        }
        let dir = Arc::new(at::open_dir(&loc.dir, &loc.name).map_err(not_found)?);
        self.hold_dir(ino, &dir);
        Ok((dir, group, plain))
    }

    fn group_keys_epoch<'k>(ring: &'k Keyring, group: &str, epoch: u32) -> Result<&'k EpochKey> {
        ring.group(group)
            .ok_or_else(|| VfsError::Access(format!("no key for data group {group}")))?
            .epoch(epoch)
            .ok_or_else(|| {
                VfsError::Access(format!("no key for epoch {epoch} of data group {group}"))
            })
    }

    /// The directory id of directory `ino` (cached).
    fn dirid(&self, ino: Ino, dir: &Dir, plain: &str) -> Result<DirId> {
        if let Some(d) = lock(&self.inodes).nodes.get(&ino).and_then(|n| n.dirid) {
            return Ok(d);
        }
        let bytes = match at::read(dir, OsStr::new(DIRID_FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(corrupt(plain, "directory has no tresor.dirid"))
            }
            Err(e) => return Err(e.into()),
        };
        let d = DirId::decode(&bytes).map_err(|e| corrupt(plain, e.to_string()))?;
        if let Some(n) = lock(&self.inodes).nodes.get_mut(&ino) {
            n.dirid = Some(d);
        }
        Ok(d)
    }

    /// Resolves `name` in directory `parent` to its backing path.
    fn child(&self, parent: Ino, name: &OsStr) -> Result<Child> {
        if !crate::format::names::valid_plain(name.as_bytes()) {
            return Err(if name.len() > crate::format::names::MAX_PLAIN {
                VfsError::NameTooLong
            } else {
                VfsError::Invalid("bad file name")
            });
        }
        if parent == ROOT {
            let g = name.to_str().ok_or(VfsError::NotFound)?;
            let ring = self.keyring();
            if ring.group(g).is_none() && !ring.is_denied(g) {
                return Err(VfsError::NotFound);
            }
            return Ok(Child {
                loc: Loc {
                    dir: Arc::clone(&self.groups_fd),
                    name: name.to_os_string(),
                },
                group: Arc::from(g),
                long: None,
                plain: g.to_string(),
                dir_epoch: 0,
            });
        }
        let (dir, group, plain_dir) = self.open_dir_of(parent)?;
        let dirid = self.dirid(parent, &dir, &plain_dir)?;
        let ring = self.keyring();
        let key = Self::group_keys_epoch(&ring, &group, dirid.epoch)?;
        let encoded = names::encrypt(key.names(), &dirid.id, name.as_bytes());
        let bname = crate::format::names::backing_name(&encoded, crate::crypto::sha256);
        let long = (bname != encoded).then_some(encoded);
        Ok(Child {
            loc: Loc {
                dir,
                name: OsString::from(&bname),
            },
            group,
            long,
            plain: format!("{plain_dir}/{}", name.to_string_lossy()),
            dir_epoch: dirid.epoch,
        })
    }

    // ---- attributes ----

    /// Attributes from backing status `md`; `loc` (absent for an open
    /// handle) lets a symlink's target and an unsettled size be read.
    fn attr_of(&self, md: &Meta, loc: Option<&Loc>, group: &str, plain: &str) -> Result<Attr> {
        let kind = Kind::of(md).ok_or(VfsError::NotSupported)?;
        let size = match (kind, loc) {
            (Kind::File, _) => match (content::size_from_len(md.len(), self.v2_store), loc) {
                (Some(size), _) => size,
                // Not a length at rest: a crash during an update (or
                // tampering). The record tells, and the length is repaired.
                (None, Some(loc)) => self
                    .settled_size(self.ino_for(md), loc, group, plain)
                    .unwrap_or(0),
                (None, None) => 0,
            },
            (Kind::Symlink, Some(loc)) => self
                .read_symlink(loc, group, plain)
                .map(|t| t.len() as u64)
                .unwrap_or(0),
            _ => md.len(),
        };
        let ino = self.ino_for(md);
        let generation = lock(&self.inodes)
            .nodes
            .get(&ino)
            .map(|n| n.generation)
            .unwrap_or(0);
        Ok(Attr {
            ino,
            generation,
            size,
            blocks: md.blocks(),
            atime: md.atime(),
            mtime: md.mtime(),
            ctime: md.ctime(),
            kind,
            perm: self.visible_perm(group, plain, md.mode()),
            nlink: u32::try_from(md.nlink()).unwrap_or(u32::MAX),
            uid: md.uid(),
            gid: md.gid(),
            rdev: u32::try_from(md.rdev()).unwrap_or(0),
        })
    }

    /// Size of a file whose backing length is not at rest, from its
    /// record; sets the length right when the backing file is writable.
    fn settled_size(&self, ino: Ino, loc: &Loc, group: &str, plain: &str) -> Option<u64> {
        let file = at::open_file(&loc.dir, &loc.name, OFlag::O_RDWR, 0)
            .or_else(|_| at::open_file(&loc.dir, &loc.name, OFlag::O_RDONLY, 0))
            .ok()?;
        let state = self.open_state(ino, &file, group, plain).ok()?;
        match state.with(true, |c| content::settle(&file, c)) {
            Ok(size) => Some(size),
            Err(e) => {
                tracing::warn!(file = %plain, "size unknown: {e}");
                None
            }
        }
    }

    /// Size of an open file whose backing length is not at rest.
    fn handle_size(file: &File, state: &OpenFile, attr: &mut Attr) {
        if let Ok(size) = state.with(true, |c| content::settle(file, c)) {
            attr.size = size;
        }
    }

    /// Permission bits as this user sees them: a denied data group's root
    /// is mode 000, a read-only group has no write bits.
    fn visible_perm(&self, group: &str, plain: &str, mode: u32) -> u16 {
        let ring = self.keyring();
        let mut perm = (mode & 0o7777) as u16;
        match ring.group(group) {
            None if ring.is_denied(group) && plain == group => perm = 0,
            Some(g) if !g.writable => perm &= !0o222,
            _ => {}
        }
        perm
    }

    /// Refuses changes to a data group this user may only read.
    fn check_writable(&self, group: &str) -> Result<()> {
        let ring = self.keyring();
        match ring.group(group) {
            Some(g) if g.writable => Ok(()),
            Some(_) => Err(VfsError::ReadOnly),
            None => Err(VfsError::Access(format!("no key for data group {group}"))),
        }
    }

    fn root_attr(&self) -> Attr {
        Attr {
            ino: ROOT,
            generation: 0,
            size: 0,
            blocks: 0,
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            kind: Kind::Dir,
            perm: 0o755,
            nlink: 2,
            uid: self.owner.uid,
            gid: self.owner.gid,
            rdev: 0,
        }
    }

    /// Registers a looked-up entry and returns its attributes.
    fn remember(&self, parent: Ino, c: &Child, md: &Meta) -> Result<Attr> {
        let pname = OsString::from(c.plain.rsplit('/').next().unwrap_or(""));
        self.register(self.ino_for(md), parent, &c.group, &c.loc.name, pname);
        self.attr_of(md, Some(&c.loc), &c.group, &c.plain)
    }

    /// Counts one kernel lookup of `ino` under one of its names; returns
    /// the node's generation.
    fn register(
        &self,
        ino: Ino,
        parent: Ino,
        group: &Arc<str>,
        bname: &OsStr,
        pname: OsString,
    ) -> u64 {
        {
            let mut inodes = lock(&self.inodes);
            let n = inodes.nodes.entry(ino).or_insert_with(|| Node {
                group: Arc::clone(group),
                links: Vec::new(),
                lookups: 0,
                generation: 0,
                stale: false,
                dirid: None,
            });
            if n.stale {
                // A reused backing inode number: tell the kernel it is another file.
                n.stale = false;
                n.generation += 1;
                n.links.clear();
                n.dirid = None;
            }
            let link = Link {
                parent,
                bname: bname.to_os_string(),
                pname,
            };
            n.links.retain(|l| l != &link);
            n.links.insert(0, link);
            n.group = Arc::clone(group);
            n.lookups += 1;
            n.generation
        }
    }

    /// Marks a backing inode as gone: if the backing filesystem reuses its
    /// number, the next node there gets a new generation.
    fn forget_backing(&self, ino: Ino) {
        if let Some(n) = lock(&self.inodes).nodes.get_mut(&ino) {
            n.stale = true;
            n.dirid = None;
        }
        lock(&self.dir_fds).remove(&ino);
    }

    /// Looks up `name` in `parent`.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Attr> {
        self.gate(false)?;
        let c = self.child(parent, name)?;
        let md = match at::stat(&c.loc.dir, &c.loc.name) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(VfsError::NotFound),
            Err(e) => return Err(e.into()),
        };
        self.remember(parent, &c, &md)
    }

    /// Drops `n` lookups of `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut inodes = lock(&self.inodes);
        if let Some(node) = inodes.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 {
                inodes.nodes.remove(&ino);
                lock(&self.dir_fds).remove(&ino);
            }
        }
    }

    /// Attributes of `ino` (from the open handle `fh` if given).
    pub fn getattr(&self, ino: Ino, fh: Option<u64>) -> Result<Attr> {
        // The mount point stays stat-able while locked (and `tresor status`
        // resolving it is no activity).
        if ino == ROOT {
            return Ok(self.root_attr());
        }
        self.gate(false)?;
        if let Some(fh) = fh {
            if let Ok(h) = self.handle(fh) {
                if let Handle::File {
                    file, path, state, ..
                } = &*h
                {
                    // Regular files need no path: works after unlink too.
                    let md = at::fstat(file)?;
                    let mut attr = self.attr_of(&md, None, "", path)?;
                    if content::size_from_len(md.len(), self.v2_store).is_none() {
                        Self::handle_size(file, state, &mut attr);
                    }
                    return Ok(attr);
                }
            }
        }
        let (loc, group, plain) = match self.locate(ino) {
            Ok(l) => l,
            // Every name removed while open: `fstat` asks by inode only (the
            // kernel sends no handle), and an open handle still has the file
            // (nlink 0, as on a local filesystem).
            Err(VfsError::NotFound) => return self.getattr_unlinked(ino),
            Err(e) => return Err(e),
        };
        let md = at::stat(&loc.dir, &loc.name).map_err(not_found)?;
        self.attr_of(&md, Some(&loc), &group, &plain)
    }

    /// Attributes of an unlinked file that is still open.
    fn getattr_unlinked(&self, ino: Ino) -> Result<Attr> {
        let h = lock(&self.handles)
            .values()
            .find(|h| matches!(&***h, Handle::File { ino: i, .. } if *i == ino))
            .cloned()
            .ok_or(VfsError::NotFound)?;
        let Handle::File {
            file, state, path, ..
        } = &*h
        else {
            return Err(VfsError::NotFound);
        };
        let md = at::fstat(file)?;
        let mut attr = self.attr_of(&md, None, "", path)?;
        if content::size_from_len(md.len(), self.v2_store).is_none() {
            Self::handle_size(file, state, &mut attr);
        }
        Ok(attr)
    }

    /// Changes attributes.
    pub fn setattr(&self, ino: Ino, fh: Option<u64>, s: SetAttr) -> Result<Attr> {
        if ino == ROOT {
            return Err(VfsError::Perm);
        }
        self.gate(fh.is_some())?;
        if let Ok((_, group, _)) = self.locate(ino) {
            self.check_writable(&group)?;
        }
        // With an open handle, work on its descriptor: the file may have
        // been unlinked or renamed since it was opened.
        let h = match fh.map(|fh| self.handle(fh)) {
            Some(Err(e @ VfsError::Access(_))) => return Err(e),
            Some(h) => h.ok(),
            None => None,
        };
        if let Some(h) = h {
            if let Handle::File {
                file, state, path, ..
            } = &*h
            {
                if let Some(size) = s.size {
                    self.forget_stamp(ino);
                    state
                        .with(true, |c| content::truncate(file, c, size))
                        .map_err(|e| content_err(path, e))?;
                }
                Self::set_meta(Target::Fd(file), &Self::killing(s, || at::fstat(file))?)?;
                let md = at::fstat(file)?;
                let mut attr = self.attr_of(&md, None, "", path)?;
                if content::size_from_len(md.len(), self.v2_store).is_none() {
                    Self::handle_size(file, state, &mut attr);
                }
                return Ok(attr);
            }
        }
        let (loc, group, plain) = self.locate(ino)?;
        if let Some(size) = s.size {
            self.forget_stamp(ino);
            let file = at::open_file(&loc.dir, &loc.name, OFlag::O_RDWR, 0)?;
            let state = self.open_state(ino, &file, &group, &plain)?;
            state
                .with(true, |c| content::truncate(&file, c, size))
                .map_err(|e| content_err(&plain, e))?;
        }
        Self::set_meta(
            Target::At(&loc),
            &Self::killing(s, || at::stat(&loc.dir, &loc.name))?,
        )?;
        let md = at::stat(&loc.dir, &loc.name)?;
        self.attr_of(&md, Some(&loc), &group, &plain)
    }

    /// `s` with the mode change its `kill_suidgid` asks for, read from the
    /// file as it is now (unless `s` sets a mode itself).
    fn killing(mut s: SetAttr, stat: impl FnOnce() -> io::Result<Meta>) -> Result<SetAttr> {
        if let (Some(caller_gid), None) = (s.kill_suidgid, s.mode) {
            let md = stat()?;
            if md.is_file() {
                s.mode = without_suidgid(md.mode(), md.gid(), caller_gid);
            }
        }
        Ok(s)
    }

    /// Before a write by a caller without `CAP_FSETID` (the kernel says so
    /// with the write), of primary group `caller_gid`: clears the set-ID
    /// bits as [`without_suidgid`] does. `Ok(Some(ino))`: the mode changed.
    pub fn kill_suidgid(&self, fh: u64, caller_gid: u32) -> Result<Option<Ino>> {
        let h = self.handle(fh)?;
        let Handle::File { file, ino, .. } = &*h else {
            return Err(VfsError::BadHandle);
        };
        let md = at::fstat(file)?;
        let Some(m) = without_suidgid(md.mode(), md.gid(), caller_gid) else {
            return Ok(None);
        };
        nix::sys::stat::fchmod(
            file.as_raw_fd(),
            nix::sys::stat::Mode::from_bits_truncate(m),
        )
        .map_err(nix_err)?;
        Ok(Some(*ino))
    }

    /// Mode, owner and times, on a descriptor or a path (never following symlinks).
    fn set_meta(t: Target<'_>, s: &SetAttr) -> Result<()> {
        use nix::sys::stat::{futimens, Mode};
        use nix::sys::time::TimeSpec;
        use nix::unistd::{Gid, Uid};
        if let Some(mode) = s.mode {
            let m = Mode::from_bits_truncate(mode & 0o7777);
            match t {
                Target::Fd(f) => nix::sys::stat::fchmod(f.as_raw_fd(), m).map_err(nix_err)?,
                Target::At(l) => {
                    // Symlinks have no mode of their own on Linux.
                    if !at::stat(&l.dir, &l.name)?.is_symlink() {
                        at::chmod(&l.dir, &l.name, mode & 0o7777)?;
                    }
                }
            }
        }
        if s.uid.is_some() || s.gid.is_some() {
            let (u, g) = (s.uid.map(Uid::from_raw), s.gid.map(Gid::from_raw));
            match t {
                Target::Fd(f) => nix::unistd::fchown(f.as_raw_fd(), u, g).map_err(nix_err)?,
                Target::At(l) => at::chown(&l.dir, &l.name, s.uid, s.gid)?,
            }
        }
        if s.atime.is_some() || s.mtime.is_some() {
            let ts = |t: Option<Option<SystemTime>>| match t {
                None => TimeSpec::UTIME_OMIT,
                Some(None) => TimeSpec::UTIME_NOW,
                Some(Some(t)) => {
                    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
                    TimeSpec::from_duration(d)
                }
            };
            let (a, m) = (ts(s.atime), ts(s.mtime));
            match t {
                Target::Fd(f) => futimens(f.as_raw_fd(), &a, &m).map_err(nix_err)?,
                Target::At(l) => at::utimens(&l.dir, &l.name, &a, &m)?,
            }
        }
        Ok(())
    }

    // ---- symlinks ----

    fn read_symlink(&self, loc: &Loc, group: &str, plain: &str) -> Result<Vec<u8>> {
        let target = at::readlink(&loc.dir, &loc.name)?;
        let raw = crate::format::names::decode(&target.to_string_lossy())
            .ok_or_else(|| corrupt(plain, "symlink target is not base64url"))?;
        let h = FileHeader::decode(&raw).map_err(|e| corrupt(plain, e.to_string()))?;
        let ring = self.keyring();
        let key = Self::group_keys_epoch(&ring, group, h.epoch)?;
        let aead = key.file_cipher(&h.file_id);
        let body = &raw[crate::format::content::HEADER_LEN as usize..];
        aead.open(
            &crate::format::content::block_aad(&h.file_id, 0, true),
            body,
        )
        .map_err(|_| corrupt(plain, "symlink target failed authentication"))
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        self.gate(false)?;
        let (loc, group, plain) = self.locate(ino)?;
        self.read_symlink(&loc, &group, &plain)
    }

    fn new_header(&self, group: &str) -> Result<(FileHeader, Aead)> {
        let ring = self.keyring();
        let gk = ring
            .group(group)
            .ok_or_else(|| VfsError::Access(format!("no key for data group {group}")))?;
        let epoch = gk.current;
        let key = gk
            .current()
            .ok_or_else(|| VfsError::Access(format!("no current key for {group}")))?;
        let mut file_id = [0u8; FILE_ID_LEN];
        crate::crypto::random_bytes(&mut file_id);
        let header = FileHeader::new(self.store.content_version(), epoch, file_id);
        Ok((header, key.file_cipher(&file_id)))
    }

    /// Creates a symlink `name` → `target` in `parent`.
    pub fn symlink(
        &self,
        caller: Caller,
        parent: Ino,
        name: &OsStr,
        target: &[u8],
    ) -> Result<Attr> {
        self.gate(false)?;
        let c = self.child_in_group(parent, name)?;
        let (mut h, aead) = self.new_header(&c.group)?;
        // Symlink targets keep the format-1 header (FORMAT.md §6.5).
        h.version = crate::format::content::VERSION_1;
        let mut raw = h.encode().to_vec();
        raw.extend(aead.seal(
            &crate::format::content::block_aad(&h.file_id, 0, true),
            target,
        ));
        let enc = crate::format::names::encode(&raw);
        if enc.len() > 4095 {
            return Err(VfsError::NameTooLong);
        }
        self.before_create(&c)?;
        at::symlink(OsStr::new(&enc), &c.loc.dir, &c.loc.name)
            .map_err(|e| self.undo_create(&c, e))?;
        self.chown_new(caller, &c.loc)?;
        let md = at::stat(&c.loc.dir, &c.loc.name)?;
        self.remember(parent, &c, &md)
    }

    // ---- creating and removing ----

    /// Resolves a name for a change: refused at the root and in data
    /// groups this user may not write.
    fn child_in_group(&self, parent: Ino, name: &OsStr) -> Result<Child> {
        if parent == ROOT {
            return Err(VfsError::Access(
                "data groups are created with `tresor datagroup add`".into(),
            ));
        }
        let c = self.child(parent, name)?;
        self.check_writable(&c.group)?;
        Ok(c)
    }

    /// Writes a long name's side file before its entry exists.
    fn before_create(&self, c: &Child) -> Result<()> {
        if at::stat(&c.loc.dir, &c.loc.name).is_ok() {
            return Err(VfsError::Exists);
        }
        if let Some(enc) = &c.long {
            at::write_atomic(&c.loc.dir, &side_file(&c.loc.name), enc.as_bytes(), 0o600)?;
        }
        Ok(())
    }

    fn undo_create(&self, c: &Child, e: io::Error) -> VfsError {
        if c.long.is_some() && e.kind() != io::ErrorKind::AlreadyExists {
            let _ = at::unlink(&c.loc.dir, &side_file(&c.loc.name));
        }
        e.into()
    }

    fn chown_new(&self, caller: Caller, loc: &Loc) -> Result<()> {
        // Running as root for other users (--allow-other): new files belong
        // to the caller, as on a local filesystem.
        if self.as_root && caller.uid != 0 {
            at::chown(&loc.dir, &loc.name, Some(caller.uid), Some(caller.gid))?;
        }
        Ok(())
    }

    /// Creates directory `name` in `parent`.
    pub fn mkdir(&self, caller: Caller, parent: Ino, name: &OsStr, mode: u32) -> Result<Attr> {
        self.gate(false)?;
        let c = self.child_in_group(parent, name)?;
        let epoch = self
            .keyring()
            .group(&c.group)
            .map(|g| g.current)
            .ok_or_else(|| VfsError::Access(format!("no key for data group {}", c.group)))?;
        self.before_create(&c)?;
        at::mkdir(&c.loc.dir, &c.loc.name, 0o700).map_err(|e| self.undo_create(&c, e))?;
        let mut id = [0u8; 16];
        crate::crypto::random_bytes(&mut id);
        let dirid = DirId { epoch, id };
        let written = at::open_dir(&c.loc.dir, &c.loc.name).and_then(|d| {
            at::write_new(&d, OsStr::new(DIRID_FILE), &dirid.encode(), 0o444)?;
            at::chmod(&c.loc.dir, &c.loc.name, mode & 0o7777)
        });
        if let Err(e) = written {
            let _ = at::unlink(&c.loc.dir, &c.loc.name);
            let _ = at::rmdir(&c.loc.dir, &c.loc.name);
            return Err(self.undo_create(&c, e));
        }
        self.chown_new(caller, &c.loc)?;
        let md = at::stat(&c.loc.dir, &c.loc.name)?;
        self.remember(parent, &c, &md)
    }

    /// Creates a fifo, socket or (empty) regular file with `mknod`.
    pub fn mknod(
        &self,
        caller: Caller,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<Attr> {
        self.gate(false)?;
        match mode & libc::S_IFMT {
            libc::S_IFREG => {
                let (attr, fh) = self.create(caller, parent, name, mode, libc::O_WRONLY)?;
                self.release(fh);
                Ok(attr)
            }
            // Device nodes are stored as backing device nodes, inert: the
            // mount is `nodev`, and the store's directories are 0700. Making
            // one needs CAP_MKNOD in the driver (EPERM otherwise, as on a
            // local filesystem for an unprivileged user).
            libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK => {
                let c = self.child_in_group(parent, name)?;
                self.before_create(&c)?;
                let kind = nix::sys::stat::SFlag::from_bits_truncate(mode & libc::S_IFMT);
                let perm = mode & 0o7777;
                at::mknod(&c.loc.dir, &c.loc.name, kind, perm, libc::dev_t::from(rdev))
                    .map_err(|e| self.undo_create(&c, e))?;
                if perm & self.proc_umask != 0 {
                    // The driver's own umask must not take bits the caller asked for.
                    at::chmod(&c.loc.dir, &c.loc.name, perm)?;
                }
                self.chown_new(caller, &c.loc)?;
                let md = at::stat(&c.loc.dir, &c.loc.name)?;
                self.remember(parent, &c, &md)
            }
            _ => Err(VfsError::Perm),
        }
    }

    /// Creates and opens a regular file.
    pub fn create(
        &self,
        caller: Caller,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(Attr, u64)> {
        self.gate(false)?;
        let c = self.child_in_group(parent, name)?;
        let (header, aead) = self.new_header(&c.group)?;
        self.before_create(&c)?;
        let cipher = FileCipher::new(header, aead);
        let perm = mode & 0o7777;
        let file = at::create_whole(&c.loc.dir, &c.loc.name, perm, |f| {
            if perm & self.proc_umask != 0 {
                // The driver's own umask must not take bits the caller asked for.
                nix::sys::stat::fchmod(
                    f.as_raw_fd(),
                    nix::sys::stat::Mode::from_bits_truncate(perm),
                )
                .map_err(|e| nix_err(e).into_io())?;
            }
            content::init_empty(f, &cipher).map_err(|e| content_err(&c.plain, e).into_io())
        })
        .map_err(|e| self.undo_create(&c, e))?;
        self.chown_new(caller, &c.loc)?;
        let md = at::fstat(&file)?;
        let attr = self.remember(parent, &c, &md)?;
        let state = OpenFile::new(cipher);
        lock(&self.open_files).insert(attr.ino, Arc::downgrade(&state));
        let _ = flags;
        let fh = self.add_handle(Handle::File {
            file,
            state,
            path: c.plain,
            ino: attr.ino,
        });
        Ok((attr, fh))
    }

    fn remove_side_file(&self, c: &Child) {
        if c.long.is_some() {
            let _ = at::unlink(&c.loc.dir, &side_file(&c.loc.name));
        }
    }

    /// Removes file `name` from `parent`.
    pub fn unlink(&self, parent: Ino, name: &OsStr) -> Result<()> {
        self.gate(false)?;
        let c = self.child_in_group(parent, name)?;
        let md = at::stat(&c.loc.dir, &c.loc.name).map_err(not_found)?;
        if md.is_dir() {
            return Err(VfsError::Io(io::Error::from_raw_os_error(libc::EISDIR)));
        }
        at::unlink(&c.loc.dir, &c.loc.name)?;
        let ino = self.ino_for(&md);
        self.drop_link(ino, parent, &c.loc.name);
        if md.nlink() <= 1 {
            self.forget_backing(ino);
        }
        self.remove_side_file(&c);
        Ok(())
    }

    /// Removes empty directory `name` from `parent`.
    pub fn rmdir(&self, parent: Ino, name: &OsStr) -> Result<()> {
        self.gate(false)?;
        let c = self.child_in_group(parent, name)?;
        let md = at::stat(&c.loc.dir, &c.loc.name).map_err(not_found)?;
        if !md.is_dir() {
            return Err(VfsError::Io(io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        let dir = at::open_dir(&c.loc.dir, &c.loc.name)?;
        if at::list(&dir, None)?.iter().any(|n| n != DIRID_FILE) {
            return Err(VfsError::NotEmpty);
        }
        // As gocryptfs: drop the id file, then the directory; put the id
        // back if the directory turns out not to be removable.
        let ino = self.ino_for(&md);
        let idn = OsStr::new(DIRID_FILE);
        let cached = lock(&self.inodes).nodes.get(&ino).and_then(|n| n.dirid);
        let saved = match cached {
            Some(d) => Some(d),
            None => at::read(&dir, idn)
                .ok()
                .and_then(|b| DirId::decode(&b).ok()),
        };
        let _ = at::unlink(&dir, idn);
        if let Err(e) = at::rmdir(&c.loc.dir, &c.loc.name) {
            if let Some(d) = saved {
                let _ = at::write_new(&dir, idn, &d.encode(), 0o444);
            }
            return Err(e.into());
        }
        self.drop_link(ino, parent, &c.loc.name);
        self.forget_backing(ino);
        self.remove_side_file(&c);
        Ok(())
    }

    /// Forgets one name of a node (after unlink, rmdir or rename-over).
    fn drop_link(&self, ino: Ino, parent: Ino, bname: &OsStr) {
        if let Some(n) = lock(&self.inodes).nodes.get_mut(&ino) {
            n.links
                .retain(|l| !(l.parent == parent && l.bname == bname));
        }
    }

    /// Renames `name` in `parent` to `newname` in `newparent`.
    pub fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        self.gate(false)?;
        let src = self.child_in_group(parent, name)?;
        let dst = self.child_in_group(newparent, newname)?;
        if src.group != dst.group {
            return Err(VfsError::CrossDevice);
        }
        let src_md = at::stat(&src.loc.dir, &src.loc.name).map_err(not_found)?;
        let dst_md = at::stat(&dst.loc.dir, &dst.loc.name).ok();
        if flags & libc::RENAME_EXCHANGE != 0 {
            return Err(VfsError::Invalid("RENAME_EXCHANGE is not supported"));
        }
        if flags & libc::RENAME_NOREPLACE != 0 && dst_md.is_some() {
            return Err(VfsError::Exists);
        }
        if flags & !(libc::RENAME_NOREPLACE) != 0 {
            return Err(VfsError::Invalid("unsupported rename flags"));
        }
        if let Some(d) = &dst_md {
            if d.is_dir() {
                if !src_md.is_dir() {
                    return Err(VfsError::Io(io::Error::from_raw_os_error(libc::EISDIR)));
                }
                // rename(2) replaces only an empty directory; ours holds its id file.
                let d = at::open_dir(&dst.loc.dir, &dst.loc.name)?;
                if at::list(&d, None)?.iter().any(|n| n != DIRID_FILE) {
                    return Err(VfsError::NotEmpty);
                }
                at::unlink(&d, OsStr::new(DIRID_FILE))?;
            } else if src_md.is_dir() {
                return Err(VfsError::Io(io::Error::from_raw_os_error(libc::ENOTDIR)));
            }
        }
        if let Some(enc) = &dst.long {
            at::write_atomic(
                &dst.loc.dir,
                &side_file(&dst.loc.name),
                enc.as_bytes(),
                0o600,
            )?;
        }
        at::rename(&src.loc, &dst.loc)?;
        if let Some(d) = &dst_md {
            let replaced = self.ino_for(d);
            self.drop_link(replaced, newparent, &dst.loc.name);
            if d.is_dir() || d.nlink() <= 1 {
                self.forget_backing(replaced);
            }
        }
        if src.long.is_some() && (parent != newparent || src.loc.name != dst.loc.name) {
            let _ = at::unlink(&src.loc.dir, &side_file(&src.loc.name));
        }
        let moved = self.ino_for(&src_md);
        let mut inodes = lock(&self.inodes);
        if let Some(n) = inodes.nodes.get_mut(&moved) {
            n.links
                .retain(|l| !(l.parent == parent && l.bname == src.loc.name));
            n.links.insert(
                0,
                Link {
                    parent: newparent,
                    bname: dst.loc.name.clone(),
                    pname: newname.to_os_string(),
                },
            );
        }
        Ok(())
    }

    /// Creates a hard link to `ino` named `newname` in `newparent`.
    pub fn link(&self, ino: Ino, newparent: Ino, newname: &OsStr) -> Result<Attr> {
        self.gate(false)?;
        let (loc, group, _) = self.locate(ino)?;
        let dst = self.child_in_group(newparent, newname)?;
        if dst.group != group {
            return Err(VfsError::CrossDevice);
        }
        self.before_create(&dst)?;
        at::link(&loc, &dst.loc).map_err(|e| self.undo_create(&dst, e))?;
        let md = at::stat(&dst.loc.dir, &dst.loc.name)?;
        // The kernel counts the reply as a lookup of the new name.
        self.remember(newparent, &dst, &md)
    }

    // ---- files ----

    fn handle(&self, fh: u64) -> Result<Arc<Handle>> {
        let h = lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or(VfsError::BadHandle)?;
        if let Handle::Revoked = &*h {
            return Err(VfsError::Access(
                "opened before the mount was locked; close and open it again".into(),
            ));
        }
        Ok(h)
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Arc::new(h));
        fh
    }

    /// The shared state of file `ino`, reading its header through `file`.
    fn open_state(&self, ino: Ino, file: &File, group: &str, plain: &str) -> Result<Arc<OpenFile>> {
        let mut map = lock(&self.open_files);
        if let Some(s) = map.get(&ino).and_then(Weak::upgrade) {
            return Ok(s);
        }
        let header = content::read_header(file).map_err(|e| content_err(plain, e))?;
        let ring = self.keyring();
        let key = Self::group_keys_epoch(&ring, group, header.epoch)?;
        let state = OpenFile::new(FileCipher::new(header, key.file_cipher(&header.file_id)));
        map.insert(ino, Arc::downgrade(&state));
        map.retain(|_, w| w.strong_count() > 0);
        Ok(state)
    }

    /// Opens file `ino`; returns a handle, and whether the kernel's cached
    /// pages of the file are still its contents (nothing changed it since
    /// the last open through this mount saw it settled).
    pub fn open(&self, ino: Ino, flags: i32) -> Result<(u64, bool)> {
        self.gate(false)?;
        let (loc, group, plain) = self.locate(ino)?;
        let acc = flags & libc::O_ACCMODE;
        if acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            self.check_writable(&group)?;
        }
        // Writes need to read partial blocks, so writers get read access
        // too. Never through a symlink (the kernel resolves those itself).
        let mode = if acc == libc::O_RDONLY {
            OFlag::O_RDONLY
        } else {
            OFlag::O_RDWR
        };
        let file = at::open_file(&loc.dir, &loc.name, mode, 0).map_err(not_found)?;
        let md = at::fstat(&file)?;
        if !md.is_file() {
            return Err(VfsError::Invalid("not a regular file"));
        }
        let state = self.open_state(ino, &file, &group, &plain)?;
        let keep = if flags & libc::O_TRUNC != 0 && acc != libc::O_RDONLY {
            self.forget_stamp(ino);
            state
                .with(true, |c| content::truncate(&file, c, 0))
                .map_err(|e| content_err(&plain, e))?;
            false
        } else {
            self.check_stamp(ino, md.stamp())
        };
        let fh = self.add_handle(Handle::File {
            file,
            state,
            path: plain,
            ino,
        });
        Ok((fh, keep))
    }

    /// Whether `stamp` is what the last open of `ino` saw; keeps it for the
    /// next open if it is settled.
    fn check_stamp(&self, ino: Ino, stamp: at::Stamp) -> bool {
        let mut stamps = lock(&self.stamps);
        let keep = stamps.get(&ino) == Some(&stamp);
        if stamp.settled(SystemTime::now()) {
            if stamps.len() >= MAX_STAMPS {
                stamps.clear();
            }
            stamps.insert(ino, stamp);
        } else {
            stamps.remove(&ino);
        }
        keep
    }

    /// This mount changes `ino`: its next open drops the cached pages.
    fn forget_stamp(&self, ino: Ino) {
        lock(&self.stamps).remove(&ino);
    }

    /// Checks `access(2)` rights (`mask` of R_OK/W_OK/X_OK) of the mounting
    /// user on the backing object, which carries the same mode and owner.
    pub fn access(&self, ino: Ino, mask: i32) -> Result<()> {
        if ino == ROOT {
            return Ok(());
        }
        self.gate(false)?;
        let (loc, _, _) = self.locate(ino)?;
        Ok(at::access(&loc.dir, &loc.name, mask)?)
    }

    /// Runs `f` on an open file under its lock (shared for readers,
    /// exclusive for writers); content errors name the file.
    fn with_file<T>(
        &self,
        fh: u64,
        exclusive: bool,
        f: impl FnOnce(&File, &FileCipher) -> std::result::Result<T, ContentError>,
    ) -> Result<T> {
        let h = self.handle(fh)?;
        let Handle::File {
            file,
            state,
            path,
            ino,
        } = &*h
        else {
            return Err(VfsError::BadHandle);
        };
        if exclusive {
            self.forget_stamp(*ino);
        }
        state
            .with(exclusive, |c| f(file, c))
            .map_err(|e| content_err(path, e))
    }

    /// Reads up to `size` bytes at `offset`.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        self.gate(false)?;
        self.with_file(fh, false, |file, c| {
            content::read_at(file, c, offset, size as usize)
        })
    }

    /// Writes `data` at `offset`; returns the count written.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        self.gate(true)?;
        self.with_file(fh, true, |file, c| content::write_at(file, c, offset, data))?;
        Ok(u32::try_from(data.len()).unwrap_or(u32::MAX))
    }

    /// Writes `data` at the end of the file as it is in the store now (an
    /// `O_APPEND` write: the offset the kernel computed from its cached
    /// size is stale if another mount appended meanwhile); returns the
    /// count written.
    pub fn append(&self, fh: u64, data: &[u8]) -> Result<u32> {
        self.gate(true)?;
        self.with_file(fh, true, |file, c| content::append(file, c, data))?;
        Ok(u32::try_from(data.len()).unwrap_or(u32::MAX))
    }

    /// Extends the file to cover `[offset, offset + len)` and reserves the
    /// store's space for it (fallocate mode 0).
    pub fn allocate(&self, fh: u64, offset: u64, len: u64) -> Result<()> {
        self.gate(true)?;
        self.with_file(fh, true, |file, c| content::allocate(file, c, offset, len))
    }

    /// `SEEK_DATA` (`data`) or `SEEK_HOLE` from `offset`.
    pub fn seek_data_hole(&self, fh: u64, offset: u64, data: bool) -> Result<u64> {
        self.gate(false)?;
        self.with_file(fh, false, |file, c| content::seek(file, c, offset, data))
    }

    /// Flushes file data (and metadata unless `datasync`) to stable storage.
    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        self.gate(true)?;
        let h = self.handle(fh)?;
        match &*h {
            // The record's other slot is an update (exclusive); the backing
            // fsync after it need not hold readers up.
            Handle::File {
                file, state, path, ..
            } => state
                .with(true, |c| content::prepare_sync(file, c))
                .and_then(|()| state.with(false, |_| content::sync_backing(file, datasync)))
                .map_err(|e| content_err(path, e)),
            Handle::Dir { .. } | Handle::Revoked => Ok(()),
        }
    }

    /// Closes a handle.
    pub fn release(&self, fh: u64) {
        lock(&self.handles).remove(&fh);
    }

    // ---- directories ----

    /// Lists directory `ino`; the listing is kept with the returned handle.
    pub fn opendir(&self, ino: Ino) -> Result<u64> {
        self.gate(false)?;
        let (group, entries) = self.list(ino)?;
        Ok(self.add_handle(Handle::Dir {
            ino,
            group,
            entries,
        }))
    }

    /// Entries of an open directory from position `offset`.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<(u64, DirEntry)>> {
        self.gate(false)?;
        let h = self.handle(fh)?;
        let Handle::Dir { entries, .. } = &*h else {
            return Err(VfsError::BadHandle);
        };
        Ok(entries
            .iter()
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .map(|(i, e)| (i as u64 + 1, e.clone()))
            .collect())
    }

    /// Counts the kernel's implicit lookup of entry `index` of an open
    /// directory that readdirplus returned; returns its attributes with the
    /// current generation (`None` for `.` and `..`, which are not counted).
    pub fn readdirplus_entry(&self, fh: u64, index: u64) -> Option<Attr> {
        let h = self.handle(fh).ok()?;
        let Handle::Dir {
            ino,
            group,
            entries,
        } = &*h
        else {
            return None;
        };
        let e = entries.get(usize::try_from(index).ok()?)?;
        let mut attr = e.attr?;
        let group = if *ino == ROOT {
            Arc::from(e.name.to_string_lossy().as_ref())
        } else {
            Arc::clone(group)
        };
        attr.generation = self.register(attr.ino, *ino, &group, &e.bname, e.name.clone());
        Some(attr)
    }

    fn list(&self, ino: Ino) -> Result<(Arc<str>, Vec<DirEntry>)> {
        let dot = |ino, name: &str| DirEntry {
            ino,
            kind: Kind::Dir,
            name: OsString::from(name),
            attr: None,
            bname: OsString::new(),
        };
        if ino == ROOT {
            let mut out = vec![dot(ROOT, "."), dot(ROOT, "..")];
            let ring = self.keyring();
            let mut all: Vec<&str> = ring.groups().chain(ring.denied()).collect();
            all.sort_unstable();
            for g in all {
                let loc = Loc {
                    dir: Arc::clone(&self.groups_fd),
                    name: OsString::from(g),
                };
                match at::stat(&loc.dir, &loc.name) {
                    Ok(md) => out.push(DirEntry {
                        ino: self.ino_for(&md),
                        kind: Kind::Dir,
                        name: OsString::from(g),
                        attr: self.attr_of(&md, Some(&loc), g, g).ok(),
                        bname: OsString::from(g),
                    }),
                    Err(e) => tracing::warn!(group = g, "data group directory missing: {e}"),
                }
            }
            return Ok((Arc::from(""), out));
        }
        let (dir, group, plain_dir) = self.open_dir_of(ino)?;
        let dirid = self.dirid(ino, &dir, &plain_dir)?;
        let ring = self.keyring();
        let key = Self::group_keys_epoch(&ring, &group, dirid.epoch)?;
        let parent = lock(&self.inodes)
            .nodes
            .get(&ino)
            .and_then(|n| n.links.first().map(|l| l.parent))
            .unwrap_or(ROOT);
        let mut out = vec![dot(ino, "."), dot(parent, "..")];
        for bname in at::list(&dir, None)? {
            let Some(bs) = bname.to_str() else { continue };
            let encoded = match crate::format::names::classify(bs) {
                Entry::Internal => continue,
                Entry::Short(s) => s.to_string(),
                Entry::Long(_) => match at::read(&dir, &side_file(&bname)).and_then(|b| {
                    String::from_utf8(b).map_err(|_| io::ErrorKind::InvalidData.into())
                }) {
                    // The hashed name authenticates its side file's content.
                    Ok(s)
                        if crate::format::names::backing_name(&s, crate::crypto::sha256) == bs =>
                    {
                        s
                    }
                    Ok(_) => {
                        tracing::warn!(dir = %plain_dir, entry = bs, "long name does not match its .name file; hidden");
                        continue;
                    }
                    Err(_) => {
                        tracing::warn!(dir = %plain_dir, "long name without its .name file; skipped");
                        continue;
                    }
                },
            };
            let Some(name) = names::decrypt(key.names(), &dirid.id, &encoded) else {
                tracing::warn!(dir = %plain_dir, entry = bs, "entry name failed authentication (moved from another directory or tampered); hidden");
                continue;
            };
            let Ok(md) = at::stat(&dir, &bname) else {
                continue;
            };
            let Some(kind) = Kind::of(&md) else {
                continue;
            };
            let name = OsString::from_vec(name);
            let plain = format!("{plain_dir}/{}", name.to_string_lossy());
            let loc = Loc {
                dir: Arc::clone(&dir),
                name: bname,
            };
            out.push(DirEntry {
                ino: self.ino_for(&md),
                kind,
                attr: self.attr_of(&md, Some(&loc), &group, &plain).ok(),
                name,
                bname: loc.name,
            });
        }
        Ok((group, out))
    }

    // ---- filesystem ----

    /// Filesystem statistics of the backing store:
    /// (blocks, bfree, bavail, files, ffree, bsize, namelen, frsize).
    pub fn statfs(&self) -> Result<[u64; 8]> {
        let s = nix::sys::statvfs::statvfs(&self.groups_dir).map_err(nix_err)?;
        Ok([
            s.blocks(),
            s.blocks_free(),
            s.blocks_available(),
            s.files(),
            s.files_free(),
            s.block_size(),
            crate::format::names::MAX_PLAIN as u64,
            s.fragment_size(),
        ])
    }

    // ---- extended attributes ----

    fn xattr_key(&self, ino: Ino) -> Result<(ProcPath, String, Arc<Keyring>, Arc<str>)> {
        if ino == ROOT {
            return Err(VfsError::NotSupported);
        }
        let (loc, group, plain) = self.locate(ino)?;
        let path = ProcPath {
            path: at::proc_path(&loc.dir, &loc.name)?,
            _dir: loc.dir,
        };
        Ok((path, plain, self.keyring(), group))
    }

    /// Sets user.* attribute `name`.
    pub fn setxattr(&self, ino: Ino, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        self.gate(false)?;
        let user = user_attr(name)?;
        let (pp, _, ring, group) = self.xattr_key(ino)?;
        let path = &pp.path;
        self.check_writable(&group)?;
        let gk = ring
            .group(&group)
            .ok_or_else(|| VfsError::Access(format!("no key for data group {group}")))?;
        let current = gk
            .current()
            .ok_or_else(|| VfsError::Access(format!("no current key for {group}")))?;
        let existing: Vec<String> = gk
            .by_preference()
            .map(|k| names::xattr_name(k.names(), user))
            .filter(|b| matches!(xattr::get(path, b), Ok(Some(_))))
            .collect();
        if flags & libc::XATTR_CREATE != 0 && !existing.is_empty() {
            return Err(VfsError::Exists);
        }
        if flags & libc::XATTR_REPLACE != 0 && existing.is_empty() {
            return Err(VfsError::NoAttr);
        }
        let bname = names::xattr_name(current.names(), user);
        let sealed = current.names().seal(bname.as_bytes(), value);
        xattr::set(path, &bname, &sealed)?;
        // Drop copies under older epochs, so they cannot resurface.
        for old in existing.iter().filter(|b| **b != bname) {
            let _ = xattr::remove(path, old);
        }
        Ok(())
    }

    /// Reads user.* attribute `name`.
    pub fn getxattr(&self, ino: Ino, name: &OsStr) -> Result<Vec<u8>> {
        self.gate(false)?;
        let user = user_attr(name).map_err(|_| VfsError::NoAttr)?;
        let (pp, plain, ring, group) = self.xattr_key(ino)?;
        let path = &pp.path;
        let gk = ring
            .group(&group)
            .ok_or_else(|| VfsError::Access(format!("no key for data group {group}")))?;
        // Attributes written before a key rotation (and not yet rekeyed)
        // are under an older epoch's name key.
        for key in gk.by_preference() {
            let bname = names::xattr_name(key.names(), user);
            if let Some(sealed) = xattr::get(path, &bname)? {
                return key.names().open(bname.as_bytes(), &sealed).map_err(|_| {
                    corrupt(
                        &plain,
                        format!(
                            "extended attribute {} failed authentication",
                            name.to_string_lossy()
                        ),
                    )
                });
            }
        }
        Err(VfsError::NoAttr)
    }

    /// Lists attribute names.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<OsString>> {
        self.gate(false)?;
        if ino == ROOT {
            return Ok(Vec::new());
        }
        let (pp, _, ring, group) = self.xattr_key(ino)?;
        let path = &pp.path;
        let Some(gk) = ring.group(&group) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for n in xattr::list(path)? {
            if let Some(plain) = gk
                .by_preference()
                .find_map(|k| names::xattr_plain(k.names(), &n))
            {
                let mut full = OsString::from("user.");
                full.push(OsStr::from_bytes(&plain));
                out.push(full);
            }
        }
        Ok(out)
    }

    /// Removes user.* attribute `name`.
    pub fn removexattr(&self, ino: Ino, name: &OsStr) -> Result<()> {
        self.gate(false)?;
        let user = user_attr(name).map_err(|_| VfsError::NoAttr)?;
        let (pp, _, ring, group) = self.xattr_key(ino)?;
        let path = &pp.path;
        self.check_writable(&group)?;
        let gk = ring
            .group(&group)
            .ok_or_else(|| VfsError::Access(format!("no key for data group {group}")))?;
        // Under every epoch held: an older copy must not resurface.
        let mut removed = false;
        for key in gk.by_preference() {
            match xattr::remove(path, &names::xattr_name(key.names(), user)) {
                Ok(()) => removed = true,
                Err(VfsError::NoAttr) => {}
                Err(e) => return Err(e),
            }
        }
        if removed {
            Ok(())
        } else {
            Err(VfsError::NoAttr)
        }
    }
}

use crate::crypto::Aead;

/// Where `set_meta` applies changes.
#[derive(Clone, Copy)]
enum Target<'a> {
    Fd(&'a File),
    At(&'a Loc),
}

/// A path naming a backing entry through `/proc/self/fd/N/NAME` (for the
/// extended-attribute calls, which have no `*at` form): valid while this
/// value holds directory N open.
struct ProcPath {
    path: PathBuf,
    _dir: Dir,
}

/// A resolved child entry.
#[derive(Debug)]
struct Child {
    /// Its backing name in its open parent directory.
    loc: Loc,
    group: Arc<str>,
    /// Full encoding, when the backing name is a hashed long name.
    long: Option<String>,
    plain: String,
    #[allow(dead_code)]
    dir_epoch: u32,
}

/// The process's umask, from /proc (reading it with umask(2) would change
/// it for a moment under other threads); 022 if unknown.
fn process_umask() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// The side file holding long name `bname`'s full encoding.
fn side_file(bname: &OsStr) -> OsString {
    let mut s = bname.to_os_string();
    s.push(crate::format::names::LONG_SUFFIX);
    s
}

fn not_found(e: io::Error) -> VfsError {
    if e.kind() == io::ErrorKind::NotFound {
        VfsError::NotFound
    } else {
        VfsError::Io(e)
    }
}

fn nix_err(e: nix::Error) -> VfsError {
    VfsError::Io(io::Error::from_raw_os_error(e as i32))
}

trait IntoIo {
    fn into_io(self) -> io::Error;
}

impl IntoIo for VfsError {
    fn into_io(self) -> io::Error {
        match self {
            VfsError::Io(e) => e,
            other => io::Error::from_raw_os_error(other.errno()),
        }
    }
}

/// Only `user.*` attributes are stored (encrypted); others are refused.
fn user_attr(name: &OsStr) -> Result<&[u8]> {
    name.as_bytes()
        .strip_prefix(b"user.")
        .filter(|r| !r.is_empty())
        .ok_or(VfsError::NotSupported)
}

/// Extended attributes of backing paths (never following symlinks).
mod xattr {
    use super::{Result, VfsError};
    use std::path::Path;

    pub(super) fn get(path: &Path, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(::xattr::get(path, name)?)
    }

    pub(super) fn set(path: &Path, name: &str, value: &[u8]) -> Result<()> {
        Ok(::xattr::set(path, name, value)?)
    }

    pub(super) fn remove(path: &Path, name: &str) -> Result<()> {
        ::xattr::remove(path, name).map_err(|e| match e.raw_os_error() {
            Some(libc::ENODATA) => VfsError::NoAttr,
            _ => e.into(),
        })
    }

    pub(super) fn list(path: &Path) -> Result<Vec<String>> {
        match ::xattr::list(path) {
            Ok(it) => Ok(it.filter_map(|n| n.into_string().ok()).collect()),
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KdfParams;
    use crate::pse::Pse;
    use std::path::Path;

    #[test]
    fn set_id_bits_cleared_as_the_kernel_does() {
        // Set-user-ID always; set-group-ID with group-execute, or for a
        // caller outside the file's group; nothing else changes.
        assert_eq!(without_suidgid(0o104755, 10, 10), Some(0o755));
        assert_eq!(without_suidgid(0o102775, 10, 10), Some(0o775));
        assert_eq!(without_suidgid(0o102765, 10, 10), None);
        assert_eq!(without_suidgid(0o102765, 10, 20), Some(0o765));
        assert_eq!(without_suidgid(0o106745, 10, 10), Some(0o2745));
        assert_eq!(without_suidgid(0o101777, 10, 20), None);
        assert_eq!(without_suidgid(0o100644, 10, 20), None);
    }

    fn engine(dir: &Path) -> (Vfs, Store, Pse) {
        let admin = Pse::generate("admin", None).unwrap();
        let root = dir.join("store");
        let s = Store::create(&root, &admin, KdfParams::DEFAULT).unwrap();
        crate::admin::Admin::open(&s, &admin)
            .unwrap()
            .add_group("g")
            .unwrap();
        let ring = s.unlock(&admin).unwrap();
        let me = Caller { uid: 0, gid: 0 };
        let vfs = Vfs::new(Store::open(&root).unwrap(), ring, me).unwrap();
        (vfs, s, admin)
    }

    fn eacces<T: std::fmt::Debug>(r: Result<T>) {
        match r {
            Err(e) => assert_eq!(e.errno(), libc::EACCES, "{e}"),
            Ok(v) => panic!("served while locked: {v:?}"),
        }
    }

    #[test]
    fn a_lock_serves_only_writeback_then_nothing_and_revokes_old_handles() {
        let dir = tempfile::tempdir().unwrap();
        let (vfs, s, admin) = engine(dir.path());
        let g = vfs.lookup(ROOT, OsStr::new("g")).unwrap();
        let me = Caller { uid: 0, gid: 0 };
        let (f, fh) = vfs
            .create(me, g.ino, OsStr::new("f"), 0o600, libc::O_RDWR)
            .unwrap();
        vfs.write(fh, 0, b"secret").unwrap();
        assert!(!vfs.is_locked());

        vfs.begin_lock();
        assert!(vfs.is_locked());
        // Locking: the kernel's write-back still lands, nothing is read.
        vfs.write(fh, 6, b" more").unwrap();
        eacces(vfs.read(fh, 0, 100));
        eacces(vfs.lookup(ROOT, OsStr::new("g")));
        eacces(vfs.opendir(ROOT));
        eacces(vfs.getattr(f.ino, None));
        // The mount point still stats.
        vfs.getattr(ROOT, None).unwrap();

        vfs.finish_lock();
        eacces(vfs.write(fh, 0, b"x"));
        eacces(vfs.read(fh, 0, 100));
        assert!(vfs.groups().is_empty(), "keys wiped");

        // A new login: the old handle stays revoked, a new one reads
        // what was written back while locking.
        vfs.set_keyring(s.unlock(&admin).unwrap());
        eacces(vfs.read(fh, 0, 100));
        let (fh2, _) = vfs.open(f.ino, libc::O_RDONLY).unwrap();
        assert_eq!(vfs.read(fh2, 0, 100).unwrap(), b"secret more");
        vfs.release(fh);
        vfs.release(fh2);
    }

    #[test]
    fn requests_count_as_activity_a_stat_of_the_root_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let (vfs, _, _) = engine(dir.path());
        // A clock that moves only when told: idle times are exact.
        let vfs = vfs.with_clock(Clock::manual());
        let minute = Duration::from_secs(60);
        assert_eq!(vfs.idle_for(), Duration::ZERO);
        vfs.clock().advance(minute);
        assert_eq!(vfs.idle_for(), minute);
        vfs.getattr(ROOT, None).unwrap();
        assert_eq!(vfs.idle_for(), minute, "stat of the root is no activity");
        vfs.lookup(ROOT, OsStr::new("g")).unwrap();
        assert_eq!(vfs.idle_for(), Duration::ZERO, "a lookup is activity");
        vfs.clock().advance(minute);
        let g = vfs.lookup(ROOT, OsStr::new("g")).unwrap();
        vfs.clock().advance(minute);
        vfs.forget(g.ino, 1);
        assert_eq!(vfs.idle_for(), minute, "forget is no activity");
        // Locked: requests are refused and do not count either.
        vfs.begin_lock();
        vfs.finish_lock();
        assert!(vfs.lookup(ROOT, OsStr::new("g")).is_err());
        assert_eq!(vfs.idle_for(), minute, "a refused request is no activity");
    }
}
