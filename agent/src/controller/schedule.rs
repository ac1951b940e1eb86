//! When the agent's loop runs a pass of its own accord: every resync period,
//! and sooner after a failed pass, backing off from one second to the resync
//! period. Pure: the caller hands in the time.

use std::time::{Duration, Instant};

/// The first retry after a failed pass.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Schedule {
    resync: Duration,
    /// When the next pass is due.
    next: Instant,
    /// The wait after the next failure.
    retry: Duration,
}

impl Schedule {
    /// A schedule whose first pass is due at `now`.
    pub fn new(resync: Duration, now: Instant) -> Self {
        Self {
            resync,
            next: now,
            retry: FIRST_RETRY.min(resync),
        }
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// How long until the next pass is due (zero if it is).
    pub fn until_due(&self, now: Instant) -> Duration {
        self.next.saturating_duration_since(now)
    }

    /// A pass started at `now`: the next is a resync period away.
    pub fn started(&mut self, now: Instant) {
        self.next = now + self.resync;
    }

    /// The pass that started at `now` failed: the next comes after the
    /// current retry wait, which doubles up to the resync period. Returns
    /// the wait.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let wait = self.retry;
        self.next = now + wait;
        self.retry = (self.retry * 2).min(self.resync);
        wait
    }

    /// A pass succeeded: the next failure retries after a second again.
    pub fn succeeded(&mut self) {
        self.retry = FIRST_RETRY.min(self.resync);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn resyncs_after_a_pass() {
        let t0 = Instant::now();
        let mut s = Schedule::new(30 * S, t0);
        assert!(s.due(t0), "the first pass is due at once");
        s.started(t0);
        assert!(!s.due(t0 + 29 * S));
        assert_eq!(s.until_due(t0 + 10 * S), 20 * S);
        assert!(s.due(t0 + 30 * S));
    }

    #[test]
    fn failures_back_off_to_the_resync_period_and_a_success_resets() {
        let t0 = Instant::now();
        let mut s = Schedule::new(10 * S, t0);
        let mut waits = Vec::new();
        let mut now = t0;
        for _ in 0..6 {
            s.started(now);
            let wait = s.failed(now);
            assert!(!s.due(now + wait - Duration::from_millis(1)));
            assert!(s.due(now + wait));
            waits.push(wait.as_secs());
            now += wait;
        }
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        s.succeeded();
        s.started(now);
        assert_eq!(s.failed(now), S);
    }

    #[test]
    fn a_resync_shorter_than_a_second_caps_the_retry() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_millis(300), t0);
        assert_eq!(s.failed(t0), Duration::from_millis(300));
    }
}
