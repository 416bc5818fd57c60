//! What the registry tells the rest of Perch: changes that live device connections must act on
//! (revocation, config pushes), and the hook through which commands reach connected devices.
//!
//! The registry publishes; the bridges subscribe (STYLE.md P4). It never depends on them: the
//! composition root hands it a `CommandSink`.

use perch_core::RegistryName;
use perch_core::Rejection;
use perch_core::model::{Device, DeviceConfig, Registry};

/// Capacity of the event channel; a subscriber that falls further behind is told it lagged
/// and must re-check what it holds.
pub const EVENT_CHANNEL_CAPACITY: usize = 4096;

/// A change made through the admin API.
#[derive(Debug, Clone)]
pub enum RegistryEvent {
    /// A device's admin-managed fields changed (blocked, credentials, metadata, …).
    DeviceChanged {
        registry: RegistryName,
        device: Box<Device>,
    },
    DeviceDeleted {
        registry: RegistryName,
        num_id: u64,
    },
    /// A device was unbound from a gateway: an attachment through that gateway may no longer
    /// be allowed.
    DeviceUnbound {
        registry: RegistryName,
        gateway_num_id: u64,
        device_num_id: u64,
    },
    /// A new config version exists.
    ConfigChanged {
        registry: RegistryName,
        num_id: u64,
        config: DeviceConfig,
    },
    RegistryChanged {
        registry: Box<Registry>,
    },
    RegistryDeleted {
        name: RegistryName,
    },
}

/// Delivers a command to a connected device; implemented by the MQTT bridge.
#[async_trait::async_trait]
pub trait CommandSink: Send + Sync + std::fmt::Debug {
    /// `Err` carries the status to return to the caller (e.g. FAILED_PRECONDITION when the
    /// device is not subscribed).
    async fn send_command(
        &self,
        registry: &RegistryName,
        device: &Device,
        data: Vec<u8>,
        subfolder: String,
    ) -> Result<(), Rejection>;
}

/// Signs device certificates for CSRs sent during provisioning; implemented by the
/// composition root with the data dir's CA (the registry never holds a CA key).
pub trait CertificateIssuer: Send + Sync + std::fmt::Debug {
    /// A PEM certificate for `public_key_pem` (the SubjectPublicKeyInfo of a CSR whose
    /// signature the caller has verified), for device `device_id`; `Err` says why not.
    fn issue(&self, public_key_pem: &str, device_id: &str) -> Result<String, String>;
}
