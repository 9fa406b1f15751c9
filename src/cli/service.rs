//! `tresor serve` and its clients: `submit`, `jobs`, `approve`, `reject`,
//! `release`, `results`, and `audit verify` (docs/SERVICE.md).

use super::{passwd, PassArgs};
use crate::sandbox::cli::{parse_duration, parse_size};
use crate::service::client::{Answer, Client};
use crate::service::executor::{Limits, Local};
use crate::service::server::{Config, Service};
use crate::service::{audit, http};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Default address of the service.
pub const DEFAULT_SERVICE: &str = "http://127.0.0.1:8750";

/// `tresor serve`
#[derive(Args, Debug)]
#[command(
    after_help = "The service mounts the store as its own user under STATE/mnt, runs jobs with `tresor profile` and `tresor run`, and keeps jobs in STATE/jobs.db and the audit trail in STATE/audit.log.\n\nExample:\n  tresor serve store --pse service.pse --passphrase-file service.pass --state /var/lib/tresor-service"
)]
pub struct ServeArgs {
    /// The store.
    store: PathBuf,
    /// The service's own PSE (a certified user of the store).
    #[arg(long)]
    pse: PathBuf,
    #[command(flatten)]
    pass: PassArgs,
    /// Address to listen on (port 0: any free port, printed on start).
    #[arg(long, default_value = "127.0.0.1:8750")]
    listen: String,
    /// Listen on an address other than loopback (put a TLS reverse proxy in front; docs/SERVICE.md).
    #[arg(long)]
    public: bool,
    /// State directory: jobs, database, audit trail, the service's mount.
    #[arg(long)]
    state: PathBuf,
    /// Jobs profiled or run at once (default: one per core; 0: accept and
    /// keep jobs but run none, for maintenance).
    #[arg(long)]
    workers: Option<usize>,
    /// Kill a job's run after this long.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    timeout: Duration,
    /// Address space per process of a run.
    #[arg(long, value_parser = parse_size, default_value = "4G")]
    memory: u64,
    /// Most a run may write.
    #[arg(long, value_parser = parse_size, default_value = "1G")]
    out_quota: u64,
    /// Largest JSON request body.
    #[arg(long, value_parser = parse_size, default_value = "1M")]
    max_body: u64,
    /// Largest program a submitter may upload.
    #[arg(long, value_parser = parse_size, default_value = "1G")]
    max_program: u64,
    /// The disclosure rule: no whole-number table cell between 1 and N-1.
    #[arg(long, default_value_t = 10)]
    min_cell: u64,
    /// Largest single output file that may be released.
    #[arg(long, value_parser = parse_size, default_value = "100M")]
    max_output: u64,
}

/// Where a client finds the service and who it is.
#[derive(Args, Debug)]
pub struct Caller {
    /// The service's URL (default: $TRESOR_SERVICE, else http://127.0.0.1:8750).
    #[arg(long, value_name = "URL")]
    service: Option<String>,
    /// Your PSE: every request is signed with it.
    #[arg(long)]
    pse: PathBuf,
    #[command(flatten)]
    pass: PassArgs,
}

/// `tresor submit`
#[derive(Args, Debug)]
#[command(
    after_help = "{input} and {out} in ARGS are replaced per input with the input file and the output directory.\n\nExample:\n  tresor submit --pse rob.pse --group pathology --input S-2026-0042/slide.tiff -- ./ki67 {input} --out {out}"
)]
pub struct SubmitArgs {
    #[command(flatten)]
    caller: Caller,
    /// The data group the analysis reads.
    #[arg(long)]
    group: String,
    /// An input inside the group, SAMPLE/…/FILE (repeatable, one per sample).
    #[arg(long = "input", required = true)]
    inputs: Vec<String>,
    /// Run PROGRAM as a script of this interpreter on the service's host (e.g. /usr/bin/python3).
    #[arg(long)]
    interpreter: Option<String>,
    /// The program (or script) and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM [ARGS]")]
    command: Vec<String>,
}

