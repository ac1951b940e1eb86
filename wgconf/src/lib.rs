//! What Weft's programs share about a WireGuard device without running one:
//! keys ([`key`]), IP prefixes ([`prefix`]), the configuration model a
//! device is set and read with ([`config`]), the UAPI text format `wg`
//! speaks ([`uapi`]), and the client of the control socket the agent drives
//! `weft-wg` through ([`control`]), plus the daemons' signal handling
//! ([`signals`]) and how their logs look ([`logging`]).
//!
//! The agent and `weftctl` link this and not the data plane: no protocol
//! core, no TUN or UDP I/O.
pub mod config;
pub mod control;
pub mod key;
pub mod logging;
pub mod prefix;
pub mod signals;
pub mod uapi;

pub use config::{DeviceInfo, DeviceUpdate, PeerInfo, PeerUpdate};
pub use key::{KeyError, PresharedKey, PrivateKey, PublicKey};
pub use prefix::{Cidr, IpPrefix, PrefixError};
