//! The mesh's inputs: nodes, peers and options, parsed once from whatever a
//! backend read (annotations, a mesh file) into types that say what they are.
//! A record with a bad field becomes an error naming the record and the field;
//! the backend logs it and leaves that record out, never the whole mesh.

use super::liveness::Liveness;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use wgconf::{PresharedKey, PublicKey};

/// How nodes are grouped into WireGuard segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// One segment per location, reached through its leader (Kilo's default).
    #[default]
    Location,
    /// Every node is its own segment: a full mesh of tunnels.
    Full,
    /// Weft's own: a tunnel between every pair of nodes in *different*
    /// locations, the plain private network inside a location. No leader
    /// carries a location's traffic, so there is no single choke point.
    Cross,
}

/// When traffic between nodes of one location is encapsulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encapsulate {
    #[default]
    Never,
    /// Only toward nodes outside the local node's subnet.
    CrossSubnet,
    Always,
}

/// `FromStr` and `Display` from one table of names, as written in the mesh
/// file and on the command line.
macro_rules! named {
    ($t:ident { $($v:ident => $s:literal),* $(,)? }) => {
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok(Self::$v),)*
                    _ => Err(format!("{s:?} is not one of {}", [$($s),*].join(", "))),
                }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self {
                    $(Self::$v => $s,)*
                })
            }
        }
    };
}

named!(Granularity { Location => "location", Full => "full", Cross => "cross" });
named!(Encapsulate { Never => "never", CrossSubnet => "crosssubnet", Always => "always" });

/// The tunnel's MTU: measured from the underlay on each node (`auto`), or
/// one number for every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mtu {
    /// The largest that fits the underlay towards every peer, found by
    /// each node's agent (the core, which does no I/O, plans with
    /// [`Mtu::FALLBACK`] until the agent puts in what it measured).
    #[default]
    Auto,
    Fixed(u16),
}

impl Mtu {
    /// WireGuard's customary MTU: a 1500-byte underlay less IPv6's overhead.
    pub const FALLBACK: u16 = 1420;
    /// The smallest MTU IPv6 allows a link, so pods of both families work.
    pub const MIN: u16 = 1280;

    /// The number the core plans with.
    pub fn planned(self) -> u16 {
        match self {
            Mtu::Auto => Self::FALLBACK,
            Mtu::Fixed(m) => m,
        }
    }
}

impl FromStr for Mtu {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(Mtu::Auto);
        }
        match s.parse::<u16>() {
            Ok(m) if m >= Self::MIN => Ok(Mtu::Fixed(m)),
            _ => Err(format!(
                "{s:?} is neither auto nor an MTU of {} to 65535",
                Self::MIN
            )),
        }
    }
}

impl fmt::Display for Mtu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mtu::Auto => f.write_str("auto"),
            Mtu::Fixed(m) => write!(f, "{m}"),
        }
    }
}

/// Which CNI already keeps the network inside a location, when Weft runs
/// as an add-on that only joins locations (Kilo's `--compatibility`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compatibility {
    /// Weft is the CNI (or the other CNI needs nothing from it).
    #[default]
    None,
    /// flannel's VXLAN backend: a node reaches its location's leader
    /// through `flannel.1`, at the address flannel gives the leader's VTEP
    /// (the network address of its pod CIDR).
    Flannel,
}

impl FromStr for Compatibility {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "none" => Ok(Self::None),
            "flannel" => Ok(Self::Flannel),
            "cilium" => Err("cilium is not supported yet (docs/addon.md says what it would take);                              flannel is"
                .into()),
            _ => Err(format!("{s:?} is not one of flannel, none")),
        }
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Flannel => "flannel",
        })
    }
}

/// Mesh-wide settings; every node must use the same ones to agree.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshOptions {
    pub granularity: Granularity,
    /// The pool WireGuard IPs come from.
    pub subnet: IpNet,
    pub port: u16,
    pub encapsulate: Encapsulate,
    pub mtu: Mtu,
    /// Whether Weft routes inside a location (Kilo's `--local`); false
    /// leaves that to the CNI already there (add-on mode).
    pub local: bool,
    pub compatibility: Compatibility,
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            granularity: Granularity::Location,
            subnet: "10.4.0.0/16"
                .parse()
                .unwrap_or(IpNet::V4(Default::default())),
            port: 51820,
            encapsulate: Encapsulate::Never,
            mtu: Mtu::Auto,
            local: true,
            compatibility: Compatibility::None,
        }
    }
}

