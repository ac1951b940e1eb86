//! A worker's inbound side: UDP -> decrypt -> source check -> TUN.
//!
//! One `recvmmsg` fills several 64 KiB buffers, each holding up to 64
//! GRO-coalesced datagrams. Every datagram is decrypted straight into its
//! TUN write ([`crate::coalesce`]): packets of one TCP flow onto the end of
//! the super-packet before them, so the kernel sees one large write rather
//! than dozens, and the payloads are not copied again (UDP datagrams of one
//! flow likewise; the kernel splits them again for an application that did
//! not ask for GRO, and they take no more of its receive buffer than
//! datagrams written one by one: ~2.3 KiB each, 92 in the default 208 KiB;
//! writing them one by one lost more, 3-11 % against 1.4-2.6 % at 1 Gbit/s).
//!
//! Everything from the network is untrusted: messages are parsed by length and
//! type before any lookup, unknown indices and keys are dropped silently, and a
//! decrypted packet must come from an address the peer is allowed to use.

use crate::coalesce::Coalescer;
use crate::key::PublicKey;
use crate::outbound::is_tun_gone;
use crate::peer::Peer;
use crate::shared::{Shared, State};
use crate::udp::{canonical, UdpSocket};
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, TunnResult};
use quinn_udp::RecvMeta;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tun_rs::SyncDevice;

/// Receive buffers per `recvmmsg`.
const RECV_BATCH: usize = 16;
/// One receive buffer: a full GRO super-datagram.
const RECV_BUF: usize = 65_536;
/// Room for a handshake message, which boringtun may write instead.
const MIN_ROOM: usize = 256;

const MSG_HANDSHAKE_INIT: u8 = 1;
const MSG_HANDSHAKE_RESP: u8 = 2;
const MSG_COOKIE_REPLY: u8 = 3;
const MSG_DATA: u8 = 4;

/// Writes what the coalescer holds to the TUN.
fn flush(coalescer: &mut Coalescer, shared: &Shared, tun: &SyncDevice) {
    if coalescer.is_empty() {
        return;
    }
    if let Err(e) = coalescer.flush(|packet| tun.send(packet).map(drop)) {
        if is_tun_gone(&e) {
            shared.stop("TUN interface removed");
        } else {
            tracing::debug!("TUN write: {e}");
        }
    }
    // The write delivered the batch to the receiving sockets and woke
    // their readers. Let them run before we decrypt the next batch: on a
    // busy machine a reader that waits for a core overflows its socket
    // buffer (UDP loss at 1 Gbit/s with 2 cores: 22 % without this,
    // 15 % with, medians of 5 rounds), and a TCP reader acks later.
    std::thread::yield_now();
}

/// A worker's inbound buffers.
pub(crate) struct Inbound {
    /// `RECV_BATCH` receive buffers end to end, in one allocation, which is
    /// mapped fresh and so costs memory only where datagrams land.
    storage: Vec<u8>,
    meta: [RecvMeta; RECV_BATCH],
    coalescer: Coalescer,
    scratch: Vec<u8>,
}

impl Inbound {
    /// For a worker on `tun`, whose offloads decide what can be coalesced.
    pub(crate) fn new(tun: &SyncDevice) -> Self {
        Self {
            storage: vec![0u8; RECV_BATCH * RECV_BUF],
            meta: [RecvMeta::default(); RECV_BATCH],
            coalescer: Coalescer::new(tun.tcp_gso(), tun.udp_gso()),
            scratch: vec![0u8; RECV_BUF],
        }
    }

