//! Which of this node's own addresses it announces: the internal (private)
//! IP other nodes of its location reach it on, and the public IP its
//! WireGuard endpoint is built from. Kilo's rules: candidates are the
//! addresses the hostname resolves to, then those on the default-route
//! interface, then all others; loopback, link-local and the mesh's own
//! interfaces are ignored; private comes first for the internal IP, public
//! first for the endpoint, IPv4 before IPv6. The choice is pure; reading the
//! addresses is the small I/O half at the end.

use crate::mesh::model::is_private;
use ipnet::IpNet;
use std::net::IpAddr;

/// One address of this host, with what makes it a better or worse choice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub interface: String,
    /// The address with its interface's prefix length.
    pub cidr: IpNet,
    pub on_default_route: bool,
    pub hostname_resolves_here: bool,
}

/// What the node announces about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovered {
    /// The first private address, with its interface's prefix (Kilo's
    /// `internal-ip` format); `None` if the node has none.
    pub internal_ip: Option<IpNet>,
    /// The first private IPv6 address (a unique local one, fc00::/7), when
    /// the internal IP is IPv4: IPv6 pods' next hop inside the location.
    pub internal_ip6: Option<IpNet>,
    /// The first public address, else the first private one.
    pub public_ip: IpAddr,
}

impl Discovered {
    /// Kilo's `--prioritise-private-addresses`: the endpoint is built from
    /// the internal IP where there is one (nodes that reach each other
    /// over a private network, a VPN or a peering, not the internet).
    pub fn with_private_endpoint(self) -> Self {
        match self.internal_ip {
            Some(ip) => Self {
                public_ip: ip.addr(),
                ..self
            },
            None => self,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no usable address on this host (ignored: loopback, link-local, {ignored})")]
pub struct NoAddress {
    ignored: String,
}

fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local() && !a.is_unspecified(),
        IpAddr::V6(a) => {
            !a.is_loopback() && !a.is_unspecified() && (a.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

/// Chooses the internal and public address among `candidates`.
/// `ignore` names interfaces whose addresses are the mesh's own (the
/// WireGuard and encapsulation devices, the pod bridge). `internal_cidrs`,
/// when not empty, restricts which private addresses may be the internal IP.
pub fn choose(
    candidates: &[Candidate],
    ignore: &[&str],
    internal_cidrs: &[IpNet],
) -> Result<Discovered, NoAddress> {
    let mut usable: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| !ignore.contains(&c.interface.as_str()) && usable(c.cidr.addr()))
        .collect();
    // Priority: resolves from the hostname, then default route, then the
    // rest; IPv4 first; then by address, so the choice is stable.
    usable.sort_by_key(|c| {
        (
            !c.hostname_resolves_here,
            !c.on_default_route,
            c.cidr.addr().is_ipv6(),
            c.cidr.addr(),
        )
    });
    usable.dedup_by_key(|c| c.cidr.addr());
    let (private, public): (Vec<&Candidate>, Vec<&Candidate>) =
        usable.iter().partition(|c| is_private(c.cidr.addr()));
    let allowed = |c: &&&Candidate| {
        internal_cidrs.is_empty() || internal_cidrs.iter().any(|n| n.contains(&c.cidr.addr()))
    };
    let internal_ip = private.iter().find(allowed).map(|c| c.cidr);
    let internal_ip6 = private
        .iter()
        .filter(allowed)
        .map(|c| c.cidr)
        .find(|c| c.addr().is_ipv6())
        .filter(|_| internal_ip.is_some_and(|i| i.addr().is_ipv4()));
    let public_ip = public
        .first()
        .or(private.first())
        .map(|c| c.cidr.addr())
        .ok_or_else(|| NoAddress {
            ignored: ignore.join(", "),
        })?;
    Ok(Discovered {
        internal_ip,
        internal_ip6,
        public_ip,
    })
}

/// What `hostname` resolves to; empty if it does not (no DNS on the node
/// only loses a hint). Resolved once at start: it may wait on DNS.
pub fn resolve_hostname(hostname: &str) -> Vec<IpAddr> {
    std::net::ToSocketAddrs::to_socket_addrs(&(hostname, 0))
        .map(|it| it.map(|a| a.ip()).collect())
        .unwrap_or_default()
}

/// Reads this host's addresses and its default-route interfaces; `resolved`
/// is what the hostname resolves to.
pub fn candidates(resolved: &[IpAddr]) -> Result<Vec<Candidate>, weft_netlink::NetlinkError> {
    let nl = weft_netlink::Netlink::new()?;
    let mut default_links = Vec::new();
    for v4 in [true, false] {
        for (dst, _, oif) in nl.routes(v4)? {
            if dst.prefix == 0 {
                default_links.push(oif);
            }
        }
    }
    Ok(nl
        .interface_addresses()?
        .into_iter()
        .filter_map(|a| {
            let cidr = IpNet::new(a.cidr.addr, a.cidr.prefix).ok()?;
            Some(Candidate {
                on_default_route: default_links.contains(&a.index),
                hostname_resolves_here: resolved.contains(&a.cidr.addr),
                interface: a.name,
                cidr,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(iface: &str, cidr: &str, default: bool, host: bool) -> Candidate {
        Candidate {
            interface: iface.into(),
            cidr: cidr.parse().unwrap(),
            on_default_route: default,
            hostname_resolves_here: host,
        }
    }

    #[test]
    fn cloud_vm_with_public_and_private() {
        let got = choose(
            &[
                c("lo", "127.0.0.1/8", false, false),
                c("eth0", "10.0.1.5/24", true, false),
                c("eth0", "fe80::1/64", true, false),
                c("eth1", "34.1.2.3/32", false, false),
                c("weft0", "10.4.0.1/16", false, false),
                c("kube-bridge", "10.42.0.1/24", false, false),
            ],
            &["weft0", "kube-bridge"],
            &[],
        )
        .unwrap();
        assert_eq!(got.internal_ip, Some("10.0.1.5/24".parse().unwrap()));
        assert_eq!(got.public_ip, "34.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn private_only_node_announces_its_private_address() {
        let got = choose(
            &[
                c("eth0", "192.168.1.20/24", true, false),
                c("eth0", "fd00:1::20/64", true, false),
            ],
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(got.internal_ip, Some("192.168.1.20/24".parse().unwrap()));
        assert_eq!(got.public_ip, "192.168.1.20".parse::<IpAddr>().unwrap());
        // Dual stack: the unique local IPv6 address beside the IPv4 one.
        assert_eq!(got.internal_ip6, Some("fd00:1::20/64".parse().unwrap()));
    }

    #[test]
    fn hostname_then_default_route_then_the_rest() {
        let cands = [
            c("eth2", "10.9.0.1/16", false, false),
            c("eth1", "10.8.0.1/16", true, false),
            c("eth0", "172.16.0.9/12", false, true),
        ];
        let got = choose(&cands, &[], &[]).unwrap();
        assert_eq!(got.internal_ip, Some("172.16.0.9/12".parse().unwrap()));
        let got = choose(&cands[..2], &[], &[]).unwrap();
        assert_eq!(got.internal_ip, Some("10.8.0.1/16".parse().unwrap()));
        // --internal-cidr narrows the internal choice only.
        let got = choose(&cands, &[], &["10.9.0.0/16".parse().unwrap()]).unwrap();
        assert_eq!(got.internal_ip, Some("10.9.0.1/16".parse().unwrap()));
        assert_eq!(got.public_ip, "172.16.0.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ipv4_before_ipv6_and_public_v6() {
        let got = choose(
            &[
                c("eth0", "2001:db8::5/64", true, false),
                c("eth0", "203.0.113.5/24", true, false),
            ],
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(got.internal_ip, None);
        assert_eq!(got.internal_ip6, None, "2001:db8::/32 is not private");
        assert_eq!(got.public_ip, "203.0.113.5".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn nothing_usable_is_an_error_naming_what_was_ignored() {
        let e = choose(
            &[
                c("lo", "127.0.0.1/8", false, false),
                c("weft0", "10.4.0.1/16", false, false),
            ],
            &["weft0"],
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("weft0"), "{e}");
    }

    #[test]
    fn a_private_endpoint_when_asked_and_possible() {
        let both = Discovered {
            internal_ip: Some("10.0.0.5/24".parse().unwrap()),
            internal_ip6: None,
            public_ip: "203.0.113.5".parse().unwrap(),
        };
        assert_eq!(
            both.clone().with_private_endpoint().public_ip,
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
        let public_only = Discovered {
            internal_ip: None,
            ..both
        };
        assert_eq!(public_only.clone().with_private_endpoint(), public_only);
    }
}
