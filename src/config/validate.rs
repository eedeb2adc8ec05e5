//! From the file's shape to the typed configuration: one conversion per
//! section, each refusing what it cannot hold with the key that holds it,
//! then the checks that span sections, in [`Config`]'s conversion.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use base64::Engine as _;
use toml::Spanned;

use super::raw::{
    RawConfig, RawDelivery, RawEndpoint, RawQuarantine, RawRateLimit, RawRetention, RawServer, RawSource, RawStore,
    RawStoreKind,
};
use super::redis::{redis_tls, redis_topology};
use super::{
    Config, DeliveryConfig, Endpoint, EventPattern, ProviderKind, QuarantineConfig, RateLimit, RetentionConfig, Secret,
    ServerConfig, Source, StoreConfig, StoreKind, Url,
};

/// A value the file may not have: the key that holds it, and why.
#[derive(Debug)]
pub(super) struct Invalid {
    pub key: String,
    pub message: String,
}

impl Invalid {
    /// The same refusal, with its key placed under `parent` (`sources[2]`).
    fn under(self, parent: &str) -> Invalid {
        Invalid { key: format!("{parent}.{}", self.key), ..self }
    }
}

pub(super) fn invalid<T>(key: impl Into<String>, message: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid { key: key.into(), message: message.into() })
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

pub(super) fn event_pattern(key: &str, p: &str) -> Result<EventPattern, Invalid> {
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
        Ok(bytes) if bytes.len() >= 24 && bytes.len() <= 64 => Ok(Secret::new(bytes)),
        Ok(_) => invalid(key, "the key after \"whsec_\" must decode to 24–64 bytes"),
        Err(_) => invalid(key, "the part after \"whsec_\" is not valid base64"),
    }
}

/// Shortest provider secret or public admin token accepted. Real provider
/// secrets are 32 characters or more; anything much shorter is a
/// placeholder or a typo, and an HMAC key that can be guessed.
const MIN_SECRET_BYTES: usize = 16;

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
fn admin_token(token: Option<String>, defaulted: bool, listen: SocketAddr) -> Result<Option<Secret>, Invalid> {
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
    if token.trim().is_empty() {
        return invalid("server.admin_token", "is only whitespace");
    }
    if public {
        if let Some(weakness) = weak(&token) {
            return invalid(
                "server.admin_token",
                format!("{weakness} because admin_listen {listen} is not a loopback address"),
            );
        }
        if defaulted {
            return invalid(
                "server.admin_token",
                format!(
                    "comes from a ${{VAR:-default}} development fallback, but admin_listen {listen} is not a loopback address: set the variable"
                ),
            );
        }
    }
    Ok(Some(Secret::new(token)))
}

impl TryFrom<RawServer> for ServerConfig {
    type Error = Invalid;

    fn try_from(s: RawServer) -> Result<ServerConfig, Invalid> {
        if s.listen.0 == s.admin_listen.0 && s.listen.0.port() != 0 {
            return invalid("server.admin_listen", "must differ from server.listen");
        }
        let token = s.admin_token.map(Spanned::into_inner).filter(|t| !t.is_empty());
        let admin_token = admin_token(token, s.admin_token_defaulted, s.admin_listen.0)?;
        if s.max_body_bytes < 1024 || s.max_body_bytes > 16 * 1024 * 1024 {
            return invalid("server.max_body_bytes", "must be between 1024 and 16777216");
        }
        if s.max_connections == 0 {
            return invalid("server.max_connections", "must be at least 1");
        }
        let worker_threads = match s.worker_threads {
            Some(n) => match std::num::NonZeroUsize::new(n).filter(|n| n.get() <= 1024) {
                Some(n) => Some(n),
                None => return invalid("server.worker_threads", "must be between 1 and 1024"),
            },
            None => None,
        };
        for (key, d) in [
            ("server.header_read_timeout", s.header_read_timeout),
            ("server.body_read_timeout", s.body_read_timeout),
            ("server.admission_timeout", s.admission_timeout),
        ] {
            if d.0.is_zero() {
                return invalid(key, "must be greater than 0s");
            }
        }
        Ok(ServerConfig {
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
            worker_threads,
        })
    }
}

impl TryFrom<RawStore> for StoreConfig {
    type Error = Invalid;

