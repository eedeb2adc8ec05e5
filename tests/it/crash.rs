//! Crash during delivery: the relay binary takes 2,000 unique events while a
//! receiver acknowledges slowly, and is killed with SIGKILL in the middle of
//! delivering them. Restarted on the same store, it delivers every event
//! that got a 200. Repeats (events that were in flight at the kill) are
//! counted; they carry the same `webhook-id` as their first attempt.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

const EVENTS: u64 = 2000;
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_event_is_delivered_across_kill_9() {
    let rx = Receiver::start(|_| Reply::Slow(Duration::from_millis(50))).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[[endpoints]]\nname = \"backend\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\ntimeout = \"2s\"\nmax_in_flight = 16\n\n[delivery]\nvisibility_timeout = \"3s\"\n\n[log]\nformat = \"json\"\n",
            base_config(&dir.path().join("relay.redb")),
            rx.url()
        ),
    )
    .unwrap();

    let mut relay = spawn_relay(&config);
    let c = client();
    let accepted = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let senders: Vec<_> = (0..16u64)
        .map(|w| {
            let (c, accepted, addr) = (c.clone(), accepted.clone(), relay.addr);
            tokio::spawn(async move {
                for i in (w..EVENTS).step_by(16) {
                    match post_to(&c, addr, payment_ipn(7_000_000 + i, "finished")).await {
                        Some((200, v)) => accepted.lock().unwrap().push(v["id"].as_str().unwrap().to_owned()),
                        _ => return, // the relay died
                    }
                }
            })
        })
        .collect();

    for s in senders {
        s.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len() as u64, EVENTS, "every event is accepted before the kill");
    // Kill it in the middle of delivery.
    let midway = (EVENTS / 2) as usize;
    assert!(eventually(Duration::from_secs(30), || rx.received().len() >= midway).await, "delivery never got going");
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();
    let before_restart = rx.received().len();
    assert!(before_restart < accepted.len(), "the kill must land mid-delivery");

    let mut relay = spawn_relay(&config);
    let all_delivered = || {
        let got = rx.delivered_ids();
        accepted.iter().all(|id| got.contains(id))
    };
    assert!(eventually(Duration::from_secs(60), all_delivered).await, "not every accepted event arrived");
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();

    let received = rx.received();
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for r in &received {
        *per_event.entry(r.webhook_id()).or_default() += 1;
    }
    // Nothing arrives that was not accepted, and every request is signed.
    assert!(per_event.keys().all(|id| accepted.contains(id)));
    let wh = standardwebhooks::Webhook::new(SECRET).unwrap();
    for r in &received {
        wh.verify(&r.body, &r.headers).unwrap();
    }
    let repeats: usize = per_event.values().map(|n| n - 1).sum();
    eprintln!(
        "crash test: {} accepted, {} requests received before the kill, all {} delivered after restart; {} repeats ({} requests in all)",
        accepted.len(),
        before_restart,
        per_event.len(),
        repeats,
        received.len()
    );
    // Repeats come only from deliveries whose outcome was not on disk at the
    // kill: at most max_in_flight requests open plus as many recording their
    // outcome (a slot is freed when the exchange ends).
    assert!(repeats <= 32, "{repeats} repeats for max_in_flight = 16");
}
