//! The primary that Redis Sentinel names, followed across failovers.
//!
//! The primary is the address a majority of the configured sentinels name,
//! and it must call itself a primary (`ROLE`). Asking only the first
//! sentinel that answers is not enough: one that has not yet heard of a
//! failover names the old primary, which, restarted and not yet turned into
//! a replica, accepts writes that are then thrown away.
//!
//! It is looked up again whenever a command fails in a way that may mean
//! the primary moved: the connection broke or timed out, or the node is a
//! replica now (`READONLY`). Until a lookup finds one, commands fail fast
//! and ingress answers 503.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, ConnectionAddr, ConnectionInfo, Pipeline, RedisError, RedisFuture, Value};

/// Least time between two lookups, so that sentinels in the middle of a
/// failover are not asked hundreds of times a second.
const LOOKUP_EVERY: Duration = Duration::from_millis(200);

/// How often the sentinels are asked whether the primary moved while its
/// connection still works.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long one sentinel gets to answer.
const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);

/// A clone shares the connection.
#[derive(Clone)]
pub(crate) struct SentinelConn(Arc<Inner>);

/// The configured sentinels, each with a connection kept between
/// questions (the check every second would otherwise open one to each).
pub(crate) struct Sentinels {
    links: Vec<(redis::Client, tokio::sync::Mutex<Option<MultiplexedConnection>>)>,
    pub master_name: String,
}

impl Sentinels {
    pub fn new(clients: Vec<redis::Client>, master_name: String) -> Arc<Sentinels> {
        let links = clients.into_iter().map(|c| (c, tokio::sync::Mutex::new(None))).collect();
        Arc::new(Sentinels { links, master_name })
    }

    /// What sentinel `i` names as the primary; `None` if it does not
    /// answer in time. A kept connection that fails is made anew once (the
    /// sentinel may have restarted since). The link's lock is held only to
    /// take or put the connection, never across a request.
    async fn ask(&self, i: usize) -> Option<(String, u16)> {
        let (client, link) = &self.links[i];
        for _ in 0..2 {
            let kept = link.lock().await.clone();
            let (mut conn, was_kept) = match kept {
                Some(conn) => (conn, true),
                None => {
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(SENTINEL_TIMEOUT))
                        .set_response_timeout(Some(SENTINEL_TIMEOUT));
                    let conn = match client.get_multiplexed_async_connection_with_config(&config).await {
                        Ok(conn) => conn,
                        Err(e) => {
                            tracing::debug!(sentinel = i, error = %e, "cannot reach a sentinel");
                            return None;
                        }
                    };
                    *link.lock().await = Some(conn.clone());
                    (conn, false)
                }
            };
            let named: redis::RedisResult<Option<(String, u16)>> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&self.master_name)
                .query_async(&mut conn)
                .await;
            match named {
                Ok(named) => return named,
                Err(e) => {
                    // A wrong sentinel_password shows here (NOAUTH/WRONGPASS).
                    tracing::debug!(sentinel = i, error = %e, "a sentinel did not answer");
                    *link.lock().await = None;
                }
            }
            if !was_kept {
                break;
            }
        }
        None
    }

    /// The primary's address, as a majority of the sentinels name it.
    async fn primary_address(self: &Arc<Self>) -> Result<(String, u16), String> {
        let mut asks = tokio::task::JoinSet::new();
        for i in 0..self.links.len() {
            let sentinels = self.clone();
            asks.spawn(async move { sentinels.ask(i).await });
        }
        let majority = self.links.len() / 2 + 1;
        let mut votes: HashMap<(String, u16), usize> = HashMap::new();
        while let Some(answer) = asks.join_next().await {
            if let Ok(Some(addr)) = answer {
                let n = votes.entry(addr.clone()).or_default();
                *n += 1;
                // A majority agrees: the rest cannot change it (dropping the
                // set stops their asks).
                if *n >= majority {
                    return Ok(addr);
                }
            }
        }
        let heard: usize = votes.values().sum();
        votes.into_iter().find(|(_, n)| *n >= majority).map(|(addr, _)| addr).ok_or_else(|| {
            format!(
                "no majority of the {} sentinels names a primary for {:?} ({heard} answered)",
                self.links.len(),
                self.master_name
            )
        })
    }
}