    fn try_from(st: RawStore) -> Result<StoreConfig, Invalid> {
        let dedupe_ttl = st.dedupe_ttl.0;
        if dedupe_ttl < Duration::from_secs(60) {
            return invalid("store.dedupe_ttl", "must be at least 1m");
        }
        let kind = match st.kind {
            RawStoreKind::Embedded => {
                if st.url.is_some() || st.prefix.is_some() {
                    return invalid("store", "url and prefix apply to kind = \"redis\" only");
                }
                if st.tls_ca_file.is_some() || st.tls_cert_file.is_some() || st.tls_key_file.is_some() {
                    return invalid(
                        "store",
                        "tls_ca_file, tls_cert_file and tls_key_file apply to kind = \"redis\" only",
                    );
                }
                if st.min_replicas_ack.is_some() || st.replica_ack_timeout.is_some() {
                    return invalid("store", "min_replicas_ack and replica_ack_timeout apply to kind = \"redis\" only");
                }
                if st.sentinels.is_some()
                    || st.master_name.is_some()
                    || st.sentinel_password.is_some()
                    || st.urls.is_some()
                {
                    return invalid("store", "sentinels, master_name, sentinel_password and urls apply to Redis only");
                }
                let path = st.path.unwrap_or_else(|| "./data/ipn-relay.redb".into());
                if path.is_empty() {
                    return invalid("store.path", "must not be empty");
                }
                StoreKind::Embedded { path: path.into() }
            }
            RawStoreKind::Redis | RawStoreKind::RedisCluster => {
                if st.path.is_some() {
                    return invalid("store.path", "applies to kind = \"embedded\" only");
                }
                let (url, topology) = redis_topology(&st)?;
                let tls = redis_tls(&url, st.tls_ca_file, st.tls_cert_file, st.tls_key_file)?;
                let prefix = st.prefix.unwrap_or_else(|| "ipn-relay".into());
                if prefix.is_empty() || prefix.contains(['{', '}']) {
                    return invalid(
                        "store.prefix",
                        "must be non-empty and contain no braces (it becomes the {hash tag})",
                    );
                }
                let mut options = crate::config::RedisOptions { topology, tls, ..Default::default() };
                options.min_replicas_ack = st.min_replicas_ack.unwrap_or(0);
                if let Some(t) = st.replica_ack_timeout {
                    if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&t.0) {
                        return invalid("store.replica_ack_timeout", "must be between 10ms and 60s");
                    }
                    options.replica_ack_timeout = t.0;
                }
                StoreKind::Redis { url: Url::new(url), prefix, options }
            }
        };
        Ok(StoreConfig { kind, dedupe_ttl })
    }
}

/// Keys are relative to the source (`name`, `secrets[0]`).
impl TryFrom<RawSource> for Source {
    type Error = Invalid;

    fn try_from(src: RawSource) -> Result<Source, Invalid> {
        check_name("name", &src.name)?;
        if src.secrets.is_empty() {
            return invalid("secrets", "needs at least one secret");
        }
        for (n, secret) in src.secrets.iter().enumerate() {
            if let Some(weakness) = weak(secret) {
                return invalid(
                    format!("secrets[{n}]"),
                    format!("{weakness}: use the secret from the provider's dashboard"),
                );
            }
        }
        let timestamp_tolerance = match (src.kind, src.timestamp_tolerance) {
            (ProviderKind::Nowpayments, Some(_)) => {
                return invalid(
                    "timestamp_tolerance",
                    "applies to kind = \"nova\" only (NOWPayments IPNs carry no signed timestamp)",
                );
            }
            (ProviderKind::Nowpayments, None) => None,
            (ProviderKind::Nova, t) => {
                let t = t.map(|d| d.0).unwrap_or(Duration::from_secs(300));
                (!t.is_zero()).then_some(t)
            }
        };
        Ok(Source {
            name: src.name,
            kind: src.kind,
            secrets: src.secrets.into_iter().map(Secret::new).collect(),
            allow_ips: src.allow_ips.into_iter().map(|c| c.0).collect(),
            rate_limit: rate_limit("rate_limit", src.rate_limit)?,
            timestamp_tolerance,
        })
    }
}

