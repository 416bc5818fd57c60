//! The `perch` binary's library: the composition root (`serve`), the admin web surface, the
//! data dir, TLS material, the gcloud-shaped CLI and the `perch bench` shim.
//!
//! This is the only crate that binds sockets, reads config and uses `anyhow`; the libraries
//! below it take listeners and return services.

pub mod admin;
pub mod bench_shim;
pub mod cli;
pub mod datadir;
mod fd_limit;
pub mod http_server;
pub mod scrape;
pub mod serve;
pub mod tls;

pub use serve::{Listeners, ServeConfig, serve};
