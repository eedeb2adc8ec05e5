//! Delivery against real HTTP receivers: signatures checked by an
//! independent Standard Webhooks implementation, fan-out by filter, a
//! flapping receiver, dead letters, isolation of a slow endpoint and a clean
//! shutdown.

use std::time::Duration;

use crate::common::*;
use ipn_relay::store::{AttemptResult, DeliveryState, Store};

const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_B: &str = "whsec_c2Vjb25kLWVuZHBvaW50LXNlY3JldC1rZXktMTIz";
const SECRET_C: &str = "whsec_dGhpcmQtZW5kcG9pbnQtc2VjcmV0LWtleS00NTY=";

fn endpoint(name: &str, url: &str, secret: &str, extra: &str) -> String {
    format!("\n[[endpoints]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = \"{secret}\"\ntimeout = \"2s\"\n{extra}\n")
}

async fn relay(endpoints: &str, delivery: &str) -> (Relay, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.redb");
    let text = format!("{}{endpoints}\n[delivery]\n{delivery}\n", base_config(&path));
    (Relay::start_text(&path, &text).await, dir)
}

/// Verifies one delivered request with the `standardwebhooks` crate.
fn assert_signed(r: &Received, secret: &str) {
    let wh = standardwebhooks::Webhook::new(secret).unwrap();
    wh.verify(&r.body, &r.headers).unwrap_or_else(|e| panic!("signature refused: {e:?}"));
}

#[tokio::test]
async fn each_endpoint_gets_exactly_what_matches_signed_for_it() {
    let (a, b, c) = (
        Receiver::start(|_| Reply::Status(200)).await,
        Receiver::start(|_| Reply::Status(204)).await,
        Receiver::start(|_| Reply::Status(200)).await,
    );
    let endpoints = [
        endpoint("all", &a.url(), SECRET_A, "events = [\"*\"]"),
        endpoint("np-deposits", &b.url(), SECRET_B, "events = [\"deposit.*\"]\nsources = [\"nowpayments\"]"),
        endpoint("payouts", &c.url(), SECRET_C, "events = [\"payout.*\"]"),
    ]
    .concat();
    let (relay, _dir) = relay(&endpoints, "").await;
    let cl = client();
    let (_, dep) = answer(post_np(&cl, &relay, &payment_ipn(1, "finished"), NP_SECRET).await).await;
    let payout = r#"{"id":"77","batch_withdrawal_id":"5","status":"FINISHED","amount":"1.5","currency":"trx","address":"T1","hash":"0xabc"}"#;
    let (_, po) = answer(post_np(&cl, &relay, payout, NP_SECRET).await).await;
    let (_, nv) = answer(post_nova(&cl, &relay, &nova_body("deposit.confirmed", "d1", &now_rfc3339())).await).await;
    let (dep, po, nv) = (dep["id"].as_str().unwrap(), po["id"].as_str().unwrap(), nv["id"].as_str().unwrap());

    assert!(
        eventually(Duration::from_secs(5), || a.received().len() == 3
            && b.received().len() == 1
            && c.received().len() == 1)
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids = |r: &Receiver| {
        let mut v: Vec<String> = r.received().iter().map(Received::webhook_id).collect();
        v.sort();
        v
    };
    let mut all = vec![dep.to_owned(), po.to_owned(), nv.to_owned()];
    all.sort();
    assert_eq!(ids(&a), all);
    assert_eq!(ids(&b), [dep]);
    assert_eq!(ids(&c), [po]);

    for (rx, secret) in [(&a, SECRET_A), (&b, SECRET_B), (&c, SECRET_C)] {
        for r in rx.received() {
            assert_signed(&r, secret);
            assert_eq!(r.headers["content-type"], "application/json");
            assert_eq!(r.headers["x-ipn-relay-attempt"], "1");
            assert!(r.headers["user-agent"].to_str().unwrap().starts_with("ipn-relay/"));
            assert!(r.headers["x-ipn-relay-delivery-id"].to_str().unwrap().starts_with("dlv_"));
            // The body is the stored event, byte for byte.
            let stored = relay.store.event(&r.webhook_id().as_str().into()).await.unwrap().unwrap();
            assert_eq!(r.body.as_ref(), stored.json.as_slice());
        }
    }
    // A signature made with another endpoint's secret does not verify.
    let wrong = standardwebhooks::Webhook::new(SECRET_B).unwrap();
    assert!(wrong.verify(&a.received()[0].body, &a.received()[0].headers).is_err());
    // Every delivery is recorded as delivered.
    for id in [dep, po, nv] {
        for d in relay.store.event_deliveries(&id.into()).await.unwrap() {
            assert_eq!(d.state, DeliveryState::Delivered, "{d:?}");
        }
    }
}

#[tokio::test]
async fn a_flapping_receiver_gets_every_event_on_schedule() {
    // Per event: 500, a hang past the timeout, a reset, 429 with
    // Retry-After, then 200.
    let rx = Receiver::start(|n| match n {
        0 => Reply::Status(500),
        1 => Reply::Slow(Duration::from_millis(1500)),
        2 => Reply::Reset,
        3 => Reply::RetryAfter(429, 1),
        _ => Reply::Status(200),
    })
    .await;
    let endpoints = endpoint("flappy", &rx.url(), SECRET_A, "").replace("timeout = \"2s\"", "timeout = \"400ms\"");
    let delivery = "max_attempts = 8\ninitial_backoff = \"100ms\"\nmax_backoff = \"10s\"\nmultiplier = 2.0\njitter = 0.0\nvisibility_timeout = \"5s\"";
    let (relay, _dir) = relay(&endpoints, delivery).await;
    let cl = client();
    let mut ids = Vec::new();
    for i in 0..4 {
        let (_, v) = answer(post_np(&cl, &relay, &payment_ipn(100 + i, "finished"), NP_SECRET).await).await;
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let fifth_attempts = || {
        let received = rx.received();
        ids.iter().all(|id| received.iter().filter(|r| &r.webhook_id() == id).count() >= 5)
    };
    assert!(eventually(Duration::from_secs(15), fifth_attempts).await, "received {}", rx.received().len());
    // Let the last answers be recorded.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in &ids {
        let attempts: Vec<Received> = rx.received().into_iter().filter(|r| &r.webhook_id() == id).collect();
        assert_eq!(attempts.len(), 5, "{id}");
        // Same webhook-id every time, a valid signature each time, and the
        // attempt counter counting.
        for (n, r) in attempts.iter().enumerate() {
            assert_signed(r, SECRET_A);
            assert_eq!(r.headers["x-ipn-relay-attempt"], (n + 1).to_string().as_str());
        }
        // Gaps follow the schedule: 100 ms after the 500; 200 ms after the
        // 400 ms timeout; 400 ms after the reset; the 1 s Retry-After.
        let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].at - w[0].at).collect();
        let min = [100, 400 + 200, 400, 1000].map(Duration::from_millis);
        for (gap, min) in gaps.iter().zip(min) {
            assert!(*gap >= min, "{id}: gaps {gaps:?}");
            assert!(*gap < min + Duration::from_millis(900), "{id}: gaps {gaps:?}");
        }
        let delivery = relay.store.event_deliveries(&id.as_str().into()).await.unwrap().remove(0);
        let (d, history) = relay.store.delivery(&delivery.id).await.unwrap().unwrap();
        assert_eq!(d.state, DeliveryState::Delivered);
        let kinds: Vec<String> = history
            .iter()
            .map(|a| match &a.result {
                AttemptResult::Status { code } => code.to_string(),
                AttemptResult::Error { class, .. } => class.clone(),
            })
            .collect();
        assert_eq!(kinds, ["500", "timeout", "connection", "429", "200"], "{history:?}");
        assert_eq!(history[4].response_excerpt.as_deref(), Some("{\"ok\":true}"));
    }
}

