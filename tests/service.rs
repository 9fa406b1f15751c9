//! The analysis service (docs/SERVICE.md): a real `tresor serve` on a
//! loopback port over a real store, driven by the real client commands and
//! by hand-made HTTP requests that try to get past it.

use crate::util::{self, ok, tresor, TestStore};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The analysis: sums a CSV's second column into summary.json and
/// table.csv. With a file `slow` beside its input it sleeps (to be killed).
const ANALYSIS: &str = r#"import hashlib, json, os, sys, time
inp, out = sys.argv[1], sys.argv[2]
data = open(inp, 'rb').read()
time.sleep(0.001)
if os.path.exists(os.path.join(os.path.dirname(inp), 'slow')):
    time.sleep(600)
rows = [l.split(',') for l in data.decode().splitlines()[1:]]
total = sum(int(r[1]) for r in rows)
with open(os.path.join(out, 'summary.json'), 'w') as f:
    json.dump({'rows': len(rows), 'total': total, 'input_sha256': hashlib.sha256(data).hexdigest()}, f, sort_keys=True)
with open(os.path.join(out, 'table.csv'), 'w') as f:
    f.write('measure,count\ntotal,%d\n' % total)
"#;

const PYTHON: &str = "/usr/bin/python3";

struct Site {
    ts: TestStore,
    state: PathBuf,
    script: PathBuf,
    users: std::collections::BTreeMap<String, (PathBuf, PathBuf)>,
}

struct Serve {
    child: Child,
    url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn available() -> bool {
    util::fuse_available()
        && util::require_root("mount the service's store and confine its runs")
        && util::require(Path::new(PYTHON).exists(), "/usr/bin/python3")
}

impl Site {
    /// A store with a pathology group, samples S-1..S-3, and the service's
    /// roles: researchers submit, supervisors approve, checkers release,
    /// seniors (rob) hold all three duties, nurses only read, the service
    /// reads and writes.
    fn new() -> Site {
        let ts = TestStore::new(&["pathology"]);
        let store = ts.store.to_str().unwrap().to_string();
        for (role, right, duties) in [
            ("seniors", "r", &["submit", "approve", "release"][..]),
            ("researchers", "r", &["submit"][..]),
            ("supervisors", "-", &["approve"][..]),
            ("checkers", "r", &["release"][..]),
            ("nurses", "r", &[][..]),
            ("service", "w", &[][..]),
        ] {
            assert!(ts.admin(&["role", "add", &store, role]).status.success());
            assert!(ts
                .admin(&["grant", &store, role, "pathology", right])
                .status
                .success());
            for d in duties {
                let o = ts.admin(&["duty", &store, role, d]);
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            }
        }
        let mut users = std::collections::BTreeMap::new();
        for (u, r) in [
            ("rob", "seniors"),
            ("rita", "researchers"),
            ("alice", "supervisors"),
            ("nina", "checkers"),
            ("nora", "nurses"),
            ("carl", "researchers"),
            ("svc", "service"),
        ] {
            users.insert(u.to_string(), ts.add_user(u, r));
        }
        let m = ts.mount();
        for (s, text) in [
            ("S-1", "item,n\na,120\nb,30\n"),
            ("S-2", "item,n\na,400\n"),
            ("S-3", "item,n\na,2\nb,1\n"),
        ] {
            std::fs::create_dir_all(m.path(&format!("pathology/{s}"))).unwrap();
            std::fs::write(m.path(&format!("pathology/{s}/values.csv")), text).unwrap();
        }
        m.unmount();
        let script = ts.dir.path().join("analysis.py");
        std::fs::write(&script, ANALYSIS).unwrap();
        let state = ts.dir.path().join("service");
        Site {
            ts,
            state,
            script,
            users,
        }
    }

    /// `tresor audit verify LOG --store STORE`.
    fn audit_verify(&self, log: &Path) -> std::process::Output {
        tresor()
            .args(["audit", "verify"])
            .arg(log)
            .arg("--store")
            .arg(&self.ts.store)
            .output()
            .unwrap()
    }

    fn user(&self, u: &str) -> &(PathBuf, PathBuf) {
        &self.users[u]
    }

    /// Starts `tresor serve` on a free loopback port and waits for its
    /// "serving … on URL" line.
    fn serve(&self, extra: &[&str]) -> Serve {
        self.serve_env(extra, &[])
    }

