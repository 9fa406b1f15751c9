//! The README's walkthrough, run as written (issue 15): every `sh` and
//! `console` block from "User guide" to the end of "Virtual slides and the
//! Ki-67 analysis", in order, in one fresh environment. The only changes:
//! paths outside the test's own home (`/srv/`, `/media/stick/`,
//! `/home/ward`) point into a temp dir, `target/debug/examples/` to the
//! examples and `target/release/tresor-*` to the binaries this test run
//! built, and every tresor command that would prompt gets the
//! passphrase from a file instead (the prompt itself is tested elsewhere).
//! A console block's output lines must appear in what the command printed
//! (digits compared as digits, lines with "…" or a passphrase prompt not
//! compared); every command must succeed unless the README follows it with
//! `$ echo $?` and the status.

use crate::util::{examples_dir, fuse_available, isolate, test_env_dir};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One command of the README, with what the README says it prints.
struct Step {
    section: String,
    cmd: String,
    expect: Vec<String>,
    status: i32,
}

/// The sections run, in the README's order.
const FIRST: &str = "## User guide";
const LAST: &str = "## What the demo shows";

fn steps(readme: &str) -> Vec<Step> {
    let start = readme.find(FIRST).expect("README has a User guide");
    let end = readme.find(LAST).expect("README has the demo section");
    let mut out: Vec<Step> = Vec::new();
    let mut section = String::new();
    let mut block: Option<&str> = None;
    for line in readme[start..end].lines() {
        if line.starts_with("## ") {
            section = line.to_string();
        }
        if let Some(lang) = line.strip_prefix("```") {
            block = match block {
                None => Some(if lang == "console" { "console" } else { "sh" }),
                Some(_) => None,
            };
            continue;
        }
        let push = |out: &mut Vec<Step>, cmd: &str| {
            out.push(Step {
                section: section.clone(),
                cmd: cmd.to_string(),
                expect: Vec::new(),
                status: 0,
            })
        };
        match block {
            Some("sh") => {
                let l = line.trim();
                if !l.is_empty() && !l.starts_with('#') {
                    push(&mut out, l);
                }
            }
            Some(_) => {
                if let Some(cmd) = line.strip_prefix("$ ") {
                    if cmd == "echo $?" {
                        continue;
                    }
                    push(&mut out, cmd);
                } else if let Ok(n) = line.trim().parse::<i32>() {
                    // The line after `$ echo $?`.
                    out.last_mut().unwrap().status = n;
                } else {
                    out.last_mut().unwrap().expect.push(line.to_string());
                }
            }
            None => {}
        }
    }
    out
}

/// Digits become 0 and runs of spaces one: dates, times, pids and the
/// columns they move compare by shape.
fn shape(s: &str) -> String {
    let mut out = String::new();
    let mut last_digit = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('0');
            }
            last_digit = true;
        } else {
            out.push(c);
            last_digit = false;
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The README's own comment after a command (`  # …`) is not part of it.
fn strip_comment(cmd: &str) -> &str {
    match cmd.find("  #") {
        Some(i) => cmd[..i].trim_end(),
        None => cmd,
    }
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    if !fuse_available() {
        return;
    }
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let steps = steps(&readme);
    assert!(steps.len() > 40, "only {} commands found", steps.len());
    assert!(
        steps
            .iter()
            .any(|s| s.cmd.contains("tresor-ki67 slide.tiff")),
        "the slides section is part of the walkthrough"
    );
    let examples = examples_dir().to_path_buf();
    let root = tempfile::Builder::new()
        .prefix("tresor-readme-")
        .tempdir()
        .unwrap();
    let root = root.path().canonicalize().unwrap();
    let work = root.join("work");
    for d in ["srv", "media/stick", "work"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let home = test_env_dir().join("home");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_tresor"));
    // Each PSE's current passphrase file (passwd changes alice's).
    let mut pass: BTreeMap<String, PathBuf> = BTreeMap::new();
    let pass_for = |pass: &mut BTreeMap<String, PathBuf>, pse: &str| -> PathBuf {
        let name = Path::new(pse)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        pass.entry(name.clone())
            .or_insert_with(|| {
                let p = root.join(format!("{name}.pass"));
                fs::write(&p, format!("{name} passphrase\n")).unwrap();
                p
            })
            .clone()
    };
    let here = |s: &str| {
        s.replace("/srv/", &format!("{}/srv/", root.display()))
            .replace("/media/stick/", &format!("{}/media/stick/", root.display()))
            .replace("/home/ward", &home.display().to_string())
            .replace(
                "target/debug/examples/",
                &format!("{}/", examples.display()),
            )
            .replace(
                "target/release/tresor-slide",
                env!("CARGO_BIN_EXE_tresor-slide"),
            )
            .replace(
                "target/release/tresor-ki67",
                env!("CARGO_BIN_EXE_tresor-ki67"),
            )
    };
    for step in &steps {
        let mut cmd = here(strip_comment(&step.cmd));
        if cmd.starts_with("cargo build") {
            // Built by this test run already (examples_dir).
            continue;
        }
        if let Some(rest) = cmd.strip_prefix("tresor ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let arg = |flag: &str| {
                words
                    .iter()
                    .position(|w| *w == flag)
                    .and_then(|i| words.get(i + 1))
                    .map(|s| s.to_string())
            };
            let mut extra = String::new();
            let asks = !matches!(
                words[0],
                "verify" | "matrix" | "status" | "lock" | "umount" | "profile" | "run" | "policy"
            );
            if let (true, Some(pse)) = (asks, arg("--pse")) {
                let pse = pse.replace('~', &home.display().to_string());
                let p = pass_for(&mut pass, &pse);
                extra += &format!(" --passphrase-file {}", p.display());
                if words[0] == "passwd" {
                    let new = root.join("alice-new.pass");
                    fs::write(&new, "alice's new passphrase\n").unwrap();
                    extra += &format!(" --new-passphrase-file {}", new.display());
                    let name = Path::new(&pse)
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    pass.insert(name, new);
                }
            }
            if words[0] == "user" && words[1] == "add" {
                let out = arg("--pse-out").unwrap();
                let p = pass_for(&mut pass, &out);
                extra += &format!(" --user-passphrase-file {}", p.display());
            }
            cmd = format!("{} {rest}{extra}", bin.display());
        }
        // The PSEs copied to the stick open with the same passphrase.
        if step.cmd.starts_with("cp alice.pse bob.pse") {
            for n in ["alice.pse", "bob.pse"] {
                let p = pass_for(&mut pass, n);
                pass.insert(format!("stick-{n}"), p);
            }
        }
        let mut c = Command::new("sh");
        isolate(&mut c);
        let o = c.arg("-c").arg(&cmd).current_dir(&work).output().unwrap();
        let shown =
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(step.status),
            "{}: `{}` (run as `{cmd}`) exited {} — README says {}:\n{shown}",
            step.section,
            step.cmd,
            o.status,
            step.status
        );
        let lines: Vec<String> = shown.lines().map(shape).collect();
        for want in &step.expect {
            if want.contains('…') || want.starts_with("Passphrase for") {
                continue;
            }
            let w = shape(&here(want));
            assert!(
                lines.contains(&w),
                "{}: `{}` did not print the README's line\n  {want}\nbut:\n{shown}",
                step.section,
                step.cmd
            );
        }
    }
}
