//! First run and daily use (issue 15): the mount's type, a dead driver's
//! mount named everywhere, clean logs, exit statuses, JSON output, fstab,
//! completions and man pages, `--passphrase-command`.

use crate::util::{
    fuse_available, isolate, ok, require, require_root, tresor, AsNobody, TestStore,
};
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// The type of the mount on `mnt` in /proc/self/mounts and in mountinfo.
fn mount_types(mnt: &Path) -> (Option<String>, Option<String>) {
    let m = mnt.to_str().unwrap();
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let a = mounts.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(1) == Some(&m)).then(|| f[2].to_string())
    });
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let b = info.lines().rev().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (pre.split(' ').nth(4) == Some(m)).then(|| post.split(' ').next().unwrap().to_string())
    });
    (a, b)
}

#[test]
fn the_mount_is_fuse_tresor_in_mounts_and_mountinfo() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let m = ts.mount();
    let (mounts, info) = mount_types(&m.mnt);
    assert_eq!(mounts.as_deref(), Some("fuse.tresor"), "/proc/self/mounts");
    assert_eq!(info.as_deref(), Some("fuse.tresor"), "mountinfo");
    m.unmount();
}

/// As an unprivileged user fuser mounts through fusermount3, which must
/// record the subtype too. /dev/fuse is 0600 on this machine, so the test
/// gives the user a 0666 node of its own in a private mount namespace (a
/// child process; the test's own namespace is untouched).
#[test]
fn an_unprivileged_mount_through_fusermount3_is_fuse_tresor() {
    if !fuse_available() || !require_root("become another user with setpriv") {
        return;
    }
    let nobody = AsNobody::new(&[]);
    let work = &nobody.work;
    let user_script = format!(
        "{start}grep \" {w}/m \" /proc/self/mounts
        echo data > m/g/f; cat m/g/f
        $T umount m",
        start = nobody.mounted_store(),
        w = work.display()
    );
    let o = nobody.run(&user_script);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out.lines().next().unwrap_or("");
    assert_eq!(line.split(' ').nth(2), Some("fuse.tresor"), "{out}");
    assert!(
        line.contains("user_id=65534"),
        "not the user's mount: {out}"
    );
    assert!(out.contains("data"), "{out}");
}

/// A background mount of `ts` at `mnt`; returns the driver's pid.
fn mount_bg(ts: &TestStore, mnt: &Path, extra: &[&str]) -> u32 {
    ok(tresor()
        .arg("mount")
        .arg(&ts.store)
        .arg(mnt)
        .arg("--pse")
        .arg(&ts.pse)
        .arg("--passphrase-file")
        .arg(&ts.pass)
        .args(extra));
    let o = ok(tresor().arg("status").arg(mnt).arg("--json"));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["pid"].as_u64().unwrap() as u32
}

fn wait_gone(pid: u32) {
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        // A hang guard, not a timing assertion.
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "pid {pid} lives on"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_drivers_mount_is_named_dead_everywhere_and_umount_clears_it() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let mnt = ts.subdir("m");
    let log = ts.dir.path().join("m.log");
    let log_arg = log.to_str().unwrap();
    let pid = mount_bg(&ts, &mnt, &["--log", log_arg]);
    fs::write(mnt.join("g/f"), b"kept").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_gone(pid);
    // The kernel keeps the mount, with the type that names it.
    assert_eq!(mount_types(&mnt).0.as_deref(), Some("fuse.tresor"));
    let m = mnt.display().to_string();
    let dead = format!("tresor at {m} is dead");
    let fix = format!("run `tresor umount {m}`");
    let pse = ts.pse.to_str().unwrap();
    let pass = ts.pass.to_str().unwrap();
    let store = ts.store.to_str().unwrap();
    for args in [
        vec!["status", &m],
        vec!["status", &m, "--json"],
        vec!["lock", &m],
        vec!["login", &m, "--pse", pse, "--passphrase-file", pass],
        vec!["mount", store, &m, "--pse", pse, "--passphrase-file", pass],
    ] {
        let o = tresor().args(&args).output().unwrap();
        assert_eq!(code(&o), 30, "{args:?}: {}", text(&o));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(&dead) && e.contains(&fix), "{args:?}: {e}");
    }
    let o = ok(tresor().arg("umount").arg(&mnt));
    assert!(
        text(&o).contains("removed the dead tresor mount"),
        "{}",
        text(&o)
    );
    assert_eq!(mount_types(&mnt).0, None, "still mounted");
    // Mounting works again, and the data written before the kill is there.
    mount_bg(&ts, &mnt, &["--log", log_arg]);
    assert_eq!(fs::read(mnt.join("g/f")).unwrap(), b"kept");
    ok(tresor().arg("umount").arg(&mnt));
}

