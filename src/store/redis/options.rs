//! How the relay talks to Redis beyond its URL: TLS files and replica
//! acknowledgements (`[store]` in the configuration, which re-exports
//! these).

use std::path::PathBuf;
use std::time::Duration;

/// How the relay talks to Redis, beyond the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// One node, the primary Sentinel names, or a Cluster.
    pub topology: Topology,
    pub tls: RedisTls,
    /// Replicas that must confirm an admission's writes before its 200
    /// (`WAIT`); 0 answers once the primary has them.
    pub min_replicas_ack: u32,
    /// How long an admission waits for them before answering 503.
    pub replica_ack_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            topology: Topology::Node,
            tls: RedisTls::default(),
            min_replicas_ack: 0,
            replica_ack_timeout: Duration::from_secs(1),
        }
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

/// Where the relay finds its Redis.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Topology {
    /// The URL's one address (a primary, or a proxy that follows failover).
    #[default]
    Node,
    /// The primary the sentinels (`host:port`) name `master_name`, found
    /// again after a failover. The URL gives the scheme (TLS or not), the
    /// credentials and the database; its host is not used. `password` is
    /// the sentinels' own (`requirepass` in their configuration), if any.
    Sentinel { sentinels: Vec<(String, u16)>, master_name: String, password: Option<String> },
    /// A Redis Cluster, reached through its seed URLs.
    Cluster { urls: Vec<String> },
}

/// Seed URLs may hold a password: their count only.
impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Topology::Node => f.write_str("Node"),
            Topology::Sentinel { sentinels, master_name, password } => f
                .debug_struct("Sentinel")
                .field("sentinels", sentinels)
                .field("master_name", master_name)
                .field("password", &password.as_ref().map(|_| "set"))
                .finish(),
            Topology::Cluster { urls } => write!(f, "Cluster {{ urls: {} seed(s) }}", urls.len()),
        }
    }
}
