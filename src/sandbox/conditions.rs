//! The conditions an analysis runs under, shared by `tresor profile` and
//! `tresor run` so that a profile records what the run will need
//! (docs/PROFILE.md "Under the run's conditions"): the clean environment,
//! the uid mapping of the user namespace, and — for the profile — a wide
//! view of the host, read-only except the directories it writes, with
//! private `/tmp` and `/dev/shm`.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::root::RootPlan;
use super::sys;

/// The uid and gid the analysis has inside its user namespace when tresor
/// was started by root (mapped to root outside, so that it can read root's
/// data and root's FUSE mounts; it holds no capability anywhere).
pub const ROOT_MAPPED_ID: u32 = 65534;

/// Namespaces of a profiling run: those of the run but the pid namespace
/// (the tracer follows the analysis by its host pids).
pub const PROFILE_NAMESPACES: libc::c_int =
    libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWNET;

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::other("a path or variable contains a NUL byte"))
}

/// The analysis's whole environment: nothing of the caller's (no tokens,
/// no `SSH_AUTH_SOCK`, no `LD_PRELOAD`), the same in profile and run.
/// `PWD` is set because shells call `getcwd` only when it is missing.
pub fn clean_env(home: &Path, pwd: Option<&Path>) -> io::Result<Vec<CString>> {
    let var = |name: &str, value: &Path| {
        let mut v = format!("{name}=").into_bytes();
        v.extend_from_slice(value.as_os_str().as_bytes());
        cstring(&v)
    };
    let mut env = vec![
        cstring(b"PATH=/usr/bin:/bin")?,
        cstring(b"LANG=C.UTF-8")?,
        var("HOME", home)?,
    ];
    if let Some(p) = pwd {
        env.push(var("PWD", p)?);
    }
    Ok(env)
}

/// The writes that map the caller's ids into a new user namespace: the
/// caller's own uid and gid outside (so it reads what the caller may read,
/// also in the caller's FUSE mounts); inside the same ids — or, for root,
/// [`ROOT_MAPPED_ID`], which holds no privilege.
pub fn id_maps() -> io::Result<Vec<(CString, Vec<u8>)>> {
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let (in_uid, in_gid) = if nix::unistd::geteuid().is_root() {
        (ROOT_MAPPED_ID, ROOT_MAPPED_ID)
    } else {
        (uid, gid)
    };
    [
        ("/proc/self/setgroups", "deny".to_string()),
        ("/proc/self/uid_map", format!("{in_uid} {uid} 1\n")),
        ("/proc/self/gid_map", format!("{in_gid} {gid} 1\n")),
    ]
    .into_iter()
    .map(|(path, text)| Ok((cstring(path.as_bytes())?, text.into_bytes())))
    .collect()
}

/// What a profiling run sees and may write.
#[derive(Debug, Clone, Default)]
pub struct ProfileView {
    /// Input directories (as `tresor run --data`): read-only.
    pub data: Vec<PathBuf>,
    /// Directories the analysis writes (as `tresor run --out`).
    pub writable: Vec<PathBuf>,
    /// Size of the private `/tmp` and `/dev/shm`, bytes each.
    pub tmp_size: u64,
}

/// Files the profiled program needs that the view must show even below
/// the private trees: the program and the script an interpreter runs.
pub fn program_files(program: &Path, args: &[std::ffi::OsString]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = program.canonicalize().into_iter().collect();
    if super::profile::is_interpreter(program) {
        if let Some(s) = super::profile::Script::of_args(args) {
            files.extend(Path::new(&s.path).canonicalize());
        }
    }
    files
}

/// Everything the profiling child does before the tracing filter and its
/// exec, prepared in the parent: the child only replays it.
pub struct Prelude {
    clear_groups: bool,
    id_maps: Vec<(CString, Vec<u8>)>,
    root: RootPlan,
}

/// A [`ProfileView`] made ready: the prelude, the environment and the
/// working directory of the profiled program.
pub struct Prepared {
    pub prelude: Prelude,
    pub env: Vec<CString>,
    pub cwd: PathBuf,
}

impl ProfileView {
    /// Checks the directories and lays out the view. The working
    /// directory is the caller's where the view has it (as in the run: not
    /// below the private `/tmp` unless in or on the way to a directory
    /// bound there), else the first writable directory, else `/`; `HOME`
    /// is the first writable directory (as `tresor run` sets it to
    /// `--out`), else the working directory.
    pub fn prepare(&self, files: &[PathBuf]) -> Result<Prepared, String> {
        let dirs = |list: &[PathBuf], what: &str| {
            list.iter()
                .map(|d| match d.canonicalize() {
                    Ok(c) if c.is_dir() => Ok(c),
                    Ok(_) => Err(format!("{what} {} is not a directory", d.display())),
                    Err(e) => Err(format!("{what} {}: {e}", d.display())),
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let data = dirs(&self.data, "--data")?;
        let writable = dirs(&self.writable, "--writable")?;
        let cwd = std::env::current_dir()
            .and_then(|c| c.canonicalize())
            .ok()
            .filter(|c| {
                !RootPlan::private(c)
                    || data
                        .iter()
                        .chain(&writable)
                        .any(|d| c.starts_with(d) || d.starts_with(c))
            })
            .or_else(|| writable.first().cloned())
            .unwrap_or_else(|| PathBuf::from("/"));
        let home = writable.first().cloned().unwrap_or_else(|| cwd.clone());
        let root = RootPlan::wide(&data, &writable, files, &cwd, self.tmp_size)
            .map_err(|e| format!("cannot plan the profiling view: {e}"))?;
        Ok(Prepared {
            prelude: Prelude {
                clear_groups: nix::unistd::geteuid().is_root(),
                id_maps: id_maps().map_err(|e| e.to_string())?,
                root,
            },
            env: clean_env(&home, Some(&cwd)).map_err(|e| e.to_string())?,
            cwd,
        })
    }
}

impl Prelude {
    /// In the forked child (raw syscalls on prepared memory): a user
    /// namespace with the run's uid mapping, the run's namespaces but pid,
    /// the wide view, no capability left.
    pub fn enter(&self) -> io::Result<()> {
        if self.clear_groups {
            sys::clear_groups()?;
        }
        sys::unshare(PROFILE_NAMESPACES)?;
        for (path, data) in &self.id_maps {
            sys::write_file(path, data)?;
        }
        self.root.build().map_err(|(_, e)| e)?;
        sys::drop_capabilities()
    }
}
