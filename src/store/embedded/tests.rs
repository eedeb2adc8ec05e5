//! Embedded-store tests that need its internals: old files, corrupt records,
//! failed commits.

use super::*;
use crate::store::{DeliveryId, DeliveryState, NewDelivery, NewEvent};

pub(super) fn event(id: &str, at: u64) -> NewEvent {
    NewEvent {
        id: id.into(),
        source: "np".into(),
        event_type: "t.t".into(),
        received_at: at,
        json: b"{}".to_vec(),
        subject: None,
    }
}

#[tokio::test]
async fn a_file_from_before_the_state_index_is_indexed_once_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.redb");
    let store = EmbeddedStore::open(&path).unwrap();
    let ds = ["be", "gone"].map(|e| NewDelivery {
        id: DeliveryId::new(1000),
        endpoint: e.into(),
        policy: Default::default(),
    });
    store.admit(event("evt_old", 1000), ds.to_vec(), 10_000).await.unwrap();
    let c = store.claim_due("be", 1000, 1, 500).await.unwrap().remove(0);
    let failed = Attempt {
        number: 0,
        started_at: 1000,
        duration_ms: 1,
        result: crate::store::AttemptResult::Status { code: 500 },
        response_excerpt: None,
    };
    assert!(store.finish(&c.delivery.id, c.delivery.claim_token, failed, Next::Dead).await.unwrap());
    store.close().await;

    // Take the file back to how an older version left it: no state
    // index, no endpoint list, no marker.
    let db = Database::create(&path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.delete_table(BY_STATE).unwrap();
    txn.delete_table(ENDPOINTS).unwrap();
    txn.open_table(META).unwrap().remove("state_index").unwrap();
    txn.commit().unwrap();
    drop(db);

    let store = EmbeddedStore::open(&path).unwrap();
    let dead = DeliveryFilter { state: Some(DeliveryState::Dead), ..Default::default() };
    let page = store.list(&dead, None, 10).await.unwrap();
    assert_eq!(page.items.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), [c.delivery.id.as_str()]);
    // The endpoints of the schedule are known, so a removed one is found.
    assert_eq!(store.known_endpoints().await.unwrap(), ["gone"]);
    let found = store.reconcile_endpoints(&["be".into()], true, 2000).await.unwrap();
    assert_eq!(found.orphaned, vec![("gone".to_owned(), 1)]);
}

#[tokio::test]
async fn corrupt_records_fail_alone_and_never_wedge_claims() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.redb");
    let store = EmbeddedStore::open(&path).unwrap();
    let good = NewDelivery { id: DeliveryId::new(1000), endpoint: "be".into(), policy: Default::default() };
    let orphan = NewDelivery { id: DeliveryId::new(1000), endpoint: "be".into(), policy: Default::default() };
    store.admit(event("evt_good", 1000), vec![good.clone()], 10_000).await.unwrap();
    store.admit(event("evt_orphan", 1000), vec![orphan.clone()], 10_000).await.unwrap();
    store.close().await;

    // Break two records behind the store's back: one delivery becomes
    // unreadable, and one event's index entry disappears.
    let db = Database::create(&path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut deliveries = txn.open_table(DELIVERIES).unwrap();
        deliveries.insert("dlv_broken", b"not json".as_slice()).unwrap();
        txn.open_table(DUE).unwrap().insert(("be", 500u64, "dlv_broken"), ()).unwrap();
        txn.open_table(EVENT_INDEX).unwrap().remove("evt_orphan").unwrap();
    }
    txn.commit().unwrap();
    drop(db);

    let store = EmbeddedStore::open(&path).unwrap();
    let claims = store.claim_due("be", 2000, 10, 500).await.unwrap();
    let ids: Vec<_> = claims.iter().map(|c| c.delivery.id.clone()).collect();
    assert_eq!(ids, vec![good.id.clone()], "only the readable, deliverable one is claimed");
    let (d, _) = store.delivery(&orphan.id).await.unwrap().unwrap();
    assert_eq!(d.state, DeliveryState::Dead);
    assert!(d.last_error.unwrap().contains("event record missing"));
    // The broken one is off the schedule: later claims do not meet it again.
    assert!(store.claim_due("be", 2400, 10, 500).await.unwrap().is_empty());
    // Replaying it is counted, not fatal; admissions still commit.
    let r = store.replay(&["dlv_broken".into()], false, 3000).await.unwrap();
    assert_eq!(r.skipped, 1);
    // It cannot be finished either: nobody holds a claim on it.
    assert!(!store.finish(&"dlv_broken".into(), 1, attempt(), Next::Delivered).await.unwrap());
    store.admit(event("evt_after", 3000), vec![], 10_000).await.unwrap();
    assert!(store.event(&"evt_after".into()).await.unwrap().is_some());
    store.ping().await.unwrap();
}

