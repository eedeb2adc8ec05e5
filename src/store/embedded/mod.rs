//! The embedded store: one redb file, for a single relay process.
//!
//! **One writer thread, group commit.** redb allows one write transaction at
//! a time and each durable commit costs an fsync. Every write (admissions,
//! claims, finishes, replays, sweeps) is therefore sent to a dedicated
//! thread, which takes everything queued — up to [`MAX_BATCH`] operations —
//! applies it in one transaction and commits once. Under load a single fsync
//! covers hundreds of admissions; when idle, a lone admission commits at
//! once. Nobody is answered before the commit that holds their write is on
//! disk, and a failed commit fails every operation in it, so a 200 always
//! means stored. Reads run on the blocking pool against MVCC snapshots and
//! never wait for the writer.
//!
//! **Recovery.** After an I/O error (a full disk, a vanished device) redb
//! refuses further writes until the database is reopened. The writer then
//! answers `Unavailable` and tries to reopen before each later batch, so the
//! relay comes back by itself once the disk does.
//!
//! Layout: event ids are hashes, so the tree keyed by them takes its inserts
//! at random pages, and every admission dirties one. That tree,
//! `event_index`, therefore holds only small records (dedupe expiry, body
//! sequence number, delivery ids), so it stays compact and cached; the event
//! JSON, ten times larger, goes to `event_bodies`, keyed by a sequence number
//! and only ever appended to. The other trees are keyed by time and append
//! too: `dedupe_expiry` (for sweeping), `deliveries` (id → record; ids begin
//! with their creation time) and `due`, keyed by the time a
//! delivery next needs attention — its due time while pending, its claim
//! deadline while in flight — so claiming and the visibility timeout are one
//! range scan. `counts` keeps the number of deliveries in each state,
//! updated once per commit.
//!
//! Why redb and not fjall or a journal: "The store decision" in BENCHMARKS.md.
//!
//! **Claims live in memory.** An embedded store serves one process, so a
//! claim needs no disk write: the writer thread keeps a table of claimed
//! deliveries (fencing token, deadline) beside the file, and reads overlay
//! it so that claimed deliveries show as `in_flight`. A claim that dies with
//! the process leaves its delivery `pending` on disk, claimed again as soon
//! as the relay restarts. Only the attempt's outcome is written, once.
//!
//! This file holds the store's handle and its [`Store`] implementation;
//! `writer.rs` the writer thread, `tables/` the tables and every change to
//! them, `listing.rs` the listing of deliveries, `codec.rs` how records are
//! encoded.

mod codec;
mod listing;
mod quarantine;
mod snapshot;
mod tables;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tokio::sync::{mpsc, oneshot};

use super::retention::{Cutoffs, Purged, StoreStats};
use super::{
    Admission, Attempt, Claim, Context, Counts, Delivery, DeliveryFilter, DeliveryId, DeliveryState, DiscardCount,
    EventId, Millis, NewDelivery, NewEvent, Next, Page, Reconciled, ReplayCount, ReplayJob, Store, StoreError,
    StoredEvent, TimelineEntry,
};
use codec::{IndexRecord, corrupt, decode_delivery, unavailable};
use tables::*;
use writer::{DbSlot, Op, Reply, SharedClaims, Writer};

/// Most operations one commit carries.
pub const MAX_BATCH: usize = 2048;
/// redb's page cache. Admissions touch recent pages; a small cache keeps the
/// relay's memory small without costing throughput.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

pub struct EmbeddedStore {
    ops: mpsc::Sender<Op>,
    db: DbSlot,
    /// When the last write batch failed (unix ms), 0 once one succeeded.
    /// 0 while writes commit; after a failed batch, the bytes a readiness
    /// probe must write to show that admissions would commit again.
    failing: Arc<AtomicU64>,
    /// When a readiness check last sent a probe (unix ms): while writes
    /// fail, at most one probe a second, however often `/readyz` is asked.
    last_probe: AtomicU64,
    claims: SharedClaims,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The file, for its size; none for the test backends.
    path: Option<std::path::PathBuf>,
    /// Held while a snapshot is taken.
    snapshotting: tokio::sync::Mutex<()>,
}

