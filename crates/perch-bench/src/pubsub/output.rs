//! The table `perch bench pubsub` prints (the JSON form is the report serialized).

use super::{Memory, Phase, Report, SETTLE};
use crate::measure::fmt_micros;

// ----- output -----

pub(super) fn fmt_mib(bytes: Option<u64>) -> String {
    bytes.map_or("n/a".into(), |b| {
        format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0))
    })
}

pub(super) fn fmt_pct(p: Option<f64>) -> String {
    p.map_or("n/a".into(), |p| format!("{p:.0}%"))
}

pub(super) fn phase_rows(prefix: &str, phases: &[&Phase]) -> Vec<(String, Vec<String>)> {
    let row = |label: &str, f: &dyn Fn(&Phase) -> String| {
        (
            format!("{prefix}{label}"),
            phases.iter().map(|p| f(p)).collect(),
        )
    };
    vec![
        row("msgs/s", &|p| format!("{:.0}", p.msgs_per_s)),
        row("MB/s", &|p| format!("{:.1}", p.mb_per_s)),
        row("latency p50 / p99", &|p| {
            format!(
                "{} / {}",
                fmt_micros(p.latency.p50_us as f64),
                fmt_micros(p.latency.p99_us as f64)
            )
        }),
        row("CPU server / bench", &|p| {
            format!(
                "{} / {}",
                fmt_pct(p.server_cpu_pct),
                fmt_pct(p.client_cpu_pct)
            )
        }),
    ]
}

pub(super) fn print_table(r: &Report) {
    println!(
        "perch bench pubsub: {} messages of {} B, {} publishers, batch {}",
        r.messages, r.size, r.publishers, r.batch
    );
    let header: Vec<String> = r
        .systems
        .iter()
        .map(|s| format!("{} {}", s.system, s.endpoint))
        .collect();
    let mut rows = vec![(String::new(), header)];
    let publish: Vec<&Phase> = r.systems.iter().map(|s| &s.publish).collect();
    rows.extend(phase_rows("publish ", &publish));
    let received: Vec<&Phase> = r.systems.iter().map(|s| &s.end_to_end.received).collect();
    rows.extend(phase_rows("e2e received ", &received));
    let e2e_publish: Vec<&Phase> = r.systems.iter().map(|s| &s.end_to_end.publish).collect();
    rows.extend(phase_rows("e2e publish ", &e2e_publish).into_iter().take(1));
    rows.push((
        "e2e duplicates".into(),
        r.systems
            .iter()
            .map(|s| s.end_to_end.duplicates.to_string())
            .collect(),
    ));
    if r.systems.iter().any(|s| s.memory.is_some()) {
        let cell = |f: &dyn Fn(&Memory) -> String| {
            r.systems
                .iter()
                .map(|s| s.memory.as_ref().map_or("-".into(), f))
                .collect::<Vec<_>>()
        };
        rows.push(("backlog messages".into(), cell(&|m| m.backlog.to_string())));
        rows.push((
            "backlog publish msgs/s".into(),
            cell(&|m| format!("{:.0}", m.publish.msgs_per_s)),
        ));
        rows.push((
            "RSS before backlog".into(),
            cell(&|m| fmt_mib(m.rss_before_bytes)),
        ));
        rows.push((
            "RSS after backlog".into(),
            cell(&|m| fmt_mib(m.rss_after_bytes)),
        ));
        rows.push((
            format!("RSS {}s later", SETTLE.as_secs()),
            cell(&|m| fmt_mib(m.rss_settled_bytes)),
        ));
    }
    for (label, cells) in rows {
        let cells: Vec<String> = cells.iter().map(|c| format!("{c:>34}")).collect();
        println!("{label:<32}{}", cells.join(""));
    }
    let perch = r.systems.first().map(|s| s.publish.msgs_per_s);
    for s in r.systems.iter().skip(1) {
        if let Some(p) = perch {
            println!(
                "perch / jetstream {}: publish {:.2}×, end to end {:.2}×",
                s.endpoint,
                p / s.publish.msgs_per_s,
                r.systems[0].end_to_end.received.msgs_per_s / s.end_to_end.received.msgs_per_s
            );
        }
    }
}
