//! Why an MQTT session ended. Every cause is one [`CloseReason`], mapped in one place to what the
//! device's `lastErrorStatus` records (an `ErrorCode` and the message, which the log line
//! repeats) and to the `reason` label of `perch_mqtt_closes_total`. A client that leaves cleanly
//! records nothing.

use std::time::Duration;

use perch_core::{DeviceId, ErrorCode, Rejection};

use crate::ingest::IngestError;
use crate::mqtt::codec::DecodeError;

/// Why a session ended.
#[derive(Debug)]
pub(crate) enum CloseReason {
    /// DISCONNECT, end of stream, a broken socket, or the session map let go.
    Clean,
    /// Bytes that are not an MQTT 3.1.1 packet.
    Invalid(DecodeError),
    SecondConnect,
    /// PUBREC, PUBREL or PUBCOMP.
    QoS2Flow,
    /// A PUBLISH at QoS 2.
    QoS2Publish,
    /// CONNACK, SUBACK, UNSUBACK or PINGRESP from the client.
    ServerPacket,
    /// An ACL violation: device `device` may not `what` (e.g. "publish to '/devices/x/events'").
    NotAllowed {
        device: DeviceId,
        what: String,
    },
    TelemetryTooLarge {
        bytes: usize,
        limit: usize,
    },
    StateTooLarge {
        bytes: usize,
        limit: usize,
    },
    TelemetryRate {
        per_second: f64,
    },
    SubscribeRate {
        per_second: f64,
    },
    CommandFilters {
        max: usize,
    },
    /// Telemetry that could not reach Pub/Sub.
    Ingest(IngestError),
    /// A state report that could not be stored.
    State(Rejection),
    /// The device left this many bytes unread; the limit is `limit`.
    OutboundFull {
        queued: usize,
        limit: usize,
    },
    /// Output made no progress for the write timeout.
    WriteTimeout(Duration),
    TokenExpired,
    KeepAlive,
    MaxAge,
    Idle,
    ShuttingDown,
    /// Revoked through the session map (deleted, credentials changed, attached elsewhere...).
    Kicked {
        code: ErrorCode,
        message: String,
    },
    Blocked,
    CredentialRemoved,
    MqttDisabled,
}

