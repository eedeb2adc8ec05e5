//! The normalised event: what every endpoint receives, whatever the provider.
//!
//! An event's id is derived from its source name and the provider's dedupe
//! key, so a repeat of the same callback always carries the same id — and the
//! same `webhook-id` downstream — even after its dedupe key has expired.
//! The provider's verified body rides along as `payload`, compacted but with
//! every number exactly as the provider wrote it.

use serde::Serialize;

use crate::lifecycle::{NO_SEQUENCE, SubjectRef};
use crate::store::EventId;
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;

/// What a subject of an event is: a payment, a payout, a Nova deposit…
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Subject {
    pub kind: String,
    pub id: Option<String>,
}

/// The provider-specific part of a normalised event, produced by a provider
/// module from a verified body.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalised {
    /// Identifies "the same callback" for deduplication.
    pub dedupe_key: String,
    pub event_type: String,
    pub provider_status: Option<String>,
    pub subject: Subject,
    pub amount: Option<String>,
    pub currency: Option<String>,
    pub network: Option<String>,
    pub user_id: Option<String>,
    pub order_id: Option<String>,
    pub tx_hash: Option<String>,
    pub occurred_at: Option<String>,
    /// The verified body, compact, numbers as written.
    pub payload: String,
}

/// A normalised event ready to store and deliver.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: EventId,
    #[serde(rename = "type")]
    pub event_type: String,
    pub source: String,
    pub provider: &'static str,
    pub provider_status: Option<String>,
    pub subject: Subject,
    pub amount: Option<String>,
    pub currency: Option<String>,
    pub network: Option<String>,
    pub user_id: Option<String>,
    pub order_id: Option<String>,
    pub tx_hash: Option<String>,
    pub occurred_at: Option<String>,
    pub received_at: String,
    /// The quarantine item this event was admitted from by a reverify.
    pub recovered_from: Option<String>,
    /// Admitted by a reverify with `allow_stale` although its timestamp was
    /// outside the tolerance when it was received.
    pub stale_timestamp_accepted: bool,
    /// The provider's body as JSON text, written into the event as it is
    /// (see [`Event::to_json`]). Not through serde_json's `RawValue`: that
    /// gives the key `$serde_json::private::RawValue` a meaning, and a
    /// signed body carrying it would then not read back as JSON.
    #[serde(skip)]
    pub payload: String,
}

impl Event {
    /// Builds the event for `source` (a configured name) of provider kind
    /// `provider`, received at `received_at`.
    pub fn new(source: &str, provider: &'static str, n: Normalised, received_at: OffsetDateTime) -> Event {
        // The payload came out of our own strict parser, so it is valid JSON;
        // fall back to null rather than write broken JSON if that ever
        // stopped being true.
        let payload = match crate::canonical::parse(n.payload.as_bytes()) {
            Ok(_) => n.payload,
            Err(_) => "null".to_owned(),
        };
        Event {
            id: EventId::derive(source, &n.dedupe_key),
            event_type: n.event_type,
            source: source.to_owned(),
            provider,
            provider_status: n.provider_status,
            subject: n.subject,
            amount: n.amount,
            currency: n.currency,
            network: n.network,
            user_id: n.user_id,
            order_id: n.order_id,
            tx_hash: n.tx_hash,
            occurred_at: n.occurred_at,
            received_at: rfc3339_millis(received_at),
            recovered_from: None,
            stale_timestamp_accepted: false,
            payload,
        }
    }

    /// The JSON bytes that are stored and delivered, byte for byte, for an
    /// event without a subject id: every field, the lifecycle fields (null,
    /// false), then `payload` last, its text as it is.
    pub fn to_json(&self) -> Vec<u8> {
        let (mut json, at) = self.to_json_unnumbered();
        json.splice(at..at, NO_SEQUENCE.bytes());
        json
    }

    /// The subject's place in its lifecycle, for admission to number; `None`
    /// without a subject id.
    pub fn subject_ref(&self) -> Option<SubjectRef> {
        let status = self.provider_status.as_deref();
        SubjectRef::of(&self.source, self.provider, &self.subject.kind, self.subject.id.as_deref(), status)
    }

    /// The same without the lifecycle fields, and the byte where they go:
    /// admission numbers an event with a subject and writes them in.
    pub fn to_json_unnumbered(&self) -> (Vec<u8>, usize) {
        let mut out = serde_json::to_vec(self).expect("an event always serialises");
        // `{…}` with at least the id in it: replace the `}` by the payload.
        out.pop();
        let at = out.len();
        out.extend_from_slice(br#","payload":"#);
        out.extend_from_slice(self.payload.as_bytes());
        out.push(b'}');
        (out, at)
    }
}

const MILLIS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// `2026-11-21T10:00:00.123Z`: UTC, milliseconds.
pub fn rfc3339_millis(t: OffsetDateTime) -> String {
    t.checked_to_offset(time::UtcOffset::UTC)
        .and_then(|t| t.format(MILLIS).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".into())
}

/// Parses an RFC 3339 time with any offset, as UTC. `None` for a time that
/// UTC cannot hold: `9999-12-31T23:59:59-01:00` is valid RFC 3339 but falls
/// in the year 10000.
pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()?
        .checked_to_offset(time::UtcOffset::UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_with_serde_jsons_private_key_still_reads_back_as_json() {
        // Found by the differential fuzz target: with serde_json's raw_value
        // feature this key is magic, and the stored event (payload within)
        // failed to parse, so the admin API could not show it.
        let n = Normalised {
            dedupe_key: "k".into(),
            event_type: "unknown".into(),
            provider_status: None,
            subject: Subject { kind: "unknown".into(), id: None },
            amount: None,
            currency: None,
            network: None,
            user_id: None,
            order_id: None,
            tx_hash: None,
            occurred_at: None,
            payload: r#"{"$serde_json::private::RawValue":"x","a":[1,2.50]}"#.into(),
        };
        let json = Event::new("np", "nowpayments", n, OffsetDateTime::UNIX_EPOCH).to_json();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["payload"]["$serde_json::private::RawValue"], "x");
        let text = String::from_utf8(json).unwrap();
        assert!(text.ends_with(r#","payload":{"$serde_json::private::RawValue":"x","a":[1,2.50]}}"#), "{text}");
    }

    #[test]
    fn times_past_the_last_utc_year_are_refused_not_a_panic() {
        // Found by the nova and nowpayments fuzz targets: converting this
        // to UTC panicked inside a signed callback's normalisation.
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59-01:00"), None);
        // Before year 0 is a time `time` holds; formatting it must not panic.
        let _ = rfc3339_millis(parse_rfc3339("0000-01-01T00:00:00+01:00").unwrap());
        let t = parse_rfc3339("9999-12-31T23:59:59+01:00").unwrap();
        assert_eq!(rfc3339_millis(t), "9999-12-31T22:59:59.000Z");
        let edge = OffsetDateTime::parse("9999-12-31T23:59:59-01:00", &time::format_description::well_known::Rfc3339);
        assert_eq!(rfc3339_millis(edge.unwrap()), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn formats_times_in_utc_millis() {
        let t = parse_rfc3339("2025-12-09T05:04:21.0979+02:00").unwrap();
        assert_eq!(rfc3339_millis(t), "2025-12-09T03:04:21.097Z");
    }
}
