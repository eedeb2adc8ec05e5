//! Relays sharing one Redis share each endpoint's limits and one clock:
//! `max_in_flight` and `rate_limit` hold over all of them, slots a killed
//! relay held come back after their lease, and a relay whose clock is
//! minutes off neither takes a live claim nor delays what it admits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ipn_relay::store::{Lease, Next, SharedLimits, Store};

use crate::common::*;
use crate::redis_relays::{redis_config, repeats_and_overlaps};
use crate::store_conformance::{attempt, deliveries, event};

const TTL: u64 = 86_400_000;

/// Two stores on one prefix, as two relays would have.
async fn two_stores() -> (Arc<dyn Store>, Arc<dyn Store>, RedisServer) {
    let (a, server) = crate::store_conformance::redis().await;
    let b = ipn_relay::store::redis::RedisStore::connect(&server.url, "conformance").await.unwrap();
    (a, Arc::new(b), server)
}

fn lease(d: &ipn_relay::store::Delivery, claim_token: u64) -> Lease {
    Lease { delivery_id: d.id.clone(), claim_token }
}

async fn admit_n(s: &dyn Store, n: usize, at: u64) {
    for i in 0..n {
        let id = format!("evt_{at}_{i}");
        s.admit(event(&id, "np", "deposit.confirmed", at), deliveries(at, &["be"]), TTL).await.unwrap();
    }
}

#[tokio::test]
async fn shared_slots_hold_across_stores_and_come_back_at_finish_release_or_lease_end() {
    let (a, b, _server) = two_stores().await;
    admit_n(a.as_ref(), 10, 1000).await;
    let four = SharedLimits { max_in_flight: 4, rate: None };
    let held = a.claim_due_within("be", 1000, 3, 60_000, four, &[]).await.unwrap();
    assert_eq!(held.len(), 3);
    // The other relay gets only what is left of the four.
    let more = b.claim_due_within("be", 1000, 10, 60_000, four, &[]).await.unwrap();
    assert_eq!(more.len(), 1, "one slot was left");
    assert!(b.claim_due_within("be", 1000, 10, 60_000, four, &[]).await.unwrap().is_empty(), "all four held");
    // A finish gives its slot back, and so does a release.
    let d = &held[0].delivery;
    assert!(a.finish(&d.id, d.claim_token, attempt(1001, 200), Next::Delivered).await.unwrap());
    let d = &held[1].delivery;
    assert!(a.release(&d.id, d.claim_token, 1001).await.unwrap());
    let after = b.claim_due_within("be", 1002, 10, 60_000, four, &[]).await.unwrap();
    assert_eq!(after.len(), 2, "two slots came back");
    // The lease goes back with the relay's next claim once the request is
    // over, before the attempt is recorded; a lease naming another claim
    // frees nothing.
    let d = &held[2].delivery;
    let stale = [lease(d, d.claim_token + 1)];
    assert!(
        a.claim_due_within("be", 1003, 10, 60_000, four, &stale).await.unwrap().is_empty(),
        "a stale return freed a slot"
    );
    let early = a.claim_due_within("be", 1003, 10, 60_000, four, &[lease(d, d.claim_token)]).await.unwrap();
    assert_eq!(early.len(), 1, "the returned lease's slot came back");
    // Recording the attempt afterwards frees nothing more.
    assert!(a.finish(&d.id, d.claim_token, attempt(1004, 200), Next::Delivered).await.unwrap());
    assert!(b.claim_due_within("be", 1004, 10, 60_000, four, &[]).await.unwrap().is_empty(), "all four held again");
    // A holder that dies keeps its slots until its claims' deadline: short
    // claims here, then the next claim at a later "now" finds them free.
    let (c, server2) = crate::store_conformance::redis().await;
    admit_n(c.as_ref(), 6, 1000).await;
    let dying = c.claim_due_within("be", 1000, 10, 500, four, &[]).await.unwrap();
    assert_eq!(dying.len(), 4);
    assert!(c.claim_due_within("be", 1499, 10, 500, four, &[]).await.unwrap().is_empty(), "leases still live");
    // At the deadline the leases lapse: the expired claims and the two
    // waiting deliveries are due, four of them are taken.
    let taken = c.claim_due_within("be", 1500, 10, 500, four, &[]).await.unwrap();
    assert_eq!(taken.len(), 4, "the dead holder's slots came back after the lease");
    // The old holder's late return, for a delivery taken over, frees
    // nothing of the new claim's.
    let retaken = dying.iter().map(|c| &c.delivery).find(|d| taken.iter().any(|t| t.delivery.id == d.id));
    let old = retaken.expect("a taken-over delivery");
    let late = [lease(old, old.claim_token)];
    assert!(
        c.claim_due_within("be", 1501, 10, 500, four, &late).await.unwrap().is_empty(),
        "the new claim's slot was freed"
    );
    drop(server2);
}