/// Where a node or peer receives WireGuard traffic: an IP or a DNS name, and
/// a port. DNS names are resolved at the edge, on every reconcile.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    Ip(SocketAddr),
    Dns { host: String, port: u16 },
}

impl Endpoint {
    pub fn port(&self) -> u16 {
        match self {
            Endpoint::Ip(a) => a.port(),
            Endpoint::Dns { port, .. } => *port,
        }
    }
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Endpoint::Ip(a) => Some(a.ip()),
            Endpoint::Dns { .. } => None,
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;
    /// `1.2.3.4:51820`, `[2001:db8::1]:51820` or `host.example:51820`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            if a.port() == 0 {
                return Err(format!("{s:?}: port must be 1..65535"));
            }
            return Ok(Endpoint::Ip(a));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{s:?}: port must be 1..65535"))?;
        if !is_dns_name(host) {
            return Err(format!(
                "{s:?}: {host:?} is neither an IP address nor a DNS name"
            ));
        }
        Ok(Endpoint::Dns {
            host: host.to_string(),
            port,
        })
    }
}

/// RFC 1123 subdomain, as Kilo's Peer validation requires.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Ip(a) => write!(f, "{a}"),
            Endpoint::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A cluster node as the mesh sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub location: String,
    pub endpoint: Option<Endpoint>,
    /// The node's private address with its interface's prefix (10.0.1.5/24).
    pub internal_ip: Option<IpNet>,
    /// A private IPv6 address too (Weft's own `weft.dev/internal-ip6`):
    /// the next hop of IPv6 pod traffic inside a location, which Kilo's one
    /// internal IP cannot be for both families.
    pub internal_ip6: Option<IpNet>,
    pub pod_cidrs: Vec<IpNet>,
    pub public_key: Option<PublicKey>,
    /// Seconds; > 0 also means "behind NAT, may roam".
    pub persistent_keepalive: u16,
    pub leader: bool,
    pub allowed_location_ips: Vec<IpNet>,
    /// Unix seconds of the node's last check-in; `None` where the backend
    /// does not track liveness (a mesh file).
    pub last_seen: Option<u64>,
    /// NAT endpoints this node learned from handshakes, by public key.
    pub discovered_endpoints: BTreeMap<PublicKey, SocketAddr>,
    /// The segment members this node finds unreachable (see `failover`);
    /// `None` where the node does not report (Kilo nodes, mesh files).
    pub unreachable: Option<BTreeSet<String>>,
}

impl Node {
    /// Whether the node's endpoint is a public address (a name or no
    /// endpoint is not).
    pub fn has_public_endpoint(&self) -> bool {
        self.endpoint
            .as_ref()
            .and_then(Endpoint::ip)
            .is_some_and(|ip| !is_private(ip))
    }

    /// The node's private address of `ip`'s family, if it has one: the
    /// next hop towards it inside its location.
    pub fn private_for(&self, ip: IpAddr) -> Option<IpAddr> {
        [self.internal_ip, self.internal_ip6]
            .into_iter()
            .flatten()
            .map(|c| c.addr())
            .find(|a| a.is_ipv4() == ip.is_ipv4())
    }

    /// Why the node cannot take part now, if it cannot; its check-in age is
    /// judged by `clock` (which does not run while the API is away).
    pub fn not_ready(&self, clock: &Liveness) -> Option<&'static str> {
        if self.endpoint.is_none() {
            return Some("no endpoint");
        }
        if self.public_key.is_none() {
            return Some("no public key");
        }
        if self.pod_cidrs.is_empty() {
            return Some("no pod CIDR");
        }
        match self.last_seen {
            Some(t) if clock.is_stale(t) => Some("stale: no check-in for 60 s"),
            _ => None,
        }
    }
}

/// A WireGuard peer outside the cluster (Kilo's `Peer` resource).
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    pub name: String,
    pub allowed_ips: Vec<IpNet>,
    pub public_key: PublicKey,
    pub endpoint: Option<Endpoint>,
    pub persistent_keepalive: u16,
    pub preshared_key: Option<PresharedKey>,
}

