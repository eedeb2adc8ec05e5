//! Acknowledged means replicated (`[store] min_replicas_ack`): an
//! admission's 200 waits until that many replicas have its writes.
//!
//! `WAIT` covers the writes sent before it *on the same connection*, and
//! every admission goes over the store's one multiplexed connection. So
//! admissions whose scripts have been answered hand over a waiter, and one
//! task sends a single `WAIT` for all that queued meanwhile: group commit
//! for replication, one round trip to the replicas for many admissions.
//! Other commands on the connection queue behind a `WAIT` for as long as it
//! takes (at most `replica_ack_timeout`). Where the server has `WAITAOF`
//! (Redis 7.2), it is used instead: the replicas have also written the
//! writes to their append-only files.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use crate::store::{StoreError, unavailable};

type Waiter = oneshot::Sender<Result<(), StoreError>>;

/// The handle admissions wait on.
#[derive(Clone)]
pub(super) struct ReplicaAcks {
    waiters: mpsc::Sender<Waiter>,
}

impl ReplicaAcks {
    /// Starts the task that waits for `n` replicas on `conn`.
    pub(super) async fn start(conn: ConnectionManager, n: u32, timeout: Duration) -> ReplicaAcks {
        let waitaof = has_waitaof(&conn).await;
        tracing::info!(
            replicas = n,
            timeout_ms = timeout.as_millis() as u64,
            command = if waitaof { "WAITAOF" } else { "WAIT" },
            "admissions wait for replicas"
        );
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(wait_for_replicas(conn, n, timeout, waitaof, rx));
        ReplicaAcks { waiters: tx }
    }

    /// Returns once `n` replicas have every write this connection sent
    /// before now, or fails (the admission answers 503).
    pub(super) async fn confirm(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.waiters.send(tx).await.map_err(|_| unavailable("the replica wait task has stopped"))?;
        rx.await.map_err(|_| unavailable("the replica wait task dropped the request"))?
    }
}

/// Whether the server knows `WAITAOF` (`COMMAND INFO` answers nil for a
/// command it does not have).
async fn has_waitaof(conn: &ConnectionManager) -> bool {
    let info: redis::RedisResult<Vec<redis::Value>> =
        redis::cmd("COMMAND").arg("INFO").arg("WAITAOF").query_async(&mut conn.clone()).await;
    matches!(info.as_deref(), Ok([first]) if *first != redis::Value::Nil)
}

async fn wait_for_replicas(
    conn: ConnectionManager,
    n: u32,
    timeout: Duration,
    waitaof: bool,
    mut waiters: mpsc::Receiver<Waiter>,
) {
    let ms = timeout.as_millis().max(1) as u64;
    while let Some(first) = waiters.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = waiters.try_recv() {
            batch.push(more);
        }
        let acks: redis::RedisResult<i64> = if waitaof {
            let counts: redis::RedisResult<(i64, i64)> =
                redis::cmd("WAITAOF").arg(0).arg(n).arg(ms).query_async(&mut conn.clone()).await;
            counts.map(|(_, replicas)| replicas)
        } else {
            redis::cmd("WAIT").arg(n).arg(ms).query_async(&mut conn.clone()).await
        };
        let outcome = match acks {
            Ok(got) if got >= i64::from(n) => Ok(()),
            Ok(got) => {
                tracing::warn!(
                    replicas = got,
                    wanted = n,
                    timeout_ms = ms,
                    "replicas did not confirm admissions in time; answering 503"
                );
                Err(unavailable(format!("{got} of {n} replicas confirmed the write within {ms} ms")))
            }
            Err(e) => Err(unavailable(e)),
        };
        for waiter in batch {
            let _ = waiter.send(outcome.clone());
        }
    }
}
