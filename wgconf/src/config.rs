//! The configuration model shared by the UAPI socket and the in-process API.
//!
//! It mirrors the WireGuard cross-platform UAPI exactly, so that `wg set` and
//! the agent express the same operations: an update is a list of device-level
//! changes followed by per-peer changes, applied in order and atomically.

use crate::key::{PresharedKey, PrivateKey, PublicKey};
use crate::prefix::IpPrefix;
use std::net::SocketAddr;
use std::time::SystemTime;

/// A change to the device; fields left `None` are not touched.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceUpdate {
    /// `Some(zero key)` removes the private key.
    pub private_key: Option<PrivateKey>,
    /// `Some(0)` picks a random port.
    pub listen_port: Option<u16>,
    /// `Some(0)` clears the mark.
    pub fwmark: Option<u32>,
    /// Remove every peer before applying `peers`.
    pub replace_peers: bool,
    pub peers: Vec<PeerUpdate>,
}

/// A change to one peer, identified by its public key.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerUpdate {
    pub public_key: PublicKey,
    /// Remove the peer; the other fields are ignored.
    pub remove: bool,
    /// Only change an existing peer; never create one.
    pub update_only: bool,
    /// `Some(zero key)` removes the preshared key.
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    /// Seconds; `Some(0)` disables.
    pub persistent_keepalive: Option<u16>,
    /// Drop the peer's allowed IPs before adding `allowed_ips`.
    pub replace_allowed_ips: bool,
    pub allowed_ips: Vec<IpPrefix>,
}

impl PeerUpdate {
    pub fn new(public_key: PublicKey) -> Self {
        Self {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }
}

/// What the device reports, as `wg show` sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    pub private_key: Option<PrivateKey>,
    pub public_key: Option<PublicKey>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: Vec<PeerInfo>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PeerInfo {
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    pub last_handshake: Option<SystemTime>,
    /// Bytes of WireGuard messages received from and sent to this peer.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive: u16,
    pub allowed_ips: Vec<IpPrefix>,
    /// Whether the peer answers: `None` before anything was tried.
    pub reachable: Option<bool>,
}
