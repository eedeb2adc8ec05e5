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
//! **Claims live in memory.** An embedded store serves one process, so a
//! claim needs no disk write: the writer thread keeps a table of claimed
//! deliveries (fencing token, deadline) beside the file, and reads overlay
//! it so that claimed deliveries show as `in_flight`. A claim that dies with
//! the process leaves its delivery `pending` on disk, claimed again as soon
//! as the relay restarts. Only the attempt's outcome is written, once.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
    WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

use super::{
    Admission, Attempt, Claim, Counts, Delivery, DeliveryFilter, DeliveryState, DiscardCount, LIST_SCAN_LIMIT, Millis,
    NewDelivery, NewEvent, Next, Page, Reconciled, ReplayCount, ReplayJob, Store, StoreError, StoredEvent,
};

/// Most operations one commit carries.
pub const MAX_BATCH: usize = 2048;
/// redb's page cache. Admissions touch recent pages; a small cache keeps the
/// relay's memory small without costing throughput.
const CACHE_BYTES: usize = 16 * 1024 * 1024;
/// A commit slower than this is logged: every admission in it waited.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(100);
/// Most expired dedupe keys one sweep removes.
const SWEEP_CHUNK: usize = 10_000;

const EVENT_INDEX: TableDefinition<&str, &[u8]> = TableDefinition::new("event_index");
const EVENT_BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("event_bodies");
const DEDUPE_EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("dedupe_expiry");
const DELIVERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("deliveries");
const ATTEMPTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("attempts");
const DUE: TableDefinition<(&str, u64, &str), ()> = TableDefinition::new("due");
const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("counts");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REPLAY_JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("replay_jobs");
/// Ids of deliveries pending or in flight; ids sort by creation time, so the
/// first is the oldest open delivery.
const OPEN: TableDefinition<&str, ()> = TableDefinition::new("open");
/// (state, id) of every dead or orphaned delivery: what an operator lists
/// and acts on, without scanning every delivery ever made.
const BY_STATE: TableDefinition<(&str, &str), ()> = TableDefinition::new("by_state");
/// (endpoint, id) of every orphaned delivery, to take them back by endpoint.
const ORPHANED: TableDefinition<(&str, &str), ()> = TableDefinition::new("orphaned");
/// Every endpoint name this file has seen configured.
const ENDPOINTS: TableDefinition<&str, ()> = TableDefinition::new("endpoints");

/// Scratch space for readiness probes: see [`EmbeddedStore::ping`].
const PROBE: TableDefinition<&str, &[u8]> = TableDefinition::new("probe");
/// The smallest readiness probe written after a failed write.
const MIN_PROBE_BYTES: u64 = 64 * 1024;

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(key: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { key: key.to_owned(), message: e.to_string() }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Op {
    Admit { event: NewEvent, deliveries: Vec<NewDelivery>, ttl_ms: u64, reply: Reply<Admission> },
    Claim { endpoint: String, now: Millis, limit: usize, visibility_ms: u64, reply: Reply<Vec<Claim>> },
    Finish { id: String, token: u64, attempt: Attempt, next: Next, reply: Reply<bool> },
    Release { id: String, token: u64, due: Millis, reply: Reply<bool> },
    Replay { ids: Vec<String>, include_delivered: bool, now: Millis, reply: Reply<ReplayCount> },
    CreateJob { job: Box<ReplayJob>, reply: Reply<()> },
    ReplayStep { job: Box<ReplayJob>, ids: Vec<String>, now: Millis, reply: Reply<Option<ReplayJob>> },
    Sweep { now: Millis, reply: Reply<usize> },
    Reconcile { endpoints: Vec<String>, orphan_others: bool, now: Millis, reply: Reply<Reconciled> },
    Discard { ids: Vec<String>, reason: String, now: Millis, reply: Reply<DiscardCount> },
    Ping { reply: Reply<()> },
}

/// Sends a batch member's answer once its commit's fate is known.
type Answer = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

fn answer<T: Send + 'static>(reply: Reply<T>, value: T) -> Answer {
    Box::new(move |committed| {
        let _ = reply.send(committed.map(|()| value));
    })
}

/// A claimed delivery: its fencing token and the end of its visibility.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    token: u64,
    until: Millis,
}

/// Deliveries claimed by this process. Only the writer thread changes it.
#[derive(Debug, Default)]
struct ClaimTable {
    live: std::collections::HashMap<String, InFlight>,
    last_token: u64,
}

impl ClaimTable {
    /// Shows a claimed delivery as in flight, as a reader should see it.
    fn overlay(&self, d: &mut Delivery) {
        if let Some(c) = self.live.get(&d.id) {
            d.state = DeliveryState::InFlight;
            d.claim_token = c.token;
            d.next_attempt_at = Some(c.until);
        }
    }

    /// Whether `token` holds the claim on `id`.
    fn holds(&self, id: &str, token: u64) -> bool {
        self.live.get(id).is_some_and(|c| c.token == token)
    }
}

type SharedClaims = Arc<std::sync::Mutex<ClaimTable>>;

/// The shared handle to the open database, replaced on reopen.
type DbSlot = Arc<RwLock<Option<Arc<Database>>>>;

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
}

impl EmbeddedStore {
    /// Opens (or creates) the database at `path`, creating its directory.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let file = path.to_owned();
        EmbeddedStore::with_opener(path.display().to_string(), move || open_db(&file))
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
        };
        let handle = std::thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(EmbeddedStore {
            ops: tx,
            db: slot,
            failing,
            last_probe: AtomicU64::new(0),
            claims,
            writer: std::sync::Mutex::new(Some(handle)),
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
        .map_err(|e| unavailable(format!("read task failed: {e}")))?
    }
}

fn open_db(path: &Path) -> Result<Database, StoreError> {
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
    init_tables(db)
}

