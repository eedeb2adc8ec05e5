//! Configuration: TOML parsed once at start-up into typed, validated values.
//!
//! Loading goes in three steps, one file each:
//! - [`env`]: every string value may use `${NAME}` (a missing variable is an
//!   error) or `${NAME:-default}`, resolved from the environment the caller
//!   passes in, on the parsed document, so an error names the line;
//! - [`raw`]: the file's shape, deserialised; unknown keys are errors;
//! - [`validate`]: one `TryFrom` per section into the types below, then the
//!   checks that span sections (unique names, a tolerance within the dedupe
//!   TTL, a visibility timeout above every endpoint timeout); each refusal
//!   names its key.
//!
//! Nothing after this module handles raw strings from the file. The file
//! format is documented in `docs/configuration.md`.

mod env;
mod raw;
mod redis;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

/// What is wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// TOML syntax, types, unknown keys, bad values, missing variables: the
    /// message carries the line and column.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
}

/// A secret that never shows itself in `Debug` or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(s: impl Into<Vec<u8>>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Nowpayments,
    Nova,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Nowpayments => "nowpayments",
            ProviderKind::Nova => "nova",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl RateLimit {
    /// The limit as a `governor` quota: the one constructor of every rate
    /// limiter in the relay.
    pub fn quota(self) -> governor::Quota {
        governor::Quota::per_second(self.per_second).allow_burst(self.burst)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub name: String,
    pub kind: ProviderKind,
    pub secrets: Vec<Secret>,
    pub allow_ips: Vec<IpNet>,
    pub rate_limit: Option<RateLimit>,
    /// Nova only; `None` when disabled.
    pub timestamp_tolerance: Option<Duration>,
}

/// An `events` pattern of an endpoint: `*`, `deposit.*` or an exact type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPattern {
    Any,
    Prefix(String),
    Exact(String),
}

impl EventPattern {
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            EventPattern::Any => true,
            EventPattern::Prefix(p) => event_type.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('.')),
            EventPattern::Exact(t) => t == event_type,
        }
    }
}

/// A URL that may carry credentials (`redis://:password@host`,
/// `https://user:password@backend`): `Debug` and `Display` show it with
/// the password replaced by `***`, so it never reaches a log or an error
/// whole. [`Url::expose`] gives the real thing to the client that needs it.
#[derive(Clone, PartialEq)]
pub struct Url<T>(T);

impl<T: fmt::Display> Url<T> {
    pub fn new(url: T) -> Url<T> {
        Url(url)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: fmt::Display> fmt::Debug for Url<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(&self.0.to_string()))
    }
}

impl<T: fmt::Display> fmt::Display for Url<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub name: String,
    pub url: Url<http::Uri>,
    /// The decoded key of the endpoint's `whsec_` secret.
    pub signing_key: Secret,
    /// The key being rotated out (`previous_secret`): while set, every
    /// attempt carries a signature with each key.
    pub previous_signing_key: Option<Secret>,
    pub events: Vec<EventPattern>,
    /// Source names; empty means all.
    pub sources: Vec<String>,
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub rate_limit: Option<RateLimit>,
    pub ordering: Ordering,
    pub regressions: Regressions,
}

/// `ordering` of an endpoint: whether a subject's deliveries wait for its
/// earlier ones (docs/lifecycle.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    #[default]
    None,
    Subject,
}

/// `regressions` of an endpoint: deliver a status regression, or create its
/// delivery `skipped`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Regressions {
    #[default]
    Deliver,
    Skip,
}

impl Endpoint {
    /// What the deliveries created for this endpoint now carry.
    pub fn policy(&self) -> crate::store::Policy {
        crate::store::Policy {
            ordered: self.ordering == Ordering::Subject,
            skip_regressions: self.regressions == Regressions::Skip,
        }
    }

