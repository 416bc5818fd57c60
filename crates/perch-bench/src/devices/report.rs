//! The final report of `perch bench devices`: every figure the run measured, printed as a
//! table or, with `--format json`, as JSON for scripts. Measuring CPU and memory and the
//! progress bar live in `progress.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use rumqttc::QoS;
use serde::Serialize;

use super::load::{Plan, Stats};
use super::perch::{Setup, Verification};
use super::progress::{Cpu, Sample, Usage, status_mib};
use super::{DevicesBenchArgs, Identity, Target};
use crate::measure::{Latency, fmt_micros};

/// What a run produced besides the counters: set-up, verification, CPU readings, the timeline.
#[derive(Debug)]
pub(super) struct Outcome {
    pub(super) setup: Option<Setup>,
    pub(super) verification: Option<Verification>,
    /// CPU readings at the start, at the deadline and after the drain.
    pub(super) cpu: [Cpu; 3],
    pub(super) wall: Duration,
    pub(super) timeline: Vec<Sample>,
}

fn latency(h: &std::sync::Mutex<Histogram<u64>>) -> Latency {
    Latency::of(&h.lock().unwrap_or_else(|e| e.into_inner()))
}

#[derive(Debug, Serialize)]
struct Connects {
    devices_connected: u64,
    attempts: u64,
    /// Successful CONNECTs, reconnects and renewals included.
    connects: u64,
    /// From the first attempt until every device had connected once.
    seconds_to_all: Option<f64>,
    per_second: Option<f64>,
    /// TCP + TLS + CONNECT → CONNACK.
    latency: Latency,
}

#[derive(Debug, Serialize)]
struct Publishes {
    sent: u64,
    /// Written to the socket (QoS 0: what a subscriber can expect).
    written: u64,
    acked: u64,
    sent_per_second: f64,
    acked_per_second: f64,
    /// Acked per second between the moment all devices were connected and the deadline.
    steady_acked_per_second: Option<f64>,
    skipped_window_full: u64,
    skipped_not_connected: u64,
    /// Slots the publisher woke too late for (the generator fell behind its schedule).
    slots_missed: u64,
    puback_latency: Option<Latency>,
    schedule_lag: Latency,
}

#[derive(Debug, Serialize)]
struct Machine {
    generator: Option<Usage>,
    generator_max_rss_mib: Option<f64>,
    server_pid: Option<u32>,
    server: Option<Usage>,
    server_rss_mib: Option<f64>,
    server_max_rss_mib: Option<f64>,
    cores: usize,
    /// All cores together, everything running on the machine included.
    machine_busy_percent: Option<f64>,
}

/// The whole result, as printed.
#[derive(Debug, Serialize)]
pub(super) struct Report {
    target: &'static str,
    address: String,
    tls: bool,
    devices: usize,
    connect_rate: f64,
    publish_interval_s: f64,
    offered_per_second: f64,
    size: usize,
    qos: u8,
    duration_s: f64,
    max_inflight: usize,
    jwt_lifetime_s: Option<u64>,
    setup: Option<Setup>,
    connect: Connects,
    publish: Publishes,
    jwt_renewals: u64,
    errors: BTreeMap<String, u64>,
    /// During the publishing window (start to deadline), and over the whole run with the drain.
    cpu_until_deadline: Machine,
    cpu_whole_run: Machine,
    verification: Option<Verification>,
    timeline: Vec<Sample>,
}

impl Report {
    pub(super) fn new(
        args: &DevicesBenchArgs,
        target: &Target,
        plan: &Plan,
        stats: &Stats,
        outcome: Outcome,
    ) -> Report {
        let Outcome {
            setup,
            verification,
            cpu: [start, deadline, end],
            wall,
            timeline,
        } = outcome;
        let load = |o: &AtomicU64| o.load(Ordering::Relaxed);
        let window = (plan.deadline - stats.started).as_secs_f64();
        let devices_connected = load(&stats.devices_connected);
        let all_micros = load(&stats.all_connected_micros);
        let seconds_to_all = (all_micros > 0).then(|| all_micros as f64 / 1e6);
        let acked = load(&stats.acked);
        let steady = seconds_to_all.filter(|s| window - s >= 1.0).map(|s| {
            let acked_at_deadline = load(&stats.acked_at_deadline);
            acked_at_deadline.saturating_sub(load(&stats.acked_when_all_connected)) as f64
                / (window - s)
        });
        let machine = |until: &Cpu| {
            let (generator, server) = until.since(&start);
            Machine {
                generator,
                generator_max_rss_mib: status_mib("self", "VmHWM:"),
                server_pid: args.server_pid,
                server,
                server_rss_mib: args
                    .server_pid
                    .and_then(|p| status_mib(&p.to_string(), "VmRSS:")),
                server_max_rss_mib: args
                    .server_pid
                    .and_then(|p| status_mib(&p.to_string(), "VmHWM:")),
                cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
                machine_busy_percent: until.machine_busy_percent(&start),
            }
        };
        let tracked = plan.qos != QoS::AtMostOnce;
        Report {
            target: match target.identity {
                Identity::Perch { .. } => "perch",
                Identity::Broker { .. } => "mqtt broker",
            },
            address: format!("{}:{}", target.host, target.port),
            tls: target.tls.is_some(),
            devices: plan.devices,
            connect_rate: plan.connect_rate,
            publish_interval_s: plan.publish_interval.as_secs_f64(),
            offered_per_second: plan.devices as f64 / plan.publish_interval.as_secs_f64(),
            size: plan.size,
            qos: args.qos,
            duration_s: window,
            max_inflight: plan.max_inflight,
            jwt_lifetime_s: target.renew_after().map(|_| args.jwt_lifetime),
            setup,
            connect: Connects {
                devices_connected,
                attempts: load(&stats.connect_attempts),
                connects: load(&stats.connects),
                seconds_to_all,
                per_second: seconds_to_all.map(|s| devices_connected as f64 / s.max(1e-9)),
                latency: latency(&stats.connect_latency),
            },
            publish: Publishes {
                sent: load(&stats.sent),
                written: load(&stats.written),
                acked,
                sent_per_second: load(&stats.sent) as f64 / window,
                acked_per_second: acked as f64 / window,
                steady_acked_per_second: steady.filter(|_| tracked),
                skipped_window_full: load(&stats.skipped_window_full),
                skipped_not_connected: load(&stats.skipped_not_connected),
                slots_missed: load(&stats.slots_missed),
                puback_latency: tracked.then(|| latency(&stats.puback)),
                schedule_lag: latency(&stats.schedule_lag),
            },
            jwt_renewals: load(&stats.renewals),
            errors: stats
                .errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            cpu_until_deadline: machine(&deadline),
            cpu_whole_run: Machine {
                generator: end.since(&start).0.map(|u| Usage {
                    wall_seconds: wall.as_secs_f64(),
                    ..u
                }),
                ..machine(&end)
            },
            verification,
            timeline,
        }
    }

