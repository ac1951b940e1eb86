//! A worker's outbound side: TUN -> route -> encrypt -> UDP.
//!
//! With offload on, one TUN read yields a TSO super-packet (up to 64 KiB);
//! without (an application sending datagrams one by one), one read yields
//! one packet, so a step reads on until the queue is empty or its buffer is
//! full. Reads are routed by their first packet, then cut into MTU-sized
//! segments in place as they are sealed ([`crate::offload::Segments`]), so
//! a segment's payload is copied once, into the sealing buffer. Consecutive
//! packets for the same peer are encrypted back to back into one contiguous
//! buffer, and the whole run leaves in a single UDP GSO `sendmsg`. So a
//! 64 KiB burst, or 45 datagrams an application sent one by one, costs one
//! send instead of ~45.

use crate::allowed_ips::AllowedIps;
use crate::offload::Segments;
use crate::peer::{Peer, Sealed};
use crate::shared::Shared;
use crate::udp::{UdpSocket, MAX_GSO_BYTES};
use crate::wire::{self, PacketBuffers};
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use tun_rs::{SyncDevice, VIRTIO_NET_HDR_LEN};

pub use crate::wire::DATA_OVERHEAD;
/// The largest IP packet a TUN segment can hold.
const MAX_PACKET: usize = 65_535;
/// Room past the largest datagram at the end of a batch.
const MIN_ROOM: usize = 256;
/// TUN reads per step at most, so that the inbound side gets its turn.
const READS_PER_STEP: usize = 64;
/// The largest read: a virtio-net header and a 64 KiB super-packet.
const MAX_READ: usize = VIRTIO_NET_HDR_LEN + MAX_PACKET;
/// A worker's read buffer: reads are laid end to end, and a step reads on
/// while a largest read still fits, so up to four super-packets or 64 small
/// packets per step.
const READ_BUFFER: usize = 4 * 65_536 + MAX_READ;

/// Encrypted datagrams laid end to end for one GSO send. GSO requires every
/// segment but the last to have the same size.
pub struct GsoBatch {
    buf: Vec<u8>,
    len: usize,
    segment_size: usize,
    count: usize,
    /// The last segment was shorter: nothing more may join.
    closed: bool,
    max_segments: usize,
}

impl GsoBatch {
    pub fn new(max_segments: usize) -> Self {
        Self {
            buf: vec![0u8; MAX_GSO_BYTES + MAX_PACKET + DATA_OVERHEAD + MIN_ROOM],
            len: 0,
            segment_size: 0,
            count: 0,
            closed: false,
            max_segments: max_segments.max(1),
        }
    }

    pub fn set_max_segments(&mut self, n: usize) {
        self.max_segments = n.max(1);
    }

    /// Whether a datagram of `size` bytes can join without a flush first.
    pub fn fits(&self, size: usize) -> bool {
        self.count == 0
            || (!self.closed
                && size <= self.segment_size
                && self.count < self.max_segments
                && self.len + size <= MAX_GSO_BYTES)
    }

    /// Scratch space at the end of the batch for the next datagram.
    pub fn room(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..]
    }

    /// Takes the `size` bytes just written into `room()` into the batch.
    pub fn commit(&mut self, size: usize) {
        if self.count == 0 {
            self.segment_size = size;
        } else if size < self.segment_size {
            self.closed = true;
        }
        self.len += size;
        self.count += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn contents(&self) -> (&[u8], usize) {
        (&self.buf[..self.len], self.segment_size)
    }

    pub fn clear(&mut self) {
        self.len = 0;
        self.count = 0;
        self.segment_size = 0;
        self.closed = false;
    }
}

/// What a step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing to do.
    Idle,
    /// Something was done; there may be more.
    Worked,
    /// The TUN interface is gone: the device stops.
    Gone,
}

/// A worker's outbound buffers.
pub(crate) struct Outbound {
    /// Reads end to end. One allocation this large is mapped fresh, so its
    /// pages cost memory only once reads have filled them.
    reads: Vec<u8>,
    /// Where each read of this step lies in `reads`.
    spans: Vec<Range<usize>>,
    batch: GsoBatch,
    buffers: PacketBuffers,
}

impl Outbound {
    pub(crate) fn new() -> Self {
        Self {
            reads: vec![0u8; READ_BUFFER],
            spans: Vec::with_capacity(READS_PER_STEP),
            batch: GsoBatch::new(1),
            buffers: PacketBuffers::new(),
        }
    }

