//! Replay jobs: a replay by filter, walked in steps that survive a restart.

use serde::{Deserialize, Serialize};

use super::{DeliveryFilter, Millis};

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayCount {
    pub replayed: usize,
    /// Selected but pending or in flight already (or delivered, unless
    /// delivered ones were asked for): left as they were.
    pub skipped: usize,
    pub not_found: usize,
}

/// A bulk replay by filter, kept in the store so that it survives a restart
/// half way. It walks the matching deliveries newest first, one step at a
/// time; each step replays a batch and moves `cursor` below it in the same
/// transaction, so no delivery is visited twice and a resumed job continues
/// where the last committed step ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayJob {
    /// `rpl_`, 12 hex digits of milliseconds, 16 random hex digits.
    pub id: String,
    pub filter: DeliveryFilter,
    pub include_delivered: bool,
    /// Most deliveries the job considers.
    pub max: usize,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Steps committed. A step commits only over the one before it, so two
    /// runners of one job (after a restart, or on two relays) cannot both
    /// replay a batch.
    pub steps: u64,
    /// The last delivery id considered; the next step continues below it.
    pub cursor: Option<String>,
    pub considered: usize,
    pub replayed: usize,
    pub skipped: usize,
    pub not_found: usize,
    /// Left alone: their endpoint is not in the configuration of the relay
    /// that ran the step, so nothing would send them.
    #[serde(default)]
    pub not_configured: usize,
    pub finished: bool,
    /// Finished because `max` was reached with matching deliveries left.
    pub truncated: bool,
}

impl ReplayJob {
    /// A new job over `filter`. Only deliveries created before `now` are
    /// considered, so deliveries admitted while it runs are left alone.
    pub fn new(filter: DeliveryFilter, include_delivered: bool, max: usize, now: Millis) -> ReplayJob {
        let mut filter = filter;
        filter.until = Some(filter.until.map_or(now + 1, |u| u.min(now + 1)));
        ReplayJob {
            id: format!("rpl_{:012x}{:016x}", now, rand::random::<u64>()),
            filter,
            include_delivered,
            max,
            created_at: now,
            updated_at: now,
            steps: 0,
            cursor: None,
            considered: 0,
            replayed: 0,
            skipped: 0,
            not_found: 0,
            not_configured: 0,
            finished: false,
            truncated: false,
        }
    }

    /// Adds one step's count (what a store does when it saves the step).
    pub fn add(&mut self, count: ReplayCount) {
        self.replayed += count.replayed;
        self.skipped += count.skipped;
        self.not_found += count.not_found;
    }
}