    fn serve_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Serve {
        let (pse, pass) = self.user("svc");
        let mut child = tresor()
            .envs(env.iter().copied())
            .arg("serve")
            .arg(&self.ts.store)
            .arg("--pse")
            .arg(pse)
            .arg("--passphrase-file")
            .arg(pass)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "1",
                "--timeout",
                "120s",
            ])
            .arg("--state")
            .arg(&self.state)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.ts.dir.path().join("serve.log")).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| {
                panic!(
                    "serve did not start: {line:?}; log:\n{}",
                    std::fs::read_to_string(self.ts.dir.path().join("serve.log"))
                        .unwrap_or_default()
                )
            })
            .to_string();
        Serve { child, url }
    }

    /// `tresor CMD --service URL --pse U.pse --passphrase-file U.pass ARGS…`.
    fn client(&self, s: &Serve, user: &str, args: &[&str]) -> std::process::Output {
        let (pse, pass) = self.user(user);
        let (cmd, rest) = args.split_first().unwrap();
        tresor()
            .arg(cmd)
            .arg("--service")
            .arg(&s.url)
            .arg("--pse")
            .arg(pse)
            .arg("--passphrase-file")
            .arg(pass)
            .args(rest)
            .output()
            .unwrap()
    }

    fn submit(&self, s: &Serve, user: &str, inputs: &[&str]) -> i64 {
        let mut args = vec!["submit", "--group", "pathology", "--interpreter", PYTHON];
        for i in inputs {
            args.push("--input");
            args.push(i);
        }
        args.extend(["--", self.script.to_str().unwrap(), "{input}", "{out}"]);
        let o = self.client(s, user, &args);
        assert!(
            o.status.success(),
            "submit: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        text.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no job id in {text:?}"))
    }

    fn job(&self, s: &Serve, id: i64) -> serde_json::Value {
        let o = self.client(s, "alice", &["jobs", &id.to_string(), "--json"]);
        assert!(
            o.status.success(),
            "jobs: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Waits (hang guard: 180 s) until job `id` is in one of `states`.
    fn wait_state(&self, s: &Serve, id: i64, states: &[&str]) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let j = self.job(s, id);
            if states.contains(&j["state"].as_str().unwrap_or("")) {
                return j;
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "job {id} never reached {states:?}: {j:#}"
            );
            std::thread::sleep(Duration::from_millis(200)); // poll of a hang-guarded wait
        }
    }

    fn expect_refusal(&self, s: &Serve, user: &str, args: &[&str], http: u16, words: &str) {
        let o = self.client(s, user, args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{user} {args:?} was allowed");
        assert!(
            err.contains(&format!("HTTP {http}")) && err.contains(words),
            "{user} {args:?}: want HTTP {http} and {words:?}, got: {err}"
        );
    }
}

/// The analysis run directly, as `tresor profile` + `tresor run` on a mount.
fn direct_run(site: &Site, sample: &str) -> (Vec<u8>, Vec<u8>) {
    let (pse, pass) = site.user("rob");
    let m = site.ts.mount_as(pse, pass, "rob-mnt", &[]);
    let input = m.path(&format!("pathology/{sample}/values.csv"));
    let data = input.parent().unwrap().to_path_buf();
    let scratch = site.ts.subdir("direct-scratch");
    let out = site.ts.subdir("direct-out");
    let profile = site.ts.dir.path().join("direct.json");
    ok(tresor()
        .args(["profile", "--out"])
        .arg(&profile)
        .arg("--data")
        .arg(&data)
        .arg("--writable")
        .arg(&scratch)
        .args(["--", PYTHON])
        .arg(&site.script)
        .arg(&input)
        .arg(&scratch));
    ok(tresor()
        .args(["run", "--profile"])
        .arg(&profile)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args(["--", PYTHON])
        .arg(&site.script)
        .arg(&input)
        .arg(&out));
    let r = (
        std::fs::read(out.join("summary.json")).unwrap(),
        std::fs::read(out.join("table.csv")).unwrap(),
    );
    m.unmount();
    r
}

