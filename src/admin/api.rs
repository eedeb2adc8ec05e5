//! The admin API on the wire: every answer of `/admin/*` and the bodies the
//! CLI sends, as documented in docs/operations.md. One definition for both
//! ends: the server ([`crate::admin`]) writes these types and the CLI
//! ([`crate::admin_cli`]) reads its answers back into them, so a field
//! renamed on one side cannot quietly read as missing on the other.
//!
//! Fields are declared in the documented order; on the wire the keys come
//! out sorted ([`crate::http::json_response`]). Times are RFC 3339 UTC with
//! milliseconds, kept as the text the server wrote: the CLI shows them as
//! they came. An event is the provider's payload, normalised, and stays a
//! [`Value`]. Errors have the one shape of every listener, [`ErrorBody`].

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::span;
pub use crate::http::ErrorBody;
use crate::store::{
    Attempt, AttemptResult, Delivery, DeliveryFilter, DeliveryId, DeliveryState, EventId, Millis, ReplayJob,
};

/// A delivery, as listings and events show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryView {
    pub id: DeliveryId,
    pub event_id: EventId,
    pub endpoint: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    /// Why an operator discarded it; only while it is `discarded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// For an endpoint with `ordering = "subject"`: the subject it is
    /// ordered in and its event's sequence there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<crate::store::Order>,
}

/// `GET /admin/deliveries/{id}`: the delivery and every attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: DeliveryView,
    pub history: Vec<AttemptView>,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptView {
    pub number: u32,
    pub started_at: String,
    pub duration_ms: u64,
    /// The status the endpoint answered with; null if it gave no answer.
    pub status: Option<u16>,
    /// What the delivery's `last_error` became: `HTTP 500`, `connect: …`;
    /// null after a 2xx.
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
}

/// `GET /admin/deliveries`: a page, newest first. `next_cursor` is the
/// `cursor` of the next page; null when there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryView>,
    pub next_cursor: Option<String>,
}

/// `GET /admin/events/{id}`: the event as delivered, and its deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    pub event: Value,
    pub deliveries: Vec<DeliveryView>,
}

/// `GET /admin/subjects/{source}/{kind}/{id}`: a payment's (or payout's…)
/// timeline, its events in sequence order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectView {
    pub source: String,
    pub kind: String,
    pub id: String,
    pub events: Vec<TimelineItem>,
}

/// One event of a subject's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineItem {
    pub sequence: u64,
    pub event_id: EventId,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub provider_status: Option<String>,
    pub previous_status: Option<String>,
    pub regression: bool,
    pub received_at: Option<String>,
    pub deliveries: Vec<DeliveryView>,
}

impl TimelineItem {
    /// From a stored entry: the fields are read from the event as stored.
    pub fn new(e: &crate::store::TimelineEntry) -> Result<TimelineItem, crate::store::StoreError> {
        let v: Value =
            serde_json::from_slice(&e.event.json).map_err(|x| crate::store::corrupt(e.event.id.as_str(), x))?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(TimelineItem {
            sequence: e.sequence,
            event_id: e.event.id.clone(),
            event_type: text("type"),
            provider_status: text("provider_status"),
            previous_status: text("previous_status"),
            regression: v.get("regression").and_then(Value::as_bool).unwrap_or(false),
            received_at: text("received_at"),
            deliveries: e.deliveries.iter().map(DeliveryView::from).collect(),
        })
    }
}

/// `GET /admin/store`: what the store holds and how long it keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreView {
    /// `embedded` or `redis`.
    pub kind: String,
    pub events: u64,
    /// Deliveries by state, every state named.
    pub deliveries: std::collections::BTreeMap<DeliveryState, u64>,
    pub attempts: u64,
    pub replay_jobs: u64,
    pub dedupe_keys: u64,
    /// Events noted for retention to look at.
    pub retention_queue: u64,
    /// The embedded file's size, or the Redis server's `used_memory`.
    pub bytes: u64,
    pub oldest_event_at: Option<String>,
    /// The configured retention, as written in the configuration's units.
    pub retention: RetentionView,
    /// Refused callbacks kept, and the bytes they take (docs/quarantine.md).
    #[serde(default)]
    pub quarantine_items: u64,
    #[serde(default)]
    pub quarantine_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetentionView {
    pub delivered: String,
    pub dead: String,
    pub replay_jobs: String,
}

