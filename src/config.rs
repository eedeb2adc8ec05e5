//! Configuration: TOML parsed once at start-up into typed, validated values.
//!
//! Every string may use `${NAME}` (a missing variable is an error) or
//! `${NAME:-default}`. Interpolation happens inside deserialisation, so an
//! error about a variable carries the TOML line of the value that named it.
//! Unknown keys are errors. After parsing, validation checks
//! that need the whole file (unique names, a tolerance within the dedupe TTL,
//! an admin token on a non-loopback listener) name the key they refuse.
//! Nothing after this module handles raw strings from the file.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer};

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

#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
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
}

impl Endpoint {
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
}

#[derive(Debug, Clone)]
pub enum StoreKind {
    Embedded { path: PathBuf },
    Redis { url: Url<String>, prefix: String },
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub kind: StoreKind,
    pub dedupe_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
    pub jitter: f64,
    pub visibility_timeout: Duration,
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
    pub log_format: LogFormat,
    /// Variables whose `${NAME:-default}` fallback is in use: development
    /// values that must not reach production.
    pub defaulted_vars: Vec<String>,
}

impl Config {
    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        DEFAULTED.with(|d| d.borrow_mut().clear());
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        let mut defaulted = DEFAULTED.with(|d| std::mem::take(&mut *d.borrow_mut()));
        defaulted.sort();
        defaulted.dedup();
        raw.validate(defaulted).map_err(|(key, message)| ConfigError::Invalid { path: path.to_owned(), key, message })
    }

    /// A short human summary for `check-config`.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let store = match &self.store.kind {
            StoreKind::Embedded { path } => format!("embedded ({})", path.display()),
            StoreKind::Redis { url, prefix } => format!("redis ({url}, prefix {prefix})"),
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
                "endpoint  {} → {} (timeout {}, max in flight {})\n",
                ep.name,
                ep.url,
                humantime::format_duration(ep.timeout),
                ep.max_in_flight
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

// ---------------------------------------------------------------------------
// Interpolation and the value types that use it.

thread_local! {
    static DEFAULTED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Replaces `${NAME}` and `${NAME:-default}` from `lookup`. Returns the names
/// whose default was used.
pub fn interpolate(s: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<(String, Vec<String>), String> {
    let mut out = String::with_capacity(s.len());
    let mut defaulted = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("invalid variable name {name:?}"));
        }
        match (lookup(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => {
                out.push_str(d);
                defaulted.push(name.to_owned());
            }
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (use ${{{name}:-default}} for a fallback)"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok((out, defaulted))
}

/// A string from the file after `${…}` interpolation.
#[derive(Debug, Clone, Default, PartialEq)]
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Text(Origin::deserialize(d)?.text))
    }
}

/// An interpolated string that remembers whether a `${NAME:-default}`
/// fallback went into it: a development default must not guard a listener
/// that others can reach.
#[derive(Debug, Clone, Default, PartialEq)]
struct Origin {
    text: String,
    defaulted: bool,
}

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let (text, defaulted) = interpolate(&raw, |n| std::env::var(n).ok()).map_err(de::Error::custom)?;
        let used_default = !defaulted.is_empty();
        DEFAULTED.with(|d| d.borrow_mut().extend(defaulted));
        Ok(Origin { text, defaulted: used_default })
    }
}

/// A human-readable duration such as `"5m"`, `"30d"` or `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Dur(Duration);

/// The longest duration any setting takes: a hundred years. Longer ones
/// are typos, and would overflow the arithmetic on times.
const MAX_DURATION: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Text(s) = Text::deserialize(d)?;
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
struct Parsed<T>(T);

impl<'de, T> Deserialize<'de> for Parsed<T>
where
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Text(s) = Text::deserialize(d)?;
        s.parse::<T>().map(Parsed).map_err(|e| de::Error::custom(format!("invalid value {s:?}: {e}")))
    }
}

/// A CIDR, or a bare address meaning just that host.
#[derive(Debug, Clone)]
struct Cidr(IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Text(s) = Text::deserialize(d)?;
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        s.parse::<IpAddr>().map(|ip| Cidr(IpNet::from(ip))).map_err(|_| {
            de::Error::custom(format!("invalid CIDR {s:?}; write e.g. \"203.0.113.0/24\" or \"2001:db8::1\""))
        })
    }
}

