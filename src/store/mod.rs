//! The store: the seam between the ingress half and the delivery half.
//!
//! Ingress calls [`Store::admit`], which writes the dedupe key, the event and
//! one delivery per matching endpoint together or not at all, durably, before
//! the provider gets its 200. Delivery workers [`claim_due`](Store::claim_due)
//! deliveries and [`finish`](Store::finish) each claim with the attempt's
//! outcome; an unfinished claim returns to `pending` after its visibility
//! timeout. Operators [`list`](Store::list) and [`replay`](Store::replay).
//!
//! Backends: [`embedded`] (redb, one process) and [`redis`] (several
//! processes). Both must pass the same conformance tests; every method is
//! defined by its effect on the records below, not by a backend's layout.
//! Times are unix milliseconds.

pub mod embedded;
mod error;
mod ids;
pub mod quarantine;
pub mod redis;
mod replay;
pub mod retention;
mod subjects;

pub use error::{Cause, StoreError};
pub(crate) use error::{Context, corrupt, unavailable};
pub use ids::{DeliveryId, EventId};
pub use replay::{ReplayCount, ReplayJob};
use retention::{Cutoffs, Purged, StoreStats};

pub use crate::lifecycle::{Sequenced, SubjectRef};
pub use subjects::{Numbering, Order, Policy, TimelineEntry};

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Milliseconds since the unix epoch.
pub type Millis = u64;

/// Relays sharing a store should keep their clocks within this many
/// milliseconds of the store's; beyond it they log a warning. Two relays
/// each off by less than this differ by less than the 500 ms that
/// `visibility_timeout` must leave above every endpoint timeout.
pub const CLOCK_OFFSET_WARN_MS: i64 = 100;

pub fn now_millis() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

/// An event to admit: its id (derived from source + dedupe key), what the
/// filters need, and the exact JSON bytes that will be delivered.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: EventId,
    pub source: String,
    pub event_type: String,
    pub received_at: Millis,
    /// The event's JSON. For an event with a subject, without its
    /// lifecycle fields: admission numbers it and writes them in (see
    /// [`Numbering`]); for one without, with them (null, false).
    pub json: Vec<u8>,
    pub subject: Option<Numbering>,
}

/// A delivery to create at admission: one per matching endpoint.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: DeliveryId,
    pub endpoint: String,
    pub policy: Policy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Stored now, with its deliveries; `regression` as its subject's
    /// lifecycle says (`lifecycle`).
    Accepted { regression: bool },
    /// The dedupe key is live: nothing was written.
    Duplicate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    InFlight,
    Delivered,
    Dead,
    /// Closed by an operator, with a reason: final, like `dead`, but not a
    /// failure anyone needs to look at again. Replayable by id.
    Discarded,
    /// Created final and never sent: its event is a status regression and
    /// the endpoint has `regressions = "skip"`. Replayable by id.
    Skipped,
    /// Its endpoint is no longer in the configuration: nothing will send it.
    /// Off the schedule until a relay configured with the endpoint takes it
    /// back, or an operator discards it.
    Orphaned,
}

/// Deliveries in each state, in [`DeliveryState::ALL`] order.
pub type Counts = [(DeliveryState, u64); 7];

