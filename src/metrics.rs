//! Prometheus metrics (docs/operations.md) on the admin listener's `/metrics`.
//!
//! Every label value is bounded: sources and endpoints come from the
//! configuration (a callback to an unknown source counts under
//! `source="unknown"`), outcomes and states are fixed sets. Every series
//! exists from the start at zero, so `rate()` and alerts see it before the
//! first event.
//!
//! Store-backed gauges (deliveries by state, the oldest open delivery,
//! readiness) are read from the store at scrape time, at most once per
//! [`STORE_REFRESH`], so a fast scraper does not load the store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::sync::Mutex;

use crate::config::Config;
use crate::http::Chain;
use crate::store::quarantine::Refusal;
use crate::store::{DeliveryState, Next, Store, now_millis};

/// How a callback was answered, as `ipn_relay_ingress_requests_total`
/// labels it: the first contract's fixed set (docs/operations.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IngressOutcome {
    Accepted,
    Duplicate,
    InvalidSignature,
    StaleTimestamp,
    BadRequest,
    IpNotAllowed,
    RateLimited,
    BodyTooLarge,
    Unavailable,
    UnknownSource,
}

impl IngressOutcome {
    pub(crate) const ALL: [IngressOutcome; 10] = [
        IngressOutcome::Accepted,
        IngressOutcome::Duplicate,
        IngressOutcome::InvalidSignature,
        IngressOutcome::StaleTimestamp,
        IngressOutcome::BadRequest,
        IngressOutcome::IpNotAllowed,
        IngressOutcome::RateLimited,
        IngressOutcome::BodyTooLarge,
        IngressOutcome::Unavailable,
        IngressOutcome::UnknownSource,
    ];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            IngressOutcome::Accepted => "accepted",
            IngressOutcome::Duplicate => "duplicate",
            IngressOutcome::InvalidSignature => "invalid_signature",
            IngressOutcome::StaleTimestamp => "stale_timestamp",
            IngressOutcome::BadRequest => "bad_request",
            IngressOutcome::IpNotAllowed => "ip_not_allowed",
            IngressOutcome::RateLimited => "rate_limited",
            IngressOutcome::BodyTooLarge => "body_too_large",
            IngressOutcome::Unavailable => "unavailable",
            IngressOutcome::UnknownSource => "unknown_source",
        }
    }
}

/// Why a refused callback was not kept: the label of
/// `ipn_relay_quarantine_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// The quarantine holds `max_bytes` already.
    Full,
    /// Its client sent more than `max_per_client_per_minute`.
    ClientRate,
    /// The queue to the writer was full (a burst faster than the store).
    Busy,
    /// The store failed to keep it.
    StoreError,
    /// The same callback (a provider's retry) is kept already.
    Duplicate,
}

impl Dropped {
    pub(crate) const ALL: [Dropped; 5] =
        [Dropped::Full, Dropped::ClientRate, Dropped::Busy, Dropped::StoreError, Dropped::Duplicate];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Dropped::Full => "full",
            Dropped::ClientRate => "client_rate",
            Dropped::Busy => "busy",
            Dropped::StoreError => "store_error",
            Dropped::Duplicate => "duplicate",
        }
    }
}

/// The label values of `ipn_relay_ingress_requests_total`'s `outcome`.
pub const INGRESS_OUTCOMES: [&str; 10] = {
    let mut out = [""; 10];
    let mut i = 0;
    while i < 10 {
        out[i] = IngressOutcome::ALL[i].as_str();
        i += 1;
    }
    out
};
/// The label values of `ipn_relay_deliveries_total`'s `outcome`: what an
/// attempt's [`Next`] says.
pub(crate) const DELIVERY_OUTCOMES: [&str; 3] =
    [Next::Delivered.as_str(), Next::RetryAt(0).as_str(), Next::Dead.as_str()];
/// The `source` label of callbacks to a source that is not configured.
pub(crate) const UNKNOWN_SOURCE: &str = "unknown";
/// How long store-backed gauges are reused before the store is asked again.
pub(crate) const STORE_REFRESH: Duration = Duration::from_secs(5);
/// How long a scrape waits for the store before reporting what it has.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// Latency buckets for a sidecar: 1 ms to 30 s.
const BUCKETS: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0];

