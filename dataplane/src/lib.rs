//! Weft's userspace WireGuard device.
//!
//! The protocol (handshakes, sessions, replay protection, timers) is boringtun's
//! sans-IO `noise::Tunn`; everything around it is here: cryptokey routing
//! ([`allowed_ips`]), batched and offloaded TUN and UDP I/O (`outbound`,
//! `inbound`, [`udp`]), timers, and the UAPI socket ([`uapi`]) that lets the stock
//! `wg` tool configure a [`Device`]. The agent drives the same [`Device`]
//! in-process through [`Device::apply`] and [`Device::info`].

pub mod allowed_ips;
pub mod config;
pub mod control;
pub mod device;
pub mod handoff;
mod inbound;
pub mod key;
pub mod offload;
pub mod outbound;
mod peer;
pub mod reachability;
pub mod signals;
mod timers;
pub mod uapi;
pub mod udp;

pub use allowed_ips::{AllowedIps, IpPrefix};
pub use config::{DeviceInfo, DeviceUpdate, PeerInfo, PeerUpdate};
pub use device::{Device, DeviceError, DeviceOptions, Stopper};
pub use key::{PresharedKey, PrivateKey, PublicKey};
