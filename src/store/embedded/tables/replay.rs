//! What operators do to deliveries they name: replay them (one by one, or as
//! the steps of a replay job) and discard them.

use redb::ReadableTable;

use crate::store::{DeliveryId, DeliveryState, DiscardCount, Millis, ReplayCount, ReplayJob, StoreError, discardable};

use super::super::codec::{corrupt, encode, unavailable};
use super::super::writer::ClaimTable;
use super::Tables;

impl Tables<'_> {
    /// Replays the named deliveries whose state `eligible` accepts.
    pub(in crate::store::embedded) fn replay(
        &mut self,
        claims: &ClaimTable,
        ids: &[DeliveryId],
        eligible: &dyn Fn(DeliveryState) -> bool,
        now: Millis,
    ) -> Result<ReplayCount, StoreError> {
        let named = self.named_once(ids, "not replayed")?;
        let mut count = ReplayCount { not_found: named.missing, skipped: named.unreadable, ..ReplayCount::default() };
        for old in named.found {
            if claims.live.contains_key(&old.id) {
                count.skipped += 1;
                continue;
            }
            if !eligible(old.state) {
                count.skipped += 1;
                continue;
            }
            let mut d = old.clone();
            d.state = DeliveryState::Pending;
            d.budget_start = d.attempts;
            d.next_attempt_at = Some(now);
            d.updated_at = now;
            d.discard_reason = None;
            self.put_delivery(Some(&old), &d)?;
            count.replayed += 1;
        }
        Ok(count)
    }

    /// Claims live in memory (the record on disk stays `pending`): a live
    /// claim is left alone, and an expired one is dropped with the discard,
    /// so that its worker's late finish finds the claim lost.
    pub(in crate::store::embedded) fn discard(
        &mut self,
        claims: &mut ClaimTable,
        ids: &[DeliveryId],
        reason: &str,
        only: Option<DeliveryState>,
        now: Millis,
    ) -> Result<DiscardCount, StoreError> {
        let named = self.named_once(ids, "not discarded")?;
        let mut count = DiscardCount { not_found: named.missing, skipped: named.unreadable, ..DiscardCount::default() };
        for old in named.found {
            match claims.live.get(&old.id) {
                Some(c) if c.until > now => {
                    count.in_flight += 1;
                    continue;
                }
                Some(_) => drop(claims.live.remove(&old.id)),
                None => {}
            }
            // On disk a claimed delivery is pending; its claim expired above.
            if !discardable(old.state) || only.is_some_and(|s| s != old.state) {
                count.skipped += 1;
                continue;
            }
            let mut d = old.clone();
            d.state = DeliveryState::Discarded;
            d.next_attempt_at = None;
            d.discard_reason = Some(reason.to_owned());
            d.updated_at = now;
            self.put_delivery(Some(&old), &d)?;
            count.discarded += 1;
        }
        Ok(count)
    }

    pub(in crate::store::embedded) fn create_job(&mut self, job: &ReplayJob) -> Result<(), StoreError> {
        self.replay_jobs.insert(job.id.as_str(), encode(job).as_slice()).map_err(unavailable)?;
        Ok(())
    }

    pub(in crate::store::embedded) fn replay_step(
        &mut self,
        claims: &ClaimTable,
        mut job: ReplayJob,
        ids: &[DeliveryId],
        now: Millis,
    ) -> Result<Option<ReplayJob>, StoreError> {
        let stored: ReplayJob = match self.replay_jobs.get(job.id.as_str()).map_err(unavailable)? {
            Some(v) => serde_json::from_slice(v.value()).map_err(|e| corrupt(&job.id, e))?,
            None => return Ok(None),
        };
        if stored.finished || stored.steps + 1 != job.steps {
            return Ok(None);
        }
        // Only what the job selected: a delivery that left that state since
        // it was listed (discarded by an operator, say) stays as it is.
        let selected = job.filter.state;
        let include_delivered = job.include_delivered;
        let eligible = move |s: DeliveryState| match selected {
            Some(state) => s == state,
            None => s == DeliveryState::Dead || (include_delivered && s == DeliveryState::Delivered),
        };
        job.add(self.replay(claims, ids, &eligible, now)?);
        self.replay_jobs.insert(job.id.as_str(), encode(&job).as_slice()).map_err(unavailable)?;
        Ok(Some(job))
    }
}
