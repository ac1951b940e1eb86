//! Segmentation and coalescing: what the kernel's TSO super-packets become on
//! the way out and what decrypted segments become on the way in.
//!
//! On the way out, [`Segments`] cuts a super-packet into MTU-sized packets in
//! place, in the buffer the TUN read filled: each segment's headers are
//! written over the tail of the segment before it, which has been sealed by
//! then. So a segment costs a header's worth of copying and its checksum, not
//! a copy of its payload (it is copied once, into the sealing buffer).
//! On the way in, [`crate::coalesce`] rebuilds super-packets.
//!
//! tun-rs's copying split ([`split_super_packet`]) and coalescing
//! ([`coalesce`]), ports of wireguard-go's offload code, are kept as the
//! reference the tests check against and the baseline the benchmarks compare
//! with. This module is also the one place that knows the virtio-net header
//! layout and the header arithmetic, and has the packet builders the tests
//! and benchmarks use.

use std::io;
use tun_rs::{GROTable, VirtioNetHdr, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_LEN};

pub use tun_rs::VIRTIO_NET_HDR_LEN as VNET_HDR_LEN;

pub(crate) const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
pub(crate) const GSO_TCPV4: u8 = 1;
pub(crate) const GSO_UDP_L4: u8 = 5;
pub(crate) const GSO_TCPV6: u8 = 4;
/// Set with a TCP GSO type when the flow uses ECN; the segments are cut the
/// same way (CWR only on the first).
const GSO_ECN: u8 = 0x80;
/// Room for the IP and transport headers a segment repeats: IPv6 with
/// extension headers and TCP with options fit with room to spare.
const MAX_HEADERS: usize = 256;
pub(crate) const PROTO_TCP: u8 = 6;
pub(crate) const PROTO_UDP: u8 = 17;

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Udp,
}

/// The packets of one TUN read, cut out in place one at a time.
///
/// A read is an IP packet, behind a virtio-net header when offload is on.
/// Without segmentation it is one packet, whose checksum is completed if
/// the kernel left that to us; with it, the payload is cut into `gso_size`
/// pieces, each behind a copy of the headers with its own lengths, IPv4 ID,
/// TCP sequence number and flags, and checksums, as the kernel's own
/// segmentation would have made them.
pub struct Segments<'a> {
    packet: &'a mut [u8],
    transport: Option<Transport>,
    v6: bool,
    /// Where the transport header starts.
    l4: usize,
    /// Length of the IP and transport headers.
    hdr_len: usize,
    gso_size: usize,
    count: usize,
    next: usize,
    template: [u8; MAX_HEADERS],
}

