//! GetDevice timings, by string id and by numeric id, against a server or an open store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use perch_core::{DeviceName, DeviceRef, RegistryName};
use perch_proto::iot;
use perch_registry::RegistryService;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::api::Client;
use super::{LookupFigures, RegistryBenchArgs, device_id, latency, millis};
use crate::measure::{new_histogram, record};

/// Where lookups go: a server over gRPC, or the service on an open store.
#[derive(Debug, Clone)]
pub(super) enum Target {
    Api {
        client: Client,
        registry: String,
    },
    Store {
        service: RegistryService,
        registry: RegistryName,
    },
}

impl Target {
    /// Looks a device up and returns its numeric id.
    pub(super) async fn get_device(&mut self, device: &DeviceRef) -> Result<u64> {
        match self {
            Target::Api { client, registry } => {
                let name = format!("{registry}/devices/{device}");
                let found = client
                    .get_device(iot::GetDeviceRequest {
                        name: name.clone(),
                        field_mask: None,
                    })
                    .await
                    .with_context(|| format!("GetDevice {name} failed"))?;
                Ok(found.into_inner().num_id)
            }
            Target::Store { service, registry } => {
                let name = DeviceName {
                    registry: registry.clone(),
                    device: device.clone(),
                };
                let found = service
                    .get_device(&name)
                    .await
                    .with_context(|| format!("get_device {name} failed"))?;
                Ok(found.num_id)
            }
        }
    }
}

pub(super) fn random_device(rng: &mut StdRng, devices: usize) -> DeviceRef {
    DeviceRef::Id(device_id(rng.random_range(0..devices)))
}

/// Times the first lookup, then four rounds over one random sample of devices: by string id
/// sequentially (which also learns their numeric ids), by numeric id sequentially, then both
/// again at `--concurrency`. Only the first round can meet pages that are not cached yet.
pub(super) async fn measure_lookups(
    target: Target,
    args: &RegistryBenchArgs,
) -> Result<(f64, Vec<LookupFigures>)> {
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let t = Instant::now();
    target
        .clone()
        .get_device(&random_device(&mut rng, args.devices))
        .await
        .context("the first lookup failed; does the registry hold --devices bench devices?")?;
    let first_lookup_ms = millis(t.elapsed());
    if args.lookups == 0 {
        return Ok((first_lookup_ms, Vec::new()));
    }
    let mut by_id: Vec<DeviceRef> = (0..args.lookups)
        .map(|_| random_device(&mut rng, args.devices))
        .collect();
    let (figures, num_ids) = lookup_round("id", &target, by_id.clone(), 1).await?;
    let mut by_num_id: Vec<DeviceRef> = num_ids.into_iter().map(DeviceRef::NumId).collect();
    by_num_id.shuffle(&mut rng);
    let mut out = vec![figures];
    out.push(
        lookup_round("numId", &target, by_num_id.clone(), 1)
            .await?
            .0,
    );
    if args.concurrency > 1 {
        by_id.shuffle(&mut rng);
        by_num_id.shuffle(&mut rng);
        for (by, refs) in [("id", by_id), ("numId", by_num_id)] {
            out.push(lookup_round(by, &target, refs, args.concurrency).await?.0);
        }
    }
    Ok((first_lookup_ms, out))
}

/// Looks up every device of `refs` with `concurrency` workers; returns the figures and the
/// numeric ids found, in the order of `refs`.
pub(super) async fn lookup_round(
    by: &'static str,
    target: &Target,
    refs: Vec<DeviceRef>,
    concurrency: usize,
) -> Result<(LookupFigures, Vec<u64>)> {
    let refs = Arc::new(refs);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (mut target, refs, next) = (target.clone(), refs.clone(), next.clone());
            tokio::spawn(async move {
                let mut histogram = new_histogram();
                let mut found = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(device) = refs.get(i) else {
                        return Ok::<_, anyhow::Error>((histogram, found));
                    };
                    let t = Instant::now();
                    let num_id = target.get_device(device).await?;
                    record(&mut histogram, t.elapsed());
                    found.push((i, num_id));
                }
            })
        })
        .collect();
    let mut histogram = new_histogram();
    let mut num_ids = vec![0; refs.len()];
    for worker in workers {
        let (h, found) = worker.await??;
        histogram.add(h)?;
        for (i, num_id) in found {
            num_ids[i] = num_id;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let figures = LookupFigures {
        by,
        concurrency,
        count: refs.len(),
        per_second: refs.len() as f64 / seconds,
        latency: latency(&histogram),
    };
    Ok((figures, num_ids))
}
