//! Provisioning records (bootstrap, policy entries, decisions, settings, approvals): opaque
//! bytes the registry encodes, keyed `kind\0key` in one table, so a kind's keys under a prefix
//! are one range. Read-modify-write goes through a closure inside the transaction.

use perch_core::Rejection;
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};

use super::backend;
use super::tables::{RECORDS, record_key};
use crate::Result;
use crate::embedded::records;
use crate::registry::RecordKind;

/// Stores `value`; with `create_only`, an existing record is `ALREADY_EXISTS` (naming the last
/// segment of `key`).
pub(super) fn put(
    txn: &WriteTransaction,
    kind: RecordKind,
    key: &str,
    value: &[u8],
    create_only: bool,
) -> Result<()> {
    let id = key.rsplit('/').next().unwrap_or(key);
    records::put(txn, RECORDS, &record_key(kind, key), value, create_only, id)
}

/// Reads one record, lets `update` decide its new bytes, and writes them (None deletes).
pub(super) fn update(
    txn: &WriteTransaction,
    kind: RecordKind,
    key: &str,
    update: impl FnOnce(Option<Vec<u8>>) -> Result<Option<Vec<u8>>, Rejection>,
) -> Result<Option<Vec<u8>>> {
    let key = record_key(kind, key);
    let mut t = txn.open_table(RECORDS).map_err(backend)?;
    let current = t
        .get(key.as_str())
        .map_err(backend)?
        .map(|v| v.value().to_vec());
    let next = update(current)?;
    match &next {
        Some(bytes) => {
            t.insert(key.as_str(), bytes.as_slice()).map_err(backend)?;
        }
        None => {
            t.remove(key.as_str()).map_err(backend)?;
        }
    }
    Ok(next)
}

pub(super) fn delete(txn: &WriteTransaction, kind: RecordKind, key: &str) -> Result<bool> {
    records::delete(txn, RECORDS, &record_key(kind, key))
}

/// Each record named, or None where there is none.
pub(super) fn get_many(
    db: &Database,
    keys: &[(RecordKind, String)],
) -> Result<Vec<Option<Vec<u8>>>> {
    let txn = db.begin_read().map_err(backend)?;
    let t = txn.open_table(RECORDS).map_err(backend)?;
    keys.iter()
        .map(|(kind, key)| {
            Ok(t.get(record_key(*kind, key).as_str())
                .map_err(backend)?
                .map(|v| v.value().to_vec()))
        })
        .collect()
}

/// The first `limit` records of `kind` whose key starts with `prefix`, in key order.
pub(super) fn list(
    db: &Database,
    kind: RecordKind,
    prefix: &str,
    limit: usize,
) -> Result<Vec<(String, Vec<u8>)>> {
    let head = record_key(kind, "");
    let start = record_key(kind, prefix);
    let txn = db.begin_read().map_err(backend)?;
    let t = txn.open_table(RECORDS).map_err(backend)?;
    let mut out = Vec::new();
    for entry in t.range(start.as_str()..).map_err(backend)? {
        let (k, v) = entry.map_err(backend)?;
        if !k.value().starts_with(start.as_str()) || out.len() >= limit {
            break;
        }
        out.push((k.value()[head.len()..].to_owned(), v.value().to_vec()));
    }
    Ok(out)
}

/// The range of keys `list_rev` pages through: the records of `kind` under `prefix`, before
/// `before` if given; None when that range is empty.
pub(super) fn rev_range(
    kind: RecordKind,
    prefix: &str,
    before: Option<&str>,
) -> Option<(String, String)> {
    let start = record_key(kind, prefix);
    let end = match before {
        Some(b) => record_key(kind, b),
        None => format!("{start}{}", char::MAX),
    };
    (end > start).then_some((start, end))
}

/// The last `limit` records of `kind` in `[start, end)`, newest (greatest key) first.
pub(super) fn list_rev(
    db: &Database,
    kind: RecordKind,
    (start, end): (String, String),
    limit: usize,
) -> Result<Vec<(String, Vec<u8>)>> {
    let head = record_key(kind, "");
    let txn = db.begin_read().map_err(backend)?;
    let t = txn.open_table(RECORDS).map_err(backend)?;
    let mut out = Vec::new();
    for entry in t
        .range(start.as_str()..end.as_str())
        .map_err(backend)?
        .rev()
    {
        if out.len() >= limit {
            break;
        }
        let (k, v) = entry.map_err(backend)?;
        out.push((k.value()[head.len()..].to_owned(), v.value().to_vec()));
    }
    Ok(out)
}
