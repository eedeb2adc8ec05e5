//! Replay: of the deliveries an operator names, and the steps of a replay job.

use redb::ReadableTable;

use crate::store::{DeliveryId, DeliveryState, Millis, ReplayCount, ReplayJob, StoreError};

use super::super::codec::{corrupt, encode, unavailable};
use super::super::writer::ClaimTable;
use super::Tables;

impl Tables<'_> {
    pub(in crate::store::embedded) fn replay(
        &mut self,
        claims: &ClaimTable,
        ids: &[DeliveryId],
        include_delivered: bool,
        now: Millis,
    ) -> Result<ReplayCount, StoreError> {
        let named = self.named_once(ids, "not replayed")?;
        let mut count = ReplayCount { not_found: named.missing, skipped: named.unreadable, ..ReplayCount::default() };
        for old in named.found {
            if claims.live.contains_key(&old.id) {
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
        job.add(self.replay(claims, ids, job.include_delivered, now)?);
        self.replay_jobs.insert(job.id.as_str(), encode(&job).as_slice()).map_err(unavailable)?;
        Ok(Some(job))
    }
}