/// In-memory storage whose writes can be switched to fail, shared by
/// every (re)open so the data survives the reopen after an error.
#[derive(Debug, Clone)]
struct Faulty {
    inner: Arc<redb::backends::InMemoryBackend>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl Faulty {
    fn check(&self) -> std::io::Result<()> {
        match self.fail.load(Ordering::SeqCst) {
            true => Err(std::io::Error::other("injected write failure")),
            false => Ok(()),
        }
    }
}

impl redb::StorageBackend for Faulty {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.inner.write(offset, data)
    }
}

#[tokio::test]
async fn a_failed_commit_leaves_claims_as_they_were() {
    let backend = Faulty { inner: Arc::default(), fail: Arc::default() };
    let fail = backend.fail.clone();
    let open = move || {
        let db = Database::builder().create_with_backend(backend.clone()).map_err(unavailable)?;
        init_tables(db)
    };
    let store = EmbeddedStore::with_opener("faulty".into(), open).unwrap();
    let d = || vec![NewDelivery { id: DeliveryId::new(1000), endpoint: "be".into(), policy: Default::default() }];
    store.admit(event("evt_a", 1000), d(), 10_000).await.unwrap();
    store.admit(event("evt_b", 1000), d(), 10_000).await.unwrap();
    let held = store.claim_due("be", 1000, 1, 60_000).await.unwrap().remove(0);

    fail.store(true, Ordering::SeqCst);
    // A discard that dropped the (by its clock expired) claim did not
    // happen in memory either...
    let ids = std::slice::from_ref(&held.delivery.id);
    assert!(store.discard(ids, "x", None, 100_000).await.is_err());
    // ...the finish is not on disk, so in memory the claim is still held...
    let r = store.finish(&held.delivery.id, held.delivery.claim_token, attempt(), Next::Delivered).await;
    assert!(r.is_err());
    // ...and a claim whose commit failed was never made.
    assert!(store.claim_due("be", 1000, 10, 60_000).await.is_err());
    fail.store(false, Ordering::SeqCst);

    let again = store.claim_due("be", 1000, 10, 60_000).await.unwrap();
    let ids: Vec<_> = again.iter().map(|c| c.delivery.id.clone()).collect();
    assert_eq!(ids.len(), 1, "the unheld delivery is claimable");
    assert!(!ids.contains(&held.delivery.id), "a held claim was handed out again");
    let r = store.finish(&held.delivery.id, held.delivery.claim_token, attempt(), Next::Delivered).await;
    assert!(r.unwrap(), "the holder can still record its attempt");
    let (d, attempts) = store.delivery(&held.delivery.id).await.unwrap().unwrap();
    assert_eq!((d.state, attempts.len()), (DeliveryState::Delivered, 1));
}

fn attempt() -> Attempt {
    Attempt {
        number: 0,
        started_at: 0,
        duration_ms: 0,
        result: crate::store::AttemptResult::Status { code: 200 },
        response_excerpt: None,
    }
}

// Subjects and gates (lifecycle).