#[test]
fn logs_in_a_file_carry_no_colour_and_a_normal_unmount_no_warning() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let mnt = ts.subdir("m");
    let log = ts.dir.path().join("m.log");
    // -v: the driver logs its info lines too, so the file is not empty.
    mount_bg(&ts, &mnt, &["-v", "--log", log.to_str().unwrap()]);
    fs::write(mnt.join("g/f"), b"x").unwrap();
    ok(tresor().arg("umount").arg(&mnt));
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("INFO"), "no log lines to check: {text:?}");
    assert!(
        !text.contains('\x1b'),
        "colour escapes in the log file: {text:?}"
    );
    assert!(
        !text.contains("WARN"),
        "a warning on a normal unmount: {text}"
    );
    assert!(!text.contains("Failed to umount"), "{text}");
}

/// `tresor -v mount -f` with stderr on a pipe, or on a terminal (`script`
/// gives it one) with and without NO_COLOR; the driver's info line at the
/// unmount is what is looked at. Returns what it wrote.
fn foreground_log(ts: &TestStore, terminal: bool, no_color: Option<&str>) -> String {
    let mnt = ts.subdir(&format!("fg-{terminal}-{}", no_color.is_some()));
    let out = ts.dir.path().join("fg.out");
    let cmd = format!(
        "{} -v mount {} {} --pse {} --passphrase-file {} -f",
        env!("CARGO_BIN_EXE_tresor"),
        ts.store.display(),
        mnt.display(),
        ts.pse.display(),
        ts.pass.display()
    );
    let mut c = if terminal {
        let mut c = Command::new("script");
        c.args(["-q", "-e", "-f", "-c", &cmd, "/dev/null"]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &format!("exec {cmd} 2>&1")]);
        c
    };
    isolate(&mut c);
    c.env_remove("NO_COLOR");
    if let Some(v) = no_color {
        c.env("NO_COLOR", v);
    }
    let mut child = c
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while mount_types(&mnt).0.is_none() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            fs::read_to_string(&out).unwrap()
        );
        // A hang guard, not a timing assertion.
        assert!(start.elapsed() < Duration::from_secs(30), "no mount");
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(tresor().arg("umount").arg(&mnt));
    assert!(child.wait().unwrap().success());
    fs::read_to_string(&out).unwrap()
}

#[test]
fn colour_only_on_a_terminal_without_no_color() {
    if !fuse_available() {
        return;
    }
    if !require(
        Command::new("script")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success()),
        "script (util-linux)",
    ) {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let piped = foreground_log(&ts, false, None);
    assert!(piped.contains("unmounted by command"), "{piped}");
    assert!(!piped.contains('\x1b'), "escapes on a pipe: {piped:?}");
    // The control: on a terminal the same line is coloured.
    let tty = foreground_log(&ts, true, None);
    assert!(tty.contains("unmounted by command"), "{tty}");
    assert!(tty.contains("\x1b["), "no colour on a terminal: {tty:?}");
    let no_color = foreground_log(&ts, true, Some("1"));
    assert!(no_color.contains("unmounted by command"), "{no_color}");
    assert!(!no_color.contains('\x1b'), "NO_COLOR ignored: {no_color:?}");
}

