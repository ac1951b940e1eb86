//! Two clusters joined live, Kilo's multi-cluster recipe exactly as its
//! talk shows it: two in-memory API servers, one node in each (in network
//! namespaces on a shared "internet"), each running weft-agent against its
//! own cluster with a pod wired by weft-cni; cluster B's agents run on
//! another WireGuard subnet (10.14.0.0/16). Each cluster's node is exported
//! with `weftctl showconf node N --as-peer -o yaml --allowed-ips
//! SERVICECIDR`, given no mesh-wide flag (weftctl reads the cluster's
//! subnet from its leaders' annotations, as kgctl does), and applied as a
//! Peer in the other cluster; then a pod in cluster A reaches a pod in
//! cluster B and back, through the tunnel between the two leaders.

mod common;

use common::{ip, Lab};
use fake_apiserver::{k3s_node, FakeApi, HttpServer};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const WEFTCTL: &str = env!("CARGO_BIN_EXE_weftctl");

/// One cluster of one node.
struct Cluster {
    name: &'static str,
    node: &'static str,
    /// The node's address on the internet.
    address: &'static str,
    api_address: &'static str,
    pod_cidr: &'static str,
    /// The cluster's service range and WireGuard pool, which must not
    /// overlap the other cluster's.
    service_cidr: &'static str,
    subnet: &'static str,
    /// The address its agent gives its leader (the pool's first).
    wireguard_ip: &'static str,
}

const A: Cluster = Cluster {
    name: "a",
    node: "a-1",
    address: "203.0.113.11",
    api_address: "203.0.113.1",
    pod_cidr: "10.42.1.0/24",
    service_cidr: "10.43.0.0/16",
    subnet: "10.4.0.0/16",
    wireguard_ip: "10.4.0.1",
};
const B: Cluster = Cluster {
    name: "b",
    node: "b-1",
    address: "203.0.113.21",
    api_address: "203.0.113.2",
    pod_cidr: "10.44.1.0/24",
    service_cidr: "10.45.0.0/16",
    subnet: "10.14.0.0/16",
    wireguard_ip: "10.14.0.1",
};

/// The two clusters' nodes on a shared internet, and their API servers'
/// addresses.
struct World {
    lab: Lab,
}

impl World {
    fn new() -> Self {
        let mut lab = Lab::new("wx");
        let inet = lab.ns("inet");
        lab.add_ns(&inet);
        ip(&["-n", &inet, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &inet, "link", "set", "br0", "up"]);
        for c in [&A, &B] {
            let api = format!("{}/24", c.api_address);
            ip(&["-n", &inet, "addr", "add", &api, "dev", "br0"]);
            let node = lab.ns(c.node);
            lab.add_ns(&node);
            let port = format!("{}{}", lab.tag, c.name);
            lab.plug(
                &node,
                "eth0",
                &inet,
                "br0",
                &port,
                &[&format!("{}/24", c.address)],
            );
        }
        World { lab }
    }

    fn ns(&self, what: &str) -> String {
        self.lab.ns(what)
    }

    fn node_dir(&self, c: &Cluster) -> PathBuf {
        self.lab.node_dir(c.node)
    }

    /// The cluster's API server, listening in the internet namespace.
    fn api(&self, c: &Cluster) -> (FakeApi, HttpServer, PathBuf) {
        let api = FakeApi::new();
        let mut node = k3s_node(c.node, c.pod_cidr);
        node["metadata"]["annotations"]["kilo.squat.ai/location"] = json!(c.name);
        api.put("nodes", node);
        let listener = weft_netlink::in_netns(
            Path::new(&format!("/var/run/netns/{}", self.ns("inet"))),
            |_| {
                std::net::TcpListener::bind(format!("{}:6443", c.api_address))
                    .map_err(|e| weft_netlink::NetlinkError::Failed(e.to_string()))
            },
        )
        .expect("listen");
        let server = api.serve_http(listener);
        let kubeconfig = self.lab.dir.join(format!("kubeconfig-{}", c.name));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: {0}\n  cluster: {{server: 'http://{1}:6443'}}\n\
                 users:\n- name: u\n  user: {{}}\ncontexts:\n- name: {0}\n  context: {{cluster: {0}, user: u}}\n\
                 current-context: {0}\n",
                c.name, c.api_address
            ),
        )
        .expect("kubeconfig");
        (api, server, kubeconfig)
    }

    fn start_agent(&mut self, c: &Cluster, kubeconfig: &Path) {
        let args = [
            "--backend",
            "kubernetes",
            "--subnet",
            c.subnet,
            "--encapsulate",
            "never",
            "--listen",
            "",
        ];
        let mut args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        args.extend(["--kubeconfig".as_ref(), kubeconfig.as_os_str()]);
        self.lab.start_agent(c.node, &args);
    }

    /// A pod on `c`'s node wired by weft-cni from the conflist the agent
    /// wrote; its address.
    fn add_pod(&mut self, c: &Cluster) -> String {
        let conflist = self.lab.conflist(c.node, |_| true);
        let cni = common::sibling_binary("weft-cni", "cni-plugin");
        self.lab.add_pod(c.node, &cni, &conflist)[0].to_string()
    }

    /// weftctl against `c`'s API, run where the API is reachable (on the
    /// cluster's node), with no mesh-wide flag: what it prints, and what it
    /// said on stderr.
    fn weftctl(&self, c: &Cluster, kubeconfig: &Path, args: &[&str]) -> (String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(c.node), WEFTCTL])
            .args(["--backend", "kubernetes", "--kubeconfig"])
            .arg(kubeconfig)
            .args(args)
            .output()
            .expect("weftctl");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "weftctl {args:?}: {stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    }

    /// `weftctl showconf node N --as-peer -o yaml --allowed-ips SERVICECIDR`:
    /// the Peer the other cluster applies (`| kubectl apply -f -`).
    fn export_as_peer(&self, c: &Cluster, kubeconfig: &Path) -> Value {
        let (yaml, stderr) = self.weftctl(
            c,
            kubeconfig,
            &[
                "showconf",
                "node",
                c.node,
                "--as-peer",
                "-o",
                "yaml",
                "--allowed-ips",
                c.service_cidr,
            ],
        );
        assert!(
            stderr.is_empty(),
            "weftctl had to guess or found a dispute: {stderr}"
        );
        let yaml: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("weftctl prints YAML");
        serde_json::to_value(yaml).expect("JSON-shaped")
    }

    fn ping(&self, from: &Cluster, to: &str) -> bool {
        self.lab.ping(from.node, to)
    }
}

