//! The mesh core at scale: 1,000 nodes in 50 locations plus 100 peers
//! (target: topology under 50 ms), one node's desired state, and the
//! WireGuard diff of a no-op reconcile; reading 1,000 Nodes' Kilo annotations
//! (what the Kubernetes backend does on every pass) and the patch check.

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
                internal_ip6: None,
                pod_cidrs: vec![format!("10.{}.{}.0/24", 40 + i / 256, i % 256)
                    .parse()
                    .expect("cidr")],
                public_key: Some(key(i)),
                persistent_keepalive: 0,
                leader: false,
                allowed_location_ips: vec![],
                last_seen: None,
                discovered_endpoints: BTreeMap::new(),
                unreachable: None,
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
                reachable: None,
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

/// 1,000 Nodes shaped as the API returns them, annotated as agents write them.
fn api_nodes(n: u32) -> Vec<k8s_openapi::api::core::v1::Node> {
    (0..n)
        .map(|i| {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {
                    "name": format!("node-{i:04}"),
                    "labels": {"topology.kubernetes.io/region": format!("region-{}", i % 50),
                               "kubernetes.io/hostname": format!("node-{i:04}")},
                    "annotations": {
                        "kilo.squat.ai/key": key(i).to_base64(),
                        "kilo.squat.ai/endpoint": format!("198.51.{}.{}:51820", i / 250, i % 250),
                        "kilo.squat.ai/internal-ip": format!("10.{}.{}.5/24", i / 250, i % 250),
                        "kilo.squat.ai/last-seen": "1795000000",
                        "kilo.squat.ai/granularity": "location",
                        "kilo.squat.ai/wireguard-ip": "",
                        "kilo.squat.ai/discovered-endpoints": "",
                        "k3s.io/node-args": "[\"agent\"]"
                    }
                },
                "spec": {"podCIDR": format!("10.{}.{}.0/24", 42 + i / 250, i % 250)}
            }))
            .expect("a Node")
        })
        .collect()
}

fn kube(c: &mut Criterion) {
    use weft_agent::backend::k8s::annotations::{owned_patch, raw_node};
    let nodes = api_nodes(1000);
    c.bench_function("kube/read-1000-nodes", |b| {
        b.iter(|| {
            let parsed = nodes
                .iter()
                .filter_map(|n| raw_node(n, "topology.kubernetes.io/region").0.parse().ok())
                .count();
            assert_eq!(parsed, 1000);
        })
    });
    let me = &nodes[7];
    let want: BTreeMap<String, String> = me
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.starts_with("kilo.squat.ai/"))
        .collect();
    c.bench_function("kube/own-node-patch-check", |b| {
        b.iter(|| assert!(owned_patch(me, &want).is_none()))
    });
}

criterion_group!(benches, mesh, kube);
criterion_main!(benches);
