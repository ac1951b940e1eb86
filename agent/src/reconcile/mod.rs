//! The reconciler: makes the node look like its desired state, touching only
//! what differs. It drives the node's tunnel (a `weft-wg` process of its
//! own, see [`tunnel`]) and owns the routes it tags with its own protocol
//! number, its netfilter chains and the CNI conflist; nothing else on the
//! node is changed.
//!
//! A restart finds the routes it tagged and the state dir's key, so it
//! carries on where the last run stopped; nothing is torn down on exit
//! unless asked (`--clean-up`).

pub mod cni;
pub mod key;
pub mod nat;
pub mod tunnel;
pub mod wireguard;

use crate::mesh::{DesiredState, Endpoint, RouteDevice};
use crate::mtu::Underlay;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use tunnel::{Tunnel, TunnelSettings};
use weft_netlink::{Cidr, Netlink, OwnedRoute, RouteProtocol, VxlanSpec, MAIN_TABLE};
use wgconf::{PrivateKey, PublicKey};

/// The protocol number on every route the agent adds ("W"), so it can tell
/// its routes from everybody else's across restarts.
pub const ROUTE_PROTOCOL: RouteProtocol = RouteProtocol::Other(87);

/// How often the netfilter rules are rebuilt even when unchanged.
const NAT_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

/// The encapsulation device. The kernels Weft targets may lack IPIP (Kilo's
/// choice), so nodes of one location that need encapsulation talk VXLAN.
pub const VXLAN_NAME: &str = "weft-vxlan";
/// The routing table of add-on mode (`--local=false`): Weft's routes live
/// there, looked up by one rule per family at [`RULE_PRIORITY`] (before the
/// main table), so the other CNI's routes in main are never touched.
pub const ROUTE_TABLE: u32 = 87;
/// The priority of the rule that looks [`ROUTE_TABLE`] up.
pub const RULE_PRIORITY: u32 = 87;
/// flannel's VXLAN device (`--compatibility=flannel`).
pub const FLANNEL_DEVICE: &str = "flannel.1";
const VXLAN_VNI: u32 = 1107;
const VXLAN_PORT: u16 = 4789;
/// Outer IPv4 + UDP + VXLAN + inner Ethernet headers.
const VXLAN_OVERHEAD: u32 = 50;

