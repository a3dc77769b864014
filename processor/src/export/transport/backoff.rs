//! Waits between attempts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::RetryPolicy;

/// Exponential backoff, ×1.5 per retry, randomised within ±50%, capped.
pub(super) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(super) fn new(policy: RetryPolicy) -> Self {
        Backoff {
            next: policy.initial_interval.min(policy.max_interval),
            max: policy.max_interval,
        }
    }

    pub(super) fn next_wait(&mut self) -> Duration {
        let base = self.next;
        self.next = scale(base, 1.5).unwrap_or(self.max).min(self.max);
        scale(base, 0.5 + random_unit())
            .unwrap_or(self.max)
            .min(self.max)
    }
}

fn scale(d: Duration, factor: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).ok()
}

/// A pseudo-random number in [0, 1): std's randomly keyed hasher over a counter.
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}
