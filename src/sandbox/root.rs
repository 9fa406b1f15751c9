//! The analysis's own root (docs/RUN.md, step `root`): a fresh tmpfs with
//! read-only bind mounts of exactly what the profile needs to run — the
//! program, its loader, the libraries and configuration files it read —
//! and of the run's `--data` (read-only) and `--out` (read-write); its own
//! `/proc`, a minimal `/dev` and private, size-limited `/tmp` and
//! `/dev/shm`. Everything else of the host (homes, `/run` and the control
//! sockets in it, stores, PSEs, the data of earlier runs) is simply not
//! there.
//!
//! [`RootPlan::new`] decides, in the parent, what the view holds and lays
//! out every mount as prepared C strings ([`RootOp`]); the forked child
//! only replays them ([`RootPlan::build`], raw syscalls). The construction
//! follows bubblewrap: a tmpfs on `/tmp` of the (private) mount namespace
//! becomes the root with the host's at `/oldroot`; the view is built in
//! `/newroot` from `/oldroot/…`; a second `pivot_root` into `/newroot` and
//! a lazy unmount drop the host's root entirely.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::profile::Profile;
use super::sys;

/// The only trees a profile's paths are taken from: installed software
/// and its configuration. An analysis reads data only through `--data`:
/// whatever else its profiling run read — that run's inputs, a PSE in a
/// home, a store, a control socket under `/run` — is not carried into the
/// run, wherever it lies.
pub const SYSTEM_TREES: &[&str] = &[
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/bin",
    "/sbin",
    "/etc",
    "/opt",
    "/nix/store",
    "/gnu/store",
    "/snap",
];

/// Never from a profile even below a system tree (through a symlink, say):
/// the kernel's trees (the run gets its own `/proc` and `/dev`), runtime
/// state where control sockets live, temporary directories (the run gets
/// private ones) and the places user data lives.
pub const NEVER_FROM_PROFILE: &[&str] = &[
    "/proc", "/sys", "/dev", "/run", "/var", "/tmp", "/home", "/root", "/mnt", "/media", "/srv",
];

/// Device nodes the view's `/dev` holds (bound from the host's).
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];

/// The base tmpfs (the new root's skeleton of directories and symlinks).
const BASE_TMPFS: &str = "mode=0755,size=1m,nr_inodes=65536";
/// The view's `/dev` (device nodes are bind mounts, symlinks inline).
const DEV_TMPFS: &str = "mode=0755,size=64k,nr_inodes=64";

/// How a path is in the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// A directory of the skeleton: its name exists, and the names of
    /// what else is in the view below it; nothing of the host's.
    List,
    /// Bound read-only, not executable (the run's `--data`).
    Data,
    /// Bound read-only.
    Read,
    /// Bound read-only, executable (programs, loaders, libraries).
    ReadExec,
    /// Bound read-write (`--out`), nosuid, nodev, noexec.
    Write,
}

/// One path in the view, at the same (canonical) path as on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    pub access: Access,
    pub is_dir: bool,
}

/// One step of building the root, prepared before the fork.
#[derive(Debug)]
pub enum RootOp {
    Mount {
        src: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// `mount_setattr`: add `MOUNT_ATTR_*` flags.
    Attr {
        target: CString,
        set: u64,
        recursive: bool,
    },
    Mkdir(CString, libc::mode_t),
    Symlink {
        target: CString,
        link: CString,
    },
    Touch(CString),
    Chdir(CString),
    PivotRoot {
        new_root: CString,
        put_old: CString,
    },
    Detach(CString),
}

impl RootOp {
    /// What the step does, for an error message.
    pub fn describe(&self) -> String {
        let s = |c: &CString| c.to_string_lossy().into_owned();
        let o = |c: &Option<CString>| c.as_ref().map_or("none".to_string(), s);
        match self {
            RootOp::Mount {
                src,
                target,
                fstype,
                flags,
                ..
            } => format!(
                "mount({}, {}, {}, {flags:#x})",
                o(src),
                s(target),
                o(fstype)
            ),
            RootOp::Attr { target, set, .. } => format!("mount_setattr({}, {set:#x})", s(target)),
            RootOp::Mkdir(p, _) => format!("mkdir({})", s(p)),
            RootOp::Symlink { target, link } => format!("symlink({} -> {})", s(link), s(target)),
            RootOp::Touch(p) => format!("creating the mount point {}", s(p)),
            RootOp::Chdir(p) => format!("chdir({})", s(p)),
            RootOp::PivotRoot { new_root, put_old } => {
                format!("pivot_root({}, {})", s(new_root), s(put_old))
            }
            RootOp::Detach(p) => format!("umount2({}, MNT_DETACH)", s(p)),
        }
    }

