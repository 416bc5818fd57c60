//! The gcloud-shaped CLI: `perch iot …` and `perch pubsub …` against a running server's admin REST API.
//!
//! Every command resolves the endpoint (`--endpoint`, `PERCH_ENDPOINT`, or
//! `DIR/endpoints.json`) and token (`PERCH_TOKEN` or `DIR/admin-token`), prints a table (or
//! `--format json`), and turns an API error into one line on stderr and exit code 1.

pub mod client;
pub mod iot;
mod names;
pub mod output;
pub mod provision;
pub mod pubsub;
pub mod telemetry;

pub use names::RegistryRef;

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Admin endpoint, e.g. http://127.0.0.1:8080 (default: from DIR/endpoints.json)
    #[arg(long, env = "PERCH_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// Data dir of the server, to find endpoints.json and admin-token
    #[arg(
        long,
        env = "PERCH_DATA_DIR",
        default_value = "perch-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Project id used in resource names
    #[arg(long, env = "PERCH_PROJECT", default_value = "perch", global = true)]
    pub project: String,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    pub format: Format,
}
