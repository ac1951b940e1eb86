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
//! type before any lookup, unknown indices and keys are dropped silently, a
//! decrypted packet must be one whole IP packet (its padding is cut off by the
//! IP header's length) from an address the peer is allowed to use, and the
//! peer's endpoint follows only messages that proved they came from it (data
//! and handshakes, never a cookie reply).

use crate::coalesce::Coalescer;
use crate::key::PublicKey;
use crate::outbound::{is_tun_gone, send_message};
use crate::peer::{Opened, Peer};
use crate::shared::{Shared, State};
use crate::udp::{canonical, UdpSocket};
use crate::wire::{self, MessageType, PacketBuffers};
use gotatun::noise::handshake::parse_handshake_anon;
use gotatun::noise::TunnResult;
use gotatun::packet::{Packet, WgKind};
use quinn_udp::RecvMeta;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;
use tun_rs::SyncDevice;

/// Receive buffers per `recvmmsg`.
const RECV_BATCH: usize = 16;
/// One receive buffer: a full GRO super-datagram.
const RECV_BUF: usize = 65_536;

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
    buffers: PacketBuffers,
}

impl Inbound {
    /// For a worker on `tun`, whose offloads decide what can be coalesced.
    pub(crate) fn new(tun: &SyncDevice) -> Self {
        Self {
            storage: vec![0u8; RECV_BATCH * RECV_BUF],
            meta: [RecvMeta::default(); RECV_BATCH],
            coalescer: Coalescer::new(tun.tcp_gso(), tun.udp_gso()),
            buffers: PacketBuffers::new(),
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
                    &self.buffers,
                );
            }
        }
        drop(st);
        flush(&mut self.coalescer, shared, tun);
        true
    }
}

/// The peer a data message or cookie reply is for, by its receiver index.
fn addressed_peer(shared: &Shared, datagram: &[u8]) -> Option<Arc<Peer>> {
    wire::receiver_index(datagram).and_then(|i| shared.indices.get(i))
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
    buffers: &PacketBuffers,
) {
    let Some(kind) = wire::message_type(datagram) else {
        return;
    };
    match kind {
        MessageType::Data => {
            let Some(peer) = addressed_peer(shared, datagram) else {
                return;
            };
            receive_data(st, &peer, from, datagram, coalescer, buffers);
            if coalescer.is_full() {
                flush(coalescer, shared, tun);
            }
        }
        MessageType::HandshakeInit | MessageType::HandshakeResponse => {
            // mac1 first (and the cookie, for a source over its rate or for
            // every source while the device is under load), then the
            // source's and the device's budget, so that nothing costlier
            // runs for a message not meant for us or past its rate.
            let now = shared.now_ms();
            let limiter = if shared.handshakes.under_load(now) {
                &st.strict_limiter
            } else {
                &st.rate_limiter
            };
            let message = match limiter.verify_packet(from, buffers.packet(datagram)) {
                Ok(message) => message,
                Err(TunnResult::WriteToNetwork(cookie)) => {
                    let cookie = Packet::from(cookie);
                    let _ = udp.send(from, &cookie, cookie.len());
                    return;
                }
                Err(_) => return,
            };
            if !shared.handshakes.admit(from.ip(), now) {
                return;
            }
            let peer = match &message {
                // Costs a DH: only after the checks above.
                WgKind::HandshakeInit(init) => st.identity.as_ref().and_then(|id| {
                    let half = parse_handshake_anon(&id.secret, &id.public, init).ok()?;
                    st.peers.get(&PublicKey(half.peer_static_public)).cloned()
                }),
                WgKind::HandshakeResp(resp) => shared.indices.get(resp.receiver_idx.get()),
                _ => None,
            };
            if let Some(peer) = peer {
                receive_handshake(shared, udp, &peer, from, message, datagram.len());
            }
        }
        MessageType::CookieReply => {
            let Some(peer) = addressed_peer(shared, datagram) else {
                return;
            };
            let Ok(message) = buffers.packet(datagram).try_into_wg() else {
                return;
            };
            peer.cookie_reply(message, from);
        }
    }
}

/// Decrypts a data message into the coalescer's next write.
fn receive_data(
    st: &State,
    peer: &Arc<Peer>,
    from: SocketAddr,
    datagram: &[u8],
    coalescer: &mut Coalescer,
    buffers: &PacketBuffers,
) {
    let Ok(message @ WgKind::Data(_)) = buffers.packet(datagram).try_into_wg() else {
        return;
    };
    // Cryptokey routing: the inner source must be one the peer owns.
    let owns = |src| {
        st.allowed_ips
            .lookup(src)
            .is_some_and(|owner| Arc::ptr_eq(owner, peer))
    };
    if let Opened::Packet(packet) = peer.open(message, from, datagram.len(), owns) {
        coalescer.push_with(packet.len(), |out| {
            out[..packet.len()].copy_from_slice(&packet);
            Some(packet.len())
        });
    }
}

/// Hands an authenticated-so-far handshake message to the peer and sends
/// what it answers, then whatever waited for the session.
fn receive_handshake(
    shared: &Shared,
    udp: &UdpSocket,
    peer: &Arc<Peer>,
    from: SocketAddr,
    message: WgKind,
    wire_len: usize,
) {
    let mut mtu = wire::mtu_watcher(shared);
    for reply in peer.handshake(message, from, wire_len, &mut mtu) {
        send_message(shared, udp, peer, from, &reply);
    }
}
