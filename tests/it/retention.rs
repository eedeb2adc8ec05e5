//! Retention on both stores: what is removed (settled events older than
//! their class's retention, with deliveries and attempts; finished replay
//! jobs), what never is (anything pending, in flight or orphaned), dedupe
//! keys that outlive their event, bounded steps, and two relays purging one
//! Redis without doing the work twice.

use std::sync::Arc;

use crate::store_conformance::{FAR_FUTURE, TTL, VIS, attempt, deliveries, embedded, redis};
use ipn_relay::store::retention::{Cutoffs, Purged};
use ipn_relay::store::{Admission, DeliveryFilter, DeliveryId, DeliveryState, NewEvent, Next, ReplayJob, Store};

/// An event as the relay stores it: its JSON carries `received_at`.
fn event(id: &str, at: u64) -> NewEvent {
    let received =
        ipn_relay::event::rfc3339_millis(time::OffsetDateTime::UNIX_EPOCH + std::time::Duration::from_millis(at));
    NewEvent {
        id: id.into(),
        source: "np".into(),
        event_type: "t.t".into(),
        received_at: at,
        json: format!(r#"{{"id":"{id}","received_at":"{received}"}}"#).into_bytes(),
        subject: None,
    }
}

fn all(at: u64) -> Cutoffs {
    Cutoffs { delivered: at, dead: at, replay_jobs: at }
}

/// Claims every due delivery of `endpoint` and ends each with `next`.
async fn finish_all(s: &impl Store, endpoint: &str, at: u64, next: Next) -> Vec<DeliveryId> {
    let mut ids = Vec::new();
    for c in s.claim_due(endpoint, at, 100, VIS).await.unwrap() {
        let code = if next == Next::Delivered { 200 } else { 500 };
        assert!(s.finish(&c.delivery.id, c.delivery.claim_token, attempt(at, code), next).await.unwrap());
        ids.push(c.delivery.id);
    }
    ids
}

async fn purge_all(s: &impl Store, cutoffs: Cutoffs, now: u64) -> Purged {
    let mut total = Purged::default();
    loop {
        let step = s.purge(cutoffs, now, 3).await.unwrap();
        assert!(step.examined <= 3, "a step stays within its limit: {step:?}");
        total.add(step);
        if step.examined < 3 && !step.interrupted {
            return total;
        }
    }
}

async fn settled_events_go_and_nothing_else(s: Arc<impl Store>) {
    // Delivered to both endpoints, the last at 1203.
    s.admit(event("evt_ok", 1000), deliveries(1000, &["be", "audit"]), TTL).await.unwrap();
    finish_all(s.as_ref(), "be", 1100, Next::Delivered).await;
    finish_all(s.as_ref(), "audit", 1200, Next::Delivered).await;
    // Dead at 1103; discarded at 1300; no deliveries, at 1000.
    s.admit(event("evt_dead", 1000), deliveries(1000, &["dead-end"]), TTL).await.unwrap();
    let dead = finish_all(s.as_ref(), "dead-end", 1100, Next::Dead).await;
    s.admit(event("evt_disc", 1000), deliveries(1000, &["closed"]), TTL).await.unwrap();
    let closed = s.event_deliveries(&"evt_disc".into()).await.unwrap()[0].id.clone();
    assert_eq!(s.discard(std::slice::from_ref(&closed), "refunded", None, 1300).await.unwrap().discarded, 1);
    s.admit(event("evt_none", 1000), vec![], TTL).await.unwrap();
    // Never removable while so: half open, orphaned, replayed.
    s.admit(event("evt_half", 1000), deliveries(1000, &["be", "slow"]), TTL).await.unwrap();
    finish_all(s.as_ref(), "be", 1100, Next::Delivered).await;
    s.reconcile_endpoints(&["be".into(), "audit".into(), "gone".into()], true, 1000).await.unwrap();
    s.admit(event("evt_orph", 1000), deliveries(1000, &["gone"]), TTL).await.unwrap();
    s.reconcile_endpoints(&["be".into(), "audit".into()], true, 1000).await.unwrap();
    s.admit(event("evt_again", 1000), deliveries(1000, &["again"]), TTL).await.unwrap();
    let again = finish_all(s.as_ref(), "again", 1100, Next::Delivered).await;
    assert_eq!(s.replay(&again, true, 1150).await.unwrap().replayed, 1);
    let before = s.stats().await.unwrap();
    assert_eq!((before.events, before.attempts), (7, 5));

    // Cut at 1150: the empty event (1000) and the dead one (1103) go; the
    // delivered one (last finish 1203) and the discarded one (1300) wait.
    let p = purge_all(s.as_ref(), all(1150), 1500).await;
    assert_eq!((p.events, p.deliveries, p.attempts), (2, 1, 1), "{p:?}");
    for id in ["evt_none", "evt_dead"] {
        assert!(s.event(&id.into()).await.unwrap().is_none(), "{id} removed");
        assert!(s.event_deliveries(&id.into()).await.unwrap().is_empty());
    }
    assert!(s.delivery(&dead[0]).await.unwrap().is_none());
    let dead_filter = DeliveryFilter { state: Some(DeliveryState::Dead), ..Default::default() };
    assert!(s.list(&dead_filter, None, 10).await.unwrap().items.is_empty());
    assert_eq!(s.counts().await.unwrap()[DeliveryState::Dead.index()].1, 0);
    assert!(s.event(&"evt_ok".into()).await.unwrap().is_some());
    // Looked at again, nothing more goes: the entries that were not due moved.
    assert_eq!(purge_all(s.as_ref(), all(1150), 1500).await.events, 0);

    // The dedupe key of a removed event lives on until its TTL (2000):
    // the provider's retry is still a duplicate. After it, the callback is new.
    assert_eq!(s.admit(event("evt_dead", 1600), vec![], TTL).await.unwrap(), Admission::Duplicate);
    assert!(s.event(&"evt_dead".into()).await.unwrap().is_none(), "a duplicate brings nothing back");
    s.sweep(2500).await.unwrap();
    assert_eq!(
        s.admit(event("evt_dead", 2600), deliveries(2600, &["be"]), TTL).await.unwrap(),
        Admission::Accepted { regression: false }
    );
    assert_eq!(s.event_deliveries(&"evt_dead".into()).await.unwrap().len(), 1, "only the new delivery");

    // Much later, everything settled goes; the rest stays whatever its age.
    let p = purge_all(s.as_ref(), all(FAR_FUTURE), FAR_FUTURE).await;
    assert_eq!(p.events, 2, "evt_ok and evt_disc: {p:?}");
    let kept: Vec<&str> = ["evt_half", "evt_orph", "evt_again", "evt_dead"].to_vec();
    for id in &kept {
        assert!(s.event(&(*id).into()).await.unwrap().is_some(), "{id} kept");
    }
    let counts = s.counts().await.unwrap().map(|(_, n)| n);
    // pending: slow, again, the new be; delivered: evt_half's be; orphaned: gone.
    assert_eq!(counts, [3, 0, 1, 0, 0, 0, 1], "{counts:?}");
    let after = s.stats().await.unwrap();
    assert_eq!((after.events, after.attempts), (4, 2), "{after:?}");

    // Finished again after its replay: it goes too.
    finish_all(s.as_ref(), "again", 3000, Next::Delivered).await;
    assert_eq!(purge_all(s.as_ref(), all(FAR_FUTURE), FAR_FUTURE).await.events, 1);
    assert!(s.event(&"evt_again".into()).await.unwrap().is_none());
}

async fn classes_keep_their_own_retention(s: Arc<impl Store>) {
    s.admit(event("evt_ok", 1000), deliveries(1000, &["be"]), TTL).await.unwrap();
    finish_all(s.as_ref(), "be", 1000, Next::Delivered).await;
    s.admit(event("evt_bad", 1000), deliveries(1000, &["be", "audit"]), TTL).await.unwrap();
    finish_all(s.as_ref(), "be", 1000, Next::Delivered).await;
    finish_all(s.as_ref(), "audit", 1000, Next::Dead).await;
    // Delivered retention over, dead retention not: one dead delivery is
    // enough to keep the whole event.
    let cut = Cutoffs { delivered: 5000, dead: 500, replay_jobs: 0 };
    assert_eq!(purge_all(s.as_ref(), cut, 5000).await.events, 1);
    assert!(s.event(&"evt_ok".into()).await.unwrap().is_none());
    assert!(s.event(&"evt_bad".into()).await.unwrap().is_some());
    let cut = Cutoffs { delivered: 5000, dead: 5000, replay_jobs: 0 };
    assert_eq!(purge_all(s.as_ref(), cut, 5000).await.events, 1);
    assert_eq!(s.stats().await.unwrap().events, 0);
    assert_eq!(s.stats().await.unwrap().retention_queue, 0, "nothing left queued");
}

async fn finished_replay_jobs_go_after_theirs(s: Arc<impl Store>) {
    let mut done = ReplayJob::new(DeliveryFilter::default(), false, 10, 1000);
    done.finished = true;
    s.create_replay_job(&done).await.unwrap();
    let open = ReplayJob::new(DeliveryFilter::default(), false, 10, 1000);
    s.create_replay_job(&open).await.unwrap();
    // A job finishes through a step (how the relay finishes them).
    let mut step = open.clone();
    step.steps = 1;
    step.finished = true;
    step.updated_at = 1200;
    let old = ReplayJob::new(DeliveryFilter::default(), false, 10, 1000);
    s.create_replay_job(&old).await.unwrap();
    assert!(s.replay_step(&step, &[], 1200).await.unwrap().is_some());
    let p = purge_all(s.as_ref(), Cutoffs { delivered: 0, dead: 0, replay_jobs: 1100 }, 2000).await;
    assert_eq!(p.replay_jobs, 1, "the job finished at 1000: {p:?}");
    assert!(s.replay_job(&done.id).await.unwrap().is_none());
    assert!(s.replay_job(&old.id).await.unwrap().is_some(), "an unfinished job stays");
    assert!(s.replay_job(&open.id).await.unwrap().is_some(), "finished at 1200, after the cutoff");
    let p2 = purge_all(s.as_ref(), Cutoffs { delivered: 0, dead: 0, replay_jobs: 1300 }, 2000).await;
    assert_eq!(p2.replay_jobs, 1, "{p:?} {p2:?}");
    assert!(s.replay_job(&open.id).await.unwrap().is_none());
    assert!(s.replay_job(&old.id).await.unwrap().is_some());
}

/// A provider's callback accepted again once its dedupe key expired is a
/// new copy of the event: old queue entries (here a dead one left by a
/// delivery later replayed) and old deliveries do not time it.
async fn a_copy_received_again_starts_its_retention_afresh(s: Arc<impl Store>) {
    s.admit(event("evt_c", 1000), deliveries(1000, &["be"]), TTL).await.unwrap();
    let ids = finish_all(s.as_ref(), "be", 1100, Next::Dead).await;
    assert_eq!(s.replay(&ids, false, 1200).await.unwrap().replayed, 1);
    finish_all(s.as_ref(), "be", 1300, Next::Delivered).await;
    let cut = Cutoffs { delivered: 5000, dead: 500, replay_jobs: 0 };
    assert_eq!(purge_all(s.as_ref(), cut, 5000).await.events, 1);
    s.sweep(5000).await.unwrap();
    assert_eq!(s.admit(event("evt_c", 10_000), vec![], TTL).await.unwrap(), Admission::Accepted { regression: false });
    assert_eq!(purge_all(s.as_ref(), all(9000), 10_500).await.events, 0, "received at 10 000");
    assert!(s.event(&"evt_c".into()).await.unwrap().is_some());
    assert_eq!(purge_all(s.as_ref(), all(10_001), 10_500).await.events, 1);
}

on_both_stores!(
    embedded(),
    redis().await,
    [
        settled_events_go_and_nothing_else,
        classes_keep_their_own_retention,
        finished_replay_jobs_go_after_theirs,
        a_copy_received_again_starts_its_retention_afresh,
    ]
);

/// Two relays purging one Redis at once: every event is removed exactly
/// once, and the counts stay true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_share_the_purge_of_one_redis() {
    let (a, server) = redis().await;
    let b = Arc::new(ipn_relay::store::redis::RedisStore::connect(&server.url, "conformance").await.unwrap());
    for i in 0..300u64 {
        a.admit(event(&format!("evt_{i}"), 1000 + i), deliveries(1000 + i, &["be"]), TTL).await.unwrap();
    }
    assert_eq!(finish_all(a.as_ref(), "be", 2000, Next::Delivered).await.len(), 100);
    assert_eq!(finish_all(a.as_ref(), "be", 2000, Next::Delivered).await.len(), 100);
    assert_eq!(finish_all(a.as_ref(), "be", 2000, Next::Delivered).await.len(), 100);
    let run = |s: Arc<ipn_relay::store::redis::RedisStore>| async move {
        let mut total = Purged::default();
        loop {
            let step = s.purge(all(FAR_FUTURE), FAR_FUTURE, 7).await.unwrap();
            total.add(step);
            if step.examined == 0 {
                return total;
            }
        }
    };
    let (ta, tb) = tokio::join!(tokio::spawn(run(a.clone())), tokio::spawn(run(b.clone())));
    let (ta, tb) = (ta.unwrap(), tb.unwrap());
    assert_eq!(ta.events + tb.events, 300, "{ta:?} {tb:?}");
    assert_eq!(ta.deliveries + tb.deliveries, 300);
    assert!(ta.events > 0 && tb.events > 0, "both took part: {ta:?} {tb:?}");
    let stats = a.stats().await.unwrap();
    assert_eq!((stats.events, stats.attempts, stats.retention_queue), (0, 0, 0), "{stats:?}");
    assert_eq!(a.counts().await.unwrap().map(|(_, n)| n), [0; 7]);
}