fn subject_event(id: &str, status: &str, at: u64) -> NewEvent {
    let json = format!(r#"{{"id":"{id}"}}"#).into_bytes();
    let subject = crate::store::SubjectRef::of("np", "nowpayments", "payment", Some("p1"), Some(status)).unwrap();
    let at_byte = json.len() - 1;
    NewEvent {
        id: id.into(),
        source: "np".into(),
        event_type: "t.t".into(),
        received_at: at,
        json,
        subject: Some(crate::store::Numbering { subject, at: at_byte }),
    }
}

/// Replaces one record of a closed store's file behind its back.
fn overwrite(path: &Path, table: redb::TableDefinition<&str, &[u8]>, key: &str, bytes: &[u8]) {
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(table).unwrap().insert(key, bytes).unwrap();
    txn.commit().unwrap();
}

fn ordered(at: u64) -> Vec<NewDelivery> {
    let policy = crate::store::Policy { ordered: true, skip_regressions: false };
    vec![NewDelivery { id: DeliveryId::new(at), endpoint: "be".into(), policy }]
}

/// A backup taken with `snapshot()` and opened as a store keeps numbering
/// subjects and delivering a subject's later events.
#[tokio::test]
async fn a_snapshot_keeps_subjects_and_gates() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("r.redb")).unwrap();
    for (i, st) in ["waiting", "confirming", "finished"].iter().enumerate() {
        let at = 1000 + i as u64;
        store.admit(subject_event(&format!("evt_{i}"), st, at), ordered(at), 10_000).await.unwrap();
    }
    let (mut file, _) = store.snapshot().await.unwrap().unwrap();
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).unwrap();
    let copy = dir.path().join("copy.redb");
    std::fs::write(&copy, bytes).unwrap();
    store.close().await;
    let restored = EmbeddedStore::open(&copy).unwrap();
    // Numbering goes on from 3.
    restored.admit(subject_event("evt_3", "refunded", 1003), vec![], 10_000).await.unwrap();
    let json = restored.event(&"evt_3".into()).await.unwrap().unwrap().json;
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let seq = v["sequence"].clone();
    // The subject's deliveries keep flowing, in order.
    let c = restored.claim_due("be", 2000, 10, 500).await.unwrap();
    assert_eq!(c.len(), 1);
    assert!(restored.finish(&c[0].delivery.id, c[0].delivery.claim_token, attempt(), Next::Delivered).await.unwrap());
    let next = restored.claim_due("be", 2001, 10, 500).await.unwrap();
    let timeline = restored.subject("np/payment/p1").await.unwrap().len();
    let (d1, _) =
        restored.delivery(&restored.event_deliveries(&"evt_1".into()).await.unwrap()[0].id).await.unwrap().unwrap();
    assert_eq!(
        (seq, timeline, next.len()),
        (serde_json::Value::from(4), 4, 1),
        "after restore: new event's sequence, timeline length, claimable after evt_0 delivered (evt_1 is {:?})",
        d1.state
    );
}

/// An unreadable delivery at the head of a gate: later admissions of the
/// subject to the endpoint must still commit whole (or fail whole).
#[tokio::test]
async fn an_unreadable_gate_head_does_not_break_admissions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.redb");
    let store = EmbeddedStore::open(&path).unwrap();
    let first = ordered(1000);
    store.admit(subject_event("evt_a", "waiting", 1000), first.clone(), 10_000).await.unwrap();
    store.close().await;
    overwrite(&path, DELIVERIES, first[0].id.as_str(), b"not json");
    let store = EmbeddedStore::open(&path).unwrap();
    let r = store.admit(subject_event("evt_b", "confirming", 2000), ordered(2000), 10_000).await;
    let stored = store.event(&"evt_b".into()).await.unwrap();
    let pending = store.counts().await.unwrap()[DeliveryState::Pending.index()].1;
    assert!(r.is_ok(), "admission refused: {r:?}; event stored: {}; pending count: {pending}", stored.is_some());
    // The damaged head left the gate: the next delivery of the subject goes.
    let claims = store.claim_due("be", 3000, 10, 500).await.unwrap();
    assert_eq!(claims.iter().map(|c| c.delivery.event_id.as_str()).collect::<Vec<_>>(), ["evt_b"]);
}

