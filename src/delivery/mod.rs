//! Delivery: every admitted event to every matching endpoint, signed per
//! Standard Webhooks, with retries, dead letters and crash recovery.
//!
//! Each endpoint has one claim loop. It claims only as many due deliveries
//! as the endpoint has free `max_in_flight` slots (and rate-limit cells), so
//! a slow endpoint fills its own slots and never holds up the others. Each
//! claimed delivery runs as a task holding one slot for its HTTP exchange;
//! recording the outcome happens after the slot is freed, and at most
//! `2 × max_in_flight` tasks exist per endpoint. Ingress wakes an endpoint's loop right after admitting a
//! delivery for it; a short poll catches retries coming due and claims
//! abandoned by a crashed process (the visibility timeout).
//!
//! Nothing waits in memory for a retry: the retry time is written to the
//! store with the attempt, and the claim loop picks it up when due. On
//! shutdown the loops stop claiming, in-flight requests get the grace period
//! to finish, and the rest are released back to `pending` unattempted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, RateLimiter};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::{Config, DeliveryConfig, Endpoint, RateLimit};
use crate::http::Chain;
use crate::metrics::Metrics;
use crate::reload::Live;
use crate::retry::{self, Outcome};
use crate::shutdown::stopped;
use crate::store::{Attempt, AttemptResult, Claim, Lease, Next, SharedLimits, Store, now_millis};
use crate::wake::Wake;

mod request;
pub use request::parse_retry_after;
use request::send;
pub(crate) use request::signatures;

/// How often an idle endpoint looks for retries that came due.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// Most deliveries one claim takes.
const CLAIM_BATCH: usize = 256;
/// Bytes of a response body kept with the attempt.
const EXCERPT_BYTES: usize = 512;
/// At shutdown, how long interrupted deliveries get to release their claims.
const SHUTDOWN_RELEASE: Duration = Duration::from_secs(5);
/// Pause after the store failed a claim, before trying again.
const STORE_BACKOFF: Duration = Duration::from_secs(1);

/// Shared by all deliveries.
struct Shared {
    store: Arc<dyn Store>,
    client: reqwest::Client,
    schedule: DeliveryConfig,
    user_agent: String,
    metrics: Arc<Metrics>,
}

struct EndpointRunner {
    endpoint: Endpoint,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    slots: Arc<Semaphore>,
    /// The store holds `max_in_flight` across relays with a lease per
    /// delivery: `Some` of the leases whose request is over, for the next
    /// claim to give back before it counts (or it would find this relay's
    /// own finished requests still holding the slots it has free).
    returned: Option<std::sync::Mutex<Vec<Lease>>>,
}

impl EndpointRunner {
    /// The limits a store shared by several relays holds across them; this
    /// relay's semaphore and rate limiter hold its own share.
    fn shared_limits(&self) -> SharedLimits {
        let ep = &self.endpoint;
        SharedLimits {
            max_in_flight: ep.max_in_flight,
            rate: ep.rate_limit.map(|r| (r.per_second.get(), r.burst.get())),
        }
    }

    /// Notes that the request of `d`'s claim is over.
    fn returned_lease(&self, d: &crate::store::Delivery) {
        if let Some(returned) = &self.returned {
            let lease = Lease { delivery_id: d.id.clone(), claim_token: d.claim_token };
            returned.lock().unwrap_or_else(|e| e.into_inner()).push(lease);
        }
    }

    fn take_returned(&self) -> Vec<Lease> {
        self.returned
            .as_ref()
            .map(|r| std::mem::take(&mut *r.lock().unwrap_or_else(|e| e.into_inner())))
            .unwrap_or_default()
    }

    /// Leases a failed claim did not give back, for the next one.
    fn put_back(&self, leases: Vec<Lease>) {
        if let Some(returned) = &self.returned {
            returned.lock().unwrap_or_else(|e| e.into_inner()).extend(leases);
        }
    }
}

/// The outgoing HTTP client of every delivery. Built before the relay
/// listens, so that a relay that could never deliver does not start
/// answering providers.
pub struct Sender {
    client: reqwest::Client,
}