/// Everything a backend knows at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub nodes: Vec<Node>,
    pub peers: Vec<Peer>,
}

/// A record left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name}: {field}: {reason}")]
pub struct RecordError {
    pub kind: &'static str,
    pub name: String,
    pub field: String,
    pub reason: String,
}

/// A node as a backend reads it: strings, as in Kilo's annotations.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawNode {
    pub name: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default, rename = "internalIP")]
    pub internal_ip: Option<String>,
    #[serde(
        default,
        rename = "internalIP6",
        skip_serializing_if = "Option::is_none"
    )]
    pub internal_ip6: Option<String>,
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
    #[serde(default)]
    pub public_key: Option<String>,
    #[serde(default)]
    pub persistent_keepalive: Option<String>,
    #[serde(default)]
    pub leader: bool,
    #[serde(default, rename = "allowedLocationIPs")]
    pub allowed_location_ips: Vec<String>,
    #[serde(default)]
    pub last_seen: Option<u64>,
    /// NAT endpoints the node learned: public key -> `ip:port`.
    #[serde(
        default,
        rename = "discoveredEndpoints",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub discovered_endpoints: BTreeMap<String, String>,
    /// Names of the segment members the node finds unreachable; absent
    /// where the node does not report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<Vec<String>>,
}

/// A peer as a backend reads it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawPeer {
    pub name: String,
    #[serde(default, rename = "allowedIPs")]
    pub allowed_ips: Vec<String>,
    pub public_key: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub persistent_keepalive: Option<u16>,
    #[serde(default)]
    pub preshared_key: Option<String>,
}

fn field_err(kind: &'static str, name: &str, field: &str, reason: impl ToString) -> RecordError {
    RecordError {
        kind,
        name: name.to_string(),
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_cidr(kind: &'static str, name: &str, field: &str, s: &str) -> Result<IpNet, RecordError> {
    s.trim()
        .parse::<IpNet>()
        .map_err(|_| field_err(kind, name, field, format!("{s:?} is not a CIDR")))
}

impl RawNode {
    pub fn parse(&self) -> Result<Node, RecordError> {
        let n = &self.name;
        let err = |field: &str, reason: String| field_err("node", n, field, reason);
        if n.is_empty() {
            return Err(err("name", "empty".into()));
        }
        let endpoint = self
            .endpoint
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<Endpoint>().map_err(|e| err("endpoint", e)))
            .transpose()?;
        // Kilo: "" or "-" means "no internal IP".
        let internal_ip = self
            .internal_ip
            .as_deref()
            .filter(|s| !s.is_empty() && *s != "-")
            .map(|s| parse_cidr("node", n, "internalIP", s))
            .transpose()?;
        let internal_ip6 = self
            .internal_ip6
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| match parse_cidr("node", n, "internalIP6", s)? {
                c @ IpNet::V6(_) => Ok(c),
                IpNet::V4(_) => Err(err("internalIP6", format!("{s:?} is not IPv6"))),
            })
            .transpose()?;
        let pod_cidrs = self
            .pod_cidrs
            .iter()
            .map(|s| parse_cidr("node", n, "podCIDRs", s).map(|c| c.trunc()))
            .collect::<Result<Vec<_>, _>>()?;
        let public_key = self
            .public_key
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| PublicKey::from_base64(s).map_err(|e| err("publicKey", e.to_string())))
            .transpose()?;
        let persistent_keepalive = match self.persistent_keepalive.as_deref() {
            None | Some("") => 0,
            Some(s) => s.trim().parse::<u16>().map_err(|_| {
                err(
                    "persistentKeepalive",
                    format!("{s:?} is not 0..65535 seconds"),
                )
            })?,
        };
        let allowed_location_ips = self
            .allowed_location_ips
            .iter()
            .map(|s| parse_cidr("node", n, "allowedLocationIPs", s).map(|c| c.trunc()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut discovered_endpoints = BTreeMap::new();
        for (k, a) in &self.discovered_endpoints {
            let key = PublicKey::from_base64(k)
                .map_err(|e| err("discoveredEndpoints", format!("{k:?}: {e}")))?;
            let addr = a.parse::<SocketAddr>().map_err(|_| {
                err(
                    "discoveredEndpoints",
                    format!("{a:?} is not an IP address and port"),
                )
            })?;
            discovered_endpoints.insert(key, addr);
        }
        Ok(Node {
            name: n.clone(),
            location: self.location.clone(),
            endpoint,
            internal_ip,
            internal_ip6,
            pod_cidrs,
            public_key,
            persistent_keepalive,
            leader: self.leader,
            allowed_location_ips,
            last_seen: self.last_seen,
            discovered_endpoints,
            unreachable: self.unreachable.as_ref().map(|v| {
                v.iter()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            }),
        })
    }
}

impl RawPeer {
    pub fn parse(&self) -> Result<Peer, RecordError> {
        let n = &self.name;
        let err = |field: &str, reason: String| field_err("peer", n, field, reason);
        if n.is_empty() {
            return Err(err("name", "empty".into()));
        }
        let allowed_ips = self
            .allowed_ips
            .iter()
            .map(|s| parse_cidr("peer", n, "allowedIPs", s).map(|c| c.trunc()))
            .collect::<Result<Vec<_>, _>>()?;
        if allowed_ips.is_empty() {
            return Err(err("allowedIPs", "at least one is needed".into()));
        }
        let public_key = PublicKey::from_base64(&self.public_key)
            .map_err(|e| err("publicKey", e.to_string()))?;
        let endpoint = self
            .endpoint
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<Endpoint>().map_err(|e| err("endpoint", e)))
            .transpose()?;
        let preshared_key = self
            .preshared_key
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| {
                PublicKey::from_base64(s)
                    .map(|k| PresharedKey(k.0))
                    .map_err(|e| err("presharedKey", e.to_string()))
            })
            .transpose()?;
        Ok(Peer {
            name: n.clone(),
            allowed_ips,
            public_key,
            endpoint,
            persistent_keepalive: self.persistent_keepalive.unwrap_or(0),
            preshared_key,
        })
    }
}

