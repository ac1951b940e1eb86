//! What one node should have, derived from the topology: its WireGuard
//! configuration (if it runs a tunnel), its routes, and what to masquerade.
//! The reconciler applies exactly this and nothing else.
//!
//! Deviations from Kilo, and why:
//! - Routes over the tunnel name the WireGuard device without a gateway.
//!   Kilo routes via the remote leader's WireGuard IP with `onlink`; the
//!   device does its own cryptokey routing, so the gateway adds nothing, and
//!   without it the same route works for IPv6 destinations too.
//! - A non-leader gets no WireGuard configuration at all (Kilo keeps the
//!   interface with stale addresses, down: issue #393).
//! - `cross` granularity (tunnels only between locations) is ours.
//! - Encapsulation inside a location uses VXLAN, since the target kernels
//!   may have no IPIP (Kilo uses IPIP).

use super::model::{Compatibility, Encapsulate, Endpoint};
use super::topology::Topology;
use ipnet::IpNet;
use std::net::IpAddr;
use wgconf::{PresharedKey, PublicKey};

/// Which device a route leaves through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteDevice {
    /// The node's WireGuard interface.
    WireGuard,
    /// The interface holding the node's internal IP.
    Private,
    /// The encapsulation (VXLAN) interface.
    Encapsulation,
    /// flannel's VXLAN device (`flannel.1`), in `--compatibility=flannel`:
    /// on-link to the gateway, which is a flannel VTEP address.
    Flannel,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub device: RouteDevice,
    /// Preferred source address.
    pub src: Option<IpAddr>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PeerConfig {
    /// The segment key or Peer name, for humans.
    pub name: String,
    pub public_key: PublicKey,
    pub endpoint: Option<Endpoint>,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: u16,
    pub preshared_key: Option<PresharedKey>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WireGuardConfig {
    /// The node's WireGuard address with the pool prefix (10.4.0.1/16).
    pub address: IpNet,
    pub listen_port: u16,
    pub mtu: u16,
    pub peers: Vec<PeerConfig>,
}

/// Masquerading: traffic from `sources` to anything outside `mesh` is
/// source-NATed, so pods and peers reach the internet through the node.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Masquerade {
    pub sources: Vec<IpNet>,
    pub mesh: Vec<IpNet>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DesiredState {
    pub node: String,
    pub segment: String,
    pub is_leader: bool,
    pub wireguard: Option<WireGuardConfig>,
    pub routes: Vec<Route>,
    pub masquerade: Masquerade,
    /// Whether an encapsulation device is needed (some route uses it).
    pub encapsulation: bool,
    /// The node's private address (the encapsulation's underlay source).
    pub private_ip: Option<IpNet>,
    /// The node's pod CIDRs: the CNI configuration's ranges, and the
    /// families forwarding must be on for.
    pub pod_cidrs: Vec<IpNet>,
    /// The mesh's MTU, which pods' interfaces take.
    pub mtu: u16,
    /// Add-on mode (`local` off): the routes go in a table of Weft's own,
    /// consulted before the main one, so the other CNI's routes in main
    /// (some to the same prefixes) stay exactly as it made them.
    pub own_table: bool,
}

impl DesiredState {
    /// Puts in the MTU an agent measured (for `Mtu::Auto`): the tunnel's,
    /// and the pods' interfaces', which must fit through it.
    pub fn set_mtu(&mut self, mtu: u16) {
        self.mtu = mtu;
        if let Some(wg) = &mut self.wireguard {
            wg.mtu = mtu;
        }
    }
}

fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

impl Topology {
    /// The desired state of `node`, or `None` if it is not in the mesh.
    pub fn desired_state(&self, node: &str) -> Option<DesiredState> {
        let (si, ni) = self.find(node)?;
        let seg = &self.segments[si];
        let me = &seg.nodes[ni];
        let is_leader = seg.leader == ni;
        let private = me.internal_ip;
        // VXLAN runs over the IPv4 private network: an IPv6 next hop (the
        // node's internal IPv6) is routed to directly.
        let encapsulate = |gw: IpAddr| match self.options.encapsulate {
            Encapsulate::Never => false,
            Encapsulate::Always => gw.is_ipv4(),
            Encapsulate::CrossSubnet => gw.is_ipv4() && !private.is_some_and(|c| c.contains(&gw)),
        };
        let via_private = |dst: IpNet, gw: IpAddr| Route {
            dst,
            gateway: Some(gw),
            device: if encapsulate(gw) {
                RouteDevice::Encapsulation
            } else {
                RouteDevice::Private
            },
            src: None,
        };
        let mut routes = Vec::new();

        // Inside the segment (and, under cross, inside the location): other
        // nodes' pod CIDRs over the private network, unless another CNI
        // keeps the location (add-on mode).
        let local_nodes = self
            .segments
            .iter()
            .enumerate()
            .filter(|(j, s)| *j == si || (!self.tunnelled(si, *j) && s.location == seg.location))
            .flat_map(|(_, s)| &s.nodes)
            .filter(|n| n.name != me.name && self.options.local);
        for n in local_nodes {
            for c in &n.pod_cidrs {
                if let Some(gw) = n.private_for(c.addr()) {
                    routes.push(via_private(*c, gw));
                }
            }
        }

        let wireguard = if is_leader {
            let mut peers = Vec::new();
            for (j, other) in self.segments.iter().enumerate() {
                if !self.tunnelled(si, j) {
                    continue;
                }
                let Some(public_key) = other.leader().public_key else {
                    continue;
                };
                peers.push(PeerConfig {
                    name: other.key.clone(),
                    public_key,
                    endpoint: other.endpoint(&self.discovered),
                    allowed_ips: other.routed_ips(),
                    persistent_keepalive: me.persistent_keepalive,
                    preshared_key: None,
                });
                for dst in other.routed_ips() {
                    // The WireGuard IP is on-link through our own address's prefix.
                    if dst == host(other.wireguard_ip.addr()) {
                        continue;
                    }
                    // Kilo skips the private-IP route when it equals the endpoint IP.
                    if Some(dst)
                        == other
                            .leader()
                            .endpoint
                            .as_ref()
                            .and_then(Endpoint::ip)
                            .map(host)
                    {
                        continue;
                    }
                    routes.push(Route {
                        dst,
                        gateway: None,
                        device: RouteDevice::WireGuard,
                        src: me.private_for(dst.addr()),
                    });
                }
            }
            for p in &self.peers {
                let endpoint = if p.persistent_keepalive > 0 {
                    self.discovered
                        .get(&p.public_key)
                        .map(|a| Endpoint::Ip(*a))
                        .or_else(|| p.endpoint.clone())
                } else {
                    p.endpoint.clone()
                };
                peers.push(PeerConfig {
                    name: p.name.clone(),
                    public_key: p.public_key,
                    endpoint,
                    allowed_ips: p.allowed_ips.clone(),
                    persistent_keepalive: me.persistent_keepalive,
                    preshared_key: p.preshared_key,
                });
                for dst in &p.allowed_ips {
                    routes.push(Route {
                        dst: *dst,
                        gateway: None,
                        device: RouteDevice::WireGuard,
                        src: None,
                    });
                }
            }
            Some(WireGuardConfig {
                address: seg.wireguard_ip,
                listen_port: me
                    .endpoint
                    .as_ref()
                    .map_or(self.options.port, Endpoint::port),
                mtu: self.options.mtu.planned(),
                peers,
            })
        } else {
            // A non-leader sends everything outside its segment to its
            // leader: over the private network, or with flannel through
            // its VXLAN to the leader's VTEP (its pod CIDR's network
            // address, IPv4 only, as flannel's vxlan backend has it).
            let leader = seg.leader();
            let vtep = leader
                .pod_cidrs
                .iter()
                .find(|c| c.addr().is_ipv4())
                .map(|c| c.network());
            // To the leader's address of the destination's family (an IPv6
            // destination needs the leader's internal IPv6).
            let mut to_leader = |dst: IpNet| {
                routes.extend(match self.options.compatibility {
                    Compatibility::Flannel => {
                        vtep.filter(|_| dst.addr().is_ipv4()).map(|gw| Route {
                            dst,
                            gateway: Some(gw),
                            device: RouteDevice::Flannel,
                            src: None,
                        })
                    }
                    Compatibility::None => leader
                        .private_for(dst.addr())
                        .map(|gw| via_private(dst, gw)),
                });
            };
            for (j, other) in self.segments.iter().enumerate() {
                let wireguard_ip = host(other.wireguard_ip.addr());
                to_leader(wireguard_ip);
                if j == si {
                    continue;
                }
                for dst in other.routed_ips() {
                    if dst != wireguard_ip {
                        to_leader(dst);
                    }
                }
            }
            for dst in self.peers.iter().flat_map(|p| &p.allowed_ips) {
                to_leader(*dst);
            }
            None
        };
        routes.sort();
        routes.dedup();

        let mut mesh: Vec<IpNet> = self.segments.iter().flat_map(|s| s.routed_ips()).collect();
        mesh.extend(
            self.peers
                .iter()
                .flat_map(|p| p.allowed_ips.iter().copied()),
        );
        mesh.push(self.options.subnet.trunc());
        let mut sources = me.pod_cidrs.clone();
        if is_leader {
            sources.extend(
                self.peers
                    .iter()
                    .flat_map(|p| p.allowed_ips.iter().copied()),
            );
        }
        let encapsulation = routes
            .iter()
            .any(|r| r.device == RouteDevice::Encapsulation);
        Some(DesiredState {
            node: me.name.clone(),
            segment: seg.key.clone(),
            is_leader,
            wireguard,
            routes,
            masquerade: Masquerade { sources, mesh },
            encapsulation,
            private_ip: private,
            pod_cidrs: me.pod_cidrs.clone(),
            mtu: self.options.mtu.planned(),
            own_table: !self.options.local,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{Encapsulate, Granularity, MeshOptions};
    use crate::testing::{node, peer, snapshot};
    use crate::topology::Topology;

    fn three_locations(granularity: Granularity) -> Topology {
        let s = snapshot(
            vec![
                node(
                    "a1",
                    "aws",
                    "3.0.0.1:51820",
                    Some("10.0.0.1/24"),
                    "10.42.0.0/24",
                    false,
                ),
                node(
                    "a2",
                    "aws",
                    "3.0.0.2:51820",
                    Some("10.0.0.2/24"),
                    "10.42.1.0/24",
                    false,
                ),
                node(
                    "g1",
                    "gcp",
                    "35.0.0.1:51820",
                    Some("10.1.0.1/24"),
                    "10.42.2.0/24",
                    false,
                ),
                node(
                    "h1",
                    "home",
                    "81.0.0.1:4000",
                    Some("192.168.1.10/24"),
                    "10.42.3.0/24",
                    false,
                ),
            ],
            vec![peer("laptop", &["10.5.0.1/32"])],
        );
        let opts = MeshOptions {
            granularity,
            ..Default::default()
        };
        Topology::new(&s, &opts, 0).unwrap()
    }

    fn routes(t: &Topology, node: &str) -> Vec<String> {
        t.desired_state(node)
            .unwrap()
            .routes
            .iter()
            .map(|r| {
                format!(
                    "{} {:?}{}",
                    r.dst,
                    r.device,
                    r.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
                )
            })
            .collect()
    }

    #[test]
    fn leader_peers_with_other_segments_and_peers() {
        let t = three_locations(Granularity::Location);
        let d = t.desired_state("a1").unwrap();
        assert!(d.is_leader);
        let wg = d.wireguard.unwrap();
        assert_eq!(wg.address.to_string(), "10.4.0.1/16");
        assert_eq!(wg.listen_port, 51820);
        let names: Vec<&str> = wg.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["location:gcp", "location:home", "laptop"]);
        let gcp: Vec<String> = wg.peers[0]
            .allowed_ips
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(gcp, ["10.42.2.0/24", "10.1.0.1/32", "10.4.0.2/32"]);
        assert_eq!(
            wg.peers[1].endpoint.as_ref().unwrap().to_string(),
            "81.0.0.1:4000"
        );
        let r = routes(&t, "a1");
        assert!(
            r.contains(&"10.42.1.0/24 Private via 10.0.0.2".to_string()),
            "{r:?}"
        );
        assert!(r.contains(&"10.42.2.0/24 WireGuard".to_string()), "{r:?}");
        assert!(r.contains(&"10.5.0.1/32 WireGuard".to_string()), "{r:?}");
        assert!(!r.iter().any(|x| x.starts_with("10.4.0.2/32")), "{r:?}");
    }

    /// Add-on mode over flannel (`local: false`, `compatibility: flannel`):
    /// nothing inside a location (flannel's), a member reaches its leader
    /// through `flannel.1` at the leader's VTEP (its pod CIDR's network
    /// address), the leader's tunnel as always, all in Weft's own table.
    #[test]
    fn over_flannel_only_locations_are_joined() {
        let mut t = three_locations(Granularity::Location);
        t.options.local = false;
        t.options.compatibility = crate::model::Compatibility::Flannel;
        let leader = t.desired_state("a1").unwrap();
        assert!(leader.own_table);
        let r = routes(&t, "a1");
        assert!(
            !r.iter().any(|x| x.starts_with("10.42.1.0/24")),
            "a2's pods are flannel's: {r:?}"
        );
        assert!(r.contains(&"10.42.2.0/24 WireGuard".to_string()), "{r:?}");
        let r = routes(&t, "a2");
        assert!(
            !r.iter().any(|x| x.starts_with("10.42.0.0/24")),
            "a1's pods are flannel's: {r:?}"
        );
        for want in [
            "10.42.2.0/24 Flannel via 10.42.0.0",
            "10.42.3.0/24 Flannel via 10.42.0.0",
            "10.1.0.1/32 Flannel via 10.42.0.0",
            "10.4.0.2/32 Flannel via 10.42.0.0",
            "10.5.0.1/32 Flannel via 10.42.0.0",
        ] {
            assert!(r.contains(&want.to_string()), "{want} in {r:?}");
        }
        assert!(r.iter().all(|x| x.contains("Flannel")), "{r:?}");
        assert!(!t.desired_state("a2").unwrap().encapsulation);
        // Without flannel, add-on mode still routes to the leader over the
        // private network, and still leaves the location alone.
        t.options.compatibility = crate::model::Compatibility::None;
        let r = routes(&t, "a2");
        assert!(
            r.contains(&"10.42.2.0/24 Private via 10.0.0.1".to_string()),
            "{r:?}"
        );
        assert!(!r.iter().any(|x| x.starts_with("10.42.0.0/24")), "{r:?}");
    }

    /// Dual stack: every node has an IPv4 and an IPv6 pod CIDR and internal
    /// address. IPv6 goes to the same next hops as IPv4, by their IPv6
    /// addresses, and never into VXLAN (an IPv4 underlay).
    #[test]
    fn both_families_go_the_same_way() {
        let dual = |name: &str, loc: &str, ep: &str, v4: &str, v6: &str, i: u8| {
            let mut n = node(name, loc, ep, Some(v4), &format!("10.42.{i}.0/24"), false);
            n.internal_ip6 = Some(v6.parse().unwrap());
            n.pod_cidrs
                .push(format!("fd42:0:0:{i}::/64").parse().unwrap());
            n
        };
        let s = snapshot(
            vec![
                dual(
                    "a1",
                    "aws",
                    "3.0.0.1:51820",
                    "10.0.0.1/24",
                    "fd00:a::1/64",
                    0,
                ),
                dual(
                    "a2",
                    "aws",
                    "3.0.0.2:51820",
                    "10.0.0.2/24",
                    "fd00:a::2/64",
                    1,
                ),
                dual(
                    "g1",
                    "gcp",
                    "[2001:db8::21]:51820",
                    "10.1.0.1/24",
                    "fd00:b::1/64",
                    2,
                ),
            ],
            vec![],
        );
        let opts = MeshOptions {
            encapsulate: Encapsulate::Always,
            ..Default::default()
        };
        let t = Topology::new(&s, &opts, 0).unwrap();
        let r = routes(&t, "a1");
        for want in [
            "10.42.1.0/24 Encapsulation via 10.0.0.2",
            "fd42:0:0:1::/64 Private via fd00:a::2",
            "10.42.2.0/24 WireGuard",
            "fd42:0:0:2::/64 WireGuard",
        ] {
            assert!(r.contains(&want.to_string()), "{want} in {r:?}");
        }
        let leader = t.desired_state("a1").unwrap();
        let src = |dst: &str| {
            leader
                .routes
                .iter()
                .find(|r| r.dst.to_string() == dst)
                .and_then(|r| r.src)
                .map(|a| a.to_string())
        };
        assert_eq!(src("fd42:0:0:2::/64").as_deref(), Some("fd00:a::1"));
        assert_eq!(src("10.42.2.0/24").as_deref(), Some("10.0.0.1"));
        let gcp = &leader.wireguard.unwrap().peers[0];
        assert!(gcp
            .allowed_ips
            .contains(&"fd42:0:0:2::/64".parse().unwrap()));
        assert_eq!(
            gcp.endpoint.as_ref().unwrap().to_string(),
            "[2001:db8::21]:51820"
        );
        let r = routes(&t, "a2");
        for want in [
            "10.42.2.0/24 Encapsulation via 10.0.0.1",
            "fd42:0:0:2::/64 Private via fd00:a::1",
            "fd42::/64 Private via fd00:a::1",
        ] {
            assert!(r.contains(&want.to_string()), "{want} in {r:?}");
        }
        // Without an internal IPv6, a member routes IPv4 only (as Kilo).
        let mut v4_only = s.clone();
        v4_only.nodes[0].internal_ip6 = None;
        let t = Topology::new(&v4_only, &opts, 0).unwrap();
        let r = routes(&t, "a2");
        assert!(!r.iter().any(|x| x.starts_with("fd42:0:0:2::")), "{r:?}");
    }

    #[test]
    fn non_leader_routes_through_its_leader() {
        let t = three_locations(Granularity::Location);
        let d = t.desired_state("a2").unwrap();
        assert!(!d.is_leader);
        assert!(d.wireguard.is_none());
        let r = routes(&t, "a2");
        for want in [
            "10.42.0.0/24 Private via 10.0.0.1",
            "10.42.2.0/24 Private via 10.0.0.1",
            "10.4.0.2/32 Private via 10.0.0.1",
            "10.5.0.1/32 Private via 10.0.0.1",
        ] {
            assert!(r.contains(&want.to_string()), "missing {want} in {r:?}");
        }
    }

    #[test]
    fn cross_keeps_a_location_on_its_private_network() {
        let t = three_locations(Granularity::Cross);
        let d = t.desired_state("a2").unwrap();
        let wg = d.wireguard.unwrap();
        let names: Vec<&str> = wg.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["node:g1", "node:h1", "laptop"], "no tunnel to a1");
        let r = routes(&t, "a2");
        assert!(
            r.contains(&"10.42.0.0/24 Private via 10.0.0.1".to_string()),
            "{r:?}"
        );
        assert!(r.contains(&"10.42.2.0/24 WireGuard".to_string()), "{r:?}");
    }

    #[test]
    fn full_mesh_tunnels_everything() {
        let t = three_locations(Granularity::Full);
        let wg = t.desired_state("a2").unwrap().wireguard.unwrap();
        assert_eq!(wg.peers.len(), 4);
        assert_eq!(wg.address.to_string(), "10.4.0.2/16");
    }

    #[test]
    fn encapsulation_modes() {
        let s = snapshot(
            vec![
                node(
                    "a",
                    "x",
                    "3.0.0.1:51820",
                    Some("10.0.0.1/24"),
                    "10.42.0.0/24",
                    false,
                ),
                node(
                    "b",
                    "x",
                    "3.0.0.2:51820",
                    Some("10.0.0.2/24"),
                    "10.42.1.0/24",
                    false,
                ),
                node(
                    "c",
                    "x",
                    "3.0.0.3:51820",
                    Some("10.0.9.3/24"),
                    "10.42.2.0/24",
                    false,
                ),
            ],
            vec![],
        );
        for (mode, want_b, want_c) in [
            (Encapsulate::Never, "Private", "Private"),
            (Encapsulate::CrossSubnet, "Private", "Encapsulation"),
            (Encapsulate::Always, "Encapsulation", "Encapsulation"),
        ] {
            let opts = MeshOptions {
                encapsulate: mode,
                ..Default::default()
            };
            let t = Topology::new(&s, &opts, 0).unwrap();
            let r = routes(&t, "a");
            assert!(
                r.contains(&format!("10.42.1.0/24 {want_b} via 10.0.0.2")),
                "{mode:?} {r:?}"
            );
            assert!(
                r.contains(&format!("10.42.2.0/24 {want_c} via 10.0.9.3")),
                "{mode:?} {r:?}"
            );
            assert_eq!(
                t.desired_state("a").unwrap().encapsulation,
                mode != Encapsulate::Never
            );
        }
    }

    #[test]
    fn masquerade_sources_and_mesh() {
        let t = three_locations(Granularity::Location);
        let d = t.desired_state("a1").unwrap();
        let src: Vec<String> = d.masquerade.sources.iter().map(|c| c.to_string()).collect();
        assert_eq!(src, ["10.42.0.0/24", "10.5.0.1/32"]);
        assert!(d.masquerade.mesh.contains(&"10.42.3.0/24".parse().unwrap()));
        assert!(d.masquerade.mesh.contains(&"10.4.0.0/16".parse().unwrap()));
    }

    #[test]
    fn ipv6_pod_cidrs_ride_the_tunnel() {
        let mut a = node(
            "a",
            "x",
            "3.0.0.1:51820",
            Some("10.0.0.1/24"),
            "10.42.0.0/24",
            false,
        );
        a.pod_cidrs.push("fd42::/64".parse().unwrap());
        let mut b = node(
            "b",
            "y",
            "3.0.0.2:51820",
            Some("10.1.0.1/24"),
            "10.42.1.0/24",
            false,
        );
        b.pod_cidrs.push("fd42:1::/64".parse().unwrap());
        let t = Topology::new(&snapshot(vec![a, b], vec![]), &MeshOptions::default(), 0).unwrap();
        let wg = t.desired_state("a").unwrap().wireguard.unwrap();
        assert!(wg.peers[0]
            .allowed_ips
            .contains(&"fd42:1::/64".parse().unwrap()));
        assert!(routes(&t, "a").contains(&"fd42:1::/64 WireGuard".to_string()));
    }
}
