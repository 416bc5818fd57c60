//! Bootstrap credentials: creating (with a server-made key pair when none is given), reading,
//! enabling and deleting them, authenticating a bootstrap connection's JWT, and admitting a
//! request under the bootstrap's rate (a token bucket per bootstrap).
//!
//! Owns the bootstrap's own fields and its rate; its counters move with decisions
//! (`decisions`) and registrations (`evaluate`).

use chrono::{DateTime, Utc};
use perch_core::model::DeviceCredential;
use perch_core::{ErrorCode, RegistryName, Rejection};
use perch_store::RecordKind;

use super::model::{Bootstrap, PublicKeyFormatName, Reason};
use super::records::{bootstrap_key, changed_bootstrap, decode, encode};
use super::request::Refusal;
use super::{
    DEFAULT_DEVICE_QUOTA, DEFAULT_PROVISIONS_PER_SECOND, ProvisioningService,
    generate_p256_key_pair,
};
use crate::auth::{AuthError, verify_device_jwt};
use crate::{Result, keys};

/// Token buckets per bootstrap (`registry/id`): tokens left, and when they were last refilled.
pub(super) type RateBuckets = std::collections::HashMap<String, (f64, std::time::Instant)>;

impl ProvisioningService {
    /// Creates a bootstrap credential. Without a public key Perch makes the key pair and returns
    /// the private key (PEM) this once.
    pub async fn create_bootstrap(
        &self,
        registry: &RegistryName,
        mut b: Bootstrap,
    ) -> Result<(Bootstrap, Option<String>)> {
        self.registry.get_registry(registry).await?;
        if !perch_core::ids::is_valid_id(&b.id) {
            return Err(Rejection::invalid_argument(format!(
                "the bootstrap id '{}' is invalid; ids are 3 to 255 characters of letters, digits and -._+~%, starting with a letter",
                b.id
            ))
            .into());
        }
        let private = if b.public_key.is_empty() {
            let (private, public) = generate_p256_key_pair()?;
            b.public_key = public;
            b.format = PublicKeyFormatName::Es256Pem;
            Some(private)
        } else {
            keys::parse_device_key(b.format.format(), &b.public_key)
                .map_err(|r| Rejection::invalid_argument(format!("publicKey: {}", r.message)))?;
            None
        };
        b.registry = registry.to_string();
        if b.device_quota == 0 {
            b.device_quota = DEFAULT_DEVICE_QUOTA;
        }
        b.provisioned = 0;
        b.refused = 0;
        b.decisions = 0;
        b.enabled = true;
        b.create_time = self.registry.clock().now();
        self.store()
            .put_record(
                RecordKind::Bootstrap,
                &bootstrap_key(registry, &b.id),
                encode(&b)?,
                true,
            )
            .await?;
        Ok((b, private))
    }

    pub async fn get_bootstrap(&self, registry: &RegistryName, id: &str) -> Result<Bootstrap> {
        match self
            .store()
            .get_record(RecordKind::Bootstrap, &bootstrap_key(registry, id))
            .await?
        {
            Some(bytes) => decode(&bytes),
            None => Err(Rejection::not_found(format!(
                "bootstrap credential `{id}` does not exist in `{registry}`"
            ))
            .into()),
        }
    }

    pub async fn list_bootstraps(&self, registry: &RegistryName) -> Result<Vec<Bootstrap>> {
        let prefix = format!("{registry}/bootstraps/");
        self.store()
            .list_records(RecordKind::Bootstrap, &prefix, usize::MAX)
            .await?
            .iter()
            .map(|(_, v)| decode(v))
            .collect()
    }

    /// Enables or disables a bootstrap; disabling stops new provisioning, nothing else.
    pub async fn set_bootstrap_enabled(
        &self,
        registry: &RegistryName,
        id: &str,
        enabled: bool,
    ) -> Result<Bootstrap> {
        let id_owned = id.to_owned();
        let update = Box::new(move |current: Option<Vec<u8>>| {
            let bytes = current.ok_or_else(|| {
                Rejection::not_found(format!("bootstrap credential `{id_owned}` does not exist"))
            })?;
            changed_bootstrap(&bytes, |b| {
                b.enabled = enabled;
                Ok(())
            })
            .map(Some)
        });
        let written = self
            .store()
            .update_record(RecordKind::Bootstrap, &bootstrap_key(registry, id), update)
            .await?;
        decode(&written.unwrap_or_default())
    }

    pub async fn delete_bootstrap(&self, registry: &RegistryName, id: &str) -> Result<()> {
        if !self
            .store()
            .delete_record(RecordKind::Bootstrap, &bootstrap_key(registry, id))
            .await?
        {
            return Err(Rejection::not_found(format!(
                "bootstrap credential `{id}` does not exist in `{registry}`"
            ))
            .into());
        }
        Ok(())
    }

    /// Checks a bootstrap connection's JWT against the bootstrap key. Disabled or expired
    /// bootstraps still authenticate: their requests are refused with a reason the device sees.
    pub async fn authenticate(
        &self,
        registry: &RegistryName,
        id: &str,
        token: &str,
        now: DateTime<Utc>,
    ) -> std::result::Result<(Bootstrap, DateTime<Utc>), AuthError> {
        let b = self
            .get_bootstrap(registry, id)
            .await
            .map_err(|_| AuthError::NoUsableCredential)?;
        let credential = DeviceCredential {
            format: b.format.format(),
            key: b.public_key.clone(),
            expiration_time: None,
        };
        let token = verify_device_jwt(token, &registry.project, &[credential], now)?;
        Ok((b, token.expires_at))
    }

    /// The first check, before anything is stored: the bootstrap exists and is under its rate
    /// (every request takes a token, refusals and repeats included).
    pub(super) async fn admit(
        &self,
        registry: &RegistryName,
        bootstrap_id: &str,
    ) -> Result<std::result::Result<(), Refusal>> {
        let b = match self.get_bootstrap(registry, bootstrap_id).await {
            Ok(b) => b,
            Err(e) if e.code() == ErrorCode::NotFound => {
                return Ok(Err((
                    Reason::BootstrapDisabled,
                    format!("bootstrap `{bootstrap_id}` no longer exists"),
                )));
            }
            Err(e) => return Err(e),
        };
        if !self.take_token(&b) {
            return Ok(Err((
                Reason::RateLimited,
                format!(
                    "bootstrap `{bootstrap_id}` is provisioning faster than it may; retry shortly"
                ),
            )));
        }
        Ok(Ok(()))
    }

    /// Takes one provisioning token of a bootstrap; false when it is over its rate.
    fn take_token(&self, b: &Bootstrap) -> bool {
        let rate = f64::from(if b.max_provisions_per_second == 0 {
            DEFAULT_PROVISIONS_PER_SECOND
        } else {
            b.max_provisions_per_second
        });
        // Elapsed time for a rate: the monotonic clock, not the wall clock `Clock` gives.
        let now = std::time::Instant::now();
        let Ok(mut buckets) = self.limiter.lock() else {
            return true;
        };
        let bucket = buckets
            .entry(format!("{}/{}", b.registry, b.id))
            .or_insert((rate, now));
        bucket.0 = (bucket.0 + now.duration_since(bucket.1).as_secs_f64() * rate).min(rate);
        bucket.1 = now;
        if bucket.0 < 1.0 {
            return false;
        }
        bucket.0 -= 1.0;
        true
    }
}
