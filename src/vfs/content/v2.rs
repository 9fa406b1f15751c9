//! Content format 2: full blocks in place, the tail and the size in a
//! two-slot authenticated record (docs/FORMAT.md §5b).
//!
//! The rules every update follows, so that a crash after any backing write
//! (or in the middle of one) leaves a file whose record in force describes
//! only bytes that are on disk and were not rewritten since:
//!
//! 1. The record goes into the slot that is *not* in force.
//! 2. At rest the backing length is "steady" (`ciphertext_size(size)`) and
//!    picks, of the valid records, the one of that size. An update that
//!    changes the size writes the new record first and makes the length
//!    steady for it last: that `set_len` is the commit point. If it needs
//!    new full blocks, it first sets a non-steady length with room for them
//!    (`dirty_len`), writes them, then the record; while the length is not
//!    steady the valid record with the higher counter is in force.
//! 3. No update rewrites a full block that a record in force counts before
//!    its new version is staged past the data and a record counts it
//!    (FORMAT.md §5b.5).

use super::{read_full, with_ct_scratch, ContentError, FileCipher};
use crate::crypto::NONCE_LEN;
use crate::format::content::v2::{
    block_aad, block_offset, ciphertext_size, dirty_len, full_blocks, plaintext_size, slot_offset,
    staged_count, staging_offset, tail_len, RecordFields, FLAG_SPARSE, KNOWN_FLAGS,
    RECORD_FIELDS_LEN, RECORD_SLOT_LEN, STAGED_ENTRY_LEN, STAGED_SHIFT,
};
use crate::format::content::{BLOCK_SIZE, CT_BLOCK_SIZE};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use zeroize::Zeroizing;

/// Blocks processed per I/O call when writing long ranges (1 MiB).
const CHUNK_BLOCKS: u64 = 256;
const B: u64 = BLOCK_SIZE;

/// The record in force, as read from (or last written to) its slot.
#[derive(Debug)]
pub(super) struct Record {
    /// Slot holding it (0 or 1).
    slot: usize,
    fields: RecordFields,
    /// The tail plaintext (`size mod 4096` bytes).
    tail: Zeroizing<Vec<u8>>,
    /// Both slots hold this state (after a sync, or as found).
    mirrored: bool,
    /// The other slot holds a valid record with a higher counter that is
    /// not in force (an update cut off before its commit point): it must be
    /// overwritten before the length is made dirty, or it would come into
    /// force.
    other_newer: bool,
    /// The backing file may extend past this record's length (a crash
    /// before a shrink finished, or an update that failed): cut before
    /// growing, so no stale block reappears inside a hole.
    stale_tail: bool,
    /// Staged blocks the record counts (an overwrite cut off by a crash):
    /// they override the blocks in place until written there.
    staged: BTreeMap<u64, Zeroizing<Vec<u8>>>,
    /// The record slots' bytes and the backing length as this process last
    /// left them: if they differ, another mount changed the file and the
    /// record is read again (`None`: not taken yet).
    seen: Option<Snapshot>,
}

/// What another mount's update of a file always changes: a commit writes a
/// record with a higher counter into a slot, a mirror copies the record
/// into the other slot, and the counters only grow — so equal slot bytes
/// and length mean no update since.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    len: u64,
    slots: Vec<u8>,
}

fn snapshot(file: &File) -> Result<Snapshot, ContentError> {
    let mut slots = vec![0u8; 2 * RECORD_SLOT_LEN as usize];
    let n = read_full(file, &mut slots, slot_offset(0))?;
    slots.truncate(n);
    Ok(Snapshot {
        len: file.metadata()?.len(),
        slots,
    })
}

/// Makes the cached record the one on disk (the caller holds the backing
/// file's lock): keeps it if the file is as this process left it, else —
/// another mount updated it — reads it again. With `load_if_none`, reads
/// it if there is none yet.
fn refresh(
    g: &mut Option<Record>,
    file: &File,
    c: &FileCipher,
    load_if_none: bool,
) -> Result<(), ContentError> {
    if let Some(rec) = g.as_ref() {
        if rec.seen.as_ref() == Some(&snapshot(file)?) {
            return Ok(());
        }
        *g = None;
    } else if !load_if_none {
        return Ok(());
    }
    *g = Some(load(file, c)?);
    Ok(())
}

