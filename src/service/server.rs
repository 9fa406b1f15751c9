//! The analysis service's core: requests in, job steps out. Plain Rust with
//! no HTTP types — [`super::http`] carries requests here and replies back —
//! so every rule (who may do what, which state follows which) is in one
//! place and runs the same under any transport.

use super::audit;
use super::auth::{self, AuthError};
use super::checks::{self, MinCell, Rule};
use super::executor::{Executor, Limits, Task};
use super::jobs::{Change, Db, Job, Program, Spec, State};
use crate::crypto::{sha256, PublicKey};
use crate::directory::{Body, Duty};
use crate::format::names::decode as b64d;
use crate::pse::Pse;
use crate::sandbox::{Policy, PolicyOptions, Profile};
use crate::signature::{Entry, SigFile, Statement};
use crate::store::{write_atomic, Store};
use serde::Deserialize;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Most inputs one job may read.
pub const MAX_INPUTS: usize = 1000;
/// Most arguments, and most bytes of one argument.
pub const MAX_ARGS: usize = 256;
const MAX_ARG_LEN: usize = 4096;
/// Longest a `GET /jobs/N?changed_from=STATE` waits.
pub const LONG_POLL: Duration = Duration::from_secs(30);
/// Runs before a job that keeps being interrupted is failed.
const MAX_ATTEMPTS: i64 = 3;

/// Settings of one service.
#[derive(Clone, Debug)]
pub struct Config {
    /// The store.
    pub store: PathBuf,
    /// Jobs, database, audit trail, the service's mount.
    pub state: PathBuf,
    /// Jobs profiled or run at once.
    pub workers: usize,
    /// Limits of every run.
    pub limits: Limits,
    /// Largest request body.
    pub max_body: usize,
    /// The disclosure rule's N.
    pub min_cell: u64,
    /// Largest single output file released.
    pub max_output: u64,
}

/// A request as the transport hands it over.
#[derive(Debug, Clone, Default)]
pub struct Req {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path with query.
    pub path: String,
    /// The authentication headers.
    pub headers: auth::Headers,
    /// The body.
    pub body: Vec<u8>,
}

/// A reply: status, body, and whether the body is JSON.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
    /// JSON (else raw bytes).
    pub json: bool,
}

impl Reply {
    fn json(status: u16, v: serde_json::Value) -> Reply {
        let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
        body.push(b'\n');
        Reply {
            status,
            body,
            json: true,
        }
    }

    /// An error reply: `{"error": "…"}`.
    pub fn error(status: u16, msg: impl Into<String>) -> Reply {
        Reply::json(status, serde_json::json!({ "error": msg.into() }))
    }
}

type Res<T> = Result<T, Reply>;

fn internal(e: impl std::fmt::Display) -> Reply {
    tracing::error!("{e}");
    Reply::error(500, format!("the service failed: {e}; see its log"))
}

/// The service.
pub struct Service {
    cfg: Config,
    store: Store,
    anchor: PublicKey,
    pse: Pse,
    mnt: PathBuf,
    db: Mutex<Db>,
    audit: Mutex<audit::Log>,
    executor: Box<dyn Executor>,
    rules: Vec<Box<dyn Rule>>,
    wake: (Mutex<u64>, Condvar),
    stopping: AtomicBool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    group: String,
    inputs: Vec<String>,
    program: ProgramBody,
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgramBody {
    name: String,
    /// SHA-256 of a program uploaded before (`PUT /programs/SHA256`).
    #[serde(default)]
    sha256: Option<String>,
    /// Or the program inline: base64url of the executable or script.
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    interpreter: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    bundle_sha256: String,
    profile_sha256: String,
    policy_sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: String,
}

fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.contains('/')
        && !s.contains('\0')
        && s.len() <= 255
}

/// `SAMPLE/…/FILE` inside a group: no empty, `.` or `..` parts.
fn valid_input(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() >= 2 && parts.iter().all(|p| valid_part(p)) && !parts[0].starts_with('.')
}

impl Service {
    /// A service over `cfg.store` with the store mounted at `mnt` by the
    /// service user `pse`; recovers jobs a stopped service left mid-step.
    pub fn new(
        cfg: Config,
        pse: Pse,
        mnt: PathBuf,
        executor: Box<dyn Executor>,
    ) -> anyhow::Result<Service> {
        use anyhow::Context;
        let store = Store::open(&cfg.store)?;
        let anchor = pse.public.trust_anchor.clone();
        let dir = store.read_directory(&anchor)?;
        store.check_member(&dir, &pse)?;
        std::fs::create_dir_all(cfg.state.join("jobs"))?;
        let db = Db::open(&cfg.state.join("jobs.db")).with_context(|| {
            format!(
                "cannot open the job database {}",
                cfg.state.join("jobs.db").display()
            )
        })?;
        let log = audit::Log::open(
            &cfg.state.join("audit.log"),
            &dir.store_id,
            &pse.public.user,
        )
        .map_err(anyhow::Error::msg)?;
        let rules: Vec<Box<dyn Rule>> = vec![Box::new(MinCell(cfg.min_cell))];
        let s = Service {
            cfg,
            store,
            anchor,
            pse,
            mnt,
            db: Mutex::new(db),
            audit: Mutex::new(log),
            executor,
            rules,
            wake: (Mutex::new(0), Condvar::new()),
            stopping: AtomicBool::new(false),
        };
        s.note("start", serde_json::json!({ "user": s.pse.public.user }));
        s.recover()?;
        Ok(s)
    }

