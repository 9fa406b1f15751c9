//! The FUSE adapter: the only module that sees fuser types.
//!
//! Each trait method is one call into [`Vfs`] and one reply; errors become
//! errnos through [`VfsError::errno`] (authentication failures EIO, missing
//! keys EACCES — never everything ENOENT).

use crate::vfs::{Attr, Caller, Kind, SetAttr, Vfs, VfsError};
use fuser::{
    AccessFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How long the kernel may cache entries and attributes.
const TTL: Duration = Duration::from_secs(1);
/// Largest read and write request (the kernel's default cap of 256 pages).
const MAX_IO: u32 = 1 << 20;
/// The mount's read-ahead window, in KiB (the kernel's default is 128).
/// Each READ then carries up to `MAX_IO` and several are in flight at once,
/// so the worker threads decrypt on both cores while the reader copies:
/// measured on a tmpfs store, a 1 GiB `dd` went from 0.7–0.9 to 1.1–1.5
/// GB/s, with 20–30 % less CPU per GB (fewer, larger requests); 16 MiB was
/// no faster (docs/PERFORMANCE.md, "Read-ahead").
const READ_AHEAD_KIB: u32 = 4096;

/// Mount options chosen on the command line.
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    /// Let other local users in, with the kernel checking modes.
    pub allow_other: bool,
    /// Worker threads serving requests.
    pub threads: usize,
    /// Name shown as the mount source.
    pub fsname: String,
    /// Mount read-only: the kernel refuses every write (EROFS).
    pub read_only: bool,
    /// The mount point may hold files (`--nonempty`).
    pub nonempty: bool,
}

/// The FUSE filesystem over a [`Vfs`].
#[derive(Debug)]
pub struct TresorFs {
    vfs: Arc<Vfs>,
    /// The session's notifier, once the session exists: for the one notice
    /// sent from inside a request (`mode_changed`).
    notifier: Arc<OnceLock<fuser::Notifier>>,
}

impl TresorFs {
    /// Wraps the engine.
    pub fn new(vfs: Arc<Vfs>) -> Self {
        TresorFs {
            vfs,
            notifier: Arc::new(OnceLock::new()),
        }
    }

    /// The driver changed `ino`'s mode behind the kernel's back (cleared its
    /// set-ID bits): drop the kernel's cached attributes, so that the next
    /// stat — also one right after the write — sees the new mode. Offset
    /// −1 invalidates the attributes only, no pages, so no page lock is
    /// taken and the notice cannot wait on the request it is sent from
    /// (unlike [`KernelNotifier`]'s, which are never sent from one).
    fn mode_changed(&self, ino: u64) {
        if let Some(n) = self.notifier.get() {
            if let Err(e) = n.inval_inode(INodeNo(ino), -1, 0) {
                tracing::debug!("attribute invalidation of inode {ino}: {e}");
            }
        }
    }
}

fn errno(e: &VfsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn time(t: Option<TimeOrNow>) -> Option<Option<std::time::SystemTime>> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(t) => Some(t),
        TimeOrNow::Now => None,
    })
}