impl StoreView {
    pub fn new(kind: &str, s: &crate::store::retention::StoreStats, r: &crate::config::RetentionConfig) -> StoreView {
        StoreView {
            kind: kind.to_owned(),
            events: s.events,
            deliveries: s.deliveries.iter().copied().collect(),
            attempts: s.attempts,
            replay_jobs: s.replay_jobs,
            dedupe_keys: s.dedupe_keys,
            retention_queue: s.retention_queue,
            bytes: s.bytes,
            oldest_event_at: s.oldest_event_at.map(time),
            retention: RetentionView {
                delivered: span(r.delivered),
                dead: span(r.dead),
                replay_jobs: span(r.replay_jobs),
            },
            quarantine_items: s.quarantine.items,
            quarantine_bytes: s.quarantine.bytes,
        }
    }
}

/// `POST /admin/deliveries/{id}/replay`: whether it was replayed or
/// skipped, and its state after. The state is null only if the delivery
/// went away in between.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayResult {
    pub replayed: usize,
    pub skipped: usize,
    pub state: Option<DeliveryState>,
}

/// `POST /admin/replay` and `GET /admin/replays/{job}`: a bulk replay job
/// and its progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayJobView {
    pub job: String,
    pub replayed: usize,
    pub skipped: usize,
    pub not_found: usize,
    pub not_configured: usize,
    pub considered: usize,
    pub finished: bool,
    pub truncated: bool,
    /// To go on below a truncated job: the last delivery it examined, as
    /// the `cursor` of the next request. Exclusive, so nothing is skipped
    /// or repeated, however many deliveries share a millisecond. Absent
    /// unless truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_cursor: Option<String>,
    /// The selection as the job resolved it: relative times (`24h`) become
    /// the times they meant when the job began, so the same selection can
    /// be asked for again later, with `continue_cursor`.
    pub filter: FilterView,
    pub created_at: String,
    pub updated_at: String,
}

/// A replay job's selection; null where it does not narrow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FilterView {
    pub state: Option<DeliveryState>,
    pub source: Option<String>,
    pub endpoint: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
}

/// `POST /admin/discard`: what the deliveries the filter selected became.
/// `truncated` if it stopped at `max` with more possibly left; then
/// `continue_cursor` goes on below the last one considered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscardResult {
    pub considered: usize,
    pub discarded: usize,
    /// Delivered or discarded meanwhile: left as they were.
    pub skipped: usize,
    /// Claimed by a worker meanwhile: left to finish.
    pub in_flight: usize,
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_cursor: Option<String>,
    /// The selection as resolved (relative times become times).
    pub filter: FilterView,
    pub reason: String,
}

/// `POST /admin/deliveries/{id}/discard`: whether it was discarded now
/// (0 if it was already) and its state after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscardOneResult {
    pub discarded: usize,
    pub state: DeliveryState,
}

/// The body of `POST /admin/deliveries/{id}/discard`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscardOneRequest {
    pub reason: String,
}

/// The body of `POST /admin/replay`: which deliveries to replay. Absent
/// fields do not narrow; `state` is `dead` unless given. Values are the
/// operator's text, unchecked: the server refuses a bad one with a message
/// naming it, and reads the body key by key to do so (`params.rs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplayRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<usize>,
    /// A `continue_cursor` from a truncated job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// The body of `POST /admin/discard`: the selection of `POST /admin/replay`
/// (`state` is `dead` unless given) and the reason, required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiscardRequest {
    #[serde(flatten)]
    pub select: ReplayRequest,
    pub reason: String,
}

/// A stored time as the API writes it.
pub(crate) fn time(ms: Millis) -> String {
    crate::event::rfc3339_millis(time::OffsetDateTime::UNIX_EPOCH + Duration::from_millis(ms))
}

impl From<&Delivery> for DeliveryView {
    fn from(d: &Delivery) -> DeliveryView {
        DeliveryView {
            id: d.id.clone(),
            event_id: d.event_id.clone(),
            endpoint: d.endpoint.clone(),
            source: d.source.clone(),
            event_type: d.event_type.clone(),
            state: d.state,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at.map(time),
            last_error: d.last_error.clone(),
            discard_reason: d.discard_reason.clone(),
            created_at: time(d.created_at),
            updated_at: time(d.updated_at),
            order: d.order.clone(),
        }
    }
}

impl From<&Attempt> for AttemptView {
    fn from(a: &Attempt) -> AttemptView {
        let status = match a.result {
            AttemptResult::Status { code } => Some(code),
            AttemptResult::Error { .. } => None,
        };
        AttemptView {
            number: a.number,
            started_at: time(a.started_at),
            duration_ms: a.duration_ms,
            status,
            error: a.result.last_error(),
            response_excerpt: a.response_excerpt.clone(),
        }
    }
}

impl From<&DeliveryFilter> for FilterView {
    fn from(f: &DeliveryFilter) -> FilterView {
        FilterView {
            state: f.state,
            source: f.source.clone(),
            endpoint: f.endpoint.clone(),
            event_type: f.event_type.clone(),
            since: f.since.map(time),
            until: f.until.map(time),
        }
    }
}

