//! Shutdown: one signal, watched by every long-running task.
//!
//! The server (`server::run`) owns a `watch` channel set to `true` when the
//! shutdown future completes. Listeners stop accepting, delivery loops stop
//! claiming, and housekeeping returns when they see it; each then finishes
//! what it holds within `shutdown_grace`. A `watch` rather than a broadcast:
//! a task that starts late still sees a shutdown that already happened.

use tokio::sync::watch;

/// Resolves once the stop flag is set (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
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
