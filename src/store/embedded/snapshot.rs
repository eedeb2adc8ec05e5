//! A consistent copy of the embedded store, taken while the relay serves.
//!
//! A redb read transaction sees the database as of one commit and never
//! blocks the writer, so the copy is every table read through one read
//! transaction and written to a new file. It holds everything committed
//! before the snapshot began: an event acknowledged before it is in the
//! copy with its deliveries, and a relay started on the copy answers the
//! provider's retry of it as a duplicate. Deliveries in flight at the time
//! are pending in the copy (claims live in memory), so a relay started on
//! it sends them again: at least once, as after a crash.
//!
//! While the copy is made, pages the writer frees cannot be reused, so the
//! store's file may grow by what is written meanwhile.

use std::path::Path;

use redb::{Database, Durability, Key, ReadTransaction, ReadableTable, TableDefinition, Value, WriteTransaction};

use super::codec::unavailable;
use super::tables::*;
use crate::store::{Context, StoreError};

/// Entries copied per write transaction, so that memory stays bounded.
const COPY_CHUNK: usize = 10_000;

/// Copies everything `from` sees into a new database made at `to`, and
/// returns it open for reading, with its size. The name is unlinked as soon
/// as the file exists, so nothing is left behind however the copy ends (an
/// error, a client gone, `kill -9`): the file lives while it is open.
pub(super) fn copy(from: &ReadTransaction, to: &Path) -> Result<(std::fs::File, u64), StoreError> {
    let out = Database::builder()
        .set_cache_size(4 * 1024 * 1024)
        .create(to)
        .map_err(|e| unavailable(Context::new(format!("cannot create {}", to.display()), e)));
    let reader = std::fs::File::open(to);
    let _ = std::fs::remove_file(to);
    let (out, reader) = (out?, reader.map_err(unavailable)?);
    let mut copier = Copier { out: &out, txn: None };
    copier.table(from, EVENT_INDEX)?;
    copier.table(from, EVENT_BODIES)?;
    copier.table(from, DEDUPE_EXPIRY)?;
    copier.table(from, DELIVERIES)?;
    copier.table(from, ATTEMPTS)?;
    copier.table(from, DUE)?;
    copier.table(from, COUNTS)?;
    copier.table(from, META)?;
    copier.table(from, REPLAY_JOBS)?;
    copier.table(from, OPEN)?;
    copier.table(from, BY_STATE)?;
    copier.table(from, ORPHANED)?;
    copier.table(from, ENDPOINTS)?;
    copier.table(from, SETTLED)?;
    copier.table(from, SUBJECTS)?;
    copier.table(from, TIMELINE)?;
    copier.table(from, QUARANTINE)?;
    copier.table(from, QUARANTINE_BODIES)?;
    copier.table(from, QUARANTINE_DIGESTS)?;
    copier.finish()?;
    drop(out);
    let len = reader.metadata().map_err(unavailable)?.len();
    Ok((reader, len))
}

struct Copier<'a> {
    out: &'a Database,
    txn: Option<WriteTransaction>,
}

impl Copier<'_> {
    fn txn(&mut self) -> Result<&WriteTransaction, StoreError> {
        if self.txn.is_none() {
            let mut txn = self.out.begin_write().map_err(unavailable)?;
            // Intermediate commits need no fsync: the last one is durable,
            // and a copy cut short is thrown away.
            txn.set_durability(Durability::None).map_err(unavailable)?;
            self.txn = Some(txn);
        }
        Ok(self.txn.as_ref().expect("just set"))
    }

    fn table<K: Key + 'static, V: Value + 'static>(
        &mut self,
        from: &ReadTransaction,
        def: TableDefinition<K, V>,
    ) -> Result<(), StoreError> {
        let source = from.open_table(def).map_err(unavailable)?;
        let mut entries = source.iter().map_err(unavailable)?;
        loop {
            {
                let txn = self.txn()?;
                let mut table = txn.open_table(def).map_err(unavailable)?;
                let mut copied = 0;
                for entry in entries.by_ref() {
                    let (k, v) = entry.map_err(unavailable)?;
                    table.insert(k.value(), v.value()).map_err(unavailable)?;
                    copied += 1;
                    if copied == COPY_CHUNK {
                        break;
                    }
                }
                if copied < COPY_CHUNK {
                    return Ok(());
                }
            }
            self.commit(Durability::None)?;
        }
    }

    fn commit(&mut self, durability: Durability) -> Result<(), StoreError> {
        if let Some(mut txn) = self.txn.take() {
            txn.set_durability(durability).map_err(unavailable)?;
            txn.commit().map_err(unavailable)?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), StoreError> {
        self.txn()?;
        self.commit(Durability::Immediate)
    }
}
