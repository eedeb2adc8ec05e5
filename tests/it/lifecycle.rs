//! A subject's lifecycle in the store, on both backends: numbering at
//! admission, regressions, skipped deliveries, ordered claims and the
//! timeline, and retention taking events off it.

use std::sync::Arc;

use ipn_relay::event::{Event, Normalised, Subject};
use ipn_relay::store::retention::{Cutoffs, Purged};
use ipn_relay::store::{Admission, DeliveryId, DeliveryState, NewDelivery, NewEvent, Next, Numbering, Policy, Store};
use serde_json::Value;

use crate::store_conformance::{TTL, VIS, attempt, embedded, redis};

const ORDERED: Policy = Policy { ordered: true, skip_regressions: false };
const SKIPPING: Policy = Policy { ordered: false, skip_regressions: true };
const PLAIN: Policy = Policy { ordered: false, skip_regressions: false };

/// A NOWPayments payment event as ingress builds it, received at `at` ms.
fn payment(payment_id: &str, status: &str, at: u64) -> NewEvent {
    let n = Normalised {
        dedupe_key: format!("{payment_id}:{status}"),
        event_type: "deposit.pending".into(),
        provider_status: Some(status.into()),
        subject: Subject { kind: "payment".into(), id: Some(payment_id.into()) },
        amount: None,
        currency: None,
        network: None,
        user_id: None,
        order_id: None,
        tx_hash: None,
        occurred_at: None,
        payload: r#"{"payment_status":"x"}"#.into(),
    };
    let received = time::OffsetDateTime::from_unix_timestamp_nanos(at as i128 * 1_000_000).unwrap();
    let e = Event::new("np", "nowpayments", n, received);
    let subject = e.subject_ref().unwrap();
    let (json, at_byte) = e.to_json_unnumbered();
    NewEvent {
        id: e.id.clone(),
        source: "np".into(),
        event_type: e.event_type.clone(),
        received_at: at,
        json,
        subject: Some(Numbering { subject, at: at_byte }),
    }
}

fn to(endpoint: &str, policy: Policy, at: u64) -> Vec<NewDelivery> {
    vec![NewDelivery { id: DeliveryId::new(at), endpoint: endpoint.into(), policy }]
}

async fn stored(s: &impl Store, e: &NewEvent) -> Value {
    serde_json::from_slice(&s.event(&e.id).await.unwrap().unwrap().json).unwrap()
}