#[test]
fn submit_approve_run_release_fetch_equals_a_direct_confined_run() {
    if !available() {
        return;
    }
    let site = Site::new();
    let s = site.serve(&[]);
    let id = site.submit(&s, "rob", &["S-1/values.csv", "S-2/values.csv"]);
    let j = site.wait_state(&s, id, &["profiled", "failed"]);
    assert_eq!(j["state"], "profiled", "{j:#}");
    let sid = id.to_string();

    // Four eyes and duties, before and after approval: rob holds every
    // duty and still may not approve or release his own job.
    site.expect_refusal(&s, "rob", &["approve", &sid], 403, "four eyes");
    site.expect_refusal(&s, "nina", &["approve", &sid], 403, "no approve duty");
    site.expect_refusal(&s, "alice", &["release", &sid], 403, "no release duty");
    site.expect_refusal(&s, "nina", &["release", &sid], 409, "not staged");
    // The approver sees the profile and the policy before approving.
    let review = site.client(&s, "alice", &["jobs", &sid, "--review"]);
    assert!(review.status.success());
    let text = String::from_utf8_lossy(&review.stdout);
    assert!(
        text.contains("openat") && text.contains("\"syscalls\""),
        "{text}"
    );
    let o = site.client(&s, "alice", &["approve", &sid]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    site.expect_refusal(&s, "alice", &["approve", &sid], 409, "not profiled");

    let j = site.wait_state(&s, id, &["staged", "failed"]);
    assert_eq!(j["state"], "staged", "{j:#}");
    assert_eq!(j["checks"]["ok"], true, "{j:#}");
    site.expect_refusal(&s, "rob", &["release", &sid], 403, "four eyes");
    // Nothing unreleased leaves: the sample record has no analysis yet.
    let listed = site.client(&s, "nora", &["results", "pathology/S-1"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(v["analyses"].as_array().unwrap().len(), 0, "{v:#}");

    let o = site.client(&s, "nina", &["release", &sid]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j = site.job(&s, id);
    assert_eq!(j["state"], "released");
    assert_eq!(
        (j["approver"].as_str(), j["releaser"].as_str()),
        (Some("alice"), Some("nina"))
    );

    // Fetched over the API by a reader of the group (nora): the same bytes
    // as the analysis run directly, confined, on the same input.
    let got = site.ts.dir.path().join("fetched.json");
    let o = site.client(
        &s,
        "nora",
        &[
            "results",
            "pathology/S-1",
            "--get",
            &format!("job-{id}/summary.json"),
            "-o",
            got.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got_csv = site.ts.dir.path().join("fetched.csv");
    let o = site.client(
        &s,
        "nora",
        &[
            "results",
            "pathology/S-1",
            "--get",
            &format!("job-{id}/table.csv"),
            "-o",
            got_csv.to_str().unwrap(),
        ],
    );
    assert!(o.status.success());
    drop(s);
    let (summary, table) = direct_run(&site, "S-1");
    assert_eq!(std::fs::read(&got).unwrap(), summary);
    assert_eq!(std::fs::read(&got_csv).unwrap(), table);
    assert!(String::from_utf8_lossy(&summary).contains("\"total\": 150"));

    // In the store: encrypted in the data group, with a provenance file the
    // service signed — checked by `tresor verify` through nina's mount.
    let (pse, pass) = site.user("nina");
    let m = site.ts.mount_as(pse, pass, "nina-mnt", &[]);
    let rec = m.path(&format!("pathology/S-2/analyses/job-{id}"));
    let prov: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rec.join("provenance.json")).unwrap()).unwrap();
    assert_eq!(prov["submitter"], "rob");
    assert_eq!(prov["approver"], "alice");
    assert_eq!(prov["releaser"], "nina");
    assert_eq!(prov["input"]["path"], "S-2/values.csv");
    assert_eq!(prov["bundle_sha256"], j["bundle_sha256"]);
    let v = tresor()
        .arg("verify")
        .arg(rec.join("provenance.json"))
        .arg("--pse")
        .arg(pse)
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    m.unmount();
    let all = util::all_store_bytes(&site.ts.store);
    assert!(
        !all.windows(b"\"total\"".len()).any(|w| w == b"\"total\""),
        "plaintext result in the store"
    );

    let o = site.audit_verify(&site.state.join("audit.log"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn outputs_that_fail_the_disclosure_rule_cannot_be_released() {
    if !available() {
        return;
    }
    let site = Site::new();
    let s = site.serve(&[]);
    // S-3's total is 3: a table cell below 10.
    let id = site.submit(&s, "rob", &["S-3/values.csv"]);
    site.wait_state(&s, id, &["profiled"]);
    assert!(site
        .client(&s, "alice", &["approve", &id.to_string()])
        .status
        .success());
    let j = site.wait_state(&s, id, &["staged", "failed"]);
    assert_eq!(j["checks"]["ok"], false, "{j:#}");
    assert!(
        j["checks"]["problems"]
            .to_string()
            .contains("3 is below 10"),
        "{j:#}"
    );
    site.expect_refusal(
        &s,
        "nina",
        &["release", &id.to_string()],
        409,
        "automatic checks",
    );
    let o = site.client(
        &s,
        "nina",
        &["reject", &id.to_string(), "--reason", "small cells"],
    );
    assert!(o.status.success());
    assert_eq!(site.job(&s, id)["state"], "rejected");
}

// ---- hand-made requests ------------------------------------------------

struct Raw {
    status: u16,
    body: String,
}

fn http(url: &str, method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> Raw {
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Raw { status, body }
}

fn store_id(url: &str) -> String {
    let r = http(url, "GET", "/info", &[], b"");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    v["store_id"].as_str().unwrap().to_string()
}

fn open_pse(site: &Site, user: &str) -> tresor::pse::Pse {
    let (pse, pass) = site.user(user);
    let pw = std::fs::read_to_string(pass).unwrap();
    tresor::pse::open(&std::fs::read(pse).unwrap(), pw.trim_end().as_bytes()).unwrap()
}

fn signed_headers(
    pse: &tresor::pse::Pse,
    store: &str,
    method: &str,
    path: &str,
    body: &[u8],
    time: u64,
) -> Vec<(String, String)> {
    tresor::service::auth::headers(
        &pse.sign,
        &pse.public.user,
        store,
        (method, path, body),
        time,
    )
    .unwrap()
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn submission(inputs: &[&str], group: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "group": group,
        "inputs": inputs,
        "program": {"name": "analysis.py", "content": tresor::format::names::encode(ANALYSIS.as_bytes()), "interpreter": PYTHON},
        "args": ["{input}", "{out}"],
    }))
    .unwrap()
}

#[test]
fn unsigned_replayed_expired_forged_removed_and_wrong_role_requests_are_refused() {
    if !available() {
        return;
    }
    let site = Site::new();
    let s = site.serve(&["--max-body", "1M"]);
    let store = store_id(&s.url);
    let now = tresor::service::auth::now();
    let rob = open_pse(&site, "rob");

    let r = http(&s.url, "GET", "/jobs", &[], b"");
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("unsigned request"), "{}", r.body);

    // Signed once, sent twice: the second is a replay.
    let h = signed_headers(&rob, &store, "GET", "/jobs", b"", now);
    assert_eq!(http(&s.url, "GET", "/jobs", &h, b"").status, 200);
    let r = http(&s.url, "GET", "/jobs", &h, b"");
    assert_eq!(r.status, 401);
    assert!(r.body.contains("replayed"), "{}", r.body);

    let h = signed_headers(&rob, &store, "GET", "/jobs", b"", now - 3600);
    let r = http(&s.url, "GET", "/jobs", &h, b"");
    assert_eq!(r.status, 401);
    assert!(r.body.contains("expired"), "{}", r.body);

    // Signed for a GET, sent as a POST with a body: the signature fails.
    let h = signed_headers(&rob, &store, "GET", "/jobs", b"", now);
    let r = http(
        &s.url,
        "POST",
        "/jobs",
        &h,
        &submission(&["S-1/values.csv"], "pathology"),
    );
    assert_eq!(r.status, 401);
    assert!(r.body.contains("does not verify"), "{}", r.body);
    // rob's name, mallory's key.
    let mut forged = open_pse(&site, "rita");
    forged.public.user = "rob".into();
    let h = signed_headers(&forged, &store, "GET", "/jobs", b"", now);
    assert_eq!(http(&s.url, "GET", "/jobs", &h, b"").status, 401);

    // A nurse may read the group but holds no submit duty.
    let nora = open_pse(&site, "nora");
    let body = submission(&["S-1/values.csv"], "pathology");
    let h = signed_headers(&nora, &store, "POST", "/jobs", &body, now);
    let r = http(&s.url, "POST", "/jobs", &h, &body);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("may not submit"), "{}", r.body);

    // Bad submissions: each a clear 4xx.
    let bad: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "malformed submission"),
        (
            submission(&["S-9/values.csv"], "pathology"),
            404,
            "unknown sample",
        ),
        (
            submission(&["../store/tresor.json"], "pathology"),
            400,
            "inside the data group",
        ),
        (
            submission(&["S-1/../../x"], "pathology"),
            400,
            "inside the data group",
        ),
        (
            submission(&["/etc/passwd"], "pathology"),
            400,
            "inside the data group",
        ),
        (
            submission(&["S-1/values.csv"], "radiology"),
            404,
            "no data group",
        ),
        (vec![b' '; 2 << 20], 413, "larger than"),
    ];
    for (body, code, words) in bad {
        let h = signed_headers(&rob, &store, "POST", "/jobs", &body, now);
        let r = http(&s.url, "POST", "/jobs", &h, &body);
        assert_eq!(r.status, code, "{words}: {}", r.body);
        assert!(r.body.contains(words), "{words}: {}", r.body);
    }

    // Removed from the store: refused from the next request on.
    let carl = open_pse(&site, "carl");
    let h = signed_headers(&carl, &store, "GET", "/jobs", b"", now);
    assert_eq!(http(&s.url, "GET", "/jobs", &h, b"").status, 200);
    let store_s = site.ts.store.to_str().unwrap().to_string();
    assert!(site
        .ts
        .admin(&["user", "remove", &store_s, "carl"])
        .status
        .success());
    let h = signed_headers(&carl, &store, "GET", "/jobs", b"", now);
    let r = http(&s.url, "GET", "/jobs", &h, b"");
    assert_eq!(r.status, 403);
    assert!(r.body.contains("removed"), "{}", r.body);

    // None of it changed anything: no job exists.
    let h = signed_headers(&rob, &store, "GET", "/jobs", b"", now);
    let r = http(&s.url, "GET", "/jobs", &h, b"");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["jobs"].as_array().unwrap().len(), 0, "{v:#}");
}

#[test]
fn a_bundle_changed_after_submission_or_approval_is_never_run() {
    if !available() {
        return;
    }
    let site = Site::new();
    let s = site.serve(&[]);
    let store = store_id(&s.url);
    let id = site.submit(&s, "rob", &["S-1/values.csv"]);
    let j = site.wait_state(&s, id, &["profiled"]);
    // An approval naming other hashes than the job's (what the approver
    // did not review) is refused.
    let alice = open_pse(&site, "alice");
    let body = serde_json::to_vec(&serde_json::json!({
        "bundle_sha256": "00".repeat(32),
        "profile_sha256": j["profile_sha256"], "policy_sha256": j["policy_sha256"],
    }))
    .unwrap();
    let path = format!("/jobs/{id}/approve");
    let h = signed_headers(
        &alice,
        &store,
        "POST",
        &path,
        &body,
        tresor::service::auth::now(),
    );
    let r = http(&s.url, "POST", &path, &h, &body);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("approve what you reviewed"), "{}", r.body);
    // Someone with access to the service's disk swaps the program after
    // review; the approval of the reviewed hashes then does not run it.
    let prog = site.state.join(format!("jobs/{id}/bundle/analysis.py"));
    std::fs::write(&prog, "import os\nos.system('id')\n").unwrap();
    assert!(site
        .client(&s, "alice", &["approve", &id.to_string()])
        .status
        .success());
    let j = site.wait_state(&s, id, &["failed", "staged"]);
    assert_eq!(j["state"], "failed", "{j:#}");
    assert!(j["reason"].as_str().unwrap().contains("changed"), "{j:#}");
}

