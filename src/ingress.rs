//! Ingress: `POST /hooks/{source}` from providers to an admitted event.
//!
//! Checks run cheapest first, so a flood costs as little as possible: the
//! route, the client's address against the allowlist and its rate limit, the
//! declared body size, then the body itself (capped while reading and timed),
//! then the signature, the JSON and the normalisation, and finally the
//! admission, which is durable before the 200 is written. Every refusal is a
//! JSON error with the code listed in docs/http-api.md; nothing about secrets or expected
//! signatures is ever echoed or logged.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use governor::RateLimiter;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use ipnet::IpNet;
use time::OffsetDateTime;
use tracing::Instrument;

use crate::admission::Admitter;
use crate::config::{Config, RateLimit, Source};
use crate::http::{BodyError, error_response, rate_key, read_body};
use crate::metrics::{IngressOutcome, Metrics};
use crate::providers::{self, ProviderError};
use crate::quarantine::Quarantine;
use crate::store::quarantine::Refusal;
use crate::store::{Admission, EventId};

type KeyedLimiter = RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>;

/// Rate-limit entries per source beyond which idle ones are pruned early.
const MAX_TRACKED_CLIENTS: usize = 100_000;

/// Seconds a client is told to wait when the store is down.
const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;

/// Why a request was refused: each knows its status and `error.code`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IngressError {
    #[error("no such route")]
    NotFound,
    #[error("no source is configured under this name")]
    UnknownSource,
    #[error("only POST is allowed here")]
    MethodNotAllowed,
    #[error("request body exceeds {0} bytes")]
    BodyTooLarge(usize),
    #[error("client address is not allowed for this source")]
    IpNotAllowed,
    #[error("too many requests from this address")]
    RateLimited { retry_after_secs: u64 },
    #[error("signature missing, malformed or wrong")]
    InvalidSignature,
    #[error("timestamp outside the accepted tolerance")]
    StaleTimestamp,
    #[error("{0}")]
    BadRequest(String),
    /// Signed, but carrying a member the verified form did not cover.
    #[error("{0}")]
    UnsignedContent(String),
    #[error("request body not received in time")]
    BodyTimeout,
    #[error("store unavailable; retry later")]
    Unavailable,
}

impl IngressError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            IngressError::NotFound | IngressError::UnknownSource => StatusCode::NOT_FOUND,
            IngressError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            IngressError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            IngressError::IpNotAllowed => StatusCode::FORBIDDEN,
            IngressError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            IngressError::InvalidSignature | IngressError::StaleTimestamp => StatusCode::UNAUTHORIZED,
            IngressError::BadRequest(_) | IngressError::UnsignedContent(_) => StatusCode::BAD_REQUEST,
            IngressError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            IngressError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The outcome label of `ipn_relay_ingress_requests_total`: the first
    /// contract's fixed set (docs/operations.md), so the codes it lacks
    /// fold into the nearest one.
    pub(crate) fn outcome(&self) -> IngressOutcome {
        match self {
            IngressError::NotFound | IngressError::UnknownSource => IngressOutcome::UnknownSource,
            IngressError::MethodNotAllowed
            | IngressError::BodyTimeout
            | IngressError::UnsignedContent(_)
            | IngressError::BadRequest(_) => IngressOutcome::BadRequest,
            IngressError::BodyTooLarge(_) => IngressOutcome::BodyTooLarge,
            IngressError::IpNotAllowed => IngressOutcome::IpNotAllowed,
            IngressError::RateLimited { .. } => IngressOutcome::RateLimited,
            IngressError::InvalidSignature => IngressOutcome::InvalidSignature,
            IngressError::StaleTimestamp => IngressOutcome::StaleTimestamp,
            IngressError::Unavailable => IngressOutcome::Unavailable,
        }
    }

    pub(crate) fn code(&self) -> &'static str {
        match self {
            IngressError::NotFound => "not_found",
            IngressError::UnknownSource => "unknown_source",
            IngressError::MethodNotAllowed => "method_not_allowed",
            IngressError::BodyTooLarge(_) => "body_too_large",
            IngressError::IpNotAllowed => "ip_not_allowed",
            IngressError::RateLimited { .. } => "rate_limited",
            IngressError::InvalidSignature => "invalid_signature",
            IngressError::StaleTimestamp => "stale_timestamp",
            IngressError::BadRequest(_) => "bad_request",
            IngressError::UnsignedContent(_) => "unsigned_content",
            IngressError::BodyTimeout => "request_timeout",
            IngressError::Unavailable => "unavailable",
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut resp = error_response(self.status(), self.code(), &self.to_string());
        let h = resp.headers_mut();
        match self {
            IngressError::RateLimited { retry_after_secs } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            IngressError::Unavailable => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECS));
            }
            IngressError::MethodNotAllowed => {
                h.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            _ => {}
        }
        resp
    }
}