impl Record {
    fn size(&self) -> u64 {
        self.fields.size
    }
    fn sparse(&self) -> bool {
        self.fields.flags & FLAG_SPARSE != 0
    }
    /// Flags without the staged count.
    fn base_flags(&self) -> u32 {
        self.fields.flags & !(u32::MAX << STAGED_SHIFT)
    }
}

/// Reads and opens the staged entries a record counts.
fn load_staged(
    file: &File,
    c: &FileCipher,
    fields: &RecordFields,
) -> Result<BTreeMap<u64, Zeroizing<Vec<u8>>>, ContentError> {
    let n = staged_count(fields.flags);
    let mut out = BTreeMap::new();
    if n == 0 {
        return Ok(out);
    }
    let k = full_blocks(fields.size);
    let at = staging_offset(k).ok_or_else(|| corrupt("staging area out of range"))?;
    let mut raw = vec![0u8; (n * STAGED_ENTRY_LEN) as usize];
    if read_full(file, &mut raw, at)? != raw.len() {
        return Err(corrupt("staged blocks are missing: the file was cut"));
    }
    for e in raw.chunks_exact_mut(STAGED_ENTRY_LEN as usize) {
        let mut idx = [0u8; 8];
        idx.copy_from_slice(&e[..8]);
        let idx = u64::from_be_bytes(idx);
        let sealed = &mut e[8..];
        c.aead
            .open_in_place(&block_aad(c.id(), idx), sealed)
            .map_err(|_| corrupt(format!("staged block {idx} failed authentication")))?;
        if idx >= k || out.contains_key(&idx) {
            return Err(corrupt(format!("staged block {idx} is out of place")));
        }
        out.insert(
            idx,
            Zeroizing::new(sealed[NONCE_LEN..NONCE_LEN + B as usize].to_vec()),
        );
    }
    Ok(out)
}

fn corrupt(what: impl Into<String>) -> ContentError {
    ContentError::Corrupt(what.into())
}

/// Opens the record in `slot`'s bytes, if it authenticates.
fn open_slot(c: &FileCipher, raw: &[u8]) -> Option<(RecordFields, Zeroizing<Vec<u8>>)> {
    let head: &[u8; RECORD_FIELDS_LEN] = raw.get(..RECORD_FIELDS_LEN)?.try_into().ok()?;
    let fields = RecordFields::decode(head);
    let end = fields.slot_len();
    let sealed = raw.get(RECORD_FIELDS_LEN..end)?;
    let tail = c.aead.open(&fields.aad(c.id()), sealed).ok()?;
    Some((fields, Zeroizing::new(tail)))
}

/// Reads both slots and returns the record in force: of the valid ones, the
/// one a steady backing length names (the higher counter if both), or the
/// one with the higher counter if the length is not steady.
fn load(file: &File, c: &FileCipher) -> Result<Record, ContentError> {
    let mut raw = vec![0u8; 2 * RECORD_SLOT_LEN as usize];
    let n = read_full(file, &mut raw, slot_offset(0))?;
    raw.truncate(n);
    let s = RECORD_SLOT_LEN as usize;
    let slots = [
        open_slot(c, raw.get(..s.min(raw.len())).unwrap_or(&[])),
        open_slot(c, raw.get(s..).unwrap_or(&[])),
    ];
    if slots.iter().all(Option::is_none) {
        return Err(corrupt(
            "no size record authenticates (both slots damaged, or not a file of this group)",
        ));
    }
    let len = file.metadata()?.len();
    let steady = plaintext_size(len);
    let (slot, (fields, tail)) = slots
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().map(|r| (i, r.clone())))
        .filter(|(_, r)| steady.is_none_or(|size| r.0.size == size))
        .max_by_key(|(i, r)| (r.0.counter, usize::from(*i == 0)))
        .ok_or_else(|| {
            corrupt(format!(
                "the backing length says {} bytes but no size record does: the file was cut or padded",
                steady.unwrap_or(0)
            ))
        })?;
    if fields.flags & !KNOWN_FLAGS != 0 {
        return Err(corrupt(format!(
            "size record has unknown flags {:#x} (written by a newer tresor?)",
            fields.flags
        )));
    }
    let mirrored = matches!(&slots, [Some(a), Some(b)] if a.0 == b.0 && a.1 == b.1);
    let other_newer = slots[1 - slot]
        .as_ref()
        .is_some_and(|o| o.0.counter > fields.counter);
    let staged = load_staged(file, c, &fields)?;
    Ok(Record {
        slot,
        fields,
        tail,
        mirrored,
        other_newer,
        stale_tail: steady.is_none(),
        staged,
        // What was just read, under the caller's lock: reading it again
        // for the snapshot would cost a read and a stat per open.
        seen: Some(Snapshot { len, slots: raw }),
    })
}