/// How to reach the sentinels and, once found, the primary.
pub(crate) struct Lookup {
    pub sentinels: Arc<Sentinels>,
    /// The primary's credentials, database and TLS; its address is found.
    pub primary: ConnectionInfo,
    pub tls: bool,
    pub certs: Option<redis::TlsCertificates>,
    pub config: redis::AsyncConnectionConfig,
}

struct Inner {
    /// Held while looking the primary up, so that one failure leads to one
    /// lookup however many commands saw it.
    lookup: tokio::sync::Mutex<Lookup>,
    /// Asked by the check every second without waiting for that lock.
    sentinels: Arc<Sentinels>,
    /// The connection to the primary and its generation; `None` after a
    /// lookup that found no primary.
    current: std::sync::RwLock<(u64, Option<MultiplexedConnection>)>,
    /// The primary's address, as last found.
    address: std::sync::Mutex<Option<(String, u16)>>,
    db: i64,
}

impl Lookup {
    async fn primary_address(&self) -> Result<(String, u16), String> {
        self.sentinels.primary_address().await
    }

    /// Connects to the primary the sentinels name, which must say it is one.
    async fn connect(&self) -> redis::RedisResult<(MultiplexedConnection, (String, u16))> {
        let address = self.primary_address().await.map_err(not_connected)?;
        self.connect_to(address).await
    }

    /// Connects to `(host, port)`, which must say it is a primary.
    async fn connect_to(
        &self,
        (host, port): (String, u16),
    ) -> redis::RedisResult<(MultiplexedConnection, (String, u16))> {
        let found = (host.clone(), port);
        let addr = match self.tls {
            true => ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None },
            false => ConnectionAddr::Tcp(host, port),
        };
        let info = self.primary.clone().set_addr(addr);
        let client = match &self.certs {
            Some(certs) => redis::Client::build_with_tls(info, certs.clone())?,
            None => redis::Client::open(info)?,
        };
        let mut conn = client.get_multiplexed_async_connection_with_config(&self.config).await?;
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
        match role.first() {
            Some(Value::BulkString(r)) if r == b"master" => Ok((conn, found)),
            _ => Err(not_connected("the node the sentinels name is not a primary (yet)")),
        }
    }
}

fn not_connected(why: impl Into<String>) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::NotConnected, why.into()))
}

/// Whether `e` may mean the primary moved: the connection broke or timed
/// out, or the node is a replica now.
fn primary_may_have_moved(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}

impl SentinelConn {
    /// Finds the primary and connects to it.
    pub async fn connect(lookup: Lookup) -> redis::RedisResult<SentinelConn> {
        let (conn, address) = lookup.connect().await?;
        let db = lookup.primary.redis_settings().db();
        let sentinel = SentinelConn(Arc::new(Inner {
            sentinels: lookup.sentinels.clone(),
            lookup: tokio::sync::Mutex::new(lookup),
            current: std::sync::RwLock::new((0, Some(conn))),
            address: std::sync::Mutex::new(Some(address)),
            db,
        }));
        sentinel.keep_checking();
        Ok(sentinel)
    }