    fn run(&self) -> io::Result<()> {
        match self {
            RootOp::Mount {
                src,
                target,
                fstype,
                flags,
                data,
            } => sys::mount(
                src.as_deref(),
                target,
                fstype.as_deref(),
                *flags,
                data.as_deref(),
            ),
            RootOp::Attr {
                target,
                set,
                recursive,
            } => sys::mount_setattr(target, *set, *recursive),
            RootOp::Mkdir(p, mode) => sys::mkdir(p, *mode),
            RootOp::Symlink { target, link } => sys::symlink(target, link),
            RootOp::Touch(p) => sys::touch(p),
            RootOp::Chdir(p) => sys::chdir(p),
            RootOp::PivotRoot { new_root, put_old } => sys::pivot_root(new_root, put_old),
            RootOp::Detach(p) => sys::detach(p),
        }
    }
}

/// What goes into the view.
pub struct Inputs<'a> {
    pub profile: &'a Profile,
    /// The program, canonical.
    pub program: &'a Path,
    /// The script an interpreter runs (its first argument), canonical.
    pub script: Option<&'a Path>,
    /// ELF loaders that exist on this machine.
    pub loaders: &'a [&'a str],
    /// `--data` as given (made absolute) and canonical.
    pub data: &'a [(PathBuf, PathBuf)],
    /// `--out` as given (made absolute) and canonical.
    pub out: &'a (PathBuf, PathBuf),
    /// The caller's working directory, if it is to be kept.
    pub cwd: Option<&'a Path>,
    /// Size of the private `/tmp` and `/dev/shm`, bytes each.
    pub tmp_size: u64,
    /// Bytes of the staging tmpfs mounted at `--out` (docs/RUN.md
    /// "Outputs"); `None` binds the real `--out` read-write instead.
    pub out_quota: Option<u64>,
}

/// The view and the steps that build it.
#[derive(Debug)]
pub struct RootPlan {
    /// What is in the view (for Landlock and the docs' tests).
    pub entries: Vec<Entry>,
    /// Symlinks recreated in the view: (link, target).
    pub symlinks: Vec<(PathBuf, PathBuf)>,
    pub ops: Vec<RootOp>,
    /// The working directory: the caller's if it is in the view, else
    /// `--out`.
    pub cwd: PathBuf,
}

fn under(p: &Path, tree: &str) -> bool {
    p.starts_with(tree)
}

/// Whether a profile path stays out of the view (see [`SYSTEM_TREES`]).
pub fn never_from_profile(p: &Path) -> bool {
    !SYSTEM_TREES.iter().any(|t| under(p, t)) || NEVER_FROM_PROFILE.iter().any(|t| under(p, t))
}

/// Directories a profile that saw many files in them still never gets
/// whole: only the files it lists are bound there.
fn never_whole(dir: &Path) -> bool {
    dir == Path::new("/") || under(dir, "/etc") || never_from_profile(dir)
}

/// Resolves `p` (absolute) component by component the way the kernel
/// does, recording every symlink met (link location, its target). Returns
/// the canonical path, or `None` if it does not exist or loops.
pub fn resolve(p: &Path, links: &mut Vec<(PathBuf, PathBuf)>) -> Option<PathBuf> {
    let mut todo: std::collections::VecDeque<std::ffi::OsString> =
        std::collections::VecDeque::new();
    let push_front = |todo: &mut std::collections::VecDeque<std::ffi::OsString>, q: &Path| {
        let parts: Vec<_> = q
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect();
        for part in parts.into_iter().rev() {
            todo.push_front(part);
        }
    };
    push_front(&mut todo, p);
    let mut cur = PathBuf::from("/");
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&c);
        let meta = std::fs::symlink_metadata(&next).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = std::fs::read_link(&next).ok()?;
            if !links.iter().any(|(l, _)| *l == next) {
                links.push((next.clone(), target.clone()));
            }
            if target.is_absolute() {
                cur = PathBuf::from("/");
            }
            push_front(&mut todo, &target);
        } else {
            cur = next;
        }
    }
    Some(cur)
}

