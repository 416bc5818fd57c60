//! One subscription's delivery state: which messages are acked, leased (delivered, deadline
//! running), ready for redelivery or waiting out a retry backoff; ordering-key queues; delivery
//! attempts for dead-lettering.
//!
//! Pure state machine: no I/O, no clock of its own (callers pass `now`), messages come from a
//! reader the caller supplies. The service wraps each in a mutex.
//!
//! Invariant: every sequence number in `[floor, next)` is exactly one of acked, leased, ready,
//! backing off, or queued behind its ordering key; `next` only moves forward except on seek.
//! Memory therefore grows with what is outstanding, not with the backlog, which stays in the log.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use perch_store::log::StoredMessage;
use perch_store::pubsub::AckProgress;

use crate::filter::Filter;

/// Redelivery delay without a retry policy: none (redeliver as soon as possible).
const NO_BACKOFF: Duration = Duration::ZERO;
/// New messages read from the log per step while filling a delivery.
const READ_BATCH: usize = 256;

/// What the subscription's settings mean for delivery.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub ack_deadline: Duration,
    /// (minimum, maximum) backoff after a nack or expiry; `None` redelivers at once.
    pub retry: Option<(Duration, Duration)>,
    /// Forward to the dead-letter topic once this many deliveries failed.
    pub max_delivery_attempts: Option<u32>,
    pub filter: Option<Filter>,
    pub ordering: bool,
    pub exactly_once: bool,
}

#[derive(Debug, Clone)]
struct Lease {
    generation: u64,
    deadline: Instant,
    stream: Option<u64>,
    bytes: usize,
    key: String,
}

/// A message handed to a subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub ack_id: String,
    pub message: StoredMessage,
    /// 1-based; reported only when a dead-letter policy exists (0 otherwise).
    pub delivery_attempt: i32,
}

/// Whether leasing `m` would take a non-empty delivery past `max_bytes` (a single message may
/// exceed it alone, so that nothing is stuck behind a large one).
fn would_overflow(taken: &Taken, bytes: usize, m: &StoredMessage, max_bytes: usize) -> bool {
    !taken.deliveries.is_empty() && bytes.saturating_add(m.message.size()) > max_bytes
}

/// What a `take` asks for: which stream leases the messages, how many and how many bytes at
/// most, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    pub stream: Option<u64>,
    pub max_count: usize,
    pub max_bytes: usize,
    pub deadline: Duration,
}

/// What one `take` produced.
#[derive(Debug, Default)]
pub struct Taken {
    pub deliveries: Vec<Delivery>,
    /// Messages that used up their delivery attempts: the caller forwards them to the
    /// dead-letter topic (they are already acked here), with the attempts made.
    pub dead_letters: Vec<(StoredMessage, u32)>,
}

/// Why an ack id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckIdError {
    /// Not an ack id of this subscription at all.
    Malformed,
    /// Well-formed but no longer valid (expired or superseded): matters for exactly-once.
    Expired,
}

/// A parsed ack id: `<subscription uid>.<seq>.<generation>` in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckId {
    pub subscription: u64,
    pub seq: u64,
    pub generation: u64,
}

impl AckId {
    pub fn encode(&self) -> String {
        format!(
            "{:x}.{:x}.{:x}",
            self.subscription, self.seq, self.generation
        )
    }

    pub fn parse(s: &str) -> Option<AckId> {
        let mut parts = s.split('.');
        let subscription = u64::from_str_radix(parts.next()?, 16).ok()?;
        let seq = u64::from_str_radix(parts.next()?, 16).ok()?;
        let generation = u64::from_str_radix(parts.next()?, 16).ok()?;
        parts.next().is_none().then_some(AckId {
            subscription,
            seq,
            generation,
        })
    }
}

/// The delivery state of one subscription.
#[derive(Debug)]
pub struct SubscriptionState {
    uid: u64,
    settings: DeliverySettings,
    floor: u64,
    next: u64,
    acked: BTreeSet<u64>,
    leases: HashMap<u64, Lease>,
    deadlines: BTreeSet<(Instant, u64)>,
    ready: BTreeSet<u64>,
    backoff: BTreeSet<(Instant, u64)>,
    backoff_at: HashMap<u64, Instant>,
    attempts: HashMap<u64, u32>,
    generation: u64,
    streams: HashMap<u64, (usize, usize)>,
    busy_keys: HashMap<String, u64>,
    queued: HashMap<String, VecDeque<u64>>,
    dirty: bool,
}

