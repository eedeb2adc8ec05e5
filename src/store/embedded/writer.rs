//! The writer thread: every write to the embedded store goes through it.
//!
//! redb allows one write transaction at a time and each durable commit
//! costs an fsync, so the thread takes everything queued (up to
//! [`MAX_BATCH`](super::MAX_BATCH) operations), applies it in one
//! transaction and commits once: group commit. Nobody is answered before
//! the commit that holds their write is on disk, and a failed commit fails
//! every operation in it. It also owns the table of claims, which live in
//! memory only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use redb::{Database, Durability};
use tokio::sync::{mpsc, oneshot};

use crate::http::Chain;

use super::super::retention::{Cutoffs, Purged};
use super::super::{
    Admission, Attempt, Claim, Delivery, DeliveryId, DeliveryState, DiscardCount, Millis, NewDelivery, NewEvent, Next,
    Reconciled, ReplayCount, ReplayJob, StoreError,
};
use super::MAX_BATCH;
use super::codec::unavailable;
use super::tables::{MIN_PROBE_BYTES, QuarantineChange, Tables};

/// A commit slower than this is logged: every admission in it waited.
pub(super) const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(100);

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(super) enum Op {
    Admit {
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        ttl_ms: u64,
        reply: Reply<Admission>,
    },
    Claim {
        endpoint: String,
        now: Millis,
        limit: usize,
        visibility_ms: u64,
        reply: Reply<Vec<Claim>>,
    },
    Finish {
        id: DeliveryId,
        token: u64,
        attempt: Attempt,
        next: Next,
        reply: Reply<bool>,
    },
    Release {
        id: DeliveryId,
        token: u64,
        due: Millis,
        reply: Reply<bool>,
    },
    Replay {
        ids: Vec<DeliveryId>,
        include_delivered: bool,
        now: Millis,
        reply: Reply<ReplayCount>,
    },
    CreateJob {
        job: Box<ReplayJob>,
        reply: Reply<()>,
    },
    ReplayStep {
        job: Box<ReplayJob>,
        ids: Vec<DeliveryId>,
        now: Millis,
        reply: Reply<Option<ReplayJob>>,
    },
    Sweep {
        now: Millis,
        reply: Reply<usize>,
    },
    HealGates {
        after: Option<String>,
        limit: usize,
        now: Millis,
        reply: Reply<(usize, Option<String>)>,
    },
    Reconcile {
        endpoints: Vec<String>,
        orphan_others: bool,
        now: Millis,
        reply: Reply<Reconciled>,
    },
    Discard {
        ids: Vec<DeliveryId>,
        reason: String,
        only: Option<DeliveryState>,
        now: Millis,
        reply: Reply<DiscardCount>,
    },
    Purge {
        cutoffs: Cutoffs,
        now: Millis,
        limit: usize,
        reply: Reply<Purged>,
    },
    Ping {
        reply: Reply<()>,
    },
    Quarantine {
        change: QuarantineChange,
        reply: Reply<crate::store::quarantine::Kept>,
    },
}

/// Sends a batch member's answer once its commit's fate is known.
pub(super) type Answer = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

pub(super) fn answer<T: Send + 'static>(reply: Reply<T>, value: T) -> Answer {
    Box::new(move |committed| {
        let _ = reply.send(committed.map(|()| value));
    })
}

/// A claimed delivery: its fencing token and the end of its visibility.
#[derive(Debug, Clone, Copy)]
pub(super) struct InFlight {
    pub(super) token: u64,
    pub(super) until: Millis,
}

/// Deliveries claimed by this process. Only the writer thread changes it.
#[derive(Debug, Default)]
pub(super) struct ClaimTable {
    pub(super) live: std::collections::HashMap<DeliveryId, InFlight>,
    pub(super) last_token: u64,
}

impl ClaimTable {
    /// Shows a claimed delivery as in flight, as a reader should see it.
    pub(super) fn overlay(&self, d: &mut Delivery) {
        if let Some(c) = self.live.get(&d.id) {
            d.state = DeliveryState::InFlight;
            d.claim_token = c.token;
            d.next_attempt_at = Some(c.until);
        }
    }

