//! Watching the leader candidates of this node's segment over the private
//! network (see `mesh::failover` for what the verdicts decide).
//!
//! The probe is an ICMP echo to the candidate's private address, five times
//! a second: the kernel answers it, so what it measures is whether the node
//! is up and reachable on its network, not whether its agent is busy (an
//! agent restart or a stalled agent must not move leadership; the tunnel
//! lives in its own process anyway). A candidate is *down* after
//! [`DOWN_AFTER`] without an answer (a 3 s stall is not enough), and *up*
//! again after answering steadily for [`UP_AFTER`], so a flapping link does
//! not flap leadership.
//!
//! [`Judge`] is the pure half (answers and the clock in, verdicts out);
//! [`Prober`] sends and receives on raw ICMP sockets on a thread of its own.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often each candidate is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);
/// Silence that makes a candidate down: above a 3 s stall plus a probe.
pub const DOWN_AFTER: Duration = Duration::from_millis(3500);
/// Steady answers that make a down candidate up again.
pub const UP_AFTER: Duration = Duration::from_secs(2);
/// A gap in answers this long restarts the count towards up.
const STEADY_GAP: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Watched {
    ip: IpAddr,
    /// When watching began (a candidate never heard of is judged from here).
    since: Instant,
    last_answer: Option<Instant>,
    /// While down: since when the answers have come without a long gap.
    steady_since: Option<Instant>,
    down: bool,
}

/// Verdicts on the watched candidates, from their answers and the clock.
#[derive(Debug, Default, Clone)]
pub struct Judge {
    watched: BTreeMap<String, Watched>,
}

impl Judge {
    /// Sets who is watched; a candidate new to the list starts with a clean
    /// slate, one that left is forgotten.
    pub fn watch(&mut self, list: &[(String, IpAddr)], now: Instant) {
        self.watched
            .retain(|name, w| list.iter().any(|(n, ip)| n == name && *ip == w.ip));
        for (name, ip) in list {
            self.watched.entry(name.clone()).or_insert(Watched {
                ip: *ip,
                since: now,
                last_answer: None,
                steady_since: None,
                down: false,
            });
        }
    }

    /// The addresses to probe.
    pub fn targets(&self) -> Vec<IpAddr> {
        self.watched.values().map(|w| w.ip).collect()
    }

    /// `ip` answered at `at`.
    pub fn answered(&mut self, ip: IpAddr, at: Instant) {
        for w in self.watched.values_mut().filter(|w| w.ip == ip) {
            if w.down {
                let steady = w
                    .last_answer
                    .is_some_and(|t| at.saturating_duration_since(t) <= STEADY_GAP);
                if !steady || w.steady_since.is_none() {
                    w.steady_since = Some(at);
                }
            }
            w.last_answer = Some(w.last_answer.map_or(at, |t| t.max(at)));
        }
    }

