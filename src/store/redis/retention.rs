//! Retention on Redis (see `store::retention`): the queues `settled:delivered`
//! and `settled:dead` (event ids scored by when they may have settled),
//! `events` (every stored event by receipt, for counting and the oldest),
//! `replays-done` (finished jobs by when they finished), the `attempts`
//! field of `counts`, and the one-time index of data written before them.

use redis::AsyncCommands;

use super::{RedisStore, StoreError, unavailable};
use crate::store::quarantine::QuarantineStore;
use crate::store::retention::{Class, Cutoffs, Purged, StoreStats};
use crate::store::{Millis, ReplayJob};

impl RedisStore {
    pub(super) async fn purge_step(&self, cutoffs: Cutoffs, limit: usize) -> Result<Purged, StoreError> {
        // While Redis rewrites its AOF (a forked child writing the whole
        // dataset), every admission's fsync competes with it: removal waits,
        // adding nothing to that write load (BENCHMARKS.md, "Retention").
        if self.aof_rewriting().await {
            return Ok(Purged { interrupted: true, ..Purged::default() });
        }
        let mut inv = self.scripts.purge.prepare_invoke();
        inv.key(self.key("counts"))
            .key(self.key("index"))
            .key(self.key("dead"))
            .key(self.key("discarded"))
            .key(self.key("events"))
            .key(self.key("replays-done"))
            .arg(&self.keys)
            .arg(cutoffs.delivered)
            .arg(cutoffs.dead)
            .arg(cutoffs.replay_jobs)
            .arg(limit);
        // Not retried: a second run after a dropped connection finds the
        // entries gone and does nothing, but the first run's counts would
        // be lost to the caller; the next step goes on.
        let (events, deliveries, attempts, replay_jobs, examined): (u64, u64, u64, u64, usize) =
            self.invoke(&inv, false).await?;
        Ok(Purged { events, deliveries, attempts, replay_jobs, examined, interrupted: false, gives_way: false })
    }

    /// Whether the server is rewriting its AOF now. A server that will not
    /// say (INFO refused by an ACL) counts as not rewriting.
    async fn aof_rewriting(&self) -> bool {
        let info: Result<String, _> = redis::cmd("INFO").arg("persistence").query_async(&mut self.conn()).await;
        info.is_ok_and(|i| i.lines().any(|l| l.trim() == "aof_rewrite_in_progress:1"))
    }

    pub(super) async fn read_stats(&self, deliveries: crate::store::Counts) -> Result<StoreStats, StoreError> {
        let mut conn = self.conn();
        let (events, attempts, replays, dedupe_keys, settled_delivered, settled_dead): (
            u64,
            Option<i64>,
            u64,
            u64,
            u64,
            u64,
        ) = redis::pipe()
            .zcard(self.key("events"))
            .hget(self.key("counts"), "attempts")
            .scard(self.key("replays-open"))
            .zcard(self.key("dedupe-exp"))
            .zcard(self.key("settled:delivered"))
            .zcard(self.key("settled:dead"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let done: u64 = conn.zcard(self.key("replays-done")).await.map_err(unavailable)?;
        let oldest: Vec<(String, f64)> = conn.zrange_withscores(self.key("events"), 0, 0).await.map_err(unavailable)?;
        // The whole server's memory: a prefix's share is not cheap to know.
        let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await.unwrap_or_default();
        let bytes =
            info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        Ok(StoreStats {
            events,
            deliveries,
            attempts: attempts.unwrap_or(0).max(0) as u64,
            replay_jobs: replays + done,
            dedupe_keys,
            retention_queue: settled_delivered + settled_dead,
            bytes,
            oldest_event_at: oldest.first().map(|(_, at)| *at as Millis),
            quarantine: self.quarantine_size().await?,
        })
    }

    /// Data written before retention: index every event, queue every
    /// settled one, count attempts and index finished replay jobs, once, by
    /// walking the listing index and (for events without deliveries and
    /// for jobs) scanning the prefix's keys. A new prefix has none of it.
    /// Attempts counted while another relay records more may be off by
    /// those: the count is for the operator's eye, nothing depends on it.
    pub(super) async fn build_retention_index(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let marker = self.key("retention-index");
        if conn.exists(&marker).await.map_err(unavailable)? {
            return Ok(());
        }
        let existing: usize = conn
            .exists(&[self.key("counts"), self.key("index"), self.key("dedupe-exp"), self.key("replays-open")])
            .await
            .map_err(unavailable)?;
        if existing == 0 {
            let _: () = conn.set(&marker, 1).await.map_err(unavailable)?;
            return Ok(());
        }
        // One builder: relays starting together would otherwise re-add
        // events another's purge already removed. The others go on; purging
        // waits for the marker (purge.lua).
        let lock = self.key("retention-index-building");
        let took: Option<String> = redis::cmd("SET")
            .arg(&lock)
            .arg(std::process::id())
            .arg("NX")
            .arg("PX")
            .arg(600_000)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if took.is_none() {
            tracing::info!("another relay is indexing older data for retention; removal waits for it");
            return Ok(());
        }
        let now = crate::store::now_millis();
        let mut attempts: i64 = 0;
        let mut upper = "+".to_owned();
        loop {
            let ids = self.index_page(&upper).await?;
            let Some(last) = ids.last().cloned() else { break };
            let mut pipe = redis::pipe();
            for d in self.deliveries(&ids).await? {
                pipe.zadd(self.key("events"), d.event_id.as_str(), d.created_at).ignore();
                if let Some(class) = Class::of(d.state) {
                    let queue = self.key(&format!("settled:{}", class.as_str()));
                    pipe.zadd(queue, d.event_id.as_str(), d.updated_at).ignore();
                }
                attempts += i64::from(d.attempts);
            }
            let _: () = pipe.query_async(&mut conn).await.map_err(unavailable)?;
            upper = format!("({last}");
        }
        // Events without deliveries, and finished jobs: only a scan finds them.
        for (pattern, is_job) in [("event:*", false), ("replay:*", true)] {
            let mut cursor: u64 = 0;
            loop {
                let (next, keys) = self.scan_page(pattern, cursor).await?;
                for key in keys {
                    if is_job {
                        let raw: Option<String> = conn.get(&key).await.map_err(unavailable)?;
                        if let Some(job) = raw.and_then(|r| serde_json::from_str::<ReplayJob>(&r).ok())
                            && job.finished
                        {
                            let _: () = conn
                                .zadd(self.key("replays-done"), &job.id, job.updated_at)
                                .await
                                .map_err(unavailable)?;
                        }
                        continue;
                    }
                    let Some(id) = key.strip_prefix(&format!("{}event:", self.keys)) else { continue };
                    let indexed: Option<f64> = conn.zscore(self.key("events"), id).await.map_err(unavailable)?;
                    if indexed.is_none() {
                        // Its receipt time is in the JSON; kept a full
                        // retention from the upgrade instead.
                        let _: () = conn.zadd(self.key("events"), id, now).await.map_err(unavailable)?;
                        let _: () = conn.zadd(self.key("settled:delivered"), id, now).await.map_err(unavailable)?;
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        let _: () = conn.hset(self.key("counts"), "attempts", attempts).await.map_err(unavailable)?;
        let _: () = conn.set(&marker, 1).await.map_err(unavailable)?;
        let _: () = conn.del(&lock).await.map_err(unavailable)?;
        Ok(())
    }
}
