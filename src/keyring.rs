//! The unlocked data-group keys of a session, in one place that the running
//! mount can wipe or replace without unmounting (lock, idle lock, user switch).

use crate::crypto::{Aead, SecretKey};
use crate::format::content::FILE_ID_LEN;
use std::collections::{BTreeMap, BTreeSet};

/// One epoch's key and its derived name cipher.
#[derive(Debug)]
pub struct EpochKey {
    key: SecretKey,
    names: Aead,
}

impl EpochKey {
    /// Prepares an epoch key: derives the name key once.
    pub fn new(key: SecretKey) -> Self {
        let names = Aead::new(&key.derive(&[b"tresor/name/v1"]));
        EpochKey { key, names }
    }

    /// The per-file content key: HKDF-SHA256(group key, "tresor/file/v1" || file id) —
    /// the seed's "master key modified per record".
    pub fn file_cipher(&self, file_id: &[u8; FILE_ID_LEN]) -> Aead {
        Aead::new(&self.key.derive(&[b"tresor/file/v1", file_id]))
    }

    /// The name cipher of this epoch.
    pub fn names(&self) -> &Aead {
        &self.names
    }
}

/// Every epoch key of one data group that this user holds.
#[derive(Debug, Default)]
pub struct GroupKeys {
    /// Epoch new files and directories are sealed under.
    pub current: u32,
    /// Whether this user may write (the matrix says `w`); reading is what
    /// holding the keys means.
    pub writable: bool,
    epochs: BTreeMap<u32, EpochKey>,
}

impl GroupKeys {
    /// An empty set whose current epoch is `current`.
    pub fn new(current: u32) -> Self {
        GroupKeys {
            current,
            writable: true,
            epochs: BTreeMap::new(),
        }
    }

    /// Adds one epoch's key.
    pub fn insert(&mut self, epoch: u32, key: SecretKey) {
        self.epochs.insert(epoch, EpochKey::new(key));
    }

    /// The key of `epoch`, if held.
    pub fn epoch(&self, epoch: u32) -> Option<&EpochKey> {
        self.epochs.get(&epoch)
    }

    /// Every held epoch key, current first, then newest to oldest.
    pub fn by_preference(&self) -> impl Iterator<Item = &EpochKey> {
        self.current().into_iter().chain(
            self.epochs
                .iter()
                .rev()
                .filter(|(e, _)| **e != self.current)
                .map(|(_, k)| k),
        )
    }

    /// The key of the current epoch, if held.
    pub fn current(&self) -> Option<&EpochKey> {
        self.epochs.get(&self.current)
    }
}

/// All data-group keys of a session. Dropping it zeroizes every key.
#[derive(Debug, Default)]
pub struct Keyring {
    /// Who unlocked it (for status and logs).
    pub user: String,
    /// Their role in the signed directory (`None` in a store without one).
    pub role: Option<String>,
    groups: BTreeMap<String, GroupKeys>,
    /// Data groups shown (mode 000) but not readable by this user.
    denied: BTreeSet<String>,
    /// Data groups the user may read but whose keys could not be opened,
    /// each as a sentence saying what to do (printed by the command).
    pub problems: Vec<String>,
}

impl Keyring {
    /// An empty keyring for `user`.
    pub fn new(user: &str) -> Self {
        Keyring {
            user: user.to_string(),
            role: None,
            groups: BTreeMap::new(),
            denied: BTreeSet::new(),
            problems: Vec::new(),
        }
    }

    /// Adds a data group's keys.
    pub fn insert(&mut self, group: &str, keys: GroupKeys) {
        self.groups.insert(group.to_string(), keys);
    }

    /// The keys of `group`, if this user holds any.
    pub fn group(&self, group: &str) -> Option<&GroupKeys> {
        self.groups.get(group)
    }

    /// Names of the data groups this keyring opens, sorted.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(String::as_str)
    }

    /// Records a data group this user may not read: listed, but locked.
    pub fn deny(&mut self, group: &str) {
        self.denied.insert(group.to_string());
    }

    /// Whether `group` is listed but locked for this user.
    pub fn is_denied(&self, group: &str) -> bool {
        self.denied.contains(group)
    }

    /// Names of the locked data groups, sorted.
    pub fn denied(&self) -> impl Iterator<Item = &str> {
        self.denied.iter().map(String::as_str)
    }

    /// True when no data group can be opened.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}