fn processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Pid, parent, state, what it waits in and command line of `pid`, for a
/// failure message.
fn describe(pid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map_or("?".to_string(), |v| v.trim().to_string())
    };
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    format!(
        "pid {pid} ppid {} state {} tracer {} wchan {wchan}: {}",
        field("PPid:"),
        field("State:"),
        field("TracerPid:"),
        String::from_utf8_lossy(&cmd).replace('\0', " ")
    )
}

/// SIGKILL to the service `s`, then waits (hang guard 30 s) until no
/// process names `needle`; a survivor fails the test with its state.
fn kill_and_outlive(mut s: Serve, needle: &str, what: &str) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = s.child.wait();
    let start = Instant::now();
    loop {
        let left = processes_mentioning(needle);
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} outlived the killed service:\n{}",
            left.iter()
                .map(|p| describe(*p))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100)); // poll of /proc, hang-guarded
    }
}

#[test]
fn a_service_killed_during_a_run_comes_back_consistent() {
    if !available() {
        return;
    }
    let site = Site::new();
    // S-2's run sleeps until killed.
    let m = site.ts.mount();
    std::fs::write(m.path("pathology/S-2/slow"), "").unwrap();
    m.unmount();
    let s = site.serve(&[]);
    let id = site.submit(&s, "rob", &["S-1/values.csv", "S-2/values.csv"]);
    site.wait_state(&s, id, &["profiled"]);
    assert!(site
        .client(&s, "alice", &["approve", &id.to_string()])
        .status
        .success());
    // Wait (hang guard 120 s) until the confined run on S-2 is under way.
    // The needle holds this site's mount: other tests run S-2 too.
    let needle = format!(
        "{}/pathology/S-2/values.csv",
        site.state.join("mnt").display()
    );
    let start = Instant::now();
    while processes_mentioning(&needle).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the run on S-2 never started"
        );
        std::thread::sleep(Duration::from_millis(100)); // poll of /proc, hang-guarded
    }
    // The run dies with the service.
    kill_and_outlive(s, &needle, "the run");
    // Nothing of the job reached the store, not even S-1's finished half.
    let m = site.ts.mount();
    for smp in ["S-1", "S-2"] {
        let a = m.path(&format!("pathology/{smp}/analyses"));
        let n = std::fs::read_dir(&a).map(|d| d.count()).unwrap_or(0);
        assert_eq!(n, 0, "{smp} has analyses after the kill");
    }
    // The next run of S-2 finishes.
    std::fs::remove_file(m.path("pathology/S-2/slow")).unwrap();
    m.unmount();

    let s = site.serve(&[]);
    let j = site.wait_state(&s, id, &["staged", "failed"]);
    assert_eq!(j["state"], "staged", "{j:#}");
    assert_eq!(j["attempts"], 2, "{j:#}");
    assert!(site
        .client(&s, "nina", &["release", &id.to_string()])
        .status
        .success());
    let v = site.client(&s, "nora", &["results", "pathology/S-2"]);
    let v: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(v["analyses"][0]["analysis"], format!("job-{id}"), "{v:#}");
    drop(s);
    let log = std::fs::read_to_string(site.state.join("audit.log")).unwrap();
    let requeued = log.lines().any(|l| {
        let e: serde_json::Value = serde_json::from_str(l).unwrap();
        e["detail"]["from"] == "running" && e["detail"]["to"] == "queued"
    });
    assert!(requeued, "no re-queue in the audit trail:\n{log}");
    let o = site.audit_verify(&site.state.join("audit.log"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_service_killed_while_profiling_leaves_no_analysis_running() {
    if !available() {
        return;
    }
    let site = Site::new();
    // The job is profiled on S-1, which now sleeps until killed.
    let m = site.ts.mount();
    std::fs::write(m.path("pathology/S-1/slow"), "").unwrap();
    m.unmount();
    let s = site.serve(&[]);
    let id = site.submit(&s, "rob", &["S-1/values.csv"]);
    let needle = format!(
        "{}/pathology/S-1/values.csv",
        site.state.join("mnt").display()
    );
    // The analysis itself (python3 SCRIPT INPUT OUT) is under way, not
    // only its `tresor profile` (hang guard 120 s).
    let analysis = |pids: &[i32]| {
        pids.iter().any(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.starts_with(PYTHON.as_bytes()))
        })
    };
    let start = Instant::now();
    while !analysis(&processes_mentioning(&needle)) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the profiling run on S-1 never started"
        );
        std::thread::sleep(Duration::from_millis(100)); // poll of /proc, hang-guarded
    }
    assert_eq!(site.job(&s, id)["state"], "profiling");
    // The analysis dies with the service, long before its --timeout.
    kill_and_outlive(s, &needle, "the profiled analysis");
    // Profiled again by the next service, to the end.
    let m = site.ts.mount();
    std::fs::remove_file(m.path("pathology/S-1/slow")).unwrap();
    m.unmount();
    let s = site.serve(&[]);
    let j = site.wait_state(&s, id, &["profiled", "failed"]);
    assert_eq!(j["state"], "profiled", "{j:#}");
}

