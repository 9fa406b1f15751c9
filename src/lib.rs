//! tresor — an encrypted data-group store with a transparent FUSE mount,
//! and a sandbox launcher for untrusted analyses.
//!
//! Module map (each a boundary testable on its own):
//! - [`format`]: on-disk layouts, no keys;
//! - [`crypto`]: the only user of the cipher, KDF and RSA crates;
//! - [`pse`]: the personal secure environment (passphrase-sealed key file);
//! - [`store`]: the store on disk — manifest, data groups, key envelopes;
//! - [`vfs`]: the filesystem engine, plain Rust, no FUSE types;
//! - [`fs`]: the FUSE adapter (fuser) — thin;
//! - [`session`]: login, lock, user switch and the control socket of a mount;
//! - [`sandbox`]: profiling and confining untrusted analyses;
//! - [`service`]: the analysis service — submit, approve, run, release;
//! - [`signature`]: signed documents (detached `.sig` files) and their checks;
//! - [`slide`]: pyramidal tiled TIFF writer and reader for virtual slides;
//! - [`cli`]: the command line.

pub mod admin;
pub mod cli;
pub mod crypto;
pub mod directory;
pub mod format;
pub mod fs;
pub mod keyring;
pub mod mountinfo;
pub mod prompt;
pub mod pse;
pub mod rekey;
pub mod sandbox;
pub mod service;
pub mod session;
pub mod signature;
pub mod slide;
pub mod store;
pub mod token;
pub mod vfs;

/// Unit tests get their own HOME and XDG directories, set before `main`
/// while the test process has one thread: directory reads record versions
/// in `XDG_STATE_HOME`, and nothing a test does may reach the real home.
#[cfg(test)]
mod test_env {
    #[used]
    #[link_section = ".init_array"]
    static ISOLATE: extern "C" fn() = isolate;

    extern "C" fn isolate() {
        let root = tempfile::Builder::new()
            .prefix("tresor-unit-")
            .tempdir()
            .expect("create the unit tests' temp dir")
            .keep();
        for (k, sub) in [
            ("HOME", "home"),
            ("XDG_STATE_HOME", "state"),
            ("XDG_RUNTIME_DIR", "run"),
            ("XDG_CONFIG_HOME", "config"),
            ("XDG_CACHE_HOME", "cache"),
        ] {
            let d = root.join(sub);
            std::fs::create_dir_all(&d).expect("create the unit tests' env dir");
            std::env::set_var(k, &d);
        }
        std::env::set_var("TRESOR_RUNTIME_DIR", root.join("run").join("tresor"));
    }
}
