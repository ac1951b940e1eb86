//! WireGuard messages at the edge of the protocol core: what a datagram is
//! (by type, reserved bytes and exact length) before anything is looked up,
//! what a decrypted payload is (one whole IP packet, its padding cut off),
//! how much padding a payload gets, and the buffers the core's messages live
//! in.

use crate::offload::{address_at, address_ranges};
use crate::shared::Shared;
use gotatun::packet::{Packet, PacketBufPool};
use gotatun::tun::MtuWatcher;
use std::net::IpAddr;

/// The four message types (WireGuard paper, 5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    HandshakeInit,
    HandshakeResponse,
    CookieReply,
    Data,
}

pub const HANDSHAKE_INIT_LEN: usize = 148;
pub const HANDSHAKE_RESPONSE_LEN: usize = 92;
pub const COOKIE_REPLY_LEN: usize = 64;
/// A data message's header (16) and AEAD tag (16): an empty one (keepalive)
/// is exactly this long.
pub const DATA_OVERHEAD: usize = 32;

/// The type of a datagram that is well formed on its face: a known type,
/// three zero reserved bytes, and the length that type has (data: at least
/// the overhead, and a whole number of 16-byte blocks when the sender pads,
/// which is not required of it, so not checked).
pub fn message_type(datagram: &[u8]) -> Option<MessageType> {
    if datagram.len() < 4 || datagram[1..4] != [0, 0, 0] {
        return None;
    }
    let (kind, fits) = match datagram[0] {
        1 => (
            MessageType::HandshakeInit,
            datagram.len() == HANDSHAKE_INIT_LEN,
        ),
        2 => (
            MessageType::HandshakeResponse,
            datagram.len() == HANDSHAKE_RESPONSE_LEN,
        ),
        3 => (MessageType::CookieReply, datagram.len() == COOKIE_REPLY_LEN),
        4 => (MessageType::Data, datagram.len() >= DATA_OVERHEAD),
        _ => return None,
    };
    fits.then_some(kind)
}

/// The receiver index of a data message or cookie reply.
pub fn receiver_index(datagram: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(datagram.get(4..8)?.try_into().ok()?))
}

/// A decrypted payload's IP packet: its source and its length by its own
/// header (what follows is padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerPacket {
    pub source: IpAddr,
    pub len: usize,
}

/// Reads the IP packet at the start of a decrypted payload; `None` for
/// anything that is not one whole IPv4 or IPv6 packet.
pub fn inner_packet(plain: &[u8]) -> Option<InnerPacket> {
    let be16 = |at: usize| Some(u16::from_be_bytes(plain.get(at..at + 2)?.try_into().ok()?));
    match plain.first()? >> 4 {
        4 => {
            let len = usize::from(be16(2)?);
            let header = usize::from(plain[0] & 0x0f) * 4;
            if header < 20 || len < header || len > plain.len() {
                return None;
            }
            Some(InnerPacket {
                source: address_at(plain, address_ranges(false).0)?,
                len,
            })
        }
        6 => {
            let len = 40 + usize::from(be16(4)?);
            if len > plain.len() {
                return None;
            }
            Some(InnerPacket {
                source: address_at(plain, address_ranges(true).0)?,
                len,
            })
        }
        _ => None,
    }
}

/// The destination of an IP packet (what cryptokey routing looks up), if it
/// is long enough to have one.
pub fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => address_at(packet, address_ranges(false).1),
        6 => address_at(packet, address_ranges(true).1),
        _ => None,
    }
}

/// The length a payload of `len` bytes is padded to before it is sealed:
/// the next multiple of 16 (WireGuard paper, 5.4.6), but never past the
/// TUN's MTU, so a full-sized packet still fits the path (`mtu` 0: unknown,
/// no cap). An empty payload (a keepalive) stays empty.
pub fn padded_len(len: usize, mtu: u16) -> usize {
    let padded = len.next_multiple_of(16);
    if mtu == 0 {
        padded
    } else {
        padded.min(usize::from(mtu)).max(len)
    }
}

/// The size of the buffers a worker reuses; a larger message (a jumbo MTU
/// past this) gets a buffer of its own.
const BUFFER: usize = 16 * 1024;

/// A worker's reusable message buffers: a message handed to the core lives
/// in one, and goes back when the core is done with it, so the steady path
/// allocates nothing of ours.
pub struct PacketBuffers {
    pool: PacketBufPool<BUFFER>,
}

impl Default for PacketBuffers {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketBuffers {
    pub fn new() -> Self {
        Self {
            pool: PacketBufPool::new(2),
        }
    }

    /// `bytes` copied into a buffer.
    pub fn packet(&self, bytes: &[u8]) -> Packet {
        self.padded(bytes, bytes.len())
    }

