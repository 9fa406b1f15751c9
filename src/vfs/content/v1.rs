//! Content format 1: the last block carries a "last" flag; the size comes
//! from the backing length. Kept so that stores written before format 2
//! keep reading and writing (`tresor upgrade` converts them).

use super::{read_full, ContentError, FileCipher};
use crate::crypto::NONCE_LEN;
use crate::format::content::{
    block_aad, block_count, block_offset, block_plain_len, ciphertext_size, plaintext_size,
    BLOCK_OVERHEAD, BLOCK_SIZE, CT_BLOCK_SIZE, HEADER_LEN,
};
use std::fs::File;
use std::io;

/// Blocks processed per I/O call when writing long ranges (1 MiB).
const CHUNK_BLOCKS: u64 = 256;

/// Writes the header and one sealed empty last block: a new, empty file.
pub(super) fn init_empty(file: &File, c: &FileCipher) -> Result<(), ContentError> {
    let mut buf = vec![0u8; (HEADER_LEN + BLOCK_OVERHEAD) as usize];
    buf[..HEADER_LEN as usize].copy_from_slice(&c.header.encode());
    c.aead.seal_to_slice(
        &block_aad(c.id(), 0, true),
        &[],
        &mut buf[HEADER_LEN as usize..],
    );
    // Only called on a file just created empty: no truncation needed.
    super::pwrite(file, &buf, 0)?;
    Ok(())
}

/// Plaintext size of the backing file, from its length alone.
pub(super) fn plain_size(file: &File) -> Result<u64, ContentError> {
    let len = file.metadata()?.len();
    plaintext_size(len).ok_or_else(|| {
        ContentError::Corrupt(format!(
            "ciphertext length {len} matches no plaintext length (file cut or padded)"
        ))
    })
}

/// Reads and opens blocks `first..=last` of a file of `psize` bytes,
/// returning their plaintext back to back.
fn read_blocks(
    file: &File,
    c: &FileCipher,
    psize: u64,
    first: u64,
    last: u64,
) -> Result<Vec<u8>, ContentError> {
    let nblocks = block_count(psize);
    let ct_end = block_offset(last) + block_plain_len(psize, last) + BLOCK_OVERHEAD;
    let ct_start = block_offset(first);
    let mut buf = vec![0u8; (ct_end - ct_start) as usize];
    let n = read_full(file, &mut buf, ct_start)?;
    if n != buf.len() {
        return Err(ContentError::Corrupt(format!(
            "file shrank while reading (block {first}..{last})"
        )));
    }
    let mut out_len = 0usize;
    for idx in first..=last {
        let plen = block_plain_len(psize, idx) as usize;
        let at = ((idx - first) * CT_BLOCK_SIZE) as usize;
        let sealed = &mut buf[at..at + plen + BLOCK_OVERHEAD as usize];
        let aad = block_aad(c.id(), idx, idx + 1 == nblocks);
        c.aead
            .open_in_place(&aad, sealed)
            .map_err(|_| ContentError::Corrupt(format!("block {idx} failed authentication")))?;
        // Compact plaintext towards the front; regions never overlap wrongly
        // because out_len <= at.
        buf.copy_within(at + NONCE_LEN..at + NONCE_LEN + plen, out_len);
        out_len += plen;
    }
    buf.truncate(out_len);
    Ok(buf)
}

/// Reads up to `len` bytes at `off`. Short at end of file; empty past it.
pub(super) fn read_at(
    file: &File,
    c: &FileCipher,
    off: u64,
    len: usize,
) -> Result<Vec<u8>, ContentError> {
    let psize = plain_size(file)?;
    if off >= psize || len == 0 {
        // An empty file still has its sealed empty block: check it, so a
        // forged empty file is not served as valid.
        if psize == 0 {
            read_blocks(file, c, 0, 0, 0)?;
        }
        return Ok(Vec::new());
    }
    let end = psize.min(off.saturating_add(len as u64));
    let first = off / BLOCK_SIZE;
    let last = (end - 1) / BLOCK_SIZE;
    let mut plain = read_blocks(file, c, psize, first, last)?;
    let skip = (off - first * BLOCK_SIZE) as usize;
    let take = (end - off) as usize;
    if skip > 0 {
        plain.copy_within(skip..skip + take, 0);
    }
    plain.truncate(take);
    Ok(plain)
}

