//! The mesh core at scale: 1,000 nodes in 50 locations plus 100 peers
//! (target: topology under 50 ms), one node's desired state, and the
//! WireGuard diff of a no-op reconcile.

use criterion::{criterion_group, criterion_main, Criterion};
use dataplane::{DeviceInfo, PeerInfo, PrivateKey};
use std::collections::BTreeMap;
use weft_agent::mesh::{MeshOptions, Node, Peer, Snapshot, Topology};
use weft_agent::reconcile::wireguard::{diff, is_noop, ResolvedPeer};

fn key(i: u32) -> dataplane::PublicKey {
    let mut b = [0u8; 32];
    // Bytes 1..5: x25519 clamps the low bits of byte 0, which would merge keys.
    b[1..5].copy_from_slice(&i.to_le_bytes());
    b[31] = 0x42;
    PrivateKey(b).public_key()
}

fn snapshot(nodes: u32, locations: u32, peers: u32) -> Snapshot {
    let nodes = (0..nodes)
        .map(|i| {
            let loc = i % locations;
            Node {
                name: format!("node-{i:04}"),
                location: format!("loc-{loc:02}"),
                endpoint: Some(
                    format!("198.18.{}.{}:51820", i / 250, i % 250 + 1)
                        .parse()
                        .expect("endpoint"),
                ),
                internal_ip: Some(
                    format!("10.{}.{}.{}/16", 100 + loc, i / 250, i % 250 + 1)
                        .parse()
                        .expect("ip"),
                ),
                pod_cidrs: vec![format!("10.{}.{}.0/24", 40 + i / 256, i % 256)
                    .parse()
                    .expect("cidr")],
                public_key: Some(key(i)),
                persistent_keepalive: 0,
                leader: false,
                allowed_location_ips: vec![],
                last_seen: None,
                discovered_endpoints: BTreeMap::new(),
            }
        })
        .collect();
    let peers = (0..peers)
        .map(|i| Peer {
            name: format!("peer-{i:03}"),
            allowed_ips: vec![format!("10.5.{}.{}/32", i / 250, i % 250 + 1)
                .parse()
                .expect("cidr")],
            public_key: key(100_000 + i),
            endpoint: None,
            persistent_keepalive: 25,
            preshared_key: None,
        })
        .collect();
    Snapshot { nodes, peers }
}

fn mesh(c: &mut Criterion) {
    let snap = snapshot(1000, 50, 100);
    let opts = MeshOptions::default();
    c.bench_function("topology/1000-nodes-50-locations-100-peers", |b| {
        b.iter(|| Topology::new(&snap, &opts, 0).expect("topology"))
    });
    let t = Topology::new(&snap, &opts, 0).expect("topology");
    let leader = t.segments[0].leader().name.clone();
    c.bench_function("desired-state/leader-of-1000-nodes", |b| {
        b.iter(|| t.desired_state(&leader).expect("in mesh"))
    });

    // A no-op reconcile of the tunnel: the device already matches.
    let d = t.desired_state(&leader).expect("in mesh");
    let wg = d.wireguard.expect("leader");
    let sk = PrivateKey([1; 32]);
    let peers: Vec<ResolvedPeer> = wg
        .peers
        .iter()
        .map(|p| ResolvedPeer {
            public_key: p.public_key,
            endpoint: Some("198.18.0.1:51820".parse().expect("addr")),
            allowed_ips: p.allowed_ips.clone(),
            persistent_keepalive: p.persistent_keepalive,
            preshared_key: None,
        })
        .collect();
    let info = DeviceInfo {
        private_key: Some(sk.clone()),
        public_key: Some(sk.public_key()),
        listen_port: wg.listen_port,
        fwmark: 0,
        peers: peers
            .iter()
            .map(|p| PeerInfo {
                public_key: p.public_key,
                preshared_key: None,
                endpoint: p.endpoint,
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
                persistent_keepalive: p.persistent_keepalive,
                allowed_ips: p
                    .allowed_ips
                    .iter()
                    .filter_map(|c| dataplane::IpPrefix::new(c.addr(), c.prefix_len()).ok())
                    .collect(),
            })
            .collect(),
    };
    let mut applied = BTreeMap::new();
    let _ = diff(&sk, &info, &wg, &peers, &mut applied);
    c.bench_function("reconcile-noop/wireguard-diff-149-peers", |b| {
        b.iter(|| {
            let u = diff(&sk, &info, &wg, &peers, &mut applied);
            assert!(is_noop(&u), "{:?}", u.peers.first());
        })
    });
}

criterion_group!(benches, mesh);
criterion_main!(benches);
