//! Dual stack, live: three nodes in two locations, each with an IPv4 and an
//! IPv6 pod CIDR, an IPv4 and an IPv6 internal address, pods wired by
//! weft-cni from the conflist the agent writes. aws's leader has both
//! families on the internet; gcp's only node is reached over an IPv6-only
//! underlay (its endpoint is an IPv6 address, it has no public IPv4). aws
//! encapsulates inside the location (VXLAN over IPv4, Kilo's `always`).
//!
//! Every pod reaches every other pod in both families, and the table says
//! which way each path goes; `weftctl showconf` and `graph` show both
//! families.

mod common;

use common::{ip, Lab};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const WEFTCTL: &str = env!("CARGO_BIN_EXE_weftctl");

struct Node {
    name: &'static str,
    location: &'static str,
    /// Addresses on the internet bridge (none, one or both families).
    public: &'static [&'static str],
    /// The endpoint others dial.
    endpoint: &'static str,
    /// Internal addresses on the location's network (IPv4, IPv6).
    private: Option<(&'static str, &'static str)>,
    pod_cidrs: [&'static str; 2],
}

const NODES: [Node; 3] = [
    Node {
        name: "aws-1",
        location: "aws",
        public: &["203.0.113.11/24", "2001:db8:1::11/64"],
        endpoint: "203.0.113.11:51820",
        private: Some(("172.31.0.11/24", "fd00:a::11/64")),
        pod_cidrs: ["10.42.1.0/24", "fd42:0:0:1::/64"],
    },
    Node {
        name: "aws-2",
        location: "aws",
        public: &[],
        endpoint: "172.31.0.12:51820",
        private: Some(("172.31.0.12/24", "fd00:a::12/64")),
        pod_cidrs: ["10.42.2.0/24", "fd42:0:0:2::/64"],
    },
    Node {
        name: "gcp-1",
        location: "gcp",
        public: &["2001:db8:1::21/64"],
        endpoint: "[2001:db8:1::21]:51820",
        private: Some(("10.128.0.21/24", "fd00:b::21/64")),
        pod_cidrs: ["10.42.3.0/24", "fd42:0:0:3::/64"],
    },
];

/// The three nodes on an internet and their locations' networks.
fn build() -> Lab {
    let mut lab = Lab::new("wd6");
    let net = lab.ns("net");
    lab.add_ns(&net);
    for br in ["br-inet", "br-aws", "br-gcp"] {
        ip(&["-n", &net, "link", "add", br, "type", "bridge"]);
        ip(&["-n", &net, "link", "set", br, "up"]);
    }
    for (i, n) in NODES.iter().enumerate() {
        let ns = lab.ns(n.name);
        lab.add_ns(&ns);
        if let Some((v4, v6)) = n.private {
            let lan = format!("br-{}", n.location);
            lab.plug(&ns, "eth1", &net, &lan, &format!("p{i}l"), &[v4, v6]);
        }
        if !n.public.is_empty() {
            lab.plug(&ns, "eth0", &net, "br-inet", &format!("p{i}i"), n.public);
        }
    }
    lab
}

/// The mesh file every agent reads.
fn mesh_file(lab: &Lab) -> PathBuf {
    let mut yaml = String::from("options: {encapsulate: always}\nnodes:\n");
    for n in &NODES {
        let (key, _) =
            weft_agent::reconcile::key::load_or_create(&lab.node_dir(n.name).join("key"))
                .expect("key");
        let (v4, v6) = n.private.expect("internal addresses");
        yaml.push_str(&format!(
            "  - {{name: {}, location: {}, endpoint: '{}', internalIP: {v4}, internalIP6: '{v6}', podCIDRs: ['{}', '{}'], publicKey: {}}}\n",
            n.name, n.location, n.endpoint, n.pod_cidrs[0], n.pod_cidrs[1], key.public_key()
        ));
    }
    let path = lab.dir.join("mesh.yaml");
    std::fs::write(&path, yaml).expect("mesh file");
    path
}

