//! The Kubernetes backend, by concern:
//! - [`annotations`], [`node`], [`peer`]: Kilo's node annotations and Peer
//!   resource read into the mesh's raw records, and the annotations the
//!   agent owns written back as minimal patches (pure: they live in the
//!   mesh crate, `weft_mesh::objects`, and are re-exported here);
//! - [`mirror`]: the watches of Nodes and Peers kept in stores;
//! - [`check_in`]: this node's check-ins and the others' freshness;
//! - [`events`]: problems recorded as Kubernetes Events;
//! - [`health`]: the API's reachability, back-off and outage log;
//! - [`kube`]: the [`KubeBackend`] that ties them to the agent's loop.

pub mod check_in;
pub mod events;
pub mod health;
pub mod kube;
pub mod mirror;

pub use weft_mesh::objects::{annotations, node, peer};

pub use kube::{KubeBackend, KubeSettings};

use std::time::Duration;

/// How long the agent loop waits for one write to the API; a slow or absent
/// API must not hold up reconciling (or stopping).
pub const API_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The field manager named in the API's managedFields for our patches.
pub const FIELD_MANAGER: &str = "weft-agent";