impl EmbeddedStore {
    /// Opens (or creates) the database at `path`, creating its directory.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| unavailable(Context::new(format!("cannot create {}", dir.display()), e)))?;
        }
        let file = path.to_owned();
        let mut store = EmbeddedStore::with_opener(path.display().to_string(), move || open_db(&file))?;
        store.path = Some(path.to_owned());
        Ok(store)
    }

    /// Starts the store on whatever `open` opens: the file, or in tests a
    /// backend that can be made to fail. `open` is called again to reopen
    /// after an I/O error.
    fn with_opener(
        label: String,
        open: impl Fn() -> Result<Database, StoreError> + Send + 'static,
    ) -> Result<EmbeddedStore, StoreError> {
        let db = open()?;
        let slot: DbSlot = Arc::new(RwLock::new(Some(Arc::new(db))));
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        let failing = Arc::new(AtomicU64::new(0));
        let claims = SharedClaims::default();
        let writer = Writer {
            label,
            open: Box::new(open),
            db: slot.clone(),
            ops: rx,
            failing: failing.clone(),
            claims: claims.clone(),
            last_durable: std::time::Instant::now(),
        };
        let handle = std::thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| unavailable(Context::new("cannot start the writer thread", e)))?;
        Ok(EmbeddedStore {
            ops: tx,
            db: slot,
            failing,
            last_probe: AtomicU64::new(0),
            claims,
            writer: std::sync::Mutex::new(Some(handle)),
            path: None,
            snapshotting: tokio::sync::Mutex::new(()),
        })
    }

    /// Finishes queued writes and closes the file, so it can be reopened.
    pub async fn close(self) {
        let EmbeddedStore { ops, db, writer, .. } = self;
        drop(ops);
        if let Ok(mut slot) = db.write() {
            *slot = None;
        }
        let handle = writer.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.ops.send(make(tx)).await.map_err(|_| unavailable("the writer thread has stopped"))?;
        rx.await.map_err(|_| unavailable("the writer thread dropped the request"))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self
            .db
            .read()
            .map_err(|_| unavailable("lock poisoned"))?
            .clone()
            .ok_or_else(|| unavailable("the database is being reopened"))?;
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(unavailable)?;
            f(&txn)
        })
        .await
        .map_err(|e| unavailable(Context::new("read task failed", e)))?
    }
}

fn open_db(path: &Path) -> Result<Database, StoreError> {
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| unavailable(Context::new(format!("cannot open {}", path.display()), e)))?;
    init_tables(db)
}

/// The index record of a stored event; none for one retention removed.
fn read_index(txn: &redb::ReadTransaction, id: &str) -> Result<Option<IndexRecord>, StoreError> {
    let table = txn.open_table(EVENT_INDEX).map_err(unavailable)?;
    match table.get(id).map_err(unavailable)? {
        Some(g) => IndexRecord::decode(id, g.value()).map(|r| Some(r).filter(|r| !r.is_removed())),
        None => Ok(None),
    }
}

