//! File contents: a 28-byte header, then blocks of up to 4 KiB plaintext,
//! each stored as `nonce (12) || ciphertext || tag (16)`.
//!
//! Two layouts share the header. Format 1 (this module's free functions):
//! every file has at least one block, an empty file is the header plus one
//! sealed empty block, and the last block carries a "last" flag in its
//! associated data, so cutting a file at a block boundary is detected; an
//! append must re-seal the old last block in place. Format 2 ([`v2`]) moves
//! the end-of-file evidence into a two-slot authenticated size record, so no
//! update rewrites a byte that holds durable data outside the record slot
//! not in force. In both, the plaintext size follows from the ciphertext
//! size alone ([`plaintext_size`], [`v2::plaintext_size`]).

pub mod v2;

use super::FormatError;

/// Magic bytes at the start of every encrypted file.
pub const MAGIC: [u8; 4] = *b"TRSR";
/// Content format 1 (the last-block flag layout).
pub const VERSION_1: u16 = 1;
/// Highest content format this tresor reads; new files of stores with the
/// `content-v2` feature are written in it.
pub const VERSION: u16 = v2::VERSION;
/// Header length in bytes.
pub const HEADER_LEN: u64 = 28;
/// Plaintext bytes per block.
pub const BLOCK_SIZE: u64 = 4096;
/// Per-block overhead: nonce and tag.
pub const BLOCK_OVERHEAD: u64 = 28;
/// Ciphertext bytes of a full block.
pub const CT_BLOCK_SIZE: u64 = BLOCK_SIZE + BLOCK_OVERHEAD;
/// Length of the random file id.
pub const FILE_ID_LEN: usize = 16;
/// Length of a block's associated data.
pub const AAD_LEN: usize = 4 + FILE_ID_LEN + 8 + 1;

/// The parsed file header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileHeader {
    /// Content format: [`VERSION_1`] or [`v2::VERSION`].
    pub version: u16,
    /// Which key epoch of the data group sealed this file.
    pub epoch: u32,
    /// Random per-file id: input to the per-file key and every block's AAD.
    pub file_id: [u8; FILE_ID_LEN],
}

impl FileHeader {
    /// A header of content format `version` (1 or 2).
    pub fn new(version: u16, epoch: u32, file_id: [u8; FILE_ID_LEN]) -> Self {
        FileHeader {
            version,
            epoch,
            file_id,
        }
    }

    /// Serialises: magic, version (u16 BE), flags (u16 BE, 0), epoch (u32 BE), file id.
    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.version.to_be_bytes());
        b[6..8].copy_from_slice(&0u16.to_be_bytes());
        b[8..12].copy_from_slice(&self.epoch.to_be_bytes());
        b[12..28].copy_from_slice(&self.file_id);
        b
    }

    /// Parses a header, refusing a wrong magic, a newer version or unknown flags.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() < HEADER_LEN as usize {
            return Err(FormatError::Corrupt(format!(
                "file header is {} bytes, expected {HEADER_LEN}",
                b.len()
            )));
        }
        if b[0..4] != MAGIC {
            return Err(FormatError::Corrupt("file header has a wrong magic".into()));
        }
        let version = u16::from_be_bytes([b[4], b[5]]);
        if version > VERSION {
            return Err(FormatError::TooNew {
                what: "encrypted file",
                found: version.into(),
                supported: VERSION.into(),
            });
        }
        if version == 0 {
            return Err(FormatError::Corrupt("file header has version 0".into()));
        }
        let flags = u16::from_be_bytes([b[6], b[7]]);
        if flags != 0 {
            return Err(FormatError::Corrupt(format!(
                "file header has unknown flags {flags:#06x}"
            )));
        }
        let epoch = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        let mut file_id = [0u8; FILE_ID_LEN];
        file_id.copy_from_slice(&b[12..28]);
        Ok(FileHeader {
            version,
            epoch,
            file_id,
        })
    }
}

/// Associated data of block `index`: `"TRB1" || file id || index (u64 BE) || last (0/1)`.
pub fn block_aad(file_id: &[u8; FILE_ID_LEN], index: u64, last: bool) -> [u8; AAD_LEN] {
    let mut a = [0u8; AAD_LEN];
    a[0..4].copy_from_slice(b"TRB1");
    a[4..20].copy_from_slice(file_id);
    a[20..28].copy_from_slice(&index.to_be_bytes());
    a[28] = u8::from(last);
    a
}

/// Number of blocks a file of `plain` bytes has (at least one).
pub fn block_count(plain: u64) -> u64 {
    plain.div_ceil(BLOCK_SIZE).max(1)
}

/// Offset of block `index` in the ciphertext file.
pub fn block_offset(index: u64) -> u64 {
    HEADER_LEN + index * CT_BLOCK_SIZE
}

