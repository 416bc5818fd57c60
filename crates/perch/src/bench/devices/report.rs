//! What `perch bench devices` prints: the progress bar while it runs, a once-a-second
//! timeline, and the final report (a table, or JSON with `--format json`), including the CPU
//! the generator (and, given its pid, the server) used, read from `/proc/PID/stat`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use rumqttc::QoS;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::load::{Plan, Stats};
use super::perch::{Setup, Verification};
use super::{DevicesBenchArgs, Identity, Target};

/// Linux reports utime/stime in USER_HZ, which is 100 on every architecture Perch targets.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
/// Without a terminal the progress is one line this often, so logs stay short.
const PROGRESS_LINE_EVERY: u64 = 5;
const BAR_WIDTH: usize = 30;

/// User plus system CPU ticks from a `/proc/<pid>/stat` line.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // Fields after the parenthesised command name start at field 3; utime and stime are 14, 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn read_ticks(pid: &str) -> Option<u64> {
    cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// (busy, total) ticks of all cores from `/proc/stat`; idle and iowait count as not busy.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle, total))
}

/// A `kB` line of `/proc/<pid>/status` (VmRSS, VmHWM), in MiB.
fn status_mib(pid: &str, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU ticks of this process and of the server at one instant.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cpu {
    at: Instant,
    own: Option<u64>,
    server: Option<u64>,
    machine: Option<(u64, u64)>,
}

impl Cpu {
    pub(super) fn read(server_pid: Option<u32>) -> Cpu {
        Cpu {
            at: Instant::now(),
            own: read_ticks("self"),
            server: server_pid.and_then(|p| read_ticks(&p.to_string())),
            machine: machine_ticks(),
        }
    }

    /// (CPU seconds, percent of one core) of the generator and of the server since `earlier`.
    fn since(&self, earlier: &Cpu) -> (Option<Usage>, Option<Usage>) {
        let wall = (self.at - earlier.at).as_secs_f64().max(1e-9);
        let usage = |now: Option<u64>, then: Option<u64>| {
            let seconds = now?.saturating_sub(then?) as f64 / CLOCK_TICKS_PER_SECOND;
            Some(Usage {
                cpu_seconds: seconds,
                wall_seconds: wall,
                percent_of_one_core: 100.0 * seconds / wall,
            })
        };
        (
            usage(self.own, earlier.own),
            usage(self.server, earlier.server),
        )
    }

    /// How busy all cores together were since `earlier`, in percent: near 100 means the
    /// generator and the server were competing for CPU.
    fn machine_busy_percent(&self, earlier: &Cpu) -> Option<f64> {
        let ((busy, total), (busy0, total0)) = (self.machine?, earlier.machine?);
        let total = total.saturating_sub(total0);
        (total > 0).then(|| 100.0 * busy.saturating_sub(busy0) as f64 / total as f64)
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct Usage {
    cpu_seconds: f64,
    wall_seconds: f64,
    percent_of_one_core: f64,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Sample {
    second: u64,
    connected: i64,
    sent: u64,
    acked: u64,
    errors: u64,
    generator_cpu_percent: Option<f64>,
    server_cpu_percent: Option<f64>,
    machine_busy_percent: Option<f64>,
}

pub(super) type Progress = (oneshot::Sender<()>, JoinHandle<Vec<Sample>>);

/// Samples the counters once a second into the timeline and draws the progress line.
pub(super) fn spawn_progress(
    stats: Arc<Stats>,
    plan: Arc<Plan>,
    server_pid: Option<u32>,
) -> Progress {
    let (stop, mut stopped) = oneshot::channel();
    let terminal = std::io::stderr().is_terminal();
    let handle = tokio::spawn(async move {
        let mut timeline = Vec::new();
        let mut tick = tokio::time::interval_at(
            stats.started + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let mut last = Cpu::read(server_pid);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stopped => break,
            }
            let now = Cpu::read(server_pid);
            let (own, server) = now.since(&last);
            let machine_busy_percent = now.machine_busy_percent(&last);
            last = now;
            let sample = Sample {
                second: stats.started.elapsed().as_secs_f64().round() as u64,
                connected: stats.connected_now.load(Ordering::Relaxed),
                sent: stats.sent.load(Ordering::Relaxed),
                acked: stats.acked.load(Ordering::Relaxed),
                errors: stats.error_total(),
                generator_cpu_percent: own.map(|u| u.percent_of_one_core),
                server_cpu_percent: server.map(|u| u.percent_of_one_core),
                machine_busy_percent,
            };
            if terminal || sample.second.is_multiple_of(PROGRESS_LINE_EVERY) {
                draw(&sample, &plan, &stats, terminal);
            }
            timeline.push(sample);
        }
        if terminal {
            eprintln!();
        }
        timeline
    });
    (stop, handle)
}

pub(super) async fn stop_progress((stop, handle): Progress) -> Vec<Sample> {
    let _ = stop.send(());
    handle.await.unwrap_or_default()
}

fn draw(s: &Sample, plan: &Plan, stats: &Stats, terminal: bool) {
    let total = (plan.deadline - stats.started).as_secs_f64().max(1e-9);
    let done = ((s.second as f64 / total).min(1.0) * BAR_WIDTH as f64) as usize;
    let bar = format!("{}{}", "#".repeat(done), ".".repeat(BAR_WIDTH - done));
    let percent = |p: Option<f64>| p.map_or("-".into(), |p| format!("{p:.0}%"));
    let cpu = format!(
        "  cpu {} (server {}, machine {})",
        percent(s.generator_cpu_percent),
        percent(s.server_cpu_percent),
        percent(s.machine_busy_percent)
    );
    let line = format!(
        "[{bar}] {:>3}/{total:.0} s  connected {}/{}  sent {}  acked {}  errors {}{cpu}",
        s.second, s.connected, plan.devices, s.sent, s.acked, s.errors
    );
    let mut err = std::io::stderr().lock();
    let _ = if terminal {
        write!(err, "\r{line}\x1b[K")
    } else {
        writeln!(err, "{line}")
    };
    let _ = err.flush();
}

#[derive(Debug, Serialize)]
struct Latency {
    count: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    mean_us: f64,
}

fn latency(h: &std::sync::Mutex<Histogram<u64>>) -> Latency {
    let h = h.lock().unwrap_or_else(|e| e.into_inner());
    Latency {
        count: h.len(),
        p50_us: h.value_at_quantile(0.50),
        p99_us: h.value_at_quantile(0.99),
        max_us: h.max(),
        mean_us: h.mean(),
    }
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
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        args: &DevicesBenchArgs,
        target: &Target,
        plan: &Plan,
        stats: &Stats,
        setup: Option<Setup>,
        verification: Option<Verification>,
        [start, deadline, end]: [Cpu; 3],
        wall: Duration,
        timeline: Vec<Sample>,
    ) -> Report {
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
        if self.errors.is_empty() {
            println!("  errors          none");
        }
        for (i, (kind, count)) in self.errors.iter().enumerate() {
            let label = if i == 0 { "errors" } else { "" };
            println!("  {label:<15} {count:>7}  {kind}");
        }
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
}

fn fmt_micros(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 10_000_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{:.1} s", us / 1e6)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_a_command_name_with_spaces() {
        let stat =
            "1234 (perch (bench) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("garbage"), None);
        assert!(read_ticks("self").is_some());
    }
}
