//! Listing: one page of deliveries, newest first, from a read snapshot.
//! The state filter picks the index to walk (the open index, the per-state
//! index, or every delivery), and the scan stops at [`LIST_SCAN_LIMIT`]
//! records examined, however few matched.

use redb::ReadTransaction;

use crate::http::Chain;

use super::super::{Delivery, DeliveryFilter, DeliveryState, LIST_SCAN_LIMIT, Page, StoreError};
use super::codec::{decode_delivery, unavailable};
use super::tables::{BY_STATE, DELIVERIES, OPEN, in_by_state};
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
