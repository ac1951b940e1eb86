//! One remote peer and every protocol decision about it, without sockets
//! and without a clock of its own.
//!
//! The I/O edges (`outbound`, `inbound`, `timers`) move bytes; this module
//! decides what the bytes mean for the peer:
//! - **which session** seals and opens a message (the core, a gotatun
//!   `Tunn`, keeps the current, previous and next keys);
//! - **retry**: data queued behind an unanswered initiation asks again,
//!   with back-off ([`crate::reachability`]);
//! - **source check**: a decrypted packet must be one whole IP packet from
//!   an address the peer owns (the caller's cryptokey routing table says
//!   which, through `owns`);
//! - **roaming**: the endpoint follows messages that proved they came from
//!   the peer (data that passed the source check, keepalives, handshakes),
//!   never a cookie reply or a packet that failed the check;
//! - **keepalive**: persistent keepalives when nothing was sent for the
//!   configured interval, and the greeting of a new or moved peer;
//! - **recovery**: a session that carries our data and brings nothing back
//!   prompts a new handshake; initiations unanswered for long make the peer
//!   unreachable (reported once).
//!
//! Every method takes the time (milliseconds on the caller's clock) as an
//! argument and returns what to send, so the tests in `tests.rs` run two
//! peers against each other in memory, packet by packet. The core's own
//! RFC timers (rekey, expiry) run on its clock.
//!
//! The `Tunn` sits behind its own mutex so that the outbound and inbound
//! workers contend only when they touch the same peer; counters and the
//! keepalive interval are atomics read without any lock.

use crate::key::{PresharedKey, PublicKey};
use crate::reachability::{PeerReachability, Reachability, UNREACHABLE_AFTER_MS};
use crate::wire;
use gotatun::noise::index_table::IndexTable;
use gotatun::noise::rate_limiter::RateLimiter;
use gotatun::noise::{Tunn, TunnResult};
use gotatun::packet::{Packet, WgKind};
use gotatun::tun::MtuWatcher;
use gotatun::x25519;
use parking_lot::{Mutex, MutexGuard};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[cfg(test)]
mod tests;

struct Tunnel {
    /// `None` while the device has no private key.
    tunn: Option<Tunn>,
    preshared_key: Option<PresharedKey>,
}

pub(crate) struct Peer {
    pub(crate) public_key: PublicKey,
    /// The receiver indices of this peer's latest handshakes, oldest first
    /// (see [`crate::index`]).
    pub(crate) indices: Mutex<VecDeque<u32>>,
    tunnel: Mutex<Tunnel>,
    endpoint: Mutex<Option<SocketAddr>>,
    /// Seconds; 0 = off. Kept here rather than in `Tunn` so changing it never
    /// resets the session.
    keepalive: AtomicU16,
    rx_bytes: AtomicU64,
    tx_bytes: AtomicU64,
    /// Milliseconds on the caller's clock of the last send to this peer.
    last_sent_ms: AtomicU64,
    /// Whether the peer answers, and when to prompt it (see `reachability`).
    reachability: PeerReachability,
}

/// A preshared key as the core takes it: all zeros (`wg`'s way of saying
/// none) is none.
fn psk_bytes(psk: Option<PresharedKey>) -> Option<[u8; 32]> {
    psk.filter(|k| !k.is_zero()).map(|k| k.0)
}

/// Our static identity, as the protocol core wants it.
pub(crate) struct StaticIdentity {
    pub(crate) secret: x25519::StaticSecret,
    pub(crate) public: x25519::PublicKey,
}

/// What sealing one packet for the peer gave.
pub(crate) enum Sealed {
    /// A data message, ready for the wire.
    Data(Packet),
    /// No session yet (or the last initiation went unanswered): the packet
    /// waits in the core, and this initiation goes out on its own.
    Initiation(Packet),
    /// The packet waits behind a handshake in progress; nothing to send.
    Queued,
}