/// After a crash the backing length may not be steady: sets it to what the
/// record in force calls for (`file` must be writable), so `stat` shows the
/// size again without reading the record. Returns the plaintext size.
pub(super) fn settle(file: &File, c: &FileCipher) -> Result<u64, ContentError> {
    with_record(file, c, |rec| {
        if !rec.staged.is_empty() && replay_staged(file, c, rec).is_err() {
            // A read-only descriptor: readers use the staged blocks.
            return Ok(rec.size());
        }
        if rec.stale_tail {
            let need = steady_len(rec.size())?;
            let have_blocks = dirty_len(full_blocks(rec.size())).unwrap_or(u64::MAX);
            // Only through a writable descriptor; a read-only one leaves
            // the repair to the next writer.
            if file.metadata()?.len() >= have_blocks && super::set_len(file, need).is_ok() {
                rec.stale_tail = false;
            }
        }
        Ok(rec.size())
    })
}

fn steady_len(size: u64) -> Result<u64, ContentError> {
    ciphertext_size(size).ok_or_else(|| ContentError::Io(io::Error::from_raw_os_error(libc::EFBIG)))
}

/// Runs `f` on the record in force (read from disk on first use, and
/// again whenever another mount changed the file since; the caller holds
/// the backing file's lock). If `f` fails, the cached record is dropped, so
/// the next call reads the slots again and re-checks the backing length.
fn with_record<T>(
    file: &File,
    c: &FileCipher,
    f: impl FnOnce(&mut Record) -> Result<T, ContentError>,
) -> Result<T, ContentError> {
    let mut g = c.record_slot();
    refresh(&mut g, file, c, true)?;
    let rec = g.as_mut().ok_or_else(|| corrupt("size record missing"))?;
    let writes = super::backing_writes();
    let r = f(rec).and_then(|t| {
        if super::backing_writes() != writes || rec.seen.is_none() {
            rec.seen = Some(snapshot(file)?);
        }
        Ok(t)
    });
    if r.is_err() {
        *g = None;
    }
    r
}

/// Writes the header and record slot 0 of an empty file (counter 1).
pub(super) fn init_empty(file: &File, c: &FileCipher) -> Result<(), ContentError> {
    let fields = RecordFields {
        counter: 1,
        size: 0,
        flags: 0,
    };
    let mut buf = c.header.encode().to_vec();
    buf.extend_from_slice(&fields.encode());
    buf.extend(c.aead.seal(&fields.aad(c.id()), &[]));
    // Only called on a file just created empty, before it has a name
    // (`create_whole`): one write, the file's length stays FRESH_LEN.
    super::pwrite(file, &buf, 0)?;
    *c.record_slot() = Some(Record {
        slot: 0,
        fields,
        tail: Zeroizing::new(Vec::new()),
        mirrored: false,
        other_newer: false,
        stale_tail: false,
        staged: BTreeMap::new(),
        seen: None,
    });
    Ok(())
}

/// Plaintext size from the record in force.
pub(super) fn plain_size(file: &File, c: &FileCipher) -> Result<u64, ContentError> {
    with_record(file, c, |r| Ok(r.size()))
}

/// Writes a new record (counter + 1) into the slot not in force.
fn commit(
    file: &File,
    c: &FileCipher,
    rec: &mut Record,
    size: u64,
    flags: u32,
    tail: Zeroizing<Vec<u8>>,
) -> Result<(), ContentError> {
    debug_assert_eq!(tail.len(), tail_len(size));
    let fields = RecordFields {
        counter: rec
            .fields
            .counter
            .checked_add(1)
            .ok_or_else(|| corrupt("size record counter exhausted"))?,
        size,
        flags,
    };
    let slot = 1 - rec.slot;
    write_slot(file, c, slot, &fields, &tail)?;
    *rec = Record {
        slot,
        fields,
        tail,
        mirrored: false,
        other_newer: false,
        stale_tail: rec.stale_tail,
        staged: BTreeMap::new(),
        seen: None,
    };
    Ok(())
}