/// Keys are relative to the endpoint (`url`, `secret`).
impl TryFrom<RawEndpoint> for Endpoint {
    type Error = Invalid;

    fn try_from(ep: RawEndpoint) -> Result<Endpoint, Invalid> {
        check_name("name", &ep.name)?;
        let url: http::Uri = match ep.url.parse() {
            Ok(u) => u,
            // The URL may carry credentials: never quoted.
            Err(e) => return invalid("url", format!("not a URL: {e}")),
        };
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none_or(str::is_empty) {
            return invalid("url", "must be an absolute http:// or https:// URL");
        }
        let signing_key = parse_signing_key("secret", &ep.secret)?;
        let previous_signing_key = match ep.previous_secret.filter(|t| !t.is_empty()) {
            Some(p) => {
                let k = parse_signing_key("previous_secret", &p)?;
                if k.expose() == signing_key.expose() {
                    return invalid("previous_secret", "is the same as secret");
                }
                Some(k)
            }
            None => None,
        };
        let events = match ep.events {
            None => vec![EventPattern::Any],
            Some(v) if v.is_empty() => return invalid("events", "must not be empty (omit it for [\"*\"])"),
            Some(v) => v.iter().map(|p| event_pattern("events", p)).collect::<Result<_, _>>()?,
        };
        if ep.timeout.0.is_zero() {
            return invalid("timeout", "must be greater than 0s");
        }
        if ep.max_in_flight == 0 {
            return invalid("max_in_flight", "must be at least 1");
        }
        Ok(Endpoint {
            name: ep.name,
            url: Url::new(url),
            signing_key,
            previous_signing_key,
            events,
            sources: ep.sources,
            timeout: ep.timeout.0,
            max_in_flight: ep.max_in_flight,
            rate_limit: rate_limit("rate_limit", ep.rate_limit)?,
            ordering: ep.ordering,
            regressions: ep.regressions,
        })
    }
}

impl QuarantineConfig {
    fn check(q: RawQuarantine, max_body_bytes: usize, dedupe_ttl: Duration) -> Result<QuarantineConfig, Invalid> {
        // A recovered event is deduplicated from its first receipt: kept
        // longer than dedupe_ttl, it would be admitted with its dedupe key
        // already expired, and a provider's later retry admitted again.
        let ttl = q.ttl.map_or(Duration::from_secs(7 * 86_400).min(dedupe_ttl), |t| t.0);
        if ttl < Duration::from_secs(1) {
            return invalid("quarantine.ttl", "must be at least 1s");
        }
        if ttl > dedupe_ttl {
            return invalid(
                "quarantine.ttl",
                format!("must not exceed store.dedupe_ttl ({})", humantime::format_duration(dedupe_ttl)),
            );
        }
        if q.max_bytes < max_body_bytes as u64 {
            return invalid(
                "quarantine.max_bytes",
                format!(
                    "must be at least server.max_body_bytes ({max_body_bytes}), or no refused callback could be kept; to keep none, set quarantine.enabled = false"
                ),
            );
        }
        let Some(per_client) = NonZeroU32::new(q.max_per_client_per_minute) else {
            return invalid("quarantine.max_per_client_per_minute", "must be at least 1");
        };
        Ok(QuarantineConfig { enabled: q.enabled, ttl, max_bytes: q.max_bytes, max_per_client_per_minute: per_client })
    }
}

impl TryFrom<RawRetention> for RetentionConfig {
    type Error = Invalid;

    fn try_from(r: RawRetention) -> Result<RetentionConfig, Invalid> {
        for (key, d) in [("delivered", &r.delivered), ("dead", &r.dead), ("replay_jobs", &r.replay_jobs)] {
            if d.0 < Duration::from_secs(1) {
                return invalid(format!("retention.{key}"), "must be at least 1s");
            }
        }
        Ok(RetentionConfig { delivered: r.delivered.0, dead: r.dead.0, replay_jobs: r.replay_jobs.0 })
    }
}

impl TryFrom<RawDelivery> for DeliveryConfig {
    type Error = Invalid;

    fn try_from(d: RawDelivery) -> Result<DeliveryConfig, Invalid> {
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
        Ok(DeliveryConfig {
            max_attempts: d.max_attempts,
            initial_backoff: d.initial_backoff.0,
            max_backoff: d.max_backoff.0,
            multiplier: d.multiplier,
            jitter: d.jitter,
            visibility_timeout: d.visibility_timeout.0,
        })
    }
}

