//! Subjects in the embedded store: numbering events per subject, the
//! timeline of a subject, and the gates that hold an ordered endpoint's
//! later deliveries of a subject behind its earlier ones (`lifecycle`).
//!
//! A gate is the set of an endpoint's ordered deliveries of one subject
//! that are not final (pending, in flight or orphaned), by sequence. Only
//! its head, the lowest, is in the schedule, when it is open;
//! [`Tables::put_delivery`] keeps that so as deliveries join and leave, and
//! a claim parks any other it meets (after a replay puts an earlier
//! delivery back in front of one being sent).
//!
//! The gates live in the subject's record, beside its numbering: admission
//! reads and writes that record anyway, so ordering adds no table to its
//! commit (a separate gate table cost a fifth of the throughput, most of it
//! in pages written; BENCHMARKS.md).

use redb::ReadableTable;

use crate::http::Chain;
use crate::store::{Delivery, DeliveryState, Numbering, Sequenced, StoreError};

use super::super::codec::{corrupt, unavailable};
use super::super::writer::ClaimTable;
use super::{Tables, is_scheduled};

/// Whether `d` belongs in its gate: ordered, and pending, in flight or
/// orphaned (not yet final).
fn is_member(d: &Delivery) -> bool {
    d.order.is_some() && (is_scheduled(d.state) || d.state == DeliveryState::Orphaned)
}

/// A subject's record.
#[derive(Debug, Default, PartialEq)]
struct Subject {
    /// The last sequence number given.
    last: u64,
    /// The highest rank admitted; 0 for none (ranks start at 1).
    max_rank: u8,
    /// The last event's provider status as JSON text.
    status_json: String,
    /// (endpoint, sequence, delivery id) of every gate member, in order.
    gates: Vec<(String, u64, String)>,
}

impl Subject {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.status_json.len() + 64 * self.gates.len());
        out.extend_from_slice(&self.last.to_le_bytes());
        out.push(self.max_rank);
        let text = |out: &mut Vec<u8>, s: &str| {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        };
        text(&mut out, &self.status_json);
        for (endpoint, sequence, id) in &self.gates {
            text(&mut out, endpoint);
            out.extend_from_slice(&sequence.to_le_bytes());
            text(&mut out, id);
        }
        out
    }

    fn decode(key: &str, raw: &[u8]) -> Result<Subject, StoreError> {
        struct Reader<'a>(&'a [u8]);
        impl Reader<'_> {
            fn take(&mut self, n: usize) -> Option<&[u8]> {
                let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
                self.0 = rest;
                Some(head)
            }
            fn u64(&mut self) -> Option<u64> {
                Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
            }
            fn text(&mut self) -> Option<String> {
                let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
                String::from_utf8(self.take(len)?.to_vec()).ok()
            }
        }
        let mut r = Reader(raw);
        let mut read = || -> Option<Subject> {
            let (last, max_rank, status_json) = (r.u64()?, r.take(1)?[0], r.text()?);
            let mut gates = Vec::new();
            while !r.0.is_empty() {
                gates.push((r.text()?, r.u64()?, r.text()?));
            }
            Some(Subject { last, max_rank, status_json, gates })
        };
        read().ok_or_else(|| corrupt(key, "unreadable subject record"))
    }

    /// Puts the member `d` in its gate if it is missing (a new member, or a
    /// rebuilt record); whether it was.
    fn join(&mut self, d: &Delivery) -> bool {
        let Some(order) = d.order.as_ref().filter(|_| is_member(d)) else { return false };
        let entry = (d.endpoint.clone(), order.sequence, d.id.to_string());
        if self.gates.contains(&entry) {
            return false;
        }
        let at = self.gates.partition_point(|(e, s, _)| (e.as_str(), *s) < (d.endpoint.as_str(), order.sequence));
        self.gates.insert(at, entry);
        true
    }

    /// Whether a member of `endpoint`'s gate other than `id` holds a claim
    /// live at `now`.
    fn claimed_besides(&self, endpoint: &str, id: &str, claims: &ClaimTable, now: u64) -> bool {
        self.gate(endpoint).any(|(_, m)| m != id && claims.live.get(m).is_some_and(|c| c.until > now))
    }

    /// The gate of `endpoint`: its members' (sequence, id), in order.
    fn gate<'a>(&'a self, endpoint: &'a str) -> impl Iterator<Item = (u64, &'a str)> + 'a {
        self.gates.iter().filter(move |(e, _, _)| e == endpoint).map(|(_, s, id)| (*s, id.as_str()))
    }
}