fn write_slot(
    file: &File,
    c: &FileCipher,
    slot: usize,
    fields: &RecordFields,
    tail: &[u8],
) -> Result<(), ContentError> {
    let mut buf = vec![0u8; fields.slot_len()];
    buf[..RECORD_FIELDS_LEN].copy_from_slice(&fields.encode());
    c.aead
        .seal_to_slice(&fields.aad(c.id()), tail, &mut buf[RECORD_FIELDS_LEN..]);
    super::pwrite(file, &buf, slot_offset(slot))?;
    Ok(())
}

/// Copies the record in force into the other slot (same counter), so both
/// hold it: before a sync, after which no single damaged slot can take the
/// file back behind what was synced.
pub(super) fn mirror(file: &File, c: &FileCipher) -> Result<(), ContentError> {
    let mut g = c.record_slot();
    if let Err(e) = refresh(&mut g, file, c, false) {
        *g = None;
        return Err(e);
    }
    let Some(rec) = g.as_mut() else {
        // Never read through this cipher, so never changed through it.
        return Ok(());
    };
    if !rec.staged.is_empty() {
        if let Err(e) = replay_staged(file, c, rec) {
            *g = None;
            return Err(e);
        }
    }
    if rec.mirrored {
        return Ok(());
    }
    let r = (|| {
        // A new file's slot 1 lies past its length: writing it makes the
        // length non-steady, so make it steady again.
        let fresh = file.metadata()?.len() < crate::format::content::v2::DATA_START;
        write_slot(file, c, 1 - rec.slot, &rec.fields, &rec.tail)?;
        if fresh {
            super::set_len(file, steady_len(rec.size())?)?;
        }
        Ok(())
    })();
    match r.and_then(|()| snapshot(file)) {
        Ok(seen) => {
            rec.mirrored = true;
            rec.other_newer = false;
            rec.seen = Some(seen);
            Ok(())
        }
        Err(e) => {
            *g = None;
            Err(e)
        }
    }
}

fn all_zero(b: &[u8]) -> bool {
    b.iter().all(|x| *x == 0)
}

/// Reads and opens full blocks `first..=last` (all below the record's full
/// block count) into `out`, appending their plaintext.
fn read_blocks(
    file: &File,
    c: &FileCipher,
    (sparse, staged): (bool, &BTreeMap<u64, Zeroizing<Vec<u8>>>),
    first: u64,
    last: u64,
    out: &mut Vec<u8>,
) -> Result<(), ContentError> {
    let len = ((last - first + 1) * CT_BLOCK_SIZE) as usize;
    with_ct_scratch(len, |buf| {
        open_blocks(file, c, (sparse, staged), first, last, buf, out)
    })
}

fn open_blocks(
    file: &File,
    c: &FileCipher,
    (sparse, staged): (bool, &BTreeMap<u64, Zeroizing<Vec<u8>>>),
    first: u64,
    last: u64,
    buf: &mut [u8],
    out: &mut Vec<u8>,
) -> Result<(), ContentError> {
    let n = read_full(file, buf, block_offset(first))?;
    if n != buf.len() {
        let missing = first + (n as u64) / CT_BLOCK_SIZE;
        return Err(corrupt(format!(
            "block {missing} is missing: the file was cut"
        )));
    }
    // Each block is opened straight into its place in `out`: no copy of
    // the plaintext after the cipher.
    let base = out.len();
    out.resize(base + ((last - first + 1) * B) as usize, 0);
    if let Err(idx) = open_range(c, (sparse, staged), first, buf, &mut out[base..]) {
        // Nothing opened leaves with the error.
        out.truncate(base);
        return Err(corrupt(format!("block {idx} failed authentication")));
    }
    Ok(())
}

