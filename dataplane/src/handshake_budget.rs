//! How many handshake messages may cost a Diffie-Hellman, per source and for
//! the whole device.
//!
//! The protocol core checks mac1 and, for a source past its rate, asks for a
//! cookie (mac2) first. Two gaps remain, and this module closes them the way
//! the kernel's WireGuard does:
//!
//! - A source that answers its cookie (a real address) would then be let
//!   through at any rate. Here every source address (an IPv4 address, an
//!   IPv6 /64) has a token bucket: [`PER_SOURCE_PER_SECOND`] messages a
//!   second, [`PER_SOURCE_BURST`] at once, as the kernel's ratelimiter.
//! - Many spoofed sources, each under its own rate, would each get
//!   handshakes for free. Once the device has admitted
//!   [`DEVICE_PER_SECOND`] messages within a second it is under load, and
//!   until a whole second passes below that every source must show a cookie
//!   ([`HandshakeBudget::under_load`]): a spoofed source never sees its
//!   cookie, a real peer answers it in one round trip.
//!
//! Pure: the clock is passed in (milliseconds), so tests drive it.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;

/// Handshake messages a source may send per second, on average.
pub const PER_SOURCE_PER_SECOND: u64 = 20;
/// ... and at once.
pub const PER_SOURCE_BURST: u64 = 5;
/// Handshake messages the device admits per second before every source must
/// show a cookie. A Diffie-Hellman costs tens of microseconds: this bounds
/// the handshake work to a few percent of a core.
pub const DEVICE_PER_SECOND: u64 = 250;
/// Sources tracked at most; past this a new source is refused until the
/// table is swept (at most a second later).
pub const MAX_SOURCES: usize = 16_384;

/// Tokens are kept in thousandths, so that refills are exact integers.
const MILLI: u64 = 1000;
/// A full bucket, in thousandths.
const FULL: u64 = PER_SOURCE_BURST * MILLI;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4([u8; 4]),
    /// The /64: one host's addresses count as one source.
    V6([u8; 8]),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Source::V4(a.octets()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => {
                    let mut net = [0u8; 8];
                    net.copy_from_slice(&a.octets()[..8]);
                    Source::V6(net)
                }
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Thousandths of a message.
    tokens: u64,
    at_ms: u64,
}

#[derive(Debug, Default)]
struct Inner {
    sources: HashMap<Source, Bucket>,
    /// The one-second window the device count is for.
    window_start_ms: u64,
    admitted_in_window: u64,
    /// Under load until this time (a whole second below the budget).
    under_load_until_ms: u64,
    last_sweep_ms: u64,
}

#[derive(Debug, Default)]
pub struct HandshakeBudget {
    inner: Mutex<Inner>,
}

impl HandshakeBudget {
    /// Whether every source must show a cookie now.
    pub fn under_load(&self, now_ms: u64) -> bool {
        let mut inner = self.inner.lock();
        inner.roll(now_ms);
        now_ms < inner.under_load_until_ms
    }

    /// Takes one message from `source`'s budget and the device's: false if
    /// the source is past its rate (the message is dropped).
    pub fn admit(&self, source: IpAddr, now_ms: u64) -> bool {
        let mut inner = self.inner.lock();
        inner.roll(now_ms);
        if now_ms.saturating_sub(inner.last_sweep_ms) >= 1000 {
            inner.sweep(now_ms);
        }
        let key = Source::from(source);
        if !inner.sources.contains_key(&key) && inner.sources.len() >= MAX_SOURCES {
            return false;
        }
        let bucket = inner.sources.entry(key).or_insert(Bucket {
            tokens: FULL,
            at_ms: now_ms,
        });
        let elapsed = now_ms.saturating_sub(bucket.at_ms);
        bucket.tokens = (bucket.tokens + elapsed * PER_SOURCE_PER_SECOND).min(FULL);
        bucket.at_ms = now_ms;
        if bucket.tokens < MILLI {
            return false;
        }
        bucket.tokens -= MILLI;
        inner.admitted_in_window += 1;
        if inner.admitted_in_window >= DEVICE_PER_SECOND {
            inner.under_load_until_ms = inner.window_start_ms + 2000;
        }
        true
    }

    #[cfg(test)]
    fn sources(&self) -> usize {
        self.inner.lock().sources.len()
    }
}

impl Inner {
    /// Starts a new one-second window when the current one is over.
    fn roll(&mut self, now_ms: u64) {
        if now_ms.saturating_sub(self.window_start_ms) >= 1000 {
            self.window_start_ms = now_ms;
            self.admitted_in_window = 0;
        }
    }

    /// Forgets sources whose buckets are full again: they cost nothing to
    /// recreate.
    fn sweep(&mut self, now_ms: u64) {
        self.sources.retain(|_, b| {
            b.tokens + now_ms.saturating_sub(b.at_ms) * PER_SOURCE_PER_SECOND < FULL
        });
        self.last_sweep_ms = now_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let b = HandshakeBudget::default();
        let t = 10_000;
        let admitted = (0..100).filter(|_| b.admit(v4(1), t)).count();
        assert_eq!(admitted as u64, PER_SOURCE_BURST);
        // 50 ms later: one more (20 a second).
        assert!(!b.admit(v4(1), t + 49));
        assert!(b.admit(v4(1), t + 50));
        assert!(!b.admit(v4(1), t + 51));
        // Over ten seconds of trying every millisecond: the rate, no more.
        let later = (0..10_000u64)
            .filter(|ms| b.admit(v4(1), t + 100 + ms))
            .count() as u64;
        assert!(
            (10 * PER_SOURCE_PER_SECOND..=10 * PER_SOURCE_PER_SECOND + PER_SOURCE_BURST)
                .contains(&later),
            "{later}"
        );
        // Another source is not affected.
        assert!(b.admit(v4(2), t + 10_100));
    }

    #[test]
    fn an_ipv6_host_is_one_source_per_64() {
        let b = HandshakeBudget::default();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        for _ in 0..PER_SOURCE_BURST {
            assert!(b.admit(a, 0));
        }
        assert!(!b.admit(same, 0), "another address of the same /64");
        assert!(b.admit(other, 0));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        for _ in 0..PER_SOURCE_BURST {
            assert!(b.admit(mapped, 0));
        }
        assert!(!b.admit(v4(1), 0), "a v4-mapped address is the v4 source");
    }

    #[test]
    fn many_sources_put_the_device_under_load_until_a_quiet_second() {
        let b = HandshakeBudget::default();
        let t = 5_000;
        assert!(!b.under_load(t));
        let mut n = 0u32;
        while !b.under_load(t + u64::from(n) / 100) {
            let ip = IpAddr::from((0x0a00_0000 + n).to_be_bytes());
            assert!(b.admit(ip, t + u64::from(n) / 100));
            n += 1;
        }
        assert_eq!(u64::from(n), DEVICE_PER_SECOND);
        // Still under load through the next second, then not.
        assert!(b.under_load(t + 1500));
        assert!(!b.under_load(t + 2001));
    }

    #[test]
    fn the_source_table_is_bounded_and_swept() {
        let b = HandshakeBudget::default();
        for n in 0..(MAX_SOURCES as u32 + 10) {
            b.admit(IpAddr::from((0x0a00_0000 + n).to_be_bytes()), 0);
        }
        assert_eq!(b.sources(), MAX_SOURCES);
        assert!(!b.admit(v4(7), 0), "a new source past the cap is refused");
        // Once their buckets are full again, the sources are forgotten.
        assert!(b.admit(v4(7), 1000));
        assert_eq!(b.sources(), 1);
    }
}