pub struct Metrics {
    registry: Registry,
    ingress_requests: IntCounterVec,
    ingress_duration: HistogramVec,
    deliveries_total: IntCounterVec,
    delivery_duration: HistogramVec,
    deliveries: IntGaugeVec,
    replays: IntCounter,
    discards: IntCounter,
    regressions: IntCounterVec,
    store_bytes: IntGauge,
    store_oldest_event_age: Gauge,
    retention_removed: IntCounterVec,
    retention_seconds: GaugeVec,
    config_info: IntGaugeVec,
    config_reloads: IntCounterVec,
    oldest_open_age: Gauge,
    last_poll: GaugeVec,
    store_ready: IntGauge,
    clock_offset: Gauge,
    quarantined: IntCounterVec,
    quarantine_dropped: IntCounterVec,
    quarantine_items: IntGauge,
    quarantine_bytes: IntGauge,
    /// Configured source names, to bound the `source` label.
    sources: std::sync::RwLock<Vec<String>>,
    /// Configured endpoint names, to drop the series of removed ones.
    endpoints: std::sync::RwLock<Vec<String>>,
    /// When store-backed gauges were last read.
    refreshed: Mutex<Option<Instant>>,
    /// The last hour's callbacks and each endpoint's health, for the console.
    pub(crate) activity: crate::activity::Activity,
}

/// One metric: its name, help and labels.
struct Spec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

impl Spec {
    fn opts(&self) -> Opts {
        Opts::new(self.name, self.help)
    }

    fn histogram_opts(&self) -> HistogramOpts {
        HistogramOpts::new(self.name, self.help).buckets(BUCKETS.to_vec())
    }
}

// Every metric the relay exports, in one table.
const INGRESS_REQUESTS: Spec = Spec {
    name: "ipn_relay_ingress_requests_total",
    help: "Provider callbacks by source and outcome.",
    labels: &["source", "outcome"],
};
const INGRESS_DURATION: Spec = Spec {
    name: "ipn_relay_ingress_duration_seconds",
    help: "Time from a callback's arrival to its answer, by source.",
    labels: &["source"],
};
const DELIVERIES_TOTAL: Spec = Spec {
    name: "ipn_relay_deliveries_total",
    help: "Delivery attempts by endpoint and outcome.",
    labels: &["endpoint", "outcome"],
};
const DELIVERY_DURATION: Spec = Spec {
    name: "ipn_relay_delivery_duration_seconds",
    help: "Duration of delivery attempts (the HTTP exchange), by endpoint.",
    labels: &["endpoint"],
};
const DELIVERIES: Spec =
    Spec { name: "ipn_relay_deliveries", help: "Deliveries in the store by state.", labels: &["state"] };
const REPLAYS: Spec =
    Spec { name: "ipn_relay_replays_total", help: "Deliveries put back to pending by a replay.", labels: &[] };
const REGRESSIONS: Spec = Spec {
    name: "ipn_relay_regressions_total",
    help: "Events admitted whose status ranks below one already admitted for their subject.",
    labels: &["source"],
};
const DISCARDS: Spec =
    Spec { name: "ipn_relay_discards_total", help: "Deliveries discarded by an operator.", labels: &[] };
const STORE_BYTES: Spec = Spec {
    name: "ipn_relay_store_bytes",
    help: "The store's size: the embedded file, or the Redis server's used_memory.",
    labels: &[],
};
const STORE_OLDEST_EVENT_AGE: Spec = Spec {
    name: "ipn_relay_store_oldest_event_age_seconds",
    help: "Age of the oldest event still stored (0 if none).",
    labels: &[],
};
const RETENTION_REMOVED: Spec = Spec {
    name: "ipn_relay_retention_removed_total",
    help: "Records removed by retention, by kind.",
    labels: &["kind"],
};
const RETENTION_SECONDS: Spec = Spec {
    name: "ipn_relay_retention_seconds",
    help: "The configured retention, by class (delivered, dead, replay_jobs).",
    labels: &["class"],
};
const CONFIG_INFO: Spec = Spec {
    name: "ipn_relay_config_info",
    help: "The configuration in force: the first 16 hex digits of its file's SHA-256; always 1.",
    labels: &["hash"],
};
const CONFIG_RELOADS: Spec = Spec {
    name: "ipn_relay_config_reloads_total",
    help: "Configuration reloads by result (ok, invalid, needs_restart).",
    labels: &["result"],
};
/// The label values of `ipn_relay_retention_removed_total`'s `kind`.
pub(crate) const REMOVED_KINDS: [&str; 4] = ["event", "delivery", "attempt", "replay_job"];
const BUILD_INFO: Spec =
    Spec { name: "ipn_relay_build_info", help: "The running version; always 1.", labels: &["version"] };
