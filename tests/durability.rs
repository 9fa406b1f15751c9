//! Nothing lost (issue 14): crashes of the driver at every backing write of
//! a scenario, kill -9 during appends, and tampering with format-2 files.
//!
//! The crash points come from the driver's fault-injection hook
//! (`TRESOR_FAULT_ABORT_AFTER_WRITE=N[:torn]`, debug builds only — see
//! docs/DURABILITY.md): the real `tresor mount -f` process aborts right after
//! its N-th backing write to a content file (or in the middle of it). After
//! every crash the store is mounted again and every byte that was fsync'ed
//! must read back, and nothing may read as EIO.

use crate::util::{self, TestStore};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const FAULT_VAR: &str = "TRESOR_FAULT_ABORT_AFTER_WRITE";

fn is_mounted(p: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = p.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*p))
}

/// A driver process of our own (util's `Mount` wants a clean end; these
/// are crashed on purpose).
struct Driver {
    child: Child,
    mnt: PathBuf,
    log: PathBuf,
}

impl Driver {
    /// `tresor mount -f` of the test store at `mnt`, with the fault hook
    /// armed as `fault` (if any).
    fn start(ts: &TestStore, mnt: &Path, fault: Option<&str>) -> Driver {
        fs::create_dir_all(mnt).unwrap();
        let log = mnt.with_extension("log");
        let mut cmd = util::tresor();
        cmd.arg("mount")
            .arg(&ts.store)
            .arg(mnt)
            .arg("--pse")
            .arg(&ts.pse)
            .arg("--passphrase-file")
            .arg(&ts.pass)
            .arg("-f")
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap());
        match fault {
            Some(f) => cmd.env(FAULT_VAR, f),
            None => cmd.env_remove(FAULT_VAR),
        };
        let mut child = cmd.spawn().unwrap();
        let start = Instant::now();
        while !is_mounted(mnt) {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "mount exited ({st}) before it came up; log:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            // A hang guard, not a timing assertion.
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "mount did not come up"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // The mount is listed before the driver has answered the kernel's
        // INIT; an unmount in between ends the driver with exit 1 ("FUSE
        // device disconnected during handshake"). Any answer means INIT
        // is done.
        let _ = fs::metadata(mnt);
        Driver {
            child,
            mnt: mnt.to_path_buf(),
            log,
        }
    }

    /// Whether the driver crashed (is gone without an unmount).
    fn crashed(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Kills the driver (SIGKILL), by its process id.
    fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Waits for the driver to be gone (crashed or killed) and removes the
    /// dead mount.
    fn reap(mut self) -> String {
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            if start.elapsed() > Duration::from_secs(20) {
                // Hang guard: the driver neither crashed nor exited.
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .output();
        if is_mounted(&self.mnt) {
            let _ = std::process::Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mnt)
                .output();
        }
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Unmounts a driver that did not crash; asserts a clean exit.
    fn unmount(mut self) {
        let out = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .output()
            .unwrap();
        assert!(out.status.success(), "fusermount3 -u failed");
        let start = Instant::now();
        let st = loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                break st;
            }
            // Hang guard.
            if start.elapsed() > Duration::from_secs(20) {
                let pid = self.child.id();
                let threads: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
                    .map(|d| {
                        d.filter_map(|t| {
                            let t = t.ok()?.path();
                            Some(fs::read_to_string(t.join("wchan")).unwrap_or_default())
                        })
                        .collect()
                    })
                    .unwrap_or_default();
                panic!(
                    "driver did not exit within 20 s of the unmount (threads wait in {threads:?}); log:\n{}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        assert!(st.success(), "driver exited with {st}; log:\n{log}");
        assert!(!log.contains("panicked"), "driver panicked; log:\n{log}");
    }
}

impl Drop for Driver {
    /// A test that fails midway leaves no driver and no mount behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if is_mounted(&self.mnt) {
            let _ = std::process::Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mnt)
                .output();
        }
    }
}

