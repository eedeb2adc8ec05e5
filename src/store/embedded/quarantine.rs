//! The embedded store's quarantine (`store::quarantine`): reads run on
//! snapshots like every other read; changes go through the writer thread
//! (`tables::quarantine`).

use async_trait::async_trait;
use redb::ReadTransaction;

use super::codec::unavailable;
use super::tables::{QUARANTINE, QUARANTINE_BODIES, QuarantineChange, decode_meta};
use super::writer::Op;
use super::{EmbeddedStore, listing};
use crate::http::Chain;
use crate::store::quarantine::{
    Kept, QUARANTINE_SCAN_LIMIT, QuarantineFilter, QuarantineItem, QuarantinePage, QuarantineSize, QuarantineStore,
    Quarantined,
};
use crate::store::{Millis, StoreError};

#[async_trait]
impl QuarantineStore for EmbeddedStore {
    async fn quarantine(&self, items: Vec<QuarantineItem>, max_bytes: u64) -> Result<Kept, StoreError> {
        if items.is_empty() {
            return Ok(Kept::default());
        }
        self.call(|reply| Op::Quarantine { change: QuarantineChange::Keep { items, max_bytes }, reply }).await
    }

    async fn quarantined(&self, id: &str) -> Result<Option<QuarantineItem>, StoreError> {
        let id = id.to_owned();
        self.read(move |txn| {
            let Some(meta) = read_meta(txn, &id)? else { return Ok(None) };
            let bodies = txn.open_table(QUARANTINE_BODIES).map_err(unavailable)?;
            let body = bodies.get(id.as_str()).map_err(unavailable)?.map(|b| b.value().to_vec()).unwrap_or_default();
            Ok(Some(QuarantineItem { meta, body }))
        })
        .await
    }

    async fn list_quarantine(
        &self,
        filter: &QuarantineFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<QuarantinePage, StoreError> {
        let (filter, cursor) = (filter.clone(), cursor.map(str::to_owned));
        self.read(move |txn| {
            let table = txn.open_table(QUARANTINE).map_err(unavailable)?;
            let (lower, mut upper) = filter.id_bounds();
            if let Some(c) = cursor.filter(|c| *c < upper) {
                upper = c;
            }
            let mut items = Vec::new();
            let (mut examined, mut last) = (0, None);
            for entry in table.range::<&str>(lower.as_str()..upper.as_str()).map_err(unavailable)?.rev() {
                if items.len() >= limit || examined >= QUARANTINE_SCAN_LIMIT {
                    return Ok(QuarantinePage { items, next_cursor: last });
                }
                let (k, v) = entry.map_err(unavailable)?;
                examined += 1;
                last = Some(k.value().to_owned());
                match decode_meta(k.value(), v.value()) {
                    Ok(q) if filter.matches(&q) => items.push(q),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %Chain(&e), "unreadable quarantine record left out"),
                }
            }
            Ok(QuarantinePage { items, next_cursor: None })
        })
        .await
    }

    async fn rediagnose(&self, meta: &Quarantined) -> Result<bool, StoreError> {
        let change = QuarantineChange::Rediagnose(Box::new(meta.clone()));
        Ok(self.call(|reply| Op::Quarantine { change, reply }).await?.kept > 0)
    }

    async fn release_quarantined(&self, ids: &[String]) -> Result<usize, StoreError> {
        let change = QuarantineChange::Release(ids.to_vec());
        Ok(self.call(|reply| Op::Quarantine { change, reply }).await?.kept)
    }

    async fn expire_quarantine(&self, before: Millis, limit: usize) -> Result<usize, StoreError> {
        let change = QuarantineChange::Expire { before, limit };
        Ok(self.call(|reply| Op::Quarantine { change, reply }).await?.kept)
    }

    async fn quarantine_size(&self) -> Result<QuarantineSize, StoreError> {
        self.read(listing::quarantine_size).await
    }
}

fn read_meta(txn: &ReadTransaction, id: &str) -> Result<Option<Quarantined>, StoreError> {
    let table = txn.open_table(QUARANTINE).map_err(unavailable)?;
    match table.get(id).map_err(unavailable)? {
        Some(g) => decode_meta(id, g.value()).map(Some),
        None => Ok(None),
    }
}
