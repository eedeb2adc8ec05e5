//! Reverify: each kept callback is verified again with the configuration
//! in force, as if it arrived again at the time it first arrived. One that
//! verifies now is admitted through the normal path (same dedupe key, same
//! event id: one admitted meanwhile is a duplicate) with `received_at` its
//! first receipt and `recovered_from` its quarantine id, and leaves the
//! quarantine; one that does not stays, its diagnosis refreshed.
//!
//! A Nova timestamp is judged against the receipt time, not the time of
//! the reverify, so a callback held back by a wrong secret is not stale for
//! having waited. `allow_stale` admits one whose only fault is its
//! timestamp, and the event says so (`stale_timestamp_accepted`). Either
//! way a Nova webhook is admitted only while its timestamp is within half
//! of `dedupe_ttl` of now (the rule that bounds `timestamp_tolerance`):
//! later, a copy admitted when it was sent may have lost its dedupe key,
//! and a captured webhook replayed would be admitted twice.
//!
//! The client must be in the source's `allow_ips` as configured now.
//! `as_source` verifies against another configured source (callbacks the
//! provider posted to the wrong URL, its `allow_ips` included) and admits
//! them as that source's; an item it does not admit keeps its description.
//!
//! Items go oldest first, so a payment's events are numbered in the order
//! they arrived (docs/lifecycle.md).

use serde::Serialize;
use time::OffsetDateTime;

use super::header_map;
use crate::admission::{Admitter, Recovery};
use crate::config::{Config, ProviderKind};
use crate::providers::diagnose::{self, diagnose};
use crate::providers::{self, ProviderError};
use crate::store::quarantine::Refusal;
use crate::store::{Admission, EventId, StoreError};

/// What a reverify did with one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// Verified and stored now; it left the quarantine.
    Admitted,
    /// Verified, and its event was stored already; it left the quarantine.
    Duplicate,
    /// Still refused; it stays, with a fresh diagnosis.
    Refused,
    /// Its source is not in the configuration; it stays as it was.
    SourceNotConfigured,
    /// Its record cannot be read; it stays (and expires).
    Unreadable,
    /// Its client is not in the `allow_ips` of the source it was verified
    /// against; it stays as it was.
    IpNotAllowed,
    /// Verified, but the store did not take it; it stays. Try again.
    Unavailable,
    NotFound,
}

/// One item's outcome, as the admin API reports it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Reverified {
    pub id: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<EventId>,
    /// Why it is still refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Refusal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

impl Reverified {
    fn new(id: &str, outcome: Outcome) -> Reverified {
        Reverified { id: id.to_owned(), outcome, event_id: None, reason: None, summary: None }
    }
}