impl DeliveryState {
    /// Every state, in the order gauges and counts list them.
    pub const ALL: [DeliveryState; 7] = [
        DeliveryState::Pending,
        DeliveryState::InFlight,
        DeliveryState::Delivered,
        DeliveryState::Dead,
        DeliveryState::Discarded,
        DeliveryState::Skipped,
        DeliveryState::Orphaned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::InFlight => "in_flight",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
            DeliveryState::Discarded => "discarded",
            DeliveryState::Skipped => "skipped",
            DeliveryState::Orphaned => "orphaned",
        }
    }

    /// Where this state sits in [`DeliveryState::ALL`] and [`Counts`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        DeliveryState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// One delivery of one event to one endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: DeliveryId,
    pub event_id: EventId,
    pub endpoint: String,
    pub source: String,
    pub event_type: String,
    pub state: DeliveryState,
    /// Attempts made in all, across replays.
    pub attempts: u32,
    /// `attempts` when the current budget began (0, or the count at the last
    /// replay): the retry schedule counts from here.
    pub budget_start: u32,
    /// When a pending delivery is due, or when an in-flight claim expires.
    pub next_attempt_at: Option<Millis>,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Fencing token: a new value at every claim, so a worker whose claim
    /// expired and was taken over cannot finish it.
    pub claim_token: u64,
    /// Why an operator discarded it, while it is `discarded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard_reason: Option<String>,
    /// For an endpoint with `ordering = "subject"`: its event's subject
    /// and place, which orders it behind the subject's earlier deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
}

impl Delivery {
    /// A delivery of `event` as admission creates it: pending, due at once
    /// (or skipped, for a regression to an endpoint that skips them), and
    /// in its subject's order if its endpoint keeps one.
    pub fn pending(event: &NewEvent, nd: NewDelivery, sequenced: Option<&Sequenced>) -> Delivery {
        let order = match (&event.subject, sequenced) {
            (Some(n), Some(s)) if nd.policy.ordered => {
                Some(Order { subject: n.subject.key.clone(), sequence: s.sequence })
            }
            _ => None,
        };
        let skipped = nd.policy.skip_regressions && sequenced.is_some_and(|s| s.regression);
        let mut d = Delivery {
            id: nd.id,
            event_id: event.id.clone(),
            endpoint: nd.endpoint,
            source: event.source.clone(),
            event_type: event.event_type.clone(),
            state: DeliveryState::Pending,
            attempts: 0,
            budget_start: 0,
            next_attempt_at: Some(event.received_at),
            last_error: None,
            created_at: event.received_at,
            updated_at: event.received_at,
            claim_token: 0,
            discard_reason: None,
            order,
        };
        if skipped {
            d.state = DeliveryState::Skipped;
            d.next_attempt_at = None;
        }
        d
    }

    /// Attempts made in the current budget.
    pub fn attempts_in_budget(&self) -> u32 {
        self.attempts - self.budget_start
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum AttemptResult {
    /// The endpoint answered with this status.
    Status { code: u16 },
    /// No usable answer: `timeout`, `connect`, `reset`, … and a short detail.
    Error { class: String, detail: String },
}

impl AttemptResult {
    /// What a delivery's `last_error` says after this result: nothing for a
    /// 2xx, else the status or the error.
    pub fn last_error(&self) -> Option<String> {
        match self {
            AttemptResult::Status { code } if (200..300).contains(code) => None,
            AttemptResult::Status { code } => Some(format!("HTTP {code}")),
            AttemptResult::Error { class, detail } => Some(format!("{class}: {detail}")),
        }
    }
}

/// The record of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1-based, across replays.
    pub number: u32,
    pub started_at: Millis,
    pub duration_ms: u64,
    pub result: AttemptResult,
    /// The start of the response body, truncated.
    pub response_excerpt: Option<String>,
}

/// A claimed delivery and the exact bytes to send.
#[derive(Debug, Clone)]
pub struct Claim {
    pub delivery: Delivery,
    pub event_json: Vec<u8>,
}

/// What to do with a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Delivered,
    RetryAt(Millis),
    Dead,
}

impl Next {
    /// "delivered", "retry" or "dead": the attempt's outcome as metrics
    /// label it and the Redis finish script reads it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Next::Delivered => "delivered",
            Next::RetryAt(_) => "retry",
            Next::Dead => "dead",
        }
    }
}

/// Selects deliveries for listing and bulk replay. Empty fields match all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeliveryFilter {
    pub state: Option<DeliveryState>,
    pub source: Option<String>,
    pub endpoint: Option<String>,
    pub event_type: Option<String>,
    /// Created at or after.
    pub since: Option<Millis>,
    /// Created before.
    pub until: Option<Millis>,
}