/// `tresor jobs`
#[derive(Args, Debug)]
pub struct JobsArgs {
    #[command(flatten)]
    caller: Caller,
    /// Show this job (else list them).
    id: Option<i64>,
    /// With ID: also print its profile table and policy.
    #[arg(long, requires = "id")]
    review: bool,
    /// With ID: first wait until the job needs a person or is done
    /// (profiled, staged, released, rejected or failed).
    #[arg(long, requires = "id")]
    wait: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `tresor approve` / `tresor release`
#[derive(Args, Debug)]
pub struct JobArgs {
    #[command(flatten)]
    caller: Caller,
    /// The job.
    id: i64,
}

/// `tresor reject`
#[derive(Args, Debug)]
pub struct RejectArgs {
    #[command(flatten)]
    caller: Caller,
    /// The job.
    id: i64,
    /// Why (recorded and shown to the submitter).
    #[arg(long, default_value = "")]
    reason: String,
}

/// `tresor results`
#[derive(Args, Debug)]
pub struct ResultsArgs {
    #[command(flatten)]
    caller: Caller,
    /// The sample record: GROUP/SAMPLE.
    sample: String,
    /// Download ANALYSIS/FILE (e.g. job-7/heatmap.png) instead of listing.
    #[arg(long, value_name = "ANALYSIS/FILE", requires = "output")]
    get: Option<String>,
    /// Where to write the download.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// `tresor audit …`
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Check an audit trail: its chain and its signed heads; names the first removed, changed or reordered entry.
    Verify {
        /// The trail (STATE/audit.log).
        log: PathBuf,
        /// The store whose directory certifies the service's key.
        #[arg(long)]
        store: PathBuf,
    },
}

fn pdeathsig(c: &mut std::process::Command, sig: i32) {
    // SAFETY: prctl with integer arguments only, async-signal-safe, in the
    // child between fork and exec.
    unsafe {
        c.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Mounts the store as the service user (a child `tresor mount -f`, which
/// ends with the service) and waits until it is mounted.
fn mount(exe: &Path, a: &ServeArgs, pass: &str, mnt: &Path) -> Result<Child> {
    if super::session::dead_mount(mnt).is_some() || is_mounted(mnt) {
        let _ = std::process::Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(mnt)
            .output();
    }
    std::fs::create_dir_all(mnt)?;
    let log = std::fs::File::create(a.state.join("mount.log"))?;
    let mut c = std::process::Command::new(exe);
    c.arg("mount")
        .arg(&a.store)
        .arg(mnt)
        .arg("--pse")
        .arg(&a.pse)
        .args([
            "--passphrase-file",
            "/dev/stdin",
            "--foreground",
            "--idle-lock",
            "0",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log);
    pdeathsig(&mut c, libc::SIGTERM);
    let mut child = c
        .spawn()
        .context("cannot start `tresor mount` for the service")?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(format!("{pass}\n").as_bytes())?;
    }
    let mut line = String::new();
    if let Some(o) = child.stdout.take() {
        let mut r = BufReader::new(o);
        let _ = r.read_line(&mut line);
        // Keep draining: a closed pipe would fail the mount's later prints.
        std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
    }
    if !line.starts_with("mounted") {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(a.state.join("mount.log")).unwrap_or_default();
        bail!(
            "the service could not mount the store on {}: {}",
            mnt.display(),
            log.trim()
        );
    }
    Ok(child)
}

fn is_mounted(mnt: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let m = mnt.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(m.as_ref()))
}

/// Runs `tresor serve`.
pub fn serve(a: ServeArgs) -> Result<ExitCode> {
    let addr: std::net::SocketAddr = a
        .listen
        .parse()
        .with_context(|| format!("--listen {}: not an address like 127.0.0.1:8750", a.listen))?;
    if !addr.ip().is_loopback() && !a.public {
        bail!("--listen {addr} is not a loopback address: the service speaks plain HTTP; put a TLS reverse proxy in front and pass --public (docs/SERVICE.md)");
    }
    std::fs::create_dir_all(&a.state)
        .with_context(|| format!("cannot create the state directory {}", a.state.display()))?;
    std::fs::set_permissions(
        &a.state,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let state = a.state.canonicalize()?;
    let timeout = crate::prompt::timeout_from_env()?;
    let unlocked = passwd::unlock(&a.pse, a.pass.given()?, timeout)?;
    let exe = std::env::current_exe().context("cannot find the tresor binary")?;
    let mnt = state.join("mnt");
    let mut mount_child = mount(&exe, &a, &unlocked.passphrase, &mnt)?;
    let workers = a
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let cfg = Config {
        store: a.store.clone(),
        state: state.clone(),
        workers,
        limits: Limits {
            timeout: a.timeout,
            memory: a.memory,
            out_quota: a.out_quota,
        },
        max_body: usize::try_from(a.max_body).unwrap_or(usize::MAX),
        min_cell: a.min_cell,
        max_output: a.max_output,
    };
    let service = match Service::new(
        cfg.clone(),
        unlocked.pse,
        mnt.clone(),
        Box::new(Local::new(&exe)),
    ) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            let _ = mount_child.kill();
            let _ = crate::session::unmount(&mnt, true);
            return Err(e);
        }
    };
    for _ in 0..workers {
        let s = Arc::clone(&service);
        std::thread::spawn(move || s.worker());
    }
    {
        let s = Arc::clone(&service);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(60));
            s.sign_head();
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        println!(
            "serving {} on http://{local} as {}",
            a.store.display(),
            service_user(&service)
        );
        let _ = std::io::stdout().flush();
        let stop = async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        let max_program = usize::try_from(a.max_program).unwrap_or(usize::MAX);
        http::serve(
            Arc::clone(&service),
            listener,
            (cfg.max_body, max_program),
            stop,
        )
        .await
        .context("the HTTP server failed")
    });
    service.stop();
    // Runs still going are killed with this process (their supervisors
    // die with their threads) and run again at the next start.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(mount_child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = mount_child.wait();
    served?;
    Ok(ExitCode::SUCCESS)
}

