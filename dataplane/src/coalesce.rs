//! Decrypted packets on their way to the TUN: coalesced into super-packets,
//! mostly without being copied.
//!
//! The kernel takes one TUN write of a 64 KiB TCP super-packet (with a
//! virtio-net GSO header) far more cheaply than 45 writes of its segments,
//! and UDP datagrams of one flow likewise (USO, Linux 6.2+). Rather than
//! decrypting every packet into a buffer of its own and then copying the
//! payloads of a flow together (tun-rs's coalescing, as wireguard-go does
//! it), a packet is decrypted straight onto the end of the super-packet
//! before it: its headers land over the super-packet's last bytes, which are
//! saved first, and its payload lands where it belongs. If it continues the
//! flow, the saved bytes go back over its headers and the payload stays; if
//! not, it is copied out to a buffer of its own (the only copy, and only
//! when flows interleave).
//!
//! Nothing here trusts the packets: a packet joins a super-packet only if
//! every header field that the kernel would re-create when it splits the
//! super-packet again matches (addresses, ports, IP fields, TCP sequence,
//! acknowledgement, window and options), so splitting gives back exactly the
//! packets that were decrypted. Cryptokey routing has already checked the
//! source address, so packets of different peers never share a flow. The
//! checksums of coalesced packets are not verified: the AEAD tag already
//! authenticated every byte, as the kernel's WireGuard also assumes.

use crate::offload::{
    pseudo_header_sum, put_u16, set_ipv4_header_checksum, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4,
    PROTO_TCP, PROTO_UDP, VIRTIO_NET_HDR_F_NEEDS_CSUM,
};
use std::io;
use tun_rs::{VirtioNetHdr, VIRTIO_NET_HDR_LEN};

/// Buffers per batch; a full batch is written at once.
pub const BATCH: usize = 128;
/// The largest packet the TUN takes.
const MAX_PACKET: usize = 65_535;
/// A buffer: the virtio-net header, the largest packet, and room for the
/// AEAD tag and padding that decryption writes past a packet's end.
const BUF_LEN: usize = VIRTIO_NET_HDR_LEN + MAX_PACKET + 64;
/// IPv4 (no options) or IPv6 plus TCP with the longest options.
const MAX_HEADERS: usize = 40 + 60;

const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    Tcp,
    Udp,
}

/// One TUN write to be: a packet, or a super-packet growing.
struct Item {
    buf: Vec<u8>,
    /// Packet bytes after the virtio-net header.
    len: usize,
    /// The flow of a packet that can start a super-packet.
    flow: Option<Flow>,
    /// Whether further packets of the flow may still join.
    open: bool,
    /// Packets in it; more than one makes it a super-packet.
    segments: usize,
}

impl Item {
    /// Makes the `n` bytes after the virtio-net header a write of their
    /// own, open for the rest of its flow if it can start one.
    fn begin(&mut self, n: usize, vnet: bool, udp: bool) {
        self.len = n;
        self.segments = 1;
        self.flow = vnet
            .then(|| starts_flow(&self.buf[VIRTIO_NET_HDR_LEN..VIRTIO_NET_HDR_LEN + n], udp))
            .flatten();
        self.open = self.flow.is_some();
    }
}

/// What a super-packet needs to know to take the next packet of its flow.
#[derive(Clone, Copy, Debug)]
struct Flow {
    transport: Transport,
    v6: bool,
    /// Where the transport header starts, and where the payload does.
    l4: usize,
    hdr_len: usize,
    /// Payload of every segment but the last.
    gso_size: usize,
    /// TCP: the sequence number the next segment must carry.
    next_seq: u32,
    /// TCP: the last segment joined had PSH (the super-packet carries it).
    psh: bool,
}

/// What happened to a packet offered with [`Coalescer::push_with`].
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// It joined the super-packet before it, without a copy.
    Joined,
    /// It starts a write of its own.
    Own,
    /// It was copied out of the super-packet it was decrypted onto.
    Copied,
    /// The producer wrote nothing to send.
    Nothing,
}