impl From<ProviderError> for IngressError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::InvalidSignature(_) => IngressError::InvalidSignature,
            ProviderError::StaleTimestamp => IngressError::StaleTimestamp,
            ProviderError::BadRequest(m) => IngressError::BadRequest(m),
            e @ ProviderError::UnsignedContent(_) => IngressError::UnsignedContent(e.to_string()),
        }
    }
}

struct SourceGate {
    source: Source,
    /// Shared across reloads that keep the source's `rate_limit`, so a
    /// reload does not hand every client a fresh burst.
    limiter: Option<Arc<KeyedLimiter>>,
}

/// What a request is checked against: the configuration in force when it
/// arrived, and each source's gate.
struct Gates {
    config: Arc<Config>,
    by_source: HashMap<String, SourceGate>,
}

impl Gates {
    fn new(config: Arc<Config>, previous: Option<&Gates>) -> Gates {
        let by_source = config
            .sources
            .iter()
            .map(|s| {
                let kept = previous
                    .and_then(|p| p.by_source.get(&s.name))
                    .filter(|g| g.source.rate_limit == s.rate_limit)
                    .and_then(|g| g.limiter.clone());
                let limiter = kept.or_else(|| s.rate_limit.map(|r| Arc::new(limiter(r))));
                (s.name.clone(), SourceGate { source: s.clone(), limiter })
            })
            .collect();
        Gates { config, by_source }
    }
}

fn limiter(r: RateLimit) -> KeyedLimiter {
    RateLimiter::keyed(r.quota())
}

/// The ingress handler, shared by every connection.
pub(crate) struct Ingress {
    gates: std::sync::RwLock<Arc<Gates>>,
    admitter: Arc<Admitter>,
    quarantine: Arc<Quarantine>,
    metrics: Arc<Metrics>,
    last_prune: AtomicU64,
}

impl Ingress {
    pub(crate) fn new(
        config: Arc<Config>,
        admitter: Arc<Admitter>,
        quarantine: Arc<Quarantine>,
        metrics: Arc<Metrics>,
    ) -> Ingress {
        let gates = std::sync::RwLock::new(Arc::new(Gates::new(config, None)));
        Ingress { gates, admitter, quarantine, metrics, last_prune: AtomicU64::new(0) }
    }

    /// Takes in a reloaded configuration: requests that arrive from now on
    /// are checked against it.
    pub(crate) fn apply(&self, config: Arc<Config>) {
        self.quarantine.apply(&config);
        let mut gates = self.gates.write().unwrap_or_else(|e| e.into_inner());
        *gates = Arc::new(Gates::new(config, Some(&gates)));
    }

    fn gates(&self) -> Arc<Gates> {
        self.gates.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Prunes early when a flood of distinct addresses fills the maps, but
    /// at most once a second, so pruning cannot become the flood's cost.
    fn prune_limiters(&self) {
        let now = crate::store::now_millis();
        let last = self.last_prune.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self.last_prune.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.forget_idle_clients();
        }
    }

