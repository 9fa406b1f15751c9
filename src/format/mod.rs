//! Versioned on-disk layouts: file header and blocks, directory ids, names,
//! the store manifest and key envelopes. No keys here — only bytes.
//!
//! docs/FORMAT.md specifies every layout byte by byte; keep them in step.

pub mod content;
pub mod manifest;
pub mod names;

/// Errors parsing on-disk data. Each says what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The bytes are not what the layout requires.
    #[error("{0}")]
    Corrupt(String),
    /// Written by a newer tresor.
    #[error(
        "{what} has format version {found}; this tresor reads up to {supported} — upgrade tresor"
    )]
    TooNew {
        /// What was being read.
        what: &'static str,
        /// Version found.
        found: u32,
        /// Highest version understood.
        supported: u32,
    },
}
