//! Mount-level tests: a real FUSE mount driven by real programs.

use crate::util::{
    all_store_bytes, fuse_available, isolate, isolate_as, ok, pseudo_random, require_root, sh,
    tresor, TestStore,
};
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use tresor::format::content::v2::{block_offset, ciphertext_size};
use tresor::format::content::CT_BLOCK_SIZE;

/// A source tree with the awkward cases: empty and block-edge sizes, a
/// 1 MiB file, nesting, a long name, non-ASCII, symlinks, modes.
fn make_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let sizes = [0usize, 1, 4095, 4096, 4097, 8192, 12_345, 1 << 20];
    for (i, size) in sizes.iter().enumerate() {
        let rel = format!("patients/p{i:04}/record-{size}.bin");
        files.push((rel, pseudo_random(i as u64 + 7, *size)));
    }
    files.push((
        format!("deep/a/b/c/d/{}", "very-long-file-name-".repeat(11)),
        pseudo_random(99, 5000),
    ));
    files.push((
        "befund-ärztin-Ωmega.txt".into(),
        b"Befund: unauffaellig, keine Malignitaet nachweisbar.\n".to_vec(),
    ));
    for (rel, data) in &files {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
    }
    std::os::unix::fs::symlink("patients/p0001/record-1.bin", root.join("link-to-record")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/dangling/target", root.join("dangling")).unwrap();
    fs::set_permissions(
        root.join("patients/p0002"),
        fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    fs::set_permissions(
        root.join("patients/p0003/record-4096.bin"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    files
}

#[test]
fn cp_tar_diff_and_remount_keep_everything_and_leak_nothing() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["records"]);
    let src = ts.subdir("src");
    let files = make_tree(&src);
    let m = ts.mount();
    let rec = m.path("records");

    ok(Command::new("cp").arg("-a").arg(&src).arg(rec.join("tree")));
    ok(Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&src)
        .arg(rec.join("tree")));
    // Modes and symlinks survived cp -a.
    let mode = fs::metadata(rec.join("tree/patients/p0003/record-4096.bin"))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o7777, 0o600);
    assert_eq!(
        fs::read_link(rec.join("tree/dangling")).unwrap(),
        Path::new("/nonexistent/dangling/target")
    );

    // tar out of the mount and back into it.
    let tarball = ts.dir.path().join("tree.tar");
    ok(Command::new("tar")
        .arg("-C")
        .arg(rec.join("tree"))
        .arg("-cf")
        .arg(&tarball)
        .arg("."));
    fs::create_dir(rec.join("untarred")).unwrap();
    ok(Command::new("tar")
        .arg("-C")
        .arg(rec.join("untarred"))
        .arg("-xf")
        .arg(&tarball));
    ok(Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&src)
        .arg(rec.join("untarred")));

    m.unmount();
    let m = ts.mount();
    ok(Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&src)
        .arg(m.path("records/tree")));
    m.unmount();

    // No 16-byte run of any plaintext, and no file name, appears in the store.
    let store = all_store_bytes(&ts.store);
    let windows: HashSet<&[u8]> = store.windows(16).collect();
    for (rel, data) in &files {
        for w in data.windows(16) {
            assert!(
                !windows.contains(w),
                "plaintext of {rel} found in the store"
            );
        }
        for part in rel.split('/').filter(|p| p.len() >= 6) {
            assert!(
                !store.windows(part.len()).any(|w| w == part.as_bytes()),
                "name {part} found in the store"
            );
        }
    }
    for target in [
        "patients/p0001/record-1.bin",
        "/nonexistent/dangling/target",
    ] {
        assert!(!store.windows(target.len()).any(|w| w == target.as_bytes()));
    }
}

