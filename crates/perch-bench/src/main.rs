//! `perch-bench`: the benchmarks binary. `perch bench …` execs it with `argv[0]` set to
//! `perch bench`, so usage lines and error prefixes read as they did when the benchmarks were
//! part of `perch`.

use std::process::ExitCode;

use clap::Parser;
use perch_bench::BenchArgs;

#[derive(Debug, Parser)]
#[command(name = "perch-bench", about = "Benchmarks and load generators")]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS provider for the whole process: ring (DESIGN.md: no aws-lc).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match perch_bench::run(cli.args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e:#}", error_prefix());
            ExitCode::FAILURE
        }
    }
}

/// `perch` when run through the shim (as before the split), else `perch-bench`.
fn error_prefix() -> &'static str {
    match std::env::args_os().next() {
        Some(arg0) if arg0 == perch::bench_shim::SHIM_ARG0 => "perch",
        _ => "perch-bench",
    }
}