/// Ciphertext file size for `plain` bytes of plaintext.
pub fn ciphertext_size(plain: u64) -> u64 {
    HEADER_LEN + block_count(plain) * BLOCK_OVERHEAD + plain
}

/// Plaintext size for a ciphertext file of `cipher` bytes, or `None` if no
/// plaintext size maps to it (the file was cut or padded).
pub fn plaintext_size(cipher: u64) -> Option<u64> {
    let body = cipher.checked_sub(HEADER_LEN)?;
    let full = body / CT_BLOCK_SIZE;
    let rem = body % CT_BLOCK_SIZE;
    match (full, rem) {
        (0, r) if r == BLOCK_OVERHEAD => Some(0),
        (f, 0) if f > 0 => Some(f * BLOCK_SIZE),
        (f, r) if r > BLOCK_OVERHEAD => Some(f * BLOCK_SIZE + r - BLOCK_OVERHEAD),
        _ => None,
    }
}

/// Plaintext length of block `index` in a file of `plain` bytes.
pub fn block_plain_len(plain: u64, index: u64) -> u64 {
    let start = index * BLOCK_SIZE;
    plain.saturating_sub(start).min(BLOCK_SIZE)
}

/// Directory-id file `tresor.dirid`: `"TRSD" || version u16 BE || flags u16 BE || epoch u32 BE || dir id (16)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirId {
    /// Key epoch whose name key encrypts this directory's entries.
    pub epoch: u32,
    /// Random directory id: bound into every entry name's encryption.
    pub id: [u8; 16],
}

/// Length of a `tresor.dirid` file.
pub const DIRID_LEN: usize = 28;

impl DirId {
    /// Serialises the directory id file.
    pub fn encode(&self) -> [u8; DIRID_LEN] {
        let mut b = [0u8; DIRID_LEN];
        b[0..4].copy_from_slice(b"TRSD");
        b[4..6].copy_from_slice(&1u16.to_be_bytes());
        b[8..12].copy_from_slice(&self.epoch.to_be_bytes());
        b[12..28].copy_from_slice(&self.id);
        b
    }

    /// Parses a directory id file.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() != DIRID_LEN || b[0..4] != *b"TRSD" {
            return Err(FormatError::Corrupt(
                "directory id file is malformed".to_string(),
            ));
        }
        let version = u16::from_be_bytes([b[4], b[5]]);
        if version > 1 {
            return Err(FormatError::TooNew {
                what: "directory id",
                found: version.into(),
                supported: 1,
            });
        }
        if version == 0 || b[6..8] != [0, 0] {
            return Err(FormatError::Corrupt(
                "directory id file has a bad version or flags".into(),
            ));
        }
        let epoch = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[12..28]);
        Ok(DirId { epoch, id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_at_the_edges() {
        assert_eq!(ciphertext_size(0), 28 + 28);
        assert_eq!(plaintext_size(56), Some(0));
        assert_eq!(ciphertext_size(1), 28 + 28 + 1);
        assert_eq!(ciphertext_size(4096), 28 + 4124);
        assert_eq!(ciphertext_size(4097), 28 + 4124 + 29);
        assert_eq!(plaintext_size(28), None, "header only: cut");
        assert_eq!(plaintext_size(0), None);
        assert_eq!(
            plaintext_size(28 + 4124 + 28),
            None,
            "empty block after full one"
        );
        assert_eq!(
            plaintext_size(28 + 10),
            None,
            "shorter than one block overhead"
        );
    }

    proptest! {
        #[test]
        fn size_mapping_roundtrips(p in 0u64..(1u64 << 40)) {
            prop_assert_eq!(plaintext_size(ciphertext_size(p)), Some(p));
        }

        #[test]
        fn header_roundtrips(epoch: u32, id: [u8; 16]) {
            let h = FileHeader { version: 1 + u16::from(epoch % 2 == 0), epoch, file_id: id };
            prop_assert_eq!(FileHeader::decode(&h.encode()).unwrap(), h);
        }
    }

    #[test]
    fn header_refuses_newer_version_and_flags() {
        let mut b = FileHeader {
            version: 2,
            epoch: 1,
            file_id: [7; 16],
        }
        .encode();
        b[5] = 9;
        assert!(matches!(
            FileHeader::decode(&b),
            Err(FormatError::TooNew { found: 9, .. })
        ));
        let mut b = FileHeader {
            version: 2,
            epoch: 1,
            file_id: [7; 16],
        }
        .encode();
        b[7] = 1;
        assert!(FileHeader::decode(&b).is_err());
        assert!(FileHeader::decode(&b[..10]).is_err());
    }

    #[test]
    fn dirid_roundtrips() {
        let d = DirId {
            epoch: 3,
            id: [9; 16],
        };
        assert_eq!(DirId::decode(&d.encode()).unwrap(), d);
        assert!(DirId::decode(b"garbage").is_err());
    }
}
