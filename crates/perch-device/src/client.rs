//! The device's MQTT connection: rumqttc's event loop driven by one task, with what IoT Core
//! needs on top — a fresh JWT on every connect, reconnection with backoff and full jitter,
//! renewal by reconnecting before the token expires, config and commands subscriptions, and
//! QoS 1 publishes that complete only when their PUBACK arrives.
//!
//! How a PUBACK finds its caller: rumqttc numbers publishes itself and reports
//! `Outgoing::Publish(pkid)` in the order requests enter its channel. [`DeviceClient::publish`]
//! enqueues the request and its waiter under one lock, so the n-th `Outgoing::Publish` belongs
//! to the n-th waiter. Invariants that keep this exact:
//! - at most [`MAX_OUTSTANDING_PUBLISHES`] publishes are unacknowledged, far below rumqttc's
//!   in-flight window, so a packet id is never reused while in flight (no "collision" resends);
//! - when a connection ends, the driver (under the same lock) marks the client disconnected,
//!   drains rumqttc's channel and pending list, and fails every waiter with
//!   [`DeviceError::NotConnected`]; sessions are clean, so nothing of the old connection is
//!   ever resent by rumqttc. Callers retry; the bridge may therefore see a message twice.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet,
    QoS, TlsConfiguration, Transport,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::backoff::Backoff;
use crate::error::{DeviceError, Result};
use crate::jwt::SigningKey;

/// Publishes awaiting their PUBACK at once; rumqttc's packet-id window is [`RUMQTT_INFLIGHT`].
pub const MAX_OUTSTANDING_PUBLISHES: usize = 32;
/// rumqttc's in-flight window (its packet ids cycle through `1..RUMQTT_INFLIGHT`).
const RUMQTT_INFLIGHT: u16 = 100;
/// Requests rumqttc buffers: every outstanding publish plus subscribes and a disconnect.
const REQUEST_CHANNEL_CAPACITY: usize = MAX_OUTSTANDING_PUBLISHES + 16;
/// Largest packet accepted or sent: a 256 KiB command or telemetry payload plus its header
/// (SPEC.md §4.10).
const MAX_PACKET_BYTES: usize = 256 * 1024 + 1024;
/// Events ([`DeviceEvent`]) buffered for the application; beyond that they are dropped.
pub const EVENT_CHANNEL_CAPACITY: usize = 64;
/// TCP + TLS + CONNACK must complete within this (rumqttc also bounds each flush by it).
const CONNECT_TIMEOUT_SECS: u64 = 10;
/// How long a renewal waits for outstanding publishes before reconnecting anyway.
const RENEWAL_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything needed to connect one device.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    pub project: String,
    pub region: String,
    pub registry: String,
    pub device: String,
    /// The bridge's host name or IP address; the server certificate must name it.
    pub host: String,
    pub port: u16,
    /// From [`crate::tls::client_config`].
    pub tls: Arc<rustls::ClientConfig>,
    pub key: Arc<SigningKey>,
    /// `exp - iat` of each token (IoT Core allows up to 24 h; the samples use 20 min).
    pub jwt_lifetime: Duration,
    pub keep_alive: Duration,
    /// How long [`DeviceClient::publish`] waits for a PUBACK.
    pub puback_timeout: Duration,
}

impl DeviceOptions {
    /// `projects/P/locations/L/registries/R/devices/D` (SPEC.md §4.2).
    pub fn client_id(&self) -> String {
        format!(
            "projects/{}/locations/{}/registries/{}/devices/{}",
            self.project, self.region, self.registry, self.device
        )
    }

    /// The device's topics.
    pub fn topics(&self) -> DeviceTopics {
        DeviceTopics {
            device: self.device.clone(),
        }
    }

    /// When to reconnect with a fresh token: see [`renewal_delay`].
    pub fn renew_after(&self) -> Duration {
        renewal_delay(self.jwt_lifetime)
    }
}

/// A token of `lifetime` is renewed after nine tenths of it, so that a slow reconnect still
/// completes before `exp`.
pub fn renewal_delay(lifetime: Duration) -> Duration {
    lifetime - lifetime / 10
}

