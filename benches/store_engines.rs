//! The embedded store's candidates side by side, on the relay's write
//! pattern, one writer thread, every batch durable (fsync) before the next:
//!
//! - each batch admits `B` events (a 32-character random event id with its
//!   index record, a 750-byte body, a dedupe expiry, one delivery with its
//!   schedule and open-index entries, the state counts) and finishes `B`
//!   deliveries admitted one batch earlier (the delivery rewritten, an
//!   attempt record added, schedule and open entries removed, counts);
//! - `redb-current`: the tables the relay uses today;
//! - `redb-checkpointed`: the current tables committed without fsync, with
//!   a durable commit every 150th batch: the B-tree's share of a design
//!   with a journal in front (add `journal` for the whole);
//! - `redb-compact`: four tables (event with its body, delivery with its
//!   attempts inline, schedule, dedupe expiry);
//! - `fjall`: the current layout as LSM keyspaces, a write batch and
//!   `persist(SyncData)` per batch;
//! - `journal`: an append-only file of checksummed records and one
//!   `fdatasync` per batch: what a journal in front of the B-tree costs on
//!   the hot path, its lower bound (no checkpoint, no reads).
//!
//! Printed per engine and batch size: batches per second, events per second,
//! the process's CPU per event (the engine's background threads included), and bytes the process wrote per event
//! (from /proc). Run with `cargo bench --bench store_engines --features
//! engine-comparison` (env: ENGINE_SECS, default 4; ENGINE_RUNS, default 3;
//! ENGINE_BATCHES, default `9,64`; ENGINE_KINDS, default all five).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use redb::{Durability, ReadableTable, TableDefinition};

const BODY: usize = 750;
const DELIVERY: usize = 300;
const ATTEMPT: usize = 200;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// CPU seconds of the whole process (the engine's background threads
/// included), from /proc.
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// Bytes this process has caused to be written to storage, from /proc.
fn written_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines().find_map(|l| l.strip_prefix("write_bytes: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// One event's writes, as the relay makes them. The payloads are random
/// bytes, so an engine that compresses gains no more than it would on real
/// JSON; they come from a pool made before timing starts, so making them
/// costs no engine anything.
struct Event {
    id: String,
    delivery: String,
    due: u64,
    slot: usize,
}

const POOL: usize = 4096;

struct Payloads {
    bodies: Vec<Vec<u8>>,
    records: Vec<Vec<u8>>,
    attempts: Vec<Vec<u8>>,
}

fn payloads() -> &'static Payloads {
    static POOL_: std::sync::OnceLock<Payloads> = std::sync::OnceLock::new();
    POOL_.get_or_init(|| {
        let random = |n: usize| (0..POOL).map(|_| (0..n).map(|_| rand::random::<u8>()).collect()).collect();
        Payloads { bodies: random(BODY), records: random(DELIVERY), attempts: random(ATTEMPT) }
    })
}

impl Event {
    fn body(&self) -> &'static [u8] {
        &payloads().bodies[self.slot]
    }
    fn record(&self) -> &'static [u8] {
        &payloads().records[self.slot]
    }
    fn attempt(&self) -> &'static [u8] {
        &payloads().attempts[self.slot]
    }
}

fn event(n: u64, now: u64) -> Event {
    Event {
        id: format!("evt_{:032x}", rand::random::<u128>()),
        delivery: format!("dlv_{now:012x}{n:016x}"),
        due: now,
        slot: n as usize % POOL,
    }
}

trait Engine {
    fn name(&self) -> &'static str;
    /// Admits `admit` and finishes `finish` in one durable batch.
    fn batch(&mut self, admit: &[Event], finish: &[Event]);
}

// ---------------------------------------------------------------------------
// redb, the relay's current layout.

const INDEX: TableDefinition<&str, &[u8]> = TableDefinition::new("event_index");
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("event_bodies");
const DEDUPE: TableDefinition<(u64, &str), ()> = TableDefinition::new("dedupe_expiry");
const DELIVERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("deliveries");
const ATTEMPTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("attempts");
const DUE: TableDefinition<(&str, u64, &str), ()> = TableDefinition::new("due");
const OPEN: TableDefinition<&str, ()> = TableDefinition::new("open");
const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("counts");
/// The compact layout's event: index record and body in one value.
const EVENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("events");