/// Every node's VXLAN MAC follows from its private IPv4 address, so no MAC
/// has to be exchanged: 02:57 ('W') and the four address bytes.
pub fn vxlan_mac(ip: std::net::Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x57, o[0], o[1], o[2], o[3]]
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("netlink: {0}")]
    Netlink(#[from] weft_netlink::NetlinkError),
    #[error("WireGuard tunnel: {0}")]
    Tunnel(String),
    #[error("netfilter: {0}")]
    Nat(#[from] nat::NatError),
    #[error("CNI configuration: {0}")]
    Cni(std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// What one pass changed, for the log and the tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    pub peers_updated: usize,
    pub routes_added: usize,
    pub routes_removed: usize,
    pub address_set: bool,
    pub nat_applied: bool,
    pub cni_written: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

pub struct Settings {
    pub cni_dir: Option<PathBuf>,
    /// Where host-local keeps its allocations (to find Kilo's).
    pub ipam_dir: PathBuf,
    pub manage_nat: bool,
    /// The cluster's service CIDRs: traffic to them is not masqueraded.
    pub service_cidrs: Vec<ipnet::IpNet>,
    /// Masquerade the pods' traffic that leaves the mesh. Off with Kilo's
    /// `--cni=false`: the CNI that wires the pods masquerades them.
    pub masquerade_pods: bool,
    /// FORWARD accepts for the mesh's prefixes (`--iptables-forward-rules`).
    pub accept_forward: bool,
    /// The tunnel: its interface, control socket and who starts it.
    pub tunnel: TunnelSettings,
}

/// What to remove on the way out, in Kilo's two flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanUp {
    /// Routes, rules, netfilter chains, the CNI configuration, the VXLAN
    /// device (`--clean-up`).
    pub network: bool,
    /// The tunnel: weft-wg stops and its interface goes
    /// (`--clean-up-interface`).
    pub interface: bool,
}

impl CleanUp {
    pub const EVERYTHING: CleanUp = CleanUp {
        network: true,
        interface: true,
    };
}

pub struct Reconciler {
    settings: Settings,
    key: PrivateKey,
    nl: Netlink,
    tunnel: Tunnel,
    applied_peers: BTreeMap<PublicKey, wireguard::Applied>,
    applied_nat: Option<(crate::mesh::desired::Masquerade, std::time::Instant)>,
}

/// Resolves an endpoint now; a name that does not resolve is logged and
/// leaves that one peer without an endpoint (Kilo aborts the whole pass).
pub fn resolve(ep: &Endpoint) -> Option<SocketAddr> {
    match ep {
        Endpoint::Ip(a) => Some(*a),
        Endpoint::Dns { host, port } => match (host.as_str(), *port).to_socket_addrs() {
            Ok(mut it) => it.next(),
            Err(e) => {
                eprintln!(
                    "weft-agent: cannot resolve {host}: {e}; its peer waits for the next pass"
                );
                None
            }
        },
    }
}

impl Reconciler {
    pub fn new(settings: Settings, key: PrivateKey) -> Result<Self, ReconcileError> {
        Ok(Self {
            tunnel: Tunnel::new(settings.tunnel.clone()),
            settings,
            key,
            nl: Netlink::new()?,
            applied_peers: BTreeMap::new(),
            applied_nat: None,
        })
    }

    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The tunnel's interface name.
    pub fn interface(&self) -> &str {
        &self.settings.tunnel.interface
    }

    /// Whether the CNI configuration for `desired`'s pod CIDRs is in
    /// place (when this agent writes one), for /readyz.
    pub fn cni_status(&self, desired: &DesiredState) -> Result<(), String> {
        let Some(dir) = self.settings.cni_dir.as_ref() else {
            return Ok(());
        };
        let pod_cidrs = &desired.pod_cidrs;
        if pod_cidrs.is_empty() {
            return Err(
                "this node has no pod CIDR yet (spec.podCIDR): pods cannot start until the \
                 controller manager assigns one"
                    .into(),
            );
        }
        let path = dir.join(cni::FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(t) if pod_cidrs.iter().all(|c| t.contains(&c.trunc().to_string())) => Ok(()),
            Ok(_) => Err(format!(
                "{} does not list this node's pod CIDRs yet",
                path.display()
            )),
            Err(e) => Err(format!("no CNI configuration at {}: {e}", path.display())),
        }
    }

    /// The paths the kernel would send packets to `towards` along (each
    /// endpoint resolved as the tunnel would; with none, the default
    /// route's, as a reference). Nothing is sent: routes are looked up.
    pub fn underlay(&self, towards: &[Endpoint]) -> Vec<Underlay> {
        let mut targets: Vec<IpAddr> = towards.iter().filter_map(resolve).map(|a| a.ip()).collect();
        if targets.is_empty() {
            // Any global address follows the default route.
            targets = vec![
                IpAddr::from([192, 0, 2, 1]),
                IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]),
            ];
        }
        let mut out = Vec::new();
        for t in targets {
            let path = match self.nl.route_to(t) {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!("no route to {t} to measure the underlay by: {e}");
                    continue;
                }
            };
            let Ok(Some(link)) = self.nl.link_by_index(path.oif) else {
                continue;
            };
            out.push(Underlay {
                towards: t,
                interface: link.name,
                mtu: path.mtu.map_or(link.mtu, |m| m.min(link.mtu)),
            });
        }
        out
    }

    /// The tunnel's peers as it reported them after the last pass.
    pub fn tunnel_peers(&self) -> &[wgconf::PeerInfo] {
        self.tunnel.last_info().map_or(&[], |i| i.peers.as_slice())
    }

    /// One pass: WireGuard, address, routes, netfilter, CNI.
    pub fn apply(&mut self, desired: &DesiredState) -> Result<Changes, ReconcileError> {
        let mut changes = Changes::default();
        let wg_index = match &desired.wireguard {
            Some(wg) => {
                let current = self.tunnel.ensure()?.clone();
                let peers: Vec<wireguard::ResolvedPeer> = wg
                    .peers
                    .iter()
                    .map(|p| wireguard::ResolvedPeer {
                        public_key: p.public_key,
                        endpoint: p.endpoint.as_ref().and_then(resolve),
                        allowed_ips: p.allowed_ips.clone(),
                        persistent_keepalive: p.persistent_keepalive,
                        preshared_key: p.preshared_key,
                    })
                    .collect();
                let update =
                    wireguard::diff(&self.key, &current, wg, &peers, &mut self.applied_peers);
                if !wireguard::is_noop(&update) {
                    changes.peers_updated = update.peers.len();
                    self.tunnel.apply(&update)?;
                    // Read back what now runs, for metrics and endpoints.
                    self.tunnel.ensure()?;
                }
                let interface = self.settings.tunnel.interface.clone();
                let link = self
                    .nl
                    .link(&interface)?
                    .ok_or_else(|| ReconcileError::Other(format!("{interface} vanished")))?;
                let addr = Cidr {
                    addr: wg.address.addr(),
                    prefix: wg.address.prefix_len(),
                };
                let had = self.nl.addresses(link.index)?;
                if !had.contains(&addr) {
                    self.nl.ensure_address(link.index, addr, true, &interface)?;
                    changes.address_set = true;
                }
                if link.mtu != u32::from(wg.mtu) || changes.address_set {
                    self.nl
                        .set_mtu_up(link.index, u32::from(wg.mtu), &interface)?;
                } else {
                    self.nl.set_up(link.index, &interface)?;
                }
                Some(link.index)
            }
            None => {
                // Not (or no longer) a leader: no tunnel of our own.
                self.applied_peers.clear();
                if self.tunnel.is_running() {
                    let interface = &self.settings.tunnel.interface;
                    if self.tunnel.retire()? {
                        // Our weft-wg deletes its interface as it exits:
                        // wait for that rather than touch a device on its
                        // way out (and have the next pass find it).
                        let gone = wait_until(LINK_GONE_WAIT, || {
                            self.nl.link(interface).map(|l| l.is_none())
                        })?;
                        if !gone {
                            tracing::debug!(
                                "{interface} outlived its tunnel's stop for {LINK_GONE_WAIT:?}"
                            );
                        }
                    } else if let Some(link) = self.nl.link(interface)? {
                        // A tunnel someone else runs stays, empty, without
                        // the segment's address and down.
                        for a in self.nl.addresses(link.index)? {
                            self.nl.del_address(link.index, a)?;
                        }
                        self.nl.set_down(link.index, interface)?;
                    }
                }
                None
            }
        };
        let vxlan_index = self.reconcile_vxlan(desired)?;
        self.reconcile_routes(desired, wg_index, vxlan_index, &mut changes)?;
        if vxlan_index.is_none() {
            if let Some(l) = self.nl.link(VXLAN_NAME)? {
                self.nl.delete(l.index, VXLAN_NAME)?;
            }
        }
        // Re-applied when it changes, and at least every NAT_REFRESH in case
        // something else (a firewall reload) flushed our chains.
        let changed = self
            .applied_nat
            .as_ref()
            .is_none_or(|(m, _)| *m != desired.masquerade);
        let due = self
            .applied_nat
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= NAT_REFRESH);
        if self.settings.manage_nat && (changed || due) {
            let mut masquerade = desired.masquerade.clone();
            if !self.settings.masquerade_pods {
                masquerade
                    .sources
                    .retain(|s| !desired.pod_cidrs.contains(s));
            }
            nat::apply(&nat::Rules {
                masquerade: &masquerade,
                services: &self.settings.service_cidrs,
                accept_forward: self.settings.accept_forward,
            })?;
            self.applied_nat = Some((desired.masquerade.clone(), std::time::Instant::now()));
            // A refresh of unchanged rules is not a change.
            changes.nat_applied = changed;
        }
        if let Some(dir) = &self.settings.cni_dir {
            let name = cni::network_name(dir, &self.settings.ipam_dir);
            if name == cni::KILO_NETWORK {
                if let Some(moved) = cni::retire_kilo_conflist(dir).map_err(ReconcileError::Cni)? {
                    tracing::info!(
                        "taking over from Kilo: its conflist moved to {}; the network keeps \
                         Kilo's name, so running pods keep their addresses and new pods get others",
                        moved.display()
                    );
                }
            }
            let text = cni::conflist_named(name, &desired.pod_cidrs, desired.mtu);
            changes.cni_written = cni::write_if_changed(dir, &text).map_err(ReconcileError::Cni)?;
        }
        Ok(changes)
    }

    /// The VXLAN device when some route needs it (IPv4 underlay only).
    fn reconcile_vxlan(&mut self, desired: &DesiredState) -> Result<Option<u32>, ReconcileError> {
        if !desired.encapsulation {
            return Ok(None);
        }
        let Some(std::net::IpAddr::V4(local)) = desired.private_ip.map(|c| c.addr()) else {
            tracing::warn!("encapsulation needs an IPv4 private address; routing without it");
            return Ok(None);
        };
        let Some((dev, _)) = self.nl.link_with_address(local.into())? else {
            tracing::warn!("no interface holds {local}; routing without encapsulation");
            return Ok(None);
        };
        let mtu = self
            .nl
            .link_by_index(dev)?
            .map_or(1500, |l| l.mtu)
            .saturating_sub(VXLAN_OVERHEAD);
        if self.nl.link(VXLAN_NAME)?.is_none() {
            tracing::info!(
                "encapsulating traffic inside the location with VXLAN ({VXLAN_NAME}, VNI {VXLAN_VNI}, \
                 udp/{VXLAN_PORT} from {local}); IPIP is not used, so kernels without it work"
            );
        }
        let link = self.nl.ensure_vxlan(&VxlanSpec {
            name: VXLAN_NAME.into(),
            vni: VXLAN_VNI,
            local,
            dev,
            port: VXLAN_PORT,
            mac: vxlan_mac(local),
            mtu,
        })?;
        Ok(Some(link.index))
    }

    fn reconcile_routes(
        &mut self,
        desired: &DesiredState,
        wg_index: Option<u32>,
        vxlan_index: Option<u32>,
        changes: &mut Changes,
    ) -> Result<(), ReconcileError> {
        // The directly connected networks, read once per pass: a gateway is
        // reached through the link whose subnet contains it.
        let mut connected = Vec::new();
        for v4 in [true, false] {
            connected.extend(
                self.nl
                    .routes(v4)?
                    .into_iter()
                    .filter(|(dst, via, oif)| via.is_none() && dst.prefix > 0 && *oif != 0),
            );
        }
        let link_towards = |gw: std::net::IpAddr| {
            connected
                .iter()
                .find(|(dst, _, _)| dst.contains(gw))
                .map(|(_, _, oif)| *oif)
        };
        let table = if desired.own_table {
            ROUTE_TABLE
        } else {
            MAIN_TABLE
        };
        // flannel's device, looked up once where a route needs it.
        let flannel = if desired
            .routes
            .iter()
            .any(|r| r.device == RouteDevice::Flannel)
        {
            let link = self.nl.link(FLANNEL_DEVICE)?.ok_or_else(|| {
                ReconcileError::Other(format!(
                    "no {FLANNEL_DEVICE} on this node: --compatibility=flannel needs \
                     flannel's VXLAN backend running here"
                ))
            })?;
            Some(link.index)
        } else {
            None
        };
        let mut want: BTreeSet<OwnedRoute> = BTreeSet::new();
        for r in &desired.routes {
            let (oif, onlink) = match (r.device, r.gateway, vxlan_index) {
                (RouteDevice::WireGuard, _, _) => match wg_index {
                    Some(i) => (i, false),
                    None => continue,
                },
                (RouteDevice::Flannel, Some(_), _) => match flannel {
                    Some(i) => (i, true),
                    None => continue,
                },
                (RouteDevice::Encapsulation, Some(std::net::IpAddr::V4(gw)), Some(vx)) => {
                    // The remote end answers on its own VXLAN MAC, found
                    // through a permanent neighbour and forwarding entry.
                    self.nl.set_vxlan_neighbour(vx, gw.into(), vxlan_mac(gw))?;
                    (vx, true)
                }
                (_, Some(gw), _) => match link_towards(gw) {
                    Some(i) => (i, false),
                    None => {
                        tracing::warn!("no interface reaches {gw}; route to {} skipped", r.dst);
                        continue;
                    }
                },
                (_, None, _) => continue,
            };
            want.insert(OwnedRoute {
                dst: Cidr {
                    addr: r.dst.addr(),
                    prefix: r.dst.prefix_len(),
                },
                gateway: r.gateway,
                oif,
                src: r.src,
                onlink,
                table,
            });
        }
        if desired.own_table {
            self.nl.ensure_lookup_rule(ROUTE_TABLE, RULE_PRIORITY)?;
        }
        let have: BTreeSet<OwnedRoute> = self
            .nl
            .owned_routes(ROUTE_PROTOCOL, ROUTE_TABLE)?
            .into_iter()
            .collect();
        for r in have.difference(&want) {
            self.nl.del_owned_route(r, ROUTE_PROTOCOL)?;
            changes.routes_removed += 1;
        }
        for r in want.difference(&have) {
            self.nl.add_owned_route(r, ROUTE_PROTOCOL)?;
            changes.routes_added += 1;
        }
        if !desired.own_table {
            self.nl.remove_lookup_rule(ROUTE_TABLE, RULE_PRIORITY)?;
        }
        Ok(())
    }

    /// Removes what this agent created, as far as `what` says.
    pub fn clean_up(&mut self, what: CleanUp) -> Result<(), ReconcileError> {
        if what.network {
            for r in self.nl.owned_routes(ROUTE_PROTOCOL, ROUTE_TABLE)? {
                self.nl.del_owned_route(&r, ROUTE_PROTOCOL)?;
            }
            self.nl.remove_lookup_rule(ROUTE_TABLE, RULE_PRIORITY)?;
            if self.settings.manage_nat {
                nat::remove();
            }
            if let Some(dir) = &self.settings.cni_dir {
                let _ = std::fs::remove_file(dir.join(cni::FILE_NAME));
            }
            if let Some(l) = self.nl.link(VXLAN_NAME)? {
                self.nl.delete(l.index, VXLAN_NAME)?;
            }
        }
        if what.interface {
            self.tunnel.stop()?;
        }
        Ok(())
    }
}

/// How long a retiring leader waits for its tunnel's interface to go.
const LINK_GONE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Polls `done` every 10 ms until it says true or `within` passes; whether
/// it did. An error from `done` ends the wait.
fn wait_until<E>(
    within: std::time::Duration,
    mut done: impl FnMut() -> Result<bool, E>,
) -> Result<bool, E> {
    let end = std::time::Instant::now() + within;
    loop {
        if done()? {
            return Ok(true);
        }
        if std::time::Instant::now() >= end {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