impl<'a> Segments<'a> {
    /// Parses a read; `vnet_header` says whether it starts with a
    /// virtio-net header. Malformed reads are an error, never a panic.
    pub fn new(read: &'a mut [u8], vnet_header: bool) -> io::Result<Self> {
        let plain = |packet: &'a mut [u8]| Segments {
            packet,
            transport: None,
            v6: false,
            l4: 0,
            hdr_len: 0,
            gso_size: 0,
            count: 1,
            next: 0,
            template: [0; MAX_HEADERS],
        };
        if !vnet_header {
            return Ok(plain(read));
        }
        if read.len() <= VIRTIO_NET_HDR_LEN {
            return Err(invalid("no packet after the virtio-net header"));
        }
        let hdr = VirtioNetHdr::decode(&read[..VIRTIO_NET_HDR_LEN])?;
        let packet = &mut read[VIRTIO_NET_HDR_LEN..];
        let gso_type = hdr.gso_type & !GSO_ECN;
        if gso_type == GSO_NONE {
            if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
                complete_checksum(packet, hdr.csum_start.into(), hdr.csum_offset.into())?;
            }
            return Ok(plain(packet));
        }
        let transport = match gso_type {
            GSO_TCPV4 | GSO_TCPV6 => Transport::Tcp,
            GSO_UDP_L4 => Transport::Udp,
            _ => return Err(invalid("unknown GSO type")),
        };
        let v6 = match packet[0] >> 4 {
            4 if gso_type != GSO_TCPV6 => false,
            6 if gso_type != GSO_TCPV4 => true,
            _ => return Err(invalid("IP version does not match the GSO type")),
        };
        // The transport header starts where the checksum is to be computed
        // from; that also steps over any IPv6 extension headers.
        let l4 = usize::from(hdr.csum_start);
        let min_ip = if v6 { 40 } else { 20 };
        if l4 < min_ip || (!v6 && l4 != usize::from(packet[0] & 0x0f) * 4) {
            return Err(invalid("bad transport header offset"));
        }
        let l4_len = match transport {
            Transport::Tcp => {
                let doff = packet
                    .get(l4 + 12)
                    .ok_or_else(|| invalid("short TCP header"))?;
                usize::from(doff >> 4) * 4
            }
            Transport::Udp => 8,
        };
        let hdr_len = l4 + l4_len;
        let min_l4 = if transport == Transport::Tcp { 20 } else { 8 };
        if l4_len < min_l4 || hdr_len > MAX_HEADERS || hdr_len > packet.len() {
            return Err(invalid("bad transport header"));
        }
        let gso_size = usize::from(hdr.gso_size);
        if gso_size == 0 {
            return Err(invalid("GSO size 0"));
        }
        let payload = packet.len() - hdr_len;
        let mut template = [0u8; MAX_HEADERS];
        template[..hdr_len].copy_from_slice(&packet[..hdr_len]);
        Ok(Segments {
            packet,
            transport: Some(transport),
            v6,
            l4,
            hdr_len,
            gso_size,
            count: payload.div_ceil(gso_size).max(1),
            next: 0,
            template,
        })
    }

    /// How many packets the read holds.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The next packet, ready to send. Writing it overwrites the end of the
    /// one before, so each is only valid until the next call.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<&[u8]> {
        if self.next == self.count {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let Some(transport) = self.transport else {
            return Some(self.packet);
        };
        let (hdr_len, l4) = (self.hdr_len, self.l4);
        let start = i * self.gso_size;
        let payload = (self.packet.len() - hdr_len - start).min(self.gso_size);
        let last = i + 1 == self.count;
        let seg = &mut self.packet[start..start + hdr_len + payload];
        if i > 0 {
            seg[..hdr_len].copy_from_slice(&self.template[..hdr_len]);
        }
        let total = hdr_len + payload;
        if self.v6 {
            put_u16(seg, 4, (total - 40) as u16);
        } else {
            put_u16(seg, 2, total as u16);
            let id = u16::from_be_bytes([seg[4], seg[5]]).wrapping_add(i as u16);
            put_u16(seg, 4, id);
            set_ipv4_header_checksum(seg, l4);
        }
        let l4_total = (total - l4) as u16;
        let csum_at = match transport {
            Transport::Tcp => {
                let seq = u32::from_be_bytes([seg[l4 + 4], seg[l4 + 5], seg[l4 + 6], seg[l4 + 7]])
                    .wrapping_add((i * self.gso_size) as u32);
                seg[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
                // FIN and PSH belong to the last segment, CWR to the first.
                if !last {
                    seg[l4 + 13] &= !(0x01 | 0x08);
                }
                if i > 0 {
                    seg[l4 + 13] &= !0x80;
                }
                l4 + 16
            }
            Transport::Udp => {
                put_u16(seg, l4 + 4, l4_total);
                l4 + 6
            }
        };
        put_u16(seg, csum_at, 0);
        let proto = if transport == Transport::Tcp {
            PROTO_TCP
        } else {
            PROTO_UDP
        };
        let pseudo = pseudo_header_sum(seg, self.v6, proto, usize::from(l4_total));
        let sum = transport_checksum(&seg[l4..], pseudo, transport == Transport::Udp);
        put_u16(seg, csum_at, sum);
        Some(seg)
    }
}

