//! What flows to and from a device through the registry: config versions (with the per-device
//! update throttle), reported states, and commands handed to the bridge.

use chrono::Duration;
use perch_core::limits::CONFIG_DATA_MAX_BYTES;
use perch_core::model::{Device, DeviceConfig, DeviceState};
use perch_core::{DeviceName, ErrorCode, Rejection};

use super::{COMMAND_DATA_MAX_BYTES, RegistryService};
use crate::Result;
use crate::events::RegistryEvent;

pub(super) fn check_config_data(data: &[u8]) -> Result<(), Rejection> {
    if data.len() > CONFIG_DATA_MAX_BYTES {
        return Err(Rejection::invalid_argument(format!(
            "the config data has {} bytes; the limit is {CONFIG_DATA_MAX_BYTES}",
            data.len()
        )));
    }
    Ok(())
}

impl RegistryService {
    /// Stores a new config version; `version_to_update` 0 is unconditional, otherwise it must be
    /// the current version.
    pub async fn modify_config(
        &self,
        name: &DeviceName,
        version_to_update: i64,
        data: Vec<u8>,
    ) -> Result<DeviceConfig> {
        self.check_location(&name.registry.location())?;
        check_config_data(&data)?;
        let now = self.clock.now();
        let min_interval = self.options.config_update_min_interval;
        let update = Box::new(move |device: &mut Device| {
            if version_to_update != 0 && version_to_update != device.config.version {
                return Err(Rejection::failed_precondition(format!(
                    "versionToUpdate is {version_to_update} but the current config version is {}; fetch the device and retry",
                    device.config.version
                )));
            }
            // Version 1 comes from CreateDevice; the throttle is between config updates.
            if min_interval > Duration::zero()
                && device.config.version > 1
                && let Some(last) = device.config.cloud_update_time
                && now < last + min_interval
            {
                return Err(Rejection::new(
                    ErrorCode::ResourceExhausted,
                    format!(
                        "the config of device `{}` was updated less than {} ms ago; a device takes at most one config update per second",
                        device.id,
                        min_interval.num_milliseconds()
                    ),
                ));
            }
            device.config = DeviceConfig {
                version: device.config.version + 1,
                cloud_update_time: Some(now),
                device_ack_time: None,
                binary_data: data,
            };
            Ok(())
        });
        let device = self
            .store
            .update_device(&name.registry, &name.device, update)
            .await?;
        self.emit(RegistryEvent::ConfigChanged {
            registry: name.registry.clone(),
            num_id: device.num_id,
            config: device.config.clone(),
        });
        Ok(device.config)
    }

    pub async fn list_config_versions(
        &self,
        name: &DeviceName,
        num_versions: usize,
    ) -> Result<Vec<DeviceConfig>> {
        self.check_location(&name.registry.location())?;
        Ok(self
            .store
            .list_config_versions(&name.registry, &name.device, num_versions)
            .await?)
    }

    pub async fn list_states(
        &self,
        name: &DeviceName,
        num_states: usize,
    ) -> Result<Vec<DeviceState>> {
        self.check_location(&name.registry.location())?;
        Ok(self
            .store
            .list_states(&name.registry, &name.device, num_states)
            .await?)
    }

    /// Sends a command to a connected device. Until the MQTT bridge delivers commands, no device
    /// is ever subscribed, so this answers `FAILED_PRECONDITION` as IoT Core did for an
    /// unsubscribed device.
    pub async fn send_command(
        &self,
        name: &DeviceName,
        data: &[u8],
        subfolder: &str,
    ) -> Result<()> {
        let device = self.get_device(name).await?;
        if data.len() > COMMAND_DATA_MAX_BYTES {
            return Err(Rejection::invalid_argument(format!(
                "the command data has {} bytes; the limit is {COMMAND_DATA_MAX_BYTES}",
                data.len()
            ))
            .into());
        }
        if subfolder.len() > 256 || subfolder.contains(['+', '#', '\0']) {
            return Err(Rejection::invalid_argument(format!(
                "the command subfolder '{subfolder}' is invalid: at most 256 characters, no '+', '#' or NUL"
            ))
            .into());
        }
        match self.commands.get() {
            Some(sink) => Ok(sink
                .send_command(&name.registry, &device, data.to_vec(), subfolder.to_owned())
                .await?),
            None => Err(Rejection::failed_precondition(format!(
                "Device `{}` is not connected; it is not subscribed to the commands topic.",
                device.id
            ))
            .into()),
        }
    }
}
