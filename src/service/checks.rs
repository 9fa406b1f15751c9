//! Automatic output checks, run when a job's outputs are staged and shown
//! to the checker before anything is released: size, file type, and a
//! disclosure rule (docs/SERVICE.md, "Output checking").

use serde::Serialize;
use std::path::Path;

/// File types an analysis may release, by extension.
pub const ALLOWED: &[&str] = &["png", "json", "csv", "tsv", "txt"];

/// A disclosure rule over one output file (pluggable: the service runs a
/// list of them).
pub trait Rule: Send + Sync {
    /// The rule's name in the report.
    fn name(&self) -> String;
    /// Problems found in `name` with content `bytes` (none: passes).
    fn check(&self, name: &str, bytes: &[u8]) -> Vec<String>;
}

/// "No table cell below N": in CSV/TSV outputs every whole-number cell is 0
/// or at least N (small counts can identify patients).
pub struct MinCell(pub u64);

impl Rule for MinCell {
    fn name(&self) -> String {
        format!("no table cell below {}", self.0)
    }

    fn check(&self, name: &str, bytes: &[u8]) -> Vec<String> {
        let sep = match ext(name).as_str() {
            "csv" => ',',
            "tsv" => '\t',
            _ => return Vec::new(),
        };
        let text = String::from_utf8_lossy(bytes);
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            for (j, cell) in line.split(sep).enumerate() {
                if let Ok(n) = cell.trim().parse::<u64>() {
                    if n > 0 && n < self.0 {
                        out.push(format!(
                            "{name}: row {}, column {}: {n} is below {}",
                            i + 1,
                            j + 1,
                            self.0
                        ));
                    }
                }
            }
        }
        out
    }
}

fn ext(name: &str) -> String {
    Path::new(name)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

/// One output file as staged.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Output {
    /// Path inside the output directory.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 (hex).
    pub sha256: String,
}

/// The report the checker sees.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Report {
    /// Whether every check passed.
    pub ok: bool,
    /// What failed.
    pub problems: Vec<String>,
    /// The rules that ran.
    pub rules: Vec<String>,
}

/// Checks staged outputs: `files` are (name, bytes) of every output.
pub fn check(files: &[(String, Vec<u8>)], max_size: u64, rules: &[Box<dyn Rule>]) -> Report {
    let mut problems = Vec::new();
    for (name, bytes) in files {
        if bytes.len() as u64 > max_size {
            problems.push(format!(
                "{name}: {} bytes, more than the {max_size} one output may have",
                bytes.len()
            ));
        }
        let e = ext(name);
        if !ALLOWED.contains(&e.as_str()) {
            problems.push(format!(
                "{name}: type .{e} may not be released (allowed: {})",
                ALLOWED.join(", ")
            ));
        } else if e == "png" && !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            problems.push(format!("{name}: named .png but is not a PNG image"));
        }
        for r in rules {
            problems.extend(r.check(name, bytes));
        }
    }
    let mut rules_run = vec![
        format!("size at most {max_size} bytes"),
        format!("type one of {}", ALLOWED.join(", ")),
    ];
    rules_run.extend(rules.iter().map(|r| r.name()));
    Report {
        ok: problems.is_empty(),
        problems,
        rules: rules_run,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_cells_types_and_sizes_are_flagged() {
        let rules: Vec<Box<dyn Rule>> = vec![Box::new(MinCell(10))];
        let ok = check(
            &[("t.csv".into(), b"region,n\na,0\nb,12\n".to_vec())],
            100,
            &rules,
        );
        assert!(ok.ok, "{:?}", ok.problems);
        let bad = check(
            &[
                ("t.csv".into(), b"region,n\na,3\n".to_vec()),
                ("x.exe".into(), b"MZ".to_vec()),
                ("h.png".into(), b"not png".to_vec()),
                ("big.txt".into(), vec![b'a'; 101]),
            ],
            100,
            &rules,
        );
        assert!(!bad.ok);
        let all = bad.problems.join("\n");
        for want in [
            "row 2, column 2: 3 is below 10",
            ".exe",
            "not a PNG",
            "more than the 100",
        ] {
            assert!(all.contains(want), "{want}: {all}");
        }
    }
}