// ---------------------------------------------------------------------------
// The file's shape.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    sources: Vec<RawSource>,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    log: RawLog,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Parsed<SocketAddr>,
    admin_listen: Parsed<SocketAddr>,
    #[serde(default)]
    admin_token: Option<Origin>,
    #[serde(default = "default_max_body")]
    max_body_bytes: usize,
    #[serde(default)]
    trusted_proxies: Vec<Cidr>,
    #[serde(default = "default_header_timeout")]
    header_read_timeout: Dur,
    #[serde(default = "default_body_timeout")]
    body_read_timeout: Dur,
    #[serde(default = "default_grace")]
    shutdown_grace: Dur,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_admission_timeout")]
    admission_timeout: Dur,
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
enum RawStoreKind {
    #[default]
    Embedded,
    Redis,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default)]
    kind: RawStoreKind,
    path: Option<Text>,
    url: Option<Text>,
    prefix: Option<Text>,
    #[serde(default = "default_dedupe_ttl")]
    dedupe_ttl: Dur,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore { kind: RawStoreKind::Embedded, path: None, url: None, prefix: None, dedupe_ttl: default_dedupe_ttl() }
    }
}

fn default_dedupe_ttl() -> Dur {
    Dur(Duration::from_secs(30 * 86400))
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_second: u32,
    burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: Text,
    kind: ProviderKind,
    secrets: Vec<Text>,
    #[serde(default)]
    allow_ips: Vec<Cidr>,
    rate_limit: Option<RawRateLimit>,
    timestamp_tolerance: Option<Dur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    name: Text,
    url: Text,
    secret: Text,
    previous_secret: Option<Text>,
    events: Option<Vec<Text>>,
    #[serde(default)]
    sources: Vec<Text>,
    #[serde(default = "default_endpoint_timeout")]
    timeout: Dur,
    #[serde(default = "default_max_in_flight")]
    max_in_flight: usize,
    rate_limit: Option<RawRateLimit>,
}