#[test]
fn sqlite_git_and_python_mmap_work_unchanged() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["research"]);
    let m = ts.mount();
    let dir = m.path("research");

    // sqlite3: 10,000 inserts, integrity check.
    let sql = "CREATE TABLE samples(id INTEGER PRIMARY KEY, patient TEXT, ki67 REAL);\n\
               BEGIN;\n"
        .to_string()
        + &(0..10_000)
            .map(|i| {
                format!(
                    "INSERT INTO samples(patient, ki67) VALUES('p{i}', {}.5);\n",
                    i % 100
                )
            })
            .collect::<String>()
        + "COMMIT;\n";
    fs::write(ts.dir.path().join("load.sql"), sql).unwrap();
    let out = sh(
        &dir,
        &format!(
            "sqlite3 samples.db < {}; sqlite3 samples.db 'PRAGMA integrity_check; SELECT count(*) FROM samples;'",
            ts.dir.path().join("load.sql").display()
        ),
    );
    assert_eq!(out.trim(), "ok\n10000");
    // And with a write-ahead log, which uses mmap'd shared memory.
    let out = sh(
        &dir,
        "sqlite3 wal.db 'PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES(1),(2),(3);' >/dev/null; \
         sqlite3 wal.db 'SELECT sum(x) FROM t; PRAGMA integrity_check;'",
    );
    assert_eq!(out.trim(), "6\nok");

    // git: init, add, commit, status, log.
    let out = sh(
        &dir,
        "mkdir repo && cd repo && git init -q && git config user.email t@example.org && git config user.name T && \
         printf 'analysis\\n' > README && mkdir src && printf 'print(1)\\n' > src/a.py && \
         git add . && git commit -qm first && printf 'more\\n' >> README && git commit -qam second && \
         git status --porcelain && git log --oneline | wc -l && git fsck --no-progress 2>&1 | wc -l",
    );
    assert_eq!(
        out.trim(),
        "2\n0",
        "git status clean, two commits, fsck silent"
    );

    // python: write and read through mmap.
    let script = r#"
import mmap, os, sys
p = sys.argv[1]
with open(p, "wb") as f:
    f.truncate(3 * 4096 + 100)
with open(p, "r+b") as f:
    m = mmap.mmap(f.fileno(), 0)
    for i in range(0, len(m), 997):
        m[i] = (i * 31) % 251
    m.flush(); m.close()
with open(p, "rb") as f:
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    bad = [i for i in range(0, len(m), 997) if m[i] != (i * 31) % 251]
    assert not bad, bad
    assert len(m) == 3 * 4096 + 100
print("mmap ok")
"#;
    fs::write(ts.dir.path().join("mm.py"), script).unwrap();
    let out = ok(Command::new("python3")
        .arg(ts.dir.path().join("mm.py"))
        .arg(dir.join("mapped.bin")));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "mmap ok");
    m.unmount();
}

#[test]
fn random_writes_and_truncates_match_a_shadow_copy() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let m = ts.mount();
    let shadow_path = ts.dir.path().join("shadow");
    let mut shadow = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&shadow_path)
        .unwrap();
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.path("g/target"))
        .unwrap();
    let mut seed = 0x5eed_u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..300 {
        match next(8) {
            0 => {
                let len = next(200_000);
                f.set_len(len).unwrap();
                shadow.set_len(len).unwrap();
            }
            1 => {
                // O_APPEND-style write at the end.
                let data = pseudo_random(round, next(9000) as usize + 1);
                f.seek(SeekFrom::End(0)).unwrap();
                f.write_all(&data).unwrap();
                shadow.seek(SeekFrom::End(0)).unwrap();
                shadow.write_all(&data).unwrap();
            }
            _ => {
                let off = next(150_000);
                let data = pseudo_random(round + 1000, next(20_000) as usize + 1);
                f.write_all_at(&data, off).unwrap();
                shadow.write_all_at(&data, off).unwrap();
            }
        }
        if round % 10 == 9 {
            let mut a = Vec::new();
            let mut b = Vec::new();
            f.seek(SeekFrom::Start(0)).unwrap();
            f.read_to_end(&mut a).unwrap();
            shadow.seek(SeekFrom::Start(0)).unwrap();
            shadow.read_to_end(&mut b).unwrap();
            assert_eq!(a.len(), b.len(), "round {round}: sizes differ");
            assert!(a == b, "round {round}: contents differ");
        }
    }
    f.sync_all().unwrap();
    drop(f);
    m.unmount();
    let m = ts.mount();
    assert!(fs::read(m.path("g/target")).unwrap() == fs::read(&shadow_path).unwrap());
}