pub(crate) fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Recomputes the header checksum of the IPv4 header `p[..ihl]`.
pub(crate) fn set_ipv4_header_checksum(p: &mut [u8], ihl: usize) {
    put_u16(p, 10, 0);
    let sum = !tun_rs::checksum(&p[..ihl], 0);
    put_u16(p, 10, sum);
}

/// Where an IP header holds its source and destination addresses.
pub(crate) fn address_ranges(v6: bool) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    if v6 {
        (8..24, 24..40)
    } else {
        (12..16, 16..20)
    }
}

/// The address at `range` (one of [`address_ranges`]) of IP packet `p`, if
/// the packet is long enough to hold it.
pub(crate) fn address_at(p: &[u8], range: std::ops::Range<usize>) -> Option<std::net::IpAddr> {
    let bytes = p.get(range)?;
    Some(match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok()?.into(),
        _ => <[u8; 16]>::try_from(bytes).ok()?.into(),
    })
}

/// The unfolded sum of the transport pseudo-header of IP packet `p`: its
/// addresses, protocol `proto` and transport length `len`.
pub(crate) fn pseudo_header_sum(p: &[u8], v6: bool, proto: u8, len: usize) -> u64 {
    let (src, dst) = address_ranges(v6);
    let sum = tun_rs::checksum_no_fold(&p[src], 0);
    tun_rs::checksum_no_fold(&p[dst], sum) + u64::from(proto) + len as u64
}

/// Completes a checksum the kernel left to the device: the field holds the
/// pseudo-header sum, and the sum runs from `start` to the end.
fn complete_checksum(packet: &mut [u8], start: usize, offset: usize) -> io::Result<()> {
    let at = start + offset;
    if at + 2 > packet.len() {
        return Err(invalid("checksum offset beyond the packet"));
    }
    // The UDP checksum field is 6 bytes into its header, TCP's 16.
    let sum = transport_checksum(&packet[start..], 0, offset == 6);
    put_u16(packet, at, sum);
    Ok(())
}

/// The checksum of a transport header and payload, `initial` holding the
/// pseudo-header's sum. A UDP checksum that comes out 0 is sent as all
/// ones, since 0 means none.
fn transport_checksum(data: &[u8], initial: u64, udp: bool) -> u16 {
    match !tun_rs::checksum(data, initial) {
        0 if udp => 0xffff,
        sum => sum,
    }
}

/// Splits `input` (a virtio-net header followed by a TSO super-packet) into
/// MTU-sized packets, one per buffer of `out` at `offset`; returns the count.
/// This is tun-rs's copying split, kept to check [`Segments`] against and to
/// compare the two in the benchmarks.
pub fn split_super_packet(
    input: &mut [u8],
    out: &mut [Vec<u8>],
    sizes: &mut [usize],
    offset: usize,
) -> io::Result<usize> {
    if input.len() <= VIRTIO_NET_HDR_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no packet after the header",
        ));
    }
    let mut hdr = VirtioNetHdr::decode(&input[..VIRTIO_NET_HDR_LEN])?;
    let packet = &mut input[VIRTIO_NET_HDR_LEN..];
    let is_v6 = packet.first().map(|b| b >> 4) == Some(6);
    // The kernel's hdr_len is the linear part, which may hold payload too:
    // the headers' length comes from the transport header, as tun-rs's own
    // read path does before it splits.
    let l4 = usize::from(hdr.csum_start);
    hdr.hdr_len = match hdr.gso_type & !GSO_ECN {
        GSO_UDP_L4 => hdr.csum_start + 8,
        _ => {
            let doff = packet
                .get(l4 + 12)
                .ok_or_else(|| invalid("short TCP header"))?;
            hdr.csum_start + u16::from(doff >> 4) * 4
        }
    };
    tun_rs::gso_split(packet, hdr, out, sizes, offset, is_v6)
}

