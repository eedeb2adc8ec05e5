//! One conformance suite for every `Store` backend. Each test body is generic
//! over the store; each backend instantiates every body.

use std::sync::Arc;

use ipn_relay::replay;
use ipn_relay::store::embedded::EmbeddedStore;
use ipn_relay::store::{
    Admission, Attempt, AttemptResult, DeliveryFilter, DeliveryId, DeliveryState, LIST_SCAN_LIMIT, NewDelivery,
    NewEvent, Next, Store,
};

pub(crate) const TTL: u64 = 1_000;

/// The endpoints a replay may send to in these tests.
pub(crate) fn endpoints() -> Vec<String> {
    vec!["be".into(), "audit".into()]
}

pub(crate) fn metrics() -> Arc<ipn_relay::metrics::Metrics> {
    ipn_relay::metrics::Metrics::with_names(&[], &[]).unwrap()
}
/// A time long after every other in these tests: year 2255, in ms.
pub(crate) const FAR_FUTURE: u64 = 9_000_000_000_000;
pub(crate) const VIS: u64 = 500;

pub(crate) fn event(id: &str, source: &str, event_type: &str, at: u64) -> NewEvent {
    NewEvent {
        id: id.into(),
        source: source.into(),
        event_type: event_type.into(),
        received_at: at,
        json: format!(r#"{{"id":"{id}","type":"{event_type}"}}"#).into_bytes(),
        subject: None,
    }
}

pub(crate) fn deliveries(at: u64, endpoints: &[&str]) -> Vec<NewDelivery> {
    endpoints
        .iter()
        .map(|e| NewDelivery { id: DeliveryId::new(at), endpoint: (*e).into(), policy: Default::default() })
        .collect()
}

pub(crate) fn attempt(at: u64, code: u16) -> Attempt {
    Attempt {
        number: 0,
        started_at: at,
        duration_ms: 3,
        result: AttemptResult::Status { code },
        response_excerpt: Some("body".into()),
    }
}

async fn admit_stores_event_and_deliveries(s: Arc<impl Store>) {
    let r = s
        .admit(event("evt_a", "np", "deposit.confirmed", 1000), deliveries(1000, &["be", "audit"]), TTL)
        .await
        .unwrap();
    assert_eq!(r, Admission::Accepted { regression: false });
    let stored = s.event(&"evt_a".into()).await.unwrap().unwrap();
    assert_eq!(stored.json, br#"{"id":"evt_a","type":"deposit.confirmed"}"#);
    let ds = s.event_deliveries(&"evt_a".into()).await.unwrap();
    assert_eq!(ds.len(), 2);
    assert!(ds.iter().all(|d| d.state == DeliveryState::Pending && d.attempts == 0 && d.next_attempt_at == Some(1000)));
    let mut eps: Vec<_> = ds.iter().map(|d| d.endpoint.as_str()).collect();
    eps.sort();
    assert_eq!(eps, ["audit", "be"]);
    assert!(s.event(&"evt_missing".into()).await.unwrap().is_none());
}

async fn event_without_endpoints_is_still_stored(s: Arc<impl Store>) {
    assert_eq!(
        s.admit(event("evt_lonely", "np", "unknown", 1000), vec![], TTL).await.unwrap(),
        Admission::Accepted { regression: false }
    );
    assert!(s.event(&"evt_lonely".into()).await.unwrap().is_some());
    assert!(s.event_deliveries(&"evt_lonely".into()).await.unwrap().is_empty());
}

async fn dedupe_holds_for_the_ttl_then_expires(s: Arc<impl Store>) {
    assert_eq!(
        s.admit(event("evt_d", "np", "t.t", 1000), deliveries(1000, &["be"]), TTL).await.unwrap(),
        Admission::Accepted { regression: false }
    );
    // A duplicate writes nothing: still one delivery.
    assert_eq!(
        s.admit(event("evt_d", "np", "t.t", 1999), deliveries(1999, &["be"]), TTL).await.unwrap(),
        Admission::Duplicate
    );
    assert_eq!(s.event_deliveries(&"evt_d".into()).await.unwrap().len(), 1);
    // At expiry the same callback is new again (same event id, new delivery).
    assert_eq!(
        s.admit(event("evt_d", "np", "t.t", 2000), deliveries(2000, &["be"]), TTL).await.unwrap(),
        Admission::Accepted { regression: false }
    );
    assert_eq!(s.event_deliveries(&"evt_d".into()).await.unwrap().len(), 2);
    assert_eq!(s.admit(event("evt_d", "np", "t.t", 2500), vec![], TTL).await.unwrap(), Admission::Duplicate);
}

async fn sweep_removes_only_expired_keys(s: Arc<impl Store>) {
    s.admit(event("evt_s1", "np", "t.t", 1000), vec![], TTL).await.unwrap();
    s.admit(event("evt_s2", "np", "t.t", 5000), vec![], TTL).await.unwrap();
    assert_eq!(s.sweep(2001).await.unwrap(), 1);
    assert_eq!(s.sweep(2001).await.unwrap(), 0);
    // evt_s2's key is live: still a duplicate. evt_s1's was swept: new.
    assert_eq!(s.admit(event("evt_s2", "np", "t.t", 5500), vec![], TTL).await.unwrap(), Admission::Duplicate);
    assert_eq!(
        s.admit(event("evt_s1", "np", "t.t", 5500), vec![], TTL).await.unwrap(),
        Admission::Accepted { regression: false }
    );
}

async fn concurrent_admissions_of_one_event_accept_once(s: Arc<impl Store>) {
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                s.admit(event("evt_c", "np", "t.t", 1000), deliveries(1000, &["be"]), TTL).await.unwrap()
            })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        if t.await.unwrap() == (Admission::Accepted { regression: false }) {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 1);
    assert_eq!(s.event_deliveries(&"evt_c".into()).await.unwrap().len(), 1);
}