/// Reverifies the given items, oldest first. A store failure reading an
/// item stops the run (what was done is kept) and is returned.
pub(crate) async fn reverify(
    admitter: &Admitter,
    config: &Config,
    mut ids: Vec<String>,
    allow_stale: bool,
    as_source: Option<&str>,
) -> Result<Vec<Reverified>, StoreError> {
    ids.sort();
    ids.dedup();
    let store = admitter.store();
    let mut out = Vec::with_capacity(ids.len());
    for id in &ids {
        let item = match store.quarantined(id).await {
            Ok(Some(item)) => item,
            Ok(None) => {
                out.push(Reverified::new(id, Outcome::NotFound));
                continue;
            }
            Err(e @ StoreError::Corrupt { .. }) => {
                tracing::error!(quarantine_id = %id, error = %crate::http::Chain(&e), "unreadable quarantine record");
                out.push(Reverified::new(id, Outcome::Unreadable));
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut meta = item.meta;
        let name = as_source.unwrap_or(&meta.source);
        let Some(source) = config.sources.iter().find(|s| s.name == name) else {
            let mut r = Reverified::new(id, Outcome::SourceNotConfigured);
            r.summary = Some(format!("source '{name}' is not in the configuration"));
            out.push(r);
            continue;
        };
        // As at ingress, the client must be one the source (as configured
        // now) takes callbacks from; with `as_source` that is another
        // source's list than the one checked on arrival.
        let client = meta.client.parse::<std::net::IpAddr>().ok();
        if !source.allow_ips.is_empty() && !client.is_some_and(|c| source.allow_ips.iter().any(|n| n.contains(&c))) {
            let mut r = Reverified::new(id, Outcome::IpNotAllowed);
            r.summary = Some(format!("client {} is not in the allow_ips of source '{name}'", meta.client));
            out.push(r);
            continue;
        }
        let headers = header_map(&meta.headers);
        let received_at = OffsetDateTime::from_unix_timestamp_nanos(meta.received_at as i128 * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let mut stale_timestamp_accepted = false;
        let verdict = match providers::process(source, &headers, &item.body, received_at) {
            Err(ProviderError::StaleTimestamp) if allow_stale => {
                stale_timestamp_accepted = true;
                let lenient = crate::config::Source { timestamp_tolerance: None, ..source.clone() };
                providers::process(&lenient, &headers, &item.body, received_at)
            }
            verdict => verdict,
        };
        let refusal = match verdict {
            // A Nova webhook is admitted only while a copy admitted when it
            // was sent would still have its dedupe key: judged now, since
            // the duplicate check runs now.
            Ok(_)
                if source.kind == ProviderKind::Nova
                    && !within_dedupe(&item.body, OffsetDateTime::now_utc(), config) =>
            {
                let mut r = Reverified::new(id, Outcome::Refused);
                r.reason = Some(meta.reason);
                r.summary = Some(
                    "Too late to admit safely: its timestamp is more than half of store.dedupe_ttl from now, so a copy admitted when it was sent may have lost its dedupe key and this one would be admitted twice. It stays until it expires.".into(),
                );
                out.push(r);
                continue;
            }
            Ok(normalised) => {
                let recovery = Recovery { from: id.clone(), stale_timestamp_accepted };
                match admitter.admit(config, source, normalised, received_at, Some(recovery)).await {
                    Ok((admission, event_id)) => {
                        store.release_quarantined(std::slice::from_ref(id)).await?;
                        let outcome = match admission {
                            Admission::Accepted { .. } => Outcome::Admitted,
                            Admission::Duplicate => Outcome::Duplicate,
                        };
                        tracing::info!(quarantine_id = %id, event_id = %event_id, outcome = ?outcome, "quarantined callback recovered");
                        out.push(Reverified { event_id: Some(event_id), ..Reverified::new(id, outcome) });
                    }
                    Err(_) => out.push(Reverified::new(id, Outcome::Unavailable)),
                }
                continue;
            }
            Err(ProviderError::InvalidSignature(_)) => Refusal::InvalidSignature,
            Err(ProviderError::StaleTimestamp) => Refusal::StaleTimestamp,
            // Genuine now, but a body ingress would refuse as a bad request:
            // it stays, saying so.
            Err(e @ (ProviderError::BadRequest(_) | ProviderError::UnsignedContent(_))) => {
                let message: String = e.to_string().chars().take(200).flat_map(char::escape_debug).collect();
                let summary = format!("Verifies now, but is refused as a bad request: {message}");
                if as_source.is_none() {
                    meta.diagnosis.summary = summary.clone();
                    meta.diagnosis.checked_at = crate::store::now_millis();
                    store.rediagnose(&meta).await?;
                }
                out.push(Reverified {
                    reason: Some(meta.reason),
                    summary: Some(summary),
                    ..Reverified::new(id, Outcome::Refused)
                });
                continue;
            }
        };
        let diagnosis = diagnose(source, &config.sources, refusal, &headers, &item.body, received_at);
        // Tried as another source's: say why here, but the item keeps the
        // description of the source it came to.
        if as_source.is_none() {
            meta.reason = refusal;
            meta.diagnosis = diagnosis.clone();
            store.rediagnose(&meta).await?;
        }
        out.push(Reverified {
            reason: Some(refusal),
            summary: Some(diagnosis.summary),
            ..Reverified::new(id, Outcome::Refused)
        });
    }
    Ok(out)
}

/// Whether a Nova body's timestamp is within half of `dedupe_ttl` of `now`.
fn within_dedupe(body: &[u8], now: OffsetDateTime, config: &Config) -> bool {
    let offset = crate::canonical::parse(body).ok().and_then(|v| diagnose::timestamp_offset(&v, now));
    offset.is_some_and(|s| s.unsigned_abs().saturating_mul(2) <= config.store.dedupe_ttl.as_secs())
}