/// Coalesces packets (each behind `VNET_HDR_LEN` bytes of header room) of the
/// same TCP flow in place, as tun-rs does (and the TUN write path did before
/// [`crate::coalesce`]): the first buffer of a run grows into a super-packet
/// with a GSO header, the rest are copied onto it.
pub fn coalesce(bufs: &mut [Vec<u8>], table: &mut GROTable) -> io::Result<()> {
    table.apply_gro(bufs, VIRTIO_NET_HDR_LEN, false)
}

/// The virtio-net header of a buffer.
pub fn header(buf: &[u8]) -> io::Result<VirtioNetHdr> {
    VirtioNetHdr::decode(buf)
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn sum16(data: &[u8]) -> u64 {
    data.chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// An IPv4/TCP packet of flow 10.0.0.1:40000 -> 10.0.0.2:5201 with sequence
/// number `seq` and a payload of `payload_len` bytes whose byte i is
/// `(seq + i) as u8`, so a reassembled stream can be checked byte for byte.
/// `full_checksum` computes the TCP checksum; otherwise only the pseudo-header
/// sum is stored, as the kernel leaves it for checksum offload.
pub fn ipv4_tcp_packet(seq: u32, payload_len: usize, psh: bool, full_checksum: bool) -> Vec<u8> {
    let total = 20 + 20 + payload_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let ip_csum = !fold(sum16(&p[..20]));
    p[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&1u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x10 | if psh { 0x08 } else { 0 };
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    for (i, b) in t[20..].iter_mut().enumerate() {
        *b = seq.wrapping_add(i as u32) as u8;
    }
    let tcp_len = (20 + payload_len) as u64;
    let pseudo = sum16(&[10, 0, 0, 1, 10, 0, 0, 2]) + 6 + tcp_len;
    let csum = if full_checksum {
        !fold(pseudo + sum16(&p[20..]))
    } else {
        fold(pseudo)
    };
    p[36..38].copy_from_slice(&csum.to_be_bytes());
    p
}

/// A virtio-net header plus a TSO super-packet of `payload_len` bytes to be
/// cut into `mss`-byte segments, as the kernel hands one to a TUN reader.
pub fn tso_super_packet(seq: u32, payload_len: usize, mss: u16) -> Vec<u8> {
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 40,
        gso_size: mss,
        csum_start: 20,
        csum_offset: 16,
    };
    let mut out = vec![0u8; VIRTIO_NET_HDR_LEN];
    // encode only fails for a short buffer, and this one is exactly long enough.
    let _ = hdr.encode(&mut out);
    out.extend(ipv4_tcp_packet(seq, payload_len, true, false));
    out
}

/// Packets for the tests of this module and of [`crate::coalesce`].
#[cfg(test)]
pub(crate) mod test_packets {
    use super::{address_ranges, fold, put_u16, sum16, PROTO_TCP, PROTO_UDP};

    /// A complete packet with valid checksums: IPv4 (ID `id`) or IPv6, TCP
    /// (timestamps option, `flags`) or UDP, from port `sport`.
    pub(crate) fn build(
        v6: bool,
        udp: bool,
        sport: u16,
        id: u16,
        seq: u32,
        payload: usize,
        flags: u8,
    ) -> Vec<u8> {
        let l4 = if v6 { 40 } else { 20 };
        let l4_len = if udp { 8 } else { 32 };
        let total = l4 + l4_len + payload;
        let mut p = vec![0u8; total];
        let proto = if udp { PROTO_UDP } else { PROTO_TCP };
        if v6 {
            p[0] = 0x60;
            put_u16(&mut p, 4, (total - 40) as u16);
            p[6] = proto;
            p[7] = 64;
            p[8] = 0xfd;
            p[23] = 1;
            p[24] = 0xfd;
            p[39] = 2;
        } else {
            p[0] = 0x45;
            put_u16(&mut p, 2, total as u16);
            put_u16(&mut p, 4, id);
            p[6] = 0x40;
            p[8] = 64;
            p[9] = proto;
            p[12..16].copy_from_slice(&[10, 0, 0, 1]);
            p[16..20].copy_from_slice(&[10, 0, 0, 2]);
            let c = !fold(sum16(&p[..20]));
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let (src, dst) = address_ranges(v6);
        put_u16(&mut p, l4, sport);
        put_u16(&mut p, l4 + 2, 5201);
        let csum_at = if udp {
            put_u16(&mut p, l4 + 4, (l4_len + payload) as u16);
            l4 + 6
        } else {
            p[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
            p[l4 + 8..l4 + 12].copy_from_slice(&77u32.to_be_bytes());
            p[l4 + 12] = 8 << 4;
            p[l4 + 13] = flags;
            put_u16(&mut p, l4 + 14, 501);
            p[l4 + 20..l4 + 24].copy_from_slice(&[1, 1, 8, 10]);
            l4 + 16
        };
        for (i, b) in p[l4 + l4_len..].iter_mut().enumerate() {
            *b = seq.wrapping_add(i as u32).wrapping_mul(31) as u8;
        }
        let pseudo = sum16(&p[src]) + sum16(&p[dst]) + u64::from(proto) + (l4_len + payload) as u64;
        let c = !fold(pseudo + sum16(&p[l4..]));
        p[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// Whether a packet's IPv4 header and transport checksums verify.
    pub(crate) fn checksums_ok(p: &[u8]) -> bool {
        let v6 = p[0] >> 4 == 6;
        let (l4, proto) = if v6 {
            (40, p[6])
        } else {
            if fold(sum16(&p[..20])) != 0xffff {
                return false;
            }
            (20, p[9])
        };
        let (src, dst) = address_ranges(v6);
        let len = (p.len() - l4) as u64;
        let pseudo = sum16(&p[src]) + sum16(&p[dst]) + u64::from(proto) + len;
        fold(pseudo + sum16(&p[l4..])) == 0xffff
    }
}

#[cfg(test)]
mod tests {
    use super::test_packets::{build, checksums_ok};
    use super::*;

    fn tcp_payload(packet: &[u8]) -> &[u8] {
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        let doff = usize::from(packet[ihl + 12] >> 4) * 4;
        let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
        &packet[ihl + doff..total]
    }

    fn seq_of(packet: &[u8]) -> u32 {
        u32::from_be_bytes([packet[24], packet[25], packet[26], packet[27]])
    }

    fn tcp_checksum_ok(packet: &[u8]) -> bool {
        let tcp_len = (packet.len() - 20) as u64;
        let pseudo = sum16(&packet[12..20]) + 6 + tcp_len;
        fold(pseudo + sum16(&packet[20..])) == 0xffff
    }

    #[test]
    fn split_cuts_a_super_packet_into_valid_segments() {
        let mss = 1380u16;
        let payload = 64_000usize;
        let mut input = tso_super_packet(1000, payload, mss);
        let mut out = vec![vec![0u8; 2048]; 128];
        let mut sizes = vec![0usize; 128];
        let n = split_super_packet(&mut input, &mut out, &mut sizes, 0).unwrap();
        assert_eq!(n, payload.div_ceil(usize::from(mss)));
        let mut next_seq = 1000u32;
        let mut total = 0;
        for i in 0..n {
            let seg = &out[i][..sizes[i]];
            assert!(seg.len() <= 40 + usize::from(mss));
            assert_eq!(seq_of(seg), next_seq, "segment {i} sequence");
            assert!(tcp_checksum_ok(seg), "segment {i} checksum");
            let body = tcp_payload(seg);
            for (k, b) in body.iter().enumerate() {
                assert_eq!(*b, next_seq.wrapping_add(k as u32) as u8);
            }
            // Only the last segment keeps PSH.
            assert_eq!(seg[33] & 0x08 != 0, i == n - 1, "PSH on segment {i}");
            next_seq += body.len() as u32;
            total += body.len();
        }
        assert_eq!(total, payload);
    }

    /// A super-packet as the kernel hands it to a TUN reader: a virtio-net
    /// header asking for segmentation and one packet with all the payload,
    /// its transport checksum field holding only the pseudo-header sum.
    fn super_packet(v6: bool, udp: bool, payload: usize, gso: u16, tcp_flags: u8) -> Vec<u8> {
        let mut p = build(v6, udp, 40000, 0xfff0, 0xffff_fc00, payload, tcp_flags);
        let l4 = if v6 { 40 } else { 20 };
        let proto = if udp { PROTO_UDP } else { PROTO_TCP };
        let csum_at = l4 + if udp { 6 } else { 16 };
        let pseudo = pseudo_header_sum(&p, v6, proto, p.len() - l4);
        put_u16(&mut p, csum_at, fold(pseudo));
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: match (v6, udp) {
                (_, true) => GSO_UDP_L4,
                (false, false) => GSO_TCPV4,
                (true, false) => GSO_TCPV6,
            },
            // What the kernel reports: the whole linear part, not the headers.
            hdr_len: (csum_at + 2 + 100.min(payload)) as u16,
            gso_size: gso,
            csum_start: l4 as u16,
            csum_offset: (csum_at - l4) as u16,
        };
        let mut out = vec![0u8; VIRTIO_NET_HDR_LEN];
        let _ = hdr.encode(&mut out);
        out.extend(p);
        out
    }

    #[test]
    fn segments_match_the_kernel_semantics_of_tun_rs_split() {
        for (v6, udp) in [(false, false), (true, false), (false, true), (true, true)] {
            for gso in [1380u16, 1000, 7] {
                for payload in [1usize, 999, 1000, 1001, 1380, 2761, 20_000, 65_535 - 72] {
                    if payload / usize::from(gso) > 1000 {
                        continue;
                    }
                    let what = format!("v6 {v6} udp {udp} gso {gso} payload {payload}");
                    let read = super_packet(v6, udp, payload, gso, 0x18 | 0x01 | 0x80);
                    let mut copy = read.clone();
                    let mut out = vec![vec![0u8; 2048]; 1024];
                    let mut sizes = vec![0usize; 1024];
                    let n = split_super_packet(&mut copy, &mut out, &mut sizes, 0)
                        .unwrap_or_else(|e| panic!("{what}: tun-rs split: {e}"));
                    let mut read = read;
                    let mut segs = Segments::new(&mut read, true).expect(&what);
                    assert_eq!(segs.count(), n, "{what}: count");
                    let mut i = 0;
                    while let Some(seg) = segs.next() {
                        assert_eq!(seg, &out[i][..sizes[i]], "{what}: segment {i}");
                        assert!(checksums_ok(seg), "{what}: checksums of segment {i}");
                        if !udp {
                            let flags = seg[if v6 { 53 } else { 33 }];
                            assert_eq!(flags & 0x09 != 0, i + 1 == n, "{what}: PSH/FIN on {i}");
                            assert_eq!(flags & 0x80 != 0, i == 0, "{what}: CWR on {i}");
                        }
                        i += 1;
                    }
                    assert_eq!(i, n, "{what}: segments yielded");
                }
            }
        }
    }

    #[test]
    fn segments_complete_a_checksum_left_to_the_device() {
        let full = super_packet(false, false, 500, 1380, 0x18);
        let mut read = full.clone();
        // Not segmented: the kernel only asks for the checksum.
        read[1] = GSO_NONE;
        let mut segs = Segments::new(&mut read, true).unwrap();
        assert_eq!(segs.count(), 1);
        let p = segs.next().unwrap();
        assert_eq!(p.len(), full.len() - VIRTIO_NET_HDR_LEN);
        assert!(checksums_ok(p));
        assert!(segs.next().is_none());
        // Without a virtio header the read is the packet, untouched.
        let mut plain = full[VIRTIO_NET_HDR_LEN..].to_vec();
        let mut segs = Segments::new(&mut plain, false).unwrap();
        assert_eq!(segs.next().unwrap(), &full[VIRTIO_NET_HDR_LEN..]);
        assert!(segs.next().is_none());
    }

    #[test]
    fn segments_reject_malformed_reads_without_panicking() {
        let mut rand = crate::test_rng(11);
        let good = super_packet(false, false, 3000, 1380, 0x10);
        for round in 0..20_000 {
            let mut read = if round % 2 == 0 {
                // A valid read with a few bytes of the headers changed.
                let mut r = good.clone();
                for _ in 0..1 + rand() % 4 {
                    let at = (rand() as usize) % (VIRTIO_NET_HDR_LEN + 60);
                    r[at] = rand() as u8;
                }
                let keep = (rand() as usize) % (r.len() + 1);
                r.truncate(keep.max(round % 7));
                r
            } else {
                (0..rand() % 300).map(|_| rand() as u8).collect()
            };
            if let Ok(mut segs) = Segments::new(&mut read, true) {
                let count = segs.count();
                let mut n = 0;
                while segs.next().is_some() {
                    n += 1;
                }
                assert_eq!(n, count);
            }
        }
    }

    #[test]
    fn split_rejects_garbage_without_panicking() {
        let mut out = vec![vec![0u8; 2048]; 8];
        let mut sizes = vec![0usize; 8];
        let mut rand = crate::test_rng(7);
        for len in [0usize, 1, 9, 10, 11, 30, 60, 200, 3000] {
            for _ in 0..50 {
                let mut junk: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
                let _ = split_super_packet(&mut junk, &mut out, &mut sizes, 0);
            }
        }
    }

    #[test]
    fn coalesce_rebuilds_the_stream_from_segments() {
        let mss = 1380usize;
        let count = 40;
        let mut bufs: Vec<Vec<u8>> = (0..count)
            .map(|i| {
                let seq = 5000 + (i * mss) as u32;
                let mut b = vec![0u8; VNET_HDR_LEN];
                b.reserve(65_535);
                b.extend(ipv4_tcp_packet(seq, mss, i == count - 1, true));
                b
            })
            .collect();
        let mut table = GROTable::new();
        coalesce(&mut bufs, &mut table).unwrap();
        // All 40 segments (55 200 bytes) fit one super-packet in the first buffer.
        let hdr = header(&bufs[0]).unwrap();
        let packet = &bufs[0][VNET_HDR_LEN..];
        assert_eq!(hdr.gso_type, VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(usize::from(hdr.gso_size), mss);
        assert_eq!(seq_of(packet), 5000);
        let body = tcp_payload(packet);
        assert_eq!(body.len(), count * mss);
        for (k, b) in body.iter().enumerate() {
            assert_eq!(*b, 5000u32.wrapping_add(k as u32) as u8, "byte {k}");
        }
        // The last segment's PSH survives on the merged packet.
        assert_ne!(packet[33] & 0x08, 0);
    }

    #[test]
    fn coalesce_keeps_a_gap_apart() {
        let mss = 1000usize;
        // Segment 2 is missing: 0,1 | 3,4 must not merge across the hole.
        let mut bufs: Vec<Vec<u8>> = [0usize, 1, 3, 4]
            .iter()
            .map(|&i| {
                let mut b = vec![0u8; VNET_HDR_LEN];
                b.reserve(65_535);
                b.extend(ipv4_tcp_packet((i * mss) as u32, mss, false, true));
                b
            })
            .collect();
        let mut table = GROTable::new();
        coalesce(&mut bufs, &mut table).unwrap();
        let body0 = tcp_payload(&bufs[0][VNET_HDR_LEN..]).len();
        let body2 = tcp_payload(&bufs[2][VNET_HDR_LEN..]).len();
        assert_eq!(
            (body0, body2),
            (2 * mss, 2 * mss),
            "runs merged across the gap"
        );
        assert_eq!(seq_of(&bufs[2][VNET_HDR_LEN..]), (3 * mss) as u32);
    }
}
