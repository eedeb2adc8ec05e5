//! Power loss after non-durable (claim-only) commits.
//!
//! A backend that keeps what was synced apart from what was written since;
//! a "power loss" keeps the synced image plus a random subset of the later
//! writes. The recovered file must hold every acknowledged durable write,
//! and its indexes and counts must agree with its delivery records.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable};

use super::codec::decode_delivery;
use super::tables::*;
use super::tests::event;
use super::*;
use crate::store::{Attempt, AttemptResult, DeliveryId, DeliveryState, NewDelivery, Next, Store};

#[derive(Debug)]
enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Disk {
    durable: Vec<u8>,
    live: Vec<u8>,
    pending: Vec<Pending>,
    syncs: u64,
}

#[derive(Debug, Clone, Default)]
struct PowerLoss(Arc<Mutex<Disk>>);

impl PowerLoss {
    fn from_image(img: Vec<u8>) -> PowerLoss {
        PowerLoss(Arc::new(Mutex::new(Disk { durable: img.clone(), live: img, pending: Vec::new(), syncs: 0 })))
    }

    /// The disk after a power loss now: what was synced, plus a random
    /// subset of the writes since (`seed` picks which).
    fn crash_image(&self, seed: u64) -> Vec<u8> {
        let d = self.0.lock().unwrap();
        let mut img = d.durable.clone();
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for p in &d.pending {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let keep = match seed % 3 {
                0 => false,      // nothing since the sync
                1 => true,       // everything written (a process crash)
                _ => x & 1 == 1, // a random subset
            };
            if !keep {
                continue;
            }
            match p {
                Pending::Write(off, data) => {
                    let end = *off as usize + data.len();
                    if img.len() < end {
                        img.resize(end, 0);
                    }
                    img[*off as usize..end].copy_from_slice(data);
                }
                Pending::SetLen(len) => img.resize(*len as usize, 0),
            }
        }
        img
    }

    fn syncs(&self) -> u64 {
        self.0.lock().unwrap().syncs
    }
}

impl redb::StorageBackend for PowerLoss {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.lock().unwrap().live.len() as u64)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let d = self.0.lock().unwrap();
        let end = offset as usize + out.len();
        if end > d.live.len() {
            return Err(std::io::Error::other("read past the end"));
        }
        out.copy_from_slice(&d.live[offset as usize..end]);
        Ok(())
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut d = self.0.lock().unwrap();
        d.live.resize(len as usize, 0);
        d.pending.push(Pending::SetLen(len));
        Ok(())
    }
    fn sync_data(&self) -> std::io::Result<()> {
        let mut d = self.0.lock().unwrap();
        d.durable = d.live.clone();
        d.pending.clear();
        d.syncs += 1;
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut d = self.0.lock().unwrap();
        let end = offset as usize + data.len();
        if end > d.live.len() {
            return Err(std::io::Error::other("write past the end"));
        }
        d.live[offset as usize..end].copy_from_slice(data);
        d.pending.push(Pending::Write(offset, data.to_vec()));
        Ok(())
    }
}

fn open_on(backend: PowerLoss) -> EmbeddedStore {
    EmbeddedStore::with_opener("powerloss".into(), move || {
        let db = Database::builder().create_with_backend(backend.clone()).map_err(unavailable)?;
        init_tables(db)
    })
    .unwrap()
}

fn ok_attempt() -> Attempt {
    Attempt {
        number: 0,
        started_at: 0,
        duration_ms: 0,
        result: AttemptResult::Status { code: 200 },
        response_excerpt: None,
    }
}

/// Everything in the tables that claims touch, as plain values.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Dump {
    events: BTreeSet<String>,
    deliveries: BTreeMap<String, (DeliveryState, Option<u64>, String)>,
    open: BTreeSet<String>,
    due: BTreeSet<(String, u64, String)>,
    counts: BTreeMap<String, u64>,
    by_state: BTreeSet<(String, String)>,
}