/// Creates every table up front so readers never meet a missing one.
fn init_tables(db: Database) -> Result<Database, StoreError> {
    let mut txn = db.begin_write().map_err(unavailable)?;
    txn.set_durability(Durability::Immediate).map_err(unavailable)?;
    let mut t = Tables::open(&txn)?;
    // Files written before the open-delivery index existed: build it once
    // from the schedule, which lists every pending delivery.
    if t.meta.get("open_index").map_err(unavailable)?.is_none() {
        let ids: Vec<String> = t
            .due
            .iter()
            .map_err(unavailable)?
            .map(|e| e.map(|(k, _)| k.value().2.to_owned()).map_err(unavailable))
            .collect::<Result<_, _>>()?;
        for id in &ids {
            t.open.insert(id.as_str(), ()).map_err(unavailable)?;
        }
        t.meta.insert("open_index", 1).map_err(unavailable)?;
    }
    // Files written before the state index and the endpoint list: index
    // every dead delivery, and remember the endpoints of the schedule (the
    // only deliveries an endpoint's removal leaves stranded).
    if t.meta.get("state_index").map_err(unavailable)?.is_none() {
        let mut dead = Vec::new();
        for entry in t.deliveries.iter().map_err(unavailable)? {
            let (k, v) = entry.map_err(unavailable)?;
            if decode_delivery(k.value(), v.value()).is_ok_and(|d| d.state == DeliveryState::Dead) {
                dead.push(k.value().to_owned());
            }
        }
        for id in &dead {
            t.by_state.insert((DeliveryState::Dead.as_str(), id.as_str()), ()).map_err(unavailable)?;
        }
        for endpoint in t.scheduled_endpoints()? {
            t.endpoints.insert(endpoint.as_str(), ()).map_err(unavailable)?;
        }
        t.meta.insert("state_index", 1).map_err(unavailable)?;
    }
    drop(t);
    txn.commit().map_err(unavailable)?;
    Ok(db)
}

struct Writer {
    /// What the store is, for logs.
    label: String,
    open: Box<dyn Fn() -> Result<Database, StoreError> + Send>,
    db: DbSlot,
    ops: mpsc::Receiver<Op>,
    failing: Arc<AtomicU64>,
    claims: SharedClaims,
}

impl Writer {
    fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(op) = self.ops.blocking_recv() {
            batch.push(op);
            while batch.len() < MAX_BATCH {
                match self.ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
        }
    }

    fn current_db(&mut self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = self.db.read().map_err(|_| unavailable("lock poisoned"))?.clone() {
            return Ok(db);
        }
        // Reopen after an I/O error. Readers may still hold the old handle
        // for a moment; then the file is still locked and we try next batch.
        let db = Arc::new((self.open)()?);
        *self.db.write().map_err(|_| unavailable("lock poisoned"))? = Some(db.clone());
        tracing::info!(store = %self.label, "embedded store reopened");
        Ok(db)
    }

    /// Applies the batch in one transaction and commits it. On failure,
    /// returns the answers of the ops already applied, to be failed too, and
    /// puts the claim table back as it was: a claim or finish whose commit
    /// failed must not have happened in memory either.
    fn try_commit(&mut self, batch: &mut Vec<Op>, probe: u64) -> Result<Vec<Answer>, (StoreError, Vec<Answer>)> {
        let touches_claims =
            batch.iter().any(|op| matches!(op, Op::Claim { .. } | Op::Finish { .. } | Op::Release { .. }));
        let snapshot = match touches_claims {
            true => Some(self.claims.lock().map_err(|_| (unavailable("lock poisoned"), Vec::new()))?.live.clone()),
            false => None,
        };
        let result = self.apply_and_commit(batch, probe);
        if let (Err(_), Some(live)) = (&result, snapshot)
            && let Ok(mut claims) = self.claims.lock()
        {
            claims.live = live;
        }
        result
    }

    fn apply_and_commit(&mut self, batch: &mut Vec<Op>, probe: u64) -> Result<Vec<Answer>, (StoreError, Vec<Answer>)> {
        let db = self.current_db().map_err(|e| (e, Vec::new()))?;
        let mut txn = db.begin_write().map_err(|e| (unavailable(e), Vec::new()))?;
        txn.set_durability(Durability::Immediate).map_err(|e| (unavailable(e), Vec::new()))?;
        let mut answers = Vec::with_capacity(batch.len());
        {
            let mut t = Tables::open(&txn).map_err(|e| (e, Vec::new()))?;
            let mut claims = self.claims.lock().map_err(|_| (unavailable("lock poisoned"), Vec::new()))?;
            for op in batch.drain(..) {
                match apply(&mut t, &mut claims, op, probe) {
                    Ok(a) => answers.push(a),
                    Err((e, a)) => {
                        answers.push(a);
                        return Err((e, answers));
                    }
                }
            }
            if let Err(e) = t.flush_counts() {
                return Err((e, answers));
            }
        }
        match txn.commit() {
            Ok(()) => Ok(answers),
            Err(e) => Err((unavailable(e), answers)),
        }
    }