impl DeliveryFilter {
    pub fn matches(&self, d: &Delivery) -> bool {
        self.state.is_none_or(|s| s == d.state)
            && self.source.as_ref().is_none_or(|s| *s == d.source)
            && self.endpoint.as_ref().is_none_or(|e| *e == d.endpoint)
            && self.event_type.as_ref().is_none_or(|t| *t == d.event_type)
            && self.since.is_none_or(|t| d.created_at >= t)
            && self.until.is_none_or(|t| d.created_at < t)
    }
}

/// Most delivery records one [`Store::list`] call examines. A narrow filter
/// over a large store returns a short (even empty) page with a cursor rather
/// than scanning everything in one request.
pub const LIST_SCAN_LIMIT: usize = 5_000;

/// One page of deliveries, newest first. `next_cursor` continues below the
/// last delivery examined (ids never change, so it stays valid while
/// deliveries change state); `None` means nothing is left. A page may hold
/// fewer than `limit` items and still have a cursor, when the scan limit was
/// reached first.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<Delivery>,
    pub next_cursor: Option<String>,
}

/// What reconciling the store with the configured endpoints found, per
/// endpoint: deliveries orphaned now, and taken back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Endpoints not configured here, with how many of their deliveries are
    /// orphaned (newly or from before).
    pub orphaned: Vec<(String, u64)>,
    /// Configured endpoints whose orphaned deliveries went back to pending.
    pub adopted: Vec<(String, u64)>,
}

/// What a discard did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiscardCount {
    pub discarded: usize,
    /// Delivered or discarded already: left as they were.
    pub skipped: usize,
    /// Claimed by a worker right now: left to finish.
    pub in_flight: usize,
    pub not_found: usize,
}

/// Whether a delivery in `state` can be discarded: it is waiting for
/// something (its next attempt, or an endpoint) or has failed for good.
pub fn discardable(state: DeliveryState) -> bool {
    matches!(state, DeliveryState::Pending | DeliveryState::Dead | DeliveryState::Orphaned)
}

/// A stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub id: EventId,
    pub json: Vec<u8>,
}

/// The whole store: deliveries here, the quarantine's records in
/// [`quarantine::QuarantineStore`].
/// An endpoint's `max_in_flight` and `rate_limit`, for a store shared by
/// several relays to hold across them ([`Store::claim_due_within`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedLimits {
    /// Requests open at once over every relay; 0 for no shared limit.
    pub max_in_flight: usize,
    /// Requests a second and the burst, over every relay.
    pub rate: Option<(u32, u32)>,
}

/// A claim whose request is over, named by its token: on a store that shares
/// limits, the next claim gives its lease back before counting the slots
/// taken ([`Store::claim_due_within`]). A lease naming a claim since taken
/// over frees nothing of the new claim's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub delivery_id: DeliveryId,
    pub claim_token: u64,
}

