//! The glob a bootstrap's `deviceIdPattern` is: `*` matches any run of characters, everything
//! else matches itself, and an empty pattern matches every id.

/// `*` matches any run of characters; everything else matches itself.
pub(super) fn glob_matches(pattern: &str, text: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(at) = rest.find(part) else {
                return false;
            };
            rest = &rest[at + part.len()..];
        }
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("", "anything", true),
            ("pi-*", "pi-0001", true),
            ("pi-*", "gw-0001", false),
            ("*-sensor", "a-sensor", true),
            ("lot7-*-pi", "lot7-x-y-pi", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_matches(p, t), want, "{p} ~ {t}");
        }
    }
}