impl Sender {
    pub fn new(config: &Config) -> Result<Sender, reqwest::Error> {
        let idle = config.endpoints.iter().map(|e| e.max_in_flight).max().unwrap_or(1);
        let client = crate::http::client_builder()
            .pool_max_idle_per_host(idle)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Sender { client })
    }
}

/// Runs the claim loops of every endpoint until `stop`, then drains within
/// `grace`. Returns early, naming the endpoint, if a loop ends on its own
/// (a panic): the relay must not go on accepting what nothing delivers.
///
/// A reload ([`Live`]) restarts the loop of each endpoint whose settings
/// changed (all of them when `[delivery]` changed) once its requests in
/// flight have ended, so `max_in_flight` holds across the change; starts
/// added endpoints; and stops removed ones, whose waiting deliveries are
/// then orphaned as at a start without them.
pub(crate) async fn run(
    live: Arc<Live>,
    store: Arc<dyn Store>,
    sender: Sender,
    wake: Arc<Wake>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut changes = live.subscribe();
    let config = changes.borrow_and_update().clone();
    let client = sender.client;
    let user_agent = format!("ipn-relay/{}", env!("CARGO_PKG_VERSION"));
    let shared_for = |config: &Config| {
        Arc::new(Shared {
            store: store.clone(),
            client: client.clone(),
            schedule: config.delivery.clone(),
            user_agent: user_agent.clone(),
            metrics: metrics.clone(),
        })
    };
    let mut loops = Loops {
        shared: shared_for(&config),
        grace: config.server.shutdown_grace,
        wake,
        set: JoinSet::new(),
        running: HashMap::new(),
        retiring: HashMap::new(),
        waiting: HashMap::new(),
        limiters: HashMap::new(),
    };
    for ep in &config.endpoints {
        loops.start(ep.clone());
    }
    let mut global = stop.clone();
    loop {
        tokio::select! {
            Some(ended) = loops.set.join_next_with_id(), if !loops.set.is_empty() => {
                let (id, why) = match ended {
                    Ok((id, ())) => (id, "ended".to_owned()),
                    Err(e) => (e.id(), if e.is_panic() { "panicked".to_owned() } else { e.to_string() }),
                };
                if let Some(name) = loops.retiring.remove(&id) {
                    if why != "ended" {
                        tracing::error!(endpoint = %name, why = %why, "the delivery loop a reload stopped ended abnormally; its replacement starts");
                    }
                    match loops.waiting.remove(&name) {
                        Some(ep) => loops.start(ep),
                        // Removed: what waits for it is orphaned, said loudly.
                        None => {
                            let names: Vec<String> = live.current().endpoints.iter().map(|e| e.name.clone()).collect();
                            crate::reload::reconcile(store.as_ref(), &names, true).await;
                            // Once more after any admission still under way
                            // with the old endpoints has ended.
                            let (store, live) = (store.clone(), live.clone());
                            tokio::spawn(async move {
                                tokio::time::sleep(live.current().server.admission_timeout + Duration::from_secs(1)).await;
                                let names: Vec<String> =
                                    live.current().endpoints.iter().map(|e| e.name.clone()).collect();
                                crate::reload::reconcile(store.as_ref(), &names, true).await;
                            });
                        }
                    }
                    continue;
                }
                if *stop.borrow() {
                    continue;
                }
                let endpoint = loops.running.iter().find(|(_, r)| r.id == id).map_or("?", |(n, _)| n.as_str());
                return Err(format!("the delivery loop of endpoint {endpoint} {why}"));
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    continue;
                }
                let config = changes.borrow_and_update().clone();
                if config.delivery != loops.shared.schedule {
                    loops.shared = shared_for(&config);
                    loops.reconfigure(&config, true);
                } else {
                    loops.reconfigure(&config, false);
                }
                // Added endpoints take back their orphaned deliveries now.
                let names: Vec<String> = config.endpoints.iter().map(|e| e.name.clone()).collect();
                crate::reload::reconcile(store.as_ref(), &names, false).await;
            }
            _ = stopped(&mut global) => {
                for r in loops.running.values() {
                    let _ = r.stop.send(true);
                }
                while loops.set.join_next().await.is_some() {}
                return Ok(());
            }
        }
    }
}

