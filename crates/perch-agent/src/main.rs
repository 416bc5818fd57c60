//! `perch-agent`: reads DS18B20 temperatures (or simulates them) and streams them to Perch over
//! MQTT/TLS as an IoT Core device, keeping unsent readings in an on-disk queue.
//!
//! With a bootstrap credential and no device key yet, it first provisions itself
//! ([`provision`]) and then runs as the device it was granted.
//!
//! Exit codes: 0 after SIGINT/SIGTERM or a `--once` run whose queue drained; 1 when `--once`
//! timed out with readings still queued (they are sent on the next run) or without a
//! provisioning answer, or on a runtime failure; 2 for a bad config file or flag, with one line
//! per problem; 3 when provisioning was denied (no key is written).

mod agent;
mod config;
mod provision;
mod queue;
mod sensors;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use perch_device::{DeviceOptions, SigningKey};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::agent::{Agent, INTERVAL_MAX_SECS, INTERVAL_MIN_SECS, Status};
use crate::sensors::Simulator;

/// MQTT keep-alive; the bridge closes a connection silent for 1.5 times this.
const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// How long one publish waits for its PUBACK before it is retried.
const PUBACK_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "perch-agent",
    version,
    about = "Stream DS18B20 temperatures to Perch over MQTT/TLS"
)]
struct Cli {
    /// The device config file (`KEY = VALUE` lines, like the seed's gcp_iot_config.txt)
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: PathBuf,
    /// Simulate two slowly drifting sensors instead of reading W1_DEVICES_DIR
    #[arg(long)]
    simulate: bool,
    /// Take one reading cycle, wait until the queue drained (at most --once-timeout), exit
    #[arg(long)]
    once: bool,
    /// Seconds between reading cycles (a config `{"interval_s": N}` from the server overrides it)
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(INTERVAL_MIN_SECS..=INTERVAL_MAX_SECS))]
    interval: u64,
    /// Lifetime of each JWT; the agent reconnects with a fresh one after nine tenths of it
    #[arg(long, value_name = "SECS", default_value_t = 20 * 60,
          value_parser = clap::value_parser!(u64).range(10u64..=86_400))]
    jwt_lifetime: u64,
    /// With --once: how long to wait for the queue to drain
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    once_timeout: u64,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("perch-agent: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(cli))
}

/// Who the agent is at startup: a device with its key, or one still to be provisioned.
enum Identity {
    Device { key: SigningKey, device: String },
    Provision(provision::Plan),
}

/// Everything the config file names, loaded and checked.
struct Prepared {
    config: config::AgentConfig,
    identity: Identity,
    tls: perch_device::tls::TlsConfig,
    queue: queue::Queue,
}

/// Loads everything the config file names; every problem is one line naming key and file.
fn prepare(cli: &Cli) -> Result<Prepared, Vec<String>> {
    let config = config::load(&cli.config)?;
    let file = cli.config.display();
    let mut errors = Vec::new();
    let identity = match std::fs::read(&config.private_key) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && config.bootstrap.is_some() => {
            provision::plan(&config)
                .map(Identity::Provision)
                .map_err(|problems| {
                    errors.extend(problems.into_iter().map(|p| format!("{file}: {p}")))
                })
                .ok()
        }
        read => read
            .map_err(|e| format!("{file}: PRIVATE_KEY {}: {e}", config.private_key.display()))
            .and_then(|pem| {
                SigningKey::from_pem(&pem, config.algorithm).map_err(|e| {
                    format!("{file}: PRIVATE_KEY {}: {e}", config.private_key.display())
                })
            })
            .and_then(|key| {
                provision::stored_device_id(&config)
                    .map(|device| Identity::Device { key, device })
                    .map_err(|e| format!("{file}: {e}"))
            })
            .map_err(|e| errors.push(e))
            .ok(),
    };
    let tls = std::fs::read(&config.ca)
        .map_err(|e| format!("{file}: GOOGLE_ROOT_CERT {}: {e}", config.ca.display()))
        .and_then(|pem| {
            perch_device::tls::client_config(&pem)
                .map_err(|e| format!("{file}: GOOGLE_ROOT_CERT {}: {e}", config.ca.display()))
        })
        .map_err(|e| errors.push(e))
        .ok();
    let queue = queue::Queue::open(&config.queue_dir, config.queue_max_readings)
        .map_err(|e| {
            errors.push(format!(
                "{file}: QUEUE_DIR {}: {e}",
                config.queue_dir.display()
            ))
        })
        .ok();
    match (identity, tls, queue) {
        (Some(identity), Some(tls), Some(queue)) if errors.is_empty() => Ok(Prepared {
            config,
            identity,
            tls,
            queue,
        }),
        _ => Err(errors),
    }
}

