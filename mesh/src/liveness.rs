//! When a node counts as alive. Nodes prove it by checking in (Kilo's
//! `last-seen`, every 30 s); a node silent for 60 s is left out. But a node
//! can only be heard through the API: while this agent cannot reach the API,
//! silence proves nothing, so that time does not count against anyone. After
//! the API returns, nodes get one more check-in period (the grace) before
//! data older than the outage can make them stale: an outage longer than
//! 60 s must not drop every healthy node at once.
//!
//! Pure: the backend records when the API went away and came back
//! ([`OutageLog`]); [`Liveness`] judges ages from that.

use std::collections::VecDeque;

/// Seconds after which a node that has not checked in is left out (Kilo:
/// two check-in periods of 30 s).
pub const STALE_AFTER: u64 = 60;

/// Seconds after the API's return during which pre-outage data cannot make
/// a node stale: one check-in period, the time every node needs to check in
/// again.
pub const GRACE_AFTER_OUTAGE: u64 = 30;

/// How many past outages are remembered; older ones cannot matter (see
/// [`OutageLog::liveness`]).
const KEPT_OUTAGES: usize = 16;

/// The time limits of liveness, in seconds. Every node of a cluster must
/// use the same ones (Kilo's are the defaults); labs and tests shorten them
/// so an outage longer than the staleness limit takes seconds, not minutes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A node silent for this long is left out.
    pub stale_after: u64,
    /// After the API returns, pre-outage data cannot make a node stale for
    /// this long: one check-in period, the time every node needs to check
    /// in again.
    pub grace_after_outage: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            stale_after: STALE_AFTER,
            grace_after_outage: GRACE_AFTER_OUTAGE,
        }
    }
}

/// A clock for node ages: the time now, and the spans (unix seconds,
/// `[start, end)`) during which check-ins could not be observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Liveness {
    now: u64,
    unobserved: Vec<(u64, u64)>,
    stale_after: u64,
}

impl From<u64> for Liveness {
    /// A clock with nothing unobserved: ages are plain differences.
    fn from(now: u64) -> Self {
        Self::at(now)
    }
}

impl Liveness {
    pub fn at(now: u64) -> Self {
        Self {
            now,
            unobserved: Vec::new(),
            stale_after: STALE_AFTER,
        }
    }

    /// The same clock with another staleness limit (seconds).
    pub fn with_stale_after(mut self, seconds: u64) -> Self {
        self.stale_after = seconds;
        self
    }

    /// Seconds of silence after which a node is stale.
    pub fn stale_after(&self) -> u64 {
        self.stale_after
    }

    /// `unobserved` may overlap and be in any order; parts in the future
    /// of `now` are ignored.
    pub fn with_unobserved(now: u64, unobserved: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut spans: Vec<(u64, u64)> = unobserved
            .into_iter()
            .map(|(s, e)| (s, e.min(now)))
            .filter(|(s, e)| s < e)
            .collect();
        spans.sort_unstable();
        // Merge overlaps so no second is subtracted twice.
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
        for (s, e) in spans {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        Self {
            now,
            unobserved: merged,
            stale_after: STALE_AFTER,
        }
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    /// Seconds since `last_seen` that count: the unobserved spans after it
    /// do not. A check-in from the future counts as now.
    pub fn age(&self, last_seen: u64) -> u64 {
        let raw = self.now.saturating_sub(last_seen);
        let hidden: u64 = self
            .unobserved
            .iter()
            .map(|&(s, e)| e.saturating_sub(s.max(last_seen)))
            .sum();
        raw.saturating_sub(hidden)
    }

    /// Whether a node that last checked in at `last_seen` is stale.
    pub fn is_stale(&self, last_seen: u64) -> bool {
        self.age(last_seen) >= self.stale_after
    }
}

/// When this agent lost and regained the API, as unix seconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutageLog {
    /// Set while the API is unreachable.
    down_since: Option<u64>,
    /// Past outages, oldest first.
    past: VecDeque<(u64, u64)>,
}

impl OutageLog {
    /// The API became unreachable at `at` (repeats while down change nothing).
    pub fn lost(&mut self, at: u64) {
        self.down_since.get_or_insert(at);
    }

    /// The API answered again at `at`.
    pub fn back(&mut self, at: u64) {
        if let Some(since) = self.down_since.take() {
            self.past.push_back((since, at.max(since)));
            while self.past.len() > KEPT_OUTAGES {
                self.past.pop_front();
            }
        }
    }

