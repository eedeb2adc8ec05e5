//! The embedded store's tables, and every change to them, applied inside
//! the writer's transaction.
//!
//! [`Tables::put_delivery`] is the one place a delivery record is written:
//! it keeps the schedule (`due`), the open and per-state indexes and the
//! state counts in step with the record it replaces.
//!
//! This file holds the table definitions, their creation (with the indexes
//! built once over files from older versions) and the record helpers every
//! change uses. The changes themselves live beside it, by what they act on:
//! `admission.rs` (admit, sweep), `claims.rs` (claim, finish, release),
//! `replay.rs` (replay, replay job steps and discard), `endpoints.rs`
//! (orphaning, adoption) and `retention.rs` (removing settled events). They are child modules so that the tables stay
//! private to this module: the rest of the store changes them only through
//! these operations.

mod admission;
mod claims;
mod endpoints;
mod lifecycle;
mod quarantine;
mod replay;

pub(super) use quarantine::{QuarantineChange, decode_meta};
mod retention;

use redb::{Database, Durability, ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::http::Chain;

use super::super::{Delivery, DeliveryId, DeliveryState, StoreError};
use super::codec::{IndexRecord, corrupt, decode_delivery, encode, unavailable};

pub(super) const EVENT_INDEX: TableDefinition<&str, &[u8]> = TableDefinition::new("event_index");
pub(super) const EVENT_BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("event_bodies");
pub(super) const DEDUPE_EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("dedupe_expiry");
pub(super) const DELIVERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("deliveries");
pub(super) const ATTEMPTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("attempts");
pub(super) const DUE: TableDefinition<(&str, u64, &str), ()> = TableDefinition::new("due");
pub(super) const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("counts");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const REPLAY_JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("replay_jobs");
/// Ids of deliveries pending or in flight; ids sort by creation time, so the
/// first is the oldest open delivery.
pub(super) const OPEN: TableDefinition<&str, ()> = TableDefinition::new("open");
/// (state, id) of every dead or orphaned delivery: what an operator lists
/// and acts on, without scanning every delivery ever made.
pub(super) const BY_STATE: TableDefinition<(&str, &str), ()> = TableDefinition::new("by_state");
/// (endpoint, id) of every orphaned delivery, to take them back by endpoint.
pub(super) const ORPHANED: TableDefinition<(&str, &str), ()> = TableDefinition::new("orphaned");
/// Every endpoint name this file has seen configured.
pub(super) const ENDPOINTS: TableDefinition<&str, ()> = TableDefinition::new("endpoints");
/// The retention queue: (class, when, event id) of events that may have
/// settled then (`store::retention`).
pub(super) const SETTLED: TableDefinition<(u8, u64, &str), ()> = TableDefinition::new("settled");
/// Subject key → its record: numbering, and the gates of `ordering =
/// "subject"` (`tables::lifecycle`).
pub(super) const SUBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("subjects");
/// (subject key, sequence) → event id: a subject's timeline.
pub(super) const TIMELINE: TableDefinition<(&str, u64), &str> = TableDefinition::new("timeline");

/// Quarantine id → its description (`Quarantined`, JSON), and → its body.
/// `meta["quarantine_bytes"]` is the sum of the kept items' sizes.
pub(super) const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");
pub(super) const QUARANTINE_BODIES: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine_bodies");
/// A kept callback's digest → its id, to keep a provider's retries once.
pub(super) const QUARANTINE_DIGESTS: TableDefinition<&str, &str> = TableDefinition::new("quarantine_digests");

/// Scratch space for readiness probes: see [`EmbeddedStore::ping`].
pub(super) const PROBE: TableDefinition<&str, &[u8]> = TableDefinition::new("probe");
/// The smallest readiness probe written after a failed write.
pub(super) const MIN_PROBE_BYTES: u64 = 64 * 1024;

/// Creates every table up front so readers never meet a missing one.
pub(super) fn init_tables(db: Database) -> Result<Database, StoreError> {
    let mut txn = db.begin_write().map_err(unavailable)?;
    txn.set_durability(Durability::Immediate).map_err(unavailable)?;
    let mut t = Tables::open(&txn)?;
    // Files written before the open-delivery index existed: build it once
    // from the schedule, which lists every pending delivery.
    if t.meta.get("open_index").map_err(unavailable)?.is_none() {
        let ids: Vec<String> = t
            .due
            .iter()
            .map_err(unavailable)?
            .map(|e| e.map(|(k, _)| k.value().2.to_owned()).map_err(unavailable))
            .collect::<Result<_, _>>()?;
        for id in &ids {
            t.open.insert(id.as_str(), ()).map_err(unavailable)?;
        }
        t.meta.insert("open_index", 1).map_err(unavailable)?;
    }
    // Files written before the state index and the endpoint list: index
    // every dead delivery, and remember the endpoints of the schedule (the
    // only deliveries an endpoint's removal leaves stranded).
    if t.meta.get("state_index").map_err(unavailable)?.is_none() {
        let mut dead = Vec::new();
        for entry in t.deliveries.iter().map_err(unavailable)? {
            let (k, v) = entry.map_err(unavailable)?;
            if decode_delivery(k.value(), v.value()).is_ok_and(|d| d.state == DeliveryState::Dead) {
                dead.push(k.value().to_owned());
            }
        }
        for id in &dead {
            t.by_state.insert((DeliveryState::Dead.as_str(), id.as_str()), ()).map_err(unavailable)?;
        }
        for endpoint in t.scheduled_endpoints()? {
            t.endpoints.insert(endpoint.as_str(), ()).map_err(unavailable)?;
        }
        t.meta.insert("state_index", 1).map_err(unavailable)?;
    }
    t.build_retention_queue()?;
    drop(t);
    txn.commit().map_err(unavailable)?;
    Ok(db)
}

/// Every table, opened once per write transaction.
pub(super) struct Tables<'txn> {
    index: Table<'txn, &'static str, &'static [u8]>,
    bodies: Table<'txn, u64, &'static [u8]>,
    /// The last body sequence number used.
    body_seq: u64,
    dedupe_expiry: Table<'txn, (u64, &'static str), ()>,
    deliveries: Table<'txn, &'static str, &'static [u8]>,
    attempts: Table<'txn, (&'static str, u32), &'static [u8]>,
    due: Table<'txn, (&'static str, u64, &'static str), ()>,
    counts: Table<'txn, &'static str, u64>,
    meta: Table<'txn, &'static str, u64>,
    replay_jobs: Table<'txn, &'static str, &'static [u8]>,
    open: Table<'txn, &'static str, ()>,
    probe: Table<'txn, &'static str, &'static [u8]>,
    by_state: Table<'txn, (&'static str, &'static str), ()>,
    orphaned: Table<'txn, (&'static str, &'static str), ()>,
    endpoints: Table<'txn, &'static str, ()>,
    settled: Table<'txn, (u8, u64, &'static str), ()>,
    subjects: Table<'txn, &'static str, &'static [u8]>,
    timeline: Table<'txn, (&'static str, u64), &'static str>,
    quarantine: Table<'txn, &'static str, &'static [u8]>,
    quarantine_bodies: Table<'txn, &'static str, &'static [u8]>,
    quarantine_digests: Table<'txn, &'static str, &'static str>,
    /// State-count changes of this batch, written once before commit.
    count_deltas: [i64; DeliveryState::ALL.len()],
}

