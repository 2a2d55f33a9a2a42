//! A circuit breaker per handler: after N consecutive failed calls the
//! handler is refused for a cooling period, then tried again (one success
//! closes the breaker, one more failure opens it again at once).
//!
//! Time is passed in, so the breaker is tested without sleeping.

use std::time::{Duration, Instant};

/// State of one handler's breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    after: u32,
    cool_for: Duration,
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    pub(crate) fn new(after: u32, cool_for: Duration) -> Self {
        Self {
            after: after.max(1),
            cool_for,
            consecutive_failures: 0,
            open_until: None,
        }
    }

    /// `Err(remaining)` while the handler is quarantined.
    pub(crate) fn check(&self, now: Instant) -> Result<(), Duration> {
        match self.open_until {
            Some(until) if now < until => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Record a call's outcome. Returns true when this failure opened the
    /// breaker.
    pub(crate) fn record(&mut self, failed: bool, now: Instant) -> bool {
        if !failed {
            self.consecutive_failures = 0;
            self.open_until = None;
            return false;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.consecutive_failures >= self.after {
            self.open_until = Some(now + self.cool_for);
            // After cooling, a single further failure re-opens it.
            self.consecutive_failures = self.after - 1;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_failures_and_closes_after_cooling_and_a_success() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(10));
        assert!(!b.record(true, t0));
        assert!(!b.record(true, t0));
        assert!(b.check(t0).is_ok());
        assert!(b.record(true, t0));
        assert_eq!(
            b.check(t0 + Duration::from_secs(4)),
            Err(Duration::from_secs(6))
        );
        // Cooled down: tried again; one more failure re-opens at once.
        let t1 = t0 + Duration::from_secs(10);
        assert!(b.check(t1).is_ok());
        assert!(b.record(true, t1));
        assert!(b.check(t1).is_err());
        // A success after cooling closes it for good.
        let t2 = t1 + Duration::from_secs(10);
        assert!(!b.record(false, t2));
        assert!(!b.record(true, t2));
        assert!(b.check(t2).is_ok());
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(1));
        b.record(true, t0);
        b.record(false, t0);
        assert!(!b.record(true, t0));
        assert!(b.check(t0).is_ok());
    }
}
