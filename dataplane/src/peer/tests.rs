//! Two peers against each other in memory, packet by packet: no sockets, no
//! TUN, no root, and the clock of every decision in the test's hand.
//!
//! Each side holds what a device holds for the other (`Side::remote`); the
//! test carries every message across by hand, so it can drop, hold back,
//! replay or re-address any of them. What the I/O edges would do around a
//! message (mac1 and cookie checks before a handshake, recording a send) is
//! done here the same way.

use super::*;
use crate::key::PrivateKey;
use crate::reachability::RECOVER_FIRST_MS;
use crate::wire::{self, MessageType, PacketBuffers};
use std::net::Ipv4Addr;

const MTU: u16 = 1420;

/// One end: its identity, its view of the other end, and the inner
/// addresses the other end owns (its AllowedIPs here).
struct Side {
    addr: SocketAddr,
    identity: StaticIdentity,
    remote: Peer,
    limiter: Arc<RateLimiter>,
    /// Demands a cookie of every initiation (a device under load).
    strict: Arc<RateLimiter>,
    under_load: bool,
    remote_owns: Ipv4Addr,
}

/// What delivering one message did at the receiving side.
#[derive(Debug)]
enum Delivered {
    /// A handshake message or cookie reply: what the side sends back.
    Replies(Vec<Packet>),
    /// A data message.
    Opened(Opened),
}

impl Side {
    /// Drops the session as a restart would (the same key, nothing else).
    fn restart(&self) {
        self.remote.reset_tunnel(
            Some(&self.identity),
            &self.limiter,
            &IndexTable::from_os_rng(),
        );
    }

    fn send(&self, message: &Packet, now_ms: u64) -> Vec<u8> {
        self.remote.sent(message, message.len(), now_ms);
        message.to_vec()
    }

    /// Hands `bytes` from `from` to this side, as the inbound side does.
    fn deliver(&self, bytes: &[u8], from: SocketAddr) -> Delivered {
        let packet = PacketBuffers::default().packet(bytes);
        match wire::message_type(bytes).expect("a WireGuard message") {
            MessageType::HandshakeInit | MessageType::HandshakeResponse => {
                let limiter = if self.under_load {
                    &self.strict
                } else {
                    &self.limiter
                };
                match limiter.verify_packet(from, packet) {
                    Ok(message) => Delivered::Replies(self.remote.handshake(
                        message,
                        from,
                        bytes.len(),
                        &mut MtuWatcher::new(MTU),
                    )),
                    Err(TunnResult::WriteToNetwork(cookie)) => {
                        Delivered::Replies(vec![Packet::from(cookie)])
                    }
                    Err(_) => Delivered::Replies(Vec::new()),
                }
            }
            MessageType::CookieReply => {
                let message = packet.try_into_wg().expect("a cookie reply");
                self.remote.cookie_reply(message, from);
                Delivered::Replies(Vec::new())
            }
            MessageType::Data => {
                let message = packet.try_into_wg().expect("a data message");
                let owns = |src: IpAddr| src == IpAddr::V4(self.remote_owns);
                Delivered::Opened(self.remote.open(message, from, bytes.len(), owns))
            }
        }
    }

    fn seal(&self, packet: &[u8], now_ms: u64) -> Sealed {
        let mut sealer = self.remote.sealer().expect("an endpoint and a key");
        let padded = wire::padded_len(packet.len(), MTU);
        sealer.seal(PacketBuffers::default().padded(packet, padded), now_ms)
    }
}

/// `a` and `b`, each knowing the other's key and endpoint.
struct Pair {
    a: Side,
    b: Side,
}

const A_INNER: Ipv4Addr = Ipv4Addr::new(10, 4, 0, 1);
const B_INNER: Ipv4Addr = Ipv4Addr::new(10, 4, 0, 2);

/// One end at `addr`, knowing the other end (at `other_addr`) by its key;
/// the other end owns the inner address `other_owns`.
fn side(
    own: &PrivateKey,
    other: &PrivateKey,
    addr: &str,
    other_addr: &str,
    other_owns: Ipv4Addr,
) -> Side {
    let secret = own.to_x25519();
    let public = x25519::PublicKey::from(&secret);
    let limiter = Arc::new(RateLimiter::new(&public, 100));
    let strict = Arc::new(RateLimiter::new(&public, 0));
    let remote = Peer::new(other.public_key(), None);
    let identity = StaticIdentity { secret, public };
    remote.reset_tunnel(Some(&identity), &limiter, &IndexTable::from_os_rng());
    remote.set_endpoint(other_addr.parse().unwrap());
    Side {
        addr: addr.parse().unwrap(),
        identity,
        remote,
        limiter,
        strict,
        under_load: false,
        remote_owns: other_owns,
    }
}

