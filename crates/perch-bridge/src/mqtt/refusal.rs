//! The one table of CONNACK refusals (SPEC.md §4.2): why the server refuses a CONNECT, device or
//! bootstrap, and the return code each reason gets. The registry reports domain errors
//! (`AuthError`); only this module knows MQTT wire codes.

use perch_registry::auth::AuthError;

use crate::mqtt::codec::{ConnectReturnCode, DecodeError, StringField};

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal<'a> {
    /// The CONNECT names a protocol other than MQTT 3.1.1.
    ProtocolVersion,
    /// The client id is not UTF-8, or not a device or bootstrap name.
    ClientId,
    /// No password, or one that is not UTF-8.
    NoPassword,
    /// The token was refused.
    Token(&'a AuthError),
    /// The registry or device is unknown, MQTT is disabled for the registry, or the device is
    /// blocked.
    NotAuthorized,
}

impl Refusal<'_> {
    /// The refusal a CONNECT that did not decode gets, if any (others just close).
    pub(crate) fn of_decode_error(error: &DecodeError) -> Option<Refusal<'static>> {
        match error {
            // [MQTT-3.1.2-2]: "unacceptable protocol version".
            DecodeError::UnsupportedProtocolLevel(_) | DecodeError::InvalidProtocolName(_) => {
                Some(Refusal::ProtocolVersion)
            }
            // [MQTT-3.1.3-8]: "identifier rejected".
            DecodeError::InvalidUtf8(StringField::ClientId)
            | DecodeError::NulInString(StringField::ClientId) => Some(Refusal::ClientId),
            _ => None,
        }
    }

    /// The CONNACK return code IoT Core answered: 4 only when the password is missing or not a
    /// parseable JWT at all, 5 for every other authentication failure.
    pub(crate) fn code(&self) -> ConnectReturnCode {
        match self {
            Refusal::ProtocolVersion => ConnectReturnCode::UnacceptableProtocolVersion,
            Refusal::ClientId => ConnectReturnCode::IdentifierRejected,
            Refusal::NoPassword | Refusal::Token(AuthError::Malformed(_)) => {
                ConnectReturnCode::BadUserNameOrPassword
            }
            Refusal::Token(_) | Refusal::NotAuthorized => ConnectReturnCode::NotAuthorized,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_gets_4_only_when_the_password_is_not_a_jwt() {
        let code = |e: &AuthError| u8::from(Refusal::Token(e).code());
        assert_eq!(code(&AuthError::Malformed("x".into())), 4);
        let refused = [
            AuthError::UnsupportedAlgorithm("`none`".into()),
            AuthError::InvalidClaim("iat is missing".into()),
            AuthError::WrongAudience {
                expected: "p".into(),
            },
            AuthError::NotYetValid,
            AuthError::Expired,
            AuthError::LifetimeTooLong,
            AuthError::NoUsableCredential,
            AuthError::BadSignature,
        ];
        for err in refused {
            assert_eq!(code(&err), 5, "{err}");
        }
    }

    #[test]
    fn every_refusal_has_its_wire_code() {
        for (refusal, want) in [
            (Refusal::ProtocolVersion, 1),
            (Refusal::ClientId, 2),
            (Refusal::NoPassword, 4),
            (Refusal::NotAuthorized, 5),
        ] {
            assert_eq!(u8::from(refusal.code()), want, "{refusal:?}");
        }
    }

    #[test]
    fn return_codes_round_trip_through_their_byte() {
        for byte in 0..=u8::MAX {
            assert_eq!(u8::from(ConnectReturnCode::from(byte)), byte);
        }
        assert_eq!(ConnectReturnCode::from(6), ConnectReturnCode::Reserved(6));
    }
}
