//! `weftctl connect`: this machine as a Peer of the mesh, with Weft's
//! userspace tunnel, so a laptop, a CI runner or a VM without WireGuard in
//! its kernel (and without wireguard-go) can join with one command.
//!
//! It creates (or updates) the Peer resource with this machine's public key
//! and address, runs `weft-wg` through the agent's own reconciler (tunnel,
//! address and routes, nothing else: no CNI, no masquerading), follows the
//! mesh as the agents do (a new leader, a new node, a node gone), and on the
//! way out removes its routes and its tunnel and, unless told to keep it,
//! the Peer. [`desired`] is the pure half: the mesh in, what this machine
//! should run out.

use crate::backend::k8s::peer::PeerSpec;
use crate::backend::k8s::KubeBackend;
use crate::backend::Backend;
use crate::mesh::desired::Masquerade;
use crate::mesh::{DesiredState, Given, Route, RouteDevice, Topology, WireGuardConfig};
use crate::reconcile::Reconciler;
use crate::render;
use ipnet::IpNet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};
use wgconf::PublicKey;

/// What `weftctl connect` was asked for.
#[derive(Clone, Debug)]
pub struct Options {
    /// The Peer's name.
    pub name: String,
    /// This machine's address in the mesh (the Peer's allowed IP).
    pub address: IpNet,
    /// Cluster ranges beyond the pods and nodes to route into the mesh (the
    /// service CIDR), through the first segment's leader.
    pub extra_allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: u16,
    pub listen_port: u16,
    pub mtu: u16,
    /// How often to look at the mesh again without being woken.
    pub resync: Duration,
    /// Leave the Peer in the cluster on the way out.
    pub keep_peer: bool,
    /// The mesh-wide options given as flags; the others are read from what
    /// the nodes announce, as kgctl does.
    pub given: Given,
}

/// The Peer resource this machine announces.
pub fn peer_spec(public_key: &PublicKey, o: &Options) -> PeerSpec {
    PeerSpec {
        allowed_ips: vec![o.address.to_string()],
        endpoint: None,
        persistent_keepalive: Some(i64::from(o.persistent_keepalive)),
        preshared_key: None,
        public_key: public_key.to_base64(),
    }
}

/// What this machine should run for `topology`: a tunnel to every segment's
/// leader and every other Peer, its address, and a route for every range
/// they carry. `Err` while the mesh does not have this Peer yet or has no
/// segment with a tunnel.
pub fn desired(topology: &Topology, o: &Options) -> Result<DesiredState, String> {
    let mut peers = render::peer_configs(topology, &o.name)
        .map_err(|e| format!("{e} yet (the Peer was created; the mesh has not read it back)"))?;
    // This machine's keepalive is its own to choose, whatever the Peer
    // resource says now (it is what keeps a NAT in front of it open).
    for p in &mut peers {
        p.persistent_keepalive = o.persistent_keepalive;
    }
    let Some(first) = peers.first_mut() else {
        return Err("no node of the mesh runs a tunnel yet (no node has a key)".into());
    };
    for ip in &o.extra_allowed_ips {
        if !first.allowed_ips.contains(ip) {
            first.allowed_ips.push(*ip);
        }
    }
    let mut routes: Vec<Route> = peers
        .iter()
        .flat_map(|p| &p.allowed_ips)
        .filter(|ip| **ip != o.address)
        .map(|dst| Route {
            dst: *dst,
            gateway: None,
            device: RouteDevice::WireGuard,
            // Replies come back to this address through the mesh.
            src: (dst.addr().is_ipv4() == o.address.addr().is_ipv4()).then(|| o.address.addr()),
        })
        .collect();
    routes.sort_by_key(|r| r.dst);
    routes.dedup_by_key(|r| r.dst);
    Ok(DesiredState {
        node: o.name.clone(),
        segment: String::new(),
        is_leader: true,
        wireguard: Some(WireGuardConfig {
            address: o.address,
            listen_port: o.listen_port,
            mtu: o.mtu,
            peers,
        }),
        routes,
        masquerade: Masquerade::default(),
        encapsulation: false,
        private_ip: None,
        pod_cidrs: Vec::new(),
        mtu: o.mtu,
        own_table: false,
    })
}