/// Copies a directory tree (regular files, directories, symlinks).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        let dst = to.join(e.file_name());
        if ft.is_dir() {
            copy_tree(&e.path(), &dst);
            fs::set_permissions(&dst, e.metadata().unwrap().permissions()).unwrap();
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(e.path()).unwrap(), &dst).unwrap();
        } else {
            fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// What a scenario has done so far: the contents of one file after every
/// step it started, and which of them was the last one fsync'ed.
struct Track {
    /// `states[0]` is the content the scenario started from (fsync'ed).
    states: Vec<Vec<u8>>,
    synced: usize,
}

impl Track {
    fn new(start: Vec<u8>) -> Track {
        Track {
            states: vec![start],
            synced: 0,
        }
    }
    fn cur(&self) -> Vec<u8> {
        self.states.last().cloned().unwrap_or_default()
    }
    fn push(&mut self, s: Vec<u8>) {
        self.states.push(s);
    }
    fn synced_now(&mut self) {
        self.synced = self.states.len() - 1;
    }

    /// Checks what a remount reads after a crash: the file reads without
    /// error, every byte the last fsync'ed state holds and no later step
    /// touched is intact, and every other byte is one some later step wrote
    /// (or a zero of an extension not yet written back).
    fn check(&self, got: &[u8]) -> Result<(), String> {
        let later = &self.states[self.synced..];
        let base = &later[0];
        let min = later.iter().map(Vec::len).min().unwrap_or(0);
        let max = later.iter().map(Vec::len).max().unwrap_or(0);
        if got.len() < min || got.len() > max {
            return Err(format!(
                "size {} is outside {min}..={max} (last fsync'ed state: {} bytes)",
                got.len(),
                base.len()
            ));
        }
        for (i, b) in got.iter().enumerate() {
            let ok = later.iter().any(|s| s.get(i) == Some(b)) || (*b == 0 && i >= base.len());
            if !ok {
                let want: Vec<_> = later.iter().map(|s| s.get(i).copied()).collect();
                return Err(format!(
                    "byte {i} reads {b}; the steps since the last fsync held {want:?}"
                ));
            }
        }
        Ok(())
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    util::pseudo_random(seed, len)
}

fn write_at(s: &mut Vec<u8>, off: usize, data: &[u8]) {
    if s.len() < off + data.len() {
        s.resize(off + data.len(), 0);
    }
    s[off..off + data.len()].copy_from_slice(data);
}

/// One step of a scenario through the mount.
enum Step {
    /// pwrite at an offset.
    Write(u64, Vec<u8>),
    /// write with O_APPEND semantics (at the current end).
    Append(Vec<u8>),
    /// ftruncate.
    Truncate(u64),
    /// fsync.
    Sync,
}

struct Scenario {
    name: &'static str,
    /// The file and its content before the scenario (fsync'ed by a clean
    /// mount); `None`: the scenario creates it.
    start: Option<Vec<u8>>,
    steps: Vec<Step>,
}

fn scenarios() -> Vec<Scenario> {
    use Step::*;
    let six = pattern(1, 6000);
    vec![
        Scenario {
            name: "create, write + fsync, write + fsync",
            start: None,
            steps: vec![
                Write(0, pattern(2, 10_000)),
                Sync,
                Write(10_000, pattern(3, 3000)),
                Sync,
            ],
        },
        Scenario {
            name: "append + fsync (4 KiB, 2 MiB, 100 B)",
            start: Some(six.clone()),
            steps: vec![
                Append(pattern(4, 4096)),
                Sync,
                Append(pattern(5, 2 << 20)),
                Sync,
                Append(pattern(6, 100)),
                Sync,
            ],
        },
        Scenario {
            name: "truncate up and down",
            start: Some(six.clone()),
            steps: vec![
                Truncate(100_000),
                Sync,
                Write(99_990, b"end of hole".to_vec()),
                Truncate(5000),
                Sync,
                Truncate(4096),
                Truncate(9000),
                Sync,
                Truncate(0),
                Sync,
            ],
        },
        Scenario {
            name: "overwrite the last block, and inside a full block",
            start: Some(six),
            steps: vec![
                Write(4096, pattern(7, 1904)),
                Sync,
                Write(5000, pattern(8, 3000)),
                Sync,
                Write(4096 + 10, pattern(9, 100)),
                Sync,
                // Inside the full block 0: overwritten in place, staged first.
                Write(10, pattern(12, 100)),
                Sync,
                // The last block full: the next append moves it out of the record.
                Write(7000, pattern(10, 1192)),
                Sync,
                Append(pattern(11, 10)),
                Sync,
            ],
        },
    ]
}

/// Runs the steps on `path`, tracking states; stops at the first error
/// (the driver is gone). Returns the track and whether every step (and the
/// close) succeeded.
fn run_steps(path: &Path, sc: &Scenario) -> (Track, bool) {
    let mut t = Track::new(sc.start.clone().unwrap_or_default());
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(sc.start.is_none())
        .open(path);
    let Ok(f) = f else {
        return (t, false);
    };
    for step in &sc.steps {
        let mut next = t.cur();
        let r: io::Result<()> = match step {
            Step::Write(off, d) => {
                write_at(&mut next, *off as usize, d);
                t.push(next);
                f.write_all_at(d, *off)
            }
            Step::Append(d) => {
                let off = next.len();
                write_at(&mut next, off, d);
                t.push(next);
                f.write_all_at(d, off as u64)
            }
            Step::Truncate(n) => {
                next.resize(*n as usize, 0);
                t.push(next);
                f.set_len(*n)
            }
            Step::Sync => match f.sync_all() {
                Ok(()) => {
                    t.synced_now();
                    Ok(())
                }
                Err(e) => Err(e),
            },
        };
        if r.is_err() {
            return (t, false);
        }
    }
    // close(2) reports what write-back of the last steps met.
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    let closed = nix::unistd::close(fd).is_ok();
    (t, closed)
}

/// Mounts cleanly and reads `rel`; `None` if it does not exist.
fn read_back(ts: &TestStore, mnt: &Path, rel: &str) -> (Option<io::Result<Vec<u8>>>, Driver) {
    let d = Driver::start(ts, mnt, None);
    let p = mnt.join(rel);
    let r = match fs::symlink_metadata(&p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        _ => Some(fs::read(&p)),
    };
    (r, d)
}

/// Every scenario, with the driver crashing after its 1st, 2nd, … backing
/// write (and, separately, in the middle of it), until a run completes
/// without reaching the fault. After each crash: remount, read, check.
#[test]
fn crash_after_every_backing_write_loses_nothing_fsynced() {
    if !util::fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let pristine = ts.dir.path().join("pristine");
    for sc in scenarios() {
        // The starting state, written and fsync'ed by a clean mount.
        fs::remove_dir_all(&pristine).ok();
        {
            let d = Driver::start(&ts, &ts.dir.path().join("setup"), None);
            if let Some(start) = &sc.start {
                let mut f = File::create(d.mnt.join("g/f")).unwrap();
                f.write_all(start).unwrap();
                f.sync_all().unwrap();
            }
            d.unmount();
        }
        copy_tree(&ts.store, &pristine);
        let mut crashes = 0;
        for torn in [false, true] {
            let mut n = 1u64;
            loop {
                // Hang guard for a scenario that never completes.
                assert!(n < 10_000, "{}: no end of backing writes", sc.name);
                fs::remove_dir_all(&ts.store).unwrap();
                copy_tree(&pristine, &ts.store);
                let fault = if torn {
                    format!("{n}:torn")
                } else {
                    n.to_string()
                };
                let mnt = ts.dir.path().join("crash");
                let mut d = Driver::start(&ts, &mnt, Some(&fault));
                let (track, completed) = run_steps(&mnt.join("g/f"), &sc);
                if completed && !d.crashed() {
                    // The fault lies past the scenario's last backing write.
                    d.unmount();
                    break;
                }
                let log = d.reap();
                assert!(
                    log.contains("fault injection: aborting"),
                    "{} (fault {fault}): the driver ended without the planned abort; log:\n{log}",
                    sc.name
                );
                crashes += 1;
                let (got, d) = read_back(&ts, &ts.dir.path().join("check"), "g/f");
                match got {
                    None => assert!(
                        sc.start.is_none() && track.synced == 0,
                        "{} (fault {fault}): the file is gone after the crash",
                        sc.name
                    ),
                    Some(Err(e)) => panic!(
                        "{} (fault {fault}): reading after the crash failed: {e}",
                        sc.name
                    ),
                    Some(Ok(data)) => {
                        if let Err(e) = track.check(&data) {
                            panic!("{} (fault {fault}): {e}", sc.name);
                        }
                    }
                }
                d.unmount();
                n += 1;
            }
        }
        assert!(crashes > 4, "{}: only {crashes} crash points", sc.name);
        eprintln!("{}: {crashes} crash points checked", sc.name);
    }
}

/// kill -9 of the real driver while a program appends 2 MiB at a time with
/// fsync after each: after a remount every fsync'ed byte is there.
#[test]
fn kill_9_during_appends_with_fsync_loses_nothing_fsynced() {
    if !util::fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let rounds = if util::is_ci() { 12 } else { 6 };
    let chunk = 2 << 20;
    for round in 0..rounds {
        let mnt = ts.dir.path().join("mnt");
        let mut d = Driver::start(&ts, &mnt, None);
        let path = mnt.join("g/log.bin");
        let stream_seed = 100 + round as u64;
        let (tx, rx) = std::sync::mpsc::channel::<usize>();
        // The kill lands after this many 64 KiB pieces of the append that
        // follows the first fsync'ed ones: a different point every round.
        let kill_after = (round * 7) % 32;
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || -> usize {
                let mut f = match OpenOptions::new().append(true).create(true).open(&path) {
                    Ok(f) => f,
                    Err(_) => return 0,
                };
                let mut synced = fs::metadata(&path).map(|m| m.len() as usize).unwrap_or(0);
                let mut pieces = 0usize;
                loop {
                    let data = pattern(stream_seed, synced + chunk);
                    for piece in data[synced..].chunks(64 << 10) {
                        if f.write_all(piece).is_err() {
                            return synced;
                        }
                        pieces += 1;
                        if pieces == 2 * 32 + kill_after {
                            let _ = tx.send(synced);
                        }
                    }
                    if f.sync_all().is_err() {
                        return synced;
                    }
                    synced += chunk;
                    if synced >= 6 * chunk {
                        let _ = tx.send(synced);
                        return synced;
                    }
                }
            })
        };
        // Wait for the writer to be in the middle of an append.
        let _ = rx.recv_timeout(Duration::from_secs(60));
        d.kill();
        let synced = writer.join().unwrap();
        d.reap();
        let d = Driver::start(&ts, &mnt, None);
        let got = fs::read(&path)
            .unwrap_or_else(|e| panic!("round {round}: reading after kill -9 failed: {e}"));
        assert!(
            got.len() >= synced,
            "round {round}: {} bytes after the kill, {synced} were fsync'ed",
            got.len()
        );
        let want = pattern(stream_seed, got.len());
        if let Some(i) = (0..synced).find(|&i| got[i] != want[i]) {
            panic!("round {round}: fsync'ed byte {i} (of {synced}) differs after the kill");
        }
        // Bytes past the fsync'ed ones are the stream or zeros of an
        // extension not yet written back.
        for (i, (a, b)) in got.iter().zip(&want).enumerate().skip(synced) {
            assert!(
                a == b || *a == 0,
                "round {round}: byte {i} is {a}, neither {b} nor 0"
            );
        }
        fs::remove_file(&path).unwrap();
        d.unmount();
    }
}

