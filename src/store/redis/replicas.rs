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
//! The node that answers `WAIT` must be the one that has the admission:
//! after a failover (Sentinel naming another primary, a Cluster slot
//! moving) the connection may reach a new primary whose replicas would
//! confirm a marker written *there*, while the admission was written on the
//! old one. So the same pipeline first asks that node whether each waiting
//! admission's dedupe key is there (`EXISTS`; it outlives the event); one that is not answers 503.
//!
//! `WAITAOF` (Redis 7.2) is not used: a replica without an append-only file
//! never confirms it, so an upgrade of Redis would turn every admission
//! into a 503.

use std::time::Duration;

use super::conn::Conn;
use tokio::sync::{mpsc, oneshot};

use crate::store::{StoreError, unavailable};

/// An admission waiting: its dedupe key, and where its outcome goes.
type Waiter = (String, oneshot::Sender<Result<(), StoreError>>);

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

    /// Returns once `n` replicas have every write the primary applied
    /// before now, and the primary has `key` (the admission's dedupe key); or fails (the admission
    /// answers 503).
    pub(super) async fn confirm(&self, key: String) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.waiters.send((key, tx)).await.map_err(|_| unavailable("the replica wait task has stopped"))?;
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
        let mut pipe = redis::pipe();
        for (key, _) in &batch {
            pipe.cmd("EXISTS").arg(key);
        }
        pipe.cmd("INCR").arg(&marker).ignore().cmd("WAIT").arg(n).arg(ms);
        let reply: redis::RedisResult<Vec<i64>> = pipe.query_async(&mut conn.clone()).await;
        let (present, acks) = match reply {
            Ok(mut values) if values.len() == batch.len() + 1 => {
                let acks = values.pop().unwrap_or(0);
                (values, Ok(acks))
            }
            Ok(values) => (Vec::new(), Err(unavailable(format!("the replica check answered {} values", values.len())))),
            Err(e) => (Vec::new(), Err(unavailable(e))),
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
            Err(e) => Err(e),
        };
        for (i, (_, waiter)) in batch.into_iter().enumerate() {
            let result = match (&outcome, present.get(i)) {
                (Ok(()), Some(1)) => Ok(()),
                (Ok(()), _) => {
                    tracing::warn!(
                        "an admission is not on the primary that confirmed replicas (a failover); answering 503"
                    );
                    Err(unavailable("the admission is not on the primary the replicas confirmed"))
                }
                (Err(e), _) => Err(e.clone()),
            };
            let _ = waiter.send(result);
        }
    }
}