/// Decrypted packets waiting for one batch of TUN writes.
pub struct Coalescer {
    items: Vec<Item>,
    used: usize,
    /// Whether writes start with a virtio-net header (offload is on).
    vnet: bool,
    udp: bool,
}

impl Coalescer {
    /// `vnet_header` says whether the TUN takes a virtio-net header (and so
    /// super-packets) before each packet, `udp` whether it takes UDP
    /// super-packets (USO) too.
    pub fn new(vnet_header: bool, udp: bool) -> Self {
        Self {
            items: (0..BATCH)
                .map(|_| Item {
                    buf: vec![0u8; BUF_LEN],
                    len: 0,
                    flow: None,
                    open: false,
                    segments: 0,
                })
                .collect(),
            used: 0,
            vnet: vnet_header,
            udp: vnet_header && udp,
        }
    }

    pub fn is_full(&self) -> bool {
        self.used == self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Offers a packet: `produce` writes it into the buffer it is given
    /// (at least `max_len` bytes) and returns its length, or `None` if there
    /// is nothing to send (an error, a handshake message it has dealt with).
    /// The buffer may be the end of the super-packet before; whatever
    /// `produce` writes there is undone. The caller flushes when full.
    pub fn push_with(
        &mut self,
        max_len: usize,
        produce: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Pushed {
        if self.is_full() || max_len > MAX_PACKET {
            return Pushed::Nothing;
        }
        // Onto the end of the last super-packet, if it can still grow.
        if let Some(last) = self.used.checked_sub(1) {
            let item = &mut self.items[last];
            if let Some(flow) = item.flow.filter(|_| item.open) {
                // The new packet's headers go over the super-packet's last
                // bytes, which must be payload: its own headers are what the
                // new packet is compared with.
                let start = VIRTIO_NET_HDR_LEN + item.len - flow.hdr_len;
                if start >= VIRTIO_NET_HDR_LEN + flow.hdr_len && start + max_len <= BUF_LEN {
                    return self.push_onto(last, flow, start, max_len, produce);
                }
                item.open = false;
            }
        }
        let (vnet, udp) = (self.vnet, self.udp);
        let item = &mut self.items[self.used];
        let Some(n) = produce(&mut item.buf[VIRTIO_NET_HDR_LEN..VIRTIO_NET_HDR_LEN + max_len])
        else {
            return Pushed::Nothing;
        };
        item.begin(n.min(max_len), vnet, udp);
        self.used += 1;
        Pushed::Own
    }

    fn push_onto(
        &mut self,
        last: usize,
        flow: Flow,
        start: usize,
        max_len: usize,
        produce: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Pushed {
        let h = flow.hdr_len;
        let item = &mut self.items[last];
        let mut saved = [0u8; MAX_HEADERS];
        saved[..h].copy_from_slice(&item.buf[start..start + h]);
        let produced = produce(&mut item.buf[start..start + max_len]).map(|n| n.min(max_len));
        let head = &item.buf[VIRTIO_NET_HDR_LEN..VIRTIO_NET_HDR_LEN + h];
        let joins = produced
            .filter(|&n| item.len + n.saturating_sub(h) <= MAX_PACKET)
            .and_then(|n| continues(&flow, head, &item.buf[start..start + n]));
        let result = match (produced, joins) {
            (Some(n), Some(psh)) => {
                let payload = n - h;
                item.len += payload;
                item.segments += 1;
                let mut flow = flow;
                flow.next_seq = flow.next_seq.wrapping_add(payload as u32);
                flow.psh = psh;
                // A short segment or a push ends the super-packet, as does
                // no room for another full one.
                let full = item.len + flow.gso_size > MAX_PACKET;
                item.flow = Some(flow);
                item.open = payload == flow.gso_size && !psh && !full;
                Pushed::Joined
            }
            (Some(n), None) => {
                // Another flow, or this one out of line: a write of its own
                // after this one, which takes no more.
                item.open = false;
                let next = last + 1;
                let (before, after) = self.items.split_at_mut(next);
                let (from, to) = (&before[last], &mut after[0]);
                to.buf[VIRTIO_NET_HDR_LEN..VIRTIO_NET_HDR_LEN + n]
                    .copy_from_slice(&from.buf[start..start + n]);
                to.begin(n, self.vnet, self.udp);
                self.used += 1;
                Pushed::Copied
            }
            (None, _) => Pushed::Nothing,
        };
        let item = &mut self.items[last];
        item.buf[start..start + h].copy_from_slice(&saved[..h]);
        result
    }

    /// Finishes every write's headers and hands each to `write`, in order.
    pub fn flush(&mut self, mut write: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let mut result = Ok(());
        let from = if self.vnet { 0 } else { VIRTIO_NET_HDR_LEN };
        for item in &mut self.items[..self.used] {
            finish(item);
            if let Err(e) = write(&item.buf[from..VIRTIO_NET_HDR_LEN + item.len]) {
                result = Err(e);
            }
            item.open = false;
        }
        self.used = 0;
        result
    }
}

fn be16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Whether a packet can start a super-packet, and its flow if so: IPv4
/// without options or fragmentation, or IPv6 without extension headers;
/// TCP with only ACK set, or UDP (if the TUN takes it); some payload.
fn starts_flow(p: &[u8], udp: bool) -> Option<Flow> {
    let (v6, l4, proto) = match p.first()? >> 4 {
        4 if p.len() >= 20 && p[0] == 0x45 && be16(p, 2) == p.len() && be16(p, 6) & 0xbfff == 0 => {
            (false, 20, p[9])
        }
        6 if p.len() >= 40 && be16(p, 4) + 40 == p.len() => (true, 40, p[6]),
        _ => return None,
    };
    let (transport, hdr_len, next_seq) = match proto {
        PROTO_TCP if p.len() >= l4 + 20 => {
            let hdr_len = l4 + usize::from(p[l4 + 12] >> 4) * 4;
            if p[l4 + 13] != TCP_ACK || hdr_len < l4 + 20 || hdr_len > MAX_HEADERS {
                return None;
            }
            let seq = be32(p, l4 + 4).wrapping_add(p.len().saturating_sub(hdr_len) as u32);
            (Transport::Tcp, hdr_len, seq)
        }
        PROTO_UDP if udp && p.len() >= l4 + 8 && be16(p, l4 + 4) == p.len() - l4 => {
            (Transport::Udp, l4 + 8, 0)
        }
        _ => return None,
    };
    let gso_size = p.len().checked_sub(hdr_len).filter(|&n| n > 0)?;
    Some(Flow {
        transport,
        v6,
        l4,
        hdr_len,
        gso_size,
        next_seq,
        psh: false,
    })
}

/// Whether `p` continues the flow whose first packet's headers are `head`;
/// if so, whether it carries PSH.
fn continues(flow: &Flow, head: &[u8], p: &[u8]) -> Option<bool> {
    let (h, l4) = (flow.hdr_len, flow.l4);
    if p.len() <= h || p.len() - h > flow.gso_size {
        return None;
    }
    let payload = p.len() - h;
    // IP: everything but the lengths, the IPv4 ID and header checksum.
    let ip_same = if flow.v6 {
        p[..4] == head[..4] && p[6..40] == head[6..40] && be16(p, 4) + 40 == p.len()
    } else {
        p[..2] == head[..2]
            && be16(p, 2) == p.len()
            && p[6..10] == head[6..10]
            && p[12..20] == head[12..20]
    };
    if !ip_same {
        return None;
    }
    match flow.transport {
        Transport::Tcp => {
            let flags = p[l4 + 13];
            let same = p[l4..l4 + 4] == head[l4..l4 + 4]
                && be32(p, l4 + 4) == flow.next_seq
                && p[l4 + 8..l4 + 13] == head[l4 + 8..l4 + 13]
                && (flags == TCP_ACK || flags == TCP_ACK | TCP_PSH)
                && p[l4 + 14..l4 + 16] == head[l4 + 14..l4 + 16]
                && p[l4 + 18..h] == head[l4 + 18..h];
            same.then_some(flags & TCP_PSH != 0)
        }
        Transport::Udp => {
            let same = p[l4..l4 + 4] == head[l4..l4 + 4] && be16(p, l4 + 4) == payload + 8;
            same.then_some(false)
        }
    }
}

/// Writes the virtio-net header and, for a super-packet, its lengths and
/// checksums: the IPv4 header checksum in full, the transport checksum as
/// the pseudo-header sum the kernel completes per segment.
fn finish(item: &mut Item) {
    let (vnet, p) = item.buf.split_at_mut(VIRTIO_NET_HDR_LEN);
    match item.flow {
        Some(flow) if item.segments > 1 => write_super_packet(vnet, &mut p[..item.len], &flow),
        // A packet on its own: the kernel checks its checksum as usual.
        _ => vnet.fill(0),
    }
}

fn write_super_packet(vnet: &mut [u8], p: &mut [u8], flow: &Flow) {
    // Both lengths fit: a super-packet never grows past 64 KiB.
    let total = p.len();
    let l4 = flow.l4;
    let l4_len = total - l4;
    if flow.v6 {
        put_u16(p, 4, (total - 40) as u16);
    } else {
        put_u16(p, 2, total as u16);
        set_ipv4_header_checksum(p, l4);
    }
    let (gso_type, proto, csum_offset) = match flow.transport {
        Transport::Tcp => {
            if flow.psh {
                p[l4 + 13] |= TCP_PSH;
            }
            (if flow.v6 { GSO_TCPV6 } else { GSO_TCPV4 }, PROTO_TCP, 16)
        }
        Transport::Udp => {
            put_u16(p, l4 + 4, l4_len as u16);
            (GSO_UDP_L4, PROTO_UDP, 6)
        }
    };
    let pseudo = pseudo_header_sum(p, flow.v6, proto, l4_len);
    put_u16(p, l4 + csum_offset, tun_rs::checksum(&[], pseudo));
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type,
        hdr_len: flow.hdr_len as u16,
        gso_size: flow.gso_size as u16,
        csum_start: l4 as u16,
        csum_offset: csum_offset as u16,
    };
    // Only fails for a buffer shorter than the header, which this is not.
    let _ = hdr.encode(vnet);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::test_packets::build;
    use crate::offload::Segments;

    /// `count` full segments of one TCP flow and a short last one with PSH.
    fn stream(v6: bool, count: usize, mss: usize) -> Vec<Vec<u8>> {
        (0..=count)
            .map(|i| {
                let last = i == count;
                let flags = if last { TCP_ACK | TCP_PSH } else { TCP_ACK };
                let len = if last { mss / 3 } else { mss };
                build(
                    v6,
                    false,
                    40000,
                    100 + i as u16,
                    5000 + (i * mss) as u32,
                    len,
                    flags,
                )
            })
            .collect()
    }

    fn drain(c: &mut Coalescer, writes: &mut Vec<Vec<u8>>) {
        c.flush(|w| {
            writes.push(w.to_vec());
            Ok(())
        })
        .expect("writes cannot fail here");
    }

    /// Pushes every packet (copied in by the producer), flushes, and returns
    /// what `push_with` said and the writes.
    fn run(packets: &[Vec<u8>], udp: bool) -> (Vec<Pushed>, Vec<Vec<u8>>) {
        let mut c = Coalescer::new(true, udp);
        let mut pushed = Vec::new();
        let mut writes = Vec::new();
        for p in packets {
            pushed.push(c.push_with(p.len() + 32, |dst| {
                dst[..p.len()].copy_from_slice(p);
                // Decryption also writes past the packet (tag and padding).
                dst[p.len()..p.len() + 32].fill(0xee);
                Some(p.len())
            }));
            if c.is_full() {
                drain(&mut c, &mut writes);
            }
        }
        drain(&mut c, &mut writes);
        (pushed, writes)
    }

    /// What the kernel gets back out of the writes: each super-packet split
    /// as its own segmentation would split it.
    fn resplit(writes: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for w in writes {
            let mut w = w.clone();
            let mut segments = Segments::new(&mut w, true).expect("a valid write");
            while let Some(p) = segments.next() {
                out.push(p.to_vec());
            }
        }
        out
    }

    #[test]
    fn a_tcp_stream_becomes_one_write_that_splits_back_into_it() {
        for v6 in [false, true] {
            let packets = stream(v6, 40, 1368);
            let (pushed, writes) = run(&packets, true);
            assert_eq!(writes.len(), 1, "v6 {v6}: one write");
            assert_eq!(pushed.iter().filter(|p| **p == Pushed::Joined).count(), 40);
            let vnet = &writes[0][..VIRTIO_NET_HDR_LEN];
            assert_eq!(vnet[0], VIRTIO_NET_HDR_F_NEEDS_CSUM);
            assert_eq!(vnet[1], if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
            assert_eq!(u16::from_le_bytes([vnet[4], vnet[5]]), 1368);
            assert_eq!(resplit(&writes), packets, "v6 {v6}: the packets come back");
        }
    }

    #[test]
    fn a_full_super_packet_starts_the_next() {
        let packets = stream(false, 120, 1368);
        let (_, writes) = run(&packets, true);
        assert!(writes.len() >= 3, "{} writes", writes.len());
        assert!(writes
            .iter()
            .all(|w| w.len() <= VIRTIO_NET_HDR_LEN + MAX_PACKET));
        assert_eq!(resplit(&writes), packets);
    }

    #[test]
    fn a_gap_or_a_changed_header_ends_the_super_packet() {
        let base = stream(false, 10, 1000);
        let mut cases: Vec<(&str, Vec<Vec<u8>>)> = Vec::new();
        let mut gap = base.clone();
        gap.remove(4);
        cases.push(("gap", gap));
        let mut window = base.clone();
        window[5][20 + 15] ^= 1;
        cases.push(("window", window));
        let mut ack = base.clone();
        ack[5][20 + 11] ^= 1;
        cases.push(("ack", ack));
        let mut option = base.clone();
        option[5][20 + 23] ^= 1;
        cases.push(("option", option));
        let mut tos = base.clone();
        tos[5][1] = 2;
        cases.push(("tos", tos));
        let mut fin = base.clone();
        fin[5][20 + 13] |= 1;
        cases.push(("fin", fin));
        for (what, packets) in cases {
            // The checksums no longer matter: the packets stay as they are.
            let (pushed, writes) = run(&packets, true);
            assert!(writes.len() >= 2, "{what}: {} writes", writes.len());
            assert!(pushed.contains(&Pushed::Copied), "{what}: {pushed:?}");
            let back: Vec<Vec<u8>> = resplit(&writes)
                .into_iter()
                .zip(&packets)
                .map(|(mut got, want)| {
                    // Resplitting recomputes checksums; compare the rest.
                    let l4 = 20;
                    for at in [10, 11, l4 + 16, l4 + 17] {
                        got[at] = want[at];
                    }
                    got
                })
                .collect();
            assert_eq!(back, packets, "{what}: order and bytes kept");
        }
    }

    #[test]
    fn interleaved_flows_keep_their_order() {
        let a = stream(false, 6, 900);
        let b: Vec<Vec<u8>> = (0..7)
            .map(|i| {
                build(
                    false,
                    false,
                    40001,
                    300 + i as u16,
                    9000 + i * 900,
                    900,
                    TCP_ACK,
                )
            })
            .collect();
        let packets: Vec<Vec<u8>> = a
            .iter()
            .zip(&b)
            .flat_map(|(x, y)| [x.clone(), y.clone()])
            .collect();
        let (_, writes) = run(&packets, true);
        assert_eq!(resplit(&writes), packets);
    }

    #[test]
    fn tiny_segments_of_interleaved_flows_stay_apart() {
        // Payloads shorter than the headers: a packet decrypted onto the
        // end of the one before would cover that one's own headers.
        for payload in [1, 10, 51, 52, 53, 104] {
            let packets: Vec<Vec<u8>> = (0..12)
                .map(|i| {
                    let (port, k) = (40000 + (i % 2) as u16, i / 2);
                    build(
                        false,
                        false,
                        port,
                        k as u16,
                        (k * payload) as u32,
                        payload,
                        TCP_ACK,
                    )
                })
                .collect();
            let (pushed, writes) = run(&packets, true);
            assert!(
                !pushed.contains(&Pushed::Joined),
                "payload {payload}: {pushed:?}"
            );
            assert_eq!(resplit(&writes), packets, "payload {payload}");
        }
    }

    #[test]
    fn packets_that_cannot_start_a_flow_pass_unchanged() {
        let mut options = build(false, false, 40000, 1, 1, 100, TCP_ACK);
        options[0] = 0x46;
        let mut fragment = build(false, true, 40000, 1, 1, 100, 0);
        fragment[6] = 0x20;
        let packets = vec![
            build(false, false, 40000, 1, 1, 0, TCP_ACK),
            build(false, false, 40000, 2, 1, 0, 0x02),
            build(false, false, 40000, 3, 1, 10, TCP_ACK | 0x01),
            options,
            fragment,
            vec![0x45, 0, 0],
            vec![],
        ];
        let (pushed, writes) = run(&packets, true);
        assert!(pushed.iter().all(|p| *p == Pushed::Own), "{pushed:?}");
        assert_eq!(writes.len(), packets.len());
        for (w, p) in writes.iter().zip(&packets) {
            assert_eq!(&w[..VIRTIO_NET_HDR_LEN], &[0u8; VIRTIO_NET_HDR_LEN]);
            assert_eq!(&w[VIRTIO_NET_HDR_LEN..], p.as_slice());
        }
    }

    #[test]
    fn udp_joins_only_where_the_tun_takes_it() {
        for v6 in [false, true] {
            let mut packets: Vec<Vec<u8>> = (0..30)
                .map(|i| build(v6, true, 40000, 7 + i as u16, i as u32, 1200, 0))
                .collect();
            packets.push(build(v6, true, 40000, 37, 30, 200, 0));
            let (_, writes) = run(&packets, true);
            assert_eq!(writes.len(), 1, "v6 {v6}");
            assert_eq!(writes[0][1], GSO_UDP_L4);
            assert_eq!(resplit(&writes), packets, "v6 {v6}");
            let (_, writes) = run(&packets, false);
            assert_eq!(writes.len(), packets.len(), "v6 {v6}: without USO");
        }
    }

    #[test]
    fn nothing_produced_onto_a_super_packet_leaves_it_whole() {
        let packets = stream(false, 8, 1368);
        let mut c = Coalescer::new(true, true);
        for (i, p) in packets.iter().enumerate() {
            if i == 4 {
                // A message that failed to decrypt, after scribbling.
                assert_eq!(
                    c.push_with(1500, |dst| {
                        dst.fill(0xab);
                        None
                    }),
                    Pushed::Nothing
                );
            }
            c.push_with(p.len() + 32, |dst| {
                dst[..p.len()].copy_from_slice(p);
                Some(p.len())
            });
        }
        let mut writes = Vec::new();
        drain(&mut c, &mut writes);
        assert_eq!(writes.len(), 1);
        assert_eq!(resplit(&writes), packets);
    }

    #[test]
    fn mangled_packets_never_panic() {
        let mut rand = crate::test_rng(5);
        let base = stream(false, 20, 700);
        for _ in 0..300 {
            let packets: Vec<Vec<u8>> = base
                .iter()
                .map(|p| {
                    let mut p = p.clone();
                    if rand() % 3 == 0 {
                        let at = (rand() as usize) % 60;
                        p[at] = rand() as u8;
                    }
                    if rand() % 7 == 0 {
                        p.truncate((rand() as usize) % (p.len() + 1));
                    }
                    p
                })
                .collect();
            let (_, writes) = run(&packets, true);
            let bytes: usize = writes.iter().map(|w| w.len() - VIRTIO_NET_HDR_LEN).sum();
            assert!(bytes <= packets.iter().map(Vec::len).sum::<usize>());
        }
    }
}