fn entry(reply: ReplyEntry, r: Result<Attr, VfsError>) {
    match r {
        Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(a.generation)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), VfsError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Whether a truncation by this caller clears set-ID bits. The kernel
/// decides by `CAP_FSETID` and says so with a flag fuser does not pass on
/// for truncation (it does for writes); the caller's uid stands in: root
/// keeps the bits, as root normally holds `CAP_FSETID`, anyone else loses
/// them.
fn unprivileged(req: &Request) -> bool {
    req.uid() != 0
}

fn xattr_reply(reply: ReplyXattr, size: u32, data: Result<Vec<u8>, VfsError>) {
    match data {
        Err(e) => reply.error(errno(&e)),
        Ok(d) if size == 0 => reply.size(u32::try_from(d.len()).unwrap_or(u32::MAX)),
        Ok(d) if d.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(d) => reply.data(&d),
    }
}

/// How the kernel is to treat a regular file opened with `flags`: an
/// `O_APPEND` descriptor bypasses the page cache, so each `write(2)` (up to
/// the maximum request size) reaches the driver as one request, which
/// appends it whole at the end as it is in the store — through the page
/// cache the kernel splits a write at a partly written page, and another
/// mount's append could land between the parts (docs/DURABILITY.md, "Many
/// mounts"). Other opens keep the file's cached pages if the store says
/// nothing changed it (`keep`), and drop them otherwise.
fn file_open_flags(flags: i32, keep: bool) -> FopenFlags {
    if flags & libc::O_APPEND != 0 {
        FopenFlags::FOPEN_DIRECT_IO
    } else if keep {
        FopenFlags::FOPEN_KEEP_CACHE
    } else {
        FopenFlags::empty()
    }
}

impl Filesystem for TresorFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        // The kernel offers its bdi's read-ahead (128 KiB) as the most we may
        // ask for here; `widen_read_ahead` raises it once INIT is answered.
        let _ = config.set_max_background(64);
        // Optional speed-ups; the kernel may lack them, which is fine.
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO);
        // No FUSE write-back cache (as gocryptfs): every write(2) reaches
        // the backing store before it returns, so a full disk, a quota or an
        // I/O error of the store is the writer's error at write(2) — with the
        // cache the kernel would accept writes it can never store (issue 14)
        // — and the kernel takes sizes from us, not from its own cache.
        // Another mount may change a file (docs/DURABILITY.md, "Many
        // mounts"): an open drops the file's cached pages (no keep_cache)
        // unless the backing file is as the last open saw it (warm
        // re-reads), and a size seen to change (attributes live TTL) drops
        // them too.
        // Not FUSE_AUTO_INVAL_DATA: it would drop them on every change of
        // the modification time, also after each write of this mount —
        // measured, a read after a write went from 2.5 to 10 ms.
        // O_APPEND descriptors are direct (`file_open_flags`); they may
        // still be mapped.
        let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        // The driver clears set-user-ID and set-group-ID on a write or
        // truncation by an unprivileged caller (the kernel flags the write;
        // `unprivileged` below for the others) and on chown (the backing
        // file system does it to the backing file). In return the kernel
        // stops asking for `security.capability` before every write(2) and
        // re-reading the mode before every chown: two round trips of the
        // ~12 an untarred file costs (docs/PERFORMANCE.md). tresor keeps
        // no `security.*` attributes, so there are no capabilities to drop.
        let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        // `ls -l` and friends: entries and attributes in one round trip.
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry(reply, self.vfs.lookup(parent.0, name));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.vfs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.vfs.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let s = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time(atime),
            mtime: time(mtime),
            kill_suidgid: (size.is_some() && unprivileged(req)).then(|| req.gid()),
        };
        match self.vfs.setattr(ino.0, fh.map(|f| f.0), s) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.vfs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        // The caller's umask: applied here too, in case the kernel left it
        // to us (FUSE_DONT_MASK); applying it twice changes nothing.
        let mode = mode & !(umask & 0o777);
        entry(
            reply,
            self.vfs.mknod(caller(req), parent.0, name, mode, rdev),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mode = mode & !(umask & 0o777);
        entry(reply, self.vfs.mkdir(caller(req), parent.0, name, mode));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.vfs.unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.vfs.rmdir(parent.0, name));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        use std::os::unix::ffi::OsStrExt;
        entry(
            reply,
            self.vfs.symlink(
                caller(req),
                parent.0,
                link_name,
                target.as_os_str().as_bytes(),
            ),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.vfs
                .rename(parent.0, name, newparent.0, newname, flags.bits()),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        entry(reply, self.vfs.link(ino.0, newparent.0, newname));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let opened = self.vfs.open(ino.0, flags.0).and_then(|(fh, keep)| {
            if flags.0 & libc::O_TRUNC != 0 && unprivileged(req) {
                match self.vfs.kill_suidgid(fh, req.gid()) {
                    Ok(Some(ino)) => self.mode_changed(ino),
                    Ok(None) => {}
                    Err(e) => {
                        self.vfs.release(fh);
                        return Err(e);
                    }
                }
            }
            Ok((fh, keep))
        });
        match opened {
            Ok((fh, keep)) => reply.opened(FileHandle(fh), file_open_flags(flags.0, keep)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.vfs.read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // The writer lacks CAP_FSETID: the kernel leaves clearing the
        // set-ID bits to us (FUSE_HANDLE_KILLPRIV_V2).
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            match self.vfs.kill_suidgid(fh.0, req.gid()) {
                Ok(Some(ino)) => self.mode_changed(ino),
                Ok(None) => {}
                Err(e) => {
                    reply.error(errno(&e));
                    return;
                }
            }
        }
        // O_APPEND: at the end as it is in the store, which another mount
        // may have moved past the kernel's cached size.
        let r = if flags.0 & libc::O_APPEND != 0 {
            self.vfs.append(fh.0, data)
        } else {
            self.vfs.write(fh.0, offset, data)
        };
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes go straight to the backing file and nothing is buffered
        // here, so a FLUSH would only cost each close(2) a round trip.
        // ENOSYS tells the kernel to send none again; it still writes a
        // mapping's dirty pages back at close and reports their errors
        // there. POSIX locks stay the kernel's (no getlk/setlk), so no
        // lock needs releasing here either.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.vfs.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.vfs.fsync(fh.0, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.vfs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.vfs.readdir(fh.0, offset) {
            Ok(entries) => {
                for (next, e) in entries {
                    if reply.add(INodeNo(e.ino), next, kind(e.kind), &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.vfs.readdir(fh.0, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(&e)),
        };
        for (next, e) in entries {
            // The kernel counts every entry but `.` and `..` as looked up.
            let counted = self.vfs.readdirplus_entry(fh.0, next - 1);
            let attr = counted.unwrap_or(Attr {
                ino: e.ino,
                generation: 0,
                size: 0,
                blocks: 0,
                atime: std::time::UNIX_EPOCH,
                mtime: std::time::UNIX_EPOCH,
                ctime: std::time::UNIX_EPOCH,
                kind: e.kind,
                perm: 0o755,
                nlink: 2,
                uid: 0,
                gid: 0,
                rdev: 0,
            });
            let full = reply.add(
                INodeNo(e.ino),
                next,
                &e.name,
                &TTL,
                &file_attr(&attr),
                Generation(attr.generation),
            );
            if full {
                // Not sent: undo the count.
                if counted.is_some() {
                    self.vfs.forget(e.ino, 1);
                }
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.vfs.release(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory changes are made with synchronous backing calls.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.vfs.statfs() {
            Ok([blocks, bfree, bavail, files, ffree, bsize, namelen, frsize]) => reply.statfs(
                blocks,
                bfree,
                bavail,
                files,
                ffree,
                u32::try_from(bsize).unwrap_or(4096),
                u32::try_from(namelen).unwrap_or(255),
                u32::try_from(frsize).unwrap_or(4096),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.vfs.setxattr(ino.0, name, value, flags));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        xattr_reply(reply, size, self.vfs.getxattr(ino.0, name));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        use std::os::unix::ffi::OsStrExt;
        let list = self.vfs.listxattr(ino.0).map(|names| {
            let mut buf = Vec::new();
            for n in names {
                buf.extend_from_slice(n.as_bytes());
                buf.push(0);
            }
            buf
        });
        xattr_reply(reply, size, list);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.vfs.removexattr(ino.0, name));
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // Only called without default_permissions (single-user mounts): the
        // backing file, with the same modes, answers for the mounting user.
        empty(reply, self.vfs.access(ino.0, mask.bits()));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mode = mode & !(umask & 0o777);
        match self.vfs.create(caller(req), parent.0, name, mode, flags) {
            Ok((a, fh)) => reply.created(
                &TTL,
                &file_attr(&a),
                Generation(a.generation),
                FileHandle(fh),
                file_open_flags(flags, false),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            // Keep-size, punching holes, collapsing or zeroing ranges: not
            // supported (the caller sees EOPNOTSUPP and falls back).
            reply.error(Errno::EOPNOTSUPP);
            return;
        }
        empty(reply, self.vfs.allocate(fh.0, offset, length));
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        // The kernel answers SEEK_SET/CUR/END itself; only these reach us.
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return reply.error(Errno::EINVAL),
        };
        let Ok(off) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        match self.vfs.seek_data_hole(fh.0, off, data) {
            Ok(o) => reply.offset(i64::try_from(o).unwrap_or(i64::MAX)),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

/// The kernel-cache side of a session lock: FUSE invalidation notices.
/// Sent from the session's own threads, never from inside a request.
pub struct KernelNotifier(fuser::Notifier);

impl KernelNotifier {
    /// The notifier of a mounted session.
    pub fn new(session: &fuser::Session<TresorFs>) -> Self {
        KernelNotifier(session.notifier())
    }
}

impl crate::session::KernelCache for KernelNotifier {
    fn inval_inode(&self, ino: u64) -> io::Result<()> {
        // Offset 0, length 0: every page; dirty ones are written back
        // (launder) through the still-open handles before they are dropped.
        self.0.inval_inode(INodeNo(ino), 0, 0)
    }

    fn inval_entry(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        self.0.inval_entry(INodeNo(parent), name)
    }
}

/// Mounts `vfs` at `mountpoint` and returns the session, not yet running.
pub fn mount(
    vfs: Arc<Vfs>,
    mountpoint: &Path,
    opts: &MountOptions,
) -> io::Result<fuser::Session<TresorFs>> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(opts.fsname.clone()),
        // A kernel option, not `MountOption::Subtype`: fuser's own mount(2)
        // (as root) drops that one and the type reads `fuse`; the kernel and
        // fusermount3 both take `subtype=` and record `fuse.tresor`.
        MountOption::CUSTOM("subtype=tresor".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::Exec,
    ];
    // As gocryptfs: with other users in, the kernel checks owners and modes;
    // a single-user mount leaves them to the backing files (same modes),
    // which spares a GETATTR of the parent before every unlink.
    if opts.allow_other {
        config.mount_options.push(MountOption::DefaultPermissions);
    }
    if opts.read_only {
        config.mount_options.push(MountOption::RO);
    }
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let fs = TresorFs::new(vfs);
    let notifier = Arc::clone(&fs.notifier);
    // Mounts and answers INIT.
    let session = fuser::Session::new(fs, mountpoint, &config)?;
    let _ = notifier.set(session.notifier());
    Ok(session)
}

/// Widens the read-ahead window of the mount on `mnt`, whose device is
/// `dev` (see [`own_device`]), to [`READ_AHEAD_KIB`]. Only after [`mount`],
/// which answers INIT: the kernel's handling of that reply narrows the
/// window to what the driver asked for there (at most the 128 KiB
/// offered). Only root may write the knob; an unprivileged driver keeps
/// 128 KiB.
pub fn widen_read_ahead(dev: Option<&str>, mnt: &Path) {
    let Some(dev) = dev else {
        tracing::info!(
            "{} is not in /proc/self/mountinfo: read-ahead stays at the kernel's 128 KiB",
            mnt.display()
        );
        return;
    };
    let knob = PathBuf::from(format!("/sys/class/bdi/{dev}/read_ahead_kb"));
    match std::fs::write(&knob, format!("{READ_AHEAD_KIB}\n")) {
        Ok(()) => tracing::debug!("read-ahead {READ_AHEAD_KIB} KiB ({})", knob.display()),
        Err(e) => tracing::info!(
            "read-ahead stays at the kernel's 128 KiB ({}: {e}); only root may widen it: sequential reads are slower",
            knob.display()
        ),
    }
}

/// The `MAJ:MIN` device of the mount just made on `mnt` (canonical:
/// resolved before the mount, as resolving it after would ask the mount).
/// From mountinfo: a `stat` of the mount point by the driver itself could
/// hold the mount busy as its user unmounts.
pub fn own_device(mnt: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    crate::mountinfo::device_of(&info, mnt)
}

/// Detaches the mounted process into the background: the parent exits 0
/// (the mount is already up, so its success is real), the child continues
/// in a new session with stdin/stdout on /dev/null and stderr on `log`.
pub fn detach(log: &Path) -> io::Result<()> {
    use nix::unistd::{dup2, fork, setsid, ForkResult};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)?;
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    // SAFETY: called before fuser starts its worker threads and before the
    // signal thread, so the process is single-threaded and the child may run
    // arbitrary code.
    match unsafe { fork() }.map_err(io::Error::from)? {
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => {}
    }
    setsid().map_err(io::Error::from)?;
    dup2(devnull.as_raw_fd(), 0).map_err(io::Error::from)?;
    dup2(devnull.as_raw_fd(), 1).map_err(io::Error::from)?;
    dup2(logf.as_raw_fd(), 2).map_err(io::Error::from)?;
    std::env::set_current_dir("/")?;
    Ok(())
}
