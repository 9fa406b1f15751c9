//! Administration: roles, users, data groups, the access matrix, revocation.
//!
//! Every change is made on a copy of the verified directory and written in
//! this order: key files first (envelopes added for new holders, removed for
//! those who lost a right, a new epoch's envelopes when a key rotates), then
//! the re-signed directory with its version counter +1. A crash in between
//! leaves the old directory in force: extra envelopes for a key it does not
//! name are ignored (their key id is unknown), and removed envelopes only
//! take away access the new directory takes away too. Running the command
//! again completes it.

use crate::crypto::{PublicKey, SecretKey};
use crate::directory::{self, Body, DirectoryError, Duty, GroupEntry, Right};
use crate::format::manifest::{EpochKeys, KeyFile};
use crate::pse::Pse;
use crate::store::{Store, StoreError};
use std::collections::BTreeMap;

/// An administrator's session on a store: the verified directory, to edit.
pub struct Admin<'a> {
    store: &'a Store,
    pse: &'a Pse,
    dir: Body,
}

/// What a change did, for the command's output.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Data groups whose key was rotated to a new epoch.
    pub rotated: Vec<(String, u32)>,
    /// Envelopes written for new holders.
    pub envelopes_added: usize,
    /// Envelopes withdrawn.
    pub envelopes_removed: usize,
}

