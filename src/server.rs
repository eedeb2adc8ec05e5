//! Runs the relay: the ingress and admin listeners plus housekeeping, until
//! a shutdown signal.
//!
//! [`run`] takes already-bound listeners and a shutdown future, so tests start
//! the real server on `127.0.0.1:0` and stop it when they like. Shutdown stops
//! accepting at once, lets open requests finish for `shutdown_grace` (an
//! admission in progress completes, so its provider gets its answer), then
//! returns.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::admission::Admitter;
use crate::config::Config;
use crate::delivery;
use crate::http::Chain;
use crate::ingress::Ingress;
use crate::listener::{Limits, serve};
use crate::metrics::Metrics;
use crate::quarantine::Quarantine;
use crate::reload::Live;
use crate::replay;
use crate::shutdown::stopped;
use crate::store::{Store, now_millis};
use crate::wake::Wake;

/// Open connections to the admin listener at most.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// How often expired dedupe keys and idle rate-limit entries are dropped.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// Serves until `shutdown` completes, then drains within the grace period.
///
/// Every task it starts is watched: the listeners, the delivery loops and
/// housekeeping run until shutdown, so one that ends before it (a panic, a
/// loop that gave up) means the relay would answer providers while part of
/// it is dead. Then `run` stops everything and returns an error, and the
/// process exits non-zero for its supervisor to restart it. (Bulk replay
/// jobs are the exception: a job that fails is resumed by housekeeping.)
pub async fn run(
    config: Arc<Config>,
    store: Arc<dyn Store>,
    sender: delivery::Sender,
    ingress_listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    run_from(config, None, store, sender, ingress_listener, admin_listener, shutdown).await
}

