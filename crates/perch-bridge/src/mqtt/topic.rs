//! The IoT Core topic grammar (SPEC.md §4.4): which `/devices/{id}/…` topic a PUBLISH names or
//! a SUBSCRIBE asks for. Pure parsing; who may use which device id is the session's call.

/// A topic a device may publish to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishTopic<'a> {
    /// `/devices/{id}/events[/{subfolder…}]`; subfolder "" when absent.
    Events {
        device: &'a str,
        subfolder: &'a str,
    },
    State {
        device: &'a str,
    },
    Attach {
        device: &'a str,
    },
    Detach {
        device: &'a str,
    },
}

/// A filter a device may subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeTopic<'a> {
    Config {
        device: &'a str,
    },
    /// `/devices/{id}/commands/#` (all commands) or an exact `/devices/{id}/commands/{sub}`.
    Commands {
        device: &'a str,
        subfolder: Option<&'a str>,
    },
    Errors {
        device: &'a str,
    },
}

/// Longest telemetry subfolder accepted (SPEC.md §1.2).
pub const SUBFOLDER_MAX_BYTES: usize = 256;

fn split_device(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix("/devices/")?;
    let (device, rest) = rest.split_once('/')?;
    if device.is_empty() {
        return None;
    }
    Some((device, rest))
}

/// Parses a PUBLISH topic; `None` for anything IoT Core did not accept.
pub fn parse_publish(topic: &str) -> Option<PublishTopic<'_>> {
    let (device, rest) = split_device(topic)?;
    match rest {
        "events" => Some(PublishTopic::Events {
            device,
            subfolder: "",
        }),
        "state" => Some(PublishTopic::State { device }),
        "attach" => Some(PublishTopic::Attach { device }),
        "detach" => Some(PublishTopic::Detach { device }),
        _ => {
            let subfolder = rest.strip_prefix("events/")?;
            (!subfolder.is_empty() && subfolder.len() <= SUBFOLDER_MAX_BYTES)
                .then_some(PublishTopic::Events { device, subfolder })
        }
    }
}

/// Parses a SUBSCRIBE filter; `None` for anything IoT Core did not accept (wildcards outside
/// `commands/#`, other names).
pub fn parse_subscribe(filter: &str) -> Option<SubscribeTopic<'_>> {
    let (device, rest) = split_device(filter)?;
    if device.contains(['+', '#']) {
        return None;
    }
    match rest {
        "config" => Some(SubscribeTopic::Config { device }),
        "errors" => Some(SubscribeTopic::Errors { device }),
        "commands/#" => Some(SubscribeTopic::Commands {
            device,
            subfolder: None,
        }),
        _ => {
            let sub = rest.strip_prefix("commands/")?;
            (!sub.is_empty() && !sub.contains(['+', '#'])).then_some(SubscribeTopic::Commands {
                device,
                subfolder: Some(sub),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_topics() {
        assert_eq!(
            parse_publish("/devices/d1/events"),
            Some(PublishTopic::Events {
                device: "d1",
                subfolder: ""
            })
        );
        assert_eq!(
            parse_publish("/devices/d1/events/alerts/high"),
            Some(PublishTopic::Events {
                device: "d1",
                subfolder: "alerts/high"
            })
        );
        assert_eq!(
            parse_publish("/devices/d1/state"),
            Some(PublishTopic::State { device: "d1" })
        );
        assert_eq!(
            parse_publish("/devices/d1/attach"),
            Some(PublishTopic::Attach { device: "d1" })
        );
        for bad in [
            "/devices/d1/state/x",
            "/devices/d1/events/",
            "devices/d1/events",
            "/devices//events",
            "projects/p/topics/t",
            "/devices/d1/config",
            "/devices/d1",
        ] {
            assert_eq!(parse_publish(bad), None, "{bad}");
        }
        assert_eq!(
            parse_publish(&format!("/devices/d/events/{}", "a".repeat(257))),
            None
        );
    }

    #[test]
    fn subscribe_filters() {
        assert_eq!(
            parse_subscribe("/devices/d1/config"),
            Some(SubscribeTopic::Config { device: "d1" })
        );
        assert_eq!(
            parse_subscribe("/devices/d1/commands/#"),
            Some(SubscribeTopic::Commands {
                device: "d1",
                subfolder: None
            })
        );
        assert_eq!(
            parse_subscribe("/devices/d1/commands/a/b"),
            Some(SubscribeTopic::Commands {
                device: "d1",
                subfolder: Some("a/b")
            })
        );
        assert_eq!(
            parse_subscribe("/devices/gw/errors"),
            Some(SubscribeTopic::Errors { device: "gw" })
        );
        for bad in [
            "/devices/+/config",
            "/devices/d1/#",
            "/devices/d1/commands/+",
            "#",
            "/devices/d1/events",
            "/devices/d1/commands",
        ] {
            assert_eq!(parse_subscribe(bad), None, "{bad}");
        }
    }
}