impl SubscriptionState {
    /// State resumed from stored progress; everything unacked at or after the floor will be
    /// delivered again (at-least-once across restarts).
    pub fn new(
        uid: u64,
        settings: DeliverySettings,
        progress: AckProgress,
        start_seq: u64,
    ) -> SubscriptionState {
        let floor = progress.floor.max(start_seq);
        let mut state = SubscriptionState {
            uid,
            settings,
            floor,
            next: floor,
            acked: progress.acked.into_iter().filter(|s| *s >= floor).collect(),
            leases: HashMap::new(),
            deadlines: BTreeSet::new(),
            ready: BTreeSet::new(),
            backoff: BTreeSet::new(),
            backoff_at: HashMap::new(),
            attempts: HashMap::new(),
            generation: 0,
            streams: HashMap::new(),
            busy_keys: HashMap::new(),
            queued: HashMap::new(),
            dirty: false,
        };
        state.advance_floor();
        state
    }

    pub fn settings(&self) -> &DeliverySettings {
        &self.settings
    }

    pub fn set_settings(&mut self, settings: DeliverySettings) {
        self.settings = settings;
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Progress to persist, and whether it changed since the last call.
    pub fn take_progress(&mut self) -> Option<AckProgress> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        Some(self.progress())
    }

    /// Marks the progress as not yet saved (its save failed), so `take_progress` returns it again.
    pub fn mark_unsaved(&mut self) {
        self.dirty = true;
    }

    pub fn progress(&self) -> AckProgress {
        AckProgress {
            floor: self.floor,
            acked: self.acked.iter().copied().collect(),
        }
    }

    fn advance_floor(&mut self) {
        while self.acked.first() == Some(&self.floor) {
            self.acked.pop_first();
            self.floor += 1;
        }
        if self.next < self.floor {
            self.next = self.floor;
        }
    }

    /// Number and bytes of messages outstanding on a stream.
    pub fn outstanding(&self, stream: u64) -> (usize, usize) {
        self.streams.get(&stream).copied().unwrap_or((0, 0))
    }

    /// Leased messages in all.
    pub fn leased(&self) -> usize {
        self.leases.len()
    }