/// Keeps this machine connected until `stop` is set: announces the Peer,
/// then applies the mesh whenever the backend wakes it (and every resync),
/// then cleans up. Errors of one pass are logged and retried.
pub fn run(
    kube: &mut KubeBackend,
    woken: &Receiver<()>,
    reconciler: &mut Reconciler,
    o: &Options,
    stop: &AtomicBool,
) -> Result<(), String> {
    let spec = peer_spec(&reconciler.public_key(), o);
    kube.put_peer(&o.name, spec).map_err(|e| e.to_string())?;
    tracing::info!(peer = %o.name, address = %o.address, "announced this machine as a Peer");
    let mut last: Option<Result<usize, String>> = None;
    let mut next = Instant::now();
    let mut was_woken = false;
    let mut notes = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if was_woken || Instant::now() >= next {
            let outcome = pass(kube, reconciler, o, &mut notes);
            if last.as_ref() != Some(&outcome) {
                match &outcome {
                    Ok(n) => {
                        tracing::info!(peers = n, "connected: tunnel and routes follow the mesh")
                    }
                    Err(e) => tracing::warn!("not connected yet: {e}"),
                }
            }
            // A failure is tried again soon; success waits for a change.
            next = Instant::now()
                + if outcome.is_ok() {
                    o.resync
                } else {
                    Duration::from_secs(1)
                };
            last = Some(outcome);
        }
        // Short waits, so a stop is seen within them.
        was_woken = woken.recv_timeout(Duration::from_millis(200)).is_ok();
    }
    tracing::info!("disconnecting");
    let cleaned = reconciler
        .clean_up(crate::reconcile::CleanUp::EVERYTHING)
        .map_err(|e| e.to_string());
    if !o.keep_peer {
        kube.delete_peer(&o.name).map_err(|e| e.to_string())?;
        tracing::info!(peer = %o.name, "removed the Peer");
    }
    cleaned
}

/// One look at the mesh; the number of tunnel peers applied.
fn pass(
    kube: &mut KubeBackend,
    reconciler: &mut Reconciler,
    o: &Options,
    said: &mut Vec<String>,
) -> Result<usize, String> {
    let mut loaded = kube.observe().map_err(|e| e.to_string())?;
    let notes = loaded.resolve_options(o.given);
    if notes != *said {
        for n in &notes {
            tracing::warn!("{n}");
        }
        *said = notes;
    }
    // Staleness as the agents judge it: the cluster's check-in limits.
    let clock = kube.liveness(crate::backend::unix_now());
    let topology =
        Topology::new(&loaded.snapshot, &loaded.options, clock).map_err(|e| e.to_string())?;
    let state = desired(&topology, o)?;
    reconciler.apply(&state).map_err(|e| e.to_string())?;
    Ok(state.wireguard.map_or(0, |w| w.peers.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::testing::{peer, snapshot, two_locations};
    use crate::mesh::MeshOptions;

    fn options() -> Options {
        Options {
            name: "laptop".into(),
            address: "10.5.0.1/32".parse().unwrap(),
            extra_allowed_ips: vec!["10.43.0.0/16".parse().unwrap()],
            persistent_keepalive: 10,
            listen_port: 51820,
            mtu: 1420,
            resync: Duration::from_secs(30),
            given: Given::default(),
            keep_peer: false,
        }
    }

    fn topology(with_laptop: bool) -> Topology {
        let nodes = two_locations();
        let mut peers = vec![peer("ci", &["10.5.0.2/32"])];
        if with_laptop {
            peers.push(peer("laptop", &["10.5.0.1/32"]));
        }
        Topology::new(&snapshot(nodes, peers), &MeshOptions::default(), 0u64).expect("topology")
    }

    #[test]
    fn a_tunnel_to_every_leader_and_a_route_for_all_they_carry() {
        let d = desired(&topology(true), &options()).expect("desired");
        let wg = d.wireguard.expect("a tunnel");
        assert_eq!(wg.address.to_string(), "10.5.0.1/32");
        let names: Vec<&str> = wg.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["location:aws", "location:gcp", "ci"]);
        // The service CIDR rides with the first segment.
        assert!(wg.peers[0]
            .allowed_ips
            .contains(&"10.43.0.0/16".parse().unwrap()));
        assert!(wg.peers.iter().all(|p| p.persistent_keepalive == 10));
        let dst: Vec<String> = d.routes.iter().map(|r| r.dst.to_string()).collect();
        for want in [
            "10.42.1.0/24",
            "10.42.2.0/24",
            "10.42.3.0/24",
            "10.43.0.0/16",
            "10.5.0.2/32",
        ] {
            assert!(dst.contains(&want.to_string()), "{want} in {dst:?}");
        }
        assert!(
            !dst.contains(&"10.5.0.1/32".to_string()),
            "no route to itself"
        );
        assert!(d
            .routes
            .iter()
            .all(|r| r.device == RouteDevice::WireGuard
                && r.src == Some("10.5.0.1".parse().unwrap())));
        assert_eq!(d.masquerade, Masquerade::default(), "nothing masqueraded");
        assert!(d.pod_cidrs.is_empty(), "no CNI configuration");
    }

    #[test]
    fn nothing_to_run_until_the_mesh_has_the_peer() {
        let e = desired(&topology(false), &options()).unwrap_err();
        assert!(e.contains("laptop"), "{e}");
    }

    #[test]
    fn the_peer_resource_carries_key_address_and_keepalive() {
        let key = wgconf::PrivateKey([3; 32]).public_key();
        let spec = peer_spec(&key, &options());
        assert_eq!(spec.allowed_ips, ["10.5.0.1/32"]);
        assert_eq!(spec.public_key, key.to_base64());
        assert_eq!(spec.persistent_keepalive, Some(10));
    }
}