struct RedbCurrent {
    db: redb::Database,
    seq: u64,
    /// Commit without fsync, except every `durable_every`th batch: the
    /// B-tree side of a journal design (the journal makes each batch
    /// durable; the tree is checkpointed durably now and then).
    durable_every: Option<u64>,
    batches: u64,
}

fn open_redb(path: &Path) -> redb::Database {
    redb::Database::builder().set_cache_size(16 * 1024 * 1024).create(path).unwrap()
}

impl Engine for RedbCurrent {
    fn name(&self) -> &'static str {
        if self.durable_every.is_some() { "redb-checkpointed" } else { "redb-current" }
    }

    fn batch(&mut self, admit: &[Event], finish: &[Event]) {
        let mut txn = self.db.begin_write().unwrap();
        self.batches += 1;
        let durable = self.durable_every.is_none_or(|n| self.batches.is_multiple_of(n));
        txn.set_durability(if durable { Durability::Immediate } else { Durability::None }).unwrap();
        {
            let mut index = txn.open_table(INDEX).unwrap();
            let mut bodies = txn.open_table(BODIES).unwrap();
            let mut dedupe = txn.open_table(DEDUPE).unwrap();
            let mut deliveries = txn.open_table(DELIVERIES).unwrap();
            let mut attempts = txn.open_table(ATTEMPTS).unwrap();
            let mut due = txn.open_table(DUE).unwrap();
            let mut open = txn.open_table(OPEN).unwrap();
            let mut counts = txn.open_table(COUNTS).unwrap();
            for e in admit {
                // The duplicate check reads the index first.
                assert!(index.get(e.id.as_str()).unwrap().is_none());
                self.seq += 1;
                bodies.insert(self.seq, e.body()).unwrap();
                let mut rec = Vec::with_capacity(64);
                rec.extend_from_slice(&e.due.to_le_bytes());
                rec.extend_from_slice(&self.seq.to_le_bytes());
                rec.extend_from_slice(e.delivery.as_bytes());
                index.insert(e.id.as_str(), rec.as_slice()).unwrap();
                dedupe.insert((e.due + 86_400_000, e.id.as_str()), ()).unwrap();
                deliveries.insert(e.delivery.as_str(), e.record()).unwrap();
                due.insert(("receiver", e.due, e.delivery.as_str()), ()).unwrap();
                open.insert(e.delivery.as_str(), ()).unwrap();
            }
            for e in finish {
                let old = deliveries.get(e.delivery.as_str()).unwrap().map(|v| v.value().to_vec());
                assert!(old.is_some());
                deliveries.insert(e.delivery.as_str(), e.record()).unwrap();
                attempts.insert((e.delivery.as_str(), 1), e.attempt()).unwrap();
                due.remove(("receiver", e.due, e.delivery.as_str())).unwrap();
                open.remove(e.delivery.as_str()).unwrap();
            }
            let pending = counts.get("pending").unwrap().map_or(0, |v| v.value());
            counts.insert("pending", pending + admit.len() as u64 - finish.len() as u64).unwrap();
            let delivered = counts.get("delivered").unwrap().map_or(0, |v| v.value());
            counts.insert("delivered", delivered + finish.len() as u64).unwrap();
        }
        txn.commit().unwrap();
    }
}

// ---------------------------------------------------------------------------
// redb, four tables.

struct RedbCompact {
    db: redb::Database,
}

impl Engine for RedbCompact {
    fn name(&self) -> &'static str {
        "redb-compact"
    }

    fn batch(&mut self, admit: &[Event], finish: &[Event]) {
        let mut txn = self.db.begin_write().unwrap();
        txn.set_durability(Durability::Immediate).unwrap();
        {
            let mut events = txn.open_table(EVENTS).unwrap();
            let mut dedupe = txn.open_table(DEDUPE).unwrap();
            let mut deliveries = txn.open_table(DELIVERIES).unwrap();
            let mut due = txn.open_table(DUE).unwrap();
            for e in admit {
                assert!(events.get(e.id.as_str()).unwrap().is_none());
                let mut rec = Vec::with_capacity(64 + BODY);
                rec.extend_from_slice(&e.due.to_le_bytes());
                rec.extend_from_slice(e.delivery.as_bytes());
                rec.extend_from_slice(e.body());
                events.insert(e.id.as_str(), rec.as_slice()).unwrap();
                dedupe.insert((e.due + 86_400_000, e.id.as_str()), ()).unwrap();
                deliveries.insert(e.delivery.as_str(), e.record()).unwrap();
                due.insert(("receiver", e.due, e.delivery.as_str()), ()).unwrap();
            }
            for e in finish {
                let old = deliveries.get(e.delivery.as_str()).unwrap().map(|v| v.value().to_vec());
                let mut rec = old.unwrap();
                rec.extend_from_slice(e.attempt());
                deliveries.insert(e.delivery.as_str(), rec.as_slice()).unwrap();
                due.remove(("receiver", e.due, e.delivery.as_str())).unwrap();
            }
        }
        txn.commit().unwrap();
    }
}