/// What opening one data message gave.
#[derive(Debug)]
pub(crate) enum Opened {
    /// One whole IP packet from an address the peer owns, for the TUN.
    Packet(Packet),
    /// An authenticated keepalive: counted, nothing to deliver.
    Keepalive,
    /// Not for the TUN: failed authentication, a replay, not one IP
    /// packet, or a source the peer does not own.
    Dropped,
}

/// What one look at the clock asks of the I/O.
#[derive(Default)]
pub(crate) struct Tick {
    /// Where `messages` go: the peer's endpoint at the look (without one,
    /// there are no messages).
    pub(crate) endpoint: Option<SocketAddr>,
    /// Messages for `endpoint`, in order.
    pub(crate) messages: Vec<Packet>,
    /// The peer just became unreachable (reported once per change).
    pub(crate) became_unreachable: bool,
}

/// The peer's protocol state locked for a run of packets to seal (the
/// outbound side holds it across one batch).
pub(crate) struct Sealer<'p> {
    peer: &'p Peer,
    tunnel: MutexGuard<'p, Tunnel>,
    endpoint: SocketAddr,
}

impl Sealer<'_> {
    /// Where the sealed messages go.
    pub(crate) fn endpoint(&self) -> SocketAddr {
        self.endpoint
    }

    /// Seals `packet` (already padded) for the peer.
    pub(crate) fn seal(&mut self, packet: Packet, now_ms: u64) -> Sealed {
        let Some(tunn) = self.tunnel.tunn.as_mut() else {
            return Sealed::Queued;
        };
        match tunn.handle_outgoing_packet(packet, None) {
            Some(WgKind::Data(message)) => Sealed::Data(Packet::from(message)),
            Some(other) => Sealed::Initiation(Packet::from(other)),
            // Queued behind a handshake in progress. If our initiation has
            // gone unanswered for a while (the peer may not have known us
            // yet), ask again now rather than after the 5 s retry timer,
            // since traffic is waiting.
            None if self.peer.reachability.retry_due(now_ms) => tunn
                .format_handshake_initiation(true)
                .map_or(Sealed::Queued, |init| {
                    Sealed::Initiation(Packet::from(init))
                }),
            None => Sealed::Queued,
        }
    }
}

impl Peer {
    pub(crate) fn new(public_key: PublicKey, preshared_key: Option<PresharedKey>) -> Self {
        Self {
            public_key,
            indices: Mutex::new(VecDeque::new()),
            tunnel: Mutex::new(Tunnel {
                tunn: None,
                preshared_key,
            }),
            endpoint: Mutex::new(None),
            keepalive: AtomicU16::new(0),
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            last_sent_ms: AtomicU64::new(0),
            reachability: PeerReachability::default(),
        }
    }

    /// (Re)creates the protocol state; any session in progress is dropped.
    pub(crate) fn reset_tunnel(
        &self,
        identity: Option<&StaticIdentity>,
        rate_limiter: &Arc<RateLimiter>,
        index_table: &IndexTable,
    ) {
        let mut t = self.tunnel.lock();
        t.tunn = identity.map(|id| {
            Tunn::new(
                id.secret.clone(),
                self.public_key.to_x25519(),
                psk_bytes(t.preshared_key),
                None,
                index_table.clone(),
                rate_limiter.clone(),
            )
        });
    }

    /// The preshared key as configured (all zeros: none).
    pub(crate) fn preshared_key(&self) -> Option<PresharedKey> {
        self.tunnel.lock().preshared_key
    }

    /// Sets the preshared key for the next handshakes; the session in use
    /// goes on until it is rekeyed, as in the kernel.
    pub(crate) fn set_preshared_key(&self, psk: PresharedKey) {
        let mut t = self.tunnel.lock();
        t.preshared_key = Some(psk);
        if let Some(tunn) = t.tunn.as_mut() {
            tunn.set_preshared_key(psk_bytes(Some(psk)));
        }
    }

    pub(crate) fn endpoint(&self) -> Option<SocketAddr> {
        *self.endpoint.lock()
    }

    /// Sets the endpoint from the configuration; the previous one.
    pub(crate) fn set_endpoint(&self, endpoint: SocketAddr) -> Option<SocketAddr> {
        self.endpoint.lock().replace(endpoint)
    }

