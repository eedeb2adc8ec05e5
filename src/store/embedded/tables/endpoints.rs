//! Endpoints: the ones the schedule names, orphaning deliveries to endpoints no
//! longer configured and taking them back.

use redb::ReadableTable;

use crate::store::{DeliveryState, Millis, Reconciled, StoreError};

use super::super::codec::unavailable;
use super::super::writer::ClaimTable;
use super::{Named, Tables, is_scheduled};

impl Tables<'_> {
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

    pub(in crate::store::embedded) fn reconcile(
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
                    if claims.live.contains_key(id.as_str()) {
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
}
