//! Weft's userspace WireGuard device.
//!
//! The protocol (handshakes, sessions, replay protection, timers) is gotatun's
//! sans-IO `noise::Tunn` (see docs/security.md for why); everything around it
//! is here: cryptokey routing
//! ([`allowed_ips`]), batched and offloaded TUN and UDP I/O on one worker per
//! TUN queue (`worker`, `outbound`, `inbound`, [`udp`]), timers, and the UAPI
//! socket ([`uapi`]) that lets the stock `wg` tool configure a [`Device`].
//! `weft-wg` runs a [`Device`]; the agent drives that process over its
//! control socket ([`control`]: the UAPI text plus Weft's own requests),
//! never a device of its own, so restarting the agent leaves traffic alone.

pub mod allowed_ips;
pub mod coalesce;
pub mod device;
pub mod handoff;
pub mod handshake_budget;
mod inbound;
mod index;
mod link_events;
pub mod offload;
pub mod outbound;
mod peer;
pub mod reachability;
mod shared;
mod timers;
pub mod uapi;
pub mod udp;
pub mod wire;
mod worker;

// The configuration model, keys, the control client and signal handling
// live in `wgconf`, which the agent links instead of this crate; they are
// re-exported under their old paths.
pub use wgconf::{config, control, key, logging, signals};

pub use allowed_ips::{AllowedIps, IpPrefix};

/// A small deterministic generator (xorshift) for the tests' random inputs.
#[cfg(test)]
pub(crate) fn test_rng(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
pub use config::{DeviceInfo, DeviceUpdate, PeerInfo, PeerUpdate};
pub use device::{default_workers, Device, DeviceError, DeviceOptions, Stopper, MAX_WORKERS};
pub use key::{PresharedKey, PrivateKey, PublicKey};
