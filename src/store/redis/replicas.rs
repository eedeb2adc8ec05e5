//! Acknowledged means replicated (`[store] min_replicas_ack`): an
//! admission's 200 waits until that many replicas have its writes.
//!
//! `WAIT` counts replicas that have the replication stream up to the last
//! write *of its own connection*. Admissions whose scripts have been
//! answered hand over a waiter, and one task writes a marker key and sends
//! `WAIT` right after it, in one pipeline: the primary's replication offset
//! is one stream, so the marker's offset covers every write the primary had
//! applied, whichever connection (or relay) made it. That also holds after
//! the connection was re-made, and for a duplicate whose first copy another
//! relay wrote. One `WAIT` serves every admission that queued meanwhile:
//! group commit for replication. Commands on the connection queue behind it
//! for at most `replica_ack_timeout`.
//!
//! `WAITAOF` (Redis 7.2) is not used: a replica without an append-only file
//! never confirms it, so an upgrade of Redis would turn every admission
//! into a 503.

use std::time::Duration;

use super::conn::Conn;
use tokio::sync::{mpsc, oneshot};

use crate::store::{StoreError, unavailable};

type Waiter = oneshot::Sender<Result<(), StoreError>>;

/// The handle admissions wait on.
#[derive(Clone)]
pub(super) struct ReplicaAcks {
    waiters: mpsc::Sender<Waiter>,
}

impl ReplicaAcks {
    /// Starts the task that waits for `n` replicas on `conn`, writing its
    /// marker at `marker`.
    pub(super) fn start(conn: Conn, marker: String, n: u32, timeout: Duration) -> ReplicaAcks {
        tracing::info!(replicas = n, timeout_ms = timeout.as_millis() as u64, "admissions wait for replicas");
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(wait_for_replicas(conn, marker, n, timeout, rx));
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

async fn wait_for_replicas(conn: Conn, marker: String, n: u32, timeout: Duration, mut waiters: mpsc::Receiver<Waiter>) {
    let ms = timeout.as_millis().max(1) as u64;
    while let Some(first) = waiters.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = waiters.try_recv() {
            batch.push(more);
        }
        let acks: redis::RedisResult<(i64,)> = redis::pipe()
            .cmd("INCR")
            .arg(&marker)
            .ignore()
            .cmd("WAIT")
            .arg(n)
            .arg(ms)
            .query_async(&mut conn.clone())
            .await;
        let acks = acks.map(|(n,)| n);
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
