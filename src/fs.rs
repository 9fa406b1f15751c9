//! fs (in progress)