/// Each section on its own, then what needs more than one: unique names,
/// a Nova tolerance within the dedupe TTL, endpoint sources that exist, a
/// visibility timeout above every endpoint timeout.
impl TryFrom<RawConfig> for Config {
    type Error = Invalid;

    fn try_from(raw: RawConfig) -> Result<Config, Invalid> {
        let server = ServerConfig::try_from(raw.server)?;
        let store = StoreConfig::try_from(raw.store)?;

        if raw.sources.is_empty() {
            return invalid("sources", "at least one [[sources]] entry is required");
        }
        let mut sources: Vec<Source> = Vec::new();
        for (i, src) in raw.sources.into_iter().enumerate() {
            let key = format!("sources[{i}]");
            // A duplicate name is the first thing to say about an entry.
            check_name(&format!("{key}.name"), &src.name)?;
            if sources.iter().any(|s| s.name == src.name) {
                return invalid(format!("{key}.name"), format!("duplicate source name {:?}", src.name));
            }
            let src = Source::try_from(src).map_err(|e| e.under(&key))?;
            // A webhook is accepted while its timestamp is within
            // ±tolerance of now, so a replay can come up to twice the
            // tolerance after the first delivery of it.
            if let Some(t) = src.timestamp_tolerance
                && t.saturating_mul(2) > store.dedupe_ttl
            {
                return invalid(
                    format!("{key}.timestamp_tolerance"),
                    format!(
                        "twice {} exceeds store.dedupe_ttl {}: a replayed webhook could outlive its dedupe key",
                        humantime::format_duration(t),
                        humantime::format_duration(store.dedupe_ttl)
                    ),
                );
            }
            sources.push(src);
        }

        let mut endpoints: Vec<Endpoint> = Vec::new();
        for (i, ep) in raw.endpoints.into_iter().enumerate() {
            let key = format!("endpoints[{i}]");
            check_name(&format!("{key}.name"), &ep.name)?;
            if endpoints.iter().any(|e| e.name == ep.name) {
                return invalid(format!("{key}.name"), format!("duplicate endpoint name {:?}", ep.name));
            }
            if let Some(unknown) = ep.sources.iter().find(|s| !sources.iter().any(|src| &src.name == *s)) {
                return invalid(format!("{key}.sources"), format!("no source is named {unknown:?}"));
            }
            endpoints.push(Endpoint::try_from(ep).map_err(|e| e.under(&key))?);
        }

        let delivery = DeliveryConfig::try_from(raw.delivery)?;
        // A claim must outlive the request it covers, or a slow endpoint's
        // delivery would be claimed again while still in flight.
        // The margin covers the claim's own round trip: with less, a claim
        // could be too old to send at once and be released, over and over.
        const CLAIM_MARGIN: Duration = Duration::from_millis(500);
        if let Some(ep) =
            endpoints.iter().find(|ep| ep.timeout.saturating_add(CLAIM_MARGIN) > delivery.visibility_timeout)
        {
            return invalid(
                "delivery.visibility_timeout",
                format!(
                    "must exceed every endpoint timeout by at least 500ms; endpoint {:?} has {}",
                    ep.name,
                    humantime::format_duration(ep.timeout)
                ),
            );
        }

        let quarantine = QuarantineConfig::check(raw.quarantine, server.max_body_bytes, store.dedupe_ttl)?;
        // An admission may wait behind one WAIT for replicas, then its own,
        // within admission_timeout.
        if let StoreKind::Redis { options, .. } = &store.kind
            && options.min_replicas_ack > 0
            && options.replica_ack_timeout.saturating_mul(3) > server.admission_timeout
        {
            return invalid(
                "store.replica_ack_timeout",
                format!(
                    "must be at most a third of server.admission_timeout ({})",
                    humantime::format_duration(server.admission_timeout)
                ),
            );
        }
        Ok(Config {
            server,
            store,
            sources,
            endpoints,
            delivery,
            retention: RetentionConfig::try_from(raw.retention)?,
            quarantine,
            log_format: raw.log.format,
            defaulted_vars: raw.defaulted_vars,
        })
    }
}
