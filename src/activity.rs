//! What this relay saw lately, for the console's overview
//! (`GET /admin/overview`): callbacks per minute by source and outcome over
//! the last hour, and each endpoint's delivery health. Kept in memory by
//! each relay process: it starts empty, and relays sharing a Redis each
//! see their own.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::store::{Millis, now_millis};

/// Minutes of callback counts kept.
pub const WINDOW_MINUTES: u64 = 60;

#[derive(Default)]
pub struct Activity {
    inner: Mutex<Inner>,
}

/// Callbacks by source, then by outcome (a handful each).
type Counts = HashMap<String, Vec<(&'static str, u64)>>;

#[derive(Default)]
struct Inner {
    /// Each minute's counts, oldest minute first.
    minutes: VecDeque<(u64, Counts)>,
    endpoints: HashMap<String, Arc<Mutex<Health>>>,
}

/// One endpoint's deliveries as this relay saw them since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    pub last_success_at: Option<Millis>,
    pub last_failure_at: Option<Millis>,
    /// The last failed attempt's status or error.
    pub last_error: Option<String>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u64,
    /// Requests open right now.
    pub in_flight: u64,
}

/// An open request to an endpoint; counted in `in_flight` until dropped.
pub struct Sending(Arc<Mutex<Health>>);

impl Drop for Sending {
    fn drop(&mut self) {
        let mut h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        h.in_flight = h.in_flight.saturating_sub(1);
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one callback from `source` (a configured name or the bounded
    /// label for the rest) answered with `outcome`.
    pub fn callback(&self, source: &str, outcome: &'static str, at: Millis) {
        let minute = at / 60_000;
        let mut inner = self.lock();
        if inner.minutes.back().is_none_or(|(m, _)| *m < minute) {
            inner.minutes.push_back((minute, HashMap::new()));
        }
        while inner.minutes.front().is_some_and(|(m, _)| *m + WINDOW_MINUTES <= minute) {
            inner.minutes.pop_front();
        }
        // A clock stepped back counts into the newest minute.
        let counts = &mut inner.minutes.back_mut().expect("pushed above").1;
        // No allocation but for a source's first callback in a minute.
        let by_outcome = match counts.get_mut(source) {
            Some(by_outcome) => by_outcome,
            None => counts.entry(source.to_owned()).or_default(),
        };
        match by_outcome.iter_mut().find(|(o, _)| *o == outcome) {
            Some((_, n)) => *n += 1,
            None => by_outcome.push((outcome, 1)),
        }
    }

    /// Callbacks in the `WINDOW_MINUTES` before `now`, by source and outcome.
    pub fn callbacks(&self, now: Millis) -> BTreeMap<(String, &'static str), u64> {
        let minute = now / 60_000;
        let mut out = BTreeMap::new();
        for (m, counts) in &self.lock().minutes {
            if m + WINDOW_MINUTES > minute {
                for (source, by_outcome) in counts {
                    for (outcome, n) in by_outcome {
                        *out.entry((source.clone(), *outcome)).or_default() += n;
                    }
                }
            }
        }
        out
    }

    fn endpoint(&self, name: &str) -> Arc<Mutex<Health>> {
        let mut inner = self.lock();
        match inner.endpoints.get(name) {
            Some(health) => health.clone(),
            None => inner.endpoints.entry(name.to_owned()).or_default().clone(),
        }
    }

    /// A request to `endpoint` is about to be sent.
    pub fn sending(&self, endpoint: &str) -> Sending {
        let health = self.endpoint(endpoint);
        health.lock().unwrap_or_else(|e| e.into_inner()).in_flight += 1;
        Sending(health)
    }

    /// An attempt to `endpoint` ended: delivered, or failed with `error`.
    pub fn attempted(&self, endpoint: &str, error: Option<String>) {
        let health = self.endpoint(endpoint);
        let mut h = health.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_millis();
        match error {
            None => {
                h.last_success_at = Some(now);
                h.consecutive_failures = 0;
            }
            Some(e) => {
                h.last_failure_at = Some(now);
                h.last_error = Some(e);
                h.consecutive_failures += 1;
            }
        }
    }

    /// `endpoint`'s health; all empty if this relay has sent it nothing.
    pub fn health(&self, endpoint: &str) -> Health {
        let found = self.lock().endpoints.get(endpoint).cloned();
        found.map(|h| h.lock().unwrap_or_else(|e| e.into_inner()).clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_older_than_the_window_are_forgotten() {
        let a = Activity::default();
        let t0 = 1_000 * 60_000;
        a.callback("nowpayments", "accepted", t0);
        a.callback("nowpayments", "accepted", t0 + 1_000);
        a.callback("nova", "invalid_signature", t0 + 30 * 60_000);
        let now = t0 + 30 * 60_000;
        let seen = a.callbacks(now);
        assert_eq!(seen[&("nowpayments".to_owned(), "accepted")], 2);
        assert_eq!(seen[&("nova".to_owned(), "invalid_signature")], 1);
        // An hour after the first minute it is gone; the later one stays.
        let seen = a.callbacks(t0 + 60 * 60_000);
        assert!(!seen.contains_key(&("nowpayments".to_owned(), "accepted")), "{seen:?}");
        assert_eq!(seen[&("nova".to_owned(), "invalid_signature")], 1);
        // Recording drops minutes that fell out of the window.
        a.callback("nova", "accepted", t0 + 120 * 60_000);
        assert_eq!(a.lock().minutes.len(), 1);
    }

    #[test]
    fn endpoint_health_counts_failures_since_the_last_success_and_open_requests() {
        let a = Activity::default();
        assert_eq!(a.health("backend"), Health::default());
        let first = a.sending("backend");
        let second = a.sending("backend");
        assert_eq!(a.health("backend").in_flight, 2);
        drop(first);
        a.attempted("backend", Some("HTTP 500".into()));
        a.attempted("backend", Some("timeout".into()));
        let h = a.health("backend");
        assert_eq!((h.consecutive_failures, h.last_error.as_deref(), h.in_flight), (2, Some("timeout"), 1));
        assert!(h.last_success_at.is_none() && h.last_failure_at.is_some());
        drop(second);
        a.attempted("backend", None);
        let h = a.health("backend");
        assert_eq!((h.consecutive_failures, h.in_flight), (0, 0));
        assert!(h.last_success_at.is_some());
        // The last failure stays on record after a success.
        assert_eq!(h.last_error.as_deref(), Some("timeout"));
    }
}