#[test]
fn quiet_keeps_warnings_out_and_verbose_lets_info_in() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    // A stale control socket is a warning at the next mount.
    let mnt = ts.subdir("m");
    let sock = crate::util::control_socket(&mnt.canonicalize().unwrap());
    fs::create_dir_all(sock.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let mount = |flag: &str| {
        let o = ok(tresor()
            .arg(flag)
            .arg("mount")
            .arg(&ts.store)
            .arg(&mnt)
            .arg("--pse")
            .arg(&ts.pse)
            .arg("--passphrase-file")
            .arg(&ts.pass)
            .arg("--log")
            .arg(ts.dir.path().join("q.log")));
        ok(tresor().arg("umount").arg(&mnt));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let q = mount("-q");
    assert!(!q.contains("stale control socket"), "-q: {q}");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let v = mount("-v");
    assert!(
        v.contains("WARN") && v.contains("stale control socket"),
        "-v: {v}"
    );
}

#[test]
fn a_missing_key_file_is_a_sentence_not_a_log_line() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g", "h"]);
    let key = ts.store.join("keys/g.json");
    fs::remove_file(&key).unwrap();
    let mnt = ts.subdir("m");
    let o = ok(tresor()
        .arg("mount")
        .arg(&ts.store)
        .arg(&mnt)
        .arg("--pse")
        .arg(&ts.pse)
        .arg("--passphrase-file")
        .arg(&ts.pass)
        .arg("--log")
        .arg(ts.dir.path().join("m.log")));
    let e = String::from_utf8_lossy(&o.stderr);
    let want = format!(
        "tresor: warning: data group g is locked: its key file {} is missing; restore it from a backup of the store",
        fs::canonicalize(&ts.store).unwrap().join("keys/g.json").display()
    );
    assert!(e.contains(&want), "{e}");
    assert!(
        !e.contains("ERROR") && !e.contains('\x1b'),
        "a log line: {e}"
    );
    // The other group is served.
    fs::write(mnt.join("h/f"), b"x").unwrap();
    ok(tresor().arg("umount").arg(&mnt));
}

/// One row of the exit-status table: the same failure in every command
/// that can meet it gives the same status (docs/CLI.md).
/// Each run failed with `want`, and says so in one sentence on stderr:
/// `tresor: …`, one line, no log line (level, timestamp, colour), no
/// panic, no Rust debug output.
fn expect_status(want: i32, what: &str, runs: Vec<(String, Output)>) {
    for (cmd, o) in runs {
        assert_eq!(code(&o), want, "{what}: `tresor {cmd}` → {}", text(&o));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            e.starts_with("tresor: ") && e.trim_end().lines().count() == 1,
            "{what}: `tresor {cmd}` says {e:?}, not a sentence"
        );
        for bad in [
            "\x1b[",
            "panicked",
            " ERROR ",
            " WARN ",
            "Error {",
            "Os {",
            "RUST_BACKTRACE",
        ] {
            assert!(!e.contains(bad), "{what}: `tresor {cmd}` says {e:?}");
        }
    }
}

/// Status 1, "any other failure", for the mistakes a new user makes first:
/// each a sentence naming the file or directory and what to do.
#[test]
fn a_new_users_mistakes_are_sentences() {
    let ts = TestStore::new(&["g"]);
    let dir = ts.dir.path();
    let s = ts.store.to_str().unwrap();
    let run = |args: &[&str]| -> (String, Output) {
        (
            args.join(" "),
            tresor().args(args).current_dir(dir).output().unwrap(),
        )
    };
    let pse = ts.pse.to_str().unwrap();
    let pass = ts.pass.to_str().unwrap();
    fs::create_dir(dir.join("full")).unwrap();
    fs::write(dir.join("full/x"), "x").unwrap();
    let runs = vec![
        run(&[
            "mount",
            s,
            "no-such-dir",
            "--pse",
            pse,
            "--passphrase-file",
            pass,
        ]),
        run(&["mount", s, "full", "--pse", pse, "--passphrase-file", pass]),
        run(&[
            "mount",
            s,
            "full",
            "--pse",
            "no.pse",
            "--passphrase-file",
            pass,
        ]),
        run(&[
            "mount",
            s,
            "full",
            "--pse",
            pse,
            "--passphrase-file",
            "no-such-file",
        ]),
        run(&["init", "new-store", "--pse", pse, "--passphrase-file", pass]),
        run(&["verify", "no-such-document"]),
        run(&[
            "profile",
            "--out",
            "p.json",
            "--data",
            "no-such-dir",
            "--",
            "true",
        ]),
        run(&["profile", "show", "no-such-profile.json"]),
    ];
    for (cmd, o) in &runs {
        let e = String::from_utf8_lossy(&o.stderr);
        let names = [
            "no-such-dir",
            "full",
            "no.pse",
            "no-such-file",
            "admin.pse",
            "no-such-document",
            "no-such-profile.json",
        ];
        assert!(
            names.iter().any(|n| e.contains(n)),
            "`tresor {cmd}` does not name what is wrong: {e:?}"
        );
    }
    expect_status(1, "a new user's mistake", runs);
    assert!(
        !dir.join("new-store").exists(),
        "a refused init left a store behind"
    );
}