    /// `bytes` copied into a buffer and padded with zeros to `len`.
    pub fn padded(&self, bytes: &[u8], len: usize) -> Packet {
        let len = len.max(bytes.len());
        let mut packet = if len <= BUFFER {
            self.pool.get()
        } else {
            Packet::from_bytes(bytes::BytesMut::zeroed(len))
        };
        let buf = packet.buf_mut();
        buf.truncate(len);
        buf[..bytes.len()].copy_from_slice(bytes);
        buf[bytes.len()..].fill(0);
        packet
    }
}

/// The core pads what it sends of its own (queued packets) to the TUN's MTU.
pub(crate) fn mtu_watcher(shared: &Shared) -> MtuWatcher {
    MtuWatcher::new(shared.tun_mtu())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn message_types_need_zero_reserved_bytes_and_their_exact_length() {
        let msg = |t: u8, len: usize| {
            let mut m = vec![0u8; len];
            m[0] = t;
            m
        };
        assert_eq!(message_type(&msg(1, 148)), Some(MessageType::HandshakeInit));
        assert_eq!(message_type(&msg(1, 147)), None);
        assert_eq!(message_type(&msg(1, 149)), None);
        assert_eq!(
            message_type(&msg(2, 92)),
            Some(MessageType::HandshakeResponse)
        );
        assert_eq!(message_type(&msg(2, 148)), None);
        assert_eq!(message_type(&msg(3, 64)), Some(MessageType::CookieReply));
        assert_eq!(message_type(&msg(3, 65)), None);
        assert_eq!(message_type(&msg(4, 32)), Some(MessageType::Data));
        assert_eq!(message_type(&msg(4, 31)), None);
        assert_eq!(message_type(&msg(5, 148)), None);
        assert_eq!(message_type(&msg(0, 148)), None);
        let mut reserved = msg(4, 64);
        reserved[2] = 1;
        assert_eq!(message_type(&reserved), None);
        assert_eq!(message_type(&[4, 0, 0]), None);
        assert_eq!(message_type(&[]), None);
    }

    #[test]
    fn padding_rounds_up_to_16_and_stops_at_the_mtu() {
        assert_eq!(padded_len(0, 1420), 0, "a keepalive stays empty");
        assert_eq!(padded_len(1, 1420), 16);
        assert_eq!(padded_len(16, 1420), 16);
        assert_eq!(padded_len(84, 1420), 96);
        assert_eq!(padded_len(1419, 1420), 1420, "capped at the MTU");
        assert_eq!(padded_len(1420, 1420), 1420);
        assert_eq!(padded_len(1412, 1420), 1420);
        assert_eq!(
            padded_len(1500, 1420),
            1500,
            "never shorter than the packet"
        );
        assert_eq!(padded_len(1419, 0), 1424, "no MTU known: no cap");
        for len in 1..3000 {
            let p = padded_len(len, 1420);
            assert!(p >= len && (p % 16 == 0 || p == 1420 || p == len));
        }
    }

    fn ipv4(total: u16, src: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; usize::from(total)];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[12..16].copy_from_slice(&src);
        p
    }

    #[test]
    fn the_inner_packet_is_read_by_its_own_header_and_padding_is_cut() {
        let mut p = ipv4(84, [10, 4, 0, 2]);
        p.resize(96, 0);
        assert_eq!(
            inner_packet(&p),
            Some(InnerPacket {
                source: IpAddr::V4(Ipv4Addr::new(10, 4, 0, 2)),
                len: 84
            })
        );
        let mut v6 = vec![0u8; 40 + 8];
        v6[0] = 0x60;
        v6[4..6].copy_from_slice(&8u16.to_be_bytes());
        v6[8..24].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.resize(64, 0);
        assert_eq!(
            inner_packet(&v6),
            Some(InnerPacket {
                source: IpAddr::V6(Ipv6Addr::LOCALHOST),
                len: 48
            })
        );
    }

    #[test]
    fn anything_but_one_whole_ip_packet_is_refused() {
        let p = ipv4(84, [10, 4, 0, 2]);
        assert_eq!(inner_packet(&p[..83]), None, "shorter than it says");
        assert_eq!(inner_packet(&p[..19]), None);
        let mut bad = p.clone();
        bad[0] = 0x44; // header of 16 bytes
        assert_eq!(inner_packet(&bad), None);
        let mut bad = p.clone();
        bad[2..4].copy_from_slice(&10u16.to_be_bytes()); // shorter than its header
        assert_eq!(inner_packet(&bad), None);
        bad[0] = 0x55; // version 5
        assert_eq!(inner_packet(&bad), None);
        assert_eq!(inner_packet(&[]), None);
        assert_eq!(inner_packet(&[0x60; 39]), None);
    }

    #[test]
    fn buffers_hold_the_bytes_and_the_zero_padding() {
        let b = PacketBuffers::new();
        for round in 0..3 {
            let p = b.padded(&[7u8; 5], 16);
            assert_eq!(
                &p[..],
                &[7, 7, 7, 7, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                "{round}"
            );
        }
        let big = b.padded(&vec![1u8; BUFFER + 1], BUFFER + 8);
        assert_eq!(big.len(), BUFFER + 8);
        assert_eq!(big[BUFFER], 1);
        assert_eq!(big[BUFFER + 1], 0);
    }
}
