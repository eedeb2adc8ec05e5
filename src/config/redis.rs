//! The Redis part of `[store]`: where the store is (one node, Sentinel or
//! a Cluster) and its TLS files.

use super::raw::{RawStore, RawStoreKind};
use super::validate::{Invalid, invalid};

/// Where a Redis store is: its URL (for a Cluster, the first seed, whose
/// scheme all seeds share) and its topology.
pub(super) fn redis_topology(st: &RawStore) -> Result<(String, crate::config::Topology), Invalid> {
    use crate::config::Topology;
    let tcp = |key: &str, url: &str| -> Result<(), Invalid> {
        if !["redis://", "rediss://"].iter().any(|p| url.starts_with(p)) {
            return invalid(format!("store.{key}"), "must start with redis:// or rediss:// (TLS)");
        }
        Ok(())
    };
    if st.kind == RawStoreKind::RedisCluster {
        if st.url.is_some() || st.sentinels.is_some() || st.master_name.is_some() || st.sentinel_password.is_some() {
            return invalid(
                "store",
                "kind = \"redis-cluster\" takes seed urls, not url, sentinels, master_name or sentinel_password",
            );
        }
        let urls = st.urls.clone().unwrap_or_default();
        let Some(first) = urls.first().cloned() else {
            return invalid("store.urls", "needs at least one seed URL of the cluster");
        };
        // The client takes the credentials and database of the first seed
        // for every node: the others must say the same.
        let settings = |url: &str| -> Result<(Option<String>, Option<String>, i64), Invalid> {
            use redis::IntoConnectionInfo;
            match url.into_connection_info() {
                Ok(info) => {
                    let r = info.redis_settings();
                    Ok((r.username().map(str::to_owned), r.password().map(str::to_owned), r.db()))
                }
                Err(_) => invalid("store.urls", "each must be a Redis URL"),
            }
        };
        let first_settings = settings(&first)?;
        if first_settings.2 != 0 {
            return invalid("store.urls", "a cluster has only database 0");
        }
        for url in &urls {
            tcp("urls", url)?;
            if url.starts_with("rediss://") != first.starts_with("rediss://") {
                return invalid("store.urls", "must all use TLS (rediss://) or none");
            }
            if settings(url)? != first_settings {
                return invalid("store.urls", "must all carry the same user, password and database");
            }
        }
        return Ok((first, Topology::Cluster { urls }));
    }
    if st.urls.is_some() {
        return invalid("store.urls", "applies to kind = \"redis-cluster\" only");
    }
    let url = st.url.clone().unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
    if st.sentinel_password.is_some() && st.sentinels.is_none() {
        return invalid("store.sentinel_password", "applies with sentinels only");
    }
    match (&st.sentinels, &st.master_name) {
        (None, None) => {
            if !["redis://", "rediss://", "unix://", "redis+unix://"].iter().any(|p| url.starts_with(p)) {
                return invalid("store.url", "must start with redis://, rediss:// (TLS), unix:// or redis+unix://");
            }
            Ok((url, Topology::Node))
        }
        (Some(sentinels), Some(master_name)) => {
            tcp("url", &url)?;
            if sentinels.is_empty() {
                return invalid("store.sentinels", "needs at least one host:port");
            }
            if master_name.is_empty() {
                return invalid("store.master_name", "must not be empty");
            }
            let mut parsed: Vec<(String, u16)> = Vec::new();
            for entry in sentinels {
                // host:port only: no scheme, credentials or path (they would
                // be ignored, and show in logs); an IPv6 host in brackets.
                let host_port = entry.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
                let address = match host_port {
                    Some((host, Ok(port))) if port > 0 && !host.is_empty() && !host.contains(['/', '@']) => {
                        match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                            Some(v6) if !v6.is_empty() => Some((v6.to_owned(), port)),
                            None if !host.contains([':', '[', ']']) => Some((host.to_owned(), port)),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                let Some(address) = address else {
                    return invalid("store.sentinels", "each entry must be host:port ([v6 address]:port for IPv6)");
                };
                if parsed.contains(&address) {
                    return invalid("store.sentinels", "lists a sentinel twice (each counts once toward a majority)");
                }
                parsed.push(address);
            }
            let sentinels = parsed;
            let password = match st.sentinel_password.as_deref() {
                Some("") => return invalid("store.sentinel_password", "must not be empty (leave it out instead)"),
                p => p.map(str::to_owned),
            };
            Ok((url, Topology::Sentinel { sentinels, master_name: master_name.clone(), password }))
        }
        _ => invalid("store", "sentinels and master_name go together"),
    }
}

/// The TLS files of a Redis store: only with a `rediss://` URL, a client
/// certificate only with its key, and each a file that can be read now
/// (they are read again at connect).
pub(super) fn redis_tls(
    url: &str,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
) -> Result<crate::config::RedisTls, Invalid> {
    let given = ca.is_some() || cert.is_some() || key.is_some();
    if given && !url.starts_with("rediss://") {
        return invalid("store", "tls_ca_file, tls_cert_file and tls_key_file need a rediss:// url");
    }
    // The Redis client reads `#insecure` as "skip the server's certificate".
    if url.starts_with("rediss://") && url.contains('#') {
        return invalid("store.url", "must not have a #fragment (#insecure would skip verifying the server)");
    }
    let readable = |key: &str, path: String| -> Result<std::path::PathBuf, Invalid> {
        match std::fs::read(&path) {
            Ok(pem) if pem.windows(11).any(|w| w == b"-----BEGIN ") => Ok(path.into()),
            Ok(_) => invalid(format!("store.{key}"), format!("{path} is not PEM (no -----BEGIN line)")),
            Err(e) => invalid(format!("store.{key}"), format!("cannot read {path}: {e}")),
        }
    };
    let client = match (cert, key) {
        (Some(c), Some(k)) => Some((readable("tls_cert_file", c)?, readable("tls_key_file", k)?)),
        (None, None) => None,
        _ => return invalid("store", "tls_cert_file and tls_key_file go together"),
    };
    let ca_file = ca.map(|c| readable("tls_ca_file", c)).transpose()?;
    Ok(crate::config::RedisTls { ca_file, client })
}
