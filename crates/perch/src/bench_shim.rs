//! `perch bench …`: the benchmarks live in their own binary, `perch-bench`, so the server does
//! not link their NATS and MQTT clients. This shim finds that binary next to the running
//! `perch` and execs it with the arguments unchanged.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};

/// The benchmarks binary's file name, looked for in the directory of the running `perch`.
pub const BENCH_BINARY: &str = "perch-bench";

/// The `argv[0]` the shim gives `perch-bench`: its usage lines then read `perch bench …` and its
/// errors keep the `perch:` prefix, as before the benchmarks moved out.
pub const SHIM_ARG0: &str = "perch bench";

/// Where `perch bench` expects `perch-bench`: beside `exe` (the running `perch`).
pub fn bench_binary_beside(exe: &Path) -> PathBuf {
    exe.parent()
        .unwrap_or_else(|| Path::new("."))
        .join(BENCH_BINARY)
}

/// Replaces this process with `perch-bench ARGS…`; returns only the reason it could not.
pub fn exec(args: Vec<OsString>) -> anyhow::Error {
    let exe = match std::env::current_exe().context("cannot find the running perch executable") {
        Ok(exe) => exe,
        Err(e) => return e,
    };
    let bench = bench_binary_beside(&exe);
    if !bench.is_file() {
        return missing(&bench);
    }
    let err = std::process::Command::new(&bench)
        .arg0(SHIM_ARG0)
        .args(args)
        .exec();
    anyhow!(err).context(format!("cannot run {}", bench.display()))
}

/// The error for a `perch` installed without `perch-bench`.
fn missing(bench: &Path) -> anyhow::Error {
    anyhow!(
        "perch bench needs the perch-bench binary next to perch: cargo build -p perch-bench \
         (--release for measurements) puts it there; not found: {}",
        bench.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_binary_is_looked_for_beside_perch() {
        assert_eq!(
            bench_binary_beside(Path::new("/opt/perch/bin/perch")),
            Path::new("/opt/perch/bin/perch-bench")
        );
        assert_eq!(
            bench_binary_beside(Path::new("perch")),
            Path::new("perch-bench")
        );
    }

    #[test]
    fn a_missing_bench_binary_says_how_to_build_it() {
        let message = format!("{:#}", missing(Path::new("/nowhere/perch-bench")));
        assert!(message.starts_with(
            "perch bench needs the perch-bench binary next to perch: cargo build -p perch-bench"
        ));
        assert!(
            message.ends_with("not found: /nowhere/perch-bench"),
            "{message}"
        );
    }
}
