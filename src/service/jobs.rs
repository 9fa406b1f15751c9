//! Jobs and their states, kept in an embedded SQLite database (WAL,
//! synchronous=FULL): a state change is on disk before the service answers,
//! and a restarted service finds every job where it was (docs/SERVICE.md).

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The states of a job, in lifecycle order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Received; waits to be profiled.
    Submitted,
    /// Being profiled on its first input.
    Profiling,
    /// Profiled; waits for an approver.
    Profiled,
    /// Approved; waits for a free slot.
    Queued,
    /// Running confined.
    Running,
    /// Outputs staged; waits for a checker.
    Staged,
    /// Outputs being written into the sample records.
    Releasing,
    /// Outputs in the sample records.
    Released,
    /// Refused by an approver or a checker.
    Rejected,
    /// Could not be profiled or run.
    Failed,
}

impl State {
    /// The name stored and shown.
    pub fn name(self) -> &'static str {
        match self {
            State::Submitted => "submitted",
            State::Profiling => "profiling",
            State::Profiled => "profiled",
            State::Queued => "queued",
            State::Running => "running",
            State::Staged => "staged",
            State::Releasing => "releasing",
            State::Released => "released",
            State::Rejected => "rejected",
            State::Failed => "failed",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "submitted" => State::Submitted,
            "profiling" => State::Profiling,
            "profiled" => State::Profiled,
            "queued" => State::Queued,
            "running" => State::Running,
            "staged" => State::Staged,
            "releasing" => State::Releasing,
            "released" => State::Released,
            "rejected" => State::Rejected,
            _ => State::Failed,
        }
    }
}

/// The program of a job: an executable, or a script and the host's
/// interpreter that runs it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Program {
    /// File name the program is stored and run under.
    pub name: String,
    /// An interpreter on the service's host (`/usr/bin/python3`); absent
    /// for an executable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreter: Option<String>,
    /// SHA-256 (hex) of the program's bytes.
    pub sha256: String,
}

/// What a submitter asks for; its hash is what an approver approves.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The data group the job reads (and whose sample records it extends).
    pub group: String,
    /// Inputs inside the group, `SAMPLE/…/FILE`, one per sample.
    pub inputs: Vec<String>,
    /// The program.
    pub program: Program,
    /// Arguments; `{input}` and `{out}` are replaced per input.
    pub args: Vec<String>,
}

impl Spec {
    /// The bundle hash: SHA-256 of the spec's canonical JSON (which holds
    /// the program's hash).
    pub fn bundle_sha256(&self) -> String {
        let mut m = b"tresor-bundle-v1\0".to_vec();
        m.extend_from_slice(&serde_json::to_vec(self).unwrap_or_default());
        hex::encode(crate::crypto::sha256(&m))
    }

    /// The sample an input belongs to: its first path part.
    pub fn sample(input: &str) -> &str {
        input.split('/').next().unwrap_or(input)
    }
}

/// A job as stored.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Job {
    /// Number, from 1.
    pub id: i64,
    /// Who submitted it.
    pub submitter: String,
    /// What was submitted.
    pub spec: Spec,
    /// Hash of `spec`.
    pub bundle_sha256: String,
    /// Where it is.
    pub state: State,
    /// Why it failed or was rejected; empty otherwise.
    pub reason: String,
    /// Hash of the profile made on the first input.
    pub profile_sha256: Option<String>,
    /// Hash of the policy compiled from it.
    pub policy_sha256: Option<String>,
    /// Who approved it.
    pub approver: Option<String>,
    /// The approver's signed request (the evidence).
    pub approval: Option<serde_json::Value>,
    /// Who released it.
    pub releaser: Option<String>,
    /// The automatic checks of the staged outputs.
    pub checks: Option<serde_json::Value>,
    /// Per input: its hash, the run's exit and outputs.
    pub results: Option<serde_json::Value>,
    /// Times each state was entered.
    pub times: serde_json::Value,
    /// Runs started (a restart re-queues a running job).
    pub attempts: i64,
}

/// The database.
pub struct Db {
    conn: Connection,
}