impl<'txn> Tables<'txn> {
    pub(super) fn open(txn: &'txn WriteTransaction) -> Result<Tables<'txn>, StoreError> {
        Ok(Tables {
            index: txn.open_table(EVENT_INDEX).map_err(unavailable)?,
            bodies: txn.open_table(EVENT_BODIES).map_err(unavailable)?,
            body_seq: 0,
            dedupe_expiry: txn.open_table(DEDUPE_EXPIRY).map_err(unavailable)?,
            deliveries: txn.open_table(DELIVERIES).map_err(unavailable)?,
            attempts: txn.open_table(ATTEMPTS).map_err(unavailable)?,
            due: txn.open_table(DUE).map_err(unavailable)?,
            counts: txn.open_table(COUNTS).map_err(unavailable)?,
            meta: txn.open_table(META).map_err(unavailable)?,
            replay_jobs: txn.open_table(REPLAY_JOBS).map_err(unavailable)?,
            open: txn.open_table(OPEN).map_err(unavailable)?,
            probe: txn.open_table(PROBE).map_err(unavailable)?,
            by_state: txn.open_table(BY_STATE).map_err(unavailable)?,
            orphaned: txn.open_table(ORPHANED).map_err(unavailable)?,
            endpoints: txn.open_table(ENDPOINTS).map_err(unavailable)?,
            settled: txn.open_table(SETTLED).map_err(unavailable)?,
            subjects: txn.open_table(SUBJECTS).map_err(unavailable)?,
            timeline: txn.open_table(TIMELINE).map_err(unavailable)?,
            quarantine: txn.open_table(QUARANTINE).map_err(unavailable)?,
            quarantine_bodies: txn.open_table(QUARANTINE_BODIES).map_err(unavailable)?,
            quarantine_digests: txn.open_table(QUARANTINE_DIGESTS).map_err(unavailable)?,
            count_deltas: [0; DeliveryState::ALL.len()],
        })
        .and_then(|mut t| {
            t.body_seq = t.bodies.last().map_err(unavailable)?.map(|(k, _)| k.value()).unwrap_or(0);
            Ok(t)
        })
    }

    pub(super) fn bump(&mut self, state: DeliveryState, delta: i64) {
        self.count_deltas[state.index()] += delta;
    }

    /// Writes the batch's state-count changes.
    pub(super) fn flush_counts(&mut self) -> Result<(), StoreError> {
        for state in DeliveryState::ALL {
            let delta = std::mem::take(&mut self.count_deltas[state.index()]);
            if delta != 0 {
                let key = state.as_str();
                let cur = self.counts.get(key).map_err(unavailable)?.map(|g| g.value()).unwrap_or(0);
                self.counts.insert(key, cur.saturating_add_signed(delta)).map_err(unavailable)?;
            }
        }
        Ok(())
    }

    pub(super) fn get_delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        match self.deliveries.get(id).map_err(unavailable)? {
            Some(g) => decode_delivery(id, g.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Reads a delivery that an operation names. An unreadable record is
    /// logged, saying what becomes of it (`then`), and left as it is: only
    /// a storage error fails the operation.
    fn named(&self, id: &str, then: &str) -> Result<Named, StoreError> {
        match self.get_delivery(id) {
            Ok(Some(d)) => Ok(Named::Found(Box::new(d))),
            Ok(None) => Ok(Named::Missing),
            Err(e @ StoreError::Corrupt { .. }) => {
                tracing::error!(delivery_id = %id, error = %Chain(&e), "unreadable delivery record {then}");
                Ok(Named::Unreadable)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads the deliveries an operator's request names, each id once (the
    /// same id twice in one request counts once), through [`Tables::named`].
    fn named_once(&self, ids: &[DeliveryId], then: &str) -> Result<NamedOnce, StoreError> {
        let mut out = NamedOnce { found: Vec::new(), missing: 0, unreadable: 0 };
        let mut seen = std::collections::HashSet::new();
        for id in ids.iter().filter(|id| seen.insert(id.as_str())) {
            match self.named(id.as_str(), then)? {
                Named::Found(d) => out.found.push(*d),
                Named::Missing => out.missing += 1,
                Named::Unreadable => out.unreadable += 1,
            }
        }
        Ok(out)
    }

    /// Writes `d` and keeps the due index, its gate (if ordered) and state
    /// counts in step with the record it replaces (`old`).
    pub(super) fn put_delivery(&mut self, old: Option<&Delivery>, d: &Delivery) -> Result<(), StoreError> {
        let gate = self.gate(d)?;
        match (old.is_some_and(|o| is_scheduled(o.state)), is_scheduled(d.state)) {
            (false, true) => drop(self.open.insert(d.id.as_str(), ()).map_err(unavailable)?),
            (true, false) => drop(self.open.remove(d.id.as_str()).map_err(unavailable)?),
            _ => {}
        }
        if old.map(|o| o.state) != Some(d.state) {
            if let Some(o) = old.filter(|o| in_by_state(o.state)) {
                self.by_state.remove((o.state.as_str(), o.id.as_str())).map_err(unavailable)?;
            }
            if in_by_state(d.state) {
                self.by_state.insert((d.state.as_str(), d.id.as_str()), ()).map_err(unavailable)?;
            }
            if let Some(o) = old.filter(|o| o.state == DeliveryState::Orphaned) {
                self.orphaned.remove((o.endpoint.as_str(), o.id.as_str())).map_err(unavailable)?;
            }
            if d.state == DeliveryState::Orphaned {
                self.orphaned.insert((d.endpoint.as_str(), d.id.as_str()), ()).map_err(unavailable)?;
            }
        }
        if let Some(old) = old {
            if let Some(at) = old.next_attempt_at.filter(|_| is_scheduled(old.state)) {
                self.due.remove((old.endpoint.as_str(), at, old.id.as_str())).map_err(unavailable)?;
            }
            if old.state != d.state {
                self.bump(old.state, -1);
                self.bump(d.state, 1);
            }
        } else {
            self.bump(d.state, 1);
        }
        if let Some(at) = d.next_attempt_at.filter(|_| is_scheduled(d.state) && gate.schedulable) {
            self.due.insert((d.endpoint.as_str(), at, d.id.as_str()), ()).map_err(unavailable)?;
        }
        self.deliveries.insert(d.id.as_str(), encode(d).as_slice()).map_err(unavailable)?;
        if let Some(next) = gate.next {
            self.schedule_head(&next)?;
        }
        if old.map(|o| o.state) != Some(d.state)
            && let Some(class) = crate::store::retention::Class::of(d.state)
        {
            self.note_settled(class, d.updated_at, d.event_id.as_str())?;
        }
        Ok(())
    }

    pub(super) fn get_index(&self, id: &str) -> Result<Option<IndexRecord>, StoreError> {
        match self.index.get(id).map_err(unavailable)? {
            Some(g) => IndexRecord::decode(id, g.value()).map(Some),
            None => Ok(None),
        }
    }

    pub(super) fn get_body(&self, event_id: &str, seq: u64) -> Result<Vec<u8>, StoreError> {
        match self.bodies.get(seq).map_err(unavailable)? {
            Some(g) => Ok(g.value().to_vec()),
            None => Err(corrupt(event_id, "event body missing")),
        }
    }

    /// A heartbeat; while writes are failing, also `probe` bytes of fresh
    /// data, so that the commit needs the room a failed admission needed.
    /// The probe is removed by the first ping after writes recover.
    pub(super) fn ping(&mut self, probe: u64) -> Result<(), StoreError> {
        self.meta.insert("heartbeat", crate::store::now_millis()).map_err(unavailable)?;
        if probe == 0 {
            self.probe.remove("probe").map_err(unavailable)?;
        } else {
            let fill: Vec<u8> = (0..probe).map(|i| (i as u8) ^ (crate::store::now_millis() as u8)).collect();
            self.probe.insert("probe", fill.as_slice()).map_err(unavailable)?;
        }
        Ok(())
    }
}

/// A delivery an operation names: its record, or why there is none to use.
enum Named {
    Found(Box<Delivery>),
    Missing,
    Unreadable,
}

/// The deliveries a request names: those found, and how many of its ids
/// named none or an unreadable record.
struct NamedOnce {
    found: Vec<Delivery>,
    missing: usize,
    unreadable: usize,
}

/// Whether deliveries in `state` are listed in `by_state`.
pub(super) fn in_by_state(state: DeliveryState) -> bool {
    matches!(state, DeliveryState::Dead | DeliveryState::Discarded | DeliveryState::Skipped | DeliveryState::Orphaned)
}

/// Whether a delivery in `state` sits in the due index.
pub(super) fn is_scheduled(state: DeliveryState) -> bool {
    matches!(state, DeliveryState::Pending | DeliveryState::InFlight)
}
