//! Netlink, and nothing else: links, addresses and routes on the host and in
//! another network namespace, through rtnetlink on a single-threaded runtime
//! (it starts in microseconds; the CNI plugin lives for one command). Shared
//! by `weft-cni` and the agent.

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute};
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
pub use rtnetlink::packet_route::route::RouteProtocol;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

/// A link as we need to know it.
#[derive(Debug, Clone)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: String,
    pub mtu: u32,
}

/// A netlink connection in the namespace of the thread that made it.
pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

/// Addresses and routes are written as an address with its prefix length
/// (the host bits may be set), the type the CNI plugin's configuration uses.
pub use wgconf::Cidr;

/// What went wrong, in terms a caller can map to its own error codes.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The operation failed (message says which and why).
    #[error("{0}")]
    Failed(String),
    /// Something of that name or address is already there.
    #[error("{0}")]
    Conflict(String),
    /// The network namespace cannot be entered.
    #[error("{0}")]
    Namespace(String),
}

fn nl_err(what: impl std::fmt::Display, e: rtnetlink::Error) -> NetlinkError {
    NetlinkError::Failed(format!("{what}: {e}"))
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

fn mac_string(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Every address in an address dump, with the index of its link.
async fn collect_addresses(
    mut s: impl futures_util::Stream<
            Item = Result<rtnetlink::packet_route::address::AddressMessage, rtnetlink::Error>,
        > + Unpin,
) -> Result<Vec<(u32, Cidr)>, NetlinkError> {
    let mut out = Vec::new();
    while let Some(msg) = s
        .try_next()
        .await
        .map_err(|e| nl_err("list addresses", e))?
    {
        let prefix = msg.header.prefix_len;
        for a in msg.attributes {
            if let AddressAttribute::Address(addr) = a {
                out.push((msg.header.index, Cidr { addr, prefix }));
            }
        }
    }
    Ok(out)
}

async fn first_link(
    mut s: impl futures_util::Stream<
            Item = Result<rtnetlink::packet_route::link::LinkMessage, rtnetlink::Error>,
        > + Unpin,
    what: &str,
) -> Result<Option<LinkInfo>, NetlinkError> {
    match s.try_next().await {
        Ok(Some(msg)) => {
            let mut info = LinkInfo {
                index: msg.header.index,
                name: String::new(),
                mac: String::new(),
                mtu: 0,
            };
            for a in msg.attributes {
                match a {
                    LinkAttribute::IfName(n) => info.name = n,
                    LinkAttribute::Address(b) => info.mac = mac_string(&b),
                    LinkAttribute::Mtu(m) => info.mtu = m,
                    _ => {}
                }
            }
            Ok(Some(info))
        }
        Ok(None) => Ok(None),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(nl_err(format!("get link {what}"), e)),
    }
}

impl Netlink {
    pub fn new() -> Result<Self, NetlinkError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| NetlinkError::Failed(format!("runtime: {e}")))?;
        let handle = rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection()
                .map_err(|e| NetlinkError::Failed(format!("netlink socket: {e}")))?;
            tokio::spawn(conn);
            Ok::<_, NetlinkError>(handle)
        })?;
        Ok(Self { rt, handle })
    }

    pub fn link(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let h = self.handle.clone();
        let name = name.to_string();
        self.rt.block_on(async move {
            let s = h.link().get().match_name(name.clone()).execute();
            first_link(s, &name).await
        })
    }

    pub fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, NetlinkError> {
        let h = self.handle.clone();
        self.rt.block_on(async move {
            let s = h.link().get().match_index(index).execute();
            first_link(s, &format!("#{index}")).await
        })
    }

    /// Creates the bridge if missing; sets its MTU and brings it up.
    pub fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<LinkInfo, NetlinkError> {
        if self.link(name)?.is_none() {
            let h = self.handle.clone();
            let r = self.rt.block_on(async move {
                h.link()
                    .add(LinkBridge::new(name).mtu(mtu).up().build())
                    .execute()
                    .await
            });
            match r {
                Ok(()) => {}
                // A concurrent ADD created it first.
                Err(e) if is_errno(&e, libc::EEXIST) => {}
                Err(e) => return Err(nl_err(format!("create bridge {name}"), e)),
            }
        }
        let info = self
            .link(name)?
            .ok_or_else(|| NetlinkError::Failed(format!("bridge {name} vanished")))?;
        if info.mtu != mtu {
            self.set(
                LinkUnspec::new_with_index(info.index).mtu(mtu).up().build(),
                name,
            )?;
        } else {
            self.set(LinkUnspec::new_with_index(info.index).up().build(), name)?;
        }
        self.link(name)?
            .ok_or_else(|| NetlinkError::Failed(format!("bridge {name} vanished")))
    }

    fn set(
        &self,
        msg: rtnetlink::packet_route::link::LinkMessage,
        what: &str,
    ) -> Result<(), NetlinkError> {
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.link().set(msg).execute().await })
            .map_err(|e| nl_err(format!("set link {what}"), e))
    }

    /// Addresses on a link.
    pub fn addresses(&self, index: u32) -> Result<Vec<Cidr>, NetlinkError> {
        let h = self.handle.clone();
        let found = self.rt.block_on(collect_addresses(
            h.address().get().set_link_index_filter(index).execute(),
        ))?;
        Ok(found.into_iter().map(|(_, c)| c).collect())
    }

    /// Ensures `cidr` is on the link. Another address of the same subnet is
    /// replaced if `force`, refused otherwise (as the reference bridge does).
    pub fn ensure_address(
        &self,
        index: u32,
        cidr: Cidr,
        force: bool,
        what: &str,
    ) -> Result<(), NetlinkError> {
        let existing = self.addresses(index)?;
        if existing.contains(&cidr) {
            return Ok(());
        }
        for other in existing
            .iter()
            .filter(|a| a.addr.is_ipv4() == cidr.addr.is_ipv4())
        {
            let same_subnet = Cidr {
                addr: cidr.addr,
                prefix: cidr.prefix,
            }
            .contains(other.addr);
            if same_subnet && cidr.addr.is_ipv4() {
                if !force {
                    return Err(NetlinkError::Conflict(format!(
                        "{what} already has {other}, not {cidr}; set forceAddress to replace it"
                    )));
                }
                self.del_address(index, *other)?;
            }
        }
        let h = self.handle.clone();
        let r = self.rt.block_on(async move {
            h.address()
                .add(index, cidr.addr, cidr.prefix)
                .execute()
                .await
        });
        match r {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(nl_err(format!("add {cidr} to {what}"), e)),
        }
    }

    /// Removes `cidr` from the link (absent is fine).
    pub fn del_address(&self, index: u32, cidr: Cidr) -> Result<(), NetlinkError> {
        let h = self.handle.clone();
        self.rt.block_on(async move {
            let mut s = h
                .address()
                .get()
                .set_link_index_filter(index)
                .set_address_filter(cidr.addr)
                .execute();
            while let Some(msg) = s
                .try_next()
                .await
                .map_err(|e| nl_err("list addresses", e))?
            {
                h.address()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(|e| nl_err(format!("remove {cidr}"), e))?;
            }
            Ok(())
        })
    }

    /// Creates a veth pair with `name` here and `peer` directly inside the
    /// namespace `netns`, in one request. Creating the peer in place is ~15 ms
    /// faster than moving it afterwards, which waits for the kernel to
    /// quiesce the device.
    pub fn create_veth_into(
        &self,
        name: &str,
        peer: &str,
        netns: RawFd,
        mtu: u32,
    ) -> Result<(), NetlinkError> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .mtu(mtu)
            .setns_by_fd(netns)
            .build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        let h = self.handle.clone();
        match self.rt.block_on(async move { h.link().add(msg).execute().await }) {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Err(NetlinkError::Conflict(format!(
                "cannot create veth {name}: interface {peer} already exists in the container (or {name} on the host)"
            ))),
            Err(e) => Err(nl_err(format!("create veth {name} with {peer} in the container"), e)),
        }
    }

    pub fn attach_to_bridge(
        &self,
        index: u32,
        bridge: u32,
        mtu: u32,
        name: &str,
    ) -> Result<(), NetlinkError> {
        self.set(
            LinkUnspec::new_with_index(index)
                .controller(bridge)
                .mtu(mtu)
                .up()
                .build(),
            name,
        )
    }

    pub fn move_to_netns(&self, index: u32, netns: RawFd, name: &str) -> Result<(), NetlinkError> {
        self.set(
            LinkUnspec::new_with_index(index).setns_by_fd(netns).build(),
            name,
        )
    }

    /// Renames, sets MTU and brings up a link (inside a pod).
    pub fn configure(&self, index: u32, new_name: &str, mtu: u32) -> Result<(), NetlinkError> {
        self.set(
            LinkUnspec::new_with_index(index)
                .name(new_name.to_string())
                .mtu(mtu)
                .up()
                .build(),
            new_name,
        )
    }

    pub fn set_up(&self, index: u32, what: &str) -> Result<(), NetlinkError> {
        self.set(LinkUnspec::new_with_index(index).up().build(), what)
    }

    pub fn set_down(&self, index: u32, what: &str) -> Result<(), NetlinkError> {
        self.set(LinkUnspec::new_with_index(index).down().build(), what)
    }

    pub fn delete(&self, index: u32, what: &str) -> Result<(), NetlinkError> {
        let h = self.handle.clone();
        match self
            .rt
            .block_on(async move { h.link().del(index).execute().await })
        {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
            Err(e) => Err(nl_err(format!("delete {what}"), e)),
        }
    }

    /// Adds a route via `gw` (or on-link when `gw` is None) out of `index`.
    pub fn add_route(&self, dst: Cidr, gw: Option<IpAddr>, index: u32) -> Result<(), NetlinkError> {
        self.add_owned_route(
            &OwnedRoute {
                dst,
                gateway: gw,
                oif: index,
                src: None,
                onlink: false,
                table: MAIN_TABLE,
            },
            RouteProtocol::Static,
        )
    }

    fn route_message(r: &OwnedRoute, protocol: RouteProtocol) -> RouteMessage {
        match r.dst.addr {
            IpAddr::V4(d) => {
                let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(d, r.dst.prefix)
                    .output_interface(r.oif)
                    .protocol(protocol);
                if let Some(IpAddr::V4(g)) = r.gateway {
                    b = b.gateway(g);
                }
                if let Some(IpAddr::V4(s)) = r.src {
                    b = b.pref_source(s);
                }
                if r.onlink {
                    b = b.onlink();
                }
                b.table_id(r.table).build()
            }
            IpAddr::V6(d) => {
                let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(d, r.dst.prefix)
                    .output_interface(r.oif)
                    .protocol(protocol);
                if let Some(IpAddr::V6(g)) = r.gateway {
                    b = b.gateway(g);
                }
                if r.onlink {
                    b = b.onlink();
                }
                b.table_id(r.table).build()
            }
        }
    }

    /// Adds a route tagged with `protocol`, so its owner can find it again.
    pub fn add_owned_route(
        &self,
        r: &OwnedRoute,
        protocol: RouteProtocol,
    ) -> Result<(), NetlinkError> {
        let msg = Self::route_message(r, protocol);
        let h = self.handle.clone();
        match self
            .rt
            .block_on(async move { h.route().add(msg).execute().await })
        {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(nl_err(format!("add route {}", r.dst), e)),
        }
    }

    /// Deletes a route added by [`Netlink::add_owned_route`].
    pub fn del_owned_route(
        &self,
        r: &OwnedRoute,
        protocol: RouteProtocol,
    ) -> Result<(), NetlinkError> {
        let msg = Self::route_message(r, protocol);
        let h = self.handle.clone();
        match self
            .rt
            .block_on(async move { h.route().del(msg).execute().await })
        {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENOENT) => Ok(()),
            Err(e) => Err(nl_err(format!("delete route {}", r.dst), e)),
        }
    }

    /// Routes tagged with `protocol` in the main table or in `own_table`,
    /// both families.
    pub fn owned_routes(
        &self,
        protocol: RouteProtocol,
        own_table: u32,
    ) -> Result<Vec<OwnedRoute>, NetlinkError> {
        let mut out = Vec::new();
        for v4 in [true, false] {
            out.extend(
                self.list_routes(v4)?
                    .into_iter()
                    .filter(|(p, r)| {
                        *p == protocol && (r.table == MAIN_TABLE || r.table == own_table)
                    })
                    .map(|(_, r)| r),
            );
        }
        Ok(out)
    }

    /// Makes sure one rule per family sends every lookup to `table` at
    /// `priority` (before the main table's 32766); a table without a route
    /// for the destination passes the lookup on to the next rule.
    pub fn ensure_lookup_rule(&self, table: u32, priority: u32) -> Result<(), NetlinkError> {
        for v4 in [true, false] {
            if self.lookup_rules(table, priority, v4)?.is_empty() {
                let h = self.handle.clone();
                let result = self.rt.block_on(async move {
                    // The action must be said: a rule without one matches
                    // and then fails every lookup with EINVAL.
                    let add = h
                        .rule()
                        .add()
                        .table_id(table)
                        .priority(priority)
                        .action(rtnetlink::packet_route::rule::RuleAction::ToTable);
                    if v4 {
                        add.v4().execute().await
                    } else {
                        add.v6().execute().await
                    }
                });
                match result {
                    Ok(()) => {}
                    Err(e) if is_errno(&e, libc::EEXIST) => {}
                    Err(e) => return Err(nl_err(format!("add rule lookup {table}"), e)),
                }
            }
        }
        Ok(())
    }

    /// Removes the rules [`Netlink::ensure_lookup_rule`] made.
    pub fn remove_lookup_rule(&self, table: u32, priority: u32) -> Result<(), NetlinkError> {
        for v4 in [true, false] {
            for rule in self.lookup_rules(table, priority, v4)? {
                let h = self.handle.clone();
                match self
                    .rt
                    .block_on(async move { h.rule().del(rule).execute().await })
                {
                    Ok(()) => {}
                    Err(e) if is_errno(&e, libc::ENOENT) => {}
                    Err(e) => return Err(nl_err(format!("delete rule lookup {table}"), e)),
                }
            }
        }
        Ok(())
    }

    /// The rules of one family that look `table` up at `priority`.
    fn lookup_rules(
        &self,
        table: u32,
        priority: u32,
        v4: bool,
    ) -> Result<Vec<rtnetlink::packet_route::rule::RuleMessage>, NetlinkError> {
        use rtnetlink::packet_route::rule::RuleAttribute;
        let h = self.handle.clone();
        self.rt.block_on(async move {
            let version = if v4 {
                rtnetlink::IpVersion::V4
            } else {
                rtnetlink::IpVersion::V6
            };
            let mut rules = h.rule().get(version).execute();
            let mut out = Vec::new();
            while let Some(m) = rules
                .try_next()
                .await
                .map_err(|e| nl_err("list rules", e))?
            {
                let mut t = u32::from(m.header.table);
                let mut p = 0;
                for a in &m.attributes {
                    match a {
                        RuleAttribute::Table(v) => t = *v,
                        RuleAttribute::Priority(v) => p = *v,
                        _ => {}
                    }
                }
                if t == table && p == priority {
                    out.push(m);
                }
            }
            Ok(out)
        })
    }

    /// Every address on every link, with the link's name (for discovering
    /// this node's own addresses).
    pub fn interface_addresses(&self) -> Result<Vec<InterfaceAddress>, NetlinkError> {
        let h = self.handle.clone();
        self.rt.block_on(async move {
            let mut names = std::collections::HashMap::new();
            let mut links = h.link().get().execute();
            while let Some(msg) = links
                .try_next()
                .await
                .map_err(|e| nl_err("list links", e))?
            {
                for a in msg.attributes {
                    if let LinkAttribute::IfName(n) = a {
                        names.insert(msg.header.index, n);
                    }
                }
            }
            Ok(collect_addresses(h.address().get().execute())
                .await?
                .into_iter()
                .map(|(index, cidr)| InterfaceAddress {
                    index,
                    name: names.get(&index).cloned().unwrap_or_default(),
                    cidr,
                })
                .collect())
        })
    }

    /// The index of the link holding `ip`, if any.
    pub fn link_with_address(&self, ip: IpAddr) -> Result<Option<(u32, Cidr)>, NetlinkError> {
        let h = self.handle.clone();
        let found = self.rt.block_on(collect_addresses(
            h.address().get().set_address_filter(ip).execute(),
        ))?;
        Ok(found.into_iter().find(|(_, c)| c.addr == ip))
    }

    /// Creates (if missing) a VXLAN link without learning as `spec` says;
    /// sets its MTU and brings it up.
    pub fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<LinkInfo, NetlinkError> {
        let name = spec.name.as_str();
        if self.link(name)?.is_none() {
            let msg = LinkVxlan::new(name, spec.vni)
                .dev(spec.dev)
                .local(spec.local)
                .port(spec.port)
                .learning(false)
                .address(spec.mac.to_vec())
                .mtu(spec.mtu)
                .up()
                .build();
            let h = self.handle.clone();
            match self
                .rt
                .block_on(async move { h.link().add(msg).execute().await })
            {
                Ok(()) => {}
                Err(e) if is_errno(&e, libc::EEXIST) => {}
                Err(e) => return Err(nl_err(format!("create vxlan {name}"), e)),
            }
        }
        let info = self
            .link(name)?
            .ok_or_else(|| NetlinkError::Failed(format!("{name} vanished")))?;
        self.set_mtu_up(info.index, spec.mtu, name)?;
        Ok(info)
    }

    /// A permanent neighbour entry (`ip neigh replace IP lladdr MAC`) and the
    /// matching forwarding entry of a VXLAN link (`bridge fdb replace MAC dst IP`).
    pub fn set_vxlan_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        let h = self.handle.clone();
        self.rt
            .block_on(async move {
                h.neighbours()
                    .add(index, ip)
                    .link_layer_address(&mac)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await?;
                // NTF_SELF: the entry belongs to the VXLAN device itself, not
                // to a bridge it might be enslaved to.
                h.neighbours()
                    .add_bridge(index, &mac)
                    .destination(ip)
                    .state(NeighbourState::Permanent)
                    .flags(NeighbourFlags::Own)
                    .replace()
                    .execute()
                    .await
            })
            .map_err(|e| nl_err(format!("neighbour {ip}"), e))
    }

    /// Sets a link's MTU and brings it up.
    pub fn set_mtu_up(&self, index: u32, mtu: u32, what: &str) -> Result<(), NetlinkError> {
        self.set(
            LinkUnspec::new_with_index(index).mtu(mtu).up().build(),
            what,
        )
    }

    /// Routes in the main table as (destination, gateway, output index).
    pub fn routes(&self, v4: bool) -> Result<Vec<(Cidr, Option<IpAddr>, u32)>, NetlinkError> {
        Ok(self
            .list_routes(v4)?
            .into_iter()
            .filter(|(_, r)| r.table == MAIN_TABLE)
            .map(|(_, r)| (r.dst, r.gateway, r.oif))
            .collect())
    }

    /// The kernel's answer to `ip route get DST`: the link that would carry
    /// a packet to `dst` and the path MTU the route says, if it says one
    /// (a route's `mtu` metric, or one learned from ICMP). `None` when
    /// nothing routes there.
    pub fn route_to(&self, dst: IpAddr) -> Result<Option<PathTo>, NetlinkError> {
        // A bare request, as `ip route get` sends it: the builder's table,
        // protocol and type make the kernel answer an unroutable address
        // with EINVAL instead of ENETUNREACH.
        let mut msg = RouteMessage::default();
        let (family, len, address) = match dst {
            IpAddr::V4(a) => (AddressFamily::Inet, 32, RouteAddress::Inet(a)),
            IpAddr::V6(a) => (AddressFamily::Inet6, 128, RouteAddress::Inet6(a)),
        };
        msg.header.address_family = family;
        msg.header.destination_prefix_length = len;
        msg.attributes.push(RouteAttribute::Destination(address));
        let h = self.handle.clone();
        self.rt.block_on(async move {
            let mut s = h.route().get(msg).execute();
            let reply = match s.try_next().await {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(None),
                Err(e)
                    if is_errno(&e, libc::ENETUNREACH)
                        || is_errno(&e, libc::EHOSTUNREACH)
                        || is_errno(&e, libc::ESRCH) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(nl_err(format!("route to {dst}"), e)),
            };
            let mut path = PathTo { oif: 0, mtu: None };
            for a in reply.attributes {
                match a {
                    RouteAttribute::Oif(i) => path.oif = i,
                    RouteAttribute::Metrics(metrics) => {
                        for m in metrics {
                            if let RouteMetric::Mtu(v) = m {
                                path.mtu = Some(v).filter(|v| *v > 0);
                            }
                        }
                    }
                    _ => {}
                }
            }
            Ok((path.oif != 0).then_some(path))
        })
    }

    /// Every route of one family with its protocol (the table is in the
    /// route).
    fn list_routes(&self, v4: bool) -> Result<Vec<(RouteProtocol, OwnedRoute)>, NetlinkError> {
        let msg = if v4 {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        };
        let h = self.handle.clone();
        self.rt.block_on(async move {
            let mut s = h.route().get(msg).execute();
            let mut out = Vec::new();
            while let Some(m) = s.try_next().await.map_err(|e| nl_err("list routes", e))? {
                let unspecified = if v4 {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                };
                let mut r = OwnedRoute {
                    dst: Cidr {
                        addr: unspecified,
                        prefix: m.header.destination_prefix_length,
                    },
                    gateway: None,
                    oif: 0,
                    src: None,
                    onlink: m.header.flags.contains(RouteFlags::Onlink),
                    table: u32::from(m.header.table),
                };
                for a in m.attributes {
                    match a {
                        RouteAttribute::Destination(RouteAddress::Inet(a)) => {
                            r.dst.addr = IpAddr::V4(a)
                        }
                        RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
                            r.dst.addr = IpAddr::V6(a)
                        }
                        RouteAttribute::Gateway(RouteAddress::Inet(a)) => {
                            r.gateway = Some(IpAddr::V4(a))
                        }
                        RouteAttribute::Gateway(RouteAddress::Inet6(a)) => {
                            r.gateway = Some(IpAddr::V6(a))
                        }
                        RouteAttribute::PrefSource(RouteAddress::Inet(a)) => {
                            r.src = Some(IpAddr::V4(a))
                        }
                        RouteAttribute::PrefSource(RouteAddress::Inet6(a)) => {
                            r.src = Some(IpAddr::V6(a))
                        }
                        RouteAttribute::Oif(i) => r.oif = i,
                        RouteAttribute::Table(t) => r.table = t,
                        _ => {}
                    }
                }
                out.push((m.header.protocol, r));
            }
            Ok(out)
        })
    }
}

