//! The ingress against the real server and a real redb file: every row of
//! the SPEC §4 status table, duplicates under concurrency, and the ugly
//! inputs (truncated JSON, duplicate keys, deep nesting, huge and slow
//! bodies, wrong secrets).

use std::time::Duration;

use crate::common::*;
use ipn_relay::providers::{nova, nowpayments};
use ipn_relay::store::quarantine::{
    Kept, QuarantineFilter, QuarantineItem, QuarantinePage, QuarantineSize, QuarantineStore, Quarantined,
};
use ipn_relay::store::{DeliveryState, Store, StoreError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn genuine_ipn_is_accepted_stored_and_normalised() {
    let relay = Relay::start("").await;
    let c = client();
    let body = payment_ipn(5800567260, "finished");
    let (status, v) = answer(post_np(&c, &relay, &body, NP_SECRET).await).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "accepted");
    let id = v["id"].as_str().unwrap();
    assert!(id.starts_with("evt_"));

    let stored = relay.store.event(&id.into()).await.unwrap().expect("event stored before the 200");
    let event: serde_json::Value = serde_json::from_slice(&stored.json).unwrap();
    assert_eq!(event["type"], "deposit.confirmed");
    assert_eq!(event["source"], "nowpayments");
    assert_eq!(event["subject"], serde_json::json!({"kind": "payment", "id": "5800567260"}));
    assert_eq!(event["amount"], "0.00656612");
    assert_eq!(event["occurred_at"], "2025-12-09T03:04:21.097Z");
    // Numbers in the payload exactly as the provider wrote them.
    assert!(String::from_utf8_lossy(&stored.json).contains(r#""depositFee":0.000002"#));
    // One delivery for the one matching endpoint, waiting for it (delivery
    // may already have claimed it; the endpoint here never answers).
    let ds = relay.store.event_deliveries(&id.into()).await.unwrap();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].endpoint, "backend");
    assert!(matches!(ds[0].state, DeliveryState::Pending | DeliveryState::InFlight), "{:?}", ds[0].state);
}

#[tokio::test]
async fn the_same_ipn_ten_times_at_once_is_accepted_once() {
    let relay = Relay::start("").await;
    let c = client();
    let body = payment_ipn(42, "finished");
    let sends = (0..10).map(|_| {
        let (c, body) = (c.clone(), body.clone());
        let url = relay.url("/hooks/nowpayments");
        let sig = nowpayments::sign(NP_SECRET.as_bytes(), body.as_bytes());
        tokio::spawn(async move {
            answer(c.post(url).header("x-nowpayments-sig", sig).body(body).send().await.unwrap()).await
        })
    });
    let mut outcomes = Vec::new();
    for s in sends {
        let (status, v) = s.await.unwrap();
        assert_eq!(status, 200);
        outcomes.push(v["status"].as_str().unwrap().to_owned());
    }
    outcomes.sort();
    assert_eq!(outcomes.iter().filter(|o| *o == "accepted").count(), 1, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| *o == "duplicate").count(), 9, "{outcomes:?}");
    assert_eq!(relay.store.event_count().await.unwrap(), 1);
    let id = ipn_relay::store::EventId::derive("nowpayments", r#"["payment","42","finished","0.00656612"]"#);
    assert_eq!(relay.store.event_deliveries(&id).await.unwrap().len(), 1, "a duplicate stores no delivery");
}

#[tokio::test]
async fn a_new_status_of_the_same_payment_is_a_new_event() {
    let relay = Relay::start("").await;
    let c = client();
    let (_, a) = answer(post_np(&c, &relay, &payment_ipn(7, "confirming"), NP_SECRET).await).await;
    let (_, b) = answer(post_np(&c, &relay, &payment_ipn(7, "finished"), NP_SECRET).await).await;
    assert_eq!((a["status"].as_str(), b["status"].as_str()), (Some("accepted"), Some("accepted")));
    assert_ne!(a["id"], b["id"]);
}

