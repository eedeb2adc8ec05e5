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
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::admin::Admin;
use crate::config::Config;
use crate::delivery::{self, Wake};
use crate::ingress::Ingress;
use crate::metrics::Metrics;
use crate::replay;
use crate::store::{Store, now_millis};

/// Open connections to the admin listener at most.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// How often expired dedupe keys and idle rate-limit entries are dropped.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// Serves until `shutdown` completes, then drains within the grace period.
pub async fn run(
    config: Arc<Config>,
    store: Arc<dyn Store>,
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

    tracing::info!(addr = %ingress_listener.local_addr()?, "ingress listening");
    tracing::info!(addr = %admin_listener.local_addr()?, "admin listening");

    let header_timeout = config.server.header_read_timeout;
    let limits =
        Limits { header_timeout, max_connections: config.server.max_connections, grace: config.server.shutdown_grace };
    let ingress_task = tokio::spawn(serve(ingress_listener, limits, stop_rx.clone(), {
        let ingress = ingress.clone();
        move |req, peer| {
            let ingress = ingress.clone();
            async move { ingress.handle(req, peer).await }
        }
    }));
    let admin_limits = Limits { header_timeout, max_connections: ADMIN_MAX_CONNECTIONS, grace: Duration::from_secs(1) };
    let admin_task = tokio::spawn(serve(admin_listener, admin_limits, stop_rx.clone(), {
        let admin = admin.clone();
        move |req, _peer| {
            let admin = admin.clone();
            async move { admin.handle(req).await }
        }
    }));
    let delivery_task =
        tokio::spawn(delivery::run(config.clone(), store.clone(), wake, metrics.clone(), stop_rx.clone()));
    let housekeeping = tokio::spawn(housekeeping(store.clone(), ingress.clone(), running, metrics, stop_rx));

    shutdown.await;
    tracing::info!("shutting down: no new connections; finishing open requests");
    let _ = stop_tx.send(true);
    // Ingress and delivery drain side by side, each within the grace period.
    let _ = ingress_task.await;
    let _ = delivery_task.await;
    let _ = admin_task.await;
    housekeeping.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Connection limits of one listener.
#[derive(Clone, Copy)]
struct Limits {
    header_timeout: Duration,
    max_connections: usize,
    grace: Duration,
}

/// Accepts HTTP/1.1 connections and serves `handler` on each until `stop`.
/// At most `max_connections` are open; further clients wait in the kernel's
/// backlog, so a flood of slow connections cannot exhaust memory or files.
async fn serve<F, Fut>(listener: TcpListener, limits: Limits, mut stop: watch::Receiver<bool>, handler: F)
where
    F: Fn(hyper::Request<hyper::body::Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<http_body_util::Full<bytes::Bytes>>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = stopped(&mut stop) => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let svc = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req, peer).await) }
                });
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection closed with an error");
                    }
                    drop(slot);
                });
            }
            _ = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.grace) => tracing::warn!(grace = ?limits.grace, "grace period over; closing remaining connections"),
    }
}

async fn housekeeping(
    store: Arc<dyn Store>,
    ingress: Arc<Ingress>,
    running: replay::Running,
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
        match replay::resume(store.clone(), &running, stale_after, &metrics).await {
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

/// Resolves once the stop flag is set (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
