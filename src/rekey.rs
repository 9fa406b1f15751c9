//! `tresor rekey`: re-encrypts what is left of older key epochs in a data
//! group under its current epoch, after a revocation rotated the key.
//!
//! The work is done by the administrator (whose PSE holds every epoch key)
//! directly on the backing tree, in three passes:
//!
//! 1. **Scan**: walk the tree, delete temporaries of an interrupted earlier
//!    run (`.tresor-rekey-*`, only ever extra copies), note every file,
//!    symlink and directory still at an older epoch.
//! 2. **Contents**: each old file is copied block by block into a new file
//!    (fresh file id, current epoch) under a temporary name in the same
//!    directory, with mode, owner, times and user attributes (re-sealed
//!    with the current name key), fsynced, then renamed over the original.
//!    Symlinks likewise. A crash leaves the old file or the new one.
//! 3. **Names**, deepest directories first: a new `tresor.dirid.next`
//!    (current epoch, new random id) is written, every entry is renamed from
//!    its old-key name to its new-key name (long names: the new side file
//!    first, the old one removed after), then `tresor.dirid.next` is renamed
//!    over `tresor.dirid`. Every entry decrypts under exactly one of the two
//!    ids, so a re-run after a crash knows which are done and finishes.
//!
//! While a directory is between its first entry rename and the final swap,
//! a running mount (which only reads `tresor.dirid`) would not list the
//! renamed entries; so rekey refuses to run while the store is mounted on
//! this machine, and takes a lock so two runs never interleave.
//!
//! Hard links: the names of a multiply linked file are all found in the
//! tree; the file is re-encrypted once, a journal (`tresor.rekey-links` in
//! the group root: the new copy's temporary name and file id, every name)
//! is written, and every name is re-linked to the new copy. A re-run after
//! a crash finishes the journal first, so the names stay one file. If some
//! links lie outside the data group's tree the file is left as it is (a
//! warning): it cannot be replaced for all of them.

use crate::directory::Body;
use crate::format::content::{DirId, FileHeader, FILE_ID_LEN, HEADER_LEN};
use crate::format::names::{self as fnames, Entry, DIRID_FILE, LONG_SUFFIX};
use crate::keyring::{EpochKey, GroupKeys};
use crate::pse::Pse;
use crate::store::{Store, StoreError};
use crate::vfs::content::{self, FileCipher};
use crate::vfs::names;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Prefix of every temporary name rekey creates; `format::names::classify`
/// treats it as internal, so a mount never shows it.
pub const TEMP_PREFIX: &str = ".tresor-rekey-";
/// The next directory id of a directory whose names are being re-encrypted.
pub const DIRID_NEXT: &str = "tresor.dirid.next";
/// Journal of a hard-linked file whose names are being re-linked, in the
/// group's root directory (internal: `tresor.` prefix).
pub const RELINK_JOURNAL: &str = "tresor.rekey-links";
/// Plaintext bytes copied per step (a multiple of the block size).
const CHUNK: usize = 1 << 20;
/// Extended attributes of ours on backing files.
const XATTR_OURS: &str = "user.tresor.";

/// Errors that stop a rekey as a whole (per-file problems go to the report).
#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    /// The store, its directory or the key file.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An I/O error on a path of the store.
    #[error("{path}: {err}")]
    Io {
        /// Path that failed.
        path: PathBuf,
        /// The error.
        err: io::Error,
    },
    /// The admin's PSE lacks a key rekey needs.
    #[error("{0}")]
    NoKey(String),
    /// Another rekey holds the data group's lock.
    #[error("another `tresor rekey` is running on data group {0}; wait for it to finish")]
    Busy(String),
    /// The store is mounted here: renames would confuse the running mount.
    #[error("the store is mounted at {0}; unmount it first (`tresor umount {0}`): rekey renames entries under the mount's feet")]
    Mounted(String),
    /// The hard-link journal cannot be used.
    #[error("{path}: {what}; the names it lists may now be separate copies — check them, delete the journal and run rekey again")]
    Journal {
        /// The journal.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The caller's interrupt hook asked to stop (a simulated crash).
    #[error("interrupted; run `tresor rekey` again to finish")]
    Interrupted,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> RekeyError + '_ {
    move |err| RekeyError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// What a rekey did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// The data group.
    pub group: String,
    /// The epoch everything was re-encrypted to.
    pub epoch: u32,
    /// Regular files re-encrypted (a hard-linked file counts once).
    pub files: u64,
    /// Symlinks re-encrypted.
    pub symlinks: u64,
    /// Directories whose entry names were re-encrypted.
    pub directories: u64,
    /// Extra names of hard-linked files re-linked to the new copy.
    pub relinked: u64,
    /// Extended attributes re-sealed under the current name key.
    pub xattrs: u64,
    /// Files, symlinks and directories already at the current epoch.
    pub skipped: u64,
    /// Temporaries of an interrupted earlier run that were deleted.
    pub stale_removed: u64,
    /// Things left as they were, with the reason (not failures).
    pub warnings: Vec<String>,
    /// Failures: each object named was left as it was (still readable
    /// with its old key); fix the cause and run rekey again.
    pub errors: Vec<String>,
}

