//! The audit trail: an append-only file of JSON lines, each carrying its
//! sequence number and the SHA-256 of the line before it, so removing,
//! changing or reordering any entry breaks the chain at that entry. At least
//! every minute (when something was appended) and at shutdown the service
//! appends a `head` entry signed with its PSE key: the signature commits to
//! everything before it, so even a rewrite of the whole chain needs the
//! service's key (docs/SERVICE.md, "What the audit trail proves").

use crate::crypto::{sha256, PrivateKey, PublicKey};
use crate::format::names::{decode as b64d, encode as b64e};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Domain separation for head signatures.
const HEAD_DOMAIN: &str = "tresor-audit-head-v1";
/// `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Largest audit line read back (a crafted file must not exhaust memory).
const MAX_LINE: usize = 1 << 20;

/// One line of the trail. Field order is the order on disk.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// 1, 2, 3, … without gaps.
    pub seq: u64,
    /// Seconds since the epoch.
    pub time: u64,
    /// SHA-256 (hex) of the previous line's bytes.
    pub prev: String,
    /// `request`, `state`, `start`, `stop` or `head`.
    pub kind: String,
    /// What happened (for `head`: `signer` and `signature`).
    pub detail: serde_json::Value,
}

fn head_message(store_id: &str, seq: u64, prev: &str) -> Vec<u8> {
    format!("{HEAD_DOMAIN}\0{store_id}\n{seq}\n{prev}").into_bytes()
}

/// The writing end: appends, fsyncs, and signs heads.
pub struct Log {
    path: PathBuf,
    file: File,
    next_seq: u64,
    last_hash: String,
    unsigned: u64,
    store_id: String,
    signer: String,
}

impl Log {
    /// Opens (or creates) the trail and checks its chain, so the service
    /// never extends a broken trail.
    pub fn open(path: &Path, store_id: &str, signer: &str) -> Result<Log, String> {
        let (next_seq, last_hash) = match std::fs::read(path) {
            Ok(bytes) => match check_chain(&bytes) {
                Ok(s) => (s.entries + 1, s.last_hash),
                Err(f) => {
                    return Err(format!(
                        "the audit log {} is broken: {f}; run `tresor audit verify {}` and move the log aside (keep it) to start a new one",
                        path.display(),
                        path.display()
                    ))
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => (1, GENESIS.to_string()),
            Err(e) => return Err(format!("cannot read the audit log {}: {e}", path.display())),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("cannot open the audit log {}: {e}", path.display()))?;
        Ok(Log {
            path: path.to_path_buf(),
            file,
            next_seq,
            last_hash,
            unsigned: 0,
            store_id: store_id.to_string(),
            signer: signer.to_string(),
        })
    }

    /// Where the trail is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry and waits until it is on disk.
    pub fn append(&mut self, kind: &str, detail: serde_json::Value) -> io::Result<u64> {
        let e = Entry {
            seq: self.next_seq,
            time: super::auth::now(),
            prev: self.last_hash.clone(),
            kind: kind.to_string(),
            detail,
        };
        let mut line = serde_json::to_vec(&e).map_err(io::Error::other)?;
        let hash = hex::encode(sha256(&line));
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.last_hash = hash;
        self.next_seq += 1;
        if kind != "head" {
            self.unsigned += 1;
        }
        Ok(e.seq)
    }

    /// Appends a signed head if anything was appended since the last one.
    pub fn sign_head(&mut self, key: &PrivateKey) -> io::Result<bool> {
        if self.unsigned == 0 {
            return Ok(false);
        }
        let msg = head_message(&self.store_id, self.next_seq, &self.last_hash);
        let sig = key.sign(&msg).map_err(io::Error::other)?;
        self.append(
            "head",
            serde_json::json!({"signer": self.signer, "signature": b64e(&sig)}),
        )?;
        self.unsigned = 0;
        Ok(true)
    }
}

/// What a whole, unbroken trail holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Number of entries.
    pub entries: u64,
    /// Hash of the last line.
    pub last_hash: String,
    /// Signed heads checked.
    pub heads: u64,
    /// Entries after the last signed head (not yet covered by a signature).
    pub unsigned_tail: u64,
}

/// The first place the trail is broken, named by sequence number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Finding {
    /// Entries missing between two that remain.
    #[error("entry {first}{} removed: entry {next} follows entry {before}", if last > first { format!("–{last} were") } else { " was".into() })]
    Removed {
        /// First missing.
        first: u64,
        /// Last missing.
        last: u64,
        /// The entry before the gap.
        before: u64,
        /// The entry after the gap.
        next: u64,
    },
    /// An entry's bytes differ from what the next entry recorded.
    #[error("entry {0} was changed: the entry after it records another hash for it")]
    Changed(u64),
    /// A line that is not an audit entry at all.
    #[error("entry {0} was changed: line {1} is not an audit entry ({2})")]
    Unreadable(u64, u64, String),
    /// Two entries out of order.
    #[error("entries {0} and {1} were swapped (reordered)")]
    Swapped(u64, u64),
    /// An entry whose number was already seen.
    #[error("entry {0} appears again after entry {1} (reordered or duplicated)")]
    Reordered(u64, u64),
    /// A head whose signature fails.
    #[error("the signed head at entry {0} does not verify: {1}")]
    BadHead(u64, String),
}

struct Line {
    no: u64,
    raw: Vec<u8>,
    entry: Result<Entry, String>,
}

fn lines(bytes: &[u8]) -> Vec<Line> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, raw)| Line {
            no: i as u64 + 1,
            raw: raw.to_vec(),
            entry: if raw.len() > MAX_LINE {
                Err("longer than 1 MiB".into())
            } else {
                serde_json::from_slice::<Entry>(raw).map_err(|e| e.to_string())
            },
        })
        .collect()
}

