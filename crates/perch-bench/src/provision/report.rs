//! The storm's figures: step latencies from HDR histograms, rates, failures, and the table
//! `perch bench provision` prints (the JSON form is the report serialized).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;

use super::{BOOTSTRAP_ID, Outcome, ProvisionBenchArgs, Report, RequestKind, Steps};
use crate::measure::{Latency, fmt_micros, new_histogram, record};

pub(super) fn latency(samples: impl Iterator<Item = Duration>) -> Latency {
    let mut h = new_histogram();
    for d in samples {
        record(&mut h, d);
    }
    Latency::of(&h)
}

pub(super) fn summarize(
    args: &ProvisionBenchArgs,
    registry: String,
    started: Instant,
    ended: Instant,
    outcomes: &[Outcome],
    setup_ms: f64,
) -> Result<Report> {
    let provisioned = outcomes.iter().filter(|o| o.done_at.is_some()).count();
    let allowed = outcomes.iter().filter(|o| o.allowed_at.is_some()).count();
    // The storm ends when its last device does, whatever became of it.
    let seconds = ended.duration_since(started).as_secs_f64().max(1e-9);
    let mut failures = BTreeMap::new();
    for f in outcomes.iter().filter_map(|o| o.failure.as_ref()) {
        *failures.entry(f.clone()).or_insert(0) += 1;
    }
    let steps = Steps {
        key: latency(outcomes.iter().filter_map(|o| o.key)),
        claim: latency(outcomes.iter().filter_map(|o| o.claim)),
        connect: latency(outcomes.iter().filter_map(|o| o.connect)),
        publish: if args.no_publish {
            None
        } else {
            Some(latency(outcomes.iter().filter_map(|o| o.publish)))
        },
        total: latency(outcomes.iter().filter_map(|o| o.total)),
    };
    Ok(Report {
        registry,
        bootstrap: BOOTSTRAP_ID.to_owned(),
        request: args.request,
        devices: args.devices,
        concurrency: args.concurrency,
        provisioned,
        failed: outcomes.len() - provisioned,
        seconds,
        provisions_per_second: provisioned as f64 / seconds,
        claims_per_second: allowed as f64 / seconds,
        steps,
        failures,
        server_provisioned: None,
        setup_ms,
    })
}

pub(super) fn print_table(r: &Report) {
    let request = match r.request {
        RequestKind::Csr => "CSR",
        RequestKind::PublicKey => "public key",
        RequestKind::GenerateKey => "generate_key",
    };
    println!(
        "perch bench provision: {} devices ({request}), {} in flight, into {}",
        r.devices, r.concurrency, r.registry
    );
    println!(
        "  provisioned     {} of {} in {:.2} s = {:.0} provisions/s ({:.0} ALLOWED claims/s)",
        r.provisioned, r.devices, r.seconds, r.provisions_per_second, r.claims_per_second
    );
    println!(
        "  step            {:>7} {:>9} {:>9} {:>9}",
        "count", "p50", "p99", "max"
    );
    let mut rows = vec![
        ("1 key", &r.steps.key),
        ("2 claim", &r.steps.claim),
        ("3 connect", &r.steps.connect),
    ];
    if let Some(p) = &r.steps.publish {
        rows.push(("3 publish", p));
    }
    rows.push(("total", &r.steps.total));
    for (name, l) in rows {
        println!(
            "  {name:<15} {:>7} {:>9} {:>9} {:>9}",
            l.count,
            fmt_micros(l.p50_us as f64),
            fmt_micros(l.p99_us as f64),
            fmt_micros(l.max_us as f64)
        );
    }
    if r.failures.is_empty() {
        println!("  failures        none");
    } else {
        println!("  failures        {}", r.failed);
        for (reason, n) in &r.failures {
            println!("    {n:>6}  {reason}");
        }
    }
    if let Some(p) = r.server_provisioned {
        println!(
            "  server counter  bootstrap `{}` provisioned = {p}",
            r.bootstrap
        );
    }
    println!("  setup           {:.1} ms", r.setup_ms);
}
