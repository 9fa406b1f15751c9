//! Daily-use plumbing around the command line: `mount.fuse.tresor` (the
//! helper mount(8) runs for `-t fuse.tresor` and fstab lines) and the man
//! pages (docs/CLI.md).

use anyhow::{Context, Result};
use std::ffi::OsString;
use std::path::Path;

/// What mount(8)'s helper call asks for.
#[derive(Debug, PartialEq)]
pub(super) enum HelperCall {
    /// A `tresor …` command line to run.
    Mount(Vec<OsString>),
    /// `-f`: mount(8) only wants to know it would work.
    Fake,
}

/// The options `-o` takes, as `tresor mount` flags. Those of mount(8) and
/// systemd that are not the filesystem's are let through quietly.
fn translate(opt: &str, out: &mut Vec<OsString>, sloppy: bool) -> Result<(), String> {
    let (key, value) = match opt.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (opt, None),
    };
    let flag = |name: &str, out: &mut Vec<OsString>| -> Result<(), String> {
        let v = value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("mount option {key}= needs a value (e.g. {key}=/path)"))?;
        out.push(format!("--{name}").into());
        out.push(v.into());
        Ok(())
    };
    match key {
        "pse" => flag("pse", out)?,
        "passphrase_file" => flag("passphrase-file", out)?,
        "passphrase_command" => flag("passphrase-command", out)?,
        "idle_lock" => flag("idle-lock", out)?,
        "log" => flag("log", out)?,
        "threads" => flag("threads", out)?,
        "allow_other" => out.push("--allow-other".into()),
        "ro" => out.push("--read-only".into()),
        // tresor mounts are always nosuid and nodev; rw is the default.
        "rw" | "defaults" | "nosuid" | "nodev" | "exec" | "noexec" | "atime" | "noatime"
        | "relatime" | "auto" | "noauto" | "user" | "users" | "nouser" | "owner" | "group"
        | "nofail" | "_netdev" => {}
        k if k.starts_with("x-") || k.starts_with("comment") => {}
        _ if sloppy => {}
        _ => {
            return Err(format!(
                "unknown mount option \"{opt}\"; tresor takes pse=FILE, passphrase_file=FILE, passphrase_command=CMD, idle_lock=DURATION, log=FILE, threads=N, allow_other, ro (docs/CLI.md)"
            ))
        }
    }
    Ok(())
}

/// If this process was started as `mount.fuse.tresor` (or `mount.tresor`),
/// turns mount(8)'s call `STORE MNT [-sfnv] [-o OPTIONS]` into `tresor
/// mount STORE MNT …`.
pub(super) fn as_mount_helper(
    args: impl IntoIterator<Item = OsString>,
) -> Option<Result<HelperCall, String>> {
    let mut args = args.into_iter();
    let argv0 = args.next()?;
    let name = Path::new(&argv0).file_name()?.to_str()?;
    if name != "mount.fuse.tresor" && name != "mount.tresor" {
        return None;
    }
    Some(helper_args(args))
}

fn helper_args(args: impl Iterator<Item = OsString>) -> Result<HelperCall, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let (mut sloppy, mut fake, mut verbose) = (false, false, false);
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("-o") => {
                let o = args.next().ok_or("-o needs a list of options")?;
                options.push(o.into_string().map_err(|_| "options are not UTF-8")?);
            }
            Some(s) if s.starts_with("-o") && s.len() > 2 => options.push(s[2..].to_string()),
            Some("-t") => {
                args.next();
            }
            Some("-N") => return Err("mount namespaces (-N) are not supported".into()),
            Some(s) if s.starts_with('-') && s.len() > 1 && !s.starts_with("--") => {
                for c in s[1..].chars() {
                    match c {
                        's' => sloppy = true,
                        'f' => fake = true,
                        'v' => verbose = true,
                        // No /etc/mtab to write.
                        'n' => {}
                        c => return Err(format!("unknown helper flag -{c}")),
                    }
                }
            }
            _ => positional.push(a),
        }
    }
    let [store, mnt] = <[OsString; 2]>::try_from(positional)
        .map_err(|_| "usage: mount.fuse.tresor STORE MOUNTPOINT [-o OPTIONS]".to_string())?;
    let mut out: Vec<OsString> = vec!["tresor".into()];
    if verbose {
        out.push("-v".into());
    }
    out.extend(["mount".into(), store, mnt]);
    for list in &options {
        for opt in list.split(',').filter(|o| !o.is_empty()) {
            translate(opt, &mut out, sloppy)?;
        }
    }
    if !out.iter().any(|a| a == "--pse") {
        return Err("say which PSE mounts: -o pse=/path/to/your.pse".into());
    }
    if fake {
        return Ok(HelperCall::Fake);
    }
    Ok(HelperCall::Mount(out))
}

/// Writes `tresor.1` and one page per subcommand (`tresor-mount.1`,
/// `tresor-user-add.1` …) into `dir`; returns how many.
pub(super) fn man_pages(cmd: clap::Command, dir: &Path) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut n = 0;
    write_pages(cmd, "tresor", dir, &mut n)?;
    Ok(n)
}

fn write_pages(cmd: clap::Command, name: &str, dir: &Path, n: &mut usize) -> Result<()> {
    let cmd = cmd.name(name.to_string()).bin_name(name.replace('-', " "));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    *n += 1;
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        write_pages(sub.clone(), &format!("{name}-{}", sub.get_name()), dir, n)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(args: &[&str]) -> Result<HelperCall, String> {
        as_mount_helper(args.iter().map(OsString::from)).unwrap()
    }

    fn words(c: HelperCall) -> Vec<String> {
        match c {
            HelperCall::Mount(v) => v.into_iter().map(|s| s.into_string().unwrap()).collect(),
            HelperCall::Fake => vec!["fake".into()],
        }
    }

    #[test]
    fn fstab_options_become_mount_flags() {
        let c = call(&[
            "/sbin/mount.fuse.tresor",
            "/srv/tresor",
            "/mnt/t",
            "-n",
            "-o",
            "rw,noauto,x-systemd.automount,pse=/etc/tresor/ward.pse,passphrase_file=/etc/tresor/ward.pass,allow_other,ro,idle_lock=0,_netdev",
        ])
        .unwrap();
        assert_eq!(
            words(c).join(" "),
            "tresor mount /srv/tresor /mnt/t --pse /etc/tresor/ward.pse --passphrase-file /etc/tresor/ward.pass --allow-other --read-only --idle-lock 0"
        );
    }

    #[test]
    fn bad_helper_calls_are_refused_clearly() {
        assert!(as_mount_helper(["tresor", "x"].map(OsString::from)).is_none());
        let e = call(&["mount.fuse.tresor", "/s", "/m", "-o", "pse=/p,frobnicate"]).unwrap_err();
        assert!(e.contains("unknown mount option \"frobnicate\""), "{e}");
        let e = call(&["mount.fuse.tresor", "/s", "/m"]).unwrap_err();
        assert!(e.contains("pse="), "{e}");
        let e = call(&["mount.fuse.tresor", "/s", "-o", "pse=/p"]).unwrap_err();
        assert!(e.contains("usage"), "{e}");
        // -s: unknown options are let through.
        let c = call(&[
            "mount.fuse.tresor",
            "/s",
            "/m",
            "-s",
            "-o",
            "pse=/p,frobnicate",
        ]);
        assert!(c.is_ok());
        assert_eq!(
            call(&["mount.fuse.tresor", "/s", "/m", "-f", "-o", "pse=/p"]),
            Ok(HelperCall::Fake)
        );
    }
}
