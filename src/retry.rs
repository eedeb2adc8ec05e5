//! The retry schedule: when a failed delivery is tried again, or that it is
//! dead.
//!
//! One pure function of the schedule (from `[delivery]`), the attempt just
//! made, its outcome and a random draw. The result is stored with the
//! delivery as its next due time; nothing sleeps in memory waiting for it,
//! so a restart loses no retry.

use std::time::Duration;

use crate::config::DeliveryConfig;
use crate::store::{Millis, Next};

/// How an attempt ended, as far as scheduling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Delivered,
    /// Anything else; `retry_after` if the endpoint asked for a delay.
    Failed { retry_after: Option<Duration> },
}

/// What follows attempt number `attempt` (1-based, counted within the
/// current budget) that ended with `outcome` at `now`. `draw` is uniform in
/// [0, 1) and places the delay within ± `jitter`.
pub fn next(schedule: &DeliveryConfig, attempt: u32, outcome: Outcome, now: Millis, draw: f64) -> Next {
    let retry_after = match outcome {
        Outcome::Delivered => return Next::Delivered,
        Outcome::Failed { retry_after } => retry_after,
    };
    if attempt >= schedule.max_attempts {
        return Next::Dead;
    }
    let delay = backoff(schedule, attempt, draw);
    // An endpoint's Retry-After is honoured, but never beyond max_backoff.
    let delay = retry_after.map_or(delay, |ra| delay.max(ra.min(schedule.max_backoff)));
    Next::RetryAt(now.saturating_add(delay.as_millis() as u64))
}

/// `min(max_backoff, initial × multiplier^(attempt-1))` moved by up to
/// ± `jitter` of itself, and never beyond `max_backoff`.
pub fn backoff(schedule: &DeliveryConfig, attempt: u32, draw: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(1000) as i32;
    let base = schedule.initial_backoff.as_secs_f64() * schedule.multiplier.powi(exponent);
    let base = base.min(schedule.max_backoff.as_secs_f64());
    let factor = 1.0 + schedule.jitter * (2.0 * draw.clamp(0.0, 1.0) - 1.0);
    Duration::from_secs_f64((base * factor).clamp(0.0, schedule.max_backoff.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn schedule() -> DeliveryConfig {
        DeliveryConfig {
            max_attempts: 12,
            initial_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(7200),
            multiplier: 3.0,
            jitter: 0.2,
            visibility_timeout: Duration::from_secs(60),
        }
    }

    const FAIL: Outcome = Outcome::Failed { retry_after: None };

    #[test]
    fn grows_exponentially_then_caps() {
        let s = schedule();
        // draw 0.5 means no jitter.
        let secs: Vec<u64> = (1..=9).map(|n| backoff(&s, n, 0.5).as_secs()).collect();
        assert_eq!(secs, [5, 15, 45, 135, 405, 1215, 3645, 7200, 7200]);
    }

    #[test]
    fn success_is_delivered_and_the_budget_ends_in_dead() {
        let s = schedule();
        assert_eq!(next(&s, 1, Outcome::Delivered, 0, 0.5), Next::Delivered);
        assert_eq!(next(&s, 12, Outcome::Delivered, 0, 0.5), Next::Delivered);
        assert_eq!(next(&s, 1, FAIL, 1000, 0.5), Next::RetryAt(6000));
        assert_eq!(next(&s, 11, FAIL, 0, 0.5), Next::RetryAt(7_200_000));
        assert_eq!(next(&s, 12, FAIL, 0, 0.5), Next::Dead);
    }

    #[test]
    fn retry_after_is_honoured_up_to_max_backoff() {
        let s = schedule();
        let ra = |secs| Outcome::Failed { retry_after: Some(Duration::from_secs(secs)) };
        assert_eq!(next(&s, 1, ra(60), 0, 0.5), Next::RetryAt(60_000));
        assert_eq!(next(&s, 1, ra(1), 0, 0.5), Next::RetryAt(5_000), "never sooner than the schedule");
        assert_eq!(next(&s, 1, ra(86_400), 0, 0.5), Next::RetryAt(7_200_000));
    }

    proptest! {
        #[test]
        fn delays_stay_within_jitter_and_cap(
            attempt in 1u32..40,
            draw in 0.0f64..1.0,
            initial_ms in 1u64..60_000,
            multiplier in 1.0f64..10.0,
            jitter in 0.0f64..0.99,
            cap_ms in 60_000u64..86_400_000,
        ) {
            let s = DeliveryConfig {
                max_attempts: 50,
                initial_backoff: Duration::from_millis(initial_ms),
                max_backoff: Duration::from_millis(cap_ms),
                multiplier,
                jitter,
                visibility_timeout: Duration::from_secs(60),
            };
            let d = backoff(&s, attempt, draw).as_secs_f64();
            let base = (initial_ms as f64 / 1000.0 * multiplier.powi(attempt as i32 - 1)).min(cap_ms as f64 / 1000.0);
            prop_assert!(d <= cap_ms as f64 / 1000.0 + 1e-9);
            prop_assert!(d >= base * (1.0 - jitter) - 1e-6, "{d} < {base} - {jitter}");
            prop_assert!(d <= base * (1.0 + jitter) + 1e-6);
            // Without jitter the schedule never shrinks.
            let no_jitter = |n| backoff(&s, n, 0.5);
            prop_assert!(jitter > 0.0 || no_jitter(attempt + 1) >= no_jitter(attempt));
        }

        #[test]
        fn every_failure_before_the_limit_is_retried_later(attempt in 1u32..12, now in 0u64..1u64 << 50, draw in 0.0f64..1.0) {
            match next(&schedule(), attempt, FAIL, now, draw) {
                Next::RetryAt(at) => prop_assert!(at > now),
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