/// The claim loops, by endpoint.
struct Loops {
    shared: Arc<Shared>,
    grace: Duration,
    wake: Arc<Wake>,
    set: JoinSet<()>,
    running: HashMap<String, RunningLoop>,
    /// Loops told to stop by a reload, by task.
    retiring: HashMap<tokio::task::Id, String>,
    /// Endpoints to start once their retiring loop has ended.
    waiting: HashMap<String, Endpoint>,
    /// Each endpoint's rate limiter, kept across a restart of its loop
    /// while its `rate_limit` stays the same, so a reload grants no burst.
    limiters: HashMap<String, (RateLimit, Arc<DefaultDirectRateLimiter>)>,
}

struct RunningLoop {
    endpoint: Endpoint,
    stop: watch::Sender<bool>,
    id: tokio::task::Id,
    /// How long the loop lets its requests in flight finish once stopped:
    /// `shutdown_grace`, or for a reload the endpoint's whole timeout, so a
    /// reload never cuts a request short (to be sent again).
    grace: Arc<std::sync::Mutex<Duration>>,
}

impl Loops {
    fn start(&mut self, ep: Endpoint) {
        let limiter = ep.rate_limit.map(|r| match self.limiters.get(&ep.name) {
            Some((kept, l)) if *kept == r => l.clone(),
            _ => Arc::new(RateLimiter::direct(r.quota())),
        });
        match (ep.rate_limit, &limiter) {
            (Some(r), Some(l)) => drop(self.limiters.insert(ep.name.clone(), (r, l.clone()))),
            _ => drop(self.limiters.remove(&ep.name)),
        }
        let runner = Arc::new(EndpointRunner {
            limiter,
            slots: Arc::new(Semaphore::new(ep.max_in_flight)),
            returned: self.shared.store.shares_limits().then(Default::default),
            endpoint: ep.clone(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let notifier = self.wake.notifier(&ep.name);
        let grace = Arc::new(std::sync::Mutex::new(self.grace));
        let handle = self.set.spawn(endpoint_loop(runner, self.shared.clone(), notifier, stop_rx, grace.clone()));
        self.running.insert(ep.name.clone(), RunningLoop { endpoint: ep, stop, id: handle.id(), grace });
    }

    /// Stops the loops that `config` changes or drops and starts the new
    /// ones; `all` restarts every loop (the delivery settings changed).
    fn reconfigure(&mut self, config: &Config, all: bool) {
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            let wanted = config.endpoints.iter().find(|e| e.name == name);
            if wanted.is_some_and(|ep| !all && *ep == self.running[&name].endpoint) {
                continue;
            }
            let r = self.running.remove(&name).expect("listed above");
            let whole = r.endpoint.timeout + Duration::from_secs(1);
            let mut grace = r.grace.lock().unwrap_or_else(|e| e.into_inner());
            *grace = (*grace).max(whole);
            drop(grace);
            let _ = r.stop.send(true);
            self.retiring.insert(r.id, name.clone());
            match wanted {
                Some(ep) => drop(self.waiting.insert(name, ep.clone())),
                None => {
                    tracing::info!(endpoint = %name, "endpoint removed by a reload; its loop stops once its requests end")
                }
            }
        }
        // Changed again before its old loop ended: start the newest.
        self.waiting.retain(|name, _| config.endpoints.iter().any(|e| e.name == *name));
        for ep in &config.endpoints {
            let retiring = self.retiring.values().any(|n| *n == ep.name);
            if retiring {
                self.waiting.insert(ep.name.clone(), ep.clone());
            } else if !self.running.contains_key(&ep.name) {
                tracing::info!(endpoint = %ep.name, "endpoint added by a reload");
                self.start(ep.clone());
            }
        }
    }
}

async fn endpoint_loop(
    runner: Arc<EndpointRunner>,
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    grace: Arc<std::sync::Mutex<Duration>>,
) {
    let name = runner.endpoint.name.clone();
    let visibility_ms = shared.schedule.visibility_timeout.as_millis() as u64;
    // In-flight deliveries; `abort` tells them to give their claim back.
    let (abort_tx, abort_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    // Tasks recording their attempt no longer hold a slot; this caps them.
    let max_tasks = 2 * runner.endpoint.max_in_flight;
    'claiming: loop {
        while tasks.try_join_next().is_some() {}
        while tasks.len() >= max_tasks {
            tokio::select! {
                _ = tasks.join_next() => {}
                _ = stopped(&mut stop) => break 'claiming,
            }
        }
        // Wait for a free slot before claiming anything.
        let first = tokio::select! {
            slot = runner.slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = stopped(&mut stop) => break,
        };
        let mut room = (1 + runner.slots.available_permits()).min(CLAIM_BATCH).min(max_tasks - tasks.len());
        // Take rate-limit cells before claiming, never while holding claims:
        // waiting with a claim in hand would spend its visibility timeout.
        if let Some(limiter) = &runner.limiter {
            tokio::select! {
                _ = limiter.until_ready() => {}
                _ = stopped(&mut stop) => break,
            }
            let mut cells = 1;
            while cells < room && limiter.check().is_ok() {
                cells += 1;
            }
            room = cells;
        }
        let returned = runner.take_returned();
        let claims = match shared
            .store
            .claim_due_within(&name, now_millis(), room, visibility_ms, runner.shared_limits(), &returned)
            .await
        {
            Ok(c) => {
                shared.metrics.polled(&name);
                c
            }
            Err(e) => {
                // The leases go with the next claim, or their records.
                runner.put_back(returned);
                tracing::warn!(endpoint = %name, error = %Chain(&e), "claiming deliveries failed; retrying shortly");
                drop(first);
                tokio::select! {
                    _ = tokio::time::sleep(STORE_BACKOFF) => {}
                    _ = stopped(&mut stop) => break,
                }
                continue;
            }
        };
        if claims.is_empty() {
            drop(first);
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(POLL_EVERY) => {}
                _ = stopped(&mut stop) => break,
            }
            continue;
        }
        let mut slot = Some(first);
        let mut claims = claims.into_iter();
        while let Some(claim) = claims.next() {
            // Only this loop takes slots, so the room counted above is there.
            let permit = match slot.take() {
                Some(p) => p,
                None => match runner.slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => {
                        for c in std::iter::once(claim).chain(claims.by_ref()) {
                            release(&shared, &c).await;
                        }
                        break 'claiming;
                    }
                },
            };
            let d = &claim.delivery;
            let span = tracing::info_span!(
                "delivery", event_id = %d.event_id, delivery_id = %d.id, endpoint = %name, attempt = d.attempts + 1
            );
            tasks.spawn(deliver(runner.clone(), shared.clone(), claim, permit, abort_rx.clone()).instrument(span));
        }
    }
    // Shutdown: let in-flight requests finish within the grace period, then
    // tell the rest to release their claims.
    if !tasks.is_empty() {
        tracing::info!(endpoint = %name, in_flight = tasks.len(), "waiting for in-flight deliveries");
    }
    let grace = *grace.lock().unwrap_or_else(|e| e.into_inner());
    let drained = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        let _ = abort_tx.send(true);
        // Releasing needs the store; if it hangs too, stop waiting. The
        // records are pending on disk either way.
        let released = tokio::time::timeout(SHUTDOWN_RELEASE, async { while tasks.join_next().await.is_some() {} });
        if released.await.is_err() {
            tracing::warn!(endpoint = %name, "store not answering at shutdown; leaving claims to expire");
            tasks.abort_all();
        }
    }
}