    /// The earliest instant at which a lease expires or a backoff ends.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let d = self.deadlines.first().map(|(t, _)| *t);
        let b = self.backoff.first().map(|(t, _)| *t);
        match (d, b) {
            (Some(d), Some(b)) => Some(d.min(b)),
            (d, b) => d.or(b),
        }
    }

    /// Whether `take` could deliver something now, given the log's next sequence number.
    pub fn has_deliverable(&self, head: u64) -> bool {
        !self.ready.is_empty() || self.next < head
    }

    fn end_lease(&mut self, seq: u64) -> Option<Lease> {
        let lease = self.leases.remove(&seq)?;
        self.deadlines.remove(&(lease.deadline, seq));
        if let Some(stream) = lease.stream
            && let Some(o) = self.streams.get_mut(&stream)
        {
            o.0 = o.0.saturating_sub(1);
            o.1 = o.1.saturating_sub(lease.bytes);
            if o.0 == 0 {
                self.streams.remove(&stream);
            }
        }
        Some(lease)
    }

    fn backoff_for(&self, attempts: u32) -> Duration {
        match self.settings.retry {
            None => NO_BACKOFF,
            Some((min, max)) => {
                let factor = 1u32
                    .checked_shl(attempts.saturating_sub(1).min(20))
                    .unwrap_or(u32::MAX);
                min.saturating_mul(factor).min(max).max(min)
            }
        }
    }

    /// A failed delivery: count it and schedule the redelivery.
    fn fail(&mut self, seq: u64, now: Instant) {
        let attempts = {
            let a = self.attempts.entry(seq).or_insert(0);
            *a += 1;
            *a
        };
        let delay = self.backoff_for(attempts);
        if delay.is_zero() {
            self.ready.insert(seq);
        } else {
            let at = now + delay;
            self.backoff.insert((at, seq));
            self.backoff_at.insert(seq, at);
        }
    }

    /// Moves expired leases and finished backoffs to the ready set.
    pub fn tick(&mut self, now: Instant) {
        while let Some(&(deadline, seq)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.end_lease(seq);
            self.fail(seq, now);
        }
        while let Some(&(at, seq)) = self.backoff.first() {
            if at > now {
                break;
            }
            self.backoff.pop_first();
            self.backoff_at.remove(&seq);
            self.ready.insert(seq);
        }
    }

    fn release_key(&mut self, key: &str, seq: u64) {
        if key.is_empty() || self.busy_keys.get(key) != Some(&seq) {
            return;
        }
        match self.queued.get_mut(key).and_then(VecDeque::pop_front) {
            Some(next) => {
                self.busy_keys.insert(key.to_owned(), next);
                self.ready.insert(next);
            }
            None => {
                self.busy_keys.remove(key);
                self.queued.remove(key);
            }
        }
    }

    fn mark_acked(&mut self, seq: u64, key: &str) {
        if seq >= self.floor {
            self.acked.insert(seq);
        }
        self.ready.remove(&seq);
        if let Some(at) = self.backoff_at.remove(&seq) {
            self.backoff.remove(&(at, seq));
        }
        self.attempts.remove(&seq);
        self.release_key(key, seq);
        self.advance_floor();
        self.dirty = true;
    }

    fn check_id(&self, id: &AckId) -> Result<(), AckIdError> {
        if id.subscription != self.uid || id.generation == 0 || id.generation > self.generation {
            return Err(AckIdError::Malformed);
        }
        Ok(())
    }

    /// Acknowledges a delivery. Without exactly-once, any ack id of this subscription acks its
    /// message, even after its deadline; with it, only the current lease's id does.
    pub fn ack(&mut self, id: &AckId) -> Result<(), AckIdError> {
        self.check_id(id)?;
        let current = self.leases.get(&id.seq).map(|l| l.generation);
        if self.settings.exactly_once && current != Some(id.generation) {
            return Err(AckIdError::Expired);
        }
        let key = self.end_lease(id.seq).map(|l| l.key).unwrap_or_default();
        if id.seq < self.floor || self.acked.contains(&id.seq) {
            return Ok(());
        }
        self.mark_acked(id.seq, &key);
        Ok(())
    }

    /// Sets a lease's deadline to `now + seconds`; 0 is a nack. Ids that no longer hold the
    /// lease are ignored (Expired).
    pub fn modify_deadline(
        &mut self,
        id: &AckId,
        seconds: u32,
        now: Instant,
    ) -> Result<(), AckIdError> {
        self.check_id(id)?;
        match self.leases.get(&id.seq) {
            Some(l) if l.generation == id.generation => {}
            _ => return Err(AckIdError::Expired),
        }
        if seconds == 0 {
            self.end_lease(id.seq);
            self.fail(id.seq, now);
            return Ok(());
        }
        if let Some(lease) = self.leases.get_mut(&id.seq) {
            self.deadlines.remove(&(lease.deadline, id.seq));
            lease.deadline = now + Duration::from_secs(seconds.into());
            self.deadlines.insert((lease.deadline, id.seq));
        }
        Ok(())
    }

    /// Ends every lease of a closed stream as a nack would (their messages are redelivered).
    pub fn drop_stream(&mut self, stream: u64, now: Instant) {
        let seqs: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.stream == Some(stream))
            .map(|(s, _)| *s)
            .collect();
        for seq in seqs {
            self.end_lease(seq);
            // A closed stream is not the subscriber's verdict on the message: no attempt counted.
            self.ready.insert(seq);
        }
        let _ = now;
        self.streams.remove(&stream);
    }

    /// Delivers up to `max_count` messages / `max_bytes` bytes (at least one message if any is
    /// deliverable), leasing each for `deadline`. `read(from, max)` returns retained messages
    /// with `seq >= from` in order, or None when the log could not be read: the take then stops
    /// where it is and the unread messages stay owed (an I/O error is never taken for
    /// retention). `head` is the log's next sequence number.
    pub fn take(
        &mut self,
        now: Instant,
        want: Want,
        head: u64,
        read: &mut dyn FnMut(u64, usize) -> Option<Vec<StoredMessage>>,
    ) -> Taken {
        let Want {
            stream,
            max_count,
            max_bytes,
            deadline,
        } = want;
        self.tick(now);
        let mut taken = Taken::default();
        let mut bytes = 0usize;
        while taken.deliveries.len() < max_count
            && (bytes < max_bytes || taken.deliveries.is_empty())
        {
            if let Some(seq) = self.ready.pop_first() {
                let Some(found) = read(seq, 1) else {
                    self.ready.insert(seq);
                    break;
                };
                match found.into_iter().next().filter(|m| m.seq == seq) {
                    Some(m) if would_overflow(&taken, bytes, &m, max_bytes) => {
                        self.ready.insert(seq);
                        break;
                    }
                    Some(m) => bytes += self.consider(m, now, stream, deadline, &mut taken),
                    // Dropped by retention: nothing left to deliver.
                    None => self.mark_acked(seq, ""),
                }
                continue;
            }
            if self.next >= head {
                break;
            }
            let want = (max_count - taken.deliveries.len()).clamp(1, READ_BATCH);
            let Some(batch) = read(self.next, want) else {
                break;
            };
            if batch.is_empty() {
                // Everything from `next` on was dropped by retention.
                self.next = head;
                break;
            }
            let mut full = false;
            for m in batch {
                if taken.deliveries.len() >= max_count
                    || would_overflow(&taken, bytes, &m, max_bytes)
                {
                    full = true;
                    break;
                }
                // Skipped sequence numbers (retention) count as gone.
                while self.next < m.seq {
                    let s = self.next;
                    self.next += 1;
                    if s >= self.floor && !self.acked.contains(&s) {
                        self.mark_acked(s, "");
                    }
                }
                self.next = m.seq + 1;
                if m.seq < self.floor || self.acked.contains(&m.seq) {
                    continue;
                }
                bytes += self.consider(m, now, stream, deadline, &mut taken);
            }
            if full {
                break;
            }
        }
        taken
    }

    /// Delivers, filters out, queues or dead-letters one unacked message; returns bytes leased.
    fn consider(
        &mut self,
        m: StoredMessage,
        now: Instant,
        stream: Option<u64>,
        deadline: Duration,
        taken: &mut Taken,
    ) -> usize {
        let seq = m.seq;
        if let Some(filter) = &self.settings.filter
            && !filter.matches(&m.message.attributes)
        {
            self.mark_acked(seq, "");
            return 0;
        }
        let key = if self.settings.ordering {
            m.message.ordering_key.clone()
        } else {
            String::new()
        };
        let attempts = self.attempts.get(&seq).copied().unwrap_or(0);
        if let Some(max) = self.settings.max_delivery_attempts
            && attempts >= max
        {
            self.mark_acked(seq, &key);
            taken.dead_letters.push((m, attempts));
            return 0;
        }
        if !key.is_empty() {
            match self.busy_keys.get(&key) {
                Some(&busy) if busy != seq => {
                    self.queued.entry(key).or_default().push_back(seq);
                    return 0;
                }
                _ => {
                    self.busy_keys.insert(key.clone(), seq);
                }
            }
        }
        self.generation += 1;
        let size = m.message.size();
        let lease = Lease {
            generation: self.generation,
            deadline: now + deadline,
            stream,
            bytes: size,
            key,
        };
        self.deadlines.insert((lease.deadline, seq));
        if let Some(s) = stream {
            let o = self.streams.entry(s).or_insert((0, 0));
            o.0 += 1;
            o.1 += size;
        }
        self.leases.insert(seq, lease);
        let ack_id = AckId {
            subscription: self.uid,
            seq,
            generation: self.generation,
        }
        .encode();
        let delivery_attempt = if self.settings.max_delivery_attempts.is_some() {
            attempts as i32 + 1
        } else {
            0
        };
        taken.deliveries.push(Delivery {
            ack_id,
            message: m,
            delivery_attempt,
        });
        size
    }

    /// Seek: everything before `floor` and every seq in `acked` counts as acked, everything else
    /// as unacked; outstanding leases are dropped.
    pub fn reset(&mut self, floor: u64, acked: impl IntoIterator<Item = u64>) {
        self.floor = floor;
        self.next = floor;
        self.acked = acked.into_iter().filter(|s| *s >= floor).collect();
        self.leases.clear();
        self.deadlines.clear();
        self.ready.clear();
        self.backoff.clear();
        self.backoff_at.clear();
        self.attempts.clear();
        self.streams.clear();
        self.busy_keys.clear();
        self.queued.clear();
        self.advance_floor();
        self.dirty = true;
    }
}

#[cfg(test)]
mod tests;