/// The round-trip time of one ping from `from`'s pod, if answered.
fn ping(lab: &Lab, from: &Node, to: IpAddr) -> Option<f64> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.pod_ns(from.name),
            "ping",
            "-c",
            "1",
            "-W",
            "1",
        ])
        .arg(to.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("time=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn weftctl(mesh: &Path, args: &[&str]) -> String {
    let out = Command::new(WEFTCTL)
        .arg("--mesh")
        .arg(mesh)
        .args(args)
        .output()
        .expect("weftctl");
    assert!(
        out.status.success(),
        "weftctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root: network namespaces"]
fn every_pod_reaches_every_pod_in_both_families() {
    testkit::require_root("network namespaces");
    let mut lab = build();
    let mesh = mesh_file(&lab);
    for n in &NODES {
        lab.start_agent(
            n.name,
            &[
                "--listen".as_ref(),
                "".as_ref(),
                "--mesh".as_ref(),
                mesh.as_os_str(),
            ],
        );
    }
    let cni = common::sibling_binary("weft-cni", "cni-plugin");
    let pods: Vec<Vec<IpAddr>> = NODES
        .iter()
        .map(|n| {
            let conflist = lab.conflist(n.name, |_| true);
            lab.add_pod(n.name, &cni, &conflist)
        })
        .collect();
    for (n, addrs) in NODES.iter().zip(&pods) {
        assert_eq!(
            addrs.iter().map(IpAddr::is_ipv4).collect::<Vec<_>>(),
            [true, false],
            "{}'s pod has an address of each family: {addrs:?}",
            n.name
        );
    }
    let started = Instant::now();
    let mut rows = Vec::new();
    for (i, from) in NODES.iter().enumerate() {
        for (j, to) in NODES.iter().enumerate().filter(|(j, _)| *j != i) {
            for &target in &pods[j] {
                let mut rtt = None;
                let deadline = Instant::now() + Duration::from_secs(15);
                while rtt.is_none() && Instant::now() < deadline {
                    rtt = ping(&lab, from, target);
                }
                let way = match (from.location == to.location, target.is_ipv4()) {
                    (false, _) => "encrypted",
                    (true, true) => "vxlan",
                    (true, false) => "private",
                };
                rows.push((from.name, to.name, target, way, rtt));
            }
        }
    }
    let mut table = String::from("from     to       address                  way        rtt\n");
    for (from, to, target, way, rtt) in &rows {
        let rtt = rtt.map_or("UNREACHABLE".to_string(), |r| format!("{r:.3} ms"));
        table.push_str(&format!("{from:<8} {to:<8} {target:<24} {way:<10} {rtt}\n"));
    }
    eprintln!("{table}(all paths tried within {:?})", started.elapsed());
    assert_eq!(rows.len(), 12);
    assert!(
        rows.iter().all(|r| r.4.is_some()),
        "{table}\naws-1:\n{}\naws-2:\n{}\ngcp-1:\n{}",
        lab.log("aws-1"),
        lab.log("aws-2"),
        lab.log("gcp-1")
    );
    // The gcp leg goes over the IPv6-only underlay: aws-1's tunnel peer is
    // gcp-1 at its IPv6 endpoint, and has handshaken.
    let (info, _) = wgconf::control::ControlClient::new(lab.node_dir("aws-1").join("weft0.ctl"))
        .get()
        .expect("aws-1's tunnel");
    assert_eq!(info.peers.len(), 1);
    assert_eq!(
        info.peers[0].endpoint.map(|e| e.to_string()).as_deref(),
        Some("[2001:db8:1::21]:51820")
    );
    assert!(info.peers[0].last_handshake.is_some());

    // weftctl shows both families: the configuration aws-1 runs and the
    // drawing.
    let conf = weftctl(&mesh, &["showconf", "node", "aws-1"]);
    assert!(
        conf.contains("10.42.3.0/24") && conf.contains("fd42:0:0:3::/64"),
        "{conf}"
    );
    assert!(conf.contains("Endpoint = [2001:db8:1::21]:51820"), "{conf}");
    let graph = weftctl(&mesh, &["graph"]);
    for c in NODES.iter().flat_map(|n| n.pod_cidrs) {
        assert!(graph.contains(c), "{c} not in the graph:\n{graph}");
    }
}