/// Reads the whole of `p` through a read(2) loop (EIO surfaces as an error).
#[allow(dead_code)]
fn read_all(p: &Path) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    File::open(p)?.read_to_end(&mut v)?;
    Ok(v)
}

// ---------------------------------------------------------------------------
// Tampering with format-2 files (through the engine, in process)
// ---------------------------------------------------------------------------

mod tamper {
    use super::*;
    use std::collections::BTreeSet;
    use std::ffi::OsStr;
    use tresor::format::content::v2::{block_offset, ciphertext_size, slot_offset, DATA_START};
    use tresor::format::content::CT_BLOCK_SIZE;
    use tresor::vfs::{Caller, Vfs, VfsError, ROOT};

    fn caller() -> Caller {
        Caller {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    fn engine(ts: &TestStore, root: &Path) -> Vfs {
        let store = tresor::store::Store::open(root).unwrap();
        let pass = fs::read_to_string(&ts.pass).unwrap();
        let pse =
            tresor::pse::open(&fs::read(&ts.pse).unwrap(), pass.trim_end().as_bytes()).unwrap();
        let ring = store.unlock(&pse).unwrap();
        Vfs::new(store, ring, caller()).unwrap()
    }

    fn entries(dir: &Path) -> BTreeSet<PathBuf> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    /// Creates `name` in group g with `data` (fsync'ed); returns its backing path.
    fn create(vfs: &Vfs, root: &Path, name: &str, data: &[u8], size: u64) -> PathBuf {
        let gdir = root.join("groups/g");
        let before = entries(&gdir);
        let g = vfs.lookup(ROOT, OsStr::new("g")).unwrap();
        let (_, fh) = vfs
            .create(caller(), g.ino, OsStr::new(name), 0o600, libc::O_RDWR)
            .unwrap();
        vfs.write(fh, 0, data).unwrap();
        if size != data.len() as u64 {
            let a = vfs.lookup(g.ino, OsStr::new(name)).unwrap();
            vfs.setattr(
                a.ino,
                Some(fh),
                tresor::vfs::SetAttr {
                    size: Some(size),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        vfs.fsync(fh, false).unwrap();
        vfs.release(fh);
        let after = entries(&gdir);
        let new: Vec<_> = after.difference(&before).collect();
        assert_eq!(new.len(), 1, "{new:?}");
        new[0].clone()
    }

    fn read(vfs: &Vfs, name: &str) -> Result<Vec<u8>, VfsError> {
        let g = vfs.lookup(ROOT, OsStr::new("g"))?;
        let a = vfs.lookup(g.ino, OsStr::new(name))?;
        let (fh, _) = vfs.open(a.ino, libc::O_RDONLY)?;
        let mut out = Vec::new();
        let r = loop {
            match vfs.read(fh, out.len() as u64, 1 << 20) {
                Ok(b) if b.is_empty() => break Ok(()),
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => break Err(e),
            }
        };
        vfs.release(fh);
        r.map(|()| out)
    }

    fn edit(p: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let mut b = fs::read(p).unwrap();
        f(&mut b);
        fs::write(p, b).unwrap();
    }

    enum Want {
        Eio,
        Intact,
    }

    /// Decodes a format-2 file by docs/FORMAT.md §5b alone, with the group
    /// key: header, both record slots, the record in force, full blocks.
    fn decode_by_spec(ring: &tresor::keyring::Keyring, raw: &[u8]) -> Vec<u8> {
        assert_eq!(&raw[..4], b"TRSR");
        assert_eq!(u16::from_be_bytes([raw[4], raw[5]]), 2, "content format 2");
        let epoch = u32::from_be_bytes(raw[8..12].try_into().unwrap());
        let id: [u8; 16] = raw[12..28].try_into().unwrap();
        let aead = ring
            .group("g")
            .unwrap()
            .epoch(epoch)
            .unwrap()
            .file_cipher(&id);
        let u64_at = |b: &[u8], i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap());
        let mut records = Vec::new();
        for slot in 0..2usize {
            let at = 28 + slot * 4144;
            let Some(s) = raw.get(at..(at + 4144).min(raw.len())) else {
                continue;
            };
            if s.len() < 48 {
                continue;
            }
            let (counter, size) = (u64_at(s, 0), u64_at(s, 8));
            let t = (size % 4096) as usize;
            let mut aad = b"TRR2".to_vec();
            aad.extend_from_slice(&id);
            aad.extend_from_slice(&s[..20]);
            if let Some(sealed) = s.get(20..48 + t) {
                if let Ok(tail) = aead.open(&aad, sealed) {
                    records.push((counter, size, tail));
                }
            }
        }
        // The steady length names the size (§5b.3).
        let l = raw.len() as u64;
        let size = if l == 76 {
            0
        } else {
            let body = l - 8316;
            let (full, rem) = (body / 4124, body % 4124);
            assert!(
                (1..=4096).contains(&rem),
                "a file at rest has a steady length"
            );
            full * 4096 + rem - 1
        };
        let (_, size, tail) = records
            .into_iter()
            .filter(|r| r.1 == size)
            .max_by_key(|r| r.0)
            .expect("a record of the steady size");
        let mut out = Vec::new();
        for i in 0..size / 4096 {
            let at = (8316 + i * 4124) as usize;
            let mut aad = b"TRB2".to_vec();
            aad.extend_from_slice(&id);
            aad.extend_from_slice(&i.to_be_bytes());
            out.extend(
                aead.open(&aad, &raw[at..at + 4124])
                    .expect("block opens by the spec"),
            );
        }
        out.extend(tail);
        out
    }

    // ---- the format-2 fixture (tests/testdata/store-v2) ----

    const V2_FILES: &[(&str, usize)] = &[
        ("empty", 0),
        ("one", 1),
        ("4095", 4095),
        ("4096", 4096),
        ("4097", 4097),
        ("10000", 10000),
    ];
    /// Written "x" at 0, then truncated up: blocks 1 and 2 are holes.
    const V2_SPARSE: (&str, usize) = ("sparse", 3 * 4096 + 5);

    fn testdata() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata")
    }

    fn v2_content(name: &str, size: usize) -> Vec<u8> {
        if name == V2_SPARSE.0 {
            let mut v = b"x".to_vec();
            v.resize(size, 0);
            return v;
        }
        pattern(1000 + size as u64, size)
    }

    fn fixture_engine(root: &Path) -> (Vfs, tresor::keyring::Keyring) {
        let pass = fs::read_to_string(testdata().join("store-v1.passphrase")).unwrap();
        let pass = pass.lines().next().unwrap().as_bytes().to_vec();
        let pse =
            tresor::pse::open(&fs::read(testdata().join("store-v2.pse")).unwrap(), &pass).unwrap();
        let store = tresor::store::Store::open(root).unwrap();
        let ring = store.unlock(&pse).unwrap();
        let ring2 = store.unlock(&pse).unwrap();
        (Vfs::new(store, ring, caller()).unwrap(), ring2)
    }

    /// Writes tests/testdata/store-v2 (content format 2) once; its output is
    /// committed and never regenerated (FORMAT.md §11). Run by hand:
    /// `cargo test --test integration durability::tamper::generate_fixture_v2 -- --ignored`.
    #[test]
    #[ignore = "writes the committed fixture; run by hand only"]
    fn generate_fixture_v2() {
        let root = testdata().join("store-v2");
        assert!(!root.exists(), "fixtures are never regenerated");
        let pass = fs::read_to_string(testdata().join("store-v1.passphrase")).unwrap();
        let pass = pass.lines().next().unwrap().as_bytes().to_vec();
        let admin = tresor::pse::Pse::generate("admin", None).unwrap();
        fs::write(
            testdata().join("store-v2.pse"),
            admin.seal(&pass, tresor::crypto::KdfParams::MIN).unwrap(),
        )
        .unwrap();
        let store =
            tresor::store::Store::create(&root, &admin, tresor::crypto::KdfParams::MIN).unwrap();
        tresor::admin::Admin::open(&store, &admin)
            .unwrap()
            .add_group("g")
            .unwrap();
        let (vfs, _) = fixture_engine(&root);
        for (name, size) in V2_FILES.iter().chain([&V2_SPARSE]) {
            let data = v2_content(name, *size);
            let written = if *name == V2_SPARSE.0 {
                &data[..1]
            } else {
                &data[..]
            };
            create(&vfs, &root, name, written, *size as u64);
        }
    }

    /// The committed format-2 store reads exactly, through the engine and
    /// by the spec (the layout of FORMAT.md §5b never changes silently).
    #[test]
    fn fixture_v2_reads_through_the_engine_and_by_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        copy_tree(&testdata().join("store-v2"), &root);
        let (vfs, ring) = fixture_engine(&root);
        for (name, size) in V2_FILES.iter().chain([&V2_SPARSE]) {
            let want = v2_content(name, *size);
            assert!(
                read(&vfs, name).unwrap() == want,
                "{name} through the engine"
            );
        }
        // By the spec: every file without holes decodes from its bytes alone.
        let mut decoded = Vec::new();
        for e in fs::read_dir(root.join("groups/g")).unwrap() {
            let p = e.unwrap().path();
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            if n.starts_with("tresor.") {
                continue;
            }
            let raw = fs::read(&p).unwrap();
            assert_eq!(
                u16::from_be_bytes([raw[4], raw[5]]),
                2,
                "{n}: content format 2"
            );
            if raw.len() as u64 == ciphertext_size(V2_SPARSE.1 as u64).unwrap() {
                continue;
            }
            decoded.push(decode_by_spec(&ring, &raw));
        }
        for (name, size) in V2_FILES {
            assert!(
                decoded.contains(&v2_content(name, *size)),
                "{name} by the spec"
            );
        }
    }

    #[test]
    fn format_2_tampering_is_detected() {
        let ts = TestStore::new(&["g"]);
        let data = pattern(11, 3 * 4096 + 1000);
        let (big, other, sparse) = {
            let vfs = engine(&ts, &ts.store);
            (
                create(&vfs, &ts.store, "big", &data, data.len() as u64),
                create(&vfs, &ts.store, "other", &pattern(12, 5000), 5000),
                create(&vfs, &ts.store, "sparse", b"x", 5 * 4096),
            )
        };
        assert_eq!(
            fs::metadata(&big).unwrap().len(),
            ciphertext_size(data.len() as u64).unwrap(),
            "steady length of FORMAT.md §5b.3"
        );
        {
            // An independent reader written from FORMAT.md §5b agrees.
            let store = tresor::store::Store::open(&ts.store).unwrap();
            let pass = fs::read_to_string(&ts.pass).unwrap();
            let pse =
                tresor::pse::open(&fs::read(&ts.pse).unwrap(), pass.trim_end().as_bytes()).unwrap();
            let ring = store.unlock(&pse).unwrap();
            assert!(decode_by_spec(&ring, &fs::read(&big).unwrap()) == data);
            assert!(decode_by_spec(&ring, &fs::read(&other).unwrap()) == pattern(12, 5000));
        }
        let rel = |p: &Path| p.strip_prefix(&ts.store).unwrap().to_path_buf();
        let (big, other, sparse) = (rel(&big), rel(&other), rel(&sparse));
        type Tamper = Box<dyn Fn(&Path)>;
        let b = |p: &Path, b: &PathBuf| p.join(b);
        let cases: Vec<(&str, &str, Want, Tamper)> = vec![
            (
                "cut at a block boundary (length not steady)",
                "big",
                Want::Eio,
                {
                    let big = big.clone();
                    Box::new(move |r| {
                        File::options()
                            .write(true)
                            .open(b(r, &big))
                            .unwrap()
                            .set_len(DATA_START + 2 * CT_BLOCK_SIZE)
                            .unwrap()
                    })
                },
            ),
            (
                "cut to the steady length of 8192 bytes",
                "big",
                Want::Eio,
                {
                    let big = big.clone();
                    Box::new(move |r| {
                        File::options()
                            .write(true)
                            .open(b(r, &big))
                            .unwrap()
                            .set_len(ciphertext_size(8192).unwrap())
                            .unwrap()
                    })
                },
            ),
            ("cut to the record slots only", "big", Want::Eio, {
                let big = big.clone();
                Box::new(move |r| {
                    File::options()
                        .write(true)
                        .open(b(r, &big))
                        .unwrap()
                        .set_len(DATA_START)
                        .unwrap()
                })
            }),
            ("block 1 bit flipped", "big", Want::Eio, {
                let big = big.clone();
                Box::new(move |r| edit(&b(r, &big), |v| v[(block_offset(1) + 100) as usize] ^= 1))
            }),
            ("blocks 0 and 1 swapped", "big", Want::Eio, {
                let big = big.clone();
                Box::new(move |r| {
                    edit(&b(r, &big), |v| {
                        let (a, c) = (block_offset(0) as usize, CT_BLOCK_SIZE as usize);
                        let b0 = v[a..a + c].to_vec();
                        v.copy_within(a + c..a + 2 * c, a);
                        v[a + c..a + 2 * c].copy_from_slice(&b0);
                    })
                })
            }),
            (
                "block 1 zeroed in a file without holes",
                "big",
                Want::Eio,
                {
                    let big = big.clone();
                    Box::new(move |r| {
                        edit(&b(r, &big), |v| {
                            let a = block_offset(1) as usize;
                            v[a..a + CT_BLOCK_SIZE as usize].fill(0)
                        })
                    })
                },
            ),
            ("both record slots flipped", "big", Want::Eio, {
                let big = big.clone();
                Box::new(move |r| {
                    edit(&b(r, &big), |v| {
                        v[slot_offset(0) as usize + 30] ^= 1;
                        v[slot_offset(1) as usize + 30] ^= 1;
                    })
                })
            }),
            (
                "both record slots copied from another file",
                "big",
                Want::Eio,
                {
                    let (big, other) = (big.clone(), other.clone());
                    Box::new(move |r| {
                        let o = fs::read(b(r, &other)).unwrap();
                        edit(&b(r, &big), |v| {
                            let (s, e) = (slot_offset(0) as usize, DATA_START as usize);
                            v[s..e].copy_from_slice(&o[s..e]);
                        })
                    })
                },
            ),
            ("size field of both slots changed", "big", Want::Eio, {
                let big = big.clone();
                Box::new(move |r| {
                    edit(&b(r, &big), |v| {
                        v[slot_offset(0) as usize + 15] ^= 4;
                        v[slot_offset(1) as usize + 15] ^= 4;
                    })
                })
            }),
            ("header version set to 1", "big", Want::Eio, {
                let big = big.clone();
                Box::new(move |r| edit(&b(r, &big), |v| v[5] = 1))
            }),
            (
                "one slot of a synced file flipped: the other holds the same state",
                "big",
                Want::Intact,
                {
                    let big = big.clone();
                    Box::new(move |r| edit(&b(r, &big), |v| v[slot_offset(1) as usize + 40] ^= 1))
                },
            ),
            (
                "a block's worth of bytes appended (length steady for 4096 more)",
                "big",
                Want::Eio,
                {
                    let big = big.clone();
                    Box::new(move |r| edit(&b(r, &big), |v| v.extend_from_slice(&[0xAB; 4124])))
                },
            ),
            (
                "3100 bytes appended (length not steady): ignored, nothing lost",
                "big",
                Want::Intact,
                {
                    let big = big.clone();
                    Box::new(move |r| edit(&b(r, &big), |v| v.extend_from_slice(&[0xAB; 3100])))
                },
            ),
            (
                "a written block of a sparse file flipped",
                "sparse",
                Want::Eio,
                {
                    let sparse = sparse.clone();
                    Box::new(move |r| {
                        edit(&b(r, &sparse), |v| v[(block_offset(0) + 50) as usize] ^= 1)
                    })
                },
            ),
        ];
        let mut failures = Vec::new();
        for (name, probe, want, tamper) in &cases {
            let copy = ts.dir.path().join("copy");
            fs::remove_dir_all(&copy).ok();
            copy_tree(&ts.store, &copy);
            tamper(&copy);
            let vfs = engine(&ts, &copy);
            let got = read(&vfs, probe);
            let expect = if *probe == "big" {
                data.clone()
            } else {
                Vec::new()
            };
            match (want, got) {
                (Want::Eio, Err(e)) if e.errno() == libc::EIO => {}
                (Want::Eio, Err(e)) => failures.push(format!("{name}: errno {} ({e})", e.errno())),
                (Want::Eio, Ok(d)) => failures.push(format!("{name}: read {} bytes", d.len())),
                (Want::Intact, Ok(d)) if d == expect => {}
                (Want::Intact, Ok(d)) => {
                    failures.push(format!("{name}: {} bytes, not the content", d.len()))
                }
                (Want::Intact, Err(e)) => failures.push(format!("{name}: {e}")),
            }
        }
        // The sparse file untampered: its hole reads as zeros.
        let vfs = engine(&ts, &ts.store);
        let mut want = b"x".to_vec();
        want.resize(5 * 4096, 0);
        assert!(read(&vfs, "sparse").unwrap() == want, "hole reads as zeros");
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n  {}",
            failures.len(),
            cases.len(),
            failures.join("\n  ")
        );
    }
}

// ---------------------------------------------------------------------------
// A full disk
// ---------------------------------------------------------------------------

/// A size-limited tmpfs mounted for one test (root), unmounted on drop.
struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    fn new(dir: &Path, size: &str) -> SmallFs {
        fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tresor-test",
            ])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs {
            dir: dir.to_path_buf(),
        }
    }

    /// Bytes free for writing.
    fn avail(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.dir).unwrap();
        s.blocks_available() * s.fragment_size()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .output();
    }
}