fn default_endpoint_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_max_in_flight() -> usize {
    16
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDelivery {
    max_attempts: u32,
    initial_backoff: Dur,
    max_backoff: Dur,
    multiplier: f64,
    jitter: f64,
    visibility_timeout: Dur,
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
#[serde(deny_unknown_fields)]
struct RawLog {
    format: LogFormat,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog { format: LogFormat::Pretty }
    }
}

type Invalid = (String, String);

fn invalid<T>(key: impl Into<String>, message: impl Into<String>) -> Result<T, Invalid> {
    Err((key.into(), message.into()))
}

/// Names become URL path segments and metric labels: keep them plain.
fn check_name(key: &str, name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { invalid(key, format!("{name:?} must be 1–64 characters of a-z, 0-9, '-' or '_'")) }
}

fn rate_limit(key: &str, raw: Option<RawRateLimit>) -> Result<Option<RateLimit>, Invalid> {
    let Some(r) = raw else { return Ok(None) };
    let Some(per_second) = NonZeroU32::new(r.per_second) else {
        return invalid(format!("{key}.per_second"), "must be at least 1");
    };
    let Some(burst) = NonZeroU32::new(r.burst.unwrap_or(r.per_second)) else {
        return invalid(format!("{key}.burst"), "must be at least 1");
    };
    Ok(Some(RateLimit { per_second, burst }))
}

fn event_pattern(key: &str, p: &str) -> Result<EventPattern, Invalid> {
    let word = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if p == "*" {
        return Ok(EventPattern::Any);
    }
    if let Some(prefix) = p.strip_suffix(".*")
        && word(prefix)
    {
        return Ok(EventPattern::Prefix(prefix.to_owned()));
    }
    match p.split_once('.') {
        Some((a, b)) if word(a) && word(b) => Ok(EventPattern::Exact(p.to_owned())),
        None if p == "unknown" => Ok(EventPattern::Exact(p.to_owned())),
        _ => invalid(
            key,
            format!(
                "{p:?} is not an event pattern; use \"*\", \"deposit.*\" or an exact type such as \"deposit.confirmed\""
            ),
        ),
    }
}

fn parse_signing_key(key: &str, secret: &str) -> Result<Secret, Invalid> {
    let Some(b64) = secret.strip_prefix("whsec_") else {
        return invalid(key, "must be a Standard Webhooks secret starting with \"whsec_\"");
    };
    match base64::engine::general_purpose::STANDARD.decode(b64) {
        Ok(bytes) if bytes.len() >= 24 && bytes.len() <= 64 => Ok(Secret(bytes)),
        Ok(_) => invalid(key, "the key after \"whsec_\" must decode to 24–64 bytes"),
        Err(_) => invalid(key, "the part after \"whsec_\" is not valid base64"),
    }
}

/// Shortest provider secret or public admin token accepted. Real provider
/// secrets are 32 characters or more; anything much shorter is a
/// placeholder or a typo, and an HMAC key that can be guessed.
pub const MIN_SECRET_BYTES: usize = 16;

/// Why `secret` is too weak to guard anything, without quoting it.
fn weak(secret: &str) -> Option<String> {
    if secret.trim().is_empty() {
        return Some(if secret.is_empty() { "is empty".into() } else { "is only whitespace".into() });
    }
    // Padding is not entropy: count what is left without it.
    let len = secret.trim().len();
    (len < MIN_SECRET_BYTES)
        .then(|| format!("is {len} bytes without surrounding whitespace; at least {MIN_SECRET_BYTES} are required"))
}

/// The admin token, checked: required and strong on an address others can
/// reach, never only whitespace.
fn admin_token(token: Option<Origin>, listen: SocketAddr) -> Result<Option<Secret>, Invalid> {
    let public = !listen.ip().is_loopback();
    let Some(token) = token else {
        if public {
            return invalid(
                "server.admin_token",
                format!("is required because admin_listen {listen} is not a loopback address"),
            );
        }
        return Ok(None);
    };
    if token.text.trim().is_empty() {
        return invalid("server.admin_token", "is only whitespace");
    }
    if public {
        if let Some(weakness) = weak(&token.text) {
            return invalid(
                "server.admin_token",
                format!("{weakness} because admin_listen {listen} is not a loopback address"),
            );
        }
        if token.defaulted {
            return invalid(
                "server.admin_token",
                format!(
                    "comes from a ${{VAR:-default}} development fallback, but admin_listen {listen} is not a loopback address: set the variable"
                ),
            );
        }
    }
    Ok(Some(Secret::new(token.text)))
}

impl RawConfig {
    fn validate(self, defaulted_vars: Vec<String>) -> Result<Config, Invalid> {
        let s = self.server;
        if s.listen.0 == s.admin_listen.0 && s.listen.0.port() != 0 {
            return invalid("server.admin_listen", "must differ from server.listen");
        }
        let admin_token = admin_token(s.admin_token.filter(|t| !t.text.is_empty()), s.admin_listen.0)?;
        if s.max_body_bytes < 1024 || s.max_body_bytes > 16 * 1024 * 1024 {
            return invalid("server.max_body_bytes", "must be between 1024 and 16777216");
        }
        if s.max_connections == 0 {
            return invalid("server.max_connections", "must be at least 1");
        }
        for (key, d) in [
            ("server.header_read_timeout", s.header_read_timeout),
            ("server.body_read_timeout", s.body_read_timeout),
            ("server.admission_timeout", s.admission_timeout),
        ] {
            if d.0.is_zero() {
                return invalid(key, "must be greater than 0s");
            }
        }
        let server = ServerConfig {
            listen: s.listen.0,
            admin_listen: s.admin_listen.0,
            admin_token,
            max_body_bytes: s.max_body_bytes,
            trusted_proxies: s.trusted_proxies.into_iter().map(|c| c.0).collect(),
            header_read_timeout: s.header_read_timeout.0,
            body_read_timeout: s.body_read_timeout.0,
            shutdown_grace: s.shutdown_grace.0,
            max_connections: s.max_connections,
            admission_timeout: s.admission_timeout.0,
        };

        let st = self.store;
        let dedupe_ttl = st.dedupe_ttl.0;
        if dedupe_ttl < Duration::from_secs(60) {
            return invalid("store.dedupe_ttl", "must be at least 1m");
        }
        let kind = match st.kind {
            RawStoreKind::Embedded => {
                if st.url.is_some() || st.prefix.is_some() {
                    return invalid("store", "url and prefix apply to kind = \"redis\" only");
                }
                let path = st.path.map(|p| p.0).unwrap_or_else(|| "./data/ipn-relay.redb".into());
                if path.is_empty() {
                    return invalid("store.path", "must not be empty");
                }
                StoreKind::Embedded { path: path.into() }
            }
            RawStoreKind::Redis => {
                if st.path.is_some() {
                    return invalid("store.path", "applies to kind = \"embedded\" only");
                }
                let url = st.url.map(|u| u.0).unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
                if url.starts_with("rediss://") {
                    return invalid(
                        "store.url",
                        "rediss:// (TLS to Redis) is not built in; reach a TLS-only Redis through a local TLS tunnel and use redis:// or unix://",
                    );
                }
                if !["redis://", "unix://", "redis+unix://"].iter().any(|p| url.starts_with(p)) {
                    return invalid("store.url", "must start with redis://, unix:// or redis+unix://");
                }
                let prefix = st.prefix.map(|p| p.0).unwrap_or_else(|| "ipn-relay".into());
                if prefix.is_empty() || prefix.contains(['{', '}']) {
                    return invalid(
                        "store.prefix",
                        "must be non-empty and contain no braces (it becomes the {hash tag})",
                    );
                }
                StoreKind::Redis { url: Url::new(url), prefix }
            }
        };
        let store = StoreConfig { kind, dedupe_ttl };

        if self.sources.is_empty() {
            return invalid("sources", "at least one [[sources]] entry is required");
        }
        let mut names = HashSet::new();
        let mut sources = Vec::new();
        for (i, src) in self.sources.into_iter().enumerate() {
            let key = format!("sources[{i}]");
            let name = src.name.0;
            check_name(&format!("{key}.name"), &name)?;
            if !names.insert(name.clone()) {
                return invalid(format!("{key}.name"), format!("duplicate source name {name:?}"));
            }
            if src.secrets.is_empty() {
                return invalid(format!("{key}.secrets"), "needs at least one secret");
            }
            for (n, secret) in src.secrets.iter().enumerate() {
                if let Some(weakness) = weak(&secret.0) {
                    return invalid(
                        format!("{key}.secrets[{n}]"),
                        format!("{weakness}: use the secret from the provider's dashboard"),
                    );
                }
            }
            let timestamp_tolerance = match (src.kind, src.timestamp_tolerance) {
                (ProviderKind::Nowpayments, Some(_)) => {
                    return invalid(
                        format!("{key}.timestamp_tolerance"),
                        "applies to kind = \"nova\" only (NOWPayments IPNs carry no signed timestamp)",
                    );
                }
                (ProviderKind::Nowpayments, None) => None,
                (ProviderKind::Nova, t) => {
                    let t = t.map(|d| d.0).unwrap_or(Duration::from_secs(300));
                    // A webhook is accepted while its timestamp is within
                    // ±tolerance of now, so a replay can come up to twice the
                    // tolerance after the first delivery of it.
                    if t.saturating_mul(2) > dedupe_ttl {
                        return invalid(
                            format!("{key}.timestamp_tolerance"),
                            format!(
                                "twice {} exceeds store.dedupe_ttl {}: a replayed webhook could outlive its dedupe key",
                                humantime::format_duration(t),
                                humantime::format_duration(dedupe_ttl)
                            ),
                        );
                    }
                    (!t.is_zero()).then_some(t)
                }
            };
            sources.push(Source {
                name,
                kind: src.kind,
                secrets: src.secrets.into_iter().map(|s| Secret::new(s.0)).collect(),
                allow_ips: src.allow_ips.into_iter().map(|c| c.0).collect(),
                rate_limit: rate_limit(&format!("{key}.rate_limit"), src.rate_limit)?,
                timestamp_tolerance,
            });
        }

        let mut endpoint_names = HashSet::new();
        let mut endpoints = Vec::new();
        for (i, ep) in self.endpoints.into_iter().enumerate() {
            let key = format!("endpoints[{i}]");
            let name = ep.name.0;
            check_name(&format!("{key}.name"), &name)?;
            if !endpoint_names.insert(name.clone()) {
                return invalid(format!("{key}.name"), format!("duplicate endpoint name {name:?}"));
            }
            let url: http::Uri = match ep.url.0.parse() {
                Ok(u) => u,
                Err(e) => return invalid(format!("{key}.url"), format!("{:?} is not a URL: {e}", ep.url.0)),
            };
            if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none_or(str::is_empty) {
                return invalid(
                    format!("{key}.url"),
                    format!("{:?} must be an absolute http:// or https:// URL", ep.url.0),
                );
            }
            let signing_key = parse_signing_key(&format!("{key}.secret"), &ep.secret.0)?;
            let previous_signing_key = match ep.previous_secret.map(|t| t.0).filter(|t| !t.is_empty()) {
                Some(p) => {
                    let k = parse_signing_key(&format!("{key}.previous_secret"), &p)?;
                    if k.expose() == signing_key.expose() {
                        return invalid(format!("{key}.previous_secret"), "is the same as secret");
                    }
                    Some(k)
                }
                None => None,
            };
            let events = match ep.events {
                None => vec![EventPattern::Any],
                Some(v) if v.is_empty() => {
                    return invalid(format!("{key}.events"), "must not be empty (omit it for [\"*\"])");
                }
                Some(v) => v.iter().map(|p| event_pattern(&format!("{key}.events"), &p.0)).collect::<Result<_, _>>()?,
            };
            let ep_sources: Vec<String> = ep.sources.into_iter().map(|s| s.0).collect();
            if let Some(unknown) = ep_sources.iter().find(|s| !names.contains(*s)) {
                return invalid(format!("{key}.sources"), format!("no source is named {unknown:?}"));
            }
            if ep.timeout.0.is_zero() {
                return invalid(format!("{key}.timeout"), "must be greater than 0s");
            }
            if ep.max_in_flight == 0 {
                return invalid(format!("{key}.max_in_flight"), "must be at least 1");
            }
            endpoints.push(Endpoint {
                name,
                url: Url::new(url),
                signing_key,
                previous_signing_key,
                events,
                sources: ep_sources,
                timeout: ep.timeout.0,
                max_in_flight: ep.max_in_flight,
                rate_limit: rate_limit(&format!("{key}.rate_limit"), ep.rate_limit)?,
            });
        }

        let d = self.delivery;
        if d.max_attempts == 0 {
            return invalid("delivery.max_attempts", "must be at least 1");
        }
        if d.initial_backoff.0.is_zero() {
            return invalid("delivery.initial_backoff", "must be greater than 0s");
        }
        if d.max_backoff.0 < d.initial_backoff.0 {
            return invalid("delivery.max_backoff", "must not be less than delivery.initial_backoff");
        }
        if !(d.multiplier >= 1.0 && d.multiplier <= 100.0) {
            return invalid("delivery.multiplier", "must be between 1.0 and 100.0");
        }
        if !(0.0..1.0).contains(&d.jitter) {
            return invalid("delivery.jitter", "must be at least 0.0 and below 1.0");
        }
        // A claim must outlive the request it covers, or a slow endpoint's
        // delivery would be claimed again while still in flight.
        // The margin covers the claim's own round trip: with less, a claim
        // could be too old to send at once and be released, over and over.
        const CLAIM_MARGIN: Duration = Duration::from_millis(500);
        if let Some(ep) = endpoints.iter().find(|ep| ep.timeout.saturating_add(CLAIM_MARGIN) > d.visibility_timeout.0) {
            return invalid(
                "delivery.visibility_timeout",
                format!(
                    "must exceed every endpoint timeout by at least 500ms; endpoint {:?} has {}",
                    ep.name,
                    humantime::format_duration(ep.timeout)
                ),
            );
        }
        let delivery = DeliveryConfig {
            max_attempts: d.max_attempts,
            initial_backoff: d.initial_backoff.0,
            max_backoff: d.max_backoff.0,
            multiplier: d.multiplier,
            jitter: d.jitter,
            visibility_timeout: d.visibility_timeout.0,
        };

        Ok(Config { server, store, sources, endpoints, delivery, log_format: self.log.format, defaulted_vars })
    }
}

/// The example configuration shipped with the binary: `serve` without a
/// config file runs it.
pub const EXAMPLE: &str = include_str!("../config.example.toml");

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[server]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9090"

[[sources]]
name = "nowpayments"
kind = "nowpayments"
secrets = ["s1-0123456789abcdef"]
"#;

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{BASE}{extra}"), Path::new("test.toml"))
    }

    fn err(extra: &str) -> String {
        parse(extra).expect_err("config should be refused").to_string()
    }

    const EP: &str = "\n[[endpoints]]\nname = \"be\"\nurl = \"http://127.0.0.1:3000/x\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n";

    #[test]
    fn example_config_is_valid() {
        let cfg = Config::parse(EXAMPLE, Path::new("config.example.toml")).unwrap();
        assert_eq!(cfg.sources.len(), 2);
        assert!(!cfg.endpoints.is_empty());
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg.server.max_body_bytes, 65536);
        assert_eq!(cfg.store.dedupe_ttl, Duration::from_secs(30 * 86400));
        assert_eq!(cfg.delivery.max_attempts, 12);
        assert!(matches!(cfg.store.kind, StoreKind::Embedded { .. }));
    }

    #[test]
    fn interpolates_variables_with_defaults() {
        let env = |n: &str| (n == "SET").then(|| "value".to_owned());
        assert_eq!(interpolate("a${SET}b", env).unwrap(), ("avalueb".into(), vec![]));
        assert_eq!(interpolate("${UNSET:-dev}", env).unwrap(), ("dev".into(), vec!["UNSET".into()]));
        assert_eq!(interpolate("${UNSET:-}", env).unwrap(), ("".into(), vec!["UNSET".into()]));
        assert!(interpolate("${UNSET}", env).unwrap_err().contains("UNSET is not set"));
        assert!(interpolate("${bad name}", env).is_err());
        assert!(interpolate("${OPEN", env).is_err());
    }

    #[test]
    fn missing_variable_names_the_line() {
        let e =
            err("\n[[sources]]\nname = \"nova\"\nkind = \"nova\"\nsecrets = [\"${IPN_RELAY_TEST_SURELY_UNSET}\"]\n");
        assert!(e.contains("IPN_RELAY_TEST_SURELY_UNSET is not set"), "{e}");
        assert!(e.contains("line 14"), "{e}");
    }

    #[test]
    fn records_defaulted_variables() {
        let cfg = parse(
            "\n[[sources]]\nname = \"nova\"\nkind = \"nova\"\nsecrets = [\"${IPN_RELAY_TEST_SURELY_UNSET:-dev-0123456789abcdef}\"]\n",
        )
        .unwrap();
        assert_eq!(cfg.defaulted_vars, vec!["IPN_RELAY_TEST_SURELY_UNSET".to_owned()]);
        assert_eq!(cfg.sources[1].secrets[0].expose(), b"dev-0123456789abcdef");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = Config::parse("[server]\nlisten = \"127.0.0.1:1\"\nadmin_listen = oops\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = err("\n[delivery]\nmax_attempt = 3\n");
        assert!(e.contains("unknown field `max_attempt`"), "{e}");
        let e = err(&format!("{EP}colour = \"blue\"\n"));
        assert!(e.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn durations_are_human_readable() {
        let cfg =
            parse("\n[delivery]\ninitial_backoff = \"1h 30m\"\nmax_backoff = \"2d\"\nvisibility_timeout = \"90s\"\n")
                .unwrap();
        assert_eq!(cfg.delivery.initial_backoff, Duration::from_secs(5400));
        assert_eq!(cfg.delivery.max_backoff, Duration::from_secs(2 * 86400));
        assert!(err("\n[delivery]\ninitial_backoff = \"soon\"\n").contains("invalid duration \"soon\""));
    }

    #[test]
    fn checks_the_previous_signing_secret() {
        let same = format!("{EP}previous_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n");
        assert!(err(&same).contains("endpoints[0].previous_secret: is the same as secret"), "{}", err(&same));
        let bad = format!("{EP}previous_secret = \"plain\"\n");
        assert!(err(&bad).contains("endpoints[0].previous_secret"), "{}", err(&bad));
        let ok = parse(&format!("{EP}previous_secret = \"whsec_c2Vjb25kLWVuZHBvaW50LXNlY3JldC1rZXktMTIz\"\n")).unwrap();
        assert!(ok.endpoints[0].previous_signing_key.is_some());
    }

    #[test]
    fn refuses_redis_urls_it_cannot_connect_to() {
        let store = |url: &str| format!("\n[store]\nkind = \"redis\"\nurl = \"{url}\"\n");
        assert!(
            err(&store("rediss://redis.internal:6380/0"))
                .contains("store.url: rediss:// (TLS to Redis) is not built in")
        );
        assert!(err(&store("http://redis.internal:6379")).contains("store.url: must start with redis://"));
        for ok in ["redis://127.0.0.1:6379/0", "unix:///run/redis.sock", "redis+unix:///run/redis.sock"] {
            assert!(parse(&store(ok)).is_ok(), "{ok}");
        }
    }

    #[test]
    fn urls_with_credentials_never_print_their_password() {
        let text = format!(
            "\n[store]\nkind = \"redis\"\nurl = \"redis://relay:s3cr3t-redis-pw@redis.internal:6379/0\"\n{}",
            EP.replace("http://127.0.0.1:3000/x", "https://hook:s3cr3t-http-pw@backend.internal/x")
        );
        let cfg = parse(&text).unwrap();
        let shown = format!("{cfg:?} {} {}", cfg.summary(), cfg.endpoints[0].url);
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("redis://relay:***@redis.internal:6379/0"), "{shown}");
        assert!(shown.contains("https://hook:***@backend.internal/x"), "{shown}");
        // The clients still get the real thing.
        let StoreKind::Redis { url, .. } = &cfg.store.kind else { panic!("redis") };
        assert_eq!(url.expose(), "redis://relay:s3cr3t-redis-pw@redis.internal:6379/0");
        assert_eq!(cfg.endpoints[0].url.expose().to_string(), "https://hook:s3cr3t-http-pw@backend.internal/x");
    }

    #[test]
    fn refuses_two_sources_with_one_name() {
        let e = err("\n[[sources]]\nname = \"nowpayments\"\nkind = \"nova\"\nsecrets = [\"x-0123456789abcdef\"]\n");
        assert!(e.contains("sources[1].name: duplicate source name \"nowpayments\""), "{e}");
    }

    #[test]
    fn refuses_bad_endpoint_url_and_secret() {
        let e = err(&EP.replace("http://127.0.0.1:3000/x", "ftp://host/x"));
        assert!(e.contains("endpoints[0].url"), "{e}");
        let e = err(&EP.replace("http://127.0.0.1:3000/x", "not a url"));
        assert!(e.contains("endpoints[0].url"), "{e}");
        let e = err(&EP.replace("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "plain-secret"));
        assert!(e.contains("endpoints[0].secret") && e.contains("whsec_"), "{e}");
        let e = err(&EP.replace("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_!!!"));
        assert!(e.contains("not valid base64"), "{e}");
    }

    #[test]
    fn refuses_tolerance_longer_than_dedupe_ttl() {
        let e = err(
            "\n[store]\ndedupe_ttl = \"1h\"\n\n[[sources]]\nname = \"nova\"\nkind = \"nova\"\nsecrets = [\"x-0123456789abcdef\"]\ntimestamp_tolerance = \"2h\"\n",
        );
        assert!(e.contains("sources[1].timestamp_tolerance") && e.contains("dedupe_ttl"), "{e}");
    }

    #[test]
    fn refuses_tolerance_more_than_half_the_dedupe_ttl() {
        let e = err(
            "\n[store]\ndedupe_ttl = \"1h\"\n\n[[sources]]\nname = \"nova\"\nkind = \"nova\"\nsecrets = [\"x-0123456789abcdef\"]\ntimestamp_tolerance = \"31m\"\n",
        );
        assert!(e.contains("sources[1].timestamp_tolerance"), "{e}");
        assert!(parse("\n[store]\ndedupe_ttl = \"1h\"\n\n[[sources]]\nname = \"nova\"\nkind = \"nova\"\nsecrets = [\"x-0123456789abcdef\"]\ntimestamp_tolerance = \"30m\"\n").is_ok());
    }

    #[test]
    fn summary_hides_credentials_and_warns_about_catch_all_proxies() {
        let cfg =
            parse(&EP.replace("http://127.0.0.1:3000/x", "https://user:hunter2@backend.internal/hooks@v1")).unwrap();
        let summary = cfg.summary();
        assert!(!summary.contains("hunter2"), "{summary}");
        assert!(summary.contains("https://user:***@backend.internal/hooks@v1"), "{summary}");
        let text = BASE.replace("[server]\n", "[server]\ntrusted_proxies = [\"0.0.0.0/0\"]\n");
        let cfg = Config::parse(&text, Path::new("c.toml")).unwrap();
        assert!(cfg.summary().contains("catch-all"), "{}", cfg.summary());
    }

    #[test]
    fn zero_tolerance_disables_the_check() {
        let cfg =
            parse("\n[[sources]]\nname = \"nova\"\nkind = \"nova\"\nsecrets = [\"x-0123456789abcdef\"]\ntimestamp_tolerance = \"0s\"\n")
                .unwrap();
        assert_eq!(cfg.sources[1].timestamp_tolerance, None);
    }

    #[test]
    fn refuses_public_admin_listener_without_token() {
        let text = BASE.replace("admin_listen = \"127.0.0.1:9090\"", "admin_listen = \"0.0.0.0:9090\"");
        let e = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(e.contains("server.admin_token"), "{e}");
        let with_token = text.replace("[server]\n", "[server]\nadmin_token = \"t0ken-t0ken-t0ken\"\n");
        assert!(Config::parse(&with_token, Path::new("c.toml")).is_ok());
    }

    #[test]
    fn refuses_weak_secrets_and_weak_public_admin_tokens() {
        let source = |secrets: &str| format!("\n[[sources]]\nname = \"nova\"\nkind = \"nova\"\nsecrets = {secrets}\n");
        for (secrets, says) in [
            (r#"[" "]"#, "secrets[0]: is only whitespace"),
            (r#"["a"]"#, "secrets[0]: is 1 bytes without surrounding whitespace; at least 16"),
            (r#"["a               "]"#, "secrets[0]: is 1 bytes"),
            (r#"["long-enough-secret-1", ""]"#, "secrets[1]: is empty"),
            (r#"["               \t  "]"#, "secrets[0]: is only whitespace"),
        ] {
            let e = err(&source(secrets));
            assert!(e.contains(says), "{secrets}: {e}");
            assert!(!e.contains("long-enough"), "the error must not quote a secret: {e}");
        }
        assert!(parse(&source(r#"["0123456789abcdef"]"#)).is_ok(), "16 bytes is enough");

        let public = BASE.replace("admin_listen = \"127.0.0.1:9090\"", "admin_listen = \"0.0.0.0:9090\"");
        let with = |base: &str, token: &str| {
            Config::parse(
                &base.replace("[server]\n", &format!("[server]\nadmin_token = \"{token}\"\n")),
                Path::new("c"),
            )
            .map_err(|e| e.to_string())
        };
        let e = with(&public, "x").unwrap_err();
        assert!(e.contains("server.admin_token: is 1 bytes") && e.contains("0.0.0.0:9090"), "{e}");
        assert!(with(&public, "   ").unwrap_err().contains("only whitespace"));
        let e = with(&public, "${IPN_RELAY_TEST_SURELY_UNSET:-dev-admin-token-long-enough}").unwrap_err();
        assert!(e.contains("development fallback"), "{e}");
        assert!(with(&public, "a-strong-admin-token-0123").is_ok());
        // On loopback only this machine can reach it: short is allowed,
        // whitespace never.
        assert!(with(BASE, "x").is_ok());
        assert!(with(BASE, "${IPN_RELAY_TEST_SURELY_UNSET:-dev-admin-token}").is_ok());
        assert!(with(BASE, " ").unwrap_err().contains("only whitespace"));
    }

    #[test]
    fn refuses_visibility_timeout_not_above_endpoint_timeout() {
        let e = err(&format!("{EP}timeout = \"60s\"\n"));
        assert!(e.contains("delivery.visibility_timeout"), "{e}");
        let e = err(&format!("{EP}timeout = \"59800ms\"\n"));
        assert!(e.contains("by at least 500ms"), "{e}");
        assert!(parse(&format!("{EP}timeout = \"59500ms\"\n")).is_ok());
        // Found by the config fuzz target: this overflowed and panicked.
        let e = err(&format!("{EP}timeout = \"18446744073709551615s\"\n"));
        assert!(e.contains("longer than 100 years"), "{e}");
        assert!(err(&format!("{EP}timeout = \"101years\"\n")).contains("longer than 100 years"));
    }

    #[test]
    fn refuses_bad_patterns_cidrs_and_source_filters() {
        assert!(err(&format!("{EP}events = [\"deposit*\"]\n")).contains("endpoints[0].events"));
        assert!(err(&format!("{EP}sources = [\"nope\"]\n")).contains("no source is named \"nope\""));
        assert!(
            err("\n[[sources]]\nname = \"x\"\nkind = \"nova\"\nsecrets = [\"x-0123456789abcdef\"]\nallow_ips = [\"10.0.0.0/33\"]\n")
                .contains("invalid CIDR")
        );
        assert!(
            err("\n[[sources]]\nname = \"Bad Name\"\nkind = \"nova\"\nsecrets = [\"x-0123456789abcdef\"]\n")
                .contains("sources[1].name")
        );
    }

    #[test]
    fn event_patterns_match_types() {
        let p = |s| event_pattern("k", s).unwrap();
        assert!(p("*").matches("deposit.confirmed"));
        assert!(p("deposit.*").matches("deposit.confirmed"));
        assert!(!p("deposit.*").matches("deposits.confirmed"));
        assert!(!p("deposit.*").matches("payout.failed"));
        assert!(p("payout.failed").matches("payout.failed"));
        assert!(!p("payout.failed").matches("payout.failed2"));
        assert!(p("unknown").matches("unknown"));
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let cfg = parse(EP).unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("\"s1\""), "{dbg}");
    }
}
