//! One remote peer: its protocol state (a gotatun `Tunn`) and what we keep
//! around it (endpoint, counters, persistent keepalive, the receiver indices
//! its handshakes were given).
//!
//! The `Tunn` sits behind its own mutex so that the outbound and inbound
//! workers contend only when they touch the same peer; counters and the
//! keepalive interval are atomics read without any lock.

use crate::key::{PresharedKey, PublicKey};
use crate::reachability::{PeerReachability, Reachability};
use gotatun::noise::index_table::IndexTable;
use gotatun::noise::rate_limiter::RateLimiter;
use gotatun::noise::Tunn;
use gotatun::x25519;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub(crate) struct Tunnel {
    /// `None` while the device has no private key.
    pub(crate) tunn: Option<Tunn>,
    pub(crate) preshared_key: Option<PresharedKey>,
}

pub(crate) struct Peer {
    pub(crate) public_key: PublicKey,
    /// The receiver indices of this peer's latest handshakes, oldest first
    /// (see [`crate::index`]).
    pub(crate) indices: Mutex<VecDeque<u32>>,
    pub(crate) tunnel: Mutex<Tunnel>,
    pub(crate) endpoint: Mutex<Option<SocketAddr>>,
    /// Seconds; 0 = off. Kept here rather than in `Tunn` so changing it never
    /// resets the session.
    pub(crate) keepalive: AtomicU16,
    pub(crate) rx_bytes: AtomicU64,
    pub(crate) tx_bytes: AtomicU64,
    /// Milliseconds since the device started, of the last send to this peer.
    pub(crate) last_sent_ms: AtomicU64,
    /// Whether the peer answers, and when to prompt it (see `reachability`).
    pub(crate) reachability: PeerReachability,
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

impl Peer {
    pub(crate) fn new(public_key: PublicKey) -> Self {
        Self {
            public_key,
            indices: Mutex::new(VecDeque::new()),
            tunnel: Mutex::new(Tunnel {
                tunn: None,
                preshared_key: None,
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

    /// Records an authenticated message from `from` (`payload`: a data
    /// packet that carried something): counts it, follows the peer if it
    /// moved (roaming), and notes that it answers.
    pub(crate) fn received_from(&self, from: SocketAddr, bytes: usize, payload: bool) {
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
