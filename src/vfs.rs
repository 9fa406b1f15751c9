//! vfs (in progress)