/// The IoT Core topic names of one device (SPEC.md §4.4).
#[derive(Debug, Clone)]
pub struct DeviceTopics {
    device: String,
}

impl DeviceTopics {
    /// `/devices/D/events` or `/devices/D/events/SUBFOLDER`.
    pub fn events(&self, subfolder: &str) -> String {
        if subfolder.is_empty() {
            format!("/devices/{}/events", self.device)
        } else {
            format!("/devices/{}/events/{subfolder}", self.device)
        }
    }
    pub fn state(&self) -> String {
        format!("/devices/{}/state", self.device)
    }
    pub fn config(&self) -> String {
        format!("/devices/{}/config", self.device)
    }
    /// The commands filter, `/devices/D/commands/#`.
    pub fn commands_filter(&self) -> String {
        format!("/devices/{}/commands/#", self.device)
    }

    /// Classifies an inbound PUBLISH topic.
    fn classify(&self, topic: &str) -> Option<Inbound> {
        let rest = topic
            .strip_prefix("/devices/")?
            .strip_prefix(self.device.as_str())?;
        match rest {
            "/config" => Some(Inbound::Config),
            "/commands" => Some(Inbound::Command(String::new())),
            _ => rest
                .strip_prefix("/commands/")
                .map(|sub| Inbound::Command(sub.to_owned())),
        }
    }
}

enum Inbound {
    Config,
    Command(String),
}

/// What happened on the connection, for the application to act on or log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEvent {
    /// CONNACK 0 received; subscriptions are on their way.
    Connected,
    /// The connection ended or could not be made; `retry_in` until the next attempt.
    Disconnected { error: String, retry_in: Duration },
    /// The latest config version's bytes (sent on subscribe, even when empty, and on change).
    Config(Bytes),
    /// A command; `subfolder` is "" for `/devices/D/commands`.
    Command { subfolder: String, payload: Bytes },
    /// A subscription was refused (SUBACK 0x80).
    SubscriptionRefused { filter: String },
}

type Waiter = oneshot::Sender<Result<()>>;

#[derive(Default)]
struct Waiters {
    connected: bool,
    closed: bool,
    /// Bumped on every connect and disconnect; a renewal timer only acts on its own connection.
    generation: u64,
    /// Publishes handed to rumqttc that it has not numbered yet, in channel order.
    unnumbered: VecDeque<Waiter>,
    /// Publishes sent, by packet id, awaiting their PUBACK.
    inflight: HashMap<u16, Waiter>,
}

struct Shared {
    waiters: Mutex<Waiters>,
    permits: Arc<Semaphore>,
    mqtt: AsyncClient,
    shutdown: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Waiters> {
        // A panic while holding this lock cannot leave the maps half-updated in a way that
        // matters more than losing the client, so a poisoned lock is simply taken over.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A handle to the device connection; cheap to clone. Dropping every handle does not stop the
/// connection: call [`DeviceClient::close`].
#[derive(Clone)]
pub struct DeviceClient {
    shared: Arc<Shared>,
    topics: DeviceTopics,
    puback_timeout: Duration,
}

impl std::fmt::Debug for DeviceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceClient")
            .field("device", &self.topics.device)
            .finish_non_exhaustive()
    }
}