    fn commit_batch(&mut self, batch: &mut Vec<Op>) {
        // What a probe must write to stand for this batch, should it fail.
        let need = batch
            .iter()
            .map(|op| match op {
                Op::Admit { event, deliveries, .. } => (event.json.len() + 1024 * (deliveries.len() + 1)) as u64,
                _ => 0,
            })
            .max()
            .unwrap_or(0)
            .max(MIN_PROBE_BYTES);
        // Only an admission, or a probe as large as the failed writes, shows
        // that admissions commit again: claims, finishes and heartbeats are
        // small enough to fit in pages the file already has.
        let probe = self.failing.load(Ordering::Relaxed);
        let proves =
            batch.iter().any(|op| matches!(op, Op::Admit { .. }) || (probe > 0 && matches!(op, Op::Ping { .. })));
        let ops = batch.len();
        let started = std::time::Instant::now();
        let result = self.try_commit(batch, probe);
        let took = started.elapsed();
        if took >= SLOW_COMMIT {
            tracing::warn!(ops, took_ms = took.as_millis() as u64, "slow embedded store commit");
        }
        match result {
            Ok(answers) => {
                if proves {
                    self.failing.store(0, Ordering::Relaxed);
                }
                answers.into_iter().for_each(|a| a(Ok(())));
            }
            Err((e, answers)) => {
                self.failing.fetch_max(need, Ordering::Relaxed);
                tracing::error!(error = %e, "embedded store write failed; answering unavailable");
                if matches!(e, StoreError::Unavailable(_)) {
                    // Drop our handle so the next batch reopens the file.
                    if let Ok(mut slot) = self.db.write() {
                        *slot = None;
                    }
                }
                for a in answers {
                    a(Err(e.clone()));
                }
                for op in batch.drain(..) {
                    fail(op, e.clone());
                }
            }
        }
    }
}

fn fail(op: Op, e: StoreError) {
    match op {
        Op::Admit { reply, .. } => drop(reply.send(Err(e))),
        Op::Claim { reply, .. } => drop(reply.send(Err(e))),
        Op::Finish { reply, .. } => drop(reply.send(Err(e))),
        Op::Release { reply, .. } => drop(reply.send(Err(e))),
        Op::Replay { reply, .. } => drop(reply.send(Err(e))),
        Op::CreateJob { reply, .. } => drop(reply.send(Err(e))),
        Op::ReplayStep { reply, .. } => drop(reply.send(Err(e))),
        Op::Sweep { reply, .. } => drop(reply.send(Err(e))),
        Op::Reconcile { reply, .. } => drop(reply.send(Err(e))),
        Op::Discard { reply, .. } => drop(reply.send(Err(e))),
        Op::Ping { reply } => drop(reply.send(Err(e))),
    }
}

/// An answer that reports the op's own failure whatever the commit does.
fn refuse<T: Send + 'static>(reply: Reply<T>, e: StoreError) -> Answer {
    Box::new(move |_| {
        let _ = reply.send(Err(e));
    })
}

/// Applies one op inside the batch's transaction. A storage error abandons
/// the whole batch (the op's answer is returned with it). A corrupt record
/// fails only its own op: every op reads the records it needs before it
/// writes anything, and ops that walk many records skip bad ones, so the
/// error leaves nothing half-done for the commit to keep.
fn apply(t: &mut Tables<'_>, claims: &mut ClaimTable, op: Op, probe: u64) -> Result<Answer, (StoreError, Answer)> {
    macro_rules! run {
        ($reply:expr, $body:expr) => {{
            let reply = $reply;
            match $body {
                Ok(v) => Ok(answer(reply, v)),
                Err(e @ StoreError::Corrupt { .. }) => Ok(refuse(reply, e)),
                Err(e) => Err((e.clone(), refuse(reply, e))),
            }
        }};
    }
    match op {
        Op::Admit { event, deliveries, ttl_ms, reply } => run!(reply, t.admit(event, deliveries, ttl_ms)),
        Op::Claim { endpoint, now, limit, visibility_ms, reply } => {
            run!(reply, t.claim(claims, &endpoint, now, limit, visibility_ms))
        }
        Op::Finish { id, token, attempt, next, reply } => run!(reply, t.finish(claims, &id, token, attempt, next)),
        Op::Release { id, token, due, reply } => run!(reply, t.release(claims, &id, token, due)),
        Op::Replay { ids, include_delivered, now, reply } => {
            run!(reply, t.replay(claims, &ids, include_delivered, now))
        }
        Op::CreateJob { job, reply } => run!(reply, t.create_job(&job)),
        Op::ReplayStep { job, ids, now, reply } => run!(reply, t.replay_step(claims, *job, &ids, now)),
        Op::Sweep { now, reply } => run!(reply, t.sweep(now)),
        Op::Reconcile { endpoints, orphan_others, now, reply } => {
            run!(reply, t.reconcile(claims, &endpoints, orphan_others, now))
        }
        Op::Discard { ids, reason, now, reply } => run!(reply, t.discard(&ids, &reason, now)),
        Op::Ping { reply } => run!(reply, t.ping(probe)),
    }
}

impl Clone for StoreError {
    fn clone(&self) -> Self {
        match self {
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::Corrupt { key, message } => StoreError::Corrupt { key: key.clone(), message: message.clone() },
        }
    }
}

/// Every table, opened once per write transaction.
struct Tables<'txn> {
    index: Table<'txn, &'static str, &'static [u8]>,
    bodies: Table<'txn, u64, &'static [u8]>,
    /// The last body sequence number used.
    body_seq: u64,
    dedupe_expiry: Table<'txn, (u64, &'static str), ()>,
    deliveries: Table<'txn, &'static str, &'static [u8]>,
    attempts: Table<'txn, (&'static str, u32), &'static [u8]>,
    due: Table<'txn, (&'static str, u64, &'static str), ()>,
    counts: Table<'txn, &'static str, u64>,
    meta: Table<'txn, &'static str, u64>,
    replay_jobs: Table<'txn, &'static str, &'static [u8]>,
    open: Table<'txn, &'static str, ()>,
    probe: Table<'txn, &'static str, &'static [u8]>,
    by_state: Table<'txn, (&'static str, &'static str), ()>,
    orphaned: Table<'txn, (&'static str, &'static str), ()>,
    endpoints: Table<'txn, &'static str, ()>,
    /// State-count changes of this batch, written once before commit.
    count_deltas: [i64; DeliveryState::ALL.len()],
}

