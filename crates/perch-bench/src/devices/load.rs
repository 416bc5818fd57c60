//! The load itself: `--devices` simulated devices, each an MQTT 3.1.1 connection driven by
//! rumqttc, started at `--connect-rate`, publishing on a fixed schedule until the deadline.
//!
//! Each device is two tasks and one small lock. The *driver* (here) owns rumqttc's
//! `EventLoop` and is never cancelled mid-poll (a dropped poll can lose a half-written
//! packet); it connects (a fresh JWT per attempt in Perch mode), reconnects with backoff and
//! full jitter, and matches PUBACKs to publishes. The *publisher* (`publisher.rs`) follows the
//! schedule and renews the JWT.
//!
//! How a PUBACK finds its send time: rumqttc numbers publishes in the order they leave its
//! channel and reports `Outgoing::Publish(pkid)` in that order. The publisher enqueues the
//! request and pushes its send time under the device lock, so the n-th `Outgoing::Publish`
//! belongs to the n-th queued time. At most `--max-inflight` publishes are outstanding per
//! device, well inside rumqttc's packet-id window, so ids are never reused in flight. When a
//! connection ends the driver (under the same lock) drops rumqttc's queued requests and
//! counts every outstanding publish as lost: sessions are clean and nothing is resent.
//!
//! Does not own creating devices or reading the results from a subscription (`perch.rs`), nor
//! printing (`report.rs`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;
use perch_device::backoff::Backoff;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet,
    QoS, TlsConfiguration, Transport,
};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::Target;
use super::publisher::Publisher;
use crate::measure::{micros, new_histogram};

/// TCP + TLS + CONNACK must complete within this (rumqttc also bounds each flush by it).
const CONNECT_TIMEOUT_SECS: u64 = 10;
/// First and largest reconnect ceilings; a benchmark retries sooner than a real device.
const RECONNECT_BASE_DELAY: Duration = Duration::from_millis(500);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(10);

/// What every device does, from the flags.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) devices: usize,
    pub(super) connect_rate: f64,
    pub(super) publish_interval: Duration,
    pub(super) size: usize,
    pub(super) qos: QoS,
    pub(super) max_inflight: usize,
    pub(super) keep_alive: Duration,
    /// Publishing stops here; connecting stops too.
    pub(super) deadline: Instant,
}

pub(super) fn record(histogram: &Mutex<Histogram<u64>>, elapsed: Duration) {
    lock(histogram).saturating_record(micros(elapsed));
}

/// A poisoned lock only means another task panicked while counting; the counts stay usable.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counters every device task updates; read by the progress line and the report.
#[derive(Debug)]
pub(super) struct Stats {
    pub(super) started: Instant,
    pub(super) connect_attempts: AtomicU64,
    pub(super) connects: AtomicU64,
    /// Devices that connected at least once.
    pub(super) devices_connected: AtomicU64,
    pub(super) connected_now: AtomicI64,
    /// Seconds from the start to the moment every device had connected once (µs, 0 = never).
    pub(super) all_connected_micros: AtomicU64,
    pub(super) acked_when_all_connected: AtomicU64,
    /// Set by the caller when publishing stops.
    pub(super) acked_at_deadline: AtomicU64,
    pub(super) sent: AtomicU64,
    pub(super) written: AtomicU64,
    pub(super) acked: AtomicU64,
    pub(super) outstanding: AtomicI64,
    pub(super) skipped_window_full: AtomicU64,
    pub(super) skipped_not_connected: AtomicU64,
    pub(super) slots_missed: AtomicU64,
    pub(super) renewals: AtomicU64,
    pub(super) errors: Mutex<BTreeMap<String, u64>>,
    pub(super) puback: Mutex<Histogram<u64>>,
    pub(super) connect_latency: Mutex<Histogram<u64>>,
    /// How late the publisher woke for its slot: the generator's own lag.
    pub(super) schedule_lag: Mutex<Histogram<u64>>,
}

impl Stats {
    pub(super) fn new() -> Stats {
        Stats {
            started: Instant::now(),
            connect_attempts: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            devices_connected: AtomicU64::new(0),
            connected_now: AtomicI64::new(0),
            all_connected_micros: AtomicU64::new(0),
            acked_when_all_connected: AtomicU64::new(0),
            acked_at_deadline: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            written: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            outstanding: AtomicI64::new(0),
            skipped_window_full: AtomicU64::new(0),
            skipped_not_connected: AtomicU64::new(0),
            slots_missed: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            puback: Mutex::new(new_histogram()),
            connect_latency: Mutex::new(new_histogram()),
            schedule_lag: Mutex::new(new_histogram()),
        }
    }

    fn error(&self, kind: String, count: u64) {
        *lock(&self.errors).entry(kind).or_default() += count;
    }

    pub(super) fn error_total(&self) -> u64 {
        lock(&self.errors).values().sum()
    }
}