/// Opens the blocks from `first` whose ciphertext is `buf` (whole sealed
/// blocks) into `out` (whole plaintext blocks); the index of a block that
/// fails authentication is the error.
fn open_range(
    c: &FileCipher,
    (sparse, staged): (bool, &BTreeMap<u64, Zeroizing<Vec<u8>>>),
    first: u64,
    buf: &[u8],
    out: &mut [u8],
) -> Result<(), u64> {
    let blocks = buf
        .chunks_exact(CT_BLOCK_SIZE as usize)
        .zip(out.chunks_exact_mut(B as usize));
    for (idx, (sealed, dst)) in (first..).zip(blocks) {
        if let Some(p) = staged.get(&idx) {
            // The new version of a block whose overwrite a crash cut off.
            dst.copy_from_slice(p);
            continue;
        }
        if sparse && all_zero(sealed) {
            // A hole (format 2, flag "sparse"): reads as zeros (as resized).
            continue;
        }
        c.aead
            .open_to(&block_aad(c.id(), idx), sealed, dst)
            .map_err(|_| idx)?;
    }
    Ok(())
}

/// Reads up to `len` bytes at `off`.
pub(super) fn read_at(
    file: &File,
    c: &FileCipher,
    off: u64,
    len: usize,
) -> Result<Vec<u8>, ContentError> {
    // The tail part is copied under the record's lock; blocks are read after.
    let (size, sparse, tail_part, staged) = with_record(file, c, |r| {
        let size = r.size();
        let end = size.min(off.saturating_add(len as u64));
        let kb = full_blocks(size) * B;
        let tail_part = if end > kb && end > off {
            let lo = off.max(kb) - kb;
            Zeroizing::new(r.tail[lo as usize..(end - kb) as usize].to_vec())
        } else {
            Zeroizing::new(Vec::new())
        };
        // Only after a crash in an overwrite (rare): a copy.
        let staged = r.staged.clone();
        Ok((size, r.sparse(), tail_part, staged))
    })?;
    if off >= size || len == 0 {
        return Ok(Vec::new());
    }
    let end = size.min(off.saturating_add(len as u64));
    let kb = full_blocks(size) * B;
    let mut out = Vec::new();
    if off < kb {
        let bend = end.min(kb);
        let first = off / B;
        let last = (bend - 1) / B;
        out.reserve(((last - first + 1) * B) as usize + tail_part.len());
        read_blocks(file, c, (sparse, &staged), first, last, &mut out)?;
        // Opened whole blocks; keep [off, bend). A block-aligned read (the
        // kernel's readahead, `dd bs=1M`) moves nothing here.
        let skip = (off - first * B) as usize;
        out.truncate(skip + (bend - off) as usize);
        if skip > 0 {
            out.drain(..skip);
        }
    }
    out.extend_from_slice(&tail_part);
    Ok(out)
}

/// Writes `data` at `off`.
pub(super) fn write_at(
    file: &File,
    c: &FileCipher,
    off: u64,
    data: &[u8],
) -> Result<(), ContentError> {
    with_record(file, c, |rec| {
        let end = off + data.len() as u64;
        update(file, c, rec, rec.size().max(end), off, data)
    })
}

/// Sets the plaintext size.
pub(super) fn truncate(file: &File, c: &FileCipher, new: u64) -> Result<(), ContentError> {
    with_record(file, c, |rec| {
        if !rec.staged.is_empty() {
            replay_staged(file, c, rec)?;
        }
        let size = rec.size();
        if new >= size {
            if new == size {
                return Ok(());
            }
            return update(file, c, rec, new, new, &[]);
        }
        // Shrink: the new tail comes from the old tail or from a full block;
        // the record first, then the steady length that commits it (and
        // cuts the blocks no longer counted).
        let k_new = full_blocks(new);
        let t_new = tail_len(new);
        let tail = if k_new == full_blocks(size) {
            Zeroizing::new(rec.tail[..t_new].to_vec())
        } else if t_new > 0 {
            let mut p = Vec::with_capacity(B as usize);
            read_blocks(file, c, (rec.sparse(), &rec.staged), k_new, k_new, &mut p)?;
            p.truncate(t_new);
            Zeroizing::new(p)
        } else {
            Zeroizing::new(Vec::new())
        };
        let flags = if k_new == 0 {
            rec.base_flags() & !FLAG_SPARSE
        } else {
            rec.base_flags()
        };
        let need = steady_len(new)?;
        commit(file, c, rec, new, flags, tail)?;
        super::set_len(file, need)?;
        rec.stale_tail = false;
        Ok(())
    })
}