    /// Forgets rate-limit state of addresses that have been quiet, so the
    /// per-IP maps do not grow without bound.
    pub(crate) fn forget_idle_clients(&self) {
        self.quarantine.forget_idle_clients();
        for gate in self.gates().by_source.values() {
            if let Some(l) = &gate.limiter {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
    }

    /// Answers one request. Never fails: every error is a response.
    pub(crate) async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        let source = req.uri().path().strip_prefix("/hooks/").unwrap_or("").to_owned();
        // The span names what the request is about; never a secret, a
        // signature or the body.
        let span = tracing::info_span!(
            "callback",
            source = %source,
            event_id = tracing::field::Empty,
            quarantine_id = tracing::field::Empty
        );
        let result = self.accept(req, peer).instrument(span.clone()).await;
        let elapsed = started.elapsed();
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        let _entered = span.enter();
        match result {
            Ok((admission, id)) => {
                let outcome = match admission {
                    Admission::Accepted { .. } => IngressOutcome::Accepted,
                    Admission::Duplicate => IngressOutcome::Duplicate,
                };
                let status = outcome.as_str();
                span.record("event_id", tracing::field::display(&id));
                self.metrics.ingress(&source, outcome, elapsed);
                tracing::info!(outcome = status, elapsed_ms, "callback admitted");
                // Field order as in docs/http-api.md: {"status":…,"id":…}.
                let mut resp = Response::new(Full::new(Bytes::from(format!(r#"{{"status":"{status}","id":"{id}"}}"#))));
                resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                resp
            }
            Err(e) => {
                self.metrics.ingress(&source, e.outcome(), elapsed);
                match &e {
                    IngressError::Unavailable => {
                        tracing::warn!(outcome = e.code(), "callback refused: store unavailable")
                    }
                    _ => tracing::info!(outcome = e.code(), %peer, elapsed_ms, "callback refused"),
                }
                e.into_response()
            }
        }
    }

    async fn accept<B>(&self, req: Request<B>, peer: SocketAddr) -> Result<(Admission, EventId), IngressError>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let name = req.uri().path().strip_prefix("/hooks/").ok_or(IngressError::NotFound)?.to_owned();
        let name = name.as_str();
        if name.is_empty() || name.contains('/') {
            return Err(IngressError::NotFound);
        }
        // Cheap refusals first, against the configuration as the request
        // arrived; everything is checked again once the body is in.
        let early = self.gates();
        let config = &early.config;
        let gate = early.by_source.get(name).ok_or(IngressError::UnknownSource)?;
        if req.method() != Method::POST {
            return Err(IngressError::MethodNotAllowed);
        }
        let client = client_ip(peer.ip(), req.headers(), &config.server.trusted_proxies).ok_or_else(|| {
            IngressError::BadRequest("a trusted proxy sent an X-Forwarded-For that names no client address".into())
        })?;
        let source = &gate.source;
        if !source.allow_ips.is_empty() && !source.allow_ips.iter().any(|net| net.contains(&client)) {
            return Err(IngressError::IpNotAllowed);
        }
        if let Some(limiter) = &gate.limiter {
            let verdict = limiter.check_key(&rate_key(client));
            if limiter.len() > MAX_TRACKED_CLIENTS {
                self.prune_limiters();
            }
            if let Err(not_until) = verdict {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(IngressError::RateLimited { retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64 });
            }
        }

        let max = config.server.max_body_bytes;
        let declared =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(IngressError::BodyTooLarge(max));
        }
        let (parts, body) = req.into_parts();
        let body = read_body(body, max, Some(config.server.body_read_timeout)).await.map_err(|e| match e {
            BodyError::TooLarge(max) => IngressError::BodyTooLarge(max),
            BodyError::Timeout => IngressError::BodyTimeout,
            BodyError::Failed(_) => IngressError::BadRequest(e.to_string()),
        })?;

        // The body can take up to `body_read_timeout` to arrive, and a reload
        // may have come meanwhile: verify against the configuration in force
        // now, so a secret, source or allowed network removed by a reload
        // that has answered admits nothing more.
        let gates = self.gates();
        let config = &gates.config;
        let gate = gates.by_source.get(name).ok_or(IngressError::UnknownSource)?;
        let source = &gate.source;
        if !source.allow_ips.is_empty() && !source.allow_ips.iter().any(|net| net.contains(&client)) {
            return Err(IngressError::IpNotAllowed);
        }
        let received_at = OffsetDateTime::now_utc();
        let normalised = providers::process(source, &parts.headers, &body, received_at).map_err(|e| {
            tracing::debug!(source = %source.name, reason = %e, "verification failed");
            let refusal = match e {
                ProviderError::InvalidSignature(_) => Some(Refusal::InvalidSignature),
                ProviderError::StaleTimestamp => Some(Refusal::StaleTimestamp),
                _ => None,
            };
            let listed = !source.allow_ips.is_empty();
            if let Some(refusal) = refusal
                && let Some(id) = self.quarantine.offer(
                    &source.name,
                    listed,
                    refusal,
                    client,
                    &parts.headers,
                    body.clone(),
                    received_at,
                )
            {
                tracing::Span::current().record("quarantine_id", tracing::field::display(&id));
            }
            IngressError::from(e)
        })?;
        self.admitter.admit(config, source, normalised, received_at, None).await.map_err(|_| IngressError::Unavailable)
    }
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy,
/// in which case `X-Forwarded-For` is walked from the right past every
/// trusted proxy. The first untrusted hop is the client; entries further
/// left were written by the client itself and are never believed.
///
/// `None` when a hop that a trusted proxy wrote is unreadable: substituting
/// the proxy's own address would put every client in one rate-limit bucket
/// and judge `allow_ips` against the proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = canonical_ip(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    // Split the raw bytes: one non-ASCII byte the client put on the left
    // must not void the hops our proxies appended on the right.
    let hops: Vec<&[u8]> =
        headers.get_all("x-forwarded-for").iter().flat_map(|v| v.as_bytes().split(|&b| b == b',')).collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        client = canonical_ip(parse_hop(hop)?);
        if !is_trusted(&client) {
            break;
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` entry: an address, optionally with a port
/// (`203.0.113.9:4711`, `[2001:db8::1]:443`) or in brackets.
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(hop).ok()?.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// IPv4-mapped IPv6 addresses compare as IPv4, so `10.0.0.0/8` matches
/// `::ffff:10.1.2.3` from a dual-stack socket.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer = ip("10.0.0.5");
        let outsider = ip("198.51.100.7");
        // Untrusted peer: header ignored.
        assert_eq!(client_ip(outsider, &xff("1.2.3.4"), &trusted), Some(outsider));
        // Trusted peer: the rightmost untrusted hop.
        assert_eq!(client_ip(peer, &xff("6.6.6.6, 1.2.3.4, 10.0.0.9"), &trusted), Some(ip("1.2.3.4")));
        // No header: the proxy itself.
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), Some(peer));
        // No trusted proxies configured: never believed.
        assert_eq!(client_ip(peer, &xff("1.2.3.4"), &[]), Some(peer));
    }

    #[test]
    fn forwarded_for_tolerates_ports_and_client_garbage_but_not_proxy_garbage() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer = ip("10.0.0.5");
        assert_eq!(client_ip(peer, &xff("203.0.113.9:4711"), &trusted), Some(ip("203.0.113.9")));
        assert_eq!(client_ip(peer, &xff("[2001:db8::1]:443"), &trusted), Some(ip("2001:db8::1")));
        assert_eq!(client_ip(peer, &xff("[2001:db8::1]"), &trusted), Some(ip("2001:db8::1")));
        // Client-written garbage left of the real client does not matter.
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_bytes(b"\xff, 203.0.113.9").unwrap());
        assert_eq!(client_ip(peer, &h, &trusted), Some(ip("203.0.113.9")));
        assert_eq!(client_ip(peer, &xff("junk, 203.0.113.9"), &trusted), Some(ip("203.0.113.9")));
        // Garbage where our proxy wrote: no client address to believe.
        assert_eq!(client_ip(peer, &xff("203.0.113.9, junk"), &trusted), None);
        assert_eq!(client_ip(peer, &xff("unknown"), &trusted), None);
    }

    #[test]
    fn mapped_ipv6_addresses_match_ipv4_networks() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(client_ip(ip("::ffff:10.0.0.5"), &xff("1.2.3.4"), &trusted), Some(ip("1.2.3.4")));
    }

    #[test]
    fn ipv6_clients_are_rate_limited_per_64() {
        assert_eq!(rate_key(ip("2001:db8:1:2:aaaa::1")), rate_key(ip("2001:db8:1:2:bbbb::9")));
        assert_ne!(rate_key(ip("2001:db8:1:2::1")), rate_key(ip("2001:db8:1:3::1")));
        assert_eq!(rate_key(ip("198.51.100.7")), ip("198.51.100.7"));
    }

    #[test]
    fn every_error_has_the_spec_status_and_code() {
        let cases = [
            (IngressError::UnknownSource, 404, "unknown_source"),
            (IngressError::MethodNotAllowed, 405, "method_not_allowed"),
            (IngressError::BodyTooLarge(1), 413, "body_too_large"),
            (IngressError::IpNotAllowed, 403, "ip_not_allowed"),
            (IngressError::RateLimited { retry_after_secs: 1 }, 429, "rate_limited"),
            (IngressError::InvalidSignature, 401, "invalid_signature"),
            (IngressError::StaleTimestamp, 401, "stale_timestamp"),
            (IngressError::BadRequest("x".into()), 400, "bad_request"),
            (IngressError::UnsignedContent("x".into()), 400, "unsigned_content"),
            (IngressError::Unavailable, 503, "unavailable"),
        ];
        for (e, status, code) in cases {
            assert_eq!((e.status().as_u16(), e.code()), (status, code));
        }
    }
}
