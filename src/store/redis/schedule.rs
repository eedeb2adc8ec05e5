//! One clock and shared limits for the relays sharing a Redis.
//!
//! **One clock.** Whether a delivery is due and whether a claim has expired
//! is decided on Redis's clock, never on the claiming relay's: a relay whose
//! clock is minutes ahead would otherwise see another relay's live claim as
//! expired and send the same delivery at the same time. [`Clock`] holds the
//! offset of Redis's clock (`TIME`, the quickest of three round trips),
//! measured at connect and every [`REFRESH`] after; every time a relay
//! writes for scheduling (due times, the dedupe clock, the "now" of claims,
//! the sweep, replays, discards and reconciling) is moved by it. The claim
//! script checks `TIME` too, and trusts it over a measurement that is off
//! by more than a second (a clock stepped since). Offsets under
//! [`IGNORED_MS`] are left alone. A claim's deadline goes back to the relay
//! on its own clock, so the checks in delivery ("is there time left to
//! send?") compare like with like. `received_at` and attempt times stay on
//! the relay's clock, as its logs do.
//!
//! **Shared limits.** An endpoint's `max_in_flight` and `rate_limit` hold
//! across every relay on the prefix: the claim script keeps a lease per
//! claimed delivery in `slots:NAME` (a sorted set scored by the claim's
//! deadline) and a token bucket in `bucket:NAME`, and claims no more than
//! both allow. The lease ("id:token") goes back when the request is over:
//! the relay's next claim to the endpoint names it, and the claim script
//! removes it before counting, with no round trip of its own; at the latest
//! it goes with the finish or release. A relay killed while holding leases
//! gives them back at their deadline (the visibility timeout), when its
//! claims can be taken over too.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use super::conn::Conn;

use super::{Claim, Delivery, Millis, RedisStore, StoreError, decode, unavailable};
use crate::http::Chain;
use crate::store::{Lease, SharedLimits};

/// How often the offset between the clocks is measured again.
pub(super) const REFRESH: Duration = Duration::from_secs(5);

/// Offsets smaller than this are left alone: clocks kept by NTP are that
/// close, and the simulated times of tests stay exact. Two relays on either
/// side of Redis's clock are then at most twice this apart, well inside the
/// 500 ms by which `visibility_timeout` must exceed every endpoint timeout.
const IGNORED_MS: i64 = 100;

/// Due times are written this much early on Redis's clock when they are
/// moved at all, so that an error in the measured offset (at most half a
/// round trip) never leaves a just-admitted delivery a little in the future
/// for the claim that ingress wakes at once (it would wait for a poll).
const SLACK_MS: i64 = 50;

/// The offset of Redis's clock from this relay's, in milliseconds.
#[derive(Clone, Default)]
pub(super) struct Clock(Arc<AtomicI64>);

impl Clock {
    /// The offset to apply: 0 while under [`IGNORED_MS`].
    pub fn offset(&self) -> i64 {
        let offset = self.0.load(Ordering::Relaxed);
        if offset.abs() < IGNORED_MS { 0 } else { offset - SLACK_MS }
    }

    /// `t` on this relay's clock, moved onto Redis's.
    pub fn to_redis(&self, t: Millis) -> Millis {
        (t as i64).saturating_add(self.offset()).max(0) as Millis
    }

    pub fn set(&self, offset_ms: i64) {
        self.0.store(offset_ms, Ordering::Relaxed);
    }

    /// Measures the offset again every [`REFRESH`] for as long as the store
    /// lives. A failed measurement keeps the last one.
    /// Ends once the store is dropped.
    pub fn keep_measuring(&self, conn: Conn) {
        let clock = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH).await;
                let Some(clock) = clock.upgrade() else { return };
                if let Ok(offset) = measure_offset(&conn).await {
                    clock.store(offset, Ordering::Relaxed);
                }
            }
        });
    }
}

/// Redis's clock minus this relay's, from the quickest of three `TIME`
/// round trips against their middle: a slow answer (a reconnect, a busy
/// runtime) would otherwise read as skew.
pub(super) async fn measure_offset(conn: &Conn) -> Result<i64, StoreError> {
    let mut best: Option<(u64, i64)> = None;
    for _ in 0..3 {
        let before = crate::store::now_millis();
        let (secs, micros): (i64, i64) =
            redis::cmd("TIME").query_async(&mut conn.clone()).await.map_err(unavailable)?;
        let after = crate::store::now_millis();
        let rtt = after.saturating_sub(before);
        let middle = i64::try_from(before + rtt / 2).unwrap_or(i64::MAX);
        let redis_ms = secs
            .checked_mul(1000)
            .and_then(|ms| ms.checked_add(micros / 1000))
            .ok_or_else(|| unavailable("Redis TIME answered out of range"))?;
        if best.is_none_or(|(r, _)| rtt < r) {
            best = Some((rtt, redis_ms.saturating_sub(middle)));
        }
    }
    Ok(best.map_or(0, |(_, offset)| offset))
}

impl RedisStore {
    /// [`Store::claim_due_within`](crate::store::Store::claim_due_within):
    /// the claim script decides on Redis's clock and answers with it first,
    /// so each deadline goes back onto this relay's clock as `now` plus
    /// what is left of it. Measured from `now`, taken before the request,
    /// the deadline can only come out early, never late.
    pub(super) async fn claim(
        &self,
        endpoint: &str,
        now: Millis,
        limit: usize,
        visibility_ms: u64,
        shared: SharedLimits,
        returned: &[Lease],
    ) -> Result<Vec<Claim>, StoreError> {
        let (per_second, burst) = shared.rate.unwrap_or((0, 0));
        let mut inv = self.scripts.claim.prepare_invoke();
        inv.key(self.key(&format!("due:{endpoint}")))
            .key(self.key("counts"))
            .key(self.key(&format!("slots:{endpoint}")))
            .key(self.key(&format!("bucket:{endpoint}")))
            .arg(now)
            .arg(limit)
            .arg(visibility_ms)
            .arg(&self.keys)
            // cjson prints 14 significant digits: a 13-digit base keeps every
            // token of the batch exact.
            .arg(rand::random_range(1..9_000_000_000_000u64))
            .arg(shared.max_in_flight)
            .arg(per_second)
            .arg(burst)
            .arg(crate::store::now_millis())
            .arg(self.clock.offset());
        for lease in returned {
            inv.arg(format!("{}:{}", lease.delivery_id, lease.claim_token));
        }
        let raw: Vec<Vec<u8>> = self.invoke(&inv, false).await?;
        let Some((redis_now, pairs)) = raw.split_first() else {
            return Err(unavailable("the claim script answered without its clock"));
        };
        let redis_now: Millis = std::str::from_utf8(redis_now)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| unavailable("the claim script answered an unreadable clock"))?;
        // A record Lua could edit but we cannot read is skipped (it returns
        // after its visibility timeout, and is logged each time), so one bad
        // record never holds up the rest of the batch.
        Ok(pairs
            .chunks(2)
            .filter_map(|pair| {
                let text = String::from_utf8_lossy(&pair[0]);
                match decode::<Delivery>("claimed delivery", &text) {
                    Ok(mut delivery) => {
                        let left = delivery.next_attempt_at.unwrap_or(0).saturating_sub(redis_now);
                        delivery.next_attempt_at = Some(now.saturating_add(left));
                        Some(Claim { delivery, event_json: pair.get(1).cloned().unwrap_or_default() })
                    }
                    Err(e) => {
                        tracing::error!(error = %Chain(&e), "unreadable delivery record skipped");
                        None
                    }
                }
            })
            .collect())
    }
}