fn decode_delivery(id: &str, bytes: &[u8]) -> Result<Delivery, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(id, e))
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records always serialise")
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Tables<'txn>, StoreError> {
        Ok(Tables {
            index: txn.open_table(EVENT_INDEX).map_err(unavailable)?,
            bodies: txn.open_table(EVENT_BODIES).map_err(unavailable)?,
            body_seq: 0,
            dedupe_expiry: txn.open_table(DEDUPE_EXPIRY).map_err(unavailable)?,
            deliveries: txn.open_table(DELIVERIES).map_err(unavailable)?,
            attempts: txn.open_table(ATTEMPTS).map_err(unavailable)?,
            due: txn.open_table(DUE).map_err(unavailable)?,
            counts: txn.open_table(COUNTS).map_err(unavailable)?,
            meta: txn.open_table(META).map_err(unavailable)?,
            replay_jobs: txn.open_table(REPLAY_JOBS).map_err(unavailable)?,
            open: txn.open_table(OPEN).map_err(unavailable)?,
            probe: txn.open_table(PROBE).map_err(unavailable)?,
            by_state: txn.open_table(BY_STATE).map_err(unavailable)?,
            orphaned: txn.open_table(ORPHANED).map_err(unavailable)?,
            endpoints: txn.open_table(ENDPOINTS).map_err(unavailable)?,
            count_deltas: [0; DeliveryState::ALL.len()],
        })
        .and_then(|mut t| {
            t.body_seq = t.bodies.last().map_err(unavailable)?.map(|(k, _)| k.value()).unwrap_or(0);
            Ok(t)
        })
    }

    fn bump(&mut self, state: DeliveryState, delta: i64) {
        self.count_deltas[state.index()] += delta;
    }

    /// Writes the batch's state-count changes.
    fn flush_counts(&mut self) -> Result<(), StoreError> {
        for state in DeliveryState::ALL {
            let delta = std::mem::take(&mut self.count_deltas[state.index()]);
            if delta != 0 {
                let key = state.as_str();
                let cur = self.counts.get(key).map_err(unavailable)?.map(|g| g.value()).unwrap_or(0);
                self.counts.insert(key, cur.saturating_add_signed(delta)).map_err(unavailable)?;
            }
        }
        Ok(())
    }

    fn get_delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        match self.deliveries.get(id).map_err(unavailable)? {
            Some(g) => decode_delivery(id, g.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Writes `d` and keeps the due index and state counts in step with the
    /// record it replaces (`old`).
    fn put_delivery(&mut self, old: Option<&Delivery>, d: &Delivery) -> Result<(), StoreError> {
        match (old.is_some_and(|o| is_scheduled(o.state)), is_scheduled(d.state)) {
            (false, true) => drop(self.open.insert(d.id.as_str(), ()).map_err(unavailable)?),
            (true, false) => drop(self.open.remove(d.id.as_str()).map_err(unavailable)?),
            _ => {}
        }
        if old.map(|o| o.state) != Some(d.state) {
            if let Some(o) = old.filter(|o| in_by_state(o.state)) {
                self.by_state.remove((o.state.as_str(), o.id.as_str())).map_err(unavailable)?;
            }
            if in_by_state(d.state) {
                self.by_state.insert((d.state.as_str(), d.id.as_str()), ()).map_err(unavailable)?;
            }
            if let Some(o) = old.filter(|o| o.state == DeliveryState::Orphaned) {
                self.orphaned.remove((o.endpoint.as_str(), o.id.as_str())).map_err(unavailable)?;
            }
            if d.state == DeliveryState::Orphaned {
                self.orphaned.insert((d.endpoint.as_str(), d.id.as_str()), ()).map_err(unavailable)?;
            }
        }
        if let Some(old) = old {
            if let Some(at) = old.next_attempt_at.filter(|_| is_scheduled(old.state)) {
                self.due.remove((old.endpoint.as_str(), at, old.id.as_str())).map_err(unavailable)?;
            }
            if old.state != d.state {
                self.bump(old.state, -1);
                self.bump(d.state, 1);
            }
        } else {
            self.bump(d.state, 1);
        }
        if let Some(at) = d.next_attempt_at.filter(|_| is_scheduled(d.state)) {
            self.due.insert((d.endpoint.as_str(), at, d.id.as_str()), ()).map_err(unavailable)?;
        }
        self.deliveries.insert(d.id.as_str(), encode(d).as_slice()).map_err(unavailable)?;
        Ok(())
    }

    fn get_index(&self, id: &str) -> Result<Option<IndexRecord>, StoreError> {
        match self.index.get(id).map_err(unavailable)? {
            Some(g) => IndexRecord::decode(id, g.value()).map(Some),
            None => Ok(None),
        }
    }

    fn get_body(&self, event_id: &str, seq: u64) -> Result<Vec<u8>, StoreError> {
        match self.bodies.get(seq).map_err(unavailable)? {
            Some(g) => Ok(g.value().to_vec()),
            None => Err(corrupt(event_id, "event body missing")),
        }
    }

    fn admit(&mut self, event: NewEvent, deliveries: Vec<NewDelivery>, ttl_ms: u64) -> Result<Admission, StoreError> {
        let now = event.received_at;
        let previous = self.get_index(&event.id)?;
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
            delivery_ids = prev.delivery_ids;
            // The new body (a new received_at) replaces the old one.
            self.bodies.remove(prev.body_seq).map_err(unavailable)?;
        }
        let expires = now.saturating_add(ttl_ms).max(1);
        self.dedupe_expiry.insert((expires, event.id.as_str()), ()).map_err(unavailable)?;
        for nd in deliveries {
            let d = Delivery::pending(&event, nd);
            self.put_delivery(None, &d)?;
            delivery_ids.push(d.id);
        }
        self.body_seq += 1;
        self.bodies.insert(self.body_seq, event.json.as_slice()).map_err(unavailable)?;
        let record = IndexRecord { dedupe_expires: expires, body_seq: self.body_seq, delivery_ids };
        self.index.insert(event.id.as_str(), record.encode().as_slice()).map_err(unavailable)?;
        Ok(Admission::Accepted)
    }

    fn claim(
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
                        tracing::error!(delivery_id = %id, error = %e, "unreadable delivery record removed from the schedule");
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
            let event_json = match self.get_index(&old.event_id) {
                Ok(Some(event)) => self.get_body(&old.event_id, event.body_seq),
                Ok(None) => Err(corrupt(&old.event_id, "event record missing")),
                Err(e) => Err(e),
            };
            let event_json = match event_json {
                Ok(json) => json,
                Err(e @ StoreError::Corrupt { .. }) => {
                    // Nothing can be delivered: dead, with the reason, so an
                    // operator sees it instead of a silent loop.
                    tracing::error!(delivery_id = %id, error = %e, "delivery's event is unreadable; marking it dead");
                    let mut d = old.clone();
                    d.state = DeliveryState::Dead;
                    d.next_attempt_at = None;
                    d.last_error = Some(e.to_string());
                    d.updated_at = now;
                    self.put_delivery(Some(&old), &d)?;
                    claims.live.remove(&id);
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Pending and due, or a claim past its deadline: the visibility
            // timeout hands it to this claim, with a new token.
            claims.last_token += 1;
            let c = InFlight { token: claims.last_token, until: now.saturating_add(visibility_ms) };
            claims.live.insert(id.clone(), c);
            let mut d = old;
            claims.overlay(&mut d);
            out.push(Claim { delivery: d, event_json });
        }
        Ok(out)
    }

    fn finish(
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
    fn release(&mut self, claims: &mut ClaimTable, id: &str, token: u64, due: Millis) -> Result<bool, StoreError> {
        if !claims.holds(id, token) {
            return Ok(false);
        }
        claims.live.remove(id);
        if let Some(old) = self.get_delivery(id)?.filter(|d| d.next_attempt_at != Some(due)) {
            let mut d = old.clone();
            d.next_attempt_at = Some(due);
            self.put_delivery(Some(&old), &d)?;
        }
        Ok(true)
    }

    fn replay(
        &mut self,
        claims: &ClaimTable,
        ids: &[String],
        include_delivered: bool,
        now: Millis,
    ) -> Result<ReplayCount, StoreError> {
        let mut count = ReplayCount::default();
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            // The same id twice in one request is replayed once.
            if !seen.insert(id.as_str()) {
                continue;
            }
            let old = match self.get_delivery(id) {
                Ok(Some(d)) => d,
                Ok(None) => {
                    count.not_found += 1;
                    continue;
                }
                Err(e @ StoreError::Corrupt { .. }) => {
                    tracing::error!(delivery_id = %id, error = %e, "unreadable delivery record not replayed");
                    count.skipped += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if claims.live.contains_key(id) {
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

    fn create_job(&mut self, job: &ReplayJob) -> Result<(), StoreError> {
        self.replay_jobs.insert(job.id.as_str(), encode(job).as_slice()).map_err(unavailable)?;
        Ok(())
    }

    fn replay_step(
        &mut self,
        claims: &ClaimTable,
        mut job: ReplayJob,
        ids: &[String],
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

    /// A heartbeat; while writes are failing, also `probe` bytes of fresh
    /// data, so that the commit needs the room a failed admission needed.
    /// The probe is removed by the first ping after writes recover.
    fn ping(&mut self, probe: u64) -> Result<(), StoreError> {
        self.meta.insert("heartbeat", super::now_millis()).map_err(unavailable)?;
        if probe == 0 {
            self.probe.remove("probe").map_err(unavailable)?;
        } else {
            let fill: Vec<u8> = (0..probe).map(|i| (i as u8) ^ (super::now_millis() as u8)).collect();
            self.probe.insert("probe", fill.as_slice()).map_err(unavailable)?;
        }
        Ok(())
    }

    /// The distinct endpoints of the schedule (pending deliveries), found by
    /// jumping from one endpoint's entries to the next.
    fn scheduled_endpoints(&self) -> Result<Vec<String>, StoreError> {
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

    fn reconcile(
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
                    if claims.live.contains_key(&id) {
                        continue;
                    }
                    let old = match self.get_delivery(&id) {
                        Ok(Some(d)) if is_scheduled(d.state) => d,
                        Ok(_) => continue,
                        Err(e @ StoreError::Corrupt { .. }) => {
                            tracing::error!(delivery_id = %id, error = %e, "unreadable delivery record left as it is");
                            continue;
                        }
                        Err(e) => return Err(e),
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
                let old = match self.get_delivery(&id) {
                    Ok(Some(d)) if d.state == DeliveryState::Orphaned => d,
                    Ok(_) => {
                        // A stale index entry: the record says otherwise.
                        self.orphaned.remove((endpoint.as_str(), id.as_str())).map_err(unavailable)?;
                        continue;
                    }
                    Err(e @ StoreError::Corrupt { .. }) => {
                        tracing::error!(delivery_id = %id, error = %e, "unreadable delivery record left as it is");
                        continue;
                    }
                    Err(e) => return Err(e),
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

    fn orphaned_ids(&self, endpoint: &str) -> Result<Vec<String>, StoreError> {
        self.orphaned
            .range((endpoint, "")..=(endpoint, "\u{10ffff}"))
            .map_err(unavailable)?
            .map(|e| e.map(|(k, _)| k.value().1.to_owned()).map_err(unavailable))
            .collect()
    }

    fn discard(&mut self, ids: &[String], reason: &str, now: Millis) -> Result<DiscardCount, StoreError> {
        let mut count = DiscardCount::default();
        let mut seen = std::collections::HashSet::new();
        for id in ids.iter().filter(|id| seen.insert(id.as_str())) {
            let old = match self.get_delivery(id) {
                Ok(Some(d)) => d,
                Ok(None) => {
                    count.not_found += 1;
                    continue;
                }
                Err(e @ StoreError::Corrupt { .. }) => {
                    tracing::error!(delivery_id = %id, error = %e, "unreadable delivery record not discarded");
                    count.skipped += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if old.state != DeliveryState::Orphaned {
                count.skipped += 1;
                continue;
            }
            let mut d = old.clone();
            d.state = DeliveryState::Dead;
            d.next_attempt_at = None;
            d.last_error = Some(reason.to_owned());
            d.updated_at = now;
            self.put_delivery(Some(&old), &d)?;
            count.discarded += 1;
        }
        Ok(count)
    }

    fn sweep(&mut self, now: Millis) -> Result<usize, StoreError> {
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
                Ok(Some(mut record)) if record.dedupe_expires == *at => {
                    record.dedupe_expires = 0;
                    self.index.insert(id.as_str(), record.encode().as_slice()).map_err(unavailable)?;
                }
                Ok(_) => {}
                Err(e @ StoreError::Corrupt { .. }) => {
                    tracing::error!(event_id = %id, error = %e, "unreadable event index record left as it is");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(expired.len())
    }
}

/// Whether deliveries in `state` are listed in `by_state`.
fn in_by_state(state: DeliveryState) -> bool {
    matches!(state, DeliveryState::Dead | DeliveryState::Orphaned)
}

/// The index entry of an event: dedupe expiry (0 once swept), where its
/// JSON is, and the ids of its deliveries.
///
/// Encoding: expiry and body sequence as u64 LE, then each delivery id as a
/// length byte and its bytes.
struct IndexRecord {
    dedupe_expires: Millis,
    body_seq: u64,
    delivery_ids: Vec<String>,
}

impl IndexRecord {
    fn encode(&self) -> Vec<u8> {
        let ids: usize = self.delivery_ids.iter().map(|i| i.len() + 1).sum();
        let mut out = Vec::with_capacity(16 + ids);
        out.extend_from_slice(&self.dedupe_expires.to_le_bytes());
        out.extend_from_slice(&self.body_seq.to_le_bytes());
        for id in &self.delivery_ids {
            // Delivery ids are ours: short ASCII, always under 256 bytes.
            out.push(id.len() as u8);
            out.extend_from_slice(id.as_bytes());
        }
        out
    }

    fn decode(key: &str, b: &[u8]) -> Result<IndexRecord, StoreError> {
        let bad = || corrupt(key, "truncated event index record");
        let u64_at =
            |at: usize| b.get(at..at + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes).ok_or_else(bad);
        let (dedupe_expires, body_seq) = (u64_at(0)?, u64_at(8)?);
        let mut pos = 16;
        let mut delivery_ids = Vec::new();
        while pos < b.len() {
            let len = b[pos] as usize;
            let id = b.get(pos + 1..pos + 1 + len).ok_or_else(bad)?;
            delivery_ids.push(String::from_utf8(id.to_vec()).map_err(|e| corrupt(key, e))?);
            pos += 1 + len;
        }
        Ok(IndexRecord { dedupe_expires, body_seq, delivery_ids })
    }
}

/// Whether a delivery in `state` sits in the due index.
fn is_scheduled(state: DeliveryState) -> bool {
    matches!(state, DeliveryState::Pending | DeliveryState::InFlight)
}

fn read_index(txn: &redb::ReadTransaction, id: &str) -> Result<Option<IndexRecord>, StoreError> {
    let table = txn.open_table(EVENT_INDEX).map_err(unavailable)?;
    match table.get(id).map_err(unavailable)? {
        Some(g) => IndexRecord::decode(id, g.value()).map(Some),
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

    async fn event(&self, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        let id = id.to_owned();
        self.read(move |txn| {
            let Some(record) = read_index(txn, &id)? else { return Ok(None) };
            let bodies = txn.open_table(EVENT_BODIES).map_err(unavailable)?;
            let json =
                bodies.get(record.body_seq).map_err(unavailable)?.ok_or_else(|| corrupt(&id, "event body missing"))?;
            Ok(Some(StoredEvent { id: id.clone(), json: json.value().to_vec() }))
        })
        .await
    }

    async fn event_deliveries(&self, event_id: &str) -> Result<Vec<Delivery>, StoreError> {
        let event_id = event_id.to_owned();
        let claims = self.claims.clone();
        self.read(move |txn| {
            let mut out = Vec::new();
            for id in read_index(txn, &event_id)?.map(|r| r.delivery_ids).unwrap_or_default() {
                if let Some(d) = read_delivery(txn, &id)? {
                    out.push(d);
                }
            }
            let claims = claims.lock().map_err(|_| unavailable("lock poisoned"))?;
            out.iter_mut().for_each(|d| claims.overlay(d));
            Ok(out)
        })
        .await
    }

    async fn delivery(&self, id: &str) -> Result<Option<(Delivery, Vec<Attempt>)>, StoreError> {
        let id = id.to_owned();
        let claims = self.claims.clone();
        self.read(move |txn| {
            let Some(mut d) = read_delivery(txn, &id)? else { return Ok(None) };
            claims.lock().map_err(|_| unavailable("lock poisoned"))?.overlay(&mut d);
            let table = txn.open_table(ATTEMPTS).map_err(unavailable)?;
            let mut attempts = Vec::new();
            for entry in table.range((id.as_str(), 0u32)..=(id.as_str(), u32::MAX)).map_err(unavailable)? {
                let (_, v) = entry.map_err(unavailable)?;
                attempts.push(serde_json::from_slice(v.value()).map_err(|e| corrupt(&id, e))?);
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
        delivery_id: &str,
        claim_token: u64,
        attempt: Attempt,
        next: Next,
    ) -> Result<bool, StoreError> {
        let id = delivery_id.to_owned();
        self.call(|reply| Op::Finish { id, token: claim_token, attempt, next, reply }).await
    }

    async fn release(&self, delivery_id: &str, claim_token: u64, due: Millis) -> Result<bool, StoreError> {
        let id = delivery_id.to_owned();
        self.call(|reply| Op::Release { id, token: claim_token, due, reply }).await
    }

    async fn list(&self, filter: &DeliveryFilter, cursor: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        let filter = filter.clone();
        let cursor = cursor.map(str::to_owned);
        let claims = self.claims.clone();
        self.read(move |txn| {
            let table = txn.open_table(DELIVERIES).map_err(unavailable)?;
            let open = txn.open_table(OPEN).map_err(unavailable)?;
            let by_state = txn.open_table(BY_STATE).map_err(unavailable)?;
            // Ids begin with their creation time, so the time window bounds
            // the scan; the cursor is the last id already returned.
            let lower = filter.since.map(|t| format!("dlv_{t:012x}")).unwrap_or_default();
            let mut upper = filter.until.map(|t| format!("dlv_{t:012x}")).unwrap_or_else(|| "\u{10ffff}".into());
            if let Some(c) = cursor.filter(|c| *c < upper) {
                upper = c;
            }
            let range = lower.as_str()..upper.as_str();
            // Pending and in-flight deliveries are the few in the open index:
            // scan it rather than every delivery ever made.
            // So are dead and orphaned ones, in theirs.
            let ids: Box<dyn Iterator<Item = Result<String, StoreError>>> = match filter.state {
                Some(DeliveryState::Pending | DeliveryState::InFlight) => Box::new(
                    open.range(range)
                        .map_err(unavailable)?
                        .rev()
                        .map(|e| e.map(|(k, _)| k.value().to_owned()).map_err(unavailable)),
                ),
                Some(state) if in_by_state(state) => Box::new(
                    by_state
                        .range((state.as_str(), range.start)..(state.as_str(), range.end))
                        .map_err(unavailable)?
                        .rev()
                        .map(|e| e.map(|(k, _)| k.value().1.to_owned()).map_err(unavailable)),
                ),
                _ => Box::new(
                    table
                        .range(range)
                        .map_err(unavailable)?
                        .rev()
                        .map(|e| e.map(|(k, _)| k.value().to_owned()).map_err(unavailable)),
                ),
            };
            let mut items = Vec::new();
            let mut next_cursor = None;
            let mut last_examined: Option<String> = None;
            for (examined, id) in ids.enumerate() {
                let id = id?;
                if examined == LIST_SCAN_LIMIT {
                    next_cursor = last_examined;
                    break;
                }
                last_examined = Some(id.clone());
                let Some(v) = table.get(id.as_str()).map_err(unavailable)? else {
                    tracing::error!(delivery_id = %id, "the open index names a delivery with no record");
                    continue;
                };
                // One unreadable record must not make a whole page (or a
                // bulk replay over it) fail: skip it, loudly.
                let mut d = match decode_delivery(&id, v.value()) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(error = %e, "unreadable delivery record left out of a listing");
                        continue;
                    }
                };
                claims.lock().map_err(|_| unavailable("lock poisoned"))?.overlay(&mut d);
                if !filter.matches(&d) {
                    continue;
                }
                if items.len() == limit {
                    next_cursor = items.last().map(|d: &Delivery| d.id.clone());
                    break;
                }
                items.push(d);
            }
            Ok(Page { items, next_cursor })
        })
        .await
    }

    async fn replay(&self, ids: &[String], include_delivered: bool, now: Millis) -> Result<ReplayCount, StoreError> {
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

    async fn replay_step(&self, job: &ReplayJob, ids: &[String], now: Millis) -> Result<Option<ReplayJob>, StoreError> {
        let (job, ids) = (Box::new(job.clone()), ids.to_vec());
        self.call(|reply| Op::ReplayStep { job, ids, now, reply }).await
    }

    async fn sweep(&self, now: Millis) -> Result<usize, StoreError> {
        self.call(|reply| Op::Sweep { now, reply }).await
    }

    async fn oldest_open(&self) -> Result<Option<Millis>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(OPEN).map_err(unavailable)?;
            let first = table.first().map_err(unavailable)?;
            Ok(first.and_then(|(k, _)| super::delivery_id_millis(k.value())))
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

    async fn discard(&self, ids: &[String], reason: &str, now: Millis) -> Result<DiscardCount, StoreError> {
        let (ids, reason) = (ids.to_vec(), reason.to_owned());
        self.call(|reply| Op::Discard { ids, reason, now, reply }).await
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
        self.read(|txn| txn.open_table(EVENT_INDEX).map_err(unavailable)?.len().map_err(unavailable)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DeliveryState, NewDelivery, NewEvent, new_delivery_id};

    fn event(id: &str, at: u64) -> NewEvent {
        NewEvent { id: id.into(), source: "np".into(), event_type: "t.t".into(), received_at: at, json: b"{}".to_vec() }
    }

    #[tokio::test]
    async fn a_file_from_before_the_state_index_is_indexed_once_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        let ds = ["be", "gone"].map(|e| NewDelivery { id: new_delivery_id(1000), endpoint: e.into() });
        store.admit(event("evt_old", 1000), ds.to_vec(), 10_000).await.unwrap();
        let c = store.claim_due("be", 1000, 1, 500).await.unwrap().remove(0);
        let failed = Attempt {
            number: 0,
            started_at: 1000,
            duration_ms: 1,
            result: crate::store::AttemptResult::Status { code: 500 },
            response_excerpt: None,
        };
        assert!(store.finish(&c.delivery.id, c.delivery.claim_token, failed, Next::Dead).await.unwrap());
        store.close().await;

        // Take the file back to how an older version left it: no state
        // index, no endpoint list, no marker.
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.delete_table(BY_STATE).unwrap();
        txn.delete_table(ENDPOINTS).unwrap();
        txn.open_table(META).unwrap().remove("state_index").unwrap();
        txn.commit().unwrap();
        drop(db);

        let store = EmbeddedStore::open(&path).unwrap();
        let dead = DeliveryFilter { state: Some(DeliveryState::Dead), ..Default::default() };
        let page = store.list(&dead, None, 10).await.unwrap();
        assert_eq!(page.items.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), [c.delivery.id.as_str()]);
        // The endpoints of the schedule are known, so a removed one is found.
        assert_eq!(store.known_endpoints().await.unwrap(), ["gone"]);
        let found = store.reconcile_endpoints(&["be".into()], true, 2000).await.unwrap();
        assert_eq!(found.orphaned, vec![("gone".to_owned(), 1)]);
    }

    #[tokio::test]
    async fn corrupt_records_fail_alone_and_never_wedge_claims() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        let good = NewDelivery { id: new_delivery_id(1000), endpoint: "be".into() };
        let orphan = NewDelivery { id: new_delivery_id(1000), endpoint: "be".into() };
        store.admit(event("evt_good", 1000), vec![good.clone()], 10_000).await.unwrap();
        store.admit(event("evt_orphan", 1000), vec![orphan.clone()], 10_000).await.unwrap();
        store.close().await;

        // Break two records behind the store's back: one delivery becomes
        // unreadable, and one event's index entry disappears.
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut deliveries = txn.open_table(DELIVERIES).unwrap();
            deliveries.insert("dlv_broken", b"not json".as_slice()).unwrap();
            txn.open_table(DUE).unwrap().insert(("be", 500u64, "dlv_broken"), ()).unwrap();
            txn.open_table(EVENT_INDEX).unwrap().remove("evt_orphan").unwrap();
        }
        txn.commit().unwrap();
        drop(db);

        let store = EmbeddedStore::open(&path).unwrap();
        let claims = store.claim_due("be", 2000, 10, 500).await.unwrap();
        let ids: Vec<_> = claims.iter().map(|c| c.delivery.id.clone()).collect();
        assert_eq!(ids, vec![good.id.clone()], "only the readable, deliverable one is claimed");
        let (d, _) = store.delivery(&orphan.id).await.unwrap().unwrap();
        assert_eq!(d.state, DeliveryState::Dead);
        assert!(d.last_error.unwrap().contains("event record missing"));
        // The broken one is off the schedule: later claims do not meet it again.
        assert!(store.claim_due("be", 2400, 10, 500).await.unwrap().is_empty());
        // Replaying it is counted, not fatal; admissions still commit.
        let r = store.replay(&["dlv_broken".to_owned()], false, 3000).await.unwrap();
        assert_eq!(r.skipped, 1);
        // It cannot be finished either: nobody holds a claim on it.
        assert!(!store.finish("dlv_broken", 1, attempt(), crate::store::Next::Delivered).await.unwrap());
        store.admit(event("evt_after", 3000), vec![], 10_000).await.unwrap();
        assert!(store.event("evt_after").await.unwrap().is_some());
        store.ping().await.unwrap();
    }

    /// In-memory storage whose writes can be switched to fail, shared by
    /// every (re)open so the data survives the reopen after an error.
    #[derive(Debug, Clone)]
    struct Faulty {
        inner: Arc<redb::backends::InMemoryBackend>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Faulty {
        fn check(&self) -> std::io::Result<()> {
            match self.fail.load(Ordering::SeqCst) {
                true => Err(std::io::Error::other("injected write failure")),
                false => Ok(()),
            }
        }
    }

    impl redb::StorageBackend for Faulty {
        fn len(&self) -> std::io::Result<u64> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.check()?;
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.inner.write(offset, data)
        }
    }

    #[tokio::test]
    async fn a_failed_commit_leaves_claims_as_they_were() {
        let backend = Faulty { inner: Arc::default(), fail: Arc::default() };
        let fail = backend.fail.clone();
        let open = move || {
            let db = Database::builder().create_with_backend(backend.clone()).map_err(unavailable)?;
            init_tables(db)
        };
        let store = EmbeddedStore::with_opener("faulty".into(), open).unwrap();
        let d = || vec![NewDelivery { id: new_delivery_id(1000), endpoint: "be".into() }];
        store.admit(event("evt_a", 1000), d(), 10_000).await.unwrap();
        store.admit(event("evt_b", 1000), d(), 10_000).await.unwrap();
        let held = store.claim_due("be", 1000, 1, 60_000).await.unwrap().remove(0);

        fail.store(true, Ordering::SeqCst);
        // The finish is not on disk, so in memory the claim is still held...
        let r =
            store.finish(&held.delivery.id, held.delivery.claim_token, attempt(), crate::store::Next::Delivered).await;
        assert!(r.is_err());
        // ...and a claim whose commit failed was never made.
        assert!(store.claim_due("be", 1000, 10, 60_000).await.is_err());
        fail.store(false, Ordering::SeqCst);

        let again = store.claim_due("be", 1000, 10, 60_000).await.unwrap();
        let ids: Vec<_> = again.iter().map(|c| c.delivery.id.clone()).collect();
        assert_eq!(ids.len(), 1, "the unheld delivery is claimable");
        assert!(!ids.contains(&held.delivery.id), "a held claim was handed out again");
        let r =
            store.finish(&held.delivery.id, held.delivery.claim_token, attempt(), crate::store::Next::Delivered).await;
        assert!(r.unwrap(), "the holder can still record its attempt");
        let (d, attempts) = store.delivery(&held.delivery.id).await.unwrap().unwrap();
        assert_eq!((d.state, attempts.len()), (DeliveryState::Delivered, 1));
    }

    fn attempt() -> crate::store::Attempt {
        crate::store::Attempt {
            number: 0,
            started_at: 0,
            duration_ms: 0,
            result: crate::store::AttemptResult::Status { code: 200 },
            response_excerpt: None,
        }
    }
}
