//! The `perch` binary's gcloud-shaped CLI against a spawned server, and `perch serve`'s
//! start-up errors.

mod groups;
mod iot;
mod serve;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const REGION: &[&str] = &["--region", "us-central1"];

/// `ARGS… --registry reg --region us-central1`.
fn in_reg<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend(["--registry", "reg", "--region", "us-central1"]);
    all
}

fn with_region<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend(REGION);
    all
}

/// The lines of `text` that are not blank.
fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// The table row whose first cell is `id`, split into cells.
fn row<'a>(table: &'a str, id: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&id))
        .unwrap_or_else(|| panic!("no row {id} in:\n{table}"))
}

/// Makes an ES256 key pair with `perch iot devices keygen` in a new temp dir.
fn keygen(server: &TestServer) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().to_str().expect("utf-8 path").to_owned();
    server.cli(&["devices", "keygen", "--out", &out]).ok();
    let public = dir.path().join("ec_public.pem");
    (dir, public.to_str().expect("utf-8 path").to_owned())
}