#[test]
fn the_same_failure_has_the_same_status_in_every_command() {
    let ts = TestStore::new(&["g"]);
    admin_ok(&ts, &["role", "add", ts.store.to_str().unwrap(), "r"]);
    admin_ok(&ts, &["grant", ts.store.to_str().unwrap(), "r", "g", "w"]);
    let (upse, upass) = ts.add_user("u", "r");
    let doc = ts.dir.path().join("doc.txt");
    fs::write(&doc, "x").unwrap();
    let mnt = ts.subdir("m");
    let run = |args: &[&str], pse: &Path, pass: &Path| -> (String, Output) {
        let mut c = tresor();
        c.args(args);
        if !pse.as_os_str().is_empty() {
            c.arg("--pse").arg(pse);
        }
        if !pass.as_os_str().is_empty() {
            c.arg("--passphrase-file").arg(pass);
        }
        (args.join(" "), c.output().unwrap())
    };
    let none = Path::new("");
    let (a, ap) = (ts.pse.as_path(), ts.pass.as_path());
    let d = doc.to_str().unwrap();
    let m = mnt.to_str().unwrap();

    // 9: not a store.
    let no = ts.dir.path().join("no-store");
    let n = no.to_str().unwrap();
    expect_status(
        9,
        "missing store",
        vec![
            run(&["mount", n, m], a, ap),
            run(&["matrix", n], none, none),
            run(&["matrix", n, "--json"], none, none),
            run(&["user", "list", n], none, none),
            run(&["datagroup", "list", n], none, none),
            run(&["datagroup", "add", n, "x"], a, ap),
            run(&["role", "add", n, "x"], a, ap),
            run(&["grant", n, "r", "g", "r"], a, ap),
            run(&["user", "remove", n, "u"], a, ap),
            run(&["rekey", n, "g"], a, ap),
            run(&["sign", d, "--store", n, "--as", "g/doc.txt"], a, ap),
            run(&["verify", d, "--store", n, "--as", "g/doc.txt"], a, none),
        ],
    );
    // 7: unknown data group.
    let s = ts.store.to_str().unwrap();
    expect_status(
        7,
        "unknown data group",
        vec![
            run(&["rekey", s, "nog"], a, ap),
            run(&["grant", s, "r", "nog", "r"], a, ap),
            run(&["datagroup", "add", s, "g"], a, ap),
            run(&["sign", d, "--store", s, "--as", "nog/doc.txt"], a, ap),
        ],
    );
    // 8: a PSE that is not the administrator's where one is needed.
    expect_status(
        8,
        "non-admin PSE",
        vec![
            run(&["rekey", s, "g"], &upse, &upass),
            run(&["datagroup", "add", s, "y"], &upse, &upass),
            run(&["grant", s, "r", "g", "r"], &upse, &upass),
            run(&["role", "add", s, "y"], &upse, &upass),
            run(&["user", "remove", s, "u"], &upse, &upass),
        ],
    );
    // 3: wrong passphrase, whichever command asks.
    let wrong = ts.dir.path().join("wrong");
    fs::write(&wrong, "not the passphrase\n").unwrap();
    expect_status(
        3,
        "wrong passphrase",
        vec![
            run(&["mount", s, m], a, &wrong),
            run(&["rekey", s, "g"], a, &wrong),
            run(&["grant", s, "r", "g", "r"], a, &wrong),
            run(&["datagroup", "add", s, "y"], a, &wrong),
            run(&["sign", d, "--store", s, "--as", "g/doc.txt"], a, &wrong),
            run(&["passwd"], a, &wrong),
        ],
    );
    // 4: not a PSE.
    expect_status(
        4,
        "not a PSE",
        vec![
            run(&["mount", s, m], &doc, ap),
            run(&["rekey", s, "g"], &doc, ap),
            run(&["grant", s, "r", "g", "r"], &doc, ap),
            run(
                &["verify", d, "--store", s, "--as", "g/doc.txt"],
                &doc,
                none,
            ),
        ],
    );
    // 30: nothing mounted.
    expect_status(
        30,
        "not mounted",
        vec![
            run(&["status", m], none, none),
            run(&["lock", m], none, none),
            run(&["login", m], a, ap),
            run(&["umount", m], none, none),
        ],
    );
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

#[test]
fn json_for_matrix_user_list_datagroup_list_and_an_empty_matrix_says_so() {
    let ts = TestStore::new(&[]);
    let s = ts.store.to_str().unwrap();
    // An empty store: a sentence, not a line of spaces.
    let o = ok(tresor().args(["matrix", s]));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("no roles and no data groups yet"), "{out}");
    assert!(
        out.lines().all(|l| !l.trim().is_empty()),
        "blank line: {out:?}"
    );
    assert_eq!(
        json(&ok(tresor().args(["datagroup", "list", s, "--json"])))["datagroups"],
        serde_json::json!([])
    );

    for g in ["lab", "rx"] {
        admin_ok(&ts, &["datagroup", "add", s, g]);
    }
    admin_ok(&ts, &["role", "add", s, "nurses"]);
    admin_ok(&ts, &["grant", s, "nurses", "rx", "r"]);
    ts.add_user("bob", "nurses");
    let m = json(&ok(tresor().args(["matrix", s, "--json"])));
    assert_eq!(m["matrix"]["nurses"]["rx"], "r", "{m}");
    assert_eq!(m["matrix"]["nurses"]["lab"], "-", "{m}");
    assert_eq!(m["datagroups"], serde_json::json!(["lab", "rx"]));
    assert_eq!(m["signature"], "valid");
    let u = json(&ok(tresor().args(["user", "list", s, "--json"])));
    assert_eq!(u["users"][0]["name"], "bob", "{u}");
    assert_eq!(u["users"][0]["role"], "nurses");
    assert_eq!(u["administrator"]["name"], "admin");
    assert_eq!(
        u["administrator"]["signing_key"].as_str().unwrap().len(),
        64
    );
    let d = json(&ok(tresor().args(["datagroup", "list", s, "--json"])));
    assert_eq!(d["datagroups"], serde_json::json!(["lab", "rx"]));
}

