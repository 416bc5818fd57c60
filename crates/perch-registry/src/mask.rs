//! Field masks as clients send them: comma-separated, camelCase (GAPIC) or snake_case (docs);
//! normalised to snake_case here.

/// `lastHeartbeatTime` → `last_heartbeat_time`; snake_case passes unchanged; `.` separates
/// nested fields.
pub fn to_snake_case(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits a mask string into normalised paths, dropping empty entries.
pub fn parse_paths<'a>(paths: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    paths
        .into_iter()
        .flat_map(|p| p.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(to_snake_case)
        .collect()
}

/// The top-level field of a path (`gateway_config.gateway_type` → `gateway_config`).
pub fn top_level(path: &str) -> &str {
    path.split('.').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_and_snake_paths_normalise_alike() {
        assert_eq!(
            parse_paths(["lastHeartbeatTime,gatewayConfig", " blocked "]),
            vec!["last_heartbeat_time", "gateway_config", "blocked"]
        );
        assert_eq!(parse_paths(["num_id,,"]), vec!["num_id"]);
        assert_eq!(
            to_snake_case("gatewayConfig.gatewayAuthMethod"),
            "gateway_config.gateway_auth_method"
        );
        assert_eq!(top_level("gateway_config.gateway_type"), "gateway_config");
    }
}