#[test]
fn a_hundred_concurrent_submissions_are_all_kept() {
    if !available() {
        return;
    }
    let site = Site::new();
    let s = site.serve(&[]);
    let store = store_id(&s.url);
    let rob = std::sync::Arc::new(open_pse(&site, "rob"));
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(100));
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let (rob, store, url, barrier) =
                (rob.clone(), store.clone(), s.url.clone(), barrier.clone());
            std::thread::spawn(move || {
                let input = ["S-1/values.csv", "S-2/values.csv", "S-3/values.csv"][i % 3];
                let body = submission(&[input], "pathology");
                let h = signed_headers(
                    &rob,
                    &store,
                    "POST",
                    "/jobs",
                    &body,
                    tresor::service::auth::now(),
                );
                barrier.wait();
                let r = http(&url, "POST", "/jobs", &h, &body);
                assert_eq!(r.status, 201, "{}", r.body);
                serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["id"]
                    .as_i64()
                    .unwrap()
            })
        })
        .collect();
    let mut ids: Vec<i64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids, (1..=100).collect::<Vec<_>>());
    let h = signed_headers(
        &rob,
        &store,
        "GET",
        "/jobs",
        b"",
        tresor::service::auth::now(),
    );
    let v: serde_json::Value =
        serde_json::from_str(&http(&s.url, "GET", "/jobs", &h, b"").body).unwrap();
    assert_eq!(v["jobs"].as_array().unwrap().len(), 100);
    drop(s);
    let log = std::fs::read_to_string(site.state.join("audit.log")).unwrap();
    assert_eq!(log.matches("\"to\":\"submitted\"").count(), 100);
    for id in 1..=100 {
        assert!(
            site.state
                .join(format!("jobs/{id}/bundle/analysis.py"))
                .is_file(),
            "job {id} lost its bundle"
        );
    }
}