/// Writes `path` until the filesystem is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = File::create(path).unwrap();
    let mut total = 0u64;
    for size in [1 << 20, 4096, 512, 1] {
        let buf = vec![0x55u8; size];
        loop {
            match f.write(&buf) {
                Ok(n) => total += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    total
}

fn enospc(r: io::Result<()>) -> bool {
    matches!(&r, Err(e) if e.raw_os_error() == Some(libc::ENOSPC))
}

/// On a full store, an append reports ENOSPC at write(2) (or fsync) and the
/// fsync'ed bytes still read; a fill loop through the mount stops with
/// ENOSPC near the real capacity.
#[test]
fn full_disk_reports_enospc_and_keeps_fsynced_data() {
    if !util::require_root("mounting a size-limited tmpfs") || !util::fuse_available() {
        return;
    }
    let mut ts = TestStore::new(&["g"]);
    let small = SmallFs::new(&ts.dir.path().join("small"), "24m");
    copy_tree(&ts.store, &small.dir.join("store"));
    ts.store = small.dir.join("store");

    let m = ts.mount();
    let data = pattern(21, 6000);
    {
        let mut f = File::create(m.path("g/f")).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    let filler = small.dir.join("filler");
    fill(&filler);
    {
        let mut f = OpenOptions::new().append(true).open(m.path("g/f")).unwrap();
        let w = f.write_all(&pattern(22, 4096));
        let got_enospc = if w.is_ok() {
            enospc(f.sync_all())
        } else {
            enospc(w)
        };
        assert!(
            got_enospc,
            "an append to a full store was not refused with ENOSPC"
        );
        // Refused as a whole: the file is as it was.
        assert!(
            fs::read(m.path("g/f")).unwrap() == data,
            "the fsync'ed bytes do not read back after ENOSPC"
        );
    }
    m.unmount();
    let m = ts.mount();
    assert!(
        fs::read(m.path("g/f")).unwrap() == data,
        "the fsync'ed bytes do not read back after a remount"
    );

    // A fill loop through the mount: stops with ENOSPC near the capacity.
    fs::remove_file(&filler).unwrap();
    let avail = small.avail();
    let chunk = pattern(23, 1 << 20);
    let mut f = File::create(m.path("g/big")).unwrap();
    let mut total = 0u64;
    let err = loop {
        match f.write(&chunk) {
            Ok(n) => total += n as u64,
            Err(e) => break e,
        }
        // Hang guard: a loop that never meets ENOSPC writes "more than the disk".
        assert!(
            total < 4 * avail,
            "{total} bytes written to a store with {avail} free"
        );
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(
        total <= avail && total + (2 << 20) + avail / 50 >= avail,
        "the loop stopped after {total} bytes with {avail} bytes free"
    );
    drop(f);
    assert!(fs::read(m.path("g/f")).unwrap() == data);
    fs::remove_file(m.path("g/big")).unwrap();
    m.unmount();
}

// ---------------------------------------------------------------------------
// tresor upgrade
// ---------------------------------------------------------------------------

/// Content format of every content file under `dir` (header bytes 4..6).
fn content_versions(dir: &Path, out: &mut Vec<u16>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            content_versions(&e.path(), out);
        } else if ft.is_file() && !name.starts_with("tresor.") && !name.starts_with('.') {
            let b = fs::read(e.path()).unwrap();
            assert_eq!(&b[..4], b"TRSR", "{name}");
            out.push(u16::from_be_bytes([b[4], b[5]]));
        }
    }
}

/// A store written in content format 1 (as before issue 14) is converted
/// by `tresor upgrade`: every file ends in format 2, reads the same, keeps
/// its hard links and attributes, and new files are format 2.
#[test]
fn upgrade_converts_a_format_1_store() {
    if !util::fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g", "h"]);
    // Make it a store of before content-v2.
    let mp = ts.store.join("tresor.json");
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&mp).unwrap()).unwrap();
    m["features"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f != "content-v2");
    fs::write(&mp, serde_json::to_vec_pretty(&m).unwrap()).unwrap();

    let files: Vec<(String, Vec<u8>)> = vec![
        ("g/empty".into(), Vec::new()),
        ("g/one".into(), b"1".to_vec()),
        ("g/d/block".into(), pattern(31, 4096)),
        ("g/d/big".into(), pattern(32, 3 << 20)),
        ("h/x".into(), pattern(33, 10_000)),
    ];
    let m = ts.mount();
    fs::create_dir(m.path("g/d")).unwrap();
    for (p, d) in &files {
        fs::write(m.path(p), d).unwrap();
    }
    fs::hard_link(m.path("g/one"), m.path("g/d/one-link")).unwrap();
    xattr_set(&m.path("g/d/big"), "user.note", b"kept");
    m.unmount();
    let mut v = Vec::new();
    content_versions(&ts.store.join("groups"), &mut v);
    assert!(!v.is_empty() && v.iter().all(|x| *x == 1), "before: {v:?}");

    let out = util::ok(
        util::tresor()
            .arg("upgrade")
            .arg(&ts.store)
            .arg("--pse")
            .arg(&ts.pse)
            .arg("--passphrase-file")
            .arg(&ts.pass),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("content format 2"), "{stdout}");
    let mut v = Vec::new();
    content_versions(&ts.store.join("groups"), &mut v);
    assert!(v.iter().all(|x| *x == 2), "after: {v:?}");
    let m: serde_json::Value = serde_json::from_slice(&fs::read(&mp).unwrap()).unwrap();
    assert!(m["features"]
        .as_array()
        .unwrap()
        .contains(&"content-v2".into()));

    let m = ts.mount();
    for (p, d) in &files {
        assert!(fs::read(m.path(p)).unwrap() == *d, "{p}");
        assert_eq!(
            fs::metadata(m.path(p)).unwrap().len(),
            d.len() as u64,
            "{p}: stat"
        );
    }
    assert_eq!(fs::read(m.path("g/d/one-link")).unwrap(), b"1");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(m.path("g/one")).unwrap().nlink(),
        2,
        "hard link kept"
    );
    assert_eq!(xattr_get(&m.path("g/d/big"), "user.note"), b"kept");
    fs::write(m.path("g/new"), b"new").unwrap();
    m.unmount();
    let mut v = Vec::new();
    content_versions(&ts.store.join("groups"), &mut v);
    assert!(v.iter().all(|x| *x == 2), "new files: {v:?}");
    // A second run finds nothing to do.
    util::ok(
        util::tresor()
            .arg("upgrade")
            .arg(&ts.store)
            .arg("--pse")
            .arg(&ts.pse)
            .arg("--passphrase-file")
            .arg(&ts.pass),
    );
}

