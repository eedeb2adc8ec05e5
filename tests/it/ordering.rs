//! Ordered delivery end to end: many payments, each with several statuses
//! posted in random order by concurrent senders, to a receiver that fails a
//! third of first attempts (500s, timeouts, resets). With `ordering =
//! "subject"` every payment's events reach the receiver in sequence order:
//! an event arrives only after every earlier event of its payment was
//! acknowledged. With `"none"` the same run breaks that order (so the check
//! can fail). Also across a `kill -9` of the relay, and with two relays on
//! one Redis.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::{self, Received, Receiver, Reply, post_to, spawn_relay};

const FLOW: [&str; 6] = ["waiting", "confirming", "confirmed", "sending", "partially_paid", "finished"];
const SENDERS: usize = 16;

/// Fails a third of first attempts: a 500, a timeout (the endpoint's
/// timeout is 300 ms) or a reset, in turn. Retries succeed.
fn flaky_receiver() -> impl Fn(usize) -> Reply + Send + Sync + 'static {
    let n = AtomicUsize::new(0);
    move |seen| {
        if seen > 0 {
            return Reply::Status(200);
        }
        let i = n.fetch_add(1, Ordering::Relaxed);
        match (i % 3, (i / 3) % 3) {
            (0, 0) => Reply::Status(500),
            (0, 1) => Reply::Slow(Duration::from_secs(1)),
            (0, _) => Reply::Reset,
            _ => Reply::Status(200),
        }
    }
}

/// The IPNs of `payments` payments, 3 to 6 statuses each, shuffled.
fn shuffled_ipns(payments: u64) -> Vec<String> {
    let mut all: Vec<String> = (0..payments)
        .flat_map(|p| FLOW[..3 + (p as usize % 4)].iter().map(move |s| common::payment_ipn(7_000_000 + p, s)))
        .collect();
    // xorshift: the same order every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..all.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        all.swap(i, (x % (i as u64 + 1)) as usize);
    }
    all
}

