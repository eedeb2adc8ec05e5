//! Closing deliveries nobody should send: `POST /admin/deliveries/{id}/discard`
//! and `POST /admin/discard` (docs/operations.md).
//!
//! A discard is final, like `dead`, but says an operator looked and decided:
//! the dead-deliveries alert stops counting it, retention removes it with
//! the dead ones, and a replay by id can still reopen it. The reason is
//! required and kept on the delivery.
//!
//! A bulk discard acts only on deliveries still in the state it listed them
//! in, and runs in a task of its own: a client that hangs up does not stop
//! it half way uncounted.

use http::StatusCode;
use serde_json::Value;

use super::api::{DiscardOneResult, DiscardResult, FilterView};
use super::params::json_object;
use std::sync::Arc;

use super::{Admin, Answer, ApiError};
use crate::http::json_response;
use crate::metrics::Metrics;
use crate::store::{DeliveryFilter, DeliveryId, DeliveryState, Store, StoreError, now_millis};

/// Deliveries one bulk discard considers unless `max` says otherwise, and
/// at most; and how many go to the store per call.
const DEFAULT_DISCARD_MAX: usize = 10_000;
const MAX_DISCARD_MAX: usize = 100_000;
const DISCARD_BATCH: usize = 500;
/// Longest reason, in characters.
const MAX_REASON: usize = 500;

/// The `reason` of a discard body: required, not blank, not too long.
fn reason(value: Option<&Value>) -> Result<String, ApiError> {
    let text = match value {
        None => return Err(ApiError::bad("reason: required (why these deliveries will not be sent)")),
        Some(v) => v.as_str().ok_or_else(|| ApiError::bad("reason: expected a string"))?,
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(ApiError::bad("reason: must not be blank"));
    }
    // A reason is shown in tables and logs: no line breaks or escapes.
    if text.chars().any(char::is_control) {
        return Err(ApiError::bad("reason: must not contain control characters (line breaks, tabs, escapes)"));
    }
    if text.chars().count() > MAX_REASON {
        return Err(ApiError::bad(format!("reason: at most {MAX_REASON} characters")));
    }
    Ok(text.to_owned())
}

impl Admin {
    pub(super) async fn discard_one(&self, id: &DeliveryId, body: &[u8]) -> Answer {
        let fields = json_object(body)?;
        if let Some(other) = fields.keys().find(|k| *k != "reason") {
            return Err(ApiError::bad(format!("unknown parameter '{other}'")));
        }
        let reason = reason(fields.get("reason"))?;
        let count = self.store.discard(std::slice::from_ref(id), &reason, None, now_millis()).await?;
        if count.not_found > 0 {
            return Err(ApiError::not_found(format!("no delivery {id}")));
        }
        if count.in_flight > 0 {
            return Err(ApiError(
                StatusCode::CONFLICT,
                "in_flight",
                format!("delivery {id} is being sent right now; discard it once the attempt ends"),
            ));
        }
        let state = self.store.delivery(id).await?.map(|(d, _)| d.state);
        let state = state.ok_or_else(|| ApiError::not_found(format!("no delivery {id}")))?;
        if count.discarded == 0 && state != DeliveryState::Discarded {
            return Err(ApiError(
                StatusCode::CONFLICT,
                "not_discardable",
                format!(
                    "delivery {id} is {}; only pending, dead or orphaned deliveries can be discarded",
                    state.as_str()
                ),
            ));
        }
        if count.discarded > 0 {
            self.metrics.discarded(count.discarded);
            tracing::info!(delivery_id = %id, reason = %reason, "delivery discarded");
        }
        Ok(json_response(StatusCode::OK, &DiscardOneResult { discarded: count.discarded, state }))
    }

    /// Discards what a filter selects, page by page, up to `max`.
    pub(super) async fn discard_bulk(&self, body: &[u8]) -> Answer {
        let fields = json_object(body)?;
        let (mut filter, max, cursor) =
            self.selection(&fields, DEFAULT_DISCARD_MAX, MAX_DISCARD_MAX, &["reason"]).await?;
        let reason = reason(fields.get("reason"))?;
        if !filter.state.is_some_and(crate::store::discardable) {
            return Err(ApiError::bad("state: only pending, dead or orphaned deliveries can be discarded"));
        }
        // Deliveries created while this runs are left alone, as a replay job
        // leaves them.
        let now = now_millis();
        filter.until = Some(filter.until.map_or(now + 1, |u| u.min(now + 1)));
        let out = DiscardResult {
            considered: 0,
            discarded: 0,
            skipped: 0,
            in_flight: 0,
            truncated: false,
            continue_cursor: None,
            filter: FilterView::from(&filter),
            reason,
        };
        let (store, metrics) = (self.store.clone(), self.metrics.clone());
        let task = tokio::spawn(discard_pages(store, metrics, filter, cursor, max, out));
        let out = task.await.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
        Ok(json_response(StatusCode::OK, &out))
    }
}

/// The pages of a bulk discard, each batch counted as it commits; logged
/// once at the end, however it ends.
async fn discard_pages(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    filter: DeliveryFilter,
    mut cursor: Option<String>,
    max: usize,
    mut out: DiscardResult,
) -> Result<DiscardResult, StoreError> {
    let result = async {
        loop {
            if out.considered >= max {
                out.truncated = true;
                break;
            }
            let page = store.list(&filter, cursor.as_deref(), DISCARD_BATCH.min(max - out.considered)).await?;
            let ids: Vec<DeliveryId> = page.items.into_iter().map(|d| d.id).collect();
            out.considered += ids.len();
            if !ids.is_empty() {
                let count = store.discard(&ids, &out.reason, filter.state, now_millis()).await?;
                metrics.discarded(count.discarded);
                out.discarded += count.discarded;
                out.skipped += count.skipped + count.not_found;
                out.in_flight += count.in_flight;
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        if out.truncated {
            out.continue_cursor = cursor.clone();
        }
        Ok(())
    }
    .await;
    match &result {
        Ok(()) => {
            tracing::info!(filter = ?filter, discarded = out.discarded, reason = %out.reason, "deliveries discarded")
        }
        Err(e) => tracing::warn!(
            filter = ?filter, discarded = out.discarded, reason = %out.reason, error = %crate::http::Chain(e),
            "bulk discard stopped by a store error; the deliveries counted were discarded"
        ),
    }
    result.map(|()| out)
}