impl Report {
    /// True when nothing failed.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// The final line, e.g. `rekeyed lab: 1,234 files, 5 symlinks, 56 directories to epoch 3 (…)`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "rekeyed {}: {}, {}, {} to epoch {}",
            self.group,
            count(self.files, "file", "files"),
            count(self.symlinks, "symlink", "symlinks"),
            count(self.directories, "directory", "directories"),
            self.epoch
        );
        let mut extra = vec![format!("{} already current", thousands(self.skipped))];
        if self.relinked > 0 {
            extra.push(format!(
                "{} re-linked",
                count(self.relinked, "hard link", "hard links")
            ));
        }
        if self.xattrs > 0 {
            extra.push(format!(
                "{} re-sealed",
                count(self.xattrs, "xattr", "xattrs")
            ));
        }
        if self.stale_removed > 0 {
            extra.push(format!(
                "{} of an interrupted run removed",
                count(self.stale_removed, "leftover", "leftovers")
            ));
        }
        if !self.errors.is_empty() {
            extra.push(format!(
                "{} — those objects keep their old epoch; fix and run again",
                count(self.errors.len() as u64, "error", "errors")
            ));
        }
        s.push_str(&format!(" ({})", extra.join(", ")));
        s
    }
}

/// `n` with thousands separators and the right noun.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// How to run.
#[derive(Default)]
pub struct Options<'a> {
    /// Show a progress bar on stderr (hidden anyway when it is not a terminal).
    pub progress: bool,
    /// Called after every change made to the store; returning `true` stops
    /// the run at once, leaving the store exactly as a crash there would
    /// (used by the crash tests; also a hook for cancellation).
    pub interrupt: Option<&'a dyn Fn() -> bool>,
}

/// Re-encrypts every older-epoch file, symlink, name and user attribute of
/// `group` under its current epoch. `pse` must be the administrator's.
pub fn rekey(
    store: &Store,
    group: &str,
    pse: &Pse,
    opts: &Options<'_>,
) -> Result<Report, RekeyError> {
    store.check_admin(pse)?;
    let dir: Body = store.read_directory(&pse.public.trust_anchor)?;
    let current = dir.need_group(group).map_err(StoreError::from)?.epoch;
    let keys = store.group_keys(group, pse, Some(&dir))?;
    if keys.current().is_none() {
        return Err(RekeyError::NoKey(format!(
            "this PSE holds no key for the current epoch {current} of {group}; rekey needs the administrator's PSE"
        )));
    }
    let root = store.group_dir(group);
    refuse_if_mounted(store.root())?;
    // The lock lives on the group directory itself: nothing to clean up,
    // and it is released when the process dies, however it dies.
    let lock_file = File::open(&root).map_err(io_at(&root))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| match e {
            nix::errno::Errno::EWOULDBLOCK => RekeyError::Busy(group.to_string()),
            e => io_at(&root)(io::Error::from_raw_os_error(e as i32)),
        })?;

    let mut r = Rekey {
        keys,
        current,
        opts,
        report: Report {
            group: group.to_string(),
            epoch: current,
            ..Report::default()
        },
        dirty: BTreeSet::new(),
        root: root.clone(),
        content_version: store.content_version(),
    };
    // An interrupted re-link first: its temporary is the new copy.
    match r.finish_relink() {
        Ok(()) => {}
        Err(Failure::Stop(e)) => return Err(e),
        Err(Failure::Item(what)) => {
            return Err(RekeyError::Journal {
                path: root.join(RELINK_JOURNAL),
                what,
            })
        }
    }
    let scan = r.scan(&root, group)?;
    let total = scan.todo;
    let bar = if opts.progress {
        indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        )
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "rekey {prefix} {bar:30} {pos}/{len} ({eta} left) {wide_msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(group.to_string());
    let res = r.run(&scan, &bar);
    bar.finish_and_clear();
    res?;
    Ok(r.report)
}

/// Opens the store and rekeys `group`, printing warnings, errors and the
/// summary line; the command's exit status should follow [`Report::ok`].
pub fn run_cli(store: &Path, group: &str, pse: &Pse, progress: bool) -> anyhow::Result<Report> {
    use anyhow::Context;
    let s = Store::open(store)?;
    let report = rekey(
        &s,
        group,
        pse,
        &Options {
            progress,
            interrupt: None,
        },
    )
    .with_context(|| format!("rekey of data group {group}"))?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    println!("{}", report.summary());
    Ok(report)
}

/// Refuses when this machine has a tresor mount of the store at `root`.
pub(crate) fn refuse_if_mounted(root: &Path) -> Result<(), RekeyError> {
    let Ok(me) = fs::canonicalize(root) else {
        return Ok(());
    };
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let mut f = line.split(' ');
        let (Some(src), Some(target), Some(fstype)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        // Through fusermount3 the subtype is not always recorded.
        if fstype != "fuse.tresor" && fstype != "fuse" {
            continue;
        }
        let Some(path) = src.strip_prefix("tresor:") else {
            continue;
        };
        if fs::canonicalize(unescape_mount(path)).is_ok_and(|p| p == me) {
            return Err(RekeyError::Mounted(unescape_mount(target)));
        }
    }
    Ok(())
}

