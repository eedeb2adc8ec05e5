//! Finishes, recorded in batches. The store's `finish` queues each finish
//! for one task, which records whatever has queued when a call slot is
//! free in one `FINISH_MANY` call, each finish with its own result: every
//! write command costs Redis an append to its log. A lone finish is not
//! held back for company.

use super::conn::Conn;
use redis::Script;

use super::scripts::invoke_raw;
use super::{Millis, StoreError, corrupt, unavailable};

/// Most finishes one `FINISH_MANY` call records.
pub(super) const FINISH_BATCH: usize = 256;
/// `FINISH_MANY` calls under way at once. While all are, finishes queue
/// up and the next call takes them together.
pub(super) const FINISH_CALLS: usize = 4;

/// One finish waiting for its batch: the script's seven arguments and
/// where its result goes.
pub(super) struct PendingFinish {
    pub(super) id: String,
    pub(super) token: u64,
    pub(super) attempt: String,
    pub(super) next: &'static str,
    pub(super) retry_at: Millis,
    pub(super) last_error: String,
    pub(super) updated_at: Millis,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<bool, StoreError>>,
}

/// Records queued finishes: whatever has queued when a call slot is free
/// goes in one `FINISH_MANY` call. Under light load each finish is a batch
/// of its own, so nothing waits for company. Ends when every store clone
/// (and so every sender) is gone.
pub(super) async fn record_finishes(
    conn: Conn,
    script: Script,
    keys: String,
    mut queue: tokio::sync::mpsc::Receiver<PendingFinish>,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(FINISH_CALLS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut batch = Vec::new();
        if queue.recv_many(&mut batch, FINISH_BATCH).await == 0 {
            return;
        }
        let (conn, script, keys) = (conn.clone(), script.clone(), keys.clone());
        tokio::spawn(async move {
            match finish_batch(&conn, &script, &keys, &batch).await {
                // The script refused the batch as a whole (say, a key of the
                // wrong type that no check foresaw; it checks before writing).
                // One at a time, only the finish at fault fails.
                Err(e)
                    if batch.len() > 1
                        && matches!(e.kind(), redis::ErrorKind::Server(_) | redis::ErrorKind::Extension) =>
                {
                    tracing::warn!(error = %e, finishes = batch.len(), "a batch of finishes was refused; recording them one at a time");
                    for f in batch {
                        let result = finish_batch(&conn, &script, &keys, std::slice::from_ref(&f)).await;
                        reply(&keys, vec![f], result);
                    }
                }
                result => reply(&keys, batch, result),
            }
            drop(slot);
        });
    }
}

/// Runs `FINISH_MANY` over `batch`; once more if the connection dropped
/// under it (a second run finds its finishes settled and changes nothing).
async fn finish_batch(
    conn: &Conn,
    script: &Script,
    keys: &str,
    batch: &[PendingFinish],
) -> redis::RedisResult<Vec<i64>> {
    let mut inv = script.prepare_invoke();
    inv.key(format!("{keys}counts")).arg(keys);
    for f in batch {
        inv.arg(&f.id).arg(f.token).arg(&f.attempt).arg(f.next).arg(f.retry_at).arg(&f.last_error).arg(f.updated_at);
    }
    invoke_raw(conn, &inv, true).await
}

/// Sends each finish of `batch` its result.
fn reply(keys: &str, batch: Vec<PendingFinish>, results: redis::RedisResult<Vec<i64>>) {
    match results {
        Ok(results) if results.len() == batch.len() => {
            for (f, r) in batch.into_iter().zip(results) {
                let result = match r {
                    1 => Ok(true),
                    0 => Ok(false),
                    _ => Err(corrupt(
                        &format!("{keys}dlv:{}", f.id),
                        "the delivery record, the attempt or one of the delivery's keys is unreadable",
                    )),
                };
                let _ = f.reply.send(result);
            }
        }
        Ok(results) => {
            let e =
                unavailable(format!("finish script returned {} results for {} finishes", results.len(), batch.len()));
            for f in batch {
                let _ = f.reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            let e = unavailable(e);
            for f in batch {
                let _ = f.reply.send(Err(e.clone()));
            }
        }
    }
}
