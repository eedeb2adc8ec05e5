//! Retention in the embedded store (see `store::retention`): the queue of
//! events that may have settled, and removing those old enough.
//!
//! Removing frees pages that redb reuses for later writes, so under steady
//! load with retention the file stops growing (BENCHMARKS.md).

use redb::ReadableTable;

use crate::http::Chain;
use crate::store::retention::{Class, Cutoffs, Purged};
use crate::store::{Delivery, Millis, StoreError};

use super::super::codec::{IndexRecord, decode_delivery, unavailable};
use super::{Named, Tables, in_by_state};

/// Queue entries a step looks at before it gives way to waiting writes.
const MIN_PER_STEP: usize = 4;

fn class_byte(class: Class) -> u8 {
    match class {
        Class::Delivered => 0,
        Class::Dead => 1,
    }
}

/// An event as retention finds it.
enum Found {
    /// Removed already, or never stored.
    Gone,
    /// Some delivery is not final, or could not be read.
    Open,
    Settled {
        class: Class,
        last: Millis,
        record: IndexRecord,
        deliveries: Vec<Delivery>,
        /// Its subject's key and its sequence, if numbered.
        numbered: Option<(String, u64)>,
    },
}

impl Tables<'_> {
    /// Notes that the event may have settled at `at` in `class`.
    pub(super) fn note_settled(&mut self, class: Class, at: Millis, event_id: &str) -> Result<(), StoreError> {
        self.settled.insert((class_byte(class), at, event_id), ()).map_err(unavailable)?;
        Ok(())
    }

    /// One bounded step: at most `limit` queue entries due by `cutoffs`,
    /// oldest first per class, and finished replay jobs. It stops early,
    /// with what it has done, once `busy` says other operations wait: an
    /// admission then waits for one event's removal, not a whole step.
    pub(in crate::store::embedded) fn purge(
        &mut self,
        cutoffs: Cutoffs,
        now: Millis,
        limit: usize,
        busy: &dyn Fn() -> bool,
    ) -> Result<Purged, StoreError> {
        let mut out = Purged { gives_way: true, ..Purged::default() };
        for class in Class::ALL {
            let room = limit.saturating_sub(out.examined);
            let byte = class_byte(class);
            let due: Vec<(Millis, String)> = self
                .settled
                .range((byte, 0, "")..(byte, cutoffs.of(class), ""))
                .map_err(unavailable)?
                .take(room)
                .map(|e| e.map(|(k, _)| (k.value().1, k.value().2.to_owned())).map_err(unavailable))
                .collect::<Result<_, _>>()?;
            for (at, id) in due {
                // A few at least, so that removal makes progress under any load.
                if out.examined >= MIN_PER_STEP && busy() {
                    out.interrupted = true;
                    return Ok(out);
                }
                self.settled.remove((byte, at, id.as_str())).map_err(unavailable)?;
                out.examined += 1;
                match self.settled_state(&id)? {
                    Found::Gone | Found::Open => {}
                    Found::Settled { class, last, record, deliveries, numbered } if last < cutoffs.of(class) => {
                        out.add(self.remove_event(&id, record, &deliveries, now)?);
                        if let Some((key, sequence)) = numbered {
                            self.forget_numbered(&key, sequence)?;
                        }
                    }
                    // Finished again later, or in the other class: wait.
                    Found::Settled { class, last, .. } => self.note_settled(class, last, &id)?,
                }
            }
        }
        let room = limit.saturating_sub(out.examined);
        let mut old_jobs = Vec::new();
        for entry in self.replay_jobs.iter().map_err(unavailable)? {
            if old_jobs.len() >= room {
                break;
            }
            let (k, v) = entry.map_err(unavailable)?;
            let job: Result<crate::store::ReplayJob, _> = serde_json::from_slice(v.value());
            if job.is_ok_and(|j| j.finished && j.updated_at < cutoffs.replay_jobs) {
                old_jobs.push(k.value().to_owned());
            }
        }
        for id in old_jobs {
            self.replay_jobs.remove(id.as_str()).map_err(unavailable)?;
            out.replay_jobs += 1;
        }
        Ok(out)
    }

    /// Whether the event is settled, as of now, and since when.
    fn settled_state(&self, id: &str) -> Result<Found, StoreError> {
        let record = match self.get_index(id) {
            Ok(Some(r)) if !r.is_removed() => r,
            Ok(_) => return Ok(Found::Gone),
            Err(e @ StoreError::Corrupt { .. }) => {
                tracing::error!(event_id = %id, error = %Chain(&e), "unreadable event index record; the event is kept");
                return Ok(Found::Open);
            }
            Err(e) => return Err(e),
        };
        // The event's own receipt counts as a finish: a copy received again
        // after its dedupe key expired starts its retention afresh, whatever
        // the old deliveries still linked to it or old queue entries say.
        let body = match self.get_body(id, record.body_seq) {
            Ok(body) => body,
            Err(e @ StoreError::Corrupt { .. }) => {
                tracing::error!(event_id = %id, error = %Chain(&e), "unreadable event body; the event is kept");
                return Ok(Found::Open);
            }
            Err(e) => return Err(e),
        };
        let Some(received) = super::super::listing::received_at(&body) else {
            tracing::error!(event_id = %id, "stored event without a readable received_at; the event is kept");
            return Ok(Found::Open);
        };
        let mut deliveries = Vec::new();
        let (mut class, mut last) = (Class::Delivered, received);
        for did in &record.delivery_ids {
            match self.named(did.as_str(), "its event is kept")? {
                Named::Found(d) => match Class::of(d.state) {
                    Some(c) => {
                        if c == Class::Dead {
                            class = Class::Dead;
                        }
                        last = last.max(d.updated_at);
                        deliveries.push(*d);
                    }
                    None => return Ok(Found::Open),
                },
                // Its state is unknown: keep the event, whose body is the
                // only thing the delivery could be rebuilt from.
                Named::Missing | Named::Unreadable => return Ok(Found::Open),
            }
        }
        let numbered = crate::lifecycle::numbered(&body);
        Ok(Found::Settled { class, last, record, deliveries, numbered })
    }

    /// Removes an event, its deliveries and their attempts. Its dedupe key
    /// stays while it is live.
    fn remove_event(
        &mut self,
        id: &str,
        record: IndexRecord,
        deliveries: &[Delivery],
        now: Millis,
    ) -> Result<Purged, StoreError> {
        let mut out = Purged { events: 1, ..Purged::default() };
        for d in deliveries {
            let numbers: Vec<u32> = self
                .attempts
                .range((d.id.as_str(), 0u32)..=(d.id.as_str(), u32::MAX))
                .map_err(unavailable)?
                .map(|e| e.map(|(k, _)| k.value().1).map_err(unavailable))
                .collect::<Result<_, _>>()?;
            for n in &numbers {
                self.attempts.remove((d.id.as_str(), *n)).map_err(unavailable)?;
            }
            out.attempts += numbers.len() as u64;
            if in_by_state(d.state) {
                self.by_state.remove((d.state.as_str(), d.id.as_str())).map_err(unavailable)?;
            }
            self.deliveries.remove(d.id.as_str()).map_err(unavailable)?;
            self.bump(d.state, -1);
            out.deliveries += 1;
        }
        self.bodies.remove(record.body_seq).map_err(unavailable)?;
        if record.dedupe_expires > now {
            let left = IndexRecord::removed(record.dedupe_expires);
            self.index.insert(id, left.encode().as_slice()).map_err(unavailable)?;
        } else {
            self.index.remove(id).map_err(unavailable)?;
            if record.dedupe_expires != 0 {
                self.dedupe_expiry.remove((record.dedupe_expires, id)).map_err(unavailable)?;
            }
        }
        Ok(out)
    }

    /// Files written before retention: note every final delivery's event
    /// once, and every event without deliveries as of now (its receipt
    /// time is not in the index, so it is kept a full retention from the
    /// upgrade).
    pub(super) fn build_retention_queue(&mut self) -> Result<(), StoreError> {
        if self.meta.get("retention_queue").map_err(unavailable)?.is_some() {
            return Ok(());
        }
        let now = crate::store::now_millis();
        let mut notes = Vec::new();
        for entry in self.deliveries.iter().map_err(unavailable)? {
            let (k, v) = entry.map_err(unavailable)?;
            if let Ok(d) = decode_delivery(k.value(), v.value())
                && let Some(class) = Class::of(d.state)
            {
                notes.push((class, d.updated_at, d.event_id.as_str().to_owned()));
            }
        }
        for entry in self.index.iter().map_err(unavailable)? {
            let (k, v) = entry.map_err(unavailable)?;
            if let Ok(r) = IndexRecord::decode(k.value(), v.value())
                && !r.is_removed()
                && r.delivery_ids.is_empty()
            {
                notes.push((Class::Delivered, now, k.value().to_owned()));
            }
        }
        if !notes.is_empty() {
            tracing::info!(events = notes.len(), "retention: queued the settled events of an older file");
        }
        for (class, at, id) in &notes {
            self.note_settled(*class, *at, id)?;
        }
        self.meta.insert("retention_queue", 1).map_err(unavailable)?;
        Ok(())
    }
}
