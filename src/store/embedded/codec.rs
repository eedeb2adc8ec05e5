//! How records are encoded in the embedded store's tables, and the two
//! ways a read or write fails.

use super::super::{Delivery, DeliveryId, Millis, StoreError};

pub(super) use super::super::{corrupt, unavailable};

pub(super) fn decode_delivery(id: &str, bytes: &[u8]) -> Result<Delivery, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(id, e))
}

pub(super) fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records always serialise")
}

/// The index entry of an event: dedupe expiry (0 once swept), where its
/// JSON is, and the ids of its deliveries.
///
/// Encoding: expiry and body sequence as u64 LE, then each delivery id as a
/// length byte and its bytes. Body sequence numbers start at 1: 0 marks an
/// event removed by retention whose dedupe key is still live (no body, no
/// deliveries), which admission still answers as a duplicate.
pub(super) struct IndexRecord {
    pub(super) dedupe_expires: Millis,
    pub(super) body_seq: u64,
    pub(super) delivery_ids: Vec<DeliveryId>,
}

impl IndexRecord {
    /// What is left of a removed event: its dedupe key, until it expires.
    pub(super) fn removed(dedupe_expires: Millis) -> IndexRecord {
        IndexRecord { dedupe_expires, body_seq: 0, delivery_ids: Vec::new() }
    }

    pub(super) fn is_removed(&self) -> bool {
        self.body_seq == 0
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let ids: usize = self.delivery_ids.iter().map(|i| i.as_str().len() + 1).sum();
        let mut out = Vec::with_capacity(16 + ids);
        out.extend_from_slice(&self.dedupe_expires.to_le_bytes());
        out.extend_from_slice(&self.body_seq.to_le_bytes());
        for id in &self.delivery_ids {
            // Delivery ids are ours: short ASCII, always under 256 bytes.
            out.push(id.as_str().len() as u8);
            out.extend_from_slice(id.as_str().as_bytes());
        }
        out
    }

    pub(super) fn decode(key: &str, b: &[u8]) -> Result<IndexRecord, StoreError> {
        let bad = || corrupt(key, "truncated event index record");
        let u64_at =
            |at: usize| b.get(at..at + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes).ok_or_else(bad);
        let (dedupe_expires, body_seq) = (u64_at(0)?, u64_at(8)?);
        let mut pos = 16;
        let mut delivery_ids = Vec::new();
        while pos < b.len() {
            let len = b[pos] as usize;
            let id = b.get(pos + 1..pos + 1 + len).ok_or_else(bad)?;
            delivery_ids.push(DeliveryId::from(String::from_utf8(id.to_vec()).map_err(|e| corrupt(key, e))?));
            pos += 1 + len;
        }
        Ok(IndexRecord { dedupe_expires, body_seq, delivery_ids })
    }
}