#[test]
fn posix_operations() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let m = ts.mount();
    let g = m.path("g");
    let out = sh(
        &g,
        "set -e
         echo one > a; echo two >> a; cat a
         chmod 640 a; stat -c %a a
         touch -d '2001-02-03 04:05:06 UTC' a; stat -c %Y a
         truncate -s 3 a; cat a; echo
         truncate -s 10000 a; stat -c %s a
         dd if=/dev/zero of=sparse bs=1 count=1 seek=1000000 status=none; stat -c %s sparse
         mkdir -p d1/d2; echo x > d1/d2/f; rmdir d1/d2 2>/dev/null || echo notempty
         rm d1/d2/f; rmdir d1/d2; ls d1 | wc -l
         echo new > b; echo old > c; mv b c; cat c; test ! -e b && echo gone
         mkdir dirA; echo in > dirA/f; mv dirA dirB; cat dirB/f
         ln -s dirB/f sl; readlink sl; cat sl
         ln c hard; stat -c %h c; echo more >> hard; cat c
         rm hard; stat -c %h c
         df -P . | tail -1 | awk '{print ($2 > 0)}'
         mkfifo fifo; stat -c %F fifo
         setfattr -n user.note -v hello c; getfattr --only-values -n user.note c; echo
         setfattr -x user.note c; getfattr -d c | wc -l
         ",
    );
    let expect = "one\ntwo\n640\n981173106\none\n10000\n1000001\nnotempty\n0\nnew\ngone\nin\ndirB/f\nin\n2\nnew\nmore\n1\n1\nfifo\nhello\n0\n";
    assert_eq!(out, expect);
    // chown needs root: CI runs as root, so there a non-root run fails here.
    if require_root("chown a file through the mount") {
        sh(&g, "chown 1234:5678 c");
        let md = fs::metadata(g.join("c")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1234, 5678));
    }
    // rename over an existing directory only when empty.
    sh(&g, "mkdir e1 e2; mv -T e1 e2; test -d e2 && test ! -e e1");
    // Creating at the root of the mount is refused: data groups come from `tresor datagroup add`.
    assert!(fs::write(m.path("not-a-group"), b"x").is_err());
    m.unmount();
}

#[test]
fn concurrent_readers_and_writers() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let m = ts.mount();
    let dir = m.path("g");
    std::thread::scope(|s| {
        for t in 0..6u64 {
            let dir = dir.clone();
            s.spawn(move || {
                let p = dir.join(format!("f{t}"));
                let data = pseudo_random(t, 300_000);
                fs::write(&p, &data).unwrap();
                for _ in 0..5 {
                    assert!(fs::read(&p).unwrap() == data);
                }
            });
        }
        // Several writers on one file, disjoint block-aligned regions.
        let shared = dir.join("shared");
        fs::write(&shared, vec![0u8; 8 * 8192]).unwrap();
        for t in 0..8u64 {
            let shared = shared.clone();
            s.spawn(move || {
                let f = fs::OpenOptions::new().write(true).open(&shared).unwrap();
                f.write_all_at(&vec![t as u8 + 1; 8192], t * 8192).unwrap();
            });
        }
    });
    let all = fs::read(dir.join("shared")).unwrap();
    for t in 0..8usize {
        assert!(all[t * 8192..(t + 1) * 8192]
            .iter()
            .all(|&b| b == t as u8 + 1));
    }
    m.unmount();
}

#[test]
fn tampered_block_is_eio_and_logged_never_plaintext() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let m = ts.mount();
    let data = pseudo_random(5, 3 * 4096);
    fs::write(m.path("g/victim"), &data).unwrap();
    fs::write(m.path("g/other"), b"untouched").unwrap();
    m.unmount();
    // Flip one byte in the second block of the only big file in the store.
    let gdir = ts.store.join("groups/g");
    let victim = fs::read_dir(&gdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    // Block 1 in content format 2 (docs/FORMAT.md §5b).
    let at = tresor::format::content::v2::block_offset(1) + 100;
    flip(&victim, at, 0x20);

    let m = ts.mount();
    let mut file = fs::File::open(m.path("g/victim")).unwrap();
    let mut first = vec![0u8; 4096];
    file.read_exact(&mut first).unwrap();
    assert!(first == data[..4096], "untouched first block still reads");
    let mut rest = Vec::new();
    let err = file.read_to_end(&mut rest).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // Nothing after the bad block was served: not its garbage, not the
    // intact block behind it.
    assert!(
        rest.is_empty(),
        "{} bytes served at or after the tampered block",
        rest.len()
    );
    assert_eq!(fs::read(m.path("g/other")).unwrap(), b"untouched");
    // cp of the damaged file fails instead of producing a wrong copy.
    let st = Command::new("cp")
        .arg(m.path("g/victim"))
        .arg(ts.dir.path().join("copy"))
        .status()
        .unwrap();
    assert!(!st.success());
    drop(file);
    m.unmount();
    let log = fs::read_to_string(ts.dir.path().join("mount.log")).unwrap();
    assert!(
        log.contains("g/victim") && log.contains("block 1 failed authentication"),
        "log: {log}"
    );
}

