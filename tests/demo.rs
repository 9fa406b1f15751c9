//! `tresor demo` (issue 8): the whole product runs to the end, says what
//! each step showed, leaves nothing mounted, and a second run in the same
//! place does not trip over the first.

use std::path::Path;
use std::process::Output;

use crate::util::{fuse_available, tresor};

fn demo(dir: &Path) -> Output {
    // Not under cargo's eyes: the demo must use the tools cargo test built,
    // not call cargo itself (the build directory is locked meanwhile).
    tresor()
        .args(["demo", "--dir"])
        .arg(dir)
        .env_remove("CARGO")
        .output()
        .expect("tresor demo starts")
}

fn mounted_under(dir: &Path) -> Vec<String> {
    let d = dir.canonicalize().unwrap_or(dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| Path::new(m).starts_with(&d))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_demo_runs_to_the_end_twice_in_the_same_place() {
    if !fuse_available() {
        return;
    }
    let base = tempfile::Builder::new()
        .prefix("tresor-demo-test-")
        .tempdir()
        .unwrap();
    let dir = base.path().join("demo");
    for run in 1..=2 {
        let out = demo(&dir);
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "run {run}: {text}\n{err}");
        for shown in [
            "researchers   -       w            -",
            "Ki-67 index",
            "appears nowhere in the store's bytes",
            "cat lab/patient-0042/blood-2026-11-20.csv: Permission denied",
            "analysis stopped: socket(AF_INET, SOCK_STREAM, 0) is not in profile",
            "tresor verify: valid — signed by alice (physicians)",
            "INVALID: content changed after signing",
            "user:        nina (role nurses)",
            "every mount is unmounted",
            // Without a terminal: a plain line before each long action (issue 15).
            "generating a pyramidal tiled TIFF slide through the mount …",
            "\n1. a store, its administrator",
        ] {
            assert!(text.contains(shown), "run {run}: no {shown:?} in\n{text}");
        }
        assert!(
            !text.contains('\x1b'),
            "run {run}: escapes on a pipe: {text:?}"
        );
        assert!(mounted_under(&dir).is_empty(), "{:?}", mounted_under(&dir));
        // What the demo keeps with --dir: the store, the heat map, the profile.
        for kept in ["store/tresor.json", "heatmap.png", "ki67.json"] {
            assert!(dir.join(kept).exists(), "{kept} missing after run {run}");
        }
    }
}

#[test]
fn the_demo_refuses_a_directory_that_is_not_a_demos() {
    let base = tempfile::Builder::new()
        .prefix("tresor-demo-test-")
        .tempdir()
        .unwrap();
    std::fs::write(base.path().join("thesis.tex"), "precious").unwrap();
    let out = demo(base.path());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a tresor demo directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(base.path().join("thesis.tex")).unwrap(),
        b"precious"
    );
}
