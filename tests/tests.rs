//! One integration-test binary (as ripgrep): a module per area.

mod util;

mod access;
mod cli;
mod coherence;
mod demo;
mod docs;
mod durability;
mod escape;
mod fsx;
mod login;
mod mount;
mod policy;
mod posix;
mod profile;
mod readme;
mod rekey;
mod rollback;
mod run;
mod service;
mod session;
mod sign;
mod slides;
mod token;
mod vectors;