    /// Asks the sentinels every [`CHECK_EVERY`] whether the primary is
    /// still the one connected to, for as long as the connection lives. A
    /// primary the sentinels replaced while it was alive but unreachable to
    /// them (a partition, a stalled host) still answers and still calls
    /// itself a primary until they reach it; what it takes meanwhile is
    /// thrown away when it becomes a replica. This bounds that time.
    fn keep_checking(&self) {
        let inner = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CHECK_EVERY).await;
                let Some(inner) = inner.upgrade() else { return };
                let conn = SentinelConn(inner);
                let named = conn.0.sentinels.primary_address().await;
                let current = conn.0.address.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Ok(named) = named
                    && current.as_ref() != Some(&named)
                {
                    tracing::warn!(
                        primary = %format!("{}:{}", named.0, named.1),
                        "the sentinels name another Redis primary; reconnecting"
                    );
                    let seen = conn.current().0;
                    conn.lookup(seen).await;
                }
            }
        });
    }

    fn current(&self) -> (u64, Option<MultiplexedConnection>) {
        self.0.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Looks the primary up again, unless another caller did since
    /// generation `seen`.
    async fn lookup(&self, seen: u64) {
        let lookup = self.0.lookup.lock().await;
        if self.current().0 != seen {
            return;
        }
        let started = Instant::now();
        let conn = match lookup.primary_address().await {
            // No majority answers (sentinels down or cut off): nothing says
            // the primary moved, so the connection stays as it is. A broken
            // one fails its next command and asks again.
            Err(why) => {
                tracing::warn!(master_name = %lookup.sentinels.master_name, why = %why, "cannot ask the sentinels; keeping the current Redis connection");
                self.current().1
            }
            Ok(address) => match lookup.connect_to(address).await {
                Ok((conn, address)) => {
                    tracing::info!(master_name = %lookup.sentinels.master_name, "connected to the Redis primary the sentinels name");
                    *self.0.address.lock().unwrap_or_else(|e| e.into_inner()) = Some(address);
                    Some(conn)
                }
                Err(e) => {
                    tracing::warn!(master_name = %lookup.sentinels.master_name, error = %e, "no Redis primary yet; ingress answers 503 until one is found");
                    None
                }
            },
        };
        *self.0.current.write().unwrap_or_else(|e| e.into_inner()) = (seen + 1, conn);
        // Hold the lock a little: callers queued behind it see the new
        // generation and do not ask again at once.
        if let Some(rest) = LOOKUP_EVERY.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }

    /// The connection to the primary, looked up first if there is none.
    async fn primary(&self) -> Result<(u64, MultiplexedConnection), RedisError> {
        let (seen, conn) = self.current();
        if let Some(conn) = conn {
            return Ok((seen, conn));
        }
        self.lookup(seen).await;
        match self.current() {
            (seen, Some(conn)) => Ok((seen, conn)),
            _ => Err(not_connected("no Redis primary: the sentinels name none that answers")),
        }
    }

    /// Sends `request` to the primary; on a failure that may mean a
    /// failover, looks the primary up again. A command a replica refused
    /// (`READONLY`) was not run, so it is sent once more to the new
    /// primary; any other failure is returned (the command may have run).
    async fn run(&self, request: Request<'_>) -> redis::RedisResult<Reply> {
        let (seen, mut conn) = self.primary().await?;
        match request.send(&mut conn).await {
            Err(e) if primary_may_have_moved(&e) => {
                self.lookup(seen).await;
                Err(e)
            }
            // A server's error comes back as a value; a replica's READONLY
            // (or MASTERDOWN, LOADING) means the primary moved.
            Ok(reply) => match reply.moved() {
                Some(code) => {
                    self.lookup(seen).await;
                    // A single command refused as READONLY did not run.
                    if code == "READONLY" && matches!(request, Request::One(_)) {
                        let (_, mut conn) = self.primary().await?;
                        return request.send(&mut conn).await;
                    }
                    Ok(reply)
                }
                None => Ok(reply),
            },
            Err(e) => Err(e),
        }
    }
}

/// A command or a pipeline, as [`ConnectionLike`] gets them.
enum Request<'a> {
    One(&'a Cmd),
    Many(&'a Pipeline, usize, usize),
}

enum Reply {
    One(Value),
    Many(Vec<Value>),
}

impl Reply {
    /// The code of a server error in the reply that means the node is no
    /// longer the primary, if any.
    fn moved(&self) -> Option<&'static str> {
        let code = |v: &Value| match v {
            Value::ServerError(e) => ["READONLY", "MASTERDOWN", "LOADING"].into_iter().find(|c| e.code() == *c),
            _ => None,
        };
        match self {
            Reply::One(v) => code(v),
            Reply::Many(values) => values.iter().find_map(code),
        }
    }
}

impl Request<'_> {
    async fn send(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<Reply> {
        match *self {
            Request::One(cmd) => conn.req_packed_command(cmd).await.map(Reply::One),
            Request::Many(pipeline, offset, count) => {
                conn.req_packed_commands(pipeline, offset, count).await.map(Reply::Many)
            }
        }
    }
}

fn mismatched() -> RedisError {
    RedisError::from(std::io::Error::other("a reply of the wrong shape"))
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            match self.run(Request::One(cmd)).await? {
                Reply::One(value) => Ok(value),
                Reply::Many(_) => Err(mismatched()),
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            match self.run(Request::Many(pipeline, offset, count)).await? {
                Reply::Many(values) => Ok(values),
                Reply::One(_) => Err(mismatched()),
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.0.db
    }
}
