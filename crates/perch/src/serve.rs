//! The composition root: opens the data dir and stores, builds the services, binds nothing
//! itself (listeners come in bound), serves until shutdown, then stops in order.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use perch_bridge::{Bridge, BridgeOptions};
use perch_core::{Clock, SystemClock};
use perch_pubsub::api::grpc::PubsubApi;
use perch_pubsub::{PubsubOptions, PubsubService};
use perch_registry::api::grpc::DeviceManagerApi;
use perch_registry::{RegistryService, RegistryServiceOptions};
use perch_store::embedded::{EmbeddedPubsubStore, EmbeddedRegistryStore, SegmentLog};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::admin::{self, AdminAuth};
use crate::datadir::{DataDir, Endpoints};
use crate::fd_limit::fit_to_fd_limit;
pub use crate::fd_limit::{FD_RESERVE, connections_per_listener, raise_fd_limit};
use crate::http_server::HttpLimits;
use crate::tls::TlsMaterial;
use crate::{http_server, tls};

/// What `perch serve` was asked to do (flags already validated).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub dev: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_sans: Vec<String>,
    /// Serve the admin listeners over plain HTTP even on a non-loopback address.
    pub insecure_admin: bool,
    /// Limits and timeouts of the device bridges.
    pub bridge: BridgeOptions,
    /// How long the telemetry sink keeps rows (None: forever).
    pub telemetry_retention: Option<std::time::Duration>,
    /// Fleet provisioning's decision cap per bootstrap and decision retention.
    pub provisioning: perch_registry::provisioning::ProvisioningOptions,
    /// Size at which a topic's message-log segment is sealed (`--log-segment-bytes`).
    pub log_segment_max_bytes: u64,
    /// Connection limits and deadlines of each HTTP listener (admin, gRPC, device bridge).
    pub http: HttpLimits,
}