/// An address and the link that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub index: u32,
    pub name: String,
    pub cidr: Cidr,
}

/// A VXLAN link: identifier, underlay source address and link, UDP port,
/// its own MAC, MTU.
#[derive(Clone, Debug)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub local: Ipv4Addr,
    pub dev: u32,
    pub port: u16,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// Where the kernel sends packets for one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathTo {
    /// The output link's index.
    pub oif: u32,
    /// The route's MTU, where it has one (else the link's applies).
    pub mtu: Option<u32>,
}

/// A route as its owner describes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnedRoute {
    pub dst: Cidr,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    pub src: Option<IpAddr>,
    /// The gateway is reachable on the link even outside its subnets.
    pub onlink: bool,
    /// The routing table (`MAIN_TABLE` unless the owner keeps its own).
    pub table: u32,
}

/// The kernel's main routing table.
pub const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// Runs `f` with a netlink connection inside the network namespace at `path`,
/// on a thread of its own so this process's namespace never changes.
pub fn in_netns<T: Send, E: From<NetlinkError> + Send>(
    path: &Path,
    f: impl FnOnce(&Netlink) -> Result<T, E> + Send,
) -> Result<T, E> {
    let ns = std::fs::File::open(path).map_err(|e| {
        NetlinkError::Namespace(format!("cannot open netns {}: {e}", path.display()))
    })?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on this thread only, with a namespace fd we hold open.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(NetlinkError::Namespace(format!(
                        "{} is not a network namespace: {}",
                        path.display(),
                        std::io::Error::last_os_error()
                    ))
                    .into());
                }
                let nl = Netlink::new()?;
                f(&nl)
            })
            .join()
            .unwrap_or_else(|_| Err(NetlinkError::Failed("netns worker panicked".into()).into()))
    })
}

/// Writes a bridge-port flag through sysfs (hairpin mode).
pub fn set_hairpin(ifname: &str, on: bool) -> Result<(), NetlinkError> {
    let path = format!("/sys/class/net/{ifname}/brport/hairpin_mode");
    std::fs::write(&path, if on { "1" } else { "0" })
        .map_err(|e| NetlinkError::Failed(format!("cannot set hairpin mode on {ifname}: {e}")))
}