/// What `GET /admin/store` reports, on the embedded store: records, the
/// file's size and the oldest event.
#[tokio::test]
async fn embedded_stats_count_records_and_the_file() {
    let (s, _dir) = embedded();
    assert_eq!(s.stats().await.unwrap().oldest_event_at, None);
    s.admit(event("evt_a", 1_700_000_000_123), deliveries(1_700_000_000_123, &["be"]), TTL).await.unwrap();
    s.admit(event("evt_b", 1_700_000_000_456), vec![], TTL).await.unwrap();
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.events, stats.dedupe_keys, stats.retention_queue), (2, 2, 1));
    assert_eq!(stats.oldest_event_at, Some(1_700_000_000_123));
    assert!(stats.bytes > 0);
    assert_eq!(stats.deliveries[DeliveryState::Pending.index()].1, 1);
}

/// Data from before retention: settled events are queued once, on both
/// stores, and then removed like any other.
async fn settle_three(s: &impl Store) {
    s.admit(event("evt_1", 1000), deliveries(1000, &["be"]), TTL).await.unwrap();
    s.admit(event("evt_2", 1000), deliveries(1000, &["be"]), TTL).await.unwrap();
    finish_all(s, "be", 1000, Next::Delivered).await;
    s.admit(event("evt_3", 1000), vec![], TTL).await.unwrap();
}

