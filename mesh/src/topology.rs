//! The whole mesh, computed the same way on every node from the same inputs,
//! so nodes agree without talking: segments, their leaders, WireGuard IPs and
//! AllowedIPs. The rules follow Kilo's `pkg/mesh` so that a Kilo node and a
//! Weft node given one cluster state agree on every AllowedIP and IP; where
//! Weft differs it says so in `DEVIATIONS` (see `docs`-style comments below).

use super::liveness::Liveness;
use super::model::{Endpoint, Granularity, MeshOptions, Node, Peer, RecordError, Snapshot};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use wgconf::PublicKey;

/// A group of nodes reached through one WireGuard endpoint (its leader).
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// `location:<name>` or `node:<name>`; segments sort by it.
    pub key: String,
    pub location: String,
    /// Sorted by name.
    pub nodes: Vec<Node>,
    pub leader: usize,
    /// The leader's WireGuard address with the pool's prefix (10.4.0.1/16).
    pub wireguard_ip: IpNet,
    /// What the segment owns: every pod CIDR, every internal IP as a host
    /// route, and the leader's WireGuard IP as a host route.
    pub allowed_ips: Vec<IpNet>,
    /// Extra prefixes routed to the segment, after the overlap filter.
    pub location_ips: Vec<IpNet>,
}

impl Segment {
    pub fn leader(&self) -> &Node {
        &self.nodes[self.leader]
    }

    /// The leader's endpoint, replaced by a learned NAT endpoint when the
    /// leader says it roams (keepalive > 0).
    pub fn endpoint(&self, discovered: &BTreeMap<PublicKey, SocketAddr>) -> Option<Endpoint> {
        let leader = self.leader();
        if leader.persistent_keepalive > 0 {
            if let Some(a) = leader.public_key.and_then(|k| discovered.get(&k)) {
                return Some(Endpoint::Ip(*a));
            }
        }
        leader.endpoint.clone()
    }

    /// Everything routed to this segment over WireGuard.
    pub fn routed_ips(&self) -> Vec<IpNet> {
        let mut v = self.allowed_ips.clone();
        v.extend(self.location_ips.iter().copied());
        v
    }
}

