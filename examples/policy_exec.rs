//! `policy_exec [--pad-rules N] POLICY.json -- PROGRAM [ARGS...]`
//!
//! Test helper (tests/policy.rs): loads a tresor policy — or makes one from a
//! profile — installs it in this process and execs PROGRAM (a path; no
//! `$PATH` search) with the current environment, the way `tresor run` will,
//! minus the rest of the confinement. Exit status 126: the policy could not
//! be made or installed (the message says which); 127: the exec failed.
//! A program the policy stops dies of SIGSYS.
use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::process::ExitCode;

use tresor::sandbox::policy::{Policy, PolicyOptions};
use tresor::sandbox::sys::Execve;

fn usage() -> ExitCode {
    eprintln!("usage: policy_exec [--pad-rules N] POLICY.json -- PROGRAM [ARGS...]");
    ExitCode::from(2)
}

fn cstring(s: OsString) -> Option<CString> {
    CString::new(s.into_vec()).ok()
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let mut opts = PolicyOptions::default();
    let mut policy = None;
    while let Some(a) = args.next() {
        if a == "--" {
            break;
        } else if a == "--pad-rules" {
            let n = args.next().and_then(|n| n.to_str()?.parse().ok());
            let Some(n) = n else { return usage() };
            opts.pad_rules = n;
        } else if policy.is_none() {
            policy = Some(PathBuf::from(a));
        } else {
            return usage();
        }
    }
    let argv: Option<Vec<CString>> = args.map(cstring).collect();
    let (Some(policy), Some(argv)) = (policy, argv) else {
        return usage();
    };
    let Some(program) = argv.first().cloned() else {
        return usage();
    };
    let compiled = match Policy::load(&policy, &opts).and_then(|p| p.compile()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("policy_exec: {e}");
            return ExitCode::from(126);
        }
    };
    let env: Option<Vec<CString>> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            cstring(kv)
        })
        .collect();
    let Some(env) = env else { return usage() };
    // After the filter is loaded even an error message may be killed:
    // catch the likely exec failure before.
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(program.as_bytes()));
    if !path.is_file() {
        eprintln!("policy_exec: {}: no such program", path.display());
        return ExitCode::from(127);
    }
    let exec = Execve::new(program, argv, env);
    // The tests provoke SIGSYS kills on purpose: no core files for them.
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    if let Err(e) = compiled.install() {
        eprintln!("policy_exec: cannot install the seccomp policy: {e}");
        return ExitCode::from(126);
    }
    // From here on only execve is sure to be allowed.
    let _ = exec.exec();
    ExitCode::from(127)
}