#[tokio::test]
async fn unknown_source_and_unknown_path_are_404() {
    let relay = Relay::start("").await;
    let c = client();
    let (status, v) = answer(c.post(relay.url("/hooks/stripe")).body("{}").send().await.unwrap()).await;
    assert_eq!((status, error_code(&v)), (404, "unknown_source"));
    let (status, v) = answer(c.get(relay.url("/")).send().await.unwrap()).await;
    assert_eq!((status, error_code(&v)), (404, "not_found"));
}

#[tokio::test]
async fn methods_other_than_post_are_405_with_allow() {
    let relay = Relay::start("").await;
    let c = client();
    for method in [reqwest::Method::GET, reqwest::Method::PUT, reqwest::Method::DELETE] {
        let r = c.request(method, relay.url("/hooks/nowpayments")).send().await.unwrap();
        assert_eq!(r.headers()["allow"], "POST");
        let (status, v) = answer(r).await;
        assert_eq!((status, error_code(&v)), (405, "method_not_allowed"));
    }
}

#[tokio::test]
async fn body_over_the_limit_is_413_by_header_and_while_reading() {
    let relay = Relay::start("").await;
    let c = client();
    // Declared too large: refused before reading.
    let big = "x".repeat(5000);
    let (status, v) = answer(post_np(&c, &relay, &big, NP_SECRET).await).await;
    assert_eq!((status, error_code(&v)), (413, "body_too_large"));
    // No Content-Length (chunked): refused while reading.
    let chunks = futures_stream(vec![vec![b'x'; 3000], vec![b'x'; 3000]]);
    let r = c
        .post(relay.url("/hooks/nowpayments"))
        .header("x-nowpayments-sig", "00")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    let (status, v) = answer(r).await;
    assert_eq!((status, error_code(&v)), (413, "body_too_large"));
    // A lying Content-Length of 10 GB is refused at once, without waiting for it.
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(b"POST /hooks/nowpayments HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000000\r\n\r\n").await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

fn futures_stream(chunks: Vec<Vec<u8>>) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    tokio_stream::iter(chunks.into_iter().map(Ok))
}

async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n =
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("server answers in time").unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn addresses_outside_allow_ips_are_403() {
    let relay = Relay::start(
        r#"
[[sources]]
name = "locked"
kind = "nowpayments"
secrets = ["np-test-secret-0001"]
allow_ips = ["192.0.2.0/24"]

[[sources]]
name = "local"
kind = "nowpayments"
secrets = ["np-test-secret-0001"]
allow_ips = ["127.0.0.0/8", "::1"]
"#,
    )
    .await;
    let c = client();
    let body = payment_ipn(1, "waiting");
    let sig = nowpayments::sign(NP_SECRET.as_bytes(), body.as_bytes());
    let (status, v) = answer(
        c.post(relay.url("/hooks/locked")).header("x-nowpayments-sig", &sig).body(body.clone()).send().await.unwrap(),
    )
    .await;
    assert_eq!((status, error_code(&v)), (403, "ip_not_allowed"));
    // X-Forwarded-For from an untrusted peer changes nothing.
    let (status, _) = answer(
        c.post(relay.url("/hooks/locked"))
            .header("x-nowpayments-sig", &sig)
            .header("x-forwarded-for", "192.0.2.1")
            .body(body.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    let (status, v) =
        answer(c.post(relay.url("/hooks/local")).header("x-nowpayments-sig", &sig).body(body).send().await.unwrap())
            .await;
    assert_eq!((status, v["status"].as_str()), (200, Some("accepted")));
}

#[tokio::test]
async fn forwarded_for_is_believed_from_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[[sources]]
name = "locked"
kind = "nowpayments"
secrets = ["np-test-secret-0001"]
allow_ips = ["192.0.2.0/24"]
"#;
    let relay = Relay::start_with(&dir.path().join("r.redb"), "trusted_proxies = [\"127.0.0.1\"]", extra).await;
    let c = client();
    let body = payment_ipn(2, "waiting");
    let sig = nowpayments::sign(NP_SECRET.as_bytes(), body.as_bytes());
    let url = relay.url("/hooks/locked");
    let send = |xff: &'static str| {
        c.post(&url).header("x-nowpayments-sig", &sig).header("x-forwarded-for", xff).body(body.clone()).send()
    };
    assert_eq!(send("192.0.2.77").await.unwrap().status(), 200);
    // A spoofed left-most entry is not believed: the proxy saw 198.51.100.1.
    assert_eq!(send("192.0.2.77, 198.51.100.1").await.unwrap().status(), 403);
    // A hop the proxy wrote that names no address: refused, not guessed.
    let (status, v) = answer(send("not-an-address").await.unwrap()).await;
    assert_eq!((status, error_code(&v)), (400, "bad_request"));
}

