//! The file's shape: what TOML deserialises into before any check that
//! needs more than one value. Strings arrive here with `${…}` already
//! resolved ([`super::env`]); the [`super::validate`] conversions turn each
//! section into its typed, checked form.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer};
use toml::Spanned;

use super::{LogFormat, ProviderKind};

/// A human-readable duration such as `"5m"`, `"30d"` or `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Dur(pub Duration);

/// The longest duration any setting takes: a hundred years. Longer ones
/// are typos, and would overflow the arithmetic on times.
const MAX_DURATION: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let d = humantime::parse_duration(&s).map_err(|e| {
            de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write e.g. \"500ms\", \"10s\", \"5m\", \"2h\", \"30d\""
            ))
        })?;
        if d > MAX_DURATION {
            return Err(de::Error::custom(format!("duration {s:?} is longer than 100 years")));
        }
        Ok(Dur(d))
    }
}

/// A parsed value that deserialises from an interpolated string.
#[derive(Debug, Clone)]
pub(super) struct Parsed<T>(pub T);

impl<'de, T> Deserialize<'de> for Parsed<T>
where
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<T>().map(Parsed).map_err(|e| de::Error::custom(format!("invalid value {s:?}: {e}")))
    }
}

/// A CIDR, or a bare address meaning just that host.
#[derive(Debug, Clone)]
pub(super) struct Cidr(pub IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        s.parse::<IpAddr>().map(|ip| Cidr(IpNet::from(ip))).map_err(|_| {
            de::Error::custom(format!("invalid CIDR {s:?}; write e.g. \"203.0.113.0/24\" or \"2001:db8::1\""))
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub server: RawServer,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub sources: Vec<RawSource>,
    #[serde(default)]
    pub endpoints: Vec<RawEndpoint>,
    #[serde(default)]
    pub delivery: RawDelivery,
    #[serde(default)]
    pub retention: RawRetention,
    #[serde(default)]
    pub quarantine: RawQuarantine,
    #[serde(default)]
    pub log: RawLog,
    /// Variables whose `${NAME:-default}` fallback is in use; set after
    /// deserialisation.
    #[serde(skip)]
    pub defaulted_vars: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub listen: Parsed<SocketAddr>,
    pub admin_listen: Parsed<SocketAddr>,
    #[serde(default)]
    pub admin_token: Option<Spanned<String>>,
    /// Whether `admin_token` came from a `${NAME:-default}` fallback; set
    /// after deserialisation from where the fallbacks went.
    #[serde(skip)]
    pub admin_token_defaulted: bool,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout: Dur,
    #[serde(default = "default_body_timeout")]
    pub body_read_timeout: Dur,
    #[serde(default = "default_grace")]
    pub shutdown_grace: Dur,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_admission_timeout")]
    pub admission_timeout: Dur,
    #[serde(default)]
    pub worker_threads: Option<usize>,
}

fn default_max_connections() -> usize {
    1024
}
fn default_admission_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

fn default_max_body() -> usize {
    65536
}
fn default_header_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_body_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_grace() -> Dur {
    Dur(Duration::from_secs(30))
}

#[derive(Deserialize, Default, PartialEq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawStoreKind {
    #[default]
    Embedded,
    Redis,
    #[serde(rename = "redis-cluster")]
    RedisCluster,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    #[serde(default)]
    pub kind: RawStoreKind,
    pub path: Option<String>,
    pub url: Option<String>,
    pub prefix: Option<String>,
    #[serde(default = "default_dedupe_ttl")]
    pub dedupe_ttl: Dur,
    /// `rediss://` only: the CA that signed the server's certificate (else
    /// the system's roots), and a client certificate and its key.
    pub tls_ca_file: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    /// Redis only: replicas that confirm each admission (`WAIT`).
    pub min_replicas_ack: Option<u32>,
    pub replica_ack_timeout: Option<Dur>,
    /// Redis Sentinel: the sentinels (`host:port`) and the name they
    /// monitor the primary under.
    pub sentinels: Option<Vec<String>>,
    pub master_name: Option<String>,
    /// The sentinels' own password (`requirepass` in sentinel.conf).
    pub sentinel_password: Option<String>,
    /// Redis Cluster: seed URLs.
    pub urls: Option<Vec<String>>,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            kind: RawStoreKind::Embedded,
            path: None,
            url: None,
            prefix: None,
            dedupe_ttl: default_dedupe_ttl(),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            min_replicas_ack: None,
            replica_ack_timeout: None,
            sentinels: None,
            master_name: None,
            sentinel_password: None,
            urls: None,
        }
    }
}

fn default_dedupe_ttl() -> Dur {
    Dur(Duration::from_secs(30 * 86400))
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub per_second: u32,
    pub burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub name: String,
    pub kind: ProviderKind,
    pub secrets: Vec<String>,
    #[serde(default)]
    pub allow_ips: Vec<Cidr>,
    pub rate_limit: Option<RawRateLimit>,
    pub timestamp_tolerance: Option<Dur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEndpoint {
    pub name: String,
    pub url: String,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub events: Option<Vec<String>>,
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default = "default_endpoint_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    pub rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    pub ordering: super::Ordering,
    #[serde(default)]
    pub regressions: super::Regressions,
}

fn default_endpoint_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_max_in_flight() -> usize {
    16
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDelivery {
    pub max_attempts: u32,
    pub initial_backoff: Dur,
    pub max_backoff: Dur,
    pub multiplier: f64,
    pub jitter: f64,
    pub visibility_timeout: Dur,
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery {
            max_attempts: 12,
            initial_backoff: Dur(Duration::from_secs(5)),
            max_backoff: Dur(Duration::from_secs(7200)),
            multiplier: 3.0,
            jitter: 0.2,
            visibility_timeout: Dur(Duration::from_secs(60)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRetention {
    pub delivered: Dur,
    pub dead: Dur,
    pub replay_jobs: Dur,
}

impl Default for RawRetention {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        RawRetention {
            delivered: Dur(Duration::from_secs(7 * DAY)),
            dead: Dur(Duration::from_secs(90 * DAY)),
            replay_jobs: Dur(Duration::from_secs(30 * DAY)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawQuarantine {
    pub enabled: bool,
    /// 7 days, or `store.dedupe_ttl` if that is shorter.
    pub ttl: Option<Dur>,
    pub max_bytes: u64,
    pub max_per_client_per_minute: u32,
}

impl Default for RawQuarantine {
    fn default() -> Self {
        RawQuarantine { enabled: true, ttl: None, max_bytes: 64 * 1024 * 1024, max_per_client_per_minute: 60 }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub format: LogFormat,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog { format: LogFormat::Pretty }
    }
}
