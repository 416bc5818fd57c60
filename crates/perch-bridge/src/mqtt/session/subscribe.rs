//! SUBSCRIBE and UNSUBSCRIBE: the subscription ACL (a device's own config and commands topics,
//! those of devices attached through it, the gateway's errors topic), the SUBSCRIBE rate and the
//! command-filter cap. The latest config goes out right after the SUBACK (SPEC.md §4.7).

use super::{Action, Now, Session};
use crate::mqtt::close::CloseReason;
use crate::mqtt::codec::{Packet, QoS, SubAck, Subscribe, Unsubscribe};
use crate::mqtt::quota::{self, CommandFilters};
use crate::mqtt::topic::{self, SubscribeTopic};

/// The SUBACK return code of a refused filter (with `subscribe_failure_suback`).
const SUBACK_FAILURE: u8 = 0x80;

impl Session {
    pub(super) fn on_subscribe(
        &mut self,
        s: Subscribe,
        now: Now,
        out: &mut Vec<Action>,
    ) -> Result<(), CloseReason> {
        self.take_subscribe_token(now)?;
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut send_config = Vec::new();
        let mut held = self.command_filter_count();
        let max = self.options.command_filters_max;
        for (filter, qos) in &s.filters {
            let granted = (*qos).min(QoS::AtLeastOnce);
            match topic::parse_subscribe(filter) {
                Some(SubscribeTopic::Config { device }) if self.endpoint_key(device).is_some() => {
                    if let Some(ep) = self.endpoint_mut(device) {
                        ep.config_qos = Some(granted);
                        send_config.push(ep.identity.device_id.clone());
                    }
                    codes.push(granted as u8);
                }
                Some(SubscribeTopic::Commands { device, subfolder })
                    if self.endpoint_key(device).is_some() =>
                {
                    if let Some(ep) = self.endpoint_mut(device) {
                        let entry = ep.commands.get_or_insert((granted, CommandFilters::new()));
                        if !quota::add_command_filter(&mut entry.1, subfolder, &mut held, max) {
                            return Err(CloseReason::CommandFilters { max });
                        }
                        entry.0 = entry.0.max(granted);
                    }
                    codes.push(granted as u8);
                }
                Some(SubscribeTopic::Errors { device })
                    if device == self.own.device_id.as_str() =>
                {
                    self.errors_subscribed = true;
                    codes.push(QoS::AtMostOnce as u8);
                }
                _ if self.options.subscribe_failure_suback => codes.push(SUBACK_FAILURE),
                _ => return Err(self.not_allowed(&format!("subscribe to '{filter}'"))),
            }
        }
        out.push(Action::Send(Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            return_codes: codes,
        })));
        for key in send_config {
            self.send_config(&key, false, now, out);
        }
        Ok(())
    }

    pub(super) fn on_unsubscribe(
        &mut self,
        u: Unsubscribe,
        now: Now,
        out: &mut Vec<Action>,
    ) -> Result<(), CloseReason> {
        self.take_subscribe_token(now)?;
        for f in &u.filters {
            match topic::parse_subscribe(f) {
                Some(SubscribeTopic::Config { device }) => {
                    if let Some(ep) = self.endpoint_mut(device) {
                        ep.config_qos = None;
                        ep.config_inflight = None;
                    }
                }
                Some(SubscribeTopic::Commands { device, .. }) => {
                    if let Some(ep) = self.endpoint_mut(device) {
                        ep.commands = None;
                    }
                }
                Some(SubscribeTopic::Errors { .. }) => self.errors_subscribed = false,
                None => {}
            }
        }
        out.push(Action::Send(Packet::UnsubAck(u.packet_id)));
        Ok(())
    }

    /// Takes one SUBSCRIBE/UNSUBSCRIBE token; `Err` closes a connection over its rate.
    fn take_subscribe_token(&mut self, now: Now) -> Result<(), CloseReason> {
        if self.subscribes.try_take(now.at) {
            return Ok(());
        }
        Err(CloseReason::SubscribeRate {
            per_second: self.options.subscribes_per_second,
        })
    }

    /// Distinct command filters the connection holds, over all its devices.
    fn command_filter_count(&self) -> usize {
        self.endpoints
            .values()
            .filter_map(|ep| ep.commands.as_ref())
            .map(|(_, filters)| filters.len())
            .sum()
    }
}
