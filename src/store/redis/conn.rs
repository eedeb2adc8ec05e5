//! The connection every store operation goes through, in one of three
//! shapes:
//!
//! - **one node**: a reconnecting connection to one address (a primary, or
//!   a proxy or DNS name that follows failover);
//! - **Sentinel**: the primary the sentinels name, asked again whenever the
//!   connection breaks, times out or meets a replica (`READONLY`), so a
//!   failover is followed without a restart;
//! - **Cluster**: a Redis Cluster client, which follows `MOVED` and `ASK`.
//!   Every key of the relay shares the `{prefix}` hash tag, so scripts run
//!   on the one primary that owns that slot; the commands without a key the
//!   store sends (`WAIT`, `SCAN`, `INFO`, `TIME`) are sent to that primary too.
//!
//! Until a failover is over, commands fail fast, and ingress answers 503.

use redis::aio::{ConnectionLike, ConnectionManager};

pub(crate) use super::sentinel::SentinelConn;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Arg, Cmd, Pipeline, RedisFuture, Value};

/// A clone shares the connection.
#[derive(Clone)]
pub(crate) enum Conn {
    Node(ConnectionManager),
    Sentinel(SentinelConn),
    Cluster(ClusterConn),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A Redis Cluster connection that sends the store's key-less commands to
/// the primary of the prefix's slot.
#[derive(Clone)]
pub(crate) struct ClusterConn {
    pub conn: redis::cluster_async::ClusterConnection,
    /// A key in the prefix's slot (`{prefix}:`).
    pub slot_key: String,
}

/// Commands without a key that must reach the primary holding the data.
const TO_THE_SLOT: [&[u8]; 4] = [b"WAIT", b"SCAN", b"INFO", b"TIME"];

fn routed_to_the_slot(cmd: &Cmd) -> bool {
    match cmd.args_iter().next() {
        Some(Arg::Simple(name)) => TO_THE_SLOT.iter().any(|n| name.eq_ignore_ascii_case(n)),
        _ => false,
    }
}

impl ConnectionLike for ClusterConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        if routed_to_the_slot(cmd) {
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
                self.slot_key.as_bytes(),
                SlotAddr::Master,
            )));
            return Box::pin(self.conn.route_command(cmd.clone(), route));
        }
        self.conn.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        // A pipeline holding one of them (the replica marker and its `WAIT`)
        // runs command by command, each to where it belongs: `WAIT` counts
        // the writes of its own connection, which the marker's write used.
        if !pipeline.cmd_iter().any(routed_to_the_slot) {
            return self.conn.req_packed_commands(pipeline, offset, count);
        }
        Box::pin(async move {
            let mut out = Vec::with_capacity(pipeline.len());
            for cmd in pipeline.cmd_iter() {
                out.push(self.req_packed_command(cmd).await?);
            }
            Ok(out.into_iter().skip(offset).take(count).collect())
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