fn c(p: impl AsRef<[u8]>) -> io::Result<CString> {
    CString::new(p.as_ref()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a path of the view contains a NUL byte",
        )
    })
}

fn prefixed(prefix: &str, p: &Path) -> io::Result<CString> {
    let mut v = prefix.as_bytes().to_vec();
    v.extend_from_slice(p.as_os_str().as_bytes());
    c(v)
}

impl RootPlan {
    /// Decides the view and lays out the steps that build it.
    pub fn new(inp: &Inputs<'_>) -> io::Result<RootPlan> {
        let mut links = Vec::new();
        // canonical path → (access, is_dir)
        let mut want: BTreeMap<PathBuf, (Access, bool)> = BTreeMap::new();
        let mut add =
            |links: &mut Vec<(PathBuf, PathBuf)>, p: &Path, access: Access, from_profile: bool| {
                if from_profile && never_from_profile(p) {
                    return;
                }
                let Some(canon) = resolve(p, links) else {
                    return;
                };
                if from_profile && never_from_profile(&canon) {
                    return;
                }
                let Ok(meta) = std::fs::metadata(&canon) else {
                    return;
                };
                // Only files and directories: no sockets, fifos or devices.
                if !(meta.is_file() || meta.is_dir()) {
                    return;
                }
                let access = if access == Access::List && !meta.is_dir() {
                    return;
                } else {
                    access
                };
                let e = want.entry(canon).or_insert((access, meta.is_dir()));
                e.0 = e.0.max(access);
            };
        add(&mut links, inp.program, Access::ReadExec, false);
        if let Some(sc) = inp.script {
            add(&mut links, sc, Access::Read, false);
        }
        for l in inp.loaders {
            add(&mut links, Path::new(l), Access::ReadExec, false);
        }
        for (dir, da) in &inp.profile.paths {
            let dirp = Path::new(dir);
            let exec = da.access.exec;
            // Bound whole: a directory where the profile saw more files
            // than it lists, and one it opened itself (listed: programs
            // then stat names in it they never open — Python's imports).
            let listed = da.files.is_empty();
            if (da.access.read || exec) && (da.more_files || listed) && !never_whole(dirp) {
                let a = if exec { Access::ReadExec } else { Access::Read };
                add(&mut links, dirp, a, true);
                continue;
            }
            add(&mut links, dirp, Access::List, true);
            for (name, a) in &da.files {
                if a.read || a.exec {
                    let acc = if a.exec {
                        Access::ReadExec
                    } else {
                        Access::Read
                    };
                    add(&mut links, &dirp.join(name), acc, true);
                    // Python reads __pycache__/X.cpython-311.pyc only if
                    // X.py exists beside it (it stats it, which the
                    // profile does not record): the source comes along.
                    if let Some(src) = python_source(dirp, name) {
                        add(&mut links, &src, Access::Read, true);
                    }
                }
            }
        }
        for (given, _) in inp.data {
            add(&mut links, given, Access::Data, false);
        }
        add(&mut links, &inp.out.0, Access::Write, false);
        // --data is never more than read (a profile that executed a file
        // there gets it bound again, executable, on top).
        for (_, canon) in inp.data {
            if let Some(e) = want.get_mut(canon) {
                if e.0 != Access::Write {
                    e.0 = Access::Data;
                }
            }
        }

        // Bound directories; what lies below one is there already.
        let bound_dirs: Vec<(PathBuf, Access)> = want
            .iter()
            .filter(|(_, (a, d))| *d && *a != Access::List)
            .map(|(p, (a, _))| (p.clone(), *a))
            .collect();
        let covered_by = |p: &Path| -> Option<Access> {
            bound_dirs
                .iter()
                .filter(|(d, _)| p != d && p.starts_with(d))
                .map(|(_, a)| *a)
                .max()
        };
        let mut entries = Vec::new();
        for (p, (access, is_dir)) in &want {
            let keep = match covered_by(p) {
                None => true,
                // What needs execute inside a directory bound without it
                // (--data is noexec; Landlock grants the directory no
                // Execute) and --out inside anything are bound again on
                // top, with their own rights.
                Some(cover) => {
                    *access == Access::Write
                        || (*access == Access::ReadExec && cover != Access::ReadExec)
                }
            };
            if keep {
                entries.push(Entry {
                    path: p.clone(),
                    access: *access,
                    is_dir: *is_dir,
                });
            }
        }
        let symlinks: Vec<(PathBuf, PathBuf)> = links
            .into_iter()
            .filter(|(l, _)| covered_by(l).is_none() && !special(l))
            .collect();

        let mut ops = base()?;
        // The private mounts first: a --data under /tmp is then bound
        // inside the private /tmp.
        let tmp = format!(
            "mode=1777,size={},nr_inodes=1048576",
            inp.tmp_size.max(4096)
        );
        let new = |p: &str| c(format!("/newroot{p}"));
        ops.push(RootOp::Mkdir(new("/tmp")?, 0o755));
        ops.push(RootOp::Mount {
            src: Some(c("tmpfs")?),
            target: new("/tmp")?,
            fstype: Some(c("tmpfs")?),
            flags: libc::MS_NOSUID | libc::MS_NODEV,
            data: Some(c(&tmp)?),
        });
        ops.push(RootOp::Mkdir(new("/dev")?, 0o755));
        ops.push(RootOp::Mount {
            src: Some(c("tmpfs")?),
            target: new("/dev")?,
            fstype: Some(c("tmpfs")?),
            flags: libc::MS_NOSUID | libc::MS_NOEXEC,
            data: Some(c(DEV_TMPFS)?),
        });
        for d in DEVICES {
            ops.push(RootOp::Touch(new(&format!("/dev/{d}"))?));
            ops.push(RootOp::Mount {
                src: Some(c(format!("/oldroot/dev/{d}"))?),
                target: new(&format!("/dev/{d}"))?,
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
            });
            // Read-only: the node stays usable (a device's reads and
            // writes are not the filesystem's), but its mode and owner —
            // the host's own /dev/null — cannot be changed (EROFS).
            ops.push(RootOp::Attr {
                target: new(&format!("/dev/{d}"))?,
                set: sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOEXEC,
                recursive: false,
            });
        }
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            ops.push(RootOp::Symlink {
                target: c(target)?,
                link: new(&format!("/dev/{name}"))?,
            });
        }
        ops.push(RootOp::Mkdir(new("/dev/shm")?, 0o755));
        ops.push(RootOp::Mount {
            src: Some(c("tmpfs")?),
            target: new("/dev/shm")?,
            fstype: Some(c("tmpfs")?),
            flags: libc::MS_NOSUID | libc::MS_NODEV,
            data: Some(c(&tmp)?),
        });
        ops.push(RootOp::Attr {
            target: new("/dev")?,
            set: sys::MOUNT_ATTR_RDONLY,
            recursive: false,
        });
        ops.push(RootOp::Mkdir(new("/proc")?, 0o755));
        ops.push(RootOp::Mount {
            src: Some(c("proc")?),
            target: new("/proc")?,
            fstype: Some(c("proc")?),
            flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data: None,
        });