/// Starts connecting in the background (first attempt at once) and returns the handle and the
/// stream of [`DeviceEvent`]s. Must be called within a tokio runtime.
pub fn connect(options: DeviceOptions) -> (DeviceClient, mpsc::Receiver<DeviceEvent>) {
    let mut mqtt_options =
        MqttOptions::new(options.client_id(), options.host.clone(), options.port);
    mqtt_options
        .set_transport(Transport::Tls(TlsConfiguration::Rustls(
            options.tls.clone(),
        )))
        .set_keep_alive(options.keep_alive)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_inflight(RUMQTT_INFLIGHT)
        .set_request_channel_capacity(REQUEST_CHANNEL_CAPACITY);
    let (mqtt, mut eventloop) = AsyncClient::new(mqtt_options, REQUEST_CHANNEL_CAPACITY);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(CONNECT_TIMEOUT_SECS);
    eventloop.set_network_options(network);

    let shared = Arc::new(Shared {
        waiters: Mutex::new(Waiters::default()),
        permits: Arc::new(Semaphore::new(MAX_OUTSTANDING_PUBLISHES)),
        mqtt,
        shutdown: Notify::new(),
    });
    let (events, events_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
    let client = DeviceClient {
        shared: shared.clone(),
        topics: options.topics(),
        puback_timeout: options.puback_timeout,
    };
    tokio::spawn(Driver::new(options, shared, events).run(eventloop));
    (client, events_rx)
}

impl DeviceClient {
    /// The device's topic names.
    pub fn topics(&self) -> &DeviceTopics {
        &self.topics
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.shared.lock().connected
    }

    /// Publishes with QoS 1 and returns once the bridge PUBACKed it (durably stored, in
    /// Perch). Fails fast with [`DeviceError::NotConnected`] while disconnected, and when the
    /// connection drops before the PUBACK; the message may then have arrived or not.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<()> {
        let permit = self
            .shared
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DeviceError::Closed)?;
        self.send_publish(permit, topic, payload)?.wait().await
    }

    /// Hands a QoS 1 publish to the connection now and returns a handle to await its PUBACK.
    /// Publishes started one after another go out, and are stored by the bridge, in that
    /// order; this is how a caller pipelines without losing order. Fails with
    /// [`DeviceError::Busy`] when [`MAX_OUTSTANDING_PUBLISHES`] are already outstanding.
    pub fn start_publish(&self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<PendingPubAck> {
        let permit = self
            .shared
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| DeviceError::Busy)?;
        self.send_publish(permit, topic, payload)
    }

    fn send_publish(
        &self,
        permit: OwnedSemaphorePermit,
        topic: &str,
        payload: impl Into<Vec<u8>>,
    ) -> Result<PendingPubAck> {
        let mut waiters = self.shared.lock();
        if waiters.closed {
            return Err(DeviceError::Closed);
        }
        if !waiters.connected {
            return Err(DeviceError::NotConnected);
        }
        let (tx, rx) = oneshot::channel();
        self.shared
            .mqtt
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .map_err(|_| DeviceError::NotConnected)?;
        waiters.unnumbered.push_back(tx);
        Ok(PendingPubAck {
            _permit: permit,
            acked: rx,
            timeout: self.puback_timeout,
        })
    }

    /// Sends DISCONNECT and stops reconnecting. Outstanding publishes fail.
    pub fn close(&self) {
        let mut waiters = self.shared.lock();
        waiters.closed = true;
        let _ = self.shared.mqtt.try_disconnect();
        drop(waiters);
        self.shared.shutdown.notify_one();
    }
}

/// A publish handed to the connection, awaiting its PUBACK. Dropping it gives up waiting (the
/// message may still be delivered).
#[derive(Debug)]
pub struct PendingPubAck {
    _permit: OwnedSemaphorePermit,
    acked: oneshot::Receiver<Result<()>>,
    timeout: Duration,
}

impl PendingPubAck {
    /// Waits for the PUBACK, at most the configured PUBACK timeout.
    pub async fn wait(self) -> Result<()> {
        match tokio::time::timeout(self.timeout, self.acked).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(DeviceError::NotConnected),
            Err(_) => Err(DeviceError::PubAckTimeout(self.timeout)),
        }
    }
}

struct Driver {
    options: DeviceOptions,
    shared: Arc<Shared>,
    events: mpsc::Sender<DeviceEvent>,
    topics: DeviceTopics,
    backoff: Backoff,
    /// Filters of SUBSCRIBEs not yet numbered by rumqttc, then by packet id until their SUBACK.
    subscribes_unnumbered: VecDeque<String>,
    subscribes: HashMap<u16, String>,
}

