//! The analysis service (docs/SERVICE.md): researchers submit analyses over
//! a data group, a second person approves what was profiled, the job runs
//! confined, a checker releases its outputs, and the results extend the
//! sample records in the store — every step signed, stored and audited.
//!
//! - [`auth`]: signed requests, checked against the admin-signed directory;
//! - [`jobs`]: job states in SQLite;
//! - [`audit`]: the hash-chained, signed audit trail;
//! - [`checks`]: automatic output checks and disclosure rules;
//! - [`executor`]: where profiling runs and confined runs happen;
//! - [`server`]: the rules — who may do what, which state follows which;
//! - [`http`]: the HTTP transport (axum);
//! - [`client`]: the signing client behind `tresor submit`, `jobs`, ….

pub mod audit;
pub mod auth;
pub mod checks;
pub mod client;
pub mod executor;
pub mod http;
pub mod jobs;
pub mod server;
