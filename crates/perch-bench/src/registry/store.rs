//! `perch bench registry --store`: the embedded store written directly, `--batch` devices per
//! transaction, then its size on disk and the time to open it again.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use perch::datadir::DataDir;
use perch_core::model::{Device, DeviceCredential, PublicKeyFormat, Registry};
use perch_core::{LocationName, RegistryId, RegistryName, SystemClock};
use perch_registry::{RegistryService, RegistryServiceOptions};
use perch_store::embedded::EmbeddedRegistryStore;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::lookups::{Target, measure_lookups, random_device};
use super::{
    CreateFigures, DirSize, RegistryBenchArgs, Report, Startup, device_id, device_keys, latency,
    millis,
};
use crate::measure::{new_histogram, record};

pub(super) async fn run_store(
    args: &RegistryBenchArgs,
    location: LocationName,
    registry_id: RegistryId,
) -> Result<Report> {
    let dir = args
        .data_dir
        .as_deref()
        .context("--store needs --data-dir")?;
    // Holding the data dir's lock keeps a server off the file while the bench writes to it.
    let data_dir = DataDir::open(dir)?;
    let registry = location.registry(registry_id.clone());
    let t = Instant::now();
    let service = open_service(&data_dir.registry_path())?;
    let open_ms = millis(t.elapsed());

    let create = if args.lookups_only {
        None
    } else {
        let new_registry = Registry::new(
            location.project.clone(),
            location.location.clone(),
            registry_id,
        );
        service
            .create_registry(&location, new_registry)
            .await
            .with_context(|| format!("cannot create registry {registry}"))?;
        Some(create_devices_store(&service, &registry, args).await?)
    };
    let target = Target::Store {
        service,
        registry: registry.clone(),
    };
    let (first_lookup_ms, lookups) = measure_lookups(target, args).await?;

    // Every clone of the service is gone now, so the store is closed and can be reopened.
    let data_dir_size = dir_size(data_dir.path())?;
    let t = Instant::now();
    let service = open_service(&data_dir.registry_path())?;
    let reopen_open = t.elapsed();
    let t = Instant::now();
    let device = random_device(&mut StdRng::from_rng(&mut rand::rng()), args.devices);
    let mut target = Target::Store {
        service,
        registry: registry.clone(),
    };
    target.get_device(&device).await?;
    let reopen = Startup {
        open_ms: millis(reopen_open),
        first_lookup_ms: millis(t.elapsed()),
    };
    Ok(Report {
        mode: "store",
        registry: registry.to_string(),
        devices: args.devices,
        concurrency: args.concurrency,
        batch: Some(args.batch),
        open_ms: Some(open_ms),
        create,
        first_lookup_ms,
        lookups,
        data_dir: Some(data_dir_size),
        reopen: Some(reopen),
    })
}

pub(super) fn open_service(path: &Path) -> Result<RegistryService> {
    let store = EmbeddedRegistryStore::open(path)
        .with_context(|| format!("cannot open the registry store {}", path.display()))?;
    Ok(RegistryService::new(
        Arc::new(store),
        Arc::new(SystemClock),
        RegistryServiceOptions::default(),
    ))
}

/// `--batch` devices per `create_devices` call, so one transaction (and one fsync) per batch.
pub(super) async fn create_devices_store(
    service: &RegistryService,
    registry: &RegistryName,
    args: &RegistryBenchArgs,
) -> Result<CreateFigures> {
    let keys = device_keys()?;
    let mut histogram = new_histogram();
    let started = Instant::now();
    let mut done = 0;
    while done < args.devices {
        let end = (done + args.batch).min(args.devices);
        let devices = (done..end)
            .map(|i| {
                let mut device = Device::new(device_id(i), 0);
                device.credentials.push(DeviceCredential {
                    format: PublicKeyFormat::Es256Pem,
                    key: keys[i % keys.len()].clone(),
                    expiration_time: None,
                });
                device
            })
            .collect::<Vec<_>>();
        let t = Instant::now();
        service
            .create_devices(registry, devices)
            .await
            .with_context(|| format!("cannot create devices {done}..{end}"))?;
        record(&mut histogram, t.elapsed());
        done = end;
        if done % (args.devices / 10).max(1) < args.batch || done == args.devices {
            eprintln!("created {done}/{}", args.devices);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(CreateFigures {
        devices: args.devices,
        seconds,
        devices_per_second: args.devices as f64 / seconds,
        step: format!("batch of {}", args.batch),
        latency: latency(&histogram),
    })
}

/// Sums the files under `dir`: blocks allocated on disk and lengths.
pub(super) fn dir_size(dir: &Path) -> Result<DirSize> {
    use std::os::unix::fs::MetadataExt;
    let mut size = DirSize {
        disk_bytes: 0,
        apparent_bytes: 0,
    };
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        for entry in
            std::fs::read_dir(&path).with_context(|| format!("cannot list {}", path.display()))?
        {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                size.disk_bytes += meta.blocks() * 512;
                size.apparent_bytes += meta.len();
            }
        }
    }
    Ok(size)
}
