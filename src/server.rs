//! Runs the relay: the ingress and admin listeners plus housekeeping, until
//! a shutdown signal.
//!
//! [`run`] takes already-bound listeners and a shutdown future, so tests start
//! the real server on `127.0.0.1:0` and stop it when they like. Shutdown stops
//! accepting at once, lets open requests finish for `shutdown_grace` (an
//! admission in progress completes, so its provider gets its answer), then
//! returns.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::admin::Admin;
use crate::config::Config;
use crate::delivery;
use crate::ingress::Ingress;
use crate::metrics::Metrics;
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
    let wake = Arc::new(Wake::new(&config));
    let metrics = Metrics::new(&config);
    let ingress = Arc::new(Ingress::new(config.clone(), store.clone(), wake.clone(), metrics.clone()));
    let running = replay::Running::default();
    let admin = Arc::new(Admin::new(config.clone(), store.clone(), running.clone(), metrics.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);

    let endpoints: Arc<[String]> = config.endpoints.iter().map(|e| e.name.clone()).collect();
    // Before delivering: deliveries to endpoints no longer configured are
    // orphaned (said loudly), those to endpoints configured again come back.
    let orphans_checked = reconcile(store.as_ref(), &endpoints, true).await;

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
        let serving = serve(admin_listener, admin_limits, stop_rx.clone(), move |req, _peer| {
            let admin = admin.clone();
            async move { admin.handle(req).await }
        });
        async move {
            serving.await;
            Ok(())
        }
    });
    tasks.spawn(
        "delivery",
        delivery::run(config.clone(), store.clone(), sender, wake, metrics.clone(), stop_rx.clone()),
    );
    tasks.spawn("housekeeping", {
        let run = housekeeping(
            store.clone(),
            ingress.clone(),
            running,
            Endpoints { names: endpoints, orphans_checked },
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

/// Connection limits of one listener.
#[derive(Clone, Copy)]
struct Limits {
    header_timeout: Duration,
    max_connections: usize,
    grace: Duration,
}

/// Accepts HTTP/1.1 connections and serves `handler` on each until `stop`.
///
/// At most `max_connections` are open. A flood of clients that connect and
/// send nothing useful (half a request line, then silence) must not lock
/// out a health check or a provider, so a full listener does not stop
/// accepting: it closes the oldest connection that has no request in
/// progress (never sent a whole request head, or idle between requests) to
/// make room. Only when every open connection is busy with a request does
/// accepting wait, and the kernel's backlog holds the rest.
async fn serve<F, Fut>(listener: TcpListener, limits: Limits, mut stop: watch::Receiver<bool>, handler: F)
where
    F: Fn(hyper::Request<hyper::body::Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<http_body_util::Full<bytes::Bytes>>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    let conns = Arc::new(Mutex::new(Connections::default()));
    let freed = Arc::new(Notify::new());
    'accept: loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        // Make room: close an idle connection, or wait for a busy one to end.
        loop {
            let full = lock(&conns).make_room(limits.max_connections, uptime_ms());
            if !full {
                break;
            }
            tokio::select! {
                _ = freed.notified() => {}
                _ = stopped(&mut stop) => break 'accept,
            }
        }
        let _ = stream.set_nodelay(true);
        let (id, busy, close) = lock(&conns).open();
        let handler = handler.clone();
        let svc = service_fn(move |req| {
            let handler = handler.clone();
            let busy = busy.clone();
            async move {
                let _busy = Busy::enter(&busy);
                Ok::<_, Infallible>(handler(req, peer).await)
            }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
        let (conns, freed) = (conns.clone(), freed.clone());
        tokio::spawn(async move {
            tokio::select! {
                result = conn => if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection closed with an error");
                },
                _ = close.notified() => tracing::debug!(%peer, "idle connection closed to make room"),
            }
            lock(&conns).closed(id);
            freed.notify_one();
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.grace) => tracing::warn!(grace = ?limits.grace, "grace period over; closing remaining connections"),
    }
}

fn lock(conns: &Mutex<Connections>) -> std::sync::MutexGuard<'_, Connections> {
    conns.lock().unwrap_or_else(|e| e.into_inner())
}

/// The open connections of one listener, oldest first.
#[derive(Default)]
struct Connections {
    next_id: u64,
    open: std::collections::BTreeMap<u64, Connection>,
}

struct Connection {
    busy: Arc<BusyState>,
    close: Arc<Notify>,
}

/// Whether a connection is handling a request, and since when it is not.
#[derive(Default)]
struct BusyState {
    /// Requests in progress (0 or 1 for HTTP/1.1).
    requests: AtomicUsize,
    /// When the last request's handler finished, in ms of [`uptime_ms`]; 0
    /// if none has.
    idle_since: AtomicU64,
}

impl BusyState {
    /// Whether the connection can be closed to make room: no request in
    /// progress, and none answered in the last second (its response may
    /// still be on its way out).
    fn evictable(&self, now: u64) -> bool {
        let idle_since = self.idle_since.load(Ordering::Acquire);
        self.requests.load(Ordering::Acquire) == 0 && (idle_since == 0 || now.saturating_sub(idle_since) >= 1_000)
    }
}

/// Milliseconds since the first call; never 0.
fn uptime_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
}

impl Connections {
    fn open(&mut self) -> (u64, Arc<BusyState>, Arc<Notify>) {
        self.next_id += 1;
        let c = Connection { busy: Arc::default(), close: Arc::new(Notify::new()) };
        let handles = (self.next_id, c.busy.clone(), c.close.clone());
        self.open.insert(self.next_id, c);
        handles
    }

    fn closed(&mut self, id: u64) {
        self.open.remove(&id);
    }

    /// Below `max` open, or made so by closing the oldest connection with no
    /// request in progress; true if every one is busy and none can go.
    fn make_room(&mut self, max: usize, now: u64) -> bool {
        if self.open.len() < max {
            return false;
        }
        let idle = self.open.iter().find(|(_, c)| c.busy.evictable(now)).map(|(id, _)| *id);
        match idle.and_then(|id| self.open.remove(&id)) {
            Some(c) => {
                // A permit is kept if the task is not waiting yet.
                c.close.notify_one();
                false
            }
            None => true,
        }
    }
}

/// Marks a connection busy while a request is handled.
struct Busy<'a>(&'a BusyState);

impl<'a> Busy<'a> {
    fn enter(busy: &'a BusyState) -> Busy<'a> {
        busy.requests.fetch_add(1, Ordering::AcqRel);
        Busy(busy)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.idle_since.store(uptime_ms(), Ordering::Release);
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The configured endpoints, and whether deliveries to others have been
/// orphaned since start-up.
struct Endpoints {
    names: Arc<[String]>,
    orphans_checked: bool,
}

/// Brings the store in line with the configured endpoints (see
/// [`Store::reconcile_endpoints`]) and says what it found. Returns whether
/// it got through; a store that is down now is tried again by housekeeping.
async fn reconcile(store: &dyn Store, endpoints: &[String], orphan_others: bool) -> bool {
    match store.reconcile_endpoints(endpoints, orphan_others, now_millis()).await {
        Ok(found) => {
            for (endpoint, n) in &found.orphaned {
                tracing::warn!(
                    endpoint = %endpoint,
                    deliveries = n,
                    "deliveries to an endpoint that is not in the configuration are orphaned: nothing will send them. Add the endpoint back to deliver them, or end them with `ipn-relay deliveries discard --endpoint {endpoint}`"
                );
            }
            for (endpoint, n) in &found.adopted {
                tracing::info!(endpoint = %endpoint, deliveries = n, "orphaned deliveries to a configured endpoint are pending again");
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not check deliveries against the configured endpoints; will retry");
            false
        }
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
                    "this relay's clock differs from the store's by more than {} ms: relays sharing a store must keep their clocks in sync (NTP), or one relay may take over a claim that another is still sending",
                    crate::store::CLOCK_OFFSET_WARN_MS
                );
            }
            Ok(_) => clock_unreadable = false,
            Err(e) if !clock_unreadable => {
                clock_unreadable = true;
                tracing::warn!(error = %e, "could not read the store's clock to check this relay's against it (a Redis user needs the TIME command)");
            }
            Err(_) => {}
        }
        // Take back deliveries another relay orphaned (relays sharing a
        // store during a change of endpoints); orphan only until it worked
        // once after start-up.
        let orphan_others = !endpoints.orphans_checked;
        if reconcile(store.as_ref(), &endpoints.names, orphan_others).await && orphan_others {
            endpoints.orphans_checked = true;
        }
        match replay::resume(store.clone(), &running, stale_after, &endpoints.names, &metrics).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "replay jobs resumed"),
            Err(e) => tracing::warn!(error = %e, "could not look for unfinished replay jobs; will retry"),
        }
        stale_after = replay::STALE_AFTER_MS;
        // Sweep in chunks until nothing expired is left.
        loop {
            match store.sweep(now_millis()).await {
                Ok(0) => break,
                Ok(n) => tracing::debug!(removed = n, "expired dedupe keys swept"),
                Err(e) => {
                    tracing::warn!(error = %e, "dedupe sweep failed; will retry");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_listener_closes_the_oldest_idle_connection_and_never_a_busy_one() {
        let mut conns = Connections::default();
        let (first, first_busy, first_close) = conns.open();
        let (second, _, second_close) = conns.open();
        let now = 10_000;
        assert!(!conns.make_room(3, now), "below the cap nothing is closed");
        // The oldest is busy with a request: the next oldest idle one goes.
        let guard = Busy::enter(&first_busy);
        assert!(!conns.make_room(2, now));
        assert!(conns.open.contains_key(&first) && !conns.open.contains_key(&second));
        assert!(notified(&second_close) && !notified(&first_close));
        // All busy: the caller has to wait.
        assert!(conns.make_room(1, now));
        // Just answered: its response may still be on the way, so it stays
        // for a second.
        drop(guard);
        let answered = first_busy.idle_since.load(Ordering::Acquire);
        assert!(conns.make_room(1, answered + 999));
        assert!(!conns.make_room(1, answered + 1_000));
        assert!(conns.open.is_empty() && notified(&first_close));
    }

    /// Whether `n` holds a notification, without waiting.
    fn notified(n: &Notify) -> bool {
        let fut = n.notified();
        let mut fut = std::pin::pin!(fut);
        let waker = std::task::Waker::noop();
        fut.as_mut().poll(&mut std::task::Context::from_waker(waker)).is_ready()
    }
}
