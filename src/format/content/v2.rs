//! Content format 2: the end-of-file evidence lives in an authenticated
//! size record, kept in two slots, instead of in the data blocks.
//!
//! ```text
//! header (28) || record slot 0 (4144) || record slot 1 (4144) || full block 0 || … || full block k-1 || padding (t)
//! ```
//!
//! * Full blocks hold exactly 4096 plaintext bytes; block `i` is sealed with
//!   the AAD `"TRB2" || file id || i (u64)` and never carries a "last" flag,
//!   so appending never rewrites a block that holds data.
//! * The plaintext size, a counter, flags and the *tail* (the last
//!   `size mod 4096` bytes, 0–4095) live in a record. An update writes the
//!   slot that does not hold the current record, with the counter + 1; a
//!   reader takes the valid slot with the highest counter. A torn record
//!   write fails authentication and leaves the previous record in force.
//! * At rest the backing length is `DATA_START + k·4124 + t + 1`
//!   (`k = size div 4096`, `t = size mod 4096`; the last `t + 1` bytes are
//!   padding, never read), so `stat` derives the size from the length
//!   without a key; a length of any other form means an update was in
//!   flight (or tampering), and then the record alone decides.
//!
//! docs/FORMAT.md §5b specifies this byte by byte with the crash reasoning.

use super::{BLOCK_OVERHEAD, BLOCK_SIZE, CT_BLOCK_SIZE, FILE_ID_LEN, HEADER_LEN};

/// Content format version of this layout.
pub const VERSION: u16 = 2;
/// Clear fields of a record: counter (u64), size (u64), flags (u32).
pub const RECORD_FIELDS_LEN: usize = 20;
/// Bytes reserved for one record slot: fields, nonce, a tail of up to 4095
/// bytes, tag — rounded up to an even 4144.
pub const RECORD_SLOT_LEN: u64 = 4144;
/// Offset of the first full block.
pub const DATA_START: u64 = HEADER_LEN + 2 * RECORD_SLOT_LEN;
/// Backing length of a new, empty file: header and record slot 0 with an
/// empty tail.
pub const FRESH_LEN: u64 = HEADER_LEN + RECORD_FIELDS_LEN as u64 + BLOCK_OVERHEAD;
/// Length of a record's associated data.
pub const RECORD_AAD_LEN: usize = 4 + FILE_ID_LEN + 8 + 8 + 4;
/// Length of a block's associated data.
pub const BLOCK_AAD_LEN: usize = 4 + FILE_ID_LEN + 8;
/// Record flag: the file may hold holes — a full block whose 4124
/// ciphertext bytes are all zero reads as 4096 zero bytes.
pub const FLAG_SPARSE: u32 = 1;
/// Record flags bits 8–31: how many *staged* blocks the record counts
/// (FORMAT.md §5b.5): new versions of full blocks being overwritten in
/// place, stored past the blocks until the overwrite is done.
pub const STAGED_SHIFT: u32 = 8;
/// Every flag bit this tresor knows.
pub const KNOWN_FLAGS: u32 = FLAG_SPARSE | (u32::MAX << STAGED_SHIFT);
/// Bytes of one staged entry: the block index (u64 BE) and the sealed block.
pub const STAGED_ENTRY_LEN: u64 = 8 + CT_BLOCK_SIZE;

/// Staged blocks a record's flags count.
pub fn staged_count(flags: u32) -> u64 {
    u64::from(flags >> STAGED_SHIFT)
}

/// Offset of the staged entries of a record whose size has `blocks` full
/// blocks: one block slot past them (past the tail's padding).
pub fn staging_offset(blocks: u64) -> Option<u64> {
    dirty_len(blocks.checked_add(1)?)
}

/// Offset of record slot `slot` (0 or 1).
pub fn slot_offset(slot: usize) -> u64 {
    HEADER_LEN + slot as u64 * RECORD_SLOT_LEN
}

/// Offset of full block `index`.
pub fn block_offset(index: u64) -> u64 {
    DATA_START + index * CT_BLOCK_SIZE
}

/// Number of full blocks of a file of `plain` bytes.
pub fn full_blocks(plain: u64) -> u64 {
    plain / BLOCK_SIZE
}

/// Length of the tail (kept in the record) of a file of `plain` bytes.
pub fn tail_len(plain: u64) -> usize {
    (plain % BLOCK_SIZE) as usize
}

/// Backing length of a file of `plain` bytes at rest ("steady"):
/// `DATA_START + k·4124 + t + 1` (`None` past u64). The `+ 1` keeps every
/// steady length off the multiples of a block that an update in flight
/// passes through (`DATA_START + j·4124`, [`dirty_len`]).
pub fn ciphertext_size(plain: u64) -> Option<u64> {
    full_blocks(plain)
        .checked_mul(CT_BLOCK_SIZE)?
        .checked_add(DATA_START + tail_len(plain) as u64 + 1)
}

/// The length an update that needs room for `blocks` full blocks sets
/// first: not steady, so a crash there makes readers ask the record.
pub fn dirty_len(blocks: u64) -> Option<u64> {
    blocks.checked_mul(CT_BLOCK_SIZE)?.checked_add(DATA_START)
}