impl Driver {
    fn new(options: DeviceOptions, shared: Arc<Shared>, events: mpsc::Sender<DeviceEvent>) -> Self {
        let topics = options.topics();
        Driver {
            options,
            shared,
            events,
            topics,
            backoff: Backoff::default(),
            subscribes_unnumbered: VecDeque::new(),
            subscribes: HashMap::new(),
        }
    }

    fn emit(&self, event: DeviceEvent) {
        if self.events.try_send(event).is_err() && !self.events.is_closed() {
            tracing::warn!("device event dropped: the application is not reading events");
        }
    }

    async fn run(mut self, mut eventloop: EventLoop) {
        loop {
            if self.shared.lock().closed {
                self.lose_connection(&mut eventloop);
                return;
            }
            if eventloop.network.is_none() {
                // Every connection attempt gets a fresh token (SPEC.md §4.3: no in-band refresh).
                let issued = SystemTime::now();
                match self.options.key.sign_jwt(
                    &self.options.project,
                    issued,
                    self.options.jwt_lifetime,
                ) {
                    Ok(token) => {
                        eventloop.mqtt_options.set_credentials("unused", token);
                    }
                    Err(e) => {
                        self.retry_later(e.to_string()).await;
                        continue;
                    }
                }
            }
            match eventloop.poll().await {
                Ok(event) => self.on_event(&mut eventloop, event),
                Err(e) => {
                    self.lose_connection(&mut eventloop);
                    self.retry_later(describe(&e)).await;
                }
            }
        }
    }

    /// Reports the failure and waits the next backoff delay (or until closed).
    async fn retry_later(&mut self, error: String) {
        let delay = self.backoff.next_random_delay();
        self.emit(DeviceEvent::Disconnected {
            error,
            retry_in: delay,
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.shared.shutdown.notified() => {}
        }
    }

    fn on_event(&mut self, eventloop: &mut EventLoop, event: Event) {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => self.on_connected(),
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let mut waiters = self.shared.lock();
                if let Some(waiter) = waiters.unnumbered.pop_front() {
                    waiters.inflight.insert(pkid, waiter);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(waiter) = self.shared.lock().inflight.remove(&ack.pkid) {
                    let _ = waiter.send(Ok(()));
                }
            }
            Event::Incoming(Packet::Publish(publish)) => match self.topics.classify(&publish.topic)
            {
                Some(Inbound::Config) => self.emit(DeviceEvent::Config(publish.payload)),
                Some(Inbound::Command(subfolder)) => self.emit(DeviceEvent::Command {
                    subfolder,
                    payload: publish.payload,
                }),
                None => {
                    tracing::debug!(topic = %publish.topic, "publish on an unexpected topic ignored")
                }
            },
            Event::Outgoing(Outgoing::Subscribe(pkid)) => {
                if let Some(filter) = self.subscribes_unnumbered.pop_front() {
                    self.subscribes.insert(pkid, filter);
                }
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                let filter = self.subscribes.remove(&ack.pkid).unwrap_or_default();
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                if refused {
                    self.emit(DeviceEvent::SubscriptionRefused { filter });
                }
            }
            Event::Outgoing(Outgoing::Disconnect) => {
                // Our own DISCONNECT (token renewal or close): drop the socket now and reconnect
                // on the next turn with a fresh token, without a backoff delay.
                self.lose_connection(eventloop);
                let closed = self.shared.lock().closed;
                if !closed {
                    self.emit(DeviceEvent::Disconnected {
                        error: "reconnecting to renew the JWT".into(),
                        retry_in: Duration::ZERO,
                    });
                }
            }
            _ => {}
        }
    }

    fn on_connected(&mut self) {
        self.backoff.reset();
        let generation = {
            let mut waiters = self.shared.lock();
            waiters.connected = true;
            waiters.generation += 1;
            waiters.generation
        };
        self.subscribes_unnumbered.clear();
        self.subscribes.clear();
        for filter in [self.topics.config(), self.topics.commands_filter()] {
            match self
                .shared
                .mqtt
                .try_subscribe(filter.clone(), QoS::AtLeastOnce)
            {
                Ok(()) => self.subscribes_unnumbered.push_back(filter),
                Err(_) => {
                    tracing::warn!(%filter, "subscribe request dropped: request channel full")
                }
            }
        }
        self.emit(DeviceEvent::Connected);
        tokio::spawn(renew_later(
            self.shared.clone(),
            generation,
            self.options.renew_after(),
        ));
    }

