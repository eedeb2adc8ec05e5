//! Reads over many records: one page of deliveries, newest first, from a
//! read snapshot, and the store's statistics. The state filter picks the
//! index to walk (the open index, the per-state index, or every delivery),
//! and the scan stops at [`LIST_SCAN_LIMIT`] records examined, however few
//! matched.

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata};

use crate::http::Chain;

use super::super::quarantine::QuarantineSize;
use super::super::retention::StoreStats;
use super::super::{Counts, Delivery, DeliveryFilter, DeliveryState, LIST_SCAN_LIMIT, Page, StoreError};
use super::codec::{decode_delivery, unavailable};
use super::tables::{
    ATTEMPTS, BY_STATE, DEDUPE_EXPIRY, DELIVERIES, EVENT_BODIES, META, OPEN, QUARANTINE, REPLAY_JOBS, SETTLED,
    in_by_state,
};
use super::writer::SharedClaims;

/// The page of `filter` below `cursor`, claimed deliveries shown in flight.
pub(super) fn page(
    txn: &ReadTransaction,
    claims: &SharedClaims,
    filter: &DeliveryFilter,
    cursor: Option<String>,
    limit: usize,
) -> Result<Page, StoreError> {
    let table = txn.open_table(DELIVERIES).map_err(unavailable)?;
    let open = txn.open_table(OPEN).map_err(unavailable)?;
    let by_state = txn.open_table(BY_STATE).map_err(unavailable)?;
    // Ids begin with their creation time, so the time window bounds
    // the scan; the cursor is the last id already returned.
    let lower = filter.since.map(|t| format!("dlv_{t:012x}")).unwrap_or_default();
    let mut upper = filter.until.map(|t| format!("dlv_{t:012x}")).unwrap_or_else(|| "\u{10ffff}".into());
    if let Some(c) = cursor.filter(|c| *c < upper) {
        upper = c;
    }
    let range = lower.as_str()..upper.as_str();
    // Pending and in-flight deliveries are the few in the open index:
    // scan it rather than every delivery ever made.
    // So are dead and orphaned ones, in theirs.
    let ids: Box<dyn Iterator<Item = Result<String, StoreError>>> = match filter.state {
        Some(DeliveryState::Pending | DeliveryState::InFlight) => Box::new(
            open.range(range)
                .map_err(unavailable)?
                .rev()
                .map(|e| e.map(|(k, _)| k.value().to_owned()).map_err(unavailable)),
        ),
        Some(state) if in_by_state(state) => Box::new(
            by_state
                .range((state.as_str(), range.start)..(state.as_str(), range.end))
                .map_err(unavailable)?
                .rev()
                .map(|e| e.map(|(k, _)| k.value().1.to_owned()).map_err(unavailable)),
        ),
        _ => Box::new(
            table
                .range(range)
                .map_err(unavailable)?
                .rev()
                .map(|e| e.map(|(k, _)| k.value().to_owned()).map_err(unavailable)),
        ),
    };
    let mut items = Vec::new();
    let mut next_cursor = None;
    let mut last_examined: Option<String> = None;
    for (examined, id) in ids.enumerate() {
        let id = id?;
        if examined == LIST_SCAN_LIMIT {
            next_cursor = last_examined;
            break;
        }
        last_examined = Some(id.clone());
        let Some(v) = table.get(id.as_str()).map_err(unavailable)? else {
            tracing::error!(delivery_id = %id, "the open index names a delivery with no record");
            continue;
        };
        // One unreadable record must not make a whole page (or a
        // bulk replay over it) fail: skip it, loudly.
        let mut d = match decode_delivery(&id, v.value()) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %Chain(&e), "unreadable delivery record left out of a listing");
                continue;
            }
        };
        claims.lock().map_err(|_| unavailable("lock poisoned"))?.overlay(&mut d);
        if !filter.matches(&d) {
            continue;
        }
        if items.len() == limit {
            next_cursor = items.last().map(|d: &Delivery| d.id.to_string());
            break;
        }
        items.push(d);
    }
    Ok(Page { items, next_cursor })
}

/// What the store holds. Table lengths are kept by redb, so this reads a
/// few pages, not the records.
pub(super) fn stats(txn: &ReadTransaction, deliveries: Counts, bytes: u64) -> Result<StoreStats, StoreError> {
    let bodies = txn.open_table(EVENT_BODIES).map_err(unavailable)?;
    let len = |n: Result<u64, redb::StorageError>| n.map_err(unavailable);
    // Bodies are numbered in admission order: the first is the oldest event.
    let oldest_event_at = match bodies.first().map_err(unavailable)? {
        Some((_, body)) => received_at(body.value()),
        None => None,
    };
    Ok(StoreStats {
        events: len(bodies.len())?,
        deliveries,
        attempts: len(txn.open_table(ATTEMPTS).map_err(unavailable)?.len())?,
        replay_jobs: len(txn.open_table(REPLAY_JOBS).map_err(unavailable)?.len())?,
        dedupe_keys: len(txn.open_table(DEDUPE_EXPIRY).map_err(unavailable)?.len())?,
        retention_queue: len(txn.open_table(SETTLED).map_err(unavailable)?.len())?,
        bytes,
        oldest_event_at,
        quarantine: quarantine_size(txn)?,
    })
}

/// The `received_at` of a stored event's JSON, in unix milliseconds.
pub(crate) fn received_at(json: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Received {
        received_at: String,
    }
    let r: Received = serde_json::from_slice(json).ok()?;
    let t = time::OffsetDateTime::parse(&r.received_at, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// What the quarantine holds: its table's length and the byte total kept
/// beside it.
pub(super) fn quarantine_size(txn: &ReadTransaction) -> Result<QuarantineSize, StoreError> {
    let items = txn.open_table(QUARANTINE).map_err(unavailable)?.len().map_err(unavailable)?;
    let meta = txn.open_table(META).map_err(unavailable)?;
    let bytes = meta.get("quarantine_bytes").map_err(unavailable)?.map(|g| g.value()).unwrap_or(0);
    Ok(QuarantineSize { items, bytes })
}