/// What the driver and publisher of one device share.
pub(super) struct DeviceState {
    pub(super) connected: bool,
    /// Bumped on every connect; a renewal only acts on the connection it timed.
    pub(super) generation: u64,
    pub(super) connected_at: Instant,
    /// Send times of publishes rumqttc has not numbered yet, in channel order.
    pub(super) unnumbered: VecDeque<Instant>,
    /// Send times by packet id, awaiting their PUBACK.
    pub(super) inflight: HashMap<u16, Instant>,
}

impl DeviceState {
    pub(super) fn outstanding(&self) -> usize {
        self.unnumbered.len() + self.inflight.len()
    }
}

pub(super) struct Device {
    pub(super) index: usize,
    pub(super) topic: String,
    pub(super) client: AsyncClient,
    pub(super) state: Mutex<DeviceState>,
    /// Notified on every connect; the publisher waits on it.
    pub(super) connected: Notify,
}

/// One run: the devices, the shared counters and the switch that ends everything.
#[derive(Debug)]
pub(super) struct Load {
    pub(super) stats: Arc<Stats>,
    finished: watch::Sender<bool>,
    handles: Mutex<Vec<DeviceHandle>>,
}

struct DeviceHandle {
    device: Arc<Device>,
    driver: tokio::task::JoinHandle<()>,
    publisher: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for DeviceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceHandle({})", self.device.index)
    }
}

impl Load {
    pub(super) fn new() -> Arc<Load> {
        Arc::new(Load {
            stats: Arc::new(Stats::new()),
            finished: watch::channel(false).0,
            handles: Mutex::new(Vec::new()),
        })
    }

    /// Starts the devices at `plan.connect_rate`; returns when all are started or the
    /// deadline passed (the rest are never started).
    pub(super) async fn start_devices(self: &Arc<Self>, target: Arc<Target>, plan: Arc<Plan>) {
        let started = self.stats.started;
        for index in 0..plan.devices {
            let at = started + Duration::from_secs_f64(index as f64 / plan.connect_rate);
            if at >= plan.deadline {
                self.stats.error(
                    "connect: never started (the deadline came first)".into(),
                    (plan.devices - index) as u64,
                );
                break;
            }
            tokio::time::sleep_until(at).await;
            let handle = self.start_device(index, &target, &plan);
            lock(&self.handles).push(handle);
        }
    }

    fn start_device(
        self: &Arc<Self>,
        index: usize,
        target: &Arc<Target>,
        plan: &Arc<Plan>,
    ) -> DeviceHandle {
        let mut options = MqttOptions::new(target.client_id(index), &target.host, target.port);
        let window = u16::try_from(plan.max_inflight).unwrap_or(u16::MAX / 2);
        options
            .set_keep_alive(plan.keep_alive)
            .set_clean_session(true)
            .set_max_packet_size(plan.size + 1024, plan.size + 1024)
            .set_inflight(window.saturating_mul(2).max(10))
            .set_request_channel_capacity(plan.max_inflight + 4);
        if let Some(tls) = &target.tls {
            options.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
        }
        let (client, mut eventloop) = AsyncClient::new(options, plan.max_inflight + 4);
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(CONNECT_TIMEOUT_SECS);
        eventloop.set_network_options(network);
        let now = Instant::now();
        let device = Arc::new(Device {
            index,
            topic: target.topic(index),
            client,
            state: Mutex::new(DeviceState {
                connected: false,
                generation: 0,
                connected_at: now,
                unnumbered: VecDeque::new(),
                inflight: HashMap::new(),
            }),
            connected: Notify::new(),
        });
        let driver = Driver {
            device: device.clone(),
            load: self.clone(),
            target: target.clone(),
            plan: plan.clone(),
            ever_connected: false,
        };
        let publisher = Publisher::new(
            device.clone(),
            self.stats.clone(),
            target.renew_after(),
            plan.clone(),
        );
        DeviceHandle {
            device,
            driver: tokio::spawn(driver.run(eventloop)),
            publisher: tokio::spawn(publisher.run()),
        }
    }

