//! Failing/working state, for logging one WARN per change rather than one per failure.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A success this soon after a failure does not count as "working again": a peer that
/// throttles some requests and takes others logs one WARN, not one per flip.
const QUIET: Duration = Duration::from_secs(1);

pub(super) struct Health {
    base: Instant,
    failing: AtomicBool,
    /// Milliseconds after `base` of the last failure.
    last_failure: AtomicU64,
    /// Failures (attempts, or items for the queue) since it started failing.
    failures: AtomicU64,
}

impl Health {
    pub(super) fn new() -> Self {
        Health {
            base: Instant::now(),
            failing: AtomicBool::new(false),
            last_failure: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records `n` failures; true when this one starts the failing state (log it).
    pub(super) fn failed(&self, n: u64) -> bool {
        self.last_failure.store(self.now(), Ordering::Relaxed);
        self.failures.fetch_add(n, Ordering::Relaxed);
        !self.failing.swap(true, Ordering::Relaxed)
    }

    /// Records a success; `Some(failures)` when it ends the failing state (log it).
    pub(super) fn succeeded(&self) -> Option<u64> {
        if !self.failing.load(Ordering::Relaxed) {
            return None;
        }
        let since = self
            .now()
            .saturating_sub(self.last_failure.load(Ordering::Relaxed));
        if u128::from(since) < QUIET.as_millis() {
            return None;
        }
        if self.failing.swap(false, Ordering::Relaxed) {
            Some(self.failures.swap(0, Ordering::Relaxed))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_change_per_state_and_no_flapping() {
        let h = Health::new();
        assert_eq!(h.succeeded(), None);
        assert!(h.failed(1));
        assert!(!h.failed(2));
        // Right after a failure a success does not end the failing state.
        assert_eq!(h.succeeded(), None);
        assert!(!h.failed(1));
        std::thread::sleep(QUIET + Duration::from_millis(20));
        assert_eq!(h.succeeded(), Some(4));
        assert_eq!(h.succeeded(), None);
        assert!(h.failed(1));
    }
}
