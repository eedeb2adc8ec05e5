//! The quarantine: callbacks refused as `invalid_signature` or
//! `stale_timestamp` are kept for `[quarantine] ttl`, with a diagnosis,
//! and admitted once an operator fixes the cause and reverifies them
//! (docs/quarantine.md; the records are `store::quarantine`).
//!
//! **A flood cannot buy anything with it.** Ingress hands a refused
//! callback over with [`Quarantine::offer`], which never waits: past a
//! client's `max_per_client_per_minute`, or when the queue to the writer
//! task is full, the callback is not kept and counted as dropped. The task
//! ([`run`]) diagnoses what it takes off the queue on the blocking pool and
//! keeps it in batches; the store keeps an item only while the total stays
//! within `max_bytes`, and past it drops new ones (what is kept stays, so a
//! flood cannot push out the genuine callbacks kept before it). On the
//! embedded store these batches commit without an fsync of their own.
//! Nothing here changes what the provider is answered.

mod reverify;

pub(crate) use reverify::{Outcome, Reverified, reverify};

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderName, HeaderValue};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

use crate::config::{Config, QuarantineConfig};
use crate::http::Chain;
use crate::metrics::{Dropped, Metrics};
use crate::providers::diagnose::{SIGNATURE_HEADERS, diagnose};
use crate::shutdown::stopped;
use crate::store::quarantine::{Kept, QuarantineItem, Quarantined, Refusal};
use crate::store::{Millis, Store};

type KeyedLimiter =
    RateLimiter<IpAddr, governor::state::keyed::DefaultKeyedStateStore<IpAddr>, governor::clock::DefaultClock>;

/// Refused callbacks waiting for the writer task at most, and their bodies'
/// bytes at most: what a flood holds in memory; past either it is dropped.
const QUEUE: usize = 256;
const QUEUE_BYTES: usize = 16 * 1024 * 1024;
/// Items one store call keeps at most, and the pause after each call
/// that wrote: the writer keeps at most about 1,500 callbacks a second, so
/// filling the quarantine during a flood never competes with admissions
/// for the store's writes (on Redis with `appendfsync always`, batches of
/// 64 back to back doubled admissions' p99 while it filled; BENCHMARKS.md,
/// "Quarantine"). Genuine refusals arrive at the providers' pace, far below.
const BATCH: usize = 32;
const PAUSE: Duration = Duration::from_millis(20);
/// How often a warning about dropped callbacks is repeated at most.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// A refused callback on its way to the store.
struct Pending {
    id: String,
    source: String,
    reason: Refusal,
    received_at: OffsetDateTime,
    client: IpAddr,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Pending {
    fn diagnosed(self, config: &Config) -> Option<QuarantineItem> {
        // The source went in a reload meanwhile: nothing to verify against.
        let source = config.sources.iter().find(|s| s.name == self.source)?;
        let headers = header_map(&self.headers);
        let diagnosis = diagnose(source, &config.sources, self.reason, &headers, &self.body, self.received_at);
        let size = Quarantined::size_of(&self.headers, &self.body);
        let digest = Quarantined::digest_of(&self.source, &self.headers, &self.body);
        Some(QuarantineItem {
            meta: Quarantined {
                id: self.id,
                source: self.source,
                reason: self.reason,
                received_at: millis(self.received_at),
                client: self.client.to_string(),
                headers: self.headers,
                size,
                digest,
                diagnosis,
            },
            body: self.body.to_vec(),
        })
    }
}

fn millis(t: OffsetDateTime) -> Millis {
    (t.unix_timestamp_nanos() / 1_000_000) as Millis
}

/// The kept headers as the verifiers read them.
pub(crate) fn header_map(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name.as_str()), HeaderValue::from_str(value)) {
            map.insert(name, value);
        }
    }
    map
}

/// The quarantine's front door, shared by ingress.
pub(crate) struct Quarantine {
    config: RwLock<(QuarantineConfig, Limiters)>,
    queue: mpsc::Sender<Pending>,
    /// Body bytes in the queue.
    queued: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

/// Clients in a source's `allow_ips` (the provider's own addresses) may
/// have this many times `max_per_client_per_minute` kept: a busy merchant's
/// provider sends more than 60 callbacks a minute from one address.
const LISTED_FACTOR: u32 = 10;

/// Per-client counts: for other clients, and for allow-listed ones.
#[derive(Clone)]
struct Limiters {
    others: Arc<KeyedLimiter>,
    listed: Arc<KeyedLimiter>,
}

fn per_client(q: &QuarantineConfig) -> Limiters {
    let n = q.max_per_client_per_minute;
    let listed = n.saturating_mul(std::num::NonZeroU32::new(LISTED_FACTOR).expect("not zero"));
    Limiters {
        others: Arc::new(RateLimiter::keyed(Quota::per_minute(n))),
        listed: Arc::new(RateLimiter::keyed(Quota::per_minute(listed))),
    }
}

impl Quarantine {
    /// The front door, and the receiving end of its queue for [`run`].
    pub(crate) fn new(config: &Config, metrics: Arc<Metrics>) -> (Arc<Quarantine>, Queue) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let q = config.quarantine;
        let queued = Arc::new(AtomicUsize::new(0));
        let quarantine =
            Quarantine { config: RwLock::new((q, per_client(&q))), queue: tx, queued: queued.clone(), metrics };
        (Arc::new(quarantine), Queue(rx, queued))
    }

