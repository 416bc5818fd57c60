//! What the log's tests share.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::log::NewMessage;

/// The `i`-th test message: every other one has an ordering key.
pub(super) fn msg(i: usize) -> NewMessage {
    NewMessage {
        data: Bytes::from(format!("payload-{i}")),
        attributes: BTreeMap::from([("i".to_owned(), i.to_string())]),
        ordering_key: if i.is_multiple_of(2) {
            "even".into()
        } else {
            String::new()
        },
    }
}
