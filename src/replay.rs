//! Bulk replay by filter: durable, bounded, and never twice in one request.
//!
//! A bulk replay is a [`ReplayJob`] kept in the store. [`run`] walks the
//! matching deliveries newest first in batches; each batch is replayed and
//! the job's cursor moved below it in one store transaction
//! ([`Store::replay_step`]). So a delivery is visited at most once per job,
//! even if it is replayed, delivered and matches the filter again, and a job
//! interrupted by a restart resumes at its last committed batch. Steps are
//! numbered and commit only in order, so two runners of one job (this relay
//! after a restart and another relay on the same Redis) cannot both replay a
//! batch: the loser stops.
//!
//! A delivery to an endpoint this relay is not configured with is never
//! replayed: nothing would send it. It is counted as `not_configured`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::http::Chain;
use crate::metrics::Metrics;
use crate::store::{DeliveryFilter, DeliveryId, Millis, ReplayJob, Store, StoreError, now_millis};

/// Deliveries replayed per step.
pub(crate) const BATCH: usize = 200;

/// A job not advanced for this long is taken to have lost its runner (a
/// failed request, a crashed relay) and is resumed by housekeeping.
pub(crate) const STALE_AFTER_MS: Millis = 30_000;

/// Creates a job over `filter` and stores it; [`run`] does the work. With
/// `cursor` (a truncated job's `continue_cursor`) it starts just below that
/// delivery.
pub async fn create(
    store: &dyn Store,
    filter: DeliveryFilter,
    include_delivered: bool,
    max: usize,
    cursor: Option<String>,
) -> Result<ReplayJob, StoreError> {
    let mut job = ReplayJob::new(filter, include_delivered, max.max(1), now_millis());
    job.cursor = cursor;
    store.create_replay_job(&job).await?;
    Ok(job)
}

/// Runs `job` to the end, `batch` deliveries per step, replaying only
/// deliveries to `endpoints`. Returns the job as stored last: finished, or
/// as another runner left it if that runner took over (then it is that
/// runner's to finish).
pub async fn run(
    store: &dyn Store,
    mut job: ReplayJob,
    batch: usize,
    endpoints: &[String],
    metrics: &Metrics,
) -> Result<ReplayJob, StoreError> {
    while !job.finished {
        let Some(saved) = step(store, &job, batch, endpoints).await? else {
            tracing::info!(job = %job.id, "replay job advanced by another runner; leaving it to that one");
            return Ok(store.replay_job(&job.id).await?.unwrap_or(job));
        };
        metrics.replayed(saved.replayed - job.replayed);
        job = saved;
    }
    tracing::info!(
        job = %job.id, replayed = job.replayed, skipped = job.skipped, truncated = job.truncated,
        "replay job finished"
    );
    Ok(job)
}

/// One step: the next batch below the cursor, replayed and recorded. `None`
/// if another runner committed this step first.
pub async fn step(
    store: &dyn Store,
    job: &ReplayJob,
    batch: usize,
    endpoints: &[String],
) -> Result<Option<ReplayJob>, StoreError> {
    let room = job.max.saturating_sub(job.considered);
    let page = store.list(&job.filter, job.cursor.as_deref(), batch.clamp(1, room.max(1))).await?;
    let considered = page.items.len();
    let (ids, unsendable): (Vec<_>, Vec<_>) =
        page.items.into_iter().map(|d| (endpoints.contains(&d.endpoint), d.id)).partition(|(ok, _)| *ok);
    let ids: Vec<DeliveryId> = ids.into_iter().map(|(_, id)| id).collect();
    let now = now_millis();
    let mut next = job.clone();
    next.steps += 1;
    next.updated_at = now;
    next.considered += considered;
    next.not_configured += unsendable.len();
    match page.next_cursor {
        Some(cursor) => {
            next.cursor = Some(cursor);
            if next.considered >= next.max {
                next.finished = true;
                next.truncated = true;
            }
        }
        None => next.finished = true,
    }
    store.replay_step(&next, &ids, now).await
}

/// The jobs this process is running, so housekeeping does not start a second
/// runner beside a live one.
#[derive(Default, Clone)]
pub(crate) struct Running(Arc<Mutex<HashSet<String>>>);

impl Running {
    /// Marks `id` as running here; false if it already is. The mark goes
    /// when the guard is dropped.
    pub(crate) fn enter(&self, id: &str) -> Option<RunningGuard> {
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        set.insert(id.to_owned()).then(|| RunningGuard { running: self.clone(), id: id.to_owned() })
    }
}

pub(crate) struct RunningGuard {
    running: Running,
    id: String,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.running.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

/// Runs `job` to the end in a task of its own, holding `guard` (its mark in
/// [`Running`]) until it stops; a failure is logged, and housekeeping
/// resumes the job later.
pub(crate) fn spawn(
    store: Arc<dyn Store>,
    job: ReplayJob,
    guard: Option<RunningGuard>,
    endpoints: Arc<[String]>,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<Result<ReplayJob, StoreError>> {
    tokio::spawn(async move {
        let _guard = guard;
        let id = job.id.clone();
        let result = run(store.as_ref(), job, BATCH, &endpoints, &metrics).await;
        if let Err(e) = &result {
            tracing::warn!(job = %id, error = %Chain(e), "replay job stopped; it will be resumed");
        }
        result
    })
}

/// Resumes unfinished jobs that no runner here holds: all of them at start
/// (`stale_after` = 0), then those that have not advanced for a while.
pub(crate) async fn resume(
    store: Arc<dyn Store>,
    running: &Running,
    stale_after: Millis,
    endpoints: &Arc<[String]>,
    metrics: &Arc<Metrics>,
) -> Result<usize, StoreError> {
    let now = now_millis();
    let mut resumed = 0;
    for job in store.unfinished_replay_jobs().await? {
        if now.saturating_sub(job.updated_at) < stale_after {
            continue;
        }
        let Some(guard) = running.enter(&job.id) else { continue };
        tracing::info!(job = %job.id, considered = job.considered, "resuming replay job");
        spawn(store.clone(), job, Some(guard), endpoints.clone(), metrics.clone());
        resumed += 1;
    }
    Ok(resumed)
}
