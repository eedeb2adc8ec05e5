//! The Lua scripts that make every change to the Redis store atomic, each
//! in its own file under `lua/` with its KEYS and ARGV in a comment at the
//! top. They are built once at connect; redis-rs sends each by its SHA1
//! and loads it on the first `NOSCRIPT`.
//!
//! `lib.lua` (record decoding, batched writes, the gates of ordered
//! delivery) and `replay_ids.lua` (the
//! replay of a list of ids) are shared: they are prepended to the scripts
//! that use them.
//!
//! [`invoke_raw`] runs one, retrying only the scripts that are harmless to
//! run twice.

use super::conn::Conn;
use redis::Script;

const LIB: &str = include_str!("lua/lib.lua");
const REPLAY_IDS: &str = include_str!("lua/replay_ids.lua");

pub(super) struct Scripts {
    pub admit: Script,
    pub claim: Script,
    pub finish_many: Script,
    pub release: Script,
    pub replay: Script,
    pub replay_step: Script,
    pub create_job: Script,
    pub sweep: Script,
    pub orphan: Script,
    pub adopt: Script,
    pub discard: Script,
    pub purge: Script,
    pub heal_gates: Script,
    pub quarantine_keep: Script,
    pub quarantine_release: Script,
    pub quarantine_rediagnose: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        let with_lib = |body: &str| Script::new(&format!("{LIB}{body}"));
        Scripts {
            admit: with_lib(include_str!("lua/admit.lua")),
            claim: with_lib(include_str!("lua/claim.lua")),
            finish_many: with_lib(include_str!("lua/finish_many.lua")),
            release: with_lib(include_str!("lua/release.lua")),
            replay: with_lib(&format!("{REPLAY_IDS}{}", include_str!("lua/replay.lua"))),
            replay_step: with_lib(&format!("{REPLAY_IDS}{}", include_str!("lua/replay_step.lua"))),
            create_job: Script::new(include_str!("lua/create_job.lua")),
            sweep: Script::new(include_str!("lua/sweep.lua")),
            orphan: with_lib(include_str!("lua/orphan.lua")),
            adopt: with_lib(include_str!("lua/adopt.lua")),
            discard: with_lib(include_str!("lua/discard.lua")),
            purge: with_lib(include_str!("lua/purge.lua")),
            heal_gates: with_lib(include_str!("lua/heal_gates.lua")),
            quarantine_keep: Script::new(include_str!("lua/quarantine_keep.lua")),
            quarantine_release: Script::new(include_str!("lua/quarantine_release.lua")),
            quarantine_rediagnose: Script::new(include_str!("lua/quarantine_rediagnose.lua")),
        }
    }
}

/// Runs a script; with `retry`, once more if the connection dropped under
/// it (not after a timeout: the first run may still be queued). Admit,
/// finish, release and sweep are harmless to run twice; claim and replay are
/// not (a second run would strand or miscount), so they are never retried
/// here: their callers retry. Any script runs once more, a moment later,
/// when the node refused it unrun because the data moved or is not served
/// yet (a Cluster or Sentinel failover: `MOVED`, `READONLY`, …).
pub(super) async fn invoke_raw<T: redis::FromRedisValue>(
    conn: &Conn,
    script: &redis::ScriptInvocation<'_>,
    retry: bool,
) -> redis::RedisResult<T> {
    match script.invoke_async(&mut conn.clone()).await {
        Err(e) if not_run(&e) => {
            tracing::debug!(error = %e, "redis refused the script unrun; running it once more");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            script.invoke_async(&mut conn.clone()).await
        }
        Err(e) if retry && e.is_connection_dropped() && !e.is_timeout() => {
            tracing::debug!(error = %e, "redis connection dropped; running the script once more");
            script.invoke_async(&mut conn.clone()).await
        }
        result => result,
    }
}

/// Errors with which a node refuses a command before running it.
fn not_run(e: &redis::RedisError) -> bool {
    matches!(e.code(), Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY" | "MASTERDOWN" | "LOADING"))
}
