//! The Redis store: the same contract as the embedded store, shared by
//! several relay processes.
//!
//! **Layout.** Every key starts with `{prefix}:`, one hash tag, so the data
//! could live in one Cluster slot; the client here talks to a single Redis
//! node (or a primary behind a proxy), not to Redis Cluster. Per event: `event:ID`
//! (the JSON delivered), `event-dlv:ID` (its delivery ids) and `dedupe:ID`
//! (its dedupe expiry). Per delivery: `dlv:ID` (the record, JSON) and
//! `attempts:ID` (a list). Per endpoint: `due:NAME`, a sorted set scored by
//! when the delivery next needs attention — its due time while pending, its
//! claim deadline while in flight — so claiming and the visibility timeout
//! are one range query. `index` orders delivery ids (which begin with their
//! creation time) for listing, `dedupe-exp` orders dedupe keys by expiry for
//! sweeping, `counts` counts deliveries by state. `open`, `dead`,
//! `discarded`, `skipped` and `orphaned` order the ids of deliveries in those states, so that listing
//! what needs attention does not read every delivery; `orphaned:NAME` holds
//! the orphaned deliveries of one endpoint, and `endpoints` every endpoint
//! name a relay has been configured with.
//!
//! **Subjects** (`lifecycle`): `subject:KEY` (a hash: the last sequence,
//! the highest rank, the last status), `timeline:KEY` (event ids scored by
//! sequence), `numbered` (event id → `KEY|sequence`, for retention) and,
//! per ordered endpoint and subject, `gate:NAME:KEY` (open ordered
//! deliveries scored by sequence; only the lowest is in `due:NAME`; `gates`
//! lists them for the housekeeping check).
//!
//! **Why a sorted set and not Streams.** A delivery is retried at a time of its own and claimed
//! again after a visibility timeout: one `ZRANGEBYSCORE` on "next time this needs attention".
//!
//! **Atomicity and retries.** Every change is one Lua script, so it happens
//! whole or not at all, and each is harmless to run twice: a retried
//! admission finds its own dedupe key and answers duplicate (still stored,
//! still a 200); a retried finish or release finds its claim settled and
//! changes nothing. Dedupe expiry is a value compared with the admission's
//! own clock, as in the embedded store; Redis's expiry only collects garbage.
//!
//! **Batches.** Every write command costs Redis an append to its log, so
//! writes are grouped where that is safe: a claim writes its batch's
//! records, schedule entries and counts with one command each, and finishes
//! that arrive together are recorded by one script call (`FINISH_MANY`),
//! each with its own result. A lone finish is not held back for company.
//!
//! Claim deadlines and due times come from the relays' clocks, so relays sharing a Redis must keep
//! their clocks in sync (NTP), well within the gap between `visibility_timeout` and the endpoint
//! timeout. Scripts edit delivery records with Redis's `cjson`, which prints numbers with 14
//! significant digits: exact for millisecond times until the year 2286, and for every counter.
//!
//! This file holds the [`Store`] implementation; [`connect`](RedisStore::connect) (TLS too) lives
//! in `connect.rs`, the batched finish recorder in `finishes.rs`, waiting for replicas
//! (`min_replicas_ack`) in `replicas.rs`, the Lua scripts and how they are run in `scripts.rs`.

use async_trait::async_trait;
use conn::Conn;
use redis::AsyncCommands;

use crate::http::Chain;

mod conn;
mod connect;
mod endpoints;
mod finishes;
mod options;
mod quarantine;
mod replicas;
mod retention;
mod schedule;
mod scripts;
mod sentinel;
use finishes::PendingFinish;
pub use options::{RedisOptions, RedisTls, Topology};
use scripts::{Scripts, invoke_raw};

use super::retention::{Cutoffs, Purged, StoreStats};

use super::{
    Admission, Attempt, Claim, Counts, Delivery, DeliveryFilter, DeliveryId, DeliveryState, DiscardCount, EventId,
    LIST_SCAN_LIMIT, Lease, Millis, NewDelivery, NewEvent, Next, Page, Reconciled, ReplayCount, ReplayJob,
    SharedLimits, Store, StoreError, StoredEvent, TimelineEntry, corrupt, unavailable,
};

/// Schedule entries or orphaned deliveries one reconciling script call
/// handles, so that a large backlog does not block Redis for long.
const RECONCILE_CHUNK: usize = 500;

/// Most delivery records one listing page reads per round trip.
const LIST_SCAN: isize = 500;