/// A record left out of the topology and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Excluded {
    pub kind: &'static str,
    pub name: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Topology {
    pub options: MeshOptions,
    pub segments: Vec<Segment>,
    /// Sorted by name, allowed IPs de-duplicated.
    pub peers: Vec<Peer>,
    /// NAT endpoints learned by the nodes, merged.
    pub discovered: BTreeMap<PublicKey, SocketAddr>,
    pub excluded: Vec<Excluded>,
    /// Prefixes a Peer or a node's `allowed-location-ips` claimed inside
    /// what a node owns (its pod CIDRs, internal IP, WireGuard IP): dropped,
    /// the owner keeps them. For Events on the claimant.
    pub claims: Vec<RecordError>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TopologyError {
    #[error("the WireGuard subnet {subnet} has no address left for segment {segment}")]
    SubnetExhausted { subnet: IpNet, segment: String },
}

/// Kilo's deterministic leader choice over name-sorted nodes: the first
/// annotated node with a public endpoint, else the first annotated node, else
/// the first with a public endpoint, else the first.
pub fn find_leader(nodes: &[Node]) -> usize {
    super::failover::leader_order(nodes)
        .first()
        .copied()
        .unwrap_or(0)
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl Topology {
    /// Builds the mesh from a snapshot. `clock` judges check-in ages (unix
    /// seconds now, or a [`Liveness`] that knows when the API was away).
    pub fn new(
        snapshot: &Snapshot,
        options: &MeshOptions,
        clock: impl Into<Liveness>,
    ) -> Result<Self, TopologyError> {
        let clock = clock.into();
        let mut excluded = Vec::new();
        let mut ready: Vec<&Node> = Vec::new();
        for n in &snapshot.nodes {
            match n.not_ready(&clock) {
                None => ready.push(n),
                Some(reason) => excluded.push(Excluded {
                    kind: "node",
                    name: n.name.clone(),
                    reason: reason.to_string(),
                }),
            }
        }
        // Group into segments by key; a BTreeMap sorts keys as Kilo does.
        let mut groups: BTreeMap<String, Vec<Node>> = BTreeMap::new();
        for n in ready {
            let key = match options.granularity {
                Granularity::Location if n.internal_ip.is_some() => {
                    format!("location:{}", n.location)
                }
                _ => format!("node:{}", n.name),
            };
            groups.entry(key).or_default().push(n.clone());
        }
        let mut hosts = options.subnet.hosts();
        let mut segments = Vec::new();
        for (key, mut nodes) in groups {
            nodes.sort_by(|a, b| a.name.cmp(&b.name));
            // Kilo's choice, unless the segment's own reports say that
            // candidate is down (see `failover`).
            let leader = super::failover::choose_leader(&nodes);
            let ip = hosts.next().ok_or_else(|| TopologyError::SubnetExhausted {
                subnet: options.subnet,
                segment: key.clone(),
            })?;
            let wireguard_ip =
                IpNet::new(ip, options.subnet.prefix_len()).unwrap_or(options.subnet);
            let mut allowed_ips: Vec<IpNet> = nodes
                .iter()
                .flat_map(|n| n.pod_cidrs.iter().copied())
                .collect();
            allowed_ips.extend(
                nodes
                    .iter()
                    .filter_map(|n| n.internal_ip)
                    .map(|c| host_net(c.addr())),
            );
            allowed_ips.push(host_net(ip));
            let mut location_ips: Vec<IpNet> = Vec::new();
            for n in &nodes {
                for c in &n.allowed_location_ips {
                    if !location_ips.contains(c) {
                        location_ips.push(*c);
                    }
                }
            }
            segments.push(Segment {
                key,
                location: nodes[0].location.clone(),
                nodes,
                leader,
                wireguard_ip,
                allowed_ips,
                location_ips,
            });
        }
        let owned = owned_prefixes(&segments);
        let mut claims = Vec::new();
        let peers = drop_peer_claims(&snapshot.peers, &owned, &mut claims, &mut excluded);
        let peers = deduplicate_peer_ips(&peers, &mut excluded);
        filter_location_ips(&mut segments, &peers, &owned, &mut claims, &mut excluded);
        let discovered = merge_discovered(&segments);
        Ok(Self {
            options: options.clone(),
            segments,
            peers,
            discovered,
            excluded,
            claims,
        })
    }

    /// The segment holding `node`, and the node's index in it.
    pub fn find(&self, node: &str) -> Option<(usize, usize)> {
        self.segments.iter().enumerate().find_map(|(s, seg)| {
            seg.nodes
                .iter()
                .position(|n| n.name == node)
                .map(|i| (s, i))
        })
    }

    /// Where `node`'s cross-location traffic is carried to over the
    /// underlay: the endpoints of the segments its segment has tunnels to
    /// and of the Peers (what its leader's tunnel sends to; the agent
    /// measures the path to each to find the tunnel's MTU). Empty when
    /// the node is not in the mesh or its segment has nobody to reach.
    pub fn underlay_targets(&self, node: &str) -> Vec<Endpoint> {
        let Some((si, _)) = self.find(node) else {
            return Vec::new();
        };
        let mut out: Vec<Endpoint> = (0..self.segments.len())
            .filter(|&j| self.tunnelled(si, j))
            .filter_map(|j| self.segments[j].endpoint(&self.discovered))
            .chain(self.peers.iter().filter_map(|p| p.endpoint.clone()))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether two segments are joined by a tunnel: always, except between
    /// segments of one location under `cross` granularity.
    pub fn tunnelled(&self, a: usize, b: usize) -> bool {
        a != b
            && !(self.options.granularity == Granularity::Cross
                && self.segments[a].location == self.segments[b].location)
    }
}

/// Every prefix a node owns in the mesh, with words naming its owner.
fn owned_prefixes(segments: &[Segment]) -> Vec<(IpNet, String)> {
    let mut owned = Vec::new();
    for s in segments {
        for n in &s.nodes {
            for c in &n.pod_cidrs {
                owned.push((*c, format!("a pod CIDR of node {}", n.name)));
            }
            if let Some(ip) = n.internal_ip {
                owned.push((
                    host_net(ip.addr()),
                    format!("the internal IP of node {}", n.name),
                ));
            }
        }
        owned.push((
            host_net(s.wireguard_ip.addr()),
            format!("the WireGuard IP of node {}", s.leader().name),
        ));
    }
    owned
}

/// The node that owns `c` (a prefix of its, or one inside it), if any. A
/// broader prefix (a peer's default route) takes nothing: the node's longer
/// prefix wins every lookup.
fn owner_of<'a>(c: &IpNet, owned: &'a [(IpNet, String)]) -> Option<&'a (IpNet, String)> {
    owned.iter().find(|(a, _)| a.contains(c))
}

/// A Peer may not claim what a node owns (Kilo accepts it, and the prefix
/// then moves between the node's peer and the Peer at every resync): the
/// claim is dropped and reported; a Peer left with nothing is excluded.
fn drop_peer_claims(
    peers: &[Peer],
    owned: &[(IpNet, String)],
    claims: &mut Vec<RecordError>,
    excluded: &mut Vec<Excluded>,
) -> Vec<Peer> {
    let mut out = Vec::new();
    for p in peers {
        let mut p = p.clone();
        p.allowed_ips.retain(|c| match owner_of(c, owned) {
            Some((a, owner)) => {
                claims.push(RecordError {
                    kind: "peer",
                    name: p.name.clone(),
                    field: "allowedIPs".into(),
                    reason: format!("{c} lies in {a}, {owner}, which keeps it; ignored"),
                });
                false
            }
            None => true,
        });
        if p.allowed_ips.is_empty() {
            excluded.push(Excluded {
                kind: "peer",
                name: p.name.clone(),
                reason: "all its allowed IPs belong to nodes".into(),
            });
        } else {
            out.push(p);
        }
    }
    out
}

/// Two peers claiming one prefix: the peer whose name sorts first keeps it
/// (Kilo's rule, which never flaps). A peer left with nothing is excluded.
fn deduplicate_peer_ips(peers: &[Peer], excluded: &mut Vec<Excluded>) -> Vec<Peer> {
    let mut sorted: Vec<Peer> = peers.to_vec();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut taken: Vec<IpNet> = Vec::new();
    let mut out = Vec::new();
    for mut p in sorted {
        p.allowed_ips.retain(|ip| {
            if taken.contains(ip) {
                false
            } else {
                taken.push(*ip);
                true
            }
        });
        if p.allowed_ips.is_empty() {
            excluded.push(Excluded {
                kind: "peer",
                name: p.name.clone(),
                reason: "all its allowed IPs belong to peers that sort first".into(),
            });
        } else {
            out.push(p);
        }
    }
    out
}

/// Kilo's filter: a location IP is dropped if it overlaps another segment's
/// location IPs, lies inside any segment's allowed IPs, or overlaps any peer's.
/// One that lies inside what a node owns is also reported on the nodes that
/// carry the annotation, naming the owner.
fn filter_location_ips(
    segments: &mut [Segment],
    peers: &[Peer],
    owned: &[(IpNet, String)],
    claims: &mut Vec<RecordError>,
    excluded: &mut Vec<Excluded>,
) {
    let all_location: Vec<(usize, IpNet)> = segments
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.location_ips.iter().map(move |c| (i, *c)))
        .collect();
    let all_allowed: Vec<IpNet> = segments
        .iter()
        .flat_map(|s| s.allowed_ips.iter().copied())
        .collect();
    for (i, seg) in segments.iter_mut().enumerate() {
        seg.location_ips.retain(|c| {
            let clash = all_location.iter().any(|(j, o)| *j != i && overlaps(c, o))
                || all_allowed.iter().any(|a| a.contains(c))
                || peers
                    .iter()
                    .flat_map(|p| &p.allowed_ips)
                    .any(|a| overlaps(c, a));
            if let Some((a, owner)) = owner_of(c, owned) {
                for n in seg
                    .nodes
                    .iter()
                    .filter(|n| n.allowed_location_ips.contains(c))
                {
                    claims.push(RecordError {
                        kind: "node",
                        name: n.name.clone(),
                        field: "kilo.squat.ai/allowed-location-ips".into(),
                        reason: format!("{c} lies in {a}, {owner}, which keeps it; ignored"),
                    });
                }
            }
            if clash {
                excluded.push(Excluded {
                    kind: "allowed-location-ip",
                    name: c.to_string(),
                    reason: format!("overlaps other mesh addresses (segment {})", seg.key),
                });
            }
            !clash
        });
    }
}

