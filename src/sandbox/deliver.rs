//! Outputs staged, then delivered (docs/RUN.md "Outputs"): the analysis
//! writes into a private tmpfs of `--out-quota` mounted at its `--out`
//! (`nosuid,nodev,noexec`); when the run is over — every process of it
//! gone, so nothing changes the staged tree any more — tresor copies into
//! the real `--out` only regular files and directories, with permission
//! bits only (no setuid, setgid or sticky bit), and names what it refused:
//! symlinks, device nodes, fifos, sockets.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What a delivery did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Regular files copied.
    pub files: u64,
    /// Directories made (or already there).
    pub dirs: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Entries not delivered: path relative to `--out`, and why.
    pub refused: Vec<(PathBuf, &'static str)>,
}

fn kind(ft: &std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "a symlink"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device node"
    } else if ft.is_fifo() {
        "a fifo"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Copies the staged tree `from` (a directory no process can change any
/// more) into `to`. Files already in `to` with the same name are replaced;
/// a symlink or anything but a directory in the way of a directory is
/// refused, never followed.
pub fn deliver(from: &Path, to: &Path) -> io::Result<Delivery> {
    let mut d = Delivery::default();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(from.join(&rel))?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let r = rel.join(e.file_name());
            let src = from.join(&r);
            let dst = to.join(&r);
            let meta = std::fs::symlink_metadata(&src)?;
            let ft = meta.file_type();
            // Permission bits only: never setuid, setgid or sticky.
            let mode = meta.permissions().mode() & 0o777;
            if ft.is_dir() {
                match std::fs::symlink_metadata(&dst) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        d.refused
                            .push((r, "something other than a directory is in its place"));
                        continue;
                    }
                    Err(_) => std::fs::DirBuilder::new().mode(mode | 0o700).create(&dst)?,
                }
                d.dirs += 1;
                todo.push(r);
            } else if ft.is_file() {
                if std::fs::symlink_metadata(&dst).is_ok_and(|m| !m.is_file()) {
                    d.refused
                        .push((r, "something other than a file is in its place"));
                    continue;
                }
                let mut input = std::fs::File::open(&src)?;
                let mut output = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(mode)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&dst)?;
                d.bytes += io::copy(&mut input, &mut output)?;
                output.set_permissions(std::fs::Permissions::from_mode(mode))?;
                d.files += 1;
            } else {
                d.refused.push((r, kind(&ft)));
            }
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_and_dirs_without_special_bits() {
        let t = tempfile::tempdir().unwrap();
        let (from, to) = (t.path().join("from"), t.path().join("to"));
        std::fs::create_dir_all(from.join("sub")).unwrap();
        std::fs::create_dir(&to).unwrap();
        std::fs::write(from.join("a.txt"), "aaa").unwrap();
        std::fs::write(from.join("sub/b.bin"), "bb").unwrap();
        std::fs::set_permissions(
            from.join("sub/b.bin"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/shadow", from.join("link")).unwrap();
        nix::unistd::mkfifo(&from.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let d = deliver(&from, &to).unwrap();
        assert_eq!((d.files, d.dirs, d.bytes), (2, 1, 5));
        assert_eq!(std::fs::read(to.join("sub/b.bin")).unwrap(), b"bb");
        let mode = std::fs::metadata(to.join("sub/b.bin"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        assert!(std::fs::symlink_metadata(to.join("link")).is_err());
        assert!(std::fs::symlink_metadata(to.join("fifo")).is_err());
        let refused: Vec<_> = d
            .refused
            .iter()
            .map(|(p, w)| (p.to_str().unwrap(), *w))
            .collect();
        assert_eq!(refused, [("fifo", "a fifo"), ("link", "a symlink")]);
    }

    #[test]
    fn a_symlink_in_the_way_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let (from, to, victim) = (
            t.path().join("from"),
            t.path().join("to"),
            t.path().join("v"),
        );
        std::fs::create_dir_all(&from).unwrap();
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(from.join("x"), "new").unwrap();
        std::fs::write(&victim, "old").unwrap();
        std::os::unix::fs::symlink(&victim, to.join("x")).unwrap();
        let d = deliver(&from, &to).unwrap();
        assert_eq!(d.files, 0);
        assert_eq!(std::fs::read(&victim).unwrap(), b"old");
        assert_eq!(d.refused.len(), 1);
    }
}
