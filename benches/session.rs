//! How soon a mount locks after its PSE is removed (pulling the medium,
//! docs/SESSIONS.md): the measurement `removing_the_pse_locks_the_mount`
//! no longer makes (speed lives in benchmarks, not in tests).
//!
//! Run with `cargo bench --bench session` (root or a user who may mount
//! FUSE; about half a minute). It makes a store with cheap Argon2 in a temp
//! dir, mounts it with the real `tresor` binary (`--idle-lock 0`, its own
//! HOME and runtime dir: nothing reaches the real home or /run), and per
//! iteration: puts the PSE back and logs in over the control socket, waits a
//! random 0–200 ms (so removals fall at every phase of the watcher's beat;
//! all of this untimed), removes the PSE, and waits until the status says
//! locked. The
//! time is the driver's `locked_since_ms` minus the removal (both wall clock,
//! millisecond resolution). The watcher looks every 200 ms, so expect values
//! spread over 0–200 ms plus the lock itself. After criterion's estimate it
//! prints min / median / p90 / max over every iteration it ran.

use criterion::{Criterion, SamplingMode};
use rand::Rng;
use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tresor::session::{self, Request, Status};
use zeroize::Zeroizing;

const PASSPHRASE: &str = "bench passphrase";

/// Every measured removal→lock time (warm-up included), for the percentiles.
static SEEN: Mutex<Vec<Duration>> = Mutex::new(Vec::new());

struct Bench {
    dir: tempfile::TempDir,
    store: PathBuf,
    /// The PSE the store was made with (the medium's copy comes from it).
    master: PathBuf,
    /// The PSE on the "medium": removed and put back each iteration.
    pse: PathBuf,
    pass: PathBuf,
    mnt: PathBuf,
    driver: Option<Child>,
}

impl Bench {
    fn env(&self, c: &mut Command) {
        let d = self.dir.path();
        c.env("HOME", d.join("home"))
            .env("XDG_STATE_HOME", d.join("state"))
            .env("XDG_RUNTIME_DIR", d.join("run"))
            .env("TRESOR_RUNTIME_DIR", self.runtime_dir())
            .stdin(Stdio::null());
    }

    fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("run").join("tresor")
    }

    fn tresor(&self, args: &[&std::ffi::OsStr]) {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tresor"));
        self.env(&mut c);
        let o = c.args(args).output().expect("run tresor");
        assert!(
            o.status.success(),
            "tresor {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn new() -> Bench {
        let dir = tempfile::Builder::new()
            .prefix("tresor-bench-")
            .tempdir()
            .expect("temp dir");
        for sub in ["home", "state", "run", "medium", "mnt"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let p = |n: &str| dir.path().join(n);
        let mut b = Bench {
            store: p("store"),
            master: p("admin.pse"),
            pse: p("medium/admin.pse"),
            pass: p("pass"),
            mnt: p("mnt"),
            driver: None,
            dir,
        };
        std::fs::write(&b.pass, format!("{PASSPHRASE}\n")).unwrap();
        let (st, m, pass) = (b.store.clone(), b.master.clone(), b.pass.clone());
        b.tresor(&[
            "init".as_ref(),
            st.as_os_str(),
            "--pse".as_ref(),
            m.as_os_str(),
            "--passphrase-file".as_ref(),
            pass.as_os_str(),
            "--kdf-memory-mib".as_ref(),
            "8".as_ref(),
        ]);
        b.tresor(&[
            "datagroup".as_ref(),
            "add".as_ref(),
            st.as_os_str(),
            "g".as_ref(),
            "--pse".as_ref(),
            m.as_os_str(),
            "--passphrase-file".as_ref(),
            pass.as_os_str(),
        ]);
        std::fs::copy(&b.master, &b.pse).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_tresor"));
        b.env(&mut c);
        let child = c
            .arg("mount")
            .arg(&b.store)
            .arg(&b.mnt)
            .arg("--pse")
            .arg(&b.pse)
            .arg("--passphrase-file")
            .arg(&b.pass)
            .args(["-f", "--idle-lock", "0"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(b.dir.path().join("mount.log")).unwrap())
            .spawn()
            .expect("run tresor mount");
        b.driver = Some(child);
        let start = Instant::now();
        while b.query(&Request::new("status")).is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the mount did not come up; log:\n{}",
                std::fs::read_to_string(b.dir.path().join("mount.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Something in the kernel's caches for the lock to flush and drop.
        std::fs::write(b.mnt.join("g/f"), vec![b'x'; 1 << 20]).unwrap();
        b
    }

    fn query(&self, req: &Request) -> Option<Status> {
        let sock = session::socket_path_in(&self.runtime_dir(), &self.mnt);
        let mut s = UnixStream::connect(sock).ok()?;
        session::call(&mut s, req).ok()?.status
    }

    fn status(&self) -> Status {
        self.query(&Request::new("status"))
            .expect("the driver answers status")
    }

    /// Puts the medium back and logs in (untimed).
    fn log_in(&self) {
        std::fs::copy(&self.master, &self.pse).unwrap();
        let req = Request::login(self.pse.clone(), Zeroizing::new(PASSPHRASE.into()));
        let s = self.query(&req).expect("login");
        assert!(!s.locked);
        // Touch the file again so the kernel knows it at lock time.
        std::fs::read(self.mnt.join("g/f")).unwrap();
        // A random phase against the watcher's 200 ms beat: without it the
        // loop (lock, log in, remove) runs in step with the watcher and
        // measures one phase over and over.
        let phase = rand::thread_rng().gen_range(0..session::WATCH_INTERVAL.as_millis() as u64);
        std::thread::sleep(Duration::from_millis(phase));
    }

    /// Removes the PSE; the time until the driver locked.
    fn removal_to_lock(&self) -> Duration {
        let removed = SystemTime::now();
        std::fs::remove_file(&self.pse).unwrap();
        let start = Instant::now();
        let s = loop {
            let s = self.status();
            if s.locked {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "not locked 10 s after the PSE was removed"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(s.lock_reason.unwrap_or_default().contains("removed"));
        let removed_ms = removed.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let locked_ms = s.locked_since_ms.expect("locked_since_ms");
        let d = Duration::from_millis(locked_ms.saturating_sub(removed_ms));
        SEEN.lock().unwrap().push(d);
        d
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .status();
        if let Some(mut c) = self.driver.take() {
            let start = Instant::now();
            while matches!(c.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn fuse_available() -> bool {
    Path::new("/dev/fuse").exists()
        && Command::new("fusermount3")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

fn main() {
    if !fuse_available() {
        eprintln!(
            "session bench: FUSE is not available here (/dev/fuse, fusermount3); nothing measured"
        );
        return;
    }
    let bench = Bench::new();
    let mut c = Criterion::default().configure_from_args();
    {
        let mut g = c.benchmark_group("session");
        g.sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(20));
        g.bench_function("pse_removed_to_locked", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    bench.log_in();
                    total += bench.removal_to_lock();
                }
                total
            })
        });
        g.finish();
    }
    c.final_summary();
    let mut seen = SEEN.lock().unwrap().clone();
    if seen.is_empty() {
        return;
    }
    seen.sort();
    let ms = |d: Duration| d.as_millis();
    let mean = seen.iter().sum::<Duration>() / seen.len() as u32;
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "session/pse_removed_to_locked over {} removals: min {} ms, median {} ms, p90 {} ms, max {} ms, mean {} ms (watcher interval {} ms)",
        seen.len(),
        ms(seen[0]),
        ms(percentile(&seen, 50)),
        ms(percentile(&seen, 90)),
        ms(seen[seen.len() - 1]),
        ms(mean),
        session::WATCH_INTERVAL.as_millis()
    );
}
