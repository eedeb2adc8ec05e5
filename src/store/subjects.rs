//! The store's types for a subject's lifecycle (`lifecycle`): what
//! admission numbers, what an ordered delivery carries, and a timeline.

use serde::{Deserialize, Serialize};

use super::{Delivery, StoredEvent, SubjectRef};

/// An event's subject, for its place in the subject's lifecycle
/// (`lifecycle`): admission gives it the next `sequence`, and writes the
/// fields of [`Sequenced`] into `json` at byte `at`.
#[derive(Debug, Clone, PartialEq)]
pub struct Numbering {
    pub subject: SubjectRef,
    pub at: usize,
}

/// An endpoint's lifecycle settings, as they were when the delivery was
/// created (a reload applies to new deliveries).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// `ordering = "subject"`: not attempted before the same endpoint's
    /// deliveries of the subject's earlier events are final.
    pub ordered: bool,
    /// `regressions = "skip"`: a regression's delivery is created
    /// `skipped`.
    pub skip_regressions: bool,
}

/// Where an ordered delivery waits: behind the deliveries to the same
/// endpoint of its subject's events with a lower `sequence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The subject's key (`lifecycle::key`).
    pub subject: String,
    pub sequence: u64,
}

/// One event of a subject's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEntry {
    pub sequence: u64,
    pub event: StoredEvent,
    pub deliveries: Vec<Delivery>,
}