#[tokio::test]
async fn a_shared_token_bucket_paces_claims_across_stores() {
    let (a, b, _server) = two_stores().await;
    admit_n(a.as_ref(), 20, 1000).await;
    // 2 a second, burst 3, no slot limit to speak of.
    let paced = SharedLimits { max_in_flight: 100, rate: Some((2, 3)) };
    assert_eq!(a.claim_due_within("be", 1000, 10, 60_000, paced, &[]).await.unwrap().len(), 3, "the burst");
    assert!(b.claim_due_within("be", 1000, 10, 60_000, paced, &[]).await.unwrap().is_empty(), "bucket empty");
    assert!(b.claim_due_within("be", 1400, 10, 60_000, paced, &[]).await.unwrap().is_empty(), "0.8 of a token");
    assert_eq!(b.claim_due_within("be", 1500, 10, 60_000, paced, &[]).await.unwrap().len(), 1, "one token after 0.5 s");
    // An idle second refills two, never past the burst.
    assert_eq!(a.claim_due_within("be", 2500, 10, 60_000, paced, &[]).await.unwrap().len(), 2);
    assert_eq!(a.claim_due_within("be", 60_000, 10, 60_000, paced, &[]).await.unwrap().len(), 3, "capped at the burst");
}

/// The most requests open at once, from arrival times at a receiver that
/// holds every request for `hold`.
fn most_open_at_once(received: &[Received], hold: Duration) -> usize {
    let mut at: Vec<Instant> = received.iter().map(|r| r.at).collect();
    at.sort();
    (0..at.len()).map(|i| at[..=i].iter().filter(|t| at[i].duration_since(**t) < hold).count()).max().unwrap_or(0)
}