/// The Redis store. Cheap to clone; every clone shares one connection.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    /// `{prefix}:`
    keys: String,
    /// Every script, hashed once.
    scripts: std::sync::Arc<Scripts>,
    /// Finishes go to a task that records them in batches.
    finishes: tokio::sync::mpsc::Sender<PendingFinish>,
    /// With `min_replicas_ack`: what admissions wait on before answering.
    replicas: Option<replicas::ReplicaAcks>,
    /// How far Redis's clock is from this relay's (`schedule.rs`).
    clock: schedule::Clock,
}

impl RedisStore {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.keys)
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &redis::ScriptInvocation<'_>,
        retry: bool,
    ) -> Result<T, StoreError> {
        invoke_raw(&self.conn, script, retry).await.map_err(unavailable)
    }

    async fn deliveries(&self, ids: &[String]) -> Result<Vec<Delivery>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.key(&format!("dlv:{id}"))).collect();
        let raw: Vec<Option<String>> = self.conn().mget(keys).await.map_err(unavailable)?;
        // One unreadable record must not fail a whole page: skip it, loudly.
        Ok(raw
            .into_iter()
            .zip(ids)
            .filter_map(|(r, id)| match decode(id, &r?) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::error!(error = %Chain(&e), "unreadable delivery record left out");
                    None
                }
            })
            .collect())
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, raw: &str) -> Result<T, StoreError> {
    serde_json::from_str(raw).map_err(|e| corrupt(key, e))
}

#[async_trait]
impl Store for RedisStore {
    async fn admit(
        &self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        dedupe_ttl_ms: u64,
    ) -> Result<Admission, StoreError> {
        let mut script = self.scripts.admit.prepare_invoke();
        let (subject, status, rank, at) = match &event.subject {
            Some(n) => (n.subject.key.as_str(), n.subject.status_json.as_str(), n.subject.rank, n.at),
            None => ("", "null", None, 0),
        };
        script
            .key(self.key(&format!("dedupe:{}", event.id)))
            .key(self.key(&format!("event:{}", event.id)))
            .key(self.key(&format!("event-dlv:{}", event.id)))
            .key(self.key("counts"))
            .key(self.key("index"))
            .key(self.key("dedupe-exp"))
            .key(self.key("open"))
            .key(self.key("events"))
            .key(self.key("settled:delivered"))
            .arg(dedupe_ttl_ms.max(1))
            .arg(event.json.as_slice())
            // Dedupe expiry and due times on Redis's clock (schedule.rs).
            .arg(self.clock.to_redis(event.received_at))
            .arg(event.id.as_str())
            .arg(&self.keys)
            .arg(subject)
            .arg(status)
            .arg(rank.map(|r| r.to_string()).unwrap_or_default())
            .arg(at);
        for nd in deliveries {
            let policy = nd.policy;
            // Numbered (and skipped, or ordered) by the script.
            let mut d = Delivery::pending(&event, nd, None);
            d.next_attempt_at = d.next_attempt_at.map(|t| self.clock.to_redis(t));
            script.key(self.key(&format!("dlv:{}", d.id))).key(self.key(&format!("due:{}", d.endpoint)));
            script.arg(d.id.as_str()).arg(serde_json::to_string(&d).map_err(unavailable)?);
            script.arg(if policy.ordered { "1" } else { "0" }).arg(if policy.skip_regressions { "1" } else { "0" });
        }
        let dedupe_key = self.key(&format!("dedupe:{}", event.id));
        let accepted: i64 = self.invoke(&script, true).await?;
        // A duplicate too: the copy stored earlier may be the one whose
        // replicas did not confirm (its admission answered 503).
        if let Some(replicas) = &self.replicas {
            replicas.confirm(dedupe_key).await?;
        }
        Ok(match accepted {
            0 => Admission::Duplicate,
            n => Admission::Accepted { regression: n == 2 },
        })
    }

    async fn event(&self, id: &EventId) -> Result<Option<StoredEvent>, StoreError> {
        let json: Option<Vec<u8>> = self.conn().get(self.key(&format!("event:{id}"))).await.map_err(unavailable)?;
        Ok(json.map(|json| StoredEvent { id: id.to_owned(), json }))
    }