    /// Whether `token` holds the claim on `id`.
    pub(super) fn holds(&self, id: &str, token: u64) -> bool {
        self.live.get(id).is_some_and(|c| c.token == token)
    }
}

pub(super) type SharedClaims = Arc<std::sync::Mutex<ClaimTable>>;

/// The shared handle to the open database, replaced on reopen.
pub(super) type DbSlot = Arc<RwLock<Option<Arc<Database>>>>;

pub(super) struct Writer {
    /// What the store is, for logs.
    pub(super) label: String,
    pub(super) open: Box<dyn Fn() -> Result<Database, StoreError> + Send>,
    pub(super) db: DbSlot,
    pub(super) ops: mpsc::Receiver<Op>,
    pub(super) failing: Arc<AtomicU64>,
    pub(super) claims: SharedClaims,
    /// When a commit was last made durable.
    pub(super) last_durable: std::time::Instant,
}

/// Retention steps commit without fsync unless none has been durable for
/// this long: a crash then undoes at most this much removal, to be done
/// again, and an idle store's removals still reach the disk.
const PURGE_DURABLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Writer {
    pub(super) fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(op) = self.ops.blocking_recv() {
            batch.push(op);
            while batch.len() < MAX_BATCH {
                match self.ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            // Retention yields to everything else: other operations commit
            // first, and each purge runs alone, stopping early as soon as
            // other operations are waiting (see `Tables::purge`).
            if batch.iter().any(|op| matches!(op, Op::Purge { .. })) {
                let (mut purges, mut rest): (Vec<Op>, Vec<Op>) =
                    batch.drain(..).partition(|op| matches!(op, Op::Purge { .. }));
                if !rest.is_empty() {
                    self.commit_batch(&mut rest);
                }
                while let Some(purge) = purges.pop() {
                    self.commit_batch(&mut vec![purge]);
                }
                continue;
            }
            self.commit_batch(&mut batch);
        }
    }

    pub(super) fn current_db(&mut self) -> Result<Arc<Database>, StoreError> {
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
    pub(super) fn try_commit(
        &mut self,
        batch: &mut Vec<Op>,
        probe: u64,
    ) -> Result<Vec<Answer>, (StoreError, Vec<Answer>)> {
        let touches_claims = batch
            .iter()
            .any(|op| matches!(op, Op::Claim { .. } | Op::Finish { .. } | Op::Release { .. } | Op::Discard { .. }));
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

    pub(super) fn apply_and_commit(
        &mut self,
        batch: &mut Vec<Op>,
        probe: u64,
    ) -> Result<Vec<Answer>, (StoreError, Vec<Answer>)> {
        let db = self.current_db().map_err(|e| (e, Vec::new()))?;
        let mut txn = db.begin_write().map_err(|e| (unavailable(e), Vec::new()))?;
        // A batch of claims writes only what a later claim redoes from what
        // is on disk (a stale schedule entry dropped, a delivery whose event
        // is unreadable marked dead, a missing record unscheduled): nothing
        // in it needs an fsync, and claims come often. Nor does a retention
        // step or a gate check: undone by a power loss, it is done again. Everything else is
        // durable before it is answered (a later durable commit also makes
        // earlier non-durable ones durable). Tested in powerloss_tests.rs.
        // Keeping refused callbacks is best effort too (a flood of forgeries
        // must not cost an fsync each), made durable by the next durable
        // commit or within a second.
        let lazy = |op: &Op| match op {
            Op::Purge { .. } => true,
            Op::Quarantine { change, .. } => change.may_wait_for_fsync(),
            _ => false,
        };
        let purge_due = self.last_durable.elapsed() >= PURGE_DURABLE_EVERY && batch.iter().any(lazy);
        let durable =
            purge_due || !batch.iter().all(|op| matches!(op, Op::Claim { .. } | Op::HealGates { .. }) || lazy(op));
        let durability = if durable { Durability::Immediate } else { Durability::None };
        txn.set_durability(durability).map_err(|e| (unavailable(e), Vec::new()))?;
        let mut answers = Vec::with_capacity(batch.len());
        {
            let mut t = Tables::open(&txn).map_err(|e| (e, Vec::new()))?;
            let mut claims = self.claims.lock().map_err(|_| (unavailable("lock poisoned"), Vec::new()))?;
            for op in batch.drain(..) {
                let busy = || !self.ops.is_empty();
                match apply(&mut t, &mut claims, op, probe, &busy) {
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
            Ok(()) => {
                if durable {
                    self.last_durable = std::time::Instant::now();
                }
                Ok(answers)
            }
            Err(e) => Err((unavailable(e), answers)),
        }
    }

    pub(super) fn commit_batch(&mut self, batch: &mut Vec<Op>) {
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
                tracing::error!(error = %Chain(&e), "embedded store write failed; answering unavailable");
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

pub(super) fn fail(op: Op, e: StoreError) {
    match op {
        Op::Admit { reply, .. } => drop(reply.send(Err(e))),
        Op::Claim { reply, .. } => drop(reply.send(Err(e))),
        Op::Finish { reply, .. } => drop(reply.send(Err(e))),
        Op::Release { reply, .. } => drop(reply.send(Err(e))),
        Op::Replay { reply, .. } => drop(reply.send(Err(e))),
        Op::CreateJob { reply, .. } => drop(reply.send(Err(e))),
        Op::ReplayStep { reply, .. } => drop(reply.send(Err(e))),
        Op::Sweep { reply, .. } => drop(reply.send(Err(e))),
        Op::HealGates { reply, .. } => drop(reply.send(Err(e))),
        Op::Reconcile { reply, .. } => drop(reply.send(Err(e))),
        Op::Discard { reply, .. } => drop(reply.send(Err(e))),
        Op::Purge { reply, .. } => drop(reply.send(Err(e))),
        Op::Ping { reply } => drop(reply.send(Err(e))),
        Op::Quarantine { reply, .. } => drop(reply.send(Err(e))),
    }
}

/// An answer that reports the op's own failure whatever the commit does.
pub(super) fn refuse<T: Send + 'static>(reply: Reply<T>, e: StoreError) -> Answer {
    Box::new(move |_| {
        let _ = reply.send(Err(e));
    })
}

/// Applies one op inside the batch's transaction. A storage error abandons
/// the whole batch (the op's answer is returned with it). A corrupt record
/// fails only its own op: every op reads the records it needs before it
/// writes anything, and ops that walk many records skip bad ones, so the
/// error leaves nothing half-done for the commit to keep.
/// Applies one operation. `busy` says whether other operations are waiting,
/// for the ones that give way to them.
pub(super) fn apply(
    t: &mut Tables<'_>,
    claims: &mut ClaimTable,
    op: Op,
    probe: u64,
    busy: &dyn Fn() -> bool,
) -> Result<Answer, (StoreError, Answer)> {
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
        Op::Finish { id, token, attempt, next, reply } => {
            run!(reply, t.finish(claims, id.as_str(), token, attempt, next))
        }
        Op::Release { id, token, due, reply } => run!(reply, t.release(claims, id.as_str(), token, due)),
        Op::Replay { ids, include_delivered, now, reply } => {
            let eligible = move |s: DeliveryState| {
                matches!(s, DeliveryState::Dead | DeliveryState::Discarded | DeliveryState::Skipped)
                    || (include_delivered && s == DeliveryState::Delivered)
            };
            run!(reply, t.replay(claims, &ids, &eligible, now))
        }
        Op::CreateJob { job, reply } => run!(reply, t.create_job(&job)),
        Op::ReplayStep { job, ids, now, reply } => run!(reply, t.replay_step(claims, *job, &ids, now)),
        Op::Sweep { now, reply } => run!(reply, t.sweep(now)),
        Op::HealGates { after, limit, now, reply } => run!(reply, t.heal_gates(claims, after, limit, now)),
        Op::Reconcile { endpoints, orphan_others, now, reply } => {
            run!(reply, t.reconcile(claims, &endpoints, orphan_others, now))
        }
        Op::Discard { ids, reason, only, now, reply } => run!(reply, t.discard(claims, &ids, &reason, only, now)),
        Op::Purge { cutoffs, now, limit, reply } => run!(reply, t.purge(cutoffs, now, limit, busy)),
        Op::Ping { reply } => run!(reply, t.ping(probe)),
        Op::Quarantine { change, reply } => run!(reply, t.change_quarantine(change)),
    }
}
