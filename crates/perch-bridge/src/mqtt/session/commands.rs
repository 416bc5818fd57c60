//! Command delivery (SPEC.md §4.8): a command goes to the device (or attached device) whose
//! commands subscription matches its subfolder, at the granted QoS. The admin call is answered
//! once the device PUBACKs (QoS 1) or the socket took it (QoS 0), DEADLINE_EXCEEDED after
//! `command_ack_timeout`, UNAVAILABLE when the connection ends first.

use bytes::Bytes;
use perch_core::{ErrorCode, Rejection};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Action, Now, Session};
use crate::mqtt::codec::{Packet, Publish, QoS};
use crate::sessions::command_deadline_exceeded;

/// A command waiting to answer the admin call: a QoS 1 one for its PUBACK, a QoS 0 one until
/// the socket took it.
#[derive(Debug)]
pub(super) struct PendingCommand {
    reply: oneshot::Sender<Result<(), Rejection>>,
    pub(super) sent: Instant,
    /// Names the command in `Event::Written` and `Session::unsent`.
    ticket: u64,
}

impl PendingCommand {
    fn answer(self, result: Result<(), Rejection>) {
        let _ = self.reply.send(result);
    }
}

impl Session {
    /// Sends a command to device `num_id`, or answers FAILED_PRECONDITION when it does not
    /// subscribe to the command's subfolder.
    pub(super) fn on_command(
        &mut self,
        num_id: u64,
        subfolder: String,
        data: Bytes,
        reply: oneshot::Sender<Result<(), Rejection>>,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let target = self
            .key_for_num_id(num_id)
            .and_then(|k| self.endpoints.get(&k))
            .and_then(|ep| {
                let qos = ep.commands.as_ref().and_then(|(qos, filters)| {
                    filters
                        .iter()
                        .any(|f| f.as_deref().is_none_or(|f| f == subfolder))
                        .then_some(*qos)
                });
                qos.map(|q| (q, ep.identity.device_id.clone()))
            });
        let Some((qos, device_id)) = target else {
            let _ = reply.send(Err(Rejection::failed_precondition(
                "The device is not subscribed to the commands topic.".to_owned(),
            )));
            return;
        };
        let packet_id = (qos == QoS::AtLeastOnce).then(|| self.packet_id());
        let topic = if subfolder.is_empty() {
            format!("/devices/{device_id}/commands")
        } else {
            format!("/devices/{device_id}/commands/{subfolder}")
        };
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic,
            packet_id,
            payload: data,
        };
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        out.push(Action::SendCommand {
            packet: Packet::Publish(publish),
            ticket,
        });
        // QoS 0: answered once written. QoS 1: once PUBACKed. Either way DEADLINE_EXCEEDED
        // after the command ack timeout.
        let pending = PendingCommand {
            reply,
            sent: now.at,
            ticket,
        };
        match packet_id {
            Some(id) => {
                self.inflight_commands.insert(id, pending);
            }
            None => self.unwritten_commands.push(pending),
        }
    }

    /// A PUBACK: answers the command it acknowledges, or records the config ack.
    pub(super) fn on_puback(&mut self, id: u16, now: Now, out: &mut Vec<Action>) {
        if let Some(pending) = self.inflight_commands.remove(&id) {
            pending.answer(Ok(()));
            return;
        }
        self.on_config_puback(id, now, out);
    }

    /// The command `ticket` could not be queued (the device does not read): it is answered
    /// UNAVAILABLE, and the connection closes.
    pub(crate) fn unsent(&mut self, ticket: u64) {
        let queued = self.inflight_commands.extract_if(|_, c| c.ticket == ticket);
        let unwritten = self
            .unwritten_commands
            .extract_if(.., |c| c.ticket == ticket);
        for pending in queued.map(|(_, c)| c).chain(unwritten) {
            pending.answer(Err(Rejection::new(
                ErrorCode::Unavailable,
                "the device is not reading its connection, which is closed",
            )));
        }
    }

    /// Answers DEADLINE_EXCEEDED for commands not PUBACKed (QoS 1) or not written (QoS 0) in
    /// time; the connection stays.
    pub(super) fn expire_commands(&mut self, now: Now) {
        let timeout = self.options.command_ack_timeout;
        let late = self
            .inflight_commands
            .extract_if(|_, c| c.sent + timeout <= now.at)
            .map(|(_, c)| c);
        let unwritten = self
            .unwritten_commands
            .extract_if(.., |c| c.sent + timeout <= now.at);
        for pending in late.chain(unwritten) {
            pending.answer(Err(command_deadline_exceeded(timeout)));
        }
    }

    /// Answers the QoS 0 commands whose output the socket has taken.
    pub(super) fn answer_written_commands(&mut self, tickets: &[u64]) {
        for pending in self
            .unwritten_commands
            .extract_if(.., |c| tickets.contains(&c.ticket))
        {
            pending.answer(Ok(()));
        }
    }

    /// The connection is over: every command still waiting is answered UNAVAILABLE.
    pub(super) fn fail_pending_commands(&mut self) {
        let unwritten = self.unwritten_commands.drain(..);
        for pending in self
            .inflight_commands
            .drain()
            .map(|(_, c)| c)
            .chain(unwritten)
        {
            pending.answer(Err(Rejection::new(
                ErrorCode::Unavailable,
                "the device disconnected before acknowledging the command",
            )));
        }
    }

    /// When the oldest command waiting was sent, if any waits.
    pub(super) fn oldest_command(&self) -> Option<Instant> {
        let unwritten = self.unwritten_commands.iter();
        self.inflight_commands
            .values()
            .chain(unwritten)
            .map(|c| c.sent)
            .min()
    }
}