    pub fn is_down(&self) -> bool {
        self.down_since.is_some()
    }

    /// The clock at `now`: the current outage until now, and every past
    /// outage extended by the grace. An outage whose grace ended more than
    /// the staleness limit ago no longer changes any verdict (a node
    /// silent since before it is older than that anyway), which is why a
    /// bounded history is enough.
    pub fn liveness(&self, now: u64) -> Liveness {
        self.liveness_under(now, Limits::default())
    }

    /// [`OutageLog::liveness`] under other limits.
    pub fn liveness_under(&self, now: u64, limits: Limits) -> Liveness {
        let current = self.down_since.map(|s| (s, now));
        Liveness::with_unobserved(
            now,
            self.past
                .iter()
                .map(|&(s, e)| (s, e + limits.grace_after_outage))
                .chain(current),
        )
        .with_stale_after(limits.stale_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_outages_age_is_the_plain_difference() {
        let l = Liveness::at(1000);
        assert_eq!(l.age(940), 60);
        assert!(l.is_stale(940));
        assert!(!l.is_stale(941));
        assert_eq!(l.age(2000), 0, "a clock ahead of ours is not negative");
    }

    #[test]
    fn an_outage_longer_than_the_staleness_limit_keeps_healthy_nodes() {
        // Every node checked in at 1000 at the latest; the API went away at
        // 1010 and came back at 1100 (90 s, past the 60 s limit).
        let mut log = OutageLog::default();
        log.lost(1010);
        log.lost(1050); // repeated failures do not move the start
        assert!(log.is_down());
        // During the outage time stands still for everyone fresh before it.
        assert_eq!(log.liveness(1090).age(1000), 10);
        assert!(!log.liveness(1090).is_stale(990));
        log.back(1100);
        assert!(!log.is_down());
        // Right after it, and through the grace, still the pre-outage age.
        assert_eq!(log.liveness(1100).age(1000), 10);
        assert_eq!(log.liveness(1130).age(1000), 10);
        // After the grace the clock runs again: a node that never checked in
        // again goes stale 50 s later (60 s of counted silence in all).
        assert!(!log.liveness(1179).is_stale(1000));
        assert!(log.liveness(1180).is_stale(1000));
        // A node that checks in after the outage is judged on that alone.
        assert_eq!(log.liveness(1200).age(1105), 95 - 25);
    }

    #[test]
    fn a_node_dead_before_the_outage_stays_stale() {
        let mut log = OutageLog::default();
        log.lost(1000);
        log.back(1100);
        // Last seen 70 s before the outage: stale before, during and after.
        assert!(log.liveness(1050).is_stale(930));
        assert!(log.liveness(1110).is_stale(930));
    }

    #[test]
    fn a_node_dying_after_an_outage_is_caught_on_time() {
        let mut log = OutageLog::default();
        log.lost(1000);
        log.back(1100);
        // It checked in at 1200, long after the grace, then went silent.
        assert!(!log.liveness(1259).is_stale(1200));
        assert!(log.liveness(1260).is_stale(1200));
    }

    #[test]
    fn overlapping_spans_are_not_subtracted_twice() {
        let l = Liveness::with_unobserved(200, [(100, 150), (120, 160), (190, 300)]);
        // Hidden after 0: 100..160 (60 s) and 190..200 (10 s).
        assert_eq!(l.age(0), 200 - 70);
        // A span starting before last-seen counts only from last-seen on.
        assert_eq!(l.age(130), 70 - (30 + 10));
    }

    #[test]
    fn history_is_bounded() {
        let mut log = OutageLog::default();
        for i in 0..100u64 {
            log.lost(i * 10);
            log.back(i * 10 + 5);
        }
        assert_eq!(log.past.len(), KEPT_OUTAGES);
    }

    #[test]
    fn shorter_limits_shorten_staleness_and_the_grace() {
        let limits = Limits {
            stale_after: 8,
            grace_after_outage: 3,
        };
        let mut log = OutageLog::default();
        assert!(!log.liveness_under(107, limits).is_stale(100));
        assert!(log.liveness_under(108, limits).is_stale(100));
        // A 20 s outage, longer than the limit, drops no one; the grace
        // after it is the short check-in period.
        log.lost(110);
        log.back(130);
        assert!(!log.liveness_under(130, limits).is_stale(105));
        assert_eq!(log.liveness_under(140, limits).age(105), 5 + 7);
        assert!(log.liveness_under(140, limits).is_stale(105));
    }
}