    /// The service's user name.
    pub fn user(&self) -> &str {
        &self.pse.public.user
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends to the audit trail; a trail that cannot be written stops
    /// the service (nothing may happen unrecorded).
    fn note(&self, kind: &str, detail: serde_json::Value) {
        let mut log = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = log.append(kind, detail) {
            eprintln!(
                "tresor serve: cannot write the audit trail {}: {e}; stopping",
                log.path().display()
            );
            std::process::exit(1);
        }
    }

    /// Signs the audit trail's head (every minute and at shutdown).
    pub fn sign_head(&self) {
        let mut log = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = log.sign_head(&self.pse.sign) {
            tracing::error!("cannot sign the audit head: {e}");
        }
    }

    /// Records the stop and signs the head.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.note("stop", serde_json::json!({}));
        self.sign_head();
        self.wake.1.notify_all();
    }

    fn move_job(&self, job: &Job, to: State, by: &str, change: Change) -> Res<bool> {
        let reason = change.reason.clone();
        let moved = self
            .db()
            .transition(job.id, job.state, to, change, auth::now())
            .map_err(internal)?;
        if moved {
            self.kick();
            self.note(
                "state",
                serde_json::json!({
                    "job": job.id, "from": job.state.name(), "to": to.name(),
                    "by": by, "reason": reason.unwrap_or_default(),
                }),
            );
        }
        Ok(moved)
    }

    fn job_dir(&self, id: i64) -> PathBuf {
        self.cfg.state.join("jobs").join(id.to_string())
    }

    /// A stopped service's jobs, set straight: a profiling or running job
    /// goes back to wait (its outputs discarded), a release is completed.
    fn recover(&self) -> anyhow::Result<()> {
        let _ = std::fs::remove_dir_all(self.cfg.state.join("incoming"));
        let recovering = |s: State| self.db().in_state(s);
        for job in recovering(State::Profiling)? {
            let _ = std::fs::remove_dir_all(self.job_dir(job.id).join("profiling-out"));
            let _ = self.move_job(
                &job,
                State::Submitted,
                "service",
                reason("the service stopped while it was profiled; profiled again"),
            );
        }
        for job in recovering(State::Running)? {
            let _ = std::fs::remove_dir_all(self.job_dir(job.id).join("out"));
            let (to, why) = if job.attempts >= MAX_ATTEMPTS {
                (
                    State::Failed,
                    format!(
                        "the service stopped during each of {} runs; resubmit it",
                        job.attempts
                    ),
                )
            } else {
                (State::Queued, "the service stopped during the run; its outputs were discarded and it runs again".to_string())
            };
            let _ = self.move_job(&job, to, "service", reason(&why));
        }
        for job in recovering(State::Releasing)? {
            self.write_release(&job)
                .map_err(|r| anyhow::anyhow!(String::from_utf8_lossy(&r.body).to_string()))?;
            let _ = self.move_job(&job, State::Released, "service", Change::default());
        }
        Ok(())
    }

    /// Serves one request.
    pub fn handle(&self, req: &Req) -> Reply {
        if req.method == "GET" && req.path == "/info" {
            return Reply::json(
                200,
                serde_json::json!({
                    "store_id": self.store.manifest().store_id,
                    "service": self.pse.public.user,
                    "tresor": env!("CARGO_PKG_VERSION"),
                }),
            );
        }
        let (user, reply) = match self.authenticate(req) {
            Ok((user, dir)) => {
                let r = self.route(req, &user, &dir).unwrap_or_else(|r| r);
                (user, r)
            }
            Err(r) => (req.headers.user.clone().unwrap_or_default(), r),
        };
        self.note(
            "request",
            serde_json::json!({
                "user": user, "method": req.method, "path": req.path,
                "body_sha256": hex::encode(sha256(&req.body)), "status": reply.status,
            }),
        );
        reply
    }

    fn authenticate(&self, req: &Req) -> Res<(String, Body)> {
        let dir = self
            .store
            .read_directory(&self.anchor)
            .map_err(|e| Reply::error(503, format!("the store's directory cannot be read: {e}")))?;
        let now = auth::now();
        let refuse = |e: AuthError| Reply::error(e.status(), e.to_string());
        let (user, nonce) = auth::check(&dir, &req.headers, &req.method, &req.path, &req.body, now)
            .map_err(refuse)?;
        if !self
            .db()
            .fresh_nonce(&user, &nonce, now)
            .map_err(internal)?
        {
            return Err(refuse(AuthError::Replayed));
        }
        Ok((user, dir))
    }

    fn route(&self, req: &Req, user: &str, dir: &Body) -> Res<Reply> {
        let path = req.path.split('?').next().unwrap_or("");
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let id = |s: &str| {
            s.parse::<i64>().map_err(|_| {
                Reply::error(404, format!("no job {s}: job numbers are whole numbers"))
            })
        };
        match (req.method.as_str(), parts.as_slice()) {
            ("PUT", ["programs", h]) => self.upload(user, dir, h, &req.body),
            ("POST", ["jobs"]) => self.submit(user, dir, &req.body),
            ("GET", ["jobs"]) => self.list(user, dir),
            ("GET", ["jobs", j]) => self.show(user, dir, id(j)?, query(&req.path, "changed_from")),
            ("GET", ["jobs", j, "profile"]) => self.profile_of(user, dir, id(j)?),
            ("GET", ["jobs", j, "policy"]) => self.policy_of(user, dir, id(j)?),
            ("POST", ["jobs", j, "approve"]) => self.approve(user, dir, id(j)?, req),
            ("POST", ["jobs", j, "reject"]) => self.reject(user, dir, id(j)?, &req.body),
            ("POST", ["jobs", j, "release"]) => self.release(user, dir, id(j)?),
            ("GET", ["samples", g, s, "analyses"]) => self.analyses(user, dir, g, s),
            ("GET", ["samples", g, s, "analyses", j, f]) => self.download(user, dir, g, s, j, f),
            _ => Err(Reply::error(
                404,
                format!(
                    "no such request: {} {path} (docs/SERVICE.md lists the API)",
                    req.method
                ),
            )),
        }
    }