fn check_chain(bytes: &[u8]) -> Result<Summary, Finding> {
    walk(bytes, |_| Ok(()))
}

/// Walks the chain; `head` checks each signed head's entry.
fn walk(
    bytes: &[u8],
    mut head: impl FnMut(&Entry) -> Result<(), String>,
) -> Result<Summary, Finding> {
    let ls = lines(bytes);
    let mut expected = 1u64;
    let mut prev = GENESIS.to_string();
    let mut heads = 0;
    let mut since_head = 0;
    for (i, l) in ls.iter().enumerate() {
        let e = match &l.entry {
            Ok(e) => e,
            Err(why) => return Err(Finding::Unreadable(expected, l.no, why.clone())),
        };
        if e.seq != expected {
            let next_seq = ls
                .get(i + 1)
                .and_then(|n| n.entry.as_ref().ok())
                .map(|n| n.seq);
            if e.seq == expected + 1 && next_seq == Some(expected) {
                return Err(Finding::Swapped(expected, expected + 1));
            }
            if e.seq > expected {
                return Err(Finding::Removed {
                    first: expected,
                    last: e.seq - 1,
                    before: expected - 1,
                    next: e.seq,
                });
            }
            return Err(Finding::Reordered(e.seq, expected - 1));
        }
        if e.prev != prev {
            if expected == 1 {
                return Err(Finding::Changed(1));
            }
            return Err(Finding::Changed(expected - 1));
        }
        if e.kind == "head" {
            head(e).map_err(|why| Finding::BadHead(e.seq, why))?;
            heads += 1;
            since_head = 0;
        } else {
            since_head += 1;
        }
        prev = hex::encode(sha256(&l.raw));
        expected += 1;
    }
    Ok(Summary {
        entries: expected - 1,
        last_hash: prev,
        heads,
        unsigned_tail: since_head,
    })
}

/// Verifies a whole trail: the chain, and every head's signature with the
/// key `key_of(signer)` returns (the directory's certified key).
pub fn verify(
    bytes: &[u8],
    store_id: &str,
    key_of: impl Fn(&str) -> Option<PublicKey>,
) -> Result<Summary, Finding> {
    walk(bytes, |e| {
        let signer = e
            .detail
            .get("signer")
            .and_then(|s| s.as_str())
            .unwrap_or("");
        let sig = e
            .detail
            .get("signature")
            .and_then(|s| s.as_str())
            .and_then(b64d)
            .ok_or("no signature")?;
        let key = key_of(signer).ok_or_else(|| format!("{signer} is not a user of this store"))?;
        key.verify(&head_message(store_id, e.seq, &e.prev), &sig)
            .map_err(|_| format!("the signature is not {signer}'s"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trail(dir: &Path, key: &PrivateKey, n: u64) -> Vec<u8> {
        let p = dir.join("audit.log");
        let mut log = Log::open(&p, "s", "svc").unwrap();
        for i in 0..n {
            log.append("request", serde_json::json!({"i": i})).unwrap();
            if i == n / 2 {
                log.sign_head(key).unwrap();
            }
        }
        log.sign_head(key).unwrap();
        std::fs::read(&p).unwrap()
    }

    fn rejoin(ls: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in ls {
            out.extend_from_slice(l);
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn removal_change_and_swap_are_each_named() {
        let d = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate().unwrap();
        let pk = key.public();
        let bytes = trail(d.path(), &key, 8);
        let key_of = |s: &str| (s == "svc").then(|| pk.clone());
        let s = verify(&bytes, "s", key_of).unwrap();
        assert_eq!((s.entries, s.heads, s.unsigned_tail), (10, 2, 0));
        let ls: Vec<&[u8]> = bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();

        let mut removed = ls.clone();
        removed.remove(3);
        assert_eq!(
            verify(&rejoin(&removed), "s", key_of).unwrap_err(),
            Finding::Removed {
                first: 4,
                last: 4,
                before: 3,
                next: 5
            }
        );
        let mut swapped = ls.clone();
        swapped.swap(4, 5);
        assert_eq!(
            verify(&rejoin(&swapped), "s", key_of).unwrap_err(),
            Finding::Swapped(5, 6)
        );
        let changed_line = String::from_utf8(ls[2].to_vec())
            .unwrap()
            .replace("\"i\":2", "\"i\":7");
        let mut changed = ls.clone();
        changed[2] = changed_line.as_bytes();
        assert_eq!(
            verify(&rejoin(&changed), "s", key_of).unwrap_err(),
            Finding::Changed(3)
        );
        let mut garbage = ls.clone();
        garbage[1] = b"{not json";
        assert!(matches!(
            verify(&rejoin(&garbage), "s", key_of).unwrap_err(),
            Finding::Unreadable(2, 2, _)
        ));
        // A head signed by another key.
        let other = PrivateKey::generate().unwrap().public();
        assert!(matches!(
            verify(&bytes, "s", |_| Some(other.clone())).unwrap_err(),
            Finding::BadHead(..)
        ));
        // Reopening continues the chain.
        let mut log = Log::open(&d.path().join("audit.log"), "s", "svc").unwrap();
        assert_eq!(log.append("stop", serde_json::json!({})).unwrap(), 11);
        let again = std::fs::read(d.path().join("audit.log")).unwrap();
        assert_eq!(verify(&again, "s", key_of).unwrap().unsigned_tail, 1);
        // A broken trail is never extended.
        std::fs::write(d.path().join("audit.log"), rejoin(&removed)).unwrap();
        assert!(Log::open(&d.path().join("audit.log"), "s", "svc").is_err());
    }
}