/// Listeners bound by the caller (port 0 in tests). The device listeners are optional so that
/// admin-only tests need not bind them.
#[derive(Debug)]
pub struct Listeners {
    pub admin: TcpListener,
    pub grpc: TcpListener,
    /// MQTT over TLS.
    pub mqtt: Option<TcpListener>,
    /// MQTT without TLS (off unless asked for).
    pub mqtt_plain: Option<TcpListener>,
    /// The HTTPS device bridge.
    pub device_http: Option<TcpListener>,
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// The services a running server is made of, and the background tasks they started.
struct Services {
    devices: DeviceManagerApi,
    pubsub: PubsubService,
    pubsub_api: PubsubApi,
    telemetry: perch_sink::TelemetryStore,
    bridge: Bridge,
    /// The telemetry sink and the provisioning-decision purge, stopped with the listeners.
    background: Vec<JoinHandle<()>>,
}

/// Where the listeners serve, for `endpoints.json`, and the tasks that serve them.
struct Serving {
    endpoints: Endpoints,
    tasks: Vec<JoinHandle<()>>,
}

/// `perch_core::shutdown::stopped` on a receiver of its own, for tasks that own their future.
async fn stopped(mut stop: watch::Receiver<bool>) {
    perch_core::shutdown::stopped(&mut stop).await;
}

/// Runs a server on an open data dir until `shutdown` resolves. Writes `endpoints.json` once
/// every listener is serving, and removes it when done.
pub async fn serve(
    mut config: ServeConfig,
    data_dir: DataDir,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    fit_to_fd_limit(&mut config, &listeners);
    let material = tls::ensure(&data_dir.tls_dir(), &config.tls_sans)?;
    let (cert, key) = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => (material.cert_pem.clone(), material.key_pem.clone()),
    };
    let auth = if config.dev {
        tracing::warn!("--dev: the admin API accepts anonymous calls; never expose it");
        AdminAuth::Open
    } else {
        AdminAuth::Token(data_dir.admin_token()?.into())
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut services = open_services(&config, &data_dir, &material, &stop_rx).await?;
    let pubsub = services.pubsub.clone();
    let background = std::mem::take(&mut services.background);
    let serving = start_listeners(&config, listeners, services, auth, (&cert, &key), &stop_rx)?;

    // Files start-up created with the default umask (certificates) become private too.
    data_dir.tighten_quietly();
    data_dir.write_endpoints(&Endpoints {
        ca: material.ca_pem.display().to_string(),
        ..serving.endpoints
    })?;
    tracing::info!(data_dir = %data_dir.path().display(), "perch is ready");

    shutdown.await;
    tracing::info!("shutting down: no new connections, draining requests");
    let _ = stop_tx.send(true);
    for t in serving.tasks.into_iter().chain(background) {
        let _ = t.await;
    }
    // Acks taken while draining are written before we exit.
    if let Err(e) = pubsub.flush_progress().await {
        tracing::error!(error = %e, "could not save acknowledgement progress; acked messages may be redelivered");
    }
    data_dir.remove_endpoints();
    tracing::info!("stopped");
    Ok(())
}

/// Opens the stores in `data_dir` and builds the services on them; starts the telemetry sink
/// and the provisioning-decision purge, which run until `stop`.
async fn open_services(
    config: &ServeConfig,
    data_dir: &DataDir,
    material: &TlsMaterial,
    stop: &watch::Receiver<bool>,
) -> Result<Services> {
    let registry = open_registry(config, data_dir, material)?;
    let pubsub = open_pubsub(config, data_dir, stop).await?;
    let telemetry = perch_sink::TelemetryStore::open(&data_dir.path().join("telemetry.sqlite"))
        .with_context(|| {
            format!(
                "cannot open the telemetry store in {}",
                data_dir.path().display()
            )
        })?;
    let mut background = vec![tokio::spawn(
        perch_sink::Sink::new(pubsub.clone(), telemetry.clone())
            .with_retention(config.telemetry_retention)
            .run(stop.clone()),
    )];
    if let Some(retention) = config.provisioning.decision_retention {
        background.push(tokio::spawn(
            perch_registry::provisioning::ProvisioningService::new(registry.clone())
                .run_decision_retention(retention, stop.clone()),
        ));
    }
    Ok(Services {
        devices: DeviceManagerApi::new(registry.clone()),
        pubsub_api: PubsubApi::new(pubsub.clone()),
        bridge: Bridge::new(
            registry,
            pubsub.clone(),
            config.bridge.clone(),
            stop.clone(),
        ),
        pubsub,
        telemetry,
        background,
    })
}

/// The registry on its store, issuing device certificates from the data dir's CA.
fn open_registry(
    config: &ServeConfig,
    data_dir: &DataDir,
    material: &TlsMaterial,
) -> Result<RegistryService> {
    let store = EmbeddedRegistryStore::open(&data_dir.registry_path())
        .with_context(|| format!("cannot open the registry in {}", data_dir.path().display()))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let registry = RegistryService::new(
        Arc::new(store),
        clock.clone(),
        RegistryServiceOptions {
            provisioning: config.provisioning.clone(),
            ..Default::default()
        },
    );
    registry.set_certificate_issuer(Arc::new(tls::DeviceCertificateIssuer::load(
        material, clock,
    )?));
    Ok(registry)
}

/// Pub/Sub on its message log and store, with every topic and subscription loaded.
async fn open_pubsub(
    config: &ServeConfig,
    data_dir: &DataDir,
    stop: &watch::Receiver<bool>,
) -> Result<PubsubService> {
    let log = SegmentLog::open_with(
        &data_dir.path().join("pubsub").join("log"),
        config.log_segment_max_bytes,
    )
    .with_context(|| {
        format!(
            "cannot open the message log in {}",
            data_dir.path().display()
        )
    })?;
    let pubsub_store =
        EmbeddedPubsubStore::open(&data_dir.path().join("pubsub").join("pubsub.redb"))
            .with_context(|| {
                format!(
                    "cannot open the Pub/Sub store in {}",
                    data_dir.path().display()
                )
            })?;
    PubsubService::open(
        Arc::new(log),
        Arc::new(pubsub_store),
        PubsubOptions::default(),
        stop.clone(),
    )
    .await
    .context("cannot load Pub/Sub topics and subscriptions")
}

/// Serves every listener until `stop`: the admin REST and gRPC APIs, then the device bridges
/// that were bound. The endpoints' `ca` is left for the caller to fill.
fn start_listeners(
    config: &ServeConfig,
    listeners: Listeners,
    services: Services,
    auth: AdminAuth,
    (cert, key): (&Path, &Path),
    stop: &watch::Receiver<bool>,
) -> Result<Serving> {
    let admin_addr = listeners.admin.local_addr()?;
    let grpc_addr = listeners.grpc.local_addr()?;
    let admin_tls = tls_for(config, admin_addr, cert, key, &[b"h2", b"http/1.1"])?;
    let grpc_tls = tls_for(config, grpc_addr, cert, key, &[b"h2"])?;
    let Services {
        devices,
        pubsub_api,
        telemetry,
        bridge,
        ..
    } = services;

    let mut tasks = vec![
        tokio::spawn(http_server::serve(
            "admin",
            listeners.admin,
            admin::rest_router(auth.clone(), devices.clone(), pubsub_api.clone(), telemetry),
            admin_tls,
            config.http,
            stopped(stop.clone()),
        )),
        tokio::spawn(http_server::serve(
            "grpc",
            listeners.grpc,
            admin::grpc_router(auth, devices, pubsub_api),
            grpc_tls,
            config.http,
            stopped(stop.clone()),
        )),
    ];
    let mut endpoints = Endpoints {
        admin: admin_addr.to_string(),
        grpc: grpc_addr.to_string(),
        mqtt: None,
        mqtt_plain: None,
        device_http: None,
        ca: String::new(),
    };
    if let Some(l) = listeners.mqtt {
        let addr = l.local_addr()?;
        let acceptor = TlsAcceptor::from(tls::server_config(cert, key, &[])?);
        let b = bridge.clone();
        let stop = stopped(stop.clone());
        tasks.push(tokio::spawn(async move {
            b.serve_mqtt("mqtt", l, Some(acceptor), stop).await
        }));
        tracing::info!(%addr, "MQTT over TLS listening");
        endpoints.mqtt = Some(addr.to_string());
    }
    if let Some(l) = listeners.mqtt_plain {
        let addr = l.local_addr()?;
        let b = bridge.clone();
        let stop = stopped(stop.clone());
        tasks.push(tokio::spawn(async move {
            b.serve_mqtt("mqtt_plain", l, None, stop).await
        }));
        tracing::warn!(%addr, "MQTT without TLS listening: device JWTs cross the network in clear text");
        endpoints.mqtt_plain = Some(addr.to_string());
    }
    if let Some(l) = listeners.device_http {
        let addr = l.local_addr()?;
        let acceptor = TlsAcceptor::from(tls::server_config(cert, key, &[b"http/1.1"])?);
        tasks.push(tokio::spawn(http_server::serve(
            "device_http",
            l,
            bridge.http_router(),
            Some(acceptor),
            config.http,
            stopped(stop.clone()),
        )));
        tracing::info!(%addr, "HTTPS device bridge listening");
        endpoints.device_http = Some(addr.to_string());
    }
    tracing::info!(addr = %admin_addr, "admin REST listening");
    tracing::info!(addr = %grpc_addr, "admin gRPC listening");
    Ok(Serving { endpoints, tasks })
}

/// TLS for an admin listener: none on loopback, the server certificate elsewhere (unless
/// `--insecure-admin`).
fn tls_for(
    config: &ServeConfig,
    addr: SocketAddr,
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<Option<TlsAcceptor>> {
    if is_loopback(&addr) || config.insecure_admin {
        return Ok(None);
    }
    Ok(Some(TlsAcceptor::from(tls::server_config(
        cert, key, alpn,
    )?)))
}