/// A damaged head that nothing touches again (the claim took it off the
/// schedule, nothing else of its subject comes) is passed over by the gate
/// check housekeeping runs.
#[tokio::test]
async fn the_gate_check_passes_over_an_unreadable_head() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.redb");
    let store = EmbeddedStore::open(&path).unwrap();
    let (first, second) = (ordered(1000), ordered(1001));
    store.admit(subject_event("evt_a", "waiting", 1000), first.clone(), 10_000).await.unwrap();
    store.admit(subject_event("evt_b", "confirming", 1001), second, 10_000).await.unwrap();
    store.close().await;
    overwrite(&path, DELIVERIES, first[0].id.as_str(), b"not json");
    let store = EmbeddedStore::open(&path).unwrap();
    // The claim meets the unreadable head and takes it off the schedule.
    assert!(store.claim_due("be", 3000, 10, 500).await.unwrap().is_empty());
    let (healed, next) = store.heal_gates(None, 100).await.unwrap();
    assert_eq!((healed, next), (1, None));
    let claims = store.claim_due("be", 3000, 10, 500).await.unwrap();
    assert_eq!(claims.iter().map(|c| c.delivery.event_id.as_str()).collect::<Vec<_>>(), ["evt_b"]);
}

/// The snapshot copies every table the store has: a table added later
/// and left out of the copy would be lost by every restore.
#[tokio::test]
async fn a_snapshot_copies_every_table() {
    use redb::ReadableDatabase;
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("r.redb")).unwrap();
    let (mut file, _) = store.snapshot().await.unwrap().unwrap();
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).unwrap();
    store.close().await;
    let copy = dir.path().join("copy.redb");
    std::fs::write(&copy, bytes).unwrap();
    let names = |path: &Path| {
        let db = Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        let mut v: Vec<String> = txn.list_tables().unwrap().map(|t| redb::TableHandle::name(&t).to_owned()).collect();
        v.sort();
        v
    };
    let mut original = names(&dir.path().join("r.redb"));
    // Scratch space for readiness probes is not data.
    original.retain(|t| t != "probe");
    assert_eq!(names(&copy), original);
}

/// An unreadable subject record is rebuilt from the subject's timeline and
/// its events' deliveries: the next callback is numbered on (not refused,
/// not numbered from 1) and the subject's deliveries still go in order.
#[tokio::test]
async fn an_unreadable_subject_record_is_rebuilt_and_order_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.redb");
    let store = EmbeddedStore::open(&path).unwrap();
    store.admit(subject_event("evt_a", "waiting", 1000), ordered(1000), 10_000).await.unwrap();
    store.admit(subject_event("evt_b", "confirming", 1001), ordered(1001), 10_000).await.unwrap();
    store.close().await;
    overwrite(&path, SUBJECTS, "np/payment/p1", b"\x01\x02");
    let store = EmbeddedStore::open(&path).unwrap();
    let r = store.admit(subject_event("evt_c", "finished", 1002), ordered(1002), 10_000).await.unwrap();
    assert!(matches!(r, Admission::Accepted { .. }));
    let c = store.event(&"evt_c".into()).await.unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&c.json).unwrap();
    assert_eq!(v["sequence"], 3);
    for want in ["evt_a", "evt_b", "evt_c"] {
        let claims = store.claim_due("be", 5000, 10, 500).await.unwrap();
        assert_eq!(claims.iter().map(|c| c.delivery.event_id.as_str()).collect::<Vec<_>>(), [want]);
        let d = &claims[0].delivery;
        assert!(store.finish(&d.id, d.claim_token, attempt(), Next::Delivered).await.unwrap());
    }
}
