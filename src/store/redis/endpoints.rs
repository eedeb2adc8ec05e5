//! Bringing deliveries in line with the configured endpoints
//! ([`Store::reconcile_endpoints`](crate::store::Store::reconcile_endpoints)):
//! orphaning those of endpoints not configured, and taking back those of
//! endpoints configured again, in chunks so a backlog does not block Redis.

use redis::AsyncCommands;

use super::{RECONCILE_CHUNK, RedisStore, unavailable};
use crate::store::{Millis, Reconciled, StoreError};

impl RedisStore {
    pub(super) async fn reconcile(
        &self,
        endpoints: &[String],
        orphan_others: bool,
        now: Millis,
    ) -> Result<Reconciled, StoreError> {
        let mut conn = self.conn();
        if !endpoints.is_empty() {
            let _: () = conn.sadd(self.key("endpoints"), endpoints).await.map_err(unavailable)?;
        }
        let mut out = Reconciled::default();
        if orphan_others {
            let orphan = &self.scripts.orphan;
            let known: Vec<String> = conn.smembers(self.key("endpoints")).await.map_err(unavailable)?;
            for endpoint in known.iter().filter(|e| !endpoints.contains(e)) {
                let mut offset = 0;
                loop {
                    let mut inv = orphan.prepare_invoke();
                    inv.key(self.key(&format!("due:{endpoint}")))
                        .key(self.key("counts"))
                        .key(self.key("open"))
                        .key(self.key("orphaned"))
                        .key(self.key(&format!("orphaned:{endpoint}")))
                        .arg(&self.keys)
                        .arg(self.clock.to_redis(now))
                        .arg(offset)
                        .arg(RECONCILE_CHUNK);
                    let (_, left, examined): (usize, usize, usize) = self.invoke(&inv, false).await?;
                    offset += left;
                    if examined < RECONCILE_CHUNK {
                        break;
                    }
                }
                let n: u64 = conn.zcard(self.key(&format!("orphaned:{endpoint}"))).await.map_err(unavailable)?;
                if n > 0 {
                    out.orphaned.push((endpoint.clone(), n));
                }
            }
        }
        let adopt = &self.scripts.adopt;
        for endpoint in endpoints {
            let mut adopted = 0;
            loop {
                let mut inv = adopt.prepare_invoke();
                inv.key(self.key(&format!("orphaned:{endpoint}")))
                    .key(self.key("orphaned"))
                    .key(self.key("open"))
                    .key(self.key("counts"))
                    .key(self.key(&format!("due:{endpoint}")))
                    .arg(&self.keys)
                    .arg(self.clock.to_redis(now))
                    .arg(RECONCILE_CHUNK);
                let (n, examined): (u64, usize) = self.invoke(&inv, false).await?;
                adopted += n;
                if examined < RECONCILE_CHUNK {
                    break;
                }
            }
            if adopted > 0 {
                out.adopted.push((endpoint.clone(), adopted));
            }
        }
        Ok(out)
    }
}