async fn claims_are_exclusive_until_the_visibility_timeout(s: Arc<impl Store>) {
    s.admit(event("evt_v", "np", "t.t", 1000), deliveries(1000, &["be", "be", "be"]), TTL).await.unwrap();
    assert!(s.claim_due("be", 999, 10, VIS).await.unwrap().is_empty(), "not due yet");
    let first = s.claim_due("be", 1000, 2, VIS).await.unwrap();
    assert_eq!(first.len(), 2, "limit respected");
    assert!(first.iter().all(|c| c.event_json.starts_with(br#"{"id":"evt_v""#)));
    let second = s.claim_due("be", 1001, 10, VIS).await.unwrap();
    assert_eq!(second.len(), 1, "only the unclaimed one");
    assert!(s.claim_due("be", 1400, 10, VIS).await.unwrap().is_empty(), "claims are held");
    // Past the deadline the claims return, with a new token.
    let again = s.claim_due("be", 1000 + VIS, 10, VIS).await.unwrap();
    assert_eq!(again.len(), 2);
    let old = &first[0].delivery;
    let new = again.iter().find(|c| c.delivery.id == old.id).unwrap();
    assert_ne!(new.delivery.claim_token, old.claim_token);
    // The expired claim can no longer finish; the new one can.
    assert!(!s.finish(&old.id, old.claim_token, attempt(1600, 200), Next::Delivered).await.unwrap());
    assert!(s.finish(&old.id, new.delivery.claim_token, attempt(1600, 200), Next::Delivered).await.unwrap());
    let (d, attempts) = s.delivery(&old.id).await.unwrap().unwrap();
    assert_eq!(d.state, DeliveryState::Delivered);
    assert_eq!(attempts.len(), 1);
}

async fn claims_are_per_endpoint(s: Arc<impl Store>) {
    s.admit(event("evt_e", "np", "t.t", 1000), deliveries(1000, &["a", "b"]), TTL).await.unwrap();
    let a = s.claim_due("a", 1000, 10, VIS).await.unwrap();
    assert_eq!(a.iter().map(|c| c.delivery.endpoint.as_str()).collect::<Vec<_>>(), ["a"]);
    assert!(s.claim_due("a", 1000, 10, VIS).await.unwrap().is_empty());
    assert!(s.claim_due("nope", 1000, 10, VIS).await.unwrap().is_empty());
    let b = s.claim_due("b", 1000, 10, VIS).await.unwrap();
    assert_eq!(b.iter().map(|c| c.delivery.endpoint.as_str()).collect::<Vec<_>>(), ["b"]);
}

async fn retries_are_scheduled_and_dead_is_final(s: Arc<impl Store>) {
    s.admit(event("evt_r", "np", "t.t", 1000), deliveries(1000, &["be"]), TTL).await.unwrap();
    let c = s.claim_due("be", 1000, 10, VIS).await.unwrap().remove(0);
    let id = c.delivery.id.clone();
    assert!(s.finish(&id, c.delivery.claim_token, attempt(1000, 500), Next::RetryAt(3000)).await.unwrap());
    let (d, _) = s.delivery(&id).await.unwrap().unwrap();
    assert_eq!((d.state, d.attempts, d.next_attempt_at), (DeliveryState::Pending, 1, Some(3000)));
    assert_eq!(d.last_error.as_deref(), Some("HTTP 500"));
    assert!(s.claim_due("be", 2999, 10, VIS).await.unwrap().is_empty());
    let c = s.claim_due("be", 3000, 10, VIS).await.unwrap().remove(0);
    let failed = Attempt {
        result: AttemptResult::Error { class: "timeout".into(), detail: "after 10s".into() },
        ..attempt(3000, 0)
    };
    assert!(s.finish(&id, c.delivery.claim_token, failed, Next::Dead).await.unwrap());
    let (d, attempts) = s.delivery(&id).await.unwrap().unwrap();
    assert_eq!((d.state, d.attempts, d.next_attempt_at), (DeliveryState::Dead, 2, None));
    assert_eq!(attempts.iter().map(|a| a.number).collect::<Vec<_>>(), [1, 2]);
    assert!(matches!(&attempts[1].result, AttemptResult::Error { class, .. } if class == "timeout"));
    assert!(s.claim_due("be", FAR_FUTURE, 10, VIS).await.unwrap().is_empty(), "dead is never claimed");
}

async fn release_returns_a_claim_without_counting_an_attempt(s: Arc<impl Store>) {
    s.admit(event("evt_rel", "np", "t.t", 1000), deliveries(1000, &["be"]), TTL).await.unwrap();
    let c = s.claim_due("be", 1000, 10, VIS).await.unwrap().remove(0);
    assert!(s.release(&c.delivery.id, c.delivery.claim_token, 1000).await.unwrap());
    let (d, attempts) = s.delivery(&c.delivery.id).await.unwrap().unwrap();
    assert_eq!((d.state, d.attempts, attempts.len()), (DeliveryState::Pending, 0, 0));
    assert!(!s.release(&c.delivery.id, c.delivery.claim_token, 1000).await.unwrap(), "a released claim is gone");
    assert_eq!(s.claim_due("be", 1000, 10, VIS).await.unwrap().len(), 1);
}

async fn list_filters_and_pages_newest_first(s: Arc<impl Store>) {
    for i in 0..7u64 {
        let (src, ty) = if i % 2 == 0 { ("np", "deposit.confirmed") } else { ("nova", "payout.failed") };
        s.admit(event(&format!("evt_l{i}"), src, ty, 1000 + i * 10), deliveries(1000 + i * 10, &["be"]), TTL)
            .await
            .unwrap();
    }
    let all = s.list(&DeliveryFilter::default(), None, 100).await.unwrap();
    assert_eq!(all.items.len(), 7);
    assert!(all.items.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    assert_eq!(all.next_cursor, None);

    let f = DeliveryFilter { source: Some("np".into()), ..Default::default() };
    let p1 = s.list(&f, None, 3).await.unwrap();
    assert_eq!(p1.items.len(), 3);
    // A state change between pages must not shift the cursor.
    let c = s.claim_due("be", FAR_FUTURE, 100, VIS).await.unwrap();
    assert_eq!(c.len(), 7);
    let p2 = s.list(&f, p1.next_cursor.as_deref(), 3).await.unwrap();
    assert_eq!(p2.items.len(), 1);
    assert_eq!(p2.next_cursor, None);
    let seen: Vec<_> = p1.items.iter().chain(&p2.items).map(|d| d.event_id.clone()).collect();
    assert_eq!(seen, ["evt_l6", "evt_l4", "evt_l2", "evt_l0"]);

    let f = DeliveryFilter {
        event_type: Some("payout.failed".into()),
        since: Some(1015),
        until: Some(1051),
        ..Default::default()
    };
    let got: Vec<_> = s.list(&f, None, 10).await.unwrap().items.into_iter().map(|d| d.event_id).collect();
    assert_eq!(got, ["evt_l5", "evt_l3"]);
    let f =
        DeliveryFilter { state: Some(DeliveryState::InFlight), endpoint: Some("nope".into()), ..Default::default() };
    assert!(s.list(&f, None, 10).await.unwrap().items.is_empty());
}

async fn replay_resets_the_budget_and_keeps_history(s: Arc<impl Store>) {
    s.admit(event("evt_p", "np", "t.t", 1000), deliveries(1000, &["be", "be", "be"]), TTL).await.unwrap();
    let claims = s.claim_due("be", 1000, 10, VIS).await.unwrap();
    let [a, b, c] = [&claims[0].delivery, &claims[1].delivery, &claims[2].delivery];
    s.finish(&a.id, a.claim_token, attempt(1000, 500), Next::Dead).await.unwrap();
    s.finish(&b.id, b.claim_token, attempt(1000, 200), Next::Delivered).await.unwrap();
    let ids = vec![a.id.clone(), a.id.clone(), b.id.clone(), c.id.clone(), "dlv_nope".into()];
    let r = s.replay(&ids, false, 2000).await.unwrap();
    assert_eq!((r.replayed, r.skipped, r.not_found), (1, 2, 1), "a replayed once; b delivered and c in flight skipped");
    let (d, attempts) = s.delivery(&a.id).await.unwrap().unwrap();
    assert_eq!((d.state, d.attempts, d.budget_start, d.attempts_in_budget()), (DeliveryState::Pending, 1, 1, 0));
    assert_eq!(attempts.len(), 1, "history kept");
    assert_eq!(s.replay(std::slice::from_ref(&b.id), true, 2000).await.unwrap().replayed, 1, "delivered on request");
    let claimed: Vec<_> = s.claim_due("be", 2000, 10, VIS).await.unwrap().into_iter().map(|c| c.delivery.id).collect();
    assert!(claimed.contains(&a.id) && claimed.contains(&b.id));
}

async fn oldest_open_is_the_oldest_pending_or_in_flight(s: Arc<impl Store>) {
    assert_eq!(s.oldest_open().await.unwrap(), None);
    s.admit(event("evt_o1", "np", "t.t", 1000), deliveries(1000, &["be"]), TTL).await.unwrap();
    s.admit(event("evt_o2", "np", "t.t", 2000), deliveries(2000, &["be"]), TTL).await.unwrap();
    assert_eq!(s.oldest_open().await.unwrap(), Some(1000));
    // In flight still counts; a retry too; delivered or dead does not.
    let c = s.claim_due("be", 1000, 1, VIS).await.unwrap().remove(0).delivery;
    assert_eq!(s.oldest_open().await.unwrap(), Some(1000));
    s.finish(&c.id, c.claim_token, attempt(1000, 500), Next::RetryAt(1500)).await.unwrap();
    assert_eq!(s.oldest_open().await.unwrap(), Some(1000));
    let c = s.claim_due("be", 1500, 1, VIS).await.unwrap().remove(0).delivery;
    s.finish(&c.id, c.claim_token, attempt(1500, 500), Next::Dead).await.unwrap();
    assert_eq!(s.oldest_open().await.unwrap(), Some(2000));
    // A replay opens it again.
    s.replay(std::slice::from_ref(&c.id), false, 3000).await.unwrap();
    assert_eq!(s.oldest_open().await.unwrap(), Some(1000));
}

async fn oldest_open_by_endpoint_names_each_endpoints_oldest_open_delivery(s: Arc<impl Store>) {
    assert_eq!(s.oldest_open_by_endpoint(100).await.unwrap(), []);
    s.admit(event("evt_p1", "np", "t.t", 1000), deliveries(1000, &["be"]), TTL).await.unwrap();
    s.admit(event("evt_p2", "np", "t.t", 2000), deliveries(2000, &["be", "ledger"]), TTL).await.unwrap();
    s.admit(event("evt_p3", "np", "t.t", 3000), deliveries(3000, &["audit"]), TTL).await.unwrap();
    let all = s.oldest_open_by_endpoint(100).await.unwrap();
    assert_eq!(all, [("be".to_owned(), 1000), ("ledger".to_owned(), 2000), ("audit".to_owned(), 3000)]);
    // Only the `scan` oldest are looked at.
    assert_eq!(s.oldest_open_by_endpoint(1).await.unwrap(), [("be".to_owned(), 1000)]);
    // In flight is still open; dead is not.
    let c = s.claim_due("be", 1000, 1, VIS).await.unwrap().remove(0).delivery;
    assert_eq!(s.oldest_open_by_endpoint(100).await.unwrap()[0], ("be".to_owned(), 1000));
    s.finish(&c.id, c.claim_token, attempt(1000, 500), Next::Dead).await.unwrap();
    let mut all = s.oldest_open_by_endpoint(100).await.unwrap();
    // Oldest first; two of the same millisecond in either order.
    assert_eq!(all.pop(), Some(("audit".to_owned(), 3000)));
    all.sort();
    assert_eq!(all, [("be".to_owned(), 2000), ("ledger".to_owned(), 2000)]);
}

async fn counts_follow_state_changes(s: Arc<impl Store>) {
    s.admit(event("evt_n", "np", "t.t", 1000), deliveries(1000, &["be", "be"]), TTL).await.unwrap();
    let c = s.claim_due("be", 1000, 1, VIS).await.unwrap().remove(0);
    s.finish(&c.delivery.id, c.delivery.claim_token, attempt(1000, 500), Next::Dead).await.unwrap();
    let counts = s.counts().await.unwrap();
    assert_eq!(counts.map(|(_, n)| n), [1, 0, 0, 1, 0, 0, 0]);
}

/// `n` deliveries to `be`, one event each, all dead; ids newest first.
async fn dead_deliveries(s: &Arc<impl Store>, n: u64) -> Vec<DeliveryId> {
    for i in 0..n {
        s.admit(event(&format!("evt_r{i}"), "np", "t.t", 1000 + i), deliveries(1000 + i, &["be"]), TTL).await.unwrap();
    }
    let claims = s.claim_due("be", FAR_FUTURE, n as usize, VIS).await.unwrap();
    assert_eq!(claims.len() as u64, n);
    for c in &claims {
        assert!(s.finish(&c.delivery.id, c.delivery.claim_token, attempt(1000, 500), Next::Dead).await.unwrap());
    }
    let mut ids: Vec<DeliveryId> = claims.into_iter().map(|c| c.delivery.id).collect();
    ids.sort_by(|a, b| b.cmp(a));
    ids
}

async fn replay_job_steps_commit_in_order_and_resume(s: Arc<impl Store>) {
    let ids = dead_deliveries(&s, 25).await;
    let filter = DeliveryFilter { state: Some(DeliveryState::Dead), ..Default::default() };
    let job = replay::create(s.as_ref(), filter, false, 1000, None).await.unwrap();
    let first = replay::step(s.as_ref(), &job, 10, &endpoints()).await.unwrap().expect("first step commits");
    assert_eq!((first.steps, first.considered, first.replayed, first.finished), (1, 10, 10, false));
    assert_eq!(first.cursor.as_deref(), Some(ids[9].as_str()), "the cursor is below the batch");
    // A second runner holding the job as it was cannot commit the same step.
    assert_eq!(replay::step(s.as_ref(), &job, 10, &endpoints()).await.unwrap(), None);
    // After a restart the job is found unfinished and resumed where it was.
    let unfinished = s.unfinished_replay_jobs().await.unwrap();
    assert_eq!(unfinished, vec![first.clone()]);
    let done = replay::run(s.as_ref(), unfinished[0].clone(), 10, &endpoints(), &metrics()).await.unwrap();
    assert_eq!((done.considered, done.replayed, done.skipped, done.finished, done.truncated), (25, 25, 0, true, false));
    assert!(s.unfinished_replay_jobs().await.unwrap().is_empty());
    assert_eq!(s.replay_job(&job.id).await.unwrap(), Some(done));
    for id in &ids {
        let (d, history) = s.delivery(&id.as_str().into()).await.unwrap().unwrap();
        assert_eq!((d.state, d.budget_start, history.len()), (DeliveryState::Pending, 1, 1), "{id} replayed once");
    }
    // A finished job takes no more steps.
    let stale = replay::step(s.as_ref(), &first, 10, &endpoints()).await.unwrap();
    assert_eq!(stale, None);
}

async fn replay_job_never_visits_a_delivery_twice(s: Arc<impl Store>) {
    let ids = dead_deliveries(&s, 12).await;
    let filter = DeliveryFilter { state: Some(DeliveryState::Dead), ..Default::default() };
    let job = replay::create(s.as_ref(), filter, false, 1000, None).await.unwrap();
    let job = replay::step(s.as_ref(), &job, 5, &endpoints()).await.unwrap().unwrap();
    // The replayed batch fails again and is dead again, so it matches the
    // filter again; the job must not replay it a second time.
    let again = s.claim_due("be", FAR_FUTURE, 100, VIS).await.unwrap();
    assert_eq!(again.len(), 5);
    for c in &again {
        s.finish(&c.delivery.id, c.delivery.claim_token, attempt(1000, 500), Next::Dead).await.unwrap();
    }
    let done = replay::run(s.as_ref(), job, 5, &endpoints(), &metrics()).await.unwrap();
    assert_eq!((done.replayed, done.considered), (12, 12));
    for id in &ids[..5] {
        let d = s.delivery(&id.as_str().into()).await.unwrap().unwrap().0;
        assert_eq!((d.state, d.attempts), (DeliveryState::Dead, 2), "{id} left dead after its one replay");
    }
    for id in &ids[5..] {
        assert_eq!(s.delivery(&id.as_str().into()).await.unwrap().unwrap().0.state, DeliveryState::Pending);
    }
}

async fn replay_job_is_bounded(s: Arc<impl Store>) {
    dead_deliveries(&s, 9).await;
    let filter = DeliveryFilter { state: Some(DeliveryState::Dead), ..Default::default() };
    let job = replay::create(s.as_ref(), filter.clone(), false, 4, None).await.unwrap();
    let done = replay::run(s.as_ref(), job, 200, &endpoints(), &metrics()).await.unwrap();
    assert_eq!((done.replayed, done.finished, done.truncated), (4, true, true));
    assert_eq!(s.list(&filter, None, 100).await.unwrap().items.len(), 5, "the rest are still dead");
}

async fn a_truncated_replay_job_continues_exactly_at_its_cursor(s: Arc<impl Store>) {
    // Eleven dead deliveries created in one millisecond: a continuation by
    // time could only skip or repeat some of them; by cursor it cannot.
    s.admit(event("evt_ms", "np", "t.t", 5000), deliveries(5000, &["be"; 11]), TTL).await.unwrap();
    let claims = s.claim_due("be", FAR_FUTURE, 100, VIS).await.unwrap();
    assert_eq!(claims.len(), 11);
    for c in &claims {
        s.finish(&c.delivery.id, c.delivery.claim_token, attempt(5000, 500), Next::Dead).await.unwrap();
    }
    let filter = DeliveryFilter { state: Some(DeliveryState::Dead), ..Default::default() };
    let mut replayed = std::collections::HashSet::new();
    let mut cursor = None;
    let mut jobs = 0;
    loop {
        let job = replay::create(s.as_ref(), filter.clone(), false, 4, cursor.clone()).await.unwrap();
        let done = replay::run(s.as_ref(), job, 3, &endpoints(), &metrics()).await.unwrap();
        jobs += 1;
        assert_eq!(done.replayed, done.considered, "every considered delivery was dead");
        // Replayed ones fail again and are dead again before the next job:
        // only the cursor keeps that job from replaying them a second time.
        for c in s.claim_due("be", FAR_FUTURE, 100, VIS).await.unwrap() {
            assert!(replayed.insert(c.delivery.id.clone()), "{} replayed twice", c.delivery.id);
            s.finish(&c.delivery.id, c.delivery.claim_token, attempt(5000, 500), Next::Dead).await.unwrap();
        }
        if !done.truncated {
            break;
        }
        cursor = done.cursor.clone();
        assert!(cursor.is_some(), "a truncated job says where to go on");
    }
    assert_eq!(replayed.len(), 11, "every one replayed once, in {jobs} jobs");
    let dead = s.list(&filter, None, 100).await.unwrap().items;
    assert_eq!(dead.len(), 11);
    assert!(dead.iter().all(|d| d.attempts == 2 && d.budget_start == 1), "each replayed once");
}

async fn listing_by_state_reads_only_deliveries_in_that_state(s: Arc<impl Store>) {
    // One dead delivery under more pending ones than a page examines: the
    // state's own index finds it, and says nothing is left.
    let ids = dead_deliveries(&s, 1).await;
    let many = LIST_SCAN_LIMIT as u64 + 100;
    let ds: Vec<NewDelivery> = (0..many)
        .map(|_| NewDelivery { id: DeliveryId::new(9000), endpoint: "be".into(), policy: Default::default() })
        .collect();
    s.admit(event("evt_busy", "np", "t.t", 9000), ds, TTL).await.unwrap();
    for (state, n) in [(DeliveryState::Dead, 1), (DeliveryState::Orphaned, 0), (DeliveryState::Delivered, 0)] {
        let p = s.list(&DeliveryFilter { state: Some(state), ..Default::default() }, None, 10).await.unwrap();
        if state == DeliveryState::Delivered {
            // No index: a page may end at the scan limit, with a cursor.
            assert!(p.items.is_empty());
            continue;
        }
        assert_eq!((p.items.len(), p.next_cursor.is_none()), (n, true), "{state:?}");
    }
    let p = s.list(&DeliveryFilter { state: Some(DeliveryState::Dead), ..Default::default() }, None, 10).await.unwrap();
    assert_eq!(p.items[0].id, ids[0]);
    let pending = DeliveryFilter { state: Some(DeliveryState::Pending), ..Default::default() };
    let p = s.list(&pending, None, 7).await.unwrap();
    assert_eq!(p.items.len(), 7);
    // Replayed, it leaves the dead index.
    assert_eq!(s.replay(&ids, false, 9500).await.unwrap().replayed, 1);
    let p = s.list(&DeliveryFilter { state: Some(DeliveryState::Dead), ..Default::default() }, None, 10).await.unwrap();
    assert_eq!((p.items.len(), p.next_cursor), (0, None));
}

async fn deliveries_to_a_removed_endpoint_are_orphaned_and_taken_back(s: Arc<impl Store>) {
    let orphaned = DeliveryFilter { state: Some(DeliveryState::Orphaned), ..Default::default() };
    s.admit(event("evt_o", "np", "t.t", 1000), deliveries(1000, &["be", "gone", "gone", "gone"]), TTL).await.unwrap();
    let both = ["be".to_owned(), "gone".to_owned()];
    let only_be = ["be".to_owned()];
    // Configured with both: nothing to do, and both are remembered.
    assert_eq!(s.reconcile_endpoints(&both, true, 1000).await.unwrap(), Default::default());
    assert_eq!(s.known_endpoints().await.unwrap(), both.to_vec());
    // One `gone` delivery is being sent when the endpoint disappears.
    let held = s.claim_due("gone", 1000, 1, VIS).await.unwrap().remove(0);
    let found = s.reconcile_endpoints(&only_be, true, 1200).await.unwrap();
    assert_eq!(found.orphaned, vec![("gone".to_owned(), 2)], "the live claim is left to end");
    assert!(found.adopted.is_empty());
    let counts = s.counts().await.unwrap().map(|(_, n)| n);
    assert_eq!(counts, [1, 1, 0, 0, 0, 0, 2]);
    assert_eq!(s.list(&orphaned, None, 10).await.unwrap().items.len(), 2);
    let by_name = DeliveryFilter { endpoint: Some("gone".into()), ..orphaned.clone() };
    let page = s.list(&by_name, None, 10).await.unwrap();
    // They keep the time they were due.
    assert!(page.items.iter().all(|d| d.state == DeliveryState::Orphaned && d.next_attempt_at == Some(1000)));
    // Orphaned deliveries are never claimed; the held one finishes as usual.
    let again = s.claim_due("gone", FAR_FUTURE, 10, VIS).await.unwrap();
    assert_eq!(again.len(), 1, "only the claim that expired");
    let c = &again[0];
    assert_ne!(c.delivery.claim_token, held.delivery.claim_token);
    // It fails and backs off until 5000.
    assert!(s.finish(&c.delivery.id, c.delivery.claim_token, attempt(1300, 500), Next::RetryAt(5000)).await.unwrap());
    // At the next start the retried one is orphaned too.
    assert_eq!(s.reconcile_endpoints(&only_be, true, 1500).await.unwrap().orphaned, vec![("gone".to_owned(), 3)]);
    // An operator ends one; it is discarded with the reason, its history kept.
    let first = s.list(&by_name, None, 10).await.unwrap().items.into_iter().find(|d| d.id != c.delivery.id).unwrap();
    let ids = [first.id.clone(), DeliveryId::from("dlv_000000000000ffffffffffffffff")];
    let count = s.discard(&ids, "endpoint removed", None, 1600).await.unwrap();
    assert_eq!((count.discarded, count.skipped, count.in_flight, count.not_found), (1, 0, 0, 1));
    let (d, _) = s.delivery(&first.id).await.unwrap().unwrap();
    assert_eq!((d.state, d.discard_reason.as_deref()), (DeliveryState::Discarded, Some("endpoint removed")));
    let discarded = DeliveryFilter { state: Some(DeliveryState::Discarded), ..Default::default() };
    assert_eq!(s.list(&discarded, None, 10).await.unwrap().items.len(), 1);
    // Configured again, the rest come back, due at once; the orphaning pass
    // of a relay without it does not count as taking them back.
    let found = s.reconcile_endpoints(&both, false, 2000).await.unwrap();
    assert_eq!((found.orphaned, found.adopted), (vec![], vec![("gone".to_owned(), 2)]));
    assert_eq!(s.list(&orphaned, None, 10).await.unwrap().items.len(), 0);
    // The one whose backoff has run out is due now; the other still waits
    // out its backoff, as if it had never been orphaned.
    let now = s.claim_due("gone", 2000, 10, 10_000).await.unwrap();
    assert_eq!(now.len(), 1);
    assert_ne!(now[0].delivery.id, c.delivery.id);
    let later = s.claim_due("gone", 5000, 10, VIS).await.unwrap();
    assert_eq!(later.iter().map(|c| c.delivery.id.as_str()).collect::<Vec<_>>(), [c.delivery.id.as_str()]);
    assert_eq!(s.counts().await.unwrap().map(|(_, n)| n), [1, 2, 0, 0, 1, 0, 0]);
}

async fn discard_closes_waiting_and_dead_deliveries_and_replay_reopens_them(s: Arc<impl Store>) {
    s.admit(event("evt_x", "np", "t.t", 1000), deliveries(1000, &["be", "be", "be", "be"]), TTL).await.unwrap();
    let mut claims = s.claim_due("be", 1000, 3, VIS).await.unwrap();
    let held = claims.pop().unwrap();
    let (dead, delivered) = (claims.remove(0), claims.remove(0));
    let d = &dead.delivery;
    assert!(s.finish(&d.id, d.claim_token, attempt(1010, 500), Next::Dead).await.unwrap());
    let d = &delivered.delivery;
    assert!(s.finish(&d.id, d.claim_token, attempt(1010, 200), Next::Delivered).await.unwrap());
    let waiting = s.list(&DeliveryFilter::default(), None, 10).await.unwrap();
    let waiting = waiting.items.into_iter().find(|d| d.state == DeliveryState::Pending).unwrap();
    let missing = DeliveryId::from("dlv_000000000000ffffffffffffffff");
    let (dead, delivered, held) = (dead.delivery, delivered.delivery, held.delivery);

    // Dead and pending ones close; a live claim, a delivered one and an
    // unknown id are counted apart; an id named twice counts once.
    let ids = [dead.id.clone(), waiting.id.clone(), held.id.clone(), delivered.id.clone(), dead.id.clone(), missing];
    let count = s.discard(&ids, "refunded by hand", None, 1100).await.unwrap();
    assert_eq!((count.discarded, count.skipped, count.in_flight, count.not_found), (2, 1, 1, 1));
    for id in [&dead.id, &waiting.id] {
        let (d, history) = s.delivery(id).await.unwrap().unwrap();
        assert_eq!(
            (d.state, d.discard_reason.as_deref(), d.next_attempt_at),
            (DeliveryState::Discarded, Some("refunded by hand"), None)
        );
        assert_eq!(d.updated_at, 1100);
        assert_eq!(history.len(), usize::from(*id == dead.id), "history kept");
    }
    assert_eq!(s.counts().await.unwrap().map(|(_, n)| n), [0, 1, 1, 0, 2, 0, 0]);
    // A discarded delivery is off the schedule and out of the open set.
    assert!(s.claim_due("be", 1100, 10, VIS).await.unwrap().is_empty(), "nothing due but the live claim");
    assert_eq!(s.oldest_open().await.unwrap(), Some(1000), "the held one is open");
    let discarded = DeliveryFilter { state: Some(DeliveryState::Discarded), ..Default::default() };
    let listed: Vec<_> = s.list(&discarded, None, 10).await.unwrap().items.into_iter().map(|d| d.id).collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&dead.id) && listed.contains(&waiting.id));
    // Discarding again changes nothing.
    let again = s.discard(std::slice::from_ref(&dead.id), "twice", None, 1200).await.unwrap();
    assert_eq!((again.discarded, again.skipped), (0, 1));
    assert_eq!(s.delivery(&dead.id).await.unwrap().unwrap().0.discard_reason.as_deref(), Some("refunded by hand"));

    // A claim that expired can be discarded; its worker's late finish then
    // finds the claim lost and changes nothing.
    let late = FAR_FUTURE;
    let count = s.discard(std::slice::from_ref(&held.id), "stuck", None, late).await.unwrap();
    assert_eq!((count.discarded, count.in_flight), (1, 0));
    assert!(!s.finish(&held.id, held.claim_token, attempt(late, 200), Next::Delivered).await.unwrap());
    assert_eq!(s.delivery(&held.id).await.unwrap().unwrap().0.state, DeliveryState::Discarded);
    assert!(s.claim_due("be", late, 10, VIS).await.unwrap().is_empty());
    assert_eq!(s.oldest_open().await.unwrap(), None);

    // Replay by id reopens a discarded delivery with a fresh budget; the
    // reason goes with the state.
    let r = s.replay(std::slice::from_ref(&dead.id), false, 3000).await.unwrap();
    assert_eq!((r.replayed, r.skipped), (1, 0));
    let (d, history) = s.delivery(&dead.id).await.unwrap().unwrap();
    assert_eq!((d.state, d.discard_reason, d.budget_start, d.attempts), (DeliveryState::Pending, None, 1, 1));
    assert_eq!(history.len(), 1);
    assert_eq!(s.list(&discarded, None, 10).await.unwrap().items.len(), 2);
    assert_eq!(s.counts().await.unwrap().map(|(_, n)| n), [1, 0, 1, 0, 2, 0, 0]);
    let again = s.claim_due("be", 3000, 10, VIS).await.unwrap();
    assert_eq!(again.iter().map(|c| &c.delivery.id).collect::<Vec<_>>(), [&dead.id]);
}

/// A bulk replay or discard lists, then acts: whatever left the listed
/// state in between (an operator's discard or replay, an adoption) is left
/// as it now is.
async fn bulk_replay_and_bulk_discard_act_only_on_what_is_as_listed(s: Arc<impl Store>) {
    dead_deliveries(&s, 3).await;
    let dead = DeliveryFilter { state: Some(DeliveryState::Dead), ..Default::default() };
    let listed: Vec<DeliveryId> = s.list(&dead, None, 10).await.unwrap().items.into_iter().map(|d| d.id).collect();
    assert_eq!(listed.len(), 3);
    // Discarded by id between the job's listing and its step.
    assert_eq!(s.discard(&listed[..1], "closed by hand", None, 3000).await.unwrap().discarded, 1);
    let mut job = ipn_relay::store::ReplayJob::new(dead.clone(), false, 10, 3000);
    s.create_replay_job(&job).await.unwrap();
    job.steps = 1;
    let saved = s.replay_step(&job, &listed, 3000).await.unwrap().unwrap();
    assert_eq!((saved.replayed, saved.skipped), (2, 1));
    assert_eq!(s.delivery(&listed[0]).await.unwrap().unwrap().0.state, DeliveryState::Discarded, "stays closed");

    // Listed as dead for a bulk discard, replayed in between: left pending.
    s.admit(event("evt_s", "np", "t.t", 3500), deliveries(3500, &["audit", "audit"]), TTL).await.unwrap();
    for c in s.claim_due("audit", 3500, 10, VIS).await.unwrap() {
        assert!(s.finish(&c.delivery.id, c.delivery.claim_token, attempt(3500, 500), Next::Dead).await.unwrap());
    }
    let listed: Vec<DeliveryId> = s.list(&dead, None, 10).await.unwrap().items.into_iter().map(|d| d.id).collect();
    assert_eq!(listed.len(), 2);
    assert_eq!(s.replay(&listed[..1], false, 4000).await.unwrap().replayed, 1);
    let count = s.discard(&listed, "bulk", Some(DeliveryState::Dead), 4000).await.unwrap();
    assert_eq!((count.discarded, count.skipped), (1, 1));
    assert_eq!(s.delivery(&listed[0]).await.unwrap().unwrap().0.state, DeliveryState::Pending);
    // A pending one is discarded by a bulk discard of pending ones.
    let count = s.discard(&listed[..1], "bulk", Some(DeliveryState::Pending), 4000).await.unwrap();
    assert_eq!(count.discarded, 1);
}

async fn list_scans_a_bounded_number_of_records_per_page(s: Arc<impl Store>) {
    s.admit(event("evt_old", "np", "t.t", 1000), deliveries(1000, &["audit"]), TTL).await.unwrap();
    let many = LIST_SCAN_LIMIT as u64 + 100;
    let ds: Vec<NewDelivery> = (0..many)
        .map(|_| NewDelivery { id: DeliveryId::new(2000), endpoint: "be".into(), policy: Default::default() })
        .collect();
    s.admit(event("evt_big", "np", "t.t", 2000), ds, TTL).await.unwrap();
    let f = DeliveryFilter { endpoint: Some("audit".into()), ..Default::default() };
    let p1 = s.list(&f, None, 10).await.unwrap();
    assert!(p1.items.is_empty(), "the scan limit ends the page before the match");
    let cursor = p1.next_cursor.expect("a cursor to continue the scan");
    let p2 = s.list(&f, Some(&cursor), 10).await.unwrap();
    assert_eq!(p2.items.iter().map(|d| d.event_id.as_str()).collect::<Vec<_>>(), ["evt_old"]);
    assert_eq!(p2.next_cursor, None);
}

pub(crate) fn embedded() -> (Arc<EmbeddedStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("relay.redb")).unwrap();
    (Arc::new(store), dir)
}

on_both_stores!(
    embedded(),
    redis().await,
    [
        admit_stores_event_and_deliveries,
        event_without_endpoints_is_still_stored,
        dedupe_holds_for_the_ttl_then_expires,
        sweep_removes_only_expired_keys,
        concurrent_admissions_of_one_event_accept_once,
        claims_are_exclusive_until_the_visibility_timeout,
        claims_are_per_endpoint,
        retries_are_scheduled_and_dead_is_final,
        release_returns_a_claim_without_counting_an_attempt,
        list_filters_and_pages_newest_first,
        replay_resets_the_budget_and_keeps_history,
        counts_follow_state_changes,
        oldest_open_is_the_oldest_pending_or_in_flight,
        oldest_open_by_endpoint_names_each_endpoints_oldest_open_delivery,
        replay_job_steps_commit_in_order_and_resume,
        replay_job_never_visits_a_delivery_twice,
        replay_job_is_bounded,
        a_truncated_replay_job_continues_exactly_at_its_cursor,
        list_scans_a_bounded_number_of_records_per_page,
        listing_by_state_reads_only_deliveries_in_that_state,
        deliveries_to_a_removed_endpoint_are_orphaned_and_taken_back,
        discard_closes_waiting_and_dead_deliveries_and_replay_reopens_them,
        bulk_replay_and_bulk_discard_act_only_on_what_is_as_listed,
    ]
);

#[tokio::test]
async fn embedded_store_keeps_everything_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/relay.redb");
    let s = EmbeddedStore::open(&path).unwrap();
    s.admit(event("evt_keep", "np", "t.t", 1000), deliveries(1000, &["be"]), TTL).await.unwrap();
    s.close().await;
    let s = EmbeddedStore::open(&path).unwrap();
    assert!(s.event(&"evt_keep".into()).await.unwrap().is_some());
    assert_eq!(s.admit(event("evt_keep", "np", "t.t", 1500), vec![], TTL).await.unwrap(), Admission::Duplicate);
    assert_eq!(s.claim_due("be", 1000, 10, VIS).await.unwrap().len(), 1);
}

