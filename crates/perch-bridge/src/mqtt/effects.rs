//! Carries out a session's effects against the bridge: telemetry through `ingest`, state through
//! `state`, the registry reads an attach or a re-check needs, and the bookkeeping writes. The
//! session decides; this module only does, and reports what came of it.

use perch_core::DeviceRef;

use crate::bridge::Inner;
use crate::mqtt::session::{Effect, Outcome};
use crate::router::DeviceIdentity;
use crate::{ingest, state};

/// Runs `effect`; the outcome to feed back to the session, for those that have one.
pub(crate) async fn run(bridge: &Inner, effect: Effect) -> Option<Outcome> {
    match effect {
        Effect::Telemetry {
            identity,
            registry,
            subfolder,
            data,
            ack,
        } => {
            let via = ingest::Via::Mqtt;
            let result =
                ingest::telemetry(bridge, &registry, &identity, &subfolder, data, via).await;
            Some(Outcome::Telemetry { ack, result })
        }
        Effect::StoreState {
            identity,
            registry,
            data,
            ack,
        } => {
            let result = state::store_state(bridge, &identity, &registry, data).await;
            Some(Outcome::State { ack, result })
        }
        Effect::LookUpAttach {
            gateway,
            device,
            request,
        } => {
            let store = bridge.registry.store();
            let found = match store
                .get_device(&gateway.registry, &DeviceRef::Id(device))
                .await
            {
                Ok(d) => {
                    let bound = is_bound(bridge, &gateway, d.num_id).await;
                    Some((Box::new(d), bound))
                }
                Err(_) => None,
            };
            Some(Outcome::AttachLookup { request, found })
        }
        Effect::LookUpAttachment {
            gateway,
            num_id,
            device,
        } => {
            let device = match device {
                Some(d) => Ok(d),
                None => bridge
                    .registry
                    .store()
                    .get_device(&gateway.registry, &DeviceRef::NumId(num_id))
                    .await
                    .map(Box::new)
                    .map_err(|e| e.to_string()),
            };
            let found = match device {
                Ok(d) => Ok((d, is_bound(bridge, &gateway, num_id).await)),
                Err(e) => Err(e),
            };
            Some(Outcome::Attachment { num_id, found })
        }
        Effect::Record { identity, update } => {
            let _ = bridge.record(&identity, move |d| update.apply(d)).await;
            None
        }
        Effect::RecordError {
            identity,
            code,
            message,
            at,
        } => {
            bridge
                .activity
                .error(&identity.registry, identity.num_id, at, code, message);
            None
        }
        Effect::Heartbeat { identity, at } => {
            bridge
                .activity
                .heartbeat(&identity.registry, identity.num_id, at);
            None
        }
    }
}

/// Whether device `num_id` is bound to `gateway` (false when the store cannot say).
async fn is_bound(bridge: &Inner, gateway: &DeviceIdentity, num_id: u64) -> bool {
    bridge
        .registry
        .store()
        .gateways_bound_to_device(num_id)
        .await
        .map(|g| g.contains(&gateway.num_id))
        .unwrap_or(false)
}
