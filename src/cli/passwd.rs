//! `tresor passwd`: change the passphrase of a PSE. The private keys are
//! re-sealed under the new passphrase with a fresh salt and the PSE's own
//! Argon2id parameters; the store is not touched (nothing in it depends on
//! the passphrase).
//!
//! [`unlock`] is the one way the CLI opens a PSE — from a passphrase file
//! (one try), or on the terminal with the login rules of [`crate::prompt`]
//! (three tries, each within the prompt timeout).

use crate::prompt::{self, AttemptError, LoginError};
use crate::pse::{self, Pse};
use crate::store::write_atomic;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Duration;
use zeroize::Zeroizing;

/// An opened PSE and the passphrase that opened it.
pub struct Unlocked {
    /// The private keys.
    pub pse: Pse,
    /// The passphrase, zeroized on drop.
    pub passphrase: Zeroizing<String>,
}

/// Opens the PSE at `path`: with a `given` passphrase (from a file or a
/// command, with where it came from; a wrong one fails at once), or by
/// asking on the terminal up to [`prompt::MAX_TRIES`] times, each answer
/// within `timeout`.
pub fn unlock(
    path: &Path,
    given: Option<(Zeroizing<String>, String)>,
    timeout: Duration,
) -> Result<Unlocked> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read PSE {}", path.display()))?;
    let public = pse::read_public(&bytes).with_context(|| format!("PSE {}", path.display()))?;
    let open = |p: &str| match pse::open(&bytes, p.as_bytes()) {
        Ok(pse) => Ok(Unlocked {
            pse,
            passphrase: Zeroizing::new(p.to_string()),
        }),
        Err(e) if e.is_wrong_secret() => Err(AttemptError::WrongPassphrase(e)),
        Err(e) => Err(AttemptError::Other(e)),
    };
    // The PseError stays in the error chain: the CLI's exit status says
    // "wrong passphrase" or "corrupt PSE" from it.
    if let Some((p, from)) = given {
        return open(&p).map_err(
            |(AttemptError::WrongPassphrase(e) | AttemptError::Other(e))| {
                anyhow::Error::new(e).context(format!("PSE {} ({from})", path.display()))
            },
        );
    }
    let question = match &public.token {
        Some(t) => format!(
            "PIN of token {} for {} ({}): ",
            t.label,
            public.user,
            path.display()
        ),
        None => format!("Passphrase for {} ({}): ", public.user, path.display()),
    };
    let context = || format!("PSE {}", path.display());
    prompt::unlock_with_retries(prompt::MAX_TRIES, timeout, &question, open).map_err(|e| match e {
        LoginError::Prompt(e) => e.into(),
        // Not the transparent wrapper: its source() would skip the PseError.
        LoginError::Other(e) => anyhow::Error::new(e).context(context()),
        e @ LoginError::TooManyAttempts { .. } => anyhow::Error::new(e).context(context()),
    })
}

/// `tresor passwd --pse FILE [--passphrase-file OLD] [--new-passphrase-file NEW]`.
pub fn run(
    pse_path: &Path,
    passphrase_file: Option<&Path>,
    new_passphrase_file: Option<&Path>,
    timeout: Duration,
) -> Result<()> {
    // Write through a symlink to the file itself (a PSE on a removable
    // medium linked from the home directory), not over the link.
    let target = pse_path
        .canonicalize()
        .with_context(|| format!("cannot read PSE {}", pse_path.display()))?;
    let given = match passphrase_file {
        Some(f) => Some((
            prompt::from_file(f)?,
            format!("passphrase from {}", f.display()),
        )),
        None => None,
    };
    let old = unlock(pse_path, given, timeout)?;
    if let Some(t) = old.pse.public.token.clone() {
        return change_pin(pse_path, old, &t, new_passphrase_file, timeout);
    }
    let user = &old.pse.public.user;
    let unchanged = || format!("PSE {} unchanged", pse_path.display());
    let new =
        super::ask_new_passphrase(new_passphrase_file, user, timeout).with_context(unchanged)?;
    if *new == *old.passphrase {
        bail!(
            "the new passphrase is the old one; choose another (PSE {} unchanged)",
            pse_path.display()
        );
    }
    let kdf = old.pse.public.kdf;
    let sealed = old.pse.seal(new.as_bytes(), kdf).with_context(unchanged)?;
    // Never replace a working PSE with one that does not open.
    pse::open(&sealed, new.as_bytes())
        .context("the re-sealed PSE does not open")
        .with_context(unchanged)?;
    write_atomic(&target, &sealed, 0o600)
        .with_context(|| format!("cannot write PSE {}", target.display()))?;
    println!(
        "passphrase of {user}'s PSE {} changed (the store is untouched)",
        pse_path.display()
    );
    Ok(())
}

/// `tresor passwd` of a token PSE: the PIN changes on the token (`C_SetPIN`);
/// the PSE file, which holds no secret, stays as it is.
fn change_pin(
    pse_path: &Path,
    old: Unlocked,
    t: &crate::token::TokenRef,
    new_file: Option<&Path>,
    timeout: Duration,
) -> Result<()> {
    let user = old.pse.public.user.clone();
    let unchanged = || format!("the PIN of token {} is unchanged", t.label);
    // The token judges the new PIN's length; a file gives it as it is.
    let new = match new_file {
        Some(f) => prompt::from_file(f)?,
        None => super::ask_new_passphrase(None, &user, timeout).with_context(unchanged)?,
    };
    if *new == *old.passphrase {
        bail!(
            "the new PIN is the old one; choose another ({})",
            unchanged()
        );
    }
    let module = crate::token::module_path(Some(&t.module))?;
    // The session that opened the keys ends first: the token logs out.
    let passphrase = old.passphrase.clone();
    drop(old);
    crate::token::Token::find(&module, None, Some(&t.serial))?
        .change_pin(&passphrase, &new)
        .with_context(unchanged)?;
    println!(
        "PIN of token {} changed for {user} (PSE {} and the store are untouched)",
        t.label,
        pse_path.display()
    );
    Ok(())
}