async fn release(shared: &Shared, claim: &Claim) {
    let d = &claim.delivery;
    match shared.store.release(&d.id, d.claim_token, now_millis()).await {
        Ok(_) => tracing::info!(delivery_id = %d.id, "claim released at shutdown"),
        // The visibility timeout returns it anyway.
        Err(e) => {
            tracing::warn!(delivery_id = %d.id, error = %Chain(&e), "could not release claim; it returns after the visibility timeout")
        }
    }
}

async fn deliver(
    runner: Arc<EndpointRunner>,
    shared: Arc<Shared>,
    claim: Claim,
    slot: OwnedSemaphorePermit,
    mut abort: watch::Receiver<bool>,
) {
    let d = &claim.delivery;
    let ep = &runner.endpoint;
    let number = d.attempts + 1;
    let started_at = now_millis();
    // The request must end while the claim is still ours, or a second claim
    // could send the same delivery at the same time.
    let deadline = d.next_attempt_at.unwrap_or(0);
    if started_at.saturating_add(ep.timeout.as_millis() as u64) >= deadline {
        tracing::warn!("claim too close to its visibility timeout to send; releasing");
        release(&shared, &claim).await;
        return;
    }
    let timestamp = (started_at / 1000) as i64;
    let request = shared
        .client
        .post(ep.url.expose().to_string())
        .timeout(ep.timeout)
        .header("content-type", "application/json")
        .header("user-agent", &shared.user_agent)
        .header("webhook-id", d.event_id.as_str())
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signatures(ep, d.event_id.as_str(), timestamp, &claim.event_json))
        .header("x-ipn-relay-attempt", number.to_string())
        .header("x-ipn-relay-delivery-id", d.id.as_str())
        .body(claim.event_json.clone());
    let t0 = Instant::now();
    let sending = shared.metrics.activity.sending(&ep.name);
    let sent = tokio::select! {
        r = send(request) => r,
        _ = stopped(&mut abort) => {
            release(&shared, &claim).await;
            return;
        }
    };
    let elapsed = t0.elapsed();
    drop(sending);
    let duration_ms = elapsed.as_millis() as u64;
    // `max_in_flight` bounds open requests: the slot is free as soon as the
    // exchange is over, while the attempt is being recorded. On a store that
    // shares the limit, the next claim gives the lease back first.
    runner.returned_lease(d);
    drop(slot);
    let (result, retry_after, excerpt) = sent;
    let outcome = match &result {
        AttemptResult::Status { code } if (200..300).contains(code) => Outcome::Delivered,
        _ => Outcome::Failed { retry_after },
    };
    let next = retry::next(&shared.schedule, d.attempts_in_budget() + 1, outcome, now_millis(), rand::random());
    shared.metrics.delivery(&ep.name, next, elapsed);
    let error = match outcome {
        Outcome::Delivered => None,
        Outcome::Failed { .. } => Some(result.last_error().unwrap_or_default()),
    };
    shared.metrics.activity.attempted(&ep.name, error);
    match (&result, next) {
        // Successes are for metrics to count; the admission log line is the
        // audit trail, and failures are logged below.
        (_, Next::Delivered) => {
            tracing::debug!(duration_ms, "delivered")
        }
        (r, Next::RetryAt(at)) => {
            tracing::info!(
                duration_ms,
                error = r.last_error().unwrap_or_default(),
                retry_in_ms = at.saturating_sub(now_millis()),
                "delivery failed; retry scheduled"
            )
        }
        (r, Next::Dead) => {
            tracing::warn!(
                duration_ms,
                error = r.last_error().unwrap_or_default(),
                "delivery failed for the last time; dead"
            )
        }
    }
    let attempt = Attempt { number, started_at, duration_ms, result, response_excerpt: excerpt };
    finish(&shared, &claim, attempt, next).await;
}

/// Records the attempt. If the store is briefly unreachable, tries a few
/// times while the claim lasts; if it stays down, the claim expires and the
/// delivery is attempted again (at least once, with the same webhook-id).
async fn finish(shared: &Shared, claim: &Claim, attempt: Attempt, next: Next) {
    let d = &claim.delivery;
    let deadline = d.next_attempt_at.unwrap_or(0);
    for wait_ms in [0u64, 100, 500, 2000] {
        if now_millis().saturating_add(wait_ms) >= deadline {
            tracing::warn!(delivery_id = %d.id, "claim expired before the attempt could be recorded; it will be sent again");
            return;
        }
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        match shared.store.finish(&d.id, d.claim_token, attempt.clone(), next).await {
            Ok(true) => return,
            Ok(false) => {
                tracing::warn!(delivery_id = %d.id, "claim was taken over before the attempt was recorded");
                return;
            }
            Err(e) => tracing::warn!(delivery_id = %d.id, error = %Chain(&e), "recording the attempt failed"),
        }
    }
}