    /// The persistent keepalive interval in seconds (0: off).
    pub(crate) fn persistent_keepalive(&self) -> u16 {
        self.keepalive.load(Ordering::Relaxed)
    }

    /// Sets the persistent keepalive interval; the previous one.
    pub(crate) fn set_persistent_keepalive(&self, seconds: u16) -> u16 {
        self.keepalive.swap(seconds, Ordering::Relaxed)
    }

    /// Bytes received and sent, WireGuard messages whole.
    pub(crate) fn transfer(&self) -> (u64, u64) {
        (
            self.rx_bytes.load(Ordering::Relaxed),
            self.tx_bytes.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn reachability(&self) -> Reachability {
        self.reachability.state()
    }

    /// Locks the protocol state for a run of packets; `None` when there is
    /// nowhere to send (no endpoint: wg drops rather than queueing without
    /// end) or no private key.
    pub(crate) fn sealer(&self) -> Option<Sealer<'_>> {
        let endpoint = self.endpoint()?;
        let tunnel = self.tunnel.lock();
        tunnel.tunn.as_ref()?;
        Some(Sealer {
            peer: self,
            tunnel,
            endpoint,
        })
    }

    /// A keepalive (an empty data message), or the initiation that starts a
    /// session when there is none, with the endpoint it goes to; `None`
    /// without an endpoint.
    pub(crate) fn keepalive(&self) -> Option<(SocketAddr, Packet)> {
        let endpoint = self.endpoint()?;
        let mut tunnel = self.tunnel.lock();
        let message = tunnel
            .tunn
            .as_mut()?
            .handle_outgoing_packet(Packet::default(), None)?;
        Some((endpoint, Packet::from(message)))
    }

    /// Opens a data message that came from `from` (`wire_len` bytes on the
    /// wire). `owns` is the cryptokey routing check: whether an inner
    /// source address belongs to this peer.
    pub(crate) fn open(
        &self,
        message: WgKind,
        from: SocketAddr,
        wire_len: usize,
        owns: impl FnOnce(IpAddr) -> bool,
    ) -> Opened {
        let result = match self.tunnel.lock().tunn.as_mut() {
            Some(tunn) => tunn.handle_incoming_packet(message),
            None => return Opened::Dropped,
        };
        let mut plain = match result {
            TunnResult::WriteToTunnel(plain) => plain,
            TunnResult::Err(e) => {
                tracing::trace!(%from, "dropped data message: {e:?}");
                return Opened::Dropped;
            }
            _ => return Opened::Dropped,
        };
        if plain.is_empty() {
            // Authenticated, so it counts and may move the peer.
            self.received_from(from, wire_len, false);
            return Opened::Keepalive;
        }
        let Some(inner) = wire::inner_packet(&plain) else {
            tracing::trace!(%from, "decrypted data is not one IP packet; dropped");
            return Opened::Dropped;
        };
        if !owns(inner.source) {
            tracing::trace!(src = %inner.source, peer = %self.public_key, "source not in allowed IPs; dropped");
            return Opened::Dropped;
        }
        self.received_from(from, wire_len, true);
        // The IP header's length cuts off the padding.
        plain.truncate(inner.len);
        Opened::Packet(plain)
    }

    /// Hands an authenticated-so-far handshake message from `from` to the
    /// core. Returns what to send back to `from`: the core's answer, then
    /// whatever waited for the session (padded as `mtu` says).
    pub(crate) fn handshake(
        &self,
        message: WgKind,
        from: SocketAddr,
        wire_len: usize,
        mtu: &mut MtuWatcher,
    ) -> Vec<Packet> {
        let mut tunnel = self.tunnel.lock();
        let Some(tunn) = tunnel.tunn.as_mut() else {
            return Vec::new();
        };
        match tunn.handle_incoming_packet(message) {
            TunnResult::WriteToNetwork(reply) => {
                // The core accepted it: the message came from the peer.
                self.received_from(from, wire_len, false);
                let mut out = vec![Packet::from(reply)];
                out.extend(tunn.get_queued_packets(mtu).map(Packet::from));
                out
            }
            TunnResult::Err(e) => {
                tracing::trace!(%from, "dropped handshake: {e:?}");
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// A cookie reply: anyone who saw our mac1 can make one, so it is
    /// handed to the core but moves nothing (not the endpoint, not
    /// reachability).
    pub(crate) fn cookie_reply(&self, message: WgKind, from: SocketAddr) {
        if let Some(tunn) = self.tunnel.lock().tunn.as_mut() {
            if let TunnResult::Err(e) = tunn.handle_incoming_packet(message) {
                tracing::trace!(%from, "dropped cookie reply: {e:?}");
            }
        }
    }

    /// Looks at the clock: the core's timers (handshake retries, rekeying,
    /// expiry, passive keepalives), recovery of a silent session, and the
    /// persistent keepalive.
    pub(crate) fn tick(&self, now_ms: u64) -> Tick {
        let endpoint = self.endpoint();
        let mut tick = Tick {
            endpoint,
            ..Tick::default()
        };
        {
            let mut tunnel = self.tunnel.lock();
            let Some(tunn) = tunnel.tunn.as_mut() else {
                return tick;
            };
            let due = self.reachability.tick(now_ms.max(1));
            if due.became_unreachable {
                tracing::warn!(
                    peer = %self.public_key,
                    endpoint = ?endpoint,
                    "peer unreachable: no answer to handshakes for {} s",
                    UNREACHABLE_AFTER_MS / 1000
                );
                tick.became_unreachable = true;
            }
            let result = if due.recover {
                // Our data goes out and nothing comes back: the peer may
                // have lost the session (a restart, a replaced config).
                tracing::debug!(peer = %self.public_key, "silent session; new handshake");
                Ok(tunn.format_handshake_initiation(true).map(WgKind::from))
            } else {
                tunn.update_timers()
            };
            match result {
                Ok(Some(message)) => tick.messages.push(Packet::from(message)),
                Err(e) => tracing::trace!(peer = %self.public_key, "timers: {e:?}"),
                Ok(None) => {}
            }
        }
        if endpoint.is_none() {
            tick.messages.clear();
            return tick;
        }
        let keepalive = u64::from(self.persistent_keepalive()) * 1000;
        if tick.messages.is_empty()
            && keepalive > 0
            && now_ms.saturating_sub(self.last_sent_ms.load(Ordering::Relaxed)) >= keepalive
        {
            tick.messages
                .extend(self.keepalive().map(|(_, message)| message));
        }
        tick
    }

    /// Records an authenticated message from `from` (`payload`: a data
    /// packet that carried something): counts it, follows the peer if it
    /// moved (roaming), and notes that it answers.
    fn received_from(&self, from: SocketAddr, bytes: usize, payload: bool) {
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        match self.reachability.received(payload) {
            Some(Reachability::Unreachable) => {
                tracing::info!(peer = %self.public_key, endpoint = %from, "peer reachable again")
            }
            Some(_) => tracing::info!(peer = %self.public_key, endpoint = %from, "peer reachable"),
            None => {}
        }
        let mut ep = self.endpoint.lock();
        if *ep != Some(from) {
            if ep.is_some() {
                tracing::debug!(peer = %self.public_key, %from, "peer roamed");
            }
            *ep = Some(from);
        }
    }

    /// Records a send of `message`: one or more WireGuard messages of one
    /// type, each `segment` bytes long (the last may be shorter).
    pub(crate) fn sent(&self, message: &[u8], segment: usize, now_ms: u64) {
        self.tx_bytes
            .fetch_add(message.len() as u64, Ordering::Relaxed);
        self.last_sent_ms.store(now_ms, Ordering::Relaxed);
        if let Some(&kind) = message.first() {
            self.reachability.sent(kind, segment, now_ms);
        }
    }

    pub(crate) fn last_handshake(&self) -> Option<SystemTime> {
        let t = self.tunnel.lock();
        let (since, ..) = t.tunn.as_ref()?.stats();
        since.and_then(|d: Duration| SystemTime::now().checked_sub(d))
    }
}