const OLDEST_OPEN_AGE: Spec = Spec {
    name: "ipn_relay_oldest_pending_age_seconds",
    help: "Age of the oldest delivery not yet delivered or dead (pending or in flight); 0 when there is none.",
    labels: &[],
};
const LAST_POLL: Spec = Spec {
    name: "ipn_relay_delivery_last_poll_timestamp_seconds",
    help: "Unix time of the last successful claim poll of each endpoint's worker: the worker heartbeat.",
    labels: &["endpoint"],
};
const STORE_READY: Spec =
    Spec { name: "ipn_relay_store_ready", help: "1 if the store took a write at the last check, else 0.", labels: &[] };
const CLOCK_OFFSET: Spec = Spec {
    name: "ipn_relay_store_clock_offset_seconds",
    help: "How far the shared store's clock (Redis) is ahead of this relay's; 0 for the embedded store, NaN if it cannot be read.",
    labels: &[],
};

const QUARANTINED: Spec = Spec {
    name: "ipn_relay_quarantined_total",
    help: "Refused callbacks kept in the quarantine, by source and reason (invalid_signature, stale_timestamp).",
    labels: &["source", "reason"],
};
const QUARANTINE_DROPPED: Spec = Spec {
    name: "ipn_relay_quarantine_dropped_total",
    help: "Refused callbacks not kept, by why (full, client_rate, busy, store_error, duplicate).",
    labels: &["reason"],
};
const QUARANTINE_ITEMS: Spec =
    Spec { name: "ipn_relay_quarantine_items", help: "Refused callbacks in the quarantine.", labels: &[] };
const QUARANTINE_BYTES: Spec = Spec {
    name: "ipn_relay_quarantine_bytes",
    help: "What the quarantine's callbacks take (bodies and kept headers), against quarantine.max_bytes.",
    labels: &[],
};

