//! Entry names in the ciphertext tree.
//!
//! A plaintext name is padded to a multiple of 16 bytes, sealed with the data
//! group's name key and a fixed nonce (deterministic, so lookups need no
//! directory scan), with the parent directory's id as associated data (so a
//! name moved to another directory does not decrypt), and written base64url
//! without padding. Encodings longer than [`MAX_ENCODED`] become
//! `tresor.long.<base64url(sha256(encoding))>` with the full encoding in a side
//! file `<that>.name`. Names beginning with `tresor.` never come from
//! encryption (base64url has no `.`), so they are safe to reserve.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Per-directory id file.
pub const DIRID_FILE: &str = "tresor.dirid";
/// Prefix of hashed long names.
pub const LONG_PREFIX: &str = "tresor.long.";
/// Suffix of the side file that holds a long name's full encoding.
pub const LONG_SUFFIX: &str = ".name";
/// Longest encoding stored as the backing name itself (NAME_MAX of Linux filesystems).
pub const MAX_ENCODED: usize = 255;
/// Longest plaintext name accepted (NAME_MAX).
pub const MAX_PLAIN: usize = 255;
/// Padding granule: hides a name's exact length.
pub const PAD: usize = 16;

/// Associated data for a name in directory `dir_id`.
pub fn name_aad(dir_id: &[u8; 16]) -> [u8; 20] {
    let mut a = [0u8; 20];
    a[0..4].copy_from_slice(b"TRN1");
    a[4..20].copy_from_slice(dir_id);
    a
}

/// Pads with 1..=16 bytes each holding the pad length (PKCS#7).
pub fn pad(name: &[u8]) -> Vec<u8> {
    let n = PAD - name.len() % PAD;
    let mut v = Vec::with_capacity(name.len() + n);
    v.extend_from_slice(name);
    v.resize(name.len() + n, n as u8);
    v
}

/// Removes PKCS#7 padding, or `None` if malformed.
pub fn unpad(padded: &[u8]) -> Option<&[u8]> {
    let n = usize::from(*padded.last()?);
    if n == 0 || n > PAD || n > padded.len() || padded.len() % PAD != 0 {
        return None;
    }
    let (body, tail) = padded.split_at(padded.len() - n);
    tail.iter().all(|&b| usize::from(b) == n).then_some(body)
}

/// base64url without padding.
pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Inverse of [`encode`].
pub fn decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

/// The backing name for an encoded name: itself, or its hashed long form.
pub fn backing_name(encoded: &str, sha256: impl Fn(&[u8]) -> [u8; 32]) -> String {
    if encoded.len() <= MAX_ENCODED {
        encoded.to_string()
    } else {
        format!("{LONG_PREFIX}{}", encode(&sha256(encoded.as_bytes())))
    }
}

/// What a backing directory entry is.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry<'a> {
    /// An encrypted name, to be decoded and opened.
    Short(&'a str),
    /// A hashed long name; its encoding is in the side file.
    Long(&'a str),
    /// Our own bookkeeping (dirid, long-name side files, temp files): hidden.
    Internal,
}

/// Classifies a backing directory entry.
pub fn classify(backing: &str) -> Entry<'_> {
    if let Some(rest) = backing.strip_prefix(LONG_PREFIX) {
        if rest.ends_with(LONG_SUFFIX) || rest.is_empty() {
            Entry::Internal
        } else {
            Entry::Long(backing)
        }
    } else if backing.starts_with("tresor.") || backing.starts_with('.') {
        Entry::Internal
    } else {
        Entry::Short(backing)
    }
}

/// Checks a plaintext name from a caller.
pub fn valid_plain(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PLAIN
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_roundtrip() {
        for len in 0..40 {
            let n = vec![b'a'; len];
            let p = pad(&n);
            assert_eq!(p.len() % PAD, 0);
            assert!(p.len() > n.len());
            assert_eq!(unpad(&p), Some(&n[..]));
        }
        assert_eq!(unpad(&[]), None);
        assert_eq!(unpad(&[0u8; 16]), None);
        assert_eq!(unpad(&[3u8; 15]), None);
    }

    #[test]
    fn classify_entries() {
        assert_eq!(classify("abcDEF-_"), Entry::Short("abcDEF-_"));
        assert_eq!(classify("tresor.dirid"), Entry::Internal);
        assert_eq!(classify("tresor.long.xyz"), Entry::Long("tresor.long.xyz"));
        assert_eq!(classify("tresor.long.xyz.name"), Entry::Internal);
        assert_eq!(classify(".tresor-tmp-1"), Entry::Internal);
    }

    #[test]
    fn long_names_hash() {
        let short = "a".repeat(255);
        assert_eq!(backing_name(&short, |_| [0; 32]), short);
        let long = "a".repeat(256);
        assert!(backing_name(&long, |_| [1; 32]).starts_with(LONG_PREFIX));
    }

    #[test]
    fn plain_name_rules() {
        assert!(valid_plain(b"record.txt"));
        assert!(!valid_plain(b""));
        assert!(!valid_plain(b".."));
        assert!(!valid_plain(b"a/b"));
        assert!(!valid_plain(&[b'x'; 256]));
    }
}