/// Kilo's private ranges. (Kilo itself only treats fd00::/16 as private, by a
/// bug; we take all of fc00::/7 as RFC 4193 defines it.)
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_private(),
        IpAddr::V6(a) => (a.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// What a backend observed: the options, the usable nodes and peers, and
/// what was left out or read without a bad field.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub options: MeshOptions,
    pub snapshot: Snapshot,
    pub rejected: Vec<RecordError>,
    /// Records kept, but with a field ignored.
    pub warnings: Vec<RecordError>,
    /// The mesh-wide options the nodes announce (none from a mesh file,
    /// which carries its options itself).
    pub announced: crate::announced::Announced,
}

/// What a node announces about itself: Kilo's agent-owned annotations.
#[derive(Clone, Debug, PartialEq)]
pub struct SelfReport {
    pub public_key: PublicKey,
    /// `host:port` as others should dial it.
    pub endpoint: String,
    /// The private address with its interface prefix, if the node has one.
    pub internal_ip: Option<IpNet>,
    /// A private IPv6 address too (`weft.dev/internal-ip6`).
    pub internal_ip6: Option<IpNet>,
    /// Set while this node leads its segment.
    pub wireguard_ip: Option<IpNet>,
    pub granularity: Granularity,
    /// NAT endpoints this node learned from handshakes of roaming peers.
    pub discovered_endpoints: BTreeMap<PublicKey, SocketAddr>,
    /// The segment members this node's probes find unreachable; `None`
    /// when this node cannot probe (then it does not report at all).
    pub unreachable: Option<BTreeSet<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "jYkfTPBnJTk8ehUeUMvJjwWShRJD4ls1YrtIl0pZuXY=";