fn xattr_set(p: &Path, name: &str, value: &[u8]) {
    let out = std::process::Command::new("setfattr")
        .args(["-n", name, "-v"])
        .arg(String::from_utf8_lossy(value).as_ref())
        .arg(p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "setfattr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn xattr_get(p: &Path, name: &str) -> Vec<u8> {
    let out = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "getfattr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

// ---------------------------------------------------------------------------
// Holes
// ---------------------------------------------------------------------------

/// Disk space the files under `dir` take (st_blocks).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = fs::symlink_metadata(e.path()).unwrap();
        total += md.blocks() * 512;
        if md.is_dir() {
            total += disk_usage(&e.path());
        }
    }
    total
}

fn seek(f: &File, off: u64, whence: i32) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let w = if whence == libc::SEEK_DATA {
        nix::unistd::Whence::SeekData
    } else {
        nix::unistd::Whence::SeekHole
    };
    nix::unistd::lseek(f.as_raw_fd(), off as i64, w)
        .map(|o| o as u64)
        .map_err(io::Error::from)
}

/// A hole costs no disk and reads as zeros; SEEK_DATA/SEEK_HOLE find the
/// data; truncating to a petabyte neither fills the disk nor hangs;
/// fallocate mode 0 works and other modes are EOPNOTSUPP.
#[test]
fn holes_cost_no_disk_and_read_as_zeros() {
    if !util::fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let m = ts.mount();
    let before = disk_usage(&ts.store);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(m.path("g/sparse"))
        .unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.set_len(2 << 30).unwrap();
    f.write_all_at(b"middle", 1 << 30).unwrap();
    f.sync_all().unwrap();
    assert_eq!(fs::metadata(m.path("g/sparse")).unwrap().len(), 2 << 30);
    let grown = disk_usage(&ts.store) - before;
    assert!(
        grown < 4 << 20,
        "a 2 GiB sparse file takes {grown} bytes of store disk"
    );
    let mut buf = vec![1u8; 8192];
    f.read_exact_at(&mut buf, (1 << 29) - 10).unwrap();
    assert!(buf.iter().all(|b| *b == 0), "a hole reads as zeros");
    f.read_exact_at(&mut buf[..10], (1 << 30) - 2).unwrap();
    assert_eq!(&buf[..10], b"\0\0middle\0\0");
    assert_eq!(seek(&f, 0, libc::SEEK_DATA).unwrap(), 0);
    assert_eq!(seek(&f, 0, libc::SEEK_HOLE).unwrap(), 4096);
    assert_eq!(seek(&f, 4096, libc::SEEK_DATA).unwrap(), 1 << 30);
    assert_eq!(
        seek(&f, 1 << 30, libc::SEEK_HOLE).unwrap(),
        (1 << 30) + 4096
    );
    let e = seek(&f, (2 << 30) - 100, libc::SEEK_DATA).unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ENXIO),
        "no data after the last block"
    );
    assert_eq!(
        seek(&f, (2 << 30) - 100, libc::SEEK_HOLE).unwrap(),
        (2 << 30) - 100
    );

    // fallocate: mode 0 extends and reads zeros; others are EOPNOTSUPP.
    use nix::fcntl::{fallocate, FallocateFlags};
    use std::os::fd::AsRawFd;
    let g = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(m.path("g/alloc"))
        .unwrap();
    fallocate(g.as_raw_fd(), FallocateFlags::empty(), 0, 10_000).unwrap();
    assert_eq!(fs::read(m.path("g/alloc")).unwrap(), vec![0u8; 10_000]);
    let e = fallocate(
        g.as_raw_fd(),
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        0,
        4096,
    )
    .unwrap_err();
    assert_eq!(e, nix::Error::EOPNOTSUPP);

    // pjdfstest ftruncate/12: truncate to ~1 PB does not fill the disk.
    let h = File::create(m.path("g/huge")).unwrap();
    let before = disk_usage(&ts.store);
    match h.set_len(999_999_999_999_999) {
        Ok(()) => {
            assert_eq!(
                fs::metadata(m.path("g/huge")).unwrap().len(),
                999_999_999_999_999
            );
            let mut b = [1u8; 16];
            h.read_exact_at(&mut b, 999_999_999_999_999 - 16).unwrap();
            assert_eq!(b, [0u8; 16], "the end of a 1 PB hole reads as zeros");
        }
        // The backing filesystem's limit (ext4: 16 TiB), as on ext4 itself.
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EFBIG), "{e}"),
    }
    let grown = disk_usage(&ts.store) - before;
    assert!(
        grown < 4 << 20,
        "truncate to 1 PB took {grown} bytes of store disk"
    );
    drop((f, g, h));
    m.unmount();
}

