//! The bridge: what MQTT connections and HTTP requests share (registry, Pub/Sub, sessions,
//! activity batching) and the knobs they obey.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use perch_core::{Clock, SystemClock};
use perch_pubsub::PubsubService;
use perch_registry::RegistryService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::activity::Activity;
use crate::mqtt::codec::DEFAULT_MAX_PACKET_BYTES;
use crate::sessions::Sessions;

/// How long queued MQTT output may make no progress (the device reads nothing) before the
/// connection closes with DEADLINE_EXCEEDED. Default 10 s; `perch serve --mqtt-write-timeout`.
pub const MQTT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of MQTT output one connection may have queued for a device that does not read; more
/// closes it with RESOURCE_EXHAUSTED (one packet is always accepted). Default 1 MiB.
pub const MQTT_OUTBOUND_QUEUE_MAX_BYTES: usize = 1024 * 1024;
/// Distinct command-subscription filters one MQTT connection may hold, over the device and every
/// device attached through it; one more closes it with RESOURCE_EXHAUSTED. Repeated filters do
/// not count. Default 1,000; `perch serve --mqtt-command-filters-max`.
pub const MQTT_COMMAND_FILTERS_MAX: usize = 1_000;
/// SUBSCRIBE and UNSUBSCRIBE packets per second one MQTT connection may sustain; faster closes
/// it with RESOURCE_EXHAUSTED. Default 10; `perch serve --mqtt-subscribe-rate`.
pub const MQTT_SUBSCRIBES_PER_SECOND: f64 = 10.0;
/// SUBSCRIBE and UNSUBSCRIBE packets one MQTT connection may send at once above its sustained
/// rate (a gateway subscribing for its attached devices). Default 1,000.
pub const MQTT_SUBSCRIBE_BURST: f64 = 1_000.0;
/// Concurrent MQTT connections served by default, both MQTT listeners together (more wait in the
/// backlog).
pub const MQTT_MAX_CONNECTIONS: usize = 50_000;
/// Concurrent MQTT connections one IP address may hold on one MQTT listener by default: a fifth of
/// [`MQTT_MAX_CONNECTIONS`], so one host cannot take the listener, while a site of thousands of
/// devices behind one NAT still fits (raise it with `--mqtt-max-connections-per-source`).
pub const MQTT_MAX_CONNECTIONS_PER_SOURCE: usize = 10_000;

/// Limits and timeouts of the device bridges (defaults follow IoT Core, SPEC.md §4.10).
#[derive(Debug, Clone)]
pub struct BridgeOptions {
    /// A client must send CONNECT within this time after TCP/TLS setup (Perch choice).
    pub connect_timeout: Duration,
    /// Close a connection without any inbound packet for this long (IoT Core: 20 min).
    pub idle_timeout: Duration,
    /// Close every connection at this age (IoT Core: 24 h).
    pub max_connection_age: Duration,
    /// Resend an unacknowledged QoS 1 config this often (Perch choice, SPEC.md §4.7).
    pub config_resend_interval: Duration,
    /// Largest telemetry payload (IoT Core: 256 KB).
    pub telemetry_max_bytes: usize,
    /// Largest state payload (IoT Core: 64 KB).
    pub state_max_bytes: usize,
    /// Largest MQTT packet buffered; bigger ones close the connection while decoding.
    pub max_packet_bytes: usize,
    /// Concurrent MQTT connections, both listeners together; more wait in the accept backlog
    /// (default [`MQTT_MAX_CONNECTIONS`], lowered at start-up to fit the file-descriptor limit).
    pub max_connections: usize,
    /// Concurrent MQTT connections from one IP address to one listener; more are closed at once (default
    /// [`MQTT_MAX_CONNECTIONS_PER_SOURCE`], flag `--mqtt-max-connections-per-source`).
    pub max_connections_per_source: usize,
    /// A TLS handshake must finish within this time.
    pub tls_handshake_timeout: Duration,
    /// Refuse a bad SUBSCRIBE with SUBACK 0x80 instead of closing (IoT Core closed).
    pub subscribe_failure_suback: bool,
    /// Telemetry messages per second one connection may sustain (IoT Core quota: 100/s);
    /// faster closes the connection with RESOURCE_EXHAUSTED.
    pub telemetry_per_second: f64,
    /// Telemetry burst allowed above the sustained rate.
    pub telemetry_burst: f64,
    /// Least time between two state reports of one device (IoT Core: 1 s); faster reports are
    /// dropped (still PUBACKed) and recorded as RESOURCE_EXHAUSTED.
    pub state_min_interval: Duration,
    /// How long `sendCommandToDevice` waits for the PUBACK of a QoS 1 command before answering
    /// DEADLINE_EXCEEDED (Perch choice, SPEC.md §4.8).
    pub command_ack_timeout: Duration,
    /// See `MQTT_WRITE_TIMEOUT`.
    pub write_timeout: Duration,
    /// See `MQTT_OUTBOUND_QUEUE_MAX_BYTES`.
    pub outbound_queue_max_bytes: usize,
    /// See `MQTT_COMMAND_FILTERS_MAX`.
    pub command_filters_max: usize,
    /// See `MQTT_SUBSCRIBES_PER_SECOND`.
    pub subscribes_per_second: f64,
    /// See `MQTT_SUBSCRIBE_BURST`.
    pub subscribe_burst: f64,
}

