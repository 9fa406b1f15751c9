//! Reading and writing the blocks of one encrypted file at any offset.
//!
//! All functions take the backing file and the file's cipher; the caller
//! holds the file's lock in this process (readers shared, writers
//! exclusive). Against other mounts of the store — other processes, other
//! hosts sharing the store directory — each function holds an open file
//! description lock on the backing file for its whole read-modify-write
//! ([`BackingLock`]: `F_OFD_SETLKW`, shared for reads, exclusive for
//! updates), and format 2 checks under it that the size record it keeps is
//! still the one on disk (docs/DURABILITY.md, "Many mounts"). The header's
//! version picks the layout: [`v1`] (last-block flag) or [`v2`] (two-slot
//! size record, docs/FORMAT.md §5b). Every backing write goes through
//! [`pwrite`] / [`set_len`], where the durability tests inject faults.

mod v1;
mod v2;

use crate::crypto::Aead;
use crate::format::content::{v2 as layout2, FileHeader, FILE_ID_LEN, HEADER_LEN, VERSION_1};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, MutexGuard};

/// What went wrong with a file's contents.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// The backing file failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The ciphertext is damaged, forged, cut or misplaced.
    #[error("{0}")]
    Corrupt(String),
}

/// The per-file state needed to seal and open its blocks, and (format 2)
/// the size record in force, read once and then kept in step by every
/// update made through this cipher.
#[derive(Debug)]
pub struct FileCipher {
    /// The file's header (version, epoch and id).
    pub header: FileHeader,
    /// The per-file key.
    pub aead: Aead,
    record: Mutex<Option<v2::Record>>,
}

impl FileCipher {
    /// The cipher of a file with this header and per-file key.
    pub fn new(header: FileHeader, aead: Aead) -> Self {
        FileCipher {
            header,
            aead,
            record: Mutex::new(None),
        }
    }

    fn id(&self) -> &[u8; FILE_ID_LEN] {
        &self.header.file_id
    }

    fn is_v1(&self) -> bool {
        self.header.version == VERSION_1
    }

