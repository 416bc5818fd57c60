//! A session's deadlines: idle, keep-alive (1.5 × the client's), token expiry, maximum age, the
//! write deadline of output the device does not read, QoS 1 config resends and command answers.
//! The session names the next one (`next_timer`); the driver sleeps until it and reports it.

use tokio::time::Instant;

use super::{Action, Now, Session};
use crate::mqtt::close::CloseReason;

/// Which deadline passed. When two fall at the same instant the earlier variant wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// `max_connection_age` since the session started.
    Age,
    /// The oldest command waiting reached `command_ack_timeout`.
    Command,
    /// A QoS 1 config waited `config_resend_interval` for its PUBACK.
    Config,
    /// No packet for `idle_timeout`.
    Idle,
    /// No packet for 1.5 × the keep-alive.
    KeepAlive,
    /// The token lapsed (`exp` + skew).
    Token,
    /// Queued output made no progress for `write_timeout`.
    Write,
}

impl Session {
    /// The next deadline and what it is; `write_deadline` is the socket's, if output waits.
    pub(crate) fn next_timer(&self, write_deadline: Option<Instant>) -> (Instant, Timer) {
        let options = &self.options;
        let mut deadline = (self.last_inbound + options.idle_timeout, Timer::Idle);
        if let Some(w) = write_deadline {
            deadline = deadline.min((w, Timer::Write));
        }
        if let Some(k) = self.keep_alive {
            deadline = deadline.min((self.last_inbound + k, Timer::KeepAlive));
        }
        deadline = deadline.min((self.token_expiry, Timer::Token));
        deadline = deadline.min((self.started + options.max_connection_age, Timer::Age));
        for ep in self.endpoints.values() {
            if let Some((_, _, sent)) = ep.config_inflight {
                deadline = deadline.min((sent + options.config_resend_interval, Timer::Config));
            }
        }
        if let Some(sent) = self.oldest_command() {
            deadline = deadline.min((sent + options.command_ack_timeout, Timer::Command));
        }
        deadline
    }

    pub(super) fn on_timer(
        &mut self,
        timer: Timer,
        now: Now,
        out: &mut Vec<Action>,
    ) -> Result<(), CloseReason> {
        match timer {
            Timer::Config => self.resend_due_configs(now, out),
            Timer::Command => self.expire_commands(now),
            Timer::Write => return Err(CloseReason::WriteTimeout(self.options.write_timeout)),
            Timer::Token => return Err(CloseReason::TokenExpired),
            Timer::KeepAlive => return Err(CloseReason::KeepAlive),
            Timer::Age => return Err(CloseReason::MaxAge),
            Timer::Idle => return Err(CloseReason::Idle),
        }
        Ok(())
    }
}