    async fn subject(&self, key: &str) -> Result<Vec<TimelineEntry>, StoreError> {
        let entries: Vec<(String, f64)> =
            self.conn().zrange_withscores(self.key(&format!("timeline:{key}")), 0, -1).await.map_err(unavailable)?;
        let mut out = Vec::with_capacity(entries.len());
        for (id, sequence) in entries {
            let id = EventId::from(id);
            // Removed between the two reads: left out.
            let Some(event) = self.event(&id).await? else { continue };
            let deliveries = self.event_deliveries(&id).await?;
            out.push(TimelineEntry { sequence: sequence as u64, event, deliveries });
        }
        Ok(out)
    }

    async fn event_deliveries(&self, event_id: &EventId) -> Result<Vec<Delivery>, StoreError> {
        let ids: Vec<String> =
            self.conn().lrange(self.key(&format!("event-dlv:{event_id}")), 0, -1).await.map_err(unavailable)?;
        self.deliveries(&ids).await
    }

    async fn delivery(&self, id: &DeliveryId) -> Result<Option<(Delivery, Vec<Attempt>)>, StoreError> {
        // One MULTI/EXEC, so the record and its attempts agree: a finish
        // between two separate reads would show an attempt the record does
        // not count yet.
        let (raw, attempts): (Option<String>, Vec<String>) = redis::pipe()
            .atomic()
            .get(self.key(&format!("dlv:{id}")))
            .lrange(self.key(&format!("attempts:{id}")), 0, -1)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let Some(raw) = raw else { return Ok(None) };
        let attempts = attempts.iter().map(|a| decode(id.as_str(), a)).collect::<Result<_, _>>()?;
        Ok(Some((decode(id.as_str(), &raw)?, attempts)))
    }

    async fn claim_due(
        &self,
        endpoint: &str,
        now: Millis,
        limit: usize,
        visibility_ms: u64,
    ) -> Result<Vec<Claim>, StoreError> {
        self.claim(endpoint, now, limit, visibility_ms, SharedLimits::default(), &[]).await
    }

    fn shares_limits(&self) -> bool {
        true
    }

    async fn claim_due_within(
        &self,
        endpoint: &str,
        now: Millis,
        limit: usize,
        visibility_ms: u64,
        shared: SharedLimits,
        returned: &[Lease],
    ) -> Result<Vec<Claim>, StoreError> {
        self.claim(endpoint, now, limit, visibility_ms, shared, returned).await
    }

    async fn finish(
        &self,
        delivery_id: &DeliveryId,
        claim_token: u64,
        attempt: Attempt,
        next: Next,
    ) -> Result<bool, StoreError> {
        // The script takes '' for "no error".
        let last_error = attempt.result.last_error().unwrap_or_default();
        let updated_at = attempt.started_at.saturating_add(attempt.duration_ms);
        let at = if let Next::RetryAt(at) = next { self.clock.to_redis(at) } else { 0 };
        let (reply, result) = tokio::sync::oneshot::channel();
        let pending = PendingFinish {
            id: delivery_id.to_string(),
            token: claim_token,
            attempt: serde_json::to_string(&attempt).map_err(unavailable)?,
            next: next.as_str(),
            retry_at: at,
            last_error: last_error.to_owned(),
            updated_at,
            reply,
        };
        self.finishes.send(pending).await.map_err(|_| unavailable("the finish recorder has stopped"))?;
        result.await.map_err(|_| unavailable("the finish recorder has stopped"))?
    }

    async fn release(&self, delivery_id: &DeliveryId, claim_token: u64, due: Millis) -> Result<bool, StoreError> {
        let mut inv = self.scripts.release.prepare_invoke();
        inv.key(self.key(&format!("dlv:{delivery_id}")))
            .key(self.key("counts"))
            .arg(claim_token)
            .arg(self.clock.to_redis(due))
            .arg(&self.keys);
        let done: i64 = self.invoke(&inv, true).await?;
        Ok(done == 1)
    }

