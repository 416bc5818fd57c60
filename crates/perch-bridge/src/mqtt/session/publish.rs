//! PUBLISH from the device: the topic ACL, telemetry (PUBACK only once published) and state
//! reports (stored, or dropped over the state rate and still PUBACKed, SPEC.md §4.6). Attach and
//! detach topics go to `attach`.

use perch_core::{DeviceId, ErrorCode};

use super::{Action, Effect, Now, Session, push_ack};
use crate::mqtt::close::CloseReason;
use crate::mqtt::codec::{Publish, QoS};
use crate::mqtt::topic::{self, PublishTopic};

/// The packet id a PUBLISH is PUBACKed with (QoS 1), if any.
pub(super) fn ack_id(p: &Publish) -> Option<u16> {
    match (p.qos, p.packet_id) {
        (QoS::AtLeastOnce, Some(id)) => Some(id),
        _ => None,
    }
}

impl Session {
    pub(super) fn on_publish(
        &mut self,
        p: Publish,
        now: Now,
        out: &mut Vec<Action>,
    ) -> Result<(), CloseReason> {
        if p.qos == QoS::ExactlyOnce {
            return Err(CloseReason::QoS2Publish);
        }
        match topic::parse_publish(&p.topic) {
            Some(PublishTopic::Events { device, subfolder }) => {
                let subfolder = subfolder.to_owned();
                let device = device.to_owned();
                self.on_telemetry(&device, subfolder, &p, now, out)
            }
            Some(PublishTopic::State { device }) => {
                let device = device.to_owned();
                self.on_state(&device, &p, now, out)
            }
            Some(PublishTopic::Attach { device }) if self.is_gateway() => {
                let device = device.to_owned();
                self.attach(&device, &p, out);
                Ok(())
            }
            Some(PublishTopic::Detach { device }) if self.is_gateway() => {
                let device = device.to_owned();
                self.detach_on_request(&device);
                push_ack(ack_id(&p), out);
                Ok(())
            }
            Some(PublishTopic::Attach { .. }) | Some(PublishTopic::Detach { .. }) => {
                Err(self.not_allowed("attach or detach devices: it is not a gateway"))
            }
            None => Err(self.not_allowed(&format!("publish to '{}'", p.topic))),
        }
    }

    /// The endpoint publishing as `device`: the session's own device or one attached to it.
    fn publisher(&self, device: &str, p: &Publish) -> Result<DeviceId, CloseReason> {
        self.endpoint_key(device)
            .ok_or_else(|| self.not_allowed(&format!("publish to '{}'", p.topic)))
    }

    fn on_telemetry(
        &mut self,
        device: &str,
        subfolder: String,
        p: &Publish,
        now: Now,
        out: &mut Vec<Action>,
    ) -> Result<(), CloseReason> {
        let key = self.publisher(device, p)?;
        if p.payload.len() > self.options.telemetry_max_bytes {
            return Err(CloseReason::TelemetryTooLarge {
                bytes: p.payload.len(),
                limit: self.options.telemetry_max_bytes,
            });
        }
        if !self.telemetry.try_take(now.at) {
            return Err(CloseReason::TelemetryRate {
                per_second: self.options.telemetry_per_second,
            });
        }
        let identity = self
            .endpoints
            .get(&key)
            .map(|ep| ep.identity.clone())
            .unwrap_or_else(|| self.own.clone());
        out.push(Action::Run(Effect::Telemetry {
            identity,
            registry: self.registry.clone(),
            subfolder,
            data: p.payload.clone(),
            ack: ack_id(p),
        }));
        Ok(())
    }

    fn on_state(
        &mut self,
        device: &str,
        p: &Publish,
        now: Now,
        out: &mut Vec<Action>,
    ) -> Result<(), CloseReason> {
        let key = self.publisher(device, p)?;
        if p.payload.len() > self.options.state_max_bytes {
            return Err(CloseReason::StateTooLarge {
                bytes: p.payload.len(),
                limit: self.options.state_max_bytes,
            });
        }
        let min_interval = self.options.state_min_interval;
        let Some(ep) = self.endpoints.get_mut(&key) else {
            return Ok(());
        };
        let identity = ep.identity.clone();
        if ep
            .last_state
            .is_some_and(|last| now.at < last + min_interval)
        {
            // Over the state rate: dropped, acknowledged anyway, and recorded (SPEC.md §4.6).
            let message = format!(
                "mqtt: state reports faster than one per {} ms are dropped",
                min_interval.as_millis()
            );
            out.push(Action::Run(Effect::RecordError {
                identity,
                code: ErrorCode::ResourceExhausted,
                message,
                at: now.wall,
            }));
            push_ack(ack_id(p), out);
            return Ok(());
        }
        ep.last_state = Some(now.at);
        out.push(Action::Run(Effect::StoreState {
            identity,
            registry: self.registry.clone(),
            data: p.payload.clone(),
            ack: ack_id(p),
        }));
        Ok(())
    }
}
