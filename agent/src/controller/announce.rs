//! What this node tells the others about itself (Kilo's agent-owned
//! annotations): its key, endpoint and addresses, its WireGuard address
//! while it leads, the endpoints it learned for roaming peers and the
//! segment members its probes find down. [`self_report`] builds the report
//! from what the pass applied; [`Announcer`] gathers the rest (the host's
//! addresses, the probes' verdicts) and logs a lasting failure once.

use crate::backend::{Backend, BackendError, SelfReport};
use crate::discover::{self, Discovered};
use crate::mesh::{DesiredState, Topology};
use crate::probe::SegmentWatch;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;
use wgconf::{PeerInfo, PublicKey};

/// Where this node's own addresses come from: the host's interfaces in
/// the agent, a fixed answer in tests.
pub trait AddressSource {
    fn find(&mut self) -> Result<Discovered, String>;
}

/// This node's report, from what the pass `applied` (its WireGuard address
/// is announced only while a tunnel with it is applied) and what the
/// tunnel reported (`tunnel_peers`).
pub fn self_report(
    public_key: PublicKey,
    found: &Discovered,
    topology: &Topology,
    applied: Option<&DesiredState>,
    tunnel_peers: &[PeerInfo],
    unreachable: Option<BTreeSet<String>>,
) -> SelfReport {
    SelfReport {
        public_key,
        endpoint: SocketAddr::new(found.public_ip, topology.options.port).to_string(),
        internal_ip: found.internal_ip,
        internal_ip6: found.internal_ip6,
        wireguard_ip: applied
            .filter(|d| d.is_leader)
            .and_then(|d| d.wireguard.as_ref())
            .map(|w| w.address),
        granularity: topology.options.granularity,
        discovered_endpoints: learned_endpoints(tunnel_peers, &roaming_keys(topology)),
        unreachable,
    }
}

/// The keys of nodes and peers that announce a keepalive: those behind NAT,
/// whose endpoints others learn from this node.
fn roaming_keys(topology: &Topology) -> BTreeSet<PublicKey> {
    let nodes = topology
        .segments
        .iter()
        .flat_map(|s| &s.nodes)
        .filter(|n| n.persistent_keepalive > 0)
        .filter_map(|n| n.public_key);
    let peers = topology
        .peers
        .iter()
        .filter(|p| p.persistent_keepalive > 0)
        .map(|p| p.public_key);
    nodes.chain(peers).collect()
}

/// Where the handshakes of `roaming` keys came from, as the tunnel saw it.
pub fn learned_endpoints(
    tunnel_peers: &[PeerInfo],
    roaming: &BTreeSet<PublicKey>,
) -> BTreeMap<PublicKey, SocketAddr> {
    tunnel_peers
        .iter()
        .filter(|p| roaming.contains(&p.public_key) && p.last_handshake.is_some())
        .filter_map(|p| Some((p.public_key, p.endpoint?)))
        .collect()
}

/// Announces this node through the backend.
pub struct Announcer {
    addresses: Box<dyn AddressSource>,
    /// The watch over this segment's leader candidates (what it reports).
    pub watch: SegmentWatch,
    /// The last failure, so a lasting one is logged once.
    last_error: Option<String>,
}

impl Announcer {
    pub fn new(addresses: Box<dyn AddressSource>, watch: SegmentWatch) -> Self {
        Self {
            addresses,
            watch,
            last_error: None,
        }
    }

    /// Publishes the report; an error is returned once while it lasts
    /// (`Ok` after that), and an unreachable API not at all (the backend
    /// logs outages).
    pub fn announce(
        &mut self,
        backend: &mut dyn Backend,
        public_key: PublicKey,
        topology: &Topology,
        applied: Option<&DesiredState>,
        tunnel_peers: &[PeerInfo],
    ) -> Result<(), String> {
        let result = self.addresses.find().and_then(|found| {
            let report = self_report(
                public_key,
                &found,
                topology,
                applied,
                tunnel_peers,
                self.watch.report(),
            );
            match backend.publish(&report) {
                Ok(()) | Err(BackendError::Unavailable) => Ok(()),
                Err(e) => Err(format!("announcing this node: {e}")),
            }
        });
        match &result {
            Err(e) if self.last_error.as_ref() == Some(e) => return Ok(()),
            Err(e) => self.last_error = Some(e.clone()),
            Ok(()) => self.last_error = None,
        }
        result
    }
}

/// The host's own addresses, chosen by Kilo's rules ([`discover`]).
pub struct HostAddresses {
    /// What the hostname resolves to, once known.
    hostname_ips: Vec<IpAddr>,
    /// The lookup, while it runs: a node with unreachable DNS must not hold
    /// up its own announcement for the resolver's timeouts.
    lookup: Option<Receiver<Vec<IpAddr>>>,
    /// Interfaces whose addresses are the mesh's own.
    ignore: Vec<String>,
    internal_cidrs: Vec<IpNet>,
    /// Announce the internal IP as the endpoint (Kilo's
    /// `--prioritise-private-addresses`).
    private_endpoint: bool,
}