    fn record_slot(&self) -> MutexGuard<'_, Option<v2::Record>> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads and parses the header of a backing file.
pub fn read_header(file: &File) -> Result<FileHeader, ContentError> {
    let mut b = [0u8; HEADER_LEN as usize];
    let n = read_full(file, &mut b, 0)?;
    if n == 0 {
        return Err(ContentError::Corrupt(
            "file is empty: it has no header (cut, or never finished writing)".into(),
        ));
    }
    FileHeader::decode(&b[..n]).map_err(|e| ContentError::Corrupt(e.to_string()))
}

/// Makes a just-created, empty backing file an empty encrypted file in the
/// layout of `c.header.version`.
pub fn init_empty(file: &File, c: &FileCipher) -> Result<(), ContentError> {
    if c.is_v1() {
        v1::init_empty(file, c)
    } else {
        v2::init_empty(file, c)
    }
}

/// Plaintext size of the file.
pub fn plain_size(file: &File, c: &FileCipher) -> Result<u64, ContentError> {
    let _lock = BackingLock::shared(file)?;
    size_unlocked(file, c)
}

fn size_unlocked(file: &File, c: &FileCipher) -> Result<u64, ContentError> {
    if c.is_v1() {
        v1::plain_size(file)
    } else {
        v2::plain_size(file, c)
    }
}

/// Plaintext size from the record, after setting a backing length left
/// non-steady by a crash to the steady one (format 2, writable `file`), so
/// the next `stat` needs no key. Format 1: the size from the length.
pub fn settle(file: &File, c: &FileCipher) -> Result<u64, ContentError> {
    let _lock = BackingLock::exclusive(file)?;
    if c.is_v1() {
        v1::plain_size(file)
    } else {
        v2::settle(file, c)
    }
}

/// Plaintext size that `stat` shows for a backing length, without a key,
/// by the layout the store writes; `None` if the length is not one a file
/// at rest has (a crash in an update, a file of the other layout in a store
/// being upgraded, or tampering): then ask [`settle`].
pub fn size_from_len(len: u64, v2_store: bool) -> Option<u64> {
    if v2_store {
        layout2::plaintext_size(len)
    } else {
        crate::format::content::plaintext_size(len)
    }
}

/// Reads up to `len` bytes at `off`. Short at end of file; empty past it.
pub fn read_at(file: &File, c: &FileCipher, off: u64, len: usize) -> Result<Vec<u8>, ContentError> {
    let _lock = BackingLock::shared(file)?;
    if c.is_v1() {
        v1::read_at(file, c, off, len)
    } else {
        v2::read_at(file, c, off, len)
    }
}

/// Writes `data` at `off`, zero-filling any gap after the current end.
pub fn write_at(file: &File, c: &FileCipher, off: u64, data: &[u8]) -> Result<(), ContentError> {
    if data.is_empty() {
        return Ok(());
    }
    off.checked_add(data.len() as u64)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
    let _lock = BackingLock::exclusive(file)?;
    write_unlocked(file, c, off, data)
}

fn write_unlocked(file: &File, c: &FileCipher, off: u64, data: &[u8]) -> Result<(), ContentError> {
    if c.is_v1() {
        v1::write_at(file, c, off, data)
    } else {
        v2::write_at(file, c, off, data)
    }
}

/// Appends `data` at the end of the file as it is on disk now — not where
/// this mount last saw the end, which another mount may have moved (an
/// `O_APPEND` write). Returns the offset written at.
pub fn append(file: &File, c: &FileCipher, data: &[u8]) -> Result<u64, ContentError> {
    let _lock = BackingLock::exclusive(file)?;
    let off = size_unlocked(file, c)?;
    if !data.is_empty() {
        off.checked_add(data.len() as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        write_unlocked(file, c, off, data)?;
    }
    Ok(off)
}

/// Sets the plaintext size.
pub fn truncate(file: &File, c: &FileCipher, new: u64) -> Result<(), ContentError> {
    let _lock = BackingLock::exclusive(file)?;
    truncate_unlocked(file, c, new)
}

fn truncate_unlocked(file: &File, c: &FileCipher, new: u64) -> Result<(), ContentError> {
    if c.is_v1() {
        v1::truncate(file, c, new)
    } else {
        v2::truncate(file, c, new)
    }
}

/// `SEEK_DATA` (`data`) or `SEEK_HOLE` from plaintext offset `off`
/// (ENXIO at or past the end). Format 1 has no holes.
pub fn seek(file: &File, c: &FileCipher, off: u64, data: bool) -> Result<u64, ContentError> {
    let _lock = BackingLock::shared(file)?;
    if c.is_v1() {
        let size = v1::plain_size(file)?;
        if off >= size {
            return Err(io::Error::from_raw_os_error(libc::ENXIO).into());
        }
        return Ok(if data { off } else { size });
    }
    v2::seek(file, c, off, data)
}

/// `fallocate` mode 0: the file covers `[off, off + len)` afterwards and
/// (format 2) the backing space for it is reserved, so writes there do not
/// meet a full disk. Format 1 writes sealed zero blocks.
pub fn allocate(file: &File, c: &FileCipher, off: u64, len: u64) -> Result<(), ContentError> {
    let end = off
        .checked_add(len)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
    let _lock = BackingLock::exclusive(file)?;
    if end > size_unlocked(file, c)? {
        truncate_unlocked(file, c, end)?;
    }
    if c.is_v1() {
        Ok(())
    } else {
        v2::reserve(file, c, off, end)
    }
}

/// Makes everything written so far durable (`fsync`/`fdatasync` of the
/// backing file); format 2 first copies the record in force into the other
/// slot, so after the sync both slots hold the synced state.
pub fn sync(file: &File, c: &FileCipher, datasync: bool) -> Result<(), ContentError> {
    prepare_sync(file, c)?;
    sync_backing(file, datasync)
}

/// The first half of [`sync`], an update (the caller's per-file lock
/// exclusive): format 2 copies the record in force into the other slot.
pub fn prepare_sync(file: &File, c: &FileCipher) -> Result<(), ContentError> {
    if !c.is_v1() {
        let _lock = BackingLock::exclusive(file)?;
        v2::mirror(file, c)?;
    }
    Ok(())
}

/// The second half of [`sync`]: `fsync`/`fdatasync` of the backing file,
/// which readers need not wait for (the caller's per-file lock shared).
pub fn sync_backing(file: &File, datasync: bool) -> Result<(), ContentError> {
    if datasync {
        file.sync_data()?;
    } else {
        file.sync_all()?;
    }
    Ok(())
}

/// Scratch buffers kept at most this large between requests (one FUSE
/// request is at most 1 MiB of plaintext, 256 sealed blocks).
const SCRATCH_KEEP: usize = 2 << 20;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer for *ciphertext* (never
/// plaintext: it is not zeroized), `len` bytes long. The bytes are whatever
/// the last user left: `f` must overwrite what it reads. Saves the
/// allocation, page faults and zero-fill of a fresh megabyte per request.
pub(crate) fn with_ct_scratch<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let r = f(&mut buf[..len]);
    if buf.capacity() <= SCRATCH_KEEP {
        SCRATCH.with(|s| *s.borrow_mut() = buf);
    }
    r
}

pub(crate) fn read_full(file: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// An open file description (OFD) lock on a whole backing file, held for
/// one read-modify-write and released on drop (and by the kernel if the
/// process dies). It orders this mount against every other driver on the
/// store — another process, or another host when the store directory is on
/// NFS, which carries OFD locks to the server. Shared for reads, exclusive
/// for updates; a descriptor opened read-only takes a shared lock (it
/// cannot update). Within one process the caller's per-file lock comes
/// first, so two descriptors of one mount never wait on each other here.
pub(crate) struct BackingLock<'a> {
    file: &'a File,
    /// The holders count of a shared lock (`None`: exclusive).
    shared: Option<Holders>,
}

/// Shared locks on one descriptor held in this process: OFD locks belong
/// to the open file description, not to a thread, so the first reader
/// takes the lock and the last one releases it — else one reader's unlock
/// would leave another reading unprotected.
type Holders = std::sync::Arc<Mutex<usize>>;

fn holders(fd: std::os::fd::RawFd) -> Holders {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static MAP: OnceLock<Mutex<HashMap<std::os::fd::RawFd, Holders>>> = OnceLock::new();
    // Entries are kept (one per descriptor number): removing one while
    // another thread waits on it would split a descriptor's count in two.
    let mut m = MAP
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    m.entry(fd).or_default().clone()
}

fn setlkw(fd: std::os::fd::RawFd, kind: libc::c_int) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg};
    let fl = whole_file(kind);
    loop {
        match fcntl(fd, FcntlArg::F_OFD_SETLKW(&fl)) {
            Ok(_) => return Ok(()),
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!(
                        "cannot lock the backing file against other mounts ({e}); \
                         the store's filesystem must support fcntl (OFD) locks"
                    ),
                ))
            }
        }
    }
}