/// Writes `data` at `off`, zero-filling any gap after the current end.
pub(super) fn write_at(
    file: &File,
    c: &FileCipher,
    off: u64,
    data: &[u8],
) -> Result<(), ContentError> {
    if data.is_empty() {
        return Ok(());
    }
    let psize = plain_size(file)?;
    let end = off
        .checked_add(data.len() as u64)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
    rewrite(file, c, psize, psize.max(end), off, data)
}

/// Sets the plaintext size: cuts and re-seals the new last block, or
/// extends with zeros (sealed like any data — a hole is never stored as
/// an unauthenticated gap).
pub(super) fn truncate(file: &File, c: &FileCipher, new: u64) -> Result<(), ContentError> {
    let psize = plain_size(file)?;
    if new == psize {
        return Ok(());
    }
    if new > psize {
        return rewrite(file, c, psize, new, new, &[]);
    }
    let idx = if new == 0 { 0 } else { (new - 1) / BLOCK_SIZE };
    let keep = (new - idx * BLOCK_SIZE) as usize;
    let plain = if keep == 0 {
        Vec::new()
    } else {
        let mut p = read_blocks(file, c, psize, idx, idx)?;
        p.truncate(keep);
        p
    };
    let mut sealed = vec![0u8; keep + BLOCK_OVERHEAD as usize];
    c.aead
        .seal_to_slice(&block_aad(c.id(), idx, true), &plain, &mut sealed);
    // Write the new last block before cutting: a crash in between leaves
    // a file whose tail fails authentication (EIO), never wrong plaintext.
    super::pwrite(file, &sealed, block_offset(idx))?;
    super::set_len(file, ciphertext_size(new))?;
    Ok(())
}

/// Makes the plaintext `[off, off + data.len())` equal `data`, zeros in
/// `[psize, off)`, and the file `new_psize` long (`new_psize >= psize`).
fn rewrite(
    file: &File,
    c: &FileCipher,
    psize: u64,
    new_psize: u64,
    off: u64,
    data: &[u8],
) -> Result<(), ContentError> {
    let old_n = block_count(psize);
    let new_n = block_count(new_psize);
    let data_end = off + data.len() as u64;
    let mut first = off.min(psize) / BLOCK_SIZE;
    if new_n > old_n {
        // The old last block loses its "last" flag.
        first = first.min(old_n - 1);
    }
    let last = if new_psize > psize {
        new_n - 1
    } else {
        (data_end - 1) / BLOCK_SIZE
    };
    // Buffers sized to the request: a 1 KiB write must not zero megabytes.
    let blocks = (last - first + 1).min(CHUNK_BLOCKS);
    let mut plain = vec![0u8; BLOCK_SIZE as usize];
    let mut sealed = vec![0u8; (blocks * CT_BLOCK_SIZE) as usize];
    let mut chunk = first;
    while chunk <= last {
        let chunk_last = last.min(chunk + CHUNK_BLOCKS - 1);
        let mut sealed_len = 0usize;
        for idx in chunk..=chunk_last {
            let bstart = idx * BLOCK_SIZE;
            let new_len = block_plain_len(new_psize, idx) as usize;
            let aad = block_aad(c.id(), idx, idx + 1 == new_n);
            let covered = off <= bstart && data_end >= bstart + new_len as u64;
            if covered {
                // Sealed straight from the caller's data: no copy.
                let from = (bstart - off) as usize;
                sealed_len += c.aead.seal_to_slice(
                    &aad,
                    &data[from..from + new_len],
                    &mut sealed[sealed_len..],
                );
                continue;
            }
            // A partly written block: old content (or zeros past the old end), then the data.
            let p = &mut plain[..new_len];
            p.fill(0);
            if block_plain_len(psize, idx) > 0 {
                let old = read_blocks(file, c, psize, idx, idx)?;
                p[..old.len()].copy_from_slice(&old);
            }
            // Overlay the part of `data` that falls into this block.
            let lo = off.max(bstart);
            let hi = data_end.min(bstart + new_len as u64);
            if lo < hi {
                p[(lo - bstart) as usize..(hi - bstart) as usize]
                    .copy_from_slice(&data[(lo - off) as usize..(hi - off) as usize]);
            }
            sealed_len += c.aead.seal_to_slice(&aad, p, &mut sealed[sealed_len..]);
        }
        super::pwrite(file, &sealed[..sealed_len], block_offset(chunk))?;
        chunk = chunk_last + 1;
    }
    Ok(())
}