    async fn list(&self, filter: &DeliveryFilter, cursor: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        // Ids begin with their creation time: the time window bounds the
        // lexicographic range, the cursor is the last id returned.
        let lower = filter.since.map(|t| format!("[dlv_{t:012x}")).unwrap_or_else(|| "-".into());
        let mut upper = filter.until.map(|t| format!("(dlv_{t:012x}")).unwrap_or_else(|| "+".into());
        if let Some(c) = cursor {
            let c = format!("({c}");
            if upper == "+" || c < upper {
                upper = c;
            }
        }
        // Pending and in-flight deliveries are the few in the open index:
        // scan it rather than every delivery ever made.
        // So are dead and orphaned ones, in theirs.
        let index = match filter.state {
            Some(DeliveryState::Pending | DeliveryState::InFlight) => self.key("open"),
            Some(DeliveryState::Dead) => self.key("dead"),
            Some(DeliveryState::Discarded) => self.key("discarded"),
            Some(DeliveryState::Skipped) => self.key("skipped"),
            Some(DeliveryState::Orphaned) => self.key("orphaned"),
            _ => self.key("index"),
        };
        let mut items = Vec::new();
        let mut examined = 0;
        loop {
            if examined >= LIST_SCAN_LIMIT {
                // The scan limit: continue below the last id examined.
                return Ok(Page { items, next_cursor: Some(upper[1..].to_owned()) });
            }
            let ids: Vec<String> = redis::cmd("ZREVRANGEBYLEX")
                .arg(&index)
                .arg(&upper)
                .arg(&lower)
                .arg("LIMIT")
                .arg(0)
                .arg(LIST_SCAN)
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            let Some(last) = ids.last().cloned() else { break };
            examined += ids.len();
            for d in self.deliveries(&ids).await? {
                if filter.matches(&d) {
                    if items.len() == limit {
                        let next_cursor = items.last().map(|d: &Delivery| d.id.to_string());
                        return Ok(Page { items, next_cursor });
                    }
                    items.push(d);
                }
            }
            if (ids.len() as isize) < LIST_SCAN {
                break;
            }
            upper = format!("({last}");
        }
        Ok(Page { items, next_cursor: None })
    }

    async fn replay(
        &self,
        ids: &[DeliveryId],
        include_delivered: bool,
        now: Millis,
    ) -> Result<ReplayCount, StoreError> {
        let mut script = self.scripts.replay.prepare_invoke();
        script
            .key(self.key("counts"))
            .arg(&self.keys)
            .arg(if include_delivered { "1" } else { "0" })
            .arg(self.clock.to_redis(now));
        for id in ids {
            script.arg(id.as_str());
        }
        let (replayed, skipped, not_found): (usize, usize, usize) = self.invoke(&script, false).await?;
        Ok(ReplayCount { replayed, skipped, not_found })
    }

    async fn create_replay_job(&self, job: &ReplayJob) -> Result<(), StoreError> {
        let script = &self.scripts.create_job;
        let mut inv = script.prepare_invoke();
        inv.key(self.key(&format!("replay:{}", job.id)))
            .key(self.key("replays-open"))
            .key(self.key("replays-done"))
            .arg(&job.id)
            .arg(serde_json::to_string(job).map_err(unavailable)?)
            .arg(if job.finished { "1" } else { "0" })
            .arg(job.updated_at);
        self.invoke::<i64>(&inv, true).await.map(|_| ())
    }

    async fn replay_job(&self, id: &str) -> Result<Option<ReplayJob>, StoreError> {
        let raw: Option<String> = self.conn().get(self.key(&format!("replay:{id}"))).await.map_err(unavailable)?;
        raw.map(|r| decode(id, &r)).transpose()
    }

