//! Closing deliveries nobody should send: `POST /admin/deliveries/{id}/discard`
//! and `POST /admin/discard` (docs/http-api.md).
//!
//! A discard is final, like `dead`, but says an operator looked and decided:
//! the dead-deliveries alert stops counting it, retention treats it as
//! final, and a replay by id can still reopen it. The reason is required and
//! kept on the delivery.

use http::StatusCode;
use serde_json::Value;

use super::api::{DiscardOneResult, DiscardResult, FilterView};
use super::params::{json_object, parse_cursor};
use super::{Admin, Answer, ApiError};
use crate::http::json_response;
use crate::store::{DeliveryFilter, DeliveryId, DeliveryState, now_millis};

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
        let count = self.store.discard(std::slice::from_ref(id), &reason, now_millis()).await?;
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
        let mut filter = DeliveryFilter { state: Some(DeliveryState::Dead), ..Default::default() };
        let mut max = DEFAULT_DISCARD_MAX;
        let mut cursor = None;
        for (key, value) in &fields {
            match key.as_str() {
                "reason" => continue,
                "max" => {
                    max = value.as_u64().filter(|m| (1..=MAX_DISCARD_MAX as u64).contains(m)).ok_or_else(|| {
                        ApiError::bad(format!("max: expected a whole number from 1 to {MAX_DISCARD_MAX}"))
                    })? as usize;
                    continue;
                }
                _ => {}
            }
            let Some(text) = value.as_str() else {
                return Err(ApiError::bad(format!("{key}: expected a string")));
            };
            if key == "cursor" {
                cursor = Some(parse_cursor(text)?);
                continue;
            }
            self.filter_param(&mut filter, key, text).await?;
        }
        let reason = reason(fields.get("reason"))?;
        if !filter.state.is_some_and(crate::store::discardable) {
            return Err(ApiError::bad("state: only pending, dead or orphaned deliveries can be discarded"));
        }
        // Deliveries created while this runs are left alone, as a replay job
        // leaves them.
        let now = now_millis();
        filter.until = Some(filter.until.map_or(now + 1, |u| u.min(now + 1)));
        let mut out = DiscardResult {
            considered: 0,
            discarded: 0,
            skipped: 0,
            in_flight: 0,
            truncated: false,
            continue_cursor: None,
            filter: FilterView::from(&filter),
            reason,
        };
        loop {
            if out.considered >= max {
                out.truncated = true;
                break;
            }
            let page = self.store.list(&filter, cursor.as_deref(), DISCARD_BATCH.min(max - out.considered)).await?;
            let ids: Vec<DeliveryId> = page.items.into_iter().map(|d| d.id).collect();
            out.considered += ids.len();
            if !ids.is_empty() {
                let count = self.store.discard(&ids, &out.reason, now_millis()).await?;
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
            out.continue_cursor = cursor;
        }
        self.metrics.discarded(out.discarded);
        tracing::info!(filter = ?filter, discarded = out.discarded, reason = %out.reason, "deliveries discarded");
        Ok(json_response(StatusCode::OK, &out))
    }
}