impl From<&ReplayJob> for ReplayJobView {
    fn from(job: &ReplayJob) -> ReplayJobView {
        ReplayJobView {
            job: job.id.clone(),
            replayed: job.replayed,
            skipped: job.skipped,
            not_found: job.not_found,
            not_configured: job.not_configured,
            considered: job.considered,
            finished: job.finished,
            truncated: job.truncated,
            continue_cursor: job.cursor.clone().filter(|_| job.truncated),
            filter: FilterView::from(&job.filter),
            created_at: time(job.created_at),
            updated_at: time(job.updated_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;

    use super::*;

    /// The bytes the server writes for `value`, after checking that the
    /// CLI reads them back as the same value.
    fn wire<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) -> String {
        let text = serde_json::to_value(value).unwrap().to_string();
        assert_eq!(&serde_json::from_str::<T>(&text).unwrap(), value, "read back from {text}");
        text
    }

    fn delivery() -> Delivery {
        Delivery {
            id: "dlv_0190a1b2c3d4e5f60718293a4b5c".into(),
            event_id: "evt_1".into(),
            endpoint: "backend".into(),
            source: "nowpayments".into(),
            event_type: "deposit.confirmed".into(),
            state: DeliveryState::InFlight,
            attempts: 2,
            budget_start: 0,
            next_attempt_at: None,
            last_error: Some("HTTP 500".into()),
            created_at: 1_800_000_000_000,
            updated_at: 1_800_000_000_250,
            claim_token: 9,
            discard_reason: None,
            order: None,
        }
    }

    #[test]
    fn a_delivery_and_its_history_keep_their_field_names_nulls_and_order() {
        let attempts = [
            Attempt {
                number: 1,
                started_at: 1_800_000_000_001,
                duration_ms: 12,
                result: AttemptResult::Status { code: 500 },
                response_excerpt: Some("oops".into()),
            },
            Attempt {
                number: 2,
                started_at: 1_800_000_000_200,
                duration_ms: 0,
                result: AttemptResult::Error { class: "connect".into(), detail: "refused".into() },
                response_excerpt: None,
            },
            Attempt {
                number: 3,
                started_at: 1_800_000_000_300,
                duration_ms: 3,
                result: AttemptResult::Status { code: 204 },
                response_excerpt: None,
            },
        ];
        let detail = DeliveryDetail {
            delivery: DeliveryView::from(&delivery()),
            history: attempts.iter().map(AttemptView::from).collect(),
        };
        assert_eq!(
            wire(&detail),
            concat!(
                r#"{"attempts":2,"created_at":"2027-01-15T08:00:00.000Z","endpoint":"backend","event_id":"evt_1","#,
                r#""history":["#,
                r#"{"duration_ms":12,"error":"HTTP 500","number":1,"response_excerpt":"oops","#,
                r#""started_at":"2027-01-15T08:00:00.001Z","status":500},"#,
                r#"{"duration_ms":0,"error":"connect: refused","number":2,"response_excerpt":null,"#,
                r#""started_at":"2027-01-15T08:00:00.200Z","status":null},"#,
                r#"{"duration_ms":3,"error":null,"number":3,"response_excerpt":null,"#,
                r#""started_at":"2027-01-15T08:00:00.300Z","status":204}],"#,
                r#""id":"dlv_0190a1b2c3d4e5f60718293a4b5c","last_error":"HTTP 500","next_attempt_at":null,"#,
                r#""source":"nowpayments","state":"in_flight","type":"deposit.confirmed","#,
                r#""updated_at":"2027-01-15T08:00:00.250Z"}"#
            )
        );
        let page =
            DeliveryPage { items: vec![detail.delivery.clone()], next_cursor: Some(detail.delivery.id.to_string()) };
        let text = wire(&page);
        assert!(
            text.starts_with(r#"{"items":[{"attempts":2,"#)
                && text.ends_with(r#"}],"next_cursor":"dlv_0190a1b2c3d4e5f60718293a4b5c"}"#),
            "{text}"
        );
        assert_eq!(wire(&DeliveryPage { items: vec![], next_cursor: None }), r#"{"items":[],"next_cursor":null}"#);
        let event = EventView { event: serde_json::json!({"id": "evt_1", "b": [1, 2.5]}), deliveries: vec![] };
        assert_eq!(wire(&event), r#"{"deliveries":[],"event":{"b":[1,2.5],"id":"evt_1"}}"#);
    }

    #[test]
    fn a_replay_job_shows_its_resolved_filter_and_a_cursor_only_when_truncated() {
        let filter = DeliveryFilter {
            state: Some(DeliveryState::Dead),
            endpoint: Some("backend".into()),
            since: Some(1_800_000_000_000),
            ..Default::default()
        };
        let mut job = ReplayJob {
            id: "rpl_1".into(),
            filter,
            include_delivered: false,
            max: 2,
            created_at: 1_800_000_000_000,
            updated_at: 1_800_000_001_000,
            steps: 1,
            cursor: Some("dlv_0190a1b2c3d4e5f60718293a4b5c".into()),
            considered: 2,
            replayed: 1,
            skipped: 1,
            not_found: 0,
            not_configured: 0,
            finished: true,
            truncated: true,
        };
        assert_eq!(
            wire(&ReplayJobView::from(&job)),
            concat!(
                r#"{"considered":2,"continue_cursor":"dlv_0190a1b2c3d4e5f60718293a4b5c","#,
                r#""created_at":"2027-01-15T08:00:00.000Z","#,
                r#""filter":{"endpoint":"backend","since":"2027-01-15T08:00:00.000Z","source":null,"#,
                r#""state":"dead","type":null,"until":null},"#,
                r#""finished":true,"job":"rpl_1","not_configured":0,"not_found":0,"replayed":1,"skipped":1,"#,
                r#""truncated":true,"updated_at":"2027-01-15T08:00:01.000Z"}"#
            )
        );
        job.truncated = false;
        let text = wire(&ReplayJobView::from(&job));
        assert!(!text.contains("continue_cursor"), "{text}");
    }

    #[test]
    fn durations_read_as_the_configuration_writes_them() {
        let d = Duration::from_secs;
        assert_eq!(span(d(7 * 86_400)), "7d");
        assert_eq!(span(d(90 * 86_400)), "90d");
        assert_eq!(span(d(36 * 3600)), "36h");
        assert_eq!(span(d(90)), "90s");
        assert_eq!(span(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn replay_and_discard_answers_keep_their_shape() {
        let replayed = ReplayResult { replayed: 1, skipped: 0, state: Some(DeliveryState::Pending) };
        assert_eq!(wire(&replayed), r#"{"replayed":1,"skipped":0,"state":"pending"}"#);
        let gone = ReplayResult { replayed: 0, skipped: 0, state: None };
        assert_eq!(wire(&gone), r#"{"replayed":0,"skipped":0,"state":null}"#);
        let one = DiscardOneResult { discarded: 1, state: DeliveryState::Discarded };
        assert_eq!(wire(&one), r#"{"discarded":1,"state":"discarded"}"#);
        let bulk = DiscardResult {
            considered: 4,
            discarded: 2,
            skipped: 1,
            in_flight: 1,
            truncated: false,
            continue_cursor: None,
            filter: FilterView { state: Some(DeliveryState::Dead), ..FilterView::default() },
            reason: "refunded".into(),
        };
        assert_eq!(
            wire(&bulk),
            r#"{"considered":4,"discarded":2,"filter":{"endpoint":null,"since":null,"source":null,"state":"dead","type":null,"until":null},"in_flight":1,"reason":"refunded","skipped":1,"truncated":false}"#
        );
    }

    #[test]
    fn request_bodies_are_what_the_strict_body_parser_accepts() {
        assert_eq!(wire(&ReplayRequest::default()), "{}");
        let every = ReplayRequest {
            state: Some("dead".into()),
            source: Some("nowpayments".into()),
            endpoint: Some("backend".into()),
            event_type: Some("deposit.confirmed".into()),
            since: Some("24h".into()),
            until: Some("2027-01-15T08:00:00Z".into()),
            max: Some(10),
            cursor: Some("dlv_0190a1b2c3d4e5f60718293a4b5c".into()),
        };
        assert!(wire(&every).contains(r#""type":"deposit.confirmed""#));
        assert_eq!(super::super::parse::body(wire(&every).as_bytes()), Ok(8));
        let discard = DiscardRequest { select: every, reason: "refunded by hand".into() };
        assert!(wire(&discard).contains(r#""reason":"refunded by hand""#));
        assert_eq!(super::super::parse::body(wire(&discard).as_bytes()), Ok(9));
        let one = DiscardOneRequest { reason: "refunded".into() };
        assert_eq!(wire(&one), r#"{"reason":"refunded"}"#);
    }

    #[test]
    fn an_answer_of_the_wrong_shape_does_not_read() {
        assert!(serde_json::from_str::<DeliveryPage>(r#"{"next_cursor":null}"#).is_err());
        assert!(serde_json::from_str::<ReplayResult>(r#"{"replayed":1,"skipped":0,"state":"lost"}"#).is_err());
        // Fields a newer relay adds are no reason to refuse an answer.
        let page: DeliveryPage = serde_json::from_str(r#"{"items":[],"next_cursor":null,"scanned":5000}"#).unwrap();
        assert_eq!(page, DeliveryPage { items: vec![], next_cursor: None });
    }
}
