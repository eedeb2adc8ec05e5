//! Retention: which stored records are old enough to remove, and what the
//! store holds.
//!
//! An event is *settled* once every delivery of it is final (`delivered`,
//! `dead` or `discarded`; an event that matched no endpoint is settled at
//! once). Its *last finish* is the latest `updated_at` of its deliveries
//! (its receipt, without deliveries). A settled event whose last finish is
//! before the cutoff of its class is removed with its deliveries and their
//! attempts: the `dead` class if any delivery is dead or discarded, else
//! the `delivered` class. Nothing pending, in flight or orphaned is ever
//! removed. A removed event's dedupe key lives on until `dedupe_ttl` ends,
//! so a provider's late retry is still a duplicate.
//!
//! **How the stores find them.** Every time a delivery becomes final, and
//! when an event without deliveries is admitted, the store notes the event
//! in a queue ordered by class and time: a hint, not a verdict. Removal
//! walks each class's queue from its oldest entry up to the cutoff and
//! checks the event as it is now: not settled (replayed meanwhile, or
//! another delivery still open) drops the entry, since the next delivery to
//! become final notes it again; settled but not yet old enough (finished
//! again later, or in the other class) moves the entry to where it belongs;
//! otherwise the event goes. Each call handles a bounded number of entries
//! in one atomic step, so a crash never leaves an event half removed, and
//! two relays sharing a Redis never remove the same one twice.

use super::quarantine::QuarantineSize;
use super::{Counts, DeliveryState, Millis};

/// Which retention applies to a settled event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Every delivery delivered, or none to make.
    Delivered,
    /// Some delivery dead or discarded.
    Dead,
}

impl Class {
    pub const ALL: [Class; 2] = [Class::Delivered, Class::Dead];

    /// The class a delivery in `state` settles its event in, if it is final.
    pub fn of(state: DeliveryState) -> Option<Class> {
        match state {
            DeliveryState::Delivered | DeliveryState::Skipped => Some(Class::Delivered),
            DeliveryState::Dead | DeliveryState::Discarded => Some(Class::Dead),
            DeliveryState::Pending | DeliveryState::InFlight | DeliveryState::Orphaned => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Delivered => "delivered",
            Class::Dead => "dead",
        }
    }
}

/// Records whose last change is before these times are removable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoffs {
    /// Settled events of the `delivered` class.
    pub delivered: Millis,
    /// Settled events of the `dead` class.
    pub dead: Millis,
    /// Finished replay jobs (by their last update).
    pub replay_jobs: Millis,
}

impl Cutoffs {
    pub fn of(&self, class: Class) -> Millis {
        match class {
            Class::Delivered => self.delivered,
            Class::Dead => self.dead,
        }
    }
}

/// What one removal step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub events: u64,
    pub deliveries: u64,
    pub attempts: u64,
    pub replay_jobs: u64,
    /// Queue entries looked at (removed, dropped or moved).
    pub examined: usize,
    /// Stopped before `limit` to let waiting writes go first: more may be
    /// due.
    pub interrupted: bool,
    /// The store stops a step early for waiting writes (the embedded store),
    /// so a step that was not interrupted found it idle.
    pub gives_way: bool,
}

impl Purged {
    pub fn add(&mut self, other: Purged) {
        self.events += other.events;
        self.deliveries += other.deliveries;
        self.attempts += other.attempts;
        self.replay_jobs += other.replay_jobs;
        self.examined += other.examined;
        self.interrupted |= other.interrupted;
        self.gives_way |= other.gives_way;
    }
}

/// What the store holds.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreStats {
    pub events: u64,
    pub deliveries: Counts,
    pub attempts: u64,
    pub replay_jobs: u64,
    /// Live dedupe keys, including those of removed events.
    pub dedupe_keys: u64,
    /// Events noted for removal and not yet looked at.
    pub retention_queue: u64,
    /// The store's size: the embedded file, or the Redis server's
    /// `used_memory` (every prefix on that server).
    pub bytes: u64,
    /// When the oldest stored event was received.
    pub oldest_event_at: Option<Millis>,
    /// Refused callbacks kept in the quarantine (expired by its own `ttl`).
    pub quarantine: QuarantineSize,
}