/// The only backing file directly in `dir` whose size is that of a
/// `plain`-byte file at rest in content format 2 (the tests give each file
/// its own size to find it).
fn backing_of_size(dir: &Path, plain: u64) -> std::path::PathBuf {
    let want = ciphertext_size(plain).unwrap();
    let found: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let md = fs::symlink_metadata(p).unwrap();
            md.is_file() && md.len() == want
        })
        .collect();
    assert_eq!(found.len(), 1, "backing files of {want} bytes: {found:?}");
    found.into_iter().next().unwrap()
}

/// Ciphertext offset of full block `i` of a format-2 backing file.
fn block_at(i: u64) -> u64 {
    block_offset(i)
}

/// Flips the bits `mask` of the byte at `at` of backing file `p`.
fn flip(p: &Path, at: u64, mask: u8) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ mask], at).unwrap();
}

/// Tampering through FUSE beyond a flipped byte: two blocks swapped, a file
/// cut at a block boundary, and a tampered block read through mmap. Each
/// read is EIO (SIGBUS for the mapping), and no byte of a damaged block —
/// nor of the blocks behind it — comes out.
#[test]
fn swapped_cut_and_mmapped_tampered_blocks_are_eio_never_plaintext() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    // Distinct sizes, so each backing file can be found by its size.
    let swapped = pseudo_random(11, 4 * 4096);
    let cut = pseudo_random(12, 3 * 4096);
    let mapped = pseudo_random(13, 2 * 4096 + 100);
    let m = ts.mount();
    for (name, data) in [("swapped", &swapped), ("cut", &cut), ("mapped", &mapped)] {
        fs::write(m.path(&format!("g/{name}")), data).unwrap();
    }
    m.unmount();
    let gdir = ts.store.join("groups/g");

    // Blocks 1 and 2 of `swapped` change places (both intact on their own).
    let p = backing_of_size(&gdir, swapped.len() as u64);
    let mut raw = fs::read(&p).unwrap();
    let (b1, b2) = (block_at(1) as usize, block_at(2) as usize);
    let one = raw[b1..b2].to_vec();
    raw.copy_within(b2..b2 + CT_BLOCK_SIZE as usize, b1);
    raw[b2..b2 + CT_BLOCK_SIZE as usize].copy_from_slice(&one);
    fs::write(&p, &raw).unwrap();
    // `cut` loses its last block at a block boundary (the size record
    // still says 12288 bytes).
    let p = backing_of_size(&gdir, cut.len() as u64);
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(block_at(2))
        .unwrap();
    // One byte of block 1 of `mapped` flipped.
    let p = backing_of_size(&gdir, mapped.len() as u64);
    flip(&p, block_at(1) + 500, 0x01);

    let m = ts.mount();
    // Swapped: block 0 reads, then EIO; each swapped block on its own is EIO.
    let mut f = fs::File::open(m.path("g/swapped")).unwrap();
    let mut first = vec![0u8; 4096];
    f.read_exact(&mut first).unwrap();
    assert!(first == swapped[..4096]);
    let mut rest = Vec::new();
    let err = f.read_to_end(&mut rest).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "swapped: {err}");
    assert!(
        rest.is_empty(),
        "swapped: {} bytes after block 0",
        rest.len()
    );
    for block in [1u64, 2] {
        let mut buf = vec![0u8; 4096];
        let err = f.read_at(&mut buf, block * 4096).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "swapped block {block}");
    }
    drop(f);

    // Cut at a block boundary: the lost block reads EIO, never zeros or a
    // shorter file; the intact block 0 still reads (the control).
    let f = fs::File::open(m.path("g/cut")).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == cut[..4096]);
    let err = f.read_at(&mut buf, 2 * 4096).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "cut: {err}");
    drop(f);
    let err = fs::read(m.path("g/cut")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "cut: {err}");

    // mmap in a child process: the intact block 0 maps (the control), the
    // tampered block 1 raises SIGBUS (or EIO) and never prints data.
    let script = r#"
import mmap, sys
with open(sys.argv[1], "rb") as f:
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    sys.stdout.write("block0 " + m[0:4096].hex() + "\n")
    sys.stdout.flush()
    sys.stdout.write("block1 " + m[4096:8192].hex() + "\n")
    sys.stdout.flush()