const COLUMNS: &str = "id, submitter, spec, bundle_sha256, state, reason, profile_sha256, policy_sha256, approver, approval, releaser, checks, results, times, attempts";

fn json_col(s: Option<String>) -> Option<serde_json::Value> {
    s.and_then(|t| serde_json::from_str(&t).ok())
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    let spec: String = r.get(2)?;
    let spec: Spec = serde_json::from_str(&spec).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(Job {
        id: r.get(0)?,
        submitter: r.get(1)?,
        spec,
        bundle_sha256: r.get(3)?,
        state: State::parse(&r.get::<_, String>(4)?),
        reason: r.get(5)?,
        profile_sha256: r.get(6)?,
        policy_sha256: r.get(7)?,
        approver: r.get(8)?,
        approval: json_col(r.get(9)?),
        releaser: r.get(10)?,
        checks: json_col(r.get(11)?),
        results: json_col(r.get(12)?),
        times: json_col(r.get(13)?).unwrap_or_else(|| serde_json::json!({})),
        attempts: r.get(14)?,
    })
}

/// A change to a job's fields besides its state.
#[derive(Default)]
pub struct Change {
    /// Reason text.
    pub reason: Option<String>,
    /// Profile and policy hashes.
    pub hashes: Option<(String, String)>,
    /// Approver and evidence.
    pub approval: Option<(String, serde_json::Value)>,
    /// Releaser.
    pub releaser: Option<String>,
    /// Checks report.
    pub checks: Option<serde_json::Value>,
    /// Results.
    pub results: Option<serde_json::Value>,
}