#[tokio::test]
async fn an_embedded_file_from_before_retention_is_queued_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.redb");
    let s = ipn_relay::store::embedded::EmbeddedStore::open(&path).unwrap();
    settle_three(&s).await;
    s.close().await;
    // What an older version left: no queue, no marker.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.delete_table(redb::TableDefinition::<(u8, u64, &str), ()>::new("settled")).unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("meta")).unwrap().remove("retention_queue").unwrap();
        txn.commit().unwrap();
    }
    let s = ipn_relay::store::embedded::EmbeddedStore::open(&path).unwrap();
    assert_eq!(s.stats().await.unwrap().retention_queue, 3);
    let now = ipn_relay::store::now_millis();
    // Delivered ones by their finish; the one without deliveries from the upgrade.
    assert_eq!(purge_all(&s, all(5000), now).await.events, 2);
    assert_eq!(purge_all(&s, all(now + 1), now).await.events, 1);
    assert_eq!(s.stats().await.unwrap().events, 0);
}

#[tokio::test]
async fn redis_data_from_before_retention_is_indexed_at_connect() {
    let (s, server) = redis().await;
    settle_three(s.as_ref()).await;
    let mut raw = redis::Client::open(server.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let p = "{conformance}:";
    let _: () = redis::cmd("DEL")
        .arg(
            &[
                format!("{p}events"),
                format!("{p}settled:delivered"),
                format!("{p}settled:dead"),
                format!("{p}retention-index"),
            ][..],
        )
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: () = redis::cmd("HDEL").arg(format!("{p}counts")).arg("attempts").query_async(&mut raw).await.unwrap();
    let s = ipn_relay::store::redis::RedisStore::connect(&server.url, "conformance").await.unwrap();
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.events, stats.attempts, stats.retention_queue), (3, 2, 3), "{stats:?}");
    let now = ipn_relay::store::now_millis();
    assert_eq!(purge_all(&s, all(5000), now).await.events, 2);
    assert_eq!(purge_all(&s, all(now + 1), now).await.events, 1);
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.events, stats.attempts, stats.retention_queue), (0, 0, 0), "{stats:?}");
}