/// Each node's learned endpoints, first come first served in segment and
/// node order.
fn merge_discovered(segments: &[Segment]) -> BTreeMap<PublicKey, SocketAddr> {
    let mut out = BTreeMap::new();
    for n in segments.iter().flat_map(|s| &s.nodes) {
        for (k, a) in &n.discovered_endpoints {
            out.entry(*k).or_insert(*a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, peer, snapshot};

    /// a and b in aws, c in gcp at `gcp_endpoint`.
    fn two_aws_one_gcp(gcp_endpoint: &str) -> Vec<Node> {
        vec![
            node(
                "a",
                "aws",
                "3.0.0.1:51820",
                Some("10.0.0.1/24"),
                "10.42.0.0/24",
                false,
            ),
            node(
                "b",
                "aws",
                "3.0.0.2:51820",
                Some("10.0.0.2/24"),
                "10.42.1.0/24",
                false,
            ),
            node(
                "c",
                "gcp",
                gcp_endpoint,
                Some("10.1.0.1/24"),
                "10.42.2.0/24",
                false,
            ),
        ]
    }

    #[test]
    fn location_segments_leaders_and_ips() {
        let s = snapshot(
            vec![
                node(
                    "b",
                    "aws",
                    "3.0.0.2:51820",
                    Some("10.0.0.2/24"),
                    "10.42.1.0/24",
                    false,
                ),
                node(
                    "a",
                    "aws",
                    "3.0.0.1:51820",
                    Some("10.0.0.1/24"),
                    "10.42.0.0/24",
                    false,
                ),
                node(
                    "c",
                    "gcp",
                    "35.0.0.1:51820",
                    Some("10.1.0.1/24"),
                    "10.42.2.0/24",
                    false,
                ),
                node(
                    "d",
                    "onprem",
                    "192.168.1.9:51820",
                    None,
                    "10.42.3.0/24",
                    false,
                ),
            ],
            vec![],
        );
        let t = Topology::new(&s, &MeshOptions::default(), 0).unwrap();
        let keys: Vec<&str> = t.segments.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["location:aws", "location:gcp", "node:d"]);
        assert_eq!(t.segments[0].leader().name, "a");
        assert_eq!(t.segments[0].wireguard_ip.to_string(), "10.4.0.1/16");
        assert_eq!(t.segments[1].wireguard_ip.to_string(), "10.4.0.2/16");
        assert_eq!(t.segments[2].wireguard_ip.to_string(), "10.4.0.3/16");
        let aws: Vec<String> = t.segments[0]
            .allowed_ips
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            aws,
            [
                "10.42.0.0/24",
                "10.42.1.0/24",
                "10.0.0.1/32",
                "10.0.0.2/32",
                "10.4.0.1/32"
            ]
        );
    }

    #[test]
    fn underlay_targets_are_the_far_ends_of_the_tunnels() {
        let nodes = two_aws_one_gcp("[2600::1]:51820");
        let mut laptop = peer("laptop", &["10.5.0.1/32"]);
        laptop.endpoint = Some("198.51.100.7:51820".parse().unwrap());
        let s = snapshot(
            nodes.clone(),
            vec![laptop, peer("roaming", &["10.5.0.2/32"])],
        );
        let shown = |t: &Topology, n: &str| -> Vec<String> {
            t.underlay_targets(n)
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        let t = Topology::new(&s, &MeshOptions::default(), 0).unwrap();
        // Leader and member alike: gcp's leader and the Peer with an
        // endpoint (the member's traffic leaves through its leader, over
        // the same kind of underlay).
        assert_eq!(shown(&t, "a"), ["198.51.100.7:51820", "[2600::1]:51820"]);
        assert_eq!(shown(&t, "b"), shown(&t, "a"));
        assert_eq!(shown(&t, "c"), ["3.0.0.1:51820", "198.51.100.7:51820"]);
        assert!(t.underlay_targets("nobody").is_empty());
        // Full: a's segment tunnels to b's too.
        let full = MeshOptions {
            granularity: Granularity::Full,
            ..Default::default()
        };
        let t = Topology::new(&snapshot(nodes, vec![]), &full, 0).unwrap();
        assert_eq!(shown(&t, "a"), ["3.0.0.2:51820", "[2600::1]:51820"]);
    }

    /// `cross` as Kilo PR #490 (#328 rebased) computes it, on the nodes of
    /// Kilo's own topology tests: a segment per node (`node:NAME`, so the
    /// WireGuard IPs go by name), every node its own leader, each node's
    /// peers the nodes of *other* locations only (a node without an
    /// internal IP, d, counts as in its location there too), and the
    /// allowed IPs of `full`. The expectations are the PR's test table
    /// ("cross from a" .. "cross from d"), read from its diff.
    #[test]
    fn cross_is_kilo_pr_490s() {
        let mut b = node(
            "b",
            "2",
            "10.1.0.2:51820",
            Some("192.168.0.1/32"),
            "10.2.2.0/24",
            false,
        );
        b.allowed_location_ips = vec!["192.168.178.3/32".parse().unwrap()];
        let nodes = vec![
            node(
                "a",
                "1",
                "10.1.0.1:51820",
                Some("192.168.0.1/32"),
                "10.2.1.0/24",
                false,
            ),
            b,
            node(
                "c",
                "2",
                "10.1.0.3:51820",
                Some("192.168.0.2/32"),
                "10.2.3.0/24",
                false,
            ),
            node("d", "1", "10.1.0.4:51820", None, "10.2.4.0/24", false),
        ];
        let cross = MeshOptions {
            granularity: Granularity::Cross,
            ..Default::default()
        };
        let t = Topology::new(&snapshot(nodes, vec![]), &cross, 0).unwrap();
        let summary: Vec<(String, String, usize, Vec<String>)> = t
            .segments
            .iter()
            .map(|s| {
                (
                    s.key.clone(),
                    s.wireguard_ip.to_string(),
                    s.leader,
                    s.allowed_ips.iter().map(ToString::to_string).collect(),
                )
            })
            .collect();
        let row = |k: &str, w: &str, ips: &[&str]| {
            (
                k.to_string(),
                w.to_string(),
                0,
                ips.iter().map(|s| s.to_string()).collect(),
            )
        };
        assert_eq!(
            summary,
            [
                row(
                    "node:a",
                    "10.4.0.1/16",
                    &["10.2.1.0/24", "192.168.0.1/32", "10.4.0.1/32"]
                ),
                row(
                    "node:b",
                    "10.4.0.2/16",
                    &["10.2.2.0/24", "192.168.0.1/32", "10.4.0.2/32"]
                ),
                row(
                    "node:c",
                    "10.4.0.3/16",
                    &["10.2.3.0/24", "192.168.0.2/32", "10.4.0.3/32"]
                ),
                row("node:d", "10.4.0.4/16", &["10.2.4.0/24", "10.4.0.4/32"]),
            ]
        );
        assert_eq!(
            t.segments[1].location_ips,
            ["192.168.178.3/32".parse::<IpNet>().unwrap()]
        );
        let peers_of = |n: &str| -> Vec<String> {
            t.desired_state(n)
                .and_then(|d| d.wireguard)
                .map(|w| w.peers.into_iter().map(|p| p.name).collect())
                .unwrap_or_default()
        };
        assert_eq!(peers_of("a"), ["node:b", "node:c"]);
        assert_eq!(peers_of("b"), ["node:a", "node:d"]);
        assert_eq!(peers_of("c"), ["node:a", "node:d"]);
        assert_eq!(peers_of("d"), ["node:b", "node:c"]);
    }

    #[test]
    fn leader_rules() {
        let mk = |name: &str, ep: &str, leader: bool| {
            node(name, "x", ep, Some("10.0.0.1/24"), "10.42.0.0/24", leader)
        };
        // Annotated with a public IP beats annotated with a private one.
        let v = [
            mk("a", "10.0.0.1:1", true),
            mk("b", "1.1.1.1:1", true),
            mk("c", "2.2.2.2:1", false),
        ];
        assert_eq!(find_leader(&v), 1);
        // Annotated (private) beats unannotated public.
        let v = [mk("a", "2.2.2.2:1", false), mk("b", "10.0.0.2:1", true)];
        assert_eq!(find_leader(&v), 1);
        // No annotation: first public.
        let v = [mk("a", "10.0.0.1:1", false), mk("b", "1.1.1.1:1", false)];
        assert_eq!(find_leader(&v), 1);
        // Nothing: the first.
        let v = [mk("a", "10.0.0.1:1", false), mk("b", "10.0.0.2:1", false)];
        assert_eq!(find_leader(&v), 0);
    }

    #[test]
    fn full_and_cross_granularity() {
        let nodes = two_aws_one_gcp("35.0.0.1:51820");
        for g in [Granularity::Full, Granularity::Cross] {
            let opts = MeshOptions {
                granularity: g,
                ..Default::default()
            };
            let t = Topology::new(&snapshot(nodes.clone(), vec![]), &opts, 0).unwrap();
            assert_eq!(t.segments.len(), 3);
            assert_eq!(t.segments[2].wireguard_ip.to_string(), "10.4.0.3/16");
            // a-b share a location: tunnelled in full, not in cross.
            assert_eq!(t.tunnelled(0, 1), g == Granularity::Full);
            assert!(t.tunnelled(0, 2));
        }
    }

    #[test]
    fn stale_and_incomplete_nodes_are_left_out() {
        let mut stale = node(
            "s",
            "x",
            "1.1.1.1:1",
            Some("10.0.0.1/24"),
            "10.42.0.0/24",
            false,
        );
        stale.last_seen = Some(100);
        let mut nokey = node(
            "k",
            "x",
            "1.1.1.2:1",
            Some("10.0.0.2/24"),
            "10.42.1.0/24",
            false,
        );
        nokey.public_key = None;
        let fresh = node(
            "f",
            "x",
            "1.1.1.3:1",
            Some("10.0.0.3/24"),
            "10.42.2.0/24",
            false,
        );
        let t = Topology::new(
            &snapshot(vec![stale, nokey, fresh], vec![]),
            &MeshOptions::default(),
            200,
        )
        .unwrap();
        assert_eq!(t.segments.len(), 1);
        assert_eq!(t.segments[0].nodes.len(), 1);
        let names: Vec<&str> = t.excluded.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["s", "k"]);
    }

    #[test]
    fn peer_ips_are_deduplicated_by_name_order() {
        let s = snapshot(
            vec![node(
                "a",
                "x",
                "1.1.1.1:1",
                Some("10.0.0.1/24"),
                "10.42.0.0/24",
                false,
            )],
            vec![
                peer("zeta", &["10.5.0.1/32", "10.5.0.9/32"]),
                peer("alpha", &["10.5.0.1/32"]),
                peer("mid", &["10.5.0.9/32"]),
            ],
        );
        let t = Topology::new(&s, &MeshOptions::default(), 0).unwrap();
        let got: Vec<(String, Vec<String>)> = t
            .peers
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.allowed_ips.iter().map(|c| c.to_string()).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("alpha".to_string(), vec!["10.5.0.1/32".to_string()]),
                ("mid".to_string(), vec!["10.5.0.9/32".to_string()]),
            ]
        );
        assert_eq!(t.excluded[0].name, "zeta");
    }

    #[test]
    fn peers_and_location_ips_cannot_take_what_a_node_owns() {
        let mut b = node(
            "b",
            "y",
            "2.2.2.2:1",
            Some("10.1.0.1/24"),
            "10.42.1.0/24",
            false,
        );
        // A node's annotation claiming another node's internal IP, and one
        // claiming a LAN of its own.
        b.allowed_location_ips = vec![
            "10.0.0.1/32".parse().unwrap(),
            "192.168.7.0/24".parse().unwrap(),
        ];
        let s = snapshot(
            vec![
                node(
                    "a",
                    "x",
                    "1.1.1.1:1",
                    Some("10.0.0.1/24"),
                    "10.42.0.0/24",
                    false,
                ),
                b,
            ],
            vec![
                // Another cluster's leaders, joined with the talk's
                // commands but on the same WireGuard subnet: 10.4.0.1 and
                // 10.4.0.2 are this cluster's leaders.
                peer("cluster-b", &["10.4.0.1/32", "10.4.0.2/32", "10.52.0.0/16"]),
                // Part of a node's pod CIDR, and a broader prefix (taken:
                // the node's own longer prefix still wins every lookup).
                peer("laptop", &["10.42.0.128/25", "10.0.0.0/8"]),
                peer("thief", &["10.42.1.0/24"]),
            ],
        );
        let t = Topology::new(&s, &MeshOptions::default(), 0).unwrap();
        let ips = |name: &str| -> Vec<String> {
            t.peers
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.allowed_ips.iter().map(|c| c.to_string()).collect())
                .unwrap_or_default()
        };
        assert_eq!(ips("cluster-b"), vec!["10.52.0.0/16"]);
        assert_eq!(ips("laptop"), vec!["10.0.0.0/8"]);
        assert!(ips("thief").is_empty());
        assert!(t.excluded.iter().any(|e| e.name == "thief"));
        // The owners keep their prefixes.
        assert!(t.segments[0]
            .allowed_ips
            .contains(&"10.4.0.1/32".parse().unwrap()));
        assert!(t.segments[1]
            .allowed_ips
            .contains(&"10.42.1.0/24".parse().unwrap()));
        assert_eq!(
            t.segments[1].location_ips,
            vec!["192.168.7.0/24".parse().unwrap()]
        );
        let claims: Vec<String> = t.claims.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            claims,
            vec![
                "peer cluster-b: allowedIPs: 10.4.0.1/32 lies in 10.4.0.1/32, the WireGuard IP of node a, which keeps it; ignored",
                "peer cluster-b: allowedIPs: 10.4.0.2/32 lies in 10.4.0.2/32, the WireGuard IP of node b, which keeps it; ignored",
                "peer laptop: allowedIPs: 10.42.0.128/25 lies in 10.42.0.0/24, a pod CIDR of node a, which keeps it; ignored",
                "peer thief: allowedIPs: 10.42.1.0/24 lies in 10.42.1.0/24, a pod CIDR of node b, which keeps it; ignored",
                "node b: kilo.squat.ai/allowed-location-ips: 10.0.0.1/32 lies in 10.0.0.1/32, the internal IP of node a, which keeps it; ignored",
            ]
        );
    }

    #[test]
    fn location_ips_are_filtered() {
        let mut a = node(
            "a",
            "x",
            "1.1.1.1:1",
            Some("10.0.0.1/24"),
            "10.42.0.0/24",
            false,
        );
        a.allowed_location_ips = vec![
            "192.168.50.0/24".parse().unwrap(), // kept
            "10.42.0.128/25".parse().unwrap(),  // inside a's own pod CIDR: dropped
            "10.5.0.0/16".parse().unwrap(),     // overlaps a peer: dropped
            "172.16.0.0/16".parse().unwrap(),   // overlaps b's: dropped (both)
        ];
        let mut b = node(
            "b",
            "y",
            "2.2.2.2:1",
            Some("10.1.0.1/24"),
            "10.42.1.0/24",
            false,
        );
        b.allowed_location_ips = vec!["172.16.5.0/24".parse().unwrap()];
        let t = Topology::new(
            &snapshot(vec![a, b], vec![peer("p", &["10.5.0.1/32"])]),
            &MeshOptions::default(),
            0,
        )
        .unwrap();
        assert_eq!(
            t.segments[0].location_ips,
            vec!["192.168.50.0/24".parse::<IpNet>().unwrap()]
        );
        assert!(t.segments[1].location_ips.is_empty());
    }

    #[test]
    fn subnet_exhaustion_is_an_error() {
        let nodes = (0..3)
            .map(|i| {
                node(
                    &format!("n{i}"),
                    "x",
                    "1.1.1.1:1",
                    None,
                    &format!("10.42.{i}.0/24"),
                    false,
                )
            })
            .collect();
        let opts = MeshOptions {
            subnet: "10.4.0.0/31".parse().unwrap(),
            ..Default::default()
        };
        assert!(matches!(
            Topology::new(&snapshot(nodes, vec![]), &opts, 0),
            Err(TopologyError::SubnetExhausted { .. })
        ));
    }
}