async fn events_are_numbered_per_subject_with_regressions(s: Arc<impl Store>) {
    let waiting = payment("p1", "waiting", 1000);
    let finished = payment("p1", "finished", 1001);
    let confirming = payment("p1", "confirming", 1002);
    let other = payment("p2", "confirming", 1003);
    for (e, regression) in [(&waiting, false), (&finished, false), (&confirming, true), (&other, false)] {
        let r = s.admit(e.clone(), vec![], TTL).await.unwrap();
        assert_eq!(r, Admission::Accepted { regression });
    }
    // A duplicate takes no number.
    assert_eq!(s.admit(finished.clone(), vec![], TTL).await.unwrap(), Admission::Duplicate);
    let late = payment("p1", "refunded", 1004);
    assert_eq!(s.admit(late.clone(), vec![], TTL).await.unwrap(), Admission::Accepted { regression: false });
    let fields = |v: &Value| (v["sequence"].as_u64(), v["previous_status"].clone(), v["regression"].as_bool());
    assert_eq!(fields(&stored(&*s, &waiting).await), (Some(1), Value::Null, Some(false)));
    assert_eq!(fields(&stored(&*s, &finished).await), (Some(2), "waiting".into(), Some(false)));
    assert_eq!(fields(&stored(&*s, &confirming).await), (Some(3), "finished".into(), Some(true)));
    assert_eq!(fields(&stored(&*s, &late).await), (Some(4), "confirming".into(), Some(false)));
    assert_eq!(fields(&stored(&*s, &other).await), (Some(1), Value::Null, Some(false)));
    // The lifecycle fields sit before the payload, which stays last.
    let text = String::from_utf8(s.event(&late.id).await.unwrap().unwrap().json).unwrap();
    assert!(text.contains(r#","sequence":4,"previous_status":"confirming","regression":false,"payload":{"#), "{text}");

    let timeline = s.subject("np/payment/p1").await.unwrap();
    let seqs: Vec<(u64, &str)> = timeline.iter().map(|t| (t.sequence, t.event.id.as_str())).collect();
    let want: Vec<(u64, &str)> = [&waiting, &finished, &confirming, &late]
        .iter()
        .enumerate()
        .map(|(i, e)| (i as u64 + 1, e.id.as_str()))
        .collect();
    assert_eq!(seqs, want);
    assert!(s.subject("np/payment/nope").await.unwrap().is_empty());
}

async fn regressions_to_a_skipping_endpoint_are_skipped_and_replayable(s: Arc<impl Store>) {
    s.admit(payment("p1", "finished", 1000), to("be", SKIPPING, 1000), TTL).await.unwrap();
    let late = payment("p1", "confirming", 1001);
    let mut ds = to("be", SKIPPING, 1001);
    ds.extend(to("audit", PLAIN, 1001));
    assert_eq!(s.admit(late.clone(), ds, TTL).await.unwrap(), Admission::Accepted { regression: true });
    let mut states: Vec<(String, DeliveryState)> =
        s.event_deliveries(&late.id).await.unwrap().into_iter().map(|d| (d.endpoint, d.state)).collect();
    states.sort();
    assert_eq!(states, [("audit".into(), DeliveryState::Pending), ("be".into(), DeliveryState::Skipped)]);
    let counts = s.counts().await.unwrap();
    assert_eq!(counts[DeliveryState::Skipped.index()].1, 1);
    // Never sent: only the first event's delivery is claimable at "be".
    let claims = s.claim_due("be", 5000, 10, VIS).await.unwrap();
    assert_eq!(claims.len(), 1);
    assert_ne!(claims[0].delivery.event_id, late.id);
    let d = &claims[0].delivery;
    assert!(s.finish(&d.id, d.claim_token, attempt(5000, 200), Next::Delivered).await.unwrap());
    // Listed by state, and replayable by id.
    let f = ipn_relay::store::DeliveryFilter { state: Some(DeliveryState::Skipped), ..Default::default() };
    let page = s.list(&f, None, 10).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let r = s.replay(&[page.items[0].id.clone()], false, 6000).await.unwrap();
    assert_eq!(r.replayed, 1);
    let claims = s.claim_due("be", 6000, 10, VIS).await.unwrap();
    assert_eq!(claims.iter().map(|c| c.delivery.event_id.clone()).collect::<Vec<_>>(), std::slice::from_ref(&late.id));
}

/// With ordering, a subject's second delivery is claimable only once the
/// first is final; other subjects flow meanwhile; a retry keeps the gate.
async fn ordered_deliveries_wait_for_their_subjects_earlier_ones(s: Arc<impl Store>) {
    let a1 = payment("a", "waiting", 1000);
    let a2 = payment("a", "confirming", 1001);
    let a3 = payment("a", "finished", 1002);
    let b1 = payment("b", "waiting", 1003);
    for e in [&a1, &a2, &a3, &b1] {
        s.admit(e.clone(), to("be", ORDERED, e.received_at), TTL).await.unwrap();
    }
    let ids = |claims: &[ipn_relay::store::Claim]| {
        let mut v: Vec<String> = claims.iter().map(|c| c.delivery.event_id.to_string()).collect();
        v.sort();
        v
    };
    let mut want = vec![a1.id.to_string(), b1.id.to_string()];
    want.sort();
    let first = s.claim_due("be", 2000, 10, VIS).await.unwrap();
    assert_eq!(ids(&first), want, "heads of both subjects, nothing behind them");
    assert!(first.iter().all(|c| c.delivery.order.is_some()));
    // b1 is delivered; a1 fails and is retried later: a2 still waits.
    let b = first.iter().find(|c| c.delivery.event_id == b1.id).unwrap();
    assert!(s.finish(&b.delivery.id, b.delivery.claim_token, attempt(2000, 200), Next::Delivered).await.unwrap());
    let c1 = first.iter().find(|c| c.delivery.event_id == a1.id).unwrap();
    assert!(s.finish(&c1.delivery.id, c1.delivery.claim_token, attempt(2000, 500), Next::RetryAt(3000)).await.unwrap());
    assert!(s.claim_due("be", 2500, 10, VIS).await.unwrap().is_empty(), "a2 waits behind a1's retry");
    let again = s.claim_due("be", 3000, 10, VIS).await.unwrap();
    assert_eq!(ids(&again), [a1.id.to_string()]);
    // A claim that expires keeps its place: a2 still waits.
    assert_eq!(ids(&s.claim_due("be", 3000 + VIS + 1, 10, VIS).await.unwrap()), [a1.id.to_string()]);
    let c = s.claim_due("be", 3000 + 3 * VIS, 10, VIS).await.unwrap();
    assert_eq!(ids(&c), [a1.id.to_string()]);
    assert!(s.finish(&c[0].delivery.id, c[0].delivery.claim_token, attempt(5000, 200), Next::Delivered).await.unwrap());
    let next = s.claim_due("be", 5000, 10, VIS).await.unwrap();
    assert_eq!(ids(&next), [a2.id.to_string()]);
    // Dead is final too.
    let n = &next[0].delivery;
    assert!(s.finish(&n.id, n.claim_token, attempt(5000, 500), Next::Dead).await.unwrap());
    let last = s.claim_due("be", 5000, 10, VIS).await.unwrap();
    assert_eq!(ids(&last), [a3.id.to_string()]);
    // Replaying a1 puts it in front again: a3, in flight, finishes first,
    // then a1 goes; never both at once.
    let a1_delivery = s.event_deliveries(&a1.id).await.unwrap().remove(0);
    assert_eq!(s.replay(std::slice::from_ref(&a1_delivery.id), true, 5001).await.unwrap().replayed, 1);
    assert!(s.claim_due("be", 5002, 10, VIS).await.unwrap().is_empty(), "a3 is in flight");
    let l = &last[0].delivery;
    assert!(s.finish(&l.id, l.claim_token, attempt(5003, 200), Next::Delivered).await.unwrap());
    assert_eq!(ids(&s.claim_due("be", 5004, 10, VIS).await.unwrap()), [a1.id.to_string()]);
}

/// Discarding the head of a gate lets the next one go.
async fn discarding_the_head_opens_the_gate(s: Arc<impl Store>) {
    let a1 = payment("a", "waiting", 1000);
    let a2 = payment("a", "finished", 1001);
    for e in [&a1, &a2] {
        s.admit(e.clone(), to("be", ORDERED, e.received_at), TTL).await.unwrap();
    }
    let head = s.event_deliveries(&a1.id).await.unwrap().remove(0);
    assert_eq!(s.discard(&[head.id], "test", None, 1500).await.unwrap().discarded, 1);
    let c = s.claim_due("be", 2000, 10, VIS).await.unwrap();
    assert_eq!(c.iter().map(|c| c.delivery.event_id.clone()).collect::<Vec<_>>(), std::slice::from_ref(&a2.id));
}

/// Retention takes removed events off the timeline, and the subject with
/// its last event.
async fn retention_takes_events_off_the_timeline(s: Arc<impl Store>) {
    let a1 = payment("a", "waiting", 1000);
    let a2 = payment("a", "finished", 50_000);
    s.admit(a1.clone(), vec![], TTL).await.unwrap();
    s.admit(a2.clone(), vec![], TTL).await.unwrap();
    let cutoffs = |t| Cutoffs { delivered: t, dead: t, replay_jobs: t };
    let mut total = Purged::default();
    loop {
        let step = s.purge(cutoffs(10_000), 60_000, 100).await.unwrap();
        total.add(step);
        if step.examined == 0 {
            break;
        }
    }
    assert_eq!(total.events, 1);
    let t = s.subject("np/payment/a").await.unwrap();
    assert_eq!(t.iter().map(|t| t.sequence).collect::<Vec<_>>(), [2]);
    loop {
        if s.purge(cutoffs(100_000), 200_000, 100).await.unwrap().examined == 0 {
            break;
        }
    }
    assert!(s.subject("np/payment/a").await.unwrap().is_empty());
    // The subject went with its last event: the next one starts at 1.
    let a3 = payment("a", "refunded", 300_000);
    s.admit(a3.clone(), vec![], TTL).await.unwrap();
    assert_eq!(stored(&*s, &a3).await["sequence"], 1);
}

/// An orphaned head is not final: the subject's later deliveries keep
/// waiting (a relay with the endpoint would otherwise send them first),
/// and go in order once it is taken back.
async fn an_orphaned_head_keeps_its_gate(s: Arc<impl Store>) {
    let a1 = payment("a", "waiting", 1000);
    let a2 = payment("a", "finished", 1001);
    for e in [&a1, &a2] {
        s.admit(e.clone(), to("be", ORDERED, e.received_at), TTL).await.unwrap();
    }
    s.reconcile_endpoints(&["be".into()], false, 1100).await.unwrap();
    // A relay started without "be" orphans the head...
    let r = s.reconcile_endpoints(&["other".into()], true, 1200).await.unwrap();
    assert_eq!(r.orphaned, vec![("be".to_owned(), 1)]);
    // ...and a relay with "be" must not send a2 while a1 is not final.
    let c = s.claim_due("be", 2000, 10, VIS).await.unwrap();
    let got: Vec<_> = c.iter().map(|c| c.delivery.event_id.clone()).collect();
    assert!(got.is_empty(), "a2 claimed while a1 is orphaned: {got:?}");
    // Taken back: a1 first, then a2.
    s.reconcile_endpoints(&["be".into()], false, 2100).await.unwrap();
    let c = s.claim_due("be", 2200, 10, VIS).await.unwrap();
    assert_eq!(c.iter().map(|c| c.delivery.event_id.clone()).collect::<Vec<_>>(), std::slice::from_ref(&a1.id));
    let d = &c[0].delivery;
    assert!(s.finish(&d.id, d.claim_token, attempt(2200, 200), Next::Delivered).await.unwrap());
    let c = s.claim_due("be", 2300, 10, VIS).await.unwrap();
    assert_eq!(c.iter().map(|c| c.delivery.event_id.clone()).collect::<Vec<_>>(), std::slice::from_ref(&a2.id));
}

/// A callback admitted again after its dedupe key expired is one
/// event on the timeline, and retention still frees its subject.
async fn a_readmitted_event_keeps_one_timeline_entry(s: Arc<impl Store>) {
    let a1 = payment("a", "waiting", 1000);
    s.admit(a1.clone(), vec![], 100).await.unwrap();
    let mut again = a1.clone();
    again.received_at = 2000;
    assert!(matches!(s.admit(again, vec![], 100).await.unwrap(), Admission::Accepted { .. }));
    let t = s.subject("np/payment/a").await.unwrap();
    let seqs: Vec<u64> = t.iter().map(|t| t.sequence).collect();
    let cutoffs = Cutoffs { delivered: 100_000, dead: 100_000, replay_jobs: 100_000 };
    while s.purge(cutoffs, 200_000, 100).await.unwrap().examined > 0 {}
    let a3 = payment("a", "refunded", 300_000);
    s.admit(a3.clone(), vec![], TTL).await.unwrap();
    let seq = stored(&*s, &a3).await["sequence"].clone();
    assert_eq!((seqs, seq), (vec![2], Value::from(1)), "timeline before purge / sequence after purge");
}

on_both_stores!(
    embedded(),
    redis().await,
    [
        events_are_numbered_per_subject_with_regressions,
        regressions_to_a_skipping_endpoint_are_skipped_and_replayable,
        ordered_deliveries_wait_for_their_subjects_earlier_ones,
        discarding_the_head_opens_the_gate,
        retention_takes_events_off_the_timeline,
        an_orphaned_head_keeps_its_gate,
        a_readmitted_event_keeps_one_timeline_entry,
    ]
);

/// A relay of an older version finishes an ordered head without moving its
/// gate on (its script knows no gates): the housekeeping check puts the
/// next delivery on the schedule.
#[tokio::test]
async fn the_gate_check_recovers_a_gate_an_older_relay_left_stuck() {
    let (s, server) = redis().await;
    let a1 = payment("a", "waiting", 1000);
    let a2 = payment("a", "finished", 1001);
    for e in [&a1, &a2] {
        s.admit(e.clone(), to("be", ORDERED, e.received_at), TTL).await.unwrap();
    }
    let mut c = crate::store_conformance::raw_connection(&server).await;
    let head = s.event_deliveries(&a1.id).await.unwrap().remove(0);
    // What an older finish does: the record settles, the schedule forgets it.
    let mut settled = head.clone();
    settled.state = DeliveryState::Delivered;
    settled.next_attempt_at = None;
    let _: () = redis::cmd("SET")
        .arg(format!("{{conformance}}:dlv:{}", head.id))
        .arg(serde_json::to_string(&settled).unwrap())
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("ZREM").arg("{conformance}:due:be").arg(head.id.as_str()).query_async(&mut c).await.unwrap();
    assert!(s.claim_due("be", 2000, 10, VIS).await.unwrap().is_empty(), "stuck before the check");
    let (healed, next) = s.heal_gates(None, 100).await.unwrap();
    assert_eq!((healed, next), (1, None));
    let claims = s.claim_due("be", 2000, 10, VIS).await.unwrap();
    assert_eq!(claims.iter().map(|c| c.delivery.event_id.clone()).collect::<Vec<_>>(), std::slice::from_ref(&a2.id));
    // Nothing more to do.
    assert_eq!(s.heal_gates(None, 100).await.unwrap(), (0, None));
}

/// On a healthy store the check changes nothing (the embedded store's
/// damaged-record case is a unit test beside the store).
#[tokio::test]
async fn the_gate_check_leaves_a_healthy_gate_alone() {
    let (s, _dir) = embedded();
    let a1 = payment("a", "waiting", 1000);
    let a2 = payment("a", "finished", 1001);
    for e in [&a1, &a2] {
        s.admit(e.clone(), to("be", ORDERED, e.received_at), TTL).await.unwrap();
    }
    // Nothing is stuck: the check finds nothing to do, and a1 goes first.
    assert_eq!(s.heal_gates(None, 100).await.unwrap(), (0, None));
    let c = s.claim_due("be", 2000, 10, VIS).await.unwrap();
    assert_eq!(c.iter().map(|c| c.delivery.event_id.clone()).collect::<Vec<_>>(), std::slice::from_ref(&a1.id));
}
