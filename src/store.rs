//! The store on disk: manifest, data groups and their key envelopes.
//!
//! ```text
//! STORE/tresor.json            manifest (format, store id, features, admin keys)
//! STORE/keys/<group>.json      the group's key per epoch, wrapped per holder
//! STORE/groups/<group>/        the group's ciphertext tree (tresor.dirid at each level)
//! ```

use crate::crypto::{self, CryptoError, KdfParams, PublicKey, SecretKey};
use crate::directory::{self, Body, DirectoryError, Right, DIRECTORY_FILE};
use crate::format::content::DirId;
use crate::format::manifest::{
    self, envelope_label, Envelope, EpochKeys, KdfSpec, KeyFile, Manifest, PublicIdentity,
    GROUPS_DIR, KEYS_DIR, MANIFEST_FILE,
};
use crate::format::names::{self, DIRID_FILE};
use crate::format::FormatError;
use crate::keyring::{GroupKeys, Keyring};
use crate::pse::Pse;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Errors of store operations; each names the path or group and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No manifest at the given path.
    #[error("{0} is not a tresor store (no {MANIFEST_FILE}); create one with `tresor init`")]
    NotAStore(PathBuf),
    /// `--accept-directory-version N` on a store whose directory is another version.
    #[error("the store's directory is version {found}, not {asked}; nothing was accepted (give the version the refusal named)")]
    VersionMismatch {
        /// The version in the store.
        found: u64,
        /// The version the user named.
        asked: u64,
    },
    /// `init` on a non-empty directory.
    #[error("{0} exists and is not empty; `tresor init` needs a new or empty directory")]
    NotEmpty(PathBuf),
    /// The manifest or a key file is bad.
    #[error("{path}: {err}")]
    Format {
        /// File that failed.
        path: PathBuf,
        /// What was wrong.
        err: FormatError,
    },
    /// An I/O error on a store file.
    #[error("{path}: {err}")]
    Io {
        /// File that failed.
        path: PathBuf,
        /// The error.
        err: io::Error,
    },
    /// Unknown data group.
    #[error("no data group \"{0}\" in this store; `tresor datagroup list` shows them")]
    NoSuchGroup(String),
    /// Data group already exists.
    #[error("data group \"{0}\" already exists")]
    GroupExists(String),
    /// Bad data-group name.
    #[error("\"{0}\" is not a valid data-group name: use 1-64 letters, digits, '_', '.', '-', not starting with '.' or '-'")]
    BadGroupName(String),
    /// The PSE is not the store's administrator.
    #[error("this PSE ({0}) is not the administrator of this store")]
    NotAdmin(String),
    /// A cryptographic failure (e.g. an envelope that does not open).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The signed directory is bad, too old, or an edit is invalid.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    /// The PSE belongs to someone this store does not know.
    #[error("{0}")]
    UnknownUser(String),
    /// The PSE's user was removed from this store.
    #[error("{0} was removed from this store; their PSE no longer opens it")]
    RemovedUser(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |err| StoreError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// Writes a file atomically: a temp file in the same directory, fsync,
/// rename over the target, fsync the directory. Readers see the old or the
/// new content, never a mix, even after a crash.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tresor-tmp-")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(mode),
    )?;
    tmp.persist(path).map_err(|e| e.error)?;
    fs::File::open(dir)?.sync_all()
}

/// Creates a directory id file for a new directory (exclusive create, fsync).
pub fn write_dirid(dir: &Path, dirid: &DirId) -> io::Result<()> {
    let p = dir.join(DIRID_FILE);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&p)?;
    f.write_all(&dirid.encode())?;
    f.sync_all()
}

/// An opened store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    manifest: Manifest,
}

