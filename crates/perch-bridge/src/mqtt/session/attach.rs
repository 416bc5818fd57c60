//! Devices attached through a gateway (SPEC.md §4.9): ATTACH (the device is read and the
//! gateway's rules checked, `mqtt::gateway`), DETACH, and the re-checks an admin change starts
//! (unbind, delete, block, credentials, the gateway's own auth method). A refused attach or a
//! revoked attachment answers on the gateway's errors topic, never by closing.

use bytes::Bytes;
use perch_core::DeviceId;
use perch_core::model::Device;

use super::publish::ack_id;
use super::{Action, Effect, Endpoint, Now, Session, Update, push_ack};
use crate::mqtt::close::CloseReason;
use crate::mqtt::codec::{Packet, Publish, QoS};
use crate::mqtt::gateway;
use crate::router::DeviceIdentity;

/// The `errors` payload's `error_type` for attach refusals and revocations.
const ATTACHMENT_ERROR: &str = "GATEWAY_ATTACHMENT_ERROR";

/// An ATTACH waiting for its device to be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttachRequest {
    /// The device id as the topic spelled it.
    pub(super) device: String,
    /// The attach JWT from the payload, if any.
    pub(super) token: Option<String>,
    pub(super) topic: String,
    pub(super) packet_id: Option<u16>,
    pub(super) ack: Option<u16>,
}

impl Session {
    /// ATTACH of `device`: acknowledged at once when already attached, else looked up.
    pub(super) fn attach(&mut self, device: &str, p: &Publish, out: &mut Vec<Action>) {
        if self.endpoint_key(device).is_some() {
            push_ack(ack_id(p), out);
            return;
        }
        let request = AttachRequest {
            device: device.to_owned(),
            token: gateway::attach_token(&p.payload),
            topic: p.topic.clone(),
            packet_id: p.packet_id,
            ack: ack_id(p),
        };
        match device.parse::<DeviceId>() {
            Ok(id) => out.push(Action::Run(Effect::LookUpAttach {
                gateway: self.own.clone(),
                device: id,
                request,
            })),
            Err(_) => {
                let reason = format!("'{device}' is not a valid device id");
                self.refuse_attach(&request, &reason, out);
            }
        }
    }

    /// The device an ATTACH named, read: attached if the gateway's rules allow it.
    pub(super) fn finish_attach(
        &mut self,
        request: AttachRequest,
        found: Option<(Box<Device>, bool)>,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let Some((target, bound)) = found else {
            let reason = format!(
                "device `{}` does not exist in registry `{}`",
                request.device, self.registry.id
            );
            return self.refuse_attach(&request, &reason, out);
        };
        let credential = match gateway::authorize_attach(
            &self.device,
            &target,
            bound,
            request.token.as_deref(),
            &self.own.registry.project,
            now.wall,
        ) {
            Ok(credential) => credential,
            Err(reason) => return self.refuse_attach(&request, &reason, out),
        };
        let identity = DeviceIdentity {
            registry: self.own.registry.clone(),
            device_id: target.id.clone(),
            num_id: target.num_id,
        };
        let conn_id =
            self.sessions
                .register(target.num_id, self.own.registry.clone(), self.tx.clone());
        let mut endpoint = Endpoint::new(identity.clone(), target.config.clone(), Some(conn_id));
        endpoint.attach_credential = credential;
        self.endpoints.insert(target.id.clone(), endpoint);
        out.push(Action::Run(Effect::Record {
            identity,
            update: Update::GatewayAccessed {
                gateway_id: self.own.device_id.to_string(),
                at: now.wall,
            },
        }));
        push_ack(request.ack, out);
    }

    /// A refused ATTACH: answered on the errors topic only (no PUBACK).
    fn refuse_attach(&self, request: &AttachRequest, reason: &str, out: &mut Vec<Action>) {
        tracing::debug!(gateway = %self.own.device_id, device = request.device.as_str(), reason = %reason, "attach refused");
        self.send_error(
            reason,
            &request.device,
            "ATTACH",
            &request.topic,
            request.packet_id.unwrap_or(0),
            out,
        );
    }

    /// DETACH of `device` by the gateway (nothing when it is not attached).
    pub(super) fn detach_on_request(&mut self, device: &str) {
        let attached = self
            .endpoint_key(device)
            .filter(|k| *k != self.own.device_id)
            .and_then(|k| self.endpoints.get(&k))
            .map(|ep| ep.identity.num_id);
        if let Some(num_id) = attached {
            self.detach(num_id);
        }
    }

