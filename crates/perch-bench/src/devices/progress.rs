//! Measuring while the load runs: CPU time of this process and of the server from
//! `/proc/PID/stat`, how busy all cores were from `/proc/stat`, memory from
//! `/proc/PID/status`, and a once-a-second sampler that keeps the timeline and draws the
//! progress bar on stderr (redrawn in place on a terminal, one line every few seconds in logs).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::load::{Plan, Stats};

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
pub(super) fn status_mib(pid: &str, field: &str) -> Option<f64> {
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
    pub(super) fn since(&self, earlier: &Cpu) -> (Option<Usage>, Option<Usage>) {
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
    pub(super) fn machine_busy_percent(&self, earlier: &Cpu) -> Option<f64> {
        let ((busy, total), (busy0, total0)) = (self.machine?, earlier.machine?);
        let total = total.saturating_sub(total0);
        (total > 0).then(|| 100.0 * busy.saturating_sub(busy0) as f64 / total as f64)
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct Usage {
    pub(super) cpu_seconds: f64,
    pub(super) wall_seconds: f64,
    pub(super) percent_of_one_core: f64,
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