        // The skeleton: directories (mode 0755) and symlinks, in the
        // base tmpfs (or the private /tmp), never inside a bind mount.
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        let mkdirs = |p: &Path, dirs: &mut BTreeSet<PathBuf>| {
            for a in p.ancestors().collect::<Vec<_>>().into_iter().rev() {
                if a != Path::new("/") && covered_by(a).is_none() {
                    dirs.insert(a.to_path_buf());
                }
            }
        };
        for e in &entries {
            if covered_by(&e.path).is_some() {
                continue;
            }
            if e.is_dir {
                mkdirs(&e.path, &mut dirs);
            } else if let Some(parent) = e.path.parent() {
                mkdirs(parent, &mut dirs);
            }
        }
        for (l, _) in &symlinks {
            if let Some(parent) = l.parent() {
                mkdirs(parent, &mut dirs);
            }
        }
        // Parents sort before children. A directory right under /tmp
        // (a --data or --out below /tmp) gets a small tmpfs of its own,
        // read-only at the end: the private /tmp is the analysis's to
        // write, the way to its --data and --out is not.
        let mut sealed = Vec::new();
        for d in &dirs {
            if !special(d) || d.starts_with("/tmp") {
                ops.push(RootOp::Mkdir(prefixed("/newroot", d)?, 0o755));
            }
            if d.parent() == Some(Path::new("/tmp")) {
                let target = prefixed("/newroot", d)?;
                ops.push(small_tmpfs(target.clone())?);
                sealed.push(target);
            }
        }
        for (l, t) in &symlinks {
            ops.push(RootOp::Symlink {
                target: c(t.as_os_str().as_bytes())?,
                link: prefixed("/newroot", l)?,
            });
        }
        for e in &entries {
            if e.access == Access::List {
                continue;
            }
            if !e.is_dir && covered_by(&e.path).is_none() {
                ops.push(RootOp::Touch(prefixed("/newroot", &e.path)?));
            }
            if let (Access::Write, Some(quota)) = (e.access, inp.out_quota) {
                // The staging directory: private, size-limited, emptied
                // with the run; tresor delivers from it.
                ops.push(RootOp::Mount {
                    src: Some(c("tmpfs")?),
                    target: prefixed("/newroot", &e.path)?,
                    fstype: Some(c("tmpfs")?),
                    flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    data: Some(c(format!(
                        "mode=0755,size={},nr_inodes=1048576",
                        quota.max(4096)
                    ))?),
                });
                continue;
            }
            let target = prefixed("/newroot", &e.path)?;
            ops.push(RootOp::Mount {
                src: Some(prefixed("/oldroot", &e.path)?),
                target: prefixed("/newroot", &e.path)?,
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REC,
                data: None,
            });
            let set = match e.access {
                Access::Write => {
                    sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_NOEXEC
                }
                Access::Data => {
                    sys::MOUNT_ATTR_RDONLY
                        | sys::MOUNT_ATTR_NOSUID
                        | sys::MOUNT_ATTR_NODEV
                        | sys::MOUNT_ATTR_NOEXEC
                }
                _ => sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
            };
            ops.push(RootOp::Attr {
                target,
                set,
                recursive: true,
            });
        }
        ops.extend(sealed.into_iter().map(seal));
        ops.extend(into_newroot()?);
        ops.extend([
            // The skeleton itself: nothing new in / or its directories.
            RootOp::Attr {
                target: c("/")?,
                set: sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
                recursive: false,
            },
        ]);
        let mut plan = RootPlan {
            entries,
            symlinks,
            ops,
            cwd: inp.out.1.clone(),
        };
        // In the view: bound, or a directory of the skeleton on the way
        // to something bound (`tresor run --data data --out out` from
        // the directory holding both: relative paths keep working).
        let in_view = |c: &&Path| {
            plan.contains(c)
                || plan
                    .entries
                    .iter()
                    .any(|e| e.access != Access::List && e.path.starts_with(c))
        };
        if let Some(cwd) = inp.cwd.filter(in_view) {
            plan.cwd = cwd.to_path_buf();
        }
        let cwd = c(plan.cwd.as_os_str().as_bytes())?;
        plan.ops.push(RootOp::Chdir(cwd));
        Ok(plan)
    }

    /// Whether `p` lies in what every view makes private (`/tmp`,
    /// `/dev/shm`): the host's is not there.
    pub fn private(p: &Path) -> bool {
        under(p, "/tmp") || under(p, "/dev/shm")
    }

    /// The view of a profiling run (docs/PROFILE.md): the host's whole
    /// tree, read-only and nosuid; private, size-limited `/tmp` and
    /// `/dev/shm` as in the run; `data` bound read-only and `writable`
    /// read-write at their (canonical) paths, also below `/tmp` (the way
    /// there read-only, as in the run).
    /// `files` (the program, its script) are bound read-only where they
    /// lie below the private trees.
    pub fn wide(
        data: &[PathBuf],
        writable: &[PathBuf],
        files: &[PathBuf],
        cwd: &Path,
        tmp_size: u64,
    ) -> io::Result<RootPlan> {
        let mut ops = base()?;
        ops.push(RootOp::Mount {
            src: Some(c("/oldroot")?),
            target: c("/newroot")?,
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REC,
            data: None,
        });
        ops.push(RootOp::Attr {
            target: c("/newroot")?,
            set: sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID,
            recursive: true,
        });
        let tmp = format!("mode=1777,size={},nr_inodes=1048576", tmp_size.max(4096));
        for dir in ["/tmp", "/dev/shm"] {
            if Path::new(dir).is_dir() {
                ops.push(RootOp::Mount {
                    src: Some(c("tmpfs")?),
                    target: prefixed("/newroot", Path::new(dir))?,
                    fstype: Some(c("tmpfs")?),
                    flags: libc::MS_NOSUID | libc::MS_NODEV,
                    data: Some(c(&tmp)?),
                });
            }
        }
        let mut entries = Vec::new();
        let mut made: BTreeSet<PathBuf> = BTreeSet::new();
        let mut sealed = Vec::new();
        // Files inside a bound directory are there already (and a read-only
        // one could not take a mount point).
        let private_files = files
            .iter()
            .filter(|f| RootPlan::private(f) && f.is_file())
            .filter(|f| !data.iter().chain(writable).any(|d| f.starts_with(d)))
            .map(|f| (f, Access::Read));
        let mut bound: Vec<(&PathBuf, Access)> = data
            .iter()
            .map(|d| (d, Access::Data))
            .chain(writable.iter().map(|d| (d, Access::Write)))
            .chain(private_files)
            .collect();
        // Outer first, so that nothing bound hides what is bound inside it
        // (a --data inside a --writable stays read-only); at one path the
        // read-only binding goes last and wins.
        bound.sort_by_key(|(p, a)| (p.components().count(), *a != Access::Write));
        for (path, access) in bound {
            let is_dir = access != Access::Read;
            // Below the private trees the way to it is made in the private
            // tmpfs; its first directory gets a small tmpfs of its own,
            // sealed read-only at the end (as in the run).
            if RootPlan::private(path) {
                let way = if is_dir {
                    Some(path.as_path())
                } else {
                    path.parent()
                };
                for a in way
                    .into_iter()
                    .flat_map(Path::ancestors)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    if RootPlan::private(a)
                        && a != Path::new("/tmp")
                        && a != Path::new("/dev/shm")
                        && made.insert(a.into())
                    {
                        let target = prefixed("/newroot", a)?;
                        ops.push(RootOp::Mkdir(target.clone(), 0o755));
                        // As in the run: the way to what is bound is not
                        // the analysis's to write (sealed at the end).
                        // (Not what is bound itself: a seal set on it at
                        // the end would land on the binding, on top.)
                        if a != path.as_path()
                            && a.parent().is_some_and(|p| {
                                p == Path::new("/tmp") || p == Path::new("/dev/shm")
                            })
                        {
                            ops.push(small_tmpfs(target.clone())?);
                            sealed.push(target);
                        }
                    }
                }
                if !is_dir {
                    ops.push(RootOp::Touch(prefixed("/newroot", path)?));
                }
            }
            let dir = path;
            let target = prefixed("/newroot", dir)?;
            ops.push(RootOp::Mount {
                src: Some(prefixed("/oldroot", dir)?),
                target: target.clone(),
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REC,
                data: None,
            });
            let set = match access {
                Access::Write => sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
                _ => sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
            };
            ops.push(RootOp::Attr {
                target,
                set,
                recursive: true,
            });
            entries.push(Entry {
                path: dir.clone(),
                access,
                is_dir,
            });
        }
        ops.extend(sealed.into_iter().map(seal));
        ops.extend(into_newroot()?);
        ops.push(RootOp::Chdir(c(cwd.as_os_str().as_bytes())?));
        Ok(RootPlan {
            entries,
            symlinks: Vec::new(),
            ops,
            cwd: cwd.to_path_buf(),
        })
    }

    /// Replays the steps (in the forked child, allocating nothing);
    /// on failure, the index of the step that failed.
    pub fn build(&self) -> Result<(), (usize, io::Error)> {
        for (i, op) in self.ops.iter().enumerate() {
            op.run().map_err(|e| (i, e))?;
        }
        Ok(())
    }

    /// Whether `p` (canonical) is bound into the view, or below something
    /// that is.
    pub fn contains(&self, p: &Path) -> bool {
        self.entries.iter().any(|e| {
            e.access != Access::List && (e.path == p || (e.is_dir && p.starts_with(&e.path)))
        })
    }
}