    /// Re-judges at `now`; true if the set of down candidates changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for (name, w) in &mut self.watched {
            let heard = w.last_answer.unwrap_or(w.since);
            if !w.down && now.saturating_duration_since(heard) >= DOWN_AFTER {
                w.down = true;
                w.steady_since = None;
                changed = true;
                tracing::warn!(node = %name, address = %w.ip,
                    "segment member unreachable: no answer for {:.1} s", DOWN_AFTER.as_secs_f64());
            } else if w.down {
                let fresh = w
                    .last_answer
                    .is_some_and(|t| now.saturating_duration_since(t) <= STEADY_GAP);
                let steady_for = w
                    .steady_since
                    .map(|s| now.saturating_duration_since(s))
                    .unwrap_or_default();
                if fresh && steady_for >= UP_AFTER {
                    w.down = false;
                    w.steady_since = None;
                    changed = true;
                    tracing::info!(node = %name, address = %w.ip, "segment member reachable again");
                }
            }
        }
        changed
    }

    /// The names of the candidates judged down.
    pub fn down(&self) -> BTreeSet<String> {
        self.watched
            .iter()
            .filter(|(_, w)| w.down)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// What the probing thread shares with the agent.
#[derive(Default)]
struct Shared {
    targets: Mutex<Vec<IpAddr>>,
    answers: Mutex<HashMap<IpAddr, Instant>>,
    stop: AtomicBool,
}

/// Probes targets on a thread of its own; stops when dropped.
pub struct Prober {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    /// Opens the ICMP sockets (this needs CAP_NET_RAW) and starts probing
    /// nothing yet.
    pub fn start() -> io::Result<Self> {
        let sockets = Sockets::open()?;
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || run(&s, &sockets))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    pub fn set_targets(&self, targets: Vec<IpAddr>) {
        *self
            .shared
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = targets;
    }

    /// The answers since the last call: each address with its latest.
    pub fn take_answers(&self) -> HashMap<IpAddr, Instant> {
        std::mem::take(
            &mut *self
                .shared
                .answers
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The raw ICMP sockets, IPv4 and (if the host has it) IPv6.
struct Sockets {
    v4: OwnedFd,
    v6: Option<OwnedFd>,
    /// The echo identifier: replies carrying another one are someone else's.
    id: u16,
}

fn raw_socket(family: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Sockets {
    fn open() -> io::Result<Self> {
        let v4 = raw_socket(libc::AF_INET, libc::IPPROTO_ICMP)?;
        let v6 = raw_socket(libc::AF_INET6, libc::IPPROTO_ICMPV6).ok();
        let mut b = [0u8; 2];
        let _ = getrandom::fill(&mut b);
        Ok(Self {
            v4,
            v6,
            id: u16::from_le_bytes(b),
        })
    }
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request: type, code, checksum, identifier, sequence.
pub fn echo_request(v6: bool, id: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = if v6 { 128 } else { 8 };
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(b"weftprob");
    if !v6 {
        // The kernel fills in ICMPv6 checksums itself.
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// The identifier of an echo reply in `packet` (IPv4 with its header,
/// ICMPv6 without), if it is one.
pub fn echo_reply_id(v6: bool, packet: &[u8]) -> Option<u16> {
    let icmp = if v6 {
        packet
    } else {
        let ihl = usize::from(*packet.first()? & 0x0f) * 4;
        packet.get(ihl..)?
    };
    let reply_type = if v6 { 129 } else { 0 };
    if *icmp.first()? != reply_type || icmp.len() < 8 {
        return None;
    }
    Some(u16::from_be_bytes([icmp[4], icmp[5]]))
}

fn send_echo(s: &Sockets, ip: IpAddr, seq: u16) {
    let (fd, addr, v6) = match ip {
        IpAddr::V4(a) => (&s.v4, SocketAddr::new(IpAddr::V4(a), 0), false),
        IpAddr::V6(a) => match &s.v6 {
            Some(fd) => (fd, SocketAddr::new(IpAddr::V6(a), 0), true),
            None => return,
        },
    };
    let packet = echo_request(v6, s.id, seq);
    let (storage, len) = sockaddr(addr);
    // SAFETY: sendto with a live buffer and a sockaddr of the given length.
    unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr() as *const libc::c_void,
            packet.len(),
            libc::MSG_DONTWAIT,
            &storage as *const libc::sockaddr_storage as *const libc::sockaddr,
            len,
        )
    };
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            (
                storage,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            (
                storage,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

/// Reads every queued reply on `fd`, recording the ones that are ours.
fn drain_replies(fd: &OwnedFd, v6: bool, id: u16, shared: &Shared) {
    let mut buf = [0u8; 1500];
    loop {
        // SAFETY: an all-zero sockaddr_storage is valid.
        let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: recvfrom into live buffers of the sizes given.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_DONTWAIT,
                &mut from as *mut libc::sockaddr_storage as *mut libc::sockaddr,
                &mut len,
            )
        };
        if n <= 0 {
            return;
        }
        if echo_reply_id(v6, &buf[..n as usize]) != Some(id) {
            continue;
        }
        let ip = if v6 {
            // SAFETY: the kernel wrote a sockaddr_in6 for an AF_INET6 socket.
            let sin6 = unsafe { &*(&from as *const _ as *const libc::sockaddr_in6) };
            IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
        } else {
            // SAFETY: the kernel wrote a sockaddr_in for an AF_INET socket.
            let sin = unsafe { &*(&from as *const _ as *const libc::sockaddr_in) };
            IpAddr::V4(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()))
        };
        shared
            .answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ip, Instant::now());
    }
}

fn run(shared: &Shared, s: &Sockets) {
    let mut seq: u16 = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let targets = shared
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        seq = seq.wrapping_add(1);
        for ip in targets {
            send_echo(s, ip, seq);
        }
        // The answers wait in the sockets until the next round: one
        // wake-up per round, not one per answer. An answer's time is then
        // known to within a round, which a 3.5 s verdict does not mind.
        std::thread::sleep(PROBE_EVERY);
        drain_replies(&s.v4, false, s.id, shared);
        if let Some(v6) = &s.v6 {
            drain_replies(v6, true, s.id, shared);
        }
    }
}

/// This node's watch over its segment's leader candidates: the prober and
/// the verdicts, kept up to date by the agent loop.
pub struct SegmentWatch {
    /// `None` where ICMP sockets cannot be opened (no CAP_NET_RAW): then
    /// this node does not report, and failover waits for check-ins.
    prober: Option<Prober>,
    judge: Judge,
}

impl SegmentWatch {
    pub fn start() -> Self {
        let prober = match Prober::start() {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(
                    "cannot probe this segment's leader candidates ({e}; needs CAP_NET_RAW): \
                     this node does not report them, and a dead leader is replaced only \
                     when its check-ins are 60 s old, as in Kilo"
                );
                None
            }
        };
        Self {
            prober,
            judge: Judge::default(),
        }
    }

    /// A watch that does not probe (and so reports nothing): for a node
    /// that is not to judge its segment, and for tests.
    pub fn without_probes() -> Self {
        Self {
            prober: None,
            judge: Judge::default(),
        }
    }

    /// Watches the candidates `me` should watch in `topology`.
    pub fn follow(&mut self, topology: &crate::mesh::Topology, me: &str) {
        let list = topology
            .find(me)
            .map(|(s, _)| crate::mesh::failover::watch_list(&topology.segments[s].nodes, me))
            .unwrap_or_default();
        self.judge.watch(&list, Instant::now());
        if let Some(p) = &self.prober {
            p.set_targets(self.judge.targets());
        }
    }

    /// Takes in the answers so far; true when a verdict changed (the node
    /// should publish its report now).
    pub fn tick(&mut self) -> bool {
        let Some(p) = &self.prober else {
            return false;
        };
        for (ip, at) in p.take_answers() {
            self.judge.answered(ip, at);
        }
        self.judge.tick(Instant::now())
    }

    /// What this node reports: the candidates it finds down, or `None`
    /// when it cannot probe.
    pub fn report(&self) -> Option<BTreeSet<String>> {
        self.prober.as_ref().map(|_| self.judge.down())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    fn list() -> Vec<(String, IpAddr)> {
        vec![("a".into(), "10.0.0.1".parse().unwrap())]
    }

    #[test]
    fn silence_makes_a_candidate_down_and_steady_answers_bring_it_back() {
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut j = Judge::default();
        j.watch(&list(), t0);
        j.answered(ip, at(t0, 100));
        assert!(!j.tick(at(t0, 3500)), "3.4 s of silence is not enough");
        assert!(j.tick(at(t0, 3600)));
        assert_eq!(j.down(), BTreeSet::from(["a".to_string()]));
        // One answer does not bring it back; two seconds of them do.
        j.answered(ip, at(t0, 5000));
        assert!(!j.tick(at(t0, 5000)));
        for ms in (5200..=7000).step_by(200) {
            j.answered(ip, at(t0, ms));
            let back = j.tick(at(t0, ms));
            assert_eq!(back, ms >= 7000, "at {ms} ms");
        }
        assert!(j.down().is_empty());
    }

    #[test]
    fn a_three_second_stall_moves_nothing() {
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut j = Judge::default();
        j.watch(&list(), t0);
        let mut changed = false;
        // Answers every 200 ms, except for 3 s from 1 s on.
        for ms in (0..10_000).step_by(100) {
            if ms % 200 == 0 && !(1000..4000).contains(&ms) {
                j.answered(ip, at(t0, ms + 1));
            }
            changed |= j.tick(at(t0, ms));
        }
        assert!(!changed, "a 3 s stall made a verdict");
    }

    #[test]
    fn a_candidate_never_heard_is_down_after_the_same_time() {
        let t0 = Instant::now();
        let mut j = Judge::default();
        j.watch(&list(), t0);
        assert!(!j.tick(at(t0, 3000)));
        assert!(j.tick(at(t0, 3500)));
        // It leaves the list: forgotten.
        j.watch(&[], at(t0, 4000));
        assert!(j.down().is_empty());
        assert!(j.targets().is_empty());
    }

    #[test]
    fn echo_packets_round_trip() {
        let req = echo_request(false, 0x1234, 7);
        assert_eq!(checksum(&req), 0, "a valid checksum sums to zero");
        // A reply as the kernel hands it to a raw socket: IPv4 header first.
        let mut reply = vec![0x45u8; 20];
        reply[0] = 0x45;
        let mut icmp = req.to_vec();
        icmp[0] = 0;
        reply.extend(icmp);
        assert_eq!(echo_reply_id(false, &reply), Some(0x1234));
        assert_eq!(echo_reply_id(false, &reply[..22]), None, "too short");
        let mut v6 = echo_request(true, 9, 1).to_vec();
        v6[0] = 129;
        assert_eq!(echo_reply_id(true, &v6), Some(9));
        assert_eq!(
            echo_reply_id(true, &[128, 0, 0, 0, 0, 9, 0, 1]),
            None,
            "a request"
        );
    }
}