    /// `MNT/GROUP/REL` with every symbolic link resolved, if it stays in the
    /// group: a link planted in a data group never leads the service (often
    /// root) to the host's files, for reading, running or writing.
    fn within(&self, group: &str, rel: &str) -> Result<PathBuf, Outside> {
        let base = self
            .mnt
            .join(group)
            .canonicalize()
            .map_err(Outside::Missing)?;
        let p = base.join(rel).canonicalize().map_err(Outside::Missing)?;
        if p.starts_with(&base) {
            Ok(p)
        } else {
            Err(Outside::Link)
        }
    }

    fn job(&self, id: i64) -> Res<Job> {
        self.db()
            .get(id)
            .map_err(internal)?
            .ok_or_else(|| Reply::error(404, format!("no job {id}")))
    }

    /// Whether `user` may see job `j`: its submitter, an approver or a
    /// checker (the service's reviewers), or anyone who may read its group.
    fn may_see(dir: &Body, user: &str, j: &Job) -> bool {
        j.submitter == user
            || dir.has_duty(user, Duty::Approve)
            || dir.has_duty(user, Duty::Release)
            || dir.user_right(user, &j.spec.group).can_read()
    }

    fn visible(&self, user: &str, dir: &Body, id: i64) -> Res<Job> {
        let j = self.job(id)?;
        if !Self::may_see(dir, user, &j) {
            return Err(Reply::error(403, format!("{user} may not see job {id}")));
        }
        Ok(j)
    }