#[test]
fn verify_json_and_verify_in_a_mount_uses_the_sessions_trust_anchor() {
    if !fuse_available() {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let m = ts.mount();
    let doc = m.path("g/rx.txt");
    fs::write(&doc, "400 mg\n").unwrap();
    ok(tresor()
        .arg("sign")
        .arg(&doc)
        .arg("--pse")
        .arg(&ts.pse)
        .arg("--passphrase-file")
        .arg(&ts.pass));
    // No --pse, no --admin-key: the mount's session holds the anchor.
    let o = ok(tresor().arg("verify").arg(&doc));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("valid — signed by admin"),
        "{}",
        text(&o)
    );
    let v = json(&ok(tresor().arg("verify").arg(&doc).arg("--json")));
    assert_eq!(v["exit_status"], 0, "{v}");
    assert_eq!(v["signatures"][0]["verdict"], "valid");
    assert_eq!(v["signatures"][0]["signer"], "admin");
    fs::write(&doc, "800 mg\n").unwrap();
    let o = tresor()
        .arg("verify")
        .arg(&doc)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(code(&o), 21, "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["signatures"][0]["verdict"], "content changed", "{v}");
    let all = tresor()
        .arg("verify")
        .arg("--all")
        .arg(m.path("g"))
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(code(&all), 21, "{}", text(&all));
    let v: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    assert_eq!(v["rows"][0]["document"], "g/rx.txt", "{v}");
    m.unmount();
}

fn admin_ok(ts: &TestStore, args: &[&str]) {
    let o = ts.admin(args);
    assert!(o.status.success(), "{args:?}: {}", text(&o));
}

/// Runs `script` as root in a private mount namespace (a child process)
/// where /usr/sbin (so /sbin) also holds `mount.fuse.tresor`, the helper
/// mount(8) runs for type fuse.tresor: an overlay, so nothing outside the
/// namespace changes.
fn with_mount_helper(dir: &Path, script: &str) -> Output {
    for d in ["u", "w"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    let full = format!(
        "set -e; {drop}
        mount -t overlay overlay -o lowerdir=/usr/sbin,upperdir={d}/u,workdir={d}/w /usr/sbin
        ln -s {t} /usr/sbin/mount.fuse.tresor
        {script}",
        drop = crate::util::DROP_FUSE_COPIES,
        d = dir.display(),
        t = env!("CARGO_BIN_EXE_tresor")
    );
    let mut c = Command::new("unshare");
    isolate(&mut c);
    c.args(["-m", "--propagation", "private", "sh", "-c", &full])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn an_fstab_line_mounts_with_mount_and_ro_is_read_only() {
    if !fuse_available() || !require_root("mount(8) from an fstab in a private namespace") {
        return;
    }
    let ts = TestStore::new(&["g"]);
    let mnt = ts.subdir("t");
    let (s, m, pse, pass) = (
        ts.store.display(),
        mnt.display(),
        ts.pse.display(),
        ts.pass.display(),
    );
    // As gocryptfs users write it: noauto (mounted on demand), options
    // systemd reads (x-systemd.*) let through.
    let rw = ts.dir.path().join("fstab");
    fs::write(
        &rw,
        format!("# tresor\n{s} {m} fuse.tresor noauto,x-systemd.automount,pse={pse},passphrase_file={pass},idle_lock=0 0 0\n"),
    )
    .unwrap();
    let ro = ts.dir.path().join("fstab.ro");
    fs::write(
        &ro,
        format!("{s} {m} fuse.tresor noauto,pse={pse},passphrase_file={pass},ro,allow_other 0 0\n"),
    )
    .unwrap();
    let o = with_mount_helper(
        ts.dir.path(),
        &format!(
            "mount --fstab {rw} {m} >/dev/null
            grep \" {m} \" /proc/self/mounts
            echo 'written through fstab' > {m}/g/f
            umount {m}
            mount --fstab {ro} {m} >/dev/null
            grep \" {m} \" /proc/self/mounts
            cat {m}/g/f
            if echo x > {m}/g/other 2>/dev/null; then echo WROTE; else echo 'write refused'; fi
            umount {m}
            grep -c \" {m} \" /proc/self/mounts || true",
            rw = rw.display(),
            ro = ro.display()
        ),
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(
        lines[0].starts_with(&format!("tresor:{s} {m} fuse.tresor rw,")),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&format!("tresor:{s} {m} fuse.tresor ro,")),
        "{out}"
    );
    assert!(lines[1].contains("allow_other"), "{out}");
    assert_eq!(lines[2], "written through fstab");
    assert_eq!(lines[3], "write refused");
    assert_eq!(lines[4], "0", "still mounted: {out}");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let present = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(present, "systemd-analyze (systemd)") {
        return;
    }
    let unit =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/tresor@.service"))
            .unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/tresor mount "),
        "{unit}"
    );
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart's program exists: point it at the one
    // under test instead of /usr/local/bin (the only change).
    let verify = |text: &str| {
        let p = dir.path().join("tresor@ward3.service");
        fs::write(
            &p,
            text.replace("/usr/local/bin/tresor", env!("CARGO_BIN_EXE_tresor")),
        )
        .unwrap();
        let mut c = Command::new("systemd-analyze");
        isolate(&mut c);
        c.arg("verify").arg(&p).output().unwrap()
    };
    let o = verify(&unit);
    assert!(
        o.status.success() && o.stderr.is_empty() && o.stdout.is_empty(),
        "{}",
        text(&o)
    );
    // The control: a unit systemd would not take is reported.
    let o = verify(&unit.replace("Type=forking", "Type=frobbing"));
    assert!(
        !o.stderr.is_empty() || !o.status.success(),
        "a broken unit passed"
    );
}

#[test]
fn completions_and_man_pages_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let o = ok(tresor().args(["completions", shell]));
        let s = String::from_utf8_lossy(&o.stdout);
        for word in [
            "mount",
            "umount",
            "verify",
            "passphrase-command",
            "read-only",
        ] {
            assert!(s.contains(word), "{shell} completion lacks {word}");
        }
    }
    {
        let o = ok(tresor().args(["completions", "bash"]));
        let f = tempfile::NamedTempFile::new().unwrap();
        fs::write(f.path(), &o.stdout).unwrap();
        let o = Command::new("bash")
            .arg("-n")
            .arg(f.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "bash completion does not parse: {}",
            text(&o)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man");
    ok(tresor().arg("man").arg("--out").arg(&out));
    let mut pages: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    for p in [
        "tresor.1",
        "tresor-mount.1",
        "tresor-user-add.1",
        "tresor-verify.1",
        "tresor-run.1",
        "tresor-completions.1",
    ] {
        assert!(pages.contains(&p.to_string()), "no {p} in {pages:?}");
    }
    // One page per subcommand, nested ones included.
    let o = ok(tresor().arg("--help"));
    let help = String::from_utf8_lossy(&o.stdout);
    let subcommands = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| *w != "help")
        .count();
    assert!(
        pages.iter().filter(|p| p.matches('-').count() == 1).count() >= subcommands,
        "{pages:?}"
    );
    let page = fs::read_to_string(out.join("tresor-mount.1")).unwrap();
    assert!(
        page.starts_with(".ie \\n(.g .ds Aq") || page.contains(".TH"),
        "not roff: {page}"
    );
    assert!(page.contains("read\\-only"), "{page}");
}

#[test]
fn passphrase_command_runs_a_program_without_a_shell() {
    let ts = TestStore::new(&["g"]);
    let s = ts.store.to_str().unwrap();
    let run = |cmd: &str| {
        tresor()
            .args(["datagroup", "add", s, "h", "--pse"])
            .arg(&ts.pse)
            .args(["--passphrase-command", cmd])
            .output()
            .unwrap()
    };
    // A shell string is not run by a shell: `;` and `$(…)` are plain words
    // handed to cat, which fails on them.
    let marker = ts.dir.path().join("ran");
    let o = run(&format!(
        "cat {} ; touch {}",
        ts.pass.display(),
        marker.display()
    ));
    assert_ne!(code(&o), 0, "{}", text(&o));
    assert!(!marker.exists(), "a shell ran the command");
    assert!(text(&o).contains("--passphrase-command"), "{}", text(&o));
    // A failing program: no passphrase, said so.
    let o = run("false");
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("failed"), "{}", text(&o));
    // A wrong passphrase from it: 3, like every other source.
    let o = run("echo wrong passphrase");
    assert_eq!(code(&o), 3, "{}", text(&o));
    // The first line of its output.
    let two = ts.dir.path().join("two-lines");
    fs::write(
        &two,
        format!("{}second line\n", fs::read_to_string(&ts.pass).unwrap()),
    )
    .unwrap();
    let o = run(&format!("cat {}", two.display()));
    assert!(o.status.success(), "{}", text(&o));
    let o = ok(tresor().args(["datagroup", "list", s]));
    assert!(String::from_utf8_lossy(&o.stdout).contains('h'));
}

