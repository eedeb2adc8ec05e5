//! Closing dead letters against a real relay, on both stores: deliveries go
//! dead, an operator discards them by id and by filter with a reason (API
//! and CLI), the dead gauge the alert reads drops while the discarded ones
//! keep their history, and a replay reopens them once the endpoint is fixed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::admin::{Running, TOKEN, args, cli, config, failing_until_fixed, get, list_all, post, wait_for};
use crate::common::*;
use ipn_relay::store::Store;
use serde_json::{Value, json};

/// Whether `/metrics` shows `line` within the store gauges' refresh period.
async fn metric(c: &reqwest::Client, relay: &Running, line: &str) -> bool {
    for _ in 0..40 {
        let text = c.get(format!("{}/metrics", relay.admin_url())).send().await.unwrap().text().await.unwrap();
        if text.lines().any(|l| l == line) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn dead_deliveries_are_discarded_and_reopened(store: Arc<dyn Store>, store_toml: &str) {
    let (fixed, backend) = failing_until_fixed().await;
    let ledger = Receiver::start(|_| Reply::Status(503)).await;
    let relay = Running::start(&config(store_toml, &backend.url(), &ledger.url()), store.clone()).await;
    let c = client();
    let a = relay.admin_url();
    for i in 0..4 {
        let (status, v) = post_to(&c, relay.addr, payment_ipn(8000 + i, "finished")).await.unwrap();
        assert_eq!(status, 200, "{v}");
    }
    let dead = wait_for(&c, &relay, "state=dead", 8).await;
    assert!(metric(&c, &relay, "ipn_relay_deliveries{state=\"dead\"} 8").await);
    let one = dead.iter().find(|d| d["endpoint"] == "backend").unwrap()["id"].as_str().unwrap().to_owned();

    // Ugly requests first: each refused with a message that names the fault,
    // and nothing changes.
    let url = format!("{a}/admin/deliveries/{one}/discard");
    for (body, status, needle) in [
        (None, 400, "reason: required"),
        (Some(json!({"reason": "   "})), 400, "reason: must not be blank"),
        (Some(json!({"reason": 7})), 400, "reason: expected a string"),
        (Some(json!({"reason": "x".repeat(501)})), 400, "reason: at most 500 characters"),
        (Some(json!({"reason": "ok", "force": true})), 400, "unknown parameter 'force'"),
    ] {
        let (got, v) = post(&c, url.clone(), body.clone()).await;
        assert_eq!(got, status, "{body:?}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().starts_with(needle), "{body:?}: {v}");
    }
    let missing = format!("{a}/admin/deliveries/dlv_000000000000ffffffffffffffff/discard");
    assert_eq!(post(&c, missing, Some(json!({"reason": "x"}))).await.0, 404);
    let (status, _) = get(&c, url.clone(), Some(TOKEN)).await;
    assert_eq!(status, 405);
    let r = c.post(&url).body(json!({"reason": "x"}).to_string()).send().await.unwrap();
    assert_eq!(r.status(), 401, "the token is required");
    for (body, needle) in [
        (json!({"state": "dead"}), "reason: required"),
        (json!({"state": "delivered", "reason": "x"}), "state: only pending, dead or orphaned"),
        (json!({"state": "in_flight", "reason": "x"}), "state: only pending, dead or orphaned"),
        (json!({"state": "deed", "reason": "x"}), "state: unknown state 'deed'"),
        (json!({"endpoint": "nope", "reason": "x"}), "endpoint:"),
        (json!({"reason": "x", "max": 0}), "max: expected a whole number from 1 to 100000"),
        (json!({"reason": "x", "stat": "dead"}), "unknown parameter 'stat'"),
    ] {
        let (status, v) = post(&c, format!("{a}/admin/discard"), Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().starts_with(needle), "{body}: {v}");
    }
    assert_eq!(list_all(&c, &relay, "state=dead").await.len(), 8, "nothing changed");

    // One by id: discarded with its reason and history; again, nothing more.
    let (status, v) = post(&c, url.clone(), Some(json!({"reason": "refunded by hand"}))).await;
    assert_eq!((status, v), (200, json!({"discarded": 1, "state": "discarded"})));
    let (status, v) = post(&c, url.clone(), Some(json!({"reason": "again"}))).await;
    assert_eq!((status, v), (200, json!({"discarded": 0, "state": "discarded"})));
    let (_, d) = get(&c, format!("{a}/admin/deliveries/{one}"), Some(TOKEN)).await;
    assert_eq!((d["state"].as_str(), d["discard_reason"].as_str()), (Some("discarded"), Some("refunded by hand")));
    assert_eq!(d["history"].as_array().unwrap().len(), 2, "{d}");

    // By filter, bounded, then continued at its cursor.
    let (status, v) = post(
        &c,
        format!("{a}/admin/discard"),
        Some(json!({"endpoint": "ledger", "reason": "ledger retired", "max": 2})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["considered"].as_u64(), v["discarded"].as_u64(), v["truncated"].as_bool()),
        (Some(2), Some(2), Some(true))
    );
    assert_eq!((v["filter"]["state"].as_str(), v["reason"].as_str()), (Some("dead"), Some("ledger retired")));
    let cursor = v["continue_cursor"].as_str().unwrap().to_owned();
    let body = json!({"endpoint": "ledger", "reason": "ledger retired", "cursor": cursor});
    let (status, v) = post(&c, format!("{a}/admin/discard"), Some(body)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["discarded"].as_u64(), v["truncated"].as_bool(), v.get("continue_cursor")),
        (Some(2), Some(false), None)
    );

    // The CLI: by filter, then by id with an id that is already discarded
    // and one that does not exist (exit 4, every id still tried).
    let conn = ["--admin-url".to_owned(), a.clone(), "--token".to_owned(), TOKEN.to_owned()];
    let with = |rest: &[&str]| [args(rest), conn.to_vec()].concat();
    let (code, out, err) =
        cli(&with(&["discard", "--state", "dead", "--endpoint", "backend", "--reason", "duplicate order"])).await;
    assert_eq!((code, out.as_str()), (0, "discarded 3, skipped 0 of 3 considered\n"), "{err}");
    let (code, out, err) = cli(&with(&["discard", &one, "dlv_000000000000ffffffffffffffff", "--reason", "x"])).await;
    assert_eq!(code, 4, "{out}{err}");
    assert!(
        out.starts_with(&format!("{one}  skipped  (already discarded)\ndlv_000000000000ffffffffffffffff  failed  (")),
        "{out}"
    );
    assert!(out.ends_with("discarded 0, skipped 1, failed 1\n"), "{out}");
    let (code, _, err) = cli(&with(&["discard", "--reason", "x"])).await;
    assert_eq!(code, 2, "a bare discard does nothing: {err}");

    // Nothing is dead now: the gauge the alert reads is 0, discarded counts apart.
    assert_eq!(list_all(&c, &relay, "state=dead").await.len(), 0);
    let discarded = list_all(&c, &relay, "state=discarded").await;
    assert_eq!(discarded.len(), 8);
    assert!(discarded.iter().all(|d| d["attempts"] == 2 && d["next_attempt_at"].is_null()), "{discarded:?}");
    for line in [
        "ipn_relay_deliveries{state=\"dead\"} 0",
        "ipn_relay_deliveries{state=\"discarded\"} 8",
        "ipn_relay_discards_total 8",
    ] {
        assert!(metric(&c, &relay, line).await, "{line}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(backend.received().len(), 8, "discarded deliveries are never sent: 4 events, 2 attempts each");

    // Fixed: one replayed by id, the rest by filter; all delivered, reasons gone.
    fixed.store(true, Ordering::SeqCst);
    let (status, v) = post(&c, format!("{a}/admin/deliveries/{one}/replay"), None).await;
    assert_eq!((status, v["replayed"].as_u64()), (202, Some(1)), "{v}");
    wait_for(&c, &relay, "state=delivered", 1).await;
    let (status, v) =
        post(&c, format!("{a}/admin/replay"), Some(json!({"state": "discarded", "endpoint": "backend"}))).await;
    assert_eq!((status, v["replayed"].as_u64()), (202, Some(3)), "{v}");
    let delivered: Vec<Value> = wait_for(&c, &relay, "state=delivered", 4).await;
    assert!(delivered.iter().all(|d| d["endpoint"] == "backend" && d.get("discard_reason").is_none()), "{delivered:?}");
    assert_eq!(list_all(&c, &relay, "state=discarded&endpoint=ledger").await.len(), 4, "the ledger's stay closed");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_dead_deliveries_are_discarded_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.redb");
    let store = Arc::new(ipn_relay::store::embedded::EmbeddedStore::open(&path).unwrap());
    dead_deliveries_are_discarded_and_reopened(store, &format!("path = \"{}\"", path.display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dead_deliveries_are_discarded_and_reopened() {
    let server = RedisServer::start();
    let store = Arc::new(ipn_relay::store::redis::RedisStore::connect(&server.url, "discard").await.unwrap());
    let toml = format!("kind = \"redis\"\nurl = \"{}\"\nprefix = \"discard\"", server.url);
    dead_deliveries_are_discarded_and_reopened(store, &toml).await;
}

/// A delivery being sent cannot be discarded (409); once its attempt ends
/// it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_in_flight_is_left_to_finish() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.redb");
    let store = Arc::new(ipn_relay::store::embedded::EmbeddedStore::open(&path).unwrap());
    let slow = Receiver::start(|_| Reply::Slow(Duration::from_millis(1500))).await;
    let ledger = Receiver::start(|_| Reply::Status(503)).await;
    let relay =
        Running::start(&config(&format!("path = \"{}\"", path.display()), &slow.url(), &ledger.url()), store).await;
    let c = client();
    let a = relay.admin_url();
    post_to(&c, relay.addr, payment_ipn(8100, "finished")).await.unwrap();
    let held = wait_for(&c, &relay, "state=in_flight&endpoint=backend", 1).await;
    let id = held[0]["id"].as_str().unwrap();
    let (status, v) = post(&c, format!("{a}/admin/deliveries/{id}/discard"), Some(json!({"reason": "x"}))).await;
    assert_eq!((status, v["error"]["code"].as_str()), (409, Some("in_flight")), "{v}");
    let (status, v) =
        post(&c, format!("{a}/admin/discard"), Some(json!({"state": "pending", "endpoint": "backend", "reason": "x"})))
            .await;
    assert_eq!((status, v["discarded"].as_u64()), (200, Some(0)), "in flight is not pending: {v}");
    wait_for(&c, &relay, "state=delivered&endpoint=backend", 1).await;
    let (status, v) = post(&c, format!("{a}/admin/deliveries/{id}/discard"), Some(json!({"reason": "x"}))).await;
    assert_eq!((status, v["error"]["code"].as_str()), (409, Some("not_discardable")), "delivered stays delivered: {v}");
    relay.stop().await;
}