    fn submit(&self, user: &str, dir: &Body, body: &[u8]) -> Res<Reply> {
        let b: SubmitBody = serde_json::from_slice(body)
            .map_err(|e| Reply::error(400, format!("malformed submission: {e}")))?;
        if !dir.has_duty(user, Duty::Submit) {
            return Err(Reply::error(403, format!("{user} may not submit analyses: the administrator gives the duty with `tresor duty STORE ROLE submit`")));
        }
        if !dir.datagroups.contains_key(&b.group) {
            return Err(Reply::error(
                404,
                format!("no data group named {}", b.group),
            ));
        }
        if !dir.user_right(user, &b.group).can_read() {
            return Err(Reply::error(
                403,
                format!(
                    "{user} may not read the data group {} and so may not analyse it",
                    b.group
                ),
            ));
        }
        if b.inputs.is_empty() || b.inputs.len() > MAX_INPUTS {
            return Err(Reply::error(
                400,
                format!(
                    "a job reads 1 to {MAX_INPUTS} inputs, not {}",
                    b.inputs.len()
                ),
            ));
        }
        let outside = |i: &str| {
            Reply::error(400, format!("input {i} leads outside the data group (a symbolic link); name the file itself"))
        };
        let mut samples = std::collections::BTreeSet::new();
        for i in &b.inputs {
            if !valid_input(i) {
                return Err(Reply::error(400, format!("input \"{i}\" is not a path SAMPLE/…/FILE inside the data group (no '..', '.', empty parts or leading '/')")));
            }
            if !samples.insert(Spec::sample(i).to_string()) {
                return Err(Reply::error(
                    400,
                    format!(
                        "two inputs of sample {}: a job reads one input per sample",
                        Spec::sample(i)
                    ),
                ));
            }
            let p = self.mnt.join(&b.group).join(i);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_file() => {}
                Ok(_) => return Err(Reply::error(400, format!("input {}/{i} is not a regular file", b.group))),
                Err(e) if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EPERM) => {
                    return Err(Reply::error(503, format!("the service itself may not read {}: the administrator grants its role `r` on the group", b.group)))
                }
                Err(_) => return Err(Reply::error(404, format!("no input {i} in the data group {} (unknown sample or file)", b.group))),
            }
            match self.within(&b.group, i) {
                Ok(_) => {}
                Err(Outside::Link) => return Err(outside(i)),
                Err(Outside::Missing(_)) => {
                    return Err(Reply::error(
                        404,
                        format!("no input {i} in the data group {}", b.group),
                    ))
                }
            }
        }
        if !valid_part(&b.program.name) || b.program.name.starts_with('.') {
            return Err(Reply::error(
                400,
                format!(
                    "program name \"{}\" is not a plain file name",
                    b.program.name
                ),
            ));
        }
        if b.args.len() > MAX_ARGS
            || b.args
                .iter()
                .any(|a| a.len() > MAX_ARG_LEN || a.contains('\0'))
        {
            return Err(Reply::error(
                400,
                format!(
                    "at most {MAX_ARGS} arguments of at most {MAX_ARG_LEN} bytes each, without NUL"
                ),
            ));
        }
        if let Some(i) = &b.program.interpreter {
            let p = Path::new(i);
            if !p.is_absolute() || !p.is_file() {
                return Err(Reply::error(400, format!("interpreter {i} is not an absolute path of a program on the service's host")));
            }
        }
        let content = match (&b.program.content, &b.program.sha256) {
            (Some(c), _) => {
                let bytes = b64d(c).ok_or_else(|| Reply::error(400, "program content is not base64url"))?;
                if b.program.sha256.as_ref().is_some_and(|h| *h != hex::encode(sha256(&bytes))) {
                    return Err(Reply::error(400, "the program's content does not have the sha256 the submission names"));
                }
                bytes
            }
            (None, Some(h)) if is_sha256(h) => std::fs::read(self.cfg.state.join("programs").join(h))
                .map_err(|_| Reply::error(404, format!("no uploaded program {h}: upload it first (PUT /programs/{h}; `tresor submit` does)")))?,
            (None, _) => return Err(Reply::error(400, "the program needs its content or the sha256 of an uploaded program")),
        };
        let spec = Spec {
            group: b.group,
            inputs: b.inputs,
            program: Program {
                name: b.program.name,
                interpreter: b.program.interpreter,
                sha256: hex::encode(sha256(&content)),
            },
            args: b.args,
        };
        // The bundle is in place before any worker can see the job: both
        // under the database lock.
        let incoming = self.cfg.state.join("incoming").join(auth::nonce());
        std::fs::create_dir_all(incoming.join("bundle")).map_err(internal)?;
        let mode = if spec.program.interpreter.is_some() {
            0o644
        } else {
            0o755
        };
        write_atomic(
            &incoming.join("bundle").join(&spec.program.name),
            &content,
            mode,
        )
        .map_err(internal)?;
        let id = {
            let db = self.db();
            let id = db.insert(user, &spec, auth::now()).map_err(internal)?;
            std::fs::rename(&incoming, self.job_dir(id)).map_err(internal)?;
            id
        };
        self.note("state", serde_json::json!({"job": id, "from": "", "to": "submitted", "by": user, "bundle_sha256": spec.bundle_sha256()}));
        self.kick();
        Ok(Reply::json(
            201,
            serde_json::json!({"id": id, "state": "submitted", "bundle_sha256": spec.bundle_sha256()}),
        ))
    }

    /// Stores a program under its SHA-256, for submissions to name.
    fn upload(&self, user: &str, dir: &Body, h: &str, body: &[u8]) -> Res<Reply> {
        if !dir.has_duty(user, Duty::Submit) {
            return Err(Reply::error(403, format!("{user} may not submit analyses: the administrator gives the duty with `tresor duty STORE ROLE submit`")));
        }
        if !is_sha256(h) || hex::encode(sha256(body)) != h {
            return Err(Reply::error(
                400,
                format!("the upload's bytes do not have the SHA-256 {h} its path names"),
            ));
        }
        let dir = self.cfg.state.join("programs");
        std::fs::create_dir_all(&dir).map_err(internal)?;
        let p = dir.join(h);
        if !p.exists() {
            write_atomic(&p, body, 0o644).map_err(internal)?;
        }
        Ok(Reply::json(
            201,
            serde_json::json!({ "sha256": h, "size": body.len() }),
        ))
    }

    fn list(&self, user: &str, dir: &Body) -> Res<Reply> {
        let jobs: Vec<serde_json::Value> = self
            .db()
            .all()
            .map_err(internal)?
            .into_iter()
            .filter(|j| Self::may_see(dir, user, j))
            .map(|j| serde_json::json!({"id": j.id, "submitter": j.submitter, "group": j.spec.group, "program": j.spec.program.name, "state": j.state.name(), "reason": j.reason}))
            .collect();
        Ok(Reply::json(200, serde_json::json!({ "jobs": jobs })))
    }

    /// A job; with `changed_from=STATE`, once it is no longer in STATE (a
    /// long poll of at most [`LONG_POLL`]).
    fn show(&self, user: &str, dir: &Body, id: i64, from: Option<&str>) -> Res<Reply> {
        let mut j = self.visible(user, dir, id)?;
        let start = std::time::Instant::now();
        while from == Some(j.state.name()) && !self.stopping.load(Ordering::SeqCst) {
            let Some(left) = LONG_POLL.checked_sub(start.elapsed()) else {
                break;
            };
            let g = self.wake.0.lock().unwrap_or_else(|p| p.into_inner());
            // Read again under the lock: a change after the first read has
            // notified before this wait, and shows here.
            j = self.job(id)?;
            if from != Some(j.state.name()) {
                break;
            }
            let _ = self.wake.1.wait_timeout(g, left);
            j = self.job(id)?;
        }
        Ok(Reply::json(
            200,
            serde_json::to_value(&j).map_err(internal)?,
        ))
    }

    /// The profile and policy are for reviewers: an approver who did not
    /// submit the job. The profiling run saw the host read-only before
    /// anyone approved it, and the paths it recorded must not become a
    /// channel back to its submitter.
    fn reviewable(&self, user: &str, dir: &Body, id: i64) -> Res<Job> {
        let j = self.visible(user, dir, id)?;
        if j.submitter == user || !dir.has_duty(user, Duty::Approve) {
            return Err(Reply::error(
                403,
                format!("only an approver who did not submit job {id} sees its profile and policy"),
            ));
        }
        Ok(j)
    }

    fn profile_of(&self, user: &str, dir: &Body, id: i64) -> Res<Reply> {
        let j = self.reviewable(user, dir, id)?;
        let p = self.job_dir(j.id).join("profile.json");
        let prof = Profile::load(&p).map_err(|_| {
            Reply::error(
                409,
                format!("job {id} has no profile yet (it is {})", j.state.name()),
            )
        })?;
        Ok(Reply::json(
            200,
            serde_json::json!({"table": prof.render_table(), "json": serde_json::from_str::<serde_json::Value>(&prof.to_json()).unwrap_or_default()}),
        ))
    }

    fn policy_of(&self, user: &str, dir: &Body, id: i64) -> Res<Reply> {
        let j = self.reviewable(user, dir, id)?;
        let p = self.job_dir(j.id).join("profile.json");
        let pol = Policy::load(&p, &PolicyOptions::default())
            .map_err(|e| Reply::error(409, format!("job {id} has no policy: {e}")))?;
        Ok(Reply::json(
            200,
            serde_json::from_str(&pol.to_json()).map_err(internal)?,
        ))
    }

    fn approve(&self, user: &str, dir: &Body, id: i64, req: &Req) -> Res<Reply> {
        let b: ApproveBody = serde_json::from_slice(&req.body)
            .map_err(|e| Reply::error(400, format!("malformed approval: {e}")))?;
        if !dir.has_duty(user, Duty::Approve) {
            return Err(Reply::error(
                403,
                format!("{user} may not approve analyses (no approve duty)"),
            ));
        }
        let j = self.job(id)?;
        if j.submitter == user {
            return Err(Reply::error(
                403,
                format!("four eyes: {user} submitted job {id} and may not approve it"),
            ));
        }
        if j.state != State::Profiled {
            return Err(Reply::error(
                409,
                format!(
                    "job {id} is {}, not profiled: only a profiled job can be approved",
                    j.state.name()
                ),
            ));
        }
        let want = (
            j.bundle_sha256.as_str(),
            j.profile_sha256.as_deref().unwrap_or(""),
            j.policy_sha256.as_deref().unwrap_or(""),
        );
        if (
            b.bundle_sha256.as_str(),
            b.profile_sha256.as_str(),
            b.policy_sha256.as_str(),
        ) != want
        {
            return Err(Reply::error(409, format!("the approval names other hashes than job {id} has now: review it again (`tresor jobs show {id}`) and approve what you reviewed")));
        }
        let evidence = serde_json::json!({
            "user": user, "time": req.headers.time, "nonce": req.headers.nonce,
            "signature": req.headers.signature, "path": req.path,
            "body": String::from_utf8_lossy(&req.body),
        });
        if !self.move_job(
            &j,
            State::Queued,
            user,
            Change {
                approval: Some((user.to_string(), evidence)),
                ..Change::default()
            },
        )? {
            return Err(Reply::error(
                409,
                format!("job {id} changed meanwhile; look again"),
            ));
        }
        self.kick();
        Ok(Reply::json(
            200,
            serde_json::json!({"id": id, "state": "queued"}),
        ))
    }

    fn reject(&self, user: &str, dir: &Body, id: i64, body: &[u8]) -> Res<Reply> {
        let b: ReasonBody = serde_json::from_slice(body)
            .map_err(|e| Reply::error(400, format!("malformed rejection: {e}")))?;
        let j = self.job(id)?;
        let duty = match j.state {
            State::Profiled => Duty::Approve,
            State::Staged => Duty::Release,
            s => {
                return Err(Reply::error(
                    409,
                    format!(
                        "job {id} is {}: only a profiled or staged job can be rejected",
                        s.name()
                    ),
                ))
            }
        };
        if !dir.has_duty(user, duty) {
            return Err(Reply::error(
                403,
                format!("{user} may not reject job {id} (no {} duty)", duty.name()),
            ));
        }
        if j.submitter == user {
            return Err(Reply::error(
                403,
                format!("four eyes: {user} submitted job {id}"),
            ));
        }
        self.move_job(
            &j,
            State::Rejected,
            user,
            reason(&format!("rejected by {user}: {}", b.reason)),
        )?;
        Ok(Reply::json(
            200,
            serde_json::json!({"id": id, "state": "rejected"}),
        ))
    }

    fn release(&self, user: &str, dir: &Body, id: i64) -> Res<Reply> {
        let j = self.job(id)?;
        if !dir.has_duty(user, Duty::Release) {
            return Err(Reply::error(
                403,
                format!("{user} may not release outputs (no release duty)"),
            ));
        }
        if j.submitter == user {
            return Err(Reply::error(
                403,
                format!("four eyes: {user} submitted job {id} and may not release it"),
            ));
        }
        if !dir.user_right(user, &j.spec.group).can_read() {
            return Err(Reply::error(
                403,
                format!(
                    "{user} may not read the data group {} and so may not check its outputs",
                    j.spec.group
                ),
            ));
        }
        if j.state != State::Staged {
            return Err(Reply::error(
                409,
                format!(
                    "job {id} is {}, not staged: only staged outputs can be released",
                    j.state.name()
                ),
            ));
        }
        let passed = j
            .checks
            .as_ref()
            .and_then(|c| c.get("ok"))
            .and_then(|v| v.as_bool())
            == Some(true);
        if !passed {
            return Err(Reply::error(409, format!("job {id}'s outputs failed the automatic checks (`tresor jobs show {id}`); they cannot be released — reject the job")));
        }
        let change = Change {
            releaser: Some(user.to_string()),
            ..Change::default()
        };
        if !self.move_job(&j, State::Releasing, user, change)? {
            return Err(Reply::error(
                409,
                format!("job {id} changed meanwhile; look again"),
            ));
        }
        let j = self.job(id)?;
        let started = std::time::Instant::now();
        let written = self.write_release(&j);
        tracing::info!(
            "job {id}: release written in {} ms",
            started.elapsed().as_millis()
        );
        if let Err(r) = written {
            let _ = self.move_job(
                &j,
                State::Staged,
                "service",
                reason("writing into the sample record failed; release it again"),
            );
            return Err(r);
        }
        self.move_job(&j, State::Released, user, Change::default())?;
        Ok(Reply::json(
            200,
            serde_json::json!({"id": id, "state": "released", "written": j.spec.inputs.iter().map(|i| format!("{}/{}/analyses/job-{id}", j.spec.group, Spec::sample(i))).collect::<Vec<_>>()}),
        ))
    }

    /// Writes a job's outputs and signed provenance into each sample record:
    /// into a hidden partial directory first, renamed into place when whole,
    /// so a reader (and a restarted service) never sees half a result.
    fn write_release(&self, j: &Job) -> Res<()> {
        let results = j.results.clone().unwrap_or_default();
        for (n, input) in j.spec.inputs.iter().enumerate() {
            let sample = Spec::sample(input);
            let rel = format!("{}/{sample}/analyses/job-{}", j.spec.group, j.id);
            let sample_dir = match self.within(&j.spec.group, sample) {
                Ok(p) => p,
                Err(_) => {
                    return Err(Reply::error(409, format!("sample {sample} is gone or leads outside the data group (a symbolic link); reject the job")))
                }
            };
            let analyses = sample_dir.join("analyses");
            std::fs::create_dir_all(&analyses).map_err(internal)?;
            if self
                .within(&j.spec.group, &format!("{sample}/analyses"))
                .ok()
                != Some(analyses.clone())
            {
                return Err(Reply::error(409, format!("{sample}/analyses leads outside the data group (a symbolic link); remove it, then release again")));
            }
            let dest = analyses.join(format!("job-{}", j.id));
            if dest.exists() {
                continue;
            }
            let partial = analyses.join(format!(".job-{}.partial", j.id));
            let _ = std::fs::remove_dir_all(&partial);
            std::fs::create_dir_all(&partial).map_err(internal)?;
            let staged = self.job_dir(j.id).join("out").join(n.to_string());
            let r = &results["inputs"][n];
            let mut outputs = Vec::new();
            for o in r["outputs"].as_array().cloned().unwrap_or_default() {
                let name = o["name"].as_str().unwrap_or_default().to_string();
                let bytes = std::fs::read(staged.join(&name)).map_err(internal)?;
                if hex::encode(sha256(&bytes)) != o["sha256"].as_str().unwrap_or_default() {
                    return Err(Reply::error(500, format!("staged output {name} of job {} changed after the checks; reject the job", j.id)));
                }
                let to = partial.join(&name);
                if let Some(p) = to.parent() {
                    std::fs::create_dir_all(p).map_err(internal)?;
                }
                write_atomic(&to, &bytes, 0o644).map_err(internal)?;
                outputs.push(o);
            }
            let prov = serde_json::json!({
                "tresor_provenance": 1,
                "job": j.id,
                "group": j.spec.group,
                "sample": sample,
                "input": {"path": input, "sha256": r["input_sha256"]},
                "program": j.spec.program,
                "args": j.spec.args,
                "bundle_sha256": j.bundle_sha256,
                "profile_sha256": j.profile_sha256,
                "policy_sha256": j.policy_sha256,
                "submitter": j.submitter,
                "approver": j.approver,
                "releaser": j.releaser,
                "exit_status": r["status"],
                "outputs": outputs,
                "times": j.times,
                "service": self.pse.public.user,
            });
            let mut bytes = serde_json::to_vec_pretty(&prov).map_err(internal)?;
            bytes.push(b'\n');
            write_atomic(&partial.join("provenance.json"), &bytes, 0o644).map_err(internal)?;
            let sig = self.sign_document(&format!("{rel}/provenance.json"), &bytes)?;
            write_atomic(&partial.join("provenance.json.sig"), &sig, 0o644).map_err(internal)?;
            fault::before_rename(n + 1);
            std::fs::rename(&partial, &dest).map_err(internal)?;
        }
        Ok(())
    }

    fn sign_document(&self, path: &str, bytes: &[u8]) -> Res<Vec<u8>> {
        let dir = self.store.read_directory(&self.anchor).map_err(internal)?;
        let me = &self.pse.public.user;
        let role = dir
            .users
            .get(me)
            .map(|u| u.role.clone())
            .unwrap_or_default();
        let st = Statement {
            store_id: dir.store_id.clone(),
            path: path.to_string(),
            sha256: hex::encode(sha256(bytes)),
            signer: me.clone(),
            role,
            key: self
                .pse
                .public
                .sign_public
                .fingerprint()
                .map_err(internal)?,
            time: auth::now(),
        };
        let e = Entry::sign(st, &self.pse.sign).map_err(internal)?;
        let mut f = SigFile::default();
        f.add(e).map_err(internal)?;
        Ok(f.to_bytes())
    }

    fn readable_group(&self, user: &str, dir: &Body, g: &str, s: &str) -> Res<PathBuf> {
        if !dir.datagroups.contains_key(g) {
            return Err(Reply::error(404, format!("no data group named {g}")));
        }
        if !dir.user_right(user, g).can_read() {
            return Err(Reply::error(
                403,
                format!("{user} may not read the data group {g}"),
            ));
        }
        if !valid_part(s) || s.starts_with('.') {
            return Err(Reply::error(400, format!("\"{s}\" is not a sample name")));
        }
        match self.within(g, s) {
            Ok(p) if p.is_dir() => Ok(p.join("analyses")),
            Err(Outside::Link) => Err(Reply::error(
                400,
                format!("sample {s} leads outside the data group {g} (a symbolic link)"),
            )),
            _ => Err(Reply::error(404, format!("no sample {s} in {g}"))),
        }
    }

    fn analyses(&self, user: &str, dir: &Body, g: &str, s: &str) -> Res<Reply> {
        let base = self.readable_group(user, dir, g, s)?;
        let mut out = Vec::new();
        let listed = self
            .within(g, &format!("{s}/analyses"))
            .ok()
            .filter(|p| *p == base);
        if let Some(rd) = listed.and_then(|b| std::fs::read_dir(b).ok()) {
            let mut names: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| !n.starts_with('.'))
                .collect();
            names.sort();
            for n in names {
                // An analysis that is a link (anywhere) is not listed.
                if self.within(g, &format!("{s}/analyses/{n}")).ok() != Some(base.join(&n)) {
                    continue;
                }
                let prov: serde_json::Value = std::fs::read(base.join(&n).join("provenance.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                let mut files = Vec::new();
                walk_files(&base.join(&n), "", &mut files);
                out.push(serde_json::json!({"analysis": n, "files": files, "provenance": prov}));
            }
        }
        Ok(Reply::json(
            200,
            serde_json::json!({"group": g, "sample": s, "analyses": out}),
        ))
    }

    fn download(&self, user: &str, dir: &Body, g: &str, s: &str, j: &str, f: &str) -> Res<Reply> {
        let base = self.readable_group(user, dir, g, s)?;
        if !valid_part(j) || j.starts_with('.') || !valid_part(f) {
            return Err(Reply::error(400, "analysis and file are plain names"));
        }
        let p = match self.within(g, &format!("{s}/analyses/{j}/{f}")) {
            Ok(p) if p.starts_with(&base) => p,
            _ => {
                return Err(Reply::error(
                    404,
                    format!("no file {f} in {g}/{s}/analyses/{j}"),
                ))
            }
        };
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => {}
            _ => {
                return Err(Reply::error(
                    404,
                    format!("no file {f} in {g}/{s}/analyses/{j}"),
                ))
            }
        }
        let body = std::fs::read(&p).map_err(internal)?;
        Ok(Reply {
            status: 200,
            body,
            json: false,
        })
    }

    fn kick(&self) {
        let mut n = self.wake.0.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        self.wake.1.notify_all();
    }

    /// One worker: takes the oldest waiting step, does it, repeats.
    pub fn worker(&self) {
        while !self.stopping.load(Ordering::SeqCst) {
            let claimed = self.claim();
            match claimed {
                Some(j) if j.state == State::Profiling => self.profile_job(j),
                Some(j) => self.run_job(j),
                None => {
                    let g = self.wake.0.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = self.wake.1.wait_timeout(g, Duration::from_secs(1));
                }
            }
        }
    }

    fn claim(&self) -> Option<Job> {
        let db = self.db();
        for (from, to) in [
            (State::Submitted, State::Profiling),
            (State::Queued, State::Running),
        ] {
            if let Ok(Some(j)) = db.oldest(from) {
                let now = auth::now();
                if db
                    .transition(j.id, from, to, Change::default(), now)
                    .unwrap_or(false)
                {
                    drop(db);
                    self.note("state", serde_json::json!({"job": j.id, "from": from.name(), "to": to.name(), "by": "service", "reason": ""}));
                    return self.db().get(j.id).ok().flatten();
                }
            }
        }
        None
    }

    fn fail(&self, j: &Job, why: String) {
        tracing::warn!("job {}: {why}", j.id);
        let _ = self.move_job(j, State::Failed, "service", reason(&why));
    }

    fn argv(&self, j: &Job, input: &Path, out: &Path) -> Vec<OsString> {
        let prog = self.job_dir(j.id).join("bundle").join(&j.spec.program.name);
        let mut v: Vec<OsString> = Vec::new();
        if let Some(i) = &j.spec.program.interpreter {
            v.push(i.into());
        }
        v.push(prog.into());
        for a in &j.spec.args {
            let s = a
                .replace("{input}", &input.to_string_lossy())
                .replace("{out}", &out.to_string_lossy());
            v.push(s.into());
        }
        v
    }

    /// The program on disk still is the submitted one.
    fn bundle_intact(&self, j: &Job) -> Result<(), String> {
        let prog = self.job_dir(j.id).join("bundle").join(&j.spec.program.name);
        let bytes =
            std::fs::read(&prog).map_err(|e| format!("the bundle's program is gone ({e})"))?;
        if hex::encode(sha256(&bytes)) != j.spec.program.sha256
            || j.spec.bundle_sha256() != j.bundle_sha256
        {
            return Err("the bundle changed after it was submitted (its hash no longer matches); it was not run".into());
        }
        Ok(())
    }

    /// The task for one input; the input is looked up again (a link
    /// planted after submission is caught here).
    fn task(&self, j: &Job, input: &str, out: PathBuf) -> Result<Task, String> {
        let path = match self.within(&j.spec.group, input) {
            Ok(p) => p,
            Err(Outside::Link) => {
                return Err(format!(
                "input {input} now leads outside the data group (a symbolic link); it was not run"
            ))
            }
            Err(Outside::Missing(e)) => return Err(format!("cannot find input {input}: {e}")),
        };
        let data = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.mnt.clone());
        Ok(Task {
            argv: self.argv(j, &path, &out),
            data,
            out,
            profile: self.job_dir(j.id).join("profile.json"),
            limits: self.cfg.limits.clone(),
        })
    }

    fn profile_job(&self, j: Job) {
        if let Err(why) = self.bundle_intact(&j) {
            return self.fail(&j, why);
        }
        let scratch = self.job_dir(j.id).join("profiling-out");
        let _ = std::fs::remove_dir_all(&scratch);
        if let Err(e) = std::fs::create_dir_all(&scratch) {
            return self.fail(&j, format!("cannot create {}: {e}", scratch.display()));
        }
        let t = match self.task(&j, &j.spec.inputs[0], scratch.clone()) {
            Ok(t) => t,
            Err(why) => return self.fail(&j, why),
        };
        let started = std::time::Instant::now();
        let outcome = self.executor.profile(&t);
        tracing::info!(
            "job {}: tresor profile took {} ms",
            j.id,
            started.elapsed().as_millis()
        );
        // Outputs of the profiling run are held back: never released.
        let _ = std::fs::remove_dir_all(&scratch);
        match outcome {
            Ok(o) if o.status == 0 => {}
            Ok(o) => {
                return self.fail(
                    &j,
                    {
                        // The profiling run sees the host read-only and is
                        // not yet approved: what it prints must not reach
                        // the submitter (a channel out). The log keeps it.
                        tracing::warn!("job {}: profiling run's stderr:\n{}", j.id, o.stderr_tail);
                        format!(
                            "the profiling run on {} exited with {} (its output is in the service's log)",
                            j.spec.inputs[0], o.status
                        )
                    },
                );
            }
            Err(e) => return self.fail(&j, format!("cannot start tresor profile: {e}")),
        }
        let hashes = std::fs::read(&t.profile)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                let pol = Policy::load(&t.profile, &PolicyOptions::default())
                    .map_err(|e| e.to_string())?;
                Ok((
                    hex::encode(sha256(&bytes)),
                    hex::encode(sha256(pol.to_json().as_bytes())),
                ))
            });
        match hashes {
            Ok(h) => {
                let _ = self.move_job(
                    &j,
                    State::Profiled,
                    "service",
                    Change {
                        hashes: Some(h),
                        ..Change::default()
                    },
                );
            }
            Err(e) => self.fail(
                &j,
                format!("the profile cannot be compiled into a policy: {e}"),
            ),
        }
    }

    /// What was approved is what runs: bundle, profile and policy hashes.
    fn approved_intact(&self, j: &Job) -> Result<(), String> {
        self.bundle_intact(j)?;
        let approved: ApproveBody = j
            .approval
            .as_ref()
            .and_then(|a| a["body"].as_str())
            .and_then(|b| serde_json::from_str(b).ok())
            .ok_or("the job has no approval on record")?;
        let p = self.job_dir(j.id).join("profile.json");
        let bytes = std::fs::read(&p).map_err(|e| format!("the profile is gone ({e})"))?;
        let pol = Policy::load(&p, &PolicyOptions::default()).map_err(|e| e.to_string())?;
        let now = (
            j.bundle_sha256.clone(),
            hex::encode(sha256(&bytes)),
            hex::encode(sha256(pol.to_json().as_bytes())),
        );
        if (
            approved.bundle_sha256,
            approved.profile_sha256,
            approved.policy_sha256,
        ) != now
        {
            return Err("the bundle or its profile changed after approval (hashes differ from the approved ones); it was not run".into());
        }
        Ok(())
    }

    fn run_job(&self, j: Job) {
        let started = std::time::Instant::now();
        if let Err(why) = self.approved_intact(&j) {
            return self.fail(&j, why);
        }
        tracing::info!(
            "job {}: approval checked in {} ms",
            j.id,
            started.elapsed().as_millis()
        );
        let outs = self.job_dir(j.id).join("out");
        let _ = std::fs::remove_dir_all(&outs);
        let mut per_input = Vec::new();
        let mut files = Vec::new();
        for (n, input) in j.spec.inputs.iter().enumerate() {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let out = outs.join(n.to_string());
            if let Err(e) = std::fs::create_dir_all(&out) {
                return self.fail(&j, format!("cannot create {}: {e}", out.display()));
            }
            let t = match self.task(&j, input, out.clone()) {
                Ok(t) => t,
                Err(why) => return self.fail(&j, why),
            };
            // The file the task names, resolved inside the group as there.
            let input_sha = match self
                .within(&j.spec.group, input)
                .map_err(|_| std::io::Error::other("it left the data group"))
                .and_then(std::fs::File::open)
                .and_then(crate::crypto::sha256_reader)
            {
                Ok(h) => hex::encode(h),
                Err(e) => return self.fail(&j, format!("cannot read input {input}: {e}")),
            };
            let ran = std::time::Instant::now();
            let outcome = self.executor.run(&t);
            tracing::info!(
                "job {}: tresor run on {input} took {} ms",
                j.id,
                ran.elapsed().as_millis()
            );
            match outcome {
                Ok(o) if o.status == 0 => {}
                Ok(o) => {
                    return self.fail(
                        &j,
                        format!(
                            "the run on {input} exited with {}: {}",
                            o.status, o.stderr_tail
                        ),
                    )
                }
                Err(e) => return self.fail(&j, format!("cannot start tresor run: {e}")),
            }
            let mut names = Vec::new();
            walk_files(&out, "", &mut names);
            let mut outputs = Vec::new();
            for name in names {
                let bytes = match std::fs::read(out.join(&name)) {
                    Ok(b) => b,
                    Err(e) => return self.fail(&j, format!("cannot read output {name}: {e}")),
                };
                outputs.push(checks::Output {
                    name: name.clone(),
                    size: bytes.len() as u64,
                    sha256: hex::encode(sha256(&bytes)),
                });
                files.push((name, bytes));
            }
            per_input.push(serde_json::json!({"input": input, "input_sha256": input_sha, "status": 0, "outputs": outputs}));
        }
        let report = checks::check(&files, self.cfg.max_output, &self.rules);
        let change = Change {
            results: Some(serde_json::json!({ "inputs": per_input })),
            checks: serde_json::to_value(&report).ok(),
            ..Change::default()
        };
        let _ = self.move_job(&j, State::Staged, "service", change);
        tracing::info!(
            "job {}: staged {} ms after it was claimed",
            j.id,
            started.elapsed().as_millis()
        );
    }
}

