//! Test fixtures for provisioning: a registry service on a fresh embedded store with a hand-set
//! clock, registries with a bootstrap, and requests.

use std::sync::Arc;

use perch_core::RegistryName;

use super::model::{Bootstrap, Claims, ProvisionRequest};
use super::{ProvisioningOptions, ProvisioningService};
use crate::RegistryService;

/// A registry service on a fresh embedded store with a hand-set clock (at a fixed instant),
/// and its provisioning.
pub(super) async fn service(
    dir: &std::path::Path,
    cap: u64,
) -> (ProvisioningService, Arc<perch_core::ManualClock>) {
    let store = perch_store::embedded::EmbeddedRegistryStore::open(&dir.join("r.redb")).unwrap();
    let start = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let clock = Arc::new(perch_core::ManualClock::new(start));
    let options = crate::RegistryServiceOptions {
        provisioning: ProvisioningOptions {
            decisions_per_bootstrap: cap,
            decision_retention: None,
        },
        ..Default::default()
    };
    let registry = RegistryService::new(Arc::new(store), clock.clone(), options);
    // The webhook client needs the process's TLS provider, as `perch serve` installs it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    (ProvisioningService::new(registry), clock)
}

pub(super) async fn registry_with_bootstrap(p: &ProvisioningService, id: &str) -> RegistryName {
    let location = perch_core::LocationName {
        project: "p".into(),
        location: "us-central1".into(),
    };
    let registry = perch_core::model::Registry::new("", "", id.parse().unwrap());
    p.registry
        .create_registry(&location, registry)
        .await
        .unwrap();
    let name = RegistryName::parse(
        "parent",
        &format!("projects/p/locations/us-central1/registries/{id}"),
    )
    .unwrap();
    let bootstrap = Bootstrap {
        id: "lot-1".into(),
        ..Default::default()
    };
    p.create_bootstrap(&name, bootstrap).await.unwrap();
    p.set_bootstrap_enabled(&name, "lot-1", false)
        .await
        .unwrap();
    name
}

/// A request a disabled bootstrap refuses.
pub(super) fn refused_request() -> ProvisionRequest {
    ProvisionRequest {
        request_id: "r".into(),
        claims: Claims {
            serial: "s".into(),
            device_id: "pi-1".into(),
            ..Default::default()
        },
        generate_key: Some("ES256".into()),
        ..Default::default()
    }
}