    /// Receives one batch from `udp`, decrypts it and writes it to `tun`;
    /// false if nothing was waiting.
    pub(crate) fn step(&mut self, shared: &Shared, tun: &SyncDevice, udp: &UdpSocket) -> bool {
        let n = loop {
            let mut chunks = self.storage.chunks_mut(RECV_BUF);
            let mut iov: [IoSliceMut; RECV_BATCH] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            match udp.recv(&mut iov, &mut self.meta) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("UDP receive: {e}");
                    break 0;
                }
            }
        };
        if n == 0 {
            return false;
        }
        let st = shared.state.read();
        for (m, buf) in self.meta[..n].iter().zip(self.storage.chunks(RECV_BUF)) {
            let from = canonical(m.addr);
            let stride = m.stride.max(1);
            for datagram in buf[..m.len].chunks(stride) {
                handle_datagram(
                    shared,
                    &st,
                    udp,
                    tun,
                    from,
                    datagram,
                    &mut self.coalescer,
                    &mut self.scratch,
                );
            }
        }
        drop(st);
        flush(&mut self.coalescer, shared, tun);
        true
    }
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Finds the peer a message is for, by receiver index or, for a handshake
/// initiation, by the initiator's static key (which costs a DH, so it happens
/// only after the rate limiter has checked mac1 and, under load, the cookie).
fn find_peer<'a>(
    st: &'a State,
    udp: &UdpSocket,
    from: SocketAddr,
    datagram: &[u8],
    scratch: &mut [u8],
) -> Option<&'a Arc<Peer>> {
    // The reserved bytes after the type must be zero.
    if datagram.len() < 4 || datagram[1..4] != [0, 0, 0] {
        return None;
    }
    let receiver = match datagram[0] {
        MSG_DATA | MSG_COOKIE_REPLY => le_u32(datagram, 4)?,
        MSG_HANDSHAKE_RESP => le_u32(datagram, 8)?,
        MSG_HANDSHAKE_INIT => {
            let id = st.identity.as_ref()?;
            let packet = match st
                .rate_limiter
                .verify_packet(Some(from.ip()), datagram, scratch)
            {
                Ok(p) => p,
                Err(TunnResult::WriteToNetwork(cookie)) => {
                    // Under load: answer with a cookie instead of doing the DH.
                    let n = cookie.len();
                    let _ = udp.send(from, &scratch[..n], n);
                    return None;
                }
                Err(_) => return None,
            };
            let Packet::HandshakeInit(init) = packet else {
                return None;
            };
            let half = parse_handshake_anon(&id.secret, &id.public, &init).ok()?;
            return st.peers.get(&PublicKey(half.peer_static_public));
        }
        _ => return None,
    };
    st.by_index.get(&(receiver >> 8))
}

#[allow(clippy::too_many_arguments)]
fn handle_datagram(
    shared: &Shared,
    st: &State,
    udp: &UdpSocket,
    tun: &SyncDevice,
    from: SocketAddr,
    datagram: &[u8],
    coalescer: &mut Coalescer,
    scratch: &mut [u8],
) {
    let Some(peer) = find_peer(st, udp, from, datagram, scratch) else {
        return;
    };
    let mut tunnel = peer.tunnel.lock();
    let Some(tunn) = tunnel.tunn.as_mut() else {
        return;
    };
    // Decrypted straight into its TUN write; what is not for the TUN (a
    // handshake answer) is dealt with here and leaves nothing behind.
    coalescer.push_with(datagram.len().max(MIN_ROOM), |out| {
        match tunn.decapsulate(Some(from.ip()), datagram, out) {
            TunnResult::WriteToTunnelV4(packet, src) => {
                let n = packet.len();
                accept_packet(st, peer, IpAddr::V4(src), from, datagram.len()).then_some(n)
            }
            TunnResult::WriteToTunnelV6(packet, src) => {
                let n = packet.len();
                accept_packet(st, peer, IpAddr::V6(src), from, datagram.len()).then_some(n)
            }
            TunnResult::WriteToNetwork(reply) => {
                // A handshake answer or the keepalive that confirms one; then
                // the packets that waited for the session.
                peer.received_from(from, datagram.len(), false);
                let n = reply.len();
                if udp.send(from, &out[..n], n).is_ok() {
                    peer.sent(&out[..n], n, shared.now_ms());
                }
                while let TunnResult::WriteToNetwork(msg) = tunn.decapsulate(None, &[], scratch) {
                    let n = msg.len();
                    if udp.send(from, &scratch[..n], n).is_ok() {
                        peer.sent(&scratch[..n], n, shared.now_ms());
                    }
                }
                None
            }
            TunnResult::Done => {
                peer.received_from(from, datagram.len(), false);
                None
            }
            TunnResult::Err(e) => {
                tracing::trace!(%from, "dropped message: {e:?}");
                None
            }
        }
    });
    drop(tunnel);
    if coalescer.is_full() {
        flush(coalescer, shared, tun);
    }
}

/// Cryptokey routing: the inner source must be one the peer owns.
fn accept_packet(
    st: &State,
    peer: &Arc<Peer>,
    src: IpAddr,
    from: SocketAddr,
    wire_len: usize,
) -> bool {
    if !st
        .allowed_ips
        .lookup(src)
        .is_some_and(|owner| Arc::ptr_eq(owner, peer))
    {
        tracing::trace!(%src, peer = %peer.public_key, "source not in allowed IPs; dropped");
        return false;
    }
    peer.received_from(from, wire_len, true);
    true
}