    /// Waits for every publisher (they stop at the deadline), then up to `drain` for
    /// outstanding PUBACKs; then disconnects every device and waits for the drivers.
    pub(super) async fn finish(&self, drain: Duration) {
        let handles: Vec<DeviceHandle> = std::mem::take(&mut *lock(&self.handles));
        let mut drivers = Vec::with_capacity(handles.len());
        for handle in handles {
            let _ = handle.publisher.await;
            drivers.push((handle.device, handle.driver));
        }
        let give_up = Instant::now() + drain;
        while self.stats.outstanding.load(Ordering::Relaxed) > 0 && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.finished.send_replace(true);
        for (device, _) in &drivers {
            let _ = device.client.try_disconnect();
        }
        for (_, driver) in drivers {
            let abort = driver.abort_handle();
            if tokio::time::timeout(Duration::from_secs(CONNECT_TIMEOUT_SECS + 5), driver)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

struct Driver {
    device: Arc<Device>,
    load: Arc<Load>,
    target: Arc<Target>,
    plan: Arc<Plan>,
    ever_connected: bool,
}

impl Driver {
    fn is_finished(&self) -> bool {
        *self.load.finished.borrow()
    }

    async fn run(mut self, mut eventloop: EventLoop) {
        let stats = self.load.stats.clone();
        let mut backoff = Backoff::new(RECONNECT_BASE_DELAY, RECONNECT_MAX_DELAY);
        let mut finished = self.load.finished.subscribe();
        loop {
            let connecting = eventloop.network.is_none();
            if connecting {
                if self.is_finished() || Instant::now() >= self.plan.deadline {
                    self.lose_connection(&mut eventloop);
                    return;
                }
                match self.target.credentials() {
                    Ok(Some((username, password))) => {
                        eventloop.mqtt_options.set_credentials(username, password);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        stats.error(format!("connect: cannot sign the JWT ({e})"), 1);
                        return;
                    }
                }
                stats.connect_attempts.fetch_add(1, Ordering::Relaxed);
            }
            let polled = Instant::now();
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    record(&stats.connect_latency, polled.elapsed());
                    backoff.reset();
                    self.on_connected();
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    stats.written.fetch_add(1, Ordering::Relaxed);
                    if self.plan.qos != QoS::AtMostOnce {
                        let mut state = lock(&self.device.state);
                        if let Some(sent) = state.unnumbered.pop_front() {
                            state.inflight.insert(pkid, sent);
                        }
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    let sent = lock(&self.device.state).inflight.remove(&ack.pkid);
                    if let Some(sent) = sent {
                        record(&stats.puback, sent.elapsed());
                        stats.acked.fetch_add(1, Ordering::Relaxed);
                        stats.outstanding.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    // Ours: a JWT renewal (reconnect at once) or the end of the run.
                    self.lose_connection(&mut eventloop);
                    if self.is_finished() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(ConnectionError::RequestsDone) => return,
                Err(e) => {
                    let stage = if connecting {
                        "connect"
                    } else {
                        "connection lost"
                    };
                    stats.error(format!("{stage}: {}", describe(&e)), 1);
                    self.lose_connection(&mut eventloop);
                    let delay = backoff.next_random_delay();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = finished.wait_for(|f| *f) => {}
                    }
                }
            }
        }
    }

    fn on_connected(&mut self) {
        let stats = &self.load.stats;
        stats.connects.fetch_add(1, Ordering::Relaxed);
        stats.connected_now.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = lock(&self.device.state);
            state.connected = true;
            state.generation += 1;
            state.connected_at = Instant::now();
        }
        self.device.connected.notify_one();
        if !self.ever_connected {
            self.ever_connected = true;
            let n = stats.devices_connected.fetch_add(1, Ordering::Relaxed) + 1;
            if n == self.plan.devices as u64 {
                let micros = u64::try_from(stats.started.elapsed().as_micros()).unwrap_or(u64::MAX);
                stats.all_connected_micros.store(micros, Ordering::Relaxed);
                stats
                    .acked_when_all_connected
                    .store(stats.acked.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }

    /// Marks the connection gone, drops rumqttc's queued requests and counts every outstanding
    /// publish as lost (see the module docs).
    fn lose_connection(&self, eventloop: &mut EventLoop) {
        let stats = &self.load.stats;
        let mut state = lock(&self.device.state);
        if state.connected {
            state.connected = false;
            stats.connected_now.fetch_sub(1, Ordering::Relaxed);
        }
        eventloop.clean();
        eventloop.pending.clear();
        let lost = state.outstanding();
        state.unnumbered.clear();
        state.inflight.clear();
        drop(state);
        if lost > 0 {
            stats.outstanding.fetch_sub(lost as i64, Ordering::Relaxed);
            let why = if self.is_finished() {
                "publish: no PUBACK by the end of the drain"
            } else {
                "publish: connection closed before the PUBACK"
            };
            stats.error(why.into(), lost as u64);
        }
    }
}

/// One line per kind of failure, with CONNACK codes and I/O error kinds kept apart.
fn describe(error: &ConnectionError) -> String {
    use rumqttc::StateError;
    match error {
        ConnectionError::ConnectionRefused(code) => format!("refused, CONNACK {}", *code as u8),
        ConnectionError::NetworkTimeout => "timed out (TCP, TLS or CONNACK)".into(),
        ConnectionError::FlushTimeout => "write timed out".into(),
        ConnectionError::Tls(e) => format!("TLS: {e}"),
        ConnectionError::Io(e)
        | ConnectionError::MqttState(StateError::Io(e))
        | ConnectionError::MqttState(StateError::Deserialization(rumqttc::Error::Io(e))) => {
            describe_io(e)
        }
        ConnectionError::MqttState(StateError::ConnectionAborted) => "closed by the server".into(),
        ConnectionError::MqttState(e) => format!("MQTT: {e}"),
        other => other.to_string(),
    }
}

fn describe_io(e: &std::io::Error) -> String {
    match e.kind() {
        // rustls reports a peer that closed the TCP connection without TLS close_notify.
        std::io::ErrorKind::UnexpectedEof => "closed by the server".into(),
        std::io::ErrorKind::ConnectionReset => "reset by the server".into(),
        kind => format!("I/O: {kind:?}"),
    }
}
