//! Who listens on a port, and a process's CPU time and resident memory, read from Linux `/proc`.

use std::net::SocketAddr;
use std::time::Instant;

// ----- processes: who listens where, their CPU and memory (Linux /proc) -----

/// USER_HZ: /proc reports CPU time in these ticks per second on every Linux architecture.
pub(super) const TICKS_PER_SECOND: f64 = 100.0;

/// The port and socket inode of a listening socket in a `/proc/net/tcp{,6}` line.
pub(super) fn parse_listener(line: &str) -> Option<(u16, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
    const LISTEN: &str = "0A";
    if *state != LISTEN {
        return None;
    }
    let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
    Some((port, inode.parse().ok()?))
}

/// The pid of the process listening on `addr`'s port (HOST:PORT), if this user may see it.
pub(super) fn find_listener_pid(addr: &str) -> Option<u32> {
    let port = addr.parse::<SocketAddr>().ok()?.port();
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(parse_listener)
                .collect::<Vec<_>>()
        })
        .find(|(p, _)| *p == port)?
        .1;
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            std::fs::read_dir(entry.path().join("fd"))
                .ok()?
                .flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str())
                })
                .then_some(pid)
        })
}

/// Resident memory of a process (`VmRSS`), in bytes.
pub(super) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU ticks from a `/proc/<pid>/stat` line.
pub(super) fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // Fields after the parenthesised command name start at field 3; utime and stime are 14, 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A process's CPU time at one instant, to compare with a later reading.
pub(super) struct Cpu {
    path: Option<String>,
    ticks: Option<u64>,
}

impl Cpu {
    fn read(path: &Option<String>) -> Option<u64> {
        parse_cpu_ticks(&std::fs::read_to_string(path.as_ref()?).ok()?)
    }

    pub(super) fn of(pid: Option<u32>) -> Cpu {
        let path = pid.map(|p| format!("/proc/{p}/stat"));
        Cpu {
            ticks: Cpu::read(&path),
            path,
        }
    }

    pub(super) fn of_self() -> Cpu {
        let path = Some("/proc/self/stat".to_owned());
        Cpu {
            ticks: Cpu::read(&path),
            path,
        }
    }

    /// CPU used since this reading, in percent of one core over the wall time since `started`.
    pub(super) fn percent_since(&self, started: Instant) -> Option<f64> {
        let used = Cpu::read(&self.path)?.checked_sub(self.ticks?)? as f64 / TICKS_PER_SECOND;
        Some(100.0 * used / started.elapsed().as_secs_f64())
    }
}