/// A small tmpfs (the base of the root, or a seal on the way to something
/// bound below `/tmp`): nosuid, nodev.
fn small_tmpfs(target: CString) -> io::Result<RootOp> {
    Ok(RootOp::Mount {
        src: Some(c("tmpfs")?),
        target,
        fstype: Some(c("tmpfs")?),
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: Some(c(BASE_TMPFS)?),
    })
}

/// Makes a small tmpfs on the way to something bound read-only, once
/// everything below it is in place.
fn seal(target: CString) -> RootOp {
    RootOp::Attr {
        target,
        set: sys::MOUNT_ATTR_RDONLY,
        recursive: false,
    }
}

/// The first steps of every view (after bubblewrap): mounts made private
/// (nothing propagates back to the host), a small tmpfs on `/tmp` becomes
/// the root with the host's at `/oldroot`, the view is built in `/newroot`.
fn base() -> io::Result<Vec<RootOp>> {
    Ok(vec![
        RootOp::Mount {
            src: None,
            target: c("/")?,
            fstype: None,
            flags: libc::MS_REC | libc::MS_PRIVATE,
            data: None,
        },
        small_tmpfs(c("/tmp")?)?,
        RootOp::Chdir(c("/tmp")?),
        RootOp::Mkdir(c("newroot")?, 0o755),
        RootOp::Mount {
            src: Some(c("newroot")?),
            target: c("newroot")?,
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REC,
            data: None,
        },
        RootOp::Mkdir(c("oldroot")?, 0o755),
        RootOp::PivotRoot {
            new_root: c("/tmp")?,
            put_old: c("oldroot")?,
        },
        RootOp::Chdir(c("/")?),
    ])
}

