//! Per-connection quotas of an MQTT session, pure: the distinct command-subscription filters a
//! connection may hold. (Message rates use `crate::rate::TokenBucket`.)

use std::collections::BTreeSet;

/// The command filters of one device: `None` is `commands/#`, `Some(sub)` an exact subfolder.
pub(crate) type CommandFilters = BTreeSet<Option<String>>;

/// Adds `filter` unless it is already there (a repeated SUBSCRIBE costs nothing). `held` counts
/// the distinct filters of the whole connection and may not pass `max`: false when adding would.
pub(crate) fn add_command_filter(
    filters: &mut CommandFilters,
    filter: Option<&str>,
    held: &mut usize,
    max: usize,
) -> bool {
    let filter = filter.map(str::to_owned);
    if filters.contains(&filter) {
        return true;
    }
    if *held >= max {
        return false;
    }
    filters.insert(filter);
    *held += 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_filters_are_deduplicated_and_capped_per_connection() {
        let (mut a, mut b, mut held) = (CommandFilters::new(), CommandFilters::new(), 0);
        for _ in 0..1000 {
            assert!(add_command_filter(&mut a, Some("x"), &mut held, 3));
            assert!(add_command_filter(&mut a, None, &mut held, 3));
        }
        assert_eq!((a.len(), held), (2, 2));
        assert!(add_command_filter(&mut b, Some("x"), &mut held, 3));
        assert_eq!(held, 3);
        // The cap counts the connection, not the device; what is held stays allowed.
        assert!(!add_command_filter(&mut b, Some("y"), &mut held, 3));
        assert!(!add_command_filter(&mut a, Some("y"), &mut held, 3));
        assert!(add_command_filter(&mut a, Some("x"), &mut held, 3));
        assert_eq!((a.len(), b.len(), held), (2, 1, 3));
    }
}