#[test]
fn a_store_restored_from_a_backup_is_accepted_only_explicitly() {
    let ts = TestStore::new(&["g"]);
    let s = ts.store.to_str().unwrap();
    let version = |o: &Output| json(o)["directory_version"].as_u64().unwrap();
    let backed_up = version(&ok(tresor().args(["matrix", s, "--json"])));
    let backup = ts.dir.path().join("backup");
    ok(Command::new("cp").arg("-a").arg(&ts.store).arg(&backup));
    admin_ok(&ts, &["role", "add", s, "r"]);
    let newer = version(&ok(tresor().args(["matrix", s, "--json"])));
    assert!(newer > backed_up);
    // The backup goes back in place: refused, and the refusal says how.
    fs::remove_dir_all(&ts.store).unwrap();
    fs::rename(&backup, &ts.store).unwrap();
    let o = tresor().args(["matrix", s]).output().unwrap();
    assert_eq!(code(&o), 6, "{}", text(&o));
    let how = format!("--accept-directory-version {backed_up}");
    assert!(text(&o).contains(&how), "{}", text(&o));
    // Only the version the store holds is accepted.
    let wrong = (backed_up + 7).to_string();
    let o = tresor()
        .args(["matrix", s, "--accept-directory-version", &wrong])
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("nothing was accepted"), "{}", text(&o));
    assert_eq!(code(&tresor().args(["matrix", s]).output().unwrap()), 6);
    let o = ok(tresor().args([
        "matrix",
        s,
        "--accept-directory-version",
        &backed_up.to_string(),
    ]));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("What this gives up") && e.contains("re-do those removals"),
        "{e}"
    );
    // From now on the restored store opens, for every command.
    ok(tresor().args(["matrix", s]));
    admin_ok(&ts, &["role", "add", s, "r2"]);
    let rec: serde_json::Value = serde_json::from_slice(
        &fs::read(crate::util::test_env_dir().join("state/tresor/seen.json")).unwrap(),
    )
    .unwrap();
    assert!(
        rec.as_object()
            .unwrap()
            .values()
            .any(|v| v.as_u64() == Some(backed_up + 1)),
        "{rec}"
    );
}