#[tokio::test]
async fn a_receiver_that_always_fails_drives_deliveries_to_dead() {
    let rx = Receiver::start(|_| Reply::Status(503)).await;
    let delivery = "max_attempts = 3\ninitial_backoff = \"50ms\"\nmax_backoff = \"1s\"\nmultiplier = 2.0\njitter = 0.0";
    let (relay, _dir) = relay(&endpoint("down", &rx.url(), SECRET_A, ""), delivery).await;
    let (_, v) = answer(post_np(&client(), &relay, &payment_ipn(9, "finished"), NP_SECRET).await).await;
    let id = v["id"].as_str().unwrap().to_owned();
    let store = relay.store.clone();
    let dead = async {
        for _ in 0..250 {
            let d = store.event_deliveries(&id.as_str().into()).await.unwrap().remove(0);
            if d.state == DeliveryState::Dead {
                return Some(d);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    };
    let d = dead.await.expect("dead within 5 s");
    assert_eq!(d.attempts, 3);
    assert_eq!(d.last_error.as_deref(), Some("HTTP 503"));
    // No further attempt is made.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rx.received().len(), 3);
}

#[tokio::test]
async fn a_slow_endpoint_does_not_hold_up_the_others() {
    let slow = Receiver::start(|_| Reply::Slow(Duration::from_secs(3))).await;
    let fast = Receiver::start(|_| Reply::Status(200)).await;
    let endpoints = [
        endpoint("slow", &slow.url(), SECRET_A, "max_in_flight = 2").replace("timeout = \"2s\"", "timeout = \"5s\""),
        endpoint("fast", &fast.url(), SECRET_B, "max_in_flight = 4"),
    ]
    .concat();
    let (relay, _dir) = relay(&endpoints, "visibility_timeout = \"30s\"").await;
    let cl = client();
    for i in 0..20 {
        assert_eq!(post_np(&cl, &relay, &payment_ipn(200 + i, "finished"), NP_SECRET).await.status(), 200);
    }
    assert!(
        eventually(Duration::from_secs(2), || fast.delivered_ids().len() == 20).await,
        "fast got {}",
        fast.received().len()
    );
    // The slow one has at most its max_in_flight open.
    assert!(slow.received().len() <= 2, "slow got {}", slow.received().len());
}

#[tokio::test]
async fn shutdown_finishes_or_releases_in_flight_deliveries() {
    let rx = Receiver::start(|_| Reply::Slow(Duration::from_secs(10))).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.redb");
    let text = format!(
        "{}{}",
        base_config(&path).replace("shutdown_grace = \"5s\"", "shutdown_grace = \"300ms\""),
        endpoint("hangs", &rx.url(), SECRET_A, "max_in_flight = 4").replace("timeout = \"2s\"", "timeout = \"20s\"")
    );
    let mut relay = Relay::start_text(&path, &format!("{text}\n[delivery]\nvisibility_timeout = \"60s\"\n")).await;
    let cl = client();
    let mut ids = Vec::new();
    for i in 0..3 {
        let (_, v) = answer(post_np(&cl, &relay, &payment_ipn(300 + i, "finished"), NP_SECRET).await).await;
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    assert!(eventually(Duration::from_secs(2), || rx.received().len() == 3).await);
    let started = std::time::Instant::now();
    relay.stop().await;
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown took {:?}", started.elapsed());
    for id in &ids {
        let d = relay.store.event_deliveries(&id.as_str().into()).await.unwrap().remove(0);
        assert_eq!(d.state, DeliveryState::Pending, "released, not stuck in flight: {d:?}");
        assert_eq!(d.attempts, 0, "an interrupted request is not counted as an attempt");
    }
}

#[tokio::test]
async fn an_endpoint_rate_limit_is_never_exceeded() {
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let ep =
        endpoint("limited", &rx.url(), SECRET_A, "max_in_flight = 16\nrate_limit = { per_second = 10, burst = 5 }");
    let (relay, _dir) = relay(&ep, "").await;
    let cl = client();
    let started = std::time::Instant::now();
    for i in 0..30 {
        assert_eq!(post_np(&cl, &relay, &payment_ipn(400 + i, "finished"), NP_SECRET).await.status(), 200);
    }
    assert!(eventually(Duration::from_secs(10), || rx.received().len() == 30).await);
    // Burst 5, then 10 a second: the n-th request cannot come before
    // (n - 5) / 10 seconds. Only an upper bound on speed is asserted.
    let received = rx.received();
    for (n, r) in received.iter().enumerate().skip(5) {
        let earliest = Duration::from_millis(((n - 5) as u64 * 100).saturating_sub(50));
        assert!(r.at.duration_since(started) >= earliest, "request {n} after {:?}", r.at.duration_since(started));
    }
}

#[tokio::test]
async fn waiting_for_the_rate_limit_never_sends_a_delivery_twice() {
    // Slow answers, a tight limit and a short visibility timeout: claims
    // must not age while they wait for the limiter.
    let rx = Receiver::start(|_| Reply::Slow(Duration::from_millis(300))).await;
    let ep = endpoint("tight", &rx.url(), SECRET_A, "max_in_flight = 8\nrate_limit = { per_second = 4, burst = 1 }")
        .replace("timeout = \"2s\"", "timeout = \"1s\"");
    let (relay, _dir) = relay(&ep, "visibility_timeout = \"1500ms\"").await;
    let cl = client();
    for i in 0..8 {
        assert_eq!(post_np(&cl, &relay, &payment_ipn(500 + i, "finished"), NP_SECRET).await.status(), 200);
    }
    assert!(eventually(Duration::from_secs(10), || rx.delivered_ids().len() == 8).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let received = rx.received();
    assert_eq!(received.len(), 8, "sent twice: {:?}", received.iter().map(Received::webhook_id).collect::<Vec<_>>());
}

/// During a rotation each attempt carries a signature with the new secret and
/// one with the previous secret; a receiver holding either one verifies.
#[tokio::test]
async fn a_previous_secret_adds_a_second_signature_during_rotation() {
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let ep = endpoint("backend", &rx.url(), SECRET_A, &format!("previous_secret = \"{SECRET_B}\""));
    let (relay, _dir) = relay(&ep, "").await;
    let (status, _) = answer(post_np(&client(), &relay, &payment_ipn(41, "finished"), NP_SECRET).await).await;
    assert_eq!(status, 200);
    assert!(eventually(Duration::from_secs(5), || rx.received().len() == 1).await);
    let r = &rx.received()[0];
    let header = r.headers["webhook-signature"].to_str().unwrap();
    assert_eq!(header.split(' ').filter(|s| s.starts_with("v1,")).count(), 2, "{header}");
    assert_signed(r, SECRET_A);
    assert_signed(r, SECRET_B);
    // A secret that is neither is still refused.
    assert!(standardwebhooks::Webhook::new(SECRET_C).unwrap().verify(&r.body, &r.headers).is_err());
}
