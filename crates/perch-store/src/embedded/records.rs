//! Opaque byte records keyed by strings in one redb table: the shape both the Pub/Sub resource
//! records and the registry's provisioning records share. Synchronous: writes run inside the
//! store's group-committed transactions, reads on the blocking pool.

use perch_core::Rejection;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::backend;
use crate::Result;

type Table = TableDefinition<'static, &'static str, &'static [u8]>;

/// Stores `value` under `key`; with `create_only`, an existing key is `ALREADY_EXISTS` naming `id`.
pub(crate) fn put(
    txn: &WriteTransaction,
    table: Table,
    key: &str,
    value: &[u8],
    create_only: bool,
    id: &str,
) -> Result<()> {
    let mut t = txn.open_table(table).map_err(backend)?;
    if create_only && t.get(key).map_err(backend)?.is_some() {
        return Err(Rejection::already_exists(id).into());
    }
    t.insert(key, value).map_err(backend)?;
    Ok(())
}

pub(crate) fn get(db: &Database, table: Table, key: &str) -> Result<Option<Vec<u8>>> {
    let txn = db.begin_read().map_err(backend)?;
    let t = txn.open_table(table).map_err(backend)?;
    Ok(t.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
}

/// Deletes `key`; false if it did not exist.
pub(crate) fn delete(txn: &WriteTransaction, table: Table, key: &str) -> Result<bool> {
    Ok(txn
        .open_table(table)
        .map_err(backend)?
        .remove(key)
        .map_err(backend)?
        .is_some())
}
