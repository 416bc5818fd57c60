//! Admission of TCP connections, shared by every accept loop (the MQTT listeners here, the HTTP
//! listeners in `perch::http_server`): the listener-wide connection cap, the per-source-address
//! cap, and back-off on accept errors (out of file descriptors must not spin a core).
//!
//! Owns no protocol: a [`Gate`] hands out accepted sockets with the permits that count them; the
//! caller does TLS and the protocol, and dropping the [`Admitted`] (or the task holding it) frees
//! both permits.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// First pause after a failed `accept` (default 5 ms); doubles per consecutive failure.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause between two `accept` attempts while they keep failing (default 1 s).
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one warning per listener per this interval about failed accepts or refused sources
/// (default 10 s); the others are counted and reported with the next warning.
pub const LISTENER_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Exponential back-off for a failing accept loop (pure logic, so it is unit-tested).
#[derive(Debug, Clone)]
pub struct AcceptBackoff {
    next: Duration,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            next: ACCEPT_BACKOFF_MIN,
        }
    }
}

impl AcceptBackoff {
    /// How long to pause after one more failure.
    pub fn failed(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(ACCEPT_BACKOFF_MAX);
        pause
    }

    /// An accept succeeded: the next failure starts again from the minimum.
    pub fn succeeded(&mut self) {
        self.next = ACCEPT_BACKOFF_MIN;
    }
}

/// A warning that is logged at most once per [`LISTENER_WARN_INTERVAL`]; suppressed occurrences
/// are counted and reported with the next one.
#[derive(Debug, Default)]
pub struct RateLimitedWarning {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedWarning {
    /// Some(number of occurrences suppressed since the last warning) when this one should be
    /// logged now.
    pub fn should_log(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < LISTENER_WARN_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Counts open connections per source IP address; [`SourceLimit::admit`] refuses one over the cap.
#[derive(Debug, Clone)]
pub struct SourceLimit {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection counted against its source address; uncounted on drop.
#[derive(Debug)]
pub struct SourcePermit {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for SourcePermit {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.lock()
            && let Some(n) = open.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl SourceLimit {
    /// At most `max` concurrent connections from one IP address (at least 1).
    pub fn new(max: usize) -> SourceLimit {
        SourceLimit {
            max: max.max(1),
            open: Arc::default(),
        }
    }

    /// Counts a connection from `ip`, or None when that address already has `max` open.
    pub fn admit(&self, ip: IpAddr) -> Option<SourcePermit> {
        let mut open = self.open.lock().ok()?;
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourcePermit {
            ip,
            open: self.open.clone(),
        })
    }
}

/// An accepted socket and the permits that count it.
#[derive(Debug)]
pub struct Admitted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// Held for as long as the connection lives.
    pub permits: (OwnedSemaphorePermit, SourcePermit),
}

/// The admission policy of one listener: a connection cap, a per-source cap, back-off on errors.
#[derive(Debug)]
pub struct Gate {
    name: &'static str,
    connections: Arc<Semaphore>,
    per_source: SourceLimit,
    backoff: AcceptBackoff,
    accept_warning: RateLimitedWarning,
    source_warning: RateLimitedWarning,
}

impl Gate {
    /// A gate for listener `name` sharing the `connections` semaphore (the listener-wide cap),
    /// with at most `max_per_source` connections from one IP address.
    pub fn new(name: &'static str, connections: Arc<Semaphore>, max_per_source: usize) -> Gate {
        Gate {
            name,
            connections,
            per_source: SourceLimit::new(max_per_source),
            backoff: AcceptBackoff::default(),
            accept_warning: RateLimitedWarning::default(),
            source_warning: RateLimitedWarning::default(),
        }
    }

    /// Waits for a free connection slot, then for a connection from a source under its cap.
    /// Accept errors (e.g. EMFILE: out of file descriptors) pause the loop with back-off instead
    /// of retrying at once; connections over the per-source cap are closed at once. Cancel-safe.
    pub async fn next(&mut self, listener: &TcpListener) -> Option<Admitted> {
        let permit = self.connections.clone().acquire_owned().await.ok()?;
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => {
                    self.backoff.succeeded();
                    accepted
                }
                Err(e) => {
                    let pause = self.backoff.failed();
                    if let Some(suppressed) = self.accept_warning.should_log(Instant::now()) {
                        tracing::warn!(listener = self.name, error = %e, suppressed, pause_ms = pause.as_millis() as u64,
                            "accept failed; pausing the listener (out of file descriptors? see docs/mqtt.md 'Connection limits')");
                    }
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            let Some(source) = self.per_source.admit(peer.ip()) else {
                if let Some(suppressed) = self.source_warning.should_log(Instant::now()) {
                    tracing::warn!(listener = self.name, source = %peer.ip(), suppressed,
                        "connection refused: this address is at its per-source connection cap");
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            return Some(Admitted {
                stream,
                peer,
                permits: (permit, source),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_max_and_resets_on_success() {
        let mut b = AcceptBackoff::default();
        assert_eq!(b.failed(), ACCEPT_BACKOFF_MIN);
        assert_eq!(b.failed(), ACCEPT_BACKOFF_MIN * 2);
        for _ in 0..40 {
            assert!(b.failed() <= ACCEPT_BACKOFF_MAX);
        }
        assert_eq!(b.failed(), ACCEPT_BACKOFF_MAX);
        b.succeeded();
        assert_eq!(b.failed(), ACCEPT_BACKOFF_MIN);
    }

    #[test]
    fn warnings_are_rate_limited_and_count_what_they_suppressed() {
        let mut w = RateLimitedWarning::default();
        let t0 = Instant::now();
        assert_eq!(w.should_log(t0), Some(0));
        assert_eq!(w.should_log(t0 + Duration::from_secs(1)), None);
        assert_eq!(w.should_log(t0 + Duration::from_secs(2)), None);
        assert_eq!(w.should_log(t0 + LISTENER_WARN_INTERVAL), Some(2));
    }

    #[test]
    fn per_source_cap_counts_each_address_and_frees_on_drop() {
        let limit = SourceLimit::new(2);
        let a = IpAddr::from([10, 0, 0, 1]);
        let b: IpAddr = IpAddr::from([10, 0, 0, 2]);
        let first = limit.admit(a);
        let second = limit.admit(a);
        assert!(first.is_some() && second.is_some());
        assert!(
            limit.admit(a).is_none(),
            "a third connection from one address"
        );
        assert!(limit.admit(b).is_some(), "another address is not affected");
        drop(first);
        assert!(
            limit.admit(a).is_some(),
            "a closed connection frees its slot"
        );
    }
}