impl Pair {
    fn new() -> Self {
        let ka = PrivateKey::generate().unwrap();
        let kb = PrivateKey::generate().unwrap();
        Self {
            a: side(&ka, &kb, "192.0.2.1:51820", "198.51.100.2:51820", B_INNER),
            b: side(&kb, &ka, "198.51.100.2:51820", "192.0.2.1:51820", A_INNER),
        }
    }

    /// Runs a handshake started by `a` at `now_ms` and delivers whatever
    /// each answer brings, until nothing is left; returns what `b` opened.
    fn handshake(&self, init: &Packet, now_ms: u64) -> Vec<Opened> {
        let init = self.a.send(init, now_ms);
        let Delivered::Replies(responses) = self.b.deliver(&init, self.a.addr) else {
            panic!("an initiation is a handshake message");
        };
        assert_eq!(responses.len(), 1, "b answers the initiation");
        let response = self.b.send(&responses[0], now_ms);
        let Delivered::Replies(after) = self.a.deliver(&response, self.b.addr) else {
            panic!("a response is a handshake message");
        };
        after
            .iter()
            .map(
                |m| match self.b.deliver(&self.a.send(m, now_ms), self.a.addr) {
                    Delivered::Opened(opened) => opened,
                    other => panic!("a sends data after the response, not {other:?}"),
                },
            )
            .collect()
    }

    /// A session from `a` to `b`, confirmed by a keepalive.
    fn established(now_ms: u64) -> Self {
        let pair = Self::new();
        let init = pair.a.remote.keepalive().expect("an initiation").1;
        // The core confirms the session with a keepalive, then sends the
        // keepalive that started it, which waited.
        let opened = pair.handshake(&init, now_ms);
        assert!(
            matches!(opened[..], [Opened::Keepalive, Opened::Keepalive]),
            "{opened:?}"
        );
        pair
    }
}

/// An IPv4 UDP packet from `src` to `dst` carrying `payload`.
fn ip_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    testkit::ipv4_udp(src, dst, 7777, payload)
}

fn data(pair_side: &Side, packet: &[u8], now_ms: u64) -> Vec<u8> {
    match pair_side.seal(packet, now_ms) {
        Sealed::Data(message) => pair_side.send(&message, now_ms),
        Sealed::Initiation(_) => panic!("sealing started a handshake"),
        Sealed::Queued => panic!("sealing queued the packet"),
    }
}

fn opened_packet(d: Delivered) -> Option<Vec<u8>> {
    match d {
        Delivered::Opened(Opened::Packet(p)) => Some(p.to_vec()),
        _ => None,
    }
}