fn dump(db: &Database) -> Dump {
    let txn = db.begin_read().unwrap();
    let mut d = Dump {
        events: BTreeSet::new(),
        deliveries: BTreeMap::new(),
        open: BTreeSet::new(),
        due: BTreeSet::new(),
        counts: BTreeMap::new(),
        by_state: BTreeSet::new(),
    };
    for e in txn.open_table(EVENT_INDEX).unwrap().iter().unwrap() {
        d.events.insert(e.unwrap().0.value().to_owned());
    }
    for e in txn.open_table(DELIVERIES).unwrap().iter().unwrap() {
        let (k, v) = e.unwrap();
        let r = decode_delivery(k.value(), v.value()).unwrap();
        d.deliveries.insert(k.value().to_owned(), (r.state, r.next_attempt_at, r.endpoint));
    }
    for e in txn.open_table(OPEN).unwrap().iter().unwrap() {
        d.open.insert(e.unwrap().0.value().to_owned());
    }
    for e in txn.open_table(DUE).unwrap().iter().unwrap() {
        let (k, _) = e.unwrap();
        let (a, b, c) = k.value();
        d.due.insert((a.to_owned(), b, c.to_owned()));
    }
    for e in txn.open_table(COUNTS).unwrap().iter().unwrap() {
        let (k, v) = e.unwrap();
        d.counts.insert(k.value().to_owned(), v.value());
    }
    for e in txn.open_table(BY_STATE).unwrap().iter().unwrap() {
        let (k, _) = e.unwrap();
        let (a, b) = k.value();
        d.by_state.insert((a.to_owned(), b.to_owned()));
    }
    d
}

/// The indexes and counts agree with the delivery records (ids in
/// `missing` have a schedule entry but no record on purpose).
fn check_consistent(d: &Dump, missing: &BTreeSet<String>) {
    let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
    for (state, _, _) in d.deliveries.values() {
        *by_state.entry(state.as_str()).or_default() += 1;
    }
    let live_missing = d.open.iter().filter(|id| missing.contains(*id)).count() as u64;
    for state in DeliveryState::ALL {
        let stored = d.counts.get(state.as_str()).copied().unwrap_or(0);
        let mut want = by_state.get(state.as_str()).copied().unwrap_or(0);
        if state == DeliveryState::Pending {
            want += live_missing;
        }
        assert_eq!(stored, want, "count of {} out of step: {d:#?}", state.as_str());
    }
    let open_want: BTreeSet<String> = d
        .deliveries
        .iter()
        .filter(|(_, (s, _, _))| matches!(s, DeliveryState::Pending | DeliveryState::InFlight))
        .map(|(id, _)| id.clone())
        .collect();
    let open_have: BTreeSet<String> = d.open.iter().filter(|id| !missing.contains(*id)).cloned().collect();
    assert_eq!(open_have, open_want, "open index out of step");
    for (id, (s, at, ep)) in &d.deliveries {
        if matches!(s, DeliveryState::Pending | DeliveryState::InFlight) {
            assert!(d.due.contains(&(ep.clone(), at.unwrap(), id.clone())), "{id} not scheduled");
        }
        if matches!(s, DeliveryState::Dead) {
            assert!(d.by_state.contains(&("dead".into(), id.clone())), "{id} not in by_state");
        }
    }
}

fn reopen_image(img: Vec<u8>) -> Database {
    let db = Database::builder().create_with_backend(PowerLoss::from_image(img)).unwrap();
    init_tables(db).unwrap()
}

fn live_db(store: &EmbeddedStore) -> Arc<Database> {
    store.db.read().unwrap().clone().unwrap()
}