    /// Takes in a reloaded configuration; clients keep their count unless
    /// the per-client limit changed.
    pub(crate) fn apply(&self, config: &Config) {
        let mut current = self.config.write().unwrap_or_else(|e| e.into_inner());
        if current.0.max_per_client_per_minute != config.quarantine.max_per_client_per_minute {
            current.1 = per_client(&config.quarantine);
        }
        current.0 = config.quarantine;
    }

    /// Forgets clients that have been quiet (housekeeping).
    pub(crate) fn forget_idle_clients(&self) {
        let limiters = self.config.read().unwrap_or_else(|e| e.into_inner()).1.clone();
        for limiter in [limiters.others, limiters.listed] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Hands a refused callback to the writer task, never waiting. Returns
    /// the id it will be kept under, or `None` if it is not kept. A client
    /// in the source's `allow_ips` (`allow_listed`) is the provider itself,
    /// and may have [`LISTED_FACTOR`] times the per-client limit kept.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn offer(
        &self,
        source: &str,
        allow_listed: bool,
        reason: Refusal,
        client: IpAddr,
        headers: &HeaderMap,
        body: Bytes,
        received_at: OffsetDateTime,
    ) -> Option<String> {
        let (config, limiters) = self.config.read().unwrap_or_else(|e| e.into_inner()).clone();
        let limiter = if allow_listed { limiters.listed } else { limiters.others };
        if !config.enabled {
            return None;
        }
        if limiter.check_key(&crate::http::rate_key(client)).is_err() {
            self.metrics.quarantine_dropped(Dropped::ClientRate, 1);
            return None;
        }
        let kept = SIGNATURE_HEADERS
            .iter()
            .filter_map(|name| {
                let value = headers.get(*name)?;
                Some(((*name).to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            })
            .collect();
        let id = Quarantined::new_id(millis(received_at));
        let len = body.len();
        let busy = || {
            self.metrics.quarantine_dropped(Dropped::Busy, 1);
            None
        };
        if self.queued.fetch_add(len, Ordering::Relaxed) + len > QUEUE_BYTES {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return busy();
        }
        let pending =
            Pending { id: id.clone(), source: source.to_owned(), reason, received_at, client, headers: kept, body };
        match self.queue.try_send(pending) {
            Ok(()) => Some(id),
            Err(_) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                busy()
            }
        }
    }
}

/// The receiving end of the quarantine's queue, and its byte count.
pub(crate) struct Queue(mpsc::Receiver<Pending>, Arc<AtomicUsize>);

/// The writer task: diagnoses and keeps what ingress offered, until `stop`.
pub(crate) async fn run(
    Queue(mut queue, queued): Queue,
    store: Arc<dyn Store>,
    config: impl Fn() -> Arc<Config> + Send,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut warned: Option<Instant> = None;
    // Set when the store last dropped items at the cap: until its size
    // says there is room again, a batch is dropped without diagnosing it,
    // so a flood against a full quarantine costs no HMACs.
    let mut full = false;
    loop {
        let first = tokio::select! {
            Some(first) = queue.recv() => first,
            _ = stopped(&mut stop) => return Ok(()),
        };
        let mut batch = vec![first];
        while batch.len() < BATCH
            && let Ok(more) = queue.try_recv()
        {
            batch.push(more);
        }
        queued.fetch_sub(batch.iter().map(|p| p.body.len()).sum(), Ordering::Relaxed);
        let config = config();
        let max_bytes = config.quarantine.max_bytes;
        if full {
            let smallest = batch.iter().map(|p| Quarantined::size_of(&p.headers, &p.body)).min().unwrap_or(0);
            match store.quarantine_size().await {
                Ok(size) if size.bytes.saturating_add(smallest) > max_bytes => {
                    metrics.quarantine_dropped(Dropped::Full, batch.len());
                    continue;
                }
                _ => full = false,
            }
        }
        // HMACs over every configured secret: off the async workers.
        let items = tokio::task::spawn_blocking(move || {
            batch.into_iter().filter_map(|p| p.diagnosed(&config)).collect::<Vec<_>>()
        })
        .await
        .map_err(|e| format!("diagnosing refused callbacks failed: {e}"))?;
        // One store call per source and reason, so each is counted under
        // its own labels.
        let mut groups: Vec<((String, Refusal), Vec<QuarantineItem>)> = Vec::new();
        for item in items {
            let key = (item.meta.source.clone(), item.meta.reason);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, g)) => g.push(item),
                None => groups.push((key, vec![item])),
            }
        }
        let wrote = !groups.is_empty();
        for ((source, reason), group) in groups {
            let n = group.len();
            let (done, dropped, error) = match store.quarantine(group, max_bytes).await {
                Ok(done) => (done, Dropped::Full, None),
                Err(e) => (Kept::default(), Dropped::StoreError, Some(e)),
            };
            metrics.quarantined(&source, reason, done.kept);
            if done.duplicates > 0 {
                metrics.quarantine_dropped(Dropped::Duplicate, done.duplicates);
            }
            let kept = done.kept + done.duplicates;
            full |= error.is_none() && kept < n;
            if kept < n {
                metrics.quarantine_dropped(dropped, n - kept);
                if warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    warned = Some(Instant::now());
                    match error {
                        Some(e) => {
                            tracing::warn!(source = %source, error = %Chain(&e), "refused callbacks could not be quarantined")
                        }
                        None => tracing::warn!(
                            source = %source,
                            max_bytes,
                            "the quarantine is full: new refused callbacks are not kept until old ones expire or are reverified (ipn_relay_quarantine_dropped_total)"
                        ),
                    }
                }
            }
        }
        if wrote {
            tokio::select! {
                _ = tokio::time::sleep(PAUSE) => {}
                _ = stopped(&mut stop) => return Ok(()),
            }
        }
    }
}
