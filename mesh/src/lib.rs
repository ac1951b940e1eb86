//! The mesh core: pure functions from a snapshot of nodes and peers to a
//! topology and to one node's desired state, and the readers that turn
//! what the cluster says ([`objects`]: Kilo's Node annotations and Peer
//! resource) or a mesh file ([`file`]) into that snapshot. No I/O, no
//! clock of its own: everything here is tested with tables, without root,
//! and the fuzz targets link it without the agent's client stack.

pub mod announced;
pub mod desired;
pub mod failover;
pub mod file;
pub mod liveness;
pub mod model;
pub mod objects;
pub mod topology;

pub use announced::{Announced, Given};
pub use desired::{DesiredState, PeerConfig, Route, RouteDevice, WireGuardConfig};
pub use liveness::{Limits, Liveness, OutageLog};
pub use model::{
    Compatibility, Encapsulate, Endpoint, Granularity, Loaded, MeshOptions, Mtu, Node, Peer,
    RawNode, RawPeer, RecordError, SelfReport, Snapshot,
};
pub use topology::{Excluded, Segment, Topology, TopologyError};

/// Deterministic nodes, peers and keys for unit tests (here and, with the
/// `testing` feature, in other crates).
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use super::model::{Node, Peer, Snapshot};
    use std::collections::BTreeMap;
    use wgconf::PrivateKey;

    /// A deterministic key per name, so golden outputs are stable.
    pub fn key_for(name: &str) -> wgconf::PublicKey {
        let mut b = [7u8; 32];
        for (i, c) in name.bytes().enumerate() {
            b[i % 32] ^= c.wrapping_mul(31).wrapping_add(i as u8);
        }
        PrivateKey(b).public_key()
    }

    pub fn node(
        name: &str,
        location: &str,
        endpoint: &str,
        internal: Option<&str>,
        pods: &str,
        leader: bool,
    ) -> Node {
        Node {
            name: name.into(),
            location: location.into(),
            endpoint: Some(endpoint.parse().expect("endpoint")),
            internal_ip: internal.map(|s| s.parse().expect("cidr")),
            internal_ip6: None,
            pod_cidrs: vec![pods.parse().expect("cidr")],
            public_key: Some(key_for(name)),
            persistent_keepalive: 0,
            leader,
            allowed_location_ips: vec![],
            last_seen: None,
            discovered_endpoints: BTreeMap::new(),
            unreachable: None,
        }
    }

    pub fn peer(name: &str, ips: &[&str]) -> Peer {
        Peer {
            name: name.into(),
            allowed_ips: ips.iter().map(|s| s.parse().expect("cidr")).collect(),
            public_key: key_for(name),
            endpoint: None,
            persistent_keepalive: 0,
            preshared_key: None,
        }
    }

    /// aws-1 and aws-2 in location aws, gcp-1 in gcp: public endpoints,
    /// private addresses, one pod CIDR each.
    pub fn two_locations() -> Vec<Node> {
        vec![
            node(
                "aws-1",
                "aws",
                "203.0.113.11:51820",
                Some("172.31.0.11/24"),
                "10.42.1.0/24",
                false,
            ),
            node(
                "aws-2",
                "aws",
                "203.0.113.12:51820",
                Some("172.31.0.12/24"),
                "10.42.2.0/24",
                false,
            ),
            node(
                "gcp-1",
                "gcp",
                "203.0.113.21:51820",
                Some("10.128.0.21/24"),
                "10.42.3.0/24",
                false,
            ),
        ]
    }

    pub fn snapshot(nodes: Vec<Node>, peers: Vec<Peer>) -> Snapshot {
        Snapshot { nodes, peers }
    }
}