/// Undoes the octal escapes (`\040` for a space) of /proc/self/mounts.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(v) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One file or symlink found by the scan.
struct Item {
    path: PathBuf,
    plain: String,
    symlink: bool,
    dev: u64,
    ino: u64,
    nlink: u64,
}

/// One directory found by the scan.
struct DirItem {
    path: PathBuf,
    plain: String,
}

struct Scan {
    /// Pre-order: a directory before its children.
    dirs: Vec<DirItem>,
    items: Vec<Item>,
    /// (dev, ino) → indexes into `items`, for files with several links.
    links: HashMap<(u64, u64), Vec<usize>>,
    /// Work units for the progress bar.
    todo: u64,
}

/// A directory's name state: its id, and the next one while names move.
struct Ids {
    old: DirId,
    next: Option<DirId>,
}

struct Rekey<'o, 'a> {
    keys: GroupKeys,
    current: u32,
    opts: &'o Options<'a>,
    report: Report,
    /// Directories with renamed entries, fsynced before names move.
    dirty: BTreeSet<PathBuf>,
    /// The group's backing root.
    root: PathBuf,
    /// Content format of re-encrypted files (the store's).
    content_version: u16,
}

/// The names of one hard-linked file, re-linked to its new copy.
#[derive(serde::Serialize, serde::Deserialize)]
struct Relink {
    /// Hex file id of the new copy.
    file_id: String,
    /// The new copy's temporary name, relative to the group root.
    temp: String,
    /// Every name of the file, relative to the group root.
    names: Vec<String>,
}

fn random_temp(dir: &Path) -> PathBuf {
    let mut r = [0u8; 8];
    crate::crypto::random_bytes(&mut r);
    dir.join(format!("{TEMP_PREFIX}{}", hex::encode(r)))
}

fn fsync_dir(dir: &Path) -> Result<(), RekeyError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_at(dir))
}

fn parent_of(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("."))
}

fn side_file(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(LONG_SUFFIX);
    PathBuf::from(s)
}

/// Renames without ever replacing an existing entry (falls back to a
/// check-then-rename where the filesystem lacks RENAME_NOREPLACE).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match nix::fcntl::renameat2(
        None,
        from,
        None,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOSYS) => {
            if fs::symlink_metadata(to).is_ok() {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            fs::rename(from, to)
        }
        Err(e) => Err(io::Error::from_raw_os_error(e as i32)),
    }
}