/// A relay config for `redis_config` with the endpoint's `max_in_flight`.
fn with_max_in_flight(path: std::path::PathBuf, n: usize) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&path).unwrap().replace("max_in_flight = 32", &format!("max_in_flight = {n}"));
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_never_have_more_than_max_in_flight_open_at_one_endpoint() {
    let redis = RedisServer::start();
    let hold = Duration::from_millis(300);
    let rx = Receiver::start(move |_| Reply::Slow(hold)).await;
    let dir = tempfile::tempdir().unwrap();
    let relays: Vec<RelayProcess> = ["a", "b", "c"]
        .iter()
        .map(|n| spawn_relay(&with_max_in_flight(redis_config(dir.path(), n, &redis, &rx.url(), "30s"), 4)))
        .collect();
    let c = client();
    for i in 0..36u64 {
        let (status, v) = post_to(&c, relays[i as usize % 3].addr, payment_ipn(70_000 + i, "finished")).await.unwrap();
        assert_eq!(status, 200, "{v}");
    }
    assert!(eventually(Duration::from_secs(60), || rx.delivered_ids().len() == 36).await, "all delivered");
    let received = rx.received();
    let most = most_open_at_once(&received, hold);
    assert!(most <= 4, "{most} requests open at once, max_in_flight is 4");
    assert!(most >= 2, "the relays did send side by side ({most})");
    assert_eq!(repeats_and_overlaps(&received, hold), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relays_slots_come_back_after_their_lease() {
    let redis = RedisServer::start();
    // The first four requests hang (the relay holding them is killed), the
    // rest are answered at once.
    let count = std::sync::atomic::AtomicUsize::new(0);
    let rx = Receiver::start(move |_| {
        let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n < 4 { Reply::Slow(Duration::from_secs(60)) } else { Reply::Status(200) }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = |name| with_max_in_flight(redis_config(dir.path(), name, &redis, &rx.url(), "5s"), 4);
    let mut doomed = spawn_relay(&config("doomed"));
    let c = client();
    for i in 0..4u64 {
        assert_eq!(post_to(&c, doomed.addr, payment_ipn(80_000 + i, "finished")).await.unwrap().0, 200);
    }
    assert!(eventually(Duration::from_secs(10), || rx.received().len() == 4).await, "four requests open");
    let held_since = rx.received().iter().map(|r| r.at).max().unwrap();
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    let survivor = spawn_relay(&config("survivor"));
    for i in 4..8u64 {
        assert_eq!(post_to(&c, survivor.addr, payment_ipn(80_000 + i, "finished")).await.unwrap().0, 200);
    }
    assert!(eventually(Duration::from_secs(30), || rx.delivered_ids().len() == 8).await, "all eight delivered");
    let received = rx.received();
    let first_after = received[4..].iter().map(|r| r.at).min().unwrap();
    // Nothing more went out while the dead relay's four leases lived (its
    // claims' deadline: 5 s after they were taken).
    assert!(
        first_after.duration_since(held_since) >= Duration::from_secs(4),
        "the survivor sent {:?} after the dead relay's last request, inside its leases",
        first_after.duration_since(held_since)
    );
}

/// Sent by the relay whose log this is, by its debug "delivered" lines.
fn delivered_by(relay: &RelayProcess) -> usize {
    relay.log.lock().unwrap().iter().filter(|l| l.contains("\"delivered\"")).count()
}

const AHEAD: &[&str] = &["env", "FAKETIME_DONT_FAKE_MONOTONIC=1", "faketime", "-f", "+120s"];

/// One clock: a relay whose clock is two minutes ahead shares a Redis with
/// one whose clock is right, and never takes over a live claim of the
/// other (claims are decided on Redis's clock, `TIME`): every event, posted
/// to either, is sent once, and the skewed relay sends its share. Before,
/// each of 40 events went out twice at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_its_clock_minutes_ahead_takes_no_live_claim() {
    let redis = RedisServer::start();
    // Each request held a second (the endpoint timeout is 2 s): claims are
    // live for a while, with a visibility timeout of 5 s.
    let hold = Duration::from_secs(1);
    let rx = Receiver::start(move |_| Reply::Slow(hold)).await;
    let dir = tempfile::tempdir().unwrap();
    let filter = "info,ipn_relay::delivery=debug";
    let right = spawn_relay_logging(&redis_config(dir.path(), "right", &redis, &rx.url(), "5s"), filter);
    let ahead = spawn_relay_under(&redis_config(dir.path(), "ahead", &redis, &rx.url(), "5s"), filter, AHEAD);
    let c = client();
    for i in 0..40u64 {
        let relay = if i % 4 == 0 { &ahead } else { &right };
        let (status, v) = post_to(&c, relay.addr, payment_ipn(60_000 + i, "finished")).await.unwrap();
        assert_eq!(status, 200, "{v}");
    }
    assert!(eventually(Duration::from_secs(60), || rx.delivered_ids().len() == 40).await);
    // Longer than a visibility timeout past the last send: a takeover would show.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(repeats_and_overlaps(&rx.received(), hold), (0, 0), "deliveries sent more than once");
    let log = ahead.log.lock().unwrap().clone();
    assert!(log.iter().any(|l| l.contains("clock differs from the store")), "the skewed relay's clock is not ahead");
    assert!(
        !log.iter().any(|l| l.contains("too close to its visibility timeout")),
        "the skewed relay gave claims back"
    );
    let (mine, theirs) = (delivered_by(&ahead), delivered_by(&right));
    assert_eq!(mine + theirs, 40);
    assert!(mine >= 5, "the skewed relay sent {mine} of 40");
}

/// A relay alone with its clock two minutes ahead of Redis's, or behind:
/// what it admits is sent at once, and a failed attempt is retried after
/// its backoff, not two minutes late or early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_alone_with_its_clock_off_delivers_and_retries_on_time() {
    for offset in ["+120s", "-120s"] {
        let redis = RedisServer::start();
        // The first attempt of each event fails; the retry succeeds.
        let rx = Receiver::start(|n| if n == 0 { Reply::Status(500) } else { Reply::Status(200) }).await;
        let dir = tempfile::tempdir().unwrap();
        let path = redis_config(dir.path(), "off", &redis, &rx.url(), "5s");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("[delivery]\n", "[delivery]\ninitial_backoff = \"1s\"\nmax_attempts = 3\njitter = 0.0\n");
        std::fs::write(&path, text).unwrap();
        let wrapper = ["env", "FAKETIME_DONT_FAKE_MONOTONIC=1", "faketime", "-f", offset];
        let relay = spawn_relay_under(&path, "info", &wrapper);
        let c = client();
        let started = Instant::now();
        assert_eq!(post_to(&c, relay.addr, payment_ipn(90_001, "finished")).await.unwrap().0, 200);
        assert!(eventually(Duration::from_secs(20), || rx.received().len() == 2).await, "{offset}: not retried");
        let received = rx.received();
        let first = received[0].at.duration_since(started);
        let retry = received[1].at.duration_since(received[0].at);
        assert!(first < Duration::from_secs(2), "{offset}: first attempt after {first:?}");
        assert!(
            retry >= Duration::from_millis(900) && retry < Duration::from_secs(4),
            "{offset}: retried after {retry:?}"
        );
    }
}

/// A relay's own shared slots come back with its next claim once their
/// requests are over: a backlog drains at the endpoint's pace, not at
/// `max_in_flight` per 250 ms poll (as it does when the claim finds the
/// relay's own finished requests still holding the slots). 200 deliveries
/// at 4 in flight: at poll pace 12.5 s (seen, with the early return off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_at_the_endpoints_pace_not_the_polls() {
    let redis = RedisServer::start();
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = with_max_in_flight(redis_config(dir.path(), "backlog", &redis, &rx.url(), "30s"), 4);
    let store = ipn_relay::store::redis::RedisStore::connect(&redis.url, "relays").await.unwrap();
    let now = ipn_relay::store::now_millis();
    for i in 0..200 {
        let id = format!("evt_backlog_{i}");
        store.admit(event(&id, "np", "deposit.confirmed", now), deliveries(now, &["backend"]), TTL).await.unwrap();
    }
    let _relay = spawn_relay(&path);
    assert!(eventually(Duration::from_secs(60), || rx.delivered_ids().len() == 200).await, "not all delivered");
    let mut at: Vec<Instant> = rx.received().iter().map(|r| r.at).collect();
    at.sort();
    let took = at[at.len() - 1].duration_since(at[0]);
    assert!(took < Duration::from_secs(6), "200 deliveries at 4 in flight took {took:?}");
}
