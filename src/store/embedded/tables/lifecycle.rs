//! Subjects in the embedded store: numbering events per subject, the
//! timeline of a subject, and the gates that hold an ordered endpoint's
//! later deliveries of a subject behind its earlier ones (`lifecycle`).
//!
//! A gate is the set of an endpoint's open (pending or in flight) ordered
//! deliveries of one subject, by sequence. Only its head, the lowest, is in
//! the schedule; [`Tables::put_delivery`] keeps that so as deliveries join
//! and leave, and a claim parks any other it meets (after a replay puts an
//! earlier delivery back in front of one being sent).

use redb::ReadableTable;

use crate::http::Chain;
use crate::store::{Delivery, DeliveryState, Numbering, Sequenced, StoreError};

use super::super::codec::unavailable;
use super::super::writer::ClaimTable;
use super::{Tables, is_scheduled};

/// Whether `d` belongs in its gate: ordered, and pending, in flight or
/// orphaned (not yet final).
fn is_member(d: &Delivery) -> bool {
    d.order.is_some() && (is_scheduled(d.state) || d.state == DeliveryState::Orphaned)
}

/// A subject's record: the last sequence number given, the highest rank
/// admitted (0 for none; ranks start at 1) and the last event's provider
/// status as JSON text.
fn encode_subject(last: u64, max_rank: u8, status_json: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + status_json.len());
    out.extend_from_slice(&last.to_le_bytes());
    out.push(max_rank);
    out.extend_from_slice(status_json.as_bytes());
    out
}

fn decode_subject(raw: &[u8]) -> Option<(u64, u8, String)> {
    let last = u64::from_le_bytes(raw.get(..8)?.try_into().ok()?);
    let status = std::str::from_utf8(raw.get(9..)?).ok()?.to_owned();
    Some((last, *raw.get(8)?, status))
}