fn service_user(s: &Service) -> String {
    s.user().to_string()
}

fn client(c: &Caller) -> Result<Client> {
    let url = c
        .service
        .clone()
        .or_else(|| std::env::var("TRESOR_SERVICE").ok())
        .unwrap_or_else(|| DEFAULT_SERVICE.to_string());
    let timeout = crate::prompt::timeout_from_env()?;
    let pse = passwd::unlock(&c.pse, c.pass.given()?, timeout)?.pse;
    Ok(Client::connect(&url, pse)?)
}

/// A failed answer as the command's error.
fn ok(a: Answer) -> Result<serde_json::Value> {
    if (200..300).contains(&a.status) {
        Ok(a.json())
    } else {
        bail!("{} (HTTP {})", a.error(), a.status)
    }
}

/// Runs `tresor submit`.
pub fn submit(a: SubmitArgs) -> Result<ExitCode> {
    let Some((program, args)) = a.command.split_first() else {
        bail!("give the program after --");
    };
    let bytes =
        std::fs::read(program).with_context(|| format!("cannot read the program {program}"))?;
    let name = Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "program".into());
    let sha = hex::encode(crate::crypto::sha256(&bytes));
    let body = serde_json::json!({
        "group": a.group,
        "inputs": a.inputs,
        "program": {"name": name, "sha256": sha, "interpreter": a.interpreter},
        "args": args,
    });
    let c = client(&a.caller)?;
    ok(c.call("PUT", &format!("/programs/{sha}"), &bytes)?)?;
    let v = ok(c.call("POST", "/jobs", &serde_json::to_vec(&body)?)?)?;
    println!(
        "job {} submitted (bundle {}); it is profiled on its first input, then waits for an approver",
        v["id"], v["bundle_sha256"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `tresor jobs`.
pub fn jobs(a: JobsArgs) -> Result<ExitCode> {
    let c = client(&a.caller)?;
    let Some(id) = a.id else {
        let v = ok(c.call("GET", "/jobs", b"")?)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{:>5}  {:<10} {:<12} {:<14} PROGRAM",
            "JOB", "STATE", "SUBMITTER", "GROUP"
        );
        for j in v["jobs"].as_array().cloned().unwrap_or_default() {
            println!(
                "{:>5}  {:<10} {:<12} {:<14} {}",
                j["id"],
                j["state"].as_str().unwrap_or(""),
                j["submitter"].as_str().unwrap_or(""),
                j["group"].as_str().unwrap_or(""),
                j["program"].as_str().unwrap_or("")
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    let mut v = ok(c.call("GET", &format!("/jobs/{id}"), b"")?)?;
    // The service's long poll: one request per state change, no polling.
    const SETTLED: [&str; 5] = ["profiled", "staged", "released", "rejected", "failed"];
    if a.wait {
        loop {
            let state = v["state"].as_str().unwrap_or("failed").to_string();
            if SETTLED.contains(&state.as_str()) {
                break;
            }
            v = ok(c.call("GET", &format!("/jobs/{id}?changed_from={state}"), b"")?)?;
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("job {id}: {}", v["state"].as_str().unwrap_or("?"));
        for (k, label) in [
            ("submitter", "submitter"),
            ("approver", "approver"),
            ("releaser", "releaser"),
            ("bundle_sha256", "bundle"),
            ("profile_sha256", "profile"),
            ("policy_sha256", "policy"),
            ("reason", "reason"),
        ] {
            if let Some(s) = v[k].as_str().filter(|s| !s.is_empty()) {
                println!("  {label:<10} {s}");
            }
        }
        println!("  program    {}", v["spec"]["program"]);
        println!("  inputs     {}", v["spec"]["inputs"]);
        if !v["checks"].is_null() {
            println!("  checks     {}", v["checks"]);
        }
    }
    if a.review {
        let p = ok(c.call("GET", &format!("/jobs/{id}/profile"), b"")?)?;
        print!("{}", p["table"].as_str().unwrap_or(""));
        let pol = ok(c.call("GET", &format!("/jobs/{id}/policy"), b"")?)?;
        println!("{}", serde_json::to_string_pretty(&pol)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `tresor approve`: approves the hashes the service shows now.
pub fn approve(a: JobArgs) -> Result<ExitCode> {
    let c = client(&a.caller)?;
    let j = ok(c.call("GET", &format!("/jobs/{}", a.id), b"")?)?;
    let body = serde_json::json!({
        "bundle_sha256": j["bundle_sha256"],
        "profile_sha256": j["profile_sha256"],
        "policy_sha256": j["policy_sha256"],
    });
    ok(c.call(
        "POST",
        &format!("/jobs/{}/approve", a.id),
        &serde_json::to_vec(&body)?,
    )?)?;
    println!(
        "approved job {}: bundle {}, profile {}, policy {}",
        a.id,
        j["bundle_sha256"].as_str().unwrap_or("?"),
        j["profile_sha256"].as_str().unwrap_or("?"),
        j["policy_sha256"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `tresor reject`.
pub fn reject(a: RejectArgs) -> Result<ExitCode> {
    let c = client(&a.caller)?;
    let body = serde_json::json!({ "reason": a.reason });
    ok(c.call(
        "POST",
        &format!("/jobs/{}/reject", a.id),
        &serde_json::to_vec(&body)?,
    )?)?;
    println!("rejected job {}", a.id);
    Ok(ExitCode::SUCCESS)
}

/// Runs `tresor release`.
pub fn release(a: JobArgs) -> Result<ExitCode> {
    let c = client(&a.caller)?;
    let v = ok(c.call("POST", &format!("/jobs/{}/release", a.id), b"{}")?)?;
    for w in v["written"].as_array().cloned().unwrap_or_default() {
        println!("released into {}", w.as_str().unwrap_or(""));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `tresor results`.
pub fn results(a: ResultsArgs) -> Result<ExitCode> {
    let Some((g, s)) = a.sample.split_once('/') else {
        bail!("name the sample record as GROUP/SAMPLE, e.g. pathology/S-2026-0042");
    };
    let c = client(&a.caller)?;
    if let Some(get) = &a.get {
        let Some((job, file)) = get.split_once('/') else {
            bail!("--get takes ANALYSIS/FILE, e.g. job-7/heatmap.png");
        };
        let ans = c.call(
            "GET",
            &format!("/samples/{g}/{s}/analyses/{job}/{file}"),
            b"",
        )?;
        if ans.status != 200 {
            bail!("{} (HTTP {})", ans.error(), ans.status);
        }
        let out = a.output.as_deref().unwrap_or(Path::new(file));
        crate::store::write_atomic(out, &ans.body, 0o600)
            .with_context(|| format!("cannot write {}", out.display()))?;
        println!("{} bytes to {}", ans.body.len(), out.display());
        return Ok(ExitCode::SUCCESS);
    }
    let v = ok(c.call("GET", &format!("/samples/{g}/{s}/analyses"), b"")?)?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}

/// Runs `tresor audit verify`.
pub fn audit(c: AuditCmd) -> Result<ExitCode> {
    let AuditCmd::Verify { log, store } = c;
    let (_, dir) = super::admin::verified_without_pse(&store)?;
    let bytes = std::fs::read(&log).with_context(|| format!("cannot read {}", log.display()))?;
    let key_of = |user: &str| {
        let enc = dir
            .users
            .get(user)
            .map(|u| u.sign_public.clone())
            .or_else(|| dir.removed.get(user).map(|r| r.sign_public.clone()))?;
        crate::directory::sign_key(&enc).ok()
    };
    match audit::verify(&bytes, &dir.store_id, key_of) {
        Ok(s) => {
            println!(
                "audit trail {} intact: {} entries, {} signed heads{}",
                log.display(),
                s.entries,
                s.heads,
                if s.unsigned_tail > 0 {
                    format!(
                        "; the last {} entries are not yet under a signed head",
                        s.unsigned_tail
                    )
                } else {
                    String::new()
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(f) => bail!("audit trail {} is broken: {f}", log.display()),
    }
}
