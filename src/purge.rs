//! The retention task: removes settled records older than `[retention]`
//! says, and quarantined callbacks older than `[quarantine] ttl`, in small
//! steps, so that admissions never wait long behind it.
//!
//! Every [`EVERY`] (or sooner, see there) it runs steps of [`STEP`] queue entries until a step
//! finds fewer than that, pausing [`PAUSE`] between steps. A backlog (the
//! first run after an upgrade, or after retention was shortened) is thus
//! worked off at a bounded share of the store's time; BENCHMARKS.md shows
//! what it costs the ingest latency. Several relays on one Redis each run
//! this; each step takes its entries off the queue atomically, so they
//! share the work without doing any of it twice.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::http::Chain;
use crate::metrics::Metrics;
use crate::shutdown::stopped;
use crate::store::retention::Purged;
use crate::store::{Store, now_millis};

/// How often the task looks for removable records: this often, or twice
/// per the shortest retention (or quarantine `ttl`) if that is shorter (at
/// least every 100 ms).
pub(crate) const EVERY: Duration = Duration::from_secs(10);
/// Queue entries one step looks at at most, on a store that gives way to
/// waiting writes (the embedded store stops a step after a few when
/// admissions wait).
pub(crate) const STEP: usize = 200;
/// Queue entries one step looks at on a store that does not give way: a
/// Redis script blocks the server while it runs, so it stays short (20
/// cost admissions' p99 half again, 10 about a seventh, while removing a
/// backlog; BENCHMARKS.md, "Retention").
pub(crate) const SHORT_STEP: usize = 10;
/// The pause between steps on Redis while a backlog lasts. On the embedded
/// store a step that was not interrupted found the store idle, and the
/// next follows at once.
pub(crate) const PAUSE: Duration = Duration::from_millis(20);
/// The pause after an embedded step that gave way to waiting writes. With
/// it, removing a backlog costs admissions' p99 about a fifth while the
/// store takes 1,000 callbacks a second, and removal keeps pace at 500 a
/// second; a 5 ms pause removed three times faster under load at twice
/// that p99 cost (BENCHMARKS.md, "Retention").
pub(crate) const YIELD_PAUSE: Duration = Duration::from_millis(20);

/// Runs until `stop`; the configuration is read at every step, so a
/// reload applies at once.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    config: impl Fn() -> Arc<Config> + Send,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    // The first look comes soon after start: a backlog left by a stopped
    // relay, or by an upgrade, starts going at once.
    let retention = || config().retention;
    let mut first = true;
    loop {
        let r = retention();
        let shortest = r.delivered.min(r.dead).min(r.replay_jobs).min(config().quarantine.ttl);
        let mut every = EVERY.min(shortest / 2).max(Duration::from_millis(100));
        if std::mem::take(&mut first) {
            every = every.min(Duration::from_secs(1));
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped(&mut stop) => return,
        }
        let mut total = Purged::default();
        // Short steps until the store says it gives way.
        let mut limit = SHORT_STEP;
        loop {
            let now = now_millis();
            let pause = match store.purge(retention().cutoffs(now), now, limit).await {
                Ok(step) => {
                    metrics.removed(&step);
                    total.add(step);
                    if step.examined < limit && !step.interrupted {
                        break;
                    }
                    limit = if step.gives_way { STEP } else { SHORT_STEP };
                    // A store that gives way to waiting writes and was not
                    // asked to had the time to spare: go on at once.
                    match (step.gives_way, step.interrupted) {
                        (true, false) => Duration::ZERO,
                        (true, true) => YIELD_PAUSE,
                        (false, _) => PAUSE,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "retention step failed; will retry");
                    break;
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stopped(&mut stop) => return,
            }
        }
        if !expire_quarantine(store.as_ref(), config().quarantine.ttl, &mut stop).await {
            return;
        }
        if total.events + total.replay_jobs > 0 {
            tracing::debug!(
                events = total.events,
                deliveries = total.deliveries,
                attempts = total.attempts,
                replay_jobs = total.replay_jobs,
                "retention removed settled records"
            );
        }
    }
}

/// Removes quarantined callbacks older than `ttl`, in steps of [`STEP`]
/// with [`PAUSE`] between them. False if `stop` came meanwhile.
async fn expire_quarantine(store: &dyn Store, ttl: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let mut expired = 0;
    loop {
        let before = now_millis().saturating_sub(ttl.as_millis() as u64);
        match store.expire_quarantine(before, STEP).await {
            Ok(n) => {
                expired += n;
                if n < STEP {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "quarantine expiry failed; will retry");
                break;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(PAUSE) => {}
            _ = stopped(stop) => return false,
        }
    }
    if expired > 0 {
        tracing::debug!(expired, "quarantined callbacks expired");
    }
    true
}