impl HostAddresses {
    /// Starts resolving `hostname` on a thread of its own and waits up to
    /// 1 s for it; a slower answer is taken when it comes (the first
    /// announcements then go out without that hint).
    pub fn new(hostname: &str, ignore: Vec<String>, internal_cidrs: Vec<IpNet>) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let name = hostname.to_string();
        let _ = std::thread::Builder::new()
            .name("hostname-lookup".into())
            .spawn(move || {
                let _ = tx.send(discover::resolve_hostname(&name));
            });
        let (hostname_ips, lookup) = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(ips) => (ips, None),
            Err(RecvTimeoutError::Timeout) => (Vec::new(), Some(rx)),
            Err(RecvTimeoutError::Disconnected) => (Vec::new(), None),
        };
        Self {
            hostname_ips,
            lookup,
            ignore,
            internal_cidrs,
            private_endpoint: false,
        }
    }

    /// Announces the internal IP as the endpoint where there is one.
    pub fn with_private_endpoint(self, on: bool) -> Self {
        Self {
            private_endpoint: on,
            ..self
        }
    }
}

impl AddressSource for HostAddresses {
    fn find(&mut self) -> Result<Discovered, String> {
        if let Some(rx) = &self.lookup {
            match rx.try_recv() {
                Ok(ips) => {
                    tracing::debug!(?ips, "the hostname resolves to");
                    self.hostname_ips = ips;
                    self.lookup = None;
                }
                Err(TryRecvError::Disconnected) => self.lookup = None,
                Err(TryRecvError::Empty) => {}
            }
        }
        let candidates = discover::candidates(&self.hostname_ips)
            .map_err(|e| format!("reading this node's addresses: {e}"))?;
        let ignore: Vec<&str> = self.ignore.iter().map(String::as_str).collect();
        let found = discover::choose(&candidates, &ignore, &self.internal_cidrs)
            .map_err(|e| e.to_string())?;
        Ok(if self.private_endpoint {
            found.with_private_endpoint()
        } else {
            found
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::testing::{key_for, node, snapshot};
    use crate::mesh::{Liveness, MeshOptions};
    use std::time::{Duration, SystemTime};

    fn peer_info(name: &str, endpoint: &str, handshake: bool) -> PeerInfo {
        PeerInfo {
            public_key: key_for(name),
            preshared_key: None,
            endpoint: Some(endpoint.parse().unwrap()),
            last_handshake: handshake.then(|| SystemTime::now() - Duration::from_secs(3)),
            rx_bytes: 0,
            tx_bytes: 0,
            persistent_keepalive: 0,
            allowed_ips: Vec::new(),
            reachable: None,
        }
    }

    #[test]
    fn the_wireguard_address_is_announced_only_while_a_tunnel_with_it_is_applied() {
        let mut roaming = node(
            "b",
            "gcp",
            "198.51.100.7:51820",
            None,
            "10.42.1.0/24",
            false,
        );
        roaming.persistent_keepalive = 25;
        let a = node(
            "a",
            "aws",
            "203.0.113.1:51820",
            Some("10.0.0.1/24"),
            "10.42.0.0/24",
            false,
        );
        let snap = snapshot(vec![a, roaming], vec![]);
        let t = Topology::new(&snap, &MeshOptions::default(), Liveness::at(0)).unwrap();
        let desired = t.desired_state("a").unwrap();
        let found = Discovered {
            internal_ip: Some("10.0.0.1/24".parse().unwrap()),
            internal_ip6: None,
            public_ip: "203.0.113.1".parse().unwrap(),
        };
        let tunnel = [
            peer_info("b", "198.51.100.7:40000", true),
            peer_info("c", "198.51.100.8:40000", true),
        ];
        let before = self_report(key_for("a"), &found, &t, None, &tunnel, None);
        assert_eq!(before.wireguard_ip, None, "nothing applied yet");
        assert_eq!(before.endpoint, "203.0.113.1:51820");
        let after = self_report(key_for("a"), &found, &t, Some(&desired), &tunnel, None);
        assert_eq!(
            after.wireguard_ip,
            desired.wireguard.as_ref().map(|w| w.address)
        );
        // b keeps alive (behind NAT): its endpoint is shared; c is not in
        // the mesh's roaming set.
        assert_eq!(
            after.discovered_endpoints.into_iter().collect::<Vec<_>>(),
            [(key_for("b"), "198.51.100.7:40000".parse().unwrap())]
        );
    }

    #[test]
    fn an_endpoint_without_a_handshake_is_not_learned() {
        let roaming: BTreeSet<_> = [key_for("b")].into();
        let tunnel = [peer_info("b", "198.51.100.7:40000", false)];
        assert!(learned_endpoints(&tunnel, &roaming).is_empty());
    }
}