    pub(super) fn print_table(&self) {
        let mode = if self.tls { "TLS" } else { "plain TCP" };
        println!(
            "perch bench devices: {} devices → {} {} ({mode}), {} B QoS {} every {} s ({:.0}/s offered), {} s",
            self.devices,
            self.target,
            self.address,
            self.size,
            self.qos,
            self.publish_interval_s,
            self.offered_per_second,
            self.duration_s
        );
        if let Some(s) = &self.setup {
            println!(
                "  setup           registry {} ({}), {} devices created, {} existing, {:.1} s ({:.0}/s)",
                s.registry,
                if s.registry_created {
                    "new"
                } else {
                    "existing"
                },
                s.devices_created,
                s.devices_existing,
                s.seconds,
                s.devices_per_second
            );
        }
        self.print_traffic();
        if self.errors.is_empty() {
            println!("  errors          none");
        }
        for (i, (kind, count)) in self.errors.iter().enumerate() {
            let label = if i == 0 { "errors" } else { "" };
            println!("  {label:<15} {count:>7}  {kind}");
        }
        self.print_cpu();
        if let Some(v) = &self.verification {
            println!(
                "  verification    {}: received {} ({} distinct, {} duplicates), expected {} → {}",
                v.subscription,
                v.received,
                v.distinct,
                v.duplicates,
                v.expected,
                if v.matches { "MATCH" } else { "MISMATCH" }
            );
        }
    }

    /// The connect and publish lines of the table.
    fn print_traffic(&self) {
        let c = &self.connect;
        println!(
            "  connect         {}/{} devices in {} = {} connects/s (attempts {}, connects {}, JWT renewals {})",
            c.devices_connected,
            self.devices,
            c.seconds_to_all.map_or("-".into(), |s| format!("{s:.2} s")),
            c.per_second.map_or("-".into(), |r| format!("{r:.0}")),
            c.attempts,
            c.connects,
            self.jwt_renewals
        );
        println!(
            "                  CONNECT→CONNACK {}",
            fmt_latency(&c.latency)
        );
        let p = &self.publish;
        println!(
            "  publish         sent {} ({:.0}/s), acked {} ({:.0}/s; steady {}), skipped: window full {}, not connected {}, late slots {}",
            p.sent,
            p.sent_per_second,
            p.acked,
            p.acked_per_second,
            p.steady_acked_per_second
                .map_or("-".into(), |r| format!("{r:.0}/s")),
            p.skipped_window_full,
            p.skipped_not_connected,
            p.slots_missed
        );
        if let Some(l) = &p.puback_latency {
            println!("                  PUBACK {}", fmt_latency(l));
        }
        println!(
            "                  schedule lag {}",
            fmt_latency(&p.schedule_lag)
        );
    }

    /// The CPU lines of the table: to the deadline, then the whole run.
    fn print_cpu(&self) {
        for (label, m) in [("cpu", &self.cpu_until_deadline), ("", &self.cpu_whole_run)] {
            let fmt = |u: &Option<Usage>| {
                u.map_or("-".into(), |u| {
                    format!(
                        "{:.1} s = {:.0}% of a core",
                        u.cpu_seconds, u.percent_of_one_core
                    )
                })
            };
            let mib = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.0} MiB"));
            println!(
                "  {label:<15} {} {:.1} s: generator {} (max RSS {}), server {} (RSS {}), machine {} busy ({} cores)",
                if label.is_empty() {
                    "whole run"
                } else {
                    "to the deadline"
                },
                m.generator.map_or(0.0, |u| u.wall_seconds),
                fmt(&m.generator),
                mib(m.generator_max_rss_mib),
                fmt(&m.server),
                mib(m.server_rss_mib),
                m.machine_busy_percent
                    .map_or("-".into(), |p| format!("{p:.0}%")),
                m.cores
            );
        }
    }
}

fn fmt_latency(l: &Latency) -> String {
    format!(
        "p50 {}, p99 {}, max {} ({} samples)",
        fmt_micros(l.p50_us as f64),
        fmt_micros(l.p99_us as f64),
        fmt_micros(l.max_us as f64),
        l.count
    )
}