impl Store {
    /// Creates a new store at `root` administered by `admin`.
    pub fn create(root: &Path, admin: &Pse, kdf: KdfParams) -> Result<Store, StoreError> {
        if root.exists() {
            let mut it = fs::read_dir(root).map_err(io_err(root))?;
            if it.next().is_some() {
                return Err(StoreError::NotEmpty(root.to_path_buf()));
            }
        } else {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .map_err(io_err(root))?;
        }
        let mut id = [0u8; 16];
        crypto::random_bytes(&mut id);
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let manifest = Manifest {
            tresor_store: manifest::STORE_FORMAT,
            store_id: hex::encode(id),
            created,
            features: manifest::KNOWN_FEATURES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            kdf_defaults: KdfSpec {
                m_kib: kdf.m_kib,
                t: kdf.t,
                p: kdf.p,
            },
            block_size: crate::format::content::BLOCK_SIZE as u32,
            admin: PublicIdentity {
                name: admin.public.user.clone(),
                sign_public: names::encode(&admin.public.sign_public.to_der()?),
                transport_public: names::encode(&admin.public.transport_public.to_der()?),
            },
        };
        for d in [KEYS_DIR, GROUPS_DIR] {
            let p = root.join(d);
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&p)
                .map_err(io_err(&p))?;
        }
        let store = Store {
            root: root.to_path_buf(),
            manifest,
        };
        let dir = Body::new(&store.manifest.store_id, &admin.public.user);
        store.write_directory(&dir.sign(&admin.sign)?)?;
        // The manifest last: until it exists this is not a store.
        let mp = root.join(MANIFEST_FILE);
        write_atomic(&mp, &store.manifest.to_bytes(), 0o644).map_err(io_err(&mp))?;
        Ok(store)
    }

    /// Opens the store at `root`, checking its manifest.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let mp = root.join(MANIFEST_FILE);
        let bytes = match fs::read(&mp) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotAStore(root.to_path_buf()))
            }
            Err(e) => return Err(io_err(&mp)(e)),
        };
        let manifest =
            Manifest::parse(&bytes).map_err(|err| StoreError::Format { path: mp, err })?;
        Ok(Store {
            root: root.to_path_buf(),
            manifest,
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Directory of a data group's ciphertext tree.
    pub fn group_dir(&self, group: &str) -> PathBuf {
        self.root.join(GROUPS_DIR).join(group)
    }

    fn keyfile_path(&self, group: &str) -> PathBuf {
        self.root.join(KEYS_DIR).join(format!("{group}.json"))
    }

    /// Names of all data groups, sorted.
    pub fn groups(&self) -> Result<Vec<String>, StoreError> {
        let kd = self.root.join(KEYS_DIR);
        let mut out = Vec::new();
        for e in fs::read_dir(&kd).map_err(io_err(&kd))? {
            let e = e.map_err(io_err(&kd))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(g) = name.strip_suffix(".json") {
                if manifest::valid_group_name(g) {
                    out.push(g.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Reads a data group's key file.
    pub fn key_file(&self, group: &str) -> Result<KeyFile, StoreError> {
        let p = self.keyfile_path(group);
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NoSuchGroup(group.to_string()))
            }
            Err(e) => return Err(io_err(&p)(e)),
        };
        let k = KeyFile::parse(&bytes).map_err(|err| StoreError::Format {
            path: p.clone(),
            err,
        })?;
        if k.datagroup != group {
            return Err(StoreError::Format {
                path: p,
                err: FormatError::Corrupt(format!(
                    "key file names data group \"{}\" but is stored as \"{group}\"",
                    k.datagroup
                )),
            });
        }
        Ok(k)
    }

    /// The administrator's key-transport public key, from the manifest.
    pub fn admin_transport_key(&self) -> Result<PublicKey, StoreError> {
        let der = names::decode(&self.manifest.admin.transport_public).ok_or_else(|| {
            StoreError::Format {
                path: self.root.join(MANIFEST_FILE),
                err: FormatError::Corrupt("admin transport key is not base64url".into()),
            }
        })?;
        Ok(PublicKey::from_der(&der)?)
    }

    /// Checks that `pse` is this store's administrator.
    pub fn check_admin(&self, pse: &Pse) -> Result<(), StoreError> {
        let mine = names::encode(&pse.public.sign_public.to_der()?);
        if mine != self.manifest.admin.sign_public {
            return Err(StoreError::NotAdmin(pse.public.user.clone()));
        }
        Ok(())
    }

    /// Creates data group `group` with a fresh random key (epoch 1), wrapped
    /// for each holder. Returns nothing secret: the key exists only wrapped.
    pub fn add_group(
        &self,
        group: &str,
        holders: &[(String, PublicKey)],
    ) -> Result<String, StoreError> {
        if !manifest::valid_group_name(group) {
            return Err(StoreError::BadGroupName(group.to_string()));
        }
        let kp = self.keyfile_path(group);
        let gd = self.group_dir(group);
        if kp.exists() || gd.exists() {
            return Err(StoreError::GroupExists(group.to_string()));
        }
        let key = SecretKey::random();
        let epoch = 1;
        let label = envelope_label(&self.manifest.store_id, group, epoch);
        let mut envelopes = Vec::new();
        for (holder, pk) in holders {
            envelopes.push(Envelope {
                holder: holder.clone(),
                key_fpr: pk.fingerprint()?,
                wrapped: names::encode(&pk.wrap_key(&label, &key)?),
            });
        }
        // Directory first: a crash leaves an orphan directory (harmless,
        // invisible without a key file), never a key file without its tree.
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&gd)
            .map_err(io_err(&gd))?;
        let mut id = [0u8; 16];
        crypto::random_bytes(&mut id);
        write_dirid(&gd, &DirId { epoch, id }).map_err(io_err(&gd))?;
        let kf = KeyFile {
            tresor_keys: manifest::KEYS_FORMAT,
            datagroup: group.to_string(),
            current_epoch: epoch,
            epochs: vec![EpochKeys { epoch, envelopes }],
        };
        write_atomic(&kp, &kf.to_bytes(), 0o644).map_err(io_err(&kp))?;
        Ok(directory::key_id(&key))
    }

    /// Unwraps every epoch key of `group` that `pse` holds an envelope for.
    /// With a directory, each key must match the key id it commits to.
    pub fn group_keys(
        &self,
        group: &str,
        pse: &Pse,
        dir: Option<&Body>,
    ) -> Result<GroupKeys, StoreError> {
        let fpr = pse.public.transport_public.fingerprint()?;
        let kf = self.key_file(group)?;
        let current = match dir {
            Some(d) => d.need_group(group)?.epoch,
            None => kf.current_epoch,
        };
        let corrupt = |what: String| StoreError::Format {
            path: self.keyfile_path(group),
            err: FormatError::Corrupt(what),
        };
        let mut keys = GroupKeys::new(current);
        for ep in &kf.epochs {
            let Some(env) = ep.envelopes.iter().find(|e| e.key_fpr == fpr) else {
                continue;
            };
            let wrapped = names::decode(&env.wrapped)
                .ok_or_else(|| corrupt("envelope is not base64url".into()))?;
            let label = envelope_label(&self.manifest.store_id, group, ep.epoch);
            let key = pse.transport.unwrap_key(&label, &wrapped).map_err(|_| {
                corrupt(format!(
                    "the envelope for {} (epoch {}) does not open — it was altered or moved",
                    pse.public.user, ep.epoch
                ))
            })?;
            if let Some(d) = dir {
                let Some(expected) = d.need_group(group)?.key_ids.get(&ep.epoch) else {
                    // An epoch the directory does not name (yet): left over
                    // from an interrupted rotation. Ignored, not trusted.
                    continue;
                };
                if *expected != directory::key_id(&key) {
                    return Err(corrupt(format!(
                        "the key in the envelope for {} (epoch {}) is not the one the signed directory names — a forged envelope",
                        pse.public.user, ep.epoch
                    )));
                }
            }
            keys.insert(ep.epoch, key);
        }
        Ok(keys)
    }

    /// Unwraps every data-group key `pse` holds an envelope for. In a store
    /// with a directory, every data group is listed; those the user's role
    /// may not read are denied, read-only ones are not writable.
    pub fn unlock(&self, pse: &Pse) -> Result<Keyring, StoreError> {
        let mut ring = Keyring::new(&pse.public.user);
        if !self.has_directory() {
            for group in self.groups()? {
                let keys = self.group_keys(&group, pse, None)?;
                if keys.current().is_some() {
                    ring.insert(&group, keys);
                }
            }
            return Ok(ring);
        }
        // A PSE anchored to another administrator: say so, rather than
        // reporting the (correct) signature failure as tampering.
        let anchor = names::encode(&pse.public.trust_anchor.to_der()?);
        if anchor != self.manifest.admin.sign_public {
            return Err(StoreError::UnknownUser(format!(
                "the PSE of {} trusts another administrator than this store's — a PSE from another store?",
                pse.public.user
            )));
        }
        let dir = self.read_directory(&pse.public.trust_anchor)?;
        self.check_member(&dir, pse)?;
        ring.role = if pse.public.user == dir.admin {
            Some("administrator".to_string())
        } else {
            dir.users.get(&pse.public.user).map(|u| u.role.clone())
        };
        for group in dir.datagroups.keys() {
            let right = dir.user_right(&pse.public.user, group);
            if !right.can_read() {
                ring.deny(group);
                continue;
            }
            // One damaged or forged key file locks its own group, loudly,
            // not the whole store.
            let mut keys = match self.group_keys(group, pse, Some(&dir)) {
                Ok(k) => k,
                Err(StoreError::NoSuchGroup(_)) => {
                    ring.problems.push(format!(
                        "data group {group} is locked: its key file {} is missing; restore it from a backup of the store",
                        self.keyfile_path(group).display()
                    ));
                    ring.deny(group);
                    continue;
                }
                Err(e) => {
                    ring.problems
                        .push(format!("data group {group} is locked: {e}"));
                    ring.deny(group);
                    continue;
                }
            };
            keys.writable = right == Right::Write;
            if keys.current().is_some() {
                ring.insert(group, keys);
            } else {
                // The matrix grants it but no envelope is there (yet).
                ring.problems.push(format!(
                    "data group {group} is locked: its key file holds no key for {}; ask the administrator to grant it again",
                    pse.public.user
                ));
                ring.deny(group);
            }
        }
        Ok(ring)
    }

    /// Content format of the store's files: 2 with the `content-v2`
    /// feature, else 1 (`tresor upgrade` converts).
    pub fn content_version(&self) -> u16 {
        if self
            .manifest
            .features
            .iter()
            .any(|f| f == manifest::FEATURE_CONTENT_V2)
        {
            crate::format::content::v2::VERSION
        } else {
            crate::format::content::VERSION_1
        }
    }

    /// Adds the `content-v2` feature to the manifest (atomically), after
    /// which new files are written in content format 2 — the first step of
    /// `tresor upgrade`, which then re-encrypts every format-1 file.
    pub fn enable_content_v2(&mut self) -> Result<(), StoreError> {
        if self.content_version() == crate::format::content::v2::VERSION {
            return Ok(());
        }
        self.manifest
            .features
            .push(manifest::FEATURE_CONTENT_V2.to_string());
        let mp = self.root.join(MANIFEST_FILE);
        write_atomic(&mp, &self.manifest.to_bytes(), 0o644).map_err(io_err(&mp))
    }

    /// Whether this store keeps a signed directory.
    pub fn has_directory(&self) -> bool {
        self.manifest
            .features
            .iter()
            .any(|f| f == manifest::FEATURE_DIRECTORY)
    }

    /// Checks that `pse` belongs to a current user (or the admin) of this store.
    pub fn check_member(&self, dir: &Body, pse: &Pse) -> Result<(), StoreError> {
        let user = &pse.public.user;
        let mine = names::encode(&pse.public.sign_public.to_der()?);
        if *user == dir.admin {
            return self.check_admin(pse);
        }
        match dir.users.get(user) {
            Some(u) if u.sign_public == mine => Ok(()),
            Some(_) => Err(StoreError::UnknownUser(format!(
                "the PSE of {user} does not carry the keys this store certified for {user} — a PSE from another store?"
            ))),
            None if dir.removed.contains_key(user) => Err(StoreError::RemovedUser(user.clone())),
            None => Err(StoreError::UnknownUser(format!(
                "{user} is not a user of this store — a PSE from another store?"
            ))),
        }
    }

    /// Reads and verifies the signed directory against `anchor` (the
    /// admin's key from a PSE), refusing one older than this machine saw.
    pub fn read_directory(&self, anchor: &PublicKey) -> Result<Body, StoreError> {
        let p = self.root.join(DIRECTORY_FILE);
        let bytes = fs::read(&p).map_err(io_err(&p))?;
        let body = Body::verify(&bytes, anchor)?;
        if body.store_id != self.manifest.store_id {
            return Err(DirectoryError::BadSignature("it belongs to another store".into()).into());
        }
        seen::check_and_record(&self.manifest.store_id, body.version)?;
        Ok(body)
    }

    /// Accepts the directory now in the store, version `version`, although
    /// this machine saw a newer one (a store restored from a backup on
    /// purpose): checks its signature against `anchor` and that it is
    /// exactly `version`, then lowers the record to it. Returns the version
    /// seen before.
    pub fn accept_directory_version(
        &self,
        anchor: &PublicKey,
        version: u64,
    ) -> Result<u64, StoreError> {
        let p = self.root.join(DIRECTORY_FILE);
        let bytes = fs::read(&p).map_err(io_err(&p))?;
        let body = Body::verify(&bytes, anchor)?;
        if body.store_id != self.manifest.store_id {
            return Err(DirectoryError::BadSignature("it belongs to another store".into()).into());
        }
        if body.version != version {
            return Err(StoreError::VersionMismatch {
                found: body.version,
                asked: version,
            });
        }
        Ok(seen::accept(&self.manifest.store_id, version))
    }

    /// Remembers that this machine has seen directory `version` (after
    /// writing it), so an older one put back later is refused.
    pub fn note_directory_version(&self, version: u64) -> Result<(), StoreError> {
        seen::check_and_record(&self.manifest.store_id, version)
    }

    /// Writes signed directory bytes atomically.
    pub fn write_directory(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let p = self.root.join(DIRECTORY_FILE);
        write_atomic(&p, bytes, 0o644).map_err(io_err(&p))
    }

    /// Writes a data group's key file atomically.
    pub fn write_key_file(&self, kf: &KeyFile) -> Result<(), StoreError> {
        let p = self.keyfile_path(&kf.datagroup);
        write_atomic(&p, &kf.to_bytes(), 0o644).map_err(io_err(&p))
    }

    /// Wraps `key` of `group`/`epoch` for a holder.
    pub fn envelope(
        &self,
        group: &str,
        epoch: u32,
        key: &SecretKey,
        holder: &str,
        pk: &PublicKey,
    ) -> Result<Envelope, StoreError> {
        let label = envelope_label(&self.manifest.store_id, group, epoch);
        Ok(Envelope {
            holder: holder.to_string(),
            key_fpr: pk.fingerprint()?,
            wrapped: names::encode(&pk.wrap_key(&label, key)?),
        })
    }
}

/// The newest directory version seen per store on this machine (per user):
/// `$XDG_STATE_HOME/tresor/seen.json` or `~/.local/state/tresor/seen.json`.
mod seen {
    use super::{write_atomic, DirectoryError, StoreError};
    use std::collections::BTreeMap;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::PathBuf;

    fn path() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
        Some(base.join("tresor").join("seen.json"))
    }

    pub(super) fn check_and_record(store_id: &str, version: u64) -> Result<(), StoreError> {
        let Some(p) = path() else { return Ok(()) };
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // Read, compare and write back under one exclusive lock: two tresor
        // commands at once must not lose each other's newer version (the
        // record would then let a put-back directory pass unnoticed).
        let _lock = match lock(&p) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("cannot lock {}: {e}", p.display());
                None
            }
        };
        let mut map: BTreeMap<String, u64> = std::fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let seen = map.get(store_id).copied().unwrap_or(0);
        if version < seen {
            return Err(DirectoryError::Rollback {
                found: version,
                seen,
            }
            .into());
        }
        if version > seen {
            map.insert(store_id.to_string(), version);
            let bytes = serde_json::to_vec_pretty(&map).unwrap_or_default();
            // Best effort: a read-only home must not stop a mount.
            if let Err(e) = write_atomic(&p, &bytes, 0o600) {
                tracing::warn!(
                    "cannot record the directory version in {}: {e}",
                    p.display()
                );
            }
        }
        Ok(())
    }

    /// Sets the record of `store_id` to `version` (also downwards);
    /// returns the version recorded before.
    pub(super) fn accept(store_id: &str, version: u64) -> u64 {
        let Some(p) = path() else { return 0 };
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _lock = lock(&p).ok();
        let mut map: BTreeMap<String, u64> = std::fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let before = map.insert(store_id.to_string(), version).unwrap_or(0);
        let bytes = serde_json::to_vec_pretty(&map).unwrap_or_default();
        if let Err(e) = write_atomic(&p, &bytes, 0o600) {
            tracing::warn!(
                "cannot record the directory version in {}: {e}",
                p.display()
            );
        }
        before
    }

    /// An exclusive `flock` on `seen.json.lock` beside the record (the record
    /// itself is replaced by rename, so it cannot carry the lock).
    fn lock(record: &std::path::Path) -> std::io::Result<nix::fcntl::Flock<std::fs::File>> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(record.with_extension("json.lock"))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| std::io::Error::from(e))
    }
}
