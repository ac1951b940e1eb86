//! Segmentation and coalescing: what the kernel's TSO super-packets become on
//! the way out and what decrypted segments become on the way in.
//!
//! The split ([`split_super_packet`]) and the coalescing ([`coalesce`]) run in
//! tun-rs (a port of wireguard-go's offload code, which the kernel's virtio
//! semantics pin down closely); this module is our narrow interface to it, the
//! one place that knows the virtio-net header layout, and the packet builders
//! the tests and benchmarks use to drive it.

use std::io;
use tun_rs::{GROTable, VirtioNetHdr, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_LEN};

pub use tun_rs::VIRTIO_NET_HDR_LEN as VNET_HDR_LEN;

const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;

/// Splits `input` (a virtio-net header followed by a TSO super-packet) into
/// MTU-sized packets, one per buffer of `out` at `offset`; returns the count.
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
    let hdr = VirtioNetHdr::decode(&input[..VIRTIO_NET_HDR_LEN])?;
    let packet = &mut input[VIRTIO_NET_HDR_LEN..];
    let is_v6 = packet.first().map(|b| b >> 4) == Some(6);
    tun_rs::gso_split(packet, hdr, out, sizes, offset, is_v6)
}

/// Coalesces packets (each behind `VNET_HDR_LEN` bytes of header room) of the
/// same TCP flow in place, as the TUN write path does: the first buffer of a
/// run grows into a super-packet with a GSO header, the rest are absorbed.
pub fn coalesce(bufs: &mut [Vec<u8>], table: &mut GROTable) -> io::Result<()> {
    table.apply_gro(bufs, VIRTIO_NET_HDR_LEN, false)
}

/// The virtio-net header of a buffer.
pub fn header(buf: &[u8]) -> io::Result<VirtioNetHdr> {
    VirtioNetHdr::decode(buf)
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
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
    let tcp_len = (20 + payload_len) as u32;
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

#[cfg(test)]
mod tests {
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
        let tcp_len = (packet.len() - 20) as u32;
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

    #[test]
    fn split_rejects_garbage_without_panicking() {
        let mut out = vec![vec![0u8; 2048]; 8];
        let mut sizes = vec![0usize; 8];
        let mut seed = 7u64;
        for len in [0usize, 1, 9, 10, 11, 30, 60, 200, 3000] {
            for _ in 0..50 {
                let mut junk: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect();
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