#[tokio::test]
async fn floods_from_one_address_are_429_with_retry_after() {
    let relay = Relay::start(
        r#"
[[sources]]
name = "limited"
kind = "nowpayments"
secrets = ["np-test-secret-0001"]
rate_limit = { per_second = 1, burst = 3 }
"#,
    )
    .await;
    let c = client();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..6 {
        let body = payment_ipn(100 + i, "waiting");
        let sig = nowpayments::sign(NP_SECRET.as_bytes(), body.as_bytes());
        let r = c.post(relay.url("/hooks/limited")).header("x-nowpayments-sig", sig).body(body).send().await.unwrap();
        if r.status() == 429 {
            retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        }
        let (status, v) = answer(r).await;
        if status == 429 {
            assert_eq!(error_code(&v), "rate_limited");
        }
        statuses.push(status);
    }
    assert_eq!(&statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    assert!(retry_after.is_some_and(|s| (1..=2).contains(&s)), "{retry_after:?}");
    // Another source is limited separately.
    assert_eq!(post_np(&c, &relay, &payment_ipn(999, "waiting"), NP_SECRET).await.status(), 200);
}

#[tokio::test]
async fn forged_and_malformed_signatures_are_401() {
    let relay = Relay::start("").await;
    let c = client();
    let body = payment_ipn(3, "finished");
    let (status, v) = answer(post_np(&c, &relay, &body, "wrong-secret").await).await;
    assert_eq!((status, error_code(&v)), (401, "invalid_signature"));
    let (status, v) = answer(c.post(relay.url("/hooks/nowpayments")).body(body.clone()).send().await.unwrap()).await;
    assert_eq!((status, error_code(&v)), (401, "invalid_signature"), "missing");
    let (status, _) = answer(
        c.post(relay.url("/hooks/nowpayments"))
            .header("x-nowpayments-sig", "not-hex")
            .body(body.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "malformed");
    // The error body never contains the expected signature.
    let expected = nowpayments::sign(NP_SECRET.as_bytes(), body.as_bytes());
    let r = c
        .post(relay.url("/hooks/nowpayments"))
        .header("x-nowpayments-sig", "0".repeat(128))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert!(!r.text().await.unwrap().contains(&expected[..16]));
    // Nothing was stored by any of this.
    assert_eq!(relay.store.event_count().await.unwrap(), 0);
    // A rotated-out secret still listed verifies.
    assert_eq!(post_np(&c, &relay, &body, "old-rotated-secret").await.status(), 200);
}

#[tokio::test]
async fn nova_webhooks_verify_and_stale_ones_are_401() {
    let relay = Relay::start("").await;
    let c = client();
    let fresh = nova_body("deposit.confirmed", "dep_001", &now_rfc3339());
    let (status, v) = answer(post_nova(&c, &relay, &fresh).await).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("accepted")), "{v}");
    let stale = nova_body("deposit.confirmed", "dep_002", "2025-03-06T00:05:00Z");
    let (status, v) = answer(post_nova(&c, &relay, &stale).await).await;
    assert_eq!((status, error_code(&v)), (401, "stale_timestamp"));
    // A forged webhook with a stale timestamp learns only that it is forged.
    let r = c.post(relay.url("/hooks/nova")).header("X-Signature", "ab".repeat(32)).body(stale).send().await.unwrap();
    let (status, v) = answer(r).await;
    assert_eq!((status, error_code(&v)), (401, "invalid_signature"));
    // In-body signature.
    let unsigned = nova_body("payout.completed", "po_1", &now_rfc3339());
    let sig = nova::sign(NOVA_SECRET.as_bytes(), unsigned.as_bytes());
    let signed = format!(r#"{},"signature":"{sig}"}}"#, unsigned.trim_end_matches('}'));
    let (status, v) = answer(c.post(relay.url("/hooks/nova")).body(signed).send().await.unwrap()).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("accepted")), "{v}");
}

