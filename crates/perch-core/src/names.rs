//! Resource names (`projects/{p}/locations/{l}/registries/{r}/devices/{d}`), parsed once at the
//! edge into typed values (SPEC.md §1.1).

use std::fmt;

use crate::ids::{DeviceId, IdError, RegistryId};

/// A malformed resource name, with the form it should have had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("The field '{field}' must be in the form '{form}', got '{value}'")]
    Form {
        field: &'static str,
        form: &'static str,
        value: String,
    },
    #[error(transparent)]
    Id(#[from] IdError),
}

/// Project and location ids: any non-empty segment without `/` (like the Pub/Sub emulator).
fn is_valid_segment(s: &str) -> bool {
    !s.is_empty() && !s.contains('/') && s.len() <= 255 && !s.chars().any(char::is_control)
}

/// `projects/{project}/locations/{location}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocationName {
    pub project: String,
    pub location: String,
}

const LOCATION_FORM: &str = "projects/{project}/locations/{location}";
const REGISTRY_FORM: &str = "projects/{project}/locations/{location}/registries/{registry_id}";
const DEVICE_FORM: &str =
    "projects/{project}/locations/{location}/registries/{registry_id}/devices/{device_id}";

impl LocationName {
    pub fn parse(field: &'static str, s: &str) -> Result<LocationName, NameError> {
        let form_err = || NameError::Form {
            field,
            form: LOCATION_FORM,
            value: s.to_owned(),
        };
        match s.split('/').collect::<Vec<_>>()[..] {
            ["projects", p, "locations", l] if is_valid_segment(p) && is_valid_segment(l) => {
                Ok(LocationName {
                    project: p.to_owned(),
                    location: l.to_owned(),
                })
            }
            _ => Err(form_err()),
        }
    }

    pub fn registry(&self, id: RegistryId) -> RegistryName {
        RegistryName {
            project: self.project.clone(),
            location: self.location.clone(),
            registry: id,
        }
    }
}

impl fmt::Display for LocationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "projects/{}/locations/{}", self.project, self.location)
    }
}

/// `projects/{project}/locations/{location}/registries/{registry}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistryName {
    pub project: String,
    pub location: String,
    pub registry: RegistryId,
}

impl RegistryName {
    pub fn parse(field: &'static str, s: &str) -> Result<RegistryName, NameError> {
        let form_err = || NameError::Form {
            field,
            form: REGISTRY_FORM,
            value: s.to_owned(),
        };
        match s.split('/').collect::<Vec<_>>()[..] {
            ["projects", p, "locations", l, "registries", r]
                if is_valid_segment(p) && is_valid_segment(l) =>
            {
                Ok(RegistryName {
                    project: p.to_owned(),
                    location: l.to_owned(),
                    registry: r.parse().map_err(|_| form_err())?,
                })
            }
            _ => Err(form_err()),
        }
    }

    pub fn location(&self) -> LocationName {
        LocationName {
            project: self.project.clone(),
            location: self.location.clone(),
        }
    }

    /// The device name as the server returns it: ending in the numeric id (SPEC.md §1.1).
    pub fn device_name(&self, num_id: u64) -> String {
        format!("{self}/devices/{num_id}")
    }
}

impl fmt::Display for RegistryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "projects/{}/locations/{}/registries/{}",
            self.project, self.location, self.registry
        )
    }
}

/// A device named by its string id or by its numeric id; both are accepted on input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceRef {
    Id(DeviceId),
    NumId(u64),
}

impl DeviceRef {
    /// Parses a path segment or list entry: all digits is a numeric id, anything else a string id.
    pub fn parse(s: &str) -> Result<DeviceRef, IdError> {
        if !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = s.parse()
        {
            return Ok(DeviceRef::NumId(n));
        }
        Ok(DeviceRef::Id(s.parse()?))
    }
}

impl fmt::Display for DeviceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRef::Id(id) => id.fmt(f),
            DeviceRef::NumId(n) => n.fmt(f),
        }
    }
}

/// `…/registries/{registry}/devices/{device id or num id}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceName {
    pub registry: RegistryName,
    pub device: DeviceRef,
}

impl DeviceName {
    pub fn parse(field: &'static str, s: &str) -> Result<DeviceName, NameError> {
        let form_err = || NameError::Form {
            field,
            form: DEVICE_FORM,
            value: s.to_owned(),
        };
        let (registry, device) = s.rsplit_once("/devices/").ok_or_else(form_err)?;
        Ok(DeviceName {
            registry: RegistryName::parse(field, registry).map_err(|_| form_err())?,
            device: DeviceRef::parse(device).map_err(|_| form_err())?,
        })
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/devices/{}", self.registry, self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registry_and_device_names() {
        let r = RegistryName::parse("name", "projects/p1/locations/us-central1/registries/reg")
            .unwrap();
        assert_eq!(r.project, "p1");
        assert_eq!(r.location, "us-central1");
        assert_eq!(r.registry.as_str(), "reg");
        assert_eq!(
            r.to_string(),
            "projects/p1/locations/us-central1/registries/reg"
        );

        let d = DeviceName::parse(
            "name",
            "projects/p/locations/l/registries/reg/devices/dev-1",
        )
        .unwrap();
        assert_eq!(d.device, DeviceRef::Id("dev-1".parse().unwrap()));
        let d = DeviceName::parse(
            "name",
            "projects/p/locations/l/registries/reg/devices/2808946627307959",
        )
        .unwrap();
        assert_eq!(d.device, DeviceRef::NumId(2808946627307959));
    }

    #[test]
    fn rejects_malformed_names_with_the_expected_form() {
        for bad in [
            "",
            "projects/p",
            "projects/p/locations/l/registries",
            "projects//locations/l/registries/reg",
            "projects/p/locations/l/registries/1bad",
            "projects/p/locations/l/registries/reg/devices/",
            "projects/p/locations/l/registries/reg/devices/a:b",
            "projects/p/locations/l/registries/reg/devices/d/extra",
        ] {
            assert!(DeviceName::parse("name", bad).is_err(), "{bad:?}");
        }
        let err = LocationName::parse("parent", "projects/p").unwrap_err();
        assert!(
            err.to_string()
                .contains("projects/{project}/locations/{location}")
        );
        assert!(RegistryName::parse("name", "projects/p/locations/l/registries/r/x").is_err());
    }
}
