//! The open-file budget: raising `RLIMIT_NOFILE` at start-up and lowering the listeners'
//! connection caps so that all connections together fit in it.

use crate::serve::{Listeners, ServeConfig};

/// File descriptors kept back from client connections for the stores, log segments, the
/// telemetry database and the runtime (default 128): listener caps are lowered at start-up so
/// that all connections together stay below `RLIMIT_NOFILE` minus this.
pub const FD_RESERVE: u64 = 128;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the resulting soft limit
/// (None when it cannot be read, e.g. unlimited).
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && maximum > current
    {
        let raised = Rlimit {
            current: Some(maximum),
            maximum: Some(maximum),
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, current, maximum, "cannot raise the open-file limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// The most connections one listener may hold so that `listeners` listeners together stay
/// below `fd_limit` minus [`FD_RESERVE`] (at least 1).
pub fn connections_per_listener(fd_limit: u64, listeners: u64) -> usize {
    let share = fd_limit.saturating_sub(FD_RESERVE) / listeners.max(1);
    usize::try_from(share.max(1)).unwrap_or(usize::MAX)
}

/// Lowers one connection cap to `share`, with a warning, if it is higher.
fn lower_to(cap: &mut usize, share: usize, fd_limit: u64, what: &str) {
    if *cap > share {
        tracing::warn!(
            fd_limit,
            configured = *cap,
            max_connections = share,
            "lowering the {what} connection cap to fit the open-file limit"
        );
        *cap = share;
    }
}

/// Lowers the listeners' connection caps to fit the process's open-file limit, and logs the
/// resulting capacity.
pub(crate) fn fit_to_fd_limit(config: &mut ServeConfig, listeners: &Listeners) {
    let Some(fd_limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    else {
        return;
    };
    let mqtt = listeners.mqtt.is_some() || listeners.mqtt_plain.is_some();
    let count = 2 + u64::from(mqtt) + u64::from(listeners.device_http.is_some());
    let share = connections_per_listener(fd_limit, count);
    lower_to(
        &mut config.http.max_connections,
        share,
        fd_limit,
        "HTTP listeners'",
    );
    if mqtt {
        lower_to(&mut config.bridge.max_connections, share, fd_limit, "MQTT");
    }
    tracing::info!(
        fd_limit,
        http_max_connections = config.http.max_connections,
        mqtt_max_connections = config.bridge.max_connections,
        "connection capacity (per listener)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_share_what_the_fd_limit_leaves_after_the_reserve() {
        assert_eq!(connections_per_listener(256, 4), 32);
        assert_eq!(connections_per_listener(1_048_576 + FD_RESERVE, 4), 262_144);
        assert_eq!(connections_per_listener(64, 4), 1, "never zero");
    }

    #[test]
    fn a_cap_is_only_ever_lowered() {
        let mut cap = 10;
        lower_to(&mut cap, 20, 1024, "test");
        assert_eq!(cap, 10);
        lower_to(&mut cap, 4, 1024, "test");
        assert_eq!(cap, 4);
    }
}
