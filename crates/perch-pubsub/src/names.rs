//! Pub/Sub resource names: `projects/{p}/topics|subscriptions|snapshots/{id}` (SPEC.md §7.1).

use perch_core::Rejection;

/// The Pub/Sub id rule: `^[A-Za-z][-A-Za-z0-9_.~+%]{2,254}$`, not starting with `goog`.
pub fn is_valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    (3..=255).contains(&b.len())
        && b[0].is_ascii_alphabetic()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.~+%".contains(c))
        && !id.to_ascii_lowercase().starts_with("goog")
}

fn invalid_name(name: &str) -> Rejection {
    Rejection::invalid_argument(format!(
        "Invalid resource name given (name={name}). Refer to https://cloud.google.com/pubsub/docs/admin#resource_names for more information."
    ))
}

/// Checks `projects/{project}/{collection}/{id}` and returns it unchanged.
pub fn parse(collection: &str, name: &str) -> Result<String, Rejection> {
    match name.split('/').collect::<Vec<_>>()[..] {
        ["projects", project, c, id]
            if c == collection
                && !project.is_empty()
                && !project.contains(char::is_whitespace)
                && is_valid_id(id) =>
        {
            Ok(name.to_owned())
        }
        _ => Err(invalid_name(name)),
    }
}

pub fn topic(name: &str) -> Result<String, Rejection> {
    parse("topics", name)
}

pub fn subscription(name: &str) -> Result<String, Rejection> {
    parse("subscriptions", name)
}

pub fn snapshot(name: &str) -> Result<String, Rejection> {
    parse("snapshots", name)
}

/// `projects/{project}` → the project id.
pub fn project(name: &str) -> Result<String, Rejection> {
    match name.split('/').collect::<Vec<_>>()[..] {
        ["projects", p] if !p.is_empty() => Ok(p.to_owned()),
        _ => Err(Rejection::invalid_argument(format!(
            "the field 'project' must be 'projects/{{project}}', got '{name}'"
        ))),
    }
}

/// The id (last segment) of a resource name.
pub fn id(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// The project of a resource name.
pub fn project_of(name: &str) -> &str {
    name.split('/').nth(1).unwrap_or("")
}

/// Topic name Google reports for subscriptions whose topic was deleted.
pub const DELETED_TOPIC: &str = "_deleted-topic_";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_pubsub_rules() {
        assert!(topic("projects/p/topics/temperature").is_ok());
        assert!(subscription("projects/my-proj/subscriptions/a.b_c~d+e%f").is_ok());
        for bad in [
            "projects/p/topics/ab",
            "projects/p/topics/goog-x",
            "projects/p/topics/1abc",
            "projects//topics/abc",
            "projects/p/subscriptions/abc",
            "topics/abc",
            "projects/p/topics/a b c",
        ] {
            let err = topic(bad).unwrap_err();
            assert!(err.message.contains(&format!("name={bad}")), "{bad}: {err}");
        }
        assert_eq!(id("projects/p/topics/t1"), "t1");
        assert_eq!(project_of("projects/p/topics/t1"), "p");
    }
}