async fn run(cli: Cli) -> ExitCode {
    let Prepared {
        config,
        identity,
        tls,
        queue,
    } = match prepare(&cli) {
        Ok(p) => p,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return ExitCode::from(2);
        }
    };
    let (key, device) = match identity {
        Identity::Device { key, device } => (key, device),
        Identity::Provision(plan) => {
            let deadline = cli
                .once
                .then(|| Instant::now() + Duration::from_secs(cli.once_timeout));
            tokio::select! {
                done = provision::provision(&config, plan, tls.clone(), deadline) => match done {
                    Ok(identity) => identity,
                    Err(provision::Failure::Denied) => return ExitCode::from(provision::EXIT_DENIED),
                    Err(provision::Failure::Failed) => return ExitCode::from(1),
                },
                () = shutdown_signal() => {
                    tracing::info!("stopping on signal while provisioning");
                    return ExitCode::SUCCESS;
                }
            }
        }
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        device = %device,
        host = %config.host,
        port = config.port,
        queued = queue.len(),
        simulate = cli.simulate,
        "perch-agent starting"
    );
    let options = DeviceOptions {
        project: config.project.clone(),
        region: config.region.clone(),
        registry: config.registry.clone(),
        device: device.clone(),
        host: config.host.clone(),
        port: config.port,
        tls,
        key: Arc::new(key),
        jwt_lifetime: Duration::from_secs(cli.jwt_lifetime),
        keep_alive: KEEP_ALIVE,
        puback_timeout: PUBACK_TIMEOUT,
    };
    let (client, events) = perch_device::connect(options);
    let agent = Arc::new(Agent {
        config,
        device,
        client: client.clone(),
        queue: Arc::new(Mutex::new(queue)),
        queued: Notify::new(),
        status: Mutex::new(Status::default()),
        state_dirty: Notify::new(),
        interval: watch::Sender::new(Duration::from_secs(cli.interval)),
        connected: watch::Sender::new(false),
    });
    tokio::spawn(agent.clone().event_loop(events));
    tokio::spawn(agent.clone().send_loop());
    tokio::spawn(agent.clone().state_loop());
    let simulator = cli.simulate.then(|| Mutex::new(Simulator::default()));

    let code = tokio::select! {
        code = readings(&agent, &simulator, &cli) => code,
        () = shutdown_signal() => {
            tracing::info!(queued = agent.queue_depth(), "stopping on signal");
            ExitCode::SUCCESS
        }
    };
    client.close();
    // Give the DISCONNECT a moment to leave; the queue is already durable.
    tokio::time::sleep(Duration::from_millis(100)).await;
    code
}

/// The reading loop (`--once`: one cycle, then wait for the queue to drain).
async fn readings(agent: &Arc<Agent>, simulator: &Option<Mutex<Simulator>>, cli: &Cli) -> ExitCode {
    if cli.once {
        agent.read_cycle(simulator).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(cli.once_timeout);
        while agent.queue_depth() > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::error!(
                    queued = agent.queue_depth(),
                    "readings still queued after --once-timeout; they will be sent on the next run"
                );
                return ExitCode::from(1);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::info!("queue drained");
        return ExitCode::SUCCESS;
    }
    let mut interval = agent.interval.subscribe();
    loop {
        let started = tokio::time::Instant::now();
        agent.read_cycle(simulator).await;
        loop {
            let next = started + *interval.borrow_and_update();
            tokio::select! {
                () = tokio::time::sleep_until(next) => break,
                changed = interval.changed() => if changed.is_err() { break },
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            },
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