fn read_dirid(path: &Path) -> Result<Option<DirId>, String> {
    match fs::read(path) {
        Ok(b) => DirId::decode(&b)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The encoded name behind backing entry `bname` in `dir`, if it is an entry.
fn encoded_name(dir: &Path, bname: &str) -> Option<Result<String, String>> {
    match fnames::classify(bname) {
        Entry::Internal => None,
        Entry::Short(s) => Some(Ok(s.to_string())),
        Entry::Long(_) => {
            let side = side_file(&dir.join(bname));
            Some(match fs::read_to_string(&side) {
                // The hashed name authenticates its side file's content.
                Ok(s) if fnames::backing_name(&s, crate::crypto::sha256) == bname => Ok(s),
                Ok(_) => Err(format!(
                    "{}: long name does not match its .name file",
                    side.display()
                )),
                Err(e) => Err(format!("{}: {e}", side.display())),
            })
        }
    }
}

impl Rekey<'_, '_> {
    /// Calls the interrupt hook after a change to the store.
    fn step(&self) -> Result<(), RekeyError> {
        match self.opts.interrupt {
            Some(f) if f() => Err(RekeyError::Interrupted),
            _ => Ok(()),
        }
    }

    fn key(&self, epoch: u32) -> Option<&EpochKey> {
        self.keys.epoch(epoch)
    }

    fn cur(&self) -> Result<&EpochKey, RekeyError> {
        self.keys.current().ok_or_else(|| {
            RekeyError::NoKey(format!("no key for the current epoch {}", self.current))
        })
    }

    /// Decrypts an encoded name under the directory's old or next id.
    /// Returns the name and whether it is already under the next id.
    fn decrypt_name(&self, ids: &Ids, encoded: &str) -> Option<(Vec<u8>, bool)> {
        if let Some(n) = ids.next {
            if let Some(k) = self.key(n.epoch) {
                if let Some(p) = names::decrypt(k.names(), &n.id, encoded) {
                    return Some((p, true));
                }
            }
        }
        let k = self.key(ids.old.epoch)?;
        names::decrypt(k.names(), &ids.old.id, encoded).map(|p| (p, false))
    }

    fn ids(&self, dir: &Path) -> Result<Ids, String> {
        let old = read_dirid(&dir.join(DIRID_FILE))?
            .ok_or_else(|| format!("{}: directory has no tresor.dirid", dir.display()))?;
        let next = read_dirid(&dir.join(DIRID_NEXT))?;
        Ok(Ids { old, next })
    }

    // ---- pass 1: scan ----

    fn scan(&mut self, root: &Path, group: &str) -> Result<Scan, RekeyError> {
        let mut s = Scan {
            dirs: Vec::new(),
            items: Vec::new(),
            links: HashMap::new(),
            todo: 0,
        };
        let mut stack = vec![DirItem {
            path: root.to_path_buf(),
            plain: group.to_string(),
        }];
        while let Some(d) = stack.pop() {
            let ids = match self.ids(&d.path) {
                Ok(ids) => ids,
                Err(e) => {
                    self.report.errors.push(format!(
                        "{}: {e}; its contents were left as they were",
                        d.plain
                    ));
                    continue;
                }
            };
            if ids.next.is_some() || ids.old.epoch < self.current {
                s.todo += 1;
            }
            let rd = fs::read_dir(&d.path).map_err(io_at(&d.path))?;
            for e in rd {
                let e = e.map_err(io_at(&d.path))?;
                let bname = e.file_name();
                let Some(bs) = bname.to_str() else { continue };
                let path = e.path();
                if bs.starts_with(TEMP_PREFIX) {
                    // Ours from an interrupted run: a temp copy or an extra
                    // link, never the only copy of anything.
                    let md = fs::symlink_metadata(&path).map_err(io_at(&path))?;
                    let res = if md.is_dir() {
                        fs::remove_dir_all(&path)
                    } else {
                        fs::remove_file(&path)
                    };
                    res.map_err(io_at(&path))?;
                    self.report.stale_removed += 1;
                    continue;
                }
                let plain = match encoded_name(&d.path, bs) {
                    None => continue,
                    Some(Ok(enc)) => match self.decrypt_name(&ids, &enc) {
                        Some((p, _)) => format!("{}/{}", d.plain, String::from_utf8_lossy(&p)),
                        None => format!("{}/[{bs}]", d.plain),
                    },
                    Some(Err(_)) => format!("{}/[{bs}]", d.plain),
                };
                let md = fs::symlink_metadata(&path).map_err(io_at(&path))?;
                let ft = md.file_type();
                if ft.is_dir() {
                    stack.push(DirItem { path, plain });
                } else if ft.is_file() || ft.is_symlink() {
                    let symlink = ft.is_symlink();
                    let header = if symlink {
                        symlink_header(&path).ok()
                    } else {
                        File::open(&path)
                            .ok()
                            .and_then(|f| content::read_header(&f).ok())
                    };
                    let mut first_name = true;
                    if !symlink && md.nlink() > 1 {
                        let names = s.links.entry((md.dev(), md.ino())).or_default();
                        first_name = names.is_empty();
                        names.push(s.items.len());
                    }
                    // A hard-linked file is one unit of work, however many names.
                    if first_name && header.is_none_or(|h| self.outdated(&h, symlink)) {
                        s.todo += 1;
                    }
                    s.items.push(Item {
                        path,
                        plain,
                        symlink,
                        dev: md.dev(),
                        ino: md.ino(),
                        nlink: md.nlink(),
                    });
                }
            }
            s.dirs.push(d);
        }
        Ok(s)
    }

    fn run(&mut self, scan: &Scan, bar: &indicatif::ProgressBar) -> Result<(), RekeyError> {
        // ---- pass 2: contents ----
        let mut linked_done: HashSet<(u64, u64)> = HashSet::new();
        for it in &scan.items {
            bar.set_message(it.plain.clone());
            let res = if it.symlink {
                self.symlink(it)
            } else if it.nlink > 1 {
                if !linked_done.insert((it.dev, it.ino)) {
                    continue;
                }
                let idx = scan
                    .links
                    .get(&(it.dev, it.ino))
                    .cloned()
                    .unwrap_or_default();
                let paths: Vec<&Item> = idx.iter().filter_map(|&j| scan.items.get(j)).collect();
                if paths.len() as u64 != it.nlink {
                    self.report.warnings.push(format!(
                        "{}: has {} hard links but only {} in this data group; left at its epoch",
                        it.plain,
                        it.nlink,
                        paths.len()
                    ));
                    bar.inc(1);
                    continue;
                }
                self.file(it, &paths[1..])
            } else {
                self.file(it, &[])
            };
            match res {
                Ok(true) => bar.inc(1),
                Ok(false) => {}
                Err(Failure::Stop(e)) => return Err(e),
                Err(Failure::Item(msg)) => {
                    bar.inc(1);
                    self.report.errors.push(format!("{}: {msg}", it.plain));
                }
            }
        }
        for d in &scan.dirs {
            match self.xattrs_in_place(&d.path) {
                Ok(()) => {}
                Err(Failure::Stop(e)) => return Err(e),
                Err(Failure::Item(msg)) => self.report.errors.push(format!("{}: {msg}", d.plain)),
            }
        }
        // Renames must be on disk before names move: a lost rename would
        // otherwise resurface an old file after a power cut.
        for d in std::mem::take(&mut self.dirty) {
            fsync_dir(&d)?;
        }
        // ---- pass 3: names, deepest directories first ----
        for d in scan.dirs.iter().rev() {
            bar.set_message(d.plain.clone());
            match self.names(d) {
                Ok(true) => {
                    self.report.directories += 1;
                    bar.inc(1);
                }
                Ok(false) => self.report.skipped += 1,
                Err(Failure::Stop(e)) => return Err(e),
                Err(Failure::Item(msg)) => {
                    bar.inc(1);
                    self.report.errors.push(format!("{}: {msg}", d.plain));
                }
            }
        }
        Ok(())
    }

    // ---- pass 2: contents ----

    /// Re-encrypts one regular file (and re-links `others`, its further
    /// names). Returns whether it was re-encrypted.
    fn file(&mut self, it: &Item, others: &[&Item]) -> Result<bool, Failure> {
        let src = File::open(&it.path).map_err(item_io)?;
        let md = src.metadata().map_err(item_io)?;
        let h = content::read_header(&src).map_err(|e| Failure::Item(e.to_string()))?;
        if !self.outdated(&h, false) {
            self.report.skipped += 1;
            self.xattrs_in_place(&it.path)?;
            return Ok(false);
        }
        let old = self
            .key(h.epoch)
            .ok_or_else(|| Failure::Item(format!("no key for epoch {} in this PSE", h.epoch)))?;
        let oc = FileCipher::new(h, old.file_cipher(&h.file_id));
        let nh = FileHeader {
            version: self.content_version,
            ..new_header(self.current)
        };
        let nc = FileCipher::new(
            nh,
            self.cur().map_err(Failure::Stop)?.file_cipher(&nh.file_id),
        );
        let dir = parent_of(&it.path);
        let tmp = random_temp(dir);
        let out = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(item_io)?;
        let built = (|| -> Result<u64, Failure> {
            content::init_empty(&out, &nc).map_err(|e| Failure::Item(e.to_string()))?;
            let size = content::plain_size(&src, &oc).map_err(|e| Failure::Item(e.to_string()))?;
            if size == 0 {
                // Opens the sealed empty block: a forged empty file is not copied.
                content::read_at(&src, &oc, 0, 1).map_err(|e| Failure::Item(e.to_string()))?;
            }
            let mut off = 0u64;
            while off < size {
                let chunk = content::read_at(&src, &oc, off, CHUNK)
                    .map_err(|e| Failure::Item(e.to_string()))?;
                if chunk.is_empty() {
                    return Err(Failure::Item("file shrank while reading".into()));
                }
                content::write_at(&out, &nc, off, &chunk)
                    .map_err(|e| Failure::Item(e.to_string()))?;
                off += chunk.len() as u64;
            }
            let attrs = self.converted_xattrs(&it.path)?;
            for (n, v) in &attrs.set {
                xattr::set(&tmp, n, v).map_err(item_io)?;
            }
            copy_meta(&out, &md)?;
            out.sync_all().map_err(item_io)?;
            Ok(attrs.resealed)
        })();
        match built {
            Ok(n) => self.report.xattrs += n,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        }
        self.step().map_err(Failure::Stop)?;
        // The original must be the one read: a change by someone else in
        // the meantime wins, and a later run picks the file up again.
        let now = fs::symlink_metadata(&it.path).map_err(item_io)?;
        if now.ino() != md.ino() || now.len() != md.len() || now.mtime_nsec() != md.mtime_nsec() {
            let _ = fs::remove_file(&tmp);
            return Err(Failure::Item(
                "changed while being re-encrypted; left as it is — run rekey again".into(),
            ));
        }
        if !others.is_empty() {
            // Several renames: a journal makes a crash between them
            // resumable, so the names never end up as separate copies.
            let rel = |p: &Path| -> Result<String, Failure> {
                p.strip_prefix(&self.root)
                    .map(|r| r.to_string_lossy().into_owned())
                    .map_err(|_| Failure::Item("outside the data group".into()))
            };
            let mut names = vec![rel(&it.path)?];
            for o in others {
                names.push(rel(&o.path)?);
            }
            let j = Relink {
                file_id: hex::encode(nh.file_id),
                temp: rel(&tmp)?,
                names,
            };
            if let Err(e) = self.write_journal(&j) {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            self.finish_relink()?;
            self.report.files += 1;
            return Ok(true);
        }
        fs::rename(&tmp, &it.path).map_err(item_io)?;
        self.dirty.insert(dir.to_path_buf());
        self.report.files += 1;
        self.step().map_err(Failure::Stop)?;
        Ok(true)
    }

    /// Writes the re-link journal atomically.
    fn write_journal(&self, j: &Relink) -> Result<(), Failure> {
        let bytes = serde_json::to_vec(j).map_err(|e| Failure::Item(e.to_string()))?;
        let tmp = random_temp(&self.root);
        let res = (|| -> io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, self.root.join(RELINK_JOURNAL))
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(item_io(e));
        }
        fsync_dir(&self.root).map_err(Failure::Stop)?;
        self.step().map_err(Failure::Stop)
    }

    /// Points every name in the re-link journal (if any) at the new copy,
    /// removes the temporary and then the journal. Idempotent: a name that
    /// already has the new file id is left alone.
    fn finish_relink(&mut self) -> Result<(), Failure> {
        let jp = self.root.join(RELINK_JOURNAL);
        let bytes = match fs::read(&jp) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Failure::Stop(io_at(&jp)(e))),
        };
        let j: Relink = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Item(format!("malformed ({e})")))?;
        let id = hex::decode(&j.file_id)
            .ok()
            .filter(|i| i.len() == FILE_ID_LEN)
            .ok_or_else(|| Failure::Item("malformed file id".into()))?;
        let inside = |r: &str| -> Result<PathBuf, Failure> {
            let rel = Path::new(r);
            if r.is_empty()
                || !rel
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
            {
                return Err(Failure::Item(format!("path {r:?} leaves the data group")));
            }
            Ok(self.root.join(rel))
        };
        let temp = inside(&j.temp)?;
        let names = j
            .names
            .iter()
            .map(|n| inside(n))
            .collect::<Result<Vec<_>, _>>()?;
        let is_new = |p: &Path| {
            File::open(p)
                .ok()
                .and_then(|f| content::read_header(&f).ok())
                .is_some_and(|h| h.file_id[..] == id[..])
        };
        let have_temp = fs::symlink_metadata(&temp).is_ok();
        let new = if have_temp {
            Some(temp.clone())
        } else {
            names.iter().find(|n| is_new(n)).cloned()
        };
        if let Some(new) = new {
            for (i, n) in names.iter().enumerate() {
                if is_new(n) {
                    continue;
                }
                if fs::symlink_metadata(n).is_err() {
                    self.report.warnings.push(format!(
                        "{}: a name of a hard-linked file vanished during re-linking",
                        n.display()
                    ));
                    continue;
                }
                let t = random_temp(parent_of(n));
                fs::hard_link(&new, &t).map_err(item_io)?;
                self.step().map_err(Failure::Stop)?;
                fs::rename(&t, n).map_err(item_io)?;
                self.dirty.insert(parent_of(n).to_path_buf());
                if i > 0 {
                    self.report.relinked += 1;
                }
                self.step().map_err(Failure::Stop)?;
            }
            if have_temp {
                fs::remove_file(&temp).map_err(item_io)?;
                self.step().map_err(Failure::Stop)?;
            }
        }
        for d in std::mem::take(&mut self.dirty) {
            fsync_dir(&d).map_err(Failure::Stop)?;
        }
        fs::remove_file(&jp).map_err(item_io)?;
        fsync_dir(&self.root).map_err(Failure::Stop)?;
        self.step().map_err(Failure::Stop)
    }

    /// Re-encrypts one symlink's target. Returns whether it did.
    fn symlink(&mut self, it: &Item) -> Result<bool, Failure> {
        let md = fs::symlink_metadata(&it.path).map_err(item_io)?;
        let target = fs::read_link(&it.path).map_err(item_io)?;
        let raw = fnames::decode(&target.to_string_lossy())
            .ok_or_else(|| Failure::Item("symlink target is not base64url".into()))?;
        let h = FileHeader::decode(&raw).map_err(|e| Failure::Item(e.to_string()))?;
        if h.epoch >= self.current {
            self.report.skipped += 1;
            return Ok(false);
        }
        let old = self
            .key(h.epoch)
            .ok_or_else(|| Failure::Item(format!("no key for epoch {} in this PSE", h.epoch)))?;
        let plain = old
            .file_cipher(&h.file_id)
            .open(
                &crate::format::content::block_aad(&h.file_id, 0, true),
                &raw[HEADER_LEN as usize..],
            )
            .map_err(|_| Failure::Item("symlink target failed authentication".into()))?;
        let nh = new_header(self.current);
        let aead = self.cur().map_err(Failure::Stop)?.file_cipher(&nh.file_id);
        let mut new_raw = nh.encode().to_vec();
        new_raw.extend(aead.seal(
            &crate::format::content::block_aad(&nh.file_id, 0, true),
            &plain,
        ));
        let tmp = random_temp(parent_of(&it.path));
        std::os::unix::fs::symlink(fnames::encode(&new_raw), &tmp).map_err(item_io)?;
        let meta = (|| -> io::Result<()> {
            if let Err(e) = std::os::unix::fs::lchown(&tmp, Some(md.uid()), Some(md.gid())) {
                if e.raw_os_error() != Some(libc::EPERM) {
                    return Err(e);
                }
            }
            nix::sys::stat::utimensat(
                None,
                &tmp,
                &nix::sys::time::TimeSpec::new(md.atime(), md.atime_nsec()),
                &nix::sys::time::TimeSpec::new(md.mtime(), md.mtime_nsec()),
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|e| io::Error::from_raw_os_error(e as i32))
        })();
        if let Err(e) = meta {
            let _ = fs::remove_file(&tmp);
            return Err(item_io(e));
        }
        self.step().map_err(Failure::Stop)?;
        fs::rename(&tmp, &it.path).map_err(item_io)?;
        self.dirty.insert(parent_of(&it.path).to_path_buf());
        self.report.symlinks += 1;
        self.step().map_err(Failure::Stop)?;
        Ok(true)
    }

    /// The user attributes of `path` as they should be: ours re-sealed
    /// under the current name key (a current one wins over an older
    /// version of the same attribute), others kept as they are.
    fn converted_xattrs(&self, path: &Path) -> Result<Xattrs, Failure> {
        let cur = self.cur().map_err(Failure::Stop)?;
        let mut out = Xattrs::default();
        let list: Vec<String> = match xattr::list(path) {
            Ok(it) => it.filter_map(|n| n.into_string().ok()).collect(),
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
            Err(e) => return Err(item_io(e)),
        };
        let mut old = Vec::new();
        for n in list.into_iter().filter(|n| n.starts_with("user.")) {
            let Some(v) = xattr::get(path, &n).map_err(item_io)? else {
                continue;
            };
            if !n.starts_with(XATTR_OURS) || names::xattr_plain(cur.names(), &n).is_some() {
                out.set.push((n, v));
            } else {
                old.push((n, v));
            }
        }
        for (n, v) in old {
            let found = (1..self.current).rev().find_map(|e| {
                let k = self.key(e)?;
                names::xattr_plain(k.names(), &n).map(|p| (k, p))
            });
            let Some((k, plain)) = found else {
                // Not ours after all, or from a key we never had: keep it.
                out.set.push((n, v));
                continue;
            };
            let value = k.names().open(n.as_bytes(), &v).map_err(|_| {
                Failure::Item(format!(
                    "extended attribute user.{} failed authentication",
                    String::from_utf8_lossy(&plain)
                ))
            })?;
            let new_name = names::xattr_name(cur.names(), &plain);
            out.removed.push(n);
            out.resealed += 1;
            if out.set.iter().any(|(m, _)| *m == new_name) {
                continue;
            }
            let sealed = cur.names().seal(new_name.as_bytes(), &value);
            out.set.push((new_name, sealed));
            out.added.push(out.set.len() - 1);
        }
        Ok(out)
    }

    /// Re-seals older-epoch user attributes of a file or directory in place:
    /// the new attribute first, then the old one removed (a re-run after a
    /// crash in between re-seals the same value again).
    fn xattrs_in_place(&mut self, path: &Path) -> Result<(), Failure> {
        let x = self.converted_xattrs(path)?;
        for &i in &x.added {
            if let Some((n, v)) = x.set.get(i) {
                xattr::set(path, n, v).map_err(item_io)?;
                self.step().map_err(Failure::Stop)?;
            }
        }
        for n in &x.removed {
            xattr::remove(path, n).map_err(item_io)?;
            self.step().map_err(Failure::Stop)?;
        }
        self.report.xattrs += x.resealed;
        Ok(())
    }

    // ---- pass 3: names ----

    /// Moves every entry name of one directory to a new id under the
    /// current epoch. Returns whether there was anything to do.
    fn names(&mut self, d: &DirItem) -> Result<bool, Failure> {
        let mut did = false;
        // Normally one round; more only if an interrupted run targeted an
        // epoch that has since been superseded by another rotation.
        for _ in 0..64 {
            let mut ids = self.ids(&d.path).map_err(Failure::Item)?;
            let next = match ids.next {
                Some(n) => n,
                None if ids.old.epoch >= self.current => return Ok(did),
                None => {
                    let n = DirId {
                        epoch: self.current,
                        id: random_id(),
                    };
                    self.write_next(&d.path, &n)?;
                    ids.next = Some(n);
                    n
                }
            };
            did = true;
            let old_names = self
                .keys
                .epoch(ids.old.epoch)
                .ok_or_else(|| Failure::Item(format!("no key for epoch {}", ids.old.epoch)))?
                .names();
            let new_names = self
                .keys
                .epoch(next.epoch)
                .ok_or_else(|| Failure::Item(format!("no key for epoch {}", next.epoch)))?
                .names();
            let mut failed = Vec::new();
            let entries: Vec<String> = fs::read_dir(&d.path)
                .map_err(item_io)?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect();
            let present: HashSet<&str> = entries.iter().map(String::as_str).collect();
            for bs in &entries {
                // Side files left by an earlier crash (entry already moved)
                // hold an old-key name that is of no use any more.
                if let Some(entry) = bs.strip_suffix(LONG_SUFFIX) {
                    if bs.starts_with(fnames::LONG_PREFIX) && !present.contains(entry) {
                        let enc = fs::read_to_string(d.path.join(bs)).unwrap_or_default();
                        if names::decrypt(old_names, &ids.old.id, &enc).is_some() {
                            fs::remove_file(d.path.join(bs)).map_err(item_io)?;
                            self.step().map_err(Failure::Stop)?;
                        }
                    }
                    continue;
                }
                let enc = match encoded_name(&d.path, bs) {
                    None => continue,
                    Some(Ok(e)) => e,
                    Some(Err(e)) => {
                        self.report
                            .warnings
                            .push(format!("{}: {e}; entry left as it is", d.plain));
                        continue;
                    }
                };
                if names::decrypt(new_names, &next.id, &enc).is_some() {
                    continue;
                }
                let Some(plain) = names::decrypt(old_names, &ids.old.id, &enc) else {
                    // Already invisible to every mount (moved here or
                    // tampered with); nothing to re-encrypt.
                    self.report.warnings.push(format!(
                        "{}: entry {bs} does not decrypt in this directory; left as it is",
                        d.plain
                    ));
                    continue;
                };
                if let Err(e) = self.move_name(&d.path, bs, &enc, &plain, new_names, &next.id) {
                    match e {
                        Failure::Stop(e) => return Err(Failure::Stop(e)),
                        Failure::Item(m) => {
                            failed.push(format!("{}: {m}", String::from_utf8_lossy(&plain)))
                        }
                    }
                }
            }
            if !failed.is_empty() {
                // Swapping now would hide the entries that did not move.
                return Err(Failure::Item(format!(
                    "names not re-encrypted ({}); the directory keeps both ids until a re-run finishes",
                    failed.join("; ")
                )));
            }
            fsync_dir(&d.path).map_err(Failure::Stop)?;
            fs::rename(d.path.join(DIRID_NEXT), d.path.join(DIRID_FILE)).map_err(item_io)?;
            fsync_dir(&d.path).map_err(Failure::Stop)?;
            self.step().map_err(Failure::Stop)?;
        }
        Err(Failure::Item(
            "directory id keeps changing; run rekey again".into(),
        ))
    }

    /// Writes `tresor.dirid.next` (temp, fsync, rename without replacing).
    fn write_next(&self, dir: &Path, n: &DirId) -> Result<(), Failure> {
        let tmp = random_temp(dir);
        let res = (|| -> io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&tmp)?;
            f.write_all(&n.encode())?;
            f.sync_all()?;
            rename_noreplace(&tmp, &dir.join(DIRID_NEXT))
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(item_io(e));
        }
        fsync_dir(dir).map_err(Failure::Stop)?;
        self.step().map_err(Failure::Stop)
    }

    /// Renames entry `bs` (encoding `enc`, plaintext `plain`) to its name
    /// under the new key and id.
    fn move_name(
        &self,
        dir: &Path,
        bs: &str,
        enc: &str,
        plain: &[u8],
        new_names: &crate::crypto::Aead,
        new_id: &[u8; 16],
    ) -> Result<(), Failure> {
        let new_enc = names::encrypt(new_names, new_id, plain);
        let new_b = fnames::backing_name(&new_enc, crate::crypto::sha256);
        let from = dir.join(bs);
        let to = dir.join(&new_b);
        if new_b != new_enc {
            // The new side file first: the entry never exists without it.
            let side = side_file(&to);
            let tmp = random_temp(dir);
            let res = (|| -> io::Result<()> {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(new_enc.as_bytes())?;
                f.sync_all()?;
                fs::rename(&tmp, &side)
            })();
            if let Err(e) = res {
                let _ = fs::remove_file(&tmp);
                return Err(item_io(e));
            }
            self.step().map_err(Failure::Stop)?;
        }
        rename_noreplace(&from, &to).map_err(item_io)?;
        self.step().map_err(Failure::Stop)?;
        if bs != enc {
            fs::remove_file(side_file(&from)).map_err(item_io)?;
            self.step().map_err(Failure::Stop)?;
        }
        Ok(())
    }
}