    /// Marks the connection gone and fails every waiter (see the module docs).
    fn lose_connection(&self, eventloop: &mut EventLoop) {
        let mut waiters = self.shared.lock();
        waiters.connected = false;
        waiters.generation += 1;
        eventloop.clean();
        eventloop.pending.clear();
        for waiter in waiters.unnumbered.drain(..) {
            let _ = waiter.send(Err(DeviceError::NotConnected));
        }
        for (_, waiter) in waiters.inflight.drain() {
            let _ = waiter.send(Err(DeviceError::NotConnected));
        }
    }
}

/// After `after`, lets outstanding publishes finish (up to [`RENEWAL_DRAIN_TIMEOUT`]), then
/// asks the event loop to DISCONNECT, unless the connection of `generation` has already ended.
async fn renew_later(shared: Arc<Shared>, generation: u64, after: Duration) {
    tokio::time::sleep(after).await;
    let max = u32::try_from(MAX_OUTSTANDING_PUBLISHES).unwrap_or(u32::MAX);
    let drained =
        tokio::time::timeout(RENEWAL_DRAIN_TIMEOUT, shared.permits.acquire_many(max)).await;
    let mut waiters = shared.lock();
    if waiters.generation == generation && waiters.connected {
        waiters.connected = false;
        let _ = shared.mqtt.try_disconnect();
    }
    drop(waiters);
    drop(drained);
}

/// One line for a connection failure, with the CONNACK code explained.
pub(crate) fn describe(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ConnectionRefused(code) => {
            use rumqttc::ConnectReturnCode as C;
            let why = match code {
                C::RefusedProtocolVersion => "1, protocol version refused",
                C::BadClientId => {
                    "2, client id refused: check PROJECT_ID, REGION, REGISTRY_ID, DEVICE_ID"
                }
                C::ServiceUnavailable => "3, server unavailable",
                C::BadUserNamePassword => "4, the JWT could not be read",
                C::NotAuthorized => {
                    "5, not authorized: unknown device, wrong key or project, expired token, or device blocked"
                }
                C::Success => "0",
            };
            format!("connection refused (CONNACK {why})")
        }
        ConnectionError::NetworkTimeout => "connection timed out".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> DeviceTopics {
        DeviceTopics {
            device: "pi-1".into(),
        }
    }

    #[test]
    fn topic_names_follow_iot_core() {
        let t = topics();
        assert_eq!(t.events(""), "/devices/pi-1/events");
        assert_eq!(t.events("temperature"), "/devices/pi-1/events/temperature");
        assert_eq!(t.state(), "/devices/pi-1/state");
        assert_eq!(t.config(), "/devices/pi-1/config");
        assert_eq!(t.commands_filter(), "/devices/pi-1/commands/#");
    }

    #[test]
    fn inbound_topics_are_classified() {
        let t = topics();
        let check = |topic: &str| match t.classify(topic) {
            Some(Inbound::Config) => "config".to_owned(),
            Some(Inbound::Command(sub)) => format!("command:{sub}"),
            None => "none".to_owned(),
        };
        assert_eq!(check("/devices/pi-1/config"), "config");
        assert_eq!(check("/devices/pi-1/commands"), "command:");
        assert_eq!(check("/devices/pi-1/commands/a/b"), "command:a/b");
        assert_eq!(check("/devices/pi-10/config"), "none");
        assert_eq!(check("/devices/pi-1/state"), "none");
    }

    #[test]
    fn renewal_comes_before_expiry() {
        assert_eq!(
            renewal_delay(Duration::from_secs(60)),
            Duration::from_secs(54)
        );
        assert_eq!(
            renewal_delay(Duration::from_secs(1200)),
            Duration::from_secs(1080)
        );
    }
}