/// The value of `key` in the path's query (`/jobs/7?changed_from=running`).
fn query<'a>(path: &'a str, key: &str) -> Option<&'a str> {
    path.split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Why [`Service::within`] refused a path.
#[derive(Debug)]
enum Outside {
    /// It does not exist (or cannot be read).
    Missing(std::io::Error),
    /// A symbolic link leads out of the data group.
    Link,
}

fn is_sha256(h: &str) -> bool {
    h.len() == 64
        && h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn reason(s: &str) -> Change {
    Change {
        reason: Some(s.to_string()),
        ..Change::default()
    }
}

/// Regular files below `dir`, as relative paths, sorted.
fn walk_files(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        match e.file_type() {
            Ok(t) if t.is_dir() => walk_files(&e.path(), &format!("{name}/"), out),
            Ok(t) if t.is_file() => out.push(name),
            _ => {}
        }
    }
}

/// Fault injection for tests/service.rs, compiled into debug builds only (a
/// release build has no trace of it): `TRESOR_FAULT_ABORT_BEFORE_RELEASE_RENAME=N`
/// aborts the service (SIGABRT, like a crash) just before a release moves
/// its N-th sample's complete result into place.
#[cfg(debug_assertions)]
mod fault {
    pub(super) fn before_rename(n: usize) {
        let armed = std::env::var("TRESOR_FAULT_ABORT_BEFORE_RELEASE_RENAME")
            .ok()
            .and_then(|v| v.parse::<usize>().ok());
        if armed == Some(n) {
            eprintln!("tresor serve: fault injection: abort before release rename {n}");
            std::process::abort();
        }
    }
}

#[cfg(not(debug_assertions))]
mod fault {
    pub(super) fn before_rename(_: usize) {}
}