/// The last steps: `/newroot` becomes the root, the host's is dropped.
fn into_newroot() -> io::Result<Vec<RootOp>> {
    Ok(vec![
        RootOp::Chdir(c("/newroot")?),
        RootOp::PivotRoot {
            new_root: c(".")?,
            put_old: c(".")?,
        },
        RootOp::Detach(c(".")?),
        RootOp::Chdir(c("/")?),
    ])
}

/// `DIR/X.py` for `DIR/__pycache__/X.TAG.pyc`.
fn python_source(dir: &Path, name: &str) -> Option<PathBuf> {
    if dir.file_name()? != "__pycache__" {
        return None;
    }
    let stem = name.strip_suffix(".pyc")?;
    let module = stem.split('.').next()?;
    Some(dir.parent()?.join(format!("{module}.py")))
}

/// Paths the view makes itself (its /proc, /dev, /tmp).
fn special(p: &Path) -> bool {
    ["/proc", "/dev", "/tmp"].iter().any(|t| under(p, t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::profile::{Access as PA, Mode, Program};
    use crate::sandbox::syscalls::Arch;

    /// A --data inside a --writable is bound after it (so it stays
    /// read-only), and at one path the read-only binding comes last.
    #[test]
    fn wide_view_binds_outer_first_and_read_only_last() {
        let w = PathBuf::from("/tmp/x/w");
        let d = w.join("d");
        let plan = RootPlan::wide(
            &[d.clone(), w.clone()],
            std::slice::from_ref(&w),
            &[],
            Path::new("/"),
            1 << 20,
        )
        .unwrap();
        let binds: Vec<(String, u64)> = plan
            .ops
            .windows(2)
            .filter_map(|o| match o {
                [RootOp::Mount { target, flags, .. }, RootOp::Attr { set, .. }]
                    if flags & libc::MS_BIND != 0 =>
                {
                    Some((target.to_string_lossy().into_owned(), *set))
                }
                _ => None,
            })
            .collect();
        let ro = |s: u64| s & sys::MOUNT_ATTR_RDONLY != 0;
        let at: Vec<_> = binds
            .iter()
            .filter(|(t, _)| t.starts_with("/newroot/tmp"))
            .collect();
        assert_eq!(at.len(), 3, "{binds:?}");
        assert_eq!(at[0].0, "/newroot/tmp/x/w");
        assert!(!ro(at[0].1));
        assert_eq!(at[1].0, "/newroot/tmp/x/w");
        assert!(ro(at[1].1), "the read-only binding of the same path wins");
        assert_eq!(at[2].0, "/newroot/tmp/x/w/d");
        assert!(ro(at[2].1));

        // Bound right under /tmp: no seal of its own (it would land on
        // the binding and make a --writable read-only).
        let top = PathBuf::from("/tmp/top");
        let plan = RootPlan::wide(
            &[],
            std::slice::from_ref(&top),
            &[std::env::current_exe().unwrap()],
            Path::new("/"),
            1 << 20,
        )
        .unwrap();
        let at_top = |op: &RootOp| match op {
            RootOp::Mount { target, .. } | RootOp::Attr { target, .. } => {
                target.to_bytes() == b"/newroot/tmp/top"
            }
            _ => false,
        };
        let ops: Vec<&RootOp> = plan.ops.iter().filter(|o| at_top(o)).collect();
        assert_eq!(ops.len(), 2, "bind and its attributes only: {ops:?}");
        assert!(matches!(ops[1], RootOp::Attr { set, .. } if set & sys::MOUNT_ATTR_RDONLY == 0));
    }

    fn profile() -> Profile {
        Profile::new(
            Arch::native().unwrap_or(Arch::X86_64),
            Program {
                path: "/bin/true".into(),
                sha256: None,
            },
            Mode::Args,
        )
    }

    #[test]
    fn resolve_records_symlinks_and_canonicalises() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("f"), "x").unwrap();
        std::os::unix::fs::symlink("real", d.path().join("link")).unwrap();
        let mut links = Vec::new();
        let canon = resolve(&d.path().join("link/f"), &mut links).unwrap();
        assert_eq!(canon, real.join("f").canonicalize().unwrap());
        assert!(links
            .iter()
            .any(|(l, t)| l.ends_with("link") && t == Path::new("real")));
        assert!(resolve(&d.path().join("nope"), &mut links).is_none());
    }

    #[test]
    fn the_view_holds_the_profile_paths_but_not_data_homes_or_run() {
        let d = tempfile::tempdir().unwrap();
        let (data, out) = (d.path().join("data"), d.path().join("out"));
        std::fs::create_dir(&data).unwrap();
        std::fs::create_dir(&out).unwrap();
        let mut p = profile();
        p.add_path("/etc/hostname", PA::R, false);
        p.add_path("/tmp/earlier-run/input.csv", PA::R, false);
        p.add_path("/home/alice/.tresor/alice.pse", PA::R, false);
        p.add_path("/run/tresor/x.sock", PA::R, false);
        p.add_path("/proc/self/maps", PA::R, false);
        let program = Path::new("/bin/true").canonicalize().unwrap();
        let data = vec![(data.clone(), data.canonicalize().unwrap())];
        let out = (out.clone(), out.canonicalize().unwrap());
        let plan = RootPlan::new(&Inputs {
            profile: &p,
            program: &program,
            script: None,
            loaders: &[],
            data: &data,
            out: &out,
            cwd: None,
            tmp_size: 1 << 20,
            out_quota: None,
        })
        .unwrap();
        assert!(plan.contains(&program));
        assert!(plan.contains(&data[0].1.join("anything")));
        assert!(plan.contains(&out.1));
        if Path::new("/etc/hostname").exists() {
            assert!(plan.contains(&Path::new("/etc/hostname").canonicalize().unwrap()));
            assert!(!plan.contains(Path::new("/etc/shadow")));
        }
        for never in [
            "/tmp/earlier-run/input.csv",
            "/home/alice/.tresor/alice.pse",
            "/run/tresor/x.sock",
            "/proc/self/maps",
        ] {
            assert!(!plan.contains(Path::new(never)), "{never}");
        }
        let out_e = plan.entries.iter().find(|e| e.path == out.1).unwrap();
        assert_eq!(out_e.access, Access::Write);
        let data_e = plan.entries.iter().find(|e| e.path == data[0].1).unwrap();
        assert_eq!(data_e.access, Access::Data);
    }
}