    /// Whether an event of `event_type` from `source` goes to this endpoint.
    pub fn wants(&self, source: &str, event_type: &str) -> bool {
        (self.sources.is_empty() || self.sources.iter().any(|s| s == source))
            && self.events.iter().any(|p| p.matches(event_type))
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub admin_token: Option<Secret>,
    pub max_body_bytes: usize,
    pub trusted_proxies: Vec<IpNet>,
    /// Time a client has to send its request headers.
    pub header_read_timeout: Duration,
    /// Time a client has to send the whole body once headers are in.
    pub body_read_timeout: Duration,
    /// How long shutdown waits for open requests.
    pub shutdown_grace: Duration,
    /// Open ingress connections at most; more wait in the listen backlog.
    pub max_connections: usize,
    /// An admission not committed within this answers 503 (a hung disk).
    pub admission_timeout: Duration,
    /// Threads running the listeners and deliveries; `None` chooses by the
    /// store ([`ServerConfig::workers`]).
    pub worker_threads: Option<std::num::NonZeroUsize>,
}

impl ServerConfig {
    /// The worker threads to run: as configured, or one per core, less one
    /// on the embedded store, whose writer thread is busy on a core of its
    /// own under load (on two cores, one worker beside the writer delivered
    /// about as much as two, at the same CPU and less memory; BENCHMARKS.md).
    pub fn workers(&self, store: &StoreKind) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        match (self.worker_threads, store) {
            (Some(n), _) => n.get(),
            (None, StoreKind::Embedded { .. }) => cores.saturating_sub(1).max(1),
            (None, StoreKind::Redis { .. }) => cores,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreKind {
    Embedded { path: PathBuf },
    Redis { url: Url<String>, prefix: String, options: RedisOptions },
}

pub use crate::store::redis::{RedisOptions, RedisTls, Topology};

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub kind: StoreKind,
    pub dedupe_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryConfig {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
    pub jitter: f64,
    pub visibility_timeout: Duration,
}

/// How long settled records are kept (`store::retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Events whose deliveries were all delivered, or that matched none.
    pub delivered: Duration,
    /// Events with a dead or discarded delivery.
    pub dead: Duration,
    /// Finished bulk replay jobs.
    pub replay_jobs: Duration,
}

impl RetentionConfig {
    /// The cutoffs as of `now`: records last changed before them go.
    pub fn cutoffs(&self, now: crate::store::Millis) -> crate::store::retention::Cutoffs {
        let before = |d: Duration| now.saturating_sub(d.as_millis() as u64);
        crate::store::retention::Cutoffs {
            delivered: before(self.delivered),
            dead: before(self.dead),
            replay_jobs: before(self.replay_jobs),
        }
    }
}

/// What the quarantine keeps of refused callbacks (docs/quarantine.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuarantineConfig {
    pub enabled: bool,
    /// How long a refused callback is kept.
    pub ttl: Duration,
    /// The most all kept callbacks (bodies and headers) may take together.
    pub max_bytes: u64,
    /// Refused callbacks kept per client address (IPv6: per /64) a minute.
    pub max_per_client_per_minute: NonZeroU32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub sources: Vec<Source>,
    pub endpoints: Vec<Endpoint>,
    pub delivery: DeliveryConfig,
    pub retention: RetentionConfig,
    pub quarantine: QuarantineConfig,
    pub log_format: LogFormat,
    /// Variables whose `${NAME:-default}` fallback is in use: development
    /// values that must not reach production.
    pub defaulted_vars: Vec<String>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text` with `${…}` taken from the process
    /// environment; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, path, &|name| std::env::var(name).ok())
    }

    /// Parses and validates `text` with `${NAME}` resolved by `lookup`.
    pub fn parse_with_env(
        text: &str,
        path: &Path,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse { path: path.to_owned(), message };
        let read = |document: Spanned<toml::de::DeTable<'_>>| {
            raw::RawConfig::deserialize(toml::de::Deserializer::from(document)).map_err(|mut e| {
                e.set_input(Some(text));
                e
            })
        };
        let parse = || toml::de::DeTable::parse(text).map_err(|e| parse_error(e.to_string()));
        let mut document = parse()?;
        let resolution = match env::resolve(document.get_mut(), lookup) {
            Ok(r) => r,
            Err(unset) => {
                // A key the file may not have, or a value of the wrong
                // type, is the error to fix first.
                // (Parsed again as written: resolution stopped part-way.)
                if let Err(e) = read(parse()?)
                    && !e.message().contains("${")
                {
                    return Err(parse_error(e.to_string()));
                }
                return Err(parse_error(format!(
                    "TOML parse error {}{}\n",
                    env::locate(text, &unset.span),
                    unset.message
                )));
            }
        };
        let mut raw = read(document).map_err(|e| parse_error(resolution.mask(&e.to_string())))?;
        raw.server.admin_token_defaulted =
            raw.server.admin_token.as_ref().is_some_and(|t| resolution.defaulted(&t.span()));
        raw.defaulted_vars = resolution.vars;
        Config::try_from(raw).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            key: e.key,
            message: e.message,
        })
    }

    /// A short human summary for `check-config`.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let store = match &self.store.kind {
            StoreKind::Embedded { path } => format!("embedded ({})", path.display()),
            StoreKind::Redis { url, prefix, options: o } => format!(
                "redis ({}, prefix {prefix}{}{}{})",
                match &o.topology {
                    Topology::Node => url.to_string(),
                    Topology::Sentinel { sentinels, master_name, .. } => {
                        format!("primary {master_name:?} named by {} sentinel(s), as {url}", sentinels.len())
                    }
                    Topology::Cluster { urls } => format!("cluster with {} seed(s), first {url}", urls.len()),
                },
                o.tls.ca_file.as_ref().map(|f| format!(", CA {}", f.display())).unwrap_or_default(),
                o.tls.client.as_ref().map(|(c, _)| format!(", client certificate {}", c.display())).unwrap_or_default(),
                match o.min_replicas_ack {
                    0 => String::new(),
                    n => format!(", {n} replica(s) confirm each admission within {}", span(o.replica_ack_timeout)),
                }
            ),
        };
        s.push_str(&format!(
            "ingress   {}\nadmin     {}\nstore     {store}, dedupe ttl {}\n",
            self.server.listen,
            self.server.admin_listen,
            humantime::format_duration(self.store.dedupe_ttl)
        ));
        for src in &self.sources {
            s.push_str(&format!(
                "source    {} ({}) → POST /hooks/{}, {} secret(s){}{}\n",
                src.name,
                src.kind.as_str(),
                src.name,
                src.secrets.len(),
                if src.allow_ips.is_empty() {
                    String::new()
                } else {
                    format!(", {} allowed network(s)", src.allow_ips.len())
                },
                src.rate_limit.map(|r| format!(", {}/s burst {} per IP", r.per_second, r.burst)).unwrap_or_default()
            ));
        }
        for ep in &self.endpoints {
            s.push_str(&format!(
                "endpoint  {} → {} (timeout {}, max in flight {}{}{})\n",
                ep.name,
                ep.url,
                humantime::format_duration(ep.timeout),
                ep.max_in_flight,
                if ep.ordering == Ordering::Subject { ", in order per payment" } else { "" },
                if ep.regressions == Regressions::Skip { ", regressions skipped" } else { "" }
            ));
        }
        let d = &self.delivery;
        s.push_str(&format!(
            "delivery  {} attempts, backoff {} × {} up to {}, jitter ±{}%, visibility timeout {}\n",
            d.max_attempts,
            humantime::format_duration(d.initial_backoff),
            d.multiplier,
            humantime::format_duration(d.max_backoff),
            (d.jitter * 100.0).round(),
            humantime::format_duration(d.visibility_timeout)
        ));
        let r = &self.retention;
        s.push_str(&format!(
            "retention delivered {}, dead {}, replay jobs {}\n",
            span(r.delivered),
            span(r.dead),
            span(r.replay_jobs)
        ));
        let q = &self.quarantine;
        s.push_str(&match q.enabled {
            true => format!(
                "quarantine keeps refused callbacks {}, up to {} bytes, {} a minute per client\n",
                span(q.ttl),
                q.max_bytes,
                q.max_per_client_per_minute
            ),
            false => "quarantine off: refused callbacks are not kept\n".to_owned(),
        });
        for w in self.warnings() {
            s.push_str(&format!("WARNING   {w}\n"));
        }
        s
    }

    /// What is valid but dangerous in production: development defaults in
    /// use, and trusting every address's X-Forwarded-For.
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> =
            self.defaulted_vars.iter().map(|v| format!("${{{v}}} is not set: using its development default")).collect();
        if self.server.trusted_proxies.iter().any(|net| net.prefix_len() == 0) {
            out.push(
                "server.trusted_proxies contains a catch-all network: any client can choose its address with X-Forwarded-For"
                    .into(),
            );
        }
        out
    }
}

/// `scheme://user:password@host/…` → `scheme://user:***@host/…`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let rest = &url[scheme_end..];
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    match authority.rfind('@') {
        Some(at) => {
            let user = authority[..at].split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme_end], &rest[at..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests;

/// A duration as the configuration would write it: `7d`, `90d`, `36h`,
/// `90s`, `500ms`.
pub fn span(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}