/// Why one object was not done.
enum Failure {
    /// Stop the whole run (interrupted, or the store itself failed).
    Stop(RekeyError),
    /// This object only: reported, the run goes on.
    Item(String),
}

fn item_io(e: io::Error) -> Failure {
    Failure::Item(e.to_string())
}

#[derive(Default)]
struct Xattrs {
    /// Every user attribute the file should have, backing name and value.
    set: Vec<(String, Vec<u8>)>,
    /// Indexes into `set` of attributes that are new (re-sealed).
    added: Vec<usize>,
    /// Old-epoch backing names to remove.
    removed: Vec<String>,
    /// How many old-epoch attributes were re-sealed.
    resealed: u64,
}

impl Rekey<'_, '_> {
    /// Whether a file (or symlink) must be re-encrypted: sealed under an
    /// older epoch, or (a file) in another content format than the store's
    /// (`tresor upgrade`).
    fn outdated(&self, h: &FileHeader, symlink: bool) -> bool {
        h.epoch < self.current || (!symlink && h.version != self.content_version)
    }
}

fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    crate::crypto::random_bytes(&mut id);
    id
}

/// A fresh header in format 1: the layout of symlink targets (§6.5);
/// content files take the store's version.
fn new_header(epoch: u32) -> FileHeader {
    let mut file_id = [0u8; FILE_ID_LEN];
    crate::crypto::random_bytes(&mut file_id);
    FileHeader::new(crate::format::content::VERSION_1, epoch, file_id)
}

