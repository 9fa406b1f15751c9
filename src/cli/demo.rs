//! `tresor demo`: the whole product on a throw-away store, narrated — each
//! step one line, then what it did. Every step is a real `tresor` command
//! (this binary, in child processes), so the demo shows exactly what a user
//! would type: stores, roles and the matrix, mounts per user, a generated
//! virtual slide, the Ki-67 analysis profiled once and run confined through
//! the mount, a signed prescription, a lock and a user switch, and the same
//! analysis through the analysis service (submit, approve, release, fetch).

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output};
use std::time::{Duration, Instant};

/// Marks a directory as a demo's, so a second run may clear it.
const MARKER: &str = "tresor-demo.txt";
/// Passphrase of every demo PSE (written to files; never on a command line).
const PASSPHRASE: &str = "demo passphrase";
/// Data groups, roles and the matrix (Figure 2 of the security concept, in small).
const GROUPS: [&str; 3] = ["pathology", "lab", "prescriptions"];
const MATRIX: [(&str, [&str; 3]); 4] = [
    ("physicians", ["w", "w", "w"]),
    ("nurses", ["r", "-", "r"]),
    ("researchers", ["w", "-", "-"]),
    ("service", ["w", "-", "-"]),
];
/// Users: name, role.
const USERS: [(&str, &str); 4] = [
    ("alice", "physicians"),
    ("nina", "nurses"),
    ("rob", "researchers"),
    ("svc", "service"),
];
/// Duties in the analysis service: researchers submit, physicians approve,
/// nurses check and release outputs.
const DUTIES: [(&str, &str); 3] = [
    ("researchers", "submit"),
    ("physicians", "approve"),
    ("nurses", "release"),
];
const SLIDE: &str = "pathology/S-2026-0042/slide.tiff";
const RESULTS: &str = "pathology/S-2026-0042/ki67";
const LAB: &str = "lab/patient-0042/blood-2026-11-20.csv";
const RX: &str = "prescriptions/patient-0042/rx-2026-11-23.txt";

fn step(n: u32, text: &str) {
    use std::io::IsTerminal;
    let bold = std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    if bold {
        println!("\n\x1b[1m{n}. {text}\x1b[0m");
    } else {
        println!("\n{n}. {text}");
    }
}

fn detail(text: impl AsRef<str>) {
    for line in text.as_ref().lines() {
        println!("   {line}");
    }
}