impl<'a> Admin<'a> {
    /// Opens the store's directory with the admin's PSE.
    pub fn open(store: &'a Store, pse: &'a Pse) -> Result<Admin<'a>, StoreError> {
        store.check_admin(pse)?;
        let dir = store.read_directory(&pse.public.trust_anchor)?;
        Ok(Admin { store, pse, dir })
    }

    /// The directory as it stands.
    pub fn directory(&self) -> &Body {
        &self.dir
    }

    /// Adds a role.
    pub fn add_role(mut self, role: &str) -> Result<(), StoreError> {
        self.dir.add_role(role)?;
        self.commit()
    }

    /// Gives `role` a duty of the analysis service, or (`on` false) takes it away.
    pub fn set_duty(mut self, role: &str, duty: Duty, on: bool) -> Result<(), StoreError> {
        self.dir.set_duty(role, duty, on)?;
        self.commit()
    }

    /// Creates a data group (key epoch 1, held by the admin; every role `-`).
    pub fn add_group(mut self, name: &str) -> Result<(), StoreError> {
        if self.dir.datagroups.contains_key(name) {
            return Err(DirectoryError::Duplicate {
                kind: "data group",
                name: name.into(),
            }
            .into());
        }
        let me = (
            self.pse.public.user.clone(),
            self.pse.public.transport_public.clone(),
        );
        let key_id = self.store.add_group(name, &[me])?;
        self.dir.datagroups.insert(
            name.to_string(),
            GroupEntry {
                epoch: 1,
                key_ids: [(1, key_id)].into(),
            },
        );
        self.commit()
    }

    /// Certifies a new user of `role` and gives them every key their role may read.
    pub fn add_user(
        mut self,
        name: &str,
        role: &str,
        shared: bool,
        user: &Pse,
    ) -> Result<Outcome, StoreError> {
        self.dir.add_user(
            name,
            role,
            &user.public.sign_public,
            &user.public.transport_public,
            shared,
        )?;
        let mut out = Outcome::default();
        let groups: Vec<String> = self.dir.datagroups.keys().cloned().collect();
        for g in groups {
            if self.dir.right(role, &g).can_read() {
                out.envelopes_added += self.add_envelopes(
                    &g,
                    &[(name.to_string(), user.public.transport_public.clone())],
                )?;
            }
        }
        self.commit()?;
        Ok(out)
    }

    /// Removes a user; every data group they could read gets a new key.
    pub fn remove_user(mut self, name: &str) -> Result<Outcome, StoreError> {
        let Some(u) = self.dir.users.remove(name) else {
            return Err(DirectoryError::Unknown {
                kind: "user",
                name: name.into(),
                hint: "user list STORE",
            }
            .into());
        };
        let mut out = Outcome::default();
        let readable: Vec<String> = self
            .dir
            .datagroups
            .keys()
            .filter(|g| self.dir.right(&u.role, g).can_read())
            .cloned()
            .collect();
        self.dir.removed.insert(
            name.to_string(),
            directory::RemovedUser {
                role: u.role.clone(),
                sign_public: u.sign_public.clone(),
                certified: u.certified,
                removed: self.dir.next().issued,
            },
        );
        for g in readable {
            self.rotate(&g, &mut out)?;
        }
        self.commit()?;
        Ok(out)
    }

    /// Sets one matrix cell; withdrawing read access rotates the key.
    pub fn grant(mut self, role: &str, group: &str, right: Right) -> Result<Outcome, StoreError> {
        self.dir.need_role(role)?;
        self.dir.need_group(group)?;
        let before = self.dir.right(role, group);
        self.dir
            .matrix
            .entry(role.to_string())
            .or_default()
            .insert(group.to_string(), right);
        let mut out = Outcome::default();
        if !before.can_read() && right.can_read() {
            let holders = self.role_holders(role)?;
            out.envelopes_added += self.add_envelopes(group, &holders)?;
        } else if before.can_read() && !right.can_read() {
            self.rotate(group, &mut out)?;
        }
        self.commit()?;
        Ok(out)
    }

    fn role_holders(&self, role: &str) -> Result<Vec<(String, PublicKey)>, StoreError> {
        self.dir
            .users
            .iter()
            .filter(|(_, u)| u.role == role)
            .map(|(n, u)| Ok((n.clone(), directory::transport_key(u)?)))
            .collect()
    }

    /// The admin's keys of `group`, every epoch.
    fn admin_keys(&self, group: &str) -> Result<BTreeMap<u32, SecretKey>, StoreError> {
        let kf = self.store.key_file(group)?;
        let label_fpr = self.pse.public.transport_public.fingerprint()?;
        let mut out = BTreeMap::new();
        for ep in &kf.epochs {
            if let Some(env) = ep.envelopes.iter().find(|e| e.key_fpr == label_fpr) {
                let wrapped = crate::format::names::decode(&env.wrapped).ok_or_else(|| {
                    StoreError::Directory(DirectoryError::Malformed(format!(
                        "envelope of {group} epoch {} is not base64url",
                        ep.epoch
                    )))
                })?;
                let label = crate::format::manifest::envelope_label(
                    &self.store.manifest().store_id,
                    group,
                    ep.epoch,
                );
                let key = self.pse.transport.unwrap_key(&label, &wrapped)?;
                let expected = self.dir.need_group(group)?.key_ids.get(&ep.epoch);
                if expected == Some(&directory::key_id(&key)) {
                    out.insert(ep.epoch, key);
                }
            }
        }
        Ok(out)
    }

    /// Wraps every epoch key of `group` for `holders` who lack it.
    fn add_envelopes(
        &self,
        group: &str,
        holders: &[(String, PublicKey)],
    ) -> Result<usize, StoreError> {
        let keys = self.admin_keys(group)?;
        let mut kf = self.store.key_file(group)?;
        let mut added = 0;
        for ep in &mut kf.epochs {
            let Some(key) = keys.get(&ep.epoch) else {
                continue;
            };
            for (name, pk) in holders {
                let fpr = pk.fingerprint()?;
                if ep.envelopes.iter().any(|e| e.key_fpr == fpr) {
                    continue;
                }
                ep.envelopes
                    .push(self.store.envelope(group, ep.epoch, key, name, pk)?);
                added += 1;
            }
        }
        self.store.write_key_file(&kf)?;
        Ok(added)
    }

    /// A new key epoch for `group`: envelopes for the admin and everyone
    /// whose role may still read it; everyone else's envelopes (all epochs)
    /// withdrawn.
    fn rotate(&mut self, group: &str, out: &mut Outcome) -> Result<(), StoreError> {
        let entry = self.dir.need_group(group)?.clone();
        let epoch = entry.epoch + 1;
        let key = SecretKey::random();
        let mut holders = vec![(
            self.pse.public.user.clone(),
            self.pse.public.transport_public.clone(),
        )];
        for (n, u) in self.dir.readers(group) {
            holders.push((n.to_string(), directory::transport_key(u)?));
        }
        let keep: Vec<String> = holders
            .iter()
            .map(|(_, pk)| pk.fingerprint())
            .collect::<Result<_, _>>()?;
        let mut kf: KeyFile = self.store.key_file(group)?;
        for ep in &mut kf.epochs {
            let before = ep.envelopes.len();
            ep.envelopes.retain(|e| keep.contains(&e.key_fpr));
            out.envelopes_removed += before - ep.envelopes.len();
        }
        let mut envelopes = Vec::new();
        for (n, pk) in &holders {
            envelopes.push(self.store.envelope(group, epoch, &key, n, pk)?);
        }
        kf.epochs.retain(|e| e.epoch != epoch);
        kf.epochs.push(EpochKeys { epoch, envelopes });
        kf.current_epoch = epoch;
        self.store.write_key_file(&kf)?;
        let e = self
            .dir
            .datagroups
            .get_mut(group)
            .ok_or_else(|| DirectoryError::Malformed(format!("data group {group} vanished")))?;
        e.epoch = epoch;
        e.key_ids.insert(epoch, directory::key_id(&key));
        out.rotated.push((group.to_string(), epoch));
        Ok(())
    }

    /// Signs the next directory version and writes it.
    fn commit(self) -> Result<(), StoreError> {
        let next = self.dir.next();
        next.check()?;
        let bytes = next.sign(&self.pse.sign)?;
        self.store.write_directory(&bytes)?;
        self.store.note_directory_version(next.version)
    }
}