    async fn unfinished_replay_jobs(&self) -> Result<Vec<ReplayJob>, StoreError> {
        let ids: Vec<String> = self.conn().smembers(self.key("replays-open")).await.map_err(unavailable)?;
        let mut jobs = Vec::new();
        for id in ids {
            match self.replay_job(&id).await {
                Ok(Some(job)) if !job.finished => jobs.push(job),
                Ok(_) => {}
                Err(e @ StoreError::Corrupt { .. }) => {
                    tracing::error!(job = %id, error = %Chain(&e), "unreadable replay job skipped")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(jobs)
    }

    async fn replay_step(
        &self,
        job: &ReplayJob,
        ids: &[DeliveryId],
        now: Millis,
    ) -> Result<Option<ReplayJob>, StoreError> {
        let script = &self.scripts.replay_step;
        let mut inv = script.prepare_invoke();
        inv.key(self.key("counts"))
            .key(self.key(&format!("replay:{}", job.id)))
            .key(self.key("replays-open"))
            .arg(&self.keys)
            .arg(self.clock.to_redis(now))
            .arg(serde_json::to_string(job).map_err(unavailable)?);
        for id in ids {
            inv.arg(id.as_str());
        }
        // Safe to run twice: the second run finds the step already saved.
        let saved: Option<String> = self.invoke(&inv, true).await?;
        saved.map(|s| decode(&job.id, &s)).transpose()
    }

    async fn sweep(&self, now: Millis) -> Result<usize, StoreError> {
        let script = &self.scripts.sweep;
        let mut inv = script.prepare_invoke();
        inv.key(self.key("dedupe-exp")).arg(&self.keys).arg(self.clock.to_redis(now)).arg(10_000);
        self.invoke(&inv, true).await
    }

    async fn heal_gates(&self, after: Option<String>, limit: usize) -> Result<(usize, Option<String>), StoreError> {
        let mut inv = self.scripts.heal_gates.prepare_invoke();
        inv.arg(&self.keys).arg(after.as_deref().unwrap_or("0")).arg(limit.max(1));
        let (next, healed): (String, usize) = self.invoke(&inv, true).await?;
        Ok((healed, (next != "0").then_some(next)))
    }

    async fn oldest_open(&self) -> Result<Option<Millis>, StoreError> {
        // Every member scores 0, so the set is in id order: creation order.
        let first: Vec<String> = self.conn().zrange(self.key("open"), 0, 0).await.map_err(unavailable)?;
        Ok(first.first().and_then(|id| DeliveryId::from(id.as_str()).created_at()))
    }

    async fn oldest_open_by_endpoint(&self, scan: usize) -> Result<Vec<(String, Millis)>, StoreError> {
        let ids: Vec<String> = self.conn().zrange(self.key("open"), 0, scan as isize - 1).await.map_err(unavailable)?;
        let mut oldest: Vec<(String, Millis)> = Vec::new();
        for chunk in ids.chunks(LIST_SCAN as usize) {
            let keys: Vec<String> = chunk.iter().map(|id| self.key(&format!("dlv:{id}"))).collect();
            let raws: Vec<Option<String>> = self.conn().mget(keys).await.map_err(unavailable)?;
            for (id, raw) in chunk.iter().zip(raws) {
                // Finished (or removed) since the range was read: no longer
                // open. An unreadable record is for the listings to show.
                let Some(Ok(d)) = raw.map(|raw| decode::<Delivery>(id, &raw)) else { continue };
                let open = matches!(d.state, DeliveryState::Pending | DeliveryState::InFlight);
                if open && !oldest.iter().any(|(e, _)| *e == d.endpoint) {
                    oldest.push((d.endpoint, d.created_at));
                }
            }
        }
        Ok(oldest)
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        let values: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(self.key("counts"))
            .arg(DeliveryState::ALL.map(|s| s.as_str()).as_slice())
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(DeliveryState::ALL.map(|s| (s, values.get(s.index()).copied().flatten().unwrap_or(0).max(0) as u64)))
    }

    async fn reconcile_endpoints(
        &self,
        endpoints: &[String],
        orphan_others: bool,
        now: Millis,
    ) -> Result<Reconciled, StoreError> {
        self.reconcile(endpoints, orphan_others, now).await
    }

    async fn known_endpoints(&self) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<String> = self.conn().smembers(self.key("endpoints")).await.map_err(unavailable)?;
        names.sort();
        Ok(names)
    }

    async fn discard(
        &self,
        ids: &[DeliveryId],
        reason: &str,
        only: Option<DeliveryState>,
        now: Millis,
    ) -> Result<DiscardCount, StoreError> {
        let script = &self.scripts.discard;
        let mut inv = script.prepare_invoke();
        inv.key(self.key("counts"))
            .key(self.key("open"))
            .key(self.key("dead"))
            .key(self.key("orphaned"))
            .key(self.key("discarded"))
            .arg(&self.keys)
            .arg(self.clock.to_redis(now))
            .arg(reason)
            .arg(only.map_or("", DeliveryState::as_str));
        for id in ids {
            inv.arg(id.as_str());
        }
        let (discarded, skipped, in_flight, not_found): (usize, usize, usize, usize) = self.invoke(&inv, false).await?;
        Ok(DiscardCount { discarded, skipped, in_flight, not_found })
    }

    async fn purge(&self, cutoffs: Cutoffs, _now: Millis, limit: usize) -> Result<Purged, StoreError> {
        // Dedupe keys are their own keys, with their own expiry.
        self.purge_step(cutoffs, limit).await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.read_stats(self.counts().await?).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A write, not a PING: a read-only replica, MISCONF or OOM must show
        // as not ready.
        let _: () = self.conn().set_ex(self.key("heartbeat"), super::now_millis(), 60).await.map_err(unavailable)?;
        Ok(())
    }

    async fn clock_offset_ms(&self) -> Result<Option<i64>, StoreError> {
        schedule::measure_offset(&self.conn).await.map(Some)
    }
}
