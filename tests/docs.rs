//! The docs' claims point at tests that exist: every *(test …)* mark in
//! docs/THREAT-MODEL.md names at least one test as `module::name`, and each
//! named test is a function in `tests/<module>.rs` (integration) or in
//! `src/**/<module>.rs` (unit, `module::tests::name`).

use std::path::Path;

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The text of every `*(test…)*` mark.
fn marks(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(i) = rest.find("*(test") {
        let tail = &rest[i..];
        let end = tail.find(")*").map(|e| e + 2).unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// `a::b` or `a::tests::b` names in backticks.
fn names(mark: &str) -> Vec<String> {
    mark.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.contains("::") && !s.contains(' '))
        .map(str::to_string)
        .collect()
}

fn source_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            source_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Whether `module::…::name` is a function in a file named after the module.
fn exists(name: &str) -> bool {
    let parts: Vec<&str> = name.split("::").collect();
    let (module, func) = (parts[0], parts[parts.len() - 1]);
    let mut files = vec![manifest().join("tests").join(format!("{module}.rs"))];
    let mut src = Vec::new();
    source_files(&manifest().join("src"), &mut src);
    files.extend(src.into_iter().filter(|p| {
        p.file_stem().is_some_and(|s| s == module)
            || (p.file_name().is_some_and(|f| f == "mod.rs")
                && p.parent()
                    .and_then(|d| d.file_name())
                    .is_some_and(|d| d == module))
    }));
    // A wildcard `module::*` names the whole module.
    if func == "*" {
        return files.iter().any(|f| f.exists());
    }
    files.iter().any(|f| {
        std::fs::read_to_string(f)
            // A test function, or one a macro makes from a `name,` line.
            .map(|t| {
                t.contains(&format!("fn {func}("))
                    || t.contains(&format!(" {func},\n"))
                    || t.contains(&format!("!({func},"))
            })
            .unwrap_or(false)
    })
}

#[test]
fn every_test_mark_in_the_threat_model_names_existing_tests() {
    let doc = std::fs::read_to_string(manifest().join("docs/THREAT-MODEL.md")).unwrap();
    let marks = marks(&doc);
    // The introduction explains the mark itself: `*(test)*` with no name.
    let claims: Vec<&String> = marks.iter().filter(|m| m.as_str() != "*(test)*").collect();
    assert!(claims.len() >= 10, "found only {} marks", claims.len());
    let mut missing = Vec::new();
    for m in &claims {
        let n = names(m);
        if n.is_empty() {
            missing.push(format!("a mark names no test: {m}"));
        }
        for name in n {
            if !exists(&name) {
                missing.push(format!("{name} (in {m})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "THREAT-MODEL.md marks without a test:\n{}",
        missing.join("\n")
    );
    // Control: a made-up name is not found.
    assert!(!exists("mount::no_such_test_anywhere"));
}
