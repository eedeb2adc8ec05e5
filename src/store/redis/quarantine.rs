//! The Redis store's quarantine (`store::quarantine`). Keys: `qtn` (every
//! kept id, score 0, so ordered by id and thus by receipt time),
//! `qtn:ID` (a hash: `meta`, the description as JSON; `body`; `size`;
//! `digest`), `qtn-bytes` (the total of the sizes) and `qtn-digests` (a
//! hash: digest → id, so a provider's retry is kept once). Keeping and removing are scripts
//! that change the total with the items.

use super::{RedisStore, decode, unavailable};
use crate::http::Chain;
use crate::store::quarantine::{
    Kept, QUARANTINE_SCAN_LIMIT, QuarantineFilter, QuarantineItem, QuarantinePage, QuarantineSize, QuarantineStore,
    Quarantined,
};
use crate::store::{Millis, StoreError};
use async_trait::async_trait;

/// Ids one listing round trip reads.
const LIST_SCAN: usize = 500;

#[async_trait]
impl QuarantineStore for RedisStore {
    async fn quarantine(&self, items: Vec<QuarantineItem>, max_bytes: u64) -> Result<Kept, StoreError> {
        if items.is_empty() {
            return Ok(Kept::default());
        }
        let mut inv = self.scripts.quarantine_keep.prepare_invoke();
        inv.key(self.key("qtn")).key(self.key("qtn-bytes")).key(self.key("qtn-digests")).arg(max_bytes).arg(&self.keys);
        for item in &items {
            let meta = serde_json::to_string(&item.meta).map_err(unavailable)?;
            inv.arg(&item.meta.id).arg(item.meta.size).arg(&item.meta.digest).arg(meta).arg(item.body.as_slice());
        }
        // Harmless to run twice: a kept id is not kept again.
        let (kept, duplicates): (usize, usize) = self.invoke(&inv, true).await?;
        Ok(Kept { kept, duplicates })
    }

    async fn quarantined(&self, id: &str) -> Result<Option<QuarantineItem>, StoreError> {
        let (meta, body): (Option<String>, Option<Vec<u8>>) = redis::cmd("HMGET")
            .arg(self.key(&format!("qtn:{id}")))
            .arg("meta")
            .arg("body")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let Some(meta) = meta else { return Ok(None) };
        Ok(Some(QuarantineItem { meta: decode(id, &meta)?, body: body.unwrap_or_default() }))
    }

    async fn list_quarantine(
        &self,
        filter: &QuarantineFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<QuarantinePage, StoreError> {
        let (lower, mut upper) = filter.id_bounds();
        if let Some(c) = cursor.filter(|c| *c < upper.as_str()) {
            upper = c.to_owned();
        }
        let (lower, mut upper) = (format!("[{lower}"), format!("({upper}"));
        let mut items = Vec::new();
        let mut examined = 0;
        loop {
            let ids: Vec<String> = redis::cmd("ZREVRANGEBYLEX")
                .arg(self.key("qtn"))
                .arg(&upper)
                .arg(&lower)
                .arg("LIMIT")
                .arg(0)
                .arg(LIST_SCAN.min(QUARANTINE_SCAN_LIMIT - examined))
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            let Some(last) = ids.last().cloned() else { return Ok(QuarantinePage { items, next_cursor: None }) };
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.hget(self.key(&format!("qtn:{id}")), "meta");
            }
            let metas: Vec<Option<String>> = pipe.query_async(&mut self.conn()).await.map_err(unavailable)?;
            for (id, meta) in ids.iter().zip(metas) {
                examined += 1;
                // Removed between the two reads: left out.
                match meta.map(|m| decode::<Quarantined>(id, &m)) {
                    Some(Ok(q)) if filter.matches(&q) => items.push(q),
                    Some(Ok(_)) | None => {}
                    Some(Err(e)) => tracing::error!(error = %Chain(&e), "unreadable quarantine record left out"),
                }
                if items.len() == limit || examined == QUARANTINE_SCAN_LIMIT {
                    return Ok(QuarantinePage { items, next_cursor: Some(id.clone()) });
                }
            }
            upper = format!("({last}");
        }
    }

    async fn rediagnose(&self, meta: &Quarantined) -> Result<bool, StoreError> {
        let mut inv = self.scripts.quarantine_rediagnose.prepare_invoke();
        inv.key(self.key(&format!("qtn:{}", meta.id))).arg(serde_json::to_string(meta).map_err(unavailable)?);
        let kept: i64 = self.invoke(&inv, true).await?;
        Ok(kept == 1)
    }

    async fn release_quarantined(&self, ids: &[String]) -> Result<usize, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut inv = self.scripts.quarantine_release.prepare_invoke();
        inv.key(self.key("qtn")).key(self.key("qtn-bytes")).key(self.key("qtn-digests")).arg(&self.keys);
        for id in ids {
            inv.arg(id);
        }
        self.invoke(&inv, true).await
    }

    async fn expire_quarantine(&self, before: Millis, limit: usize) -> Result<usize, StoreError> {
        let ids: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(self.key("qtn"))
            .arg("-")
            .arg(format!("(qtn_{before:012x}"))
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        self.release_quarantined(&ids).await
    }

    async fn quarantine_size(&self) -> Result<QuarantineSize, StoreError> {
        let (items, bytes): (u64, Option<u64>) = redis::pipe()
            .zcard(self.key("qtn"))
            .get(self.key("qtn-bytes"))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(QuarantineSize { items, bytes: bytes.unwrap_or(0) })
    }
}
