//! `perch`: the server (`perch serve`) and the gcloud-shaped CLI (`perch iot …`).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use perch::datadir::DataDir;
use perch::{Listeners, ServeConfig};
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(
    name = "perch",
    version,
    about = "Perch: a self-hosted IoT device core (Cloud IoT Core compatible)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server
    Serve(ServeArgs),
    /// Manage registries and devices on a running server
    Iot(perch::cli::iot::IotArgs),
    /// Manage Pub/Sub topics and subscriptions, publish and pull
    Pubsub(perch::cli::pubsub::PubsubArgs),
    /// Fleet provisioning: bootstrap credentials, allow/deny lists, decisions
    Provision(perch::cli::provision::ProvisionArgs),
    /// The telemetry sink: which topics it keeps, and queries of what it stored
    Telemetry(perch::cli::telemetry::TelemetryArgs),
    /// Benchmarks and load generators
    #[command(disable_help_flag = true)]
    Bench {
        /// Arguments for the perch-bench binary (next to perch), which runs them
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Where everything is kept; created if missing; one server per dir
    #[arg(long, default_value = "perch-data")]
    data_dir: PathBuf,
    /// Admin REST API, Pub/Sub REST and dashboard
    #[arg(long, default_value = "127.0.0.1:8080")]
    admin: SocketAddr,
    /// gRPC (google.cloud.iot.v1, google.pubsub.v1)
    #[arg(long, default_value = "127.0.0.1:8085")]
    grpc: SocketAddr,
    /// MQTT over TLS
    #[arg(long, default_value = "0.0.0.0:8883")]
    mqtt: SocketAddr,
    /// MQTT without TLS (off unless given)
    #[arg(long)]
    mqtt_plain: Option<SocketAddr>,
    /// HTTPS device bridge
    #[arg(long, default_value = "0.0.0.0:8443")]
    device_http: SocketAddr,
    /// No admin token (emulator style); device authentication stays on
    #[arg(long)]
    dev: bool,
    /// Server certificate chain (PEM) instead of the generated one
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Extra name or address for the generated server certificate; repeatable
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
    /// Serve the admin listeners without TLS even on a non-loopback address
    #[arg(long)]
    insecure_admin: bool,
    /// Seconds sendCommandToDevice waits for a QoS 1 command's PUBACK before DEADLINE_EXCEEDED
    #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
    command_ack_timeout: f64,
    /// Telemetry messages per second one MQTT connection may sustain (IoT Core: 100); faster
    /// closes it with RESOURCE_EXHAUSTED
    #[arg(long, default_value_t = 100.0, value_parser = positive_seconds)]
    telemetry_rate: f64,
    /// Seconds queued MQTT output may make no progress (the device reads nothing) before the
    /// connection closes
    #[arg(long, default_value_t = perch_bridge::MQTT_WRITE_TIMEOUT.as_secs_f64(), value_parser = positive_seconds)]
    mqtt_write_timeout: f64,
    /// Distinct command-subscription filters one MQTT connection may hold (a gateway: over all
    /// its attached devices); more closes it with RESOURCE_EXHAUSTED
    #[arg(long, default_value_t = perch_bridge::MQTT_COMMAND_FILTERS_MAX as u32, value_parser = clap::value_parser!(u32).range(1..))]
    mqtt_command_filters_max: u32,
    /// SUBSCRIBE and UNSUBSCRIBE packets per second one MQTT connection may sustain (burst
    /// 1,000); faster closes it with RESOURCE_EXHAUSTED
    #[arg(long, default_value_t = perch_bridge::MQTT_SUBSCRIBES_PER_SECOND, value_parser = positive_seconds)]
    mqtt_subscribe_rate: f64,
    /// Concurrent connections each HTTP listener (admin, gRPC, device bridge) serves; more wait
    /// in the backlog (lowered at start-up to fit the open-file limit)
    #[arg(long, default_value_t = perch::http_server::MAX_CONNECTIONS, value_parser = positive_count)]
    http_max_connections: usize,
    /// Concurrent connections one IP address may hold on each HTTP listener; more are closed
    #[arg(long, default_value_t = perch::http_server::MAX_CONNECTIONS_PER_SOURCE, value_parser = positive_count)]
    http_max_connections_per_source: usize,
    /// Seconds a client has to send a whole HTTP/1 request head (also the keep-alive idle limit
    /// between requests, and the limit for a silent new connection)
    #[arg(long, default_value_t = perch::http_server::HEADER_READ_TIMEOUT.as_secs_f64(), value_parser = positive_seconds)]
    http_header_timeout: f64,
    /// Seconds without a byte in either direction after which an HTTP connection is closed
    #[arg(long, default_value_t = perch::http_server::IDLE_TIMEOUT.as_secs_f64(), value_parser = positive_seconds)]
    http_idle_timeout: f64,
    /// Concurrent MQTT connections one IP address may hold; more are closed (raise it for
    /// large sites behind one NAT)
    #[arg(long, default_value_t = perch_bridge::MQTT_MAX_CONNECTIONS_PER_SOURCE, value_parser = positive_count)]
    mqtt_max_connections_per_source: usize,
    /// Days the telemetry sink keeps rows and anomalies (0: forever)
    #[arg(long, default_value_t = 0)]
    telemetry_retention_days: u32,
    /// Provisioning decisions kept per bootstrap; past it the bootstrap's refusals and repeats
    /// are answered and counted but not stored
    #[arg(long, default_value_t = perch_registry::provisioning::DECISIONS_PER_BOOTSTRAP_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..))]
    provisioning_decisions_per_bootstrap: u64,
    /// Days provisioning decisions are kept (0: forever); purged at startup and hourly
    #[arg(long, default_value_t = perch_registry::provisioning::DECISION_RETENTION_DAYS_DEFAULT)]
    provisioning_decision_retention_days: u32,
    /// Bytes after which a topic's message-log segment is sealed and a new one begun; retention
    /// drops whole segments
    #[arg(long, default_value_t = perch_store::embedded::SEGMENT_MAX_BYTES,
          value_parser = clap::value_parser!(u64).range(perch_store::embedded::SEGMENT_MIN_BYTES..))]
    log_segment_bytes: u64,
    /// PostgreSQL registry (scale-out; not built yet)
    #[arg(long)]
    postgres: Option<String>,
    /// NATS JetStream message log (scale-out; not built yet)
    #[arg(long)]
    nats: Option<String>,
}