impl<'a> BackingLock<'a> {
    /// Shared: other readers may hold it too, no writer.
    pub(crate) fn shared(file: &'a File) -> io::Result<BackingLock<'a>> {
        Self::take(file, false)
    }

    /// Exclusive (if `file` is writable): no other lock at the same time.
    /// The caller's per-file lock keeps every other operation of this
    /// process on the file out meanwhile.
    pub(crate) fn exclusive(file: &'a File) -> io::Result<BackingLock<'a>> {
        Self::take(file, true)
    }

    fn take(file: &'a File, exclusive: bool) -> io::Result<BackingLock<'a>> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        // Asked only for an exclusive lock (a reader's lock needs no write
        // access): one call less per read.
        let writable = || {
            fcntl(fd, FcntlArg::F_GETFL)
                .map(|fl| OFlag::from_bits_truncate(fl) & OFlag::O_ACCMODE != OFlag::O_RDONLY)
                .map_err(io::Error::from)
        };
        if exclusive && writable()? {
            setlkw(fd, libc::F_WRLCK)?;
            return Ok(BackingLock { file, shared: None });
        }
        let h = holders(fd);
        {
            let mut n = h.lock().unwrap_or_else(|e| e.into_inner());
            if *n == 0 {
                setlkw(fd, libc::F_RDLCK)?;
            }
            *n += 1;
        }
        Ok(BackingLock {
            file,
            shared: Some(h),
        })
    }
}

impl Drop for BackingLock<'_> {
    fn drop(&mut self) {
        use nix::fcntl::{fcntl, FcntlArg};
        use std::os::fd::AsRawFd;
        let unlock = || {
            let _ = fcntl(
                self.file.as_raw_fd(),
                FcntlArg::F_OFD_SETLK(&whole_file(libc::F_UNLCK)),
            );
        };
        match &self.shared {
            None => unlock(),
            Some(h) => {
                let mut n = h.lock().unwrap_or_else(|e| e.into_inner());
                *n = n.saturating_sub(1);
                if *n == 0 {
                    unlock();
                }
            }
        }
    }
}

fn whole_file(kind: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

/// Counts backing writes of this process, so a cached size record is
/// re-read from disk only when an update may have changed it.
static BACKING_WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn backing_writes() -> u64 {
    BACKING_WRITES.load(std::sync::atomic::Ordering::SeqCst)
}

fn count_write() {
    BACKING_WRITES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// Every write to a content file's backing file.
fn pwrite(file: &File, buf: &[u8], off: u64) -> io::Result<()> {
    count_write();
    #[cfg(test)]
    recorder::write(buf, off);
    #[cfg(debug_assertions)]
    if let Some(torn) = fault::hit() {
        let n = if torn {
            fault::torn_len(off, buf.len())
        } else {
            buf.len()
        };
        let _ = file.write_all_at(&buf[..n], off);
        fault::crash();
    }
    file.write_all_at(buf, off)
}

/// Every change of a content file's backing length.
fn set_len(file: &File, len: u64) -> io::Result<()> {
    count_write();
    #[cfg(test)]
    recorder::set_len(len);
    #[cfg(debug_assertions)]
    if fault::hit().is_some() {
        let _ = file.set_len(len);
        fault::crash();
    }
    file.set_len(len)
}

/// Fault injection for the durability tests (tests/durability.rs), compiled
/// into debug builds only — a release build has no trace of it, so it cannot
/// weaken a production mount. `TRESOR_FAULT_ABORT_AFTER_WRITE=N` makes the
/// process abort (SIGABRT, no clean-up, like a crash) right after its N-th
/// backing write to a content file (`pwrite` or length change), counted from
/// 1 over the whole process; `N:torn` writes only part of the N-th write
/// before aborting (a torn write): the bytes up to the last 512-byte
/// boundary of the file inside it — the granularity at which the kernel
/// (pages, for a killed process) and disks (sectors, at a power loss) cut a
/// write; a write that crosses no such boundary is not torn.
#[cfg(debug_assertions)]
mod fault {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    /// Name of the environment variable.
    pub(super) const VAR: &str = "TRESOR_FAULT_ABORT_AFTER_WRITE";

    fn plan() -> Option<(u64, bool)> {
        static PLAN: OnceLock<Option<(u64, bool)>> = OnceLock::new();
        *PLAN.get_or_init(|| {
            let v = std::env::var(VAR).ok()?;
            let (n, torn) = match v.split_once(':') {
                Some((n, "torn")) => (n, true),
                Some(_) => return None,
                None => (v.as_str(), false),
            };
            let n: u64 = n.trim().parse().ok().filter(|n| *n > 0)?;
            eprintln!(
                "tresor: fault injection armed: abort after backing write {n}{}",
                if torn { " (torn)" } else { "" }
            );
            Some((n, torn))
        })
    }

    /// Counts one backing write; `Some(torn)` if the process must crash at it.
    pub(super) fn hit() -> Option<bool> {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let (n, torn) = plan()?;
        let this = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
        eprintln!("tresor: fault injection: backing write {this}");
        (this == n).then_some(torn)
    }

    /// Bytes of a write of `len` at `off` that a tear at the last 512-byte
    /// file boundary inside it leaves.
    pub(super) fn torn_len(off: u64, len: usize) -> usize {
        let end = off + len as u64;
        let cut = (end - 1) / 512 * 512;
        if cut > off {
            (cut - off) as usize
        } else {
            len
        }
    }

    pub(super) fn crash() -> ! {
        eprintln!("tresor: fault injection: aborting after the planned backing write");
        std::process::abort()
    }
}

/// Unit tests record every backing write of their own thread, to replay
/// any prefix of a sequence of writes as the state a crash would leave.
#[cfg(test)]
pub(crate) mod recorder {
    use std::cell::RefCell;

    /// One backing change.
    #[derive(Clone, Debug)]
    pub(crate) enum Op {
        Write(u64, Vec<u8>),
        SetLen(u64),
    }

    thread_local! {
        static LOG: RefCell<Option<Vec<Op>>> = const { RefCell::new(None) };
    }

    /// Starts recording this thread's backing writes.
    pub(crate) fn start() {
        LOG.with(|l| *l.borrow_mut() = Some(Vec::new()));
    }

    /// Stops recording; returns what was recorded.
    pub(crate) fn take() -> Vec<Op> {
        LOG.with(|l| l.borrow_mut().take().unwrap_or_default())
    }

    pub(super) fn write(buf: &[u8], off: u64) {
        LOG.with(|l| {
            if let Some(v) = l.borrow_mut().as_mut() {
                v.push(Op::Write(off, buf.to_vec()));
            }
        });
    }

    pub(super) fn set_len(len: u64) {
        LOG.with(|l| {
            if let Some(v) = l.borrow_mut().as_mut() {
                v.push(Op::SetLen(len));
            }
        });
    }

    /// Applies `ops` to `bytes` (a backing file held in memory).
    pub(crate) fn replay(bytes: &mut Vec<u8>, ops: &[Op]) {
        for op in ops {
            match op {
                Op::Write(off, b) => {
                    let end = *off as usize + b.len();
                    if bytes.len() < end {
                        bytes.resize(end, 0);
                    }
                    bytes[*off as usize..end].copy_from_slice(b);
                }
                Op::SetLen(n) => bytes.resize(*n as usize, 0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use rand::{Rng, SeedableRng};

    fn setup(version: u16) -> (tempfile::NamedTempFile, FileCipher) {
        let f = tempfile::NamedTempFile::new().unwrap();
        let c = cipher(version, SecretKey::random());
        init_empty(f.as_file(), &c).unwrap();
        (f, c)
    }

    fn cipher(version: u16, key: SecretKey) -> FileCipher {
        FileCipher::new(FileHeader::new(version, 1, [5; 16]), Aead::new(&key))
    }

    fn shadow_test(version: u16) {
        let (f, c) = setup(version);
        let file = f.as_file();
        let mut shadow: Vec<u8> = Vec::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for round in 0..400 {
            if rng.gen_ratio(1, 6) {
                let n = rng.gen_range(0..40_000usize);
                truncate(file, &c, n as u64).unwrap();
                shadow.resize(n, 0);
            } else {
                let off = rng.gen_range(0..30_000usize);
                let len = rng.gen_range(1..10_000usize);
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                write_at(file, &c, off as u64, &data).unwrap();
                if shadow.len() < off + len {
                    shadow.resize(off + len, 0);
                }
                shadow[off..off + len].copy_from_slice(&data);
            }
            assert_eq!(
                plain_size(file, &c).unwrap(),
                shadow.len() as u64,
                "round {round}"
            );
            let len = file.metadata().unwrap().len();
            assert_eq!(
                size_from_len(len, version == 2),
                Some(shadow.len() as u64),
                "round {round}: stat size from the backing length"
            );
            let got = read_at(file, &c, 0, shadow.len() + 10).unwrap();
            assert!(got == shadow, "round {round}: content differs");
            if round % 50 == 0 {
                // A fresh cipher reads the same from disk (nothing only in memory).
                let fresh = FileCipher::new(c.header, c.aead.clone());
                let got = read_at(file, &fresh, 0, shadow.len() + 10).unwrap();
                assert!(got == shadow, "round {round}: re-read differs");
            }
        }
    }

    #[test]
    fn random_writes_and_truncates_match_a_shadow_v1() {
        shadow_test(1);
    }

    #[test]
    fn random_writes_and_truncates_match_a_shadow_v2() {
        shadow_test(2);
    }

    /// Whether another open file description would get a write lock now.
    fn write_lock_free(path: &std::path::Path) -> bool {
        use nix::fcntl::{fcntl, FcntlArg};
        use std::os::fd::AsRawFd;
        let other = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut fl = whole_file(libc::F_WRLCK);
        fcntl(other.as_raw_fd(), FcntlArg::F_OFD_GETLK(&mut fl)).unwrap();
        fl.l_type == libc::F_UNLCK as libc::c_short
    }

    /// Shared locks of one descriptor are counted: the lock stays until
    /// the last reader lets go; an exclusive one excludes other mounts.
    #[test]
    fn backing_locks_hold_until_the_last_holder_lets_go() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let a = BackingLock::shared(f.as_file()).unwrap();
        let b = BackingLock::shared(f.as_file()).unwrap();
        assert!(!write_lock_free(f.path()), "a shared lock is held");
        drop(a);
        assert!(
            !write_lock_free(f.path()),
            "one reader's release must not unlock the other reader"
        );
        drop(b);
        assert!(write_lock_free(f.path()), "the last reader releases");
        let w = BackingLock::exclusive(f.as_file()).unwrap();
        assert!(!write_lock_free(f.path()));
        drop(w);
        assert!(write_lock_free(f.path()));
    }

    /// Two ciphers of one file through two descriptors — two mounts: each
    /// update of one is seen by the other, whose cached size record is
    /// read again instead of trusted (else its stale tail and size would
    /// overwrite the other's write, or its record counter collide).
    #[test]
    fn two_mounts_see_each_others_updates() {
        for v in [1u16, 2] {
            let key = SecretKey::from_bytes([3; 32]);
            let f = tempfile::NamedTempFile::new().unwrap();
            let c1 = cipher(v, key.clone());
            init_empty(f.as_file(), &c1).unwrap();
            let other = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(f.path())
                .unwrap();
            let c2 = cipher(v, key.clone());
            let mut shadow = Vec::new();
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            for round in 0..300 {
                let (file, c) = if round % 2 == 0 {
                    (f.as_file(), &c1)
                } else {
                    (&other, &c2)
                };
                match rng.gen_range(0..6) {
                    0 => {
                        let n = rng.gen_range(0..20_000usize);
                        truncate(file, c, n as u64).unwrap();
                        shadow.resize(n, 0);
                    }
                    1 => {
                        let data: Vec<u8> = (0..rng.gen_range(1..300)).map(|_| rng.gen()).collect();
                        let at = append(file, c, &data).unwrap();
                        assert_eq!(at, shadow.len() as u64, "v{v} round {round}: append offset");
                        shadow.extend_from_slice(&data);
                    }
                    2 => sync(file, c, false).unwrap(),
                    _ => {
                        let off = rng.gen_range(0..16_000usize);
                        let len = rng.gen_range(1..6000usize);
                        let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                        write_at(file, c, off as u64, &data).unwrap();
                        if shadow.len() < off + len {
                            shadow.resize(off + len, 0);
                        }
                        shadow[off..off + len].copy_from_slice(&data);
                    }
                }
                for (file, c) in [(f.as_file(), &c1), (&other, &c2)] {
                    assert_eq!(
                        plain_size(file, c).unwrap(),
                        shadow.len() as u64,
                        "v{v} round {round}"
                    );
                    let got = read_at(file, c, 0, 1 << 20).unwrap();
                    assert!(got == shadow, "v{v} round {round}: content differs");
                }
            }
        }
    }

    #[test]
    fn reads_at_odd_offsets() {
        for v in [1, 2] {
            let (f, c) = setup(v);
            let data: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
            write_at(f.as_file(), &c, 0, &data).unwrap();
            for (off, len) in [
                (0, 1),
                (4095, 2),
                (4096, 4096),
                (19_999, 5),
                (20_000, 5),
                (1, 19_999),
            ] {
                let got = read_at(f.as_file(), &c, off, len).unwrap();
                let end = (off as usize + len).min(data.len());
                assert_eq!(got, data[(off as usize).min(end)..end]);
            }
        }
    }

    /// Long runs (a whole 1 MiB request, v2): a long unaligned write and
    /// reads across it give back the bytes, and a block that fails
    /// authentication near either end of a 256-block read is the one the
    /// error names.
    #[test]
    fn v2_long_runs_read_back_and_name_a_bad_block() {
        let (f, c) = setup(2);
        let file = f.as_file();
        let mut rng = rand::rngs::StdRng::seed_from_u64(19);
        // One request of 1 MiB + 3 KiB from an unaligned offset: a partial
        // first block in the lower half, a partial last one in the upper.
        let data: Vec<u8> = (0..(1 << 20) + 3000).map(|_| rng.gen()).collect();
        let off = 5000u64;
        write_at(file, &c, off, &data).unwrap();
        let mut shadow = vec![0u8; off as usize];
        shadow.extend_from_slice(&data);
        assert!(read_at(file, &c, 0, usize::MAX >> 1).unwrap() == shadow);
        for (o, l) in [
            (0usize, 1 << 20),
            (4096 * 100 + 7, 4096 * 130),
            (3, 4096 * 64),
        ] {
            let got = read_at(file, &c, o as u64, l).unwrap();
            assert!(got == shadow[o..o + l], "read at {o} of {l} differs");
        }
        // A second long write over the first, block-aligned (all from the
        // caller's data), then appended past the end.
        let more: Vec<u8> = (0..4096 * 300).map(|_| rng.gen()).collect();
        write_at(file, &c, 4096 * 200, &more).unwrap();
        shadow.resize(4096 * 500, 0);
        shadow[4096 * 200..4096 * 500].copy_from_slice(&more);
        assert!(read_at(file, &c, 0, usize::MAX >> 1).unwrap() == shadow);
        // A flipped ciphertext byte in a block of the lower, then the upper
        // half of a 256-block read from block 0.
        for bad in [10u64, 200] {
            let at = layout2::block_offset(bad) + 100;
            let mut b = [0u8; 1];
            file.read_exact_at(&mut b, at).unwrap();
            file.write_all_at(&[b[0] ^ 1], at).unwrap();
            let err = read_at(file, &c, 0, 1 << 20).unwrap_err().to_string();
            assert!(
                err.contains(&format!("block {bad} failed authentication")),
                "{err}"
            );
            file.write_all_at(&b, at).unwrap();
        }
        assert!(read_at(file, &c, 0, usize::MAX >> 1).unwrap() == shadow);
    }

    #[test]
    fn v2_holes_cost_nothing_and_read_as_zeros() {
        let (f, c) = setup(2);
        let file = f.as_file();
        write_at(file, &c, 0, b"head").unwrap();
        truncate(file, &c, 1 << 30).unwrap();
        write_at(file, &c, (1 << 29) + 3, b"middle").unwrap();
        use std::os::unix::fs::MetadataExt;
        assert!(
            file.metadata().unwrap().blocks() * 512 < 1 << 20,
            "a 1 GiB sparse file takes {} bytes",
            file.metadata().unwrap().blocks() * 512
        );
        assert_eq!(read_at(file, &c, 0, 6).unwrap(), b"head\0\0");
        assert_eq!(read_at(file, &c, 1 << 20, 5).unwrap(), vec![0; 5]);
        assert_eq!(
            read_at(file, &c, (1 << 29) + 1, 9).unwrap(),
            b"\0\0middle\0"
        );
        assert_eq!(plain_size(file, &c).unwrap(), 1 << 30);
    }

    type Op<'a> = &'a dyn Fn(&File, &FileCipher);

    /// Runs `ops` on a synced file of `synced_len` bytes, recording every
    /// backing write; then replays every prefix of those writes — and every
    /// write torn in half — onto the synced file and checks that the result
    /// reads (no EIO) as exactly the state before or after one of the ops.
    fn crash_everywhere(synced_len: usize, ops: &[Op<'_>]) {
        let key = SecretKey::from_bytes([7; 32]);
        let f = tempfile::NamedTempFile::new().unwrap();
        let c = cipher(2, key.clone());
        init_empty(f.as_file(), &c).unwrap();
        let synced: Vec<u8> = (0..synced_len).map(|i| (i * 7 + 1) as u8).collect();
        write_at(f.as_file(), &c, 0, &synced).unwrap();
        sync(f.as_file(), &c, false).unwrap();
        let before = std::fs::read(f.path()).unwrap();
        let mut states = vec![synced];
        recorder::start();
        for op in ops {
            op(f.as_file(), &c);
            states.push(read_at(f.as_file(), &c, 0, usize::MAX >> 1).unwrap());
        }
        let log = recorder::take();
        for n in 0..=log.len() {
            for torn in [false, true] {
                let mut bytes = before.clone();
                recorder::replay(&mut bytes, &log[..n]);
                if torn {
                    match log.get(n) {
                        Some(recorder::Op::Write(off, b)) => recorder::replay(
                            &mut bytes,
                            &[recorder::Op::Write(*off, b[..b.len() / 2].to_vec())],
                        ),
                        _ => continue,
                    }
                }
                let g = tempfile::NamedTempFile::new().unwrap();
                std::fs::write(g.path(), &bytes).unwrap();
                let fresh = cipher(2, key.clone());
                let got = read_at(g.as_file(), &fresh, 0, usize::MAX >> 1).unwrap_or_else(|e| {
                    panic!(
                        "synced {synced_len}: crash after write {n} of {} (torn: {torn}): {e}",
                        log.len()
                    )
                });
                if let Some(stat) = size_from_len(bytes.len() as u64, true) {
                    assert_eq!(
                        stat,
                        got.len() as u64,
                        "synced {synced_len}: crash after write {n} (torn: {torn}): stat and the record disagree"
                    );
                }
                assert!(
                    states.contains(&got),
                    "synced {synced_len}: crash after write {n} of {} (torn: {torn}): {} bytes that are no state the ops went through",
                    log.len(),
                    got.len()
                );
            }
        }
    }

    /// A shrink cut off before its commit point leaves a valid record with a
    /// higher counter in the other slot; a later growth must not let it come
    /// into force when the length turns dirty.
    #[test]
    fn v2_an_unfinished_shrink_never_comes_back() {
        let key = SecretKey::from_bytes([9; 32]);
        let f = tempfile::NamedTempFile::new().unwrap();
        let c = cipher(2, key.clone());
        init_empty(f.as_file(), &c).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8 | 1).collect();
        write_at(f.as_file(), &c, 0, &data).unwrap();
        sync(f.as_file(), &c, false).unwrap();
        let synced = std::fs::read(f.path()).unwrap();
        // The shrink's record reaches the disk, its set_len does not.
        recorder::start();
        truncate(f.as_file(), &c, 0).unwrap();
        let log = recorder::take();
        let mut bytes = synced.clone();
        recorder::replay(&mut bytes, &log[..1]);
        std::fs::write(f.path(), &bytes).unwrap();
        // Remount: the synced state; then an append that crashes after its
        // first write (the dirty length).
        let c2 = cipher(2, key.clone());
        assert_eq!(read_at(f.as_file(), &c2, 0, 1 << 20).unwrap(), data);
        recorder::start();
        write_at(f.as_file(), &c2, 10_000, &[7; 9000]).unwrap();
        let log = recorder::take();
        for n in 0..=log.len() {
            let mut b = bytes.clone();
            recorder::replay(&mut b, &log[..n]);
            let g = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(g.path(), &b).unwrap();
            let got = read_at(g.as_file(), &cipher(2, key.clone()), 0, 1 << 20).unwrap();
            assert!(
                got.len() >= 10_000,
                "crash after write {n}: {} bytes",
                got.len()
            );
            assert!(
                got[..10_000] == data[..],
                "crash after write {n}: synced bytes lost"
            );
        }
    }

    /// Overwrites inside the full blocks are staged (FORMAT.md §5b.5): a
    /// crash in them, even in the middle of a block's in-place write,
    /// leaves the file as before or after, never a block failing.
    #[test]
    fn v2_no_crash_point_of_an_overwrite_tears_a_block() {
        for synced in [8192usize, 20_000] {
            crash_everywhere(
                synced,
                &[
                    &|f, c| write_at(f, c, 10, &[0xA1; 100]).unwrap(),
                    &|f, c| write_at(f, c, 4096, &[0xB2; 4096]).unwrap(),
                    &|f, c| write_at(f, c, 100, &[0xC3; 9000]).unwrap(),
                    &|f, c| write_at(f, c, (synced - 100) as u64, &[0xD4; 6000]).unwrap(),
                    &|f, c| sync(f, c, true).unwrap(),
                    &|f, c| write_at(f, c, 0, &vec![0xE5; 300_000]).unwrap(),
                    &|f, c| truncate(f, c, 5000).unwrap(),
                    &|f, c| write_at(f, c, 0, &[0xF6; 4096]).unwrap(),
                ],
            );
        }
    }

    /// The "truncate up and down" scenario of tests/durability.rs.
    #[test]
    fn v2_no_crash_point_of_truncates_up_and_down_tears_synced_data() {
        crash_everywhere(
            6000,
            &[
                &|f, c| truncate(f, c, 100_000).unwrap(),
                &|f, c| sync(f, c, false).unwrap(),
                &|f, c| write_at(f, c, 99_990, b"end of hole").unwrap(),
                &|f, c| truncate(f, c, 5000).unwrap(),
                &|f, c| sync(f, c, false).unwrap(),
                &|f, c| truncate(f, c, 4096).unwrap(),
                &|f, c| truncate(f, c, 9000).unwrap(),
                &|f, c| sync(f, c, false).unwrap(),
                &|f, c| truncate(f, c, 0).unwrap(),
                &|f, c| sync(f, c, false).unwrap(),
            ],
        );
    }

    #[test]
    fn v2_no_crash_point_of_an_append_tears_synced_data() {
        for synced in [0usize, 1, 4095, 4096, 6000, 8192, 10_000] {
            for add in [1usize, 100, 2200, 4096, 5000, 300_000] {
                let data: Vec<u8> = (0..add).map(|i| (i % 251) as u8 ^ 0x5a).collect();
                crash_everywhere(
                    synced,
                    &[
                        &|f, c| write_at(f, c, synced as u64, &data).unwrap(),
                        &|f, c| write_at(f, c, (synced + add) as u64, b"and more").unwrap(),
                        &|f, c| sync(f, c, true).unwrap(),
                        &|f, c| write_at(f, c, (synced + add + 20) as u64, b"gap").unwrap(),
                    ],
                );
            }
        }
    }

    #[test]
    fn v2_no_crash_point_of_a_truncate_or_tail_overwrite_tears_synced_data() {
        for synced in [1usize, 4096, 6000, 10_000, 20_000] {
            for new in [0u64, 1, 4095, 4096, 5000, 9000, 50_000, 3 << 20] {
                crash_everywhere(synced, &[&|f, c| truncate(f, c, new).unwrap()]);
            }
            // Overwrite inside the tail (the last, partial block) or of the
            // last full block's end and the tail.
            let at = synced - synced % 4096;
            let over = vec![0xEE; synced - at];
            crash_everywhere(synced, &[&|f, c| write_at(f, c, at as u64, &over).unwrap()]);
            // Shrink, then grow over the same range: no stale block comes back.
            crash_everywhere(
                synced,
                &[
                    &|f, c| truncate(f, c, 10).unwrap(),
                    &|f, c| truncate(f, c, synced as u64 + 8192).unwrap(),
                    &|f, c| write_at(f, c, synced as u64 + 9000, b"x").unwrap(),
                ],
            );
        }
    }
}