#[tokio::test]
async fn a_claim_only_commit_is_lost_whole_at_a_power_loss_and_redone() {
    let backend = PowerLoss::default();
    let store = open_on(backend.clone());
    let mk = || NewDelivery { id: DeliveryId::new(1000), endpoint: "be".into(), policy: Default::default() };
    let (da, dbm, dc) = (mk(), mk(), mk());
    store.admit(event("evt_a", 1000), vec![da.clone()], 10_000).await.unwrap();
    store.admit(event("evt_b", 1000), vec![dbm.clone()], 10_000).await.unwrap();
    store.admit(event("evt_c", 1000), vec![dc.clone()], 10_000).await.unwrap();
    // Break two records, durably: evt_a's index (its delivery will be
    // marked dead by a claim) and dbm's record (a claim will unschedule it).
    {
        let db = live_db(&store);
        let txn = db.begin_write().unwrap();
        txn.open_table(EVENT_INDEX).unwrap().remove("evt_a").unwrap();
        txn.open_table(DELIVERIES).unwrap().remove(dbm.id.as_str()).unwrap();
        txn.commit().unwrap();
    }
    let missing: BTreeSet<String> = [dbm.id.as_str().to_owned()].into();
    let before = dump(&live_db(&store));
    check_consistent(&before, &missing);
    let syncs = backend.syncs();

    // A claim-only batch: marks da dead, unschedules dbm, claims dc.
    let claimed = store.claim_due("be", 2000, 10, 60_000).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.delivery.id.clone()).collect::<Vec<_>>(), vec![dc.id.clone()]);
    assert_eq!(backend.syncs(), syncs, "the claim-only batch did not fsync");
    let after = dump(&live_db(&store));
    assert_eq!(after.deliveries[da.id.as_str()].0, DeliveryState::Dead, "readers see the non-durable commit");
    assert!(!after.open.contains(dbm.id.as_str()));
    check_consistent(&after, &BTreeSet::new());

    // A power loss now: the file is as before the claim, never half of it.
    for seed in 0..30 {
        let recovered = dump(&reopen_image(backend.crash_image(seed)));
        assert_eq!(recovered, before, "seed {seed}: a power loss after a claim-only commit");
    }
    // A restarted store redoes it.
    let restarted = open_on(PowerLoss::from_image(backend.crash_image(0)));
    let again = restarted.claim_due("be", 2000, 10, 60_000).await.unwrap();
    assert_eq!(again.len(), 1);
    let redone = dump(&live_db(&restarted));
    assert_eq!(redone.deliveries, after.deliveries);
    assert_eq!(redone.counts, after.counts);
    assert_eq!(redone.open, after.open);
    assert_eq!(redone.by_state, after.by_state);

    // The next durable commit carries the claim's writes with it.
    store.admit(event("evt_d", 3000), vec![mk()], 10_000).await.unwrap();
    let durable = dump(&live_db(&store));
    for seed in 0..30 {
        let recovered = dump(&reopen_image(backend.crash_image(seed)));
        assert_eq!(recovered, durable, "seed {seed}: after a durable commit");
        check_consistent(&recovered, &BTreeSet::new());
    }
}

/// Random traffic; a power loss after every operation: nothing acknowledged
/// as durable is lost and the file is consistent.
#[tokio::test]
async fn power_loss_at_any_point_loses_nothing_acknowledged() {
    let backend = PowerLoss::default();
    let store = open_on(backend.clone());
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut admitted: Vec<String> = Vec::new();
    let mut delivered: BTreeSet<String> = BTreeSet::new();
    let mut held: Vec<(DeliveryId, u64)> = Vec::new();
    let mut now = 10_000u64;
    for step in 0..400u64 {
        now += 7;
        match next() % 4 {
            0 | 1 => {
                let id = format!("evt_{step}");
                let eps = ["be", "other"];
                let ds: Vec<NewDelivery> = eps
                    .iter()
                    .take(1 + (next() % 2) as usize)
                    .map(|e| NewDelivery {
                        id: DeliveryId::new(now),
                        endpoint: (*e).into(),
                        policy: Default::default(),
                    })
                    .collect();
                store.admit(event(&id, now), ds, 1_000_000).await.unwrap();
                admitted.push(id);
            }
            2 => {
                let ep = if next() % 2 == 0 { "be" } else { "other" };
                for c in store.claim_due(ep, now, 1 + (next() % 5) as usize, 50).await.unwrap() {
                    held.push((c.delivery.id.clone(), c.delivery.claim_token));
                }
            }
            _ => {
                if !held.is_empty() {
                    let (id, token) = held.remove((next() % held.len() as u64) as usize);
                    let outcome = match next() % 3 {
                        0 => Next::RetryAt(now + 20),
                        1 => Next::Dead,
                        _ => Next::Delivered,
                    };
                    if store.finish(&id, token, ok_attempt(), outcome).await.unwrap()
                        && matches!(outcome, Next::Delivered)
                    {
                        delivered.insert(id.as_str().to_owned());
                    }
                }
            }
        }
        let recovered = dump(&reopen_image(backend.crash_image(next())));
        for id in &admitted {
            assert!(recovered.events.contains(id), "step {step}: acknowledged event {id} lost");
        }
        for id in &delivered {
            assert_eq!(recovered.deliveries[id].0, DeliveryState::Delivered, "step {step}: finish of {id} lost");
        }
        check_consistent(&recovered, &BTreeSet::new());
    }
}
