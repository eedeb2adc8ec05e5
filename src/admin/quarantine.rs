//! `/admin/quarantine`: the refused callbacks kept by the quarantine, and
//! reverifying them (docs/quarantine.md). Only here, behind the admin
//! token, are their bodies shown; no log line carries one.

use std::collections::BTreeMap;

use base64::Engine as _;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::params::{json_object, parse_limit, parse_time, query_pairs};
use super::{Admin, Answer, ApiError, DEFAULT_PAGE};
use crate::http::json_response;
use crate::quarantine::{Outcome, Reverified, reverify};
use crate::store::now_millis;
use crate::store::quarantine::{Diagnosis, QuarantineFilter, QuarantineItem, Quarantined, Refusal};

/// Items one reverify by filter considers unless `max` says otherwise, and
/// at most; ids one reverify names at most.
const DEFAULT_REVERIFY_MAX: usize = 1000;
const MAX_REVERIFY: usize = 10_000;
/// The largest reverify body: room for `MAX_REVERIFY` ids.
pub(super) const MAX_REVERIFY_BODY: usize = 512 * 1024;

/// A kept callback as listings show it: everything but the body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantineView {
    pub id: String,
    pub source: String,
    pub reason: Refusal,
    pub received_at: String,
    pub client: String,
    /// The signature headers as received.
    pub headers: BTreeMap<String, String>,
    /// What it counts against `max_bytes`.
    pub size: u64,
    pub diagnosis: DiagnosisView,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiagnosisView {
    pub checked_at: String,
    pub summary: String,
    pub findings: Vec<String>,
    pub forms_tried: Vec<String>,
    pub secrets_tried: usize,
    pub verifies_with_source: Option<String>,
    pub timestamp_offset_secs: Option<i64>,
}

impl From<&Diagnosis> for DiagnosisView {
    fn from(d: &Diagnosis) -> DiagnosisView {
        DiagnosisView {
            checked_at: super::api::time(d.checked_at),
            summary: d.summary.clone(),
            findings: d.findings.clone(),
            forms_tried: d.forms_tried.clone(),
            secrets_tried: d.secrets_tried,
            verifies_with_source: d.verifies_with_source.clone(),
            timestamp_offset_secs: d.timestamp_offset_secs,
        }
    }
}

impl From<&Quarantined> for QuarantineView {
    fn from(q: &Quarantined) -> QuarantineView {
        QuarantineView {
            id: q.id.clone(),
            source: q.source.clone(),
            reason: q.reason,
            received_at: super::api::time(q.received_at),
            client: q.client.clone(),
            headers: q.headers.iter().cloned().collect(),
            size: q.size,
            diagnosis: DiagnosisView::from(&q.diagnosis),
        }
    }
}

/// `GET /admin/quarantine/{id}`: one kept callback with its body, as text
/// when it is UTF-8, else in base64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantineDetail {
    #[serde(flatten)]
    pub item: QuarantineView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantinePageView {
    pub items: Vec<QuarantineView>,
    pub next_cursor: Option<String>,
}

/// `POST /admin/quarantine/reverify`: what happened to each item, oldest
/// first, and the count of each outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReverifyResult {
    pub considered: usize,
    pub counts: BTreeMap<String, usize>,
    /// More matched the filter than `max`.
    pub truncated: bool,
    pub items: Vec<Value>,
}

