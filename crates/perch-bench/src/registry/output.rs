//! The table `perch bench registry` prints (the JSON form is the report serialized).

use super::Report;
use crate::measure::{fmt_mib, fmt_micros};

pub(super) fn print_table(r: &Report) {
    let how = match r.batch {
        Some(batch) => format!("batches of {batch}, lookup concurrency {}", r.concurrency),
        None => format!("concurrency {}", r.concurrency),
    };
    println!(
        "perch bench registry --{}: {} devices in {} ({how})",
        r.mode, r.devices, r.registry
    );
    if let Some(ms) = r.open_ms {
        println!("  open store      {}", fmt_micros(ms * 1e3));
    }
    if let Some(c) = &r.create {
        println!(
            "  create          {} devices in {:.2} s = {:.0} devices/s",
            c.devices, c.seconds, c.devices_per_second
        );
        println!(
            "                  per {}: p50 {}, p99 {}, max {}",
            c.step,
            fmt_micros(c.latency.p50_us as f64),
            fmt_micros(c.latency.p99_us as f64),
            fmt_micros(c.latency.max_us as f64)
        );
    }
    println!("  first lookup    {}", fmt_micros(r.first_lookup_ms * 1e3));
    if !r.lookups.is_empty() {
        println!(
            "  lookups         {:<6} {:>5} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "by", "conc", "count", "per s", "p50", "p99", "max"
        );
        for l in &r.lookups {
            println!(
                "                  {:<6} {:>5} {:>7} {:>9.0} {:>9} {:>9} {:>9}",
                l.by,
                l.concurrency,
                l.count,
                l.per_second,
                fmt_micros(l.latency.p50_us as f64),
                fmt_micros(l.latency.p99_us as f64),
                fmt_micros(l.latency.max_us as f64)
            );
        }
    }
    if let Some(d) = &r.data_dir {
        println!(
            "  data dir        {} on disk ({} apparent)",
            fmt_mib(d.disk_bytes),
            fmt_mib(d.apparent_bytes)
        );
    }
    if let Some(s) = &r.reopen {
        println!(
            "  reopen          open {} + first lookup {}",
            fmt_micros(s.open_ms * 1e3),
            fmt_micros(s.first_lookup_ms * 1e3)
        );
    }
}
