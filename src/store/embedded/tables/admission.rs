//! Events: admission, and the sweep of the dedupe keys it sets.

use redb::ReadableTable;

use crate::http::Chain;
use crate::lifecycle;
use crate::store::retention::Class;
use crate::store::{Admission, Delivery, Millis, NewDelivery, NewEvent, StoreError};

use super::super::codec::{IndexRecord, unavailable};
use super::Tables;

/// Most expired dedupe keys one sweep removes.
const SWEEP_CHUNK: usize = 10_000;

impl Tables<'_> {
    pub(in crate::store::embedded) fn admit(
        &mut self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        ttl_ms: u64,
    ) -> Result<Admission, StoreError> {
        let now = event.received_at;
        let previous = self.get_index(event.id.as_str())?;
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
            // Removed by retention: nothing of it is left to link to.
            if !prev.is_removed() {
                delivery_ids = prev.delivery_ids;
                // The new body (a new received_at) replaces the old one,
                // and takes a new number: the old one leaves the timeline.
                if let Some(old) = self.bodies.remove(prev.body_seq).map_err(unavailable)?
                    && let Some((key, sequence)) = lifecycle::numbered(old.value())
                {
                    self.timeline.remove((key.as_str(), sequence)).map_err(unavailable)?;
                }
            }
        }
        let expires = now.saturating_add(ttl_ms).max(1);
        self.dedupe_expiry.insert((expires, event.id.as_str()), ()).map_err(unavailable)?;
        if deliveries.is_empty() {
            self.note_settled(Class::Delivered, now, event.id.as_str())?;
        }
        let sequenced = match &event.subject {
            Some(n) => Some(self.number(n, event.id.as_str())?),
            None => None,
        };
        for nd in deliveries {
            let d = Delivery::pending(&event, nd, sequenced.as_ref());
            self.put_delivery(None, &d)?;
            delivery_ids.push(d.id);
        }
        let json = match (&event.subject, &sequenced) {
            (Some(n), Some(s)) => std::borrow::Cow::Owned(lifecycle::splice(&event.json, n.at, &s.fields())),
            _ => std::borrow::Cow::Borrowed(event.json.as_slice()),
        };
        self.body_seq += 1;
        self.bodies.insert(self.body_seq, json.as_ref()).map_err(unavailable)?;
        let record = IndexRecord { dedupe_expires: expires, body_seq: self.body_seq, delivery_ids };
        self.index.insert(event.id.as_str(), record.encode().as_slice()).map_err(unavailable)?;
        Ok(Admission::Accepted { regression: sequenced.is_some_and(|s| s.regression) })
    }

    pub(in crate::store::embedded) fn sweep(&mut self, now: Millis) -> Result<usize, StoreError> {
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
                // Retention removed the event; its key was all that was left.
                Ok(Some(record)) if record.dedupe_expires == *at && record.is_removed() => {
                    self.index.remove(id.as_str()).map_err(unavailable)?;
                }
                Ok(Some(mut record)) if record.dedupe_expires == *at => {
                    record.dedupe_expires = 0;
                    self.index.insert(id.as_str(), record.encode().as_slice()).map_err(unavailable)?;
                }
                Ok(_) => {}
                Err(e @ StoreError::Corrupt { .. }) => {
                    tracing::error!(event_id = %id, error = %Chain(&e), "unreadable event index record left as it is");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(expired.len())
    }
}