pub(crate) async fn redis() -> (Arc<ipn_relay::store::redis::RedisStore>, crate::common::RedisServer) {
    let server = crate::common::RedisServer::start();
    for _ in 0..300 {
        if let Ok(store) = ipn_relay::store::redis::RedisStore::connect(&server.url, "conformance").await {
            return (Arc::new(store), server);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("redis-server did not come up at {}", server.url);
}

/// A plain connection to the test's Redis, to look under the store.
pub(crate) async fn raw_connection(server: &crate::common::RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// How often this Redis has run `command` so far (`INFO commandstats`).
async fn command_calls(raw: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(raw).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn redis_store_skips_an_unreadable_record_instead_of_wedging() {
    let (s, server) = redis().await;
    s.admit(event("evt_good", "np", "t.t", 1000), deliveries(1000, &["be"]), TTL).await.unwrap();
    // A record nothing can read, due before the good one.
    let mut raw = raw_connection(&server).await;
    let _: () =
        redis::cmd("SET").arg("{conformance}:dlv:dlv_broken").arg("not json").query_async(&mut raw).await.unwrap();
    let _: () =
        redis::cmd("ZADD").arg("{conformance}:due:be").arg(500).arg("dlv_broken").query_async(&mut raw).await.unwrap();

    let claims = s.claim_due("be", 2000, 10, VIS).await.unwrap();
    assert_eq!(claims.iter().map(|c| c.delivery.event_id.as_str()).collect::<Vec<_>>(), ["evt_good"]);
    let score: Option<f64> =
        redis::cmd("ZSCORE").arg("{conformance}:due:be").arg("dlv_broken").query_async(&mut raw).await.unwrap();
    assert_eq!(score, None, "the unreadable record is off the schedule");
    // The record itself stays for inspection.
    let kept: Option<String> =
        redis::cmd("GET").arg("{conformance}:dlv:dlv_broken").query_async(&mut raw).await.unwrap();
    assert_eq!(kept.as_deref(), Some("not json"));
    // A listing over it leaves it out instead of failing.
    let _: () =
        redis::cmd("ZADD").arg("{conformance}:index").arg(0).arg("dlv_broken").query_async(&mut raw).await.unwrap();
    let page = s.list(&DeliveryFilter::default(), None, 10).await.unwrap();
    assert_eq!(page.items.iter().map(|d| d.event_id.as_str()).collect::<Vec<_>>(), ["evt_good"]);
}

/// A delivery record that vanished leaves the schedule, the open index and
/// the pending count, so the gauges do not age it for ever.
#[tokio::test]
async fn redis_store_forgets_a_vanished_delivery_everywhere() {
    let (s, server) = redis().await;
    s.admit(event("evt_gone", "np", "t.t", 1000), deliveries(1000, &["be"]), TTL).await.unwrap();
    let id = s.event_deliveries(&"evt_gone".into()).await.unwrap().remove(0).id;
    let mut raw = raw_connection(&server).await;
    let _: () = redis::cmd("DEL").arg(format!("{{conformance}}:dlv:{id}")).query_async(&mut raw).await.unwrap();
    assert!(s.claim_due("be", 2000, 10, VIS).await.unwrap().is_empty());
    assert_eq!(s.oldest_open().await.unwrap(), None);
    assert_eq!(s.counts().await.unwrap()[0], (DeliveryState::Pending, 0));
}

/// A Redis that lost its last writes (a restart without fsync, a failover)
/// can roll a delivery back to before a claim. The next claim must still get
/// a token of its own, so the first claimer cannot finish it.
#[tokio::test]
async fn redis_claim_tokens_stay_unique_after_lost_writes() {
    let (s, server) = redis().await;
    s.admit(event("evt_lost", "np", "t.t", 1000), deliveries(1000, &["be"]), TTL).await.unwrap();
    let id = s.event_deliveries(&"evt_lost".into()).await.unwrap().remove(0).id;
    let mut raw = raw_connection(&server).await;
    let key = format!("{{conformance}}:dlv:{id}");
    let before: String = redis::cmd("GET").arg(&key).query_async(&mut raw).await.unwrap();

    let first = s.claim_due("be", 1000, 1, VIS).await.unwrap().remove(0).delivery;
    // The claim is lost: the record and its schedule are as before it.
    let _: () = redis::cmd("SET").arg(&key).arg(&before).query_async(&mut raw).await.unwrap();
    let _: () =
        redis::cmd("ZADD").arg("{conformance}:due:be").arg(1000).arg(id.as_str()).query_async(&mut raw).await.unwrap();
    let second = s.claim_due("be", 1000, 1, VIS).await.unwrap().remove(0).delivery;

    assert_ne!(first.claim_token, second.claim_token);
    assert!(!s.finish(&id, first.claim_token, attempt(1000, 200), Next::Delivered).await.unwrap());
    assert!(s.finish(&id, second.claim_token, attempt(1000, 200), Next::Delivered).await.unwrap());
}

/// Data from before the open-delivery index: the first relay to connect
/// builds it from the schedules.
#[tokio::test]
async fn redis_store_builds_the_open_index_for_older_data() {
    let (s, server) = redis().await;
    s.admit(event("evt_old1", "np", "t.t", 1000), deliveries(1000, &["be"]), TTL).await.unwrap();
    s.admit(event("evt_old2", "np", "t.t", 2000), deliveries(2000, &["audit"]), TTL).await.unwrap();
    let mut raw = raw_connection(&server).await;
    let _: () = redis::cmd("DEL")
        .arg("{conformance}:open")
        .arg("{conformance}:open-index")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(s.oldest_open().await.unwrap(), None, "the index is gone");
    let again = ipn_relay::store::redis::RedisStore::connect(&server.url, "conformance").await.unwrap();
    assert_eq!(again.oldest_open().await.unwrap(), Some(1000));
}

/// A new prefix on a Redis that already holds other data (another tenant, an
/// earlier run) starts without scanning the keyspace for older schedules.
#[tokio::test]
async fn redis_data_from_before_the_state_index_is_indexed_once_at_connect() {
    let (s, server) = redis().await;
    s.admit(event("evt_old", "np", "t.t", 1000), deliveries(1000, &["be", "gone"]), TTL).await.unwrap();
    let c = s.claim_due("be", 1000, 1, VIS).await.unwrap().remove(0);
    assert!(s.finish(&c.delivery.id, c.delivery.claim_token, attempt(1000, 500), Next::Dead).await.unwrap());
    // As an older version left it: no dead index, no endpoint set, no marker.
    let mut raw = raw_connection(&server).await;
    let _: () = redis::cmd("DEL")
        .arg(&["{conformance}:dead", "{conformance}:endpoints", "{conformance}:state-index"])
        .query_async(&mut raw)
        .await
        .unwrap();
    let s = ipn_relay::store::redis::RedisStore::connect(&server.url, "conformance").await.unwrap();
    let dead = DeliveryFilter { state: Some(DeliveryState::Dead), ..Default::default() };
    let page = s.list(&dead, None, 10).await.unwrap();
    assert_eq!(page.items.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), [c.delivery.id.as_str()]);
    assert_eq!(s.known_endpoints().await.unwrap(), ["be", "gone"]);
    let found = s.reconcile_endpoints(&["be".into()], true, 2000).await.unwrap();
    assert_eq!(found.orphaned, vec![("gone".to_owned(), 1)]);
}

#[tokio::test]
async fn redis_store_on_a_new_prefix_does_not_scan_the_keyspace() {
    let (s, server) = redis().await;
    s.admit(event("evt_other", "np", "t.t", 1000), deliveries(1000, &["be"]), TTL).await.unwrap();
    let mut raw = raw_connection(&server).await;
    let before = command_calls(&mut raw, "scan").await;

    let fresh = ipn_relay::store::redis::RedisStore::connect(&server.url, "tenant-b").await.unwrap();
    let after = command_calls(&mut raw, "scan").await;
    assert_eq!(after, before, "a new prefix needs no scan");
    let marker: bool = redis::cmd("EXISTS").arg("{tenant-b}:open-index").query_async(&mut raw).await.unwrap();
    assert!(marker, "and it is marked as indexed");
    // The new prefix indexes its own deliveries from the first admission.
    fresh.admit(event("evt_b", "np", "t.t", 3000), deliveries(3000, &["be"]), TTL).await.unwrap();
    assert_eq!(fresh.oldest_open().await.unwrap(), Some(3000));
    assert_eq!(s.oldest_open().await.unwrap(), Some(1000), "prefixes stay apart");
}

/// Finishes that arrive together are recorded together, in one script call,
/// and each still gets its own answer: recorded, claim no longer held, or
/// unknown delivery; counts, schedules and the open index add up.
#[tokio::test]
async fn redis_store_records_concurrent_finishes_in_batches() {
    let (s, server) = redis().await;
    for i in 0..40 {
        s.admit(event(&format!("evt_batch{i}"), "np", "t.t", 1000), deliveries(1000, &["be", "audit"]), TTL)
            .await
            .unwrap();
    }
    let mut claims = s.claim_due("be", 1000, 100, VIS).await.unwrap();
    claims.extend(s.claim_due("audit", 1000, 100, VIS).await.unwrap());
    assert_eq!(claims.len(), 80);

    let mut raw = raw_connection(&server).await;
    let before = command_calls(&mut raw, "evalsha").await;

    // Delivered, retried, dead, and a stale token, in turn; then the first
    // delivered one again in the same batch, and a delivery that never was.
    let mut finishes: Vec<(DeliveryId, u64, Next)> = claims
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let d = &c.delivery;
            match i % 4 {
                0 => (d.id.clone(), d.claim_token, Next::Delivered),
                1 => (d.id.clone(), d.claim_token, Next::RetryAt(5000)),
                2 => (d.id.clone(), d.claim_token, Next::Dead),
                _ => (d.id.clone(), d.claim_token + 7, Next::Delivered),
            }
        })
        .collect();
    finishes.push(finishes[0].clone());
    finishes.push(("dlv_000000000000_never".into(), 1, Next::Delivered));
    let tasks: Vec<_> = finishes
        .iter()
        .cloned()
        .map(|(id, token, next)| {
            let s = s.clone();
            tokio::spawn(async move { s.finish(&id.as_str().into(), token, attempt(1200, 200), next).await.unwrap() })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let calls = command_calls(&mut raw, "evalsha").await - before;
    assert!(calls < 10, "82 finishes took {calls} script calls");

    for (i, ok) in results.iter().enumerate().take(80) {
        assert_eq!(*ok, i % 4 != 3, "finish {i}");
    }
    assert!(!results[80], "the same finish twice is recorded once");
    assert!(!results[81], "an unknown delivery is not recorded");

    for (i, c) in claims.iter().enumerate() {
        let (d, attempts) = s.delivery(&c.delivery.id).await.unwrap().unwrap();
        let (state, count) = match i % 4 {
            0 => (DeliveryState::Delivered, 1u32),
            1 => (DeliveryState::Pending, 1),
            2 => (DeliveryState::Dead, 1),
            _ => (DeliveryState::InFlight, 0),
        };
        assert_eq!((d.state, d.attempts, attempts.len()), (state, count, count as usize), "delivery {i}");
        if count == 1 {
            assert_eq!(attempts[0].number, 1);
        }
        if i % 4 == 1 {
            assert_eq!(d.next_attempt_at, Some(5000));
        }
    }
    assert_eq!(
        s.counts().await.unwrap(),
        [
            (DeliveryState::Pending, 20),
            (DeliveryState::InFlight, 20),
            (DeliveryState::Delivered, 20),
            (DeliveryState::Dead, 20),
            (DeliveryState::Discarded, 0),
            (DeliveryState::Skipped, 0),
            (DeliveryState::Orphaned, 0)
        ]
    );
    // Settled deliveries left the schedules and the open index.
    for (key, expected) in [
        ("{conformance}:due:be", 20),
        ("{conformance}:due:audit", 20),
        ("{conformance}:open", 40),
        ("{conformance}:dead", 20),
    ] {
        let card: u64 = redis::cmd("ZCARD").arg(key).query_async(&mut raw).await.unwrap();
        assert_eq!(card, expected, "{key}");
    }
    // Retried deliveries are due at 5000; the stale claims expired at 1500.
    let mut due: Vec<DeliveryId> =
        s.claim_due("be", 5000, 100, VIS).await.unwrap().into_iter().map(|c| c.delivery.id).collect();
    due.extend(s.claim_due("audit", 5000, 100, VIS).await.unwrap().into_iter().map(|c| c.delivery.id));
    due.sort();
    let mut open: Vec<DeliveryId> = claims
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 4 == 1 || i % 4 == 3)
        .map(|(_, c)| c.delivery.id.clone())
        .collect();
    open.sort();
    assert_eq!(due, open);
    assert_eq!(s.oldest_open().await.unwrap(), Some(1000));
}

/// A batch larger than the script's write slices (200 arguments) keeps its
/// (key, value) and (score, member) pairs together, and goes through whole
/// (not one finish at a time after a refused batch).
#[tokio::test]
async fn redis_store_records_a_batch_larger_than_one_write_slice() {
    let (s, server) = redis().await;
    let mut raw = raw_connection(&server).await;
    for i in 0..150 {
        s.admit(event(&format!("evt_big{i}"), "np", "t.t", 1000), deliveries(1000, &["be"]), TTL).await.unwrap();
    }
    let claims = s.claim_due("be", 1000, 200, VIS).await.unwrap();
    assert_eq!(claims.len(), 150);
    let before = command_calls(&mut raw, "evalsha").await;
    let tasks: Vec<_> = claims
        .iter()
        .map(|c| {
            let (s, id, token) = (s.clone(), c.delivery.id.clone(), c.delivery.claim_token);
            tokio::spawn(async move { s.finish(&id, token, attempt(1200, 500), Next::RetryAt(5000)).await.unwrap() })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap());
    }
    let calls = command_calls(&mut raw, "evalsha").await - before;
    assert!(calls < 10, "150 finishes took {calls} script calls");
    assert_eq!(s.counts().await.unwrap()[0], (DeliveryState::Pending, 150));
    assert!(s.claim_due("be", 4999, 200, VIS).await.unwrap().is_empty(), "none due before 5000");
    let again = s.claim_due("be", 5000, 200, VIS).await.unwrap();
    assert_eq!(again.len(), 150);
    assert!(again.iter().all(|c| c.delivery.attempts == 1));
}

/// A finish whose keys are damaged is refused on its own; the finishes
/// batched with it are recorded once each.
#[tokio::test]
async fn redis_store_refuses_only_the_damaged_finish_of_a_batch() {
    let (s, server) = redis().await;
    for i in 0..3 {
        s.admit(event(&format!("evt_dmg{i}"), "np", "t.t", 1000), deliveries(1000, &["be"]), TTL).await.unwrap();
    }
    let claims = s.claim_due("be", 1000, 10, VIS).await.unwrap();
    assert_eq!(claims.len(), 3);
    let mut raw = raw_connection(&server).await;
    let damaged = claims[1].delivery.id.clone();
    let _: () = redis::cmd("SET")
        .arg(format!("{{conformance}}:attempts:{damaged}"))
        .arg("not a list")
        .query_async(&mut raw)
        .await
        .unwrap();

    let tasks: Vec<_> = claims
        .iter()
        .map(|c| {
            let (s, id, token) = (s.clone(), c.delivery.id.clone(), c.delivery.claim_token);
            tokio::spawn(async move { s.finish(&id, token, attempt(1200, 200), Next::Delivered).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert!(matches!(results[0], Ok(true)));
    assert!(
        matches!(&results[1], Err(ipn_relay::store::StoreError::Corrupt { key, .. }) if key.ends_with(damaged.as_str()))
    );
    assert!(matches!(results[2], Ok(true)));
    for i in [0, 2] {
        let (d, attempts) = s.delivery(&claims[i].delivery.id).await.unwrap().unwrap();
        assert_eq!((d.state, attempts.len()), (DeliveryState::Delivered, 1));
    }
    let counts = s.counts().await.unwrap();
    assert_eq!((counts[1], counts[2]), ((DeliveryState::InFlight, 1), (DeliveryState::Delivered, 2)));
}

/// Relays sharing Redis compare deadlines across clocks: the store reports
/// how far Redis's clock is from this process's (here, the same machine's).
/// The embedded store has no other clock to compare.
#[tokio::test]
async fn a_shared_store_reports_its_clock_offset_and_an_embedded_one_does_not() {
    let (s, _server) = redis().await;
    let offset = s.clock_offset_ms().await.unwrap().expect("Redis reports its clock");
    assert!(offset.abs() < ipn_relay::store::CLOCK_OFFSET_WARN_MS, "{offset} ms from this machine's own clock");
    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedStore::open(&dir.path().join("relay.redb")).unwrap();
    assert_eq!(embedded.clock_offset_ms().await.unwrap(), None);
}

/// The clock gauge on Redis: a small offset here, and NaN (never a
/// reassuring 0) for a Redis user denied TIME, whose other gauges still
/// refresh.
#[tokio::test]
async fn the_clock_gauge_reads_redis_and_shows_nan_when_time_is_denied() {
    let (s, server) = redis().await;
    s.admit(event("evt_clock", "np", "t.t", 1000), deliveries(1000, &["be"]), TTL).await.unwrap();
    let gauge = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .parse()
            .unwrap()
    };
    let text = ipn_relay::metrics::Metrics::with_names(&["np"], &["be"]).unwrap().render(&*s).await;
    let offset = gauge(&text, "ipn_relay_store_clock_offset_seconds");
    assert!(offset.abs() < 0.1, "{offset}");

    let mut raw = raw_connection(&server).await;
    let _: () = redis::cmd("ACL").arg("SETUSER").arg("default").arg("-time").query_async(&mut raw).await.unwrap();
    assert!(s.clock_offset_ms().await.is_err(), "TIME is denied");
    let text = ipn_relay::metrics::Metrics::with_names(&["np"], &["be"]).unwrap().render(&*s).await;
    assert!(gauge(&text, "ipn_relay_store_clock_offset_seconds").is_nan());
    assert_eq!(gauge(&text, "ipn_relay_deliveries{state=\"pending\"}"), 1.0, "the other gauges still refresh");
}
