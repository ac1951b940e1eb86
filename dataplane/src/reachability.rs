//! Whether a peer answers, and what to do when it stops.
//!
//! WireGuard itself notices a peer that forgot our session (it restarted,
//! or its configuration was replaced, as Kilo does on every change) only
//! after 15 s of unanswered traffic (KEEPALIVE + REKEY_TIMEOUT). Here a
//! session that carries our data but brings nothing back for a second
//! prompts a new handshake; the wait doubles (to 16 s) while the peer
//! answers handshakes but sends no data, so a one-way flow costs a few
//! extra handshakes, not one a second. Data queued behind an unanswered
//! handshake repeats the initiation after 1 s, doubling to the protocol's
//! own 5 s, so an absent peer is never flooded.
//!
//! A peer is *unreachable* when our handshake initiations have gone
//! unanswered for 5 s, *reachable* once anything authenticated comes back;
//! each change is reported once, for the log and the metrics.
//!
//! Lock-free (the receive path touches it per datagram) and clock-free:
//! every call takes the time in milliseconds from the caller.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// A silent session prompts a handshake after this long at first.
pub const RECOVER_FIRST_MS: u64 = 1000;
/// The longest wait of a silent session before a handshake: past the
/// peer's passive keepalive (10 s), so a one-way flow settles.
pub const RECOVER_MAX_MS: u64 = 16_000;
/// Data queued behind an unanswered handshake repeats it after this long...
pub const RETRY_FIRST_MS: u64 = 1000;
/// ...doubling to the protocol's own retransmission time (REKEY_TIMEOUT).
pub const RETRY_MAX_MS: u64 = 5000;
/// Initiations unanswered this long make a peer unreachable.
pub const UNREACHABLE_AFTER_MS: u64 = 5000;

/// A data message that carries nothing is a keepalive: header and tag only.
const KEEPALIVE_LEN: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reachability {
    /// Never tried, or nothing to say yet.
    Unknown,
    Reachable,
    Unreachable,
}

impl Reachability {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Reachable,
            2 => Self::Unreachable,
            _ => Self::Unknown,
        }
    }
    fn to_u8(self) -> u8 {
        match self {
            Self::Unknown => 0,
            Self::Reachable => 1,
            Self::Unreachable => 2,
        }
    }
}

/// What one look at the clock asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Start a handshake now: the session carries our data and nothing
    /// comes back.
    pub recover: bool,
    /// The peer just became unreachable (report it once).
    pub became_unreachable: bool,
}

/// One peer's answer tracking. Times are milliseconds on the caller's
/// clock; 0 means "never", so callers pass times of at least 1.
#[derive(Debug)]
pub struct PeerReachability {
    /// The first data message with a payload sent since the last thing
    /// received; 0 when everything sent was answered.
    unanswered_since: AtomicU64,
    /// The first handshake initiation sent since the last thing received.
    initiating_since: AtomicU64,
    last_initiation: AtomicU64,
    recover_wait: AtomicU64,
    retry_wait: AtomicU64,
    state: AtomicU8,
}

impl Default for PeerReachability {
    fn default() -> Self {
        Self {
            unanswered_since: AtomicU64::new(0),
            initiating_since: AtomicU64::new(0),
            last_initiation: AtomicU64::new(0),
            recover_wait: AtomicU64::new(RECOVER_FIRST_MS),
            retry_wait: AtomicU64::new(RETRY_FIRST_MS),
            state: AtomicU8::new(0),
        }
    }
}

/// Sets `a` to `now` if it holds 0 (the start of a span).
fn start_span(a: &AtomicU64, now: u64) {
    if a.load(Ordering::Relaxed) == 0 {
        let _ = a.compare_exchange(0, now.max(1), Ordering::Relaxed, Ordering::Relaxed);
    }
}

fn clear(a: &AtomicU64) {
    if a.load(Ordering::Relaxed) != 0 {
        a.store(0, Ordering::Relaxed);
    }
}

