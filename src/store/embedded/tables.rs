//! The embedded store's tables, and every change to them, applied inside
//! the writer's transaction.
//!
//! [`Tables::put_delivery`] is the one place a delivery record is written:
//! it keeps the schedule (`due`), the open and per-state indexes and the
//! state counts in step with the record it replaces.

use redb::{Database, Durability, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::super::{
    Admission, Attempt, Claim, Delivery, DeliveryState, DiscardCount, Millis, NewDelivery, NewEvent, Next, Reconciled,
    ReplayCount, ReplayJob, StoreError,
};
use super::codec::{IndexRecord, corrupt, decode_delivery, encode, unavailable};
use super::writer::{ClaimTable, InFlight};

/// Most expired dedupe keys one sweep removes.
pub(super) const SWEEP_CHUNK: usize = 10_000;

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
            Ok(Some(d)) => Ok(Named::Found(d)),
            Ok(None) => Ok(Named::Missing),
            Err(e @ StoreError::Corrupt { .. }) => {
                tracing::error!(delivery_id = %id, error = %e, "unreadable delivery record {then}");
                Ok(Named::Unreadable)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes `d` and keeps the due index and state counts in step with the
    /// record it replaces (`old`).
    pub(super) fn put_delivery(&mut self, old: Option<&Delivery>, d: &Delivery) -> Result<(), StoreError> {
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
        if let Some(at) = d.next_attempt_at.filter(|_| is_scheduled(d.state)) {
            self.due.insert((d.endpoint.as_str(), at, d.id.as_str()), ()).map_err(unavailable)?;
        }
        self.deliveries.insert(d.id.as_str(), encode(d).as_slice()).map_err(unavailable)?;
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

    pub(super) fn admit(
        &mut self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        ttl_ms: u64,
    ) -> Result<Admission, StoreError> {
        let now = event.received_at;
        let previous = self.get_index(&event.id)?;
        let mut delivery_ids = Vec::new();
        if let Some(prev) = previous {
            if prev.dedupe_expires > now {
                return Ok(Admission::Duplicate);
            }
            // Its dedupe key expired (swept or not): the callback is new
            // again. Same id, so the old deliveries stay linked to it.
            if prev.dedupe_expires != 0 {
                self.dedupe_expiry.remove((prev.dedupe_expires, event.id.as_str())).map_err(unavailable)?;
            }
            delivery_ids = prev.delivery_ids;
            // The new body (a new received_at) replaces the old one.
            self.bodies.remove(prev.body_seq).map_err(unavailable)?;
        }
        let expires = now.saturating_add(ttl_ms).max(1);
        self.dedupe_expiry.insert((expires, event.id.as_str()), ()).map_err(unavailable)?;
        for nd in deliveries {
            let d = Delivery::pending(&event, nd);
            self.put_delivery(None, &d)?;
            delivery_ids.push(d.id);
        }
        self.body_seq += 1;
        self.bodies.insert(self.body_seq, event.json.as_slice()).map_err(unavailable)?;
        let record = IndexRecord { dedupe_expires: expires, body_seq: self.body_seq, delivery_ids };
        self.index.insert(event.id.as_str(), record.encode().as_slice()).map_err(unavailable)?;
        Ok(Admission::Accepted)
    }

    pub(super) fn claim(
        &mut self,
        claims: &mut ClaimTable,
        endpoint: &str,
        now: Millis,
        limit: usize,
        visibility_ms: u64,
    ) -> Result<Vec<Claim>, StoreError> {
        let mut ids = Vec::new();
        for entry in self.due.range((endpoint, 0u64, "")..=(endpoint, now, "\u{10ffff}")).map_err(unavailable)? {
            if ids.len() == limit {
                break;
            }
            let (k, _) = entry.map_err(unavailable)?;
            let (_, at, id) = k.value();
            // Claimed and not past its visibility timeout: someone has it.
            if claims.live.get(id).is_some_and(|c| c.until > now) {
                continue;
            }
            ids.push((at, id.to_owned()));
        }
        let mut out = Vec::with_capacity(ids.len());
        for (at, id) in ids {
            let old = match self.get_delivery(&id) {
                Ok(Some(d)) => d,
                // Missing or unreadable: take it off the schedule (and out of
                // the open index and the pending count) so claims do not spin
                // on it and gauges do not age it; an unreadable record stays
                // for inspection.
                gone @ (Ok(None) | Err(StoreError::Corrupt { .. })) => {
                    if let Err(e) = gone {
                        tracing::error!(delivery_id = %id, error = %e, "unreadable delivery record removed from the schedule");
                    }
                    self.due.remove((endpoint, at, id.as_str())).map_err(unavailable)?;
                    if self.open.remove(id.as_str()).map_err(unavailable)?.is_some() {
                        self.bump(DeliveryState::Pending, -1);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !is_scheduled(old.state) {
                // A stale schedule entry; the record says it is settled.
                self.due.remove((endpoint, at, id.as_str())).map_err(unavailable)?;
                continue;
            }
            let event_json = match self.get_index(&old.event_id) {
                Ok(Some(event)) => self.get_body(&old.event_id, event.body_seq),
                Ok(None) => Err(corrupt(&old.event_id, "event record missing")),
                Err(e) => Err(e),
            };
            let event_json = match event_json {
                Ok(json) => json,
                Err(e @ StoreError::Corrupt { .. }) => {
                    // Nothing can be delivered: dead, with the reason, so an
                    // operator sees it instead of a silent loop.
                    tracing::error!(delivery_id = %id, error = %e, "delivery's event is unreadable; marking it dead");
                    let mut d = old.clone();
                    d.state = DeliveryState::Dead;
                    d.next_attempt_at = None;
                    d.last_error = Some(e.to_string());
                    d.updated_at = now;
                    self.put_delivery(Some(&old), &d)?;
                    claims.live.remove(&id);
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Pending and due, or a claim past its deadline: the visibility
            // timeout hands it to this claim, with a new token.
            claims.last_token += 1;
            let c = InFlight { token: claims.last_token, until: now.saturating_add(visibility_ms) };
            claims.live.insert(id.clone(), c);
            let mut d = old;
            claims.overlay(&mut d);
            out.push(Claim { delivery: d, event_json });
        }
        Ok(out)
    }

    pub(super) fn finish(
        &mut self,
        claims: &mut ClaimTable,
        id: &str,
        token: u64,
        attempt: Attempt,
        next: Next,
    ) -> Result<bool, StoreError> {
        if !claims.holds(id, token) {
            return Ok(false);
        }
        let Some(old) = self.get_delivery(id)? else {
            claims.live.remove(id);
            return Ok(false);
        };
        let mut d = old.clone();
        d.attempts += 1;
        d.updated_at = attempt.started_at.saturating_add(attempt.duration_ms);
        d.last_error = attempt.result.last_error();
        let mut attempt = attempt;
        attempt.number = d.attempts;
        self.attempts.insert((id, d.attempts), encode(&attempt).as_slice()).map_err(unavailable)?;
        (d.state, d.next_attempt_at) = match next {
            Next::Delivered => (DeliveryState::Delivered, None),
            Next::RetryAt(at) => (DeliveryState::Pending, Some(at)),
            Next::Dead => (DeliveryState::Dead, None),
        };
        self.put_delivery(Some(&old), &d)?;
        claims.live.remove(id);
        Ok(true)
    }

    /// Gives a claim back unattempted, due again at `due`.
    pub(super) fn release(
        &mut self,
        claims: &mut ClaimTable,
        id: &str,
        token: u64,
        due: Millis,
    ) -> Result<bool, StoreError> {
        if !claims.holds(id, token) {
            return Ok(false);
        }
        claims.live.remove(id);
        if let Some(old) = self.get_delivery(id)?.filter(|d| d.next_attempt_at != Some(due)) {
            let mut d = old.clone();
            d.next_attempt_at = Some(due);
            self.put_delivery(Some(&old), &d)?;
        }
        Ok(true)
    }

    pub(super) fn replay(
        &mut self,
        claims: &ClaimTable,
        ids: &[String],
        include_delivered: bool,
        now: Millis,
    ) -> Result<ReplayCount, StoreError> {
        let mut count = ReplayCount::default();
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            // The same id twice in one request is replayed once.
            if !seen.insert(id.as_str()) {
                continue;
            }
            let old = match self.named(id, "not replayed")? {
                Named::Found(d) => d,
                Named::Missing => {
                    count.not_found += 1;
                    continue;
                }
                Named::Unreadable => {
                    count.skipped += 1;
                    continue;
                }
            };
            if claims.live.contains_key(id) {
                count.skipped += 1;
                continue;
            }
            let eligible =
                old.state == DeliveryState::Dead || (include_delivered && old.state == DeliveryState::Delivered);
            if !eligible {
                count.skipped += 1;
                continue;
            }
            let mut d = old.clone();
            d.state = DeliveryState::Pending;
            d.budget_start = d.attempts;
            d.next_attempt_at = Some(now);
            d.updated_at = now;
            self.put_delivery(Some(&old), &d)?;
            count.replayed += 1;
        }
        Ok(count)
    }

    pub(super) fn create_job(&mut self, job: &ReplayJob) -> Result<(), StoreError> {
        self.replay_jobs.insert(job.id.as_str(), encode(job).as_slice()).map_err(unavailable)?;
        Ok(())
    }

    pub(super) fn replay_step(
        &mut self,
        claims: &ClaimTable,
        mut job: ReplayJob,
        ids: &[String],
        now: Millis,
    ) -> Result<Option<ReplayJob>, StoreError> {
        let stored: ReplayJob = match self.replay_jobs.get(job.id.as_str()).map_err(unavailable)? {
            Some(v) => serde_json::from_slice(v.value()).map_err(|e| corrupt(&job.id, e))?,
            None => return Ok(None),
        };
        if stored.finished || stored.steps + 1 != job.steps {
            return Ok(None);
        }
        job.add(self.replay(claims, ids, job.include_delivered, now)?);
        self.replay_jobs.insert(job.id.as_str(), encode(&job).as_slice()).map_err(unavailable)?;
        Ok(Some(job))
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

    /// The distinct endpoints of the schedule (pending deliveries), found by
    /// jumping from one endpoint's entries to the next.
    pub(super) fn scheduled_endpoints(&self) -> Result<Vec<String>, StoreError> {
        let mut out: Vec<String> = Vec::new();
        loop {
            let from = match out.last() {
                Some(last) => format!("{last}\0"),
                None => String::new(),
            };
            let next = self.due.range((from.as_str(), 0u64, "")..).map_err(unavailable)?.next();
            match next {
                Some(entry) => out.push(entry.map_err(unavailable)?.0.value().0.to_owned()),
                None => return Ok(out),
            }
        }
    }

    pub(super) fn reconcile(
        &mut self,
        claims: &ClaimTable,
        endpoints: &[String],
        orphan_others: bool,
        now: Millis,
    ) -> Result<Reconciled, StoreError> {
        let mut out = Reconciled::default();
        for e in endpoints {
            self.endpoints.insert(e.as_str(), ()).map_err(unavailable)?;
        }
        if orphan_others {
            let known: Vec<String> = self
                .endpoints
                .iter()
                .map_err(unavailable)?
                .map(|e| e.map(|(k, _)| k.value().to_owned()).map_err(unavailable))
                .collect::<Result<_, _>>()?;
            for endpoint in known.iter().filter(|e| !endpoints.contains(e)) {
                let scheduled: Vec<String> = self
                    .due
                    .range((endpoint.as_str(), 0u64, "")..=(endpoint.as_str(), u64::MAX, "\u{10ffff}"))
                    .map_err(unavailable)?
                    .map(|e| e.map(|(k, _)| k.value().2.to_owned()).map_err(unavailable))
                    .collect::<Result<_, _>>()?;
                for id in scheduled {
                    // Claimed here: its attempt ends first (only a running
                    // relay holds claims, and it orphans only at start).
                    if claims.live.contains_key(&id) {
                        continue;
                    }
                    let old = match self.named(&id, "left as it is")? {
                        Named::Found(d) if is_scheduled(d.state) => d,
                        _ => continue,
                    };
                    // It keeps the time it was due: taken back, it waits out
                    // the rest of its backoff.
                    let mut d = old.clone();
                    d.state = DeliveryState::Orphaned;
                    d.updated_at = now;
                    self.put_delivery(Some(&old), &d)?;
                }
                let n = self.orphaned_ids(endpoint)?.len() as u64;
                if n > 0 {
                    out.orphaned.push((endpoint.clone(), n));
                }
            }
        }
        for endpoint in endpoints {
            let mut adopted = 0;
            for id in self.orphaned_ids(endpoint)? {
                let old = match self.named(&id, "left as it is")? {
                    Named::Found(d) if d.state == DeliveryState::Orphaned => d,
                    Named::Unreadable => continue,
                    Named::Found(_) | Named::Missing => {
                        // A stale index entry: the record says otherwise.
                        self.orphaned.remove((endpoint.as_str(), id.as_str())).map_err(unavailable)?;
                        continue;
                    }
                };
                let mut d = old.clone();
                d.state = DeliveryState::Pending;
                d.next_attempt_at = Some(old.next_attempt_at.map_or(now, |due| due.max(now)));
                d.updated_at = now;
                self.put_delivery(Some(&old), &d)?;
                adopted += 1;
            }
            if adopted > 0 {
                out.adopted.push((endpoint.clone(), adopted));
            }
        }
        Ok(out)
    }

    pub(super) fn orphaned_ids(&self, endpoint: &str) -> Result<Vec<String>, StoreError> {
        self.orphaned
            .range((endpoint, "")..=(endpoint, "\u{10ffff}"))
            .map_err(unavailable)?
            .map(|e| e.map(|(k, _)| k.value().1.to_owned()).map_err(unavailable))
            .collect()
    }

    pub(super) fn discard(&mut self, ids: &[String], reason: &str, now: Millis) -> Result<DiscardCount, StoreError> {
        let mut count = DiscardCount::default();
        let mut seen = std::collections::HashSet::new();
        for id in ids.iter().filter(|id| seen.insert(id.as_str())) {
            let old = match self.named(id, "not discarded")? {
                Named::Found(d) => d,
                Named::Missing => {
                    count.not_found += 1;
                    continue;
                }
                Named::Unreadable => {
                    count.skipped += 1;
                    continue;
                }
            };
            if old.state != DeliveryState::Orphaned {
                count.skipped += 1;
                continue;
            }
            let mut d = old.clone();
            d.state = DeliveryState::Dead;
            d.next_attempt_at = None;
            d.last_error = Some(reason.to_owned());
            d.updated_at = now;
            self.put_delivery(Some(&old), &d)?;
            count.discarded += 1;
        }
        Ok(count)
    }

    pub(super) fn sweep(&mut self, now: Millis) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        for entry in self.dedupe_expiry.range((0u64, "")..(now, "")).map_err(unavailable)?.take(SWEEP_CHUNK) {
            let (k, _) = entry.map_err(unavailable)?;
            let (at, id) = k.value();
            expired.push((at, id.to_owned()));
        }
        for (at, id) in &expired {
            self.dedupe_expiry.remove((*at, id.as_str())).map_err(unavailable)?;
            // The event stays (for inspection and replay); only its dedupe
            // key is cleared.
            match self.get_index(id) {
                Ok(Some(mut record)) if record.dedupe_expires == *at => {
                    record.dedupe_expires = 0;
                    self.index.insert(id.as_str(), record.encode().as_slice()).map_err(unavailable)?;
                }
                Ok(_) => {}
                Err(e @ StoreError::Corrupt { .. }) => {
                    tracing::error!(event_id = %id, error = %e, "unreadable event index record left as it is");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(expired.len())
    }
}

/// A delivery an operation names: its record, or why there is none to use.
enum Named {
    Found(Delivery),
    Missing,
    Unreadable,
}

/// Whether deliveries in `state` are listed in `by_state`.
pub(super) fn in_by_state(state: DeliveryState) -> bool {
    matches!(state, DeliveryState::Dead | DeliveryState::Orphaned)
}

/// Whether a delivery in `state` sits in the due index.
pub(super) fn is_scheduled(state: DeliveryState) -> bool {
    matches!(state, DeliveryState::Pending | DeliveryState::InFlight)
}
