//! `/proc/self/mountinfo`: the mount table as this process sees it.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Undoes the octal escapes of a mountinfo field (`\040` for a space).
pub fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(o)) => {
                out.push(
                    o.iter()
                        .fold(0u8, |a, c| a.wrapping_mul(8).wrapping_add(c - b'0')),
                );
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The mount point (field 5) and the rest of each line, last mount first.
fn lines_for<'a>(mountinfo: &'a str, mnt: &'a Path) -> impl Iterator<Item = &'a str> + 'a {
    let want = mnt.as_os_str().as_bytes();
    mountinfo
        .lines()
        .rev()
        .filter(move |l| l.split(' ').nth(4).is_some_and(|p| unescape(p) == want))
}

/// The `MAJ:MIN` device of the last mount stacked on `mnt` (an absolute,
/// canonical path).
pub fn device_of(mountinfo: &str, mnt: &Path) -> Option<String> {
    lines_for(mountinfo, mnt)
        .next()
        .and_then(|l| l.split(' ').nth(2))
        .map(str::to_string)
}

/// The file system type and source of the last mount stacked on `mnt`.
pub fn type_and_source<'a>(mountinfo: &'a str, mnt: &'a Path) -> Option<(&'a str, &'a str)> {
    let (_, post) = lines_for(mountinfo, mnt).next()?.split_once(" - ")?;
    let mut f = post.split(' ');
    Some((f.next().unwrap_or(""), f.next().unwrap_or("")))
}

/// Whether any mount in the table is of the device `dev` (`MAJ:MIN`):
/// a bind mount or a moved mount still counts.
pub fn has_device(mountinfo: &str, dev: &str) -> bool {
    mountinfo.lines().any(|l| l.split(' ').nth(2) == Some(dev))
}

/// Watches this process's mount table for one device: the kernel marks
/// the open table when a mount or unmount changes it (`POLLPRI`), so the
/// table is read again only then — not on every look, which would cost
/// a host with thousands of mounts.
pub struct DeviceWatch {
    table: File,
    dev: String,
    /// The first look reads the table: it may have changed between the
    /// caller's reading of the device and the opening of the table.
    first: bool,
}

impl DeviceWatch {
    /// A watch on `dev` (`MAJ:MIN`), from now on.
    pub fn new(dev: String) -> io::Result<DeviceWatch> {
        Ok(DeviceWatch {
            table: File::open("/proc/self/mountinfo")?,
            dev,
            first: true,
        })
    }

    /// `None` if the table has not changed since the last look; else
    /// whether the device is still mounted in it.
    pub fn look(&mut self) -> io::Result<Option<bool>> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.table.as_fd(), PollFlags::POLLPRI)];
        let n = poll(&mut fds, PollTimeout::ZERO).map_err(io::Error::from)?;
        let changed = fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLPRI | PollFlags::POLLERR));
        let first = std::mem::take(&mut self.first);
        if !first && (n == 0 || !changed) {
            return Ok(None);
        }
        let mut info = String::new();
        self.table.rewind()?;
        self.table.read_to_string(&mut info)?;
        Ok(Some(has_device(&info, &self.dev)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 0:63 / /tmp/a\\040b rw,nosuid,nodev - fuse.tresor tresor:/srv/s rw,user_id=0
91 90 0:64 / /tmp/a\\040b rw - fuse.other x rw
92 22 0:65 / /tmp/a rw - tmpfs none rw";

    #[test]
    fn the_last_mount_on_an_escaped_path_wins() {
        let p = Path::new("/tmp/a b");
        assert_eq!(device_of(INFO, p).as_deref(), Some("0:64"));
        assert_eq!(type_and_source(INFO, p), Some(("fuse.other", "x")));
        assert_eq!(
            device_of(INFO, Path::new("/tmp/a")).as_deref(),
            Some("0:65")
        );
        assert_eq!(device_of(INFO, Path::new("/tmp/c")), None);
        assert!(has_device(INFO, "0:63") && has_device(INFO, "0:65"));
        assert!(!has_device(INFO, "0:6") && !has_device(INFO, "63"));
        assert_eq!(unescape("a\\134b\\012"), b"a\\b\n");
    }

    #[test]
    fn a_watch_reads_the_table_first_then_only_on_a_change() {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = device_of(&info, Path::new("/")).expect("/ in mountinfo");
        let mut w = DeviceWatch::new(root).unwrap();
        assert_eq!(w.look().unwrap(), Some(true));
        // Nothing in this namespace was mounted or unmounted since.
        assert_eq!(w.look().unwrap(), None);
        let mut gone = DeviceWatch::new("999999:999999".into()).unwrap();
        assert_eq!(gone.look().unwrap(), Some(false));
    }
}
