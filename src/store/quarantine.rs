//! The quarantine's records: callbacks to a configured source refused as
//! `invalid_signature` or `stale_timestamp`, kept for a while with what the
//! relay found wrong with them, so that once an operator fixes the cause they
//! can be verified again and admitted (docs/quarantine.md).
//!
//! Both stores keep each item's description apart from its body, so a
//! listing never reads bodies, and keep the total size of what they hold:
//! [`QuarantineStore::quarantine`] keeps an item only if it still fits under
//! the cap, atomically with that total, so no number of callers can push
//! the quarantine past it. Items are ordered by id, which begins with the
//! receipt time, as delivery ids do.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{Millis, StoreError};

/// Most items one listing call examines, as for deliveries.
pub const QUARANTINE_SCAN_LIMIT: usize = 5_000;

/// What an item's description (id, source, client, diagnosis) counts for
/// against `max_bytes`, whatever its length: the diagnosis quotes at most
/// a few short strings from the body, so it stays under this
/// (`providers::diagnose`), and an empty callback still costs room.
pub const DESCRIPTION_BYTES: u64 = 2048;

/// Why a kept callback was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    InvalidSignature,
    StaleTimestamp,
}

impl Refusal {
    pub const ALL: [Refusal; 2] = [Refusal::InvalidSignature, Refusal::StaleTimestamp];

    /// The `error.code` the callback was answered with.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::InvalidSignature => "invalid_signature",
            Refusal::StaleTimestamp => "stale_timestamp",
        }
    }

    pub fn parse(s: &str) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// What the relay found when it looked at a refused callback, in words an
/// operator can act on. Never holds a secret or a signature the relay
/// computed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// When the checks ran: at receipt, or at the last reverify.
    pub checked_at: Millis,
    /// The likely cause and what to do about it.
    pub summary: String,
    /// What each check found, in the order they ran.
    pub findings: Vec<String>,
    /// The signed forms the body was tried in.
    pub forms_tried: Vec<String>,
    /// How many of the source's secrets were tried.
    pub secrets_tried: usize,
    /// Another configured source whose secret verifies this body.
    pub verifies_with_source: Option<String>,
    /// Nova: how far the body's `timestamp` is from the receipt time, in
    /// seconds (positive: ahead of the relay's clock).
    pub timestamp_offset_secs: Option<i64>,
}

/// A kept callback, without its body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quarantined {
    /// `qtn_`, 12 hex digits of milliseconds, 16 random hex digits.
    pub id: String,
    pub source: String,
    pub reason: Refusal,
    pub received_at: Millis,
    /// The client's address as ingress judged it (after trusted proxies).
    pub client: String,
    /// The request headers the source's verifier reads, lowercase names.
    /// A value that is not text is kept with its bytes replaced (U+FFFD),
    /// which fails verification exactly as the original did.
    pub headers: Vec<(String, String)>,
    /// What counts against `max_bytes`: the body, the kept headers and
    /// [`DESCRIPTION_BYTES`].
    pub size: u64,
    /// Identifies the same callback received again (a provider's retry):
    /// [`Quarantined::digest_of`] its source, headers and body.
    #[serde(default)]
    pub digest: String,
    pub diagnosis: Diagnosis,
}

impl Quarantined {
    /// A new id for a callback received at `at`.
    pub fn new_id(at: Millis) -> String {
        format!("qtn_{:012x}{:016x}", at, rand::random::<u64>())
    }

    /// The size an item with these headers and body counts for.
    pub fn size_of(headers: &[(String, String)], body: &[u8]) -> u64 {
        (body.len() + headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()) as u64 + DESCRIPTION_BYTES
    }

    /// The SHA-256 of a callback's source, kept headers and body, hex: two
    /// callbacks with the same digest verify alike whatever the config.
    pub fn digest_of(source: &str, headers: &[(String, String)], body: &[u8]) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in
            std::iter::once(source.as_bytes()).chain(headers.iter().flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()]))
        {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(body);
        hex::encode(h.finalize())
    }

    /// A header the verifier reads, as kept.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A kept callback with its body.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineItem {
    pub meta: Quarantined,
    pub body: Vec<u8>,
}

/// Selects kept callbacks. Empty fields match all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuarantineFilter {
    pub source: Option<String>,
    pub reason: Option<Refusal>,
    /// Received at or after.
    pub since: Option<Millis>,
    /// Received before.
    pub until: Option<Millis>,
}

impl QuarantineFilter {
    pub fn matches(&self, q: &Quarantined) -> bool {
        self.source.as_ref().is_none_or(|s| *s == q.source)
            && self.reason.is_none_or(|r| r == q.reason)
            && self.since.is_none_or(|t| q.received_at >= t)
            && self.until.is_none_or(|t| q.received_at < t)
    }

    /// The id range a scan of this filter covers: ids begin with the
    /// receipt time.
    pub fn id_bounds(&self) -> (String, String) {
        let lower = self.since.map(|t| format!("qtn_{t:012x}")).unwrap_or_else(|| "qtn_".into());
        let upper = self.until.map(|t| format!("qtn_{t:012x}")).unwrap_or_else(|| "qtn`".into());
        (lower, upper)
    }
}

/// One page of kept callbacks, newest first, as [`super::Page`] is for
/// deliveries: `next_cursor` continues below the last item examined.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantinePage {
    pub items: Vec<Quarantined>,
    pub next_cursor: Option<String>,
}

/// What one [`QuarantineStore::quarantine`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kept {
    pub kept: usize,
    /// Not kept: the same callback (by digest) is kept already, or the
    /// same id.
    pub duplicates: usize,
}

/// What the quarantine holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuarantineSize {
    pub items: u64,
    /// The sum of the items' [`Quarantined::size`].
    pub bytes: u64,
}

#[async_trait]
pub trait QuarantineStore: Send + Sync {
    /// Keeps each item, in order, if the quarantine's bytes with it stay
    /// within `max_bytes`; an item that does not fit is dropped (a later,
    /// smaller one may still fit). An item whose id, or whose digest, is
    /// kept already (a provider's retry of a refused callback) is a
    /// duplicate and not kept again: the first receipt stays.
    async fn quarantine(&self, items: Vec<QuarantineItem>, max_bytes: u64) -> Result<Kept, StoreError>;

    /// One kept callback with its body.
    async fn quarantined(&self, id: &str) -> Result<Option<QuarantineItem>, StoreError>;

    /// The page of `filter` below `cursor`, newest first, without bodies.
    async fn list_quarantine(
        &self,
        filter: &QuarantineFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<QuarantinePage, StoreError>;

    /// Replaces a kept item's description (its reason and diagnosis after a
    /// reverify that did not admit it). False if it is no longer kept.
    async fn rediagnose(&self, meta: &Quarantined) -> Result<bool, StoreError>;

    /// Removes the given items (admitted by a reverify); how many were kept.
    async fn release_quarantined(&self, ids: &[String]) -> Result<usize, StoreError>;

    /// Removes up to `limit` items received before `before`, oldest first;
    /// how many.
    async fn expire_quarantine(&self, before: Millis, limit: usize) -> Result<usize, StoreError>;

    async fn quarantine_size(&self) -> Result<QuarantineSize, StoreError>;
}