fn registered<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: T,
) -> prometheus::Result<T> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl Metrics {
    pub(crate) fn new(config: &Config) -> prometheus::Result<Arc<Metrics>> {
        let sources: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
        let endpoints: Vec<&str> = config.endpoints.iter().map(|e| e.name.as_str()).collect();
        let metrics = Metrics::with_names(&sources, &endpoints)?;
        metrics.retention(&config.retention);
        Ok(metrics)
    }

    /// Takes in a reloaded configuration: its source and endpoint labels
    /// and its retention.
    pub(crate) fn configure(&self, config: &Config) {
        let mut sources = self.sources.write().unwrap_or_else(|e| e.into_inner());
        // Series of sources and endpoints that are gone go with them: a
        // frozen worker heartbeat would page someone.
        for gone in sources.iter().filter(|s| !config.sources.iter().any(|n| n.name == **s)) {
            for outcome in INGRESS_OUTCOMES {
                let _ = self.ingress_requests.remove_label_values(&[gone.as_str(), outcome]);
            }
            let _ = self.ingress_duration.remove_label_values(&[gone.as_str()]);
            let _ = self.regressions.remove_label_values(&[gone.as_str()]);
            for reason in Refusal::ALL {
                let _ = self.quarantined.remove_label_values(&[gone.as_str(), reason.as_str()]);
            }
        }
        *sources = config.sources.iter().map(|s| s.name.clone()).collect();
        let mut endpoints = self.endpoints.write().unwrap_or_else(|e| e.into_inner());
        for gone in endpoints.iter().filter(|e| !config.endpoints.iter().any(|n| n.name == **e)) {
            for outcome in DELIVERY_OUTCOMES {
                let _ = self.deliveries_total.remove_label_values(&[gone.as_str(), outcome]);
            }
            let _ = self.delivery_duration.remove_label_values(&[gone.as_str()]);
            let _ = self.last_poll.remove_label_values(&[gone.as_str()]);
        }
        *endpoints = config.endpoints.iter().map(|e| e.name.clone()).collect();
        config.sources.iter().for_each(|s| self.show_source(&s.name));
        config.endpoints.iter().for_each(|e| self.show_endpoint(&e.name));
        self.retention(&config.retention);
    }

    /// Creates a source's series, at zero, so they show before its first callback.
    fn show_source(&self, source: &str) {
        for outcome in INGRESS_OUTCOMES {
            self.ingress_requests.with_label_values(&[source, outcome]);
        }
        self.ingress_duration.with_label_values(&[source]);
        if source != UNKNOWN_SOURCE {
            self.regressions.with_label_values(&[source]);
            for reason in Refusal::ALL {
                self.quarantined.with_label_values(&[source, reason.as_str()]);
            }
        }
    }

    /// Creates an endpoint's series, at zero, so they show before its first attempt.
    fn show_endpoint(&self, endpoint: &str) {
        for outcome in DELIVERY_OUTCOMES {
            self.deliveries_total.with_label_values(&[endpoint, outcome]);
        }
        self.delivery_duration.with_label_values(&[endpoint]);
        self.last_poll.with_label_values(&[endpoint]);
    }

    /// The configuration whose file hashes to `hash` is in force.
    pub(crate) fn config_loaded(&self, hash: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
    }

    /// Counts a reload by `result`.
    pub(crate) fn reloaded(&self, result: &str) {
        self.config_reloads.with_label_values(&[result]).inc();
    }

    /// Shows the configured retention.
    pub(crate) fn retention(&self, r: &crate::config::RetentionConfig) {
        for (class, d) in [("delivered", r.delivered), ("dead", r.dead), ("replay_jobs", r.replay_jobs)] {
            self.retention_seconds.with_label_values(&[class]).set(d.as_secs_f64());
        }
    }

    /// Counts what a retention step removed.
    pub(crate) fn removed(&self, p: &crate::store::retention::Purged) {
        for (kind, n) in REMOVED_KINDS.into_iter().zip([p.events, p.deliveries, p.attempts, p.replay_jobs]) {
            if n > 0 {
                self.retention_removed.with_label_values(&[kind]).inc_by(n);
            }
        }
    }

    /// Metrics for these configured source and endpoint names.
    pub fn with_names(sources: &[&str], endpoints: &[&str]) -> prometheus::Result<Arc<Metrics>> {
        let r = &Registry::new();
        let ingress_requests = registered(r, IntCounterVec::new(INGRESS_REQUESTS.opts(), INGRESS_REQUESTS.labels)?)?;
        let ingress_duration =
            registered(r, HistogramVec::new(INGRESS_DURATION.histogram_opts(), INGRESS_DURATION.labels)?)?;
        let deliveries_total = registered(r, IntCounterVec::new(DELIVERIES_TOTAL.opts(), DELIVERIES_TOTAL.labels)?)?;
        let delivery_duration =
            registered(r, HistogramVec::new(DELIVERY_DURATION.histogram_opts(), DELIVERY_DURATION.labels)?)?;
        let deliveries = registered(r, IntGaugeVec::new(DELIVERIES.opts(), DELIVERIES.labels)?)?;
        let replays = registered(r, IntCounter::with_opts(REPLAYS.opts())?)?;
        let discards = registered(r, IntCounter::with_opts(DISCARDS.opts())?)?;
        let regressions = registered(r, IntCounterVec::new(REGRESSIONS.opts(), REGRESSIONS.labels)?)?;
        let store_bytes = registered(r, IntGauge::with_opts(STORE_BYTES.opts())?)?;
        let store_oldest_event_age = registered(r, Gauge::with_opts(STORE_OLDEST_EVENT_AGE.opts())?)?;
        let retention_removed = registered(r, IntCounterVec::new(RETENTION_REMOVED.opts(), RETENTION_REMOVED.labels)?)?;
        let retention_seconds = registered(r, GaugeVec::new(RETENTION_SECONDS.opts(), RETENTION_SECONDS.labels)?)?;
        for kind in REMOVED_KINDS {
            retention_removed.with_label_values(&[kind]);
        }
        let config_info = registered(r, IntGaugeVec::new(CONFIG_INFO.opts(), CONFIG_INFO.labels)?)?;
        let config_reloads = registered(r, IntCounterVec::new(CONFIG_RELOADS.opts(), CONFIG_RELOADS.labels)?)?;
        for result in ["ok", "invalid", "needs_restart"] {
            config_reloads.with_label_values(&[result]);
        }
        let build_info = registered(r, IntGaugeVec::new(BUILD_INFO.opts(), BUILD_INFO.labels)?)?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let oldest_open_age = registered(r, Gauge::with_opts(OLDEST_OPEN_AGE.opts())?)?;
        let last_poll = registered(r, GaugeVec::new(LAST_POLL.opts(), LAST_POLL.labels)?)?;
        let store_ready = registered(r, IntGauge::with_opts(STORE_READY.opts())?)?;
        let clock_offset = registered(r, Gauge::with_opts(CLOCK_OFFSET.opts())?)?;
        let quarantined = registered(r, IntCounterVec::new(QUARANTINED.opts(), QUARANTINED.labels)?)?;
        let quarantine_dropped =
            registered(r, IntCounterVec::new(QUARANTINE_DROPPED.opts(), QUARANTINE_DROPPED.labels)?)?;
        for why in Dropped::ALL {
            quarantine_dropped.with_label_values(&[why.as_str()]);
        }
        let quarantine_items = registered(r, IntGauge::with_opts(QUARANTINE_ITEMS.opts())?)?;
        let quarantine_bytes = registered(r, IntGauge::with_opts(QUARANTINE_BYTES.opts())?)?;
        let registry = r.clone();

        let names: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        for state in DeliveryState::ALL {
            deliveries.with_label_values(&[state.as_str()]);
        }
        let metrics = Arc::new(Metrics {
            registry,
            ingress_requests,
            ingress_duration,
            deliveries_total,
            delivery_duration,
            deliveries,
            replays,
            discards,
            regressions,
            store_bytes,
            store_oldest_event_age,
            retention_removed,
            retention_seconds,
            config_info,
            config_reloads,
            oldest_open_age,
            last_poll,
            store_ready,
            clock_offset,
            quarantined,
            quarantine_dropped,
            quarantine_items,
            quarantine_bytes,
            sources: std::sync::RwLock::new(names),
            endpoints: std::sync::RwLock::new(endpoints.iter().map(|e| e.to_string()).collect()),
            refreshed: Mutex::new(None),
            activity: Default::default(),
        });
        for source in sources.iter().copied().chain([UNKNOWN_SOURCE]) {
            metrics.show_source(source);
        }
        endpoints.iter().for_each(|e| metrics.show_endpoint(e));
        Ok(metrics)
    }

    /// The `source` label for a callback to `name`.
    fn source_label<'a>(&self, name: &'a str) -> &'a str {
        let sources = self.sources.read().unwrap_or_else(|e| e.into_inner());
        if sources.iter().any(|s| s == name) { name } else { UNKNOWN_SOURCE }
    }

    /// Counts one answered callback.
    pub(crate) fn ingress(&self, source: &str, outcome: IngressOutcome, elapsed: Duration) {
        let source = self.source_label(source);
        self.ingress_requests.with_label_values(&[source, outcome.as_str()]).inc();
        self.ingress_duration.with_label_values(&[source]).observe(elapsed.as_secs_f64());
        self.activity.callback(source, outcome.as_str(), now_millis());
    }

    /// Counts one delivery attempt to `endpoint` (a configured name),
    /// labelled by what comes next.
    pub(crate) fn delivery(&self, endpoint: &str, next: Next, duration: Duration) {
        self.deliveries_total.with_label_values(&[endpoint, next.as_str()]).inc();
        self.delivery_duration.with_label_values(&[endpoint]).observe(duration.as_secs_f64());
    }

    /// Records a claim poll of `endpoint` that reached the store.
    pub(crate) fn polled(&self, endpoint: &str) {
        // A loop a reload is stopping must not bring its removed series back.
        if self.endpoints.read().unwrap_or_else(|e| e.into_inner()).iter().any(|e| e == endpoint) {
            self.last_poll.with_label_values(&[endpoint]).set(now_millis() as f64 / 1000.0);
        }
    }

    pub(crate) fn replayed(&self, n: usize) {
        self.replays.inc_by(n as u64);
    }

    /// Counts an admitted status regression from `source`.
    pub(crate) fn regression(&self, source: &str) {
        self.regressions.with_label_values(&[self.source_label(source)]).inc();
    }

    /// Counts refused callbacks from `source` kept in the quarantine.
    pub(crate) fn quarantined(&self, source: &str, reason: Refusal, n: usize) {
        if n > 0 {
            self.quarantined.with_label_values(&[self.source_label(source), reason.as_str()]).inc_by(n as u64);
        }
    }

    /// Counts refused callbacks not kept, by why.
    pub(crate) fn quarantine_dropped(&self, why: Dropped, n: usize) {
        self.quarantine_dropped.with_label_values(&[why.as_str()]).inc_by(n as u64);
    }

    pub(crate) fn discarded(&self, n: usize) {
        self.discards.inc_by(n as u64);
    }

    /// The text exposition, with store-backed gauges refreshed if stale.
    pub async fn render(&self, store: &dyn Store) -> String {
        self.refresh(store).await;
        let mut out = Vec::new();
        // Encoding to a Vec cannot fail on I/O; a malformed metric would be
        // a bug caught by the tests.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    async fn refresh(&self, store: &dyn Store) {
        let mut refreshed = self.refreshed.lock().await;
        if refreshed.is_some_and(|t| t.elapsed() < STORE_REFRESH) {
            return;
        }
        let read = async {
            // Not ready until the write check answers (a hung store times out).
            self.store_ready.set(0);
            let ready = store.ping().await.is_ok();
            self.store_ready.set(ready as i64);
            // Apart from the rest: a Redis user may be denied TIME (it is in
            // no ACL category but @fast), and that must not stop the other
            // gauges. Unknown shows as NaN, never as a reassuring 0.
            match store.clock_offset_ms().await {
                Ok(Some(ms)) => self.clock_offset.set(ms as f64 / 1000.0),
                Ok(None) => {}
                Err(_) => self.clock_offset.set(f64::NAN),
            }
            // The store's statistics carry the delivery counts: one read.
            let stats = store.stats().await?;
            for (state, n) in stats.deliveries {
                self.deliveries.with_label_values(&[state.as_str()]).set(n as i64);
            }
            let oldest = store.oldest_open().await?;
            let age = oldest.map_or(0, |created| now_millis().saturating_sub(created));
            self.oldest_open_age.set(age as f64 / 1000.0);
            self.store_bytes.set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
            self.quarantine_items.set(i64::try_from(stats.quarantine.items).unwrap_or(i64::MAX));
            self.quarantine_bytes.set(i64::try_from(stats.quarantine.bytes).unwrap_or(i64::MAX));
            let age = stats.oldest_event_at.map_or(0, |at| now_millis().saturating_sub(at));
            self.store_oldest_event_age.set(age as f64 / 1000.0);
            Ok::<_, crate::store::StoreError>(())
        };
        match tokio::time::timeout(STORE_TIMEOUT, read).await {
            // Readiness is the write check alone: a slow read leaves the
            // gauges stale, not the store "not ready".
            Ok(Ok(())) => *refreshed = Some(Instant::now()),
            Ok(Err(e)) => tracing::warn!(error = %Chain(&e), "metrics: could not read delivery gauges from the store"),
            Err(_) => tracing::warn!("metrics: the store did not answer in time; delivery gauges are stale"),
        }
    }
}