impl Default for BridgeOptions {
    fn default() -> Self {
        BridgeOptions {
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(20 * 60),
            max_connection_age: Duration::from_secs(24 * 3600),
            config_resend_interval: Duration::from_secs(20),
            telemetry_max_bytes: 256 * 1024,
            state_max_bytes: 64 * 1024,
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
            max_connections: MQTT_MAX_CONNECTIONS,
            max_connections_per_source: MQTT_MAX_CONNECTIONS_PER_SOURCE,
            tls_handshake_timeout: Duration::from_secs(10),
            subscribe_failure_suback: false,
            telemetry_per_second: 100.0,
            telemetry_burst: 200.0,
            state_min_interval: Duration::from_secs(1),
            command_ack_timeout: Duration::from_secs(10),
            write_timeout: MQTT_WRITE_TIMEOUT,
            outbound_queue_max_bytes: MQTT_OUTBOUND_QUEUE_MAX_BYTES,
            command_filters_max: MQTT_COMMAND_FILTERS_MAX,
            subscribes_per_second: MQTT_SUBSCRIBES_PER_SECOND,
            subscribe_burst: MQTT_SUBSCRIBE_BURST,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) registry: RegistryService,
    /// One per process, so that per-bootstrap rate limits hold across connections.
    pub(crate) provisioning: perch_registry::provisioning::ProvisioningService,
    pub(crate) pubsub: PubsubService,
    pub(crate) sessions: Sessions,
    pub(crate) activity: Activity,
    pub(crate) options: BridgeOptions,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Wall-clock "now" for the times the bridge stores (activity, state, `lastErrorStatus`).
    pub(crate) clock: Arc<dyn Clock>,
}

impl Inner {
    /// Updates a device for the bridge's own bookkeeping (activity times, state, config acks,
    /// last error), addressed by the identity of a session or request.
    pub(crate) async fn record(
        &self,
        identity: &crate::router::DeviceIdentity,
        update: impl FnOnce(&mut perch_core::model::Device) + Send + 'static,
    ) -> Result<perch_core::model::Device, perch_registry::Error> {
        self.registry
            .record_device_activity(
                &identity.registry,
                &perch_core::DeviceRef::NumId(identity.num_id),
                Box::new(update),
            )
            .await
    }
}

/// The device bridges; cheap to clone.
#[derive(Clone)]
pub struct Bridge {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("sessions", &self.inner.sessions.count())
            .finish_non_exhaustive()
    }
}

impl Bridge {
    /// Builds the bridges, registers them as the registry's command sink, and starts following
    /// registry changes and flushing activity times. Everything stops when `shutdown` flips.
    pub fn new(
        registry: RegistryService,
        pubsub: PubsubService,
        options: BridgeOptions,
        shutdown: watch::Receiver<bool>,
    ) -> Bridge {
        let sessions = Sessions::new(options.command_ack_timeout);
        registry.set_command_sink(Arc::new(sessions.clone()));
        tokio::spawn(sessions.clone().follow(registry.subscribe()));
        let activity = Activity::default();
        tokio::spawn(activity.clone().run(registry.clone(), shutdown.clone()));
        Bridge {
            inner: Arc::new(Inner {
                connections: Arc::new(Semaphore::new(options.max_connections)),
                provisioning: perch_registry::provisioning::ProvisioningService::new(
                    registry.clone(),
                ),
                registry,
                pubsub,
                sessions,
                activity,
                options,
                shutdown,
                clock: Arc::new(SystemClock),
            }),
        }
    }

    /// Live MQTT sessions.
    pub fn connected_devices(&self) -> usize {
        self.inner.sessions.count()
    }

    /// Serves MQTT on a bound listener (TLS when `tls` is given) until `shutdown` resolves.
    pub async fn serve_mqtt(
        &self,
        name: &'static str,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        shutdown: impl Future<Output = ()>,
    ) {
        crate::mqtt::listener::serve(self.inner.clone(), name, listener, tls, shutdown).await
    }

    /// The HTTP device bridge routes (`publishEvent`, `setState`, `getConfig`).
    pub fn http_router(&self) -> axum::Router {
        crate::http::router(self.inner.clone())
    }
}

/// Resolves once `shutdown` says stop (one copy, in perch-core).
pub(crate) use perch_core::shutdown::stopped;
