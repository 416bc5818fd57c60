//! Validated registry and device ids (SPEC.md §1.2), parsed once at the edge.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::limits::{ID_MAX_CHARS, ID_MIN_CHARS};

/// Why an id was refused; the message names the field and the value as IoT Core did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "The format of '{field}' is invalid:'{value}'; ids are 3 to 255 characters of letters, digits and -._+~%, start with a letter and do not start with 'goog'"
)]
pub struct IdError {
    pub field: &'static str,
    pub value: String,
}

/// Checks the IoT Core id rule `^[a-zA-Z][-a-zA-Z0-9._+~%]{2,254}$`, not starting with `goog`.
pub fn is_valid_id(s: &str) -> bool {
    let bytes = s.as_bytes();
    (ID_MIN_CHARS..=ID_MAX_CHARS).contains(&bytes.len())
        && bytes[0].is_ascii_alphabetic()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._+~%".contains(b))
        && !s.to_ascii_lowercase().starts_with("goog")
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                if is_valid_id(s) {
                    Ok($name(s.to_owned()))
                } else {
                    Err(IdError { field: $field, value: s.to_owned() })
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A registry id, unique in its project and location.
    RegistryId,
    "device_registry.id"
);
id_type!(
    /// A device id, unique in its registry.
    DeviceId,
    "device.id"
);

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, valid: bool) {
        assert_eq!(is_valid_id(input), valid, "{input:?}");
        assert_eq!(input.parse::<DeviceId>().is_ok(), valid, "{input:?}");
    }

    #[test]
    fn id_rules_follow_iot_core() {
        check("RaspberryPiDevices", true);
        check("abc", true);
        check("a-b.c_d+e~f%g", true);
        check(&format!("a{}", "b".repeat(254)), true);
        check(&format!("a{}", "b".repeat(255)), false);
        check("ab", false);
        check("", false);
        check("1abc", false);
        check("-abc", false);
        check("goog-x", false);
        check("GOOGle", false);
        check("a:b:c", false);
        check("ab/c", false);
        check("ab c", false);
        check("abé", false);
    }

    #[test]
    fn error_names_field_and_value() {
        let err = "goog-x".parse::<RegistryId>().unwrap_err();
        assert!(err.to_string().contains("'device_registry.id'"), "{err}");
        assert!(err.to_string().contains("'goog-x'"), "{err}");
    }
}