#[test]
#[ignore = "needs root: network namespaces"]
fn two_clusters_joined_by_peers_reach_each_others_pods() {
    testkit::require_root("network namespaces");
    let mut w = World::new();
    let (api_a, _server_a, kube_a) = w.api(&A);
    let (api_b, _server_b, kube_b) = w.api(&B);
    w.start_agent(&A, &kube_a);
    w.start_agent(&B, &kube_b);
    let pod_a = w.add_pod(&A);
    let pod_b = w.add_pod(&B);
    assert!(!w.ping(&A, &pod_b), "not joined yet");

    // Each cluster's node, as a Peer of the other: its segment (pods,
    // node, leader's WireGuard IP in its own cluster's pool) plus the
    // cluster's services.
    let started = Instant::now();
    let peer_a = w.export_as_peer(&A, &kube_a);
    let peer_b = w.export_as_peer(&B, &kube_b);
    for (peer, c, api) in [(&peer_a, &A, &api_a), (&peer_b, &B, &api_b)] {
        let announced = &api.get("nodes", c.node).expect("node")["metadata"]["annotations"];
        // The agent leads its one-node cluster at its pool's first address.
        assert_eq!(
            announced["kilo.squat.ai/wireguard-ip"],
            json!(format!("{}/16", c.wireguard_ip))
        );
        let key = announced["kilo.squat.ai/key"].clone();
        // kgctl's manifest, field for field: what the API machinery prints
        // for a Peer with no keepalive. (The node has a public address only,
        // so no internal IP to route.)
        let expected = json!({
            "apiVersion": "kilo.squat.ai/v1alpha1",
            "kind": "Peer",
            "metadata": {"creationTimestamp": null, "name": c.node},
            "spec": {
                "allowedIPs": [c.pod_cidr, format!("{}/32", c.wireguard_ip), c.service_cidr],
                "endpoint": {"dnsOrIP": {"ip": c.address}, "port": 51820},
                "publicKey": key,
            },
        });
        assert_eq!(*peer, expected, "{}'s Peer", c.node);
    }
    api_b.put("peers", peer_a);
    api_a.put("peers", peer_b);
    // Each cluster's weftctl shows the other's leader at the address its
    // tunnel holds, in the other's pool.
    for (c, kube, other) in [(&A, &kube_a, &B), (&B, &kube_b, &A)] {
        let shown = testkit::wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
            let (conf, _) = w.weftctl(c, kube, &["showconf", "node", c.node]);
            conf.contains(&format!("{}/32", other.wireguard_ip))
                .then_some(conf)
        });
        assert!(
            shown.is_some(),
            "{}: weftctl showconf does not list {}'s leader at {}",
            c.node,
            other.node,
            other.wireguard_ip
        );
    }

    let reached = testkit::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        w.ping(&A, &pod_b) && w.ping(&B, &pod_a)
    });
    assert!(
        reached,
        "the clusters' pods do not reach each other:\n{}\n{}",
        w.lab.log(A.node),
        w.lab.log(B.node)
    );
    eprintln!(
        "pod {pod_a} (cluster a) and pod {pod_b} (cluster b) reach each other {:?} after the Peers were applied",
        started.elapsed()
    );
    // Through the tunnel between the two nodes: each sees the other as a
    // peer with a handshake.
    for (c, other) in [(&A, &B), (&B, &A)] {
        let (info, _) = wgconf::control::ControlClient::new(w.node_dir(c).join("weft0.ctl"))
            .get()
            .expect("tunnel");
        assert_eq!(info.peers.len(), 1, "{}: {:?}", c.node, info.peers);
        assert!(info.peers[0].last_handshake.is_some(), "{}", c.node);
        assert!(
            info.peers[0]
                .allowed_ips
                .iter()
                .any(|p| p.to_string() == other.service_cidr),
            "{}: {:?}",
            c.node,
            info.peers[0].allowed_ips
        );
    }
}
