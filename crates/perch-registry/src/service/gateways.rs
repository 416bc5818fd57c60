//! Gateway bindings: binding a device to a gateway (at most `GATEWAY_BOUND_DEVICES_MAX` each)
//! and unbinding it, which live gateway sessions follow through `DeviceUnbound`.

use perch_core::limits::GATEWAY_BOUND_DEVICES_MAX;
use perch_core::model::Device;
use perch_core::{DeviceRef, ErrorCode, RegistryName, Rejection};

use super::RegistryService;
use crate::Result;
use crate::events::RegistryEvent;

impl RegistryService {
    async fn gateway_and_device(
        &self,
        parent: &RegistryName,
        gateway_id: &str,
        device_id: &str,
    ) -> Result<(Device, Device)> {
        self.check_location(&parent.location())?;
        let gateway = self
            .store
            .get_device(parent, &DeviceRef::parse(gateway_id)?)
            .await?;
        let device = self
            .store
            .get_device(parent, &DeviceRef::parse(device_id)?)
            .await?;
        Ok((gateway, device))
    }

    pub async fn bind_device_to_gateway(
        &self,
        parent: &RegistryName,
        gateway_id: &str,
        device_id: &str,
    ) -> Result<()> {
        let (gateway, device) = self
            .gateway_and_device(parent, gateway_id, device_id)
            .await?;
        if !gateway.gateway_config.is_gateway() {
            return Err(Rejection::invalid_argument(format!(
                "device `{}` is not a gateway; create it with gatewayConfig.gatewayType GATEWAY",
                gateway.id
            ))
            .into());
        }
        if device.gateway_config.is_gateway() {
            return Err(Rejection::invalid_argument(format!(
                "`{}` is a gateway; a gateway cannot be bound to another gateway",
                device.id
            ))
            .into());
        }
        if self
            .store
            .devices_bound_to_gateway(gateway.num_id)
            .await?
            .len()
            >= GATEWAY_BOUND_DEVICES_MAX
        {
            return Err(Rejection::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "gateway `{}` already has {GATEWAY_BOUND_DEVICES_MAX} bound devices",
                    gateway.id
                ),
            )
            .into());
        }
        Ok(self
            .store
            .bind_device_to_gateway(parent, gateway.num_id, device.num_id)
            .await?)
    }

    pub async fn unbind_device_from_gateway(
        &self,
        parent: &RegistryName,
        gateway_id: &str,
        device_id: &str,
    ) -> Result<()> {
        let (gateway, device) = self
            .gateway_and_device(parent, gateway_id, device_id)
            .await?;
        self.store
            .unbind_device_from_gateway(parent, gateway.num_id, device.num_id)
            .await?;
        self.emit(RegistryEvent::DeviceUnbound {
            registry: parent.clone(),
            gateway_num_id: gateway.num_id,
            device_num_id: device.num_id,
        });
        Ok(())
    }
}