// ---------------------------------------------------------------------------
// fjall, the current layout as keyspaces.

struct Fjall {
    db: fjall::Database,
    index: fjall::Keyspace,
    bodies: fjall::Keyspace,
    dedupe: fjall::Keyspace,
    deliveries: fjall::Keyspace,
    attempts: fjall::Keyspace,
    due: fjall::Keyspace,
    open: fjall::Keyspace,
    counts: fjall::Keyspace,
    seq: u64,
    pending: u64,
    delivered: u64,
}

impl Fjall {
    fn open(path: &Path) -> Fjall {
        let db = fjall::Database::builder(path).open().unwrap();
        let ks = |name: &str| db.keyspace(name, fjall::KeyspaceCreateOptions::default).unwrap();
        Fjall {
            index: ks("event_index"),
            bodies: ks("event_bodies"),
            dedupe: ks("dedupe_expiry"),
            deliveries: ks("deliveries"),
            attempts: ks("attempts"),
            due: ks("due"),
            open: ks("open"),
            counts: ks("counts"),
            db,
            seq: 0,
            pending: 0,
            delivered: 0,
        }
    }
}

fn due_key(e: &Event) -> Vec<u8> {
    let mut k = b"receiver\0".to_vec();
    k.extend_from_slice(&e.due.to_be_bytes());
    k.extend_from_slice(e.delivery.as_bytes());
    k
}

impl Engine for Fjall {
    fn name(&self) -> &'static str {
        "fjall"
    }

    fn batch(&mut self, admit: &[Event], finish: &[Event]) {
        let mut b = self.db.batch();
        for e in admit {
            assert!(self.index.get(e.id.as_bytes()).unwrap().is_none());
            self.seq += 1;
            b.insert(&self.bodies, self.seq.to_be_bytes(), e.body());
            let mut rec = Vec::with_capacity(64);
            rec.extend_from_slice(&e.due.to_le_bytes());
            rec.extend_from_slice(&self.seq.to_le_bytes());
            rec.extend_from_slice(e.delivery.as_bytes());
            b.insert(&self.index, e.id.as_bytes(), rec);
            let mut dk = (e.due + 86_400_000).to_be_bytes().to_vec();
            dk.extend_from_slice(e.id.as_bytes());
            b.insert(&self.dedupe, dk, []);
            b.insert(&self.deliveries, e.delivery.as_bytes(), e.record());
            b.insert(&self.due, due_key(e), []);
            b.insert(&self.open, e.delivery.as_bytes(), []);
        }
        for e in finish {
            assert!(self.deliveries.get(e.delivery.as_bytes()).unwrap().is_some());
            b.insert(&self.deliveries, e.delivery.as_bytes(), e.record());
            let mut ak = e.delivery.as_bytes().to_vec();
            ak.extend_from_slice(&1u32.to_be_bytes());
            b.insert(&self.attempts, ak, e.attempt());
            b.remove(&self.due, due_key(e));
            b.remove(&self.open, e.delivery.as_bytes());
        }
        self.pending = self.pending + admit.len() as u64 - finish.len() as u64;
        self.delivered += finish.len() as u64;
        b.insert(&self.counts, "pending", self.pending.to_be_bytes());
        b.insert(&self.counts, "delivered", self.delivered.to_be_bytes());
        b.commit().unwrap();
        self.db.persist(fjall::PersistMode::SyncData).unwrap();
    }
}

// ---------------------------------------------------------------------------
// An append-only journal: the lower bound of a journal on the hot path.

struct Journal {
    file: std::fs::File,
    buf: Vec<u8>,
}

impl Journal {
    fn record(&mut self, kind: u8, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let start = self.buf.len();
        self.buf.push(kind);
        self.buf.extend_from_slice(&(len as u32).to_le_bytes());
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        // A per-record checksum, as a real journal needs to find a torn tail.
        let sum = self.buf[start..].iter().fold(0u32, |h, b| h.rotate_left(5) ^ u32::from(*b));
        self.buf.extend_from_slice(&sum.to_le_bytes());
    }
}

