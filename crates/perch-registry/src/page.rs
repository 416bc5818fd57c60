//! Opaque page tokens bound to the query that made them.
//!
//! A token is URL-safe base64 of `{"a": <last id returned>, "q": <query fingerprint>}`; a token
//! from another query, or one that does not decode, is `INVALID_ARGUMENT`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use perch_core::Rejection;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Serialize, Deserialize)]
struct Token {
    a: String,
    q: String,
}

/// A short fingerprint of everything that defines a list query (parent and filters).
pub fn fingerprint(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    URL_SAFE_NO_PAD.encode(&hasher.finalize()[..9])
}

/// The token that continues a listing after `last`.
pub fn encode(last: &str, query: &str) -> String {
    let token = Token {
        a: last.to_owned(),
        q: query.to_owned(),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
}

/// Cuts a page read with one item more than `limit` back to `limit`, and returns the token for
/// the page after it (empty when the extra item is absent: this page is the last).
pub fn next_token<T>(
    items: &mut Vec<T>,
    limit: usize,
    key: impl Fn(&T) -> &str,
    query: &str,
) -> String {
    if items.len() <= limit {
        return String::new();
    }
    items.truncate(limit);
    items
        .last()
        .map(|last| encode(key(last), query))
        .unwrap_or_default()
}

/// The position a token continues from; `None` for an empty token (the first page).
pub fn decode(token: &str, query: &str) -> Result<Option<String>, Rejection> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Rejection::invalid_argument(format!(
            "the page token '{token}' is invalid; pass the nextPageToken of the previous page unchanged"
        ))
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let token: Token = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if token.q != query {
        return Err(Rejection::invalid_argument(
            "the page token belongs to a different query; keep the filters of the first page",
        ));
    }
    Ok(Some(token.a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_query() {
        let q = fingerprint(&["projects/p/locations/l/registries/r", "ids=a,b"]);
        let other = fingerprint(&["projects/p/locations/l/registries/r", "ids=a"]);
        assert_ne!(q, other);
        let token = encode("dev-7", &q);
        assert_eq!(decode(&token, &q).unwrap().as_deref(), Some("dev-7"));
        assert_eq!(decode("", &q).unwrap(), None);
        assert!(
            decode(&token, &other)
                .unwrap_err()
                .message
                .contains("different query")
        );
        assert!(
            decode("not-a-token!", &q)
                .unwrap_err()
                .message
                .contains("'not-a-token!'")
        );
        assert!(decode("e30", &q).is_err());
    }

    #[test]
    fn a_page_with_its_extra_item_has_a_next_token() {
        let q = fingerprint(&["p"]);
        let mut items = vec!["a", "b", "c"];
        let token = next_token(&mut items, 2, |s| s, &q);
        assert_eq!(items, ["a", "b"]);
        assert_eq!(decode(&token, &q).unwrap().as_deref(), Some("b"));
        let mut last = vec!["a", "b"];
        assert_eq!(next_token(&mut last, 2, |s| s, &q), "");
        assert_eq!(last, ["a", "b"]);
    }
}
