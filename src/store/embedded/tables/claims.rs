//! Claims and their end: a claim, an attempt's finish, a release.

use redb::ReadableTable;

use crate::http::Chain;
use crate::store::{Attempt, Claim, DeliveryId, DeliveryState, Millis, Next, StoreError};

use super::super::codec::{corrupt, encode, unavailable};
use super::super::writer::{ClaimTable, InFlight};
use super::{Tables, is_scheduled};

impl Tables<'_> {
    /// Claims up to `limit` due deliveries of `endpoint`. A batch of claims
    /// alone is committed without fsync (writer.rs): every write here must
    /// be one the next claim would redo from what is on disk.
    pub(in crate::store::embedded) fn claim(
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
                        tracing::error!(delivery_id = %id, error = %Chain(&e), "unreadable delivery record removed from the schedule");
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
            // Ordered, and behind an earlier delivery of its subject.
            if !self.may_claim(claims, &old, at, now)? {
                continue;
            }
            let event_json = match self.get_index(old.event_id.as_str()) {
                Ok(Some(event)) => self.get_body(old.event_id.as_str(), event.body_seq),
                Ok(None) => Err(corrupt(old.event_id.as_str(), "event record missing")),
                Err(e) => Err(e),
            };
            let event_json = match event_json {
                Ok(json) => json,
                Err(e @ StoreError::Corrupt { .. }) => {
                    // Nothing can be delivered: dead, with the reason, so an
                    // operator sees it instead of a silent loop.
                    tracing::error!(delivery_id = %id, error = %Chain(&e), "delivery's event is unreadable; marking it dead");
                    let mut d = old.clone();
                    d.state = DeliveryState::Dead;
                    d.next_attempt_at = None;
                    d.last_error = Some(Chain(&e).to_string());
                    d.updated_at = now;
                    self.put_delivery(Some(&old), &d)?;
                    claims.live.remove(id.as_str());
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Pending and due, or a claim past its deadline: the visibility
            // timeout hands it to this claim, with a new token.
            claims.last_token += 1;
            let c = InFlight { token: claims.last_token, until: now.saturating_add(visibility_ms) };
            claims.live.insert(DeliveryId::from(id.as_str()), c);
            let mut d = old;
            claims.overlay(&mut d);
            out.push(Claim { delivery: d, event_json });
        }
        Ok(out)
    }

    pub(in crate::store::embedded) fn finish(
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
    pub(in crate::store::embedded) fn release(
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
        match self.get_delivery(id)? {
            Some(old) if old.next_attempt_at != Some(due) => {
                let mut d = old.clone();
                d.next_attempt_at = Some(due);
                self.put_delivery(Some(&old), &d)?;
            }
            // Deliveries of its subject parked behind this claim go on.
            Some(d) => self.advance_gate(&d)?,
            None => {}
        }
        Ok(true)
    }
}