impl Engine for Journal {
    fn name(&self) -> &'static str {
        "journal"
    }

    fn batch(&mut self, admit: &[Event], finish: &[Event]) {
        self.buf.clear();
        for e in admit {
            self.record(1, &[e.id.as_bytes(), e.delivery.as_bytes(), &e.due.to_le_bytes(), e.body(), e.record()]);
        }
        for e in finish {
            self.record(2, &[e.delivery.as_bytes(), e.attempt()]);
        }
        self.file.write_all(&self.buf).unwrap();
        self.file.sync_data().unwrap();
    }
}

// ---------------------------------------------------------------------------

struct Figures {
    batches_per_sec: f64,
    events_per_sec: f64,
    cpu_us_per_event: f64,
    bytes_per_event: f64,
}

fn run(engine: &mut dyn Engine, batch: usize, secs: u64) -> Figures {
    let mut n = 0u64;
    let mut previous: Vec<Event> = Vec::new();
    let now = 1_800_000_000_000u64;
    // Warm up: fill the store with some history first, as a running relay has.
    for _ in 0..200 {
        let admit: Vec<Event> = (0..batch).map(|_| event(next(&mut n), now + n)).collect();
        engine.batch(&admit, &previous);
        previous = admit;
    }
    let (cpu0, bytes0, start) = (process_cpu(), written_bytes(), Instant::now());
    let mut batches = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        let admit: Vec<Event> = (0..batch).map(|_| event(next(&mut n), now + n)).collect();
        engine.batch(&admit, &previous);
        previous = admit;
        batches += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let events = (batches * batch as u64) as f64;
    Figures {
        batches_per_sec: batches as f64 / elapsed,
        events_per_sec: events / elapsed,
        cpu_us_per_event: (process_cpu() - cpu0) * 1e6 / events,
        bytes_per_event: (written_bytes() - bytes0) as f64 / events,
    }
}

fn next(n: &mut u64) -> u64 {
    *n += 1;
    *n
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("store engines: run with `cargo bench --bench store_engines --features engine-comparison`");
        return;
    }
    let secs: u64 = env_or("ENGINE_SECS", 4);
    let runs: usize = env_or("ENGINE_RUNS", 3);
    payloads();
    println!("store engines: {secs}s per run, {runs} runs; each batch admits B events and finishes B deliveries");
    println!("| engine | B | batches/s | events/s | CPU per event | bytes written per event |");
    println!("|---|---|---|---|---|---|");
    let batches: Vec<usize> = std::env::var("ENGINE_BATCHES")
        .map(|v| v.split(',').filter_map(|b| b.parse().ok()).collect())
        .unwrap_or_else(|_| vec![9, 64]);
    let kinds = std::env::var("ENGINE_KINDS")
        .unwrap_or_else(|_| "redb-current,redb-checkpointed,redb-compact,fjall,journal".into());
    for &batch in &batches {
        for kind in kinds.split(',') {
            for _ in 0..runs {
                let dir = tempfile::tempdir().unwrap();
                let mut engine: Box<dyn Engine> = match kind {
                    "redb-current" => Box::new(RedbCurrent {
                        db: open_redb(&dir.path().join("s.redb")),
                        seq: 0,
                        durable_every: None,
                        batches: 0,
                    }),
                    // A durable checkpoint about every 100 ms at 1,500 batches a second.
                    "redb-checkpointed" => Box::new(RedbCurrent {
                        db: open_redb(&dir.path().join("s.redb")),
                        seq: 0,
                        durable_every: Some(150),
                        batches: 0,
                    }),
                    "redb-compact" => Box::new(RedbCompact { db: open_redb(&dir.path().join("s.redb")) }),
                    "fjall" => Box::new(Fjall::open(&dir.path().join("fjall"))),
                    _ => Box::new(Journal {
                        file: std::fs::File::create(dir.path().join("journal")).unwrap(),
                        buf: Vec::new(),
                    }),
                };
                let f = run(engine.as_mut(), batch, secs);
                println!(
                    "| {} | {batch} | {:.0} | {:.0} | {:.1} µs | {:.0} |",
                    engine.name(),
                    f.batches_per_sec,
                    f.events_per_sec,
                    f.cpu_us_per_event,
                    f.bytes_per_event
                );
            }
        }
    }
}
