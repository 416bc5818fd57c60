//! `perch bench registry --api`: a running server over the gRPC DeviceManager API, one
//! CreateDevice per device with `--concurrency` requests in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use perch::datadir::read_endpoints;
use perch_core::{LocationName, RegistryId};
use perch_proto::iot;
use perch_proto::iot::device_manager_client::DeviceManagerClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::lookups::{Target, measure_lookups};
use super::store::dir_size;
use super::{
    CreateFigures, RegistryBenchArgs, Report, device_id, device_keys, latency, report_progress,
};
use crate::measure::{new_histogram, record};

pub(super) type Client = DeviceManagerClient<InterceptedService<Channel, BearerToken>>;

/// Adds `authorization: Bearer …` to every call when a token is known.
#[derive(Debug, Clone)]
pub(super) struct BearerToken(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

pub(super) async fn connect(args: &RegistryBenchArgs) -> Result<Client> {
    let endpoint = match (&args.endpoint, &args.data_dir) {
        (Some(e), _) => e.clone(),
        (None, Some(dir)) => read_endpoints(dir)?.grpc,
        (None, None) => bail!("--api needs --endpoint HOST:PORT or the server's --data-dir"),
    };
    if endpoint.starts_with("https://") {
        bail!("the bench speaks plain HTTP/2 only; run it against a loopback --grpc listener");
    }
    let url = if endpoint.starts_with("http://") {
        endpoint
    } else {
        format!("http://{endpoint}")
    };
    let token = match (&args.token, &args.data_dir) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(dir)) => std::fs::read_to_string(dir.join("admin-token"))
            .ok()
            .map(|t| t.trim().to_owned()),
        (None, None) => None,
    };
    let token = token
        .map(|t| MetadataValue::try_from(format!("Bearer {t}")))
        .transpose()
        .context("the admin token has characters a header cannot carry")?;
    let channel = Channel::from_shared(url.clone())
        .with_context(|| format!("`{url}` is not a valid endpoint"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}; is `perch serve` running?"))?;
    Ok(DeviceManagerClient::with_interceptor(
        channel,
        BearerToken(token),
    ))
}

pub(super) async fn run_api(
    args: &RegistryBenchArgs,
    location: LocationName,
    registry_id: RegistryId,
) -> Result<Report> {
    let mut client = connect(args).await?;
    let registry = location.registry(registry_id.clone());
    let create = if args.lookups_only {
        None
    } else {
        client
            .create_device_registry(iot::CreateDeviceRegistryRequest {
                parent: location.to_string(),
                device_registry: Some(iot::DeviceRegistry {
                    id: registry_id.to_string(),
                    ..Default::default()
                }),
            })
            .await
            .with_context(|| format!("cannot create registry {registry}"))?;
        Some(create_devices_api(&client, &registry.to_string(), args).await?)
    };
    let target = Target::Api {
        client,
        registry: registry.to_string(),
    };
    let (first_lookup_ms, lookups) = measure_lookups(target, args).await?;
    let data_dir = match &args.data_dir {
        Some(dir) => Some(dir_size(dir)?),
        None => None,
    };
    Ok(Report {
        mode: "api",
        registry: registry.to_string(),
        devices: args.devices,
        concurrency: args.concurrency,
        batch: None,
        open_ms: None,
        create,
        first_lookup_ms,
        lookups,
        data_dir,
        reopen: None,
    })
}

/// One CreateDevice per device, `--concurrency` workers pulling the next index.
pub(super) async fn create_devices_api(
    client: &Client,
    registry: &str,
    args: &RegistryBenchArgs,
) -> Result<CreateFigures> {
    let keys = Arc::new(device_keys()?);
    let next = Arc::new(AtomicUsize::new(0));
    let total = args.devices;
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (mut client, keys, next) = (client.clone(), keys.clone(), next.clone());
            let registry = registry.to_owned();
            tokio::spawn(async move {
                let mut histogram = new_histogram();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return Ok::<_, anyhow::Error>(histogram);
                    }
                    let device = iot::Device {
                        id: device_id(i).to_string(),
                        credentials: vec![iot::DeviceCredential {
                            expiration_time: None,
                            credential: Some(iot::device_credential::Credential::PublicKey(
                                iot::PublicKeyCredential {
                                    format: iot::PublicKeyFormat::Es256Pem as i32,
                                    key: keys[i % keys.len()].clone(),
                                },
                            )),
                        }],
                        ..Default::default()
                    };
                    let t = Instant::now();
                    client
                        .create_device(iot::CreateDeviceRequest {
                            parent: registry.clone(),
                            device: Some(device),
                        })
                        .await
                        .with_context(|| format!("cannot create device {}", device_id(i)))?;
                    record(&mut histogram, t.elapsed());
                    report_progress("created", i + 1, total);
                }
            })
        })
        .collect();
    let mut histogram = new_histogram();
    for worker in workers {
        histogram.add(worker.await??)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(CreateFigures {
        devices: total,
        seconds,
        devices_per_second: total as f64 / seconds,
        step: "CreateDevice request".into(),
        latency: latency(&histogram),
    })
}