/// Writes the staged blocks of the record in force in place, then a record
/// without them (after a crash cut an overwrite off).
fn replay_staged(file: &File, c: &FileCipher, rec: &mut Record) -> Result<(), ContentError> {
    let mut sealed = vec![0u8; CT_BLOCK_SIZE as usize];
    for (idx, plain) in &rec.staged {
        c.aead
            .seal_to_slice(&block_aad(c.id(), *idx), plain, &mut sealed);
        super::pwrite(file, &sealed, block_offset(*idx))?;
    }
    let (size, flags, tail) = (rec.size(), rec.base_flags(), rec.tail.clone());
    commit(file, c, rec, size, flags, tail)?;
    super::set_len(file, steady_len(size)?)?;
    rec.stale_tail = false;
    Ok(())
}

/// Seals blocks `first..end` of the new state: the caller's data where it
/// covers a block, else the old content (a full block, the old tail, or
/// zeros past the old end) with the data laid over it.
fn seal_blocks(
    file: &File,
    c: &FileCipher,
    rec: &Record,
    (first, end): (u64, u64),
    (off, data): (u64, &[u8]),
    out: &mut [u8],
) -> Result<(), ContentError> {
    let k_old = full_blocks(rec.size());
    let data_end = off + data.len() as u64;
    let mut plain = Zeroizing::new(vec![0u8; B as usize]);
    debug_assert_eq!(out.len(), ((end - first) * CT_BLOCK_SIZE) as usize);
    for idx in first..end {
        let bstart = idx * B;
        let at = ((idx - first) * CT_BLOCK_SIZE) as usize;
        let aad = block_aad(c.id(), idx);
        if off <= bstart && data_end >= bstart + B {
            // Sealed straight from the caller's data: no copy.
            let from = (bstart - off) as usize;
            c.aead
                .seal_to_slice(&aad, &data[from..from + B as usize], &mut out[at..]);
            continue;
        }
        plain.fill(0);
        if idx < k_old {
            let mut old = Zeroizing::new(Vec::with_capacity(B as usize));
            read_blocks(file, c, (rec.sparse(), &rec.staged), idx, idx, &mut old)?;
            plain.copy_from_slice(&old);
        } else if idx == k_old {
            plain[..rec.tail.len()].copy_from_slice(&rec.tail);
        }
        let lo = off.max(bstart);
        let hi = data_end.min(bstart + B);
        if lo < hi {
            plain[(lo - bstart) as usize..(hi - bstart) as usize]
                .copy_from_slice(&data[(lo - off) as usize..(hi - off) as usize]);
        }
        c.aead.seal_to_slice(&aad, &plain, &mut out[at..]);
    }
    Ok(())
}