/// A positive, finite number (seconds or a rate) for a serve flag.
fn positive_seconds(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a positive number")),
    }
}

/// A positive whole number (a count limit) for a serve flag.
fn positive_count(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(format!("'{s}' is not a positive whole number")),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PERCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn bind(flag: &str, addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for --{flag}"))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

async fn run_serve(args: ServeArgs) -> Result<()> {
    if args.postgres.is_some() || args.nats.is_some() {
        anyhow::bail!(
            "--postgres and --nats (scale-out backends) are not built yet; run without them for the embedded stores"
        );
    }
    let data_dir = DataDir::open(&args.data_dir)?;
    if let Some(fd_limit) = perch::serve::raise_fd_limit() {
        tracing::info!(fd_limit, "open-file limit (RLIMIT_NOFILE)");
    }
    let listeners = Listeners {
        admin: bind("admin", args.admin).await?,
        grpc: bind("grpc", args.grpc).await?,
        mqtt: Some(bind("mqtt", args.mqtt).await?),
        mqtt_plain: match args.mqtt_plain {
            Some(addr) => Some(bind("mqtt-plain", addr).await?),
            None => None,
        },
        device_http: Some(bind("device-http", args.device_http).await?),
    };
    let config = ServeConfig {
        data_dir: args.data_dir,
        dev: args.dev,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        tls_sans: args.tls_san,
        insecure_admin: args.insecure_admin,
        bridge: perch_bridge::BridgeOptions {
            command_ack_timeout: std::time::Duration::from_secs_f64(args.command_ack_timeout),
            telemetry_per_second: args.telemetry_rate,
            telemetry_burst: 2.0 * args.telemetry_rate,
            write_timeout: std::time::Duration::from_secs_f64(args.mqtt_write_timeout),
            command_filters_max: args.mqtt_command_filters_max as usize,
            subscribes_per_second: args.mqtt_subscribe_rate,
            max_connections_per_source: args.mqtt_max_connections_per_source,
            ..Default::default()
        },
        http: perch::http_server::HttpLimits {
            max_connections: args.http_max_connections,
            max_connections_per_source: args.http_max_connections_per_source,
            header_read_timeout: std::time::Duration::from_secs_f64(args.http_header_timeout),
            idle_timeout: std::time::Duration::from_secs_f64(args.http_idle_timeout),
        },
        telemetry_retention: (args.telemetry_retention_days > 0).then(|| {
            std::time::Duration::from_secs(u64::from(args.telemetry_retention_days) * 86_400)
        }),
        provisioning: perch_registry::provisioning::ProvisioningOptions {
            decisions_per_bootstrap: args.provisioning_decisions_per_bootstrap,
            decision_retention: (args.provisioning_decision_retention_days > 0).then(|| {
                std::time::Duration::from_secs(
                    u64::from(args.provisioning_decision_retention_days) * 86_400,
                )
            }),
        },
        log_segment_max_bytes: args.log_segment_bytes,
    };
    perch::serve(config, data_dir, listeners, shutdown_signal()).await
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS provider for the whole process: ring (DESIGN.md: no aws-lc).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.command {
        Command::Serve(args) => {
            init_logging();
            run_serve(args).await
        }
        Command::Iot(args) => perch::cli::iot::run(args).await,
        Command::Pubsub(args) => perch::cli::pubsub::run(args).await,
        Command::Provision(args) => perch::cli::provision::run(args).await,
        Command::Telemetry(args) => perch::cli::telemetry::run(args).await,
        Command::Bench { args } => Err(perch::bench_shim::exec(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("perch: {e:#}");
            ExitCode::FAILURE
        }
    }
}