/// [`run`], for a configuration read from `path`: SIGHUP and
/// `POST /admin/reload` read it again ([`crate::reload`]).
pub async fn run_from(
    config: Arc<Config>,
    path: Option<std::path::PathBuf>,
    store: Arc<dyn Store>,
    sender: delivery::Sender,
    ingress_listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let wake = Arc::new(Wake::new(&config));
    let metrics =
        Metrics::new(&config).map_err(|e| std::io::Error::other(format!("cannot set up the metrics: {e}")))?;
    let live = Live::new(config.clone(), path, metrics.clone());
    let admitter = Arc::new(Admitter::new(&config, store.clone(), wake.clone(), metrics.clone()));
    let (quarantine, quarantine_queue) = Quarantine::new(&config, metrics.clone());
    let ingress = Arc::new(Ingress::new(config.clone(), admitter.clone(), quarantine, metrics.clone()));
    live.on_reload({
        let ingress = ingress.clone();
        move |config| ingress.apply(config.clone())
    });
    let running = replay::Running::default();
    let admin = Arc::new(Admin::new(live.clone(), admitter, running.clone(), metrics.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);

    let endpoints: Arc<[String]> = config.endpoints.iter().map(|e| e.name.clone()).collect();
    // Before delivering: deliveries to endpoints no longer configured are
    // orphaned (said loudly), those to endpoints configured again come back.
    let orphans_checked = crate::reload::reconcile(store.as_ref(), &endpoints, true).await;

    tracing::info!(addr = %ingress_listener.local_addr()?, "ingress listening");
    tracing::info!(addr = %admin_listener.local_addr()?, "admin listening");

    let header_timeout = config.server.header_read_timeout;
    let limits =
        Limits { header_timeout, max_connections: config.server.max_connections, grace: config.server.shutdown_grace };
    let admin_limits = Limits { header_timeout, max_connections: ADMIN_MAX_CONNECTIONS, grace: Duration::from_secs(1) };
    let mut tasks = Tasks::default();
    tasks.spawn("the ingress listener", {
        let ingress = ingress.clone();
        let serving = serve(ingress_listener, limits, stop_rx.clone(), move |req, peer| {
            let ingress = ingress.clone();
            async move { ingress.handle(req, peer).await }
        });
        async move {
            serving.await;
            Ok(())
        }
    });
    tasks.spawn("the admin listener", {
        let serving = serve(admin_listener, admin_limits, stop_rx.clone(), move |mut req, peer| {
            let admin = admin.clone();
            // The console limits sign-ins per client address.
            req.extensions_mut().insert(peer);
            async move { admin.handle(req).await }
        });
        async move {
            serving.await;
            Ok(())
        }
    });
    tasks.spawn("delivery", delivery::run(live.clone(), store.clone(), sender, wake, metrics.clone(), stop_rx.clone()));
    tasks.spawn("reload on SIGHUP", on_sighup(live.clone(), stop_rx.clone()));
    tasks.spawn("the quarantine", {
        let live = live.clone();
        crate::quarantine::run(
            quarantine_queue,
            store.clone(),
            move || live.current(),
            metrics.clone(),
            stop_rx.clone(),
        )
    });
    tasks.spawn("retention", {
        let live = live.clone();
        let run = crate::purge::run(store.clone(), move || live.current(), metrics.clone(), stop_rx.clone());
        async move {
            run.await;
            Ok(())
        }
    });
    tasks.spawn("housekeeping", {
        let run = housekeeping(
            store.clone(),
            ingress.clone(),
            running,
            Endpoints { live, orphans_checked },
            metrics,
            stop_rx,
        );
        async move {
            run.await;
            Ok(())
        }
    });

    let shutdown = std::pin::pin!(shutdown);
    let failure = tokio::select! {
        _ = shutdown => None,
        Some(failure) = tasks.next_end() => Some(failure),
    };
    match &failure {
        None => tracing::info!("shutting down: no new connections; finishing open requests"),
        Some(failure) => {
            tracing::error!(failure = %failure, "a part of the relay stopped unexpectedly; stopping the relay so that its supervisor restarts it")
        }
    }
    let _ = stop_tx.send(true);
    // Everything drains side by side, each within its grace period.
    let drained = tokio::time::timeout(config.server.shutdown_grace + Duration::from_secs(5), async {
        while let Some(late) = tasks.next_end().await {
            if late.contains("panicked") {
                tracing::error!(failure = %late, "a part of the relay failed while stopping");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some tasks did not stop in time; abandoning them");
    }
    tracing::info!("stopped");
    match failure {
        None => Ok(()),
        Some(failure) => Err(std::io::Error::other(failure)),
    }
}

/// The relay's long-running tasks, by name.
#[derive(Default)]
struct Tasks {
    set: tokio::task::JoinSet<Result<(), String>>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

impl Tasks {
    fn spawn(&mut self, name: &'static str, task: impl Future<Output = Result<(), String>> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Waits for the next task to end and says how it ended; `None` once
    /// none is left.
    async fn next_end(&mut self) -> Option<String> {
        let ended = self.set.join_next_with_id().await?;
        let (id, how) = match ended {
            Ok((id, Ok(()))) => (id, "ended".to_owned()),
            Ok((id, Err(why))) => (id, format!("stopped: {why}")),
            Err(e) if e.is_panic() => (e.id(), format!("panicked: {}", panic_message(e.into_panic()))),
            Err(e) => (e.id(), e.to_string()),
        };
        Some(format!("{} {how}", self.names.get(&id).copied().unwrap_or("a task")))
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    match panic.downcast::<String>() {
        Ok(s) => *s,
        Err(panic) => panic.downcast::<&str>().map_or_else(|_| "(no message)".to_owned(), |s| (*s).to_owned()),
    }
}

/// The configured endpoints, and whether deliveries to others have been
/// orphaned since start-up.
struct Endpoints {
    live: Arc<Live>,
    orphans_checked: bool,
}

/// Reloads the configuration on every SIGHUP until `stop`.
async fn on_sighup(live: Arc<Live>, mut stop: watch::Receiver<bool>) -> Result<(), String> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot listen for SIGHUP: {e}"))?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                // The outcome is logged by the reload itself.
                let _ = live.reload().await;
            }
            _ = stopped(&mut stop) => return Ok(()),
        }
    }
}

/// Gates (Redis) or open deliveries (embedded) looked at per step of
/// [`heal_gates`], and steps per housekeeping tick: a pass over a large
/// backlog spreads over several minutes instead of holding the store.
const GATES_PER_STEP: usize = 200;
const GATE_STEPS_PER_TICK: usize = 10;

/// Puts back on the schedule any ordered delivery that heads its gate but
/// is off it (`Store::heal_gates`), in bounded steps from `cursor`, where
/// the previous tick stopped; says so if it found one, since that means a
/// damaged record or a relay of an older version.
async fn heal_gates(store: &dyn Store, cursor: &mut Option<String>) {
    let mut healed = 0;
    for _ in 0..GATE_STEPS_PER_TICK {
        match store.heal_gates(cursor.take(), GATES_PER_STEP).await {
            Ok((n, next)) => {
                healed += n;
                *cursor = next;
                if cursor.is_none() {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "ordering gate check failed; will retry");
                break;
            }
        }
    }
    if healed > 0 {
        tracing::warn!(
            deliveries = healed,
            "ordered deliveries that were off the schedule were put back (a damaged record, or a relay of an older version on the same store)"
        );
    }
}

async fn housekeeping(
    store: Arc<dyn Store>,
    ingress: Arc<Ingress>,
    running: replay::Running,
    mut endpoints: Endpoints,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // At start every unfinished replay job lost its runner; later, only the
    // ones that stopped advancing.
    let mut stale_after = 0;
    // Warn once when the store's clock cannot be read, not every minute.
    let mut clock_unreadable = false;
    // Where the gate check goes on at the next tick.
    let mut gates_cursor = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => return,
        }
        ingress.forget_idle_clients();
        match store.clock_offset_ms().await {
            Ok(Some(ms)) if ms.abs() > crate::store::CLOCK_OFFSET_WARN_MS => {
                clock_unreadable = false;
                tracing::warn!(
                    offset_ms = ms,
                    "this relay's clock differs from the store's by more than {} ms: claims and due times follow the store's clock, but event times (received_at), attempt times and logs follow this one; keep clocks in sync (NTP)",
                    crate::store::CLOCK_OFFSET_WARN_MS
                );
            }
            Ok(_) => clock_unreadable = false,
            Err(e) if !clock_unreadable => {
                clock_unreadable = true;
                tracing::warn!(error = %Chain(&e), "could not read the store's clock to check this relay's against it (a Redis user needs the TIME command)");
            }
            Err(_) => {}
        }
        // Take back deliveries another relay orphaned (relays sharing a
        // store during a change of endpoints); orphan only until it worked
        // once after start-up.
        let names: Arc<[String]> = endpoints.live.current().endpoints.iter().map(|e| e.name.clone()).collect();
        let orphan_others = !endpoints.orphans_checked;
        if crate::reload::reconcile(store.as_ref(), &names, orphan_others).await && orphan_others {
            endpoints.orphans_checked = true;
        }
        match replay::resume(store.clone(), &running, stale_after, &names, &metrics).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "replay jobs resumed"),
            Err(e) => tracing::warn!(error = %Chain(&e), "could not look for unfinished replay jobs; will retry"),
        }
        stale_after = replay::STALE_AFTER_MS;
        heal_gates(store.as_ref(), &mut gates_cursor).await;
        // Sweep in chunks until nothing expired is left.
        loop {
            match store.sweep(now_millis()).await {
                Ok(0) => break,
                Ok(n) => tracing::debug!(removed = n, "expired dedupe keys swept"),
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "dedupe sweep failed; will retry");
                    break;
                }
            }
        }
    }
}