/// Makes the plaintext `[off, off + data.len())` equal `data`, zeros in any
/// gap after the old end, and the size `new_size` (`>=` the old size).
fn update(
    file: &File,
    c: &FileCipher,
    rec: &mut Record,
    new_size: u64,
    off: u64,
    data: &[u8],
) -> Result<(), ContentError> {
    if !rec.staged.is_empty() {
        replay_staged(file, c, rec)?;
    }
    let size = rec.size();
    debug_assert!(new_size >= size);
    let k_old = full_blocks(size);
    let k_new = full_blocks(new_size);
    let data_end = off + data.len() as u64;
    let need = steady_len(new_size)?;
    // 1. Full blocks of the new state that change: those the data touches,
    //    and block k_old if the old tail moves into it. Blocks wholly in the
    //    gap after the old end are not written: holes. Blocks below k_old
    //    are overwritten in place, staged first (FORMAT.md §5b.5).
    let mut ranges: Vec<(u64, u64)> = Vec::with_capacity(2);
    if k_new > k_old && !rec.tail.is_empty() {
        ranges.push((k_old, k_old + 1));
    }
    if !data.is_empty() && off / B < k_new {
        let r = (off / B, data_end.div_ceil(B).min(k_new));
        match ranges.last_mut() {
            Some(last) if r.0 <= last.1 && r.1 >= last.0 => {
                *last = (last.0.min(r.0), last.1.max(r.1));
            }
            Some(last) if r.1 < last.0 => ranges.insert(0, r),
            _ => ranges.push(r),
        }
    }
    let in_place: Vec<(u64, u64)> = ranges
        .iter()
        .filter(|r| r.0 < k_old)
        .map(|r| (r.0, r.1.min(k_old)))
        .collect();
    let fresh: Vec<(u64, u64)> = ranges
        .iter()
        .filter(|r| r.1 > k_old)
        .map(|r| (r.0.max(k_old), r.1))
        .collect();
    let staged_n: u64 = in_place.iter().map(|r| r.1 - r.0).sum();
    let written = |i: u64| ranges.iter().any(|r| r.0 <= i && i < r.1);
    if k_new > k_old || staged_n > 0 {
        // Room for the new blocks (and staged ones), at a length that is
        // not steady. If block k_old becomes a hole, or bytes of an update
        // that did not finish may lie past the old end, cut to the old
        // blocks first: the padding after them can hold old ciphertext (a
        // shrink only cuts), which must not show through a hole.
        if rec.other_newer {
            write_slot(file, c, 1 - rec.slot, &rec.fields, &rec.tail)?;
            rec.other_newer = false;
            rec.mirrored = true;
        }
        if k_new > k_old && (rec.stale_tail || !written(k_old)) {
            super::set_len(file, dirty_len(k_old).unwrap_or(0))?;
        }
        // The whole room first: a block write that extends the file and is
        // cut short could otherwise leave a length that looks steady.
        let staged_blocks = (staged_n * STAGED_ENTRY_LEN).div_ceil(CT_BLOCK_SIZE);
        let room = if staged_n > 0 {
            k_new + 1 + staged_blocks
        } else {
            k_new
        };
        super::set_len(
            file,
            dirty_len(room).ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?,
        )?;
        rec.stale_tail = true;
    }
    let written_after_old_end: u64 = fresh.iter().map(|(a, b)| b - a).sum();
    let mut flags = rec.base_flags();
    if k_new - k_old > written_after_old_end {
        flags |= FLAG_SPARSE;
    }
    for &(first, end) in &fresh {
        let mut chunk = first;
        while chunk < end {
            let chunk_end = end.min(chunk + CHUNK_BLOCKS);
            let len = ((chunk_end - chunk) * CT_BLOCK_SIZE) as usize;
            let rec = &*rec;
            with_ct_scratch(len, |sealed| -> Result<(), ContentError> {
                seal_blocks(file, c, rec, (chunk, chunk_end), (off, data), sealed)?;
                super::pwrite(file, sealed, block_offset(chunk))?;
                Ok(())
            })?;
            chunk = chunk_end;
        }
    }
    // Overwrites in place: the new blocks go to the staging area first.
    let mut in_place_sealed = Vec::with_capacity(in_place.len());
    if staged_n > 0 {
        let mut entries = Vec::with_capacity((staged_n * STAGED_ENTRY_LEN) as usize);
        for &(first, end) in &in_place {
            let mut blocks = vec![0u8; ((end - first) * CT_BLOCK_SIZE) as usize];
            seal_blocks(file, c, rec, (first, end), (off, data), &mut blocks)?;
            for (i, b) in blocks.chunks_exact(CT_BLOCK_SIZE as usize).enumerate() {
                entries.extend_from_slice(&(first + i as u64).to_be_bytes());
                entries.extend_from_slice(b);
            }
            in_place_sealed.push((first, blocks));
        }
        let at = staging_offset(k_new).ok_or_else(|| corrupt("staging area out of range"))?;
        super::pwrite(file, &entries, at)?;
    }

    // 2. The new tail.
    let t_new = tail_len(new_size);
    let kb = k_new * B;
    let tail_touched = data_end > kb && off < new_size;
    let mut tail = Zeroizing::new(vec![0u8; t_new]);
    if k_new == k_old {
        let keep = rec.tail.len().min(t_new);
        tail[..keep].copy_from_slice(&rec.tail[..keep]);
    }
    if tail_touched {
        let lo = off.max(kb);
        tail[(lo - kb) as usize..(data_end - kb) as usize]
            .copy_from_slice(&data[(lo - off) as usize..(data_end - off) as usize]);
    }

    // 3. The record; with staged blocks, then the blocks in place and a
    //    record without them; then (if the size changed or the length is
    //    not steady) the steady length.
    if staged_n > 0 {
        let count = u32::try_from(staged_n)
            .ok()
            .filter(|n| *n < 1 << (32 - STAGED_SHIFT))
            .ok_or_else(|| corrupt("too many blocks in one overwrite"))?;
        commit(
            file,
            c,
            rec,
            new_size,
            flags | (count << STAGED_SHIFT),
            tail.clone(),
        )?;
        for (first, blocks) in &in_place_sealed {
            super::pwrite(file, blocks, block_offset(*first))?;
        }
        commit(file, c, rec, new_size, flags, tail)?;
    } else if new_size != size || tail_touched || flags != rec.fields.flags {
        commit(file, c, rec, new_size, flags, tail)?;
    }
    if new_size != size || rec.stale_tail {
        super::set_len(file, need)?;
        rec.stale_tail = false;
    }
    Ok(())
}

