//! Several relay processes sharing one Redis: a duplicate IPN that reaches
//! two of them at once is accepted once, every event is delivered once, and
//! when one relay dies mid-delivery the other finishes its claims after the
//! visibility timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A relay config on `redis` delivering to `receiver`.
pub(crate) fn redis_config(
    dir: &std::path::Path,
    name: &str,
    redis: &RedisServer,
    receiver: &str,
    visibility: &str,
) -> std::path::PathBuf {
    let store_path = dir.join(format!("{name}.redb"));
    let text = base_config(&store_path).replace(
        &format!("path = \"{}\"", store_path.display()),
        &format!("kind = \"redis\"\nurl = \"{}\"\nprefix = \"relays\"", redis.url),
    );
    let text = format!(
        "{text}\n[[endpoints]]\nname = \"backend\"\nurl = \"{receiver}\"\nsecret = \"{SECRET}\"\ntimeout = \"2s\"\nmax_in_flight = 32\n\n[delivery]\nvisibility_timeout = \"{visibility}\"\n\n[log]\nformat = \"json\"\n"
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Requests per webhook-id, and how many pairs of requests for one id were
/// open at the same moment.
pub(crate) fn repeats_and_overlaps(received: &[Received], hold: Duration) -> (usize, usize) {
    let mut per_id: HashMap<String, Vec<std::time::Instant>> = HashMap::new();
    for r in received {
        per_id.entry(r.webhook_id()).or_default().push(r.at);
    }
    let repeats = per_id.values().map(|v| v.len() - 1).sum();
    let overlaps = per_id
        .values()
        .map(|times| {
            let mut n = 0;
            for (i, a) in times.iter().enumerate() {
                for b in &times[i + 1..] {
                    if a.max(b).duration_since(*a.min(b)) < hold {
                        n += 1;
                    }
                }
            }
            n
        })
        .sum();
    (repeats, overlaps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_accept_each_ipn_once_and_deliver_it_once() {
    const N: u64 = 2000;
    let redis = RedisServer::start();
    let rx = Receiver::start(|_| Reply::Slow(Duration::from_millis(5))).await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = spawn_relay(&redis_config(dir.path(), "a", &redis, &rx.url(), "30s"));
    let mut b = spawn_relay(&redis_config(dir.path(), "b", &redis, &rx.url(), "30s"));
    let c = client();
    let outcomes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let senders: Vec<_> = (0..16u64)
        .map(|w| {
            let (c, outcomes, a, b) = (c.clone(), outcomes.clone(), a.addr, b.addr);
            tokio::spawn(async move {
                for i in (w..N).step_by(16) {
                    let body = payment_ipn(9_000_000 + i, "finished");
                    let (ra, rb) = tokio::join!(post_to(&c, a, body.clone()), post_to(&c, b, body));
                    outcomes.lock().unwrap().push((ra.unwrap(), rb.unwrap()));
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    let outcomes = outcomes.lock().unwrap().clone();
    let mut accepted = Vec::new();
    for ((sa, va), (sb, vb)) in &outcomes {
        assert_eq!((*sa, *sb), (200, 200));
        assert_eq!(va["id"], vb["id"], "both relays derive the same event id");
        let mut statuses = [va["status"].as_str().unwrap(), vb["status"].as_str().unwrap()];
        statuses.sort();
        assert_eq!(statuses, ["accepted", "duplicate"], "{va} {vb}");
        accepted.push(va["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(accepted.len() as u64, N);

    let all = || accepted.iter().all(|id| rx.delivered_ids().contains(id));
    assert!(eventually(Duration::from_secs(60), all).await, "delivered {} of {N}", rx.delivered_ids().len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (repeats, overlaps) = repeats_and_overlaps(&rx.received(), Duration::from_millis(5));
    eprintln!(
        "two relays: {N} IPNs posted to both, {N} accepted once; {} requests at the receiver, {repeats} repeats, {overlaps} overlapping",
        rx.received().len()
    );
    assert_eq!(overlaps, 0, "a delivery was in flight at both relays at once");
    assert_eq!(repeats, 0, "no crash, so no event is delivered twice");
    a.child.kill().unwrap();
    b.child.kill().unwrap();
    let _ = (a.child.wait(), b.child.wait());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_one_relay_dies_the_other_finishes_its_claims() {
    let redis = RedisServer::start();
    let rx = Receiver::start(|_| Reply::Slow(Duration::from_millis(300))).await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = spawn_relay(&redis_config(dir.path(), "a", &redis, &rx.url(), "3s"));
    let mut b = spawn_relay(&redis_config(dir.path(), "b", &redis, &rx.url(), "3s"));
    let c = client();
    let mut accepted = Vec::new();
    for i in 0..300u64 {
        let (status, v) = post_to(&c, a.addr, payment_ipn(8_000_000 + i, "finished")).await.unwrap();
        assert_eq!(status, 200);
        accepted.push(v["id"].as_str().unwrap().to_owned());
    }
    // Kill A while both are delivering: A dies with claims in hand.
    assert!(eventually(Duration::from_secs(10), || rx.received().len() >= 60).await);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let all = || accepted.iter().all(|id| rx.delivered_ids().contains(id));
    assert!(eventually(Duration::from_secs(60), all).await, "delivered {} of 300", rx.delivered_ids().len());
    let (repeats, _) = repeats_and_overlaps(&rx.received(), Duration::from_millis(300));
    eprintln!(
        "relay killed mid-delivery: all 300 delivered; {repeats} of A's claims re-sent by B after the visibility timeout"
    );
    // A's open requests at the kill are sent again by B: that is the claim
    // takeover this test is about. Nothing else repeats.
    assert!(repeats >= 1, "A had no claims in hand at the kill: the scenario did not happen");
    assert!(repeats <= 64, "{repeats} repeats for max_in_flight = 32");
    b.child.kill().unwrap();
    let _ = b.child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_gives_503s_never_a_200_for_something_unstored() {
    // AOF with fsync on every write: a write Redis acknowledged survives.
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = spawn_relay(&redis_config(dir.path(), "a", &redis, &rx.url(), "5s"));
    let c = client();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let results = Arc::new(std::sync::Mutex::new(Vec::new()));
    let senders: Vec<_> = (0..4u64)
        .map(|w| {
            let (c, stop, results, addr) = (c.clone(), stop.clone(), results.clone(), relay.addr);
            tokio::spawn(async move {
                let mut i = w;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let outcome = post_to(&c, addr, payment_ipn(6_000_000 + i, "finished")).await;
                    results.lock().unwrap().push(outcome);
                    i += 4;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.kill();
    // Longer than a connect timeout plus one retry (2 s + 2 s), so some
    // admissions cannot wait it out and must be refused.
    tokio::time::sleep(Duration::from_secs(5)).await;
    redis.restart();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let results = results.lock().unwrap().clone();
    let accepted: Vec<String> = results
        .iter()
        .filter_map(|r| match r {
            Some((200, v)) => Some(v["id"].as_str().unwrap().to_owned()),
            _ => None,
        })
        .collect();
    let refused = results.iter().filter(|r| matches!(r, Some((503, v)) if v["error"]["code"] == "unavailable")).count();
    let other: Vec<_> = results.iter().filter(|r| !matches!(r, Some((200 | 503, _)))).collect();
    assert!(other.is_empty(), "only 200 or 503 are answers: {other:?}");
    assert!(refused > 0, "the outage must show as 503s");
    // Everything that got a 200 was stored: it is delivered after the restart.
    let all = || accepted.iter().all(|id| rx.delivered_ids().contains(id));
    assert!(eventually(Duration::from_secs(30), all).await, "an accepted IPN was lost across the Redis restart");
    eprintln!(
        "redis restart: {} accepted, {refused} answered 503 during the gap, all accepted delivered",
        accepted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_loses_its_data_does_not_wedge_the_relay() {
    // No persistence: a restart loses everything, scripts included.
    let mut redis = RedisServer::start();
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = spawn_relay(&redis_config(dir.path(), "a", &redis, &rx.url(), "5s"));
    let c = client();
    let ready = |c: &reqwest::Client| {
        let url = format!("http://{}/readyz", relay.admin);
        let c = c.clone();
        async move { c.get(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    assert_eq!(ready(&c).await, 200);
    let (status, _) = post_to(&c, relay.addr, payment_ipn(5_000_000, "finished")).await.unwrap();
    assert_eq!(status, 200);

    redis.kill();
    assert_eq!(ready(&c).await, 503, "not ready while Redis is down");
    let (status, v) = post_to(&c, relay.addr, payment_ipn(5_000_001, "finished")).await.unwrap();
    assert_eq!((status, v["error"]["code"].as_str()), (503, Some("unavailable")));

    redis.restart();
    // Back without its data: the relay reconnects, reloads its scripts and
    // admits and delivers again.
    let mut accepted = None;
    for _ in 0..100 {
        if let Some((200, v)) = post_to(&c, relay.addr, payment_ipn(5_000_002, "finished")).await {
            accepted = Some(v["id"].as_str().unwrap().to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = accepted.expect("admissions resume after Redis returns");
    assert_eq!(ready(&c).await, 200);
    assert!(eventually(Duration::from_secs(10), || rx.delivered_ids().contains(&id)).await, "delivery resumes");
}
