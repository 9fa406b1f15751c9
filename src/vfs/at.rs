//! Backing-store calls relative to open directory descriptors (the `*at`
//! system calls), as gocryptfs makes them: no path handed to the kernel is
//! longer than one backing name, so any plaintext path the kernel accepts
//! (up to 4,095 bytes, whose encrypted names are longer) works, and no call
//! pays for a walk of the whole absolute backing path.
//!
//! Every name passed here is one component (no `/`); symlinks are never
//! followed.

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// An open backing directory (`O_PATH`): the base of `*at` calls. Shared,
/// so a resolved entry can outlive the walk that found it.
pub(crate) type Dir = Arc<OwnedFd>;

/// One backing entry: a name in an open directory.
#[derive(Debug, Clone)]
pub(crate) struct Loc {
    /// The directory holding the entry.
    pub dir: Dir,
    /// The entry's backing name (one component).
    pub name: OsString,
}

fn err(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn at(d: &OwnedFd) -> Option<RawFd> {
    Some(d.as_raw_fd())
}

/// Refuses anything but one path component: a backing name never holds a
/// `/`, and `.`/`..`/empty would leave the directory.
fn one(name: &OsStr) -> io::Result<&OsStr> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(name)
}

/// `openat(dir, name, flags, mode)` with `O_CLOEXEC | O_NOFOLLOW`.
fn openat(dir: &OwnedFd, name: &OsStr, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::openat(
        at(dir),
        one(name)?,
        flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::from_bits_truncate(mode),
    )
    .map_err(err)?;
    // SAFETY: `openat` just returned `fd`, open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens directory `path` (absolute, short: the store's groups directory)
/// as the root of walks.
pub(crate) fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)?;
    // SAFETY: `open` just returned `fd`, open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens subdirectory `name` of `dir` as the base of further calls (never
/// through a symlink).
pub(crate) fn open_dir(dir: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    openat(dir, name, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
}

/// Opens file `name` of `dir` (`flags` as for open(2); never a symlink).
pub(crate) fn open_file(dir: &OwnedFd, name: &OsStr, flags: OFlag, mode: u32) -> io::Result<File> {
    Ok(File::from(openat(dir, name, flags, mode)?))
}

/// Status of a backing object (`lstat`-like: symlinks are not followed).
#[derive(Clone, Copy)]
pub(crate) struct Meta(FileStat);

impl std::fmt::Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meta")
            .field("ino", &self.0.st_ino)
            .field("mode", &format_args!("{:o}", self.0.st_mode))
            .finish()
    }
}

fn time(secs: i64, nsec: i64) -> SystemTime {
    let nsec = u32::try_from(nsec).unwrap_or(0);
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nsec)
    } else {
        (SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()))
            + Duration::from_nanos(u64::from(nsec))
    }
}

impl Meta {
    pub fn dev(&self) -> u64 {
        self.0.st_dev
    }
    pub fn ino(&self) -> u64 {
        self.0.st_ino
    }
    pub fn mode(&self) -> u32 {
        self.0.st_mode
    }
    pub fn nlink(&self) -> u64 {
        self.0.st_nlink
    }
    pub fn uid(&self) -> u32 {
        self.0.st_uid
    }
    pub fn gid(&self) -> u32 {
        self.0.st_gid
    }
    pub fn rdev(&self) -> u64 {
        self.0.st_rdev
    }
    pub fn len(&self) -> u64 {
        u64::try_from(self.0.st_size).unwrap_or(0)
    }
    pub fn blocks(&self) -> u64 {
        u64::try_from(self.0.st_blocks).unwrap_or(0)
    }
    pub fn is_dir(&self) -> bool {
        self.0.st_mode & libc::S_IFMT == libc::S_IFDIR
    }
    pub fn is_file(&self) -> bool {
        self.0.st_mode & libc::S_IFMT == libc::S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.0.st_mode & libc::S_IFMT == libc::S_IFLNK
    }
    pub fn atime(&self) -> SystemTime {
        time(self.0.st_atime, self.0.st_atime_nsec)
    }
    pub fn mtime(&self) -> SystemTime {
        time(self.0.st_mtime, self.0.st_mtime_nsec)
    }
    pub fn ctime(&self) -> SystemTime {
        time(self.0.st_ctime, self.0.st_ctime_nsec)
    }
    /// What identifies these contents of a file: any change of them moves
    /// the change time (or replaces the inode).
    pub fn stamp(&self) -> Stamp {
        Stamp {
            dev: self.0.st_dev,
            ino: self.0.st_ino,
            size: self.0.st_size,
            mtime: (self.0.st_mtime, self.0.st_mtime_nsec),
            ctime: (self.0.st_ctime, self.0.st_ctime_nsec),
        }
    }
}