#[test]
fn the_audit_trail_names_a_removed_a_changed_and_two_swapped_entries() {
    if !available() {
        return;
    }
    let site = Site::new();
    let mut s = site.serve(&[]);
    for _ in 0..3 {
        let o = site.client(&s, "rob", &["jobs"]);
        assert!(o.status.success());
    }
    // SIGTERM: the service signs the head and stops.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(s.child.wait().unwrap().success());
    let log = std::fs::read_to_string(site.state.join("audit.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 6, "{log}");
    assert!(
        lines.last().unwrap().contains("\"kind\":\"head\""),
        "no signed head at shutdown: {log}"
    );
    let verify = |text: String| {
        let p = site.ts.dir.path().join("tampered.log");
        std::fs::write(&p, text).unwrap();
        site.audit_verify(&p)
    };
    let join = |ls: &[&str]| ls.iter().map(|l| format!("{l}\n")).collect::<String>();
    let o = verify(log.clone());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let mut removed = lines.clone();
    removed.remove(2);
    let changed_line = lines[3].replace("\"status\":200", "\"status\":403");
    assert_ne!(changed_line, lines[3]);
    let mut changed = lines.clone();
    changed[3] = &changed_line;
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    for (text, want) in [
        (join(&removed), "entry 3 was removed"),
        (join(&changed), "entry 4 was changed"),
        (join(&swapped), "entries 2 and 3 were swapped"),
    ] {
        let o = verify(text);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{want}: {err}");
        assert!(err.contains(want), "want {want:?}: {err}");
    }
    // Rewriting the whole chain after a change needs the service's key:
    // the head's signature no longer holds.
    let mut rechained = Vec::new();
    let mut prev = tresor::service::audit::GENESIS.to_string();
    for (i, l) in lines.iter().enumerate() {
        let mut e: serde_json::Value = serde_json::from_str(l).unwrap();
        if i == 3 {
            e["detail"]["status"] = 403.into();
        }
        e["prev"] = prev.clone().into();
        let s = serde_json::to_string(&e).unwrap();
        prev = hex::encode(tresor::crypto::sha256(s.as_bytes()));
        rechained.push(s);
    }
    let o = verify(rechained.iter().map(|l| format!("{l}\n")).collect());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("signed head") && err.contains("does not verify"),
        "{err}"
    );
}

#[test]
fn a_service_killed_while_releasing_completes_the_release_on_restart() {
    if !available() {
        return;
    }
    let site = Site::new();
    // A debug build aborts just before moving S-2's result into place.
    let mut s = site.serve_env(&[], &[("TRESOR_FAULT_ABORT_BEFORE_RELEASE_RENAME", "2")]);
    let id = site.submit(&s, "rob", &["S-1/values.csv", "S-2/values.csv"]);
    site.wait_state(&s, id, &["profiled"]);
    assert!(site
        .client(&s, "alice", &["approve", &id.to_string()])
        .status
        .success());
    site.wait_state(&s, id, &["staged"]);
    let o = site.client(&s, "nina", &["release", &id.to_string()]);
    assert!(
        !o.status.success(),
        "the release should have died with the service"
    );
    let st = s.child.wait().unwrap();
    assert!(!st.success(), "the service did not crash: {st}");
    drop(s);
    // S-1's result is whole; S-2's is only a hidden partial directory:
    // no reader sees half a result.
    let m = site.ts.mount();
    let a1 = m.path("pathology/S-1/analyses");
    let a2 = m.path("pathology/S-2/analyses");
    assert!(a1.join(format!("job-{id}/provenance.json.sig")).is_file());
    assert!(!a2.join(format!("job-{id}")).exists());
    assert!(a2.join(format!(".job-{id}.partial")).exists());
    m.unmount();

    let s = site.serve(&[]);
    let j = site.job(&s, id);
    assert_eq!(j["state"], "released", "{j:#}");
    let v = site.client(&s, "nora", &["results", "pathology/S-2"]);
    let v: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(v["analyses"].as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(v["analyses"][0]["analysis"], format!("job-{id}"), "{v:#}");
    drop(s);
    let m = site.ts.mount();
    let names: Vec<String> = std::fs::read_dir(m.path("pathology/S-2/analyses"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        names,
        vec![format!("job-{id}")],
        "a partial directory was left"
    );
    let (nina_pse, _) = site.user("nina");
    let v = tresor()
        .arg("verify")
        .arg(m.path(&format!("pathology/S-2/analyses/job-{id}/provenance.json")))
        .arg("--pse")
        .arg(nina_pse)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    m.unmount();
}

/// The whole flow with the service, its clients and its runs as an
/// unprivileged user (nobody): the service mounts through fusermount3 and
/// confines with user namespaces. As in
/// `cli::an_unprivileged_mount_through_fusermount3_is_fuse_tresor`, a
/// private mount namespace gives that user a /dev/fuse it may open.
#[test]
fn the_service_runs_as_an_unprivileged_user() {
    if !available() {
        return;
    }
    let nobody = util::AsNobody::new(&[("analysis.py", ANALYSIS.as_bytes())]);
    let w = &nobody.work;
    let user_script = format!(
        r#"set -e; cd {w}; T={t}; A="--pse admin.pse --passphrase-file pass"
        $T init st $A --kdf-memory-mib 8 >/dev/null 2>&1
        $T datagroup add st pathology $A >/dev/null
        for r in researchers supervisors checkers service; do $T role add st $r $A >/dev/null; done
        $T grant st researchers pathology r $A >/dev/null
        $T grant st checkers pathology r $A >/dev/null
        $T grant st service pathology w $A >/dev/null
        $T duty st researchers submit $A >/dev/null
        $T duty st supervisors approve $A >/dev/null
        $T duty st checkers release $A >/dev/null
        for u in rob:researchers alice:supervisors nina:checkers svc:service; do
            $T user add st ${{u%%:*}} --role ${{u##*:}} --pse-out ${{u%%:*}}.pse --user-passphrase-file pass $A >/dev/null 2>&1
        done
        mkdir m; $T mount st m $A --log {w}/mount.log >/dev/null
        mkdir -p m/pathology/S-1; printf 'item,n\na,120\nb,30\n' > m/pathology/S-1/values.csv
        $T umount m >/dev/null
        $T serve st --pse svc.pse --passphrase-file pass --listen 127.0.0.1:0 --workers 1 --state state >serve.out 2>serve.log &
        S=$!
        for i in $(seq 600); do grep -q '^serving' serve.out && break; sleep 0.05; done
        U=$(grep -o 'http://[0-9.:]*' serve.out)
        C="--service $U --passphrase-file pass"
        $T submit $C --pse rob.pse --group pathology --input S-1/values.csv --interpreter /usr/bin/python3 -- {w}/analysis.py '{{input}}' '{{out}}' >/dev/null
        $T jobs $C --pse alice.pse 1 --wait --json | grep -q '"state": "profiled"'
        $T approve $C --pse alice.pse 1 >/dev/null
        $T jobs $C --pse alice.pse 1 --wait --json | grep -q '"state": "staged"'
        $T release $C --pse nina.pse 1
        $T results $C --pse nina.pse pathology/S-1 --get job-1/summary.json -o got.json >/dev/null
        echo "uid $(id -u)"; cat got.json; echo
        grep " {w}/state/mnt " /proc/self/mountinfo
        kill $S; wait $S"#,
        w = w.display(),
        t = env!("CARGO_BIN_EXE_tresor"),
    );
    let o = nobody.run(&user_script);
    let out = String::from_utf8_lossy(&o.stdout);
    let log = std::fs::read_to_string(w.join("serve.log")).unwrap_or_default();
    assert!(
        o.status.success(),
        "{out}\n{}\nserve.log:\n{log}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("uid 65534"), "{out}");
    assert!(
        out.contains("released into pathology/S-1/analyses/job-1"),
        "{out}"
    );
    assert!(out.contains("\"total\": 150"), "{out}");
    // The service's own mount was the unprivileged user's.
    let mnt_line = out
        .lines()
        .find(|l| l.contains("/state/mnt "))
        .unwrap_or("");
    assert!(
        mnt_line.contains("user_id=65534"),
        "not the user's mount: {out}"
    );
}

/// Symbolic links a writer of the group plants — to the host's /etc, to a
/// host directory holding a fake analysis, or over an input after review —
/// never make the service (root here) read, list, run on or serve a file
/// outside the data group.
#[test]
fn links_planted_in_the_group_never_lead_the_service_outside_it() {
    if !available() {
        return;
    }
    let site = Site::new();
    let outside = site.ts.subdir("outside");
    std::fs::create_dir_all(outside.join("job-9")).unwrap();
    std::fs::write(outside.join("job-9/secret.txt"), "host secret").unwrap();
    let m = site.ts.mount();
    std::os::unix::fs::symlink("/etc", m.path("pathology/S-9")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", m.path("pathology/S-2/link.csv")).unwrap();
    std::os::unix::fs::symlink(&outside, m.path("pathology/S-1/analyses")).unwrap();
    m.unmount();
    let s = site.serve(&[]);
    let submit = |input: &str| {
        let args = [
            "submit",
            "--group",
            "pathology",
            "--interpreter",
            PYTHON,
            "--input",
            input,
            "--",
            site.script.to_str().unwrap(),
            "{input}",
            "{out}",
        ];
        site.client(&s, "rob", &args)
    };
    for (input, words) in [
        ("S-9/passwd", "leads outside the data group"),
        ("S-2/link.csv", "not a regular file"),
    ] {
        let o = submit(input);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(words), "{input}: {err}");
    }
    site.expect_refusal(
        &s,
        "nora",
        &["results", "pathology/S-9"],
        400,
        "leads outside",
    );
    // The fake analysis behind S-1/analyses is neither listed nor served.
    let o = site.client(&s, "nora", &["results", "pathology/S-1"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["analyses"].as_array().unwrap().len(), 0, "{v:#}");
    let got = site.ts.dir.path().join("secret.txt");
    let o = site.client(
        &s,
        "nora",
        &[
            "results",
            "pathology/S-1",
            "--get",
            "job-9/secret.txt",
            "-o",
            got.to_str().unwrap(),
        ],
    );
    assert!(
        !o.status.success() && !got.exists(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // An input swapped for a link after it was profiled is not run.
    let id = site.submit(&s, "rob", &["S-3/values.csv"]);
    site.wait_state(&s, id, &["profiled"]);
    let m = site.ts.mount();
    std::fs::remove_file(m.path("pathology/S-3/values.csv")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", m.path("pathology/S-3/values.csv")).unwrap();
    m.unmount();
    assert!(site
        .client(&s, "alice", &["approve", &id.to_string()])
        .status
        .success());
    let j = site.wait_state(&s, id, &["failed", "staged"]);
    assert_eq!(j["state"], "failed", "{j:#}");
    // The service's check ("leads outside"), or — while its mount still
    // caches the old entry for up to a second — the driver's refusal to
    // follow a link where a file was (ELOOP): either way nothing ran.
    let why = j["reason"].as_str().unwrap();
    assert!(
        why.contains("leads outside") || why.contains("symbolic links"),
        "{j:#}"
    );
}

/// A hostile program is profiled before anyone approves it, in a view of
/// the host (read-only). What it reads there must not come back to its
/// submitter: not through its error output, not through the paths its
/// profile records.
#[test]
fn a_program_profiled_before_approval_cannot_send_its_submitter_host_secrets() {
    if !available() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let site = Site::new();
    // Outside /tmp (the profiling run gets a private one), as a service's
    // state directory or the host's own secrets are.
    let host = tempfile::Builder::new()
        .prefix("tresor-host-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let secret_file = host.path().join("host-secret");
    std::fs::write(&secret_file, "SECRET-4711").unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let leak = site.ts.dir.path().join("leak.py");
    std::fs::write(
        &leak,
        format!(
            "import os, sys\ns = open({p:?}).read()\ntry:\n    open('/nonexistent/' + s)\nexcept OSError:\n    pass\nsys.stderr.write('leaked: ' + s + chr(10))\nsys.exit(int(sys.argv[1]))\n",
            p = secret_file.to_str().unwrap()
        ),
    )
    .unwrap();
    let s = site.serve(&[]);
    let mut ids = Vec::new();
    for code in ["1", "0"] {
        let args = [
            "submit",
            "--group",
            "pathology",
            "--interpreter",
            PYTHON,
            "--input",
            "S-1/values.csv",
            "--",
            leak.to_str().unwrap(),
            code,
        ];
        let o = site.client(&s, "rob", &args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        ids.push(text.split_whitespace().nth(1).unwrap().to_string());
    }
    let failed = site.wait_state(&s, ids[0].parse().unwrap(), &["failed", "profiled"]);
    // The program did read the secret (the service's log has what it printed):
    // the channel existed, and is cut below.
    let log = std::fs::read_to_string(site.ts.dir.path().join("serve.log")).unwrap();
    assert!(
        log.contains("leaked: SECRET-4711"),
        "the secret was not even read:\n{log}"
    );
    let profiled = site.wait_state(&s, ids[1].parse().unwrap(), &["failed", "profiled"]);
    assert_eq!(failed["state"], "failed", "{failed:#}");
    assert_eq!(profiled["state"], "profiled", "{profiled:#}");
    // The submitter's view of both jobs holds no trace of the secret.
    for id in &ids {
        let o = site.client(&s, "rob", &["jobs", id, "--json"]);
        assert!(o.status.success());
        assert!(
            !String::from_utf8_lossy(&o.stdout).contains("SECRET-4711"),
            "job {id} leaks"
        );
    }
    // The profile is the reviewer's, not the submitter's — even one who
    // holds the approve duty.
    site.expect_refusal(
        &s,
        "rob",
        &["jobs", &ids[1], "--review"],
        403,
        "only an approver",
    );
    let review = site.client(&s, "alice", &["jobs", &ids[1], "--review"]);
    assert!(
        review.status.success(),
        "{}",
        String::from_utf8_lossy(&review.stderr)
    );
}
