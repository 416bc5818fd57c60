//! ListDevices: explicit sets (ids, numeric ids, a gateway's bound devices or a device's
//! gateways) fetched member by member, or a scan in id order filtered by gateway type; both
//! paged by an opaque token bound to the query.

use std::collections::{BTreeMap, HashSet};

use perch_core::limits::LIST_FILTER_IDS_MAX;
use perch_core::model::{Device, GatewayType};
use perch_core::{DeviceId, DeviceRef, ErrorCode, RegistryName, Rejection};

use super::{DeviceListQuery, GatewayListOption, RegistryService, clamp_page_size};
use crate::{Result, page};

impl RegistryService {
    /// A page of devices and the token for the next one (empty at the end).
    pub async fn list_devices(
        &self,
        parent: &RegistryName,
        query: DeviceListQuery,
    ) -> Result<(Vec<Device>, String)> {
        self.check_location(&parent.location())?;
        if query.device_ids.len() > LIST_FILTER_IDS_MAX
            || query.device_num_ids.len() > LIST_FILTER_IDS_MAX
        {
            return Err(Rejection::invalid_argument(format!(
                "a device list filter holds at most {LIST_FILTER_IDS_MAX} ids"
            ))
            .into());
        }
        let mut ids: Vec<String> = query.device_ids.clone();
        ids.sort();
        let mut num_ids = query.device_num_ids.clone();
        num_ids.sort_unstable();
        let gateway_key = format!("{:?}", query.gateway);
        let fingerprint = page::fingerprint(&[
            &parent.to_string(),
            &ids.join(","),
            &num_ids
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(","),
            &gateway_key,
        ]);
        let after = page::decode(&query.page_token, &fingerprint)?;
        let limit = clamp_page_size(query.page_size);
        // An unknown registry is NOT_FOUND, not an empty list.
        self.store.get_registry(parent).await?;

        let mut devices = if !ids.is_empty()
            || !num_ids.is_empty()
            || matches!(
                query.gateway,
                GatewayListOption::AssociationsGatewayId(_)
                    | GatewayListOption::AssociationsDeviceId(_)
            ) {
            let members = self
                .explicit_members(parent, &ids, &num_ids, &query.gateway)
                .await?;
            self.fetch_page(parent, members, after.as_deref(), limit)
                .await?
        } else {
            self.scan_page(parent, after, &query.gateway, limit).await?
        };
        let next = page::next_token(&mut devices, limit, |d| d.id.as_str(), &fingerprint);
        Ok((devices, next))
    }

    /// The devices an explicit query names: its ids and numeric ids, narrowed to (or, without
    /// any, replaced by) the devices its association option names.
    async fn explicit_members(
        &self,
        parent: &RegistryName,
        ids: &[String],
        num_ids: &[u64],
        gateway: &GatewayListOption,
    ) -> Result<Vec<DeviceRef>> {
        let mut refs: Vec<DeviceRef> = Vec::new();
        for id in ids {
            // An id that could never exist simply matches nothing.
            if let Ok(id) = id.parse::<DeviceId>() {
                refs.push(DeviceRef::Id(id));
            }
        }
        refs.extend(num_ids.iter().map(|n| DeviceRef::NumId(*n)));
        let association = match gateway {
            GatewayListOption::AssociationsGatewayId(gw) => {
                let gateway = self
                    .store
                    .get_device(parent, &DeviceRef::parse(gw)?)
                    .await?;
                Some(self.store.devices_bound_to_gateway(gateway.num_id).await?)
            }
            GatewayListOption::AssociationsDeviceId(dev) => {
                let device = self
                    .store
                    .get_device(parent, &DeviceRef::parse(dev)?)
                    .await?;
                Some(self.store.gateways_bound_to_device(device.num_id).await?)
            }
            _ => None,
        };
        Ok(match association {
            Some(associated) if refs.is_empty() => {
                associated.into_iter().map(DeviceRef::NumId).collect()
            }
            Some(associated) => {
                let wanted: HashSet<u64> = associated.into_iter().collect();
                let mut kept = Vec::new();
                for r in refs {
                    if let Ok(d) = self.store.get_device(parent, &r).await
                        && wanted.contains(&d.num_id)
                    {
                        kept.push(DeviceRef::NumId(d.num_id));
                    }
                }
                kept
            }
            None => refs,
        })
    }

    /// Fetches each member (the missing are skipped) and pages over them in id order: up to
    /// `limit + 1` after `after`.
    async fn fetch_page(
        &self,
        parent: &RegistryName,
        members: Vec<DeviceRef>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Device>> {
        let mut found = BTreeMap::new();
        for r in members {
            match self.store.get_device(parent, &r).await {
                Ok(device) => {
                    found.insert(device.id.clone(), device);
                }
                Err(e) if e.code() == ErrorCode::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(found
            .into_values()
            .filter(|d| after.is_none_or(|a| d.id.as_str() > a))
            .take(limit + 1)
            .collect())
    }

    /// Up to `limit + 1` devices after `after` in id order, of the gateway type asked for.
    async fn scan_page(
        &self,
        parent: &RegistryName,
        after: Option<String>,
        gateway: &GatewayListOption,
        limit: usize,
    ) -> Result<Vec<Device>> {
        let after = match after {
            Some(a) => Some(a.parse::<DeviceId>().map_err(|_| {
                Rejection::invalid_argument(
                    "the page token is invalid; pass the nextPageToken of the previous page unchanged",
                )
            })?),
            None => None,
        };
        let filter: perch_store::DeviceFilter = match gateway {
            GatewayListOption::GatewayType(GatewayType::Gateway) => {
                Box::new(|d: &Device| d.gateway_config.is_gateway())
            }
            GatewayListOption::GatewayType(GatewayType::NonGateway) => {
                Box::new(|d: &Device| !d.gateway_config.is_gateway())
            }
            _ => Box::new(|_: &Device| true),
        };
        Ok(self
            .store
            .list_devices(parent, after, limit + 1, filter)
            .await?)
    }
}