/// Drives `tresor ARGS` on a pseudo-terminal (python3's pty module): for
/// each (prompt, answer) waits until the prompt is shown, then types the
/// answer. Returns (exit status, everything shown).
fn on_a_terminal(args: &[&str], dialogue: &[(&str, &str)], env: &[(&str, &str)]) -> (i32, String) {
    let script = r#"
import os, pty, sys, json
args, dialogue = json.loads(sys.argv[1]), json.loads(sys.argv[2])
pid, fd = pty.fork()
if pid == 0:
    os.execv(args[0], args)
seen = b""
def until(want):
    global seen
    while want.encode() not in seen:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            chunk = b""
        if not chunk:
            sys.stdout.write(seen.decode(errors="replace")); sys.exit(99)
        seen += chunk
for prompt, answer in dialogue:
    until(prompt)
    head, _, rest = seen.partition(prompt.encode())
    sys.stdout.write((head + prompt.encode()).decode(errors="replace")); seen = rest
    os.write(fd, (answer + "\n").encode())
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
sys.stdout.write(seen.decode(errors="replace"))
_, st = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(st))
"#;
    let mut full = vec![env!("CARGO_BIN_EXE_tresor")];
    full.extend_from_slice(args);
    let d: Vec<[&str; 2]> = dialogue.iter().map(|(p, a)| [*p, *a]).collect();
    let mut c = Command::new("python3");
    isolate(&mut c);
    c.envs(env.iter().copied());
    let o = c
        .args(["-c", script])
        .arg(serde_json::to_string(&full).unwrap())
        .arg(serde_json::to_string(&d).unwrap())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (code(&o), text(&o))
}

