//! Admin commands: `role`, `user`, `grant`, `matrix`.

use super::{new_passphrase, token_pin, unlock_pse, PassArgs, TokenArgs};
use crate::admin::{Admin, Outcome};
use crate::crypto::KdfParams;
use crate::directory::{self, Body, Duty, Right};
use crate::pse::Pse;
use crate::store::{write_atomic, Store};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `tresor role …`
#[derive(Subcommand, Debug)]
pub enum RoleCmd {
    /// Add a role (a user group of the access matrix).
    Add {
        /// The store directory.
        store: PathBuf,
        /// The new role's name.
        role: String,
        /// The administrator's PSE.
        #[arg(long)]
        pse: PathBuf,
        #[command(flatten)]
        pass: PassArgs,
    },
}

/// `tresor user …`
#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Certify a new user: make their key pairs and PSE, wrap their role's keys.
    Add {
        /// The store directory.
        store: PathBuf,
        /// The new user's name.
        user: String,
        /// Their role.
        #[arg(long)]
        role: String,
        /// Where to write the new user's PSE (must not exist).
        #[arg(long)]
        pse_out: PathBuf,
        /// Mark as a shared (ward) PSE: a terminal's routine look-ups, not a person.
        #[arg(long)]
        shared: bool,
        /// The administrator's PSE.
        #[arg(long)]
        pse: PathBuf,
        /// The administrator's passphrase.
        #[command(flatten)]
        pass: PassArgs,
        /// The new user's initial passphrase (with --token: the PIN of their
        /// token), from this file instead of a second prompt.
        #[arg(long, value_name = "FILE")]
        user_passphrase_file: Option<PathBuf>,
        /// The new user's keys on a PKCS#11 token (their card, inserted here).
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Move a user's keys onto a PKCS#11 token: new key pairs made on the
    /// token replace the ones they hold (their old PSE stops opening the
    /// store, and their data groups get new keys, as on removal); their
    /// role, rights and every key epoch they could read stay theirs.
    ToToken {
        /// The store directory.
        store: PathBuf,
        /// The user whose keys move.
        user: String,
        /// Where to write the user's new token PSE (must not exist).
        #[arg(long)]
        pse_out: PathBuf,
        /// Which token (its label), when more than one is present.
        #[arg(long, value_name = "LABEL")]
        token_label: Option<String>,
        /// The PIN of the user's token, from this file instead of a prompt.
        #[arg(long, value_name = "FILE")]
        user_passphrase_file: Option<PathBuf>,
        /// The administrator's PSE.
        #[arg(long)]
        pse: PathBuf,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Remove a user: their data groups get new keys.
    Remove {
        /// The store directory.
        store: PathBuf,
        /// The user to remove.
        user: String,
        /// The administrator's PSE.
        #[arg(long)]
        pse: PathBuf,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// List users (checks the directory signature against the store's admin key).
    List {
        /// The store directory.
        store: PathBuf,
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `tresor grant STORE ROLE DATAGROUP w|r|-`
#[derive(Args, Debug)]
pub struct GrantArgs {
    /// The store directory.
    store: PathBuf,
    /// The role (matrix row).
    role: String,
    /// The data group (matrix column).
    datagroup: String,
    /// `w` read and write, `r` read only, `-` nothing.
    right: String,
    /// The administrator's PSE.
    #[arg(long)]
    pse: PathBuf,
    #[command(flatten)]
    pass: PassArgs,
}

/// `tresor duty STORE ROLE submit|approve|release [--remove]`
#[derive(Args, Debug)]
pub struct DutyArgs {
    /// The store directory.
    store: PathBuf,
    /// The role.
    role: String,
    /// `submit` analyses, `approve` others' analyses, `release` others' outputs (docs/SERVICE.md).
    duty: String,
    /// Take the duty away instead.
    #[arg(long)]
    remove: bool,
    /// The administrator's PSE.
    #[arg(long)]
    pse: PathBuf,
    #[command(flatten)]
    pass: PassArgs,
}

/// Runs `tresor duty`.
pub fn duty(a: DutyArgs) -> Result<ExitCode> {
    let Some(duty) = Duty::parse(&a.duty) else {
        bail!(
            "\"{}\" is not a duty: use submit, approve or release",
            a.duty
        );
    };
    let s = Store::open(&a.store)?;
    let admin = unlock_pse(&a.pse, &a.pass)?;
    Admin::open(&s, &admin)?.set_duty(&a.role, duty, !a.remove)?;
    println!(
        "{} {} {}",
        a.role,
        if a.remove { "no longer holds" } else { "holds" },
        duty.name()
    );
    Ok(ExitCode::SUCCESS)
}

fn duties_text(dir: &Body) -> Vec<String> {
    dir.duties
        .iter()
        .map(|(role, d)| {
            let names: Vec<&str> = d.iter().map(|x| x.name()).collect();
            format!("{role}: {}", names.join(", "))
        })
        .collect()
}

fn report(out: &Outcome) {
    for (g, e) in &out.rotated {
        println!("rotated the key of {g} to epoch {e}: files written from now on use it; `tresor rekey` re-encrypts the older ones");
    }
    if out.envelopes_added > 0 {
        println!("wrapped {} key(s) for new holders", out.envelopes_added);
    }
    if out.envelopes_removed > 0 {
        println!("withdrew {} key envelope(s)", out.envelopes_removed);
    }
}

/// Runs `tresor role …`.
pub fn role(c: RoleCmd) -> Result<ExitCode> {
    let RoleCmd::Add {
        store,
        role,
        pse,
        pass,
    } = c;
    let s = Store::open(&store)?;
    let admin = unlock_pse(&pse, &pass)?;
    Admin::open(&s, &admin)?.add_role(&role)?;
    println!("added role {role} (no rights yet; use `tresor grant`)");
    Ok(ExitCode::SUCCESS)
}

/// Runs `tresor user …`.
pub fn user(c: UserCmd) -> Result<ExitCode> {
    match c {
        UserCmd::Add {
            store,
            user,
            role,
            pse_out,
            shared,
            pse,
            pass,
            user_passphrase_file,
            token,
        } => {
            if pse_out.exists() {
                bail!(
                    "{} exists; choose a new path for {user}'s PSE",
                    pse_out.display()
                );
            }
            let s = Store::open(&store)?;
            let admin = unlock_pse(&pse, &pass)?;
            let a = Admin::open(&s, &admin)?;
            // Check the names before the slow key generation.
            a.directory().need_role(&role)?;
            if !directory::valid_name(&user) {
                return Err(directory::DirectoryError::BadName(user).into());
            }
            if a.directory().users.contains_key(&user) || user == a.directory().admin {
                return Err(directory::DirectoryError::Duplicate {
                    kind: "user",
                    name: user,
                }
                .into());
            }
            let user_args = PassArgs {
                passphrase_file: user_passphrase_file,
                ..PassArgs::default()
            };
            let anchor = Some(admin.public.sign_public.clone());
            let (new, bytes) = if token.token {
                let t = token.find(pass.pkcs11_module.as_deref())?;
                let pin = token_pin(&user_args, &t, &user)?;
                eprintln!(
                    "generating RSA-{} key pairs for {user} on token {} …",
                    crate::crypto::RSA_BITS,
                    t.label
                );
                let new = Pse::generate_on_token(&user, anchor, &t, &pin)?;
                let bytes = new.token_file()?;
                (new, bytes)
            } else {
                let user_pass = new_passphrase(&user_args, &user)?;
                eprintln!(
                    "generating RSA-{} key pairs for {user} …",
                    crate::crypto::RSA_BITS
                );
                let new = Pse::generate(&user, anchor)?;
                let k = s.manifest().kdf_defaults;
                let kdf = KdfParams {
                    m_kib: k.m_kib,
                    t: k.t,
                    p: k.p,
                };
                let bytes = new.seal(user_pass.as_bytes(), kdf)?;
                (new, bytes)
            };
            // The PSE first: if certifying fails, remove it again; a
            // certified user without a PSE could never be used.
            write_atomic(&pse_out, &bytes, 0o600)
                .with_context(|| format!("cannot write {}", pse_out.display()))?;
            match a.add_user(&user, &role, shared, &new) {
                Ok(out) => {
                    println!(
                        "certified {user} ({role}{}); PSE written to {}",
                        if shared { ", shared" } else { "" },
                        pse_out.display()
                    );
                    report(&out);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&pse_out);
                    Err(e.into())
                }
            }
        }
        UserCmd::ToToken {
            store,
            user,
            pse_out,
            token_label,
            user_passphrase_file,
            pse,
            pass,
        } => {
            if pse_out.exists() {
                bail!(
                    "{} exists; choose a new path for {user}'s token PSE",
                    pse_out.display()
                );
            }
            let s = Store::open(&store)?;
            let admin = unlock_pse(&pse, &pass)?;
            let Some(old) = Admin::open(&s, &admin)?
                .directory()
                .users
                .get(&user)
                .cloned()
            else {
                return Err(directory::DirectoryError::Unknown {
                    kind: "user",
                    name: user,
                    hint: "user list STORE",
                }
                .into());
            };
            let token = TokenArgs {
                token: true,
                token_label,
            };
            let t = token.find(pass.pkcs11_module.as_deref())?;
            let user_args = PassArgs {
                passphrase_file: user_passphrase_file,
                ..PassArgs::default()
            };
            let pin = token_pin(&user_args, &t, &user)?;
            eprintln!(
                "generating RSA-{} key pairs for {user} on token {} …",
                crate::crypto::RSA_BITS,
                t.label
            );
            let new =
                Pse::generate_on_token(&user, Some(admin.public.sign_public.clone()), &t, &pin)?;
            write_atomic(&pse_out, &new.token_file()?, 0o600)
                .with_context(|| format!("cannot write {}", pse_out.display()))?;
            // Two directory versions: the old keys retired (their groups
            // rotate), then the new ones certified with the same role.
            let removed = Admin::open(&s, &admin)?.remove_user(&user)?;
            let added = Admin::open(&s, &admin)?
                .add_user(&user, &old.role, old.shared, &new)
                .with_context(|| {
                    format!(
                        "{user}'s old keys are retired but the token keys are not certified yet; run `tresor user add {} {user} --role {} --token …` to finish",
                        store.display(),
                        old.role
                    )
                })?;
            println!(
                "moved {user}'s keys onto token {} ({}); token PSE written to {}; the old PSE no longer opens this store",
                t.label,
                old.role,
                pse_out.display()
            );
            report(&removed);
            report(&added);
            Ok(ExitCode::SUCCESS)
        }
        UserCmd::Remove {
            store,
            user,
            pse,
            pass,
        } => {
            let s = Store::open(&store)?;
            let admin = unlock_pse(&pse, &pass)?;
            let out = Admin::open(&s, &admin)?.remove_user(&user)?;
            println!("removed {user}");
            report(&out);
            Ok(ExitCode::SUCCESS)
        }
        UserCmd::List { store, json } => {
            let (s, dir) = verified_without_pse(&store)?;
            // In full: `tresor verify --admin-key` takes it.
            let admin_fpr = crate::crypto::PublicKey::from_der(
                &crate::format::names::decode(&s.manifest().admin.sign_public)
                    .context("the manifest's admin key is not base64url")?,
            )?
            .fingerprint()?;
            if json {
                let mut users = Vec::new();
                for (name, u) in &dir.users {
                    users.push(serde_json::json!({
                        "name": name,
                        "role": u.role,
                        "certified": date(u.certified),
                        "shared": u.shared,
                        "signing_key": directory::sign_key(&u.sign_public)?.fingerprint()?,
                    }));
                }
                let removed: Vec<_> = dir
                    .removed
                    .iter()
                    .map(|(name, r)| {
                        serde_json::json!({
                            "name": name,
                            "role": r.role,
                            "certified": date(r.certified),
                            "removed": date(r.removed),
                        })
                    })
                    .collect();
                let v = serde_json::json!({
                    "directory_version": dir.version,
                    "administrator": {"name": dir.admin, "signing_key": admin_fpr},
                    "users": users,
                    "removed": removed,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<20} {:<16} {:<10} {:<7} signing key",
                "user", "role", "certified", "shared"
            );
            println!(
                "{:<20} {:<16} {:<10} {:<7} {admin_fpr} (administrator)",
                dir.admin, "-", "-", "-"
            );
            for (name, u) in &dir.users {
                let fpr = directory::sign_key(&u.sign_public)?.fingerprint()?;
                println!(
                    "{:<20} {:<16} {:<10} {:<7} {}",
                    name,
                    u.role,
                    date(u.certified),
                    if u.shared { "yes" } else { "no" },
                    &fpr[..16]
                );
            }
            for (name, r) in &dir.removed {
                println!(
                    "{:<20} {:<16} {:<10} removed {}",
                    name,
                    r.role,
                    date(r.certified),
                    date(r.removed)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `tresor grant`.
pub fn grant(a: GrantArgs) -> Result<ExitCode> {
    let Some(right) = Right::parse(&a.right) else {
        bail!("right must be w, r or - (got \"{}\")", a.right);
    };
    let s = Store::open(&a.store)?;
    let admin = unlock_pse(&a.pse, &a.pass)?;
    let out = Admin::open(&s, &admin)?.grant(&a.role, &a.datagroup, right)?;
    println!("{} × {} = {}", a.role, a.datagroup, right.symbol());
    report(&out);
    Ok(ExitCode::SUCCESS)
}

/// Verifies the directory with the admin key recorded in the store's own
/// manifest: proves the two agree, not who the admin is (a PSE's trust
/// anchor does that).
pub(super) fn verified_without_pse(store: &Path) -> Result<(Store, Body)> {
    let s = Store::open(store)?;
    if !s.has_directory() {
        bail!("this store has no directory (created before users and roles existed)");
    }
    let der = crate::format::names::decode(&s.manifest().admin.sign_public)
        .context("the manifest's admin key is not base64url")?;
    let anchor = crate::crypto::PublicKey::from_der(&der)?;
    let dir = s.read_directory(&anchor)?;
    Ok((s, dir))
}

/// `tresor matrix STORE --accept-directory-version N`: lowers this
/// machine's rollback record to the restored directory's version, and says
/// what that gives up.
pub fn accept_directory_version(store: &Path, n: u64) -> Result<()> {
    let s = Store::open(store)?;
    let der = crate::format::names::decode(&s.manifest().admin.sign_public)
        .context("the manifest's admin key is not base64url")?;
    let anchor = crate::crypto::PublicKey::from_der(&der)?;
    let before = s.accept_directory_version(&anchor, n)?;
    if before <= n {
        eprintln!(
            "directory version {n} is not older than the {before} seen here; nothing to accept"
        );
        return Ok(());
    }
    eprintln!(
        "accepted directory version {n} of {} on this machine (it had seen version {before}). What this gives up:\n\
         - every change of versions {}..={before} is undone in this copy: users removed, rights revoked and keys rotated since are back as they were — re-do those removals and revocations now;\n\
         - files written after the backup was taken are not in it;\n\
         - this machine now refuses only versions older than {n}: a copy rolled back by someone else to {n} would pass here too.",
        store.display(),
        n + 1
    );
    Ok(())
}

/// Runs `tresor matrix`: the access matrix (roles × data groups).
pub fn matrix(store: &Path, json: bool) -> Result<ExitCode> {
    let (_, dir) = verified_without_pse(store)?;
    let groups: Vec<&String> = dir.datagroups.keys().collect();
    if json {
        let cells: serde_json::Map<String, serde_json::Value> = dir
            .roles
            .iter()
            .map(|role| {
                let row: serde_json::Map<String, serde_json::Value> = groups
                    .iter()
                    .map(|g| {
                        (
                            g.to_string(),
                            dir.right(role, g).symbol().to_string().into(),
                        )
                    })
                    .collect();
                (role.clone(), row.into())
            })
            .collect();
        let v = serde_json::json!({
            "directory_version": dir.version,
            "signed_by": dir.admin,
            "issued": date(dir.issued),
            "signature": "valid",
            "roles": dir.roles,
            "datagroups": groups,
            "matrix": cells,
            "duties": dir.duties,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "directory version {} signed by {} on {} — signature valid (checked against the admin key in tresor.json)",
        dir.version,
        dir.admin,
        date(dir.issued)
    );
    if dir.roles.is_empty() || groups.is_empty() {
        println!(
            "no {} yet: add them with {}",
            match (dir.roles.is_empty(), groups.is_empty()) {
                (true, true) => "roles and no data groups",
                (true, false) => "roles",
                _ => "data groups",
            },
            match (dir.roles.is_empty(), groups.is_empty()) {
                (true, true) => "`tresor role add` and `tresor datagroup add`",
                (true, false) => "`tresor role add`",
                _ => "`tresor datagroup add`",
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    let w = dir.roles.iter().map(|r| r.len()).max().unwrap_or(4).max(4);
    print!("{:<w$}", "");
    for g in &groups {
        print!("  {g}");
    }
    println!();
    for role in &dir.roles {
        print!("{role:<w$}");
        for g in &groups {
            let cell = dir.right(role, g).symbol();
            print!("  {cell:^width$}", width = g.len());
        }
        println!();
    }
    let duties = duties_text(&dir);
    if !duties.is_empty() {
        println!("service duties: {}", duties.join("; "));
    }
    Ok(ExitCode::SUCCESS)
}

fn date(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::date(0), "1970-01-01");
        assert_eq!(super::date(1_795_415_753), "2026-11-23");
    }
}
