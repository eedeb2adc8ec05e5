//! Connecting: the client's timeouts, a check of the server's eviction and
//! persistence settings, and the indexes built once over data written by
//! older versions.

use redis::AsyncCommands;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::conn::{ClusterConn, Conn, SentinelConn};
use super::finishes::{FINISH_BATCH, FINISH_CALLS, record_finishes};
use super::replicas::ReplicaAcks;
use super::scripts::Scripts;
use super::sentinel::{Lookup, Sentinels};
use super::{DeliveryState, RedisStore, StoreError, unavailable};
use super::{RedisOptions, RedisTls, Topology};
use crate::store::Context;

/// `tls`'s files, read now; `None` without any.
fn certificates(tls: &RedisTls) -> Result<Option<redis::TlsCertificates>, StoreError> {
    if *tls == RedisTls::default() {
        return Ok(None);
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| unavailable(Context::new(format!("cannot read {}", path.display()), e)))
    };
    let root_cert = tls.ca_file.as_deref().map(read).transpose()?;
    let client_tls = match &tls.client {
        Some((cert, key)) => Some(redis::ClientTlsConfig { client_cert: read(cert)?, client_key: read(key)? }),
        None => None,
    };
    Ok(Some(redis::TlsCertificates { client_tls, root_cert }))
}

/// The connection to `url` in the options' topology. TLS is rustls with
/// ring, the provider the relay's HTTP client uses; no OpenSSL.
async fn open(url: &str, prefix: &str, options: &RedisOptions) -> Result<Conn, StoreError> {
    let tls = url.starts_with("rediss://")
        || matches!(&options.topology, Topology::Cluster { urls } if urls.iter().any(|u| u.starts_with("rediss://")));
    if tls {
        crate::http::install_tls_provider();
    }
    let certs = certificates(&options.tls)?;
    // Fail fast while Redis is unreachable: ingress answers 503 within
    // about two seconds and the provider retries, rather than holding its
    // request through a long outage. A WAIT for replicas holds the
    // connection up to its timeout.
    let connect_timeout = Duration::from_secs(1);
    let response_timeout = Duration::from_secs(2)
        + if options.min_replicas_ack > 0 { options.replica_ack_timeout } else { Duration::ZERO };
    match &options.topology {
        Topology::Node => {
            let client = match certs {
                Some(certs) => redis::Client::build_with_tls(url, certs),
                None => redis::Client::open(url),
            }
            .map_err(unavailable)?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(response_timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(200));
            Ok(Conn::Node(ConnectionManager::new_with_config(client, config).await.map_err(unavailable)?))
        }
        Topology::Sentinel { sentinels, master_name, password } => {
            use redis::IntoConnectionInfo;
            // The sentinels speak TLS when the primary does, with the same files.
            let sentinels = sentinels
                .iter()
                .map(|(host, port)| {
                    let addr = match tls {
                        true => redis::ConnectionAddr::TcpTls {
                            host: host.clone(),
                            port: *port,
                            insecure: false,
                            tls_params: None,
                        },
                        false => redis::ConnectionAddr::Tcp(host.clone(), *port),
                    };
                    let mut info = addr.into_connection_info()?;
                    if let Some(password) = password {
                        let settings = info.redis_settings().clone().set_password(password);
                        info = info.set_redis_settings(settings);
                    }
                    match &certs {
                        Some(certs) => redis::Client::build_with_tls(info, certs.clone()),
                        None => redis::Client::open(info),
                    }
                })
                .collect::<redis::RedisResult<Vec<_>>>()
                .map_err(unavailable)?;
            let lookup = Lookup {
                sentinels: Sentinels::new(sentinels, master_name.clone()),
                primary: url.into_connection_info().map_err(unavailable)?,
                tls,
                certs,
                config: redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(response_timeout)),
            };
            let conn = SentinelConn::connect(lookup)
                .await
                .map_err(|e| unavailable(Context::new(format!("no Redis primary {master_name:?} found"), e)))?;
            Ok(Conn::Sentinel(conn))
        }
        Topology::Cluster { urls } => {
            let mut builder = redis::cluster::ClusterClient::builder(urls.clone())
                .connection_timeout(connect_timeout)
                .response_timeout(response_timeout)
                // No retries: a script that may have run is never sent
                // again here (scripts.rs retries those harmless to run
                // twice). A MOVED after a failover fails its command once,
                // as a broken connection does, and refreshes the slot map
                // for the next one; ingress answers 503 meanwhile.
                .retries(0);
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            let client = builder.build().map_err(unavailable)?;
            let conn = client.get_async_connection().await.map_err(unavailable)?;
            Ok(Conn::Cluster(ClusterConn { conn, slot_key: format!("{{{prefix}}}:") }))
        }
    }
}