impl PeerReachability {
    pub fn state(&self) -> Reachability {
        Reachability::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// We sent `messages` (one or more WireGuard messages of one type, as
    /// one send); `len` is the size of one of them.
    pub fn sent(&self, message_type: u8, len: usize, now: u64) {
        match message_type {
            1 => {
                start_span(&self.initiating_since, now);
                self.last_initiation.store(now.max(1), Ordering::Relaxed);
            }
            4 if len > KEEPALIVE_LEN => start_span(&self.unanswered_since, now),
            _ => {}
        }
    }

    /// Something authenticated came from the peer: a handshake message,
    /// a keepalive, or data (`payload`). Returns the previous state when
    /// this makes the peer reachable, so the change can be reported.
    pub fn received(&self, payload: bool) -> Option<Reachability> {
        clear(&self.unanswered_since);
        clear(&self.initiating_since);
        if self.retry_wait.load(Ordering::Relaxed) != RETRY_FIRST_MS {
            self.retry_wait.store(RETRY_FIRST_MS, Ordering::Relaxed);
        }
        if payload && self.recover_wait.load(Ordering::Relaxed) != RECOVER_FIRST_MS {
            // Data flows both ways: a silence is news again.
            self.recover_wait.store(RECOVER_FIRST_MS, Ordering::Relaxed);
        }
        let reachable = Reachability::Reachable.to_u8();
        let before = self.state.swap(reachable, Ordering::Relaxed);
        (before != reachable).then(|| Reachability::from_u8(before))
    }

    /// Looks at the clock (the timer worker calls this about every 100 ms).
    pub fn tick(&self, now: u64) -> Due {
        let mut due = Due::default();
        let silent_since = self.unanswered_since.load(Ordering::Relaxed);
        let wait = self.recover_wait.load(Ordering::Relaxed);
        if silent_since != 0 && now.saturating_sub(silent_since) >= wait {
            due.recover = true;
            self.recover_wait
                .store((wait * 2).min(RECOVER_MAX_MS), Ordering::Relaxed);
            // The next silence is measured from this handshake on.
            self.unanswered_since.store(now.max(1), Ordering::Relaxed);
        }
        let initiating = self.initiating_since.load(Ordering::Relaxed);
        if initiating != 0
            && now.saturating_sub(initiating) >= UNREACHABLE_AFTER_MS
            && self
                .state
                .swap(Reachability::Unreachable.to_u8(), Ordering::Relaxed)
                != Reachability::Unreachable.to_u8()
        {
            due.became_unreachable = true;
        }
        due
    }

    /// Data is queued behind a handshake we started: whether to send the
    /// initiation again now (with back-off).
    pub fn retry_due(&self, now: u64) -> bool {
        let last = self.last_initiation.load(Ordering::Relaxed);
        let wait = self.retry_wait.load(Ordering::Relaxed);
        if now.saturating_sub(last) < wait {
            return false;
        }
        self.retry_wait
            .store((wait * 2).min(RETRY_MAX_MS), Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: usize = 1452;

    #[test]
    fn a_forgotten_session_prompts_a_handshake_after_a_second() {
        let r = PeerReachability::default();
        r.sent(1, 148, 1);
        assert_eq!(r.received(false), Some(Reachability::Unknown));
        assert_eq!(r.state(), Reachability::Reachable);
        // Pings go out and come back: nothing to do.
        for t in (100..5000).step_by(100) {
            r.sent(4, DATA, t);
            assert_eq!(r.tick(t + 50), Due::default());
            assert_eq!(r.received(true), None);
        }
        // The peer forgets us: our data goes unanswered.
        r.sent(4, DATA, 5000);
        r.sent(4, DATA, 5200);
        assert!(!r.tick(5900).recover);
        assert!(r.tick(6000).recover, "one second of silence");
        assert!(!r.tick(6100).recover, "once, not every tick");
        // Our initiation is answered: back to normal.
        r.sent(1, 148, 6000);
        assert_eq!(
            r.received(false),
            None,
            "still reachable: no change to report"
        );
        r.sent(4, DATA, 6200);
        assert_eq!(r.received(true), None);
        assert_eq!(r.tick(9000), Due::default());
    }

    #[test]
    fn a_one_way_flow_costs_a_few_handshakes_then_none() {
        let r = PeerReachability::default();
        let mut handshakes = Vec::new();
        let mut last_keepalive = 0;
        // We send every 100 ms for a minute; the peer only answers our
        // handshakes and sends a passive keepalive 10 s after data with no
        // reply (as WireGuard does).
        for t in (1..60_000).step_by(100) {
            r.sent(4, DATA, t);
            if r.tick(t).recover {
                handshakes.push(t);
                r.sent(1, 148, t);
                r.received(false);
                last_keepalive = t;
            }
            if t - last_keepalive >= 10_000 {
                r.received(false);
                last_keepalive = t;
            }
        }
        assert!(handshakes.len() <= 5, "{handshakes:?}");
        assert_eq!(r.state(), Reachability::Reachable);
    }

    #[test]
    fn an_absent_peer_is_unreachable_once_and_not_flooded() {
        let r = PeerReachability::default();
        let mut retries = 0;
        let mut reports = 0;
        for t in (1..30_000).step_by(100) {
            if t == 1 || r.retry_due(t) {
                r.sent(1, 148, t);
                retries += 1;
            }
            if r.tick(t).became_unreachable {
                reports += 1;
                assert!(t >= UNREACHABLE_AFTER_MS);
            }
        }
        assert_eq!(reports, 1);
        assert_eq!(r.state(), Reachability::Unreachable);
        // 1, 2, 4, then every 5 s: 9 initiations in 30 s.
        assert!(retries <= 10, "{retries} initiations in 30 s");
        // It answers: reachable again, reported once.
        assert_eq!(r.received(false), Some(Reachability::Unreachable));
        assert_eq!(r.received(true), None);
        assert!(r.retry_due(40_000));
    }
}