#[tokio::test]
async fn signed_but_unusable_bodies_are_400() {
    let relay = Relay::start("").await;
    let c = client();
    let full = payment_ipn(4, "finished");
    let deep = format!(r#"{{"payment_id":1,"payment_status":"waiting","x":{}1{}}}"#, "[".repeat(70), "]".repeat(70));
    let bad = [
        ("truncated", full[..full.len() / 2].to_owned()),
        ("not json", "payment_id=1&status=finished".to_owned()),
        ("duplicate keys", r#"{"payment_id":1,"payment_status":"waiting","payment_status":"finished"}"#.to_owned()),
        ("deep nesting", deep),
        ("wrong field type", r#"{"payment_id":1,"payment_status":["finished"]}"#.to_owned()),
        ("not an object", "[1,2,3]".to_owned()),
    ];
    for (what, body) in bad {
        // Signed over the exact bytes, so only the content is at fault.
        let sig = nowpayments::hex_hmac(NP_SECRET.as_bytes(), body.as_bytes());
        let r =
            c.post(relay.url("/hooks/nowpayments")).header("x-nowpayments-sig", sig).body(body).send().await.unwrap();
        let (status, v) = answer(r).await;
        assert_eq!((status, error_code(&v)), (400, "bad_request"), "{what}: {v}");
    }
    let missing = r#"{"event":"deposit.confirmed","timestamp":"2025-03-06T00:05:00Z"}"#;
    let (status, v) = answer(post_nova(&c, &relay, missing).await).await;
    assert_eq!((status, error_code(&v)), (400, "bad_request"), "nova without data: {v}");
    assert_eq!(relay.store.event_count().await.unwrap(), 0);
}

#[tokio::test]
async fn unrecognised_verified_ipns_are_stored_as_unknown() {
    let relay = Relay::start("").await;
    let c = client();
    let body = std::fs::read_to_string(fixture("nowpayments/docs-custodial-recurring-ipn.json")).unwrap();
    let (status, v) = answer(post_np(&c, &relay, &body, NP_SECRET).await).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("accepted")));
    let id = v["id"].as_str().unwrap();
    let event: serde_json::Value =
        serde_json::from_slice(&relay.store.event(&id.into()).await.unwrap().unwrap().json).unwrap();
    assert_eq!(event["type"], "unknown");
    // `unknown` matches no endpoint here (deposit.* only): stored, no delivery.
    assert!(relay.store.event_deliveries(&id.into()).await.unwrap().is_empty());
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let relay = Relay::start("").await;
    // Headers never finished: the connection is closed after header_read_timeout.
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(b"POST /hooks/nowpayments HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed in time").unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    // Body promised but not sent: 408 after body_read_timeout.
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(b"POST /hooks/nowpayments HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"a\":").await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
}

#[tokio::test]
async fn readiness_reflects_the_store_and_health_is_always_up() {
    let relay = Relay::start("").await;
    let c = client();
    let r = c.get(format!("http://{}/healthz", relay.admin)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(format!("http://{}/readyz", relay.admin)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn shutdown_lets_an_open_request_finish() {
    let mut relay = Relay::start("").await;
    let body = payment_ipn(77, "finished");
    let sig = nowpayments::sign(NP_SECRET.as_bytes(), body.as_bytes());
    // Send the head and half the body, then ask the server to stop.
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    let head = format!(
        "POST /hooks/nowpayments HTTP/1.1\r\nhost: x\r\nx-nowpayments-sig: {sig}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body.as_bytes()[..100]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = tokio::spawn(async move {
        relay.stop().await;
        relay
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are refused once the listener is closed.
    assert!(TcpStream::connect(stopping_addr(&s)).await.is_err());
    s.write_all(&body.as_bytes()[100..]).await.unwrap();
    let answer_head = read_head(&mut s).await;
    assert!(answer_head.starts_with("HTTP/1.1 200"), "{answer_head}");
    assert!(answer_head.contains("\"accepted\""), "{answer_head}");
    let relay = stopping.await.unwrap();
    assert_eq!(relay.store.event_count().await.unwrap(), 1);
}

fn stopping_addr(s: &TcpStream) -> std::net::SocketAddr {
    s.peer_addr().unwrap()
}

/// A real store with one fault injected.
struct FaultyStore(std::sync::Arc<ipn_relay::store::embedded::EmbeddedStore>, Fault);

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// Admissions never finish: what a hung disk looks like from ingress.
    /// (A real hung fsync cannot be produced cheaply in a test.)
    HangAdmit,
    /// Claiming panics: a bug that kills the delivery loop.
    PanicClaim,
}

#[async_trait::async_trait]
impl QuarantineStore for FaultyStore {
    async fn quarantine(&self, items: Vec<QuarantineItem>, max: u64) -> Result<Kept, StoreError> {
        self.0.quarantine(items, max).await
    }
    async fn quarantined(&self, id: &str) -> Result<Option<QuarantineItem>, StoreError> {
        self.0.quarantined(id).await
    }
    async fn list_quarantine(
        &self,
        f: &QuarantineFilter,
        c: Option<&str>,
        l: usize,
    ) -> Result<QuarantinePage, StoreError> {
        self.0.list_quarantine(f, c, l).await
    }
    async fn rediagnose(&self, meta: &Quarantined) -> Result<bool, StoreError> {
        self.0.rediagnose(meta).await
    }
    async fn release_quarantined(&self, ids: &[String]) -> Result<usize, StoreError> {
        self.0.release_quarantined(ids).await
    }
    async fn expire_quarantine(&self, before: u64, limit: usize) -> Result<usize, StoreError> {
        self.0.expire_quarantine(before, limit).await
    }
    async fn quarantine_size(&self) -> Result<QuarantineSize, StoreError> {
        self.0.quarantine_size().await
    }
}

#[async_trait::async_trait]
impl Store for FaultyStore {
    async fn admit(
        &self,
        e: ipn_relay::store::NewEvent,
        d: Vec<ipn_relay::store::NewDelivery>,
        t: u64,
    ) -> Result<ipn_relay::store::Admission, StoreError> {
        if self.1 == Fault::HangAdmit {
            std::future::pending::<()>().await;
        }
        self.0.admit(e, d, t).await
    }
    async fn event(&self, id: &ipn_relay::store::EventId) -> Result<Option<ipn_relay::store::StoredEvent>, StoreError> {
        self.0.event(id).await
    }
    async fn heal_gates(&self, after: Option<String>, limit: usize) -> Result<(usize, Option<String>), StoreError> {
        self.0.heal_gates(after, limit).await
    }
    async fn subject(&self, key: &str) -> Result<Vec<ipn_relay::store::TimelineEntry>, StoreError> {
        self.0.subject(key).await
    }
    async fn event_deliveries(
        &self,
        id: &ipn_relay::store::EventId,
    ) -> Result<Vec<ipn_relay::store::Delivery>, StoreError> {
        self.0.event_deliveries(id).await
    }
    async fn delivery(
        &self,
        id: &ipn_relay::store::DeliveryId,
    ) -> Result<Option<(ipn_relay::store::Delivery, Vec<ipn_relay::store::Attempt>)>, StoreError> {
        self.0.delivery(id).await
    }
    async fn claim_due(&self, e: &str, n: u64, l: usize, v: u64) -> Result<Vec<ipn_relay::store::Claim>, StoreError> {
        if self.1 == Fault::PanicClaim {
            panic!("injected fault: claim_due");
        }
        self.0.claim_due(e, n, l, v).await
    }
    async fn finish(
        &self,
        id: &ipn_relay::store::DeliveryId,
        t: u64,
        a: ipn_relay::store::Attempt,
        n: ipn_relay::store::Next,
    ) -> Result<bool, StoreError> {
        self.0.finish(id, t, a, n).await
    }
    async fn release(&self, id: &ipn_relay::store::DeliveryId, t: u64, d: u64) -> Result<bool, StoreError> {
        self.0.release(id, t, d).await
    }
    async fn list(
        &self,
        f: &ipn_relay::store::DeliveryFilter,
        c: Option<&str>,
        l: usize,
    ) -> Result<ipn_relay::store::Page, StoreError> {
        self.0.list(f, c, l).await
    }
    async fn replay(
        &self,
        ids: &[ipn_relay::store::DeliveryId],
        d: bool,
        n: u64,
    ) -> Result<ipn_relay::store::ReplayCount, StoreError> {
        self.0.replay(ids, d, n).await
    }
    async fn create_replay_job(&self, j: &ipn_relay::store::ReplayJob) -> Result<(), StoreError> {
        self.0.create_replay_job(j).await
    }
    async fn replay_job(&self, id: &str) -> Result<Option<ipn_relay::store::ReplayJob>, StoreError> {
        self.0.replay_job(id).await
    }
    async fn unfinished_replay_jobs(&self) -> Result<Vec<ipn_relay::store::ReplayJob>, StoreError> {
        self.0.unfinished_replay_jobs().await
    }
    async fn replay_step(
        &self,
        j: &ipn_relay::store::ReplayJob,
        ids: &[ipn_relay::store::DeliveryId],
        n: u64,
    ) -> Result<Option<ipn_relay::store::ReplayJob>, StoreError> {
        self.0.replay_step(j, ids, n).await
    }
    async fn sweep(&self, n: u64) -> Result<usize, StoreError> {
        self.0.sweep(n).await
    }
    async fn oldest_open(&self) -> Result<Option<u64>, StoreError> {
        self.0.oldest_open().await
    }
    async fn oldest_open_by_endpoint(&self, scan: usize) -> Result<Vec<(String, u64)>, StoreError> {
        self.0.oldest_open_by_endpoint(scan).await
    }
    async fn counts(&self) -> Result<ipn_relay::store::Counts, StoreError> {
        self.0.counts().await
    }
    async fn reconcile_endpoints(
        &self,
        endpoints: &[String],
        orphan_others: bool,
        now: u64,
    ) -> Result<ipn_relay::store::Reconciled, StoreError> {
        self.0.reconcile_endpoints(endpoints, orphan_others, now).await
    }
    async fn known_endpoints(&self) -> Result<Vec<String>, StoreError> {
        self.0.known_endpoints().await
    }
    async fn discard(
        &self,
        ids: &[ipn_relay::store::DeliveryId],
        reason: &str,
        only: Option<DeliveryState>,
        now: u64,
    ) -> Result<ipn_relay::store::DiscardCount, StoreError> {
        self.0.discard(ids, reason, only, now).await
    }
    async fn purge(
        &self,
        cutoffs: ipn_relay::store::retention::Cutoffs,
        now: u64,
        limit: usize,
    ) -> Result<ipn_relay::store::retention::Purged, StoreError> {
        self.0.purge(cutoffs, now, limit).await
    }
    async fn stats(&self) -> Result<ipn_relay::store::retention::StoreStats, StoreError> {
        self.0.stats().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.0.ping().await
    }
}

#[tokio::test]
async fn a_store_that_stops_answering_gives_503_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.redb");
    let text = config_text(&path, "").replacen("[server]\n", "[server]\nadmission_timeout = \"300ms\"\n", 1);
    let config = std::sync::Arc::new(ipn_relay::config::Config::parse(&text, std::path::Path::new("t.toml")).unwrap());
    let store = std::sync::Arc::new(ipn_relay::store::embedded::EmbeddedStore::open(&path).unwrap());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let sender = ipn_relay::delivery::Sender::new(&config).unwrap();
    let store = std::sync::Arc::new(FaultyStore(store, Fault::HangAdmit));
    tokio::spawn(ipn_relay::server::run(config, store, sender, l, a, std::future::pending()));
    let body = payment_ipn(5, "finished");
    let sig = nowpayments::sign(NP_SECRET.as_bytes(), body.as_bytes());
    let started = std::time::Instant::now();
    let r =
        client().post(format!("http://{addr}/hooks/nowpayments")).header("x-nowpayments-sig", sig).body(body).send();
    let r = tokio::time::timeout(Duration::from_secs(5), r).await.expect("answered, not hung").unwrap();
    assert!(r.headers().contains_key("retry-after"));
    let (status, v) = answer(r).await;
    assert_eq!((status, error_code(&v)), (503, "unavailable"));
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// A part of the relay that dies (here the delivery loop, by a panic the
/// store provokes) stops the whole relay with an error naming it, instead of
/// leaving it to accept callbacks that nothing would deliver.
#[tokio::test]
async fn a_delivery_loop_that_dies_stops_the_relay_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.redb");
    let config = std::sync::Arc::new(
        ipn_relay::config::Config::parse(&config_text(&path, ""), std::path::Path::new("t")).unwrap(),
    );
    let store = std::sync::Arc::new(ipn_relay::store::embedded::EmbeddedStore::open(&path).unwrap());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin) = (l.local_addr().unwrap(), a.local_addr().unwrap());
    let sender = ipn_relay::delivery::Sender::new(&config).unwrap();
    let store = std::sync::Arc::new(FaultyStore(store, Fault::PanicClaim));
    let run = ipn_relay::server::run(config, store, sender, l, a, std::future::pending());
    let result = tokio::time::timeout(Duration::from_secs(20), run).await.expect("the relay stopped by itself");
    let e = result.expect_err("with an error, for a non-zero exit");
    assert!(e.to_string().contains("delivery stopped: the delivery loop of endpoint backend panicked"), "{e}");
    // And it no longer takes callbacks.
    assert!(TcpStream::connect(addr).await.is_err(), "ingress closed");
    assert!(TcpStream::connect(admin).await.is_err(), "admin closed");
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with(&dir.path().join("r.redb"), "max_connections = 2", "").await;
    // Two clients hold both slots with unfinished requests.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(relay.addr).await.unwrap();
        s.write_all(b"POST /hooks/nowpayments HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n").await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A third gets no answer while they hold them...
    let mut third = TcpStream::connect(relay.addr).await.unwrap();
    third.write_all(b"GET /hooks/nowpayments HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 512];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await.is_err(),
        "served over the limit"
    );
    // ...and is served as soon as one leaves.
    drop(held.pop());
    let head = read_head(&mut third).await;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
}

#[tokio::test]
async fn members_the_signature_did_not_cover_are_refused_not_passed_on() {
    let relay = Relay::start("").await;
    let c = client();
    // NOWPayments signs the sorted form, which leaves `__proto__` out; a body
    // that adds one keeps its signature but must not carry it in.
    let body = payment_ipn(91, "waiting");
    let sig = nowpayments::sign(NP_SECRET.as_bytes(), body.as_bytes());
    let top = body.replacen('{', r#"{"__proto__":{"isAdmin":true,"payment_status":"finished"},"#, 1);
    let nested = body.replacen(r#""fee":{"#, r#""fee":{"__proto__":{"payment_status":"finished"},"#, 1);
    for (forged, path) in [(top, "`__proto__`"), (nested, "`fee.__proto__`")] {
        let r = c.post(relay.url("/hooks/nowpayments")).header("x-nowpayments-sig", &sig).body(forged).send().await;
        let (status, v) = answer(r.unwrap()).await;
        assert_eq!((status, error_code(&v)), (400, "unsigned_content"), "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(path), "{v}");
    }
    // Nova's in-body signature over the sorted form: the same rule.
    let plain = nova_body("deposit.confirmed", "dep_proto", &now_rfc3339());
    let unsigned = ipn_relay::canonical::parse(plain.as_bytes()).unwrap();
    let sorted = ipn_relay::canonical::canonical(&unsigned, ipn_relay::canonical::ArrayStyle::Array);
    let nova_sig = nova::sign(NOVA_SECRET.as_bytes(), sorted.as_bytes());
    let forged = plain.replacen(r#""data":{"#, r#""data":{"__proto__":{"amount":"1000000"},"#, 1);
    let forged = format!(r#"{},"signature":"{nova_sig}"}}"#, forged.strip_suffix('}').unwrap());
    let (status, v) = answer(c.post(relay.url("/hooks/nova")).body(forged).send().await.unwrap()).await;
    assert_eq!((status, error_code(&v)), (400, "unsigned_content"), "{v}");
    assert_eq!(relay.store.event_count().await.unwrap(), 0, "nothing unsigned was stored");

    // The same bodies without the extra member are accepted.
    let (status, v) = answer(post_np(&c, &relay, &body, NP_SECRET).await).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("accepted")), "{v}");
    let stored = relay.store.event(&v["id"].as_str().unwrap().into()).await.unwrap().unwrap();
    assert!(!String::from_utf8_lossy(&stored.json).contains("__proto__"));
}

/// Clients that connect and send half a request line, then nothing: more of
/// them than either listener's connection cap must not lock out a health
/// check or a provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_half_requests_does_not_starve_health_checks_or_providers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.redb");
    // Production's header timeout, so that waiting it out would show.
    let text = config_text(&path, "").replace("header_read_timeout = \"1s\"", "header_read_timeout = \"10s\"");
    let text = text.replacen("[server]\n", "[server]\nmax_connections = 64\n", 1);
    let relay = Relay::start_text(&path, &text).await;
    let c = client();
    let mut flood = Vec::new();
    let mut took = Vec::new();
    for addr in [relay.admin, relay.addr] {
        for _ in 0..300 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /hea").await.unwrap();
            flood.push(s);
        }
        let started = std::time::Instant::now();
        let status = if addr == relay.admin {
            let r = c.get(format!("http://{}/healthz", relay.admin)).send();
            tokio::time::timeout(Duration::from_secs(5), r)
                .await
                .expect("healthz answered under the flood")
                .unwrap()
                .status()
        } else {
            let body = payment_ipn(77, "finished");
            let r = post_np(&c, &relay, &body, NP_SECRET);
            tokio::time::timeout(Duration::from_secs(5), r).await.expect("a provider answered under the flood").status()
        };
        assert_eq!(status, 200);
        took.push(started.elapsed());
    }
    // Generous against a noisy machine; waiting out header timeouts took 13 s.
    assert!(took.iter().all(|t| *t < Duration::from_secs(2)), "{took:?}");
    // The flood's connections were closed to make room, not served.
    let mut closed = 0;
    for mut s in flood {
        let mut buf = [0u8; 64];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert!(closed >= 2, "at least the two evicted to make room were closed: {closed}");
}

/// Subtler holds on a listener: keep-alive connections that send a cheap
/// request now and then, and request bodies sent a byte at a time. Neither
/// may lock out a health check or a provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_pokes_and_trickled_bodies_do_not_starve_the_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.redb");
    let text = config_text(&path, "").replace("header_read_timeout = \"1s\"", "header_read_timeout = \"10s\"");
    let text = text.replace("body_read_timeout = \"1s\"", "body_read_timeout = \"30s\"");
    let text = text.replacen("[server]\n", "[server]\nmax_connections = 64\n", 1);
    let relay = Relay::start_text(&path, &text).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    // 70 keep-alive connections to the admin listener, each asking for
    // /healthz twice a second; 70 to ingress, each trickling a body.
    for _ in 0..70 {
        let (admin, poke_stop) = (relay.admin, stop.clone());
        attackers.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(admin).await else { return };
            while !poke_stop.load(std::sync::atomic::Ordering::Relaxed) {
                if s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.is_err() {
                    return;
                }
                let mut buf = [0u8; 512];
                if !matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
        let (addr, trickle_stop) = (relay.addr, stop.clone());
        attackers.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(addr).await else { return };
            let head = "POST /hooks/nowpayments HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n";
            if s.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            while !trickle_stop.load(std::sync::atomic::Ordering::Relaxed) {
                if s.write_all(b"{").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = client();
    let mut took = Vec::new();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let r = c.get(format!("http://{}/healthz", relay.admin)).send();
        let r = tokio::time::timeout(Duration::from_secs(5), r).await.expect("healthz answered").unwrap();
        assert_eq!(r.status(), 200);
        took.push(started.elapsed());
        let started = std::time::Instant::now();
        let body = payment_ipn(78 + took.len() as u64, "finished");
        let r = tokio::time::timeout(Duration::from_secs(5), post_np(&c, &relay, &body, NP_SECRET))
            .await
            .expect("a provider answered");
        assert_eq!(r.status(), 200);
        took.push(started.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(took.iter().all(|t| *t < Duration::from_secs(2)), "{took:?}");
}