fn symlink_header(path: &Path) -> Result<FileHeader, String> {
    let target = fs::read_link(path).map_err(|e| e.to_string())?;
    let raw = fnames::decode(&target.to_string_lossy()).ok_or("not base64url")?;
    FileHeader::decode(&raw).map_err(|e| e.to_string())
}

/// Owner, mode and times of the original onto the new copy. Owner first:
/// chown clears set-id bits. Without privilege another owner cannot be
/// kept; the file then belongs to whoever runs rekey (mode kept).
fn copy_meta(out: &File, md: &fs::Metadata) -> Result<(), Failure> {
    if let Err(e) = std::os::unix::fs::fchown(out, Some(md.uid()), Some(md.gid())) {
        if e.raw_os_error() != Some(libc::EPERM) {
            return Err(item_io(e));
        }
    }
    out.set_permissions(fs::Permissions::from_mode(md.mode() & 0o7777))
        .map_err(item_io)?;
    nix::sys::stat::futimens(
        std::os::fd::AsRawFd::as_raw_fd(out),
        &nix::sys::time::TimeSpec::new(md.atime(), md.atime_nsec()),
        &nix::sys::time::TimeSpec::new(md.mtime(), md.mtime_nsec()),
    )
    .map_err(|e| item_io(io::Error::from_raw_os_error(e as i32)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(count(1, "file", "files"), "1 file");
        assert_eq!(count(1234, "file", "files"), "1,234 files");
    }

    #[test]
    fn mount_escapes() {
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert_eq!(unescape_mount("/end\\"), "/end\\");
    }
}