#[async_trait]
pub trait Store: quarantine::QuarantineStore + Send + Sync + 'static {
    /// Admits `event` with its deliveries, atomically with its dedupe key,
    /// which lives for `dedupe_ttl_ms`. Durable when it returns `Ok`.
    async fn admit(
        &self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        dedupe_ttl_ms: u64,
    ) -> Result<Admission, StoreError>;

    async fn event(&self, id: &EventId) -> Result<Option<StoredEvent>, StoreError>;

    /// A subject's events in sequence order, each with its deliveries
    /// (`key` as `lifecycle::key` makes it). Empty for a subject the store
    /// holds no event of.
    async fn subject(&self, key: &str) -> Result<Vec<TimelineEntry>, StoreError>;

    /// The deliveries of one event.
    async fn event_deliveries(&self, event_id: &EventId) -> Result<Vec<Delivery>, StoreError>;

    /// One delivery with every attempt, oldest first.
    async fn delivery(&self, id: &DeliveryId) -> Result<Option<(Delivery, Vec<Attempt>)>, StoreError>;

    /// Claims up to `limit` deliveries to `endpoint` due at `now` (pending
    /// and due, or in flight with an expired claim), oldest due first,
    /// marking them in flight until `now + visibility_ms`. Claims are per
    /// endpoint so that each endpoint takes only what it has room for.
    async fn claim_due(
        &self,
        endpoint: &str,
        now: Millis,
        limit: usize,
        visibility_ms: u64,
    ) -> Result<Vec<Claim>, StoreError>;

    /// [`claim_due`](Store::claim_due) within `shared`: an endpoint's limits
    /// that hold across every relay sharing the store. `returned` are this
    /// relay's claims to `endpoint` whose request is over but whose attempt
    /// may not be recorded yet: their leases go back first, in the same
    /// step. A store only one process uses (the embedded one) leaves the
    /// limits to that process.
    async fn claim_due_within(
        &self,
        endpoint: &str,
        now: Millis,
        limit: usize,
        visibility_ms: u64,
        shared: SharedLimits,
        returned: &[Lease],
    ) -> Result<Vec<Claim>, StoreError> {
        let _ = (shared, returned);
        self.claim_due(endpoint, now, limit, visibility_ms).await
    }

    /// Whether [`claim_due_within`](Store::claim_due_within) holds shared
    /// limits, with a lease per claim that comes back with the next claim's
    /// `returned`, or when the attempt is recorded or the claim released.
    fn shares_limits(&self) -> bool {
        false
    }

    /// Records `attempt` and moves the claimed delivery on per `next`.
    /// Returns false, changing nothing, if the claim was lost (expired and
    /// taken by another claim, or replayed meanwhile).
    async fn finish(
        &self,
        delivery_id: &DeliveryId,
        claim_token: u64,
        attempt: Attempt,
        next: Next,
    ) -> Result<bool, StoreError>;

    /// Returns an unfinished claim to `pending`, due at `due`, without
    /// counting an attempt (shutdown). False if the claim was lost.
    async fn release(&self, delivery_id: &DeliveryId, claim_token: u64, due: Millis) -> Result<bool, StoreError>;

    async fn list(&self, filter: &DeliveryFilter, cursor: Option<&str>, limit: usize) -> Result<Page, StoreError>;

    /// Puts the given deliveries back to `pending`, due `now`, with a fresh
    /// attempt budget and their history kept. Dead and discarded ones
    /// always (a discard's reason goes); delivered ones only if
    /// `include_delivered`.
    async fn replay(&self, ids: &[DeliveryId], include_delivered: bool, now: Millis)
    -> Result<ReplayCount, StoreError>;

    /// Stores a new replay job.
    async fn create_replay_job(&self, job: &ReplayJob) -> Result<(), StoreError>;

    async fn replay_job(&self, id: &str) -> Result<Option<ReplayJob>, StoreError>;

    /// Jobs not yet finished (to resume after a restart).
    async fn unfinished_replay_jobs(&self) -> Result<Vec<ReplayJob>, StoreError>;

    /// One step of a replay job, atomically: replays those of `ids` still
    /// in the state the job selects (as [`replay`] does) and saves `job` (step `n`) with this step's count added, but only
    /// if the stored job is at step `n - 1` and unfinished. Returns the saved
    /// job, or `None`, changing nothing, if another runner got there first.
    ///
    /// [`replay`]: Store::replay
    async fn replay_step(
        &self,
        job: &ReplayJob,
        ids: &[DeliveryId],
        now: Millis,
    ) -> Result<Option<ReplayJob>, StoreError>;

    /// Removes dedupe keys that expired by `now`; returns how many.
    async fn sweep(&self, now: Millis) -> Result<usize, StoreError>;

    /// One step of the ordering gates' check (`lifecycle`): for up to
    /// `limit` gates after the cursor `after`, drops entries whose delivery
    /// is missing, unreadable or final, and puts an open head that is off
    /// the schedule back on it (after a damaged record, or a finish by a
    /// relay of an older version). Returns how many heads it put back and
    /// the cursor to go on from, `None` at the end.
    async fn heal_gates(&self, after: Option<String>, limit: usize) -> Result<(usize, Option<String>), StoreError>;

    /// When the oldest delivery still pending or in flight was created, for
    /// the "oldest pending" gauge; `None` if there is none.
    async fn oldest_open(&self) -> Result<Option<Millis>, StoreError>;

    /// For each endpoint with a delivery among the `scan` oldest still
    /// pending or in flight: when its oldest of those was created (the
    /// console's "oldest pending"). An endpoint whose open deliveries are
    /// all newer than the `scan`th is missing.
    async fn oldest_open_by_endpoint(&self, scan: usize) -> Result<Vec<(String, Millis)>, StoreError>;

    /// Counts of deliveries by state, for gauges.
    async fn counts(&self) -> Result<Counts, StoreError>;

    /// Brings deliveries in line with the endpoints this relay is
    /// configured with. With `orphan_others`, pending deliveries (and
    /// in-flight ones whose claim expired) to an endpoint the store has seen
    /// but `endpoints` lacks become `orphaned`; always, orphaned deliveries
    /// to an endpoint in `endpoints` go back to pending, due `now`. The
    /// store remembers `endpoints` as seen.
    ///
    /// A relay orphans only at start-up, and takes back at every
    /// housekeeping tick: relays sharing a store during a rolling change of
    /// endpoints hand deliveries back and forth, never drop them.
    async fn reconcile_endpoints(
        &self,
        endpoints: &[String],
        orphan_others: bool,
        now: Millis,
    ) -> Result<Reconciled, StoreError>;

    /// Every endpoint name the store has seen configured.
    async fn known_endpoints(&self) -> Result<Vec<String>, StoreError>;

    /// Ends the given deliveries as `discarded`, recording `reason`, if
    /// they are [`discardable`] (an in-flight one whose claim expired by
    /// `now` counts as pending) and, with `only`, in that state now: a bulk
    /// discard acts only on what is still as it was listed. A live claim is
    /// left to finish (`in_flight`); others are skipped. Their history stays.
    async fn discard(
        &self,
        ids: &[DeliveryId],
        reason: &str,
        only: Option<DeliveryState>,
        now: Millis,
    ) -> Result<DiscardCount, StoreError>;

    /// One bounded step of retention ([`retention`]): looks at up to
    /// `limit` queue entries due by `cutoffs` and removes the events among
    /// them that are settled and old enough, with their deliveries and
    /// attempts, and finished replay jobs older than theirs. Atomic: a
    /// crash never leaves an event half removed. `now` decides which dedupe
    /// keys are still live (they outlive their event).
    async fn purge(&self, cutoffs: Cutoffs, now: Millis, limit: usize) -> Result<Purged, StoreError>;

    /// What the store holds, for `GET /admin/store` and the size gauge.
    async fn stats(&self) -> Result<StoreStats, StoreError>;

    /// A consistent copy of the whole store, for a backup: an open file
    /// (already unlinked, so it goes when closed) and its length. `None`
    /// for a store backed up by other means (Redis's own persistence).
    async fn snapshot(&self) -> Result<Option<(std::fs::File, u64)>, StoreError> {
        Ok(None)
    }

    /// Whether the store is reachable and writable right now.
    async fn ping(&self) -> Result<(), StoreError>;

    /// How far the store's clock is ahead of this process's, in
    /// milliseconds, for a store that several relays share: they compare
    /// claim deadlines and due times across their clocks. `None` for a store
    /// that only this process uses.
    async fn clock_offset_ms(&self) -> Result<Option<i64>, StoreError> {
        Ok(None)
    }
}
