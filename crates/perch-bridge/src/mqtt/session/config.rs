//! Config delivery (SPEC.md §4.7): the latest config after a SUBSCRIBE and on every newer
//! version, at the granted QoS; a QoS 1 config is resent (DUP, same packet id while the version
//! holds) every `config_resend_interval` until PUBACKed, and its PUBACK is recorded.

use bytes::Bytes;
use perch_core::DeviceId;
use perch_core::model::DeviceConfig;

use super::{Action, Effect, Now, Session, Update};
use crate::mqtt::codec::{Packet, Publish, QoS};

impl Session {
    /// Sends the config of endpoint `key` if it is subscribed (`dup`: a resend).
    pub(super) fn send_config(
        &mut self,
        key: &DeviceId,
        dup: bool,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let Some((qos, inflight, version)) = self
            .endpoints
            .get(key)
            .map(|ep| (ep.config_qos, ep.config_inflight, ep.config.version))
        else {
            return;
        };
        let Some(qos) = qos else {
            if let Some(ep) = self.endpoints.get_mut(key) {
                ep.config_inflight = None;
            }
            return;
        };
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            _ => Some(match (dup, inflight) {
                (true, Some((id, v, _))) if v == version => id,
                _ => self.packet_id(),
            }),
        };
        let Some(ep) = self.endpoints.get_mut(key) else {
            return;
        };
        let publish = Publish {
            dup: dup && packet_id.is_some(),
            qos,
            retain: false,
            topic: format!("/devices/{}/config", ep.identity.device_id),
            packet_id,
            payload: Bytes::from(ep.config.binary_data.clone()),
        };
        ep.config_inflight = packet_id.map(|id| (id, ep.config.version, now.at));
        out.push(Action::Send(Packet::Publish(publish)));
        out.push(Action::Run(Effect::Record {
            identity: ep.identity.clone(),
            update: Update::ConfigSent { at: now.wall },
        }));
    }

    /// Resends the QoS 1 configs whose PUBACK is overdue.
    pub(super) fn resend_due_configs(&mut self, now: Now, out: &mut Vec<Action>) {
        let interval = self.options.config_resend_interval;
        let due: Vec<DeviceId> = self
            .endpoints
            .iter()
            .filter(|(_, ep)| {
                ep.config_inflight
                    .is_some_and(|(_, _, sent)| sent + interval <= now.at)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.send_config(&key, true, now, out);
        }
    }

    /// A newer config of device `num_id` (the session's or an attached one) goes out at once.
    pub(super) fn on_new_config(
        &mut self,
        num_id: u64,
        config: DeviceConfig,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let Some(key) = self.key_for_num_id(num_id) else {
            return;
        };
        let newer = self.endpoints.get_mut(&key).is_some_and(|ep| {
            let newer = config.version > ep.config.version;
            if newer {
                ep.config = config;
            }
            newer
        });
        if newer {
            self.send_config(&key, false, now, out);
        }
    }

    /// A PUBACK for a config in flight: recorded as the device's config ack (nothing when `id`
    /// is no config's).
    pub(super) fn on_config_puback(&mut self, id: u16, now: Now, out: &mut Vec<Action>) {
        let acked = self
            .endpoints
            .values_mut()
            .find_map(|ep| match ep.config_inflight {
                Some((pid, version, _)) if pid == id => {
                    ep.config_inflight = None;
                    Some((ep.identity.clone(), version))
                }
                _ => None,
            });
        let Some((identity, version)) = acked else {
            return;
        };
        out.push(Action::Run(Effect::Record {
            identity,
            update: Update::ConfigAcked {
                version,
                at: now.wall,
            },
        }));
    }
}