impl Db {
    /// Opens or creates the database.
    pub fn open(path: &Path) -> rusqlite::Result<Db> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS jobs(
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                submitter TEXT NOT NULL,
                spec TEXT NOT NULL,
                bundle_sha256 TEXT NOT NULL,
                state TEXT NOT NULL,
                reason TEXT NOT NULL DEFAULT '',
                profile_sha256 TEXT,
                policy_sha256 TEXT,
                approver TEXT,
                approval TEXT,
                releaser TEXT,
                checks TEXT,
                results TEXT,
                times TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0
             );
             CREATE TABLE IF NOT EXISTS nonces(
                user TEXT NOT NULL,
                nonce TEXT NOT NULL,
                time INTEGER NOT NULL,
                PRIMARY KEY(user, nonce)
             );",
        )?;
        Ok(Db { conn })
    }

    /// Records a nonce; false if it was used before. Nonces older than
    /// twice the time window are forgotten (their requests are expired).
    pub fn fresh_nonce(&self, user: &str, nonce: &str, now: u64) -> rusqlite::Result<bool> {
        let horizon = now.saturating_sub(2 * super::auth::WINDOW) as i64;
        self.conn
            .execute("DELETE FROM nonces WHERE time < ?1", params![horizon])?;
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO nonces(user, nonce, time) VALUES (?1, ?2, ?3)",
            params![user, nonce, now as i64],
        )?;
        Ok(n == 1)
    }

    /// Adds a submitted job; returns its id.
    pub fn insert(&self, submitter: &str, spec: &Spec, now: u64) -> rusqlite::Result<i64> {
        let spec_json = serde_json::to_string(spec).unwrap_or_default();
        let times = serde_json::json!({ "submitted": now }).to_string();
        self.conn.execute(
            "INSERT INTO jobs(submitter, spec, bundle_sha256, state, times) VALUES (?1, ?2, ?3, 'submitted', ?4)",
            params![submitter, spec_json, spec.bundle_sha256(), times],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// One job.
    pub fn get(&self, id: i64) -> rusqlite::Result<Option<Job>> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                row,
            )
            .optional()
    }

    /// Every job, newest first.
    pub fn all(&self) -> rusqlite::Result<Vec<Job>> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM jobs ORDER BY id DESC"))?;
        let rows = st.query_map([], row)?;
        rows.collect()
    }

    /// Moves job `id` from `from` to `to` with `change`; false (nothing
    /// changed) if it was not in `from` — two callers never both win.
    pub fn transition(
        &self,
        id: i64,
        from: State,
        to: State,
        change: Change,
        now: u64,
    ) -> rusqlite::Result<bool> {
        let tx = self.conn.unchecked_transaction()?;
        let Some(job) = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                row,
            )
            .optional()?
        else {
            return Ok(false);
        };
        if job.state != from {
            return Ok(false);
        }
        let mut times = job.times.clone();
        if let Some(m) = times.as_object_mut() {
            m.insert(to.name().into(), now.into());
        }
        let attempts = job.attempts + i64::from(to == State::Running);
        let js = |v: &Option<serde_json::Value>| v.as_ref().map(|x| x.to_string());
        let (profile, policy) = change
            .hashes
            .map_or((job.profile_sha256, job.policy_sha256), |(a, b)| {
                (Some(a), Some(b))
            });
        let (approver, approval) = change
            .approval
            .map_or((job.approver, job.approval), |(a, e)| (Some(a), Some(e)));
        tx.execute(
            "UPDATE jobs SET state = ?2, reason = ?3, profile_sha256 = ?4, policy_sha256 = ?5,
                approver = ?6, approval = ?7, releaser = ?8, checks = ?9, results = ?10,
                times = ?11, attempts = ?12 WHERE id = ?1",
            params![
                id,
                to.name(),
                change.reason.unwrap_or(job.reason),
                profile,
                policy,
                approver,
                js(&approval),
                change.releaser.or(job.releaser),
                js(&change.checks.or(job.checks)),
                js(&change.results.or(job.results)),
                times.to_string(),
                attempts,
            ],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// The oldest job in `state`, if any.
    pub fn oldest(&self, state: State) -> rusqlite::Result<Option<Job>> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE state = ?1 ORDER BY id LIMIT 1"),
                [state.name()],
                row,
            )
            .optional()
    }

    /// Jobs in `state`.
    pub fn in_state(&self, state: State) -> rusqlite::Result<Vec<Job>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE state = ?1 ORDER BY id"
        ))?;
        let rows = st.query_map([state.name()], row)?;
        rows.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            group: "pathology".into(),
            inputs: vec!["S-1/slide.tiff".into()],
            program: Program {
                name: "ki67".into(),
                interpreter: None,
                sha256: "ab".repeat(32),
            },
            args: vec!["{input}".into(), "--out".into(), "{out}".into()],
        }
    }

    #[test]
    fn transitions_are_exclusive_and_survive_reopening() {
        let d = tempfile::tempdir().unwrap();
        let db = Db::open(&d.path().join("jobs.db")).unwrap();
        let id = db.insert("rob", &spec(), 1).unwrap();
        assert!(db
            .transition(id, State::Submitted, State::Profiling, Change::default(), 2)
            .unwrap());
        // A second claim of the same step loses.
        assert!(!db
            .transition(id, State::Submitted, State::Profiling, Change::default(), 2)
            .unwrap());
        drop(db);
        let db = Db::open(&d.path().join("jobs.db")).unwrap();
        let j = db.get(id).unwrap().unwrap();
        assert_eq!(j.state, State::Profiling);
        assert_eq!(j.bundle_sha256, spec().bundle_sha256());
        assert_eq!(j.times["profiling"], 2);
        assert!(db.fresh_nonce("rob", "n1", 100).unwrap());
        assert!(!db.fresh_nonce("rob", "n1", 100).unwrap());
    }

    #[test]
    fn the_bundle_hash_covers_every_field() {
        let a = spec();
        let mut b = spec();
        b.args.push("x".into());
        let mut c = spec();
        c.program.sha256 = "cd".repeat(32);
        let mut e = spec();
        e.inputs = vec!["S-2/slide.tiff".into()];
        let hashes = [
            a.bundle_sha256(),
            b.bundle_sha256(),
            c.bundle_sha256(),
            e.bundle_sha256(),
        ];
        for i in 0..hashes.len() {
            for j in i + 1..hashes.len() {
                assert_ne!(hashes[i], hashes[j]);
            }
        }
    }
}
