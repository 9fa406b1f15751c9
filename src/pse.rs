//! pse (in progress)