"#;
    let out = isolate(&mut Command::new("python3"))
        .arg("-c")
        .arg(script)
        .arg(m.path("g/mapped"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.starts_with(&format!("block0 {}\n", hex::encode(&mapped[..4096]))),
        "the intact block must map: {stdout} {stderr}"
    );
    assert!(!stdout.contains("block1"), "a tampered block was mapped");
    use std::os::unix::process::ExitStatusExt;
    eprintln!(
        "mmap reader of a tampered block ended with {:?}",
        out.status
    );
    assert!(
        out.status.signal() == Some(libc::SIGBUS)
            || (stderr.contains("Input/output error") && !out.status.success()),
        "the mmap reader must die of SIGBUS or see EIO: {:?} {stderr}",
        out.status
    );
    // The same file read(2)s as EIO at block 1.
    let err = fs::read(m.path("g/mapped")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "mapped: {err}");
    m.unmount();

    let log = fs::read_to_string(ts.dir.path().join("mount.log")).unwrap();
    for (name, block) in [("g/swapped", 1), ("g/cut", 1), ("g/mapped", 1)] {
        assert!(
            log.contains(name) && log.contains(&format!("block {block} failed authentication")),
            "{name} not logged: {log}"
        );
    }
}

/// The mount's read-ahead window is widened to 4 MiB (as root), and a
/// sequential read through it still gives every intact byte before a bad
/// block and none from it: the READ that carries the bad block fails whole,
/// and the kernel asks again for what the reader still wants.
#[test]
fn a_wide_read_ahead_reads_up_to_a_bad_block_and_no_further() {
    if !fuse_available() || !require_root("widen the read-ahead window through sysfs") {
        return;
    }
    let ts = TestStore::new(&["g"]);
    const MIB: usize = 1 << 20;
    let data = pseudo_random(17, 8 * MIB + 300);
    let m = ts.mount();
    fs::write(m.path("g/big"), &data).unwrap();
    m.unmount();
    // Block 1296 = 5 MiB + 64 KiB: in the middle of a 1 MiB READ.
    let bad = 1296u64;
    let p = backing_of_size(&ts.store.join("groups/g"), data.len() as u64);
    flip(&p, block_at(bad) + 7, 0x40);

    let m = ts.mount();
    let dev = fs::metadata(&m.mnt).unwrap().dev();
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    // Widened before the session answers its first request (the stat
    // above). Cold: nothing of the file in the page cache.
    let ra = fs::read_to_string(&knob).unwrap();
    assert_eq!(ra.trim(), "4096", "{knob}");
    let mut f = fs::File::open(m.path("g/big")).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; MIB];
    let err = loop {
        match f.read(&mut buf) {
            Ok(0) => panic!("read to the end ({} bytes) past a bad block", got.len()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let bad_at = bad as usize * 4096;
    // To the byte: the kernel reads the pages of the failed READ one by
    // one (4 KiB folios on this kernel) until the bad block.
    assert!(
        got.len() == bad_at && got == data[..got.len()],
        "{} bytes before the error, the bad block starts at {bad_at}",
        got.len()
    );
    // Behind the bad block the file reads again.
    let mut tail = vec![0u8; 2 * MIB];
    f.read_exact_at(&mut tail, 6 * MIB as u64).unwrap();
    assert!(tail == data[6 * MIB..8 * MIB]);
    drop(f);
    m.unmount();
}

/// The driver never touches its own mount (the read-ahead knob is found
/// through mountinfo): a mount unmounted right after its first answer is
/// never busy. Widening the window from a thread that `stat`ed the mount
/// point made 2 of ~200 unmounts in a full test run fail with EBUSY.
#[test]
fn a_fresh_mount_unmounts_at_once() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    for _ in 0..25 {
        // ts.mount() returns once the mount has answered (INIT done).
        ts.mount().unmount();
    }
}

/// The backing attribute names (`user.tresor.…`) of a backing path.
fn backing_xattrs(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = xattr::list(p)
        .unwrap()
        .map(|n| n.into_string().unwrap())
        .filter(|n| n.starts_with("user.tresor."))
        .collect();
    v.sort();
    v
}

fn getxattr_errno(p: &Path, name: &str) -> Option<i32> {
    xattr::get(p, name).err().and_then(|e| e.raw_os_error())
}

/// docs/FORMAT.md §6.6: `user.*` attribute names and values are encrypted
/// (names deterministically per data group, values bound to their backing
/// name) — set through a real mount on files and a directory, read back
/// after a remount, absent from the store's bytes. Tampering with a backing
/// value (a flipped byte, values swapped between two attributes) is EIO;
/// a changed backing name hides the attribute. The documented limit holds
/// exactly: a value copied to the same attribute of another file of the
/// group reads as that value (§10).
#[test]
fn xattrs_are_encrypted_and_tamper_evident_through_the_mount() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    // (file, plaintext size: how its backing file is found, attributes)
    type Attrs = &'static [(&'static str, &'static str)];
    let files: [(&str, usize, Attrs); 5] = [
        (
            "flipped",
            1,
            &[
                ("diagnosis", "carcinoma in situ, patient Mustermann"),
                ("reviewer", "Dr. Hildegard Vogelsang"),
            ],
        ),
        (
            "swapped",
            2,
            &[
                ("diagnosis", "benign nevus, patient Musterfrau"),
                ("reviewer", "Dr. Konstantin Achterberg"),
            ],
        ),
        (
            "source",
            3,
            &[("diagnosis", "melanoma pT1a, patient Beispielmann")],
        ),
        (
            "copied",
            4,
            &[(
                "diagnosis",
                "seborrheic keratosis, patient Normalverbraucher",
            )],
        ),
        (
            "renamed",
            5,
            &[("ward-of-admission", "dermatology ward 3 north")],
        ),
    ];
    let dir_attr = ("study-protocol", "protocol ZX-4471 arm B, blinded");
    let m = ts.mount();
    let g = m.path("g");
    for (name, size, attrs) in &files {
        fs::write(g.join(name), vec![b'x'; *size]).unwrap();
        for (k, v) in *attrs {
            sh(&g, &format!("setfattr -n 'user.{k}' -v '{v}' {name}"));
        }
    }
    fs::create_dir(g.join("cohort")).unwrap();
    sh(
        &g,
        &format!(
            "setfattr -n 'user.{}' -v '{}' cohort",
            dir_attr.0, dir_attr.1
        ),
    );
    m.unmount();

    // After a remount every attribute reads back, through getfattr.
    let m = ts.mount();
    let g = m.path("g");
    for (name, _, attrs) in &files {
        for (k, v) in *attrs {
            let got = sh(&g, &format!("getfattr --only-values -n 'user.{k}' {name}"));
            assert_eq!(got, *v, "{name} user.{k}");
        }
        let mut listed: Vec<String> = xattr::list(g.join(name))
            .unwrap()
            .map(|n| n.into_string().unwrap())
            .collect();
        listed.sort();
        let want: Vec<String> = attrs.iter().map(|(k, _)| format!("user.{k}")).collect();
        assert_eq!(listed, want, "{name}");
    }
    assert_eq!(
        sh(
            &g,
            &format!("getfattr --only-values -n 'user.{}' cohort", dir_attr.0)
        ),
        dir_attr.1
    );
    m.unmount();

    // Neither a name nor a value appears anywhere in the store.
    let store = all_store_bytes(&ts.store);
    let has = |s: &str| store.windows(s.len()).any(|w| w == s.as_bytes());
    for (k, v) in files.iter().flat_map(|f| f.2.iter()).chain([&dir_attr]) {
        assert!(!has(k), "attribute name {k} in the store");
        assert!(!has(v), "attribute value {v} in the store");
        assert!(!has(&v[..12]), "part of the value {v} in the store");
    }

    // Tamper, as the store's holder can.
    let gdir = ts.store.join("groups/g");
    let back: BTreeMap<&str, std::path::PathBuf> = files
        .iter()
        .map(|(name, size, _)| (*name, backing_of_size(&gdir, *size as u64)))
        .collect();
    let dirs: Vec<_> = fs::read_dir(&gdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1);
    let cohort = &dirs[0];
    // The same attribute name has the same backing name on every file of
    // the group (deterministic, like entry names); the two attributes differ.
    let names = backing_xattrs(&back["flipped"]);
    assert_eq!(names.len(), 2);
    assert_eq!(names, backing_xattrs(&back["swapped"]));
    let diag_of = |p: &Path| {
        let v = backing_xattrs(p);
        assert_eq!(v.len(), 1);
        v[0].clone()
    };
    let diagnosis = diag_of(&back["source"]);
    assert_eq!(diagnosis, diag_of(&back["copied"]));
    assert!(names.contains(&diagnosis));
    let reviewer = names.iter().find(|n| **n != diagnosis).unwrap().clone();
    let get = |p: &Path, n: &str| xattr::get(p, n).unwrap().unwrap();
    // 1. One byte of a value flipped.
    let mut v = get(&back["flipped"], &diagnosis);
    let i = v.len() / 2;
    v[i] ^= 0x01;
    xattr::set(&back["flipped"], &diagnosis, &v).unwrap();
    // 2. The values of two attributes of one file swapped.
    let (d, r) = (
        get(&back["swapped"], &diagnosis),
        get(&back["swapped"], &reviewer),
    );
    xattr::set(&back["swapped"], &diagnosis, &r).unwrap();
    xattr::set(&back["swapped"], &reviewer, &d).unwrap();
    // 3. A value copied onto the same attribute of another file (LIMIT).
    xattr::set(
        &back["copied"],
        &diagnosis,
        &get(&back["source"], &diagnosis),
    )
    .unwrap();
    // 4. The backing name changed by one character.
    let old = diag_of(&back["renamed"]);
    let mut new = old.clone().into_bytes();
    let j = new.len() - 3;
    new[j] = if new[j] == b'A' { b'B' } else { b'A' };
    let new = String::from_utf8(new).unwrap();
    let value = get(&back["renamed"], &old);
    xattr::remove(&back["renamed"], &old).unwrap();
    xattr::set(&back["renamed"], &new, &value).unwrap();
    // 5. The directory's value flipped.
    let dn = diag_of(cohort);
    let mut v = get(cohort, &dn);
    assert!(
        store.windows(v.len()).any(|w| w == v) && has(&dn),
        "all_store_bytes must read the backing attributes of directories"
    );
    v[14] ^= 0x80;
    xattr::set(cohort, &dn, &v).unwrap();

    let m = ts.mount();
    let g = m.path("g");
    let eio = Some(libc::EIO);
    assert_eq!(getxattr_errno(&g.join("flipped"), "user.diagnosis"), eio);
    assert_eq!(
        xattr::get(g.join("flipped"), "user.reviewer")
            .unwrap()
            .as_deref(),
        Some(files[0].2[1].1.as_bytes()),
        "the untouched attribute of the same file still reads"
    );
    assert_eq!(getxattr_errno(&g.join("swapped"), "user.diagnosis"), eio);
    assert_eq!(getxattr_errno(&g.join("swapped"), "user.reviewer"), eio);
    assert_eq!(
        getxattr_errno(&g.join("cohort"), &format!("user.{}", dir_attr.0)),
        eio
    );
    // getfattr, a real program, fails too and prints no value.
    let out = isolate(&mut Command::new("getfattr"))
        .args(["--only-values", "-n", "user.diagnosis"])
        .arg(g.join("flipped"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Input/output error"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A changed backing name is no attribute: not listed, ENODATA.
    assert_eq!(xattr::list(g.join("renamed")).unwrap().count(), 0);
    assert_eq!(
        xattr::get(g.join("renamed"), "user.ward-of-admission").unwrap(),
        None,
        "ENODATA"
    );
    // LIMIT (docs/FORMAT.md §10): the copied value reads as the source's.
    assert_eq!(
        xattr::get(g.join("copied"), "user.diagnosis")
            .unwrap()
            .as_deref(),
        Some(files[2].2[0].1.as_bytes()),
        "the documented limit changed: update docs/FORMAT.md §10"
    );
    m.unmount();
    let log = fs::read_to_string(ts.dir.path().join("mount.log")).unwrap();
    assert!(
        log.contains("extended attribute user.diagnosis failed authentication"),
        "{log}"
    );
}

#[test]
fn cli_errors_are_clear_and_distinct() {
    let ts = TestStore::new(&["g"]);
    let mnt = ts.subdir("m");
    let wrong = ts.dir.path().join("wrong");
    fs::write(&wrong, "not the passphrase\n").unwrap();
    let mount = |pse: &Path, pass: &Path, store: &Path| {
        tresor()
            .arg("mount")
            .arg(store)
            .arg(&mnt)
            .arg("--pse")
            .arg(pse)
            .arg("--passphrase-file")
            .arg(pass)
            .arg("-f")
            .output()
            .unwrap()
    };
    let out = mount(&ts.pse, &wrong, &ts.store);
    assert!(!out.status.success());
    let e1 = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(e1.contains("wrong passphrase"), "{e1}");

    let bad_pse = ts.dir.path().join("bad.pse");
    let mut bytes = fs::read(&ts.pse).unwrap();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    fs::write(&bad_pse, &bytes).unwrap();
    let out = mount(&bad_pse, &ts.pass, &ts.store);
    let e2 = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(
        e2.contains("corrupted") && !e2.contains("wrong passphrase"),
        "{e2}"
    );

    // A foreign directory and a store from the future.
    let out = mount(&ts.pse, &ts.pass, ts.dir.path());
    let e3 = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(e3.contains("is not a tresor store"), "{e3}");
    let manifest = ts.store.join("tresor.json");
    let text = fs::read_to_string(&manifest).unwrap();
    fs::write(
        &manifest,
        text.replace("\"tresor_store\": 1", "\"tresor_store\": 9"),
    )
    .unwrap();
    let out = mount(&ts.pse, &ts.pass, &ts.store);
    let e4 = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(e4.contains("version 9") && e4.contains("upgrade"), "{e4}");
    fs::write(
        &manifest,
        text.replace("\"longnames\"", "\"quantum-names\""),
    )
    .unwrap();
    let out = mount(&ts.pse, &ts.pass, &ts.store);
    let e5 = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(e5.contains("newer tresor"), "{e5}");
    fs::write(&manifest, text).unwrap();

    // Passphrases never come from argv: there is no such flag. The command
    // line is otherwise complete (the same one with --passphrase-file ran
    // above), so the flag is the only thing refused.
    let out = tresor()
        .arg("mount")
        .arg(&ts.store)
        .arg(&mnt)
        .arg("--pse")
        .arg(&ts.pse)
        .args(["--passphrase", "test passphrase", "-f"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "a usage error: {e}");
    assert!(e.contains("unexpected argument '--passphrase'"), "{e}");
    assert!(!e.contains("required"), "nothing else is missing: {e}");
    // Without a terminal and without a file, tresor says what to do.
    let out = tresor()
        .arg("mount")
        .arg(&ts.store)
        .arg(&mnt)
        .arg("--pse")
        .arg(&ts.pse)
        .arg("-f")
        .output()
        .unwrap();
    let e6 = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(e6.contains("--passphrase-file"), "{e6}");
}

#[test]
fn background_mount_and_umount_command() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let mnt = ts.subdir("bg");
    let log = ts.dir.path().join("bg.log");
    ok(tresor()
        .arg("mount")
        .arg(&ts.store)
        .arg(&mnt)
        .arg("--pse")
        .arg(&ts.pse)
        .arg("--passphrase-file")
        .arg(&ts.pass)
        .arg("--log")
        .arg(&log));
    // The starting command returned only once the mount was up.
    fs::write(mnt.join("g/hello"), b"hi").unwrap();
    assert_eq!(fs::read(mnt.join("g/hello")).unwrap(), b"hi");
    ok(tresor().arg("umount").arg(&mnt));
    assert!(!mnt.join("g").exists());
}

/// Runs `script` as uid/gid 1234 (root only); returns (success, stdout+stderr).
fn as_other_user(dir: &Path, script: &str) -> (bool, String) {
    let out = isolate_as(&mut Command::new("setpriv"), 1234)
        .args([
            "--reuid=1234",
            "--regid=1234",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn allow_other_behaves_like_a_local_filesystem() {
    if !fuse_available() || !require_root("run commands as another uid with setpriv") {
        return;
    }
    let ts = TestStore::new(&["g"]);
    // Other users must be able to traverse to the mount point.
    fs::set_permissions(ts.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();

    // Without --allow-other, another user cannot even look.
    let m = ts.mount();
    let (ok_, text) = as_other_user(&ts.dir.path().join("mnt"), "ls g");
    assert!(!ok_, "other user got in without --allow-other: {text}");
    m.unmount();

    let m = ts.mount_with(&["--allow-other"]);
    let g = m.path("g");
    fs::set_permissions(&g, fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(g.join("private"), b"root only").unwrap();
    fs::set_permissions(g.join("private"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(g.join("public"), b"everyone").unwrap();
    fs::set_permissions(g.join("public"), fs::Permissions::from_mode(0o644)).unwrap();

    let (ok_, text) = as_other_user(&g, "cat private");
    assert!(!ok_ && text.contains("Permission denied"), "{text}");
    let (ok_, text) = as_other_user(&g, "cat public");
    assert!(ok_ && text == "everyone", "{text}");
    let (ok_, text) = as_other_user(&g, "echo x >> public");
    assert!(!ok_ && text.contains("Permission denied"), "{text}");
    let (ok_, text) = as_other_user(
        &g,
        "echo mine > mine && mkdir mydir && stat -c '%u:%g' mine mydir",
    );
    assert!(ok_, "{text}");
    assert_eq!(text, "1234:1234\n1234:1234\n");
    // Sticky directory: another user's file cannot be removed.
    let (ok_, _) = as_other_user(&g, "rm -f public");
    assert!(!ok_);
    assert!(g.join("public").exists());
    m.unmount();
}