    /// Reads what the TUN queue holds (bounded), then encrypts and sends it.
    pub(crate) fn step(&mut self, shared: &Shared, tun: &SyncDevice, udp: &UdpSocket) -> Step {
        self.spans.clear();
        let mut end = 0;
        let mut reads = 0;
        while reads < READS_PER_STEP && end + MAX_READ <= self.reads.len() {
            match tun.recv(&mut self.reads[end..end + MAX_READ]) {
                Ok(n) => {
                    self.spans.push(end..end + n);
                    // The next read starts on a cache line of its own.
                    end += n.next_multiple_of(64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_tun_gone(&e) => {
                    shared.stop("TUN interface removed");
                    return Step::Gone;
                }
                Err(e) => tracing::debug!("TUN read: {e}"),
            }
            reads += 1;
        }
        if !self.spans.is_empty() {
            encrypt_and_send(
                shared,
                udp,
                &mut self.reads,
                &self.spans,
                tun.tcp_gso(),
                &mut self.batch,
                &self.buffers,
            );
        }
        if reads == 0 {
            Step::Idle
        } else {
            Step::Worked
        }
    }
}

pub(crate) fn is_tun_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADFD) | Some(libc::EBADF) | Some(libc::ENODEV) | Some(libc::EIO)
    )
}

fn encrypt_and_send(
    shared: &Shared,
    udp: &UdpSocket,
    reads: &mut [u8],
    spans: &[Range<usize>],
    vnet_header: bool,
    batch: &mut GsoBatch,
    buffers: &PacketBuffers,
) {
    let st = shared.state.read();
    batch.set_max_segments(udp.max_gso_segments());
    let skip = if vnet_header { VIRTIO_NET_HDR_LEN } else { 0 };
    // A read's packets all go where its first one goes.
    let runs: Vec<_> = peer_runs(&st.allowed_ips, spans.len(), |i| {
        reads
            .get(spans[i].start + skip..spans[i].end)
            .unwrap_or_default()
    })
    .collect();
    for (peer, run) in runs {
        encrypt_run(shared, udp, peer, batch, buffers, |emit| {
            for span in &spans[run] {
                match Segments::new(&mut reads[span.clone()], vnet_header) {
                    Ok(mut segments) => {
                        while let Some(packet) = segments.next() {
                            emit(packet);
                        }
                    }
                    // Consumed from the queue: dropped, as the kernel would.
                    Err(e) => tracing::debug!("TUN read: {e}"),
                }
            }
        });
    }
}

/// Splits a worker's batch of `count` packets into runs of consecutive
/// packets for the same peer, by cryptokey routing on each destination.
/// Packets no peer owns are skipped.
///
/// This is the whole of the multi-queue dispatch: the kernel already spread
/// flows over the TUN queues, so a worker needs no hand-off to another
/// thread; it takes each peer's lock once per run, and the runs keep the
/// queue's order, which keeps every flow in order.
pub fn peer_runs<'t, 'p, T>(
    table: &'t AllowedIps<Arc<T>>,
    count: usize,
    packet: impl Fn(usize) -> &'p [u8],
) -> impl Iterator<Item = (&'t Arc<T>, Range<usize>)> {
    let route = move |i: usize| wire::destination(packet(i)).and_then(|ip| table.lookup(ip));
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < count {
            let start = i;
            i += 1;
            let Some(peer) = route(start) else {
                continue;
            };
            while i < count && route(i).is_some_and(|p| Arc::ptr_eq(p, peer)) {
                i += 1;
            }
            return Some((peer, start..i));
        }
        None
    })
}

/// Encrypts packets for one peer and sends them in as few GSO sends as
/// possible. `packets` hands each packet to the function it is given; a
/// packet may be cut out of a larger read only when its turn comes. Each is
/// padded to a multiple of 16 bytes (capped at the TUN's MTU) as it is
/// copied into the buffer the core seals it in, so the wire shows sizes in
/// steps of 16, not the exact size of what was sent.
pub(crate) fn encrypt_run(
    shared: &Shared,
    udp: &UdpSocket,
    peer: &Arc<Peer>,
    batch: &mut GsoBatch,
    buffers: &PacketBuffers,
    packets: impl FnOnce(&mut dyn FnMut(&[u8])),
) {
    let Some(mut sealer) = peer.sealer() else {
        return;
    };
    let endpoint = sealer.endpoint();
    let mtu = shared.tun_mtu();
    packets(&mut |packet: &[u8]| {
        let padded = wire::padded_len(packet.len(), mtu);
        match sealer.seal(buffers.padded(packet, padded), shared.now_ms()) {
            Sealed::Data(message) => {
                let bytes: &[u8] = &message;
                if !batch.fits(bytes.len()) {
                    flush(shared, udp, peer, endpoint, batch);
                }
                batch.room()[..bytes.len()].copy_from_slice(bytes);
                batch.commit(bytes.len());
            }
            // The packet waits for the session: the initiation goes on its own.
            Sealed::Initiation(init) => send_message(shared, udp, peer, endpoint, &init),
            Sealed::Queued => {}
        }
    });
    drop(sealer);
    flush(shared, udp, peer, endpoint, batch);
}