/// The relay applies `[retention]` by itself: delivered events go with
/// their deliveries (404 after), the counters and `store stats` say so, and
/// a provider's late retry is still a duplicate.
async fn the_relay_removes_settled_events_by_itself(store: Arc<dyn Store>, store_toml: &str) {
    use crate::admin::{Running, TOKEN, args, cli, config, get, wait_for};
    use crate::common::*;
    let backend = Receiver::start(|_| Reply::Status(200)).await;
    let ledger = Receiver::start(|_| Reply::Status(200)).await;
    let text = format!(
        "{}\n[retention]\ndelivered = \"1s\"\ndead = \"1s\"\n",
        config(store_toml, &backend.url(), &ledger.url())
    );
    let relay = Running::start(&text, store).await;
    let c = client();
    let a = relay.admin_url();
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, v) = post_to(&c, relay.addr, payment_ipn(9100 + i, "finished")).await.unwrap();
        assert_eq!(status, 200, "{v}");
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let delivered = wait_for(&c, &relay, "state=delivered", 6).await;
    let (status, v) = get(&c, format!("{a}/admin/store"), Some(TOKEN)).await;
    assert_eq!((status, v["events"].as_u64(), v["retention"]["delivered"].as_str()), (200, Some(3), Some("1s")), "{v}");
    // Within a few seconds every event and delivery is gone.
    let mut gone = false;
    for _ in 0..100 {
        if get(&c, format!("{a}/admin/events/{}", ids[2]), Some(TOKEN)).await.0 == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "the last event was never removed");
    for id in &ids {
        assert_eq!(get(&c, format!("{a}/admin/events/{id}"), Some(TOKEN)).await.0, 404);
    }
    for d in &delivered {
        let (status, _) = get(&c, format!("{a}/admin/deliveries/{}", d["id"].as_str().unwrap()), Some(TOKEN)).await;
        assert_eq!(status, 404);
    }
    let text = c.get(format!("{a}/metrics")).send().await.unwrap().text().await.unwrap();
    for line in [
        "ipn_relay_retention_removed_total{kind=\"event\"} 3",
        "ipn_relay_retention_removed_total{kind=\"delivery\"} 6",
        "ipn_relay_retention_seconds{class=\"delivered\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    let conn = ["--admin-url".to_owned(), a.clone(), "--token".to_owned(), TOKEN.to_owned()];
    let (code, out, err) = cli(&[args(&["store", "stats"]), conn.to_vec()].concat()).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("events:       0\n") && out.contains("retention:    delivered 1s, dead 1s, replay jobs 30d"),
        "{out}"
    );
    // The dedupe key outlives the event.
    let (status, v) = post_to(&c, relay.addr, payment_ipn(9100, "finished")).await.unwrap();
    assert_eq!((status, v["status"].as_str()), (200, Some("duplicate")), "{v}");
    assert_eq!(backend.received().len(), 3, "nothing was sent twice");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_relay_removes_settled_events_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.redb");
    let store = Arc::new(ipn_relay::store::embedded::EmbeddedStore::open(&path).unwrap());
    the_relay_removes_settled_events_by_itself(store, &format!("path = \"{}\"", path.display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_relay_removes_settled_events_by_itself() {
    let server = crate::common::RedisServer::start();
    let store = Arc::new(ipn_relay::store::redis::RedisStore::connect(&server.url, "kept").await.unwrap());
    let toml = format!("kind = \"redis\"\nurl = \"{}\"\nprefix = \"kept\"", server.url);
    the_relay_removes_settled_events_by_itself(store, &toml).await;
}

/// `kill -9` in the middle of a purge leaves nothing half removed: every
/// event is there whole (both deliveries, each with its attempt) or gone
/// whole, counts match the records, and the restarted relay finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_purge_leaves_nothing_half_removed() {
    use crate::common::*;
    const EVENTS: u64 = 12_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.redb");
    let store = Arc::new(ipn_relay::store::embedded::EmbeddedStore::open(&path).unwrap());
    let ids: Vec<String> = (0..EVENTS).map(|i| format!("evt_{i:05}")).collect();
    for chunk in ids.chunks(500) {
        let admits = chunk.iter().map(|id| {
            let s = store.clone();
            let id = id.clone();
            tokio::spawn(async move { s.admit(event(&id, 1000), deliveries(1000, &["be", "be"]), TTL).await.unwrap() })
        });
        for a in admits.collect::<Vec<_>>() {
            a.await.unwrap();
        }
    }
    loop {
        let claims = store.claim_due("be", 1000, 1000, 600_000).await.unwrap();
        if claims.is_empty() {
            break;
        }
        let finishes = claims.into_iter().map(|c| {
            let s = store.clone();
            tokio::spawn(async move {
                let d = c.delivery;
                assert!(s.finish(&d.id, d.claim_token, attempt(1000, 200), Next::Delivered).await.unwrap());
            })
        });
        for f in finishes.collect::<Vec<_>>() {
            f.await.unwrap();
        }
    }
    Arc::into_inner(store).unwrap().close().await;

    let config = dir.path().join("relay.toml");
    let text = format!(
        "{}\n[[endpoints]]\nname = \"be\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\n[retention]\ndelivered = \"1s\"\n\n[log]\nformat = \"json\"\n",
        base_config(&path)
    );
    std::fs::write(&config, text).unwrap();
    let removed = |relay: &RelayProcess| {
        use std::io::{Read, Write};
        let mut text = String::new();
        if let Ok(mut conn) = std::net::TcpStream::connect(relay.admin) {
            let _ = conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: relay\r\nconnection: close\r\n\r\n");
            let _ = conn.read_to_string(&mut text);
        }
        text.lines()
            .find_map(|l| l.strip_prefix("ipn_relay_retention_removed_total{kind=\"event\"} "))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut relay = spawn_relay(&config);
    assert!(eventually(std::time::Duration::from_secs(30), || removed(&relay) > 0).await, "the purge never started");
    // Steps commit without fsync, and durably once a second: give it more
    // than a second so that some removals are on disk at the kill.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let at_kill = removed(&relay);
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();
    drop(relay);

    let store = ipn_relay::store::embedded::EmbeddedStore::open(&path).unwrap();
    let stats = store.stats().await.unwrap();
    assert!(at_kill < EVENTS, "the kill must land mid-purge: {at_kill} removed");
    assert!(stats.events < EVENTS, "some removal reached the disk: {stats:?}");
    let mut kept = 0;
    for id in &ids {
        let event = store.event(&id.as_str().into()).await.unwrap();
        let ds = store.event_deliveries(&id.as_str().into()).await.unwrap();
        match event {
            None => assert!(ds.is_empty(), "{id}: deliveries outlived their event"),
            Some(_) => {
                kept += 1;
                assert_eq!(ds.len(), 2, "{id}: half its deliveries removed");
                for d in &ds {
                    let (_, attempts) = store.delivery(&d.id).await.unwrap().unwrap();
                    assert_eq!(attempts.len(), 1, "{id}: attempts removed without their delivery");
                }
            }
        }
    }
    assert_eq!(kept, stats.events);
    assert_eq!(stats.attempts, 2 * kept);
    assert_eq!(stats.deliveries[DeliveryState::Delivered.index()].1, 2 * kept, "counts match the records");
    store.close().await;

    let relay = spawn_relay(&config);
    // A bound for a loaded machine, not a speed: CI once took over 60 s.
    let done = eventually(std::time::Duration::from_secs(180), || removed(&relay) == kept).await;
    assert!(done, "the restarted relay removed {} of {kept}", removed(&relay));
    drop(relay);
}