impl Tables<'_> {
    /// Gives the event the next number of its subject and records it.
    pub(super) fn number(&mut self, n: &Numbering, event_id: &str) -> Result<Sequenced, StoreError> {
        let key = n.subject.key.as_str();
        let known = self.subjects.get(key).map_err(unavailable)?.and_then(|g| decode_subject(g.value()));
        let (last, max_rank) = match known {
            Some((last, rank, status)) => (Some((last, status)), (rank > 0).then_some(rank)),
            None => (None, None),
        };
        let s = Sequenced::next(last, max_rank, n.subject.rank);
        let max_rank = max_rank.max(n.subject.rank).unwrap_or(0);
        let record = encode_subject(s.sequence, max_rank, &n.subject.status_json);
        self.subjects.insert(key, record.as_slice()).map_err(unavailable)?;
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

    /// Keeps `d`'s gate in step with its change from `old`: it is in its
    /// gate while open or orphaned (an orphaned delivery still holds its
    /// subject's later ones back). Returns whether `d` may be in the
    /// schedule: it is not ordered, or it is open and heads its gate.
    pub(super) fn gate(&mut self, old: Option<&Delivery>, d: &Delivery) -> Result<bool, StoreError> {
        let (was, is) = (old.is_some_and(is_member), is_member(d));
        let Some(order) = d.order.as_ref() else { return Ok(true) };
        let key = (d.endpoint.as_str(), order.subject.as_str(), order.sequence);
        if is && !was {
            self.gates.insert(key, d.id.as_str()).map_err(unavailable)?;
        } else if was && !is {
            self.gates.remove(key).map_err(unavailable)?;
        }
        if !is_scheduled(d.state) {
            return Ok(false);
        }
        let head = self.gate_head(&d.endpoint, &order.subject, Some(d))?;
        Ok(head.is_some_and(|h| h.id == d.id))
    }

    /// After `d` changed: puts its gate's head, if it is another open
    /// delivery, on the schedule (its predecessor just became final, or
    /// was retried behind it).
    pub(super) fn advance_gate(&mut self, d: &Delivery) -> Result<(), StoreError> {
        let Some(order) = d.order.as_ref() else { return Ok(()) };
        if let Some(h) = self.gate_head(&d.endpoint, &order.subject, Some(d))?
            && h.id != d.id
        {
            self.schedule_head(&h)?;
        }
        Ok(())
    }

    /// Puts a gate's head on the schedule if it is open; whether it was off.
    fn schedule_head(&mut self, h: &Delivery) -> Result<bool, StoreError> {
        let Some(at) = h.next_attempt_at.filter(|_| is_scheduled(h.state)) else { return Ok(false) };
        let was = self.due.insert((h.endpoint.as_str(), at, h.id.as_str()), ()).map_err(unavailable)?;
        Ok(was.is_none())
    }

    /// The delivery heading a gate. Entries whose record is missing,
    /// unreadable or no longer in the gate's states are dropped on the way
    /// (logged): a damaged record must not hold its subject back for ever,
    /// nor fail the write that met it. `known` is a delivery being written
    /// now, whose stored record may be older or absent.
    fn gate_head(
        &mut self,
        endpoint: &str,
        subject: &str,
        known: Option<&Delivery>,
    ) -> Result<Option<Delivery>, StoreError> {
        loop {
            let first = self
                .gates
                .range((endpoint, subject, 0u64)..=(endpoint, subject, u64::MAX))
                .map_err(unavailable)?
                .next()
                .map(|e| e.map(|(k, v)| (k.value().2, v.value().to_owned())).map_err(unavailable))
                .transpose()?;
            let Some((sequence, id)) = first else { return Ok(None) };
            if let Some(k) = known.filter(|k| k.id.as_str() == id) {
                return Ok(Some(k.clone()));
            }
            match self.get_delivery(&id) {
                Ok(Some(h)) if is_member(&h) => return Ok(Some(h)),
                Ok(_) => tracing::warn!(delivery_id = %id, "a settled or missing delivery left its ordering gate"),
                Err(e @ StoreError::Corrupt { .. }) => {
                    tracing::error!(delivery_id = %id, error = %Chain(&e), "unreadable delivery record left its ordering gate; the subject's next delivery goes on")
                }
                Err(e) => return Err(e),
            }
            self.gates.remove((endpoint, subject, sequence)).map_err(unavailable)?;
        }
    }

    /// One step of the gate check housekeeping runs: for up to `limit`
    /// gates after `after` (endpoint, subject), drops entries that no
    /// longer belong and puts an open head that is off the schedule back
    /// on it. Returns how many heads it put back, and where to go on.
    /// The cursor is `endpoint` and `subject` joined by a newline (endpoint
    /// names hold none).
    pub(in crate::store::embedded) fn heal_gates(
        &mut self,
        after: Option<String>,
        limit: usize,
    ) -> Result<(usize, Option<String>), StoreError> {
        let (healed, cursor) = self.heal_gates_from(
            after.and_then(|c| c.split_once('\n').map(|(e, s)| (e.to_owned(), s.to_owned()))),
            limit,
        )?;
        Ok((healed, cursor.map(|(e, s)| format!("{e}\n{s}"))))
    }

    fn heal_gates_from(
        &mut self,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<(usize, Option<(String, String)>), StoreError> {
        let mut healed = 0;
        let mut cursor = after;
        for _ in 0..limit {
            let next = {
                let mut range = match &cursor {
                    Some((e, s)) => self.gates.range((e.as_str(), s.as_str(), u64::MAX)..).map_err(unavailable)?,
                    None => self.gates.range::<(&str, &str, u64)>(..).map_err(unavailable)?,
                };
                let mut found = None;
                for entry in range.by_ref() {
                    let (k, _) = entry.map_err(unavailable)?;
                    let (e, s, _) = k.value();
                    if cursor.as_ref().is_none_or(|(ce, cs)| (ce.as_str(), cs.as_str()) != (e, s)) {
                        found = Some((e.to_owned(), s.to_owned()));
                        break;
                    }
                }
                found
            };
            let Some((endpoint, subject)) = next else { return Ok((healed, None)) };
            if let Some(h) = self.gate_head(&endpoint, &subject, None)?
                && self.schedule_head(&h)?
            {
                healed += 1;
            }
            cursor = Some((endpoint, subject));
        }
        Ok((healed, cursor))
    }

    /// Whether a claim may take `d` now: unordered, or the head of its gate
    /// with no other delivery of the gate claimed. If not, `d` leaves the
    /// schedule until its gate moves on.
    pub(super) fn may_claim(
        &mut self,
        claims: &ClaimTable,
        d: &Delivery,
        at: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let Some(order) = d.order.as_ref() else { return Ok(true) };
        let subject = order.subject.as_str();
        let endpoint = d.endpoint.as_str();
        let mut head = true;
        let mut free = true;
        for (i, e) in self
            .gates
            .range((endpoint, subject, 0u64)..=(endpoint, subject, u64::MAX))
            .map_err(unavailable)?
            .enumerate()
        {
            let (_, v) = e.map_err(unavailable)?;
            let id = v.value();
            if i == 0 && id != d.id.as_str() {
                head = false;
            }
            if id != d.id.as_str() && claims.live.get(id).is_some_and(|c| c.until > now) {
                free = false;
            }
        }
        if head && free {
            return Ok(true);
        }
        self.due.remove((endpoint, at, d.id.as_str())).map_err(unavailable)?;
        // The head may have been parked behind `d`'s expired claim.
        self.advance_gate(d)?;
        Ok(false)
    }
}