impl CloseReason {
    /// The `reason` label of `perch_mqtt_closes_total`: one per variant, snake case.
    pub(crate) fn label(&self) -> &'static str {
        use CloseReason as R;
        match self {
            R::Clean => "clean",
            R::Invalid(_) => "invalid_packet",
            R::SecondConnect => "second_connect",
            R::QoS2Flow | R::QoS2Publish => "qos2",
            R::ServerPacket => "server_packet",
            R::NotAllowed { .. } => "not_allowed",
            R::TelemetryTooLarge { .. } | R::StateTooLarge { .. } => "payload_too_large",
            R::TelemetryRate { .. } => "telemetry_rate",
            R::SubscribeRate { .. } => "subscribe_rate",
            R::CommandFilters { .. } => "command_filters",
            R::Ingest(_) => "publish_failed",
            R::State(_) => "state_failed",
            R::OutboundFull { .. } => "outbound_full",
            R::WriteTimeout(_) => "write_timeout",
            R::TokenExpired => "token_expired",
            R::KeepAlive => "keep_alive",
            R::MaxAge => "max_age",
            R::Idle => "idle",
            R::ShuttingDown => "shutting_down",
            R::Kicked { .. } => "revoked",
            R::Blocked => "blocked",
            R::CredentialRemoved => "credential_removed",
            R::MqttDisabled => "mqtt_disabled",
        }
    }

    /// What the device's `lastErrorStatus` records (None: nothing, the client left cleanly).
    pub(crate) fn status(&self) -> Option<(ErrorCode, String)> {
        use CloseReason as R;
        use ErrorCode as C;
        let (code, message) = match self {
            R::Clean => return None,
            R::Invalid(e) => (C::InvalidArgument, e.to_string()),
            R::SecondConnect => (
                C::InvalidArgument,
                "[MQTT-3.1.0-2] a second CONNECT is a protocol violation".to_owned(),
            ),
            R::QoS2Flow => (C::InvalidArgument, "QoS 2 is not supported".to_owned()),
            R::QoS2Publish => (
                C::InvalidArgument,
                "QoS 2 publishes are not supported".to_owned(),
            ),
            R::ServerPacket => (
                C::InvalidArgument,
                "a client may not send server packets".to_owned(),
            ),
            R::NotAllowed { device, what } => (
                C::PermissionDenied,
                format!("device `{device}` may not {what}"),
            ),
            R::TelemetryTooLarge { bytes, limit } => (
                C::InvalidArgument,
                format!("the telemetry payload has {bytes} bytes; the limit is {limit}"),
            ),
            R::StateTooLarge { bytes, limit } => (
                C::InvalidArgument,
                format!("the state payload has {bytes} bytes; the limit is {limit}"),
            ),
            R::TelemetryRate { per_second } => (
                C::ResourceExhausted,
                format!(
                    "the connection sent telemetry faster than {per_second} messages per second"
                ),
            ),
            R::SubscribeRate { per_second } => (
                C::ResourceExhausted,
                format!(
                    "the connection sent SUBSCRIBE and UNSUBSCRIBE faster than {per_second} per second"
                ),
            ),
            R::CommandFilters { max } => (
                C::ResourceExhausted,
                format!("the connection subscribed to more than {max} distinct command topics"),
            ),
            R::Ingest(e) => (e.code(), e.to_string()),
            R::State(r) => (r.code, r.message.clone()),
            R::OutboundFull { queued, limit } => (
                C::ResourceExhausted,
                format!(
                    "SERVER: The device is not reading: {queued} bytes already wait to be sent; the limit is {limit}."
                ),
            ),
            R::WriteTimeout(timeout) => (
                C::DeadlineExceeded,
                format!(
                    "SERVER: The device read nothing for {} s while messages waited to be sent.",
                    timeout.as_secs_f64()
                ),
            ),
            R::TokenExpired => (
                C::Unauthenticated,
                "SERVER: The authorization token expired.".to_owned(),
            ),
            R::KeepAlive => (
                C::DeadlineExceeded,
                "SERVER: The connection timed out: no packet within 1.5 times the keep-alive."
                    .to_owned(),
            ),
            R::MaxAge => (
                C::Unavailable,
                "SERVER: The connection reached its maximum age.".to_owned(),
            ),
            R::Idle => (
                C::DeadlineExceeded,
                "SERVER: The connection was idle for too long.".to_owned(),
            ),
            R::ShuttingDown => (
                C::Unavailable,
                "SERVER: The connection is closed because the server is shutting down.".to_owned(),
            ),
            R::Kicked { code, message } => (*code, message.clone()),
            R::Blocked => (
                C::PermissionDenied,
                "SERVER: The device was blocked.".to_owned(),
            ),
            R::CredentialRemoved => (
                C::Unauthenticated,
                "SERVER: The credential the device connected with was removed.".to_owned(),
            ),
            R::MqttDisabled => (
                C::PermissionDenied,
                "SERVER: MQTT was disabled for the registry.".to_owned(),
            ),
        };
        Some((code, format!("mqtt: {message}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(reason: CloseReason) -> (ErrorCode, String) {
        reason.status().expect("an error")
    }

    #[test]
    fn a_clean_close_records_nothing() {
        assert!(CloseReason::Clean.status().is_none());
        assert_eq!(CloseReason::Clean.label(), "clean");
    }

    #[test]
    fn labels_are_snake_case_metric_values() {
        let reasons = [
            CloseReason::SecondConnect,
            CloseReason::TelemetryRate { per_second: 1.0 },
            CloseReason::WriteTimeout(Duration::from_secs(10)),
            CloseReason::Blocked,
            CloseReason::MqttDisabled,
        ];
        for reason in reasons {
            let label = reason.label();
            assert!(
                label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{label}"
            );
        }
        assert_eq!(CloseReason::TokenExpired.label(), "token_expired");
    }

    #[test]
    fn every_reason_keeps_its_code_and_message() {
        let device: DeviceId = "d-1".parse().expect("valid id");
        let cases = [
            (
                CloseReason::SecondConnect,
                ErrorCode::InvalidArgument,
                "mqtt: [MQTT-3.1.0-2] a second CONNECT is a protocol violation",
            ),
            (
                CloseReason::QoS2Flow,
                ErrorCode::InvalidArgument,
                "mqtt: QoS 2 is not supported",
            ),
            (
                CloseReason::QoS2Publish,
                ErrorCode::InvalidArgument,
                "mqtt: QoS 2 publishes are not supported",
            ),
            (
                CloseReason::ServerPacket,
                ErrorCode::InvalidArgument,
                "mqtt: a client may not send server packets",
            ),
            (
                CloseReason::NotAllowed {
                    device,
                    what: "publish to 'x'".into(),
                },
                ErrorCode::PermissionDenied,
                "mqtt: device `d-1` may not publish to 'x'",
            ),
            (
                CloseReason::TelemetryTooLarge { bytes: 9, limit: 8 },
                ErrorCode::InvalidArgument,
                "mqtt: the telemetry payload has 9 bytes; the limit is 8",
            ),
            (
                CloseReason::StateTooLarge { bytes: 9, limit: 8 },
                ErrorCode::InvalidArgument,
                "mqtt: the state payload has 9 bytes; the limit is 8",
            ),
            (
                CloseReason::TelemetryRate { per_second: 100.0 },
                ErrorCode::ResourceExhausted,
                "mqtt: the connection sent telemetry faster than 100 messages per second",
            ),
            (
                CloseReason::SubscribeRate { per_second: 10.0 },
                ErrorCode::ResourceExhausted,
                "mqtt: the connection sent SUBSCRIBE and UNSUBSCRIBE faster than 10 per second",
            ),
            (
                CloseReason::CommandFilters { max: 3 },
                ErrorCode::ResourceExhausted,
                "mqtt: the connection subscribed to more than 3 distinct command topics",
            ),
            (
                CloseReason::OutboundFull {
                    queued: 5,
                    limit: 4,
                },
                ErrorCode::ResourceExhausted,
                "mqtt: SERVER: The device is not reading: 5 bytes already wait to be sent; the limit is 4.",
            ),
            (
                CloseReason::WriteTimeout(Duration::from_millis(1500)),
                ErrorCode::DeadlineExceeded,
                "mqtt: SERVER: The device read nothing for 1.5 s while messages waited to be sent.",
            ),
            (
                CloseReason::TokenExpired,
                ErrorCode::Unauthenticated,
                "mqtt: SERVER: The authorization token expired.",
            ),
            (
                CloseReason::KeepAlive,
                ErrorCode::DeadlineExceeded,
                "mqtt: SERVER: The connection timed out: no packet within 1.5 times the keep-alive.",
            ),
            (
                CloseReason::MaxAge,
                ErrorCode::Unavailable,
                "mqtt: SERVER: The connection reached its maximum age.",
            ),
            (
                CloseReason::Idle,
                ErrorCode::DeadlineExceeded,
                "mqtt: SERVER: The connection was idle for too long.",
            ),
            (
                CloseReason::ShuttingDown,
                ErrorCode::Unavailable,
                "mqtt: SERVER: The connection is closed because the server is shutting down.",
            ),
            (
                CloseReason::Kicked {
                    code: ErrorCode::NotFound,
                    message: "gone".into(),
                },
                ErrorCode::NotFound,
                "mqtt: gone",
            ),
            (
                CloseReason::Blocked,
                ErrorCode::PermissionDenied,
                "mqtt: SERVER: The device was blocked.",
            ),
            (
                CloseReason::CredentialRemoved,
                ErrorCode::Unauthenticated,
                "mqtt: SERVER: The credential the device connected with was removed.",
            ),
            (
                CloseReason::MqttDisabled,
                ErrorCode::PermissionDenied,
                "mqtt: SERVER: MQTT was disabled for the registry.",
            ),
            (
                CloseReason::State(Rejection::new(ErrorCode::Internal, "disk")),
                ErrorCode::Internal,
                "mqtt: disk",
            ),
            (
                CloseReason::Invalid(DecodeError::PublishQoS3),
                ErrorCode::InvalidArgument,
                "mqtt: [MQTT-3.3.1-4] PUBLISH must not have both QoS bits set (QoS 3)",
            ),
        ];
        for (reason, code, message) in cases {
            let name = format!("{reason:?}");
            assert_eq!(status(reason), (code, message.to_owned()), "{name}");
        }
    }

    #[test]
    fn ingest_failures_keep_the_ingest_message() {
        let reason = CloseReason::Ingest(IngestError::NoRoute {
            registry: "reg".into(),
            subfolder: "a".into(),
        });
        assert_eq!(
            status(reason),
            (
                ErrorCode::FailedPrecondition,
                "mqtt: registry `reg` has no event notification config for subfolder 'a'"
                    .to_owned()
            )
        );
    }
}
