//! How the relay talks to Redis beyond its URL: TLS files and replica
//! acknowledgements (`[store]` in the configuration, which re-exports
//! these).

use std::path::PathBuf;
use std::time::Duration;

/// How the relay talks to Redis, beyond the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    pub tls: RedisTls,
    /// Replicas that must confirm an admission's writes before its 200
    /// (`WAIT`); 0 answers once the primary has them.
    pub min_replicas_ack: u32,
    /// How long an admission waits for them before answering 503.
    pub replica_ack_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions { tls: RedisTls::default(), min_replicas_ack: 0, replica_ack_timeout: Duration::from_secs(1) }
    }
}

/// TLS to Redis beyond what a `rediss://` URL says: files read at
/// connect. Without `ca_file` the system's roots verify the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key, for a server that asks for one.
    pub client: Option<(PathBuf, PathBuf)>,
}