// ---------------------------------------------------------------------------
// POSIX points of issue 14
// ---------------------------------------------------------------------------

/// The caller's umask decides new modes (not the driver's 022), setuid bits
/// asked for are kept, and device nodes are stored as inodes, inert.
#[test]
fn umask_is_the_callers_and_device_nodes_are_inert_inodes() {
    if !util::fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let m = ts.mount();
    let g = m.path("g");
    let modes = util::sh(
        &g,
        "umask 002; touch f; mkdir d; mkfifo p; ln -s f l
         umask 0; python3 -c \"import os; os.close(os.open('s', os.O_CREAT | os.O_WRONLY, 0o4777)); os.mkdir('d0', 0o777)\"
         umask 077; touch private
         stat -c '%n %a' f d p s d0 private",
    );
    assert_eq!(
        modes.split_whitespace().collect::<Vec<_>>(),
        ["f", "664", "d", "775", "p", "664", "s", "4777", "d0", "777", "private", "600"],
        "{modes}"
    );
    if util::require_root("mknod of device nodes") {
        let out = util::sh(
            &g,
            "mknod c c 1 3; mknod b b 7 0; stat -c '%n %F %t %T' c b
             if cat c 2>/dev/null; then echo opened; else echo refused; fi",
        );
        assert!(out.contains("c character special file 1 3"), "{out}");
        assert!(out.contains("b block special file 7 0"), "{out}");
        assert!(
            out.contains("refused"),
            "a device node opened on a nodev mount: {out}"
        );
    }
    m.unmount();
    let m = ts.mount();
    let again = util::sh(&m.path("g"), "stat -c '%n %a' f d p s d0 private");
    assert_eq!(again.split_whitespace().count(), 12, "{again}");
    if nix::unistd::geteuid().is_root() {
        let out = util::sh(&m.path("g"), "stat -c '%n %F %t %T' c");
        assert!(
            out.contains("c character special file 1 3"),
            "after a remount: {out}"
        );
    }
    m.unmount();
}

