//! Resource names the CLI builds from its flags (`projects/P/locations/L/registries/R/…`),
//! and the `--registry REG --region R` pair that names a registry.

use clap::Args;

/// `--registry REG --region R`
#[derive(Debug, Args, Clone)]
pub struct RegistryRef {
    #[arg(long)]
    pub(super) registry: String,
    #[arg(long)]
    pub(super) region: String,
}

pub(super) fn location_path(project: &str, region: &str) -> String {
    format!("projects/{project}/locations/{region}")
}

pub(super) fn registry_name(project: &str, region: &str, registry: &str) -> String {
    format!("{}/registries/{registry}", location_path(project, region))
}

pub(super) fn registry_path(project: &str, r: &RegistryRef) -> String {
    registry_name(project, &r.region, &r.registry)
}

pub(super) fn device_path(project: &str, r: &RegistryRef, device: &str) -> String {
    format!("{}/devices/{device}", registry_path(project, r))
}

/// A short topic id becomes `projects/{project}/topics/{id}`, as gcloud does.
pub(super) fn topic_name(project: &str, topic: &str) -> String {
    full_name(project, "topics", topic)
}

/// A short subscription id becomes `projects/{project}/subscriptions/{id}`.
pub(super) fn subscription_name(project: &str, subscription: &str) -> String {
    full_name(project, "subscriptions", subscription)
}

/// `id` as `projects/{project}/{collection}/{id}`, unless it is a full name already.
fn full_name(project: &str, collection: &str, id: &str) -> String {
    if id.starts_with("projects/") {
        id.to_owned()
    } else {
        format!("projects/{project}/{collection}/{id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_built_from_flags() {
        let r = RegistryRef {
            registry: "reg".into(),
            region: "eu".into(),
        };
        assert_eq!(location_path("p", "eu"), "projects/p/locations/eu");
        assert_eq!(
            registry_path("p", &r),
            "projects/p/locations/eu/registries/reg"
        );
        assert_eq!(
            device_path("p", &r, "d1"),
            "projects/p/locations/eu/registries/reg/devices/d1"
        );
    }

    #[test]
    fn short_ids_get_the_project_and_full_names_stay() {
        assert_eq!(topic_name("p", "t"), "projects/p/topics/t");
        assert_eq!(
            topic_name("p", "projects/q/topics/t"),
            "projects/q/topics/t"
        );
        assert_eq!(subscription_name("p", "s"), "projects/p/subscriptions/s");
        assert_eq!(
            subscription_name("p", "projects/q/subscriptions/s"),
            "projects/q/subscriptions/s"
        );
    }
}