fn read_delivery(txn: &redb::ReadTransaction, id: &str) -> Result<Option<Delivery>, StoreError> {
    let table = txn.open_table(DELIVERIES).map_err(unavailable)?;
    match table.get(id).map_err(unavailable)? {
        Some(g) => decode_delivery(id, g.value()).map(Some),
        None => Ok(None),
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn admit(
        &self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        dedupe_ttl_ms: u64,
    ) -> Result<Admission, StoreError> {
        self.call(|reply| Op::Admit { event, deliveries, ttl_ms: dedupe_ttl_ms, reply }).await
    }

    async fn event(&self, id: &EventId) -> Result<Option<StoredEvent>, StoreError> {
        let id = id.to_owned();
        self.read(move |txn| {
            let Some(record) = read_index(txn, id.as_str())? else { return Ok(None) };
            let bodies = txn.open_table(EVENT_BODIES).map_err(unavailable)?;
            let json = bodies
                .get(record.body_seq)
                .map_err(unavailable)?
                .ok_or_else(|| corrupt(id.as_str(), "event body missing"))?;
            Ok(Some(StoredEvent { id: id.clone(), json: json.value().to_vec() }))
        })
        .await
    }

    async fn subject(&self, key: &str) -> Result<Vec<TimelineEntry>, StoreError> {
        let key = key.to_owned();
        let claims = self.claims.clone();
        self.read(move |txn| {
            let timeline = txn.open_table(TIMELINE).map_err(unavailable)?;
            let bodies = txn.open_table(EVENT_BODIES).map_err(unavailable)?;
            let mut out = Vec::new();
            for entry in timeline.range((key.as_str(), 0u64)..=(key.as_str(), u64::MAX)).map_err(unavailable)? {
                let (k, v) = entry.map_err(unavailable)?;
                let (sequence, id) = (k.value().1, EventId::from(v.value()));
                let Some(record) = read_index(txn, id.as_str())?.filter(|r| !r.is_removed()) else { continue };
                let Some(json) = bodies.get(record.body_seq).map_err(unavailable)? else { continue };
                let mut deliveries = Vec::new();
                for did in &record.delivery_ids {
                    if let Some(d) = read_delivery(txn, did.as_str())? {
                        deliveries.push(d);
                    }
                }
                let event = StoredEvent { id, json: json.value().to_vec() };
                out.push(TimelineEntry { sequence, event, deliveries });
            }
            let claims = claims.lock().map_err(|_| unavailable("lock poisoned"))?;
            out.iter_mut().flat_map(|e| e.deliveries.iter_mut()).for_each(|d| claims.overlay(d));
            Ok(out)
        })
        .await
    }

    async fn event_deliveries(&self, event_id: &EventId) -> Result<Vec<Delivery>, StoreError> {
        let event_id = event_id.to_owned();
        let claims = self.claims.clone();
        self.read(move |txn| {
            let mut out = Vec::new();
            for id in read_index(txn, event_id.as_str())?.map(|r| r.delivery_ids).unwrap_or_default() {
                if let Some(d) = read_delivery(txn, id.as_str())? {
                    out.push(d);
                }
            }
            let claims = claims.lock().map_err(|_| unavailable("lock poisoned"))?;
            out.iter_mut().for_each(|d| claims.overlay(d));
            Ok(out)
        })
        .await
    }

    async fn delivery(&self, id: &DeliveryId) -> Result<Option<(Delivery, Vec<Attempt>)>, StoreError> {
        let id = id.to_owned();
        let claims = self.claims.clone();
        self.read(move |txn| {
            let Some(mut d) = read_delivery(txn, id.as_str())? else { return Ok(None) };
            claims.lock().map_err(|_| unavailable("lock poisoned"))?.overlay(&mut d);
            let table = txn.open_table(ATTEMPTS).map_err(unavailable)?;
            let mut attempts = Vec::new();
            for entry in table.range((id.as_str(), 0u32)..=(id.as_str(), u32::MAX)).map_err(unavailable)? {
                let (_, v) = entry.map_err(unavailable)?;
                attempts.push(serde_json::from_slice(v.value()).map_err(|e| corrupt(id.as_str(), e))?);
            }
            Ok(Some((d, attempts)))
        })
        .await
    }

    async fn claim_due(
        &self,
        endpoint: &str,
        now: Millis,
        limit: usize,
        visibility_ms: u64,
    ) -> Result<Vec<Claim>, StoreError> {
        let endpoint = endpoint.to_owned();
        self.call(|reply| Op::Claim { endpoint, now, limit, visibility_ms, reply }).await
    }

    async fn finish(
        &self,
        delivery_id: &DeliveryId,
        claim_token: u64,
        attempt: Attempt,
        next: Next,
    ) -> Result<bool, StoreError> {
        let id = delivery_id.to_owned();
        self.call(|reply| Op::Finish { id, token: claim_token, attempt, next, reply }).await
    }

    async fn release(&self, delivery_id: &DeliveryId, claim_token: u64, due: Millis) -> Result<bool, StoreError> {
        let id = delivery_id.to_owned();
        self.call(|reply| Op::Release { id, token: claim_token, due, reply }).await
    }

    async fn list(&self, filter: &DeliveryFilter, cursor: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        let filter = filter.clone();
        let cursor = cursor.map(str::to_owned);
        let claims = self.claims.clone();
        self.read(move |txn| listing::page(txn, &claims, &filter, cursor, limit)).await
    }

    async fn replay(
        &self,
        ids: &[DeliveryId],
        include_delivered: bool,
        now: Millis,
    ) -> Result<ReplayCount, StoreError> {
        let ids = ids.to_vec();
        self.call(|reply| Op::Replay { ids, include_delivered, now, reply }).await
    }

    async fn create_replay_job(&self, job: &ReplayJob) -> Result<(), StoreError> {
        let job = Box::new(job.clone());
        self.call(|reply| Op::CreateJob { job, reply }).await
    }

    async fn replay_job(&self, id: &str) -> Result<Option<ReplayJob>, StoreError> {
        let id = id.to_owned();
        self.read(move |txn| {
            let table = txn.open_table(REPLAY_JOBS).map_err(unavailable)?;
            let Some(v) = table.get(id.as_str()).map_err(unavailable)? else { return Ok(None) };
            serde_json::from_slice(v.value()).map(Some).map_err(|e| corrupt(&id, e))
        })
        .await
    }

    async fn unfinished_replay_jobs(&self) -> Result<Vec<ReplayJob>, StoreError> {
        self.read(move |txn| {
            let table = txn.open_table(REPLAY_JOBS).map_err(unavailable)?;
            let mut jobs = Vec::new();
            for entry in table.iter().map_err(unavailable)? {
                let (k, v) = entry.map_err(unavailable)?;
                match serde_json::from_slice::<ReplayJob>(v.value()) {
                    Ok(job) if !job.finished => jobs.push(job),
                    Ok(_) => {}
                    Err(e) => tracing::error!(job = %k.value(), error = %e, "unreadable replay job skipped"),
                }
            }
            Ok(jobs)
        })
        .await
    }

    async fn replay_step(
        &self,
        job: &ReplayJob,
        ids: &[DeliveryId],
        now: Millis,
    ) -> Result<Option<ReplayJob>, StoreError> {
        let (job, ids) = (Box::new(job.clone()), ids.to_vec());
        self.call(|reply| Op::ReplayStep { job, ids, now, reply }).await
    }

    async fn sweep(&self, now: Millis) -> Result<usize, StoreError> {
        self.call(|reply| Op::Sweep { now, reply }).await
    }

    async fn heal_gates(&self, after: Option<String>, limit: usize) -> Result<(usize, Option<String>), StoreError> {
        let now = super::now_millis();
        self.call(|reply| Op::HealGates { after, limit, now, reply }).await
    }

    async fn oldest_open(&self) -> Result<Option<Millis>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(OPEN).map_err(unavailable)?;
            let first = table.first().map_err(unavailable)?;
            Ok(first.and_then(|(k, _)| DeliveryId::from(k.value()).created_at()))
        })
        .await
    }

    async fn oldest_open_by_endpoint(&self, scan: usize) -> Result<Vec<(String, Millis)>, StoreError> {
        self.read(move |txn| {
            let table = txn.open_table(OPEN).map_err(unavailable)?;
            let mut oldest: Vec<(String, Millis)> = Vec::new();
            for entry in table.iter().map_err(unavailable)?.take(scan) {
                let (key, _) = entry.map_err(unavailable)?;
                // An unreadable record is for the listings to show, not a
                // reason to fail the overview.
                if let Ok(Some(d)) = read_delivery(txn, key.value())
                    && !oldest.iter().any(|(e, _)| *e == d.endpoint)
                {
                    oldest.push((d.endpoint, d.created_at));
                }
            }
            Ok(oldest)
        })
        .await
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        let claims = self.claims.clone();
        self.read(move |txn| {
            let table = txn.open_table(COUNTS).map_err(unavailable)?;
            let mut counts = DeliveryState::ALL.map(|s| (s, 0));
            for (state, n) in &mut counts {
                *n = table.get(state.as_str()).map_err(unavailable)?.map(|g| g.value()).unwrap_or(0);
            }
            // Claimed deliveries are pending on disk and in flight in memory.
            let in_flight = claims.lock().map_err(|_| unavailable("lock poisoned"))?.live.len() as u64;
            let pending = &mut counts[DeliveryState::Pending.index()].1;
            *pending = pending.saturating_sub(in_flight);
            counts[DeliveryState::InFlight.index()].1 = in_flight;
            Ok(counts)
        })
        .await
    }

    async fn reconcile_endpoints(
        &self,
        endpoints: &[String],
        orphan_others: bool,
        now: Millis,
    ) -> Result<Reconciled, StoreError> {
        let endpoints = endpoints.to_vec();
        self.call(|reply| Op::Reconcile { endpoints, orphan_others, now, reply }).await
    }

    async fn known_endpoints(&self) -> Result<Vec<String>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(ENDPOINTS).map_err(unavailable)?;
            table
                .iter()
                .map_err(unavailable)?
                .map(|e| e.map(|(k, _)| k.value().to_owned()).map_err(unavailable))
                .collect()
        })
        .await
    }

    async fn discard(
        &self,
        ids: &[DeliveryId],
        reason: &str,
        only: Option<DeliveryState>,
        now: Millis,
    ) -> Result<DiscardCount, StoreError> {
        let (ids, reason) = (ids.to_vec(), reason.to_owned());
        self.call(|reply| Op::Discard { ids, reason, only, now, reply }).await
    }

    async fn purge(&self, cutoffs: Cutoffs, now: Millis, limit: usize) -> Result<Purged, StoreError> {
        self.call(|reply| Op::Purge { cutoffs, now, limit, reply }).await
    }

    async fn snapshot(&self) -> Result<Option<(std::fs::File, u64)>, StoreError> {
        // Beside the store (the same disk, which must have the room), under
        // a name no store uses; unlinked as soon as it is open for reading.
        let dir = match &self.path {
            Some(p) => {
                p.parent().filter(|d| !d.as_os_str().is_empty()).map(Path::to_owned).unwrap_or_else(|| ".".into())
            }
            None => std::env::temp_dir(),
        };
        let to = dir.join(format!(".ipn-relay-snapshot-{}-{:016x}.redb", std::process::id(), rand::random::<u64>()));
        // One at a time: each is a full copy on the store's disk.
        let Ok(_one) = self.snapshotting.try_lock() else {
            return Err(unavailable("a snapshot is already being taken; try again when it is done"));
        };
        self.read(move |txn| snapshot::copy(txn, &to)).await.map(Some)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let deliveries = self.counts().await?;
        let bytes = match &self.path {
            Some(p) => std::fs::metadata(p)
                .map_err(|e| unavailable(Context::new(format!("cannot stat {}", p.display()), e)))?
                .len(),
            None => 0,
        };
        self.read(move |txn| listing::stats(txn, deliveries, bytes)).await
    }

    /// Ready while writes commit. A heartbeat alone cannot tell: it may fit
    /// in pages the file already has while admissions need the file to
    /// grow on a full disk. So after a failed write every ping also writes
    /// a probe as large as the failed admissions, and the store stays not
    /// ready until a probe or a real write commits; no timer makes it ready.
    async fn ping(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::Relaxed) != 0 {
            let now = super::now_millis();
            let last = self.last_probe.swap(now, Ordering::Relaxed);
            if now.saturating_sub(last) < 1_000 {
                self.last_probe.store(last, Ordering::Relaxed);
                return Err(unavailable("writes are failing"));
            }
        }
        self.call(|reply| Op::Ping { reply }).await?;
        if self.failing.load(Ordering::Relaxed) != 0 {
            return Err(unavailable("writes are failing"));
        }
        Ok(())
    }
}

impl EmbeddedStore {
    /// The number of stored events (tests and diagnostics).
    pub async fn event_count(&self) -> Result<u64, StoreError> {
        self.read(|txn| txn.open_table(EVENT_BODIES).map_err(unavailable)?.len().map_err(unavailable)).await
    }
}

#[cfg(test)]
mod powerloss_tests;

#[cfg(test)]
mod tests;