fn is_quarantine_id(s: &str) -> bool {
    s.strip_prefix("qtn_").is_some_and(|h| h.len() == 28 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn parse_reason(value: &str) -> Result<Refusal, ApiError> {
    Refusal::parse(value)
        .ok_or_else(|| ApiError::bad(format!("reason: expected invalid_signature or stale_timestamp, got '{value}'")))
}

impl Admin {
    /// Applies one filter parameter; unknown names are errors.
    fn quarantine_filter(&self, filter: &mut QuarantineFilter, key: &str, value: &str) -> Result<(), ApiError> {
        match key {
            // A source removed from the configuration may still have items.
            "source" if !value.is_empty() => filter.source = Some(value.to_owned()),
            "reason" => filter.reason = Some(parse_reason(value)?),
            "since" => filter.since = Some(parse_time("since", value, now_millis())?),
            "until" => filter.until = Some(parse_time("until", value, now_millis())?),
            "source" => return Err(ApiError::bad("source: must not be empty")),
            other => return Err(ApiError::bad(format!("unknown parameter '{other}'"))),
        }
        if let (Some(since), Some(until)) = (filter.since, filter.until)
            && since >= until
        {
            return Err(ApiError::bad("since must be before until"));
        }
        Ok(())
    }

    pub(super) async fn quarantine_list(&self, query: &str) -> Answer {
        let mut filter = QuarantineFilter::default();
        let (mut limit, mut cursor) = (DEFAULT_PAGE, None);
        for (key, value) in query_pairs(query)? {
            match key.as_ref() {
                "limit" => limit = parse_limit(&value)?,
                "cursor" if is_quarantine_id(&value) => cursor = Some(value),
                "cursor" => return Err(ApiError::bad(format!("cursor: not a cursor this API gave: '{value}'"))),
                k => self.quarantine_filter(&mut filter, k, &value)?,
            }
        }
        let page = self.store.list_quarantine(&filter, cursor.as_deref(), limit).await?;
        let items = page.items.iter().map(QuarantineView::from).collect();
        Ok(json_response(StatusCode::OK, &QuarantinePageView { items, next_cursor: page.next_cursor }))
    }

    pub(super) async fn quarantine_item(&self, id: &str) -> Answer {
        let not_found = || ApiError::not_found(format!("no quarantined callback {id}"));
        if !is_quarantine_id(id) {
            return Err(not_found());
        }
        let QuarantineItem { meta, body } = self.store.quarantined(id).await?.ok_or_else(not_found)?;
        let (body, body_base64) = match String::from_utf8(body) {
            Ok(text) => (Some(text), None),
            Err(e) => (None, Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes()))),
        };
        Ok(json_response(StatusCode::OK, &QuarantineDetail { item: QuarantineView::from(&meta), body, body_base64 }))
    }

    /// Reverifies the items named by `ids`, or those a filter selects.
    pub(super) async fn quarantine_reverify(&self, body: &[u8]) -> Answer {
        let fields = json_object(body)?;
        let mut ids: Option<Vec<String>> = None;
        let mut filter = QuarantineFilter::default();
        let (mut max, mut allow_stale, mut filtered) = (DEFAULT_REVERIFY_MAX, false, false);
        let mut as_source: Option<String> = None;
        for (key, value) in &fields {
            match key.as_str() {
                "ids" => {
                    let list = value.as_array().ok_or_else(|| ApiError::bad("ids: expected an array of ids"))?;
                    if list.is_empty() || list.len() > MAX_REVERIFY {
                        return Err(ApiError::bad(format!("ids: expected 1 to {MAX_REVERIFY} ids")));
                    }
                    let list = list
                        .iter()
                        .map(|v| match v.as_str() {
                            Some(id) if is_quarantine_id(id) => Ok(id.to_owned()),
                            _ => Err(ApiError::bad(format!("ids: not a quarantine id: {v}"))),
                        })
                        .collect::<Result<_, _>>()?;
                    ids = Some(list);
                }
                "as_source" => {
                    let name = value.as_str().ok_or_else(|| ApiError::bad("as_source: expected a source name"))?;
                    if !self.live.current().sources.iter().any(|s| s.name == name) {
                        return Err(ApiError::bad(format!("as_source: no source named '{name}' in the configuration")));
                    }
                    as_source = Some(name.to_owned());
                }
                "allow_stale" => {
                    allow_stale = value.as_bool().ok_or_else(|| ApiError::bad("allow_stale: expected true or false"))?
                }
                "max" => {
                    max = value.as_u64().filter(|m| (1..=MAX_REVERIFY as u64).contains(m)).ok_or_else(|| {
                        ApiError::bad(format!("max: expected a whole number from 1 to {MAX_REVERIFY}"))
                    })? as usize;
                    filtered = true;
                }
                k => {
                    let text = value.as_str().ok_or_else(|| ApiError::bad(format!("{k}: expected a string")))?;
                    self.quarantine_filter(&mut filter, k, text)?;
                    filtered = true;
                }
            }
        }
        let (ids, truncated) = match ids {
            Some(_) if filtered => {
                return Err(ApiError::bad("give either ids or a filter (source, reason, since, until, max), not both"));
            }
            Some(ids) => (ids, false),
            None => self.select_quarantined(&filter, max).await?,
        };
        let config = self.live.current();
        let done = reverify(&self.admitter, &config, ids, allow_stale, as_source.as_deref()).await?;
        let mut counts = BTreeMap::new();
        for r in &done {
            *counts.entry(outcome_label(r.outcome)).or_insert(0) += 1;
        }
        tracing::info!(considered = done.len(), ?counts, allow_stale, as_source, "quarantine reverified");
        let items = done.iter().map(|r: &Reverified| serde_json::to_value(r).unwrap_or(Value::Null)).collect();
        Ok(json_response(StatusCode::OK, &ReverifyResult { considered: done.len(), counts, truncated, items }))
    }

    /// The oldest `max` ids matching `filter`, and whether more matched: a
    /// reverify cut short must leave the newer ones for the next run, so
    /// that a payment's events are still admitted in the order they came.
    /// The listing runs newest first, so every match is listed (ids only;
    /// `max_bytes` bounds how many there can be).
    async fn select_quarantined(&self, filter: &QuarantineFilter, max: usize) -> Result<(Vec<String>, bool), ApiError> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.store.list_quarantine(filter, cursor.as_deref(), 1000).await?;
            ids.extend(page.items.into_iter().map(|q| q.id));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let truncated = ids.len() > max;
        let oldest = ids.split_off(ids.len().saturating_sub(max));
        Ok((oldest, truncated))
    }
}

fn outcome_label(o: Outcome) -> String {
    serde_json::to_value(o).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}