/// `tresor init` checks everything before creating anything: a bad user
/// name or a PSE path in a missing directory leaves no store behind.
#[test]
fn init_leaves_nothing_behind_on_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    fs::write(&pass, "test passphrase\n").unwrap();
    let store = dir.path().join("store");
    let init = |user: &str, pse: &Path| {
        util::tresor()
            .arg("init")
            .arg(&store)
            .arg("--pse")
            .arg(pse)
            .args(["--user", user, "--kdf-memory-mib", "8", "--passphrase-file"])
            .arg(&pass)
            .output()
            .unwrap()
    };
    for (user, pse, says) in [
        ("", dir.path().join("a.pse"), "not valid"),
        ("../x", dir.path().join("a.pse"), "not valid"),
        (
            "admin",
            dir.path().join("missing-dir/x.pse"),
            "does not exist",
        ),
    ] {
        let out = init(user, &pse);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "init --user {user:?} --pse {} succeeded",
            pse.display()
        );
        assert!(err.contains(says), "{err}");
        assert!(
            !store.exists(),
            "init --user {user:?}: a store was left behind"
        );
        assert!(!pse.exists());
    }
    // And after all that, a good init works on the same paths.
    let out = init("admin", &dir.path().join("a.pse"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A non-empty mount point is refused unless --nonempty (as gocryptfs).
#[test]
fn non_empty_mount_point_needs_nonempty() {
    if !util::fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let mnt = ts.subdir("busy");
    fs::write(mnt.join("hidden-file"), b"x").unwrap();
    let out = util::tresor()
        .arg("mount")
        .arg(&ts.store)
        .arg(&mnt)
        .arg("--pse")
        .arg(&ts.pse)
        .arg("--passphrase-file")
        .arg(&ts.pass)
        .arg("-f")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--nonempty"), "{err}");
    assert!(!is_mounted(&mnt));
    let m = ts.mount_as(&ts.pse, &ts.pass, "busy", &["--nonempty"]);
    assert!(m.path("g").is_dir());
    m.unmount();
}