/// A backing file's identity and change times at one moment ([`Meta::stamp`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// Whether a later change is bound to move the change time: the file
    /// system stamps changes with a coarse clock (a tick of a few ms), so a
    /// change within the tick of the last one could keep its time. Changes
    /// older than a second are settled.
    pub fn settled(&self, now: SystemTime) -> bool {
        let changed = time(self.ctime.0, self.ctime.1);
        now.duration_since(changed)
            .is_ok_and(|age| age >= std::time::Duration::from_secs(1))
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub(crate) fn stat(dir: &OwnedFd, name: &OsStr) -> io::Result<Meta> {
    nix::sys::stat::fstatat(at(dir), one(name)?, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map(Meta)
        .map_err(err)
}

/// `fstat` of an open descriptor.
pub(crate) fn fstat(fd: &impl AsRawFd) -> io::Result<Meta> {
    nix::sys::stat::fstat(fd.as_raw_fd()).map(Meta).map_err(err)
}

/// `mkdirat`.
pub(crate) fn mkdir(dir: &OwnedFd, name: &OsStr, mode: u32) -> io::Result<()> {
    nix::sys::stat::mkdirat(at(dir), one(name)?, Mode::from_bits_truncate(mode)).map_err(err)
}

/// `unlinkat` of a non-directory.
pub(crate) fn unlink(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    nix::unistd::unlinkat(at(dir), one(name)?, nix::unistd::UnlinkatFlags::NoRemoveDir).map_err(err)
}

/// `unlinkat(AT_REMOVEDIR)`.
pub(crate) fn rmdir(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    nix::unistd::unlinkat(at(dir), one(name)?, nix::unistd::UnlinkatFlags::RemoveDir).map_err(err)
}

/// `renameat`.
pub(crate) fn rename(from: &Loc, to: &Loc) -> io::Result<()> {
    nix::fcntl::renameat(at(&from.dir), one(&from.name)?, at(&to.dir), one(&to.name)?).map_err(err)
}

/// `linkat` (the source is not followed if it is a symlink).
pub(crate) fn link(from: &Loc, to: &Loc) -> io::Result<()> {
    nix::unistd::linkat(
        at(&from.dir),
        one(&from.name)?,
        at(&to.dir),
        one(&to.name)?,
        AtFlags::empty(),
    )
    .map_err(err)
}

/// `symlinkat(target, dir, name)`.
pub(crate) fn symlink(target: &OsStr, dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    nix::unistd::symlinkat(target, at(dir), one(name)?).map_err(err)
}

/// `readlinkat`.
pub(crate) fn readlink(dir: &OwnedFd, name: &OsStr) -> io::Result<OsString> {
    nix::fcntl::readlinkat(at(dir), one(name)?).map_err(err)
}

/// `mknodat`.
pub(crate) fn mknod(
    dir: &OwnedFd,
    name: &OsStr,
    kind: SFlag,
    perm: u32,
    dev: u64,
) -> io::Result<()> {
    nix::sys::stat::mknodat(
        at(dir),
        one(name)?,
        kind,
        Mode::from_bits_truncate(perm),
        dev,
    )
    .map_err(err)
}

/// `fchmodat` (Linux cannot change a symlink's mode: callers skip symlinks).
pub(crate) fn chmod(dir: &OwnedFd, name: &OsStr, mode: u32) -> io::Result<()> {
    nix::sys::stat::fchmodat(
        at(dir),
        one(name)?,
        Mode::from_bits_truncate(mode),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(err)
}

/// `fchownat(AT_SYMLINK_NOFOLLOW)`.
pub(crate) fn chown(
    dir: &OwnedFd,
    name: &OsStr,
    uid: Option<u32>,
    gid: Option<u32>,
) -> io::Result<()> {
    nix::unistd::fchownat(
        at(dir),
        one(name)?,
        uid.map(nix::unistd::Uid::from_raw),
        gid.map(nix::unistd::Gid::from_raw),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(err)
}

/// `utimensat(AT_SYMLINK_NOFOLLOW)`.
pub(crate) fn utimens(
    dir: &OwnedFd,
    name: &OsStr,
    atime: &nix::sys::time::TimeSpec,
    mtime: &nix::sys::time::TimeSpec,
) -> io::Result<()> {
    nix::sys::stat::utimensat(
        at(dir),
        one(name)?,
        atime,
        mtime,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(err)
}

/// `faccessat` with the real ids, as access(2).
pub(crate) fn access(dir: &OwnedFd, name: &OsStr, mask: i32) -> io::Result<()> {
    nix::unistd::faccessat(
        at(dir),
        one(name)?,
        nix::unistd::AccessFlags::from_bits_truncate(mask),
        AtFlags::empty(),
    )
    .map_err(err)
}

/// The whole content of file `name`.
pub(crate) fn read(dir: &OwnedFd, name: &OsStr) -> io::Result<Vec<u8>> {
    let mut f = open_file(dir, name, OFlag::O_RDONLY, 0)?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(out)
}

/// Creates file `name` (failing if it exists) holding `bytes`, synced.
pub(crate) fn write_new(dir: &OwnedFd, name: &OsStr, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut f = open_file(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
        mode,
    )?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A fresh hidden temporary name (`.tresor-tmp-…`, internal to listings).
pub(crate) fn tmp_name() -> OsString {
    let mut rnd = [0u8; 8];
    crate::crypto::random_bytes(&mut rnd);
    OsString::from(format!(".tresor-tmp-{}", hex::encode(rnd)))
}

/// Replaces file `name` atomically with `bytes` (temporary file, fsync,
/// rename, fsync of the directory), as `store::write_atomic`.
pub(crate) fn write_atomic(dir: &Dir, name: &OsStr, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = tmp_name();
    let written = (|| {
        let mut f = open_file(
            dir,
            &tmp,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
            0o600,
        )?;
        f.write_all(bytes)?;
        f.sync_all()?;
        nix::sys::stat::fchmod(f.as_raw_fd(), Mode::from_bits_truncate(mode)).map_err(err)?;
        rename(
            &Loc {
                dir: Arc::clone(dir),
                name: tmp.clone(),
            },
            &Loc {
                dir: Arc::clone(dir),
                name: name.to_os_string(),
            },
        )
    })();
    if written.is_err() {
        let _ = unlink(dir, &tmp);
    }
    written?;
    sync_dir(dir)
}

/// fsync of the directory itself (an `O_PATH` descriptor cannot be synced).
pub(crate) fn sync_dir(dir: &OwnedFd) -> io::Result<()> {
    let fd = nix::fcntl::openat(
        at(dir),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)?;
    // SAFETY: `openat` just returned `fd`, open and owned by nobody else.
    File::from(unsafe { OwnedFd::from_raw_fd(fd) }).sync_all()
}

/// The names in directory `name` of `dir` (`None`: `dir` itself), without
/// `.` and `..`.
pub(crate) fn list(dir: &OwnedFd, name: Option<&OsStr>) -> io::Result<Vec<OsString>> {
    let name = match name {
        Some(n) => one(n)?,
        None => OsStr::new("."),
    };
    let mut d = nix::dir::Dir::openat(
        at(dir),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e.map_err(err)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(out)
}

/// A short path naming entry `name` of `dir` through /proc, for the calls
/// that have no `*at` form (extended attributes): the directory is reached
/// through its descriptor, `name` is not followed if it is a symlink.
pub(crate) fn proc_path(dir: &OwnedFd, name: &OsStr) -> io::Result<PathBuf> {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(one(name)?);
    Ok(p)
}

/// Creates regular file `name` in `dir` (failing if it exists) with its
/// first bytes written by `init` before the name appears: a crash never
/// leaves a named file without a header and a size record. An unnamed
/// `O_TMPFILE` linked into place; where the backing filesystem has none, a
/// hidden temporary name, hard-linked (which, like `O_EXCL`, never
/// replaces).
pub(crate) fn create_whole(
    dir: &Dir,
    name: &OsStr,
    mode: u32,
    init: impl Fn(&File) -> io::Result<()>,
) -> io::Result<File> {
    let tmp = nix::fcntl::openat(
        at(dir),
        ".",
        OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    );
    match tmp {
        Ok(fd) => {
            // SAFETY: `openat` just returned `fd`, open and owned by nobody else.
            let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            init(&file)?;
            let proc = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
            match nix::unistd::linkat(
                None,
                proc.as_path(),
                at(dir),
                Path::new(one(name)?),
                AtFlags::AT_SYMLINK_FOLLOW,
            ) {
                Ok(()) => return Ok(file),
                Err(nix::Error::ENOENT) if !Path::new("/proc/self/fd").exists() => {}
                Err(e) => return Err(err(e)),
            }
        }
        Err(nix::Error::EOPNOTSUPP | nix::Error::EISDIR | nix::Error::EINVAL) => {}
        Err(e) => return Err(err(e)),
    }
    let tmp = tmp_name();
    let file = open_file(
        dir,
        &tmp,
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL,
        mode,
    )?;
    let from = Loc {
        dir: Arc::clone(dir),
        name: tmp.clone(),
    };
    let to = Loc {
        dir: Arc::clone(dir),
        name: name.to_os_string(),
    };
    let linked = init(&file).and_then(|()| link(&from, &to));
    let _ = unlink(dir, &tmp);
    linked.map(|()| file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_far_beyond_path_max_work_one_name_at_a_time() {
        let t = tempfile::tempdir().unwrap();
        let mut dir: Dir = Arc::new(open_root(t.path()).unwrap());
        let name = OsStr::new(&"d".repeat(250)).to_os_string();
        // 40 levels of 250-byte names: 10,000 bytes, beyond PATH_MAX.
        for _ in 0..40 {
            mkdir(&dir, &name, 0o700).unwrap();
            dir = Arc::new(open_dir(&dir, &name).unwrap());
        }
        write_new(&dir, OsStr::new("f"), b"deep", 0o600).unwrap();
        assert_eq!(read(&dir, OsStr::new("f")).unwrap(), b"deep");
        write_atomic(&dir, OsStr::new("f"), b"deeper", 0o640).unwrap();
        assert_eq!(read(&dir, OsStr::new("f")).unwrap(), b"deeper");
        let md = stat(&dir, OsStr::new("f")).unwrap();
        assert!(md.is_file());
        assert_eq!(md.mode() & 0o777, 0o640);
        assert_eq!(list(&dir, None).unwrap(), vec![OsString::from("f")]);
        assert_eq!(
            one(OsStr::new("a/b")).unwrap_err().raw_os_error(),
            Some(libc::EINVAL),
            "a name is one component"
        );
    }

    #[test]
    fn symlinks_are_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let dir: Dir = Arc::new(open_root(t.path()).unwrap());
        symlink(OsStr::new("/etc"), &dir, OsStr::new("l")).unwrap();
        assert!(stat(&dir, OsStr::new("l")).unwrap().is_symlink());
        assert_eq!(
            open_dir(&dir, OsStr::new("l")).unwrap_err().raw_os_error(),
            Some(libc::ENOTDIR),
            "O_NOFOLLOW|O_DIRECTORY on a symlink"
        );
        assert_eq!(readlink(&dir, OsStr::new("l")).unwrap(), "/etc");
    }
}