impl RedisStore {
    /// Connects to `url` (redis://, unix://, redis+unix://), one node, with
    /// keys under `{prefix}`.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        RedisStore::connect_with(url, prefix, &RedisOptions::default()).await
    }

    /// [`connect`](RedisStore::connect), also to `rediss://` (rustls) with
    /// the options' CA and client certificate, through Sentinel or to a
    /// Cluster, and with admissions confirmed by `min_replicas_ack`
    /// replicas.
    pub async fn connect_with(url: &str, prefix: &str, options: &RedisOptions) -> Result<RedisStore, StoreError> {
        let mut conn = open(url, prefix, options).await?;
        // A command now, so that what only shows on the first read (a TLS
        // server refusing a missing client certificate, a wrong password)
        // stops the start with its reason rather than the first admission.
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| unavailable(Context::new("Redis did not answer PING", e)))?;
        // Evicting any of our keys loses data: dedupe keys (duplicates get
        // through), schedules (deliveries are never claimed) or events.
        // Best effort: a Redis user without INFO rights still runs the relay.
        match redis::cmd("INFO").arg("memory").arg("persistence").query_async::<String>(&mut conn).await {
            Ok(info) => {
                let field = |name: &str| {
                    info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim).unwrap_or("")
                };
                let policy = field("maxmemory_policy");
                if !policy.is_empty() && policy != "noeviction" {
                    tracing::warn!(policy = %policy, "Redis maxmemory-policy is not noeviction: Redis may evict relay data under memory pressure; set maxmemory-policy noeviction");
                }
                if field("aof_enabled") == "0" {
                    tracing::warn!(
                        "Redis has no append-only file: a Redis restart loses events the relay already accepted; set appendonly yes and appendfsync always (see docs/scaling.md)"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read Redis INFO to check eviction and persistence settings")
            }
        }
        let scripts = std::sync::Arc::new(Scripts::new());
        let keys = format!("{{{prefix}}}:");
        let (finishes, queue) = tokio::sync::mpsc::channel(FINISH_BATCH * FINISH_CALLS);
        tokio::spawn(record_finishes(conn.clone(), scripts.finish_many.clone(), keys.clone(), queue));
        let replicas = match options.min_replicas_ack {
            0 => None,
            n => Some(ReplicaAcks::start(conn.clone(), format!("{keys}ack-mark"), n, options.replica_ack_timeout)),
        };
        let clock = super::schedule::Clock::default();
        let store = RedisStore { conn, keys, scripts, finishes, replicas, clock: clock.clone() };
        // Scheduling follows Redis's clock (schedule.rs). A Redis user not
        // allowed TIME leaves each relay on its own clock, said once here.
        match super::schedule::measure_offset(&store.conn).await {
            Ok(offset) => clock.set(offset),
            Err(e) => tracing::warn!(
                error = %e,
                "Redis refused TIME: claims and due times follow this relay's clock; allow TIME (+time) for the relay's Redis user, and keep the relays' clocks in sync (NTP)"
            ),
        }
        clock.keep_measuring(store.conn.clone());
        store.build_open_index().await?;
        store.build_state_index().await?;
        store.build_retention_index().await?;
        Ok(store)
    }

    /// Data written before the open-delivery index existed: build it once
    /// from the schedules, which hold every pending or in-flight delivery.
    /// Adding is idempotent, so relays starting together do no harm. A new
    /// prefix has no such data, and on a Redis shared with other prefixes
    /// a scan of the whole keyspace would only delay the start.
    async fn build_open_index(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let marker = self.key("open-index");
        if conn.exists(&marker).await.map_err(unavailable)? {
            return Ok(());
        }
        // Every version of admission that stored a delivery counted it and
        // indexed it for listing.
        let existing: usize = conn.exists(&[self.key("counts"), self.key("index")]).await.map_err(unavailable)?;
        if existing == 0 {
            let _: () = conn.set(&marker, 1).await.map_err(unavailable)?;
            return Ok(());
        }
        let mut cursor: u64 = 0;
        loop {
            let (next, keys) = self.scan_page("due:*", cursor).await?;
            for key in keys {
                let ids: Vec<String> = conn.zrange(&key, 0, -1).await.map_err(unavailable)?;
                for chunk in ids.chunks(1000) {
                    let members: Vec<(u8, &String)> = chunk.iter().map(|id| (0, id)).collect();
                    let _: () = conn.zadd_multiple(self.key("open"), &members).await.map_err(unavailable)?;
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let _: () = conn.set(&marker, 1).await.map_err(unavailable)?;
        Ok(())
    }

    /// Up to 1,000 delivery ids of the listing index below `upper` (a lex
    /// bound, `+` for the top), newest first: a page of the walks over
    /// every delivery that the one-time index builds make.
    pub(super) async fn index_page(&self, upper: &str) -> Result<Vec<String>, StoreError> {
        redis::cmd("ZREVRANGEBYLEX")
            .arg(self.key("index"))
            .arg(upper)
            .arg("-")
            .arg("LIMIT")
            .arg(0)
            .arg(1000)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    /// One `SCAN` page of this prefix's keys matching `suffix` (a glob
    /// after the prefix, whose own glob characters are escaped); the next
    /// cursor is 0 when the scan is over.
    pub(super) async fn scan_page(&self, suffix: &str, cursor: u64) -> Result<(u64, Vec<String>), StoreError> {
        let prefix = self.keys.replace('[', "\\[").replace('*', "\\*").replace('?', "\\?");
        redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}{suffix}"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    /// Data written before the `dead` index and the `endpoints` set: index
    /// every dead delivery and remember every endpoint, once, by walking
    /// the listing index. Idempotent, like the open index above.
    async fn build_state_index(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let marker = self.key("state-index");
        if conn.exists(&marker).await.map_err(unavailable)? {
            return Ok(());
        }
        let mut upper = "+".to_owned();
        loop {
            let ids = self.index_page(&upper).await?;
            let Some(last) = ids.last().cloned() else { break };
            let deliveries = self.deliveries(&ids).await?;
            let dead: Vec<(u8, &str)> =
                deliveries.iter().filter(|d| d.state == DeliveryState::Dead).map(|d| (0, d.id.as_str())).collect();
            if !dead.is_empty() {
                let _: () = conn.zadd_multiple(self.key("dead"), &dead).await.map_err(unavailable)?;
            }
            let endpoints: std::collections::BTreeSet<&str> = deliveries.iter().map(|d| d.endpoint.as_str()).collect();
            if !endpoints.is_empty() {
                let _: () = conn.sadd(self.key("endpoints"), endpoints).await.map_err(unavailable)?;
            }
            upper = format!("({last}");
        }
        let _: () = conn.set(&marker, 1).await.map_err(unavailable)?;
        Ok(())
    }
}
