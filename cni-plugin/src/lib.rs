//! `weft-cni`: a CNI plugin that wires pods into a Linux bridge (Weft's
//! `kube-bridge`) with host-local-compatible IPAM done in process.
//!
//! The parts that need no privileges (configuration, results, IPAM store) are
//! plain modules tested on their own; netlink goes through the shared
//! `weft_netlink` crate, and `command` strings them together per CNI verb
//! (feature `plugin`, on by default).

#[cfg(feature = "plugin")]
pub mod command;
pub mod config;
pub mod error;
pub mod ipam;
pub mod masq;
pub mod result;
