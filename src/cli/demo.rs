//! `tresor demo`: the whole cycle on a throw-away store, narrated.

use crate::crypto::KdfParams;
use crate::fs::MountOptions;
use crate::pse::Pse;
use crate::store::Store;
use crate::vfs::Vfs;
use anyhow::{Context, Result};
use std::fs;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

const SAMPLES: &[(&str, &str)] = &[
    (
        "records/patient-0042/anamnesis.txt",
        "Patient 0042, born 1961. Allergies: penicillin. History: hypertension since 2009.\n",
    ),
    (
        "records/patient-0042/lab-2026-11-20.csv",
        "test,value,unit\nhb,13.9,g/dl\ncrp,4.1,mg/l\n",
    ),
    (
        "records/patient-0107/anamnesis.txt",
        "Patient 0107, born 1984. No known allergies.\n",
    ),
    (
        "prescriptions/2026-11-23-0042.txt",
        "Rx: ramipril 5 mg, 1-0-0, 98 tablets. Dr. A. Alvarez\n",
    ),
];

fn step(n: u32, text: &str) {
    println!("\n\x1b[1m{n}. {text}\x1b[0m");
}

/// Runs the demo; `keep` leaves the directory behind for inspection.
pub fn run(keep: bool) -> Result<ExitCode> {
    let dir = tempfile::Builder::new().prefix("tresor-demo-").tempdir()?;
    let root = dir.path();
    println!("tresor demo — a throw-away store in {}", root.display());

    step(
        1,
        "create a store and the administrator's PSE (RSA-3072 keys, Argon2id-sealed)",
    );
    let admin = Pse::generate("admin", None)?;
    let pse_bytes = admin.seal(b"demo passphrase", KdfParams::DEFAULT)?;
    let store_dir = root.join("store");
    let store = Store::create(&store_dir, &admin, KdfParams::DEFAULT)?;
    crate::store::write_atomic(&root.join("admin.pse"), &pse_bytes, 0o600)?;
    println!(
        "   store {}  id {}",
        store_dir.display(),
        store.manifest().store_id
    );

    step(
        2,
        "add data groups (a random 256-bit key each, wrapped to the admin, committed to in the signed directory)",
    );
    for g in ["records", "prescriptions"] {
        crate::admin::Admin::open(&store, &admin)?.add_group(g)?;
        println!("   {g}");
    }

    step(3, "unlock the PSE and mount");
    let admin = crate::pse::open(&pse_bytes, b"demo passphrase")?;
    let ring = store.unlock(&admin)?;
    drop(admin);
    let mnt = root.join("mnt");
    fs::create_dir(&mnt)?;
    let vfs = Arc::new(Vfs::new(store, ring, super::owner())?);
    let opts = MountOptions {
        allow_other: false,
        threads: 2,
        fsname: "tresor-demo".into(),
    };
    let session = crate::fs::mount(vfs, &mnt, &opts)
        .context("cannot mount (is fuse3 installed and /dev/fuse present?)")?
        .spawn()?;
    println!("   mounted at {}", mnt.display());

    let result = show(&mnt, &store_dir);
    step(7, "unmount");
    session.umount_and_join()?;
    println!(
        "   {} is empty again; the store keeps only ciphertext",
        mnt.display()
    );
    result?;
    if keep {
        let kept = dir.keep();
        println!(
            "\nkept {} (passphrase of admin.pse: \"demo passphrase\")",
            kept.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn show(mnt: &Path, store_dir: &Path) -> Result<()> {
    step(
        4,
        "write sample files through the mount, as any program would",
    );
    for (path, text) in SAMPLES {
        let p = mnt.join(path);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&p, text)?;
        println!("   wrote {path} ({} bytes)", text.len());
    }

    step(5, "list and read them back through the mount (plaintext)");
    for (path, _) in SAMPLES {
        let meta = fs::metadata(mnt.join(path))?;
        println!("   {:>5} bytes  {path}", meta.len());
    }
    let first = SAMPLES[0].0;
    print!(
        "   cat {first}:\n     {}",
        fs::read_to_string(mnt.join(first))?
    );

    step(
        6,
        "the same files in the store: encrypted names, encrypted contents",
    );
    let mut files = Vec::new();
    walk(&store_dir.join("groups"), &mut files)?;
    for f in &files {
        let rel = f.strip_prefix(store_dir).unwrap_or(f);
        let bytes = fs::read(f)?;
        let head: String = bytes.iter().take(24).map(|b| format!("{b:02x}")).collect();
        println!(
            "   {:>5} bytes  {}\n                {head}…",
            bytes.len(),
            rel.display()
        );
    }
    let needle = &SAMPLES[0].1.as_bytes()[..16];
    let leaked = files
        .iter()
        .filter_map(|f| fs::read(f).ok())
        .any(|b| b.windows(needle.len()).any(|w| w == needle));
    println!(
        "   plaintext \"{}\" found in the store: {}",
        String::from_utf8_lossy(needle),
        if leaked {
            "YES — this is a bug"
        } else {
            "no"
        }
    );
    Ok(())
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
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