    /// Detaches an attached device (revoked, deleted, or attached elsewhere).
    fn detach(&mut self, num_id: u64) {
        let Some(key) = self.key_for_num_id(num_id) else {
            return;
        };
        if let Some(conn_id) = self.endpoints.remove(&key).and_then(|ep| ep.conn_id) {
            self.sessions.unregister(num_id, conn_id);
        }
    }

    /// Detaches an attached device the server revoked, telling the gateway why on its errors
    /// topic (if subscribed).
    pub(super) fn revoke_attachment(&mut self, num_id: u64, reason: &str, out: &mut Vec<Action>) {
        let Some(key) = self.attached_key(num_id) else {
            return;
        };
        tracing::debug!(gateway = %self.own.device_id, device = %key, reason, "attachment revoked");
        self.detach(num_id);
        let description = format!("device `{key}` was detached: {reason}");
        let topic = format!("/devices/{key}/detach");
        self.send_error(&description, key.as_str(), "DETACH", &topic, 0, out);
    }

    /// The endpoint key of `num_id` when it is attached through this gateway (not its own).
    fn attached_key(&self, num_id: u64) -> Option<DeviceId> {
        self.key_for_num_id(num_id)
            .filter(|k| *k != self.own.device_id)
    }

    /// Re-checks the attachment of device `num_id` (changed through the admin API, or unbound)
    /// under the gateway's current settings: the device (read unless given) and its binding.
    pub(super) fn recheck_attachment(
        &mut self,
        num_id: u64,
        device: Option<Box<Device>>,
        out: &mut Vec<Action>,
    ) {
        if self.attached_key(num_id).is_none() {
            return;
        }
        out.push(Action::Run(Effect::LookUpAttachment {
            gateway: self.own.clone(),
            num_id,
            device,
        }));
    }

    /// The re-read attached device: detached when no longer allowed.
    pub(super) fn finish_recheck(
        &mut self,
        num_id: u64,
        found: Result<(Box<Device>, bool), String>,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let Some(key) = self.attached_key(num_id) else {
            return;
        };
        let (device, bound) = match found {
            Ok(found) => found,
            Err(e) => {
                let reason = format!("it could not be read: {e}");
                return self.revoke_attachment(num_id, &reason, out);
            }
        };
        let credential = self
            .endpoints
            .get(&key)
            .and_then(|ep| ep.attach_credential.clone());
        let allowed = gateway::recheck_attachment(
            &self.device,
            &device,
            bound,
            credential.as_deref(),
            now.wall,
        );
        if let Err(reason) = allowed {
            self.revoke_attachment(num_id, &reason, out);
        }
    }

    /// The connecting device changed: blocked or its credential removed closes the connection;
    /// a changed gateway auth method re-checks every attachment.
    pub(super) fn own_device_changed(
        &mut self,
        device: Device,
        now: Now,
        out: &mut Vec<Action>,
    ) -> Result<(), CloseReason> {
        if device.blocked {
            return Err(CloseReason::Blocked);
        }
        if !gateway::holds_credential(&device, &self.credential, now.wall) {
            return Err(CloseReason::CredentialRemoved);
        }
        let auth_changed = device.gateway_config.gateway_auth_method
            != self.device.gateway_config.gateway_auth_method
            || device.gateway_config.is_gateway() != self.is_gateway();
        self.device = device;
        if auth_changed {
            let attached: Vec<u64> = self
                .endpoints
                .values()
                .filter(|ep| ep.conn_id.is_some())
                .map(|ep| ep.identity.num_id)
                .collect();
            for num_id in attached {
                self.recheck_attachment(num_id, None, out);
            }
        }
        Ok(())
    }

    /// A message on the gateway's errors topic, if it subscribed.
    fn send_error(
        &self,
        description: &str,
        device: &str,
        message_type: &str,
        topic: &str,
        packet_id: u16,
        out: &mut Vec<Action>,
    ) {
        if !self.errors_subscribed {
            return;
        }
        let payload = gateway::error_message(
            ATTACHMENT_ERROR,
            description,
            device,
            message_type,
            topic,
            packet_id,
        );
        out.push(Action::Send(Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: format!("/devices/{}/errors", self.own.device_id),
            packet_id: None,
            payload: Bytes::from(payload),
        })));
    }
}