/// `SEEK_DATA` / `SEEK_HOLE` from plaintext offset `off`: holes are the
/// full blocks whose backing bytes are wholly a hole of the backing file;
/// the tail (in the record) is data; the end of the file is a hole.
pub(super) fn seek(file: &File, c: &FileCipher, off: u64, data: bool) -> Result<u64, ContentError> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    let (size, sparse) = with_record(file, c, |r| Ok((r.size(), r.sparse())))?;
    let nxio = || ContentError::Io(io::Error::from_raw_os_error(libc::ENXIO));
    if off >= size {
        return Err(nxio());
    }
    let k = full_blocks(size);
    if !sparse || off / B >= k {
        return Ok(if data { off } else { size });
    }
    let fd = file.as_raw_fd();
    // Backing offset of the next data (`SeekData`) or hole (`SeekHole`)
    // at or after `at`; `None` past the end.
    let find = |at: u64, whence: Whence| -> Result<Option<u64>, ContentError> {
        match lseek(fd, at as libc::off_t, whence) {
            Ok(p) => Ok(Some(p as u64)),
            Err(nix::Error::ENXIO) => Ok(None),
            Err(e) => Err(ContentError::Io(e.into())),
        }
    };
    let block_of = |pos: u64| (pos.saturating_sub(block_offset(0))) / CT_BLOCK_SIZE;
    // A block is a hole when its backing bytes are all zero (wholly a
    // backing hole, or sharing a filesystem block with a neighbour).
    let zero_block = |j: u64| -> Result<bool, ContentError> {
        let mut buf = vec![0u8; CT_BLOCK_SIZE as usize];
        let n = read_full(file, &mut buf, block_offset(j))?;
        Ok(all_zero(&buf[..n]))
    };
    let mut i = off / B;
    while i < k {
        if data {
            match find(block_offset(i), Whence::SeekData)? {
                Some(p) if block_of(p) < k => {
                    let j = block_of(p).max(i);
                    if zero_block(j)? {
                        i = j + 1;
                        continue;
                    }
                    return Ok((j * B).max(off));
                }
                _ => break,
            }
        }
        if zero_block(i)? {
            return Ok((i * B).max(off));
        }
        // The next backing hole after block i: its first block may be one.
        match find(block_offset(i + 1), Whence::SeekHole)? {
            Some(h) => i = block_of(h).max(i + 1),
            None => return Ok(size),
        }
    }
    if data {
        // No data in the full blocks from here: the tail, if any.
        return if tail_len(size) > 0 {
            Ok((k * B).max(off))
        } else {
            Err(nxio())
        };
    }
    Ok(size)
}

/// Reserves backing space for plaintext `[off, end)` (the file already
/// covers it): `fallocate` of the blocks' and both record slots' bytes, so
/// later writes there do not fail for want of space.
pub(super) fn reserve(file: &File, c: &FileCipher, off: u64, end: u64) -> Result<(), ContentError> {
    use std::os::fd::AsRawFd;
    let size = with_record(file, c, |r| Ok(r.size()))?;
    let k = full_blocks(size);
    let fd = file.as_raw_fd();
    let alloc = |at: u64, len: u64| -> Result<(), ContentError> {
        if len == 0 {
            return Ok(());
        }
        nix::fcntl::fallocate(
            fd,
            nix::fcntl::FallocateFlags::empty(),
            at as libc::off_t,
            len as libc::off_t,
        )
        .map_err(|e| ContentError::Io(e.into()))
    };
    let (first, last) = (off / B, end.div_ceil(B).min(k));
    if first < last {
        alloc(block_offset(first), (last - first) * CT_BLOCK_SIZE)?;
    }
    alloc(slot_offset(0), 2 * RECORD_SLOT_LEN)
}