#[test]
fn the_first_packet_waits_for_the_handshake_and_arrives_whole_after_it() {
    let pair = Pair::new();
    let packet = ip_packet(A_INNER, B_INNER, b"hello over the wire");
    let Sealed::Initiation(init) = pair.a.seal(&packet, 1) else {
        panic!("no session yet: the packet must start a handshake");
    };
    let opened = pair.handshake(&init, 1);
    let delivered: Vec<&Packet> = opened
        .iter()
        .filter_map(|o| match o {
            Opened::Packet(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(delivered.len(), 1, "{opened:?}");
    // Padded to 16 bytes on the wire; cut back to the IP length here.
    assert_eq!(&delivered[0][..], &packet[..]);
    assert_eq!(pair.b.remote.reachability(), Reachability::Reachable);
    assert_eq!(pair.a.remote.reachability(), Reachability::Reachable);
    let (b_rx, _) = pair.b.remote.transfer();
    let (_, a_tx) = pair.a.remote.transfer();
    assert_eq!(b_rx, a_tx, "b counted every byte a sent");
    assert!(pair.b.remote.last_handshake().is_some());
}

#[test]
fn a_source_the_peer_does_not_own_is_dropped_and_does_not_move_the_endpoint() {
    let pair = Pair::established(1);
    let elsewhere: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    let (rx_before, _) = pair.b.remote.transfer();
    let spoofed = ip_packet(Ipv4Addr::new(10, 9, 9, 9), B_INNER, b"not yours");
    let message = data(&pair.a, &spoofed, 2);
    assert!(matches!(
        pair.b.deliver(&message, elsewhere),
        Delivered::Opened(Opened::Dropped)
    ));
    assert_eq!(pair.b.remote.endpoint(), Some(pair.a.addr));
    assert_eq!(pair.b.remote.transfer().0, rx_before, "not counted");
    // The same peer from the new address with a source it owns: it roamed.
    let packet = ip_packet(A_INNER, B_INNER, b"moved");
    let message = data(&pair.a, &packet, 3);
    assert_eq!(
        opened_packet(pair.b.deliver(&message, elsewhere)),
        Some(packet)
    );
    assert_eq!(pair.b.remote.endpoint(), Some(elsewhere));
}

#[test]
fn decrypted_data_that_is_not_one_ip_packet_is_dropped() {
    let pair = Pair::established(1);
    let mut truncated = ip_packet(A_INNER, B_INNER, b"claims more than it has");
    truncated[2..4].copy_from_slice(&400u16.to_be_bytes());
    let message = data(&pair.a, &truncated, 2);
    assert!(matches!(
        pair.b.deliver(&message, pair.a.addr),
        Delivered::Opened(Opened::Dropped)
    ));
    let not_ip = vec![0x20u8; 40];
    let message = data(&pair.a, &not_ip, 3);
    assert!(matches!(
        pair.b.deliver(&message, pair.a.addr),
        Delivered::Opened(Opened::Dropped)
    ));
}

#[test]
fn a_replayed_or_altered_data_message_is_dropped() {
    let pair = Pair::established(1);
    let packet = ip_packet(A_INNER, B_INNER, b"once");
    let message = data(&pair.a, &packet, 2);
    let mut altered = message.clone();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    assert!(matches!(
        pair.b.deliver(&altered, pair.a.addr),
        Delivered::Opened(Opened::Dropped)
    ));
    assert_eq!(
        opened_packet(pair.b.deliver(&message, pair.a.addr)),
        Some(packet)
    );
    assert!(matches!(
        pair.b.deliver(&message, pair.a.addr),
        Delivered::Opened(Opened::Dropped)
    ));
}

#[test]
fn a_message_sealed_before_a_rekey_still_opens_after_it() {
    let pair = Pair::established(1);
    let old = ip_packet(A_INNER, B_INNER, b"sealed with the first session");
    let late = data(&pair.a, &old, 2);
    // A silent second (the message above was "lost" for now) prompts a new
    // handshake: a recovery, which is also a rekey.
    let tick = pair.a.remote.tick(2 + RECOVER_FIRST_MS);
    let [init] = &tick.messages[..] else {
        panic!("one initiation expected, got {}", tick.messages.len());
    };
    assert_eq!(init[0], 1, "a handshake initiation");
    let opened = pair.handshake(init, 2 + RECOVER_FIRST_MS);
    assert!(matches!(opened[..], [Opened::Keepalive]), "{opened:?}");
    let fresh = ip_packet(A_INNER, B_INNER, b"sealed with the second");
    let message = data(&pair.a, &fresh, 1500);
    assert_eq!(
        opened_packet(pair.b.deliver(&message, pair.a.addr)),
        Some(fresh)
    );
    // The previous session is kept for messages still in flight.
    assert_eq!(opened_packet(pair.b.deliver(&late, pair.a.addr)), Some(old));
}

#[test]
fn a_peer_that_lost_the_session_is_prompted_after_a_second_of_silence() {
    let pair = Pair::established(1);
    // b restarts: the same key, no session.
    pair.b.restart();
    let packet = ip_packet(A_INNER, B_INNER, b"into the void");
    let message = data(&pair.a, &packet, 10_000);
    assert!(matches!(
        pair.b.deliver(&message, pair.a.addr),
        Delivered::Opened(Opened::Dropped)
    ));
    assert!(
        pair.a
            .remote
            .tick(10_000 + RECOVER_FIRST_MS - 1)
            .messages
            .is_empty(),
        "not before a second"
    );
    let tick = pair.a.remote.tick(10_000 + RECOVER_FIRST_MS);
    let [init] = &tick.messages[..] else {
        panic!("a silent session must prompt one initiation");
    };
    let opened = pair.handshake(init, 11_000);
    assert!(matches!(opened[..], [Opened::Keepalive]), "{opened:?}");
    let message = data(&pair.a, &packet, 11_100);
    assert_eq!(
        opened_packet(pair.b.deliver(&message, pair.a.addr)),
        Some(packet)
    );
}

#[test]
fn queued_data_repeats_an_unanswered_initiation_with_back_off() {
    let pair = Pair::new();
    let packet = ip_packet(A_INNER, B_INNER, b"anyone there?");
    // When each packet is sealed, and whether it sends an initiation: the
    // waits are 1, 2, 4, then 5 s (the protocol's own retry time).
    let schedule = [
        (1, true),
        (500, false),
        (1_001, true),
        (2_500, false),
        (3_001, true),
        (7_000, false),
        (7_001, true),
        (12_000, false),
        (12_001, true),
        (17_001, true),
    ];
    for (now, initiates) in schedule {
        match pair.a.seal(&packet, now) {
            Sealed::Initiation(init) => {
                assert!(initiates, "an initiation at {now} ms");
                pair.a.send(&init, now);
            }
            Sealed::Queued => assert!(!initiates, "no initiation at {now} ms"),
            Sealed::Data(_) => panic!("no session, yet data"),
        }
    }
}

#[test]
fn unanswered_initiations_make_the_peer_unreachable_once_and_an_answer_undoes_it() {
    let pair = Pair::new();
    let init = pair.a.remote.keepalive().expect("an initiation").1;
    pair.a.send(&init, 1);
    assert!(!pair.a.remote.tick(UNREACHABLE_AFTER_MS).became_unreachable);
    assert!(
        pair.a
            .remote
            .tick(UNREACHABLE_AFTER_MS + 1)
            .became_unreachable
    );
    assert!(
        !pair
            .a
            .remote
            .tick(UNREACHABLE_AFTER_MS + 500)
            .became_unreachable,
        "reported once"
    );
    assert_eq!(pair.a.remote.reachability(), Reachability::Unreachable);
    // b comes up and the next initiation is answered.
    let init = match pair.a.seal(&ip_packet(A_INNER, B_INNER, b"x"), 7_000) {
        Sealed::Initiation(init) => init,
        _ => panic!("the queued packet must repeat the initiation"),
    };
    let opened = pair.handshake(&init, 7_000);
    assert!(
        opened.iter().any(|o| matches!(o, Opened::Packet(_))),
        "{opened:?}"
    );
    assert_eq!(pair.a.remote.reachability(), Reachability::Reachable);
}

#[test]
fn a_persistent_keepalive_goes_out_after_its_interval_of_silence() {
    let pair = Pair::established(1);
    pair.a.remote.set_persistent_keepalive(25);
    // The last send was the keepalive confirming the session, at 1 ms.
    assert!(pair.a.remote.tick(25_000).messages.is_empty());
    let tick = pair.a.remote.tick(25_001);
    let [keepalive] = &tick.messages[..] else {
        panic!("one keepalive expected, got {}", tick.messages.len());
    };
    assert_eq!(
        keepalive.len(),
        wire::DATA_OVERHEAD,
        "an empty data message"
    );
    let bytes = pair.a.send(keepalive, 25_001);
    assert!(matches!(
        pair.b.deliver(&bytes, pair.a.addr),
        Delivered::Opened(Opened::Keepalive)
    ));
    assert!(
        pair.a.remote.tick(26_000).messages.is_empty(),
        "the interval starts again at the keepalive"
    );
    // Without an endpoint there is no one to keep alive.
    let lost = Peer::new(pair.b.remote.public_key, None);
    lost.set_persistent_keepalive(1);
    assert!(lost.tick(60_000).messages.is_empty());
}

#[test]
fn under_load_a_cookie_is_asked_for_and_its_reply_moves_nothing() {
    let mut pair = Pair::new();
    pair.b.under_load = true;
    let init = pair.a.remote.keepalive().expect("an initiation").1;
    let init = pair.a.send(&init, 1);
    let Delivered::Replies(replies) = pair.b.deliver(&init, pair.a.addr) else {
        panic!("an initiation is a handshake message");
    };
    let [cookie] = &replies[..] else {
        panic!("b under load answers with a cookie reply only");
    };
    assert_eq!(cookie[0], 3, "a cookie reply");
    assert_eq!(pair.b.remote.endpoint(), Some(pair.a.addr), "as configured");
    // The cookie reply comes from somewhere else: anyone who saw the
    // initiation could have sent it, so it neither moves a's endpoint nor
    // counts as an answer.
    let elsewhere: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    pair.a.deliver(cookie, elsewhere);
    assert_eq!(pair.a.remote.endpoint(), Some(pair.b.addr));
    assert_eq!(pair.a.remote.reachability(), Reachability::Unknown);
    assert_eq!(pair.a.remote.transfer().0, 0);
    // a's next initiation carries the cookie (mac2) and gets through.
    let retry = match pair.a.seal(&ip_packet(A_INNER, B_INNER, b"x"), 1_001) {
        Sealed::Initiation(init) => init,
        _ => panic!("the queued packet must repeat the initiation"),
    };
    let opened = pair.handshake(&retry, 1_001);
    assert!(
        opened.iter().any(|o| matches!(o, Opened::Packet(_))),
        "{opened:?}"
    );
}
