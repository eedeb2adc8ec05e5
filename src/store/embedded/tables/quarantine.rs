//! The quarantine's changes (`store::quarantine`): keeping refused
//! callbacks under the byte cap, refreshing their diagnosis, and removing
//! them when admitted or expired. The byte total in `meta` changes in the
//! same transaction as the items, so it always matches them.

use redb::ReadableTable;

use super::super::codec::{corrupt, encode, unavailable};
use super::Tables;
use crate::store::StoreError;
use crate::store::quarantine::{Kept, QuarantineItem, Quarantined};

const BYTES: &str = "quarantine_bytes";

/// A kept callback's description as stored: its size (u64 LE), then the
/// description as JSON. The size comes first so that an unreadable
/// description still gives its bytes back when removed.
pub(in crate::store::embedded) fn encode_meta(meta: &Quarantined) -> Vec<u8> {
    let mut out = meta.size.to_le_bytes().to_vec();
    out.extend_from_slice(&encode(meta));
    out
}

pub(in crate::store::embedded) fn decode_meta(id: &str, bytes: &[u8]) -> Result<Quarantined, StoreError> {
    let json = bytes.get(8..).ok_or_else(|| corrupt(id, "truncated quarantine record"))?;
    serde_json::from_slice(json).map_err(|e| corrupt(id, e))
}

fn stored_size(bytes: &[u8]) -> Option<u64> {
    bytes.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
}

/// A change to the quarantine, applied by the writer thread.
pub(in crate::store::embedded) enum QuarantineChange {
    Keep { items: Vec<QuarantineItem>, max_bytes: u64 },
    Rediagnose(Box<Quarantined>),
    Release(Vec<String>),
    Expire { before: crate::store::Millis, limit: usize },
}

impl QuarantineChange {
    /// Whether the change may commit without an fsync: keeping refused
    /// callbacks and expiring old ones are best effort (docs/quarantine.md);
    /// an operator's reverify is not.
    pub(in crate::store::embedded) fn may_wait_for_fsync(&self) -> bool {
        matches!(self, QuarantineChange::Keep { .. } | QuarantineChange::Expire { .. })
    }
}

impl Tables<'_> {
    /// Applies `change`; `kept` counts what it kept, rediagnosed or removed.
    pub(in crate::store::embedded) fn change_quarantine(
        &mut self,
        change: QuarantineChange,
    ) -> Result<Kept, StoreError> {
        let n = |kept| Ok(Kept { kept, duplicates: 0 });
        match change {
            QuarantineChange::Keep { items, max_bytes } => self.keep(items, max_bytes),
            QuarantineChange::Rediagnose(mut meta) => {
                // The size it was kept with stays: the total counted it.
                let Some(kept) =
                    self.quarantine.get(meta.id.as_str()).map_err(unavailable)?.map(|g| stored_size(g.value()))
                else {
                    return n(0);
                };
                meta.size = kept.unwrap_or(meta.size);
                self.quarantine.insert(meta.id.as_str(), encode_meta(&meta).as_slice()).map_err(unavailable)?;
                n(1)
            }
            QuarantineChange::Release(ids) => {
                let mut removed = 0;
                for id in &ids {
                    removed += self.unkeep(id)? as usize;
                }
                n(removed)
            }
            QuarantineChange::Expire { before, limit } => {
                let upper = format!("qtn_{before:012x}");
                let ids: Vec<String> = self
                    .quarantine
                    .range::<&str>(..upper.as_str())
                    .map_err(unavailable)?
                    .take(limit)
                    .map(|e| e.map(|(k, _)| k.value().to_owned()).map_err(unavailable))
                    .collect::<Result<_, _>>()?;
                for id in &ids {
                    self.unkeep(id)?;
                }
                n(ids.len())
            }
        }
    }

    fn bytes(&self) -> Result<u64, StoreError> {
        Ok(self.meta.get(BYTES).map_err(unavailable)?.map(|g| g.value()).unwrap_or(0))
    }

    fn keep(&mut self, items: Vec<QuarantineItem>, max_bytes: u64) -> Result<Kept, StoreError> {
        let mut bytes = self.bytes()?;
        let mut done = Kept::default();
        for item in items {
            let (id, digest) = (item.meta.id.as_str(), item.meta.digest.as_str());
            if self.quarantine.get(id).map_err(unavailable)?.is_some() || self.kept_digest(digest)? {
                done.duplicates += 1;
                continue;
            }
            let size = item.meta.size;
            if bytes.saturating_add(size) > max_bytes {
                continue;
            }
            self.quarantine.insert(id, encode_meta(&item.meta).as_slice()).map_err(unavailable)?;
            self.quarantine_bodies.insert(id, item.body.as_slice()).map_err(unavailable)?;
            if !digest.is_empty() {
                self.quarantine_digests.insert(digest, id).map_err(unavailable)?;
            }
            bytes += size;
            done.kept += 1;
        }
        if done.kept > 0 {
            self.meta.insert(BYTES, bytes).map_err(unavailable)?;
        }
        Ok(done)
    }

    /// Whether a callback with this digest is kept (its entry names an
    /// item that is still there).
    fn kept_digest(&self, digest: &str) -> Result<bool, StoreError> {
        if digest.is_empty() {
            return Ok(false);
        }
        let Some(id) = self.quarantine_digests.get(digest).map_err(unavailable)?.map(|g| g.value().to_owned()) else {
            return Ok(false);
        };
        Ok(self.quarantine.get(id.as_str()).map_err(unavailable)?.is_some())
    }

    /// Removes one item and takes its size off the total, and its digest
    /// out of the index (unless its description is unreadable: the entry
    /// then names an item that is gone, which counts as not kept).
    fn unkeep(&mut self, id: &str) -> Result<bool, StoreError> {
        let Some(meta) = self.quarantine.remove(id).map_err(unavailable)? else {
            return Ok(false);
        };
        let (size, digest) = (stored_size(meta.value()).unwrap_or(0), decode_meta(id, meta.value()).map(|m| m.digest));
        drop(meta);
        self.quarantine_bodies.remove(id).map_err(unavailable)?;
        if let Ok(digest) = digest
            && self.quarantine_digests.get(digest.as_str()).map_err(unavailable)?.is_some_and(|g| g.value() == id)
        {
            self.quarantine_digests.remove(digest.as_str()).map_err(unavailable)?;
        }
        let bytes = self.bytes()?.saturating_sub(size);
        self.meta.insert(BYTES, bytes).map_err(unavailable)?;
        Ok(true)
    }
}