/// Posts every IPN from `SENDERS` concurrent senders, each to one of
/// `relays` in turn, retrying one that fails (a relay being restarted)
/// until it is accepted or a duplicate.
async fn post_all(relays: Arc<std::sync::Mutex<Vec<SocketAddr>>>, ipns: Vec<String>) {
    let queue = Arc::new(std::sync::Mutex::new(ipns));
    let tasks: Vec<_> = (0..SENDERS)
        .map(|w| {
            let (queue, relays) = (queue.clone(), relays.clone());
            tokio::spawn(async move {
                let c = common::client();
                let mut turn = w;
                loop {
                    let Some(body) = queue.lock().unwrap().pop() else { return };
                    loop {
                        let addr = {
                            let r = relays.lock().unwrap();
                            r[turn % r.len()]
                        };
                        turn += 1;
                        match post_to(&c, addr, body.clone()).await {
                            Some((200, _)) => break,
                            _ => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Per payment, the receiver's requests in arrival order, with the
/// sequence each carried.
fn by_payment(received: &[Received]) -> HashMap<String, Vec<(u64, &Received)>> {
    let mut out: HashMap<String, Vec<(u64, &Received)>> = HashMap::new();
    for r in received {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let id = v["subject"]["id"].as_str().unwrap().to_owned();
        out.entry(id).or_default().push((v["sequence"].as_u64().unwrap(), r));
    }
    out
}

fn acked(r: &Received) -> bool {
    r.answered && matches!(r.reply, Reply::Status(200))
}

/// Payments in which a request arrived before an earlier event of the same
/// payment had been acknowledged.
fn out_of_order(received: &[Received]) -> Vec<String> {
    let mut bad = Vec::new();
    for (payment, requests) in by_payment(received) {
        let mut acked_seqs = std::collections::HashSet::new();
        for (seq, r) in &requests {
            if (1..*seq).any(|earlier| !acked_seqs.contains(&earlier)) {
                bad.push(payment.clone());
                break;
            }
            if acked(r) {
                acked_seqs.insert(*seq);
            }
        }
    }
    bad
}

/// Every payment's events were acknowledged, each sequence 1..=n once at
/// least, and `expected` events in all.
fn all_acknowledged(received: &[Received], expected: usize) -> bool {
    let payments = by_payment(received);
    let mut total = 0;
    for requests in payments.values() {
        let seqs: std::collections::BTreeSet<u64> =
            requests.iter().filter(|(_, r)| acked(r)).map(|(s, _)| *s).collect();
        if seqs.iter().copied().ne(1..=seqs.len() as u64) {
            return false;
        }
        total += seqs.len();
    }
    total == expected
}

fn config(store: &str, receiver: &Receiver, ordering: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[store]
{store}

[[sources]]
name = "nowpayments"
kind = "nowpayments"
secrets = ["{secret}"]

[[endpoints]]
name = "backend"
url = "{url}"
secret = "{endpoint_secret}"
timeout = "300ms"
max_in_flight = 64
ordering = "{ordering}"

[delivery]
max_attempts = 50
initial_backoff = "50ms"
max_backoff = "200ms"
jitter = 0.0
visibility_timeout = "1s"

[log]
format = "json"
"#,
        secret = common::NP_SECRET,
        url = receiver.url(),
        endpoint_secret = common::ENDPOINT_SECRET,
    )
}

fn expected_events(payments: u64) -> usize {
    (0..payments).map(|p| 3 + (p as usize % 4)).sum()
}

async fn wait_for_all(receiver: &Receiver, expected: usize) {
    // Cheap first (count the acknowledged requests under the lock, no
    // copy, no parsing), then the full check: parsing every body every
    // 20 ms starved the relay and receiver of CPU.
    let acked_count = || receiver.log.lock().unwrap().iter().filter(|r| acked(r)).count();
    let until = std::time::Instant::now() + Duration::from_secs(1200);
    let mut done = false;
    while std::time::Instant::now() < until {
        if acked_count() >= expected && all_acknowledged(&receiver.received(), expected) {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !done {
        let received = receiver.received();
        let payments = by_payment(&received);
        let mut short: Vec<(String, Vec<u64>)> = payments
            .iter()
            .map(|(p, r)| {
                let mut acked: Vec<u64> = r.iter().filter(|(_, x)| acked(x)).map(|(s, _)| *s).collect();
                acked.sort();
                acked.dedup();
                (p.clone(), acked)
            })
            .filter(|(p, acked)| {
                let want = 3 + ((p.parse::<u64>().unwrap() - 7_000_000) as usize % 4);
                acked.len() != want
            })
            .collect();
        short.sort();
        panic!(
            "not every event was acknowledged in time: {} payments short, e.g. {:?}; {} payments seen of the expected events {expected}",
            short.len(),
            &short[..short.len().min(5)],
            payments.len()
        );
    }
}

/// One relay on the embedded store; returns what the receiver saw.
async fn embedded_run(ordering: &str, payments: u64) -> Vec<Received> {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(flaky_receiver()).await;
    let store = format!("path = \"{}\"", dir.path().join("relay.redb").display());
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, config(&store, &receiver, ordering)).unwrap();
    let relay = spawn_relay(&path);
    post_all(Arc::new(std::sync::Mutex::new(vec![relay.addr])), shuffled_ipns(payments)).await;
    wait_for_all(&receiver, expected_events(payments)).await;
    receiver.received()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payments_events_arrive_in_sequence_order() {
    let received = embedded_run("subject", 1000).await;
    let bad = out_of_order(&received);
    assert!(bad.is_empty(), "{} payments out of order, e.g. {:?}", bad.len(), bad.first());
    // The receiver's failures did happen, and were retried.
    assert!(received.iter().filter(|r| !acked(r)).count() > 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ordering_the_same_run_reorders() {
    let received = embedded_run("none", 300).await;
    assert!(!out_of_order(&received).is_empty(), "the check would catch reordering");
}

/// `kill -9` of the relay mid-run, restarted on the same file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_across_a_kill_9() {
    let payments = 1000;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(flaky_receiver()).await;
    let store = format!("path = \"{}\"", dir.path().join("relay.redb").display());
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, config(&store, &receiver, "subject")).unwrap();
    let mut relay = spawn_relay(&path);
    let addrs = Arc::new(std::sync::Mutex::new(vec![relay.addr]));
    let posting = tokio::spawn(post_all(addrs.clone(), shuffled_ipns(payments)));
    let expected = expected_events(payments);
    assert!(common::eventually(Duration::from_secs(60), || receiver.log.lock().unwrap().len() > expected / 3).await);
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();
    let at_kill = receiver.received().len();
    relay = spawn_relay(&path);
    *addrs.lock().unwrap() = vec![relay.addr];
    posting.await.unwrap();
    wait_for_all(&receiver, expected).await;
    let received = receiver.received();
    assert!(at_kill < received.len(), "the kill landed mid-run");
    let bad = out_of_order(&received);
    assert!(bad.is_empty(), "{} payments out of order, e.g. {:?}", bad.len(), bad.first());
    drop(relay);
}

/// Two relays on one Redis, callbacks spread over both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_with_two_relays_on_one_redis() {
    let payments = 1000;
    let redis = common::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(flaky_receiver()).await;
    let store = format!("kind = \"redis\"\nurl = \"{}\"\nprefix = \"ordering\"", redis.url);
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, config(&store, &receiver, "subject")).unwrap();
    let (a, b) = (spawn_relay(&path), spawn_relay(&path));
    post_all(Arc::new(std::sync::Mutex::new(vec![a.addr, b.addr])), shuffled_ipns(payments)).await;
    wait_for_all(&receiver, expected_events(payments)).await;
    let received = receiver.received();
    let bad = out_of_order(&received);
    assert!(bad.is_empty(), "{} payments out of order, e.g. {:?}", bad.len(), bad.first());
    drop((a, b));
}