/// Plaintext size of a steady backing length, or `None` for any other
/// length (an update in flight at a crash, or tampering): then only the
/// record tells. The record is the authority either way; a steady length
/// must agree with it.
pub fn plaintext_size(cipher: u64) -> Option<u64> {
    if cipher == FRESH_LEN {
        // A new file: header and record slot 0 only, never grown.
        return Some(0);
    }
    let body = cipher.checked_sub(DATA_START)?;
    let rem = body % CT_BLOCK_SIZE;
    (1..=BLOCK_SIZE)
        .contains(&rem)
        .then(|| (body / CT_BLOCK_SIZE) * BLOCK_SIZE + rem - 1)
}

/// Associated data of full block `index`: `"TRB2" || file id || index (u64 BE)`.
pub fn block_aad(file_id: &[u8; FILE_ID_LEN], index: u64) -> [u8; BLOCK_AAD_LEN] {
    let mut a = [0u8; BLOCK_AAD_LEN];
    a[0..4].copy_from_slice(b"TRB2");
    a[4..20].copy_from_slice(file_id);
    a[20..28].copy_from_slice(&index.to_be_bytes());
    a
}

/// The clear fields of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordFields {
    /// +1 on every update; the valid slot with the higher one is current.
    pub counter: u64,
    /// Plaintext size of the file.
    pub size: u64,
    /// [`FLAG_SPARSE`] or 0.
    pub flags: u32,
}

impl RecordFields {
    /// `counter (u64 BE) || size (u64 BE) || flags (u32 BE)`.
    pub fn encode(&self) -> [u8; RECORD_FIELDS_LEN] {
        let mut b = [0u8; RECORD_FIELDS_LEN];
        b[0..8].copy_from_slice(&self.counter.to_be_bytes());
        b[8..16].copy_from_slice(&self.size.to_be_bytes());
        b[16..20].copy_from_slice(&self.flags.to_be_bytes());
        b
    }

    /// Parses the clear fields (no checks: the AAD authenticates them).
    pub fn decode(b: &[u8; RECORD_FIELDS_LEN]) -> Self {
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(x)
        };
        RecordFields {
            counter: u64_at(0),
            size: u64_at(8),
            flags: u32::from_be_bytes([b[16], b[17], b[18], b[19]]),
        }
    }

    /// Associated data of the sealed tail:
    /// `"TRR2" || file id || counter || size || flags`.
    pub fn aad(&self, file_id: &[u8; FILE_ID_LEN]) -> [u8; RECORD_AAD_LEN] {
        let mut a = [0u8; RECORD_AAD_LEN];
        a[0..4].copy_from_slice(b"TRR2");
        a[4..20].copy_from_slice(file_id);
        a[20..40].copy_from_slice(&self.encode());
        a
    }

    /// Bytes of the slot this record occupies: fields, nonce, tail, tag.
    pub fn slot_len(&self) -> usize {
        RECORD_FIELDS_LEN + BLOCK_OVERHEAD as usize + tail_len(self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_constants() {
        assert_eq!(DATA_START, 28 + 2 * 4144);
        assert_eq!(
            RecordFields {
                counter: 1,
                size: 4095,
                flags: 0
            }
            .slot_len() as u64,
            20 + 28 + 4095
        );
        const { assert!(20 + 28 + 4095 <= RECORD_SLOT_LEN) };
        assert_eq!(ciphertext_size(0), Some(DATA_START + 1));
        assert_eq!(ciphertext_size(4095), Some(DATA_START + 4096));
        assert_eq!(ciphertext_size(4096), Some(DATA_START + 4124 + 1));
        assert_eq!(ciphertext_size(6000), Some(DATA_START + 4124 + 1904 + 1));
        // The table of docs/FORMAT.md §5b.3.
        for (plain, len) in [
            (1, 8318),
            (4095, 12412),
            (4096, 12441),
            (6000, 14345),
            (10000, 18373),
        ] {
            assert_eq!(ciphertext_size(plain), Some(len), "{plain}");
            assert_eq!(plaintext_size(len), Some(plain), "{len}");
        }
        assert_eq!(plaintext_size(FRESH_LEN), Some(0));
        assert_eq!(FRESH_LEN, 76);
        assert_eq!(plaintext_size(FRESH_LEN + 1), None);
        assert_eq!(plaintext_size(DATA_START), None, "dirty: 0 blocks");
        assert_eq!(
            plaintext_size(dirty_len(3).unwrap()),
            None,
            "dirty: 3 blocks"
        );
        assert_eq!(
            plaintext_size(DATA_START + 4097),
            None,
            "inside a block's overhead"
        );
        assert_eq!(ciphertext_size(u64::MAX), None);
    }

    proptest! {
        #[test]
        fn size_mapping_roundtrips(p in 0u64..(1u64 << 52)) {
            prop_assert_eq!(plaintext_size(ciphertext_size(p).unwrap()), Some(p));
        }

        #[test]
        fn fields_roundtrip(counter: u64, size: u64, flags: u32) {
            let f = RecordFields { counter, size, flags };
            prop_assert_eq!(RecordFields::decode(&f.encode()), f);
        }
    }
}