/// What a change of an ordered delivery did to its gate.
pub(super) struct GateMove {
    /// The delivery may be on the schedule: it is not ordered, or it is
    /// open and heads its gate.
    pub schedulable: bool,
    /// Another delivery now heads the gate, open: it goes on the schedule.
    pub next: Option<Delivery>,
}

impl Tables<'_> {
    fn subject(&self, key: &str) -> Result<Option<Subject>, StoreError> {
        match self.subjects.get(key).map_err(unavailable)? {
            Some(g) => Subject::decode(key, g.value()).map(Some),
            None => Ok(None),
        }
    }

    /// The subject's record for a change: a missing one is new; an
    /// unreadable one is rebuilt (logged) rather than refusing the change:
    /// its numbering goes on from its timeline, and its gates are found
    /// again through the timeline's events (a subject has a handful).
    fn subject_for_change(&self, key: &str) -> Result<Subject, StoreError> {
        match self.subject(key) {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Ok(Subject { status_json: "null".into(), ..Subject::default() }),
            Err(e @ StoreError::Corrupt { .. }) => {
                tracing::error!(subject = %key, error = %Chain(&e), "unreadable subject record rebuilt from its timeline");
                self.rebuilt_subject(key)
            }
            Err(e) => Err(e),
        }
    }

    fn rebuilt_subject(&self, key: &str) -> Result<Subject, StoreError> {
        let mut subject = Subject { status_json: "null".into(), ..Subject::default() };
        let events: Vec<(u64, String)> = self
            .timeline
            .range((key, 0u64)..=(key, u64::MAX))
            .map_err(unavailable)?
            .map(|e| e.map(|(k, v)| (k.value().1, v.value().to_owned())).map_err(unavailable))
            .collect::<Result<_, _>>()?;
        for (sequence, event_id) in events {
            subject.last = subject.last.max(sequence);
            let Ok(Some(record)) = self.get_index(&event_id) else { continue };
            for id in &record.delivery_ids {
                if let Ok(Some(d)) = self.get_delivery(id.as_str())
                    && is_member(&d)
                    && let Some(order) = d.order.as_ref().filter(|o| o.subject == key)
                {
                    subject.gates.push((d.endpoint.clone(), order.sequence, d.id.to_string()));
                }
            }
        }
        subject.gates.sort();
        Ok(subject)
    }

    fn put_subject(&mut self, key: &str, s: &Subject) -> Result<(), StoreError> {
        self.subjects.insert(key, s.encode().as_slice()).map_err(unavailable)?;
        Ok(())
    }

    /// Gives the event the next number of its subject and records it.
    pub(super) fn number(&mut self, n: &Numbering, event_id: &str) -> Result<Sequenced, StoreError> {
        let key = n.subject.key.as_str();
        let mut subject = self.subject_for_change(key)?;
        let last = (subject.last > 0).then(|| (subject.last, subject.status_json.clone()));
        let max_rank = (subject.max_rank > 0).then_some(subject.max_rank);
        let s = Sequenced::next(last, max_rank, n.subject.rank);
        subject.last = s.sequence;
        subject.max_rank = max_rank.max(n.subject.rank).unwrap_or(0);
        subject.status_json = n.subject.status_json.clone();
        self.put_subject(key, &subject)?;
        self.timeline.insert((key, s.sequence), event_id).map_err(unavailable)?;
        Ok(s)
    }

    /// Takes a removed event off its subject's timeline; the subject goes
    /// with its last event (a later callback starts again at 1).
    pub(super) fn forget_numbered(&mut self, key: &str, sequence: u64) -> Result<(), StoreError> {
        self.timeline.remove((key, sequence)).map_err(unavailable)?;
        if self.timeline.range((key, 0u64)..=(key, u64::MAX)).map_err(unavailable)?.next().is_none() {
            self.subjects.remove(key).map_err(unavailable)?;
        }
        Ok(())
    }

    /// Keeps `d`'s gate in step with its new state, and says what that
    /// means for the schedule (see [`GateMove`]). Membership follows the
    /// state alone, as on Redis: a member missing from its gate (a rebuilt
    /// record) joins it again.
    pub(super) fn gate(&mut self, d: &Delivery) -> Result<GateMove, StoreError> {
        let Some(order) = d.order.as_ref() else { return Ok(GateMove { schedulable: true, next: None }) };
        let key = order.subject.as_str();
        let mut subject = self.subject_for_change(key)?;
        let changed = if is_member(d) {
            subject.join(d)
        } else {
            let entry = (d.endpoint.clone(), order.sequence, d.id.to_string());
            let before = subject.gates.len();
            subject.gates.retain(|g| *g != entry);
            subject.gates.len() != before
        };
        let head = self.gate_head(key, &mut subject, &d.endpoint, Some(d), changed)?;
        let heads = head.as_ref().is_some_and(|h| h.id == d.id);
        Ok(GateMove {
            schedulable: heads && is_scheduled(d.state),
            next: head.filter(|h| h.id != d.id && is_scheduled(h.state)),
        })
    }

    /// The delivery heading `endpoint`'s gate in `subject` (the record of
    /// `key`). Members whose record is missing, unreadable or final are
    /// dropped on the way (logged): a damaged record must not hold its
    /// subject back for ever, nor fail the write that met it. The record is
    /// saved if that, or the caller (`changed`), altered it. `known` is a
    /// delivery being written now, whose stored record may be older.
    fn gate_head(
        &mut self,
        key: &str,
        subject: &mut Subject,
        endpoint: &str,
        known: Option<&Delivery>,
        mut changed: bool,
    ) -> Result<Option<Delivery>, StoreError> {
        let head = loop {
            let Some((sequence, id)) = subject.gate(endpoint).next().map(|(s, id)| (s, id.to_owned())) else {
                break None;
            };
            if let Some(k) = known.filter(|k| k.id.as_str() == id) {
                break Some(k.clone());
            }
            match self.get_delivery(&id) {
                Ok(Some(h)) if is_member(&h) => break Some(h),
                Ok(_) => tracing::warn!(delivery_id = %id, "a settled or missing delivery left its ordering gate"),
                Err(e @ StoreError::Corrupt { .. }) => {
                    tracing::error!(delivery_id = %id, error = %Chain(&e), "unreadable delivery record left its ordering gate; the subject's next delivery goes on")
                }
                Err(e) => return Err(e),
            }
            subject.gates.retain(|(e, s, i)| !(e == endpoint && *s == sequence && *i == id));
            changed = true;
        };
        if changed {
            self.put_subject(key, subject)?;
        }
        Ok(head)
    }

    /// Puts `d`'s gate's head, if it is another open delivery, on the
    /// schedule.
    pub(super) fn advance_gate(&mut self, d: &Delivery) -> Result<(), StoreError> {
        let Some(order) = d.order.as_ref() else { return Ok(()) };
        let Some(mut subject) = self.subject(&order.subject).unwrap_or(None) else { return Ok(()) };
        let head = self.gate_head(&order.subject, &mut subject, &d.endpoint, Some(d), false)?;
        if let Some(h) = head.filter(|h| h.id != d.id) {
            self.schedule_head(&h)?;
        }
        Ok(())
    }

    /// Puts a gate's head on the schedule if it is open; whether it was off.
    pub(super) fn schedule_head(&mut self, h: &Delivery) -> Result<bool, StoreError> {
        let Some(at) = h.next_attempt_at.filter(|_| is_scheduled(h.state)) else { return Ok(false) };
        let was = self.due.insert((h.endpoint.as_str(), at, h.id.as_str()), ()).map_err(unavailable)?;
        Ok(was.is_none())
    }

    /// One step of the gate check housekeeping runs: for up to `limit`
    /// open deliveries after the cursor (a delivery id), an ordered one
    /// missing from its gate joins it again (a rebuilt subject record),
    /// members that no longer belong are dropped, and an open head that is
    /// off the schedule goes back on it, unless another member holds a live
    /// claim (it goes on when that one ends). Returns how many heads it put
    /// back, and where to go on. Its writes are all redone by the next
    /// pass, so the writer commits it without fsync.
    pub(in crate::store::embedded) fn heal_gates(
        &mut self,
        claims: &ClaimTable,
        after: Option<String>,
        limit: usize,
        now: u64,
    ) -> Result<(usize, Option<String>), StoreError> {
        let ids: Vec<String> = {
            let range = match &after {
                Some(a) => self.open.range::<&str>((std::ops::Bound::Excluded(a.as_str()), std::ops::Bound::Unbounded)),
                None => self.open.range::<&str>(..),
            }
            .map_err(unavailable)?;
            range
                .take(limit)
                .map(|e| e.map(|(k, _)| k.value().to_owned()).map_err(unavailable))
                .collect::<Result<_, _>>()?
        };
        let mut healed = 0;
        for id in &ids {
            let Ok(Some(d)) = self.get_delivery(id) else { continue };
            let Some(order) = d.order.as_ref() else { continue };
            let mut subject = self.subject_for_change(&order.subject)?;
            let joined = subject.join(&d);
            let Some(h) = self.gate_head(&order.subject, &mut subject, &d.endpoint, None, joined)? else { continue };
            if !subject.claimed_besides(&d.endpoint, h.id.as_str(), claims, now) && self.schedule_head(&h)? {
                healed += 1;
            }
        }
        let next = if ids.len() == limit { ids.last().cloned() } else { None };
        Ok((healed, next))
    }

    /// Whether a claim may take `d` now: unordered, or the head of its gate
    /// (members that no longer belong dropped first) with no other delivery
    /// of the gate claimed. If not, `d` leaves the schedule until its gate
    /// moves on, and the head goes on it (it may have been parked behind
    /// `d`'s expired claim).
    pub(super) fn may_claim(
        &mut self,
        claims: &ClaimTable,
        d: &Delivery,
        at: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let Some(order) = d.order.as_ref() else { return Ok(true) };
        let mut subject = self.subject_for_change(&order.subject)?;
        let joined = subject.join(d);
        let head = self.gate_head(&order.subject, &mut subject, &d.endpoint, Some(d), joined)?;
        let heads = head.as_ref().is_none_or(|h| h.id == d.id);
        if heads && !subject.claimed_besides(&d.endpoint, d.id.as_str(), claims, now) {
            return Ok(true);
        }
        self.due.remove((d.endpoint.as_str(), at, d.id.as_str())).map_err(unavailable)?;
        if let Some(h) = head.filter(|h| h.id != d.id) {
            self.schedule_head(&h)?;
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_records_read_back() {
        let s = Subject {
            last: 7,
            max_rank: 255,
            status_json: "\"finished\"".into(),
            gates: vec![
                ("be".into(), 3, "dlv_a".into()),
                ("be".into(), 5, "dlv_b".into()),
                ("x".into(), 1, "dlv_c".into()),
            ],
        };
        assert_eq!(Subject::decode("k", &s.encode()).unwrap(), s);
        assert_eq!(Subject::decode("k", &Subject::default().encode()).unwrap(), Subject::default());
        assert!(Subject::decode("k", b"short").is_err());
        assert_eq!(s.gate("be").collect::<Vec<_>>(), [(3, "dlv_a"), (5, "dlv_b")]);
    }
}