fn flush(
    shared: &Shared,
    udp: &UdpSocket,
    peer: &Peer,
    endpoint: SocketAddr,
    batch: &mut GsoBatch,
) {
    if batch.is_empty() {
        return;
    }
    let (contents, segment) = batch.contents();
    send(shared, udp, peer, endpoint, contents, segment);
    batch.clear();
}

fn send(
    shared: &Shared,
    udp: &UdpSocket,
    peer: &Peer,
    endpoint: SocketAddr,
    contents: &[u8],
    segment: usize,
) {
    match udp.send(endpoint, contents, segment) {
        Ok(()) => peer.sent(contents, segment, shared.now_ms()),
        Err(e) => tracing::debug!(%endpoint, "send: {e}"),
    }
}

/// Sends one message the core made (a handshake message, a keepalive, a
/// packet that waited for the session). A handshake message carries the
/// receiver index the peer will use for us: the device learns it here.
pub(crate) fn send_message(
    shared: &Shared,
    udp: &UdpSocket,
    peer: &Arc<Peer>,
    endpoint: SocketAddr,
    message: &[u8],
) {
    shared.indices.learn(peer, message);
    send(shared, udp, peer, endpoint, message, message.len());
}

/// Sends a keepalive (an empty data message) now, starting a handshake if
/// there is no session yet.
pub(crate) fn send_keepalive(shared: &Shared, peer: &Arc<Peer>) {
    let Some((endpoint, message)) = peer.keepalive() else {
        return;
    };
    let sockets = shared.state.read().sockets.clone();
    send_message(shared, sockets.sender(0), peer, endpoint, &message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allowed_ips::IpPrefix;

    /// An IPv4 header bound for 10.0.0.`last`.
    fn to(last: u8) -> Vec<u8> {
        let mut p = crate::offload::ipv4_tcp_packet(1, 10, false, false);
        p[19] = last;
        p
    }

    #[test]
    fn runs_split_where_the_peer_changes_keep_order_and_skip_the_unrouted() {
        let mut table = AllowedIps::new();
        let a = Arc::new("a");
        let b = Arc::new("b");
        let prefix = |last: u8| IpPrefix::new([10, 0, 0, last].into(), 32).unwrap();
        table.insert(prefix(2), a.clone());
        table.insert(prefix(3), b.clone());
        // a a b (nobody) b a
        let packets = [to(2), to(2), to(3), to(9), to(3), to(2)];
        let runs: Vec<(&str, Range<usize>)> =
            peer_runs(&table, packets.len(), |i| packets[i].as_slice())
                .map(|(p, r)| (**p, r))
                .collect();
        assert_eq!(
            runs,
            vec![("a", 0..2), ("b", 2..3), ("b", 4..5), ("a", 5..6)]
        );
        // A packet too short to carry a destination is skipped too.
        let short = [vec![0x45u8; 4], to(3)];
        let runs: Vec<Range<usize>> = peer_runs(&table, 2, |i| short[i].as_slice())
            .map(|(_, r)| r)
            .collect();
        assert_eq!(runs, vec![1..2]);
    }

    #[test]
    fn batch_keeps_equal_segments_and_closes_on_a_short_one() {
        let mut b = GsoBatch::new(64);
        assert!(b.fits(1452));
        b.commit(1452);
        assert!(b.fits(1452));
        b.commit(1452);
        assert!(!b.fits(1453), "a longer segment cannot join");
        assert!(b.fits(100));
        b.commit(100);
        assert!(!b.fits(100), "nothing may follow the short last segment");
        assert_eq!(b.contents().0.len(), 1452 * 2 + 100);
        assert_eq!(b.contents().1, 1452);
        b.clear();
        assert!(b.is_empty());
    }

    #[test]
    fn batch_respects_segment_and_byte_limits() {
        let mut b = GsoBatch::new(3);
        for _ in 0..3 {
            assert!(b.fits(1000));
            b.commit(1000);
        }
        assert!(!b.fits(1000));
        let mut b = GsoBatch::new(1000);
        let mut n = 0;
        while b.fits(1452) {
            b.commit(1452);
            n += 1;
        }
        assert_eq!(n, MAX_GSO_BYTES / 1452);
    }
}