    #[test]
    fn endpoints() {
        assert_eq!(
            "1.2.3.4:51820".parse::<Endpoint>().unwrap(),
            Endpoint::Ip("1.2.3.4:51820".parse().unwrap())
        );
        assert!(matches!(
            "[2001:db8::1]:51820".parse::<Endpoint>().unwrap(),
            Endpoint::Ip(SocketAddr::V6(_))
        ));
        assert_eq!(
            "node-1.example.com:4000".parse::<Endpoint>().unwrap(),
            Endpoint::Dns {
                host: "node-1.example.com".into(),
                port: 4000
            }
        );
        for bad in [
            "1.2.3.4",
            "1.2.3.4:0",
            "host:70000",
            "Bad_Host:1",
            ":51820",
            "a..b:1",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn node_fields_are_checked_and_named() {
        let good = RawNode {
            name: "a".into(),
            endpoint: Some("1.1.1.1:51820".into()),
            internal_ip: Some("10.0.0.1/24".into()),
            pod_cidrs: vec!["10.42.0.1/24".into()],
            public_key: Some(KEY.into()),
            persistent_keepalive: Some("25".into()),
            ..Default::default()
        };
        let n = good.parse().unwrap();
        assert_eq!(n.pod_cidrs[0].to_string(), "10.42.0.0/24");
        assert_eq!(n.internal_ip.unwrap().to_string(), "10.0.0.1/24");
        assert_eq!(n.persistent_keepalive, 25);
        assert_eq!(n.not_ready(&Liveness::at(0)), None);

        let cases: Vec<(RawNode, &str)> = vec![
            (
                RawNode {
                    endpoint: Some("nope".into()),
                    ..good.clone()
                },
                "endpoint",
            ),
            (
                RawNode {
                    internal_ip: Some("10.0.0.300/24".into()),
                    ..good.clone()
                },
                "internalIP",
            ),
            (
                RawNode {
                    pod_cidrs: vec!["x".into()],
                    ..good.clone()
                },
                "podCIDRs",
            ),
            (
                RawNode {
                    public_key: Some("short".into()),
                    ..good.clone()
                },
                "publicKey",
            ),
            (
                RawNode {
                    persistent_keepalive: Some("-1".into()),
                    ..good.clone()
                },
                "persistentKeepalive",
            ),
            (
                RawNode {
                    allowed_location_ips: vec!["10.0.0.1".into()],
                    ..good.clone()
                },
                "allowedLocationIPs",
            ),
            (
                RawNode {
                    name: "".into(),
                    ..good.clone()
                },
                "name",
            ),
        ];
        for (raw, field) in cases {
            let e = raw.parse().unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        // "-" means no internal IP, as in Kilo.
        let n = RawNode {
            internal_ip: Some("-".into()),
            ..good.clone()
        }
        .parse()
        .unwrap();
        assert_eq!(n.internal_ip, None);
    }

    #[test]
    fn readiness() {
        let mut n = RawNode {
            name: "a".into(),
            endpoint: Some("1.1.1.1:51820".into()),
            pod_cidrs: vec!["10.42.0.0/24".into()],
            public_key: Some(KEY.into()),
            last_seen: Some(1000),
            ..Default::default()
        }
        .parse()
        .unwrap();
        assert_eq!(n.not_ready(&Liveness::at(1059)), None);
        assert!(n.not_ready(&Liveness::at(1060)).is_some());
        n.last_seen = None;
        assert_eq!(n.not_ready(&Liveness::at(u64::MAX)), None);
        n.pod_cidrs.clear();
        assert_eq!(n.not_ready(&Liveness::at(0)), Some("no pod CIDR"));
    }

    #[test]
    fn peers_need_allowed_ips_and_a_key() {
        let p = RawPeer {
            name: "laptop".into(),
            allowed_ips: vec!["10.5.0.1/32".into()],
            public_key: KEY.into(),
            endpoint: None,
            persistent_keepalive: Some(10),
            preshared_key: None,
        };
        assert!(p.parse().is_ok());
        assert_eq!(
            RawPeer {
                allowed_ips: vec![],
                ..p.clone()
            }
            .parse()
            .unwrap_err()
            .field,
            "allowedIPs"
        );
        assert_eq!(
            RawPeer {
                public_key: "x".into(),
                ..p.clone()
            }
            .parse()
            .unwrap_err()
            .field,
            "publicKey"
        );
        assert_eq!(
            RawPeer {
                preshared_key: Some("x".into()),
                ..p
            }
            .parse()
            .unwrap_err()
            .field,
            "presharedKey"
        );
    }

    #[test]
    fn private_ranges() {
        for (ip, private) in [
            ("10.1.2.3", true),
            ("172.16.0.1", true),
            ("172.32.0.1", false),
            ("192.168.1.1", true),
            ("8.8.8.8", false),
            ("fd12:3456::1", true),
            ("fc00::1", true),
            ("2001:db8::1", false),
        ] {
            assert_eq!(is_private(ip.parse().unwrap()), private, "{ip}");
        }
    }
}