/// Runs the demo in `dir` (default: a new temp dir); `keep` leaves it behind.
pub fn run(keep: bool, dir: Option<PathBuf>) -> Result<ExitCode> {
    let started = Instant::now();
    let (root, temp) = match dir {
        Some(d) => (prepare_dir(&d)?, None),
        None => {
            let t = tempfile::Builder::new().prefix("tresor-demo-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    fs::write(
        root.join(MARKER),
        "a tresor demo; `tresor demo --dir` may clear it\n",
    )?;
    println!("tresor demo — everything happens in {}", root.display());
    let mut demo = Demo::new(&root)?;
    let result = demo.all();
    demo.unmount_all();
    result?;
    println!(
        "\ndone in {:.0} s; every mount is unmounted",
        started.elapsed().as_secs_f64()
    );
    if keep || temp.is_none() {
        let kept = match temp {
            Some(t) => t.keep(),
            None => root,
        };
        println!(
            "kept {}: store/, the PSEs (*.pse; passphrase in pass.txt), ki67.json, the logs",
            kept.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `--dir`: a new directory, or one an earlier demo left (cleared after
/// unmounting whatever it still has mounted); anything else is refused.
fn prepare_dir(d: &Path) -> Result<PathBuf> {
    if d.exists() {
        let empty = fs::read_dir(d)?.next().is_none();
        if !empty && !d.join(MARKER).exists() {
            bail!(
                "{} exists and is not a tresor demo directory; give a new or empty one",
                d.display()
            );
        }
        let d = d.canonicalize()?;
        for m in ["mnt-alice", "mnt-nina", "mnt-rob"] {
            let p = d.join(m);
            if is_mounted(&p) {
                let _ = Command::new("fusermount3").arg("-u").arg(&p).output();
                let _ = Command::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(&p)
                    .output();
            }
        }
        fs::remove_dir_all(&d).with_context(|| format!("cannot clear {}", d.display()))?;
    }
    fs::create_dir_all(d)?;
    Ok(d.canonicalize()?)
}

fn is_mounted(p: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = p.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*p))
}

struct Demo {
    root: PathBuf,
    exe: PathBuf,
    store: PathBuf,
    pass: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Demo {
    fn new(root: &Path) -> Result<Demo> {
        let pass = root.join("pass.txt");
        fs::write(&pass, format!("{PASSPHRASE}\n"))?;
        Ok(Demo {
            root: root.to_path_buf(),
            exe: std::env::current_exe().context("cannot find the tresor binary")?,
            store: root.join("store"),
            pass,
            mounts: Vec::new(),
        })
    }

    fn pse(&self, user: &str) -> PathBuf {
        self.root.join(format!("{user}.pse"))
    }

    fn mnt(&self, user: &str) -> PathBuf {
        self.root.join(format!("mnt-{user}"))
    }

    fn tresor<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new(&self.exe);
        // Each demo its own rollback record (docs/ACCESS.md).
        c.args(args).env("XDG_STATE_HOME", self.root.join("state"));
        c
    }

    /// An admin command: `ARGS --pse admin.pse --passphrase-file pass.txt`.
    fn admin(&self, args: &[&OsStr]) -> Result<Output> {
        let mut c = self.tresor(args);
        c.arg("--pse")
            .arg(self.pse("admin"))
            .arg("--passphrase-file")
            .arg(&self.pass);
        ok(&mut c)
    }

    fn all(&mut self) -> Result<()> {
        let (slide_tool, ki67) = self.tools()?;
        self.setup()?;
        self.write_clinical_data(&slide_tool)?;
        let summary = self.analysis(&ki67)?;
        self.ciphertext(&summary)?;
        self.nurse()?;
        self.violation(&ki67)?;
        self.prescription()?;
        self.switch_user()?;
        self.service(&ki67)?;
        step(11, "unmount");
        Ok(())
    }

    /// The slide generator and the Ki-67 analysis, binaries of the package
    /// beside this one: under `cargo run` built now (the same profile and
    /// dependencies as tresor itself, no dev-dependencies: seconds), else a
    /// clear error.
    fn tools(&self) -> Result<(PathBuf, PathBuf)> {
        let dir = self.exe.parent().unwrap_or(Path::new("."));
        let slide = dir.join("tresor-slide");
        let ki67 = dir.join("tresor-ki67");
        if let Some(cargo) = std::env::var_os("CARGO") {
            let release = dir.ends_with("release");
            let mut c = Command::new(cargo);
            c.args([
                "build",
                "--quiet",
                "--bin",
                "tresor-slide",
                "--bin",
                "tresor-ki67",
            ])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
            if release {
                c.arg("--release");
            }
            spin(
                "building the slide generator and the Ki-67 analysis (cargo build --bin tresor-slide --bin tresor-ki67)",
                || ok(&mut c),
            )?;
        }
        for p in [&slide, &ki67] {
            if !p.exists() {
                bail!(
                    "{} is missing; build it with `cargo build --release --bins` (or run the demo with `cargo run --release -- demo`)",
                    p.display()
                );
            }
        }
        Ok((slide, ki67))
    }

    fn setup(&self) -> Result<()> {
        step(
            1,
            "a store, its administrator, roles, data groups, users and the access matrix",
        );
        ok(self
            .tresor(["init".as_ref(), self.store.as_os_str()])
            .arg("--pse")
            .arg(self.pse("admin"))
            .arg("--passphrase-file")
            .arg(&self.pass))?;
        let store = self.store.as_os_str();
        for (role, _) in MATRIX {
            self.admin(&["role".as_ref(), "add".as_ref(), store, role.as_ref()])?;
        }
        for g in GROUPS {
            self.admin(&["datagroup".as_ref(), "add".as_ref(), store, g.as_ref()])?;
        }
        for (role, rights) in MATRIX {
            for (g, r) in GROUPS.iter().zip(rights) {
                self.admin(&[
                    "grant".as_ref(),
                    store,
                    role.as_ref(),
                    g.as_ref(),
                    r.as_ref(),
                ])?;
            }
        }
        for (role, duty) in DUTIES {
            self.admin(&["duty".as_ref(), store, role.as_ref(), duty.as_ref()])?;
        }
        for (user, role) in USERS {
            let pse = self.pse(user);
            self.admin(&[
                "user".as_ref(),
                "add".as_ref(),
                store,
                user.as_ref(),
                "--role".as_ref(),
                role.as_ref(),
                "--pse-out".as_ref(),
                pse.as_os_str(),
                "--user-passphrase-file".as_ref(),
                self.pass.as_os_str(),
            ])?;
        }
        detail(format!(
            "store {}; users {} (RSA-3072 keys in Argon2id-sealed PSEs)",
            self.store.display(),
            USERS
                .iter()
                .map(|(u, r)| format!("{u} ({r})"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let matrix = ok(&mut self.tresor(["matrix".as_ref(), store]))?;
        detail(String::from_utf8_lossy(&matrix.stdout));
        Ok(())
    }

    /// `tresor mount` as `user` (in the background; unmounted at the end).
    fn mount(&mut self, user: &str) -> Result<PathBuf> {
        let mnt = self.mnt(user);
        fs::create_dir_all(&mnt)?;
        ok(self
            .tresor(["mount".as_ref(), self.store.as_os_str(), mnt.as_os_str()])
            .arg("--pse")
            .arg(self.pse(user))
            .arg("--passphrase-file")
            .arg(&self.pass)
            .arg("--log")
            .arg(self.root.join(format!("mount-{user}.log"))))?;
        self.mounts.push(mnt.clone());
        Ok(mnt)
    }

    fn unmount_all(&mut self) {
        for m in std::mem::take(&mut self.mounts) {
            let done = self
                .tresor(["umount".as_ref(), m.as_os_str()])
                .output()
                .is_ok_and(|o| o.status.success());
            if done {
                detail(format!("unmounted {}", m.display()));
            } else {
                let _ = Command::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(&m)
                    .output();
            }
        }
    }

    fn write_clinical_data(&mut self, slide_tool: &Path) -> Result<()> {
        step(
            2,
            "alice (physician) mounts the store and writes a virtual slide, lab values and a prescription into it",
        );
        let mnt = self.mount("alice")?;
        let slide = mnt.join(SLIDE);
        if let Some(p) = slide.parent() {
            fs::create_dir_all(p)?;
        }
        spin(
            "generating a pyramidal tiled TIFF slide through the mount",
            || {
                ok(Command::new(slide_tool)
                    .arg("--out")
                    .arg(&slide)
                    .args(["--seed", "42"]))
            },
        )?;
        // The ground truth stays out of the analysts' reach.
        let truth = slide.with_extension("truth.json");
        fs::copy(&truth, self.root.join("slide.truth.json"))?;
        fs::remove_file(&truth)?;
        for (path, text) in [
            (
                LAB,
                "test,value,unit\nhb,13.9,g/dl\ncrp,4.1,mg/l\nki67_serum,n/a,\n",
            ),
            (
                RX,
                "Rx for patient 0042: ramipril 5 mg, 1-0-0, 98 tablets.\nDr. A. Alvarez (alice)\n",
            ),
        ] {
            let p = mnt.join(path);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(&p, text)?;
        }
        detail(format!(
            "{SLIDE}  {} (plaintext through {})",
            fmt_bytes(fs::metadata(&slide)?.len()),
            mnt.display()
        ));
        detail(format!("{LAB}, {RX}"));
        Ok(())
    }

    fn analysis(&mut self, ki67: &Path) -> Result<serde_json::Value> {
        step(
            3,
            "rob (researcher) mounts it too; the submitted Ki-67 analysis is profiled once, then runs confined",
        );
        let mnt = self.mount("rob")?;
        let slide = mnt.join(SLIDE);
        let scratch = self.root.join("profiling-out");
        fs::create_dir_all(&scratch)?;
        let profile = self.root.join("ki67.json");
        spin("tresor profile -- ki67 (ptrace, once)", || {
            ok(self
                .tresor(["profile", "--out"])
                .arg(&profile)
                .arg("--data")
                .arg(slide.parent().unwrap_or(&mnt))
                .arg("--writable")
                .arg(&scratch)
                .arg("--")
                .arg(ki67)
                .arg(&slide)
                .arg("--out")
                .arg(&scratch))
        })?;
        let p: serde_json::Value = serde_json::from_slice(&fs::read(&profile)?)?;
        detail(format!(
            "profile ki67.json: {} syscalls, network {}",
            p["syscalls"].as_object().map_or(0, |m| m.len()),
            if p["network"].as_bool() == Some(true) {
                "used"
            } else {
                "never used"
            }
        ));
        let out = mnt.join(RESULTS);
        fs::create_dir_all(&out)?;
        spin(
            "tresor run --data <mounted slide> --out <mounted pathology group> -- ki67",
            || ok(&mut self.run_ki67(ki67, &slide, &out)),
        )?;
        let summary: serde_json::Value =
            serde_json::from_slice(&fs::read(out.join("summary.json"))?)
                .context("the analysis wrote no readable summary.json")?;
        detail(format!(
            "Ki-67 index {}% ({} of {} nuclei positive); heat map {}",
            summary["ki67_index_percent"],
            summary["positive"],
            summary["nuclei"],
            out.join("heatmap.png").display()
        ));
        if let Some(regions) = summary["regions"].as_array() {
            for r in regions.iter().take(6) {
                detail(format!(
                    "  region {}: {}% of {} nuclei",
                    r["id"], r["ki67_index_percent"], r["nuclei"]
                ));
            }
        }
        // Keep a copy of the heat map outside the store for the reader.
        fs::copy(out.join("heatmap.png"), self.root.join("heatmap.png"))?;
        Ok(summary)
    }

    /// `tresor run --profile ki67.json --data <slide's folder> --out OUT --
    /// ki67 SLIDE --out OUT`: the confined analysis (more arguments may follow).
    fn run_ki67(&self, ki67: &Path, slide: &Path, out: &Path) -> Command {
        let mut c = self.tresor(["run", "--profile"]);
        c.arg(self.root.join("ki67.json"))
            .arg("--data")
            .arg(slide.parent().unwrap_or(slide))
            .arg("--out")
            .arg(out)
            .arg("--")
            .arg(ki67)
            .arg(slide)
            .arg("--out")
            .arg(out);
        c
    }

    fn ciphertext(&self, summary: &serde_json::Value) -> Result<()> {
        step(
            4,
            "the same files in the store: encrypted names, encrypted contents",
        );
        let mut files = Vec::new();
        walk(&self.store.join("groups"), &mut files)?;
        let mut shown = 0;
        for f in &files {
            let bytes = fs::read(f)?;
            if shown < 6 {
                let rel = f.strip_prefix(&self.store).unwrap_or(f);
                let head: String = bytes.iter().take(16).map(|b| format!("{b:02x}")).collect();
                detail(format!(
                    "{:>9}  {}\n           {head}…",
                    fmt_bytes(bytes.len() as u64),
                    shorten(&rel.display().to_string(), 72)
                ));
                shown += 1;
            }
        }
        detail(format!("… {} files in all", files.len()));
        let needle = b"ki67_index_percent";
        let leaked = files
            .iter()
            .filter_map(|f| fs::read(f).ok())
            .any(|b| b.windows(needle.len()).any(|w| w == needle));
        if leaked {
            bail!("plaintext of the result found in the store — this is a bug");
        }
        detail(format!(
            "\"ki67_index_percent\" (in summary.json, index {}) appears nowhere in the store's bytes",
            summary["ki67_index_percent"]
        ));
        Ok(())
    }

    fn nurse(&mut self) -> Result<()> {
        step(
            5,
            "nina (nurse) mounts it: prescriptions readable, lab data not",
        );
        let mnt = self.mount("nina")?;
        let rx = fs::read_to_string(mnt.join(RX))?;
        detail(format!(
            "cat {RX}: {}",
            rx.lines().next().unwrap_or_default()
        ));
        match fs::read(mnt.join(LAB)) {
            Ok(_) => bail!("nina could read {LAB} — the matrix says she may not"),
            Err(e) => detail(format!("cat {LAB}: {e}")),
        }
        Ok(())
    }

    fn violation(&self, ki67: &Path) -> Result<()> {
        step(
            6,
            "a tampered version of the analysis tries to send data out: stopped and reported",
        );
        let mnt = self.mnt("rob");
        let slide = mnt.join(SLIDE);
        let out = self.root.join("tampered-out");
        fs::create_dir_all(&out)?;
        let r = self
            .run_ki67(ki67, &slide, &out)
            .args(["--phone-home", "127.0.0.1:80"])
            .output()?;
        let err = String::from_utf8_lossy(&r.stderr);
        if r.status.code() != Some(i32::from(crate::sandbox::launch::EXIT_VIOLATION)) {
            bail!("the tampered analysis was not stopped: {err}");
        }
        detail(err.trim());
        detail(format!(
            "exit status {} (policy violation)",
            crate::sandbox::launch::EXIT_VIOLATION
        ));
        Ok(())
    }

    fn prescription(&self) -> Result<()> {
        step(
            7,
            "alice signs the prescription; tresor verify confirms it, then catches a one-byte change",
        );
        let rx = self.mnt("alice").join(RX);
        let signed = ok(self
            .tresor(["sign".as_ref(), rx.as_os_str()])
            .arg("--pse")
            .arg(self.pse("alice"))
            .arg("--passphrase-file")
            .arg(&self.pass))?;
        detail(String::from_utf8_lossy(&signed.stdout).trim());
        let verify = || {
            self.tresor(["verify".as_ref(), rx.as_os_str()])
                .arg("--pse")
                .arg(self.pse("nina"))
                .output()
        };
        let good = verify()?;
        if !good.status.success() {
            bail!(
                "verify failed: {}",
                String::from_utf8_lossy(&good.stderr).trim()
            );
        }
        detail(format!(
            "tresor verify: {}",
            String::from_utf8_lossy(&good.stdout).trim()
        ));
        // One byte: the dose.
        let text = fs::read_to_string(&rx)?;
        fs::write(&rx, text.replacen("5 mg", "6 mg", 1))?;
        let bad = verify()?;
        if bad.status.success() {
            bail!("verify accepted a changed prescription");
        }
        detail("the dose changed from 5 mg to 6 mg (one byte); tresor verify:");
        detail(format!(
            "  {}{}",
            String::from_utf8_lossy(&bad.stdout).trim(),
            String::from_utf8_lossy(&bad.stderr).trim()
        ));
        detail(format!("  exit status {}", bad.status.code().unwrap_or(-1)));
        Ok(())
    }

    fn switch_user(&self) -> Result<()> {
        step(
            8,
            "alice's mount is locked: keys wiped, cached plaintext dropped",
        );
        let mnt = self.mnt("alice");
        ok(&mut self.tresor(["lock".as_ref(), mnt.as_os_str()]))?;
        match fs::read(mnt.join(LAB)) {
            Ok(_) => bail!("{LAB} still readable after the lock"),
            Err(e) => detail(format!("cat {LAB}: {e}")),
        }
        step(9, "nina logs in on the same mount: the view becomes hers");
        ok(self
            .tresor(["login".as_ref(), mnt.as_os_str()])
            .arg("--pse")
            .arg(self.pse("nina"))
            .arg("--passphrase-file")
            .arg(&self.pass))?;
        let status = ok(&mut self.tresor(["status".as_ref(), mnt.as_os_str()]))?;
        let text = String::from_utf8_lossy(&status.stdout);
        for line in text.lines().filter(|l| {
            l.starts_with("user:") || l.starts_with("data groups") || l.starts_with("  ")
        }) {
            detail(line);
        }
        match fs::read(mnt.join(LAB)) {
            Ok(_) => bail!("nina could read {LAB} on alice's former mount"),
            Err(e) => detail(format!("cat {LAB}: {e}")),
        }
        let rx = fs::read_to_string(mnt.join(RX))?;
        detail(format!(
            "cat {RX}: {}",
            rx.lines().next().unwrap_or_default()
        ));
        Ok(())
    }
}

impl Demo {
    /// A client command of the service as `user`.
    fn client(&self, url: &str, user: &str, cmd: &str) -> Command {
        let mut c = self.tresor([cmd, "--service", url]);
        c.arg("--pse")
            .arg(self.pse(user))
            .arg("--passphrase-file")
            .arg(&self.pass);
        c
    }

    /// `tresor jobs ID --wait` (the service's long poll), then checks the state.
    fn wait_job(&self, url: &str, id: &str, want: &str) -> Result<serde_json::Value> {
        let out = ok(self
            .client(url, "alice", "jobs")
            .args([id, "--wait", "--json"]))?;
        let j: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        if j["state"] != want {
            bail!("job {id} is {}, not {want}: {}", j["state"], j["reason"]);
        }
        Ok(j)
    }

    fn service(&self, ki67: &Path) -> Result<()> {
        step(
            10,
            "the analysis service: rob submits Ki-67, alice approves, it runs confined, nina checks and releases, the heat map joins the sample record",
        );
        let state = self.root.join("service");
        let mut serve = self
            .tresor(["serve".as_ref(), self.store.as_os_str()])
            .arg("--pse")
            .arg(self.pse("svc"))
            .arg("--passphrase-file")
            .arg(&self.pass)
            .args(["--listen", "127.0.0.1:0", "--workers", "1", "--state"])
            .arg(&state)
            .stdout(std::process::Stdio::piped())
            .stderr(fs::File::create(self.root.join("serve.log"))?)
            .spawn()
            .context("cannot start tresor serve")?;
        let result = self.service_flow(&mut serve, ki67);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(serve.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = serve.wait();
        result?;
        let audit = ok(self
            .tresor([
                "audit".as_ref(),
                "verify".as_ref(),
                state.join("audit.log").as_os_str(),
            ])
            .arg("--store")
            .arg(&self.store))?;
        detail(String::from_utf8_lossy(&audit.stdout).trim());
        Ok(())
    }

    fn service_flow(&self, serve: &mut std::process::Child, ki67: &Path) -> Result<()> {
        use std::io::BufRead;
        let mut line = String::new();
        if let Some(out) = serve.stdout.take() {
            std::io::BufReader::new(out).read_line(&mut line)?;
        }
        let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) else {
            bail!(
                "tresor serve did not start: {}",
                fs::read_to_string(self.root.join("serve.log")).unwrap_or_default()
            );
        };
        detail(line.trim());
        let input = SLIDE.trim_start_matches("pathology/");
        let sub = ok(self
            .client(url, "rob", "submit")
            .args(["--group", "pathology", "--input", input, "--"])
            .arg(ki67)
            .args(["{input}", "--out", "{out}"]))?;
        detail(format!(
            "rob: {}",
            String::from_utf8_lossy(&sub.stdout).trim()
        ));
        let id = String::from_utf8_lossy(&sub.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap_or("1")
            .to_string();
        spin("the service profiles the job on its input", || {
            self.wait_job(url, &id, "profiled")
        })?;
        let own = self.client(url, "rob", "approve").arg(&id).output()?;
        detail(format!(
            "rob approves his own job: {}",
            String::from_utf8_lossy(&own.stderr).trim()
        ));
        let ap = ok(self.client(url, "alice", "approve").arg(&id))?;
        detail(format!(
            "alice: {}",
            String::from_utf8_lossy(&ap.stdout).trim()
        ));
        let j = spin("the job runs confined (tresor run)", || {
            self.wait_job(url, &id, "staged")
        })?;
        detail(format!(
            "staged; automatic checks: {}",
            if j["checks"]["ok"] == true {
                "passed"
            } else {
                "FAILED"
            }
        ));
        let rel = ok(self.client(url, "nina", "release").arg(&id))?;
        detail(format!(
            "nina: {}",
            String::from_utf8_lossy(&rel.stdout).trim()
        ));
        let got = self.root.join("heatmap-from-service.png");
        let sample = SLIDE.rsplit_once('/').map_or(SLIDE, |x| x.0);
        ok(self
            .client(url, "alice", "results")
            .arg(sample)
            .args(["--get", &format!("job-{id}/heatmap.png"), "-o"])
            .arg(&got))?;
        let same = fs::read(&got)? == fs::read(self.root.join("heatmap.png"))?;
        detail(format!(
            "alice fetches {sample}/analyses/job-{id}/heatmap.png over the API: {} bytes, {} the confined run of step 3",
            fs::metadata(&got)?.len(),
            if same { "identical to" } else { "DIFFERENT from" }
        ));
        if !same {
            bail!("the service's heat map differs from the direct run's");
        }
        Ok(())
    }
}

/// Runs `f` under a spinner with `what` (hidden when not on a terminal).
fn spin<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    use std::io::IsTerminal;
    // Without a terminal there is no spinner: say what is running before
    // it runs, so a log shows where the time goes.
    if !std::io::stderr().is_terminal() {
        detail(format!("{what} …"));
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("   {spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    let t = Instant::now();
    let r = f();
    bar.finish_and_clear();
    if r.is_ok() {
        detail(format!("{what} ({:.1} s)", t.elapsed().as_secs_f64()));
    }
    r
}

/// Runs a command; its stderr becomes the error if it fails.
fn ok(c: &mut Command) -> Result<Output> {
    let o = c
        .output()
        .with_context(|| format!("cannot run {:?}", c.get_program()))?;
    if !o.status.success() {
        bail!(
            "{} {} failed ({}): {}",
            Path::new(c.get_program()).display(),
            c.get_args()
                .next()
                .map(|a| a.to_string_lossy().into_owned())
                .unwrap_or_default(),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(o)
}

fn fmt_bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20))
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let tail: String = s
        .chars()
        .rev()
        .take(max.saturating_sub(1))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if e.file_type()?.is_dir() {
            walk(&p, out)?;
        } else if !e.file_name().to_string_lossy().starts_with("tresor.") {
            out.push(p);
        }
    }
    Ok(())
}
