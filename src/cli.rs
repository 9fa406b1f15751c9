//! The command line: clap commands; `anyhow` stays in this module.

use crate::crypto::KdfParams;
use crate::fs::MountOptions;
use crate::prompt;
use crate::pse::{Pse, PseError};
use crate::store::{write_atomic, Store};
use crate::vfs::{Caller, Vfs};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use zeroize::Zeroizing;

mod admin;
mod demo;
mod helper;
mod passwd;
mod service;
mod session;
mod sign;

/// tresor — encrypted data groups behind a transparent FUSE mount.
#[derive(Parser, Debug)]
#[command(name = "tresor", version, about, propagate_version = true)]
struct Cli {
    /// More detail in the log on stderr (-v info, -vv debug, -vvv trace); TRESOR_LOG=FILTER overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors in the log, no warnings.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a store and the administrator's PSE.
    Init {
        /// Directory of the new store (new or empty).
        store: PathBuf,
        /// Where to write the administrator's PSE (must not exist).
        #[arg(long)]
        pse: PathBuf,
        /// The administrator's user name.
        #[arg(long, default_value = "admin")]
        user: String,
        #[command(flatten)]
        pass: PassArgs,
        /// Argon2id memory for new PSEs, in MiB (8..=1024).
        #[arg(long, default_value_t = 64)]
        kdf_memory_mib: u32,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Manage data groups.
    #[command(subcommand)]
    Datagroup(DatagroupCmd),
    /// Manage roles (the user groups of the access matrix).
    #[command(subcommand)]
    Role(admin::RoleCmd),
    /// Manage users: certify, list, remove.
    #[command(subcommand)]
    User(admin::UserCmd),
    /// Set one cell of the access matrix: ROLE × DATAGROUP = w | r | -.
    Grant(admin::GrantArgs),
    /// Run the analysis service: signed HTTP API, jobs, audit trail (docs/SERVICE.md).
    Serve(service::ServeArgs),
    /// Submit an analysis to the service.
    Submit(service::SubmitArgs),
    /// List the service's jobs, or show one.
    Jobs(service::JobsArgs),
    /// Approve a profiled job to run (not your own).
    Approve(service::JobArgs),
    /// Reject a profiled or staged job.
    Reject(service::RejectArgs),
    /// Release a staged job's outputs into the sample records (not your own).
    Release(service::JobArgs),
    /// List a sample record's analyses, or download one of their files.
    Results(service::ResultsArgs),
    /// Check the service's audit trail.
    #[command(subcommand)]
    Audit(service::AuditCmd),
    /// Give a role a duty of the analysis service (submit, approve, release), or take it away.
    Duty(admin::DutyArgs),
    /// Print the access matrix (roles × data groups) and check its signature; needs no PSE.
    Matrix {
        /// The store directory.
        store: PathBuf,
        /// Print the matrix as JSON.
        #[arg(long)]
        json: bool,
        /// After restoring the store from a backup on purpose: accept its
        /// (older) directory version N on this machine. What that gives up:
        /// docs/ACCESS.md, "Restoring a store from a backup".
        #[arg(long, value_name = "N")]
        accept_directory_version: Option<u64>,
    },
    /// Mount a store: MNT/<data group>/… shows the plaintext.
    Mount {
        /// The store directory.
        store: PathBuf,
        /// Empty directory to mount on.
        mountpoint: PathBuf,
        /// Your PSE.
        #[arg(long)]
        pse: PathBuf,
        #[command(flatten)]
        pass: PassArgs,
        /// Stay in the foreground (default: detach once mounted).
        #[arg(short, long)]
        foreground: bool,
        /// Let other local users in; the kernel checks owners and modes.
        #[arg(long)]
        allow_other: bool,
        /// Mount read-only: every write fails with EROFS, whatever the rights.
        #[arg(long)]
        read_only: bool,
        /// Log file when detached (default: beside the control socket, see docs/SESSIONS.md).
        #[arg(long)]
        log: Option<PathBuf>,
        /// Worker threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Lock after this long without a filesystem request (90s, 15min, 1h; 0 = never).
        #[arg(long, value_name = "DURATION", default_value = session::DEFAULT_IDLE_LOCK, value_parser = session::parse_idle_lock)]
        idle_lock: session::IdleLock,
        /// Test hook (docs/SESSIONS.md): serve `advance_clock` on the control socket, which moves the idle lock's clock forward — it can only bring the lock sooner.
        #[arg(long, hide = true)]
        test_clock: bool,
        /// Mount even if the mount point holds files (they are hidden while mounted).
        #[arg(long)]
        nonempty: bool,
    },
    /// Re-encrypt a data group's files, symlinks and names still under an older key epoch (after a revocation); safe to interrupt and run again. Run it while the store is not mounted.
    Rekey {
        /// The store directory.
        store: PathBuf,
        /// The data group to re-encrypt.
        datagroup: String,
        /// The administrator's PSE (it holds every epoch's key).
        #[arg(long)]
        pse: PathBuf,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Convert a store to content format 2 (crash-safe appends, holes; docs/DURABILITY.md): marks the store, then re-encrypts every format-1 file of every data group, with a progress bar. Safe to interrupt and run again. Run it while the store is not mounted.
    Upgrade {
        /// The store directory.
        store: PathBuf,
        /// The administrator's PSE (it holds every data group's keys).
        #[arg(long)]
        pse: PathBuf,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Change the passphrase of a PSE (asks the old one, then the new one twice).
    Passwd {
        /// The PSE whose passphrase to change.
        #[arg(long)]
        pse: PathBuf,
        /// Read the current passphrase from this file (first line) instead of prompting.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
        /// Read the new passphrase from this file (first line) instead of prompting.
        #[arg(long, value_name = "FILE")]
        new_passphrase_file: Option<PathBuf>,
        /// A token PSE's PKCS#11 module (see `mount --pkcs11-module`); for a
        /// token PSE the passphrase files give the old and the new PIN.
        #[arg(long, value_name = "LIB")]
        pkcs11_module: Option<PathBuf>,
    },
    /// Unmount: the driver flushes and unmounts (falls back to `fusermount3 -u MNT`).
    Umount {
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// Show a mount's session: who is logged in, role, since when, idle time left, locked or not, each data group's right.
    Status {
        /// The mount point.
        mountpoint: PathBuf,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lock a mount now: keys wiped, cached plaintext dropped, every access EACCES until `tresor login`.
    Lock {
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// Log in on a running mount: unlock it, or switch to another user's PSE without unmounting.
    Login {
        /// The mount point.
        mountpoint: PathBuf,
        /// The PSE to log in with.
        #[arg(long)]
        pse: PathBuf,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Profile an analysis under ptrace, or show / merge profiles.
    Profile(crate::sandbox::cli::ProfileArgs),
    /// Show the seccomp policy a profile compiles to: rules, filters, instructions.
    Policy(crate::sandbox::cli::PolicyArgs),
    /// Run an analysis confined: its profile's syscalls only, its data read-only, its output directory, no network.
    Run(crate::sandbox::cli::RunArgs),
    /// Sign a document (typically in a mounted data group): the signature goes into FILE.sig beside it.
    Sign(sign::SignArgs),
    /// Check a document's signatures against the store's admin-signed directory (--all: a whole tree).
    Verify(sign::VerifyArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (tresor.1 and one per subcommand, tresor-mount.1 …) into DIR.
    Man {
        /// Directory to write them into (created if missing).
        #[arg(long, value_name = "DIR", default_value = "man")]
        out: PathBuf,
    },
    /// Show the whole product on a throw-away store: roles and matrix, mounts per user, a virtual slide analysed confined through the mount, a signed prescription, a lock and a user switch.
    Demo {
        /// Keep the demo directory instead of deleting it.
        #[arg(long)]
        keep: bool,
        /// Run in this directory (new, empty, or an earlier demo's, which is
        /// cleared first) and keep it.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum DatagroupCmd {
    /// Create a data group with a fresh random key.
    Add {
        /// The store directory.
        store: PathBuf,
        /// Name of the new data group.
        name: String,
        /// The administrator's PSE.
        #[arg(long)]
        pse: PathBuf,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// List the data groups of a store.
    List {
        /// The store directory.
        store: PathBuf,
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug, Clone, Default)]
pub(crate) struct PassArgs {
    /// Read the passphrase from this file (first line) instead of prompting.
    #[arg(long, value_name = "FILE")]
    pub(crate) passphrase_file: Option<PathBuf>,
    /// Run CMD and take the first line it prints as the passphrase (a
    /// keyring, a password manager). No shell: CMD is a program and its
    /// arguments, split at spaces.
    #[arg(long, value_name = "CMD", conflicts_with = "passphrase_file")]
    pub(crate) passphrase_command: Option<String>,
    /// The PKCS#11 module of a token PSE's token (default: the PSE's, then
    /// TRESOR_PKCS11_MODULE, then SoftHSM2 or p11-kit-proxy). For a token
    /// PSE the passphrase options give the token's PIN.
    #[arg(long, value_name = "LIB")]
    pub(crate) pkcs11_module: Option<PathBuf>,
}

/// Keys on a PKCS#11 token instead of in a passphrase-sealed file.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct TokenArgs {
    /// Generate the private keys on a PKCS#11 token (a smartcard, a
    /// YubiKey's PIV, SoftHSM2): never extractable; the PSE file keeps only
    /// public parts. The token's user PIN replaces the passphrase.
    #[arg(long)]
    pub(crate) token: bool,
    /// Which token (its label), when more than one is present.
    #[arg(long, value_name = "LABEL", requires = "token")]
    pub(crate) token_label: Option<String>,
}

impl TokenArgs {
    /// The token to generate keys on, with `module` from `--pkcs11-module`.
    pub(crate) fn find(&self, module: Option<&Path>) -> Result<crate::token::Token> {
        if let Some(m) = module {
            crate::token::use_module(m);
        }
        let module = crate::token::module_path(None)?;
        Ok(crate::token::Token::find(
            &module,
            self.token_label.as_deref(),
            None,
        )?)
    }
}

impl PassArgs {
    /// The passphrase from `--passphrase-file` or `--passphrase-command`
    /// (one try each), with where it came from; `None`: ask on the terminal.
    pub(crate) fn given(&self) -> Result<Option<(Zeroizing<String>, String)>> {
        if let Some(f) = &self.passphrase_file {
            return Ok(Some((
                prompt::from_file(f)?,
                format!("passphrase from {}", f.display()),
            )));
        }
        if let Some(c) = &self.passphrase_command {
            return Ok(Some((
                passphrase_command(c)?,
                format!("passphrase from `{c}`"),
            )));
        }
        Ok(None)
    }

    /// Whether the passphrase comes from a file or command (one try).
    pub(crate) fn is_given(&self) -> bool {
        self.passphrase_file.is_some() || self.passphrase_command.is_some()
    }
}

/// Runs `--passphrase-command CMD` without a shell: CMD split at spaces,
/// the first word the program. Its stderr and the terminal stay its own (a
/// password manager may ask there); the first line of its stdout is the
/// passphrase.
fn passphrase_command(cmd: &str) -> Result<Zeroizing<String>> {
    let mut words = cmd.split_whitespace();
    let Some(program) = words.next() else {
        bail!("--passphrase-command is empty; give a program (and its arguments)");
    };
    let out = std::process::Command::new(program)
        .args(words)
        .stdout(std::process::Stdio::piped())
        .output()
        .with_context(|| format!("cannot run --passphrase-command `{cmd}`"))?;
    let stdout = Zeroizing::new(out.stdout);
    if !out.status.success() {
        bail!(
            "--passphrase-command `{cmd}` failed ({}); no passphrase read",
            out.status
        );
    }
    let line = std::str::from_utf8(&stdout)
        .ok()
        .and_then(|t| t.lines().next())
        .filter(|l| !l.is_empty());
    match line {
        Some(l) => Ok(Zeroizing::new(l.to_string())),
        None => bail!("--passphrase-command `{cmd}` printed no passphrase (an empty first line, or not UTF-8)"),
    }
}

/// Entry point of the `tresor` binary.
pub fn main() -> ExitCode {
    crate::service::executor::die_with_parent();
    // Called as `mount.fuse.tresor STORE MNT -o OPTIONS` by mount(8).
    let cli = match helper::as_mount_helper(std::env::args_os()) {
        Some(Ok(helper::HelperCall::Mount(args))) => Cli::parse_from(args),
        Some(Ok(helper::HelperCall::Fake)) => return ExitCode::SUCCESS,
        Some(Err(e)) => {
            eprintln!("mount.fuse.tresor: {e}");
            return ExitCode::from(2);
        }
        None => Cli::parse(),
    };
    init_logging(&cli);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tresor: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Distinct exit statuses for the failures a script must tell apart.
pub mod status {
    /// Anything else.
    pub const FAILURE: u8 = 1;
    /// Wrong passphrase (or three wrong ones at the prompt).
    pub const WRONG_PASSPHRASE: u8 = 3;
    /// The PSE file is damaged or not a PSE.
    pub const CORRUPT_PSE: u8 = 4;
    /// The directory's signature does not hold, or it is malformed.
    pub const TAMPERED: u8 = 5;
    /// An older directory was put back.
    pub const ROLLBACK: u8 = 6;
    /// Unknown, duplicate or invalid role, user or data-group name.
    pub const BAD_NAME: u8 = 7;
    /// The PSE is not (or no longer) a member of this store.
    pub const NOT_MEMBER: u8 = 8;
    /// Not a store, or a store this tresor cannot read.
    pub const BAD_STORE: u8 = 9;
    /// The PSE's user was removed from this store.
    pub const REMOVED_USER: u8 = 10;
    /// The token's PIN is locked (too many wrong PINs).
    pub const PIN_LOCKED: u8 = 11;
    /// The token of a token PSE is not present.
    pub const NO_TOKEN: u8 = 12;
    /// No running tresor mount answers at this mount point.
    pub const NOT_RUNNING: u8 = 30;
    /// `tresor status`: the mount is locked.
    pub const LOCKED: u8 = 31;
    /// Three wrong passphrases in a row: the mount was locked and ended.
    pub const LOCKED_OUT: u8 = 32;
    /// The control socket is not this user's (or not trustworthy).
    pub const REFUSED: u8 = 33;
    /// A running tresor mount already serves this mount point.
    pub const ALREADY_MOUNTED: u8 = 34;
}

/// The one mapping from failures to exit statuses, for every command
/// (docs/CLI.md): the first cause in the chain with a status decides.
fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(code) = cause_code(cause) {
            return code;
        }
    }
    status::FAILURE
}

fn cause_code(cause: &(dyn std::error::Error + 'static)) -> Option<u8> {
    use crate::rekey::RekeyError as R;
    if let Some(s) = cause.downcast_ref::<crate::session::SessionError>() {
        return Some(session::exit_code(s));
    }
    if let Some(p) = cause.downcast_ref::<PseError>() {
        return Some(pse_code(p));
    }
    if let Some(t) = cause.downcast_ref::<crate::token::TokenError>() {
        return Some(token_code(t));
    }
    if let Some(s) = cause.downcast_ref::<crate::store::StoreError>() {
        return store_code(s);
    }
    // `#[error(transparent)]` hides the wrapped error from the chain.
    if let Some(R::Store(s)) = cause.downcast_ref::<R>() {
        return store_code(s);
    }
    if let Some(d) = cause.downcast_ref::<crate::directory::DirectoryError>() {
        return directory_code(d);
    }
    None
}

fn pse_code(p: &PseError) -> u8 {
    match p {
        PseError::WrongPassphrase => status::WRONG_PASSPHRASE,
        PseError::Token(t) => token_code(t),
        // The PSE is fine: the machine is short of memory.
        PseError::Crypto(crate::crypto::CryptoError::KdfMemory(_)) => status::FAILURE,
        _ => status::CORRUPT_PSE,
    }
}

fn token_code(t: &crate::token::TokenError) -> u8 {
    use crate::token::TokenError as T;
    match t {
        T::WrongPin { .. } => status::WRONG_PASSPHRASE,
        T::PinLocked(_) => status::PIN_LOCKED,
        T::NotPresent(_) => status::NO_TOKEN,
        T::KeyMissing { .. } | T::KeyMismatch(..) => status::CORRUPT_PSE,
        _ => status::FAILURE,
    }
}

fn store_code(s: &crate::store::StoreError) -> Option<u8> {
    use crate::store::StoreError as S;
    match s {
        S::Directory(d) => directory_code(d),
        S::UnknownUser(_) | S::NotAdmin(_) => Some(status::NOT_MEMBER),
        S::RemovedUser(_) => Some(status::REMOVED_USER),
        S::NoSuchGroup(_) | S::GroupExists(_) | S::BadGroupName(_) => Some(status::BAD_NAME),
        S::NotAStore(_) | S::Format { .. } => Some(status::BAD_STORE),
        _ => None,
    }
}

fn directory_code(d: &crate::directory::DirectoryError) -> Option<u8> {
    use crate::directory::DirectoryError as D;
    Some(match d {
        D::BadSignature(_) | D::Malformed(_) | D::TooNew(_) => status::TAMPERED,
        D::Rollback { .. } => status::ROLLBACK,
        D::Unknown { .. } | D::Duplicate { .. } | D::BadName(_) => status::BAD_NAME,
        D::Crypto(_) => return None,
    })
}

/// Whether log lines may carry colour: only on a terminal, and never
/// with `NO_COLOR` set to anything but the empty string (no-color.org).
pub fn log_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn init_logging(cli: &Cli) {
    use std::io::IsTerminal;
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRESOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // A mount that detaches logs into a file from then on: no colour there.
    let detaches = matches!(
        cli.cmd,
        Cmd::Mount {
            foreground: false,
            ..
        }
    );
    let colour = !detaches
        && log_colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .try_init();
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Init {
            store,
            pse,
            user,
            pass,
            kdf_memory_mib,
            token,
        } => cmd_init(&store, &pse, &user, &pass, kdf_memory_mib, &token),
        Cmd::Datagroup(DatagroupCmd::Add {
            store,
            name,
            pse,
            pass,
        }) => cmd_datagroup_add(&store, &name, &pse, &pass),
        Cmd::Datagroup(DatagroupCmd::List { store, json }) => {
            let s = Store::open(&store)?;
            let groups = s.groups()?;
            if json {
                let v = serde_json::json!({ "datagroups": groups });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if groups.is_empty() {
                eprintln!("no data groups yet: add one with `tresor datagroup add`");
            } else {
                for g in groups {
                    println!("{g}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Role(c) => admin::role(c),
        Cmd::User(c) => admin::user(c),
        Cmd::Grant(a) => admin::grant(a),
        Cmd::Duty(a) => admin::duty(a),
        Cmd::Serve(a) => service::serve(a),
        Cmd::Submit(a) => service::submit(a),
        Cmd::Jobs(a) => service::jobs(a),
        Cmd::Approve(a) => service::approve(a),
        Cmd::Reject(a) => service::reject(a),
        Cmd::Release(a) => service::release(a),
        Cmd::Results(a) => service::results(a),
        Cmd::Audit(c) => service::audit(c),
        Cmd::Matrix {
            store,
            json,
            accept_directory_version,
        } => {
            if let Some(n) = accept_directory_version {
                admin::accept_directory_version(&store, n)?;
            }
            admin::matrix(&store, json)
        }
        Cmd::Mount {
            store,
            mountpoint,
            pse,
            pass,
            foreground,
            allow_other,
            read_only,
            log,
            threads,
            idle_lock,
            test_clock,
            nonempty,
        } => {
            if threads == 0 {
                bail!("--threads 0 would serve no request; give 1 or more (default 4)");
            }
            let opts = MountOptions {
                allow_other,
                threads,
                fsname: String::new(),
                read_only,
                nonempty,
            };
            let how = (foreground, log, (idle_lock.0, test_clock));
            cmd_mount(&store, &mountpoint, &pse, &pass, how, opts)
        }
        Cmd::Rekey {
            store,
            datagroup,
            pse,
            pass,
        } => {
            let admin = unlock_pse(&pse, &pass)?;
            let report = crate::rekey::run_cli(&store, &datagroup, &admin, true)?;
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Upgrade { store, pse, pass } => {
            let admin = unlock_pse(&pse, &pass)?;
            let mut s = crate::store::Store::open(&store)?;
            s.check_admin(&admin)?;
            // Refused while mounted (as rekey): a mount would keep writing
            // format 1 into a store that says format 2.
            crate::rekey::refuse_if_mounted(&store)?;
            s.enable_content_v2()?;
            let mut ok = true;
            for group in s.groups()? {
                let report = crate::rekey::run_cli(&store, &group, &admin, true)?;
                ok &= report.ok();
            }
            if ok {
                println!("{}: every file is in content format 2", store.display());
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Passwd {
            pse,
            passphrase_file,
            new_passphrase_file,
            pkcs11_module,
        } => {
            if let Some(m) = &pkcs11_module {
                crate::token::use_module(m);
            }
            passwd::run(
                &pse,
                passphrase_file.as_deref(),
                new_passphrase_file.as_deref(),
                prompt::timeout_from_env()?,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Umount { mountpoint } => session::umount(&mountpoint),
        Cmd::Status { mountpoint, json } => session::status(&mountpoint, json),
        Cmd::Lock { mountpoint } => session::lock(&mountpoint),
        Cmd::Login {
            mountpoint,
            pse,
            pass,
        } => session::login(&mountpoint, &pse, &pass),
        Cmd::Demo { keep, dir } => demo::run(keep, dir),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "tresor", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man { out } => {
            use clap::CommandFactory;
            let n = helper::man_pages(Cli::command(), &out)?;
            println!("wrote {n} man pages into {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        // Distinct statuses per verdict (docs/SIGNATURES.md).
        Cmd::Sign(a) => sign::sign(a),
        Cmd::Verify(a) => sign::verify(a),
        // The program's own exit status passes through.
        Cmd::Profile(args) => crate::sandbox::cli::run_profile(args),
        Cmd::Policy(args) => crate::sandbox::cli::run_policy(args),
        // The analysis's own exit status, or the runner's distinct ones (docs/RUN.md).
        Cmd::Run(args) => crate::sandbox::cli::run_run(args),
    }
}

/// Asks for a new passphrase twice (or reads it from the file).
pub(crate) fn new_passphrase(pass: &PassArgs, who: &str) -> Result<Zeroizing<String>> {
    if let (None, Some((p, _))) = (&pass.passphrase_file, pass.given()?) {
        if p.chars().count() < prompt::MIN_CHARS {
            return Err(prompt::PromptError::TooShort.into());
        }
        return Ok(p);
    }
    ask_new_passphrase(
        pass.passphrase_file.as_deref(),
        who,
        prompt::timeout_from_env()?,
    )
}

/// A new passphrase: from `file` (one try), or on the terminal, asked
/// again (up to three times) when the two entries differ or it is too short.
pub(crate) fn ask_new_passphrase(
    file: Option<&Path>,
    who: &str,
    timeout: std::time::Duration,
) -> Result<Zeroizing<String>> {
    use prompt::PromptError as P;
    let mut tries = 0;
    loop {
        tries += 1;
        match prompt::new_passphrase(file, who, timeout) {
            Err(e @ (P::Mismatch | P::TooShort)) if file.is_none() && tries < prompt::MAX_TRIES => {
                eprintln!("{e}; again");
            }
            // Not a login: say that nothing was made or changed.
            Err(e @ (P::Timeout(_) | P::Interrupted(_) | P::Closed)) => {
                bail!(
                    "{}",
                    e.to_string()
                        .replace("login aborted", "nothing was created or changed")
                )
            }
            r => return Ok(r?),
        }
    }
}

/// The PIN of `token` for `who`'s new keys: from the passphrase file or
/// command, else asked once on the terminal (the token checks it).
pub(crate) fn token_pin(
    pass: &PassArgs,
    token: &crate::token::Token,
    who: &str,
) -> Result<Zeroizing<String>> {
    if let Some((p, _)) = pass.given()? {
        return Ok(p);
    }
    Ok(prompt::passphrase(
        &format!("PIN of token {} (for {who}'s keys): ", token.label),
        prompt::timeout_from_env()?,
    )?)
}

/// Opens a PSE: one try from a file, three at the terminal (the login rules).
pub(crate) fn unlock_pse(path: &Path, pass: &PassArgs) -> Result<Pse> {
    if let Some(m) = &pass.pkcs11_module {
        crate::token::use_module(m);
    }
    let timeout = prompt::timeout_from_env()?;
    Ok(passwd::unlock(path, pass.given()?, timeout)?.pse)
}

fn cmd_init(
    store: &Path,
    pse_path: &Path,
    user: &str,
    pass: &PassArgs,
    mib: u32,
    token: &TokenArgs,
) -> Result<ExitCode> {
    // Everything is checked before anything is created.
    if !crate::directory::valid_name(user) {
        bail!(
            "user name {user:?} is not valid: use 1–64 characters of A–Z a–z 0–9 _ . - not starting with . or -"
        );
    }
    if pse_path.symlink_metadata().is_ok() {
        bail!(
            "{} exists; choose a new path for the PSE",
            pse_path.display()
        );
    }
    let pse_dir = pse_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !pse_dir.is_dir() {
        bail!(
            "the directory {} for the PSE does not exist; create it first",
            pse_dir.display()
        );
    }
    let store_existed = store.symlink_metadata().is_ok();
    if store_existed {
        let empty = std::fs::read_dir(store)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !store.is_dir() || !empty {
            bail!(
                "{} exists and is not an empty directory; choose a new store directory",
                store.display()
            );
        }
    }
    let kdf = KdfParams {
        m_kib: mib.saturating_mul(1024),
        ..KdfParams::DEFAULT
    };
    kdf.check()?;
    let (admin, bytes) = if token.token {
        let t = token.find(pass.pkcs11_module.as_deref())?;
        let pin = token_pin(pass, &t, user)?;
        eprintln!(
            "generating RSA-{} key pairs for {user} on token {} …",
            crate::crypto::RSA_BITS,
            t.label
        );
        let admin = Pse::generate_on_token(user, None, &t, &pin)?;
        let bytes = admin.token_file()?;
        (admin, bytes)
    } else {
        let passphrase = new_passphrase(pass, user)?;
        eprintln!(
            "generating RSA-{} key pairs for {user} …",
            crate::crypto::RSA_BITS
        );
        let admin = Pse::generate(user, None)?;
        let bytes = admin.seal(passphrase.as_bytes(), kdf)?;
        (admin, bytes)
    };
    // Nothing is left behind on failure: a store whose administrator PSE
    // was never written could never be administered.
    let undo = || {
        if store_existed {
            if let Ok(d) = std::fs::read_dir(store) {
                for e in d.flatten() {
                    let p = e.path();
                    let _ = if p.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(store);
        }
    };
    let s = Store::create(store, &admin, kdf).inspect_err(|_| undo())?;
    write_atomic(pse_path, &bytes, 0o600)
        .inspect_err(|_| undo())
        .with_context(|| {
            format!(
                "cannot write PSE {}; the store was not created",
                pse_path.display()
            )
        })?;
    println!(
        "created store {} (id {}) and administrator PSE {}",
        store.display(),
        s.manifest().store_id,
        pse_path.display()
    );
    println!(
        "next: tresor datagroup add {} NAME --pse {}",
        store.display(),
        pse_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn cmd_datagroup_add(
    store: &Path,
    name: &str,
    pse_path: &Path,
    pass: &PassArgs,
) -> Result<ExitCode> {
    let s = Store::open(store)?;
    let admin = unlock_pse(pse_path, pass)?;
    s.check_admin(&admin)?;
    if s.has_directory() {
        crate::admin::Admin::open(&s, &admin)?.add_group(name)?;
        println!("created data group {name} (every role: -; grant access with `tresor grant`)");
        return Ok(ExitCode::SUCCESS);
    }
    let holder = (
        admin.public.user.clone(),
        admin.public.transport_public.clone(),
    );
    s.add_group(name, &[holder])?;
    println!("created data group {name}");
    Ok(ExitCode::SUCCESS)
}

fn owner() -> Caller {
    Caller {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
    }
}

/// Opens the store and the PSE and builds the engine: everything that can
/// fail before mounting, so the starting command reports it.
fn prepare(store: &Path, pse_path: &Path, pass: &PassArgs) -> Result<Arc<Vfs>> {
    let s = Store::open(store)?;
    let user = unlock_pse(pse_path, pass)?;
    let ring = s.unlock(&user)?;
    drop(user);
    for p in &ring.problems {
        eprintln!("tresor: warning: {p}");
    }
    if ring.is_empty() {
        eprintln!(
            "warning: {} may read none of this store's data groups; the mount shows them locked",
            ring.user
        );
    }
    Ok(Arc::new(Vfs::new(s, ring, owner())?))
}

fn check_mountpoint(mnt: &Path) -> Result<()> {
    let md = std::fs::metadata(mnt).with_context(|| {
        format!(
            "mount point {} does not exist; create it first",
            mnt.display()
        )
    })?;
    if !md.is_dir() {
        bail!("mount point {} is not a directory", mnt.display());
    }
    Ok(())
}

/// As gocryptfs: files under the mount would be hidden while it is up.
/// Checked after "already mounted", which has its own exit status.
fn check_empty(mnt: &Path, nonempty: bool) -> Result<()> {
    if !nonempty
        && std::fs::read_dir(mnt)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    {
        bail!(
            "mount point {} is not empty (its files would be hidden); use an empty directory or pass --nonempty",
            mnt.display()
        );
    }
    Ok(())
}

fn cmd_mount(
    store: &Path,
    mnt: &Path,
    pse_path: &Path,
    pass: &PassArgs,
    (foreground, log, idle_lock): (bool, Option<PathBuf>, (Option<std::time::Duration>, bool)),
    opts: MountOptions,
) -> Result<ExitCode> {
    // Before the mount point's own checks: a dead mount fails them all
    // with "Transport endpoint is not connected".
    session::check_free(mnt)?;
    check_mountpoint(mnt)?;
    // Absolute paths: the detached process changes to `/`.
    let mnt = &mnt.canonicalize()?;
    let store = &store
        .canonicalize()
        .map_err(|_| crate::store::StoreError::NotAStore(store.to_path_buf()))?;
    // The canonical store path names the mount (`tresor:/abs/store`): rekey
    // looks for it to refuse running under a live mount.
    let opts = MountOptions {
        fsname: format!("tresor:{}", store.display()),
        ..opts
    };
    session::check_free(mnt)?;
    check_empty(mnt, opts.nonempty)?;
    // Watched while mounted: removing it (pulling the medium) locks.
    let pse_abs = pse_path
        .canonicalize()
        .with_context(|| format!("cannot read PSE {}", pse_path.display()))?;
    let vfs = prepare(store, pse_path, pass)?;
    let listener = session::bind(mnt)?;
    let groups: Vec<String> = vfs.groups();
    let log_path = if foreground {
        None
    } else {
        Some(log.unwrap_or(default_log(mnt)?))
    };
    // Block the stop signals before fuser starts its threads, so that one
    // thread can wait for them and unmount cleanly.
    let signals = stop_signals();
    signals.thread_block().context("cannot block signals")?;
    // Resolved before the mount: afterwards it would ask the mount.
    let mnt_abs = mnt
        .canonicalize()
        .with_context(|| format!("cannot find {}", mnt.display()))?;
    let fuse = crate::fs::mount(Arc::clone(&vfs), mnt, &opts)
        .with_context(|| format!("cannot mount on {}", mnt.display()))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(crate::session::socket_path(mnt));
        })?;
    println!(
        "mounted {} on {} — data groups: {}",
        store.display(),
        mnt.display(),
        if groups.is_empty() {
            "(none)".to_string()
        } else {
            groups.join(", ")
        }
    );
    if let Some(log_path) = &log_path {
        println!(
            "running in the background; log: {}; unmount with `tresor umount {}`",
            log_path.display(),
            mnt.display()
        );
        crate::fs::detach(log_path).context("cannot detach into the background")?;
    }
    // After the detach, so that an unprivileged driver's word on it is in
    // the log.
    let device = crate::fs::own_device(&mnt_abs);
    crate::fs::widen_read_ahead(device.as_deref(), &mnt_abs);
    let notifier = crate::fs::KernelNotifier::new(&fuse);
    // In a thread of its own, so that the mount stays here: fuser's session
    // would unmount again when it ends, and after a normal `fusermount3 -u`
    // that second try fails (EINVAL) and is logged as a warning.
    let mut bg = fuse.spawn().context("cannot start the FUSE threads")?;
    let control = session::start(
        notifier,
        vfs,
        (mnt, device),
        store,
        &pse_abs,
        idle_lock,
        listener,
    )?;
    // The stop signals stayed blocked (pending) until this thread waits.
    let (at, c) = (mnt.to_path_buf(), Arc::clone(&control));
    std::thread::spawn(move || {
        while let Ok(sig) = signals.wait() {
            // As fuser does for users: lazily if the mount is busy; a
            // second signal then ends what the lazy unmount kept serving.
            if let Err(e) = c.stop(&format!("{sig}")) {
                tracing::info!("{e}; unmounting lazily");
                let _ = crate::session::unmount(&at, true);
            }
        }
    });
    let fuse_thread = std::mem::replace(&mut bg.guard, std::thread::spawn(|| Ok(())));
    let ran = fuse_thread
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the FUSE thread panicked")));
    if ran.is_ok() {
        // The loop ends cleanly only once the kernel has dropped the mount.
        // fuser would try to unmount again (EINVAL, and with its inverted
        // "still mounted?" check it could hit a new mount on the same
        // place): keep its handle from ever doing so; the process ends soon.
        std::mem::forget(bg);
    } else if let Err(e) = bg.umount_and_join() {
        tracing::warn!(
            "cannot unmount {}: {e}; run `tresor umount {}`",
            mnt.display(),
            mnt.display()
        );
    }
    let code = session::ended(&control);
    ran.context("the mount ended with an error")?;
    Ok(code)
}

fn stop_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut s = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        s.add(sig);
    }
    s
}

fn default_log(mnt: &Path) -> Result<PathBuf> {
    let base = crate::session::socket_dir();
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let name = mnt
        .canonicalize()
        .unwrap_or_else(|_| mnt.to_path_buf())
        .to_string_lossy()
        .replace('/', "_");
    Ok(base.join(format!("mount{name}.log")))
}

/// Unmounts a tresor mount.
pub fn unmount(mnt: &Path) -> Result<()> {
    let out = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(mnt)
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => bail!(
            "cannot unmount {}: {}",
            mnt.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => bail!("cannot run fusermount3 (install the fuse3 package): {e}"),
    }
}
