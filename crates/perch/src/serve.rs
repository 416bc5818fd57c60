//! The composition root: opens the data dir and stores, builds the services, binds nothing
//! itself (listeners come in bound), serves until shutdown, then stops in order.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use perch_bridge::{Bridge, BridgeOptions};
use perch_core::SystemClock;
use perch_pubsub::api::grpc::PubsubApi;
use perch_pubsub::{PubsubOptions, PubsubService};
use perch_registry::api::grpc::DeviceManagerApi;
use perch_registry::{RegistryService, RegistryServiceOptions};
use perch_store::embedded::{EmbeddedPubsubStore, EmbeddedRegistryStore, SegmentLog};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admin::{self, AdminAuth};
use crate::datadir::{DataDir, Endpoints};
use crate::http_server::HttpLimits;
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

/// File descriptors kept back from client connections for the stores, log segments, the
/// telemetry database and the runtime (default 128): listener caps are lowered at start-up so
/// that all connections together stay below `RLIMIT_NOFILE` minus this.
pub const FD_RESERVE: u64 = 128;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the resulting soft limit
/// (None when it cannot be read, e.g. unlimited).
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && maximum > current
    {
        let raised = Rlimit {
            current: Some(maximum),
            maximum: Some(maximum),
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, current, maximum, "cannot raise the open-file limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// The most connections one listener may hold so that `listeners` listeners together stay
/// below `fd_limit` minus [`FD_RESERVE`] (at least 1).
pub fn connections_per_listener(fd_limit: u64, listeners: u64) -> usize {
    let share = fd_limit.saturating_sub(FD_RESERVE) / listeners.max(1);
    usize::try_from(share.max(1)).unwrap_or(usize::MAX)
}

/// Lowers one connection cap to `share`, with a warning, if it is higher.
fn lower_to(cap: &mut usize, share: usize, fd_limit: u64, what: &str) {
    if *cap > share {
        tracing::warn!(
            fd_limit,
            configured = *cap,
            max_connections = share,
            "lowering the {what} connection cap to fit the open-file limit"
        );
        *cap = share;
    }
}

/// Lowers the listeners' connection caps to fit the process's open-file limit, and logs the
/// resulting capacity.
fn fit_to_fd_limit(config: &mut ServeConfig, listeners: &Listeners) {
    let Some(fd_limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    else {
        return;
    };
    let mqtt = listeners.mqtt.is_some() || listeners.mqtt_plain.is_some();
    let count = 2 + u64::from(mqtt) + u64::from(listeners.device_http.is_some());
    let share = connections_per_listener(fd_limit, count);
    lower_to(
        &mut config.http.max_connections,
        share,
        fd_limit,
        "HTTP listeners'",
    );
    if mqtt {
        lower_to(&mut config.bridge.max_connections, share, fd_limit, "MQTT");
    }
    tracing::info!(
        fd_limit,
        http_max_connections = config.http.max_connections,
        mqtt_max_connections = config.bridge.max_connections,
        "connection capacity (per listener)"
    );
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

    let store = EmbeddedRegistryStore::open(&data_dir.registry_path())
        .with_context(|| format!("cannot open the registry in {}", data_dir.path().display()))?;
    let registry = RegistryService::new(
        Arc::new(store),
        Arc::new(SystemClock),
        RegistryServiceOptions {
            provisioning: config.provisioning.clone(),
            ..Default::default()
        },
    );
    registry.set_certificate_issuer(Arc::new(tls::DeviceCertificateIssuer::load(&material)?));
    let devices = DeviceManagerApi::new(registry.clone());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
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
    let pubsub = PubsubService::open(
        Arc::new(log),
        Arc::new(pubsub_store),
        PubsubOptions::default(),
        stop_rx.clone(),
    )
    .await
    .context("cannot load Pub/Sub topics and subscriptions")?;
    let pubsub_api = PubsubApi::new(pubsub.clone());
    let telemetry = perch_sink::TelemetryStore::open(&data_dir.path().join("telemetry.sqlite"))
        .with_context(|| {
            format!(
                "cannot open the telemetry store in {}",
                data_dir.path().display()
            )
        })?;
    let sink_task = tokio::spawn(
        perch_sink::Sink::new(pubsub.clone(), telemetry.clone())
            .with_retention(config.telemetry_retention)
            .run(stop_rx.clone()),
    );
    let retention_task = config.provisioning.decision_retention.map(|retention| {
        tokio::spawn(
            perch_registry::provisioning::ProvisioningService::new(registry.clone())
                .run_decision_retention(retention, stop_rx.clone()),
        )
    });
    let bridge = Bridge::new(
        registry,
        pubsub.clone(),
        config.bridge.clone(),
        stop_rx.clone(),
    );

    let admin_addr = listeners.admin.local_addr()?;
    let grpc_addr = listeners.grpc.local_addr()?;
    let admin_tls = tls_for(&config, admin_addr, &cert, &key, &[b"h2", b"http/1.1"])?;
    let grpc_tls = tls_for(&config, grpc_addr, &cert, &key, &[b"h2"])?;

    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let admin_task = tokio::spawn(http_server::serve(
        "admin",
        listeners.admin,
        admin::rest_router(auth.clone(), devices.clone(), pubsub_api.clone(), telemetry),
        admin_tls,
        config.http,
        stopped(stop_rx.clone()),
    ));
    let grpc_task = tokio::spawn(http_server::serve(
        "grpc",
        listeners.grpc,
        admin::grpc_router(auth, devices, pubsub_api),
        grpc_tls,
        config.http,
        stopped(stop_rx.clone()),
    ));
    let mut device_tasks = Vec::new();
    let mut mqtt_addr = None;
    let mut mqtt_plain_addr = None;
    let mut device_http_addr = None;
    if let Some(l) = listeners.mqtt {
        let addr = l.local_addr()?;
        let acceptor = TlsAcceptor::from(tls::server_config(&cert, &key, &[])?);
        let b = bridge.clone();
        let stop = stopped(stop_rx.clone());
        device_tasks.push(tokio::spawn(async move {
            b.serve_mqtt("mqtt", l, Some(acceptor), stop).await
        }));
        tracing::info!(%addr, "MQTT over TLS listening");
        mqtt_addr = Some(addr.to_string());
    }
    if let Some(l) = listeners.mqtt_plain {
        let addr = l.local_addr()?;
        let b = bridge.clone();
        let stop = stopped(stop_rx.clone());
        device_tasks.push(tokio::spawn(async move {
            b.serve_mqtt("mqtt_plain", l, None, stop).await
        }));
        tracing::warn!(%addr, "MQTT without TLS listening: device JWTs cross the network in clear text");
        mqtt_plain_addr = Some(addr.to_string());
    }
    if let Some(l) = listeners.device_http {
        let addr = l.local_addr()?;
        let acceptor = TlsAcceptor::from(tls::server_config(&cert, &key, &[b"http/1.1"])?);
        let router = bridge.http_router();
        device_tasks.push(tokio::spawn(http_server::serve(
            "device_http",
            l,
            router,
            Some(acceptor),
            config.http,
            stopped(stop_rx.clone()),
        )));
        tracing::info!(%addr, "HTTPS device bridge listening");
        device_http_addr = Some(addr.to_string());
    }
    tracing::info!(addr = %admin_addr, "admin REST listening");
    tracing::info!(addr = %grpc_addr, "admin gRPC listening");

    // Files start-up created with the default umask (certificates) become private too.
    data_dir.tighten_quietly();
    data_dir.write_endpoints(&Endpoints {
        admin: admin_addr.to_string(),
        grpc: grpc_addr.to_string(),
        mqtt: mqtt_addr,
        mqtt_plain: mqtt_plain_addr,
        device_http: device_http_addr,
        ca: material.ca_pem.display().to_string(),
    })?;
    tracing::info!(data_dir = %data_dir.path().display(), "perch is ready");

    shutdown.await;
    tracing::info!("shutting down: no new connections, draining requests");
    let _ = stop_tx.send(true);
    let _ = admin_task.await;
    let _ = grpc_task.await;
    for t in device_tasks {
        let _ = t.await;
    }
    let _ = sink_task.await;
    if let Some(t) = retention_task {
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

/// TLS for an admin listener: none on loopback, the server certificate elsewhere (unless
/// `--insecure-admin`).
fn tls_for(
    config: &ServeConfig,
    addr: SocketAddr,
    cert: &std::path::Path,
    key: &std::path::Path,
    alpn: &[&[u8]],
) -> Result<Option<TlsAcceptor>> {
    if is_loopback(&addr) || config.insecure_admin {
        return Ok(None);
    }
    Ok(Some(TlsAcceptor::from(tls::server_config(
        cert, key, alpn,
    )?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_share_what_the_fd_limit_leaves_after_the_reserve() {
        assert_eq!(connections_per_listener(256, 4), 32);
        assert_eq!(connections_per_listener(1_048_576 + FD_RESERVE, 4), 262_144);
        assert_eq!(connections_per_listener(64, 4), 1, "never zero");
    }
}