#[test]
fn a_mismatched_new_passphrase_is_asked_again() {
    let python = Command::new("python3")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(python, "python3 (drives a pseudo-terminal)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    let pse = dir.path().join("a.pse");
    let (st, out) = on_a_terminal(
        &[
            "init",
            store.to_str().unwrap(),
            "--pse",
            pse.to_str().unwrap(),
            "--kdf-memory-mib",
            "8",
        ],
        &[
            ("New passphrase", "first passphrase"),
            ("Repeat it", "another passphrase"),
            ("New passphrase", "short"),
            ("New passphrase", "the same passphrase"),
            ("Repeat it", "the same passphrase"),
        ],
        &[],
    );
    assert_eq!(st, 0, "{out}");
    assert!(out.contains("the two passphrases differ; again"), "{out}");
    assert!(
        out.contains("too short: use at least 8 characters; again"),
        "{out}"
    );
    assert!(out.contains("created store"), "{out}");
    // The passphrase typed the third time is the PSE's.
    let pass = dir.path().join("p");
    fs::write(&pass, "the same passphrase\n").unwrap();
    ok(tresor()
        .args(["datagroup", "add", store.to_str().unwrap(), "g", "--pse"])
        .arg(&pse)
        .arg("--passphrase-file")
        .arg(&pass));
}

#[test]
fn zero_threads_tasks_and_processes_are_refused() {
    let ts = TestStore::new(&["g"]);
    let mnt = ts.subdir("m");
    let o = tresor()
        .arg("mount")
        .arg(&ts.store)
        .arg(&mnt)
        .arg("--pse")
        .arg(&ts.pse)
        .arg("--passphrase-file")
        .arg(&ts.pass)
        .args(["--threads", "0"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("--threads 0"), "{}", text(&o));
    assert_eq!(mount_types(&mnt).0, None);
    for args in [
        vec![
            "run",
            "--profile",
            "p.json",
            "--data",
            "d",
            "--out",
            "o",
            "--max-procs",
            "0",
            "--",
            "true",
        ],
        vec![
            "profile",
            "--out",
            "p.json",
            "--max-tasks",
            "0",
            "--",
            "true",
        ],
    ] {
        let o = tresor()
            .args(&args)
            .current_dir(ts.dir.path())
            .output()
            .unwrap();
        assert_eq!(code(&o), 2, "{args:?}: {}", text(&o));
        assert!(text(&o).contains('0'), "{}", text(&o));
    }
}

#[test]
fn a_prompt_timeout_at_init_is_not_called_a_login() {
    let python = Command::new("python3")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(python, "python3 (drives a pseudo-terminal)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    let pse = dir.path().join("a.pse");
    let (st, out) = on_a_terminal(
        &[
            "init",
            store.to_str().unwrap(),
            "--pse",
            pse.to_str().unwrap(),
        ],
        &[],
        &[("TRESOR_PROMPT_TIMEOUT", "1")],
    );
    assert_ne!(st, 0, "{out}");
    assert!(out.contains("nothing was created or changed"), "{out}");
    assert!(!out.contains("login"), "{out}");
    assert!(!pse.exists() && !store.join("tresor.json").exists());
}
