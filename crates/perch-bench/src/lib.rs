//! `perch-bench …` (also `perch bench …`): load generators and benchmarks that print measured
//! figures (never timed tests). Each benchmark lives in its own module.
//!
//! Kept out of the `perch` server binary so that it does not link the NATS and MQTT clients or
//! the latency histograms; `perch bench` execs this binary from beside `perch`.

pub mod devices;
mod measure;
pub mod provision;
pub mod pubsub;
pub mod registry;

use anyhow::Result;
use clap::{Args, Subcommand};

/// `perch-bench …` (`perch bench …`)
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Registry: device create rate, lookup latency, data-dir size and start-up time
    Registry(registry::RegistryBenchArgs),
    /// Pub/Sub beside NATS JetStream: publish and end-to-end rates, latency, backlog memory
    Pubsub(pubsub::PubsubBenchArgs),
    /// Simulated MQTT devices against Perch or any broker: connects/s, publishes/s, PUBACK latency
    Devices(devices::DevicesBenchArgs),
    /// Provisioning storm: devices claiming identities with one bootstrap credential, provisions/s
    Provision(provision::ProvisionBenchArgs),
}

pub async fn run(args: BenchArgs) -> Result<()> {
    match args.command {
        BenchCommand::Registry(a) => registry::run(a).await,
        BenchCommand::Pubsub(a) => pubsub::run(a).await,
        BenchCommand::Devices(a) => devices::run(a).await,
        BenchCommand::Provision(a) => provision::run(a).await,
    }
}
